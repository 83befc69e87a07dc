//! Fetches one HTTP page and prints its body: `lb-scrape ADDR:PORT [PATH]`
//! (default path `/metrics`). The end-to-end tests run it inside the LB's
//! namespace, where the agent's metrics endpoint listens on loopback.
//! Exits 1 unless the answer is `200`; every step has a timeout.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);
/// Far above any exposition of the test configs.
const MAX_BODY: u64 = 16 << 20;

fn fetch(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connecting to {addr}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT)).and_then(|_| s.set_write_timeout(Some(TIMEOUT))).map_err(|e| e.to_string())?;
    // HTTP/1.0 without keep-alive: the server closes after the body, so EOF ends it.
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| format!("sending the request: {e}"))?;
    let mut raw = String::new();
    s.take(MAX_BODY).read_to_string(&mut raw).map_err(|e| format!("reading the answer: {e}"))?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(|| format!("no end of headers in {raw:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("{status}: {body}"));
    }
    Ok(body.to_string())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(addr) = args.first().and_then(|a| a.parse::<SocketAddr>().ok()) else {
        eprintln!("usage: lb-scrape ADDR:PORT [PATH]");
        std::process::exit(2);
    };
    let path = args.get(1).map_or("/metrics", String::as_str);
    match fetch(addr, path) {
        Ok(body) => print!("{body}"),
        Err(e) => {
            eprintln!("lb-scrape: {e}");
            std::process::exit(1);
        }
    }
}

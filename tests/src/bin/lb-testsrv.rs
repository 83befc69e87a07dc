//! Test server run on each backend (and on the LB for non-VIP traffic).
//!
//! `lb-testsrv --name b1 [--tcp-port 80]... [--udp-port 53]... [--udp-bind ADDR]... [--max-secs 600]`
//!
//! TCP: a dual-stack listener on `[::]:PORT`; reads one HTTP/1.x request head
//! (read timeout 5 s) and answers `HTTP/1.0 200 OK` with the body
//! `backend=NAME client=IP:PORT\n`, then closes.
//!
//! UDP: answers each datagram with `backend=NAME client=IP:PORT`. For direct
//! server return the reply must leave FROM the address the datagram was sent
//! to (the VIP), so there is one socket per local address (every address of
//! the namespace at start, lo's VIPs included, or the `--udp-bind` ones):
//! the kernel then picks the right source address by construction.
//!
//! Health-check test modes (default off): `--http-status CODE` answers every
//! TCP request with that status (e.g. 500 to fail an HTTP check); `--hang`
//! accepts TCP connections and never answers (a hung backend), until the
//! peer closes.
//!
//! Long-lived connections (`--echo-port P`, off by default): TCP port P
//! answers every line received with `backend=NAME client=IP:PORT` and a
//! newline, for as long as the client keeps the connection open.
//!
//! Prints `ready: ...` on stdout once everything listens. Exits after
//! `--max-secs` (default 600) or `--max-requests` (default 100000), whichever
//! comes first, so a forgotten server cannot run for ever.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lb_tests::client::format_reply;
use lb_tests::sock;

const USAGE: &str = "usage: lb-testsrv --name NAME [--tcp-port P]... [--udp-port P]... [--udp-bind ADDR]... [--echo-port P]... [--max-secs S] [--max-requests N] [--http-status CODE] [--hang]";
/// A line-echo connection idle this long is closed.
const ECHO_IDLE: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEAD: usize = 16 * 1024;

struct Opts {
    name: String,
    tcp_ports: Vec<u16>,
    udp_ports: Vec<u16>,
    udp_bind: Vec<IpAddr>,
    echo_ports: Vec<u16>,
    max_secs: u64,
    max_requests: u64,
    tcp: TcpMode,
}

/// How TCP requests are answered.
#[derive(Clone, Copy)]
enum TcpMode {
    /// `HTTP/1.0 CODE` with the usual body (200 by default).
    Status(u16),
    /// Never answer.
    Hang,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        name: String::new(),
        tcp_ports: vec![],
        udp_ports: vec![],
        udp_bind: vec![],
        echo_ports: vec![],
        max_secs: 600,
        max_requests: 100_000,
        tcp: TcpMode::Status(200),
    };
    let mut explicit_ports = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .ok_or_else(|| format!("{a} needs a value\n{USAGE}"))
        };
        let bad = |e: &dyn std::fmt::Display| format!("{a}: {e}");
        match a.as_str() {
            "--name" => o.name = val()?,
            "--tcp-port" => {
                explicit_ports = true;
                o.tcp_ports.push(val()?.parse().map_err(|e| bad(&e))?)
            }
            "--udp-port" => {
                explicit_ports = true;
                o.udp_ports.push(val()?.parse().map_err(|e| bad(&e))?)
            }
            "--udp-bind" => o.udp_bind.push(val()?.parse().map_err(|e| bad(&e))?),
            "--echo-port" => o.echo_ports.push(val()?.parse().map_err(|e| bad(&e))?),
            "--max-secs" => o.max_secs = val()?.parse().map_err(|e| bad(&e))?,
            "--max-requests" => o.max_requests = val()?.parse().map_err(|e| bad(&e))?,
            "--http-status" => o.tcp = TcpMode::Status(val()?.parse().map_err(|e| bad(&e))?),
            "--hang" => o.tcp = TcpMode::Hang,
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {a:?}\n{USAGE}")),
        }
    }
    if o.name.is_empty() {
        return Err(format!("--name is required\n{USAGE}"));
    }
    if !explicit_ports {
        o.tcp_ports.push(80);
        o.udp_ports.push(53);
    }
    // Port 0 disables that protocol; an echo port is not also an HTTP port.
    let echo = o.echo_ports.clone();
    o.tcp_ports.retain(|p| *p != 0 && !echo.contains(p));
    o.udp_ports.retain(|p| *p != 0);
    Ok(o)
}

/// `--hang`: reads and discards until the peer gives up.
fn hang(mut s: TcpStream) {
    let mut buf = [0u8; 2048];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

fn handle_tcp(mut s: TcpStream, name: &str, mode: TcpMode) {
    let status = match mode {
        TcpMode::Hang => return hang(s),
        TcpMode::Status(code) => code,
    };
    let Ok(peer) = s.peer_addr() else { return };
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    let complete = loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break false,
            Ok(n) => {
                head.extend_from_slice(&buf[..n]);
                if head.windows(4).any(|w| w == b"\r\n\r\n")
                    || head.windows(2).any(|w| w == b"\n\n")
                {
                    break true;
                }
                if head.len() > MAX_HEAD {
                    break false;
                }
            }
        }
    };
    let resp = if complete && (head.starts_with(b"GET ") || head.starts_with(b"HEAD ")) {
        let body = format!("{}\n", format_reply(name, peer));
        format!(
            "HTTP/1.0 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            if status == 200 { "OK" } else { "Status" },
            body.len()
        )
    } else {
        "HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
    };
    let _ = s.write_all(resp.as_bytes());
    let _ = s.shutdown(std::net::Shutdown::Write);
    // Let the client's FIN arrive before closing, so the close is clean (no RST).
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = s.read(&mut buf);
}

/// `--echo-port`: one answer line per line received, until EOF or idle.
fn echo_lines(s: TcpStream, name: &str) {
    use std::io::BufRead as _;
    let Ok(peer) = s.peer_addr() else { return };
    let _ = s.set_read_timeout(Some(ECHO_IDLE));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let Ok(mut writer) = s.try_clone() else { return };
    let reply = format!("{}\n", format_reply(name, peer));
    for line in std::io::BufReader::new(s).lines() {
        if line.is_err() || writer.write_all(reply.as_bytes()).is_err() {
            break;
        }
    }
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let name: Arc<str> = o.name.clone().into();
    let served = Arc::new(AtomicU64::new(0));
    let max_requests = o.max_requests;
    let count = {
        let served = served.clone();
        let name = name.clone();
        move || {
            if served.fetch_add(1, Ordering::SeqCst) + 1 >= max_requests {
                eprintln!("lb-testsrv {name}: served {max_requests} requests, exiting");
                std::process::exit(0);
            }
        }
    };

    let tcp_mode = o.tcp;
    let mut listening = Vec::new();
    for port in &o.tcp_ports {
        let l = match sock::tcp_listen_dual_stack(*port) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("lb-testsrv: cannot listen on [::]:{port}/tcp: {e}");
                std::process::exit(1);
            }
        };
        listening.push(format!("tcp [::]:{port}"));
        let name = name.clone();
        let count = count.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                match conn {
                    Ok(s) => {
                        count();
                        let name = name.clone();
                        std::thread::spawn(move || handle_tcp(s, &name, tcp_mode));
                    }
                    Err(e) => eprintln!("lb-testsrv: accept: {e}"),
                }
            }
        });
    }

    for port in &o.echo_ports {
        let l = match sock::tcp_listen_dual_stack(*port) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("lb-testsrv: cannot listen on [::]:{port}/tcp (echo): {e}");
                std::process::exit(1);
            }
        };
        listening.push(format!("echo [::]:{port}"));
        let name = name.clone();
        let count = count.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                count();
                let name = name.clone();
                std::thread::spawn(move || echo_lines(conn, &name));
            }
        });
    }

    if !o.udp_ports.is_empty() {
        let addrs = if o.udp_bind.is_empty() {
            match sock::local_addresses() {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("lb-testsrv: cannot list local addresses: {e}");
                    std::process::exit(1);
                }
            }
        } else {
            o.udp_bind.clone()
        };
        for port in &o.udp_ports {
            for addr in &addrs {
                let local = SocketAddr::new(*addr, *port);
                let sock = match sock::udp_bind(local) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("lb-testsrv: cannot bind {local}/udp: {e}");
                        std::process::exit(1);
                    }
                };
                listening.push(format!("udp {local}"));
                let name = name.clone();
                let count = count.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    loop {
                        match sock.recv_from(&mut buf) {
                            Ok((_, peer)) => {
                                count();
                                if let Err(e) =
                                    sock.send_to(format_reply(&name, peer).as_bytes(), peer)
                                {
                                    eprintln!("lb-testsrv: reply to {peer} from {local}: {e}");
                                }
                            }
                            Err(e) => {
                                eprintln!("lb-testsrv: recv on {local}: {e}");
                                std::thread::sleep(Duration::from_millis(100));
                            }
                        }
                    }
                });
            }
        }
    }

    println!(
        "ready: lb-testsrv {} listening on {}",
        o.name,
        listening.join(", ")
    );
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_secs(o.max_secs));
    eprintln!(
        "lb-testsrv {}: --max-secs {} reached, exiting",
        o.name, o.max_secs
    );
}

//! Test client: sequential requests, one JSON line per request.
//!
//! `lb-testclient --tcp ADDR:PORT | --udp ADDR:PORT [--count N] [--timeout-ms T] [--src-port-base P] [--max-failures F]`
//!
//! TCP: `GET / HTTP/1.0`, reads the answer of `lb-testsrv` up to EOF.
//! UDP: one datagram, one answer (the socket is connected to the target, so
//! an answer from any other address, e.g. a backend's own address instead of
//! the VIP, is not accepted and the request times out).
//! Every connect, write and read has the timeout (default 2000 ms), and the
//! count is capped, so the whole run is bounded. With `--src-port-base P`
//! request i uses source port P+i (SO_REUSEADDR), so a test can predict the
//! backend of each request. Prints e.g.
//! `{"ok":true,"src":"198.51.100.10:20000","backend":"b1","client":"198.51.100.10:20000","ms":1.2}`
//! or `{"ok":false,"src":"0.0.0.0:20001","error":"..."}`; exits 1 if any request failed.
//! With `--max-failures F` it stops after F failed requests (a broken path
//! then costs F timeouts, not N).
//!
//! Long-lived mode (`--tcp ADDR:PORT --hold-ms D [--connections N]
//! [--interval-ms I]`, for `lb-testsrv --echo-port`): opens N connections
//! (from `--src-port-base` on if given), prints `ready: N connections`, then
//! on each sends a line every I ms (default 100) and waits for its answer,
//! for D ms in all; then prints one JSON line per connection (backends that
//! answered, messages sent and answered, slowest answer, error if it broke).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lb_tests::client::{ClientRecord, HoldRecord, parse_http_response, parse_reply};
use lb_tests::sock;

/// An I/O error, with socket timeouts (EAGAIN from SO_RCVTIMEO) said plainly.
fn io_err(e: &std::io::Error, timeout: Duration) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("timed out after {} ms", timeout.as_millis())
        }
        _ => e.to_string(),
    }
}

const USAGE: &str = "usage: lb-testclient (--tcp ADDR:PORT | --udp ADDR:PORT) [--count N] [--timeout-ms T] [--src-port-base P] [--max-failures F] [--hold-ms D [--connections N] [--interval-ms I]]";
/// Bounds of the long-lived mode: a forgotten client cannot run for ever.
const MAX_HOLD_MS: u64 = 120_000;
const MAX_CONNECTIONS: u32 = 1_000;
const DEFAULT_INTERVAL_MS: u64 = 100;
const MAX_COUNT: u32 = 100_000;
const MAX_RESPONSE: usize = 64 * 1024;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Tcp,
    Udp,
}

struct Opts {
    mode: Mode,
    target: SocketAddr,
    count: u32,
    timeout: Duration,
    src_port_base: Option<u16>,
    max_failures: Option<u32>,
    hold: Option<Hold>,
}

/// The long-lived mode's settings.
#[derive(Clone, Copy)]
struct Hold {
    duration: Duration,
    connections: u32,
    interval: Duration,
}

fn parse_args() -> Result<Opts, String> {
    let mut target = None;
    let mut count = 1u32;
    let mut timeout_ms = 2000u64;
    let mut base = None;
    let mut max_failures = None;
    let mut hold_ms = None;
    let mut connections = 1u32;
    let mut interval_ms = DEFAULT_INTERVAL_MS;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .ok_or_else(|| format!("{a} needs a value\n{USAGE}"))
        };
        let bad = |e: &dyn std::fmt::Display| format!("{a}: {e}");
        match a.as_str() {
            "--tcp" | "--udp" => {
                if target.is_some() {
                    return Err(format!("give one of --tcp / --udp\n{USAGE}"));
                }
                let mode = if a == "--tcp" { Mode::Tcp } else { Mode::Udp };
                target = Some((mode, val()?.parse::<SocketAddr>().map_err(|e| bad(&e))?));
            }
            "--count" => count = val()?.parse().map_err(|e| bad(&e))?,
            "--timeout-ms" => timeout_ms = val()?.parse().map_err(|e| bad(&e))?,
            "--src-port-base" => base = Some(val()?.parse::<u16>().map_err(|e| bad(&e))?),
            "--max-failures" => {
                max_failures = Some(val()?.parse::<u32>().map_err(|e| bad(&e))?.max(1))
            }
            "--hold-ms" => hold_ms = Some(val()?.parse::<u64>().map_err(|e| bad(&e))?),
            "--connections" => connections = val()?.parse().map_err(|e| bad(&e))?,
            "--interval-ms" => interval_ms = val()?.parse().map_err(|e| bad(&e))?,
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {a:?}\n{USAGE}")),
        }
    }
    let (mode, target) = target.ok_or_else(|| format!("--tcp or --udp is required\n{USAGE}"))?;
    if count == 0 || count > MAX_COUNT {
        return Err(format!("--count must be in 1..={MAX_COUNT}"));
    }
    if !(1..=60_000).contains(&timeout_ms) {
        return Err("--timeout-ms must be in 1..=60000".into());
    }
    if let Some(b) = base
        && (b == 0 || b as u32 + count - 1 > u16::MAX as u32)
    {
        return Err(format!(
            "--src-port-base {b} + --count {count} leaves the port range"
        ));
    }
    let hold = match hold_ms {
        None => None,
        Some(ms) => {
            if mode != Mode::Tcp || !(1..=MAX_HOLD_MS).contains(&ms) {
                return Err(format!("--hold-ms needs --tcp and must be in 1..={MAX_HOLD_MS}"));
            }
            if connections == 0 || connections > MAX_CONNECTIONS || !(1..=ms).contains(&interval_ms) {
                return Err(format!("--connections must be in 1..={MAX_CONNECTIONS}, --interval-ms in 1..=--hold-ms"));
            }
            if let Some(b) = base
                && b as u32 + connections - 1 > u16::MAX as u32
            {
                return Err(format!("--src-port-base {b} + --connections {connections} leaves the port range"));
            }
            Some(Hold { duration: Duration::from_millis(ms), connections, interval: Duration::from_millis(interval_ms) })
        }
    };
    Ok(Opts {
        mode,
        target,
        count,
        timeout: Duration::from_millis(timeout_ms),
        src_port_base: base,
        max_failures,
        hold,
    })
}

/// One HTTP request; returns (local address, backend, client as seen by the server).
fn tcp_request(o: &Opts, src_port: Option<u16>) -> Result<(SocketAddr, String, String), String> {
    let mut s =
        sock::tcp_connect(o.target, src_port, o.timeout).map_err(|e| format!("connect: {e}"))?;
    let local = s.local_addr().map_err(|e| format!("local address: {e}"))?;
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what} (from {local}): {e}");
    s.set_read_timeout(Some(o.timeout))
        .map_err(|e| fail("timeout", &e))?;
    s.set_write_timeout(Some(o.timeout))
        .map_err(|e| fail("timeout", &e))?;
    let host = match o.target {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    s.write_all(
        format!("GET / HTTP/1.0\r\nHost: {host}\r\nUser-Agent: lb-testclient\r\n\r\n").as_bytes(),
    )
    .map_err(|e| fail("write", &e))?;
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + o.timeout;
    loop {
        if Instant::now() >= deadline {
            return Err(fail("read", &"response not complete within the timeout"));
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                resp.extend_from_slice(&buf[..n]);
                if resp.len() > MAX_RESPONSE {
                    return Err(fail("read", &"response too large"));
                }
            }
            Err(e) => return Err(fail("read", &io_err(&e, o.timeout))),
        }
    }
    let (code, body) = parse_http_response(&resp).map_err(|e| fail("response", &e))?;
    if code != 200 {
        return Err(fail("response", &format!("HTTP status {code}")));
    }
    let (backend, client) = parse_reply(&body).map_err(|e| fail("response", &e))?;
    Ok((local, backend, client))
}

fn udp_request(
    o: &Opts,
    src_port: Option<u16>,
    i: u32,
) -> Result<(SocketAddr, String, String), String> {
    let s = sock::udp_bind(sock::unspecified_like(&o.target, src_port.unwrap_or(0)))
        .map_err(|e| format!("bind: {e}"))?;
    s.connect(o.target).map_err(|e| format!("connect: {e}"))?;
    let local = s.local_addr().map_err(|e| format!("local address: {e}"))?;
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what} (from {local}): {e}");
    s.set_read_timeout(Some(o.timeout))
        .map_err(|e| fail("timeout", &e))?;
    s.send(format!("lb-testclient request {i}").as_bytes())
        .map_err(|e| fail("send", &e))?;
    let mut buf = [0u8; 2048];
    let n = s
        .recv(&mut buf)
        .map_err(|e| fail("recv", &io_err(&e, o.timeout)))?;
    let (backend, client) =
        parse_reply(&String::from_utf8_lossy(&buf[..n])).map_err(|e| fail("reply", &e))?;
    Ok((local, backend, client))
}

/// One long-lived connection: a line every interval, each answer awaited.
fn hold_connection(o: &Opts, h: Hold, mut s: std::net::TcpStream, start: Instant) -> HoldRecord {
    use std::io::BufRead as _;
    let local = s.local_addr().map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()).to_string()).unwrap_or_default();
    let mut r = HoldRecord { src: local, backends: vec![], sent: 0, answered: 0, max_ms: 0.0, error: None };
    if let Err(e) = s.set_read_timeout(Some(o.timeout)).and(s.set_write_timeout(Some(o.timeout))) {
        r.error = Some(format!("timeout: {e}"));
        return r;
    }
    let mut reader = match s.try_clone() {
        Ok(c) => std::io::BufReader::new(c),
        Err(e) => {
            r.error = Some(format!("clone: {e}"));
            return r;
        }
    };
    let mut next = start;
    while next < start + h.duration {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += h.interval;
        let sent_at = Instant::now();
        if let Err(e) = s.write_all(format!("message {}\n", r.sent).as_bytes()) {
            r.error = Some(format!("write after {} answers: {}", r.answered, io_err(&e, o.timeout)));
            break;
        }
        r.sent += 1;
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => {
                r.error = Some(format!("closed by the peer after {} answers", r.answered));
                break;
            }
            Err(e) => {
                r.error = Some(format!("read after {} answers: {}", r.answered, io_err(&e, o.timeout)));
                break;
            }
            Ok(_) => {}
        }
        match parse_reply(&line) {
            Ok((backend, _)) => {
                r.answered += 1;
                r.max_ms = r.max_ms.max((sent_at.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0);
                if !r.backends.contains(&backend) {
                    r.backends.push(backend);
                }
            }
            Err(e) => {
                r.error = Some(format!("answer {line:?}: {e}"));
                break;
            }
        }
    }
    r
}

/// `--hold-ms`: every connection first, then all of them talk until the end.
fn hold_mode(o: &Opts, h: Hold) -> ! {
    let mut streams = Vec::new();
    for i in 0..h.connections {
        let src_port = o.src_port_base.map(|b| b + i as u16);
        match sock::tcp_connect(o.target, src_port, o.timeout) {
            Ok(s) => streams.push(s),
            Err(e) => {
                eprintln!("lb-testclient: connection {i} (source port {src_port:?}): connect: {e}");
                std::process::exit(1);
            }
        }
    }
    println!("ready: {} connections", streams.len());
    let _ = std::io::stdout().flush();
    let start = Instant::now();
    let records: Vec<HoldRecord> = std::thread::scope(|scope| {
        let handles: Vec<_> = streams.into_iter().map(|s| scope.spawn(move || hold_connection(o, h, s, start))).collect();
        handles.into_iter().map(|t| t.join().expect("connection thread")).collect()
    });
    let broken = records.iter().filter(|r| !r.kept()).count();
    let mut out = std::io::stdout().lock();
    for r in &records {
        let _ = writeln!(out, "{}", r.to_line());
    }
    let _ = out.flush();
    if broken > 0 {
        eprintln!("lb-testclient: {broken} of {} connections broke", records.len());
        std::process::exit(1);
    }
    std::process::exit(0);
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Some(h) = o.hold {
        hold_mode(&o, h);
    }
    let mut failed = 0;
    let stdout = std::io::stdout();
    for i in 0..o.count {
        let src_port = o.src_port_base.map(|b| b + i as u16);
        let start = Instant::now();
        let result = match o.mode {
            Mode::Tcp => tcp_request(&o, src_port),
            Mode::Udp => udp_request(&o, src_port, i),
        };
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        let record = match result {
            Ok((local, backend, client)) => {
                let local = SocketAddr::new(local.ip().to_canonical(), local.port());
                ClientRecord::success(local, backend, client, ms)
            }
            Err(e) => {
                failed += 1;
                ClientRecord::failure(
                    sock::unspecified_like(&o.target, src_port.unwrap_or(0)).to_string(),
                    e,
                    ms,
                )
            }
        };
        let mut out = stdout.lock();
        let _ = writeln!(out, "{}", record.to_line());
        let _ = out.flush();
        if o.max_failures.is_some_and(|m| failed >= m) {
            eprintln!("lb-testclient: stopping after {failed} failed requests (--max-failures)");
            break;
        }
    }
    if failed > 0 {
        eprintln!("lb-testclient: {failed} of {} requests failed", o.count);
        std::process::exit(1);
    }
}

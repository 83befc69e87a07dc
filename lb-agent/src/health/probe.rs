//! One check of one backend: a TCP connect, or an HTTP GET whose status line
//! is compared with the expected codes. No timeout here: the checker bounds
//! every probe with the check's `timeout`.

use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;

use lb_common::health::HealthReason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use std::os::fd::AsRawFd as _;
use tokio::net::{TcpSocket, TcpStream};

use crate::config::health::{CheckKind, HealthCheck, StatusSet};

/// Bytes read at most to find the status line (`HTTP/1.1 200 OK\r\n`).
const MAX_STATUS_LINE: usize = 512;

/// The result of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Connected (TCP), or an expected status (HTTP, with its code).
    Passed { http_status: Option<u16> },
    /// No result within the timeout.
    Timeout,
    /// Connection refused.
    Refused,
    /// HTTP answered a status that is not expected.
    HttpStatus(u16),
    /// Not an HTTP answer, or the connection closed before one.
    BadResponse(String),
    /// Any other socket error.
    Error(String),
}

impl Outcome {
    pub fn passed(&self) -> bool {
        matches!(self, Outcome::Passed { .. })
    }

    pub fn reason(&self) -> HealthReason {
        match self {
            Outcome::Passed { .. } => HealthReason::Passed,
            Outcome::Timeout => HealthReason::Timeout,
            Outcome::Refused => HealthReason::Refused,
            Outcome::HttpStatus(_) => HealthReason::HttpStatus,
            Outcome::BadResponse(_) => HealthReason::BadResponse,
            Outcome::Error(_) => HealthReason::Error,
        }
    }

    pub fn http_status(&self) -> Option<u16> {
        match self {
            Outcome::Passed { http_status } => *http_status,
            Outcome::HttpStatus(code) => Some(*code),
            _ => None,
        }
    }

    /// For logs: `timeout`, `refused`, `HTTP status 500`, ...
    pub fn describe(&self) -> String {
        match self {
            Outcome::Passed { http_status: Some(code) } => format!("passed (HTTP status {code})"),
            Outcome::Passed { http_status: None } => "passed".into(),
            Outcome::Timeout => "timeout".into(),
            Outcome::Refused => "connection refused".into(),
            Outcome::HttpStatus(code) => format!("HTTP status {code}"),
            Outcome::BadResponse(why) => format!("bad response: {why}"),
            Outcome::Error(why) => format!("error: {why}"),
        }
    }
}

/// Something that checks one backend once (the real probe, or a script in tests).
pub(crate) trait Probe: Send + 'static {
    fn check(&mut self) -> impl Future<Output = Outcome> + Send;
}

/// The real probe of one backend.
pub(crate) struct NetProbe {
    target: SocketAddr,
    /// `SO_MARK` of the check socket (DSR-aware checks), if any.
    mark: Option<u32>,
    /// The whole request for HTTP checks, `None` for TCP.
    request: Option<Vec<u8>>,
    status: StatusSet,
}

impl NetProbe {
    /// `service_port` is the VIP's port, used unless the check names its own.
    pub(crate) fn new(backend: SocketAddr, check: &HealthCheck) -> NetProbe {
        let request = (check.kind == CheckKind::Http).then(|| {
            let host = check.host.clone().unwrap_or_else(|| match backend.ip() {
                std::net::IpAddr::V4(a) => a.to_string(),
                std::net::IpAddr::V6(a) => format!("[{a}]"),
            });
            format!(
                "GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: lb-agent health check\r\nConnection: close\r\n\r\n",
                check.uri
            )
            .into_bytes()
        });
        NetProbe { target: backend, mark: None, request, status: check.status.clone() }
    }

    /// A DSR-aware probe: the check goes to `vip` (the VIP address and check
    /// port) from a socket marked for `backend_id`, which policy routing and
    /// the tc egress program turn into an encapsulated packet to that backend.
    pub(crate) fn dsr(vip: SocketAddr, backend_id: u32, check: &HealthCheck) -> NetProbe {
        NetProbe { mark: Some(lb_common::health::dsr::mark(backend_id)), ..NetProbe::new(vip, check) }
    }
}

async fn connect(target: SocketAddr, mark: Option<u32>) -> std::io::Result<TcpStream> {
    let socket = if target.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(mark) = mark {
        let value = mark as libc::c_int;
        // SAFETY: setsockopt on our own socket with a c_int option value.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MARK,
                (&value as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    socket.connect(target).await
}

impl Probe for NetProbe {
    async fn check(&mut self) -> Outcome {
        let mut stream = match connect(self.target, self.mark).await {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Outcome::Refused,
            Err(e) => return Outcome::Error(e.to_string()),
        };
        let Some(request) = &self.request else {
            return Outcome::Passed { http_status: None };
        };
        if let Err(e) = stream.write_all(request).await {
            return Outcome::Error(format!("sending the request: {e}"));
        }
        match read_status(&mut stream).await {
            Ok(code) if self.status.contains(code) => Outcome::Passed { http_status: Some(code) },
            Ok(code) => Outcome::HttpStatus(code),
            Err(why) => Outcome::BadResponse(why),
        }
    }
}

async fn read_status(stream: &mut TcpStream) -> Result<u16, String> {
    let mut head = Vec::with_capacity(MAX_STATUS_LINE);
    let mut buf = [0u8; MAX_STATUS_LINE];
    while !head.contains(&b'\n') && head.len() < MAX_STATUS_LINE {
        match stream.read(&mut buf[..MAX_STATUS_LINE - head.len()]).await {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
    parse_status_line(&head)
}

/// The code of `HTTP/1.x NNN ...`.
pub(crate) fn parse_status_line(head: &[u8]) -> Result<u16, String> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let text = String::from_utf8_lossy(line);
    let mut words = text.split_whitespace();
    match (words.next(), words.next().and_then(|c| c.parse::<u16>().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => Ok(code),
        _ if head.is_empty() => Err("the connection closed without an answer".into()),
        _ => Err(format!("not an HTTP status line: {:?}", text.trim_end())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content\r\n"), Ok(204));
        assert_eq!(parse_status_line(b"HTTP/1.0 500 Oops\r\nx"), Ok(500));
        assert!(parse_status_line(b"").unwrap_err().contains("closed"));
        assert!(parse_status_line(b"SSH-2.0-OpenSSH\r\n").unwrap_err().contains("SSH"));
    }

    #[tokio::test]
    async fn real_sockets() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                let code = if buf[..n].starts_with(b"GET /bad ") { 503 } else { 200 };
                let _ = s.write_all(format!("HTTP/1.0 {code} X\r\n\r\n").as_bytes()).await;
            }
        });
        let mut check = HealthCheck::unchecked();
        check.kind = CheckKind::Tcp;
        assert_eq!(NetProbe::new(addr, &check).check().await, Outcome::Passed { http_status: None });
        check.kind = CheckKind::Http;
        assert_eq!(NetProbe::new(addr, &check).check().await, Outcome::Passed { http_status: Some(200) });
        check.uri = "/bad".into();
        assert_eq!(NetProbe::new(addr, &check).check().await, Outcome::HttpStatus(503));
        // A port nothing listens on (bound, then closed).
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        assert_eq!(NetProbe::new(closed, &check).check().await, Outcome::Refused);
    }
}

//! Many long-lived TCP connections held by the test process itself, to an
//! echo port (`lb-testsrv --echo-port`), and checked on demand: one line
//! out, one answer back on every connection, so a test can tell after each
//! step which connections are still alive and which backend answers each.
//!
//! The sockets are created inside the client's namespace (a socket keeps
//! the namespace it was made in), then used from any thread. `lb-testclient
//! --hold-ms` is the other way to hold connections: it talks all the time
//! and reports only at its end; this one reports per step.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::client::parse_reply;
use crate::{netns, sock};

/// One open connection and the backend that answered its first line.
#[derive(Debug)]
pub struct Held {
    /// The client's own address and port.
    pub src: SocketAddr,
    /// The backend (`b1`, ...) that answered when it was opened.
    pub backend: String,
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

/// A connection that failed a check, and how.
#[derive(Debug)]
pub struct Broken {
    pub src: SocketAddr,
    pub backend: String,
    pub error: String,
}

/// Connections opened together (from consecutive source ports).
#[derive(Debug)]
pub struct HeldSet {
    pub target: SocketAddr,
    pub conns: Vec<Held>,
}

/// How long one answer may take: TCP's first retransmission (200 ms minimum
/// RTO) fits many times, a silently dropped connection does not pass.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

impl HeldSet {
    /// Opens `count` connections to `target` from `ns` (a namespace name),
    /// from source port `src_port_base` on, and asks each once which
    /// backend it reached. Fails if any connection cannot be opened or
    /// answered: a test starts from connections that work.
    pub fn open(ns: &str, target: SocketAddr, src_port_base: u16, count: u16) -> Result<HeldSet> {
        if u32::from(src_port_base) + u32::from(count) > u32::from(u16::MAX) + 1 {
            bail!("source ports {src_port_base} + {count} leave the port range");
        }
        let streams = netns::run_in(ns, move || {
            (0..count)
                .map(|i| {
                    let port = src_port_base + i;
                    sock::tcp_connect(target, Some(port), ANSWER_TIMEOUT)
                        .with_context(|| format!("connecting to {target} from source port {port}"))
                })
                .collect::<Result<Vec<TcpStream>>>()
        })?;
        let mut set = HeldSet { target, conns: Vec::with_capacity(streams.len()) };
        for s in streams {
            let src = s.local_addr().context("local address")?;
            let src = SocketAddr::new(src.ip().to_canonical(), src.port());
            s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
            s.set_write_timeout(Some(ANSWER_TIMEOUT))?;
            let reader = BufReader::new(s.try_clone().context("cloning a socket")?);
            set.conns.push(Held { src, backend: String::new(), writer: s, reader });
        }
        let broken = set.check();
        if let Some(b) = broken.first() {
            bail!("{} of {count} new connections to {target} failed their first answer, e.g. {b:?}", broken.len());
        }
        Ok(set)
    }

    /// Sends one line on every connection, then reads every answer (all
    /// within one [`ANSWER_TIMEOUT`] from the last send, so a check of many
    /// costs about one round trip). Connections that fail, or that another
    /// backend answers than the one they started on, are removed and
    /// returned; a connection checked for the first time learns its backend.
    pub fn check(&mut self) -> Vec<Broken> {
        let mut errors: Vec<Option<String>> = self
            .conns
            .iter_mut()
            .map(|c| c.writer.write_all(b"ping\n").err().map(|e| format!("write: {e}")))
            .collect();
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        for (c, error) in self.conns.iter_mut().zip(errors.iter_mut()) {
            if error.is_some() {
                continue;
            }
            *error = c.answer(deadline).err();
        }
        let mut broken = Vec::new();
        let mut kept = Vec::with_capacity(self.conns.len());
        for (c, error) in self.conns.drain(..).zip(errors) {
            match error {
                None => kept.push(c),
                Some(error) => broken.push(Broken { src: c.src, backend: c.backend, error }),
            }
        }
        self.conns = kept;
        broken
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

impl Held {
    /// Reads one answer line by `deadline`; checks (or learns) its backend.
    fn answer(&mut self, deadline: Instant) -> Result<(), String> {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        self.reader.get_ref().set_read_timeout(Some(left)).map_err(|e| format!("timeout: {e}"))?;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => return Err("closed by the peer".into()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(format!("no answer within {ANSWER_TIMEOUT:?}"));
            }
            Err(e) => return Err(format!("read: {e}")),
        }
        let (backend, _) = parse_reply(&line).map_err(|e| format!("{e:#}"))?;
        if self.backend.is_empty() {
            self.backend = backend;
        } else if backend != self.backend {
            return Err(format!("answered by {backend}, not {}", self.backend));
        }
        Ok(())
    }
}

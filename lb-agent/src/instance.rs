//! One agent per interface: a lock file (`flock`, released by the kernel
//! when the agent dies, even by kill -9) and a control socket that
//! `lb-agent reload` talks to, both in `lb.run_dir`.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

/// The request `lb-agent reload` sends.
pub const RELOAD_REQUEST: &str = "reload";
/// The request `lb-agent maintenance` sends: withdraw the routes, wait for
/// traffic to drain, then stop.
pub const MAINTENANCE_REQUEST: &str = "maintenance";
/// First word of a successful answer; anything else is an error.
pub const OK_PREFIX: &str = "ok";

pub fn lock_path(run_dir: &Path, iface: &str) -> PathBuf {
    run_dir.join(format!("{iface}.lock"))
}

pub fn socket_path(run_dir: &Path, iface: &str) -> PathBuf {
    run_dir.join(format!("{iface}.sock"))
}

/// This agent's claim on an interface; dropping it removes the socket and
/// lock files (the lock itself goes with the process).
pub struct Instance {
    lock: File,
    lock_path: PathBuf,
    socket_path: PathBuf,
}

impl Instance {
    /// Takes the interface's lock or explains who holds it.
    pub fn claim(run_dir: &Path, iface: &str) -> Result<Instance> {
        std::fs::create_dir_all(run_dir).with_context(|| format!("creating lb.run_dir {}", run_dir.display()))?;
        let lock_path = lock_path(run_dir, iface);
        let mut lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening lock file {}", lock_path.display()))?;
        // SAFETY: a valid open fd.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut pid = String::new();
            let _ = lock.read_to_string(&mut pid);
            bail!(
                "another lb-agent (pid {}) already manages {iface} (it holds {}); stop it first, or change its config with `lb-agent reload`",
                pid.trim(),
                lock_path.display()
            );
        }
        lock.set_len(0)?;
        write!(lock, "{}", std::process::id())?;
        Ok(Instance { lock, lock_path, socket_path: socket_path(run_dir, iface) })
    }

    /// Binds the control socket (a stale one of a dead agent is replaced:
    /// we hold the lock, so nobody else serves it).
    pub fn listen(&self) -> Result<tokio::net::UnixListener> {
        let _ = std::fs::remove_file(&self.socket_path);
        tokio::net::UnixListener::bind(&self.socket_path)
            .with_context(|| format!("binding control socket {}", self.socket_path.display()))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket_path);
        let _ = std::fs::remove_file(&self.lock_path);
        let _ = &self.lock;
    }
}

/// How long `lb-agent reload` waits for the agent's answer (resolving new
/// backends' next hops may take a few seconds).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends one request to the agent managing `iface` and returns its answer.
pub fn request(run_dir: &Path, iface: &str, request: &str) -> Result<String> {
    request_within(run_dir, iface, request, REQUEST_TIMEOUT)
}

/// [`request`] with another limit for the answer.
pub fn request_within(run_dir: &Path, iface: &str, request: &str, timeout: Duration) -> Result<String> {
    let path = socket_path(run_dir, iface);
    let mut s = UnixStream::connect(&path).with_context(|| {
        format!("no lb-agent answers on {} (is `lb-agent run` running for {iface} with this config's run_dir?)", path.display())
    })?;
    s.set_read_timeout(Some(timeout))?;
    writeln!(s, "{request}")?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    BufReader::new(s).read_to_string(&mut answer).context("reading the agent's answer")?;
    Ok(answer)
}

/// Reads one request line from a control connection.
pub fn read_request(stream: &std::os::unix::net::UnixStream) -> Result<String> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

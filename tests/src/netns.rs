//! Running our own code inside a topology's namespace: a thread that
//! `setns`es first (the namespace is per thread, and threads it starts
//! inherit it), and a TCP listener that accepts and closes on every local
//! address of a namespace (what a health check needs, at thousands of
//! connections a second, without a process per address).

use std::fs::File;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow, bail};

/// Runs `f` on a new thread inside network namespace `ns` (a name under
/// `/run/netns`) and returns its result.
pub fn run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    spawn_in(ns, f)?.join().map_err(|_| anyhow!("the thread in namespace {ns} panicked"))?
}

/// Starts `f` on a new thread inside network namespace `ns`.
pub fn spawn_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<JoinHandle<Result<T>>> {
    let path = Path::new("/run/netns").join(ns);
    let nsf = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(std::thread::spawn(move || {
        // SAFETY: setns on a namespace descriptor, for this thread only.
        if unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns({}): {}", path.display(), std::io::Error::last_os_error());
        }
        drop(nsf);
        f()
    }))
}

/// A dual-stack listener on `[::]:port` in a namespace that accepts every
/// connection and closes it at once. Dropping it stops the thread.
pub struct NsListener {
    fd: i32,
    accepted: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl NsListener {
    pub fn start(ns: &str, port: u16) -> Result<NsListener> {
        let (tx, rx) = std::sync::mpsc::channel();
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let thread = spawn_in(ns, move || {
            let listener = match TcpListener::bind(("::", port)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(anyhow!("listening on [::]:{port}: {e}")));
                    return Ok(());
                }
            };
            let _ = tx.send(Ok(listener.as_raw_fd()));
            // Ends when `drop` shuts the socket down (accept then fails).
            while let Ok((stream, _)) = listener.accept() {
                count.fetch_add(1, Ordering::Relaxed);
                drop(stream);
            }
            Ok(())
        })?;
        let fd = rx.recv().context("the listener thread ended before listening")??;
        Ok(NsListener { fd, accepted, thread: Some(thread) })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for NsListener {
    fn drop(&mut self) {
        // shutdown() on a listening socket wakes a blocked accept() with
        // EINVAL; the thread then closes the socket itself.
        // SAFETY: the descriptor stays open until the thread returns.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

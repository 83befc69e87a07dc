//! Cleanup state shared with the signal handler: whatever a test made is removed even when it dies.

use super::*;


#[derive(Default)]
pub(super) struct State {
    /// Set by cleanup; nothing new may be created afterwards.
    pub(super) closed: bool,
    pub(super) namespaces: Vec<String>,
    pub(super) procs: Vec<Arc<ProcInner>>,
    /// Pass-all XDP programs on the bridge ports, attached while these are open.
    pub(super) xdp_links: Vec<aya::Ebpf>,
}

pub(super) struct Inner {
    pub(super) run_id: String,
    pub(super) run_dir: PathBuf,
    pub(super) bpffs: PathBuf,
    pub(super) log_dir: PathBuf,
    pub(super) keep_logs: AtomicBool,
    pub(super) state: Mutex<State>,
}

impl Inner {
    /// Idempotent; safe to call from the signal thread while the owner is mid-build.
    pub(super) fn cleanup(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let first = !st.closed;
        st.closed = true;
        stop_all(&st.procs);
        for p in &st.procs {
            if matches!(p.child.lock().unwrap().try_wait(), Ok(None)) {
                problems.push(format!("{} (pid {}) survived SIGKILL", p.label, p.pid));
            }
        }
        // Hosts before the switch (order does not matter for correctness).
        for ns in st.namespaces.iter().rev() {
            if let Err(e) = delete_namespace(ns) {
                problems.push(format!("{e:#}"));
            }
        }
        st.namespaces.clear();
        st.xdp_links.clear();
        if let Err(e) = unmount_and_remove(&self.bpffs, &self.run_dir) {
            problems.push(format!("{e:#}"));
        }
        let failed = self.keep_logs.load(Ordering::SeqCst) || std::thread::panicking();
        if first && self.log_dir.exists() {
            if failed || !problems.is_empty() {
                eprintln!(
                    "[lbt] {}: logs kept in {}",
                    self.run_id,
                    self.log_dir.display()
                );
            } else {
                let _ = fs::remove_dir_all(&self.log_dir);
            }
        }
        for p in &problems {
            eprintln!("[lbt] cleanup of {}: {p}", self.run_id);
        }
        problems
    }
}

pub(super) fn live() -> &'static Mutex<Vec<Weak<Inner>>> {
    static LIVE: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());
    &LIVE
}

/// Cleans up every topology of this process that is still alive.
pub fn cleanup_all() {
    let all: Vec<Arc<Inner>> = live()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for t in all {
        t.cleanup();
    }
}

pub(super) static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::SeqCst);
    let b = sig as u8;
    // SAFETY: write(2) is async-signal-safe; the pipe end is non-blocking.
    unsafe { libc::write(fd, &b as *const u8 as *const libc::c_void, 1) };
}

/// Installs (once per process) handlers for SIGINT, SIGTERM and SIGHUP that
/// clean up every live topology, then exit with 128 + the signal number. The
/// handler only writes to a pipe; a thread does the work.
pub fn install_signal_cleanup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut fds = [0; 2];
        // SAFETY: fds has room for two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            eprintln!(
                "[lbt] cannot create the signal pipe: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        // SAFETY: fcntl on our own descriptor.
        unsafe { libc::fcntl(fds[1], libc::F_SETFL, libc::O_NONBLOCK) };
        SIGNAL_PIPE.store(fds[1], Ordering::SeqCst);
        let read_fd = fds[0];
        std::thread::Builder::new()
            .name("lbt-signals".into())
            .spawn(move || {
                let mut b = 0u8;
                loop {
                    // SAFETY: reading one byte into b.
                    let n =
                        unsafe { libc::read(read_fd, &mut b as *mut u8 as *mut libc::c_void, 1) };
                    if n == 1 {
                        break;
                    }
                    if n < 0
                        && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                    {
                        continue;
                    }
                    return;
                }
                eprintln!("[lbt] caught signal {b}: tearing down the test network");
                cleanup_all();
                // SAFETY: exiting without running other threads' destructors is what we want here.
                unsafe { libc::_exit(128 + b as libc::c_int) };
            })
            .expect("spawn the signal thread");
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: a zeroed sigaction with a handler that only calls write(2).
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    });
}


//! A throw-away network of namespaces for end-to-end tests:
//!
//! ```text
//!  client (198.51.100.10, 2001:db8::10) ─┐
//!  lb     (198.51.100.2,  2001:db8::2)  ─┤ "sw": bridge br0
//!  bN     (198.51.100.1N, 2001:db8::1N, VIPs on lo) ─┘
//! ```
//!
//! Each host namespace has one veth `eth0` (TX checksum offload off, so its
//! packets carry real checksums as on a wire) whose peer `v-<host>` is a port
//! of `br0` in the `sw` namespace, with GRO on and a pass-all XDP program so
//! frames the LB sends with `XDP_TX` are delivered, and TX VLAN offload off so
//! tags reach each host's XDP program inside the frame, as from a wire; the
//! bridge does not call netfilter, so malformed frames cross it as a wire
//! would carry them. The client routes the VIP networks via the LB
//! and nothing has a default route. Nothing is created in the caller's network
//! namespace: links are made directly inside the namespaces.
//!
//! Names are `lbt<pid>-<seq>-<host>`, so a later run can tell that the process
//! that made a namespace is gone ([`sweep_stale`]). A per-run bpffs is mounted
//! at `/run/lbt<pid>-<seq>/bpf` from the caller's mount namespace (inside
//! `ip netns exec`, `/sys` is remounted, so `/sys/fs/bpf` is not shared).
//!
//! Cleanup ([`Topology::cleanup`], run by `Drop` and by the signal handler that
//! [`install_signal_cleanup`] installs): SIGTERM to every process the topology
//! started, SIGKILL after 2 s, SIGKILL to anything else still inside its
//! namespaces, delete the namespaces, unmount and remove the bpffs, and remove
//! the log directory unless a test failed (then its path is printed).

use anyhow::{Context, Result, anyhow, bail};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once, Weak};
use std::time::{Duration, Instant};

pub const CLIENT: &str = "client";
pub const LB: &str = "lb";
pub const SWITCH: &str = "sw";

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
pub const LB_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const LB_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x2);
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x10);
/// The client routes these via the LB.
pub const VIP_NET_V4: &str = "192.0.2.0/24";
pub const VIP_NET_V6: &str = "2001:db8:f::/64";
/// Name of the interface of every host namespace.
pub const IFACE: &str = "eth0";
/// Most backends a topology can have (their addresses are 198.51.100.11..=99).
pub const MAX_BACKENDS: usize = 89;

/// SIGTERM first, SIGKILL after this.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Default time limit of [`Topology::exec`].
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// Name of backend `i` (1-based): `b1`, `b2`, ...
pub fn backend_name(i: usize) -> String {
    format!("b{i}")
}

/// IPv4 address of backend `i` (1-based): 198.51.100.1i.
pub fn backend_v4(i: usize) -> Ipv4Addr {
    assert!(
        (1..=MAX_BACKENDS).contains(&i),
        "backend index {i} out of 1..={MAX_BACKENDS}"
    );
    Ipv4Addr::new(198, 51, 100, 10 + i as u8)
}

/// IPv6 address of backend `i` (1-based): 2001:db8::1i (same digits as the IPv4 one).
pub fn backend_v6(i: usize) -> Ipv6Addr {
    assert!(
        (1..=MAX_BACKENDS).contains(&i),
        "backend index {i} out of 1..={MAX_BACKENDS}"
    );
    format!("2001:db8::{}", 10 + i)
        .parse()
        .expect("valid IPv6 literal")
}

/// Whether this process runs as root (needed for namespaces and XDP).
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[derive(Clone, Debug)]
pub struct TopologyOptions {
    /// Number of backends (b1..bN).
    pub backends: usize,
    /// Addresses put on every backend's `lo` (the VIPs it serves by DSR).
    pub backend_vips: Vec<IpAddr>,
    /// MTU of the LB's and the backends' interfaces and of every bridge port.
    /// Larger than the client's 1500 so a full-size client packet still fits
    /// once encapsulated (IPIP adds 20 bytes, IP6IP6 40).
    pub underlay_mtu: u32,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        Self {
            backends: 3,
            backend_vips: vec![IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)],
            underlay_mtu: 1600,
        }
    }
}

/// One host of the topology.
#[derive(Clone, Debug)]
pub struct HostInfo {
    /// Short name: `client`, `lb`, `b1`, ... (or `sw`).
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

// ---------------------------------------------------------------------------
// Processes

struct ProcInner {
    label: String,
    host: String,
    pid: u32,
    log_path: PathBuf,
    child: Mutex<Child>,
    lines: Mutex<(Vec<String>, bool)>,
    line_cv: Condvar,
}

/// A process started by [`Topology::spawn`]. The topology stops it on cleanup;
/// cloning the handle does not change that.
#[derive(Clone)]
pub struct Proc(Arc<ProcInner>);

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Proc({} pid {} on {}, log {})",
            self.0.label,
            self.0.pid,
            self.0.host,
            self.0.log_path.display()
        )
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.pid
    }

    pub fn label(&self) -> &str {
        &self.0.label
    }

    /// The file its stdout (`[stdout] ` prefix) and stderr (`[stderr] `) go to.
    pub fn log_path(&self) -> &Path {
        &self.0.log_path
    }

    /// The stdout lines printed so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.0.lines.lock().unwrap().0.clone()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.0.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Its exit status if it has exited.
    pub fn try_status(&self) -> Option<ExitStatus> {
        self.0.child.lock().unwrap().try_wait().ok().flatten()
    }

    /// Waits until a stdout line contains `pattern` and returns that line. Fails
    /// at the timeout or when the process exits first, quoting its log.
    pub fn wait_for_line(&self, pattern: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.0.lines.lock().unwrap();
        let mut seen = 0;
        loop {
            if let Some(l) = guard.0[seen..].iter().find(|l| l.contains(pattern)) {
                return Ok(l.clone());
            }
            seen = guard.0.len();
            let eof = guard.1;
            let now = Instant::now();
            if eof || now >= deadline {
                drop(guard);
                // Give the stderr reader a moment so the log is complete.
                std::thread::sleep(Duration::from_millis(100));
                let status = self
                    .try_status()
                    .map(|s| format!("exited with {s}"))
                    .unwrap_or_else(|| "still running".into());
                bail!(
                    "{} on {} (pid {}) printed no line containing {pattern:?} {} ({status}); log {}:\n{}",
                    self.0.label,
                    self.0.host,
                    self.0.pid,
                    if eof {
                        "before closing its stdout"
                    } else {
                        "within the timeout"
                    },
                    self.0.log_path.display(),
                    self.log_tail(30)
                );
            }
            // Wake up regularly even without output to notice the deadline.
            let wait = (deadline - now).min(Duration::from_millis(200));
            guard = self.0.line_cv.wait_timeout(guard, wait).unwrap().0;
        }
    }

    /// Sends SIGKILL (no chance to clean up, like a crash) and waits for the
    /// exit, at most [`KILL_WAIT`].
    pub fn kill(&self) -> Result<ExitStatus> {
        {
            let mut child = self.0.child.lock().unwrap();
            if matches!(child.try_wait(), Ok(None)) {
                // SAFETY: the child is not reaped yet, so its pid is still ours.
                unsafe { libc::kill(self.0.pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        let deadline = Instant::now() + KILL_WAIT;
        while Instant::now() < deadline {
            if let Some(st) = self.try_status() {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{} (pid {}) still running {KILL_WAIT:?} after SIGKILL", self.0.label, self.0.pid)
    }

    /// Waits at most `limit` for the process to exit on its own.
    pub fn wait_exit(&self, limit: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.try_status() {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                bail!("{} (pid {}) still running after {limit:?}; log {}:\n{}", self.0.label, self.0.pid, self.0.log_path.display(), self.log_tail(20));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM, waits up to 2 s, then SIGKILL; returns the exit status.
    pub fn stop(&self) -> Result<ExitStatus> {
        stop_all(std::slice::from_ref(&self.0));
        self.try_status().with_context(|| {
            format!(
                "{} (pid {}) did not exit even after SIGKILL",
                self.0.label, self.0.pid
            )
        })
    }
}

/// How long a SIGKILLed process may take to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Signals every process still running (only while it is unreaped, so the
/// pid cannot have been reused), waits `STOP_GRACE`, then kills the rest.
fn stop_all(procs: &[Arc<ProcInner>]) {
    let signal_running = |sig: libc::c_int| {
        let mut any = false;
        for p in procs {
            let mut child = p.child.lock().unwrap();
            if matches!(child.try_wait(), Ok(None)) {
                // SAFETY: the child is not reaped yet, so its pid is still ours.
                unsafe { libc::kill(p.pid as libc::pid_t, sig) };
                any = true;
            }
        }
        any
    };
    let all_exited = |deadline: Instant| loop {
        let running = procs
            .iter()
            .any(|p| matches!(p.child.lock().unwrap().try_wait(), Ok(None)));
        if !running {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !signal_running(libc::SIGTERM) {
        return;
    }
    if all_exited(Instant::now() + STOP_GRACE) {
        return;
    }
    signal_running(libc::SIGKILL);
    all_exited(Instant::now() + Duration::from_secs(2));
}

fn spawn_reader(
    stream: impl Read + Send + 'static,
    prefix: &'static str,
    log: Arc<Mutex<File>>,
    lines: Option<Arc<ProcInner>>,
) {
    std::thread::spawn(move || {
        let reader = BufReader::new(stream);
        for line in reader.split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            if let Ok(mut f) = log.lock() {
                let _ = writeln!(f, "{prefix}{line}");
            }
            if let Some(p) = &lines {
                p.lines.lock().unwrap().0.push(line);
                p.line_cv.notify_all();
            }
        }
        if let Some(p) = &lines {
            p.lines.lock().unwrap().1 = true;
            p.line_cv.notify_all();
        }
    });
}

/// Runs a command with a time limit, collecting its output; kills it at the limit.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {desc}"))?;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = t_err.join().unwrap_or_default();
            bail!(
                "{desc} did not finish within {timeout:?} (killed); stderr: {}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

/// Runs a command on the caller's side and fails with its stderr unless it succeeds.
fn run_ok(program: &str, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = run_with_timeout(cmd, EXEC_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------------------
// Cleanup state shared with the signal handler

#[derive(Default)]
struct State {
    /// Set by cleanup; nothing new may be created afterwards.
    closed: bool,
    namespaces: Vec<String>,
    procs: Vec<Arc<ProcInner>>,
    /// Pass-all XDP programs on the bridge ports, attached while these are open.
    xdp_links: Vec<aya::Ebpf>,
}

struct Inner {
    run_id: String,
    run_dir: PathBuf,
    bpffs: PathBuf,
    log_dir: PathBuf,
    keep_logs: AtomicBool,
    state: Mutex<State>,
}

impl Inner {
    /// Idempotent; safe to call from the signal thread while the owner is mid-build.
    fn cleanup(&self) -> Vec<String> {
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

fn live() -> &'static Mutex<Vec<Weak<Inner>>> {
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

static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

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

// ---------------------------------------------------------------------------
// Namespaces, mounts, stale runs

fn namespace_pids(ns: &str) -> Vec<i32> {
    run_ok("ip", &["netns", "pids", ns])
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn delete_namespace(ns: &str) -> Result<()> {
    if !Path::new("/run/netns").join(ns).exists() {
        return Ok(());
    }
    // Anything still inside (a process started with `exec` that outlived its
    // timeout, a child's own children) dies with it.
    let pids = namespace_pids(ns);
    for pid in &pids {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while !pids.is_empty() && Instant::now() < deadline && !namespace_pids(ns).is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    run_ok("ip", &["netns", "delete", ns]).map(|_| ())
}

fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let p = path.to_string_lossy();
    info.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(&*p))
}

fn agent_run_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("agent")
}

fn unmount_and_remove(bpffs: &Path, run_dir: &Path) -> Result<()> {
    if is_mountpoint(bpffs) {
        let c = std::ffi::CString::new(bpffs.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: c is a valid path string.
        if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
            let e = std::io::Error::last_os_error();
            // Busy (something still has its cwd there): detach lazily.
            // SAFETY: as above.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                bail!("cannot unmount {}: {e}", bpffs.display());
            }
        }
    }
    // An agent killed with SIGKILL leaves its lock file and socket here.
    let agent_dir = agent_run_dir(run_dir);
    if agent_dir.exists() {
        fs::remove_dir_all(&agent_dir).with_context(|| format!("cannot remove {}", agent_dir.display()))?;
    }
    for d in [bpffs, run_dir] {
        if d.exists() {
            fs::remove_dir(d).with_context(|| format!("cannot remove {}", d.display()))?;
        }
    }
    Ok(())
}

fn mount_bpffs(dir: &Path) -> Result<()> {
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C strings, no data argument.
    let r = unsafe {
        libc::mount(
            c("bpf").as_ptr(),
            target.as_ptr(),
            c("bpf").as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        bail!(
            "cannot mount bpffs at {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Attaches the project's pass-all XDP program (`xdp_pass` in lb-ebpf) to
/// `ifname` in namespace `ns`. A frame sent into a veth with `XDP_TX` or a
/// redirect is only processed by the peer when the peer has an XDP program
/// (`veth_xdp_flush` wakes the peer's NAPI only then; GRO alone is not enough
/// for XDP_TX), so every bridge port gets one. Dropping the returned object
/// detaches it.
pub fn attach_xdp_pass(ns: &str, ifname: &str) -> Result<aya::Ebpf> {
    let ns_path = Path::new("/run/netns").join(ns);
    let (ns, ifname) = (ns.to_string(), ifname.to_string());
    // setns() affects only the calling thread: do the namespace-bound part on one of our own.
    std::thread::spawn(move || -> Result<aya::Ebpf> {
        let nsf = File::open(&ns_path).with_context(|| format!("cannot open {}", ns_path.display()))?;
        // SAFETY: setns on a namespace descriptor, for this thread only.
        if unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns({}): {}", ns_path.display(), std::io::Error::last_os_error());
        }
        let mut ebpf = lb_agent::dataplane::load_minimal_object()?;
        let program = lb_agent::dataplane::load_program(&mut ebpf, lb_common::programs::PASS)?;
        program
            .attach(&ifname, aya::programs::XdpMode::Driver)
            .with_context(|| format!("attaching the pass-all XDP program to {ifname} in {ns}"))?;
        Ok(ebpf)
    })
    .join()
    .map_err(|_| anyhow!("the XDP attach thread panicked"))?
}

/// The pid encoded in a name `lbt<pid>-...`, if it is one of ours.
pub fn creator_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix("lbt")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    if digits.is_empty() || !rest[digits.len()..].starts_with('-') {
        return None;
    }
    digits.parse().ok()
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence.
    pid > 0
        // SAFETY: kill(2) on a pid of a child this test started; no memory involved.
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Removes namespaces, bpffs mounts and log directories left by runs whose
/// process is gone (killed with SIGKILL, a crashed or failed test run).
/// Returns what it removed.
pub fn sweep_stale() -> Vec<String> {
    let mut removed = Vec::new();
    let stale = |name: &str| creator_pid(name).is_some_and(|pid| !pid_alive(pid));
    if let Ok(entries) = fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if stale(&name) {
                match delete_namespace(&name) {
                    Ok(()) => removed.push(format!("namespace {name}")),
                    Err(err) => eprintln!("[lbt] cannot remove stale namespace {name}: {err:#}"),
                }
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/run") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if stale(&name) {
                let dir = e.path();
                match unmount_and_remove(&dir.join("bpf"), &dir) {
                    Ok(()) => removed.push(format!("run dir {}", dir.display())),
                    Err(err) => eprintln!("[lbt] cannot remove stale {}: {err:#}", dir.display()),
                }
            }
        }
    }
    // Logs of dead runs (kept because they failed or were killed) live until the next run.
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if stale(&name) && e.path().is_dir() && fs::remove_dir_all(e.path()).is_ok() {
                removed.push(format!("log dir {}", e.path().display()));
            }
        }
    }
    for r in &removed {
        eprintln!("[lbt] removed stale {r}");
    }
    removed
}

// ---------------------------------------------------------------------------
// The topology

pub struct Topology {
    inner: Arc<Inner>,
    hosts: Vec<HostInfo>,
    backends: Vec<String>,
    log_seq: AtomicU32,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Topology({}, logs {})",
            self.inner.run_id,
            self.inner.log_dir.display()
        )
    }
}

impl Topology {
    /// Builds the whole network; on any error everything made so far is removed.
    pub fn build(opts: TopologyOptions) -> Result<Topology> {
        if !is_root() {
            bail!("building a test topology needs root (network namespaces, bpffs mounts)");
        }
        if opts.backends == 0 || opts.backends > MAX_BACKENDS {
            bail!(
                "backends must be in 1..={MAX_BACKENDS}, not {}",
                opts.backends
            );
        }
        install_signal_cleanup();
        sweep_stale();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let run_id = format!(
            "lbt{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let run_dir = Path::new("/run").join(&run_id);
        let log_dir = std::env::temp_dir().join(&run_id);
        let _ = fs::remove_dir_all(&log_dir);
        fs::create_dir_all(&log_dir)
            .with_context(|| format!("cannot create {}", log_dir.display()))?;

        let mut hosts = vec![
            HostInfo {
                name: SWITCH.into(),
                ns: format!("{run_id}-{SWITCH}"),
                v4: None,
                v6: None,
            },
            HostInfo {
                name: CLIENT.into(),
                ns: format!("{run_id}-{CLIENT}"),
                v4: Some(CLIENT_V4),
                v6: Some(CLIENT_V6),
            },
            HostInfo {
                name: LB.into(),
                ns: format!("{run_id}-{LB}"),
                v4: Some(LB_V4),
                v6: Some(LB_V6),
            },
        ];
        let backends: Vec<String> = (1..=opts.backends).map(backend_name).collect();
        for (i, b) in backends.iter().enumerate() {
            hosts.push(HostInfo {
                name: b.clone(),
                ns: format!("{run_id}-{b}"),
                v4: Some(backend_v4(i + 1)),
                v6: Some(backend_v6(i + 1)),
            });
        }

        let inner = Arc::new(Inner {
            bpffs: run_dir.join("bpf"),
            run_dir,
            log_dir,
            run_id,
            keep_logs: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        });
        live().lock().unwrap().retain(|w| w.strong_count() > 0);
        live().lock().unwrap().push(Arc::downgrade(&inner));
        // From here on, dropping `topo` (an error below) removes what exists.
        let topo = Topology {
            inner,
            hosts,
            backends,
            log_seq: AtomicU32::new(0),
        };
        topo.setup(&opts)
            .with_context(|| format!("building test topology {}", topo.inner.run_id))?;
        Ok(topo)
    }

    fn setup(&self, opts: &TopologyOptions) -> Result<()> {
        // The per-run bpffs, mounted here (the caller's mount namespace) so
        // that every `ip netns exec` started later sees it.
        fs::create_dir_all(&self.inner.bpffs)
            .with_context(|| format!("cannot create {}", self.inner.bpffs.display()))?;
        mount_bpffs(&self.inner.bpffs)?;

        for h in &self.hosts {
            let mut st = self.inner.state.lock().unwrap();
            if st.closed {
                bail!("interrupted");
            }
            st.namespaces.push(h.ns.clone());
            run_ok("ip", &["netns", "add", &h.ns])?;
        }

        // Sysctls before any link exists, so the `default` values apply to eth0.
        for h in &self.hosts {
            let mut s: Vec<(&str, &str)> = vec![
                ("net/ipv6/conf/all/accept_dad", "0"),
                ("net/ipv6/conf/default/accept_dad", "0"),
                ("net/ipv6/conf/all/dad_transmits", "0"),
                ("net/ipv6/conf/default/dad_transmits", "0"),
                ("net/ipv6/conf/all/accept_ra", "0"),
                ("net/ipv6/conf/default/accept_ra", "0"),
                ("net/ipv6/conf/all/router_solicitations", "0"),
                ("net/ipv6/conf/default/router_solicitations", "0"),
                ("net/ipv4/conf/all/rp_filter", "0"),
                ("net/ipv4/conf/default/rp_filter", "0"),
            ];
            if self.backends.contains(&h.name) {
                s.extend([
                    ("net/ipv4/conf/all/arp_ignore", "1"),
                    ("net/ipv4/conf/default/arp_ignore", "1"),
                    ("net/ipv4/conf/all/arp_announce", "2"),
                    ("net/ipv4/conf/default/arp_announce", "2"),
                ]);
            }
            if h.name == SWITCH {
                // The switch only bridges; it has no addresses of its own.
                s.push(("net/ipv6/conf/default/disable_ipv6", "1"));
                // br_netfilter is built in and on in every new namespace: the
                // bridge would validate IP headers and silently drop malformed
                // frames, which a wire does not.
                s.extend([
                    ("net/bridge/bridge-nf-call-iptables", "0"),
                    ("net/bridge/bridge-nf-call-ip6tables", "0"),
                    ("net/bridge/bridge-nf-call-arptables", "0"),
                ]);
            }
            let script: String = s
                .iter()
                .map(|(k, v)| format!("echo {v} > /proc/sys/{k} && "))
                .collect::<String>()
                + "true";
            let out = self.exec(&h.name, "sh", &["-c", &script])?;
            if !out.status.success() {
                bail!(
                    "sysctls in {}: {}",
                    h.ns,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }

        let sw = self.ns_name(SWITCH).to_string();
        let mtu = opts.underlay_mtu.to_string();
        run_ok("ip", &["-n", &sw, "link", "set", "lo", "up"])?;
        run_ok(
            "ip",
            &[
                "-n",
                &sw,
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
                "mcast_snooping",
                "0",
            ],
        )?;
        run_ok("ip", &["-n", &sw, "link", "set", "br0", "up"])?;

        for h in self.hosts.iter().filter(|h| h.name != SWITCH) {
            let ns = &h.ns;
            let peer = format!("v-{}", h.name);
            let host_mtu = if h.name == CLIENT {
                "1500"
            } else {
                mtu.as_str()
            };
            run_ok(
                "ip",
                &[
                    "-n", ns, "link", "add", IFACE, "mtu", host_mtu, "type", "veth", "peer",
                    "name", &peer, "mtu", &mtu, "netns", &sw,
                ],
            )?;
            run_ok(
                "ip",
                &["-n", &sw, "link", "set", &peer, "master", "br0", "up"],
            )?;
            // A frame sent with XDP_TX or redirected into a veth is only
            // delivered if the receiving peer has NAPI: GRO on or an XDP
            // program. For XDP_TX, GRO is not enough: veth_xdp_flush() only
            // schedules the peer's NAPI when the peer has an XDP program, so
            // with GRO alone the frames wait in the peer's ring until unrelated
            // traffic polls it. So every bridge port gets both.
            // TX VLAN offload off: a veth whose sender has it on hands the
            // receiver's XDP program the frame without its tag (the tag rides
            // in skb metadata); a wire carries tags inside the frame.
            let out = self.exec(SWITCH, "ethtool", &["-K", &peer, "gro", "on", "txvlan", "off", "tx-vlan-stag-hw-insert", "off"])?;
            if !out.status.success() {
                bail!(
                    "`ethtool -K {peer} gro on txvlan off tx-vlan-stag-hw-insert off` in {sw}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let link = attach_xdp_pass(&sw, &peer)?;
            self.inner.state.lock().unwrap().xdp_links.push(link);
            run_ok("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            if let Some(v4) = h.v4 {
                run_ok(
                    "ip",
                    &["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", IFACE],
                )?;
            }
            if let Some(v6) = h.v6 {
                run_ok(
                    "ip",
                    &[
                        "-n",
                        ns,
                        "-6",
                        "addr",
                        "add",
                        &format!("{v6}/64"),
                        "dev",
                        IFACE,
                        "nodad",
                    ],
                )?;
            }
            // Packets must leave a host as they would leave a real NIC: with
            // complete checksums. With veth's default TX checksum offload they
            // carry only a partial checksum plus skb metadata; XDP on the LB
            // turns them into raw frames without that metadata, and the backend
            // would then drop them as corrupt. (Also turns TSO off, so no
            // larger-than-MTU GSO packets reach XDP.)
            let out = self.exec(&h.name, "ethtool", &["-K", IFACE, "tx", "off"])?;
            if !out.status.success() {
                bail!(
                    "`ethtool -K {IFACE} tx off` in {ns}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            run_ok("ip", &["-n", ns, "link", "set", IFACE, "up"])?;
        }

        let client = self.ns_name(CLIENT).to_string();
        run_ok(
            "ip",
            &[
                "-n",
                &client,
                "route",
                "add",
                VIP_NET_V4,
                "via",
                &LB_V4.to_string(),
            ],
        )?;
        run_ok(
            "ip",
            &[
                "-n",
                &client,
                "-6",
                "route",
                "add",
                VIP_NET_V6,
                "via",
                &LB_V6.to_string(),
            ],
        )?;

        for b in &self.backends {
            let ns = self.ns_name(b).to_string();
            for vip in &opts.backend_vips {
                match vip {
                    IpAddr::V4(a) => run_ok(
                        "ip",
                        &["-n", &ns, "addr", "add", &format!("{a}/32"), "dev", "lo"],
                    )?,
                    IpAddr::V6(a) => run_ok(
                        "ip",
                        &[
                            "-n",
                            &ns,
                            "-6",
                            "addr",
                            "add",
                            &format!("{a}/128"),
                            "dev",
                            "lo",
                            "nodad",
                        ],
                    )?,
                };
            }
        }

        // Addresses usable at once: nothing tentative, every eth0 up.
        let deadline = Instant::now() + Duration::from_secs(10);
        for h in self.hosts.iter().filter(|h| h.name != SWITCH) {
            loop {
                let tentative = run_ok("ip", &["-n", &h.ns, "-6", "addr", "show", "tentative"])?;
                let link = run_ok("ip", &["-n", &h.ns, "-o", "link", "show", IFACE])?;
                if tentative.trim().is_empty() && link.contains("state UP") {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "{}: addresses still tentative or {IFACE} not up after 10 s:\n{tentative}\n{link}",
                        h.ns
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// `lbt<pid>-<seq>`: the prefix of every name of this run.
    pub fn run_id(&self) -> &str {
        &self.inner.run_id
    }

    /// All hosts, the switch first.
    pub fn hosts(&self) -> &[HostInfo] {
        &self.hosts
    }

    /// `b1`, `b2`, ...
    pub fn backends(&self) -> &[String] {
        &self.backends
    }

    pub fn host(&self, host: &str) -> Result<&HostInfo> {
        self.hosts.iter().find(|h| h.name == host).ok_or_else(|| {
            anyhow!(
                "no host {host:?} in topology {} (hosts: {})",
                self.inner.run_id,
                self.hosts
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    /// The namespace of `host` (`client`, `lb`, `sw`, `b1`, ...). Panics on an unknown host.
    pub fn ns_name(&self, host: &str) -> &str {
        match self.host(host) {
            Ok(h) => &h.ns,
            Err(e) => panic!("{e}"),
        }
    }

    /// The host that owns `addr` on its eth0 (`b2` for 198.51.100.12 or 2001:db8::12).
    pub fn host_by_addr(&self, addr: IpAddr) -> Option<&str> {
        let addr = addr.to_canonical();
        self.hosts
            .iter()
            .find(|h| h.v4.map(IpAddr::V4) == Some(addr) || h.v6.map(IpAddr::V6) == Some(addr))
            .map(|h| h.name.as_str())
    }

    /// The per-run bpffs mount, to be used as (or under) the agent's `bpffs_dir`.
    pub fn bpffs_dir(&self) -> &Path {
        &self.inner.bpffs
    }

    /// The per-run directory for the agent's lock file and control socket
    /// (its `run_dir`); removed with everything in it on cleanup.
    pub fn agent_run_dir(&self) -> PathBuf {
        agent_run_dir(&self.inner.run_dir)
    }

    /// The per-run directory of logs and generated files.
    pub fn log_dir(&self) -> &Path {
        &self.inner.log_dir
    }

    /// Keep the log directory after cleanup (done automatically when a test panics).
    pub fn keep_logs(&self) {
        self.inner.keep_logs.store(true, Ordering::SeqCst);
    }

    fn netns_command(&self, host: &str, cmd: &str, args: &[&str]) -> Result<Command> {
        let ns = &self.host(host)?.ns;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, cmd]).args(args);
        Ok(c)
    }

    /// Runs `cmd args` in `host`'s namespace and returns its output (whatever
    /// its exit status), killing it after [`EXEC_TIMEOUT`].
    pub fn exec(&self, host: &str, cmd: &str, args: &[&str]) -> Result<Output> {
        self.exec_timeout(host, cmd, args, EXEC_TIMEOUT)
    }

    pub fn exec_timeout(
        &self,
        host: &str,
        cmd: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Output> {
        if self.inner.state.lock().unwrap().closed {
            bail!("topology {} is torn down", self.inner.run_id);
        }
        run_with_timeout(self.netns_command(host, cmd, args)?, timeout)
    }

    /// Like [`Topology::exec`], but fails (quoting stderr) unless it exits with 0; returns stdout.
    pub fn exec_ok(&self, host: &str, cmd: &str, args: &[&str]) -> Result<String> {
        let out = self.exec(host, cmd, args)?;
        if !out.status.success() {
            bail!(
                "`{cmd} {}` on {host} failed ({}):\n{}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `cmd args` in `host`'s namespace in the background, its stdout and
    /// stderr going to `<log_dir>/<host>-<cmd>-<n>.log`. Cleanup stops it.
    pub fn spawn(&self, host: &str, cmd: &str, args: &[&str]) -> Result<Proc> {
        let base = Path::new(cmd)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| cmd.into());
        let n = self.log_seq.fetch_add(1, Ordering::SeqCst);
        let label = format!("{host}-{base}-{n}");
        let log_path = self.inner.log_dir.join(format!("{label}.log"));
        let mut log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        writeln!(
            log,
            "# {cmd} {} (in {})",
            args.join(" "),
            self.host(host)?.ns
        )?;
        let log = Arc::new(Mutex::new(log));

        let mut st = self.inner.state.lock().unwrap();
        if st.closed {
            bail!("topology {} is torn down", self.inner.run_id);
        }
        let mut command = self.netns_command(host, cmd, args)?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {cmd} on {host}"))?;
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let inner = Arc::new(ProcInner {
            label,
            host: host.into(),
            pid: child.id(),
            log_path,
            child: Mutex::new(child),
            lines: Mutex::new((Vec::new(), false)),
            line_cv: Condvar::new(),
        });
        st.procs.push(inner.clone());
        drop(st);
        spawn_reader(stdout, "[stdout] ", log.clone(), Some(inner.clone()));
        spawn_reader(stderr, "[stderr] ", log, None);
        Ok(Proc(inner))
    }

    /// Waits until `child` prints a stdout line containing `pattern`.
    pub fn wait_for_line(&self, child: &Proc, pattern: &str, timeout: Duration) -> Result<String> {
        child.wait_for_line(pattern, timeout)
    }

    /// Processes started by [`Topology::spawn`] that have exited, with their status.
    pub fn exited(&self) -> BTreeMap<String, ExitStatus> {
        let st = self.inner.state.lock().unwrap();
        st.procs
            .iter()
            .filter_map(|p| {
                p.child
                    .lock()
                    .unwrap()
                    .try_wait()
                    .ok()
                    .flatten()
                    .map(|s| (p.label.clone(), s))
            })
            .collect()
    }

    /// Adds an empty namespace for `host` (loopback up), removed with the
    /// topology: for topologies built on top of this one (`ha_topology`).
    pub fn add_host(&mut self, host: &str, v4: Option<Ipv4Addr>) -> Result<()> {
        let ns = format!("{}-{host}", self.inner.run_id);
        {
            let mut st = self.inner.state.lock().unwrap();
            if st.closed {
                bail!("topology {} is torn down", self.inner.run_id);
            }
            st.namespaces.push(ns.clone());
        }
        run_ok("ip", &["netns", "add", &ns])?;
        run_ok("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        self.hosts.push(HostInfo { name: host.into(), ns, v4, v6: None });
        Ok(())
    }

    /// Keeps a pass-all XDP program (from [`attach_xdp_pass`]) attached
    /// until cleanup.
    pub fn keep_xdp(&self, program: aya::Ebpf) {
        self.inner.state.lock().unwrap().xdp_links.push(program);
    }

    /// Tears everything down now (also done by `Drop`); returns the problems met.
    pub fn cleanup(&self) -> Vec<String> {
        self.inner.cleanup()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.inner.cleanup();
        live()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|w| {
                w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.inner))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_encode_the_creator_pid() {
        assert_eq!(creator_pid("lbt1234-0-client"), Some(1234));
        assert_eq!(creator_pid("lbt77-12"), Some(77));
        assert_eq!(creator_pid("lbtx-1"), None);
        assert_eq!(creator_pid("lbt123"), None);
        assert_eq!(creator_pid("netns1"), None);
    }

    #[test]
    fn addresses_follow_the_plan() {
        assert_eq!(backend_v4(1).to_string(), "198.51.100.11");
        assert_eq!(backend_v4(3).to_string(), "198.51.100.13");
        assert_eq!(backend_v6(2).to_string(), "2001:db8::12");
        assert_eq!(VIP_V6.to_string(), "2001:db8:f::10");
        assert_eq!(CLIENT_V6.to_string(), "2001:db8::10");
        assert_eq!(backend_name(2), "b2");
    }

    #[test]
    fn self_is_alive_and_absurd_pid_is_not() {
        assert!(pid_alive(std::process::id() as i32));
        assert!(!pid_alive(i32::MAX));
    }

    #[test]
    fn run_with_timeout_kills_slow_commands() {
        let mut c = Command::new("sleep");
        c.arg("5");
        let t = Instant::now();
        assert!(run_with_timeout(c, Duration::from_millis(200)).is_err());
        assert!(t.elapsed() < Duration::from_secs(3));
        let mut c = Command::new("sh");
        c.args(["-c", "echo out; echo err >&2"]);
        let o = run_with_timeout(c, Duration::from_secs(5)).unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
        assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    }
}

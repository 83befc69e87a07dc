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

/// True when `test` can run here (as root); otherwise says why it is
/// skipped (it `needs` what, e.g. "network namespaces, XDP") and how to run it.
pub fn root_or_skip(test: &str, needs: &str) -> bool {
    if !is_root() {
        eprintln!("SKIPPED {test}: needs root ({needs}); run it via `cargo xtask test`");
        return false;
    }
    true
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


mod cleanup;
mod process;
mod redirects;
mod setup;
mod system;

pub use cleanup::{cleanup_all, install_signal_cleanup};
pub use process::{Proc, run_with_timeout};
pub use system::{attach_xdp_pass, creator_pid, sweep_stale};
use cleanup::*;
use process::*;
use system::*;

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
        // A process left behind holding the pipes does not hold the caller.
        let mut c = Command::new("sh");
        c.args(["-c", "echo started; sleep 6 & exit 0"]);
        let t = Instant::now();
        let o = run_with_timeout(c, Duration::from_secs(5)).unwrap();
        assert!(o.status.success() && String::from_utf8_lossy(&o.stdout) == "started\n");
        assert!(t.elapsed() < Duration::from_secs(4), "waited {:?} for a pipe a grandchild held", t.elapsed());
    }
}


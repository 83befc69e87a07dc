//! End-to-end forwarding in namespaces: how many packets per second the LB
//! forwards for many small UDP flows, and what each costs the LB's CPU,
//! against the same topology where the LB namespace only reflects
//! (`xdp_floor_tx`: parse, swap MACs, `XDP_TX`), in the same run.
//!
//! Method:
//! - One topology (client, LB, one backend, bridge), used for both runs; the
//!   only difference between them is the XDP program on the LB's eth0: the
//!   real agent (`lb-agent run`, one UDP VIP) or the reflector.
//! - Generator: a thread in the client namespace, an `AF_PACKET` raw socket
//!   with `PACKET_QDISC_BYPASS`, `sendmmsg` of prebuilt 60-byte
//!   Ethernet/IPv4/UDP frames for 1024 flows (source ports), for a fixed time,
//!   at nice -20.
//! - CPUs: the generator runs on CPU 0, and so does everything its send
//!   triggers up to the LB (the client's veth, the bridge). The LB's eth0
//!   NAPI runs threaded (`/sys/class/net/eth0/threaded`), its kthread on
//!   CPU 1 at SCHED_FIFO (see [`thread_napi`]). What the LB sends with
//!   XDP_TX is taken off the wire by its bridge port's (`v-lb`) NAPI, which
//!   that thread schedules on its own CPU and runs as softirq right after its
//!   own poll, as a NIC's TX completions are handled in the driver's NAPI:
//!   so the LB's CPU does the LB's receive, program and transmit, and the
//!   wire's receive of the same frames (equal in both runs), nothing else.
//!   "LB CPU, ns/packet" is that thread's CPU time (schedstat; this kernel
//!   has no IRQ time accounting, so the softirq work is in it) over the
//!   packets. (The wire's NAPI in a thread of its own cost more than it
//!   saved: a wakeup per batch, across CPUs on CPU 0, or a context switch
//!   on CPU 1; and on CPU 0 it took generator time.)
//! - Sink (the wire): every frame the LB namespace sends is addressed to
//!   [`SINK_MAC`], which a static bridge entry puts on the LB's own port, so
//!   the bridge discards it on arrival (it never sends a frame back out of the
//!   port it came in on). The generator's frames come from that MAC, so the
//!   reflector's MAC swap addresses it; the VIP's backends have it as static
//!   next hop. Both runs' output costs the same and reaches no host's stack
//!   (checked: the client's and the backend's eth0 receive ~nothing).
//! - The XDP program's own time per packet: kernel BPF run-time statistics,
//!   enabled with `BPF_ENABLE_STATS` (an fd: the kernel turns them off again
//!   when it is closed, even if the bench dies; no sysctl to restore), read
//!   as `run_time / run_cnt` of the attached program.
//! - Forwarded = the veth driver's `xdp_tx` counter of the LB's eth0 (frames
//!   queued to the peer); for the LB also checked against its own counters.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    fs::File,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use aya::{
    programs::{ProgramInfo, XdpMode},
    sys::{enable_stats, Stats},
};
use etherparse::PacketBuilder;
use lb_common::{programs, Reason};
use lb_tests::{
    agent,
    configs::{TestBackend, TestConfig, TestVip},
    topology::{Topology, TopologyOptions, CLIENT, CLIENT_V4, IFACE, LB, LB_V4, SWITCH},
};
use serde_json::{json, Value};

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
const VIP_PORT: u16 = 9000;
/// Where the LB's output goes: nowhere (see the module comment).
const SINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xfe, 0x01];
const FLOWS: usize = 1024;
const FIRST_SOURCE_PORT: u16 = 20000;
/// 14 + 20 + 8 + 18 = 60 bytes: the smallest Ethernet frame (without FCS).
const PAYLOAD: [u8; 18] = *b"lb-bench-forward!!";
/// Frames per `sendmmsg` call.
const BATCH: usize = 64;
/// Traffic before each measurement (flow table, caches, NAPI threads awake).
const WARMUP: Duration = Duration::from_millis(500);
/// After the generator stops, for queued frames to be processed.
const DRAIN: Duration = Duration::from_millis(50);
/// A bound besides the duration: no run sends more than this.
const MAX_PACKETS: u64 = 500_000_000;
const GENERATOR_CPU: usize = 0;
const LB_CPU: usize = 1;
/// Runs per program, alternating (LB, reflector, reflector, LB, ...); the
/// table shows medians, which shrug off one disturbed run.
const ROUNDS: usize = 3;
const PATIENCE: Duration = Duration::from_secs(30);
/// Name of the LB's port on the bridge (the harness's `v-<host>`).
const LB_PORT: &str = "v-lb";

/// Counters read before and after a measurement.
#[derive(Clone, Copy, Debug, Default)]
struct Snapshot {
    /// veth rx queue counters of the LB's eth0, summed over queues.
    xdp_tx: u64,
    xdp_tx_errors: u64,
    /// Kernel BPF stats of the attached program.
    prog_runs: u64,
    prog_ns: u64,
    /// CPU time and voluntary context switches (sleeps: it ran out of
    /// frames) of the LB's eth0 NAPI thread.
    napi_ns: u64,
    napi_sleeps: u64,
    /// The balancer's own `forwarded` and all-reasons packet counts (LB run only).
    lb_forwarded: u64,
    lb_seen: u64,
    /// Frames received by the other hosts' eth0 (the sink must keep this ~0).
    leaked: u64,
}

impl std::ops::Sub for Snapshot {
    type Output = Snapshot;
    fn sub(self, a: Snapshot) -> Snapshot {
        Snapshot {
            xdp_tx: self.xdp_tx - a.xdp_tx,
            xdp_tx_errors: self.xdp_tx_errors - a.xdp_tx_errors,
            prog_runs: self.prog_runs - a.prog_runs,
            prog_ns: self.prog_ns - a.prog_ns,
            napi_ns: self.napi_ns - a.napi_ns,
            napi_sleeps: self.napi_sleeps - a.napi_sleeps,
            lb_forwarded: self.lb_forwarded - a.lb_forwarded,
            lb_seen: self.lb_seen - a.lb_seen,
            leaked: self.leaked - a.leaked,
        }
    }
}

/// One measured run of one program.
struct Sample {
    /// How long the generator sent.
    seconds: f64,
    sent: u64,
    send_errors: u64,
    /// Counter deltas from before the generator started to after the drain.
    d: Snapshot,
    /// NAPI thread time and (busy, total) jiffies of CPU 0 and 1 while the generator sent.
    napi_ns_sending: u64,
    cpu_sending: [(u64, u64); 2],
}

/// What the table shows, per program: (JSON key, label, is a percentage).
const METRICS: [(&str, &str, bool); 9] = [
    ("sent_pps", "sent by the generator, packets/s", false),
    ("reached_pps", "reached the XDP program, packets/s", false),
    ("forwarded_pps", "forwarded (XDP_TX), packets/s", false),
    ("program_ns", "XDP program, ns/packet (kernel BPF stats)", false),
    ("lb_cpu_ns", "LB CPU, ns/packet (its NAPI thread)", false),
    ("lb_cpu_busy", "LB CPU busy", true),
    ("lb_thread_sleeps_per_1000", "LB NAPI thread sleeps per 1000 packets", false),
    ("lb_capacity_pps", "LB CPU capacity at that cost, packets/s", false),
    ("generator_cpu_busy", "generator CPU busy", true),
];

impl Sample {
    fn metrics(&self) -> [f64; METRICS.len()] {
        let pps = |n: u64| n as f64 / self.seconds;
        let per_packet = |ns: u64| if self.d.prog_runs == 0 { f64::NAN } else { ns as f64 / self.d.prog_runs as f64 };
        [
            pps(self.sent),
            pps(self.d.prog_runs),
            pps(self.d.xdp_tx),
            per_packet(self.d.prog_ns),
            per_packet(self.d.napi_ns),
            self.napi_ns_sending as f64 / (self.seconds * 1e9),
            per_packet(self.d.napi_sleeps) * 1000.0,
            1e9 / per_packet(self.d.napi_ns),
            busy_share(self.cpu_sending[GENERATOR_CPU]),
        ]
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "seconds": self.seconds,
            "sent": self.sent, "send_errors": self.send_errors,
            "reached": self.d.prog_runs,
            "forwarded": self.d.xdp_tx, "xdp_tx_errors": self.d.xdp_tx_errors,
            "lb_cpu_ns_total": self.d.napi_ns, "program_ns_total": self.d.prog_ns,
            "cpu1_busy_all": busy_share(self.cpu_sending[LB_CPU]),
        });
        for ((key, _, _), value) in METRICS.iter().zip(self.metrics()) {
            v[*key] = json!(value);
        }
        v
    }
}

/// Busy share of a CPU from (busy, total) jiffies.
fn busy_share((busy, total): (u64, u64)) -> f64 {
    if total == 0 { f64::NAN } else { busy as f64 / total as f64 }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Each metric's median over the rounds.
fn medians(samples: &[Sample]) -> [f64; METRICS.len()] {
    let all: Vec<_> = samples.iter().map(Sample::metrics).collect();
    std::array::from_fn(|i| median(all.iter().map(|m| m[i]).collect()))
}

// ------------------------------------------------------------ small helpers

fn online_cpus() -> usize {
    // Not available_parallelism(): main() has pinned this process to one CPU.
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    n.max(1) as usize
}

fn set_affinity(pid: libc::pid_t, cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t with one bit set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("sched_setaffinity({pid}, CPU {cpu}): {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Busy and total jiffies of each CPU, from /proc/stat.
fn cpu_times() -> Result<[(u64, u64); 2]> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let mut out = [(0, 0); 2];
    for (cpu, slot) in out.iter_mut().enumerate() {
        let Some(line) = stat.lines().find(|l| l.starts_with(&format!("cpu{cpu} "))) else { continue };
        let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        *slot = (total - idle, total);
    }
    Ok(out)
}

/// Pids of the NAPI kthreads of interfaces named `ifname` (any namespace):
/// their comm is `napi/<ifname>-<napi id>`.
fn napi_threads(ifname: &str) -> BTreeSet<libc::pid_t> {
    let prefix = format!("napi/{ifname}-");
    let mut out = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<libc::pid_t>() else { continue };
        if std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim_end().starts_with(&prefix)) {
            out.insert(pid);
        }
    }
    out
}

/// Makes `ifname`'s NAPI in `host`'s namespace threaded, pins its new
/// kthread (the one not in `before`) to `cpu` and gives it a real-time
/// priority (SCHED_FIFO 50, as RT kernels give their NAPI threads), so that
/// like softirq NAPI it runs as soon as it has frames, before the generator
/// or anything else on that CPU (the kernel's RT throttling still leaves 5 %
/// to others). The NAPI must exist: a veth has one while an XDP program is
/// attached (or GRO is on) and it is up. The thread ends with the NAPI.
fn thread_napi(topo: &Topology, host: &str, ifname: &str, before: &BTreeSet<libc::pid_t>, cpu: usize) -> Result<libc::pid_t> {
    topo.exec_ok(host, "sh", &["-c", &format!("echo 1 > /sys/class/net/{ifname}/threaded")])
        .with_context(|| format!("threaded NAPI for {ifname} on {host}"))?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let new: Vec<_> = napi_threads(ifname).difference(before).copied().collect();
        match new.as_slice() {
            [pid] => {
                set_affinity(*pid, cpu)?;
                let param = libc::sched_param { sched_priority: 50 };
                // SAFETY: a valid sched_param for an existing thread.
                if unsafe { libc::sched_setscheduler(*pid, libc::SCHED_FIFO, &param) } != 0 {
                    bail!("SCHED_FIFO for NAPI thread {pid}: {}", std::io::Error::last_os_error());
                }
                return Ok(*pid);
            }
            [] if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            [] => bail!("no NAPI thread appeared for {ifname} on {host} after enabling threaded NAPI"),
            many => bail!("several new NAPI threads for {ifname} ({many:?}): another test is threading NAPI of the same name"),
        }
    }
}

/// CPU time (ns) of a thread, from /proc/PID/schedstat.
fn thread_cpu_ns(pid: libc::pid_t) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).with_context(|| format!("schedstat of NAPI thread {pid}"))?;
    s.split_whitespace().next().and_then(|v| v.parse().ok()).context("parsing schedstat")
}

/// Voluntary context switches of a thread (each time it went to sleep).
fn thread_sleeps(pid: libc::pid_t) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("status of NAPI thread {pid}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .context("parsing voluntary_ctxt_switches")
}

/// `ethtool -S` of `ifname` in `host`'s namespace, by name.
fn ethtool_stats(topo: &Topology, host: &str, ifname: &str) -> Result<BTreeMap<String, u64>> {
    let out = topo.exec_ok(host, "ethtool", &["-S", ifname])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

/// Sum of veth's per-rx-queue counter `name` (`rx_queue_<n>_<name>`).
fn rx_queue_sum(stats: &BTreeMap<String, u64>, name: &str) -> u64 {
    stats
        .iter()
        .filter(|(k, _)| k.strip_prefix("rx_queue_").and_then(|r| r.split_once('_')).is_some_and(|(_, s)| s == name))
        .map(|(_, v)| v)
        .sum()
}

fn mac_of(topo: &Topology, host: &str, ifname: &str) -> Result<[u8; 6]> {
    let text = topo.exec_ok(host, "cat", &[&format!("/sys/class/net/{ifname}/address")])?;
    let bytes: Vec<u8> = text.trim().split(':').filter_map(|b| u8::from_str_radix(b, 16).ok()).collect();
    bytes.try_into().map_err(|_| anyhow!("bad MAC {:?} of {ifname} on {host}", text.trim()))
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

// ------------------------------------------------------------ generator

/// The frames of the load: one per flow (source port), client to VIP, from
/// [`SINK_MAC`] (so that reflected frames go to the sink).
fn frames(lb_mac: [u8; 6]) -> Vec<Vec<u8>> {
    (0..FLOWS)
        .map(|i| {
            let mut v = Vec::with_capacity(64);
            PacketBuilder::ethernet2(SINK_MAC, lb_mac)
                .ipv4(CLIENT_V4.octets(), VIP.octets(), 64)
                .udp(FIRST_SOURCE_PORT + i as u16, VIP_PORT)
                .write_to_vec(&mut v, &PAYLOAD)
                .expect("writing a frame to a Vec");
            v
        })
        .collect()
}

/// Sends `frames` round-robin from the client namespace's eth0 for
/// `duration` (and at most [`MAX_PACKETS`]); returns (sent, send errors, time).
fn generate(ns: &str, frames: &[Vec<u8>], duration: Duration) -> Result<(u64, u64, Duration)> {
    let ns_path = Path::new("/run/netns").join(ns);
    let frames = frames.to_vec();
    // setns() affects only the calling thread: a thread of its own, which ends with the run.
    std::thread::spawn(move || -> Result<(u64, u64, Duration)> {
        set_affinity(0, GENERATOR_CPU)?;
        // Nice -20 (this thread only, which ends with the run): on a shared
        // machine other work on CPU 0 would otherwise set the offered load.
        // SAFETY: plain setpriority(2) on this thread's id.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -20) } != 0 {
            bail!("setpriority(-20) for the generator: {}", std::io::Error::last_os_error());
        }
        let nsf = File::open(&ns_path).with_context(|| format!("cannot open {}", ns_path.display()))?;
        // SAFETY: setns on a namespace descriptor, for this thread only.
        if unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns({}): {}", ns_path.display(), std::io::Error::last_os_error());
        }
        // Protocol 0: the socket only sends, it receives nothing.
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            bail!("socket(AF_PACKET): {}", std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: an int option.
        if unsafe {
            libc::setsockopt(sock.as_raw_fd(), libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, (&one as *const libc::c_int).cast(), size_of::<libc::c_int>() as u32)
        } != 0
        {
            bail!("PACKET_QDISC_BYPASS: {}", std::io::Error::last_os_error());
        }
        let name = CString::new(IFACE).unwrap();
        // SAFETY: a valid C string; the lookup happens in this thread's namespace.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(ifindex != 0, "no {IFACE} in {}", ns_path.display());
        // SAFETY: a zeroed sockaddr_ll with family and interface set.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: addr is a sockaddr_ll of the given size.
        if unsafe { libc::bind(sock.as_raw_fd(), (&addr as *const libc::sockaddr_ll).cast(), size_of::<libc::sockaddr_ll>() as u32) } != 0 {
            bail!("bind(AF_PACKET, {IFACE}): {}", std::io::Error::last_os_error());
        }
        let mut iovecs: Vec<libc::iovec> =
            frames.iter().map(|f| libc::iovec { iov_base: f.as_ptr() as *mut libc::c_void, iov_len: f.len() }).collect();
        let mut msgs: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .map(|iov| {
                // SAFETY: a zeroed msghdr is valid (no name, no control data).
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        assert!(msgs.len().is_multiple_of(BATCH), "the flow count is a multiple of the batch");
        let (mut sent, mut errors, mut next) = (0u64, 0u64, 0usize);
        let start = Instant::now();
        while start.elapsed() < duration && sent < MAX_PACKETS {
            // SAFETY: BATCH initialised headers pointing at live frames.
            let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs[next..].as_mut_ptr(), BATCH as u32, 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    // The device queue is full: count it and go on.
                    Some(libc::ENOBUFS) | Some(libc::EAGAIN) => {
                        errors += 1;
                        std::thread::yield_now();
                    }
                    _ => bail!("sendmmsg: {e}"),
                }
                continue;
            }
            sent += n as u64;
            next = (next + BATCH) % msgs.len();
        }
        let elapsed = start.elapsed();
        drop(frames);
        Ok((sent, errors, elapsed))
    })
    .join()
    .map_err(|_| anyhow!("the generator thread panicked"))?
}

// ------------------------------------------------------------ one measurement

struct Probe<'a> {
    topo: &'a Topology,
    napi_pid: libc::pid_t,
    /// The attached program's info (its run time and run count).
    program: Box<dyn Fn() -> Result<ProgramInfo> + 'a>,
    /// The balancer's pinned maps (LB run only).
    bpffs: Option<PathBuf>,
}

impl Probe<'_> {
    fn snapshot(&self) -> Result<Snapshot> {
        let eth = ethtool_stats(self.topo, LB, IFACE)?;
        let info = (self.program)()?;
        let (mut lb_forwarded, mut lb_seen) = (0, 0);
        if let Some(dir) = &self.bpffs {
            let c = lb_agent::dataplane::read_pinned_counters(dir)?;
            lb_forwarded = c.reason(Reason::Forwarded).packets;
            lb_seen = c.reasons.iter().map(|r| r.packets).sum();
        }
        Ok(Snapshot {
            xdp_tx: rx_queue_sum(&eth, "xdp_tx"),
            xdp_tx_errors: rx_queue_sum(&eth, "xdp_tx_errors"),
            prog_runs: info.run_count(),
            prog_ns: info.run_time().as_nanos() as u64,
            napi_ns: thread_cpu_ns(self.napi_pid)?,
            napi_sleeps: thread_sleeps(self.napi_pid)?,
            lb_forwarded,
            lb_seen,
            leaked: self.leaked()?,
        })
    }

    fn leaked(&self) -> Result<u64> {
        let mut n = 0;
        for host in [CLIENT.to_string()].into_iter().chain(self.topo.backends().iter().cloned()) {
            let text = self.topo.exec_ok(&host, "cat", &[&format!("/sys/class/net/{IFACE}/statistics/rx_packets")])?;
            n += text.trim().parse::<u64>().with_context(|| format!("rx_packets of {host}: {text:?}"))?;
        }
        Ok(n)
    }

    /// Warm-up, then the measured run.
    fn measure(&self, client_ns: &str, frames: &[Vec<u8>], seconds: Duration) -> Result<Sample> {
        generate(client_ns, frames, WARMUP)?;
        std::thread::sleep(DRAIN);
        let before = self.snapshot()?;
        let (napi0, cpu0) = (thread_cpu_ns(self.napi_pid)?, cpu_times()?);
        let (sent, send_errors, elapsed) = generate(client_ns, frames, seconds)?;
        let (napi1, cpu1) = (thread_cpu_ns(self.napi_pid)?, cpu_times()?);
        // Frames still queued are processed, then counted.
        std::thread::sleep(DRAIN);
        let d = self.snapshot()? - before;
        ensure!(
            d.leaked <= sent / 100 + 100,
            "{} frames reached the client's or a backend's eth0 during the run ({sent} sent): the sink does not hold",
            d.leaked
        );
        let cpu = |i: usize| (cpu1[i].0 - cpu0[i].0, cpu1[i].1 - cpu0[i].1);
        Ok(Sample {
            seconds: elapsed.as_secs_f64(),
            sent,
            send_errors,
            d,
            napi_ns_sending: napi1 - napi0,
            cpu_sending: [cpu(0), cpu(1)],
        })
    }
}

// ------------------------------------------------------------ the two runs

fn config_text(bpffs: &str, run_dir: &str) -> String {
    let lb = TestConfig::new().interface(IFACE).tunnel_source_v4(LB_V4).lb("bpffs_dir", bpffs).lb("run_dir", run_dir);
    let lb = lb.lb("metrics_listen", "off").max_vips(4).max_backends(16);
    // Three backends, all behind the sink's MAC: the LB's output goes where
    // the reflector's goes (see the module comment).
    let sink = mac_text(SINK_MAC);
    let vip = (11..=13).fold(TestVip::new("bench-udp", &format!("{VIP}:{VIP_PORT}/udp")), |vip, b| {
        vip.backend(TestBackend::new(format!("198.51.100.{b}")).mac(&sink))
    });
    lb.vip(vip).to_toml()
}

fn run_lb(topo: &Topology, client_ns: &str, frames: &[Vec<u8>], seconds: Duration) -> Result<Sample> {
    let bpffs = topo.bpffs_dir().join("forward");
    let run_dir = topo.log_dir().join("run-forward");
    std::fs::create_dir_all(&run_dir)?;
    let config_path = topo.log_dir().join("forward.toml");
    std::fs::write(&config_path, config_text(&bpffs.to_string_lossy(), &run_dir.to_string_lossy()))?;
    let before = napi_threads(IFACE);
    let bin = agent::agent_bin()?;
    let agent = topo.spawn(LB, &bin.to_string_lossy(), &["run", "--config", &config_path.to_string_lossy(), "--unload-on-exit"])?;
    agent.wait_for_line("ready:", PATIENCE)?;
    let napi_pid = thread_napi(topo, LB, IFACE, &before, LB_CPU)?;
    let pin = bpffs.join(lb_agent::pins::PROGRAM_PIN);
    let probe = Probe {
        topo,
        napi_pid,
        program: Box::new(move || ProgramInfo::from_pin(&pin).context("the pinned balancer program")),
        bpffs: Some(bpffs),
    };
    let sample = probe.measure(client_ns, frames, seconds);
    let stopped = agent.stop();
    let sample = sample?;
    stopped?;
    // It forwarded the load (a few other frames, such as IPv6 neighbour
    // discovery of the other hosts, pass).
    ensure!(
        sample.d.lb_seen == sample.d.prog_runs && sample.d.lb_forwarded + few(sample.d.lb_seen) >= sample.d.lb_seen,
        "the balancer forwarded {} of the {} packets it counted ({} program runs): the load is not all forwarded",
        sample.d.lb_forwarded,
        sample.d.lb_seen,
        sample.d.prog_runs
    );
    Ok(sample)
}

fn run_reflector(topo: &Topology, client_ns: &str, frames: &[Vec<u8>], seconds: Duration) -> Result<Sample> {
    let before = napi_threads(IFACE);
    let ns_path = Path::new("/run/netns").join(topo.ns_name(LB));
    // The attach happens in the LB namespace; the loaded object (which keeps
    // the program attached) comes back to this thread.
    let ebpf = std::thread::spawn(move || -> Result<aya::Ebpf> {
        let nsf = File::open(&ns_path).with_context(|| format!("cannot open {}", ns_path.display()))?;
        // SAFETY: setns on a namespace descriptor, for this thread only.
        if unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns({}): {}", ns_path.display(), std::io::Error::last_os_error());
        }
        let mut ebpf = lb_agent::dataplane::load_minimal_object()?;
        let program = lb_agent::dataplane::load_program(&mut ebpf, programs::FLOOR_TX)?;
        program.attach(IFACE, XdpMode::Driver).context("attaching the reflector to the LB's eth0")?;
        Ok(ebpf)
    })
    .join()
    .map_err(|_| anyhow!("the attach thread panicked"))??;
    let napi_pid = thread_napi(topo, LB, IFACE, &before, LB_CPU)?;
    let probe = Probe {
        topo,
        napi_pid,
        program: Box::new(|| {
            let p: &aya::programs::Xdp = ebpf.program(programs::FLOOR_TX).context("reflector")?.try_into()?;
            Ok(p.info()?)
        }),
        bpffs: None,
    };
    let sample = probe.measure(client_ns, frames, seconds)?;
    drop(probe);
    drop(ebpf); // detaches
    ensure!(
        sample.d.xdp_tx + sample.d.xdp_tx_errors + few(sample.d.prog_runs) >= sample.d.prog_runs,
        "the reflector sent {} of the {} packets it saw",
        sample.d.xdp_tx + sample.d.xdp_tx_errors,
        sample.d.prog_runs
    );
    Ok(sample)
}

/// How many frames of `n` may be other than the load (they pass).
fn few(n: u64) -> u64 {
    10 + n / 10_000
}

// ------------------------------------------------------------ report

pub fn measure(seconds: Duration) -> Result<Value> {
    ensure!(online_cpus() >= 2, "the forwarding bench needs 2 CPUs (one for the generator, one for the LB)");
    let slice = seconds / ROUNDS as u32;
    println!(
        "\nEnd-to-end forwarding in namespaces: UDP, {FLOWS} flows, 60-byte frames, {:.1} s per program in {ROUNDS} \
         alternating rounds, medians (AF_PACKET sendmmsg generator on CPU {GENERATOR_CPU}, the LB's eth0 NAPI thread, which also takes its output off the wire, on CPU {LB_CPU})",
        seconds.as_secs_f64()
    );
    let topo = Topology::build(TopologyOptions { backends: 1, ..TopologyOptions::default() })?;
    let client_ns = topo.ns_name(CLIENT).to_string();
    let lb_mac = mac_of(&topo, LB, IFACE)?;
    // Static bridge entries: the LB's MAC (no flooding of the load before the
    // bridge would have learnt it), and the sink on the LB's own port
    // (`sticky`: the load's source MAC on the client's port does not move it).
    for (mac, flags) in [(lb_mac, &["static"][..]), (SINK_MAC, &["static", "sticky"][..])] {
        let mac = mac_text(mac);
        let mut args = vec!["fdb", "replace", mac.as_str(), "dev", LB_PORT, "master"];
        args.extend(flags);
        topo.exec_ok(SWITCH, "bridge", &args)?;
    }
    let frames = frames(lb_mac);

    // Enabled for all runs; the kernel disables them when this fd closes.
    let stats = enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS (kernel BPF run-time statistics)")?;
    let (mut lb, mut reflector) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Alternate which goes first, so that a drift hits both alike.
        for lb_turn in if round % 2 == 0 { [true, false] } else { [false, true] } {
            if lb_turn {
                lb.push(run_lb(&topo, &client_ns, &frames, slice).context("forwarding through the LB")?);
            } else {
                reflector.push(run_reflector(&topo, &client_ns, &frames, slice).context("forwarding through the reflector")?);
            }
        }
    }
    drop(stats);

    let (m_lb, m_reflector) = (medians(&lb), medians(&reflector));
    println!("{:<44} {:>14} {:>14} {:>14}", "", "LB", "reflector", "LB/reflector");
    let mut ratios = json!({});
    for (i, (key, label, percent)) in METRICS.iter().enumerate() {
        let (a, b) = (m_lb[i], m_reflector[i]);
        let cell = |v: f64| if *percent { format!("{:.0}%", v * 100.0) } else if v < 100.0 { format!("{v:.1}") } else { group(v) };
        println!("{label:<44} {:>14} {:>14} {:>14.2}", cell(a), cell(b), a / b);
        ratios[*key] = json!(a / b);
    }
    let lost = |samples: &[Sample]| {
        let before: u64 = samples.iter().map(|s| s.sent.saturating_sub(s.d.prog_runs)).sum();
        let at_tx: u64 = samples.iter().map(|s| s.d.xdp_tx_errors).sum();
        let sent: u64 = samples.iter().map(|s| s.sent).sum();
        (before, at_tx, sent)
    };
    for (name, samples) in [("LB", &lb), ("reflector", &reflector)] {
        let (before, at_tx, sent) = lost(samples);
        if before + at_tx > 0 {
            println!("{name}: of {} frames sent, {} were lost before the XDP program (the LB's receive ring was full) and {} at XDP_TX (the wire's ring was full)",
                group(sent as f64), group(before as f64), group(at_tx as f64));
        }
    }
    let limit = limits(&m_lb);
    println!("{limit}");
    let json_of = |samples: &[Sample], m: &[f64; METRICS.len()]| {
        let mut median = json!({});
        for ((key, _, _), v) in METRICS.iter().zip(m) {
            median[*key] = json!(v);
        }
        json!({"median": median, "rounds": samples.iter().map(Sample::to_json).collect::<Vec<_>>()})
    };
    Ok(json!({
        "flows": FLOWS, "frame_bytes": frames[0].len(), "seconds_per_program": seconds.as_secs_f64(), "rounds": ROUNDS,
        "generator": "AF_PACKET SOCK_RAW, PACKET_QDISC_BYPASS, sendmmsg batches of 64, CPU 0",
        "lb": json_of(&lb, &m_lb), "reflector": json_of(&reflector, &m_reflector),
        "ratio_lb_to_reflector": ratios,
        "limited_by": limit,
    }))
}

/// 1234567.0 -> "1,234,567".
fn group(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

/// What limits the LB's packets per second, from its medians.
fn limits(m: &[f64; METRICS.len()]) -> String {
    let metric = |key: &str| METRICS.iter().position(|(k, _, _)| *k == key).map_or(f64::NAN, |i| m[i]);
    let (lb_busy, generator_busy) = (metric("lb_cpu_busy"), metric("generator_cpu_busy"));
    if lb_busy > 0.9 {
        format!(
            "limited by: the LB's CPU ({:.0}% busy in its NAPI thread): packets/s compare the LB with the reflector",
            lb_busy * 100.0
        )
    } else if generator_busy > 0.9 {
        format!(
            "limited by: the generator's CPU ({:.0}% busy sending, in the client's veth and the bridge), not the LB's \
             ({:.0}% busy): packets/s are the offered load, not what the LB could forward. The generator also pays \
             for waking the LB's NAPI thread, which a cheaper program lets sleep more often (sleeps per 1000 \
             packets), so the cheaper program is offered less. Below saturation ns/packet includes per-wakeup costs \
             that fuller batches would spread, so the capacity is a low estimate",
            generator_busy * 100.0,
            lb_busy * 100.0
        )
    } else {
        format!(
            "limited by: neither CPU was saturated (generator {:.0}%, LB {:.0}%): the machine is shared or the generator waited",
            generator_busy * 100.0,
            lb_busy * 100.0
        )
    }
}

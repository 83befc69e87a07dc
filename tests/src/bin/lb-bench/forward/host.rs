//! CPU, thread and interface figures from /proc, /sys and ethtool, and the
//! thread placement the measurement relies on.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use lb_tests::topology::Topology;


pub(super) fn online_cpus() -> usize {
    // Not available_parallelism(): main() has pinned this process to one CPU.
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    n.max(1) as usize
}

pub(super) fn set_affinity(pid: libc::pid_t, cpu: usize) -> Result<()> {
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
pub(super) fn cpu_times() -> Result<[(u64, u64); 2]> {
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
pub(super) fn napi_threads(ifname: &str) -> BTreeSet<libc::pid_t> {
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
pub(super) fn thread_napi(topo: &Topology, host: &str, ifname: &str, before: &BTreeSet<libc::pid_t>, cpu: usize) -> Result<libc::pid_t> {
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
pub(super) fn thread_cpu_ns(pid: libc::pid_t) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).with_context(|| format!("schedstat of NAPI thread {pid}"))?;
    s.split_whitespace().next().and_then(|v| v.parse().ok()).context("parsing schedstat")
}

/// Voluntary context switches of a thread (each time it went to sleep).
pub(super) fn thread_sleeps(pid: libc::pid_t) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("status of NAPI thread {pid}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .context("parsing voluntary_ctxt_switches")
}

/// `ethtool -S` of `ifname` in `host`'s namespace, by name.
pub(super) fn ethtool_stats(topo: &Topology, host: &str, ifname: &str) -> Result<BTreeMap<String, u64>> {
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
pub(super) fn rx_queue_sum(stats: &BTreeMap<String, u64>, name: &str) -> u64 {
    stats
        .iter()
        .filter(|(k, _)| k.strip_prefix("rx_queue_").and_then(|r| r.split_once('_')).is_some_and(|(_, s)| s == name))
        .map(|(_, v)| v)
        .sum()
}

pub(super) fn mac_of(topo: &Topology, host: &str, ifname: &str) -> Result<[u8; 6]> {
    let text = topo.exec_ok(host, "cat", &[&format!("/sys/class/net/{ifname}/address")])?;
    let bytes: Vec<u8> = text.trim().split(':').filter_map(|b| u8::from_str_radix(b, 16).ok()).collect();
    bytes.try_into().map_err(|_| anyhow!("bad MAC {:?} of {ifname} on {host}", text.trim()))
}

pub(super) fn mac_text(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

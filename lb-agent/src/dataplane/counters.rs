//! The per-CPU counters, summed over CPUs: from a loaded object (fixtures,
//! bench) or from a running agent's pins (`lb-agent stats`, metrics).
//!
//! The kernel counts each forwarded packet once per (VIP, backend) member
//! (`MEMBER_STATS`); VIP totals and backend totals are sums of those, so
//! every member, VIP and backend counter adds up exactly.

use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Map, MapData},
    Ebpf,
};
use lb_common::{flows::member_index, maps, Counter, DecapReason, Reason};

/// Counters of a running agent, read from its pinned maps and summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Indexed by VIP row: the sum of the row's members.
    pub vips: Vec<Counter>,
    /// Indexed by backend id: the sum over every VIP row.
    pub backends: Vec<Counter>,
    /// Indexed by `lb_common::flows::member_index(row, id, max_backends)`.
    pub members: Vec<Counter>,
    /// Backend ids per VIP row in `members` (the object's `max_backends`).
    pub max_backends: u32,
    /// Indexed by [`Reason`].
    pub reasons: Vec<Counter>,
    /// Indexed by [`DecapReason`].
    pub decap: Vec<Counter>,
    /// Indexed by [`lb_common::flows::FlowEvent`].
    pub flows: Vec<Counter>,
}

impl Counters {
    pub fn reason(&self, r: Reason) -> Counter {
        self.reasons.get(r as usize).copied().unwrap_or_default()
    }
    pub fn decap_reason(&self, r: DecapReason) -> Counter {
        self.decap.get(r as usize).copied().unwrap_or_default()
    }
    pub fn flow_event(&self, e: lb_common::flows::FlowEvent) -> Counter {
        self.flows.get(e as usize).copied().unwrap_or_default()
    }
    /// What VIP row `row` sent to backend `id`.
    pub fn member(&self, row: u32, id: u32) -> Counter {
        if id >= self.max_backends {
            return Counter::default();
        }
        self.members.get(member_index(row, id, self.max_backends) as usize).copied().unwrap_or_default()
    }

    /// Member counters (and `max_backends`) with the VIP and backend totals
    /// summed from them.
    pub fn with_members(mut self, members: Vec<Counter>, max_backends: u32) -> Counters {
        let per_row = max_backends.max(1) as usize;
        self.vips = vec![Counter::default(); members.len().div_ceil(per_row)];
        self.backends = vec![Counter::default(); per_row];
        for (i, c) in members.iter().enumerate() {
            self.vips[i / per_row].add(c);
            self.backends[i % per_row].add(c);
        }
        self.members = members;
        self.max_backends = max_backends;
        self
    }
}

/// Reads every counter map of a loaded object (used by fixtures and tests).
pub fn read_counters(ebpf: &Ebpf) -> Result<Counters> {
    Counters::read_each(|name| match ebpf.map(name).with_context(|| format!("map {name} missing"))? {
        Map::PerCpuArray(data) | Map::Array(data) => read_map(data),
        _ => bail!("map {name} is not an array"),
    })
}

/// Reads the counters pinned under `dir` by a running agent.
pub fn read_pinned_counters(dir: &Path) -> Result<Counters> {
    Counters::read_each(|name| {
        let path: PathBuf = dir.join(name);
        let data = MapData::from_pin(&path).with_context(|| {
            format!("opening {} (is `lb-agent run` running with this config's bpffs_dir?)", path.display())
        })?;
        read_map(&data)
    })
}

/// What `read_each` gets of one map: its per-CPU counters summed, or (for
/// `BACKENDS`) only its size.
enum Read {
    Counters(Vec<Counter>),
    Entries(u32),
}

fn read_map(data: &MapData) -> Result<Read> {
    let info = data.info()?;
    if info.value_size() != size_of::<Counter>() as u32 {
        return Ok(Read::Entries(info.max_entries()));
    }
    Ok(Read::Counters(sum_per_cpu(data, info.max_entries())?))
}

impl Counters {
    /// Every counter map, each read (and summed over the CPUs) by `read`.
    fn read_each(read: impl Fn(&str) -> Result<Read>) -> Result<Counters> {
        let counters = |name: &str| match read(name)? {
            Read::Counters(c) => Ok(c),
            Read::Entries(_) => bail!("map {name} does not hold counters"),
        };
        // BACKENDS has one entry per backend id: the row length of MEMBER_STATS.
        let Read::Entries(max_backends) = read(maps::BACKENDS)? else { bail!("map {} has an unexpected value size", maps::BACKENDS) };
        let members = counters(maps::MEMBER_STATS)?;
        let c = Counters {
            reasons: counters(maps::REASON_STATS)?,
            decap: counters(maps::DECAP_STATS)?,
            flows: counters(maps::FLOW_STATS)?,
            ..Counters::default()
        };
        Ok(c.with_members(members, max_backends))
    }
}

/// Entries per `BPF_MAP_LOOKUP_BATCH` call.
const BATCH: usize = 4096;
/// The kernel's command number (uapi `enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The batch part of the kernel's `union bpf_attr` (uapi `struct { ... } batch`).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of a per-CPU array of `entries` counters, summed over the
/// CPUs, `BATCH` entries per system call: one `bpf()` call per entry would
/// take a quarter of a second for the default 262,144 members.
fn sum_per_cpu(map: &MapData, entries: u32) -> Result<Vec<Counter>> {
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    let mut out = vec![Counter::default(); entries as usize];
    let mut keys = vec![0u32; BATCH];
    let mut values = vec![Counter::default(); BATCH * cpus];
    let (mut next, mut resume) = (0u32, None::<u32>);
    loop {
        let mut attr = BatchAttr {
            in_batch: resume.as_ref().map_or(0, |k| k as *const u32 as u64),
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is the uapi layout of the batch command; `keys` and
        // `values` hold `count` keys and `count` values of every possible
        // CPU (a Counter is 16 bytes, already a multiple of 8 as the kernel
        // lays per-CPU values out); `in_batch` / `out_batch` point to u32
        // keys, the array's key size. The kernel writes nothing beyond them.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &mut attr as *mut BatchAttr, size_of::<BatchAttr>()) };
        let end = rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT);
        if rc < 0 && !end {
            return Err(std::io::Error::last_os_error()).context("reading per-CPU counters (BPF_MAP_LOOKUP_BATCH, Linux 5.6 or later)");
        }
        for (i, key) in keys.iter().take(attr.count as usize).enumerate() {
            let Some(total) = out.get_mut(*key as usize) else { continue };
            for c in &values[i * cpus..(i + 1) * cpus] {
                total.add(c);
            }
        }
        if end || attr.count == 0 {
            return Ok(out);
        }
        resume = Some(next);
    }
}

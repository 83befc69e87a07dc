//! The kernel side as seen from the agent: loading the BPF object with the
//! config's sizes and switches, attaching it, pinning the maps so
//! `lb-agent stats` can read them from another shell. Plans reach the maps
//! through [`reconcile`] into a [`store::MapStore`].
//!
//! - [`store`]: the map-store trait reconcile writes through.
//! - [`live`]: its kernel implementation (pinned maps, or a loaded object's).
//! - [`reconcile`]: plan -> maps, in an order that never misroutes a flow.
//! - [`rings`]: `RINGS` mapped into memory; [`vip_filter`]: the VIP address filter.

pub mod live;
#[cfg(test)]
pub mod memory;
pub mod reconcile;
pub mod rings;
pub mod store;
pub mod vip_filter;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Map, MapData, PerCpuArray},
    programs::{xdp::XdpLinkId, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{
    events, globals, limits, maps, v4_words, v6_words, BackendEntry, Counter, DecapReason, Reason,
};

use crate::config::{Config, MacAddr, XdpMode as ConfigXdpMode};

/// The BPF object built by build.rs (lb-ebpf compiled for the BPF target).
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// What the balancer is loaded with. Changing any of these means loading the
/// program again: they size maps or are constants to the verifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    pub ring_size: u32,
    pub hash_seed: u32,
    pub max_vips: u32,
    pub max_backends: u32,
    /// Entries of the flow table (`FLOWS`).
    pub flow_table_size: u32,
    pub tunnel_source_v4: Option<Ipv4Addr>,
    pub tunnel_source_v6: Option<Ipv6Addr>,
    /// MTU and packet policies (`MTU` and `POLICY` globals).
    pub packets: PacketOptions,
    /// aya-log records from the balancer (`run --kernel-events`).
    pub kernel_events: bool,
    /// UDP destination port of GUE tunnels (`GUE_PORT` global).
    pub gue_port: u16,
}

/// The `MTU` and `POLICY` globals (see `lb_common::packet_policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketOptions {
    /// The interface MTU; 0 = unknown, no check.
    pub mtu: u32,
    /// `POLICY_*` bits.
    pub policy: u32,
}

impl Default for PacketOptions {
    fn default() -> Self {
        Self { mtu: 0, policy: lb_common::packet_policy::DEFAULT_POLICY }
    }
}

impl LoadOptions {
    /// What `config` asks for. `mtu` is the interface's; the tunnel sources
    /// fall back to the interface's addresses when the config names none.
    pub fn from_config(config: &Config, mtu: u32, fallback_v4: Option<Ipv4Addr>, fallback_v6: Option<Ipv6Addr>) -> Self {
        Self {
            ring_size: config.lb.ring_size,
            hash_seed: config.lb.hash_seed,
            max_vips: config.lb.max_vips,
            max_backends: config.lb.max_backends,
            flow_table_size: config.lb.flow_table_size,
            tunnel_source_v4: config.lb.tunnel_source_v4.or(fallback_v4),
            tunnel_source_v6: config.lb.tunnel_source_v6.or(fallback_v6),
            packets: PacketOptions { mtu, policy: config.lb.packets.bits() },
            kernel_events: false,
            gue_port: lb_common::second_chance::DEFAULT_GUE_PORT,
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            ring_size: limits::DEFAULT_RING_SIZE,
            hash_seed: 0,
            max_vips: limits::DEFAULT_MAX_VIPS,
            max_backends: limits::DEFAULT_MAX_BACKENDS,
            flow_table_size: lb_common::flows::DEFAULT_FLOW_TABLE_SIZE,
            tunnel_source_v4: None,
            tunnel_source_v6: None,
            packets: PacketOptions::default(),
            kernel_events: false,
            gue_port: lb_common::second_chance::DEFAULT_GUE_PORT,
        }
    }
}

/// Loads the object with the balancer's maps sized and its globals set.
/// The programs are not loaded into the kernel yet (see [`load_program`]).
pub fn load_balancer_object(opts: &LoadOptions) -> Result<Ebpf> {
    let v4 = opts.tunnel_source_v4.map(v4_words).unwrap_or([0; 4]);
    let v6 = opts.tunnel_source_v6.map(v6_words).unwrap_or([0; 4]);
    let ring_entries = opts
        .ring_size
        .checked_mul(opts.max_vips)
        .context("ring_size * max_vips does not fit in 32 bits")?;
    let member_entries = member_entries(opts)?;
    EbpfLoader::new()
        .map_max_entries(maps::VIPS, opts.max_vips * 2)
        .map_max_entries(maps::RINGS, ring_entries)
        .map_max_entries(maps::PREVIOUS, ring_entries)
        .map_max_entries(maps::BACKENDS, opts.max_backends)
        .map_max_entries(maps::VIP_STATS, opts.max_vips)
        .map_max_entries(maps::BACKEND_STATS, opts.max_backends)
        .map_max_entries(maps::HEALTH, member_entries)
        .map_max_entries(maps::MEMBERS, member_entries)
        .map_max_entries(maps::FLOWS, opts.flow_table_size)
        .override_global(globals::RING_SIZE, &opts.ring_size, true)
        .override_global(globals::MAX_BACKENDS, &opts.max_backends, true)
        .override_global(globals::HASH_SEED, &opts.hash_seed, true)
        .override_global(globals::TUNNEL_SOURCE_V4, &v4, true)
        .override_global(globals::TUNNEL_SOURCE_V6, &v6, true)
        .override_global(globals::MTU, &opts.packets.mtu, true)
        .override_global(globals::POLICY, &opts.packets.policy, true)
        .override_global(globals::GUE_PORT, &opts.gue_port, true)
        .override_global(events::LEVEL_GLOBAL, &events_level(opts.kernel_events), true)
        .load(BPF_OBJECT)
        .context("loading the BPF object (are you root, with a kernel that has BTF and XDP?)")
}

/// The value of aya-log's level global for `--kernel-events` on or off.
pub fn events_level(on: bool) -> u8 {
    if on { events::ON } else { events::OFF }
}

/// Entries of `MEMBERS` (and the most `HEALTH` can hold): one per (row, id).
fn member_entries(opts: &LoadOptions) -> Result<u32> {
    opts.max_vips.checked_mul(opts.max_backends).context("max_vips * max_backends does not fit in 32 bits")
}

/// What [`LoadOptions`] become in the pinned `LOADED` map (and what a
/// restarting agent compares its config with).
pub fn loaded_state(opts: &LoadOptions, ifindex: u32) -> lb_common::flows::LoadedState {
    lb_common::flows::LoadedState {
        version: lb_common::flows::LOADED_STATE_VERSION,
        ring_size: opts.ring_size,
        hash_seed: opts.hash_seed,
        max_vips: opts.max_vips,
        max_backends: opts.max_backends,
        flow_table_size: opts.flow_table_size,
        mtu: opts.packets.mtu,
        policy: opts.packets.policy,
        ifindex,
        tunnel_source_v4: opts.tunnel_source_v4.map(v4_words).unwrap_or([0; 4]),
        tunnel_source_v6: opts.tunnel_source_v6.map(v6_words).unwrap_or([0; 4]),
        kernel_events: u32::from(events_level(opts.kernel_events)),
    }
}

/// Loads the object for the tc program of DSR-aware health checks
/// (`tc_health_encap`): it reads the running balancer's `BACKENDS`, opened
/// from its pin under `dir`, and the tunnel sources; every other map is
/// shrunk to one entry.
pub fn load_health_encap_object(opts: &LoadOptions, dir: &Path) -> Result<Ebpf> {
    let v4 = opts.tunnel_source_v4.map(v4_words).unwrap_or([0; 4]);
    let v6 = opts.tunnel_source_v6.map(v6_words).unwrap_or([0; 4]);
    EbpfLoader::new()
        .map_pin_path(maps::BACKENDS, dir.join(maps::BACKENDS))
        .map_max_entries(maps::BACKENDS, opts.max_backends)
        .map_max_entries(maps::VIPS, 1)
        .map_max_entries(maps::RINGS, 1)
        .map_max_entries(maps::PREVIOUS, 1)
        .map_max_entries(maps::VIP_STATS, 1)
        .map_max_entries(maps::BACKEND_STATS, 1)
        .map_max_entries(maps::HEALTH, 1)
        .map_max_entries(maps::MEMBERS, 1)
        .map_max_entries(maps::FLOWS, MINIMAL_FLOW_TABLE)
        .override_global(globals::TUNNEL_SOURCE_V4, &v4, true)
        .override_global(globals::TUNNEL_SOURCE_V6, &v6, true)
        .override_global(events::LEVEL_GLOBAL, &events::OFF, true)
        .load(BPF_OBJECT)
        .context("loading the BPF object for DSR-aware health checks")
}

/// The flow table of an object that never balances: the kernel rounds a
/// per-CPU LRU up to one entry per CPU anyway.
const MINIMAL_FLOW_TABLE: u32 = 1;

/// Loads the object for a host that does not balance (a backend running
/// `xdp_decap`, or a test port running `xdp_pass`): the balancer's big maps
/// are shrunk to one entry.
pub fn load_minimal_object() -> Result<Ebpf> {
    EbpfLoader::new()
        .map_max_entries(maps::VIPS, 1)
        .map_max_entries(maps::RINGS, 1)
        .map_max_entries(maps::PREVIOUS, 1)
        .map_max_entries(maps::BACKENDS, 1)
        .map_max_entries(maps::VIP_STATS, 1)
        .map_max_entries(maps::BACKEND_STATS, 1)
        .map_max_entries(maps::HEALTH, 1)
        .map_max_entries(maps::MEMBERS, 1)
        .map_max_entries(maps::FLOWS, MINIMAL_FLOW_TABLE)
        .override_global(events::LEVEL_GLOBAL, &events::OFF, true)
        .load(BPF_OBJECT)
        .context("loading the BPF object (are you root, with a kernel that has BTF and XDP?)")
}

/// Verifies and loads one XDP program of the object into the kernel.
pub fn load_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the BPF object"))?
        .try_into()?;
    program.load().with_context(|| format!("the kernel refused program {name}"))?;
    Ok(program)
}

/// The attach mode actually used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Generic,
}

impl std::fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
        })
    }
}

/// Attaches `program` to `iface`; `auto` tries native (driver) XDP first and
/// falls back to generic XDP for drivers without it.
pub fn attach(program: &mut Xdp, iface: &str, mode: ConfigXdpMode) -> Result<(XdpLinkId, AttachedMode)> {
    let try_mode = |program: &mut Xdp, m: XdpMode| program.attach(iface, m);
    match mode {
        ConfigXdpMode::Native => Ok((
            try_mode(program, XdpMode::Driver).with_context(|| format!("attaching native XDP to {iface}"))?,
            AttachedMode::Native,
        )),
        ConfigXdpMode::Generic => Ok((
            try_mode(program, XdpMode::Skb).with_context(|| format!("attaching generic XDP to {iface}"))?,
            AttachedMode::Generic,
        )),
        ConfigXdpMode::Auto => match try_mode(program, XdpMode::Driver) {
            Ok(link) => Ok((link, AttachedMode::Native)),
            Err(native) => {
                tracing::warn!("native XDP on {iface} failed ({native}); falling back to generic XDP");
                let link = try_mode(program, XdpMode::Skb)
                    .with_context(|| format!("attaching XDP to {iface} (native failed first: {native})"))?;
                Ok((link, AttachedMode::Generic))
            }
        },
    }
}

/// Where a backend's frames go: its address and the next hop's MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedBackend {
    pub address: IpAddr,
    pub next_hop_mac: MacAddr,
}

pub fn backend_entry(b: &ResolvedBackend) -> BackendEntry {
    let (addr, family) = lb_common::addr_words(b.address);
    BackendEntry { addr, next_hop_mac: b.next_hop_mac.0, family, _pad: 0 }
}

/// Mounts bpffs at /sys/fs/bpf when a pin directory lives there and nothing is
/// mounted yet (fresh hosts and containers often lack it).
pub(crate) fn ensure_bpffs(dir: &Path) -> Result<()> {
    let default_root = Path::new("/sys/fs/bpf");
    if !dir.starts_with(default_root) || is_bpffs(default_root) {
        return Ok(());
    }
    std::fs::create_dir_all(default_root).ok();
    let status = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(default_root)
        .status()
        .context("running mount -t bpf")?;
    if !status.success() {
        bail!("{} is not a bpffs and mounting one there failed; mount it with `mount -t bpf bpf /sys/fs/bpf`", default_root.display());
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: `statfs` is plain old data, for which all-zero bytes are valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a live, writable statfs.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Counters of a running agent, read from its pinned maps and summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Indexed by VIP row.
    pub vips: Vec<Counter>,
    /// Indexed by backend id.
    pub backends: Vec<Counter>,
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
}

/// Reads every counter map of a loaded object (used by fixtures and tests).
pub fn read_counters(ebpf: &Ebpf) -> Result<Counters> {
    let read = |name: &str| -> Result<Vec<Counter>> {
        let map = ebpf.map(name).with_context(|| format!("map {name} missing"))?;
        sum_per_cpu(&PerCpuArray::try_from(map)?)
    };
    Ok(Counters {
        vips: read(maps::VIP_STATS)?,
        backends: read(maps::BACKEND_STATS)?,
        reasons: read(maps::REASON_STATS)?,
        decap: read(maps::DECAP_STATS)?,
        flows: read(maps::FLOW_STATS)?,
    })
}

/// Reads the counters pinned under `dir` by a running agent.
pub fn read_pinned_counters(dir: &Path) -> Result<Counters> {
    let read = |name: &str| -> Result<Vec<Counter>> {
        let path: PathBuf = dir.join(name);
        let data = MapData::from_pin(&path).with_context(|| {
            format!("opening {} (is `lb-agent run` running with this config's bpffs_dir?)", path.display())
        })?;
        sum_per_cpu(&PerCpuArray::try_from(Map::PerCpuArray(data))?)
    };
    Ok(Counters {
        vips: read(maps::VIP_STATS)?,
        backends: read(maps::BACKEND_STATS)?,
        reasons: read(maps::REASON_STATS)?,
        decap: read(maps::DECAP_STATS)?,
        flows: read(maps::FLOW_STATS)?,
    })
}

fn sum_per_cpu<T: std::borrow::Borrow<MapData>>(map: &PerCpuArray<T, Counter>) -> Result<Vec<Counter>> {
    let mut out = Vec::with_capacity(map.len() as usize);
    for i in 0..map.len() {
        let mut total = Counter::default();
        for c in map.get(&i, 0)?.iter() {
            total.add(c);
        }
        out.push(total);
    }
    Ok(out)
}

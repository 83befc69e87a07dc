//! The BPF object, loaded with the config's map sizes and load-time globals.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context as _, Result};
use aya::{programs::Xdp, Ebpf, EbpfLoader};
use lb_common::{events, globals, limits, maps, v4_words, v6_words};

use crate::config::Config;

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
            gue_port: config.lb.gue_port,
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
        .map_max_entries(maps::MEMBER_STATS, member_entries)
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
        gue_port: u32::from(opts.gue_port),
    }
}

/// Loads the object for the tc program of DSR-aware health checks
/// (`tc_health_encap`): it reads the running balancer's `BACKENDS`, opened
/// from its pin under `dir`, and the tunnel sources; every other map is
/// shrunk to one entry.
pub fn load_health_encap_object(opts: &LoadOptions, dir: &Path) -> Result<Ebpf> {
    let v4 = opts.tunnel_source_v4.map(v4_words).unwrap_or([0; 4]);
    let v6 = opts.tunnel_source_v6.map(v6_words).unwrap_or([0; 4]);
    non_balancing_loader()
        .map_pin_path(maps::BACKENDS, dir.join(maps::BACKENDS))
        .map_max_entries(maps::BACKENDS, opts.max_backends)
        .override_global(globals::TUNNEL_SOURCE_V4, &v4, true)
        .override_global(globals::TUNNEL_SOURCE_V6, &v6, true)
        .load(BPF_OBJECT)
        .context("loading the BPF object for DSR-aware health checks")
}

/// The flow table of an object that never balances: the kernel rounds a
/// per-CPU LRU up to one entry per CPU anyway.
const MINIMAL_FLOW_TABLE: u32 = 1;

/// The maps the balancer sizes from its config, which a program that does
/// not balance never uses (the object holds every program's maps).
const BALANCER_MAPS: [&str; 7] = [
    maps::VIPS,
    maps::RINGS,
    maps::PREVIOUS,
    maps::BACKENDS,
    maps::MEMBER_STATS,
    maps::HEALTH,
    maps::MEMBERS,
];

/// A loader for a program that does not balance: the balancer's maps shrunk
/// to one entry (a caller may size one of them again), kernel events off.
fn non_balancing_loader() -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    for name in BALANCER_MAPS {
        loader.map_max_entries(name, 1);
    }
    loader.map_max_entries(maps::FLOWS, MINIMAL_FLOW_TABLE).override_global(events::LEVEL_GLOBAL, &events::OFF, true);
    loader
}

/// Loads the object for a host that does not balance (a backend running
/// `xdp_decap`, or a test port running `xdp_pass`): the balancer's big maps
/// are shrunk to one entry.
pub fn load_minimal_object() -> Result<Ebpf> {
    load_decap_object(lb_common::second_chance::DEFAULT_GUE_PORT)
}

/// [`load_minimal_object`] with the UDP port `xdp_decap` takes GUE on.
pub fn load_decap_object(gue_port: u16) -> Result<Ebpf> {
    non_balancing_loader()
        .override_global(globals::GUE_PORT, &gue_port, true)
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


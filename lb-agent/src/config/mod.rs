//! The agent's TOML configuration: parsing, defaults and validation.
//!
//! Parsing is done in two steps. serde reads the file into "raw" structs
//! (`#[serde(deny_unknown_fields)]` everywhere, addresses and enum values kept
//! as strings, integers as `i64`), so that a typo in a value does not stop the
//! parse at the first error. Validation then checks every field and collects
//! **all** problems, each naming the file, the field path
//! (`vip "web".backend[2].address`, or `vip[3]...` when the VIP has no usable
//! name) and the offending value. A config with any problem is rejected as a
//! whole: nothing that runs is changed by a bad file.
//!
//! ```toml
//! [lb]
//! interface = "eth0"
//!
//! [[vip]]
//! name = "web"
//! address = "192.0.2.10"
//! port = 80
//! protocol = "tcp"
//!
//!   [[vip.backend]]
//!   address = "198.51.100.11"
//! ```

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use lb_common::limits;
use serde::Deserialize;

use crate::maglev::is_prime;

pub mod announce;
pub mod compose;
mod defaults;
pub mod flow_guard;
pub mod health;
mod load;
mod lb;
pub mod packets;
mod raw;
pub mod source;
mod toml_errors;
mod validate;
mod values;
mod vip;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod flow_state_tests;

pub use crate::diag::{ConfigError, Problem};
pub use defaults::*;
pub use load::{load, parse};
pub use values::*;
use health::{AllDownPolicy, HealthCheck, RawHealth};
use packets::{FragmentPolicy, PacketPolicy};
use raw::*;
use toml_errors::*;
use validate::*;

// ---------------------------------------------------------------------------
// The validated config.
// ---------------------------------------------------------------------------

/// A validated configuration. Only [`parse`] and [`load`] build one, so every
/// value here has passed the checks documented on its field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The `[lb]` table: host-wide settings.
    pub lb: LbSection,
    /// The `[[vip]]` tables, in file order (the plan sorts them; order in the
    /// file never matters to the dataplane).
    pub vips: Vec<VipConfig>,
    /// The `[announce]` table: route announcement for several LB hosts
    /// (see [`crate::announce`]). Absent: nothing is announced.
    pub announce: Option<announce::AnnounceConfig>,
    /// The `[source]` table: the cluster's document comes from etcd (see
    /// [`compose`]). Absent: this file is the whole config.
    pub source: Option<source::SourceConfig>,
}

/// The `[lb]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbSection {
    /// `interface`: required. The NIC the balancer attaches to. Only its
    /// syntax is checked here (1 to 15 characters, no `/`, `:` or whitespace,
    /// not `.` or `..`, as the kernel's `dev_valid_name`); whether it exists
    /// is checked by the runtime, so `check` works on any machine.
    pub interface: String,
    /// `xdp_mode`: `"auto"` (default, see [`DEFAULT_XDP_MODE`]), `"native"` or `"generic"`.
    pub xdp_mode: XdpMode,
    /// `tunnel_source_v4`: optional outer source address of IPv4 tunnel
    /// packets. Default `None`: the runtime uses the interface's IPv4 address.
    /// Must be IPv4, and not unspecified, multicast or broadcast.
    pub tunnel_source_v4: Option<Ipv4Addr>,
    /// `tunnel_source_v6`: the same for IPv6 tunnels. Default `None`: the
    /// runtime uses the interface's global IPv6 address.
    pub tunnel_source_v6: Option<Ipv6Addr>,
    /// `ring_size`: slots per Maglev ring. Default [`DEFAULT_RING_SIZE`];
    /// must be a prime in [`MIN_RING_SIZE`]`..=`[`MAX_RING_SIZE`] (Maglev's
    /// permutations only cover every slot when the size is prime).
    pub ring_size: u32,
    /// `hash_seed`: seed of the flow hash. Default [`DEFAULT_HASH_SEED`].
    /// Must be identical on all LB hosts of a cluster, or a flow that ECMP
    /// moves to another LB host lands on another backend.
    pub hash_seed: u32,
    /// `max_vips`: VIP rows reserved in the kernel maps. Default
    /// [`DEFAULT_MAX_VIPS`], range `1..=`[`MAX_MAX_VIPS`]; the number of
    /// `[[vip]]` tables must not exceed it. Changing it means reloading the
    /// program, so leave room for growth.
    pub max_vips: u32,
    /// `max_backends`: backend ids reserved in the kernel maps. Default
    /// [`DEFAULT_MAX_BACKENDS`], range `2..=`[`MAX_MAX_BACKENDS`]. Id 0 means
    /// "no backend", so the distinct backend addresses (over all VIPs; an
    /// address used by two VIPs counts once) must be fewer than this. Also,
    /// `ring_size × max_vips × 4` bytes must stay within [`MAX_RINGS_BYTES`].
    pub max_backends: u32,
    /// `bpffs_dir`: where the maps are pinned. Default
    /// [`DEFAULT_BPFFS_DIR`]; must be an absolute path short enough for the
    /// kernel: each component at most [`MAX_PATH_COMPONENT_LEN`] bytes, and
    /// the longest pin path the agent creates in it (see
    /// [`crate::pin_names`]) at most [`MAX_PATH_LEN`]. Use a different
    /// directory per agent instance on one host.
    pub bpffs_dir: PathBuf,
    /// `run_dir`: where the running agent's lock file and control socket
    /// live. Default [`DEFAULT_RUN_DIR`]; must be an absolute path.
    pub run_dir: PathBuf,
    /// `flow_table_size`: flows the kernel remembers (an LRU table: the least
    /// recently used flow is forgotten first). Default
    /// [`DEFAULT_FLOW_TABLE_SIZE`], range `MIN_FLOW_TABLE_SIZE..=MAX_FLOW_TABLE_SIZE`.
    /// The minimum because the table is a per-CPU LRU (`BPF_F_NO_COMMON_LRU`):
    /// the kernel splits the entries evenly over the possible CPUs and each
    /// CPU evicts from its own share, so a smaller table keeps a handful of
    /// flows per CPU on a many-CPU host.
    pub flow_table_size: u32,
    /// `metrics_listen`: `ADDRESS:PORT` where `lb-agent run` serves Prometheus
    /// metrics at `/metrics`. Default [`DEFAULT_METRICS_LISTEN`];
    /// [`METRICS_OFF`] (`"off"`) = `None`, no endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// `encap`: `"ipip"` (default, [`DEFAULT_ENCAP`]) or `"gue"`: how every
    /// VIP's packets travel to its backends unless the VIP says otherwise
    /// (a `"backend"` VIP always uses GUE). See [`VipConfig::encap`].
    pub encap: Encap,
    /// `gue_port`: UDP destination port of GUE packets, `1..=65535`, default
    /// [`DEFAULT_GUE_PORT`]. A load-time global (`GUE_PORT`): changing it
    /// needs `run --full-restart`, and the backends' `lb-agent decap
    /// --gue-port` must say the same.
    pub gue_port: u16,
    /// `previous_owner_window`: how long a ring slot of a `"backend"` VIP
    /// keeps its previous owner after it changed (`"30m"`, `"1h"`, ...).
    /// Default [`DEFAULT_PREVIOUS_OWNER_WINDOW`], range
    /// [`MIN_PREVIOUS_OWNER_WINDOW`]`..=`[`MAX_PREVIOUS_OWNER_WINDOW`].
    /// Counted from the row's last change; a restart restarts it.
    pub previous_owner_window: Duration,
    /// `new_flow_guard`: new flows each CPU records in the flow table per
    /// second; above it new flows are forwarded unrecorded (see
    /// `lb_common::flow_guard`). Default
    /// `DEFAULT_NEW_FLOWS_PER_CPU_PER_SECOND` (125,000, Katran's);
    /// `"off"` = `None`. Reloadable: the agent writes it to a map.
    pub new_flow_guard: Option<u32>,
    /// `icmp_echo`, `too_big`, `unknown_port`: what happens to ICMP echo,
    /// too-big packets and unconfigured ports of VIP addresses (defaults in
    /// [`PacketPolicy::default`]).
    pub packets: PacketPolicy,
}

/// One `[[vip]]` table: a virtual service.
///
/// Two VIPs may share an address and protocol when their ports differ. A VIP
/// with port 0 on the same address and protocol as a VIP with a specific port
/// is allowed: the specific port wins, port 0 is the fallback for every other
/// port (the kernel looks up the exact port first, then port 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipConfig {
    /// `name`: required, unique, 1 to 64 of `A-Z a-z 0-9 _ . -` (it is used
    /// as a metrics label and in `lb-agent` output).
    pub name: String,
    /// `address`: required, IPv4 or IPv6; an address a packet can carry on
    /// the wire to a host: not unspecified, multicast, broadcast, loopback,
    /// in `0.0.0.0/8`, nor IPv4-mapped IPv6 (see `Validator::service_address`).
    pub address: IpAddr,
    /// `port`: required, `0..=65535`; 0 matches every port of this address
    /// and protocol (see the type's documentation for how it combines).
    pub port: u16,
    /// `protocol`: `"tcp"` (default: most services are TCP) or `"udp"`.
    pub protocol: Protocol,
    /// `hash`: `"flow"` (default: the 5-tuple spreads one client's
    /// connections over all backends) or `"source"` (source address only:
    /// client affinity, all of a client's flows go to one backend).
    pub hash: HashMode,
    /// `fragments`: `"drop"` (default) or `"forward"`; see [`FragmentPolicy`].
    pub fragments: FragmentPolicy,
    /// `flow_state`: where the state of established flows lives; see
    /// [`FlowState`]. Default [`DEFAULT_FLOW_STATE`]. The older
    /// `flow_table = true | false` still reads as `"lb"` / `"none"`; giving
    /// both is an error.
    pub flow_state: FlowState,
    /// `encap`: the VIP's own `encap`, else `lb.encap`; always [`Encap::Gue`]
    /// on a `"backend"` VIP (the previous owner travels in the GUE header),
    /// where `encap = "ipip"` is an error.
    pub encap: Encap,
    /// The `[[vip.backend]]` tables: at least one, distinct addresses, and at
    /// least one with weight > 0.
    pub backends: Vec<BackendConfig>,
    /// `health.all_down`: what the VIP does when no backend is up. Default
    /// [`AllDownPolicy::Drop`].
    pub all_down: AllDownPolicy,
}

/// One `[[vip.backend]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    /// `address`: required, IPv4 or IPv6 (either family for either family of
    /// VIP: the packet is tunnelled). It is also the backend's identity in
    /// the Maglev permutation, so the position in the file never matters.
    /// The same checks as a VIP's address, and not a VIP's address nor a
    /// tunnel source (both are the LB host's own).
    pub address: IpAddr,
    /// `weight`: default [`DEFAULT_WEIGHT`], `0..=`[`MAX_WEIGHT`]. Share of the
    /// ring relative to the VIP's other backends; 0 = drained (kept in the
    /// config and in the maps, but owns no ring slot).
    pub weight: u32,
    /// `mac`: optional static next-hop MAC (`aa:bb:cc:dd:ee:ff`) for packets
    /// to this backend. Default `None`: resolved from the kernel's routing and
    /// neighbour tables at runtime. Must be a unicast, non-zero MAC. A fact of
    /// the backend, not of the pair: the kernel has one next hop per backend
    /// address, so every VIP that gives one must give the same, and one given
    /// under any VIP applies under all ([`crate::plan::PlannedBackend::mac`]).
    pub mac: Option<MacAddr>,
    /// `backup`: default false. A backup takes traffic only while no primary
    /// of the VIP is up (HAProxy's `backup`).
    pub backup: bool,
    /// The effective health check: the VIP's `[vip.health]` table with this
    /// backend's `[vip.backend.health]` fields over it (see [`crate::health`]).
    pub check: HealthCheck,
}

impl VipConfig {
    /// What identifies this VIP (see [`crate::ids::VipIdentity`]): two VIPs
    /// of a config never share one, and a VIP keeps its row while it keeps it.
    pub fn identity(&self) -> crate::ids::VipIdentity {
        crate::ids::VipIdentity { address: self.address, port: self.port, protocol: self.protocol.number() }
    }
}

impl Config {
    /// Distinct backend addresses over all VIPs, sorted (the plan's id order).
    pub fn backend_addresses(&self) -> BTreeSet<IpAddr> {
        self.vips.iter().flat_map(|v| v.backends.iter().map(|b| b.address)).collect()
    }
}

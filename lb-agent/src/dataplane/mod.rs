//! The kernel side as seen from the agent: loading the BPF object with the
//! config's sizes and switches, attaching it, pinning the maps so
//! `lb-agent stats` can read them from another shell. Plans reach the maps
//! through [`reconcile`] into a [`store::MapStore`].
//!
//! - [`load`]: the BPF object loaded with the config's sizes and switches.
//! - [`attach`]: XDP on an interface, native or generic.
//! - [`counters`]: the per-CPU counters, summed.
//! - [`store`]: the map-store trait reconcile writes through.
//! - [`live`]: its kernel implementation (pinned maps, or a loaded object's).
//! - [`reconcile`]: plan -> maps, in an order that never misroutes a flow.
//! - [`rings`]: `RINGS` mapped into memory; [`vip_filter`]: the VIP address filter.


pub mod attach;
pub mod counters;
pub mod live;
pub mod load;
#[cfg(test)]
pub mod memory;
pub mod previous;
pub mod reconcile;
pub mod rings;
pub mod store;
pub mod vip_filter;

use std::net::IpAddr;

use lb_common::BackendEntry;

use crate::config::MacAddr;

pub use attach::{attach, AttachedMode};
pub use counters::{read_counters, read_pinned_counters, Counters};
pub use load::{
    events_level, load_balancer_object, load_decap_object, load_health_encap_object, load_minimal_object, load_program, loaded_state, LoadOptions,
    PacketOptions, BPF_OBJECT,
};

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

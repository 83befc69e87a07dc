//! Lookups shared by every policy: the VIP of a flow or an address (behind
//! the `VIP_FILTER` pre-check), the flow hash, the Maglev ring's pick (and a
//! slot's previous owner) and the backend table.

use lb_common::{
    hash::{flow_hash_v4, flow_hash_v6, ports_word, source_hash},
    packet_policy::address_key,
    second_chance::{PreviousOwners, NO_PREVIOUS_OWNERS},
    vip_filter::{word_and_mask, FilterEntry, Listed, Place},
    AddrWords, BackendEntry, Reason, VipKey, VipMeta, FAMILY_V4, FAMILY_V6, NO_BACKEND, VIP_FLAG_SOURCE_HASH,
};

use crate::{
    maps::{hash_seed, ring_size, BACKENDS, PREVIOUS, RINGS, VIPS, VIP_FILTER},
    parse::{Destination, Flow, Ip},
};

/// Exact (address, port, protocol) first, then the VIP's all-ports entry,
/// each only when `filter` (the destination's word of `VIP_FILTER`) has
/// the key's bit: a port no VIP of the address configures usually takes no
/// lookup at all.
#[inline(always)]
#[expect(clippy::needless_borrows_for_generic_args, reason = "a key by value is copied once more: about 20 instructions per packet")]
pub fn lookup_vip(flow: &Flow, filter: &FilterWord) -> Option<VipMeta> {
    let mut key = VipKey { addr: flow.dst, port_be: flow.dst_port_be, proto: flow.proto, family: flow.family };
    if filter.has(filter.place.port_bit(flow.dst_port_be, flow.proto)) {
        // SAFETY: the value is copied out at once, so a concurrent update by
        // the agent can only yield the old or the new entry (as for every
        // hash map lookup in BPF), never a dangling one.
        if let Some(meta) = unsafe { VIPS.get(&key) } {
            return Some(*meta);
        }
    }
    if !filter.has(filter.place.port_bit(0, flow.proto)) {
        return None;
    }
    key.port_be = 0;
    // SAFETY: as above.
    unsafe { VIPS.get(&key) }.copied()
}

/// The address entry of the packet's destination, if it is a VIP address
/// (the balancer checked `VIP_FILTER` first, see [`filter_word`]).
#[inline(always)]
pub fn address_entry(ip: &Ip) -> Option<VipMeta> {
    address_entry_of(ip.dst, ip.family)
}

#[inline(always)]
#[expect(clippy::needless_borrows_for_generic_args, reason = "a key by value is copied once more: about 20 instructions per packet")]
fn address_entry_of(addr: AddrWords, family: u8) -> Option<VipMeta> {
    // SAFETY: as in `lookup_vip`.
    unsafe { VIPS.get(&address_key(addr, family)) }.copied()
}

/// A destination's entry of `VIP_FILTER`, read once per packet: the
/// address's bit and the bits of its VIP keys, and the word's IPv4 VIP
/// addresses (`lb_common::vip_filter`).
#[derive(Clone, Copy)]
pub struct FilterWord {
    place: Place,
    entry: &'static FilterEntry,
}

impl FilterWord {
    /// Whether `bit` (of this word) is set: "maybe".
    #[inline(always)]
    fn has(&self, bit: u32) -> bool {
        self.entry.bits & word_and_mask(bit).1 != 0
    }

    /// Whether a VIP of the address may have destination port `port_be`
    /// (its own key's bit or the all-ports key's): when not, the VIP table
    /// has no entry for the packet.
    #[inline(always)]
    pub fn may_have_port(&self, port_be: u16, proto: u8) -> bool {
        self.has(self.place.port_bit(port_be, proto)) || self.has(self.place.port_bit(0, proto))
    }

    /// Whether `dst`, which passed its bit test, is a VIP address: an IPv4
    /// one by the word's listing, unless the word lists not all of them;
    /// the rest by the VIP table's address entries.
    #[inline(always)]
    pub fn is_vip_address(&self, dst: Destination) -> bool {
        match dst {
            Destination::V4(addr) => match self.entry.lists_v4(addr) {
                Listed::Yes => true,
                Listed::No => false,
                Listed::Unknown => address_entry_of([addr, 0, 0, 0], FAMILY_V4).is_some(),
            },
            Destination::V6(addr) => address_entry_of(addr, FAMILY_V6).is_some(),
        }
    }
}

/// The filter word of `dst`, or `None` when `dst` is certainly no VIP
/// address (its bit is clear): one array read, where the VIP table would
/// take two lookups. An unreadable word counts as all set.
#[inline(always)]
pub fn filter_word(dst: Destination) -> Option<FilterWord> {
    let place = match dst {
        Destination::V4(addr) => Place::of_v4(addr),
        Destination::V6(addr) => Place::of(&addr, FAMILY_V6),
    };
    let (word, _) = word_and_mask(place.address_bit);
    let filter = FilterWord { place, entry: VIP_FILTER.get(word).unwrap_or(&FilterEntry::ALL) };
    filter.has(place.address_bit).then_some(filter)
}

#[inline(always)]
pub fn flow_hash(flow: &Flow, vip: &VipMeta) -> u32 {
    let seed = hash_seed();
    if vip.flags & VIP_FLAG_SOURCE_HASH != 0 {
        return source_hash(seed, flow.family, &flow.src);
    }
    let ports = ports_word(flow.src_port_be, flow.dst_port_be);
    if flow.family == FAMILY_V4 {
        flow_hash_v4(seed, flow.src[0], flow.dst[0], ports, flow.proto)
    } else {
        flow_hash_v6(seed, &flow.src, &flow.dst, ports, flow.proto)
    }
}

/// `ring[hash % M]` in the VIP's row of `RINGS`.
#[inline(always)]
pub fn pick_backend(vip: &VipMeta, hash: u32) -> Result<(u32, BackendEntry), Reason> {
    let size = ring_size();
    // checked: a zero size (never loaded by the agent) must not be a division trap.
    let slot = vip.row.wrapping_mul(size) + hash.checked_rem(size).ok_or(Reason::MapError)?;
    let id = *RINGS.get(slot).ok_or(Reason::MapError)?;
    if id == NO_BACKEND {
        return Err(Reason::NoBackend);
    }
    let backend = backend_entry(id).ok_or(Reason::UnknownBackend)?;
    Ok((id, backend))
}

/// The previous owners of the ring slot of `hash` (`PREVIOUS`) that may
/// still hold the flow's connection and that the current owner can send a
/// packet on to: in use, not `current`, and of the current owner's outer
/// `family` (a backend rewrites the outer header in place); newest first,
/// [`NO_BACKEND`] after the last, as in the map. Ids, not map pointers: a
/// pointer kept on the stack reaches the verifier as a plain number once copied.
#[inline(always)]
pub fn previous_owners(vip: &VipMeta, hash: u32, current: u32, family: u8) -> PreviousOwners {
    let mut previous = NO_PREVIOUS_OWNERS;
    let mut count = 0;
    let size = ring_size();
    let Some(in_ring) = hash.checked_rem(size) else { return previous };
    let Some(ids) = PREVIOUS.get(vip.row.wrapping_mul(size) + in_ring) else { return previous };
    for &id in ids {
        // Newest first with no gaps: the first empty entry ends the list.
        if id == NO_BACKEND {
            break;
        }
        if id == current {
            continue;
        }
        let Some(backend) = BACKENDS.get(id) else { continue };
        if backend.family == family
            && let Some(entry) = previous.get_mut(count)
        {
            *entry = id;
            count += 1;
        }
    }
    previous
}

/// The entry of backend `id`, if it is in use (family set).
#[inline(always)]
pub fn backend_entry(id: u32) -> Option<BackendEntry> {
    let backend = *BACKENDS.get(id)?;
    (backend.family != 0).then_some(backend)
}

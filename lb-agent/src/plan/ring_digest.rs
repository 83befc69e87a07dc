//! The ring digest: a short hash of one VIP's all-up Maglev ring, the one
//! definition behind `check`, `list`, the config fingerprint and the
//! `lb_vip_ring_info` metric. Two LB hosts whose digests of a VIP match
//! send every flow of that VIP to the same backend (with every backend up),
//! so a mismatch names the VIP that differs.
//!
//! It hashes each slot's *position in the VIP's member list* (sorted by
//! backend id, which follows the backend address on a fresh start), not the
//! id itself, so hosts that numbered their backends differently over their
//! reloads still agree.

use super::fnv::Fnv;

/// A ring digest being computed, one slot at a time.
pub struct RingDigest(u64);

impl RingDigest {
    pub fn new() -> RingDigest {
        RingDigest(Fnv::OFFSET)
    }

    /// Adds the next slot: its owner's position among the members (`u32::MAX` for none).
    pub fn slot(&mut self, position: u32) {
        self.0 = (self.0 ^ u64::from(position)).wrapping_mul(Fnv::PRIME);
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

impl Default for RingDigest {
    fn default() -> Self {
        RingDigest::new()
    }
}

/// How a digest is shown (check, list, the metric's label): 16 hex digits.
pub fn label(digest: u64) -> String {
    format!("{digest:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_depends_on_every_slot_and_its_order() {
        let of = |positions: &[u32]| {
            let mut d = RingDigest::new();
            positions.iter().for_each(|&p| d.slot(p));
            d.finish()
        };
        let base = of(&[0, 1, 0, 1]);
        assert_eq!(base, of(&[0, 1, 0, 1]));
        assert_ne!(base, of(&[1, 0, 0, 1]), "order matters");
        assert_ne!(base, of(&[0, 1, 0, u32::MAX]), "an empty slot differs");
        assert_eq!(label(0xab).len(), 16);
    }
}

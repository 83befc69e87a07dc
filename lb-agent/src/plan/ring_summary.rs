//! What the plan keeps of a ring once the ring is dropped.

use super::ring_digest::RingDigest;

/// What the plan keeps of a VIP's all-up ring once the ring itself is
/// dropped, computed in one pass over it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingSummary {
    /// The ring's [`super::ring_digest`]: the fingerprint includes it.
    pub digest: u64,
    /// Slots owned by each member, in the members' order: `check`'s shares.
    pub slots: Vec<u32>,
}

impl RingSummary {
    /// The summary of `ring` (backend ids) whose members are `members`
    /// ((id, weight), sorted by id).
    pub fn of(ring: &[u32], members: &[(u32, u32)]) -> RingSummary {
        // Position by id from a table (ids are small), FNV-1a over whole words:
        // this runs over every slot of every ring a plan builds.
        let table_len = members.last().map_or(0, |&(id, _)| id as usize + 1);
        let mut position = vec![u32::MAX; table_len];
        for (p, &(id, _)) in members.iter().enumerate() {
            position[id as usize] = p as u32;
        }
        let mut slots = vec![0u32; members.len()];
        let mut digest = RingDigest::new();
        for &id in ring {
            let pos = position.get(id as usize).copied().unwrap_or(u32::MAX);
            if let Some(n) = slots.get_mut(pos as usize) {
                *n += 1;
            }
            digest.slot(pos);
        }
        RingSummary { digest: digest.finish(), slots }
    }
}

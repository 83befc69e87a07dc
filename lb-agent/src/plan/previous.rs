//! The previous owner of each ring slot of a `flow_state = "backend"` VIP
//! (`maps::PREVIOUS`): when a slot changes, its old owner becomes its
//! previous owner, kept until the slot changes again or the drain window
//! ends. The balancer names it in the GUE header, and a backend that has no
//! socket for a packet sends it there once (see `lb_common::second_chance`).
//!
//! A function of the rings written and nothing else, so LB hosts that apply
//! the same sequence of rings hold the same `PREVIOUS` (health verdicts are
//! each host's own, so hosts agree only as far as their verdicts do).

use lb_common::NO_BACKEND;

/// Brings `previous` (one row of `PREVIOUS`) to what it must hold once ring
/// `old` becomes `new`. With `second_chance` (the row's VIP keeps flow state
/// on the backends): every slot whose owner changes gets the old owner
/// ([`NO_BACKEND`] if the slot was empty), every other slot keeps its
/// previous owner. Without: no slot has one. Returns whether `previous`
/// changed.
pub fn advance(old: &[u32], new: &[u32], previous: &mut [u32], second_chance: bool) -> bool {
    debug_assert!(old.len() == new.len() && new.len() == previous.len(), "one ring size");
    let mut changed = false;
    for ((&was, &now), prev) in old.iter().zip(new).zip(previous.iter_mut()) {
        let wanted = match second_chance {
            false => NO_BACKEND,
            true if was != now => was,
            true => *prev,
        };
        changed |= *prev != wanted;
        *prev = wanted;
    }
    changed
}

/// Slots of a row that have a previous owner.
pub fn with_previous_owner(previous: &[u32]) -> u32 {
    previous.iter().filter(|&&p| p != NO_BACKEND).count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u32 = 1;
    const B: u32 = 2;
    const C: u32 = 3;

    /// `previous` after applying `rings` in order, from an empty row.
    fn after(rings: &[&[u32]], second_chance: bool) -> Vec<u32> {
        let mut ring = vec![NO_BACKEND; rings[0].len()];
        let mut previous = vec![NO_BACKEND; ring.len()];
        for next in rings {
            advance(&ring, next, &mut previous, second_chance);
            ring = next.to_vec();
        }
        previous
    }

    #[test]
    fn a_changed_slot_remembers_its_old_owner_and_others_keep_theirs() {
        // Slot 0: A -> B -> C; slot 1: A -> B, then unchanged; slot 2: always A.
        let previous = after(&[&[A, A, A], &[B, B, A], &[C, B, A]], true);
        assert_eq!(previous, [B, A, NO_BACKEND]);
    }

    #[test]
    fn a_slot_that_was_empty_has_no_previous_owner() {
        assert_eq!(after(&[&[NO_BACKEND, NO_BACKEND], &[A, NO_BACKEND]], true), [NO_BACKEND, NO_BACKEND]);
        // Back to its old owner: the one it leaves is the previous.
        assert_eq!(after(&[&[A], &[B], &[A]], true), [B]);
    }

    #[test]
    fn a_vip_without_second_chance_never_has_previous_owners() {
        assert_eq!(after(&[&[A, A], &[B, A], &[C, B]], false), [NO_BACKEND, NO_BACKEND]);
        // A row that had some (the VIP's mode changed) loses them all.
        let mut previous = vec![A, NO_BACKEND];
        assert!(advance(&[B, B], &[B, B], &mut previous, false));
        assert_eq!(previous, [NO_BACKEND, NO_BACKEND]);
        assert!(!advance(&[B, B], &[B, B], &mut previous, false), "nothing left to change");
    }

    #[test]
    fn hosts_applying_the_same_rings_agree() {
        let sequence: &[&[u32]] = &[&[A, B, C, A], &[A, C, C, B], &[B, C, A, B], &[B, B, A, C]];
        assert_eq!(after(sequence, true), after(sequence, true));
        assert_eq!(after(sequence, true), [A, C, C, B]);
        assert_eq!(with_previous_owner(&after(sequence, true)), 4);
    }
}

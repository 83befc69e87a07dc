//! The previous owners of each ring slot of a `flow_state = "backend"` VIP
//! (`maps::PREVIOUS`, [`PreviousOwners`] per slot): when a slot changes, its
//! old owner becomes its newest previous owner, the ones before it move one
//! place down, and the oldest beyond [`MAX_PREVIOUS_OWNERS`] is forgotten;
//! each is kept until its drain window ends (see `dataplane::previous`). The
//! balancer names them in the GUE header, and a backend that has no socket
//! for a packet sends it on to the next one (see `lb_common::second_chance`).
//!
//! A function of the rings written and nothing else, so LB hosts that apply
//! the same sequence of rings hold the same `PREVIOUS` (health verdicts are
//! each host's own, so hosts agree only as far as their verdicts do).

use lb_common::{
    second_chance::{PreviousOwners, MAX_PREVIOUS_OWNERS, NO_PREVIOUS_OWNERS},
    NO_BACKEND,
};

/// No previous owner.
pub const NONE: PreviousOwners = NO_PREVIOUS_OWNERS;

/// Brings `previous` (one row of `PREVIOUS`) to what it must hold once ring
/// `old` becomes `new`. With `second_chance` (the row's VIP keeps flow state
/// on the backends): every slot whose owner changes gets the old owner in
/// front (none if the slot was empty), without the new owner and without a
/// second copy of any id; every other slot keeps its previous owners.
/// Without: no slot has any. Returns whether `previous` changed.
pub fn advance(old: &[u32], new: &[u32], previous: &mut [PreviousOwners], second_chance: bool) -> bool {
    debug_assert!(old.len() == new.len() && new.len() == previous.len(), "one ring size");
    let mut changed = false;
    for ((&was, &now), prev) in old.iter().zip(new).zip(previous.iter_mut()) {
        let wanted = match second_chance {
            false => NONE,
            true if was != now => pushed(prev, was, now),
            true => *prev,
        };
        changed |= *prev != wanted;
        *prev = wanted;
    }
    changed
}

/// `owners` with `was` in front, `now` (the slot's new owner) and empty
/// entries left out, each id once, at most [`MAX_PREVIOUS_OWNERS`].
fn pushed(owners: &PreviousOwners, was: u32, now: u32) -> PreviousOwners {
    let mut out = NONE;
    let candidates = std::iter::once(was).chain(owners.iter().copied());
    let mut kept = 0;
    for id in candidates {
        if id == NO_BACKEND || id == now || out[..kept].contains(&id) {
            continue;
        }
        if kept == MAX_PREVIOUS_OWNERS {
            break;
        }
        out[kept] = id;
        kept += 1;
    }
    out
}

/// Keeps the newest `depth` previous owners of every slot of a row (the
/// others' drain windows have passed); returns whether any went.
pub fn truncate(previous: &mut [PreviousOwners], depth: usize) -> bool {
    let mut changed = false;
    for owners in previous.iter_mut() {
        for id in owners.iter_mut().skip(depth) {
            changed |= *id != NO_BACKEND;
            *id = NO_BACKEND;
        }
    }
    changed
}

/// Whether a slot has any previous owner.
pub fn has_any(owners: &PreviousOwners) -> bool {
    owners[0] != NO_BACKEND
}

/// Slots of a row that have at least one previous owner (what
/// `lb_vip_previous_owner_slots` reports: slots whose connections a
/// backend may send on, not the number of owners named).
pub fn with_previous_owner(previous: &[PreviousOwners]) -> u32 {
    previous.iter().filter(|o| has_any(o)).count() as u32
}

/// How many previous owners the fullest slot of a row has (the depth whose
/// drain window still matters).
pub fn depth(previous: &[PreviousOwners]) -> usize {
    previous.iter().map(|o| o.iter().take_while(|&&id| id != NO_BACKEND).count()).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u32 = 1;
    const B: u32 = 2;
    const C: u32 = 3;
    const D: u32 = 4;

    /// `previous` after applying `rings` in order, from an empty row.
    fn after(rings: &[&[u32]], second_chance: bool) -> Vec<PreviousOwners> {
        let mut ring = vec![NO_BACKEND; rings[0].len()];
        let mut previous = vec![NONE; ring.len()];
        for next in rings {
            advance(&ring, next, &mut previous, second_chance);
            ring = next.to_vec();
        }
        previous
    }

    #[test]
    fn a_changed_slot_remembers_its_old_owners_newest_first_and_others_keep_theirs() {
        // Slot 0: A -> B -> C; slot 1: A -> B, then unchanged; slot 2: always A.
        let previous = after(&[&[A, A, A], &[B, B, A], &[C, B, A]], true);
        assert_eq!(previous, [[B, A], [A, NO_BACKEND], NONE]);
    }

    #[test]
    fn the_oldest_owner_goes_beyond_the_maximum() {
        assert_eq!(MAX_PREVIOUS_OWNERS, 2, "the cases below are written for 2");
        assert_eq!(after(&[&[A], &[B], &[C], &[D]], true), [[C, B]]);
    }

    #[test]
    fn a_slot_that_was_empty_has_no_previous_owner_and_an_owner_is_never_its_own_previous() {
        assert_eq!(after(&[&[NO_BACKEND, NO_BACKEND], &[A, NO_BACKEND]], true), [NONE, NONE]);
        // Back to its old owner: the one it leaves is the previous, the owner is not listed.
        assert_eq!(after(&[&[A], &[B], &[A]], true), [[B, NO_BACKEND]]);
        // A -> B -> A -> B: each id once.
        assert_eq!(after(&[&[A], &[B], &[A], &[B]], true), [[A, NO_BACKEND]]);
        // Empty in between: A -> none -> B keeps A.
        assert_eq!(after(&[&[A], &[NO_BACKEND], &[B]], true), [[A, NO_BACKEND]]);
    }

    #[test]
    fn a_vip_without_second_chance_never_has_previous_owners() {
        assert_eq!(after(&[&[A, A], &[B, A], &[C, B]], false), [NONE, NONE]);
        // A row that had some (the VIP's mode changed) loses them all.
        let mut previous = vec![[A, C], NONE];
        assert!(advance(&[B, B], &[B, B], &mut previous, false));
        assert_eq!(previous, [NONE, NONE]);
        assert!(!advance(&[B, B], &[B, B], &mut previous, false), "nothing left to change");
    }

    #[test]
    fn truncating_keeps_the_newest() {
        let mut previous = vec![[B, A], [A, NO_BACKEND], NONE];
        assert_eq!(depth(&previous), 2);
        assert!(truncate(&mut previous, 1));
        assert_eq!(previous, [[B, NO_BACKEND], [A, NO_BACKEND], NONE]);
        assert!(!truncate(&mut previous, 1), "nothing deeper left");
        assert_eq!(with_previous_owner(&previous), 2);
        assert!(truncate(&mut previous, 0));
        assert_eq!(depth(&previous), 0);
    }

    #[test]
    fn hosts_applying_the_same_rings_agree() {
        let sequence: &[&[u32]] = &[&[A, B, C, A], &[A, C, C, B], &[B, C, A, B], &[B, B, A, C]];
        assert_eq!(after(sequence, true), after(sequence, true));
        assert_eq!(after(sequence, true), [[A, NO_BACKEND], [C, NO_BACKEND], [C, NO_BACKEND], [B, A]]);
        assert_eq!(with_previous_owner(&after(sequence, true)), 4);
    }
}

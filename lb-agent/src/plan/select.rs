//! Which backends of a VIP serve, given their health, and the VIP's ring.
//!
//! Pure and deterministic: the ring is a function of the config and of the
//! set of backends that are up, never of the order things happened in, so
//! LB hosts that see the same health build the same ring, and a backend that
//! comes back restores exactly the ring it left.
//!
//! Why not simply Maglev over the healthy backends: Maglev rebuilt without a
//! backend also moves a few percent of the *other* backends' slots (the
//! paper's "minimal", not zero, disruption), and until the flow table exists
//! every moved slot breaks established connections. So a slot keeps its owner
//! from the ring of the whole tier while that owner is up; only the slots of
//! the backends that are down take their owner from a Maglev ring of the
//! healthy ones (which spreads them in proportion to the weights).

use std::net::IpAddr;

use lb_common::NO_BACKEND;

use crate::config::VipConfig;
use crate::config::health::AllDownPolicy;
use crate::maglev::{self, EMPTY, Member, backend_identity};

/// Whose ring a VIP serves from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// At least one primary (non-backup, weight > 0) is up.
    Primary,
    /// No primary is up; at least one backup is.
    Backup,
    /// Nothing is up and the policy is `drop`: every slot is empty.
    Down,
    /// Nothing is up and the policy is `fail_open`: the primaries' full ring.
    FailOpen,
}

impl Tier {
    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::Primary => "primary",
            Tier::Backup => "backup",
            Tier::Down => "down",
            Tier::FailOpen => "fail_open",
        }
    }
}

/// A VIP's ring (backend ids) and the tier it serves from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub ring: Vec<u32>,
    pub tier: Tier,
}

/// The ring of `vip` when backend `i` (index in `vip.backends`) is up iff `up(i)`.
/// `id_of` gives a backend address's id.
pub fn ring(vip: &VipConfig, ring_size: u32, id_of: &dyn Fn(IpAddr) -> u32, up: &dyn Fn(usize) -> bool) -> Selection {
    let tier_members = |backup: bool| -> Vec<usize> {
        (0..vip.backends.len()).filter(|&i| vip.backends[i].backup == backup && vip.backends[i].weight > 0).collect()
    };
    let primaries = tier_members(false);
    let backups = tier_members(true);
    for (tier, members) in [(Tier::Primary, &primaries), (Tier::Backup, &backups)] {
        let healthy: Vec<usize> = members.iter().copied().filter(|&i| up(i)).collect();
        if !healthy.is_empty() {
            return Selection { ring: stable_ring(vip, ring_size, id_of, members, &healthy), tier };
        }
    }
    match vip.all_down {
        AllDownPolicy::Drop => Selection { ring: vec![NO_BACKEND; ring_size as usize], tier: Tier::Down },
        AllDownPolicy::FailOpen => {
            let all = if primaries.is_empty() { &backups } else { &primaries };
            Selection { ring: stable_ring(vip, ring_size, id_of, all, all), tier: Tier::FailOpen }
        }
    }
}

/// The ring of `members` with the slots of members not in `healthy` handed to
/// a Maglev ring of `healthy` (see the module's documentation).
fn stable_ring(vip: &VipConfig, ring_size: u32, id_of: &dyn Fn(IpAddr) -> u32, members: &[usize], healthy: &[usize]) -> Vec<u32> {
    // Maglev over `set` (indices into the VIP's backends): each slot holds the
    // position in `set` of its owner, or EMPTY.
    let build = |set: &[usize]| -> Vec<u32> {
        let ring_members: Vec<Member> = set
            .iter()
            .map(|&i| Member { identity: backend_identity(vip.backends[i].address), weight: vip.backends[i].weight })
            .collect();
        maglev::build(&ring_members, ring_size)
    };
    // Ids looked up once per member, not once per slot.
    let ids = |set: &[usize]| -> Vec<u32> { set.iter().map(|&i| id_of(vip.backends[i].address)).collect() };
    let id_at = |owner: u32, ids: &[u32]| if owner == EMPTY { NO_BACKEND } else { ids[owner as usize] };
    let member_ids = ids(members);
    let full = build(members);
    if healthy.len() == members.len() {
        return full.into_iter().map(|owner| id_at(owner, &member_ids)).collect();
    }
    let keeps: Vec<bool> = members.iter().map(|i| healthy.contains(i)).collect();
    let healthy_ids = ids(healthy);
    let fill = build(healthy);
    full.into_iter()
        .zip(fill)
        .map(|(owner, spare)| {
            if owner != EMPTY && keeps[owner as usize] { member_ids[owner as usize] } else { id_at(spare, &healthy_ids) }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_config::{TestBackend, TestConfig, TestVip};
    use crate::plan::plan;

    /// One VIP: three primaries (.13 of weight 2) and two backups; `health`
    /// adds `[vip.health]` settings.
    fn setup(health: &[(&str, &str)]) -> (crate::config::Config, crate::plan::Plan) {
        let b = TestBackend::new;
        let vip = TestVip::new("web", "192.0.2.10:80").backends(["198.51.100.11", "198.51.100.12"]).backend(b("198.51.100.13").weight(2));
        let vip = vip.backend(b("198.51.100.14").backup()).backend(b("198.51.100.15").backup());
        let vip = health.iter().fold(vip, |vip, (key, value)| vip.health(key, *value));
        let c = TestConfig::new().ring_size(4099).vip(vip).parse();
        let p = plan(&c);
        (c, p)
    }

    fn select(c: &crate::config::Config, p: &crate::plan::Plan, down: &[usize]) -> Selection {
        let id_of = |a: IpAddr| p.backend_id(a).unwrap();
        ring(&c.vips[0], p.ring_size, &id_of, &|i| !down.contains(&i))
    }

    #[test]
    fn all_up_is_the_plan_ring_without_backups() {
        let (c, p) = setup(&[]);
        let s = select(&c, &p, &[]);
        assert_eq!(s.tier, Tier::Primary);
        assert_eq!(s.ring, p.vips[0].ring());
        assert!(!s.ring.contains(&4) && !s.ring.contains(&5), "backups own no slot while primaries are up");
    }

    #[test]
    fn a_down_backend_moves_only_its_own_slots() {
        let (c, p) = setup(&[]);
        let before = select(&c, &p, &[]).ring;
        let after = select(&c, &p, &[1]).ring;
        for (slot, (b, a)) in before.iter().zip(&after).enumerate() {
            if *b != 2 {
                assert_eq!(a, b, "slot {slot} of a healthy backend moved");
            } else {
                assert!(*a == 1 || *a == 3, "slot {slot} went to {a}");
            }
        }
        // The freed slots follow the weights (1:2) roughly.
        let to1 = after.iter().zip(&before).filter(|(a, b)| **b == 2 && **a == 1).count() as f64;
        let to3 = after.iter().zip(&before).filter(|(a, b)| **b == 2 && **a == 3).count() as f64;
        assert!((to3 / (to1 + to3) - 2.0 / 3.0).abs() < 0.1, "{to1} {to3}");
        assert_eq!(select(&c, &p, &[]).ring, before, "coming back restores the ring exactly");
    }

    #[test]
    fn backups_serve_only_without_primaries() {
        let (c, p) = setup(&[]);
        let s = select(&c, &p, &[0, 1, 2]);
        assert_eq!(s.tier, Tier::Backup);
        assert!(s.ring.iter().all(|id| *id == 4 || *id == 5));
        let s = select(&c, &p, &[0, 1]);
        assert_eq!(s.tier, Tier::Primary);
        assert!(s.ring.iter().all(|id| *id == 3));
    }

    #[test]
    fn all_down_policies() {
        let (c, p) = setup(&[]);
        let s = select(&c, &p, &[0, 1, 2, 3, 4]);
        assert_eq!(s.tier, Tier::Down);
        assert!(s.ring.iter().all(|id| *id == NO_BACKEND));
        let (c, p) = setup(&[("all_down", "fail_open")]);
        let s = select(&c, &p, &[0, 1, 2, 3, 4]);
        assert_eq!(s.tier, Tier::FailOpen);
        assert_eq!(s.ring, p.vips[0].ring());
    }
}

//! What a new config changes against the running one, named kind by kind
//! (settings, VIPs, backends, weights, roles, health checks, flow state,
//! ...): the reload's answer and `reload --dry-run`'s report. Pure.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use super::{select, Plan};
use crate::config::{BackendConfig, Config, VipConfig};

/// Every change between two configs (and, for a dry run, their rings).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChangeReport {
    /// `[lb]` and `[announce]` settings: "lb.hash_seed 0 -> 1".
    pub settings: Vec<String>,
    pub vips_added: Vec<String>,
    pub vips_removed: Vec<String>,
    /// VIPs in both, with what changed in each (only those with a change).
    pub vips_changed: Vec<VipChanges>,
}

/// The changes of one VIP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VipChanges {
    pub vip: String,
    /// "backend 198.51.100.12 weight 1 -> 3", "flow_state lb -> backend", ...
    pub changes: Vec<String>,
    /// Slots of the all-up ring whose backend changes ([`slots_moved`]); set by a dry run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slots_moved: Option<u32>,
}

impl ChangeReport {
    pub fn is_empty(&self) -> bool {
        self.settings.is_empty() && self.vips_added.is_empty() && self.vips_removed.is_empty() && self.vips_changed.is_empty()
    }
}

/// One line: what the reload's answer appends.
impl fmt::Display for ChangeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return write!(f, "no change");
        }
        let mut parts = vec![];
        if !self.settings.is_empty() {
            parts.push(format!("settings: {}", self.settings.join(", ")));
        }
        if !self.vips_added.is_empty() {
            parts.push(format!("VIPs added: {}", self.vips_added.join(", ")));
        }
        if !self.vips_removed.is_empty() {
            parts.push(format!("VIPs removed: {}", self.vips_removed.join(", ")));
        }
        for v in &self.vips_changed {
            let moved = v.slots_moved.map_or(String::new(), |n| format!(" ({n} slots move)"));
            parts.push(format!("VIP {}{moved}: {}", v.vip, v.changes.join(", ")));
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// The changes from `old` to `new` (both validated, drains applied).
pub fn report(old: &Config, new: &Config) -> ChangeReport {
    let mut report = ChangeReport { settings: settings(old, new), ..Default::default() };
    let old_vips: BTreeMap<&str, &VipConfig> = old.vips.iter().map(|v| (v.name.as_str(), v)).collect();
    let new_vips: BTreeMap<&str, &VipConfig> = new.vips.iter().map(|v| (v.name.as_str(), v)).collect();
    report.vips_removed = old_vips.keys().filter(|n| !new_vips.contains_key(*n)).map(|n| n.to_string()).collect();
    for (name, v) in &new_vips {
        match old_vips.get(name) {
            None => report.vips_added.push(name.to_string()),
            Some(o) => {
                let changes = vip_changes(o, v);
                if !changes.is_empty() {
                    report.vips_changed.push(VipChanges { vip: name.to_string(), changes, slots_moved: None });
                }
            }
        }
    }
    report
}

/// Fills in each changed VIP's [`VipChanges::slots_moved`]: the all-up
/// rings of `old` (ids of `old_plan`) and `new_plan` (which must keep its
/// rings) compared slot by slot by backend address.
pub fn add_slots_moved(report: &mut ChangeReport, old: &Config, old_plan: &Plan, new_plan: &Plan) {
    let old_address = |id: u32| old_plan.backend(id).map(|b| b.address);
    let old_id = |a: IpAddr| old_plan.backend_id(a).unwrap_or(lb_common::NO_BACKEND);
    for change in &mut report.vips_changed {
        let (Some(o), Some(new)) = (old.vips.iter().find(|v| v.name == change.vip), new_plan.vip(&change.vip)) else { continue };
        let Some(new_ring) = new.all_up.as_ref() else {
            change.slots_moved = Some(0);
            continue;
        };
        let old_ring = select::ring(o, old_plan.ring_size, &old_id, &|_| true);
        let new_address = |id: u32| new_plan.backend(id).map(|b| b.address);
        change.slots_moved = Some(slots_moved(&old_ring.ring, &new_ring.ring, &old_address, &new_address));
    }
}

/// Slots whose backend (by address) differs between two rings.
pub fn slots_moved(old: &[u32], new: &[u32], old_address: &dyn Fn(u32) -> Option<IpAddr>, new_address: &dyn Fn(u32) -> Option<IpAddr>) -> u32 {
    let differing = old.iter().zip(new).filter(|&(&o, &n)| old_address(o) != new_address(n)).count();
    (differing + old.len().abs_diff(new.len())) as u32
}

/// Settings outside the VIPs that differ, as "name old -> new".
fn settings(old: &Config, new: &Config) -> Vec<String> {
    let mut out = vec![];
    let mut diff = |name: &str, o: String, n: String| {
        if o != n {
            out.push(format!("{name} {o} -> {n}"));
        }
    };
    macro_rules! lb {
        ($($field:ident),*) => {$(
            diff(concat!("lb.", stringify!($field)), format!("{:?}", old.lb.$field), format!("{:?}", new.lb.$field));
        )*};
    }
    lb!(interface, xdp_mode, tunnel_source_v4, tunnel_source_v6, ring_size, hash_seed, max_vips, max_backends, bpffs_dir, run_dir);
    lb!(metrics_listen, flow_table_size, encap, gue_port, previous_owner_window, packets);
    match (&old.announce, &new.announce) {
        (None, None) => {}
        (Some(_), None) => diff("announce", "configured".into(), "none".into()),
        (None, Some(_)) => diff("announce", "none".into(), "configured".into()),
        (Some(o), Some(n)) => {
            macro_rules! announce {
                ($($field:ident),*) => {$(
                    diff(concat!("announce.", stringify!($field)), format!("{:?}", o.$field), format!("{:?}", n.$field));
                )*};
            }
            announce!(table, protocol, role, drain_timeout, drain_quiet);
        }
    }
    out
}

fn role(backup: bool) -> &'static str {
    if backup { "backup" } else { "primary" }
}

fn vip_changes(o: &VipConfig, n: &VipConfig) -> Vec<String> {
    let mut out = vec![];
    let mut diff = |name: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{name} {a} -> {b}"));
        }
    };
    diff("address", o.address.to_string(), n.address.to_string());
    diff("port", o.port.to_string(), n.port.to_string());
    diff("protocol", o.protocol.to_string(), n.protocol.to_string());
    diff("hash", o.hash.to_string(), n.hash.to_string());
    diff("fragments", format!("{:?}", o.fragments), format!("{:?}", n.fragments));
    diff("flow_state", o.flow_state.to_string(), n.flow_state.to_string());
    diff("encap", o.encap.to_string(), n.encap.to_string());
    diff("health.all_down", o.all_down.as_str().to_string(), n.all_down.as_str().to_string());
    let old_backends: BTreeMap<IpAddr, &BackendConfig> = o.backends.iter().map(|b| (b.address, b)).collect();
    for b in &n.backends {
        let Some(ob) = old_backends.get(&b.address) else {
            out.push(format!("backend {} added", b.address));
            continue;
        };
        if ob.weight != b.weight {
            out.push(format!("backend {} weight {} -> {}", b.address, ob.weight, b.weight));
        }
        if ob.backup != b.backup {
            out.push(format!("backend {} role {} -> {}", b.address, role(ob.backup), role(b.backup)));
        }
        if ob.mac != b.mac {
            out.push(format!("backend {} mac {:?} -> {:?}", b.address, ob.mac.map(|m| m.to_string()), b.mac.map(|m| m.to_string())));
        }
        if ob.check != b.check {
            out.push(format!("backend {} health check {} -> {}", b.address, ob.check.describe(), b.check.describe()));
        }
    }
    for b in &o.backends {
        if !n.backends.iter().any(|nb| nb.address == b.address) {
            out.push(format!("backend {} removed", b.address));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{plan, plan_keeping};
    use crate::test_config::{TestBackend, TestConfig, TestVip};

    fn base() -> TestConfig {
        let b = TestBackend::new;
        let web = TestVip::new("web", "192.0.2.10:80").backend(b("198.51.100.11")).backend(b("198.51.100.12")).backend(b("198.51.100.13"));
        let dns = TestVip::new("dns", "192.0.2.53:53").set("protocol", "udp").backend(b("198.51.100.21"));
        TestConfig::new().ring_size(1009).vip(web).vip(dns)
    }

    #[test]
    fn every_kind_of_change_is_named() {
        let old = base().parse();
        let b = TestBackend::new;
        let web = TestVip::new("web", "192.0.2.10:80")
            .set("flow_state", "none")
            .backend(b("198.51.100.11").weight(3))
            .backend(b("198.51.100.12").backup())
            .backend(b("198.51.100.14"));
        let api = TestVip::new("api", "192.0.2.11:443").backend(b("198.51.100.21"));
        let new = TestConfig::new().ring_size(1009).hash_seed(7).vip(web).vip(api).parse();
        let r = report(&old, &new);
        assert_eq!(r.settings, vec!["lb.hash_seed 0 -> 7"]);
        assert_eq!((r.vips_added.clone(), r.vips_removed.clone()), (vec!["api".to_string()], vec!["dns".to_string()]));
        let web = &r.vips_changed[0].changes;
        for expected in [
            "flow_state lb -> none",
            "backend 198.51.100.11 weight 1 -> 3",
            "backend 198.51.100.12 role primary -> backup",
            "backend 198.51.100.14 added",
            "backend 198.51.100.13 removed",
        ] {
            assert!(web.iter().any(|c| c == expected), "{expected:?} missing from {web:?}");
        }
        let line = r.to_string();
        assert!(line.contains("VIPs added: api") && line.contains("VIP web: "), "{line}");
        assert_eq!(report(&old, &old).to_string(), "no change");
    }

    #[test]
    fn slots_moved_counts_the_slots_that_change_backend() {
        let old = base().parse();
        let old_plan = plan(&old);
        let b = TestBackend::new;
        // A fourth backend of equal weight takes about a quarter of the ring, and Maglev moves little else.
        let web = TestVip::new("web", "192.0.2.10:80").backends(["198.51.100.11", "198.51.100.12", "198.51.100.13", "198.51.100.14"]);
        let dns = TestVip::new("dns", "192.0.2.53:53").set("protocol", "udp").backend(b("198.51.100.21"));
        let new = TestConfig::new().ring_size(1009).vip(web).vip(dns).parse();
        let new_plan = plan_keeping(&new, &old_plan.kept()).unwrap();
        let mut r = report(&old, &new);
        add_slots_moved(&mut r, &old, &old_plan, &new_plan);
        let moved = r.vips_changed[0].slots_moved.expect("set");
        let new_share = new_plan.vip("web").unwrap().slots[3];
        assert!(moved >= new_share && moved < new_share + 1009 / 10, "moved {moved}, the new backend owns {new_share}");
        assert_eq!(slots_moved(&[1, 2], &[1, 2], &|_| None, &|_| None), 0);
    }
}

//! `lb-agent list` (as `ipvsadm -Ln`): every VIP of the running balancer
//! with its backends, weights, roles, drains, health, the kernel's ring
//! shares now, flow-state mode, ring digest and previous-owner slots. Read
//! from the pinned maps and the run directory, so it works without the
//! agent running (as `stats`); names and weights come from the config with
//! the runtime drains applied, ids and rows from the maps.

use std::net::IpAddr;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::config::Config;
use crate::control::drains::Drains;
use crate::dataplane::{live::LiveMaps, store::MapStore as _};
use crate::health::report::{self, HealthTable};
use crate::metrics::shares::RingShares;
use crate::plan::{self, ring_digest, Plan};

/// The `list --json` document.
#[derive(Debug, Serialize)]
pub struct List {
    pub interface: String,
    pub ring_size: u32,
    pub vips: Vec<ListVip>,
}

#[derive(Debug, Serialize)]
pub struct ListVip {
    pub name: String,
    pub address: IpAddr,
    /// 0 = every port.
    pub port: u16,
    pub protocol: String,
    pub hash: String,
    pub flow_state: String,
    pub encap: String,
    pub ring_digest: String,
    /// `up`, `degraded`, `backup`, `down`, `down_fail_open`.
    pub health: String,
    /// Slots with a previous owner now (`flow_state = "backend"` VIPs).
    pub previous_owner_slots: u32,
    pub backends: Vec<ListBackend>,
}

#[derive(Debug, Serialize)]
pub struct ListBackend {
    pub address: IpAddr,
    /// The weight in effect (0 while drained).
    pub weight: u32,
    pub backup: bool,
    /// `no`, `file` (weight 0 in the config) or `runtime` (`lb-agent drain`).
    pub drained: &'static str,
    /// `up`, `down`, `unchecked`.
    pub health: String,
    /// The last check's reason, if checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Fraction of the VIP's ring in the kernel now.
    pub share: f64,
}

/// Reads the running balancer's state for `file` (the config as read from
/// the file): names and weights from the copy of the config the agent
/// programmed last (the file may have been edited since), else the file's.
pub fn read(file: &Config) -> Result<List> {
    let dir = &file.lb.bpffs_dir;
    let live = LiveMaps::open(dir).context("reading the running balancer's maps (is `lb-agent run` running with this config's bpffs_dir?)")?;
    let drains = Drains::read(&file.lb.run_dir, &file.lb.interface)?;
    let running = crate::control::running_config_path(&file.lb.run_dir, &file.lb.interface);
    let programmed = match std::fs::read_to_string(&running) {
        Ok(text) => crate::config::parse(&text, &running.display().to_string()).map_err(|e| anyhow::anyhow!("{e}"))?,
        Err(e) => {
            eprintln!("no copy of the running config ({}: {e}); showing the config file's names and weights", running.display());
            file.clone()
        }
    };
    let config = drains.apply(&programmed).config;
    let plan = plan::plan_keeping(&config, &live.kept()?).map_err(anyhow::Error::msg)?;
    let table = report::read_pinned(dir)?;
    let shares = RingShares::read_pinned(dir, &plan)?;
    Ok(build(&config, &plan, &drains, &table, &shares))
}

/// The list from its inputs (pure: tested without a kernel).
pub fn build(config: &Config, plan: &Plan, drains: &Drains, table: &HealthTable, shares: &RingShares) -> List {
    let health = report::vip_health(config, plan, table, None);
    let vips = config
        .vips
        .iter()
        .filter_map(|v| {
            let pv = plan.vip(&v.name)?;
            let vip_health = health.iter().find(|h| h.name == v.name);
            let backends = v
                .backends
                .iter()
                .map(|b| {
                    let id = plan.backend_id(b.address).unwrap_or(lb_common::NO_BACKEND);
                    let entry = vip_health.and_then(|h| h.members.iter().find(|m| m.address == b.address)).and_then(|m| m.entry);
                    let drained = match (b.weight, drains.holds(&v.name, b.address)) {
                        (_, true) => "runtime",
                        (0, false) => "file",
                        _ => "no",
                    };
                    ListBackend {
                        address: b.address,
                        weight: b.weight,
                        backup: b.backup,
                        drained,
                        health: entry.map_or("unchecked", |e| report::state_label(e.state)).to_string(),
                        reason: entry.filter(|e| e.state != lb_common::health::HEALTH_UNCHECKED).map(|e| report::reason_label(&e)),
                        share: shares.share(pv.row, id),
                    }
                })
                .collect();
            Some(ListVip {
                name: v.name.clone(),
                address: v.address,
                port: v.port,
                protocol: v.protocol.to_string(),
                hash: v.hash.to_string(),
                flow_state: v.flow_state.to_string(),
                encap: v.encap.to_string(),
                ring_digest: ring_digest::label(pv.ring_digest),
                health: vip_health.map_or("up", |h| h.health).to_string(),
                previous_owner_slots: shares.with_previous_owner(pv.row),
                backends,
            })
        })
        .collect();
    List { interface: config.lb.interface.clone(), ring_size: plan.ring_size, vips }
}

/// The text table.
pub fn to_text(list: &List) -> String {
    let mut out = format!("interface {}  ring size {}\n", list.interface, list.ring_size);
    for v in &list.vips {
        let port = if v.port == 0 { "*".to_string() } else { v.port.to_string() };
        let endpoint = match v.address {
            IpAddr::V4(a) => format!("{a}:{port}/{}", v.protocol),
            IpAddr::V6(a) => format!("[{a}]:{port}/{}", v.protocol),
        };
        out += &format!(
            "\nVIP {:?} {endpoint}  hash {}  flow state {}  encap {}  health {}  ring digest {}  previous-owner slots {}\n",
            v.name, v.hash, v.flow_state, v.encap, v.health, v.ring_digest, v.previous_owner_slots
        );
        let width = v.backends.iter().map(|b| b.address.to_string().len()).max().unwrap_or(0).max("backend".len());
        out += &format!("  {:<width$}  {:>6}  {:<7}  {:<10}  {:>7}  {}\n", "backend", "weight", "role", "health", "share", "drained");
        for b in &v.backends {
            let health = match &b.reason {
                Some(r) if b.health == "down" => format!("down ({r})"),
                _ => b.health.clone(),
            };
            out += &format!(
                "  {:<width$}  {:>6}  {:<7}  {:<10}  {:>6.2}%  {}\n",
                b.address.to_string(),
                b.weight,
                if b.backup { "backup" } else { "primary" },
                health,
                100.0 * b.share,
                b.drained
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_config::{TestBackend, TestConfig, TestVip};
    use lb_common::health::{HEALTH_DOWN, HealthEntry, HealthKey};

    #[test]
    fn the_list_shows_roles_drains_health_and_the_kernels_shares() {
        let b = TestBackend::new;
        let web = TestVip::new("web", "192.0.2.10:80").backend(b("198.51.100.11")).backend(b("198.51.100.12").weight(0)).backend(b("198.51.100.13").backup());
        let file = TestConfig::new().ring_size(5).vip(web).parse();
        let (drains, config) = Drains::default().drain(&file, "web", "198.51.100.13".parse().unwrap()).unwrap();
        let plan = plan::plan(&config);
        let row = plan.vip("web").unwrap().row;
        let id = |a: &str| plan.backend_id(a.parse().unwrap()).unwrap();
        // The kernel's ring: three slots .11, two empty.
        let ring = [id("198.51.100.11"), id("198.51.100.11"), id("198.51.100.11"), 0, 0];
        let shares = RingShares::from_rings(5, [(row, &ring[..])]);
        let mut table = HealthTable::new();
        let down = HealthEntry { since_unix_ms: 0, consecutive_fails: 3, consecutive_passes: 0, changes: 1, http_status: 0, state: HEALTH_DOWN, reason: 0 };
        table.insert(HealthKey { row, backend_id: id("198.51.100.11") }, down);
        let list = build(&config, &plan, &drains, &table, &shares);
        let backends = &list.vips[0].backends;
        assert_eq!(backends.iter().map(|b| b.drained).collect::<Vec<_>>(), ["no", "file", "runtime"]);
        assert_eq!((backends[0].health.as_str(), backends[0].share), ("down", 0.6));
        assert!(backends[2].backup);
        let text = to_text(&list);
        assert!(text.contains("backup") && text.contains("runtime") && text.contains(&list.vips[0].ring_digest), "{text}");
        let json = serde_json::to_value(&list).unwrap();
        assert_eq!(json["vips"][0]["backends"][2]["drained"], "runtime");
    }
}

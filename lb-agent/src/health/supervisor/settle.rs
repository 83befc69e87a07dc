//! Settling a VIP's state changes: its new ring, then members and health
//! entries in the order the kernel needs them, then the log lines that say
//! what changed and what the VIP serves from now.

use anyhow::Result;
use lb_common::health::HealthKey;

use super::{Change, HealthWriter, Supervisor};
use crate::health::tracker::State;
use crate::plan::select::Tier;

impl<W: HealthWriter> Supervisor<W> {
    /// After state changes of VIP `vi`: its ring, then the members that are
    /// up (new flows may be recorded on them once the ring has them), then
    /// their health entries (once `stats` shows a state, the ring has it).
    pub(super) fn settle(&mut self, vi: usize, changes: &[Change]) -> Result<()> {
        let ring_size = self.ring_size;
        let vip = &mut self.vips[vi];
        let (written, before) = Self::reselect(vip, ring_size, &mut self.writer)?;
        let mut settled: Vec<usize> = changes.iter().map(|c| c.backend).collect();
        settled.sort_unstable();
        settled.dedup();
        for &b in &settled {
            let key = HealthKey { row: vip.row, backend_id: vip.ids[b] };
            let pair = &vip.pairs[b];
            if pair.up() {
                self.writer.write_member(key, true)?;
            }
            self.writer.write_health(key, pair.entry())?;
        }
        let up_count = vip.pairs.iter().filter(|p| p.up()).count();
        let slots = match changes.len() {
            1 => format!("{written} ring slots rewritten"),
            n => format!("{written} ring slots rewritten for {n} changes"),
        };
        let name = &vip.config.name;
        let (total, tier) = (vip.pairs.len(), vip.tier.as_str());
        for c in changes {
            let backend = &vip.config.backends[c.backend];
            let role = if backend.backup { "backup " } else { "" };
            match c.state {
                State::Down => tracing::warn!(
                    vip = %name,
                    backend = %backend.address,
                    state = "down",
                    "vip {name}: {role}backend {} DOWN: {} ({} consecutive failed checks, fails = {}); {up_count}/{total} backends up, serving from {tier}; {slots}",
                    backend.address,
                    c.outcome.describe(),
                    c.fails,
                    backend.check.fails,
                ),
                State::Up => tracing::info!(
                    vip = %name,
                    backend = %backend.address,
                    state = "up",
                    "vip {name}: {role}backend {} UP: {} ({} consecutive passed checks, passes = {}); {up_count}/{total} backends up, serving from {tier}; {slots}",
                    backend.address,
                    c.outcome.describe(),
                    c.passes,
                    backend.check.passes,
                ),
            }
        }
        if vip.tier != before {
            match vip.tier {
                Tier::Down => tracing::warn!(
                    "vip {name}: no backend is up; its packets are dropped and counted as no_backend (health.all_down = \"drop\")"
                ),
                Tier::FailOpen => {
                    tracing::warn!("vip {name}: no backend is up; sending to all primaries anyway (health.all_down = \"fail_open\")")
                }
                Tier::Backup => tracing::warn!("vip {name}: no primary backend is up; backups take the traffic"),
                Tier::Primary => tracing::info!("vip {name}: a primary backend is up again; new flows go to the primaries"),
            }
        }
        Ok(())
    }
}

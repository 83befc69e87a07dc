//! A supervisor's start: the state of every pair, and what the kernel must
//! hold for it (only what it does not hold already is written).

use anyhow::{Context as _, Result};
use lb_common::health::HealthKey;

use super::pair::PairHealth;
use super::{HealthWriter, PriorHealth, Supervisor, VipState, now_unix_ms};
use crate::config::Config;
use crate::plan::Plan;
use crate::plan::select::Tier;

impl<W: HealthWriter> Supervisor<W> {
    /// Writes the health entries, the members and the rings that follow
    /// from them (only the slots that differ from the kernel's). A pair with
    /// a checked entry in `prior` keeps that state; others start from the
    /// configured initial state.
    ///
    /// On a reload, `replaced` is the supervisor being replaced: a VIP the
    /// plan calls [`unchanged`](crate::plan::PlannedVip::unchanged) takes
    /// over its state there, since the kernel holds that state's ring and
    /// health entries already, and nothing of it is written.
    pub fn new(config: &Config, plan: &Plan, mut writer: W, prior: &PriorHealth, replaced: Option<&Self>) -> Result<Self> {
        let since = now_unix_ms();
        let mut vips = Vec::with_capacity(config.vips.len());
        for v in &config.vips {
            let planned = plan.vip(&v.name).with_context(|| format!("VIP {} missing from the plan", v.name))?;
            // The kernel's view of this row before now (on a reload).
            let before = replaced.and_then(|p| p.vips.iter().find(|s| s.row == planned.row));
            if planned.unchanged
                && let Some(state) = before
            {
                vips.push(state.clone());
                continue;
            }
            let ids: Vec<u32> = v.backends.iter().map(|b| plan.backend_id(b.address).expect("every backend has an id")).collect();
            let pairs: Vec<PairHealth> = v
                .backends
                .iter()
                .zip(&ids)
                .map(|(b, &backend_id)| PairHealth::start(&b.check, prior.get(&HealthKey { row: planned.row, backend_id }), since))
                .collect();
            // What the kernel holds already is not written again (a reload
            // of a large config would otherwise cost two syscalls per pair).
            for (&id, pair) in ids.iter().zip(&pairs) {
                let key = HealthKey { row: planned.row, backend_id: id };
                let entry = pair.entry();
                if prior.get(&key) != Some(&entry) {
                    writer.write_health(key, entry)?;
                }
                let was_up = before.and_then(|s| s.ids.iter().position(|x| *x == id).map(|i| s.pairs[i].up()));
                if was_up != Some(pair.up()) {
                    writer.write_member(key, pair.up())?;
                }
            }
            let up: Vec<bool> = pairs.iter().map(PairHealth::up).collect();
            let id_of = |a| plan.backend_id(a).unwrap_or(lb_common::NO_BACKEND);
            let selection = planned.ring_for(v, plan.ring_size, &id_of, &up);
            let mut state = VipState { config: v.clone(), row: planned.row, ids, pairs, tier: Tier::Primary, unsettled: Vec::new() };
            let (written, _) = Self::write_selection(&mut state, &selection.ring, selection.tier, &mut writer)?;
            if state.tier != Tier::Primary {
                tracing::warn!("vip {}: serves from {}", v.name, state.tier.as_str());
            }
            tracing::info!("vip {}: {written} ring slots written", v.name);
            vips.push(state);
        }
        static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let generation = GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A VIP carried over from the replaced supervisor keeps its unsettled changes.
        let waiting = (0..vips.len()).filter(|&i| !vips[i].unsettled.is_empty()).collect();
        Ok(Supervisor { generation, vips, waiting, ring_size: plan.ring_size, writer, observer: None })
    }
}

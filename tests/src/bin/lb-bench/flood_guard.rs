//! The TCP SYN path under the new-flow guard: the CPU is past its limit of
//! new flows, so each SYN is hashed and forwarded but not recorded (the
//! insert, half of the SYN path's cost, is skipped). Same object as the other
//! per-packet rows; the guard's limit is lowered to 1 for these runs through
//! the agent's map store, then put back.

use anyhow::{ensure, Result};
use aya::Ebpf;
use lb_agent::dataplane::{self, live::LiveMaps, store::MapStore as _};
use lb_common::{flow_guard::DEFAULT_NEW_FLOWS_PER_CPU_PER_SECOND, flows::FlowEvent, programs};

use crate::{median_ns, tcp4_syn, Expect, Flows, PacketCase, VIP_V4};

pub const NAME: &str = "ipv4 tcp syn, flood guard (unrecorded)";

/// The median ns of a SYN to a flow-table VIP while the guard is active.
pub fn measure(ebpf: &Ebpf, runs: usize) -> Result<Vec<(&'static str, f64)>> {
    let unrecorded = || -> Result<u64> { Ok(dataplane::read_counters(ebpf)?.flow_event(FlowEvent::Unrecorded).packets) };
    let mut maps = LiveMaps::from_object(ebpf)?;
    maps.set_new_flow_guard(Some(1))?;
    let case = PacketCase { name: NAME, flows: Flows::Any, program: programs::BALANCER, input: tcp4_syn(VIP_V4, 80), ingress: None, expect: Expect::Tx { grows_by: 20 } };
    let before = unrecorded()?;
    let ns = median_ns(ebpf, &case, runs);
    let counted = unrecorded()? - before;
    // The bench config's own limit back, whatever happened above.
    maps.set_new_flow_guard(Some(DEFAULT_NEW_FLOWS_PER_CPU_PER_SECOND))?;
    let ns = ns?;
    // Each new one-second window records one flow; the runs last a few.
    ensure!(counted + 10 >= runs as u64, "{NAME}: only {counted} of {runs} runs went unrecorded: the guard did not act");
    Ok(vec![(NAME, ns)])
}

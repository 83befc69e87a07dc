//! End-to-end forwarding in namespaces: how many packets per second the LB
//! forwards for many small UDP flows, and what each costs the LB's CPU,
//! against the same topology where the LB namespace only reflects
//! (`xdp_floor_tx`: parse, swap MACs, `XDP_TX`), in the same run.
//!
//! Method:
//! - One topology (client, LB, one backend, bridge), used for both runs; the
//!   only difference between them is the XDP program on the LB's eth0: the
//!   real agent (`lb-agent run`, one UDP VIP) or the reflector.
//! - Generator: a thread in the client namespace, an `AF_PACKET` raw socket
//!   with `PACKET_QDISC_BYPASS`, `sendmmsg` of prebuilt 60-byte
//!   Ethernet/IPv4/UDP frames for 1024 flows (source ports), for a fixed time,
//!   at nice -20.
//! - CPUs: the generator runs on CPU 0, and so does everything its send
//!   triggers up to the LB (the client's veth, the bridge). The LB's eth0
//!   NAPI runs threaded (`/sys/class/net/eth0/threaded`), its kthread on
//!   CPU 1 at SCHED_FIFO (see [`thread_napi`]). What the LB sends with
//!   XDP_TX is taken off the wire by its bridge port's (`v-lb`) NAPI, which
//!   that thread schedules on its own CPU and runs as softirq right after its
//!   own poll, as a NIC's TX completions are handled in the driver's NAPI:
//!   so the LB's CPU does the LB's receive, program and transmit, and the
//!   wire's receive of the same frames (equal in both runs), nothing else.
//!   "LB CPU, ns/packet" is that thread's CPU time (schedstat; this kernel
//!   has no IRQ time accounting, so the softirq work is in it) over the
//!   packets. (The wire's NAPI in a thread of its own cost more than it
//!   saved: a wakeup per batch, across CPUs on CPU 0, or a context switch
//!   on CPU 1; and on CPU 0 it took generator time.)
//! - Sink (the wire): every frame the LB namespace sends is addressed to
//!   [`SINK_MAC`], which a static bridge entry puts on the LB's own port, so
//!   the bridge discards it on arrival (it never sends a frame back out of the
//!   port it came in on). The generator's frames come from that MAC, so the
//!   reflector's MAC swap addresses it; the VIP's backends have it as static
//!   next hop. Both runs' output costs the same and reaches no host's stack
//!   (checked: the client's and the backend's eth0 receive ~nothing).
//! - The XDP program's own time per packet: kernel BPF run-time statistics,
//!   enabled with `BPF_ENABLE_STATS` (an fd: the kernel turns them off again
//!   when it is closed, even if the bench dies; no sysctl to restore), read
//!   as `run_time / run_cnt` of the attached program.
//! - Forwarded = the veth driver's `xdp_tx` counter of the LB's eth0 (frames
//!   queued to the peer); for the LB also checked against its own counters.

/// The load: frames and the sending thread.
mod generator;
/// CPU, thread and interface figures from /proc, /sys and ethtool.
mod host;
/// The table and the JSON.
mod report;
/// One measured run of the LB and of the reflector.
mod runs;
/// A run's counters and the figures derived from them.
mod sample;

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{ensure, Context as _, Result};
use aya::sys::{enable_stats, Stats};
use lb_tests::topology::{Topology, TopologyOptions, CLIENT, IFACE, LB, SWITCH};
use serde_json::Value;

use generator::frames;
use host::{mac_of, mac_text, online_cpus};
use runs::{run_lb, run_reflector};

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
const VIP_PORT: u16 = 9000;
/// Where the LB's output goes: nowhere (see the module comment).
const SINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xfe, 0x01];
const FLOWS: usize = 1024;
const FIRST_SOURCE_PORT: u16 = 20000;
/// 14 + 20 + 8 + 18 = 60 bytes: the smallest Ethernet frame (without FCS).
const PAYLOAD: [u8; 18] = *b"lb-bench-forward!!";
/// Frames per `sendmmsg` call.
const BATCH: usize = 64;
/// Traffic before each measurement (flow table, caches, NAPI threads awake).
const WARMUP: Duration = Duration::from_millis(500);
/// After the generator stops, for queued frames to be processed.
const DRAIN: Duration = Duration::from_millis(50);
/// A bound besides the duration: no run sends more than this.
const MAX_PACKETS: u64 = 500_000_000;
const GENERATOR_CPU: usize = 0;
const LB_CPU: usize = 1;
/// Runs per program, alternating (LB, reflector, reflector, LB, ...); the
/// table shows medians, which shrug off one disturbed run.
const ROUNDS: usize = 3;
const PATIENCE: Duration = Duration::from_secs(30);
/// Name of the LB's port on the bridge (the harness's `v-<host>`).
const LB_PORT: &str = "v-lb";

/// Runs both programs `ROUNDS` times each for `seconds` in all, prints the
/// table and returns the section's JSON.
pub fn measure(seconds: Duration) -> Result<Value> {
    ensure!(online_cpus() >= 2, "the forwarding bench needs 2 CPUs (one for the generator, one for the LB)");
    let slice = seconds / ROUNDS as u32;
    println!(
        "\nEnd-to-end forwarding in namespaces: UDP, {FLOWS} flows, 60-byte frames, {:.1} s per program in {ROUNDS} \
         alternating rounds, medians (AF_PACKET sendmmsg generator on CPU {GENERATOR_CPU}, the LB's eth0 NAPI thread, which also takes its output off the wire, on CPU {LB_CPU})",
        seconds.as_secs_f64()
    );
    let topo = Topology::build(TopologyOptions { backends: 1, ..TopologyOptions::default() })?;
    let client_ns = topo.ns_name(CLIENT).to_string();
    let lb_mac = mac_of(&topo, LB, IFACE)?;
    // Static bridge entries: the LB's MAC (no flooding of the load before the
    // bridge would have learnt it), and the sink on the LB's own port
    // (`sticky`: the load's source MAC on the client's port does not move it).
    for (mac, flags) in [(lb_mac, &["static"][..]), (SINK_MAC, &["static", "sticky"][..])] {
        let mac = mac_text(mac);
        let mut args = vec!["fdb", "replace", mac.as_str(), "dev", LB_PORT, "master"];
        args.extend(flags);
        topo.exec_ok(SWITCH, "bridge", &args)?;
    }
    let frames = frames(lb_mac);

    // Enabled for all runs; the kernel disables them when this fd closes.
    let stats = enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS (kernel BPF run-time statistics)")?;
    let (mut lb, mut reflector) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Alternate which goes first, so that a drift hits both alike.
        for lb_turn in if round % 2 == 0 { [true, false] } else { [false, true] } {
            if lb_turn {
                lb.push(run_lb(&topo, &client_ns, &frames, slice).context("forwarding through the LB")?);
            } else {
                reflector.push(run_reflector(&topo, &client_ns, &frames, slice).context("forwarding through the reflector")?);
            }
        }
    }
    drop(stats);
    Ok(report::report(seconds, frames[0].len(), &lb, &reflector))
}


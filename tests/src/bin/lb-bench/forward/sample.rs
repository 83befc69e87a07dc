//! One measured run's counters and the figures the table shows.

use serde_json::{json, Value};

use super::{GENERATOR_CPU, LB_CPU};

/// Counters read before and after a measurement.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Snapshot {
    /// veth rx queue counters of the LB's eth0, summed over queues.
    pub(super) xdp_tx: u64,
    pub(super) xdp_tx_errors: u64,
    /// Kernel BPF stats of the attached program.
    pub(super) prog_runs: u64,
    pub(super) prog_ns: u64,
    /// CPU time and voluntary context switches (sleeps: it ran out of
    /// frames) of the LB's eth0 NAPI thread.
    pub(super) napi_ns: u64,
    pub(super) napi_sleeps: u64,
    /// The balancer's own `forwarded` and all-reasons packet counts (LB run only).
    pub(super) lb_forwarded: u64,
    pub(super) lb_seen: u64,
    /// Frames received by the other hosts' eth0 (the sink must keep this ~0).
    pub(super) leaked: u64,
}

impl std::ops::Sub for Snapshot {
    type Output = Snapshot;
    fn sub(self, a: Snapshot) -> Snapshot {
        Snapshot {
            xdp_tx: self.xdp_tx - a.xdp_tx,
            xdp_tx_errors: self.xdp_tx_errors - a.xdp_tx_errors,
            prog_runs: self.prog_runs - a.prog_runs,
            prog_ns: self.prog_ns - a.prog_ns,
            napi_ns: self.napi_ns - a.napi_ns,
            napi_sleeps: self.napi_sleeps - a.napi_sleeps,
            lb_forwarded: self.lb_forwarded - a.lb_forwarded,
            lb_seen: self.lb_seen - a.lb_seen,
            leaked: self.leaked - a.leaked,
        }
    }
}

/// One measured run of one program.
pub(super) struct Sample {
    /// How long the generator sent.
    pub(super) seconds: f64,
    pub(super) sent: u64,
    pub(super) send_errors: u64,
    /// Counter deltas from before the generator started to after the drain.
    pub(super) d: Snapshot,
    /// NAPI thread time and (busy, total) jiffies of CPU 0 and 1 while the generator sent.
    pub(super) napi_ns_sending: u64,
    pub(super) cpu_sending: [(u64, u64); 2],
}

/// What the table shows, per program: (JSON key, label, is a percentage).
pub(super) const METRICS: [(&str, &str, bool); 9] = [
    ("sent_pps", "sent by the generator, packets/s", false),
    ("reached_pps", "reached the XDP program, packets/s", false),
    ("forwarded_pps", "forwarded (XDP_TX), packets/s", false),
    ("program_ns", "XDP program, ns/packet (kernel BPF stats)", false),
    ("lb_cpu_ns", "LB CPU, ns/packet (its NAPI thread)", false),
    ("lb_cpu_busy", "LB CPU busy", true),
    ("lb_thread_sleeps_per_1000", "LB NAPI thread sleeps per 1000 packets", false),
    ("lb_capacity_pps", "LB CPU capacity at that cost, packets/s", false),
    ("generator_cpu_busy", "generator CPU busy", true),
];

impl Sample {
    pub(super) fn metrics(&self) -> [f64; METRICS.len()] {
        let pps = |n: u64| n as f64 / self.seconds;
        let per_packet = |ns: u64| if self.d.prog_runs == 0 { f64::NAN } else { ns as f64 / self.d.prog_runs as f64 };
        [
            pps(self.sent),
            pps(self.d.prog_runs),
            pps(self.d.xdp_tx),
            per_packet(self.d.prog_ns),
            per_packet(self.d.napi_ns),
            self.napi_ns_sending as f64 / (self.seconds * 1e9),
            per_packet(self.d.napi_sleeps) * 1000.0,
            1e9 / per_packet(self.d.napi_ns),
            busy_share(self.cpu_sending[GENERATOR_CPU]),
        ]
    }

    pub(super) fn to_json(&self) -> Value {
        let mut v = json!({
            "seconds": self.seconds,
            "sent": self.sent, "send_errors": self.send_errors,
            "reached": self.d.prog_runs,
            "forwarded": self.d.xdp_tx, "xdp_tx_errors": self.d.xdp_tx_errors,
            "lb_cpu_ns_total": self.d.napi_ns, "program_ns_total": self.d.prog_ns,
            "cpu1_busy_all": busy_share(self.cpu_sending[LB_CPU]),
        });
        for ((key, _, _), value) in METRICS.iter().zip(self.metrics()) {
            v[*key] = json!(value);
        }
        v
    }
}

/// Busy share of a CPU from (busy, total) jiffies.
pub(super) fn busy_share((busy, total): (u64, u64)) -> f64 {
    if total == 0 { f64::NAN } else { busy as f64 / total as f64 }
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Each metric's median over the rounds.
pub(super) fn medians(samples: &[Sample]) -> [f64; METRICS.len()] {
    let all: Vec<_> = samples.iter().map(Sample::metrics).collect();
    std::array::from_fn(|i| median(all.iter().map(|m| m[i]).collect()))
}

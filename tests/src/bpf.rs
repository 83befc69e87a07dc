//! The real BPF object, loaded from a config whose backends carry static
//! next-hop MACs, with its maps written by the agent's own reconcile (the
//! path every start and reload takes, `lb_agent::dataplane::reconcile::apply`): what the
//! packet fixtures, the fuzzer and the benchmark run packets through with
//! BPF_PROG_TEST_RUN. No interface and no netlink are involved.

use anyhow::{Context as _, Result};
use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use lb_agent::{
    config::{self, Config},
    dataplane::{self, live::LiveMaps, reconcile, LoadOptions, ResolvedBackend},
    plan::{self, Plan},
};

/// How much longer than its input an output may be: an outer IPv6 header,
/// or an ICMP too-big answer to a small packet (headers plus a 128-byte
/// quote), with margin.
pub const OUT_SLACK: usize = 256;

/// What a test sets that a config cannot say without an interface.
#[derive(Clone, Copy, Debug, Default)]
pub struct Overrides {
    /// The interface MTU the balancer checks against (0 = no check).
    pub mtu: u32,
    /// Flow table entries instead of the config's (small tables load faster).
    pub flow_table_size: Option<u32>,
    /// Load with kernel events (aya-log records) on.
    pub kernel_events: bool,
    /// (VIP name, flags) added to a planned VIP's flags before the plan is
    /// written: flags a test needs that its config does not set.
    pub vip_flags: &'static [(&'static str, u32)],
}

/// A loaded object, the config it came from and the plan written into it.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub config: Config,
    pub plan: Plan,
}

/// Parses `text`, loads the object sized and switched by it, verifies
/// `programs`, and writes the plan (backends must all have a `mac`).
pub fn load(text: &str, origin: &str, programs: &[&str], overrides: Overrides) -> Result<Loaded> {
    let config = config::parse(text, origin).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut plan = plan::plan(&config);
    for (name, flags) in overrides.vip_flags {
        let vip = plan.vips.iter_mut().find(|v| v.name == *name).with_context(|| format!("no VIP {name} in {origin}"))?;
        vip.meta.flags |= flags;
    }
    let mut opts = LoadOptions::from_config(&config, overrides.mtu, None, None);
    if let Some(size) = overrides.flow_table_size {
        opts.flow_table_size = size;
    }
    opts.kernel_events = overrides.kernel_events;
    let mut ebpf = dataplane::load_balancer_object(&opts)?;
    for p in programs {
        dataplane::load_program(&mut ebpf, p)?;
    }
    let resolved = plan
        .backends
        .iter()
        .map(|b| {
            let mac = b.mac.with_context(|| format!("backend {} needs a static mac in {origin}", b.address))?;
            Ok((b.id, ResolvedBackend { address: b.address, next_hop_mac: mac }))
        })
        .collect::<Result<_>>()?;
    // The supervisor that reconciling returns is dropped: no checks run here.
    reconcile::apply(&mut LiveMaps::from_object(&ebpf)?, &config, &plan, &resolved, None)?;
    Ok(Loaded { ebpf, config, plan })
}

/// One BPF_PROG_TEST_RUN of `program` on a fresh copy of `input`: the
/// action, the output packet and the kernel-reported duration.
pub fn run(ebpf: &Ebpf, program: &str, input: &[u8]) -> Result<(u32, Vec<u8>, std::time::Duration)> {
    run_from(ebpf, program, input, None)
}

/// [`run`] as if the packet arrived on interface `ingress_ifindex` of the
/// calling thread's network namespace (`None`: its loopback device, the
/// kernel's default). Helpers that look at the netns (socket and FIB
/// lookups) see that namespace.
pub fn run_from(ebpf: &Ebpf, program: &str, input: &[u8], ingress_ifindex: Option<u32>) -> Result<(u32, Vec<u8>, std::time::Duration)> {
    let xdp: &Xdp = ebpf.program(program).with_context(|| format!("no program {program}"))?.try_into()?;
    let mut out = vec![0u8; input.len() + OUT_SLACK];
    // `struct xdp_md`: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    let md: Vec<u8> = ingress_ifindex
        .map(|i| [0, input.len() as u32, 0, i, 0, 0].iter().flat_map(|w| w.to_ne_bytes()).collect())
        .unwrap_or_default();
    let ctx_in = ingress_ifindex.map(|_| md.as_slice());
    let r = xdp.test_run(TestRunOptions { data_in: Some(input), data_out: Some(&mut out), ctx_in, ..TestRunOptions::new() })?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out, r.duration))
}

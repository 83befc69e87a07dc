//! One measured run of each program: the agent's balancer, and the
//! reflector (`xdp_floor_tx`) in its place.

use std::{fs::File, os::fd::AsRawFd, path::{Path, PathBuf}, time::Duration};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use aya::programs::{ProgramInfo, XdpMode};
use lb_common::{programs, Reason};
use lb_tests::{
    agent,
    configs::{TestBackend, TestConfig, TestVip},
    topology::{Topology, CLIENT, IFACE, LB, LB_V4},
};

use super::generator::generate;
use super::host::{cpu_times, ethtool_stats, mac_text, napi_threads, rx_queue_sum, thread_cpu_ns, thread_napi, thread_sleeps};
use super::sample::{Sample, Snapshot};
use super::{DRAIN, LB_CPU, PATIENCE, SINK_MAC, VIP, VIP_PORT, WARMUP};


struct Probe<'a> {
    topo: &'a Topology,
    napi_pid: libc::pid_t,
    /// The attached program's info (its run time and run count).
    program: Box<dyn Fn() -> Result<ProgramInfo> + 'a>,
    /// The balancer's pinned maps (LB run only).
    bpffs: Option<PathBuf>,
}

impl Probe<'_> {
    fn snapshot(&self) -> Result<Snapshot> {
        let eth = ethtool_stats(self.topo, LB, IFACE)?;
        let info = (self.program)()?;
        let (mut lb_forwarded, mut lb_seen) = (0, 0);
        if let Some(dir) = &self.bpffs {
            let c = lb_agent::dataplane::read_pinned_counters(dir)?;
            lb_forwarded = c.reason(Reason::Forwarded).packets;
            lb_seen = c.reasons.iter().map(|r| r.packets).sum();
        }
        Ok(Snapshot {
            xdp_tx: rx_queue_sum(&eth, "xdp_tx"),
            xdp_tx_errors: rx_queue_sum(&eth, "xdp_tx_errors"),
            prog_runs: info.run_count(),
            prog_ns: info.run_time().as_nanos() as u64,
            napi_ns: thread_cpu_ns(self.napi_pid)?,
            napi_sleeps: thread_sleeps(self.napi_pid)?,
            lb_forwarded,
            lb_seen,
            leaked: self.leaked()?,
        })
    }

    fn leaked(&self) -> Result<u64> {
        let mut n = 0;
        for host in [CLIENT.to_string()].into_iter().chain(self.topo.backends().iter().cloned()) {
            let text = self.topo.exec_ok(&host, "cat", &[&format!("/sys/class/net/{IFACE}/statistics/rx_packets")])?;
            n += text.trim().parse::<u64>().with_context(|| format!("rx_packets of {host}: {text:?}"))?;
        }
        Ok(n)
    }

    /// Warm-up, then the measured run.
    fn measure(&self, client_ns: &str, frames: &[Vec<u8>], seconds: Duration) -> Result<Sample> {
        generate(client_ns, frames, WARMUP)?;
        std::thread::sleep(DRAIN);
        let before = self.snapshot()?;
        let (napi0, cpu0) = (thread_cpu_ns(self.napi_pid)?, cpu_times()?);
        let (sent, send_errors, elapsed) = generate(client_ns, frames, seconds)?;
        let (napi1, cpu1) = (thread_cpu_ns(self.napi_pid)?, cpu_times()?);
        // Frames still queued are processed, then counted.
        std::thread::sleep(DRAIN);
        let d = self.snapshot()? - before;
        ensure!(
            d.leaked <= sent / 100 + 100,
            "{} frames reached the client's or a backend's eth0 during the run ({sent} sent): the sink does not hold",
            d.leaked
        );
        let cpu = |i: usize| (cpu1[i].0 - cpu0[i].0, cpu1[i].1 - cpu0[i].1);
        Ok(Sample {
            seconds: elapsed.as_secs_f64(),
            sent,
            send_errors,
            d,
            napi_ns_sending: napi1 - napi0,
            cpu_sending: [cpu(0), cpu(1)],
        })
    }
}


fn config_text(bpffs: &str, run_dir: &str) -> String {
    let lb = TestConfig::new().interface(IFACE).tunnel_source_v4(LB_V4).lb("bpffs_dir", bpffs).lb("run_dir", run_dir);
    let lb = lb.lb("metrics_listen", "off").max_vips(4).max_backends(16);
    // Three backends, all behind the sink's MAC: the LB's output goes where
    // the reflector's goes (see the module comment).
    let sink = mac_text(SINK_MAC);
    let vip = (11..=13).fold(TestVip::new("bench-udp", &format!("{VIP}:{VIP_PORT}/udp")), |vip, b| {
        vip.backend(TestBackend::new(format!("198.51.100.{b}")).mac(&sink))
    });
    lb.vip(vip).to_toml()
}

pub(super) fn run_lb(topo: &Topology, client_ns: &str, frames: &[Vec<u8>], seconds: Duration) -> Result<Sample> {
    let bpffs = topo.bpffs_dir().join("forward");
    let run_dir = topo.log_dir().join("run-forward");
    std::fs::create_dir_all(&run_dir)?;
    let config_path = topo.log_dir().join("forward.toml");
    std::fs::write(&config_path, config_text(&bpffs.to_string_lossy(), &run_dir.to_string_lossy()))?;
    let before = napi_threads(IFACE);
    let bin = agent::agent_bin()?;
    let agent = topo.spawn(LB, &bin.to_string_lossy(), &["run", "--config", &config_path.to_string_lossy(), "--unload-on-exit"])?;
    agent.wait_for_line("ready:", PATIENCE)?;
    let napi_pid = thread_napi(topo, LB, IFACE, &before, LB_CPU)?;
    let pin = bpffs.join(lb_agent::pins::PROGRAM_PIN);
    let probe = Probe {
        topo,
        napi_pid,
        program: Box::new(move || ProgramInfo::from_pin(&pin).context("the pinned balancer program")),
        bpffs: Some(bpffs),
    };
    let sample = probe.measure(client_ns, frames, seconds);
    let stopped = agent.stop();
    let sample = sample?;
    stopped?;
    // It forwarded the load (a few other frames, such as IPv6 neighbour
    // discovery of the other hosts, pass).
    ensure!(
        sample.d.lb_seen == sample.d.prog_runs && sample.d.lb_forwarded + few(sample.d.lb_seen) >= sample.d.lb_seen,
        "the balancer forwarded {} of the {} packets it counted ({} program runs): the load is not all forwarded",
        sample.d.lb_forwarded,
        sample.d.lb_seen,
        sample.d.prog_runs
    );
    Ok(sample)
}

pub(super) fn run_reflector(topo: &Topology, client_ns: &str, frames: &[Vec<u8>], seconds: Duration) -> Result<Sample> {
    let before = napi_threads(IFACE);
    let ns_path = Path::new("/run/netns").join(topo.ns_name(LB));
    // The attach happens in the LB namespace; the loaded object (which keeps
    // the program attached) comes back to this thread.
    let ebpf = std::thread::spawn(move || -> Result<aya::Ebpf> {
        let nsf = File::open(&ns_path).with_context(|| format!("cannot open {}", ns_path.display()))?;
        // SAFETY: setns on a namespace descriptor, for this thread only.
        if unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns({}): {}", ns_path.display(), std::io::Error::last_os_error());
        }
        let mut ebpf = lb_agent::dataplane::load_minimal_object()?;
        let program = lb_agent::dataplane::load_program(&mut ebpf, programs::FLOOR_TX)?;
        program.attach(IFACE, XdpMode::Driver).context("attaching the reflector to the LB's eth0")?;
        Ok(ebpf)
    })
    .join()
    .map_err(|_| anyhow!("the attach thread panicked"))??;
    let napi_pid = thread_napi(topo, LB, IFACE, &before, LB_CPU)?;
    let probe = Probe {
        topo,
        napi_pid,
        program: Box::new(|| {
            let p: &aya::programs::Xdp = ebpf.program(programs::FLOOR_TX).context("reflector")?.try_into()?;
            Ok(p.info()?)
        }),
        bpffs: None,
    };
    let sample = probe.measure(client_ns, frames, seconds)?;
    drop(probe);
    drop(ebpf); // detaches
    ensure!(
        sample.d.xdp_tx + sample.d.xdp_tx_errors + few(sample.d.prog_runs) >= sample.d.prog_runs,
        "the reflector sent {} of the {} packets it saw",
        sample.d.xdp_tx + sample.d.xdp_tx_errors,
        sample.d.prog_runs
    );
    Ok(sample)
}

/// How many frames of `n` may be other than the load (they pass).
fn few(n: u64) -> u64 {
    10 + n / 10_000
}

//! lb-agent: loads the XDP balancer, fills its maps from the config, and
//! reports its counters. See `lb-agent --help`.

use std::{collections::HashMap, io::Write as _, net::IpAddr, path::PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use lb_agent::{
    config::{self, Config, MacAddr, Protocol, XdpMode},
    dataplane::{self, LoadOptions, ResolvedBackend},
    health, nexthop, plan, stats, summary,
};
use lb_common::{programs, DecapReason, Reason};

#[derive(Parser)]
#[command(version, about = "Maglev XDP layer-4 load balancer agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the balancer to the configured interface and forward until SIGINT/SIGTERM.
    Run {
        #[arg(long, short, default_value = "/etc/lb/lb.toml")]
        config: PathBuf,
    },
    /// Validate a config and print what it would program (touches nothing in the kernel).
    Check {
        #[arg(long, short, default_value = "/etc/lb/lb.toml")]
        config: PathBuf,
    },
    /// Attach the decapsulator on a backend host until SIGINT/SIGTERM.
    Decap {
        #[arg(long)]
        iface: String,
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: XdpModeArg,
    },
    /// Print the counters of the agent running with this config.
    Stats {
        #[arg(long, short, default_value = "/etc/lb/lb.toml")]
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print the backend the data path picks for one flow (computed from the config, like the kernel does).
    Lookup {
        #[arg(long, short, default_value = "/etc/lb/lb.toml")]
        config: PathBuf,
        #[arg(long)]
        vip: IpAddr,
        #[arg(long)]
        port: u16,
        #[arg(long, value_enum, default_value = "tcp")]
        protocol: ProtocolArg,
        #[arg(long)]
        src: IpAddr,
        #[arg(long)]
        src_port: u16,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum XdpModeArg {
    Auto,
    Native,
    Generic,
}

impl From<XdpModeArg> for XdpMode {
    fn from(m: XdpModeArg) -> Self {
        match m {
            XdpModeArg::Auto => XdpMode::Auto,
            XdpModeArg::Native => XdpMode::Native,
            XdpModeArg::Generic => XdpMode::Generic,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProtocolArg {
    Tcp,
    Udp,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(e) = real_main(Cli::parse()) {
        eprintln!("lb-agent: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Check { config } => {
            let config = load_config(&config)?;
            print!("{}", summary::render(&config, &plan::plan(&config)));
            Ok(())
        }
        Command::Lookup { config, vip, port, protocol, src, src_port } => {
            let config = load_config(&config)?;
            let plan = plan::plan(&config);
            let proto = match protocol {
                ProtocolArg::Tcp => Protocol::Tcp,
                ProtocolArg::Udp => Protocol::Udp,
            };
            let planned = plan::find_vip(&plan, vip, port, proto.number())
                .with_context(|| format!("no VIP {vip} port {port} in the config"))?;
            let id = plan::lookup(&plan, planned, src, src_port, port);
            let backend = plan.backends.iter().find(|b| b.id == id).context("the VIP's ring is empty")?;
            println!("{}", backend.address);
            Ok(())
        }
        Command::Stats { config, json } => {
            let config = load_config(&config)?;
            let plan = plan::plan(&config);
            let counters = dataplane::read_pinned_counters(&config.lb.bpffs_dir)?;
            let health = health::report::read_pinned(&config.lb.bpffs_dir)?;
            if json {
                let mut out = stats::to_json(&plan, &counters);
                health::report::add_to_json(&mut out, &config, &plan, &health);
                println!("{out}");
            } else {
                print!("{}", stats::to_text(&plan, &counters));
                print!("{}", health::report::to_text(&config, &plan, &health));
            }
            Ok(())
        }
        Command::Run { config } => runtime()?.block_on(run(load_config(&config)?)),
        Command::Decap { iface, xdp_mode } => runtime()?.block_on(decap(iface, xdp_mode.into())),
    }
}

fn load_config(path: &std::path::Path) -> Result<Config> {
    // ConfigError prints one line per problem, each naming file, field and value.
    config::load(path).map_err(|e| anyhow::anyhow!("invalid config:\n{e}"))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

async fn run(config: Config) -> Result<()> {
    let plan = plan::plan(&config);
    let handle = nexthop::connect()?;
    let iface = nexthop::interface(&handle, &config.lb.interface)
        .await
        .with_context(|| format!("lb.interface = {:?}", config.lb.interface))?;

    let opts = LoadOptions {
        ring_size: config.lb.ring_size,
        hash_seed: config.lb.hash_seed,
        max_vips: config.lb.max_vips,
        max_backends: config.lb.max_backends,
        tunnel_source_v4: config.lb.tunnel_source_v4.or_else(|| iface.ipv4.first().copied()),
        tunnel_source_v6: config.lb.tunnel_source_v6.or_else(|| iface.ipv6.first().copied()),
        packets: dataplane::PacketOptions {
            mtu: lb_agent::packet_policy::interface_mtu(&iface.name)?,
            policy: config.lb.packets.bits(),
        },
    };
    let resolved = resolve_backends(&handle, &iface, &config, &plan, &opts).await?;

    let health_pairs: usize = config.vips.iter().map(|v| v.backends.len()).sum();
    let mut ebpf = dataplane::load_balancer_object_with_health(&opts, u32::try_from(health_pairs)?)?;
    dataplane::load_program(&mut ebpf, programs::BALANCER)?;
    dataplane::write_plan(&mut ebpf, &plan, &resolved)?;
    dataplane::pin_maps(&ebpf, &config.lb.bpffs_dir)?;
    // Before attaching: backends configured to start down are out of the rings.
    let supervisor = match start_health(&mut ebpf, &config, &plan) {
        Ok(s) => s,
        Err(e) => {
            dataplane::unpin_maps(&config.lb.bpffs_dir);
            return Err(e);
        }
    };
    let program = ebpf_program(&mut ebpf, programs::BALANCER)?;
    let (link, mode) = match dataplane::attach(program, &iface.name, config.lb.xdp_mode) {
        Ok(attached) => attached,
        Err(e) => {
            dataplane::unpin_maps(&config.lb.bpffs_dir);
            return Err(e);
        }
    };
    log::info!(
        "balancing {} VIP(s) over {} backend(s) on {} ({mode} XDP, ring size {}, maps pinned in {})",
        plan.vips.len(),
        plan.backends.len(),
        iface.name,
        plan.ring_size,
        config.lb.bpffs_dir.display()
    );
    let dsr_pairs = dsr_check_pairs(&config, &plan);
    let dsr_routing = match health::dsr::install(&handle, &iface, &dsr_pairs, &mut ebpf).await {
        Ok(routing) => routing,
        Err(e) => {
            ebpf_program(&mut ebpf, programs::BALANCER)?.detach(link)?;
            dataplane::unpin_maps(&config.lb.bpffs_dir);
            return Err(e);
        }
    };
    let checkers = health::supervisor::spawn(&config, supervisor);
    ready(&format!("attached {} to {} in {mode} mode", programs::BALANCER, iface.name));

    let signal = wait_for_shutdown().await;
    for task in checkers {
        task.abort();
    }
    dsr_routing.remove(&mut ebpf).await;
    log::info!("{signal}: detaching from {}", iface.name);
    let counters = dataplane::read_counters(&ebpf)?;
    log::info!(
        "forwarded {} packets; no VIP {}; dropped without backend {}",
        counters.reason(Reason::Forwarded).packets,
        counters.reason(Reason::NoVip).packets,
        counters.reason(Reason::NoBackend).packets
    );
    ebpf_program(&mut ebpf, programs::BALANCER)?.detach(link)?;
    dataplane::unpin_maps(&config.lb.bpffs_dir);
    Ok(())
}

/// The health supervisor over the live `RINGS` and `HEALTH` maps (taken out
/// of the object: from now on only the supervisor writes them).
fn start_health(
    ebpf: &mut aya::Ebpf,
    config: &Config,
    plan: &plan::Plan,
) -> Result<health::supervisor::Supervisor<health::supervisor::MapWriter>> {
    let mut take = |name: &str| ebpf.take_map(name).with_context(|| format!("map {name} missing from the BPF object"));
    let writer = health::supervisor::MapWriter {
        rings: aya::maps::Array::try_from(take(lb_common::maps::RINGS)?)?,
        health: aya::maps::HashMap::try_from(take(lb_common::maps::HEALTH)?)?,
        ring_size: plan.ring_size,
    };
    health::supervisor::Supervisor::new(config, plan, writer)
}

/// The (backend, VIP) pairs whose checks are DSR-aware.
fn dsr_check_pairs(config: &Config, plan: &plan::Plan) -> Vec<health::dsr::DsrPair> {
    config
        .vips
        .iter()
        .flat_map(|v| v.backends.iter().map(move |b| (v, b)))
        .filter(|(_, b)| b.check.dsr)
        .filter_map(|(v, b)| {
            let backend_id = plan.backend_id(b.address)?;
            Some(health::dsr::DsrPair { backend_id, backend: b.address, vip: v.address })
        })
        .collect()
}

/// Next-hop MACs for every backend: the static `mac` if the config has one,
/// else netlink (all backends resolved concurrently).
async fn resolve_backends(
    handle: &rtnetlink::Handle,
    iface: &nexthop::Interface,
    config: &Config,
    plan: &plan::Plan,
    opts: &LoadOptions,
) -> Result<HashMap<u32, ResolvedBackend>> {
    let static_macs: HashMap<IpAddr, MacAddr> = config
        .vips
        .iter()
        .flat_map(|v| v.backends.iter())
        .filter_map(|b| b.mac.map(|m| (b.address, m)))
        .collect();
    let mut tasks = Vec::new();
    for b in &plan.backends {
        match b.address {
            IpAddr::V4(_) if opts.tunnel_source_v4.is_none() => bail!(
                "backend {} is IPv4 but {} has no IPv4 address and lb.tunnel_source_v4 is not set",
                b.address,
                iface.name
            ),
            IpAddr::V6(_) if opts.tunnel_source_v6.is_none() => bail!(
                "backend {} is IPv6 but {} has no global IPv6 address and lb.tunnel_source_v6 is not set",
                b.address,
                iface.name
            ),
            _ => {}
        }
        let (id, address, fixed) = (b.id, b.address, static_macs.get(&b.address).copied());
        let (handle, iface) = (handle.clone(), iface.clone());
        tasks.push(tokio::spawn(async move {
            let mac = match fixed {
                Some(mac) => mac,
                None => nexthop::resolve(&handle, &iface, address).await?,
            };
            anyhow::Ok((id, ResolvedBackend { address, next_hop_mac: mac }))
        }));
    }
    let mut out = HashMap::new();
    for t in tasks {
        let (id, r) = t.await.context("next-hop task")??;
        log::info!("backend {} via next hop {}", r.address, r.next_hop_mac);
        out.insert(id, r);
    }
    Ok(out)
}

async fn decap(iface: String, mode: XdpMode) -> Result<()> {
    let mut ebpf = dataplane::load_minimal_object()?;
    dataplane::load_program(&mut ebpf, programs::DECAP)?;
    let (link, mode) = dataplane::attach(ebpf_program(&mut ebpf, programs::DECAP)?, &iface, mode)?;
    ready(&format!("attached {} to {iface} in {mode} mode", programs::DECAP));
    let signal = wait_for_shutdown().await;
    let counters = dataplane::read_counters(&ebpf)?;
    log::info!(
        "{signal}: detaching from {iface}; decapsulated {} packets, passed {} others",
        counters.decap_reason(DecapReason::Decapsulated).packets,
        counters.decap_reason(DecapReason::NotTunnel).packets
    );
    ebpf_program(&mut ebpf, programs::DECAP)?.detach(link)?;
    Ok(())
}

fn ebpf_program<'a>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut aya::programs::Xdp> {
    Ok(ebpf.program_mut(name).with_context(|| format!("program {name} missing"))?.try_into()?)
}

/// One line on stdout that supervisors and tests wait for.
fn ready(what: &str) {
    println!("ready: {what}");
    let _ = std::io::stdout().flush();
}

async fn wait_for_shutdown() -> &'static str {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

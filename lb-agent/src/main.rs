//! lb-agent: loads the XDP balancer, fills its maps from the config, and
//! reports its counters. See `lb-agent --help`.

use std::{net::IpAddr, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use lb_agent::{
    config::{Config, Protocol, XdpMode},
    control::{client, exit_code, Request},
    logging::{self, LogFormat},
    lookup_command, plan, runtime, stats_command, summary,
};
#[derive(Parser)]
#[command(version, about = "Maglev XDP layer-4 load balancer agent", after_help = exit_code::help())]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The config file (also accepted after the subcommand).
    #[arg(long, short, global = true, env = "LB_CONFIG", default_value = "/etc/lb/lb.toml")]
    config: PathBuf,
    /// Log lines as text (default) or one JSON object per line (on stderr).
    #[arg(long, value_enum, global = true, default_value = "text")]
    log_format: LogFormat,
    /// Log level or filter (`info`, `debug`, `lb_agent=debug,aya=warn`); overrides RUST_LOG. Default: RUST_LOG, else info.
    #[arg(long, global = true)]
    log_level: Option<String>,
}

/// `--timeout` of the commands that talk to the running agent.
#[derive(clap::Args)]
struct Timeout {
    /// Seconds to wait for the agent to acknowledge the request (a stopped or hung agent fails with exit code 5).
    #[arg(long, default_value = client::DEFAULT_TIMEOUT, value_parser = client::parse_timeout)]
    timeout: std::time::Duration,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the balancer (or adopt the one a previous agent left pinned) and
    /// manage it until SIGINT/SIGTERM; the balancer keeps forwarding after exit.
    /// SIGHUP re-reads the config.
    Run {
        /// Replace a pinned balancer loaded with other ring/map sizes, seed,
        /// tunnel sources or packet policies (its flow table is lost).
        #[arg(long)]
        full_restart: bool,
        /// Detach and remove the pins on exit instead of leaving the balancer running.
        #[arg(long)]
        unload_on_exit: bool,
        /// Debugging: load the balancer with kernel events (aya-log records of
        /// every VIP packet not forwarded and every flow placed or moved),
        /// logged with target lb_agent::kernel. Costs per-packet work while on;
        /// off, the verifier removes them. Changing it on a pinned balancer
        /// needs --full-restart.
        #[arg(long)]
        kernel_events: bool,
        /// For hosts without systemd: start a guard process that withdraws the
        /// VIP routes ([announce]) if the agent dies, and kills it and withdraws
        /// if it hangs for announce.liveness (systemd's watchdog and the unit's
        /// ExecStopPost do this under systemd).
        #[arg(long)]
        liveness_guard: bool,
    },
    /// Internal: the liveness guard that `run --liveness-guard` starts.
    #[command(hide = true)]
    Guard {
        #[arg(long)]
        agent_pid: u32,
    },
    /// Make the running agent re-read its config and apply the difference in
    /// place; exits non-zero with the errors if the config is refused. The
    /// agent acknowledges at once (within --timeout), then has 30 s to
    /// finish the reload. The answer names every change applied.
    #[command(after_help = exit_code::help())]
    Reload {
        #[command(flatten)]
        timeout: Timeout,
        /// Only say what the reload would change (settings, VIPs, backends,
        /// weights, roles, health checks, slots moved per VIP) and which
        /// changes it would refuse (exit code 6); nothing is applied.
        #[arg(long)]
        dry_run: bool,
    },
    /// Take this LB host out of service: the running agent withdraws its VIP
    /// routes (`[announce]`), waits until no VIP packet arrives for
    /// `announce.drain_quiet` (at most `announce.drain_timeout`), then stops.
    /// The agent acknowledges at once (within --timeout), then has the drain
    /// timeout and 10 s to answer and exit.
    #[command(after_help = exit_code::help())]
    Maintenance {
        #[command(flatten)]
        timeout: Timeout,
    },
    /// Drain one backend of one VIP at runtime (weight 0: no new flows, the
    /// flow table keeps established ones) without editing the config. Kept
    /// across reloads and restarts until `undrain`, or until the config file
    /// changes that backend's weight or role or removes it (the file wins).
    #[command(after_help = exit_code::help())]
    Drain {
        #[command(flatten)]
        target: DrainTarget,
        #[command(flatten)]
        timeout: Timeout,
    },
    /// Undo a runtime drain: the backend gets its weight from the config file again.
    #[command(after_help = exit_code::help())]
    Undrain {
        #[command(flatten)]
        target: DrainTarget,
        #[command(flatten)]
        timeout: Timeout,
    },
    /// Detach the balancer and remove its pins (no agent may be running for the interface).
    Detach,
    /// Withdraw the VIP routes (`[announce]`) that no agent health-checks any
    /// more: after a crash, kill -9, a watchdog kill or a failed start (the
    /// systemd unit runs it as ExecStopPost). Refused while an agent runs for
    /// the interface. Reads only the [announce] table of a config that does
    /// not validate. The balancer itself is left as it is (`detach` removes it).
    Withdraw {
        /// systemd's $SERVICE_RESULT: `success` (a clean stop, which leaves
        /// the routes to the next agent) withdraws nothing; any other value,
        /// or none, withdraws.
        #[arg(long, value_name = "RESULT")]
        service_result: Option<String>,
    },
    /// Validate a config and print what it would program (touches nothing in
    /// the kernel): VIPs, backends with their roles, ring shares, health-check
    /// settings, ring digests and the config fingerprint.
    Check {
        /// One JSON document.
        #[arg(long)]
        json: bool,
    },
    /// The running balancer's VIPs and backends, as `ipvsadm -Ln`: weights,
    /// roles, drains, health, ring shares in the kernel now, flow-state mode,
    /// ring digests, previous-owner slots (from the pinned maps: works
    /// without the agent running).
    List {
        /// One JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Attach the decapsulator on a backend host until SIGINT/SIGTERM.
    Decap {
        #[arg(long)]
        iface: String,
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: XdpModeArg,
        /// UDP port of GUE tunnels: the LB hosts' lb.gue_port.
        #[arg(long, default_value_t = lb_common::second_chance::DEFAULT_GUE_PORT)]
        gue_port: u16,
        /// Serve the decap counters in the Prometheus format at ADDRESS:PORT/metrics.
        #[arg(long, value_name = "ADDRESS:PORT")]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Print the counters of the agent running with this config.
    Stats {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Seconds between the two reads that give packets/s and bytes/s; 0 = counters only.
        #[arg(long, default_value = stats_command::DEFAULT_INTERVAL, value_parser = stats_command::parse_interval)]
        interval: std::time::Duration,
        /// Refresh every interval until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// The cluster's shared config document in etcd and the state its hosts
    /// publish (needs a `[source]` table in the local config).
    #[command(after_help = exit_code::help())]
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Print the backend the data path picks for one flow (computed from the
    /// config, like the kernel does); `--batch` for many flows, `--ring` for
    /// a VIP's whole ring.
    Lookup {
        #[arg(long, required_unless_present_any = ["batch", "ring"])]
        vip: Option<IpAddr>,
        #[arg(long, required_unless_present_any = ["batch", "ring"])]
        port: Option<u16>,
        #[arg(long, value_enum, default_value = "tcp")]
        protocol: ProtocolArg,
        #[arg(long, required_unless_present_any = ["batch", "ring"])]
        src: Option<IpAddr>,
        #[arg(long, required_unless_present_any = ["batch", "ring"])]
        src_port: Option<u16>,
        /// Many flows: one `VIP PORT PROTOCOL SRC SRC_PORT` (or a JSON
        /// object as `--json` prints) per line of FILE (`-`: stdin); one
        /// JSON line out per flow. Exit code 1 if any line failed.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["vip", "port", "src", "src_port", "ring"])]
        batch: Option<PathBuf>,
        /// Print the whole ring of this VIP (name, or an address one VIP has), one `SLOT BACKEND` line per slot.
        #[arg(long, value_name = "VIP", conflicts_with_all = ["vip", "port", "src", "src_port"])]
        ring: Option<String>,
        /// One JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Shell completions or man pages from this CLI's definition (for packaging).
    #[command(hide = true, subcommand)]
    Generate(lb_agent::cli_docs::Generate),
}

/// Which backend of which VIP `drain` and `undrain` act on.
#[derive(clap::Args)]
struct DrainTarget {
    /// The VIP's name, or an address only one VIP has.
    #[arg(long)]
    vip: String,
    #[arg(long)]
    backend: IpAddr,
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Every host: the revision it runs, its fingerprint, health and
    /// announcements; which VIP differs where fingerprints do. Exits 0 only
    /// when every host runs the latest revision with one fingerprint.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Print the document (its revision goes to stderr).
    Get,
    /// Remove a host that left the cluster for good from the members
    /// (`status` reports a member without state as gone).
    Forget { host: String },
    /// Validate FILE with this host's local config, then publish it unless
    /// the document changed since --base-revision (default: the revision
    /// read just before writing). Two operators editing the same revision
    /// cannot overwrite each other: the second is refused (exit code 9).
    Put {
        file: PathBuf,
        /// The revision FILE was edited from (`lb-agent cluster get` prints it).
        #[arg(long)]
        base_revision: Option<i64>,
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
    let cli = Cli::parse();
    if let Err(e) = logging::init(cli.log_format, cli.log_level.as_deref()) {
        eprintln!("lb-agent: {e:#}");
        std::process::exit(exit_code::ExitCode::Usage.code());
    }
    if let Err(e) = real_main(cli) {
        eprintln!("lb-agent: {e:#}");
        std::process::exit(exit_code::of(&e).code());
    }
}

fn real_main(cli: Cli) -> Result<()> {
    let config_path = cli.config;
    match cli.command {
        Command::Check { json } => {
            let config = load_applied(&config_path)?;
            // One ring at a time: check runs before every start (ExecStartPre) and must stay small.
            let plan = plan::plan_summary(&config);
            if json {
                println!("{}", serde_json::to_string(&summary::to_json(&config, &plan))?);
            } else {
                print!("{}", summary::render(&config, &plan));
            }
            Ok(())
        }
        Command::List { json } => {
            let list = lb_agent::list_command::read(&load_applied(&config_path)?)?;
            if json {
                println!("{}", serde_json::to_string(&list)?);
            } else {
                print!("{}", lb_agent::list_command::to_text(&list));
            }
            Ok(())
        }
        Command::Lookup { vip, port, protocol, src, src_port, batch, ring, json } => {
            // As the kernel has it: with the runtime drains (`lb-agent drain`) recorded in lb.run_dir.
            let file = load_applied(&config_path)?;
            let config = lb_agent::control::drains::Drains::read(&file.lb.run_dir, &file.lb.interface)?.apply(&file).config;
            if let Some(vip) = ring {
                print!("{}", lookup_command::ring(&config, &vip, json)?);
                return Ok(());
            }
            if let Some(path) = batch {
                let failed = if path.as_os_str() == "-" {
                    lookup_command::batch(&config, std::io::stdin().lock(), std::io::stdout().lock())?
                } else {
                    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                    lookup_command::batch(&config, std::io::BufReader::new(file), std::io::stdout().lock())?
                };
                if failed > 0 {
                    anyhow::bail!("{failed} flow(s) had no answer (see their \"error\")");
                }
                return Ok(());
            }
            let protocol = match protocol {
                ProtocolArg::Tcp => Protocol::Tcp,
                ProtocolArg::Udp => Protocol::Udp,
            };
            let required = "clap requires it without --batch and --ring";
            let flow = lookup_command::Flow {
                vip: vip.expect(required),
                port: port.expect(required),
                protocol,
                src: src.expect(required),
                src_port: src_port.expect(required),
            };
            print!("{}", lookup_command::run(&config, &flow, json)?);
            Ok(())
        }
        Command::Stats { json, interval, watch } => {
            stats_command::run(&load_applied(&config_path)?, &stats_command::StatsOptions { json, interval, watch })
        }
        Command::Run { full_restart, unload_on_exit, kernel_events, liveness_guard } => {
            let options = runtime::RunOptions { config_path, full_restart, unload_on_exit, kernel_events, liveness_guard };
            runtime()?.block_on(runtime::run(options))
        }
        Command::Reload { timeout, dry_run } => {
            // Validated here first: the errors then come with this file's name.
            let config = load_config(&config_path)?;
            let limits = client::Limits { acknowledge: timeout.timeout, result: client::RELOAD_RESULT_TIMEOUT };
            let summary = client::request(&config.lb.run_dir, &config.lb.interface, &Request::Reload { dry_run }, limits)?;
            println!("ok {summary}");
            Ok(())
        }
        Command::Drain { target: DrainTarget { vip, backend }, timeout } => ask(&config_path, Request::Drain { vip, backend }, timeout),
        Command::Undrain { target: DrainTarget { vip, backend }, timeout } => ask(&config_path, Request::Undrain { vip, backend }, timeout),
        Command::Maintenance { timeout } => {
            let config = load_config(&config_path)?;
            println!("ok {}", lb_agent::announce::maintenance::request(&config, timeout.timeout)?);
            Ok(())
        }
        Command::Detach => {
            let config = load_config(&config_path)?;
            if runtime::detach(&config)? {
                println!("detached from {} and removed the pins in {}", config.lb.interface, config.lb.bpffs_dir.display());
            } else {
                println!("nothing attached; removed any pins left in {}", config.lb.bpffs_dir.display());
            }
            Ok(())
        }
        Command::Cluster { action } => {
            let local = load_config(&config_path)?;
            match action {
                ClusterAction::Status { json } => lb_agent::cluster_command::status(&local, json),
                ClusterAction::Get => lb_agent::cluster_command::get(&local),
                ClusterAction::Forget { host } => lb_agent::cluster_command::forget(&local, &host),
                ClusterAction::Put { file, base_revision } => lb_agent::cluster_command::put(&config_path, &local, &file, base_revision),
            }
        }
        Command::Guard { agent_pid } => {
            println!("{}", lb_agent::announce::guard::run(agent_pid)?);
            Ok(())
        }
        Command::Withdraw { service_result } => {
            println!("{}", lb_agent::announce::withdraw::run(&config_path, service_result.as_deref())?);
            Ok(())
        }
        Command::Decap { iface, xdp_mode, gue_port, metrics } => {
            let opts = lb_agent::decap_command::DecapOptions { iface, xdp_mode: xdp_mode.into(), gue_port, metrics };
            print!("{}", runtime()?.block_on(lb_agent::decap_command::run(opts, wait_for_shutdown()))?);
            Ok(())
        }
        Command::Generate(what) => {
            lb_agent::cli_docs::generate(<Cli as clap::CommandFactory>::command(), &what, &mut std::io::stdout().lock())
        }
    }
}

/// A request the running agent answers at once (drain, undrain).
fn ask(config_path: &std::path::Path, request: Request, timeout: Timeout) -> Result<()> {
    let config = load_config(config_path)?;
    let limits = client::Limits { acknowledge: timeout.timeout, result: client::RELOAD_RESULT_TIMEOUT };
    println!("ok {}", client::request(&config.lb.run_dir, &config.lb.interface, &request, limits)?);
    Ok(())
}

fn load_config(path: &std::path::Path) -> Result<Config> {
    // ConfigError prints one line per problem, each naming file, field and value.
    runtime::load_config(path)
}

/// The config as the running agent has it: with a `[source]`, the local file
/// composed with the last applied cluster document.
fn load_applied(path: &std::path::Path) -> Result<Config> {
    runtime::load_applied(path)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

async fn wait_for_shutdown() -> &'static str {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

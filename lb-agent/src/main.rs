//! lb-agent: loads the XDP balancer, fills its maps from the config, and
//! reports its counters. See `lb-agent --help`.

use std::{net::IpAddr, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use lb_agent::{
    config::{Config, Protocol, XdpMode},
    control::{client, exit_code, Answer, Request},
    logging::{self, LogFormat},
    plan, runtime, stats_command, summary,
};
#[derive(Parser)]
#[command(version, about = "Maglev XDP layer-4 load balancer agent", after_help = exit_code::help())]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text (default) or one JSON object per line (on stderr).
    #[arg(long, value_enum, global = true, default_value = "text")]
    log_format: LogFormat,
    /// Log level or filter (`info`, `debug`, `lb_agent=debug,aya=warn`); overrides RUST_LOG. Default: RUST_LOG, else info.
    #[arg(long, global = true)]
    log_level: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the balancer (or adopt the one a previous agent left pinned) and
    /// manage it until SIGINT/SIGTERM; the balancer keeps forwarding after exit.
    /// SIGHUP re-reads the config.
    Run {
        #[arg(long, short, default_value = "/etc/lb/lb.toml")]
        config: PathBuf,
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
    },
    /// Make the running agent re-read its config and apply the difference in
    /// place; exits non-zero with the errors if the config is refused. The
    /// agent acknowledges at once (within --timeout), then has 30 s to
    /// finish the reload.
    #[command(after_help = exit_code::help())]
    Reload {
        #[arg(long, short, default_value = "/etc/lb/lb.toml")]
        config: PathBuf,
        /// Seconds to wait for the agent to acknowledge the request (a stopped or hung agent fails with exit code 5).
        #[arg(long, default_value = client::DEFAULT_TIMEOUT, value_parser = client::parse_timeout)]
        timeout: std::time::Duration,
    },
    /// Take this LB host out of service: the running agent withdraws its VIP
    /// routes (`[announce]`), waits until no VIP packet arrives for
    /// `announce.drain_quiet` (at most `announce.drain_timeout`), then stops.
    /// The agent acknowledges at once (within --timeout), then has the drain
    /// timeout and 10 s to answer and exit.
    #[command(after_help = exit_code::help())]
    Maintenance {
        #[arg(long, short, default_value = "/etc/lb/lb.toml")]
        config: PathBuf,
        /// Seconds to wait for the agent to acknowledge the request (a stopped or hung agent fails with exit code 5).
        #[arg(long, default_value = client::DEFAULT_TIMEOUT, value_parser = client::parse_timeout)]
        timeout: std::time::Duration,
    },
    /// Detach the balancer and remove its pins (no agent may be running for the interface).
    Detach {
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
        /// UDP port of GUE tunnels: the LB hosts' lb.gue_port.
        #[arg(long, default_value_t = lb_common::second_chance::DEFAULT_GUE_PORT)]
        gue_port: u16,
        /// Serve the decap counters in the Prometheus format at ADDRESS:PORT/metrics.
        #[arg(long, value_name = "ADDRESS:PORT")]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Print the counters of the agent running with this config.
    Stats {
        #[arg(long, short, default_value = "/etc/lb/lb.toml")]
        config: PathBuf,
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
    /// Shell completions or man pages from this CLI's definition (for packaging).
    #[command(hide = true, subcommand)]
    Generate(lb_agent::cli_docs::Generate),
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
    match cli.command {
        Command::Check { config } => {
            let config = load_config(&config)?;
            // One ring at a time: check runs before every start (ExecStartPre) and must stay small.
            print!("{}", summary::render(&config, &plan::plan_summary(&config)));
            Ok(())
        }
        Command::Lookup { config, vip, port, protocol, src, src_port } => {
            let protocol = match protocol {
                ProtocolArg::Tcp => Protocol::Tcp,
                ProtocolArg::Udp => Protocol::Udp,
            };
            let flow = lb_agent::lookup_command::Flow { vip, port, protocol, src, src_port };
            print!("{}", lb_agent::lookup_command::run(&load_config(&config)?, &flow)?);
            Ok(())
        }
        Command::Stats { config, json, interval, watch } => {
            stats_command::run(&load_config(&config)?, &stats_command::StatsOptions { json, interval, watch })
        }
        Command::Run { config, full_restart, unload_on_exit, kernel_events } => {
            let options = runtime::RunOptions { config_path: config, full_restart, unload_on_exit, kernel_events };
            runtime()?.block_on(runtime::run(options))
        }
        Command::Reload { config, timeout } => {
            // Validated here first: the errors then come with this file's name.
            let config = load_config(&config)?;
            let limits = client::Limits { acknowledge: timeout, result: client::RELOAD_RESULT_TIMEOUT };
            let summary = client::request(&config.lb.run_dir, &config.lb.interface, Request::Reload, limits)?;
            print!("{}", Answer::Ok(summary).encode());
            Ok(())
        }
        Command::Maintenance { config, timeout } => {
            let config = load_config(&config)?;
            print!("{}", Answer::Ok(lb_agent::announce::maintenance::request(&config, timeout)?).encode());
            Ok(())
        }
        Command::Detach { config } => {
            let config = load_config(&config)?;
            if runtime::detach(&config)? {
                println!("detached from {} and removed the pins in {}", config.lb.interface, config.lb.bpffs_dir.display());
            } else {
                println!("nothing attached; removed any pins left in {}", config.lb.bpffs_dir.display());
            }
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

fn load_config(path: &std::path::Path) -> Result<Config> {
    // ConfigError prints one line per problem, each naming file, field and value.
    runtime::load_config(path)
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

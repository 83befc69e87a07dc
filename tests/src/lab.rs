//! A [`Topology`] with the whole system running on it: a test server and the
//! decap program on every backend, `lb-agent run` on the LB. Shared by the
//! end-to-end tests and `lb-demo`.

use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::agent::{self, Proto, Stats, VipSpec};
use crate::client::{ClientRecord, parse_records};
use crate::topology::{CLIENT, CLIENT_V4, CLIENT_V6, LB, Proc, Topology, TopologyOptions};

/// How long a program may take to print `ready:`.
pub const SERVER_READY: Duration = Duration::from_secs(10);
pub const AGENT_READY: Duration = Duration::from_secs(30);

/// The [`LabBins`] of the integration test that expands it: cargo sets
/// `CARGO_BIN_EXE_*` only when it compiles an integration test.
#[macro_export]
macro_rules! lab_bins {
    () => {
        $crate::lab::LabBins {
            agent: $crate::agent::agent_bin().unwrap_or_else(|e| panic!("{e:#}")),
            testsrv: std::path::PathBuf::from(env!("CARGO_BIN_EXE_lb-testsrv")),
            testclient: std::path::PathBuf::from(env!("CARGO_BIN_EXE_lb-testclient")),
        }
    };
}

/// The programs a lab runs.
#[derive(Clone, Debug)]
pub struct LabBins {
    pub agent: PathBuf,
    pub testsrv: PathBuf,
    pub testclient: PathBuf,
}

impl LabBins {
    /// The agent from [`agent::agent_bin`], the test programs next to the
    /// running executable (for `lb-demo`, which cargo builds beside them).
    pub fn beside_current_exe() -> Result<LabBins> {
        let exe = std::env::current_exe()?;
        let dir = exe.parent().context("executable without a directory")?;
        let find = |name: &str| -> Result<PathBuf> {
            // Integration tests live one level down, in target/<profile>/deps.
            [dir.join(name), dir.join("..").join(name)]
                .into_iter()
                .find(|p| p.is_file())
                .with_context(|| format!("{name} not found beside {}: build the lb-tests package (`cargo build -p lb-tests`)", exe.display()))
        };
        Ok(LabBins {
            agent: agent::agent_bin()?,
            testsrv: find("lb-testsrv")?,
            testclient: find("lb-testclient")?,
        })
    }
}

/// How a lab runs its programs.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// `lb-agent run --unload-on-exit` (default): stopping the agent detaches
    /// the balancer, as most tests expect. Off: the balancer outlives the
    /// agent, and the test detaches (see [`Lab::detach`]).
    pub unload_on_exit: bool,
    /// Extra `lb-testsrv` arguments on every backend (e.g. `--echo-port 7`).
    pub server_extra: Vec<String>,
    /// Extra `lb-agent run` arguments (e.g. `--kernel-events`).
    pub agent_extra: Vec<String>,
    /// Extra `lb-agent decap` arguments on every backend (e.g. `--gue-port 7000`).
    pub decap_extra: Vec<String>,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self { unload_on_exit: true, server_extra: Vec::new(), agent_extra: Vec::new(), decap_extra: Vec::new() }
    }
}

pub struct Lab {
    pub bins: LabBins,
    pub options: LabOptions,
    pub config: toml::Table,
    pub config_path: PathBuf,
    pub vips: Vec<VipSpec>,
    pub servers: Vec<Proc>,
    pub decaps: Vec<Proc>,
    pub agent: Proc,
    /// Last field: dropped (torn down) after the process handles.
    pub topo: Topology,
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl Lab {
    /// Builds the topology (the config's VIP addresses on every backend's lo),
    /// starts `lb-testsrv` and `lb-agent decap` on every backend, writes the
    /// config with the run's bpffs as `bpffs_dir`, starts `lb-agent run` on
    /// the LB and waits for each `ready:` line. `progress` gets one line per step.
    pub fn start(
        bins: LabBins,
        backends: usize,
        config: toml::Table,
        progress: &dyn Fn(&str),
    ) -> Result<Lab> {
        Self::start_with(bins, TopologyOptions { backends, ..Default::default() }, config, progress)
    }

    /// Like [`Lab::start`] on a topology built with `options` (for instance a
    /// lower `underlay_mtu`); its `backend_vips` are the config's VIP addresses.
    pub fn start_with(
        bins: LabBins,
        options: TopologyOptions,
        config: toml::Table,
        progress: &dyn Fn(&str),
    ) -> Result<Lab> {
        Self::start_with_options(bins, options, config, LabOptions::default(), progress)
    }

    /// [`Lab::start_with`] with [`LabOptions`].
    pub fn start_with_options(
        bins: LabBins,
        topology: TopologyOptions,
        mut config: toml::Table,
        options: LabOptions,
        progress: &dyn Fn(&str),
    ) -> Result<Lab> {
        let vips = agent::vips_of(&config)?;
        let mut backend_vips: Vec<IpAddr> = Vec::new();
        for v in &vips {
            if !backend_vips.contains(&v.address) {
                backend_vips.push(v.address);
            }
        }
        let backends = topology.backends;
        progress(&format!("building topology ({backends} backends)..."));
        let topo = Topology::build(TopologyOptions { backend_vips, ..topology })?;
        progress(&format!(
            "topology {} up; logs in {}",
            topo.run_id(),
            topo.log_dir().display()
        ));
        match Self::start_programs(&bins, &topo, &vips, &mut config, &options, progress) {
            Ok((servers, decaps, agent, config_path)) => Ok(Lab {
                bins,
                options,
                config,
                config_path,
                vips,
                servers,
                decaps,
                agent,
                topo,
            }),
            Err(e) => {
                // The error quotes log paths: keep them.
                topo.keep_logs();
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn start_programs(
        bins: &LabBins,
        topo: &Topology,
        vips: &[VipSpec],
        config: &mut toml::Table,
        options: &LabOptions,
        progress: &dyn Fn(&str),
    ) -> Result<(Vec<Proc>, Vec<Proc>, Proc, PathBuf)> {
        let mut srv_args = server_args(vips);
        srv_args.extend(options.server_extra.iter().cloned());

        progress("starting test servers and decap on the backends...");
        let mut servers = Vec::new();
        let mut decaps = Vec::new();
        for b in topo.backends().to_vec() {
            let mut args = vec!["--name".to_string(), b.clone()];
            args.extend(srv_args.iter().cloned());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let srv = topo.spawn(&b, &s(&bins.testsrv), &args)?;
            srv.wait_for_line("ready:", SERVER_READY)?;
            servers.push(srv);
            let mut decap_args = vec!["decap", "--iface", crate::topology::IFACE];
            decap_args.extend(options.decap_extra.iter().map(String::as_str));
            let decap = topo.spawn(&b, &s(&bins.agent), &decap_args)?;
            decap
                .wait_for_line("ready:", AGENT_READY)
                .context("lb-agent decap did not get ready")?;
            decaps.push(decap);
        }

        agent::set_bpffs_dir(config, topo.bpffs_dir())?;
        agent::set_run_dir(config, &topo.agent_run_dir())?;
        let config_path = topo.log_dir().join("lb-agent.toml");
        std::fs::write(&config_path, toml::to_string(&*config)?)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        progress(&format!(
            "starting lb-agent run --config {}...",
            config_path.display()
        ));
        let agent = spawn_agent(bins, topo, &config_path, options)?;
        progress("load balancer ready");
        Ok((servers, decaps, agent, config_path))
    }

    /// Kills the agent with SIGKILL (a crash: no cleanup of any kind).
    pub fn kill_agent(&self) -> Result<()> {
        self.agent.kill().map(|_| ())
    }

    /// Starts `lb-agent run` again with the lab's config and waits for its
    /// `ready:` line, which it returns.
    pub fn restart_agent(&mut self) -> Result<String> {
        if self.agent.try_status().is_none() {
            bail!("the agent (pid {}) is still running", self.agent.pid());
        }
        self.agent = spawn_agent(&self.bins, &self.topo, &self.config_path, &self.options)?;
        self.agent.wait_for_line("ready:", AGENT_READY)
    }

    /// Writes `config` (bpffs_dir and run_dir set to the lab's) over the
    /// agent's config file and runs `lb-agent reload`; returns its output
    /// whether it succeeded or not. The lab's VIP list follows the config
    /// only if the reload succeeded.
    pub fn reload(&mut self, mut config: toml::Table) -> Result<std::process::Output> {
        agent::set_bpffs_dir(&mut config, self.topo.bpffs_dir())?;
        agent::set_run_dir(&mut config, &self.topo.agent_run_dir())?;
        self.write_config_text(&toml::to_string(&config)?)?;
        let out = self.agent_command(&["reload", "--config", &s(&self.config_path)])?;
        if out.status.success() {
            self.vips = agent::vips_of(&config)?;
            self.config = config;
        }
        Ok(out)
    }

    /// Overwrites the agent's config file with `text` (which may be invalid).
    pub fn write_config_text(&self, text: &str) -> Result<()> {
        std::fs::write(&self.config_path, text).with_context(|| format!("cannot write {}", self.config_path.display()))
    }

    /// `lb-agent ARGS` in the LB namespace, bounded in time.
    pub fn agent_command(&self, args: &[&str]) -> Result<std::process::Output> {
        self.topo.exec_timeout(LB, &s(&self.bins.agent), args, AGENT_READY)
    }

    /// Stops the agent (SIGTERM) if it runs, then `lb-agent detach`: nothing
    /// of the balancer is left attached or pinned.
    pub fn detach(&self) -> Result<()> {
        if self.agent.try_status().is_none() {
            self.agent.stop()?;
        }
        let out = self.agent_command(&["detach", "--config", &s(&self.config_path)])?;
        if !out.status.success() {
            bail!("lb-agent detach failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Starts `lb-testclient` in long-lived mode in the client namespace:
    /// `connections` connections to `target` from `src_port_base` on, each
    /// sending a message every `interval_ms` for `hold_ms`. Returns once
    /// every connection is open.
    pub fn hold_client(&self, target: SocketAddr, connections: u32, src_port_base: u16, hold_ms: u64, interval_ms: u64) -> Result<Proc> {
        let hold = HoldClient { target, connections, src_port_base, hold_ms, interval_ms, timeout_ms: HOLD_TIMEOUT_MS };
        spawn_hold_client(&self.topo, &self.bins.testclient, &hold)
    }

    /// Stops the test server of backend `index` (0 = `b1`); the host, its
    /// decap program and the LB keep running.
    pub fn stop_server(&mut self, index: usize) -> Result<()> {
        let srv = &self.servers[index];
        srv.stop().with_context(|| format!("stopping {}", srv.label()))?;
        Ok(())
    }

    /// Starts the test server of backend `index` again (after
    /// [`Lab::stop_server`]), with `extra` arguments such as `--hang`.
    pub fn start_server(&mut self, index: usize, extra: &[&str]) -> Result<()> {
        let host = self.topo.backends()[index].clone();
        let mut args = vec!["--name".to_string(), host.clone()];
        args.extend(server_args(&self.vips));
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let srv = self.topo.spawn(&host, &s(&self.bins.testsrv), &args)?;
        srv.wait_for_line("ready:", SERVER_READY)?;
        self.servers[index] = srv;
        Ok(())
    }

    /// The VIP of the config with this address, port and protocol.
    pub fn vip(&self, address: IpAddr, port: u16, protocol: Proto) -> Result<&VipSpec> {
        self.vips
            .iter()
            .find(|v| v.address == address && v.test_port() == port && v.protocol == protocol)
            .with_context(|| {
                format!(
                    "no VIP {address} port {port} {protocol} in {}",
                    self.config_path.display()
                )
            })
    }

    /// Runs `lb-testclient` in the client namespace: `count` requests to
    /// `target`, request i from source port `src_port_base + i` if given.
    pub fn client(
        &self,
        protocol: Proto,
        target: SocketAddr,
        count: u32,
        src_port_base: Option<u16>,
        timeout_ms: u64,
    ) -> Result<Vec<ClientRecord>> {
        run_client(
            &self.topo,
            &self.bins.testclient,
            protocol,
            target,
            count,
            src_port_base,
            timeout_ms,
        )
    }

    /// `lb-agent lookup`: the backend address the data path picks for this flow.
    pub fn lookup(
        &self,
        vip: IpAddr,
        port: u16,
        protocol: Proto,
        src: IpAddr,
        src_port: u16,
    ) -> Result<IpAddr> {
        let mut cmd = std::process::Command::new(&self.bins.agent);
        cmd.arg("lookup")
            .arg("--config")
            .arg(&self.config_path)
            .args([
                "--vip",
                &vip.to_string(),
                "--port",
                &port.to_string(),
                "--protocol",
                protocol.as_str(),
            ])
            .args([
                "--src",
                &src.to_string(),
                "--src-port",
                &src_port.to_string(),
            ]);
        let desc = format!("{cmd:?}");
        let out = crate::topology::run_with_timeout(cmd, Duration::from_secs(30))?;
        if !out.status.success() {
            bail!(
                "{desc} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        agent::parse_lookup(&String::from_utf8_lossy(&out.stdout)).with_context(|| desc)
    }

    /// The backend host name (`b1`, ...) `lookup` predicts for this flow.
    pub fn predicted_backend(
        &self,
        vip: IpAddr,
        port: u16,
        protocol: Proto,
        src: SocketAddr,
    ) -> Result<String> {
        let addr = self.lookup(vip, port, protocol, src.ip().to_canonical(), src.port())?;
        self.topo
            .host_by_addr(addr)
            .map(str::to_string)
            .with_context(|| format!("lookup answered {addr}, which is no host of the topology"))
    }

    /// `lb-agent stats --config FILE --interval 0 [--json]` run in the LB namespace.
    pub fn stats_output(&self, json: bool) -> Result<String> {
        // --interval 0: counters only, no 1 s rate window (tests poll often).
        let mut args = vec!["stats".to_string(), "--config".into(), s(&self.config_path), "--interval".into(), "0".into()];
        if json {
            args.push("--json".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.topo.exec_ok(LB, &s(&self.bins.agent), &args)
    }

    /// The agent's counters once they stop moving (two equal reads 200 ms
    /// apart, at most 3 s): packets of finished connections can still be in
    /// flight when the client returns.
    pub fn settled_stats(&self) -> Result<Stats> {
        let mut last = Stats::parse(&self.stats_output(true)?)?;
        for _ in 0..15 {
            std::thread::sleep(Duration::from_millis(200));
            let now = Stats::parse(&self.stats_output(true)?)?;
            if now == last {
                return Ok(now);
            }
            last = now;
        }
        Ok(last)
    }

    /// Fails if the agent or a backend program has exited.
    pub fn check_running(&self) -> Result<()> {
        for p in self
            .servers
            .iter()
            .chain(&self.decaps)
            .chain(std::iter::once(&self.agent))
        {
            if let Some(st) = p.try_status() {
                bail!(
                    "{} exited ({st}); log {}:\n{}",
                    p.label(),
                    p.log_path().display(),
                    p.log_tail(30)
                );
            }
        }
        Ok(())
    }
}

/// A long-lived connection's answer may take this long before it counts as broken.
pub const HOLD_TIMEOUT_MS: u64 = 3000;

/// Long-lived connections of one `lb-testclient --hold-ms` run.
#[derive(Clone, Copy, Debug)]
pub struct HoldClient {
    pub target: SocketAddr,
    pub connections: u32,
    pub src_port_base: u16,
    /// How long each connection lives.
    pub hold_ms: u64,
    /// A message every this many ms.
    pub interval_ms: u64,
    /// How long each answer may take.
    pub timeout_ms: u64,
}

/// Starts `lb-testclient` in hold mode in the client namespace of `topo` and
/// returns once every connection is open.
pub fn spawn_hold_client(topo: &Topology, testclient: &Path, h: &HoldClient) -> Result<Proc> {
    let args = [
        "--tcp".to_string(),
        h.target.to_string(),
        "--hold-ms".into(),
        h.hold_ms.to_string(),
        "--connections".into(),
        h.connections.to_string(),
        "--interval-ms".into(),
        h.interval_ms.to_string(),
        "--src-port-base".into(),
        h.src_port_base.to_string(),
        "--timeout-ms".into(),
        h.timeout_ms.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = topo.spawn(CLIENT, &s(testclient), &args)?;
    p.wait_for_line("ready:", SERVER_READY).context("lb-testclient --hold-ms did not connect")?;
    Ok(p)
}

/// Waits for a [`Lab::hold_client`] to finish and returns its records.
pub fn hold_records(client: &Proc, limit: Duration) -> Result<Vec<crate::client::HoldRecord>> {
    client.wait_exit(limit)?;
    // The reader thread may still be collecting the last lines.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let lines = client.stdout_lines();
        let records = crate::client::parse_hold_records(&lines)?;
        if !records.is_empty() || std::time::Instant::now() >= deadline {
            return Ok(records);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_agent(bins: &LabBins, topo: &Topology, config_path: &Path, options: &LabOptions) -> Result<Proc> {
    let mut args = vec!["run", "--config"];
    let path = s(config_path);
    args.push(&path);
    if options.unload_on_exit {
        args.push("--unload-on-exit");
    }
    args.extend(options.agent_extra.iter().map(String::as_str));
    let agent = topo.spawn(LB, &s(&bins.agent), &args)?;
    agent.wait_for_line("ready:", AGENT_READY).context("lb-agent run did not get ready")?;
    Ok(agent)
}

/// `lb-testsrv` arguments serving every VIP's test port.
fn server_args(vips: &[VipSpec]) -> Vec<String> {
    let ports = |proto: Proto| -> BTreeSet<u16> { vips.iter().filter(|v| v.protocol == proto).map(|v| v.test_port()).collect() };
    let mut args: Vec<String> = Vec::new();
    for p in ports(Proto::Tcp) {
        args.extend(["--tcp-port".into(), p.to_string()]);
    }
    for p in ports(Proto::Udp) {
        args.extend(["--udp-port".into(), p.to_string()]);
    }
    args
}

/// The client's own address of `target`'s family.
pub fn client_addr_for(target: &SocketAddr) -> IpAddr {
    if target.is_ipv4() {
        CLIENT_V4.into()
    } else {
        CLIENT_V6.into()
    }
}

/// A client run stops after this many failed requests: a broken path should
/// fail a test in seconds, not after every request's timeout.
pub const MAX_FAILURES: u32 = 5;

/// Runs `lb-testclient` in the client namespace and parses its output. It
/// stops early after [`MAX_FAILURES`] failures, so check the number of records.
pub fn run_client(
    topo: &Topology,
    testclient: &Path,
    protocol: Proto,
    target: SocketAddr,
    count: u32,
    src_port_base: Option<u16>,
    timeout_ms: u64,
) -> Result<Vec<ClientRecord>> {
    let mut args = vec![
        format!("--{protocol}"),
        target.to_string(),
        "--count".into(),
        count.to_string(),
        "--timeout-ms".into(),
        timeout_ms.to_string(),
        "--max-failures".into(),
        MAX_FAILURES.to_string(),
    ];
    if let Some(b) = src_port_base {
        args.extend(["--src-port-base".into(), b.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Each request takes at most ~3 timeouts (connect, write, read).
    let limit = Duration::from_millis(timeout_ms * 3 * count as u64) + Duration::from_secs(10);
    let out = topo.exec_timeout(CLIENT, &s(testclient), &args, limit)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let records = parse_records(&stdout)
        .with_context(|| format!("stderr: {}", String::from_utf8_lossy(&out.stderr)))?;
    let stopped_early = records.iter().filter(|r| !r.ok).count() >= MAX_FAILURES as usize;
    if records.len() != count as usize && !stopped_early {
        bail!(
            "lb-testclient printed {} records for {count} requests ({}); stderr: {}",
            records.len(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(records)
}

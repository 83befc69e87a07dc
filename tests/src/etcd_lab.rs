//! Several LB hosts following one cluster document in etcd:
//!
//! ```text
//!  client ── sw (bridge br0, 198.51.100.0/24) ── lb   198.51.100.2   (the lab's LB: the client's traffic)
//!                                             ├─ lb2  198.51.100.202 (agent only)
//!                                             ├─ lb3  198.51.100.203 (agent only)
//!                                             ├─ etcd 198.51.100.201 (etcd, started by the lab)
//!                                             └─ b1..bN backends
//! ```
//!
//! Built on [`Lab`]: its agent is restarted (a graceful restart: the pinned
//! balancer keeps forwarding) on a local file with `[source]`, after the
//! lab's VIPs were published as the cluster document with `lb-agent cluster
//! put`. Each host's local file keeps only host-local settings.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lb_agent::config::compose::HOST_LOCAL_LB_KEYS;

use crate::lab::{AGENT_READY, Lab, LabBins, LabOptions};
use crate::topology::{self, IFACE, LB, Proc, SWITCH, Topology, TopologyOptions};

pub const ETCD: &str = "etcd";
pub const ETCD_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 201);
/// The LB hosts besides the lab's own `lb`, with their addresses.
pub const OTHER_LBS: [(&str, Ipv4Addr, Ipv6Addr); 2] = [
    ("lb2", Ipv4Addr::new(198, 51, 100, 202), Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x202)),
    ("lb3", Ipv4Addr::new(198, 51, 100, 203), Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x203)),
];
pub const KEY: &str = "/lb/test/config";
/// The port `lb-testsrv --echo-port` serves on every backend.
pub const ECHO_PORT: u16 = 7;
/// Short, so that a partitioned host disappears within seconds.
pub const LEASE: &str = "2s";
/// etcd answers its health check within this after a start.
const ETCD_READY: Duration = Duration::from_secs(20);

/// One LB host of the fleet.
pub struct FleetHost {
    pub name: String,
    pub config_path: PathBuf,
    pub agent: Proc,
}

pub struct EtcdLab {
    pub hosts: Vec<FleetHost>,
    pub etcd: Option<Proc>,
    pub etcd_data: PathBuf,
    /// Last field: dropped (torn down) after the process handles.
    pub lab: Lab,
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The lab config's `[lb]` host-local keys (the local file) and everything
/// else (the cluster document), split by the agent's own rule.
pub fn split(config: &toml::Table) -> (toml::Table, toml::Table) {
    let mut doc = config.clone();
    let mut local_lb = toml::Table::new();
    if let Some(lb) = doc.get_mut("lb").and_then(|v| v.as_table_mut()) {
        for key in HOST_LOCAL_LB_KEYS {
            if let Some(v) = lb.remove(key) {
                local_lb.insert(key.into(), v);
            }
        }
    }
    let mut local = toml::Table::new();
    local.insert("lb".into(), toml::Value::Table(local_lb));
    (local, doc)
}

/// `[source]` of host `name`, its cache in `dir`.
fn source_table(name: &str, dir: &Path) -> toml::Value {
    let text = format!(
        "etcd_endpoints = [\"http://{ETCD_V4}:2379\"]\nkey = \"{KEY}\"\nhost_name = \"{name}\"\nlease = \"{LEASE}\"\ntimeout = \"1s\"\ncache = \"{}\"\n",
        dir.join(format!("{name}-cluster.toml")).display()
    );
    toml::Value::Table(text.parse().expect("a valid [source] table"))
}

impl EtcdLab {
    /// The lab of `config` (its VIPs become the cluster document), etcd, and
    /// three agents following it. `progress` gets one line per step.
    pub fn start(bins: LabBins, backends: usize, config: toml::Table, progress: &dyn Fn(&str)) -> Result<EtcdLab> {
        // Echo servers for long-lived connections (`Lab::hold_client`).
        let options = LabOptions { unload_on_exit: false, server_extra: vec!["--echo-port".into(), ECHO_PORT.to_string()], ..LabOptions::default() };
        let lab = Lab::start_with_options(bins, TopologyOptions { backends, ..Default::default() }, config, options, progress)?;
        let etcd_data = lab.topo.log_dir().join("etcd-data");
        let mut fleet = EtcdLab { hosts: Vec::new(), etcd: None, etcd_data, lab };
        if let Err(e) = fleet.start_fleet(progress) {
            fleet.lab.topo.keep_logs();
            return Err(e);
        }
        Ok(fleet)
    }

    fn topo(&self) -> &Topology {
        &self.lab.topo
    }

    fn start_fleet(&mut self, progress: &dyn Fn(&str)) -> Result<()> {
        add_etcd_host(&mut self.lab.topo)?;
        progress("starting etcd...");
        self.start_etcd()?;

        let (local, doc) = split(&self.lab.config);
        let log_dir = self.topo().log_dir().to_path_buf();
        let doc_path = log_dir.join("cluster-doc-1.toml");
        std::fs::write(&doc_path, toml::to_string(&doc)?)?;
        // The lab's own LB host moves to a local file with [source].
        let lb_local = self.local_file(LB, local);
        let put = self.agent_command_with(&lb_local, &["cluster", "put", &s(&doc_path)])?;
        if !put.status.success() {
            bail!("lb-agent cluster put of the first document failed: {}", String::from_utf8_lossy(&put.stderr));
        }
        progress("restarting lb's agent on the cluster document...");
        self.lab.agent.stop()?;
        let agent = self.spawn_agent(LB, &lb_local)?;
        self.lab.agent = agent.clone();
        self.hosts.push(FleetHost { name: LB.into(), config_path: lb_local, agent });

        for (name, v4, v6) in OTHER_LBS {
            self.lab.topo.add_host(name, Some(v4))?;
            plug(&self.lab.topo, name, v4, Some(v6))?;
            let mut lb = toml::Table::new();
            lb.insert("interface".into(), IFACE.into());
            lb.insert("tunnel_source_v4".into(), v4.to_string().into());
            lb.insert("tunnel_source_v6".into(), v6.to_string().into());
            lb.insert("bpffs_dir".into(), s(&self.topo().bpffs_dir().join(name)).into());
            lb.insert("run_dir".into(), s(&self.topo().agent_run_dir().join(name)).into());
            let mut local = toml::Table::new();
            local.insert("lb".into(), toml::Value::Table(lb));
            let path = self.local_file(name, local);
            progress(&format!("starting {name}'s agent..."));
            let agent = self.spawn_agent(name, &path)?;
            self.hosts.push(FleetHost { name: name.into(), config_path: path, agent });
        }
        Ok(())
    }

    /// Writes host `name`'s local file (`local` plus `[source]`).
    fn local_file(&self, name: &str, mut local: toml::Table) -> PathBuf {
        let dir = self.topo().log_dir();
        local.insert("source".into(), source_table(name, dir));
        let path = dir.join(format!("{name}-local.toml"));
        std::fs::write(&path, toml::to_string(&local).expect("a table serializes")).expect("writing a local config");
        path
    }

    fn spawn_agent(&self, host: &str, config: &Path) -> Result<Proc> {
        let agent = self.topo().spawn(host, &s(&self.lab.bins.agent), &["run", "--config", &s(config), "--unload-on-exit"])?;
        agent.wait_for_line("ready:", AGENT_READY).with_context(|| format!("lb-agent run on {host} did not get ready:\n{}", agent.log_tail(20)))?;
        Ok(agent)
    }

    /// Restarts host `index`'s agent (SIGTERM, then a new one) and waits for it.
    pub fn restart_agent(&mut self, index: usize) -> Result<()> {
        let host = &self.hosts[index];
        host.agent.stop()?;
        let agent = self.spawn_agent(&host.name.clone(), &host.config_path.clone())?;
        if index == 0 {
            self.lab.agent = agent.clone();
        }
        self.hosts[index].agent = agent;
        Ok(())
    }

    pub fn start_etcd(&mut self) -> Result<()> {
        self.etcd = Some(start_etcd(&self.lab.topo, &self.etcd_data, &[])?);
        Ok(())
    }

    /// Stops etcd (SIGTERM); its data stays for [`EtcdLab::start_etcd`].
    pub fn stop_etcd(&mut self) -> Result<()> {
        if let Some(etcd) = self.etcd.take() {
            etcd.stop()?;
        }
        Ok(())
    }

    /// `etcdctl ARGS` against the lab's etcd, bounded in time.
    pub fn etcdctl(&self, args: &[&str]) -> Result<Output> {
        etcdctl(&self.lab.topo, args)
    }

    /// `lb-agent ARGS --config <host 0's local file>` in `lb`.
    pub fn agent_command(&self, args: &[&str]) -> Result<Output> {
        self.agent_command_with(&self.hosts[0].config_path, args)
    }

    fn agent_command_with(&self, config: &Path, args: &[&str]) -> Result<Output> {
        let mut full = args.to_vec();
        let config = s(config);
        // `--config` goes to the subcommand that takes it (`cluster`, not `put`).
        let at = if args.first() == Some(&"cluster") { 1 } else { args.len() };
        full.splice(at..at, ["--config", config.as_str()]);
        self.topo().exec_timeout(LB, &s(&self.lab.bins.agent), &full, AGENT_READY)
    }

    /// Writes `doc` and publishes it with `lb-agent cluster put` (from `lb`).
    pub fn put(&self, doc: &str, base_revision: Option<i64>) -> Result<Output> {
        let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
        let path = self.topo().log_dir().join(format!("cluster-doc-{n}.toml"));
        std::fs::write(&path, doc)?;
        let base = base_revision.map(|b| b.to_string());
        let mut args = vec!["cluster", "put", path.to_str().context("utf-8 path")?];
        if let Some(b) = &base {
            args.extend(["--base-revision", b.as_str()]);
        }
        self.agent_command(&args)
    }

    /// `lb-agent cluster status --json`, parsed, with the exit code.
    pub fn status(&self) -> Result<(i32, serde_json::Value)> {
        let out = self.agent_command(&["cluster", "status", "--json"])?;
        let json = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("cluster status: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))?;
        Ok((out.status.code().unwrap_or(-1), json))
    }

    /// The document's revision now.
    pub fn revision(&self) -> Result<i64> {
        let (_, status) = self.status()?;
        status["latest_revision"].as_i64().context("latest_revision in cluster status")
    }

    /// Waits until every host in `hosts` logged `pattern`; returns how long
    /// after `since` the last one did (measured when seen, polled every 20 ms).
    pub fn wait_logged(&self, hosts: &[usize], pattern: &str, since: Instant, limit: Duration) -> Result<Duration> {
        let mut pending: Vec<usize> = hosts.to_vec();
        let mut last = Duration::ZERO;
        while !pending.is_empty() {
            pending.retain(|&i| {
                let text = std::fs::read_to_string(self.hosts[i].agent.log_path()).unwrap_or_default();
                let found = text.contains(pattern);
                if found {
                    last = since.elapsed();
                }
                !found
            });
            if since.elapsed() > limit {
                let names: Vec<&str> = pending.iter().map(|&i| self.hosts[i].name.as_str()).collect();
                bail!("{names:?} did not log {pattern:?} within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(last)
    }
}

/// The `etcd` namespace on the bridge, at [`ETCD_V4`].
pub fn add_etcd_host(topo: &mut Topology) -> Result<()> {
    topo.add_host(ETCD, Some(ETCD_V4))?;
    plug(topo, ETCD, ETCD_V4, None)
}

/// Starts etcd in the `etcd` namespace with its data in `data` and waits
/// until it answers (`auth`: the etcdctl user to ask with, once auth is on).
pub fn start_etcd(topo: &Topology, data: &Path, auth: &[&str]) -> Result<Proc> {
    let url = format!("http://{ETCD_V4}:2379");
    let data = s(data);
    let args = [
        "--name", "lbtest", "--data-dir", &data, "--listen-client-urls", &url, "--advertise-client-urls", &url,
        "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
        "--initial-cluster", "lbtest=http://127.0.0.1:2380",
    ];
    let etcd = topo.spawn(ETCD, "etcd", &args)?;
    let deadline = Instant::now() + ETCD_READY;
    loop {
        let health = etcdctl(topo, &[auth, &["endpoint", "health"]].concat())?;
        if health.status.success() {
            return Ok(etcd);
        }
        if Instant::now() > deadline {
            bail!("etcd did not get healthy within {ETCD_READY:?}: {}\n{}", String::from_utf8_lossy(&health.stderr), etcd.log_tail(10));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `etcdctl ARGS` in the `etcd` namespace, bounded in time.
pub fn etcdctl(topo: &Topology, args: &[&str]) -> Result<Output> {
    let endpoint = format!("--endpoints=http://{ETCD_V4}:2379");
    let mut full = vec![endpoint.as_str(), "--dial-timeout=1s", "--command-timeout=2s"];
    full.extend_from_slice(args);
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", topo.ns_name(ETCD), "etcdctl"]).args(&full).env("ETCDCTL_API", "3");
    topology::run_with_timeout(cmd, Duration::from_secs(10))
}

/// Plugs `host` into the bridge the way [`Topology`] plugs its own hosts
/// (veth peer in `sw` with a pass-all XDP program, so XDP_TX frames from
/// an agent on the host arrive; full checksums on transmit).
fn plug(topo: &Topology, host: &str, v4: Ipv4Addr, v6: Option<Ipv6Addr>) -> Result<()> {
    let sw = topo.ns_name(SWITCH).to_string();
    let peer = format!("v-{host}");
    let mtu = TopologyOptions::default().underlay_mtu.to_string();
    topo.exec_ok(host, "ip", &["link", "add", IFACE, "mtu", &mtu, "type", "veth", "peer", "name", &peer, "mtu", &mtu, "netns", &sw])?;
    topo.exec_ok(SWITCH, "ip", &["link", "set", &peer, "master", "br0", "up"])?;
    topo.keep_xdp(topology::attach_xdp_pass(&sw, &peer)?);
    topo.exec_ok(host, "ethtool", &["-K", IFACE, "tx", "off"])?;
    topo.exec_ok(host, "ip", &["addr", "add", &format!("{v4}/24"), "dev", IFACE])?;
    if let Some(v6) = v6 {
        topo.exec_ok(host, "ip", &["-6", "addr", "add", &format!("{v6}/64"), "dev", IFACE, "nodad"])?;
    }
    topo.exec_ok(host, "ip", &["link", "set", IFACE, "up"]).map(|_| ())
}

/// A CA, etcd's server certificate (for [`ETCD_V4`]) and a client
/// certificate, made with openssl for a TLS test.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    pub fn make(dir: &Path) -> Result<TlsFiles> {
        std::fs::create_dir_all(dir)?;
        let openssl = |args: &[&str]| -> Result<()> {
            let mut cmd = std::process::Command::new("openssl");
            cmd.args(args).current_dir(dir);
            let out = topology::run_with_timeout(cmd, Duration::from_secs(30))?;
            if !out.status.success() {
                bail!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        openssl(&["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=lb test CA"])?;
        let san = format!("subjectAltName=IP:{ETCD_V4}");
        for (name, ext) in [("server", san.as_str()), ("client", "extendedKeyUsage=clientAuth")] {
            openssl(&["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr"), "-subj", &format!("/CN=lb test {name}")])?;
            std::fs::write(dir.join(format!("{name}.ext")), format!("{ext}\n"))?;
            openssl(&["x509", "-req", "-in", &format!("{name}.csr"), "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", &format!("{name}.pem"), "-days", "1", "-extfile", &format!("{name}.ext")])?;
        }
        Ok(TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        })
    }
}

/// etcd over https, requiring client certificates signed by `tls.ca`.
pub fn start_etcd_tls(topo: &Topology, data: &Path, tls: &TlsFiles) -> Result<Proc> {
    let url = format!("https://{ETCD_V4}:2379");
    let data = s(data);
    let (cert, key, ca) = (s(&tls.server_cert), s(&tls.server_key), s(&tls.ca));
    let args = [
        "--name", "lbtest", "--data-dir", &data, "--listen-client-urls", &url, "--advertise-client-urls", &url,
        "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
        "--initial-cluster", "lbtest=http://127.0.0.1:2380", "--cert-file", &cert, "--key-file", &key,
        "--client-cert-auth", "--trusted-ca-file", &ca,
    ];
    let etcd = topo.spawn(ETCD, "etcd", &args)?;
    let (client_cert, client_key) = (s(&tls.client_cert), s(&tls.client_key));
    let deadline = Instant::now() + ETCD_READY;
    loop {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", topo.ns_name(ETCD), "etcdctl", &format!("--endpoints={url}"), "--dial-timeout=1s", "--command-timeout=2s"])
            .args(["--cacert", &ca, "--cert", &client_cert, "--key", &client_key, "endpoint", "health"])
            .env("ETCDCTL_API", "3");
        let health = topology::run_with_timeout(cmd, Duration::from_secs(10))?;
        if health.status.success() {
            return Ok(etcd);
        }
        if Instant::now() > deadline {
            bail!("etcd (TLS) did not get healthy within {ETCD_READY:?}: {}\n{}", String::from_utf8_lossy(&health.stderr), etcd.log_tail(10));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

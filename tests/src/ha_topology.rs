//! Several LB hosts behind a BGP router, for the HA tests:
//!
//! ```text
//!  client 198.51.100.66/29 ── eth1 router 198.51.100.65/29
//!         2001:db8:64::66/64          2001:db8:64::65/64
//!                                  │ eth0 198.51.100.1/26, 2001:db8::1/64, BIRD AS 65000, ECMP, BFD
//!                     "sw": bridge br0 (198.51.100.0/26, 2001:db8::/64)
//!    ├─ lb   198.51.100.2, 2001:db8::2 (eth0) lb-agent + BIRD AS 65001
//!    ├─ lb2  198.51.100.3, 2001:db8::3 (ens5) lb-agent + BIRD AS 65002
//!    └─ b1..b3 198.51.100.11-13, 2001:db8::11-13, decap, VIPs on lo, route to the client via the router
//! ```
//!
//! Every LB host serves an IPv4 and an IPv6 VIP of each kind ([`Family`]);
//! BIRD runs a BGP session per family, each with BFD.
//!
//! Built on [`Topology`] (its client, `lb` and backends, re-addressed into
//! /26 and /29 subnets so the router is the only way between client and
//! backends), plus the `router` and `lb2` namespaces. `lb2`'s interface has
//! another name on purpose: nothing about forwarding may depend on it.
//! BIRD's configs are the examples in `contrib/bird` with their `define`
//! lines set; configs and control sockets live in the run's log directory.
//! No namespace has a default route.

use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::agent::workspace_root;
use crate::lab::{AGENT_READY, LabBins, SERVER_READY};
use crate::topology::{self, CLIENT, IFACE, LB, Proc, SWITCH, Topology, TopologyOptions, backend_v4, backend_v6};

pub const ROUTER: &str = "router";
pub const LB2: &str = "lb2";
/// `lb2`'s interface name (the others use [`IFACE`]).
pub const LB2_IFACE: &str = "ens5";
/// The router's interface toward the client.
const ROUTER_CLIENT_IFACE: &str = "eth1";

/// The LB segment (router, LB hosts, backends).
pub const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const LB1_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const LB2_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);
const SEGMENT_PREFIX: u8 = 26;
/// The client link.
pub const ROUTER_CLIENT_SIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 65);
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 66);
const CLIENT_NET: &str = "198.51.100.64/29";
const CLIENT_LINK_PREFIX: u8 = 29;
/// The same in IPv6: the LB segment is the base topology's 2001:db8::/64.
pub const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x1);
pub const LB1_V6: Ipv6Addr = topology::LB_V6;
pub const LB2_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x3);
const SEGMENT_PREFIX_V6: u8 = 64;
pub const ROUTER_CLIENT_SIDE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x64, 0, 0, 0, 0, 0x65);
pub const CLIENT_HA_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x64, 0, 0, 0, 0, 0x66);
const CLIENT_NET_V6: &str = "2001:db8:64::/64";
/// The base topology's prefix on every bridged host.
const BASE_PREFIX: u8 = 24;

pub const ROUTER_AS: u32 = 65000;
/// Private ASNs of `lb` and `lb2`.
pub const LB_AS: [u32; 2] = [65001, 65002];
/// BGP hold time of every session (BIRD's minimum): how long the router
/// keeps sending to an LB host that died without a word.
pub const HOLD_TIME_S: u64 = 3;
/// BFD as shipped in `contrib/bird`: a host is dead after
/// [`BFD_MULTIPLIER`] missed packets [`BFD_INTERVAL_MS`] apart.
pub const BFD_INTERVAL_MS: u64 = 100;
pub const BFD_MULTIPLIER: u64 = 3;

/// The echo port every backend serves (`lb-testsrv --echo-port`).
pub const ECHO_PORT: u16 = 7;
/// Served by the backends of [`HaVips::all`] (all three by default).
pub const VIP_ALL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// Served by `b3` only: withdrawn when `b3` fails.
pub const VIP_SOLO: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
/// The IPv6 twins of [`VIP_ALL`] and [`VIP_SOLO`] (same backends, IPv6 addresses).
pub const VIP_ALL_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x10);
pub const VIP_SOLO_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x20);

/// An address family: which VIPs, LB host and router addresses a test uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// [`VIP_ALL`] or [`VIP_ALL_V6`].
    pub fn vip_all(self) -> IpAddr {
        match self {
            Family::V4 => VIP_ALL.into(),
            Family::V6 => VIP_ALL_V6.into(),
        }
    }

    /// [`VIP_SOLO`] or [`VIP_SOLO_V6`].
    pub fn vip_solo(self) -> IpAddr {
        match self {
            Family::V4 => VIP_SOLO.into(),
            Family::V6 => VIP_SOLO_V6.into(),
        }
    }

    /// The address of LB host `index` (0: `lb`, 1: `lb2`): the router's next hop.
    pub fn lb(self, index: usize) -> IpAddr {
        match (self, index) {
            (Family::V4, 0) => LB1_V4.into(),
            (Family::V4, _) => LB2_V4.into(),
            (Family::V6, 0) => LB1_V6.into(),
            (Family::V6, _) => LB2_V6.into(),
        }
    }

    /// Backend `index` (1-based).
    pub fn backend(self, index: usize) -> IpAddr {
        match self {
            Family::V4 => backend_v4(index).into(),
            Family::V6 => backend_v6(index).into(),
        }
    }
}
/// Backend hosts unless [`HaOptions`] says otherwise.
const BACKENDS: usize = 3;
const SOLO_BACKEND: usize = 3;

/// Route polling while waiting for BGP (fine enough to time BFD).
const ROUTE_POLL: Duration = Duration::from_millis(20);
/// BGP sessions come up within a few connect retries.
pub const BGP_UP: Duration = Duration::from_secs(20);

pub use lb_agent::config::announce::Role;

/// One LB host: its agent and its BIRD.
pub struct LbHost {
    pub host: &'static str,
    pub role: Role,
    pub iface: &'static str,
    pub address: Ipv4Addr,
    pub config_path: PathBuf,
    pub bird_socket: PathBuf,
    pub agent: Proc,
    pub bird: Proc,
}

pub struct HaLab {
    pub bins: LabBins,
    /// What the LB hosts serve now (see [`HaLab::reconfigure`]).
    pub vips: HaVips,
    pub lbs: Vec<LbHost>,
    pub servers: Vec<Proc>,
    pub decaps: Vec<Proc>,
    pub router_bird: Proc,
    /// Last field: dropped (torn down) after the process handles.
    pub topo: Topology,
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// What the LB hosts serve: the backends of [`VIP_ALL`] and the VIPs' flow state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaVips {
    /// Backend indices (1-based) of [`VIP_ALL`].
    pub all: Vec<usize>,
    /// `flow_state` of every VIP (`None`: the default).
    pub flow_state: Option<&'static str>,
}

impl Default for HaVips {
    fn default() -> Self {
        Self { all: (1..=BACKENDS).collect(), flow_state: None }
    }
}

/// How an [`HaLab`] is built.
#[derive(Clone, Debug)]
pub struct HaOptions {
    /// Backend hosts b1..bN (more than [`HaVips::all`] uses leaves some to add later).
    pub backends: usize,
    pub vips: HaVips,
}

impl Default for HaOptions {
    fn default() -> Self {
        Self { backends: BACKENDS, vips: HaVips::default() }
    }
}

/// The lb-agent config of an LB host. `reversed` writes VIPs and backends
/// in the opposite order: both hosts must still build identical rings.
pub fn agent_config(iface: &str, bpffs: &Path, run_dir: &Path, role: Role, reversed: bool) -> String {
    agent_config_for(iface, bpffs, run_dir, role, reversed, &HaVips::default())
}

/// [`agent_config`] serving `served`.
pub fn agent_config_for(iface: &str, bpffs: &Path, run_dir: &Path, role: Role, reversed: bool, served: &HaVips) -> String {
    let role = role.as_str();
    let mut vips: Vec<(&str, Family, IpAddr, Vec<usize>)> = vec![
        ("echo-all", Family::V4, VIP_ALL.into(), served.all.clone()),
        ("echo-solo", Family::V4, VIP_SOLO.into(), vec![SOLO_BACKEND]),
        ("echo-all6", Family::V6, VIP_ALL_V6.into(), served.all.clone()),
        ("echo-solo6", Family::V6, VIP_SOLO_V6.into(), vec![SOLO_BACKEND]),
    ];
    if reversed {
        vips.reverse();
        for v in &mut vips {
            v.3.reverse();
        }
    }
    let mut out = format!(
        "[lb]\ninterface = \"{iface}\"\nbpffs_dir = \"{}\"\nrun_dir = \"{}\"\nflow_table_size = 65536\n\n\
         [announce]\nrole = \"{role}\"\ndrain_quiet = \"1s\"\ndrain_timeout = \"15s\"\n",
        bpffs.display(),
        run_dir.display()
    );
    for (name, family, address, backends) in vips {
        // Fast checks: a dead backend is noticed in well under a second.
        out += &format!("\n[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nport = {ECHO_PORT}\n");
        if let Some(flow_state) = served.flow_state {
            out += &format!("flow_state = \"{flow_state}\"\n");
        }
        out += "[vip.health]\ncheck = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\nfails = 2\npasses = 2\n";
        for b in backends {
            out += &format!("[[vip.backend]]\naddress = \"{}\"\n", family.backend(b));
        }
    }
    out
}

/// A `contrib/bird` example with its `define NAME = ...;` lines replaced
/// and logging to stderr (the test's log file).
pub fn bird_config(example: &str, defines: &[(&str, String)]) -> Result<String> {
    let path = workspace_root().join("contrib/bird").join(example);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut seen = BTreeSet::new();
    let mut out = String::new();
    for line in text.lines() {
        let define = defines.iter().find(|(name, _)| {
            line.strip_prefix("define ").is_some_and(|rest| rest.split_whitespace().next() == Some(*name))
        });
        match define {
            Some((name, value)) => {
                seen.insert(*name);
                out += &format!("define {name} = {value};\n");
            }
            None if line.trim() == "log syslog all;" => out += "log stderr all;\n",
            None => {
                out += line;
                out.push('\n');
            }
        }
    }
    for (name, _) in defines {
        if !seen.contains(name) {
            bail!("{} has no `define {name}` line", path.display());
        }
    }
    Ok(out)
}

impl HaLab {
    /// Builds the network, starts servers and decap on the backends, BIRD on
    /// the router, and agent + BIRD on both LB hosts with `roles`.
    pub fn start(bins: LabBins, roles: [Role; 2], progress: &dyn Fn(&str)) -> Result<HaLab> {
        Self::start_with(bins, roles, HaOptions::default(), progress)
    }

    /// [`HaLab::start`] with [`HaOptions`].
    pub fn start_with(bins: LabBins, roles: [Role; 2], options: HaOptions, progress: &dyn Fn(&str)) -> Result<HaLab> {
        let mut topo = Topology::build(TopologyOptions {
            backends: options.backends,
            backend_vips: vec![VIP_ALL.into(), VIP_SOLO.into(), VIP_ALL_V6.into(), VIP_SOLO_V6.into()],
            ..TopologyOptions::default()
        })?;
        progress(&format!("topology {} up; logs in {}", topo.run_id(), topo.log_dir().display()));
        let started = rewire(&mut topo).and_then(|()| start_programs(&bins, &topo, roles, &options.vips, progress));
        match started {
            Ok((lbs, servers, decaps, router_bird)) => Ok(HaLab { bins, vips: options.vips, lbs, servers, decaps, router_bird, topo }),
            Err(e) => {
                topo.keep_logs();
                Err(e)
            }
        }
    }

    /// Rewrites both LB hosts' configs to serve `vips` and reloads each
    /// agent, in order (as an operator's rollout would).
    pub fn reconfigure(&mut self, vips: HaVips) -> Result<()> {
        for (i, lb) in self.lbs.iter().enumerate() {
            let bpffs = self.topo.bpffs_dir().join(lb.host);
            let run_dir = self.topo.agent_run_dir().join(lb.host);
            std::fs::write(&lb.config_path, agent_config_for(lb.iface, &bpffs, &run_dir, lb.role, i == 1, &vips))
                .with_context(|| format!("writing {}", lb.config_path.display()))?;
            let out = self.agent_command(i, &["reload"])?;
            if !out.status.success() {
                bail!("lb-agent reload on {}: {}{}", lb.host, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            }
        }
        self.vips = vips;
        Ok(())
    }

    /// The router's next hops toward `vip` now (empty: no route).
    pub fn next_hops(&self, vip: Ipv4Addr) -> Result<BTreeSet<Ipv4Addr>> {
        Ok(self.next_hops_of(vip.into())?.into_iter().filter_map(|a| match a {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }).collect())
    }

    /// [`HaLab::next_hops`] of an IPv4 or IPv6 VIP.
    pub fn next_hops_of(&self, vip: IpAddr) -> Result<BTreeSet<IpAddr>> {
        let (family, host_prefix) = if vip.is_ipv4() { ("-4", 32) } else { ("-6", 128) };
        // `ip -n` (one process) rather than `ip netns exec`: this polls while timing BFD.
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["-n", self.topo.ns_name(ROUTER), family, "route", "show", "exact", &format!("{vip}/{host_prefix}")]);
        let out = topology::run_with_timeout(cmd, topology::EXEC_TIMEOUT)?;
        if !out.status.success() {
            bail!("`ip route show` on the router: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse().ok())
            .collect())
    }

    /// Waits until the router's next hops toward `vip` are exactly
    /// `expected`; returns how long that took.
    pub fn wait_next_hops(&self, vip: Ipv4Addr, expected: &[Ipv4Addr], limit: Duration) -> Result<Duration> {
        let expected: Vec<IpAddr> = expected.iter().map(|a| IpAddr::V4(*a)).collect();
        self.wait_next_hops_of(vip.into(), &expected, limit)
    }

    /// [`HaLab::wait_next_hops`] of an IPv4 or IPv6 VIP.
    pub fn wait_next_hops_of(&self, vip: IpAddr, expected: &[IpAddr], limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        let expected: BTreeSet<IpAddr> = expected.iter().copied().collect();
        loop {
            let now = self.next_hops_of(vip)?;
            if now == expected {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= limit {
                self.topo.keep_logs();
                bail!(
                    "the router's next hops toward {vip} are {now:?}, not {expected:?}, after {} s; BIRD on the router:\n{}",
                    limit.as_secs(),
                    self.birdc(ROUTER, &self.router_socket(), &["show", "protocols", "all"]).unwrap_or_default()
                );
            }
            std::thread::sleep(ROUTE_POLL);
        }
    }

    /// Waits until the router's BIRD has `count` routes for `vip` (one per
    /// announcing LB host, best or not).
    pub fn wait_bgp_routes(&self, vip: impl Into<IpAddr>, count: usize, limit: Duration) -> Result<()> {
        let vip: IpAddr = vip.into();
        let host_prefix = if vip.is_ipv4() { 32 } else { 128 };
        let start = Instant::now();
        loop {
            // birdc fails until BIRD has opened its control socket.
            let out = self.birdc(ROUTER, &self.router_socket(), &["show", "route", "for", &format!("{vip}/{host_prefix}")]).unwrap_or_else(|e| format!("{e:#}"));
            if out.matches("unicast [").count() == count {
                return Ok(());
            }
            if start.elapsed() >= limit {
                self.topo.keep_logs();
                bail!("BIRD on the router has not {count} routes for {vip} after {} s:\n{out}", limit.as_secs());
            }
            std::thread::sleep(ROUTE_POLL);
        }
    }

    /// The client ports of the connections to `port` in LB host `index`'s
    /// flow table: the connections the router sends through that host.
    /// (`ip route get` cannot tell: over veth the kernel keeps the client
    /// socket's random flow hash, and `fib_multipath_hash_policy = 1` uses
    /// it instead of hashing the headers, as it does a NIC's RSS hash.)
    pub fn flows_through(&self, index: usize, port: u16) -> Result<BTreeSet<u16>> {
        let dir = self.topo.bpffs_dir().join(self.lbs[index].host);
        let map = lb_agent::pins::open_map(&dir, lb_common::maps::FLOWS)?;
        let flows: aya::maps::PerCpuHashMap<_, lb_common::flows::FlowKey, lb_common::flows::FlowEntry> =
            aya::maps::PerCpuHashMap::try_from(aya::maps::Map::PerCpuLruHashMap(map))?;
        let mut ports = BTreeSet::new();
        for key in flows.keys() {
            let key = key.context("reading the flow table")?;
            if u16::from_be(key.dst_port_be) == port {
                ports.insert(u16::from_be(key.src_port_be));
            }
        }
        Ok(ports)
    }

    fn router_socket(&self) -> PathBuf {
        bird_socket(&self.topo, ROUTER)
    }

    /// `birdc` on `host`'s BIRD.
    pub fn birdc(&self, host: &str, socket: &Path, args: &[&str]) -> Result<String> {
        let mut full = vec!["-s", socket.to_str().context("socket path")?];
        full.extend_from_slice(args);
        self.topo.exec_ok(host, "birdc", &full)
    }

    /// Takes LB host `index` down as a crash would: its link first (so
    /// nothing reaches the router any more), then SIGKILL to its agent
    /// and its BIRD. The router notices through BFD (or, without it, the
    /// BGP hold timer).
    pub fn crash_lb(&self, index: usize) -> Result<()> {
        self.crash_lb_at(index).map(|_| ())
    }

    /// [`HaLab::crash_lb`]; returns when the link went down (the moment
    /// the router stops hearing from the host: convergence counts from
    /// there, not from starting `ip`, which a loaded machine may delay).
    pub fn crash_lb_at(&self, index: usize) -> Result<Instant> {
        let lb = &self.lbs[index];
        self.topo.exec_ok(lb.host, "ip", &["link", "set", lb.iface, "down"])?;
        let down = Instant::now();
        lb.agent.kill()?;
        lb.bird.kill()?;
        Ok(down)
    }

    /// Stops the BIRD of LB host `index` (SIGTERM: it closes its BGP
    /// session, so the router forgets the host at once).
    pub fn stop_bird(&self, index: usize) -> Result<()> {
        self.lbs[index].bird.stop().map(|_| ())
    }

    /// Starts the BIRD of LB host `index` again, with the same config.
    pub fn start_bird(&mut self, index: usize) -> Result<()> {
        let host = self.lbs[index].host;
        let conf = bird_config_path(&self.topo, host);
        self.lbs[index].bird = self.topo.spawn(host, "bird", &["-f", "-c", &s(&conf), "-s", &s(&bird_socket(&self.topo, host))])?;
        Ok(())
    }

    /// `lb-agent ARGS` on LB host `index` (its config appended as `--config`).
    pub fn agent_command(&self, index: usize, args: &[&str]) -> Result<std::process::Output> {
        let lb = &self.lbs[index];
        let config = s(&lb.config_path);
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--config", &config]);
        self.topo.exec_timeout(lb.host, &s(&self.bins.agent), &full, Duration::from_secs(60))
    }

    /// Starts `lb-testclient` in hold mode on the client: `connections`
    /// connections to `target` from `src_port_base` on, a message every
    /// `interval_ms` for `hold_ms`, each answer awaited up to `timeout_ms`.
    pub fn hold_client(&self, target: SocketAddr, connections: u32, src_port_base: u16, hold_ms: u64, interval_ms: u64, timeout_ms: u64) -> Result<Proc> {
        let hold = crate::lab::HoldClient { target, connections, src_port_base, hold_ms, interval_ms, timeout_ms };
        crate::lab::spawn_hold_client(&self.topo, &self.bins.testclient, &hold)
    }

    /// Stops the echo server of backend `index` (1-based).
    pub fn stop_server(&self, index: usize) -> Result<()> {
        self.servers[index - 1].stop().map(|_| ())
    }

    /// Starts the echo server of backend `index` (1-based) again.
    pub fn start_server(&mut self, index: usize) -> Result<()> {
        self.servers[index - 1] = start_server(&self.bins, &self.topo, index)?;
        Ok(())
    }
}

/// Where `host`'s BIRD listens for `birdc`.
fn bird_socket(topo: &Topology, host: &str) -> PathBuf {
    topo.log_dir().join(format!("bird-{host}.ctl"))
}

fn ip(ns: &str, args: &[&str]) -> Result<()> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    let mut cmd = std::process::Command::new("ip");
    cmd.args(&full);
    let out = topology::run_with_timeout(cmd, topology::EXEC_TIMEOUT)?;
    if !out.status.success() {
        bail!("`ip {}` failed: {}", full.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn sysctls(topo: &Topology, host: &str, settings: &[(&str, &str)]) -> Result<()> {
    let script: String = settings.iter().map(|(k, v)| format!("echo {v} > /proc/sys/{k} && ")).collect::<String>() + "true";
    topo.exec_ok(host, "sh", &["-c", &script]).map(|_| ())
}

/// Plugs a new host into the bridge like [`Topology`] does its own: veth
/// with the peer in `sw` (GRO on, pass-all XDP so `XDP_TX` frames arrive),
/// full checksums on transmit, the segment's MTU.
fn plug_into_bridge(topo: &Topology, host: &str, iface: &str, (address, address_v6): (Ipv4Addr, Ipv6Addr), mtu: u32) -> Result<()> {
    let ns = topo.ns_name(host).to_string();
    let sw = topo.ns_name(SWITCH).to_string();
    let peer = format!("v-{host}");
    let mtu = mtu.to_string();
    ip(&ns, &["link", "add", iface, "mtu", &mtu, "type", "veth", "peer", "name", &peer, "mtu", &mtu, "netns", &sw])?;
    ip(&sw, &["link", "set", &peer, "master", "br0", "up"])?;
    topo.exec_ok(SWITCH, "ethtool", &["-K", &peer, "gro", "on"])?;
    topo.keep_xdp(topology::attach_xdp_pass(&sw, &peer)?);
    topo.exec_ok(host, "ethtool", &["-K", iface, "tx", "off"])?;
    ip(&ns, &["addr", "add", &format!("{address}/{SEGMENT_PREFIX}"), "dev", iface])?;
    ip(&ns, &["-6", "addr", "add", &format!("{address_v6}/{SEGMENT_PREFIX_V6}"), "dev", iface, "nodad"])?;
    ip(&ns, &["link", "set", iface, "up"])
}

/// Turns the base topology into the HA one (see the module comment).
fn rewire(topo: &mut Topology) -> Result<()> {
    let mtu = TopologyOptions::default().underlay_mtu;
    topo.add_host(ROUTER, Some(ROUTER_V4))?;
    topo.add_host(LB2, Some(LB2_V4))?;
    for host in [ROUTER, LB2] {
        // As the base topology's hosts: addresses (link-local ones too) usable at once.
        sysctls(
            topo,
            host,
            &[
                ("net/ipv4/conf/all/rp_filter", "0"),
                ("net/ipv4/conf/default/rp_filter", "0"),
                ("net/ipv6/conf/all/accept_dad", "0"),
                ("net/ipv6/conf/default/accept_dad", "0"),
                ("net/ipv6/conf/default/dad_transmits", "0"),
                ("net/ipv6/conf/all/accept_ra", "0"),
                ("net/ipv6/conf/default/accept_ra", "0"),
            ],
        )?;
    }
    // Flows hash by ports, so one client's connections spread over the LB hosts.
    sysctls(
        topo,
        ROUTER,
        &[
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv4/fib_multipath_hash_policy", "1"),
            ("net/ipv6/conf/all/forwarding", "1"),
            ("net/ipv6/fib_multipath_hash_policy", "1"),
        ],
    )?;

    // The bridged hosts move from /24 into the LB segment's /26.
    for host in std::iter::once(LB.to_string()).chain(topo.backends().iter().cloned()) {
        let ns = topo.ns_name(&host).to_string();
        let v4 = topo.host(&host)?.v4.context("bridged host without IPv4")?;
        ip(&ns, &["addr", "del", &format!("{v4}/{BASE_PREFIX}"), "dev", IFACE])?;
        ip(&ns, &["addr", "add", &format!("{v4}/{SEGMENT_PREFIX}"), "dev", IFACE])?;
    }
    plug_into_bridge(topo, ROUTER, IFACE, (ROUTER_V4, ROUTER_V6), mtu)?;
    plug_into_bridge(topo, LB2, LB2_IFACE, (LB2_V4, LB2_V6), mtu)?;
    // The balancer takes every frame its XDP program sees, whatever its
    // destination MAC; a real NIC filters frames for other MACs. Without
    // this, the bridge floods the frames of a dead LB host (its port is
    // down, its MAC forgotten) to the live one, and a crash looks hitless
    // before the router has even noticed.
    let sw = topo.ns_name(SWITCH).to_string();
    for host in [LB, LB2] {
        let mut cmd = std::process::Command::new("bridge");
        cmd.args(["-n", &sw, "link", "set", "dev", &format!("v-{host}"), "flood", "off", "mcast_flood", "off"]);
        let out = topology::run_with_timeout(cmd, topology::EXEC_TIMEOUT)?;
        if !out.status.success() {
            bail!("turning flooding off on v-{host}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }

    // The client leaves the bridge for its own link to the router.
    let client = topo.ns_name(CLIENT).to_string();
    let router = topo.ns_name(ROUTER).to_string();
    ip(&client, &["link", "del", IFACE])?;
    ip(&client, &["link", "add", IFACE, "type", "veth", "peer", "name", ROUTER_CLIENT_IFACE, "netns", &router])?;
    topo.exec_ok(CLIENT, "ethtool", &["-K", IFACE, "tx", "off"])?;
    topo.exec_ok(ROUTER, "ethtool", &["-K", ROUTER_CLIENT_IFACE, "tx", "off"])?;
    ip(&client, &["addr", "add", &format!("{CLIENT_V4}/{CLIENT_LINK_PREFIX}"), "dev", IFACE])?;
    ip(&router, &["addr", "add", &format!("{ROUTER_CLIENT_SIDE_V4}/{CLIENT_LINK_PREFIX}"), "dev", ROUTER_CLIENT_IFACE])?;
    ip(&client, &["-6", "addr", "add", &format!("{CLIENT_HA_V6}/64"), "dev", IFACE, "nodad"])?;
    ip(&router, &["-6", "addr", "add", &format!("{ROUTER_CLIENT_SIDE_V6}/64"), "dev", ROUTER_CLIENT_IFACE, "nodad"])?;
    ip(&client, &["link", "set", IFACE, "up"])?;
    ip(&router, &["link", "set", ROUTER_CLIENT_IFACE, "up"])?;
    ip(&client, &["route", "add", topology::VIP_NET_V4, "via", &ROUTER_CLIENT_SIDE_V4.to_string()])?;
    ip(&client, &["-6", "route", "add", topology::VIP_NET_V6, "via", &ROUTER_CLIENT_SIDE_V6.to_string()])?;
    // Direct server return: backends answer the client through the router.
    for b in topo.backends().to_vec() {
        ip(topo.ns_name(&b), &["route", "add", CLIENT_NET, "via", &ROUTER_V4.to_string()])?;
        ip(topo.ns_name(&b), &["-6", "route", "add", CLIENT_NET_V6, "via", &ROUTER_V6.to_string()])?;
    }
    Ok(())
}

fn start_server(bins: &LabBins, topo: &Topology, index: usize) -> Result<Proc> {
    let name = topology::backend_name(index);
    let srv = topo.spawn(&name, &s(&bins.testsrv), &["--name", &name, "--echo-port", &ECHO_PORT.to_string()])?;
    srv.wait_for_line("ready:", SERVER_READY)?;
    Ok(srv)
}

fn bird_config_path(topo: &Topology, host: &str) -> PathBuf {
    topo.log_dir().join(format!("bird-{host}.conf"))
}

fn spawn_bird(topo: &Topology, host: &str, config: &str) -> Result<Proc> {
    let conf = bird_config_path(topo, host);
    std::fs::write(&conf, config).with_context(|| format!("writing {}", conf.display()))?;
    let socket = bird_socket(topo, host);
    topo.spawn(host, "bird", &["-f", "-c", &s(&conf), "-s", &s(&socket)])
}

#[allow(clippy::type_complexity)]
fn start_programs(bins: &LabBins, topo: &Topology, roles: [Role; 2], vips: &HaVips, progress: &dyn Fn(&str)) -> Result<(Vec<LbHost>, Vec<Proc>, Vec<Proc>, Proc)> {
    progress("starting echo servers and decap on the backends...");
    let mut servers = Vec::new();
    let mut decaps = Vec::new();
    for i in 1..=topo.backends().len() {
        servers.push(start_server(bins, topo, i)?);
        let decap = topo.spawn(&topology::backend_name(i), &s(&bins.agent), &["decap", "--iface", IFACE])?;
        decap.wait_for_line("ready:", AGENT_READY).context("lb-agent decap did not get ready")?;
        decaps.push(decap);
    }

    progress("starting BIRD on the router...");
    let router_config = bird_config(
        "router.conf",
        &[
            ("LOCAL_AS", ROUTER_AS.to_string()),
            ("LB1_AS", LB_AS[0].to_string()),
            ("LB1", LB1_V4.to_string()),
            ("LB1_6", LB1_V6.to_string()),
            ("LB2_AS", LB_AS[1].to_string()),
            ("LB2", LB2_V4.to_string()),
            ("LB2_6", LB2_V6.to_string()),
            ("BFD_INTERVAL_MS", BFD_INTERVAL_MS.to_string()),
            ("BFD_MULTIPLIER", BFD_MULTIPLIER.to_string()),
            ("HOLD_TIME", HOLD_TIME_S.to_string()),
        ],
    )?;
    let router_bird = spawn_bird(topo, ROUTER, &router_config)?;

    let mut lbs = Vec::new();
    for (i, (host, iface, address)) in [(LB, IFACE, LB1_V4), (LB2, LB2_IFACE, LB2_V4)].into_iter().enumerate() {
        progress(&format!("starting lb-agent and BIRD on {host} ({:?})...", roles[i]));
        let bpffs = topo.bpffs_dir().join(host);
        std::fs::create_dir_all(&bpffs).with_context(|| format!("creating {}", bpffs.display()))?;
        let run_dir = topo.agent_run_dir().join(host);
        let config_path = topo.log_dir().join(format!("lb-agent-{host}.toml"));
        std::fs::write(&config_path, agent_config_for(iface, &bpffs, &run_dir, roles[i], i == 1, vips))?;
        let agent = topo.spawn(host, &s(&bins.agent), &["run", "--unload-on-exit", "--config", &s(&config_path)])?;
        agent.wait_for_line("ready:", AGENT_READY).with_context(|| format!("lb-agent run on {host} did not get ready"))?;
        let bird_conf = bird_config(
            "lb-host.conf",
            &[
                ("LOCAL_AS", LB_AS[i].to_string()),
                ("ROUTER_AS", ROUTER_AS.to_string()),
                ("ROUTER_ADDRESS", ROUTER_V4.to_string()),
                ("ROUTER_ADDRESS6", ROUTER_V6.to_string()),
                ("BFD_INTERVAL_MS", BFD_INTERVAL_MS.to_string()),
                ("BFD_MULTIPLIER", BFD_MULTIPLIER.to_string()),
                ("HOLD_TIME", HOLD_TIME_S.to_string()),
            ],
        )?;
        let bird = spawn_bird(topo, host, &bird_conf)?;
        lbs.push(LbHost { host, role: roles[i], iface, address, config_path, bird_socket: bird_socket(topo, host), agent, bird });
    }
    Ok((lbs, servers, decaps, router_bird))
}

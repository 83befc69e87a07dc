//! What `lb-agent check` prints: the validated config as the dataplane will
//! see it, and a fingerprint to compare LB hosts of a cluster.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::config::announce::AnnounceConfig;
use crate::config::{BackendConfig, Config, HashMode, LbSection, Protocol, VipConfig};
use crate::config::health::{CheckKind, HealthCheck};
use crate::config::packets::{self, PacketPolicy};
use crate::plan::{ring_digest, Plan, PlannedVip};

/// 64-bit FNV-1a.
use crate::plan::fnv::Fnv;


/// A 16-hex-digit fingerprint of every setting that decides any packet's
/// fate (see [`forwarding_settings`] for the list and for what is left out,
/// and why), plus each VIP's all-up ring as backend positions: two LB hosts
/// whose fingerprints match forward every flow the same way, including when
/// their agents were built from different versions of the Maglev code, which
/// the rings would reveal. The order of tables in the file, VIP names and
/// host-local settings (interface, paths, tunnel sources, metrics address,
/// announcement role) do not change it.
pub fn fingerprint(config: &Config, plan: &Plan) -> String {
    let mut h = Fnv(Fnv::OFFSET);
    h.bytes(b"lb-plan-v3");
    forwarding_settings(config, plan, &mut |name, value| {
        h.bytes(name.as_bytes());
        h.bytes(&(value.len() as u32).to_be_bytes());
        h.bytes(value);
    });
    format!("{:016x}", h.0)
}

/// Emits `(setting, value bytes)` for every setting that decides a packet's
/// fate, in an order independent of the file's (VIPs by address, port and
/// protocol; backends by address). Every config struct is destructured
/// without `..`: a new field does not compile until someone decides here
/// whether it forwards, and the fingerprint test requires a change of each
/// emitted setting to change the fingerprint.
fn forwarding_settings(config: &Config, plan: &Plan, emit: &mut dyn FnMut(&'static str, &[u8])) {
    let mut out = Emit(emit);
    // The config source says where the document comes from, not what it says.
    let Config { lb, vips, announce, source: _ } = config;
    // Announcement decides whether packets come to this host (routes, role,
    // drain times), not what the host does with them; an active and a
    // standby host of one cluster must compare equal.
    if let Some(AnnounceConfig { table: _, protocol: _, role: _, drain_timeout: _, drain_quiet: _, liveness: _ }) = announce {}

    let LbSection {
        // Host-local: each host has its own NIC name and addresses (backends
        // accept tunnel packets from any source), and the mode of attachment
        // runs the same program with the same verdicts.
        interface: _,
        xdp_mode: _,
        tunnel_source_v4: _,
        tunnel_source_v6: _,
        ring_size,
        hash_seed,
        // Capacity of the maps: a validated config fits them either way.
        max_vips: _,
        max_backends: _,
        // Where the agent keeps its files and serves its metrics.
        bpffs_dir: _,
        run_dir: _,
        metrics_listen: _,
        // How many established flows keep their backend through a ring change.
        flow_table_size,
        // Reaches the kernel as each VIP's `vip.encap` (emitted there).
        encap: _,
        gue_port,
        // How long second chance lasts after a ring change.
        previous_owner_window,
        // Which new flows the flow table records (0: the guard is off).
        new_flow_guard,
        packets,
    } = lb;
    out.u32("lb.ring_size", *ring_size);
    out.u32("lb.hash_seed", *hash_seed);
    out.u32("lb.flow_table_size", *flow_table_size);
    out.u32("lb.gue_port", u32::from(*gue_port));
    out.u64("lb.previous_owner_window", previous_owner_window.as_millis() as u64);
    out.u32("lb.new_flow_guard", new_flow_guard.unwrap_or(lb_common::flow_guard::GUARD_OFF));
    let PacketPolicy { icmp_echo, too_big, unknown_port } = packets;
    out.str("lb.icmp_echo", choice_name(packets::ECHO_CHOICES, *icmp_echo));
    out.str("lb.too_big", choice_name(packets::TOO_BIG_CHOICES, *too_big));
    out.str("lb.unknown_port", choice_name(packets::UNKNOWN_PORT_CHOICES, *unknown_port));

    let digests: HashMap<_, u64> = plan.vips.iter().map(|v| (v.identity(), v.ring_digest)).collect();
    let mut sorted: Vec<&VipConfig> = vips.iter().collect();
    sorted.sort_by_key(|v| v.identity());
    out.u32("vips", sorted.len() as u32);
    for vip in sorted {
        let VipConfig {
            // A label (metrics, output): nothing in the kernel.
            name: _,
            address,
            port,
            protocol,
            hash,
            fragments,
            flow_state,
            encap,
            backends,
            all_down,
        } = vip;
        out.addr("vip.address", *address);
        out.u32("vip.port", u32::from(*port));
        out.str("vip.protocol", protocol.as_str());
        out.str("vip.hash", hash.as_str());
        out.str("vip.fragments", choice_name(packets::FRAGMENT_CHOICES, *fragments));
        out.str("vip.flow_state", flow_state.as_str());
        out.str("vip.encap", encap.as_str());
        out.str("vip.health.all_down", all_down.as_str());
        let digest = digests.get(&vip.identity()).copied().unwrap_or_default();
        out.u64("vip.ring", digest);
        let mut sorted: Vec<&BackendConfig> = backends.iter().collect();
        sorted.sort_by_key(|b| b.address);
        out.u32("vip.backends", sorted.len() as u32);
        for backend in sorted {
            // `mac`: the plan's, one per backend whichever VIP gives it, as the kernel gets it.
            let BackendConfig { address, weight, mac: _, backup, check } = backend;
            let mac = plan.backend_id(*address).and_then(|id| plan.backend(id)).and_then(|b| b.mac);
            out.addr("vip.backend.address", *address);
            out.u32("vip.backend.weight", *weight);
            out.opt("vip.backend.mac", mac.map(|m| m.0));
            out.u32("vip.backend.backup", u32::from(*backup));
            health_settings(check, &mut out);
        }
    }
}

/// The parts of a health check that decide whether a backend counts as up.
/// Left out: the pacing (`interval`, `fails`, `passes`, `initial`), which
/// only decides when a verdict lands, never which; two hosts' checkers are
/// never in step anyway.
fn health_settings(check: &HealthCheck, out: &mut Emit<'_>) {
    let HealthCheck { kind, interval: _, timeout, fails: _, passes: _, port, uri, host, status, initial: _, dsr } = check;
    out.str("vip.backend.health.check", kind.as_str());
    if *kind == CheckKind::None {
        return;
    }
    out.u64("vip.backend.health.timeout", timeout.as_nanos() as u64);
    out.opt("vip.backend.health.port", port.map(u16::to_be_bytes));
    out.u32("vip.backend.health.dsr", u32::from(*dsr));
    if *kind == CheckKind::Http {
        out.str("vip.backend.health.uri", uri);
        out.opt("vip.backend.health.host", host.as_ref().map(String::as_bytes));
        out.str("vip.backend.health.status", &status.to_string());
    }
}

/// The config's spelling of a choice (stable across agent versions, unlike
/// the variant's name).
fn choice_name<T: Copy + PartialEq>(options: &[(&'static str, T)], value: T) -> &'static str {
    options.iter().find(|(_, v)| *v == value).map_or("?", |(name, _)| name)
}

/// The sink of [`forwarding_settings`], with one encoding per value type.
struct Emit<'a>(&'a mut dyn FnMut(&'static str, &[u8]));

impl Emit<'_> {
    fn u32(&mut self, name: &'static str, v: u32) {
        (self.0)(name, &v.to_be_bytes());
    }

    fn u64(&mut self, name: &'static str, v: u64) {
        (self.0)(name, &v.to_be_bytes());
    }

    fn str(&mut self, name: &'static str, v: &str) {
        (self.0)(name, v.as_bytes());
    }

    fn addr(&mut self, name: &'static str, a: IpAddr) {
        match a {
            IpAddr::V4(v4) => (self.0)(name, &v4.octets()),
            IpAddr::V6(v6) => (self.0)(name, &v6.octets()),
        }
    }

    /// Absent and present differ even when the value is empty.
    fn opt(&mut self, name: &'static str, v: Option<impl AsRef<[u8]>>) {
        match v {
            None => (self.0)(name, &[0]),
            Some(v) => (self.0)(name, &[&[1], v.as_ref()].concat()),
        }
    }
}

/// How a VIP is written everywhere: `192.0.2.10:80/tcp`, `[2001:db8::1]:*/udp`.
pub fn endpoint(address: IpAddr, port: u16, protocol: Protocol) -> String {
    let port = if port == 0 { "*".to_string() } else { port.to_string() };
    match address {
        IpAddr::V4(a) => format!("{a}:{port}/{protocol}"),
        IpAddr::V6(a) => format!("[{a}]:{port}/{protocol}"),
    }
}

/// A readable summary of a validated config and its plan.
pub fn render(config: &Config, plan: &Plan) -> String {
    let lb = &config.lb;
    let mut out = String::new();
    let src = |a: Option<String>| a.unwrap_or_else(|| "from the interface".to_string());
    let _ = writeln!(out, "interface      {} (xdp mode {})", lb.interface, lb.xdp_mode);
    let _ = writeln!(out, "ring size      {} slots per VIP", plan.ring_size);
    let _ = writeln!(out, "hash seed      {}", plan.hash_seed);
    let _ = writeln!(
        out,
        "tunnel source  IPv4 {}, IPv6 {}",
        src(lb.tunnel_source_v4.map(|a| a.to_string())),
        src(lb.tunnel_source_v6.map(|a| a.to_string()))
    );
    let _ = writeln!(
        out,
        "capacity       {} of {} VIPs, {} of {} backend ids",
        plan.vips.len(),
        lb.max_vips,
        plan.backends.len(),
        lb.max_backends - 1
    );
    let _ = writeln!(out, "gue port       {} (previous owners kept {}s after a slot changes)", lb.gue_port, lb.previous_owner_window.as_secs());
    let guard = lb.new_flow_guard.map_or_else(|| "off: every new flow recorded".to_string(), |n| format!("{n} new flows recorded per second per CPU"));
    let _ = writeln!(out, "flow guard     {guard}");
    let _ = writeln!(out, "pinned under   {}", lb.bpffs_dir.display());
    let _ = writeln!(out, "fingerprint    {}", fingerprint(config, plan));

    for vip in &config.vips {
        let Some(pv) = plan.vip(&vip.name) else { continue };
        let hash = match vip.hash {
            HashMode::Flow => "flow (5-tuple)",
            HashMode::Source => "source (client affinity)",
        };
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "vip {:?}  {}  hash {}  row {}  flow state {}  encap {}  ring digest {}",
            vip.name,
            endpoint(vip.address, vip.port, vip.protocol),
            hash,
            pv.row,
            vip.flow_state,
            vip.encap,
            ring_digest::label(pv.ring_digest)
        );
        render_health(&mut out, vip);
        render_backends(&mut out, plan, vip, pv);
    }
    out
}

/// The VIP's health-check settings: one line if every backend has the same
/// check, else one per backend.
fn render_health(out: &mut String, vip: &VipConfig) {
    let first = vip.backends.first().map(|b| &b.check);
    if vip.backends.iter().all(|b| Some(&b.check) == first) {
        let check = first.map_or_else(|| "none".to_string(), |c| c.describe());
        let _ = writeln!(out, "  health {check}; all down: {}", vip.all_down.as_str());
        return;
    }
    let _ = writeln!(out, "  health per backend; all down: {}", vip.all_down.as_str());
    for b in &vip.backends {
        let _ = writeln!(out, "    {}  {}", b.address, b.check.describe());
    }
}

fn render_backends(out: &mut String, plan: &Plan, vip: &VipConfig, pv: &PlannedVip) {
    let width = pv
        .members
        .iter()
        .filter_map(|&(id, _)| plan.backend(id))
        .map(|b| b.address.to_string().len())
        .max()
        .unwrap_or(0)
        .max("backend".len());
    let _ = writeln!(out, "  {:>4}  {:<width$}  {:>6}  {:<7}  {:>8}  {:>7}  next hop", "id", "backend", "weight", "role", "slots", "share");
    for (&(id, weight), &n) in pv.members.iter().zip(&pv.slots) {
        let Some(b) = plan.backend(id) else { continue };
        let backup = vip.backends.iter().any(|c| c.address == b.address && c.backup);
        let share = 100.0 * f64::from(n) / f64::from(plan.ring_size.max(1));
        let hop = b.mac.map_or_else(|| "(resolved at runtime)".to_string(), |m| m.to_string());
        let (role, note) = match (backup, weight) {
            (_, 0) => (if backup { "backup" } else { "primary" }, "  drained"),
            // A backup owns no slot of the all-up ring: it serves only while no primary is up.
            (true, _) => ("backup", "  (serves while no primary is up)"),
            (false, _) => ("primary", ""),
        };
        let _ = writeln!(
            out,
            "  {:>4}  {:<width$}  {:>6}  {:<7}  {:>8}  {:>6.2}%  {}{}",
            id,
            b.address.to_string(),
            weight,
            role,
            n,
            share,
            hop,
            note
        );
    }
}

/// `check --json`: the same facts as [`render`], typed.
#[derive(serde::Serialize)]
pub struct CheckJson {
    pub interface: String,
    pub ring_size: u32,
    pub hash_seed: u32,
    pub fingerprint: String,
    pub vips: Vec<CheckVip>,
}

#[derive(serde::Serialize)]
pub struct CheckVip {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: String,
    pub hash: String,
    pub row: u32,
    pub flow_state: String,
    pub encap: String,
    pub ring_digest: String,
    pub all_down: String,
    pub backends: Vec<CheckBackend>,
}

#[derive(serde::Serialize)]
pub struct CheckBackend {
    pub id: u32,
    pub address: IpAddr,
    pub weight: u32,
    pub backup: bool,
    pub slots: u32,
    pub share: f64,
    pub mac: Option<String>,
    pub health: String,
}

/// The `check --json` document.
pub fn to_json(config: &Config, plan: &Plan) -> CheckJson {
    let vips = config
        .vips
        .iter()
        .filter_map(|v| {
            let pv = plan.vip(&v.name)?;
            let backends = v
                .backends
                .iter()
                .filter_map(|b| {
                    let id = plan.backend_id(b.address)?;
                    let slots = pv.members.iter().position(|&(m, _)| m == id).map_or(0, |i| pv.slots[i]);
                    Some(CheckBackend {
                        id,
                        address: b.address,
                        weight: b.weight,
                        backup: b.backup,
                        slots,
                        share: f64::from(slots) / f64::from(plan.ring_size.max(1)),
                        mac: plan.backend(id).and_then(|p| p.mac).map(|m| m.to_string()),
                        health: b.check.describe(),
                    })
                })
                .collect();
            Some(CheckVip {
                name: v.name.clone(),
                address: v.address,
                port: v.port,
                protocol: v.protocol.to_string(),
                hash: v.hash.to_string(),
                row: pv.row,
                flow_state: v.flow_state.to_string(),
                encap: v.encap.to_string(),
                ring_digest: ring_digest::label(pv.ring_digest),
                all_down: v.all_down.as_str().to_string(),
                backends,
            })
        })
        .collect();
    CheckJson { interface: config.lb.interface.clone(), ring_size: plan.ring_size, hash_seed: plan.hash_seed, fingerprint: fingerprint(config, plan), vips }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::plan::plan;
    use crate::test_config::{TestBackend, TestConfig, TestVip};
    use std::collections::BTreeSet;

    /// Two VIPs, one with a drained backend and a static MAC. `reordered`:
    /// the same data plane written otherwise (VIPs and backends backwards,
    /// other names, another interface).
    fn a_config(reordered: bool) -> TestConfig {
        let order = |mut backends: Vec<TestBackend>| {
            if reordered {
                backends.reverse();
            }
            backends
        };
        let name = |plain, other| if reordered { other } else { plain };
        let b = TestBackend::new;
        let web = order(vec![b("198.51.100.11"), b("198.51.100.12").weight(3)]).into_iter().fold(TestVip::new(name("web", "www"), "192.0.2.10:80"), TestVip::backend);
        let web6 = TestVip::new(name("web6", "v6"), "[2001:db8:f::10]:0").set("hash", "source");
        let web6 = order(vec![b("2001:db8::11").mac("02:00:00:00:00:11"), b("198.51.100.12").weight(0)]).into_iter().fold(web6, TestVip::backend);
        let vips = if reordered { [web6, web] } else { [web, web6] };
        vips.into_iter().fold(TestConfig::new().interface(name("eth0", "eth1")).ring_size(1009), TestConfig::vip)
    }

    fn fp(text: &str) -> String {
        let c = parse(text, "x.toml").unwrap();
        fingerprint(&c, &plan(&c))
    }

    #[test]
    fn fingerprint_ignores_order_and_names() {
        let a = fp(&a_config(false).to_toml());
        assert_eq!(a.len(), 16);
        assert_eq!(a, fp(&a_config(true).to_toml()));
    }

    #[test]
    fn fingerprint_sees_dataplane_changes() {
        let a_text = a_config(false).to_toml();
        let a = fp(&a_text);
        for changed in [
            a_text.replace("ring_size = 1009", "ring_size = 1013"),
            a_text.replace("ring_size = 1009", "ring_size = 1009\nhash_seed = 1"),
            a_text.replace("weight = 3", "weight = 2"),
            a_text.replace("hash = \"source\"", "hash = \"flow\""),
            a_text.replace("port = 80", "port = 81"),
            a_text.replace("02:00:00:00:00:11", "02:00:00:00:00:12"),
            a_text.replace("198.51.100.11", "198.51.100.13"),
        ] {
            assert_ne!(fp(&changed), a, "{changed}");
        }
    }

    /// Every forwarding setting written out, so that each can be flipped.
    const ALL: &str = r#"
[lb]
interface = "eth0"
ring_size = 1009
hash_seed = 0
flow_table_size = 4096
gue_port = 6080
previous_owner_window = "1h"
new_flow_guard = 125000
encap = "ipip"
icmp_echo = "reply"
too_big = "icmp"
unknown_port = "pass"
[[vip]]
name = "web"
address = "192.0.2.10"
port = 80
protocol = "tcp"
hash = "flow"
fragments = "drop"
flow_state = "lb"
  [vip.health]
  check = "http"
  timeout = "1s"
  port = 8080
  dsr = false
  uri = "/healthz"
  host = "web.example"
  status = "200-399"
  all_down = "drop"
  [[vip.backend]]
  address = "198.51.100.11"
  weight = 2
  mac = "02:00:00:00:00:11"
  backup = false
  [[vip.backend]]
  address = "198.51.100.12"
"#;

    /// For each setting [`forwarding_settings`] emits, an edit of [`ALL`]
    /// that changes it: (setting, text, replacement).
    const FLIPS: &[(&str, &str, &str)] = &[
        ("lb.ring_size", "ring_size = 1009", "ring_size = 1013"),
        ("lb.hash_seed", "hash_seed = 0", "hash_seed = 1"),
        ("lb.flow_table_size", "flow_table_size = 4096", "flow_table_size = 8192"),
        ("lb.icmp_echo", "icmp_echo = \"reply\"", "icmp_echo = \"pass\""),
        ("lb.too_big", "too_big = \"icmp\"", "too_big = \"drop\""),
        ("lb.unknown_port", "unknown_port = \"pass\"", "unknown_port = \"drop\""),
        ("vips", "[[vip]]", "[[vip]]\nname = \"other\"\naddress = \"192.0.2.20\"\nport = 1\n[[vip.backend]]\naddress = \"198.51.100.13\"\n[[vip]]"),
        ("vip.address", "192.0.2.10", "192.0.2.11"),
        ("vip.port", "port = 80", "port = 81"),
        ("vip.protocol", "protocol = \"tcp\"", "protocol = \"udp\""),
        ("vip.hash", "hash = \"flow\"", "hash = \"source\""),
        ("vip.fragments", "fragments = \"drop\"", "fragments = \"forward\""),
        ("vip.flow_state", "flow_state = \"lb\"", "flow_state = \"none\""),
        ("vip.encap", "encap = \"ipip\"", "encap = \"gue\""),
        ("lb.gue_port", "gue_port = 6080", "gue_port = 6081"),
        ("lb.previous_owner_window", "previous_owner_window = \"1h\"", "previous_owner_window = \"2h\""),
        ("lb.new_flow_guard", "new_flow_guard = 125000", "new_flow_guard = \"off\""),
        ("vip.health.all_down", "all_down = \"drop\"", "all_down = \"fail_open\""),
        ("vip.backends", "  [[vip.backend]]\n  address = \"198.51.100.12\"", "  [[vip.backend]]\n  address = \"198.51.100.12\"\n  [[vip.backend]]\n  address = \"198.51.100.13\"\n  weight = 0"),
        ("vip.backend.address", "198.51.100.12", "198.51.100.13"),
        ("vip.backend.weight", "weight = 2", "weight = 3"),
        ("vip.backend.mac", "02:00:00:00:00:11", "02:00:00:00:00:12"),
        ("vip.backend.backup", "backup = false", "backup = true"),
        ("vip.backend.health.check", "check = \"http\"", "check = \"tcp\""),
        ("vip.backend.health.timeout", "timeout = \"1s\"", "timeout = \"2s\""),
        ("vip.backend.health.port", "port = 8080", "port = 8081"),
        ("vip.backend.health.dsr", "dsr = false", "dsr = true"),
        ("vip.backend.health.uri", "/healthz", "/ready"),
        ("vip.backend.health.host", "web.example", "www.example"),
        ("vip.backend.health.status", "200-399", "200"),
    ];

    fn emitted(text: &str) -> BTreeSet<&'static str> {
        let c = parse(text, "x.toml").unwrap();
        let mut names = BTreeSet::new();
        forwarding_settings(&c, &plan(&c), &mut |name, _| {
            names.insert(name);
        });
        names
    }

    #[test]
    fn fingerprint_sees_every_forwarding_setting() {
        // Each setting the fingerprint covers has a flip here, and each flip
        // changes the fingerprint. (`vip.ring` is the plan's: flipped below.)
        let flipped: BTreeSet<&str> = FLIPS.iter().map(|(name, _, _)| *name).chain(["vip.ring"]).collect();
        assert_eq!(emitted(ALL), flipped, "every setting in forwarding_settings needs a flip in FLIPS");
        let base = fp(ALL);
        for (name, from, to) in FLIPS {
            assert!(ALL.contains(from), "{name}: {from:?} not in ALL");
            assert_ne!(fp(&ALL.replacen(from, to, 1)), base, "{name}: {from:?} -> {to:?} must change the fingerprint");
        }
        // A ring built otherwise (another agent version's Maglev).
        let c = parse(ALL, "x.toml").unwrap();
        let mut p = plan(&c);
        p.vips[0].ring_digest ^= 1;
        assert_ne!(fingerprint(&c, &p), base, "vip.ring");
        // Health fields that a check of another kind ignores are not emitted.
        let tcp = emitted(&ALL.replace("check = \"http\"", "check = \"tcp\""));
        assert!(tcp.contains("vip.backend.health.port") && !tcp.contains("vip.backend.health.uri"), "{tcp:?}");
    }

    #[test]
    fn fingerprint_leaves_out_host_local_and_pacing_settings() {
        let base = fp(ALL);
        for (from, to) in [
            ("interface = \"eth0\"", "interface = \"ens5\"\nxdp_mode = \"generic\"\ntunnel_source_v4 = \"198.51.100.3\""),
            ("ring_size = 1009", "ring_size = 1009\nmax_vips = 7\nmax_backends = 99\nbpffs_dir = \"/sys/fs/bpf/x\"\nrun_dir = \"/run/x\""),
            ("ring_size = 1009", "ring_size = 1009\nmetrics_listen = \"off\""),
            ("name = \"web\"", "name = \"www\""),
            ("timeout = \"1s\"", "timeout = \"1s\"\ninterval = \"9s\"\nfails = 3\npasses = 2\ninitial = \"down\""),
        ] {
            assert_eq!(fp(&ALL.replacen(from, to, 1)), base, "{to}");
        }
        let announced = format!("{ALL}\n[announce]\nrole = \"standby\"\ntable = 251\n");
        assert_eq!(fp(&announced), base);
        // A MAC given under one VIP is the backend's under all (one next hop).
        let shared = "[[vip]]\nname = \"b\"\naddress = \"192.0.2.11\"\nport = 80\n[[vip.backend]]\naddress = \"198.51.100.11\"\n";
        let with_mac = format!("{ALL}{shared}mac = \"02:00:00:00:00:11\"\n");
        assert_eq!(fp(&format!("{ALL}{shared}")), fp(&with_mac));
    }

    #[test]
    fn render_shows_everything() {
        let c = a_config(false).parse();
        let p = plan(&c);
        let text = render(&c, &p);
        for needle in [
            "eth0",
            "xdp mode auto",
            "1009 slots",
            "hash seed      0",
            &fingerprint(&c, &p),
            "vip \"web\"  192.0.2.10:80/tcp  hash flow",
            "vip \"web6\"  [2001:db8:f::10]:*/tcp  hash source",
            "02:00:00:00:00:11",
            "drained",
            "198.51.100.12",
        ] {
            assert!(text.contains(needle), "{needle:?} not in:\n{text}");
        }
        // Slot counts in the web table add up to the ring.
        let web = p.vip("web").unwrap();
        let rows: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("vip \"web\"")).skip(3).take(2).collect();
        let total: u32 = rows.iter().map(|l| l.split_whitespace().nth(4).unwrap().parse::<u32>().unwrap()).sum();
        assert_eq!(total, web.ring().len() as u32, "{text}");
        assert!(text.contains(&format!("ring digest {}", ring_digest::label(web.ring_digest))), "{text}");
    }

    /// A backup is labelled as one, and each VIP's health-check settings are printed.
    #[test]
    fn render_labels_backups_and_prints_health_settings() {
        let web = TestVip::new("web", "192.0.2.10:80").checked().backend(TestBackend::new("198.51.100.11")).backend(TestBackend::new("198.51.100.12").backup());
        let c = TestConfig::new().ring_size(1009).vip(web).parse();
        let text = render(&c, &plan(&c));
        let backup = text.lines().find(|l| l.contains("198.51.100.12")).unwrap();
        assert!(backup.contains("backup") && backup.contains("serves while no primary is up"), "{text}");
        assert!(text.lines().find(|l| l.contains("198.51.100.11")).unwrap().contains("primary"), "{text}");
        let health = text.lines().find(|l| l.trim_start().starts_with("health ")).expect("a health line");
        assert!(health.contains(&c.vips[0].backends[0].check.describe()) && health.contains("tcp"), "{health}");
        let json = serde_json::to_value(to_json(&c, &plan(&c))).unwrap();
        assert_eq!(json["vips"][0]["backends"][1]["backup"], true);
        assert_eq!(json["vips"][0]["ring_digest"].as_str().unwrap().len(), 16);
    }
}

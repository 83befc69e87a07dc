//! Everything about `lb-agent` as a black box: where its binary is, the config
//! the tests give it, and the output of `stats --json` and `lookup`.

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::topology::{LB_V4, LB_V6, VIP_V4, VIP_V6, backend_v4, backend_v6};

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `$LB_AGENT_BIN`, else `<target dir>/debug/lb-agent`; not checked.
pub fn agent_bin_path() -> PathBuf {
    match std::env::var_os("LB_AGENT_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        // Like cargo: CARGO_TARGET_DIR if set, else the workspace's target/.
        _ => std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| workspace_root().join("target"), PathBuf::from)
            .join("debug/lb-agent"),
    }
}

/// [`agent_bin_path`], failing with what to do when it does not exist.
pub fn agent_bin() -> Result<PathBuf> {
    let p = agent_bin_path();
    if !p.is_file() {
        bail!(
            "lb-agent binary not found at {} (set LB_AGENT_BIN or build it): run `cargo xtask test`, or `cargo xtask build` and then the tests",
            p.display()
        );
    }
    Ok(p)
}

/// TCP or UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            other => bail!("unknown protocol {other:?} (tcp or udp)"),
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the tests need to know of one `[[vip]]` of a config.
#[derive(Clone, Debug, PartialEq)]
pub struct VipSpec {
    pub name: String,
    pub address: IpAddr,
    /// 0 = every port.
    pub port: u16,
    pub protocol: Proto,
    pub backends: Vec<IpAddr>,
}

impl VipSpec {
    /// The port to send test traffic to (80 / 53 for an all-ports VIP).
    pub fn test_port(&self) -> u16 {
        match (self.port, self.protocol) {
            (0, Proto::Tcp) => 80,
            (0, Proto::Udp) => 53,
            (p, _) => p,
        }
    }

    pub fn target(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.test_port())
    }
}

/// Reads the `[[vip]]` tables of an agent config (fields other than these are ignored).
pub fn vips_of(config: &toml::Table) -> Result<Vec<VipSpec>> {
    let Some(vips) = config.get("vip") else {
        return Ok(Vec::new());
    };
    let vips = vips.as_array().context("`vip` is not an array of tables")?;
    vips.iter()
        .enumerate()
        .map(|(i, v)| {
            let t = v
                .as_table()
                .with_context(|| format!("vip #{i} is not a table"))?;
            let s = |k: &str| {
                t.get(k)
                    .and_then(|v| v.as_str())
                    .with_context(|| format!("vip #{i}: missing string `{k}`"))
            };
            let address: IpAddr = s("address")?
                .parse()
                .with_context(|| format!("vip #{i}: bad address"))?;
            let port = t.get("port").and_then(|v| v.as_integer()).unwrap_or(0);
            let port = u16::try_from(port).map_err(|_| anyhow!("vip #{i}: bad port {port}"))?;
            let protocol = Proto::parse(s("protocol")?).with_context(|| format!("vip #{i}"))?;
            let name = t
                .get("name")
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| format!("{address}:{port}/{protocol}"));
            let backends = match t.get("backend") {
                None => Vec::new(),
                Some(b) => b
                    .as_array()
                    .with_context(|| format!("vip #{i}: `backend` is not an array"))?
                    .iter()
                    .map(|b| {
                        b.get("address")
                            .and_then(|a| a.as_str())
                            .with_context(|| format!("vip #{i}: backend without address"))?
                            .parse::<IpAddr>()
                            .with_context(|| format!("vip #{i}: bad backend address"))
                    })
                    .collect::<Result<_>>()?,
            };
            Ok(VipSpec {
                name,
                address,
                port,
                protocol,
                backends,
            })
        })
        .collect()
}

/// Sets `[lb] bpffs_dir`, keeping everything else of the config.
pub fn set_bpffs_dir(config: &mut toml::Table, dir: &Path) -> Result<()> {
    let lb = config
        .entry("lb")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let lb = lb.as_table_mut().context("`lb` is not a table")?;
    lb.insert(
        "bpffs_dir".into(),
        toml::Value::String(dir.to_string_lossy().into_owned()),
    );
    Ok(())
}

/// Sets `[lb] run_dir` (lock file and control socket of the agent).
pub fn set_run_dir(config: &mut toml::Table, dir: &Path) -> Result<()> {
    let lb = config.entry("lb").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let lb = lb.as_table_mut().context("`lb` is not a table")?;
    lb.insert("run_dir".into(), toml::Value::String(dir.to_string_lossy().into_owned()));
    Ok(())
}

/// The config of the end-to-end tests: TCP VIPs 192.0.2.10:80 and
/// [2001:db8:f::10]:80 and UDP VIP 192.0.2.10:53, each on all `backends`
/// (of the VIP's family), weight 1. `bpffs_dir` is set by the lab.
pub fn e2e_config(backends: usize) -> toml::Table {
    let mut s = format!(
        "[lb]\ninterface = \"eth0\"\ntunnel_source_v4 = \"{LB_V4}\"\ntunnel_source_v6 = \"{LB_V6}\"\nbpffs_dir = \"/unset\"\n"
    );
    let vips: [(&str, IpAddr, u16, Proto); 3] = [
        ("web-v4", VIP_V4.into(), 80, Proto::Tcp),
        ("web-v6", VIP_V6.into(), 80, Proto::Tcp),
        ("dns-v4", VIP_V4.into(), 53, Proto::Udp),
    ];
    for (name, addr, port, proto) in vips {
        s += &format!(
            "\n[[vip]]\nname = \"{name}\"\naddress = \"{addr}\"\nport = {port}\nprotocol = \"{proto}\"\n"
        );
        for i in 1..=backends {
            let b: IpAddr = if addr.is_ipv4() {
                backend_v4(i).into()
            } else {
                backend_v6(i).into()
            };
            s += &format!("\n[[vip.backend]]\naddress = \"{b}\"\nweight = 1\n");
        }
    }
    s.parse().expect("the generated e2e config is valid TOML")
}

/// A packet and byte counter as `stats --json` prints it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Count {
    #[serde(default)]
    pub packets: u64,
    #[serde(default)]
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct BackendStats {
    pub address: String,
    #[serde(default)]
    pub packets: u64,
    #[serde(default)]
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct VipStats {
    #[serde(default)]
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub packets: u64,
    #[serde(default)]
    pub bytes: u64,
    /// The VIP's configured backends, with what the VIP sent each (totals
    /// over all VIPs per backend are in [`Stats::backends`]).
    #[serde(default)]
    pub backends: Vec<Member>,
    /// `up`, `degraded`, `backup`, `down`, `down_fail_open` (health checks).
    #[serde(default)]
    pub health: Option<String>,
}

/// A backend of a VIP, as listed under the VIP.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Member {
    pub address: String,
    #[serde(default)]
    pub weight: u32,
    #[serde(default)]
    pub backup: bool,
    /// `up`, `down` or `unchecked`.
    #[serde(default)]
    pub state: Option<String>,
    /// Of the last check: `passed`, `timeout`, `refused`, `http_status 500`, ...
    #[serde(default)]
    pub reason: Option<String>,
    /// Wall-clock time of the last state change (ms since the epoch).
    #[serde(default)]
    pub since_unix_ms: Option<u64>,
    /// What the VIP sent to this backend.
    #[serde(default)]
    pub packets: u64,
    #[serde(default)]
    pub bytes: u64,
}

impl VipStats {
    pub fn is(&self, address: IpAddr, port: u16, protocol: Proto) -> bool {
        self.address.parse::<IpAddr>().ok() == Some(address)
            && self.port == port
            && self.protocol.eq_ignore_ascii_case(protocol.as_str())
    }

    /// The addresses of the VIP's backends.
    pub fn member_addresses(&self) -> Vec<IpAddr> {
        self.backends.iter().filter_map(|b| b.address.parse().ok()).collect()
    }
}

/// The output of `lb-agent stats --json`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Stats {
    #[serde(default)]
    pub vips: Vec<VipStats>,
    /// Per backend address, summed over the VIPs that share it.
    #[serde(default)]
    pub backends: Vec<BackendStats>,
    #[serde(default)]
    pub reasons: BTreeMap<String, Count>,
    /// The flow table's `hit`, `miss` and `rehash` counts.
    #[serde(default)]
    pub flows: BTreeMap<String, Count>,
}

impl Stats {
    pub fn parse(json: &str) -> Result<Stats> {
        serde_json::from_str(json.trim())
            .with_context(|| format!("`lb-agent stats --json` printed something else: {json:?}"))
    }

    pub fn vip(&self, address: IpAddr, port: u16, protocol: Proto) -> Result<&VipStats> {
        self.vips
            .iter()
            .find(|v| v.is(address, port, protocol))
            .with_context(|| format!("no VIP {address} port {port} {protocol} in stats: {self:?}"))
    }

    /// Packets counted under a reason label (`forwarded`, `no_vip`, ...), 0 if absent.
    pub fn reason(&self, label: &str) -> u64 {
        self.reasons.get(label).map(|c| c.packets).unwrap_or(0)
    }

    /// Packets of the backend with `address`, 0 if it is not listed.
    pub fn backend_packets(&self, address: IpAddr) -> u64 {
        self.backends.iter().filter(|b| b.address.parse::<IpAddr>().ok() == Some(address)).map(|b| b.packets).sum()
    }

    /// Packets counted under a flow-table event (`hit`, `miss`, `rehash`), 0 if absent.
    pub fn flow(&self, label: &str) -> u64 {
        self.flows.get(label).map(|c| c.packets).unwrap_or(0)
    }

    pub fn vip_packets_total(&self) -> u64 {
        self.vips.iter().map(|v| v.packets).sum()
    }
}

/// Parses the stdout of `lb-agent lookup`: one backend address.
pub fn parse_lookup(stdout: &str) -> Result<IpAddr> {
    // The first line; a "backend" VIP's second names the previous owner.
    let t = stdout.lines().next().unwrap_or_default().trim();
    t.parse::<IpAddr>()
        .or_else(|_| t.parse::<SocketAddr>().map(|s| s.ip()))
        .with_context(|| format!("`lb-agent lookup` printed {t:?}, not a backend address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2e_config_has_three_vips_and_backends() {
        let mut c = e2e_config(3);
        set_bpffs_dir(&mut c, Path::new("/run/lbt1-0/bpf")).unwrap();
        assert_eq!(c["lb"]["bpffs_dir"].as_str(), Some("/run/lbt1-0/bpf"));
        assert_eq!(c["lb"]["interface"].as_str(), Some("eth0"));
        let vips = vips_of(&c).unwrap();
        assert_eq!(vips.len(), 3);
        assert_eq!(vips[1].address, IpAddr::from(VIP_V6));
        assert_eq!(vips[1].backends[2].to_string(), "2001:db8::13");
        assert_eq!(vips[2].protocol, Proto::Udp);
        assert_eq!(vips[2].target().to_string(), "192.0.2.10:53");
        assert_eq!(vips[0].backends[0].to_string(), "198.51.100.11");
    }

    #[test]
    fn all_ports_vip_uses_default_test_port() {
        let c: toml::Table = "[[vip]]\naddress = \"192.0.2.20\"\nprotocol = \"UDP\"\n"
            .parse()
            .unwrap();
        let v = &vips_of(&c).unwrap()[0];
        assert_eq!(
            (v.port, v.test_port(), v.name.as_str()),
            (0, 53, "192.0.2.20:0/udp")
        );
        assert!(
            vips_of(
                &"[[vip]]\naddress = \"x\"\nprotocol = \"tcp\"\n"
                    .parse()
                    .unwrap()
            )
            .is_err()
        );
    }

    /// Parses what the agent's own `stats --json` renderer prints for the
    /// e2e config, with known counters.
    #[test]
    fn stats_json_from_the_agent_renderer() {
        let text = toml::to_string(&e2e_config(3)).unwrap();
        let config = lb_agent::config::parse(&text, "e2e.toml").unwrap();
        let plan = lb_agent::plan::plan(&config);
        let web = plan.vips.iter().find(|v| v.port() == 80 && v.address() == IpAddr::from(VIP_V4)).unwrap();
        let b12 = plan.backend_id("198.51.100.12".parse().unwrap()).unwrap();
        // The web VIP sent 80 packets to .12 and 120 to .11.
        let b11 = plan.backend_id("198.51.100.11".parse().unwrap()).unwrap();
        let max_backends = plan.backends.len() as u32 + 1;
        let mut members = vec![lb_common::Counter::default(); plan.vips.len() * max_backends as usize];
        members[lb_common::flows::member_index(web.row, b12, max_backends) as usize] = lb_common::Counter { packets: 80, bytes: 4000 };
        members[lb_common::flows::member_index(web.row, b11, max_backends) as usize] = lb_common::Counter { packets: 120, bytes: 5000 };
        let mut counters = lb_agent::dataplane::Counters {
            reasons: vec![Default::default(); lb_common::Reason::COUNT as usize],
            ..Default::default()
        }
        .with_members(members, max_backends);
        counters.reasons[lb_common::Reason::Forwarded as usize] = lb_common::Counter { packets: 200, bytes: 9000 };
        let json = lb_agent::stats::to_json(&plan, &counters).to_string();

        let s = Stats::parse(&json).unwrap();
        let v = s.vip(VIP_V4.into(), 80, Proto::Tcp).unwrap();
        assert_eq!(v.packets, 200);
        assert_eq!(v.member_addresses().len(), 3);
        let member = |a: &str| v.backends.iter().find(|m| m.address == a).map(|m| (m.packets, m.bytes));
        assert_eq!((member("198.51.100.11"), member("198.51.100.12")), (Some((120, 5000)), Some((80, 4000))));
        assert_eq!(s.backend_packets("198.51.100.12".parse().unwrap()), 80);
        assert_eq!(s.backend_packets("198.51.100.13".parse().unwrap()), 0);
        assert_eq!(s.reason("forwarded"), 200);
        assert_eq!(s.reason("no_backend"), 0);
        assert_eq!(s.vip_packets_total(), 200);
        assert!(s.vip(VIP_V4.into(), 443, Proto::Udp).is_err());
        assert!(Stats::parse("vip web 12 packets").is_err());
    }

    #[test]
    fn lookup_output() {
        assert_eq!(
            parse_lookup("198.51.100.12\n").unwrap().to_string(),
            "198.51.100.12"
        );
        assert_eq!(
            parse_lookup("2001:db8::13").unwrap().to_string(),
            "2001:db8::13"
        );
        assert_eq!(
            parse_lookup("[2001:db8::13]:0\n").unwrap().to_string(),
            "2001:db8::13"
        );
        assert!(parse_lookup("b1").is_err());
    }
}

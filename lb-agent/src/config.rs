//! The agent's TOML configuration: parsing, defaults and validation.
//!
//! Parsing is done in two steps. serde reads the file into "raw" structs
//! (`#[serde(deny_unknown_fields)]` everywhere, addresses and enum values kept
//! as strings, integers as `i64`), so that a typo in a value does not stop the
//! parse at the first error. Validation then checks every field and collects
//! **all** problems, each naming the file, the field path
//! (`vip "web".backend[2].address`, or `vip[3]...` when the VIP has no usable
//! name) and the offending value. A config with any problem is rejected as a
//! whole: nothing that runs is changed by a bad file.
//!
//! ```toml
//! [lb]
//! interface = "eth0"
//!
//! [[vip]]
//! name = "web"
//! address = "192.0.2.10"
//! port = 80
//! protocol = "tcp"
//!
//!   [[vip.backend]]
//!   address = "198.51.100.11"
//! ```

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use lb_common::limits;
use serde::Deserialize;

use crate::health::settings::{self as health, AllDownPolicy, HealthCheck, RawHealth};
use crate::maglev::is_prime;
use crate::packet_policy::{self as packets, FragmentPolicy, PacketPolicy};

// ---------------------------------------------------------------------------
// Defaults and limits, with their reasons.
// ---------------------------------------------------------------------------

/// `auto`: let the kernel attach in native (driver) mode when the NIC supports
/// it and fall back to generic (skb) mode otherwise, so the same config works
/// on a production NIC and on a veth in a test namespace.
pub const DEFAULT_XDP_MODE: XdpMode = XdpMode::Auto;

/// 65,537 (a prime): the Maglev paper's own choice. At 1,000 backends every
/// backend still gets ~65 slots (balance within a few %), and a ring costs
/// 256 KiB per VIP.
pub const DEFAULT_RING_SIZE: u32 = limits::DEFAULT_RING_SIZE;

/// The smallest ring accepted: Maglev needs a prime, and a ring of 2 slots has
/// a single permutation step (skip is always 1). Rings this small are only
/// useful in tests that enumerate slots; production wants 100× the backends.
pub const MIN_RING_SIZE: u32 = 3;

/// The largest ring accepted (16 MiB per VIP), shared with the kernel side.
pub const MAX_RING_SIZE: u32 = limits::MAX_RING_SIZE;

/// 0: any fixed value works; what matters is that every LB host of a cluster
/// uses the same one, and the default is the value nobody has to remember.
pub const DEFAULT_HASH_SEED: u32 = 0;

/// 64 VIP rows: enough for a typical LB host, and 64 rings of the default size
/// are 16 MiB of kernel memory.
pub const DEFAULT_MAX_VIPS: u32 = limits::DEFAULT_MAX_VIPS;

/// Upper bound of `max_vips`: VIP rows beyond that are better served by more
/// LB hosts than by one huge `RINGS` array.
pub const MAX_MAX_VIPS: u32 = 4_096;

/// 4,096 backend ids (id 0 is reserved for "no backend", so 4,095 usable).
pub const DEFAULT_MAX_BACKENDS: u32 = limits::DEFAULT_MAX_BACKENDS;

/// Upper bound of `max_backends`: `BACKEND_STATS` is per-CPU (16 bytes per id
/// per CPU), 65,536 ids on 128 CPUs is already 128 MiB.
pub const MAX_MAX_BACKENDS: u32 = 65_536;

/// All rings together (`ring_size × max_vips × 4` bytes) must fit in 1 GiB:
/// the kernel allocates `RINGS` up front, whether the rows are used or not.
pub const MAX_RINGS_BYTES: u64 = 1 << 30;

/// Where the agent pins its maps (`lb-agent stats` reads them there).
/// `/sys/fs/bpf` is the conventional bpffs mount.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/lb";

/// Where a running agent keeps its lock file and control socket
/// (`<run_dir>/<interface>.lock`, `<run_dir>/<interface>.sock`): a tmpfs that a
/// reboot empties, like the agent's state.
pub const DEFAULT_RUN_DIR: &str = "/run/lb";

/// Flows the kernel remembers (see `lb_common::flows`).
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = lb_common::flows::DEFAULT_FLOW_TABLE_SIZE;

/// `MEMBERS` holds `max_vips × max_backends` entries, allocated up front
/// (8 bytes each): at most 64 Mi entries (512 MiB).
pub const MAX_MEMBER_ENTRIES: u64 = 1 << 26;
/// Default `lb.metrics_listen`: loopback only, so nothing is exposed beyond
/// the host until the operator chooses an address.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9110";

/// `lb.metrics_listen` value that turns the metrics endpoint off.
pub const METRICS_OFF: &str = "off";

/// 1: all backends equal unless the config says otherwise.
pub const DEFAULT_WEIGHT: u32 = 1;

/// Largest backend weight. Maglev's ring has a finite number of slots; with
/// weights up to 1,000 a weight-1 backend next to a weight-1,000 one still
/// gets dozens of slots on the default ring, so the ratio stays meaningful.
pub const MAX_WEIGHT: u32 = 1_000;

/// Longest VIP name (it is used as a metrics label).
pub const MAX_NAME_LEN: usize = 64;

/// Linux `IFNAMSIZ` minus the terminating NUL.
pub const MAX_IFNAME_LEN: usize = 15;

/// Longest path the kernel accepts from a system call (`PATH_MAX` minus
/// the terminating NUL): a longer pin path fails with `ENAMETOOLONG`.
pub const MAX_PATH_LEN: usize = libc::PATH_MAX as usize - 1;

/// Longest name of one path component (`NAME_MAX`).
pub const MAX_PATH_COMPONENT_LEN: usize = libc::NAME_MAX as usize;

// ---------------------------------------------------------------------------
// The validated config.
// ---------------------------------------------------------------------------

/// A validated configuration. Only [`parse`] and [`load`] build one, so every
/// value here has passed the checks documented on its field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The `[lb]` table: host-wide settings.
    pub lb: LbSection,
    /// The `[[vip]]` tables, in file order (the plan sorts them; order in the
    /// file never matters to the dataplane).
    pub vips: Vec<VipConfig>,
    /// The `[announce]` table: route announcement for several LB hosts
    /// (see [`crate::announce`]). Absent: nothing is announced.
    pub announce: Option<crate::announce::AnnounceConfig>,
}

/// The `[lb]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbSection {
    /// `interface`: required. The NIC the balancer attaches to. Only its
    /// syntax is checked here (1 to 15 characters, no `/`, `:` or whitespace,
    /// not `.` or `..`, as the kernel's `dev_valid_name`); whether it exists
    /// is checked by the runtime, so `check` works on any machine.
    pub interface: String,
    /// `xdp_mode`: `"auto"` (default, see [`DEFAULT_XDP_MODE`]), `"native"` or `"generic"`.
    pub xdp_mode: XdpMode,
    /// `tunnel_source_v4`: optional outer source address of IPv4 tunnel
    /// packets. Default `None`: the runtime uses the interface's IPv4 address.
    /// Must be IPv4, and not unspecified, multicast or broadcast.
    pub tunnel_source_v4: Option<Ipv4Addr>,
    /// `tunnel_source_v6`: the same for IPv6 tunnels. Default `None`: the
    /// runtime uses the interface's global IPv6 address.
    pub tunnel_source_v6: Option<Ipv6Addr>,
    /// `ring_size`: slots per Maglev ring. Default [`DEFAULT_RING_SIZE`];
    /// must be a prime in [`MIN_RING_SIZE`]`..=`[`MAX_RING_SIZE`] (Maglev's
    /// permutations only cover every slot when the size is prime).
    pub ring_size: u32,
    /// `hash_seed`: seed of the flow hash. Default [`DEFAULT_HASH_SEED`].
    /// Must be identical on all LB hosts of a cluster, or a flow that ECMP
    /// moves to another LB host lands on another backend.
    pub hash_seed: u32,
    /// `max_vips`: VIP rows reserved in the kernel maps. Default
    /// [`DEFAULT_MAX_VIPS`], range `1..=`[`MAX_MAX_VIPS`]; the number of
    /// `[[vip]]` tables must not exceed it. Changing it means reloading the
    /// program, so leave room for growth.
    pub max_vips: u32,
    /// `max_backends`: backend ids reserved in the kernel maps. Default
    /// [`DEFAULT_MAX_BACKENDS`], range `2..=`[`MAX_MAX_BACKENDS`]. Id 0 means
    /// "no backend", so the distinct backend addresses (over all VIPs; an
    /// address used by two VIPs counts once) must be fewer than this. Also,
    /// `ring_size × max_vips × 4` bytes must stay within [`MAX_RINGS_BYTES`].
    pub max_backends: u32,
    /// `bpffs_dir`: where the maps are pinned. Default
    /// [`DEFAULT_BPFFS_DIR`]; must be an absolute path short enough for the
    /// kernel: each component at most [`MAX_PATH_COMPONENT_LEN`] bytes, and
    /// the longest pin path the agent creates in it (see
    /// [`crate::pin_names`]) at most [`MAX_PATH_LEN`]. Use a different
    /// directory per agent instance on one host.
    pub bpffs_dir: PathBuf,
    /// `run_dir`: where the running agent's lock file and control socket
    /// live. Default [`DEFAULT_RUN_DIR`]; must be an absolute path.
    pub run_dir: PathBuf,
    /// `flow_table_size`: flows the kernel remembers (an LRU table: the least
    /// recently used flow is forgotten first). Default
    /// [`DEFAULT_FLOW_TABLE_SIZE`], range `MIN_FLOW_TABLE_SIZE..=MAX_FLOW_TABLE_SIZE`.
    /// The minimum because the table is a per-CPU LRU (`BPF_F_NO_COMMON_LRU`):
    /// the kernel splits the entries evenly over the possible CPUs and each
    /// CPU evicts from its own share, so a smaller table keeps a handful of
    /// flows per CPU on a many-CPU host.
    pub flow_table_size: u32,
    /// `metrics_listen`: `ADDRESS:PORT` where `lb-agent run` serves Prometheus
    /// metrics at `/metrics`. Default [`DEFAULT_METRICS_LISTEN`];
    /// [`METRICS_OFF`] (`"off"`) = `None`, no endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// `icmp_echo`, `too_big`, `unknown_port`: what happens to ICMP echo,
    /// too-big packets and unconfigured ports of VIP addresses (defaults in
    /// [`PacketPolicy::default`]).
    pub packets: PacketPolicy,
}

/// One `[[vip]]` table: a virtual service.
///
/// Two VIPs may share an address and protocol when their ports differ. A VIP
/// with port 0 on the same address and protocol as a VIP with a specific port
/// is allowed: the specific port wins, port 0 is the fallback for every other
/// port (the kernel looks up the exact port first, then port 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipConfig {
    /// `name`: required, unique, 1 to 64 of `A-Z a-z 0-9 _ . -` (it is used
    /// as a metrics label and in `lb-agent` output).
    pub name: String,
    /// `address`: required, IPv4 or IPv6; an address a packet can carry on
    /// the wire to a host: not unspecified, multicast, broadcast, loopback,
    /// in `0.0.0.0/8`, nor IPv4-mapped IPv6 (see `Validator::service_address`).
    pub address: IpAddr,
    /// `port`: required, `0..=65535`; 0 matches every port of this address
    /// and protocol (see the type's documentation for how it combines).
    pub port: u16,
    /// `protocol`: `"tcp"` (default: most services are TCP) or `"udp"`.
    pub protocol: Protocol,
    /// `hash`: `"flow"` (default: the 5-tuple spreads one client's
    /// connections over all backends) or `"source"` (source address only:
    /// client affinity, all of a client's flows go to one backend).
    pub hash: HashMode,
    /// `fragments`: `"drop"` (default) or `"forward"`; see [`FragmentPolicy`].
    pub fragments: FragmentPolicy,
    /// `flow_table`: default true: established flows stay on their backend
    /// while it is usable, whatever happens to the ring. `false`: stateless
    /// (every packet follows the ring).
    pub flow_table: bool,
    /// The `[[vip.backend]]` tables: at least one, distinct addresses, and at
    /// least one with weight > 0.
    pub backends: Vec<BackendConfig>,
    /// `health.all_down`: what the VIP does when no backend is up. Default
    /// [`AllDownPolicy::Drop`].
    pub all_down: AllDownPolicy,
}

/// One `[[vip.backend]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    /// `address`: required, IPv4 or IPv6 (either family for either family of
    /// VIP: the packet is tunnelled). It is also the backend's identity in
    /// the Maglev permutation, so the position in the file never matters.
    /// The same checks as a VIP's address, and not a VIP's address nor a
    /// tunnel source (both are the LB host's own).
    pub address: IpAddr,
    /// `weight`: default [`DEFAULT_WEIGHT`], `0..=`[`MAX_WEIGHT`]. Share of the
    /// ring relative to the VIP's other backends; 0 = drained (kept in the
    /// config and in the maps, but owns no ring slot).
    pub weight: u32,
    /// `mac`: optional static next-hop MAC (`aa:bb:cc:dd:ee:ff`) for packets
    /// to this backend. Default `None`: resolved from the kernel's routing and
    /// neighbour tables at runtime. Must be a unicast, non-zero MAC. A fact of
    /// the backend, not of the pair: the kernel has one next hop per backend
    /// address, so every VIP that gives one must give the same, and one given
    /// under any VIP applies under all ([`crate::plan::PlannedBackend::mac`]).
    pub mac: Option<MacAddr>,
    /// `backup`: default false. A backup takes traffic only while no primary
    /// of the VIP is up (HAProxy's `backup`).
    pub backup: bool,
    /// The effective health check: the VIP's `[vip.health]` table with this
    /// backend's `[vip.backend.health]` fields over it (see [`crate::health`]).
    pub check: HealthCheck,
}

/// How the program is attached (`xdp_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XdpMode {
    /// Native if the driver supports it, else generic.
    Auto,
    /// Driver mode only (fails if the NIC's driver has no XDP support).
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Generic,
}

impl XdpMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Transport protocol of a VIP (`protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number, as in the packet and in [`lb_common::VipKey`].
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::PROTO_TCP,
            Protocol::Udp => lb_common::PROTO_UDP,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// The inverse of [`Protocol::number`].
    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            lb_common::PROTO_TCP => Some(Protocol::Tcp),
            lb_common::PROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(format!("{s:?} is not a protocol (expected \"tcp\" or \"udp\")")),
        }
    }
}

/// What a VIP hashes to pick a backend (`hash`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashMode {
    /// The 5-tuple (addresses, ports, protocol).
    Flow,
    /// The source address only: client affinity.
    Source,
}

impl HashMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            HashMode::Flow => "flow",
            HashMode::Source => "source",
        }
    }
}

impl fmt::Display for HashMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An Ethernet address, written `aa:bb:cc:dd:ee:ff` (either case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Group (multicast or broadcast) bit set.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    pub const fn is_zero(&self) -> bool {
        matches!(self.0, [0, 0, 0, 0, 0, 0])
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a MAC address (expected six hex bytes like \"02:00:00:00:00:11\")");
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl Config {
    /// Distinct backend addresses over all VIPs, sorted (the plan's id order).
    pub fn backend_addresses(&self) -> BTreeSet<IpAddr> {
        self.vips.iter().flat_map(|v| v.backends.iter().map(|b| b.address)).collect()
    }
}

// ---------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------

/// One thing wrong with a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where: a path such as `lb.ring_size`, `vip "web".backend[2].address`
    /// or `vip[3].name`; for TOML syntax errors `line 7, vip[1].port`. Empty
    /// when the problem is the file as a whole (e.g. it cannot be read).
    pub field: String,
    /// What, quoting the offending value.
    pub message: String,
}

/// Every problem found in one config file. `Display` prints one line per
/// problem: `{file}: {field}: {message}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or other origin) the text came from.
    pub origin: String,
    /// At least one problem, in the order found.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.field.is_empty() {
                write!(f, "{}: {}", self.origin, p.message)?;
            } else {
                write!(f, "{}: {}: {}", self.origin, p.field, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------------------
// Entry points.
// ---------------------------------------------------------------------------

/// Reads and validates the config at `path`. Errors name the path as given.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let fail = |problem: Problem| Err(ConfigError { origin: origin.clone(), problems: vec![problem] });
    match std::fs::read(path) {
        Ok(bytes) => match std::str::from_utf8(&bytes) {
            Ok(text) => parse(text, &origin),
            Err(e) => fail(not_utf8(&bytes, &e)),
        },
        Err(e) => fail(Problem { field: String::new(), message: format!("cannot read the file: {e}") }),
    }
}

/// Where a file stops being UTF-8 (TOML is UTF-8 only), so the operator can
/// find the byte: its line, and its offset in the line and in the file.
fn not_utf8(bytes: &[u8], e: &std::str::Utf8Error) -> Problem {
    let at = e.valid_up_to();
    let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = bytes[..at].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let hex = |b: &[u8]| b.iter().map(|b| format!("0x{b:02x}")).collect::<Vec<_>>().join(" ");
    let what = match e.error_len() {
        Some(1) => format!("byte {} is not UTF-8", hex(&bytes[at..=at])),
        Some(n) => format!("bytes {} are not UTF-8", hex(&bytes[at..at + n])),
        None => format!("the file ends inside a character ({})", hex(&bytes[at..])),
    };
    Problem {
        field: format!("line {line}, byte {} of the line (offset {at} in the file)", at - line_start + 1),
        message: format!("{what}; a TOML file must be UTF-8: re-save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"),
    }
}

/// Parses and validates config text; `origin` (usually the file name) prefixes
/// every error line.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => return Err(ConfigError { origin: origin.to_string(), problems: vec![toml_problem(text, &e)] }),
    };
    let mut v = Validator::default();
    let config = v.config(raw);
    match config {
        Some(c) if v.problems.is_empty() => Ok(c),
        _ => Err(ConfigError { origin: origin.to_string(), problems: v.problems }),
    }
}

// ---------------------------------------------------------------------------
// Raw (unvalidated) shapes, as serde reads them.
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    lb: Option<RawLb>,
    #[serde(default, rename = "vip")]
    vips: Vec<RawVip>,
    announce: Option<crate::announce::settings::RawAnnounce>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLb {
    interface: Option<String>,
    xdp_mode: Option<String>,
    tunnel_source_v4: Option<String>,
    tunnel_source_v6: Option<String>,
    ring_size: Option<i64>,
    hash_seed: Option<i64>,
    max_vips: Option<i64>,
    max_backends: Option<i64>,
    bpffs_dir: Option<String>,
    run_dir: Option<String>,
    flow_table_size: Option<i64>,
    metrics_listen: Option<String>,
    icmp_echo: Option<String>,
    too_big: Option<String>,
    unknown_port: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    name: Option<String>,
    address: Option<String>,
    port: Option<i64>,
    protocol: Option<String>,
    hash: Option<String>,
    fragments: Option<String>,
    flow_table: Option<bool>,
    health: Option<RawHealth>,
    #[serde(default, rename = "backend")]
    backends: Vec<RawBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Option<String>,
    weight: Option<i64>,
    mac: Option<String>,
    backup: Option<bool>,
    health: Option<RawHealth>,
}

// ---------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { field: field.into(), message: message.into() });
    }

    /// An integer in `min..=max`, or a problem.
    fn int(&mut self, field: &str, value: Option<i64>, default: u32, min: u32, max: u32) -> Option<u32> {
        let Some(n) = value else { return Some(default) };
        if n < i64::from(min) || n > i64::from(max) {
            self.add(field, format!("{n} is out of range {min}..={max}"));
            return None;
        }
        Some(n as u32)
    }

    fn config(&mut self, raw: RawConfig) -> Option<Config> {
        let lb = match raw.lb {
            Some(lb) => self.lb(lb),
            None => {
                self.add("lb", "the [lb] table is missing (it needs at least interface = \"...\")");
                // Validate the VIPs anyway, against the defaults.
                self.lb(RawLb { interface: Some("-".into()), ..RawLb::default() })
            }
        };
        let vips = self.vips(raw.vips, lb.as_ref());
        let announce = match raw.announce {
            None => None,
            Some(a) => Some(crate::announce::settings::resolve(a, &mut self.problems)?),
        };
        Some(Config { lb: lb?, vips: vips?, announce })
    }

    fn lb(&mut self, raw: RawLb) -> Option<LbSection> {
        let interface = match raw.interface {
            None => {
                self.add("lb.interface", "missing; name the NIC to attach to, e.g. interface = \"eth0\"");
                None
            }
            Some(name) => match check_ifname(&name) {
                Ok(()) => Some(name),
                Err(why) => {
                    self.add("lb.interface", format!("{name:?} is not a valid interface name: {why}"));
                    None
                }
            },
        };

        let xdp_mode = match raw.xdp_mode.as_deref() {
            None => Some(DEFAULT_XDP_MODE),
            Some("auto") => Some(XdpMode::Auto),
            Some("native") => Some(XdpMode::Native),
            Some("generic") => Some(XdpMode::Generic),
            Some(other) => {
                self.add("lb.xdp_mode", format!("{other:?} is not an XDP mode (expected \"auto\", \"native\" or \"generic\")"));
                None
            }
        };

        let tunnel_source_v4 = match raw.tunnel_source_v4 {
            None => Some(None),
            Some(s) => match s.parse::<IpAddr>() {
                Err(_) => {
                    self.add("lb.tunnel_source_v4", format!("{s:?} is not an IP address"));
                    None
                }
                Ok(IpAddr::V6(_)) => {
                    self.add(
                        "lb.tunnel_source_v4",
                        format!("{s:?} is an IPv6 address; tunnel_source_v4 needs an IPv4 address (IPv6 goes in tunnel_source_v6)"),
                    );
                    None
                }
                Ok(IpAddr::V4(a)) if a.is_unspecified() || a.is_multicast() || a.is_broadcast() => {
                    self.add("lb.tunnel_source_v4", format!("{s:?} cannot be a packet's source address"));
                    None
                }
                Ok(a @ IpAddr::V4(_)) if never_on_the_wire(a).is_some() => {
                    self.add("lb.tunnel_source_v4", format!("{s:?} is {}", never_on_the_wire(a).unwrap_or_default()));
                    None
                }
                Ok(IpAddr::V4(a)) => Some(Some(a)),
            },
        };

        let tunnel_source_v6 = match raw.tunnel_source_v6 {
            None => Some(None),
            Some(s) => match s.parse::<IpAddr>() {
                Err(_) => {
                    self.add("lb.tunnel_source_v6", format!("{s:?} is not an IP address"));
                    None
                }
                Ok(IpAddr::V4(_)) => {
                    self.add(
                        "lb.tunnel_source_v6",
                        format!("{s:?} is an IPv4 address; tunnel_source_v6 needs an IPv6 address (IPv4 goes in tunnel_source_v4)"),
                    );
                    None
                }
                Ok(IpAddr::V6(a)) if a.is_unspecified() || a.is_multicast() => {
                    self.add("lb.tunnel_source_v6", format!("{s:?} cannot be a packet's source address"));
                    None
                }
                Ok(a @ IpAddr::V6(_)) if never_on_the_wire(a).is_some() => {
                    self.add("lb.tunnel_source_v6", format!("{s:?} is {}", never_on_the_wire(a).unwrap_or_default()));
                    None
                }
                Ok(IpAddr::V6(a)) => Some(Some(a)),
            },
        };

        let ring_size = match self.int("lb.ring_size", raw.ring_size, DEFAULT_RING_SIZE, MIN_RING_SIZE, MAX_RING_SIZE) {
            Some(n) if !is_prime(n) => {
                self.add("lb.ring_size", format!("{n} is not a prime (Maglev needs a prime ring size, e.g. 65537)"));
                None
            }
            other => other,
        };
        let hash_seed = self.int("lb.hash_seed", raw.hash_seed, DEFAULT_HASH_SEED, 0, u32::MAX);
        let max_vips = self.int("lb.max_vips", raw.max_vips, DEFAULT_MAX_VIPS, 1, MAX_MAX_VIPS);
        let max_backends = self.int("lb.max_backends", raw.max_backends, DEFAULT_MAX_BACKENDS, 2, MAX_MAX_BACKENDS);

        if let (Some(r), Some(v)) = (ring_size, max_vips) {
            let bytes = u64::from(r) * u64::from(v) * 4;
            if bytes > MAX_RINGS_BYTES {
                self.add(
                    "lb.ring_size",
                    format!(
                        "ring_size {r} × max_vips {v} × 4 bytes = {} MiB of rings, more than the {} MiB limit; lower ring_size or max_vips",
                        bytes >> 20,
                        MAX_RINGS_BYTES >> 20
                    ),
                );
            }
        }

        let bpffs_dir = match raw.bpffs_dir {
            None => Some(PathBuf::from(DEFAULT_BPFFS_DIR)),
            Some(d) if !Path::new(&d).is_absolute() => {
                self.add("lb.bpffs_dir", format!("{d:?} is not an absolute path"));
                None
            }
            Some(d) => match pin_dir_too_long(&d) {
                Some(why) => {
                    self.add("lb.bpffs_dir", format!("{d:?} is too long for the kernel: {why}; choose a shorter directory"));
                    None
                }
                None => Some(PathBuf::from(d)),
            },
        };

        let run_dir = match raw.run_dir {
            None => Some(PathBuf::from(DEFAULT_RUN_DIR)),
            Some(d) if Path::new(&d).is_absolute() => Some(PathBuf::from(d)),
            Some(d) => {
                self.add("lb.run_dir", format!("{d:?} is not an absolute path"));
                None
            }
        };
        let flow_table_size = self.int(
            "lb.flow_table_size",
            raw.flow_table_size,
            DEFAULT_FLOW_TABLE_SIZE,
            lb_common::flows::MIN_FLOW_TABLE_SIZE,
            lb_common::flows::MAX_FLOW_TABLE_SIZE,
        );
        if let (Some(v), Some(b)) = (max_vips, max_backends)
            && u64::from(v) * u64::from(b) > MAX_MEMBER_ENTRIES
        {
            self.add(
                "lb.max_backends",
                format!("max_vips {v} × max_backends {b} exceeds {MAX_MEMBER_ENTRIES} member entries; lower one of them"),
            );
        }
        let metrics_listen = match raw.metrics_listen.as_deref().unwrap_or(DEFAULT_METRICS_LISTEN) {
            METRICS_OFF => Some(None),
            s => match s.parse::<SocketAddr>() {
                Ok(a) => Some(Some(a)),
                Err(_) => {
                    self.add(
                        "lb.metrics_listen",
                        format!("{s:?} is not ADDRESS:PORT (e.g. \"{DEFAULT_METRICS_LISTEN}\", \"[::1]:9110\") or \"{METRICS_OFF}\""),
                    );
                    None
                }
            },
        };

        let packets = self.packet_policy(raw.icmp_echo.as_deref(), raw.too_big.as_deref(), raw.unknown_port.as_deref());

        Some(LbSection {
            interface: interface?,
            xdp_mode: xdp_mode?,
            tunnel_source_v4: tunnel_source_v4?,
            tunnel_source_v6: tunnel_source_v6?,
            ring_size: ring_size?,
            hash_seed: hash_seed?,
            max_vips: max_vips?,
            max_backends: max_backends?,
            bpffs_dir: bpffs_dir?,
            run_dir: run_dir?,
            flow_table_size: flow_table_size?,
            metrics_listen: metrics_listen?,
            packets: packets?,
        })
    }

    /// `lb.icmp_echo`, `lb.too_big`, `lb.unknown_port`.
    fn packet_policy(&mut self, icmp_echo: Option<&str>, too_big: Option<&str>, unknown_port: Option<&str>) -> Option<PacketPolicy> {
        let d = PacketPolicy::default();
        let icmp_echo = self.choice("lb.icmp_echo", icmp_echo, d.icmp_echo, packets::ECHO_CHOICES);
        let too_big = self.choice("lb.too_big", too_big, d.too_big, packets::TOO_BIG_CHOICES);
        let unknown_port = self.choice("lb.unknown_port", unknown_port, d.unknown_port, packets::UNKNOWN_PORT_CHOICES);
        Some(PacketPolicy { icmp_echo: icmp_echo?, too_big: too_big?, unknown_port: unknown_port? })
    }

    /// One of `options` by name (`default` if absent), or a problem naming them.
    fn choice<T: Copy>(&mut self, field: &str, value: Option<&str>, default: T, options: &[(&str, T)]) -> Option<T> {
        packets::choice(value, default, options).map_err(|why| self.add(field, why)).ok()
    }

    fn vips(&mut self, raw: Vec<RawVip>, lb: Option<&LbSection>) -> Option<Vec<VipConfig>> {
        if raw.is_empty() {
            self.add("vip", "no [[vip]] tables; a config must define at least one VIP");
            return None;
        }

        // Labels first: `vip "web"` for a VIP with a valid name used once so
        // far, `vip[i]` otherwise.
        let mut first_by_name: HashMap<&str, usize> = HashMap::new();
        let mut labels = Vec::with_capacity(raw.len());
        for (i, v) in raw.iter().enumerate() {
            let label = match v.name.as_deref() {
                Some(n) if check_name(n).is_ok() && !first_by_name.contains_key(n) => {
                    first_by_name.insert(n, i);
                    format!("vip {n:?}")
                }
                _ => format!("vip[{i}]"),
            };
            labels.push(label);
        }

        let ring_size = lb.map(|l| l.ring_size);
        let mut ok = true;
        let mut vips = Vec::with_capacity(raw.len());
        let mut vip_labels: Vec<&str> = Vec::with_capacity(raw.len());
        let mut by_key: HashMap<(IpAddr, u16, Protocol), usize> = HashMap::new();
        for (i, v) in raw.iter().enumerate() {
            let label = &labels[i];
            match self.vip(v, label, i, &first_by_name, ring_size) {
                Some(vip) => {
                    let key = (vip.address, vip.port, vip.protocol);
                    if let Some(&j) = by_key.get(&key) {
                        self.add(
                            format!("{label}.address"),
                            format!(
                                "\"{}\" port {} {} is already {} (same address, port and protocol)",
                                vip.address, vip.port, vip.protocol, labels[j]
                            ),
                        );
                        ok = false;
                    } else {
                        by_key.insert(key, i);
                    }
                    vips.push(vip);
                    vip_labels.push(label);
                }
                None => ok = false,
            }
        }

        if let Some(lb) = lb {
            if raw.len() as u64 > u64::from(lb.max_vips) {
                self.add(
                    "lb.max_vips",
                    format!("{} VIPs are defined but max_vips is {}; raise max_vips or remove VIPs", raw.len(), lb.max_vips),
                );
                ok = false;
            }
            // Count distinct addresses over the raw text, so the limit is
            // reported even when some other field of a VIP is wrong.
            let distinct: BTreeSet<IpAddr> =
                raw.iter().flat_map(|v| v.backends.iter().filter_map(|b| b.address.as_deref()?.parse().ok())).collect();
            if distinct.len() as u64 >= u64::from(lb.max_backends) {
                self.add(
                    "lb.max_backends",
                    format!(
                        "{} distinct backend addresses need max_backends >= {} (id 0 is reserved), but max_backends is {}",
                        distinct.len(),
                        distinct.len() + 1,
                        lb.max_backends
                    ),
                );
                ok = false;
            }
        }

        ok &= self.backend_facts(&vips, &vip_labels, lb);

        for (field, why) in packets::fragment_conflicts(&vips) {
            self.add(field, why);
            ok = false;
        }

        ok.then_some(vips)
    }

    /// What must hold for a backend address wherever it appears: it is not
    /// an address of the LB host itself (a VIP's, a tunnel source), and every
    /// static MAC given for it is the same one (the kernel keeps one next hop
    /// per backend). `labels[i]` names `vips[i]`. Returns whether all held.
    fn backend_facts(&mut self, vips: &[VipConfig], labels: &[&str], lb: Option<&LbSection>) -> bool {
        let before = self.problems.len();
        let mut vip_at: HashMap<IpAddr, &str> = HashMap::new();
        for (v, label) in vips.iter().zip(labels) {
            vip_at.entry(v.address).or_insert(label);
        }
        let tunnel_sources = [
            ("lb.tunnel_source_v4", lb.and_then(|l| l.tunnel_source_v4).map(IpAddr::V4)),
            ("lb.tunnel_source_v6", lb.and_then(|l| l.tunnel_source_v6).map(IpAddr::V6)),
        ];
        let mut first_mac: HashMap<IpAddr, (MacAddr, String)> = HashMap::new();
        for (v, label) in vips.iter().zip(labels) {
            for (k, b) in v.backends.iter().enumerate() {
                let at = format!("{label}.backend[{k}]");
                if let Some(vip) = vip_at.get(&b.address) {
                    self.add(
                        format!("{at}.address"),
                        format!(
                            "\"{}\" is the address of {vip}: a backend must be a host behind the balancer, not an address it serves \
                             (tunnel packets to it would come back here); give the backend's own address",
                            b.address
                        ),
                    );
                }
                for (field, source) in tunnel_sources {
                    if source == Some(b.address) {
                        self.add(
                            format!("{at}.address"),
                            format!("\"{}\" is {field}, this LB host's own address; a backend must be another host", b.address),
                        );
                    }
                }
                let Some(mac) = b.mac else { continue };
                match first_mac.get(&b.address) {
                    Some((first, first_at)) if *first != mac => self.add(
                        format!("{at}.mac"),
                        format!(
                            "\"{mac}\" differs from \"{first}\" given for the same backend {} at {first_at}; the kernel has one next hop \
                             per backend address: give the same MAC everywhere (or only once)",
                            b.address
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        first_mac.insert(b.address, (mac, format!("{at}.mac")));
                    }
                }
            }
        }
        self.problems.len() == before
    }

    fn vip(
        &mut self,
        v: &RawVip,
        label: &str,
        i: usize,
        first_by_name: &HashMap<&str, usize>,
        ring_size: Option<u32>,
    ) -> Option<VipConfig> {
        let name = match v.name.as_deref() {
            None => {
                self.add(format!("{label}.name"), "missing; every VIP needs a unique name");
                None
            }
            Some(n) => match check_name(n) {
                Err(why) => {
                    self.add(format!("{label}.name"), format!("{n:?} is not a valid name: {why}"));
                    None
                }
                Ok(()) => match first_by_name.get(n) {
                    Some(&j) if j != i => {
                        self.add(format!("{label}.name"), format!("{n:?} is already the name of vip[{j}]; names must be unique"));
                        None
                    }
                    _ => Some(n.to_string()),
                },
            },
        };

        let address = match v.address.as_deref() {
            None => {
                self.add(format!("{label}.address"), "missing; a VIP needs an IPv4 or IPv6 address");
                None
            }
            Some(s) => self.service_address(&format!("{label}.address"), s),
        };

        let port = match v.port {
            None => {
                self.add(format!("{label}.port"), "missing; give a port, or 0 for every port");
                None
            }
            Some(p) => match u16::try_from(p) {
                Ok(p) => Some(p),
                Err(_) => {
                    self.add(format!("{label}.port"), format!("{p} is out of range 0..=65535"));
                    None
                }
            },
        };

        let protocol = match v.protocol.as_deref() {
            None => Some(Protocol::Tcp),
            Some(s) => match s.parse::<Protocol>() {
                Ok(p) => Some(p),
                Err(why) => {
                    self.add(format!("{label}.protocol"), why);
                    None
                }
            },
        };

        let hash = match v.hash.as_deref() {
            None | Some("flow") => Some(HashMode::Flow),
            Some("source") => Some(HashMode::Source),
            Some(other) => {
                self.add(format!("{label}.hash"), format!("{other:?} is not a hash mode (expected \"flow\" or \"source\")"));
                None
            }
        };

        let fragments = self.choice(&format!("{label}.fragments"), v.fragments.as_deref(), FragmentPolicy::Drop, packets::FRAGMENT_CHOICES);

        let mut backends_ok = true;
        let mut backends = Vec::with_capacity(v.backends.len());
        let mut seen: HashMap<IpAddr, usize> = HashMap::new();
        if v.backends.is_empty() {
            self.add(format!("{label}.backend"), "no [[vip.backend]] tables; a VIP needs at least one backend");
            backends_ok = false;
        }
        for (k, b) in v.backends.iter().enumerate() {
            let at = format!("{label}.backend[{k}]");
            let address = match b.address.as_deref() {
                None => {
                    self.add(format!("{at}.address"), "missing; a backend needs an IPv4 or IPv6 address");
                    None
                }
                Some(s) => match self.service_address(&format!("{at}.address"), s) {
                    Some(a) => match seen.get(&a) {
                        Some(&first) => {
                            self.add(format!("{at}.address"), format!("{s:?} is already {label}.backend[{first}]"));
                            None
                        }
                        None => {
                            seen.insert(a, k);
                            Some(a)
                        }
                    },
                    None => None,
                },
            };
            let weight = match b.weight {
                None => Some(DEFAULT_WEIGHT),
                Some(w) if (0..=i64::from(MAX_WEIGHT)).contains(&w) => Some(w as u32),
                Some(w) => {
                    self.add(format!("{at}.weight"), format!("{w} is out of range 0..={MAX_WEIGHT} (0 = drained)"));
                    None
                }
            };
            let mac = match b.mac.as_deref() {
                None => Some(None),
                Some(s) => match s.parse::<MacAddr>() {
                    Err(why) => {
                        self.add(format!("{at}.mac"), why);
                        None
                    }
                    Ok(m) if m.is_zero() || m.is_multicast() => {
                        self.add(format!("{at}.mac"), format!("{s:?} is not a unicast MAC address; a next hop needs one"));
                        None
                    }
                    Ok(m) => Some(Some(m)),
                },
            };
            match (address, weight, mac) {
                (Some(address), Some(weight), Some(mac)) => match self.health_check(v, b, label, &at) {
                    Some(check) => backends.push(BackendConfig { address, weight, mac, backup: b.backup.unwrap_or(false), check }),
                    None => backends_ok = false,
                },
                _ => backends_ok = false,
            }
        }

        // Only judge the weights as a whole when each one could be read.
        let weights: Option<Vec<u32>> =
            v.backends.iter().map(|b| b.weight.map_or(Some(DEFAULT_WEIGHT), |w| u32::try_from(w).ok())).collect();
        if let Some(weights) = weights {
            let active = weights.iter().filter(|&&w| w > 0).count();
            if !weights.is_empty() && active == 0 {
                self.add(
                    format!("{label}.backend"),
                    format!("all {} backends have weight 0 (drained); at least one needs a weight above 0", weights.len()),
                );
                backends_ok = false;
            }
            if let Some(r) = ring_size
                && active as u64 > u64::from(r)
            {
                self.add(
                    format!("{label}.backend"),
                    format!("{active} backends with weight > 0 do not fit in a ring of {r} slots; raise lb.ring_size"),
                );
                backends_ok = false;
            }
        }

        if !backends_ok {
            return None;
        }
        let mut health_problems = Vec::new();
        let all_down = health::all_down_policy(v.health.as_ref(), label, &mut health_problems);
        self.problems.extend(health_problems);
        Some(VipConfig { name: name?, address: address?, port: port?, protocol: protocol?, hash: hash?, fragments: fragments?, flow_table: v.flow_table.unwrap_or(true), backends, all_down: all_down? })
    }

    /// A backend's effective health check; a problem of the VIP's own table
    /// is reported once, not once per backend.
    fn health_check(&mut self, v: &RawVip, b: &RawBackend, label: &str, at: &str) -> Option<HealthCheck> {
        let protocol = v.protocol.as_deref().map_or(Some(Protocol::Tcp), |p| p.parse().ok());
        let port = v.port.and_then(|p| u16::try_from(p).ok());
        // Without a readable protocol and port the VIP's own problems say enough.
        let vip_is_v4 = v.address.as_deref().and_then(|a| a.parse::<IpAddr>().ok()).map(|a| a.is_ipv4());
        let backend_is_v4 = b.address.as_deref().and_then(|a| a.parse::<IpAddr>().ok()).map(|a| a.is_ipv4());
        let service = health::Service {
            protocol: protocol?,
            port: port?,
            backend_in_vip_family: vip_is_v4.is_none() || vip_is_v4 == backend_is_v4,
        };
        let mut found = Vec::new();
        let check = health::resolve(v.health.as_ref(), b.health.as_ref(), label, at, service, &mut found);
        for p in found {
            if !self.problems.contains(&p) {
                self.problems.push(p);
            }
        }
        check
    }

    /// An address that can be a flow's destination: a VIP or a backend.
    fn service_address(&mut self, field: &str, s: &str) -> Option<IpAddr> {
        match s.parse::<IpAddr>() {
            Err(_) => {
                self.add(field, format!("{s:?} is not an IP address"));
                None
            }
            Ok(a) if a.is_unspecified() => {
                self.add(field, format!("{s:?} is the unspecified address; no flow is addressed to it"));
                None
            }
            Ok(a) if a.is_multicast() || matches!(a, IpAddr::V4(v4) if v4.is_broadcast()) => {
                self.add(field, format!("{s:?} is a multicast or broadcast address; only unicast addresses can be balanced"));
                None
            }
            Ok(a) => match never_on_the_wire(a) {
                Some(why) => {
                    self.add(field, format!("{s:?} is {why}"));
                    None
                }
                None => Some(a),
            },
        }
    }
}

/// Why no packet on the wire carries `a` to or from a host, if it is so: a
/// VIP there is unreachable for clients, a backend there for tunnel packets,
/// and a tunnel source there makes backends drop the packets as martians.
/// (The unspecified, multicast and broadcast addresses are checked apart.)
fn never_on_the_wire(a: IpAddr) -> Option<String> {
    match a {
        IpAddr::V4(v4) if v4.is_loopback() => {
            Some("a loopback address (127.0.0.0/8), which never leaves a host; give an address the network routes to the host".into())
        }
        IpAddr::V4(v4) if v4.octets()[0] == 0 => {
            Some("in 0.0.0.0/8 (\"this network\", RFC 1122), which is never a packet's destination; give the host's routed address".into())
        }
        IpAddr::V6(v6) if v6.is_loopback() => {
            Some("the loopback address, which never leaves a host; give an address the network routes to the host".into())
        }
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(|v4| {
            format!("an IPv4-mapped IPv6 address, which no packet on the wire carries (an IPv4 packet carries {v4}); write \"{v4}\"")
        }),
        IpAddr::V4(_) => None,
    }
}

/// Why the kernel would refuse, with `ENAMETOOLONG`, a path the agent pins
/// under `dir`, if it would.
fn pin_dir_too_long(dir: &str) -> Option<String> {
    if let Some(name) = dir.split('/').find(|c| c.len() > MAX_PATH_COMPONENT_LEN) {
        return Some(format!(
            "its component \"{}...\" is {} bytes, more than the {MAX_PATH_COMPONENT_LEN} a name may have",
            &name[..floor_char_boundary(name, 16)],
            name.len()
        ));
    }
    let longest = dir.trim_end_matches('/').len() + 1 + crate::pin_names::longest();
    (longest > MAX_PATH_LEN).then(|| {
        format!(
            "its longest pin path (the directory, '/', and a {}-byte file name) would be {longest} bytes, more than the kernel's {MAX_PATH_LEN}",
            crate::pin_names::longest()
        )
    })
}

/// The kernel's `dev_valid_name`.
fn check_ifname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return Err("\".\" and \"..\" are reserved");
    }
    if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err("it contains '/', ':' or whitespace");
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err("it must be 1 to 64 characters long");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-') {
        return Err("only A-Z a-z 0-9 _ . - are allowed");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// TOML errors: name the line and, best effort, the key path.
// ---------------------------------------------------------------------------

fn toml_problem(text: &str, err: &toml::de::Error) -> Problem {
    let message = err.message().trim().replace("expected i64", "expected an integer");
    let Some(span) = err.span() else {
        return Problem { field: String::new(), message };
    };
    let start = floor_char_boundary(text, span.start.min(text.len()));
    let end = floor_char_boundary(text, span.end.clamp(start, text.len()));
    let line_no = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = &text[line_start..line_end];

    let trimmed = line.trim();
    let where_ = if trimmed.starts_with('[') {
        // The error is about a table header itself (e.g. an unknown table).
        trimmed.split('#').next().unwrap_or(trimmed).trim().to_string()
    } else {
        let table = table_path(&text[..line_start]);
        let col = start - line_start;
        let key = match line.find('=') {
            // The span is on the key (e.g. an unknown field).
            Some(eq) if col < eq => text[start..end].trim().trim_matches(['"', '\'']).to_string(),
            // The span is on the value: the key is left of '='.
            Some(eq) => line[..eq].trim().trim_matches(['"', '\'']).to_string(),
            None => String::new(),
        };
        match (table.is_empty(), key.is_empty()) {
            (_, true) if table.is_empty() => String::from("(top level)"),
            (_, true) => table,
            (true, false) => key,
            (false, false) => format!("{table}.{key}"),
        }
    };
    Problem { field: format!("line {line_no}, {where_}"), message }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The table the last header before `before` opened, with array indices for
/// our arrays of tables: `lb`, `vip[1]`, `vip[1].backend[0]`.
fn table_path(before: &str) -> String {
    let mut path = String::new();
    let mut vip: Option<usize> = None;
    let mut backend: Option<usize> = None;
    for line in before.lines() {
        let l = line.split('#').next().unwrap_or("").trim();
        if let Some(inner) = l.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            let inner: String = inner.chars().filter(|c| !c.is_whitespace()).collect();
            match inner.as_str() {
                "vip" => {
                    vip = Some(vip.map_or(0, |v| v + 1));
                    backend = None;
                    path = format!("vip[{}]", vip.unwrap_or(0));
                }
                "vip.backend" => {
                    backend = Some(backend.map_or(0, |b| b + 1));
                    path = format!("vip[{}].backend[{}]", vip.unwrap_or(0), backend.unwrap_or(0));
                }
                other => path = other.to_string(),
            }
        } else if let Some(inner) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            path = inner.trim().to_string();
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[lb]
interface = "eth0"

[[vip]]
name = "web"
address = "192.0.2.10"
port = 80

  [[vip.backend]]
  address = "198.51.100.11"

  [[vip.backend]]
  address = "198.51.100.12"
  weight = 2
"#;

    fn errors(text: &str) -> ConfigError {
        match parse(text, "lb.toml") {
            Ok(c) => panic!("expected an error, got {c:#?}"),
            Err(e) => e,
        }
    }

    /// Asserts that one problem is at `field` and its message contains every
    /// one of `needles`, and that the rendered error shows it with the file.
    #[track_caller]
    fn assert_problem(text: &str, field: &str, needles: &[&str]) -> ConfigError {
        let e = errors(text);
        let shown = e.to_string();
        let found = e.problems.iter().any(|p| p.field == field && needles.iter().all(|n| p.message.contains(n)));
        assert!(found, "no problem at {field} mentioning {needles:?}; got:\n{shown}");
        assert!(shown.lines().any(|l| l.starts_with(&format!("lb.toml: {field}: "))), "{shown}");
        e
    }

    fn with_lb(lb_extra: &str) -> String {
        GOOD.replace("interface = \"eth0\"", &format!("interface = \"eth0\"\n{lb_extra}"))
    }

    #[test]
    fn good_config_and_defaults() {
        let c = parse(GOOD, "lb.toml").unwrap();
        assert_eq!(c.lb.interface, "eth0");
        assert_eq!(c.lb.xdp_mode, XdpMode::Auto);
        assert_eq!(c.lb.ring_size, DEFAULT_RING_SIZE);
        assert_eq!(c.lb.hash_seed, 0);
        assert_eq!(c.lb.max_vips, DEFAULT_MAX_VIPS);
        assert_eq!(c.lb.max_backends, DEFAULT_MAX_BACKENDS);
        assert_eq!(c.lb.bpffs_dir, PathBuf::from(DEFAULT_BPFFS_DIR));
        assert_eq!(c.lb.tunnel_source_v4, None);
        let v = &c.vips[0];
        assert_eq!((v.name.as_str(), v.port, v.protocol, v.hash), ("web", 80, Protocol::Tcp, HashMode::Flow));
        assert_eq!(v.backends[0].weight, 1);
        assert_eq!(v.backends[1].weight, 2);
        assert_eq!(Protocol::Udp.number(), lb_common::PROTO_UDP);
    }

    #[test]
    fn example_files_parse() {
        for f in ["demo.toml", "lb.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(f);
            let c = load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!c.vips.is_empty());
        }
        let demo = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo.toml")).unwrap();
        assert_eq!(demo.vips.len(), 3);
        assert_eq!(demo.lb.bpffs_dir, PathBuf::from("/sys/fs/bpf/lb-demo"));
    }

    #[test]
    fn bad_backend_ip() {
        let t = GOOD.replace("198.51.100.12", "198.51.100.x");
        assert_problem(&t, "vip \"web\".backend[1].address", &["\"198.51.100.x\"", "not an IP address"]);
    }

    #[test]
    fn bad_vip_ip_without_name_uses_index() {
        let t = GOOD.replace("name = \"web\"\n", "").replace("192.0.2.10", "192.0.2.300");
        let e = assert_problem(&t, "vip[0].address", &["\"192.0.2.300\""]);
        assert!(e.problems.iter().any(|p| p.field == "vip[0].name" && p.message.contains("missing")));
    }

    #[test]
    fn bad_mac() {
        let t = GOOD.replace("weight = 2", "weight = 2\n  mac = \"02:00:00:00:00:zz\"");
        assert_problem(&t, "vip \"web\".backend[1].mac", &["\"02:00:00:00:00:zz\"", "not a MAC"]);
        let t = GOOD.replace("weight = 2", "weight = 2\n  mac = \"ff:ff:ff:ff:ff:ff\"");
        assert_problem(&t, "vip \"web\".backend[1].mac", &["\"ff:ff:ff:ff:ff:ff\"", "unicast"]);
        let ok = GOOD.replace("weight = 2", "weight = 2\n  mac = \"02:AB:00:00:00:11\"");
        let c = parse(&ok, "x").unwrap();
        assert_eq!(c.vips[0].backends[1].mac.unwrap().to_string(), "02:ab:00:00:00:11");
    }

    #[test]
    fn unknown_field_names_file_line_and_key() {
        let t = GOOD.replace("weight = 2", "wieght = 2");
        let e = errors(&t);
        let shown = e.to_string();
        assert_eq!(e.problems.len(), 1);
        assert_eq!(e.problems[0].field, "line 15, vip[0].backend[1].wieght", "{shown}");
        assert!(shown.starts_with("lb.toml: line 15, vip[0].backend[1].wieght: "), "{shown}");
        assert!(shown.contains("unknown field `wieght`"), "{shown}");

        let t = with_lb("colour = \"blue\"");
        let e = errors(&t);
        assert_eq!(e.problems[0].field, "line 4, lb.colour", "{e}");

        let t = GOOD.replace("[lb]", "[lbx]");
        let e = errors(&t);
        assert!(e.to_string().contains("line 2, [lbx]"), "{e}");
    }

    #[test]
    fn toml_type_error_names_key() {
        let t = GOOD.replace("port = 80", "port = \"80\"");
        let e = errors(&t);
        assert_eq!(e.problems[0].field, "line 8, vip[0].port", "{e}");
        assert!(e.to_string().contains("lb.toml: line 8, vip[0].port: "), "{e}");
        let e = errors("[lb]\ninterface = \"eth0\n");
        assert!(e.to_string().starts_with("lb.toml: line 2"), "{e}");
    }

    #[test]
    fn duplicate_vip_key() {
        let t = format!(
            "{GOOD}\n[[vip]]\nname = \"web2\"\naddress = \"192.0.2.10\"\nport = 80\nprotocol = \"tcp\"\n[[vip.backend]]\naddress = \"198.51.100.11\"\n"
        );
        assert_problem(&t, "vip \"web2\".address", &["\"192.0.2.10\" port 80 tcp", "vip \"web\""]);
        // Same address and port, other protocol: fine.
        assert!(parse(&t.replace("protocol = \"tcp\"", "protocol = \"udp\""), "x").is_ok());
    }

    #[test]
    fn port_zero_next_to_specific_port_is_allowed() {
        let t =
            format!("{GOOD}\n[[vip]]\nname = \"any\"\naddress = \"192.0.2.10\"\nport = 0\n[[vip.backend]]\naddress = \"198.51.100.13\"\n");
        let c = parse(&t, "x").unwrap();
        assert_eq!(c.vips[1].port, 0);
    }

    #[test]
    fn duplicate_vip_name() {
        let t =
            format!("{GOOD}\n[[vip]]\nname = \"web\"\naddress = \"192.0.2.11\"\nport = 80\n[[vip.backend]]\naddress = \"198.51.100.11\"\n");
        assert_problem(&t, "vip[1].name", &["\"web\"", "vip[0]"]);
    }

    #[test]
    fn duplicate_backend() {
        let t = GOOD.replace("198.51.100.12", "198.51.100.11");
        assert_problem(&t, "vip \"web\".backend[1].address", &["\"198.51.100.11\"", "backend[0]"]);
    }

    #[test]
    fn vip_without_backends() {
        let t = "[lb]\ninterface = \"eth0\"\n[[vip]]\nname = \"web\"\naddress = \"192.0.2.10\"\nport = 80\n";
        assert_problem(t, "vip \"web\".backend", &["at least one backend"]);
    }

    #[test]
    fn all_backends_drained() {
        let t =
            GOOD.replace("weight = 2", "weight = 0").replace("address = \"198.51.100.11\"", "address = \"198.51.100.11\"\n  weight = 0");
        assert_problem(&t, "vip \"web\".backend", &["all 2 backends have weight 0"]);
        // One drained backend is fine.
        assert!(parse(&GOOD.replace("weight = 2", "weight = 0"), "x").is_ok());
    }

    #[test]
    fn weight_too_big() {
        let t = GOOD.replace("weight = 2", "weight = 1001");
        assert_problem(&t, "vip \"web\".backend[1].weight", &["1001", "0..=1000"]);
        let t = GOOD.replace("weight = 2", "weight = -1");
        assert_problem(&t, "vip \"web\".backend[1].weight", &["-1"]);
    }

    #[test]
    fn ring_size_must_be_prime_and_in_range() {
        assert_problem(&with_lb("ring_size = 65536"), "lb.ring_size", &["65536", "not a prime"]);
        assert_problem(&with_lb("ring_size = 2"), "lb.ring_size", &["2 is out of range"]);
        assert_problem(&with_lb("ring_size = 4194304"), "lb.ring_size", &["4194304", "out of range"]);
        assert!(parse(&with_lb("ring_size = 7"), "x").is_ok());
        assert!(parse(&with_lb("ring_size = 4194301"), "x").is_ok());
    }

    #[test]
    fn ring_memory_limit_names_both_fields() {
        assert_problem(&with_lb("ring_size = 4194301\nmax_vips = 100"), "lb.ring_size", &["ring_size 4194301", "max_vips 100", "1024 MiB"]);
    }

    #[test]
    fn too_many_vips() {
        let mut t = with_lb("max_vips = 2");
        for i in 0..2 {
            t.push_str(&format!(
                "[[vip]]\nname = \"v{i}\"\naddress = \"192.0.2.{}\"\nport = 80\n[[vip.backend]]\naddress = \"198.51.100.11\"\n",
                20 + i
            ));
        }
        assert_problem(&t, "lb.max_vips", &["3 VIPs", "max_vips is 2"]);
        assert_problem(&with_lb("max_vips = 0"), "lb.max_vips", &["0 is out of range 1..=4096"]);
    }

    #[test]
    fn too_many_backends_counts_distinct_addresses() {
        // Two distinct addresses need max_backends >= 3.
        assert_problem(&with_lb("max_backends = 2"), "lb.max_backends", &["2 distinct", ">= 3", "max_backends is 2"]);
        // The same address in a second VIP counts once.
        let t = format!(
            "{}\n[[vip]]\nname = \"b\"\naddress = \"192.0.2.11\"\nport = 80\n[[vip.backend]]\naddress = \"198.51.100.11\"\n",
            with_lb("max_backends = 3")
        );
        assert!(parse(&t, "x").is_ok());
    }

    #[test]
    fn bad_interface_names() {
        for bad in ["", "eth0/1", "eth 0", "a234567890123456", "..", "eth0:1"] {
            let t = GOOD.replace("\"eth0\"", &format!("{bad:?}"));
            assert_problem(&t, "lb.interface", &[&format!("{bad:?}")]);
        }
        assert!(parse(&GOOD.replace("\"eth0\"", "\"a23456789012345\""), "x").is_ok());
        let t = GOOD.replace("interface = \"eth0\"\n", "");
        assert_problem(&t, "lb.interface", &["missing"]);
    }

    #[test]
    fn tunnel_source_family() {
        assert_problem(&with_lb("tunnel_source_v4 = \"2001:db8::2\""), "lb.tunnel_source_v4", &["\"2001:db8::2\"", "IPv6"]);
        assert_problem(&with_lb("tunnel_source_v6 = \"198.51.100.2\""), "lb.tunnel_source_v6", &["\"198.51.100.2\"", "IPv4"]);
        assert_problem(&with_lb("tunnel_source_v4 = \"nope\""), "lb.tunnel_source_v4", &["\"nope\""]);
        let c = parse(&with_lb("tunnel_source_v4 = \"198.51.100.2\"\ntunnel_source_v6 = \"2001:db8::2\""), "x").unwrap();
        assert_eq!(c.lb.tunnel_source_v4, Some("198.51.100.2".parse().unwrap()));
        assert_eq!(c.lb.tunnel_source_v6, Some("2001:db8::2".parse().unwrap()));
    }

    #[test]
    fn run_dir_and_flow_table() {
        let c = parse(&with_lb(""), "t.toml").unwrap();
        assert_eq!((c.lb.run_dir.clone(), c.lb.flow_table_size), (PathBuf::from(DEFAULT_RUN_DIR), DEFAULT_FLOW_TABLE_SIZE));
        assert!(c.vips.iter().all(|v| v.flow_table), "VIPs use the flow table by default");
        assert_problem(&with_lb("run_dir = \"run/lb\""), "lb.run_dir", &["\"run/lb\"", "absolute"]);
        assert_problem(&with_lb("flow_table_size = 10"), "lb.flow_table_size", &["10", "out of range"]);
        assert_problem(&with_lb("max_vips = 4096\nmax_backends = 65536"), "lb.max_backends", &["member entries"]);
    }

    #[test]
    fn metrics_listen_default_address_and_off() {
        assert_eq!(parse(GOOD, "lb.toml").unwrap().lb.metrics_listen, Some(DEFAULT_METRICS_LISTEN.parse().unwrap()));
        let v6 = parse(&with_lb("metrics_listen = \"[2001:db8::2]:9100\""), "lb.toml").unwrap();
        assert_eq!(v6.lb.metrics_listen, Some("[2001:db8::2]:9100".parse().unwrap()));
        assert_eq!(parse(&with_lb("metrics_listen = \"off\""), "lb.toml").unwrap().lb.metrics_listen, None);
        assert_problem(&with_lb("metrics_listen = \"9110\""), "lb.metrics_listen", &["\"9110\"", "ADDRESS:PORT", "off"]);
    }

    #[test]
    fn bpffs_dir_absolute() {
        assert_problem(&with_lb("bpffs_dir = \"sys/fs/bpf/lb\""), "lb.bpffs_dir", &["\"sys/fs/bpf/lb\"", "absolute"]);
    }

    #[test]
    fn vip_address_unspecified_or_multicast() {
        for bad in ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"] {
            let t = GOOD.replace("192.0.2.10", bad);
            assert_problem(&t, "vip \"web\".address", &[&format!("{bad:?}")]);
        }
    }

    #[test]
    fn bad_enums_and_ranges() {
        assert_problem(&with_lb("xdp_mode = \"fast\""), "lb.xdp_mode", &["\"fast\""]);
        assert_problem(&GOOD.replace("port = 80", "port = 80\nprotocol = \"sctp\""), "vip \"web\".protocol", &["\"sctp\""]);
        assert_problem(&GOOD.replace("port = 80", "port = 80\nhash = \"random\""), "vip \"web\".hash", &["\"random\""]);
        assert_problem(&GOOD.replace("port = 80", "port = 65536"), "vip \"web\".port", &["65536"]);
        assert_problem(&with_lb("hash_seed = 4294967296"), "lb.hash_seed", &["4294967296"]);
        assert_problem(&GOOD.replace("name = \"web\"", "name = \"web site\""), "vip[0].name", &["\"web site\""]);
    }

    #[test]
    fn empty_config_is_an_error() {
        assert_problem("[lb]\ninterface = \"eth0\"\n", "vip", &["at least one VIP"]);
        let e = errors("");
        assert!(e.problems.iter().any(|p| p.field == "lb"), "{e}");
        assert!(e.problems.iter().any(|p| p.field == "vip"), "{e}");
    }

    #[test]
    fn all_problems_are_reported_together() {
        let t = with_lb("ring_size = 100\nbpffs_dir = \"rel\"").replace("198.51.100.12", "nope").replace("weight = 2", "weight = 2000");
        let e = errors(&t);
        let fields: Vec<&str> = e.problems.iter().map(|p| p.field.as_str()).collect();
        for f in ["lb.ring_size", "lb.bpffs_dir", "vip \"web\".backend[1].address", "vip \"web\".backend[1].weight"] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
        assert_eq!(e.to_string().lines().count(), e.problems.len());
    }

    #[test]
    fn addresses_never_on_the_wire() {
        for (bad, why) in [
            ("127.0.0.1", "loopback"),
            ("127.1.2.3", "loopback"),
            ("::1", "loopback"),
            ("0.1.2.3", "0.0.0.0/8"),
            ("::ffff:198.51.100.12", "write \"198.51.100.12\""),
        ] {
            assert_problem(&GOOD.replace("198.51.100.12", bad), "vip \"web\".backend[1].address", &[&format!("{bad:?}"), why]);
        }
        assert_problem(&GOOD.replace("192.0.2.10", "::ffff:192.0.2.10"), "vip \"web\".address", &["IPv4-mapped", "write \"192.0.2.10\""]);
        assert_problem(&GOOD.replace("192.0.2.10", "127.0.0.10"), "vip \"web\".address", &["loopback"]);
        assert_problem(&with_lb("tunnel_source_v4 = \"127.0.0.1\""), "lb.tunnel_source_v4", &["loopback"]);
        assert_problem(&with_lb("tunnel_source_v6 = \"::ffff:198.51.100.2\""), "lb.tunnel_source_v6", &["IPv4-mapped"]);
        // Neighbours of the refused ranges are fine.
        assert!(parse(&GOOD.replace("198.51.100.12", "1.0.0.1").replace("198.51.100.11", "2001:db8::ffff:c633:640b"), "x").is_ok());
    }

    #[test]
    fn backend_on_an_address_of_the_lb_host() {
        let t = format!(
            "{GOOD}\n[[vip]]\nname = \"dns\"\naddress = \"192.0.2.53\"\nport = 53\n[[vip.backend]]\naddress = \"192.0.2.10\"\n"
        );
        assert_problem(&t, "vip \"dns\".backend[0].address", &["\"192.0.2.10\"", "vip \"web\"", "own address"]);
        // Its own VIP's address, too.
        assert_problem(&GOOD.replace("198.51.100.12", "192.0.2.10"), "vip \"web\".backend[1].address", &["vip \"web\""]);
        let t = with_lb("tunnel_source_v4 = \"198.51.100.11\"");
        assert_problem(&t, "vip \"web\".backend[0].address", &["lb.tunnel_source_v4", "another host"]);
    }

    /// Two VIPs sharing backend 198.51.100.11, with `mac_a` / `mac_b` under it.
    fn shared_backend(mac_a: &str, mac_b: &str) -> String {
        GOOD.replace("  address = \"198.51.100.11\"\n", &format!("  address = \"198.51.100.11\"\n{mac_a}"))
            + &format!("\n[[vip]]\nname = \"b\"\naddress = \"192.0.2.11\"\nport = 80\n[[vip.backend]]\naddress = \"198.51.100.11\"\n{mac_b}")
    }

    #[test]
    fn a_backend_has_one_static_mac() {
        let (one, two) = ("  mac = \"02:00:00:00:00:01\"\n", "mac = \"02:00:00:00:00:02\"\n");
        assert_problem(
            &shared_backend(one, two),
            "vip \"b\".backend[0].mac",
            &["\"02:00:00:00:00:02\"", "\"02:00:00:00:00:01\"", "198.51.100.11", "vip \"web\".backend[0].mac", "same MAC"],
        );
        // The same MAC twice, or once: one next hop, whichever VIP gives it.
        assert!(parse(&shared_backend(one, "mac = \"02:00:00:00:00:01\"\n"), "x").is_ok());
        for (a, b) in [(one, ""), ("", "mac = \"02:00:00:00:00:01\"\n")] {
            let c = parse(&shared_backend(a, b), "x").unwrap();
            let plan = crate::plan::plan(&c);
            let id = plan.backend_id("198.51.100.11".parse().unwrap()).unwrap();
            assert_eq!(plan.backend(id).unwrap().mac, Some("02:00:00:00:00:01".parse().unwrap()), "{a:?} {b:?}");
        }
    }

    #[test]
    fn bpffs_dir_the_kernel_cannot_take() {
        let room = MAX_PATH_LEN - 1 - crate::pin_names::longest();
        // "/" + components of 200 bytes until the directory is `len` bytes long.
        let dir = |len: usize| {
            let mut d = String::new();
            while d.len() < len {
                d.push('/');
                let n = (len - d.len()).min(200);
                d.push_str(&"d".repeat(n));
            }
            d
        };
        assert_eq!(dir(room).len(), room);
        assert!(parse(&with_lb(&format!("bpffs_dir = \"{}\"", dir(room))), "x").is_ok());
        let e = assert_problem(&with_lb(&format!("bpffs_dir = \"{}\"", dir(room + 1))), "lb.bpffs_dir", &["too long", "4096 bytes", "4095", "shorter"]);
        assert!(e.to_string().contains(&format!("{:?}", dir(room + 1))), "names the value: {e}");
        let long_name = format!("/sys/fs/bpf/{}", "n".repeat(256));
        assert_problem(&with_lb(&format!("bpffs_dir = \"{long_name}\"")), "lb.bpffs_dir", &["256 bytes", "255"]);
    }

    #[test]
    fn non_utf8_file_names_line_and_byte() {
        let path = std::env::temp_dir().join(format!("lb-config-test-{}-latin1.toml", std::process::id()));
        let mut bytes = GOOD.as_bytes().to_vec();
        let at = GOOD.find("\"web\"").unwrap() + 2; // in `name = "web"`, line 6
        bytes[at] = 0xe9; // Latin-1 'é'
        std::fs::write(&path, &bytes).unwrap();
        let e = load(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        let shown = e.to_string();
        assert_eq!(e.problems.len(), 1, "{shown}");
        assert_eq!(e.problems[0].field, format!("line 6, byte 10 of the line (offset {at} in the file)"), "{shown}");
        assert!(shown.starts_with(&format!("{}: line 6, ", path.display())), "{shown}");
        for needle in ["0xe9", "not UTF-8", "re-save it as UTF-8"] {
            assert!(shown.contains(needle), "{needle:?} not in {shown}");
        }
    }

    #[test]
    fn load_missing_file_names_it() {
        let e = load(Path::new("/nonexistent/lb.toml")).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/lb.toml: cannot read"), "{e}");
    }
}

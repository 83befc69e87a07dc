//! The `[vip.health]` and `[vip.backend.health]` tables: parsing, defaults
//! and validation. `config.rs` calls [`resolve`] per backend and
//! [`all_down_policy`] per VIP, and reports the problems like its own.
//!
//! ```toml
//! [[vip]]
//! name = "web"
//! ...
//!   [vip.health]            # no table at either level: not checked
//!   check = "http"          # "tcp" (default when a table exists), "http", "none"
//!   interval = "5s"         # "500ms", "5s", "1m"
//!   uri = "/healthz"
//!
//!   [[vip.backend]]
//!   address = "198.51.100.11"
//!     [vip.backend.health]  # overrides any field of the VIP's table
//!     port = 8080
//! ```

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::values::Protocol;
use crate::diag::Problem;

/// 5 s: NGINX Plus's `health_check` default. Operators coming from NGINX
/// expect it, and it keeps the check load of 1,000 backends at 200 checks/s.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// 2 s: NGINX Plus waits for its (60 s) proxy timeouts, far too long to
/// notice a hung backend; HAProxy uses `inter` (2 s by default). A healthy
/// backend on a LAN answers a connect in well under a millisecond.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// 1 failure marks down, 1 pass marks up: NGINX Plus's defaults
/// (`fails=1 passes=1`).
pub const DEFAULT_FAILS: u32 = 1;
pub const DEFAULT_PASSES: u32 = 1;
/// `GET /`, as NGINX Plus does without `uri`.
pub const DEFAULT_URI: &str = "/";
/// 2xx and 3xx: NGINX Plus's default for a check without `match`.
pub const DEFAULT_STATUS: &str = "200-399";

/// Below 50 ms checks cost more than they tell (and a tokio timer tick is 1 ms).
pub const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// Above an hour a check no longer protects anything.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// A timeout must leave time for a TCP handshake.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// Consecutive results needed to change state: beyond 100 a backend would
/// take minutes to be marked down.
pub const MAX_THRESHOLD: u32 = 100;
/// Longest `uri` or `host` (they go into one request line / header).
pub const MAX_HTTP_FIELD_LEN: usize = 1024;

/// What a check does (`check`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// Not checked: always serving.
    None,
    /// A TCP connect to the backend's address and check port.
    Tcp,
    /// `GET uri` over TCP; the status must be one of `status`.
    Http,
}

impl CheckKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            CheckKind::None => "none",
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
        }
    }
}

/// The state a checked backend has before its first check (`initial`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialState {
    /// Serving at once (default): an agent restart, or a new LB host joining
    /// the ECMP group, must not black-hole a VIP for `interval × passes`, and
    /// every LB host then starts with the ring `lb-agent lookup` predicts.
    /// A dead backend is removed after `interval × fails + timeout`.
    Up,
    /// Serving only after `passes` passed checks (for backends that may be
    /// half-started when the agent starts).
    Down,
}

/// What a VIP does when none of its backends (primaries nor backups) is up
/// (`all_down`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllDownPolicy {
    /// Default: every ring slot is empty; the kernel drops the VIP's packets
    /// and counts them under `no_backend`. Clients get a fast, visible failure
    /// instead of connections to backends that are known to be broken.
    Drop,
    /// Use the primaries as if they were all up (Envoy's "panic mode"): for
    /// services where a possibly broken backend beats none, e.g. when the
    /// checks themselves may be what is failing.
    FailOpen,
}

impl AllDownPolicy {
    pub const fn as_str(self) -> &'static str {
        match self {
            AllDownPolicy::Drop => "drop",
            AllDownPolicy::FailOpen => "fail_open",
        }
    }
}

/// Expected HTTP status codes, as inclusive ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusSet(pub Vec<(u16, u16)>);

impl StatusSet {
    pub fn contains(&self, code: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&code))
    }

    /// `"200-399"`, `"200,204"`, `"200, 300-308"`; codes 100..=599.
    pub fn parse(s: &str) -> Result<StatusSet, String> {
        let bad = || format!("{s:?} is not a list of HTTP status codes (e.g. \"200-399\" or \"200,204\")");
        let code = |t: &str| t.trim().parse::<u16>().ok().filter(|c| (100..=599).contains(c));
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (code(a).ok_or_else(bad)?, code(b).ok_or_else(bad)?),
                None => {
                    let c = code(part).ok_or_else(bad)?;
                    (c, c)
                }
            };
            if lo > hi {
                return Err(bad());
            }
            ranges.push((lo, hi));
        }
        Ok(StatusSet(ranges))
    }
}

impl fmt::Display for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi { write!(f, "{lo}")? } else { write!(f, "{lo}-{hi}")? }
        }
        Ok(())
    }
}

/// The effective check of one backend of one VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub interval: Duration,
    /// At most `interval`: one check per backend is in flight at a time.
    pub timeout: Duration,
    /// Consecutive failures that mark an up backend down.
    pub fails: u32,
    /// Consecutive passes that mark a down backend up.
    pub passes: u32,
    /// TCP port to check; `None` = the VIP's port.
    pub port: Option<u16>,
    pub uri: String,
    /// `Host` header; `None` = the backend's address.
    pub host: Option<String>,
    pub status: StatusSet,
    pub initial: InitialState,
    /// DSR-aware: check the service on the VIP address, sent encapsulated to
    /// the backend like real traffic (see `lb_common::health::dsr`), instead
    /// of on the backend's own address.
    pub dsr: bool,
}

impl HealthCheck {
    /// Not checked (no `health` table anywhere): always serving.
    pub fn unchecked() -> HealthCheck {
        HealthCheck {
            kind: CheckKind::None,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            fails: DEFAULT_FAILS,
            passes: DEFAULT_PASSES,
            port: None,
            uri: DEFAULT_URI.to_string(),
            host: None,
            status: StatusSet::parse(DEFAULT_STATUS).expect("the default status list parses"),
            initial: InitialState::Up,
            dsr: false,
        }
    }

    /// One line of the check's settings (`check`, `list`, the reload's
    /// answer): "http GET / port 8080 status 200-399 every 2s timeout 1s
    /// fails 3 passes 2 starts up".
    pub fn describe(&self) -> String {
        if self.kind == CheckKind::None {
            return "none (always up)".to_string();
        }
        let mut s = self.kind.as_str().to_string();
        if self.kind == CheckKind::Http {
            s += &format!(" GET {}", self.uri);
            if let Some(host) = &self.host {
                s += &format!(" host {host}");
            }
        }
        s += &format!(" port {}", self.port.map_or("of the VIP".to_string(), |p| p.to_string()));
        if self.kind == CheckKind::Http {
            s += &format!(" status {}", self.status);
        }
        s += &format!(
            " every {:?} timeout {:?} fails {} passes {} starts {}",
            self.interval,
            self.timeout,
            self.fails,
            self.passes,
            if self.initial == InitialState::Up { "up" } else { "down" }
        );
        if self.dsr {
            s += " dsr";
        }
        s
    }
}

/// A `health` table as serde reads it (values kept raw for validation).
#[derive(Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    check: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    fails: Option<i64>,
    passes: Option<i64>,
    port: Option<i64>,
    uri: Option<String>,
    host: Option<String>,
    status: Option<String>,
    initial: Option<String>,
    all_down: Option<String>,
    dsr: Option<bool>,
}

/// `"250ms"`, `"5s"`, `"1m"`, `"1h"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (expected a whole number with ms, s, m or h, e.g. \"500ms\" or \"5s\")");
    let t = s.trim();
    let (num, unit_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        return Err(bad());
    };
    let n: u64 = num.trim().parse().map_err(|_| bad())?;
    n.checked_mul(unit_ms).map(Duration::from_millis).ok_or_else(bad)
}

/// What [`resolve`] needs to know of the VIP.
#[derive(Clone, Copy, Debug)]
pub struct Service {
    pub protocol: Protocol,
    /// 0 = every port.
    pub port: u16,
    /// The backend's address family is the VIP's (DSR-aware checks need it:
    /// the check is routed to the VIP through the backend as gateway).
    pub backend_in_vip_family: bool,
}

/// One field's value and the config path it came from (the backend's table
/// overrides the VIP's).
fn pick<'a, T>(
    vip: Option<&'a RawHealth>,
    backend: Option<&'a RawHealth>,
    vip_at: &str,
    backend_at: &str,
    name: &str,
    get: impl Fn(&'a RawHealth) -> Option<&'a T>,
) -> Option<(&'a T, String)> {
    if let Some(v) = backend.and_then(&get) {
        return Some((v, format!("{backend_at}.health.{name}")));
    }
    vip.and_then(&get).map(|v| (v, format!("{vip_at}.health.{name}")))
}

/// The effective check of one backend. `vip_at` / `backend_at` are the
/// config paths of the VIP and the backend (`vip "web"`, `vip "web".backend[1]`).
/// Problems are appended (a problem in the VIP's table may be reported once
/// per backend: the caller drops duplicates).
pub fn resolve(
    vip: Option<&RawHealth>,
    backend: Option<&RawHealth>,
    vip_at: &str,
    backend_at: &str,
    service: Service,
    problems: &mut Vec<Problem>,
) -> Option<HealthCheck> {
    let start = problems.len();
    let mut add = |field: String, message: String| problems.push(Problem { field, message });
    if let Some(b) = backend
        && b.all_down.is_some()
    {
        add(
            format!("{backend_at}.health.all_down"),
            "all_down is a policy of the VIP; set it in the VIP's [vip.health] table".into(),
        );
    }
    if vip.is_none() && backend.is_none() {
        return Some(HealthCheck::unchecked());
    }
    let defaults = HealthCheck::unchecked();

    let kind = match pick(vip, backend, vip_at, backend_at, "check", |r| r.check.as_ref()) {
        None => Some(CheckKind::Tcp),
        Some((s, at)) => match s.as_str() {
            "tcp" => Some(CheckKind::Tcp),
            "http" => Some(CheckKind::Http),
            "none" => Some(CheckKind::None),
            other => {
                add(at, format!("{other:?} is not a check (expected \"tcp\", \"http\" or \"none\")"));
                None
            }
        },
    };

    let mut duration = |name: &str, get: fn(&RawHealth) -> Option<&String>, default: Duration, min: Duration| {
        match pick(vip, backend, vip_at, backend_at, name, get) {
            None => Some((default, None)),
            Some((s, at)) => match parse_duration(s) {
                Err(why) => {
                    add(at, why);
                    None
                }
                Ok(d) if d < min || d > MAX_INTERVAL => {
                    add(at, format!("{s:?} is out of range {}ms..={}s", min.as_millis(), MAX_INTERVAL.as_secs()));
                    None
                }
                Ok(d) => Some((d, Some(at))),
            },
        }
    };
    let interval = duration("interval", |r| r.interval.as_ref(), DEFAULT_INTERVAL, MIN_INTERVAL);
    let timeout = duration("timeout", |r| r.timeout.as_ref(), DEFAULT_TIMEOUT, MIN_TIMEOUT);

    let mut threshold = |name: &str, get: fn(&RawHealth) -> Option<&i64>, default: u32| {
        match pick(vip, backend, vip_at, backend_at, name, get) {
            None => Some(default),
            Some((&n, _)) if (1..=i64::from(MAX_THRESHOLD)).contains(&n) => Some(n as u32),
            Some((n, at)) => {
                add(at, format!("{n} is out of range 1..={MAX_THRESHOLD} (consecutive checks)"));
                None
            }
        }
    };
    let fails = threshold("fails", |r| r.fails.as_ref(), DEFAULT_FAILS);
    let passes = threshold("passes", |r| r.passes.as_ref(), DEFAULT_PASSES);

    let port = match pick(vip, backend, vip_at, backend_at, "port", |r| r.port.as_ref()) {
        None => Some(None),
        Some((&n, _)) if (1..=i64::from(u16::MAX)).contains(&n) => Some(Some(n as u16)),
        Some((n, at)) => {
            add(at, format!("{n} is out of range 1..=65535"));
            None
        }
    };

    let http_text = |s: &str| s.is_empty() || s.len() > MAX_HTTP_FIELD_LEN || s.chars().any(|c| c.is_whitespace() || c.is_control());
    let uri = match pick(vip, backend, vip_at, backend_at, "uri", |r| r.uri.as_ref()) {
        None => Some(defaults.uri.clone()),
        Some((s, at)) if !s.starts_with('/') || http_text(s) => {
            add(at, format!("{s:?} is not a request path (it must start with '/', without spaces, at most {MAX_HTTP_FIELD_LEN} bytes)"));
            None
        }
        Some((s, _)) => Some(s.clone()),
    };
    let host = match pick(vip, backend, vip_at, backend_at, "host", |r| r.host.as_ref()) {
        None => Some(None),
        Some((s, at)) if http_text(s) => {
            add(at, format!("{s:?} is not a Host header value (no spaces, 1 to {MAX_HTTP_FIELD_LEN} bytes)"));
            None
        }
        Some((s, _)) => Some(Some(s.clone())),
    };
    let status = match pick(vip, backend, vip_at, backend_at, "status", |r| r.status.as_ref()) {
        None => Some(defaults.status.clone()),
        Some((s, at)) => match StatusSet::parse(s) {
            Ok(set) => Some(set),
            Err(why) => {
                add(at, why);
                None
            }
        },
    };
    let initial = match pick(vip, backend, vip_at, backend_at, "initial", |r| r.initial.as_ref()) {
        None => Some(InitialState::Up),
        Some((s, at)) => match s.as_str() {
            "up" => Some(InitialState::Up),
            "down" => Some(InitialState::Down),
            other => {
                add(at, format!("{other:?} is not an initial state (expected \"up\" or \"down\")"));
                None
            }
        },
    };

    if let (Some((i, _)), Some((t, t_at))) = (&interval, &timeout)
        && t > i
    {
        let at = t_at.clone().unwrap_or_else(|| format!("{vip_at}.health.timeout"));
        add(
            at,
            format!(
                "timeout {}ms is longer than interval {}ms; one check per backend runs at a time, so lower timeout or raise interval",
                t.as_millis(),
                i.as_millis()
            ),
        );
    }
    let needs_port = matches!(kind, Some(CheckKind::Tcp | CheckKind::Http))
        && (service.protocol == Protocol::Udp || service.port == 0)
        && matches!(port, Some(None));
    if needs_port {
        let why = if service.protocol == Protocol::Udp { "the VIP is UDP and checks are TCP or HTTP" } else { "the VIP has port 0 (every port)" };
        add(format!("{vip_at}.health.port"), format!("missing: {why}; give the TCP port to check, e.g. port = 8080, or check = \"none\""));
    }

    let dsr = pick(vip, backend, vip_at, backend_at, "dsr", |r| r.dsr.as_ref()).map(|(d, at)| (*d, at));
    if let Some((true, at)) = &dsr
        && kind != Some(CheckKind::None)
        && !service.backend_in_vip_family
    {
        add(at.clone(), "dsr = true needs the backend in the VIP's address family (the check is routed through the backend)".into());
    }

    if problems.len() > start {
        return None;
    }
    Some(HealthCheck {
        kind: kind?,
        interval: interval?.0,
        timeout: timeout?.0,
        fails: fails?,
        passes: passes?,
        port: port?,
        uri: uri?,
        host: host?,
        status: status?,
        initial: initial?,
        dsr: dsr.is_some_and(|(d, _)| d),
    })
}

/// The VIP's `all_down` policy (default [`AllDownPolicy::Drop`]).
pub fn all_down_policy(vip: Option<&RawHealth>, vip_at: &str, problems: &mut Vec<Problem>) -> Option<AllDownPolicy> {
    match vip.and_then(|r| r.all_down.as_deref()) {
        None | Some("drop") => Some(AllDownPolicy::Drop),
        Some("fail_open") => Some(AllDownPolicy::FailOpen),
        Some(other) => {
            problems.push(Problem {
                field: format!("{vip_at}.health.all_down"),
                message: format!("{other:?} is not a policy (expected \"drop\" or \"fail_open\")"),
            });
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(health: &str, protocol: &str) -> String {
        let t = format!(
            "[lb]\ninterface = \"eth0\"\n[[vip]]\nname = \"web\"\naddress = \"192.0.2.10\"\nport = 53\nprotocol = \"{protocol}\"\n  [vip.health]\n{health}\n  [[vip.backend]]\n  address = \"198.51.100.11\"\n  [[vip.backend]]\n  address = \"198.51.100.12\"\n    [vip.backend.health]\n    check = \"none\"\n"
        );
        match crate::config::parse(&t, "lb.toml") {
            Ok(c) => format!("ok {:?}", c.vips[0].backends.iter().map(|b| b.check.kind).collect::<Vec<_>>()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn config_errors_name_file_field_and_value() {
        let e = problems("", "udp");
        assert!(e.contains("lb.toml: vip \"web\".health.port: missing: the VIP is UDP"), "{e}");
        assert_eq!(e.lines().count(), 1, "reported once, not per backend: {e}");
        assert_eq!(problems("port = 8080", "udp"), "ok [Tcp, None]");
        let e = problems("interval = \"1s\"\ntimeout = \"2s\"", "tcp");
        assert!(e.contains("vip \"web\".health.timeout: timeout 2000ms is longer than interval 1000ms"), "{e}");
        let e = problems("check = \"ping\"\nfails = 0\nstatus = \"2xx\"\ninterval = \"5\"", "tcp");
        for needle in ["health.check: \"ping\"", "health.fails: 0 is out of range", "health.status: \"2xx\"", "health.interval: \"5\""] {
            assert!(e.contains(needle), "{needle} missing from {e}");
        }
        let e = problems("all_down = \"panic\"", "tcp");
        assert!(e.contains("vip \"web\".health.all_down: \"panic\""), "{e}");
    }

    #[test]
    fn dsr_checks() {
        assert_eq!(problems("dsr = true", "tcp"), "ok [Tcp, None]");
        let t = "[lb]\ninterface = \"eth0\"\n[[vip]]\nname = \"web\"\naddress = \"192.0.2.10\"\nport = 80\n  [vip.health]\n  dsr = true\n  [[vip.backend]]\n  address = \"2001:db8::11\"\n";
        let e = crate::config::parse(t, "lb.toml").unwrap_err().to_string();
        assert!(e.contains("lb.toml: vip \"web\".health.dsr: dsr = true needs the backend in the VIP's address family"), "{e}");
        let ok = crate::config::parse(&t.replace("2001:db8::11", "198.51.100.11"), "lb.toml").unwrap();
        assert!(ok.vips[0].backends[0].check.dsr);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["5", "1.5s", "s", "-1s", "5d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_sets() {
        let s = StatusSet::parse(DEFAULT_STATUS).unwrap();
        assert!(s.contains(200) && s.contains(399) && !s.contains(400) && !s.contains(199));
        let s = StatusSet::parse("200, 204,300-308").unwrap();
        assert!(s.contains(204) && s.contains(301) && !s.contains(201));
        assert_eq!(s.to_string(), "200,204,300-308");
        for bad in ["", "2xx", "99", "600", "300-200", "200-"] {
            assert!(StatusSet::parse(bad).is_err(), "{bad}");
        }
    }
}

//! The `[announce]` table: how this LB host tells its routing daemon which
//! VIP addresses it can serve (see [`crate::announce`]).

use std::time::Duration;

use serde::Deserialize;

use super::health::parse_duration;
use crate::diag::Problem;

/// Default kernel routing table of the VIP routes. Any table number works as
/// long as nothing else uses it and the routing daemon reads the same one;
/// 0 and 253..=255 are the kernel's own (unspec, default, main, local).
pub const DEFAULT_TABLE: u32 = 250;
/// Default route protocol (`proto` in `ip route`) of the VIP routes. The
/// routing daemon filters on it, so nothing but the agent's routes is
/// announced; 250 is unassigned in iproute2's `rt_protos` and unused by
/// BIRD, FRR and friends.
pub const DEFAULT_PROTOCOL: u8 = 250;
/// Route metrics that carry the host's role to the routing daemon (BIRD
/// reads them as `krt_metric`); the example configs in `contrib/bird`
/// prepend the AS path for anything at or above [`STANDBY_METRIC`].
pub const ACTIVE_METRIC: u32 = 100;
pub const STANDBY_METRIC: u32 = 200;
/// Default longest wait for traffic to drain in `lb-agent maintenance`:
/// long enough for BGP to converge with default-ish timers.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default quiet period that ends the drain early: no packet forwarded for
/// this long means the routers no longer send anything here.
pub const DEFAULT_DRAIN_QUIET: Duration = Duration::from_secs(2);
/// Default bound on how long a hung agent's routes stay announced: the
/// agent asks systemd's watchdog for it (`WATCHDOG_USEC`), which kills a
/// silent agent after it and the unit's `ExecStopPost` withdraws. A few
/// seconds: longer than any stall of a healthy main loop (it only awaits
/// bounded work), shorter than an operator would notice by hand.
pub const DEFAULT_LIVENESS: Duration = Duration::from_secs(5);
/// The shortest bound accepted: keep-alives go at half of it, and a busy
/// 2-CPU host must not kill a healthy agent.
pub const MIN_LIVENESS: Duration = Duration::from_secs(1);
/// How often the agent compares the routes it wants with the kernel's.
pub const RECONCILE_INTERVAL: Duration = Duration::from_millis(200);

/// Tables the kernel reserves.
const RESERVED_TABLES: [u32; 4] = [0, 253, 254, 255];

/// Whether this host is the preferred one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Announces with the normal preference (active-active among actives).
    Active,
    /// Announces with a worse preference: takes traffic only when no active does.
    Standby,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Standby => "standby",
        }
    }

    pub const fn metric(self) -> u32 {
        match self {
            Role::Active => ACTIVE_METRIC,
            Role::Standby => STANDBY_METRIC,
        }
    }
}

/// The validated `[announce]` table. Absent: the agent announces nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceConfig {
    /// `table`: kernel routing table of the VIP routes. Default [`DEFAULT_TABLE`].
    pub table: u32,
    /// `protocol`: route protocol number of the VIP routes. Default [`DEFAULT_PROTOCOL`].
    pub protocol: u8,
    /// `role`: `"active"` (default) or `"standby"`.
    pub role: Role,
    /// `drain_timeout`: longest wait for traffic to stop in `lb-agent maintenance`.
    pub drain_timeout: Duration,
    /// `drain_quiet`: no forwarded packet for this long ends the drain early.
    pub drain_quiet: Duration,
    /// `liveness`: a hung agent is killed by systemd's watchdog, and its
    /// routes withdrawn, within this long. Default [`DEFAULT_LIVENESS`].
    pub liveness: Duration,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAnnounce {
    table: Option<i64>,
    protocol: Option<i64>,
    role: Option<String>,
    drain_timeout: Option<String>,
    drain_quiet: Option<String>,
    liveness: Option<String>,
}

/// Validates the `[announce]` table; problems are appended.
pub fn resolve(raw: RawAnnounce, problems: &mut Vec<Problem>) -> Option<AnnounceConfig> {
    let before = problems.len();
    let mut add = |field: &str, message: String| problems.push(Problem { field: format!("announce.{field}"), message });
    let table = match raw.table {
        None => DEFAULT_TABLE,
        Some(t) if t < 0 || t > i64::from(u32::MAX) || RESERVED_TABLES.contains(&(t as u32)) => {
            add("table", format!("{t} is not a usable routing table (1..=252 or 256..=4294967295; 253-255 are the kernel's default, main and local)"));
            DEFAULT_TABLE
        }
        Some(t) if (t as u32) >= lb_common::health::dsr::TABLE_BASE => {
            add("table", format!("{t} collides with the tables of DSR-aware health checks (from {})", lb_common::health::dsr::TABLE_BASE));
            DEFAULT_TABLE
        }
        Some(t) => t as u32,
    };
    let protocol = match raw.protocol {
        None => DEFAULT_PROTOCOL,
        Some(p) if !(5..=255).contains(&p) => {
            add("protocol", format!("{p} is out of range 5..=255 (0-4 are the kernel's own route protocols)"));
            DEFAULT_PROTOCOL
        }
        Some(p) => p as u8,
    };
    let role = match raw.role.as_deref() {
        None | Some("active") => Role::Active,
        Some("standby") => Role::Standby,
        Some(other) => {
            add("role", format!("{other:?} is not a role (expected \"active\" or \"standby\")"));
            Role::Active
        }
    };
    let mut duration = |field: &str, value: Option<String>, default: Duration| match value {
        None => default,
        Some(s) => parse_duration(&s).unwrap_or_else(|e| {
            add(field, e);
            default
        }),
    };
    let drain_timeout = duration("drain_timeout", raw.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
    let drain_quiet = duration("drain_quiet", raw.drain_quiet, DEFAULT_DRAIN_QUIET);
    let liveness = duration("liveness", raw.liveness.clone(), DEFAULT_LIVENESS);
    if liveness < MIN_LIVENESS {
        add("liveness", format!("{:?} is shorter than {} s (keep-alives go at half of it; a busy host must not kill a healthy agent)", raw.liveness.unwrap_or_default(), MIN_LIVENESS.as_secs()));
    }
    if problems.len() > before {
        return None;
    }
    Some(AnnounceConfig { table, protocol, role, drain_timeout, drain_quiet, liveness })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AnnounceConfig, Vec<Problem>> {
        let raw: RawAnnounce = toml::from_str(text).unwrap();
        let mut problems = Vec::new();
        resolve(raw, &mut problems).ok_or(problems)
    }

    #[test]
    fn defaults_and_standby() {
        let a = parse("").unwrap();
        assert_eq!((a.table, a.protocol, a.role), (DEFAULT_TABLE, DEFAULT_PROTOCOL, Role::Active));
        let s = parse("role = \"standby\"\ntable = 100\ndrain_timeout = \"5s\"").unwrap();
        assert_eq!((s.table, s.role.metric(), s.drain_timeout), (100, STANDBY_METRIC, Duration::from_secs(5)));
        assert_eq!((a.liveness, parse("liveness = \"2s\"").unwrap().liveness), (DEFAULT_LIVENESS, Duration::from_secs(2)));
    }

    #[test]
    fn every_bad_field_is_reported() {
        let problems = parse("table = 254\nprotocol = 2\nrole = \"primary\"\ndrain_quiet = \"soon\"\nliveness = \"100ms\"").unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["announce.table", "announce.protocol", "announce.role", "announce.drain_quiet", "announce.liveness"]);
    }
}

//! Health of each (VIP, backend) pair, as the agent's checkers last saw it.
//!
//! The agent writes one [`HealthEntry`] per pair into the pinned
//! [`crate::maps::HEALTH`] map after every check, so `lb-agent stats` (another
//! process) can show states, reasons and counts. No XDP program reads it: the
//! rings already say where packets go.

/// The pair's state. `Unchecked`: the VIP has no health check, always serving.
pub const HEALTH_UNCHECKED: u8 = 0;
pub const HEALTH_UP: u8 = 1;
pub const HEALTH_DOWN: u8 = 2;

/// Why the last check passed or failed (`HealthEntry::reason`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthReason {
    /// No check has run yet: the state is the configured initial state.
    Initial = 0,
    /// TCP connected, or HTTP answered an expected status.
    Passed = 1,
    /// No answer within the check's timeout.
    Timeout = 2,
    /// The connection was refused (nothing listens on the port).
    Refused = 3,
    /// HTTP answered a status outside the expected ones (see `http_status`).
    HttpStatus = 4,
    /// The answer was not HTTP, or the connection broke mid-way.
    BadResponse = 5,
    /// Any other socket error (unreachable network, reset, ...).
    Error = 6,
    /// The VIP has `check = "none"` for this backend.
    NotChecked = 7,
}

impl HealthReason {
    pub const ALL: &'static [HealthReason] = &[
        HealthReason::Initial,
        HealthReason::Passed,
        HealthReason::Timeout,
        HealthReason::Refused,
        HealthReason::HttpStatus,
        HealthReason::BadResponse,
        HealthReason::Error,
        HealthReason::NotChecked,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            HealthReason::Initial => "initial",
            HealthReason::Passed => "passed",
            HealthReason::Timeout => "timeout",
            HealthReason::Refused => "refused",
            HealthReason::HttpStatus => "http_status",
            HealthReason::BadResponse => "bad_response",
            HealthReason::Error => "error",
            HealthReason::NotChecked => "not_checked",
        }
    }

    pub fn from_u8(n: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| *r as u8 == n)
    }
}

/// Key of `HEALTH`: a backend as a member of one VIP (a backend shared by two
/// VIPs is checked, and can be down, per VIP: their checks may differ).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HealthKey {
    /// The VIP's row (as in `VipMeta::row`).
    pub row: u32,
    /// The backend's id (index in `BACKENDS`).
    pub backend_id: u32,
}
const _: () = assert!(core::mem::size_of::<HealthKey>() == 8);

/// Value of `HEALTH`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealthEntry {
    /// Wall-clock time (ms since the Unix epoch) of the last state change, or
    /// of the agent's start.
    pub since_unix_ms: u64,
    /// Consecutive failed checks (0 after a pass).
    pub consecutive_fails: u32,
    /// Consecutive passed checks (0 after a failure).
    pub consecutive_passes: u32,
    /// State changes since the agent started.
    pub changes: u32,
    /// Status of the last HTTP answer, 0 if none.
    pub http_status: u16,
    /// `HEALTH_*`.
    pub state: u8,
    /// [`HealthReason`] of the last check.
    pub reason: u8,
}
const _: () = assert!(core::mem::size_of::<HealthEntry>() == 24);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integers only, no implicit padding (size assertions).
    unsafe impl aya::Pod for super::HealthKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HealthEntry {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip() {
        for r in HealthReason::ALL {
            assert_eq!(HealthReason::from_u8(*r as u8), Some(*r));
        }
        assert_eq!(HealthReason::from_u8(200), None);
    }
}

/// DSR-aware health checks: the agent marks each check socket with
/// `DSR_MARK_BASE | backend id` (`SO_MARK`); policy routing sends marked
/// packets for the VIP toward that backend, and the `tc_health_encap` egress
/// program encapsulates them exactly as the balancer does. So a check passes
/// only if the backend decapsulates and owns the VIP, like real traffic.
pub mod dsr {
    /// High half of the mark: "LB".
    pub const MARK_BASE: u32 = 0x4c42_0000;
    /// The part of the mark that says "DSR check"; the rest is the backend id.
    pub const MARK_MASK: u32 = 0xffff_0000;
    /// Routing table of backend `id` is `TABLE_BASE + id` (clear of the
    /// kernel's reserved tables 253..=255 and of common operator choices).
    pub const TABLE_BASE: u32 = 0x4c42_0000;
    /// Priority of the policy routing rules (before the main table's 32766).
    pub const RULE_PRIORITY: u32 = 1_000;

    /// The mark of backend `id`'s check sockets (ids fit in the low half:
    /// the config allows at most 65,536 backends).
    pub const fn mark(id: u32) -> u32 {
        MARK_BASE | (id & !MARK_MASK)
    }

    /// The backend id of a marked packet, if it is a DSR check.
    pub const fn backend_of(mark: u32) -> Option<u32> {
        if mark & MARK_MASK == MARK_BASE { Some(mark & !MARK_MASK) } else { None }
    }
}

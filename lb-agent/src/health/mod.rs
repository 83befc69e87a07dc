//! Health checks: which backends are up, and the rings that follow.
//!
//! - [`settings`]: the `health` tables of the config, defaults and validation.
//! - [`tracker`]: the consecutive-results state machine of one backend.
//! - [`probe`]: one TCP or HTTP check.
//! - [`checker`]: one tokio task per checked backend (jitter, timeout).
//! - [`select`]: the ring of a VIP for a set of healthy backends (backups, policy).
//! - [`supervisor`]: owns every backend's health state; applies reports to the `HEALTH` and `RINGS` maps, logs changes.
//! - [`report`]: the health part of `lb-agent stats`.

pub(crate) mod checker;
pub(crate) mod dsr;
pub(crate) mod probe;
pub(crate) mod report;
pub(crate) mod supervisor;
pub(crate) mod tracker;

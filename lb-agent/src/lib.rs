//! lb-agent as a library: what the binary (`main.rs`, the CLI on top of
//! everything) and the tests crate share.
//!
//! Modules form layers, listed top down; each imports (`use crate::`) only
//! from layers below its own, or from its own layer without forming a cycle
//! (`cargo xtask test` checks this list against the imports, test code left
//! out, see xtask/src/layers.rs):
//!
//! - L6 `runtime`: `lb-agent run` (start, adopt, reload, serve, shut down);
//!   `decap_command`: `lb-agent decap` on a backend
//! - L5 services and commands: `announce` (VIP routes, drain, maintenance),
//!   `metrics`, `control` (lock, socket, client), `stats_command`, `stats`, `rates`,
//!   `lookup_command`, `list_command`, `previous_owners` (the drain timer of second chance),
//!   `cluster_command` (`lb-agent cluster`: the fleet's state and document in etcd)
//! - L4 `dataplane`: load, attach, counters, the map store and reconcile (plan
//!   to maps), which hands the rings over to the health supervisor
//! - L3 `health`: state machine, checkers, DSR routes; it writes rings through
//!   a trait it owns (`HealthWriter`) and knows no map
//! - L2 kernel access: `nexthop` (netlink), `pins` (bpffs), `xdp_attach`,
//!   `vlan_offload`, `kernel_events`; `source` (the cluster's config document in etcd);
//!   `notify` (systemd's notify protocol and watchdog)
//! - L1 pure logic: `config` (parse and validate), `plan` (config to map
//!   contents), `packet_policy`, `summary`; `test_config` (test configs, tests only)
//! - L0 no `crate::` imports: `diag` (the problem type), `ids`, `maglev`,
//!   `pin_names`, `logging`, `cli_docs` (completions and man pages)

#![warn(unreachable_pub)]

pub mod announce;
pub mod cluster_command;
pub mod cli_docs;
pub mod config;
pub(crate) mod diag;
pub(crate) mod health;
pub(crate) mod ids;
pub mod control;
pub(crate) mod kernel_events;
pub mod logging;
pub mod list_command;
pub mod lookup_command;
pub mod maglev;
pub mod metrics;
pub mod plan;
pub(crate) mod previous_owners;
pub mod summary;
/// Test configs written as TOML: for lb-agent's unit tests and, through the
/// `test-support` feature, the tests crate; not in a release build.
#[cfg(any(test, feature = "test-support"))]
pub mod test_config;
pub mod dataplane;
pub mod decap_command;
pub(crate) mod nexthop;
pub(crate) mod notify;
pub(crate) mod packet_policy;
pub(crate) mod pin_names;
pub mod pins;
pub mod runtime;
pub mod source;
pub(crate) mod rates;
pub mod stats;
pub mod stats_command;
pub(crate) mod vlan_offload;
pub(crate) mod xdp_attach;

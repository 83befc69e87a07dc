//! lb-agent as a library: the pure parts (config, Maglev, plan, summary) that
//! the binary, the tests crate and `lb-agent check` share.

pub mod announce;
pub mod config;
pub mod diag;
pub mod health;
pub mod ids;
pub mod control;
pub mod kernel_events;
pub mod logging;
pub mod lookup_command;
pub mod maglev;
pub mod metrics;
pub mod plan;
pub mod previous_owners;
pub mod summary;
pub mod dataplane;
pub mod decap_command;
pub mod nexthop;
pub mod packet_policy;
pub mod pin_names;
pub mod pins;
pub mod runtime;
pub mod rates;
pub mod stats;
pub mod stats_command;
pub mod vlan_offload;
pub mod xdp_attach;

//! Metrics of the config source (etcd), when the local file names one.

use super::text::{Kind, Text};
use crate::source::status::SourceStatus;

pub const SOURCE_UP: &str = "lb_config_source_up";
pub const SOURCE_REVISION: &str = "lb_config_source_revision";

/// Appends the source's families to a scrape.
pub(super) fn encode(status: &SourceStatus) -> String {
    let mut t = Text::with_capacity(512);
    t.family(SOURCE_UP, Kind::Gauge, "1 while etcd (the config source) is reachable; 0: forwarding goes on with the last applied revision.");
    t.sample(SOURCE_UP, &[], u64::from(status.up()));
    t.family(SOURCE_REVISION, Kind::Gauge, "etcd revision of the cluster document this host runs.");
    t.sample(SOURCE_REVISION, &[], status.applied_revision());
    t.finish()
}

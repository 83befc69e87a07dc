//! `cargo xtask demo --ha` cannot rot: its scenario (`lb_tests::ha_demo`)
//! runs here with short settings, and what it prints must hold. Needs root.

use std::time::Duration;

use lb_tests::ha_demo::{self, HaDemoOptions};
use lb_tests::topology;

#[test]
fn the_ha_demo_keeps_every_connection_and_moves_only_the_failed_backends_flows() {
    if !topology::root_or_skip("the_ha_demo_keeps_every_connection_and_moves_only_the_failed_backends_flows", "network namespaces, XDP, BIRD") {
        return;
    }
    let options = HaDemoOptions { connections: 16, hold: Duration::from_secs(4), flows: 30 };
    let report = ha_demo::run(lb_tests::lab_bins!(), &options, false, &|m| eprintln!("[ha-demo] {m}")).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(report.crash.len(), 2, "one crash figure per address family: {report:?}");
    for c in &report.crash {
        assert_eq!(c.broken, 0, "{} connections broken by the crash: {c:?}", c.family.name());
        assert_eq!(c.kept, options.connections as usize, "{c:?}");
        assert!(c.crossed > 0, "ECMP sent no {} connection through the crashed host: {c:?}", c.family.name());
    }
    let h = &report.health;
    assert!(h.on_failed > 0 && h.on_others > 0, "the flows should spread over the backends: {h:?}");
    assert_eq!(h.moved_from_failed, h.on_failed, "every flow of the failed backend moves: {h:?}");
    assert_eq!(h.moved_from_others, 0, "no flow of another backend moves: {h:?}");
    assert_eq!(h.returned, h.on_failed, "the failed backend's flows come back when it recovers: {h:?}");
}

//! `flow_state`, `encap`, `gue_port` and `previous_owner_window`: defaults,
//! the older `flow_table`, and each rule with a config that breaks it.

use super::*;
use crate::test_config::{TestConfig, TestVip};

/// One VIP on one backend, every new field at its default.
fn good() -> String {
    TestConfig::new().vip(TestVip::new("web", "192.0.2.10:80").backends(["198.51.100.11"])).to_toml()
}

fn with_lb(extra: &str) -> String {
    good().replace("interface = \"eth0\"", &format!("interface = \"eth0\"\n{extra}"))
}

fn with_vip(extra: &str) -> String {
    good().replace("port = 80", &format!("port = 80\n{extra}"))
}

/// The one problem of `text`, as (field, message).
#[track_caller]
fn problem(text: &str) -> (String, String) {
    let e = parse(text, "lb.toml").expect_err("expected a problem");
    assert_eq!(e.problems.len(), 1, "{e}");
    let shown = e.to_string();
    let p = &e.problems[0];
    assert!(shown.contains(&format!("lb.toml: {}: ", p.field)), "{shown}");
    (p.field.clone(), p.message.clone())
}

#[test]
fn defaults_are_lb_state_ipip_port_6080_and_one_hour() {
    let c = parse(&good(), "lb.toml").unwrap();
    assert_eq!((c.vips[0].flow_state, c.vips[0].encap), (FlowState::Lb, Encap::Ipip));
    assert_eq!((c.lb.encap, c.lb.gue_port), (Encap::Ipip, 6080));
    assert_eq!(c.lb.previous_owner_window, Duration::from_secs(3600));
}

#[test]
fn the_older_flow_table_still_reads() {
    let state = |extra: &str| parse(&with_vip(extra), "lb.toml").unwrap().vips[0].flow_state;
    assert_eq!(state("flow_table = true"), FlowState::Lb);
    assert_eq!(state("flow_table = false"), FlowState::None);
    assert_eq!(state("flow_state = \"none\""), FlowState::None);
    assert_eq!(state("flow_state = \"backend\""), FlowState::Backend);
}

#[test]
fn flow_state_and_flow_table_together_are_refused_naming_both() {
    let (field, message) = problem(&with_vip("flow_table = false\nflow_state = \"lb\""));
    assert_eq!(field, "vip \"web\".flow_table");
    assert!(message.contains("flow_state = \"lb\"") && message.contains("false"), "{message}");
}

#[test]
fn an_unknown_flow_state_is_named_with_the_choices() {
    let (field, message) = problem(&with_vip("flow_state = \"backends\""));
    assert_eq!(field, "vip \"web\".flow_state");
    assert!(message.contains("\"backends\"") && message.contains("\"backend\""), "{message}");
}

#[test]
fn a_backend_vip_uses_gue_whatever_lb_encap_says() {
    let c = parse(&with_vip("flow_state = \"backend\""), "lb.toml").unwrap();
    assert_eq!((c.lb.encap, c.vips[0].encap), (Encap::Ipip, Encap::Gue));
    let c = parse(&with_vip("flow_state = \"backend\"\nencap = \"gue\""), "lb.toml").unwrap();
    assert_eq!(c.vips[0].encap, Encap::Gue);
}

#[test]
fn ipip_on_a_backend_vip_is_refused() {
    let (field, message) = problem(&with_vip("flow_state = \"backend\"\nencap = \"ipip\""));
    assert_eq!(field, "vip \"web\".encap");
    assert!(message.contains("\"ipip\"") && message.contains("\"gue\""), "{message}");
}

#[test]
fn lb_encap_is_every_vips_default_and_a_vip_may_override_it() {
    let c = parse(&with_lb("encap = \"gue\""), "lb.toml").unwrap();
    assert_eq!((c.lb.encap, c.vips[0].encap, c.vips[0].flow_state), (Encap::Gue, Encap::Gue, FlowState::Lb));
    let text = with_lb("encap = \"gue\"").replace("port = 80", "port = 80\nencap = \"ipip\"");
    assert_eq!(parse(&text, "lb.toml").unwrap().vips[0].encap, Encap::Ipip);
}

#[test]
fn unknown_encaps_are_named() {
    let (field, message) = problem(&with_lb("encap = \"vxlan\""));
    assert_eq!(field, "lb.encap");
    assert!(message.contains("\"vxlan\"") && message.contains("\"gue\""), "{message}");
    let (field, message) = problem(&with_vip("encap = \"gre\""));
    assert_eq!(field, "vip \"web\".encap");
    assert!(message.contains("\"gre\""), "{message}");
}

#[test]
fn gue_port_must_be_a_port() {
    assert_eq!(parse(&with_lb("gue_port = 6081"), "lb.toml").unwrap().lb.gue_port, 6081);
    for bad in ["0", "65536", "-1"] {
        let (field, message) = problem(&with_lb(&format!("gue_port = {bad}")));
        assert_eq!(field, "lb.gue_port");
        assert!(message.contains(bad) && message.contains("1..=65535"), "{message}");
    }
}

#[test]
fn previous_owner_window_is_a_duration_in_range() {
    let window = |v: &str| parse(&with_lb(&format!("previous_owner_window = {v:?}")), "lb.toml").unwrap().lb.previous_owner_window;
    assert_eq!(window("30m"), Duration::from_secs(1800));
    assert_eq!(window("2h"), Duration::from_secs(7200));
    assert_eq!(window("1s"), Duration::from_secs(1));
    for (bad, needle) in [("soon", "not a duration"), ("500ms", "out of range"), ("200h", "out of range")] {
        let (field, message) = problem(&with_lb(&format!("previous_owner_window = {bad:?}")));
        assert_eq!(field, "lb.previous_owner_window");
        assert!(message.contains(bad) && message.contains(needle), "{message}");
    }
}

//! What only a restart can change: settings that size maps or are load-time
//! constants to the verifier, and where the agent lives.

use std::net::IpAddr;

use anyhow::Result;
use lb_common::flows::LoadedState;

use super::load_options;
use crate::{
    config::Config,
    dataplane, nexthop,
};

/// Settings that size maps or are load-time constants, old -> new.
pub(super) fn loaded_differences(old: &LoadedState, new: &LoadedState) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |name: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{name}: {a} -> {b}"));
        }
    };
    field("object version", old.version.to_string(), new.version.to_string());
    field("lb.ring_size", old.ring_size.to_string(), new.ring_size.to_string());
    field("lb.hash_seed", old.hash_seed.to_string(), new.hash_seed.to_string());
    field("lb.max_vips", old.max_vips.to_string(), new.max_vips.to_string());
    field("lb.max_backends", old.max_backends.to_string(), new.max_backends.to_string());
    field("lb.flow_table_size", old.flow_table_size.to_string(), new.flow_table_size.to_string());
    field("interface MTU", old.mtu.to_string(), new.mtu.to_string());
    field("lb.icmp_echo/too_big/unknown_port (policy bits)", format!("{:#x}", old.policy), format!("{:#x}", new.policy));
    field("interface index", old.ifindex.to_string(), new.ifindex.to_string());
    field("lb.gue_port", old.gue_port.to_string(), new.gue_port.to_string());
    for (name, family, was, now) in [
        ("lb.tunnel_source_v4", lb_common::FAMILY_V4, &old.tunnel_source_v4, &new.tunnel_source_v4),
        ("lb.tunnel_source_v6", lb_common::FAMILY_V6, &old.tunnel_source_v6, &new.tunnel_source_v6),
    ] {
        let (was, now) = (tunnel_source(was, family), tunnel_source(now, family));
        if was == now {
            continue;
        }
        let mut line = format!("{name}: {} -> {}", was.map_or("none".into(), |a| a.to_string()), now.map_or("none".into(), |a| a.to_string()));
        if let (Some(was), None) = (was, now) {
            line += &format!(" (the interface has no such address now: restore {was} on it, or set {name} = \"{was}\")");
        }
        out.push(line);
    }
    out
}

/// A tunnel source as the pinned state records it; all-zero words mean none.
fn tunnel_source(words: &lb_common::AddrWords, family: u8) -> Option<IpAddr> {
    if words.iter().all(|w| *w == 0) {
        return None;
    }
    lb_common::words_addr(words, family)
}

/// What a reload cannot change: the load-time settings and where the agent lives.
pub(super) fn needs_restart(old: &Config, new: &Config, loaded: &LoadedState, iface: &nexthop::Interface) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if old.lb.interface != new.lb.interface {
        out.push(format!("lb.interface: {:?} -> {:?}", old.lb.interface, new.lb.interface));
    }
    if old.lb.xdp_mode != new.lb.xdp_mode {
        out.push(format!("lb.xdp_mode: {} -> {}", old.lb.xdp_mode, new.lb.xdp_mode));
    }
    if old.lb.bpffs_dir != new.lb.bpffs_dir {
        out.push(format!("lb.bpffs_dir: {} -> {}", old.lb.bpffs_dir.display(), new.lb.bpffs_dir.display()));
    }
    if old.lb.run_dir != new.lb.run_dir {
        out.push(format!("lb.run_dir: {} -> {}", old.lb.run_dir.display(), new.lb.run_dir.display()));
    }
    // The follower is started once, for the source the agent started with.
    if old.source != new.source {
        let show = |s: &Option<crate::config::source::SourceConfig>| s.as_ref().map_or_else(|| "none".to_string(), |s| format!("{} at {}", s.key, s.endpoints.join(",")));
        out.push(format!("[source]: {} -> {}", show(&old.source), show(&new.source)));
    }
    if !out.is_empty() {
        return Ok(out);
    }
    let wanted = dataplane::loaded_state(&load_options(new, iface)?, iface.index);
    out.extend(loaded_differences(loaded, &wanted));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::LoadOptions;

    fn state(v4: Option<std::net::Ipv4Addr>, v6: Option<std::net::Ipv6Addr>) -> LoadedState {
        let opts = LoadOptions { tunnel_source_v4: v4, tunnel_source_v6: v6, ..LoadOptions::default() };
        dataplane::loaded_state(&opts, 7)
    }

    /// An LB host whose interface lost its IPv6 address after a link-down
    /// crash: the refusal names the addresses, not their words, and says
    /// what to do.
    #[test]
    fn a_lost_tunnel_source_is_named_as_an_address_with_a_hint() {
        let v4 = "198.51.100.2".parse().ok();
        let before = state(v4, "2001:db8::2".parse().ok());
        let after = state(v4, None);
        let lines = loaded_differences(&before, &after);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("lb.tunnel_source_v6: 2001:db8::2 -> none"), "{}", lines[0]);
        assert!(lines[0].contains("restore 2001:db8::2") && lines[0].contains("lb.tunnel_source_v6 = \"2001:db8::2\""), "{}", lines[0]);
        let moved = loaded_differences(&before, &state("198.51.100.3".parse().ok(), "2001:db8::2".parse().ok()));
        assert_eq!(moved, vec!["lb.tunnel_source_v4: 198.51.100.2 -> 198.51.100.3".to_string()]);
    }
}

//! The packet policies of the config (`lb.icmp_echo`, `lb.too_big`,
//! `lb.unknown_port`, `vip.fragments`) and the kernel bits they become.
//! Defaults and their reasons are documented on each type and in README.md.

use std::collections::BTreeMap;
use std::net::IpAddr;

use lb_common::packet_policy::{POLICY_ECHO_REPLY, POLICY_TOO_BIG_ICMP, POLICY_UNKNOWN_PORT_DROP, VIP_FLAG_FRAGMENTS_FORWARD};

use super::VipConfig;

/// `lb.icmp_echo`: what happens to an echo request to a VIP address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EchoPolicy {
    /// Default, as Katran: the LB answers, so `ping VIP` works whatever the
    /// backends do, and costs them nothing.
    Reply,
    /// Pass it to the LB host's stack (which answers only if it owns the VIP).
    Pass,
}

/// `lb.too_big`: a packet that would exceed the interface MTU once encapsulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TooBigPolicy {
    /// Default: answer fragmentation-needed / packet-too-big with the MTU left
    /// after the tunnel header, so PMTU discovery shrinks the client's packets.
    Icmp,
    /// Drop it (counted): for networks that filter ICMP anyway.
    Drop,
}

/// `lb.unknown_port`: TCP/UDP to a VIP address on a port no VIP configures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownPortPolicy {
    /// Default: pass to the host stack, which may serve the port itself (ssh
    /// on a VIP address, for instance) and otherwise answers with a reset.
    Pass,
    /// Drop (counted): the LB host serves nothing on VIP addresses.
    Drop,
}

/// `vip.fragments`: fragments to the VIP's address and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragmentPolicy {
    /// Default, as Katran: drop (counted). Fragments have no ports to hash
    /// like the flow, and most services never see them (TCP uses PMTU discovery).
    Drop,
    /// Forward every fragment hashing addresses and protocol only, so all
    /// fragments of a datagram reach one backend (which reassembles). At most
    /// one VIP per address may choose this (the kernel has one fragment ring
    /// per address); ports play no part, so the backend is not the flow's.
    Forward,
}

/// The `[lb]` packet policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketPolicy {
    pub icmp_echo: EchoPolicy,
    pub too_big: TooBigPolicy,
    pub unknown_port: UnknownPortPolicy,
}

impl Default for PacketPolicy {
    fn default() -> Self {
        Self { icmp_echo: EchoPolicy::Reply, too_big: TooBigPolicy::Icmp, unknown_port: UnknownPortPolicy::Pass }
    }
}

impl PacketPolicy {
    /// The value of the `POLICY` global.
    pub fn bits(&self) -> u32 {
        let mut bits = 0;
        if self.icmp_echo == EchoPolicy::Reply {
            bits |= POLICY_ECHO_REPLY;
        }
        if self.too_big == TooBigPolicy::Icmp {
            bits |= POLICY_TOO_BIG_ICMP;
        }
        if self.unknown_port == UnknownPortPolicy::Drop {
            bits |= POLICY_UNKNOWN_PORT_DROP;
        }
        bits
    }
}

/// One of `options` by name, `default` when absent; the error names the choices.
pub fn choice<T: Copy>(value: Option<&str>, default: T, options: &[(&str, T)]) -> Result<T, String> {
    let Some(v) = value else { return Ok(default) };
    options.iter().find(|(name, _)| *name == v).map(|(_, t)| *t).ok_or_else(|| {
        let names: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
        format!("{v:?} is not one of {}", names.join(", "))
    })
}

pub const ECHO_CHOICES: &[(&str, EchoPolicy)] = &[("reply", EchoPolicy::Reply), ("pass", EchoPolicy::Pass)];
pub const TOO_BIG_CHOICES: &[(&str, TooBigPolicy)] = &[("icmp", TooBigPolicy::Icmp), ("drop", TooBigPolicy::Drop)];
pub const UNKNOWN_PORT_CHOICES: &[(&str, UnknownPortPolicy)] =
    &[("pass", UnknownPortPolicy::Pass), ("drop", UnknownPortPolicy::Drop)];
pub const FRAGMENT_CHOICES: &[(&str, FragmentPolicy)] =
    &[("drop", FragmentPolicy::Drop), ("forward", FragmentPolicy::Forward)];

/// The VIP flag bits of a fragment policy.
pub fn fragment_flags(p: FragmentPolicy) -> u32 {
    match p {
        FragmentPolicy::Drop => 0,
        FragmentPolicy::Forward => VIP_FLAG_FRAGMENTS_FORWARD,
    }
}

/// `(field, message)` for every VIP that sets `fragments = "forward"` on an
/// address where an earlier VIP already does (one fragment ring per address).
pub fn fragment_conflicts(vips: &[VipConfig]) -> Vec<(String, String)> {
    let mut first: BTreeMap<IpAddr, &str> = BTreeMap::new();
    let mut out = Vec::new();
    for v in vips.iter().filter(|v| v.fragments == FragmentPolicy::Forward) {
        match first.get(&v.address) {
            Some(other) => out.push((
                format!("vip {:?}.fragments", v.name),
                format!(
                    "\"forward\" is already set by vip {other:?} on {}; only one VIP per address can forward fragments",
                    v.address
                ),
            )),
            None => {
                first.insert(v.address, &v.name);
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn default_bits_match_the_kernel_default() {
        assert_eq!(PacketPolicy::default().bits(), lb_common::packet_policy::DEFAULT_POLICY);
    }

    #[test]
    fn choice_reports_the_options() {
        assert_eq!(choice(None, TooBigPolicy::Icmp, TOO_BIG_CHOICES), Ok(TooBigPolicy::Icmp));
        assert_eq!(choice(Some("drop"), TooBigPolicy::Icmp, TOO_BIG_CHOICES), Ok(TooBigPolicy::Drop));
        assert_eq!(choice(Some("x"), TooBigPolicy::Icmp, TOO_BIG_CHOICES), Err("\"x\" is not one of \"icmp\", \"drop\"".into()));
    }

    const CONFIG: &str = r#"
[lb]
interface = "eth0"
ring_size = 13
POLICY_LINES
[[vip]]
name = "dns"
address = "192.0.2.10"
port = 53
protocol = "udp"
fragments = "forward"
  [[vip.backend]]
  address = "198.51.100.11"
[[vip]]
name = "web"
address = "192.0.2.10"
port = 80
fragments = "WEB_FRAGMENTS"
  [[vip.backend]]
  address = "198.51.100.12"
"#;

    /// The two-VIP test config with `policy` lines and web's fragment policy
    /// (also used by `packet_policy`'s tests).
    pub(crate) fn parse(policy: &str, web_fragments: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        crate::config::parse(&CONFIG.replace("POLICY_LINES", policy).replace("WEB_FRAGMENTS", web_fragments), "t.toml")
    }

    #[test]
    fn config_policies_defaults_values_and_errors() {
        let c = parse("", "drop").unwrap();
        assert_eq!(c.lb.packets, PacketPolicy::default());
        let c = parse("icmp_echo = \"pass\"\ntoo_big = \"drop\"\nunknown_port = \"drop\"\n", "drop").unwrap();
        assert_eq!(c.lb.packets.bits(), POLICY_UNKNOWN_PORT_DROP);
        let e = parse("icmp_echo = \"answer\"\ntoo_big = \"x\"\n", "sometimes").unwrap_err().to_string();
        for field in ["lb.icmp_echo", "lb.too_big", "vip \"web\".fragments"] {
            assert!(e.contains(field), "{field} in {e}");
        }
        let e = parse("", "forward").unwrap_err().to_string();
        assert!(e.contains("only one VIP per address can forward fragments"), "{e}");
    }

}

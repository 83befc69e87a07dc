//! The configs of the BPF_PROG_TEST_RUN tests (fixtures, flows, fuzz,
//! events) and the bench, built with lb-agent's test-config builder on the
//! addresses they share.

use std::net::{Ipv4Addr, Ipv6Addr};

pub use lb_agent::test_config::{TestBackend, TestConfig, TestVip};

/// The LB host's own addresses: the outer sources of its tunnels.
pub const TUNNEL_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const TUNNEL_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x2);
/// The IPv4 and IPv6 backends most VIPs of these configs share.
pub const BACKENDS_V4: [&str; 3] = ["198.51.100.11", "198.51.100.12", "198.51.100.13"];
pub const BACKENDS_V6: [&str; 2] = ["2001:db8::11", "2001:db8::12"];

/// `[lb]` of a config loaded without an interface (`interface` is only a
/// name here) with both tunnel sources. Finish it with
/// [`TestConfig::static_macs`]: the fixtures resolve no next hop.
pub fn unattached(interface: &str) -> TestConfig {
    TestConfig::new().interface(interface).tunnel_source_v4(TUNNEL_V4).tunnel_source_v6(TUNNEL_V6)
}

/// TCP 192.0.2.10:80 on the three IPv4 backends.
pub fn web() -> TestVip {
    TestVip::new("web", "192.0.2.10:80").backends(BACKENDS_V4)
}

/// UDP 192.0.2.10:53 on the first two IPv4 backends.
pub fn dns() -> TestVip {
    TestVip::new("dns", "192.0.2.10:53/udp").backends(&BACKENDS_V4[..2])
}

/// TCP [2001:db8:f::10]:80 on the two IPv6 backends.
pub fn web6() -> TestVip {
    TestVip::new("web6", "[2001:db8:f::10]:80").backends(BACKENDS_V6)
}

//! Test configs from a few calls, written out as TOML text so that every test
//! still goes through the parser and its validation (what an operator's file
//! goes through), instead of building a `Config` by hand.
//!
//! ```ignore
//! let config = TestConfig::new()
//!     .ring_size(13)
//!     .vip(TestVip::new("web", "192.0.2.10:80").backends(["198.51.100.11", "198.51.100.12"]))
//!     .parse();
//! ```
//!
//! Only tests use it: lb-agent's own unit tests (`cfg(test)`) and the tests
//! crate (the `test-support` feature), so a release build carries none of it.
//! Settings are written in the order they are set; setting a key again
//! replaces its value.

use std::net::{IpAddr, SocketAddr};

use toml::Value;

use crate::config::{self, Config};

/// One TOML table's `key = value` lines, in the order they were set.
#[derive(Clone, Debug, Default)]
struct Table(Vec<(String, Value)>);

impl Table {
    fn set(&mut self, key: &str, value: impl Into<Value>) {
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key.to_owned(), value)),
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn write(&self, out: &mut String, indent: &str) {
        for (key, value) in &self.0 {
            out.push_str(&format!("{indent}{key} = {value}\n"));
        }
    }
}

/// A whole config: the `[lb]` table and the VIPs, in order.
#[derive(Clone, Debug)]
pub struct TestConfig {
    lb: Table,
    vips: Vec<TestVip>,
}

impl Default for TestConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl TestConfig {
    /// `[lb] interface = "eth0"` (the only required setting) and no VIP.
    pub fn new() -> Self {
        let mut lb = Table::default();
        lb.set("interface", "eth0");
        TestConfig { lb, vips: Vec::new() }
    }

    /// Sets any `[lb]` setting; the named methods below cover the common ones.
    pub fn lb(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.lb.set(key, value);
        self
    }

    pub fn interface(self, name: &str) -> Self {
        self.lb("interface", name)
    }

    pub fn tunnel_source_v4(self, address: impl ToString) -> Self {
        self.lb("tunnel_source_v4", address.to_string())
    }

    pub fn tunnel_source_v6(self, address: impl ToString) -> Self {
        self.lb("tunnel_source_v6", address.to_string())
    }

    pub fn ring_size(self, slots: u32) -> Self {
        self.lb("ring_size", i64::from(slots))
    }

    pub fn hash_seed(self, seed: u32) -> Self {
        self.lb("hash_seed", i64::from(seed))
    }

    pub fn max_vips(self, n: u32) -> Self {
        self.lb("max_vips", i64::from(n))
    }

    pub fn max_backends(self, n: u32) -> Self {
        self.lb("max_backends", i64::from(n))
    }

    /// Appends a VIP (VIP order is config order: it decides the rows).
    pub fn vip(mut self, vip: TestVip) -> Self {
        self.vips.push(vip);
        self
    }

    /// Gives every backend without a `mac` a static next-hop MAC made from
    /// its address, so that nothing needs netlink (the BPF fixtures):
    /// 02:00:00:00:00:NN for IPv4 and 02:00:00:00:01:NN for IPv6, NN the
    /// address's last byte.
    pub fn static_macs(mut self) -> Self {
        for backend in self.vips.iter_mut().flat_map(|v| v.backends.iter_mut()) {
            if backend.table.get("mac").is_none() {
                let address: IpAddr = match backend.table.get("address") {
                    Some(Value::String(s)) => s.parse().unwrap_or_else(|e| panic!("backend address {s:?}: {e}")),
                    other => panic!("backend without an address string: {other:?}"),
                };
                let (family, last) = match address {
                    IpAddr::V4(a) => (0, a.octets()[3]),
                    IpAddr::V6(a) => (1, a.octets()[15]),
                };
                backend.table.set("mac", format!("02:00:00:00:{family:02x}:{last:02x}"));
            }
        }
        self
    }

    /// The config as TOML text.
    pub fn to_toml(&self) -> String {
        let mut out = String::from("[lb]\n");
        self.lb.write(&mut out, "");
        for vip in &self.vips {
            vip.write(&mut out);
        }
        out
    }

    /// Parses and validates the text as `test.toml`; panics with the
    /// problems (a test config that does not parse is a bug in the test).
    pub fn parse(&self) -> Config {
        let text = self.to_toml();
        config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("the test config does not parse:\n{e}\n{text}"))
    }
}

/// One `[[vip]]` with its optional `[vip.health]` and its backends.
#[derive(Clone, Debug)]
pub struct TestVip {
    table: Table,
    health: Option<Table>,
    backends: Vec<TestBackend>,
}

impl TestVip {
    /// `name` at `address:port`, optionally with `/tcp` or `/udp` (without
    /// it the config says no protocol: the default, TCP). An IPv6 address
    /// is written in brackets: `[2001:db8:f::10]:80/udp`.
    pub fn new(name: &str, endpoint: &str) -> Self {
        let (socket, protocol) = match endpoint.rsplit_once('/') {
            Some((socket, protocol)) => (socket, Some(protocol)),
            None => (endpoint, None),
        };
        let socket: SocketAddr = socket.parse().unwrap_or_else(|e| panic!("VIP endpoint {endpoint:?}: {e}"));
        let mut table = Table::default();
        table.set("name", name);
        table.set("address", socket.ip().to_string());
        table.set("port", i64::from(socket.port()));
        if let Some(protocol) = protocol {
            table.set("protocol", protocol);
        }
        TestVip { table, health: None, backends: Vec::new() }
    }

    /// Sets any VIP setting (`hash`, `fragments`, ...).
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.table.set(key, value);
        self
    }

    /// `flow_table = on` (false: a stateless VIP).
    pub fn flow_table(self, on: bool) -> Self {
        self.set("flow_table", on)
    }

    /// Health checks on, with every `[vip.health]` setting at its default.
    pub fn checked(mut self) -> Self {
        self.health.get_or_insert_with(Table::default);
        self
    }

    /// Sets a `[vip.health]` setting (and so turns checks on).
    pub fn health(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.health.get_or_insert_with(Table::default).set(key, value);
        self
    }

    /// Appends backends of weight 1 at these addresses.
    pub fn backends(mut self, addresses: impl IntoIterator<Item = impl ToString>) -> Self {
        self.backends.extend(addresses.into_iter().map(TestBackend::new));
        self
    }

    /// Appends one backend with settings of its own.
    pub fn backend(mut self, backend: TestBackend) -> Self {
        self.backends.push(backend);
        self
    }

    fn write(&self, out: &mut String) {
        out.push_str("\n[[vip]]\n");
        self.table.write(out, "");
        if let Some(health) = &self.health {
            out.push_str("  [vip.health]\n");
            health.write(out, "  ");
        }
        for backend in &self.backends {
            out.push_str("  [[vip.backend]]\n");
            backend.table.write(out, "  ");
            if let Some(health) = &backend.health {
                out.push_str("    [vip.backend.health]\n");
                health.write(out, "    ");
            }
        }
    }
}

/// One `[[vip.backend]]` with its optional `[vip.backend.health]`.
#[derive(Clone, Debug)]
pub struct TestBackend {
    table: Table,
    health: Option<Table>,
}

impl TestBackend {
    pub fn new(address: impl ToString) -> Self {
        let mut table = Table::default();
        table.set("address", address.to_string());
        TestBackend { table, health: None }
    }

    /// Sets any backend setting (`weight`, `mac`, `backup`, ...).
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.table.set(key, value);
        self
    }

    pub fn weight(self, weight: u32) -> Self {
        self.set("weight", i64::from(weight))
    }

    pub fn mac(self, mac: &str) -> Self {
        self.set("mac", mac)
    }

    /// A backup: serves only when no primary backend is up.
    pub fn backup(self) -> Self {
        self.set("backup", true)
    }

    /// Sets a `[vip.backend.health]` setting (`initial = "down"`, ...).
    pub fn health(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.health.get_or_insert_with(Table::default).set(key, value);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_was_set_in_order_and_parses() {
        let c = TestConfig::new()
            .ring_size(13)
            .hash_seed(7)
            .lb("icmp_echo", "pass")
            .ring_size(251)
            .vip(TestVip::new("web", "192.0.2.10:80").health("interval", "3s").backends(["198.51.100.11"]).backend(
                TestBackend::new("198.51.100.12").weight(2).backup().health("initial", "down"),
            ))
            .vip(TestVip::new("dns6", "[2001:db8:f::10]:53/udp").flow_table(false).backends(["2001:db8::11"]))
            .static_macs();
        let text = c.to_toml();
        assert!(text.starts_with("[lb]\ninterface = \"eth0\"\nring_size = 251\nhash_seed = 7\nicmp_echo = \"pass\"\n"), "{text}");
        let parsed = c.parse();
        assert_eq!((parsed.lb.ring_size, parsed.lb.hash_seed), (251, 7));
        let (web, dns) = (&parsed.vips[0], &parsed.vips[1]);
        assert_eq!((web.name.as_str(), web.port, web.protocol), ("web", 80, config::Protocol::Tcp));
        assert_eq!((dns.name.as_str(), dns.port, dns.protocol, dns.flow_state), ("dns6", 53, config::Protocol::Udp, config::FlowState::None));
        assert_eq!(dns.address, "2001:db8:f::10".parse::<IpAddr>().unwrap());
        assert_eq!((web.backends[1].weight, web.backends[1].backup), (2, true));
        let mac = |b: &config::BackendConfig| b.mac.unwrap().to_string();
        assert_eq!((mac(&web.backends[0]), mac(&dns.backends[0])), ("02:00:00:00:00:0b".into(), "02:00:00:00:01:11".into()));
    }

    #[test]
    #[should_panic(expected = "does not parse")]
    fn a_bad_config_panics_with_its_problems() {
        TestConfig::new().vip(TestVip::new("web", "192.0.2.10:80")).lb("ring_size", 0).parse();
    }
}

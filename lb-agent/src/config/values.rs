//! Small value types of the config: attach mode, protocol, hash mode, MAC
//! address, flow state, encapsulation.

use super::*;

/// How the program is attached (`xdp_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XdpMode {
    /// Native if the driver supports it, else generic.
    Auto,
    /// Driver mode only (fails if the NIC's driver has no XDP support).
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Generic,
}

impl XdpMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Transport protocol of a VIP (`protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number, as in the packet and in [`lb_common::VipKey`].
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::PROTO_TCP,
            Protocol::Udp => lb_common::PROTO_UDP,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// The inverse of [`Protocol::number`].
    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            lb_common::PROTO_TCP => Some(Protocol::Tcp),
            lb_common::PROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(format!("{s:?} is not a protocol (expected \"tcp\" or \"udp\")")),
        }
    }
}

/// What a VIP hashes to pick a backend (`hash`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashMode {
    /// The 5-tuple (addresses, ports, protocol).
    Flow,
    /// The source address only: client affinity.
    Source,
}

impl HashMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            HashMode::Flow => "flow",
            HashMode::Source => "source",
        }
    }
}

impl fmt::Display for HashMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An Ethernet address, written `aa:bb:cc:dd:ee:ff` (either case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Group (multicast or broadcast) bit set.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    pub const fn is_zero(&self) -> bool {
        matches!(self.0, [0, 0, 0, 0, 0, 0])
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a MAC address (expected six hex bytes like \"02:00:00:00:00:11\")");
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

/// Where a VIP's flow state lives (`flow_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowState {
    /// The LB host's flow table (established flows keep their backend while
    /// it is usable). Backends may decapsulate with the kernel's ipip module.
    Lb,
    /// The backends ("second chance"): TCP keeps no state on the LB host;
    /// each ring slot's previous owner travels in the GUE header and the
    /// backends' `lb-agent decap` sends a packet it has no connection for
    /// there once. UDP behaves as [`FlowState::Lb`] (no connection to look up).
    Backend,
    /// Nowhere: pure Maglev, every packet follows the ring.
    None,
}

/// `flow_state` values, by name.
pub const FLOW_STATE_CHOICES: &[(&str, FlowState)] =
    &[("lb", FlowState::Lb), ("backend", FlowState::Backend), ("none", FlowState::None)];

impl FlowState {
    pub const fn as_str(self) -> &'static str {
        match self {
            FlowState::Lb => "lb",
            FlowState::Backend => "backend",
            FlowState::None => "none",
        }
    }
}

impl fmt::Display for FlowState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How packets travel to the backends (`encap`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encap {
    /// IPv4-in-IPv4 / IPv6-in-IPv6 (and the mixed families).
    Ipip,
    /// IP / UDP (destination `lb.gue_port`, source port from the flow hash) / GUE.
    Gue,
}

/// `encap` values, by name.
pub const ENCAP_CHOICES: &[(&str, Encap)] = &[("ipip", Encap::Ipip), ("gue", Encap::Gue)];

impl Encap {
    pub const fn as_str(self) -> &'static str {
        match self {
            Encap::Ipip => "ipip",
            Encap::Gue => "gue",
        }
    }
}

impl fmt::Display for Encap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

//! Validation: every field checked, every problem collected.

use super::*;

#[derive(Default)]
pub(super) struct Validator {
    pub(super) problems: Vec<Problem>,
}

impl Validator {
    pub(super) fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { field: field.into(), message: message.into() });
    }

    /// An integer in `min..=max`, or a problem.
    pub(super) fn int(&mut self, field: &str, value: Option<i64>, default: u32, min: u32, max: u32) -> Option<u32> {
        let Some(n) = value else { return Some(default) };
        if n < i64::from(min) || n > i64::from(max) {
            self.add(field, format!("{n} is out of range {min}..={max}"));
            return None;
        }
        Some(n as u32)
    }

    pub(super) fn config(&mut self, raw: RawConfig) -> Option<Config> {
        let lb = match raw.lb {
            Some(lb) => self.lb(lb),
            None => {
                self.add("lb", "the [lb] table is missing (it needs at least interface = \"...\")");
                // Validate the VIPs anyway, against the defaults.
                self.lb(RawLb { interface: Some("-".into()), ..RawLb::default() })
            }
        };
        // With a [source], the VIPs come from the cluster document (see `compose`).
        let vips = if raw.vips.is_empty() && raw.source.is_some() { Some(Vec::new()) } else { self.vips(raw.vips, lb.as_ref()) };
        let announce = match raw.announce {
            None => None,
            Some(a) => Some(crate::config::announce::resolve(a, &mut self.problems)?),
        };
        let source = match raw.source {
            None => None,
            Some(s) => Some(crate::config::source::resolve(s, &mut self.problems)?),
        };
        Some(Config { lb: lb?, vips: vips?, announce, source })
    }
    /// `lb.icmp_echo`, `lb.too_big`, `lb.unknown_port`.
    pub(super) fn packet_policy(&mut self, icmp_echo: Option<&str>, too_big: Option<&str>, unknown_port: Option<&str>) -> Option<PacketPolicy> {
        let d = PacketPolicy::default();
        let icmp_echo = self.choice("lb.icmp_echo", icmp_echo, d.icmp_echo, packets::ECHO_CHOICES);
        let too_big = self.choice("lb.too_big", too_big, d.too_big, packets::TOO_BIG_CHOICES);
        let unknown_port = self.choice("lb.unknown_port", unknown_port, d.unknown_port, packets::UNKNOWN_PORT_CHOICES);
        Some(PacketPolicy { icmp_echo: icmp_echo?, too_big: too_big?, unknown_port: unknown_port? })
    }

    /// One of `options` by name (`default` if absent), or a problem naming them.
    pub(super) fn choice<T: Copy>(&mut self, field: &str, value: Option<&str>, default: T, options: &[(&str, T)]) -> Option<T> {
        packets::choice(value, default, options).map_err(|why| self.add(field, why)).ok()
    }
}

/// Why no packet on the wire carries `a` to or from a host, if it is so: a
/// VIP there is unreachable for clients, a backend there for tunnel packets,
/// and a tunnel source there makes backends drop the packets as martians.
/// (The unspecified, multicast and broadcast addresses are checked apart.)
pub(super) fn never_on_the_wire(a: IpAddr) -> Option<String> {
    match a {
        IpAddr::V4(v4) if v4.is_loopback() => {
            Some("a loopback address (127.0.0.0/8), which never leaves a host; give an address the network routes to the host".into())
        }
        IpAddr::V4(v4) if v4.octets()[0] == 0 => {
            Some("in 0.0.0.0/8 (\"this network\", RFC 1122), which is never a packet's destination; give the host's routed address".into())
        }
        IpAddr::V6(v6) if v6.is_loopback() => {
            Some("the loopback address, which never leaves a host; give an address the network routes to the host".into())
        }
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(|v4| {
            format!("an IPv4-mapped IPv6 address, which no packet on the wire carries (an IPv4 packet carries {v4}); write \"{v4}\"")
        }),
        IpAddr::V4(_) => None,
    }
}

/// Why the kernel would refuse, with `ENAMETOOLONG`, a path the agent pins
/// under `dir`, if it would.
pub(super) fn pin_dir_too_long(dir: &str) -> Option<String> {
    if let Some(name) = dir.split('/').find(|c| c.len() > MAX_PATH_COMPONENT_LEN) {
        return Some(format!(
            "its component \"{}...\" is {} bytes, more than the {MAX_PATH_COMPONENT_LEN} a name may have",
            &name[..name.floor_char_boundary(16)],
            name.len()
        ));
    }
    let longest = dir.trim_end_matches('/').len() + 1 + crate::pin_names::longest();
    (longest > MAX_PATH_LEN).then(|| {
        format!(
            "its longest pin path (the directory, '/', and a {}-byte file name) would be {longest} bytes, more than the kernel's {MAX_PATH_LEN}",
            crate::pin_names::longest()
        )
    })
}

/// The kernel's `dev_valid_name`.
pub(super) fn check_ifname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return Err("\".\" and \"..\" are reserved");
    }
    if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err("it contains '/', ':' or whitespace");
    }
    Ok(())
}

pub(super) fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err("it must be 1 to 64 characters long");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-') {
        return Err("only A-Z a-z 0-9 _ . - are allowed");
    }
    Ok(())
}

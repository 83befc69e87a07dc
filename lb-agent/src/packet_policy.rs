//! What the packet policies become in the kernel beyond the `POLICY` bits
//! (the VIP address entries), and the interface MTU.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{bail, Context as _, Result};
use lb_common::packet_policy::{address_key, address_meta, VIP_FLAG_FRAGMENTS_FORWARD};
use lb_common::{VipKey, VipMeta};

use crate::plan::Plan;

/// The address entries of a plan: one per distinct VIP address, naming the
/// ring (and protocol) of the VIP that forwards fragments, if any (the first
/// in row order; validation allows only one).
pub fn address_entries(plan: &Plan) -> Vec<(VipKey, VipMeta)> {
    let mut by_address: BTreeMap<IpAddr, Option<(u32, u8)>> = BTreeMap::new();
    for v in &plan.vips {
        let e = by_address.entry(v.address()).or_insert(None);
        if e.is_none() && v.meta.flags & VIP_FLAG_FRAGMENTS_FORWARD != 0 {
            *e = Some((v.row, v.key.proto));
        }
    }
    by_address
        .into_iter()
        .map(|(a, frag)| {
            let (words, family) = lb_common::addr_words(a);
            (address_key(words, family), address_meta(frag))
        })
        .collect()
}

/// The MTU of `iface` in the current network namespace (an ioctl on a socket
/// of this namespace; /sys/class/net may show another namespace's devices).
pub fn interface_mtu(iface: &str) -> Result<u32> {
    // SAFETY: `ifreq` is plain old data, for which all-zero bytes are valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.len() >= req.ifr_name.len() {
        bail!("interface name {iface:?} is too long");
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain syscall with constant arguments; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket for SIOCGIFMTU");
    }
    // SAFETY: SIOCGIFMTU reads the NUL-terminated name in `req` (checked
    // shorter than the field) and writes only `ifr_mtu` in it.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFMTU, &mut req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: `fd` is ours, open, and not used after this.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(err).with_context(|| format!("reading the MTU of {iface}"));
    }
    // SAFETY: a successful SIOCGIFMTU filled the `ifru_mtu` member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_mtu } as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[lb]
interface = "eth0"
ring_size = 13
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
  [[vip.backend]]
  address = "198.51.100.12"
"#;

    #[test]
    fn address_entries_name_the_forwarding_vip() {
        let plan = crate::plan::plan(&crate::config::parse(CONFIG, "t.toml").unwrap());
        let entries = address_entries(&plan);
        assert_eq!(entries.len(), 1, "one entry per address");
        let dns = plan.vip("dns").unwrap();
        assert_eq!(lb_common::packet_policy::fragment_row(&entries[0].1, lb_common::PROTO_UDP), Some(dns.row));
        assert_eq!(lb_common::packet_policy::fragment_row(&entries[0].1, lb_common::PROTO_TCP), None);
    }

    #[test]
    fn loopback_mtu_is_readable() {
        assert!(interface_mtu("lo").unwrap() >= 1280);
    }
}

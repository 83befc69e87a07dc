//! What the backends of a `flow_state = "backend"` VIP need to redirect a
//! packet to each other (`xdp_decap`'s second chance): forwarding on, since
//! `bpf_fib_lookup` is a forwarding lookup and refuses otherwise, and a
//! neighbour entry for every other backend, since the program does not
//! resolve one (without it the redirect fails and is counted as
//! `redirect_failed`).

use super::*;

impl Topology {
    /// Turns forwarding on in every backend and gives each backend a
    /// permanent neighbour entry for every other backend's addresses.
    pub fn backends_reach_each_other(&self) -> Result<()> {
        let mut macs = Vec::new();
        for b in &self.backends {
            let mac = self.exec_ok(b, "cat", &[&format!("/sys/class/net/{IFACE}/address")])?;
            macs.push((b.clone(), mac.trim().to_string()));
        }
        for b in &self.backends {
            self.exec_ok(b, "sh", &["-c", "echo 1 > /proc/sys/net/ipv4/conf/all/forwarding && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding"])?;
            for (other, mac) in macs.iter().filter(|(o, _)| o != b) {
                let host = self.host(other)?;
                let addresses = host.v4.map(IpAddr::V4).into_iter().chain(host.v6.map(IpAddr::V6));
                for addr in addresses {
                    self.exec_ok(b, "ip", &["neigh", "replace", &addr.to_string(), "lladdr", mac, "dev", IFACE, "nud", "permanent"])?;
                }
            }
        }
        Ok(())
    }
}

//! What the backends of a `flow_state = "backend"` VIP need to redirect a
//! packet to each other (`xdp_decap`'s second chance): forwarding on, since
//! `bpf_fib_lookup` is a forwarding lookup and refuses otherwise, and the
//! kernel forwards the redirect itself while a previous owner's neighbour
//! entry is unresolved (`redirected_via_stack`). No neighbour entries are
//! set up: backends rarely talk to each other, so the tests start as a
//! deployment does, with none.

use super::*;

impl Topology {
    /// Turns forwarding on (both families) in every backend.
    pub fn backends_reach_each_other(&self) -> Result<()> {
        for b in &self.backends {
            self.exec_ok(b, "sh", &["-c", "echo 1 > /proc/sys/net/ipv4/conf/all/forwarding && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding"])?;
        }
        Ok(())
    }
}

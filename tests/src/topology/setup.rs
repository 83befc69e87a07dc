//! Building the namespaces, links, addresses and routes of a [`Topology`].

use super::*;

impl Topology {
    pub(super) fn setup(&self, opts: &TopologyOptions) -> Result<()> {
        self.namespaces()?;
        self.sysctls()?;
        self.bridge()?;
        self.host_links(opts)?;
        self.client_routes()?;
        self.backend_vips(opts)?;
        self.settle()
    }

    /// The per-run bpffs and one namespace per host.
    fn namespaces(&self) -> Result<()> {
        // The per-run bpffs, mounted here (the caller's mount namespace) so
        // that every `ip netns exec` started later sees it.
        fs::create_dir_all(&self.inner.bpffs)
            .with_context(|| format!("cannot create {}", self.inner.bpffs.display()))?;
        mount_bpffs(&self.inner.bpffs)?;

        for h in &self.hosts {
            let mut st = self.inner.state.lock().unwrap();
            if st.closed {
                bail!("interrupted");
            }
            st.namespaces.push(h.ns.clone());
            run_ok("ip", &["netns", "add", &h.ns])?;
        }
        Ok(())
    }

    fn sysctls(&self) -> Result<()> {
        // Sysctls before any link exists, so the `default` values apply to eth0.
        for h in &self.hosts {
            let mut s: Vec<(&str, &str)> = vec![
                ("net/ipv6/conf/all/accept_dad", "0"),
                ("net/ipv6/conf/default/accept_dad", "0"),
                ("net/ipv6/conf/all/dad_transmits", "0"),
                ("net/ipv6/conf/default/dad_transmits", "0"),
                ("net/ipv6/conf/all/accept_ra", "0"),
                ("net/ipv6/conf/default/accept_ra", "0"),
                ("net/ipv6/conf/all/router_solicitations", "0"),
                ("net/ipv6/conf/default/router_solicitations", "0"),
                ("net/ipv4/conf/all/rp_filter", "0"),
                ("net/ipv4/conf/default/rp_filter", "0"),
            ];
            if self.backends.contains(&h.name) {
                s.extend([
                    ("net/ipv4/conf/all/arp_ignore", "1"),
                    ("net/ipv4/conf/default/arp_ignore", "1"),
                    ("net/ipv4/conf/all/arp_announce", "2"),
                    ("net/ipv4/conf/default/arp_announce", "2"),
                ]);
            }
            if h.name == SWITCH {
                // The switch only bridges; it has no addresses of its own.
                s.push(("net/ipv6/conf/default/disable_ipv6", "1"));
                // br_netfilter is built in and on in every new namespace: the
                // bridge would validate IP headers and silently drop malformed
                // frames, which a wire does not.
                s.extend([
                    ("net/bridge/bridge-nf-call-iptables", "0"),
                    ("net/bridge/bridge-nf-call-ip6tables", "0"),
                    ("net/bridge/bridge-nf-call-arptables", "0"),
                ]);
            }
            let script: String = s
                .iter()
                .map(|(k, v)| format!("echo {v} > /proc/sys/{k} && "))
                .collect::<String>()
                + "true";
            let out = self.exec(&h.name, "sh", &["-c", &script])?;
            if !out.status.success() {
                bail!(
                    "sysctls in {}: {}",
                    h.ns,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(())
    }

    /// The switch: a bridge in its own namespace.
    fn bridge(&self) -> Result<()> {
        let sw = self.ns_name(SWITCH).to_string();
        run_ok("ip", &["-n", &sw, "link", "set", "lo", "up"])?;
        run_ok(
            "ip",
            &[
                "-n",
                &sw,
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
                "mcast_snooping",
                "0",
            ],
        )?;
        run_ok("ip", &["-n", &sw, "link", "set", "br0", "up"])?;
        Ok(())
    }

    /// Each host's eth0 and its bridge port.
    fn host_links(&self, opts: &TopologyOptions) -> Result<()> {
        let sw = self.ns_name(SWITCH).to_string();
        let mtu = opts.underlay_mtu.to_string();
        for h in self.hosts.iter().filter(|h| h.name != SWITCH) {
            let ns = &h.ns;
            let peer = format!("v-{}", h.name);
            let host_mtu = if h.name == CLIENT {
                "1500"
            } else {
                mtu.as_str()
            };
            run_ok(
                "ip",
                &[
                    "-n", ns, "link", "add", IFACE, "mtu", host_mtu, "type", "veth", "peer",
                    "name", &peer, "mtu", &mtu, "netns", &sw,
                ],
            )?;
            run_ok(
                "ip",
                &["-n", &sw, "link", "set", &peer, "master", "br0", "up"],
            )?;
            // A frame sent with XDP_TX or redirected into a veth is only
            // delivered if the receiving peer has NAPI: GRO on or an XDP
            // program. For XDP_TX, GRO is not enough: veth_xdp_flush() only
            // schedules the peer's NAPI when the peer has an XDP program, so
            // with GRO alone the frames wait in the peer's ring until unrelated
            // traffic polls it. So every bridge port gets both.
            // TX VLAN offload off: a veth whose sender has it on hands the
            // receiver's XDP program the frame without its tag (the tag rides
            // in skb metadata); a wire carries tags inside the frame.
            let out = self.exec(SWITCH, "ethtool", &["-K", &peer, "gro", "on", "txvlan", "off", "tx-vlan-stag-hw-insert", "off"])?;
            if !out.status.success() {
                bail!(
                    "`ethtool -K {peer} gro on txvlan off tx-vlan-stag-hw-insert off` in {sw}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let link = attach_xdp_pass(&sw, &peer)?;
            self.inner.state.lock().unwrap().xdp_links.push(link);
            run_ok("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            if let Some(v4) = h.v4 {
                run_ok(
                    "ip",
                    &["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", IFACE],
                )?;
            }
            if let Some(v6) = h.v6 {
                run_ok(
                    "ip",
                    &[
                        "-n",
                        ns,
                        "-6",
                        "addr",
                        "add",
                        &format!("{v6}/64"),
                        "dev",
                        IFACE,
                        "nodad",
                    ],
                )?;
            }
            // Packets must leave a host as they would leave a real NIC: with
            // complete checksums. With veth's default TX checksum offload they
            // carry only a partial checksum plus skb metadata; XDP on the LB
            // turns them into raw frames without that metadata, and the backend
            // would then drop them as corrupt. (Also turns TSO off, so no
            // larger-than-MTU GSO packets reach XDP.)
            let out = self.exec(&h.name, "ethtool", &["-K", IFACE, "tx", "off"])?;
            if !out.status.success() {
                bail!(
                    "`ethtool -K {IFACE} tx off` in {ns}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            run_ok("ip", &["-n", ns, "link", "set", IFACE, "up"])?;
        }
        Ok(())
    }

    /// The client reaches the VIP networks through the LB.
    fn client_routes(&self) -> Result<()> {
        let client = self.ns_name(CLIENT).to_string();
        run_ok(
            "ip",
            &[
                "-n",
                &client,
                "route",
                "add",
                VIP_NET_V4,
                "via",
                &LB_V4.to_string(),
            ],
        )?;
        run_ok(
            "ip",
            &[
                "-n",
                &client,
                "-6",
                "route",
                "add",
                VIP_NET_V6,
                "via",
                &LB_V6.to_string(),
            ],
        )?;
        Ok(())
    }

    /// The VIP addresses on every backend's lo.
    fn backend_vips(&self, opts: &TopologyOptions) -> Result<()> {
        for b in &self.backends {
            let ns = self.ns_name(b).to_string();
            for vip in &opts.backend_vips {
                match vip {
                    IpAddr::V4(a) => run_ok(
                        "ip",
                        &["-n", &ns, "addr", "add", &format!("{a}/32"), "dev", "lo"],
                    )?,
                    IpAddr::V6(a) => run_ok(
                        "ip",
                        &[
                            "-n",
                            &ns,
                            "-6",
                            "addr",
                            "add",
                            &format!("{a}/128"),
                            "dev",
                            "lo",
                            "nodad",
                        ],
                    )?,
                };
            }
        }
        Ok(())
    }

    fn settle(&self) -> Result<()> {
        // Addresses usable at once: nothing tentative, every eth0 up.
        let deadline = Instant::now() + Duration::from_secs(10);
        for h in self.hosts.iter().filter(|h| h.name != SWITCH) {
            loop {
                let tentative = run_ok("ip", &["-n", &h.ns, "-6", "addr", "show", "tentative"])?;
                let link = run_ok("ip", &["-n", &h.ns, "-o", "link", "show", IFACE])?;
                if tentative.trim().is_empty() && link.contains("state UP") {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "{}: addresses still tentative or {IFACE} not up after 10 s:\n{tentative}\n{link}",
                        h.ns
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }
}

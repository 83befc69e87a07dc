//! The `[lb]` table: host-wide settings.

use super::*;

impl Validator {

    pub(super) fn lb(&mut self, raw: RawLb) -> Option<LbSection> {
        let interface = match raw.interface {
            None => {
                self.add("lb.interface", "missing; name the NIC to attach to, e.g. interface = \"eth0\"");
                None
            }
            Some(name) => match check_ifname(&name) {
                Ok(()) => Some(name),
                Err(why) => {
                    self.add("lb.interface", format!("{name:?} is not a valid interface name: {why}"));
                    None
                }
            },
        };

        let xdp_mode = match raw.xdp_mode.as_deref() {
            None => Some(DEFAULT_XDP_MODE),
            Some("auto") => Some(XdpMode::Auto),
            Some("native") => Some(XdpMode::Native),
            Some("generic") => Some(XdpMode::Generic),
            Some(other) => {
                self.add("lb.xdp_mode", format!("{other:?} is not an XDP mode (expected \"auto\", \"native\" or \"generic\")"));
                None
            }
        };

        // `tunnel_source` has checked the family: the other arm never matches.
        let tunnel_source_v4 = self
            .tunnel_source(4, raw.tunnel_source_v4)
            .map(|a| a.and_then(|a| if let IpAddr::V4(v4) = a { Some(v4) } else { None }));
        let tunnel_source_v6 = self
            .tunnel_source(6, raw.tunnel_source_v6)
            .map(|a| a.and_then(|a| if let IpAddr::V6(v6) = a { Some(v6) } else { None }));

        let ring_size = match self.int("lb.ring_size", raw.ring_size, DEFAULT_RING_SIZE, MIN_RING_SIZE, MAX_RING_SIZE) {
            Some(n) if !is_prime(n) => {
                self.add("lb.ring_size", format!("{n} is not a prime (Maglev needs a prime ring size, e.g. 65537)"));
                None
            }
            other => other,
        };
        let hash_seed = self.int("lb.hash_seed", raw.hash_seed, DEFAULT_HASH_SEED, 0, u32::MAX);
        let max_vips = self.int("lb.max_vips", raw.max_vips, DEFAULT_MAX_VIPS, 1, MAX_MAX_VIPS);
        let max_backends = self.int("lb.max_backends", raw.max_backends, DEFAULT_MAX_BACKENDS, 2, MAX_MAX_BACKENDS);

        if let (Some(r), Some(v)) = (ring_size, max_vips) {
            let bytes = u64::from(r) * u64::from(v) * 4;
            if bytes > MAX_RINGS_BYTES {
                self.add(
                    "lb.ring_size",
                    format!(
                        "ring_size {r} × max_vips {v} × 4 bytes = {} MiB of rings, more than the {} MiB limit; lower ring_size or max_vips",
                        bytes >> 20,
                        MAX_RINGS_BYTES >> 20
                    ),
                );
            }
        }

        let bpffs_dir = match raw.bpffs_dir {
            None => Some(PathBuf::from(DEFAULT_BPFFS_DIR)),
            Some(d) if !Path::new(&d).is_absolute() => {
                self.add("lb.bpffs_dir", format!("{d:?} is not an absolute path"));
                None
            }
            Some(d) => match pin_dir_too_long(&d) {
                Some(why) => {
                    self.add("lb.bpffs_dir", format!("{d:?} is too long for the kernel: {why}; choose a shorter directory"));
                    None
                }
                None => Some(PathBuf::from(d)),
            },
        };

        let run_dir = match raw.run_dir {
            None => Some(PathBuf::from(DEFAULT_RUN_DIR)),
            Some(d) if Path::new(&d).is_absolute() => Some(PathBuf::from(d)),
            Some(d) => {
                self.add("lb.run_dir", format!("{d:?} is not an absolute path"));
                None
            }
        };
        let flow_table_size = self.int(
            "lb.flow_table_size",
            raw.flow_table_size,
            DEFAULT_FLOW_TABLE_SIZE,
            lb_common::flows::MIN_FLOW_TABLE_SIZE,
            lb_common::flows::MAX_FLOW_TABLE_SIZE,
        );
        if let (Some(v), Some(b)) = (max_vips, max_backends)
            && u64::from(v) * u64::from(b) > MAX_MEMBER_ENTRIES
        {
            self.add(
                "lb.max_backends",
                format!("max_vips {v} × max_backends {b} exceeds {MAX_MEMBER_ENTRIES} member entries; lower one of them"),
            );
        }
        let metrics_listen = match raw.metrics_listen.as_deref().unwrap_or(DEFAULT_METRICS_LISTEN) {
            METRICS_OFF => Some(None),
            s => match s.parse::<SocketAddr>() {
                Ok(a) => Some(Some(a)),
                Err(_) => {
                    self.add(
                        "lb.metrics_listen",
                        format!("{s:?} is not ADDRESS:PORT (e.g. \"{DEFAULT_METRICS_LISTEN}\", \"[::1]:9110\") or \"{METRICS_OFF}\""),
                    );
                    None
                }
            },
        };

        let encap = self.choice("lb.encap", raw.encap.as_deref(), DEFAULT_ENCAP, ENCAP_CHOICES);
        let gue_port = self.int("lb.gue_port", raw.gue_port, u32::from(DEFAULT_GUE_PORT), 1, u32::from(u16::MAX)).map(|p| p as u16);
        let previous_owner_window = self.previous_owner_window(raw.previous_owner_window.as_deref());
        let new_flow_guard = self.new_flow_guard(raw.new_flow_guard);

        let packets = self.packet_policy(raw.icmp_echo.as_deref(), raw.too_big.as_deref(), raw.unknown_port.as_deref());

        Some(LbSection {
            interface: interface?,
            xdp_mode: xdp_mode?,
            tunnel_source_v4: tunnel_source_v4?,
            tunnel_source_v6: tunnel_source_v6?,
            ring_size: ring_size?,
            hash_seed: hash_seed?,
            max_vips: max_vips?,
            max_backends: max_backends?,
            bpffs_dir: bpffs_dir?,
            run_dir: run_dir?,
            flow_table_size: flow_table_size?,
            metrics_listen: metrics_listen?,
            encap: encap?,
            gue_port: gue_port?,
            previous_owner_window: previous_owner_window?,
            new_flow_guard: new_flow_guard?,
            packets: packets?,
        })
    }

    /// `lb.previous_owner_window`: a duration within its range, or a problem.
    fn previous_owner_window(&mut self, value: Option<&str>) -> Option<Duration> {
        const FIELD: &str = "lb.previous_owner_window";
        let Some(s) = value else { return Some(DEFAULT_PREVIOUS_OWNER_WINDOW) };
        let window = health::parse_duration(s).map_err(|why| self.add(FIELD, why)).ok()?;
        if !(MIN_PREVIOUS_OWNER_WINDOW..=MAX_PREVIOUS_OWNER_WINDOW).contains(&window) {
            self.add(
                FIELD,
                format!(
                    "{s:?} is out of range {}s..={}h (how long a changed ring slot keeps its previous owner)",
                    MIN_PREVIOUS_OWNER_WINDOW.as_secs(),
                    MAX_PREVIOUS_OWNER_WINDOW.as_secs() / 3600
                ),
            );
            return None;
        }
        Some(window)
    }

    /// `lb.tunnel_source_v{family}`: absent (`Some(None)`), a usable source
    /// address of that family (`Some(Some(_))`), or a problem (`None`).
    fn tunnel_source(&mut self, family: u8, value: Option<String>) -> Option<Option<IpAddr>> {
        let field = format!("lb.tunnel_source_v{family}");
        let other = if family == 4 { 6 } else { 4 };
        let Some(s) = value else { return Some(None) };
        let Ok(a) = s.parse::<IpAddr>() else {
            self.add(field, format!("{s:?} is not an IP address"));
            return None;
        };
        let problem = if a.is_ipv4() != (family == 4) {
            Some(format!(
                "{s:?} is an IPv{other} address; tunnel_source_v{family} needs an IPv{family} address (IPv{other} goes in tunnel_source_v{other})"
            ))
        } else if a.is_unspecified() || a.is_multicast() || matches!(a, IpAddr::V4(v4) if v4.is_broadcast()) {
            Some(format!("{s:?} cannot be a packet's source address"))
        } else {
            never_on_the_wire(a).map(|why| format!("{s:?} is {why}"))
        };
        match problem {
            Some(message) => {
                self.add(field, message);
                None
            }
            None => Some(Some(a)),
        }
    }
}

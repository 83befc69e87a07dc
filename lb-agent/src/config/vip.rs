//! The `[[vip]]` tables and their backends.

use super::*;

impl Validator {

    pub(super) fn vips(&mut self, raw: Vec<RawVip>, lb: Option<&LbSection>) -> Option<Vec<VipConfig>> {
        if raw.is_empty() {
            self.add("vip", "no [[vip]] tables; a config must define at least one VIP");
            return None;
        }

        // Labels first: `vip "web"` for a VIP with a valid name used once so
        // far, `vip[i]` otherwise.
        let mut first_by_name: HashMap<&str, usize> = HashMap::new();
        let mut labels = Vec::with_capacity(raw.len());
        for (i, v) in raw.iter().enumerate() {
            let label = match v.name.as_deref() {
                Some(n) if check_name(n).is_ok() && !first_by_name.contains_key(n) => {
                    first_by_name.insert(n, i);
                    format!("vip {n:?}")
                }
                _ => format!("vip[{i}]"),
            };
            labels.push(label);
        }

        let ring_size = lb.map(|l| l.ring_size);
        let mut ok = true;
        let mut vips = Vec::with_capacity(raw.len());
        let mut vip_labels: Vec<&str> = Vec::with_capacity(raw.len());
        let mut by_key: HashMap<crate::ids::VipIdentity, usize> = HashMap::new();
        for (i, v) in raw.iter().enumerate() {
            let label = &labels[i];
            match self.vip(v, label, i, &first_by_name, ring_size, lb.map_or(DEFAULT_ENCAP, |l| l.encap)) {
                Some(vip) => {
                    let key = vip.identity();
                    if let Some(&j) = by_key.get(&key) {
                        self.add(
                            format!("{label}.address"),
                            format!(
                                "\"{}\" port {} {} is already {} (same address, port and protocol)",
                                vip.address, vip.port, vip.protocol, labels[j]
                            ),
                        );
                        ok = false;
                    } else {
                        by_key.insert(key, i);
                    }
                    vips.push(vip);
                    vip_labels.push(label);
                }
                None => ok = false,
            }
        }

        if let Some(lb) = lb {
            if raw.len() as u64 > u64::from(lb.max_vips) {
                self.add(
                    "lb.max_vips",
                    format!("{} VIPs are defined but max_vips is {}; raise max_vips or remove VIPs", raw.len(), lb.max_vips),
                );
                ok = false;
            }
            // Count distinct addresses over the raw text, so the limit is
            // reported even when some other field of a VIP is wrong.
            let distinct: BTreeSet<IpAddr> =
                raw.iter().flat_map(|v| v.backends.iter().filter_map(|b| b.address.as_deref()?.parse().ok())).collect();
            if distinct.len() as u64 >= u64::from(lb.max_backends) {
                self.add(
                    "lb.max_backends",
                    format!(
                        "{} distinct backend addresses need max_backends >= {} (id 0 is reserved), but max_backends is {}",
                        distinct.len(),
                        distinct.len() + 1,
                        lb.max_backends
                    ),
                );
                ok = false;
            }
        }

        ok &= self.backend_facts(&vips, &vip_labels, lb);

        for (field, why) in packets::fragment_conflicts(&vips) {
            self.add(field, why);
            ok = false;
        }

        ok.then_some(vips)
    }

    /// What must hold for a backend address wherever it appears: it is not
    /// an address of the LB host itself (a VIP's, a tunnel source), and every
    /// static MAC given for it is the same one (the kernel keeps one next hop
    /// per backend). `labels[i]` names `vips[i]`. Returns whether all held.
    pub(super) fn backend_facts(&mut self, vips: &[VipConfig], labels: &[&str], lb: Option<&LbSection>) -> bool {
        let before = self.problems.len();
        let mut vip_at: HashMap<IpAddr, &str> = HashMap::new();
        for (v, label) in vips.iter().zip(labels) {
            vip_at.entry(v.address).or_insert(label);
        }
        let tunnel_sources = [
            ("lb.tunnel_source_v4", lb.and_then(|l| l.tunnel_source_v4).map(IpAddr::V4)),
            ("lb.tunnel_source_v6", lb.and_then(|l| l.tunnel_source_v6).map(IpAddr::V6)),
        ];
        let mut first_mac: HashMap<IpAddr, (MacAddr, String)> = HashMap::new();
        for (v, label) in vips.iter().zip(labels) {
            for (k, b) in v.backends.iter().enumerate() {
                let at = format!("{label}.backend[{k}]");
                if let Some(vip) = vip_at.get(&b.address) {
                    self.add(
                        format!("{at}.address"),
                        format!(
                            "\"{}\" is the address of {vip}: a backend must be a host behind the balancer, not an address it serves \
                             (tunnel packets to it would come back here); give the backend's own address",
                            b.address
                        ),
                    );
                }
                for (field, source) in tunnel_sources {
                    if source == Some(b.address) {
                        self.add(
                            format!("{at}.address"),
                            format!("\"{}\" is {field}, this LB host's own address; a backend must be another host", b.address),
                        );
                    }
                }
                let Some(mac) = b.mac else { continue };
                match first_mac.get(&b.address) {
                    Some((first, first_at)) if *first != mac => self.add(
                        format!("{at}.mac"),
                        format!(
                            "\"{mac}\" differs from \"{first}\" given for the same backend {} at {first_at}; the kernel has one next hop \
                             per backend address: give the same MAC everywhere (or only once)",
                            b.address
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        first_mac.insert(b.address, (mac, format!("{at}.mac")));
                    }
                }
            }
        }
        self.problems.len() == before
    }

    pub(super) fn vip(
        &mut self,
        v: &RawVip,
        label: &str,
        i: usize,
        first_by_name: &HashMap<&str, usize>,
        ring_size: Option<u32>,
        lb_encap: Encap,
    ) -> Option<VipConfig> {
        let name = match v.name.as_deref() {
            None => {
                self.add(format!("{label}.name"), "missing; every VIP needs a unique name");
                None
            }
            Some(n) => match check_name(n) {
                Err(why) => {
                    self.add(format!("{label}.name"), format!("{n:?} is not a valid name: {why}"));
                    None
                }
                Ok(()) => match first_by_name.get(n) {
                    Some(&j) if j != i => {
                        self.add(format!("{label}.name"), format!("{n:?} is already the name of vip[{j}]; names must be unique"));
                        None
                    }
                    _ => Some(n.to_string()),
                },
            },
        };

        let address = match v.address.as_deref() {
            None => {
                self.add(format!("{label}.address"), "missing; a VIP needs an IPv4 or IPv6 address");
                None
            }
            Some(s) => self.service_address(&format!("{label}.address"), s),
        };

        let port = match v.port {
            None => {
                self.add(format!("{label}.port"), "missing; give a port, or 0 for every port");
                None
            }
            Some(p) => match u16::try_from(p) {
                Ok(p) => Some(p),
                Err(_) => {
                    self.add(format!("{label}.port"), format!("{p} is out of range 0..=65535"));
                    None
                }
            },
        };

        let protocol = match v.protocol.as_deref() {
            None => Some(Protocol::Tcp),
            Some(s) => match s.parse::<Protocol>() {
                Ok(p) => Some(p),
                Err(why) => {
                    self.add(format!("{label}.protocol"), why);
                    None
                }
            },
        };

        let hash = match v.hash.as_deref() {
            None | Some("flow") => Some(HashMode::Flow),
            Some("source") => Some(HashMode::Source),
            Some(other) => {
                self.add(format!("{label}.hash"), format!("{other:?} is not a hash mode (expected \"flow\" or \"source\")"));
                None
            }
        };

        let fragments = self.choice(&format!("{label}.fragments"), v.fragments.as_deref(), FragmentPolicy::Drop, packets::FRAGMENT_CHOICES);
        let flow_state = self.flow_state(v, label);
        let encap = flow_state.and_then(|state| self.encap(v, label, state, lb_encap));

        // What a backend's health check needs of the VIP, as parsed above.
        let vip_service = match (protocol, port) {
            (Some(protocol), Some(port)) => Some(VipService { protocol, port, address }),
            _ => None,
        };
        let mut backends_ok = true;
        let mut backends = Vec::with_capacity(v.backends.len());
        let mut seen: HashMap<IpAddr, usize> = HashMap::new();
        if v.backends.is_empty() {
            self.add(format!("{label}.backend"), "no [[vip.backend]] tables; a VIP needs at least one backend");
            backends_ok = false;
        }
        for (k, b) in v.backends.iter().enumerate() {
            let at = format!("{label}.backend[{k}]");
            let address = match b.address.as_deref() {
                None => {
                    self.add(format!("{at}.address"), "missing; a backend needs an IPv4 or IPv6 address");
                    None
                }
                Some(s) => match self.service_address(&format!("{at}.address"), s) {
                    Some(a) => match seen.get(&a) {
                        Some(&first) => {
                            self.add(format!("{at}.address"), format!("{s:?} is already {label}.backend[{first}]"));
                            None
                        }
                        None => {
                            seen.insert(a, k);
                            Some(a)
                        }
                    },
                    None => None,
                },
            };
            let weight = match b.weight {
                None => Some(DEFAULT_WEIGHT),
                Some(w) if (0..=i64::from(MAX_WEIGHT)).contains(&w) => Some(w as u32),
                Some(w) => {
                    self.add(format!("{at}.weight"), format!("{w} is out of range 0..={MAX_WEIGHT} (0 = drained)"));
                    None
                }
            };
            let mac = match b.mac.as_deref() {
                None => Some(None),
                Some(s) => match s.parse::<MacAddr>() {
                    Err(why) => {
                        self.add(format!("{at}.mac"), why);
                        None
                    }
                    Ok(m) if m.is_zero() || m.is_multicast() => {
                        self.add(format!("{at}.mac"), format!("{s:?} is not a unicast MAC address; a next hop needs one"));
                        None
                    }
                    Ok(m) => Some(Some(m)),
                },
            };
            match (address, weight, mac) {
                (Some(address), Some(weight), Some(mac)) => match self.health_check(v, b, vip_service, address, label, &at) {
                    Some(check) => backends.push(BackendConfig { address, weight, mac, backup: b.backup.unwrap_or(false), check }),
                    None => backends_ok = false,
                },
                _ => backends_ok = false,
            }
        }

        // Only judge the weights as a whole when each one could be read.
        let weights: Option<Vec<u32>> =
            v.backends.iter().map(|b| b.weight.map_or(Some(DEFAULT_WEIGHT), |w| u32::try_from(w).ok())).collect();
        if let Some(weights) = weights {
            let active = weights.iter().filter(|&&w| w > 0).count();
            if !weights.is_empty() && active == 0 {
                self.add(
                    format!("{label}.backend"),
                    format!("all {} backends have weight 0 (drained); at least one needs a weight above 0", weights.len()),
                );
                backends_ok = false;
            }
            if let Some(r) = ring_size
                && active as u64 > u64::from(r)
            {
                self.add(
                    format!("{label}.backend"),
                    format!("{active} backends with weight > 0 do not fit in a ring of {r} slots; raise lb.ring_size"),
                );
                backends_ok = false;
            }
        }

        if !backends_ok {
            return None;
        }
        let mut health_problems = Vec::new();
        let all_down = health::all_down_policy(v.health.as_ref(), label, &mut health_problems);
        self.problems.extend(health_problems);
        Some(VipConfig { name: name?, address: address?, port: port?, protocol: protocol?, hash: hash?, fragments: fragments?, flow_state: flow_state?, encap: encap?, backends, all_down: all_down? })
    }

    /// `flow_state`, or its older spelling `flow_table` (never both).
    fn flow_state(&mut self, v: &RawVip, label: &str) -> Option<FlowState> {
        match (v.flow_state.as_deref(), v.flow_table) {
            (Some(state), Some(table)) => {
                self.add(
                    format!("{label}.flow_table"),
                    format!(
                        "{table} is set together with flow_state = {state:?}; flow_table is the older name of flow_state \
                         (true = \"lb\", false = \"none\"): keep only flow_state"
                    ),
                );
                None
            }
            (None, Some(true)) => Some(FlowState::Lb),
            (None, Some(false)) => Some(FlowState::None),
            (state, None) => self.choice(&format!("{label}.flow_state"), state, DEFAULT_FLOW_STATE, FLOW_STATE_CHOICES),
        }
    }

    /// The VIP's effective encapsulation (see [`VipConfig::encap`]).
    fn encap(&mut self, v: &RawVip, label: &str, state: FlowState, lb_encap: Encap) -> Option<Encap> {
        let field = format!("{label}.encap");
        let own = self.choice(&field, v.encap.as_deref(), lb_encap, ENCAP_CHOICES)?;
        match (state, v.encap.is_some(), own) {
            (FlowState::Backend, true, Encap::Ipip) => {
                self.add(
                    field,
                    "\"ipip\" cannot carry a previous owner; a flow_state = \"backend\" VIP uses \"gue\" (remove encap or set it to \"gue\")",
                );
                None
            }
            (FlowState::Backend, _, _) => Some(Encap::Gue),
            _ => Some(own),
        }
    }

    /// A backend's effective health check; a problem of the VIP's own table
    /// is reported once, not once per backend. `vip` is `None` when the VIP's
    /// protocol or port is wrong: its own problems say enough then.
    pub(super) fn health_check(
        &mut self,
        v: &RawVip,
        b: &RawBackend,
        vip: Option<VipService>,
        backend: IpAddr,
        label: &str,
        at: &str,
    ) -> Option<HealthCheck> {
        let vip = vip?;
        let service = health::Service {
            protocol: vip.protocol,
            port: vip.port,
            // An unusable VIP address has its own problem; no second one here.
            backend_in_vip_family: vip.address.is_none_or(|a| a.is_ipv4() == backend.is_ipv4()),
        };
        let mut found = Vec::new();
        let check = health::resolve(v.health.as_ref(), b.health.as_ref(), label, at, service, &mut found);
        for p in found {
            if !self.problems.contains(&p) {
                self.problems.push(p);
            }
        }
        check
    }

    /// An address that can be a flow's destination: a VIP or a backend.
    pub(super) fn service_address(&mut self, field: &str, s: &str) -> Option<IpAddr> {
        match s.parse::<IpAddr>() {
            Err(_) => {
                self.add(field, format!("{s:?} is not an IP address"));
                None
            }
            Ok(a) if a.is_unspecified() => {
                self.add(field, format!("{s:?} is the unspecified address; no flow is addressed to it"));
                None
            }
            Ok(a) if a.is_multicast() || matches!(a, IpAddr::V4(v4) if v4.is_broadcast()) => {
                self.add(field, format!("{s:?} is a multicast or broadcast address; only unicast addresses can be balanced"));
                None
            }
            Ok(a) => match never_on_the_wire(a) {
                Some(why) => {
                    self.add(field, format!("{s:?} is {why}"));
                    None
                }
                None => Some(a),
            },
        }
    }
}

/// The VIP's fields a backend's health check depends on, parsed once by
/// `Validator::vip`.
#[derive(Clone, Copy)]
pub(super) struct VipService {
    protocol: Protocol,
    port: u16,
    /// `None` if the address was refused (reported on its own).
    address: Option<IpAddr>,
}

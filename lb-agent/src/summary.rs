//! What `lb-agent check` prints: the validated config as the dataplane will
//! see it, and a fingerprint to compare LB hosts of a cluster.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::config::{Config, HashMode, Protocol};
use crate::maglev;
use crate::plan::{Plan, PlannedVip};

/// 64-bit FNV-1a.
struct Fnv(u64);

impl Fnv {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(Self::PRIME);
        }
    }

    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_be_bytes());
    }

    fn addr(&mut self, a: IpAddr) {
        match a {
            IpAddr::V4(v4) => {
                self.bytes(&[4]);
                self.bytes(&v4.octets());
            }
            IpAddr::V6(v6) => {
                self.bytes(&[6]);
                self.bytes(&v6.octets());
            }
        }
    }
}

/// A digest of a VIP's all-up ring as positions in its (id-sorted, hence
/// address-sorted) member list, so that it does not depend on id numbering.
/// Computed with the plan, so that the fingerprint needs no copy of the ring.
pub fn ring_digest(ring: &[u32], members: &[(u32, u32)]) -> u64 {
    // Position by id from a table (ids are small), FNV-1a over whole words:
    // this runs over every slot of every ring a plan builds.
    let table_len = members.last().map_or(0, |&(id, _)| id as usize + 1);
    let mut position = vec![u32::MAX; table_len];
    for (p, &(id, _)) in members.iter().enumerate() {
        position[id as usize] = p as u32;
    }
    let mut h = Fnv::OFFSET;
    for &id in ring {
        let pos = position.get(id as usize).copied().unwrap_or(u32::MAX);
        h = (h ^ u64::from(pos)).wrapping_mul(Fnv::PRIME);
    }
    h
}

/// A 16-hex-digit fingerprint of what the dataplane will hold: ring size,
/// seed, and per VIP (in row order, i.e. sorted by address, port, protocol)
/// its address, port, protocol, flags, its backends' addresses, weights and
/// static MACs (sorted by address), and its ring expressed as backend
/// addresses. Names are left out (they change nothing in the kernel). Equal
/// configs in any order give equal fingerprints; two LB hosts whose
/// fingerprints match forward every flow the same way — including when their
/// agents were built from different versions of the Maglev code, which the
/// ring contents would reveal.
pub fn fingerprint(plan: &Plan) -> String {
    let mut h = Fnv(Fnv::OFFSET);
    h.bytes(b"lb-plan-v2");
    h.u32(plan.ring_size);
    h.u32(plan.hash_seed);
    h.u32(plan.vips.len() as u32);
    for v in &plan.vips {
        h.addr(v.address());
        h.u32(u32::from(v.port()));
        h.u32(u32::from(v.key.proto));
        h.u32(v.meta.flags);
        // Members are sorted by id, and ids follow sorted addresses.
        h.u32(v.members.len() as u32);
        for &(id, weight) in &v.members {
            let b = plan.backend(id).expect("member ids are planned backends");
            h.addr(b.address);
            h.u32(weight);
            match b.mac {
                Some(m) => h.bytes(&[1, m.0[0], m.0[1], m.0[2], m.0[3], m.0[4], m.0[5]]),
                None => h.bytes(&[0]),
            }
        }
        h.bytes(&v.ring_digest.to_be_bytes());
    }
    format!("{:016x}", h.0)
}

fn endpoint(address: IpAddr, port: u16, protocol: Protocol) -> String {
    let port = if port == 0 { "*".to_string() } else { port.to_string() };
    match address {
        IpAddr::V4(a) => format!("{a}:{port}/{protocol}"),
        IpAddr::V6(a) => format!("[{a}]:{port}/{protocol}"),
    }
}

/// A readable summary of a validated config and its plan.
pub fn render(config: &Config, plan: &Plan) -> String {
    let lb = &config.lb;
    let mut out = String::new();
    let src = |a: Option<String>| a.unwrap_or_else(|| "from the interface".to_string());
    let _ = writeln!(out, "interface      {} (xdp mode {})", lb.interface, lb.xdp_mode);
    let _ = writeln!(out, "ring size      {} slots per VIP", plan.ring_size);
    let _ = writeln!(out, "hash seed      {}", plan.hash_seed);
    let _ = writeln!(
        out,
        "tunnel source  IPv4 {}, IPv6 {}",
        src(lb.tunnel_source_v4.map(|a| a.to_string())),
        src(lb.tunnel_source_v6.map(|a| a.to_string()))
    );
    let _ = writeln!(
        out,
        "capacity       {} of {} VIPs, {} of {} backend ids",
        plan.vips.len(),
        lb.max_vips,
        plan.backends.len(),
        lb.max_backends - 1
    );
    let _ = writeln!(out, "pinned under   {}", lb.bpffs_dir.display());
    let _ = writeln!(out, "fingerprint    {}", fingerprint(plan));

    for vip in &config.vips {
        let Some(pv) = plan.vip(&vip.name) else { continue };
        let hash = match vip.hash {
            HashMode::Flow => "flow (5-tuple)",
            HashMode::Source => "source (client affinity)",
        };
        let _ = writeln!(out);
        let _ = writeln!(out, "vip {:?}  {}  hash {}  row {}", vip.name, endpoint(vip.address, vip.port, vip.protocol), hash, pv.row);
        render_backends(&mut out, plan, pv);
    }
    out
}

fn render_backends(out: &mut String, plan: &Plan, vip: &PlannedVip) {
    // Ring shares by position in `vip.members`.
    let index: Vec<u32> =
        vip.ring().iter().map(|&id| vip.members.binary_search_by_key(&id, |&(m, _)| m).map_or(u32::MAX, |p| p as u32)).collect();
    let slots = maglev::shares(&index, vip.members.len());
    let width = vip
        .members
        .iter()
        .filter_map(|&(id, _)| plan.backend(id))
        .map(|b| b.address.to_string().len())
        .max()
        .unwrap_or(0)
        .max("backend".len());
    let _ = writeln!(out, "  {:>4}  {:<width$}  {:>6}  {:>8}  {:>7}  next hop", "id", "backend", "weight", "slots", "share");
    for (&(id, weight), &n) in vip.members.iter().zip(&slots) {
        let Some(b) = plan.backend(id) else { continue };
        let share = 100.0 * f64::from(n) / f64::from(plan.ring_size.max(1));
        let hop = b.mac.map_or_else(|| "(resolved at runtime)".to_string(), |m| m.to_string());
        let drained = if weight == 0 { "  drained" } else { "" };
        let _ =
            writeln!(out, "  {:>4}  {:<width$}  {:>6}  {:>8}  {:>6.2}%  {}{}", id, b.address.to_string(), weight, n, share, hop, drained);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::plan::plan;

    const A: &str = r#"
[lb]
interface = "eth0"
ring_size = 1009
[[vip]]
name = "web"
address = "192.0.2.10"
port = 80
  [[vip.backend]]
  address = "198.51.100.11"
  [[vip.backend]]
  address = "198.51.100.12"
  weight = 3
[[vip]]
name = "web6"
address = "2001:db8:f::10"
port = 0
hash = "source"
  [[vip.backend]]
  address = "2001:db8::11"
  mac = "02:00:00:00:00:11"
  [[vip.backend]]
  address = "198.51.100.12"
  weight = 0
"#;

    const A_REORDERED: &str = r#"
[[vip]]
hash = "source"
port = 0
address = "2001:db8:f::10"
name = "v6"
  [[vip.backend]]
  weight = 0
  address = "198.51.100.12"
  [[vip.backend]]
  mac = "02:00:00:00:00:11"
  address = "2001:db8::11"
[[vip]]
name = "www"
address = "192.0.2.10"
port = 80
  [[vip.backend]]
  weight = 3
  address = "198.51.100.12"
  [[vip.backend]]
  address = "198.51.100.11"
[lb]
ring_size = 1009
interface = "eth1"
"#;

    fn fp(text: &str) -> String {
        fingerprint(&plan(&parse(text, "x.toml").unwrap()))
    }

    #[test]
    fn fingerprint_ignores_order_and_names() {
        let a = fp(A);
        assert_eq!(a.len(), 16);
        assert_eq!(a, fp(A_REORDERED));
    }

    #[test]
    fn fingerprint_sees_dataplane_changes() {
        let a = fp(A);
        for changed in [
            A.replace("ring_size = 1009", "ring_size = 1013"),
            A.replace("ring_size = 1009", "ring_size = 1009\nhash_seed = 1"),
            A.replace("weight = 3", "weight = 2"),
            A.replace("hash = \"source\"", "hash = \"flow\""),
            A.replace("port = 80", "port = 81"),
            A.replace("02:00:00:00:00:11", "02:00:00:00:00:12"),
            A.replace("198.51.100.11", "198.51.100.13"),
        ] {
            assert_ne!(fp(&changed), a, "{changed}");
        }
    }

    #[test]
    fn render_shows_everything() {
        let c = parse(A, "x.toml").unwrap();
        let p = plan(&c);
        let text = render(&c, &p);
        for needle in [
            "eth0",
            "xdp mode auto",
            "1009 slots",
            "hash seed      0",
            &fingerprint(&p),
            "vip \"web\"  192.0.2.10:80/tcp  hash flow",
            "vip \"web6\"  [2001:db8:f::10]:*/tcp  hash source",
            "02:00:00:00:00:11",
            "drained",
            "198.51.100.12",
        ] {
            assert!(text.contains(needle), "{needle:?} not in:\n{text}");
        }
        // Slot counts in the web table add up to the ring.
        let web = p.vip("web").unwrap();
        let rows: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("vip \"web\"")).skip(2).take(2).collect();
        let total: u32 = rows.iter().map(|l| l.split_whitespace().nth(3).unwrap().parse::<u32>().unwrap()).sum();
        assert_eq!(total, web.ring().len() as u32, "{text}");
    }
}

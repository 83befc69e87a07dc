//! Path MTU discovery through the LB, end to end: the LB's link (and the
//! backends') get the client's MTU, 1500, so a full-size client segment no
//! longer fits once encapsulated. The balancer answers it with
//! fragmentation-needed (IPv4) / packet-too-big (IPv6) carrying the MTU left
//! after the tunnel header, the client's TCP lowers its segment size and
//! retransmits, and a real request larger than the path MTU gets through.
//!
//! Needs root and the built agent (`cargo xtask test` builds everything).

use std::net::IpAddr;
use std::time::Duration;

use lb_tests::agent::{self, Proto};
use lb_tests::lab::Lab;
use lb_tests::topology::{self, CLIENT, TopologyOptions, VIP_V4, VIP_V6};

/// The client's MTU (veth default), now also the LB's.
const PATH_MTU: u32 = 1500;
/// Bytes of padding header in the request: about eight full-size segments,
/// below lb-testsrv's 16 KiB limit for a request head.
const PAD_BYTES: usize = 12 * 1024;
const CURL_SECS: u64 = 20;

fn start_lab() -> Lab {
    let bins = lb_tests::lab_bins!();
    let options = TopologyOptions { backends: 1, underlay_mtu: PATH_MTU, ..Default::default() };
    Lab::start_with(bins, options, agent::e2e_config(1), &|m| eprintln!("[pmtu] {m}"))
        .unwrap_or_else(|e| panic!("starting the lab: {e:#}"))
}

/// An HTTP request with a `PAD_BYTES` header, sent by curl from the client.
fn big_request(lab: &Lab, vip: IpAddr) -> String {
    let url = match vip {
        IpAddr::V4(a) => format!("http://{a}/"),
        IpAddr::V6(a) => format!("http://[{a}]/"),
    };
    let pad = format!("X-Pad: {}", "p".repeat(PAD_BYTES));
    let secs = CURL_SECS.to_string();
    let out = lab
        .topo
        .exec_timeout(CLIENT, "curl", &["-sS", "--max-time", &secs, "-H", &pad, &url], Duration::from_secs(CURL_SECS + 5))
        .unwrap_or_else(|e| panic!("curl {url}: {e:#}"));
    assert!(
        out.status.success(),
        "curl {url} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn tcp_larger_than_the_path_mtu_gets_through_the_lb() {
    if !topology::is_root() {
        eprintln!("SKIPPED: end-to-end tests need root (network namespaces, XDP)");
        return;
    }
    let lab = start_lab();
    for vip in [IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)] {
        let body = big_request(&lab, vip);
        if !body.starts_with("backend=b1 ") {
            // lb-testsrv answers an empty 400 when the request head stalls: say why.
            eprintln!("[pmtu] LB counters:\n{}", lab.stats_output(false).unwrap_or_default());
        }
        assert!(body.starts_with("backend=b1 "), "answer through the LB for {vip}: {body:?}");
        // The client learnt the path MTU from our answer: 1500 minus the tunnel header.
        let route = lab.topo.exec_ok(CLIENT, "ip", &["route", "get", &vip.to_string()]).unwrap();
        let learnt = if vip.is_ipv4() { PATH_MTU - 20 } else { PATH_MTU - 40 };
        assert!(route.contains(&format!("mtu {learnt}")), "client route to {vip} learnt mtu {learnt}: {route}");
    }
    lab.check_running().unwrap_or_else(|e| panic!("{e:#}"));
    let stats = lab.settled_stats().unwrap();
    assert!(stats.reason("too_big_icmp") >= 2, "one answer per family at least: {stats:?}");
    assert_eq!(stats.reason("too_big_dropped"), 0, "{stats:?}");
    let web = stats.vip(VIP_V4.into(), 80, Proto::Tcp).unwrap();
    assert!(web.packets > 0, "{stats:?}");
}

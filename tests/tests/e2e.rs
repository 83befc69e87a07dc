//! End-to-end tests in network namespaces (see `lb_tests::topology`).
//!
//! They need root, and all but the harness self-tests need the built agent
//! (with its embedded BPF object): `cargo xtask test` builds everything and
//! runs them. Run them one at a time: `--test-threads=1`.
//! Not root: every test prints why and returns (skipped). Root but no agent:
//! the agent tests fail and say what to run.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use lb_tests::agent::{self, Proto};
use lb_tests::client::{ClientRecord, tally};
use lb_tests::lab::{Lab, LabBins, LabOptions, MAX_FAILURES, client_addr_for, run_client};
use lb_tests::topology::{
    self, CLIENT, CLIENT_V4, LB, LB_V4, Topology, TopologyOptions, VIP_V4, VIP_V6, backend_v4, backend_v6,
};

const BACKENDS: usize = 3;
const TIMEOUT_MS: u64 = 2000;

fn testsrv() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lb-testsrv"))
}

fn testclient() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lb-testclient"))
}

/// False (after saying so) when the tests cannot run here at all.
fn can_run(test: &str) -> bool {
    if !topology::is_root() {
        eprintln!(
            "SKIPPED {test}: end-to-end tests need root (network namespaces, XDP); run them as root, e.g. via `cargo xtask test`"
        );
        return false;
    }
    true
}

fn start_lab() -> Lab {
    let agent = agent::agent_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let bins = LabBins {
        agent,
        testsrv: testsrv(),
        testclient: testclient(),
    };
    Lab::start(bins, BACKENDS, agent::e2e_config(BACKENDS), &|m| {
        eprintln!("[e2e] {m}")
    })
    .unwrap_or_else(|e| panic!("starting the lab: {e:#}"))
}

fn failures(records: &[ClientRecord]) -> Vec<String> {
    records
        .iter()
        .filter(|r| !r.ok)
        .map(|r| format!("{} {}", r.src, r.error.as_deref().unwrap_or("?")))
        .collect()
}

/// Asserts that every request succeeded, that the server saw the client's own
/// address (nothing was NATed), and that every backend answered at least once.
fn assert_all_ok_and_spread(
    lab_backends: &[String],
    records: &[ClientRecord],
    count: u32,
    what: &str,
) -> BTreeMap<String, usize> {
    let failed = failures(records);
    assert!(
        failed.is_empty(),
        "{what}: {} of {} requests failed (the client stops after {MAX_FAILURES} failures):\n{}",
        failed.len(),
        records.len(),
        failed.join("\n")
    );
    assert_eq!(
        records.len(),
        count as usize,
        "{what}: wrong number of answers"
    );
    for r in records {
        assert_eq!(
            r.client.as_deref(),
            Some(r.src.as_str()),
            "{what}: the backend saw another client address than the client's own: {r:?}"
        );
    }
    let t = tally(records);
    for b in lab_backends {
        assert!(
            t.get(b).copied().unwrap_or(0) > 0,
            "{what}: backend {b} answered no request: {t:?}"
        );
    }
    t
}

/// Asserts that each request was answered by the backend `lb-agent lookup` predicts.
fn assert_matches_lookup(
    lab: &Lab,
    vip: IpAddr,
    port: u16,
    proto: Proto,
    records: &[ClientRecord],
) {
    let mut mismatches = Vec::new();
    for r in records {
        let src = r
            .src_addr()
            .unwrap_or_else(|| panic!("unparsable src in {r:?}"));
        let predicted = lab
            .predicted_backend(vip, port, proto, src)
            .unwrap_or_else(|e| panic!("{e:#}"));
        if r.backend.as_deref() != Some(predicted.as_str()) {
            mismatches.push(format!(
                "{src}: answered by {:?}, lookup says {predicted}",
                r.backend
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} flows did not go where `lb-agent lookup` says (kernel and agent hash disagree?):\n{}",
        mismatches.len(),
        records.len(),
        mismatches.join("\n")
    );
}

fn backend_addr(lab: &Lab, name: &str, v6: bool) -> IpAddr {
    let h = lab.topo.host(name).unwrap();
    if v6 {
        h.v6.unwrap().into()
    } else {
        h.v4.unwrap().into()
    }
}

/// Counters: the VIP saw at least `min_packets`, each backend that answered
/// got packets, and `forwarded` equals the packets of all VIPs.
fn assert_stats(
    lab: &Lab,
    vip: IpAddr,
    port: u16,
    proto: Proto,
    answered: &BTreeMap<String, usize>,
    min_packets: u64,
) {
    let stats = lab.settled_stats().unwrap_or_else(|e| panic!("{e:#}"));
    let v = stats
        .vip(vip, port, proto)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        v.packets >= min_packets,
        "VIP {vip}:{port}/{proto} counted {} packets, expected at least {min_packets}: {v:?}",
        v.packets
    );
    assert!(
        v.bytes >= v.packets * 20,
        "VIP byte counter implausible: {v:?}"
    );
    for b in answered.keys() {
        let a = backend_addr(lab, b, vip.is_ipv6());
        assert!(
            stats.backend_packets(a) > 0,
            "backend {b} ({a}) answered but its counter is 0: {stats:?}"
        );
    }
    // Backend counters are shared by the VIPs of a backend; only this VIP had traffic.
    let backend_sum: u64 = v.member_addresses().into_iter().map(|a| stats.backend_packets(a)).sum();
    assert_eq!(
        backend_sum, v.packets,
        "per-backend packets do not add up to the VIP's: {v:?}"
    );
    assert_eq!(
        stats.reason("forwarded"),
        stats.vip_packets_total(),
        "`forwarded` must equal the packets of all VIPs (only this VIP had traffic): {stats:?}"
    );
    assert_eq!(
        stats.reason("forwarded"),
        v.packets,
        "only {vip}:{port}/{proto} had traffic: {stats:?}"
    );
}

fn tcp_through_lb(test: &str, vip: IpAddr) {
    if !can_run(test) {
        return;
    }
    const N: u32 = 60;
    let lab = start_lab();
    let target = SocketAddr::new(vip, 80);
    let records = lab
        .client(Proto::Tcp, target, N, Some(20000), TIMEOUT_MS)
        .unwrap_or_else(|e| panic!("{e:#}"));
    lab.check_running().unwrap_or_else(|e| panic!("{e:#}"));
    for r in &records {
        if r.ok {
            assert_eq!(
                r.src_addr().unwrap().ip(),
                client_addr_for(&target),
                "{r:?}"
            );
        }
    }
    let answered = assert_all_ok_and_spread(lab.topo.backends(), &records, N, test);
    eprintln!("[e2e] {test}: answers per backend {answered:?}");
    assert_matches_lookup(&lab, vip, 80, Proto::Tcp, &records);
    // At least SYN, ACK + request, FIN from the client per connection.
    assert_stats(&lab, vip, 80, Proto::Tcp, &answered, 3 * N as u64);
}

#[test]
fn ipv4_tcp_through_lb() {
    tcp_through_lb("ipv4_tcp_through_lb", VIP_V4.into());
}

#[test]
fn ipv6_tcp_through_lb() {
    tcp_through_lb("ipv6_tcp_through_lb", VIP_V6.into());
}

#[test]
fn udp_through_lb() {
    if !can_run("udp_through_lb") {
        return;
    }
    const N: u32 = 30;
    let lab = start_lab();
    let vip: IpAddr = VIP_V4.into();
    let records = lab
        .client(
            Proto::Udp,
            SocketAddr::new(vip, 53),
            N,
            Some(30000),
            TIMEOUT_MS,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    lab.check_running().unwrap_or_else(|e| panic!("{e:#}"));
    let answered = assert_all_ok_and_spread(lab.topo.backends(), &records, N, "udp_through_lb");
    eprintln!("[e2e] udp_through_lb: answers per backend {answered:?}");
    assert_matches_lookup(&lab, vip, 53, Proto::Udp, &records);
    assert_stats(&lab, vip, 53, Proto::Udp, &answered, N as u64);
}

#[test]
fn non_vip_traffic_untouched() {
    if !can_run("non_vip_traffic_untouched") {
        return;
    }
    const N: u32 = 5;
    let lab = start_lab();
    let srv = lab
        .topo
        .spawn(
            LB,
            &testsrv().to_string_lossy(),
            &["--name", "lb", "--tcp-port", "8080", "--udp-port", "0"],
        )
        .unwrap();
    srv.wait_for_line("ready:", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let records = lab
        .client(
            Proto::Tcp,
            SocketAddr::new(LB_V4.into(), 8080),
            N,
            None,
            TIMEOUT_MS,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    let failed = failures(&records);
    assert!(
        failed.is_empty(),
        "requests to the LB's own address failed with the balancer attached:\n{}",
        failed.join("\n")
    );
    assert_eq!(records.len(), N as usize);
    assert!(
        records.iter().all(|r| r.backend.as_deref() == Some("lb")),
        "{records:?}"
    );
    let stats = lab.settled_stats().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        stats.reason("no_vip") >= 3 * N as u64,
        "no_vip should count the client's packets to 198.51.100.2:8080 (>= {}): {stats:?}",
        3 * N
    );
    assert_eq!(
        stats.reason("forwarded"),
        0,
        "nothing was sent to a VIP: {stats:?}"
    );
    lab.check_running().unwrap_or_else(|e| panic!("{e:#}"));
}

fn pinned(dir: &Path) -> Vec<PathBuf> {
    lb_common::maps::ALL
        .iter()
        .copied()
        .chain([lb_agent::pins::PROGRAM_PIN, lb_agent::pins::LINK_PIN])
        .map(|m| dir.join(m))
        .filter(|p| p.exists())
        .collect()
}

fn xdp_attached(lab: &Lab) -> bool {
    let link = lab.topo.exec_ok(LB, "ip", &["-details", "link", "show", "dev", topology::IFACE]).unwrap();
    link.contains("prog/xdp")
}

/// SIGTERM: the agent exits 0 and the balancer keeps forwarding (program
/// attached, everything pinned); `lb-agent detach` then removes it all.
#[test]
fn sigterm_keeps_forwarding_and_detach_removes_everything() {
    if !can_run("sigterm_keeps_forwarding_and_detach_removes_everything") {
        return;
    }
    let bins = LabBins { agent: agent::agent_bin().unwrap_or_else(|e| panic!("{e:#}")), testsrv: testsrv(), testclient: testclient() };
    let options = LabOptions { unload_on_exit: false, ..LabOptions::default() };
    let lab = Lab::start_with_options(bins, TopologyOptions { backends: BACKENDS, ..Default::default() }, agent::e2e_config(BACKENDS), options, &|m| eprintln!("[e2e] {m}"))
        .unwrap_or_else(|e| panic!("starting the lab: {e:#}"));
    let pins = lab.topo.bpffs_dir().to_path_buf();
    assert!(xdp_attached(&lab), "balancer attached while running");
    let all = lb_common::maps::ALL.len() + 2;
    assert_eq!(pinned(&pins).len(), all, "maps, program and link pinned under {}", pins.display());

    let status = lab.agent.stop().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(status.success(), "lb-agent exit status after SIGTERM: {status}\n{}", lab.agent.log_tail(20));
    assert!(xdp_attached(&lab), "balancer detached by SIGTERM");
    assert_eq!(pinned(&pins).len(), all, "pins removed by SIGTERM");
    let target = SocketAddr::new(VIP_V4.into(), 80);
    let records = lab.client(Proto::Tcp, target, 10, None, TIMEOUT_MS).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(failures(&records).is_empty() && records.len() == 10, "forwarding without the agent: {records:?}");

    lab.detach().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!xdp_attached(&lab), "balancer still attached after `lb-agent detach`");
    let left = pinned(&pins);
    assert!(left.is_empty(), "pins left behind after `lb-agent detach`: {left:?}");
}

/// `run --unload-on-exit` (what the other tests use): SIGTERM detaches and unpins.
#[test]
fn unload_on_exit_detaches_and_unpins_on_sigterm() {
    if !can_run("unload_on_exit_detaches_and_unpins_on_sigterm") {
        return;
    }
    let lab = start_lab();
    assert!(xdp_attached(&lab), "balancer attached while running");
    let pins = lab.topo.bpffs_dir().to_path_buf();
    let status = lab.agent.stop().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(status.success(), "lb-agent exit status after SIGTERM: {status}\n{}", lab.agent.log_tail(20));
    assert!(!xdp_attached(&lab), "balancer still attached after SIGTERM with --unload-on-exit");
    let left = pinned(&pins);
    assert!(left.is_empty(), "pins left behind after SIGTERM with --unload-on-exit: {left:?}");
}

/// `run --kernel-events`: the balancer's aya-log records of new flows reach
/// the agent's log, one per connection, with the client's address and port.
#[test]
fn kernel_events_reach_the_agent_log() {
    if !can_run("kernel_events_reach_the_agent_log") {
        return;
    }
    const N: u32 = 5;
    const FIRST_PORT: u16 = 21000;
    let bins = LabBins { agent: agent::agent_bin().unwrap_or_else(|e| panic!("{e:#}")), testsrv: testsrv(), testclient: testclient() };
    let options = LabOptions { agent_extra: vec!["--kernel-events".into()], ..LabOptions::default() };
    let lab = Lab::start_with_options(bins, TopologyOptions { backends: BACKENDS, ..Default::default() }, agent::e2e_config(BACKENDS), options, &|m| eprintln!("[e2e] {m}"))
        .unwrap_or_else(|e| panic!("starting the lab: {e:#}"));
    let target = SocketAddr::new(VIP_V4.into(), 80);
    let records = lab.client(Proto::Tcp, target, N, Some(FIRST_PORT), TIMEOUT_MS).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(failures(&records).is_empty(), "{records:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(lab.agent.log_path()).unwrap_or_default();
        let new_flows: Vec<&str> =
            log.lines().filter(|l| l.contains("lb_agent::kernel") && l.contains(&format!("new flow {CLIENT_V4}:"))).collect();
        let ports_seen = (0..N as u16)
            .filter(|i| new_flows.iter().any(|l| l.contains(&format!("{CLIENT_V4}:{} -> {target}", FIRST_PORT + i))))
            .count();
        if ports_seen == N as usize {
            eprintln!("[e2e] kernel events logged, e.g.: {}", new_flows[0]);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{ports_seen} of {N} connections logged as new flows by the kernel; agent log {}:\n{}",
            lab.agent.log_path().display(),
            lab.agent.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// --- Harness self-tests (root only; no agent needed) ------------------------

fn direct(
    topo: &Topology,
    proto: Proto,
    target: SocketAddr,
    base: Option<u16>,
) -> Vec<ClientRecord> {
    run_client(topo, &testclient(), proto, target, 5, base, TIMEOUT_MS)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The topology without the load balancer: the client reaches each backend's
/// own address over the bridge, by TCP (v4 and v6) and UDP, with the source
/// ports it was told to use, and backends own the VIPs on lo.
#[test]
fn topology_direct_to_backend() {
    if !can_run("topology_direct_to_backend") {
        return;
    }
    let topo = Topology::build(TopologyOptions::default()).unwrap_or_else(|e| panic!("{e:#}"));
    let names: Vec<String> = topo.hosts().iter().map(|h| h.ns.clone()).collect();
    let mut servers = Vec::new();
    for b in topo.backends().to_vec() {
        let srv = topo
            .spawn(&b, &testsrv().to_string_lossy(), &["--name", &b])
            .unwrap();
        srv.wait_for_line("ready:", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e:#}"));
        servers.push(srv);
    }
    for (i, b) in topo.backends().iter().enumerate() {
        let lo = topo
            .exec_ok(b, "ip", &["addr", "show", "dev", "lo"])
            .unwrap();
        assert!(
            lo.contains("192.0.2.10/32") && lo.contains("2001:db8:f::10/128"),
            "{b} lacks the VIPs on lo:\n{lo}"
        );
        let cases = [
            (Proto::Tcp, SocketAddr::new(backend_v4(i + 1).into(), 80)),
            (Proto::Tcp, SocketAddr::new(backend_v6(i + 1).into(), 80)),
            (Proto::Udp, SocketAddr::new(backend_v4(i + 1).into(), 53)),
            (Proto::Udp, SocketAddr::new(backend_v6(i + 1).into(), 53)),
        ];
        for (n, (proto, target)) in cases.into_iter().enumerate() {
            let base = 20000 + (i * 100 + n * 10) as u16;
            let records = direct(&topo, proto, target, Some(base));
            let failed = failures(&records);
            assert!(
                failed.is_empty(),
                "{proto} to {target}: {}\nlogs: {}",
                failed.join("\n"),
                topo.log_dir().display()
            );
            assert_eq!(records.len(), 5);
            for (k, r) in records.iter().enumerate() {
                assert_eq!(r.backend.as_deref(), Some(b.as_str()), "{r:?}");
                let src = r.src_addr().unwrap();
                assert_eq!(src.ip(), client_addr_for(&target), "{r:?}");
                assert_eq!(
                    src.port(),
                    base + k as u16,
                    "source port not honoured: {r:?}"
                );
                assert_eq!(r.client.as_deref(), Some(r.src.as_str()), "{r:?}");
            }
        }
    }
    // The VIP is routed to the LB, which does not forward without the balancer.
    let records = run_client(
        &topo,
        &testclient(),
        Proto::Udp,
        SocketAddr::new(VIP_V4.into(), 53),
        2,
        None,
        300,
    )
    .unwrap();
    assert!(
        records.iter().all(|r| !r.ok),
        "the VIP answered without a load balancer: {records:?}"
    );
    // Nothing reaches outside the documentation ranges: no default route anywhere.
    for h in topo.hosts() {
        for fam in ["-4", "-6"] {
            let routes = topo
                .exec_ok(&h.name, "ip", &[fam, "route", "show", "default"])
                .unwrap();
            assert!(
                routes.trim().is_empty(),
                "{} has a default route: {routes}",
                h.ns
            );
        }
    }
    let pids: Vec<u32> = servers.iter().map(|s| s.pid()).collect();
    let bpffs = topo.bpffs_dir().to_path_buf();
    drop(topo);
    assert_gone(&names, &pids, &bpffs);
}

fn assert_gone(namespaces: &[String], pids: &[u32], bpffs: &Path) {
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for ns in namespaces {
        assert!(
            !list.split_whitespace().any(|w| w == ns),
            "namespace {ns} left behind:\n{list}"
        );
    }
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} left behind"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*bpffs.to_string_lossy()),
        "bpffs {} still mounted",
        bpffs.display()
    );
    assert!(!bpffs.exists(), "{} not removed", bpffs.display());
}

/// A test that panics mid-way still leaves nothing behind (Drop during unwinding),
/// even with a process that ignores SIGTERM.
#[test]
fn topology_cleanup_after_panic() {
    if !can_run("topology_cleanup_after_panic") {
        return;
    }
    let mut names = Vec::new();
    let mut pids = Vec::new();
    let mut bpffs = PathBuf::new();
    let mut logs = PathBuf::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let topo = Topology::build(TopologyOptions {
            backends: 1,
            ..Default::default()
        })
        .unwrap();
        names = topo.hosts().iter().map(|h| h.ns.clone()).collect();
        bpffs = topo.bpffs_dir().to_path_buf();
        logs = topo.log_dir().to_path_buf();
        let stubborn = topo
            .spawn(
                "b1",
                "sh",
                &["-c", "trap '' TERM; echo ready:; sleep 60 & wait"],
            )
            .unwrap();
        stubborn
            .wait_for_line("ready:", Duration::from_secs(5))
            .unwrap();
        pids.push(stubborn.pid());
        let other = topo.spawn(CLIENT, "sleep", &["60"]).unwrap();
        pids.push(other.pid());
        panic!("deliberate failure");
    }));
    assert!(result.is_err());
    assert_gone(&names, &pids, &bpffs);
    let leftover: BTreeSet<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(names.iter().all(|n| !leftover.contains(n)), "{leftover:?}");
    // A panicking test keeps its logs; this one panicked on purpose.
    assert!(logs.exists(), "logs of a failed test must be kept");
    let _ = std::fs::remove_dir_all(&logs);
}

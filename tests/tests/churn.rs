//! The agent starts, reloads and restarts every time, under churn: 50
//! reloads back to back alternating two configs, then 10 restarts (SIGTERM
//! and kill -9 in turn), over eight IPv4 and eight IPv6 backends whose
//! neighbour entries on the LB are present for some and deleted for others
//! before each step, while long-lived connections of both families run.
//!
//! Before the next-hop resolution used one RTM_GETNEIGH dump per backend on
//! a shared netlink socket, about one start or reload in ten failed here
//! with EBUSY or ENOBUFS ("listing neighbours: ... os error 105"). Every
//! reload must be applied, every start must reach `ready:`, and no held
//! connection may break. Needs root.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lb_tests::lab::{Lab, LabBins, LabOptions, hold_records};
use lb_tests::topology::{self, LB, LB_V4, LB_V6, TopologyOptions, VIP_V4, VIP_V6, backend_v4, backend_v6};

const HOSTS: usize = 8;
const ECHO_PORT: u16 = 7;
const RELOADS: usize = 50;
const RESTARTS: usize = 10;
/// Connections held per family through the whole test.
const CONNECTIONS: u32 = 16;
const INTERVAL_MS: u64 = 200;
/// The churn must end within this (about 17 s on an idle 2-core machine);
/// the held connections live this long.
const CHURN_BUDGET: Duration = Duration::from_secs(40);
const HOLD_SLACK: Duration = Duration::from_secs(10);

/// The echo VIPs over every backend of their family; `extra` adds a VIP
/// whose IPv4 address is served by the IPv6 backends (4in6), so the two
/// configs differ in VIPs, rings and the backends' families per VIP.
fn config(extra: bool) -> toml::Table {
    let mut s = format!(
        "[lb]\ninterface = \"eth0\"\ntunnel_source_v4 = \"{LB_V4}\"\ntunnel_source_v6 = \"{LB_V6}\"\nbpffs_dir = \"/unset\"\nflow_table_size = 65536\n"
    );
    let mut vip = |name: &str, address: IpAddr, port: u16, backends: Vec<IpAddr>| {
        s += &format!("\n[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nport = {port}\nprotocol = \"tcp\"\n");
        for b in backends {
            s += &format!("\n[[vip.backend]]\naddress = \"{b}\"\n");
        }
    };
    let v4: Vec<IpAddr> = (1..=HOSTS).map(|i| backend_v4(i).into()).collect();
    let v6: Vec<IpAddr> = (1..=HOSTS).map(|i| backend_v6(i).into()).collect();
    vip("echo-v4", VIP_V4.into(), ECHO_PORT, v4);
    vip("echo-v6", VIP_V6.into(), ECHO_PORT, v6.clone());
    if extra {
        vip("extra-4in6", VIP_V4.into(), ECHO_PORT + 1, v6);
    }
    s.parse().expect("the generated config is valid TOML")
}

/// Deletes the LB's neighbour entries of the odd (or even) backends, so the
/// next resolution finds some entries and must create the others.
fn forget_neighbours(lab: &Lab, odd: bool) {
    for i in (1..=HOSTS).filter(|i| (i % 2 == 1) == odd) {
        for addr in [IpAddr::from(backend_v4(i)), IpAddr::from(backend_v6(i))] {
            // Absent already is fine: the point is that it is absent now.
            let _ = lab.topo.exec(LB, "ip", &["neigh", "del", &addr.to_string(), "dev", topology::IFACE]);
        }
    }
}

/// The lab's balancer outlives its agent; detached when dropped.
struct Scenario(Lab);

impl Drop for Scenario {
    fn drop(&mut self) {
        if let Err(e) = self.0.detach() {
            eprintln!("[churn] teardown: {e:#}");
        }
    }
}

#[test]
fn reloads_and_restarts_apply_every_time_and_break_nothing() {
    if !topology::is_root() {
        eprintln!("SKIPPED: needs root (network namespaces, XDP); run it via `cargo xtask test`");
        return;
    }
    let bins = LabBins {
        agent: lb_tests::agent::agent_bin().unwrap_or_else(|e| panic!("{e:#}")),
        testsrv: PathBuf::from(env!("CARGO_BIN_EXE_lb-testsrv")),
        testclient: PathBuf::from(env!("CARGO_BIN_EXE_lb-testclient")),
    };
    let options = LabOptions { unload_on_exit: false, server_extra: vec!["--echo-port".into(), ECHO_PORT.to_string()], ..LabOptions::default() };
    let mut s = Scenario(
        Lab::start_with_options(bins, TopologyOptions { backends: HOSTS, ..Default::default() }, config(false), options, &|m| eprintln!("[churn] {m}"))
            .unwrap_or_else(|e| panic!("starting the lab: {e:#}")),
    );
    let hold_ms = CHURN_BUDGET.as_millis() as u64;
    let targets = [SocketAddr::new(VIP_V4.into(), ECHO_PORT), SocketAddr::new(VIP_V6.into(), ECHO_PORT)];
    let clients: Vec<topology::Proc> = targets
        .iter()
        .zip([40_000, 41_000])
        .map(|(t, port_base)| s.0.hold_client(*t, CONNECTIONS, port_base, hold_ms, INTERVAL_MS).unwrap_or_else(|e| panic!("{e:#}")))
        .collect();
    let started = Instant::now();

    let mut refused = Vec::new();
    for i in 0..RELOADS {
        forget_neighbours(&s.0, i % 2 == 0);
        let out = s.0.reload(config(i % 2 == 0)).unwrap_or_else(|e| panic!("reload {i}: {e:#}"));
        if !out.status.success() {
            refused.push(format!("reload {i}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
        }
    }
    let reloads_took = started.elapsed();
    let mut not_ready = Vec::new();
    for i in 0..RESTARTS {
        if i % 2 == 0 {
            s.0.agent.stop().unwrap_or_else(|e| panic!("SIGTERM to the agent: {e:#}"));
        } else {
            s.0.kill_agent().unwrap_or_else(|e| panic!("kill -9 of the agent: {e:#}"));
        }
        forget_neighbours(&s.0, i % 2 == 1);
        if let Err(e) = s.0.restart_agent() {
            not_ready.push(format!("restart {i}: {e:#}\n{}", s.0.agent.log_tail(20)));
            // A failed start leaves no agent: start again so the next step has one.
            let _ = s.0.agent.kill();
            s.0.restart_agent().unwrap_or_else(|e| panic!("restart {i} failed twice: {e:#}"));
        }
    }
    let churn_took = started.elapsed();
    eprintln!(
        "[churn] {} of {RELOADS} reloads applied in {:.1} s, {} of {RESTARTS} starts ready in {:.1} s",
        RELOADS - refused.len(),
        reloads_took.as_secs_f64(),
        RESTARTS - not_ready.len(),
        (churn_took - reloads_took).as_secs_f64()
    );
    assert!(churn_took < CHURN_BUDGET, "the churn took {churn_took:?}, longer than the connections are held ({CHURN_BUDGET:?})");

    let mut broken = Vec::new();
    let mut kept = 0;
    for (client, target) in clients.iter().zip(targets) {
        let records = hold_records(client, CHURN_BUDGET + HOLD_SLACK).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(records.len(), CONNECTIONS as usize, "{target}: one record per connection");
        kept += records.iter().filter(|r| r.kept()).count();
        broken.extend(records.into_iter().filter(|r| !r.kept()).map(|r| format!("{target}: {r:?}")));
    }
    eprintln!("[churn] {kept} connections kept, {} broken", broken.len());
    assert!(refused.is_empty(), "{} reload(s) refused:\n{}", refused.len(), refused.join("\n"));
    assert!(not_ready.is_empty(), "{} start(s) did not reach ready:\n{}", not_ready.len(), not_ready.join("\n"));
    assert!(broken.is_empty(), "{} connection(s) broken:\n{}", broken.len(), broken.join("\n"));
}

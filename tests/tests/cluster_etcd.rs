//! One cluster document in etcd, three LB hosts following it (see
//! `lb_tests::etcd_lab`): a new revision reaches every host (the time from
//! the put to the last host's `applied:` line is printed) and long-lived
//! connections keep their backends across it; an invalid revision is
//! refused by every host and reported by `cluster status`; two operators
//! publishing from the same revision cannot overwrite each other; a host
//! cut off from etcd disappears when its lease expires; etcd down: the
//! hosts keep forwarding, a host restarted meanwhile starts from its cached
//! document, and all converge once etcd is back; etcd with user and
//! password, and over TLS with client certificates. Needs root.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use lb_tests::agent::{Proto, e2e_config};
use lb_tests::etcd_lab::{ECHO_PORT, ETCD_V4, EtcdLab, KEY, split};
use lb_tests::lab::{LabBins, hold_records};
use lb_tests::topology::{self, VIP_V4};

/// Every host applies a revision within this (watch + validate + apply).
const APPLY_LIMIT: Duration = Duration::from_secs(10);
/// The lease (2 s) plus a keep-alive period and slack.
const GONE_LIMIT: Duration = Duration::from_secs(8);
const CONNECTIONS: u32 = 24;
const HOLD_MS: u64 = 8_000;
const INTERVAL_MS: u64 = 100;

fn can_run(test: &str) -> bool {
    topology::root_or_skip(test, "network namespaces, XDP, etcd")
}

fn bins() -> LabBins {
    lb_tests::lab_bins!()
}

fn progress(line: &str) {
    eprintln!("  {line}");
}

/// The e2e VIPs plus `echo-v4` (first, so [`doc_with_weight`] changes it) for long-lived connections.
fn start() -> EtcdLab {
    let mut config = e2e_config(3);
    let mut echo = config["vip"].as_array().expect("vips")[0].clone();
    echo["name"] = "echo-v4".into();
    echo["port"] = i64::from(ECHO_PORT).into();
    config["vip"].as_array_mut().expect("vips").insert(0, echo);
    EtcdLab::start(bins(), 3, config, &progress).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The lab's cluster document with backend `backend` of the first VIP at `weight`.
fn doc_with_weight(fleet: &EtcdLab, backend: usize, weight: i64) -> String {
    let (_, mut doc) = split(&fleet.lab.config);
    let vip = &mut doc["vip"].as_array_mut().expect("vips")[0];
    vip["backend"].as_array_mut().expect("backends")[backend]["weight"] = weight.into();
    toml::to_string(&doc).expect("a document serializes")
}

/// The revision `lb-agent cluster put` reports publishing.
fn published(out: &std::process::Output) -> i64 {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cluster put failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    text.split("as revision ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|r| r.parse().ok()).unwrap_or_else(|| panic!("no revision in {text:?}"))
}

/// Polls `cluster status` until `ok` holds for it (bounded).
fn wait_status(fleet: &EtcdLab, limit: Duration, what: &str, ok: impl Fn(i32, &serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let (code, status) = fleet.status().unwrap_or_else(|e| panic!("{e:#}"));
        if ok(code, &status) {
            return status;
        }
        assert!(Instant::now() < deadline, "cluster status never showed {what} within {limit:?}: {status:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn converged_at(revision: i64, hosts: usize) -> impl Fn(i32, &serde_json::Value) -> bool {
    move |code, s| code == 0 && s["converged"] == true && s["latest_revision"] == revision && s["hosts"].as_array().map_or(0, Vec::len) == hosts
}

/// The backend `lb-agent lookup` names on every host for a few flows: the hosts must agree.
fn lookups_agree(fleet: &EtcdLab) {
    for port in [40001u16, 40002, 40003, 40004, 40005] {
        let answers: Vec<String> = fleet
            .hosts
            .iter()
            .map(|h| {
                let args = ["lookup", "--config", h.config_path.to_str().unwrap(), "--vip", "192.0.2.10", "--port", "80", "--src", "198.51.100.10", "--src-port", &port.to_string()];
                let out = fleet.lab.topo.exec_timeout(&h.name, fleet.lab.bins.agent.to_str().unwrap(), &args, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e:#}"));
                assert!(out.status.success(), "lookup on {}: {}", h.name, String::from_utf8_lossy(&out.stderr));
                lb_tests::agent::parse_lookup(&String::from_utf8_lossy(&out.stdout)).unwrap_or_else(|e| panic!("{e:#}")).to_string()
            })
            .collect();
        assert!(answers.windows(2).all(|w| w[0] == w[1]), "hosts disagree on source port {port}: {answers:?}");
    }
}

#[test]
fn three_hosts_follow_one_document() {
    if !can_run("three_hosts_follow_one_document") {
        return;
    }
    let fleet = start();
    let first = fleet.revision().unwrap_or_else(|e| panic!("{e:#}"));
    wait_status(&fleet, Duration::from_secs(5), "3 hosts converged", converged_at(first, 3));

    // A new revision while long-lived connections run through `lb`.
    let target = fleet.lab.vip(IpAddr::V4(VIP_V4), ECHO_PORT, Proto::Tcp).unwrap_or_else(|e| panic!("{e:#}")).target();
    let client = fleet.lab.hold_client(target, CONNECTIONS, 41000, HOLD_MS, INTERVAL_MS).unwrap_or_else(|e| panic!("{e:#}"));
    std::thread::sleep(Duration::from_secs(1));
    let put_at = Instant::now();
    let second = published(&fleet.put(&doc_with_weight(&fleet, 0, 3), None).unwrap_or_else(|e| panic!("{e:#}")));
    let took = fleet.wait_logged(&[0, 1, 2], &format!("applied: revision {second} of"), put_at, APPLY_LIMIT).unwrap_or_else(|e| panic!("{e:#}"));
    println!("revision {second}: put to the last of 3 hosts applied in {:.0} ms", took.as_secs_f64() * 1e3);
    let status = wait_status(&fleet, Duration::from_secs(5), "converged on the new revision", converged_at(second, 3));
    assert_eq!(status["fingerprints"].as_object().map(|f| f.len()), Some(1), "one fingerprint: {status:#}");
    lookups_agree(&fleet);
    let records = hold_records(&client, Duration::from_millis(HOLD_MS) + Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(records.len(), CONNECTIONS as usize);
    let broken: Vec<_> = records.iter().filter(|r| r.error.is_some() || r.answered < r.sent || r.backends.len() != 1).collect();
    println!("long-lived connections across the revision: {} kept, {} broken or moved", records.len() - broken.len(), broken.len());
    assert!(broken.is_empty(), "connections broke or moved: {broken:?}");

    // An invalid revision, written past `cluster put`'s validation (as a
    // broken pipeline would): refused everywhere, reported, nothing changed.
    let fingerprint = status["hosts"][0]["fingerprint"].clone();
    let bad_doc = doc_with_weight(&fleet, 0, 3).replacen("port = 80", "port = 70000", 1);
    let out = fleet.etcdctl(&["put", KEY, &bad_doc]).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.status.success(), "etcdctl put: {}", String::from_utf8_lossy(&out.stderr));
    let bad = fleet.revision().unwrap_or_else(|e| panic!("{e:#}"));
    fleet.wait_logged(&[0, 1, 2], &format!("refused: revision {bad} of"), Instant::now(), APPLY_LIMIT).unwrap_or_else(|e| panic!("{e:#}"));
    let status = wait_status(&fleet, Duration::from_secs(5), "every host's refusal", |code, s| {
        code == 8 && s["hosts"].as_array().is_some_and(|h| h.len() == 3 && h.iter().all(|h| h["last_error"].as_str().is_some_and(|e| e.contains("70000"))))
    });
    for h in status["hosts"].as_array().unwrap() {
        assert_eq!(h["applied_revision"], second, "{h:#}");
        assert_eq!(h["fingerprint"], fingerprint, "a refused revision changed {h:#}");
    }
    lookups_agree(&fleet);

    // Two operators publish from the same base revision: one wins.
    let base = bad.to_string();
    let docs = [doc_with_weight(&fleet, 1, 2), doc_with_weight(&fleet, 2, 2)];
    let outs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = docs.iter().map(|d| s.spawn(|| fleet.put(d, Some(base.parse().unwrap())).unwrap_or_else(|e| panic!("{e:#}")))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<_> = outs.iter().filter(|o| o.status.success()).collect();
    let losers: Vec<_> = outs.iter().filter(|o| !o.status.success()).collect();
    assert_eq!((winners.len(), losers.len()), (1, 1), "{outs:?}");
    assert_eq!(losers[0].status.code(), Some(9), "the refused put exits 9");
    assert!(String::from_utf8_lossy(&losers[0].stderr).contains(&format!("not {base}")), "{}", String::from_utf8_lossy(&losers[0].stderr));
    let third = published(winners[0]);
    fleet.wait_logged(&[0, 1, 2], &format!("applied: revision {third} of"), Instant::now(), APPLY_LIMIT).unwrap_or_else(|e| panic!("{e:#}"));
    wait_status(&fleet, Duration::from_secs(5), "converged after the race", converged_at(third, 3));

    // lb3 is cut off from etcd: its lease expires and it is reported gone.
    fleet.lab.topo.exec_ok("lb3", "ip", &["route", "add", "blackhole", &format!("{ETCD_V4}/32")]).unwrap_or_else(|e| panic!("{e:#}"));
    let cut = Instant::now();
    let status = wait_status(&fleet, GONE_LIMIT, "lb3 gone", |code, s| code == 8 && s["gone"] == serde_json::json!(["lb3"]));
    println!("lb3 cut off from etcd: reported gone after {:.1} s", cut.elapsed().as_secs_f64());
    assert_eq!(status["hosts"].as_array().map(Vec::len), Some(2));
}

#[test]
fn etcd_down_keeps_forwarding_and_hosts_catch_up() {
    if !can_run("etcd_down_keeps_forwarding_and_hosts_catch_up") {
        return;
    }
    let mut fleet = start();
    let first = fleet.revision().unwrap_or_else(|e| panic!("{e:#}"));
    wait_status(&fleet, Duration::from_secs(5), "3 hosts converged", converged_at(first, 3));
    let target = fleet.lab.vip(IpAddr::V4(VIP_V4), ECHO_PORT, Proto::Tcp).unwrap_or_else(|e| panic!("{e:#}")).target();
    let client = fleet.lab.hold_client(target, CONNECTIONS, 42000, HOLD_MS, INTERVAL_MS).unwrap_or_else(|e| panic!("{e:#}"));

    fleet.stop_etcd().unwrap_or_else(|e| panic!("{e:#}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = fleet.agent_command(&["stats", "--interval", "0"]).unwrap_or_else(|e| panic!("{e:#}"));
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains(&format!("config source  etcd {KEY} revision {first} applied, etcd UNREACHABLE")) {
            break;
        }
        assert!(Instant::now() < deadline, "stats never said etcd is unreachable:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A host restarted while etcd is down starts from its cached document.
    fleet.restart_agent(1).unwrap_or_else(|e| panic!("{e:#}"));
    let log = std::fs::read_to_string(fleet.hosts[1].agent.log_path()).unwrap_or_default();
    assert!(log.contains(&format!("starting from the cached revision {first} of {KEY}")), "lb2's log:\n{log}");
    let records = hold_records(&client, Duration::from_millis(HOLD_MS) + Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e:#}"));
    let broken = records.iter().filter(|r| r.error.is_some() || r.answered < r.sent).count();
    println!("etcd down: {} connections kept, {broken} broken", records.len() - broken);
    assert_eq!((records.len(), broken), (CONNECTIONS as usize, 0), "forwarding must not depend on etcd");

    // etcd back: a new revision reaches every host, the restarted one too.
    let back = Instant::now();
    fleet.start_etcd().unwrap_or_else(|e| panic!("{e:#}"));
    let second = published(&fleet.put(&doc_with_weight(&fleet, 0, 2), None).unwrap_or_else(|e| panic!("{e:#}")));
    fleet.wait_logged(&[0, 1, 2], &format!("applied: revision {second} of"), back, APPLY_LIMIT + Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e:#}"));
    wait_status(&fleet, Duration::from_secs(5), "converged after etcd came back", converged_at(second, 3));
    println!("etcd back: all 3 hosts on revision {second} {:.1} s after its restart", back.elapsed().as_secs_f64());
}

/// etcd with authentication on: `lb-agent cluster` gets in with
/// `username` + `password_file`, is refused without, and prints the password nowhere.
#[test]
fn etcd_authentication_uses_the_password_file_and_never_prints_it() {
    if !can_run("etcd_authentication_uses_the_password_file_and_never_prints_it") {
        return;
    }
    const PASSWORD: &str = "s3cret-lb-test-pw";
    let mut topo = topology::Topology::build(topology::TopologyOptions { backends: 1, ..Default::default() }).unwrap_or_else(|e| panic!("{e:#}"));
    lb_tests::etcd_lab::add_etcd_host(&mut topo).unwrap_or_else(|e| panic!("{e:#}"));
    let _etcd = lb_tests::etcd_lab::start_etcd(&topo, &topo.log_dir().join("etcd-data"), &[]).unwrap_or_else(|e| panic!("{e:#}"));
    let ctl = |args: &[&str]| {
        let out = lb_tests::etcd_lab::etcdctl(&topo, args).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    ctl(&["user", "add", &format!("root:{PASSWORD}")]);
    ctl(&["auth", "enable"]);

    let dir = topo.log_dir();
    let password_file = dir.join("etcd-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let local = |auth: &str| source_only_local(dir, &format!("local{}.toml", auth.len()), &format!("http://{ETCD_V4}:2379"), auth);
    let doc_path = one_backend_doc(dir);
    let cluster = |config: &std::path::Path, args: &[&str]| {
        let (ok, text) = cluster(&topo, config, args);
        assert!(!text.contains(PASSWORD), "the password was printed:\n{text}");
        (ok, text)
    };

    let anonymous = local("");
    let (ok, text) = cluster(&anonymous, &["put", doc_path.to_str().unwrap()]);
    assert!(!ok, "an anonymous put was accepted:\n{text}");
    assert!(text.contains("etcd at http://"), "the refusal names etcd: {text}");
    let with_user = local(&format!("username = \"root\"\npassword_file = \"{}\"\n", password_file.display()));
    let (ok, text) = cluster(&with_user, &["put", doc_path.to_str().unwrap()]);
    assert!(ok, "put with the password file failed:\n{text}");
    let (ok, text) = cluster(&with_user, &["get"]);
    assert!(ok && text.contains("192.0.2.10"), "get:\n{text}");
}

/// etcd over TLS with client certificates: `lb-agent cluster` gets in with
/// `ca_file`, `cert_file` and `key_file`, and is refused without its certificate.
#[test]
fn etcd_over_tls_with_client_certificates() {
    if !can_run("etcd_over_tls_with_client_certificates") {
        return;
    }
    let mut topo = topology::Topology::build(topology::TopologyOptions { backends: 1, ..Default::default() }).unwrap_or_else(|e| panic!("{e:#}"));
    let dir = topo.log_dir().join("tls");
    let tls = lb_tests::etcd_lab::TlsFiles::make(&dir).unwrap_or_else(|e| panic!("{e:#}"));
    lb_tests::etcd_lab::add_etcd_host(&mut topo).unwrap_or_else(|e| panic!("{e:#}"));
    let _etcd = lb_tests::etcd_lab::start_etcd_tls(&topo, &topo.log_dir().join("etcd-data"), &tls).unwrap_or_else(|e| panic!("{e:#}"));

    let local = |client_cert: bool| {
        let identity = if client_cert { format!("cert_file = \"{}\"\nkey_file = \"{}\"\n", tls.client_cert.display(), tls.client_key.display()) } else { String::new() };
        source_only_local(&dir, &format!("local-{client_cert}.toml"), &format!("https://{ETCD_V4}:2379"), &format!("ca_file = \"{}\"\n{identity}", tls.ca.display()))
    };
    let doc_path = one_backend_doc(&dir);
    let cluster = |config: &std::path::Path, args: &[&str]| cluster(&topo, config, args);
    let (ok, text) = cluster(&local(false), &["put", doc_path.to_str().unwrap()]);
    assert!(!ok, "a put without the client certificate was accepted:\n{text}");
    let (ok, text) = cluster(&local(true), &["put", doc_path.to_str().unwrap()]);
    assert!(ok, "put over TLS with the client certificate failed:\n{text}");
    let (ok, text) = cluster(&local(true), &["get"]);
    assert!(ok && text.contains("192.0.2.10"), "get over TLS:\n{text}");
}

/// A local file with `[source]` for `endpoint` plus `extra` lines, written as `dir/NAME`.
fn source_only_local(dir: &std::path::Path, name: &str, endpoint: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let text = format!("[lb]\ninterface = \"eth0\"\n\n[source]\netcd_endpoints = [\"{endpoint}\"]\nkey = \"{KEY}\"\nhost_name = \"lb\"\ntimeout = \"2s\"\n{extra}");
    std::fs::write(&path, text).unwrap();
    path
}

/// The e2e config's cluster document (one backend), written as `dir/doc.toml`.
fn one_backend_doc(dir: &std::path::Path) -> std::path::PathBuf {
    let (_, doc) = split(&e2e_config(1));
    let path = dir.join("doc.toml");
    std::fs::write(&path, toml::to_string(&doc).unwrap()).unwrap();
    path
}

/// `lb-agent cluster --config CONFIG ARGS` in `lb`: success and all it printed.
fn cluster(topo: &topology::Topology, config: &std::path::Path, args: &[&str]) -> (bool, String) {
    let mut full = vec!["cluster", "--config", config.to_str().unwrap()];
    full.extend_from_slice(args);
    let agent = bins().agent;
    let out = topo.exec_timeout(topology::LB, agent.to_str().unwrap(), &full, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e:#}"));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

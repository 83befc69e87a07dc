//! The operator's commands against a running agent in namespaces (issue 16,
//! "CLI and control API"; issue 15 part 5): `list`, `reload --dry-run`
//! (nothing changes in the maps, and the slots it says would move are the
//! slots the reload then moves), the reload's answer naming each change,
//! `drain`/`undrain` across reloads by the documented rule, `lookup
//! --batch` against the kernel's ring, and the exit codes. Needs root; run
//! one at a time.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Output;

use lb_agent::control::exit_code::ExitCode;
use lb_tests::agent::{self, Proto};
use lb_tests::lab::Lab;
use lb_tests::owners::RingSnapshot;
use lb_tests::topology::{self, IFACE, LB_V4, LB_V6, TopologyOptions, VIP_V4, backend_v4};
use serde_json::Value;

const PORT: u16 = 80;

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// VIP "web" on backends b1 and b2 with these weights, and b3 if `b3` (no health checks: the kernel's ring is the all-up ring).
fn config(w1: u32, w2: u32, b3: bool) -> toml::Table {
    let mut s = format!(
        "[lb]\ninterface = \"{IFACE}\"\ntunnel_source_v4 = \"{LB_V4}\"\ntunnel_source_v6 = \"{LB_V6}\"\nbpffs_dir = \"/unset\"\nring_size = 1009\n\n\
         [[vip]]\nname = \"web\"\naddress = \"{VIP_V4}\"\nport = {PORT}\nprotocol = \"tcp\"\n\n\
         [[vip.backend]]\naddress = \"{}\"\nweight = {w1}\n\n[[vip.backend]]\naddress = \"{}\"\nweight = {w2}\n",
        backend_v4(1),
        backend_v4(2)
    );
    if b3 {
        s += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", backend_v4(3));
    }
    s.parse().expect("the generated config is valid TOML")
}

fn describe(out: &Output) -> String {
    format!("{}: stdout {:?}, stderr {:?}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn run(lab: &Lab, args: &[&str]) -> Output {
    lab.agent_command(args).unwrap_or_else(|e| panic!("lb-agent {args:?}: {e:#}"))
}

/// `lb-agent --config FILE ARGS` (the config before the subcommand), which must succeed; its stdout.
fn ok(lab: &Lab, args: &[&str]) -> String {
    let config = s(&lab.config_path);
    let full: Vec<&str> = ["--config", config.as_str()].into_iter().chain(args.iter().copied()).collect();
    let out = run(lab, &full);
    assert!(out.status.success(), "lb-agent {args:?}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn list(lab: &Lab) -> Value {
    serde_json::from_str(&ok(lab, &["list", "--json"])).expect("list --json is JSON")
}

/// (weight, drained, share) of backend `b` of the VIP in `list --json`.
fn backend(list: &Value, b: IpAddr) -> (u64, String, f64) {
    let entry = list["vips"][0]["backends"].as_array().unwrap().iter().find(|e| e["address"] == b.to_string()).unwrap_or_else(|| panic!("{b} not in {list}"));
    (entry["weight"].as_u64().unwrap(), entry["drained"].as_str().unwrap().to_string(), entry["share"].as_f64().unwrap())
}

fn snapshot(lab: &Lab) -> RingSnapshot {
    RingSnapshot::read(lab.topo.bpffs_dir(), &lab.config_path, SocketAddr::new(IpAddr::V4(VIP_V4), PORT), Proto::Tcp).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Writes `config` as the lab's config file without reloading.
fn write(lab: &Lab, mut config: toml::Table) {
    agent::set_bpffs_dir(&mut config, lab.topo.bpffs_dir()).unwrap();
    agent::set_run_dir(&mut config, &lab.topo.agent_run_dir()).unwrap();
    lab.write_config_text(&toml::to_string(&config).unwrap()).unwrap();
}

fn start() -> Lab {
    let bins = lb_tests::lab_bins!();
    Lab::start_with(bins, TopologyOptions { backends: 3, ..Default::default() }, config(1, 1, false), &|m| eprintln!("[cli] {m}"))
        .unwrap_or_else(|e| panic!("starting the lab: {e:#}"))
}

#[test]
fn list_dry_run_reload_drain_lookup_batch_and_exit_codes() {
    if !topology::root_or_skip("list_dry_run_reload_drain_lookup_batch_and_exit_codes", "network namespaces, XDP") {
        return;
    }
    let lab = start();
    let (b1, b2, b3) = (IpAddr::V4(backend_v4(1)), IpAddr::V4(backend_v4(2)), IpAddr::V4(backend_v4(3)));

    // list: both backends, half the kernel's ring each, the check's digest.
    let before = list(&lab);
    let (w, drained, share) = backend(&before, b1);
    assert_eq!((w, drained.as_str()), (1, "no"));
    assert!((share + backend(&before, b2).2 - 1.0).abs() < 1e-9 && (share - 0.5).abs() < 0.05, "{before}");
    let check: Value = serde_json::from_str(&ok(&lab, &["check", "--json"])).unwrap();
    assert_eq!(before["vips"][0]["ring_digest"], check["vips"][0]["ring_digest"], "list and check agree on the digest");
    assert!(ok(&lab, &["list"]).contains("primary"), "the text table");

    // Dry run of a third backend and a weight change: reported, nothing applied.
    write(&lab, config(2, 1, true));
    let rings_before = snapshot(&lab);
    let dry = ok(&lab, &["reload", "--dry-run"]);
    eprintln!("[cli] dry run:\n{dry}");
    assert!(dry.contains("nothing applied") && dry.contains(&format!("backend {b3} added")) && dry.contains(&format!("backend {b1} weight 1 -> 2")), "{dry}");
    let predicted: usize = dry.split(" (").nth(1).and_then(|t| t.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no slot count in {dry}"));
    assert_eq!(snapshot(&lab).changed_slots(&rings_before), 0, "the dry run changed the kernel's ring");
    assert_eq!(list(&lab), before, "the dry run changed what list shows");

    // The reload moves exactly the slots the dry run predicted, and names every change.
    let answer = ok(&lab, &["reload"]);
    assert!(answer.contains(&format!("backend {b3} added")) && answer.contains(&format!("backend {b1} weight 1 -> 2")), "{answer}");
    let moved = snapshot(&lab).changed_slots(&rings_before);
    eprintln!("[cli] dry run predicted {predicted} slots to move, the reload moved {moved}");
    assert_eq!(moved, predicted);

    // Drain b2 at runtime: weight 0, no slot, shown by list; kept by a reload of an unchanged file.
    let drained = ok(&lab, &["drain", "--vip", "web", "--backend", &b2.to_string()]);
    assert!(drained.starts_with("ok drained"), "{drained}");
    let (w, how, share) = backend(&list(&lab), b2);
    assert_eq!((w, how.as_str(), share), (0, "runtime", 0.0));
    ok(&lab, &["reload"]);
    assert_eq!(backend(&list(&lab), b2).1, "runtime", "a reload of an unchanged backend keeps the drain");
    assert!(ok(&lab, &["stats", "--interval", "0"]).contains(&format!("runtime drain: {b2}")));

    // lookup --batch answers as the kernel's ring (drain included).
    let flows: Vec<SocketAddr> = (0..64).map(|i| SocketAddr::new("198.51.100.10".parse().unwrap(), 40_000 + i)).collect();
    let batch_file = lab.config_path.with_extension("flows");
    let lines: String = flows.iter().map(|f| format!("{VIP_V4} {PORT} tcp {} {}\n", f.ip(), f.port())).collect();
    std::fs::write(&batch_file, lines).unwrap();
    let answers = ok(&lab, &["lookup", "--batch", &s(&batch_file)]);
    let kernel = snapshot(&lab);
    let answers: Vec<Value> = answers.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(answers.len(), flows.len());
    for (flow, answer) in flows.iter().zip(&answers) {
        let current = kernel.owners(*flow).unwrap().current.map(|a| a.to_string());
        assert_eq!(answer["backend"].as_str().map(str::to_string), current, "{flow}");
        assert_ne!(answer["backend"], b2.to_string(), "a drained backend gets no new flow");
    }
    let _ = std::fs::remove_file(&batch_file);

    // The file changes b2's weight: the file wins and the answer says the drain went.
    write(&lab, config(2, 3, true));
    let answer = ok(&lab, &["reload"]);
    assert!(answer.contains(&format!("drain of {b2} in VIP \"web\" dropped")), "{answer}");
    assert_eq!(backend(&list(&lab), b2).0, 3);

    // Undrain gives the file's weight back.
    ok(&lab, &["drain", "--vip", &VIP_V4.to_string(), "--backend", &b2.to_string()]);
    assert_eq!(backend(&list(&lab), b2).0, 0);
    ok(&lab, &["undrain", "--vip", "web", "--backend", &b2.to_string()]);
    let (w, how, _) = backend(&list(&lab), b2);
    assert_eq!((w, how.as_str()), (3, "no"));

    // Exit codes: refused (6), invalid config (3), not running (4).
    let cfg = s(&lab.config_path);
    let refused = run(&lab, &["undrain", "--config", &cfg, "--vip", "web", "--backend", &b2.to_string()]);
    assert_eq!(code(&refused), Some(ExitCode::Refused.code()), "{}", describe(&refused));
    let bad = lab.config_path.with_extension("bad.toml");
    std::fs::write(&bad, "[lb]\ninterface = \"x\"\nring_size = 4\n").unwrap();
    let invalid = run(&lab, &["reload", "--config", &s(&bad), "--dry-run"]);
    assert_eq!(code(&invalid), Some(ExitCode::InvalidConfig.code()), "{}", describe(&invalid));
    let mut elsewhere = config(1, 1, false);
    agent::set_bpffs_dir(&mut elsewhere, lab.topo.bpffs_dir()).unwrap();
    let other_run_dir = lab.topo.agent_run_dir().join("lbg-nobody");
    agent::set_run_dir(&mut elsewhere, &other_run_dir).unwrap();
    std::fs::write(&bad, toml::to_string(&elsewhere).unwrap()).unwrap();
    let not_running = run(&lab, &["drain", "--config", &s(&bad), "--vip", "web", "--backend", &b1.to_string()]);
    assert_eq!(code(&not_running), Some(ExitCode::NotRunning.code()), "{}", describe(&not_running));
    let _ = std::fs::remove_file(&bad);
}

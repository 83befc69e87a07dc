//! Every validation rule, each with a config that breaks it.

use super::*;

const GOOD: &str = r#"
[lb]
interface = "eth0"

[[vip]]
name = "web"
address = "192.0.2.10"
port = 80

  [[vip.backend]]
  address = "198.51.100.11"

  [[vip.backend]]
  address = "198.51.100.12"
  weight = 2
"#;

fn errors(text: &str) -> ConfigError {
    match parse(text, "lb.toml") {
        Ok(c) => panic!("expected an error, got {c:#?}"),
        Err(e) => e,
    }
}

/// Asserts that one problem is at `field` and its message contains every
/// one of `needles`, and that the rendered error shows it with the file.
#[track_caller]
fn assert_problem(text: &str, field: &str, needles: &[&str]) -> ConfigError {
    let e = errors(text);
    let shown = e.to_string();
    let found = e.problems.iter().any(|p| p.field == field && needles.iter().all(|n| p.message.contains(n)));
    assert!(found, "no problem at {field} mentioning {needles:?}; got:\n{shown}");
    assert!(shown.lines().any(|l| l.starts_with(&format!("lb.toml: {field}: "))), "{shown}");
    e
}

fn with_lb(lb_extra: &str) -> String {
    GOOD.replace("interface = \"eth0\"", &format!("interface = \"eth0\"\n{lb_extra}"))
}

#[test]
fn good_config_and_defaults() {
    let c = parse(GOOD, "lb.toml").unwrap();
    assert_eq!(c.lb.interface, "eth0");
    assert_eq!(c.lb.xdp_mode, XdpMode::Auto);
    assert_eq!(c.lb.ring_size, DEFAULT_RING_SIZE);
    assert_eq!(c.lb.hash_seed, 0);
    assert_eq!(c.lb.max_vips, DEFAULT_MAX_VIPS);
    assert_eq!(c.lb.max_backends, DEFAULT_MAX_BACKENDS);
    assert_eq!(c.lb.bpffs_dir, PathBuf::from(DEFAULT_BPFFS_DIR));
    assert_eq!(c.lb.tunnel_source_v4, None);
    let v = &c.vips[0];
    assert_eq!((v.name.as_str(), v.port, v.protocol, v.hash), ("web", 80, Protocol::Tcp, HashMode::Flow));
    assert_eq!(v.backends[0].weight, 1);
    assert_eq!(v.backends[1].weight, 2);
    assert_eq!(Protocol::Udp.number(), lb_common::PROTO_UDP);
}

#[test]
fn example_files_parse() {
    for f in ["demo.toml", "lb.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(f);
        let c = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.vips.is_empty());
    }
    let demo = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo.toml")).unwrap();
    assert_eq!(demo.vips.len(), 3);
    assert_eq!(demo.lb.bpffs_dir, PathBuf::from("/sys/fs/bpf/lb-demo"));
}

#[test]
fn bad_backend_ip() {
    let t = GOOD.replace("198.51.100.12", "198.51.100.x");
    assert_problem(&t, "vip \"web\".backend[1].address", &["\"198.51.100.x\"", "not an IP address"]);
}

#[test]
fn bad_vip_ip_without_name_uses_index() {
    let t = GOOD.replace("name = \"web\"\n", "").replace("192.0.2.10", "192.0.2.300");
    let e = assert_problem(&t, "vip[0].address", &["\"192.0.2.300\""]);
    assert!(e.problems.iter().any(|p| p.field == "vip[0].name" && p.message.contains("missing")));
}

#[test]
fn bad_mac() {
    let t = GOOD.replace("weight = 2", "weight = 2\n  mac = \"02:00:00:00:00:zz\"");
    assert_problem(&t, "vip \"web\".backend[1].mac", &["\"02:00:00:00:00:zz\"", "not a MAC"]);
    let t = GOOD.replace("weight = 2", "weight = 2\n  mac = \"ff:ff:ff:ff:ff:ff\"");
    assert_problem(&t, "vip \"web\".backend[1].mac", &["\"ff:ff:ff:ff:ff:ff\"", "unicast"]);
    let ok = GOOD.replace("weight = 2", "weight = 2\n  mac = \"02:AB:00:00:00:11\"");
    let c = parse(&ok, "x").unwrap();
    assert_eq!(c.vips[0].backends[1].mac.unwrap().to_string(), "02:ab:00:00:00:11");
}

#[test]
fn unknown_field_names_file_line_and_key() {
    let t = GOOD.replace("weight = 2", "wieght = 2");
    let e = errors(&t);
    let shown = e.to_string();
    assert_eq!(e.problems.len(), 1);
    assert_eq!(e.problems[0].field, "line 15, vip[0].backend[1].wieght", "{shown}");
    assert!(shown.starts_with("lb.toml: line 15, vip[0].backend[1].wieght: "), "{shown}");
    assert!(shown.contains("unknown field `wieght`"), "{shown}");

    let t = with_lb("colour = \"blue\"");
    let e = errors(&t);
    assert_eq!(e.problems[0].field, "line 4, lb.colour", "{e}");

    let t = GOOD.replace("[lb]", "[lbx]");
    let e = errors(&t);
    assert!(e.to_string().contains("lb.toml: line 2, lbx: unknown field `lbx`, expected one of `lb`, `vip`, `announce`"), "{e}");
}

/// `GOOD` and a second VIP with a `[vip.health]` table and three backends.
fn two_vips(health: &str, third_weight: &str) -> String {
    format!(
        "{GOOD}
[[vip]]
name = \"tls\"
address = \"192.0.2.10\"
port = 443

  [vip.health]
  {health}

  [[vip.backend]]
  address = \"198.51.100.21\"

  [[vip.backend]]
  address = \"198.51.100.22\"

  [[vip.backend]]
  address = \"198.51.100.23\"
  weight = {third_weight}
"
    )
}

#[test]
fn unknown_field_in_a_later_vip_names_its_index() {
    assert!(parse(&two_vips("interval = \"5s\"", "3"), "x").is_ok());
    let e = errors(&two_vips("intervall = \"5s\"", "3"));
    assert_eq!(e.problems.len(), 1, "{e}");
    assert_eq!(e.problems[0].field, "line 23, vip[1].health.intervall", "{e}");
    assert!(e.problems[0].message.starts_with("unknown field `intervall`, expected one of `check`, `interval`"), "{e}");
}

#[test]
fn wrong_type_in_a_backend_names_its_index() {
    let e = errors(&two_vips("interval = \"5s\"", "\"3\""));
    assert_eq!(e.to_string(), "lb.toml: line 33, vip[1].backend[2].weight: invalid type: string \"3\", expected an integer");
    let e = errors(&GOOD.replace("address = \"198.51.100.11\"", "address = 198"));
    assert_eq!(e.to_string(), "lb.toml: line 11, vip[0].backend[0].address: invalid type: integer `198`, expected a string", "{e}");
}

#[test]
fn toml_syntax_errors_name_line_and_column_all_at_once() {
    let e = errors("[lb]\ninterface = \"eth0\nring_size = = 3\n");
    let fields: Vec<&str> = e.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields.first(), Some(&"line 2, column 18"), "where the closing quote should be: {e}");
    assert!(fields.iter().any(|f| f.starts_with("line 3, column ")), "the second `=`, too: {e}");
    assert!(e.problems[0].message.contains("invalid basic string"), "{e}");
    // Columns count characters, not bytes.
    let e = errors("[lb]\ninterface = \"é\" x\n");
    assert_eq!(e.problems[0].field, "line 2, column 17", "{e}");
    assert!(e.to_string().starts_with("lb.toml: line 2, column 17: "), "{e}");
}

#[test]
fn every_structure_error_at_once_in_file_order() {
    let t = with_lb("colour = \"blue\"\nring_size = \"big\"").replace("port = 80", "port = 80\nprot = \"tcp\"").replace("weight = 2", "weight = [2]")
        + "\n[announce]\nrole = 1\n";
    let e = errors(&t);
    let fields: Vec<&str> = e.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        ["line 4, lb.colour", "line 5, lb.ring_size", "line 11, vip[0].prot", "line 18, vip[0].backend[1].weight", "line 21, announce.role"],
        "{e}"
    );
    assert_eq!(e.to_string().lines().count(), 5, "{e}");
}

#[test]
fn structure_errors_stop_at_a_bound() {
    let typos: String = (0..MAX_STRUCTURE_PROBLEMS + 5).map(|i| format!("typo{i} = 1\n")).collect();
    let e = errors(&with_lb(&typos));
    assert_eq!(e.problems.len(), MAX_STRUCTURE_PROBLEMS + 1, "{e}");
    assert!(e.problems[..MAX_STRUCTURE_PROBLEMS].iter().all(|p| p.field.contains(", lb.typo")), "{e}");
    let last = e.problems.last().unwrap();
    assert_eq!((last.field.as_str(), last.message.contains("fix these and check again")), ("", true), "{e}");
    // Exactly at the bound: all of them, and no note.
    let typos: String = (0..MAX_STRUCTURE_PROBLEMS).map(|i| format!("typo{i} = 1\n")).collect();
    let e = errors(&with_lb(&typos));
    assert_eq!(e.problems.len(), MAX_STRUCTURE_PROBLEMS, "{e}");
    assert!(e.problems.iter().all(|p| !p.field.is_empty()), "{e}");
}

#[test]
fn structure_errors_come_before_validation() {
    // A value serde could not read would look missing to validation, so
    // validation waits: the wrong type is reported alone, not also as
    // "name is missing" nor with the ring size.
    let t = with_lb("ring_size = 100").replace("name = \"web\"", "name = 7");
    let e = errors(&t);
    assert_eq!(e.to_string(), "lb.toml: line 7, vip[0].name: invalid type: integer `7`, expected a string");
    // A wrong shape for a whole array of tables is one problem, too.
    let e = errors(&GOOD.replace("[[vip]]", "[vip]"));
    assert_eq!(e.to_string(), "lb.toml: line 5, vip: invalid type: map, expected a sequence");
}

#[test]
fn toml_type_error_names_key() {
    let t = GOOD.replace("port = 80", "port = \"80\"");
    let e = errors(&t);
    assert_eq!(e.problems[0].field, "line 8, vip[0].port", "{e}");
    assert!(e.to_string().contains("lb.toml: line 8, vip[0].port: "), "{e}");
    let e = errors("[lb]\ninterface = \"eth0\n");
    assert!(e.to_string().starts_with("lb.toml: line 2"), "{e}");
}

#[test]
fn duplicate_vip_key() {
    let t = format!(
        "{GOOD}\n[[vip]]\nname = \"web2\"\naddress = \"192.0.2.10\"\nport = 80\nprotocol = \"tcp\"\n[[vip.backend]]\naddress = \"198.51.100.11\"\n"
    );
    assert_problem(&t, "vip \"web2\".address", &["\"192.0.2.10\" port 80 tcp", "vip \"web\""]);
    // Same address and port, other protocol: fine.
    assert!(parse(&t.replace("protocol = \"tcp\"", "protocol = \"udp\""), "x").is_ok());
}

#[test]
fn port_zero_next_to_specific_port_is_allowed() {
    let t =
        format!("{GOOD}\n[[vip]]\nname = \"any\"\naddress = \"192.0.2.10\"\nport = 0\n[[vip.backend]]\naddress = \"198.51.100.13\"\n");
    let c = parse(&t, "x").unwrap();
    assert_eq!(c.vips[1].port, 0);
}

#[test]
fn duplicate_vip_name() {
    let t =
        format!("{GOOD}\n[[vip]]\nname = \"web\"\naddress = \"192.0.2.11\"\nport = 80\n[[vip.backend]]\naddress = \"198.51.100.11\"\n");
    assert_problem(&t, "vip[1].name", &["\"web\"", "vip[0]"]);
}

#[test]
fn duplicate_backend() {
    let t = GOOD.replace("198.51.100.12", "198.51.100.11");
    assert_problem(&t, "vip \"web\".backend[1].address", &["\"198.51.100.11\"", "backend[0]"]);
}

#[test]
fn vip_without_backends() {
    let t = "[lb]\ninterface = \"eth0\"\n[[vip]]\nname = \"web\"\naddress = \"192.0.2.10\"\nport = 80\n";
    assert_problem(t, "vip \"web\".backend", &["at least one backend"]);
}

#[test]
fn all_backends_drained() {
    let t =
        GOOD.replace("weight = 2", "weight = 0").replace("address = \"198.51.100.11\"", "address = \"198.51.100.11\"\n  weight = 0");
    assert_problem(&t, "vip \"web\".backend", &["all 2 backends have weight 0"]);
    // One drained backend is fine.
    assert!(parse(&GOOD.replace("weight = 2", "weight = 0"), "x").is_ok());
}

#[test]
fn weight_too_big() {
    let t = GOOD.replace("weight = 2", "weight = 1001");
    assert_problem(&t, "vip \"web\".backend[1].weight", &["1001", "0..=1000"]);
    let t = GOOD.replace("weight = 2", "weight = -1");
    assert_problem(&t, "vip \"web\".backend[1].weight", &["-1"]);
}

#[test]
fn ring_size_must_be_prime_and_in_range() {
    assert_problem(&with_lb("ring_size = 65536"), "lb.ring_size", &["65536", "not a prime"]);
    assert_problem(&with_lb("ring_size = 2"), "lb.ring_size", &["2 is out of range"]);
    assert_problem(&with_lb("ring_size = 4194304"), "lb.ring_size", &["4194304", "out of range"]);
    assert!(parse(&with_lb("ring_size = 7"), "x").is_ok());
    assert!(parse(&with_lb("ring_size = 4194301"), "x").is_ok());
}

#[test]
fn ring_memory_limit_names_both_fields() {
    assert_problem(&with_lb("ring_size = 4194301\nmax_vips = 100"), "lb.ring_size", &["ring_size 4194301", "max_vips 100", "1024 MiB"]);
}

#[test]
fn too_many_vips() {
    let mut t = with_lb("max_vips = 2");
    for i in 0..2 {
        t.push_str(&format!(
            "[[vip]]\nname = \"v{i}\"\naddress = \"192.0.2.{}\"\nport = 80\n[[vip.backend]]\naddress = \"198.51.100.11\"\n",
            20 + i
        ));
    }
    assert_problem(&t, "lb.max_vips", &["3 VIPs", "max_vips is 2"]);
    assert_problem(&with_lb("max_vips = 0"), "lb.max_vips", &["0 is out of range 1..=4096"]);
}

#[test]
fn too_many_backends_counts_distinct_addresses() {
    // Two distinct addresses need max_backends >= 3.
    assert_problem(&with_lb("max_backends = 2"), "lb.max_backends", &["2 distinct", ">= 3", "max_backends is 2"]);
    // The same address in a second VIP counts once.
    let t = format!(
        "{}\n[[vip]]\nname = \"b\"\naddress = \"192.0.2.11\"\nport = 80\n[[vip.backend]]\naddress = \"198.51.100.11\"\n",
        with_lb("max_backends = 3")
    );
    assert!(parse(&t, "x").is_ok());
}

#[test]
fn bad_interface_names() {
    for bad in ["", "eth0/1", "eth 0", "a234567890123456", "..", "eth0:1"] {
        let t = GOOD.replace("\"eth0\"", &format!("{bad:?}"));
        assert_problem(&t, "lb.interface", &[&format!("{bad:?}")]);
    }
    assert!(parse(&GOOD.replace("\"eth0\"", "\"a23456789012345\""), "x").is_ok());
    let t = GOOD.replace("interface = \"eth0\"\n", "");
    assert_problem(&t, "lb.interface", &["missing"]);
}

#[test]
fn tunnel_source_family() {
    assert_problem(&with_lb("tunnel_source_v4 = \"2001:db8::2\""), "lb.tunnel_source_v4", &["\"2001:db8::2\"", "IPv6"]);
    assert_problem(&with_lb("tunnel_source_v6 = \"198.51.100.2\""), "lb.tunnel_source_v6", &["\"198.51.100.2\"", "IPv4"]);
    assert_problem(&with_lb("tunnel_source_v4 = \"nope\""), "lb.tunnel_source_v4", &["\"nope\""]);
    let c = parse(&with_lb("tunnel_source_v4 = \"198.51.100.2\"\ntunnel_source_v6 = \"2001:db8::2\""), "x").unwrap();
    assert_eq!(c.lb.tunnel_source_v4, Some("198.51.100.2".parse().unwrap()));
    assert_eq!(c.lb.tunnel_source_v6, Some("2001:db8::2".parse().unwrap()));
}

#[test]
fn run_dir_and_flow_table() {
    let c = parse(&with_lb(""), "t.toml").unwrap();
    assert_eq!((c.lb.run_dir.clone(), c.lb.flow_table_size), (PathBuf::from(DEFAULT_RUN_DIR), DEFAULT_FLOW_TABLE_SIZE));
    assert!(c.vips.iter().all(|v| v.flow_state == FlowState::Lb), "VIPs use the flow table by default");
    assert_problem(&with_lb("run_dir = \"run/lb\""), "lb.run_dir", &["\"run/lb\"", "absolute"]);
    assert_problem(&with_lb("flow_table_size = 10"), "lb.flow_table_size", &["10", "out of range"]);
    assert_problem(&with_lb("max_vips = 4096\nmax_backends = 65536"), "lb.max_backends", &["member entries"]);
}

#[test]
fn metrics_listen_default_address_and_off() {
    assert_eq!(parse(GOOD, "lb.toml").unwrap().lb.metrics_listen, Some(DEFAULT_METRICS_LISTEN.parse().unwrap()));
    let v6 = parse(&with_lb("metrics_listen = \"[2001:db8::2]:9100\""), "lb.toml").unwrap();
    assert_eq!(v6.lb.metrics_listen, Some("[2001:db8::2]:9100".parse().unwrap()));
    assert_eq!(parse(&with_lb("metrics_listen = \"off\""), "lb.toml").unwrap().lb.metrics_listen, None);
    assert_problem(&with_lb("metrics_listen = \"9110\""), "lb.metrics_listen", &["\"9110\"", "ADDRESS:PORT", "off"]);
}

#[test]
fn bpffs_dir_absolute() {
    assert_problem(&with_lb("bpffs_dir = \"sys/fs/bpf/lb\""), "lb.bpffs_dir", &["\"sys/fs/bpf/lb\"", "absolute"]);
}

#[test]
fn vip_address_unspecified_or_multicast() {
    for bad in ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"] {
        let t = GOOD.replace("192.0.2.10", bad);
        assert_problem(&t, "vip \"web\".address", &[&format!("{bad:?}")]);
    }
}

#[test]
fn bad_enums_and_ranges() {
    assert_problem(&with_lb("xdp_mode = \"fast\""), "lb.xdp_mode", &["\"fast\""]);
    assert_problem(&GOOD.replace("port = 80", "port = 80\nprotocol = \"sctp\""), "vip \"web\".protocol", &["\"sctp\""]);
    assert_problem(&GOOD.replace("port = 80", "port = 80\nhash = \"random\""), "vip \"web\".hash", &["\"random\""]);
    assert_problem(&GOOD.replace("port = 80", "port = 65536"), "vip \"web\".port", &["65536"]);
    assert_problem(&with_lb("hash_seed = 4294967296"), "lb.hash_seed", &["4294967296"]);
    assert_problem(&GOOD.replace("name = \"web\"", "name = \"web site\""), "vip[0].name", &["\"web site\""]);
}

#[test]
fn empty_config_is_an_error() {
    assert_problem("[lb]\ninterface = \"eth0\"\n", "vip", &["at least one VIP"]);
    let e = errors("");
    assert!(e.problems.iter().any(|p| p.field == "lb"), "{e}");
    assert!(e.problems.iter().any(|p| p.field == "vip"), "{e}");
}

#[test]
fn all_problems_are_reported_together() {
    let t = with_lb("ring_size = 100\nbpffs_dir = \"rel\"").replace("198.51.100.12", "nope").replace("weight = 2", "weight = 2000");
    let e = errors(&t);
    let fields: Vec<&str> = e.problems.iter().map(|p| p.field.as_str()).collect();
    for f in ["lb.ring_size", "lb.bpffs_dir", "vip \"web\".backend[1].address", "vip \"web\".backend[1].weight"] {
        assert!(fields.contains(&f), "{f} missing from {fields:?}");
    }
    assert_eq!(e.to_string().lines().count(), e.problems.len());
}

#[test]
fn addresses_never_on_the_wire() {
    for (bad, why) in [
        ("127.0.0.1", "loopback"),
        ("127.1.2.3", "loopback"),
        ("::1", "loopback"),
        ("0.1.2.3", "0.0.0.0/8"),
        ("::ffff:198.51.100.12", "write \"198.51.100.12\""),
    ] {
        assert_problem(&GOOD.replace("198.51.100.12", bad), "vip \"web\".backend[1].address", &[&format!("{bad:?}"), why]);
    }
    assert_problem(&GOOD.replace("192.0.2.10", "::ffff:192.0.2.10"), "vip \"web\".address", &["IPv4-mapped", "write \"192.0.2.10\""]);
    assert_problem(&GOOD.replace("192.0.2.10", "127.0.0.10"), "vip \"web\".address", &["loopback"]);
    assert_problem(&with_lb("tunnel_source_v4 = \"127.0.0.1\""), "lb.tunnel_source_v4", &["loopback"]);
    assert_problem(&with_lb("tunnel_source_v6 = \"::ffff:198.51.100.2\""), "lb.tunnel_source_v6", &["IPv4-mapped"]);
    // Neighbours of the refused ranges are fine.
    assert!(parse(&GOOD.replace("198.51.100.12", "1.0.0.1").replace("198.51.100.11", "2001:db8::ffff:c633:640b"), "x").is_ok());
}

#[test]
fn backend_on_an_address_of_the_lb_host() {
    let t = format!(
        "{GOOD}\n[[vip]]\nname = \"dns\"\naddress = \"192.0.2.53\"\nport = 53\n[[vip.backend]]\naddress = \"192.0.2.10\"\n"
    );
    assert_problem(&t, "vip \"dns\".backend[0].address", &["\"192.0.2.10\"", "vip \"web\"", "own address"]);
    // Its own VIP's address, too.
    assert_problem(&GOOD.replace("198.51.100.12", "192.0.2.10"), "vip \"web\".backend[1].address", &["vip \"web\""]);
    let t = with_lb("tunnel_source_v4 = \"198.51.100.11\"");
    assert_problem(&t, "vip \"web\".backend[0].address", &["lb.tunnel_source_v4", "another host"]);
}

/// Two VIPs sharing backend 198.51.100.11, with `mac_a` / `mac_b` under it.
fn shared_backend(mac_a: &str, mac_b: &str) -> String {
    GOOD.replace("  address = \"198.51.100.11\"\n", &format!("  address = \"198.51.100.11\"\n{mac_a}"))
        + &format!("\n[[vip]]\nname = \"b\"\naddress = \"192.0.2.11\"\nport = 80\n[[vip.backend]]\naddress = \"198.51.100.11\"\n{mac_b}")
}

#[test]
fn a_backend_has_one_static_mac() {
    let (one, two) = ("  mac = \"02:00:00:00:00:01\"\n", "mac = \"02:00:00:00:00:02\"\n");
    assert_problem(
        &shared_backend(one, two),
        "vip \"b\".backend[0].mac",
        &["\"02:00:00:00:00:02\"", "\"02:00:00:00:00:01\"", "198.51.100.11", "vip \"web\".backend[0].mac", "same MAC"],
    );
    // The same MAC twice, or once: one next hop, whichever VIP gives it.
    assert!(parse(&shared_backend(one, "mac = \"02:00:00:00:00:01\"\n"), "x").is_ok());
    for (a, b) in [(one, ""), ("", "mac = \"02:00:00:00:00:01\"\n")] {
        let c = parse(&shared_backend(a, b), "x").unwrap();
        let plan = crate::plan::plan(&c);
        let id = plan.backend_id("198.51.100.11".parse().unwrap()).unwrap();
        assert_eq!(plan.backend(id).unwrap().mac, Some("02:00:00:00:00:01".parse().unwrap()), "{a:?} {b:?}");
    }
}

#[test]
fn bpffs_dir_the_kernel_cannot_take() {
    let room = MAX_PATH_LEN - 1 - crate::pin_names::longest();
    // "/" + components of 200 bytes until the directory is `len` bytes long.
    let dir = |len: usize| {
        let mut d = String::new();
        while d.len() < len {
            d.push('/');
            let n = (len - d.len()).min(200);
            d.push_str(&"d".repeat(n));
        }
        d
    };
    assert_eq!(dir(room).len(), room);
    assert!(parse(&with_lb(&format!("bpffs_dir = \"{}\"", dir(room))), "x").is_ok());
    let e = assert_problem(&with_lb(&format!("bpffs_dir = \"{}\"", dir(room + 1))), "lb.bpffs_dir", &["too long", "4096 bytes", "4095", "shorter"]);
    assert!(e.to_string().contains(&format!("{:?}", dir(room + 1))), "names the value: {e}");
    let long_name = format!("/sys/fs/bpf/{}", "n".repeat(256));
    assert_problem(&with_lb(&format!("bpffs_dir = \"{long_name}\"")), "lb.bpffs_dir", &["256 bytes", "255"]);
}

#[test]
fn non_utf8_file_names_line_and_byte() {
    let path = std::env::temp_dir().join(format!("lb-config-test-{}-latin1.toml", std::process::id()));
    let mut bytes = GOOD.as_bytes().to_vec();
    let at = GOOD.find("\"web\"").unwrap() + 2; // in `name = "web"`, line 6
    bytes[at] = 0xe9; // Latin-1 'é'
    std::fs::write(&path, &bytes).unwrap();
    let e = load(&path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    let shown = e.to_string();
    assert_eq!(e.problems.len(), 1, "{shown}");
    assert_eq!(e.problems[0].field, format!("line 6, byte 10 of the line (offset {at} in the file)"), "{shown}");
    assert!(shown.starts_with(&format!("{}: line 6, ", path.display())), "{shown}");
    for needle in ["0xe9", "not UTF-8", "re-save it as UTF-8"] {
        assert!(shown.contains(needle), "{needle:?} not in {shown}");
    }
}

#[test]
fn load_missing_file_names_it() {
    let e = load(Path::new("/nonexistent/lb.toml")).unwrap_err();
    assert!(e.to_string().starts_with("/nonexistent/lb.toml: cannot read"), "{e}");
}

//! A host's config when the cluster's document comes from a config source:
//! the local file's host-local settings plus the shared document, composed
//! at the TOML level and then validated as one config.
//!
//! One rule decides where each setting lives ([`HOST_LOCAL_LB_KEYS`]):
//! - the local file (with `[source]`): `[source]`, `[announce]`, and the
//!   host-local keys of `[lb]`;
//! - the cluster document: `[[vip]]` and every other key of `[lb]`, so that
//!   everything that decides a flow's backend is the same on every host.
//!
//! A setting in the wrong place is an error naming the file, the field and
//! where it belongs.

use toml::Table;

use super::*;

/// `[lb]` keys that differ per host (NIC, addresses, paths, listen address).
/// The fingerprint leaves exactly these out (see `summary::fingerprint`; a
/// test below checks the two agree).
pub const HOST_LOCAL_LB_KEYS: [&str; 7] = ["interface", "xdp_mode", "tunnel_source_v4", "tunnel_source_v6", "bpffs_dir", "run_dir", "metrics_listen"];

/// The cluster's config document and the etcd revision it was read at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterDoc {
    pub text: String,
    /// etcd's `mod_revision` of the key (0: not from etcd, e.g. a test).
    pub revision: i64,
}

/// Problems of a local file that names a `[source]`: settings that belong
/// in the cluster document. Empty when the table has no `[source]`.
pub(super) fn local_placement(local: &Table) -> Vec<Problem> {
    if !local.contains_key("source") {
        return Vec::new();
    }
    let mut problems = Vec::new();
    if local.contains_key("vip") {
        problems.push(Problem {
            field: "vip".into(),
            message: "VIPs come from the cluster document when [source] is set; move them there (`lb-agent cluster put`)".into(),
        });
    }
    for key in lb_keys(local).filter(|k| !HOST_LOCAL_LB_KEYS.contains(k)) {
        problems.push(Problem {
            field: format!("lb.{key}"),
            message: "is shared by the cluster when [source] is set; set it in the cluster document instead".into(),
        });
    }
    problems
}

/// Problems of a cluster document: host-local settings and tables.
fn cluster_placement(doc: &Table) -> Vec<Problem> {
    let mut problems = Vec::new();
    for table in ["announce", "source"] {
        if doc.contains_key(table) {
            problems.push(Problem { field: table.into(), message: "is host-local; set it in each host's local file, not in the cluster document".into() });
        }
    }
    for key in lb_keys(doc).filter(|k| HOST_LOCAL_LB_KEYS.contains(k)) {
        problems.push(Problem { field: format!("lb.{key}"), message: "is host-local; set it in each host's local file, not in the cluster document".into() });
    }
    problems
}

fn lb_keys(table: &Table) -> impl Iterator<Item = &str> {
    table.get("lb").and_then(|v| v.as_table()).into_iter().flat_map(|t| t.keys().map(String::as_str))
}

/// Parses TOML text into a table; syntax errors carry `origin`.
fn table(text: &str, origin: &str) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|e| ConfigError { origin: origin.to_string(), problems: vec![syntax_problem(text, &e).1] })
}

/// The config of a host whose local file (`local_text`, read from
/// `local_origin`) names a `[source]`, with the cluster's document: both
/// checked for placement, merged, and validated as one config. Errors name
/// the document they come from.
pub fn compose(local_text: &str, local_origin: &str, doc: &ClusterDoc, doc_origin: &str) -> Result<Config, ConfigError> {
    compose_text(local_text, local_origin, doc, doc_origin).map(|(config, _)| config)
}

/// [`compose`], and the merged config as TOML (a whole config without
/// `[source]`: what the host runs, for `lb-agent list`).
pub fn compose_text(local_text: &str, local_origin: &str, doc: &ClusterDoc, doc_origin: &str) -> Result<(Config, String), ConfigError> {
    let local = table(local_text, local_origin)?;
    let source = parse(local_text, local_origin)?.source;
    let Some(source) = source else {
        return Err(ConfigError {
            origin: local_origin.into(),
            problems: vec![Problem { field: "source".into(), message: "missing: a cluster document needs a [source] table in the local file".into() }],
        });
    };
    let cluster = table(&doc.text, doc_origin)?;
    let problems = cluster_placement(&cluster);
    if !problems.is_empty() {
        return Err(ConfigError { origin: doc_origin.into(), problems });
    }

    let mut merged = cluster;
    let mut lb = merged.remove("lb").and_then(|v| v.as_table().cloned()).unwrap_or_default();
    if let Some(local_lb) = local.get("lb").and_then(|v| v.as_table()) {
        lb.extend(local_lb.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    merged.insert("lb".into(), toml::Value::Table(lb));
    if let Some(announce) = local.get("announce") {
        merged.insert("announce".into(), announce.clone());
    }
    let text = toml::to_string(&merged).map_err(|e| ConfigError {
        origin: doc_origin.into(),
        problems: vec![Problem { field: String::new(), message: format!("cannot merge with {local_origin}: {e}") }],
    })?;
    let mut config = parse(&text, &format!("{local_origin} + {doc_origin}"))?;
    config.source = Some(source);
    Ok((config, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = "[lb]\ninterface = \"eth0\"\ntunnel_source_v4 = \"198.51.100.2\"\n\n\
                         [source]\netcd_endpoints = [\"http://198.51.100.1:2379\"]\nkey = \"/lb/config\"\nhost_name = \"lb1\"\n";
    const DOC: &str = "[lb]\nring_size = 65537\n\n[[vip]]\nname = \"web\"\naddress = \"192.0.2.10\"\nport = 80\nprotocol = \"tcp\"\n\n\
                       [[vip.backend]]\naddress = \"198.51.100.11\"\n";

    fn doc(text: &str) -> ClusterDoc {
        ClusterDoc { text: text.into(), revision: 7 }
    }

    fn messages(e: ConfigError) -> String {
        e.to_string()
    }

    #[test]
    fn host_settings_and_the_document_make_one_config() {
        let c = compose(LOCAL, "lb.toml", &doc(DOC), "etcd /lb/config@7").unwrap();
        assert_eq!(c.lb.interface, "eth0");
        assert_eq!(c.vips.len(), 1);
        assert_eq!(c.source.as_ref().unwrap().key, "/lb/config");
    }

    #[test]
    fn settings_in_the_wrong_place_are_refused_naming_the_document() {
        let e = messages(compose(LOCAL, "lb.toml", &doc("[lb]\ninterface = \"eth1\"\n[announce]\n"), "etcd /lb/config@7").unwrap_err());
        assert!(e.contains("etcd /lb/config@7") && e.contains("lb.interface") && e.contains("announce"), "{e}");
        let local = format!("{LOCAL}\n[[vip]]\nname = \"x\"\n");
        let e = messages(parse(&local.replace("[lb]\n", "[lb]\nring_size = 65537\n"), "lb.toml").unwrap_err());
        assert!(e.contains("lb.toml") && e.contains("lb.ring_size") && e.contains("vip"), "{e}");
    }

    #[test]
    fn an_invalid_document_names_its_origin_and_field() {
        let e = messages(compose(LOCAL, "lb.toml", &doc(&DOC.replace("port = 80", "port = 70000")), "etcd /lb/config@8").unwrap_err());
        assert!(e.contains("etcd /lb/config@8") && e.contains("70000"), "{e}");
        let e = messages(compose(LOCAL, "lb.toml", &doc("[[vip]\n"), "etcd /lb/config@9").unwrap_err());
        assert!(e.contains("etcd /lb/config@9") && e.contains("line 1"), "{e}");
    }

    /// The host-local keys are exactly those the fingerprint ignores: a
    /// change of any of them keeps the fingerprint, so hosts that differ
    /// only there compare equal.
    #[test]
    fn host_local_keys_do_not_change_the_fingerprint() {
        let base = compose(LOCAL, "l", &doc(DOC), "d").unwrap();
        let fp = |c: &Config| crate::summary::fingerprint(c, &crate::plan::plan(c));
        let values = [
            ("interface", "\"eth9\""),
            ("xdp_mode", "\"generic\""),
            ("tunnel_source_v4", "\"198.51.100.9\""),
            ("tunnel_source_v6", "\"2001:db8::9\""),
            ("bpffs_dir", "\"/sys/fs/bpf/other\""),
            ("run_dir", "\"/run/other\""),
            ("metrics_listen", "\"127.0.0.1:9999\""),
        ];
        assert_eq!(values.len(), HOST_LOCAL_LB_KEYS.len());
        for (key, value) in values {
            assert!(HOST_LOCAL_LB_KEYS.contains(&key));
            let line = format!("{key} = {value}\n");
            let local = match LOCAL.lines().find(|l| l.starts_with(&format!("{key} = "))) {
                Some(existing) => LOCAL.replace(&format!("{existing}\n"), &line),
                None => LOCAL.replace("[lb]\n", &format!("[lb]\n{line}")),
            };
            let other = compose(&local, "l", &doc(DOC), "d").unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_ne!(other, base, "{key} had no effect");
            assert_eq!(fp(&other), fp(&base), "{key} changed the fingerprint");
        }
    }
}

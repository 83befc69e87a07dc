//! The `[source]` table of a host's local file: where the cluster's shared
//! config document comes from (etcd), and how this host reports its state.
//!
//! With `[source]`, the local file keeps only host-local settings (see
//! [`super::compose::HOST_LOCAL_LB_KEYS`], `[announce]`, `[source]`); the
//! VIPs and every forwarding setting come from the document at `key`, which
//! every LB host of the cluster reads and watches.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::health::parse_duration;
use crate::diag::Problem;

/// How long a host's published state outlives it (the etcd lease's TTL).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
const MIN_LEASE: Duration = Duration::from_secs(2);
const MAX_LEASE: Duration = Duration::from_secs(300);
/// Longest wait for one etcd request (connect, read, write).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_TIMEOUT: Duration = Duration::from_millis(100);
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Where the last applied document is kept, so that a restart with etcd
/// down starts from it.
pub const DEFAULT_CACHE: &str = "/var/lib/lb/cluster.toml";

/// The validated `[source]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceConfig {
    /// `etcd_endpoints`: `http://host:port` or `https://host:port`, tried in turn.
    pub endpoints: Vec<String>,
    /// `key`: the etcd key holding the cluster's config document.
    pub key: String,
    /// `host_name`: this host's name in the cluster's state (default: the kernel's host name).
    pub host_name: String,
    /// `lease`: TTL of this host's published state.
    pub lease: Duration,
    /// `timeout`: longest wait for one etcd request.
    pub timeout: Duration,
    /// `cache`: the last applied document.
    pub cache: PathBuf,
    /// `username` + `password_file`: etcd authentication (the password is read from the file, never logged).
    pub user: Option<(String, PathBuf)>,
    /// `ca_file`, `cert_file` + `key_file`: TLS for `https://` endpoints.
    pub tls: Option<TlsFiles>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    /// Client certificate and key, when etcd requires client certificates.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl SourceConfig {
    /// The key under which each host publishes its state (`<key>/hosts/<name>`).
    pub fn hosts_prefix(&self) -> String {
        hosts_prefix(&self.key)
    }
    pub fn host_key(&self) -> String {
        format!("{}{}", self.hosts_prefix(), self.host_name)
    }
    pub fn member_key(&self) -> String {
        format!("{}{}", members_prefix(&self.key), self.host_name)
    }
}

/// One definition of where host states live, for the agent and `cluster status`.
pub fn hosts_prefix(key: &str) -> String {
    format!("{key}/hosts/")
}

/// Where each host that ever joined is recorded (no lease): a member with
/// no state is gone, until `lb-agent cluster forget` removes it.
pub fn members_prefix(key: &str) -> String {
    format!("{key}/members/")
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    etcd_endpoints: Option<Vec<String>>,
    key: Option<String>,
    host_name: Option<String>,
    lease: Option<String>,
    timeout: Option<String>,
    cache: Option<String>,
    username: Option<String>,
    password_file: Option<String>,
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
}

/// Validates the `[source]` table; problems are appended.
pub fn resolve(raw: RawSource, problems: &mut Vec<Problem>) -> Option<SourceConfig> {
    let before = problems.len();
    let mut add = |field: &str, message: String| problems.push(Problem { field: format!("source.{field}"), message });

    let endpoints = raw.etcd_endpoints.unwrap_or_default();
    if endpoints.is_empty() {
        add("etcd_endpoints", "missing; list etcd's client URLs, e.g. etcd_endpoints = [\"https://198.51.100.1:2379\"]".into());
    }
    for e in &endpoints {
        if let Some(why) = endpoint_problem(e) {
            add("etcd_endpoints", format!("{e:?} {why}"));
        }
    }
    let https = endpoints.iter().any(|e| e.starts_with("https://"));
    if https && endpoints.iter().any(|e| e.starts_with("http://")) {
        add("etcd_endpoints", "mixes http:// and https:// endpoints; use one scheme for all".into());
    }

    let key = match raw.key {
        None => {
            add("key", "missing; name the etcd key of the cluster's config document, e.g. key = \"/lb/prod/config\"".into());
            String::new()
        }
        Some(k) if !k.starts_with('/') || k.ends_with('/') || k.len() < 2 || k.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            add("key", format!("{k:?} is not a usable key: it must start with '/', not end with '/', and hold no spaces"));
            String::new()
        }
        Some(k) => k,
    };

    let host_name = match raw.host_name {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default(),
    };
    if host_name.is_empty() || host_name.len() > 253 || !host_name.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)) {
        add("host_name", format!("{host_name:?} is not a usable host name (letters, digits, '-', '.', '_'; set host_name = \"lb1\")"));
    }

    let mut duration = |field: &str, value: Option<String>, default: Duration, min: Duration, max: Duration| match value {
        None => default,
        Some(s) => match parse_duration(&s) {
            Ok(d) if (min..=max).contains(&d) => d,
            Ok(_) => {
                add(field, format!("{s:?} is out of range {min:?}..={max:?}"));
                default
            }
            Err(why) => {
                add(field, why);
                default
            }
        },
    };
    let lease = duration("lease", raw.lease, DEFAULT_LEASE, MIN_LEASE, MAX_LEASE);
    let timeout = duration("timeout", raw.timeout, DEFAULT_TIMEOUT, MIN_TIMEOUT, MAX_TIMEOUT);

    let mut add = |field: &str, message: String| problems.push(Problem { field: format!("source.{field}"), message });
    let mut path = |field: &str, value: Option<String>| -> Option<PathBuf> {
        let v = value?;
        if !v.starts_with('/') {
            add(field, format!("{v:?} is not an absolute path"));
            return None;
        }
        Some(PathBuf::from(v))
    };
    let cache = path("cache", raw.cache).unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE));
    let password_file = path("password_file", raw.password_file);
    let ca = path("ca_file", raw.ca_file);
    let cert = path("cert_file", raw.cert_file);
    let client_key = path("key_file", raw.key_file);

    let user = match (raw.username, password_file) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        (Some(_), None) => {
            add("password_file", "missing: username needs password_file (a file holding only the password)".into());
            None
        }
        (None, Some(_)) => {
            add("username", "missing: password_file needs username".into());
            None
        }
    };
    let identity = match (cert, client_key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            add("cert_file", "cert_file and key_file go together (the client certificate and its key)".into());
            None
        }
    };
    let tls = match (ca, https) {
        (Some(ca), true) => Some(TlsFiles { ca, identity }),
        (None, true) => {
            add("ca_file", "missing: https:// endpoints need ca_file (the CA that signed etcd's certificate)".into());
            None
        }
        (Some(_), false) | (None, false) if identity.is_some() => {
            add("cert_file", "client certificates need https:// endpoints".into());
            None
        }
        (Some(_), false) => {
            add("ca_file", "given, but the endpoints are http://; use https:// endpoints".into());
            None
        }
        (None, false) => None,
    };

    (problems.len() == before).then_some(SourceConfig { endpoints, key, host_name, lease, timeout, cache, user, tls })
}

/// Why `e` is no etcd client URL (`http[s]://host:port`), if it is not one.
fn endpoint_problem(e: &str) -> Option<&'static str> {
    let Some(rest) = e.strip_prefix("http://").or_else(|| e.strip_prefix("https://")) else {
        return Some("is not an etcd client URL: start it with http:// or https://");
    };
    let Some((host, port)) = rest.rsplit_once(':') else { return Some("has no port (etcd's client port is usually 2379)") };
    if host.is_empty() || host.contains('/') {
        return Some("has no host");
    }
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Some("has no valid port");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawSource {
        toml::from_str(text).expect("raw source")
    }

    #[test]
    fn a_minimal_table_gets_the_defaults() {
        let mut problems = Vec::new();
        let s = resolve(raw("etcd_endpoints = [\"http://198.51.100.1:2379\"]\nkey = \"/lb/config\"\nhost_name = \"lb1\""), &mut problems).unwrap();
        assert!(problems.is_empty());
        assert_eq!(s.lease, DEFAULT_LEASE);
        assert_eq!(s.host_key(), "/lb/config/hosts/lb1");
        assert_eq!(s.cache, PathBuf::from(DEFAULT_CACHE));
        assert!(s.user.is_none() && s.tls.is_none());
    }

    #[test]
    fn every_bad_field_is_named_with_its_value() {
        let mut problems = Vec::new();
        let text = "etcd_endpoints = [\"198.51.100.1:2379\", \"https://x\"]\nkey = \"lb/config/\"\nhost_name = \"a b\"\nlease = \"1h\"\n\
                    cache = \"rel\"\nusername = \"lb\"\ncert_file = \"/c\"";
        assert!(resolve(raw(text), &mut problems).is_none());
        let text = problems.iter().map(|p| format!("{}: {}", p.field, p.message)).collect::<Vec<_>>().join("\n");
        for needle in [
            "source.etcd_endpoints: \"198.51.100.1:2379\" is not an etcd client URL",
            "source.etcd_endpoints: \"https://x\" has no port",
            "source.key: \"lb/config/\"",
            "source.host_name: \"a b\"",
            "source.lease: \"1h\" is out of range",
            "source.cache: \"rel\" is not an absolute path",
            "source.password_file: missing",
            "source.cert_file: cert_file and key_file go together",
            "source.ca_file: missing: https://",
        ] {
            assert!(text.contains(needle), "{needle:?} not in:\n{text}");
        }
    }

    #[test]
    fn tls_and_user_are_kept_together() {
        let mut problems = Vec::new();
        let text = "etcd_endpoints = [\"https://198.51.100.1:2379\"]\nkey = \"/k\"\nhost_name = \"h\"\nusername = \"lb\"\npassword_file = \"/p\"\n\
                    ca_file = \"/ca\"\ncert_file = \"/c\"\nkey_file = \"/k\"";
        let s = resolve(raw(text), &mut problems).unwrap();
        assert_eq!(s.user, Some(("lb".into(), PathBuf::from("/p"))));
        assert_eq!(s.tls.unwrap().identity, Some((PathBuf::from("/c"), PathBuf::from("/k"))));
    }
}

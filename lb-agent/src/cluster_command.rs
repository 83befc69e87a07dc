//! `lb-agent cluster`: the cluster's document and its hosts' state in etcd,
//! for the operator. `status` tells whether every host runs the latest
//! revision with one fingerprint (and which VIP differs where not); `get`
//! prints the document; `put` validates a new one with this host's local
//! file and writes it only if nobody published since its base revision.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::config::compose::{self, ClusterDoc};
use crate::config::{source::SourceConfig, Config};
use crate::control::exit_code::{coded, ExitCode};
use crate::source::{etcd, host_state::HostState};

/// The cluster as `status` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ClusterView {
    pub key: String,
    /// Revision of the document in etcd now (0: no document).
    pub latest_revision: i64,
    pub converged: bool,
    pub hosts: Vec<HostView>,
    /// Fingerprint -> hosts running it.
    pub fingerprints: BTreeMap<String, Vec<String>>,
    /// VIP -> digest -> hosts, for the VIPs whose digests differ between hosts.
    pub differing_vips: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// Members with no published state: down, or cut off from etcd.
    pub gone: Vec<String>,
    /// Why the cluster has not converged, one line each.
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HostView {
    #[serde(flatten)]
    pub state: HostState,
    pub on_latest: bool,
}

/// Judges the hosts' states against the latest revision; `members` are the
/// hosts that ever joined.
pub fn view(key: &str, latest_revision: i64, hosts: Vec<HostState>, members: &[String]) -> ClusterView {
    let mut problems = Vec::new();
    let gone: Vec<String> = members.iter().filter(|m| !hosts.iter().any(|h| &h.host == *m)).cloned().collect();
    for host in &gone {
        problems.push(format!(
            "{host} is gone: it publishes no state (down, or cut off from etcd longer than its lease); `lb-agent cluster forget {host}` if it left for good"
        ));
    }
    if latest_revision == 0 {
        problems.push(format!("no document at {key}: publish one with `lb-agent cluster put`"));
    }
    if hosts.is_empty() {
        problems.push(format!("no host publishes its state under {}", crate::config::source::hosts_prefix(key)));
    }
    let mut fingerprints: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut vips: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let views = hosts
        .into_iter()
        .map(|h| {
            let on_latest = h.applied_revision == latest_revision;
            if !on_latest {
                problems.push(format!("{} runs revision {}, not the latest {latest_revision}", h.host, h.applied_revision));
            }
            if let Some(e) = &h.last_error {
                problems.push(format!("{} refused {e}", h.host));
            }
            fingerprints.entry(h.fingerprint.clone()).or_default().push(h.host.clone());
            for (vip, digest) in &h.vips {
                vips.entry(vip.clone()).or_default().entry(digest.clone()).or_default().push(h.host.clone());
            }
            HostView { state: h, on_latest }
        })
        .collect::<Vec<_>>();
    // A VIP that some hosts lack differs too.
    for hosts_of in vips.values_mut() {
        let with: usize = hosts_of.values().map(Vec::len).sum();
        if with < views.len() {
            let missing = views.iter().filter(|v| !hosts_of.values().flatten().any(|h| *h == v.state.host)).map(|v| v.state.host.clone()).collect();
            hosts_of.insert("(absent)".into(), missing);
        }
    }
    let differing_vips: BTreeMap<_, _> = vips.into_iter().filter(|(_, d)| d.len() > 1).collect();
    if fingerprints.len() > 1 {
        let list = fingerprints.iter().map(|(fp, hs)| format!("{fp} ({})", hs.join(", "))).collect::<Vec<_>>().join(", ");
        problems.push(format!("fingerprints differ: {list}"));
    }
    for (vip, digests) in &differing_vips {
        let list = digests.iter().map(|(d, hs)| format!("{d} ({})", hs.join(", "))).collect::<Vec<_>>().join(", ");
        problems.push(format!("VIP {vip} differs: {list}"));
    }
    ClusterView { key: key.into(), latest_revision, converged: problems.is_empty(), hosts: views, fingerprints, differing_vips, gone, problems }
}

/// Text for a terminal.
pub fn render(v: &ClusterView) -> String {
    let mut out = String::new();
    let verdict = if v.converged { "converged" } else { "NOT converged" };
    let _ = writeln!(out, "document {} at revision {}; {} host(s): {verdict}", v.key, v.latest_revision, v.hosts.len());
    if !v.hosts.is_empty() {
        let _ = writeln!(out, "{:<20} {:>9} {:<17} {:>10} ANNOUNCED", "HOST", "REVISION", "FINGERPRINT", "UP/DOWN");
    }
    for h in &v.hosts {
        let s = &h.state;
        let revision = if h.on_latest { s.applied_revision.to_string() } else { format!("{}*", s.applied_revision) };
        let _ = writeln!(out, "{:<20} {:>9} {:<17} {:>10} {}", s.host, revision, s.fingerprint, format!("{}/{}", s.backends_up, s.backends_down), s.announced.join(","));
    }
    for p in &v.problems {
        let _ = writeln!(out, "  - {p}");
    }
    out
}

fn source_of(local: &Config) -> Result<&SourceConfig> {
    local.source.as_ref().context("the local config has no [source] table: name the etcd endpoints and key there (see README, \"Many LB hosts\")")
}

fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the tokio runtime")?.block_on(f)
}

/// `lb-agent cluster status`: exits with [`ExitCode::NotConverged`] unless converged.
pub fn status(local: &Config, json: bool) -> Result<()> {
    let source = source_of(local)?;
    let view = block_on(async {
        let mut etcd = etcd::connect(source).await?;
        let (doc, _) = etcd.document(&source.key).await?;
        let hosts = etcd.hosts(&source.key).await?;
        let members = etcd.members(&source.key).await?;
        Ok(view(&source.key, doc.map_or(0, |d| d.revision), hosts, &members))
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", render(&view));
    }
    if view.converged {
        Ok(())
    } else {
        Err(coded(ExitCode::NotConverged, anyhow::anyhow!("the cluster has not converged ({} problem(s) above)", view.problems.len())))
    }
}

/// `lb-agent cluster forget HOST`: a host that left the cluster for good.
pub fn forget(local: &Config, host: &str) -> Result<()> {
    let source = source_of(local)?;
    if block_on(async { etcd::connect(source).await?.forget(&source.key, host).await })? {
        println!("ok {host} is no longer a member of {}", source.key);
        Ok(())
    } else {
        anyhow::bail!("{host} is not a member of {} (`lb-agent cluster status` lists them)", source.key)
    }
}

/// `lb-agent cluster get`: the document on stdout, its revision on stderr.
pub fn get(local: &Config) -> Result<()> {
    let source = source_of(local)?;
    let doc = block_on(async { Ok(etcd::connect(source).await?.document(&source.key).await?.0) })?;
    let doc = doc.with_context(|| format!("no document at {}", source.key))?;
    eprintln!("# {} at revision {}", source.key, doc.revision);
    print!("{}", doc.text);
    Ok(())
}

/// `lb-agent cluster put FILE`: validated with the local file (as every host
/// will compose it), then written if the key is still at `base` (default:
/// the revision read just before writing).
pub fn put(local_path: &Path, local: &Config, file: &Path, base: Option<i64>) -> Result<()> {
    let source = source_of(local)?;
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let local_text = std::fs::read_to_string(local_path).with_context(|| format!("reading {}", local_path.display()))?;
    compose::compose(&local_text, &local_path.display().to_string(), &ClusterDoc { text: text.clone(), revision: 0 }, &file.display().to_string())
        .map_err(|e| coded(ExitCode::InvalidConfig, anyhow::anyhow!("invalid config (nothing was written):\n{e}")))?;
    let outcome = block_on(async {
        let mut etcd = etcd::connect(source).await?;
        let base = match base {
            Some(b) => b,
            None => etcd.document(&source.key).await?.0.map_or(0, |d| d.revision),
        };
        Ok((base, etcd.put_if_unchanged(&source.key, &text, base).await?))
    })?;
    match outcome {
        (_, Ok(revision)) => {
            println!("ok published {} as revision {revision} of {}", file.display(), source.key);
            Ok(())
        }
        (base, Err(current)) => Err(coded(
            ExitCode::Conflict,
            anyhow::anyhow!(
                "refused: {} is at revision {current}, not {base} (someone published since); nothing was written. \
                 Fetch it with `lb-agent cluster get`, merge your change, and put again with --base-revision {current}",
                source.key
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, revision: i64, fp: &str, vips: &[(&str, &str)]) -> HostState {
        HostState {
            host: name.into(),
            applied_revision: revision,
            fingerprint: fp.into(),
            vips: vips.iter().map(|(v, d)| (v.to_string(), d.to_string())).collect(),
            ..HostState::default()
        }
    }

    #[test]
    fn hosts_on_the_latest_revision_with_one_fingerprint_have_converged() {
        let v = view("/k", 5, vec![host("a", 5, "f1", &[("vip1", "d1")]), host("b", 5, "f1", &[("vip1", "d1")])], &["a".into(), "b".into()]);
        assert!(v.converged, "{:?}", v.problems);
        assert!(render(&v).contains("converged") && !render(&v).contains("NOT"));
    }

    #[test]
    fn a_lagging_host_a_refusal_and_the_differing_vip_are_named() {
        let mut b = host("b", 4, "f2", &[("vip1", "d1"), ("vip2", "dX")]);
        b.last_error = Some("revision 5: invalid config".into());
        let v = view("/k", 5, vec![host("a", 5, "f1", &[("vip1", "d1"), ("vip2", "d2")]), b, host("c", 5, "f1", &[("vip1", "d1")])], &[]);
        assert!(!v.converged);
        let text = v.problems.join("\n");
        assert!(text.contains("b runs revision 4, not the latest 5"), "{text}");
        assert!(text.contains("b refused revision 5: invalid config"), "{text}");
        assert!(text.contains("fingerprints differ: f1 (a, c), f2 (b)"), "{text}");
        assert_eq!(v.differing_vips.keys().collect::<Vec<_>>(), ["vip2"], "vip1 is the same everywhere");
        assert_eq!(v.differing_vips["vip2"]["(absent)"], ["c"]);
        assert!(render(&v).contains("4*"));
    }

    #[test]
    fn no_document_or_no_host_is_not_converged() {
        assert!(!view("/k", 0, vec![], &[]).converged);
        assert!(!view("/k", 3, vec![], &[]).converged);
    }

    #[test]
    fn a_member_without_state_is_gone() {
        let v = view("/k", 5, vec![host("a", 5, "f1", &[])], &["a".into(), "b".into()]);
        assert_eq!(v.gone, ["b"]);
        assert!(!v.converged);
        assert!(v.problems[0].starts_with("b is gone"), "{:?}", v.problems);
    }
}

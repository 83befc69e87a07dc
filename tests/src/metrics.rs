//! The agent's Prometheus endpoint as the tests see it: scraping it from the
//! LB's namespace, checking the text with `promtool`, reading sample values.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::topology::{LB, Topology, run_with_timeout};

/// Where the agent listens by default (`lb.metrics_listen`): the LB
/// namespace's own loopback.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9110";

/// How long promtool may take on one check.
const PROMTOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// `lb-scrape ADDR /metrics` in the LB namespace: the exposition text.
pub fn scrape(topo: &Topology, scraper: &Path, listen: &str) -> Result<String> {
    topo.exec_ok(LB, &scraper.to_string_lossy(), &[listen, "/metrics"])
}

/// Fails unless `promtool` is installed (`cargo xtask setup` installs
/// Debian's `prometheus` package, which has it).
pub fn promtool() -> Result<&'static str> {
    let found = Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        bail!("promtool not found: run `cargo xtask setup` (installs Debian's prometheus package) or `apt-get install prometheus`");
    }
    Ok("promtool")
}

/// `promtool check metrics` on `text` (its parser and its lint: help text,
/// `_total` counters, base units). Returns promtool's complaints on failure.
pub fn promtool_check_metrics(text: &str) -> Result<()> {
    let mut child = Command::new(promtool()?)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting promtool")?;
    child.stdin.take().context("promtool stdin")?.write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "promtool check metrics failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `promtool check rules FILE...` / `check config FILE`: `args` after `check`.
pub fn promtool_check(args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(promtool()?);
    cmd.arg("check").args(args);
    let out = run_with_timeout(cmd, PROMTOOL_TIMEOUT)?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("promtool check {} failed ({}):\n{text}", args.join(" "), out.status);
    }
    Ok(text)
}

/// `promtool test rules FILE`: the alert rules' unit tests (run from the
/// file's directory, which its `rule_files` are relative to).
pub fn promtool_test_rules(tests: &Path) -> Result<String> {
    let mut cmd = Command::new(promtool()?);
    cmd.args(["test", "rules"]).arg(tests.file_name().context("a file")?).current_dir(tests.parent().context("a directory")?);
    let out = run_with_timeout(cmd, PROMTOOL_TIMEOUT)?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("promtool test rules {} failed ({}):\n{text}", tests.display(), out.status);
    }
    Ok(text)
}

/// One sample line: `name{label="value",...} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of an exposition (comments skipped). Label values of this
/// agent are names and addresses: no escaped quotes or commas in them.
pub fn parse(text: &str) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').with_context(|| format!("no value in {line:?}"))?;
        let value: f64 = value.parse().with_context(|| format!("bad value in {line:?}"))?;
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').with_context(|| format!("unclosed labels in {line:?}"))?;
                let labels = inner
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').with_context(|| format!("bad label {pair:?} in {line:?}"))?;
                        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).with_context(|| format!("unquoted label in {line:?}"))?;
                        Ok((k.to_string(), v.to_string()))
                    })
                    .collect::<Result<_>>()?;
                (name, labels)
            }
        };
        out.push(Sample { name: name.to_string(), labels, value });
    }
    Ok(out)
}

/// The value of the one sample of `name` whose labels include `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.value),
        [] => bail!("no sample {name}{labels:?}"),
        many => bail!("{} samples match {name}{labels:?}: {many:?}", many.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_and_finds_values() {
        let text = "# HELP x X.\n# TYPE x counter\nx_total{vip=\"web\",backend=\"2001:db8::11\"} 12\nlb_ring_size 65537\n";
        let s = parse(text).unwrap();
        assert_eq!(value(&s, "x_total", &[("backend", "2001:db8::11")]).unwrap(), 12.0);
        assert_eq!(value(&s, "lb_ring_size", &[]).unwrap(), 65537.0);
        assert!(value(&s, "x_total", &[("vip", "other")]).is_err());
        assert!(parse("x{a=b} 1").is_err());
    }
}

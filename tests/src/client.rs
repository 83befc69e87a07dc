//! The wire formats between the test programs, in one place:
//! - the reply of `lb-testsrv`: `backend=NAME client=IP:PORT` (HTTP body or UDP payload);
//! - the output of `lb-testclient`: one JSON object per request and line.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// One request of `lb-testclient`, as printed on its stdout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientRecord {
    pub ok: bool,
    /// The client's own address and port for this request (`ip:port`, `[v6]:port`).
    pub src: String,
    /// The backend that answered (`b1`, ...), when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The client address the backend saw (equal to `src` when nothing rewrote the flow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Duration of the request in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ClientRecord {
    pub fn success(src: SocketAddr, backend: String, client: String, ms: f64) -> Self {
        Self {
            ok: true,
            src: src.to_string(),
            backend: Some(backend),
            client: Some(client),
            ms: Some((ms * 1000.0).round() / 1000.0),
            error: None,
        }
    }

    pub fn failure(src: String, error: String, ms: f64) -> Self {
        Self {
            ok: false,
            src,
            backend: None,
            client: None,
            ms: Some((ms * 1000.0).round() / 1000.0),
            error: Some(error),
        }
    }

    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("a ClientRecord always serialises")
    }

    /// The parsed `src`, if it is a full socket address.
    pub fn src_addr(&self) -> Option<SocketAddr> {
        self.src.parse().ok()
    }
}

/// Parses the stdout of `lb-testclient` (blank lines ignored).
pub fn parse_records(stdout: &str) -> Result<Vec<ClientRecord>> {
    stdout
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| {
                format!(
                    "lb-testclient output line {}: not a request record: {l:?}",
                    i + 1
                )
            })
        })
        .collect()
}

/// How many requests each backend answered (failed requests under `"<failed>"`).
pub fn tally(records: &[ClientRecord]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in records {
        let key = if r.ok {
            r.backend.clone().unwrap_or_else(|| "<unknown>".into())
        } else {
            "<failed>".into()
        };
        *m.entry(key).or_insert(0) += 1;
    }
    m
}

/// The reply a test server sends: `backend=b1 client=198.51.100.10:20000`.
pub fn format_reply(backend: &str, client: SocketAddr) -> String {
    let client = SocketAddr::new(client.ip().to_canonical(), client.port());
    format!("backend={backend} client={client}")
}

/// Parses [`format_reply`]'s output (trailing whitespace ignored) into (backend, client).
pub fn parse_reply(text: &str) -> Result<(String, String)> {
    let mut backend = None;
    let mut client = None;
    for field in text.split_whitespace() {
        if let Some(v) = field.strip_prefix("backend=") {
            backend = Some(v.to_string());
        } else if let Some(v) = field.strip_prefix("client=") {
            client = Some(v.to_string());
        }
    }
    match (backend, client) {
        (Some(b), Some(c)) if !b.is_empty() => Ok((b, c)),
        _ => bail!("not a test server reply: {text:?}"),
    }
}

/// Splits an HTTP/1.x response into (status code, body).
pub fn parse_http_response(raw: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .or_else(|| text.split_once("\n\n"))
        .with_context(|| format!("incomplete HTTP response ({} bytes): {text:?}", raw.len()))?;
    let status_line = head.lines().next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x status line: {status_line:?}");
    }
    let code = parts
        .next()
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status code in {status_line:?}"))?;
    Ok((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_spec_shape() {
        let r = ClientRecord::success(
            "198.51.100.10:20000".parse().unwrap(),
            "b1".into(),
            "198.51.100.10:20000".into(),
            1.23456,
        );
        let line = r.to_line();
        assert_eq!(
            line,
            r#"{"ok":true,"src":"198.51.100.10:20000","backend":"b1","client":"198.51.100.10:20000","ms":1.235}"#
        );
        assert_eq!(parse_records(&line).unwrap(), vec![r]);
        let f = ClientRecord::failure("[::]:20001".into(), "timed out".into(), 2000.0);
        let parsed = parse_records(&format!("{}\n\n", f.to_line())).unwrap();
        assert_eq!(parsed[0].error.as_deref(), Some("timed out"));
        assert_eq!(parsed[0].src_addr(), Some("[::]:20001".parse().unwrap()));
    }

    #[test]
    fn parses_minimal_records_from_the_spec() {
        let out = "{\"ok\":true,\"src\":\"[2001:db8::10]:20000\",\"backend\":\"b1\",\"ms\":1.2}\n{\"ok\":false,\"src\":\"x\",\"error\":\"e\"}\n";
        let recs = parse_records(out).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].src_addr().unwrap().port(), 20000);
        assert!(recs[1].src_addr().is_none());
        let t = tally(&recs);
        assert_eq!(t.get("b1"), Some(&1));
        assert_eq!(t.get("<failed>"), Some(&1));
    }

    #[test]
    fn garbage_output_is_an_error_naming_the_line() {
        let err = parse_records("{\"ok\":true,\"src\":\"a\"}\nboom\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
    }

    #[test]
    fn reply_round_trip_canonicalises_mapped_v4() {
        let text = format_reply("b2", "[::ffff:198.51.100.10]:40000".parse().unwrap());
        assert_eq!(text, "backend=b2 client=198.51.100.10:40000");
        assert_eq!(
            parse_reply(&format!("{text}\n")).unwrap(),
            ("b2".into(), "198.51.100.10:40000".into())
        );
        let v6 = format_reply("b3", "[2001:db8::10]:1".parse().unwrap());
        assert_eq!(parse_reply(&v6).unwrap().1, "[2001:db8::10]:1");
        assert!(parse_reply("hello").is_err());
    }

    #[test]
    fn http_response_parsing() {
        let (code, body) =
            parse_http_response(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc").unwrap();
        assert_eq!((code, body.as_str()), (200, "abc"));
        assert_eq!(
            parse_http_response(b"HTTP/1.1 503 Busy\n\n").unwrap().0,
            503
        );
        assert!(parse_http_response(b"HTTP/1.0 200 OK\r\n").is_err());
        assert!(parse_http_response(b"SSH-2.0\r\n\r\n").is_err());
    }
}

/// One long-lived connection of `lb-testclient --hold-ms`, as printed on its
/// stdout when the run ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HoldRecord {
    /// The client's own address and port.
    pub src: String,
    /// Every backend that answered, in order of first answer (one when the
    /// connection stayed where it started).
    pub backends: Vec<String>,
    /// Messages sent and answered.
    pub sent: u32,
    pub answered: u32,
    /// Slowest answer (ms): a lost packet shows as a retransmission delay.
    pub max_ms: f64,
    /// Why the connection broke, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl HoldRecord {
    /// Kept: never broke, every message answered, by one backend.
    pub fn kept(&self) -> bool {
        self.error.is_none() && self.sent == self.answered && self.backends.len() == 1
    }

    pub fn backend(&self) -> Option<&str> {
        self.backends.first().map(String::as_str)
    }

    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("a HoldRecord always serialises")
    }
}

/// The connection records among `lb-testclient --hold-ms` stdout lines
/// (its `ready:` line and blank lines are skipped).
pub fn parse_hold_records(lines: &[String]) -> Result<Vec<HoldRecord>> {
    lines
        .iter()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str(l).with_context(|| format!("not a connection record: {l:?}")))
        .collect()
}

//! The control socket's protocol, the one definition shared by the agent's
//! server and every client (`reload`, `maintenance`, `drain`, `undrain`):
//! JSON lines. The client sends one [`Request`] line; the agent answers an
//! [`Answer::Accepted`] line at once (its control task is alive and took the
//! request), then, once the main loop has handled it, one final
//! [`Answer`] line, and closes the connection. A final answer without
//! `Accepted` first is a refusal made before the request was taken
//! (unparsable request, other protocol version, busy).
//!
//! Every line carries [`VERSION`]; an agent refuses a request of another
//! version by name, so a client and an agent of different releases fail
//! with a message rather than a misreading.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The protocol version both sides put on every line.
pub const VERSION: u32 = 1;
/// Longest line either side reads (a dry-run report of many VIPs is long).
pub const MAX_ANSWER_LINE: u64 = 4 << 20;

/// What a client may ask.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Re-read the config and apply it in place; with `dry_run`, only say
    /// what it would change (nothing is applied).
    Reload {
        #[serde(default)]
        dry_run: bool,
    },
    /// Withdraw the routes, wait for traffic to drain, then stop.
    Maintenance,
    /// Give one backend of one VIP weight 0 until undrained or until the
    /// file changes that backend (see [`super::drains`]).
    Drain { vip: String, backend: IpAddr },
    /// Undo a [`Request::Drain`].
    Undrain { vip: String, backend: IpAddr },
}

impl Request {
    /// The request's name, as the CLI and the logs call it.
    pub fn word(&self) -> &'static str {
        match self {
            Request::Reload { dry_run: false } => "reload",
            Request::Reload { dry_run: true } => "reload --dry-run",
            Request::Maintenance => "maintenance",
            Request::Drain { .. } => "drain",
            Request::Undrain { .. } => "undrain",
        }
    }

    /// What the agent keeps when it refuses this request.
    pub fn keeps(&self) -> &'static str {
        match self {
            Request::Reload { .. } => "it keeps the old config",
            Request::Maintenance => "it keeps running",
            Request::Drain { .. } | Request::Undrain { .. } => "its backends keep their weights",
        }
    }

    /// The request's line on the wire.
    pub fn encode(&self) -> String {
        line(&Versioned { v: VERSION, body: self })
    }

    /// Reads a request line; the error says what was wrong, for the refusal.
    pub fn decode(text: &str) -> Result<Request, String> {
        decode(text).map(|v: Versioned<Request>| v.body)
    }
}

/// The agent's answer lines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// The request was taken and is being handled (the first line).
    Accepted,
    /// Done; `summary` says what changed (or, for a dry run, would change).
    Ok { summary: String },
    /// Refused or failed; the reasons (the agent's state is unchanged unless they say otherwise).
    Error { reasons: String },
}

impl Answer {
    pub fn ok(summary: impl Into<String>) -> Answer {
        Answer::Ok { summary: summary.into() }
    }

    pub fn error(reasons: impl Into<String>) -> Answer {
        Answer::Error { reasons: reasons.into() }
    }

    pub fn encode(&self) -> String {
        line(&Versioned { v: VERSION, body: self })
    }

    /// Reads an answer line; a line that is no answer of this version is an
    /// [`Answer::Error`] quoting it.
    pub fn decode(text: &str) -> Answer {
        decode(text).map_or_else(|e| Answer::error(format!("unreadable answer from the agent ({e}): {:?}", text.trim())), |v: Versioned<Answer>| v.body)
    }
}

/// A line: the version beside the body's fields.
#[derive(Serialize, Deserialize)]
struct Versioned<T> {
    v: u32,
    #[serde(flatten)]
    body: T,
}

fn line<T: Serialize>(value: &T) -> String {
    let mut s = serde_json::to_string(value).expect("protocol types serialize");
    s.push('\n');
    s
}

fn decode<T: for<'de> Deserialize<'de>>(text: &str) -> Result<Versioned<T>, String> {
    let text = text.trim();
    // The version first, so that another release's request is named as such.
    #[derive(Deserialize)]
    struct VersionOnly {
        v: Option<u32>,
    }
    match serde_json::from_str::<VersionOnly>(text) {
        Err(e) => return Err(format!("not a JSON object: {e}")),
        Ok(VersionOnly { v: None }) => return Err("no protocol version \"v\"".into()),
        Ok(VersionOnly { v: Some(v) }) if v != VERSION => {
            return Err(format!("protocol version {v}, this agent speaks {VERSION}: use the lb-agent binary of the running agent's release"));
        }
        Ok(_) => {}
    }
    serde_json::from_str(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_request() -> Vec<Request> {
        let backend: IpAddr = "198.51.100.11".parse().unwrap();
        vec![
            Request::Reload { dry_run: false },
            Request::Reload { dry_run: true },
            Request::Maintenance,
            Request::Drain { vip: "web".into(), backend },
            Request::Undrain { vip: "web".into(), backend },
        ]
    }

    #[test]
    fn requests_and_answers_round_trip_as_one_line_each() {
        for r in every_request() {
            let wire = r.encode();
            assert!(wire.ends_with('\n') && wire.matches('\n').count() == 1, "{wire:?}");
            assert_eq!(Request::decode(&wire), Ok(r));
        }
        for a in [Answer::Accepted, Answer::ok("1 VIP changed"), Answer::ok(""), Answer::error("invalid config:\n  a\n  b")] {
            let wire = a.encode();
            assert_eq!(wire.matches('\n').count(), 1, "a multi-line answer stays one line: {wire:?}");
            assert_eq!(Answer::decode(&wire), a);
        }
    }

    #[test]
    fn the_wire_format_is_the_documented_one() {
        assert_eq!(Request::Reload { dry_run: true }.encode(), "{\"v\":1,\"request\":\"reload\",\"dry_run\":true}\n");
        assert_eq!(Request::decode("{\"v\":1,\"request\":\"reload\"}"), Ok(Request::Reload { dry_run: false }), "dry_run defaults to false");
        assert_eq!(Answer::Accepted.encode(), "{\"v\":1,\"answer\":\"accepted\"}\n");
    }

    #[test]
    fn other_versions_and_garbage_are_refused_by_name() {
        let e = Request::decode("{\"v\":2,\"request\":\"reload\"}").unwrap_err();
        assert!(e.contains("protocol version 2") && e.contains("speaks 1"), "{e}");
        assert!(Request::decode("reload").unwrap_err().contains("not a JSON object"));
        assert!(Request::decode("{\"request\":\"reload\"}").unwrap_err().contains("no protocol version"));
        assert!(Request::decode("{\"v\":1,\"request\":\"reboot\"}").unwrap_err().contains("reboot"));
        assert!(Request::decode("{\"v\":1,\"request\":\"drain\",\"vip\":\"web\"}").is_err(), "a drain without its backend");
        match Answer::decode("okay") {
            Answer::Error { reasons } => assert!(reasons.contains("okay"), "{reasons}"),
            other => panic!("garbage read as {other:?}"),
        }
    }
}

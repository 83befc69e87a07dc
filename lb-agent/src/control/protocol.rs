//! The control socket's protocol, shared by the agent's server and the
//! `lb-agent reload`/`maintenance` client. The client sends one request
//! line; the agent answers [`ACCEPTED`] at once (its control task is alive
//! and took the request), then, once the main loop has handled it, one
//! [`Answer`] (`ok SUMMARY` or `error: REASONS`, possibly several lines),
//! and closes the connection. An answer without [`ACCEPTED`] first is a
//! refusal made before the request was taken (unknown request, busy).

/// What a client may ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Re-read the config and apply it in place.
    Reload,
    /// Withdraw the routes, wait for traffic to drain, then stop.
    Maintenance,
}

impl Request {
    pub const ALL: [Request; 2] = [Request::Reload, Request::Maintenance];

    /// The request's line on the wire.
    pub fn word(self) -> &'static str {
        match self {
            Request::Reload => "reload",
            Request::Maintenance => "maintenance",
        }
    }

    pub fn parse(line: &str) -> Option<Request> {
        Request::ALL.into_iter().find(|r| r.word() == line.trim())
    }
}

/// The acknowledgement line: the request was taken and is being handled.
pub const ACCEPTED: &str = "accepted";
/// First word of a successful answer.
const OK: &str = "ok";
/// First word of a refusal.
const ERROR: &str = "error:";

/// The agent's answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Done; a one-line summary of what changed.
    Ok(String),
    /// Refused or failed; the reasons (the agent's state is unchanged unless they say otherwise).
    Error(String),
}

impl Answer {
    pub fn encode(&self) -> String {
        match self {
            Answer::Ok(summary) => format!("{OK} {summary}\n"),
            Answer::Error(reasons) => format!("{ERROR} {reasons}\n"),
        }
    }

    /// Reads an answer; text that is no `ok` answer counts as a refusal.
    pub fn decode(text: &str) -> Answer {
        let text = text.trim();
        match text.strip_prefix(OK) {
            Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => Answer::Ok(rest.trim().to_string()),
            _ => Answer::Error(text.strip_prefix(ERROR).unwrap_or(text).trim().to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip() {
        for r in Request::ALL {
            assert_eq!(Request::parse(&format!("{}\n", r.word())), Some(r));
        }
        assert_eq!(Request::parse("reboot"), None);
        for a in [Answer::Ok("1 VIP changed".into()), Answer::Ok(String::new()), Answer::Error("invalid config:\n  a\n  b".into())] {
            assert_eq!(Answer::decode(&a.encode()), a);
        }
        assert_eq!(Answer::decode("okay"), Answer::Error("okay".into()), "only the word ok is success");
        assert_eq!(Answer::decode(ACCEPTED), Answer::Error(ACCEPTED.into()));
    }
}

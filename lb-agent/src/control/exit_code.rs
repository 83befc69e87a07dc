//! `lb-agent`'s exit codes, defined once: `main` exits with them, `--help`
//! lists them ([`help`]) and scripts (`systemctl reload`) can tell apart
//! "nothing to talk to", "the agent hangs" and "the agent said no".

use std::fmt;

/// Why `lb-agent` failed; 0 is success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Anything not listed below.
    Failure = 1,
    /// Bad command line (clap's own code), or logging could not start.
    Usage = 2,
    /// The config file does not validate; nothing was sent to the agent.
    InvalidConfig = 3,
    /// No agent runs for the interface: no control socket, or nobody listens on it.
    NotRunning = 4,
    /// An agent is there but did not acknowledge the request within
    /// `--timeout` (stopped, hung or overloaded).
    NoAnswer = 5,
    /// The agent answered with a refusal (a config it cannot apply); it keeps running as before.
    Refused = 6,
    /// The agent acknowledged the request but gave no result in the
    /// documented time; it may still complete it (see its log).
    NoResult = 7,
    /// `lb-agent cluster status`: the hosts do not all run the latest document with one fingerprint.
    NotConverged = 8,
    /// `lb-agent cluster put`: the document changed since the base revision; nothing was written.
    Conflict = 9,
}

impl ExitCode {
    pub const ALL: [ExitCode; 9] = [
        ExitCode::Failure,
        ExitCode::Usage,
        ExitCode::InvalidConfig,
        ExitCode::NotRunning,
        ExitCode::NoAnswer,
        ExitCode::Refused,
        ExitCode::NoResult,
        ExitCode::NotConverged,
        ExitCode::Conflict,
    ];

    pub fn code(self) -> i32 {
        self as i32
    }

    fn meaning(self) -> &'static str {
        match self {
            ExitCode::Failure => "any other failure",
            ExitCode::Usage => "bad command line",
            ExitCode::InvalidConfig => "the config does not validate (nothing was sent to the agent)",
            ExitCode::NotRunning => "no agent runs for the interface (no control socket, or nobody listens on it)",
            ExitCode::NoAnswer => "the agent did not acknowledge within --timeout (stopped, hung or overloaded)",
            ExitCode::Refused => "the agent refused the request and keeps its current config",
            ExitCode::NoResult => "the agent acknowledged but gave no result in time (it may still finish; see its log)",
            ExitCode::NotConverged => "cluster status: the hosts do not all run the latest document with one fingerprint",
            ExitCode::Conflict => "cluster put: the document changed since the base revision (nothing was written)",
        }
    }
}

/// The exit code table for `--help`.
pub fn help() -> String {
    let mut out = String::from("Exit codes:\n  0  success\n");
    for code in ExitCode::ALL {
        out += &format!("  {}  {}\n", code.code(), code.meaning());
    }
    out
}

/// An error that ends `lb-agent` with a given exit code. Its message is
/// the wrapped error's, so it reads the same wherever it is reported.
#[derive(Debug)]
pub struct Coded {
    pub code: ExitCode,
    error: anyhow::Error,
}

impl fmt::Display for Coded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Coded {}

/// `error`, ending the program with `code`.
pub fn coded(code: ExitCode, error: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(Coded { code, error: error.into() })
}

/// The exit code `error` ends the program with: the innermost [`Coded`]'s,
/// else [`ExitCode::Failure`].
pub fn of(error: &anyhow::Error) -> ExitCode {
    error.chain().filter_map(|e| e.downcast_ref::<Coded>()).last().map_or(ExitCode::Failure, |c| c.code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn a_code_survives_added_context_and_the_message_is_kept() {
        let e = Err::<(), _>(coded(ExitCode::NoAnswer, anyhow::anyhow!("the agent did not answer")))
            .context("lb-agent reload")
            .unwrap_err();
        assert_eq!(of(&e), ExitCode::NoAnswer);
        assert_eq!(format!("{e:#}"), "lb-agent reload: the agent did not answer");
        assert_eq!(of(&anyhow::anyhow!("plain")), ExitCode::Failure);
    }

    #[test]
    fn codes_are_distinct_and_listed_in_the_help() {
        let help = help();
        let mut seen = std::collections::BTreeSet::new();
        for code in ExitCode::ALL {
            assert!(seen.insert(code.code()), "{code:?} reuses {}", code.code());
            assert!(help.contains(&format!("  {}  {}", code.code(), code.meaning())), "{code:?} missing from:\n{help}");
        }
    }

    #[test]
    fn the_readme_lists_every_code_as_defined_here() {
        let readme = include_str!("../../../README.md");
        for code in ExitCode::ALL {
            let row = format!("| {} | {} |", code.code(), code.meaning());
            assert!(readme.contains(&row), "README.md lacks the row {row:?} in its exit code table");
        }
    }
}

//! The `file: field: message` problem type every config section reports
//! with: the bottom of the agent's layers, importing nothing of its own.

use std::fmt;

/// One thing wrong with a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where: a path such as `lb.ring_size`, `vip "web".backend[2].address`
    /// or `vip[3].name`; for TOML errors `line 7, vip[1].port` (syntax errors:
    /// `line 7, column 3`). Empty when the problem is the file as a whole
    /// (e.g. it cannot be read).
    pub field: String,
    /// What, quoting the offending value.
    pub message: String,
}

/// Every problem found in one config file. `Display` prints one line per
/// problem: `{file}: {field}: {message}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or other origin) the text came from.
    pub origin: String,
    /// At least one problem, in the order found.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.field.is_empty() {
                write!(f, "{}: {}", self.origin, p.message)?;
            } else {
                write!(f, "{}: {}: {}", self.origin, p.field, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

//! Entry points: read a file or text, parse, validate.

use super::*;

/// Reads and validates the config at `path`. Errors name the path as given.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let fail = |problem: Problem| Err(ConfigError { origin: origin.clone(), problems: vec![problem] });
    match std::fs::read(path) {
        Ok(bytes) => match std::str::from_utf8(&bytes) {
            Ok(text) => parse(text, &origin),
            Err(e) => fail(not_utf8(&bytes, &e)),
        },
        Err(e) => fail(Problem { field: String::new(), message: format!("cannot read the file: {e}") }),
    }
}

/// Where a file stops being UTF-8 (TOML is UTF-8 only), so the operator can
/// find the byte: its line, and its offset in the line and in the file.
pub(super) fn not_utf8(bytes: &[u8], e: &std::str::Utf8Error) -> Problem {
    let at = e.valid_up_to();
    let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = bytes[..at].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let hex = |b: &[u8]| b.iter().map(|b| format!("0x{b:02x}")).collect::<Vec<_>>().join(" ");
    let what = match e.error_len() {
        Some(1) => format!("byte {} is not UTF-8", hex(&bytes[at..=at])),
        Some(n) => format!("bytes {} are not UTF-8", hex(&bytes[at..at + n])),
        None => format!("the file ends inside a character ({})", hex(&bytes[at..])),
    };
    Problem {
        field: format!("line {line}, byte {} of the line (offset {at} in the file)", at - line_start + 1),
        message: format!("{what}; a TOML file must be UTF-8: re-save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"),
    }
}

/// Parses and validates config text; `origin` (usually the file name) prefixes
/// every error line.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let raw = read_raw(text).map_err(|problems| ConfigError { origin: origin.to_string(), problems })?;
    let mut v = Validator::default();
    let config = v.config(raw);
    if let Ok(table) = text.parse::<toml::Table>() {
        v.problems.extend(compose::local_placement(&table));
    }
    match config {
        Some(c) if v.problems.is_empty() => Ok(c),
        _ => Err(ConfigError { origin: origin.to_string(), problems: v.problems }),
    }
}

//! Reading TOML text into the raw shapes, every error a [`Problem`]: toml's
//! own spans give the line (and column), serde_path_to_error the field path
//! with array indices (`vip[1].backend[0].weight`).
//!
//! Errors come in two phases, each reported whole. Syntax: toml's parser
//! recovers and lists every error (`line 3, column 13`). Structure (unknown
//! fields, wrong types): serde stops at the first, so the value it names is
//! removed from the parsed document and the rest is read again, until it
//! reads cleanly. Validation only runs after both, because a value serde
//! could not read would look absent to it, and be reported as missing.

use serde_path_to_error::Segment;
use toml::de::{DeTable, DeValue};

use super::*;

/// Structure errors reported at most: each costs a pass over the document,
/// and a file with more is better fixed from the top.
pub(super) const MAX_STRUCTURE_PROBLEMS: usize = 50;

/// The raw config in `text`, or every syntax error, or else every
/// structure error (up to [`MAX_STRUCTURE_PROBLEMS`]), in file order.
pub(super) fn read_raw(text: &str) -> Result<RawConfig, Vec<Problem>> {
    let (mut doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        return Err(in_file_order(syntax.iter().map(|e| syntax_problem(text, e))));
    }
    let mut structure = Vec::new();
    // Bounded: every pass that fails removes at least one key from `doc`.
    let cut_short = loop {
        let failed = match serde_path_to_error::deserialize(toml::de::Deserializer::from(doc.clone())) {
            Ok(raw) if structure.is_empty() => return Ok(raw),
            Ok(_) => break false,
            Err(e) => e,
        };
        if structure.len() == MAX_STRUCTURE_PROBLEMS {
            break true;
        }
        let segments: Vec<&Segment> = failed.path().iter().collect();
        structure.push(structure_problem(text, failed.path(), failed.inner()));
        if !remove(doc.get_mut(), &segments) {
            break false;
        }
    };
    let mut problems = in_file_order(structure.into_iter());
    if cut_short {
        let message = format!("more unknown fields or wrong types follow the first {MAX_STRUCTURE_PROBLEMS}; fix these and check again");
        problems.push(Problem { field: String::new(), message });
    }
    Err(problems)
}

/// Problems sorted by where they are (line, then column), each keeping
/// the order found among equals.
fn in_file_order(problems: impl Iterator<Item = (usize, Problem)>) -> Vec<Problem> {
    let mut problems: Vec<_> = problems.collect();
    problems.sort_by_key(|(at, _)| *at);
    problems.into_iter().map(|(_, p)| p).collect()
}

/// `line L, column C` and toml's message, with the byte offset to sort by.
pub(super) fn syntax_problem(text: &str, err: &toml::de::Error) -> (usize, Problem) {
    let message = err.message().trim().to_string();
    match err.span() {
        Some(span) => {
            let (at, line, column) = line_and_column(text, span.start);
            (at, Problem { field: format!("line {line}, column {column}"), message })
        }
        None => (usize::MAX, Problem { field: String::new(), message }),
    }
}

/// `line L, path` (the path with array indices) and serde's message, with the
/// byte offset to sort by.
fn structure_problem(text: &str, path: &serde_path_to_error::Path, err: &toml::de::Error) -> (usize, Problem) {
    // Rust type names mean nothing to an operator.
    let message = err.message().trim().replace("expected i64", "expected an integer");
    let path = match path.iter().next() {
        None => String::from("(top level)"),
        Some(_) => path.to_string(),
    };
    match err.span() {
        Some(span) => {
            let (at, line, _) = line_and_column(text, span.start);
            (at, Problem { field: format!("line {line}, {path}"), message })
        }
        None => (usize::MAX, Problem { field: path, message }),
    }
}

/// The char boundary at or before `offset`, and its line and column (both
/// from 1; the column counts characters, as editors do).
fn line_and_column(text: &str, offset: usize) -> (usize, usize, usize) {
    let at = text.floor_char_boundary(offset);
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[..at].matches('\n').count() + 1;
    (at, line, text[line_start..at].chars().count() + 1)
}

/// Removes the key at the end of `path` from `table`; when the path cannot
/// be followed to its end (it ends at an array element, or in a value of
/// another shape), the deepest key on it that can. False if none can.
fn remove(table: &mut DeTable<'_>, path: &[&Segment]) -> bool {
    let [Segment::Map { key }, rest @ ..] = path else { return false };
    let key = key.as_str();
    let removed_inside = !rest.is_empty() && table.get_mut(key).is_some_and(|value| remove_inside(value.get_mut(), rest));
    removed_inside || table.remove(key).is_some()
}

fn remove_inside(value: &mut DeValue<'_>, path: &[&Segment]) -> bool {
    match (value, path) {
        (DeValue::Table(table), _) => remove(table, path),
        (DeValue::Array(array), [Segment::Seq { index }, rest @ ..]) if !rest.is_empty() => {
            array.get_mut(*index).is_some_and(|element| remove_inside(element.get_mut(), rest))
        }
        _ => false,
    }
}

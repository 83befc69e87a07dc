//! A TOML syntax or type error as a [`Problem`]: its line and field path.

use super::*;

pub(super) fn toml_problem(text: &str, err: &toml::de::Error) -> Problem {
    let message = err.message().trim().replace("expected i64", "expected an integer");
    let Some(span) = err.span() else {
        return Problem { field: String::new(), message };
    };
    let start = floor_char_boundary(text, span.start.min(text.len()));
    let end = floor_char_boundary(text, span.end.clamp(start, text.len()));
    let line_no = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = &text[line_start..line_end];

    let trimmed = line.trim();
    let where_ = if trimmed.starts_with('[') {
        // The error is about a table header itself (e.g. an unknown table).
        trimmed.split('#').next().unwrap_or(trimmed).trim().to_string()
    } else {
        let table = table_path(&text[..line_start]);
        let col = start - line_start;
        let key = match line.find('=') {
            // The span is on the key (e.g. an unknown field).
            Some(eq) if col < eq => text[start..end].trim().trim_matches(['"', '\'']).to_string(),
            // The span is on the value: the key is left of '='.
            Some(eq) => line[..eq].trim().trim_matches(['"', '\'']).to_string(),
            None => String::new(),
        };
        match (table.is_empty(), key.is_empty()) {
            (_, true) if table.is_empty() => String::from("(top level)"),
            (_, true) => table,
            (true, false) => key,
            (false, false) => format!("{table}.{key}"),
        }
    };
    Problem { field: format!("line {line_no}, {where_}"), message }
}

pub(super) fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The table the last header before `before` opened, with array indices for
/// our arrays of tables: `lb`, `vip[1]`, `vip[1].backend[0]`.
pub(super) fn table_path(before: &str) -> String {
    let mut path = String::new();
    let mut vip: Option<usize> = None;
    let mut backend: Option<usize> = None;
    for line in before.lines() {
        let l = line.split('#').next().unwrap_or("").trim();
        if let Some(inner) = l.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            let inner: String = inner.chars().filter(|c| !c.is_whitespace()).collect();
            match inner.as_str() {
                "vip" => {
                    vip = Some(vip.map_or(0, |v| v + 1));
                    backend = None;
                    path = format!("vip[{}]", vip.unwrap_or(0));
                }
                "vip.backend" => {
                    backend = Some(backend.map_or(0, |b| b + 1));
                    path = format!("vip[{}].backend[{}]", vip.unwrap_or(0), backend.unwrap_or(0));
                }
                other => path = other.to_string(),
            }
        } else if let Some(inner) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            path = inner.trim().to_string();
        }
    }
    path
}

//! lb-ebpf's modules form layers (listed in `lb-ebpf/src/main.rs` as
//! `//! - L<n> ...` lines naming modules in backticks); every `crate::`
//! import must point to a lower layer, which also rules out cycles.

use std::{collections::BTreeMap, path::Path};

use anyhow::{bail, Context as _, Result};

pub fn check(src: &Path) -> Result<()> {
    let main = std::fs::read_to_string(src.join("main.rs")).context("reading lb-ebpf/src/main.rs")?;
    let layers = declared_layers(&main);
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(src).with_context(|| format!("listing {}", src.display()))? {
        let path = entry?.path();
        let Some(module) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else { continue };
        if path.extension().is_none_or(|e| e != "rs") || module == "lib" {
            continue;
        }
        let Some(&own) = layers.get(&module) else {
            problems.push(format!("{module}.rs is in no layer of main.rs's list"));
            continue;
        };
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        for import in crate_imports(&text) {
            match layers.get(&import) {
                Some(&theirs) if theirs < own => {}
                Some(&theirs) => problems.push(format!("{module} (L{own}) imports {import} (L{theirs}): not a lower layer")),
                None => problems.push(format!("{module} imports {import}, which is in no layer")),
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "lb-ebpf's modules break their layers:\n  {}\nmove the shared code down a layer, or fix the list in lb-ebpf/src/main.rs",
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// Module name -> layer number, from the `//! - L<n>` lines and their continuations.
fn declared_layers(main: &str) -> BTreeMap<String, u32> {
    let mut layers = BTreeMap::new();
    let mut current = None;
    for line in main.lines().filter_map(|l| l.strip_prefix("//!")) {
        if let Some(rest) = line.trim_start().strip_prefix("- L") {
            current = rest.split_whitespace().next().and_then(|n| n.parse::<u32>().ok());
        } else if !line.starts_with("   ") {
            current = None;
        }
        if let Some(layer) = current {
            for name in line.split('`').skip(1).step_by(2) {
                layers.entry(name.to_owned()).or_insert(layer);
            }
        }
    }
    let top = layers.values().copied().max().unwrap_or(0) + 1;
    layers.entry("main".to_owned()).or_insert(top);
    layers
}

/// The first path segment of every `crate::` path (in `use crate::{a::b, c}`
/// blocks and inline), comments left out.
fn crate_imports(text: &str) -> Vec<String> {
    let code: String = text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let mut found = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group: skip nested braces.
            let (mut depth, mut item, mut end) = (0, String::new(), group.len());
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        end = i;
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => found.push(std::mem::take(&mut item)),
                    _ if depth == 0 => item.push(c),
                    _ => {}
                }
            }
            found.push(item);
            rest = &group[end..];
        } else {
            found.push(rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
        }
    }
    let mut names: Vec<String> = found
        .iter()
        .map(|item| item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>())
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_the_first_segments_of_crate_paths() {
        let text = "use crate::{\n    a::{b, c},\n    d as _, // crate::commented\n    e::f,\n};\nfn x() { crate::g::h(); }\n";
        assert_eq!(crate_imports(text), ["a", "d", "e", "g"]);
    }

    #[test]
    fn layers_come_from_the_list_and_main_tops_it() {
        let main = "//! - L1 `top`, `also`\n//!   `wrapped` (a note)\n//! - L0 `bottom`\n//! `not_listed`\n#![no_std]\n";
        let layers = declared_layers(main);
        assert_eq!(layers["top"], 1);
        assert_eq!(layers["wrapped"], 1);
        assert_eq!(layers["bottom"], 0);
        assert_eq!(layers["main"], 2);
        assert!(!layers.contains_key("not_listed"));
    }
}

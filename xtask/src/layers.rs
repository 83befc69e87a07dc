//! The crates' modules form layers, each listed in a doc comment (lb-ebpf's
//! in `lb-ebpf/src/main.rs`, lb-agent's in `lb-agent/src/lib.rs`) as
//! `//! - L<n> ...` lines naming modules in backticks. Every `crate::` import
//! of a module (a file `x.rs`, or a folder `x/` with all its files) must
//! point to a lower layer; lb-agent also allows imports within a layer as
//! long as they form no cycle. Test code (`#[cfg(test)]` items and files)
//! and comments (so doc links) do not count.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

/// Whether a module may import another module of its own layer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SameLayer {
    Forbidden,
    /// Allowed while the imports within the layer form no cycle.
    Acyclic,
}

/// One crate to check: its source folder (relative to the workspace), the
/// file holding the layer list (relative to that folder) and the rule for
/// imports within a layer.
#[derive(Clone, Copy)]
pub struct Crate {
    pub name: &'static str,
    pub src: &'static str,
    pub list: &'static str,
    pub same_layer: SameLayer,
}

/// Checks `krate`, whose `src` is relative to `root`.
pub fn check(root: &Path, krate: &Crate) -> Result<()> {
    let src = root.join(krate.src);
    let list_path = src.join(krate.list);
    let list = std::fs::read_to_string(&list_path).with_context(|| format!("reading {}", list_path.display()))?;
    let layers = declared_layers(&list);
    let mut problems = Vec::new();
    let mut sideways: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, files) in modules(&src)? {
        let Some(&own) = layers.get(&module) else {
            problems.push(format!("{module} is in no layer of {}'s list", krate.list));
            continue;
        };
        for file in files {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let shown = file.strip_prefix(&src).unwrap_or(&file).display().to_string();
            for import in crate_imports(&without_test_items(&text)) {
                if import == module {
                    continue;
                }
                match layers.get(&import) {
                    Some(&theirs) if theirs < own => {}
                    Some(&theirs) if theirs == own && krate.same_layer == SameLayer::Acyclic => {
                        sideways.entry(module.clone()).or_default().insert(import);
                    }
                    Some(&theirs) => {
                        problems.push(format!("{module} (L{own}) imports {import} (L{theirs}) in {shown}: not a lower layer"))
                    }
                    None => problems.push(format!("{module} imports {import} in {shown}, which is in no layer")),
                }
            }
        }
    }
    problems.extend(cycles(&sideways).into_iter().map(|c| format!("imports within a layer form a cycle: {}", c.join(" -> "))));
    if !problems.is_empty() {
        bail!(
            "{}'s modules break their layers:\n  {}\nmove the shared code down a layer, or fix the list in {}",
            krate.name,
            problems.join("\n  "),
            list_path.display()
        );
    }
    Ok(())
}

/// Module name -> the files that make it: `x.rs` plus everything under
/// `x/`, less files declared `#[cfg(test)]`. The crate roots and `src/bin`
/// are entry points, not modules.
fn modules(src: &Path) -> Result<BTreeMap<String, Vec<PathBuf>>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).with_context(|| format!("listing {}", src.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else { continue };
        if path.is_dir() {
            if name != "bin" {
                let files = out.entry(name).or_default();
                rust_files(&path, files)?;
            }
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            out.entry(name).or_default().push(path);
        }
    }
    let mut test_only = BTreeSet::new();
    for files in out.values() {
        for file in files {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            for child in test_modules(&text) {
                let dir = match file.file_stem().and_then(|s| s.to_str()) {
                    Some("mod") => file.with_file_name(""),
                    _ => file.with_extension(""),
                };
                test_only.insert(dir.join(format!("{child}.rs")));
                test_only.insert(dir.join(&child));
            }
        }
    }
    for files in out.values_mut() {
        files.retain(|f| !test_only.iter().any(|t| f.starts_with(t)));
        files.sort();
    }
    Ok(out)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Names of the `#[cfg(test)] mod name;` declarations of a file.
fn test_modules(text: &str) -> Vec<String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut out = Vec::new();
    while let Some(line) = lines.next() {
        if line != "#[cfg(test)]" {
            continue;
        }
        let Some(next) = lines.next() else { break };
        let next = next.strip_prefix("pub(crate) ").or_else(|| next.strip_prefix("pub ")).unwrap_or(next);
        if let Some(name) = next.strip_prefix("mod ").and_then(|n| n.strip_suffix(';')) {
            out.push(name.trim().to_owned());
        }
    }
    out
}

/// `text` without the items marked `#[cfg(test)]` (up to their `;`, or
/// their braces' end).
fn without_test_items(text: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at]);
        let item = &rest[at + MARK.len()..];
        let (brace, semi) = (item.find('{'), item.find(';'));
        let end = match (brace, semi) {
            (Some(b), Some(s)) if s < b => s + 1,
            (None, Some(s)) => s + 1,
            (Some(b), _) => {
                let mut depth = 0usize;
                let mut end = item.len();
                for (i, c) in item[b..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (None, None) => item.len(),
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// Every cycle of `edges`, each once, as `a -> b -> a`.
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    fn visit<'a>(
        node: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        found: &mut BTreeSet<Vec<String>>,
    ) {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = path[at..].iter().map(|s| s.to_string()).collect();
            // One rotation per cycle: start at its smallest name.
            let start = (0..cycle.len()).min_by_key(|&i| &cycle[i]).unwrap_or(0);
            cycle.rotate_left(start);
            cycle.push(cycle[0].clone());
            found.insert(cycle);
            return;
        }
        if done.contains(node) {
            return;
        }
        path.push(node);
        for next in edges.get(node).into_iter().flatten() {
            visit(next, edges, path, done, found);
        }
        path.pop();
        done.insert(node);
    }
    let mut found = BTreeSet::new();
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        visit(node, edges, &mut Vec::new(), &mut done, &mut found);
    }
    found.into_iter().collect()
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

    #[test]
    fn test_items_and_doc_links_do_not_count() {
        let text = "use crate::a;\n/// See [`crate::b`].\n#[cfg(test)]\nuse crate::c;\nfn f() {}\n#[cfg(test)]\nmod tests {\n    use crate::d;\n    fn g() { if x { crate::e::h() } }\n}\nfn i() { crate::f::j(); }\n";
        assert_eq!(crate_imports(&without_test_items(text)), ["a", "f"]);
        assert_eq!(test_modules("#[cfg(test)]\npub mod memory;\n#[cfg(test)]\nmod tests;\nmod live;\n"), ["memory", "tests"]);
    }

    #[test]
    fn cycles_are_found_once_each() {
        let edges: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e"), ("e", "d")]
            .into_iter()
            .fold(BTreeMap::new(), |mut m, (from, to)| {
                m.entry(from.to_owned()).or_insert_with(BTreeSet::new).insert(to.to_owned());
                m
            });
        assert_eq!(cycles(&edges), [vec!["a", "b", "c", "a"], vec!["d", "e", "d"]]);
        assert!(cycles(&BTreeMap::from([("a".to_owned(), BTreeSet::from(["b".to_owned()]))])).is_empty());
    }

    /// The real crates, as `cargo xtask test` checks them: a failure here is
    /// an import that breaks a layer (the message names it).
    #[test]
    fn the_workspace_keeps_its_layers() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        for krate in &crate::LAYERED {
            check(root, krate).unwrap();
        }
    }

    /// A module importing one above it, and two of a layer importing each
    /// other, fail the check.
    #[test]
    fn upward_and_cyclic_imports_fail() {
        let dir = std::env::temp_dir().join(format!("lb-xtask-layers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("src/mid")).unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.join("src").join(name), text).unwrap();
        write("lib.rs", "//! - L2 `top`\n//! - L1 `mid`, `side`\n//! - L0 `low`\n");
        write("top.rs", "use crate::mid;\n");
        write("mid/mod.rs", "use crate::{low, side};\n#[cfg(test)]\nmod tests;\n");
        write("mid/tests.rs", "use crate::top;\n");
        write("side.rs", "use crate::low;\n");
        write("low.rs", "/// [`crate::top`]\nfn f() {}\n");
        let krate = Crate { name: "t", src: "src", list: "lib.rs", same_layer: SameLayer::Acyclic };
        let fine = check(&dir, &krate);
        let strict = check(&dir, &Crate { same_layer: SameLayer::Forbidden, ..krate }).map_err(|e| e.to_string());
        write("low.rs", "use crate::top;\n");
        write("side.rs", "use crate::{low, mid};\n");
        let err = check(&dir, &krate).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        fine.unwrap();
        assert!(strict.unwrap_err().contains("mid (L1) imports side (L1) in mid/mod.rs: not a lower layer"));
        assert!(err.contains("low (L0) imports top (L2) in low.rs"), "{err}");
        assert!(err.contains("a cycle: mid -> side -> mid"), "{err}");
    }
}

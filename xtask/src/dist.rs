//! `cargo xtask dist`: the Debian package, built by cargo-deb from
//! `[package.metadata.deb]` in lb-agent/Cargo.toml.
//!
//! Steps: build lb-agent (which embeds the BPF object) with the chosen
//! profile, let that binary write its shell completions and man pages
//! (`lb-agent generate`) into `packaging/` beside it, where the package
//! metadata's `target/release/packaging/...` assets find them, then
//! `cargo deb --no-build`. The tests package a dev build through the same
//! steps (a release build of lb-agent and its BPF object takes minutes).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{run, step, target_dir};

/// The completion files the package metadata lists, by shell.
const COMPLETIONS: [(&str, &str); 3] = [("bash", "lb-agent.bash"), ("zsh", "_lb-agent"), ("fish", "lb-agent.fish")];

/// Builds the package with `profile` (a cargo profile: release, dev, ...)
/// into `target/dist/` (another profile's: `target/dist/PROFILE/`, so a test
/// package never replaces a release one of the same name) and returns the
/// path of the `.deb`.
pub fn package(profile: &str) -> Result<PathBuf> {
    step(&format!("building lb-agent ({profile} profile) for the Debian package"));
    run(Command::new("cargo").args(["build", "-p", "lb-agent", "--bin", "lb-agent", "--profile", profile]))?;
    let products = target_dir().join(profile_dir(profile));
    generate_docs(&products.join("lb-agent"), &products.join("packaging"))?;

    step("packaging with cargo-deb");
    let out = match profile {
        "release" => target_dir().join("dist"),
        other => target_dir().join("dist").join(other),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut deb = Command::new("cargo");
    deb.args(["deb", "-p", "lb-agent", "--no-build", "--profile", profile, "--output"]).arg(&out);
    if profile != "release" {
        // A test package: compressing 40 MB well takes longer than the test.
        deb.arg("--fast");
    }
    let output = deb.output().with_context(|| format!("starting {deb:?} (`cargo xtask setup` installs cargo-deb)"))?;
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        bail!("{deb:?} failed ({}): see its messages above", output.status);
    }
    // cargo-deb prints the package's path on stdout, last.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = stdout.lines().last().map(PathBuf::from).filter(|p| p.extension().is_some_and(|e| e == "deb") && p.is_file());
    let path = path.with_context(|| format!("cargo-deb succeeded but printed no .deb path: {stdout:?}"))?;
    println!("{}", path.display());
    Ok(path)
}

/// Cargo's folder for a profile's build products.
fn profile_dir(profile: &str) -> &str {
    match profile {
        "dev" | "test" => "debug",
        "bench" => "release",
        other => other,
    }
}

/// Completions and man pages from `agent`'s own CLI, into a fresh `dir`
/// (no page of a removed command is left behind).
fn generate_docs(agent: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing the old {}", dir.display()))?;
    }
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions).with_context(|| format!("creating {}", completions.display()))?;
    for (shell, file) in COMPLETIONS {
        let text = generate(agent, &["completions", shell])?;
        std::fs::write(completions.join(file), text).with_context(|| format!("writing {}", completions.join(file).display()))?;
    }
    let man = dir.join("man");
    let date = man_date()?;
    let pages = generate(agent, &["man".as_ref(), man.as_os_str(), "--date".as_ref(), date.as_ref()])?;
    let pages: Vec<&str> = std::str::from_utf8(&pages)?.lines().collect();
    // Compressed as Debian policy asks (cargo-deb gzips only pages it did not see built); -n: no name or time inside.
    run(Command::new("gzip").args(["-9", "-n", "-f"]).args(&pages))?;
    eprintln!("{} man pages, completions for bash, zsh and fish in {}", pages.len(), dir.display());
    Ok(())
}

/// The man pages' date: SOURCE_DATE_EPOCH's (reproducible builds), else the
/// last commit's, else today's.
fn man_date() -> Result<String> {
    let mut candidates = Vec::new();
    if let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH") {
        candidates.push(Command::new("date").args(["-u", "+%F", "-d"]).arg(format!("@{epoch}")).output());
    }
    candidates.push(Command::new("git").args(["log", "-1", "--format=%cs"]).output());
    candidates.push(Command::new("date").args(["-u", "+%F"]).output());
    candidates
        .into_iter()
        .filter_map(|o| o.ok().filter(|o| o.status.success()))
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .find(|d| d.len() == "YYYY-MM-DD".len())
        .context("neither SOURCE_DATE_EPOCH, git nor date gave a date for the man pages")
}

fn generate<S: AsRef<std::ffi::OsStr>>(agent: &Path, args: &[S]) -> Result<Vec<u8>> {
    let mut cmd = Command::new(agent);
    cmd.arg("generate").args(args);
    let output = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !output.status.success() {
        bail!("{cmd:?} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    Ok(output.stdout)
}

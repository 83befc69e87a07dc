//! Bootstrap: everything a fresh machine lacks, installed idempotently and
//! quickly skipped when present.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::{run, step, workspace_root};

/// Debian packages the tests and the demo use, with the command that shows
/// each is present.
/// `prometheus` brings `promtool`, which checks the agent's metrics and the
/// alert rules in `contrib/` (about 20 MB, 20 s; its server is not started).
/// `bird2`: the routing daemon of the HA tests and of `contrib/bird`.
/// `protobuf-compiler` and `libprotobuf-dev` (its well-known types): the
/// etcd client crate compiles etcd's API from its .proto files.
/// `etcd-server`: the cluster config source the fleet tests start.
/// `systemd` (systemd-analyze) and `strace`: the checks of the shipped unit
/// (verify, security, and its system call filter against a traced agent).
/// `chromium`: the headless browser that loads the status page in its test
/// (about 300 MB with its libraries; no npm tool is needed).
/// `man-db`: the package test looks up and renders the man pages it installs.
/// `openssl`: certificates for the etcd TLS test.
/// A check that starts with `/` is a file that must exist, else a command.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("ethtool", "ethtool"),
    ("prometheus", "promtool"),
    ("bird2", "bird"),
    ("protobuf-compiler", "protoc"),
    ("libprotobuf-dev", "/usr/include/google/protobuf/descriptor.proto"),
    ("etcd-server", "etcd"),
    ("etcd-client", "etcdctl"),
    ("systemd", "systemd-analyze"),
    ("strace", "strace"),
    ("chromium", "chromium"),
    ("man-db", "man"),
    ("openssl", "openssl"),
];

/// Python tools from PyPI, with the command that shows each is present:
/// `ansible-core` runs the Ansible role in `contrib/ansible` in the tests.
const PIP_PACKAGES: &[(&str, &str)] = &[("ansible-core>=2.17,<2.20", "ansible-playbook")];

pub fn all() -> Result<()> {
    apt_packages()?;
    pip_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    cargo_deb()
}


fn have(check: &str) -> bool {
    if check.starts_with('/') {
        return std::path::Path::new(check).exists();
    }
    Command::new("sh").args(["-c", &format!("command -v {check} >/dev/null 2>&1")]).status().is_ok_and(|s| s.success())
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES.iter().filter(|(_, cmd)| !have(cmd)).map(|(pkg, _)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!("installing Debian packages: {}", missing.join(" ")));
    if !have("apt-get") {
        bail!("missing {}; install them with your package manager", missing.join(", "));
    }
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get").args(["install", "-y", "-q", "--no-install-recommends"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive"))
}

fn pip_packages() -> Result<()> {
    let missing: Vec<&str> = PIP_PACKAGES.iter().filter(|(_, cmd)| !have(cmd)).map(|(pkg, _)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!("installing Python packages: {}", missing.join(" ")));
    if !have("python3") {
        bail!("missing {}; install python3 (3.11 or later) and then `python3 -m pip install {}`", missing.join(", "), missing.join(" "));
    }
    run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]).args(&missing))?;
    // pyenv installs console scripts behind shims that need a rehash.
    if have("pyenv") {
        let _ = Command::new("pyenv").arg("rehash").status();
    }
    Ok(())
}

fn nightly_rust_src() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("running rustup (is rustup installed?)")?;
    if !installed.status.success() {
        bail!("no nightly toolchain: the BPF object needs `rustup toolchain install nightly --component rust-src`");
    }
    if String::from_utf8_lossy(&installed.stdout).lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    step("adding rust-src to the nightly toolchain (the BPF target builds core from source)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// bpf-linker must use the same LLVM as nightly rustc: we link it against
/// nightly's own libLLVM, so no system LLVM is needed.
fn bpf_linker() -> Result<()> {
    if Command::new("bpf-linker").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    let sysroot = String::from_utf8(
        Command::new("rustc").args(["+nightly", "--print", "sysroot"]).output().context("rustc +nightly")?.stdout,
    )?;
    let lib_dir = std::path::Path::new(sysroot.trim()).join("lib");
    let version = String::from_utf8(Command::new("rustc").args(["+nightly", "-vV"]).output()?.stdout)?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV does not name its LLVM version")?
        .to_string();
    let libllvm = std::fs::read_dir(&lib_dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("libLLVM.so.{major}"))))
        .with_context(|| format!("no libLLVM.so.{major}* in {}", lib_dir.display()))?;
    let prefix = workspace_root().join("target/llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)?;
    step(&format!("installing bpf-linker against nightly's LLVM {major} (about a minute)"));
    run(Command::new("cargo")
        .args(["+nightly", "install", "bpf-linker", "--locked", "--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix)
        .env("RUSTFLAGS", format!("-C link-arg=-Wl,-rpath,{}", lib_dir.display())))
}

/// The Debian package's builder (`cargo xtask dist`), pinned: 3.8.0 builds
/// with rustc 1.95 (its MSRV is 1.85), and `--locked` keeps its own
/// dependencies at the versions it was released with.
const CARGO_DEB_VERSION: &str = "3.8.0";

fn cargo_deb() -> Result<()> {
    let installed = Command::new("cargo").args(["deb", "--version"]).output();
    if installed.is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == format!("cargo-deb {CARGO_DEB_VERSION}")) {
        return Ok(());
    }
    step(&format!("installing cargo-deb {CARGO_DEB_VERSION} (builds the Debian package; a few minutes, once)"));
    run(Command::new("cargo").args(["install", "cargo-deb", "--locked", "--version", CARGO_DEB_VERSION]))
}

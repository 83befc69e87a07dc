//! `cargo xtask`: the project's entry points. Every command bootstraps what it
//! needs first (see `setup`), so a fresh machine needs only the repository.

mod dist;
mod layers;
mod setup;


use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, test and demo the XDP Maglev load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install prerequisites: nightly rust-src, bpf-linker (against nightly's LLVM), apt packages.
    Setup,
    /// Build the BPF object, lb-agent and the test binaries.
    Build,
    /// Run every test: unit tests, packet fixtures (BPF_PROG_TEST_RUN) and namespace end-to-end tests. Needs root.
    Test {
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Benchmarks: per-packet cost of every path against floors, Maglev ring builds, the agent's
    /// reloads and memory, end-to-end forwarding in namespaces. Needs root.
    Bench {
        /// Extra arguments for lb-bench (`--runs N`, `--json PATH`,
        /// `--only per_packet|rings|agent|forwarding`, `--forward-seconds S`).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Build the Debian package (cargo-deb) into target/dist/ and print its path.
    Dist {
        /// Cargo profile of lb-agent: `release`, or `dev` for a quick test package.
        #[arg(long, default_value = "release")]
        profile: String,
    },
    /// Build a client, an LB and three backends in network namespaces and send traffic through the LB. Needs root.
    Demo {
        /// The HA demo instead: two LB hosts with BIRD behind a BGP/BFD router, one crashes live,
        /// then a backend fails its health check (lb-demo-ha).
        #[arg(long)]
        ha: bool,
        /// Extra arguments for lb-demo or lb-demo-ha (see `--help` after `--`).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.command {
        Cmd::Setup => setup::all(),
        Cmd::Build => {
            setup::all()?;
            build()
        }
        Cmd::Test { args } => {
            require_root("the tests load BPF programs and create network namespaces")?;
            setup::all()?;
            build()?;
            lint()?;
            // A dev build, packaged exactly as a release: tests/tests/package.rs installs it.
            let deb = dist::package("dev")?;
            test(&args, &deb)
        }
        Cmd::Dist { profile } => {
            setup::all()?;
            dist::package(&profile).map(drop)
        }
        Cmd::Bench { args } => {
            require_root("the benchmarks load BPF programs")?;
            setup::all()?;
            step("building lb-bench (release)");
            run(Command::new("cargo").args(["build", "--release", "-p", "lb-tests", "--bin", "lb-bench", "-p", "lb-agent", "--bin", "lb-agent"]))?;
            step("benchmarking");
            run(Command::new(target_dir().join("release/lb-bench"))
                .args(&args)
                .env("LB_AGENT_BIN", target_dir().join("release/lb-agent")))
        }
        Cmd::Demo { ha, args } => {
            require_root("the demo loads BPF programs and creates network namespaces")?;
            setup::all()?;
            build()?;
            step(if ha { "running the HA demo" } else { "running the demo" });
            let demo = debug_dir().join(if ha { "lb-demo-ha" } else { "lb-demo" });
            let status = Command::new(&demo)
                .args(&args)
                .env("LB_AGENT_BIN", debug_dir().join("lb-agent"))
                .status()
                .with_context(|| format!("starting {}", demo.display()))?;
            if !status.success() {
                bail!("the demo failed ({status})");
            }
            Ok(())
        }
    }
}

/// The crates whose modules must keep their declared layers (see layers.rs).
const LAYERED: [layers::Crate; 2] = [
    layers::Crate { name: "lb-ebpf", src: "lb-ebpf/src", list: "main.rs", same_layer: layers::SameLayer::Forbidden },
    layers::Crate { name: "lb-agent", src: "lb-agent/src", list: "lib.rs", same_layer: layers::SameLayer::Acyclic },
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Cargo's target directory (honours CARGO_TARGET_DIR).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

fn debug_dir() -> PathBuf {
    target_dir().join("debug")
}

pub fn step(what: &str) {
    eprintln!("\n==> {what}");
}

fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{why}: run as root, e.g. `sudo -E env PATH=$PATH cargo xtask ...`");
    }
    Ok(())
}

fn build() -> Result<()> {
    step("building the BPF object, lb-agent and the test binaries");
    run(Command::new("cargo").args(["build", "--bins"]))
}

/// Clippy with `-D warnings` on every crate, before any test runs: the
/// workspace lints (Cargo.toml) hold in CI. Host crates in `target/debug`,
/// right after the build: they reuse its build-script runs (the BPF object
/// is built once) and its proc macros, and the build after them has nothing
/// to redo. (Not `AYA_BUILD_SKIP`: lb-agent embeds the object, so it must
/// exist.) lb-ebpf on its BPF target, the way aya-build compiles it (nightly,
/// `build-std=core`), in `target/clippy`, away from the stable toolchain's files.
fn lint() -> Result<()> {
    step("lb-ebpf's and lb-agent's module layers, then clippy -D warnings: every crate, lb-ebpf on its BPF target");
    for krate in &LAYERED {
        layers::check(&workspace_root(), krate)?;
    }
    let started = Instant::now();
    let mut host = Command::new("cargo");
    host.args(["clippy", "--workspace", "--exclude", "lb-ebpf", "--all-targets", "--", "-D", "warnings"]);
    let mut bpf = Command::new("cargo");
    bpf.args(["+nightly", "clippy", "-p", "lb-ebpf", "--target", "bpfel-unknown-none", "-Z", "build-std=core", "--", "-D", "warnings"])
        .env("RUSTFLAGS", format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH))
        .env("CARGO_TARGET_DIR", target_dir().join("clippy"))
        // As aya-build does: the nightly toolchain's own rustc, not one inherited from `cargo xtask`.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    for cmd in [&mut host, &mut bpf] {
        let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
        if !status.success() {
            bail!(
                "clippy failed: fix the warnings or build errors above (every warning is an error here, as in CI; \
                 a build error such as a full disk shows there too), then run `cargo xtask test` again; the command was {cmd:?}"
            );
        }
    }
    eprintln!("clippy clean in {:.0?}", started.elapsed());
    Ok(())
}

/// Runs the unit tests in parallel, then the kernel-touching tests of
/// lb-tests one at a time, and prints one summary line for everything.
fn test(args: &[String], deb: &Path) -> Result<()> {
    let mut total = Totals { ok: true, ..Totals::default() };
    step("unit tests");
    let mut unit = Command::new("cargo");
    unit.args(["test", "--workspace", "--exclude", "lb-ebpf", "--exclude", "lb-tests", "--no-fail-fast", "--"]).args(args);
    total.add(run_counting(&mut unit)?);
    step("packet fixtures and end-to-end tests (one at a time: they share the kernel)");
    let mut kernel = Command::new("cargo");
    kernel
        .args(["test", "-p", "lb-tests", "--no-fail-fast", "--", "--test-threads=1"])
        .args(args)
        .env("LB_AGENT_BIN", debug_dir().join("lb-agent"))
        .env("LB_DEB", deb);
    total.add(run_counting(&mut kernel)?);
    println!();
    println!("all: {} passed, {} failed, {} skipped", total.passed, total.failed, total.ignored);
    if total.failed > 0 || !total.ok {
        bail!("tests failed");
    }
    Ok(())
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
    ok: bool,
}

impl Totals {
    fn add(&mut self, other: Totals) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
        self.ok &= other.ok;
    }
}

/// Streams a `cargo test` run and adds up its `test result:` lines.
fn run_counting(cmd: &mut Command) -> Result<Totals> {
    let mut child = cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("starting {cmd:?}"))?;
    let mut totals = Totals::default();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |key: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(key).map(|n| n.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ")))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            totals.passed += num("passed");
            totals.failed += num("failed");
            totals.ignored += num("ignored");
        }
    }
    let status = child.wait()?;
    totals.ok = status.success();
    Ok(totals)
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

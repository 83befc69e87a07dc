//! The Debian package of `cargo xtask dist` (issue 16), installed, used and
//! removed by dpkg in a scratch root: the host's own root file system seen
//! through an overlay whose writes land in a tmpfs, in a mount namespace of
//! the test's own. The package is new to that root (the test checks), dpkg
//! runs its maintainer scripts there, and nothing it writes reaches the host:
//! the tmpfs goes with the namespace. `cargo xtask test` packages a dev build
//! through the same steps as a release and names it in `LB_DEB`. Needs root.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
};

use lb_tests::{agent::workspace_root, topology};

/// The holder of the mount namespace ends by itself after this long, so a
/// test killed before its cleanup leaves nothing mounted for longer.
const HOLDER_SECONDS: &str = "300";
/// The files the package ships from contrib/, under /usr/share/doc/lb-agent/contrib/.
const CONTRIB_DOCS: [&str; 3] = ["bird", "prometheus", "grafana"];

#[test]
fn package_installs_runs_and_purges_cleanly() {
    if !topology::root_or_skip("package_installs_runs_and_purges_cleanly", "mount namespaces, overlayfs, dpkg") {
        return;
    }
    let deb = PathBuf::from(std::env::var_os("LB_DEB").filter(|p| !p.is_empty()).expect(
        "LB_DEB must name the package: `cargo xtask test` sets it, or run `cargo xtask dist --profile dev` and pass the path it prints",
    ));
    assert!(deb.is_file(), "LB_DEB={} is not a file", deb.display());
    let shipped = files_in_package(&deb);
    let host_before = host_dpkg_state();
    let root = ScratchRoot::new();

    assert!(
        root.has("usr/bin/dpkg") && root.has("var/lib/dpkg/status"),
        "the scratch root has no dpkg: /usr or /var is a file system of its own, which the overlay of / does not cover"
    );
    assert!(!root.has("usr/bin/lb-agent"), "the scratch root already has /usr/bin/lb-agent");
    assert!(!root.run(&["dpkg-query", "-W", "lb-agent"]).status.success(), "lb-agent is already known to the scratch root's dpkg");
    // Into the root's own /tmp: the target directory may be on a file system the overlay does not show.
    std::fs::copy(&deb, root.path("tmp/lb-agent.deb")).expect("copying the package into the scratch root");
    root.ok(&["dpkg", "-i", "/tmp/lb-agent.deb"]);
    for file in &shipped {
        assert!(root.has(file), "{file} is in the package but not installed");
    }

    // The binary, and `check` on the shipped example config.
    let version = root.ok(&["lb-agent", "--version"]);
    assert_eq!(version.trim(), format!("lb-agent {}", env!("CARGO_PKG_VERSION")));
    let example = workspace_root().join("examples/lb.toml");
    assert_eq!(read(&root.path("etc/lb/lb.toml")), read(&example), "/etc/lb/lb.toml is not examples/lb.toml");
    let conffiles = root.ok(&["dpkg-query", "-W", "-f", "${Conffiles}", "lb-agent"]);
    assert!(conffiles.contains("/etc/lb/lb.toml "), "/etc/lb/lb.toml is no conffile: {conffiles:?}");
    let check = root.ok(&["lb-agent", "check", "--config", "/etc/lb/lb.toml"]);
    assert!(check.lines().any(|l| l.starts_with("fingerprint ")), "`lb-agent check` printed no fingerprint:\n{check}");

    // A man page per command, found by man and rendered.
    let commands = commands_in_help(&root.ok(&["lb-agent", "--help"]));
    assert!(commands.len() >= 8, "lb-agent --help lists too few commands: {commands:?}");
    for page in std::iter::once("lb-agent".to_owned()).chain(commands.iter().map(|c| format!("lb-agent-{c}"))) {
        let found = root.ok(&["man", "-w", &page]);
        assert_eq!(found.trim(), format!("/usr/share/man/man1/{page}.1.gz"));
        let text = root.ok(&["man", "-P", "cat", &page]);
        assert!(text.contains("NAME") && text.contains("SYNOPSIS") && text.contains(&format!("{page}(1)")), "man {page}:\n{text}");
    }

    // Completions: bash completes a command; zsh and fish files name them.
    let bash = root.ok(&[
        "bash",
        "-c",
        "source /usr/share/bash-completion/completions/lb-agent; \
         f=$(complete -p lb-agent | sed -n 's/.* -F \\([^ ]*\\) .*/\\1/p'); \
         COMP_WORDS=(lb-agent ch); COMP_CWORD=1; \"$f\" lb-agent ch lb-agent; echo \"${COMPREPLY[@]}\"",
    ]);
    assert_eq!(bash.trim(), "check", "bash completion of `lb-agent ch`");
    for file in ["usr/share/zsh/vendor-completions/_lb-agent", "usr/share/fish/vendor_completions.d/lb-agent.fish"] {
        let text = read_text(&root.path(file));
        assert!(commands.iter().all(|c| text.contains(c.as_str())), "{file} misses some of {commands:?}");
    }

    // The unit, installed but neither enabled nor started (no systemd runs here either).
    let unit = workspace_root().join("contrib/systemd/lb-agent.service");
    assert_eq!(read(&root.path("usr/lib/systemd/system/lb-agent.service")), read(&unit));
    assert!(!root.has("etc/systemd/system/multi-user.target.wants/lb-agent.service"), "the unit was enabled");
    // Every program the unit runs is where the package put it.
    for line in read_text(&unit).lines().filter(|l| l.starts_with("Exec")) {
        let command = line.split_once('=').map_or("", |(_, c)| c).trim_start_matches(['-', '+', '!', '@', ':']);
        let program = command.split_whitespace().next().unwrap_or_default();
        assert!(root.has(program.trim_start_matches('/')), "the unit's {line:?} runs {program}, which the package does not install");
    }

    // contrib's BIRD, Prometheus and Grafana files, as docs.
    for dir in CONTRIB_DOCS {
        for entry in std::fs::read_dir(workspace_root().join("contrib").join(dir)).unwrap() {
            let source = entry.unwrap().path();
            if source.is_file() {
                let name = source.file_name().unwrap().to_str().unwrap();
                assert_eq!(read(&root.path(&format!("usr/share/doc/lb-agent/contrib/{dir}/{name}"))), read(&source));
            }
        }
    }

    // Removal keeps the edited config (a conffile); purge removes everything.
    root.ok(&["dpkg", "-r", "lb-agent"]);
    assert!(!root.has("usr/bin/lb-agent"), "dpkg -r left /usr/bin/lb-agent");
    assert!(root.has("etc/lb/lb.toml"), "dpkg -r removed the conffile /etc/lb/lb.toml");
    let status = root.ok(&["dpkg-query", "-W", "-f", "${Status}", "lb-agent"]);
    assert_eq!(status, "deinstall ok config-files");
    root.ok(&["dpkg", "--purge", "lb-agent"]);
    for file in &shipped {
        assert!(!root.has(file), "{file} is left after purge");
    }
    // (man-db's cache of the pages this test rendered is man's, not the package's.)
    let left: Vec<String> = root
        .written()
        .into_iter()
        .filter(|p| (p.contains("lb-agent") || p == "etc/lb" || p.starts_with("etc/lb/")) && !p.starts_with("var/cache/man/"))
        .collect();
    assert!(left.is_empty(), "the package left these behind after purge: {left:?}");
    assert!(!root.run(&["dpkg-query", "-W", "lb-agent"]).status.success(), "dpkg still knows lb-agent after purge");

    drop(root);
    assert_eq!(host_dpkg_state(), host_before, "the host's dpkg database changed");
}

/// A root file system for dpkg: `/` through an overlay whose upper layer is a
/// tmpfs, with /dev bound and fresh /proc, /run and /tmp, in a private mount
/// namespace held by a `sleep` of ours (ended on drop).
struct ScratchRoot {
    holder: Child,
    /// The mount point of the tmpfs (an empty folder on the host).
    dir: PathBuf,
}

impl ScratchRoot {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("lbf-pkg-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        // lowerdir=/ sees the host's root file system only (no mounts), so the
        // tmpfs under it does not overlap the lower layer.
        let script = format!(
            "set -e; d=\"$0\"; mount -t tmpfs lbf-pkg \"$d\"; mkdir \"$d/upper\" \"$d/work\" \"$d/root\"; \
             mount -t overlay lbf-pkg -o lowerdir=/,upperdir=\"$d/upper\",workdir=\"$d/work\" \"$d/root\"; \
             mount --bind /dev \"$d/root/dev\"; mount -t proc proc \"$d/root/proc\"; \
             mount -t tmpfs tmpfs \"$d/root/run\"; mount -t tmpfs tmpfs \"$d/root/tmp\"; \
             echo ready; exec sleep {HOLDER_SECONDS}"
        );
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c", &script])
            .arg(&dir)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting unshare (util-linux)");
        // "ready", or end of file when the script failed (its error is on stderr).
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let root = ScratchRoot { holder, dir };
        assert_eq!(line.trim(), "ready", "setting up the scratch root failed (see stderr)");
        // Not the man-db trigger's index rebuild after every dpkg run (25 s here): `man -w` searches the folders itself.
        std::fs::remove_file(root.path("var/lib/man-db/auto-update")).ok();
        root
    }

    /// The tmpfs, as seen from the host (through the holder's view of the files).
    fn tmpfs(&self) -> PathBuf {
        Path::new(&format!("/proc/{}/root", self.holder.id())).join(self.dir.strip_prefix("/").unwrap())
    }

    /// `path` (relative to /) in the scratch root, as seen from the host.
    /// (An absolute symlink there would resolve on the host: use `has`.)
    fn path(&self, path: &str) -> PathBuf {
        self.tmpfs().join("root").join(path)
    }

    /// Whether `path` (relative to /) exists in the scratch root, a dangling symlink included.
    fn has(&self, path: &str) -> bool {
        self.path(path).symlink_metadata().is_ok()
    }

    /// Runs `args` chrooted into the scratch root with a plain environment.
    fn run(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["--target", &self.holder.id().to_string(), "--mount", "--", "chroot"])
            .arg(self.dir.join("root"))
            .args(["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C", "HOME=/root"])
            .arg("DEBIAN_FRONTEND=noninteractive")
            .args(args)
            .output()
            .expect("starting nsenter")
    }

    /// Runs `args` and returns its stdout; panics with its output if it fails.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{args:?} failed ({}):\n{stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
        stdout
    }

    /// Every path the scratch root's writes added or changed (its upper layer), relative to /.
    fn written(&self) -> Vec<String> {
        let upper = self.tmpfs().join("upper");
        let mut out = Vec::new();
        let mut pending = vec![upper.clone()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                out.push(path.strip_prefix(&upper).unwrap().to_string_lossy().into_owned());
                if path.symlink_metadata().unwrap().is_dir() {
                    pending.push(path);
                }
            }
        }
        out
    }
}

impl Drop for ScratchRoot {
    fn drop(&mut self) {
        // Our own sleep, by pid: with it go the namespace, its mounts and the tmpfs.
        self.holder.kill().ok();
        self.holder.wait().ok();
        std::fs::remove_dir(&self.dir).ok();
    }
}

/// The files (not folders) in `deb`, relative to /.
fn files_in_package(deb: &Path) -> Vec<String> {
    let out = Command::new("dpkg-deb").arg("--contents").arg(deb).output().expect("starting dpkg-deb");
    assert!(out.status.success(), "dpkg-deb --contents {}: {}", deb.display(), String::from_utf8_lossy(&out.stderr));
    let files: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches("./").to_owned())
        .collect();
    assert!(files.iter().any(|f| f == "usr/bin/lb-agent"), "no usr/bin/lb-agent in {}: {files:?}", deb.display());
    files
}

/// The commands `lb-agent --help` lists (without `help`).
fn commands_in_help(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

/// What the host's dpkg says about lb-agent (it must not change).
fn host_dpkg_state() -> String {
    let out = Command::new("dpkg-query").args(["-W", "-f", "${Status} ${Version}", "lb-agent"]).output().expect("starting dpkg-query");
    format!("{} {}", out.status, String::from_utf8_lossy(&out.stdout))
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn read_text(path: &Path) -> String {
    String::from_utf8(read(path)).unwrap()
}

//! Namespaces, mounts and stale runs: the kernel state a topology owns.

use super::*;


pub(super) fn namespace_pids(ns: &str) -> Vec<i32> {
    run_ok("ip", &["netns", "pids", ns])
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn delete_namespace(ns: &str) -> Result<()> {
    if !Path::new("/run/netns").join(ns).exists() {
        return Ok(());
    }
    // Anything still inside (a process started with `exec` that outlived its
    // timeout, a child's own children) dies with it.
    let pids = namespace_pids(ns);
    for pid in &pids {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while !pids.is_empty() && Instant::now() < deadline && !namespace_pids(ns).is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    run_ok("ip", &["netns", "delete", ns]).map(|_| ())
}

pub(super) fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let p = path.to_string_lossy();
    info.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(&*p))
}

pub(super) fn agent_run_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("agent")
}

pub(super) fn unmount_and_remove(bpffs: &Path, run_dir: &Path) -> Result<()> {
    if is_mountpoint(bpffs) {
        let c = std::ffi::CString::new(bpffs.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: c is a valid path string.
        if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
            let e = std::io::Error::last_os_error();
            // Busy (something still has its cwd there): detach lazily.
            // SAFETY: as above.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                bail!("cannot unmount {}: {e}", bpffs.display());
            }
        }
    }
    // An agent killed with SIGKILL leaves its lock file and socket here.
    let agent_dir = agent_run_dir(run_dir);
    if agent_dir.exists() {
        fs::remove_dir_all(&agent_dir).with_context(|| format!("cannot remove {}", agent_dir.display()))?;
    }
    for d in [bpffs, run_dir] {
        if d.exists() {
            fs::remove_dir(d).with_context(|| format!("cannot remove {}", d.display()))?;
        }
    }
    Ok(())
}

pub(super) fn mount_bpffs(dir: &Path) -> Result<()> {
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C strings, no data argument.
    let r = unsafe {
        libc::mount(
            c("bpf").as_ptr(),
            target.as_ptr(),
            c("bpf").as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        bail!(
            "cannot mount bpffs at {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Attaches the project's pass-all XDP program (`xdp_pass` in lb-ebpf) to
/// `ifname` in namespace `ns`. A frame sent into a veth with `XDP_TX` or a
/// redirect is only processed by the peer when the peer has an XDP program
/// (`veth_xdp_flush` wakes the peer's NAPI only then; GRO alone is not enough
/// for XDP_TX), so every bridge port gets one. Dropping the returned object
/// detaches it.
pub fn attach_xdp_pass(ns: &str, ifname: &str) -> Result<aya::Ebpf> {
    let ns_path = Path::new("/run/netns").join(ns);
    let (ns, ifname) = (ns.to_string(), ifname.to_string());
    // setns() affects only the calling thread: do the namespace-bound part on one of our own.
    std::thread::spawn(move || -> Result<aya::Ebpf> {
        let nsf = File::open(&ns_path).with_context(|| format!("cannot open {}", ns_path.display()))?;
        // SAFETY: setns on a namespace descriptor, for this thread only.
        if unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns({}): {}", ns_path.display(), std::io::Error::last_os_error());
        }
        let mut ebpf = lb_agent::dataplane::load_minimal_object()?;
        let program = lb_agent::dataplane::load_program(&mut ebpf, lb_common::programs::PASS)?;
        program
            .attach(&ifname, aya::programs::XdpMode::Driver)
            .with_context(|| format!("attaching the pass-all XDP program to {ifname} in {ns}"))?;
        Ok(ebpf)
    })
    .join()
    .map_err(|_| anyhow!("the XDP attach thread panicked"))?
}

/// The pid encoded in a name `lbt<pid>-...`, if it is one of ours.
pub fn creator_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix("lbt")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    if digits.is_empty() || !rest[digits.len()..].starts_with('-') {
        return None;
    }
    digits.parse().ok()
}

pub(super) fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence.
    pid > 0
        // SAFETY: kill(2) with signal 0 only checks that the pid exists; no memory involved.
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Removes namespaces, bpffs mounts and log directories left by runs whose
/// process is gone (killed with SIGKILL, a crashed or failed test run).
/// Returns what it removed.
pub fn sweep_stale() -> Vec<String> {
    let mut removed = Vec::new();
    let stale = |name: &str| creator_pid(name).is_some_and(|pid| !pid_alive(pid));
    if let Ok(entries) = fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if stale(&name) {
                match delete_namespace(&name) {
                    Ok(()) => removed.push(format!("namespace {name}")),
                    Err(err) => eprintln!("[lbt] cannot remove stale namespace {name}: {err:#}"),
                }
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/run") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if stale(&name) {
                let dir = e.path();
                match unmount_and_remove(&dir.join("bpf"), &dir) {
                    Ok(()) => removed.push(format!("run dir {}", dir.display())),
                    Err(err) => eprintln!("[lbt] cannot remove stale {}: {err:#}", dir.display()),
                }
            }
        }
    }
    // Logs of dead runs (kept because they failed or were killed) live until the next run.
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if stale(&name) && e.path().is_dir() && fs::remove_dir_all(e.path()).is_ok() {
                removed.push(format!("log dir {}", e.path().display()));
            }
        }
    }
    for r in &removed {
        eprintln!("[lbt] removed stale {r}");
    }
    removed
}


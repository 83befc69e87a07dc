//! `lb-agent check` runs before every start (the systemd unit's
//! ExecStartPre), so it must stay small at any config size: it holds one
//! Maglev ring at a time (per worker thread), not one per VIP as it once did
//! (1.1 GB at 4,096 VIPs). Runs the real binary and bounds its peak RSS.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// VIPs of the big config: with the default ring (65,537 slots, 256 KiB)
/// holding every ring costs 30 MiB more than holding one.
const VIPS: usize = 120;
/// Peak RSS the big config may cost above a one-VIP config: a few rings in
/// flight, the config and the plan; far below the 30 MiB of every ring.
const GROWTH_LIMIT_KIB: i64 = 12 * 1024;
/// A debug build on a loaded CI machine takes a few seconds.
const TIMEOUT: Duration = Duration::from_secs(120);

fn config(vips: usize) -> String {
    let mut t = format!("[lb]\ninterface = \"eth0\"\nmax_vips = {}\n", vips.max(1));
    for i in 0..vips {
        t += &format!("[[vip]]\nname = \"v{i}\"\naddress = \"192.0.2.{}\"\nport = {}\n", 10 + i % 200, 1000 + i / 200);
        for k in 0..4 {
            t += &format!("  [[vip.backend]]\n  address = \"198.51.100.{}\"\n  weight = {}\n", (i * 3 + k) % 200 + 1, k + 1);
        }
    }
    t
}

struct Run {
    peak_rss_kib: i64,
    stdout: String,
}

/// Runs `lb-agent check` on `config`. Its peak RSS is the largest of this
/// process's reaped children so far (`RUSAGE_CHILDREN`): call it in
/// increasing order of size. (This file holds one test: no other children.)
fn check(dir: &Path, name: &str, config: &str) -> Run {
    let path = dir.join(format!("{name}.toml"));
    let out = dir.join(format!("{name}.out"));
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .args(["check", "--config"])
        .arg(&path)
        .stdout(File::create(&out).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lb-agent check did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "lb-agent check failed: {status}");
    // SAFETY: `rusage` is plain old data, for which all-zero bytes are valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) }, 0, "getrusage");
    Run { peak_rss_kib: usage.ru_maxrss, stdout: std::fs::read_to_string(&out).unwrap() }
}

#[test]
fn check_holds_one_ring_at_a_time() {
    let dir: PathBuf = std::env::temp_dir().join(format!("lb-check-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let one = check(&dir, "one", &config(1));
    let many = check(&dir, "many", &config(VIPS));
    std::fs::remove_dir_all(&dir).unwrap();
    eprintln!("[check_memory] peak RSS: 1 VIP {} KiB, {VIPS} VIPs {} KiB", one.peak_rss_kib, many.peak_rss_kib);
    assert_eq!(many.stdout.lines().filter(|l| l.starts_with("vip \"")).count(), VIPS, "check printed every VIP");
    assert!(many.stdout.lines().any(|l| l.starts_with("fingerprint")), "{}", many.stdout);
    let growth = many.peak_rss_kib - one.peak_rss_kib;
    assert!(
        growth < GROWTH_LIMIT_KIB,
        "lb-agent check grew by {growth} KiB from 1 to {VIPS} VIPs (limit {GROWTH_LIMIT_KIB} KiB): it holds more than a ring at a time"
    );
}

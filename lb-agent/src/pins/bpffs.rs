//! bpffs, where the pins live: mounted on /sys/fs/bpf when missing.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use rustix::fs::FsWord;

/// `BPF_FS_MAGIC` from linux/magic.h: the `f_type` statfs reports for bpffs.
const BPF_FS_MAGIC: FsWord = 0xcafe_4a11;

/// Mounts bpffs at /sys/fs/bpf when a pin directory lives there and nothing is
/// mounted yet (fresh hosts and containers often lack it).
pub(crate) fn ensure(dir: &Path) -> Result<()> {
    let default_root = Path::new("/sys/fs/bpf");
    if !dir.starts_with(default_root) || is_bpffs(default_root) {
        return Ok(());
    }
    std::fs::create_dir_all(default_root).ok();
    let status = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(default_root)
        .status()
        .context("running mount -t bpf")?;
    if !status.success() {
        bail!("{} is not a bpffs and mounting one there failed; mount it with `mount -t bpf bpf /sys/fs/bpf`", default_root.display());
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|st| st.f_type == BPF_FS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bpffs_is_bpffs() {
        assert!(!is_bpffs(Path::new("/")), "the root file system is not bpffs");
        assert!(!is_bpffs(Path::new("/nonexistent/lb-agent-test")), "a missing path is not bpffs");
        // Where the machine has bpffs mounted (as the namespace tests need), it is recognised.
        let mounted = std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.split_whitespace().nth(2) == Some("bpf"));
        assert_eq!(is_bpffs(Path::new("/sys/fs/bpf")), mounted);
    }
}

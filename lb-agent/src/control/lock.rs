//! One agent per interface: a lock file (`flock`, released by the kernel
//! when the agent dies, even by kill -9) in `lb.run_dir`, which must be a
//! directory only the agent's user can write: the agent runs as root, and
//! in a directory others can write, a planted symlink or file would make it
//! overwrite what they choose.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

use super::{lock_path, socket_path};

/// The mode the agent gives a run_dir it creates: others may look, not write.
pub const RUN_DIR_MODE: u32 = 0o755;
/// Write permission for the group or others: refused on a run_dir.
const GROUP_OR_WORLD_WRITABLE: u32 = 0o022;

/// This agent's claim on an interface; dropping it removes the socket and
/// lock files (the lock itself goes with the process).
pub struct Claim {
    lock: File,
    lock_path: PathBuf,
    socket_path: PathBuf,
}

impl Claim {
    /// Takes the interface's lock or explains who holds it.
    pub fn take(run_dir: &Path, iface: &str) -> Result<Claim> {
        prepare_run_dir(run_dir, effective_uid())?;
        let lock_path = lock_path(run_dir, iface);
        let mut lock = open_lock_file(&lock_path)?;
        // std's try_lock is flock(LOCK_EX | LOCK_NB) on Linux: released by the kernel with the process.
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = lock.read_to_string(&mut pid);
                return Err(Held { pid: pid.trim().to_string(), iface: iface.to_string(), lock_path }.into());
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", lock_path.display()));
            }
        }
        lock.set_len(0)?;
        write!(lock, "{}", std::process::id())?;
        Ok(Claim { lock, lock_path, socket_path: socket_path(run_dir, iface) })
    }

    /// Binds the control socket (a stale one of a dead agent is replaced:
    /// we hold the lock, so nobody else serves it).
    pub fn listen(&self) -> Result<tokio::net::UnixListener> {
        let _ = std::fs::remove_file(&self.socket_path);
        tokio::net::UnixListener::bind(&self.socket_path)
            .with_context(|| format!("binding control socket {}", self.socket_path.display()))
    }
}

/// The refusal when another agent holds the interface's lock.
#[derive(Debug)]
pub struct Held {
    pid: String,
    iface: String,
    lock_path: PathBuf,
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "another lb-agent (pid {}) already manages {} (it holds {}); stop it first, or change its config with `lb-agent reload`",
            self.pid,
            self.iface,
            self.lock_path.display()
        )
    }
}

impl std::error::Error for Held {}

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket_path);
        let _ = std::fs::remove_file(&self.lock_path);
        let _ = &self.lock;
    }
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Creates `dir` (mode [`RUN_DIR_MODE`]) if missing, then checks that only
/// `uid` can write to it.
pub fn prepare_run_dir(dir: &Path, uid: u32) -> Result<()> {
    match DirBuilder::new().recursive(true).mode(RUN_DIR_MODE).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating lb.run_dir {}", dir.display())),
    }
    check_run_dir(dir, uid)
}

/// Refuses a run_dir that another user than `uid` owns or may write to
/// (also through a symlink that another user owns).
pub fn check_run_dir(dir: &Path, uid: u32) -> Result<()> {
    let fix = format!(
        "make it a directory of uid {uid} that nobody else can write (`chown {uid} {d} && chmod go-w {d}`), or set lb.run_dir to one (the default /run/lb, as systemd's RuntimeDirectory=lb creates it)",
        d = dir.display()
    );
    let link = std::fs::symlink_metadata(dir).with_context(|| format!("lb.run_dir {}", dir.display()))?;
    if link.file_type().is_symlink() && link.uid() != uid {
        bail!("lb.run_dir {} is a symbolic link owned by uid {}, not the agent's uid {uid}: refusing it; {fix}", dir.display(), link.uid());
    }
    let meta = std::fs::metadata(dir).with_context(|| format!("lb.run_dir {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("lb.run_dir {} is not a directory; {fix}", dir.display());
    }
    let mode = meta.permissions().mode() & 0o7777;
    if meta.uid() != uid || mode & GROUP_OR_WORLD_WRITABLE != 0 {
        bail!(
            "lb.run_dir {} (owner uid {}, mode {mode:04o}) may be written by other users than the agent's (uid {uid}), who could make the agent overwrite any file through its lock file; {fix}",
            dir.display(),
            meta.uid()
        );
    }
    Ok(())
}

/// Opens (creating) the lock file without following a symlink, and only
/// if it is a plain file with one name (not a hard link planted earlier).
fn open_lock_file(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => bail!(
            "lock file {} is a symbolic link: refusing to follow it (it would make the agent write to its target); remove it, and find out who could create it there",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("opening lock file {}", path.display())),
    };
    let meta = file.metadata().with_context(|| format!("lock file {}", path.display()))?;
    if !meta.is_file() || meta.nlink() != 1 {
        bail!(
            "lock file {} is not a plain file with a single name ({} link(s)): refusing to write to it; remove it, and find out who could create it there",
            path.display(),
            meta.nlink()
        );
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh directory under the system's temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static SEQ: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!("lb-lock-test-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst)));
            let _ = std::fs::remove_dir_all(&dir);
            DirBuilder::new().mode(0o700).create(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_symlinked_lock_file_is_refused_and_its_target_untouched() {
        let tmp = TempDir::new();
        let run_dir = tmp.0.join("run");
        let target = tmp.0.join("precious");
        std::fs::write(&target, "keep me").unwrap();
        prepare_run_dir(&run_dir, effective_uid()).unwrap();
        std::os::unix::fs::symlink(&target, lock_path(&run_dir, "eth0")).unwrap();
        let err = Claim::take(&run_dir, "eth0").err().expect("a symlinked lock file was followed");
        let msg = format!("{err:#}");
        assert!(msg.contains("symbolic link") && msg.contains("eth0.lock"), "{msg}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    }

    #[test]
    fn a_hard_linked_lock_file_is_refused() {
        let tmp = TempDir::new();
        let run_dir = tmp.0.join("run");
        prepare_run_dir(&run_dir, effective_uid()).unwrap();
        let target = run_dir.join("precious");
        std::fs::write(&target, "keep me").unwrap();
        std::fs::hard_link(&target, lock_path(&run_dir, "eth0")).unwrap();
        let msg = format!("{:#}", Claim::take(&run_dir, "eth0").err().expect("a hard link was written"));
        assert!(msg.contains("2 link(s)"), "{msg}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    }

    #[test]
    fn a_run_dir_others_can_write_is_refused_with_path_and_mode() {
        let tmp = TempDir::new();
        let uid = effective_uid();
        for mode in [0o777, 0o775, 0o757, 0o1777] {
            chmod(&tmp.0, mode);
            let msg = format!("{:#}", check_run_dir(&tmp.0, uid).expect_err(&format!("mode {mode:o} was accepted")));
            assert!(msg.contains(&tmp.0.display().to_string()) && msg.contains(&format!("mode {mode:04o}")), "{msg}");
            assert!(msg.contains("chmod go-w"), "the message says what to do: {msg}");
        }
        chmod(&tmp.0, 0o755);
        check_run_dir(&tmp.0, uid).unwrap();
    }

    #[test]
    fn a_run_dir_of_another_user_is_refused() {
        let tmp = TempDir::new();
        let other = effective_uid() + 1;
        let msg = format!("{:#}", check_run_dir(&tmp.0, other).expect_err("a foreign-owned run_dir was accepted"));
        assert!(msg.contains(&tmp.0.display().to_string()) && msg.contains(&format!("owner uid {}", effective_uid())), "{msg}");
        assert!(msg.contains("mode 0700"), "{msg}");
    }

    #[test]
    fn a_created_run_dir_gets_a_safe_mode_whatever_the_umask() {
        let tmp = TempDir::new();
        let run_dir = tmp.0.join("a/b");
        // SAFETY: umask only changes this process's file creation mask; restored below.
        let old = unsafe { libc::umask(0) };
        let made = prepare_run_dir(&run_dir, effective_uid());
        // SAFETY: as above; puts the mask back.
        unsafe { libc::umask(old) };
        made.unwrap();
        let mode = std::fs::metadata(&run_dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, RUN_DIR_MODE);
    }

    #[test]
    fn a_second_claim_names_the_holder() {
        let tmp = TempDir::new();
        let run_dir = tmp.0.join("run");
        let first = Claim::take(&run_dir, "eth0").unwrap();
        let msg = format!("{:#}", Claim::take(&run_dir, "eth0").err().expect("two claims on one interface"));
        assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
        drop(first);
        assert!(!lock_path(&run_dir, "eth0").exists(), "the lock file is removed with the claim");
    }
}

//! A real headless browser (Debian's `chromium`) inside a test namespace,
//! driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
//! JSON messages ending in a NUL byte, read by chromium on fd 3 and written
//! on fd 4), so a test can watch one page across its own reloads. No npm
//! tool, no network port. Each wait is bounded; the browser is closed over
//! the protocol, and its process group killed by id if it lingers.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

/// The flags that work on this machine (no sandbox as root, no GPU, nothing
/// fetched from outside).
pub const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// Longest wait for one answer of the browser.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a closed browser may take to exit before it is killed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Fails unless `chromium` is installed (`cargo xtask setup` installs it).
pub fn chromium() -> Result<&'static str> {
    let found = Command::new("sh").args(["-c", "command -v chromium >/dev/null"]).status().is_ok_and(|s| s.success());
    if !found {
        bail!("chromium not found: run `cargo xtask setup` (installs Debian's chromium package) or `apt-get install chromium`");
    }
    Ok("chromium")
}

/// A fresh, empty profile directory under the system's temp dir, removed on drop.
struct Profile(PathBuf);

impl Profile {
    fn new(label: &str) -> Result<Profile> {
        let dir = std::env::temp_dir().join(format!("lbh-chromium-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Profile(dir))
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A browser with one page open.
pub struct Browser {
    child: Child,
    to_browser: File,
    from_browser: Receiver<Value>,
    session: String,
    next_id: u64,
    _profile: Profile,
}

/// A pipe whose both ends close on exec (the child gets its copies by dup2).
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Browser {
    /// Starts chromium in namespace `ns` (`ip netns exec`) and opens `url`;
    /// `label` names its profile directory.
    pub fn open(ns: &str, url: &str, label: &str) -> Result<Browser> {
        let profile = Profile::new(label)?;
        let (browser_reads, we_write) = pipe()?;
        let (we_read, browser_writes) = pipe()?;
        let (r, w) = (browser_reads.as_raw_fd(), browser_writes.as_raw_fd());
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, chromium()?])
            .args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.0.display()))
            .args(["--remote-debugging-pipe", "--window-size=1200,900", "about:blank"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: the renderer and helper processes go with it.
            .process_group(0);
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Above 4 first, so placing one cannot overwrite the other.
                let (r, w) = (libc::fcntl(r, libc::F_DUPFD, 10), libc::fcntl(w, libc::F_DUPFD, 10));
                if r < 0 || w < 0 || libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting chromium")?;
        drop((browser_reads, browser_writes));
        let (tx, from_browser) = mpsc::channel();
        let mut reader = BufReader::new(File::from(we_read));
        std::thread::spawn(move || {
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                message.pop_if(|b| *b == 0);
                let parsed = serde_json::from_slice::<Value>(&message);
                if parsed.is_ok_and(|v| tx.send(v).is_err()) {
                    return;
                }
                message.clear();
            }
        });
        let mut browser = Browser { child, to_browser: File::from(we_write), from_browser, session: String::new(), next_id: 0, _profile: profile };
        let target = browser.call(None, "Target.createTarget", json!({ "url": url }))?;
        let target = target["targetId"].as_str().context("createTarget answered no targetId")?.to_string();
        let attached = browser.call(None, "Target.attachToTarget", json!({ "targetId": target, "flatten": true }))?;
        browser.session = attached["sessionId"].as_str().context("attachToTarget answered no sessionId")?.to_string();
        Ok(browser)
    }

    /// One command; its `result` (events and other answers are skipped).
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&message)?;
        bytes.push(0);
        self.to_browser.write_all(&bytes).with_context(|| format!("sending {method} to chromium"))?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.from_browser.recv_timeout(left) {
                Ok(v) if v["id"].as_u64() == Some(id) => {
                    if let Some(e) = v.get("error") {
                        bail!("chromium refused {method}: {e}");
                    }
                    return Ok(v["result"].clone());
                }
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => bail!("chromium did not answer {method} within {ANSWER_TIMEOUT:?}"),
                Err(RecvTimeoutError::Disconnected) => bail!("chromium exited before answering {method}"),
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    pub fn eval(&mut self, expression: &str) -> Result<Value> {
        let session = self.session.clone();
        let out = self.call(Some(&session), "Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }))?;
        if let Some(e) = out.get("exceptionDetails") {
            bail!("{expression}: {e}");
        }
        Ok(out["result"]["value"].clone())
    }

    /// The page's DOM as HTML, once it has loaded (`None` while loading).
    pub fn dom(&mut self) -> Result<Option<String>> {
        let v = self.eval("document.readyState === 'complete' ? document.documentElement.outerHTML : null")?;
        Ok(v.as_str().map(str::to_string))
    }

    fn close(&mut self) {
        // Best effort: the kill below ends it anyway.
        let _ = self.call(None, "Browser.close", json!({}));
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.close();
        let group = self.child.id() as i32;
        // SAFETY: signals the process group this browser was started in (its pid), nothing else.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// `chromium --screenshot` of `url` from namespace `ns` into `png`, bounded
/// by `timeout` (killed by pid past it).
pub fn screenshot(ns: &str, url: &str, png: &Path, timeout: Duration) -> Result<()> {
    let profile = Profile::new("shot")?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, chromium()?])
        .args(FLAGS)
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .arg(format!("--screenshot={}", png.display()))
        .args(["--window-size=1200,900", "--hide-scrollbars", url]);
    let out = crate::topology::run_with_timeout(cmd, timeout)?;
    if !out.status.success() || !png.is_file() {
        bail!("chromium --screenshot failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

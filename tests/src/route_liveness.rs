//! What systemd does for `contrib/systemd/lb-agent.service`, done by the
//! test (PID 1 here is not systemd, so the unit cannot run for real): a
//! notify socket the agent reports to (`NOTIFY_SOCKET`), its watchdog
//! (SIGKILL when the keep-alives stop for the bound the agent asked for),
//! and the unit's `ExecStopPost=` command line, taken from the shipped file
//! and run with `$SERVICE_RESULT` as systemd sets it.

use anyhow::{Context, Result, bail};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent::workspace_root;
use crate::topology::{Proc, Topology};

/// The unit file as shipped.
pub fn unit_path() -> PathBuf {
    workspace_root().join("contrib/systemd/lb-agent.service")
}

/// Where the unit expects the agent and its config (the Debian package's paths).
pub const UNIT_AGENT: &str = "/usr/bin/lb-agent";
pub const UNIT_CONFIG: &str = "/etc/lb/lb.toml";

/// The values of `key=` in the unit's `[Service]` section, in order.
pub fn unit_values(unit: &str, key: &str) -> Vec<String> {
    let mut in_service = false;
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service && let Some(value) = line.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')) {
            out.push(value.to_string());
        }
    }
    out
}

/// The unit's `ExecStopPost=` command as argv, with the test's agent and
/// config in place of the unit's paths and `${SERVICE_RESULT}` expanded as
/// systemd does (the unit has no quoting, so words split on spaces).
pub fn exec_stop_post(unit: &str, agent: &Path, config: &Path, service_result: &str) -> Result<Vec<String>> {
    let lines = unit_values(unit, "ExecStopPost");
    let [line] = lines.as_slice() else { bail!("the unit has {} ExecStopPost= lines, expected one", lines.len()) };
    let words: Vec<String> = line
        .split_whitespace()
        .map(|w| {
            let w = w.replace("${SERVICE_RESULT}", service_result).replace("$SERVICE_RESULT", service_result);
            if w == UNIT_AGENT {
                agent.to_string_lossy().into_owned()
            } else if w == UNIT_CONFIG {
                config.to_string_lossy().into_owned()
            } else {
                w
            }
        })
        .collect();
    if words.first().map(String::as_str) != Some(&*agent.to_string_lossy()) {
        bail!("ExecStopPost= does not run {UNIT_AGENT}: {line}");
    }
    Ok(words)
}

/// One notification the agent sent, and when it arrived.
#[derive(Clone, Debug)]
pub struct Notice {
    pub at: Instant,
    pub text: String,
}

impl Notice {
    /// Whether one of its lines is exactly `line` (e.g. `READY=1`).
    pub fn has(&self, line: &str) -> bool {
        self.text.lines().any(|l| l == line)
    }

    /// The value of `KEY=` in it.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.text.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }
}

/// A notify socket like systemd's: a unix datagram socket the test reads.
pub struct NotifySocket {
    pub path: PathBuf,
    notices: Arc<Mutex<Vec<Notice>>>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// How often the reader looks at its stop flag.
const READ_TIMEOUT: Duration = Duration::from_millis(100);
const POLL: Duration = Duration::from_millis(20);

impl NotifySocket {
    pub fn bind(path: PathBuf) -> Result<NotifySocket> {
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        socket.set_read_timeout(Some(READ_TIMEOUT))?;
        let notices = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (notices, stop) = (notices.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        notices.lock().unwrap().push(Notice { at: Instant::now(), text });
                    }
                }
            })
        };
        Ok(NotifySocket { path, notices, stop, reader: Some(reader) })
    }

    /// Everything received so far.
    pub fn notices(&self) -> Vec<Notice> {
        self.notices.lock().unwrap().clone()
    }

    /// Waits for the first notice from index `from` on that has `line`;
    /// returns its index and the notice.
    pub fn wait_for(&self, line: &str, from: usize, limit: Duration) -> Result<(usize, Notice)> {
        let deadline = Instant::now() + limit;
        loop {
            let all = self.notices();
            if let Some((i, n)) = all.iter().enumerate().skip(from).find(|(_, n)| n.has(line)) {
                return Ok((i, n.clone()));
            }
            if Instant::now() >= deadline {
                bail!("no {line} from the agent within {limit:?}; received: {:?}", all.iter().map(|n| &n.text).collect::<Vec<_>>());
            }
            std::thread::sleep(POLL);
        }
    }

    /// The arrival times of the notices with `line` since `since`.
    pub fn times_of(&self, line: &str, since: Instant) -> Vec<Instant> {
        self.notices().iter().filter(|n| n.at >= since && n.has(line)).map(|n| n.at).collect()
    }

    /// The watchdog bound the agent asked for last (`WATCHDOG_USEC=`).
    pub fn watchdog_bound(&self) -> Option<Duration> {
        self.notices().iter().rev().find_map(|n| n.value("WATCHDOG_USEC")?.parse().ok()).map(Duration::from_micros)
    }

    /// The last keep-alive (or READY, which starts the watchdog) before now.
    pub fn last_sign_of_life(&self) -> Option<Instant> {
        self.notices().iter().rev().find(|n| n.has("WATCHDOG=1") || n.has("READY=1")).map(|n| n.at)
    }

    /// systemd's watchdog: waits (at most `limit`) until the agent's last
    /// keep-alive is older than the bound it asked for; returns when the
    /// watchdog fired.
    pub fn wait_watchdog_expiry(&self, limit: Duration) -> Result<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            let bound = self.watchdog_bound().context("the agent asked for no watchdog bound (WATCHDOG_USEC=)")?;
            let last = self.last_sign_of_life().context("the agent never sent READY=1 or WATCHDOG=1")?;
            if last.elapsed() >= bound {
                return Ok(Instant::now());
            }
            if Instant::now() >= deadline {
                bail!("the watchdog did not expire within {limit:?}: keep-alives go on");
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `lb-agent run --config CONFIG EXTRA` on `host` as systemd starts it:
/// with `NOTIFY_SOCKET` and the unit's `WatchdogSec=` as `WATCHDOG_USEC`.
pub fn spawn_notified_agent(topo: &Topology, host: &str, agent: &Path, config: &Path, notify: &Path, watchdog: Duration, extra: &[&str]) -> Result<Proc> {
    let socket = format!("NOTIFY_SOCKET={}", notify.display());
    let usec = format!("WATCHDOG_USEC={}", watchdog.as_micros());
    let (agent, config) = (agent.to_string_lossy(), config.to_string_lossy());
    let mut args = vec![socket.as_str(), usec.as_str(), &agent, "run", "--config", &config];
    args.extend_from_slice(extra);
    // `env` execs the agent: the pid the topology records is the agent's.
    topo.spawn(host, "env", &args)
}

/// The unit's `WatchdogSec=` (seconds, as the unit writes it).
pub fn unit_watchdog(unit: &str) -> Result<Duration> {
    let values = unit_values(unit, "WatchdogSec");
    let value = values.last().context("the unit sets no WatchdogSec=")?;
    let secs: u64 = value.trim_end_matches('s').parse().with_context(|| format!("WatchdogSec={value}"))?;
    Ok(Duration::from_secs(secs))
}

/// Sends `signal` to `proc` (SIGSTOP / SIGCONT: a hung agent and its recovery).
pub fn signal(proc: &Proc, signal: i32) -> Result<()> {
    // SAFETY: kill(2) on the pid of a child the topology started and has not reaped.
    let rc = unsafe { libc::kill(proc.pid() as libc::pid_t, signal) };
    if rc != 0 {
        bail!("kill({}, {signal}): {}", proc.pid(), std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: &str = "[Unit]\nExecStopPost=/bin/false\n[Service]\nWatchdogSec=30s\nExecStopPost=/usr/bin/lb-agent withdraw --config /etc/lb/lb.toml --service-result=${SERVICE_RESULT}\n";

    #[test]
    fn exec_stop_post_expands_like_systemd() {
        let argv = exec_stop_post(UNIT, Path::new("/t/lb-agent"), Path::new("/t/c.toml"), "watchdog").unwrap();
        assert_eq!(argv, ["/t/lb-agent", "withdraw", "--config", "/t/c.toml", "--service-result=watchdog"]);
        assert_eq!(unit_watchdog(UNIT).unwrap(), Duration::from_secs(30));
    }
}

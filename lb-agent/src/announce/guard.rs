//! The liveness guard, for hosts without systemd (`lb-agent run
//! --liveness-guard`): a small child process that withdraws the VIP routes
//! when the agent dies (kill -9, a crash) or stops sending heartbeats for
//! `announce.liveness` (hung, SIGSTOP; then it also kills the agent, as
//! systemd's watchdog would, so a supervisor restarts it). Under systemd the
//! unit's watchdog and `ExecStopPost=` do this, and no guard is needed.
//!
//! The agent holds the write end of the guard's stdin: every heartbeat is a
//! line `alive TABLE PROTOCOL LIVENESS_MS` (so a reload's new `[announce]`
//! reaches the guard), a clean exit writes `clean` (the routes stay for the
//! next agent), and end of file without it means the agent died. The guard
//! runs in its own process group, so a signal to the agent's group (Ctrl-C,
//! `kill -9 -PGID`) does not take it along.

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::AnnounceConfig;

/// The hidden subcommand the agent starts itself as.
pub const SUBCOMMAND: &str = "guard";
const CLEAN: &str = "clean";
const ALIVE: &str = "alive";

/// The agent's end: heartbeats to the guard.
pub struct Guard {
    child: Child,
    stdin: Option<ChildStdin>,
    liveness: Duration,
}

impl Guard {
    /// Starts the guard (this executable, [`SUBCOMMAND`]) and sends the first heartbeat.
    pub fn spawn(announce: &AnnounceConfig) -> Result<Guard> {
        let exe = std::env::current_exe().context("finding the agent's executable for the liveness guard")?;
        let mut child = Command::new(exe)
            .args([SUBCOMMAND, "--agent-pid", &std::process::id().to_string()])
            .stdin(Stdio::piped())
            .process_group(0)
            .spawn()
            .context("starting the liveness guard")?;
        let stdin = child.stdin.take();
        let mut guard = Guard { child, stdin, liveness: announce.liveness };
        guard.beat(announce);
        tracing::info!(pid = guard.child.id(), "liveness guard started: the VIP routes go if this agent dies or hangs for {:?}", announce.liveness);
        Ok(guard)
    }

    /// How often [`Guard::beat`] must run.
    pub fn period(&self) -> Duration {
        self.liveness / 2
    }

    fn send(&mut self, line: &str) {
        let Some(stdin) = self.stdin.as_mut() else { return };
        // The guard reads at once; a full pipe or a dead guard fails the write, never blocks the loop for long.
        if let Err(e) = writeln!(stdin, "{line}") {
            tracing::error!("the liveness guard is gone ({e}); a crash or hang of this agent now leaves its routes: restart the agent");
            self.stdin = None;
        }
    }

    /// The agent is alive, with these settings.
    pub fn beat(&mut self, announce: &AnnounceConfig) {
        self.liveness = announce.liveness;
        let line = format!("{ALIVE} {} {} {}", announce.table, announce.protocol, announce.liveness.as_millis());
        self.send(&line);
    }

    /// A clean exit: the guard leaves the routes and exits.
    pub fn clean(mut self) {
        self.send(CLEAN);
        self.stdin = None;
        let _ = self.child.wait();
    }
}

/// What the guard learnt from the last heartbeat.
#[derive(Debug, PartialEq, Eq)]
struct Heard {
    table: u32,
    protocol: u8,
    liveness: Duration,
}

fn parse_alive(line: &str) -> Option<Heard> {
    let mut words = line.split_whitespace();
    if words.next()? != ALIVE {
        return None;
    }
    let table = words.next()?.parse().ok()?;
    let protocol = words.next()?.parse().ok()?;
    let liveness = Duration::from_millis(words.next()?.parse().ok()?);
    Some(Heard { table, protocol, liveness })
}

/// How the agent ended, when it did not exit cleanly.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// End of file without `clean`: killed or crashed.
    Died,
    /// No heartbeat within the bound.
    Hung,
}

/// `lb-agent guard --agent-pid PID`: watches stdin (see the module comment).
pub fn run(agent_pid: u32) -> Result<String> {
    let mut heard: Option<Heard> = None;
    let mut last = Instant::now();
    let mut pending = String::new();
    let end = loop {
        let bound = heard.as_ref().map_or(crate::config::announce::DEFAULT_LIVENESS, |h| h.liveness);
        let left = bound.saturating_sub(last.elapsed());
        if left.is_zero() {
            break End::Hung;
        }
        match read_within(left)? {
            None => continue,
            Some(bytes) if bytes.is_empty() => break End::Died,
            Some(bytes) => {
                pending.push_str(&String::from_utf8_lossy(&bytes));
                while let Some(newline) = pending.find('\n') {
                    let line: String = pending.drain(..=newline).collect();
                    if line.trim() == CLEAN {
                        return Ok("the agent stopped cleanly: the VIP routes stay for the next agent".into());
                    }
                    if let Some(h) = parse_alive(&line) {
                        heard = Some(h);
                        last = Instant::now();
                    }
                }
            }
        }
    };
    let Some(heard) = heard else { anyhow::bail!("the agent sent no heartbeat; nothing known to withdraw") };
    if end == End::Hung {
        // Only while it is still our parent: a pid can be reused once it is gone.
        // SAFETY: getppid cannot fail.
        if unsafe { libc::getppid() } as u32 == agent_pid {
            // SAFETY: kill(2) on our parent's pid, checked just above.
            unsafe { libc::kill(agent_pid as libc::pid_t, libc::SIGKILL) };
        }
    }
    let announce = AnnounceConfig { table: heard.table, protocol: heard.protocol, ..default_announce() };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let n = runtime.block_on(async {
        let handle = crate::nexthop::connect()?;
        super::remove_leftovers(&handle, &announce).await
    })?;
    let why = match end {
        End::Hung => format!("agent {agent_pid} sent no heartbeat for {:?} (hung): killed it and", heard.liveness),
        End::Died => format!("agent {agent_pid} died without a clean exit:"),
    };
    Ok(format!("{why} withdrew {n} VIP route(s) from table {} proto {}", heard.table, heard.protocol))
}

fn default_announce() -> AnnounceConfig {
    let mut none = Vec::new();
    crate::config::announce::resolve(Default::default(), &mut none).expect("the default [announce] table is valid")
}

/// Bytes from stdin within `limit` (None: nothing came; empty: end of file).
fn read_within(limit: Duration) -> Result<Option<Vec<u8>>> {
    let mut fds = libc::pollfd { fd: libc::STDIN_FILENO, events: libc::POLLIN, revents: 0 };
    let ms = i32::try_from(limit.as_millis().max(1)).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut fds, 1, ms) };
    if ready < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::Interrupted { Ok(None) } else { Err(e).context("poll on the agent's pipe") };
    }
    if ready == 0 {
        return Ok(None);
    }
    let mut buf = [0u8; 1024];
    // SAFETY: reads into a local buffer of the given length.
    let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("reading the agent's pipe");
    }
    Ok(Some(buf[..n as usize].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_carry_the_settings() {
        assert_eq!(parse_alive("alive 250 250 2000\n"), Some(Heard { table: 250, protocol: 250, liveness: Duration::from_secs(2) }));
        assert_eq!(parse_alive("alive 250 x 2000"), None);
        assert_eq!(parse_alive("clean"), None);
        assert_eq!(default_announce().table, crate::config::announce::DEFAULT_TABLE);
    }
}

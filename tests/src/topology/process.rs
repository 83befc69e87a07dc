//! Processes a topology starts: their logs, lines, exit and stop.

use super::*;


pub(super) struct ProcInner {
    pub(super) label: String,
    pub(super) host: String,
    pub(super) pid: u32,
    pub(super) log_path: PathBuf,
    pub(super) child: Mutex<Child>,
    pub(super) lines: Mutex<(Vec<String>, bool)>,
    pub(super) line_cv: Condvar,
}

/// A process started by [`Topology::spawn`]. The topology stops it on cleanup;
/// cloning the handle does not change that.
#[derive(Clone)]
pub struct Proc(pub(super) Arc<ProcInner>);

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Proc({} pid {} on {}, log {})",
            self.0.label,
            self.0.pid,
            self.0.host,
            self.0.log_path.display()
        )
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.pid
    }

    pub fn label(&self) -> &str {
        &self.0.label
    }

    /// The file its stdout (`[stdout] ` prefix) and stderr (`[stderr] `) go to.
    pub fn log_path(&self) -> &Path {
        &self.0.log_path
    }

    /// The stdout lines printed so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.0.lines.lock().unwrap().0.clone()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.0.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Its exit status if it has exited.
    pub fn try_status(&self) -> Option<ExitStatus> {
        self.0.child.lock().unwrap().try_wait().ok().flatten()
    }

    /// Waits until a stdout line contains `pattern` and returns that line. Fails
    /// at the timeout or when the process exits first, quoting its log.
    pub fn wait_for_line(&self, pattern: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.0.lines.lock().unwrap();
        let mut seen = 0;
        loop {
            if let Some(l) = guard.0[seen..].iter().find(|l| l.contains(pattern)) {
                return Ok(l.clone());
            }
            seen = guard.0.len();
            let eof = guard.1;
            let now = Instant::now();
            if eof || now >= deadline {
                drop(guard);
                // Give the stderr reader a moment so the log is complete.
                std::thread::sleep(Duration::from_millis(100));
                let status = self
                    .try_status()
                    .map(|s| format!("exited with {s}"))
                    .unwrap_or_else(|| "still running".into());
                bail!(
                    "{} on {} (pid {}) printed no line containing {pattern:?} {} ({status}); log {}:\n{}",
                    self.0.label,
                    self.0.host,
                    self.0.pid,
                    if eof {
                        "before closing its stdout"
                    } else {
                        "within the timeout"
                    },
                    self.0.log_path.display(),
                    self.log_tail(30)
                );
            }
            // Wake up regularly even without output to notice the deadline.
            let wait = (deadline - now).min(Duration::from_millis(200));
            guard = self.0.line_cv.wait_timeout(guard, wait).unwrap().0;
        }
    }

    /// Sends SIGKILL (no chance to clean up, like a crash) and waits for the
    /// exit, at most [`KILL_WAIT`].
    pub fn kill(&self) -> Result<ExitStatus> {
        {
            let mut child = self.0.child.lock().unwrap();
            if matches!(child.try_wait(), Ok(None)) {
                // SAFETY: the child is not reaped yet, so its pid is still ours.
                unsafe { libc::kill(self.0.pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        let deadline = Instant::now() + KILL_WAIT;
        while Instant::now() < deadline {
            if let Some(st) = self.try_status() {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{} (pid {}) still running {KILL_WAIT:?} after SIGKILL", self.0.label, self.0.pid)
    }

    /// Waits at most `limit` for the process to exit on its own.
    pub fn wait_exit(&self, limit: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.try_status() {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                bail!("{} (pid {}) still running after {limit:?}; log {}:\n{}", self.0.label, self.0.pid, self.0.log_path.display(), self.log_tail(20));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM, waits up to 2 s, then SIGKILL; returns the exit status.
    pub fn stop(&self) -> Result<ExitStatus> {
        stop_all(std::slice::from_ref(&self.0));
        self.try_status().with_context(|| {
            format!(
                "{} (pid {}) did not exit even after SIGKILL",
                self.0.label, self.0.pid
            )
        })
    }
}

/// How long a SIGKILLed process may take to be reaped.
pub(super) const KILL_WAIT: Duration = Duration::from_secs(5);

/// Signals every process still running (only while it is unreaped, so the
/// pid cannot have been reused), waits `STOP_GRACE`, then kills the rest.
pub(super) fn stop_all(procs: &[Arc<ProcInner>]) {
    let signal_running = |sig: libc::c_int| {
        let mut any = false;
        for p in procs {
            let mut child = p.child.lock().unwrap();
            if matches!(child.try_wait(), Ok(None)) {
                // SAFETY: the child is not reaped yet, so its pid is still ours.
                unsafe { libc::kill(p.pid as libc::pid_t, sig) };
                any = true;
            }
        }
        any
    };
    let all_exited = |deadline: Instant| loop {
        let running = procs
            .iter()
            .any(|p| matches!(p.child.lock().unwrap().try_wait(), Ok(None)));
        if !running {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !signal_running(libc::SIGTERM) {
        return;
    }
    if all_exited(Instant::now() + STOP_GRACE) {
        return;
    }
    signal_running(libc::SIGKILL);
    all_exited(Instant::now() + Duration::from_secs(2));
}

pub(super) fn spawn_reader(
    stream: impl Read + Send + 'static,
    prefix: &'static str,
    log: Arc<Mutex<File>>,
    lines: Option<Arc<ProcInner>>,
) {
    std::thread::spawn(move || {
        let reader = BufReader::new(stream);
        for line in reader.split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            if let Ok(mut f) = log.lock() {
                let _ = writeln!(f, "{prefix}{line}");
            }
            if let Some(p) = &lines {
                p.lines.lock().unwrap().0.push(line);
                p.line_cv.notify_all();
            }
        }
        if let Some(p) = &lines {
            p.lines.lock().unwrap().1 = true;
            p.line_cv.notify_all();
        }
    });
}

/// How long the output of a command that ended may still take to reach its
/// end: a process it left behind (a daemon) can hold the pipe open for ever.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// A pipe's bytes, read on a thread of their own.
struct PipeReader {
    bytes: Arc<Mutex<Vec<u8>>>,
    ended: std::sync::mpsc::Receiver<()>,
}

impl PipeReader {
    fn spawn(mut pipe: impl Read + Send + 'static) -> Self {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let (tx, ended) = std::sync::mpsc::channel();
        let sink = Arc::clone(&bytes);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
            let _ = tx.send(());
        });
        PipeReader { bytes, ended }
    }

    /// What was read, once the pipe ended or `until` passed (the thread
    /// then reads on, detached, until whoever holds the pipe closes it).
    fn take(self, until: Instant) -> Vec<u8> {
        let _ = self.ended.recv_timeout(until.saturating_duration_since(Instant::now()));
        std::mem::take(&mut *self.bytes.lock().unwrap())
    }
}

/// Runs a command with a time limit, collecting its output; kills it at the
/// limit. Every wait is bounded: the output is collected for at most
/// `OUTPUT_GRACE` after the command ends.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {desc}"))?;
    let out = PipeReader::spawn(child.stdout.take().unwrap());
    let err = PipeReader::spawn(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.take(Instant::now() + OUTPUT_GRACE);
            bail!(
                "{desc} did not finish within {timeout:?} (killed); stderr: {}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let until = Instant::now() + OUTPUT_GRACE;
    Ok(Output { status, stdout: out.take(until), stderr: err.take(until) })
}

/// Runs a command on the caller's side and fails with its stderr unless it succeeds.
pub(super) fn run_ok(program: &str, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = run_with_timeout(cmd, EXEC_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}


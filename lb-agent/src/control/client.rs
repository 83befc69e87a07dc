//! The client side of the control socket (`lb-agent reload`, `lb-agent
//! maintenance`). Two bounded waits: `--timeout` for the agent's
//! acknowledgement (its control task answers at once unless the agent is
//! stopped or hung), then a separate, longer limit for the result (a
//! reload resolves the next hops of new backends, a maintenance drains).
//! Each failure carries its [`ExitCode`].

use std::io::ErrorKind;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

use super::exit_code::{coded, ExitCode};
use super::protocol::{Answer, Request, MAX_ANSWER_LINE};
use super::socket_path;

/// Default `--timeout` in seconds: how long to wait for the acknowledgement.
pub const DEFAULT_TIMEOUT: &str = "5";
/// Longest `--timeout` accepted.
const MAX_TIMEOUT_SECONDS: f64 = 600.0;
/// How long a reload may take once acknowledged: next-hop resolution of new
/// backends takes up to ~5 s, a config of thousands of members a few more.
pub const RELOAD_RESULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The two waits of a request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// From connecting until the agent acknowledges the request.
    pub acknowledge: Duration,
    /// From the acknowledgement until the result.
    pub result: Duration,
}

/// Parses `--timeout SECONDS`.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds (e.g. 5, 0.5)"))?;
    if !(secs > 0.0 && secs <= MAX_TIMEOUT_SECONDS) {
        return Err(format!("{s} s is outside 0 < timeout <= {MAX_TIMEOUT_SECONDS} s"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Sends `request` to the agent managing `iface` (control socket in
/// `run_dir`) and returns the summary of its `ok` answer.
pub fn request(run_dir: &Path, iface: &str, request: &Request, limits: Limits) -> Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the tokio runtime")?;
    runtime.block_on(exchange(&socket_path(run_dir, iface), iface, request, limits))
}

async fn exchange(path: &Path, iface: &str, request: &Request, limits: Limits) -> Result<String> {
    let deadline = tokio::time::Instant::from_std(Instant::now() + limits.acknowledge);
    let no_answer = |why: String| {
        coded(
            ExitCode::NoAnswer,
            anyhow!(
                "the lb-agent of {iface} did not answer on {} within {:?} ({why}): it is stopped (SIGSTOP, a debugger), hung or overloaded, and drops the request if it resumes later; check it (`ps -o pid,stat,args -C lb-agent`, its log) and try again",
                path.display(),
                limits.acknowledge
            ),
        )
    };
    let stream = match tokio::time::timeout_at(deadline, UnixStream::connect(path)).await {
        Err(_) => return Err(no_answer("connecting".into())),
        Ok(Err(e)) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            return Err(coded(
                ExitCode::NotRunning,
                anyhow!(
                    "no lb-agent runs for {iface}: {}: {e} (start it with `lb-agent run`, or check that this config's lb.run_dir is the running agent's)",
                    path.display()
                ),
            ));
        }
        Ok(Err(e)) if e.kind() == ErrorKind::WouldBlock => return Err(no_answer("its control socket's backlog is full".into())),
        Ok(Err(e)) => return Err(e).with_context(|| format!("connecting to {}", path.display())),
        Ok(Ok(stream)) => stream,
    };
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_ANSWER_LINE * 2));
    let mut first = String::new();
    let acknowledged = tokio::time::timeout_at(deadline, async {
        write.write_all(request.encode().as_bytes()).await?;
        reader.read_line(&mut first).await
    })
    .await;
    match acknowledged {
        Err(_) => return Err(no_answer(format!("no acknowledgement of the {} request", request.word()))),
        Ok(Err(e)) => return Err(no_answer(format!("the connection failed: {e}"))),
        Ok(Ok(0)) => return Err(no_answer("it closed the connection without a word".into())),
        Ok(Ok(_)) => {}
    }
    // Refused before it was taken (unparsable, busy, stopping): that line is the answer.
    let answer = match Answer::decode(&first) {
        Answer::Accepted => {
            let mut result = String::new();
            match tokio::time::timeout(limits.result, reader.read_line(&mut result)).await {
                Err(_) => {
                    return Err(coded(
                        ExitCode::NoResult,
                        anyhow!(
                            "the lb-agent of {iface} accepted the {} request but gave no result within {:?}; it may still complete it: see its log",
                            request.word(),
                            limits.result
                        ),
                    ));
                }
                Ok(read) => read.context("reading the agent's answer")?,
            };
            if result.trim().is_empty() {
                return Err(coded(
                    ExitCode::NoResult,
                    anyhow!("the lb-agent of {iface} accepted the {} request, then closed the connection without a result (did it exit?); see its log", request.word()),
                ));
            }
            Answer::decode(&result)
        }
        answer => answer,
    };
    match answer {
        Answer::Ok { summary } => Ok(summary),
        Answer::Accepted => Err(anyhow!("the lb-agent of {iface} acknowledged the {} request twice; see its log", request.word())),
        Answer::Error { reasons } => {
            Err(coded(ExitCode::Refused, anyhow!("the running agent refused the {} request ({}):\n{reasons}", request.word(), request.keeps())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::exit_code;
    use crate::control::server;
    use std::io::{BufRead as _, Write as _};
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    const IFACE: &str = "eth0";
    const ACCEPTED: &str = "{\"v\":1,\"answer\":\"accepted\"}\n";
    const ACCEPTED_THEN_REFUSED: &str =
        "{\"v\":1,\"answer\":\"accepted\"}\n{\"v\":1,\"answer\":\"error\",\"reasons\":\"lb.ring_size: 65537 -> 4099\"}\n";

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static SEQ: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!("lb-client-test-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst)));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            TempDir(dir)
        }
        fn socket(&self) -> PathBuf {
            socket_path(&self.0, IFACE)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn limits(acknowledge_ms: u64, result_ms: u64) -> Limits {
        Limits { acknowledge: Duration::from_millis(acknowledge_ms), result: Duration::from_millis(result_ms) }
    }

    /// The exit code of a failed request, and how long it took.
    fn failure(dir: &TempDir, limits: Limits) -> (ExitCode, String, Duration) {
        let started = Instant::now();
        let e = request(&dir.0, IFACE, &Request::Reload { dry_run: false }, limits).expect_err("the request succeeded");
        (exit_code::of(&e), format!("{e:#}"), started.elapsed())
    }

    /// A fake agent: accepts one connection, reads the request, writes `lines` and then keeps the connection open for `hold`.
    fn fake_agent(dir: &TempDir, lines: &'static str, hold: Duration) -> std::thread::JoinHandle<()> {
        let listener = UnixListener::bind(dir.socket()).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut request = String::new();
            std::io::BufReader::new(&stream).read_line(&mut request).unwrap();
            assert_eq!(Request::decode(&request), Ok(Request::Reload { dry_run: false }));
            let _ = (&stream).write_all(lines.as_bytes());
            std::thread::sleep(hold);
        })
    }

    #[test]
    fn no_socket_means_not_running() {
        let dir = TempDir::new();
        let (code, msg, _) = failure(&dir, limits(500, 500));
        assert_eq!(code, ExitCode::NotRunning, "{msg}");
        assert!(msg.contains("lb-agent run"), "{msg}");
    }

    #[test]
    fn a_socket_nobody_listens_on_means_not_running() {
        let dir = TempDir::new();
        drop(UnixListener::bind(dir.socket()).unwrap());
        assert!(dir.socket().exists(), "the stale socket file stays");
        let (code, msg, _) = failure(&dir, limits(500, 500));
        assert_eq!(code, ExitCode::NotRunning, "{msg}");
    }

    #[test]
    fn a_listener_that_never_answers_means_no_answer_within_the_timeout() {
        let dir = TempDir::new();
        // Bound and listening, never accepting: a stopped agent, as the kernel sees it.
        let _listener = UnixListener::bind(dir.socket()).unwrap();
        let (code, msg, took) = failure(&dir, limits(300, 10_000));
        assert_eq!(code, ExitCode::NoAnswer, "{msg}");
        assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(1300), "took {took:?}");
        assert!(msg.contains("did not answer") && msg.contains("300ms"), "{msg}");
    }

    #[test]
    fn an_acknowledged_request_without_result_means_no_result_after_the_result_limit() {
        let dir = TempDir::new();
        let agent = fake_agent(&dir, ACCEPTED, Duration::from_millis(1500));
        let (code, msg, took) = failure(&dir, limits(300, 600));
        assert_eq!(code, ExitCode::NoResult, "{msg}");
        assert!(took >= Duration::from_millis(600) && took < Duration::from_millis(1400), "took {took:?}: the result limit, not the acknowledgement's");
        agent.join().unwrap();
    }

    #[test]
    fn a_refusal_means_refused_with_the_agents_reasons() {
        let dir = TempDir::new();
        let agent = fake_agent(&dir, ACCEPTED_THEN_REFUSED, Duration::ZERO);
        let (code, msg, _) = failure(&dir, limits(1000, 1000));
        assert_eq!(code, ExitCode::Refused, "{msg}");
        assert!(msg.contains("lb.ring_size: 65537 -> 4099") && msg.contains("keeps the old config"), "{msg}");
        agent.join().unwrap();
    }

    /// The real control task: a silent client does not delay a request, and
    /// the answer the main loop gives reaches the client.
    #[test]
    fn the_server_answers_while_a_silent_client_is_connected() {
        let dir = TempDir::new();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (server, mut requests) = {
            let _context = runtime.enter();
            server::start(tokio::net::UnixListener::bind(dir.socket()).unwrap())
        };
        let main_loop = runtime.spawn(async move {
            let pending = requests.recv().await.expect("a request");
            assert_eq!(pending.request, Request::Reload { dry_run: false });
            pending.answer(Answer::ok("1 VIP changed"));
        });
        let _silent = std::os::unix::net::UnixStream::connect(dir.socket()).unwrap();
        let started = Instant::now();
        let summary = request(&dir.0, IFACE, &Request::Reload { dry_run: false }, limits(1000, 1000)).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(summary, "1 VIP changed");
        assert!(started.elapsed() < server::REQUEST_READ_TIMEOUT, "waited for the silent client: {:?}", started.elapsed());
        runtime.block_on(async {
            main_loop.await.unwrap();
            server.stop().await;
        });
    }

    #[test]
    fn an_unknown_request_is_refused_without_acknowledgement() {
        let dir = TempDir::new();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let answer = runtime.block_on(async {
            let (server, _requests) = server::start(tokio::net::UnixListener::bind(dir.socket()).unwrap());
            let mut stream = UnixStream::connect(dir.socket()).await.unwrap();
            stream.write_all(b"{\"v\":1,\"request\":\"reboot\"}\n").await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            server.stop().await;
            answer
        });
        assert_eq!(answer.lines().count(), 1, "no acknowledgement: {answer:?}");
        match Answer::decode(&answer) {
            Answer::Error { reasons } => assert!(reasons.contains("unknown variant `reboot`"), "{reasons}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn timeouts_parse_within_bounds() {
        assert_eq!(parse_timeout("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_timeout("0.5"), Ok(Duration::from_millis(500)));
        for bad in ["0", "-1", "601", "soon"] {
            assert!(parse_timeout(bad).is_err(), "{bad} accepted");
        }
    }
}

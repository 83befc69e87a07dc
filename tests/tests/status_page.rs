//! The status page at `/` of `lb.metrics_listen`, in a real headless browser
//! (Debian's chromium, see `lb_tests::browser`) run inside the LB's
//! namespace of the e2e topology: every VIP and backend of the config
//! appears with the state `lb-agent stats --json` reads from the same map,
//! the generation and the fingerprint `lb-agent check` prints; when a
//! backend's server stops, the same open page shows it down after one of
//! its own reloads. A screenshot is kept under
//! `target/lb-test-artifacts/status-page.png`.
//! Root only (namespaces, XDP), like `e2e.rs`; run with `--test-threads=1`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lb_agent::metrics::status_page::REFRESH_SECONDS;
use lb_tests::agent::{self, Proto};
use lb_tests::browser::{self, Browser};
use lb_tests::lab::Lab;
use lb_tests::metrics::DEFAULT_LISTEN;
use lb_tests::topology::{self, LB, VIP_V4, backend_v4};

const BACKENDS: usize = 3;
/// Health checks of `web-v4`: short, so the backend goes down quickly.
const INTERVAL_MS: u64 = 300;
const CHECK_TIMEOUT_MS: u64 = 200;
const FAILS: u32 = 2;
/// Longest wait for the first complete page.
const FIRST_PAGE: Duration = Duration::from_secs(20);
/// Longest wait for the down state: the checks' fall, one refresh, and
/// scheduling slack on a loaded machine.
const DOWN_WITHIN: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(200);
const SCREENSHOT_TIMEOUT: Duration = Duration::from_secs(60);

/// The e2e config (web-v4, web-v6, dns-v4 on b1..b3), web-v4 health-checked.
fn config() -> toml::Table {
    let mut c = agent::e2e_config(BACKENDS);
    let health: toml::Table = format!("interval = \"{INTERVAL_MS}ms\"\ntimeout = \"{CHECK_TIMEOUT_MS}ms\"\nfails = {FAILS}\npasses = 1\n")
        .parse()
        .expect("valid TOML");
    let vips = c.get_mut("vip").and_then(|v| v.as_array_mut()).expect("the e2e config has VIPs");
    let web_v4 = vips.iter_mut().find(|v| v["name"].as_str() == Some("web-v4")).expect("web-v4");
    web_v4.as_table_mut().expect("a table").insert("health".into(), toml::Value::Table(health));
    c
}

/// What the page shows: VIP -> (its state, backend -> state), read from the
/// `data-*` attributes of the DOM chromium serialised.
#[derive(Debug, Default, PartialEq)]
struct Shown {
    vips: BTreeMap<String, (String, BTreeMap<String, String>)>,
    generation: Option<String>,
    fingerprint: Option<String>,
}

/// The value of `name="..."` in `tag`.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let end = tag[start..].find('"')? + start;
    Some(tag[start..end].to_string())
}

/// The text between `<tag id="id">` and the next `<`.
fn text_of(dom: &str, id: &str) -> Option<String> {
    let open = format!(" id=\"{id}\">");
    let at = dom.find(&open)? + open.len();
    Some(dom[at..at + dom[at..].find('<')?].to_string())
}

fn shown(dom: &str) -> Shown {
    let mut out = Shown { generation: text_of(dom, "generation"), fingerprint: text_of(dom, "fingerprint"), ..Shown::default() };
    for section in dom.split("<section ").skip(1) {
        let tag = &section[..section.find('>').unwrap_or(section.len())];
        let (Some(vip), Some(state)) = (attribute(tag, "data-vip"), attribute(tag, "data-state")) else { continue };
        let body = &section[..section.find("</section>").unwrap_or(section.len())];
        let rows = body
            .split("<tr ")
            .skip(1)
            .filter_map(|row| {
                let tag = &row[..row.find('>')?];
                Some((attribute(tag, "data-backend")?, attribute(tag, "data-state")?))
            })
            .collect();
        out.vips.insert(vip, (state, rows));
    }
    out
}

/// Polls the page until `done` holds for what it shows, at most `limit`.
fn wait_for(browser: &mut Browser, limit: Duration, what: &str, done: impl Fn(&Shown) -> bool) -> (String, Shown) {
    let deadline = Instant::now() + limit;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(dom) = browser.dom().unwrap_or_else(|e| panic!("{e:#}")) {
            let s = shown(&dom);
            if done(&s) {
                return (dom, s);
            }
            last = Some(dom);
        }
        std::thread::sleep(POLL);
    }
    panic!("the page did not show {what} within {limit:?}; last page:\n{}", last.unwrap_or_default());
}

fn artifact_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| agent::workspace_root().join("target"), PathBuf::from);
    target.join("lb-test-artifacts")
}

#[test]
fn the_status_page_shows_every_vip_and_backend_and_a_down_backend_after_its_next_refresh() {
    const TEST: &str = "the_status_page_shows_every_vip_and_backend_and_a_down_backend_after_its_next_refresh";
    if !topology::root_or_skip(TEST, "network namespaces, XDP") {
        return;
    }
    browser::chromium().unwrap_or_else(|e| panic!("{e:#}"));
    let bins = lb_tests::lab_bins!();
    let mut lab = Lab::start(bins, BACKENDS, config(), &|m| eprintln!("[{TEST}] {m}")).unwrap_or_else(|e| panic!("starting the lab: {e:#}"));
    // Some traffic, so that the rates have something to show.
    let records = lab.client(Proto::Udp, std::net::SocketAddr::new(VIP_V4.into(), 53), 20, None, 2000).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(records.iter().all(|r| r.ok), "{records:?}");

    let ns = lab.topo.ns_name(LB).to_string();
    let url = format!("http://{DEFAULT_LISTEN}/");
    let mut page = Browser::open(&ns, &url, "status").unwrap_or_else(|e| panic!("opening {url} in chromium: {e:#}"));
    let web_v4 = |s: &Shown| s.vips.get("web-v4").cloned().unwrap_or_default();
    let b1: IpAddr = backend_v4(1).into();
    let (dom, first) = wait_for(&mut page, FIRST_PAGE, "web-v4's backends up", |s| {
        let (state, rows) = web_v4(s);
        state == "up" && rows.len() == BACKENDS && rows.values().all(|r| r == "up")
    });

    // Every VIP and member of `stats --json`, with the state it reads from the same HEALTH map.
    let stats = lab.settled_stats().unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(first.vips.len(), stats.vips.len(), "one section per VIP:\n{dom}");
    for v in &stats.vips {
        let (_, rows) = first.vips.get(&v.name).unwrap_or_else(|| panic!("VIP {} missing:\n{dom}", v.name));
        assert_eq!(rows.len(), v.backends.len(), "VIP {}: one row per backend:\n{dom}", v.name);
        for m in &v.backends {
            let expected = m.state.clone().unwrap_or_else(|| "unchecked".to_string());
            assert_eq!(rows.get(&m.address), Some(&expected), "VIP {} backend {}:\n{dom}", v.name, m.address);
        }
    }
    let check = lab.topo.exec_ok(LB, &lab.bins.agent.to_string_lossy(), &["check", "--config", &lab.config_path.to_string_lossy()]).unwrap();
    let fingerprint = check.lines().find_map(|l| l.strip_prefix("fingerprint")).map(|f| f.trim().to_string()).expect("check prints the fingerprint");
    assert_eq!(first.fingerprint.as_deref(), Some(fingerprint.as_str()), "{dom}");
    assert_eq!(first.generation.as_deref(), Some("1"), "{dom}");

    // Marks this very document: a reload drops the mark.
    page.eval("window.lbhLoaded = 'first'").unwrap_or_else(|e| panic!("{e:#}"));
    let stopped = Instant::now();
    lab.stop_server(0).unwrap_or_else(|e| panic!("{e:#}"));
    let (dom, after) = wait_for(&mut page, DOWN_WITHIN, "b1 down in web-v4", |s| web_v4(s).1.get(&b1.to_string()).is_some_and(|r| r == "down"));
    let took = stopped.elapsed();
    let mark = page.eval("window.lbhLoaded || 'reloaded'").unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(mark, "reloaded", "the down state came with one of the page's own reloads");
    let (state, rows) = web_v4(&after);
    assert_eq!(state, "degraded", "{dom}");
    assert_eq!(rows.values().filter(|r| *r == "up").count(), BACKENDS - 1, "the others stay up:\n{dom}");
    assert!(dom.contains("refused") || dom.contains("timeout"), "b1's last check says why:\n{dom}");
    eprintln!("[{TEST}] b1 shown down {:.1} s after its server stopped (fall {FAILS} x {INTERVAL_MS} ms, refresh {REFRESH_SECONDS} s)", took.as_secs_f64());
    drop(page);

    let dir = artifact_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("status-page.png");
    let _ = std::fs::remove_file(&png);
    browser::screenshot(&ns, &url, &png, SCREENSHOT_TIMEOUT).unwrap_or_else(|e| panic!("{e:#}"));
    let size = std::fs::metadata(&png).unwrap().len();
    assert!(size > 10_000, "a screenshot of a rendered page, not an empty one: {size} bytes");
    eprintln!("[{TEST}] screenshot: {} ({size} bytes)", png.display());
}

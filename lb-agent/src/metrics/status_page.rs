//! The read-only status page at `/` of `lb.metrics_listen`: what an operator
//! looks at during an incident (HAProxy's stats page, NGINX Plus's
//! dashboard). Server-rendered HTML from the very reading a scrape encodes
//! ([`super::exposition::Sample`] and [`super::exposition::members`]); it
//! reloads itself every [`REFRESH_SECONDS`] (a `<meta>` refresh: no script,
//! no external asset, nothing to build). Every text from the config or the
//! kernel is escaped.
//!
//! Elements carry `data-vip`, `data-backend` and `data-state` attributes so
//! that tools (and the browser test) read states without parsing prose.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use crate::health::report::{reason_label, state_label, MemberHealth};
use crate::rates::{Rate, Rates};

use super::exposition::{members, Attachment, Programmed, Sample};

/// Seconds between the page's reloads: fresh enough to watch a backend
/// fail, a read of the maps per open page every few seconds.
pub const REFRESH_SECONDS: u32 = 3;

/// The page, from one reading; `rates` over the window since the previous
/// page was rendered (`None` on the first: no window yet).
pub fn render(programmed: &Programmed, attachment: &Attachment, sample: &Sample, rates: Option<&Rates>) -> String {
    let Programmed { config, plan, fingerprint, generation } = programmed;
    let mut out = String::with_capacity(8 * 1024);
    let title = format!("lb-agent on {}", attachment.interface);
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\"><title>{}</title><style>{STYLE}</style></head><body>",
        escape(&title)
    );
    let _ = writeln!(
        out,
        "<h1>{} <small>{} XDP, lb-agent {}</small></h1>",
        escape(&title),
        escape(attachment.mode),
        escape(env!("CARGO_PKG_VERSION"))
    );
    let size = config.lb.flow_table_size;
    let _ = writeln!(
        out,
        "<dl class=\"summary\"><dt>config generation</dt><dd id=\"generation\">{generation}</dd>\
         <dt>fingerprint</dt><dd><code id=\"fingerprint\">{}</code></dd>\
         <dt>flow table</dt><dd id=\"flow-table\">{} of {} flows ({})</dd>\
         <dt>ring size</dt><dd>{}</dd>\
         <dt>rates</dt><dd id=\"window\">{}</dd></dl>",
        escape(fingerprint),
        sample.flow_entries,
        size,
        percent(sample.flow_entries as f64 / f64::from(size.max(1))),
        plan.ring_size,
        match rates {
            Some(r) => format!("over the last {:.1} s; refreshes every {REFRESH_SECONDS} s", r.window.as_secs_f64()),
            None => format!("from the next refresh (in {REFRESH_SECONDS} s) on"),
        },
    );
    let health = members(config, plan, sample);
    for (name, members) in &health {
        let Some(vip) = config.vips.iter().find(|v| v.name == *name) else { continue };
        let Some(planned) = plan.vip(name) else { continue };
        let up = members.iter().filter(|(_, m)| m.is_up()).count();
        let state = match up {
            0 => "down",
            n if n == members.len() => "up",
            _ => "degraded",
        };
        let rate = rates.map(|r| r.vip(planned.row));
        let _ = write!(
            out,
            "<section class=\"vip\" data-vip=\"{n}\" data-state=\"{state}\"><h2>{n} <small>{} {}, hash {}, flow state {}</small> \
             <span class=\"state {state}\">{state}</span></h2>\n<p>{up} of {} backends up; {}</p>\n",
            escape(&SocketAddr::new(vip.address, vip.port).to_string()),
            escape(vip.protocol.as_str()),
            escape(vip.hash.as_str()),
            escape(vip.flow_state.as_str()),
            members.len(),
            show_rate(rate),
            n = escape(name),
        );
        out.push_str(
            "<table><thead><tr><th>backend</th><th>role</th><th>weight</th><th>health</th><th>last check</th>\
             <th>for</th><th>ring share</th><th>packets/s</th><th>bytes/s</th></tr></thead><tbody>\n",
        );
        for (address, m) in members {
            let backend = vip.backends.iter().find(|b| b.address == m.address);
            let rate = rates.and_then(|r| plan.backend_id(m.address).map(|id| r.backend(id)));
            member_row(&mut out, address, m, backend.map_or(0, |b| b.weight), sample.now_unix_ms, rate);
        }
        out.push_str("</tbody></table></section>\n");
    }
    out.push_str(
        "<p class=\"foot\">Backend packets and bytes are over all VIPs that use the backend. \
         Prometheus metrics: <a href=\"/metrics\">/metrics</a>.</p>\n</body></html>\n",
    );
    out
}

fn member_row(out: &mut String, address: &str, m: &MemberHealth, weight: u32, now_unix_ms: u64, rate: Option<Rate>) {
    let state = match m.entry {
        Some(e) => state_label(e.state),
        None => state_label(lb_common::health::HEALTH_UNCHECKED),
    };
    let (reason, since) = match m.entry {
        Some(e) => (reason_label(&e), age(Duration::from_millis(now_unix_ms.saturating_sub(e.since_unix_ms)))),
        None => ("-".to_string(), "-".to_string()),
    };
    let _ = writeln!(
        out,
        "<tr class=\"backend\" data-backend=\"{a}\" data-state=\"{state}\"><td>{a}</td><td>{}</td><td>{weight}</td>\
         <td><span class=\"state {state}\">{state}</span></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        if m.backup { "backup" } else { "primary" },
        escape(&reason),
        escape(&since),
        percent(m.ring_share),
        rate.map_or("-".into(), |r| format!("{:.1}", r.packets_per_second)),
        rate.map_or("-".into(), |r| bytes(r.bytes_per_second)),
        a = escape(address),
    );
}

fn show_rate(rate: Option<Rate>) -> String {
    match rate {
        Some(r) => format!("{:.1} packets/s, {}/s", r.packets_per_second, bytes(r.bytes_per_second)),
        None => "rates from the next refresh on".to_string(),
    }
}

fn percent(fraction: f64) -> String {
    format!("{:.1} %", fraction * 100.0)
}

/// Bytes with a binary prefix, e.g. `1.5 KiB`.
fn bytes(value: f64) -> String {
    let mut v = value;
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if v < 1024.0 {
            return format!("{v:.1} {unit}");
        }
        v /= 1024.0;
    }
    format!("{v:.1} TiB")
}

/// `42 s`, `3 min 5 s`, `2 h 1 min`.
fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// Text and attribute values: the five characters HTML gives meaning to.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}h1 small,h2 small{color:#666;font-weight:normal}\
dl.summary{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{color:#666}dd{margin:0}\
table{border-collapse:collapse;margin-bottom:1em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}\
th{background:#f3f3f3}.state{padding:0 .4em;border-radius:3px;color:#fff}.up{background:#2a7d2a}.down{background:#b22}\
.degraded{background:#c80}.unchecked{background:#777}.unknown{background:#555}.foot{color:#666}";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::Counters;
    use crate::health::report::HealthTable;
    use crate::metrics::shares::RingShares;
    use crate::test_config::{TestConfig, TestVip};
    use lb_common::health::{HEALTH_DOWN, HEALTH_UP, HealthEntry, HealthKey, HealthReason};
    use lb_common::Counter;

    #[test]
    fn escapes_the_five_html_characters() {
        assert_eq!(escape(r#"<a href="x">&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
    }

    #[test]
    fn every_vip_and_backend_with_its_state_reason_share_and_rates() {
        let config = TestConfig::new()
            .ring_size(1009)
            .vip(TestVip::new("web", "192.0.2.10:80").checked().backends(["198.51.100.11", "198.51.100.12"]))
            .vip(TestVip::new("dns", "[2001:db8:f::1]:53/udp").backends(["2001:db8::11"]))
            .parse();
        let plan = crate::plan::plan(&config);
        let id = |a: &str| plan.backend_id(a.parse().unwrap()).unwrap();
        let (b11, b12) = (id("198.51.100.11"), id("198.51.100.12"));
        let ring = vec![b12; plan.ring_size as usize];
        let shares = RingShares::from_rings(plan.ring_size, [(0, &ring[..])]);
        let mut health = HealthTable::new();
        let down = HealthEntry { state: HEALTH_DOWN, reason: HealthReason::Refused as u8, since_unix_ms: 1_000, ..Default::default() };
        health.insert(HealthKey { row: 0, backend_id: b11 }, down);
        health.insert(HealthKey { row: 0, backend_id: b12 }, HealthEntry { state: HEALTH_UP, ..Default::default() });
        let counters = Counters::default();
        let sample = Sample { counters: &counters, health: &health, shares: &shares, flow_entries: 262_144, now_unix_ms: 76_000 };
        let rates = Rates { window: Duration::from_secs(2), vips: vec![Rate { packets_per_second: 10.0, bytes_per_second: 1536.0 }], backends: Vec::new() };
        let programmed = Programmed::new(config, plan.clone(), 4);
        let attachment = Attachment { interface: "eth<0>".into(), mode: "native" };
        let page = render(&programmed, &attachment, &sample, Some(&rates));

        assert!(page.contains(&format!("http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\"")), "{page}");
        assert!(page.contains("lb-agent on eth&lt;0&gt;") && !page.contains("eth<0>"), "escaped: {page}");
        assert!(page.contains("<dd id=\"generation\">4</dd>"), "{page}");
        assert!(page.contains(&format!("<code id=\"fingerprint\">{}</code>", programmed.fingerprint)), "{page}");
        assert!(page.contains("262144 of 1048576 flows (25.0 %)"), "{page}");
        assert!(page.contains("<section class=\"vip\" data-vip=\"web\" data-state=\"degraded\">"), "{page}");
        assert!(page.contains("<section class=\"vip\" data-vip=\"dns\" data-state=\"up\">"), "{page}");
        assert!(page.contains("[2001:db8:f::1]:53 udp"), "{page}");
        assert!(page.contains("10.0 packets/s, 1.5 KiB/s"), "{page}");
        let row = |a: &str| page.lines().find(|l| l.contains(&format!("data-backend=\"{a}\""))).unwrap_or_else(|| panic!("{a} missing: {page}"));
        let (r11, r12, r6) = (row("198.51.100.11"), row("198.51.100.12"), row("2001:db8::11"));
        assert!(r11.contains("data-state=\"down\"") && r11.contains("refused") && r11.contains("1 min 15 s") && r11.contains("0.0 %"), "{r11}");
        assert!(r12.contains("data-state=\"up\"") && r12.contains("100.0 %"), "{r12}");
        assert!(r6.contains("data-state=\"unchecked\""), "an unchecked backend: {r6}");
        assert_eq!(page.matches("<tr class=\"backend\"").count(), 3);
    }

    #[test]
    fn the_first_page_has_no_rates_yet() {
        let config = TestConfig::new().vip(TestVip::new("web", "192.0.2.10:80").backends(["198.51.100.11"])).parse();
        let plan = crate::plan::plan(&config);
        let counters = Counters { vips: vec![Counter { packets: 5, bytes: 500 }], ..Counters::default() };
        let (health, shares) = (HealthTable::new(), RingShares::default());
        let sample = Sample { counters: &counters, health: &health, shares: &shares, flow_entries: 0, now_unix_ms: 0 };
        let page = render(&Programmed::new(config, plan, 1), &Attachment { interface: "eth0".into(), mode: "generic" }, &sample, None);
        assert!(page.contains("rates from the next refresh on") && !page.contains("packets/s,"), "{page}");
    }
}

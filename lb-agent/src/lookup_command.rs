//! `lb-agent lookup`: the backend a flow gets, computed from the config as
//! the kernel computes it; for a `flow_state = "backend"` VIP also the slot's
//! previous owners, which only the running balancer's `PREVIOUS` map knows.
//! Many flows at once ([`batch`]: one plan for all, instead of a process
//! per flow), and a VIP's whole ring ([`ring`]).
//!
//! Text output of one flow: the backend's address on the first line; for
//! such a VIP a second line `previous ADDRESS [ADDRESS]` (newest first: where
//! a backend without the connection sends the packet on, in order; `previous
//! none`; `previous unknown`, with the reason on stderr, when no balancer runs
//! with this config). `--json` and the batch: one [`FlowAnswer`] per flow and line.

use std::io::{BufRead, Write};
use std::net::IpAddr;

use anyhow::{Context as _, Result};
use lb_common::{second_chance::VIP_FLAG_SECOND_CHANCE, NO_BACKEND};
use serde::{Deserialize, Serialize};

use crate::config::{Config, Protocol};
use crate::dataplane::{live::LiveMaps, store::MapStore};
use crate::plan::{self, ring_digest, Plan};

/// One flow, as the packet carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    pub vip: IpAddr,
    pub port: u16,
    #[serde(with = "protocol_name")]
    pub protocol: Protocol,
    pub src: IpAddr,
    pub src_port: u16,
}

/// What `lookup --json` and the batch print per flow.
#[derive(Debug, Serialize)]
pub struct FlowAnswer {
    #[serde(flatten)]
    pub flow: Flow,
    /// The backend the flow gets; `None` with `error` set.
    pub backend: Option<IpAddr>,
    /// `flow_state = "backend"` VIPs only: the slot's previous owners, newest
    /// first, space-separated ("none" if it has none, "unknown" if the running
    /// balancer cannot be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `lookup --ring VIP --json`.
#[derive(Debug, Serialize)]
pub struct RingAnswer {
    pub vip: String,
    pub ring_size: u32,
    pub ring_digest: String,
    /// Slot by slot, the backend with every backend up (`null`: no backend).
    pub slots: Vec<Option<IpAddr>>,
}

/// Lookups against one config: the plan is built once.
pub struct Lookup<'a> {
    config: &'a Config,
    fresh: Plan,
    /// The running balancer's maps and the plan keeping its ids, opened at the first second-chance VIP.
    running: Option<Result<(LiveMaps, Plan), String>>,
    /// Whether the reason for a `previous unknown` was printed (once per batch).
    warned: bool,
}

impl<'a> Lookup<'a> {
    pub fn new(config: &'a Config) -> Lookup<'a> {
        Lookup { config, fresh: plan::plan(config), running: None, warned: false }
    }

    /// The answer for one flow (errors inside it: a batch goes on).
    pub fn flow(&mut self, flow: &Flow) -> FlowAnswer {
        let mut answer = FlowAnswer { flow: flow.clone(), backend: None, previous: None, error: None };
        let Some(planned) = plan::find_vip(&self.fresh, flow.vip, flow.port, flow.protocol.number()) else {
            answer.error = Some(format!("no VIP {} port {} {} in the config", flow.vip, flow.port, flow.protocol));
            return answer;
        };
        let id = plan::lookup(&self.fresh, planned, flow.src, flow.src_port, flow.port);
        match self.fresh.backend(id) {
            Some(b) => answer.backend = Some(b.address),
            None => answer.error = Some("the VIP's ring is empty".into()),
        }
        if planned.meta.flags & VIP_FLAG_SECOND_CHANCE != 0 {
            // The current owner needs only the config; the previous one the kernel.
            answer.previous = Some(match self.previous_owners(flow) {
                Ok(p) if p.is_empty() => "none".to_string(),
                Ok(p) => p.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(" "),
                Err(e) => {
                    if !std::mem::replace(&mut self.warned, true) {
                        eprintln!("cannot read the previous owners (is `lb-agent run` running with this config's bpffs_dir?): {e:#}");
                    }
                    "unknown".to_string()
                }
            });
        }
        answer
    }

    /// The previous owners of the flow's slot in the running balancer,
    /// newest first (its rows and ids are the ones its reloads kept, so the
    /// plan is made keeping them).
    fn previous_owners(&mut self, flow: &Flow) -> Result<Vec<IpAddr>> {
        let config = self.config;
        let running = self.running.get_or_insert_with(|| {
            let open = || -> Result<(LiveMaps, Plan)> {
                let live = LiveMaps::open(&config.lb.bpffs_dir)?;
                let plan = plan::plan_keeping(config, &live.kept()?).map_err(anyhow::Error::msg)?;
                Ok((live, plan))
            };
            open().map_err(|e| format!("{e:#}"))
        });
        let (live, running) = running.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        let vip = plan::find_vip(running, flow.vip, flow.port, flow.protocol.number()).context("the VIP is not in the running plan")?;
        let Some(slot) = plan::slot(running, vip, flow.src, flow.src_port, flow.port) else { return Ok(Vec::new()) };
        let Some(owners) = live.previous_row(vip.row, running.ring_size)?.get(slot as usize).copied() else { return Ok(Vec::new()) };
        // A previous owner the config removed is in BACKENDS, not in the plan.
        let entries = live.backend_entries()?;
        owners
            .into_iter()
            .take_while(|&id| id != NO_BACKEND)
            .map(|id| {
                let entry = entries.get(&id).with_context(|| format!("previous owner id {id} has no BACKENDS entry"))?;
                lb_common::words_addr(&entry.addr, entry.family).with_context(|| format!("previous owner id {id} has no address family"))
            })
            .collect()
    }
}

/// One flow, as text or one JSON line.
pub fn run(config: &Config, flow: &Flow, json: bool) -> Result<String> {
    let answer = Lookup::new(config).flow(flow);
    if json {
        return Ok(format!("{}\n", serde_json::to_string(&answer)?));
    }
    if let Some(e) = answer.error {
        anyhow::bail!("{e}");
    }
    let mut out = format!("{}\n", answer.backend.expect("set when there is no error"));
    if let Some(p) = answer.previous {
        out += &format!("previous {p}\n");
    }
    Ok(out)
}

/// Reads one flow a line from `input` (`VIP PORT PROTOCOL SRC SRC_PORT`, or
/// a JSON object with those fields as `lookup --json` prints them; blank
/// lines and `#` comments skipped) and writes one [`FlowAnswer`] JSON line
/// each. A bad line gets an answer with `error` and the batch goes on;
/// returns how many lines failed.
pub fn batch(config: &Config, input: impl BufRead, mut output: impl Write) -> Result<usize> {
    let mut lookup = Lookup::new(config);
    let mut failed = 0;
    for (n, line) in input.lines().enumerate() {
        let line = line.context("reading the flows")?;
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let answer = match parse_flow(text) {
            Ok(flow) => lookup.flow(&flow),
            Err(e) => {
                failed += 1;
                writeln!(output, "{}", serde_json::json!({ "line": n + 1, "input": text, "error": e }))?;
                continue;
            }
        };
        failed += usize::from(answer.error.is_some());
        writeln!(output, "{}", serde_json::to_string(&answer)?)?;
    }
    output.flush()?;
    Ok(failed)
}

/// One batch line.
pub fn parse_flow(text: &str) -> Result<Flow, String> {
    if text.starts_with('{') {
        return serde_json::from_str(text).map_err(|e| format!("not a flow object: {e}"));
    }
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [vip, port, protocol, src, src_port] = fields[..] else {
        return Err(format!("expected `VIP PORT PROTOCOL SRC SRC_PORT` (5 fields), got {}", fields.len()));
    };
    let addr = |s: &str, what: &str| s.parse::<IpAddr>().map_err(|_| format!("{what} {s:?} is not an IP address"));
    let port_of = |s: &str, what: &str| s.parse::<u16>().map_err(|_| format!("{what} {s:?} is not a port"));
    Ok(Flow { vip: addr(vip, "VIP")?, port: port_of(port, "port")?, protocol: protocol_name::parse(protocol)?, src: addr(src, "source")?, src_port: port_of(src_port, "source port")? })
}

/// `lookup --ring VIP` (a name, or an address one VIP has): the VIP's
/// all-up ring, one `SLOT BACKEND` line per slot, or one [`RingAnswer`].
pub fn ring(config: &Config, vip: &str, json: bool) -> Result<String> {
    let v = crate::control::drains::find_vip(config, vip).map_err(anyhow::Error::msg)?;
    let fresh = plan::plan(config);
    let planned = fresh.vip(&v.name).context("the VIP is not in the plan")?;
    let slots: Vec<Option<IpAddr>> = planned.ring().iter().map(|&id| fresh.backend(id).map(|b| b.address)).collect();
    let answer = RingAnswer { vip: v.name.clone(), ring_size: fresh.ring_size, ring_digest: ring_digest::label(planned.ring_digest), slots };
    if json {
        return Ok(format!("{}\n", serde_json::to_string(&answer)?));
    }
    let mut out = format!("# vip {:?} ring size {} ring digest {}\n", answer.vip, answer.ring_size, answer.ring_digest);
    for (slot, b) in answer.slots.iter().enumerate() {
        out += &format!("{slot} {}\n", b.map_or("none".to_string(), |a| a.to_string()));
    }
    Ok(out)
}

/// A protocol as the config spells it (`tcp`, `udp`).
mod protocol_name {
    use crate::config::Protocol;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub(super) fn parse(s: &str) -> Result<Protocol, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(format!("protocol {s:?} is neither tcp nor udp")),
        }
    }

    pub(super) fn serialize<S: Serializer>(p: &Protocol, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Protocol, D::Error> {
        parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_config::{TestConfig, TestVip};

    fn config() -> Config {
        TestConfig::new().ring_size(13).vip(TestVip::new("web", "192.0.2.10:80").backends(["198.51.100.11", "198.51.100.12"])).parse()
    }

    #[test]
    fn a_batch_answers_every_line_like_single_lookups_and_goes_on_after_bad_ones() {
        let config = config();
        let input = "# comment\n192.0.2.10 80 tcp 198.51.100.10 40000\n\n{\"vip\":\"192.0.2.10\",\"port\":80,\"protocol\":\"tcp\",\"src\":\"203.0.113.7\",\"src_port\":5}\n192.0.2.99 80 tcp 198.51.100.10 1\nnonsense\n";
        let mut out = vec![];
        let failed = batch(&config, input.as_bytes(), &mut out).unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!((lines.len(), failed), (4, 2));
        for line in &lines[..2] {
            let flow: Flow = serde_json::from_value(line.clone()).unwrap();
            let single = run(&config, &flow, false).unwrap();
            assert_eq!(line["backend"].as_str().unwrap(), single.trim(), "batch and single lookups agree");
        }
        assert!(lines[2]["error"].as_str().unwrap().contains("no VIP 192.0.2.99"));
        assert_eq!(lines[3]["line"], 6);
    }

    #[test]
    fn the_ring_lists_every_slot_with_the_plans_owner_and_digest() {
        let config = config();
        let text = ring(&config, "web", false).unwrap();
        let p = plan::plan(&config);
        let v = p.vip("web").unwrap();
        assert_eq!(text.lines().count(), 1 + 13);
        assert!(text.lines().next().unwrap().contains(&ring_digest::label(v.ring_digest)));
        for (slot, &id) in v.ring().iter().enumerate() {
            assert_eq!(text.lines().nth(slot + 1).unwrap(), format!("{slot} {}", p.backend(id).unwrap().address));
        }
        let json: serde_json::Value = serde_json::from_str(&ring(&config, "192.0.2.10", true).unwrap()).unwrap();
        assert_eq!(json["slots"].as_array().unwrap().len(), 13);
    }
}

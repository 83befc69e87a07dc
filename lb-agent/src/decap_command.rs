//! `lb-agent decap`: attaches `xdp_decap` on a backend host until told to
//! stop; serves its counters with `--metrics`, and prints them per outcome
//! (every `DecapReason`) when it stops. Warns at start when the interface
//! does not forward, which second-chance redirects need.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use lb_common::programs;

use crate::config::XdpMode;
use crate::dataplane;
use crate::metrics::{decap::DecapMetrics, server};

pub struct DecapOptions {
    pub iface: String,
    pub xdp_mode: XdpMode,
    /// UDP port of GUE tunnels: the LB hosts' `lb.gue_port`.
    pub gue_port: u16,
    /// Where to serve the decap counters (`/metrics`), if anywhere.
    pub metrics: Option<SocketAddr>,
}

/// Runs until `shutdown` resolves (to the signal's name); returns the
/// per-outcome counts.
pub async fn run(opts: DecapOptions, shutdown: impl Future<Output = &'static str>) -> Result<String> {
    // Bound before anything is attached: a taken port changes nothing.
    let listener = match opts.metrics {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("--metrics {addr}: cannot listen there (port taken? choose another address)")
        })?),
        None => None,
    };
    for warning in forwarding_warnings(&opts.iface, |path| std::fs::read_to_string(path)) {
        tracing::warn!("{warning}");
    }
    let mut ebpf = dataplane::load_decap_object(opts.gue_port)?;
    dataplane::load_program(&mut ebpf, programs::DECAP)?;
    let (link, mode) = dataplane::attach(program(&mut ebpf)?, &opts.iface, opts.xdp_mode)?;
    let ebpf = Arc::new(Mutex::new(ebpf));
    let server = listener.map(|l| {
        tracing::info!("serving the decap counters at http://{}{}", l.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()), server::METRICS_PATH);
        server::spawn(l, Arc::new(DecapMetrics(ebpf.clone())))
    });
    crate::runtime::ready(&format!("attached {} to {} in {mode} mode (GUE on UDP port {})", programs::DECAP, opts.iface, opts.gue_port));
    let signal = shutdown.await;
    if let Some(task) = server {
        task.abort();
    }
    let mut ebpf = ebpf.lock().unwrap_or_else(|e| e.into_inner());
    let counters = dataplane::read_counters(&ebpf)?;
    program(&mut ebpf)?.detach(link)?;
    tracing::info!("{signal}: detached {} from {}", programs::DECAP, opts.iface);
    Ok(crate::metrics::decap::summary(&counters.decap))
}

fn program(ebpf: &mut aya::Ebpf) -> Result<&mut aya::programs::Xdp> {
    Ok(ebpf.program_mut(programs::DECAP).with_context(|| format!("program {} missing", programs::DECAP))?.try_into()?)
}

/// One warning per family whose forwarding is off on `iface`, read through
/// `read` (a path under /proc/sys → its contents). A second-chance redirect
/// asks `bpf_fib_lookup` for the route to the previous owner, and the kernel
/// answers "forwarding disabled" unless the receiving interface forwards
/// (`net.ipv4.conf.IF.forwarding`, `net.ipv6.conf.IF.forwarding`). A family
/// whose file is missing (IPv6 off, or no such interface: attaching reports
/// that) gets no warning.
fn forwarding_warnings(iface: &str, read: impl Fn(&str) -> std::io::Result<String>) -> Vec<String> {
    ["ipv4", "ipv6"]
        .into_iter()
        .filter(|family| read(&format!("/proc/sys/net/{family}/conf/{iface}/forwarding")).is_ok_and(|v| v.trim() == "0"))
        .map(|family| {
            // In a sysctl name a dot separates levels: a dot in an interface name (VLAN) is written '/'.
            let name = format!("net.{family}.conf.{}.forwarding", iface.replace('.', "/"));
            format!(
                "{name} is 0: second-chance redirects of {family} GUE packets to a previous owner fail \
                 (counted as redirect_failed; the packet is passed and the stack answers RST, breaking that \
                 connection); run `sysctl -w {name}=1` on this backend if its LB hosts have flow_state = \"backend\" VIPs"
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_from(files: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> std::io::Result<String> {
        move |path| {
            files.iter().find(|(p, _)| *p == path).map(|(_, v)| v.to_string()).ok_or_else(|| std::io::ErrorKind::NotFound.into())
        }
    }

    #[test]
    fn a_warning_per_family_that_does_not_forward() {
        let both_off = read_from(&[("/proc/sys/net/ipv4/conf/eth0/forwarding", "0\n"), ("/proc/sys/net/ipv6/conf/eth0/forwarding", "0\n")]);
        let warnings = forwarding_warnings("eth0", both_off);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("sysctl -w net.ipv4.conf.eth0.forwarding=1") && warnings[0].contains("redirect_failed"), "{}", warnings[0]);
        assert!(warnings[1].contains("sysctl -w net.ipv6.conf.eth0.forwarding=1") && warnings[1].contains("RST"), "{}", warnings[1]);

        let v4_on = read_from(&[("/proc/sys/net/ipv4/conf/eth0/forwarding", "1\n"), ("/proc/sys/net/ipv6/conf/eth0/forwarding", "0\n")]);
        let warnings = forwarding_warnings("eth0", v4_on);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].starts_with("net.ipv6.conf.eth0.forwarding is 0"), "{}", warnings[0]);

        let on = read_from(&[("/proc/sys/net/ipv4/conf/eth0/forwarding", "1\n"), ("/proc/sys/net/ipv6/conf/eth0/forwarding", "1\n")]);
        assert!(forwarding_warnings("eth0", on).is_empty());
        assert!(forwarding_warnings("eth0", read_from(&[])).is_empty(), "no sysctl files: nothing to say");
    }

    #[test]
    fn a_vlan_interface_is_named_as_sysctl_spells_it() {
        let off = read_from(&[("/proc/sys/net/ipv4/conf/eth0.10/forwarding", "0\n")]);
        let warnings = forwarding_warnings("eth0.10", off);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("sysctl -w net.ipv4.conf.eth0/10.forwarding=1"), "{}", warnings[0]);
    }
}

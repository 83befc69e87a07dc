//! `lb-agent decap`: attaches `xdp_decap` on a backend host until told to
//! stop; serves its counters with `--metrics`, and prints them per outcome
//! when it stops.

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

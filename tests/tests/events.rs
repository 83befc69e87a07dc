//! Kernel events (`lb-agent run --kernel-events`) through BPF_PROG_TEST_RUN:
//! loaded on, the balancer logs new flows and VIP packets it does not forward,
//! with addresses, ports, backend and reason, and stays silent about host
//! traffic; loaded off, it logs nothing and the verifier has removed the
//! logging code (the program the kernel runs is smaller). Needs root.

use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use aya_log::EbpfLogger;
use etherparse::PacketBuilder;
use lb_tests::bpf::{self, Loaded, Overrides};
use lb_tests::configs::{self, TestVip, BACKENDS_V4};
use lb_common::{programs, Action};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const OTHER_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const CLIENT_PORT: u16 = 40_000;
/// Offset of the outer IPv4 destination in an encapsulated frame.
const OUTER_DST: usize = 14 + 16;

/// One VIP on two backends.
fn config() -> String {
    let web = TestVip::new("web", "192.0.2.10:80").backends(&BACKENDS_V4[..2]);
    configs::unattached("fixture0").ring_size(1021).max_vips(2).max_backends(8).vip(web).static_macs().to_toml()
}

/// Collects the records aya-log hands over.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0.lock().unwrap().push(record.args().to_string());
    }
    fn flush(&self) {}
}

fn tcp(dst: Ipv4Addr, ttl: u8, syn: bool) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x10], [2, 0, 0, 0, 0, 2]).ipv4(CLIENT.octets(), dst.octets(), ttl);
    let builder = builder.tcp(CLIENT_PORT, 80, 1, 64_000);
    let builder = if syn { builder.syn() } else { builder.ack(1) };
    let mut out = Vec::new();
    builder.write(&mut out, b"hello").unwrap();
    out
}

struct Run {
    records: Vec<String>,
    /// Size of the program as the kernel runs it (after the verifier).
    translated: u32,
    /// Outer destination of the forwarded SYN.
    backend: Ipv4Addr,
}

/// Loads the balancer with kernel events on or off and runs three packets:
/// a SYN to the VIP (forwarded), a VIP packet with TTL 0 (dropped), a packet
/// for another host (passed).
fn run(kernel_events: bool) -> Run {
    let overrides = Overrides { kernel_events, flow_table_size: Some(64), ..Overrides::default() };
    let Loaded { mut ebpf, .. } = bpf::load(&config(), "events.toml", &[programs::BALANCER], overrides).expect("load the balancer");
    let capture = Capture::default();
    let mut logger = EbpfLogger::init_with_logger(&mut ebpf, capture.clone()).expect("open the aya-log ring buffer");

    let (action, out, _) = bpf::run(&ebpf, programs::BALANCER, &tcp(VIP, 64, true)).unwrap();
    assert_eq!(action, Action::Tx as u32, "the SYN is forwarded");
    let backend = Ipv4Addr::new(out[OUTER_DST], out[OUTER_DST + 1], out[OUTER_DST + 2], out[OUTER_DST + 3]);
    let (action, _, _) = bpf::run(&ebpf, programs::BALANCER, &tcp(VIP, 0, false)).unwrap();
    assert_eq!(action, Action::Drop as u32, "TTL 0 to a VIP is dropped");
    let (action, out, _) = bpf::run(&ebpf, programs::BALANCER, &tcp(OTHER_HOST, 64, true)).unwrap();
    assert_eq!(action, Action::Pass as u32, "host traffic passes");
    assert_eq!(out, tcp(OTHER_HOST, 64, true), "host traffic is untouched");

    logger.flush();
    let records = capture.0.lock().unwrap().clone();
    let program: &aya::programs::Xdp = ebpf.program(programs::BALANCER).unwrap().try_into().unwrap();
    let translated = program.info().unwrap().size_translated().expect("the kernel reports the translated size");
    Run { records, translated, backend }
}

#[test]
fn kernel_events_on_log_flows_and_decisions_off_cost_nothing() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: kernel-event fixtures load BPF programs and need root");
        return;
    }
    let on = run(true);
    let backends = ["198.51.100.11", "198.51.100.12"];
    assert!(backends.contains(&on.backend.to_string().as_str()), "forwarded to {}", on.backend);
    assert_eq!(on.records.len(), 2, "one record for the new flow, one for the drop, none for host traffic: {:?}", on.records);
    let flow = &on.records[0];
    assert!(
        flow.starts_with(&format!("new flow {CLIENT}:{CLIENT_PORT} -> {VIP}:80 proto 6: backend ")),
        "flow record: {flow:?}"
    );
    assert!(on.records[1].starts_with("ttl_zero (drop): "), "drop record: {:?}", on.records[1]);

    let off = run(false);
    eprintln!("records on: {:?}; program size on {} bytes, off {} bytes", on.records, on.translated, off.translated);
    assert_eq!(off.backend, on.backend, "events do not change the choice");
    assert!(off.records.is_empty(), "off logs nothing: {:?}", off.records);
    assert!(
        off.translated < on.translated,
        "off, the verifier removes the logging code: {} bytes of program vs {} on",
        off.translated,
        on.translated
    );
}

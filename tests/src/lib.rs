//! Test harness of the load balancer.
//!
//! - [`topology`]: network namespaces (client, LB, backends, a bridge) built and torn down by the tests.
//! - [`lab`]: a topology plus test servers, decap programs and a running `lb-agent`, used by the
//!   end-to-end tests (`tests/e2e.rs`) and by the `lb-demo` binary.
//! - [`ha_topology`]: LB hosts with BIRD behind a BGP/BFD router; [`ha_demo`]: the scenario of `cargo xtask demo --ha`.
//! - [`configs`]: the configs of the packet fixtures and the bench (lb-agent's test-config builder).
//! - [`agent`]: locating `lb-agent`, writing its config, reading `stats --json` and `lookup`.
//! - [`metrics`]: scraping the agent's Prometheus endpoint, promtool, sample values.
//! - [`client`]: the JSON lines printed by `lb-testclient` and the replies of `lb-testsrv`.
//! - [`held`]: many long-lived connections held by the test itself, checked after each step.
//! - [`owners`]: a VIP's ring as the running balancer has it (current and previous owners).
//! - [`packets`]: crafted-packet building blocks; [`capture`]: AF_PACKET sockets in the namespaces.
//! - [`netns`]: our own threads and listeners inside a namespace (health checks at scale).
//! - [`sock`]: the few socket operations std lacks (bind before connect, dual-stack listen).
//! - [`browser`]: headless chromium in a namespace, driven over the DevTools protocol (the status page test).

pub mod agent;
pub mod bpf;
pub mod browser;
pub mod capture;
pub mod client;
pub mod configs;
pub mod etcd_lab;
pub mod ha_demo;
pub mod ha_topology;
pub mod held;
pub mod lab;
pub mod metrics;
pub mod packets;
pub mod route_liveness;
pub mod netns;
pub mod owners;
pub mod sock;
pub mod topology;

//! The cluster's config source (etcd): the shared config document every LB
//! host of a cluster reads and watches, and the state each host publishes
//! so that `lb-agent cluster status` sees the fleet as one.
//!
//! etcd is never on the packet path: the agent applies a document like a
//! reload, keeps the last applied one on disk ([`cache`]) and goes on
//! forwarding with it whenever etcd is unreachable.
//!
//! - [`etcd`]: connecting (timeouts, TLS, user/password) and reading the document.
//! - [`follow`]: the task that watches the document and publishes this host's state under a lease.
//! - [`host_state`]: what a host publishes (one type for the agent and `cluster status`).
//! - [`cache`]: the last applied document on disk.
//! - [`status`]: whether etcd is reachable now, for logs, metrics and `stats`.

pub mod cache;
pub mod etcd;
pub mod follow;
pub mod host_state;
pub mod status;

pub use crate::config::compose::ClusterDoc;

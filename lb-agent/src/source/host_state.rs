//! What each LB host publishes under `<key>/hosts/<name>` (bound to its
//! lease, so a host that dies or is cut off disappears): one type, written
//! by the agent and read by `lb-agent cluster status`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    pub host: String,
    /// etcd revision of the document this host runs (0: none applied yet).
    pub applied_revision: i64,
    /// Documents applied since the agent started.
    pub generation: u64,
    /// `lb-agent check`'s fingerprint of the running config.
    pub fingerprint: String,
    /// Per VIP (`address:port/protocol`): a digest of what decides its flows'
    /// backends, so that hosts whose fingerprints differ can name the VIP.
    pub vips: BTreeMap<String, String>,
    /// VIP addresses this host announces now.
    pub announced: Vec<String>,
    pub backends_up: usize,
    pub backends_down: usize,
    /// Why the newest revision seen was not applied, if it was not.
    pub last_error: Option<String>,
    /// The newest revision this host has seen (applied or refused).
    pub seen_revision: i64,
    /// Seconds since the Unix epoch of this publication.
    pub updated_unix: u64,
}

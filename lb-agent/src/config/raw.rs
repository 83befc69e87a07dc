//! Raw (unvalidated) shapes, as serde reads them.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) lb: Option<RawLb>,
    #[serde(default, rename = "vip")]
    pub(super) vips: Vec<RawVip>,
    pub(super) announce: Option<crate::config::announce::RawAnnounce>,
    pub(super) source: Option<crate::config::source::RawSource>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLb {
    pub(super) interface: Option<String>,
    pub(super) xdp_mode: Option<String>,
    pub(super) tunnel_source_v4: Option<String>,
    pub(super) tunnel_source_v6: Option<String>,
    pub(super) ring_size: Option<i64>,
    pub(super) hash_seed: Option<i64>,
    pub(super) max_vips: Option<i64>,
    pub(super) max_backends: Option<i64>,
    pub(super) bpffs_dir: Option<String>,
    pub(super) run_dir: Option<String>,
    pub(super) flow_table_size: Option<i64>,
    pub(super) metrics_listen: Option<String>,
    pub(super) icmp_echo: Option<String>,
    pub(super) too_big: Option<String>,
    pub(super) unknown_port: Option<String>,
    pub(super) encap: Option<String>,
    pub(super) gue_port: Option<i64>,
    pub(super) previous_owner_window: Option<String>,
    pub(super) new_flow_guard: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVip {
    pub(super) name: Option<String>,
    pub(super) address: Option<String>,
    pub(super) port: Option<i64>,
    pub(super) protocol: Option<String>,
    pub(super) hash: Option<String>,
    pub(super) fragments: Option<String>,
    /// The older spelling of `flow_state` (true = "lb", false = "none").
    pub(super) flow_table: Option<bool>,
    pub(super) flow_state: Option<String>,
    pub(super) encap: Option<String>,
    pub(super) health: Option<RawHealth>,
    #[serde(default, rename = "backend")]
    pub(super) backends: Vec<RawBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) address: Option<String>,
    pub(super) weight: Option<i64>,
    pub(super) mac: Option<String>,
    pub(super) backup: Option<bool>,
    pub(super) health: Option<RawHealth>,
}

//! Defaults and limits of the config, each with its reason.

use super::*;

/// `auto`: let the kernel attach in native (driver) mode when the NIC supports
/// it and fall back to generic (skb) mode otherwise, so the same config works
/// on a production NIC and on a veth in a test namespace.
pub const DEFAULT_XDP_MODE: XdpMode = XdpMode::Auto;

/// 65,537 (a prime): the Maglev paper's own choice. At 1,000 backends every
/// backend still gets ~65 slots (balance within a few %), and a ring costs
/// 256 KiB per VIP.
pub const DEFAULT_RING_SIZE: u32 = limits::DEFAULT_RING_SIZE;

/// The smallest ring accepted: Maglev needs a prime, and a ring of 2 slots has
/// a single permutation step (skip is always 1). Rings this small are only
/// useful in tests that enumerate slots; production wants 100× the backends.
pub const MIN_RING_SIZE: u32 = 3;

/// The largest ring accepted (16 MiB per VIP), shared with the kernel side.
pub const MAX_RING_SIZE: u32 = limits::MAX_RING_SIZE;

/// 0: any fixed value works; what matters is that every LB host of a cluster
/// uses the same one, and the default is the value nobody has to remember.
pub const DEFAULT_HASH_SEED: u32 = 0;

/// 64 VIP rows: enough for a typical LB host, and 64 rings of the default size
/// are 16 MiB of kernel memory.
pub const DEFAULT_MAX_VIPS: u32 = limits::DEFAULT_MAX_VIPS;

/// Upper bound of `max_vips`: VIP rows beyond that are better served by more
/// LB hosts than by one huge `RINGS` array.
pub const MAX_MAX_VIPS: u32 = 4_096;

/// 4,096 backend ids (id 0 is reserved for "no backend", so 4,095 usable).
pub const DEFAULT_MAX_BACKENDS: u32 = limits::DEFAULT_MAX_BACKENDS;

/// Upper bound of `max_backends` (see also [`MAX_MEMBER_ENTRIES`]).
pub const MAX_MAX_BACKENDS: u32 = 65_536;

/// All rings together (`ring_size × max_vips × 4` bytes) must fit in 1 GiB:
/// the kernel allocates `RINGS` up front, whether the rows are used or not.
pub const MAX_RINGS_BYTES: u64 = 1 << 30;

/// Where the agent pins its maps (`lb-agent stats` reads them there).
/// `/sys/fs/bpf` is the conventional bpffs mount.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/lb";

/// Where a running agent keeps its lock file and control socket
/// (`<run_dir>/<interface>.lock`, `<run_dir>/<interface>.sock`): a tmpfs that a
/// reboot empties, like the agent's state.
pub const DEFAULT_RUN_DIR: &str = "/run/lb";

/// Flows the kernel remembers (see `lb_common::flows`).
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = lb_common::flows::DEFAULT_FLOW_TABLE_SIZE;

/// `MEMBERS` and `MEMBER_STATS` hold `max_vips × max_backends` entries,
/// allocated up front; `MEMBER_STATS` is per CPU (16 bytes per entry per
/// CPU: 4 MiB per CPU at the defaults, 64 MiB per CPU at this bound of 4 Mi
/// entries).
pub const MAX_MEMBER_ENTRIES: u64 = 1 << 22;
/// Default `lb.metrics_listen`: loopback only, so nothing is exposed beyond
/// the host until the operator chooses an address.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9110";

/// `lb.metrics_listen` value that turns the metrics endpoint off.
pub const METRICS_OFF: &str = "off";

/// 1: all backends equal unless the config says otherwise.
pub const DEFAULT_WEIGHT: u32 = 1;

/// Largest backend weight. Maglev's ring has a finite number of slots; with
/// weights up to 1,000 a weight-1 backend next to a weight-1,000 one still
/// gets dozens of slots on the default ring, so the ratio stays meaningful.
pub const MAX_WEIGHT: u32 = 1_000;

/// Longest VIP name (it is used as a metrics label).
pub const MAX_NAME_LEN: usize = 64;

/// Linux `IFNAMSIZ` minus the terminating NUL.
pub const MAX_IFNAME_LEN: usize = 15;

/// Longest path the kernel accepts from a system call (`PATH_MAX` minus
/// the terminating NUL): a longer pin path fails with `ENAMETOOLONG`.
pub const MAX_PATH_LEN: usize = libc::PATH_MAX as usize - 1;

/// Longest name of one path component (`NAME_MAX`).
pub const MAX_PATH_COMPONENT_LEN: usize = libc::NAME_MAX as usize;

/// `"ipip"`: what backends decapsulate without this project's decap program
/// (the kernel's ipip module). A `"backend"` VIP uses GUE whatever this says.
pub const DEFAULT_ENCAP: Encap = Encap::Ipip;

/// `"lb"`: today's flow table; second chance needs `lb-agent decap` on every
/// backend, which an operator opts into per VIP.
pub const DEFAULT_FLOW_STATE: FlowState = FlowState::Lb;

/// 6080, Katran's GUE port: backends that already run Katran's decap, and
/// firewall rules written for it, keep working.
pub const DEFAULT_GUE_PORT: u16 = lb_common::second_chance::DEFAULT_GUE_PORT;

/// One hour: long enough for the established connections that matter to
/// finish (or to be carried to the end of a rolling change); after it a slot
/// that changed forgets its previous owner, and that owner's id can go.
pub const DEFAULT_PREVIOUS_OWNER_WINDOW: Duration =
    Duration::from_secs(lb_common::second_chance::DEFAULT_DRAIN_SECONDS as u64);

/// Shortest `previous_owner_window`: the drain timer ticks once a second.
pub const MIN_PREVIOUS_OWNER_WINDOW: Duration = Duration::from_secs(1);

/// Longest `previous_owner_window` (7 days): a previous owner pins its
/// backend id; a longer window keeps removed backends' ids for no purpose.
pub const MAX_PREVIOUS_OWNER_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

//! The file names the agent pins under `lb.bpffs_dir`. Pure (no aya), so
//! that config validation, which must know the longest path the agent will
//! create there, and `pins`, which creates them, share one list.

use lb_common::maps;

/// File name of the pinned balancer program.
pub const PROGRAM_PIN: &str = "prog_xdp_balancer";
/// File name of the pinned XDP link.
pub const LINK_PIN: &str = "link_xdp";

/// Every name the agent pins under `lb.bpffs_dir`: the maps, the program, the link.
pub(crate) fn all() -> impl Iterator<Item = &'static str> {
    maps::ALL.iter().copied().chain([PROGRAM_PIN, LINK_PIN])
}

/// Length in bytes of the longest of [`all`].
pub(crate) fn longest() -> usize {
    all().map(str::len).max().unwrap_or(0)
}

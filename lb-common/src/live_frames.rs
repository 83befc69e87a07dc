//! The bench's live-frames section (`BPF_F_TEST_XDP_LIVE_FRAMES`: each
//! repeat of a test run is a real frame, really transmitted). The kernel
//! does not reset a frame's bytes between repeats, so a wrapper program
//! (`programs::LIVE_RESTORE`) writes the original headers back before it
//! tail-calls the measured program, and rotates the TCP source port over
//! `flows` flows; the veth peer counts what arrives (`programs::COUNT_DROP`).
//! The agent never loads these.

/// Bytes the wrapper restores: Ethernet, IPv4 and TCP headers without
/// options (every byte our programs and the floors rewrite in the frames the
/// section sends, which are exactly this long).
pub const RESTORE_LEN: usize = 54;
/// Offset of the TCP source port in such a frame.
pub const SRC_PORT_OFFSET: usize = 14 + 20;

/// The one entry of `maps::LIVE_FRAME`, written by the bench.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveFrame {
    /// Source ports used in turn, from the one in `bytes` up (1: only it).
    pub flows: u32,
    /// Repeats so far (the next port's index), counted by the wrapper.
    pub next: u32,
    pub bytes: [u8; RESTORE_LEN],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<LiveFrame>() == 64);

/// Names of the section's maps (not in `maps::ALL`: the agent never pins them).
pub mod maps {
    /// `Array<LiveFrame>` with one entry: the frame to restore.
    pub const LIVE_FRAME: &str = "LIVE_FRAME";
    /// `ProgramArray` with one entry: the measured program.
    pub const LIVE_TARGET: &str = "LIVE_TARGET";
    /// `PerCpuArray<Counter>` with one entry: frames the veth peer received.
    pub const PEER_RECEIVED: &str = "PEER_RECEIVED";
}

/// Names of the section's programs.
pub mod programs {
    /// Restores the frame, rotates the source port, tail-calls `LIVE_TARGET[0]`.
    pub const LIVE_RESTORE: &str = "xdp_live_restore";
    /// On the veth peer: counts each frame in `PEER_RECEIVED` and drops it.
    pub const COUNT_DROP: &str = "xdp_count_drop";
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], integers and bytes only, no implicit padding (size assertion).
unsafe impl aya::Pod for LiveFrame {}

//! The one place that turns packet offsets into pointers, always bounds-checked
//! against `data_end` so the verifier accepts every access that follows.
//!
//! Prefer [`read`] and [`write`]: they check and access in one step, so no
//! caller dereferences a packet pointer. [`ptr_at`] / [`ptr_at_mut`] remain
//! for field-by-field access to a header where copying it whole would cost
//! instructions, and for the checksum loops; each such dereference says why
//! it is sound.

use aya_ebpf::programs::XdpContext;

/// A header of type `T` at `offset` bytes into the packet, or `None` if the
/// packet is too short to hold it. Dereferencing the result is sound until
/// the packet is resized (`bpf_xdp_adjust_head` / `_tail`): every byte of
/// the `T` lies in `[data, data_end)`, which the kernel keeps readable and
/// writable for the program's run.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Like [`ptr_at`], for writing.
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    ptr_at::<T>(ctx, offset).map(|p| p as *mut T)
}

/// The `T` at `offset` bytes into the packet, or `None` if the packet is too
/// short to hold it.
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let p = ptr_at::<T>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that all of the `T` lies inside the packet;
    // unaligned because a packet offset has no alignment. `T: Copy` and the
    // callers' types (byte arrays, integers, headers of those) are valid for
    // any bytes.
    Some(unsafe { p.read_unaligned() })
}

/// Writes `value` at `offset` bytes into the packet; `None`, and nothing
/// written, if the packet is too short to hold it.
#[inline(always)]
pub fn write<T>(ctx: &XdpContext, offset: usize, value: T) -> Option<()> {
    let p = ptr_at_mut::<T>(ctx, offset)?;
    // SAFETY: `ptr_at_mut` checked that all of the `T` lies inside the
    // packet, which the program may write; unaligned as in `read`.
    unsafe { p.write_unaligned(value) };
    Some(())
}

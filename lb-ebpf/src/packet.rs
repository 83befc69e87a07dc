//! The one place that turns packet offsets into pointers, always bounds-checked
//! against `data_end` so the verifier accepts every access that follows.

use aya_ebpf::programs::XdpContext;

/// A header of type `T` at `offset` bytes into the packet, or `None` if the
/// packet is too short to hold it.
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

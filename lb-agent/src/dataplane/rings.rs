//! The `RINGS` map (and `PREVIOUS`, which has its shape) mapped into the agent's memory (the map is created with
//! `BPF_F_MMAPABLE`). Writing a slot is one store instead of one `bpf()`
//! call: a whole 65,537-slot ring goes in well under a millisecond, which is
//! what lets health changes and reloads apply many rings quickly. The BPF
//! program reads the same pages, and each 4-byte slot store is atomic, so
//! the kernel sees either the old or the new backend id of a slot, never a
//! torn value.
//!
//! The kernel fills a mapping's page tables at mmap time, so every mapped
//! page counts in the agent's resident memory (a 128-row map of 65,537-slot
//! rings is 64 MiB). The agent therefore maps one row at a time
//! ([`MappedRings::row`]) while it writes, and unmaps it after.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context as _, Result};
use aya::{maps::Map, Ebpf};
use lb_common::{maps, second_chance::PreviousOwners};

/// The kernel stores array elements `round_up(value_size, 8)` bytes apart
/// (`array_map_alloc`), so a `u32` slot occupies 8 bytes: its value is the
/// first 4 (the BPF program reads exactly those).
const ELEMENT_STRIDE: usize = 8;
const WORDS_PER_ELEMENT: usize = ELEMENT_STRIDE / size_of::<u32>();
// A `PREVIOUS` element fits the stride `RINGS` has, so both map alike.
const _: () = assert!(size_of::<PreviousOwners>() <= ELEMENT_STRIDE);

pub struct MappedRings {
    words: NonNull<AtomicU32>,
    /// Index of the first element of the mapping (a whole page's worth).
    first: usize,
    /// Elements in the mapping, from `first`.
    len: usize,
    map_bytes: usize,
    /// `RINGS` or `PREVIOUS`, for messages.
    name: &'static str,
}

// SAFETY: the mapping is plain shared memory accessed through atomics.
unsafe impl Send for MappedRings {}

impl MappedRings {
    /// Maps the `RINGS` map of a loaded object.
    pub fn new(ebpf: &Ebpf) -> Result<Self> {
        Self::named(ebpf, maps::RINGS)
    }

    /// Maps a map shaped like `RINGS` of a loaded object (`PREVIOUS`).
    pub fn named(ebpf: &Ebpf, name: &'static str) -> Result<Self> {
        let Some(Map::Array(data)) = ebpf.map(name) else {
            bail!("map {name} missing from the BPF object or not an array");
        };
        let info = data.info().with_context(|| format!("reading {name} map info"))?;
        Self::map(data, name, 0, info.max_entries() as usize)
    }

    /// Maps a `RINGS` map opened any other way (e.g. from its pin). The
    /// mapping keeps the map alive on its own.
    pub fn from_map(data: &aya::maps::MapData) -> Result<Self> {
        let info = data.info().context("reading RINGS map info")?;
        Self::map(data, maps::RINGS, 0, info.max_entries() as usize)
    }

    /// Maps only the slots of ring `row` (plus the rest of their first and
    /// last pages); other slots are out of reach.
    pub fn row(data: &aya::maps::MapData, row: u32, ring_size: u32) -> Result<Self> {
        Self::row_of(data, maps::RINGS, row, ring_size)
    }

    /// [`Self::row`] of another map shaped like `RINGS` (`PREVIOUS`).
    pub fn row_of(data: &aya::maps::MapData, name: &'static str, row: u32, ring_size: u32) -> Result<Self> {
        let info = data.info().with_context(|| format!("reading {name} map info"))?;
        let (start, end) = (row as usize * ring_size as usize, (row as usize + 1) * ring_size as usize);
        if end > info.max_entries() as usize {
            bail!("ring row {row} beyond the {} slots of {name}", info.max_entries());
        }
        Self::map(data, name, start, end - start)
    }

    /// Maps the pages holding elements `start .. start + count`.
    fn map(data: &aya::maps::MapData, name: &'static str, start: usize, count: usize) -> Result<Self> {
        // SAFETY: sysconf has no memory preconditions; _SC_PAGESIZE cannot fail.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let elements_per_page = page / ELEMENT_STRIDE;
        let first = start / elements_per_page * elements_per_page;
        let len = start + count - first;
        let map_bytes = (len * ELEMENT_STRIDE).div_ceil(page) * page;
        // SAFETY: a shared mapping of the map's fd at a page offset inside
        // the map's (page-rounded) value area; unmapped in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                (first * ELEMENT_STRIDE) as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!(
                "mmap of the {} map failed: {} (the object must create it with BPF_F_MMAPABLE)",
                name,
                std::io::Error::last_os_error()
            );
        }
        Ok(Self { words: NonNull::new(ptr.cast()).context("mmap returned null")?, first, len, map_bytes, name })
    }

    /// Slot `index` (of the whole map): the first word of its element.
    fn slot(&self, index: u32) -> Option<&AtomicU32> {
        let index = (index as usize).checked_sub(self.first)?;
        // SAFETY: `len` elements of ELEMENT_STRIDE bytes from `first` live in the mapping for as long as `self`.
        (index < self.len).then(|| unsafe { &*self.words.as_ptr().add(index * WORDS_PER_ELEMENT) })
    }

    /// Number of slots mapped (all rows, unless mapped by [`Self::row`]).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, index: u32) -> Option<u32> {
        self.slot(index).map(|s| s.load(Ordering::Relaxed))
    }

    /// Element `index` of `PREVIOUS`: a slot's previous owners (the words
    /// of one element; see `lb_common::second_chance::PreviousOwners`).
    pub fn get_owners(&self, index: u32) -> Option<PreviousOwners> {
        let first = self.slot(index)?;
        // SAFETY: `slot` found the element in the mapping, and its
        // ELEMENT_STRIDE bytes hold every word of `PreviousOwners` (asserted below).
        Some(std::array::from_fn(|k| unsafe { &*(first as *const AtomicU32).add(k) }.load(Ordering::Relaxed)))
    }

    /// Writes element `index` of `PREVIOUS`, oldest entry first: the kernel
    /// reads the words one by one, so a torn read sees at worst one owner
    /// twice or one missing, never an owner the slot did not have.
    pub fn set_owners(&self, index: u32, owners: &PreviousOwners) -> Result<()> {
        let first = self.slot(index).with_context(|| format!("ring slot {index} not in this mapping of {}", self.name))?;
        for k in (0..owners.len()).rev() {
            // SAFETY: as in `get_owners`.
            unsafe { &*(first as *const AtomicU32).add(k) }.store(owners[k], Ordering::Relaxed);
        }
        Ok(())
    }

    pub fn set(&self, index: u32, backend_id: u32) -> Result<()> {
        let slot = self.slot(index).with_context(|| format!("ring slot {index} not in this mapping of {}", self.name))?;
        slot.store(backend_id, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for MappedRings {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`.
        unsafe { libc::munmap(self.words.as_ptr().cast(), self.map_bytes) };
    }
}

//! The agent's memory-mapped view of `RINGS` and the kernel's own view of
//! the map must agree slot for slot (the kernel spaces array elements 8
//! bytes apart; a wrong stride would program the wrong slots). Needs root.

use aya::maps::Array;
use lb_agent::{
    dataplane::{self, LoadOptions},
    dataplane::rings::MappedRings,
};
use lb_common::maps;

#[test]
fn mapped_ring_slots_are_the_kernel_map_slots() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: loading BPF maps needs root");
        return;
    }
    let opts = LoadOptions { ring_size: 1021, max_vips: 3, ..LoadOptions::default() };
    let mut ebpf = dataplane::load_balancer_object(&opts).expect("load the BPF object");
    let total = opts.ring_size * opts.max_vips;
    let probes = [0, 1, 2, opts.ring_size - 1, opts.ring_size, total / 2 + 1, total - 1];

    let mapped = MappedRings::new(&ebpf).expect("mmap RINGS");
    assert_eq!(mapped.len(), total as usize);
    for (i, slot) in probes.iter().enumerate() {
        mapped.set(*slot, 100 + i as u32).unwrap();
    }
    assert!(mapped.set(total, 1).is_err(), "a slot beyond the map is refused");

    let mut rings: Array<_, u32> = Array::try_from(ebpf.map_mut(maps::RINGS).unwrap()).unwrap();
    for (i, slot) in probes.iter().enumerate() {
        assert_eq!(rings.get(slot, 0).unwrap(), 100 + i as u32, "slot {slot} read through bpf()");
    }
    // Untouched neighbours stay empty.
    assert_eq!(rings.get(&3, 0).unwrap(), 0);
    // And the other way round.
    rings.set(7, 4242, 0).unwrap();
    assert_eq!(mapped.get(7), Some(4242));
}

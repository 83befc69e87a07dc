//! The load: prebuilt frames sent from the client namespace by a raw
//! `AF_PACKET` socket with `sendmmsg`.

use std::{
    ffi::CString,
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use etherparse::PacketBuilder;
use lb_tests::topology::{CLIENT_V4, IFACE};

use super::host::set_affinity;
use super::{BATCH, FIRST_SOURCE_PORT, FLOWS, GENERATOR_CPU, MAX_PACKETS, PAYLOAD, SINK_MAC, VIP, VIP_PORT};


/// The frames of the load: one per flow (source port), client to VIP, from
/// [`SINK_MAC`] (so that reflected frames go to the sink).
pub(super) fn frames(lb_mac: [u8; 6]) -> Vec<Vec<u8>> {
    (0..FLOWS)
        .map(|i| {
            let mut v = Vec::with_capacity(64);
            PacketBuilder::ethernet2(SINK_MAC, lb_mac)
                .ipv4(CLIENT_V4.octets(), VIP.octets(), 64)
                .udp(FIRST_SOURCE_PORT + i as u16, VIP_PORT)
                .write_to_vec(&mut v, &PAYLOAD)
                .expect("writing a frame to a Vec");
            v
        })
        .collect()
}

/// Sends `frames` round-robin from the client namespace's eth0 for
/// `duration` (and at most [`MAX_PACKETS`]); returns (sent, send errors, time).
pub(super) fn generate(ns: &str, frames: &[Vec<u8>], duration: Duration) -> Result<(u64, u64, Duration)> {
    let ns_path = Path::new("/run/netns").join(ns);
    let frames = frames.to_vec();
    // setns() affects only the calling thread: a thread of its own, which ends with the run.
    std::thread::spawn(move || -> Result<(u64, u64, Duration)> {
        set_affinity(0, GENERATOR_CPU)?;
        // Nice -20 (this thread only, which ends with the run): on a shared
        // machine other work on CPU 0 would otherwise set the offered load.
        // SAFETY: plain setpriority(2) on this thread's id.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -20) } != 0 {
            bail!("setpriority(-20) for the generator: {}", std::io::Error::last_os_error());
        }
        let nsf = File::open(&ns_path).with_context(|| format!("cannot open {}", ns_path.display()))?;
        // SAFETY: setns on a namespace descriptor, for this thread only.
        if unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns({}): {}", ns_path.display(), std::io::Error::last_os_error());
        }
        // Protocol 0: the socket only sends, it receives nothing.
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            bail!("socket(AF_PACKET): {}", std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: an int option.
        if unsafe {
            libc::setsockopt(sock.as_raw_fd(), libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, (&one as *const libc::c_int).cast(), size_of::<libc::c_int>() as u32)
        } != 0
        {
            bail!("PACKET_QDISC_BYPASS: {}", std::io::Error::last_os_error());
        }
        let name = CString::new(IFACE).unwrap();
        // SAFETY: a valid C string; the lookup happens in this thread's namespace.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(ifindex != 0, "no {IFACE} in {}", ns_path.display());
        // SAFETY: a zeroed sockaddr_ll with family and interface set.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: addr is a sockaddr_ll of the given size.
        if unsafe { libc::bind(sock.as_raw_fd(), (&addr as *const libc::sockaddr_ll).cast(), size_of::<libc::sockaddr_ll>() as u32) } != 0 {
            bail!("bind(AF_PACKET, {IFACE}): {}", std::io::Error::last_os_error());
        }
        let mut iovecs: Vec<libc::iovec> =
            frames.iter().map(|f| libc::iovec { iov_base: f.as_ptr() as *mut libc::c_void, iov_len: f.len() }).collect();
        let mut msgs: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .map(|iov| {
                // SAFETY: a zeroed msghdr is valid (no name, no control data).
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        assert!(msgs.len().is_multiple_of(BATCH), "the flow count is a multiple of the batch");
        let (mut sent, mut errors, mut next) = (0u64, 0u64, 0usize);
        let start = Instant::now();
        while start.elapsed() < duration && sent < MAX_PACKETS {
            // SAFETY: BATCH initialised headers pointing at live frames.
            let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs[next..].as_mut_ptr(), BATCH as u32, 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    // The device queue is full: count it and go on.
                    Some(libc::ENOBUFS) | Some(libc::EAGAIN) => {
                        errors += 1;
                        std::thread::yield_now();
                    }
                    _ => bail!("sendmmsg: {e}"),
                }
                continue;
            }
            sent += n as u64;
            next = (next + BATCH) % msgs.len();
        }
        let elapsed = start.elapsed();
        drop(frames);
        Ok((sent, errors, elapsed))
    })
    .join()
    .map_err(|_| anyhow!("the generator thread panicked"))?
}

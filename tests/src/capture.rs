//! Raw frames in a topology's namespaces: an AF_PACKET socket per interface
//! to send crafted frames (as from a wire) and to capture what an interface
//! carries.
//!
//! What a capture sees: on a host's `eth0` with an XDP program, frames the
//! program passed to the stack (an AF_PACKET socket sits after XDP); on a
//! bridge port `v-HOST` in the `sw` namespace, outgoing frames are exactly
//! what the wire delivers to HOST before any of HOST's programs run.
//!
//! The kernel moves a received frame's outer VLAN tag into metadata before
//! packet sockets see it; [`Captured::frame`] puts it back (from
//! `PACKET_AUXDATA`), so captures compare byte for byte with what was sent.

use anyhow::{Context, Result, anyhow, bail};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::topology::Topology;

/// Runs `f` on a thread inside network namespace `ns` (setns affects only the
/// calling thread); sockets it opens stay in that namespace.
pub fn in_namespace<T: Send + 'static>(ns: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let path = Path::new("/run/netns").join(ns);
    std::thread::spawn(move || -> Result<T> {
        let nsf = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: setns on a namespace descriptor, for this thread only.
        if unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns({}): {}", path.display(), std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| anyhow!("the namespace thread panicked"))?
}

/// A captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Captured {
    /// `sll_pkttype`: `PACKET_HOST` (0), `_BROADCAST`, `_MULTICAST`,
    /// `_OTHERHOST`, or `PACKET_OUTGOING` (4) for frames the interface sent.
    pub pkttype: u8,
    /// The whole frame, VLAN tag included.
    pub frame: Vec<u8>,
}

impl Captured {
    pub fn outgoing(&self) -> bool {
        self.pkttype == libc::PACKET_OUTGOING
    }
}

/// An AF_PACKET socket bound to one interface of one namespace.
pub struct PacketSocket {
    fd: OwnedFd,
    label: String,
}

const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;
/// Room for many batches of full-size frames: nothing is lost while a test sends.
const RECEIVE_BUFFER: libc::c_int = 32 << 20;

impl PacketSocket {
    /// Opens a socket that receives every frame of `iface` on `host`.
    pub fn open(topo: &Topology, host: &str, iface: &str) -> Result<PacketSocket> {
        let label = format!("{iface} on {host}");
        let ifname = iface.to_string();
        let fd = in_namespace(topo.ns_name(host), move || open_bound(&ifname))
            .with_context(|| format!("AF_PACKET socket on {label}"))?;
        let socket = PacketSocket { fd, label };
        // Until bind, the socket heard every interface of the namespace.
        socket.drain()?;
        Ok(socket)
    }

    /// Sends one frame as is.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: a valid buffer of frame.len() bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("sending a {}-byte frame on {}", frame.len(), self.label));
        }
        Ok(())
    }

    /// Every frame received so far.
    pub fn drain(&self) -> Result<Vec<Captured>> {
        let mut out = Vec::new();
        while let Some(c) = self.recv()? {
            out.push(c);
        }
        Ok(out)
    }

    /// Frames until none arrived for `quiet`, at most for `limit`.
    pub fn collect(&self, quiet: Duration, limit: Duration) -> Result<Vec<Captured>> {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        let mut last = Instant::now();
        while Instant::now() < deadline && last.elapsed() < quiet {
            match self.recv()? {
                Some(c) => {
                    out.push(c);
                    last = Instant::now();
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        Ok(out)
    }

    fn recv(&self) -> Result<Option<Captured>> {
        let mut buf = vec![0u8; 65_536];
        // SAFETY: plain old data, for which all-zero bytes are valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut control = [0u64; 16];
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: plain old data, for which all-zero bytes are valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut addr as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        // SAFETY: msg points at live buffers of the sizes given.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(e).with_context(|| format!("receiving on {}", self.label));
        }
        buf.truncate(n as usize);
        let mut frame = buf;
        // SAFETY: walking the control messages the kernel wrote into `control`.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_PACKET && (*cmsg).cmsg_type == libc::PACKET_AUXDATA {
                    let aux = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::tpacket_auxdata);
                    if aux.tp_status & TP_STATUS_VLAN_VALID != 0 && frame.len() >= 12 {
                        let tpid = if aux.tp_status & TP_STATUS_VLAN_TPID_VALID != 0 { aux.tp_vlan_tpid } else { 0x8100 };
                        let mut tag = tpid.to_be_bytes().to_vec();
                        tag.extend_from_slice(&aux.tp_vlan_tci.to_be_bytes());
                        frame.splice(12..12, tag);
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        Ok(Some(Captured { pkttype: addr.sll_pkttype, frame }))
    }
}

fn open_bound(iface: &str) -> Result<OwnedFd> {
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol as i32) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
    }
    // SAFETY: fd is fresh and ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("no interface {iface}"));
    }
    let setopt = |level: libc::c_int, opt: libc::c_int, value: libc::c_int| -> Result<()> {
        // SAFETY: an int option.
        let rc = unsafe { libc::setsockopt(fd.as_raw_fd(), level, opt, (&value as *const libc::c_int).cast(), size_of::<libc::c_int>() as u32) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("setsockopt({level}, {opt})"));
        }
        Ok(())
    };
    setopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RECEIVE_BUFFER)?;
    setopt(libc::SOL_PACKET, libc::PACKET_AUXDATA, 1)?;
    // SAFETY: plain old data, for which all-zero bytes are valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = index as i32;
    // SAFETY: addr is a sockaddr_ll of the size given.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_ll).cast(), size_of::<libc::sockaddr_ll>() as u32) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("bind to {iface}"));
    }
    Ok(fd)
}

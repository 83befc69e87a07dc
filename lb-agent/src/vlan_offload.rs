//! VLAN receive offload on the balancer's interface.
//!
//! The balancer keeps a frame's 802.1Q tag in the tunnel packet it sends
//! (README "How a packet goes"), but it can only keep a tag it sees. A NIC with
//! `rx-vlan-offload` (`rxvlan`, feature `rx-vlan-hw-parse`; for 802.1ad
//! `rx-vlan-stag-hw-parse`) on moves the tag out of the frame into the
//! descriptor before XDP runs, so tagged traffic to a VIP would leave the LB
//! untagged (and a QinQ frame would lose its outer tag). So at start the agent
//! turns both off where the driver allows it. For the host's own traffic this
//! only moves untagging from the NIC into the kernel; nothing is refused
//! because of it, since hosts without VLANs need nothing. A feature that
//! cannot be turned off, or a failed ethtool call, is logged as a warning
//! saying what tagged traffic will lose and what to run.
//!
//! veth is different (measured on Linux 6.18 with native XDP): its receive
//! side never strips tags itself; a tag arrives outside the frame when the
//! *sending* peer has `tx-vlan-offload` on, whatever the receiver's rxvlan
//! says. The agent cannot reach the peer (another namespace, often), so it
//! says what to run there.
//!
//! The ethtool ioctl (`SIOCETHTOOL` with `ETHTOOL_GFEATURES`/`SFEATURES`,
//! feature names from `ETHTOOL_GSTRINGS`) is used rather than ethtool netlink:
//! it needs no new dependency, and rust-netlink's `ethtool` crate (0.2) only
//! reads features.

use anyhow::{Context, Result, bail};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Features that take a VLAN tag out of received frames before XDP.
pub(crate) const RX_TAG_STRIPPING: [&str; 2] = ["rx-vlan-hw-parse", "rx-vlan-stag-hw-parse"];
/// Their names in `ethtool -k` output and `ethtool -K` arguments.
fn ethtool_alias(feature: &str) -> &str {
    match feature {
        "rx-vlan-hw-parse" => "rxvlan",
        "rx-vlan-stag-hw-parse" => "rx-vlan-stag-hw-parse",
        other => other,
    }
}

/// One feature as the driver reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FeatureState {
    pub active: bool,
    /// In the driver's `hw_features`: `ethtool -K` may change it.
    pub changeable: bool,
}

/// The interface's feature table (`ethtool -k`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Features {
    pub names: Vec<String>,
    /// One bit per name, 32 per word, as `ETHTOOL_GFEATURES` returns them.
    pub available: Vec<u32>,
    pub active: Vec<u32>,
}

impl Features {
    fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    pub(crate) fn state(&self, name: &str) -> Option<FeatureState> {
        let i = self.index(name)?;
        let bit = |words: &[u32]| words.get(i / 32).is_some_and(|w| w & (1 << (i % 32)) != 0);
        Some(FeatureState { active: bit(&self.active), changeable: bit(&self.available) })
    }
}

/// What to do about an interface's VLAN receive offload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Decision {
    /// On and changeable: turn these off.
    pub turn_off: Vec<&'static str>,
    /// On and fixed by the driver: tags of tagged frames are lost; warn.
    pub fixed_on: Vec<&'static str>,
    /// The interface is a veth: the peer's TX offload decides (see the module doc).
    pub veth: bool,
}

pub(crate) fn decide(features: &Features, driver: &str) -> Decision {
    let mut d = Decision { veth: driver == "veth", ..Decision::default() };
    for name in RX_TAG_STRIPPING {
        match features.state(name) {
            Some(FeatureState { active: true, changeable: true }) => d.turn_off.push(name),
            Some(FeatureState { active: true, changeable: false }) => d.fixed_on.push(name),
            _ => {}
        }
    }
    d
}

/// `ethtool -K IFACE rxvlan off ...` for these features.
pub(crate) fn ethtool_off_command(iface: &str, features: &[&str]) -> String {
    let args: Vec<String> = features.iter().map(|f| format!("{} off", ethtool_alias(f))).collect();
    format!("ethtool -K {iface} {}", args.join(" "))
}

/// Makes VLAN tags of received frames reach the XDP program where the driver
/// allows it, logging what changed and warning about what cannot be changed.
/// Never fails: untagged traffic needs none of it.
pub(crate) fn keep_rx_vlan_tags(iface: &str) {
    let all_off = ethtool_off_command(iface, &RX_TAG_STRIPPING);
    // Only veth needs the driver's name; some devices do not report one.
    let (features, driver) = match Ethtool::open(iface).and_then(|e| Ok((e.features()?, e.driver().unwrap_or_default()))) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(
                "cannot read the VLAN offload features of {iface} ({e:#}); if tagged traffic reaches the VIPs, make sure `{all_off}` holds, or tunnel packets lose their tag"
            );
            return;
        }
    };
    let d = decide(&features, &driver);
    if !d.turn_off.is_empty() {
        let cmd = ethtool_off_command(iface, &d.turn_off);
        match Ethtool::open(iface).and_then(|e| e.turn_off(&features, &d.turn_off)) {
            Ok(()) => tracing::info!(
                "turned VLAN receive offload off on {iface} (`{cmd}`) so a tagged frame's tag reaches XDP and stays on its tunnel packet; `ethtool -K {iface} rxvlan on` restores it after `lb-agent detach`"
            ),
            Err(e) => tracing::warn!(
                "cannot turn VLAN receive offload off on {iface} ({e:#}): tagged frames to a VIP will be forwarded without their tag; run `{cmd}`"
            ),
        }
    }
    if !d.fixed_on.is_empty() {
        let fixed: Vec<&str> = d.fixed_on.iter().map(|f| ethtool_alias(f)).collect();
        tracing::warn!(
            "{iface} ({driver}) strips VLAN tags before XDP and cannot stop ({} fixed on): tagged frames to a VIP will be forwarded without their tag; use another NIC or untagged traffic for the VIPs",
            fixed.join(", ")
        );
    }
    if d.veth {
        tracing::info!(
            "{iface} is a veth: a tagged frame keeps its tag up to XDP only if the sending peer has TX VLAN offload off (`ethtool -K PEER txvlan off tx-vlan-stag-hw-insert off` where the peer lives)"
        );
    }
}

// ---------------------------------------------------------------------------
// The ethtool ioctl

const ETHTOOL_GDRVINFO: u32 = 0x03;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_SFEATURES: u32 = 0x3b;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;
/// `SFEATURES` answers with these bits when a request was not applied as asked.
const ETHTOOL_F_UNSUPPORTED: i32 = 1 << 2;
const ETHTOOL_F_WISH: i32 = 1 << 0;

struct Ethtool {
    socket: OwnedFd,
    name: [libc::c_char; libc::IFNAMSIZ],
    iface: String,
}

impl Ethtool {
    fn open(iface: &str) -> Result<Ethtool> {
        let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
        if iface.len() >= name.len() {
            bail!("interface name {iface:?} is too long");
        }
        for (d, s) in name.iter_mut().zip(iface.as_bytes()) {
            *d = *s as libc::c_char;
        }
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket for SIOCETHTOOL");
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Ethtool { socket, name, iface: iface.to_string() })
    }

    /// SIOCETHTOOL with `data` (a `u32`-aligned buffer whose first word is the
    /// command); returns the ioctl's non-negative result.
    fn call(&self, data: &mut [u32], what: &str) -> Result<i32> {
        // SAFETY: `ifreq` is plain old data, for which all-zero bytes are valid.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        req.ifr_name = self.name;
        req.ifr_ifru.ifru_data = data.as_mut_ptr().cast();
        // SAFETY: the kernel reads and writes at most the sizes the command's
        // header words announce, which the callers sized `data` for.
        let rc = unsafe { libc::ioctl(self.socket.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("{what} on {}", self.iface));
        }
        Ok(rc)
    }

    fn driver(&self) -> Result<String> {
        // struct ethtool_drvinfo: cmd, then driver[32], ... (196 bytes).
        let mut buf = [0u32; 49];
        buf[0] = ETHTOOL_GDRVINFO;
        self.call(&mut buf, "ETHTOOL_GDRVINFO")?;
        let bytes: Vec<u8> = buf[1..9].iter().flat_map(|w| w.to_ne_bytes()).collect();
        Ok(c_string(&bytes))
    }

    fn features(&self) -> Result<Features> {
        // struct ethtool_sset_info: cmd, reserved, sset_mask (u64), data[1].
        let mut info = [ETHTOOL_GSSET_INFO, 0, 0, 0, 0];
        let mask = 1u64 << ETH_SS_FEATURES;
        info[2..4].copy_from_slice(&[mask as u32, (mask >> 32) as u32]);
        self.call(&mut info, "ETHTOOL_GSSET_INFO")?;
        let count = info[4] as usize;
        // struct ethtool_gstrings: cmd, string_set, len, data[len * 32].
        let mut strings = vec![0u32; 3 + count * ETH_GSTRING_LEN / 4];
        strings[..3].copy_from_slice(&[ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count as u32]);
        self.call(&mut strings, "ETHTOOL_GSTRINGS")?;
        let bytes: Vec<u8> = strings[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
        let names = bytes.chunks(ETH_GSTRING_LEN).map(c_string).collect();
        // struct ethtool_gfeatures: cmd, size, then per 32 features
        // {available, requested, active, never_changed}.
        let blocks = count.div_ceil(32);
        let mut buf = vec![0u32; 2 + blocks * 4];
        buf[..2].copy_from_slice(&[ETHTOOL_GFEATURES, blocks as u32]);
        self.call(&mut buf, "ETHTOOL_GFEATURES")?;
        let block = |field: usize| (0..blocks).map(|b| buf[2 + b * 4 + field]).collect();
        Ok(Features { names, available: block(0), active: block(2) })
    }

    fn turn_off(&self, features: &Features, names: &[&str]) -> Result<()> {
        // struct ethtool_sfeatures: cmd, size, then per 32 features {valid, requested}.
        let blocks = features.names.len().div_ceil(32);
        let mut buf = vec![0u32; 2 + blocks * 2];
        buf[..2].copy_from_slice(&[ETHTOOL_SFEATURES, blocks as u32]);
        for name in names {
            let i = features.index(name).with_context(|| format!("{} has no feature {name}", self.iface))?;
            // valid = change this bit; requested = 0 (off).
            buf[2 + (i / 32) * 2] |= 1 << (i % 32);
        }
        let rc = self.call(&mut buf, "ETHTOOL_SFEATURES")?;
        if rc & (ETHTOOL_F_UNSUPPORTED | ETHTOOL_F_WISH) != 0 {
            bail!("the driver kept the feature on (ETHTOOL_SFEATURES answered {rc:#x})");
        }
        let now = self.features()?;
        if let Some(still) = names.iter().find(|n| now.state(n).is_some_and(|s| s.active)) {
            bail!("{still} is still on after ETHTOOL_SFEATURES");
        }
        Ok(())
    }
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, bool, bool)]) -> Features {
        let mut f = Features { names: Vec::new(), available: vec![0; 2], active: vec![0; 2] };
        // Padding names so the interesting bits land in the second word too.
        for i in 0..40 {
            f.names.push(format!("pad-{i}"));
        }
        for (name, active, changeable) in entries {
            let i = f.names.len();
            f.names.push(name.to_string());
            if *active {
                f.active[i / 32] |= 1 << (i % 32);
            }
            if *changeable {
                f.available[i / 32] |= 1 << (i % 32);
            }
        }
        f
    }

    #[test]
    fn changeable_offload_that_is_on_is_turned_off() {
        let f = table(&[("rx-vlan-hw-parse", true, true), ("rx-vlan-stag-hw-parse", true, true)]);
        let d = decide(&f, "mlx5_core");
        assert_eq!(d.turn_off, vec!["rx-vlan-hw-parse", "rx-vlan-stag-hw-parse"]);
        assert!(d.fixed_on.is_empty() && !d.veth);
        assert_eq!(ethtool_off_command("eth1", &d.turn_off), "ethtool -K eth1 rxvlan off rx-vlan-stag-hw-parse off");
    }

    #[test]
    fn fixed_offload_is_reported_not_changed() {
        let f = table(&[("rx-vlan-hw-parse", true, false), ("rx-vlan-stag-hw-parse", false, true)]);
        let d = decide(&f, "some_nic");
        assert!(d.turn_off.is_empty());
        assert_eq!(d.fixed_on, vec!["rx-vlan-hw-parse"]);
    }

    #[test]
    fn offload_already_off_or_unknown_needs_nothing() {
        assert_eq!(decide(&table(&[("rx-vlan-hw-parse", false, true)]), "ixgbe"), Decision::default());
        assert_eq!(decide(&table(&[]), "dummy"), Decision::default());
    }

    #[test]
    fn veth_is_recognised_by_its_driver() {
        assert!(decide(&table(&[]), "veth").veth);
        assert!(!decide(&table(&[]), "virtio_net").veth);
    }

    #[test]
    fn loopback_features_are_readable() {
        // Every device answers GFEATURES; needs no privilege to read.
        let Ok(e) = Ethtool::open("lo") else { return };
        let f = e.features().expect("read the features of lo");
        assert!(f.names.iter().any(|n| n == "rx-vlan-hw-parse"), "feature names: {:?}", f.names);
        assert!(f.state("rx-checksum").is_some());
    }
}

//! Attaching an XDP program to an interface: native, generic, or native
//! with a fallback.

use anyhow::{Context as _, Result};
use aya::programs::{xdp::XdpLinkId, Xdp, XdpMode};

use crate::config::XdpMode as ConfigXdpMode;

/// The attach mode actually used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Generic,
}

impl std::fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
        })
    }
}

/// Attaches `program` to `iface`; `auto` tries native (driver) XDP first and
/// falls back to generic XDP for drivers without it.
pub fn attach(program: &mut Xdp, iface: &str, mode: ConfigXdpMode) -> Result<(XdpLinkId, AttachedMode)> {
    let try_mode = |program: &mut Xdp, m: XdpMode| program.attach(iface, m);
    match mode {
        ConfigXdpMode::Native => Ok((
            try_mode(program, XdpMode::Driver).with_context(|| format!("attaching native XDP to {iface}"))?,
            AttachedMode::Native,
        )),
        ConfigXdpMode::Generic => Ok((
            try_mode(program, XdpMode::Skb).with_context(|| format!("attaching generic XDP to {iface}"))?,
            AttachedMode::Generic,
        )),
        ConfigXdpMode::Auto => match try_mode(program, XdpMode::Driver) {
            Ok(link) => Ok((link, AttachedMode::Native)),
            Err(native) => {
                tracing::warn!("native XDP on {iface} failed ({native}); falling back to generic XDP");
                let link = try_mode(program, XdpMode::Skb)
                    .with_context(|| format!("attaching XDP to {iface} (native failed first: {native})"))?;
                Ok((link, AttachedMode::Generic))
            }
        },
    }
}

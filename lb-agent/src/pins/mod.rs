//! What lives in bpffs (`lb.bpffs_dir`) while the balancer runs: every map,
//! the balancer program and the XDP link. The link pin is what keeps the
//! program attached when the agent exits (SIGTERM, crash, kill -9, upgrade);
//! [`remove_all`] is the only thing that detaches it.

mod bpffs;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::MapData,
    programs::{links::FdLink, links::PinnedLink, xdp::XdpLinkId, Xdp},
    Ebpf,
};
use lb_common::maps;

pub use crate::pin_names::{LINK_PIN, PROGRAM_PIN};

pub fn link_path(dir: &Path) -> PathBuf {
    dir.join(LINK_PIN)
}

/// Whether a balancer is pinned (and so attached) under `dir`.
pub fn has_link(dir: &Path) -> bool {
    link_path(dir).exists()
}

/// Pins every map and the balancer program under `dir` (created; bpffs
/// mounted on /sys/fs/bpf if needed). Stale pins of a half-finished earlier
/// start (maps without a link) are replaced.
pub fn pin_object(ebpf: &mut Ebpf, dir: &Path) -> Result<()> {
    bpffs::ensure(dir)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating pin directory {}", dir.display()))?;
    for name in maps::ALL {
        let path = dir.join(name);
        remove_stale(&path)?;
        ebpf.map(name)
            .with_context(|| format!("map {name} missing from the BPF object"))?
            .pin(&path)
            .with_context(|| format!("pinning {name} at {}", path.display()))?;
    }
    let path = dir.join(PROGRAM_PIN);
    remove_stale(&path)?;
    let program: &mut Xdp = ebpf
        .program_mut(lb_common::programs::BALANCER)
        .context("balancer program missing from the BPF object")?
        .try_into()?;
    program.pin(&path).with_context(|| format!("pinning the balancer program at {}", path.display()))?;
    Ok(())
}

fn remove_stale(path: &Path) -> Result<()> {
    if path.exists() {
        std::fs::remove_file(path).with_context(|| format!("removing stale pin {}", path.display()))?;
    }
    Ok(())
}

/// Pins the link of a freshly attached program, so it outlives the agent.
pub fn pin_link(program: &mut Xdp, link: XdpLinkId, dir: &Path) -> Result<()> {
    let link = program.take_link(link).context("taking the XDP link")?;
    let fd_link: FdLink = link.try_into().map_err(|e| {
        anyhow::anyhow!("the XDP link is not a bpf_link ({e}); this kernel cannot keep XDP attached across agent restarts")
    })?;
    let path = link_path(dir);
    remove_stale(&path)?;
    // Dropping the PinnedLink closes our fd; the pin keeps the link alive.
    fd_link.pin(&path).with_context(|| format!("pinning the XDP link at {}", path.display()))?;
    Ok(())
}

/// Detaches the balancer (unpins its link) and removes every pin under
/// `dir`. Returns whether a link was found.
pub fn remove_all(dir: &Path) -> Result<bool> {
    let had_link = has_link(dir);
    if had_link {
        let link = PinnedLink::from_pin(link_path(dir))
            .with_context(|| format!("opening the pinned XDP link {}", link_path(dir).display()))?;
        // Unpinned and dropped: the last reference goes, the program detaches.
        drop(link.unpin().context("unpinning the XDP link")?);
    }
    for name in maps::ALL.iter().copied().chain([PROGRAM_PIN]) {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::fs::remove_dir(dir);
    Ok(had_link)
}

/// Opens one pinned map.
pub fn open_map(dir: &Path, name: &str) -> Result<MapData> {
    let path = dir.join(name);
    if !path.exists() {
        bail!("{} does not exist: the pinned balancer under {} is incomplete; run `lb-agent detach` and start again", path.display(), dir.display());
    }
    MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))
}

//! Builds the BPF object (lb-ebpf, with nightly and bpf-linker) and leaves it
//! in OUT_DIR, where `dataplane::load::BPF_OBJECT` embeds it. Set AYA_BUILD_SKIP=1
//! to skip this (e.g. for `cargo check` or clippy without bpf-linker).
use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "lb-ebpf")
        .ok_or_else(|| anyhow!("lb-ebpf package not found in the workspace"))?;
    let root_dir = ebpf.manifest_path.parent().context("lb-ebpf manifest has no parent")?;
    aya_build::build_ebpf(
        [Package { name: ebpf.name.as_str(), root_dir: root_dir.as_str(), ..Default::default() }],
        Toolchain::default(),
    )
}

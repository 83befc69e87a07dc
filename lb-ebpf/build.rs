use which::which;

/// Rebuild the BPF object when bpf-linker changes (for example after
/// `cargo xtask` reinstalls it against a new nightly LLVM).
fn main() {
    let bpf_linker = which("bpf-linker").expect(
        "bpf-linker not found on PATH: run `cargo xtask setup` (or any `cargo xtask` command) to install it",
    );
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}

#![no_std]
// This crate's real content is the `lb-ebpf` binary (the BPF object). The empty
// library lets lb-agent build-depend on it so cargo rebuilds the object when it changes.

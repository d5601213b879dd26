#![no_std]
// This file exists so the benchmark can name this crate as a build-dependency (aya-build's way
// of rebuilding the eBPF object when its sources change); the programs are in `main.rs`.

//! tcpstated: follows every TCP socket through its states with eBPF and serves Prometheus metrics.
//!
//! Where things are: `loader` loads and attaches the kernel programs; `kernel_maps` reads their
//! maps at scrape time; `aggregate` merges the raw entries; `baseline` lists the sockets older
//! than the programs at start-up; `census` counts what the tracepoint never shows (timewait and
//! request sockets, accept queues, the baseline's sockets) from `sock_diag` polls; `netstat`
//! reads the listen counters; `labels` decodes numbers to label values; `collector` builds the
//! metric families; `http` serves them (its `server` keeps the connections: cap, timeouts,
//! shutdown); `config` is the flags; `kernel_btf` reads the kernel's type information;
//! `preflight` checks privileges; `sys` holds the raw syscalls.
#![deny(unsafe_code)]

pub mod aggregate;
pub mod baseline;
pub mod census;
pub mod collector;
pub mod config;
pub mod http;
pub mod kernel_btf;
pub mod kernel_log;
pub mod kernel_maps;
pub mod labels;
pub mod loader;
pub mod netstat;
pub mod preflight;
pub mod sock_diag;
pub mod sys;

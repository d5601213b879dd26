//! tcpstated: follows every TCP socket through its states with eBPF and serves Prometheus metrics.
//!
//! A folder per stage of the pipeline (docs/ARCHITECTURE.md tells the story):
//! - `bpf`: loads and attaches the kernel programs, reads their maps, takes the slot table's
//!   handoffs, forwards their log;
//! - `sockets`: what the tracepoint never shows, from sock_diag polls: timewait and request
//!   sockets, accept queues, records left behind, the sockets older than the daemon;
//! - `model`: the kernel's raw aggregates turned into figures (pure logic);
//! - `metrics`: the Prometheus collector, one file per group of families;
//! - `http`: the endpoints and their connections;
//! - `workload`: whose a socket is (its cgroup decoded into pod, container or unit names);
//! - `trace`: the live event stream beside the aggregates (`/events`, `tcpstated trace`).
//!
//! Beside them: `kept` (what a daemon hands the next through a restart), `config` (the flags),
//! `labels` (numbers to label values), `netstat` (/proc counters), `preflight` (privileges to
//! start), `capabilities` (what each thread keeps once serving), `exit` (the exit statuses),
//! `systemd` (readiness notifications), `sys` (the raw syscalls, the only `unsafe`), `version`
//! (the build), `logging` (the log's level and format).
#![deny(unsafe_code)]

pub mod bpf;
pub mod capabilities;
pub mod config;
pub mod exit;
pub mod http;
pub mod inspect;
pub mod kept;
pub mod labels;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod netstat;
pub mod preflight;
pub mod sockets;
pub mod sys;
pub mod systemd;
pub mod trace;
pub mod version;
pub mod workload;

// Older paths, kept for branches that still use them (the benchmark's tools use `bpf::...`).
pub use bpf::{btf as kernel_btf, loader};

//! Workloads (`--workloads`, issue 32): each socket attributed to the workload that owns it, on
//! the real kernel. `cgroups`: the test process moves itself into cgroup v2 groups named as
//! kubelet and systemd name them, and makes its sockets there; `container`: a real runc
//! container with a kubelet-named group and Kubernetes annotations, in a network namespace of
//! its own. Ports 26101-26199. They need root: `cargo xtask test` runs them.

#[path = "../support/mod.rs"]
mod support;

mod cgroups;
mod container;
mod owners;

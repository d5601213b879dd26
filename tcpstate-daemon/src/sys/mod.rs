//! The few system calls the daemon makes itself (aya covers the rest), split by kernel
//! interface: `bpf` (program statistics, batch map reads, the log ring), `capabilities` (the
//! calling thread's capability sets), `mmap` (a live view of an mmapable map), `netlink` (the
//! sock_diag socket), `netns` (entering network namespaces), `process` (signals, limits, clock,
//! allocator, thread ids). The only module allowed `unsafe`, each block with its `// SAFETY:`;
//! the protocols built on these calls (the slot table's sweep, sock_diag's messages) are safe
//! code beside their users.
#![expect(
    unsafe_code,
    reason = "the daemon's raw system calls live here and nowhere else"
)]

pub mod bpf;
pub mod capabilities;
pub mod mmap;
pub mod netlink;
pub mod netns;
pub mod process;

// The paths the helper binaries and other branches use.
pub use bpf::{ProgramStats, program_stats};
pub use process::{
    monotonic_ns, net_namespace_inode, raise_fd_limit, release_free_memory, shutdown_signal,
    thread_id, wait_for_shutdown_signal,
};

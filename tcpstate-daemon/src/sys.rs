//! The few system calls the daemon makes itself (aya covers the rest): the only module that
//! touches raw memory, so the only one allowed `unsafe`.
#![allow(unsafe_code)]

use std::{io, mem, os::fd::AsRawFd};

use aya_obj::generated::{bpf_cmd, bpf_prog_info};

/// Raises RLIMIT_MEMLOCK to infinity. Kernels since 5.11 account BPF memory to the memory cgroup
/// and ignore this limit, and raising it needs CAP_SYS_RESOURCE: callers treat failure as a note.
pub fn raise_memlock_rlimit() -> io::Result<()> {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `unlimited` is a valid rlimit that outlives the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What the kernel counts for a loaded program.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProgramStats {
    /// Time spent running it (only while `kernel.bpf_stats_enabled` = 1).
    pub run_time_ns: u64,
    /// Runs (only while `kernel.bpf_stats_enabled` = 1).
    pub run_count: u64,
    /// Events the kernel skipped because the program was already running on that CPU.
    pub recursion_misses: u64,
}

/// `BPF_OBJ_GET_INFO_BY_FD` for a program (aya's `ProgramInfo` does not expose these counters).
pub fn program_stats(program: &impl AsRawFd) -> io::Result<ProgramStats> {
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: `bpf_prog_info` is plain integers; all-zero is a valid value.
    let mut info: bpf_prog_info = unsafe { mem::zeroed() };
    let mut attr = InfoByFd {
        bpf_fd: program.as_raw_fd() as u32,
        info_len: mem::size_of::<bpf_prog_info>() as u32,
        info: &raw mut info as u64,
    };
    // SAFETY: `attr` is the `info` member of `union bpf_attr` for this command, its size is
    // passed, and `info` points to a writable buffer of `info_len` bytes that outlives the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &raw mut attr,
            mem::size_of::<InfoByFd>(),
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ProgramStats {
        run_time_ns: info.run_time_ns,
        run_count: info.run_cnt,
        recursion_misses: info.recursion_misses,
    })
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of the kernel program's `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec that outlives the call; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// A `NETLINK_SOCK_DIAG` socket (what `ss` uses), closed on drop.
pub struct SockDiagSocket {
    fd: std::os::fd::OwnedFd,
}

impl SockDiagSocket {
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(SockDiagSocket { fd })
    }

    /// Sends one request to the kernel.
    pub fn send(&self, request: &[u8]) -> io::Result<()> {
        // SAFETY: an all-zero sockaddr_nl is a valid address (family set below, pid 0: kernel).
        let mut kernel: libc::sockaddr_nl = unsafe { mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `request` and `kernel` are valid for the lengths given and outlive the call.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                (&raw const kernel).cast(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Receives one datagram (one or more netlink messages) into `buffer`; returns its length.
    pub fn receive(&self, buffer: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buffer` is writable for its length and outlives the call.
        let received = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if received < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(received as usize)
        }
    }
}

/// Hands memory freed after start-up (the kernel BTF parses) back to the system: glibc keeps
/// small freed blocks in its arenas otherwise, and the daemon's resident size would stay at its
/// start-up peak.
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) };
}

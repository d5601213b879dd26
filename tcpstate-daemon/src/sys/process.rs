//! The process's own interfaces: signals, resource limits, the clock, the allocator, its
//! network namespace.

use std::io;

/// Installs the daemon's signal handlers now and returns what resolves on SIGINT or SIGTERM.
/// SIGHUP, which would end the process, is logged and ignored: the web config file is re-read
/// when it changes, without a signal, and flags change only with a restart. Call it early,
/// inside a runtime: a signal that comes before is not handled.
pub fn shutdown_signal() -> io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = interrupt.recv() => return,
                _ = terminate.recv() => return,
                Some(()) = hangup.recv() => log::warn!(
                    "SIGHUP ignored: tcpstated re-reads its web config file (--web.config.file) \
                     by itself when the file or its certificates change; to change its flags, \
                     restart it"
                ),
            }
        }
    })
}

/// Blocks the calling thread until SIGINT or SIGTERM (for the helper binaries, which have no
/// runtime of their own).
pub fn wait_for_shutdown_signal() -> io::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            shutdown_signal()?.await;
            Ok(())
        })
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (systemd starts services at 1024): the HTTP
/// server's connection cap, not the fd limit, should bound its connections. Returns the soft
/// limit now in force.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit that outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above; raising the soft limit up to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

/// The calling thread's id (what `/proc/self/task` lists it as).
pub fn thread_id() -> u32 {
    // SAFETY: gettid has no arguments and cannot fail.
    let id = unsafe { libc::gettid() };
    id as u32
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

/// Hands freed memory (the kernel BTF parses at start-up, a large poll's lists) back to the
/// system: glibc keeps small freed blocks in its arenas otherwise, and the daemon's resident
/// size would stay at its peak.
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) };
}

/// The inode number of the daemon's network namespace: what the kernel program reads from a
/// socket's `struct net` (`ns.inum`).
pub fn net_namespace_inode() -> io::Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let inode = std::fs::metadata("/proc/self/ns/net")?.ino();
    u32::try_from(inode).map_err(|_| io::Error::other("a network namespace inode above 2^32"))
}

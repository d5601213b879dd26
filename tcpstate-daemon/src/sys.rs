//! The few system calls the daemon makes itself (aya covers the rest), and the signals that end
//! it: the only module that touches raw memory, so the only one allowed `unsafe`.
#![allow(unsafe_code)]

use std::{
    io, mem,
    os::fd::{AsRawFd, BorrowedFd, OwnedFd},
    sync::atomic::{AtomicU64, Ordering},
};

use aya_obj::generated::{bpf_cmd, bpf_prog_info};
use tcpstate_common::{
    SOCKET_SLOT_WINDOW, SocketRecord, TimewaitHandoff, slot_owner, socket_slot_window,
};

/// Installs the daemon's signal handlers now and returns what resolves on SIGINT or SIGTERM.
/// SIGHUP, which would end the process, is logged and ignored: there is no configuration file
/// to re-read. Call it early, inside a runtime: a signal that comes before is not handled.
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
                    "SIGHUP ignored: tcpstated has no configuration file to re-read (restart it \
                     to change its flags)"
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

/// Registers the kernel programs' log ring with the runtime, to be woken when records come.
pub fn watch_log_ring<L>(
    ring: aya_log::EbpfLogger<L>,
) -> io::Result<tokio::io::unix::AsyncFd<aya_log::EbpfLogger<L>>> {
    use tokio::io::{Interest, unix::AsyncFd};
    // SAFETY: the logger owns its ring buffer map's descriptor (an `OwnedFd`) for its whole
    // life, and `as_raw_fd` always returns that one.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(io::Error::from)
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

/// The inode number of the daemon's network namespace: what the kernel program reads from a
/// socket's `struct net` (`ns.inum`).
pub fn net_namespace_inode() -> io::Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let inode = std::fs::metadata("/proc/self/ns/net")?.ino();
    u32::try_from(inode).map_err(|_| io::Error::other("a network namespace inode above 2^32"))
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

/// Hands freed memory (the kernel BTF parses at start-up, a large poll's lists) back to the
/// system: glibc keeps small freed blocks in its arenas otherwise, and the daemon's resident
/// size would stay at its peak.
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) };
}

/// Reads and deletes every entry of a BPF hash map in a few `BPF_MAP_LOOKUP_AND_DELETE_BATCH`
/// calls (4096 entries each) instead of three syscalls per entry. Returns the keys and values,
/// packed (`key_size` and `value_size` bytes each).
pub fn drain_hash_map(
    map: &impl AsRawFd,
    key_size: usize,
    value_size: usize,
) -> io::Result<(Vec<u8>, Vec<u8>)> {
    const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;
    let (mut all_keys, mut all_values) = (Vec::new(), Vec::new());
    walk_in_batches(
        map,
        BPF_MAP_LOOKUP_AND_DELETE_BATCH,
        (key_size, value_size),
        4096,
        |keys, values| {
            all_keys.extend_from_slice(keys);
            all_values.extend_from_slice(values);
        },
    )?;
    Ok((all_keys, all_values))
}

/// Reads every entry of a BPF array in `BPF_MAP_LOOKUP_BATCH` calls of at most `chunk`
/// entries, handing `each` the values of each call, packed (`value_size` bytes each; for a
/// per-CPU array, the value of every possible CPU, each rounded up to 8 bytes).
pub fn read_array(
    map: &impl AsRawFd,
    value_size: usize,
    chunk: usize,
    mut each: impl FnMut(&[u8]),
) -> io::Result<()> {
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    walk_in_batches(
        map,
        BPF_MAP_LOOKUP_BATCH,
        (size_of::<u32>(), value_size),
        chunk,
        |_, values| each(values),
    )
}

/// Walks a map with a `BPF_MAP_*_BATCH` command, `chunk` entries per call, handing `each` the
/// packed keys and values of each call. The resume token is a u32 (a hash map's bucket, an
/// array's index).
fn walk_in_batches(
    map: &impl AsRawFd,
    command: libc::c_long,
    (key_size, value_size): (usize, usize),
    chunk: usize,
    mut each: impl FnMut(&[u8], &[u8]),
) -> io::Result<()> {
    /// The `batch` member of `union bpf_attr`.
    #[repr(C)]
    struct Batch {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    let chunk = chunk.max(1);
    let mut keys = vec![0u8; chunk * key_size];
    let mut values = vec![0u8; chunk * value_size];
    let (mut resume, mut next) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = Batch {
            in_batch: if first { 0 } else { &raw const resume as u64 },
            out_batch: &raw mut next as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` is the batch member of `union bpf_attr` for this command and its size
        // is passed; `keys` and `values` hold `count` entries; `resume` and `next` are u32s; all
        // outlive the call.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                command,
                &raw mut attr,
                mem::size_of::<Batch>(),
            )
        };
        let error = (result < 0).then(io::Error::last_os_error);
        let filled = (attr.count as usize).min(chunk);
        each(&keys[..filled * key_size], &values[..filled * value_size]);
        match error {
            None => {}
            // The walk reached the end of the map.
            Some(error) if error.raw_os_error() == Some(libc::ENOENT) => break,
            Some(error) => return Err(error),
        }
        resume = next;
        first = false;
    }
    Ok(())
}

/// The kernel's socket slot table (`SOCKET_SLOTS`, an mmapable array of `SocketRecord`), seen
/// through mappings made when needed and unmapped after: the kernel maps every page of the
/// table at once, so a lasting mapping would add the whole table (8 MiB by default) to the
/// daemon's resident memory.
pub struct SocketSlots {
    map: OwnedFd,
    slots: usize,
}

/// Slots mapped at a time while taking handoffs (1 MiB of records).
const SLOTS_PER_CHUNK: usize = 32768;

impl SocketSlots {
    /// The table `map` of `slots` records (a power of two).
    pub fn new(map: BorrowedFd<'_>, slots: u32) -> io::Result<Self> {
        Ok(SocketSlots {
            map: map.try_clone_to_owned()?,
            slots: slots as usize,
        })
    }

    /// A live view of the whole table.
    pub fn view(&self) -> io::Result<SlotsView> {
        SlotsView::map(&self.map, 0, self.slots)
    }

    /// Sweeps the whole table, a chunk at a time: takes every handoff the slots hold, one by
    /// one (a busy host leaves hundreds of thousands between two scrapes: no list of them is
    /// built), and releases the records `sweep` knows to be stale. A slot is released (owner 0)
    /// only if its owner is still the one read: a handoff a new socket claimed meanwhile (maybe
    /// half overwritten) is skipped, lost to the claim as an LRU entry to eviction.
    pub fn sweep(&self, sweep: &mut impl SlotSweep) -> io::Result<()> {
        for first in (0..self.slots).step_by(SLOTS_PER_CHUNK) {
            let count = SLOTS_PER_CHUNK.min(self.slots - first);
            let view = SlotsView::map(&self.map, first, count)?;
            for index in 0..count {
                view.sweep_slot(index, sweep);
            }
        }
        Ok(())
    }
}

/// What a sweep of the slot table (`SocketSlots::sweep`) does with the records it finds.
pub trait SlotSweep {
    /// A connection's handoff to its timewait socket (released from its slot).
    fn take_handoff(&mut self, cookie: u64, handoff: TimewaitHandoff);
    /// Whether the live record owned by `cookie`, in `state`, may be stale: a cheap first test,
    /// before the record is read whole (a table holds hundreds of thousands of live records).
    fn may_be_stale(&self, cookie: u64, state: u8) -> bool;
    /// Whether a live record belongs to a socket known to be gone: the kernel never delivered
    /// its last events to the programs, so nothing else frees it.
    fn is_stale(&self, record: &SocketRecord) -> bool;
    /// A stale record, released from its slot.
    fn release_stale(&mut self, record: SocketRecord);
}

/// A shared mapping of consecutive slots of the table, live: each read sees the slots as the
/// kernel has them now. The daemon's only write is releasing a slot (a handoff it took, a stale
/// record), with a compare-and-swap of its owner, as the kernel's programs claim slots.
pub struct SlotsView {
    base: *mut SocketRecord,
    count: usize,
}

impl SlotsView {
    /// Maps `count` slots from slot `first` (a multiple of a page's worth of slots).
    fn map(map: &OwnedFd, first: usize, count: usize) -> io::Result<Self> {
        let record = mem::size_of::<SocketRecord>();
        // SAFETY: a fresh shared mapping of a range of the map's data (an array map created
        // with BPF_F_MMAPABLE); the kernel checks the range and the flags, and a failure
        // returns MAP_FAILED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                count * record,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_raw_fd(),
                (first * record) as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SlotsView {
            base: base.cast(),
            count,
        })
    }

    /// Whether the socket with `cookie` has its record in a slot now (the kernel's search:
    /// `socket_slot_window`, then `SOCKET_SLOT_WINDOW` slots on, wrapping around). Only
    /// `SocketSlots::view`, of the whole table, is public.
    pub fn holds(&self, cookie: u64) -> bool {
        let first = socket_slot_window(cookie) as usize;
        (0..SOCKET_SLOT_WINDOW as usize).any(|step| {
            let index = (first + step) & (self.count - 1);
            self.owner(index).load(Ordering::Relaxed) == cookie
        })
    }

    /// Takes the handoff or the stale record slot `index` holds, if it holds one (see
    /// `SocketSlots::sweep`).
    fn sweep_slot(&self, index: usize, sweep: &mut impl SlotSweep) {
        let owner = self.owner(index);
        let seen = owner.load(Ordering::Acquire);
        if seen == 0 {
            return;
        }
        let handoff = slot_owner::handoff_cookie(seen);
        if handoff.is_none() && !sweep.may_be_stale(seen, self.state(index)) {
            return;
        }
        let record = SocketRecord {
            cookie: seen,
            ..self.read(index)
        };
        if handoff.is_none() && !sweep.is_stale(&record) {
            return;
        }
        // The kernel writes a handoff's fields before its owner and a claim's owner before its
        // fields: the owner unchanged since `seen` means the read fields were the handoff's. A
        // stale record has no writer left.
        if owner
            .compare_exchange(seen, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        match handoff {
            Some(cookie) => sweep.take_handoff(
                cookie,
                TimewaitHandoff {
                    entered_ns: record.entered_ns,
                    labels: record.labels,
                    state: record.state,
                    _padding: [0; 7],
                },
            ),
            None => sweep.release_stale(record),
        }
    }

    /// The owner of mapped slot `index`, shared with the kernel's programs.
    fn owner(&self, index: usize) -> &AtomicU64 {
        assert!(index < self.count);
        // SAFETY: `index` < `count`: inside the mapping, which lives as long as `self`; the
        // owner is an aligned u64 (the kernel's array values are 8-aligned and the mapping is
        // page-aligned), and every access to it, here and in the kernel, is atomic.
        unsafe { AtomicU64::from_ptr(&raw mut (*self.base.add(index)).cookie) }
    }

    /// The state of mapped slot `index`'s record, as the kernel has it now.
    fn state(&self, index: usize) -> u8 {
        assert!(index < self.count);
        // SAFETY: as in `owner`; volatile because the kernel writes the slots meanwhile.
        unsafe { std::ptr::read_volatile(&raw const (*self.base.add(index)).state) }
    }

    /// A copy of mapped slot `index`, field by field as the kernel has them now.
    fn read(&self, index: usize) -> SocketRecord {
        assert!(index < self.count);
        // SAFETY: as in `owner`; volatile because the kernel writes the slots meanwhile (the
        // caller tells a consistent copy by its owner).
        unsafe { std::ptr::read_volatile(self.base.add(index)) }
    }
}

impl Drop for SlotsView {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe {
            libc::munmap(
                self.base.cast(),
                self.count * mem::size_of::<SocketRecord>(),
            )
        };
    }
}

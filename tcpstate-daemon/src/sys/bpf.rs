//! `bpf(2)` where aya has no call for it: the counters the kernel keeps per program, batch
//! reads of whole maps into their `Pod` values, a map made by the daemon itself (for its own
//! figures, pinned beside the kernel's), attaching a loaded program held only by its
//! descriptor, and the log ring's registration with the runtime.

use std::{
    ffi::CStr,
    io, mem,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd as _, OwnedFd},
};

use aya::Pod;
use aya_obj::generated::{bpf_cmd, bpf_prog_info};

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

impl std::ops::AddAssign for ProgramStats {
    fn add_assign(&mut self, other: Self) {
        self.run_time_ns += other.run_time_ns;
        self.run_count += other.run_count;
        self.recursion_misses += other.recursion_misses;
    }
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

/// `BPF_MAP_CREATE` of a map with no BTF (aya creates maps only from an object's definitions):
/// `name` is the name `bpftool map` shows (at most 15 bytes).
pub fn create_map(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    name: &CStr,
) -> io::Result<OwnedFd> {
    /// The first members of `union bpf_attr` for `BPF_MAP_CREATE`, up to `map_name`.
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
    }
    let mut attr = MapCreate {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags,
        inner_map_fd: 0,
        numa_node: 0,
        map_name: [0; 16],
    };
    let name = name.to_bytes();
    let len = name.len().min(15);
    attr.map_name[..len].copy_from_slice(&name[..len]);
    const BPF_MAP_CREATE: libc::c_long = 0;
    // SAFETY: `attr` is the map-creation member of `union bpf_attr` (the kernel zero-extends
    // the members past the size passed) and outlives the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &raw mut attr,
            mem::size_of::<MapCreate>(),
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel just returned, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(result as i32) })
}

/// `BPF_RAW_TRACEPOINT_OPEN` of a loaded BTF tracepoint program (its tracepoint was given at
/// load): the link, which detaches the program when closed.
pub fn attach_btf_tracepoint(program: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    /// The `raw_tracepoint` member of `union bpf_attr`.
    #[repr(C)]
    struct RawTracepointOpen {
        name: u64,
        prog_fd: u32,
        _padding: u32,
        cookie: u64,
    }
    let mut attr = RawTracepointOpen {
        name: 0,
        prog_fd: program.as_raw_fd() as u32,
        _padding: 0,
        cookie: 0,
    };
    // SAFETY: `attr` is the `raw_tracepoint` member of `union bpf_attr` for this command, with
    // no name (the program's BTF tracepoint is used), and outlives the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_RAW_TRACEPOINT_OPEN as libc::c_long,
            &raw mut attr,
            mem::size_of::<RawTracepointOpen>(),
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel just returned, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(result as i32) })
}

/// The bytes of a `Pod` value (to digest the load-time configuration).
pub fn bytes_of<T: Pod>(value: &T) -> &[u8] {
    // SAFETY: `T` is `Pod`: no padding (every byte initialised), and the slice borrows `value`
    // for its whole size.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

/// Reads and deletes every entry of a BPF hash map (not per-CPU), handing `each` the keys and
/// values of each `BPF_MAP_LOOKUP_AND_DELETE_BATCH` call (4096 entries each, where one lookup
/// and delete would take three syscalls per entry).
pub fn drain_hash_map<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    mut each: impl FnMut(&[K], &[V]),
) -> io::Result<()> {
    const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;
    walk_in_batches(
        map,
        BPF_MAP_LOOKUP_AND_DELETE_BATCH,
        4096,
        1,
        |keys, values| each(keys, values),
    )
}

/// Reads every entry of a per-CPU BPF array in `BPF_MAP_LOOKUP_BATCH` calls of at most `chunk`
/// entries, handing `each` the values of each call: per entry, one value for each of `cpus`
/// possible CPUs. `V` must be a multiple of 8 bytes, as the kernel lays per-CPU values out.
pub fn read_per_cpu_array<V: Pod>(
    map: BorrowedFd<'_>,
    cpus: usize,
    chunk: usize,
    mut each: impl FnMut(&[V]),
) -> io::Result<()> {
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    assert!(
        size_of::<V>().is_multiple_of(8),
        "per-CPU values are 8-aligned"
    );
    walk_in_batches::<u32, V>(map, BPF_MAP_LOOKUP_BATCH, chunk, cpus, |_, values| {
        each(values)
    })
}

/// A buffer of `count` all-zero `T`s for the kernel to fill.
fn zeroed<T: Pod>(count: usize) -> Vec<T> {
    // SAFETY: `T` is `Pod`: all-zero bytes are a valid value.
    vec![unsafe { mem::zeroed::<T>() }; count]
}

/// Walks a map with a `BPF_MAP_*_BATCH` command, `chunk` entries per call (`values_per_key`
/// values each: the CPUs of a per-CPU map), handing `each` the keys and values of each call.
/// The resume token is a u32 (a hash map's bucket, an array's index).
fn walk_in_batches<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    command: libc::c_long,
    chunk: usize,
    values_per_key: usize,
    mut each: impl FnMut(&[K], &[V]),
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
    let mut keys = zeroed::<K>(chunk);
    let mut values = zeroed::<V>(chunk * values_per_key);
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
        // is passed; `keys` and `values` hold `count` entries of the map's key and value sizes
        // (the caller's `Pod` types, any bytes valid); `resume` and `next` are u32s; all
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
        each(&keys[..filled], &values[..filled * values_per_key]);
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

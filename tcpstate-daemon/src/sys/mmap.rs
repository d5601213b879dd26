//! A live view of an mmapable BPF array (`BPF_F_MMAPABLE`): the daemon reads the entries as
//! the kernel's programs have them now, and changes them only through atomic accesses.

use std::{
    io, mem,
    os::fd::{AsRawFd as _, BorrowedFd},
    ptr::NonNull,
    sync::atomic::AtomicU64,
};

use aya::Pod;

/// The system's page size: mapping offsets are multiples of it.
pub fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system; it takes no pointer.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|size| *size > 0)
        .unwrap_or(4096)
}

/// A shared mapping of `count` consecutive entries of an array map, unmapped on drop.
pub struct MappedArray<T> {
    base: NonNull<T>,
    count: usize,
}

impl<T: Pod> MappedArray<T> {
    /// Maps `count` entries from entry `first` (a multiple of a page's worth of entries) of the
    /// array `map`, whose values are `T`s (a multiple of 8 bytes: the kernel's stride).
    pub fn map(map: BorrowedFd<'_>, first: usize, count: usize) -> io::Result<Self> {
        assert!(size_of::<T>().is_multiple_of(8) && count > 0);
        let entry = mem::size_of::<T>();
        // SAFETY: a fresh shared mapping of a range of the map's data (an array map created
        // with BPF_F_MMAPABLE); the kernel checks the range and the flags, and a failure
        // returns MAP_FAILED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                count * entry,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_raw_fd(),
                (first * entry) as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base.cast()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(MappedArray { base, count })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The address of `size` bytes at `offset` in entry `index`, checked to be inside it.
    fn field(&self, index: usize, offset: usize, size: usize) -> *mut u8 {
        assert!(index < self.count && offset + size <= size_of::<T>());
        // SAFETY: inside the mapping (checked above), which lives as long as `self`.
        unsafe { self.base.as_ptr().add(index).cast::<u8>().add(offset) }
    }

    /// The u64 at `offset` (8-aligned) of entry `index`, shared with the kernel's programs:
    /// every access to it, there and here, must be atomic.
    pub fn atomic_u64(&self, index: usize, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8));
        let field = self.field(index, offset, 8);
        // SAFETY: an aligned u64 inside the mapping (entries are 8-byte multiples and the
        // mapping is page-aligned), valid as long as `self`; accessed atomically by all.
        unsafe { AtomicU64::from_ptr(field.cast()) }
    }

    /// The byte at `offset` of entry `index`, as the kernel has it now.
    pub fn read_u8(&self, index: usize, offset: usize) -> u8 {
        let field = self.field(index, offset, 1);
        // SAFETY: a byte inside the mapping; volatile because the kernel writes it meanwhile.
        unsafe { std::ptr::read_volatile(field) }
    }

    /// The u32 at `offset` (4-aligned) of entry `index`, as the kernel has it now.
    pub fn read_u32(&self, index: usize, offset: usize) -> u32 {
        assert!(offset.is_multiple_of(4));
        let field = self.field(index, offset, 4);
        // SAFETY: an aligned u32 inside the mapping (entries are 8-byte multiples and the
        // mapping is page-aligned); volatile because the kernel writes it meanwhile.
        unsafe { std::ptr::read_volatile(field.cast::<u32>()) }
    }

    /// A copy of entry `index`, as the kernel has it now (fields may be mid-update: callers
    /// tell a consistent copy by other means).
    pub fn read(&self, index: usize) -> T {
        let entry = self.field(index, 0, size_of::<T>());
        // SAFETY: a whole entry inside the mapping, aligned; `T` is `Pod`, so any bytes the
        // kernel left are a valid value; volatile because the kernel writes it meanwhile.
        unsafe { std::ptr::read_volatile(entry.cast::<T>()) }
    }
}

impl<T> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.count * mem::size_of::<T>()) };
    }
}

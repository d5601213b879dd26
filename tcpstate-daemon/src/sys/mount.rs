//! A thread of its own with the kernel's BTF hidden: aya's `EbpfLoader::new()` parses all of
//! /sys/kernel/btf/vmlinux (about 20 MB of small allocations, the daemon's peak memory by far)
//! even when the daemon then sets no target BTF, and parses nothing when the file is missing.
//! The thread gets a mount namespace of its own (`unshare`) with an empty tmpfs over
//! /sys/kernel/btf; the host's mounts and the daemon's other threads see nothing of it.

use std::{io, ptr, thread};

/// Runs `work` on a thread that does not see /sys/kernel/btf, or, where the daemon may not
/// make a mount namespace (no CAP_SYS_ADMIN), that sees it as usual.
pub fn without_kernel_btf<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Err(error) = hide_kernel_btf() {
                    log::debug!("cannot hide the kernel's BTF from aya's loader: {error}");
                }
                work()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn hide_kernel_btf() -> io::Result<()> {
    let check = |result: libc::c_int| {
        if result == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: unshare takes flags only; it gives the calling thread its own copy of the mount
    // table (CLONE_FS: a thread of a process may, the process's other threads keep theirs).
    check(unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_FS) })?;
    // SAFETY: static C strings and null pointers, as mount(2) takes them. The copy's mounts
    // are made private first, so that nothing mounted in it reaches the host's.
    check(unsafe {
        libc::mount(
            ptr::null(),
            c"/".as_ptr(),
            ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            ptr::null(),
        )
    })?;
    // SAFETY: as above.
    check(unsafe {
        libc::mount(
            c"none".as_ptr(),
            c"/sys/kernel/btf".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            ptr::null(),
        )
    })
}

//! The calling thread's capability sets: `capget(2)`/`capset(2)` and the `prctl(2)` calls for
//! the bounding and ambient sets. Every one of them acts on the calling thread only (Linux
//! keeps capabilities per thread), and threads created afterwards inherit its sets.

use std::io;

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets, as two 32-bit halves.
const VERSION_3: u32 = 0x2008_0522;

/// `CAP_SETPCAP`: needed to drop from the bounding set.
const CAP_SETPCAP: u32 = 8;

#[repr(C)]
struct Header {
    version: u32,
    /// 0: the calling thread.
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// A thread's capability sets, as bit masks (bit `n`: capability `n`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadCapabilities {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

/// The calling thread's sets.
pub fn this_thread() -> io::Result<ThreadCapabilities> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: a version 3 header and the two data elements that version writes, both live for
    // the call.
    let result = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |low: u32, high: u32| u64::from(low) | u64::from(high) << 32;
    Ok(ThreadCapabilities {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

/// Whether the calling thread's bounding set could be lowered too (it needs `CAP_SETPCAP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoundingSet {
    Lowered,
    /// Left as it was: without `CAP_SETPCAP` only execve could use it, and with no new
    /// privileges set, not even that.
    Kept,
}

/// Leaves the calling thread holding at most `keep` (a bit mask): its effective, permitted and
/// inheritable sets lowered to it, its ambient set cleared, its bounding set lowered where it
/// holds `CAP_SETPCAP`, and no new privileges (an execve gains nothing: tcpstated never
/// calls one, but nothing it runs could either). Nothing here can raise a set.
pub fn restrict_this_thread(keep: u64) -> io::Result<BoundingSet> {
    let held = this_thread()?;
    let bounding = if held.effective & (1 << CAP_SETPCAP) != 0 {
        for capability in (0..=last_capability()).filter(|capability| keep & (1 << capability) == 0)
        {
            // SAFETY: prctl with integer arguments only.
            let result =
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(capability)) };
            if result != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        BoundingSet::Lowered
    } else {
        BoundingSet::Kept
    };
    // SAFETY: prctl with integer arguments only; clearing the ambient set needs no privilege.
    let result = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    let half = |set: u64, shift: u32| ((set & keep) >> shift) & u64::from(u32::MAX);
    let data = [0, 32].map(|shift| Data {
        effective: half(held.effective, shift) as u32,
        permitted: half(held.permitted, shift) as u32,
        inheritable: half(held.inheritable, shift) as u32,
    });
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    // SAFETY: a version 3 header and its two data elements, read by the kernel during the call;
    // every set is a subset of what the thread holds, which capset always allows.
    let result = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: prctl with integer arguments only; needs no privilege.
    let result = unsafe {
        libc::prctl(
            libc::PR_SET_NO_NEW_PRIVS,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(bounding)
}

/// The highest capability this kernel knows (`CAP_LAST_CAP`); 40 (`CAP_CHECKPOINT_RESTORE`,
/// Linux 5.9) if it cannot tell.
fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .filter(|last| *last < 64)
        .unwrap_or(40)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_restricted_to_nothing_holds_nothing_and_the_others_keep_theirs() {
        let before = this_thread().unwrap();
        let restricted = std::thread::spawn(|| {
            restrict_this_thread(0).unwrap();
            this_thread().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(restricted, ThreadCapabilities::default());
        assert_eq!(
            this_thread().unwrap(),
            before,
            "only the calling thread changed"
        );
    }
}

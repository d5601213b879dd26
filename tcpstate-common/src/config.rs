//! Load-time configuration: the values the daemon writes into the object's `.rodata` globals
//! (see [`crate::global`]) before the verifier sees them, and what the programs compute from them.

/// Largest number of histogram bounds the kernel program can hold.
pub const MAX_BUCKETS: usize = 32;

/// Offsets in `struct sock` of the fields the program reads, from the running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketLayout {
    /// `__sk_common.skc_family` (u16).
    pub family: u32,
    /// `__sk_common.skc_num`: local port, host order (u16).
    pub local_port: u32,
    /// `__sk_common.skc_dport`: remote port, network order (u16).
    pub remote_port: u32,
    /// `sk_protocol` (u16).
    pub protocol: u32,
    /// `__sk_common.skc_state` (u8): also right for timewait and request sockets.
    pub state: u32,
    /// `__sk_common.skc_flags` (unsigned long): `SOCK_DEAD`, `SOCK_DONE`, ...
    pub flags: u32,
    /// `sk_err` (int): the error a closing socket reports.
    pub error: u32,
    /// `__sk_common.skc_net.net` (`struct net *`): the socket's network namespace.
    pub net: u32,
    /// `ns.inum` (unsigned int) in `struct net`: the namespace's inode number (what
    /// `stat /proc/<pid>/ns/net` shows).
    pub net_inode: u32,
    /// `__sk_common.skc_cookie.counter` (s64): the socket's cookie, 0 until one is assigned.
    pub cookie: u32,
    /// `sk_cgrp_data.cgroup` (`struct cgroup *`): the owner's cgroup v2. 0 when workload
    /// attribution is off: the programs then read no cgroup (the verifier sees the constant and
    /// drops the reads).
    pub owner_cgroup: u32,
    /// `kn` (`struct kernfs_node *`) in `struct cgroup`: the group's directory.
    pub cgroup_node: u32,
    /// `id` (u64) in `struct kernfs_node`: the directory's id, its inode in the low 32 bits.
    pub node_id: u32,
    pub _padding: u32,
}
const _: () = assert!(size_of::<SocketLayout>() == 56);

/// Offsets in `struct sock` of the addresses, read only for the event stream (while someone
/// listens), from the running kernel's BTF. A global apart from [`SocketLayout`]: grown by
/// these, `SOCKET_LAYOUT` pushed the slot masks every event reads onto a second cache line
/// (4 ns per event, measured with `bench compare`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddressLayout {
    /// `__sk_common.skc_rcv_saddr` (__be32): the local IPv4 address.
    pub local: u32,
    /// `__sk_common.skc_daddr` (__be32): the remote IPv4 address.
    pub remote: u32,
    /// `__sk_common.skc_v6_rcv_saddr` (struct in6_addr); 0 on a kernel without IPv6.
    pub local_v6: u32,
    /// `__sk_common.skc_v6_daddr` (struct in6_addr); 0 on a kernel without IPv6.
    pub remote_v6: u32,
    /// `inet_sport` (__be16) in `struct tcp_sock`: the local port as the tracepoint's `sport`
    /// shows it, still set at CLOSE, when `inet_put_port()` has already cleared `skc_num`.
    pub source_port: u32,
}
const _: () = assert!(size_of::<AddressLayout>() == 20);

/// Histogram upper bounds in nanoseconds, ascending; unused slots hold `u64::MAX`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationBuckets {
    pub bounds_ns: [u64; MAX_BUCKETS],
}
const _: () = assert!(size_of::<DurationBuckets>() == 8 * MAX_BUCKETS);

impl DurationBuckets {
    pub const UNUSED: u64 = u64::MAX;
    pub const EMPTY: Self = Self {
        bounds_ns: [Self::UNUSED; MAX_BUCKETS],
    };

    /// Index of the bucket a duration falls in (see [`bucket_index`]).
    pub fn bucket_index(&self, duration_ns: u64) -> usize {
        bucket_index(|i| self.bounds_ns[i], duration_ns)
    }
}

/// Index of the histogram bucket a duration falls in: the first bound >= `duration_ns`, or
/// [`MAX_BUCKETS`] when it is above every bound. `bound_at(i)` reads bound `i` (`i <
/// MAX_BUCKETS`); the kernel passes a volatile read of its load-time global. A binary search with
/// a fixed number of steps: bounded for the verifier and cheap per event.
#[inline(always)]
pub fn bucket_index(bound_at: impl Fn(usize) -> u64, duration_ns: u64) -> usize {
    const _: () = assert!(MAX_BUCKETS.is_power_of_two());
    let mut below = 0usize; // bounds known to be < duration_ns
    let mut step = MAX_BUCKETS / 2;
    while step > 0 {
        if bound_at(below + step - 1) < duration_ns {
            below += step;
        }
        step /= 2;
    }
    // `below` is now at most MAX_BUCKETS - 1; the last bound needs its own check.
    if bound_at(below) < duration_ns {
        below += 1;
    }
    below
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]`, made only of integers and integer arrays, with every padding
    // byte an explicit field (checked by the size assertion beside it): any bit pattern is a
    // valid value and no byte is uninitialised.
    unsafe impl aya::Pod for super::SocketLayout {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AddressLayout {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DurationBuckets {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets(bounds: &[u64]) -> DurationBuckets {
        let mut buckets = DurationBuckets::EMPTY;
        buckets.bounds_ns[..bounds.len()].copy_from_slice(bounds);
        buckets
    }

    #[test]
    fn bucket_index_is_first_bound_at_or_above() {
        let b = buckets(&[10, 20, 30]);
        assert_eq!(b.bucket_index(0), 0);
        assert_eq!(b.bucket_index(10), 0, "le is inclusive");
        assert_eq!(b.bucket_index(11), 1);
        assert_eq!(b.bucket_index(20), 1);
        assert_eq!(b.bucket_index(30), 2);
        // Above the last real bound: the first unused slot, which the daemon ignores.
        assert_eq!(b.bucket_index(31), 3);
    }

    #[test]
    fn bucket_index_matches_linear_search_for_every_prefix() {
        let all: [u64; MAX_BUCKETS] = core::array::from_fn(|i| (i as u64 + 1) * 100);
        for used in 0..=MAX_BUCKETS {
            let b = buckets(&all[..used]);
            for d in (0..=3400).step_by(7).chain([u64::MAX - 1, u64::MAX]) {
                let expected = b
                    .bounds_ns
                    .iter()
                    .position(|&bound| d <= bound)
                    .unwrap_or(MAX_BUCKETS);
                assert_eq!(b.bucket_index(d), expected, "used={used} d={d}");
            }
        }
    }
}

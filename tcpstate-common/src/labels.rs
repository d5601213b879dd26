//! The labels fixed for a socket's tracked life, and the numbers they are made of.

/// Address families, as the kernel numbers them (`AF_INET`, `AF_INET6`).
pub mod family {
    pub const IPV4: u8 = 2;
    pub const IPV6: u8 = 10;
}

/// How a socket came to be, which decides its `role` label and which port is its service port.
pub mod role {
    /// First seen mid-life (it existed before the daemon started).
    pub const UNKNOWN: u8 = 0;
    /// Active open: seen entering SYN_SENT. Service port = remote port.
    pub const CLIENT: u8 = 1;
    /// Accepted from a listener. Service port = local port.
    pub const SERVER: u8 = 2;
    /// Seen entering LISTEN. Service port = local port.
    pub const LISTENER: u8 = 3;
    pub const COUNT: usize = 4;
}

/// The port label value meaning "not in the configured port set".
pub const OTHER_PORT: u16 = 0;

/// Labels fixed for a socket's whole tracked life. Both the per-socket record and the aggregation
/// key embed this struct, so a new label dimension is one new field here plus its decoder in the
/// daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels {
    /// Service port in host order, or [`OTHER_PORT`].
    pub port: u16,
    /// [`family`] constant.
    pub family: u8,
    /// [`role`] constant.
    pub role: u8,
    /// The owner's cgroup v2 (the process that created the socket; an accepted socket's is its
    /// listener's): the low 32 bits of its id, the inode of its directory, unique among live
    /// groups. 0 when workload attribution is off, or for a socket whose group was not read.
    pub cgroup: u32,
}
const _: () = assert!(size_of::<Labels>() == 8);

/// Bitmap of the ports exported by number (bit `p` set = port `p` is in the set).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSet {
    pub words: [u64; 1024],
}
const _: () = assert!(size_of::<PortSet>() == 65536 / 8);

impl PortSet {
    pub const EMPTY: Self = Self { words: [0; 1024] };

    /// Which word holds `port`'s bit, and the bit's mask.
    #[inline(always)]
    pub const fn position(port: u16) -> (usize, u64) {
        ((port >> 6) as usize, 1u64 << (port & 63))
    }

    pub fn contains(&self, port: u16) -> bool {
        let (word, mask) = Self::position(port);
        self.words[word] & mask != 0
    }

    pub fn insert(&mut self, port: u16) {
        let (word, mask) = Self::position(port);
        self.words[word] |= mask;
    }

    /// The label a socket gets: `port` itself when it is in the set, else [`OTHER_PORT`].
    pub fn label(&self, port: u16) -> u16 {
        if self.contains(port) {
            port
        } else {
            OTHER_PORT
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]`, made only of integers and integer arrays, with every padding
    // byte an explicit field (checked by the size assertion beside it): any bit pattern is a
    // valid value and no byte is uninitialised.
    unsafe impl aya::Pod for super::Labels {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortSet {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_set_labels_members_only() {
        let mut set = PortSet::EMPTY;
        set.insert(443);
        set.insert(65535);
        assert_eq!(set.label(443), 443);
        assert_eq!(set.label(65535), 65535);
        assert_eq!(set.label(80), OTHER_PORT);
        assert_eq!(set.label(0), OTHER_PORT);
    }
}

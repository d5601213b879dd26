//! The tracepoints' `struct sock *`: reads of kernel memory and calls of socket helpers, the
//! programs' only raw accesses to the kernel.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    helpers::generated::{
        bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_sk_storage_delete, bpf_sk_storage_get,
        bpf_skc_to_tcp_sock,
    },
};
use tcpstate_common::SocketRecord;

use crate::{globals, maps::SOCKET_RECORDS};

/// `IPPROTO_TCP`. The tracepoint also fires for SCTP (132) and MPTCP (262) sockets.
const IPPROTO_TCP: u16 = 6;

/// The tracepoint's `struct sock *`: a BTF-typed pointer, so the verifier checks each read's
/// offset and size against the kernel's own `struct sock` and turns it into a fault-safe load.
#[derive(Clone, Copy)]
pub struct Sock {
    sk: *mut c_void,
}

impl Sock {
    pub fn new(sk: *mut c_void) -> Self {
        Self { sk }
    }

    pub fn is_null(&self) -> bool {
        self.sk.is_null()
    }

    /// The socket's address, to compare sockets (never dereferenced from the number).
    pub fn address(&self) -> u64 {
        self.sk as u64
    }

    /// Reads a `T` field of `struct sock` at `offset`.
    #[inline(always)]
    fn read<T: Copy>(&self, offset: u32) -> T {
        // SAFETY: `offset` comes from the kernel's BTF description of the pointer's type
        // (`struct sock`, or `struct tcp_sock` for `source_port`) with the field's size checked
        // there, it is a load-time constant, and the verifier rejects the program unless it is
        // a field of that size in that type; the load itself is fault-safe (BPF_PROBE_MEM).
        unsafe { self.sk.cast::<u8>().add(offset as usize).cast::<T>().read() }
    }

    fn read_u16(&self, offset: u32) -> u16 {
        self.read(offset)
    }

    /// Only for full sockets: `sk_protocol` is past the `sock_common` that timewait and
    /// request sockets share.
    pub fn is_tcp(&self) -> bool {
        self.read_u16(globals::socket_offset(|layout| &layout.protocol)) == IPPROTO_TCP
    }

    pub fn family(&self) -> u8 {
        self.read_u16(globals::socket_offset(|layout| &layout.family)) as u8
    }

    pub fn local_port(&self) -> u16 {
        self.read_u16(globals::socket_offset(|layout| &layout.local_port))
    }

    pub fn remote_port(&self) -> u16 {
        u16::from_be(self.read_u16(globals::socket_offset(|layout| &layout.remote_port)))
    }

    /// `skc_state`: valid for full, timewait and request sockets alike.
    pub fn state(&self) -> u8 {
        self.read(globals::socket_offset(|layout| &layout.state))
    }

    /// `sk_err`. Full sockets only.
    pub fn error(&self) -> i32 {
        self.read(globals::socket_offset(|layout| &layout.error))
    }

    /// `sk_flags` (`SOCK_DEAD`, `SOCK_DONE`, ...). Full sockets only.
    pub fn flags(&self) -> u64 {
        self.read(globals::socket_offset(|layout| &layout.flags))
    }

    /// The inode number of the socket's network namespace (`sk->__sk_common.skc_net.net->ns.inum`).
    pub fn net_inode(&self) -> u32 {
        let net: *mut c_void = self.read(globals::socket_offset(|layout| &layout.net));
        let net_inode = globals::socket_offset(|layout| &layout.net_inode);
        // SAFETY: `net` is the BTF-typed `struct net *` just read (the verifier knows its type
        // and checks this read's offset and size against `struct net`, from the kernel's BTF
        // like the offset); the load is fault-safe (BPF_PROBE_MEM).
        unsafe {
            net.cast::<u8>()
                .add(net_inode as usize)
                .cast::<u32>()
                .read()
        }
    }

    /// The inode of the socket owner's cgroup v2 (`sk->sk_cgrp_data.cgroup->kn->id`, low 32
    /// bits); 0 with attribution off. Full sockets only (timewait and request sockets have no
    /// `sk_cgrp_data`).
    #[inline(always)]
    pub fn owner_cgroup(&self) -> u32 {
        let owner_cgroup = globals::socket_offset(|layout| &layout.owner_cgroup);
        if owner_cgroup == 0 {
            return 0;
        }
        let cgroup: *mut c_void = self.read(owner_cgroup);
        let node: *mut c_void = read_field(cgroup, globals::socket_offset(|l| &l.cgroup_node));
        let id: u64 = read_field(node, globals::socket_offset(|layout| &layout.node_id));
        id as u32
    }

    /// The local port for the event stream: `inet_sport`, as the tracepoint's `sport` shows it.
    /// `local_port` (`skc_num`) reads 0 at most CLOSE events: `tcp_set_state()` releases the
    /// port (`inet_put_port()`) before the tracepoint fires.
    /// https://elixir.bootlin.com/linux/v6.18/source/net/ipv4/tcp.c#L2999
    #[inline(always)]
    pub fn source_port(&self) -> u16 {
        // SAFETY: the helper checks the socket is a full TCP socket and returns NULL otherwise;
        // `inet_sport` lies past `struct sock`, where a read of `self.sk` would not verify.
        let tcp = unsafe { bpf_skc_to_tcp_sock(self.sk) };
        if tcp.is_null() {
            return self.local_port();
        }
        let port: u16 =
            Sock::new(tcp.cast()).read(globals::address_offset(|layout| &layout.source_port));
        u16::from_be(port)
    }

    /// The local and remote addresses, each as the two words of its 16 bytes in memory
    /// (network) order: an IPv4 address in the first 4 bytes. For the event stream only.
    /// Words, not byte arrays: LLVM turns the zeroing and copies of arrays into `memset` and
    /// `memcpy` calls.
    #[inline(always)]
    pub fn addresses(&self, family: u8) -> ([u64; 2], [u64; 2]) {
        if family == tcpstate_common::family::IPV6 {
            let local = globals::address_offset(|layout| &layout.local_v6);
            let remote = globals::address_offset(|layout| &layout.remote_v6);
            // Two 8-byte loads each: the verifier allows loads of any size inside an array of
            // integers, which `struct in6_addr` is.
            (
                [self.read(local), self.read(local + 8)],
                [self.read(remote), self.read(remote + 8)],
            )
        } else {
            let local: u32 = self.read(globals::address_offset(|layout| &layout.local));
            let remote: u32 = self.read(globals::address_offset(|layout| &layout.remote));
            ([u64::from(local), 0], [u64::from(remote), 0])
        }
    }

    /// The socket's cookie, assigned now if it had none (what `ss -e` and sock_diag show). Read
    /// from the socket once assigned (never changed after): a helper call costs more.
    #[inline(always)]
    pub fn cookie(&self) -> u64 {
        let assigned: u64 = self.read(globals::socket_offset(|layout| &layout.cookie));
        if assigned != 0 {
            return assigned;
        }
        // SAFETY: `sk` is the tracepoint's live socket.
        unsafe { bpf_get_socket_cookie(self.sk) }
    }

    /// This socket's record in socket-local storage, if it has one there (see `records`).
    #[inline(always)]
    pub fn storage_record(&self) -> Option<&'static mut SocketRecord> {
        self.storage_get(core::ptr::null_mut(), 0)
    }

    /// Attaches `initial` as this socket's record in socket-local storage; `None` if the
    /// kernel cannot allocate it.
    #[inline(always)]
    pub fn create_storage_record(
        &self,
        initial: &mut SocketRecord,
    ) -> Option<&'static mut SocketRecord> {
        self.storage_get(
            core::ptr::from_mut(initial).cast(),
            BPF_SK_STORAGE_GET_F_CREATE.into(),
        )
    }

    #[inline(always)]
    fn storage_get(&self, initial: *mut c_void, flags: u64) -> Option<&'static mut SocketRecord> {
        let map = core::ptr::from_ref(&SOCKET_RECORDS).cast_mut().cast();
        // SAFETY: `sk` is the tracepoint's live socket; the storage returned stays valid for this
        // program run and belongs to that socket, whose state changes are serialised by the
        // socket lock, so no other writer touches it meanwhile.
        unsafe {
            bpf_sk_storage_get(map, self.sk, initial, flags)
                .cast::<SocketRecord>()
                .as_mut()
        }
    }

    /// Deletes this socket's record from socket-local storage; false if the kernel refused.
    pub fn delete_storage_record(&self) -> bool {
        let map = core::ptr::from_ref(&SOCKET_RECORDS).cast_mut().cast();
        // SAFETY: `sk` is the tracepoint's live socket.
        unsafe { bpf_sk_storage_delete(map, self.sk) == 0 }
    }
}

pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Reads a `T` field at `offset` of the BTF-typed kernel object `object` points to (0 for a
/// null pointer: the load is fault-safe).
#[inline(always)]
fn read_field<T: Copy>(object: *mut c_void, offset: u32) -> T {
    // SAFETY: `object` is a BTF-typed pointer just read from a checked field (the verifier
    // knows its type and checks this read's offset and size against it, from the kernel's BTF
    // like the offset); the load is fault-safe (BPF_PROBE_MEM).
    unsafe { object.cast::<u8>().add(offset as usize).cast::<T>().read() }
}

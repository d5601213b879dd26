//! Reads of kernel memory and calls of socket helpers: the only raw accesses of the program.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    helpers::generated::{bpf_ktime_get_ns, bpf_sk_storage_delete, bpf_sk_storage_get},
};
use tcpstate_common::{SocketLayout, SocketRecord};

use crate::maps::SOCKET_RECORDS;

/// `IPPROTO_TCP`. The tracepoint also fires for SCTP (132) and MPTCP (262) sockets.
const IPPROTO_TCP: u16 = 6;

/// The tracepoint's `struct sock *`: a BTF-typed pointer, so the verifier checks each read's
/// offset and size against the kernel's own `struct sock` and turns it into a fault-safe load.
#[derive(Clone, Copy)]
pub struct Sock {
    sk: *mut c_void,
    layout: SocketLayout,
}

impl Sock {
    pub fn new(sk: *mut c_void, layout: SocketLayout) -> Self {
        Self { sk, layout }
    }

    #[inline(always)]
    fn read_u16(&self, offset: u32) -> u16 {
        // SAFETY: `offset` comes from the kernel's BTF description of `struct sock` (see
        // `SocketLayout`), it is a load-time constant, and the verifier rejects the program if
        // it is not a u16 field of `struct sock`.
        unsafe {
            self.sk
                .cast::<u8>()
                .add(offset as usize)
                .cast::<u16>()
                .read()
        }
    }

    pub fn is_tcp(&self) -> bool {
        self.read_u16(self.layout.protocol) == IPPROTO_TCP
    }

    pub fn family(&self) -> u8 {
        self.read_u16(self.layout.family) as u8
    }

    pub fn local_port(&self) -> u16 {
        self.read_u16(self.layout.local_port)
    }

    pub fn remote_port(&self) -> u16 {
        u16::from_be(self.read_u16(self.layout.remote_port))
    }

    /// This socket's record, if it has one.
    #[inline(always)]
    pub fn record(&self) -> Option<&mut SocketRecord> {
        self.storage_get(core::ptr::null_mut(), 0)
    }

    /// Attaches `initial` as this socket's record; `None` if the kernel cannot allocate it.
    #[inline(always)]
    pub fn create_record(&self, initial: &mut SocketRecord) -> Option<&mut SocketRecord> {
        self.storage_get(
            core::ptr::from_mut(initial).cast(),
            BPF_SK_STORAGE_GET_F_CREATE.into(),
        )
    }

    #[inline(always)]
    fn storage_get(&self, initial: *mut c_void, flags: u64) -> Option<&mut SocketRecord> {
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

    /// Forgets this socket's record; false if the kernel refused.
    pub fn delete_record(&self) -> bool {
        let map = core::ptr::from_ref(&SOCKET_RECORDS).cast_mut().cast();
        // SAFETY: `sk` is the tracepoint's live socket.
        unsafe { bpf_sk_storage_delete(map, self.sk) == 0 }
    }
}

pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

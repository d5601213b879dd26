//! The netlink socket sock_diag answers on; `sockets::sock_diag` builds the requests and parses
//! the answers.

use std::{
    io, mem,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// A `NETLINK_SOCK_DIAG` socket (what `ss` uses), closed on drop.
pub struct SockDiagSocket {
    fd: OwnedFd,
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
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
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

    /// The cookie of the network namespace the socket answers for (`SO_NETNS_COOKIE`, Linux
    /// 5.14+): unlike its inode number, never reused. 0 where the kernel cannot tell.
    pub fn namespace_cookie(&self) -> u64 {
        let mut cookie = 0u64;
        let mut length = mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: `cookie` and `length` are valid for writes of their sizes and outlive the call.
        let read = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NETNS_COOKIE,
                (&raw mut cookie).cast(),
                &mut length,
            )
        };
        if read == 0 { cookie } else { 0 }
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

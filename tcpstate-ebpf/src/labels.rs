//! Labels of sockets the program has no record for.

use tcpstate_common::{
    Labels, OTHER_PORT, role,
    state::{CLOSE, LISTEN, NEW_SYN_RECV, SYN_RECV, SYN_SENT},
};

use crate::{globals, sock::Sock};

/// The role of a socket first seen moving `from` -> `to`: known where the kernel makes one
/// (connect, accept, listen) or where its state implies it, unknown otherwise.
#[inline(always)]
pub fn first_seen_role(from: u8, to: u8) -> u8 {
    match (from, to) {
        (CLOSE, SYN_SENT) | (SYN_SENT, _) => role::CLIENT,
        // A child socket is cloned from its listener, so its first event is LISTEN -> SYN_RECV.
        (LISTEN, SYN_RECV) | (SYN_RECV | NEW_SYN_RECV, _) => role::SERVER,
        (CLOSE, LISTEN) | (LISTEN, _) => role::LISTENER,
        _ => role::UNKNOWN,
    }
}

/// Labels of an untracked full socket of `role`, its owner's cgroup included. The daemon applies
/// the same rule to the sockets its netlink polls find, so both sides agree on every socket's
/// labels.
#[inline(always)]
pub fn untracked_labels(sock: &Sock, role: u8) -> Labels {
    Labels {
        cgroup: sock.owner_cgroup(),
        ..ownerless_labels(sock, role)
    }
}

/// Labels of an untracked socket of `role` without its owner: for timewait and request sockets,
/// which carry no cgroup.
#[inline(always)]
pub fn ownerless_labels(sock: &Sock, role: u8) -> Labels {
    let port = match role {
        role::CLIENT => service_port(sock.remote_port()),
        role::SERVER | role::LISTENER => service_port(sock.local_port()),
        _ => match service_port(sock.local_port()) {
            OTHER_PORT => service_port(sock.remote_port()),
            local => local,
        },
    };
    Labels {
        port,
        family: sock.family(),
        role,
        cgroup: 0,
    }
}

#[inline(always)]
fn service_port(port: u16) -> u16 {
    if globals::is_service_port(port) {
        port
    } else {
        OTHER_PORT
    }
}

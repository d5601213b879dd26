//! Labels of a socket the kernel programs have no record for, by their rule
//! (`tcpstate-ebpf/src/labels.rs`): both sides must agree on every socket's labels.

use tcpstate_common::{
    Labels, OTHER_PORT, PortSet, role,
    state::{LISTEN, NEW_SYN_RECV, SYN_RECV, SYN_SENT},
};

use crate::sockets::sock_diag::DiagSocket;

/// The role the kernel programs give a socket they first see in `state`.
pub fn role_in_state(state: u8) -> u8 {
    match state {
        SYN_SENT => role::CLIENT,
        SYN_RECV | NEW_SYN_RECV => role::SERVER,
        LISTEN => role::LISTENER,
        _ => role::UNKNOWN,
    }
}

/// Labels of an untracked socket of `socket_role`: its service port is the remote port for a
/// client, the local one for a server or listener, either for an unknown role.
pub fn untracked_labels(ports: &PortSet, socket: &DiagSocket, socket_role: u8) -> Labels {
    let port = match socket_role {
        role::CLIENT => ports.label(socket.remote_port),
        role::SERVER | role::LISTENER => ports.label(socket.local_port),
        _ => match ports.label(socket.local_port) {
            OTHER_PORT => ports.label(socket.remote_port),
            local => local,
        },
    };
    Labels {
        port,
        family: socket.family,
        role: socket_role,
        cgroup: 0,
    }
}

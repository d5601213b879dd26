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

/// How the census labels the sockets the programs have no record for: the service ports,
/// and whether sockets carry their owner (the cgroup sock_diag reports), as the programs label
/// them with `--workloads` (without it the programs write 0, and so does the census).
#[derive(Clone, Copy, Debug)]
pub struct LabelRule {
    pub ports: PortSet,
    pub owners: bool,
}

impl LabelRule {
    /// Service ports only, no owners (as without `--workloads`).
    pub fn ports(ports: PortSet) -> Self {
        LabelRule {
            ports,
            owners: false,
        }
    }

    /// The owner label of a socket of cgroup `cgroup` (0 when owners are not labelled).
    pub fn owner(&self, cgroup: u32) -> u32 {
        if self.owners { cgroup } else { 0 }
    }

    /// Labels of an untracked socket of `socket_role`, owned by its own cgroup.
    pub fn labels(&self, socket: &DiagSocket, socket_role: u8) -> Labels {
        self.labels_owned_by(socket, socket_role, socket.cgroup)
    }

    /// Labels of an untracked socket of `socket_role` owned by `cgroup` (a request or timewait
    /// socket has no cgroup of its own: its listener's). Its service port is the remote port
    /// for a client, the local one for a server or listener, either for an unknown role.
    pub fn labels_owned_by(&self, socket: &DiagSocket, socket_role: u8, cgroup: u32) -> Labels {
        let ports = &self.ports;
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
            cgroup: self.owner(cgroup),
        }
    }
}

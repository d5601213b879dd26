//! Listeners' accept queues and the half-open queue (request sockets), as of the last poll.

use std::collections::BTreeMap;

use tcpstate_common::{PortSet, role, state::NEW_SYN_RECV};

use crate::{
    model::StateKey,
    sockets::{sock_diag::DiagSocket, untracked::untracked_labels},
};

/// An accept queue: its length now and its limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenQueue {
    pub length: u64,
    pub limit: u64,
}

#[derive(Debug, Default)]
pub struct Listen {
    /// By port label: the queues of its listeners, summed.
    pub queues: BTreeMap<u16, ListenQueue>,
    /// Request sockets (NEW_SYN_RECV), by labels.
    pub(super) requests: BTreeMap<StateKey, i64>,
}

impl Listen {
    /// Folds in a poll's listeners and request sockets.
    pub(super) fn observe(
        &mut self,
        ports: &PortSet,
        listeners: &[&DiagSocket],
        requests: &[DiagSocket],
    ) {
        self.queues.clear();
        self.requests.clear();
        for listener in listeners {
            let queue = self
                .queues
                .entry(ports.label(listener.local_port))
                .or_default();
            // sock_diag gives a listener's accept queue and its limit in the queue fields.
            queue.length += u64::from(listener.receive_queue);
            queue.limit += u64::from(listener.send_queue);
        }
        for request in requests {
            let labels = untracked_labels(ports, request, role::SERVER);
            *self
                .requests
                .entry(StateKey::new(labels, NEW_SYN_RECV))
                .or_default() += 1;
        }
    }
}

//! Listeners' accept queues and the half-open queue (request sockets): each network
//! namespace's as of its last poll, and their sums.

use std::collections::{BTreeMap, HashMap};

use tcpstate_common::{Labels, role, state::NEW_SYN_RECV};

use super::sum_counts;
use crate::{
    model::StateKey,
    sockets::{sock_diag::DiagSocket, timers::request_age_ns, untracked::LabelRule},
};

/// An accept queue: its length now and its limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenQueue {
    pub length: u64,
    pub limit: u64,
}

/// Which accept queues are summed together: the listeners' service port label and owner (the
/// listener's cgroup; 0 without `--workloads`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenKey {
    pub port: u16,
    pub cgroup: u32,
}

/// A request socket of a poll: its cookie, labels, and when it was born (the SYN's arrival,
/// read off its SYN-ACK timer).
#[derive(Clone, Copy, Debug)]
pub(super) struct RequestSocket {
    pub(super) cookie: u64,
    pub(super) labels: Labels,
    pub(super) entered_ns: u64,
}

/// One namespace's queues at its last poll.
#[derive(Debug, Default)]
struct NamespaceQueues {
    queues: BTreeMap<ListenKey, ListenQueue>,
    requests: BTreeMap<StateKey, i64>,
    request_sockets: Vec<RequestSocket>,
}

#[derive(Debug, Default)]
pub struct Listen {
    namespaces: HashMap<u32, NamespaceQueues>,
    /// By port label and owner, summed over the namespaces.
    pub queues: BTreeMap<ListenKey, ListenQueue>,
    /// Request sockets (NEW_SYN_RECV), by labels, summed over the namespaces.
    pub(super) requests: BTreeMap<StateKey, i64>,
}

impl Listen {
    /// Folds in a poll of namespace `inode`: its listeners, and its request sockets when the
    /// dump listed them (`None`: a listeners-only dump, which leaves the last ones). The sums
    /// wait for `sum`, once a poll.
    pub(super) fn observe(
        &mut self,
        inode: u32,
        rule: &LabelRule,
        listeners: &[&DiagSocket],
        requests: Option<&[DiagSocket]>,
    ) {
        let namespace = self.namespaces.entry(inode).or_default();
        namespace.queues.clear();
        for listener in listeners {
            let key = ListenKey {
                port: rule.ports.label(listener.local_port),
                cgroup: rule.owner(listener.cgroup),
            };
            let queue = namespace.queues.entry(key).or_default();
            // sock_diag gives a listener's accept queue and its limit in the queue fields.
            queue.length += u64::from(listener.receive_queue);
            queue.limit += u64::from(listener.send_queue);
        }
        if let Some(requests) = requests {
            namespace.requests.clear();
            namespace.request_sockets.clear();
            for request in requests {
                let owner = listener_owner(listeners, request).unwrap_or(0);
                let labels = rule.labels_owned_by(request, role::SERVER, owner);
                *namespace
                    .requests
                    .entry(StateKey::new(labels, NEW_SYN_RECV))
                    .or_default() += 1;
                let age_ns = request_age_ns(request.retransmits, request.expires_ms);
                namespace.request_sockets.push(RequestSocket {
                    cookie: request.cookie,
                    labels,
                    entered_ns: request.seen_ns.saturating_sub(age_ns),
                });
            }
            if namespace.request_sockets.capacity() > 4 * namespace.request_sockets.len().max(64) {
                // After a SYN flood: give the memory back.
                namespace.request_sockets.shrink_to_fit();
            }
        }
    }

    /// Hands `each` the request sockets of every namespace's last poll, with its inode.
    pub(super) fn for_each_request(&self, mut each: impl FnMut(u32, &RequestSocket)) {
        for (inode, namespace) in &self.namespaces {
            namespace
                .request_sockets
                .iter()
                .for_each(|request| each(*inode, request));
        }
    }

    /// Forgets a namespace gone.
    pub(super) fn retire(&mut self, inode: u32) {
        if self.namespaces.remove(&inode).is_some() {
            self.sum();
        }
    }

    /// The namespaces whose last poll found request sockets: polled whole until they go.
    pub(super) fn with_requests(&self) -> impl Iterator<Item = u32> + '_ {
        self.namespaces
            .iter()
            .filter(|(_, namespace)| !namespace.requests.is_empty())
            .map(|(inode, _)| *inode)
    }

    /// The sums over the namespaces.
    pub(super) fn sum(&mut self) {
        self.queues.clear();
        for namespace in self.namespaces.values() {
            for (key, queue) in &namespace.queues {
                let total = self.queues.entry(*key).or_default();
                total.length += queue.length;
                total.limit += queue.limit;
            }
        }
        self.requests = sum_counts(self.namespaces.values().map(|n| &n.requests));
    }
}

/// The cgroup of the listener a request or timewait socket of the same namespace came
/// through: the one listening on its local port, of its family if there is one.
pub(super) fn listener_owner(listeners: &[&DiagSocket], socket: &DiagSocket) -> Option<u32> {
    let on_port = || {
        listeners
            .iter()
            .filter(|l| l.local_port == socket.local_port)
    };
    on_port()
        .find(|l| l.family == socket.family)
        .or_else(|| on_port().next())
        .map(|listener| listener.cgroup)
}

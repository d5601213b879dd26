//! The sockets `inet_sock_set_state` never reports, counted from sock_diag polls, by concern:
//! `timewait` (TIME_WAIT and the FIN_WAIT2 of orphaned connections), `listen` (accept queues
//! and request sockets), `stale` (records the kernel programs left behind) and `baseline` (the
//! sockets that existed before the daemon started). Pure logic: the polls and the kernel's
//! handoff records are handed in.

pub mod baseline;
pub mod listen;
pub mod stale;
pub mod timewait;

use std::collections::BTreeMap;

use tcpstate_common::{
    PortSet, TimewaitHandoff,
    state::{CLOSING, FIN_WAIT1, FIN_WAIT2, LAST_ACK, LISTEN, TIME_WAIT},
};

pub use baseline::Baseline;
pub use listen::ListenQueue;
pub use stale::RecordSweep;

use crate::{
    bpf::loader::Tracer,
    model::{EdgeKey, Histogram, StateKey},
    sockets::sock_diag::DiagSocket,
    sys,
};
use listen::Listen;
use stale::Stale;
use timewait::Timewait;

/// The states the sock_diag polls list: listeners (accept queues), timewait sockets, and the
/// full sockets of a closing connection, which exist for seconds to minutes, so that the
/// records of those the kernel's programs never saw close are found (see `stale`). Request
/// sockets are polled apart.
pub const POLLED_STATES: [u8; 6] = [LISTEN, TIME_WAIT, FIN_WAIT1, FIN_WAIT2, CLOSING, LAST_ACK];

pub struct Census {
    ports: PortSet,
    timewait: Timewait,
    listen: Listen,
    stale: Stale,
    /// Full sockets older than the programs that have not moved since.
    pub baseline: Baseline,
}

impl Census {
    /// `net_inode`: the daemon's network namespace (see `sys::net_namespace_inode`).
    pub fn new(
        ports: PortSet,
        bounds_ns: Vec<u64>,
        started_ns: u64,
        net_inode: u32,
        baseline: Baseline,
    ) -> Self {
        Census {
            timewait: Timewait::new(ports, bounds_ns, started_ns),
            ports,
            listen: Listen::default(),
            stale: Stale::new(net_inode),
            baseline,
        }
    }

    /// The census of a daemon starting now, with the programs of `tracer` attached: the
    /// sockets older than them listed (or, if sock_diag cannot, counted from their first move).
    pub fn at_start(tracer: &Tracer, ports: PortSet, bounds_ns: Vec<u64>) -> anyhow::Result<Self> {
        let started_ns = sys::monotonic_ns();
        let baseline = baseline::list(tracer, &ports).unwrap_or_else(|error| {
            log::warn!(
                "cannot list existing sockets with sock_diag ({error}): sockets older than \
                 tcpstated are not counted until they change state"
            );
            Baseline::default()
        });
        let net_inode = sys::net_namespace_inode()?;
        Ok(Census::new(
            ports, bounds_ns, started_ns, net_inode, baseline,
        ))
    }

    /// Takes the kernel's records of connections handed to timewait sockets (by cookie).
    pub fn add_handoff(&mut self, cookie: u64, handoff: TimewaitHandoff) {
        self.timewait.add_handoff(cookie, handoff);
    }

    /// Folds in one poll: `polled` are the sockets in `POLLED_STATES` (full and timewait),
    /// `requests` the request sockets; the poll ran over `started_ns..now_ns`. Times read off
    /// a socket's timer count from when that socket was read (`seen_ns`), not from `now_ns`: a
    /// poll of many sockets on a busy host takes a while.
    pub fn observe(
        &mut self,
        polled: &[DiagSocket],
        requests: &[DiagSocket],
        started_ns: u64,
        now_ns: u64,
    ) {
        self.stale.observe(polled, started_ns, now_ns);
        let listeners: Vec<&DiagSocket> = polled
            .iter()
            .filter(|s| s.state == LISTEN && !s.timewait)
            .collect();
        self.listen.observe(&self.ports, &listeners, requests);
        self.timewait.observe(polled, &listeners, now_ns);
    }

    /// Sockets now in each state as the census sees them: the timewait and request sockets of
    /// the last poll, less the tracked sockets gone without their last events (which the
    /// kernel's transitions still count in the state their records were left in).
    pub fn sockets_now(&self) -> BTreeMap<StateKey, i64> {
        let mut sockets = self.timewait.by_state.clone();
        for (key, count) in &self.listen.requests {
            *sockets.entry(*key).or_default() += count;
        }
        for (key, gone) in &self.stale.undelivered_exits {
            *sockets.entry(*key).or_default() -= gone;
        }
        sockets
    }

    /// Transitions the polls saw (timewait substate changes and ends), cumulative.
    pub fn transitions(&self) -> &BTreeMap<EdgeKey, u64> {
        &self.timewait.transitions
    }

    pub fn durations(&self) -> &BTreeMap<EdgeKey, Histogram> {
        &self.timewait.durations
    }

    /// Accept queues by port label, as of the last poll.
    pub fn listen_queues(&self) -> &BTreeMap<u16, ListenQueue> {
        &self.listen.queues
    }

    /// Sockets found gone without their exit reaching the kernel programs.
    pub fn undelivered_closes(&self) -> u64 {
        self.stale.undelivered_closes
    }
}

#[cfg(test)]
mod tests;

//! Timewait sockets (TIME_WAIT, and the FIN_WAIT2 of orphaned connections), which no tracepoint
//! reports: followed from poll to poll, with the labels and start times of the kernel's
//! handoff records, until a poll no longer lists them.
//!
//! A timewait socket's durations come from the kernel's timers (millisecond resolution): its
//! timer is set to TCP_TIMEWAIT_LEN when it enters TIME_WAIT, so `expires` tells when it
//! entered and when it will end. Only one killed early (RST, port reuse) has its end known to
//! within one poll.

use std::collections::{BTreeMap, HashMap};

use tcpstate_common::{
    Labels, PortSet, TimewaitHandoff, bucket_index, role,
    state::{CLOSE, FIN_WAIT2, TIME_WAIT},
};

use crate::{
    model::{EdgeKey, Histogram, StateKey},
    sockets::{sock_diag::DiagSocket, untracked::untracked_labels},
};

/// TCP_TIMEWAIT_LEN (include/net/tcp.h): 60 s, fixed at compile time.
pub const TIMEWAIT_LEN_NS: u64 = 60_000_000_000;
/// How many polls a handoff record waits for its timewait socket: the record can be drained
/// just before the poll that first sees the socket, or just after it. A record still unmatched
/// then belongs to a timewait socket this daemon cannot see (another network namespace) or one
/// already gone.
const HANDOFF_POLLS: u8 = 2;

#[derive(Clone, Copy, Debug)]
pub(super) struct TimewaitSocket {
    pub(super) labels: Labels,
    /// TIME_WAIT or FIN_WAIT2.
    pub(super) substate: u8,
    /// When it entered `substate`, if known (and after the daemon started).
    entered_ns: Option<u64>,
    /// When its timer will end it.
    ends_ns: u64,
    /// The last poll that listed it (`Timewait::polls`).
    polled: u32,
    /// First listed in TIME_WAIT without a handoff: a FIN_WAIT2 it went through (an orphan's)
    /// is not counted yet.
    fin_wait2_unseen: bool,
}

/// A handoff waiting for its timewait socket, packed (16 bytes: a busy host holds hundreds of
/// thousands between two polls).
#[derive(Clone, Copy, Debug)]
pub(super) struct PendingHandoff {
    entered_ns: u64,
    port: u16,
    family: u8,
    role: u8,
    state: u8,
    polls_left: u8,
}
const _: () = assert!(size_of::<PendingHandoff>() == 16);

impl PendingHandoff {
    fn new(handoff: TimewaitHandoff) -> Self {
        PendingHandoff {
            entered_ns: handoff.entered_ns,
            port: handoff.labels.port,
            family: handoff.labels.family,
            role: handoff.labels.role,
            state: handoff.state,
            polls_left: HANDOFF_POLLS,
        }
    }

    fn handoff(&self) -> TimewaitHandoff {
        TimewaitHandoff {
            entered_ns: self.entered_ns,
            labels: Labels {
                port: self.port,
                family: self.family,
                role: self.role,
                cgroup: 0,
            },
            state: self.state,
            _padding: [0; 3],
            net_inode: 0,
        }
    }
}

/// The timewait sockets of the last poll and what the polls saw them do.
pub struct Timewait {
    ports: PortSet,
    bounds_ns: Vec<u64>,
    started_ns: u64,
    pub(super) sockets: HashMap<u64, TimewaitSocket>,
    /// Polls folded in so far.
    polls: u32,
    pub(super) handoffs: HashMap<u64, PendingHandoff>,
    /// Cookies of the timewait sockets polls found new and without a handoff record, not yet
    /// checked against the slot table, and when the last of those polls ended.
    pub(super) unclaimed: Vec<u64>,
    pub(super) unclaimed_polled_ns: u64,
    /// Transitions the polls saw (substate changes and ends), cumulative.
    pub transitions: BTreeMap<EdgeKey, u64>,
    pub durations: BTreeMap<EdgeKey, Histogram>,
    /// Timewait sockets at the last poll, by labels and substate.
    pub(super) by_state: BTreeMap<StateKey, i64>,
}

impl Timewait {
    pub(super) fn new(ports: PortSet, bounds_ns: Vec<u64>, started_ns: u64) -> Self {
        Timewait {
            ports,
            bounds_ns,
            started_ns,
            sockets: HashMap::new(),
            polls: 0,
            handoffs: HashMap::new(),
            unclaimed: Vec::new(),
            unclaimed_polled_ns: 0,
            transitions: BTreeMap::new(),
            durations: BTreeMap::new(),
            by_state: BTreeMap::new(),
        }
    }

    /// Takes the kernel's record of a connection handed to a timewait socket (by cookie).
    pub(super) fn add_handoff(&mut self, cookie: u64, handoff: TimewaitHandoff) {
        if let Some(entry) = self.sockets.get_mut(&cookie) {
            // Polled before its record arrived: take the socket's own labels and times.
            entry.labels = handoff.labels;
            if entry.substate == handoff.state && handoff.entered_ns >= self.started_ns {
                entry.entered_ns = Some(handoff.entered_ns);
            }
            if handoff.state == FIN_WAIT2 && entry.fin_wait2_unseen {
                // An orphan first polled in TIME_WAIT, after its FIN_WAIT2 ended.
                entry.fin_wait2_unseen = false;
                let (labels, entered_time_wait) = (entry.labels, entry.entered_ns);
                let duration = entered_time_wait
                    .filter(|_| handoff.entered_ns >= self.started_ns)
                    .map(|at| at.saturating_sub(handoff.entered_ns));
                self.count(labels, FIN_WAIT2, TIME_WAIT, duration);
            }
            return;
        }
        self.handoffs.insert(cookie, PendingHandoff::new(handoff));
    }

    /// Folds in the timewait sockets of one poll that ended at `now_ns` (`listeners`: its
    /// listening sockets, for the labels of timewait sockets without a handoff). Updated in
    /// place (a busy host has hundreds of thousands: no second map of them): each listed
    /// socket is stamped with this poll.
    pub(super) fn observe(
        &mut self,
        polled: &[DiagSocket],
        listeners: &[&DiagSocket],
        now_ns: u64,
    ) {
        self.by_state.clear();
        self.polls = self.polls.wrapping_add(1);
        for socket in polled.iter().filter(|s| s.timewait) {
            let entry = match self.sockets.get(&socket.cookie).copied() {
                Some(entry) => self.seen_again(entry, socket),
                None => self.first_seen(socket, listeners),
            };
            *self
                .by_state
                .entry(StateKey::new(entry.labels, entry.substate))
                .or_default() += 1;
            self.sockets.insert(socket.cookie, entry);
        }
        self.end_unlisted(now_ns);
        self.end_unmatched_handoffs();
        if !self.unclaimed.is_empty() {
            self.unclaimed_polled_ns = now_ns;
        }
    }

    /// When `socket`'s timer ends, and when it was last (re)started at TCP_TIMEWAIT_LEN.
    fn timer(socket: &DiagSocket) -> (u64, Option<u64>) {
        let ends_ns = socket.seen_ns + u64::from(socket.expires_ms) * 1_000_000;
        // The timer restarts at TCP_TIMEWAIT_LEN when a timewait socket enters TIME_WAIT.
        let timer_start = ends_ns
            .checked_sub(TIMEWAIT_LEN_NS)
            .map(|at| at.min(socket.seen_ns));
        (ends_ns, timer_start)
    }

    /// A time, if it is after the daemon started (earlier ones give no duration).
    fn known(&self, at: Option<u64>) -> Option<u64> {
        at.filter(|at| *at >= self.started_ns)
    }

    /// A socket an earlier poll listed: the peer's FIN may have moved it FIN_WAIT2 -> TIME_WAIT.
    fn seen_again(&mut self, mut entry: TimewaitSocket, socket: &DiagSocket) -> TimewaitSocket {
        let (ends_ns, timer_start) = Self::timer(socket);
        if entry.substate == FIN_WAIT2 && socket.state == TIME_WAIT {
            // The peer's FIN arrived: FIN_WAIT2 -> TIME_WAIT at the timer's restart.
            let at = timer_start.unwrap_or(socket.seen_ns);
            let duration = entry.entered_ns.map(|start| at.saturating_sub(start));
            self.count(entry.labels, FIN_WAIT2, TIME_WAIT, duration);
            entry.substate = TIME_WAIT;
            entry.entered_ns = self.known(Some(at));
        }
        entry.ends_ns = ends_ns;
        entry.polled = self.polls;
        entry
    }

    /// A socket no earlier poll listed: its handoff gives its labels and start, if it came.
    fn first_seen(&mut self, socket: &DiagSocket, listeners: &[&DiagSocket]) -> TimewaitSocket {
        let (ends_ns, timer_start) = Self::timer(socket);
        let handoff = self.handoffs.remove(&socket.cookie).map(|p| p.handoff());
        if handoff.is_none() {
            self.unclaimed.push(socket.cookie);
        }
        let labels = match handoff {
            Some(handoff) => handoff.labels,
            None => self.inferred_labels(socket, listeners),
        };
        let polled = self.polls;
        let entry = |substate, entered_ns, fin_wait2_unseen| TimewaitSocket {
            labels,
            substate,
            entered_ns,
            ends_ns,
            polled,
            fin_wait2_unseen,
        };
        match (socket.state, handoff) {
            (TIME_WAIT, Some(handoff)) if handoff.state == FIN_WAIT2 => {
                // An orphan whose peer's FIN came before this first sighting.
                let at = timer_start.unwrap_or(socket.seen_ns);
                let duration = self
                    .known(Some(handoff.entered_ns))
                    .map(|start| at.saturating_sub(start));
                self.count(labels, FIN_WAIT2, TIME_WAIT, duration);
                entry(TIME_WAIT, self.known(Some(at)), false)
            }
            (state, Some(handoff)) => entry(state, self.known(Some(handoff.entered_ns)), false),
            (TIME_WAIT, None) => entry(TIME_WAIT, self.known(timer_start), true),
            (state, None) => entry(state, None, false),
        }
    }

    /// Those this poll did not list have ended: when their timer said, or (killed early) by now.
    fn end_unlisted(&mut self, now_ns: u64) {
        let poll = self.polls;
        let ended: Vec<TimewaitSocket> = self
            .sockets
            .extract_if(|_, entry| entry.polled != poll)
            .map(|(_, entry)| entry)
            .collect();
        if self.sockets.capacity() > 4 * self.sockets.len().max(1024) {
            // After a burst: give the memory back.
            self.sockets.shrink_to_fit();
        }
        for entry in ended {
            let end = entry.ends_ns.min(now_ns);
            let duration = entry.entered_ns.map(|start| end.saturating_sub(start));
            self.count(entry.labels, entry.substate, CLOSE, duration);
        }
    }

    /// A record whose timewait socket no poll found: none was created (the kernel's
    /// net.ipv4.tcp_max_tw_buckets was reached: the connection closed at once), it lives in
    /// another network namespace, or it ended between two polls. The connection has left (or
    /// is not seen in) its state: counted ended, without a duration, so that what enters
    /// TIME_WAIT also leaves it.
    fn end_unmatched_handoffs(&mut self) {
        let mut unmatched = Vec::new();
        self.handoffs.retain(|_, pending| {
            pending.polls_left -= 1;
            if pending.polls_left == 0 {
                unmatched.push(pending.handoff());
            }
            pending.polls_left > 0
        });
        for handoff in unmatched {
            self.count(handoff.labels, handoff.state, CLOSE, None);
        }
        if self.handoffs.capacity() > 4 * self.handoffs.len().max(1024) {
            self.handoffs.shrink_to_fit();
        }
    }

    /// A timewait socket without a handoff record (older than the daemon, or its record gave
    /// way): whoever closed first holds it; it is the server's if its local port is listening.
    fn inferred_labels(&self, socket: &DiagSocket, listeners: &[&DiagSocket]) -> Labels {
        let is_server = listeners
            .iter()
            .any(|l| l.local_port == socket.local_port && l.family == socket.family);
        let role = if is_server {
            role::SERVER
        } else {
            role::CLIENT
        };
        untracked_labels(&self.ports, socket, role)
    }

    /// Gives the timewait socket `cookie` (if listed) the full socket's `labels`, found on its
    /// record left behind.
    pub(super) fn relabel(&mut self, cookie: u64, labels: Labels) {
        if let Some(entry) = self.sockets.get_mut(&cookie)
            && entry.labels != labels
        {
            *self
                .by_state
                .entry(StateKey::new(entry.labels, entry.substate))
                .or_default() -= 1;
            *self
                .by_state
                .entry(StateKey::new(labels, entry.substate))
                .or_default() += 1;
            entry.labels = labels;
        }
    }

    fn count(&mut self, labels: Labels, from: u8, to: u8, duration_ns: Option<u64>) {
        let key = EdgeKey::new(labels, from, to);
        *self.transitions.entry(key).or_default() += 1;
        if let Some(duration_ns) = duration_ns {
            let bounds = &self.bounds_ns;
            let histogram = self.durations.entry(key).or_insert_with(|| Histogram {
                buckets: vec![0; bounds.len()],
                ..Histogram::default()
            });
            histogram.count += 1;
            histogram.sum_ns += duration_ns;
            let index = bucket_index(|i| bounds.get(i).copied().unwrap_or(u64::MAX), duration_ns);
            if let Some(bucket) = histogram.buckets.get_mut(index) {
                *bucket += 1;
            }
        }
    }
}

//! Timewait sockets (TIME_WAIT, and the FIN_WAIT2 of orphaned connections), which no tracepoint
//! reports: followed from poll to poll of their network namespace, with the labels and start
//! times of the kernel's handoff records (which name the namespace), until a poll of that
//! namespace no longer lists them, or the namespace goes (its exit purges them).
//!
//! A timewait socket's durations come from the kernel's timers (millisecond resolution): its
//! timer is set to TCP_TIMEWAIT_LEN when it enters TIME_WAIT, so `expires` tells when it
//! entered and when it will end. Only one killed early (RST, port reuse) has its end known to
//! within one poll.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tcpstate_common::{
    Labels, TimewaitHandoff, bucket_index, role,
    state::{CLOSE, FIN_WAIT2, TIME_WAIT},
};

use super::{listen::listener_owner, sum_counts};
use crate::{
    kept::{Reader, Unreadable, Writer},
    model::{EdgeKey, Histogram, StateKey},
    sockets::{
        sock_diag::DiagSocket,
        timers::{TIMEWAIT_LEN_NS, timewait_span_ns},
        untracked::LabelRule,
    },
};

/// How many polls of its namespace a handoff record waits for its timewait socket: the record
/// can be drained just before the poll that first sees the socket, or just after it. A record
/// still unmatched then belongs to a timewait socket already gone (or none was created).
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

/// A handoff waiting for its timewait socket (a busy host holds hundreds of thousands between
/// two polls: its namespace is the key of the map that holds it).
#[derive(Clone, Copy, Debug)]
pub(super) struct PendingHandoff {
    entered_ns: u64,
    labels: Labels,
    state: u8,
    polls_left: u8,
}
const _: () = assert!(size_of::<PendingHandoff>() == 24);

impl PendingHandoff {
    fn new(handoff: TimewaitHandoff) -> Self {
        PendingHandoff {
            entered_ns: handoff.entered_ns,
            labels: handoff.labels,
            state: handoff.state,
            polls_left: HANDOFF_POLLS,
        }
    }
}

/// One network namespace's timewait sockets, and the handoffs waiting for theirs.
#[derive(Debug, Default)]
pub(super) struct NamespaceTimewait {
    pub(super) sockets: HashMap<u64, TimewaitSocket>,
    /// Full polls of the namespace folded in so far.
    polls: u32,
    /// Its timewait sockets at its last full poll, by labels and substate.
    by_state: BTreeMap<StateKey, i64>,
    pub(super) handoffs: HashMap<u64, PendingHandoff>,
    /// Its `net.ipv4.tcp_fin_timeout` at its last full poll (s), if read: how long its
    /// FIN_WAIT2 timewait sockets last.
    fin_timeout_s: Option<u32>,
}

impl NamespaceTimewait {
    fn is_empty(&self) -> bool {
        self.sockets.is_empty() && self.handoffs.is_empty()
    }
}

/// The timewait sockets of each namespace's last full poll and what the polls saw them do.
pub struct Timewait {
    rule: LabelRule,
    bounds_ns: Vec<u64>,
    started_ns: u64,
    /// By namespace inode: only those with timewait sockets or handoffs.
    pub(super) namespaces: HashMap<u32, NamespaceTimewait>,
    /// Cookies of the timewait sockets polls found new and without a handoff record, not yet
    /// checked against the slot table, and when the last of those polls ended.
    pub(super) unclaimed: Vec<u64>,
    pub(super) unclaimed_polled_ns: u64,
    /// Transitions the polls saw (substate changes and ends), cumulative.
    pub transitions: BTreeMap<EdgeKey, u64>,
    pub durations: BTreeMap<EdgeKey, Histogram>,
    /// Timewait sockets of every namespace, by labels and substate.
    pub(super) by_state: BTreeMap<StateKey, i64>,
}

impl Timewait {
    pub(super) fn new(rule: LabelRule, bounds_ns: Vec<u64>, started_ns: u64) -> Self {
        Timewait {
            rule,
            bounds_ns,
            started_ns,
            namespaces: HashMap::new(),
            unclaimed: Vec::new(),
            unclaimed_polled_ns: 0,
            transitions: BTreeMap::new(),
            durations: BTreeMap::new(),
            by_state: BTreeMap::new(),
        }
    }

    /// Hands `each` every timewait socket followed (see `Census::for_each_polled_socket`):
    /// when it entered its substate is the handoff's exact time, else read off its timer.
    pub(super) fn for_each_socket(&self, mut each: impl FnMut(u32, u64, Labels, u8, Option<u64>)) {
        for (inode, namespace) in &self.namespaces {
            for (cookie, socket) in &namespace.sockets {
                let entered_ns = socket.entered_ns.or_else(|| {
                    let span = timewait_span_ns(socket.substate, namespace.fin_timeout_s)?;
                    Some(socket.ends_ns.saturating_sub(span))
                });
                each(*inode, *cookie, socket.labels, socket.substate, entered_ns);
            }
        }
    }

    /// Takes the kernel's record of a connection handed to a timewait socket (by cookie), which
    /// the polls of its namespace will find.
    pub(super) fn add_handoff(&mut self, cookie: u64, handoff: TimewaitHandoff) {
        let started_ns = self.started_ns;
        let namespace = self.namespaces.entry(handoff.net_inode).or_default();
        let Some(entry) = namespace.sockets.get_mut(&cookie) else {
            namespace
                .handoffs
                .insert(cookie, PendingHandoff::new(handoff));
            return;
        };
        // Polled before its record arrived: take the socket's own labels and times.
        entry.labels = handoff.labels;
        if entry.substate == handoff.state && handoff.entered_ns >= started_ns {
            entry.entered_ns = Some(handoff.entered_ns);
        }
        if handoff.state == FIN_WAIT2 && entry.fin_wait2_unseen {
            // An orphan first polled in TIME_WAIT, after its FIN_WAIT2 ended.
            entry.fin_wait2_unseen = false;
            let (labels, entered_time_wait) = (entry.labels, entry.entered_ns);
            let duration = entered_time_wait
                .filter(|_| handoff.entered_ns >= started_ns)
                .map(|at| at.saturating_sub(handoff.entered_ns));
            self.count(labels, FIN_WAIT2, TIME_WAIT, duration);
        }
    }

    /// Folds in the timewait sockets of a full poll of namespace `inode` that ended at `now_ns`
    /// (`listeners`: its listening sockets, for the labels of timewait sockets without a
    /// handoff; `fin_timeout_s`: its `tcp_fin_timeout`, if read). Updated in place (a busy
    /// host has hundreds of thousands: no second map of them): each listed socket is stamped
    /// with this poll of its namespace.
    pub(super) fn observe(
        &mut self,
        inode: u32,
        polled: &[DiagSocket],
        listeners: &[&DiagSocket],
        fin_timeout_s: Option<u32>,
        now_ns: u64,
    ) {
        let mut namespace = self.namespaces.remove(&inode).unwrap_or_default();
        namespace.by_state.clear();
        namespace.fin_timeout_s = fin_timeout_s;
        namespace.polls = namespace.polls.wrapping_add(1);
        for socket in polled.iter().filter(|s| s.timewait) {
            let entry = match namespace.sockets.get(&socket.cookie).copied() {
                Some(entry) => self.seen_again(entry, socket, namespace.polls),
                None => self.first_seen(&mut namespace, socket, listeners),
            };
            *namespace
                .by_state
                .entry(StateKey::new(entry.labels, entry.substate))
                .or_default() += 1;
            namespace.sockets.insert(socket.cookie, entry);
        }
        self.end_unlisted(&mut namespace, now_ns);
        self.namespaces.insert(inode, namespace);
        if !self.unclaimed.is_empty() {
            self.unclaimed_polled_ns = now_ns;
        }
    }

    /// A namespace gone: the kernel purged its timewait sockets when it went (ended by now);
    /// the handoffs waiting for them end without a duration.
    pub(super) fn retire(&mut self, inode: u32, now_ns: u64) {
        let Some(namespace) = self.namespaces.remove(&inode) else {
            return;
        };
        for entry in namespace.sockets.into_values() {
            self.end(entry, now_ns);
        }
        for pending in namespace.handoffs.into_values() {
            self.count(pending.labels, pending.state, CLOSE, None);
        }
        self.sum();
    }

    /// The namespaces with timewait sockets to follow: listed by their last poll, or named by
    /// handoffs.
    pub(super) fn busy(&self) -> impl Iterator<Item = u32> + '_ {
        self.namespaces.keys().copied()
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
    fn seen_again(
        &mut self,
        mut entry: TimewaitSocket,
        socket: &DiagSocket,
        poll: u32,
    ) -> TimewaitSocket {
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
        entry.polled = poll;
        entry
    }

    /// A socket no earlier poll listed: its handoff gives its labels and start, if it came.
    fn first_seen(
        &mut self,
        namespace: &mut NamespaceTimewait,
        socket: &DiagSocket,
        listeners: &[&DiagSocket],
    ) -> TimewaitSocket {
        let (ends_ns, timer_start) = Self::timer(socket);
        let handoff = namespace.handoffs.remove(&socket.cookie);
        if handoff.is_none() {
            self.unclaimed.push(socket.cookie);
        }
        let labels = match handoff {
            Some(handoff) => handoff.labels,
            None => self.inferred_labels(socket, listeners),
        };
        let polled = namespace.polls;
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

    /// Those this poll of their namespace did not list have ended: when their timer said, or
    /// (killed early) by now.
    fn end_unlisted(&mut self, namespace: &mut NamespaceTimewait, now_ns: u64) {
        let poll = namespace.polls;
        let ended: Vec<TimewaitSocket> = namespace
            .sockets
            .extract_if(|_, entry| entry.polled != poll)
            .map(|(_, entry)| entry)
            .collect();
        if namespace.sockets.capacity() > 4 * namespace.sockets.len().max(1024) {
            // After a burst: give the memory back.
            namespace.sockets.shrink_to_fit();
        }
        for entry in ended {
            self.end(entry, now_ns);
        }
    }

    fn end(&mut self, entry: TimewaitSocket, now_ns: u64) {
        let end = entry.ends_ns.min(now_ns);
        let duration = entry.entered_ns.map(|start| end.saturating_sub(start));
        self.count(entry.labels, entry.substate, CLOSE, duration);
    }

    /// After a poll: the handoffs of the namespaces it polled whole (`dumped`), or that no poll
    /// covers (`covered` says which are), have waited one more poll. Those that waited their
    /// polls have no timewait socket: none was created (the kernel's
    /// net.ipv4.tcp_max_tw_buckets was reached: the connection closed at once), it ended
    /// between two polls, or no poll can see it. The connection has left (or is not seen in)
    /// its state: counted ended, without a duration, so that what enters TIME_WAIT also leaves
    /// it. Then the sums of every namespace.
    pub(super) fn end_unmatched_handoffs(
        &mut self,
        dumped: &BTreeSet<u32>,
        covered: impl Fn(u32) -> bool,
    ) {
        let mut unmatched = Vec::new();
        for (inode, namespace) in &mut self.namespaces {
            if !dumped.contains(inode) && covered(*inode) {
                continue;
            }
            namespace.handoffs.retain(|_, pending| {
                pending.polls_left -= 1;
                if pending.polls_left == 0 {
                    unmatched.push(*pending);
                }
                pending.polls_left > 0
            });
            if namespace.handoffs.capacity() > 4 * namespace.handoffs.len().max(1024) {
                namespace.handoffs.shrink_to_fit();
            }
        }
        for pending in unmatched {
            self.count(pending.labels, pending.state, CLOSE, None);
        }
        self.namespaces.retain(|_, namespace| !namespace.is_empty());
        self.sum();
    }

    fn sum(&mut self) {
        self.by_state = sum_counts(self.namespaces.values().map(|n| &n.by_state));
    }

    /// A timewait socket without a handoff record (older than the daemon, or its record gave
    /// way): whoever closed first holds it; it is the server's if its local port is listening,
    /// and then owned by that listener's cgroup.
    fn inferred_labels(&self, socket: &DiagSocket, listeners: &[&DiagSocket]) -> Labels {
        let listener = listeners
            .iter()
            .find(|l| l.local_port == socket.local_port && l.family == socket.family);
        match listener {
            Some(_) => {
                let owner = listener_owner(listeners, socket).unwrap_or(0);
                self.rule.labels_owned_by(socket, role::SERVER, owner)
            }
            None => self.rule.labels_owned_by(socket, role::CLIENT, 0),
        }
    }

    /// Gives the timewait socket `cookie` (if listed) the full socket's `labels`, found on its
    /// record left behind.
    pub(super) fn relabel(&mut self, cookie: u64, labels: Labels) {
        let found = self.namespaces.values_mut().find_map(|namespace| {
            let entry = namespace.sockets.get_mut(&cookie)?;
            Some((entry, &mut namespace.by_state))
        });
        let Some((entry, by_state)) = found else {
            return;
        };
        if entry.labels == labels {
            return;
        }
        for by_state in [by_state, &mut self.by_state] {
            *by_state
                .entry(StateKey::new(entry.labels, entry.substate))
                .or_default() -= 1;
            *by_state
                .entry(StateKey::new(labels, entry.substate))
                .or_default() += 1;
        }
        entry.labels = labels;
    }

    /// Writes what a restarted daemon needs to go on: the counts so far, each namespace's
    /// timewait sockets with their labels and times, and the handoffs still waiting.
    pub(super) fn save(&self, out: &mut Writer) {
        out.edge_counts(&self.transitions);
        out.histograms(&self.durations);
        out.count(self.namespaces.len());
        for (inode, namespace) in &self.namespaces {
            out.u32(*inode);
            out.u32(namespace.polls);
            out.count(namespace.sockets.len());
            for (cookie, socket) in &namespace.sockets {
                out.u64(*cookie);
                out.labels(socket.labels);
                out.u8(socket.substate);
                out.option(socket.entered_ns);
                out.u64(socket.ends_ns);
                out.u32(socket.polled);
                out.u8(u8::from(socket.fin_wait2_unseen));
            }
            out.count(namespace.handoffs.len());
            for (cookie, pending) in &namespace.handoffs {
                out.u64(*cookie);
                out.u64(pending.entered_ns);
                out.labels(pending.labels);
                out.u8(pending.state);
                out.u8(pending.polls_left);
            }
        }
    }

    /// Takes back what `save` wrote.
    pub(super) fn restore(&mut self, input: &mut Reader<'_>) -> Result<(), Unreadable> {
        self.transitions = input.edge_counts()?;
        self.durations = input.histograms()?;
        for _ in 0..input.count()? {
            let inode = input.u32()?;
            let mut namespace = NamespaceTimewait {
                polls: input.u32()?,
                ..NamespaceTimewait::default()
            };
            for _ in 0..input.count()? {
                let cookie = input.u64()?;
                let socket = TimewaitSocket {
                    labels: input.labels()?,
                    substate: input.u8()?,
                    entered_ns: input.option()?,
                    ends_ns: input.u64()?,
                    polled: input.u32()?,
                    fin_wait2_unseen: input.u8()? != 0,
                };
                *namespace
                    .by_state
                    .entry(StateKey::new(socket.labels, socket.substate))
                    .or_default() += 1;
                namespace.sockets.insert(cookie, socket);
            }
            for _ in 0..input.count()? {
                let cookie = input.u64()?;
                let pending = PendingHandoff {
                    entered_ns: input.u64()?,
                    labels: input.labels()?,
                    state: input.u8()?,
                    polls_left: input.u8()?.clamp(1, HANDOFF_POLLS),
                };
                namespace.handoffs.insert(cookie, pending);
            }
            self.namespaces.insert(inode, namespace);
        }
        self.sum();
        Ok(())
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

//! The sockets `inet_sock_set_state` never reports, counted from sock_diag polls: timewait
//! sockets (TIME_WAIT, and the FIN_WAIT2 of orphaned connections), request sockets (the
//! half-open queue), listeners' accept queues, and the sockets that existed before the daemon
//! started. Pure logic: the polls and the kernel's handoff records are handed in.
//!
//! Resolution: a timewait socket's end is found at the first poll after it (polls run at scrape
//! time), but its durations come from the kernel's timers (millisecond resolution): a timewait
//! socket's timer is set to TCP_TIMEWAIT_LEN when it enters TIME_WAIT, so `expires` tells when
//! it entered and when it will end. Only a timewait socket killed early (RST, port reuse) has
//! its end known to within one poll.

use std::collections::{BTreeMap, HashMap};
use tcpstate_common::state::{
    CLOSE, CLOSING, FIN_WAIT1, FIN_WAIT2, LAST_ACK, LISTEN, NEW_SYN_RECV, SYN_RECV, SYN_SENT,
    TIME_WAIT,
};

use tcpstate_common::{
    Labels, OTHER_PORT, PortSet, SocketRecord, TimewaitHandoff, bucket_index, role,
};

use crate::{
    aggregate::{Edge, Histogram},
    baseline::Baseline,
    sock_diag::DiagSocket,
    sys::SlotSweep,
};

/// TCP_TIMEWAIT_LEN (include/net/tcp.h): 60 s, fixed at compile time.
pub const TIMEWAIT_LEN_NS: u64 = 60_000_000_000;
/// How many polls a handoff record waits for its timewait socket: the record can be drained
/// just before the poll that first sees the socket, or just after it. A record still unmatched
/// then belongs to a timewait socket this daemon cannot see (another network namespace) or one
/// already gone.
const HANDOFF_POLLS: u8 = 2;
/// How long after a poll saw a timewait socket the slot table may be checked for the full
/// socket's record (see `RecordSweep`). The kernel inserts the timewait socket just before the
/// full socket's CLOSE, in the same call: microseconds apart. Far longer, to be sure.
const STALE_RECORD_DELAY_NS: u64 = 100_000_000;

/// The states the sock_diag polls list: listeners (accept queues), timewait sockets, and the
/// full sockets of a closing connection, which exist for seconds to minutes, so that the
/// records of those the kernel's programs never saw close are found (see
/// `Census::record_sweep`). Request sockets are polled apart.
pub const POLLED_STATES: [u8; 6] = [LISTEN, TIME_WAIT, FIN_WAIT1, FIN_WAIT2, CLOSING, LAST_ACK];

/// The role the kernel program gives a socket it first sees in `state` (see
/// `tcpstate-ebpf/src/labels.rs`): both sides must agree.
pub fn role_in_state(state: u8) -> u8 {
    match state {
        SYN_SENT => role::CLIENT,
        SYN_RECV | NEW_SYN_RECV => role::SERVER,
        LISTEN => role::LISTENER,
        _ => role::UNKNOWN,
    }
}

/// Labels of an untracked socket, by the kernel program's rule (`untracked_labels`).
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
        _padding: [0; 4],
    }
}

#[derive(Clone, Copy, Debug)]
struct TimewaitSocket {
    labels: Labels,
    /// TIME_WAIT or FIN_WAIT2.
    substate: u8,
    /// When it entered `substate`, if known (and after the daemon started).
    entered_ns: Option<u64>,
    /// When its timer will end it.
    ends_ns: u64,
    /// The last poll that listed it (`Census::polls`).
    polled: u32,
    /// First listed in TIME_WAIT without a handoff: a FIN_WAIT2 it went through (an orphan's)
    /// is not counted yet.
    fin_wait2_unseen: bool,
}

/// A handoff waiting for its timewait socket, packed (16 bytes: a busy host holds hundreds of
/// thousands between two polls).
#[derive(Clone, Copy, Debug)]
struct PendingHandoff {
    entered_ns: u64,
    port: u16,
    family: u8,
    role: u8,
    state: u8,
    polls_left: u8,
}

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
                _padding: [0; 4],
            },
            state: self.state,
            _padding: [0; 7],
        }
    }
}
const _: () = assert!(size_of::<PendingHandoff>() == 16);

/// An accept queue: its length now and its limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenQueue {
    pub length: u64,
    pub limit: u64,
}

pub struct Census {
    ports: PortSet,
    bounds_ns: Vec<u64>,
    started_ns: u64,
    timewait: HashMap<u64, TimewaitSocket>,
    /// Polls folded in so far.
    polls: u32,
    handoffs: HashMap<u64, PendingHandoff>,
    /// Cookies of the timewait sockets polls found new and without a handoff record, not yet
    /// checked against the slot table, and when the last of those polls ended.
    unclaimed_timewait: Vec<u64>,
    unclaimed_polled_ns: u64,
    /// The inode number of the daemon's network namespace, whose sockets the polls list.
    net_inode: u32,
    /// The full sockets the last two polls listed: the one before, then the last.
    polled_full_sockets: [PolledFullSockets; 2],
    /// Tracked sockets gone without their last events reaching the kernel programs (their
    /// records, left behind, were released by a sweep): by labels and the state the record
    /// was left in, which they have left.
    undelivered_exits: BTreeMap<(Labels, u8), i64>,
    /// How many such sockets were found.
    pub undelivered_closes: u64,
    /// Full sockets older than the programs that have not moved since.
    pub baseline: Baseline,
    /// Transitions the polls saw (timewait substate changes and ends), cumulative.
    pub transitions: BTreeMap<(Labels, Edge), u64>,
    pub durations: BTreeMap<(Labels, Edge), Histogram>,
    /// Timewait and request sockets at the last poll, by labels and state.
    pub sockets: BTreeMap<(Labels, u8), i64>,
    pub listen_queues: BTreeMap<u16, ListenQueue>,
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
            ports,
            bounds_ns,
            started_ns,
            timewait: HashMap::new(),
            polls: 0,
            handoffs: HashMap::new(),
            unclaimed_timewait: Vec::new(),
            unclaimed_polled_ns: 0,
            net_inode,
            polled_full_sockets: Default::default(),
            undelivered_exits: BTreeMap::new(),
            undelivered_closes: 0,
            baseline,
            transitions: BTreeMap::new(),
            durations: BTreeMap::new(),
            sockets: BTreeMap::new(),
            listen_queues: BTreeMap::new(),
        }
    }

    /// Takes the kernel's records of connections handed to timewait sockets (by cookie).
    pub fn add_handoff(&mut self, cookie: u64, handoff: TimewaitHandoff) {
        if let Some(entry) = self.timewait.get_mut(&cookie) {
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
        let mut cookies: Vec<u64> = polled
            .iter()
            .filter(|s| !s.timewait)
            .map(|s| s.cookie)
            .collect();
        cookies.sort_unstable();
        self.polled_full_sockets.rotate_left(1);
        self.polled_full_sockets[1] = PolledFullSockets {
            cookies,
            ns: started_ns..now_ns,
        };
        self.sockets.clear();
        self.listen_queues.clear();
        let listeners: Vec<&DiagSocket> = polled
            .iter()
            .filter(|s| s.state == LISTEN && !s.timewait)
            .collect();
        for listener in &listeners {
            let queue = self
                .listen_queues
                .entry(self.ports.label(listener.local_port))
                .or_default();
            queue.length += u64::from(listener.receive_queue);
            queue.limit += u64::from(listener.send_queue);
        }
        for request in requests {
            let labels = untracked_labels(&self.ports, request, role::SERVER);
            *self.sockets.entry((labels, NEW_SYN_RECV)).or_default() += 1;
        }

        // Updated in place (a busy host has hundreds of thousands of timewait sockets: no
        // second map of them): each listed socket is stamped with this poll.
        self.polls = self.polls.wrapping_add(1);
        let poll = self.polls;
        for socket in polled.iter().filter(|s| s.timewait) {
            let ends_ns = socket.seen_ns + u64::from(socket.expires_ms) * 1_000_000;
            // The timer restarts at TCP_TIMEWAIT_LEN when a timewait socket enters TIME_WAIT.
            let timer_start = ends_ns
                .checked_sub(TIMEWAIT_LEN_NS)
                .map(|at| at.min(socket.seen_ns));
            let started_ns = self.started_ns;
            let known = move |at: Option<u64>| at.filter(|at| *at >= started_ns);
            let entry = match self.timewait.get(&socket.cookie).copied() {
                Some(mut entry) => {
                    if entry.substate == FIN_WAIT2 && socket.state == TIME_WAIT {
                        // The peer's FIN arrived: FIN_WAIT2 -> TIME_WAIT at the timer's restart.
                        let at = timer_start.unwrap_or(socket.seen_ns);
                        let duration = entry.entered_ns.map(|start| at.saturating_sub(start));
                        self.count(entry.labels, FIN_WAIT2, TIME_WAIT, duration);
                        entry.substate = TIME_WAIT;
                        entry.entered_ns = known(Some(at));
                    }
                    entry.ends_ns = ends_ns;
                    entry.polled = poll;
                    entry
                }
                None => {
                    let handoff = self.handoffs.remove(&socket.cookie).map(|p| p.handoff());
                    if handoff.is_none() {
                        self.unclaimed_timewait.push(socket.cookie);
                    }
                    let labels = match handoff {
                        Some(handoff) => handoff.labels,
                        None => self.timewait_labels(socket, &listeners),
                    };
                    match (socket.state, handoff) {
                        (TIME_WAIT, Some(handoff)) if handoff.state == FIN_WAIT2 => {
                            // An orphan whose peer's FIN came before this first sighting.
                            let at = timer_start.unwrap_or(socket.seen_ns);
                            let duration = known(Some(handoff.entered_ns))
                                .map(|start| at.saturating_sub(start));
                            self.count(labels, FIN_WAIT2, TIME_WAIT, duration);
                            TimewaitSocket {
                                labels,
                                substate: TIME_WAIT,
                                entered_ns: known(Some(at)),
                                ends_ns,
                                polled: poll,
                                fin_wait2_unseen: false,
                            }
                        }
                        (state, Some(handoff)) => TimewaitSocket {
                            labels,
                            substate: state,
                            entered_ns: known(Some(handoff.entered_ns)),
                            ends_ns,
                            polled: poll,
                            fin_wait2_unseen: false,
                        },
                        (TIME_WAIT, None) => TimewaitSocket {
                            labels,
                            substate: TIME_WAIT,
                            entered_ns: known(timer_start),
                            ends_ns,
                            polled: poll,
                            fin_wait2_unseen: true,
                        },
                        (state, None) => TimewaitSocket {
                            labels,
                            substate: state,
                            entered_ns: None,
                            ends_ns,
                            polled: poll,
                            fin_wait2_unseen: false,
                        },
                    }
                }
            };
            *self
                .sockets
                .entry((entry.labels, entry.substate))
                .or_default() += 1;
            self.timewait.insert(socket.cookie, entry);
        }
        // Those not seen again have ended: when their timer said, or (killed early) by now.
        let ended: Vec<TimewaitSocket> = self
            .timewait
            .extract_if(|_, entry| entry.polled != poll)
            .map(|(_, entry)| entry)
            .collect();
        if self.timewait.capacity() > 4 * self.timewait.len().max(1024) {
            // After a burst: give the memory back.
            self.timewait.shrink_to_fit();
        }
        for entry in ended {
            let end = entry.ends_ns.min(now_ns);
            self.count(
                entry.labels,
                entry.substate,
                CLOSE,
                entry.entered_ns.map(|start| end.saturating_sub(start)),
            );
        }
        // A record whose timewait socket no poll found: none was created (the kernel's
        // net.ipv4.tcp_max_tw_buckets was reached: the connection closed at once), it lives in
        // another network namespace, or it ended between two polls. The connection has left (or
        // is not seen in) its state: count it ended, without a duration, so that what enters
        // TIME_WAIT also leaves it.
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
        if !self.unclaimed_timewait.is_empty() {
            self.unclaimed_polled_ns = now_ns;
        }
    }

    /// Sockets now in each state as the census sees them: the timewait and request sockets of
    /// the last poll, less the tracked sockets gone without their last events (which the
    /// kernel's transitions still count in the state their records were left in).
    pub fn sockets_now(&self) -> BTreeMap<(Labels, u8), i64> {
        let mut sockets = self.sockets.clone();
        for (key, gone) in &self.undelivered_exits {
            *sockets.entry(*key).or_default() -= gone;
        }
        sockets
    }

    /// A sweep of the kernel's per-socket records at `now_ns` (see `sys::SlotSweep`): takes the
    /// handoffs, and releases the records of sockets gone without their last events (the
    /// kernel never delivered their CLOSE to any program). Two proofs find those:
    /// - through their timewait sockets: a timewait socket inherits its full socket's cookie,
    ///   so a poll that finds one without a handoff record while the slot table still holds a
    ///   live record with its cookie, some time later, proves the full socket gone;
    /// - through their absence: a record of this namespace, in a state the polls list, that
    ///   has not changed since before the last two polls started, whose socket neither poll
    ///   listed (the kernel unhashes a closing socket microseconds before its CLOSE event: the
    ///   sweep comes well after the polls). Two polls, because a dump is no snapshot: it
    ///   resumes each batch at a position in a hash bucket, and a socket that another one's
    ///   removal shifts across that position is skipped.
    pub fn record_sweep(&mut self, now_ns: u64) -> RecordSweep<'_> {
        let ripe = |polled_ns: u64| now_ns.saturating_sub(polled_ns) >= STALE_RECORD_DELAY_NS;
        let mut stale_candidates = if ripe(self.unclaimed_polled_ns) {
            std::mem::take(&mut self.unclaimed_timewait)
        } else {
            Vec::new()
        };
        stale_candidates.sort_unstable();
        let [before, last] = &self.polled_full_sockets;
        let absence_checked_before_ns = if before.ns.end != 0 && ripe(last.ns.end) {
            before.ns.start
        } else {
            0
        };
        RecordSweep {
            census: self,
            stale_candidates,
            absence_checked_before_ns,
        }
    }

    /// Whether the last two polls prove `record`'s socket gone (see `record_sweep`): a record
    /// that entered its state before `polls_started_ns`.
    fn polled_without(&self, record: &SocketRecord, polls_started_ns: u64) -> bool {
        record.net_inode == self.net_inode
            && record.net_inode != 0
            && record.entered_ns < polls_started_ns
            && self.unlisted_by_both_polls(record.cookie, record.state)
    }

    /// Whether a socket in `state` (one the polls list) was listed by neither of the last two
    /// polls.
    fn unlisted_by_both_polls(&self, cookie: u64, state: u8) -> bool {
        POLLED_STATES.contains(&state)
            && self
                .polled_full_sockets
                .iter()
                .all(|poll| poll.cookies.binary_search(&cookie).is_err())
    }

    /// A record left behind by a socket gone without its CLOSE event (see `record_sweep`).
    fn release_stale(&mut self, record: SocketRecord) {
        *self
            .undelivered_exits
            .entry((record.labels, record.state))
            .or_default() += 1;
        self.undelivered_closes += 1;
        // The timewait socket goes on with the full socket's labels, not inferred ones.
        if let Some(entry) = self.timewait.get_mut(&record.cookie)
            && entry.labels != record.labels
        {
            *self
                .sockets
                .entry((entry.labels, entry.substate))
                .or_default() -= 1;
            *self
                .sockets
                .entry((record.labels, entry.substate))
                .or_default() += 1;
            entry.labels = record.labels;
        }
    }

    /// A timewait socket without a handoff record (older than the daemon, or its record gave
    /// way): whoever closed first holds it; it is the server's if its local port is listening.
    fn timewait_labels(&self, socket: &DiagSocket, listeners: &[&DiagSocket]) -> Labels {
        let is_server = listeners
            .iter()
            .any(|l| l.local_port == socket.local_port && l.family == socket.family);
        untracked_labels(
            &self.ports,
            socket,
            if is_server {
                role::SERVER
            } else {
                role::CLIENT
            },
        )
    }

    fn count(&mut self, labels: Labels, from: u8, to: u8, duration_ns: Option<u64>) {
        let edge = Edge { from, to };
        *self.transitions.entry((labels, edge)).or_default() += 1;
        if let Some(duration_ns) = duration_ns {
            let bounds = &self.bounds_ns;
            let histogram = self
                .durations
                .entry((labels, edge))
                .or_insert_with(|| Histogram {
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

/// The full sockets a poll listed, by cookie (sorted), and when it started and ended.
#[derive(Debug, Default)]
struct PolledFullSockets {
    cookies: Vec<u64>,
    ns: std::ops::Range<u64>,
}

/// The census's side of one sweep of the kernel's records (`Census::record_sweep`).
pub struct RecordSweep<'a> {
    census: &'a mut Census,
    /// Cookies of timewait sockets polled without a handoff long enough ago (sorted).
    stale_candidates: Vec<u64>,
    /// When the one before the last poll started, if the last ended long enough ago; 0: no
    /// such polls.
    absence_checked_before_ns: u64,
}

impl RecordSweep<'_> {
    /// Takes out of the baseline the sockets older than the programs that the last two polls
    /// prove gone (listed at start-up, before either poll started), whose exit the kernel never
    /// delivered to the programs. Call after the `FIRST_SEEN` entries the kernel wrote before
    /// those polls started were folded in.
    pub fn release_vanished_baseline(&mut self) {
        if self.absence_checked_before_ns == 0 || self.census.baseline.is_empty() {
            return;
        }
        let census = &mut *self.census;
        let mut baseline = std::mem::take(&mut census.baseline);
        let gone =
            baseline.remove_gone(|cookie, state| census.unlisted_by_both_polls(cookie, state));
        census.baseline = baseline;
        if gone > 0 {
            log::debug!(
                "{gone} sockets older than tcpstated left without their exit reaching the kernel programs"
            );
        }
        census.undelivered_closes += gone;
    }
}

impl SlotSweep for RecordSweep<'_> {
    fn take_handoff(&mut self, cookie: u64, handoff: TimewaitHandoff) {
        self.census.add_handoff(cookie, handoff);
    }

    fn may_be_stale(&self, cookie: u64, state: u8) -> bool {
        (self.absence_checked_before_ns != 0 && POLLED_STATES.contains(&state))
            || self.stale_candidates.binary_search(&cookie).is_ok()
    }

    fn is_stale(&self, record: &SocketRecord) -> bool {
        self.stale_candidates.binary_search(&record.cookie).is_ok()
            || (self.absence_checked_before_ns != 0
                && self
                    .census
                    .polled_without(record, self.absence_checked_before_ns))
    }

    fn release_stale(&mut self, record: SocketRecord) {
        log::debug!(
            "released the record of socket {} (left in state {}, labels {:?}): its CLOSE never \
             reached the kernel programs",
            record.cookie,
            record.state,
            record.labels
        );
        self.census.release_stale(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcpstate_common::state::ESTABLISHED;

    const SECOND: u64 = 1_000_000_000;
    const START: u64 = 1_000 * SECOND;
    /// The daemon's network namespace.
    const NET: u32 = 4026531833;

    fn ports() -> PortSet {
        let mut ports = PortSet::EMPTY;
        ports.insert(443);
        ports
    }

    fn census() -> Census {
        Census::new(
            ports(),
            vec![SECOND / 10, SECOND / 2, SECOND, 30 * SECOND, 61 * SECOND],
            START,
            NET,
            Baseline::default(),
        )
    }

    fn tw(state: u8, cookie: u64, expires_ms: u32) -> DiagSocket {
        DiagSocket {
            family: 2,
            state,
            timewait: true,
            local_port: 40000,
            remote_port: 443,
            cookie,
            expires_ms,
            receive_queue: 0,
            send_queue: 0,
            tracked: false,
            seen_ns: 0,
        }
    }

    fn listener(port: u16, queue: u32, limit: u32) -> DiagSocket {
        DiagSocket {
            state: LISTEN,
            timewait: false,
            local_port: port,
            remote_port: 0,
            receive_queue: queue,
            send_queue: limit,
            ..tw(LISTEN, 1, 0)
        }
    }

    fn client() -> Labels {
        Labels {
            port: 443,
            family: 2,
            role: role::CLIENT,
            _padding: [0; 4],
        }
    }

    fn edge(from: u8, to: u8) -> (Labels, Edge) {
        (client(), Edge { from, to })
    }

    /// A poll whose sockets were all read at `now`.
    fn poll(census: &mut Census, sockets: &[DiagSocket], now: u64) {
        let seen: Vec<DiagSocket> = sockets
            .iter()
            .map(|s| DiagSocket { seen_ns: now, ..*s })
            .collect();
        census.observe(&seen, &[], now, now);
    }

    fn handoff(state: u8, entered_ns: u64) -> TimewaitHandoff {
        TimewaitHandoff {
            entered_ns,
            labels: client(),
            state,
            _padding: [0; 7],
        }
    }

    #[test]
    fn time_wait_is_counted_and_its_end_timed_by_the_timer() {
        let mut census = census();
        // Entered TIME_WAIT 2 s after start (58 s left on a 60 s timer at START + 2 s + 0).
        poll(&mut census, &[tw(TIME_WAIT, 7, 58_000)], START + 2 * SECOND);
        assert_eq!(census.sockets[&(client(), TIME_WAIT)], 1);
        poll(
            &mut census,
            &[tw(TIME_WAIT, 7, 30_000)],
            START + 30 * SECOND,
        );
        // Gone at START + 90 s; its timer said it would end at START + 60 s.
        poll(&mut census, &[], START + 90 * SECOND);
        assert_eq!(census.transitions[&edge(TIME_WAIT, CLOSE)], 1);
        let histogram = &census.durations[&edge(TIME_WAIT, CLOSE)];
        assert_eq!((histogram.count, histogram.sum_ns), (1, 60 * SECOND));
        assert_eq!(histogram.buckets, [0, 0, 0, 0, 1]);
        assert!(!census.sockets.contains_key(&(client(), TIME_WAIT)));
    }

    #[test]
    fn orphaned_fin_wait2_ends_when_the_timer_restarts() {
        let mut census = census();
        let entered = START + 10 * SECOND;
        census.add_handoff(9, handoff(FIN_WAIT2, entered));
        // Seen in FIN_WAIT2, then in TIME_WAIT with 59.7 s left: the FIN came 300 ms after entry.
        poll(
            &mut census,
            &[tw(FIN_WAIT2, 9, 59_990)],
            entered + SECOND / 100,
        );
        assert_eq!(census.sockets[&(client(), FIN_WAIT2)], 1);
        poll(
            &mut census,
            &[tw(TIME_WAIT, 9, 59_700)],
            entered + 6 * SECOND / 10,
        );
        assert_eq!(census.transitions[&edge(FIN_WAIT2, TIME_WAIT)], 1);
        let histogram = &census.durations[&edge(FIN_WAIT2, TIME_WAIT)];
        assert_eq!(histogram.sum_ns, 3 * SECOND / 10);
        assert_eq!(histogram.buckets, [0, 1, 0, 0, 0]);
        assert_eq!(census.sockets[&(client(), TIME_WAIT)], 1);
    }

    #[test]
    fn an_orphan_first_seen_in_time_wait_still_gets_its_fin_wait2() {
        let mut census = census();
        let entered = START + SECOND;
        census.add_handoff(5, handoff(FIN_WAIT2, entered));
        poll(
            &mut census,
            &[tw(TIME_WAIT, 5, 59_000)],
            entered + 2 * SECOND,
        );
        let histogram = &census.durations[&edge(FIN_WAIT2, TIME_WAIT)];
        assert_eq!(histogram.sum_ns, SECOND);
    }

    #[test]
    fn an_orphans_handoff_taken_after_its_socket_was_polled_in_time_wait_counts_its_fin_wait2() {
        let mut census = census();
        let entered = START + SECOND;
        // The poll lists the timewait socket (59 s left: in TIME_WAIT since START + 2 s) before
        // the sweep takes its handoff; then the handoff says it was an orphan's FIN_WAIT2.
        poll(&mut census, &[tw(TIME_WAIT, 5, 59_000)], START + 3 * SECOND);
        assert!(!census.transitions.contains_key(&edge(FIN_WAIT2, TIME_WAIT)));
        census.add_handoff(5, handoff(FIN_WAIT2, entered));
        census.add_handoff(5, handoff(FIN_WAIT2, entered));
        assert_eq!(census.transitions[&edge(FIN_WAIT2, TIME_WAIT)], 1);
        assert_eq!(census.durations[&edge(FIN_WAIT2, TIME_WAIT)].sum_ns, SECOND);
        // One first polled in FIN_WAIT2 had its exit counted when the poll saw it move.
        poll(&mut census, &[tw(FIN_WAIT2, 6, 59_900)], START + 4 * SECOND);
        poll(&mut census, &[tw(TIME_WAIT, 6, 59_800)], START + 5 * SECOND);
        census.add_handoff(6, handoff(FIN_WAIT2, entered));
        assert_eq!(census.transitions[&edge(FIN_WAIT2, TIME_WAIT)], 2);
    }

    #[test]
    fn handoffs_give_labels_and_exact_starts_and_wait_two_polls() {
        let mut census = census();
        // A server socket's connection, on a port without a listener any more: inference would
        // call it a client's; its record says otherwise.
        let server = Labels {
            role: role::SERVER,
            ..client()
        };
        let entered = START + SECOND;
        census.add_handoff(
            11,
            TimewaitHandoff {
                labels: server,
                ..handoff(TIME_WAIT, entered)
            },
        );
        census.add_handoff(12, handoff(TIME_WAIT, entered));
        poll(
            &mut census,
            &[tw(TIME_WAIT, 11, 59_000)],
            entered + 2 * SECOND,
        );
        assert_eq!(census.sockets[&(server, TIME_WAIT)], 1);
        // A record that arrives after its socket was first polled relabels it.
        poll(
            &mut census,
            &[tw(TIME_WAIT, 11, 58_000), tw(TIME_WAIT, 13, 59_500)],
            entered + 3 * SECOND,
        );
        census.add_handoff(
            13,
            TimewaitHandoff {
                labels: server,
                ..handoff(TIME_WAIT, entered + 2 * SECOND)
            },
        );
        // Record 12 was never matched: counted ended after two polls, without a duration.
        assert!(census.handoffs.is_empty());
        assert_eq!(census.transitions[&edge(TIME_WAIT, CLOSE)], 1);
        assert!(!census.durations.contains_key(&edge(TIME_WAIT, CLOSE)));
        poll(&mut census, &[], START + 100 * SECOND);
        let histogram = &census.durations[&(
            server,
            Edge {
                from: TIME_WAIT,
                to: CLOSE,
            },
        )];
        // Ended when their timers said: 11 entered at START + 1 s and ended at START + 62 s (58 s
        // left at START + 4 s); 13 entered at START + 3 s and ended at START + 63.5 s.
        assert_eq!(
            (histogram.count, histogram.sum_ns),
            (2, 61 * SECOND + 60_500_000_000)
        );
    }

    #[test]
    fn sockets_older_than_the_daemon_get_no_duration() {
        let mut census = census();
        // 10 s left at START + 1 s: entered TIME_WAIT 49 s before the daemon started.
        poll(&mut census, &[tw(TIME_WAIT, 3, 10_000)], START + SECOND);
        poll(&mut census, &[], START + 20 * SECOND);
        assert_eq!(census.transitions[&edge(TIME_WAIT, CLOSE)], 1);
        assert!(census.durations.is_empty());
    }

    #[test]
    fn listeners_queues_and_request_sockets_by_port() {
        let mut census = census();
        let request = DiagSocket {
            state: SYN_RECV,
            timewait: false,
            local_port: 443,
            remote_port: 50000,
            ..tw(SYN_RECV, 4, 900)
        };
        census.observe(
            &[
                listener(443, 2, 2),
                listener(443, 1, 2),
                listener(8080, 0, 4096),
            ],
            &[request, request],
            START,
            START,
        );
        assert_eq!(
            census.listen_queues[&443],
            ListenQueue {
                length: 3,
                limit: 4
            }
        );
        assert_eq!(
            census.listen_queues[&OTHER_PORT],
            ListenQueue {
                length: 0,
                limit: 4096
            }
        );
        let server = Labels {
            port: 443,
            family: 2,
            role: role::SERVER,
            _padding: [0; 4],
        };
        assert_eq!(census.sockets[&(server, NEW_SYN_RECV)], 2);
    }

    fn server() -> Labels {
        Labels {
            role: role::SERVER,
            ..client()
        }
    }

    /// A live record of this namespace's socket `cookie`, in `state` since `entered_ns`.
    fn record(cookie: u64, state: u8, entered_ns: u64) -> SocketRecord {
        SocketRecord {
            entered_ns,
            labels: server(),
            cookie,
            state,
            net_inode: NET,
            ..SocketRecord::default()
        }
    }

    #[test]
    fn a_record_left_behind_by_a_socket_in_timewait_is_released_and_counted() {
        let mut census = census();
        // The kernel never delivered FIN_WAIT1 -> FIN_WAIT2 -> CLOSE of a server's socket: its
        // record stays in FIN_WAIT1 while a poll finds its timewait socket, without handoff.
        let polled = START + 2 * SECOND;
        poll(&mut census, &[tw(TIME_WAIT, 21, 59_000)], polled);
        assert_eq!(census.sockets[&(client(), TIME_WAIT)], 1);
        // Another namespace's record: the timewait socket, found by cookie, is proof enough.
        let left_behind = SocketRecord {
            net_inode: NET + 1,
            ..record(21, FIN_WAIT1, START + SECOND)
        };
        // Too soon after the poll (the full socket's CLOSE may be microseconds away): a live
        // record is left alone.
        let sweep = census.record_sweep(polled + STALE_RECORD_DELAY_NS / 2);
        assert!(!sweep.is_stale(&left_behind));
        drop(sweep);
        let mut sweep = census.record_sweep(polled + STALE_RECORD_DELAY_NS);
        assert!(sweep.is_stale(&left_behind));
        assert!(!sweep.is_stale(&SocketRecord {
            cookie: 22,
            ..left_behind
        }));
        sweep.release_stale(left_behind);
        assert_eq!(census.undelivered_closes, 1);
        let sockets = census.sockets_now();
        assert_eq!(sockets[&(server(), FIN_WAIT1)], -1);
        // The timewait socket takes the record's labels.
        assert_eq!(sockets[&(server(), TIME_WAIT)], 1);
        assert_eq!(sockets[&(client(), TIME_WAIT)], 0);
        // Each timewait socket is checked once.
        assert!(!census.record_sweep(polled + SECOND).is_stale(&left_behind));
    }

    #[test]
    fn a_record_whose_socket_two_polls_did_not_list_is_released() {
        let mut census = census();
        let listed = |cookie| DiagSocket {
            state: LAST_ACK,
            timewait: false,
            ..tw(LAST_ACK, cookie, 0)
        };
        let first = START + 5 * SECOND;
        census.observe(&[listed(31), listed(33)], &[], first, first + SECOND / 10);
        // One poll proves nothing: a dump may skip a socket.
        let gone = record(30, LAST_ACK, first - SECOND);
        assert!(!census.record_sweep(first + SECOND).is_stale(&gone));
        // The second dump skips socket 33.
        let second = first + 2 * SECOND;
        census.observe(&[listed(31)], &[], second, second + SECOND / 10);
        // Too soon after the last poll.
        assert!(!census.record_sweep(second + SECOND / 20).is_stale(&gone));
        let mut sweep = census.record_sweep(second + SECOND);
        // Gone: in a polled state since before both polls started, listed by neither.
        assert!(sweep.may_be_stale(30, LAST_ACK) && sweep.is_stale(&gone));
        // The sweep reads an ESTABLISHED record no further.
        assert!(!sweep.may_be_stale(30, ESTABLISHED));
        // Listed by one poll or both; entered its state after the first poll started; in a
        // state polls do not list; another namespace's: all left alone.
        assert!(!sweep.is_stale(&record(31, LAST_ACK, first - SECOND)));
        assert!(!sweep.is_stale(&record(33, LAST_ACK, first - SECOND)));
        assert!(!sweep.is_stale(&record(30, LAST_ACK, first + 1)));
        assert!(!sweep.is_stale(&record(30, ESTABLISHED, START)));
        assert!(!sweep.is_stale(&SocketRecord {
            net_inode: NET + 1,
            ..gone
        }));
        sweep.release_stale(gone);
        assert_eq!(census.undelivered_closes, 1);
        assert_eq!(census.sockets_now()[&(server(), LAST_ACK)], -1);
    }

    #[test]
    fn timewait_of_a_listening_port_is_the_servers() {
        let mut census = census();
        let server_tw = DiagSocket {
            local_port: 443,
            remote_port: 50000,
            ..tw(TIME_WAIT, 8, 59_000)
        };
        census.observe(
            &[listener(443, 0, 128), server_tw],
            &[],
            START + SECOND,
            START + SECOND,
        );
        let server = Labels {
            port: 443,
            family: 2,
            role: role::SERVER,
            _padding: [0; 4],
        };
        assert_eq!(census.sockets[&(server, TIME_WAIT)], 1);
    }

    #[test]
    fn sockets_older_than_the_daemon_that_two_polls_did_not_list_leave_the_baseline() {
        let unknown = Labels {
            role: role::UNKNOWN,
            ..client()
        };
        let mut listing = crate::baseline::FirstListing::default();
        listing.add(40, unknown, LAST_ACK);
        listing.add(41, unknown, LAST_ACK);
        listing.add(42, unknown, ESTABLISHED);
        let mut census = Census {
            baseline: listing.confirm([40, 41, 42]),
            ..census()
        };
        let listed = |cookie| DiagSocket {
            state: LAST_ACK,
            timewait: false,
            ..tw(LAST_ACK, cookie, 0)
        };
        let first = START + 5 * SECOND;
        census.observe(&[listed(41)], &[], first, first + SECOND / 10);
        // One poll proves nothing.
        census
            .record_sweep(first + SECOND)
            .release_vanished_baseline();
        assert_eq!(census.baseline.len(), 3);
        let second = first + 2 * SECOND;
        census.observe(&[], &[], second, second + SECOND / 10);
        census
            .record_sweep(second + SECOND)
            .release_vanished_baseline();
        // 40: listed by neither poll; 41: by the first; 42: ESTABLISHED, which polls do not list.
        assert_eq!(census.baseline.len(), 2);
        assert_eq!(census.baseline.counts()[&(unknown, LAST_ACK)], 1);
        assert_eq!(census.undelivered_closes, 1);
    }
}

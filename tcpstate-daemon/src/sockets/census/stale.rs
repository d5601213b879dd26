//! Records the kernel programs left behind: sockets gone without their last events reaching
//! any program (docs/skipped-bpf-events.md), found by the sweep of the kernel's records at a
//! scrape, with proof from the polls. Two proofs:
//! - through their timewait sockets: a timewait socket inherits its full socket's cookie, so
//!   a poll that finds one without a handoff record while the slot table still holds a live
//!   record with its cookie, some time later, proves the full socket gone;
//! - through their absence: a record in a state the polls list, that has not changed since
//!   before the last two listings of that state in its network namespace started, whose socket
//!   neither listing held (the kernel unhashes a closing socket microseconds before its CLOSE
//!   event: the sweep comes well after the polls). Listeners are listed at every poll of a
//!   namespace, closing sockets only by its full polls. Two listings, because a dump is no
//!   snapshot: it resumes each batch at a position in a hash bucket, and a socket that another
//!   one's removal shifts across that position is skipped.
//!
//! A record of a namespace the polls cannot see (gone, unreadable, not entered) is left alone:
//! its socket may live on (a namespace is kept by its sockets), and its CLOSE will come.

use std::collections::{BTreeMap, HashMap};

use tcpstate_common::{
    SocketRecord, TimewaitHandoff,
    state::{CLOSING, FIN_WAIT1, FIN_WAIT2, LAST_ACK, LISTEN},
};

use super::{Census, POLLED_STATES};
use crate::{bpf::socket_slots::SlotSweep, model::StateKey, sockets::sock_diag::DiagSocket};

/// The full-socket states the polls list besides LISTEN: those only full polls list.
pub const CLOSING_STATES: [u8; 4] = [FIN_WAIT1, FIN_WAIT2, CLOSING, LAST_ACK];

/// How long after a poll saw a timewait socket the slot table may be checked for the full
/// socket's record. The kernel inserts the timewait socket just before the full socket's
/// CLOSE, in the same call: microseconds apart. Far longer, to be sure.
pub(super) const STALE_RECORD_DELAY_NS: u64 = 100_000_000;

/// The full sockets a poll listed, by cookie (sorted), and when it started and ended (an
/// empty range: no such poll yet).
#[derive(Debug, Default)]
struct Listing {
    cookies: Vec<u64>,
    ns: std::ops::Range<u64>,
}

/// The last two listings (the one before, then the last).
type LastTwo = [Listing; 2];

/// A namespace's last two listings of listeners and of closing sockets.
#[derive(Debug, Default)]
struct NamespaceListings {
    listeners: LastTwo,
    closing: LastTwo,
}

/// What the polls prove, and the records found stale.
#[derive(Debug, Default)]
pub struct Stale {
    /// By namespace inode.
    namespaces: HashMap<u32, NamespaceListings>,
    /// Tracked sockets gone without their last events (their records released by a sweep): by
    /// labels and the state the record was left in, which they have left.
    pub(super) undelivered_exits: BTreeMap<StateKey, i64>,
    /// How many such sockets were found (the baseline's included).
    pub undelivered_closes: u64,
}

fn rotate(listings: &mut LastTwo, cookies: Vec<u64>, ns: std::ops::Range<u64>) {
    listings.rotate_left(1);
    listings[1] = Listing { cookies, ns };
}

impl Stale {
    /// Notes the full sockets a poll of namespace `inode` over `started_ns..now_ns` listed:
    /// its listeners, and its closing sockets if it was a `full` poll.
    pub(super) fn observe(
        &mut self,
        inode: u32,
        polled: &[DiagSocket],
        full: bool,
        started_ns: u64,
        now_ns: u64,
    ) {
        let cookies = |listener: bool| {
            let mut cookies: Vec<u64> = polled
                .iter()
                .filter(|s| !s.timewait && (s.state == LISTEN) == listener)
                .map(|s| s.cookie)
                .collect();
            cookies.sort_unstable();
            cookies
        };
        let namespace = self.namespaces.entry(inode).or_default();
        rotate(&mut namespace.listeners, cookies(true), started_ns..now_ns);
        if full {
            rotate(&mut namespace.closing, cookies(false), started_ns..now_ns);
        }
    }

    /// Forgets a namespace gone.
    pub(super) fn retire(&mut self, inode: u32) {
        self.namespaces.remove(&inode);
    }

    /// The last two listings of namespace `inode` that list sockets in `state`, if the last
    /// ended before `ripe_before_ns`.
    fn ripe_listings(&self, inode: u32, state: u8, ripe_before_ns: u64) -> Option<&LastTwo> {
        let namespace = self.namespaces.get(&inode)?;
        let listings = if state == LISTEN {
            &namespace.listeners
        } else if CLOSING_STATES.contains(&state) {
            &namespace.closing
        } else {
            return None;
        };
        let [before, last] = listings;
        (before.ns.end != 0 && last.ns.end <= ripe_before_ns).then_some(listings)
    }

    /// Whether the last two listings of namespace `inode` prove its socket `cookie`, in
    /// `state` (one the polls list) since before `entered_ns`, gone: both started after it
    /// entered its state, neither listed it, the last ended before `ripe_before_ns`.
    pub(super) fn proves_gone(
        &self,
        inode: u32,
        (cookie, state, entered_ns): (u64, u8, u64),
        ripe_before_ns: u64,
    ) -> bool {
        self.ripe_listings(inode, state, ripe_before_ns)
            .is_some_and(|[before, last]| {
                entered_ns < before.ns.start
                    && [before, last]
                        .iter()
                        .all(|listing| listing.cookies.binary_search(&cookie).is_err())
            })
    }

    /// Whether any namespace has two listings ripe by `ripe_before_ns`.
    fn any_ripe(&self, ripe_before_ns: u64) -> bool {
        self.namespaces.keys().any(|inode| {
            self.ripe_listings(*inode, LISTEN, ripe_before_ns).is_some()
                || self
                    .ripe_listings(*inode, LAST_ACK, ripe_before_ns)
                    .is_some()
        })
    }
}

impl Census {
    /// A sweep of the kernel's per-socket records at `now_ns` (see `SlotSweep`): takes the
    /// handoffs, and releases the records of sockets gone without their last events (see the
    /// module's proofs). It also notes which namespaces hold records in the states the polls
    /// list (see `RecordSweep::live`).
    pub fn record_sweep(&mut self, now_ns: u64) -> RecordSweep<'_> {
        let ripe_before_ns = now_ns.saturating_sub(STALE_RECORD_DELAY_NS);
        let mut stale_candidates = if self.timewait.unclaimed_polled_ns <= ripe_before_ns {
            std::mem::take(&mut self.timewait.unclaimed)
        } else {
            Vec::new()
        };
        stale_candidates.sort_unstable();
        let absence_provable = self.stale.any_ripe(ripe_before_ns);
        self.closing_records.clear();
        RecordSweep {
            census: self,
            stale_candidates,
            ripe_before_ns,
            absence_provable,
            last_noted: None,
        }
    }

    /// A record left behind by a socket gone without its CLOSE event.
    fn release_stale(&mut self, record: SocketRecord) {
        *self
            .stale
            .undelivered_exits
            .entry(StateKey::new(record.labels, record.state))
            .or_default() += 1;
        self.stale.undelivered_closes += 1;
        // The timewait socket goes on with the full socket's labels, not inferred ones.
        self.timewait.relabel(record.cookie, record.labels);
    }
}

/// The census's side of one sweep of the kernel's records (`Census::record_sweep`).
pub struct RecordSweep<'a> {
    census: &'a mut Census,
    /// Cookies of timewait sockets polled without a handoff long enough ago (sorted).
    stale_candidates: Vec<u64>,
    /// Listings that ended before this are old enough to prove absence.
    ripe_before_ns: u64,
    /// Some namespace has two ripe listings.
    absence_provable: bool,
    /// The last (namespace, closing) noted: records of one namespace come in runs.
    last_noted: Option<(u32, bool)>,
}

impl RecordSweep<'_> {
    /// Takes out of the baseline the sockets older than the programs that the last two
    /// listings of their namespace prove gone (listed at start-up, before either started),
    /// whose exit the kernel never delivered to the programs. Call after the `FIRST_SEEN`
    /// entries the kernel wrote before those polls started were folded in.
    pub fn release_vanished_baseline(&mut self) {
        if !self.absence_provable || self.census.baseline.is_empty() {
            return;
        }
        let census = &mut *self.census;
        let (stale, ripe_before_ns) = (&census.stale, self.ripe_before_ns);
        let gone = census.baseline.remove_gone(|inode, cookie, state| {
            stale.proves_gone(inode, (cookie, state, 0), ripe_before_ns)
        });
        if gone > 0 {
            log::debug!(
                "{gone} sockets older than tcpstated left without their exit reaching the kernel programs"
            );
        }
        census.stale.undelivered_closes += gone;
    }
}

impl SlotSweep for RecordSweep<'_> {
    fn take_handoff(&mut self, cookie: u64, handoff: TimewaitHandoff) {
        self.census.add_handoff(cookie, handoff);
    }

    fn wants_namespace(&self, state: u8) -> bool {
        POLLED_STATES.contains(&state)
    }

    fn live(&mut self, state: u8, net_inode: u32) {
        let closing = state != LISTEN;
        if self.last_noted == Some((net_inode, closing)) {
            return;
        }
        self.last_noted = Some((net_inode, closing));
        self.census.note_namespace(net_inode);
        if closing {
            self.census.closing_records.insert(net_inode);
        }
    }

    fn may_be_stale(&self, cookie: u64, state: u8) -> bool {
        (self.absence_provable && POLLED_STATES.contains(&state))
            || self.stale_candidates.binary_search(&cookie).is_ok()
    }

    fn is_stale(&self, record: &SocketRecord) -> bool {
        self.stale_candidates.binary_search(&record.cookie).is_ok()
            || (self.absence_provable
                && record.net_inode != 0
                && self.census.stale.proves_gone(
                    record.net_inode,
                    (record.cookie, record.state, record.entered_ns),
                    self.ripe_before_ns,
                ))
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

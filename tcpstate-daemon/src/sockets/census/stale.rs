//! Records the kernel programs left behind: sockets gone without their last events reaching
//! any program (docs/skipped-bpf-events.md), found by the sweep of the kernel's records at a
//! scrape, with proof from the polls. Two proofs:
//! - through their timewait sockets: a timewait socket inherits its full socket's cookie, so
//!   a poll that finds one without a handoff record while the slot table still holds a live
//!   record with its cookie, some time later, proves the full socket gone;
//! - through their absence: a record of this namespace, in a state the polls list, that has
//!   not changed since before the last two polls started, whose socket neither poll listed
//!   (the kernel unhashes a closing socket microseconds before its CLOSE event: the sweep comes
//!   well after the polls). Two polls, because a dump is no snapshot: it resumes each batch at
//!   a position in a hash bucket, and a socket that another one's removal shifts across that
//!   position is skipped.

use std::collections::BTreeMap;

use tcpstate_common::{SocketRecord, TimewaitHandoff};

use super::{Census, POLLED_STATES};
use crate::{bpf::socket_slots::SlotSweep, model::StateKey, sockets::sock_diag::DiagSocket};

/// How long after a poll saw a timewait socket the slot table may be checked for the full
/// socket's record. The kernel inserts the timewait socket just before the full socket's
/// CLOSE, in the same call: microseconds apart. Far longer, to be sure.
pub(super) const STALE_RECORD_DELAY_NS: u64 = 100_000_000;

/// The full sockets a poll listed, by cookie (sorted), and when it started and ended.
#[derive(Debug, Default)]
struct PolledFullSockets {
    cookies: Vec<u64>,
    ns: std::ops::Range<u64>,
}

/// What the polls prove, and the records found stale.
#[derive(Debug, Default)]
pub struct Stale {
    /// The inode number of the daemon's network namespace, whose sockets the polls list.
    net_inode: u32,
    /// The full sockets the last two polls listed: the one before, then the last.
    polled_full_sockets: [PolledFullSockets; 2],
    /// Tracked sockets gone without their last events (their records released by a sweep): by
    /// labels and the state the record was left in, which they have left.
    pub(super) undelivered_exits: BTreeMap<StateKey, i64>,
    /// How many such sockets were found (the baseline's included).
    pub undelivered_closes: u64,
}

impl Stale {
    pub(super) fn new(net_inode: u32) -> Self {
        Stale {
            net_inode,
            ..Stale::default()
        }
    }

    /// Notes the full sockets a poll over `started_ns..now_ns` listed.
    pub(super) fn observe(&mut self, polled: &[DiagSocket], started_ns: u64, now_ns: u64) {
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
    }

    /// Whether the last two polls prove `record`'s socket gone: a record that entered its
    /// state before `polls_started_ns`.
    fn polled_without(&self, record: &SocketRecord, polls_started_ns: u64) -> bool {
        record.net_inode == self.net_inode
            && record.net_inode != 0
            && record.entered_ns < polls_started_ns
            && self.unlisted_by_both_polls(record.cookie, record.state)
    }

    /// Whether a socket in `state` (one the polls list) was listed by neither of the last two
    /// polls.
    pub(super) fn unlisted_by_both_polls(&self, cookie: u64, state: u8) -> bool {
        POLLED_STATES.contains(&state)
            && self
                .polled_full_sockets
                .iter()
                .all(|poll| poll.cookies.binary_search(&cookie).is_err())
    }
}

impl Census {
    /// A sweep of the kernel's per-socket records at `now_ns` (see `SlotSweep`): takes the
    /// handoffs, and releases the records of sockets gone without their last events (see the
    /// module's proofs).
    pub fn record_sweep(&mut self, now_ns: u64) -> RecordSweep<'_> {
        let ripe = |polled_ns: u64| now_ns.saturating_sub(polled_ns) >= STALE_RECORD_DELAY_NS;
        let mut stale_candidates = if ripe(self.timewait.unclaimed_polled_ns) {
            std::mem::take(&mut self.timewait.unclaimed)
        } else {
            Vec::new()
        };
        stale_candidates.sort_unstable();
        let [before, last] = &self.stale.polled_full_sockets;
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
        let stale = &census.stale;
        let gone = census
            .baseline
            .remove_gone(|cookie, state| stale.unlisted_by_both_polls(cookie, state));
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

    fn may_be_stale(&self, cookie: u64, state: u8) -> bool {
        (self.absence_checked_before_ns != 0 && POLLED_STATES.contains(&state))
            || self.stale_candidates.binary_search(&cookie).is_ok()
    }

    fn is_stale(&self, record: &SocketRecord) -> bool {
        self.stale_candidates.binary_search(&record.cookie).is_ok()
            || (self.absence_checked_before_ns != 0
                && self
                    .census
                    .stale
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

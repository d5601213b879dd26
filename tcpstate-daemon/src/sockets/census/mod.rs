//! The sockets `inet_sock_set_state` never reports, counted from sock_diag polls of every
//! network namespace of the host, by concern: `timewait` (TIME_WAIT and the FIN_WAIT2 of
//! orphaned connections), `listen` (accept queues and request sockets), `stale` (records the
//! kernel programs left behind) and `baseline` (the sockets that existed before the daemon
//! started); `coverage` says which namespaces the polls cover and what each poll lists. Pure
//! logic: the polls (`sockets::survey`) and the kernel's handoff records are handed in.

pub mod baseline;
pub mod coverage;
pub mod listen;
pub mod stale;
pub mod timewait;

use std::collections::{BTreeMap, BTreeSet};

use tcpstate_common::{
    Labels, PortSet, TimewaitHandoff,
    state::{CLOSING, FIN_WAIT1, FIN_WAIT2, LAST_ACK, LISTEN, NEW_SYN_RECV, TIME_WAIT},
};

pub use baseline::Baseline;
pub use coverage::Coverage;
pub use listen::{ListenKey, ListenQueue};
pub use stale::RecordSweep;

use crate::{
    kept::{Reader, Unreadable, Writer},
    model::{EdgeKey, Histogram, StateKey},
    netstat::ListenCounters,
    sockets::{
        sock_diag::DiagSocket,
        survey::{Depth, NamespacePoll, PollPlan, Survey},
        untracked::LabelRule,
    },
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
    rule: LabelRule,
    coverage: Coverage,
    timewait: Timewait,
    listen: Listen,
    stale: Stale,
    /// Full sockets older than the programs that have not moved since.
    pub baseline: Baseline,
    /// The namespaces of records in closing states at the last sweep (see `RecordSweep`): their
    /// polls list them whole, so that the records whose CLOSE never came are found.
    closing_records: BTreeSet<u32>,
}

impl Census {
    /// The census of the daemon's namespace `net_inode` only, without owners.
    pub fn new(
        ports: PortSet,
        bounds_ns: Vec<u64>,
        started_ns: u64,
        net_inode: u32,
        baseline: Baseline,
    ) -> Self {
        Census::covering(
            LabelRule::ports(ports),
            Coverage::own_only(net_inode),
            bounds_ns,
            started_ns,
            baseline,
        )
    }

    /// The census of the namespaces `coverage` covers, labelling untracked sockets by `rule`.
    pub fn covering(
        rule: LabelRule,
        coverage: Coverage,
        bounds_ns: Vec<u64>,
        started_ns: u64,
        baseline: Baseline,
    ) -> Self {
        Census {
            timewait: Timewait::new(rule, bounds_ns, started_ns),
            rule,
            coverage,
            listen: Listen::default(),
            stale: Stale::default(),
            baseline,
            closing_records: BTreeSet::new(),
        }
    }

    /// Takes the kernel's records of connections handed to timewait sockets (by cookie): an
    /// unknown namespace's asks for a listing.
    pub fn add_handoff(&mut self, cookie: u64, handoff: TimewaitHandoff) {
        self.coverage.note(handoff.net_inode);
        self.timewait.add_handoff(cookie, handoff);
    }

    /// What the next poll lists (see `Coverage::plan`).
    pub fn plan_poll(&mut self) -> PollPlan {
        let mut busy: BTreeSet<u32> = self.timewait.busy().collect();
        busy.extend(self.listen.with_requests());
        busy.extend(&self.closing_records);
        self.coverage.plan(&busy)
    }

    /// Folds in one poll of the daemon's namespace, listed whole: `polled` are the sockets in
    /// `POLLED_STATES` (full and timewait), `requests` the request sockets; the poll ran over
    /// `started_ns..now_ns`.
    pub fn observe(
        &mut self,
        polled: &[DiagSocket],
        requests: &[DiagSocket],
        started_ns: u64,
        now_ns: u64,
    ) {
        self.fold(Survey {
            visits: vec![NamespacePoll {
                inode: self.coverage.own,
                path: Default::default(),
                cookie: 0,
                depth: Depth::Full,
                sockets: polled.to_vec(),
                requests: requests.to_vec(),
                started_ns,
                finished_ns: now_ns,
                tcp_ext: None,
                port_range: None,
                fin_timeout_s: None,
            }],
            ..Survey::default()
        });
    }

    /// Folds in one poll: each namespace listed, then those a listing of the host no longer
    /// finds, or whose path is gone, end (their timewait sockets were purged with them).
    /// Times read off a socket's timer count from when that socket was read (`seen_ns`), not
    /// from the end of the poll: a poll of many sockets on a busy host takes a while.
    pub fn fold(&mut self, survey: Survey) {
        let now_ns = survey
            .visits
            .iter()
            .map(|v| v.finished_ns)
            .max()
            .unwrap_or(0);
        let mut dumped = BTreeSet::new();
        for visit in survey.visits {
            if visit.depth == Depth::Full {
                dumped.insert(visit.inode);
            }
            self.fold_visit(visit);
        }
        if let Some(listing) = &survey.listing {
            for inode in self.coverage.relist(listing) {
                self.retire(inode, now_ns);
            }
        }
        for failure in &survey.failures {
            if self.coverage.missed(failure) {
                self.retire(failure.inode, now_ns);
            }
        }
        self.listen.sum();
        let coverage = &self.coverage;
        self.timewait
            .end_unmatched_handoffs(&dumped, |inode| coverage.covers(inode));
    }

    fn fold_visit(&mut self, visit: NamespacePoll) {
        let inode = visit.inode;
        if self.coverage.visited(&visit) {
            // Another namespace under a reused inode: the one before is gone.
            self.retire_figures(inode, visit.started_ns);
        }
        self.coverage.recovered(inode);
        let full = visit.depth == Depth::Full;
        let (started_ns, now_ns) = (visit.started_ns, visit.finished_ns);
        self.stale
            .observe(inode, &visit.sockets, full, started_ns, now_ns);
        let listeners: Vec<&DiagSocket> = visit
            .sockets
            .iter()
            .filter(|s| s.state == LISTEN && !s.timewait)
            .collect();
        let requests = full.then_some(visit.requests.as_slice());
        self.listen.observe(inode, &self.rule, &listeners, requests);
        if full {
            self.timewait.observe(
                inode,
                &visit.sockets,
                &listeners,
                visit.fin_timeout_s,
                now_ns,
            );
        }
    }

    /// Writes what a restarted daemon needs to continue the census's counters: the timewait
    /// sockets followed and their counts, the sockets found gone without their last events,
    /// the listen counters of namespaces gone. (The baseline and the polls' gauges are taken
    /// again at start.)
    pub fn save(&self, out: &mut Writer) {
        self.timewait.save(out);
        out.state_counts(&self.stale.undelivered_exits);
        out.u64(self.stale.undelivered_closes);
        self.coverage.save(out);
    }

    /// Takes back what `save` wrote, into a census just taken at start.
    pub fn restore(&mut self, input: &mut Reader<'_>) -> Result<(), Unreadable> {
        self.timewait.restore(input)?;
        self.stale.undelivered_exits = input.state_counts()?;
        self.stale.undelivered_closes = input.u64()?;
        self.coverage.restore(input)?;
        // The namespaces of the timewait sockets followed are listed whole by the next polls.
        let busy: Vec<u32> = self.timewait.busy().collect();
        busy.into_iter().for_each(|inode| self.coverage.note(inode));
        Ok(())
    }

    /// A namespace gone, at `now_ns`: its figures end, its counters stay in the sums.
    fn retire(&mut self, inode: u32, now_ns: u64) {
        self.coverage.forget(inode);
        self.retire_figures(inode, now_ns);
    }

    fn retire_figures(&mut self, inode: u32, now_ns: u64) {
        self.timewait.retire(inode, now_ns);
        self.listen.retire(inode);
        self.stale.retire(inode);
        self.baseline.retire(inode);
    }

    /// A record or handoff of namespace `inode` was seen.
    fn note_namespace(&mut self, inode: u32) {
        self.coverage.note(inode);
    }

    /// Sockets now in each state as the census sees them: the timewait and request sockets of
    /// each namespace's last poll, less the tracked sockets gone without their last events
    /// (which the kernel's transitions still count in the state their records were left in).
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

    /// Accept queues by port label and owner, summed over the namespaces, as of their last
    /// polls.
    pub fn listen_queues(&self) -> &BTreeMap<ListenKey, ListenQueue> {
        &self.listen.queues
    }

    /// Sockets found gone without their exit reaching the kernel programs.
    pub fn undelivered_closes(&self) -> u64 {
        self.stale.undelivered_closes
    }

    /// `TcpExt` listen counters summed over the namespaces, those gone included (the
    /// daemon's own from `own_now`, read at the scrape, if it could be read).
    pub fn listen_counters(&self, own_now: Option<ListenCounters>) -> Option<ListenCounters> {
        self.coverage.listen_counters(own_now)
    }

    /// The narrowest ephemeral port range of the namespaces (the daemon's own from `own_now`).
    pub fn port_range(&self, own_now: Option<(u16, u16)>) -> Option<(u16, u16)> {
        self.coverage.port_range(own_now)
    }

    /// Whether the polls enter other network namespaces than the daemon's.
    pub fn enters_other_namespaces(&self) -> bool {
        self.coverage.enters_others()
    }

    /// Every namespace the polls can list, and where they enter it (`None`: the daemon's own).
    pub fn covered_namespaces(&self) -> Vec<(u32, Option<std::path::PathBuf>)> {
        self.coverage.covered()
    }

    /// How the census labels sockets the kernel programs have no record for.
    pub fn label_rule(&self) -> LabelRule {
        self.rule
    }

    /// Hands `each` every timewait and request socket the polls follow: its namespace,
    /// cookie, labels, state (TIME_WAIT, FIN_WAIT2 or NEW_SYN_RECV) and when it entered it, if
    /// known: a handoff's exact time, else read off the socket's timer (`sockets::timers`).
    pub fn for_each_polled_socket(&self, mut each: impl FnMut(u32, u64, Labels, u8, Option<u64>)) {
        self.timewait.for_each_socket(&mut each);
        self.listen.for_each_request(|inode, request| {
            each(
                inode,
                request.cookie,
                request.labels,
                NEW_SYN_RECV,
                Some(request.entered_ns),
            )
        });
    }

    /// How many network namespaces the polls know (the daemon's included).
    pub fn namespaces(&self) -> usize {
        self.coverage.len()
    }

    /// How many of them could not be entered at their last visit.
    pub fn unreadable_namespaces(&self) -> usize {
        self.coverage.unreadable()
    }
}

/// The sum of count maps (a key in any of them is in the sum, even at 0).
fn sum_counts<'a, K: Ord + Copy + 'a>(
    maps: impl Iterator<Item = &'a BTreeMap<K, i64>>,
) -> BTreeMap<K, i64> {
    let mut sum = BTreeMap::new();
    for map in maps {
        for (key, count) in map {
            *sum.entry(*key).or_default() += count;
        }
    }
    sum
}

#[cfg(test)]
mod namespace_tests;
#[cfg(test)]
mod tests;

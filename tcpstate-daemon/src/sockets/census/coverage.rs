//! Which network namespaces the polls cover, where to open each, what each poll lists in each
//! (docs/namespaces-and-workloads.md, "How polls are spaced"), and the figures read from each
//! namespace's own files (`TcpExt`, the port range).
//!
//! Namespaces are listed (`sockets::namespaces`) at start-up, when a record or handoff names an
//! inode the census does not know (at most once per poll), every `LISTING_EVERY` polls, and
//! when a namespace's path no longer leads to it. A namespace no listing finds is gone.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use crate::{
    kept::{Reader, Unreadable, Writer},
    netstat::{ListenCounters, TcpExt},
    sockets::{
        namespaces::Namespaces,
        survey::{Depth, Failure, Missed, NamespacePoll, PollPlan, Target},
    },
};

/// Quiet namespaces (nothing to follow) listed whole per poll, in turn, those never listed
/// whole first: their request sockets, and timewait sockets no handoff announced (older than
/// the daemon, or whose record gave way), are found within a few polls. Bounded, so that a
/// host that starts with many namespaces has many short polls (the busy namespaces and the
/// daemon's own kept fresh) rather than one long one followed by a wait 20 times as long.
pub const QUIET_FULL_POLLS: usize = 4;

/// Polls between two listings of the host's namespaces when nothing asks for one (an empty
/// namespace made since, or one whose only trace is a record in socket storage).
pub const LISTING_EVERY: u32 = 30;

/// What the census knows of a namespace between polls.
#[derive(Debug)]
struct Known {
    path: PathBuf,
    /// `SO_NETNS_COOKIE` at its last listing (0: none yet, or the kernel cannot tell).
    cookie: u64,
    tcp_ext: Option<TcpExt>,
    port_range: Option<(u16, u16)>,
    /// Full polls so far: a namespace's first poll lists it whole.
    full_polls: u32,
    /// Its SYN retransmits grew at its last poll: handshakes are waiting, maybe request
    /// sockets: it is listed whole.
    handshakes_waiting: bool,
    /// Its last visit failed: it could not be entered.
    unreadable: bool,
}

impl Known {
    fn new(path: PathBuf) -> Self {
        Known {
            path,
            cookie: 0,
            tcp_ext: None,
            port_range: None,
            full_polls: 0,
            handshakes_waiting: false,
            unreadable: false,
        }
    }
}

#[derive(Debug)]
pub struct Coverage {
    /// The daemon's namespace.
    pub own: u32,
    /// Whether other namespaces are entered at all.
    enter: bool,
    proc: PathBuf,
    /// By inode: the daemon's own and every other found.
    known: BTreeMap<u32, Known>,
    /// Inodes named by records or handoffs since the last listing, unknown then.
    named: BTreeSet<u32>,
    /// Inodes named that the last listing did not find: they ask for no more listings.
    unlocated: BTreeSet<u32>,
    polls_since_listing: u32,
    /// The last quiet namespace listed whole: the next turns come after it.
    quiet_cursor: u32,
    /// The counters of the namespaces gone, summed: the sums never go back.
    gone: ListenCounters,
    /// Namespaces whose failure was logged (once each).
    reported: BTreeSet<u32>,
    /// A namespace was refused for lack of privilege (logged once for all).
    refused: bool,
}

impl Coverage {
    /// The daemon's namespace `own` only (it cannot enter the others).
    pub fn own_only(own: u32) -> Self {
        Coverage {
            own,
            enter: false,
            proc: PathBuf::from("/proc"),
            known: BTreeMap::from([(own, Known::new(PathBuf::new()))]),
            named: BTreeSet::new(),
            unlocated: BTreeSet::new(),
            polls_since_listing: 0,
            quiet_cursor: 0,
            gone: ListenCounters::default(),
            reported: BTreeSet::new(),
            refused: false,
        }
    }

    /// Every namespace of the host, found under `proc` (`listing`: those found at start-up).
    pub fn every(own: u32, proc: PathBuf, listing: &Namespaces) -> Self {
        let mut coverage = Coverage {
            enter: true,
            proc,
            ..Coverage::own_only(own)
        };
        coverage.relist(listing);
        coverage
    }

    /// Whether the polls enter other namespaces.
    pub fn enters_others(&self) -> bool {
        self.enter
    }

    /// Whether the polls can see namespace `inode`.
    pub fn covers(&self, inode: u32) -> bool {
        inode == self.own
            || (self.enter
                && self
                    .known
                    .get(&inode)
                    .is_some_and(|known| !known.unreadable))
    }

    /// A record or handoff of namespace `inode`: an unknown one asks for a listing.
    pub fn note(&mut self, inode: u32) {
        if self.enter && inode != 0 && !self.known.contains_key(&inode) {
            self.named.insert(inode);
        }
    }

    /// The next poll: the daemon's namespace, and each other one listed whole if it is in
    /// `busy` or waiting for handshakes, else its listeners only, except a few quiet ones in
    /// turn (new ones first), listed whole.
    pub fn plan(&mut self, busy: &BTreeSet<u32>) -> PollPlan {
        let mut plan = PollPlan::own_only(self.own);
        if !self.enter {
            return plan;
        }
        plan.proc = self.proc.clone();
        self.polls_since_listing += 1;
        plan.rediscover = self.polls_since_listing >= LISTING_EVERY
            || self
                .named
                .iter()
                .any(|inode| !self.unlocated.contains(inode));
        plan.others = self
            .known
            .iter()
            .filter(|(inode, _)| **inode != self.own)
            .map(|(inode, known)| {
                let whole = busy.contains(inode) || known.handshakes_waiting;
                Target {
                    inode: *inode,
                    path: known.path.clone(),
                    depth: if whole { Depth::Full } else { Depth::Listeners },
                }
            })
            .collect();
        self.quiet_turns(&mut plan.others);
        plan
    }

    /// Lists `QUIET_FULL_POLLS` namespaces with nothing to follow whole: those never listed
    /// whole first, then those after the cursor.
    fn quiet_turns(&mut self, targets: &mut [Target]) {
        let cursor = self.quiet_cursor;
        let never_whole = |inode: u32| {
            self.known
                .get(&inode)
                .is_some_and(|known| known.full_polls == 0)
        };
        let mut quiet: Vec<&mut Target> = targets
            .iter_mut()
            .filter(|target| target.depth == Depth::Listeners)
            .collect();
        quiet.sort_by_key(|target| {
            (
                !never_whole(target.inode),
                target.inode <= cursor,
                target.inode,
            )
        });
        for target in quiet.into_iter().take(QUIET_FULL_POLLS) {
            target.depth = Depth::Full;
            self.quiet_cursor = target.inode;
        }
    }

    /// Takes a listing of the host's namespaces: new ones are known from now, new paths taken;
    /// returns the known ones it lacks (gone).
    pub fn relist(&mut self, listing: &Namespaces) -> Vec<u32> {
        self.polls_since_listing = 0;
        for (inode, path) in listing {
            let known = self
                .known
                .entry(*inode)
                .or_insert_with(|| Known::new(path.clone()));
            if *inode != self.own {
                known.path = path.clone();
            }
        }
        let own = self.own;
        let gone: Vec<u32> = self
            .known
            .keys()
            .filter(|inode| **inode != own && !listing.contains_key(inode))
            .copied()
            .collect();
        self.unlocated = std::mem::take(&mut self.named)
            .into_iter()
            .filter(|inode| !listing.contains_key(inode))
            .collect();
        gone
    }

    /// Writes the listen counters a restarted daemon must keep in its sums: those of the
    /// namespaces gone, and each known one's last.
    pub(super) fn save(&self, out: &mut Writer) {
        let counters = |out: &mut Writer, counters: &ListenCounters| {
            out.u64(counters.overflows);
            out.u64(counters.drops);
            out.u64(counters.timewait_overflows);
        };
        counters(out, &self.gone);
        let known: Vec<(u32, ListenCounters)> = self
            .known
            .iter()
            .filter_map(|(inode, known)| Some((*inode, known.tcp_ext?.listen)))
            .collect();
        out.count(known.len());
        for (inode, listen) in &known {
            out.u32(*inode);
            counters(out, listen);
        }
    }

    /// Takes back what `save` wrote: the namespaces an earlier daemon knew that this one does
    /// not (gone while no daemon ran) join the gone ones' sums.
    pub(super) fn restore(&mut self, input: &mut Reader<'_>) -> Result<(), Unreadable> {
        let counters = |input: &mut Reader<'_>| -> Result<ListenCounters, Unreadable> {
            Ok(ListenCounters {
                overflows: input.u64()?,
                drops: input.u64()?,
                timewait_overflows: input.u64()?,
            })
        };
        self.gone = self.gone.plus(counters(input)?);
        for _ in 0..input.count()? {
            let inode = input.u32()?;
            let listen = counters(input)?;
            if !self.known.contains_key(&inode) {
                self.gone = self.gone.plus(listen);
            }
        }
        Ok(())
    }

    /// A namespace gone: its counters stay in the sums.
    pub fn forget(&mut self, inode: u32) {
        log::debug!("network namespace {inode} is gone: its figures end");
        if inode == self.own {
            return;
        }
        if let Some(known) = self.known.remove(&inode) {
            self.retire_counters(&known);
        }
        self.reported.remove(&inode);
    }

    fn retire_counters(&mut self, known: &Known) {
        if let Some(tcp_ext) = known.tcp_ext {
            self.gone = self.gone.plus(tcp_ext.listen);
        }
    }

    /// Takes a namespace's listing; true if it is not the namespace known by that inode
    /// before (inodes are reused: its cookie, or its counters going back, say so), whose
    /// figures the caller must then end.
    pub fn visited(&mut self, poll: &NamespacePoll) -> bool {
        let known = self
            .known
            .entry(poll.inode)
            .or_insert_with(|| Known::new(poll.path.clone()));
        let reused = (known.cookie != 0 && poll.cookie != 0 && known.cookie != poll.cookie)
            || matches!(
                (known.tcp_ext, poll.tcp_ext),
                (Some(before), Some(now)) if now.listen.went_back(&before.listen)
            );
        if reused && let Some(before) = self.known.insert(poll.inode, Known::new(poll.path.clone()))
        {
            self.retire_counters(&before);
        }
        let known = self.known.get_mut(&poll.inode).expect("inserted above");
        known.handshakes_waiting = matches!(
            (known.tcp_ext, poll.tcp_ext),
            (Some(before), Some(now)) if now.syn_retransmits > before.syn_retransmits
        );
        known.full_polls += u32::from(poll.depth == Depth::Full);
        known.cookie = poll.cookie;
        known.tcp_ext = poll.tcp_ext.or(known.tcp_ext);
        known.port_range = poll.port_range.or(known.port_range);
        reused
    }

    /// A namespace the poll could not list: logged once; true if it is gone.
    pub fn missed(&mut self, failure: &Failure) -> bool {
        let first = self.reported.insert(failure.inode);
        let (inode, path) = (failure.inode, failure.path.display());
        match &failure.missed {
            Missed::Gone => {
                log::info!(
                    "network namespace {inode} ({path}) went away during a poll: its timewait \
                     and request sockets and accept queues end, its counters stay in the sums"
                );
                return true;
            }
            Missed::Unreadable(error) => {
                if let Some(known) = self.known.get_mut(&inode) {
                    known.unreadable = true;
                }
                // Without CAP_SYS_PTRACE, every other user's process is refused alike: one line.
                let permission = error.kind() == std::io::ErrorKind::PermissionDenied;
                if first && !(permission && std::mem::replace(&mut self.refused, true)) {
                    log::warn!(
                        "cannot enter network namespace {inode} ({path}): {error}; its timewait \
                         and request sockets, accept queues and counters are not counted{}",
                        if permission {
                            " (nor those of other namespaces refused alike: they are logged at \
                             debug level; tcpstated needs CAP_SYS_ADMIN and CAP_SYS_PTRACE)"
                        } else {
                            " (logged once)"
                        }
                    );
                } else if first {
                    log::debug!("cannot enter network namespace {inode} ({path}): {error}");
                }
            }
            Missed::Failed(error) => {
                log::warn!("sock_diag poll of network namespace {inode} ({path}) failed: {error}")
            }
        }
        false
    }

    /// A namespace listed again after its failure.
    pub fn recovered(&mut self, inode: u32) {
        if self.reported.remove(&inode)
            && let Some(known) = self.known.get_mut(&inode)
            && std::mem::take(&mut known.unreadable)
        {
            log::info!("network namespace {inode} can be entered again");
        }
    }

    /// The listen counters summed over every namespace, those gone included: the daemon's
    /// from `own_now` if read now, else from its last poll.
    pub fn listen_counters(&self, own_now: Option<ListenCounters>) -> Option<ListenCounters> {
        let own = own_now.or_else(|| Some(self.known.get(&self.own)?.tcp_ext?.listen))?;
        Some(
            self.known
                .iter()
                .filter(|(inode, _)| **inode != self.own)
                .filter_map(|(_, known)| known.tcp_ext)
                .fold(own.plus(self.gone), |sum, tcp_ext| sum.plus(tcp_ext.listen)),
        )
    }

    /// The narrowest ephemeral port range of the namespaces (the one that runs out first):
    /// the daemon's from `own_now` if read now, else from its last poll.
    pub fn port_range(&self, own_now: Option<(u16, u16)>) -> Option<(u16, u16)> {
        let own = own_now.or_else(|| self.known.get(&self.own)?.port_range);
        self.known
            .iter()
            .filter(|(inode, _)| **inode != self.own)
            .filter_map(|(_, known)| known.port_range)
            .chain(own)
            .min_by_key(|(low, high)| (high.saturating_sub(*low), *low))
    }

    /// Where the polls enter namespace `inode`: `Some(None)` for the daemon's own, `None` if
    /// they do not know it or cannot enter it.
    fn path_of(&self, inode: u32) -> Option<Option<PathBuf>> {
        if inode == self.own {
            return Some(None);
        }
        self.covers(inode)
            .then(|| self.known.get(&inode).map(|known| known.path.clone()))
    }

    /// The namespaces the polls can list, and where to enter each (`None`: the daemon's own).
    pub fn covered(&self) -> Vec<(u32, Option<PathBuf>)> {
        self.known
            .keys()
            .filter_map(|inode| Some((*inode, self.path_of(*inode)?)))
            .collect()
    }

    /// Namespaces known (the daemon's included).
    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Namespaces known that could not be entered at their last visit.
    pub fn unreadable(&self) -> usize {
        self.known.values().filter(|known| known.unreadable).count()
    }
}

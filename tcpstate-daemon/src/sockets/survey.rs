//! One poll across the host's network namespaces, on the poll thread: the daemon's own
//! namespace is listed where the thread is; every other one is entered (`sys::netns`),
//! listed with a sock_diag socket made there, its `TcpExt` counters and port range read, and
//! left before the next. What to list in each is the census's [`PollPlan`]; nothing is kept
//! open once the poll is over.

use std::{collections::VecDeque, io, path::PathBuf};

use tcpstate_common::state::{LISTEN, NEW_SYN_RECV};

use crate::{
    netstat::{self, TcpExt},
    sockets::{
        census::POLLED_STATES,
        namespaces::{self, Namespaces},
        sock_diag::{self, DiagSocket, Session},
    },
    sys::{self, netns::Home},
};

/// How much of a namespace a poll lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// Its listeners only: the kernel walks the listening hash, not the established one
    /// (microseconds, whatever the host's sockets).
    Listeners,
    /// Listeners, timewait, request and closing sockets: a walk of every socket of the host.
    Full,
}

/// A namespace to visit, and where to open it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub inode: u32,
    pub path: PathBuf,
    pub depth: Depth,
}

/// What one poll does, decided by the census (under its lock) and carried out on the poll
/// thread.
#[derive(Clone, Debug)]
pub struct PollPlan {
    /// The daemon's namespace: listed whole, where the poll thread starts.
    pub own: u32,
    /// The other namespaces, in the order to visit them.
    pub others: Vec<Target>,
    /// List the host's namespaces first (those it finds that the plan lacks are listed whole).
    pub rediscover: bool,
    /// The host's `/proc`, where namespaces are found.
    pub proc: PathBuf,
}

impl PollPlan {
    /// A poll of the daemon's namespace only.
    pub fn own_only(own: u32) -> Self {
        PollPlan {
            own,
            others: Vec::new(),
            rediscover: false,
            proc: PathBuf::from("/proc"),
        }
    }
}

/// One namespace's listing in a poll.
#[derive(Debug)]
pub struct NamespacePoll {
    pub inode: u32,
    pub path: PathBuf,
    /// `SO_NETNS_COOKIE` of the namespace listed (0: unknown): never reused, unlike inodes.
    pub cookie: u64,
    pub depth: Depth,
    /// Sockets in `POLLED_STATES` (full and timewait; listeners only for `Depth::Listeners`).
    pub sockets: Vec<DiagSocket>,
    /// Request sockets (none for `Depth::Listeners`).
    pub requests: Vec<DiagSocket>,
    pub started_ns: u64,
    pub finished_ns: u64,
    pub tcp_ext: Option<TcpExt>,
    pub port_range: Option<(u16, u16)>,
    /// `net.ipv4.tcp_fin_timeout` (s), for the ages of its FIN_WAIT2 timewait sockets.
    pub fin_timeout_s: Option<u32>,
}

/// Why a namespace was not listed.
#[derive(Debug)]
pub enum Missed {
    /// Gone: its path no longer leads to it, and no listing of the host finds it elsewhere.
    Gone,
    /// It cannot be entered (permissions, something mounted over its file).
    Unreadable(io::Error),
    /// Entered, but its listing failed.
    Failed(io::Error),
}

#[derive(Debug)]
pub struct Failure {
    pub inode: u32,
    pub path: PathBuf,
    pub missed: Missed,
}

/// What a poll found.
#[derive(Debug, Default)]
pub struct Survey {
    /// The daemon's namespace first.
    pub visits: Vec<NamespacePoll>,
    pub failures: Vec<Failure>,
    /// The host's namespaces, when the poll listed them.
    pub listing: Option<Namespaces>,
}

impl Survey {
    /// Sockets listed in all.
    pub fn sockets(&self) -> usize {
        self.visits
            .iter()
            .map(|visit| visit.sockets.len() + visit.requests.len())
            .sum()
    }
}

/// Carries out `plan` on the calling thread (the poll thread: see `poller::PollThread`), whose
/// network namespace is `home`, the daemon's. An error: the daemon's own namespace could not be
/// listed, or the thread, left elsewhere by an earlier poll, cannot come back to it.
pub fn run(plan: &PollPlan, home: &Home) -> io::Result<Survey> {
    home.return_if_away()?;
    let mut survey = Survey::default();
    survey
        .visits
        .push(list_here(plan.own, PathBuf::new(), Depth::Full)?);
    if plan.others.is_empty() && !plan.rediscover {
        return Ok(survey);
    }
    if plan.rediscover {
        survey.listing = list_namespaces(plan);
    }
    let mut targets: VecDeque<Target> = plan.others.iter().cloned().collect();
    if let Some(listing) = &survey.listing {
        targets = with_listing(plan, targets, listing);
    }
    while let Some(target) = targets.pop_front() {
        match visit(home, &target) {
            Ok(poll) => survey.visits.push(poll),
            Err(Visit::Missed(missed)) => {
                let missed = match missed {
                    // Its path is gone (a process that exited, a mount removed): list the
                    // host's namespaces, once per poll, to find it elsewhere or know it gone.
                    Missed::Gone if survey.listing.is_none() => {
                        survey.listing = list_namespaces(plan);
                        let listing = survey.listing.as_ref();
                        targets =
                            with_listing(plan, targets, listing.unwrap_or(&Namespaces::new()));
                        match listing.and_then(|listing| listing.get(&target.inode)) {
                            Some(path) if *path != target.path => {
                                targets.push_front(Target {
                                    path: path.clone(),
                                    ..target
                                });
                                continue;
                            }
                            _ => Missed::Gone,
                        }
                    }
                    missed => missed,
                };
                survey.failures.push(Failure {
                    inode: target.inode,
                    path: target.path,
                    missed,
                });
            }
            // Stuck in another namespace: the next poll tries to come back first.
            Err(Visit::CannotReturn(error)) => {
                log::error!(
                    "sock_diag poll: cannot return to tcpstated's network namespace: {error}"
                );
                break;
            }
        }
    }
    Ok(survey)
}

/// The host's namespaces (an error is logged: the poll goes on with the ones it knew).
fn list_namespaces(plan: &PollPlan) -> Option<Namespaces> {
    match namespaces::list(&plan.proc) {
        Ok(listing) => Some(listing),
        Err(error) => {
            log::warn!("cannot list the host's network namespaces: {error}");
            None
        }
    }
}

/// `targets` as `listing` finds them: those it lacks dropped (gone: the fold retires them),
/// new paths taken, and the namespaces it adds listed whole.
fn with_listing(
    plan: &PollPlan,
    targets: VecDeque<Target>,
    listing: &Namespaces,
) -> VecDeque<Target> {
    let mut updated: VecDeque<Target> = targets
        .into_iter()
        .filter_map(|target| {
            let path = listing.get(&target.inode)?.clone();
            Some(Target { path, ..target })
        })
        .collect();
    for (inode, path) in listing {
        let planned = plan.others.iter().any(|target| target.inode == *inode);
        if *inode != plan.own && !planned {
            updated.push_back(Target {
                inode: *inode,
                path: path.clone(),
                depth: Depth::Full,
            });
        }
    }
    updated
}

enum Visit {
    Missed(Missed),
    CannotReturn(io::Error),
}

/// Enters the target's namespace, lists it, and comes back.
fn visit(home: &Home, target: &Target) -> Result<NamespacePoll, Visit> {
    let inside = home.enter(&target.path, target.inode).map_err(|error| {
        Visit::Missed(match error.kind() {
            io::ErrorKind::NotFound => Missed::Gone,
            _ => Missed::Unreadable(error),
        })
    })?;
    // The listing's socket is closed before leaving: it would keep the namespace alive.
    let listed = list_here(target.inode, target.path.clone(), target.depth);
    inside.leave().map_err(Visit::CannotReturn)?;
    listed.map_err(|error| Visit::Missed(Missed::Failed(error)))
}

/// Lists the namespace the calling thread is in.
fn list_here(inode: u32, path: PathBuf, depth: Depth) -> io::Result<NamespacePoll> {
    let started_ns = sys::monotonic_ns();
    let mut session = Session::open()?;
    let states = match depth {
        Depth::Listeners => sock_diag::state_mask(&[LISTEN]),
        Depth::Full => {
            sock_diag::state_mask(&POLLED_STATES) | sock_diag::state_mask(&[NEW_SYN_RECV])
        }
    };
    let (requests, sockets) = session
        .dump(states, None)?
        .into_iter()
        .partition(|socket| socket.state == NEW_SYN_RECV);
    Ok(NamespacePoll {
        inode,
        path,
        cookie: session.namespace_cookie(),
        depth,
        sockets,
        requests,
        started_ns,
        finished_ns: sys::monotonic_ns(),
        tcp_ext: netstat::read_tcp_ext().ok(),
        port_range: netstat::read_port_range().ok(),
        fin_timeout_s: netstat::read_fin_timeout().ok(),
    })
}

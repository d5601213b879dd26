//! The sockets behind a figure (`/sockets`, `/sockets.json`): which sockets are in a state now,
//! whose, since when, oldest first, with the processes that hold them. Chosen at request time
//! from what the daemon already keeps, as the figures count them (no per-event work): the
//! kernel's socket records, the timewait and request sockets the polls follow, and the baseline
//! (sockets older than the daemon, unmoved since: their age is unknown). Then the namespaces
//! are listed with sock_diag in the states asked for (`locate`, on the poll thread) to locate
//! the chosen sockets, and, where sockets have been recorded in socket-local storage (which
//! user space cannot walk), every namespace to find those too; the processes holding them are
//! found through /proc.

pub mod locate;
pub mod owners;
pub mod query;

use std::{
    cmp::Ordering,
    collections::{BinaryHeap, HashSet},
    time::Duration,
};

use serde::Serialize;
use tcpstate_common::{Labels, SocketRecord, TcpState};

pub use locate::{Listing, Located};
pub use query::{QueryError, SocketQuery};

use crate::{
    bpf::socket_slots::SocketSlots,
    labels,
    sockets::{census::Census, sock_diag},
    workload::{Resolver, Workload},
};
use locate::{UnseenSearch, Wanted};
use owners::Owner;

/// A socket the view may list.
#[derive(Clone, Debug)]
struct Candidate {
    /// When it entered its state (the kernel's clock); `None`: unknown (older than the daemon
    /// and unmoved since, or recorded in socket-local storage).
    entered_ns: Option<u64>,
    cookie: u64,
    net_inode: u32,
    state: u8,
    labels: Labels,
    workload: Option<Workload>,
}

impl Candidate {
    /// Oldest first: unknown entry times (most are older than the daemon) before every known
    /// one, then by cookie (the kernel hands them out in order).
    fn order_key(&self) -> (u64, u64) {
        (self.entered_ns.unwrap_or(0), self.cookie)
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.order_key() == other.order_key()
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.order_key().cmp(&other.order_key())
    }
}

/// The sockets chosen for a query, oldest first, before they are located.
#[derive(Debug)]
pub struct Choice {
    chosen: Vec<Candidate>,
    /// Sockets that matched the query, the listed ones included.
    matched: u64,
    now_ns: u64,
    limit: usize,
}

/// Chooses the `query.limit` oldest sockets matching `query` among the live records of the
/// kernel's slot table (`records`), and the timewait and request sockets and the baseline of
/// the census, as of `now_ns`; and says how to list the namespaces to locate them, searching
/// every namespace for unseen sockets if some may be recorded in socket storage
/// (`search_storage`; `slots`, the slot table, then checks those found).
pub fn choose(
    records: impl FnOnce(&mut dyn FnMut(&SocketRecord)) -> std::io::Result<()>,
    search_storage: bool,
    slots: Option<SocketSlots>,
    census: &Census,
    mut workloads: Option<&mut Resolver>,
    query: &SocketQuery,
    now_ns: u64,
) -> Result<(Choice, Listing), ChooseError> {
    if query.workload.is_some() && workloads.is_none() {
        return Err(ChooseError::Query(QueryError(
            "workload: the daemon runs without --workloads, so sockets carry no workload".into(),
        )));
    }
    let min_age_ns = u64::try_from(query.min_age.as_nanos()).unwrap_or(u64::MAX);
    let asked = |state: u8| query.states.is_empty() || query.states.contains(&state);
    let cgroups = match (&query.workload, workloads.as_deref_mut()) {
        (Some(part), Some(resolver)) if search_storage => Some(workload_groups(resolver, part)),
        _ => None,
    };
    let mut oldest: BinaryHeap<Candidate> = BinaryHeap::new();
    let mut matched = 0u64;
    let mut take = |entered_ns: Option<u64>, cookie, net_inode, state, labels: Labels| {
        let old_enough =
            entered_ns.is_none_or(|entered| now_ns.saturating_sub(entered) >= min_age_ns);
        if !old_enough || !asked(state) || query.port.is_some_and(|port| port != labels.port) {
            return;
        }
        let workload = workloads
            .as_deref_mut()
            .map(|resolver| resolver.workload(labels.cgroup));
        if let (Some(part), Some(workload)) = (&query.workload, &workload)
            && !workload_path(workload).contains(part.as_str())
        {
            return;
        }
        matched += 1;
        oldest.push(Candidate {
            entered_ns,
            cookie,
            net_inode,
            state,
            labels,
            workload,
        });
        if oldest.len() > query.limit {
            oldest.pop();
        }
    };
    let mut known = Vec::new();
    records(&mut |record: &SocketRecord| {
        if asked(record.state) {
            known.push(record.cookie);
        }
        take(
            Some(record.entered_ns),
            record.cookie,
            record.net_inode,
            record.state,
            record.labels,
        )
    })
    .map_err(ChooseError::Records)?;
    census.for_each_polled_socket(|net_inode, cookie, labels, state, entered_ns| {
        take(entered_ns, cookie, net_inode, state, labels)
    });
    census
        .baseline
        .for_each(|net_inode, cookie, labels, state| {
            if asked(state) {
                known.push(cookie);
            }
            take(None, cookie, net_inode, state, labels)
        });
    let chosen = oldest.into_sorted_vec();
    let wanted_in = |inode: u32| -> HashSet<u64> {
        chosen
            .iter()
            .filter(|candidate| candidate.net_inode == inode)
            .map(|candidate| candidate.cookie)
            .collect()
    };
    // Every namespace when searching for unseen sockets, else those of the chosen ones.
    let namespaces = census
        .covered_namespaces()
        .into_iter()
        .map(|(inode, path)| Wanted {
            inode,
            path,
            cookies: wanted_in(inode),
        })
        .filter(|namespace| search_storage || !namespace.cookies.is_empty())
        .collect();
    let unseen = search_storage.then(|| {
        known.sort_unstable();
        UnseenSearch {
            states: query.states.clone(),
            known,
            slots,
            rule: census.label_rule(),
            port: query.port,
            cgroups,
            limit: query.limit,
        }
    });
    let listing = Listing {
        states: listed_states(&query.states),
        namespaces,
        unseen,
        storage_map: None,
    };
    let choice = Choice {
        chosen,
        matched,
        now_ns,
        limit: query.limit,
    };
    Ok((choice, listing))
}

/// The sock_diag mask that lists the sockets in `states` (empty: every state a socket can be
/// listed in).
fn listed_states(states: &[u8]) -> u32 {
    if states.is_empty() {
        let every: Vec<u8> = TcpState::ALL
            .iter()
            .filter(|state| **state != TcpState::Close)
            .map(|state| *state as u8)
            .collect();
        return sock_diag::state_mask(&every);
    }
    sock_diag::state_mask(states)
}

/// The cgroups whose workload's `namespace/pod/container` contains `part` (the host's own
/// sockets, cgroup 0, if "host" matches).
fn workload_groups(resolver: &mut Resolver, part: &str) -> HashSet<u32> {
    let matches = |workload: &Workload| workload_path(workload).contains(part);
    let mut cgroups: HashSet<u32> = resolver.groups_matching(matches).into_iter().collect();
    if matches(&Workload::host()) {
        cgroups.insert(0);
    }
    cgroups
}

/// Why a view could not be chosen.
#[derive(Debug, thiserror::Error)]
pub enum ChooseError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("cannot read the kernel's socket records: {0}")]
    Records(std::io::Error),
}

impl Choice {
    /// Adds the unseen sockets the listing found, before every socket of known age (theirs is
    /// unknown), keeping the oldest `limit`.
    pub fn add_unseen(&mut self, located: &Located) {
        self.matched += located.unseen_matched;
        self.chosen
            .extend(located.unseen.iter().map(|unseen| Candidate {
                entered_ns: unseen.entered_ns,
                cookie: unseen.cookie,
                net_inode: unseen.net_inode,
                state: unseen.state,
                labels: unseen.labels,
                workload: None,
            }));
        self.chosen.sort_unstable();
        self.chosen.truncate(self.limit);
    }

    /// Names the workload of each listed socket that has none yet (the unseen ones).
    pub fn name_workloads(&mut self, resolver: &mut Resolver) {
        for candidate in &mut self.chosen {
            if candidate.workload.is_none() {
                candidate.workload = Some(resolver.workload(candidate.labels.cgroup));
            }
        }
    }

    /// The view's answer, with what `located` found.
    pub fn answer(self, located: &Located) -> SocketList {
        let sockets: Vec<ListedSocket> = self
            .chosen
            .into_iter()
            .map(|candidate| {
                let endpoint = located.endpoints.get(&candidate.cookie);
                let processes = endpoint
                    .and_then(|endpoint| located.owners.get(&endpoint.inode))
                    .cloned()
                    .unwrap_or_default();
                let age = candidate.entered_ns.map(|entered| {
                    Duration::from_nanos(self.now_ns.saturating_sub(entered)).as_secs_f64()
                });
                ListedSocket {
                    state: labels::state(candidate.state).unwrap_or("unknown"),
                    age_seconds: age,
                    role: labels::role(candidate.labels.role),
                    family: labels::family(candidate.labels.family),
                    port: labels::port(candidate.labels.port),
                    local: endpoint.map(|endpoint| endpoint.local.to_string()),
                    remote: endpoint.map(|endpoint| endpoint.remote.to_string()),
                    network_namespace: candidate.net_inode,
                    workload: candidate.workload,
                    processes,
                }
            })
            .collect();
        SocketList {
            matched: self.matched,
            listed: sockets.len(),
            limit: self.limit,
            unlocated: sockets.iter().filter(|s| s.local.is_none()).count(),
            namespace_failures: located
                .failures
                .iter()
                .map(|(inode, error)| format!("network namespace {inode}: {error}"))
                .collect(),
            unsearched_namespaces: located.unsearched_namespaces,
            sockets,
        }
    }
}

/// `namespace/pod/container`, what the `workload` filter matches a part of.
fn workload_path(workload: &Workload) -> String {
    format!(
        "{}/{}/{}",
        workload.namespace, workload.pod, workload.container
    )
}

/// The view's answer (`/sockets.json`).
#[derive(Debug, Serialize)]
pub struct SocketList {
    /// Sockets that matched the query; the oldest `limit` are listed.
    pub matched: u64,
    pub listed: usize,
    pub limit: usize,
    /// Listed sockets sock_diag no longer found (closed since they were chosen) or could not
    /// list (their namespace could not be entered): no addresses, no processes.
    pub unlocated: usize,
    pub namespace_failures: Vec<String>,
    /// Namespaces not searched for sockets recorded in socket-local storage (searched only
    /// when some are, for 0.3 s at most): sockets of theirs may be missing.
    pub unsearched_namespaces: usize,
    pub sockets: Vec<ListedSocket>,
}

#[derive(Debug, Serialize)]
pub struct ListedSocket {
    pub state: &'static str,
    /// `null`: unknown (in its state since before the daemon started and unmoved since, or
    /// recorded in socket-local storage).
    pub age_seconds: Option<f64>,
    pub role: &'static str,
    pub family: &'static str,
    /// The `port` label (the service port, or `other`).
    pub port: String,
    pub local: Option<String>,
    pub remote: Option<String>,
    /// The inode of its network namespace (`ls -L -i /proc/PID/ns/net`).
    pub network_namespace: u32,
    /// With `--workloads`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    pub processes: Vec<Owner>,
}

#[cfg(test)]
mod tests;

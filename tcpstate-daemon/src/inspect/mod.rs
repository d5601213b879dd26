//! The sockets behind a figure (`/sockets`, `/sockets.json`): which sockets are in a state now,
//! whose, since when, oldest first, with the processes that hold them. Chosen at request time
//! from what the daemon already keeps (the kernel's socket records and the polls' timewait
//! sockets: no per-event work), then located with sock_diag in their own network namespaces
//! and matched to processes through /proc, for the sockets listed only (`locate`, on the poll
//! thread).

pub mod locate;
pub mod owners;
pub mod query;

use std::{
    cmp::Ordering,
    collections::{BTreeMap, BinaryHeap, HashSet},
    time::Duration,
};

use serde::Serialize;
use tcpstate_common::{Labels, SocketRecord, state::NEW_SYN_RECV};

pub use query::{QueryError, SocketQuery};

use crate::{
    labels,
    sockets::{census::Census, sock_diag},
    workload::{Resolver, Workload},
};
use locate::{Located, Wanted};
use owners::Owner;

/// A socket the view may list.
#[derive(Clone, Debug)]
struct Candidate {
    /// When it entered its state (the kernel's clock); `None`: before the daemon saw it.
    entered_ns: Option<u64>,
    cookie: u64,
    net_inode: u32,
    state: u8,
    labels: Labels,
    workload: Option<Workload>,
}

impl Candidate {
    /// Oldest first: unknown entry times (older than the daemon) before every known one.
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
    /// Where to look for each namespace's sockets.
    wanted: Vec<Wanted>,
}

/// Chooses the `query.limit` oldest sockets matching `query` among the live records of the
/// kernel's slot table (`records`) and the timewait sockets the census follows, as of `now_ns`.
pub fn choose(
    records: impl FnOnce(&mut dyn FnMut(&SocketRecord)) -> std::io::Result<()>,
    census: &Census,
    mut workloads: Option<&mut Resolver>,
    query: &SocketQuery,
    now_ns: u64,
) -> Result<Choice, ChooseError> {
    if query.workload.is_some() && workloads.is_none() {
        return Err(ChooseError::Query(QueryError(
            "workload: the daemon runs without --workloads, so sockets carry no workload".into(),
        )));
    }
    let min_age_ns = u64::try_from(query.min_age.as_nanos()).unwrap_or(u64::MAX);
    let mut oldest: BinaryHeap<Candidate> = BinaryHeap::new();
    let mut matched = 0u64;
    let mut consider = |candidate: Candidate| {
        oldest.push(candidate);
        if oldest.len() > query.limit {
            oldest.pop();
        }
    };
    let mut take = |entered_ns: Option<u64>, cookie, net_inode, state, labels: Labels| {
        let old_enough =
            entered_ns.is_none_or(|entered| now_ns.saturating_sub(entered) >= min_age_ns);
        if !old_enough
            || !(query.states.is_empty() || query.states.contains(&state))
            || query.port.is_some_and(|port| port != labels.port)
        {
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
        consider(Candidate {
            entered_ns,
            cookie,
            net_inode,
            state,
            labels,
            workload,
        });
    };
    records(&mut |record: &SocketRecord| {
        take(
            Some(record.entered_ns),
            record.cookie,
            record.net_inode,
            record.state,
            record.labels,
        )
    })
    .map_err(ChooseError::Records)?;
    census.for_each_timewait(|net_inode, cookie, labels, substate, entered_ns| {
        take(entered_ns, cookie, net_inode, substate, labels)
    });
    let chosen = oldest.into_sorted_vec();
    let mut by_namespace: BTreeMap<u32, HashSet<u64>> = BTreeMap::new();
    for candidate in &chosen {
        by_namespace
            .entry(candidate.net_inode)
            .or_default()
            .insert(candidate.cookie);
    }
    let wanted = by_namespace
        .into_iter()
        .filter_map(|(inode, cookies)| {
            Some(Wanted {
                inode,
                path: census.namespace_path(inode)?,
                cookies,
            })
        })
        .collect();
    Ok(Choice {
        chosen,
        matched,
        now_ns,
        wanted,
    })
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
    /// The namespaces to list and the sockets wanted from each.
    pub fn wanted(&self) -> &[Wanted] {
        &self.wanted
    }

    /// The sock_diag state mask that lists every chosen socket.
    pub fn state_mask(&self) -> u32 {
        let mut states: Vec<u8> = self.chosen.iter().map(|c| c.state).collect();
        // Request sockets are listed as SYN_RECV; full SYN_RECV sockets too.
        if states.contains(&NEW_SYN_RECV) {
            states.push(tcpstate_common::state::SYN_RECV);
        }
        sock_diag::state_mask(&states)
    }

    /// The view's answer, with what `located` found.
    pub fn answer(self, located: &Located, limit: usize) -> SocketList {
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
            limit,
            unlocated: sockets.iter().filter(|s| s.local.is_none()).count(),
            namespace_failures: located
                .failures
                .iter()
                .map(|(inode, error)| format!("network namespace {inode}: {error}"))
                .collect(),
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
    pub sockets: Vec<ListedSocket>,
}

#[derive(Debug, Serialize)]
pub struct ListedSocket {
    pub state: &'static str,
    /// `null`: in its state since before the daemon saw it.
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

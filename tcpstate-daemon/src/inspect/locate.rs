//! Where the chosen sockets are, and the sockets the daemon keeps nothing of: namespaces are
//! listed with sock_diag, for the states asked (the kernel filters them), on the poll thread,
//! which may enter other namespaces (`sockets::poller::PollThread::run_job`). A listing gives
//! the chosen sockets' addresses and files and, where a search for unseen sockets is asked,
//! the full sockets neither a slot record nor the baseline names (recorded in socket-local
//! storage, which user space cannot walk); then the processes holding them all are found in
//! `/proc`.

use std::{
    cmp::Ordering,
    collections::{BinaryHeap, HashMap, HashSet},
    io,
    os::fd::RawFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tcpstate_common::{Labels, state::NEW_SYN_RECV};

use super::owners::{self, Owner};
use crate::{
    bpf::socket_slots::SocketSlots,
    sockets::{
        sock_diag::{DiagSocket, Endpoint, Session},
        untracked::{LabelRule, role_in_state},
    },
    sys::netns::Home,
};

/// How long a view lists namespaces only to search them for unseen sockets: each listing walks
/// every TCP socket of the host (about 20 ms per namespace with 200,000 of them), so a host of
/// many namespaces is searched in part, and the answer says how many were left.
const UNSEEN_SEARCH_TIME: Duration = Duration::from_millis(300);

/// A namespace to list, and the chosen sockets wanted from it.
#[derive(Clone, Debug)]
pub struct Wanted {
    pub inode: u32,
    /// Where to enter it; `None`: the daemon's own.
    pub path: Option<PathBuf>,
    pub cookies: HashSet<u64>,
}

/// Which unseen sockets a listing keeps: full sockets of the query's states, port and
/// workloads that no slot record or baseline entry names, the `limit` with the lowest cookies
/// (the oldest sockets) at most.
pub struct UnseenSearch {
    /// The query's states (empty: every state).
    pub states: Vec<u8>,
    /// Cookies of the slot records and baseline entries in those states when the sockets were
    /// chosen (sorted).
    pub known: Vec<u64>,
    /// The slot table, to check that a socket kept still has no record there (it may have
    /// been born since the choice); `None`: not checked.
    pub slots: Option<SocketSlots>,
    pub rule: LabelRule,
    pub port: Option<u16>,
    /// The cgroups of the workloads asked for (`None`: any).
    pub cgroups: Option<HashSet<u32>>,
    pub limit: usize,
}

/// What the poll thread does for a view: list `namespaces` in `states` (a sock_diag mask),
/// searching them for unseen sockets if `unseen` says how.
pub struct Listing {
    pub states: u32,
    pub namespaces: Vec<Wanted>,
    pub unseen: Option<UnseenSearch>,
    /// The socket-storage map (`SOCKET_RECORDS`): the listing reads the records of the sockets
    /// recorded there, which user space cannot walk.
    pub storage_map: Option<RawFd>,
}

/// An unseen socket (see [`UnseenSearch`]), found by a listing.
#[derive(Clone, Copy, Debug)]
pub struct Unseen {
    pub net_inode: u32,
    pub cookie: u64,
    pub state: u8,
    pub labels: Labels,
    /// When it entered its state, from its socket-storage record; `None`: no record (older
    /// than the daemon, unmoved since).
    pub entered_ns: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Located {
    /// By cookie: the chosen sockets found, and the unseen ones kept.
    pub endpoints: HashMap<u64, Endpoint>,
    /// By socket inode.
    pub owners: HashMap<u32, Vec<Owner>>,
    /// Namespaces that could not be listed, and why.
    pub failures: Vec<(u32, io::Error)>,
    /// The unseen sockets kept, lowest cookie first.
    pub unseen: Vec<Unseen>,
    /// Unseen sockets that matched the query, the kept ones included.
    pub unseen_matched: u64,
    /// Namespaces not searched for unseen sockets: the search's time was spent.
    pub unsearched_namespaces: usize,
}

/// Kept unseen sockets, the highest cookie on top (the first to give way).
struct Kept(Unseen, Endpoint);

impl PartialEq for Kept {
    fn eq(&self, other: &Self) -> bool {
        self.0.cookie == other.0.cookie
    }
}
impl Eq for Kept {}
impl PartialOrd for Kept {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Kept {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cookie.cmp(&other.0.cookie)
    }
}

impl Listing {
    /// Lists every namespace, keeping the wanted endpoints and the unseen sockets the search
    /// asks for, then finds the owners of them all under `proc`. The calling thread's
    /// namespace is `home` (the daemon's), where it returns first if an earlier job left it
    /// elsewhere.
    pub fn locate(mut self, proc: &Path, home: &Home) -> Located {
        let mut located = Located::default();
        if let Err(error) = home.return_if_away() {
            located.failures.push((0, error));
            return located;
        }
        let started = Instant::now();
        // The chosen sockets' namespaces first: they are listed whatever the time spent.
        self.namespaces
            .sort_by_key(|namespace| namespace.cookies.is_empty());
        let mut kept = BinaryHeap::new();
        for namespace in &self.namespaces {
            if namespace.cookies.is_empty() && started.elapsed() > UNSEEN_SEARCH_TIME {
                located.unsearched_namespaces += 1;
                continue;
            }
            let mut list = |located: &mut Located| self.list_here(namespace, located, &mut kept);
            let listed = match &namespace.path {
                None => list(&mut located),
                Some(path) => match home.enter(path, namespace.inode) {
                    Ok(inside) => {
                        // The session is closed before leaving: it would keep the namespace alive.
                        let listed = list(&mut located);
                        if let Err(error) = inside.leave() {
                            log::error!(
                                "sockets view: cannot return to tcpstated's network namespace: \
                                 {error}"
                            );
                            return located;
                        }
                        listed
                    }
                    Err(error) => Err(error),
                },
            };
            if let Err(error) = listed {
                located.failures.push((namespace.inode, error));
            }
        }
        for Kept(unseen, endpoint) in kept.into_sorted_vec() {
            located.endpoints.insert(unseen.cookie, endpoint);
            located.unseen.push(unseen);
        }
        let listed = Instant::now();
        let inodes: HashSet<u32> = located
            .endpoints
            .values()
            .map(|endpoint| endpoint.inode)
            .filter(|inode| *inode != 0)
            .collect();
        located.owners = owners::find(proc, &inodes);
        log::debug!(
            "sockets view: {} namespaces listed ({} left unsearched), {} sockets located ({} \
             unseen); their owners found in {:?}",
            self.namespaces.len() - located.unsearched_namespaces,
            located.unsearched_namespaces,
            located.endpoints.len(),
            located.unseen_matched,
            listed.elapsed()
        );
        located
    }

    /// Lists the calling thread's namespace.
    fn list_here(
        &self,
        namespace: &Wanted,
        located: &mut Located,
        kept: &mut BinaryHeap<Kept>,
    ) -> io::Result<()> {
        Session::open()?.for_each_located(self.states, self.storage_map, |socket, endpoint| {
            if namespace.cookies.contains(&socket.cookie) {
                located.endpoints.insert(socket.cookie, endpoint);
                return;
            }
            let Some(search) = &self.unseen else {
                return;
            };
            let Some(unseen) = search.matches(namespace.inode, &socket) else {
                return;
            };
            located.unseen_matched += 1;
            search.keep(kept, unseen, endpoint);
        })
    }
}

impl UnseenSearch {
    /// `socket`, of namespace `net_inode`, if it is a full socket no slot record or baseline
    /// entry named when the sockets were chosen, that the query asks for, labelled by the
    /// programs' rule for a socket they have no record of.
    fn matches(&self, net_inode: u32, socket: &DiagSocket) -> Option<Unseen> {
        // Timewait and request sockets are the census's (see `Census::for_each_polled_socket`).
        let full = !socket.timewait && socket.state != NEW_SYN_RECV;
        let asked = self.states.is_empty() || self.states.contains(&socket.state);
        if !full || !asked || self.known.binary_search(&socket.cookie).is_ok() {
            return None;
        }
        // A socket-storage record has the labels the programs gave the socket.
        let (entered_ns, labels) = match socket.stored {
            Some((entered_ns, labels)) => (Some(entered_ns), labels),
            None => (None, self.rule.labels(socket, role_in_state(socket.state))),
        };
        let port_matches = self.port.is_none_or(|port| port == labels.port);
        let workload_matches = self
            .cgroups
            .as_ref()
            .is_none_or(|cgroups| cgroups.contains(&labels.cgroup));
        (port_matches && workload_matches).then_some(Unseen {
            net_inode,
            cookie: socket.cookie,
            state: socket.state,
            labels,
            entered_ns,
        })
    }

    /// Puts `unseen` among the `kept` (at most `limit`, the lowest cookies) if its cookie is
    /// below theirs and it still has no slot record (one born since the choice has one by now;
    /// a table that cannot be mapped keeps it, as the choice found it).
    fn keep(&self, kept: &mut BinaryHeap<Kept>, unseen: Unseen, endpoint: Endpoint) {
        let below = kept.len() < self.limit
            || kept
                .peek()
                .is_some_and(|highest| unseen.cookie < highest.0.cookie);
        let recorded_since = || {
            self.slots
                .as_ref()
                .is_some_and(|slots| slots.holds(unseen.cookie).unwrap_or(false))
        };
        if below && !recorded_since() {
            kept.push(Kept(unseen, endpoint));
            if kept.len() > self.limit {
                kept.pop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tcpstate_common::{
        PortSet, role,
        state::{CLOSE_WAIT, ESTABLISHED, TIME_WAIT},
    };

    use super::*;

    fn search(port: Option<u16>, cgroups: Option<HashSet<u32>>) -> UnseenSearch {
        let mut ports = PortSet::EMPTY;
        ports.insert(8080);
        UnseenSearch {
            states: vec![CLOSE_WAIT, TIME_WAIT, NEW_SYN_RECV],
            known: vec![3, 5],
            slots: None,
            rule: LabelRule {
                ports,
                owners: true,
            },
            port,
            cgroups,
            limit: 2,
        }
    }

    fn socket(state: u8, cookie: u64) -> DiagSocket {
        DiagSocket {
            family: 2,
            state,
            timewait: state == TIME_WAIT,
            local_port: 8080,
            remote_port: 50_000,
            cookie,
            cgroup: 77,
            ..DiagSocket::default()
        }
    }

    #[test]
    fn keeps_full_sockets_of_the_query_that_no_record_names() {
        let any = search(None, None);
        let found = any.matches(9, &socket(CLOSE_WAIT, 4)).unwrap();
        assert_eq!(
            (found.net_inode, found.cookie, found.state),
            (9, 4, CLOSE_WAIT)
        );
        // Labelled as the census labels a socket without a record: role unknown, the service
        // port.
        assert_eq!(
            found.labels,
            Labels {
                port: 8080,
                family: 2,
                role: role::UNKNOWN,
                cgroup: 77
            }
        );
        for (socket, why) in [
            (socket(CLOSE_WAIT, 3), "a slot record or baseline entry"),
            (socket(ESTABLISHED, 4), "a state not asked for"),
            (socket(TIME_WAIT, 4), "a timewait socket (the census's)"),
            (socket(NEW_SYN_RECV, 4), "a request socket (the census's)"),
        ] {
            assert!(any.matches(9, &socket).is_none(), "{why}");
        }
        let other_port = search(Some(9090), None);
        assert!(other_port.matches(9, &socket(CLOSE_WAIT, 4)).is_none());
        let workloads = search(None, Some(HashSet::from([78])));
        assert!(workloads.matches(9, &socket(CLOSE_WAIT, 4)).is_none());
    }

    #[test]
    fn keeps_the_lowest_cookies_up_to_the_limit() {
        let search = search(None, None);
        let mut kept = BinaryHeap::new();
        let endpoint = |cookie| Endpoint {
            cookie,
            state: CLOSE_WAIT,
            local: "127.0.0.1:8080".parse().unwrap(),
            remote: "127.0.0.1:50000".parse().unwrap(),
            inode: 0,
        };
        for cookie in [40, 10, 30, 20] {
            let unseen = search.matches(1, &socket(CLOSE_WAIT, cookie)).unwrap();
            search.keep(&mut kept, unseen, endpoint(cookie));
        }
        let cookies: Vec<u64> = kept.into_sorted_vec().iter().map(|k| k.0.cookie).collect();
        assert_eq!(cookies, [10, 20]);
    }
}

//! Where the chosen sockets are: their addresses and files, from sock_diag in each one's network
//! namespace, then the processes that hold them. Runs on the poll thread, which may enter
//! other namespaces (`sockets::poller::PollThread::run_job`).

use std::{
    collections::{HashMap, HashSet},
    io,
    path::PathBuf,
};

use super::owners::{self, Owner};
use crate::{
    sockets::sock_diag::{Endpoint, Session},
    sys::netns::Home,
};

/// The sockets wanted from one network namespace.
#[derive(Clone, Debug)]
pub struct Wanted {
    pub inode: u32,
    /// Where to enter it; `None`: the daemon's own.
    pub path: Option<PathBuf>,
    pub cookies: HashSet<u64>,
}

#[derive(Debug, Default)]
pub struct Located {
    pub endpoints: HashMap<u64, Endpoint>,
    /// By socket inode.
    pub owners: HashMap<u32, Vec<Owner>>,
    /// Namespaces that could not be listed, and why.
    pub failures: Vec<(u32, io::Error)>,
}

/// Lists the sockets in `states` (a sock_diag mask) of each namespace of `wanted`, keeping
/// the wanted ones, then finds their owners under `proc`. The calling thread's namespace is
/// `home` (the daemon's), where it returns first if an earlier job left it elsewhere.
pub fn locate(wanted: &[Wanted], states: u32, proc: &std::path::Path, home: &Home) -> Located {
    let mut located = Located::default();
    if let Err(error) = home.return_if_away() {
        located.failures.push((0, error));
        return located;
    }
    for namespace in wanted {
        let listed = match &namespace.path {
            None => keep_wanted(states, &namespace.cookies, &mut located.endpoints),
            Some(path) => match home.enter(path, namespace.inode) {
                Ok(inside) => {
                    // The session is closed before leaving: it would keep the namespace alive.
                    let listed = keep_wanted(states, &namespace.cookies, &mut located.endpoints);
                    if let Err(error) = inside.leave() {
                        log::error!(
                            "sockets view: cannot return to tcpstated's network namespace: {error}"
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
    let listed = std::time::Instant::now();
    let inodes: HashSet<u32> = located
        .endpoints
        .values()
        .map(|endpoint| endpoint.inode)
        .filter(|inode| *inode != 0)
        .collect();
    located.owners = owners::find(proc, &inodes);
    log::debug!(
        "sockets view: {} namespaces listed, {} sockets located; their owners found in {:?}",
        wanted.len(),
        located.endpoints.len(),
        listed.elapsed()
    );
    located
}

/// Lists the calling thread's namespace, keeping the endpoints of `cookies`.
fn keep_wanted(
    states: u32,
    cookies: &HashSet<u64>,
    endpoints: &mut HashMap<u64, Endpoint>,
) -> io::Result<()> {
    Session::open()?.for_each_endpoint(states, |endpoint| {
        if cookies.contains(&endpoint.cookie) {
            endpoints.insert(endpoint.cookie, endpoint);
        }
    })
}

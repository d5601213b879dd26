//! Sockets older than the kernel programs: the full sockets without a record at start-up,
//! listed once in each network namespace with sock_diag and counted in the gauges, each until
//! the programs first see it move (the kernel names it in `FIRST_SEEN`), two listings of its
//! namespace find it gone, or its namespace goes.
//!
//! Kept per socket, so that a socket counts once whatever happens while the listing runs: a
//! dump is no snapshot (a socket can be listed twice, when new sockets enter the hash chain it
//! walks), and a socket born after the programs were attached that closes while it is listed
//! (its record gone by the time the daemon looks for it) is no old socket. Only the sockets a
//! second listing, made after the first, lists too are kept (README, "Known limits").

use std::{collections::BTreeMap, io};
use tcpstate_common::state::{NEW_SYN_RECV, TIME_WAIT};

use tcpstate_common::{Labels, TcpState, family};

use crate::{
    bpf::loader::Tracer,
    model::StateKey,
    sockets::{
        sock_diag::{self, DiagSocket},
        untracked::{LabelRule, role_in_state},
    },
};

/// `Entry::kind`'s bit for IPv6 (the role is in the low bits).
const IPV6: u8 = 0x80;

/// A socket of the baseline, packed to 16 bytes (a host can hold a million old sockets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    cookie: u64,
    cgroup: u32,
    port: u16,
    /// 0 once the socket has left the baseline (until the entries are compacted).
    state: u8,
    /// Its role, and [`IPV6`] for an IPv6 socket.
    kind: u8,
}
const _: () = assert!(size_of::<Entry>() == 16);

impl Entry {
    fn new(cookie: u64, labels: Labels, state: u8) -> Self {
        let ipv6 = if labels.family == family::IPV6 {
            IPV6
        } else {
            0
        };
        Entry {
            cookie,
            cgroup: labels.cgroup,
            port: labels.port,
            state,
            kind: labels.role | ipv6,
        }
    }

    fn labels(&self) -> Labels {
        Labels {
            port: self.port,
            family: if self.kind & IPV6 != 0 {
                family::IPV6
            } else {
                family::IPV4
            },
            role: self.kind & !IPV6,
            cgroup: self.cgroup,
        }
    }
}

/// The first start-up listing of a namespace: the full sockets the programs had no record for.
#[derive(Debug)]
pub struct FirstListing {
    net_inode: u32,
    entries: Vec<Entry>,
}

impl FirstListing {
    /// A listing of the namespace with inode `net_inode`.
    pub fn new(net_inode: u32) -> Self {
        FirstListing {
            net_inode,
            entries: Vec::new(),
        }
    }

    pub fn add(&mut self, cookie: u64, labels: Labels, state: u8) {
        self.entries.push(Entry::new(cookie, labels, state));
    }

    /// The namespace's baseline: the sockets of this listing (each once) that `second`, the
    /// cookies of a listing made after it, holds too.
    pub fn confirm(mut self, second: impl IntoIterator<Item = u64>) -> Baseline {
        let entries = &mut self.entries;
        entries.sort_unstable_by_key(|entry| entry.cookie);
        entries.dedup_by_key(|entry| entry.cookie);
        let mut relisted = vec![false; entries.len()];
        for cookie in second {
            if let Ok(index) = entries.binary_search_by_key(&cookie, |entry| entry.cookie) {
                relisted[index] = true;
            }
        }
        let mut relisted = relisted.into_iter();
        entries.retain(|_| relisted.next().unwrap_or(false));
        entries.shrink_to_fit();
        let mut baseline = Baseline::default();
        for entry in &self.entries {
            *baseline
                .counts
                .entry(StateKey::new(entry.labels(), entry.state))
                .or_default() += 1;
        }
        baseline.live = self.entries.len();
        let live = self.entries.len();
        baseline.namespaces.insert(
            self.net_inode,
            Entries {
                entries: self.entries,
                live,
            },
        );
        baseline
    }
}

/// One namespace's entries, sorted by cookie.
#[derive(Debug, Default)]
struct Entries {
    entries: Vec<Entry>,
    /// Entries still in the baseline.
    live: usize,
}

/// The sockets older than the programs that have not moved since, by namespace and cookie.
#[derive(Debug, Default)]
pub struct Baseline {
    namespaces: BTreeMap<u32, Entries>,
    /// Entries still in the baseline, in all namespaces.
    live: usize,
    /// Sockets by labels and state.
    counts: BTreeMap<StateKey, i64>,
}

impl Baseline {
    /// Sockets by labels and state.
    pub fn counts(&self) -> &BTreeMap<StateKey, i64> {
        &self.counts
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Hands `each` every socket still in the baseline: its namespace, cookie, labels and
    /// state.
    pub fn for_each(&self, mut each: impl FnMut(u32, u64, Labels, u8)) {
        for (inode, namespace) in &self.namespaces {
            for entry in namespace.entries.iter().filter(|entry| entry.state != 0) {
                each(*inode, entry.cookie, entry.labels(), entry.state);
            }
        }
    }

    /// Adds the baseline of other namespaces.
    pub fn merge(&mut self, other: Baseline) {
        for (key, count) in other.counts {
            *self.counts.entry(key).or_default() += count;
        }
        self.live += other.live;
        self.namespaces.extend(other.namespaces);
    }

    /// The programs first saw the socket `cookie` move: it has left the baseline (if it was
    /// in it; the programs also first see sockets that were tracked when listed).
    pub fn first_seen(&mut self, cookie: u64) {
        let found = self.namespaces.iter().find_map(|(inode, namespace)| {
            let index = namespace
                .entries
                .binary_search_by_key(&cookie, |entry| entry.cookie)
                .ok()?;
            Some((*inode, index))
        });
        if let Some((inode, index)) = found {
            self.leave(inode, index);
            self.compact(inode);
        }
    }

    /// Takes out the sockets `gone(namespace, cookie, state)` says are gone; returns how many.
    pub fn remove_gone(&mut self, mut gone: impl FnMut(u32, u64, u8) -> bool) -> u64 {
        let mut leaving = Vec::new();
        for (inode, namespace) in &self.namespaces {
            for (index, entry) in namespace.entries.iter().enumerate() {
                if entry.state != 0 && gone(*inode, entry.cookie, entry.state) {
                    leaving.push((*inode, index));
                }
            }
        }
        for (inode, index) in &leaving {
            self.leave(*inode, *index);
        }
        let inodes: Vec<u32> = self.namespaces.keys().copied().collect();
        inodes.into_iter().for_each(|inode| self.compact(inode));
        leaving.len() as u64
    }

    /// Takes out every socket of a namespace gone.
    pub fn retire(&mut self, inode: u32) {
        let Some(namespace) = self.namespaces.get(&inode) else {
            return;
        };
        let live: Vec<usize> = (0..namespace.entries.len())
            .filter(|index| namespace.entries[*index].state != 0)
            .collect();
        for index in live {
            self.leave(inode, index);
        }
        self.namespaces.remove(&inode);
    }

    /// Takes entry `index` of namespace `inode` out of the counts (it stays, with state 0,
    /// until `compact`).
    fn leave(&mut self, inode: u32, index: usize) {
        let Some(namespace) = self.namespaces.get_mut(&inode) else {
            return;
        };
        let entry = &mut namespace.entries[index];
        if entry.state == 0 {
            return;
        }
        let key = StateKey::new(entry.labels(), entry.state);
        entry.state = 0;
        namespace.live -= 1;
        self.live -= 1;
        if let Some(count) = self.counts.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&key);
            }
        }
    }

    /// Drops the entries that left, once they are more than half of a namespace's.
    fn compact(&mut self, inode: u32) {
        let Some(namespace) = self.namespaces.get_mut(&inode) else {
            return;
        };
        if namespace.live == 0 {
            self.namespaces.remove(&inode);
        } else if namespace.live < namespace.entries.len() / 2 {
            namespace.entries.retain(|entry| entry.state != 0);
            namespace.entries.shrink_to_fit();
        }
    }
}

/// Lists the full sockets of the calling thread's network namespace (`net_inode`) the
/// programs of `tracer` have no record for, with their labels by the kernel program's rule
/// (`rule`): twice, see the module. The caller then takes out those the programs have first
/// seen since they were attached.
pub fn list_here(tracer: &Tracer, rule: &LabelRule, net_inode: u32) -> io::Result<Baseline> {
    let full_sockets =
        sock_diag::state_mask(&TcpState::FULL_SOCKET_STATES.map(|state| state as u8));
    let slots = tracer.maps.socket_slots.view()?;
    let mut session = sock_diag::Session::open()?;
    let mut first = FirstListing::new(net_inode);
    // A socket is tracked if it has a record: in socket storage (the dump says) or in a slot
    // (looked up as each batch comes).
    session.for_each(full_sockets, tracer.socket_records_fd(), |socket| {
        if !(socket.tracked || slots.holds(socket.cookie) || is_timewait_or_request(&socket)) {
            let labels = rule.labels(&socket, role_in_state(socket.state));
            first.add(socket.cookie, labels, socket.state);
        }
    })?;
    drop(slots);
    let mut second = Vec::new();
    session.for_each(full_sockets, None, |socket| {
        if !is_timewait_or_request(&socket) {
            second.push(socket.cookie);
        }
    })?;
    Ok(first.confirm(second))
}

/// Timewait and request sockets are the polls' business.
fn is_timewait_or_request(socket: &DiagSocket) -> bool {
    socket.timewait || socket.state == TIME_WAIT || socket.state == NEW_SYN_RECV
}

#[cfg(test)]
mod tests {
    use tcpstate_common::role;
    use tcpstate_common::state::{CLOSE_WAIT, ESTABLISHED};

    use super::*;

    const UNKNOWN: Labels = Labels {
        port: 443,
        family: 2,
        role: role::UNKNOWN,
        cgroup: 0,
    };

    #[test]
    fn a_socket_listed_twice_counts_once_and_one_the_second_listing_lacks_not_at_all() {
        let mut first = FirstListing::new(1);
        first.add(7, UNKNOWN, ESTABLISHED);
        first.add(3, UNKNOWN, CLOSE_WAIT);
        first.add(7, UNKNOWN, ESTABLISHED);
        // Born after the programs, closed while listed: the second listing has no socket 3.
        let baseline = first.confirm([7, 9]);
        assert_eq!(baseline.len(), 1);
        assert_eq!(
            baseline.counts(),
            &BTreeMap::from([(StateKey::new(UNKNOWN, ESTABLISHED), 1)])
        );
    }

    #[test]
    fn sockets_leave_once_when_first_seen_or_found_gone() {
        let mut first = FirstListing::new(1);
        for cookie in 1..=10 {
            first.add(
                cookie,
                UNKNOWN,
                if cookie <= 6 { ESTABLISHED } else { CLOSE_WAIT },
            );
        }
        let mut baseline = first.confirm(1..=10);
        baseline.first_seen(2);
        baseline.first_seen(2);
        baseline.first_seen(42);
        let mut listed = Vec::new();
        baseline.for_each(|inode, cookie, labels, state| {
            assert_eq!((inode, labels), (1, UNKNOWN));
            listed.push((cookie, state));
        });
        assert_eq!(listed.len(), 9, "all but 2: {listed:?}");
        assert!(listed.contains(&(7, CLOSE_WAIT)) && !listed.iter().any(|(c, _)| *c == 2));
        assert_eq!(baseline.counts()[&StateKey::new(UNKNOWN, ESTABLISHED)], 5);
        assert_eq!(baseline.remove_gone(|_, _, state| state == CLOSE_WAIT), 4);
        assert_eq!(baseline.remove_gone(|_, _, _| false), 0);
        assert_eq!(baseline.len(), 5);
        assert!(
            !baseline
                .counts()
                .contains_key(&StateKey::new(UNKNOWN, CLOSE_WAIT))
        );
        // Compacted past half gone; lookups still find the rest.
        for cookie in [1, 3, 4] {
            baseline.first_seen(cookie);
        }
        assert_eq!(baseline.counts()[&StateKey::new(UNKNOWN, ESTABLISHED)], 2);
        baseline.first_seen(5);
        baseline.first_seen(6);
        assert!(baseline.is_empty() && baseline.counts().is_empty());
    }
}

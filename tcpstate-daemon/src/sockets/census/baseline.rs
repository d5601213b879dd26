//! Sockets older than the kernel programs: the full sockets without a record at start-up,
//! listed once with sock_diag and counted in the gauges, each until the programs first see it
//! move (the kernel names it in `FIRST_SEEN`) or two polls find it gone.
//!
//! Kept per socket, so that a socket counts once whatever happens while the listing runs: a
//! dump is no snapshot (a socket can be listed twice, when new sockets enter the hash chain it
//! walks), and a socket born after the programs were attached that closes while it is listed
//! (its record gone by the time the daemon looks for it) is no old socket. Only the sockets a
//! second listing, made after the first, lists too are kept (README, "Known limits").

use std::{collections::BTreeMap, io};
use tcpstate_common::state::{SYN_RECV, TIME_WAIT};

use tcpstate_common::{Labels, TcpState};

use crate::{
    bpf::loader::Tracer,
    model::StateKey,
    sockets::{
        sock_diag::{self, DiagSocket},
        untracked::{role_in_state, untracked_labels},
    },
};

/// A socket of the baseline, packed to 16 bytes (a host can hold a million old sockets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    cookie: u64,
    port: u16,
    family: u8,
    role: u8,
    /// 0 once the socket has left the baseline (until the entries are compacted).
    state: u8,
}
const _: () = assert!(size_of::<Entry>() == 16);

impl Entry {
    fn labels(&self) -> Labels {
        Labels {
            port: self.port,
            family: self.family,
            role: self.role,
            cgroup: 0,
        }
    }
}

/// The first start-up listing: the full sockets the programs had no record for.
#[derive(Debug, Default)]
pub struct FirstListing {
    entries: Vec<Entry>,
}

impl FirstListing {
    pub fn add(&mut self, cookie: u64, labels: Labels, state: u8) {
        self.entries.push(Entry {
            cookie,
            port: labels.port,
            family: labels.family,
            role: labels.role,
            state,
        });
    }

    /// The baseline: the sockets of this listing (each once) that `second`, the cookies of a
    /// listing made after it, holds too.
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
        let mut baseline = Baseline {
            entries: self.entries,
            ..Baseline::default()
        };
        for entry in &baseline.entries {
            *baseline
                .counts
                .entry(StateKey::new(entry.labels(), entry.state))
                .or_default() += 1;
        }
        baseline.live = baseline.entries.len();
        baseline
    }
}

/// The sockets older than the programs that have not moved since, by cookie.
#[derive(Debug, Default)]
pub struct Baseline {
    /// Sorted by cookie.
    entries: Vec<Entry>,
    /// Entries still in the baseline.
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

    /// The programs first saw the socket `cookie` move: it has left the baseline (if it was
    /// in it; the programs also first see sockets that were tracked when listed).
    pub fn first_seen(&mut self, cookie: u64) {
        if let Ok(index) = self
            .entries
            .binary_search_by_key(&cookie, |entry| entry.cookie)
        {
            self.leave(index);
        }
    }

    /// Takes out the sockets `gone(cookie, state)` says are gone; returns how many.
    pub fn remove_gone(&mut self, mut gone: impl FnMut(u64, u8) -> bool) -> u64 {
        let mut removed = 0;
        for index in 0..self.entries.len() {
            let entry = self.entries[index];
            if entry.state != 0 && gone(entry.cookie, entry.state) {
                self.leave(index);
                removed += 1;
            }
        }
        removed
    }

    fn leave(&mut self, index: usize) {
        let entry = &mut self.entries[index];
        if entry.state == 0 {
            return;
        }
        let key = StateKey::new(entry.labels(), entry.state);
        entry.state = 0;
        self.live -= 1;
        if let Some(count) = self.counts.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&key);
            }
        }
        if self.live < self.entries.len() / 2 {
            self.entries.retain(|entry| entry.state != 0);
            self.entries.shrink_to_fit();
        }
    }
}

/// Lists the full sockets the programs of `tracer` have no record for, with their labels by
/// the kernel program's rule (`ports` are the service ports), then takes out those the
/// programs have first seen since they were attached.
pub fn list(tracer: &Tracer, ports: &tcpstate_common::PortSet) -> io::Result<Baseline> {
    let full_sockets =
        sock_diag::state_mask(&TcpState::FULL_SOCKET_STATES.map(|state| state as u8));
    let slots = tracer.maps.socket_slots.view()?;
    let mut first = FirstListing::default();
    // A socket is tracked if it has a record: in socket storage (the dump says) or in a slot
    // (looked up as each batch comes).
    sock_diag::for_each(full_sockets, tracer.socket_records_fd(), |socket| {
        if !(socket.tracked || slots.holds(socket.cookie) || is_timewait_or_request(&socket)) {
            let labels = untracked_labels(ports, &socket, role_in_state(socket.state));
            first.add(socket.cookie, labels, socket.state);
        }
    })?;
    drop(slots);
    let mut second = Vec::new();
    sock_diag::for_each(full_sockets, None, |socket| {
        if !is_timewait_or_request(&socket) {
            second.push(socket.cookie);
        }
    })?;
    let mut baseline = first.confirm(second);
    for cookie in tracer.maps.drain_first_seen()? {
        baseline.first_seen(cookie);
    }
    Ok(baseline)
}

/// Timewait and request sockets (reported in SYN_RECV) are the polls' business.
fn is_timewait_or_request(socket: &DiagSocket) -> bool {
    socket.timewait
        || socket.state == TIME_WAIT
        || (socket.state == SYN_RECV && socket.receive_queue == 0 && socket.send_queue == 0)
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
        let mut first = FirstListing::default();
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
        let mut first = FirstListing::default();
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
        assert_eq!(baseline.counts()[&StateKey::new(UNKNOWN, ESTABLISHED)], 5);
        assert_eq!(baseline.remove_gone(|_, state| state == CLOSE_WAIT), 4);
        assert_eq!(baseline.remove_gone(|_, _| false), 0);
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

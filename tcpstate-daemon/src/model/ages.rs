//! How long the sockets now in each state have been there: from when each entered its state (the
//! kernel's records, or a timewait or request socket's timer), at scrape time, with no work per
//! event. A leaked CLOSE_WAIT socket never leaves its state, so no duration histogram ever sees
//! it; its age does.

use std::collections::BTreeMap;

use super::StateKey;

/// The ages the sockets of a state are counted past (`tcpstate_sockets_older_than`): a
/// CLOSE_WAIT socket 5 minutes old is a leak; a TIME_WAIT one past 60 s has a longer timer.
pub const THRESHOLDS_SECONDS: [u64; 5] = [10, 60, 300, 1800, 3600];

/// The ages of the sockets of one label set and state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgeSummary {
    pub oldest_ns: u64,
    /// Sockets older than each of `THRESHOLDS_SECONDS`.
    pub older_than: [u64; THRESHOLDS_SECONDS.len()],
}

impl AgeSummary {
    pub fn add(&mut self, age_ns: u64) {
        self.oldest_ns = self.oldest_ns.max(age_ns);
        for (count, threshold) in self.older_than.iter_mut().zip(THRESHOLDS_SECONDS) {
            if age_ns > threshold * 1_000_000_000 {
                *count += 1;
            }
        }
    }

    /// Both summaries' sockets together.
    pub fn merge(&mut self, other: &AgeSummary) {
        self.oldest_ns = self.oldest_ns.max(other.oldest_ns);
        for (count, more) in self.older_than.iter_mut().zip(other.older_than) {
            *count += more;
        }
    }
}

/// Ages by label set and state.
pub type Ages = BTreeMap<StateKey, AgeSummary>;

/// Adds a socket that entered `key`'s state at `entered_ns` (the kernel's clock) to `ages`, as
/// of `now_ns`.
pub fn add_age(ages: &mut Ages, key: StateKey, entered_ns: u64, now_ns: u64) {
    ages.entry(key)
        .or_default()
        .add(now_ns.saturating_sub(entered_ns));
}

#[cfg(test)]
mod tests {
    use tcpstate_common::Labels;

    use super::*;

    #[test]
    fn the_oldest_and_the_counts_past_each_threshold() {
        const SECOND: u64 = 1_000_000_000;
        let key = StateKey::new(Labels::default(), 8);
        let now = 10_000 * SECOND;
        let mut ages = Ages::new();
        for age in [5, 61, 400, 400, 4000] {
            add_age(&mut ages, key, now - age * SECOND, now);
        }
        // A record stamped after `now` (a transition during the read) is 0 s old.
        add_age(&mut ages, key, now + SECOND, now);
        let summary = ages[&key];
        assert_eq!(summary.oldest_ns, 4000 * SECOND);
        assert_eq!(summary.older_than, [4, 4, 3, 1, 1]);
        let mut merged = summary;
        merged.merge(&summary);
        assert_eq!(merged.older_than, [8, 8, 6, 2, 2]);
    }
}

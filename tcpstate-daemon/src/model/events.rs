//! Resets and SYN-ACK retransmits, and the reasons of connect failures.

use std::collections::BTreeMap;

use tcpstate_common::{EventKey, Labels, event_kind, transition_detail};

use super::StateKey;

/// Resets and SYN-ACK retransmits, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Events {
    /// By socket labels and state.
    pub resets_sent: BTreeMap<StateKey, u64>,
    pub resets_received: BTreeMap<StateKey, u64>,
    /// By the listener's labels.
    pub synack_retransmits: BTreeMap<Labels, u64>,
}

pub fn events(entries: &[(EventKey, u64)]) -> Events {
    let mut out = Events::default();
    for (key, count) in entries {
        match key.kind {
            event_kind::RESET_SENT => {
                *out.resets_sent
                    .entry(StateKey::new(key.labels, key.state))
                    .or_default() += count
            }
            event_kind::RESET_RECEIVED => {
                *out.resets_received
                    .entry(StateKey::new(key.labels, key.state))
                    .or_default() += count
            }
            event_kind::SYNACK_RETRANSMIT => {
                *out.synack_retransmits.entry(key.labels).or_default() += count
            }
            _ => {}
        }
    }
    out
}

/// The `reason` label of a connect failure.
pub fn connect_failure_reason(detail: u8) -> &'static str {
    match detail {
        transition_detail::CONNECT_REFUSED => "refused",
        transition_detail::CONNECT_TIMEOUT => "timeout",
        transition_detail::CONNECT_RESET => "reset",
        _ => "other",
    }
}

//! `tcp:tcp_send_reset` and `tcp:tcp_receive_reset`: resets sent and received, by the state
//! of the socket (the state it left, for an abort).

use aya_ebpf::programs::BtfTracePointContext;
use tcpstate_common::{
    EventKey, counter, recorder,
    state::{CLOSE, NEW_SYN_RECV, TIME_WAIT},
};

use crate::{
    closed,
    labels::{first_seen_role, ownerless_labels, untracked_labels},
    maps, records,
    sock::Sock,
};

/// `tcp_send_reset(sk, skb, reason)` / `tcp_receive_reset(sk)`: `sk` is a full, timewait or
/// request socket, or NULL for a reset answering a segment no socket owns (not counted).
#[inline(always)]
pub fn record(ctx: &BtfTracePointContext, kind: u8) {
    let sock = Sock::new(ctx.arg(0));
    if sock.is_null() {
        return;
    }
    let mut state = sock.state();
    let labels = if state == CLOSE
        && let Some(closed) = closed::find(&sock)
    {
        // An abort (SO_LINGER 0, unread data, tcp_disconnect) moves the socket to CLOSE before
        // it sends the reset: count it in the state it left.
        state = closed.state;
        closed.labels
    } else if state != TIME_WAIT
        && state != NEW_SYN_RECV
        && let Some(record) = records::find(&sock, sock.cookie())
    {
        // Only full sockets have socket-local storage (the helper checks too).
        record.labels
    } else if state == TIME_WAIT || state == NEW_SYN_RECV {
        ownerless_labels(&sock, first_seen_role(state, state))
    } else {
        untracked_labels(&sock, first_seen_role(state, state))
    };
    let key = EventKey {
        labels,
        kind,
        state,
        _padding: [0; 6],
    };
    count(&key);
}

/// Adds one to an `EVENTS` entry (resets and SYN-ACK retransmits); counts a full map.
#[inline(always)]
pub fn count(key: &EventKey) {
    if !maps::count_event(key) {
        maps::count(recorder::EVENTS, counter::FAILED_EVENTS_MAP_FULL);
    }
}

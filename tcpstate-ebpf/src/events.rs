//! Counted TCP events the state tracepoint does not show: resets sent and received (by the
//! socket's state) and SYN-ACK retransmits (the half-open queue's trouble).

use aya_ebpf::programs::BtfTracePointContext;
use tcpstate_common::state::{CLOSE, NEW_SYN_RECV, TIME_WAIT};
use tcpstate_common::{EventKey, counter, event_kind, recorder, role};

use crate::{
    kernel::Sock,
    labels::{first_seen_role, untracked_labels},
    maps, records,
};

/// `tcp_send_reset(sk, skb, reason)` / `tcp_receive_reset(sk)`: `sk` is a full, timewait or
/// request socket, or NULL for a reset answering a segment no socket owns (not counted).
#[inline(always)]
pub fn record_reset(ctx: &BtfTracePointContext, kind: u8) {
    let sock = Sock::new(ctx.arg(0));
    if sock.is_null() {
        return;
    }
    let mut state = sock.state();
    let labels = if state == CLOSE
        && let Some(closed) = maps::recently_closed(&sock)
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
    } else {
        untracked_labels(&sock, first_seen_role(state, state))
    };
    count(EventKey {
        labels,
        kind,
        state,
        _padding: [0; 6],
    });
}

/// `tcp_retransmit_synack(sk, req)`: `sk` is the listener.
#[inline(always)]
pub fn record_synack_retransmit(ctx: &BtfTracePointContext) {
    let listener = Sock::new(ctx.arg(0));
    if listener.is_null() {
        return;
    }
    let labels = untracked_labels(&listener, role::LISTENER);
    count(EventKey {
        labels,
        kind: event_kind::SYNACK_RETRANSMIT,
        state: NEW_SYN_RECV,
        _padding: [0; 6],
    });
}

#[inline(always)]
fn count(key: EventKey) {
    if !maps::count_event(&key) {
        maps::count(recorder::EVENTS, counter::FAILED_EVENTS_MAP_FULL);
    }
}

//! `tcp:tcp_retransmit_synack`: SYN-ACKs a listener retransmits because the handshake's final
//! ACK did not come (the half-open queue's trouble, which `inet_sock_set_state` never shows).

use aya_ebpf::programs::BtfTracePointContext;
use tcpstate_common::{EventKey, event_kind, role, state::NEW_SYN_RECV};

use crate::{labels::untracked_labels, resets, sock::Sock};

/// `tcp_retransmit_synack(sk, req)`: `sk` is the listener.
#[inline(always)]
pub fn record(ctx: &BtfTracePointContext) {
    let listener = Sock::new(ctx.arg(0));
    if listener.is_null() {
        return;
    }
    let key = EventKey {
        labels: untracked_labels(&listener, role::LISTENER),
        kind: event_kind::SYNACK_RETRANSMIT,
        state: NEW_SYN_RECV,
        _padding: [0; 6],
    };
    resets::count(&key);
}

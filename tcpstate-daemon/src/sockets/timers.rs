//! How long a request or timewait socket has been in its state, from the timer sock_diag
//! reports for it (`idiag_expires`): the kernel keeps no entry time for either, and the kernel
//! programs never see a request socket born, nor a timewait socket older than the daemon
//! enter its state. The timers' lengths are the kernel's (Linux 6.18: net/ipv4/
//! inet_connection_sock.c, tcp_minisocks.c, tcp_input.c, tcp_timer.c); docs/socket-ages.md
//! says where a derived age is exact and where it is a lower bound.

use tcpstate_common::state::{FIN_WAIT2, TIME_WAIT};

const MS: u64 = 1_000_000;
/// TCP_TIMEWAIT_LEN (include/net/tcp.h): TIME_WAIT's length, fixed at compile time (no sysctl
/// changes it).
pub const TIMEWAIT_LEN_NS: u64 = 60_000 * MS;
/// TCP_TIMEOUT_INIT: a request socket's first SYN-ACK timeout (`req->timeout`, unless a
/// sock_ops program set another).
const SYNACK_TIMEOUT_INIT_NS: u64 = 1_000 * MS;
/// TCP_RTO_MAX: the longest a SYN-ACK timeout grows (`reqsk_timeout(req, TCP_RTO_MAX)`).
const RTO_MAX_NS: u64 = 120_000 * MS;

/// How long a request socket has waited for the handshake's last ACK. Its SYN-ACK timer is
/// set to TCP_TIMEOUT_INIT when the SYN arrives; each time it fires the SYN-ACK is resent
/// (`num_retrans`, which sock_diag reports) and the timer set again to the initial timeout
/// doubled per firing, up to TCP_RTO_MAX (`reqsk_timer_handler`). So its age is the earlier
/// timeouts plus the current one less the time left on it.
pub fn request_age_ns(retransmits: u8, expires_ms: u32) -> u64 {
    let timeout = |firings: u8| (SYNACK_TIMEOUT_INIT_NS << firings.min(16)).min(RTO_MAX_NS);
    let earlier: u64 = (0..retransmits).map(timeout).sum();
    earlier + timeout(retransmits).saturating_sub(u64::from(expires_ms) * MS)
}

/// How long a timewait socket in `substate` lasts from its entry into that state to its
/// timer's end; `None` for a FIN_WAIT2 whose namespace's `net.ipv4.tcp_fin_timeout` is not
/// known (`fin_timeout_s`).
/// - TIME_WAIT: TCP_TIMEWAIT_LEN from the peer's FIN (`tcp_time_wait`, `tcp_timewait_state_process`).
/// - FIN_WAIT2 of an orphaned connection: `tcp_fin_timeout` from the ACK of its FIN when that is at
///   most TCP_TIMEWAIT_LEN (the timewait socket is made at once); past it, the full socket waits
///   the excess before handing over to a timewait socket that waits it again (`tcp_rcv_state_process`,
///   `tcp_keepalive_timer`).
pub fn timewait_span_ns(substate: u8, fin_timeout_s: Option<u32>) -> Option<u64> {
    match substate {
        TIME_WAIT => Some(TIMEWAIT_LEN_NS),
        FIN_WAIT2 => {
            let fin_timeout = u64::from(fin_timeout_s?) * 1_000 * MS;
            Some(match fin_timeout.checked_sub(TIMEWAIT_LEN_NS) {
                Some(excess) if excess > 0 => 2 * excess,
                _ => fin_timeout,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000 * MS;

    #[test]
    fn a_request_sockets_age_counts_its_earlier_syn_ack_timeouts() {
        // Just born: 1 s to go on its first timeout.
        assert_eq!(request_age_ns(0, 1_000), 0);
        assert_eq!(request_age_ns(0, 400), 600 * MS);
        // Fired twice (after 1 s, then 2 s more), 4 s timeout with 2.5 s left: 3 + 1.5 s.
        assert_eq!(request_age_ns(2, 2_500), 4_500 * MS);
        // Timeouts stop doubling at 120 s: 1+2+...+64 = 127 s, then 120 s each.
        assert_eq!(request_age_ns(8, 120_000), (127 + 120) * SECOND);
        // A timer overdue (sock_diag says 0 left) counts whole; any count is safe.
        assert_eq!(request_age_ns(1, 0), 3 * SECOND);
        assert!(request_age_ns(u8::MAX, 0) > 0);
    }

    #[test]
    fn timewait_spans_follow_the_kernels_timers() {
        assert_eq!(timewait_span_ns(TIME_WAIT, None), Some(60 * SECOND));
        assert_eq!(timewait_span_ns(FIN_WAIT2, Some(60)), Some(60 * SECOND));
        assert_eq!(timewait_span_ns(FIN_WAIT2, Some(30)), Some(30 * SECOND));
        // 90 s: 30 s in the full socket, then 30 s in the timewait socket.
        assert_eq!(timewait_span_ns(FIN_WAIT2, Some(90)), Some(60 * SECOND));
        assert_eq!(timewait_span_ns(FIN_WAIT2, None), None);
        assert_eq!(timewait_span_ns(1, Some(60)), None);
    }
}

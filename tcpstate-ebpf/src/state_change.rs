//! What one `inet_sock_set_state` event does to the aggregates.
//!
//! Per event: one socket-storage lookup and one `TRANSITIONS` update. The record remembers when
//! the socket entered its state; the transition's flags tell the daemon how the event moves the
//! per-state gauges, so the gauges need no map update of their own.

use aya_ebpf::programs::BtfTracePointContext;
use tcpstate_common::{
    Labels, OTHER_PORT, SocketRecord, TcpState, TransitionKey, bucket_index, counter, role,
    transition_flag,
};

use crate::{
    kernel::{Sock, now_ns},
    maps,
};

const CLOSE: u8 = TcpState::Close as u8;
const LISTEN: u8 = TcpState::Listen as u8;
const SYN_SENT: u8 = TcpState::SynSent as u8;
const SYN_RECV: u8 = TcpState::SynRecv as u8;

#[inline(always)]
pub fn record(ctx: &BtfTracePointContext, recorder: u8) {
    let sock = Sock::new(ctx.arg(0), maps::socket_layout());
    if !sock.is_tcp() {
        return;
    }
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let (from, to) = (old as u8, new as u8);
    if old != from as i32
        || new != to as i32
        || !TcpState::is_valid(from)
        || !TcpState::is_valid(to)
    {
        maps::count(recorder, counter::FAILED_UNKNOWN_STATE);
        return;
    }
    let now = now_ns();

    match sock.record() {
        Some(record) => {
            let labels = record.labels;
            let mut flags = transition_flag::FROM_TRACKED;
            let mut duration = None;
            if record.state == from {
                flags |= transition_flag::DURATION_OBSERVED;
                duration = Some(now.saturating_sub(record.entered_ns));
            } else {
                // An event of this socket never reached us: move it, for the gauges, from the
                // state we last saw to the one this event leaves.
                let inferred = transition_flag::FROM_TRACKED
                    | transition_flag::TO_TRACKED
                    | transition_flag::INFERRED;
                add(
                    recorder,
                    key(labels, record.state, from, inferred, recorder),
                    None,
                );
            }
            if to == CLOSE {
                // Every full socket's life ends with a transition to CLOSE.
                let deleted = sock.delete_record();
                maps::count(
                    recorder,
                    if deleted {
                        counter::RECORDS_DELETED
                    } else {
                        counter::FAILED_RECORD_DELETE
                    },
                );
            } else {
                flags |= transition_flag::TO_TRACKED;
                record.state = to;
                record.entered_ns = now;
            }
            add(recorder, key(labels, from, to, flags, recorder), duration);
        }
        None => {
            let labels = first_seen_labels(&sock, from, to);
            let mut flags = 0;
            if to != CLOSE {
                let mut initial = SocketRecord {
                    entered_ns: now,
                    labels,
                    state: to,
                    _padding: [0; 7],
                };
                if sock.create_record(&mut initial).is_some() {
                    flags |= transition_flag::TO_TRACKED;
                    maps::count(recorder, counter::RECORDS_CREATED);
                } else {
                    maps::count(recorder, counter::FAILED_SOCKET_STORAGE);
                }
            }
            add(recorder, key(labels, from, to, flags, recorder), None);
        }
    }
}

/// Labels of a socket without a record: its role follows from the transition where the kernel
/// makes one (connect, accept, listen), otherwise it is unknown.
#[inline(always)]
fn first_seen_labels(sock: &Sock, from: u8, to: u8) -> Labels {
    let role = match (from, to) {
        (CLOSE, SYN_SENT) | (SYN_SENT, _) => role::CLIENT,
        // A child socket is cloned from its listener, so its first event is LISTEN -> SYN_RECV.
        (LISTEN, SYN_RECV) | (SYN_RECV, _) => role::SERVER,
        (CLOSE, LISTEN) | (LISTEN, _) => role::LISTENER,
        _ => role::UNKNOWN,
    };
    let port = match role {
        role::CLIENT => service_port(sock.remote_port()),
        role::SERVER | role::LISTENER => service_port(sock.local_port()),
        _ => match service_port(sock.local_port()) {
            OTHER_PORT => service_port(sock.remote_port()),
            local => local,
        },
    };
    Labels {
        port,
        family: sock.family(),
        role,
        _padding: [0; 4],
    }
}

#[inline(always)]
fn service_port(port: u16) -> u16 {
    if maps::is_service_port(port) {
        port
    } else {
        OTHER_PORT
    }
}

#[inline(always)]
fn key(labels: Labels, from: u8, to: u8, flags: u8, recorder: u8) -> TransitionKey {
    TransitionKey {
        labels,
        from,
        to,
        flags,
        recorder,
        _padding: [0; 4],
    }
}

/// Counts one transition, with its duration in the histogram when the start was seen.
#[inline(always)]
fn add(recorder: u8, key: TransitionKey, duration_ns: Option<u64>) {
    let Some(stats) = maps::transition_stats(&key) else {
        maps::count(recorder, counter::FAILED_TRANSITIONS_MAP_FULL);
        return;
    };
    // SAFETY: a per-CPU map value valid for this run; `key.recorder` gives each program its own
    // entries, so no other writer can interleave with this read-modify-write on this CPU.
    let stats = unsafe { &mut *stats };
    stats.count += 1;
    if let Some(duration_ns) = duration_ns {
        stats.duration_sum_ns += duration_ns;
        let index = bucket_index(maps::duration_bound, duration_ns);
        if let Some(bucket) = stats.duration_buckets.get_mut(index) {
            *bucket += 1;
        }
    }
}

//! What one `inet_sock_set_state` event does to the aggregates.
//!
//! Per event: one socket record lookup (see `records`) and one aggregate update, in the CPU's
//! `TRANSITION_SLOTS` or else `TRANSITIONS` (see `add`). The record remembers when the socket
//! entered its state; the transition's flags tell the daemon how the event moves the per-state
//! gauges, so the gauges need no map update of their own.

use aya_ebpf::programs::BtfTracePointContext;
use tcpstate_common::{
    EventToken, Handled, Labels, SocketRecord, TcpState, TimewaitHandoff, TransitionKey,
    bucket_index, counter, record_home, recorder,
    state::{CLOSE, CLOSING, FIN_WAIT1, FIN_WAIT2, LISTEN, SYN_RECV, SYN_SENT, TIME_WAIT},
    transition_detail, transition_flag,
};

use crate::{
    closed, globals,
    labels::{first_seen_role, untracked_labels},
    maps, records,
    sock::{Sock, now_ns},
};

// include/net/sock.h `enum sock_flags`.
const SOCK_DEAD: u64 = 1 << 0;
const SOCK_DONE: u64 = 1 << 1;
// include/uapi/asm-generic/errno.h
const ECONNRESET: i32 = 104;
const ETIMEDOUT: i32 = 110;
const ECONNREFUSED: i32 = 111;

/// The primary program: records every event (see `main.rs`).
#[inline(always)]
pub fn record_primary(ctx: &BtfTracePointContext) {
    let sock = Sock::new(ctx.arg(0));
    let event = event(ctx, &sock);
    maps::note_primary_handled(event);
    record(&sock, &event, recorder::PRIMARY);
}

/// The nested-event program: records the events the primary program did not handle.
#[inline(always)]
pub fn record_nested(ctx: &BtfTracePointContext) {
    let sock = Sock::new(ctx.arg(0));
    let event = event(ctx, &sock);
    let handled = maps::take_primary_handled(&event);
    if missed_by_primary(&sock, &event, handled) {
        record(&sock, &event, recorder::NESTED);
        maps::count(recorder::NESTED, counter::NESTED_EVENTS_RECORDED);
    }
}

/// The event: its socket and states, and the socket's cookie (assigned now if it had none), which
/// also identify it for the nested-event program (see `HandledEvents`).
#[inline(always)]
fn event(ctx: &BtfTracePointContext, sock: &Sock) -> EventToken {
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    EventToken {
        socket: sock.address(),
        cookie: sock.cookie(),
        old_state: old as u32,
        new_state: new as u32,
    }
}

/// Whether the primary program missed this event, for the nested-event program. The primary's
/// token on top of the stack settles it in the common case. Otherwise the socket's record tells:
/// had the primary handled the event, the record would be in the new state (or gone, for
/// CLOSE); had it missed it, the record is still in the old state, or absent for a socket it
/// never saw. The stack settles the one case the record cannot: a CLOSE of a socket without a
/// record. A token below the top is this event's too, pushed before a token whose nested-event
/// run the kernel skipped, but the record is checked anyway: a socket that connects again after
/// a disconnect repeats its transitions with the same cookie. Events of other protocols count as
/// missed: the primary program's miss counter counts them too (`record` ignores them).
#[inline(always)]
fn missed_by_primary(sock: &Sock, event: &EventToken, handled: Handled) -> bool {
    if handled == Handled::Top {
        return false;
    }
    if !sock.is_tcp() {
        return handled == Handled::NotSeen;
    }
    match records::find(sock, event.cookie) {
        Some(record) => u32::from(record.state) != event.new_state,
        None if event.new_state == u32::from(CLOSE) => handled == Handled::NotSeen,
        None => true,
    }
}

#[inline(always)]
fn record(sock: &Sock, event: &EventToken, recorder: u8) {
    if !sock.is_tcp() {
        return;
    }
    let (from, to) = (event.old_state as u8, event.new_state as u8);
    if event.old_state != u32::from(from)
        || event.new_state != u32::from(to)
        || !TcpState::is_valid(from)
        || !TcpState::is_valid(to)
    {
        maps::count(recorder, counter::FAILED_UNKNOWN_STATE);
        return;
    }
    let now = now_ns();
    let detail = if to == CLOSE {
        close_detail(sock, from)
    } else {
        transition_detail::NONE
    };
    let cookie = event.cookie;
    let record = if is_birth(from, to) {
        // A new socket (or one back from CLOSE, which dropped its record): nothing to find.
        None
    } else {
        records::find(sock, cookie)
    };

    match record {
        Some(record) => {
            let labels = record.labels;
            let mut flags = transition_flag::FROM_TRACKED;
            let mut duration = NO_DURATION;
            if from == to && record.state == from {
                // `tcp_close()` after `shutdown()` sets FIN_WAIT1 again on a socket already in
                // FIN_WAIT1: counted (the raw view shows it) but the state goes on, so neither
                // its start nor the gauges move.
                let flags = transition_flag::FROM_TRACKED | transition_flag::TO_TRACKED;
                add(
                    recorder,
                    key(labels, from, to, flags, recorder, detail),
                    NO_DURATION,
                );
                return;
            }
            if record.state == from {
                flags |= transition_flag::DURATION_OBSERVED;
                // Capped below the sentinel (a clock that went backwards gives 0).
                duration = now.saturating_sub(record.entered_ns).min(NO_DURATION - 1);
            } else {
                // An event of this socket never reached us: move it, for the gauges, from the
                // state we last saw to the one this event leaves.
                let inferred = transition_flag::FROM_TRACKED
                    | transition_flag::TO_TRACKED
                    | transition_flag::INFERRED;
                let detail = transition_detail::NONE;
                let key = key(labels, record.state, from, inferred, recorder, detail);
                add(recorder, key, NO_DURATION);
            }
            if to == CLOSE {
                closed::note(sock, labels, from);
                // Every full socket's life ends with a transition to CLOSE.
                let released = match handoff(detail, from, record.entered_ns, now) {
                    // The connection lives on in a timewait socket, which inherited the
                    // cookie: leave the daemon its labels and when it entered its state there.
                    Some((state, entered_ns)) if record.home == record_home::SLOT => {
                        records::hand_off(record, state, entered_ns);
                        true
                    }
                    Some((state, entered_ns)) => {
                        let handoff = TimewaitHandoff {
                            entered_ns,
                            labels,
                            state,
                            _padding: [0; 3],
                            net_inode: record.net_inode,
                        };
                        if !maps::record_handoff(cookie, &handoff) {
                            maps::count(recorder, counter::FAILED_HANDOFF_RECORD);
                        }
                        records::delete(sock, record)
                    }
                    None => records::delete(sock, record),
                };
                let counted = if released {
                    counter::RECORDS_DELETED
                } else {
                    counter::FAILED_RECORD_DELETE
                };
                maps::count(recorder, counted);
            } else {
                flags |= transition_flag::TO_TRACKED;
                record.state = to;
                record.entered_ns = now;
            }
            add(
                recorder,
                key(labels, from, to, flags, recorder, detail),
                duration,
            );
        }
        None => {
            if !is_birth(from, to) && !maps::note_first_seen(cookie, from) {
                maps::count(recorder, counter::FAILED_FIRST_SEEN_RECORD);
            }
            let labels = untracked_labels(sock, first_seen_role(from, to));
            if to == CLOSE {
                closed::note(sock, labels, from);
            }
            let mut flags = 0;
            if to != CLOSE {
                let mut initial = SocketRecord {
                    entered_ns: now,
                    labels,
                    cookie,
                    state: to,
                    home: record_home::SLOT,
                    _padding: [0; 2],
                    net_inode: sock.net_inode(),
                };
                let (created, handoff_kept) = records::create(sock, &mut initial, recorder);
                if !handoff_kept {
                    maps::count(recorder, counter::FAILED_HANDOFF_RECORD);
                }
                if let Some(record) = created {
                    flags |= transition_flag::TO_TRACKED;
                    maps::count(recorder, counter::RECORDS_CREATED);
                    if record.home == record_home::SOCKET_STORAGE {
                        maps::count(recorder, counter::RECORDS_IN_SOCKET_STORAGE);
                    }
                } else {
                    maps::count(recorder, counter::FAILED_SOCKET_STORAGE);
                }
            }
            add(
                recorder,
                key(labels, from, to, flags, recorder, detail),
                NO_DURATION,
            );
        }
    }
}

/// The timewait substate a connection closing with `detail` goes on in, and since when: the
/// FIN_WAIT2 of an orphan goes on from the full socket's (`entered_ns`) unless it is entered
/// now. `None`: no timewait socket takes over.
#[inline(always)]
fn handoff(detail: u8, from: u8, entered_ns: u64, now: u64) -> Option<(u8, u64)> {
    match detail {
        transition_detail::TIME_WAIT_HANDOFF => Some((TIME_WAIT, now)),
        transition_detail::FIN_WAIT2_HANDOFF if from == FIN_WAIT2 => Some((FIN_WAIT2, entered_ns)),
        transition_detail::FIN_WAIT2_HANDOFF => Some((FIN_WAIT2, now)),
        _ => None,
    }
}

/// Whether `from -> to` starts a socket's tracked life: connect, a child cloned from its
/// listener, listen.
#[inline(always)]
fn is_birth(from: u8, to: u8) -> bool {
    matches!(
        (from, to),
        (CLOSE, SYN_SENT) | (LISTEN, SYN_RECV) | (CLOSE, LISTEN)
    )
}

/// Why a socket reaches CLOSE, from what the kernel left on it just before: `sk_err` is set
/// before `tcp_done()` on a reset or timeout; `SOCK_DONE` once the peer's FIN arrived
/// (`tcp_fin()`); `SOCK_DEAD` once the application closed it. `tcp_time_wait()` calls
/// `tcp_done()` with neither an error nor a reset:
/// https://elixir.bootlin.com/linux/v6.18/source/net/ipv4/tcp_minisocks.c#L262
#[inline(always)]
pub fn close_detail(sock: &Sock, from: u8) -> u8 {
    let error = sock.error();
    match from {
        SYN_SENT => match error {
            ECONNREFUSED => transition_detail::CONNECT_REFUSED,
            ETIMEDOUT => transition_detail::CONNECT_TIMEOUT,
            ECONNRESET => transition_detail::CONNECT_RESET,
            _ => transition_detail::CONNECT_OTHER,
        },
        FIN_WAIT1 | FIN_WAIT2 | CLOSING if error == 0 => {
            let flags = sock.flags();
            if flags & SOCK_DONE != 0 {
                transition_detail::TIME_WAIT_HANDOFF
            } else if flags & SOCK_DEAD != 0 {
                transition_detail::FIN_WAIT2_HANDOFF
            } else {
                transition_detail::NONE
            }
        }
        _ => transition_detail::NONE,
    }
}

/// A transition's key, as the two words `TRANSITION_SLOTS` holds (`TransitionKey::words`).
#[inline(always)]
fn key(labels: Labels, from: u8, to: u8, flags: u8, recorder: u8, detail: u8) -> [u64; 2] {
    // SAFETY: `Labels` is `#[repr(C)]`, 8 bytes of integers without padding: its bytes are one
    // word in little-endian order (bpfel), as `TransitionKey::words` composes it. One load of
    // the record's labels, where composing its fields costs four.
    let labels = unsafe { core::mem::transmute::<Labels, u64>(labels) };
    [
        labels,
        TransitionKey::edge_word(from, to, flags, recorder, detail),
    ]
}

/// `add`'s duration when the start of the state was not seen. A sentinel, not an `Option`:
/// with an `Option`, LLVM keeps the flag and the value in different registers, and the verifier
/// cannot follow the correlation ("math between map_value pointer and register with unbounded
/// min value is not allowed").
const NO_DURATION: u64 = u64::MAX;

/// Counts one transition, with its duration in the histogram when the start was seen: the
/// primary program in its fast slots when the key has one, every other case in `TRANSITIONS`.
#[inline(always)]
fn add(recorder: u8, key: [u64; 2], duration_ns: u64) {
    let fast = if recorder == tcpstate_common::recorder::PRIMARY {
        maps::transition_slot_stats(key)
    } else {
        None
    };
    // SAFETY: `TransitionKey` is `#[repr(C)]`, 16 bytes of integers with explicit padding, and
    // its words are its bytes in little-endian order (bpfel), padding zero. Built from words,
    // the key is two stores; field by field, LLVM merges the zero padding into a `memset` call.
    let map_key = || unsafe { core::mem::transmute::<[u64; 2], TransitionKey>(key) };
    let Some(stats) = fast.or_else(|| maps::transition_stats(&map_key())) else {
        maps::count(recorder, counter::FAILED_TRANSITIONS_MAP_FULL);
        return;
    };
    // SAFETY: a per-CPU map value valid for this run; `key.recorder` gives each program its own
    // entries, so no other writer can interleave with this read-modify-write on this CPU.
    let stats = unsafe { &mut *stats };
    stats.count += 1;
    if duration_ns != NO_DURATION {
        stats.duration_sum_ns += duration_ns;
        let index = bucket_index(globals::duration_bound, duration_ns);
        if let Some(bucket) = stats.duration_buckets.get_mut(index) {
            *bucket += 1;
        }
    }
}

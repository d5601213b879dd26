//! The census across network namespaces: each namespace's sockets followed by its own polls,
//! handoffs waiting for theirs, namespaces gone or reused, the sums of their counters, and
//! what each poll lists.

use std::path::PathBuf;

use tcpstate_common::{
    Labels, SocketRecord, TimewaitHandoff, role,
    state::{CLOSE, LAST_ACK, NEW_SYN_RECV},
};

use super::{stale::STALE_RECORD_DELAY_NS, *};
use crate::{
    bpf::socket_slots::SlotSweep as _,
    netstat::TcpExt,
    sockets::{
        namespaces::Namespaces,
        survey::{Failure, Missed},
    },
};

const SECOND: u64 = 1_000_000_000;
const START: u64 = 1_000 * SECOND;
const OWN: u32 = 4026531833;
const A: u32 = 4026532201;
const B: u32 = 4026532202;

fn listing(inodes: &[u32]) -> Namespaces {
    inodes
        .iter()
        .map(|inode| (*inode, PathBuf::from(format!("/run/netns/{inode}"))))
        .collect()
}

fn census(owners: bool) -> Census {
    let mut ports = PortSet::EMPTY;
    ports.insert(443);
    Census::covering(
        LabelRule { ports, owners },
        Coverage::every(OWN, "/proc".into(), &listing(&[OWN, A, B])),
        vec![SECOND, 61 * SECOND],
        START,
        Baseline::default(),
    )
}

fn socket(state: u8, timewait: bool, ports: (u16, u16), cookie: u64) -> DiagSocket {
    DiagSocket {
        family: 2,
        state,
        timewait,
        local_port: ports.0,
        remote_port: ports.1,
        cookie,
        expires_ms: 50_000,
        ..DiagSocket::default()
    }
}

fn time_wait(cookie: u64) -> DiagSocket {
    socket(TIME_WAIT, true, (40_000, 443), cookie)
}

/// A poll of `inode` that ended at `now`, listing `sockets` (`Depth::Listeners`: listeners
/// only are asked for).
fn visit(inode: u32, depth: Depth, sockets: &[DiagSocket], now: u64) -> NamespacePoll {
    let seen = |s: &DiagSocket| DiagSocket { seen_ns: now, ..*s };
    let (requests, sockets): (Vec<_>, Vec<_>) = sockets
        .iter()
        .map(seen)
        .filter(|s| depth == Depth::Full || s.state == LISTEN)
        .partition(|s| s.state == NEW_SYN_RECV);
    NamespacePoll {
        inode,
        path: PathBuf::from(format!("/run/netns/{inode}")),
        cookie: u64::from(inode),
        depth,
        sockets,
        requests,
        started_ns: now - SECOND / 10,
        finished_ns: now,
        tcp_ext: None,
        port_range: None,
        fin_timeout_s: Some(60),
    }
}

fn survey(visits: Vec<NamespacePoll>) -> Survey {
    Survey {
        visits,
        ..Survey::default()
    }
}

fn client() -> Labels {
    Labels {
        port: 443,
        family: 2,
        role: role::CLIENT,
        cgroup: 0,
    }
}

fn time_wait_now(census: &Census) -> i64 {
    census.sockets_now()[&StateKey::new(client(), TIME_WAIT)]
}

fn ended(census: &Census) -> u64 {
    census.transitions()[&EdgeKey::new(client(), TIME_WAIT, CLOSE)]
}

#[test]
fn each_namespace_is_followed_by_its_own_full_polls_and_its_timewait_sockets_end_with_it() {
    let mut census = census(false);
    let now = START + SECOND;
    census.fold(survey(vec![
        visit(OWN, Depth::Full, &[], now),
        visit(A, Depth::Full, &[time_wait(1), time_wait(2)], now),
        visit(B, Depth::Full, &[time_wait(3)], now),
    ]));
    assert_eq!(time_wait_now(&census), 3);
    // B listed for its listeners only: its timewait sockets are not gone for that.
    let now = START + 2 * SECOND;
    census.fold(survey(vec![
        visit(OWN, Depth::Full, &[], now),
        visit(A, Depth::Full, &[time_wait(1)], now),
        visit(B, Depth::Listeners, &[time_wait(3)], now),
    ]));
    assert_eq!((time_wait_now(&census), ended(&census)), (2, 1));
    // B's path is gone and no listing finds it: its timewait sockets end with it.
    let now = START + 3 * SECOND;
    census.fold(Survey {
        visits: vec![
            visit(OWN, Depth::Full, &[], now),
            visit(A, Depth::Full, &[time_wait(1)], now),
        ],
        failures: vec![Failure {
            inode: B,
            path: "/run/netns/gone".into(),
            missed: Missed::Gone,
        }],
        listing: Some(listing(&[OWN, A])),
    });
    assert_eq!((time_wait_now(&census), ended(&census)), (1, 2));
    assert_eq!(census.namespaces(), 2);
}

#[test]
fn a_handoff_waits_for_two_full_polls_of_its_own_namespace() {
    let mut census = census(false);
    let server = Labels {
        role: role::SERVER,
        ..client()
    };
    census.add_handoff(
        9,
        TimewaitHandoff {
            entered_ns: START + SECOND,
            labels: server,
            state: TIME_WAIT,
            _padding: [0; 3],
            net_inode: B,
        },
    );
    // Polls that list B's listeners only are no chance for it to be found.
    for second in 2..5 {
        let now = START + second * SECOND;
        census.fold(survey(vec![
            visit(OWN, Depth::Full, &[], now),
            visit(B, Depth::Listeners, &[], now),
        ]));
    }
    assert!(
        !census
            .transitions()
            .contains_key(&EdgeKey::new(server, TIME_WAIT, CLOSE))
    );
    let now = START + 5 * SECOND;
    census.fold(survey(vec![visit(B, Depth::Full, &[time_wait(9)], now)]));
    assert_eq!(census.sockets_now()[&StateKey::new(server, TIME_WAIT)], 1);
    // A handoff of a namespace no poll covers ends after two polls, as before.
    census.add_handoff(
        10,
        TimewaitHandoff {
            net_inode: 77,
            ..TimewaitHandoff::default()
        },
    );
    assert!(
        census.plan_poll().rediscover,
        "an unknown namespace asks for a listing"
    );
    for second in 6..8 {
        census.fold(survey(vec![visit(
            OWN,
            Depth::Full,
            &[],
            START + second * SECOND,
        )]));
    }
    assert!(!census.timewait.namespaces.contains_key(&77));
}

#[test]
fn counters_are_summed_over_namespaces_and_never_go_back() {
    let mut census = census(false);
    let counted = |overflows| TcpExt {
        listen: ListenCounters {
            overflows,
            drops: overflows,
            timewait_overflows: 0,
        },
        syn_retransmits: 0,
    };
    let with = |mut poll: NamespacePoll, overflows, range| {
        poll.tcp_ext = Some(counted(overflows));
        poll.port_range = Some(range);
        poll
    };
    let now = START + SECOND;
    census.fold(survey(vec![
        with(visit(OWN, Depth::Full, &[], now), 1, (32768, 60999)),
        with(visit(A, Depth::Listeners, &[], now), 10, (40000, 40100)),
        with(visit(B, Depth::Listeners, &[], now), 100, (1024, 65535)),
    ]));
    let own_now = ListenCounters {
        overflows: 2,
        drops: 2,
        timewait_overflows: 0,
    };
    assert_eq!(
        census.listen_counters(Some(own_now)).unwrap().overflows,
        112
    );
    assert_eq!(census.port_range(None), Some((40000, 40100)));
    // B goes: its counts stay. A's inode comes back for another namespace: the one before's
    // counts stay too.
    let now = START + 2 * SECOND;
    let mut reused = with(visit(A, Depth::Listeners, &[], now), 3, (32768, 60999));
    reused.cookie += 1000;
    census.fold(Survey {
        visits: vec![
            with(visit(OWN, Depth::Full, &[], now), 2, (32768, 60999)),
            reused,
        ],
        listing: Some(listing(&[OWN, A])),
        ..Survey::default()
    });
    assert_eq!(
        census.listen_counters(None).unwrap().overflows,
        2 + 3 + 10 + 100
    );
    assert_eq!(census.port_range(None), Some((32768, 60999)));
}

#[test]
fn a_poll_lists_the_busy_and_a_few_quiet_namespaces_whole_new_ones_first_the_others_listeners() {
    let inodes: Vec<u32> = (1..=12).map(|n| A + n).collect();
    let mut census = Census::covering(
        LabelRule::ports(PortSet::EMPTY),
        Coverage::every(
            OWN,
            "/proc".into(),
            &listing(&[&[OWN][..], &inodes].concat()),
        ),
        vec![SECOND],
        START,
        Baseline::default(),
    );
    let whole = |plan: &PollPlan| -> Vec<u32> {
        plan.others
            .iter()
            .filter(|target| target.depth == Depth::Full)
            .map(|target| target.inode)
            .collect()
    };
    // Never listed whole: four a poll (the bound keeps polls short on a host that starts with
    // many namespaces), the others' listeners meanwhile.
    let plan = census.plan_poll();
    assert_eq!(whole(&plan), inodes[..4]);
    assert_eq!(plan.others.len(), inodes.len());
    let busy = inodes[7];
    let now = START + SECOND;
    let mut visits: Vec<NamespacePoll> = inodes
        .iter()
        .map(|inode| visit(*inode, Depth::Full, &[], now))
        .collect();
    visits[7] = visit(busy, Depth::Full, &[time_wait(5)], now);
    census.fold(survey(visits));
    // The one with a timewait socket, and four quiet ones in turn.
    let first = whole(&census.plan_poll());
    assert_eq!(first.len(), 5);
    assert!(first.contains(&busy));
    let second = whole(&census.plan_poll());
    assert!(second.contains(&busy));
    assert!(
        first
            .iter()
            .all(|inode| *inode == busy || !second.contains(inode)),
        "quiet turns move on: {first:?} then {second:?}"
    );
}

#[test]
fn queues_are_kept_by_port_and_owner_and_request_sockets_take_their_listeners() {
    for owners in [false, true] {
        let mut census = census(owners);
        let listener = |cgroup, cookie| DiagSocket {
            receive_queue: 1,
            send_queue: 128,
            cgroup,
            ..socket(LISTEN, false, (443, 0), cookie)
        };
        let request = socket(NEW_SYN_RECV, false, (443, 50_000), 30);
        let now = START + SECOND;
        census.fold(survey(vec![
            visit(A, Depth::Full, &[listener(77, 1), request], now),
            visit(B, Depth::Full, &[listener(88, 2)], now),
        ]));
        let owner = |cgroup| if owners { cgroup } else { 0 };
        let queue = |cgroup| {
            census.listen_queues()[&ListenKey {
                port: 443,
                cgroup: owner(cgroup),
            }]
        };
        assert_eq!(queue(77).length + u64::from(owners) * queue(88).length, 2);
        let server = Labels {
            role: role::SERVER,
            cgroup: owner(77),
            ..client()
        };
        assert_eq!(
            census.sockets_now()[&StateKey::new(server, NEW_SYN_RECV)],
            1
        );
    }
}

#[test]
fn a_closing_record_is_proved_gone_by_two_full_polls_of_its_own_namespace() {
    let mut census = census(false);
    let record = SocketRecord {
        entered_ns: START,
        labels: client(),
        cookie: 50,
        state: LAST_ACK,
        net_inode: B,
        ..SocketRecord::default()
    };
    // Two polls of B that list its listeners only prove nothing of a closing socket.
    for second in 1..3 {
        let now = START + second * SECOND;
        census.fold(survey(vec![visit(B, Depth::Listeners, &[], now)]));
    }
    let now = START + 3 * SECOND;
    assert!(!census.record_sweep(now).is_stale(&record));
    for second in 3..5 {
        let now = START + second * SECOND;
        census.fold(survey(vec![visit(B, Depth::Full, &[], now)]));
    }
    let now = START + 4 * SECOND + STALE_RECORD_DELAY_NS;
    let sweep = census.record_sweep(now);
    assert!(sweep.is_stale(&record));
    // The same socket in another namespace, whose polls did not list it whole, is left alone.
    assert!(!sweep.is_stale(&SocketRecord {
        net_inode: A,
        ..record
    }));
}

#[test]
fn an_orphans_fin_wait2_age_follows_its_namespaces_fin_timeout() {
    let mut census = census(false);
    let now = START + SECOND;
    // 60 s (the default) in A, read by its poll: 45 s left, entered 15 s before the reading.
    let orphan = DiagSocket {
        expires_ms: 45_000,
        ..socket(FIN_WAIT2, true, (40_000, 443), 7)
    };
    census.fold(survey(vec![visit(A, Depth::Full, &[orphan], now)]));
    let mut entered = None;
    census.for_each_polled_socket(|inode, cookie, _, state, entered_ns| {
        assert_eq!((inode, cookie, state), (A, 7, FIN_WAIT2));
        entered = entered_ns;
    });
    assert_eq!(entered, Some(now - 15 * SECOND));
}

use tcpstate_common::{
    PortSet, SocketRecord, role,
    state::{CLOSE_WAIT, ESTABLISHED, NEW_SYN_RECV},
};

use super::{locate::Unseen, *};
use crate::sockets::{census::baseline::FirstListing, sock_diag::DiagSocket};

const SECOND: u64 = 1_000_000_000;
const NOW: u64 = 1_000 * SECOND;
const OWN: u32 = 4_026_531_840;

fn record(cookie: u64, state: u8, port: u16, age_seconds: u64) -> SocketRecord {
    SocketRecord {
        entered_ns: NOW - age_seconds * SECOND,
        labels: Labels {
            port,
            family: 2,
            role: role::SERVER,
            cgroup: 0,
        },
        cookie,
        state,
        net_inode: OWN,
        ..SocketRecord::default()
    }
}

fn labels(role: u8) -> Labels {
    Labels {
        port: 8080,
        family: 2,
        role,
        cgroup: 0,
    }
}

/// A census whose baseline holds socket 7, in CLOSE_WAIT since before the daemon started.
fn census() -> Census {
    let mut ports = PortSet::EMPTY;
    ports.insert(8080);
    let mut listing = FirstListing::new(OWN);
    listing.add(7, labels(role::UNKNOWN), CLOSE_WAIT);
    Census::new(ports, vec![SECOND], 0, OWN, listing.confirm([7]))
}

fn chosen_from(
    census: &Census,
    search_storage: bool,
    query: &str,
    records: &[SocketRecord],
) -> (Choice, Listing) {
    let query = SocketQuery::parse(Some(query)).unwrap();
    choose(
        |each| {
            records.iter().for_each(each);
            Ok(())
        },
        search_storage,
        None,
        census,
        None,
        &query,
        NOW,
    )
    .unwrap()
}

fn chosen(query: &str, records: &[SocketRecord]) -> (Choice, Listing) {
    chosen_from(&census(), false, query, records)
}

fn cookies(choice: &Choice) -> Vec<u64> {
    choice.chosen.iter().map(|c| c.cookie).collect()
}

#[test]
fn lists_the_oldest_matching_sockets_first_within_the_limit() {
    let records = [
        record(1, CLOSE_WAIT, 8080, 10),
        record(2, CLOSE_WAIT, 8080, 400),
        record(3, ESTABLISHED, 8080, 900),
        record(4, CLOSE_WAIT, 9090, 500),
        record(5, CLOSE_WAIT, 8080, 300),
        record(6, CLOSE_WAIT, 8080, 350),
    ];
    let (choice, listing) = chosen("state=CLOSE_WAIT&port=8080&min_age=60&limit=3", &records);
    // The baseline's socket 7 (age unknown, so first), then the oldest records.
    assert_eq!(choice.matched, 4);
    assert_eq!(cookies(&choice), [7, 2, 6]);
    // The daemon's own namespace, listed to locate them; no search for unseen sockets.
    assert_eq!(listing.namespaces.len(), 1);
    assert_eq!(listing.namespaces[0].path, None);
    assert_eq!(listing.namespaces[0].cookies, HashSet::from([7, 2, 6]));
    assert_eq!(listing.states, sock_diag::state_mask(&[CLOSE_WAIT]));
    assert!(listing.unseen.is_none());
    let answer = choice.answer(&Located::default());
    assert_eq!((answer.matched, answer.listed, answer.unlocated), (4, 3, 3));
    let [older, oldest_recorded] = [&answer.sockets[0], &answer.sockets[1]];
    assert_eq!((older.age_seconds, older.role), (None, "unknown"));
    assert_eq!(
        (
            oldest_recorded.state,
            oldest_recorded.role,
            oldest_recorded.port.as_str()
        ),
        ("CLOSE_WAIT", "server", "8080")
    );
    assert_eq!(oldest_recorded.age_seconds, Some(400.0));
    assert!(oldest_recorded.workload.is_none() && oldest_recorded.local.is_none());
}

#[test]
fn unseen_sockets_are_searched_for_in_every_namespace_and_come_first() {
    let records = [
        record(20, CLOSE_WAIT, 8080, 400),
        record(21, ESTABLISHED, 8080, 300),
    ];
    let (mut choice, listing) = chosen_from(&census(), true, "state=CLOSE_WAIT&limit=2", &records);
    let search = listing.unseen.expect("a search");
    // What the records and the baseline already name, in the states asked.
    assert_eq!(search.known, [7, 20]);
    assert_eq!(
        listing.namespaces.len(),
        1,
        "every namespace: here the daemon's only"
    );
    let unseen = Unseen {
        net_inode: OWN,
        cookie: 5,
        state: CLOSE_WAIT,
        labels: labels(role::UNKNOWN),
        entered_ns: None,
    };
    let located = Located {
        unseen: vec![unseen],
        unseen_matched: 1,
        ..Located::default()
    };
    choice.add_unseen(&located);
    assert_eq!(
        cookies(&choice),
        [5, 7],
        "unknown ages first, by cookie; the limit holds"
    );
    let answer = choice.answer(&located);
    assert_eq!((answer.matched, answer.listed), (3, 2));
    assert_eq!(answer.sockets[0].age_seconds, None);
}

#[test]
fn request_sockets_are_listed_with_the_age_their_syn_ack_timer_gives() {
    let mut census = census();
    // Fired twice (1 s, then 2 s), 1.5 s left of its 4 s timeout: born 5.5 s before it was read.
    let request = DiagSocket {
        family: 2,
        state: NEW_SYN_RECV,
        local_port: 8080,
        remote_port: 50_000,
        cookie: 9,
        expires_ms: 1_500,
        retransmits: 2,
        seen_ns: NOW - SECOND,
        ..DiagSocket::default()
    };
    census.observe(&[], &[request], NOW - SECOND, NOW - SECOND);
    let query = "state=NEW_SYN_RECV&port=8080&min_age=6";
    let (choice, _) = chosen_from(&census, false, query, &[]);
    let answer = choice.answer(&Located::default());
    assert_eq!(answer.matched, 1);
    let listed = &answer.sockets[0];
    assert_eq!((listed.state, listed.role), ("NEW_SYN_RECV", "server"));
    assert_eq!(listed.age_seconds, Some(6.5));
    let (too_young, _) = chosen_from(&census, false, "state=NEW_SYN_RECV&min_age=7", &[]);
    assert_eq!(too_young.matched, 0);
}

#[test]
fn a_workload_filter_without_workloads_is_refused() {
    let census = census();
    let query = SocketQuery::parse(Some("workload=shop")).unwrap();
    let error = choose(|_| Ok(()), false, None, &census, None, &query, NOW)
        .map(|_| ())
        .unwrap_err();
    assert!(error.to_string().contains("without --workloads"), "{error}");
}

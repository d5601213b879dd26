use tcpstate_common::{
    PortSet, SocketRecord, role,
    state::{CLOSE_WAIT, ESTABLISHED},
};

use super::*;

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

fn chosen(query: &str, records: &[SocketRecord]) -> Choice {
    let census = Census::new(PortSet::EMPTY, vec![SECOND], 0, OWN, Default::default());
    let query = SocketQuery::parse(Some(query)).unwrap();
    choose(
        |each| {
            records.iter().for_each(each);
            Ok(())
        },
        &census,
        None,
        &query,
        NOW,
    )
    .unwrap()
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
    let choice = chosen("state=CLOSE_WAIT&port=8080&min_age=60&limit=2", &records);
    assert_eq!(choice.matched, 3);
    let cookies: Vec<u64> = choice.chosen.iter().map(|c| c.cookie).collect();
    assert_eq!(cookies, [2, 6]);
    assert_eq!(choice.wanted().len(), 1);
    assert_eq!(choice.wanted()[0].path, None, "the daemon's own namespace");
    assert_eq!(choice.state_mask(), sock_diag::state_mask(&[CLOSE_WAIT]));
    let answer = choice.answer(&Located::default(), 2);
    assert_eq!((answer.matched, answer.listed, answer.unlocated), (3, 2, 2));
    let first = &answer.sockets[0];
    assert_eq!(
        (first.state, first.role, first.port.as_str()),
        ("CLOSE_WAIT", "server", "8080")
    );
    assert_eq!(first.age_seconds, Some(400.0));
    assert!(first.workload.is_none() && first.local.is_none());
}

#[test]
fn a_workload_filter_without_workloads_is_refused() {
    let census = Census::new(PortSet::EMPTY, vec![SECOND], 0, OWN, Default::default());
    let query = SocketQuery::parse(Some("workload=shop")).unwrap();
    let error = choose(|_| Ok(()), &census, None, &query, NOW).unwrap_err();
    assert!(error.to_string().contains("without --workloads"), "{error}");
}

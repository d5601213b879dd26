use std::time::UNIX_EPOCH;

use tcpstate_common::{TRACE_MAX_PORTS, TcpState, role};

use super::*;
use crate::workload::Workload;

fn transition(local: u16, remote: u16, from: TcpState, to: TcpState) -> Transition {
    Transition {
        time: UNIX_EPOCH,
        cookie: 1,
        family: 2,
        local: ([127, 0, 0, 1], local).into(),
        remote: ([127, 0, 0, 1], remote).into(),
        from,
        to,
        duration_ns: None,
        role: role::CLIENT,
        port_label: 0,
        cgroup: 9,
        workload: Some(Workload {
            namespace: "default".into(),
            pod: "web-0".into(),
            container: "nginx".into(),
        }),
    }
}

#[test]
fn queries_parse_lists_repeats_and_encodings() {
    let request =
        Request::parse("port=443,80&port=80&state=established&state=CLOSE-WAIT,closed&limit=5")
            .unwrap();
    assert_eq!(request.filter.ports, [80, 443]);
    assert_eq!(
        request.filter.states,
        [TcpState::Established, TcpState::Close, TcpState::CloseWait]
    );
    assert_eq!((request.limit, request.queue), (Some(5), DEFAULT_QUEUE));
    let request = Request::parse("workload=default%2Fweb-0&queue=16").unwrap();
    assert_eq!(request.filter.workload.as_deref(), Some("default/web-0"));
    assert_eq!(request.queue, 16);
    assert_eq!(Request::parse("").unwrap().filter, Filter::default());
    let back = Request::parse(&request.filter.to_query()).unwrap();
    assert_eq!(back.filter, request.filter);
}

#[test]
fn bad_queries_say_what_is_wrong() {
    let cases = [
        ("ports=80", "unknown parameter `ports`"),
        ("port=0", "`0` is not a port"),
        ("port=http", "`http` is not a port"),
        ("state=OPEN", "`OPEN` is not a TCP state"),
        ("state=NEW_SYN_RECV", "is not a TCP state"),
        ("workload=a&workload=b", "at most one workload"),
        ("workload=/a", "not a workload name"),
        ("limit=0", "from 1 to 1000000000"),
        ("limit=99999999999999999999", "not a valid limit"),
        (
            "queue=2049",
            "`2049` is not a valid queue: give a whole number from 1 to 2048",
        ),
        ("queue=-1", "not a valid queue"),
        ("port=%zz", "not percent-encoded"),
    ];
    for (query, expected) in cases {
        let error = Request::parse(query).unwrap_err().to_string();
        assert!(error.contains(expected), "{query}: {error}");
    }
    let many = (1..=TRACE_MAX_PORTS as u16 + 1)
        .map(|port| port.to_string())
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        Request::parse(&format!("port={many}")),
        Err(FilterError::TooManyPorts)
    );
}

#[test]
fn filters_match_either_port_either_state_and_workload_parts() {
    let ends = transition(50000, 26201, TcpState::FinWait2, TcpState::TimeWait);
    let mut filter = Request::parse("port=26201&state=TIME_WAIT").unwrap().filter;
    assert!(filter.matches(&ends));
    filter.states = vec![TcpState::Close];
    assert!(!filter.matches(&ends), "the logical view's states");
    for (wanted, matches) in [
        ("default/web-0/nginx", true),
        ("default/web-0", true),
        ("default", true),
        ("default/web", false),
        ("nginx", false),
    ] {
        let mut filter = Filter::default();
        filter.set_workload(wanted).unwrap();
        assert_eq!(filter.matches(&ends), matches, "{wanted}");
    }
    let mut unowned = ends.clone();
    unowned.workload = None;
    let mut filter = Filter::default();
    filter.set_workload("host").unwrap();
    assert!(!filter.matches(&unowned));
}

#[test]
fn the_kernels_filter_is_the_union_of_the_subscribers() {
    let web = Request::parse("port=80&state=LISTEN").unwrap().filter;
    let db = Request::parse("port=5432,80&state=ESTABLISHED")
        .unwrap()
        .filter;
    let control = kernel_filter([(&web, None), (&db, None)]);
    assert_eq!(control.subscribers, 2);
    assert_eq!(&control.ports[..control.port_count as usize], &[80, 5432]);
    assert_eq!(control.states, 1 << 10 | 1 << 1);
    assert_eq!(control.cgroup_count, 0, "no workload asked for");

    // One subscriber without a part makes that part pass everything.
    let all = Filter::default();
    let control = kernel_filter([(&web, None), (&all, None)]);
    assert_eq!((control.port_count, control.states), (0, 0));

    // Workloads: their groups, or a group none has when the workload has none now.
    let mut owned = Filter::default();
    owned.set_workload("default/web-0").unwrap();
    let groups = [12, 11];
    let control = kernel_filter([(&owned, Some(&groups[..])), (&owned, Some(&[11][..]))]);
    assert_eq!(&control.cgroups[..control.cgroup_count as usize], &[11, 12]);
    let control = kernel_filter([(&owned, Some(&[][..]))]);
    assert_eq!(
        &control.cgroups[..control.cgroup_count as usize],
        &[NO_CGROUP]
    );
    let wide: Vec<u32> = (1..=TRACE_MAX_CGROUPS as u32 + 1).collect();
    assert_eq!(kernel_filter([(&owned, Some(&wide[..]))]).cgroup_count, 0);
    assert_eq!(kernel_filter([]), TraceControl::OFF);
}

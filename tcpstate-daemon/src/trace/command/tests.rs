use super::*;

fn args(flags: &[&str]) -> TraceArgs {
    use clap::Parser as _;
    let flags =
        crate::config::Flags::try_parse_from(["tcpstated", "trace"].iter().chain(flags).copied())
            .unwrap();
    match flags.command {
        Some(Command::Trace(args)) => args,
        None => panic!("no subcommand"),
    }
}

#[test]
fn flags_become_the_streams_query() {
    let trace = args(&["--port", "443,80", "--state", "close-wait", "--limit", "3"]);
    assert_eq!(
        trace.query().unwrap(),
        "port=80,443&state=CLOSE_WAIT&limit=3"
    );
    let trace = args(&["--workload", "default/web 0"]);
    assert_eq!(trace.query().unwrap(), "workload=default/web%200");
    assert_eq!(args(&[]).query().unwrap(), "");
    assert!(!args(&[]).json);
    let bad = args(&["--state", "OPEN"]).query().unwrap_err();
    assert!(bad.contains("`OPEN` is not a TCP state"), "{bad}");
}

#[test]
fn credentials_come_in_pairs() {
    use clap::Parser as _;
    let parse = |flags: &[&str]| {
        crate::config::Flags::try_parse_from(["tcpstated", "trace"].iter().chain(flags))
    };
    assert!(parse(&["--tls.cert-file", "c.pem"]).is_err());
    assert!(parse(&["--basic-auth.username", "me"]).is_err());
    let trace = args(&[
        "--web.url",
        "https://node-1:9816",
        "--tls.ca-file",
        "ca.pem",
        "--basic-auth.username",
        "me",
        "--basic-auth.password-file",
        "password",
    ]);
    assert_eq!(trace.credentials.username.as_deref(), Some("me"));
}

#[test]
fn daemon_flags_and_the_subcommand_do_not_mix() {
    use clap::Parser as _;
    let mixed = crate::config::Flags::try_parse_from(["tcpstated", "--port", "80", "trace"]);
    assert!(mixed.is_err());
    let daemon = crate::config::Flags::try_parse_from(["tcpstated", "--port", "80"]).unwrap();
    assert_eq!(daemon.command, None);
}

#[test]
fn events_print_as_a_table_or_json_lines_up_to_the_limit() {
    let stream = "event: ready\ndata: {}\n\n: keep-alive\n\n\
        event: transition\ndata: {\"time\":\"2026-12-06T07:00:01.123456789Z\",\"cookie\":7,\
        \"local_address\":\"127.0.0.1\",\"local_port\":26201,\"remote_address\":\"::1\",\
        \"remote_port\":5,\"from\":\"ESTABLISHED\",\"to\":\"FIN_WAIT1\",\"duration_ns\":1500000,\
        \"role\":\"client\",\"port\":\"other\"}\n\n\
        event: dropped\ndata: {\"dropped\":3,\"message\":\"3 transitions dropped\"}\n\n\
        event: transition\ndata: {\"cookie\":8}\n\n";
    let mut table = Printer {
        json: false,
        out: Vec::new(),
        remaining: None,
        source: String::new(),
    };
    let stopped = read_events(stream.as_bytes(), |event| table.event(event)).unwrap();
    assert!(!stopped, "the stream ended first");
    let text = String::from_utf8(table.out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], header());
    assert!(
        lines[0].starts_with("TIME (UTC)       COOKIE     LOCAL "),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("07:00:01.123456  7          127.0.0.1:26201        [::1]:5"),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains("ESTABLISHED -> FIN_WAIT1    1.500       client    other  -"),
        "{}",
        lines[1]
    );
    let mut json = Printer {
        json: true,
        out: Vec::new(),
        remaining: Some(1),
        source: String::new(),
    };
    let stopped = read_events(stream.as_bytes(), |event| json.event(event)).unwrap();
    assert!(stopped, "the limit ended it");
    let text = String::from_utf8(json.out).unwrap();
    assert_eq!(text.lines().count(), 1, "no header, one transition: {text}");
    assert!(text.starts_with("{\"time\""));
}

//! `tcpstate_sockets` equals `ss -tan`, state by state, with a socket in every state.

use std::{
    collections::BTreeMap,
    net::{Shutdown, TcpListener, TcpStream},
};

use socket2::Socket;

use crate::checks::{
    per_state_from_metrics, per_state_from_ss, relevant, shown, ss_count, until_ss,
};
use crate::support::{Netns, eventually, read_to_eof, sockets};
use crate::traffic::{
    accept, close_clients_first, connect, connect_in_background, listen, shut_down_together,
};
use crate::{WAIT, WEB_PORT, start};

#[test]
#[ignore = "needs root, ip netns and nft: see tests/scenarios/main.rs"]
fn sockets_per_state_equal_ss_in_a_quiet_namespace() {
    let ports: Vec<u16> = (25011..=25019).collect();
    let &[
        established,
        half_closed,
        orphaned,
        time_wait,
        syn_sent,
        half_open,
        last_ack,
        fin_wait1,
        closing,
    ] = ports.as_slice()
    else {
        unreachable!()
    };
    let netns = Netns::new(established);
    // The daemon's own HTTP port is in the set too, so that the scrapes' connections (which
    // come and go, and leave TIME_WAIT on the daemon's side) are labelled apart.
    let mut port_set = ports.clone();
    port_set.push(WEB_PORT);
    let daemon = start(&netns, &port_set, &[], &[]);
    let rules = netns.nft(
        "tcpstate_mix",
        &format!(
            r#"
table inet tcpstate_mix {{
    chain input {{
        type filter hook input priority 0; policy accept;
        tcp dport {syn_sent} tcp flags & (syn | ack) == syn drop
        tcp dport {half_open} tcp flags & (fin | syn | rst | ack) == ack drop
    }}
}}
"#
        ),
    );
    let mut keep: Vec<TcpStream> = Vec::new();
    let mut listeners: Vec<TcpListener> = Vec::new();
    let pair = |port: u16, listeners: &mut Vec<TcpListener>| {
        if !listeners
            .iter()
            .any(|listener| listener.local_addr().unwrap().port() == port)
        {
            listeners.push(listen(&netns, port));
        }
        let client = connect(&netns, port);
        let server = accept(listeners.last().unwrap());
        (client, server)
    };

    // ESTABLISHED, both ends.
    for _ in 0..2 {
        let (client, server) = pair(established, &mut listeners);
        keep.extend([client, server]);
    }
    // Half closed: FIN_WAIT2 (a full socket: the client still holds it) and CLOSE_WAIT.
    for _ in 0..2 {
        let (client, server) = pair(half_closed, &mut listeners);
        client.shutdown(Shutdown::Write).unwrap();
        keep.extend([client, server]);
    }
    // Orphaned: FIN_WAIT2 in a timewait socket, and CLOSE_WAIT.
    for _ in 0..2 {
        let (client, server) = pair(orphaned, &mut listeners);
        drop(client);
        keep.push(server);
    }
    // TIME_WAIT.
    let (clients, servers): (Vec<_>, Vec<_>) =
        (0..3).map(|_| pair(time_wait, &mut listeners)).unzip();
    close_clients_first(&netns, time_wait, clients, servers);
    // SYN_SENT: the SYNs are lost.
    let waiting: Vec<Socket> = (0..2)
        .map(|_| connect_in_background(&netns, syn_sent))
        .collect();
    // A request socket (NEW_SYN_RECV): the handshake's last ACK is lost; the client is
    // ESTABLISHED.
    listeners.push(listen(&netns, half_open));
    keep.push(connect(&netns, half_open));
    // LAST_ACK: the client's ACK of the server's FIN is lost (the client is in TIME_WAIT).
    // FIN_WAIT1: the client's FIN is lost (the server stays ESTABLISHED).
    let (last_ack_client, last_ack_server) = pair(last_ack, &mut listeners);
    let (fin_wait1_client, fin_wait1_server) = pair(fin_wait1, &mut listeners);
    let (closing_client, closing_server) = pair(closing, &mut listeners);
    let late_rules = netns.nft(
        "tcpstate_mix_late",
        &format!(
            r#"
table inet tcpstate_mix_late {{
    set fin_passed {{
        type inet_service
    }}
    chain input {{
        type filter hook input priority 0; policy accept;
        tcp dport {last_ack} tcp flags & (fin | syn | rst | ack) == ack drop
        tcp dport {fin_wait1} tcp flags & fin == fin drop
        tcp dport {closing} tcp sport @fin_passed drop
        tcp sport {closing} tcp sport @fin_passed drop
        tcp dport {closing} tcp flags & fin == fin add @fin_passed {{ tcp sport }} accept
        tcp sport {closing} tcp flags & fin == fin add @fin_passed {{ tcp sport }} accept
        tcp dport {closing} drop
        tcp sport {closing} drop
    }}
}}
"#
        ),
    );
    last_ack_client.shutdown(Shutdown::Write).unwrap();
    fin_wait1_client.shutdown(Shutdown::Write).unwrap();
    let mut last_ack_server = last_ack_server;
    read_to_eof(&mut last_ack_server, WAIT);
    drop(last_ack_server);
    // CLOSING: the FINs cross, then every later segment of that connection is lost: neither
    // side learns that its FIN arrived (first FIN from each side passes, nothing after).
    let throttle = shut_down_together(&netns, &closing_client, &closing_server);
    until_ss(&netns, WAIT, "CLOSING on both sides", |listed| {
        ss_count(listed, "CLOSING", closing) == 2
    });
    drop(throttle);

    let listed = netns.sockets();
    assert!(
        listed
            .iter()
            .all(|socket| socket.has_port(WEB_PORT)
                || ports.iter().any(|&port| socket.has_port(port))),
        "the namespace holds only this test's sockets:\n{}",
        shown(&listed)
    );
    let made = per_state_from_ss(&listed, &ports);
    assert_eq!(
        made,
        BTreeMap::from([
            ("LISTEN", 8),
            ("SYN_SENT", 2),
            ("SYN_RECV", 1),
            ("ESTABLISHED", 6),
            ("FIN_WAIT1", 1),
            ("FIN_WAIT2", 4),
            ("CLOSE_WAIT", 4),
            ("CLOSING", 2),
            ("LAST_ACK", 1),
            ("TIME_WAIT", 4),
        ]),
        "the sockets this test made, as ss lists them:\n{}",
        shown(&listed)
    );

    let mut listed = netns.sockets();
    let mut metrics = daemon.scrape();
    eventually(WAIT, || {
        metrics = daemon.scrape();
        listed = netns.sockets();
        per_state_from_metrics(&metrics, &ports) == per_state_from_ss(&listed, &ports)
    });
    assert_eq!(
        per_state_from_metrics(&metrics, &ports),
        per_state_from_ss(&listed, &ports),
        "tcpstate_sockets (left) and ss -tan (right) per state\n{}",
        relevant(&metrics)
    );
    assert_eq!(
        sockets(&metrics, "SYN_RECV", half_open, "")
            + sockets(&metrics, "NEW_SYN_RECV", half_open, ""),
        1.0
    );
    assert_eq!(
        sockets(&metrics, "NEW_SYN_RECV", half_open, ""),
        1.0,
        "the request socket is NEW_SYN_RECV"
    );
    drop((waiting, keep, listeners));
    drop((last_ack_client, fin_wait1_client, fin_wait1_server));
    drop((closing_client, closing_server));
    drop((rules, late_rules));
}

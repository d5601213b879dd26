//! Every network namespace of the host (issue 32, part 1). Unlike the other scenarios, the
//! daemon runs in the host's namespace, as the DaemonSet does, and covers every namespace
//! (the default `--sockdiag.namespaces=all`); the traffic runs in namespaces of the test's own,
//! each on ports of its own (26001-26099), so that each one's figures can be told apart and
//! compared with `ss` and the netstat counters read inside it. Polls walk every socket of the
//! host once per namespace listed whole, so on a busy shared host they come seconds apart:
//! the waits are longer than the other scenarios'.

use std::{
    collections::BTreeMap,
    net::{TcpListener, TcpStream},
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};

use crate::WAIT;
use crate::checks::{per_state_from_metrics, per_state_from_ss, ss_count, until_ss};
use crate::support::{Daemon, Exposition, Netns, NftTable, eventually, joined};
use crate::traffic::{accept, at, close_clients_first, connect, connect_in_background, listen};

/// Bound of a wait for every namespace's figures: a few polls on a busy host.
pub const NAMESPACE_WAIT: Duration = Duration::from_secs(40);

/// A namespace of the test's and its ports: `base` holds sockets older than the daemon (a
/// listener and its connections), `base + 1` TIME_WAIT, `base + 2` request sockets (the
/// handshake's final ACK dropped), `base + 3` an accept queue nobody accepts from, `base + 4`
/// an accept queue that overflows.
pub struct Space {
    pub netns: Netns,
    pub base: u16,
}

impl Space {
    pub fn new(base: u16) -> Space {
        Space {
            netns: Netns::new(base),
            base,
        }
    }

    pub fn ports(&self) -> Vec<u16> {
        ports_of(self.base)
    }

    /// `n` connections to a listener on `base`, made now: returns them with the listener.
    pub fn old_connections(&self, n: usize) -> (TcpListener, Vec<TcpStream>) {
        let listener = listen(&self.netns, self.base);
        let mut streams = Vec::new();
        for _ in 0..n {
            streams.push(connect(&self.netns, self.base));
            streams.push(accept(&listener));
        }
        (listener, streams)
    }

    /// `n` connections to `base + 1` closed by their clients: the clients' sockets wait in
    /// TIME_WAIT for 60 s.
    pub fn time_wait(&self, n: usize) {
        let port = self.base + 1;
        let listener = listen(&self.netns, port);
        let (clients, servers): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| {
                let client = connect(&self.netns, port);
                (client, accept(&listener))
            })
            .unzip();
        close_clients_first(&self.netns, port, clients, servers);
    }

    /// Drops the handshakes' final ACKs to `base + 2`: its connects leave request sockets.
    pub fn drop_final_acks(&self) -> NftTable<'_> {
        let port = self.base + 2;
        self.netns.nft(
            "tcpstate_namespaces",
            &format!(
                "table inet tcpstate_namespaces {{
                    chain input {{
                        type filter hook input priority 0; policy accept;
                        tcp dport {port} tcp flags & (fin | syn | rst | ack) == ack drop
                    }}
                }}"
            ),
        )
    }

    /// `n` connects to a listener on `base + 2` whose final ACKs are dropped: the clients are
    /// ESTABLISHED, the listener holds `n` request sockets.
    pub fn requests(&self, n: usize) -> (TcpListener, Vec<TcpStream>) {
        let listener = listen(&self.netns, self.base + 2);
        let clients = (0..n)
            .map(|_| connect(&self.netns, self.base + 2))
            .collect();
        (listener, clients)
    }

    /// `n` connections waiting in the accept queue of a listener on `base + 3`.
    pub fn queued(&self, n: usize) -> (TcpListener, Vec<TcpStream>) {
        let listener = listen(&self.netns, self.base + 3);
        let clients = (0..n)
            .map(|_| connect(&self.netns, self.base + 3))
            .collect();
        let port = self.base + 3;
        until_ss(&self.netns, WAIT, "the accept queue", |listed| {
            listed
                .iter()
                .any(|s| s.state == "LISTEN" && s.local_port == port && s.recv_q == n as u64)
        });
        (listener, clients)
    }

    /// A listener on `base + 4` with a backlog of 1 and two connections waiting: connects
    /// beyond find the queue full (`ListenOverflows`), until given up.
    pub fn overflow(&self) -> (Socket, Vec<TcpStream>) {
        let port = self.base + 4;
        let listener = self.netns.run(|| {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
            socket.bind(&at(port).into()).unwrap();
            socket.listen(1).unwrap();
            socket
        });
        let queued: Vec<TcpStream> = (0..2).map(|_| connect(&self.netns, port)).collect();
        let before = self.netns.tcp_ext("ListenOverflows");
        let waiting: Vec<Socket> = (0..2)
            .map(|_| connect_in_background(&self.netns, port))
            .collect();
        assert!(
            eventually(WAIT, || self.netns.tcp_ext("ListenOverflows") >= before + 2),
            "connects beyond the full queue counted in ListenOverflows"
        );
        drop(waiting);
        until_ss(
            &self.netns,
            WAIT,
            "the waiting connects given up",
            |listed| ss_count(listed, "SYN-SENT", port) == 0,
        );
        (listener, queued)
    }

    /// Where the daemon's figures for this namespace's ports differ from `ss` run inside it:
    /// sockets per state, and the listeners' queues and limits. Empty when they agree.
    pub fn differences(&self, metrics: &Exposition) -> String {
        let ports = self.ports();
        let listed = self.netns.sockets();
        let (scraped, shown) = (
            per_state_from_metrics(metrics, &ports),
            per_state_from_ss(&listed, &ports),
        );
        let mut differences = String::new();
        if scraped != shown {
            differences += &format!(
                "{}: sockets per state {scraped:?}, ss {shown:?}\n",
                self.netns.name()
            );
        }
        for port in ports {
            let label = port.to_string();
            let listeners = listed
                .iter()
                .filter(|s| s.state == "LISTEN" && s.local_port == port);
            let (length, limit) = listeners.fold((0, 0), |(length, limit), s| {
                (length + s.recv_q, limit + s.send_q)
            });
            let queue = |name| metrics.sum(name, &[("port", &label)]) as u64;
            let scraped = (
                queue("tcpstate_listen_queue_length"),
                queue("tcpstate_listen_queue_limit"),
            );
            if scraped != (length, limit) {
                differences += &format!(
                    "{}: port {port} accept queue and limit {scraped:?}, ss {:?}\n",
                    self.netns.name(),
                    (length, limit)
                );
            }
        }
        differences
    }
}

/// The ports of the space at `base`.
pub fn ports_of(base: u16) -> Vec<u16> {
    (base..base + 5).collect()
}

/// tcpstated in the test's (the host's) namespace, exporting the ports of the spaces at
/// `bases` by number, polling as often as its polls' cost allows.
pub fn host_daemon(bases: &[u16]) -> Daemon {
    Daemon::start(&host_daemon_args(bases).each_ref().map(String::as_str))
}

/// [`host_daemon`]'s flags.
pub fn host_daemon_args(bases: &[u16]) -> [String; 2] {
    let ports: Vec<u16> = bases.iter().flat_map(|base| ports_of(*base)).collect();
    [
        format!("--port={}", joined(&ports)),
        "--sockdiag.min-interval=0.2".to_owned(),
    ]
}

/// Scrapes until every space's figures equal `ss` in it (see [`Space::differences`]), for at
/// most `limit`; asserts it and returns the last scrape.
pub fn until_equal_to_ss(daemon: &Daemon, spaces: &[&Space], limit: Duration) -> Exposition {
    let mut last = daemon.scrape();
    let mut differences = String::new();
    eventually(limit, || {
        last = daemon.scrape();
        differences = spaces
            .iter()
            .map(|space| space.differences(&last))
            .collect();
        differences.is_empty()
    });
    assert!(
        differences.is_empty(),
        "each namespace's figures equal ss run inside it:\n{differences}"
    );
    last
}

/// `TcpExt` counters of each space.
fn counters(spaces: &[&Space], name: &str) -> BTreeMap<String, u64> {
    spaces
        .iter()
        .map(|space| (space.netns.name().to_owned(), space.netns.tcp_ext(name)))
        .collect()
}

#[test]
#[ignore = "needs root, ip netns and nft: see tests/scenarios/main.rs"]
fn every_namespaces_sockets_queues_and_overflows_equal_ss_and_its_counters() {
    let bases = [26010, 26020, 26030];
    let spaces: Vec<Space> = bases.map(Space::new).into();
    let all: Vec<&Space> = spaces.iter().collect();
    // Older than the daemon: 1, 2 and 3 connections to a listener in each.
    let old: Vec<_> = spaces
        .iter()
        .enumerate()
        .map(|(i, space)| space.old_connections(i + 1))
        .collect();
    let daemon = host_daemon(&bases);
    let rules: Vec<NftTable> = spaces.iter().map(Space::drop_final_acks).collect();
    // A first poll of every namespace (started at start-up) has ended: its counters are in.
    assert!(eventually(NAMESPACE_WAIT, || daemon
        .scrape()
        .sum_if_any("tcpstate_poll_duration_seconds", &[])
        .is_some()));
    let (overflows_before, drops_before) = (
        counters(&all, "ListenOverflows"),
        counters(&all, "ListenDrops"),
    );
    let before = daemon.scrape();

    // Different numbers in each namespace, so that none can pass for another.
    let mut keep = Vec::new();
    for (i, space) in spaces.iter().enumerate() {
        space.time_wait(i + 2);
        keep.push(space.requests(i + 1));
        keep.push(space.queued(i + 2));
    }
    let overflowing = spaces[1].overflow();

    let after = until_equal_to_ss(&daemon, &all, NAMESPACE_WAIT);
    let grown = |after_map: BTreeMap<String, u64>, before_map: &BTreeMap<String, u64>| -> u64 {
        after_map
            .iter()
            .map(|(name, count)| count - before_map[name])
            .sum()
    };
    let overflows = grown(counters(&all, "ListenOverflows"), &overflows_before);
    let drops = grown(counters(&all, "ListenDrops"), &drops_before);
    assert!(overflows >= 2, "the test overflowed a queue: {overflows}");
    let scraped = |name| after.delta(&before, name, &[]) as u64;
    // The daemon sums every namespace's counters; only the test's grew meanwhile (another
    // namespace of the host that overflows now would show here).
    let settled = eventually(NAMESPACE_WAIT, || {
        let now = daemon.scrape();
        now.delta(&before, "tcpstate_listen_overflows_total", &[]) as u64 == overflows
            && now.delta(&before, "tcpstate_listen_drops_total", &[]) as u64 == drops
    });
    assert!(
        settled,
        "tcpstate_listen_overflows_total and _drops_total grew by {} and {}; the namespaces' \
         ListenOverflows and ListenDrops by {overflows} and {drops}",
        scraped("tcpstate_listen_overflows_total"),
        scraped("tcpstate_listen_drops_total"),
    );
    drop((keep, overflowing, rules, old));
}

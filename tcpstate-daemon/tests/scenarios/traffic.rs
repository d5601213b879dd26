//! Traffic inside a test's namespace: listeners, connects (blocking, in the background, from
//! fixed ports), accepts that cannot hang, clients that close first, FINs that cross.

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Instant,
};

use socket2::{Domain, Protocol, Socket, Type};

use crate::WAIT;
use crate::checks::{ss_count, until_ss};
use crate::support::{Netns, NftTable, eventually, read_to_eof};

pub fn at(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

pub fn listen(netns: &Netns, port: u16) -> TcpListener {
    netns
        .run(|| TcpListener::bind(at(port)))
        .expect("bind the test port")
}

pub fn connect(netns: &Netns, port: u16) -> TcpStream {
    netns.run(|| TcpStream::connect(at(port))).expect("connect")
}

/// A connect that does not wait: the socket stays in SYN_SENT while its SYNs go unanswered.
pub fn connect_in_background(netns: &Netns, port: u16) -> Socket {
    netns.run(|| {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        socket.set_nonblocking(true).unwrap();
        match socket.connect(&at(port).into()) {
            Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => socket,
            other => panic!("non-blocking connect: {other:?}"),
        }
    })
}

/// Drops every bare ACK to `port` in `netns` (nftables table `table`, removed with the
/// returned guard): the handshake's last segment, and the client's answers to retransmitted
/// SYN-ACKs. The client, which got the SYN-ACK, is ESTABLISHED; the server keeps a request
/// socket (NEW_SYN_RECV) and retransmits the SYN-ACK from 1 s after the SYN on.
pub fn drop_bare_acks<'a>(netns: &'a Netns, table: &str, port: u16) -> NftTable<'a> {
    netns.nft(
        table,
        &format!(
            r#"
    table inet {table} {{
        chain input {{
            type filter hook input priority 0; policy accept;
            tcp dport {port} tcp flags & (fin | syn | rst | ack) == ack counter drop comment "bare ACK"
        }}
    }}
    "#
        ),
    )
}

/// Accepts one connection, waiting at most `WAIT` (a lost handshake must fail the test, not
/// hang it).
pub fn accept(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let mut accepted = None;
    eventually(WAIT, || match listener.accept() {
        Ok((stream, _)) => {
            accepted = Some(stream);
            true
        }
        Err(error) if error.kind() == ErrorKind::WouldBlock => false,
        Err(error) => panic!("accept: {error}"),
    });
    let stream = accepted.expect("a connection to accept within the wait");
    stream.set_nonblocking(false).unwrap();
    stream
}

/// Client-closed connections from fixed client ports (SO_REUSEADDR, so that a later connect
/// can reuse them): returns the streams, still open.
pub fn connect_from(netns: &Netns, ports: &[u16], to: u16) -> Vec<TcpStream> {
    ports
        .iter()
        .map(|&from| {
            netns.run(|| {
                let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
                socket.set_reuse_address(true).unwrap();
                socket.bind(&at(from).into()).unwrap();
                socket.connect(&at(to).into()).unwrap();
                TcpStream::from(socket)
            })
        })
        .collect()
}

/// The client closes first and waits in FIN_WAIT2 until the server closes: the client's side
/// ends in TIME_WAIT. Waits (ss) for each step, so that every client leaves FIN_WAIT1 for
/// FIN_WAIT2 (not straight to TIME_WAIT on a FIN that carries the ACK): exact counts. Returns
/// when the servers' close began and ended: the clients entered TIME_WAIT in between.
pub fn close_clients_first(
    netns: &Netns,
    port: u16,
    clients: Vec<TcpStream>,
    mut servers: Vec<TcpStream>,
) -> (Instant, Instant) {
    let n = clients.len();
    for client in &clients {
        client.shutdown(Shutdown::Write).unwrap();
    }
    until_ss(netns, WAIT, "clients in FIN_WAIT2", |listed| {
        ss_count(listed, "FIN-WAIT-2", port) == n && ss_count(listed, "CLOSE-WAIT", port) == n
    });
    for server in &mut servers {
        read_to_eof(server, WAIT);
    }
    let closing = Instant::now();
    drop(servers);
    let closed = Instant::now();
    until_ss(netns, WAIT, "clients in TIME_WAIT", |listed| {
        ss_count(listed, "TIME-WAIT", port) == n
    });
    drop(clients);
    (closing, closed)
}

/// Shuts both ends of a loopback connection down for writing so that their FINs cross, as in
/// a simultaneous close on a long path: a token bucket on the namespace's loopback, emptied by
/// one datagram first, holds each segment about 26 ms (66 bytes at 20 kbit/s), so each side's
/// FIN leaves before the other's arrives. Timers cannot do this reliably: the two sides' RTOs
/// differ by a jiffy when their RTT samples do, and their retransmissions drift apart. The
/// returned guard removes the bucket (remove it before scraping: it slows every segment).
pub fn shut_down_together<'a>(
    netns: &'a Netns,
    one: &TcpStream,
    other: &TcpStream,
) -> Throttle<'a> {
    netns.exec(
        "tc",
        &[
            "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "20kbit", "burst", "100", "limit",
            "10000",
        ],
    );
    let throttle = Throttle(netns);
    netns
        .run(|| {
            UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?
                .send_to(&[0; 50], (Ipv4Addr::LOCALHOST, 25097))
        })
        .expect("send the datagram that empties the bucket");
    one.shutdown(Shutdown::Write).unwrap();
    other.shutdown(Shutdown::Write).unwrap();
    throttle
}

/// The token bucket of [`shut_down_together`], removed when dropped.
pub struct Throttle<'a>(&'a Netns);

impl Drop for Throttle<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .command("tc")
            .args(["qdisc", "del", "dev", "lo", "root"])
            .status();
    }
}

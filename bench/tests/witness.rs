//! The benchmark's witness programs, checked against the tracepoint on a real connection. It
//! needs root: `cargo xtask test` runs it (`--ignored`).

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

const WAIT: Duration = Duration::from_secs(5);

/// A loopback connection whose client shuts down first: every transition of a connection's
/// life but TIME_WAIT's end, on both sides, and the listener's own.
fn client_closes_first() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"ping").unwrap();
    server.read_exact(&mut [0u8; 4]).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    read_to_eof(&mut server); // server now in CLOSE_WAIT, client in FIN_WAIT2
    drop(server); // CLOSE_WAIT -> LAST_ACK; the client's FIN_WAIT2 ends
    read_to_eof(&mut client);
    drop((client, listener));
}

fn read_to_eof(stream: &mut TcpStream) {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .read_to_end(&mut Vec::new())
        .expect("the peer closes");
}

/// The benchmark's witness (`cargo xtask bench witness`): its sock_ops program attaches to the
/// cgroup v2 root and hears `tcp_set_state()` announce each transition of a real connection
/// that the tracepoint program also counts; the three births come through the tracepoint only.
#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn witness_hears_each_state_change_through_the_tracepoint_and_sock_ops() {
    let mut witness = Command::new(env!("CARGO_BIN_EXE_tcpstate-witness"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("tcpstate-witness starts");
    let mut stdout = std::io::BufReader::new(witness.stdout.take().unwrap());
    let mut attached = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut attached).unwrap();
    assert!(attached.starts_with("attached tracepoint="), "{attached}");

    client_closes_first();
    // The client's FIN_WAIT2 -> CLOSE comes with the server's last ACK, in a softirq.
    thread::sleep(Duration::from_millis(200));
    let status = Command::new("kill")
        .args(["-TERM", &witness.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut output = String::new();
    stdout.read_to_string(&mut output).unwrap();
    assert!(witness.wait().unwrap().success(), "{output}");

    // Other sockets of the host may add to either count: at least this connection's.
    let counts = |transition: &str| -> (u64, u64) {
        let line = output
            .lines()
            .find(|line| line.starts_with(&format!("transition={transition} ")))
            .unwrap_or_else(|| panic!("no {transition} in:\n{output}"));
        let field = |name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix(&format!("{name}=")))
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("no {name} count in {line}"))
        };
        (field("tracepoint"), field("sock_ops"))
    };
    for transition in [
        "SYN_SENT->ESTABLISHED",
        "SYN_RECV->ESTABLISHED",
        "ESTABLISHED->FIN_WAIT1",
        "FIN_WAIT1->FIN_WAIT2",
        "FIN_WAIT2->CLOSE",
        "ESTABLISHED->CLOSE_WAIT",
        "CLOSE_WAIT->LAST_ACK",
        "LAST_ACK->CLOSE",
        "LISTEN->CLOSE",
    ] {
        let (tracepoint, sock_ops) = counts(transition);
        assert!(tracepoint >= 1 && sock_ops >= 1, "{transition}:\n{output}");
    }
    for birth in ["CLOSE->SYN_SENT", "CLOSE->LISTEN", "LISTEN->SYN_RECV"] {
        let (tracepoint, sock_ops) = counts(birth);
        assert!(tracepoint >= 1 && sock_ops == 0, "{birth}:\n{output}");
    }
}

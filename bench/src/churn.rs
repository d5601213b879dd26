//! The connection-churn load generator: loopback listeners and client threads that connect,
//! optionally exchange a few bytes, and close, for a fixed time.
//!
//! Run by the benchmark as a subprocess (`tcpstate-bench churn ...`, its own release binary) so
//! that its CPU, file descriptors and sockets are its own, and usable alone:
//! `cargo xtask bench churn --port 28080 --seconds 5 --mode abort`. It prints its report as
//! `key=value` lines on stdout.
//!
//! Ephemeral ports: every client connects from 127.0.0.1 to one of several listener addresses
//! (127.0.0.1, 127.0.0.2, ...), all on the same port so one `--port` labels them. Each listener
//! address is a separate 4-tuple space of ~28k source ports, so the TIME_WAIT sockets that
//! client-first close leaves behind (at most `net.ipv4.tcp_max_tw_buckets`, 131072 by default)
//! never fill it, while connect()'s ordinary port choice (and its TIME_WAIT reuse on loopback)
//! stays the path measured.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use socket2::{Domain, SockRef, Socket, Type};

/// How a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CloseMode {
    /// The client closes first (the client side goes through FIN_WAIT and TIME_WAIT).
    #[default]
    ClientFirst,
    /// The server closes first, the client closes on end of file.
    ServerFirst,
    /// The client aborts with SO_LINGER 0: RST, both sides ESTABLISHED -> CLOSE.
    Abort,
}

impl CloseMode {
    pub fn name(self) -> &'static str {
        match self {
            CloseMode::ClientFirst => "client-first",
            CloseMode::ServerFirst => "server-first",
            CloseMode::Abort => "abort",
        }
    }

    fn from_name(name: &str) -> Option<CloseMode> {
        [
            CloseMode::ClientFirst,
            CloseMode::ServerFirst,
            CloseMode::Abort,
        ]
        .into_iter()
        .find(|mode| mode.name() == name)
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct ChurnArgs {
    /// Port of every listener (pass it to tcpstated's --port to see the churn by number).
    #[arg(long)]
    pub port: u16,
    /// Listener addresses 127.0.0.1 .. 127.0.0.<N>, one server thread each.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub addresses: u8,
    /// Client threads, each running one connection at a time.
    #[arg(long, default_value_t = 2)]
    pub clients: usize,
    /// How long the clients open connections.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Who closes, and how.
    #[arg(long, value_enum, default_value_t = CloseMode::ClientFirst)]
    pub mode: CloseMode,
    /// Bytes the client sends and the server echoes before the close (0: none).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=4096))]
    pub exchange: u16,
    /// Upper bound on connections per client thread, whatever the time.
    #[arg(long, default_value_t = 100_000_000)]
    pub max_connections: u64,
}

/// What a churn run did: the benchmark derives the transitions it must have produced from it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChurnReport {
    pub mode: CloseMode,
    /// Listening sockets opened and closed.
    pub listeners: u64,
    /// Connections the clients completed (connected, exchanged, closed).
    pub connections: u64,
    /// Connections the servers accepted and closed.
    pub accepted: u64,
    /// connect() calls that failed (each still went CLOSE -> SYN_SENT -> CLOSE).
    pub connect_errors: u64,
    /// Failures after the connect (exchange or close): make the run's transitions unpredictable.
    pub other_errors: u64,
    /// From the start of the clients to the end of the last one.
    pub seconds: f64,
    /// Error kinds and how often, for diagnosis (`kind:count,...`).
    pub error_kinds: String,
}

impl ChurnReport {
    pub fn connections_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.connections as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// The report as `key=value` lines (what the subprocess prints).
    pub fn to_lines(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "mode={}", self.mode.name());
        let _ = writeln!(text, "listeners={}", self.listeners);
        let _ = writeln!(text, "connections={}", self.connections);
        let _ = writeln!(text, "accepted={}", self.accepted);
        let _ = writeln!(text, "connect_errors={}", self.connect_errors);
        let _ = writeln!(text, "other_errors={}", self.other_errors);
        let _ = writeln!(text, "seconds={:.6}", self.seconds);
        let _ = writeln!(text, "error_kinds={}", self.error_kinds);
        let _ = writeln!(
            text,
            "connections_per_second={:.0}",
            self.connections_per_second()
        );
        text
    }

    /// Reads [`Self::to_lines`] back; lines without `=` (or unknown keys) are ignored.
    pub fn parse(text: &str) -> anyhow::Result<ChurnReport> {
        let fields: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .collect();
        let field = |key: &str| {
            fields
                .get(key)
                .copied()
                .with_context(|| format!("the churn report has no `{key}=` line:\n{text}"))
        };
        let number = |key: &str| -> anyhow::Result<u64> {
            field(key)?
                .parse()
                .with_context(|| format!("`{key}=` is not a whole number in the churn report"))
        };
        let mode = field("mode")?;
        Ok(ChurnReport {
            mode: CloseMode::from_name(mode)
                .with_context(|| format!("unknown close mode `{mode}` in the churn report"))?,
            listeners: number("listeners")?,
            connections: number("connections")?,
            accepted: number("accepted")?,
            connect_errors: number("connect_errors")?,
            other_errors: number("other_errors")?,
            seconds: field("seconds")?
                .parse()
                .context("`seconds=` is not a number in the churn report")?,
            error_kinds: fields.get("error_kinds").copied().unwrap_or("").to_owned(),
        })
    }
}

/// The i-th listener address (i from 0): 127.0.0.1, 127.0.0.2, ...
pub fn listener_address(index: u8, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1 + index), port))
}

/// Connections accepted but not yet closed by the servers, at most: keeps every accept queue
/// far below its backlog, so a slow server thread never makes the kernel drop SYNs (a dropped
/// SYN stalls a client for the 1 s retransmission timeout).
const IN_FLIGHT_LIMIT: i64 = 1024;
const BACKLOG: i32 = 4096;
/// How long a server waits in accept() or read() before it looks at the clock and the stop flag.
const SERVER_POLL: Duration = Duration::from_millis(50);
/// Beyond the run's time: how long the last connections may take before the run is abandoned.
const GRACE: Duration = Duration::from_secs(20);

struct Shared {
    in_flight: AtomicI64,
    clients_done: AtomicBool,
    /// Nothing waits past this; the watchdog exits the process.
    hard_deadline: Instant,
}

#[derive(Default)]
struct Tally {
    connections: u64,
    connect_errors: u64,
    other_errors: u64,
    error_kinds: BTreeMap<String, u64>,
    finished_at: Option<Instant>,
}

impl Tally {
    fn error(&mut self, stage: &str, error: &io::Error) {
        *self
            .error_kinds
            .entry(format!("{stage}:{:?}", error.kind()))
            .or_default() += 1;
    }
}

pub fn main(args: &ChurnArgs) -> anyhow::Result<()> {
    let report = run(args)?;
    print!("{}", report.to_lines());
    io::stdout().flush()?;
    Ok(())
}

pub fn run(args: &ChurnArgs) -> anyhow::Result<ChurnReport> {
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        bail!("--seconds must be in (0, 3600]");
    }
    if args.clients == 0 || args.clients > 256 {
        bail!("--clients must be in 1..=256");
    }
    let duration = Duration::from_secs_f64(args.seconds);
    let listeners = (0..args.addresses)
        .map(|index| listen(listener_address(index, args.port)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let targets: Vec<SocketAddr> = (0..args.addresses)
        .map(|index| listener_address(index, args.port))
        .collect();

    let shared = Arc::new(Shared {
        in_flight: AtomicI64::new(0),
        clients_done: AtomicBool::new(false),
        hard_deadline: Instant::now() + duration + GRACE,
    });
    let start_line = Arc::new(Barrier::new(args.clients + 1));
    let servers: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            let shared = shared.clone();
            let (mode, exchange) = (args.mode, usize::from(args.exchange));
            thread::spawn(move || serve(listener, mode, exchange, &shared))
        })
        .collect();
    let clients: Vec<_> = (0..args.clients)
        .map(|index| {
            let (shared, start_line, targets) =
                (shared.clone(), start_line.clone(), targets.clone());
            let (mode, exchange, max) =
                (args.mode, usize::from(args.exchange), args.max_connections);
            thread::spawn(move || {
                start_line.wait();
                let deadline = Instant::now() + duration;
                churn(index, &targets, mode, exchange, deadline, max, &shared)
            })
        })
        .collect();
    start_line.wait();
    let started = Instant::now();

    let clients = join_all(clients, shared.hard_deadline)?;
    shared.clients_done.store(true, Ordering::SeqCst);
    let servers = join_all(servers, shared.hard_deadline)?;

    let mut report = ChurnReport {
        mode: args.mode,
        listeners: u64::from(args.addresses),
        ..ChurnReport::default()
    };
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut finished = started;
    for tally in clients.iter().chain(&servers) {
        report.connect_errors += tally.connect_errors;
        report.other_errors += tally.other_errors;
        for (kind, count) in &tally.error_kinds {
            *kinds.entry(kind.clone()).or_default() += count;
        }
    }
    for tally in &clients {
        report.connections += tally.connections;
        finished = finished.max(tally.finished_at.unwrap_or(started));
    }
    report.accepted = servers.iter().map(|tally| tally.connections).sum();
    report.seconds = (finished - started).as_secs_f64();
    report.error_kinds = kinds
        .iter()
        .map(|(kind, count)| format!("{kind}:{count}"))
        .collect::<Vec<_>>()
        .join(",");
    Ok(report)
}

fn listen(address: SocketAddr) -> anyhow::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into()).with_context(|| {
        format!("cannot listen on {address}: the port is taken; choose another with --port")
    })?;
    socket.listen(BACKLOG)?;
    // accept() honours SO_RCVTIMEO, and accepted sockets inherit it (the child is a copy of the
    // listener): every blocking call of a server thread wakes up to look at the clock.
    socket.set_read_timeout(Some(SERVER_POLL))?;
    Ok(socket)
}

/// Waits for every thread, but not past `hard_deadline`: a thread stuck in a blocking call
/// (a peer that never answers) ends the process instead of hanging the benchmark.
fn join_all(
    handles: Vec<thread::JoinHandle<Tally>>,
    hard_deadline: Instant,
) -> anyhow::Result<Vec<Tally>> {
    while !handles.iter().all(|handle| handle.is_finished()) {
        if Instant::now() > hard_deadline {
            eprintln!(
                "churn: connections still open {} s after the run's end; giving up",
                GRACE.as_secs()
            );
            std::process::exit(3);
        }
        thread::sleep(Duration::from_millis(10));
    }
    handles
        .into_iter()
        .map(|handle| {
            handle
                .join()
                .map_err(|_| anyhow::anyhow!("a churn thread panicked"))
        })
        .collect()
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// One client thread: connections one after the other until `deadline` (or `max`).
fn churn(
    index: usize,
    targets: &[SocketAddr],
    mode: CloseMode,
    exchange: usize,
    deadline: Instant,
    max: u64,
    shared: &Shared,
) -> Tally {
    let payload = vec![b'x'; exchange];
    let mut reply = vec![0; exchange];
    let mut tally = Tally::default();
    let mut attempt = index;
    while tally.connections + tally.connect_errors < max && Instant::now() < deadline {
        while shared.in_flight.load(Ordering::Relaxed) >= IN_FLIGHT_LIMIT
            && Instant::now() < shared.hard_deadline
        {
            thread::sleep(Duration::from_micros(20));
        }
        let target = targets[attempt % targets.len()];
        attempt += 1;
        let mut stream = match TcpStream::connect(target) {
            Ok(stream) => stream,
            Err(error) => {
                tally.connect_errors += 1;
                tally.error("connect", &error);
                continue;
            }
        };
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        match client_exchange(&mut stream, mode, &payload, &mut reply) {
            Ok(()) => tally.connections += 1,
            Err(error) => {
                tally.other_errors += 1;
                tally.error("client", &error);
            }
        }
        drop(stream);
    }
    tally.finished_at = Some(Instant::now());
    tally
}

fn client_exchange(
    stream: &mut TcpStream,
    mode: CloseMode,
    payload: &[u8],
    reply: &mut [u8],
) -> io::Result<()> {
    if !payload.is_empty() {
        stream.write_all(payload)?;
        stream.read_exact(reply)?;
    }
    match mode {
        CloseMode::ClientFirst => Ok(()),
        CloseMode::ServerFirst => {
            let mut byte = [0; 1];
            match stream.read(&mut byte)? {
                0 => Ok(()),
                _ => Err(io::Error::other("the server sent more than the echo")),
            }
        }
        // The close that follows sends RST instead of FIN.
        CloseMode::Abort => SockRef::from(&*stream).set_linger(Some(Duration::ZERO)),
    }
}

/// One server thread on one listener: accept, serve, close, until the clients are done and the
/// accept queue stays empty for one poll interval.
fn serve(listener: Socket, mode: CloseMode, exchange: usize, shared: &Shared) -> Tally {
    let mut buffer = vec![0; exchange.max(64)];
    let mut tally = Tally::default();
    while Instant::now() < shared.hard_deadline {
        let socket = match listener.accept() {
            Ok((socket, _)) => socket,
            Err(error) if is_timeout(&error) => {
                if shared.clients_done.load(Ordering::SeqCst) {
                    break;
                }
                continue;
            }
            Err(error) => {
                tally.other_errors += 1;
                tally.error("accept", &error);
                continue;
            }
        };
        let mut stream = TcpStream::from(socket);
        match server_exchange(
            &mut stream,
            mode,
            exchange,
            &mut buffer,
            shared.hard_deadline,
        ) {
            Ok(()) => tally.connections += 1,
            Err(error) => {
                tally.other_errors += 1;
                tally.error("server", &error);
            }
        }
        drop(stream);
        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
    tally
}

fn server_exchange(
    stream: &mut TcpStream,
    mode: CloseMode,
    exchange: usize,
    buffer: &mut [u8],
    hard_deadline: Instant,
) -> io::Result<()> {
    if exchange > 0 {
        let mut received = 0;
        while received < exchange {
            match stream.read(&mut buffer[received..exchange]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(count) => received += count,
                Err(error) if is_timeout(&error) && Instant::now() < hard_deadline => {}
                Err(error) => return Err(error),
            }
        }
        stream.write_all(&buffer[..exchange])?;
    }
    match mode {
        // Closing right away: FIN first (nothing unread is left, so no RST).
        CloseMode::ServerFirst => Ok(()),
        // Wait for the client's FIN (or RST) before closing.
        CloseMode::ClientFirst | CloseMode::Abort => loop {
            match stream.read(buffer) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(io::Error::other("the client sent more than the exchange")),
                Err(error)
                    if mode == CloseMode::Abort
                        && error.kind() == io::ErrorKind::ConnectionReset =>
                {
                    return Ok(());
                }
                Err(error) if is_timeout(&error) && Instant::now() < hard_deadline => {}
                Err(error) => return Err(error),
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_reads_back_what_it_printed() {
        let report = ChurnReport {
            mode: CloseMode::ServerFirst,
            listeners: 8,
            connections: 812_345,
            accepted: 812_345,
            connect_errors: 2,
            other_errors: 0,
            seconds: 10.000_25,
            error_kinds: "connect:AddrNotAvailable:2".into(),
        };
        let text = report.to_lines();
        assert!(text.contains("connections_per_second=81232\n"), "{text}");
        assert_eq!(ChurnReport::parse(&text).unwrap(), report);
    }

    #[test]
    fn a_report_missing_a_field_says_which() {
        let error = ChurnReport::parse("mode=abort\nlisteners=1\n").unwrap_err();
        assert!(format!("{error:#}").contains("`connections=`"), "{error:#}");
    }

    #[test]
    fn listener_addresses_count_up_from_127_0_0_1() {
        assert_eq!(listener_address(0, 80).to_string(), "127.0.0.1:80");
        assert_eq!(listener_address(7, 80).to_string(), "127.0.0.8:80");
    }
}

//! What the kernel tests share: a real `tcpstated` started on a free address, scraping its real
//! `/metrics`, and reading the exposition back into numbers.
#![allow(dead_code, reason = "each test binary uses a different part")]

use tcpstate_common::SocketRecord;

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    panic::{self, AssertUnwindSafe},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// A running daemon, stopped (SIGTERM) when dropped.
pub struct Daemon {
    child: Child,
    pub address: SocketAddr,
    /// The network namespace the daemon runs in (`None`: the test's own).
    netns: Option<String>,
}

impl Daemon {
    /// Starts tcpstated with `args` on a free loopback port and waits (bounded) until it is
    /// healthy.
    pub fn start(args: &[&str]) -> Daemon {
        let address = free_local_address();
        let child = Daemon::spawn(Command::new(env!("CARGO_BIN_EXE_tcpstated")), address, args);
        Daemon::until_healthy(child, address, None)
    }

    /// Starts tcpstated inside `netns` (wrapped in `ip netns exec`, which execs it: the child is
    /// the daemon itself), serving on `127.0.0.1:web_port` of that namespace, and waits (bounded)
    /// until it is healthy. Its sock_diag figures then describe that namespace; scrapes connect
    /// from a thread that enters the namespace.
    pub fn start_in(netns: &Netns, web_port: u16, args: &[&str]) -> Daemon {
        let address = SocketAddr::from(([127, 0, 0, 1], web_port));
        let child = Daemon::spawn(
            netns.command(env!("CARGO_BIN_EXE_tcpstated")),
            address,
            args,
        );
        Daemon::until_healthy(child, address, Some(netns.name().to_owned()))
    }

    /// Like [`Daemon::start`], with `configure` applied to the command last (to capture its
    /// stderr, set its resource limits).
    pub fn start_with(args: &[&str], configure: impl FnOnce(&mut Command)) -> Daemon {
        let address = free_local_address();
        let mut command = Command::new(env!("CARGO_BIN_EXE_tcpstated"));
        Daemon::configure(&mut command, address, args);
        configure(&mut command);
        let child = command.spawn().expect("tcpstated starts");
        Daemon::until_healthy(child, address, None)
    }

    fn spawn(mut command: Command, address: SocketAddr, args: &[&str]) -> Child {
        Daemon::configure(&mut command, address, args);
        command.spawn().expect("tcpstated starts")
    }

    fn configure(command: &mut Command, address: SocketAddr, args: &[&str]) {
        command
            .arg(format!("--web.listen-address={address}"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's stderr, if [`Daemon::start_with`] made it a pipe (read it steadily: a full
    /// pipe blocks the daemon's logging).
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.stderr.take()
    }

    /// Sends `signal` (a name `kill` knows: `HUP`, `TERM`, ...).
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{signal} {}", self.child.id());
    }

    /// The exit status, if the daemon exits within `limit`.
    pub fn exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn until_healthy(child: Child, address: SocketAddr, netns: Option<String>) -> Daemon {
        let mut daemon = Daemon {
            child,
            address,
            netns,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("tcpstated exited during start-up with {status}");
            }
            if daemon
                .get("/healthz")
                .is_ok_and(|(status, _)| status == 200)
            {
                return daemon;
            }
            assert!(
                Instant::now() < deadline,
                "tcpstated did not become healthy within 20 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// GET `path` from the daemon, from inside its namespace if it runs in one.
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        match &self.netns {
            None => http_get(self.address, path),
            Some(netns) => run_in_netns(netns, || http_get(self.address, path)),
        }
    }

    pub fn scrape_text(&self) -> String {
        let (status, body) = self.get("/metrics").expect("scrape");
        assert_eq!(status, 200, "{body}");
        body
    }

    pub fn scrape(&self) -> Metrics {
        Metrics::parse(&self.scrape_text())
    }

    /// The daemon's socket slot table (`SOCKET_SLOTS`), opened by id from the map fds the
    /// daemon holds (/proc/<pid>/fdinfo): the real kernel map its programs write.
    pub fn socket_slots(&self) -> aya::maps::Array<aya::maps::MapData, SocketRecord> {
        let fds = std::fs::read_dir(format!("/proc/{}/fdinfo", self.child.id()))
            .expect("the daemon's fdinfo");
        for fd in fds.flatten() {
            let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
            let Some(id) = info.lines().find_map(|line| line.strip_prefix("map_id:")) else {
                continue;
            };
            let id = id.trim().parse().expect("a map id");
            let map = aya::maps::MapData::from_id(id).expect("open a map by id");
            let name = map.info().expect("map info");
            if name.name_as_str() == Some(tcpstate_common::map::SOCKET_SLOTS) {
                return aya::maps::Array::try_from(aya::maps::Map::Array(map))
                    .expect("SOCKET_SLOTS is an array of SocketRecord");
            }
        }
        panic!("the daemon holds no SOCKET_SLOTS map");
    }

    /// Stops the daemon with SIGTERM and returns its exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().expect("wait");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

pub fn free_local_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

/// A minimal HTTP/1.0 GET (no client dependency): status code and body.
pub fn http_get(address: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Samples of one scrape: series (name plus labels, as exposed) to value.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    samples: BTreeMap<String, f64>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect();
        Metrics { samples }
    }

    /// Sum of the samples of `name` whose labels include every pair of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(series, _)| {
                let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
                let series_labels = parse_labels(series_labels);
                series_name == name
                    && labels.iter().all(|(label, value)| {
                        series_labels.get(*label).map(String::as_str) == Some(*value)
                    })
            })
            .map(|(_, value)| value)
            .sum()
    }

    /// How much `name{labels}` grew since `before`.
    pub fn delta(&self, before: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.sum(name, labels) - before.sum(name, labels)
    }

    pub fn series(&self) -> impl Iterator<Item = (&String, &f64)> {
        self.samples.iter()
    }

    /// The value of one exact series.
    pub fn value(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }
}

/// `{a="1",b="2"}` -> {a: 1, b: 2} (label values here never contain quotes or commas).
pub fn parse_labels(braced: &str) -> BTreeMap<String, String> {
    braced
        .trim_start_matches('{')
        .trim_end_matches('}')
        .split("\",")
        .filter_map(|pair| {
            let (name, value) = pair.split_once("=\"")?;
            Some((name.to_owned(), value.trim_end_matches('"').to_owned()))
        })
        .collect()
}

/// Polls `check` until it returns true, for at most `limit`; the events under test happen in
/// softirq and timers, a few milliseconds after the syscall that causes them returns.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `job` on a thread that has entered the network namespace `/run/netns/<name>`, and returns
/// its result. Sockets keep the namespace they were created in, so what `job` creates (listeners,
/// connected streams) can then be used from any thread; only creation has to happen here.
pub fn run_in_netns<T: Send>(name: &str, job: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{name}");
    thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let namespace =
                std::fs::File::open(&path).unwrap_or_else(|error| panic!("open {path}: {error}"));
            // SAFETY: setns reads the descriptor, which stays open for the call, and moves only
            // this thread (spawned for the purpose, ended after `job`) into the namespace.
            let entered = unsafe {
                libc::setns(
                    std::os::fd::AsRawFd::as_raw_fd(&namespace),
                    libc::CLONE_NEWNET,
                )
            };
            assert_eq!(
                entered,
                0,
                "setns into {path}: {}",
                std::io::Error::last_os_error()
            );
            job()
        });
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Sets TCP_SYNCNT (SYN retransmissions before connect() gives up; socket2 has no setter).
pub fn set_tcp_syncnt(socket: &impl std::os::fd::AsRawFd, count: i32) {
    // SAFETY: a plain setsockopt with a pointer to a live c_int and its exact size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_SYNCNT,
            std::ptr::from_ref(&count).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(
        result,
        0,
        "setsockopt TCP_SYNCNT: {}",
        std::io::Error::last_os_error()
    );
}

/// A network namespace of the test's own, with loopback up: its sockets, sock_diag view,
/// /proc/net/netstat counters and nftables rules are private to it. Deleted when dropped (with
/// its rules; its sockets go when the test's last reference to them does).
pub struct Netns {
    name: String,
}

impl Netns {
    /// `tcpstate-<tag>-<pid>`: unique per test (the tag is the test's port) and per run.
    /// Namespaces left by an earlier run of the same test that was killed (its process gone)
    /// are removed first; those of a run still going are left alone.
    pub fn new(tag: u16) -> Netns {
        let prefix = format!("tcpstate-{tag}-");
        let listed = run_checked(Command::new("ip").args(["netns", "list"]));
        for stale in listed
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .filter(|name| {
                name.strip_prefix(&prefix)
                    .and_then(|pid| pid.parse::<u32>().ok())
                    .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            })
        {
            let _ = Command::new("ip").args(["netns", "delete", stale]).status();
        }
        let name = format!("{prefix}{}", std::process::id());
        run_checked(Command::new("ip").args(["netns", "add", &name]));
        let netns = Netns { name };
        netns.exec("ip", &["link", "set", "lo", "up"]);
        netns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// See [`run_in_netns`].
    pub fn run<T: Send>(&self, job: impl FnOnce() -> T + Send) -> T {
        run_in_netns(&self.name, job)
    }

    /// `ip netns exec <name> <program>`.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs `program args` in the namespace; panics (with its stderr) if it fails; its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        run_checked(self.command(program).args(args))
    }

    /// Loads an nftables ruleset (one `nft -f` transaction) into the namespace. The returned
    /// guard deletes `table inet <table>` when dropped or [`NftTable::remove`]d; deleting the
    /// namespace would remove it too.
    pub fn nft(&self, table: &str, ruleset: &str) -> NftTable<'_> {
        let mut nft = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft runs (Debian package nftables; cargo xtask setup installs it)");
        nft.stdin
            .take()
            .expect("stdin")
            .write_all(ruleset.as_bytes())
            .expect("write the ruleset");
        let output = nft.wait_with_output().expect("nft");
        assert!(
            output.status.success(),
            "nft rejected the ruleset:\n{ruleset}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        NftTable {
            netns: self,
            table: table.to_owned(),
            removed: false,
        }
    }

    /// Every TCP socket of the namespace, as `ss -tan` lists them.
    pub fn sockets(&self) -> Vec<SsSocket> {
        self.exec("ss", &["-tanH"])
            .lines()
            .filter_map(SsSocket::parse)
            .collect()
    }

    /// A `TcpExt` counter of the namespace's /proc/net/netstat (e.g. `ListenOverflows`).
    pub fn tcp_ext(&self, counter: &str) -> u64 {
        let netstat = self.exec("cat", &["/proc/net/netstat"]);
        let mut lines = netstat.lines().filter(|line| line.starts_with("TcpExt:"));
        let (names, values) = (
            lines.next().expect("TcpExt names"),
            lines.next().expect("values"),
        );
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == counter)
            .unwrap_or_else(|| panic!("no TcpExt {counter} in /proc/net/netstat"))
            .1
            .parse()
            .expect("a number")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// An nftables table in a test namespace, deleted when dropped.
pub struct NftTable<'a> {
    netns: &'a Netns,
    table: String,
    removed: bool,
}

impl NftTable<'_> {
    /// Deletes the table now (its rules stop at once).
    pub fn remove(mut self) {
        self.netns
            .exec("nft", &["delete", "table", "inet", &self.table]);
        self.removed = true;
    }

    /// Packets counted by the rule carrying `comment "<comment>"`.
    pub fn packets(&self, comment: &str) -> u64 {
        let listing = self
            .netns
            .exec("nft", &["list", "table", "inet", &self.table]);
        let needle = format!("comment \"{comment}\"");
        let rule = listing
            .lines()
            .find(|line| line.contains(&needle))
            .unwrap_or_else(|| panic!("no rule {needle} in\n{listing}"));
        rule.split_whitespace()
            .skip_while(|word| *word != "packets")
            .nth(1)
            .and_then(|count| count.parse().ok())
            .unwrap_or_else(|| panic!("no counter in {rule}"))
    }
}

impl Drop for NftTable<'_> {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self
                .netns
                .command("nft")
                .args(["delete", "table", "inet", &self.table])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// One line of `ss -tanH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsSocket {
    /// ss's name: `ESTAB`, `SYN-SENT`, `SYN-RECV`, `FIN-WAIT-1`, `TIME-WAIT`, `LISTEN`, ...
    pub state: String,
    /// For a listener: the accept queue now; else unread bytes.
    pub recv_q: u64,
    /// For a listener: the backlog limit; else unacknowledged bytes.
    pub send_q: u64,
    pub local_port: u16,
    pub peer_port: u16,
}

impl SsSocket {
    fn parse(line: &str) -> Option<SsSocket> {
        let mut fields = line.split_whitespace();
        let port = |address: &str| address.rsplit_once(':')?.1.parse().ok();
        Some(SsSocket {
            state: fields.next()?.to_owned(),
            recv_q: fields.next()?.parse().ok()?,
            send_q: fields.next()?.parse().ok()?,
            local_port: port(fields.next()?)?,
            peer_port: fields.next().and_then(port).unwrap_or(0),
        })
    }

    /// The state as tcpstate names it (`SYN-RECV` is NEW_SYN_RECV or SYN_RECV there).
    pub fn tcpstate_state(&self) -> &str {
        match self.state.as_str() {
            "ESTAB" => "ESTABLISHED",
            "SYN-SENT" => "SYN_SENT",
            "SYN-RECV" => "SYN_RECV",
            "FIN-WAIT-1" => "FIN_WAIT1",
            "FIN-WAIT-2" => "FIN_WAIT2",
            "TIME-WAIT" => "TIME_WAIT",
            "CLOSE-WAIT" => "CLOSE_WAIT",
            "LAST-ACK" => "LAST_ACK",
            "UNCONN" => "CLOSE",
            other => other,
        }
    }

    pub fn has_port(&self, port: u16) -> bool {
        self.local_port == port || self.peer_port == port
    }
}

/// Runs a command, panics with its stderr if it fails, returns its stdout.
pub fn run_checked(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

// ---- transitions ---------------------------------------------------------------------------

/// `(role, from, to) -> count`.
pub type Transitions = BTreeMap<(String, String, String), u64>;

/// `(role, from, to) -> count` of the transitions exported for `port` since `before`.
pub fn transitions(after: &Metrics, before: &Metrics, port: u16) -> Transitions {
    let port = port.to_string();
    let mut out = Transitions::new();
    for (series, value) in after.series() {
        let Some(labels) = series.strip_prefix("tcpstate_transitions_total") else {
            continue;
        };
        let labels = parse_labels(labels);
        if labels.get("port") != Some(&port) {
            continue;
        }
        let grown = value - before.value(series).unwrap_or(0.0);
        if grown != 0.0 {
            *out.entry((
                labels["role"].clone(),
                labels["from"].clone(),
                labels["to"].clone(),
            ))
            .or_default() += grown as u64;
        }
    }
    out
}

pub fn expect(items: &[(&str, &str, &str, u64)]) -> Transitions {
    let mut out = Transitions::new();
    for (role, from, to, count) in items {
        *out.entry((role.to_string(), from.to_string(), to.to_string()))
            .or_default() += count;
    }
    out
}

/// Scrapes (which also drives the sock_diag poller) until the transitions for `port` since
/// `before` equal `want`, for at most `limit`, then asserts it; returns the last scrape. When they
/// differ and the daemon counted recording failures meanwhile, the panic message begins with
/// [`UNRECORDED_EVENTS`].
pub fn until_transitions(
    daemon: &Daemon,
    before: &Metrics,
    port: u16,
    want: &Transitions,
    limit: Duration,
) -> Metrics {
    let mut last = daemon.scrape();
    eventually(limit, || {
        last = daemon.scrape();
        transitions(&last, before, port) == *want
    });
    let exported = transitions(&last, before, port);
    let failures = recording_failures(&last, before);
    if exported != *want && !failures.is_empty() {
        panic!(
            "{UNRECORDED_EVENTS} ({failures:?}), and the transitions for port {port} differ\n \
             exported: {exported:?}\n expected: {want:?}"
        );
    }
    assert_eq!(
        &exported, want,
        "transitions for port {port} (left: exported, right: expected)"
    );
    last
}

// ---- events the kernel did not hand to the programs ----------------------------------------

/// How the panic message of a check begins when the daemon itself counted, meanwhile, events or
/// sockets it could not record (`tcpstate_recording_failures_total`). On these machines the
/// kernel's tracepoint dispatch now and then runs no BPF program for an event, without counting
/// it anywhere (docs/skipped-bpf-events.md: the `FIN_WAIT1 -> FIN_WAIT2` and `FIN_WAIT2 -> CLOSE`
/// of a closing client, mostly), and the daemon finds and counts the socket afterwards
/// (`close_undelivered`, `out_of_sequence`). [`rerun_once_after_unrecorded_events`] gives such a
/// test a second run.
pub const UNRECORDED_EVENTS: &str = "the daemon counted events it could not record";

/// `reason -> count` of the recording failures counted since `before`, the reasons that grew only.
pub fn recording_failures(after: &Metrics, before: &Metrics) -> BTreeMap<String, u64> {
    let mut grown = BTreeMap::new();
    for (series, value) in after.series() {
        let Some(labels) = series.strip_prefix("tcpstate_recording_failures_total") else {
            continue;
        };
        let count = value - before.value(series).unwrap_or(0.0);
        if count > 0.0 {
            let reason = parse_labels(labels).remove("reason").unwrap_or_default();
            grown.insert(reason, count as u64);
        }
    }
    grown
}

/// Runs `test`, and runs it once more when it failed because the daemon counted events it could
/// not record (its panic message begins with [`UNRECORDED_EVENTS`]): those tests check what the
/// daemon makes of the kernel's events, which a skipped event says nothing about (the daemon's
/// finding and counting of such sockets has tests of its own). Any other failure, or a second
/// one, fails the test. The rerun is announced on the real stderr, past the test harness's
/// capture, so that it shows in the log of a passing run too.
pub fn rerun_once_after_unrecorded_events(test: impl Fn()) {
    rerun_once_announcing(test, |note| {
        // To the stderr handle itself: eprintln! would be captured with a passing test's output.
        let _ = writeln!(std::io::stderr(), "{note}");
    });
}

fn rerun_once_announcing(test: impl Fn(), announce: impl FnOnce(&str)) {
    let Err(failure) = panic::catch_unwind(AssertUnwindSafe(&test)) else {
        return;
    };
    let message = failure
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| failure.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    if !message.starts_with(UNRECORDED_EVENTS) {
        panic::resume_unwind(failure);
    }
    announce(&format!(
        "note: {} ran again: {}",
        thread::current().name().unwrap_or("a test"),
        message.lines().next().unwrap_or_default()
    ));
    test();
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn recording_failures_lists_the_reasons_that_grew() {
        let before = Metrics::parse(
            "tcpstate_recording_failures_total{reason=\"event_lost\"} 0\n\
             tcpstate_recording_failures_total{reason=\"close_undelivered\"} 2\n",
        );
        let after = Metrics::parse(
            "tcpstate_recording_failures_total{reason=\"event_lost\"} 0\n\
             tcpstate_recording_failures_total{reason=\"close_undelivered\"} 3\n\
             tcpstate_recording_failures_total{reason=\"out_of_sequence\"} 1\n\
             tcpstate_transitions_total{role=\"client\"} 9\n",
        );
        let grown = recording_failures(&after, &before);
        assert_eq!(
            grown,
            BTreeMap::from([
                ("close_undelivered".to_owned(), 1),
                ("out_of_sequence".to_owned(), 1)
            ])
        );
        assert!(recording_failures(&after, &after).is_empty());
    }

    #[test]
    fn a_test_that_failed_on_unrecorded_events_runs_once_more_and_says_so() {
        let runs = Cell::new(0);
        let mut note = String::new();
        rerun_once_announcing(
            || {
                runs.set(runs.get() + 1);
                if runs.get() == 1 {
                    panic!("{UNRECORDED_EVENTS} ({{\"close_undelivered\": 1}})\n exported: {{}}");
                }
            },
            |said| note = said.to_owned(),
        );
        assert_eq!(runs.get(), 2);
        assert!(
            note.ends_with(" ran again: the daemon counted events it could not record ({\"close_undelivered\": 1})"),
            "{note}"
        );
    }

    #[test]
    #[should_panic(expected = "transitions for port 1")]
    fn any_other_failure_fails_at_once() {
        let runs = Cell::new(0);
        rerun_once_announcing(
            || {
                runs.set(runs.get() + 1);
                assert_eq!(runs.get(), 1, "ran twice");
                panic!("transitions for port 1 (left: exported, right: expected)");
            },
            |_| {},
        );
    }

    #[test]
    #[should_panic(expected = "the daemon counted events it could not record")]
    fn a_second_failure_on_unrecorded_events_fails() {
        rerun_once_announcing(|| panic!("{UNRECORDED_EVENTS} (again)"), |_| {});
    }
}

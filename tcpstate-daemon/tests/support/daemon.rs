//! A real `tcpstated`, started on a free address (in the test's namespace or one of its own),
//! scraped over real HTTP.

use std::{
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use tcpstate_common::SocketRecord;
use tcpstate_testkit::{Exposition, http};

use super::{joined, netns::Netns, run_in_netns};

/// Longest wait for a read of an answer of the daemon.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

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

    /// Starts tcpstated exporting `ports` by number (`--port=a,b,...`), as [`Daemon::start`].
    pub fn watching(ports: &[u16]) -> Daemon {
        Daemon::start(&[&format!("--port={}", joined(ports))])
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

    /// Like [`Daemon::start_with`], run by `wrapper`, a command that execs the program it is
    /// given last (`setpriv ...`: the child is the daemon itself).
    pub fn start_under(
        mut wrapper: Command,
        args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Daemon {
        let address = free_local_address();
        wrapper.arg(env!("CARGO_BIN_EXE_tcpstated"));
        Daemon::configure(&mut wrapper, address, args);
        configure(&mut wrapper);
        let child = wrapper.spawn().expect("tcpstated starts");
        Daemon::until_healthy(child, address, None)
    }

    /// Like [`Daemon::start`], healthy when `healthy` says so: a daemon serving TLS or asking
    /// for basic auth answers a plain GET with an error.
    pub fn start_until(args: &[&str], healthy: impl Fn(SocketAddr) -> bool) -> Daemon {
        let address = free_local_address();
        let child = Daemon::spawn(Command::new(env!("CARGO_BIN_EXE_tcpstated")), address, args);
        Daemon::until(child, address, None, |daemon| healthy(daemon.address))
    }

    /// Like [`Daemon::start`], with `configure` applied to the command last (to capture its
    /// stderr, set its resource limits).
    pub fn start_with(args: &[&str], configure: impl FnOnce(&mut Command)) -> Daemon {
        Daemon::start_with_until(args, configure, |daemon| {
            daemon
                .get("/healthz")
                .is_ok_and(|response| response.status == 200)
        })
    }

    /// Like [`Daemon::start_with`], started when `ready` says so (e.g. when it said it is, the
    /// way systemd hears it).
    pub fn start_with_until(
        args: &[&str],
        configure: impl FnOnce(&mut Command),
        ready: impl Fn(&Daemon) -> bool,
    ) -> Daemon {
        let address = free_local_address();
        let mut command = Command::new(env!("CARGO_BIN_EXE_tcpstated"));
        Daemon::configure(&mut command, address, args);
        configure(&mut command);
        let child = command.spawn().expect("tcpstated starts");
        Daemon::until(child, address, None, ready)
    }

    fn spawn(mut command: Command, address: SocketAddr, args: &[&str]) -> Child {
        Daemon::configure(&mut command, address, args);
        command.spawn().expect("tcpstated starts")
    }

    fn configure(command: &mut Command, address: SocketAddr, args: &[&str]) {
        command.arg(format!("--web.listen-address={address}"));
        // Persistence is on by default: a test daemon must not adopt an earlier test's state,
        // nor leave programs attached. Unless a test names its pin path, none is kept, and the
        // path (which never exists) leaves any other daemon's state alone.
        if !args.iter().any(|arg| arg.starts_with("--bpf.pin-path")) {
            command.args([
                "--no-bpf.persist",
                &format!(
                    "--bpf.pin-path=/nonexistent/tcpstate-test-{}",
                    address.port()
                ),
            ]);
        }
        command
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
        Daemon::until(child, address, netns, |daemon| {
            daemon
                .get("/healthz")
                .is_ok_and(|response| response.status == 200)
        })
    }

    fn until(
        child: Child,
        address: SocketAddr,
        netns: Option<String>,
        healthy: impl Fn(&Daemon) -> bool,
    ) -> Daemon {
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
            if healthy(&daemon) {
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
    pub fn get(&self, path: &str) -> std::io::Result<http::Response> {
        let get = || http::get(self.address, path, READ_TIMEOUT);
        match &self.netns {
            None => get(),
            Some(netns) => run_in_netns(netns, get),
        }
    }

    pub fn scrape_text(&self) -> String {
        let response = self.get("/metrics").expect("scrape");
        assert_eq!(response.status, 200, "{}", response.body);
        response.body
    }

    pub fn scrape(&self) -> Exposition {
        Exposition::parse(&self.scrape_text()).expect("the exposition parses")
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

    /// The tracepoint of each attachment (bpf_link) the daemon holds, sorted: its
    /// `/proc/<pid>/fdinfo` names the tracepoint of a link's program.
    pub fn attached_tracepoints(&self) -> Vec<String> {
        let fds = std::fs::read_dir(format!("/proc/{}/fdinfo", self.child.id()))
            .expect("the daemon's fdinfo");
        let mut tracepoints: Vec<String> = fds
            .flatten()
            .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
            .filter(|info| info.lines().any(|line| line.starts_with("link_id:")))
            .filter_map(|info| {
                let name = info
                    .lines()
                    .find_map(|line| line.strip_prefix("tp_name:"))?;
                Some(name.trim().to_owned())
            })
            .collect();
        tracepoints.sort();
        tracepoints
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

//! The capabilities the shipped systemd unit grants (its `AmbientCapabilities=`) are what a
//! daemon running as another user needs to cover a namespace found only through a root
//! process's `/proc/<pid>/ns/net` (a container's, with no bind mount): CAP_SYS_PTRACE to open
//! that link, CAP_SYS_ADMIN to enter; and the sockets view names root's process holding a
//! listener there (CAP_DAC_READ_SEARCH reads its /proc/PID/fd). Without CAP_SYS_PTRACE the namespace stays uncovered,
//! which shows the test can tell.

use std::{
    io::Read as _,
    net::{Shutdown, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use crate::WAIT;
use crate::checks::ss_count;
use crate::namespace_changes::log_lines;
use crate::namespaces::NAMESPACE_WAIT;
use crate::support::{
    Daemon, SsSocket, eventually, files::deploy_directory, run_checked, run_in_namespace_file,
};

/// The port of the TIME_WAIT sockets made in the namespace (and, next, of a listener).
const PORT: u16 = 26050;
/// TIME_WAIT sockets made: they outlive the test (60 s).
const TIME_WAITS: usize = 3;

/// A network namespace held by a root process only (`unshare --net`): no `ip netns` name, no
/// bind mount. Ended when dropped.
struct Unnamed(Child);

impl Unnamed {
    fn new() -> Unnamed {
        let holder = Command::new("unshare")
            .args(["--net", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare (util-linux)");
        let unnamed = Unnamed(holder);
        // The holder is in its namespace once `ns/net` differs from ours.
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert!(
            eventually(WAIT, || std::fs::read_link(unnamed.path())
                .is_ok_and(|link| link != ours)),
            "unshare entered a network namespace of its own"
        );
        unnamed.nsenter(&["ip", "link", "set", "lo", "up"]);
        unnamed
    }

    fn path(&self) -> String {
        format!("/proc/{}/ns/net", self.0.id())
    }

    fn nsenter(&self, command: &[&str]) -> String {
        run_checked(
            Command::new("nsenter")
                .args(["-t", &self.0.id().to_string(), "-n"])
                .args(command),
        )
    }

    fn sockets(&self) -> Vec<SsSocket> {
        self.nsenter(&["ss", "-tanH"])
            .lines()
            .filter_map(SsSocket::parse)
            .collect()
    }

    /// `n` connections to `port` in the namespace, closed by their clients first: the clients
    /// wait in TIME_WAIT.
    fn time_wait(&self, port: u16, n: usize) {
        let pairs = run_in_namespace_file(&self.path(), || {
            let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
            (0..n)
                .map(|_| {
                    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    (client, listener.accept().unwrap().0)
                })
                .collect::<Vec<_>>()
        });
        for (client, mut server) in pairs {
            client.shutdown(Shutdown::Write).unwrap();
            server.set_read_timeout(Some(WAIT)).unwrap();
            let _ = server.read_to_end(&mut Vec::new());
            drop(server);
            drop(client);
        }
        assert!(
            eventually(WAIT, || ss_count(&self.sockets(), "TIME-WAIT", port) == n),
            "{n} clients in TIME_WAIT"
        );
    }
}

impl Drop for Unnamed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The capabilities of the shipped systemd unit, in setpriv's spelling (`bpf`, `sys_admin`).
fn units_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(deploy_directory().join("systemd/tcpstated.service"))
        .expect("the systemd unit");
    unit.lines()
        .find_map(|line| line.strip_prefix("AmbientCapabilities="))
        .expect("the unit grants ambient capabilities")
        .split_whitespace()
        .map(|name| name.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// tcpstated as `nobody`, holding exactly `capabilities` (inheritable, ambient and bounding),
/// its stderr piped.
fn daemon_as_nobody(capabilities: &[String]) -> Daemon {
    let set = std::iter::once("-all".to_owned())
        .chain(capabilities.iter().map(|name| format!("+{name}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut setpriv = Command::new("setpriv");
    setpriv
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args([
            format!("--inh-caps={set}"),
            format!("--ambient-caps={set}"),
            format!("--bounding-set={set}"),
        ]);
    Daemon::start_under(
        setpriv,
        &[&format!("--port={PORT}"), "--sockdiag.min-interval=0.2"],
        |command| {
            command.stderr(Stdio::piped());
        },
    )
}

fn time_waits(daemon: &Daemon) -> f64 {
    daemon.scrape().sum(
        "tcpstate_sockets",
        &[("state", "TIME_WAIT"), ("port", &PORT.to_string())],
    )
}

#[test]
#[ignore = "needs root, unshare, nsenter and setpriv: see tests/scenarios/main.rs"]
fn the_units_capabilities_cover_a_namespace_only_a_root_process_holds() {
    let unnamed = Unnamed::new();
    unnamed.time_wait(PORT, TIME_WAITS);
    let capabilities = units_capabilities();
    assert!(
        capabilities.contains(&"sys_ptrace".to_owned()),
        "{capabilities:?}"
    );

    let daemon = daemon_as_nobody(&capabilities);
    assert!(
        eventually(NAMESPACE_WAIT, || time_waits(&daemon) == TIME_WAITS as f64),
        "tcpstated as nobody with the unit's capabilities {capabilities:?} counts the {TIME_WAITS} \
         TIME_WAIT sockets of a namespace held by root: {}",
        time_waits(&daemon)
    );
    // The sockets view names root's process holding a listener in that namespace.
    let listener = run_in_namespace_file(&unnamed.path(), || {
        TcpListener::bind(("127.0.0.1", PORT + 1)).unwrap()
    });
    let query = "/sockets.json?state=LISTEN&port=other";
    let mut view = String::new();
    let ours = format!("\"pid\":{}", std::process::id());
    assert!(
        eventually(WAIT, || {
            view = daemon.get(query).map(|r| r.body).unwrap_or_default();
            view.contains(&format!("\"local\":\"127.0.0.1:{}\"", PORT + 1)) && view.contains(&ours)
        }),
        "the view names the root process holding the listener: {view}"
    );
    drop((daemon, listener));

    // The control: without CAP_SYS_PTRACE the root process's ns/net link cannot be opened.
    let without_ptrace: Vec<String> = capabilities
        .into_iter()
        .filter(|name| name != "sys_ptrace")
        .collect();
    let mut daemon = daemon_as_nobody(&without_ptrace);
    let log = log_lines(&mut daemon);
    assert!(
        eventually(NAMESPACE_WAIT, || daemon
            .scrape()
            .sum_if_any("tcpstate_poll_duration_seconds", &[])
            .is_some()),
        "a first poll"
    );
    for _ in 0..5 {
        thread::sleep(Duration::from_millis(400));
        assert_eq!(
            time_waits(&daemon),
            0.0,
            "without CAP_SYS_PTRACE the namespace is not covered"
        );
    }
    let log = log.lock().unwrap().join("\n");
    assert!(
        log.contains("refuse tcpstated their network namespace (it needs CAP_SYS_PTRACE)"),
        "one line says why:\n{log}"
    );
}

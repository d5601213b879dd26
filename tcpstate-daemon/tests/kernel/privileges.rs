//! What each thread of a serving daemon holds, read from /proc as an operator would: nothing,
//! but the sock_diag poll thread, which keeps CAP_SYS_ADMIN to enter the other network
//! namespaces it polls, and CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH to read other users'
//! /proc/PID; and the daemon still reads the kernel's maps, polls namespaces made after it
//! started, finds another user's process for the sockets view, and stops cleanly
//! (docs/privileges.md).

use std::{
    fs,
    net::{SocketAddr, TcpListener},
    os::fd::OwnedFd,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::support::{
    Daemon, Netns, eventually, rerun_once_after_unrecorded_events, until_transitions,
};
use crate::{CLIENT_CLOSES, WAIT, client_closes_first, expected};

/// The port of this module's connections (exported by number).
const PORT: u16 = 27110;
/// The port of a listener held by another user's process.
const NOBODYS_PORT: u16 = 27111;
/// What the poll thread is named (`/proc/PID/task/TID/comm`).
const POLL_THREAD: &str = "sock_diag poll";
const CAP_DAC_READ_SEARCH: u64 = 1 << 2;
const CAP_NET_RAW: u64 = 1 << 13;
const CAP_SYS_PTRACE: u64 = 1 << 19;
const CAP_SYS_ADMIN: u64 = 1 << 21;

/// A thread's name and capability sets, from /proc.
#[derive(Debug)]
struct Thread {
    name: String,
    permitted: u64,
    effective: u64,
    inheritable: u64,
    ambient: u64,
    bounding: u64,
}

fn threads(pid: u32) -> Vec<Thread> {
    let mut threads = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).expect("the daemon's tasks") {
        let path = task.unwrap().path();
        let Ok(status) = fs::read_to_string(path.join("status")) else {
            continue; // ended meanwhile
        };
        let set = |field: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field)?.strip_prefix(":"))
                .map(|mask| u64::from_str_radix(mask.trim(), 16).expect("a hex mask"))
                .unwrap_or_else(|| panic!("no {field} in {}", path.display()))
        };
        threads.push(Thread {
            name: fs::read_to_string(path.join("comm"))
                .unwrap_or_default()
                .trim()
                .to_owned(),
            permitted: set("CapPrm"),
            effective: set("CapEff"),
            inheritable: set("CapInh"),
            ambient: set("CapAmb"),
            bounding: set("CapBnd"),
        });
    }
    threads
}

/// A connection closed by its client, and its transitions, read by a scrape: the kernel's
/// maps, read by a thread that holds no capability.
fn closes_are_counted(daemon: &Daemon) {
    let before = daemon.scrape();
    client_closes_first(SocketAddr::from(([127, 0, 0, 1], PORT)), Duration::ZERO);
    until_transitions(daemon, &before, PORT, &expected(&CLIENT_CLOSES), WAIT);
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn once_serving_only_the_poll_thread_holds_a_capability_and_only_what_polls_need() {
    let daemon = Daemon::start(&[
        &format!("--port={PORT},{NOBODYS_PORT}"),
        "--sockdiag.min-interval=0.2",
    ]);
    rerun_once_after_unrecorded_events(|| closes_are_counted(&daemon));
    // Made after the start: the poll thread enters it with the capabilities it kept.
    let netns = Netns::new(PORT);
    let listen = SocketAddr::from(([127, 0, 0, 1], PORT));
    netns.run(|| client_closes_first(listen, Duration::ZERO));
    assert!(
        eventually(Duration::from_secs(20), || {
            daemon.scrape().sum(
                "tcpstate_sockets",
                &[("state", "TIME_WAIT"), ("port", &PORT.to_string())],
            ) >= 1.0
        }),
        "the TIME_WAIT socket of a namespace made after the start is polled"
    );
    let (mut nobody, command) = sockets_view_finds_nobodys_listener(&daemon);
    assert_eq!(command, "sleep", "the process holding it");
    for part in ["bpf", "sockdiag", "netstat"] {
        let success = daemon
            .scrape()
            .sum("tcpstate_scrape_collector_success", &[("collector", part)]);
        assert_eq!(success, 1.0, "collector {part} succeeded");
    }

    let threads = threads(daemon.pid());
    let (polls, others): (Vec<_>, Vec<_>) = threads
        .iter()
        .partition(|thread| thread.name == POLL_THREAD);
    assert_eq!(polls.len(), 1, "one poll thread: {threads:?}");
    let poll = polls[0];
    let polls_need = CAP_SYS_ADMIN | CAP_SYS_PTRACE | CAP_DAC_READ_SEARCH;
    assert_eq!(
        (
            poll.permitted,
            poll.effective,
            poll.inheritable,
            poll.ambient
        ),
        (polls_need, polls_need, 0, 0),
        "{poll:?}"
    );
    assert_eq!(poll.bounding, polls_need, "root may lower it: {poll:?}");
    assert!(
        others.len() >= 2,
        "the main thread (HTTP) and a scrape's: {threads:?}"
    );
    for thread in others {
        assert_eq!(
            (
                thread.permitted,
                thread.effective,
                thread.inheritable,
                thread.ambient,
                thread.bounding
            ),
            (0, 0, 0, 0, 0),
            "{thread:?}"
        );
    }
    let _ = nobody.kill();
    let _ = nobody.wait();
    assert!(
        daemon.stop().success(),
        "it detaches and exits 0 holding nothing"
    );
}

/// A listener made now and handed to a `sleep` run as nobody (its only holder): the sockets
/// view lists it with that process, which only reading another user's `/proc/PID/fd` finds.
/// Returns the process, and its command as the view says it.
fn sockets_view_finds_nobodys_listener(daemon: &Daemon) -> (Child, String) {
    let listener = TcpListener::bind(("127.0.0.1", NOBODYS_PORT)).unwrap();
    let nobody = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sleep",
            "60",
        ])
        .stdin(Stdio::from(OwnedFd::from(listener)))
        .spawn()
        .expect("setpriv (util-linux) runs");
    let pid = u64::from(nobody.id());
    let query = format!("/sockets.json?state=LISTEN&port={NOBODYS_PORT}");
    let mut processes = serde_json::Value::Null;
    eventually(WAIT, || {
        let response = daemon.get(&query).unwrap();
        let answer: serde_json::Value = serde_json::from_str(&response.body).unwrap();
        processes = answer["sockets"][0]["processes"].clone();
        processes[0]["pid"] == pid
    });
    assert_eq!(processes[0]["pid"], pid, "{processes}");
    let command = processes[0]["command"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (nobody, command)
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn capabilities_keep_names_what_every_thread_keeps() {
    let without_other_namespaces = ["--sockdiag.namespaces=own"];
    assert_threads_hold(
        &without_other_namespaces,
        CAP_SYS_PTRACE | CAP_DAC_READ_SEARCH,
        0,
    );
    let polls_need = CAP_SYS_ADMIN | CAP_SYS_PTRACE | CAP_DAC_READ_SEARCH;
    let keep_raw = ["--capabilities.keep=cap_net_raw"];
    assert_threads_hold(&keep_raw, CAP_NET_RAW | polls_need, CAP_NET_RAW);

    let all = Daemon::start(&["--capabilities.keep=all"]);
    let main = threads(all.pid())
        .into_iter()
        .find(|thread| thread.name == "tcpstated")
        .expect("the main thread");
    assert!(
        main.effective & CAP_SYS_ADMIN != 0,
        "nothing dropped: {main:?}"
    );
}

/// A daemon started with `args` holds `poll_thread` (permitted and effective) on its poll
/// thread and `others` on every other thread.
fn assert_threads_hold(args: &[&str], poll_thread: u64, others: u64) {
    let daemon = Daemon::start(args);
    for thread in threads(daemon.pid()) {
        let kept = match thread.name.as_str() {
            POLL_THREAD => poll_thread,
            _ => others,
        };
        assert_eq!(
            (thread.permitted, thread.effective),
            (kept, kept),
            "{args:?}: {thread:?}"
        );
    }
}

//! Namespaces that come and go while the daemon runs in the host's (issue 32, part 1): one
//! made after it started is covered without a restart; one deleted with sockets in it takes
//! its figures along; one that vanishes before a poll reaches it, and one that cannot be
//! entered, are each logged once and leave the others' figures alone.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::fs::MetadataExt as _,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use crate::namespaces::{NAMESPACE_WAIT, Space, host_daemon, host_daemon_args, until_equal_to_ss};
use crate::support::{Daemon, Exposition, Netns, eventually, recording_failures, run_checked};

#[test]
#[ignore = "needs root, ip netns and nft: see tests/scenarios/main.rs"]
fn a_namespace_made_after_the_daemon_started_is_covered() {
    let base = 26040;
    let daemon = host_daemon(&[base]);
    daemon.scrape();
    let space = Space::new(base);
    space.time_wait(3);
    let queued = space.queued(2);
    let last = until_equal_to_ss(&daemon, &[&space], NAMESPACE_WAIT);
    assert_eq!(
        last.sum(
            "tcpstate_sockets",
            &[("state", "TIME_WAIT"), ("port", "26041")]
        ),
        3.0
    );
    drop(queued);
}

/// Sockets of `port` in any state, and its listeners' queued connections.
fn left(metrics: &Exposition, port: u16) -> (f64, f64) {
    let port = port.to_string();
    (
        metrics.sum("tcpstate_sockets", &[("port", &port)]),
        metrics.sum("tcpstate_listen_queue_length", &[("port", &port)]),
    )
}

/// Connections of `port` that entered TIME_WAIT, and those that left it.
fn through_time_wait(metrics: &Exposition, port: u16) -> (f64, f64) {
    let port = port.to_string();
    (
        metrics.sum(
            "tcpstate_transitions_total",
            &[("to", "TIME_WAIT"), ("port", &port)],
        ),
        metrics.sum(
            "tcpstate_transitions_total",
            &[("from", "TIME_WAIT"), ("port", &port)],
        ),
    )
}

#[test]
#[ignore = "needs root, ip netns and nft: see tests/scenarios/main.rs"]
fn a_namespace_deleted_with_sockets_in_it_takes_its_figures_along() {
    let base = 26050;
    let space = Space::new(base);
    let daemon = host_daemon(&[base]);
    let rules = space.drop_final_acks();
    space.time_wait(4);
    let requests = space.requests(2);
    let queued = space.queued(2);
    let seen = until_equal_to_ss(&daemon, &[&space], NAMESPACE_WAIT);
    assert_eq!(
        [("TIME_WAIT", 26051), ("NEW_SYN_RECV", 26052)].map(|(state, port)| seen.sum(
            "tcpstate_sockets",
            &[("state", state), ("port", &port.to_string())]
        )),
        [4.0, 2.0],
        "TIME_WAIT and NEW_SYN_RECV before the namespace goes"
    );
    // The full sockets close; the namespace goes with its timewait sockets (which do not keep
    // a namespace) and its request sockets, 60 s before the timewait sockets would end.
    let deleted = Instant::now();
    rules.remove();
    drop((requests, queued));
    drop(space);
    let ports = (base..base + 5).collect::<Vec<u16>>();
    let mut last = daemon.scrape();
    let gone = eventually(NAMESPACE_WAIT, || {
        last = daemon.scrape();
        ports.iter().all(|port| {
            let (entered, exited) = through_time_wait(&last, *port);
            left(&last, *port) == (0.0, 0.0) && entered == exited
        })
    });
    let figures: Vec<_> = ports
        .iter()
        .map(|port| (port, left(&last, *port), through_time_wait(&last, *port)))
        .collect();
    assert!(
        gone,
        "the deleted namespace's sockets and queues gone, every TIME_WAIT ended: (port, \
         (sockets, queued), (into TIME_WAIT, out of it))\n{figures:?}"
    );
    assert!(
        deleted.elapsed() < Duration::from_secs(50),
        "gone long before TIME_WAIT's 60 s"
    );
}

/// A namespace whose `/run/netns` file has a plain file mounted over it: listed in
/// mountinfo, but what its path opens is no namespace. Undone when dropped.
struct Unreadable {
    netns: Netns,
    inode: u64,
    cover: String,
}

impl Unreadable {
    fn new(tag: u16) -> Unreadable {
        let netns = Netns::new(tag);
        let path = format!("/run/netns/{}", netns.name());
        let inode = std::fs::metadata(&path).unwrap().ino();
        let cover = format!("/tmp/{}-cover", netns.name());
        std::fs::write(&cover, "").unwrap();
        run_checked(Command::new("mount").args(["--bind", &cover, &path]));
        Unreadable {
            netns,
            inode,
            cover,
        }
    }
}

impl Drop for Unreadable {
    fn drop(&mut self) {
        let path = format!("/run/netns/{}", self.netns.name());
        let _ = Command::new("umount").arg(&path).status();
        let _ = std::fs::remove_file(&self.cover);
    }
}

/// Processes each in a network namespace of its own, nothing else keeping those namespaces.
/// Ended when dropped (a failed test leaves none behind).
struct HeldNamespaces(Vec<Child>);

impl HeldNamespaces {
    fn new(count: usize) -> HeldNamespaces {
        HeldNamespaces(
            (0..count)
                .map(|_| {
                    Command::new("unshare")
                        .args(["--net", "sleep", "600"])
                        .stdin(Stdio::null())
                        .spawn()
                        .expect("unshare (util-linux)")
                })
                .collect(),
        )
    }

    /// Ends the processes, and with them their namespaces.
    fn end(&mut self) {
        for mut child in self.0.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for HeldNamespaces {
    fn drop(&mut self) {
        self.end();
    }
}

/// The daemon's stderr, line by line, as it comes.
pub fn log_lines(daemon: &mut Daemon) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = daemon.take_stderr().expect("stderr piped");
    let sink = lines.clone();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

#[test]
#[ignore = "needs root, ip netns and nft: see tests/scenarios/main.rs"]
fn a_vanishing_or_unreadable_namespace_is_logged_once_and_the_others_are_unaffected() {
    let base = 26060;
    let space = Space::new(base);
    let old = space.old_connections(2);
    let unreadable = Unreadable::new(26069);
    let mut held = HeldNamespaces::new(6);
    let args = host_daemon_args(&[base]);
    let mut daemon = Daemon::start_with(&args.each_ref().map(String::as_str), |command| {
        command.env("RUST_LOG", "info").stderr(Stdio::piped());
    });
    let log = log_lines(&mut daemon);
    let queued = space.queued(3);
    let before = until_equal_to_ss(&daemon, &[&space], NAMESPACE_WAIT);

    // The namespaces go between two polls: the next finds their paths gone.
    held.end();
    let went_away = |log: &[String]| -> Vec<String> {
        log.iter()
            .filter(|line| line.contains("went away during a poll"))
            .cloned()
            .collect()
    };
    let noticed = eventually(NAMESPACE_WAIT, || {
        daemon.scrape();
        !went_away(&log.lock().unwrap()).is_empty()
    });
    // More polls: nothing is logged twice.
    let after = until_equal_to_ss(&daemon, &[&space], NAMESPACE_WAIT);
    for _ in 0..5 {
        thread::sleep(Duration::from_millis(300));
        daemon.scrape();
    }
    let log = log.lock().unwrap().clone();
    let unreadable_lines: Vec<&String> = log
        .iter()
        .filter(|line| {
            line.contains(&format!(
                "cannot enter network namespace {}",
                unreadable.inode
            ))
        })
        .collect();
    assert!(
        noticed,
        "a namespace gone before its visit is logged:\n{}",
        log.join("\n")
    );
    let vanished: Vec<String> = went_away(&log)
        .iter()
        .filter_map(|line| line.split("network namespace ").nth(1)?.split(' ').next())
        .map(str::to_owned)
        .collect();
    let mut once = vanished.clone();
    once.sort_unstable();
    once.dedup();
    assert_eq!(
        once.len(),
        vanished.len(),
        "each vanished namespace logged once: {vanished:?}"
    );
    assert_eq!(
        unreadable_lines.len(),
        1,
        "the unreadable namespace {} logged once, as a warning:\n{}",
        unreadable.inode,
        log.join("\n")
    );
    assert!(
        unreadable_lines[0].contains("level=warn"),
        "{}",
        unreadable_lines[0]
    );
    let failures = recording_failures(&after, &before);
    assert!(
        !failures.contains_key("poll_error"),
        "neither is a poll error: {failures:?}"
    );
    drop((old, queued, unreadable));
}

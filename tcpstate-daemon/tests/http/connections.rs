//! Clients that misbehave: thousands of idle connections, a request never finished at
//! shutdown, SIGHUP.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpStream,
    os::unix::process::CommandExt as _,
    process::Stdio,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use crate::support::{Daemon, eventually};
use tcpstate_testkit::http::Response;

/// The daemon's resident memory stays under this with any number of idle connections (README,
/// "Known limits").
const RSS_BOUND_KIB: u64 = 64 * 1024;

/// systemd's default soft RLIMIT_NOFILE, which the shipped unit used to keep.
const SYSTEMD_SOFT_NOFILE: libc::rlim_t = 1024;

/// Sets this process's soft RLIMIT_NOFILE to its hard limit; returns it.
fn raise_own_fd_limit() -> libc::rlim_t {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write the one live rlimit given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

/// Starts the daemon as systemd would (soft fd limit 1024), its stderr collected into the
/// returned log (and echoed).
fn start_as_systemd_would() -> (Daemon, Arc<Mutex<String>>) {
    let mut daemon = Daemon::start_with(&[], |command| {
        command.stderr(Stdio::piped());
        // SAFETY: setrlimit is async-signal-safe; the rlimit lives on this closure's stack.
        unsafe {
            command.pre_exec(|| {
                let mut limit = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                limit.rlim_cur = SYSTEMD_SOFT_NOFILE;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = daemon.take_stderr().expect("stderr is piped");
    let collected = log.clone();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("tcpstated: {line}");
            let mut log = collected.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    (daemon, log)
}

/// `(soft, hard)` RLIMIT_NOFILE of process `pid`, from /proc/<pid>/limits.
fn fd_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut numbers = line
        .split_whitespace()
        .filter_map(|word| word.parse::<u64>().ok());
    (numbers.next().unwrap(), numbers.next().unwrap())
}

/// A field of /proc/<pid>/status in kB (e.g. `VmRSS`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn ten_thousand_idle_connections_leave_scrapes_and_health_checks_answering() {
    const IDLE: usize = 10_000;
    assert!(
        raise_own_fd_limit() as usize > IDLE + 100,
        "the test needs a hard RLIMIT_NOFILE above {IDLE}"
    );
    let (daemon, log) = start_as_systemd_would();
    let pid = daemon.pid();
    let (soft, hard) = fd_limits(pid);
    assert_eq!(
        soft, hard,
        "tcpstated raises its soft fd limit to the hard one"
    );

    // Each connection sends the start of a request and nothing more.
    let mut idle = Vec::with_capacity(IDLE);
    let mut refused = None;
    for _ in 0..IDLE {
        match TcpStream::connect_timeout(&daemon.address, Duration::from_secs(2)) {
            Ok(mut stream) => {
                // The daemon may already have closed it for a newer one.
                let _ = stream.write_all(b"GET /metr");
                idle.push(stream);
            }
            Err(error) => {
                refused = Some(error);
                break;
            }
        }
    }
    eprintln!("{} idle connections opened", idle.len());

    let started = Instant::now();
    let scrape = daemon.get("/metrics");
    let took = started.elapsed();
    let Response { status, body } = scrape.unwrap_or_else(|error| {
        panic!(
            "/metrics did not answer with {} idle connections open: {error}",
            idle.len()
        )
    });
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("tcpstate_build_info"), "{body}");
    eprintln!("/metrics answered in {took:?}");
    let Response {
        status,
        body: health,
    } = daemon.get("/healthz").expect("/healthz answers");
    assert_eq!(status, 200, "{health}");
    assert!(
        refused.is_none(),
        "connection {} of {IDLE} failed: {refused:?}",
        idle.len() + 1
    );

    let rss = status_kib(pid, "VmRSS");
    let fds = open_fds(pid);
    eprintln!("after {IDLE} idle connections: VmRSS {rss} kB, {fds} open fds");
    assert!(
        rss < RSS_BOUND_KIB,
        "VmRSS {rss} kB, above the bound of {RSS_BOUND_KIB} kB"
    );
    assert!(fds < 512, "{fds} fds open: connections are not capped");
    assert!(
        eventually(Duration::from_secs(5), || log
            .lock()
            .unwrap()
            .contains("connection cap reached")),
        "no log line about the connection cap:\n{}",
        log.lock().unwrap()
    );
    drop(idle);
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn sigterm_ends_the_daemon_promptly_while_a_client_holds_a_half_sent_request() {
    let mut daemon = Daemon::start(&[]);
    let mut client = TcpStream::connect(daemon.address).unwrap();
    client
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: tcpstated\r\n")
        .unwrap();
    // The daemon has accepted it (it answers the next connection after it).
    assert_eq!(daemon.get("/healthz").unwrap().status, 200);

    let signalled = Instant::now();
    daemon.signal("TERM");
    let status = daemon.exit_within(Duration::from_secs(8));
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
    assert!(
        status.is_some_and(|status| status.success()),
        "tcpstated exits with 0 within 8 s of SIGTERM, whatever its clients do: {status:?}"
    );
    drop(client);
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn sighup_is_ignored_and_the_daemon_keeps_serving() {
    let mut daemon = Daemon::start_with(&[], |command| {
        command.stderr(Stdio::piped());
    });
    let mut stderr = daemon.take_stderr().expect("stderr is piped");
    daemon.signal("HUP");
    assert_eq!(
        daemon.exit_within(Duration::from_millis(500)),
        None,
        "SIGHUP ends tcpstated"
    );
    let Response {
        status,
        body: health,
    } = daemon.get("/healthz").unwrap();
    assert_eq!(status, 200, "{health}");
    assert!(daemon.stop().success(), "SIGTERM after SIGHUP exits with 0");
    let mut log = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
    assert!(
        log.contains("SIGHUP ignored") && log.contains("re-reads its web config file"),
        "the log says what to do instead: {log}"
    );
}

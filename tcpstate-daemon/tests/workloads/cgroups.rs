//! Sockets made by a process in groups named as kubelet and systemd name them: the client's
//! socket, the accepted socket (its listener's group, whoever accepts it) and the transitions
//! the peer drives (softirq, with another task on the CPU) all carry their owner's workload.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    process::Stdio,
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use tcpstate_testkit::Exposition;

use crate::{
    owners::{Groups, container_id, kubelet_group, pod_uid, workload_transitions},
    support::{
        Daemon, Transitions, UNRECORDED_EVENTS, eventually, expect, read_to_eof,
        recording_failures, rerun_once_after_unrecorded_events,
    },
};

const WAIT: Duration = Duration::from_secs(10);
const PORT: u16 = 26101;
const CLIENT_UNIT: &str = "tcpstate-test-client.service";

/// containerd's task config of a Kubernetes container: the CRI plugin's annotations.
fn containerd_config(namespace: &str, pod: &str, container: &str) -> String {
    format!(
        r#"{{"annotations": {{"io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-namespace": "{namespace}",
            "io.kubernetes.cri.sandbox-name": "{pod}",
            "io.kubernetes.cri.container-name": "{container}"}}}}"#
    )
}

/// Collects the daemon's log lines as they come.
fn collect_log(daemon: &mut Daemon) -> Arc<Mutex<String>> {
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = daemon.take_stderr().expect("the daemon's stderr is a pipe");
    let lines = log.clone();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut lines = lines.lock().unwrap();
            lines.push_str(&line);
            lines.push('\n');
        }
    });
    log
}

/// One connection from `client` to `listener`: the client shuts down first and the server
/// holds CLOSE_WAIT until `hold` says, then both close (the client's side ends in TIME_WAIT).
fn client_closes_first(listener: &TcpListener, mut client: TcpStream, hold: impl FnOnce()) {
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"ping").unwrap();
    server.read_exact(&mut [0; 4]).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    read_to_eof(&mut server, WAIT);
    hold();
    drop(server);
    read_to_eof(&mut client, WAIT);
}

fn sockets(scrape: &Exposition, state: &str, container: &str) -> f64 {
    let port = PORT.to_string();
    scrape.sum(
        "tcpstate_sockets",
        &[("port", &port), ("state", state), ("container", container)],
    )
}

#[test]
#[ignore = "needs root, a BPF-capable kernel and cgroup v2: run with `cargo xtask test`"]
fn each_socket_carries_the_workload_of_the_group_that_made_it() {
    rerun_once_after_unrecorded_events(|| {
        let (web_uid, web_id) = (pod_uid('a'), container_id('a'));
        let (lost_uid, lost_id) = (pod_uid('b'), container_id('b'));
        let web_pod = format!("web-{}", std::process::id());
        let runtime_state = std::env::temp_dir().join(format!("tcpstate-host-{PORT}"));
        let tasks = runtime_state.join("run/containerd/io.containerd.runtime.v2.task/k8s.io");
        for (id, config) in [
            (&web_id, containerd_config("shop", &web_pod, "nginx")),
            (&lost_id, "{ this is no JSON".to_owned()),
        ] {
            fs::create_dir_all(tasks.join(id)).unwrap();
            fs::write(tasks.join(id).join("config.json"), config).unwrap();
        }
        let web_group = kubelet_group(&web_uid, &web_id);
        let lost_group = kubelet_group(&lost_uid, &lost_id);
        let client_group = format!("/system.slice/{CLIENT_UNIT}");
        let mut groups = Groups::new();
        for group in [&web_group, &lost_group, &client_group] {
            groups.make(group);
        }

        let host_root = format!("--workloads.host-root={}", runtime_state.display());
        let port = format!("--port={PORT}");
        let mut daemon = Daemon::start_with(&["--workloads", &host_root, &port], |command| {
            command.stderr(Stdio::piped());
        });
        let log = collect_log(&mut daemon);
        let before = daemon.scrape();

        let address = ("127.0.0.1", PORT);
        let listener = groups.within(&web_group, || TcpListener::bind(address).unwrap());
        let client = groups.within(&client_group, || TcpStream::connect(address).unwrap());
        client_closes_first(&listener, client, || {
            // The server's CLOSE_WAIT (entered in softirq, on the client's FIN) and the
            // client's FIN_WAIT2 (on the server's ACK), each in its owner's gauge.
            let mut scrape = daemon.scrape();
            let held = |scrape: &Exposition| {
                (
                    sockets(scrape, "CLOSE_WAIT", "nginx"),
                    sockets(scrape, "FIN_WAIT2", CLIENT_UNIT),
                )
            };
            eventually(WAIT, || {
                scrape = daemon.scrape();
                held(&scrape) == (1.0, 1.0)
            });
            assert_eq!(
                held(&scrape),
                (1.0, 1.0),
                "CLOSE_WAIT (nginx), FIN_WAIT2 (client)"
            );
        });
        // A client whose container's runtime state is unreadable.
        let lost = groups.within(&lost_group, || TcpStream::connect(address).unwrap());
        client_closes_first(&listener, lost, || {});
        drop(listener);

        let web = ("shop", web_pod.as_str(), "nginx");
        let client = ("", "", CLIENT_UNIT);
        let lost_pod = format!("uid:{lost_uid}");
        let lost = ("", lost_pod.as_str(), &lost_id[..12]);
        let client_edges = |n| {
            expect(&[
                ("client", "CLOSE", "SYN_SENT", n),
                ("client", "SYN_SENT", "ESTABLISHED", n),
                ("client", "ESTABLISHED", "FIN_WAIT1", n),
                ("client", "FIN_WAIT1", "FIN_WAIT2", n),
                ("client", "FIN_WAIT2", "TIME_WAIT", n),
            ])
        };
        let want: BTreeMap<_, Transitions> = BTreeMap::from([
            (
                web,
                expect(&[
                    ("listener", "CLOSE", "LISTEN", 1),
                    ("listener", "LISTEN", "CLOSE", 1),
                    ("server", "LISTEN", "SYN_RECV", 2),
                    ("server", "SYN_RECV", "ESTABLISHED", 2),
                    ("server", "ESTABLISHED", "CLOSE_WAIT", 2),
                    ("server", "CLOSE_WAIT", "LAST_ACK", 2),
                    ("server", "LAST_ACK", "CLOSE", 2),
                ]),
            ),
            (client, client_edges(1)),
            (lost, client_edges(1)),
        ]);
        let exported = |scrape: &Exposition| {
            want.keys()
                .map(|workload| (*workload, workload_transitions(scrape, PORT, *workload)))
                .collect::<BTreeMap<_, _>>()
        };
        let mut after = daemon.scrape();
        eventually(WAIT, || {
            after = daemon.scrape();
            exported(&after) == want
        });
        let failures = recording_failures(&after, &before);
        if exported(&after) != want && !failures.is_empty() {
            panic!("{UNRECORDED_EVENTS} ({failures:?}): {:?}", exported(&after));
        }
        assert_eq!(exported(&after), want, "transitions by workload");
        let port = PORT.to_string();
        let web_durations = after.sum(
            "tcpstate_state_duration_seconds_count",
            &[
                ("port", &port),
                ("state", "CLOSE_WAIT"),
                ("container", "nginx"),
            ],
        );
        assert_eq!(web_durations, 2.0, "the server's CLOSE_WAIT durations");
        let log = log.lock().unwrap().clone();
        let complaints = log
            .matches("cannot read the container runtime's state")
            .count();
        assert_eq!(complaints, 1, "one line about the unreadable state:\n{log}");
        assert!(log.contains(&lost_id[..12]), "{log}");
        drop(daemon);
        let _ = fs::remove_dir_all(&runtime_state);
    });
}

//! A real container: runc (Debian's) starts busybox's `nc` in a kubelet-named cgroup with the
//! annotations CRI-O gives a Kubernetes container, in a network namespace of its own as a pod
//! has; the daemon, in the host's namespace as a DaemonSet's is, names the server's sockets
//! from runc's state on the host (its bundle's annotations).

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Shutdown, TcpStream},
    path::Path,
    time::Duration,
};

use tcpstate_testkit::Exposition;

use crate::{
    owners::{Container, container_id, pod_uid, workload_transitions},
    support::{
        Daemon, Netns, Transitions, UNRECORDED_EVENTS, eventually, expect, recording_failures,
        rerun_once_after_unrecorded_events,
    },
};

const WAIT: Duration = Duration::from_secs(10);
const PORT: u16 = 26111;

#[test]
#[ignore = "needs root, a BPF-capable kernel, runc and busybox-static: run with `cargo xtask test`"]
fn a_runc_containers_sockets_carry_its_pod_and_container_names() {
    rerun_once_after_unrecorded_events(|| {
        let netns = Netns::new(PORT);
        let (uid, id) = (pod_uid('c'), container_id('c'));
        let group = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/crio-{id}.scope",
            uid.replace('-', "_")
        );
        let pod = format!("echo-{}", std::process::id());
        let daemon = Daemon::start(&["--workloads", &format!("--port={PORT}")]);
        let before = daemon.scrape();
        let port = PORT.to_string();
        let container = Container::run(
            &id,
            &Path::new("/run/netns").join(netns.name()),
            &group,
            &[
                ("io.kubernetes.pod.namespace", "shop"),
                ("io.kubernetes.pod.name", &pod),
                ("io.kubernetes.pod.uid", &uid),
                ("io.kubernetes.container.name", "echo"),
            ],
            &["nc", "-l", "-p", &port, "-e", "cat"],
        );
        eventually(WAIT, || {
            netns
                .sockets()
                .iter()
                .any(|socket| socket.state == "LISTEN" && socket.local_port == PORT)
        });
        // The client: the test process, in the container's network namespace.
        netns.run(|| {
            let mut client = TcpStream::connect(("127.0.0.1", PORT)).expect("connect");
            client.write_all(b"ping").unwrap();
            client.shutdown(Shutdown::Write).unwrap();
            client.set_read_timeout(Some(WAIT)).unwrap();
            let mut echoed = Vec::new();
            client
                .read_to_end(&mut echoed)
                .expect("the echo, then the server's FIN");
            assert_eq!(echoed, b"ping");
        });

        let echo = ("shop", pod.as_str(), "echo");
        let want: BTreeMap<_, Transitions> = BTreeMap::from([(
            echo,
            expect(&[
                ("listener", "CLOSE", "LISTEN", 1),
                ("server", "LISTEN", "SYN_RECV", 1),
                ("server", "SYN_RECV", "ESTABLISHED", 1),
                ("server", "ESTABLISHED", "CLOSE_WAIT", 1),
                ("server", "CLOSE_WAIT", "LAST_ACK", 1),
                ("server", "LAST_ACK", "CLOSE", 1),
            ]),
        )]);
        // The listener may close when nc hands the connection to cat, or when the container
        // ends: its LISTEN -> CLOSE is not waited for.
        let server_side = |scrape: &Exposition| {
            let mut edges = workload_transitions(scrape, PORT, echo);
            edges.retain(|(role, from, _), _| !(role == "listener" && from == "LISTEN"));
            BTreeMap::from([(echo, edges)])
        };
        let mut after = daemon.scrape();
        eventually(WAIT, || {
            after = daemon.scrape();
            server_side(&after) == want
        });
        let failures = recording_failures(&after, &before);
        if server_side(&after) != want && !failures.is_empty() {
            panic!(
                "{UNRECORDED_EVENTS} ({failures:?}): {:?}",
                server_side(&after)
            );
        }
        assert_eq!(
            server_side(&after),
            want,
            "the container's sockets, by workload\n{}",
            daemon.scrape_text()
        );
        drop(container);
    });
}

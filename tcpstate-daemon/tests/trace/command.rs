//! `tcpstated trace`, the command: a scripted connection's transitions as JSON lines and as a
//! table, from a daemon over plain HTTP and over TLS with a client certificate and basic auth;
//! what it says when it cannot.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tcpstate_testkit::certificates::Certificates;

use crate::support::{
    Daemon, files::temporary_directory, free_local_address, rerun_once_after_unrecorded_events,
    tls::Client,
};
use crate::{CLOSE_WAIT_HOLD, WAIT, address, assert_one_connection, client_closes_first};

/// A running `tcpstated trace`, its stderr read line by line on a thread of its own.
struct Trace {
    child: Child,
    stderr: mpsc::Receiver<String>,
    /// What it wrote on stderr so far.
    said: Vec<String>,
}

impl Trace {
    fn start(args: &[&str]) -> Trace {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tcpstated"))
            .arg("trace")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpstated trace starts");
        let (sender, stderr) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        Trace {
            child,
            stderr,
            said: Vec::new(),
        }
    }

    /// Waits (bounded) for its notice that the stream started.
    fn until_reading(&mut self) {
        let deadline = Instant::now() + WAIT;
        while !self
            .said
            .iter()
            .any(|line| line.contains("tcpstated trace: reading"))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => self.said.push(line),
                Err(_) => panic!("tcpstated trace did not start reading: {:?}", self.said),
            }
        }
    }

    /// Its exit code, stdout and stderr, once it exits (within `WAIT`, or it is killed).
    fn finish(mut self) -> (Option<i32>, String, String) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "tcpstated trace did not exit within {WAIT:?}: {:?}",
                    self.said
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(200)) {
            self.said.push(line);
        }
        (status.code(), stdout, self.said.join("\n"))
    }
}

/// Runs `tcpstated trace` to its end (it must end by itself).
fn trace_once(args: &[&str]) -> (Option<i32>, String, String) {
    Trace::start(args).finish()
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn trace_prints_a_connections_transitions_as_json_lines_and_as_a_table() {
    rerun_once_after_unrecorded_events(|| {
        let (port, listen_port) = (27030, 27031);
        let daemon = Daemon::watching(&[port, listen_port]);
        let url = format!("http://{}", daemon.address);

        let mut json = Trace::start(&["--web.url", &url, "--port=27030", "--json", "--limit=12"]);
        json.until_reading();
        let listener = TcpListener::bind(address(port)).unwrap();
        client_closes_first(&listener, port, CLOSE_WAIT_HOLD);
        drop(listener);
        let (code, stdout, stderr) = json.finish();
        assert_eq!(code, Some(0), "{stderr}");
        let transitions: Vec<Value> = stdout
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect();
        assert_eq!(transitions.len(), 12, "{stdout}");
        assert_one_connection(&transitions);

        let mut table = Trace::start(&[
            "--web.url",
            &url,
            "--port",
            "27031",
            "--state=listen",
            "--limit",
            "2",
        ]);
        table.until_reading();
        drop(TcpListener::bind(address(listen_port)).unwrap());
        let (code, stdout, stderr) = table.finish();
        assert_eq!(code, Some(0), "{stderr}");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 3, "a header and two rows: {stdout}");
        assert!(lines[0].starts_with("TIME (UTC)"), "{stdout}");
        for (row, transition) in lines[1..]
            .iter()
            .zip(["CLOSE -> LISTEN", "LISTEN -> CLOSE"])
        {
            assert!(row.contains(transition), "{row}");
            assert!(row.contains("127.0.0.1:27031"), "{row}");
            assert!(row.contains("listener"), "{row}");
        }
    });
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn trace_says_what_went_wrong_and_what_to_do() {
    // No daemon there.
    let nobody = format!("http://{}", free_local_address());
    let (code, _, stderr) = trace_once(&["--web.url", &nobody]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot connect to tcpstated at") && stderr.contains("is the daemon"),
        "{stderr}"
    );
    // Usage errors, found before anything is sent.
    for (args, expected) in [
        (&["--state", "OPEN"][..], "`OPEN` is not a TCP state"),
        (&["--port", "http"][..], "`http` is not a port"),
        (&["--limit", "0"][..], "`0` is not a valid limit"),
        (
            &["--web.url", "https://127.0.0.1:9816"][..],
            "needs --tls.ca-file",
        ),
        (
            &["--web.url", "127.0.0.1:9816"][..],
            "not an http:// or https:// URL",
        ),
    ] {
        let (code, _, stderr) = trace_once(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // What only the daemon can tell.
    let daemon = Daemon::watching(&[27032]);
    let url = format!("http://{}", daemon.address);
    let (code, _, stderr) = trace_once(&["--web.url", &url, "--workload", "host"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("restart it with --workloads"), "{stderr}");
}

/// A web config file asking for TLS with a client certificate of `certificates`' CA, and basic
/// auth for `user` with `password`.
fn web_config(directory: &Path, certificates: &Certificates, user: &str, password: &str) -> String {
    let hash = bcrypt::hash(password, 4).unwrap();
    let text = format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n\
         basic_auth_users:\n  {user}: {hash}\n",
        certificates.server_cert.display(),
        certificates.server_key.display(),
        certificates.ca.display(),
    );
    let path = directory.join("web-config.yml");
    std::fs::write(&path, text).unwrap();
    format!("--web.config.file={}", path.display())
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn trace_reads_a_daemon_behind_tls_and_basic_auth() {
    let directory = temporary_directory("trace-tls");
    let certificates = Certificates::make(&directory, "trace").unwrap();
    let (user, password) = ("sre", "trace-me");
    let config = web_config(&directory, &certificates, user, password);
    let password_file = directory.join("password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    let client = Client {
        ca: Some(&certificates.ca),
        identity: Some((&certificates.client_cert, &certificates.client_key)),
        basic_auth: Some((user, password)),
    };
    let daemon = Daemon::start_until(&["--port=27033", &config], |address| {
        client
            .get(address, "/healthz")
            .is_ok_and(|answer| answer.response.status == 200)
    });
    let url = format!("https://localhost:{}", daemon.address.port());
    let path = |file: &Path| file.display().to_string();
    let (ca, cert, key, secret) = (
        path(&certificates.ca),
        path(&certificates.client_cert),
        path(&certificates.client_key),
        path(&password_file),
    );
    let tls = [
        "--web.url",
        url.as_str(),
        "--tls.ca-file",
        &ca,
        "--tls.cert-file",
        &cert,
        "--tls.key-file",
        &key,
    ];

    let mut trace = Trace::start(
        &[
            &tls[..],
            &[
                "--basic-auth.username",
                user,
                "--basic-auth.password-file",
                &secret,
            ],
            &["--port=27033", "--state=LISTEN", "--json", "--limit=2"],
        ]
        .concat(),
    );
    trace.until_reading();
    drop(TcpListener::bind(address(27033)).unwrap());
    let (code, stdout, stderr) = trace.finish();
    assert_eq!(code, Some(0), "{stderr}");
    let edges: Vec<(String, String)> = stdout
        .lines()
        .map(|line| {
            let transition: Value = serde_json::from_str(line).unwrap();
            let text = |key: &str| transition[key].as_str().unwrap().to_owned();
            (text("from"), text("to"))
        })
        .collect();
    assert_eq!(
        edges,
        [
            ("CLOSE".into(), "LISTEN".into()),
            ("LISTEN".into(), "CLOSE".into())
        ]
    );

    // Without the password: the daemon's 401, and what to give.
    let (code, _, stderr) = trace_once(&[&tls[..], &["--limit=1"]].concat());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("answered 401") && stderr.contains("--basic-auth.username"),
        "{stderr}"
    );
    // Plain HTTP to the TLS port.
    let plain = format!("http://127.0.0.1:{}", daemon.address.port());
    let (code, _, stderr) = trace_once(&["--web.url", &plain, "--limit=1"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("https://"), "{stderr}");
    std::fs::remove_dir_all(&directory).unwrap();
}

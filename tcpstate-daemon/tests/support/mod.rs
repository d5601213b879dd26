//! What the kernel tests share: a real `tcpstated` started on a free address, scraping its real
//! `/metrics`, and reading the exposition back into numbers.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// A running daemon, stopped (SIGTERM) when dropped.
pub struct Daemon {
    child: Child,
    pub address: SocketAddr,
}

impl Daemon {
    /// Starts tcpstated with `args` on a free loopback port and waits (bounded) until it is
    /// healthy.
    pub fn start(args: &[&str]) -> Daemon {
        let address = free_local_address();
        let child = Command::new(env!("CARGO_BIN_EXE_tcpstated"))
            .arg(format!("--web.listen-address={address}"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tcpstated starts");
        let mut daemon = Daemon { child, address };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("tcpstated exited during start-up with {status}");
            }
            if http_get(address, "/healthz").is_ok_and(|(status, _)| status == 200) {
                return daemon;
            }
            assert!(
                Instant::now() < deadline,
                "tcpstated did not become healthy within 20 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn scrape_text(&self) -> String {
        let (status, body) = http_get(self.address, "/metrics").expect("scrape");
        assert_eq!(status, 200, "{body}");
        body
    }

    pub fn scrape(&self) -> Metrics {
        Metrics::parse(&self.scrape_text())
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

//! A real Prometheus server (Debian's `prometheus`), started by a test on a free loopback port
//! with its own configuration and data directory, scraping one tcpstated every second and
//! evaluating the project's rules; queried through its HTTP API; stopped when dropped.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use tcpstate_testkit::http;

use super::{
    files::temporary_directory,
    free_local_address,
    json::{Value, items},
};

/// Longest wait for a read of an answer of Prometheus' API.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The scrape job name the alert rules expect (`up{job="tcpstate"}`).
pub const JOB: &str = "tcpstate";

pub struct Prometheus {
    child: Child,
    pub address: SocketAddr,
    directory: PathBuf,
}

/// One sample of an instant vector.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second and evaluating `rules` every second,
    /// and waits (bounded) until it is ready.
    pub fn start(target: SocketAddr, rules: &[PathBuf]) -> Prometheus {
        Prometheus::start_with(target, rules, "")
    }

    /// Like [`Prometheus::start`], with `job_settings` (YAML lines indented for the job:
    /// `scheme`, `tls_config`, `basic_auth`, ...) added to the scrape job.
    pub fn start_with(target: SocketAddr, rules: &[PathBuf], job_settings: &str) -> Prometheus {
        let directory = temporary_directory("prometheus");
        let rule_files: String = rules
            .iter()
            .map(|path| format!("  - {}\n", path.display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{rule_files}\
             scrape_configs:\n  - job_name: {JOB}\n{job_settings}    static_configs:\n      - targets: ['{target}']\n"
        );
        let config_file = directory.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write prometheus.yml");
        let address = free_local_address();
        let log = std::fs::File::create(directory.join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                directory.join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect(
                "prometheus starts (Debian package prometheus; `cargo xtask setup` installs it)",
            );
        let mut prometheus = Prometheus {
            child,
            address,
            directory,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!("prometheus exited with {status}:\n{}", prometheus.log());
            }
            if http::get(address, "/-/ready", READ_TIMEOUT).is_ok_and(|ready| ready.status == 200) {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 30 s:\n{}",
                prometheus.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.directory.join("prometheus.log")).unwrap_or_default()
    }

    /// GET an API path; the `data` member of a successful answer.
    pub fn api(&self, path_and_query: &str) -> Value {
        let http::Response { status, body } = http::get(self.address, path_and_query, READ_TIMEOUT)
            .unwrap_or_else(|error| panic!("GET {path_and_query}: {error}"));
        let mut answer: Value = serde_json::from_str(&body)
            .unwrap_or_else(|error| panic!("GET {path_and_query}: {error}: {body}"));
        assert!(
            status == 200 && answer["status"] == "success",
            "GET {path_and_query}: {status} {body}"
        );
        answer["data"].take()
    }

    /// An instant query evaluated at `time` (Unix seconds), or now.
    pub fn query_at(&self, expression: &str, time: Option<f64>) -> Vec<Sample> {
        let time = time
            .map(|time| format!("&time={time:.3}"))
            .unwrap_or_default();
        let data = self.api(&format!(
            "/api/v1/query?query={}{time}",
            percent_encode(expression)
        ));
        match data["resultType"].as_str() {
            Some("vector") => items(&data["result"])
                .iter()
                .map(|item| Sample {
                    labels: item["metric"]
                        .as_object()
                        .map(|labels| {
                            labels
                                .iter()
                                .map(|(name, value)| {
                                    (name.clone(), value.as_str().unwrap_or("").to_owned())
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    value: sample_value(&item["value"][1]),
                })
                .collect(),
            Some("scalar") => vec![Sample {
                labels: BTreeMap::new(),
                value: sample_value(&data["result"][1]),
            }],
            other => panic!("{expression}: unexpected result type {other:?}"),
        }
    }

    pub fn query(&self, expression: &str) -> Vec<Sample> {
        self.query_at(expression, None)
    }

    /// The value of a query that must return exactly one sample (None when it returns none).
    pub fn value_at(&self, expression: &str, time: Option<f64>) -> Option<f64> {
        let samples = self.query_at(expression, time);
        assert!(samples.len() <= 1, "{expression} returned {samples:?}");
        samples.first().map(|sample| sample.value)
    }

    pub fn value(&self, expression: &str) -> Option<f64> {
        self.value_at(expression, None)
    }

    /// Every rule Prometheus loaded: (group, rule object of /api/v1/rules).
    pub fn rules(&self) -> Vec<Value> {
        items(&self.api("/api/v1/rules")["groups"])
            .iter()
            .flat_map(|group| items(&group["rules"]).to_vec())
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

fn sample_value(value: &Value) -> f64 {
    match value.as_str() {
        Some("NaN") => f64::NAN,
        Some("+Inf") => f64::INFINITY,
        Some("-Inf") => f64::NEG_INFINITY,
        Some(text) => text.parse().expect("a number"),
        None => panic!("not a sample value: {value:?}"),
    }
}

pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Now, in Unix seconds (Prometheus' time).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

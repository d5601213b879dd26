//! The configurations compared: nothing on the hook, tcpstated, the empty program alone (the
//! floor), and a bpftrace script doing the same in-kernel aggregation (the peer).

use std::{
    fs::{self, File},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{process::Process, prometheus};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Config {
    NoTracer,
    Tcpstated,
    EmptyProgram,
    Bpftrace,
}

impl Config {
    pub fn name(self) -> &'static str {
        match self {
            Config::NoTracer => "no tracer",
            Config::Tcpstated => "tcpstated",
            Config::EmptyProgram => "empty program (floor)",
            Config::Bpftrace => "bpftrace peer",
        }
    }
}

/// The bpftrace peer: what tcpstated does in the kernel, written the way a bpftrace user would
/// (the classic tracepoint, a hash of per-socket entry times keyed by the socket's address):
/// counts by (old, new) state and a histogram of the time spent in the old state. The filter
/// keeps TCP only, as tcpstated does.
pub const BPFTRACE_PEER: &str = r#"tracepoint:sock:inet_sock_set_state
/args->protocol == 6/
{
  @transitions[args->oldstate, args->newstate] = count();
  $entered = @entered_ns[args->skaddr];
  if ($entered != 0) {
    @duration_ns[args->oldstate, args->newstate] = hist(nsecs - $entered);
  }
  if (args->newstate == 7) {
    delete(@entered_ns[args->skaddr]);
  } else {
    @entered_ns[args->skaddr] = nsecs;
  }
}

END
{
  clear(@entered_ns);
  clear(@transitions);
  clear(@duration_ns);
}
"#;

/// What the configurations run.
#[derive(Clone)]
pub struct Binaries {
    pub tcpstated: PathBuf,
    pub hook_floor: PathBuf,
    /// `tcpstate-witness`, for `cargo xtask bench witness`.
    pub witness: PathBuf,
    pub bpftrace: Option<PathBuf>,
    /// Where logs and the bpftrace script go.
    pub work_dir: PathBuf,
}

/// A configuration in place; dropping it stops the tracer.
pub struct Tracer {
    pub config: Config,
    process: Option<Process>,
    /// tcpstated's HTTP address.
    pub metrics: Option<SocketAddr>,
}

pub const START_TIMEOUT: Duration = Duration::from_secs(60);
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A loopback port free right now, for tcpstated's HTTP server.
fn free_local_address() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub fn log_file(work_dir: &Path, name: &str) -> anyhow::Result<File> {
    let path = work_dir.join(format!("{name}.log"));
    File::create(&path).with_context(|| format!("cannot create {}", path.display()))
}

impl Tracer {
    /// Starts `config` and returns once its programs are attached. `service_port` goes to
    /// tcpstated's --port, `daemon_args` are more of tcpstated's flags.
    pub fn start(
        config: Config,
        binaries: &Binaries,
        service_port: u16,
        daemon_args: &[&str],
    ) -> anyhow::Result<Tracer> {
        let mut tracer = Tracer {
            config,
            process: None,
            metrics: None,
        };
        match config {
            Config::NoTracer => {}
            Config::Tcpstated => {
                let address = free_local_address()?;
                let mut command = Command::new(&binaries.tcpstated);
                command
                    .arg(format!("--web.listen-address={address}"))
                    .arg(format!("--port={service_port}"))
                    .args(no_persistence(&binaries.tcpstated)?)
                    .args(daemon_args)
                    .env("RUST_LOG", "warn")
                    .stderr(log_file(&binaries.work_dir, "tcpstated")?);
                let mut process = Process::spawn("tcpstated", &mut command, false)?;
                wait_until_healthy(&mut process, address)?;
                tracer.metrics = Some(address);
                tracer.process = Some(process);
            }
            Config::EmptyProgram => {
                let mut command = Command::new(&binaries.hook_floor);
                command.stderr(log_file(&binaries.work_dir, "hook-floor")?);
                let mut process = Process::spawn("tcpstate-hook-floor", &mut command, false)?;
                process.wait_for_line("program_id=", START_TIMEOUT)?;
                tracer.process = Some(process);
            }
            Config::Bpftrace => {
                let bpftrace = binaries
                    .bpftrace
                    .as_ref()
                    .context("bpftrace is not installed")?;
                let script = binaries.work_dir.join("peer.bt");
                fs::write(&script, BPFTRACE_PEER)?;
                let mut command = Command::new(bpftrace);
                command
                    .arg(&script)
                    // Room for every live socket's entry time, so the peer never skips work
                    // because its hash is full (0.17's default is 4096 keys).
                    .env("BPFTRACE_MAP_KEYS_MAX", "262144")
                    .stderr(log_file(&binaries.work_dir, "bpftrace")?);
                let mut process = Process::spawn("bpftrace", &mut command, false)?;
                process.wait_for_line("Attaching", START_TIMEOUT)?;
                // bpftrace prints that line just before it attaches.
                thread::sleep(Duration::from_secs(1));
                tracer.process = Some(process);
            }
        }
        Ok(tracer)
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    pub fn stop(self) -> anyhow::Result<()> {
        self.stop_within(STOP_TIMEOUT)
    }

    fn stop_within(mut self, timeout: Duration) -> anyhow::Result<()> {
        if let Some(process) = self.process.take() {
            let stopped = process.stop(timeout);
            if let (Config::Bpftrace, Err(error)) = (self.config, &stopped) {
                // bpftrace's way out is its own (detach, END, print the maps): once it took
                // over 20 s on this shared host and was killed. Every figure of the run was
                // read before the stop, and the kill detaches its programs, so the run stands.
                eprintln!("bench: warning: {error:#}; the run's figures were read before the stop");
                return Ok(());
            }
            let status = stopped?;
            // tcpstated and the floor exit 0 on SIGTERM; bpftrace too.
            if !status.success() {
                bail!(
                    "{} exited with {status} when stopped (its log is in target/bench/)",
                    self.config.name()
                );
            }
        }
        Ok(())
    }
}

/// The flags that keep a benchmarked tcpstated from adopting an earlier run's pinned state or
/// leaving its own (and two of them, as `compare` runs, from contending for one): none for a
/// build older than pinning, which knows neither flag.
fn no_persistence(tcpstated: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let help = Command::new(tcpstated)
        .arg("--help")
        .output()
        .with_context(|| format!("cannot run {} --help", tcpstated.display()))?;
    if !String::from_utf8_lossy(&help.stdout).contains("--no-bpf.persist") {
        return Ok(Vec::new());
    }
    Ok(vec![
        "--no-bpf.persist".into(),
        format!(
            "--bpf.pin-path=/nonexistent/tcpstate-bench-{}",
            std::process::id()
        ),
    ])
}

fn wait_until_healthy(process: &mut Process, address: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if prometheus::healthy(address) {
            return Ok(());
        }
        if let Some(status) = process.exit_status()? {
            bail!("tcpstated exited with {status} at start-up: see target/bench/tcpstated.log");
        }
        if Instant::now() > deadline {
            bail!("tcpstated was not healthy within {START_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tracer that ignores SIGTERM, as one slow to exit does.
    fn deaf_tracer(config: Config) -> Tracer {
        let mut command = Command::new("sh");
        command.args(["-c", "trap '' TERM; echo ready; exec sleep 30"]);
        let mut process = Process::spawn("deaf tracer", &mut command, false).unwrap();
        process
            .wait_for_line("ready", Duration::from_secs(10))
            .unwrap();
        Tracer {
            config,
            process: Some(process),
            metrics: None,
        }
    }

    #[test]
    fn a_bpftrace_peer_slow_to_exit_is_killed_and_the_run_stands() {
        let stopped = deaf_tracer(Config::Bpftrace).stop_within(Duration::from_millis(300));
        assert!(stopped.is_ok(), "{stopped:?}");
    }

    #[test]
    fn tcpstated_slow_to_exit_fails_the_run() {
        let error = deaf_tracer(Config::Tcpstated)
            .stop_within(Duration::from_millis(300))
            .unwrap_err();
        assert!(format!("{error:#}").contains("did not finish"), "{error:#}");
    }
}

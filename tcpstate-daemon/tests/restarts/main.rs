//! Restarts and upgrades (issue 35): the kernel state pinned in the BPF filesystem is adopted
//! by the next daemon, so counters continue, open sockets keep their labels and entry times,
//! and no event is missed; a daemon of other programs continues its maps (`upgrade`); a second
//! daemon on the same state is refused; bad pinned states give a clean start. Real daemons on the real kernel, on loopback ports 27200-27299.
//!
//! Each test mounts a BPF filesystem of its own (`PinFs`): its daemons pin there, and
//! unmounting it at the end (passing or not) detaches whatever they left attached.
//!
//! They need root: `cargo test -p tcpstate-daemon --test restarts -- --ignored --test-threads=1`.

#[path = "../support/mod.rs"]
mod support;

mod adoption;
mod bad_input;
mod churn;
mod upgrade;

use std::{
    io::Read as _,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use support::Daemon;

/// Bound of every wait for something that happens at once or at the next poll.
const WAIT: Duration = Duration::from_secs(10);

/// A BPF filesystem mounted for one test, unmounted when dropped.
struct PinFs {
    mount: PathBuf,
}

impl PinFs {
    fn new(test: &str) -> PinFs {
        let mount =
            std::env::temp_dir().join(format!("tcpstate-pins-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&mount).expect("the mount point");
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&mount)
            .status()
            .expect("mount runs");
        assert!(status.success(), "mount -t bpf bpf {}", mount.display());
        PinFs { mount }
    }

    /// The pin path the test's daemons share.
    fn pin_path(&self) -> PathBuf {
        self.mount.join("tcpstate")
    }

    fn pin_flag(&self) -> String {
        format!("--bpf.pin-path={}", self.pin_path().display())
    }

    /// The pinned states under the pin path.
    fn states(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.pin_path())
            .map(|entries| {
                entries
                    .flatten()
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for PinFs {
    fn drop(&mut self) {
        // Lazy: a daemon of a failed test may still hold a descriptor under it.
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = std::fs::remove_dir(&self.mount);
    }
}

/// A daemon with `args` whose log the test reads: started, handed to `check` while it runs,
/// stopped, its stderr returned.
fn log_of_a_run(args: &[&str], check: impl FnOnce(&Daemon)) -> String {
    let mut running = Daemon::start_with(args, |command| {
        command.stderr(Stdio::piped()).env("RUST_LOG", "info");
    });
    assert_eq!(running.get("/healthz").unwrap().status, 200, "healthy");
    check(&running);
    let mut stderr = running.take_stderr().expect("piped stderr");
    assert!(running.stop().success());
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    log
}

/// A daemon on the test's pinned state, exporting `port`, with `extra` flags.
fn daemon(pins: &PinFs, port: u16, extra: &[&str]) -> Daemon {
    let mut args = vec![pins.pin_flag(), format!("--port={port}")];
    args.extend(extra.iter().map(|arg| arg.to_string()));
    Daemon::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

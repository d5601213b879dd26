//! Network namespaces of a test's own (loopback only): the sockets, sock_diag view,
//! /proc/net/netstat counters and nftables rules of a scenario, apart from the host's.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    thread,
};

use super::{SsSocket, run_checked};

/// Runs `job` on a thread that has entered the network namespace `/run/netns/<name>`, and returns
/// its result. Sockets keep the namespace they were created in, so what `job` creates (listeners,
/// connected streams) can then be used from any thread; only creation has to happen here.
pub fn run_in_netns<T: Send>(name: &str, job: impl FnOnce() -> T + Send) -> T {
    run_in_namespace_file(&format!("/run/netns/{name}"), job)
}

/// [`run_in_netns`] for the network namespace file at `path` (e.g. `/proc/<pid>/ns/net`).
pub fn run_in_namespace_file<T: Send>(path: &str, job: impl FnOnce() -> T + Send) -> T {
    thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let namespace =
                std::fs::File::open(path).unwrap_or_else(|error| panic!("open {path}: {error}"));
            // SAFETY: setns reads the descriptor, which stays open for the call, and moves only
            // this thread (spawned for the purpose, ended after `job`) into the namespace.
            let entered = unsafe {
                libc::setns(
                    std::os::fd::AsRawFd::as_raw_fd(&namespace),
                    libc::CLONE_NEWNET,
                )
            };
            assert_eq!(
                entered,
                0,
                "setns into {path}: {}",
                std::io::Error::last_os_error()
            );
            job()
        });
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A network namespace of the test's own, with loopback up: its sockets, sock_diag view,
/// /proc/net/netstat counters and nftables rules are private to it. Deleted when dropped (with
/// its rules; its sockets go when the test's last reference to them does).
pub struct Netns {
    name: String,
}

impl Netns {
    /// `tcpstate-<tag>-<pid>`: unique per test (the tag is the test's port) and per run.
    /// Namespaces left by an earlier run of the same test that was killed (its process gone)
    /// are removed first; those of a run still going are left alone.
    pub fn new(tag: u16) -> Netns {
        let prefix = format!("tcpstate-{tag}-");
        let listed = run_checked(Command::new("ip").args(["netns", "list"]));
        for stale in listed
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .filter(|name| {
                name.strip_prefix(&prefix)
                    .and_then(|pid| pid.parse::<u32>().ok())
                    .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            })
        {
            let _ = Command::new("ip").args(["netns", "delete", stale]).status();
        }
        let name = format!("{prefix}{}", std::process::id());
        run_checked(Command::new("ip").args(["netns", "add", &name]));
        let netns = Netns { name };
        netns.exec("ip", &["link", "set", "lo", "up"]);
        netns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// See [`run_in_netns`].
    pub fn run<T: Send>(&self, job: impl FnOnce() -> T + Send) -> T {
        run_in_netns(&self.name, job)
    }

    /// `ip netns exec <name> <program>`.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs `program args` in the namespace; panics (with its stderr) if it fails; its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        run_checked(self.command(program).args(args))
    }

    /// Loads an nftables ruleset (one `nft -f` transaction) into the namespace. The returned
    /// guard deletes `table inet <table>` when dropped or [`NftTable::remove`]d; deleting the
    /// namespace would remove it too.
    pub fn nft(&self, table: &str, ruleset: &str) -> NftTable<'_> {
        let mut nft = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft runs (Debian package nftables; cargo xtask setup installs it)");
        nft.stdin
            .take()
            .expect("stdin")
            .write_all(ruleset.as_bytes())
            .expect("write the ruleset");
        let output = nft.wait_with_output().expect("nft");
        assert!(
            output.status.success(),
            "nft rejected the ruleset:\n{ruleset}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        NftTable {
            netns: self,
            table: table.to_owned(),
            removed: false,
        }
    }

    /// Every TCP socket of the namespace, as `ss -tan` lists them.
    pub fn sockets(&self) -> Vec<SsSocket> {
        self.exec("ss", &["-tanH"])
            .lines()
            .filter_map(SsSocket::parse)
            .collect()
    }

    /// A `TcpExt` counter of the namespace's /proc/net/netstat (e.g. `ListenOverflows`).
    pub fn tcp_ext(&self, counter: &str) -> u64 {
        let netstat = self.exec("cat", &["/proc/net/netstat"]);
        let mut lines = netstat.lines().filter(|line| line.starts_with("TcpExt:"));
        let (names, values) = (
            lines.next().expect("TcpExt names"),
            lines.next().expect("values"),
        );
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == counter)
            .unwrap_or_else(|| panic!("no TcpExt {counter} in /proc/net/netstat"))
            .1
            .parse()
            .expect("a number")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// An nftables table in a test namespace, deleted when dropped.
pub struct NftTable<'a> {
    netns: &'a Netns,
    table: String,
    removed: bool,
}

impl NftTable<'_> {
    /// Deletes the table now (its rules stop at once).
    pub fn remove(mut self) {
        self.netns
            .exec("nft", &["delete", "table", "inet", &self.table]);
        self.removed = true;
    }

    /// Packets counted by the rule carrying `comment "<comment>"`.
    pub fn packets(&self, comment: &str) -> u64 {
        let listing = self
            .netns
            .exec("nft", &["list", "table", "inet", &self.table]);
        let needle = format!("comment \"{comment}\"");
        let rule = listing
            .lines()
            .find(|line| line.contains(&needle))
            .unwrap_or_else(|| panic!("no rule {needle} in\n{listing}"));
        rule.split_whitespace()
            .skip_while(|word| *word != "packets")
            .nth(1)
            .and_then(|count| count.parse().ok())
            .unwrap_or_else(|| panic!("no counter in {rule}"))
    }
}

impl Drop for NftTable<'_> {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self
                .netns
                .command("nft")
                .args(["delete", "table", "inet", &self.table])
                .stderr(Stdio::null())
                .status();
        }
    }
}

//! `cargo xtask <command>`: the project's automation. Each command first sets up what is
//! missing on this machine (see `setup`) and says what it is doing.
#![forbid(unsafe_code)]

mod lint;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (Debian packages, bpf-linker, the eBPF toolchain).
    Setup,
    /// Build the eBPF object and the daemon (release); the daemon embeds the object.
    Build,
    /// Build and start the daemon as root; arguments after `--` go to tcpstated.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Clippy over every crate, the eBPF crates included (with their own target and toolchain).
    Lint,
    /// Run every test: unit tests, then the tests that load the program into the real kernel.
    Test {
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
    /// Run the benchmark (bench/): tcpstated's overhead under churn, exactness and scaling.
    ///
    /// Builds tcpstated and the benchmark (release), then hands the arguments over to it: `cargo
    /// xtask bench --help` lists them; `--quick` is CI's smoke run (under 2 minutes).
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::ensure(),
        Task::Build => setup::ensure().and_then(|()| build()).map(|_| ()),
        Task::Run { args } => setup::ensure().and_then(|()| run(&args)),
        Task::Lint => setup::ensure().and_then(|()| lint::run()),
        Task::Test { filter } => setup::ensure().and_then(|()| test(filter.as_deref())),
        Task::Bench { args } => setup::ensure().and_then(|()| bench(&args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}

/// Runs a command in the workspace root, echoing it, and fails if it fails.
pub fn run_command(command: &mut Command) -> anyhow::Result<()> {
    command.current_dir(workspace_root());
    eprintln!("xtask: running {command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Builds the release daemon and returns its path.
fn build() -> anyhow::Result<PathBuf> {
    run_command(cargo().args(["build", "--release", "--package", "tcpstate-daemon"]))?;
    let binary = workspace_root().join("target/release/tcpstated");
    eprintln!("xtask: built {}", binary.display());
    Ok(binary)
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let binary = build()?;
    let mut command = if setup::is_root() {
        Command::new(&binary)
    } else {
        eprintln!("xtask: tcpstated needs root to load eBPF programs; using sudo");
        let mut sudo = Command::new("sudo");
        sudo.arg(&binary);
        sudo
    };
    command.args(args);
    eprintln!("xtask: starting {command:?} (Ctrl-C stops it)");
    let status = command
        .status()
        .with_context(|| format!("cannot start {command:?}"))?;
    // Ctrl-C reaches the daemon too, which exits cleanly; report its own failures only.
    if !status.success() && status.code().is_some() {
        bail!("tcpstated exited with {status}");
    }
    Ok(())
}

/// Builds tcpstated and the benchmark (release) and runs the benchmark with `args`; exits with
/// its status (it reports its own errors).
fn bench(args: &[String]) -> anyhow::Result<()> {
    run_command(cargo().args(["build", "--release"]).args([
        "--package",
        "tcpstate-daemon",
        "--package",
        "tcpstate-bench",
    ]))?;
    let bench = workspace_root().join("target/release/tcpstate-bench");
    let status = Command::new(&bench)
        .args(args)
        .status()
        .with_context(|| format!("cannot start {}", bench.display()))?;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

fn test(filter: Option<&str>) -> anyhow::Result<()> {
    // Unprivileged tests of every crate (pure logic, exposition, flag parsing).
    let mut unit = cargo();
    unit.args(["test", "--workspace"]).args([
        "--exclude",
        "tcpstate-ebpf",
        "--exclude",
        "tcpstate-bench-ebpf",
    ]);
    unit.args(["--", "--test-threads=2"]).args(filter);
    run_command(&mut unit)?;

    if !setup::is_root() {
        bail!(
            "the kernel tests load eBPF programs and need root: run `sudo -E cargo xtask test` \
             (the unit tests above passed)"
        );
    }
    // Tests that load the real program into the real kernel: `#[ignore]`d for a plain
    // `cargo test`, run here one at a time so each sees only its own traffic.
    let mut kernel = cargo();
    kernel.args(["test", "--package", "tcpstate-daemon"]);
    kernel.args([
        "--test",
        "kernel",
        "--test",
        "operations",
        "--test",
        "scenarios",
        "--test",
        "http",
        "--test",
        "workloads",
        "--test",
        "restarts",
        "--test",
        "trace",
    ]);
    kernel
        .args(["--", "--ignored", "--test-threads=1"])
        .args(filter);
    run_command(&mut kernel)?;
    // The benchmark's own kernel programs (its witness), against the real kernel too.
    let mut bench = cargo();
    bench.args(["test", "--package", "tcpstate-bench", "--test", "witness"]);
    bench
        .args(["--", "--ignored", "--test-threads=1"])
        .args(filter);
    run_command(&mut bench)
}

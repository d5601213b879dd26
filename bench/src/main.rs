//! `tcpstate-bench`, run by `cargo xtask bench` (which builds it and tcpstated, then hands over):
//! what tcpstated costs, measured against no tracer, the empty program on the same hook (the
//! floor) and a bpftrace peer, under loopback connection churn; whether it counted every
//! transition; and how its scrapes scale with tracked sockets. Writes docs/benchmarks.md
//! (`--quick`: target/bench/quick.md).
//!
//! Absolute figures on a shared 2-core machine drift from run to run, so every configuration
//! runs once per round, rounds repeat (A B C D, A B C D, ...), and the report gives medians and
//! per-round ratios. Throughput runs keep `kernel.bpf_stats_enabled` off (as in production: the
//! stats cost two clock reads per program run); separate cost runs turn it on to read each
//! program's run time per event.
//!
//! The benchmark's own tools sit beside this binary and are built with it: `tcpstate-hook-floor`
//! (the floor) and `tcpstate-witness` (`bench witness`); this binary also runs the load
//! generator (`churn`) and the connection holders (`hold`) as its own subprocesses.
#![forbid(unsafe_code)]

mod bpftrace;
mod churn;
mod compare;
mod expect;
mod hold;
mod process;
mod procfs;
mod prometheus;
mod report;
mod scale;
mod stats;
mod sysctl;
mod tracer;
mod witness;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use self::{
    churn::{ChurnArgs, ChurnReport, CloseMode},
    expect::Exactness,
    hold::HoldArgs,
    process::Process,
    procfs::{KernelWork, ProgramStats},
    sysctl::Sysctl,
    tracer::{Binaries, Config, Tracer},
};

/// Measure tcpstated's overhead under connection churn, its exactness and its scaling; writes
/// docs/benchmarks.md (`--quick`: a CI smoke run in under 2 minutes).
#[derive(Parser, Debug)]
#[command(
    name = "tcpstate-bench",
    bin_name = "cargo xtask bench",
    args_conflicts_with_subcommands = true
)]
pub struct BenchArgs {
    #[command(subcommand)]
    part: Option<Part>,
    /// Smoke run for CI (under 2 minutes): 3 rounds of 2 s, scale at 1k and 20k connections;
    /// writes target/bench/quick.md unless --output says otherwise.
    #[arg(long)]
    quick: bool,
    /// Rounds; each runs every configuration once [default: 5, --quick: 3].
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds of churn per throughput run [default: 10, --quick: 2].
    #[arg(long)]
    seconds: Option<f64>,
    /// Client threads of the load generator.
    #[arg(long, default_value_t = DEFAULT_CLIENTS)]
    clients: usize,
    /// Listener addresses (127.0.0.1, .2, ...) the clients spread over.
    #[arg(long, default_value_t = DEFAULT_ADDRESSES)]
    addresses: u8,
    /// Who closes the connections, and how.
    #[arg(long, value_enum, default_value_t = CloseMode::ClientFirst)]
    mode: CloseMode,
    /// Bytes exchanged per connection before the close.
    #[arg(long, default_value_t = 0)]
    exchange: u16,
    /// Connections held open for the scale figures, comma-separated; `0` skips them
    /// [default: 1000,100000,1000000, --quick: 1000,20000].
    #[arg(long, value_delimiter = ',')]
    scale: Option<Vec<u64>>,
    /// Network namespaces the scale's namespace levels spread their connections over,
    /// comma-separated; `0` skips them [default: 1,10,100, --quick: 1,10].
    #[arg(long, value_delimiter = ',')]
    namespaces: Option<Vec<usize>>,
    /// Connections the namespace levels hold in all [default: 100000, --quick: 10000].
    #[arg(long)]
    namespace_connections: Option<u64>,
    /// Leave the bpftrace peer out (it is installed with apt when missing otherwise).
    #[arg(long)]
    no_bpftrace: bool,
    /// Where to write the Markdown report [default: docs/benchmarks.md, --quick:
    /// target/bench/quick.md].
    #[arg(long)]
    output: Option<PathBuf>,
}

/// The benchmark's load: two client threads, eight listener addresses.
const DEFAULT_CLIENTS: usize = 2;
const DEFAULT_ADDRESSES: u8 = 8;

#[derive(Subcommand, Debug)]
enum Part {
    /// Run only the load generator (prints its report as key=value lines).
    Churn(ChurnArgs),
    /// Compare the per-event kernel cost of two tcpstated builds, attached at once to the same
    /// churn (to within a few nanoseconds, where separate runs differ by tens).
    Compare(compare::CompareArgs),
    /// Count each TCP state change through two kernel paths at once under the churn, the
    /// tracepoint and sock_ops' state callback: shows how many the tracepoint never delivered to
    /// any BPF program, and what each path costs.
    Witness(witness::WitnessArgs),
    /// Hold connections open, both sides (used by the scale figures).
    #[command(hide = true)]
    Hold(HoldArgs),
}

fn main() -> ExitCode {
    match run(BenchArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The directory `cargo xtask bench` runs in (paths in the report are relative to it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ sits in the workspace")
        .to_owned()
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn run(args: BenchArgs) -> anyhow::Result<()> {
    match &args.part {
        Some(Part::Churn(churn)) => return churn::main(churn),
        Some(Part::Compare(compare)) => return compare::run(compare),
        Some(Part::Witness(witness)) => return witness::run(witness),
        Some(Part::Hold(hold)) => return hold::main(hold),
        None => {}
    }
    if !is_root() {
        bail!(
            "the benchmark loads eBPF programs and changes kernel settings for its run: \
             run `sudo -E cargo xtask bench`"
        );
    }
    let plan = Plan::from_args(&args);
    let bpftrace = if args.no_bpftrace {
        None
    } else {
        bpftrace::peer()?
    };
    sysctl::restore_leftovers()?;
    let work_dir = workspace_root().join("target/bench");
    fs::create_dir_all(&work_dir)?;
    let context = Context::prepare(&plan, bpftrace, work_dir)?;

    let results = measure(&plan, &context)?;
    let summary = report::Summary::of(&results);
    let markdown = report::render(&results, &summary);
    let output = plan.output.clone();
    report::write_preserving_notes(&output, &markdown)?;
    println!("{markdown}");
    eprintln!("bench: wrote {}", output.display());
    let faults = summary.own_faults();
    if !faults.is_empty() {
        bail!(
            "tcpstated miscounted beyond the events the kernel ran no program for: {}; see the \
             exactness section of {}",
            faults.join("; "),
            output.display()
        );
    }
    if !summary.exact() {
        eprintln!(
            "bench: note: not exact: the kernel ran no program for some events (its tracepoint \
             dispatch skips a few under saturation); tcpstated found and counted each one, see \
             the exactness section of {}",
            output.display()
        );
    }
    Ok(())
}

/// The tracepoint every configuration hooks.
const HOOK: &str = "inet_sock_set_state";

/// The pause after a tracer starts, before its run: the start-up's own work (BTF parsing,
/// verification) leaves the CPUs.
const START_UP_SETTLE: Duration = Duration::from_millis(300);
/// The pause after the churn, before reading the programs' counters: the last connections'
/// final transitions run in softirq right after the close.
const LAST_EVENTS_SETTLE: Duration = Duration::from_millis(200);

/// What one invocation measures.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    pub rounds: usize,
    pub seconds: f64,
    /// Cost runs are shorter: a per-event average settles within a second or two.
    pub cost_seconds: f64,
    pub clients: usize,
    pub addresses: u8,
    pub mode: CloseMode,
    pub exchange: u16,
    pub scale: Vec<u64>,
    /// Namespace counts of the namespace levels, and the connections they hold in all.
    pub namespaces: Vec<usize>,
    pub namespace_connections: u64,
    pub scrapes: usize,
    pub output: PathBuf,
}

impl Plan {
    fn from_args(args: &BenchArgs) -> Plan {
        let quick = args.quick;
        let seconds = args.seconds.unwrap_or(if quick { 2.0 } else { 10.0 });
        let scale = args
            .scale
            .clone()
            .unwrap_or_else(|| {
                if quick {
                    vec![1_000, 20_000]
                } else {
                    vec![1_000, 100_000, 1_000_000]
                }
            })
            .into_iter()
            .filter(|connections| *connections > 0)
            .collect();
        Plan {
            quick,
            rounds: args.rounds.unwrap_or(if quick { 3 } else { 5 }).max(1),
            seconds,
            cost_seconds: (seconds / 2.0).clamp(1.0, 5.0),
            clients: args.clients,
            addresses: args.addresses,
            mode: args.mode,
            exchange: args.exchange,
            scale,
            namespaces: args
                .namespaces
                .clone()
                .unwrap_or_else(|| if quick { vec![1, 10] } else { vec![1, 10, 100] })
                .into_iter()
                .filter(|count| *count > 0)
                .collect(),
            namespace_connections: args.namespace_connections.unwrap_or(if quick {
                10_000
            } else {
                100_000
            }),
            scrapes: if quick { 4 } else { 10 },
            output: args.output.clone().unwrap_or_else(|| {
                workspace_root().join(if quick {
                    "target/bench/quick.md"
                } else {
                    "docs/benchmarks.md"
                })
            }),
        }
    }

    /// Runs of the benchmark's default load, no scale levels (`bench compare`, `bench witness`).
    fn with_default_load(rounds: usize, seconds: f64) -> Plan {
        Plan {
            quick: false,
            rounds,
            seconds,
            cost_seconds: seconds,
            clients: DEFAULT_CLIENTS,
            addresses: DEFAULT_ADDRESSES,
            mode: CloseMode::ClientFirst,
            exchange: 0,
            scale: Vec::new(),
            namespaces: Vec::new(),
            namespace_connections: 0,
            scrapes: 0,
            output: PathBuf::new(),
        }
    }

    pub fn configs(&self, bpftrace: bool) -> Vec<Config> {
        let mut configs = vec![Config::NoTracer, Config::Tcpstated, Config::EmptyProgram];
        if bpftrace {
            configs.push(Config::Bpftrace);
        }
        configs
    }
}

/// What `bench compare` and `bench witness` (`part`) share before their rounds: root, leftover
/// sysctls restored, the default load's plan and the binaries.
fn prepare_default_load(
    part: &str,
    rounds: usize,
    seconds: f64,
) -> anyhow::Result<(Plan, Context)> {
    if !is_root() {
        bail!(
            "`bench {part}` loads eBPF programs and turns on kernel.bpf_stats_enabled for its \
             run: run `sudo -E cargo xtask bench {part} ...`"
        );
    }
    sysctl::restore_leftovers()?;
    let plan = Plan::with_default_load(rounds, seconds);
    let work_dir = workspace_root().join("target/bench");
    fs::create_dir_all(&work_dir)?;
    let context = Context::prepare(&plan, None, work_dir)?;
    Ok((plan, context))
}

/// What the runs share: binaries, the service port, the kernel settings held for the run.
pub struct Context {
    pub binaries: Binaries,
    /// This binary, which runs the load generator and the holders.
    pub bench: PathBuf,
    /// The port every listener of the benchmark uses, passed to tcpstated's --port.
    pub port: u16,
    bpf_stats: Sysctl,
    _tw_reuse: Option<Sysctl>,
}

impl Context {
    fn prepare(
        plan: &Plan,
        bpftrace: Option<PathBuf>,
        work_dir: PathBuf,
    ) -> anyhow::Result<Context> {
        let bench = std::env::current_exe().context("cannot find the benchmark's own binary")?;
        if cfg!(debug_assertions) {
            eprintln!(
                "bench: warning: a debug build runs the load generator, which then makes less \
                 churn: run the benchmark with `cargo xtask bench`"
            );
        }
        // `cargo xtask bench` builds tcpstated and the benchmark's tools beside this binary.
        let beside = |name: &str| -> anyhow::Result<PathBuf> {
            let path = bench.with_file_name(name);
            if !path.is_file() {
                bail!(
                    "no {} beside the benchmark: run it with `cargo xtask bench`, which builds it",
                    path.display()
                );
            }
            Ok(path)
        };
        let holders = plan
            .scale
            .iter()
            .map(|connections| scale::holders_for(*connections))
            .max();
        let port = free_service_port(plan.addresses, holders.unwrap_or(0))?;
        let bpf_stats = Sysctl::take("kernel.bpf_stats_enabled")?;
        bpf_stats.set("0")?;
        // Client-first churn leaves TIME_WAIT sockets; connect() may reuse their ports on
        // loopback after a second only if tcp_tw_reuse allows it (2, the default, does).
        let tw_reuse = if sysctl::read("net.ipv4.tcp_tw_reuse")? == "0" {
            let guard = Sysctl::take("net.ipv4.tcp_tw_reuse")?;
            guard.set("2")?;
            Some(guard)
        } else {
            None
        };
        Ok(Context {
            binaries: Binaries {
                tcpstated: beside("tcpstated")?,
                hook_floor: beside("tcpstate-hook-floor")?,
                witness: beside("tcpstate-witness")?,
                bpftrace,
                work_dir,
            },
            bench,
            port,
            bpf_stats,
            _tw_reuse: tw_reuse,
        })
    }
}

/// A port free on the churn's listener addresses and the holders', below the ephemeral range
/// (so no client's source port ever equals it).
fn free_service_port(churn_addresses: u8, holders: usize) -> anyhow::Result<u16> {
    let start = (std::process::id() % 1_000) as u16;
    'candidates: for offset in 0..1_000 {
        let port = 28_000 + (start + offset) % 1_000;
        let addresses = (0..churn_addresses)
            .map(|index| churn::listener_address(index, port))
            .chain((0..holders).map(|index| hold::holder_address(index as u16, port)));
        let mut held = Vec::new();
        for address in addresses {
            match TcpListener::bind(address) {
                Ok(listener) => held.push(listener),
                Err(_) => continue 'candidates,
            }
        }
        return Ok(port);
    }
    bail!("no port in 28000-28999 is free on the benchmark's loopback addresses")
}

/// One run of one configuration.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub round: usize,
    pub config: Config,
    /// A cost run (bpf_stats on) rather than a throughput run.
    pub cost_run: bool,
    pub churn: ChurnReport,
    /// The tracer's programs' work, when it has programs.
    pub kernel: Option<KernelWork>,
    pub programs: BTreeMap<u32, ProgramStats>,
    pub daemon: Option<DaemonFigures>,
}

/// What tcpstated itself showed in a run.
#[derive(Debug, Clone, Default)]
pub struct DaemonFigures {
    /// CPU time while the churn ran (nobody scraped).
    pub cpu_during_churn_ns: u64,
    pub peak_rss_bytes: u64,
    pub exactness: Exactness,
    /// How long after the churn its last transitions took to show (up to [`SETTLE_LIMIT`]).
    pub settle: Duration,
    pub failures: BTreeMap<String, u64>,
    /// Events the second program recorded because the kernel skipped the primary one.
    pub nested_events: u64,
    /// Events the kernel skipped for each program (already running on the CPU).
    pub primary_misses: u64,
    pub nested_misses: u64,
}

/// Everything measured, for the report.
#[derive(Debug, Clone)]
pub struct Results {
    pub plan: Plan,
    pub environment: Environment,
    pub configs: Vec<Config>,
    pub runs: Vec<RunResult>,
    pub scale: scale::ScaleOutcome,
    /// Other processes seen with programs on the hook during the runs.
    pub other_programs: BTreeSet<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub machine: String,
    pub kernel: String,
    pub date: String,
    pub commit: String,
}

fn measure(plan: &Plan, context: &Context) -> anyhow::Result<Results> {
    let configs = plan.configs(context.binaries.bpftrace.is_some());
    // Scale first: the churn leaves up to net.ipv4.tcp_max_tw_buckets timewait sockets for a
    // minute, and tcpstated's sock_diag polls walk them, which would blur how its scrapes grow
    // with the sockets it tracks.
    // The quick run does not wait for the host's timewait sockets to expire (up to a minute).
    let mut scale = scale::measure(context, &plan.scale, plan.scrapes, !plan.quick)?;
    scale::measure_namespaces(
        context,
        plan.namespace_connections,
        &plan.namespaces,
        plan.scrapes,
        &mut scale,
    )?;
    let mut runs = Vec::new();
    let mut other_programs = BTreeSet::new();
    for round in 0..plan.rounds {
        // Rotating the order keeps any position effect (caches, a neighbour's burst) from
        // always landing on the same configuration.
        let mut order = configs.clone();
        order.rotate_left(round % configs.len());
        other_programs.extend(procfs::other_programs_on(HOOK, &[]));
        for &config in &order {
            eprintln!(
                "bench: round {}/{}: {} (throughput)",
                round + 1,
                plan.rounds,
                config.name()
            );
            runs.push(measure_run(plan, context, round, config, false)?);
        }
        context.bpf_stats.set("1")?;
        let costs: anyhow::Result<Vec<_>> = order
            .iter()
            .filter(|config| **config != Config::NoTracer)
            .map(|&config| {
                eprintln!(
                    "bench: round {}/{}: {} (kernel cost)",
                    round + 1,
                    plan.rounds,
                    config.name()
                );
                measure_run(plan, context, round, config, true)
            })
            .collect();
        context.bpf_stats.set("0")?;
        runs.extend(costs?);
    }
    Ok(Results {
        plan: plan.clone(),
        environment: Environment::here(),
        configs,
        runs,
        scale,
        other_programs,
    })
}

fn measure_run(
    plan: &Plan,
    context: &Context,
    round: usize,
    config: Config,
    cost_run: bool,
) -> anyhow::Result<RunResult> {
    // The raw view: the kernel's own per-event sequence, which the load generator's flows
    // predict exactly. The kernel programs do the same work in either view; the logical view
    // only adds sock_diag polls at scrape time (measured in the scale runs). The slot table
    // sized as README says, about twice the sockets between two scrapes: a run makes some
    // 220,000 with no scrape, and the kernel's per-CPU cookie batches can make a run's
    // cookies span more than the default 262,144 slots, which sends thousands of handoffs
    // through the displaced ring (1,024 per CPU) and loses some.
    let tracer = Tracer::start(
        config,
        &context.binaries,
        context.port,
        &["--transitions.view=raw", "--sockets.slots=524288"],
    )?;
    thread::sleep(START_UP_SETTLE);
    let pid = tracer.pid();
    // The per-event cost counts the programs on inet_sock_set_state (tcpstated also has
    // programs on the reset and SYN-ACK tracepoints, which this churn rarely fires).
    let on_hook = match pid {
        Some(pid) => procfs::programs_on(pid, HOOK)?,
        None => BTreeSet::new(),
    };
    let hook_programs = |pid: u32| -> anyhow::Result<BTreeMap<u32, ProgramStats>> {
        procfs::programs_among(pid, &on_hook)
    };
    let programs_before = match pid {
        Some(pid) => hook_programs(pid)?,
        None => BTreeMap::new(),
    };
    let cpu_before = pid.map(procfs::cpu_time_ns).transpose()?;

    let seconds = if cost_run {
        plan.cost_seconds
    } else {
        plan.seconds
    };
    let churn = run_churn(plan, context, seconds)?;

    let cpu_after = pid.map(procfs::cpu_time_ns).transpose()?;
    thread::sleep(LAST_EVENTS_SETTLE);
    let programs = match pid {
        Some(pid) => hook_programs(pid)?,
        None => BTreeMap::new(),
    };
    let kernel = pid.map(|_| KernelWork::between(&programs_before, &programs));
    let daemon = match (config, tracer.metrics, pid) {
        (Config::Tcpstated, Some(address), Some(pid)) => {
            // Peak memory before the settling scrapes (each of which also polls sock_diag).
            let peak_rss_bytes = procfs::peak_rss_bytes(pid)?;
            let (text, samples, exactness, settle) = settled_counts(address, &churn, context.port)?;
            // Kept for a post-mortem of any discrepancy (target/bench/scrapes/).
            let scrapes = context.binaries.work_dir.join("scrapes");
            fs::create_dir_all(&scrapes)?;
            let kind = if cost_run { "cost" } else { "throughput" };
            fs::write(
                scrapes.join(format!("round-{}-{kind}.prom", round + 1)),
                text,
            )?;
            let misses = |program: &str| {
                samples.sum(
                    "tcpstate_bpf_program_recursion_misses_total",
                    &[("program", program)],
                ) as u64
            };
            Some(DaemonFigures {
                cpu_during_churn_ns: cpu_after
                    .unwrap_or(0)
                    .saturating_sub(cpu_before.unwrap_or(0)),
                peak_rss_bytes,
                exactness,
                settle,
                failures: samples.recording_failures(),
                nested_events: samples.sum("tcpstate_nested_events_recorded_total", &[]) as u64,
                primary_misses: misses("primary"),
                nested_misses: misses("nested"),
            })
        }
        _ => None,
    };
    tracer.stop()?;
    Ok(RunResult {
        round,
        config,
        cost_run,
        churn,
        kernel,
        programs,
        daemon,
    })
}

/// Longest wait for the last transitions of a run to show in tcpstated's counts. Normally they
/// are there at once; a segment dropped under load (loopback's backlog holds 1000 packets per
/// CPU) delays a connection's end by a retransmission timeout (200 ms and up).
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// Scrapes until tcpstated's counts match what the churn must have produced, or
/// [`SETTLE_LIMIT`] passes: the last scrape (text and samples), the comparison, and how long
/// it took.
fn settled_counts(
    address: std::net::SocketAddr,
    churn: &ChurnReport,
    port: u16,
) -> anyhow::Result<(String, prometheus::Exposition, Exactness, Duration)> {
    let started = std::time::Instant::now();
    let port = port.to_string();
    loop {
        let text = prometheus::scrape_text(address)?;
        let samples = prometheus::Exposition::parse(&text)?;
        let counts = samples.transitions(&[("port", &port), ("family", "ipv4")]);
        let exactness = expect::check(churn, &counts);
        if exactness.is_exact() || started.elapsed() >= SETTLE_LIMIT {
            return Ok((text, samples, exactness, started.elapsed()));
        }
        thread::sleep(Duration::from_millis(250));
    }
}

fn run_churn(plan: &Plan, context: &Context, seconds: f64) -> anyhow::Result<ChurnReport> {
    let mut command = Command::new(&context.bench);
    command
        .args(["churn", "--port", &context.port.to_string()])
        .args(["--addresses", &plan.addresses.to_string()])
        .args(["--clients", &plan.clients.to_string()])
        .args(["--seconds", &seconds.to_string()])
        .args(["--mode", plan.mode.name()])
        .args(["--exchange", &plan.exchange.to_string()]);
    let process = Process::spawn("the load generator", &mut command, false)?;
    let (status, output) =
        process.finish(Duration::from_secs_f64(seconds) + Duration::from_secs(60))?;
    if !status.success() {
        bail!("the load generator failed ({status}):\n{output}");
    }
    let report = ChurnReport::parse(&output)?;
    if report.other_errors > 0 || report.connect_errors > 0 {
        eprintln!(
            "bench: warning: the load generator saw errors: {} (connect errors: {}, others: {})",
            report.error_kinds, report.connect_errors, report.other_errors
        );
    }
    Ok(report)
}

impl Environment {
    fn here() -> Environment {
        let command_output = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .current_dir(workspace_root())
                .output()
                .ok()
                .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
                .unwrap_or_default()
        };
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|line| {
                line.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, name)| name.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cpus = thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(0);
        let memory = procfs::parse_kilobytes(
            &fs::read_to_string("/proc/meminfo").unwrap_or_default(),
            "MemTotal",
        )
        .unwrap_or(0) as f64
            / f64::from(1u32 << 30);
        let mut commit = command_output("git", &["rev-parse", "--short", "HEAD"]);
        if !command_output("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
            commit.push_str(" (with uncommitted changes)");
        }
        Environment {
            machine: format!("{model}, {cpus} CPUs, {memory:.1} GiB RAM"),
            kernel: command_output("uname", &["-srvm"]),
            date: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            commit,
        }
    }
}

/// Paths in the report are relative to the workspace.
pub fn relative(path: &Path) -> String {
    path.strip_prefix(workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

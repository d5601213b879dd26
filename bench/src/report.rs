//! From runs to figures (medians, per-round ratios, targets met or not) and to the Markdown
//! written to docs/benchmarks.md.

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::Context as _;

use super::{
    Results, RunResult,
    expect::Exactness,
    relative,
    stats::{MedianInterval, median, median_interval, paired_ratios},
    tracer::Config,
};

/// The targets (issue 4).
pub const MIN_THROUGHPUT_RATIO: f64 = 0.95;
pub const MAX_COST_VS_FLOOR: f64 = 2.5;
pub const MAX_COST_VS_BPFTRACE: f64 = 1.0 / 3.0;
pub const MAX_SCRAPE_GROWTH: f64 = 1.5;
pub const MAX_SCRAPE_MS: f64 = 100.0;
/// "CPU ~0 while idle under churn": under a millisecond per second (0.1% of one CPU).
pub const MAX_IDLE_CPU_MS_PER_SECOND: f64 = 1.0;
pub const MAX_PEAK_RSS_BYTES: u64 = 30_000_000;

/// Where hand-written notes start; the benchmark keeps everything from here on when it rewrites
/// the file.
pub const NOTES_MARKER: &str = "<!-- Everything below this line is written by hand and kept when `cargo xtask bench` rewrites the file. -->";

#[derive(Debug, Clone, Default)]
pub struct ConfigFigures {
    pub config: Option<Config>,
    pub throughput_runs: usize,
    pub median_connections_per_second: Option<f64>,
    pub ratio_to_untraced: Option<f64>,
    /// Where the median of the per-round ratios lies, given their spread (for each ratio).
    pub ratio_to_untraced_interval: Option<MedianInterval>,
    pub cost_runs: usize,
    pub median_ns_per_event: Option<f64>,
    pub ratio_to_floor: Option<f64>,
    pub ratio_to_floor_interval: Option<MedianInterval>,
    pub ratio_to_bpftrace: Option<f64>,
    pub ratio_to_bpftrace_interval: Option<MedianInterval>,
    pub recursion_misses: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Target {
    pub what: &'static str,
    pub measured: String,
    /// `None`: not measured in this invocation. For a ratio, from its median.
    pub met: Option<bool>,
    /// The ratio's confidence interval spans the line: the rounds cannot say on which side the
    /// true median lies.
    pub inside_noise: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub configs: Vec<ConfigFigures>,
    pub exactness: Exactness,
    pub failures: BTreeMap<String, u64>,
    pub load_errors: u64,
    pub daemon_runs: usize,
    pub daemon_cpu_ms_per_churn_second: Option<f64>,
    pub daemon_peak_rss_bytes: Option<u64>,
    pub nested_events: u64,
    /// tcpstated runs whose nested-event program caught fewer events than the kernel skipped
    /// for the primary program.
    pub runs_with_uncaught_misses: usize,
    /// Verified instructions of tcpstated's programs, in load order (primary first).
    pub verified_instructions: Vec<u64>,
    pub targets: Vec<Target>,
}

/// Per round, the figure `value` gives for `config`'s runs of the given kind (`None` where the
/// round has no such run).
fn by_round(
    results: &Results,
    config: Config,
    cost_run: bool,
    value: impl Fn(&RunResult) -> Option<f64>,
) -> Vec<Option<f64>> {
    (0..results.plan.rounds)
        .map(|round| {
            results
                .runs
                .iter()
                .find(|run| run.round == round && run.config == config && run.cost_run == cost_run)
                .and_then(&value)
        })
        .collect()
}

fn present(values: &[Option<f64>]) -> Vec<f64> {
    values.iter().flatten().copied().collect()
}

impl Summary {
    pub fn of(results: &Results) -> Summary {
        let throughput = |config| {
            by_round(results, config, false, |run| {
                Some(run.churn.connections_per_second())
            })
        };
        let cost = |config| {
            by_round(results, config, true, |run| {
                run.kernel?.nanoseconds_per_event()
            })
        };
        let untraced = throughput(Config::NoTracer);
        let floor = cost(Config::EmptyProgram);
        let bpftrace = cost(Config::Bpftrace);
        let configs: Vec<ConfigFigures> = results
            .configs
            .iter()
            .map(|&config| {
                let runs = throughput(config);
                let costs = cost(config);
                // Per round, against each reference (none against itself).
                let ratios = |values: &[Option<f64>], reference: &[Option<f64>], of: Config| {
                    if config == of {
                        Vec::new()
                    } else {
                        paired_ratios(values, reference)
                    }
                };
                let to_untraced = ratios(&runs, &untraced, Config::NoTracer);
                let to_floor = ratios(&costs, &floor, Config::EmptyProgram);
                let to_bpftrace = ratios(&costs, &bpftrace, Config::Bpftrace);
                ConfigFigures {
                    config: Some(config),
                    throughput_runs: present(&runs).len(),
                    median_connections_per_second: median(&present(&runs)),
                    ratio_to_untraced: median(&to_untraced),
                    ratio_to_untraced_interval: median_interval(&to_untraced),
                    cost_runs: present(&costs).len(),
                    median_ns_per_event: median(&present(&costs)),
                    ratio_to_floor: median(&to_floor),
                    ratio_to_floor_interval: median_interval(&to_floor),
                    ratio_to_bpftrace: median(&to_bpftrace),
                    ratio_to_bpftrace_interval: median_interval(&to_bpftrace),
                    recursion_misses: results
                        .runs
                        .iter()
                        .filter(|run| run.config == config)
                        .filter_map(|run| run.kernel.map(|work| work.recursion_misses))
                        .sum(),
                }
            })
            .collect();

        let mut summary = Summary {
            configs,
            ..Summary::default()
        };
        let mut cpu_ns = 0u64;
        let mut churn_seconds = 0.0;
        for run in &results.runs {
            summary.load_errors += run.churn.other_errors;
            let Some(daemon) = &run.daemon else { continue };
            summary.daemon_runs += 1;
            summary.exactness.accumulate(&daemon.exactness);
            for (reason, count) in &daemon.failures {
                *summary.failures.entry(reason.clone()).or_default() += count;
            }
            summary.nested_events += daemon.nested_events;
            if daemon.nested_events < daemon.primary_misses {
                summary.runs_with_uncaught_misses += 1;
            }
            cpu_ns += daemon.cpu_during_churn_ns;
            churn_seconds += run.churn.seconds;
            summary.daemon_peak_rss_bytes = Some(
                summary
                    .daemon_peak_rss_bytes
                    .unwrap_or(0)
                    .max(daemon.peak_rss_bytes),
            );
            if summary.verified_instructions.is_empty() {
                summary.verified_instructions = run
                    .programs
                    .values()
                    .map(|program| program.verified_instructions)
                    .collect();
            }
        }
        if churn_seconds > 0.0 {
            summary.daemon_cpu_ms_per_churn_second = Some(cpu_ns as f64 / 1e6 / churn_seconds);
        }
        for level in &results.scale.levels {
            summary.daemon_peak_rss_bytes = Some(
                summary
                    .daemon_peak_rss_bytes
                    .unwrap_or(0)
                    .max(level.peak_rss_bytes),
            );
        }
        summary.targets = targets(&summary, results);
        summary
    }

    pub fn figures(&self, config: Config) -> Option<&ConfigFigures> {
        self.configs
            .iter()
            .find(|figures| figures.config == Some(config))
    }

    pub fn failure_count(&self) -> u64 {
        self.failures.values().sum()
    }

    /// No transition lost or miscounted, no recording failure.
    pub fn exact(&self) -> bool {
        self.exactness.is_exact() && self.failure_count() == 0
    }

    /// What tcpstated got wrong beyond the events the kernel ran no program for, one line each:
    /// empty when each wrong count is such an event, found and counted by tcpstated. Each
    /// socket passes each check once, so a check can be short by at most the sockets found
    /// without their end plus the single events found at the socket's next one.
    pub fn own_faults(&self) -> Vec<String> {
        let failure = |reason: &str| self.failures.get(reason).copied().unwrap_or(0);
        let found = failure(UNDELIVERED);
        let explained = found + failure(OUT_OF_SEQUENCE);
        let mut faults = Vec::new();
        for check in &self.exactness.checks {
            if check.counted > check.expected {
                faults.push(format!(
                    "{}: {} counted, {} made",
                    check.description,
                    count(check.counted),
                    count(check.expected)
                ));
            } else if check.expected - check.counted > explained {
                faults.push(format!(
                    "{}: {} short, more than the {} sockets tcpstated found with events missing",
                    check.description,
                    count(check.expected - check.counted),
                    count(explained)
                ));
            }
        }
        for ((role, from, to), counted) in &self.exactness.unexpected {
            faults.push(format!(
                "{role} {from}→{to}: {} counted, the churn makes none",
                count(*counted)
            ));
        }
        let without_end = self.exactness.sockets_without_end();
        if without_end > found {
            faults.push(format!(
                "{} sockets without their end, {} of them found (`{UNDELIVERED}`)",
                count(without_end),
                count(found)
            ));
        }
        for (reason, failures) in &self.failures {
            if *failures > 0 && reason != UNDELIVERED && reason != OUT_OF_SEQUENCE {
                faults.push(format!(
                    "{} recording failures `{reason}`",
                    count(*failures)
                ));
            }
        }
        if self.runs_with_uncaught_misses > 0 {
            faults.push(format!(
                "in {} runs the nested-event program caught fewer events than the primary \
                 program's recursion misses",
                self.runs_with_uncaught_misses
            ));
        }
        faults
    }
}

/// `tcpstate_recording_failures_total` reason of the sockets whose CLOSE the kernel never
/// delivered to any program (found afterwards by tcpstated).
const UNDELIVERED: &str = "close_undelivered";
/// `tcpstate_recording_failures_total` reason of an event found missing at the socket's next
/// one (the socket's record was in another state).
const OUT_OF_SEQUENCE: &str = "out_of_sequence";

fn targets(summary: &Summary, results: &Results) -> Vec<Target> {
    let tcpstated = summary.figures(Config::Tcpstated);
    let mut targets = Vec::new();

    let ratio = tcpstated.and_then(|figures| figures.ratio_to_untraced);
    let interval = tcpstated.and_then(|figures| figures.ratio_to_untraced_interval);
    targets.push(Target {
        what: "Connections/s with tcpstated ≥ 95% of untraced",
        measured: ratio.map_or("not measured".into(), |ratio| {
            format!("{}{}", percent(ratio), spread(interval, percent))
        }),
        met: ratio.map(|ratio| ratio >= MIN_THROUGHPUT_RATIO),
        inside_noise: spans(interval, MIN_THROUGHPUT_RATIO),
    });

    let tcpstated_ns = tcpstated.and_then(|figures| figures.median_ns_per_event);
    let floor_ns = summary
        .figures(Config::EmptyProgram)
        .and_then(|figures| figures.median_ns_per_event);
    let vs_floor = tcpstated.and_then(|figures| figures.ratio_to_floor);
    let interval = tcpstated.and_then(|figures| figures.ratio_to_floor_interval);
    targets.push(Target {
        what: "Kernel cost per event ≤ 2.5× the empty program's",
        measured: match (vs_floor, tcpstated_ns, floor_ns) {
            (Some(ratio), Some(ours), Some(floor)) => format!(
                "{ratio:.2}× ({ours:.0} ns vs {floor:.0} ns){}",
                spread(interval, times)
            ),
            _ => "not measured".into(),
        },
        met: vs_floor.map(|ratio| ratio <= MAX_COST_VS_FLOOR),
        inside_noise: spans(interval, MAX_COST_VS_FLOOR),
    });

    let bpftrace_ns = summary
        .figures(Config::Bpftrace)
        .and_then(|figures| figures.median_ns_per_event);
    let vs_bpftrace = tcpstated.and_then(|figures| figures.ratio_to_bpftrace);
    let interval = tcpstated.and_then(|figures| figures.ratio_to_bpftrace_interval);
    targets.push(Target {
        what: "Kernel cost per event < ⅓ of the bpftrace peer's",
        measured: match (vs_bpftrace, tcpstated_ns, bpftrace_ns) {
            (Some(ratio), Some(ours), Some(peer)) => format!(
                "{ratio:.2}× ({ours:.0} ns vs {peer:.0} ns){}",
                spread(interval, times)
            ),
            _ => "not measured (no bpftrace)".into(),
        },
        met: vs_bpftrace.map(|ratio| ratio < MAX_COST_VS_BPFTRACE),
        inside_noise: spans(interval, MAX_COST_VS_BPFTRACE),
    });

    let discrepancy = summary.exactness.discrepancy();
    let failure = |reason: &str| summary.failures.get(reason).copied().unwrap_or(0);
    targets.push(Target {
        what: "Zero lost or miscounted transitions at saturation",
        measured: if summary.daemon_runs == 0 {
            "not measured".into()
        } else {
            format!(
                "{} wrong of {} counted over {} runs. Sockets without their last transitions, \
                 for which the kernel never ran any program: {}; found afterwards and counted by \
                 tcpstated (`{}`): {}. Other events found missing at the socket's next one \
                 (`{}`): {}",
                count(discrepancy),
                count(summary.exactness.transitions_counted),
                summary.daemon_runs,
                count(summary.exactness.sockets_without_end()),
                UNDELIVERED,
                count(failure(UNDELIVERED)),
                OUT_OF_SEQUENCE,
                count(failure(OUT_OF_SEQUENCE)),
            )
        },
        met: (summary.daemon_runs > 0).then_some(discrepancy == 0),
        ..Target::default()
    });
    targets.push(Target {
        what: "Zero recording failures",
        measured: if summary.daemon_runs == 0 {
            "not measured".into()
        } else {
            format!("{} (all reasons)", count(summary.failure_count()))
        },
        met: (summary.daemon_runs > 0).then_some(summary.failure_count() == 0),
        ..Target::default()
    });

    let levels = &results.scale.levels;
    let smallest = levels.first();
    let largest = levels.iter().max_by_key(|level| level.connections);
    let scrape = match (smallest, largest) {
        (Some(smallest), Some(largest)) if largest.connections > smallest.connections => {
            match (smallest.median_scrape_ms(), largest.median_scrape_ms()) {
                (Some(small), Some(large)) => {
                    Some((small, large, smallest.connections, largest.connections))
                }
                _ => None,
            }
        }
        _ => None,
    };
    targets.push(Target {
        what: "Scrape latency flat in tracked sockets (largest within 1.5× of 1k) and < 100 ms",
        measured: scrape.map_or("not measured".into(), |(small, large, few, many)| {
            format!(
                "{large:.2} ms at {} connections vs {small:.2} ms at {} ({:.2}×)",
                count(many),
                count(few),
                large / small
            )
        }),
        met: scrape.map(|(small, large, _, _)| {
            large <= MAX_SCRAPE_GROWTH * small && large < MAX_SCRAPE_MS
        }),
        ..Target::default()
    });

    let idle = summary.daemon_cpu_ms_per_churn_second;
    targets.push(Target {
        what: "Daemon CPU ~0 while idle under churn (no scrapes)",
        measured: idle.map_or("not measured".into(), |ms| {
            format!("{ms:.3} ms per second of churn")
        }),
        met: idle.map(|ms| ms <= MAX_IDLE_CPU_MS_PER_SECOND),
        ..Target::default()
    });

    let rss = summary.daemon_peak_rss_bytes;
    targets.push(Target {
        what: "Daemon peak RSS ≤ 30 MB",
        measured: rss.map_or("not measured".into(), megabytes),
        met: rss.map(|rss| rss <= MAX_PEAK_RSS_BYTES),
        ..Target::default()
    });
    targets
}

/// 1234567 -> "1,234,567".
pub fn count(value: u64) -> String {
    let digits = value.to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

pub fn percent(ratio: f64) -> String {
    format!("{:.1}%", ratio * 100.0)
}

/// Bytes in MB (10⁶), as the targets are written.
fn times(ratio: f64) -> String {
    format!("{ratio:.2}×")
}

/// How far the median of the per-round ratios may be from the one measured, given their
/// spread: `; 96% confidence: 0.88× to 0.99×` (nothing with fewer than five rounds).
fn spread(interval: Option<MedianInterval>, format: impl Fn(f64) -> String) -> String {
    interval.map_or(String::new(), |interval| {
        format!(
            "; {:.0}% confidence: {} to {}",
            interval.confidence * 100.0,
            format(interval.low),
            format(interval.high)
        )
    })
}

pub fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn optional(value: Option<f64>, format: impl Fn(f64) -> String) -> String {
    value.map_or("–".into(), format)
}

/// Whether `interval` has `line` strictly inside it.
fn spans(interval: Option<MedianInterval>, line: f64) -> bool {
    interval.is_some_and(|interval| interval.low < line && line < interval.high)
}

fn met(target: &Target) -> String {
    let verdict = match target.met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => return "not measured".into(),
    };
    if target.inside_noise {
        format!("{verdict} by the median, inside the noise (its interval spans the line)")
    } else {
        verdict.into()
    }
}

pub fn render(results: &Results, summary: &Summary) -> String {
    let plan = &results.plan;
    let environment = &results.environment;
    let mut text = String::new();
    let mut line = |content: String| {
        text.push_str(&content);
        text.push('\n');
    };

    line("# Benchmarks".into());
    line(String::new());
    line(format!(
        "Written by `cargo xtask bench{}`{}. Reproduce with `sudo -E cargo xtask bench` (the \
         quick variant, `--quick`, is a CI smoke test). Every figure comes from interleaved runs \
         in one invocation (each round runs every configuration once, in a rotating order) and \
         is a median; ratios are medians of per-round ratios, which cancels the drift of a shared \
         machine between rounds. With five rounds or more, the targets give an interval that \
         holds the true median of a ratio with the confidence shown, from the order statistics \
         of the per-round ratios (no assumption about their distribution); where that interval \
         spans a target's line, the verdict is the median's only and says so.",
        if plan.quick { " --quick" } else { "" },
        if plan.quick {
            " (quick run: few, short runs; noisy)"
        } else {
            ""
        },
    ));
    line(String::new());
    line("| | |".into());
    line("|---|---|".into());
    line(format!("| Machine | {} |", environment.machine));
    line(format!("| Kernel | {} |", environment.kernel));
    line(format!("| Date | {} |", environment.date));
    line(format!("| Commit | {} |", environment.commit));
    line(format!(
        "| Load | {} close, {} client threads, {} listener addresses (127.0.0.1-{}), {} |",
        plan.mode.name(),
        plan.clients,
        plan.addresses,
        plan.addresses,
        if plan.exchange == 0 {
            "no data exchanged".to_owned()
        } else {
            format!("{} bytes echoed per connection", plan.exchange)
        }
    ));
    line(format!(
        "| Runs | {} rounds; per round, every configuration for {} s with `kernel.bpf_stats_enabled=0` \
         (throughput), then every tracer for {} s with it at 1 (kernel cost). tcpstated runs with \
         `--transitions.view=raw` here: the kernel's own sequence, which the load generator \
         predicts (the kernel programs do the same work in either view), and \
         `--sockets.slots=524288`: twice the sockets a run makes with no scrape, as README \
         sizes the table |",
        plan.rounds, plan.seconds, plan.cost_seconds
    ));
    let others = if results.other_programs.is_empty() {
        "none".to_owned()
    } else {
        format!(
            "{} — their cost is paid by every configuration, which shrinks the ratios",
            results
                .other_programs
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    line(format!("| Other programs on the hook | {others} |"));
    line(String::new());

    line("## Targets".into());
    line(String::new());
    line("| Target | Measured | Met |".into());
    line("|---|---|---|".into());
    for target in &summary.targets {
        line(format!(
            "| {} | {} | {} |",
            target.what,
            target.measured,
            met(target)
        ));
    }
    line(String::new());

    line("## Throughput".into());
    line(String::new());
    line("| Configuration | Connections/s (median) | Runs | Ratio to no tracer |".into());
    line("|---|---|---|---|".into());
    for figures in &summary.configs {
        let Some(config) = figures.config else {
            continue;
        };
        line(format!(
            "| {} | {} | {} | {} |",
            config.name(),
            optional(figures.median_connections_per_second, |cps| count(
                cps as u64
            )),
            figures.throughput_runs,
            if config == Config::NoTracer {
                "1".into()
            } else {
                optional(figures.ratio_to_untraced, percent)
            },
        ));
    }
    line(String::new());

    line("## Kernel cost per event".into());
    line(String::new());
    line(
        "From bpf_stats: `run_time_ns / run_cnt` of the tracer's programs (for tcpstated, both \
         programs' time over the events), read from the programs' `/proc/<pid>/fdinfo`."
            .into(),
    );
    line(String::new());
    line("| Configuration | ns per event (median) | Runs | Ratio to floor | Ratio to bpftrace | Recursion misses |".into());
    line("|---|---|---|---|---|---|".into());
    for figures in &summary.configs {
        let Some(config) = figures.config else {
            continue;
        };
        if config == Config::NoTracer {
            continue;
        }
        line(format!(
            "| {} | {} | {} | {} | {} | {} |",
            config.name(),
            optional(figures.median_ns_per_event, |ns| format!("{ns:.1}")),
            figures.cost_runs,
            if config == Config::EmptyProgram {
                "1".into()
            } else {
                optional(figures.ratio_to_floor, |r| format!("{r:.2}×"))
            },
            if config == Config::Bpftrace {
                "1".into()
            } else {
                optional(figures.ratio_to_bpftrace, |r| format!("{r:.2}×"))
            },
            count(figures.recursion_misses),
        ));
    }
    line(String::new());

    line("## tcpstated itself".into());
    line(String::new());
    line("| Figure | Value |".into());
    line("|---|---|".into());
    line(format!(
        "| CPU while churning, no scrapes | {} |",
        optional(summary.daemon_cpu_ms_per_churn_second, |ms| format!(
            "{ms:.3} ms per second"
        ))
    ));
    line(format!(
        "| Peak RSS (VmHWM), churn and scale runs | {} |",
        summary.daemon_peak_rss_bytes.map_or("–".into(), megabytes)
    ));
    line(format!(
        "| Verified instructions (primary, nested) | {} |",
        summary
            .verified_instructions
            .iter()
            .map(|count| count.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    line(format!(
        "| Nested events recorded by the second program | {} |",
        count(summary.nested_events)
    ));
    line(String::new());

    line("## Exactness".into());
    line(String::new());
    line(format!(
        "What tcpstated counted on the benchmark's port (`--port`), summed over its {} runs, \
         against what the load generator's completed connections must have produced (checked by \
         flows: each socket enters and leaves each state once along the paths its close mode \
         allows). Load generator errors after connect: {}.",
        summary.daemon_runs,
        count(summary.load_errors)
    ));
    line(String::new());
    line("| Check | Expected | Counted | Holds |".into());
    line("|---|---|---|---|".into());
    for check in &summary.exactness.checks {
        line(format!(
            "| {} | {} | {} | {} |",
            check.description,
            count(check.expected),
            count(check.counted),
            if check.holds() { "yes" } else { "**no**" }
        ));
    }
    for ((role, from, to), number) in &summary.exactness.unexpected {
        line(format!(
            "| unexpected: {role} {from}→{to} | 0 | {} | **no** |",
            count(*number)
        ));
    }
    line(String::new());
    line("| Recording failure (`tcpstate_recording_failures_total`) | Count |".into());
    line("|---|---|".into());
    for (reason, number) in &summary.failures {
        line(format!("| {reason} | {} |", count(*number)));
    }
    line(String::new());

    line("## Scale".into());
    line(String::new());
    line(
        "Connections held open (two sockets each, both tracked) while tcpstated (default flags), \
         started before them, is scraped every 1.1 s: past `--sockdiag.min-interval`, so every \
         scrape also pays the sock_diag poll, as Prometheus's scrapes do, unless polls are slow: \
         a poll walks every TCP socket of the host, and the next one waits 20 times its duration \
         (the poll interval in force), so polls take at most 5% of one CPU. Scrape latency is the \
         wall time of `GET /metrics`; CPU per scrape is the daemon's CPU time over the scrapes \
         (its process CPU clock: the threads that ran slow polls beside the scrapes included) \
         divided by their number; collect is the daemon's own \
         `tcpstate_collect_duration_seconds`, poll its `tcpstate_poll_duration_seconds`. \
         Sockets view is the wall time of `GET /sockets.json?state=ESTABLISHED&limit=1000` (the \
         1,000 oldest of the held connections, located and matched to their processes)."
            .into(),
    );
    line(String::new());
    line("| Connections | Tracked sockets | Scrape, median (ms) | Scrape, max (ms) | Collect (ms) | Poll (ms) | Poll interval (s) | CPU per scrape (ms) | Idle CPU (ms/s) | Sockets view (ms) | Daemon peak RSS | BPF map memlock | Kernel memory per connection | Setup (s) | Timewait sockets on the host |".into());
    line("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|".into());
    for level in &results.scale.levels {
        line(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.3} | {} | {} | {} | {} | {:.1} | {} |",
            count(level.connections),
            optional(level.tracked_sockets, |sockets| count(sockets as u64)),
            optional(level.median_scrape_ms(), |ms| format!("{ms:.2}")),
            optional(
                level.scrape_ms.iter().copied().reduce(f64::max),
                |ms| format!("{ms:.2}")
            ),
            optional(level.collect_ms, |ms| format!("{ms:.2}")),
            optional(level.poll_ms, |ms| format!("{ms:.2}")),
            optional(level.poll_interval_seconds, |s| format!("{s:.1}")),
            level.cpu_per_scrape_ms,
            level.idle_cpu_ms_per_second,
            optional(level.view_ms, |ms| format!("{ms:.1}")),
            megabytes(level.peak_rss_bytes),
            megabytes(level.map_memlock_bytes),
            // Below 10k connections the holders' own memory and the machine's noise dominate.
            optional(
                level
                    .memory_per_connection
                    .filter(|_| level.connections >= 10_000),
                |bytes| format!("{:.1} KiB", bytes / 1024.0)
            ),
            level.setup_seconds,
            level.host_timewait_sockets.map_or("–".into(), count),
        ));
    }
    line(String::new());
    if let Some(bytes) = results.scale.storage_bytes_per_socket {
        line(format!(
            "Socket-local storage charged to the sockets at the smallest level (`ss -m` `o` with \
             tcpstated minus without): {bytes} bytes per tracked socket on average, 0 while every \
             socket finds a slot in the slot table (`--sockets.slots`, 8 MiB by default, in the \
             map memlock above with the other maps; the aggregation map grows with label sets, \
             not sockets). Sockets past the table carry their record in socket storage instead, \
             which grows and shrinks with them: the kernel memory per connection above includes \
             it."
        ));
        line(String::new());
    }
    if !results.scale.namespace_levels.is_empty() {
        line("### Across network namespaces".into());
        line(String::new());
        line(
            "The same connections spread over network namespaces of the benchmark's own (as pods \
             have), tcpstated in the host's: each namespace's sock_diag dump walks every socket of \
             the host, so a poll costs about the number of namespaces it dumps times the host's \
             sockets; polls stay spaced to 5% of one CPU and scrapes do not wait for them."
                .into(),
        );
        line(String::new());
        line("| Namespaces | Connections | Tracked sockets | Scrape, median (ms) | Scrape, max (ms) | Poll (ms) | Poll interval (s) | CPU per scrape (ms) | Idle CPU (ms/s) | Sockets view (ms) | Daemon peak RSS |".into());
        line("|---|---|---|---|---|---|---|---|---|---|---|".into());
        for level in &results.scale.namespace_levels {
            line(format!(
                "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.3} | {} | {} |",
                level.namespaces,
                count(level.connections),
                optional(level.tracked_sockets, |sockets| count(sockets as u64)),
                optional(level.median_scrape_ms(), |ms| format!("{ms:.2}")),
                optional(
                    level.scrape_ms.iter().copied().reduce(f64::max),
                    |ms| format!("{ms:.2}")
                ),
                optional(level.poll_ms, |ms| format!("{ms:.2}")),
                optional(level.poll_interval_seconds, |s| format!("{s:.1}")),
                level.cpu_per_scrape_ms,
                level.idle_cpu_ms_per_second,
                optional(level.view_ms, |ms| format!("{ms:.1}")),
                megabytes(level.peak_rss_bytes),
            ));
        }
        line(String::new());
    }
    for note in &results.scale.notes {
        line(format!("- {note}"));
    }
    if !results.scale.notes.is_empty() {
        line(String::new());
    }

    line("## All runs".into());
    line(String::new());
    line(
        "For tcpstated: its CPU while the churn ran; whether its counts matched the churn (and \
         how long after the churn's end the last transitions showed); the kernel's recursion \
         misses of the primary and the nested program, the events the nested program caught, \
         and `event_lost`."
            .into(),
    );
    line(String::new());
    line("| Round | Configuration | Kind | Connections | Connections/s | ns per event | Daemon CPU (ms) | Exact | Misses (primary, nested), caught, event_lost |".into());
    line("|---|---|---|---|---|---|---|---|---|".into());
    for run in &results.runs {
        line(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            run.round + 1,
            run.config.name(),
            if run.cost_run { "cost" } else { "throughput" },
            count(run.churn.connections),
            count(run.churn.connections_per_second() as u64),
            optional(
                run.kernel.and_then(|work| work.nanoseconds_per_event()),
                |ns| format!("{ns:.1}")
            ),
            run.daemon.as_ref().map_or("–".into(), |daemon| format!(
                "{:.1}",
                daemon.cpu_during_churn_ns as f64 / 1e6
            )),
            run.daemon.as_ref().map_or("–".into(), exact_cell),
            run.daemon.as_ref().map_or("–".into(), |daemon| format!(
                "{}, {}; {}; {}",
                daemon.primary_misses,
                daemon.nested_misses,
                daemon.nested_events,
                daemon.failures.get("event_lost").copied().unwrap_or(0)
            )),
        ));
    }
    line(String::new());
    text
}

/// "yes (after 250 ms)" or "**no**: 3 wrong, 2 recording failures".
fn exact_cell(daemon: &super::DaemonFigures) -> String {
    let failures: u64 = daemon.failures.values().sum();
    let settle = if daemon.settle.as_millis() >= 100 {
        format!(" (after {} ms)", daemon.settle.as_millis())
    } else {
        String::new()
    };
    if daemon.exactness.is_exact() && failures == 0 {
        format!("yes{settle}")
    } else {
        format!(
            "**no**: {} wrong, {} recording failures",
            count(daemon.exactness.discrepancy()),
            count(failures)
        )
    }
}

/// Writes `generated` to `path`, keeping the hand-written notes after [`NOTES_MARKER`] of the
/// file already there.
pub fn write_preserving_notes(path: &Path, generated: &str) -> anyhow::Result<()> {
    let existing = fs::read_to_string(path).unwrap_or_default();
    let contents = merge_notes(generated, &existing);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(path, contents).with_context(|| format!("cannot write {}", relative(path)))
}

pub fn merge_notes(generated: &str, existing: &str) -> String {
    let notes = existing
        .split_once(NOTES_MARKER)
        .map(|(_, notes)| notes.to_owned())
        .unwrap_or_else(|| "\n\n## Notes\n\nNone yet.\n".into());
    format!("{}\n{NOTES_MARKER}{notes}", generated.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        DaemonFigures, Environment, Plan, RunResult,
        churn::{ChurnReport, CloseMode},
        expect::CheckOutcome,
        procfs::KernelWork,
        scale::{ScaleLevel, ScaleOutcome},
    };
    use std::{collections::BTreeSet, path::PathBuf};

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(81_234_567), "81,234,567");
    }

    #[test]
    fn notes_after_the_marker_survive_a_rewrite() {
        let first = merge_notes("# Benchmarks\nold figures\n", "");
        assert!(first.ends_with("## Notes\n\nNone yet.\n"), "{first}");
        let edited = first.replace("None yet.", "Tried a per-CPU array: no change.");
        let second = merge_notes("# Benchmarks\nnew figures\n", &edited);
        assert!(second.contains("new figures") && !second.contains("old figures"));
        assert!(
            second.ends_with("Tried a per-CPU array: no change.\n"),
            "{second}"
        );
        assert_eq!(second.matches(NOTES_MARKER).count(), 1);
    }

    fn plan(rounds: usize) -> Plan {
        Plan {
            quick: false,
            rounds,
            seconds: 10.0,
            cost_seconds: 5.0,
            clients: 2,
            addresses: 8,
            mode: CloseMode::ClientFirst,
            exchange: 0,
            scale: vec![],
            namespaces: vec![],
            namespace_connections: 0,
            scrapes: 10,
            output: PathBuf::from("docs/benchmarks.md"),
        }
    }

    fn run(
        round: usize,
        config: Config,
        cost_run: bool,
        cps: u64,
        ns_per_event: Option<u64>,
    ) -> RunResult {
        RunResult {
            round,
            config,
            cost_run,
            churn: ChurnReport {
                connections: cps * 10,
                seconds: 10.0,
                ..ChurnReport::default()
            },
            kernel: ns_per_event.map(|ns| KernelWork {
                run_time_ns: ns * 1_000,
                events: 1_000,
                runs: 1_000,
                recursion_misses: 0,
            }),
            programs: BTreeMap::new(),
            daemon: (config == Config::Tcpstated).then(|| DaemonFigures {
                cpu_during_churn_ns: 1_000_000,
                peak_rss_bytes: 12_000_000,
                ..DaemonFigures::default()
            }),
        }
    }

    /// Two rounds; the machine is 10% slower in the second, which per-round ratios cancel.
    fn results() -> Results {
        let mut runs = Vec::new();
        for (round, speed) in [(0, 100), (1, 90)] {
            runs.push(run(round, Config::NoTracer, false, 800 * speed, None));
            runs.push(run(round, Config::Tcpstated, false, 776 * speed, None));
            runs.push(run(round, Config::EmptyProgram, false, 792 * speed, None));
            runs.push(run(round, Config::Tcpstated, true, 0, Some(90)));
            runs.push(run(round, Config::EmptyProgram, true, 0, Some(40)));
        }
        Results {
            plan: plan(2),
            environment: Environment::default(),
            configs: vec![Config::NoTracer, Config::Tcpstated, Config::EmptyProgram],
            runs,
            scale: ScaleOutcome {
                levels: vec![
                    ScaleLevel {
                        connections: 1_000,
                        scrape_ms: vec![2.0, 2.2, 2.1],
                        peak_rss_bytes: 13_000_000,
                        ..ScaleLevel::default()
                    },
                    ScaleLevel {
                        connections: 1_000_000,
                        scrape_ms: vec![2.3, 2.4, 2.2],
                        peak_rss_bytes: 14_000_000,
                        ..ScaleLevel::default()
                    },
                ],
                ..ScaleOutcome::default()
            },
            other_programs: BTreeSet::new(),
        }
    }

    fn target<'a>(summary: &'a Summary, what: &str) -> &'a Target {
        summary
            .targets
            .iter()
            .find(|target| target.what.starts_with(what))
            .unwrap_or_else(|| panic!("no target {what}"))
    }

    #[test]
    fn figures_are_medians_and_per_round_ratios() {
        let summary = Summary::of(&results());
        let tcpstated = summary.figures(Config::Tcpstated).unwrap();
        assert_eq!(tcpstated.throughput_runs, 2);
        assert_eq!(
            tcpstated.median_connections_per_second,
            Some((77_600.0 + 69_840.0) / 2.0)
        );
        let ratio = tcpstated.ratio_to_untraced.unwrap();
        assert!((ratio - 0.97).abs() < 1e-9, "{ratio}");
        assert_eq!(tcpstated.median_ns_per_event, Some(90.0));
        assert_eq!(tcpstated.ratio_to_floor, Some(2.25));
        assert_eq!(tcpstated.ratio_to_bpftrace, None);
    }

    #[test]
    fn targets_say_met_missed_or_not_measured() {
        let summary = Summary::of(&results());
        assert_eq!(target(&summary, "Connections/s").met, Some(true));
        assert_eq!(target(&summary, "Connections/s").measured, "97.0%");
        assert_eq!(target(&summary, "Kernel cost per event ≤").met, Some(true));
        assert_eq!(target(&summary, "Kernel cost per event <").met, None);
        assert_eq!(target(&summary, "Zero lost").met, Some(true));
        assert_eq!(target(&summary, "Scrape latency").met, Some(true));
        // 1 ms of CPU per 10 s of churn.
        assert_eq!(target(&summary, "Daemon CPU").met, Some(true));
        assert_eq!(summary.daemon_peak_rss_bytes, Some(14_000_000));
        assert_eq!(target(&summary, "Daemon peak RSS").measured, "14.0 MB");
    }

    #[test]
    fn a_target_shows_where_its_median_may_lie_from_five_rounds() {
        let interval = median_interval(&[0.99, 0.91, 0.95, 0.88, 0.97]);
        assert_eq!(
            spread(interval, percent),
            "; 94% confidence: 88.0% to 99.0%"
        );
        assert_eq!(spread(None, percent), "");
    }

    #[test]
    fn a_verdict_whose_interval_spans_the_line_says_so() {
        let mut target = Target {
            met: Some(true),
            ..Target::default()
        };
        assert_eq!(met(&target), "yes");
        target.inside_noise = spans(median_interval(&[0.93, 0.96, 0.97, 0.98, 0.99]), 0.95);
        assert_eq!(
            met(&target),
            "yes by the median, inside the noise (its interval spans the line)"
        );
        assert!(!spans(
            median_interval(&[0.96, 0.97, 0.98, 0.99, 1.0]),
            0.95
        ));
        assert!(!spans(None, 0.95));
        assert_eq!(met(&Target::default()), "not measured");
    }

    #[test]
    fn a_slow_program_misses_its_targets() {
        let mut results = results();
        for run in &mut results.runs {
            if run.config == Config::Tcpstated {
                if run.cost_run {
                    run.kernel = Some(KernelWork {
                        run_time_ns: 120_000,
                        events: 1_000,
                        runs: 1_000,
                        recursion_misses: 0,
                    });
                } else {
                    run.churn.connections = run.churn.connections * 90 / 97;
                }
            }
        }
        let summary = Summary::of(&results);
        assert_eq!(target(&summary, "Connections/s").met, Some(false));
        assert_eq!(target(&summary, "Kernel cost per event ≤").met, Some(false));
        assert_eq!(
            target(&summary, "Kernel cost per event ≤").measured,
            "3.00× (120 ns vs 40 ns)"
        );
    }

    #[test]
    fn the_table_shows_each_target_and_each_run() {
        let results = results();
        let summary = Summary::of(&results);
        let markdown = render(&results, &summary);
        assert!(
            markdown.contains("| Connections/s with tcpstated ≥ 95% of untraced | 97.0% | yes |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| tcpstated | 73,720 | 2 | 97.0% |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| empty program (floor) | 40.0 | 2 | 1 | – | 0 |"),
            "{markdown}"
        );
        assert_eq!(markdown.matches("| throughput |").count(), 6);
    }

    /// The flows of 100 client connections, `lost_ends` of which lost their last two events
    /// (`FIN_WAIT1 -> FIN_WAIT2`, `FIN_WAIT2 -> CLOSE`), as the kernel's skips do.
    fn flows_with_lost_ends(lost_ends: u64) -> Exactness {
        let check = |description: &str, counted: u64, ends_of_life: bool| CheckOutcome {
            description: description.into(),
            expected: 100,
            counted,
            ends_of_life,
        };
        Exactness {
            checks: vec![
                check("client ESTABLISHED→FIN_WAIT1", 100, false),
                check("client FIN_WAIT1→FIN_WAIT2", 100 - lost_ends, false),
                check("client FIN_WAIT2→CLOSE", 100 - lost_ends, true),
            ],
            unexpected: Vec::new(),
            transitions_counted: 300 - 2 * lost_ends,
        }
    }

    fn summary_of(exactness: Exactness, failures: &[(&str, u64)]) -> Summary {
        let mut summary = Summary::of(&results());
        summary.exactness = exactness;
        summary.failures = failures
            .iter()
            .map(|(reason, count)| (reason.to_string(), *count))
            .collect();
        summary
    }

    #[test]
    fn events_the_kernel_skipped_found_and_counted_are_no_fault_of_tcpstated() {
        let summary = summary_of(
            flows_with_lost_ends(3),
            &[(UNDELIVERED, 3), ("event_lost", 0)],
        );
        assert!(!summary.exact());
        assert_eq!(summary.own_faults(), Vec::<String>::new());
    }

    #[test]
    fn a_socket_without_its_end_that_tcpstated_did_not_find_is_its_fault() {
        let summary = summary_of(flows_with_lost_ends(3), &[(UNDELIVERED, 2)]);
        let faults = summary.own_faults();
        assert!(
            faults.contains(
                &"3 sockets without their end, 2 of them found (`close_undelivered`)".into()
            ),
            "{faults:?}"
        );
        assert!(
            faults.contains(
                &"client FIN_WAIT1→FIN_WAIT2: 3 short, more than the 2 sockets tcpstated found \
                  with events missing"
                    .into()
            ),
            "{faults:?}"
        );
    }

    #[test]
    fn counting_more_than_the_churn_made_or_a_lost_event_is_tcpstateds_fault() {
        let mut flows = flows_with_lost_ends(0);
        flows.checks[0].counted = 101;
        flows
            .unexpected
            .push((("client".into(), "SYN_SENT".into(), "CLOSE".into()), 2));
        let summary = summary_of(flows, &[("event_lost", 1)]);
        assert_eq!(
            summary.own_faults(),
            vec![
                "client ESTABLISHED→FIN_WAIT1: 101 counted, 100 made".to_string(),
                "client SYN_SENT→CLOSE: 2 counted, the churn makes none".into(),
                "1 recording failures `event_lost`".into(),
            ]
        );
    }

    #[test]
    fn a_recursion_miss_the_nested_program_did_not_catch_is_tcpstateds_fault() {
        let mut results = results();
        for run in &mut results.runs {
            if let Some(daemon) = &mut run.daemon {
                daemon.primary_misses = 5;
                daemon.nested_events = if run.round == 0 { 5 } else { 4 };
            }
        }
        let faults = Summary::of(&results).own_faults();
        assert_eq!(faults.len(), 1, "{faults:?}");
        assert!(
            faults[0].starts_with("in 2 runs the nested-event program"),
            "{faults:?}"
        );
    }
}

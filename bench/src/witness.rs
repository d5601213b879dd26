//! `cargo xtask bench witness`: how many TCP state changes the tracepoint never delivers to BPF
//! under the churn, against a second kernel path that reports them too.
//!
//! `tcpstate-witness` counts every state change by transition twice at once: on the tracepoint
//! tcpstated uses, and in sock_ops' state callback, which `tcp_set_state()` calls just before
//! the tracepoint and which has no recursion guard. For a transition both report, the callback's
//! count less the tracepoint's is what the tracepoint did not deliver; the tracepoint program's
//! recursion misses explain part of it, and the rest the kernel skipped without counting it
//! anywhere (docs/skipped-bpf-events.md). bpf_stats give each path's cost per run.

use std::{collections::BTreeMap, thread};

use anyhow::{Context as _, bail};

use super::{
    Context, LAST_EVENTS_SETTLE, Plan, START_UP_SETTLE,
    process::Process,
    procfs::{self, ProgramStats},
    report::count,
    run_churn,
    tracer::{START_TIMEOUT, STOP_TIMEOUT},
};

#[derive(clap::Args, Debug)]
pub struct WitnessArgs {
    /// Rounds: each attaches the witness, runs the churn, and reads both counts.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of churn per round.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

pub fn run(args: &WitnessArgs) -> anyhow::Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let (plan, context) = super::prepare_default_load("witness", args.rounds, args.seconds)?;

    let mut total = Tally::default();
    for round in 0..args.rounds {
        let measured =
            measure_round(&plan, &context).with_context(|| format!("round {}", round + 1))?;
        let tally = Tally::of(&measured);
        println!(
            "round {}/{}: {}",
            round + 1,
            args.rounds,
            tally.describe(Some(measured.connections))
        );
        println!("  {}", measured.costs());
        total.add(&tally);
    }
    println!("all rounds: {}", total.describe(None));
    Ok(())
}

/// Both counts of one transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub tracepoint: u64,
    pub sock_ops: u64,
}

/// One round: the churn's connections, both counts of each transition, and the two programs'
/// bpf_stats over the churn.
struct Round {
    connections: u64,
    transitions: BTreeMap<String, Counts>,
    tracepoint: ProgramStats,
    sock_ops: ProgramStats,
}

impl Round {
    fn costs(&self) -> String {
        let path = |name: &str, stats: &ProgramStats| {
            let per_run = if stats.run_count > 0 {
                format!(
                    "{:.1} ns per run",
                    stats.run_time_ns as f64 / stats.run_count as f64
                )
            } else {
                "no runs timed".into()
            };
            let per_connection = if self.connections > 0 {
                format!(
                    ", {:.1} runs per connection",
                    stats.run_count as f64 / self.connections as f64
                )
            } else {
                String::new()
            };
            format!("{name} {per_run}{per_connection}")
        };
        format!(
            "cost: {}; {}",
            path("tracepoint", &self.tracepoint),
            path("sock_ops", &self.sock_ops)
        )
    }
}

fn measure_round(plan: &Plan, context: &Context) -> anyhow::Result<Round> {
    let mut command = std::process::Command::new(&context.binaries.witness);
    command.stderr(super::tracer::log_file(
        &context.binaries.work_dir,
        "witness",
    )?);
    let mut witness = Process::spawn("tcpstate-witness", &mut command, false)?;
    let ids = witness.wait_for_line("attached ", START_TIMEOUT)?;
    let (tracepoint_id, sock_ops_id) = parse_ids(&ids)?;
    thread::sleep(START_UP_SETTLE);
    let before = procfs::programs_of(witness.pid())?;
    context.bpf_stats.set("1")?;
    let churn = run_churn(plan, context, plan.seconds);
    context.bpf_stats.set("0")?;
    let churn = churn?;
    thread::sleep(LAST_EVENTS_SETTLE);
    let after = procfs::programs_of(witness.pid())?;
    let (status, output) = witness.stop_with_output(STOP_TIMEOUT)?;
    if !status.success() {
        bail!("tcpstate-witness failed ({status}); see target/bench/witness.log");
    }
    let stats = |id: u32| -> anyhow::Result<ProgramStats> {
        match (before.get(&id), after.get(&id)) {
            (Some(before), Some(after)) => Ok(after.since(before)),
            _ => bail!("program {id} of tcpstate-witness vanished"),
        }
    };
    Ok(Round {
        connections: churn.connections,
        transitions: parse_counts(&output)?,
        tracepoint: stats(tracepoint_id)?,
        sock_ops: stats(sock_ops_id)?,
    })
}

/// `tracepoint=<id> sock_ops=<id>`, the rest of the witness's `attached` line.
fn parse_ids(text: &str) -> anyhow::Result<(u32, u32)> {
    let field = |name: &str| -> anyhow::Result<u32> {
        text.split_whitespace()
            .find_map(|field| field.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("no {name}= in tcpstate-witness's line `attached {text}`"))?
            .parse()
            .with_context(|| format!("bad {name}= in `attached {text}`"))
    };
    Ok((field("tracepoint")?, field("sock_ops")?))
}

/// The witness's `transition=<old>-><new> tracepoint=<n> sock_ops=<n>` lines, by transition.
pub fn parse_counts(output: &str) -> anyhow::Result<BTreeMap<String, Counts>> {
    let mut transitions = BTreeMap::new();
    for line in output.lines() {
        let Some(rest) = line.strip_prefix("transition=") else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let name = fields.next().context("empty transition line")?;
        let mut counts = Counts::default();
        for field in fields {
            let (key, value) = field
                .split_once('=')
                .with_context(|| format!("bad field `{field}` in `{line}`"))?;
            let value = value
                .parse()
                .with_context(|| format!("bad count in `{line}`"))?;
            match key {
                "tracepoint" => counts.tracepoint = value,
                "sock_ops" => counts.sock_ops = value,
                _ => bail!("unknown field `{key}` in `{line}`"),
            }
        }
        transitions.insert(name.to_owned(), counts);
    }
    Ok(transitions)
}

/// What a round (or several) shows about the tracepoint's deliveries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tally {
    /// State changes sock_ops' callback reported, over the transitions it reports at all.
    pub announced: u64,
    /// How many of those the tracepoint did not deliver, by transition.
    pub undelivered: BTreeMap<String, u64>,
    /// The tracepoint program's recursion misses (some may be transitions sock_ops never
    /// reports: a listener's new child).
    pub recursion_misses: u64,
}

impl Tally {
    fn of(round: &Round) -> Tally {
        let mut tally = Tally::tally_counts(&round.transitions);
        tally.recursion_misses = round.tracepoint.recursion_misses;
        tally
    }

    /// The comparison of one round's counts. Transitions only the tracepoint reports (the three
    /// that begin a socket's life) are left out; so is any transition the tracepoint counted
    /// more often (sockets of an earlier witness, which still ask for callbacks).
    pub fn tally_counts(transitions: &BTreeMap<String, Counts>) -> Tally {
        let mut tally = Tally::default();
        for (name, counts) in transitions {
            if counts.sock_ops == 0 {
                continue;
            }
            tally.announced += counts.sock_ops;
            let undelivered = counts.sock_ops.saturating_sub(counts.tracepoint);
            if undelivered > 0 {
                tally.undelivered.insert(name.clone(), undelivered);
            }
        }
        tally
    }

    fn add(&mut self, other: &Tally) {
        self.announced += other.announced;
        self.recursion_misses += other.recursion_misses;
        for (name, undelivered) in &other.undelivered {
            *self.undelivered.entry(name.clone()).or_default() += undelivered;
        }
    }

    pub fn undelivered_total(&self) -> u64 {
        self.undelivered.values().sum()
    }

    /// Undelivered state changes the recursion misses cannot account for: at least these were
    /// skipped without being counted anywhere.
    pub fn uncounted_at_least(&self) -> u64 {
        self.undelivered_total()
            .saturating_sub(self.recursion_misses)
    }

    fn describe(&self, connections: Option<u64>) -> String {
        let connections = connections.map_or(String::new(), |connections| {
            format!("{} connections; ", count(connections))
        });
        let by_transition = self
            .undelivered
            .iter()
            .map(|(name, undelivered)| format!("{name} {}", count(*undelivered)))
            .collect::<Vec<_>>()
            .join(", ");
        let by_transition = if by_transition.is_empty() {
            String::new()
        } else {
            format!(" ({by_transition})")
        };
        format!(
            "{connections}sock_ops' state callback reported {} state changes the tracepoint \
             reports too; the tracepoint delivered {} fewer to BPF{by_transition}; its program's \
             recursion misses: {}; skipped without being counted anywhere: at least {}",
            count(self.announced),
            count(self.undelivered_total()),
            count(self.recursion_misses),
            count(self.uncounted_at_least()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "attached tracepoint=7 sock_ops=8
transition=ESTABLISHED->FIN_WAIT1 tracepoint=100 sock_ops=100
transition=FIN_WAIT1->FIN_WAIT2 tracepoint=97 sock_ops=100
transition=FIN_WAIT2->CLOSE tracepoint=97 sock_ops=100
transition=CLOSE->SYN_SENT tracepoint=100 sock_ops=0
transition=ESTABLISHED->CLOSE_WAIT tracepoint=101 sock_ops=100";

    #[test]
    fn the_witness_output_reads_as_counts_by_transition() {
        let counts = parse_counts(OUTPUT).unwrap();
        assert_eq!(counts.len(), 5);
        assert_eq!(
            counts["FIN_WAIT1->FIN_WAIT2"],
            Counts {
                tracepoint: 97,
                sock_ops: 100
            }
        );
        assert_eq!(parse_ids("tracepoint=7 sock_ops=8").unwrap(), (7, 8));
        assert!(parse_ids("tracepoint=7").is_err());
        assert!(parse_counts("transition=A->B tracepoint=x").is_err());
        assert!(parse_counts("transition=A->B kprobe=1").is_err());
    }

    #[test]
    fn undelivered_counts_only_what_both_paths_report() {
        let mut tally = Tally::tally_counts(&parse_counts(OUTPUT).unwrap());
        // CLOSE->SYN_SENT comes before any callback; the tracepoint's extra CLOSE_WAIT is a
        // socket sock_ops did not follow.
        assert_eq!(tally.announced, 400);
        assert_eq!(tally.undelivered_total(), 6);
        assert_eq!(tally.undelivered.len(), 2);
        tally.recursion_misses = 4;
        assert_eq!(tally.uncounted_at_least(), 2);
        tally.recursion_misses = 9;
        assert_eq!(tally.uncounted_at_least(), 0);
    }

    #[test]
    fn rounds_add_up_by_transition() {
        let round = Tally::tally_counts(&parse_counts(OUTPUT).unwrap());
        let mut total = Tally::default();
        total.add(&round);
        total.add(&round);
        assert_eq!(total.announced, 800);
        assert_eq!(total.undelivered["FIN_WAIT2->CLOSE"], 6);
        assert_eq!(total.undelivered_total(), 12);
    }
}

//! `cargo xtask bench compare BASELINE CANDIDATE`: whether a change to the kernel programs made
//! them cheaper, to within a few nanoseconds per event.
//!
//! Separate runs cannot tell: on a shared host the same build measures 20 ns apart from one run
//! to the next. So both builds are attached at once, to the same churn, and each one's per-event
//! cost comes from bpf_stats over the same events. Whichever attaches first pays more (the
//! second finds the kernel's clock path and code warm: about 20 ns for two tcpstated), so the
//! rounds alternate which one goes first, and each pair of rounds gives one estimate of the
//! difference in which that effect cancels.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    thread,
};

use anyhow::{Context as _, bail};

use super::{
    Context, HOOK, LAST_EVENTS_SETTLE, Plan, START_UP_SETTLE, procfs,
    procfs::{KernelWork, ProgramStats},
    run_churn, stats,
    tracer::{Binaries, Config, Tracer},
};

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// The tcpstated binary to compare against (a copy of target/release/tcpstated built
    /// before the change).
    baseline: PathBuf,
    /// The tcpstated binary under test.
    candidate: PathBuf,
    /// Rounds, an even number: each builds both, half with the baseline attached first.
    #[arg(long, default_value_t = 8)]
    rounds: usize,
    /// Seconds of churn per round.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
}

pub fn run(args: &CompareArgs) -> anyhow::Result<()> {
    if args.rounds < 2 || !args.rounds.is_multiple_of(2) {
        bail!("--rounds must be an even number, at least 2 (half the rounds attach each first)");
    }
    for binary in [&args.baseline, &args.candidate] {
        if !binary.is_file() {
            bail!(
                "{} is not a file: give the paths of two tcpstated binaries",
                binary.display()
            );
        }
    }
    let (plan, context) = super::prepare_default_load("compare", args.rounds, args.seconds)?;

    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        let baseline_first = round.is_multiple_of(2);
        let costs = measure_round(&plan, &context, args, baseline_first)
            .with_context(|| format!("round {}", round + 1))?;
        let first = if baseline_first {
            "baseline"
        } else {
            "candidate"
        };
        println!(
            "round {}/{} ({first} attached first): baseline {:.1} ns, candidate {:.1} ns per \
             event, candidate - baseline {:+.1} ns",
            round + 1,
            args.rounds,
            costs.baseline,
            costs.candidate,
            costs.candidate - costs.baseline,
        );
        rounds.push(costs);
    }
    let verdict = Difference::of(&rounds).context("no round measured both builds")?;
    let median_of = |cost: fn(&RoundCosts) -> f64| {
        stats::median(&rounds.iter().map(cost).collect::<Vec<_>>()).unwrap_or(f64::NAN)
    };
    let standard_error = match verdict.standard_error {
        Some(error) => format!("standard error {error:.1} ns"),
        None => "no standard error from one pair: run more rounds".into(),
    };
    println!(
        "baseline {:.1} ns, candidate {:.1} ns per event (medians); candidate - baseline: \
         {:+.1} ns ({standard_error}, over {} pairs of rounds); attached first costs {:.1} ns \
         more",
        median_of(|costs| costs.baseline),
        median_of(|costs| costs.candidate),
        verdict.mean,
        verdict.pairs,
        verdict.first_position,
    );
    Ok(())
}

/// Both builds' cost per event in one round (both programs on the hook, over its events).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundCosts {
    pub baseline_first: bool,
    pub baseline: f64,
    pub candidate: f64,
}

fn measure_round(
    plan: &Plan,
    context: &Context,
    args: &CompareArgs,
    baseline_first: bool,
) -> anyhow::Result<RoundCosts> {
    let mut binaries = [&args.baseline, &args.candidate];
    if !baseline_first {
        binaries.reverse();
    }
    // In attach order: each daemon attaches its programs before the next one starts.
    let tracers = binaries
        .iter()
        .map(|binary| {
            let binaries = Binaries {
                tcpstated: (*binary).clone(),
                ..context.binaries.clone()
            };
            Tracer::start(
                Config::Tcpstated,
                &binaries,
                context.port,
                &["--transitions.view=raw"],
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    thread::sleep(START_UP_SETTLE);
    // Each daemon with the ids of its programs on the hook.
    let daemons = tracers
        .iter()
        .filter_map(Tracer::pid)
        .map(|pid| Ok((pid, procfs::programs_on(pid, HOOK)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let snapshot =
        |(pid, on_hook): &(u32, BTreeSet<u32>)| -> anyhow::Result<BTreeMap<u32, ProgramStats>> {
            procfs::programs_among(*pid, on_hook)
        };
    let before = daemons
        .iter()
        .map(snapshot)
        .collect::<anyhow::Result<Vec<_>>>()?;
    context.bpf_stats.set("1")?;
    let churn = run_churn(plan, context, plan.seconds);
    context.bpf_stats.set("0")?;
    churn?;
    thread::sleep(LAST_EVENTS_SETTLE);
    let costs = daemons
        .iter()
        .zip(&before)
        .map(|(daemon, before)| {
            let work = KernelWork::between(before, &snapshot(daemon)?);
            work.nanoseconds_per_event()
                .context("no program of tcpstated ran on the hook during the churn")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for tracer in tracers {
        tracer.stop()?;
    }
    let [first, second] = costs[..] else {
        bail!("a tcpstated exited during the round");
    };
    let (baseline, candidate) = if baseline_first {
        (first, second)
    } else {
        (second, first)
    };
    Ok(RoundCosts {
        baseline_first,
        baseline,
        candidate,
    })
}

/// How much more the candidate costs per event than the baseline, from rounds alternating
/// which attached first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Difference {
    /// Mean over pairs of rounds (one of each order) of the pair's mean difference.
    pub mean: f64,
    /// `None` from a single pair.
    pub standard_error: Option<f64>,
    pub pairs: usize,
    /// What attaching first adds to a build's cost, from the same pairs.
    pub first_position: f64,
}

impl Difference {
    /// `None` without at least one pair of rounds of opposite orders.
    pub fn of(rounds: &[RoundCosts]) -> Option<Difference> {
        let mut pairs = Vec::new();
        let mut positions = Vec::new();
        for pair in rounds.chunks_exact(2) {
            let [one, other] = pair else { continue };
            if one.baseline_first == other.baseline_first {
                continue;
            }
            let difference = |costs: &RoundCosts| costs.candidate - costs.baseline;
            pairs.push((difference(one) + difference(other)) / 2.0);
            // With the baseline first the difference loses the position effect, with the
            // candidate first it gains it.
            let (candidate_first, baseline_first) = if one.baseline_first {
                (other, one)
            } else {
                (one, other)
            };
            positions.push((difference(candidate_first) - difference(baseline_first)) / 2.0);
        }
        if pairs.is_empty() {
            return None;
        }
        let count = pairs.len() as f64;
        let mean = pairs.iter().sum::<f64>() / count;
        let standard_error = (pairs.len() > 1).then(|| {
            let variance =
                pairs.iter().map(|pair| (pair - mean).powi(2)).sum::<f64>() / (count - 1.0);
            (variance / count).sqrt()
        });
        Some(Difference {
            mean,
            standard_error,
            pairs: pairs.len(),
            first_position: positions.iter().sum::<f64>() / count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(baseline_first: bool, baseline: f64, candidate: f64) -> RoundCosts {
        RoundCosts {
            baseline_first,
            baseline,
            candidate,
        }
    }

    #[test]
    fn the_first_position_cancels_over_a_pair_of_rounds() {
        // The candidate is 5 ns cheaper; attaching first adds 20 ns.
        let rounds = [
            round(true, 240.0, 215.0),
            round(false, 220.0, 235.0),
            round(true, 250.0, 225.0),
            round(false, 230.0, 245.0),
        ];
        let difference = Difference::of(&rounds).unwrap();
        assert_eq!(difference.pairs, 2);
        assert!((difference.mean + 5.0).abs() < 1e-9, "{difference:?}");
        assert!(
            (difference.first_position - 20.0).abs() < 1e-9,
            "{difference:?}"
        );
        assert!(
            difference.standard_error.unwrap().abs() < 1e-9,
            "{difference:?}"
        );
    }

    #[test]
    fn the_standard_error_grows_with_disagreeing_pairs() {
        let rounds = [
            round(true, 240.0, 240.0),
            round(false, 240.0, 240.0),
            round(true, 240.0, 250.0),
            round(false, 240.0, 250.0),
        ];
        let difference = Difference::of(&rounds).unwrap();
        assert!((difference.mean - 5.0).abs() < 1e-9, "{difference:?}");
        assert!(
            (difference.standard_error.unwrap() - 5.0).abs() < 1e-9,
            "{difference:?}"
        );
    }

    #[test]
    fn rounds_of_one_order_give_no_estimate() {
        let rounds = [round(true, 240.0, 230.0), round(true, 240.0, 230.0)];
        assert_eq!(Difference::of(&rounds), None);
        assert_eq!(Difference::of(&[]), None);
    }
}

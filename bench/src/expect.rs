//! What a churn run must have produced on the tracepoint, and the comparison with what tcpstated
//! counted.
//!
//! Exactness is checked by flows, not by a fixed number of transitions per connection: under load
//! some active closers skip FIN_WAIT2 (`FIN_WAIT1 -> CLOSE` when the peer's FIN comes with the ACK
//! of ours, see /work/shared/KERNEL.md), so every socket is checked to enter and leave each state
//! exactly once along the paths its close mode allows.

use std::collections::BTreeMap;

use super::churn::{ChurnReport, CloseMode};

/// `(role, from, to)` as tcpstated labels them.
pub type Edge = (String, String, String);

/// Transition counts for one port, by edge.
pub type EdgeCounts = BTreeMap<Edge, u64>;

/// One rule the counts must satisfy.
#[derive(Debug, Clone, PartialEq)]
enum Rule {
    /// The sum of `role`'s counts over `edges` equals `expected`.
    Sum {
        role: &'static str,
        edges: Vec<(&'static str, &'static str)>,
        expected: u64,
    },
    /// As `Sum`, over the edges into CLOSE: every socket's life ends with one.
    Ends {
        role: &'static str,
        edges: Vec<(&'static str, &'static str)>,
        expected: u64,
    },
    /// Every `role` socket that entered `state` left it: transitions in = transitions out.
    Balance {
        role: &'static str,
        state: &'static str,
    },
}

/// A rule's outcome, for the report.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckOutcome {
    pub description: String,
    pub expected: u64,
    pub counted: u64,
    /// A check that every socket's life ends (see `Rule::Ends`).
    pub ends_of_life: bool,
}

impl CheckOutcome {
    pub fn holds(&self) -> bool {
        self.expected == self.counted
    }
}

/// Every rule's outcome, plus edges the mode never produces.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Exactness {
    pub checks: Vec<CheckOutcome>,
    /// Edges counted that the close mode does not allow, with their counts.
    pub unexpected: Vec<(Edge, u64)>,
    /// Every transition counted on the port.
    pub transitions_counted: u64,
}

impl Exactness {
    /// Transitions missing or extra: the absolute differences of the failed checks plus the
    /// unexpected edges' counts. Zero means exact.
    pub fn discrepancy(&self) -> u64 {
        let failed: u64 = self
            .checks
            .iter()
            .map(|check| check.expected.abs_diff(check.counted))
            .sum();
        failed + self.unexpected.iter().map(|(_, count)| count).sum::<u64>()
    }

    pub fn is_exact(&self) -> bool {
        self.discrepancy() == 0
    }

    /// Sockets whose life has no end in the counts (no transition to CLOSE).
    pub fn sockets_without_end(&self) -> u64 {
        self.checks
            .iter()
            .filter(|check| check.ends_of_life)
            .map(|check| check.expected.saturating_sub(check.counted))
            .sum()
    }

    /// Sums another run's outcomes into this one (same checks in the same order).
    pub fn accumulate(&mut self, other: &Exactness) {
        if self.checks.is_empty() {
            self.checks = other.checks.clone();
        } else {
            for (mine, theirs) in self.checks.iter_mut().zip(&other.checks) {
                mine.expected += theirs.expected;
                mine.counted += theirs.counted;
            }
        }
        self.unexpected.extend(other.unexpected.iter().cloned());
        self.transitions_counted += other.transitions_counted;
    }
}

const CLOSE: &str = "CLOSE";
const LISTEN: &str = "LISTEN";
const SYN_SENT: &str = "SYN_SENT";
const SYN_RECV: &str = "SYN_RECV";
const ESTABLISHED: &str = "ESTABLISHED";
const FIN_WAIT1: &str = "FIN_WAIT1";
const FIN_WAIT2: &str = "FIN_WAIT2";
const CLOSING: &str = "CLOSING";
const CLOSE_WAIT: &str = "CLOSE_WAIT";
const LAST_ACK: &str = "LAST_ACK";

/// Paths of the side that closes first: FIN_WAIT1 is left for FIN_WAIT2, CLOSING (simultaneous
/// close) or straight to CLOSE (timewait reached directly); both intermediate states end in CLOSE.
const ACTIVE_CLOSE_EXITS: [(&str, &str); 3] = [
    (FIN_WAIT1, FIN_WAIT2),
    (FIN_WAIT1, CLOSE),
    (FIN_WAIT1, CLOSING),
];
const ACTIVE_CLOSE_EDGES: [(&str, &str); 5] = [
    (FIN_WAIT1, FIN_WAIT2),
    (FIN_WAIT1, CLOSE),
    (FIN_WAIT1, CLOSING),
    (FIN_WAIT2, CLOSE),
    (CLOSING, CLOSE),
];

fn exact(role: &'static str, from: &'static str, to: &'static str, expected: u64) -> Rule {
    Rule::Sum {
        role,
        edges: vec![(from, to)],
        expected,
    }
}

/// The side that closes first, after `established` sockets reached ESTABLISHED.
fn active_close(role: &'static str, established: u64) -> Vec<Rule> {
    vec![
        exact(role, ESTABLISHED, FIN_WAIT1, established),
        Rule::Sum {
            role,
            edges: ACTIVE_CLOSE_EXITS.to_vec(),
            expected: established,
        },
        Rule::Balance {
            role,
            state: FIN_WAIT2,
        },
        Rule::Balance {
            role,
            state: CLOSING,
        },
    ]
}

/// The side that closes second.
fn passive_close(role: &'static str, established: u64) -> Vec<Rule> {
    vec![
        exact(role, ESTABLISHED, CLOSE_WAIT, established),
        exact(role, CLOSE_WAIT, LAST_ACK, established),
        exact(role, LAST_ACK, CLOSE, established),
    ]
}

/// Rules and allowed edges for a run, from what the load generator did.
fn rules(report: &ChurnReport) -> (Vec<Rule>, Vec<(&'static str, &'static str, &'static str)>) {
    let clients = report.connections;
    let failed = report.connect_errors;
    let servers = report.accepted;
    let mut rules = vec![
        exact("listener", CLOSE, LISTEN, report.listeners),
        exact("listener", LISTEN, CLOSE, report.listeners),
        // A failed connect() still passed through SYN_SENT (tcp_v4_connect sets it before
        // choosing the port and resets to CLOSE on failure).
        exact("client", CLOSE, SYN_SENT, clients + failed),
        exact("client", SYN_SENT, ESTABLISHED, clients),
        exact("client", SYN_SENT, CLOSE, failed),
        // The child is cloned from the listener when the handshake's last ACK arrives.
        exact("server", LISTEN, SYN_RECV, servers),
        exact("server", SYN_RECV, ESTABLISHED, servers),
    ];
    let mut allowed = vec![
        ("listener", CLOSE, LISTEN),
        ("listener", LISTEN, CLOSE),
        ("client", CLOSE, SYN_SENT),
        ("client", SYN_SENT, ESTABLISHED),
        ("client", SYN_SENT, CLOSE),
        ("server", LISTEN, SYN_RECV),
        ("server", SYN_RECV, ESTABLISHED),
    ];
    let mut closes = |role: &'static str, active: bool, established: u64| {
        if active {
            rules.extend(active_close(role, established));
            allowed.push((role, ESTABLISHED, FIN_WAIT1));
            allowed.extend(
                ACTIVE_CLOSE_EDGES
                    .iter()
                    .map(|(from, to)| (role, *from, *to)),
            );
        } else {
            rules.extend(passive_close(role, established));
            allowed.extend([
                (role, ESTABLISHED, CLOSE_WAIT),
                (role, CLOSE_WAIT, LAST_ACK),
                (role, LAST_ACK, CLOSE),
            ]);
        }
    };
    match report.mode {
        CloseMode::ClientFirst => {
            closes("client", true, clients);
            closes("server", false, servers);
        }
        CloseMode::ServerFirst => {
            closes("server", true, servers);
            closes("client", false, clients);
        }
        CloseMode::Abort => {
            // SO_LINGER 0: the client sends RST, both sides go ESTABLISHED -> CLOSE.
            rules.push(exact("client", ESTABLISHED, CLOSE, clients));
            rules.push(exact("server", ESTABLISHED, CLOSE, servers));
            allowed.extend([
                ("client", ESTABLISHED, CLOSE),
                ("server", ESTABLISHED, CLOSE),
            ]);
        }
    }
    // Every socket's life ends with one transition to CLOSE, whichever path led there: this
    // also counts the lost last events of a socket whose earlier exit was lost.
    for (role, sockets) in [("client", clients + failed), ("server", servers)] {
        let edges: Vec<_> = allowed
            .iter()
            .filter(|(r, _, to)| *r == role && *to == CLOSE)
            .map(|(_, from, to)| (*from, *to))
            .collect();
        rules.push(Rule::Ends {
            role,
            edges,
            expected: sockets,
        });
    }
    (rules, allowed)
}

fn count(counts: &EdgeCounts, role: &str, from: &str, to: &str) -> u64 {
    counts
        .get(&(role.to_owned(), from.to_owned(), to.to_owned()))
        .copied()
        .unwrap_or(0)
}

/// Checks `counts` (everything tcpstated counted on the run's port) against what the load
/// generator's `report` implies.
pub fn check(report: &ChurnReport, counts: &EdgeCounts) -> Exactness {
    let (rules, allowed) = rules(report);
    let checks = rules
        .iter()
        .map(|rule| match rule {
            Rule::Sum {
                role,
                edges,
                expected,
            }
            | Rule::Ends {
                role,
                edges,
                expected,
            } => {
                let counted = edges
                    .iter()
                    .map(|(from, to)| count(counts, role, from, to))
                    .sum();
                let names: Vec<String> = edges
                    .iter()
                    .map(|(from, to)| format!("{from}→{to}"))
                    .collect();
                CheckOutcome {
                    description: format!("{role} {}", names.join(" + ")),
                    expected: *expected,
                    counted,
                    ends_of_life: matches!(rule, Rule::Ends { .. }),
                }
            }
            Rule::Balance { role, state } => {
                let into = |(edge, count): (&Edge, &u64)| {
                    (edge.0 == *role && edge.2 == *state).then_some(*count)
                };
                let out_of = |(edge, count): (&Edge, &u64)| {
                    (edge.0 == *role && edge.1 == *state).then_some(*count)
                };
                CheckOutcome {
                    description: format!("{role} {state}: left as often as entered"),
                    expected: counts.iter().filter_map(into).sum(),
                    counted: counts.iter().filter_map(out_of).sum(),
                    ends_of_life: false,
                }
            }
        })
        .collect();
    let unexpected = counts
        .iter()
        .filter(|((role, from, to), count)| {
            **count > 0
                && !allowed
                    .iter()
                    .any(|(r, f, t)| role == r && from == f && to == t)
        })
        .map(|(edge, count)| (edge.clone(), *count))
        .collect();
    Exactness {
        checks,
        unexpected,
        transitions_counted: counts.values().sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(
        mode: CloseMode,
        connections: u64,
        accepted: u64,
        connect_errors: u64,
    ) -> ChurnReport {
        ChurnReport {
            mode,
            listeners: 2,
            connections,
            accepted,
            connect_errors,
            ..ChurnReport::default()
        }
    }

    fn counts(items: &[(&str, &str, &str, u64)]) -> EdgeCounts {
        items
            .iter()
            .map(|(role, from, to, count)| {
                ((role.to_string(), from.to_string(), to.to_string()), *count)
            })
            .collect()
    }

    /// 100 client-first connections, 3 of which took `FIN_WAIT1 -> CLOSE` (9 transitions).
    fn client_first_counts() -> Vec<(&'static str, &'static str, &'static str, u64)> {
        vec![
            ("listener", "CLOSE", "LISTEN", 2),
            ("listener", "LISTEN", "CLOSE", 2),
            ("client", "CLOSE", "SYN_SENT", 100),
            ("client", "SYN_SENT", "ESTABLISHED", 100),
            ("client", "ESTABLISHED", "FIN_WAIT1", 100),
            ("client", "FIN_WAIT1", "FIN_WAIT2", 97),
            ("client", "FIN_WAIT1", "CLOSE", 3),
            ("client", "FIN_WAIT2", "CLOSE", 97),
            ("server", "LISTEN", "SYN_RECV", 100),
            ("server", "SYN_RECV", "ESTABLISHED", 100),
            ("server", "ESTABLISHED", "CLOSE_WAIT", 100),
            ("server", "CLOSE_WAIT", "LAST_ACK", 100),
            ("server", "LAST_ACK", "CLOSE", 100),
        ]
    }

    #[test]
    fn client_first_churn_is_exact_whichever_path_the_active_closer_takes() {
        let outcome = check(
            &report(CloseMode::ClientFirst, 100, 100, 0),
            &counts(&client_first_counts()),
        );
        assert!(outcome.is_exact(), "{outcome:#?}");
        assert_eq!(outcome.transitions_counted, 4 + 100 * 10 - 3);
    }

    #[test]
    fn a_lost_fin_wait2_exit_fails_the_balance_and_the_end_of_life() {
        let mut items = client_first_counts();
        items[7].3 = 96; // client FIN_WAIT2 -> CLOSE
        let outcome = check(
            &report(CloseMode::ClientFirst, 100, 100, 0),
            &counts(&items),
        );
        assert_eq!(outcome.discrepancy(), 2, "{outcome:#?}");
        let failed: Vec<_> = outcome
            .checks
            .iter()
            .filter(|c| !c.holds())
            .map(|c| c.description.as_str())
            .collect();
        assert_eq!(
            failed,
            [
                "client FIN_WAIT2: left as often as entered",
                "client SYN_SENT→CLOSE + FIN_WAIT1→CLOSE + FIN_WAIT2→CLOSE + CLOSING→CLOSE"
            ]
        );
    }

    #[test]
    fn a_socket_whose_last_two_events_were_lost_counts_twice() {
        // FIN_WAIT1 -> FIN_WAIT2 and FIN_WAIT2 -> CLOSE of one socket, both lost (they run in
        // the same softirq): the FIN_WAIT2 balance still holds, the exits and ends do not.
        let mut items = client_first_counts();
        items[5].3 = 96; // client FIN_WAIT1 -> FIN_WAIT2
        items[7].3 = 96; // client FIN_WAIT2 -> CLOSE
        let outcome = check(
            &report(CloseMode::ClientFirst, 100, 100, 0),
            &counts(&items),
        );
        assert_eq!(outcome.discrepancy(), 2, "{outcome:#?}");
        assert_eq!(outcome.sockets_without_end(), 1);
    }

    #[test]
    fn an_edge_the_mode_never_produces_is_reported_as_unexpected() {
        let mut items = client_first_counts();
        items.push(("server", "ESTABLISHED", "CLOSE", 1));
        let outcome = check(
            &report(CloseMode::ClientFirst, 100, 100, 0),
            &counts(&items),
        );
        assert_eq!(
            outcome.unexpected,
            vec![(("server".into(), "ESTABLISHED".into(), "CLOSE".into()), 1)]
        );
        assert_eq!(outcome.discrepancy(), 1);
    }

    #[test]
    fn failed_connects_count_as_syn_sent_then_close() {
        let mut items = client_first_counts();
        items[2].3 = 102; // CLOSE -> SYN_SENT
        items.push(("client", "SYN_SENT", "CLOSE", 2));
        let outcome = check(
            &report(CloseMode::ClientFirst, 100, 100, 2),
            &counts(&items),
        );
        assert!(outcome.is_exact(), "{outcome:#?}");
    }

    #[test]
    fn server_first_churn_mirrors_the_roles() {
        let items = [
            ("listener", "CLOSE", "LISTEN", 2),
            ("listener", "LISTEN", "CLOSE", 2),
            ("client", "CLOSE", "SYN_SENT", 10),
            ("client", "SYN_SENT", "ESTABLISHED", 10),
            ("client", "ESTABLISHED", "CLOSE_WAIT", 10),
            ("client", "CLOSE_WAIT", "LAST_ACK", 10),
            ("client", "LAST_ACK", "CLOSE", 10),
            ("server", "LISTEN", "SYN_RECV", 10),
            ("server", "SYN_RECV", "ESTABLISHED", 10),
            ("server", "ESTABLISHED", "FIN_WAIT1", 10),
            ("server", "FIN_WAIT1", "FIN_WAIT2", 10),
            ("server", "FIN_WAIT2", "CLOSE", 10),
        ];
        let outcome = check(&report(CloseMode::ServerFirst, 10, 10, 0), &counts(&items));
        assert!(outcome.is_exact(), "{outcome:#?}");
    }

    #[test]
    fn abort_resets_both_sides_from_established() {
        let items = [
            ("listener", "CLOSE", "LISTEN", 2),
            ("listener", "LISTEN", "CLOSE", 2),
            ("client", "CLOSE", "SYN_SENT", 10),
            ("client", "SYN_SENT", "ESTABLISHED", 10),
            ("client", "ESTABLISHED", "CLOSE", 10),
            ("server", "LISTEN", "SYN_RECV", 9),
            ("server", "SYN_RECV", "ESTABLISHED", 9),
            ("server", "ESTABLISHED", "CLOSE", 9),
        ];
        // One reset overtook its handshake's last ACK: the server never had that child.
        let outcome = check(&report(CloseMode::Abort, 10, 9, 0), &counts(&items));
        assert!(outcome.is_exact(), "{outcome:#?}");
    }

    #[test]
    fn accumulated_runs_add_expected_and_counted() {
        let run = check(
            &report(CloseMode::ClientFirst, 100, 100, 0),
            &counts(&client_first_counts()),
        );
        let mut total = Exactness::default();
        total.accumulate(&run);
        total.accumulate(&run);
        assert_eq!(total.transitions_counted, 2 * run.transitions_counted);
        assert_eq!(total.checks[2].expected, 200);
        assert!(total.is_exact());
    }
}

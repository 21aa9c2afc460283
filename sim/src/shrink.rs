//! Shrinking: from a failing scenario, search for a smaller one that still fails (fewer faults,
//! clients, operations, nodes; shorter; no BUGGIFY), so the failure is easier to read.
//!
//! Greedy delta debugging: try each reduction in turn, keep the first that still fails, start
//! over; stop when no reduction fails or the attempt budget is spent. Invariant: the returned
//! scenario failed when last run (or is the input, which the caller saw fail), and it is
//! concretized (explicit faults), so it replays as printed.

use crate::nemesis::{Fault, ScheduledFault, Target};
use crate::scenario::{Scenario, SUPPORTED_NODES};

#[derive(Debug, Clone)]
pub struct ShrinkOutcome {
    pub scenario: Scenario,
    /// Runs made while shrinking.
    pub attempts: usize,
    /// Reductions that kept the failure, in order, e.g. "remove fault 3".
    pub steps: Vec<String>,
}

/// Shrinks `failing` using `fails` (runs a scenario, returns whether it still fails) at most
/// `max_attempts` times.
pub fn shrink(
    failing: &Scenario,
    max_attempts: usize,
    mut fails: impl FnMut(&Scenario) -> bool,
) -> ShrinkOutcome {
    let mut current = failing.concretize();
    let mut attempts = 0;
    let mut steps = Vec::new();
    'outer: loop {
        for (label, candidate) in candidates(&current) {
            if attempts >= max_attempts {
                break 'outer;
            }
            if candidate == current || candidate.validate().is_err() {
                continue;
            }
            attempts += 1;
            if fails(&candidate) {
                steps.push(label);
                current = candidate;
                continue 'outer;
            }
        }
        break;
    }
    ShrinkOutcome {
        scenario: current,
        attempts,
        steps,
    }
}

fn faults_of(s: &Scenario) -> Vec<ScheduledFault> {
    s.faults.clone().unwrap_or_default()
}

fn with_faults(s: &Scenario, faults: Vec<ScheduledFault>) -> Scenario {
    Scenario {
        faults: Some(faults),
        ..s.clone()
    }
}

/// Reductions of `s`, biggest first.
fn candidates(s: &Scenario) -> Vec<(String, Scenario)> {
    let mut out = Vec::new();
    let faults = faults_of(s);
    // Remove whole chunks of faults first (halves, quarters...), then single faults.
    let mut chunk = faults.len() / 2;
    while chunk >= 1 {
        for start in (0..faults.len()).step_by(chunk) {
            let end = (start + chunk).min(faults.len());
            let mut kept = faults.clone();
            kept.drain(start..end);
            out.push((
                format!("remove faults {start}..{end}"),
                with_faults(s, kept),
            ));
        }
        chunk /= 2;
    }
    if s.clients > 1 {
        out.push((
            format!("clients {} -> 1", s.clients),
            Scenario {
                clients: 1,
                ..s.clone()
            },
        ));
        out.push((
            format!("clients {} -> {}", s.clients, s.clients - 1),
            Scenario {
                clients: s.clients - 1,
                ..s.clone()
            },
        ));
    }
    if s.ops_per_client > 1 {
        let ops = s.ops_per_client / 2;
        out.push((
            format!("ops {} -> {ops}", s.ops_per_client),
            Scenario {
                ops_per_client: ops,
                ..s.clone()
            },
        ));
    }
    if s.duration_s > 1 {
        let duration_s = s.duration_s.div_ceil(2);
        let final_heal_ms = s.nemesis.final_heal_ms;
        let limit_ms = (duration_s * 1000).saturating_sub(final_heal_ms);
        let kept: Vec<ScheduledFault> = faults
            .iter()
            .filter(|f| f.start_ms < limit_ms)
            .map(|f| ScheduledFault {
                end_ms: f.end_ms.min(limit_ms),
                ..f.clone()
            })
            .filter(|f| f.start_ms < f.end_ms)
            .collect();
        out.push((
            format!("duration {}s -> {duration_s}s", s.duration_s),
            Scenario {
                duration_s,
                faults: Some(kept),
                ..s.clone()
            },
        ));
    }
    for &nodes in SUPPORTED_NODES.iter().filter(|&&n| n < s.nodes) {
        let kept: Vec<ScheduledFault> = faults
            .iter()
            .filter_map(|f| restrict_to_nodes(f, nodes))
            .collect();
        out.push((
            format!("nodes {} -> {nodes}", s.nodes),
            Scenario {
                nodes,
                faults: Some(kept),
                ..s.clone()
            },
        ));
    }
    if s.buggify {
        out.push((
            "buggify off".to_string(),
            Scenario {
                buggify: false,
                ..s.clone()
            },
        ));
    }
    if s.think_time_ms > 0 {
        out.push((
            format!("think time {} -> 0 ms", s.think_time_ms),
            Scenario {
                think_time_ms: 0,
                ..s.clone()
            },
        ));
    }
    out
}

/// The fault on a cluster of only `nodes` nodes (indices >= nodes removed), or None when
/// nothing of it is left.
fn restrict_to_nodes(f: &ScheduledFault, nodes: u32) -> Option<ScheduledFault> {
    let keep = |v: &Vec<u32>| {
        v.iter()
            .copied()
            .filter(|&n| n < nodes)
            .collect::<Vec<u32>>()
    };
    let fault = match &f.fault {
        Fault::Partition { groups } => {
            let groups: Vec<Vec<u32>> = groups.iter().map(keep).filter(|g| !g.is_empty()).collect();
            if groups.len() < 2 {
                return None;
            }
            Fault::Partition { groups }
        }
        Fault::LeaderMinority { companions, .. } => Fault::LeaderMinority {
            minority_size: (nodes.saturating_sub(1) / 2).max(1),
            companions: keep(companions),
        },
        Fault::Bridge {
            left,
            bridge,
            right,
        } => {
            if *bridge >= nodes {
                return None;
            }
            Fault::Bridge {
                left: keep(left),
                bridge: *bridge,
                right: keep(right),
            }
        }
        Fault::OneWay { from, to } => Fault::OneWay {
            from: keep(from),
            to: keep(to),
        },
        Fault::Crash {
            target: Target::Node(n),
        }
        | Fault::Pause {
            target: Target::Node(n),
        }
        | Fault::DiskErrors { node: n, .. }
            if *n >= nodes =>
        {
            return None
        }
        other => other.clone(),
    };
    Some(ScheduledFault { fault, ..f.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for a simulation: "fails" when a crash of node 2 and a message-loss fault are
    /// both present and there are at least 2 clients.
    fn fails(s: &Scenario) -> bool {
        let faults = s.faults.clone().unwrap_or_default();
        let crash2 = faults.iter().any(|f| {
            f.fault
                == Fault::Crash {
                    target: Target::Node(2),
                }
        });
        let loss = faults
            .iter()
            .any(|f| matches!(f.fault, Fault::MessageLoss { .. }));
        crash2 && loss && s.clients >= 2
    }

    #[test]
    fn shrinks_to_the_essential_faults() {
        let mut scenario = Scenario::preset("mixed").expect("preset");
        let mut faults = scenario.fault_schedule();
        faults.push(ScheduledFault {
            start_ms: 100,
            end_ms: 200,
            fault: Fault::Crash {
                target: Target::Node(2),
            },
        });
        faults.push(ScheduledFault {
            start_ms: 300,
            end_ms: 400,
            fault: Fault::MessageLoss { percent: 10 },
        });
        scenario.faults = Some(faults);
        scenario.clients = 4;
        assert!(fails(&scenario));

        let outcome = shrink(&scenario, 500, fails);
        let shrunk = outcome.scenario;
        assert!(fails(&shrunk));
        let remaining = shrunk.faults.clone().unwrap_or_default();
        assert_eq!(remaining.len(), 2, "{remaining:?}");
        assert_eq!(shrunk.clients, 2);
        assert!(!shrunk.buggify);
        assert!(
            shrunk.duration_s < scenario.duration_s
                || shrunk.ops_per_client < scenario.ops_per_client
        );
        assert!(!outcome.steps.is_empty() && outcome.attempts <= 500);
    }

    #[test]
    fn respects_the_attempt_budget() {
        let scenario = Scenario::preset("mixed").expect("preset");
        let mut runs = 0;
        let outcome = shrink(&scenario, 3, |_| {
            runs += 1;
            false
        });
        assert_eq!(runs, 3);
        assert_eq!(outcome.scenario, scenario.concretize());
    }
}

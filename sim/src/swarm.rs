//! Swarm testing (Groce et al., ISSTA 2012; FoundationDB's and TigerBeetle's practice): each
//! seed draws its own configuration — which fault kinds are on at all, their periods and how
//! many at once, the cluster's size, shards, Raft timing, clients (how many, their timeouts and
//! retry pauses, how many only read), workload mix and BUGGIFY —
//! so that a campaign explores many sharp corners instead of one blurred average. A bug that
//! only one fault kind (or the absence of another) exposes is found by the seeds that enable
//! just that.
//!
//! Invariants: `draw` is a pure function of (template, seed); the drawn scenario is an ordinary
//! scenario (`swarm = false`, every drawn value in its fields), so its file replays and shrinks
//! like any other; the template's own knobs (duration, operations, planted bugs, BUGGIFY on or
//! off, simulated CPU cost) are kept, everything else is drawn.

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use workloads::WorkloadSpec;

use crate::nemesis::{FaultKind, NemesisSpec};
use crate::scenario::{ClientPolicy, RaftTiming, Scenario, DEFAULT_DEAD_NODE_TIMEOUT_MS};

/// The swarm's scenario name (the default campaign).
pub const SWARM: &str = "swarm";
/// Salt of the swarm's draw, so that it is independent of the other draws from the seed.
const SWARM_SALT: u64 = 0x7377_6172_6d21;
/// One seed in this many runs without any fault (the baseline corner).
const NO_FAULT_ONE_IN: u32 = 20;
/// One seed in this many enables only a few fault kinds.
const FOCUSED_ONE_IN: u32 = 4;

/// The swarm template: the knobs a campaign may set (duration, operations, planted bugs,
/// BUGGIFY); the rest is drawn per seed.
pub fn template() -> Scenario {
    let mut scenario = match Scenario::preset("mixed") {
        Ok(scenario) => scenario,
        Err(e) => unreachable!("the mixed preset exists: {e}"),
    };
    scenario.name = SWARM.to_string();
    scenario.swarm = true;
    scenario.nemesis = NemesisSpec::with_kinds(&FaultKind::swarm());
    scenario
}

/// The configuration of `seed`, drawn from it (see the module doc).
pub fn draw(template: &Scenario, seed: u64) -> Scenario {
    let mut rng = StdRng::seed_from_u64(seed ^ SWARM_SALT);
    let nodes = *[3u32, 5, 5, 7].choose(&mut rng).unwrap_or(&5);
    // Which fault kinds exist in this run at all: each with a probability that is itself drawn,
    // so that some seeds have one or two kinds and others most of them; one seed in
    // FOCUSED_ONE_IN is focused (a few kinds alone, the corners a crowd of faults blurs).
    let enable_percent = if rng.random_range(0..FOCUSED_ONE_IN) == 0 {
        rng.random_range(3..=10)
    } else {
        rng.random_range(10..=60)
    };
    let mut kinds: Vec<FaultKind> = FaultKind::swarm()
        .into_iter()
        .filter(|kind| !FaultKind::SWARM_LATE.contains(kind))
        .filter(|_| rng.random_range(0..100) < enable_percent)
        .collect();
    let no_fault = rng.random_range(0..NO_FAULT_ONE_IN) == 0;
    if no_fault {
        kinds.clear();
    }
    let joins = kinds.contains(&FaultKind::Join);
    let kills_for_good = kinds.contains(&FaultKind::KillForever);
    let spare_nodes = if joins { rng.random_range(1..=2) } else { 0 };
    let duration_ms = template.duration_ms();
    let mut nemesis = NemesisSpec::with_kinds(&kinds);
    nemesis.fault_ms = *[300, 800, 1_500, 3_000, 5_000]
        .choose(&mut rng)
        .unwrap_or(&3_000);
    nemesis.heal_ms = *[200, 500, 1_000, 2_000].choose(&mut rng).unwrap_or(&1_000);
    nemesis.max_concurrent = rng.random_range(1..=3);
    nemesis.final_heal_ms = rng.random_range(3_000..=5_000).min(duration_ms / 2);
    let workload = draw_workload(&mut rng);
    let raft_timing = rng.random_bool(0.5).then(|| {
        let election_timeout_ticks_min = rng.random_range(6..=20);
        RaftTiming {
            tick_interval_ms: *[10, 20, 20, 40].choose(&mut rng).unwrap_or(&20),
            election_timeout_ticks_min,
            election_timeout_ticks_max: election_timeout_ticks_min + rng.random_range(1..=20),
            heartbeat_interval_ticks: rng.random_range(1..=(election_timeout_ticks_min / 3).max(1)),
        }
    });
    let buggify_percent = *[0, 1, 5, 10, 25].choose(&mut rng).unwrap_or(&0);
    let knobs = rng.random_bool(0.8);
    let clients = rng.random_range(1..=8);
    let think_time_ms = *[0, 5, 20, 50].choose(&mut rng).unwrap_or(&20);
    let shards = *[1, 2, 4, 4, 8].choose(&mut rng).unwrap_or(&4);
    let dead_node_timeout_ms = if kills_for_good {
        *[2_000, 3_000, 5_000].choose(&mut rng).unwrap_or(&3_000)
    } else {
        DEFAULT_DEAD_NODE_TIMEOUT_MS
    };
    // Drawn last, so that the knobs above stay what they were for every seed.
    let client_policy = draw_client_policy(&mut rng, clients);
    // Kinds added to the swarm later: after every other draw, with this seed's probability.
    for kind in FaultKind::SWARM_LATE {
        if rng.random_range(0..100) < enable_percent && !no_fault {
            nemesis.kinds.push(kind);
        }
    }
    Scenario {
        name: SWARM.to_string(),
        seed,
        nodes,
        clients,
        think_time_ms,
        workload,
        nemesis,
        faults: None,
        buggify: template.buggify && knobs,
        buggify_percent: if template.buggify { buggify_percent } else { 0 },
        shards,
        spare_nodes,
        dead_node_timeout_ms,
        raft_timing,
        client_policy: Some(client_policy),
        swarm: false,
        ..template.clone()
    }
}

/// Clients that give up on a silent node soon or late, look for a new leader eagerly or
/// lazily, and, in three seeds in four with several clients, some that only read: watchers that
/// keep asking the node they last found leading while the writers move on (a deposed leader
/// that still answers reads, or a new one that answers before it knows what was committed,
/// then serves a read the checker can place after a newer write).
fn draw_client_policy(rng: &mut StdRng, clients: u32) -> ClientPolicy {
    let reader_clients = if clients >= 2 && rng.random_bool(0.75) {
        rng.random_range(1..=clients / 2)
    } else {
        0
    };
    ClientPolicy {
        request_timeout_ms: *[250, 500, 1_000, 1_000].choose(rng).unwrap_or(&1_000),
        retry_backoff_min_ms: *[1, 5, 10].choose(rng).unwrap_or(&10),
        retry_backoff_max_ms: *[50, 200, 500].choose(rng).unwrap_or(&500),
        reader_clients,
    }
}

fn draw_workload(rng: &mut StdRng) -> WorkloadSpec {
    match rng.random_range(0..20) {
        0..=11 => WorkloadSpec::Register {
            keys: rng.random_range(1..=5),
            read_weight: rng.random_range(1..=4),
            write_weight: rng.random_range(1..=4),
            cas_weight: rng.random_range(0..=2),
            delete_weight: rng.random_range(0..=1),
        },
        12..=14 => WorkloadSpec::set(),
        _ => WorkloadSpec::Ycsb {
            keys: *[10, 50, 200].choose(rng).unwrap_or(&50),
            read_percent: *[50, 95].choose(rng).unwrap_or(&50),
            hot_percent: *[0, 80].choose(rng).unwrap_or(&80),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_configuration() {
        let template = template();
        for seed in 0..50 {
            let a = template.for_seed(seed);
            assert_eq!(a, template.for_seed(seed));
            assert_eq!(a.fault_schedule(), template.for_seed(seed).fault_schedule());
            assert!(!a.swarm && a.seed == seed && a.name == SWARM);
            a.validate().expect("drawn scenario is valid");
        }
    }

    #[test]
    fn seeds_explore_different_corners() {
        let template = template();
        let drawn: Vec<Scenario> = (0..200).map(|s| template.for_seed(s)).collect();
        let distinct = |f: &dyn Fn(&Scenario) -> String| {
            drawn
                .iter()
                .map(f)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        };
        assert_eq!(distinct(&|s| s.nodes.to_string()), 3);
        assert!(distinct(&|s| s.clients.to_string()) >= 6);
        assert!(distinct(&|s| format!("{:?}", s.nemesis.kinds)) >= 150);
        assert!(distinct(&|s| format!("{:?}", s.raft_timing)) >= 50);
        assert!(drawn.iter().any(|s| s.nemesis.kinds.is_empty()));
        assert!(drawn.iter().any(|s| s.spare_nodes > 0));
        assert!(drawn
            .iter()
            .any(|s| matches!(s.workload, WorkloadSpec::Set { .. })));
        assert!(drawn.iter().any(|s| s.buggify_percent > 0));
        let readers = |s: &Scenario| s.client_policy.map_or(0, |p| p.reader_clients);
        assert!(drawn.iter().any(|s| readers(s) > 0));
        assert!(drawn.iter().any(|s| readers(s) == 0 && s.clients > 1));
        assert!(distinct(&|s| format!("{:?}", s.client_policy)) >= 30);
        assert!(drawn.iter().all(|s| readers(s) < s.clients));
        // Every kind is on in some seed and off in another.
        for kind in FaultKind::swarm() {
            let on = drawn
                .iter()
                .filter(|s| s.nemesis.kinds.contains(&kind))
                .count();
            assert!(on > 10 && on < 150, "{kind:?} on in {on} of 200");
        }
    }

    #[test]
    fn drawn_file_replays_the_same_run() {
        let mut template = template();
        template.duration_s = 12;
        template.planted_bugs = "vote-ignores-log".to_string();
        let drawn = template.for_seed(77).concretize();
        let text = drawn.to_toml().expect("toml");
        let back: Scenario = toml::from_str(&text).expect("parse");
        assert_eq!(back, drawn);
        assert_eq!(drawn.duration_s, 12);
        assert_eq!(drawn.planted_bugs, "vote-ignores-log");
        assert!(drawn.replay_command().contains("--scenario swarm"));
        // The template's BUGGIFY switch is kept: off means off everywhere.
        template.buggify = false;
        assert!((0..50).all(|s| {
            let d = template.for_seed(s);
            !d.buggify && d.buggify_percent == 0
        }));
    }
}

//! Proven bug-finding power: for each planted bug (node/src/bugs.rs), a campaign over seeds
//! 1..=max_seeds with a scenario suited to it must produce a failing verdict. Each test prints
//! the seed that found the bug and how many seeds it took (docs/SIMULATION.md lists them).
#![cfg(madsim)]

mod common;

use sim::Scenario;

/// A planted bug not found within this many seeds is a blind spot of the testbed.
const MAX_SEEDS: u64 = 40;
/// The seed budget of the planted bug the fewest swarm seeds find (6.5 % of seeds 1..200; see
/// below): first found at seed 26, next at 49, so one perturbed seed does not make it flaky.
const THIN_READ_BUG_SEEDS: u64 = 60;

fn hunt(bug: &str, max_seeds: u64, make: impl Fn(u64) -> Scenario) {
    for seed in 1..=max_seeds {
        let mut scenario = make(seed);
        scenario.planted_bugs = bug.to_string();
        let report = common::run_and_report(&scenario);
        if !report.verdict.passed() {
            println!(
                "verdict: planted bug {bug} found at seed {seed} after {seed} seeds: {}",
                report.verdict.summary()
            );
            return;
        }
    }
    panic!("planted bug {bug} not found in {max_seeds} seeds: a blind spot of the testbed");
}

#[test]
fn finds_follower_local_reads() {
    hunt("follower-local-reads", MAX_SEEDS, |s| {
        common::ci_scenario("partitions", s, 5, 10)
    });
}

#[test]
fn finds_ack_before_fsync() {
    hunt("ack-before-fsync", MAX_SEEDS, |s| {
        common::ci_scenario("crashes", s, 3, 10)
    });
}

#[test]
fn finds_no_retry_dedup() {
    hunt("no-retry-dedup", MAX_SEEDS, |s| {
        common::ci_scenario("mixed", s, 3, 10)
    });
}

#[test]
fn finds_snapshot_drops_sessions() {
    hunt("snapshot-drops-sessions", MAX_SEEDS, |s| {
        common::ci_scenario("mixed", s, 3, 10)
    });
}

/// Found by the vote-strike fault (the `votes` preset): the voters of a new leader lose power
/// the moment it wins and the leader is cut off; a node that never heard of the term campaigns
/// in it again and the amnesiac voters elect it too. The safety monitor reports two leaders in
/// one term at once (before any read shows it). About one seed in four finds it.
#[test]
fn finds_vote_not_persisted() {
    hunt("vote-not-persisted", MAX_SEEDS, |s| {
        common::ci_scenario("votes", s, 3, 10)
    });
}

/// Found by the safety monitor's commit-rule check (a leader advanced its commit index to an
/// entry of an older term, Raft 5.4.2) on the `elections` preset, 5 nodes; BUGGIFY's Append
/// batches of 1-2 entries let a catching-up follower put an old entry on a quorum before the
/// leader's own no-op. About one seed in four finds it.
#[test]
fn finds_commit_counts_old_terms() {
    hunt("commit-counts-old-terms", MAX_SEEDS, |s| {
        common::ci_scenario("elections", s, 5, 10)
    });
}

/// The WAL deletes old segments while a group still has live entries in them: after a crash
/// (BUGGIFY's small segments make rolls and recycling frequent) a restarted node's group has
/// lost acknowledged entries or cannot recover at all.
#[test]
fn finds_wal_recycles_live_segment() {
    hunt("wal-recycles-live-segment", MAX_SEEDS, |s| {
        common::ci_scenario("crashes", s, 3, 10)
    });
}

/// A shard's checkpoint is reported durable (token saved, log compacted through it) while the
/// engine commit it stands for is not: after a power loss the engine is behind its token and
/// the replica cannot restart (or, worse, would miss the entries in between).
#[test]
fn finds_applied_before_data() {
    hunt("applied-before-data", MAX_SEEDS, |s| {
        common::ci_scenario("crashes", s, 3, 10)
    });
}

/// The snapshot stream's sender skips the first key of every chunk after the first. A node
/// that restarts behind its leader's compaction point gets a streamed snapshot (BUGGIFY's
/// checkpoints every few entries, the simulator's 512-byte chunks); the replica digest check
/// (`ProtocolEvent::StateDigest`, compared per group and applied index by the safety monitor)
/// reports the divergence even when no client reads the lost key. The `crashes` preset never
/// shows it: its register workload's 3 keys fit one chunk. The swarm's set and YCSB seeds hold
/// shards of many keys (seed 3: a 43-chunk stream).
#[test]
fn swarm_finds_snapshot_chunk_skips_key() {
    hunt_in_swarm("snapshot-chunk-skips-key");
}

/// The bugs planted for the swarm (issue 12) are hunted by the swarm itself, the default
/// campaign, not by a preset tailored to each: 10 simulated seconds per seed here (the mutation
/// score, `make mutation`, runs 20).
fn hunt_in_swarm(bug: &str) {
    hunt(bug, MAX_SEEDS, |s| common::swarm_scenario(s, 10));
}

/// The read-path bugs need longer runs (a deposed or fresh leader, watchers reading the key
/// just written), and so does `vote-ignores-log`: 20 simulated seconds per seed, as
/// `make mutation`.
fn hunt_in_long_swarm_runs(bug: &str) {
    hunt(bug, MAX_SEEDS, |s| common::swarm_scenario(s, 20));
}

/// A ReadIndex round released without a quorum: the `StaleLeader` fault's deposed leader
/// answers the watchers that stick to it while the writers moved to its successor.
#[test]
fn swarm_finds_read_skips_quorum() {
    hunt_in_long_swarm_runs("read-skips-quorum");
}

/// Reads served before the new leader committed an entry of its term: its commit index lags
/// what its predecessor acknowledged. A read must reach the new leader after a quorum answered
/// its heartbeats and before its first Append is acknowledged: `LaggingSuccessor` and
/// `CutLeaderOnCommit` cut a leader off as it commits and lose its successor's log
/// replication meanwhile (1-3 % of swarm seeds found it before they did, 6.5 % since), so
/// this hunt gets `THIN_READ_BUG_SEEDS`.
#[test]
fn swarm_finds_read_before_term_commit() {
    hunt("read-before-term-commit", THIN_READ_BUG_SEEDS, |s| {
        common::swarm_scenario(s, 20)
    });
}

/// Votes granted without the log comparison: a leader without committed entries. At 10
/// simulated seconds per seed only seed 26 of 1..40 found it (and none once `LaggingSuccessor`
/// changed that seed; the next is 63); at 20 s, 17-19 of seeds 1..100 do, the first at seed 3.
#[test]
fn swarm_finds_vote_ignores_log() {
    hunt_in_long_swarm_runs("vote-ignores-log");
}

/// A candidate canvasses and counts learners: leaders without a majority of voters.
#[test]
fn swarm_finds_votes_from_non_voters() {
    hunt_in_swarm("votes-from-non-voters");
}

//! One test per Raft rule, on small hand-driven clusters or single cores.

use super::cluster::Cluster;
use crate::raft::{
    Config, Entry, EntryPayload, HardState, Membership, MembershipChange, Message, MessageBody,
    NodeId, NotLeader, ProposeError, Raft, Ready, Restored, Role,
};

fn config(id: NodeId, seed: u64) -> Config {
    Config::new(id, seed)
}

fn cluster(n: u64) -> Cluster {
    Cluster::new(&(1..=n).collect::<Vec<_>>(), &[], config)
}

/// Delivers everything (in order) and processes every Ready until quiet; checks safety.
fn settle(c: &mut Cluster) {
    for _ in 0..100 {
        c.process_all_ready().unwrap();
        if c.network.is_empty() {
            break;
        }
        while !c.network.is_empty() {
            c.deliver(0);
        }
    }
    c.check().unwrap();
}

fn run_ticks(c: &mut Cluster, ticks: usize) {
    for _ in 0..ticks {
        c.tick_all();
        settle(c);
    }
}

fn elect(c: &mut Cluster) -> NodeId {
    for _ in 0..200 {
        run_ticks(c, 1);
        if let Some(l) = c.leader() {
            return l;
        }
    }
    panic!("no leader elected");
}

fn voters(ids: &[NodeId]) -> Membership {
    Membership {
        voters: ids.iter().copied().collect(),
        learners: Default::default(),
    }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        payload: EntryPayload::Command(vec![index as u8]),
    }
}

fn core(id: NodeId, members: &[NodeId], hs: HardState, entries: Vec<Entry>) -> Raft {
    let restored = Restored {
        hard_state: hs,
        snapshot: None,
        entries,
        initial_membership: voters(members),
    };
    Raft::new(Config::new(id, 7), restored).unwrap()
}

fn msg(from: NodeId, to: NodeId, term: u64, body: MessageBody) -> Message {
    Message {
        from,
        to,
        term,
        body,
    }
}

fn drain(r: &mut Raft) -> Ready {
    let rd = r.ready();
    r.advance(rd.clone());
    rd
}

#[test]
fn config_validation_rejects_nonsense() {
    let mut c = Config::new(1, 0);
    assert!(c.validate().is_ok());
    c.election_timeout_ticks_max = c.election_timeout_ticks_min;
    assert!(c.validate().is_err());
    let mut c = Config::new(1, 0);
    c.heartbeat_interval_ticks = c.election_timeout_ticks_min;
    assert!(c.validate().is_err());
    let mut c = Config::new(1, 0);
    c.max_inflight_appends = 0;
    assert!(Raft::new(c, Restored::default()).is_err());
}

#[test]
fn restore_rejects_a_log_with_gaps() {
    let restored = Restored {
        entries: vec![entry(1, 1), entry(3, 1)],
        initial_membership: voters(&[1]),
        ..Restored::default()
    };
    assert!(Raft::new(Config::new(1, 0), restored).is_err());
}

#[test]
fn single_node_elects_itself_and_commits() {
    let mut c = cluster(1);
    let l = elect(&mut c);
    assert_eq!(l, 1);
    let (index, _) = c.raft_mut(1).unwrap().propose(b"x".to_vec()).unwrap();
    settle(&mut c);
    assert_eq!(c.raft(1).unwrap().commit_index(), index);
    assert_eq!(c.nodes[&1].app.index, index);
}

#[test]
fn three_nodes_elect_one_leader_and_replicate() {
    let mut c = cluster(3);
    let l = elect(&mut c);
    for i in 0..10u8 {
        c.raft_mut(l).unwrap().propose(vec![i]).unwrap();
    }
    settle(&mut c);
    let commit = c.raft(l).unwrap().commit_index();
    assert_eq!(commit, c.raft(l).unwrap().last_index());
    run_ticks(&mut c, 3); // heartbeats carry the commit index
    for id in 1..=3 {
        assert_eq!(
            c.nodes[&id].app.index, commit,
            "node {id} applied everything"
        );
    }
    assert_eq!(
        c.ids()
            .iter()
            .filter(|id| c.raft(**id).unwrap().role() == Role::Leader)
            .count(),
        1
    );
}

#[test]
fn followers_refuse_proposals_and_reads_with_a_leader_hint() {
    let mut c = cluster(3);
    let l = elect(&mut c);
    run_ticks(&mut c, 2);
    let f = (1..=3).find(|id| *id != l).unwrap();
    let err = c.raft_mut(f).unwrap().propose(vec![1]).unwrap_err();
    assert_eq!(err.leader, Some(l));
    assert!(c.raft_mut(f).unwrap().read_index(1).is_err());
}

#[test]
fn vote_is_in_the_ready_that_carries_the_vote_response() {
    let mut r = core(2, &[1, 2, 3], HardState::default(), vec![]);
    r.step(msg(
        1,
        2,
        1,
        MessageBody::Vote {
            last_index: 0,
            last_term: 0,
            transfer: false,
        },
    ));
    let rd = r.ready();
    assert!(rd
        .messages
        .iter()
        .any(|m| m.body == MessageBody::VoteResponse { granted: true }));
    assert_eq!(
        rd.hard_state,
        Some(HardState {
            term: 1,
            vote: Some(1),
            commit: 0
        })
    );
}

#[test]
fn planted_vote_not_persisted_drops_the_vote_from_the_ready() {
    let mut cfg = Config::new(2, 7);
    cfg.bugs.vote_not_persisted = true;
    let restored = Restored {
        initial_membership: voters(&[1, 2, 3]),
        ..Restored::default()
    };
    let mut r = Raft::new(cfg, restored).unwrap();
    r.step(msg(
        1,
        2,
        1,
        MessageBody::Vote {
            last_index: 0,
            last_term: 0,
            transfer: false,
        },
    ));
    let rd = r.ready();
    assert_eq!(
        rd.hard_state,
        Some(HardState {
            term: 1,
            vote: None,
            commit: 0
        })
    );
}

#[test]
fn vote_granted_once_per_term_and_only_to_up_to_date_logs() {
    let mut r = core(
        3,
        &[1, 2, 3],
        HardState {
            term: 2,
            vote: None,
            commit: 0,
        },
        vec![entry(1, 2)],
    );
    // Candidate 1 with a shorter log: refused.
    r.step(msg(
        1,
        3,
        3,
        MessageBody::Vote {
            last_index: 0,
            last_term: 0,
            transfer: false,
        },
    ));
    // Candidate 2 with an equal log: granted.
    r.step(msg(
        2,
        3,
        3,
        MessageBody::Vote {
            last_index: 1,
            last_term: 2,
            transfer: false,
        },
    ));
    // Candidate 1 again, now up to date but same term: refused (already voted).
    r.step(msg(
        1,
        3,
        3,
        MessageBody::Vote {
            last_index: 5,
            last_term: 3,
            transfer: false,
        },
    ));
    let rd = drain(&mut r);
    let grants: Vec<_> = rd
        .messages
        .iter()
        .map(|m| (m.to, m.body == MessageBody::VoteResponse { granted: true }))
        .collect();
    assert_eq!(grants, vec![(1, false), (2, true), (1, false)]);
    assert_eq!(r.hard_state().vote, Some(2));
}

/// A re-created replica (vote floor set) grants no vote and does not campaign until it knows a
/// membership newer than the one that removed its earlier incarnation.
#[test]
fn replica_below_its_vote_floor_neither_votes_nor_campaigns() {
    let vote = |term| {
        msg(
            1,
            3,
            term,
            MessageBody::Vote {
                last_index: 10,
                last_term: 2,
                transfer: false,
            },
        )
    };
    let grants = |rd: &Ready| {
        rd.messages
            .iter()
            .filter(|m| m.body == MessageBody::VoteResponse { granted: true })
            .count()
    };
    // An empty replica that counts itself a voter (bootstrap membership replayed).
    let mut r = core(3, &[1, 2, 3], HardState::default(), Vec::new());
    r.set_vote_floor(7);
    r.step(vote(3));
    assert_eq!(grants(&drain(&mut r)), 0, "below the floor: no vote");
    for _ in 0..200 {
        r.tick();
    }
    let rd = drain(&mut r);
    assert_eq!(r.role(), Role::Follower, "below the floor: no campaign");
    assert!(rd.messages.is_empty(), "{:?}", rd.messages);
    // Without the floor the same replica grants the vote.
    let mut r = core(3, &[1, 2, 3], HardState::default(), Vec::new());
    r.step(vote(3));
    assert_eq!(grants(&drain(&mut r)), 1);
    // Past the floor (a membership entry at index 8 > 7): votes again.
    let mut entries: Vec<Entry> = (1..=7).map(|i| entry(i, 1)).collect();
    entries.push(Entry {
        index: 8,
        term: 1,
        payload: EntryPayload::Membership(MembershipChange::AddLearner(4)),
    });
    let mut r = core(3, &[1, 2, 3], HardState::default(), entries);
    r.set_vote_floor(7);
    r.step(vote(3));
    assert_eq!(
        grants(&drain(&mut r)),
        1,
        "a newer membership lifts the floor"
    );
}

#[test]
fn prevote_does_not_change_terms() {
    let mut r = core(
        3,
        &[1, 2, 3],
        HardState {
            term: 4,
            vote: None,
            commit: 0,
        },
        vec![],
    );
    r.step(msg(
        1,
        3,
        5,
        MessageBody::PreVote {
            last_index: 0,
            last_term: 0,
        },
    ));
    let rd = drain(&mut r);
    assert_eq!(r.term(), 4, "a pre-vote never changes the receiver's term");
    assert_eq!(
        rd.messages[0].body,
        MessageBody::PreVoteResponse { granted: true }
    );
    assert_eq!(rd.messages[0].term, 5);
}

#[test]
fn partitioned_node_does_not_disrupt_the_leader_when_it_returns() {
    let mut c = cluster(3);
    let l = elect(&mut c);
    let term = c.raft(l).unwrap().term();
    let lonely = (1..=3).find(|id| *id != l).unwrap();
    c.partition(&[lonely]);
    run_ticks(&mut c, 100);
    assert_eq!(
        c.raft(lonely).unwrap().term(),
        term,
        "PreVote keeps the isolated term"
    );
    c.heal();
    run_ticks(&mut c, 30);
    assert_eq!(c.leader(), Some(l));
    assert_eq!(c.raft(l).unwrap().term(), term);
}

#[test]
fn check_quorum_makes_an_isolated_leader_step_down() {
    let mut c = cluster(3);
    let l = elect(&mut c);
    c.partition(&[l]);
    run_ticks(&mut c, 25);
    assert_ne!(c.raft(l).unwrap().role(), Role::Leader);
    let new = c.leader().unwrap();
    assert_ne!(new, l);
}

#[test]
fn follower_in_lease_ignores_vote_requests_unless_transfer() {
    let mut r = core(
        2,
        &[1, 2, 3],
        HardState {
            term: 1,
            vote: Some(1),
            commit: 0,
        },
        vec![],
    );
    r.step(msg(
        1,
        2,
        1,
        MessageBody::Heartbeat {
            commit: 0,
            read_seq: 0,
        },
    ));
    drain(&mut r);
    r.step(msg(
        3,
        2,
        2,
        MessageBody::Vote {
            last_index: 9,
            last_term: 9,
            transfer: false,
        },
    ));
    assert_eq!(r.term(), 1, "ignored in lease");
    assert!(drain(&mut r).messages.is_empty());
    r.step(msg(
        3,
        2,
        2,
        MessageBody::Vote {
            last_index: 9,
            last_term: 9,
            transfer: true,
        },
    ));
    assert_eq!(r.term(), 2);
    assert_eq!(
        drain(&mut r).messages[0].body,
        MessageBody::VoteResponse { granted: true }
    );
}

#[test]
fn stale_leader_learns_the_newer_term_from_an_append_rejection() {
    let mut r = core(
        2,
        &[1, 2, 3],
        HardState {
            term: 5,
            vote: None,
            commit: 0,
        },
        vec![],
    );
    r.step(msg(
        1,
        2,
        3,
        MessageBody::Heartbeat {
            commit: 0,
            read_seq: 0,
        },
    ));
    let rd = drain(&mut r);
    assert_eq!(rd.messages.len(), 1);
    assert_eq!(rd.messages[0].term, 5);
}

#[test]
fn leader_does_not_count_replicas_of_old_term_entries_figure_8() {
    // Node 1 is leader of term 4 with an entry of term 2 at index 1 that node 2 also has.
    let mut r = core(
        1,
        &[1, 2, 3],
        HardState {
            term: 3,
            vote: None,
            commit: 0,
        },
        vec![entry(1, 2)],
    );
    r.step(msg(2, 1, 4, MessageBody::VoteResponse { granted: false })); // term 4 now
    for _ in 0..30 {
        r.tick();
        if r.role() == Role::PreCandidate {
            break;
        }
    }
    r.step(msg(2, 1, 5, MessageBody::PreVoteResponse { granted: true }));
    assert_eq!(r.role(), Role::Candidate);
    let term = r.term();
    r.step(msg(2, 1, term, MessageBody::VoteResponse { granted: true }));
    assert_eq!(r.role(), Role::Leader);
    drain(&mut r); // persists the no-op at index 2
                   // Follower 2 acknowledges only index 1 (the old-term entry): no commit.
    r.step(msg(
        2,
        1,
        term,
        MessageBody::AppendResponse {
            success: true,
            index: 1,
            reject_hint: None,
        },
    ));
    assert_eq!(
        r.commit_index(),
        0,
        "Figure 8: a replica count alone commits no old-term entry"
    );
    r.step(msg(
        2,
        1,
        term,
        MessageBody::AppendResponse {
            success: true,
            index: 2,
            reject_hint: None,
        },
    ));
    assert_eq!(
        r.commit_index(),
        2,
        "committing the current-term entry commits the old one"
    );
}

#[test]
fn planted_commit_counts_old_terms_commits_the_old_entry() {
    let mut cfg = Config::new(1, 7);
    cfg.bugs.commit_counts_old_terms = true;
    cfg.pre_vote = false;
    let restored = Restored {
        hard_state: HardState {
            term: 3,
            vote: None,
            commit: 0,
        },
        entries: vec![entry(1, 2)],
        initial_membership: voters(&[1, 2, 3]),
        ..Restored::default()
    };
    let mut r = Raft::new(cfg, restored).unwrap();
    while r.role() != Role::Candidate {
        r.tick();
    }
    let term = r.term();
    r.step(msg(2, 1, term, MessageBody::VoteResponse { granted: true }));
    drain(&mut r);
    r.step(msg(
        2,
        1,
        term,
        MessageBody::AppendResponse {
            success: true,
            index: 1,
            reject_hint: None,
        },
    ));
    assert_eq!(r.commit_index(), 1);
}

#[test]
fn committed_entries_wait_for_local_durability() {
    let mut c = cluster(1);
    elect(&mut c);
    let r = c.raft_mut(1).unwrap();
    let (index, _) = r.propose(vec![9]).unwrap();
    let rd = r.ready();
    assert!(rd.entries.iter().any(|e| e.index == index));
    assert!(
        rd.committed.iter().all(|e| e.index < index),
        "not committed before it is durable"
    );
    r.advance(rd);
    let rd = r.ready();
    assert_eq!(rd.committed.last().map(|e| e.index), Some(index));
}

#[test]
fn conflicting_follower_log_is_repaired_with_term_skipping() {
    // Follower 2 holds 50 entries of a term the leader never had; the leader has 3 terms.
    let leader_log: Vec<Entry> = (1..=30).map(|i| entry(i, 1 + (i - 1) / 10)).collect();
    let follower_log: Vec<Entry> = (1..=10)
        .map(|i| entry(i, 1))
        .chain((11..=60).map(|i| entry(i, 2)))
        .collect();
    let mut l = core(
        1,
        &[1, 2],
        HardState {
            term: 4,
            vote: None,
            commit: 0,
        },
        leader_log,
    );
    let mut f = core(
        2,
        &[1, 2],
        HardState {
            term: 4,
            vote: None,
            commit: 0,
        },
        follower_log,
    );
    while l.role() != Role::Leader {
        l.tick();
        for m in drain(&mut l).messages {
            f.step(m);
        }
        for m in drain(&mut f).messages {
            l.step(m);
        }
    }
    let mut round_trips = 0;
    loop {
        let to_f = drain(&mut l).messages;
        let appends = to_f
            .iter()
            .filter(|m| matches!(m.body, MessageBody::Append { .. }))
            .count();
        for m in to_f {
            f.step(m);
        }
        let back = drain(&mut f).messages;
        if appends == 0 && back.is_empty() {
            break;
        }
        round_trips += 1;
        for m in back {
            l.step(m);
        }
        assert!(round_trips < 10, "back-off should skip whole terms");
    }
    assert_eq!(f.log_entries(), l.log_entries());
    assert_eq!(f.commit_index(), l.last_index());
}

#[test]
fn pipelining_respects_the_inflight_window_and_message_limits() {
    let mk = |id, seed| {
        let mut c = Config::new(id, seed);
        c.max_inflight_appends = 2;
        c.max_append_entries = 3;
        c
    };
    let mut c = Cluster::new(&[1, 2, 3], &[], mk);
    let l = elect(&mut c);
    for i in 0..40u8 {
        c.raft_mut(l).unwrap().propose(vec![i]).unwrap();
    }
    c.process_ready(l).unwrap();
    let mut per_peer = std::collections::BTreeMap::new();
    for m in &c.network {
        if let MessageBody::Append { entries, .. } = &m.body {
            assert!(entries.len() <= 3);
            *per_peer.entry(m.to).or_insert(0) += 1;
        }
    }
    assert!(
        per_peer.values().all(|n| *n <= 2),
        "window of 2: {per_peer:?}"
    );
    settle(&mut c);
    assert_eq!(
        c.raft(l).unwrap().commit_index(),
        c.raft(l).unwrap().last_index()
    );
}

/// In a 3-node cluster: elects a leader, crashes another node, commits 20 entries without it
/// and snapshots the leader. Returns (leader, crashed follower).
fn leader_snapshotted_past_a_crashed_follower(c: &mut Cluster) -> (NodeId, NodeId) {
    let l = elect(c);
    let lag = (1..=3).find(|id| *id != l).unwrap();
    c.crash(lag);
    for i in 0..20u8 {
        c.raft_mut(l).unwrap().propose(vec![i]).unwrap();
    }
    settle(c);
    c.snapshot(l);
    (l, lag)
}

#[test]
fn lagging_follower_gets_a_snapshot() {
    let mut c = cluster(3);
    let (l, lag) = leader_snapshotted_past_a_crashed_follower(&mut c);
    assert!(c.raft(l).unwrap().log_entries().is_empty());
    c.restart(lag);
    run_ticks(&mut c, 5);
    let lr = c.raft(l).unwrap().commit_index();
    assert_eq!(c.nodes[&lag].app.index, lr);
    assert!(
        c.nodes[&lag].durable.snapshot.is_some(),
        "installed from the leader's snapshot"
    );
}

/// Leaders keep up to `entries` entries below a snapshot for members catching up.
fn retaining(entries: u64) -> impl Fn(NodeId, u64) -> Config {
    move |id, seed| {
        let mut c = Config::new(id, seed);
        c.retained_log_entries_max = entries;
        c.retained_log_bytes_max = entries * 16;
        c
    }
}

/// Ticks (up to 20 times) until the leader sends `to` its snapshot, which is held back and
/// returned: exactly one.
fn tick_until_snapshot_held(c: &mut Cluster, to: NodeId) -> Vec<Message> {
    let mut held = Vec::new();
    for _ in 0..20 {
        c.tick_all();
        held = settle_holding_snapshots(c, to);
        if !held.is_empty() {
            break;
        }
    }
    assert_eq!(held.len(), 1, "the leader sends its snapshot");
    held
}

/// As `settle`, but every InstallSnapshot to `to` is held back (a shard's snapshot streams
/// for seconds while the leader goes on) and returned.
fn settle_holding_snapshots(c: &mut Cluster, to: NodeId) -> Vec<Message> {
    let mut held = Vec::new();
    for _ in 0..100 {
        c.process_all_ready().unwrap();
        let (snapshots, rest): (Vec<Message>, Vec<Message>) = std::mem::take(&mut c.network)
            .into_iter()
            .partition(|m| m.to == to && matches!(m.body, MessageBody::InstallSnapshot { .. }));
        held.extend(snapshots);
        c.network = rest;
        if c.network.is_empty() {
            break;
        }
        while !c.network.is_empty() {
            c.deliver(0);
        }
    }
    c.check().unwrap();
    held
}

/// Issue 11 (a node joining under load got most shards streamed twice): a follower is sent a
/// snapshot; while it is on its way the leader checkpoints twice (and, the first one having
/// stalled, asks again with a newer snapshot, which the stream in progress ignores). Returns
/// the InstallSnapshots the follower received (the first one included) and whether the one
/// it ended up with is the first.
fn catch_up_after_checkpoints_meanwhile(retained_entries_max: u64) -> (u64, bool) {
    let mut c = Cluster::new(&[1, 2, 3], &[], retaining(retained_entries_max));
    // More than the bound behind: the leader compacts through its snapshot all the same.
    let (l, lag) = leader_snapshotted_past_a_crashed_follower(&mut c);
    let other = (1..=3).find(|id| *id != l && *id != lag).unwrap();
    assert!(c.raft(l).unwrap().log_entries().is_empty());
    let first_snapshot = c.raft(l).unwrap().snapshot_meta().unwrap().index;
    c.restart(lag);
    let held = tick_until_snapshot_held(&mut c, lag);
    // The leader goes on and checkpoints while the snapshot is on its way.
    for i in 0..3u8 {
        c.raft_mut(l).unwrap().propose(vec![i]).unwrap();
    }
    settle_holding_snapshots(&mut c, lag);
    c.snapshot(l);
    c.snapshot(other);
    let first_kept = |c: &Cluster, id| c.raft(id).unwrap().log_entries().first().map(|e| e.index);
    assert_eq!(first_kept(&c, other), None, "followers compact through");
    // The snapshot stalls: the leader asks again, with its newer snapshot.
    let mut resent = Vec::new();
    for _ in 0..30 {
        c.tick_all();
        resent.extend(settle_holding_snapshots(&mut c, lag));
    }
    assert!(!resent.is_empty(), "a stalled snapshot is sent again");
    for i in 0..2u8 {
        c.raft_mut(l).unwrap().propose(vec![i]).unwrap();
    }
    settle_holding_snapshots(&mut c, lag);
    c.snapshot(l);
    assert!(c.raft(l).unwrap().snapshot_meta().unwrap().index >= first_snapshot + 5);
    if retained_entries_max >= 5 {
        assert_eq!(first_kept(&c, l), Some(first_snapshot + 1));
        assert_eq!(
            c.raft(l).unwrap().log_needed_from(),
            Some(first_snapshot + 1)
        );
    }
    // The first snapshot arrives; everything after it is delivered.
    let before = c.checker.delivered.get("InstallSnapshot").copied();
    assert_eq!(before, None);
    c.network.extend(held);
    run_ticks(&mut c, 5);
    let lr = c.raft(l).unwrap().commit_index();
    assert_eq!(c.nodes[&lag].app.index, lr, "caught up");
    let installed = c.nodes[&lag].durable.snapshot.as_ref().unwrap().meta.index;
    (
        c.checker.delivered["InstallSnapshot"],
        installed == first_snapshot,
    )
}

#[test]
fn a_follower_sent_a_snapshot_catches_up_from_the_log_though_the_leader_checkpointed() {
    assert_eq!(catch_up_after_checkpoints_meanwhile(8), (1, true));
}

#[test]
fn past_its_bound_the_leader_compacts_and_the_follower_gets_a_second_snapshot() {
    assert_eq!(catch_up_after_checkpoints_meanwhile(4), (2, false));
    assert_eq!(catch_up_after_checkpoints_meanwhile(0), (2, false));
}

/// The snapshot reaches the follower just after the leader's stall timer put it back to
/// probing (before the leader asked again): the acknowledgement must move the probe past the
/// snapshot, not leave it at the old position below the log, which sent a second snapshot.
#[test]
fn a_snapshot_acknowledged_after_its_stall_is_followed_by_appends() {
    use crate::raft::progress::ProgressState;
    let mut c = Cluster::new(&[1, 2, 3], &[], retaining(8));
    let (l, lag) = leader_snapshotted_past_a_crashed_follower(&mut c);
    c.restart(lag);
    let held = tick_until_snapshot_held(&mut c, lag);
    let state = |c: &Cluster| c.raft(l).unwrap().progress[&lag].state;
    for _ in 0..100 {
        if state(&c) == ProgressState::Probe {
            break;
        }
        c.tick(l);
    }
    assert_eq!(state(&c), ProgressState::Probe, "the snapshot stalled");
    c.network = held;
    c.deliver(0);
    c.process_ready(lag).unwrap();
    let response = c
        .network
        .iter()
        .position(|m| matches!(m.body, MessageBody::InstallSnapshotResponse { .. }))
        .expect("the follower acknowledges the snapshot");
    c.deliver(response);
    c.process_ready(l).unwrap();
    assert!(
        !c.network
            .iter()
            .any(|m| m.to == lag && matches!(m.body, MessageBody::InstallSnapshot { .. })),
        "no second snapshot: {:?}",
        c.network
    );
    run_ticks(&mut c, 5);
    assert_eq!(
        c.nodes[&lag].app.index,
        c.raft(l).unwrap().commit_index(),
        "caught up"
    );
    assert_eq!(c.checker.delivered["InstallSnapshot"], 1);
}

#[test]
fn read_index_waits_for_a_current_term_commit_and_a_quorum_round() {
    let mut c = cluster(3);
    let l = elect(&mut c);
    settle(&mut c);
    let r = c.raft_mut(l).unwrap();
    r.read_index(1).unwrap();
    r.read_index(2).unwrap();
    let rd = r.ready();
    assert!(rd.reads.is_empty(), "needs a heartbeat quorum first");
    let heartbeats: Vec<_> = rd
        .messages
        .iter()
        .filter_map(|m| match m.body {
            MessageBody::Heartbeat { read_seq, .. } => Some(read_seq),
            _ => None,
        })
        .collect();
    assert_eq!(heartbeats.len(), 2, "both reads share one round");
    assert!(heartbeats.iter().all(|s| *s == heartbeats[0] && *s > 0));
    let commit = r.commit_index();
    r.advance(rd.clone());
    c.network.extend(rd.messages);
    // Only one follower answers: with the leader that is a quorum of 3.
    let to = c
        .network
        .iter()
        .position(|m| matches!(m.body, MessageBody::Heartbeat { .. }))
        .unwrap();
    c.deliver(to);
    c.process_all_ready().unwrap();
    let back = c
        .network
        .iter()
        .position(|m| matches!(m.body, MessageBody::HeartbeatResponse { .. }))
        .unwrap();
    c.deliver(back);
    let rd = c.raft_mut(l).unwrap().ready();
    let mut reads: Vec<_> = rd.reads.iter().map(|r| (r.ctx, r.index)).collect();
    reads.sort();
    assert_eq!(reads, vec![(1, commit), (2, commit)]);
}

#[test]
fn new_leader_defers_reads_until_its_noop_commits() {
    let mut r = core(1, &[1, 2, 3], HardState::default(), vec![]);
    let mut c = Config::new(1, 3);
    c.pre_vote = false;
    let _ = c;
    while r.role() != Role::PreCandidate {
        r.tick();
    }
    r.step(msg(2, 1, 1, MessageBody::PreVoteResponse { granted: true }));
    r.step(msg(2, 1, 1, MessageBody::VoteResponse { granted: true }));
    assert_eq!(r.role(), Role::Leader);
    r.read_index(5).unwrap();
    let rd = drain(&mut r);
    assert!(rd.reads.is_empty());
    assert!(!rd
        .messages
        .iter()
        .any(|m| matches!(m.body, MessageBody::Heartbeat { read_seq, .. } if read_seq > 0)));
    let last = r.last_index();
    r.step(msg(
        2,
        1,
        1,
        MessageBody::AppendResponse {
            success: true,
            index: last,
            reject_hint: None,
        },
    ));
    let rd = drain(&mut r);
    assert!(rd
        .messages
        .iter()
        .any(|m| matches!(m.body, MessageBody::Heartbeat { read_seq, .. } if read_seq > 0)));
}

#[test]
fn leadership_transfer_hands_over_to_the_target() {
    let mut c = cluster(3);
    let l = elect(&mut c);
    run_ticks(&mut c, 2);
    let target = (1..=3).find(|id| *id != l).unwrap();
    c.raft_mut(l).unwrap().transfer_leadership(target).unwrap();
    settle(&mut c);
    assert_eq!(c.leader(), Some(target));
    assert!(matches!(
        c.raft_mut(target).unwrap().transfer_leadership(99),
        Err(ProposeError::UnknownNode(99))
    ));
}

#[test]
fn proposals_wait_while_leadership_is_handed_over() {
    let mut c = cluster(3);
    let l = elect(&mut c);
    run_ticks(&mut c, 2);
    let target = (1..=3).find(|id| *id != l).unwrap();
    let other = (1..=3).find(|id| *id != l && *id != target).unwrap();
    c.raft_mut(l).unwrap().transfer_leadership(target).unwrap();
    // Were the leader to append now, the entry could reach `other` and not `target` before
    // `target` campaigns: `other` (and the old leader) would refuse it their votes for a log
    // behind theirs, and the group would wait an election timeout for any leader.
    assert_eq!(
        c.raft_mut(l).unwrap().propose(b"x".to_vec()),
        Err(NotLeader {
            leader: Some(target)
        })
    );
    assert!(matches!(
        c.raft_mut(l)
            .unwrap()
            .propose_membership(MembershipChange::Remove(other)),
        Err(ProposeError::NotLeader(_))
    ));
    // Everything the old leader sends to `other` arrives; nothing but its TimeoutNow reaches
    // `target` first: `target` still wins at once, without any tick.
    c.process_all_ready().unwrap();
    let mut slot = 0;
    while slot < c.network.len() {
        let m = &c.network[slot];
        if m.to == target && !matches!(m.body, MessageBody::TimeoutNow) {
            c.drop_message(slot);
        } else {
            slot += 1;
        }
    }
    settle(&mut c);
    assert_eq!(c.leader(), Some(target));
    assert!(c.raft_mut(target).unwrap().propose(b"y".to_vec()).is_ok());
}

#[test]
fn leadership_transfer_aborts_after_an_election_timeout() {
    let mut c = cluster(3);
    let l = elect(&mut c);
    run_ticks(&mut c, 2);
    let target = (1..=3).find(|id| *id != l).unwrap();
    c.crash(target);
    c.raft_mut(l).unwrap().transfer_leadership(target).unwrap();
    let other = (1..=3).find(|id| *id != l && *id != target).unwrap();
    assert_eq!(
        c.raft_mut(l).unwrap().transfer_leadership(other),
        Err(ProposeError::TransferInProgress)
    );
    run_ticks(&mut c, 12);
    assert_eq!(c.leader(), Some(l));
    assert!(
        c.raft_mut(l).unwrap().propose(b"x".to_vec()).is_ok(),
        "proposals resume once the transfer is given up"
    );
    assert_eq!(c.raft_mut(l).unwrap().transfer_leadership(other), Ok(()));
}

#[test]
fn membership_add_learner_promote_and_remove() {
    let mut c = Cluster::new(&[1, 2, 3], &[4], config);
    let l = elect(&mut c);
    run_ticks(&mut c, 2);
    let r = c.raft_mut(l).unwrap();
    r.propose_membership(MembershipChange::AddLearner(4))
        .unwrap();
    assert_eq!(
        r.propose_membership(MembershipChange::Promote(4)),
        Err(ProposeError::MembershipChangePending),
        "one change at a time"
    );
    settle(&mut c);
    run_ticks(&mut c, 2);
    assert!(
        c.raft(4).unwrap().membership().learners.contains(&4),
        "learner learned its membership"
    );
    assert_eq!(c.nodes[&4].app.index, c.raft(l).unwrap().commit_index());
    c.raft_mut(l)
        .unwrap()
        .propose_membership(MembershipChange::Promote(4))
        .unwrap();
    settle(&mut c);
    assert_eq!(c.raft(l).unwrap().membership().voters.len(), 4);
    assert_eq!(
        c.raft(4).unwrap().membership().voters,
        c.raft(l).unwrap().membership().voters
    );
    // Remove the leader itself: it steps down once the removal commits.
    c.raft_mut(l)
        .unwrap()
        .propose_membership(MembershipChange::Remove(l))
        .unwrap();
    settle(&mut c);
    run_ticks(&mut c, 3);
    assert_ne!(c.raft(l).unwrap().role(), Role::Leader);
    let new = elect(&mut c);
    assert_ne!(new, l);
    run_ticks(&mut c, 40);
    assert_ne!(
        c.raft(l).unwrap().role(),
        Role::Candidate,
        "a removed node never campaigns"
    );
    assert_eq!(
        c.raft_mut(new)
            .unwrap()
            .propose_membership(MembershipChange::Remove(l)),
        Err(ProposeError::UnknownNode(l))
    );
}

#[test]
fn garbage_messages_never_panic() {
    let mut r = core(
        2,
        &[1, 2, 3],
        HardState {
            term: 3,
            vote: None,
            commit: 0,
        },
        vec![entry(1, 1)],
    );
    let bodies = vec![
        MessageBody::Append {
            prev_index: u64::MAX,
            prev_term: 0,
            entries: vec![],
            commit: u64::MAX,
        },
        MessageBody::Append {
            prev_index: 1 << 40,
            prev_term: 1,
            entries: vec![],
            commit: 1 << 41,
        },
        MessageBody::Append {
            prev_index: 0,
            prev_term: 0,
            entries: vec![entry(5, 1)],
            commit: 9,
        },
        MessageBody::AppendResponse {
            success: false,
            index: 1 << 50,
            reject_hint: Some(crate::raft::RejectHint {
                conflict_term: Some(1 << 50),
                conflict_index: 0,
            }),
        },
        MessageBody::Append {
            prev_index: 0,
            prev_term: 0,
            entries: vec![entry(1, 9)],
            commit: 9,
        },
        MessageBody::AppendResponse {
            success: true,
            index: u64::MAX,
            reject_hint: None,
        },
        MessageBody::Heartbeat {
            commit: u64::MAX,
            read_seq: u64::MAX,
        },
        MessageBody::InstallSnapshotResponse { index: u64::MAX },
        MessageBody::TimeoutNow,
    ];
    for (i, body) in bodies.into_iter().enumerate() {
        r.step(msg(1, 2, 3, body.clone()));
        r.step(msg(1, 2, u64::MAX - i as u64, body.clone()));
        r.step(msg(2, 2, 3, body));
        let _ = drain(&mut r);
    }
    assert!(r.commit_index() <= r.last_index());
}

#[test]
fn a_node_that_cannot_campaign_still_lets_its_lease_expire() {
    // Node 3 is not a voter in its own configuration: it never campaigns, but once the leader
    // has been silent for an election timeout it must hear (pre)vote requests again.
    let mut r = core(
        3,
        &[1, 2],
        HardState {
            term: 1,
            vote: None,
            commit: 0,
        },
        vec![],
    );
    r.step(msg(
        1,
        3,
        1,
        MessageBody::Heartbeat {
            commit: 0,
            read_seq: 0,
        },
    ));
    drain(&mut r);
    for _ in 0..100 {
        r.tick();
    }
    assert_eq!(r.role(), Role::Follower, "never campaigns");
    r.step(msg(
        2,
        3,
        2,
        MessageBody::Vote {
            last_index: 0,
            last_term: 0,
            transfer: false,
        },
    ));
    assert_eq!(r.term(), 2, "lease expired: the request is heard");
}

/// The index of the last membership entry in `r`'s in-memory log.
fn last_membership_entry(r: &Raft) -> u64 {
    r.log_entries()
        .iter()
        .rev()
        .find(|e| matches!(e.payload, EntryPayload::Membership(_)))
        .map_or(0, |e| e.index)
}

#[test]
fn leader_reports_match_indexes_and_a_pending_change_until_it_commits() {
    let mut r = core(
        1,
        &[1, 2, 3],
        HardState {
            term: 3,
            vote: None,
            commit: 0,
        },
        vec![entry(1, 2)],
    );
    assert!(r.match_index().is_empty(), "not a leader");
    assert_eq!(r.membership_index(), 0, "the initial membership");
    // Become leader of term 5 (PreVote, then Vote, granted by node 2).
    for _ in 0..30 {
        r.tick();
        if r.role() == Role::PreCandidate {
            break;
        }
    }
    r.step(msg(2, 1, 4, MessageBody::PreVoteResponse { granted: true }));
    let term = r.term();
    r.step(msg(2, 1, term, MessageBody::VoteResponse { granted: true }));
    assert_eq!(r.role(), Role::Leader);
    drain(&mut r);
    let last = r.last_index();
    // The first leader of a log without membership entries writes the bootstrap membership.
    assert!(last_membership_entry(&r) > 1);
    assert_eq!(r.membership_index(), last_membership_entry(&r));
    assert!(
        r.membership_change_pending(),
        "nothing of its term committed yet"
    );
    assert_eq!(
        r.propose_membership(MembershipChange::AddLearner(4)),
        Err(ProposeError::MembershipChangePending)
    );
    assert_eq!(r.match_index(), [(2, 0), (3, 0)].into_iter().collect());

    let ack = |index| MessageBody::AppendResponse {
        success: true,
        index,
        reject_hint: None,
    };
    r.step(msg(2, 1, term, ack(last)));
    assert_eq!(r.commit_index(), last);
    assert!(!r.membership_change_pending());
    assert_eq!(r.match_index(), [(2, last), (3, 0)].into_iter().collect());

    let (index, _) = r
        .propose_membership(MembershipChange::AddLearner(4))
        .unwrap();
    drain(&mut r);
    assert!(r.membership_change_pending(), "the change is not committed");
    assert_eq!(r.membership_index(), index);
    assert_eq!(
        r.match_index(),
        [(2, last), (3, 0), (4, 0)].into_iter().collect(),
        "learners are listed too"
    );
    r.step(msg(3, 1, term, ack(index)));
    assert!(!r.membership_change_pending());
    assert_eq!(r.match_index()[&3], index);

    // Deposed: no match indexes any more.
    r.step(msg(
        2,
        1,
        term + 1,
        MessageBody::Heartbeat {
            commit: 0,
            read_seq: 0,
        },
    ));
    assert_ne!(r.role(), Role::Leader);
    assert!(r.match_index().is_empty());
    assert_eq!(r.membership_index(), index, "followers know it too");
}

#[test]
fn membership_index_survives_snapshots_and_restarts() {
    let mut c = Cluster::new(&[1, 2, 3], &[4], config);
    let l = elect(&mut c);
    run_ticks(&mut c, 2);
    let bootstrap = last_membership_entry(c.raft(l).unwrap());
    for id in 1..=3 {
        assert_eq!(
            c.raft(id).unwrap().membership_index(),
            bootstrap,
            "node {id}"
        );
        assert!(!c.raft(id).unwrap().membership_change_pending());
    }
    let lagging = (1..=3).find(|&id| id != l).unwrap();
    c.crash(lagging);
    for i in 0..10u8 {
        c.raft_mut(l).unwrap().propose(vec![i]).unwrap();
    }
    settle(&mut c);
    c.snapshot(l);
    let snap_index = c.raft(l).unwrap().snapshot_meta().unwrap().index;
    assert!(snap_index > bootstrap);
    // The entry that set the membership is compacted: the snapshot stands for it.
    assert_eq!(c.raft(l).unwrap().membership_index(), snap_index);
    c.restart(lagging);
    run_ticks(&mut c, 5);
    assert!(c.nodes[&lagging].durable.snapshot.is_some(), "installed");
    assert_eq!(c.raft(lagging).unwrap().membership_index(), snap_index);
    c.crash(l);
    c.restart(l);
    assert_eq!(
        c.raft(l).unwrap().membership_index(),
        snap_index,
        "same after a restart"
    );
    let l = elect(&mut c);
    let (index, _) = c
        .raft_mut(l)
        .unwrap()
        .propose_membership(MembershipChange::AddLearner(4))
        .unwrap();
    settle(&mut c);
    run_ticks(&mut c, 3);
    for id in 1..=4 {
        assert_eq!(c.raft(id).unwrap().membership_index(), index, "node {id}");
    }
}

/// `reset_progress` drops the leader's knowledge of a follower's log (match index to 0) and
/// probes it again; the follower is caught up anew and commitment never goes backwards.
#[test]
fn reset_progress_probes_a_follower_afresh() {
    let mut c = cluster(3);
    let leader = elect(&mut c);
    let follower = c.ids().into_iter().find(|&id| id != leader).unwrap();
    for i in 0..5u8 {
        c.raft_mut(leader).unwrap().propose(vec![i]).unwrap();
    }
    settle(&mut c);
    let last = c.raft(leader).unwrap().last_index();
    let commit = c.raft(leader).unwrap().commit_index();
    assert_eq!(c.raft(leader).unwrap().match_index()[&follower], last);
    assert!(c.raft_mut(leader).unwrap().reset_progress(follower));
    assert_eq!(c.raft(leader).unwrap().match_index()[&follower], 0);
    assert_eq!(c.raft(leader).unwrap().commit_index(), commit);
    assert!(
        !c.raft_mut(follower).unwrap().reset_progress(leader),
        "followers have no progress"
    );
    settle(&mut c);
    assert_eq!(c.raft(leader).unwrap().match_index()[&follower], last);
}

/// Sim `elections` seed 5178: a replica whose node lost its unsynced state came back with no
/// membership and received only the head of the first leader's log. Whatever prefix of a new
/// cluster's log a replica holds, it must know either no configuration (and not campaign) or
/// the real one (and need a real majority): never a configuration the cluster never had,
/// such as itself as the only voter.
#[test]
fn replica_holding_a_prefix_of_the_bootstrap_log_never_elects_itself() {
    // A leader other than n1: the old bootstrap entries began with n1's own pair, so n1 was
    // the replica that could find itself the only voter.
    let (l, log) = (0..50)
        .find_map(|seed| {
            let mut c = Cluster::new(&[1, 2, 3, 4, 5], &[], move |id, s| {
                config(id, s.wrapping_add(seed * 1000))
            });
            let l = elect(&mut c);
            (l != 1).then(|| (l, c.raft(l).unwrap().log_entries().to_vec()))
        })
        .expect("some seed elects a leader other than n1");
    assert!(
        log.iter().any(|e| matches!(
            e.payload,
            EntryPayload::Membership(MembershipChange::Bootstrap(_))
        )),
        "the first leader writes the bootstrap membership: {log:?}"
    );
    for me in (1..=5).filter(|n| *n != l) {
        for k in 0..=log.len() {
            let prefix = log[..k].to_vec();
            // Recovered from disk with that prefix, or handed it by the leader.
            let restored = core(me, &[], HardState::default(), prefix.clone());
            let mut appended = core(me, &[], HardState::default(), Vec::new());
            appended.step(msg(
                l,
                me,
                prefix.last().map_or(1, |e| e.term),
                MessageBody::Append {
                    prev_index: 0,
                    prev_term: 0,
                    entries: prefix,
                    commit: 0,
                },
            ));
            drain(&mut appended);
            for mut r in [restored, appended] {
                for _ in 0..500 {
                    r.tick();
                    drain(&mut r);
                }
                assert_ne!(
                    r.role(),
                    Role::Leader,
                    "n{me} holding {k} of the leader's {} entries elected itself alone",
                    log.len()
                );
            }
        }
    }
}

/// Issue 16: one forged Heartbeat claiming a member's leadership at a term near the sanity
/// limit left a group leaderless for good (its term was adopted, persisted and spread, and the
/// next election's term was "absurd"). The node now moves up by `MAX_TERM_JUMP` at most.
#[test]
fn a_forged_absurd_term_does_not_wedge_the_group() {
    use crate::raft::election::MAX_TERM_JUMP;
    for forged_term in [(1u64 << 62) - 1, 1 << 62, 1 << 40] {
        let mut c = cluster(3);
        let l = elect(&mut c);
        let before = c.raft(l).unwrap().term();
        let f = *c.ids().iter().find(|&&id| id != l).unwrap();
        let other = *c.ids().iter().find(|&&id| id != l && id != f).unwrap();
        let forged = msg(
            other,
            f,
            forged_term,
            MessageBody::Heartbeat {
                commit: 0,
                read_seq: 0,
            },
        );
        c.raft_mut(f).unwrap().step(forged);
        settle(&mut c);
        // The group elects a leader again and commits.
        let mut leader = None;
        for _ in 0..400 {
            run_ticks(&mut c, 1);
            if let Some(l) = c.leader() {
                if c.raft_mut(l).unwrap().propose(b"after".to_vec()).is_ok() {
                    leader = Some(l);
                    break;
                }
            }
        }
        let l = leader.unwrap_or_else(|| panic!("leaderless after term {forged_term}"));
        let (index, _) = c.raft_mut(l).unwrap().propose(b"x".to_vec()).unwrap();
        run_ticks(&mut c, 20);
        assert!(
            c.ids()
                .iter()
                .all(|&id| c.raft(id).unwrap().commit_index() >= index),
            "not committed after forged term {forged_term}: {}",
            c.describe()
        );
        for id in c.ids() {
            let term = c.raft(id).unwrap().term();
            assert!(
                term <= before + MAX_TERM_JUMP + 10,
                "node {id} adopted term {term} from one forged frame"
            );
        }
    }
}

#[test]
fn a_far_ahead_leader_is_followed_after_a_few_messages() {
    use crate::raft::election::MAX_TERM_JUMP;
    // A replica back after a long absence (or a fresh one at term 0) is far behind the
    // leader's term: each message raises it by MAX_TERM_JUMP until it follows.
    let mut r = core(2, &[1, 2, 3], HardState::default(), vec![]);
    let leader_term = 3 * MAX_TERM_JUMP + 5;
    let heartbeat = || {
        msg(
            1,
            2,
            leader_term,
            MessageBody::Heartbeat {
                commit: 0,
                read_seq: 0,
            },
        )
    };
    for step in 1..=3 {
        r.step(heartbeat());
        assert_eq!(r.term(), step * MAX_TERM_JUMP);
        assert_eq!(r.leader(), None);
    }
    r.step(heartbeat());
    assert_eq!((r.term(), r.leader()), (leader_term, Some(1)));
}

//! The replica-move planner: what a group's leader does next to bring its replica set to the
//! target the metadata gives it.
//!
//! Raft changes membership one server at a time (`raft::membership`), so a move is a sequence
//! of single steps, each of which keeps a quorum of the old configuration inside any quorum of
//! the new one. The planner returns one step per call and the leader proposes it only when no
//! other change is pending; it is called again after every reconcile interval, so a refused or
//! lost step is simply planned again.
//!
//! Invariants (proptested below): the voter set never becomes empty; it never shrinks below
//! `min(voters now, target voters)`; a learner is promoted only once caught up, so a new voter
//! never stalls commits while it copies the log; the leader never removes itself, it hands
//! leadership to a caught-up target voter first; repeated steps reach the target exactly.
//! Choices go to the lowest node id within each rule, so every leader plans the same moves.

use std::collections::BTreeMap;

use super::state::Target;
use crate::raft::{LogIndex, Membership, NodeId};

/// What the group leader knows when it plans.
pub struct LeaderView<'a> {
    /// The leader.
    pub me: NodeId,
    /// The current (possibly uncommitted) configuration.
    pub membership: &'a Membership,
    pub commit_index: LogIndex,
    /// The leader's view of each other member's log.
    pub match_index: &'a BTreeMap<NodeId, LogIndex>,
    /// A member within this many entries of `commit_index` counts as caught up.
    pub catch_up_lag_entries: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    AddLearner(NodeId),
    Promote(NodeId),
    Remove(NodeId),
    TransferLeadership(NodeId),
}

impl LeaderView<'_> {
    fn caught_up(&self, node: NodeId) -> bool {
        let needed = self.commit_index.saturating_sub(self.catch_up_lag_entries);
        self.match_index
            .get(&node)
            .is_some_and(|&matched| matched >= needed)
    }
}

/// The next single membership step towards `target`, or None when there is nothing (safe) to
/// do. Rules, in priority order:
/// 1. promote a learner that is a target voter and caught up;
/// 2. remove a voter that is not a target voter (a voter the target lists only as learner
///    included: Raft cannot demote, so it is removed and re-added) once the voters outnumber the
///    target's or already include all of them; if that voter is the leader, transfer leadership
///    to the most caught-up target voter instead, and while none is caught up remove the next
///    surplus voter or fall through to rules 3 and 4;
/// 3. add as learner a target node that is neither voter nor learner;
/// 4. remove a learner the target does not list.
pub fn next_step(view: &LeaderView, target: &Target) -> Option<Step> {
    if target.voters.is_empty() {
        return None;
    }
    let current = view.membership;
    if let Some(&learner) = current
        .learners
        .iter()
        .find(|&&n| target.voters.contains(&n) && view.caught_up(n))
    {
        return Some(Step::Promote(learner));
    }
    if let Some(step) = surplus_voter_step(view, target) {
        return Some(step);
    }
    let is_member = |n: &NodeId| current.voters.contains(n) || current.learners.contains(n);
    if let Some(&missing) = target
        .voters
        .iter()
        .chain(&target.learners)
        .filter(|n| !is_member(n))
        .min()
    {
        return Some(Step::AddLearner(missing));
    }
    current
        .learners
        .iter()
        .find(|n| !target.voters.contains(n) && !target.learners.contains(n))
        .map(|&n| Step::Remove(n))
}

/// Rule 2, or None when it has nothing to do.
fn surplus_voter_step(view: &LeaderView, target: &Target) -> Option<Step> {
    let voters = &view.membership.voters;
    // Shrinking only while the voters outnumber the target's keeps the voter count at or above
    // min(voters now, target voters). With a surplus voter present this also covers "every
    // target voter is already a voter". It implies two voters or more (the target has at least
    // one); checked anyway because removing the last voter would leave the group unable to commit.
    if voters.len() <= target.voters.len() || voters.len() < 2 {
        return None;
    }
    let mut surplus = voters.iter().filter(|v| !target.voters.contains(v));
    let lowest = *surplus.next()?;
    if lowest != view.me {
        return Some(Step::Remove(lowest));
    }
    // The most caught-up target voter (lowest id among equals) takes over, then removes us.
    let successor = voters
        .iter()
        .filter(|&&v| v != view.me && target.voters.contains(&v) && view.caught_up(v))
        .max_by_key(|&&v| (view.match_index.get(&v).copied(), std::cmp::Reverse(v)));
    if let Some(&successor) = successor {
        return Some(Step::TransferLeadership(successor));
    }
    // Nobody to hand over to yet: shed another surplus voter meanwhile, or let rules 3 and 4
    // bring the target voters in (waiting here could wait forever if none is a voter yet).
    surplus.next().map(|&v| Step::Remove(v))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    const COMMIT: LogIndex = 100;
    const LAG: u64 = 10;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    fn target(voters: &[NodeId], learners: &[NodeId]) -> Target {
        Target {
            voters: set(voters),
            learners: set(learners),
        }
    }

    fn plan(
        me: NodeId,
        membership: &Membership,
        matched: &BTreeMap<NodeId, LogIndex>,
        target: &Target,
    ) -> Option<Step> {
        let view = LeaderView {
            me,
            membership,
            commit_index: COMMIT,
            match_index: matched,
            catch_up_lag_entries: LAG,
        };
        next_step(&view, target)
    }

    fn membership(voters: &[NodeId], learners: &[NodeId]) -> Membership {
        Membership {
            voters: set(voters),
            learners: set(learners),
        }
    }

    fn apply(m: &mut Membership, step: Step) {
        match step {
            Step::AddLearner(n) => {
                assert!(
                    !m.voters.contains(&n) && m.learners.insert(n),
                    "{step:?} on {m:?}"
                );
            }
            Step::Promote(n) => {
                assert!(m.learners.remove(&n), "{step:?} on {m:?}");
                m.voters.insert(n);
            }
            Step::Remove(n) => {
                assert!(
                    m.voters.remove(&n) || m.learners.remove(&n),
                    "{step:?} on {m:?}"
                );
            }
            Step::TransferLeadership(_) => {}
        }
    }

    #[test]
    fn empty_target_plans_nothing() {
        let m = membership(&[1, 2], &[3]);
        assert_eq!(plan(1, &m, &BTreeMap::new(), &Target::default()), None);
    }

    #[test]
    fn dead_voter_is_replaced() {
        let mut m = membership(&[1, 2, 3], &[]);
        let goal = target(&[1, 2, 4], &[]);
        let mut matched = BTreeMap::from([(2, COMMIT), (3, 0)]);
        assert_eq!(plan(1, &m, &matched, &goal), Some(Step::AddLearner(4)));
        apply(&mut m, Step::AddLearner(4));
        matched.insert(4, COMMIT - LAG - 1);
        assert_eq!(plan(1, &m, &matched, &goal), None, "4 is not caught up");
        matched.insert(4, COMMIT - LAG);
        assert_eq!(plan(1, &m, &matched, &goal), Some(Step::Promote(4)));
        apply(&mut m, Step::Promote(4));
        assert_eq!(plan(1, &m, &matched, &goal), Some(Step::Remove(3)));
        apply(&mut m, Step::Remove(3));
        assert_eq!(m, membership(&[1, 2, 4], &[]));
        assert_eq!(plan(1, &m, &matched, &goal), None);
    }

    #[test]
    fn leader_outside_the_target_transfers_first() {
        let m = membership(&[1, 2, 3], &[]);
        let goal = target(&[2, 3], &[]);
        let matched = BTreeMap::from([(2, COMMIT - 5), (3, COMMIT)]);
        assert_eq!(
            plan(1, &m, &matched, &goal),
            Some(Step::TransferLeadership(3)),
            "the most caught-up target voter takes over"
        );
        let lagging = BTreeMap::from([(2, 0), (3, 0)]);
        assert_eq!(plan(1, &m, &lagging, &goal), None, "nobody to hand over to");
        // A surplus leader with no target voter to hand over to keeps shrinking, then adds.
        let far = target(&[4], &[]);
        assert_eq!(plan(1, &m, &lagging, &far), Some(Step::Remove(2)));
        let alone = membership(&[1], &[]);
        assert_eq!(plan(1, &alone, &lagging, &far), Some(Step::AddLearner(4)));
        // The new leader removes the old one.
        let matched = BTreeMap::from([(1, COMMIT), (2, COMMIT)]);
        assert_eq!(plan(3, &m, &matched, &goal), Some(Step::Remove(1)));
    }

    #[test]
    fn a_voter_listed_as_learner_is_removed_then_re_added() {
        let mut m = membership(&[1, 2, 3], &[]);
        let goal = target(&[1, 2], &[3]);
        let matched = BTreeMap::from([(2, COMMIT), (3, COMMIT)]);
        assert_eq!(plan(1, &m, &matched, &goal), Some(Step::Remove(3)));
        apply(&mut m, Step::Remove(3));
        assert_eq!(plan(1, &m, &matched, &goal), Some(Step::AddLearner(3)));
        apply(&mut m, Step::AddLearner(3));
        assert_eq!(plan(1, &m, &matched, &goal), None);
    }

    #[test]
    fn surplus_voters_wait_until_the_target_voters_are_in() {
        // Voters {1, 2}, target {2, 3}: removing 1 first would leave a single voter.
        let m = membership(&[1, 2], &[9]);
        let goal = target(&[2, 3], &[]);
        let matched = BTreeMap::from([(2, COMMIT), (9, COMMIT)]);
        assert_eq!(plan(2, &m, &matched, &goal), Some(Step::AddLearner(3)));
    }

    #[test]
    fn stray_learners_are_removed_last() {
        let m = membership(&[1], &[5, 6]);
        let goal = target(&[1], &[6]);
        assert_eq!(plan(1, &m, &BTreeMap::new(), &goal), Some(Step::Remove(5)));
    }

    /// Membership and target over ids 1..8: (voters, learners, target voters, target learners).
    fn arb_case() -> impl Strategy<Value = (Membership, Target, prop::sample::Index)> {
        let ids = || prop::collection::btree_set(1u64..8, 0..8);
        (
            prop::collection::btree_set(1u64..8, 1..8),
            ids(),
            prop::collection::btree_set(1u64..8, 1..=5),
            ids(),
            any::<prop::sample::Index>(),
        )
            .prop_map(
                |(voters, learners, target_voters, target_learners, leader)| {
                    let learners = learners.difference(&voters).copied().collect();
                    let target_learners = target_learners
                        .difference(&target_voters)
                        .copied()
                        .collect();
                    (
                        Membership { voters, learners },
                        Target {
                            voters: target_voters,
                            learners: target_learners,
                        },
                        leader,
                    )
                },
            )
    }

    proptest! {
        #[test]
        fn steps_converge_safely((initial, goal, leader) in arb_case()) {
            let mut m = initial.clone();
            let mut me = *m.voters.iter().nth(leader.index(m.voters.len())).unwrap();
            let floor = initial.voters.len().min(goal.voters.len());
            // Every member is caught up except a learner added by the previous step.
            let mut fresh: Option<NodeId> = None;
            let mut converged = false;
            for _ in 0..40 {
                let matched: BTreeMap<NodeId, LogIndex> = m
                    .voters
                    .iter()
                    .chain(&m.learners)
                    .filter(|&&n| n != me)
                    .map(|&n| (n, if Some(n) == fresh { 0 } else { COMMIT }))
                    .collect();
                let step = plan(me, &m, &matched, &goal);
                match step {
                    None if fresh.is_some() => fresh = None,
                    None => {
                        converged = true;
                        break;
                    }
                    Some(step) => {
                        fresh = None;
                        if let Step::TransferLeadership(to) = step {
                            prop_assert!(m.voters.contains(&to) && goal.voters.contains(&to));
                            prop_assert_ne!(to, me);
                            me = to;
                        } else {
                            prop_assert_ne!(step, Step::Remove(me), "the leader removed itself");
                            if let Step::AddLearner(n) = step {
                                fresh = Some(n);
                            }
                            apply(&mut m, step);
                        }
                    }
                }
                prop_assert!(!m.voters.is_empty());
                prop_assert!(m.voters.len() >= floor, "voters {:?} below {}", m.voters, floor);
                prop_assert!(m.voters.contains(&me), "leader {} is not a voter of {:?}", me, m);
            }
            prop_assert!(converged, "no convergence in 40 steps: {:?} towards {:?}", m, goal);
            prop_assert_eq!(&m.voters, &goal.voters);
            prop_assert_eq!(&m.learners, &goal.learners);
        }
    }
}

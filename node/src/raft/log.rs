//! The in-memory Raft log: the entries after its compaction point (the last snapshot, or on a
//! leader an earlier index a catching-up member still needs), plus the bookkeeping that ties
//! them to the persistence contract of `Ready`.
//!
//! Invariants:
//! - `entries[i].index == snapshot_index + 1 + i` (contiguous, no gaps);
//! - `snapshot_index <= commit <= last_index()`;
//! - `persisted < unstable_from` and `unstable_from <= last_index() + 1`: entries at or after
//!   `unstable_from` have not yet been handed to the runtime, entries up to `persisted` are known
//!   to be durable locally (their Ready was advanced);
//! - committed entries are never truncated.

use super::types::{Entry, EntryPayload, LogIndex, Term};

#[derive(Debug)]
pub(crate) struct RaftLog {
    snapshot_index: LogIndex,
    snapshot_term: Term,
    entries: Vec<Entry>,
    pub(crate) commit: LogIndex,
    /// First index not yet handed out in a `Ready`.
    pub(crate) unstable_from: LogIndex,
    /// Highest index known durable locally.
    pub(crate) persisted: LogIndex,
}

/// Why a log handed over by the runtime or by a message cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LogShapeError {
    /// Entry `found` appears where index `expected` belongs.
    Gap { expected: LogIndex, found: LogIndex },
    /// An entry's term is lower than its predecessor's.
    TermDecreases { index: LogIndex },
}

impl std::fmt::Display for LogShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogShapeError::Gap { expected, found } => {
                write!(f, "entry {found} found where {expected} was expected")
            }
            LogShapeError::TermDecreases { index } => {
                write!(f, "term decreases at entry {index}")
            }
        }
    }
}

/// Checks that `entries` are contiguous from `first` with non-decreasing terms from `min_term`.
pub(crate) fn check_shape(
    entries: &[Entry],
    first: LogIndex,
    min_term: Term,
) -> Result<(), LogShapeError> {
    let mut prev_term = min_term;
    for (offset, e) in entries.iter().enumerate() {
        let expected = first + offset as LogIndex;
        if e.index != expected {
            return Err(LogShapeError::Gap {
                expected,
                found: e.index,
            });
        }
        if e.term < prev_term {
            return Err(LogShapeError::TermDecreases { index: e.index });
        }
        prev_term = e.term;
    }
    Ok(())
}

/// Bytes an entry contributes to an Append message (its payload).
pub(crate) fn payload_bytes(e: &Entry) -> usize {
    match &e.payload {
        EntryPayload::Noop => 0,
        EntryPayload::Command(c) => c.len(),
        EntryPayload::Membership(_) => 16,
    }
}

impl RaftLog {
    /// A log recovered from durable storage: everything in it is persisted.
    pub(crate) fn restored(
        snapshot_index: LogIndex,
        snapshot_term: Term,
        entries: Vec<Entry>,
        commit: LogIndex,
    ) -> Result<RaftLog, LogShapeError> {
        check_shape(&entries, snapshot_index + 1, snapshot_term)?;
        let last = snapshot_index + entries.len() as LogIndex;
        Ok(RaftLog {
            snapshot_index,
            snapshot_term,
            entries,
            commit: commit.clamp(snapshot_index, last),
            unstable_from: last + 1,
            persisted: last,
        })
    }

    pub(crate) fn snapshot_index(&self) -> LogIndex {
        self.snapshot_index
    }

    pub(crate) fn first_index(&self) -> LogIndex {
        self.snapshot_index + 1
    }

    pub(crate) fn last_index(&self) -> LogIndex {
        self.snapshot_index + self.entries.len() as LogIndex
    }

    pub(crate) fn last_term(&self) -> Term {
        self.entries.last().map_or(self.snapshot_term, |e| e.term)
    }

    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The term of the entry at `index`, if the log (or its snapshot point) still knows it.
    pub(crate) fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub(crate) fn entry(&self, index: LogIndex) -> Option<&Entry> {
        let offset = index.checked_sub(self.first_index())?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    pub(crate) fn matches(&self, index: LogIndex, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// Entries in `[from, to]` (inclusive); empty when any part is unavailable.
    pub(crate) fn slice(&self, from: LogIndex, to: LogIndex) -> &[Entry] {
        if from > to || from < self.first_index() || to > self.last_index() {
            return &[];
        }
        let start = (from - self.first_index()) as usize;
        let end = (to - self.first_index()) as usize + 1;
        self.entries.get(start..end).unwrap_or(&[])
    }

    /// Up to `max_entries` entries from `from`, stopping before `max_bytes` of payload is
    /// exceeded (but always at least one entry when one exists).
    pub(crate) fn entries_for_append(
        &self,
        from: LogIndex,
        max_entries: usize,
        max_bytes: usize,
    ) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut index = from;
        while out.len() < max_entries {
            let Some(e) = self.entry(index) else { break };
            bytes += payload_bytes(e);
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
            index += 1;
        }
        out
    }

    /// Raft's election restriction: is a log ending at (`last_index`, `last_term`) at least as
    /// up to date as this one?
    pub(crate) fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Appends entries at the end (leader). The caller guarantees `e.index == last_index() + 1`.
    pub(crate) fn append(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index() + 1,
            "leader append must extend the log"
        );
        self.entries.push(entry);
    }

    /// Follower append after a successful consistency check at `entries[0].index - 1`:
    /// skips entries already present, truncates at the first conflicting one and appends the
    /// rest. Returns the index of the first truncated entry, if any. Never truncates a
    /// committed entry (returns `Err(index)` and leaves the log untouched instead).
    pub(crate) fn append_after_match(
        &mut self,
        entries: Vec<Entry>,
    ) -> Result<Option<LogIndex>, LogIndex> {
        let mut conflict = None;
        let mut skip = 0usize;
        for e in &entries {
            match self.term(e.index) {
                Some(t) if t == e.term => skip += 1,
                Some(_) => {
                    conflict = Some(e.index);
                    break;
                }
                None => break,
            }
        }
        if let Some(at) = conflict {
            if at <= self.commit {
                return Err(at);
            }
            self.truncate_from(at);
        }
        for e in entries.into_iter().skip(skip) {
            if e.index != self.last_index() + 1 {
                break;
            }
            self.entries.push(e);
        }
        Ok(conflict)
    }

    fn truncate_from(&mut self, index: LogIndex) {
        assert!(index > self.commit, "truncating committed entry {index}");
        let keep = (index - self.first_index()) as usize;
        self.entries.truncate(keep);
        self.unstable_from = self.unstable_from.min(index);
        self.persisted = self.persisted.min(index - 1);
    }

    /// The first index of the run of entries with the same term as `index`, scanning back no
    /// further than the first index in memory.
    pub(crate) fn first_index_of_term_at(&self, index: LogIndex) -> LogIndex {
        let Some(term) = self.term(index) else {
            return index;
        };
        let mut i = index;
        while i > self.first_index() && self.term(i - 1) == Some(term) {
            i -= 1;
        }
        i
    }

    /// The last index `<= upto` whose entry has `term`, if the log holds one.
    pub(crate) fn last_index_of_term(&self, term: Term, upto: LogIndex) -> Option<LogIndex> {
        let mut i = upto.min(self.last_index());
        while i >= self.first_index() {
            match self.term(i) {
                Some(t) if t == term => return Some(i),
                Some(t) if t < term => return None,
                _ => {}
            }
            i -= 1;
        }
        None
    }

    /// Takes the entries not yet handed out in a Ready.
    pub(crate) fn take_unstable(&mut self) -> Vec<Entry> {
        let from = self.unstable_from;
        let last = self.last_index();
        self.unstable_from = last + 1;
        self.slice(from, last).to_vec()
    }

    /// Drops entries up to `index` (a snapshot covers them). `index` must be in the log.
    pub(crate) fn compact(&mut self, index: LogIndex, term: Term) {
        assert!(
            index <= self.persisted && index <= self.commit,
            "compacting unsafe entries"
        );
        if index <= self.snapshot_index {
            return;
        }
        let drop = (index - self.snapshot_index) as usize;
        self.entries.drain(..drop.min(self.entries.len()));
        self.snapshot_index = index;
        self.snapshot_term = term;
    }

    /// Replaces the whole log with a snapshot point received from the leader.
    pub(crate) fn restore(&mut self, index: LogIndex, term: Term) {
        assert!(
            index > self.commit,
            "restoring a snapshot at or below commit"
        );
        self.entries.clear();
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.commit = index;
        self.unstable_from = index + 1;
        self.persisted = self.persisted.min(index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(index: LogIndex, term: Term) -> Entry {
        Entry {
            index,
            term,
            payload: EntryPayload::Noop,
        }
    }

    #[test]
    fn restored_rejects_gaps_and_decreasing_terms() {
        assert!(RaftLog::restored(0, 0, vec![e(1, 1), e(3, 1)], 0).is_err());
        assert!(RaftLog::restored(0, 0, vec![e(1, 2), e(2, 1)], 0).is_err());
        assert!(RaftLog::restored(5, 3, vec![e(6, 2)], 0).is_err());
        let log = RaftLog::restored(5, 3, vec![e(6, 3), e(7, 4)], 100).unwrap();
        assert_eq!((log.first_index(), log.last_index(), log.commit), (6, 7, 7));
        assert_eq!(log.term(5), Some(3));
        assert_eq!(log.term(4), None);
    }

    #[test]
    fn append_after_match_truncates_only_conflicts() {
        let mut log = RaftLog::restored(0, 0, vec![e(1, 1), e(2, 1), e(3, 2)], 1).unwrap();
        // Duplicate of what is there: no change.
        assert_eq!(log.append_after_match(vec![e(2, 1), e(3, 2)]), Ok(None));
        assert_eq!(log.last_index(), 3);
        // Conflict at 3.
        assert_eq!(
            log.append_after_match(vec![e(2, 1), e(3, 3), e(4, 3)]),
            Ok(Some(3))
        );
        assert_eq!(log.last_index(), 4);
        assert_eq!(log.term(3), Some(3));
        assert_eq!(log.unstable_from, 3);
        assert_eq!(log.persisted, 2);
        // A conflict with a committed entry is refused.
        assert_eq!(log.append_after_match(vec![e(1, 9)]), Err(1));
    }

    #[test]
    fn entries_for_append_respects_limits() {
        let cmd = |i| Entry {
            index: i,
            term: 1,
            payload: EntryPayload::Command(vec![0; 10]),
        };
        let log = RaftLog::restored(0, 0, (1..=10).map(cmd).collect(), 0).unwrap();
        assert_eq!(log.entries_for_append(1, 3, 1000).len(), 3);
        assert_eq!(log.entries_for_append(1, 100, 25).len(), 2);
        assert_eq!(
            log.entries_for_append(1, 100, 1).len(),
            1,
            "always at least one"
        );
        assert_eq!(log.entries_for_append(11, 100, 1000).len(), 0);
    }

    #[test]
    fn term_lookups_for_conflict_hints() {
        let log =
            RaftLog::restored(0, 0, vec![e(1, 1), e(2, 2), e(3, 2), e(4, 2), e(5, 4)], 0).unwrap();
        assert_eq!(log.first_index_of_term_at(4), 2);
        assert_eq!(log.last_index_of_term(2, 5), Some(4));
        assert_eq!(log.last_index_of_term(3, 5), None);
        assert_eq!(log.last_index_of_term(2, 3), Some(3));
    }
}

//! Records what clients invoked and what came back into the checker's `History`, in the order
//! it happened, stamped by a caller-provided clock (elapsed simulated time in the simulator;
//! the recorder itself reads no clock).
//!
//! Invariants: an invocation is recorded before its request is sent and its completion after the
//! reply arrives, so [invoke, complete] contains the real effect; the clock is read under the
//! history's lock, so time stamps never go backwards even with clients on several threads; a
//! process has at most one operation in flight (a process whose operation ended `info` never
//! issues again: the workload client moves to a fresh process id).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use checker::{History, OkValue, OpId, Outcome};

use crate::op::{Op, OpResult};

/// Source of the time stamps, in nanoseconds since the start of the run; must not go backwards.
pub type Clock = dyn Fn() -> u64 + Send + Sync;

/// How an operation ended, as the workload client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    Ok(OpResult),
    /// Definitely had no effect.
    Fail(String),
    /// May or may not have had an effect (Jepsen's `:info`).
    Info(String),
}

#[derive(Debug)]
struct Log {
    history: History,
    open_processes: BTreeSet<u64>,
}

/// Cheap to clone; all clones append to one history.
#[derive(Clone)]
pub struct Recorder {
    log: Arc<Mutex<Log>>,
    clock: Arc<Clock>,
}

impl Recorder {
    pub fn new(clock: Arc<Clock>) -> Recorder {
        Recorder {
            log: Arc::new(Mutex::new(Log {
                history: History::new(),
                open_processes: BTreeSet::new(),
            })),
            clock,
        }
    }

    /// The current time on the recorder's clock.
    pub fn now_ns(&self) -> u64 {
        (self.clock)()
    }

    pub fn invoke(&self, process: u64, op: &Op) -> OpId {
        let mut log = self.lock();
        assert!(
            log.open_processes.insert(process),
            "process {process} invoked while its previous operation is still open"
        );
        let time_ns = (self.clock)();
        let (key, checker_op) = to_checker_op(op);
        match log.history.invoke(time_ns, process, key, checker_op) {
            Ok(id) => id,
            Err(e) => panic!("recording invocation of {op} by process {process}: {e}"),
        }
    }

    pub fn complete(&self, id: OpId, completion: &Completion) {
        let mut log = self.lock();
        let process = match log.history.op(id) {
            Some(record) => record.process,
            None => panic!("completion of unknown operation {id}"),
        };
        log.open_processes.remove(&process);
        let time_ns = (self.clock)();
        if let Err(e) = log.history.complete(time_ns, id, to_outcome(completion)) {
            panic!("recording completion of {id} ({completion:?}): {e}");
        }
    }

    /// A copy of the history so far.
    pub fn history(&self) -> History {
        self.lock().history.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        // A panic while holding the lock is already a failed run; keep the history readable.
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn to_checker_op(op: &Op) -> (String, checker::Op) {
    let checker_op = match op {
        Op::Read { .. } => checker::Op::Read,
        Op::Write { value, .. } => checker::Op::Write { value: *value },
        Op::Cas { expected, new, .. } => checker::Op::Cas {
            expected: *expected,
            new: *new,
        },
        Op::Delete { .. } => checker::Op::Delete,
        Op::SetAdd { element, .. } => checker::Op::Add { element: *element },
        Op::SetRead { .. } => checker::Op::ReadSet,
    };
    (op.key().to_string(), checker_op)
}

fn to_outcome(completion: &Completion) -> Outcome {
    match completion {
        Completion::Ok(result) => Outcome::Ok(match result {
            OpResult::Read(value) => OkValue::Read(*value),
            OpResult::Written | OpResult::Deleted | OpResult::Added | OpResult::Cas(true) => {
                OkValue::Done
            }
            OpResult::Cas(false) => OkValue::CasMismatch,
            OpResult::SetRead(elements) => OkValue::Elements(elements.iter().copied().collect()),
        }),
        Completion::Fail(_) => Outcome::Fail,
        Completion::Info(_) => Outcome::Info,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn ticking_clock() -> Arc<Clock> {
        let now = Arc::new(AtomicU64::new(0));
        Arc::new(move || now.fetch_add(10, Ordering::SeqCst))
    }

    #[test]
    fn records_in_order_with_clock_stamps() {
        let recorder = Recorder::new(ticking_clock());
        let a = recorder.invoke(0, &Op::Read { key: "k".into() });
        let b = recorder.invoke(
            1,
            &Op::Write {
                key: "k".into(),
                value: 1,
            },
        );
        recorder.complete(b, &Completion::Ok(OpResult::Written));
        recorder.complete(a, &Completion::Ok(OpResult::Read(Some(1))));
        let history = recorder.history();
        assert_eq!(history.len(), 2);
        let read = history.op(a).expect("op a");
        assert_eq!(read.invoke_ns, 0);
        assert_eq!(read.completion.as_ref().map(|c| c.time_ns), Some(30));
        assert_eq!(read.outcome(), &Outcome::Ok(OkValue::Read(Some(1))));
        assert_eq!(history.to_jsonl().lines().count(), 4);
    }

    #[test]
    fn cas_mismatch_and_set_read_are_translated() {
        let recorder = Recorder::new(ticking_clock());
        let c = recorder.invoke(
            0,
            &Op::Cas {
                key: "k".into(),
                expected: 1,
                new: 2,
            },
        );
        recorder.complete(c, &Completion::Ok(OpResult::Cas(false)));
        let r = recorder.invoke(0, &Op::SetRead { set: "s".into() });
        recorder.complete(
            r,
            &Completion::Ok(OpResult::SetRead([3, 1].into_iter().collect())),
        );
        let history = recorder.history();
        assert_eq!(
            history.op(c).map(|o| o.outcome().clone()),
            Some(Outcome::Ok(OkValue::CasMismatch))
        );
        assert_eq!(
            history.op(r).map(|o| o.outcome().clone()),
            Some(Outcome::Ok(OkValue::Elements(vec![1, 3])))
        );
        assert_eq!(history.op(r).map(|o| o.key.as_str()), Some("s"));
    }

    #[test]
    #[should_panic(expected = "still open")]
    fn one_open_operation_per_process() {
        let recorder = Recorder::new(ticking_clock());
        recorder.invoke(0, &Op::Read { key: "k".into() });
        recorder.invoke(0, &Op::Read { key: "k".into() });
    }

    #[test]
    #[should_panic(expected = "already completed")]
    fn completes_once() {
        let recorder = Recorder::new(ticking_clock());
        let a = recorder.invoke(0, &Op::Read { key: "k".into() });
        recorder.complete(a, &Completion::Fail("x".into()));
        recorder.complete(a, &Completion::Fail("x".into()));
    }
}

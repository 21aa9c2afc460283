//! Records what clients invoked and what came back, in the order it happened, stamped with a
//! caller-provided monotonic time (simulated time in the simulator; the recorder reads no clock).
//!
//! Invariants: an invocation is recorded before its request is sent and its completion after the
//! reply arrives, so [invoke, complete] contains the real effect; every invocation is completed
//! at most once; a process has at most one operation in flight (a process whose operation ended
//! `info` never issues again: the runner moves the client to a fresh process id).

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::op::{Op, OpResult};

/// Index of an invocation in the recorder, returned by `invoke`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Invocation(pub usize);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Completion {
    Ok(OpResult),
    /// Definitely had no effect.
    Fail(String),
    /// May or may not have had an effect (Jepsen's `:info`).
    Info(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Invoke {
        op: Op,
    },
    Complete {
        invocation: Invocation,
        completion: Completion,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub time_ns: u64,
    pub process: u64,
    pub kind: EventKind,
}

#[derive(Default, Debug)]
struct Log {
    events: Vec<Event>,
    /// Per invocation: (process, event index of the invoke, completed yet).
    invocations: Vec<(u64, bool)>,
}

/// Cheap to clone; all clones append to one log.
#[derive(Clone, Default, Debug)]
pub struct Recorder {
    log: Arc<Mutex<Log>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    pub fn invoke(&self, process: u64, op: Op, time_ns: u64) -> Invocation {
        let mut log = self.lock();
        assert!(
            !log.invocations
                .iter()
                .any(|&(p, done)| p == process && !done),
            "process {process} invoked while its previous operation is still open"
        );
        let invocation = Invocation(log.invocations.len());
        log.invocations.push((process, false));
        log.events.push(Event {
            time_ns,
            process,
            kind: EventKind::Invoke { op },
        });
        invocation
    }

    pub fn complete(&self, invocation: Invocation, completion: Completion, time_ns: u64) {
        let mut log = self.lock();
        let (process, done) = match log.invocations.get_mut(invocation.0) {
            Some(entry) => entry,
            None => panic!("completion of unknown invocation {invocation:?}"),
        };
        assert!(!*done, "invocation {invocation:?} completed twice");
        *done = true;
        let process = *process;
        log.events.push(Event {
            time_ns,
            process,
            kind: EventKind::Complete {
                invocation,
                completion,
            },
        });
    }

    /// A copy of every event so far, in recording order.
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.clone()
    }

    /// One JSON object per event: the byte-comparable trace the determinism test compares.
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for event in self.lock().events.iter() {
            match serde_json::to_string(event) {
                Ok(line) => out.push_str(&line),
                Err(e) => out.push_str(&format!("{{\"unserializable\":\"{e}\"}}")),
            }
            out.push('\n');
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        // A panic while holding the lock is already a failed run; keep the log readable.
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_order() {
        let recorder = Recorder::new();
        let a = recorder.invoke(0, Op::Read { key: "k".into() }, 10);
        let b = recorder.invoke(
            1,
            Op::Write {
                key: "k".into(),
                value: 1,
            },
            11,
        );
        recorder.complete(b, Completion::Ok(OpResult::Written), 12);
        recorder.complete(a, Completion::Ok(OpResult::Read(Some(1))), 13);
        let events = recorder.events();
        assert_eq!(events.len(), 4);
        assert_eq!(
            events.iter().map(|e| e.time_ns).collect::<Vec<_>>(),
            vec![10, 11, 12, 13]
        );
        assert_eq!(events[2].process, 1);
        assert_eq!(recorder.to_jsonl().lines().count(), 4);
    }

    #[test]
    #[should_panic(expected = "still open")]
    fn one_open_operation_per_process() {
        let recorder = Recorder::new();
        recorder.invoke(0, Op::Read { key: "k".into() }, 1);
        recorder.invoke(0, Op::Read { key: "k".into() }, 2);
    }

    #[test]
    #[should_panic(expected = "completed twice")]
    fn completes_once() {
        let recorder = Recorder::new();
        let a = recorder.invoke(0, Op::Read { key: "k".into() }, 1);
        recorder.complete(a, Completion::Fail("x".into()), 2);
        recorder.complete(a, Completion::Fail("x".into()), 3);
    }
}

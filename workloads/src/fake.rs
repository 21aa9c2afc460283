//! In-memory stores for testing workloads, the recorder and the checker wiring without a
//! cluster: one that is linearizable by construction (every operation takes effect atomically
//! between its invocation and completion, even when it reports an unknown outcome) and one that
//! deliberately serves stale reads, which a correct checker must catch.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::store::{KvStore, StoreError, Value};

/// How the fake misbehaves; all zero: a perfect store.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FakeFaults {
    /// Percent of writes that report `Unknown` (half of them applied, half not).
    pub unknown_percent: u32,
    /// Percent of writes refused with `Failed` (never applied).
    pub fail_percent: u32,
    /// Percent of register reads answered with an older value of the key (not linearizable).
    pub stale_read_percent: u32,
}

#[derive(Debug)]
struct State {
    /// Every value each key ever held, oldest first; `None` after a delete.
    registers: BTreeMap<String, Vec<Option<Value>>>,
    sets: BTreeMap<String, BTreeSet<Value>>,
    rng: StdRng,
}

/// One shared in-memory store; clone it to give each client a handle.
#[derive(Clone, Debug)]
pub struct FakeStore {
    state: Arc<Mutex<State>>,
    faults: FakeFaults,
}

enum WriteFate {
    Apply,
    ApplyThenUnknown,
    DropThenUnknown,
    Refuse,
}

impl FakeStore {
    pub fn new(seed: u64, faults: FakeFaults) -> FakeStore {
        FakeStore {
            state: Arc::new(Mutex::new(State {
                registers: BTreeMap::new(),
                sets: BTreeMap::new(),
                rng: StdRng::seed_from_u64(seed),
            })),
            faults,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write_fate(&self, state: &mut State) -> WriteFate {
        let roll = state.rng.random_range(0..100);
        if roll < self.faults.fail_percent {
            WriteFate::Refuse
        } else if roll < self.faults.fail_percent + self.faults.unknown_percent {
            if state.rng.random_bool(0.5) {
                WriteFate::ApplyThenUnknown
            } else {
                WriteFate::DropThenUnknown
            }
        } else {
            WriteFate::Apply
        }
    }

    /// Lets other clients interleave, so that operations overlap in the history.
    async fn interleave() {
        tokio::task::yield_now().await;
    }

    async fn write<T>(&self, apply: impl FnOnce(&mut State) -> T) -> Result<T, StoreError> {
        Self::interleave().await;
        let outcome = {
            let mut state = self.lock();
            match self.write_fate(&mut state) {
                WriteFate::Apply => Ok(apply(&mut state)),
                WriteFate::ApplyThenUnknown => {
                    apply(&mut state);
                    Err(StoreError::Unknown("fake: applied, reply lost".into()))
                }
                WriteFate::DropThenUnknown => Err(StoreError::Unknown("fake: request lost".into())),
                WriteFate::Refuse => Err(StoreError::Failed("fake: refused".into())),
            }
        };
        Self::interleave().await;
        outcome
    }
}

fn current(state: &State, key: &str) -> Option<Value> {
    state
        .registers
        .get(key)
        .and_then(|versions| versions.last().copied().flatten())
}

impl KvStore for FakeStore {
    async fn get(&self, key: &str) -> Result<Option<Value>, StoreError> {
        Self::interleave().await;
        let value = {
            let mut state = self.lock();
            let stale = state.rng.random_range(0..100) < self.faults.stale_read_percent;
            let versions = state.registers.get(key).cloned().unwrap_or_default();
            if stale && versions.len() >= 2 {
                let pick = state.rng.random_range(0..versions.len() - 1);
                versions.get(pick).copied().flatten()
            } else {
                current(&state, key)
            }
        };
        Self::interleave().await;
        Ok(value)
    }

    async fn put(&self, key: &str, value: Value) -> Result<(), StoreError> {
        self.write(|s| {
            s.registers
                .entry(key.to_string())
                .or_default()
                .push(Some(value))
        })
        .await
    }

    async fn cas(&self, key: &str, expected: Value, new: Value) -> Result<bool, StoreError> {
        self.write(|s| {
            if current(s, key) == Some(expected) {
                s.registers
                    .entry(key.to_string())
                    .or_default()
                    .push(Some(new));
                true
            } else {
                false
            }
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.write(|s| s.registers.entry(key.to_string()).or_default().push(None))
            .await
    }

    async fn set_add(&self, set: &str, element: Value) -> Result<(), StoreError> {
        self.write(|s| {
            s.sets.entry(set.to_string()).or_default().insert(element);
        })
        .await
    }

    async fn set_read(&self, set: &str) -> Result<BTreeSet<Value>, StoreError> {
        Self::interleave().await;
        let elements = self.lock().sets.get(set).cloned().unwrap_or_default();
        Self::interleave().await;
        Ok(elements)
    }
}

//! Workload generators: register (contention on few keys), set (unique adds, final read) and a
//! YCSB-style mix (many keys, skewed access) for load.
//!
//! Invariants: every written value and every added element is unique across the whole run
//! (client index in the high digits, a per-client counter in the low ones), so a read names
//! exactly one write; generators draw randomness only from the rng they are handed, so a run is
//! a function of its seed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::op::{Op, OpResult};
use crate::store::Value;

/// Written values are `client_index * VALUE_STRIDE_PER_CLIENT + counter`.
pub const VALUE_STRIDE_PER_CLIENT: Value = 1_000_000_000;

/// Which workload to run, with its knobs. Serialized into scenario files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum WorkloadSpec {
    Register {
        keys: u32,
        read_weight: u32,
        write_weight: u32,
        cas_weight: u32,
        #[serde(default)]
        delete_weight: u32,
    },
    Set {
        /// Every client adds to this one set; a final read by one client checks it.
        set_name: String,
    },
    Ycsb {
        keys: u32,
        /// Percent of operations that are reads (YCSB A: 50, B: 95).
        read_percent: u32,
        /// Percent of accesses that go to the hottest 20% of keys.
        hot_percent: u32,
    },
}

impl WorkloadSpec {
    pub fn register() -> WorkloadSpec {
        WorkloadSpec::Register {
            keys: 3,
            read_weight: 2,
            write_weight: 2,
            cas_weight: 1,
            delete_weight: 0,
        }
    }

    pub fn set() -> WorkloadSpec {
        WorkloadSpec::Set {
            set_name: "s".to_string(),
        }
    }

    pub fn ycsb_a() -> WorkloadSpec {
        WorkloadSpec::Ycsb {
            keys: 100,
            read_percent: 50,
            hot_percent: 80,
        }
    }

    /// A fresh generator for client `client_index` (0-based).
    pub fn generator(&self, client_index: u32) -> Generator {
        Generator {
            spec: self.clone(),
            next_value: Value::from(client_index + 1) * VALUE_STRIDE_PER_CLIENT,
            last_seen: BTreeMap::new(),
            reads_only: false,
            recent: None,
        }
    }

    /// A generator for a client that only reads (a watcher polling the keys the others
    /// write): register and YCSB reads of the same keys; the set workload has no reads in its
    /// main phase, so there it is an ordinary client. Such a client keeps asking the node it
    /// last found leading while the writers move on: a deposed leader that still answers reads
    /// is caught by the checker.
    pub fn reader(&self, client_index: u32) -> Generator {
        Generator {
            reads_only: !matches!(self, WorkloadSpec::Set { .. }),
            ..self.generator(client_index)
        }
    }
}

/// Produces the operations of one client.
#[derive(Clone, Debug)]
pub struct Generator {
    spec: WorkloadSpec,
    next_value: Value,
    /// Last value this client read or wrote per key: the `expected` of its next cas, so that a
    /// fair share of cas operations can succeed.
    last_seen: BTreeMap<String, Value>,
    /// Only reads (see `WorkloadSpec::reader`).
    reads_only: bool,
    /// The key of the latest write any client sharing this cell issued (see
    /// `Generator::sharing_recent_key`).
    recent: Option<RecentKey>,
}

/// The key the latest write of any client went to, shared by the clients of one run (in
/// simulation all of them run on one thread, so the order of updates is the seed's).
pub type RecentKey = Arc<Mutex<Option<String>>>;

/// A read goes to the latest written key with this probability (percent) when the
/// generator shares a `RecentKey`.
const READ_RECENT_KEY_PERCENT: u32 = 75;

impl Generator {
    pub fn next_op(&mut self, rng: &mut StdRng) -> Op {
        let mut op = self.next_mixed_op(rng);
        if self.reads_only {
            op = match op {
                Op::Write { key, .. } | Op::Cas { key, .. } | Op::Delete { key } => {
                    Op::Read { key }
                }
                other => other,
            };
        }
        let Some(recent) = &self.recent else {
            return op;
        };
        let mut recent = recent.lock().unwrap_or_else(|p| p.into_inner());
        match op {
            Op::Write { ref key, .. } | Op::Cas { ref key, .. } | Op::Delete { ref key } => {
                *recent = Some(key.clone());
                op
            }
            Op::Read { key } => match recent.as_ref() {
                Some(hot) if rng.random_range(0..100) < READ_RECENT_KEY_PERCENT => {
                    Op::Read { key: hot.clone() }
                }
                _ => Op::Read { key },
            },
            other => other,
        }
    }

    /// Reads go mostly to the key the latest write (of any client sharing `recent`) went to:
    /// a stale answer is then about a value the checker knows was just written, not about a
    /// key nobody touched for a while.
    pub fn sharing_recent_key(mut self, recent: RecentKey) -> Self {
        self.recent = Some(recent);
        self
    }

    fn next_mixed_op(&mut self, rng: &mut StdRng) -> Op {
        match self.spec.clone() {
            WorkloadSpec::Register {
                keys,
                read_weight,
                write_weight,
                cas_weight,
                delete_weight,
            } => {
                let key = format!("r{}", rng.random_range(0..keys.max(1)));
                let total = (read_weight + write_weight + cas_weight + delete_weight).max(1);
                let pick = rng.random_range(0..total);
                if pick < read_weight {
                    Op::Read { key }
                } else if pick < read_weight + write_weight {
                    Op::Write {
                        key,
                        value: self.fresh_value(),
                    }
                } else if pick < read_weight + write_weight + cas_weight {
                    let expected = self.last_seen.get(&key).copied().unwrap_or(0);
                    Op::Cas {
                        key,
                        expected,
                        new: self.fresh_value(),
                    }
                } else {
                    Op::Delete { key }
                }
            }
            WorkloadSpec::Set { set_name } => Op::SetAdd {
                set: set_name,
                element: self.fresh_value(),
            },
            WorkloadSpec::Ycsb {
                keys,
                read_percent,
                hot_percent,
            } => {
                let keys = keys.max(1);
                let hot_keys = (keys / 5).max(1);
                let index = if rng.random_range(0..100) < hot_percent {
                    rng.random_range(0..hot_keys)
                } else {
                    rng.random_range(0..keys)
                };
                let key = format!("y{index}");
                if rng.random_range(0..100) < read_percent {
                    Op::Read { key }
                } else {
                    Op::Write {
                        key,
                        value: self.fresh_value(),
                    }
                }
            }
        }
    }

    /// Operations one client runs after every client finished its main phase.
    pub fn final_ops(&self) -> Vec<Op> {
        match &self.spec {
            WorkloadSpec::Set { set_name } => vec![Op::SetRead {
                set: set_name.clone(),
            }],
            WorkloadSpec::Register { .. } | WorkloadSpec::Ycsb { .. } => Vec::new(),
        }
    }

    /// Feeds back what an ok operation returned.
    pub fn observe(&mut self, op: &Op, result: &OpResult) {
        match (op, result) {
            (Op::Read { key }, OpResult::Read(Some(v))) => {
                self.last_seen.insert(key.clone(), *v);
            }
            (Op::Write { key, value }, OpResult::Written)
            | (
                Op::Cas {
                    key, new: value, ..
                },
                OpResult::Cas(true),
            ) => {
                self.last_seen.insert(key.clone(), *value);
            }
            _ => {}
        }
    }

    fn fresh_value(&mut self) -> Value {
        self.next_value += 1;
        assert!(
            self.next_value % VALUE_STRIDE_PER_CLIENT != 0,
            "a client wrote {VALUE_STRIDE_PER_CLIENT} values: uniqueness would break"
        );
        self.next_value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::collections::BTreeSet;

    fn written(op: &Op) -> Option<Value> {
        match op {
            Op::Write { value, .. } => Some(*value),
            Op::Cas { new, .. } => Some(*new),
            Op::SetAdd { element, .. } => Some(*element),
            _ => None,
        }
    }

    #[test]
    fn written_values_are_unique_across_clients() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = BTreeSet::new();
        for spec in [
            WorkloadSpec::register(),
            WorkloadSpec::set(),
            WorkloadSpec::ycsb_a(),
        ] {
            for client in 0..4 {
                let mut generator = spec.generator(client);
                for _ in 0..500 {
                    if let Some(v) = written(&generator.next_op(&mut rng)) {
                        assert!(
                            seen.insert((format!("{spec:?}"), v)),
                            "value {v} written twice"
                        );
                    }
                }
            }
        }
        assert!(seen.len() > 1000);
    }

    #[test]
    fn register_mix_has_every_kind_and_cas_expects_last_seen() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut generator = WorkloadSpec::register().generator(0);
        generator.observe(&Op::Read { key: "r1".into() }, &OpResult::Read(Some(42)));
        let ops: Vec<Op> = (0..300).map(|_| generator.next_op(&mut rng)).collect();
        assert!(ops.iter().any(|o| matches!(o, Op::Read { .. })));
        assert!(ops.iter().any(|o| matches!(o, Op::Write { .. })));
        assert!(ops
            .iter()
            .any(|o| matches!(o, Op::Cas { key, expected: 42, .. } if key == "r1")));
        assert!(ops.iter().all(|o| ["r0", "r1", "r2"].contains(&o.key())));
    }

    #[test]
    fn readers_only_read_the_keys_the_writers_use() {
        let mut rng = StdRng::seed_from_u64(3);
        let universe = |prefix: &str, n: u32| -> BTreeSet<String> {
            (0..n).map(|i| format!("{prefix}{i}")).collect()
        };
        for (spec, keys) in [
            (WorkloadSpec::register(), universe("r", 3)),
            (WorkloadSpec::ycsb_a(), universe("y", 100)),
        ] {
            let mut reader = spec.reader(1);
            let ops: Vec<Op> = (0..500).map(|_| reader.next_op(&mut rng)).collect();
            assert!(ops.iter().all(|o| matches!(o, Op::Read { .. })), "{spec:?}");
            let read: BTreeSet<String> = ops.iter().map(|o| o.key().to_string()).collect();
            assert!(
                read.len() > 1 && read.is_subset(&keys),
                "{spec:?}: {read:?}"
            );
        }
        // The set workload has no reads in its main phase: a reader adds like the others.
        let mut reader = WorkloadSpec::set().reader(1);
        assert!(matches!(reader.next_op(&mut rng), Op::SetAdd { .. }));
    }

    #[test]
    fn shared_recent_key_draws_reads_to_the_latest_write() {
        let mut rng = StdRng::seed_from_u64(9);
        let spec = WorkloadSpec::Ycsb {
            keys: 200,
            read_percent: 50,
            hot_percent: 0,
        };
        let recent = RecentKey::default();
        let mut writer = spec.generator(0).sharing_recent_key(recent.clone());
        let mut reader = spec.reader(1).sharing_recent_key(recent.clone());
        let (mut reads, mut on_latest) = (0, 0);
        for _ in 0..400 {
            let written = loop {
                if let Op::Write { key, .. } = writer.next_op(&mut rng) {
                    break key;
                }
            };
            let Op::Read { key } = reader.next_op(&mut rng) else {
                panic!("a reader only reads");
            };
            reads += 1;
            on_latest += usize::from(key == written);
        }
        // 75 % on the latest written key, the rest spread over 200 keys.
        assert!(
            on_latest * 100 > reads * 65 && on_latest * 100 < reads * 85,
            "{on_latest}/{reads}"
        );
    }

    #[test]
    fn same_seed_same_ops() {
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut generator = WorkloadSpec::ycsb_a().generator(3);
            (0..100)
                .map(|_| generator.next_op(&mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn set_ends_with_one_read() {
        let generator = WorkloadSpec::set().generator(0);
        assert_eq!(generator.final_ops(), vec![Op::SetRead { set: "s".into() }]);
    }
}

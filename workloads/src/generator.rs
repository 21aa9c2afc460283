//! Workload generators: register (contention on few keys), set (unique adds, final read) and a
//! YCSB-style mix (many keys, skewed access) for load.
//!
//! Invariants: every written value and every added element is unique across the whole run
//! (client index in the high digits, a per-client counter in the low ones), so a read names
//! exactly one write; generators draw randomness only from the rng they are handed, so a run is
//! a function of its seed.

use std::collections::BTreeMap;

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
}

impl Generator {
    pub fn next_op(&mut self, rng: &mut StdRng) -> Op {
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

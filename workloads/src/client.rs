//! One workload client: draws operations from its generator, performs them on its store and
//! records invocation and completion.
//!
//! Invariants: the invocation is recorded before the request is sent; an `Unknown` outcome of a
//! write ends the current process (Jepsen semantics: its operation may still take effect at any
//! later time), so the client continues as process `process + client_count`; an unknown read is
//! recorded as failed, which is sound because a read has no effect.

use std::time::Duration;

use node::deadline::Deadline;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::generator::{Generator, RecentKey, WorkloadSpec};
use crate::op::{execute, Op};
use crate::recorder::{Completion, Recorder};
use crate::store::{KvStore, StoreError};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
}

impl ClientStats {
    pub fn total(&self) -> u64 {
        self.ok + self.fail + self.info
    }

    pub fn add(&mut self, other: &ClientStats) {
        self.ok += other.ok;
        self.fail += other.fail;
        self.info += other.info;
    }
}

pub struct WorkloadClient<S> {
    store: S,
    generator: Generator,
    rng: StdRng,
    recorder: Recorder,
    process: u64,
    client_count: u64,
    think_time_ms: u64,
    pub stats: ClientStats,
}

impl<S: KvStore> WorkloadClient<S> {
    /// `client_index` in `0..client_count`; `rng_seed` should differ per client.
    pub fn new(
        store: S,
        spec: &WorkloadSpec,
        client_index: u32,
        client_count: u32,
        rng_seed: u64,
        recorder: Recorder,
    ) -> WorkloadClient<S> {
        assert!(
            client_index < client_count,
            "client {client_index} of {client_count}"
        );
        WorkloadClient {
            store,
            generator: spec.generator(client_index),
            rng: StdRng::seed_from_u64(rng_seed),
            recorder,
            process: u64::from(client_index),
            client_count: u64::from(client_count),
            think_time_ms: 0,
            stats: ClientStats::default(),
        }
    }

    /// Pause between two operations of this client (0: none).
    pub fn with_think_time_ms(mut self, think_time_ms: u64) -> Self {
        self.think_time_ms = think_time_ms;
        self
    }

    /// Draws operations from `generator` instead (e.g. `WorkloadSpec::reader`'s).
    pub fn with_generator(mut self, generator: Generator) -> Self {
        self.generator = generator;
        self
    }

    /// Reads mostly the key the latest write of any client sharing `recent` went to.
    pub fn sharing_recent_key(mut self, recent: RecentKey) -> Self {
        self.generator = self.generator.sharing_recent_key(recent);
        self
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// Runs generated operations until `max_ops` were issued or the recorder's clock reaches
    /// `until_ns`.
    pub async fn run(&mut self, max_ops: u64, until_ns: u64) {
        for _ in 0..max_ops {
            if self.recorder.now_ns() >= until_ns {
                break;
            }
            let op = self.generator.next_op(&mut self.rng);
            self.perform(op).await;
            if self.think_time_ms > 0 {
                // One timer however often the task is woken meanwhile (madsim's `sleep` arms
                // one per poll, and each stale timer wakes the task again later).
                Deadline::after(Duration::from_millis(self.think_time_ms)).await;
            }
        }
    }

    /// Runs the workload's closing operations (e.g. the set's final read).
    pub async fn run_final(&mut self) {
        for op in self.generator.final_ops() {
            self.perform(op).await;
        }
    }

    /// Performs one operation and records it; returns its completion.
    pub async fn perform(&mut self, op: Op) -> Completion {
        let invocation = self.recorder.invoke(self.process, &op);
        let outcome = execute(&self.store, &op).await;
        let completion = match outcome {
            Ok(result) => {
                self.generator.observe(&op, &result);
                self.stats.ok += 1;
                Completion::Ok(result)
            }
            Err(StoreError::Failed(reason)) => {
                self.stats.fail += 1;
                Completion::Fail(reason)
            }
            Err(StoreError::Unknown(reason)) if op.is_read() => {
                self.stats.fail += 1;
                Completion::Fail(format!("read outcome unknown: {reason}"))
            }
            Err(StoreError::Unknown(reason)) => {
                self.stats.info += 1;
                Completion::Info(reason)
            }
        };
        self.recorder.complete(invocation, &completion);
        if matches!(completion, Completion::Info(_)) {
            self.process += self.client_count;
        }
        completion
    }
}

//! quorumkv's checker: decides whether recorded key-value histories are linearizable, and
//! explains why not.
//!
//! - `history`: the history model and the native JSON Lines format (one event per line).
//! - `edn`, `jepsen`: a small EDN reader and the import of Jepsen/Knossos histories.
//! - `search`: the Wing–Gong/Lowe search for one register, memoized.
//! - `linearizability`: `check_kv` over all keys (P-compositionality, optional parallelism).
//! - `explain`, `html`: the failing key, a minimal failing sub-history, the longest
//!   linearizable prefix, the op that cannot be placed, and a self-contained HTML timeline.
//! - `set`, `final_state`: the set workload's check and the after-healing replica check.
//!
//! This crate depends on no other quorumkv crate and never reads a clock to order events:
//! histories carry caller-supplied timestamps.
#![forbid(unsafe_code)]

pub mod edn;
pub mod explain;
pub mod final_state;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod history;
pub mod html;
pub mod jepsen;
pub mod linearizability;
pub mod models;
pub mod search;
pub mod set;

pub use explain::{explain, Explanation};
pub use final_state::{check_final_state, FinalStateVerdict, ReplicaState};
pub use history::{Completion, History, HistoryError, OkValue, Op, OpId, OpRecord, Outcome};
pub use html::{html_document, html_section, render_html};
pub use jepsen::{parse_edn, ImportModel};
pub use linearizability::{check_kv, Budget, CheckOptions, Verdict, Violation};
pub use set::{check_set, SetAnomaly, SetReport};

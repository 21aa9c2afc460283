//! The checker's readers as the cargo-fuzz targets in `fuzz/` (and
//! `tests/fuzz_regressions.rs`) call them: any input gives a history or a clear error, never a
//! panic or an allocation the input does not justify. Not part of the supported API.

use crate::history::History;
use crate::jepsen::{parse_edn, ImportModel};

/// A Jepsen/Knossos EDN history, imported under every model.
pub fn edn(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::edn::parse_all(&text);
    for model in [ImportModel::Kv, ImportModel::Register, ImportModel::Set] {
        let _ = parse_edn(&text, model);
    }
}

/// A native JSON Lines history.
pub fn jsonl(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(history) = History::from_jsonl(&text) {
        // What was read must write back and read again the same.
        let again = History::from_jsonl(&history.to_jsonl());
        assert!(
            again.is_ok(),
            "a history read from JSONL does not read back"
        );
    }
}

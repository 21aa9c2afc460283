//! Merging the per-shard answers of a scan that covers every shard.
//!
//! Keys are spread over shards by hash, so a range scan asks every shard for its first `limit`
//! keys in the range and merges them. The first `limit` keys of the merge are exactly the first
//! `limit` keys of the whole range: any key among them is among its own shard's first `limit`.
//! `more` is true when a shard had more than it returned or the merge dropped items, so a caller
//! paging with "start after the last key returned" sees every key once.
//!
//! Consistency: every shard's part is a linearizable read of that shard, but the parts are read
//! one after another, so the whole scan is not one atomic snapshot of the cluster.

use crate::kv::ScanItem;

/// One shard's answer: its items in key order and whether it had more.
pub type ScanPart = (Vec<ScanItem>, bool);

/// The first `limit` items of all parts in key order, and whether anything was left out.
pub fn merge_scans(parts: Vec<ScanPart>, limit: u32) -> ScanPart {
    let mut any_more = false;
    let mut items = Vec::new();
    for (part, more) in parts {
        debug_assert!(
            part.windows(2).all(|w| w[0].key < w[1].key),
            "shard scan out of order"
        );
        any_more |= more;
        items.extend(part);
    }
    // Stable, and the parts' keys are disjoint (a key lives in one shard).
    items.sort_by(|a, b| a.key.cmp(&b.key));
    let limit = limit as usize;
    if items.len() > limit {
        items.truncate(limit);
        any_more = true;
    }
    (items, any_more)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(keys: &[&str]) -> Vec<ScanItem> {
        keys.iter()
            .map(|k| ScanItem {
                key: k.as_bytes().to_vec(),
                value: format!("v-{k}").into_bytes(),
                version: 1,
            })
            .collect()
    }

    fn keys(items: &[ScanItem]) -> Vec<String> {
        items
            .iter()
            .map(|i| String::from_utf8_lossy(&i.key).into_owned())
            .collect()
    }

    #[test]
    fn merges_in_key_order_and_cuts_at_the_limit() {
        let parts = vec![
            (items(&["b", "e", "f"]), false),
            (items(&[]), false),
            (items(&["a", "c", "g"]), false),
            (items(&["d"]), false),
        ];
        let (all, more) = merge_scans(parts.clone(), 100);
        assert_eq!(keys(&all), ["a", "b", "c", "d", "e", "f", "g"]);
        assert!(!more);
        let (cut, more) = merge_scans(parts.clone(), 4);
        assert_eq!(keys(&cut), ["a", "b", "c", "d"]);
        assert!(more, "the merge dropped items");
        let (exact, more) = merge_scans(parts, 7);
        assert_eq!(exact.len(), 7);
        assert!(!more, "nothing was left out");
    }

    #[test]
    fn a_shard_with_more_makes_the_merge_have_more() {
        let parts = vec![(items(&["a", "b"]), true), (items(&[]), false)];
        let (merged, more) = merge_scans(parts, 2);
        assert_eq!(keys(&merged), ["a", "b"]);
        assert!(more);
    }

    #[test]
    fn paging_after_the_last_key_sees_every_key_once() {
        // Three shards holding interleaved keys; page through with limit 2 as `set_read` does.
        let shards: Vec<Vec<&str>> = vec![
            vec!["a", "d", "g", "j"],
            vec!["b", "e", "h"],
            vec!["c", "f", "i"],
        ];
        let limit = 2;
        let mut after: Option<String> = None;
        let mut seen = Vec::new();
        loop {
            let parts = shards
                .iter()
                .map(|shard| {
                    let rest: Vec<&str> = shard
                        .iter()
                        .copied()
                        .filter(|k| after.as_deref().is_none_or(|a| *k > a))
                        .collect();
                    let more = rest.len() > limit;
                    (items(&rest[..rest.len().min(limit)]), more)
                })
                .collect();
            let (page, more) = merge_scans(parts, limit as u32);
            seen.extend(keys(&page));
            match page.last() {
                Some(last) if more => after = Some(String::from_utf8_lossy(&last.key).into_owned()),
                _ => break,
            }
        }
        assert_eq!(seen, ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]);
    }
}

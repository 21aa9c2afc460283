//! Key-space commands: DEL, UNLINK, EXISTS, TYPE, SCAN, KEYS.
//!
//! DEL/UNLINK and EXISTS take keys of any shards: each key is deleted or read on its own (a
//! multi-shard DEL is not atomic; Redis Cluster would answer CROSSSLOT). SCAN walks the whole
//! key space in key order across shards; its cursor is a number this node maps to the key to
//! resume from (`RespContext` keeps the last `max_redis_scan_cursors` of them).

use super::{client_error, option, syntax_error, CommandSpec, ConnState};
use crate::kv::{KeyRange, ScanItem};
use crate::resp::frame::Reply;
use crate::resp::glob;
use crate::resp::RespContext;

/// SCAN's default COUNT (as Redis).
const SCAN_COUNT_DEFAULT: u32 = 10;

pub async fn run(
    context: &RespContext,
    state: &mut ConnState,
    spec: &CommandSpec,
    args: &[Vec<u8>],
) -> Reply {
    let result = match spec.name {
        "del" | "unlink" => delete(state, &args[1..]).await,
        "exists" => exists(state, &args[1..]).await,
        "type" => type_of(state, &args[1]).await,
        "scan" => scan(context, state, args).await,
        "keys" => keys(context, state, &args[1]).await,
        other => Err(Reply::error(format!("ERR no key-space command '{other}'"))),
    };
    result.unwrap_or_else(|reply| reply)
}

type Answer = Result<Reply, Reply>;

async fn delete(state: &mut ConnState, keys: &[Vec<u8>]) -> Answer {
    let mut deleted = 0;
    for key in keys {
        let previous = state.client.delete(key).await.map_err(client_error)?;
        deleted += i64::from(previous.is_some());
    }
    Ok(Reply::Integer(deleted))
}

async fn exists(state: &mut ConnState, keys: &[Vec<u8>]) -> Answer {
    let values = state.client.get_many(keys).await.map_err(client_error)?;
    Ok(Reply::Integer(
        values.iter().filter(|v| v.is_some()).count() as i64,
    ))
}

async fn type_of(state: &mut ConnState, key: &[u8]) -> Answer {
    let value = state.client.get(key).await.map_err(client_error)?;
    let name = if value.is_some() { "string" } else { "none" };
    Ok(Reply::Simple(name.into()))
}

/// The first key after every key that starts with `prefix` (None: no such key).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Keys from `start` (at least the pattern's literal prefix), at most `limit`, and whether
/// there are more.
async fn scan_page(
    state: &mut ConnState,
    start: Vec<u8>,
    pattern: &[u8],
    limit: u32,
) -> Result<(Vec<ScanItem>, bool), Reply> {
    let prefix = glob::literal_prefix(pattern);
    let start = start.max(prefix.to_vec());
    let range = KeyRange::Between {
        start,
        end: prefix_end(prefix),
    };
    state.client.scan(range, limit).await.map_err(client_error)
}

/// SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]
async fn scan(context: &RespContext, state: &mut ConnState, args: &[Vec<u8>]) -> Answer {
    let cursor: u64 = std::str::from_utf8(&args[1])
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Reply::error("ERR invalid cursor"))?;
    let mut pattern = b"*".to_vec();
    let mut count = SCAN_COUNT_DEFAULT;
    let mut only_strings = true;
    let mut options = args[2..].iter();
    while let Some(arg) = options.next() {
        let value = options.next().ok_or_else(syntax_error)?;
        match option(arg).as_str() {
            "match" => pattern = value.clone(),
            "count" => {
                let n = super::integer_arg(value)?;
                if n < 1 {
                    return Err(syntax_error());
                }
                count = u32::try_from(n).unwrap_or(u32::MAX);
            }
            "type" => only_strings = option(value) == "string",
            _ => return Err(syntax_error()),
        }
    }
    let count = count.min(u32::try_from(context.limits.max_scan_items).unwrap_or(u32::MAX));
    let start = if cursor == 0 {
        Vec::new()
    } else {
        let known = context
            .cursors
            .lock()
            .ok()
            .and_then(|cursors| cursors.start_key(cursor));
        known.ok_or_else(|| {
            Reply::error("ERR invalid cursor (unknown to this node or forgotten): start over at 0")
        })?
    };
    let (items, more) = scan_page(state, start, &pattern, count).await?;
    let next = match (more, items.last()) {
        (true, Some(last)) => {
            let mut resume = last.key.clone();
            resume.push(0);
            let max = context.limits.max_redis_scan_cursors;
            context
                .cursors
                .lock()
                .map(|mut cursors| cursors.remember(resume, max))
                .map_err(|_| Reply::error("ERR scan cursor table unavailable"))?
        }
        _ => 0,
    };
    let keys = items
        .into_iter()
        .filter(|item| only_strings && glob::matches(&pattern, &item.key))
        .map(|item| Reply::Bulk(item.key))
        .collect();
    Ok(Reply::Array(vec![
        Reply::bulk(next.to_string()),
        Reply::Array(keys),
    ]))
}

/// KEYS pattern: refuses (error) once more than `max_redis_keys_reply` keys were examined.
async fn keys(context: &RespContext, state: &mut ConnState, pattern: &[u8]) -> Answer {
    let max_keys = context.limits.max_redis_keys_reply;
    let page = u32::try_from(context.limits.max_scan_items).unwrap_or(u32::MAX);
    let mut examined = 0usize;
    let mut found = Vec::new();
    let mut start = Vec::new();
    loop {
        let (items, more) = scan_page(state, start, pattern, page).await?;
        examined += items.len();
        if examined > max_keys {
            return Err(Reply::error(format!(
                "ERR KEYS would examine more than max_redis_keys_reply ({max_keys}) keys: use SCAN"
            )));
        }
        start = match items.last() {
            Some(last) => [last.key.as_slice(), &[0]].concat(),
            None => Vec::new(),
        };
        found.extend(
            items
                .into_iter()
                .filter(|item| glob::matches(pattern, &item.key))
                .map(|item| Reply::Bulk(item.key)),
        );
        if !more {
            return Ok(Reply::Array(found));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}

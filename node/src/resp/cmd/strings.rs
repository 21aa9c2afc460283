//! String commands: GET, SET (NX/XX/GET/KEEPTTL), SETNX, GETSET, GETDEL, APPEND, STRLEN,
//! INCR/INCRBY/DECR/DECRBY, MGET, MSET, MSETNX.
//!
//! Every read-modify-write command is one state-machine operation (`Operation::Set`, `Append`,
//! `Increment`, `PutMany`), so it is atomic and applied once even when the client library
//! retries it. MSET/MSETNX follow Redis Cluster: all keys must share their hash part (one hash
//! tag), else `CROSSSLOT`; MGET reads any keys (each key its own linearizable read).

use super::{client_error, integer_arg, not_an_integer, option, syntax_error, wrong_arity};
use super::{CommandSpec, ConnState};
use crate::kv::{OpResult, Operation, SetCondition};
use crate::placement::hash_part;
use crate::resp::frame::Reply;
use crate::resp::RespContext;

pub async fn run(
    _context: &RespContext,
    state: &mut ConnState,
    spec: &CommandSpec,
    args: &[Vec<u8>],
) -> Reply {
    let result = match spec.name {
        "get" => get(state, &args[1]).await,
        "set" => set(state, args).await,
        "setnx" => set_nx(state, args).await,
        "getset" => get_set(state, args).await,
        "getdel" => get_del(state, &args[1]).await,
        "append" => append(state, args).await,
        "strlen" => strlen(state, &args[1]).await,
        "incr" => increment(state, &args[1], 1).await,
        "decr" => increment(state, &args[1], -1).await,
        "incrby" => match integer_arg(&args[2]) {
            Ok(delta) => increment(state, &args[1], delta).await,
            Err(reply) => Err(reply),
        },
        "decrby" => match integer_arg(&args[2]).map(i64::checked_neg) {
            Ok(Some(delta)) => increment(state, &args[1], delta).await,
            Ok(None) => Err(Reply::error("ERR decrement would overflow")),
            Err(reply) => Err(reply),
        },
        "mget" => mget(state, &args[1..]).await,
        "mset" => mset(state, spec.name, &args[1..], false).await,
        "msetnx" => mset(state, spec.name, &args[1..], true).await,
        other => Err(Reply::error(format!("ERR no string command '{other}'"))),
    };
    result.unwrap_or_else(|reply| reply)
}

type Answer = Result<Reply, Reply>;

async fn execute(state: &mut ConnState, op: Operation) -> Result<OpResult, Reply> {
    state.client.execute(op).await.map_err(client_error)
}

fn unexpected(result: OpResult) -> Reply {
    Reply::error(format!("ERR unexpected result {result:?}"))
}

async fn get(state: &mut ConnState, key: &[u8]) -> Answer {
    let value = state.client.get(key).await.map_err(client_error)?;
    Ok(Reply::bulk_or_null(value.map(|v| v.value)))
}

async fn strlen(state: &mut ConnState, key: &[u8]) -> Answer {
    let value = state.client.get(key).await.map_err(client_error)?;
    Ok(Reply::Integer(value.map_or(0, |v| v.value.len() as i64)))
}

/// SET key value [NX | XX] [GET] [KEEPTTL]; EX/PX/EXAT/PXAT answer an error (no TTLs yet).
async fn set(state: &mut ConnState, args: &[Vec<u8>]) -> Answer {
    let mut condition = SetCondition::Always;
    let mut return_previous = false;
    let mut ttl = None;
    let mut options = args[3..].iter();
    while let Some(arg) = options.next() {
        match option(arg).as_str() {
            "nx" if condition == SetCondition::Always => condition = SetCondition::IfAbsent,
            "xx" if condition == SetCondition::Always => condition = SetCondition::IfPresent,
            "get" => return_previous = true,
            "keepttl" if ttl.is_none() => ttl = Some("keepttl".to_string()),
            name @ ("ex" | "px" | "exat" | "pxat") if ttl.is_none() => {
                let Some(amount) = options.next() else {
                    return Err(syntax_error());
                };
                integer_arg(amount)?;
                ttl = Some(name.to_string());
            }
            _ => return Err(syntax_error()),
        }
    }
    if ttl.as_deref().is_some_and(|t| t != "keepttl") {
        return Err(Reply::error(
            "ERR EX, PX, EXAT and PXAT are not supported: quorumkv keys have no expiry yet",
        ));
    }
    let op = Operation::Set {
        key: args[1].clone(),
        value: args[2].clone(),
        condition,
        return_previous,
    };
    match execute(state, op).await? {
        OpResult::Set { previous, .. } if return_previous => {
            Ok(Reply::bulk_or_null(previous.map(|v| v.value)))
        }
        OpResult::Set { written: true, .. } => Ok(Reply::ok()),
        OpResult::Set { written: false, .. } => Ok(Reply::Null),
        other => Err(unexpected(other)),
    }
}

async fn set_nx(state: &mut ConnState, args: &[Vec<u8>]) -> Answer {
    let op = Operation::Set {
        key: args[1].clone(),
        value: args[2].clone(),
        condition: SetCondition::IfAbsent,
        return_previous: false,
    };
    match execute(state, op).await? {
        OpResult::Set { written, .. } => Ok(Reply::Integer(i64::from(written))),
        other => Err(unexpected(other)),
    }
}

async fn get_set(state: &mut ConnState, args: &[Vec<u8>]) -> Answer {
    let op = Operation::Set {
        key: args[1].clone(),
        value: args[2].clone(),
        condition: SetCondition::Always,
        return_previous: true,
    };
    match execute(state, op).await? {
        OpResult::Set { previous, .. } => Ok(Reply::bulk_or_null(previous.map(|v| v.value))),
        other => Err(unexpected(other)),
    }
}

async fn get_del(state: &mut ConnState, key: &[u8]) -> Answer {
    let previous = state.client.delete(key).await.map_err(client_error)?;
    Ok(Reply::bulk_or_null(previous.map(|v| v.value)))
}

async fn append(state: &mut ConnState, args: &[Vec<u8>]) -> Answer {
    let op = Operation::Append {
        key: args[1].clone(),
        suffix: args[2].clone(),
    };
    match execute(state, op).await? {
        OpResult::Appended { len_bytes, .. } => Ok(Reply::Integer(len_bytes as i64)),
        other => Err(unexpected(other)),
    }
}

async fn increment(state: &mut ConnState, key: &[u8], delta: i64) -> Answer {
    let op = Operation::Increment {
        key: key.to_vec(),
        delta,
    };
    match execute(state, op).await? {
        OpResult::Counter { value, .. } => Ok(Reply::Integer(value)),
        OpResult::NotAnInteger { overflow: false } => Err(not_an_integer()),
        OpResult::NotAnInteger { overflow: true } => {
            Err(Reply::error("ERR increment or decrement would overflow"))
        }
        other => Err(unexpected(other)),
    }
}

async fn mget(state: &mut ConnState, keys: &[Vec<u8>]) -> Answer {
    let values = state.client.get_many(keys).await.map_err(client_error)?;
    Ok(Reply::Array(
        values
            .into_iter()
            .map(|v| Reply::bulk_or_null(v.map(|v| v.value)))
            .collect(),
    ))
}

/// Keys of one hash part (Redis Cluster's slot rule with hash tags), or `CROSSSLOT`.
pub fn same_slot(keys: impl IntoIterator<Item = impl AsRef<[u8]>>) -> Result<(), Reply> {
    let mut first: Option<Vec<u8>> = None;
    for key in keys {
        let part = hash_part(key.as_ref());
        match &first {
            None => first = Some(part.to_vec()),
            Some(f) if f.as_slice() == part => {}
            Some(_) => {
                return Err(Reply::error(
                    "CROSSSLOT Keys in request don't hash to the same slot",
                ))
            }
        }
    }
    Ok(())
}

async fn mset(
    state: &mut ConnState,
    name: &str,
    pairs: &[Vec<u8>],
    only_if_all_absent: bool,
) -> Answer {
    if !pairs.len().is_multiple_of(2) {
        return Err(wrong_arity(name));
    }
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = pairs
        .chunks_exact(2)
        .map(|pair| (pair[0].clone(), pair[1].clone()))
        .collect();
    same_slot(pairs.iter().map(|(k, _)| k))?;
    let op = Operation::PutMany {
        pairs,
        only_if_all_absent,
    };
    match execute(state, op).await? {
        OpResult::Written { .. } if only_if_all_absent => Ok(Reply::Integer(1)),
        OpResult::Written { .. } => Ok(Reply::ok()),
        OpResult::ConditionFailed { .. } if only_if_all_absent => Ok(Reply::Integer(0)),
        other => Err(unexpected(other)),
    }
}

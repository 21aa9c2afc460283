//! Commands: the table (name, arity, key positions, group), dispatch and the translation of the
//! client library's errors into Redis error replies. One file per command group:
//! `server` (connection and server commands), `strings` (string values), `keys` (the key space).
//!
//! Invariant: every command is checked against its table arity before it runs, so a handler can
//! index its arguments within that arity; every failure is a Redis error reply, never a panic
//! or a dropped connection.
mod keys;
mod server;
mod strings;

use std::net::SocketAddr;

use super::frame::Reply;
use super::RespContext;
use crate::auth::gate::{Denied, Session};
use crate::auth::Role;
use crate::client::{Client, ClientError};
use crate::kv::InvalidOp;

/// What one connection remembers between commands.
pub struct ConnState {
    pub resp3: bool,
    pub quit: bool,
    pub name: Option<Vec<u8>>,
    client: Client,
    /// False once the connection authenticated: its client carries the user's credentials.
    pooled: bool,
    /// Who authenticated (auth enabled only).
    session: Option<Session>,
    peer: SocketAddr,
}

impl ConnState {
    pub fn new(client: Client, peer: SocketAddr) -> ConnState {
        ConnState {
            resp3: false,
            quit: false,
            name: None,
            client,
            pooled: true,
            session: None,
            peer,
        }
    }

    /// The client, if it may serve other connections (it carries no user's credentials).
    pub fn into_pooled_client(self) -> Option<Client> {
        self.pooled.then_some(self.client)
    }
}

/// Redis's reply to a command before `AUTH` on a server that requires it.
pub const NOAUTH: &str = "NOAUTH Authentication required.";

/// With auth enabled: AUTH, HELLO and QUIT are always allowed; anything else needs a session
/// whose user (in the current table) has the role the command needs (`write` for commands
/// flagged "write", else `read`). The nodes the routing client reaches check again.
fn check_access(context: &RespContext, state: &ConnState, spec: &CommandSpec) -> Option<Reply> {
    let gate = context.auth.as_ref()?;
    if matches!(spec.name, "auth" | "hello" | "quit") {
        return None;
    }
    let need = if spec.flags.contains(&"write") {
        Role::Write
    } else {
        Role::Read
    };
    match gate.authorize(state.session.as_ref(), need) {
        Ok(_) => None,
        Err(Denied::PermissionDenied { user, .. }) => Some(Reply::error(format!(
            "NOPERM User {user} has no permissions to run the '{}' command",
            spec.name
        ))),
        Err(_) => Some(Reply::error(NOAUTH)),
    }
}

/// One row of the command table (as `COMMAND` reports it).
pub struct CommandSpec {
    pub name: &'static str,
    /// Redis convention: N = exactly N arguments (name included), -N = at least N.
    pub arity: i64,
    pub flags: &'static [&'static str],
    pub first_key: i64,
    pub last_key: i64,
    pub key_step: i64,
    pub group: &'static str,
    pub summary: &'static str,
}

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
    group: &'static str,
    summary: &'static str,
) -> CommandSpec {
    CommandSpec {
        name,
        arity,
        flags,
        first_key: keys.0,
        last_key: keys.1,
        key_step: keys.2,
        group,
        summary,
    }
}

const R: &[&str] = &["readonly", "fast"];
const W: &[&str] = &["write", "denyoom", "fast"];
const C: &[&str] = &["fast", "loading", "stale"];
const NO_KEYS: (i64, i64, i64) = (0, 0, 0);

pub const COMMANDS: &[CommandSpec] = &[
    spec(
        "ping",
        -1,
        C,
        NO_KEYS,
        "connection",
        "Returns the server's liveliness response.",
    ),
    spec(
        "echo",
        2,
        C,
        NO_KEYS,
        "connection",
        "Returns the given string.",
    ),
    spec(
        "hello",
        -1,
        C,
        NO_KEYS,
        "connection",
        "Handshakes with the server (RESP2 or RESP3).",
    ),
    spec(
        "auth",
        -2,
        C,
        NO_KEYS,
        "connection",
        "Authenticates the connection: AUTH [username] password.",
    ),
    spec(
        "select",
        2,
        C,
        NO_KEYS,
        "connection",
        "Selects the database (only 0 exists).",
    ),
    spec(
        "quit",
        -1,
        C,
        NO_KEYS,
        "connection",
        "Closes the connection.",
    ),
    spec(
        "client",
        -2,
        C,
        NO_KEYS,
        "connection",
        "CLIENT ID/SETNAME/GETNAME/SETINFO.",
    ),
    spec(
        "command",
        -1,
        C,
        NO_KEYS,
        "server",
        "Returns the command table (COMMAND, COUNT, DOCS, INFO).",
    ),
    spec(
        "info",
        -1,
        C,
        NO_KEYS,
        "server",
        "Returns information about the node and the cluster.",
    ),
    spec(
        "dbsize",
        1,
        R,
        NO_KEYS,
        "server",
        "Returns the number of keys (sum of the shards).",
    ),
    spec(
        "get",
        2,
        R,
        (1, 1, 1),
        "string",
        "Returns the value of a key.",
    ),
    spec(
        "set",
        -3,
        W,
        (1, 1, 1),
        "string",
        "Sets a key's value (NX, XX, GET, KEEPTTL).",
    ),
    spec(
        "setnx",
        3,
        W,
        (1, 1, 1),
        "string",
        "Sets a key's value only when the key is absent.",
    ),
    spec(
        "getset",
        3,
        W,
        (1, 1, 1),
        "string",
        "Sets a key's value and returns the previous one.",
    ),
    spec(
        "getdel",
        2,
        W,
        (1, 1, 1),
        "string",
        "Returns a key's value and deletes the key.",
    ),
    spec(
        "append",
        3,
        W,
        (1, 1, 1),
        "string",
        "Appends to a key's value.",
    ),
    spec(
        "strlen",
        2,
        R,
        (1, 1, 1),
        "string",
        "Returns the length of a key's value.",
    ),
    spec(
        "incr",
        2,
        W,
        (1, 1, 1),
        "string",
        "Increments a decimal integer value by one.",
    ),
    spec(
        "incrby",
        3,
        W,
        (1, 1, 1),
        "string",
        "Increments a decimal integer value.",
    ),
    spec(
        "decr",
        2,
        W,
        (1, 1, 1),
        "string",
        "Decrements a decimal integer value by one.",
    ),
    spec(
        "decrby",
        3,
        W,
        (1, 1, 1),
        "string",
        "Decrements a decimal integer value.",
    ),
    spec(
        "mget",
        -2,
        R,
        (1, -1, 1),
        "string",
        "Returns the values of keys (any shards).",
    ),
    spec(
        "mset",
        -3,
        W,
        (1, -1, 2),
        "string",
        "Sets keys of one hash tag atomically.",
    ),
    spec(
        "msetnx",
        -3,
        W,
        (1, -1, 2),
        "string",
        "Sets keys of one hash tag if none exists.",
    ),
    spec(
        "del",
        -2,
        W,
        (1, -1, 1),
        "generic",
        "Deletes keys (each key on its own).",
    ),
    spec(
        "unlink",
        -2,
        W,
        (1, -1, 1),
        "generic",
        "Deletes keys (same as DEL).",
    ),
    spec(
        "exists",
        -2,
        R,
        (1, -1, 1),
        "generic",
        "Counts the keys that exist.",
    ),
    spec(
        "type",
        2,
        R,
        (1, 1, 1),
        "generic",
        "Returns the type of a key's value.",
    ),
    spec(
        "scan",
        -2,
        R,
        NO_KEYS,
        "generic",
        "Iterates over the key space (MATCH, COUNT).",
    ),
    spec(
        "keys",
        2,
        R,
        NO_KEYS,
        "generic",
        "Returns the keys matching a pattern (bounded).",
    ),
];

pub fn find(name: &[u8]) -> Option<&'static CommandSpec> {
    COMMANDS
        .iter()
        .find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Runs one command and returns its reply.
pub async fn run(context: &RespContext, state: &mut ConnState, args: Vec<Vec<u8>>) -> Reply {
    let Some(spec) = find(&args[0]) else {
        return unknown_command(&args);
    };
    let count = args.len() as i64;
    let arity_ok = if spec.arity >= 0 {
        count == spec.arity
    } else {
        count >= -spec.arity
    };
    if let Some(refusal) = check_access(context, state, spec) {
        return refusal;
    }
    if !arity_ok {
        return wrong_arity(spec.name);
    }
    match spec.group {
        "connection" | "server" => server::run(context, state, spec, &args).await,
        "string" => strings::run(context, state, spec, &args).await,
        _ => keys::run(context, state, spec, &args).await,
    }
}

/// Redis 7's text: the command and its first arguments, quoted, each cut at 128 bytes.
fn unknown_command(args: &[Vec<u8>]) -> Reply {
    let quote = |bytes: &[u8]| {
        let cut = &bytes[..bytes.len().min(128)];
        String::from_utf8_lossy(cut).into_owned()
    };
    let rest: String = args[1..]
        .iter()
        .take(16)
        .map(|a| format!("'{}' ", quote(a)))
        .collect();
    Reply::error(format!(
        "ERR unknown command '{}', with args beginning with: {rest}",
        quote(&args[0])
    ))
}

pub fn wrong_arity(name: &str) -> Reply {
    Reply::error(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

pub fn syntax_error() -> Reply {
    Reply::error("ERR syntax error")
}

pub fn not_an_integer() -> Reply {
    Reply::error("ERR value is not an integer or out of range")
}

/// The Redis error for a failed operation. Error codes: `CLUSTERDOWN` when no quorum or node
/// could be reached (nothing was applied), `TRYAGAIN` when a write's outcome is unknown (it may
/// have been applied: read before retrying a non-idempotent command).
pub fn client_error(error: ClientError) -> Reply {
    match error {
        ClientError::TooLarge(InvalidOp::ValueTooLarge {
            len_bytes,
            max_bytes,
        }) => Reply::error(format!(
            "ERR string exceeds maximum allowed size (value of {len_bytes} bytes, max_value_bytes {max_bytes})"
        )),
        ClientError::TooLarge(invalid) => Reply::error(format!("ERR {invalid}")),
        ClientError::Unknown { reason } => Reply::error(format!(
            "TRYAGAIN outcome unknown, the write may have been applied: {reason}"
        )),
        ClientError::NoQuorum { reason } | ClientError::Unreachable { reason } => {
            Reply::error(format!("CLUSTERDOWN {reason}"))
        }
        ClientError::Failed { reason } => Reply::error(format!("ERR {reason}")),
        ClientError::InvalidArgument(reason) => Reply::error(format!("ERR {reason}")),
        ClientError::Tls(reason) => Reply::error(format!("ERR TLS: {reason}")),
        ClientError::Denied(reason) => Reply::error(format!("NOPERM {reason}")),
    }
}

/// Parses an integer argument as Redis does (`ERR value is not an integer or out of range`).
pub fn integer_arg(arg: &[u8]) -> Result<i64, Reply> {
    crate::kv::string_ops::parse_i64(arg).ok_or_else(not_an_integer)
}

/// Lower-case ASCII of an option argument, for matching.
pub fn option(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).to_ascii_lowercase()
}

//! Connection and server commands: PING, ECHO, HELLO, AUTH, SELECT, QUIT, CLIENT, COMMAND,
//! INFO, DBSIZE.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::{client_error, integer_arg, option, CommandSpec, ConnState, COMMANDS};
use crate::auth::{Credentials, Secret};
use crate::resp::frame::Reply;
use crate::resp::RespContext;

/// The Redis version clients are told (the command set follows Redis 7.0's).
const REDIS_VERSION: &str = "7.0.0";

const NO_AUTH: &str = "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?";

pub async fn run(
    context: &RespContext,
    state: &mut ConnState,
    spec: &CommandSpec,
    args: &[Vec<u8>],
) -> Reply {
    match spec.name {
        "ping" => match args.len() {
            1 => Reply::Simple("PONG".into()),
            2 => Reply::bulk(args[1].clone()),
            _ => super::wrong_arity("ping"),
        },
        "echo" => Reply::bulk(args[1].clone()),
        "hello" => hello(context, state, args).await,
        "auth" => match args.len() {
            2 => auth(context, state, DEFAULT_USER.as_bytes(), &args[1]).await,
            3 => auth(context, state, &args[1], &args[2]).await,
            _ => super::syntax_error(),
        },
        "select" => match integer_arg(&args[1]) {
            Ok(0) => Reply::ok(),
            Ok(_) => Reply::error("ERR DB index is out of range"),
            Err(reply) => reply,
        },
        "quit" => {
            state.quit = true;
            Reply::ok()
        }
        "client" => client(context, state, args),
        "command" => command(args),
        "info" => info(context, state, args).await,
        "dbsize" => match dbsize(state).await {
            Ok(keys) => Reply::Integer(keys),
            Err(reply) => reply,
        },
        other => Reply::error(format!("ERR no server command '{other}'")),
    }
}

/// The user `AUTH password` (one argument) logs in as, as in Redis.
const DEFAULT_USER: &str = "default";
/// Redis's reply to wrong credentials.
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// AUTH [username] password: verified by this node against the replicated users; on success
/// the connection gets a routing client of its own carrying the credentials.
async fn auth(context: &RespContext, state: &mut ConnState, user: &[u8], secret: &[u8]) -> Reply {
    let Some(gate) = &context.auth else {
        return Reply::error(NO_AUTH);
    };
    let (Ok(user), Ok(secret)) = (std::str::from_utf8(user), std::str::from_utf8(secret)) else {
        return Reply::error(WRONGPASS);
    };
    let credentials = Credentials {
        user: user.to_string(),
        secret: Secret::new(secret),
    };
    match gate.authenticate(&credentials, state.peer).await {
        Ok((session, _role)) => {
            state.session = Some(session);
            state.client = context.new_client(Some(credentials));
            state.pooled = false;
            Reply::ok()
        }
        Err(_) => {
            state.session = None;
            Reply::error(WRONGPASS)
        }
    }
}

/// HELLO [protover [AUTH username password] [SETNAME clientname]]
async fn hello(context: &RespContext, state: &mut ConnState, args: &[Vec<u8>]) -> Reply {
    let mut resp3 = state.resp3;
    if let Some(version) = args.get(1) {
        match integer_arg(version) {
            Ok(2) => resp3 = false,
            Ok(3) => resp3 = true,
            Ok(_) => return Reply::error("NOPROTO unsupported protocol version"),
            Err(_) => {
                return Reply::error("ERR Protocol version is not an integer or out of range")
            }
        }
    }
    let mut options = args.iter().skip(2);
    let mut name = None;
    while let Some(arg) = options.next() {
        match option(arg).as_str() {
            "auth" => {
                let (Some(user), Some(secret)) = (options.next(), options.next()) else {
                    return super::syntax_error();
                };
                let reply = auth(context, state, user, secret).await;
                if !matches!(reply, Reply::Simple(_)) {
                    return reply;
                }
            }
            "setname" => match options.next() {
                Some(value) => name = Some(value.clone()),
                None => return super::syntax_error(),
            },
            _ => return super::syntax_error(),
        }
    }
    state.resp3 = resp3;
    if name.is_some() {
        state.name = name;
    }
    let field = |k: &str, v: Reply| (Reply::bulk(k), v);
    Reply::Map(vec![
        field("server", Reply::bulk("redis")),
        field("version", Reply::bulk(REDIS_VERSION)),
        field("proto", Reply::Integer(if resp3 { 3 } else { 2 })),
        field("id", Reply::Integer(context.node_id as i64)),
        field("mode", Reply::bulk("standalone")),
        field("role", Reply::bulk("master")),
        field("modules", Reply::Array(Vec::new())),
    ])
}

/// CLIENT ID | SETNAME name | GETNAME | SETINFO attr value (accepted, ignored).
fn client(context: &RespContext, state: &mut ConnState, args: &[Vec<u8>]) -> Reply {
    match (option(&args[1]).as_str(), args.len()) {
        ("id", 2) => {
            Reply::Integer(context.stats.connections_received.load(Ordering::Relaxed) as i64)
        }
        ("setname", 3) => {
            state.name = Some(args[2].clone());
            Reply::ok()
        }
        ("getname", 2) => Reply::bulk_or_null(state.name.clone()),
        ("setinfo", 4) => Reply::ok(),
        (sub @ ("id" | "setname" | "getname" | "setinfo"), _) => Reply::error(format!(
            "ERR wrong number of arguments for 'client|{sub}' command"
        )),
        (sub, _) => Reply::error(format!("ERR unknown subcommand '{sub}'. Try CLIENT HELP.")),
    }
}

/// COMMAND | COMMAND COUNT | COMMAND DOCS [name...] | COMMAND INFO [name...]
fn command(args: &[Vec<u8>]) -> Reply {
    let Some(sub) = args.get(1) else {
        return Reply::Array(COMMANDS.iter().map(command_info).collect());
    };
    let named = || -> Vec<Option<&'static CommandSpec>> {
        if args.len() > 2 {
            args[2..].iter().map(|n| super::find(n)).collect()
        } else {
            COMMANDS.iter().map(Some).collect()
        }
    };
    match option(sub).as_str() {
        "count" => Reply::Integer(COMMANDS.len() as i64),
        "info" => Reply::Array(
            named()
                .into_iter()
                .map(|spec| spec.map_or(Reply::Null, command_info))
                .collect(),
        ),
        "docs" => Reply::Map(
            named()
                .into_iter()
                .flatten()
                .map(|spec| (Reply::bulk(spec.name), command_docs(spec)))
                .collect(),
        ),
        other => Reply::error(format!(
            "ERR unknown subcommand '{other}'. Try COMMAND HELP."
        )),
    }
}

fn command_info(spec: &CommandSpec) -> Reply {
    let flags = spec
        .flags
        .iter()
        .map(|f| Reply::Simple((*f).into()))
        .collect();
    Reply::Array(vec![
        Reply::bulk(spec.name),
        Reply::Integer(spec.arity),
        Reply::Array(flags),
        Reply::Integer(spec.first_key),
        Reply::Integer(spec.last_key),
        Reply::Integer(spec.key_step),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

fn command_docs(spec: &CommandSpec) -> Reply {
    Reply::Map(vec![
        (Reply::bulk("summary"), Reply::bulk(spec.summary)),
        (Reply::bulk("since"), Reply::bulk("1.0.0")),
        (Reply::bulk("group"), Reply::bulk(spec.group)),
    ])
}

/// Keys in all shards, as each shard's leader reports them (not one atomic count).
async fn dbsize(state: &mut ConnState) -> Result<i64, Reply> {
    let status = state.client.cluster_status().await.map_err(client_error)?;
    Ok(status
        .groups
        .iter()
        .filter(|g| g.shard.is_some())
        .map(|g| g.keys as i64)
        .sum())
}

/// INFO [section ...]: server, clients, replication, keyspace, quorumkv (default: all).
async fn info(context: &RespContext, state: &mut ConnState, args: &[Vec<u8>]) -> Reply {
    let wanted: Vec<String> = args[1..].iter().map(|a| option(a)).collect();
    let all = wanted.is_empty()
        || wanted
            .iter()
            .any(|w| matches!(w.as_str(), "all" | "default" | "everything"));
    let want = |section: &str| all || wanted.iter().any(|w| w == section);
    let mut text = String::new();
    if want("server") {
        let _ = write!(
            text,
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\nquorumkv_version:{}\r\nprocess_id:{}\r\ntcp_port:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            context.redis_addr.port(),
        );
    }
    if want("clients") {
        let stats = &context.stats;
        let _ = write!(
            text,
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n\r\n# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\nprotocol_errors:{}\r\n\r\n",
            stats.connected.load(Ordering::Relaxed),
            context.limits.max_redis_connections,
            stats.connections_received.load(Ordering::Relaxed),
            stats.commands_processed.load(Ordering::Relaxed),
            stats.protocol_errors.load(Ordering::Relaxed),
        );
    }
    if want("replication") {
        text.push_str("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\r\n");
    }
    if want("keyspace") {
        match dbsize(state).await {
            Ok(keys) => {
                let _ = write!(
                    text,
                    "# Keyspace\r\ndb0:keys={keys},expires=0,avg_ttl=0\r\n\r\n"
                );
            }
            Err(reply) => return reply,
        }
    }
    if want("quorumkv") {
        if let Err(reply) = quorumkv_section(context, state, &mut text).await {
            return reply;
        }
    }
    Reply::Bulk(text.into_bytes())
}

/// This node's Raft groups: for each, its role, term and leader.
async fn quorumkv_section(
    context: &RespContext,
    state: &mut ConnState,
    text: &mut String,
) -> Result<(), Reply> {
    let addr = context.endpoints[0];
    let status = state.client.node_status(addr).await.map_err(client_error)?;
    let leading = status
        .groups
        .iter()
        .filter(|g| g.role == crate::raft::Role::Leader)
        .count();
    let _ = write!(
        text,
        "# Quorumkv\r\nnode_id:{}\r\nclient_addr:{}\r\npeer_addr:{}\r\nredis_addr:{}\r\nmembers:{}\r\ngroups_hosted:{}\r\ngroups_leading:{}\r\nkeys_hosted:{}\r\n",
        status.node_id,
        status.client_addr,
        status.peer_addr,
        context.redis_addr,
        status.members.len(),
        status.groups.len(),
        leading,
        status.keys,
    );
    for g in &status.groups {
        let leader = g.leader.map_or("none".to_string(), |l| l.to_string());
        let _ = write!(
            text,
            "group{}:role={:?},term={},leader={},commit_index={},keys={}\r\n",
            g.group, g.role, g.term, leader, g.commit_index, g.keys
        );
    }
    text.push_str("\r\n");
    Ok(())
}

//! Where a node's configuration comes from: flag > environment > file > default.
//!
//! The layers meet as one TOML table: the file's (or an empty one), then every `QUORUMKV_*`
//! variable that names a field, then the flags. Only then are host names in the member list and
//! `join` looked up (`resolve_names`) and the table turned into a `ServerConfig`, which
//! validates it. The variable for a field is its TOML path in upper case with `.` as `_`
//! (`transport.connect_timeout_ms` is `QUORUMKV_TRANSPORT_CONNECT_TIMEOUT_MS`); every field has
//! one (the list comes from the default config, so a new field gets its variable for free). A
//! `QUORUMKV_*` variable that names no field is an error, so a typo is not silently ignored.

use std::collections::BTreeMap;
use std::time::Duration;

use toml::{Table, Value};

use crate::config::{ConfigError, ServerConfig};
use crate::raft::NodeId;

pub const ENV_PREFIX: &str = "QUORUMKV_";

/// Fields that are absent from the default config's table (`None` by default) but settable.
const OPTIONAL_TEXT_FIELDS: [&str; 6] = [
    "listen_peer_addr",
    "listen_client_addr",
    "admin_addr",
    "tls.cert_file",
    "tls.key_file",
    "tls.ca_file",
];

fn bad(field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        problem: problem.into(),
    }
}

/// The kind of value a field holds, taken from the default config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Integer,
    Float,
    Bool,
    Text,
    /// `members`: `ID=PEER,CLIENT` specs separated by `;` or whitespace.
    Members,
    /// `join`: comma-separated `HOST:PORT`s.
    AddressList,
}

/// Every settable field's TOML path, in a stable order.
fn fields() -> Vec<(String, Kind)> {
    let mut out = Vec::new();
    let default = Value::try_from(ServerConfig::default()).unwrap_or(Value::Table(Table::new()));
    if let Value::Table(table) = default {
        collect(&table, "", &mut out);
    }
    out.extend(
        OPTIONAL_TEXT_FIELDS
            .iter()
            .map(|f| (f.to_string(), Kind::Text)),
    );
    out
}

fn collect(table: &Table, prefix: &str, out: &mut Vec<(String, Kind)>) {
    for (key, value) in table {
        let path = format!("{prefix}{key}");
        let kind = match (path.as_str(), value) {
            ("members", _) => Kind::Members,
            ("join", _) => Kind::AddressList,
            (_, Value::Table(inner)) => {
                collect(inner, &format!("{path}."), out);
                continue;
            }
            (_, Value::Integer(_)) => Kind::Integer,
            (_, Value::Float(_)) => Kind::Float,
            (_, Value::Boolean(_)) => Kind::Bool,
            _ => Kind::Text,
        };
        out.push((path, kind));
    }
}

/// The environment variable that sets the field at `path`.
pub fn env_name(path: &str) -> String {
    format!("{ENV_PREFIX}{}", path.replace('.', "_").to_uppercase())
}

/// Every field's variable, for documentation and `--help`.
pub fn env_names() -> Vec<String> {
    fields().iter().map(|(path, _)| env_name(path)).collect()
}

/// Applies the `QUORUMKV_*` variables among `vars` to `table`. Variables in `not_fields`
/// belong to something else (the CLI's `QUORUMKV_ENDPOINTS`, `QUORUMKV_LOG`) and are skipped.
pub fn apply_env(
    table: &mut Table,
    vars: impl IntoIterator<Item = (String, String)>,
    not_fields: &[&str],
) -> Result<(), ConfigError> {
    let fields = fields();
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) && !not_fields.contains(&name.as_str()))
        .collect();
    vars.sort();
    for (name, text) in vars {
        let Some((path, kind)) = fields.iter().find(|(path, _)| env_name(path) == name) else {
            return Err(bad(
                &name,
                "names no config field (see the README's list of QUORUMKV_* variables)",
            ));
        };
        let value = parse(*kind, &text).map_err(|e| bad(&name, e))?;
        set(table, path, value);
    }
    Ok(())
}

fn parse(kind: Kind, text: &str) -> Result<Value, String> {
    let text = text.trim();
    Ok(match kind {
        Kind::Integer => Value::Integer(text.parse().map_err(|e| format!("{text:?}: {e}"))?),
        Kind::Float => Value::Float(text.parse().map_err(|e| format!("{text:?}: {e}"))?),
        Kind::Bool => Value::Boolean(text.parse().map_err(|e| format!("{text:?}: {e}"))?),
        Kind::Text => Value::String(text.to_string()),
        Kind::AddressList => Value::Array(
            text.split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| Value::String(s.trim().to_string()))
                .collect(),
        ),
        Kind::Members => Value::Array(
            text.split(|c: char| c == ';' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .map(|spec| parse_member_spec(spec).map(Value::Table))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// Sets the field at a dotted `path`, creating the tables on the way.
pub fn set(table: &mut Table, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            table.insert(path.to_string(), value);
        }
        Some((head, rest)) => {
            let inner = table
                .entry(head.to_string())
                .or_insert_with(|| Value::Table(Table::new()));
            if !inner.is_table() {
                *inner = Value::Table(Table::new());
            }
            if let Value::Table(inner) = inner {
                set(inner, rest, value);
            }
        }
    }
}

/// `ID=PEER,CLIENT` (as `--member` and `QUORUMKV_MEMBERS` give it) as a `[[members]]` table;
/// the addresses may be host names (looked up by `resolve_names`).
pub fn parse_member_spec(spec: &str) -> Result<Table, String> {
    let usage = "expected ID=PEER_HOST:PORT,CLIENT_HOST:PORT";
    let (id, addrs) = spec.split_once('=').ok_or(usage)?;
    let (peer, client) = addrs.split_once(',').ok_or(usage)?;
    let id: i64 = id
        .trim()
        .parse()
        .map_err(|e| format!("node id {id:?}: {e}"))?;
    crate::addr::check_syntax(peer).map_err(|e| format!("peer address {e}"))?;
    crate::addr::check_syntax(client).map_err(|e| format!("client address {e}"))?;
    let mut table = Table::new();
    table.insert("id".into(), Value::Integer(id));
    table.insert("peer_addr".into(), Value::String(peer.trim().into()));
    table.insert("client_addr".into(), Value::String(client.trim().into()));
    Ok(table)
}

/// Looks up the host names in `members` and `join`, each within `wait` (at a cluster's first
/// start the other containers may not exist yet). A member's peer name is kept in `peer_host`
/// (returned by node id, for `ServerConfig::peer_names`) so that the transport looks it up again
/// on reconnect.
pub async fn resolve_names(
    table: &mut Table,
    wait: Duration,
) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    let mut names = BTreeMap::new();
    if let Some(Value::Array(members)) = table.get_mut("members") {
        for member in members.iter_mut() {
            let Value::Table(member) = member else {
                continue;
            };
            for field in ["peer_addr", "client_addr"] {
                let Some(Value::String(spec)) = member.get(field).cloned() else {
                    continue;
                };
                if crate::addr::literal(&spec).is_some() {
                    continue;
                }
                let addr = crate::addr::resolve_within(&spec, wait)
                    .await
                    .map_err(|e| bad(&format!("members.{field}"), e.to_string()))?;
                member.insert(field.into(), Value::String(addr.to_string()));
                let id = member.get("id").and_then(Value::as_integer);
                if let (Some(id), "peer_addr") = (id, field) {
                    names.insert(id as NodeId, spec);
                }
            }
        }
    }
    if let Some(Value::Array(join)) = table.get_mut("join") {
        for entry in join.iter_mut() {
            let Value::String(spec) = entry else { continue };
            let addr = crate::addr::resolve_within(spec, wait)
                .await
                .map_err(|e| bad("join", e.to_string()))?;
            *entry = Value::String(addr.to_string());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_field_has_a_distinct_variable() {
        let names = env_names();
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for expected in [
            "QUORUMKV_NODE_ID",
            "QUORUMKV_MEMBERS",
            "QUORUMKV_JOIN",
            "QUORUMKV_DATA_DIR",
            "QUORUMKV_LISTEN_CLIENT_ADDR",
            "QUORUMKV_ADMIN_ADDR",
            "QUORUMKV_CLUSTER_LOAD_FACTOR",
            "QUORUMKV_LIMITS_MAX_VALUE_BYTES",
            "QUORUMKV_TRANSPORT_CONNECT_TIMEOUT_MS",
            "QUORUMKV_TLS_CERT_FILE",
            "QUORUMKV_TLS_KEY_FILE",
            "QUORUMKV_TLS_CA_FILE",
            "QUORUMKV_TLS_CLIENT_CERT_REQUIRED",
        ] {
            assert!(names.iter().any(|n| n == expected), "{expected} missing");
        }
    }

    /// Each scalar field set through its variable ends up in the config with that value.
    #[test]
    fn every_scalar_field_is_settable_from_the_environment() {
        for (path, kind) in fields() {
            let (text, expected) = match kind {
                Kind::Integer => ("7", Value::Integer(7)),
                Kind::Float => ("1.5", Value::Float(1.5)),
                Kind::Bool => ("true", Value::Boolean(true)),
                Kind::Text => ("10.1.2.3:9", Value::String("10.1.2.3:9".into())),
                Kind::Members | Kind::AddressList => continue,
            };
            let mut table = Table::new();
            apply_env(&mut table, vars(&[(&env_name(&path), text)]), &[]).unwrap();
            let mut at = &Value::Table(table);
            for part in path.split('.') {
                at = &at[part];
            }
            assert_eq!(at, &expected, "{path}");
        }
    }

    #[test]
    fn env_overrides_file_and_builds_a_config() {
        let mut table: Table =
            toml::from_str("node_id = 9\nseed = 5\n[transport]\nconnect_timeout_ms = 10\n")
                .unwrap();
        apply_env(
            &mut table,
            vars(&[
                ("QUORUMKV_NODE_ID", "2"),
                (
                    "QUORUMKV_MEMBERS",
                    "1=127.0.0.1:1,127.0.0.1:2; 2=127.0.0.1:3,127.0.0.1:4",
                ),
                ("QUORUMKV_TRANSPORT_CONNECT_TIMEOUT_MS", "300"),
                ("QUORUMKV_LISTEN_CLIENT_ADDR", "0.0.0.0:4"),
                ("QUORUMKV_ENDPOINTS", "ignored"),
                ("OTHER", "ignored"),
            ]),
            &["QUORUMKV_ENDPOINTS"],
        )
        .unwrap();
        let config = ServerConfig::from_table(table).unwrap();
        config.validate().unwrap();
        assert_eq!(config.node_id, 2);
        assert_eq!(config.seed, 5, "a file value no variable names stays");
        assert_eq!(config.transport.connect_timeout_ms, 300);
        assert_eq!(config.members.len(), 2);
        assert_eq!(config.members[1].client_addr.port(), 4);
        assert_eq!(
            config.client_listen_addr(),
            Some("0.0.0.0:4".parse().unwrap())
        );
    }

    #[test]
    fn bad_variables_name_themselves() {
        let mut table = Table::new();
        let err = apply_env(&mut table, vars(&[("QUORUMKV_NODE_IDD", "1")]), &[]).unwrap_err();
        assert_eq!(err.field, "QUORUMKV_NODE_IDD");
        let err = apply_env(&mut table, vars(&[("QUORUMKV_SEED", "x")]), &[]).unwrap_err();
        assert_eq!(err.field, "QUORUMKV_SEED");
        let err = apply_env(&mut table, vars(&[("QUORUMKV_MEMBERS", "1=a:1")]), &[]).unwrap_err();
        assert_eq!(err.field, "QUORUMKV_MEMBERS");
    }

    /// A file's member list may name hosts too: its table is merged first, looked up after.
    #[tokio::test]
    async fn a_file_with_host_names_loads() {
        let mut table: Table = toml::from_str(
            "node_id = 1\n[[members]]\nid = 1\npeer_addr = \"localhost:7380\"\nclient_addr = \"localhost:7379\"\n",
        )
        .unwrap();
        let names = resolve_names(&mut table, Duration::from_millis(100))
            .await
            .unwrap();
        let config = ServerConfig::from_table(table).unwrap();
        config.validate().unwrap();
        assert_eq!(names.len(), 1);
        assert!(config.members[0].client_addr.ip().is_loopback());
    }

    #[tokio::test]
    async fn names_resolve_and_the_peer_name_is_kept() {
        let mut table = Table::new();
        apply_env(
            &mut table,
            vars(&[
                ("QUORUMKV_MEMBERS", "1=localhost:7380,localhost:7379"),
                ("QUORUMKV_JOIN", "localhost:7000"),
            ]),
            &[],
        )
        .unwrap();
        table.insert("join".into(), Value::Array(vec![]));
        let names = resolve_names(&mut table, Duration::from_millis(100))
            .await
            .unwrap();
        let config = ServerConfig::from_table(table).unwrap();
        let me = &config.members[0];
        assert!(me.peer_addr.ip().is_loopback() && me.peer_addr.port() == 7380);
        assert_eq!(names.get(&1).map(String::as_str), Some("localhost:7380"));
        assert!(me.client_addr.ip().is_loopback());
    }
}

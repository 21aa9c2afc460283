//! `quorumkv user add|list|remove|set-role|passwd`: user management (admin credentials needed
//! when auth is enabled). A new secret goes to the node that receives the request, which hashes
//! it; it is printed only when the CLI generated it (`--token`), once.

use clap::{Args, Subcommand, ValueEnum};
use node::auth::{Role, Secret, SecretKind};
use node::client::protocol::UserRequest;
use node::client::{Client, ClientError};
use node::meta::MetaResult;
use rand::Rng;
use serde_json::json;

use crate::cli::{client_command_pub, read_secret_file, ConnArgs, EXIT_NO, EXIT_OK, EXIT_USAGE};
use crate::output::out;

/// Bytes of randomness in a generated token (printed as hex).
const TOKEN_BYTES: usize = 32;

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user with a role and a password (or a generated token, printed once).
    Add {
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        #[command(flatten)]
        secret: NewSecretArgs,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// List the users: name, role, password or token (never a secret).
    List {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Remove a user (its open connections are refused from then on).
    Remove {
        name: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Change a user's role.
    SetRole {
        name: String,
        #[arg(value_enum)]
        role: RoleArg,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Replace a user's password or token.
    Passwd {
        name: String,
        #[command(flatten)]
        secret: NewSecretArgs,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Read,
    Write,
    Admin,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::Read => Role::Read,
            RoleArg::Write => Role::Write,
            RoleArg::Admin => Role::Admin,
        }
    }
}

/// The new user's secret: exactly one source.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct NewSecretArgs {
    /// The new password (prefer QUORUMKV_NEW_PASSWORD or --new-password-file).
    #[arg(long, env = "QUORUMKV_NEW_PASSWORD", hide_env_values = true)]
    new_password: Option<String>,
    /// File whose first line is the new password.
    #[arg(long)]
    new_password_file: Option<std::path::PathBuf>,
    /// Generate a random token instead (printed once; store it, it cannot be shown again).
    #[arg(long)]
    token: bool,
}

impl NewSecretArgs {
    /// The secret, its kind, and whether to print it (generated tokens only).
    fn resolve(&self) -> Result<(Secret, SecretKind, bool), ClientError> {
        if self.token {
            let bytes: [u8; TOKEN_BYTES] = rand::rng().random();
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            return Ok((Secret::new(hex), SecretKind::Token, true));
        }
        if let Some(text) = &self.new_password {
            return Ok((Secret::new(text.clone()), SecretKind::Password, false));
        }
        if let Some(path) = &self.new_password_file {
            return Ok((read_secret_file(path)?, SecretKind::Password, false));
        }
        Err(ClientError::InvalidArgument(
            "give --new-password, --new-password-file or --token".into(),
        ))
    }
}

pub async fn run(command: UserCommand) -> u8 {
    match command {
        UserCommand::Add {
            name,
            role,
            secret,
            conn,
        } => {
            let (secret, kind, show) = match secret.resolve() {
                Ok(resolved) => resolved,
                Err(e) => return crate::cli::report(e),
            };
            let shown = show.then(|| secret.expose().to_string());
            let request = UserRequest::Add {
                name: name.clone(),
                role: role.into(),
                kind,
                secret,
            };
            let json = conn.json;
            client_command_pub(&conn, move |c| {
                Box::pin(change(c, request, name, "added", shown, json))
            })
            .await
        }
        UserCommand::List { conn } => {
            let json = conn.json;
            client_command_pub(&conn, move |c| Box::pin(list(c, json))).await
        }
        UserCommand::Remove { name, conn } => {
            let request = UserRequest::Remove { name: name.clone() };
            let json = conn.json;
            client_command_pub(&conn, move |c| {
                Box::pin(change(c, request, name, "removed", None, json))
            })
            .await
        }
        UserCommand::SetRole { name, role, conn } => {
            let request = UserRequest::SetRole {
                name: name.clone(),
                role: role.into(),
            };
            let json = conn.json;
            client_command_pub(&conn, move |c| {
                Box::pin(change(c, request, name, "changed", None, json))
            })
            .await
        }
        UserCommand::Passwd { name, secret, conn } => {
            let (secret, kind, show) = match secret.resolve() {
                Ok(resolved) => resolved,
                Err(e) => return crate::cli::report(e),
            };
            let shown = show.then(|| secret.expose().to_string());
            let request = UserRequest::SetSecret {
                name: name.clone(),
                kind,
                secret,
            };
            let json = conn.json;
            client_command_pub(&conn, move |c| {
                Box::pin(change(c, request, name, "changed", shown, json))
            })
            .await
        }
    }
}

/// Sends one change; exit 1 with the cluster's reason when it is rejected.
async fn change(
    client: &mut Client,
    request: UserRequest,
    name: String,
    done: &str,
    token: Option<String>,
    json: bool,
) -> Result<u8, ClientError> {
    match client.manage_user(request).await? {
        MetaResult::Applied { .. } => {
            if json {
                out!("{}", json!({"user": name, "result": done, "token": token}));
            } else {
                out!("user {name} {done}");
                if let Some(token) = token {
                    out!("token (shown once): {token}");
                }
            }
            Ok(EXIT_OK)
        }
        MetaResult::Rejected { reason } => {
            eprintln!("error: refused: {reason}");
            Ok(
                if reason.contains("a password or token has") || reason.contains("user name") {
                    EXIT_USAGE
                } else {
                    EXIT_NO
                },
            )
        }
    }
}

async fn list(client: &mut Client, json: bool) -> Result<u8, ClientError> {
    let users = client.list_users().await?;
    let kind = |k: SecretKind| match k {
        SecretKind::Password => "password",
        SecretKind::Token => "token",
    };
    if json {
        let items: Vec<_> = users
            .iter()
            .map(|u| json!({"name": u.name, "role": u.role.name(), "secret": kind(u.kind)}))
            .collect();
        out!("{}", json!({ "users": items }));
    } else {
        out!("{:<24} {:<6} secret", "user", "role");
        for u in &users {
            out!("{:<24} {:<6} {}", u.name, u.role.name(), kind(u.kind));
        }
    }
    Ok(EXIT_OK)
}

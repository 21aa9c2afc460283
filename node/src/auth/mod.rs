//! Users, roles and secrets (issue 16 part 2).
//!
//! Why this module exists: with `auth.enabled` every request a node receives is checked against
//! the user table of the replicated metadata (`meta::MetaState::users`) before it reaches the
//! event loop, so a denied request is never proposed and changes nothing. This file holds the
//! vocabulary (roles, user records, credentials) and the argon2id hashing; `gate` holds what a
//! client-port connection keeps (who authenticated, the limits on login attempts).
//!
//! Invariants:
//! - a secret (password or token) exists only in the request that carries it and in the
//!   caller's memory; the replicated state, the logs and every `Debug` output hold at most its
//!   salted argon2id hash (`SecretHash`, whose `Debug` is redacted too);
//! - a hash is made by the node that receives the request, with a salt drawn from `rand::rng()`
//!   (rand 0.9: deterministic under madsim), so every replica applies the same bytes;
//! - roles are ordered `Read < Write < Admin`: a role allows everything a lower one does.
pub mod gate;

use std::fmt;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::Rng;
use serde::{Deserialize, Serialize};

#[cfg(test)]
use crate::client::protocol::UserRequest;
use crate::client::protocol::{BackupRequest, ClientRequest};
use crate::kv::Command;
#[cfg(test)]
use crate::kv::Operation;

/// Longest user name, in bytes.
pub const MAX_USER_NAME_BYTES: usize = 64;
/// Longest secret (password or token) accepted, in bytes (argon2 takes any length; this bounds
/// the work an attacker can ask for).
pub const MAX_SECRET_BYTES: usize = 1024;
/// Shortest secret accepted when a user is created or changes it, in bytes.
pub const MIN_SECRET_BYTES: usize = 8;
/// Most users a cluster may have.
pub const MAX_USERS: usize = 1024;
/// Longest stored hash (a PHC string), in bytes.
pub const MAX_SECRET_HASH_BYTES: usize = 256;
/// Salt length, in bytes (argon2 recommends 16).
const SALT_BYTES: usize = 16;

/// What a user may do. Ordered: each role allows everything a lower one does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Get, scan, status and cluster information.
    Read,
    /// Read, plus every write (put, delete, cas, ...).
    Write,
    /// Write, plus membership changes (join, leave), backup and restore, user management.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a user's secret was chosen by a person or generated (`user add --token`). Both are
/// stored and checked alike; the kind is shown by `user list`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecretKind {
    Password,
    Token,
}

/// A salted argon2id hash in PHC string form (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
/// Not a secret by itself, but never shown: `Debug` prints only that it exists.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretHash(String);

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(<redacted>)")
    }
}

impl SecretHash {
    /// Checks the form (the command may come from any client): an argon2id PHC string within
    /// `MAX_SECRET_HASH_BYTES`.
    pub fn parse(phc: String) -> Result<SecretHash, String> {
        if phc.len() > MAX_SECRET_HASH_BYTES {
            return Err(format!(
                "secret hash of {} bytes exceeds {MAX_SECRET_HASH_BYTES}",
                phc.len()
            ));
        }
        let parsed = PasswordHash::new(&phc).map_err(|e| format!("not a PHC hash: {e}"))?;
        if parsed.algorithm.as_str() != "argon2id" || parsed.salt.is_none() {
            return Err("only salted argon2id hashes are stored".into());
        }
        Ok(SecretHash(phc))
    }

    pub fn as_phc(&self) -> &str {
        &self.0
    }
}

/// A secret as it travels from the caller to the node that checks it. `Debug` is redacted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A user name and its secret: what a client presents once per connection.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub user: String,
    pub secret: Secret,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("secret", &self.secret)
            .finish()
    }
}

/// One user as the metadata stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub kind: SecretKind,
    pub secret_hash: SecretHash,
}

/// What `user list` shows of a user: never the secret nor its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub name: String,
    pub role: Role,
    pub kind: SecretKind,
}

impl From<&User> for UserInfo {
    fn from(user: &User) -> UserInfo {
        UserInfo {
            name: user.name.clone(),
            role: user.role,
            kind: user.kind,
        }
    }
}

/// 1 to `MAX_USER_NAME_BYTES` of ASCII letters, digits and `_ . @ -`.
pub fn validate_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_USER_NAME_BYTES {
        return Err(format!(
            "a user name has 1 to {MAX_USER_NAME_BYTES} characters"
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-');
    if !name.chars().all(allowed) {
        return Err(format!(
            "user name {name:?}: only letters, digits and _ . @ - are allowed"
        ));
    }
    Ok(())
}

/// A new secret must be `MIN_SECRET_BYTES` to `MAX_SECRET_BYTES` long.
pub fn validate_new_secret(secret: &Secret) -> Result<(), String> {
    let len = secret.expose().len();
    if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&len) {
        return Err(format!(
            "a password or token has {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes"
        ));
    }
    Ok(())
}

/// Salted argon2id hash of `secret` (argon2's default cost: 19 MiB, 2 passes, 1 lane). Costs
/// tens of milliseconds of CPU: call it off the event loop (`gate::off_loop`). The salt comes
/// from `rng` (nodes pass `rand::rng()`, deterministic under madsim).
pub fn hash_secret(secret: &Secret, rng: &mut impl Rng) -> Result<SecretHash, String> {
    let mut salt = [0u8; SALT_BYTES];
    rng.fill(&mut salt[..]);
    let salt = SaltString::encode_b64(&salt).map_err(|e| format!("salt: {e}"))?;
    let hash = Argon2::default()
        .hash_password(secret.expose().as_bytes(), &salt)
        .map_err(|e| format!("hashing: {e}"))?;
    Ok(SecretHash(hash.to_string()))
}

/// True when `secret` matches `hash` (constant time in the hash comparison; the cost is the
/// hash's own parameters).
pub fn verify_secret(secret: &Secret, hash: &SecretHash) -> bool {
    let Ok(parsed) = PasswordHash::new(hash.as_phc()) else {
        return false;
    };
    Argon2::default()
        .verify_password(secret.expose().as_bytes(), &parsed)
        .is_ok()
}

/// The role a request needs; `None`: none at all (authenticating).
pub fn required_role(request: &ClientRequest) -> Option<Role> {
    match request {
        ClientRequest::Authenticate(_) => None,
        ClientRequest::Status | ClientRequest::ClusterInfo => Some(Role::Read),
        ClientRequest::Execute { command, .. } => Some(command_role(command)),
        ClientRequest::Admin(_) | ClientRequest::User(_) => Some(Role::Admin),
        ClientRequest::Backup(
            BackupRequest::Open { .. } | BackupRequest::Next { .. } | BackupRequest::Close { .. },
        ) => Some(Role::Admin),
    }
}

/// Reads need `Read`; everything that may change state (writes, session opening) `Write`.
fn command_role(command: &Command) -> Role {
    if command.op.is_read() {
        Role::Read
    } else {
        Role::Write
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn a_hash_verifies_its_secret_only_and_is_salted() {
        let secret = Secret::new("correct horse");
        let mut rng = rng();
        let a = hash_secret(&secret, &mut rng).unwrap();
        let b = hash_secret(&secret, &mut rng).unwrap();
        assert_ne!(a, b, "two hashes of one secret differ by their salt");
        assert!(a.as_phc().starts_with("$argon2id$"));
        assert!(!a.as_phc().contains("correct horse"));
        assert!(verify_secret(&secret, &a) && verify_secret(&secret, &b));
        assert!(!verify_secret(&Secret::new("correct horsf"), &a));
        assert!(!verify_secret(&Secret::new(""), &a));
        assert_eq!(SecretHash::parse(a.as_phc().to_string()).unwrap(), a);
    }

    #[test]
    fn the_same_seed_gives_the_same_hash() {
        let secret = Secret::new("deterministic");
        let a = hash_secret(&secret, &mut rng()).unwrap();
        let b = hash_secret(&secret, &mut rng()).unwrap();
        assert_eq!(a, b, "salts come from the RNG given, not the OS");
    }

    #[test]
    fn malformed_hashes_are_refused() {
        assert!(SecretHash::parse("plaintext".into()).is_err());
        assert!(SecretHash::parse("$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into()).is_err());
        assert!(SecretHash::parse("x".repeat(MAX_SECRET_HASH_BYTES + 1)).is_err());
        let garbage = SecretHash("not a hash".into());
        assert!(!verify_secret(&Secret::new("anything"), &garbage));
    }

    #[test]
    fn debug_output_never_shows_secrets_or_hashes() {
        let creds = Credentials {
            user: "alice".into(),
            secret: Secret::new("hunter2hunter2"),
        };
        let hash = hash_secret(&creds.secret, &mut rng()).unwrap();
        let user = User {
            name: "alice".into(),
            role: Role::Write,
            kind: SecretKind::Password,
            secret_hash: hash.clone(),
        };
        let shown = format!(
            "{creds:?} {user:?} {:?}",
            ClientRequest::Authenticate(creds.clone())
        );
        assert!(shown.contains("alice"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains(hash.as_phc()), "{shown}");
    }

    #[test]
    fn roles_are_ordered_and_requests_need_the_right_one() {
        assert!(Role::Read < Role::Write && Role::Write < Role::Admin);
        let get = ClientRequest::Execute {
            shard: 0,
            command: Command {
                client_id: 0,
                seq: 0,
                op: Operation::Get { key: b"k".to_vec() },
            },
        };
        let put = ClientRequest::Execute {
            shard: 0,
            command: Command {
                client_id: 1,
                seq: 2,
                op: Operation::Put {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                },
            },
        };
        assert_eq!(required_role(&get), Some(Role::Read));
        assert_eq!(required_role(&put), Some(Role::Write));
        assert_eq!(required_role(&ClientRequest::Status), Some(Role::Read));
        assert_eq!(
            required_role(&ClientRequest::Admin(crate::meta::MetaCommand::Leave(2))),
            Some(Role::Admin)
        );
        assert_eq!(
            required_role(&ClientRequest::User(UserRequest::List)),
            Some(Role::Admin)
        );
    }

    #[test]
    fn names_and_new_secrets_are_checked() {
        assert!(validate_user_name("alice.b-1@x_y").is_ok());
        assert!(validate_user_name("").is_err());
        assert!(validate_user_name("a b").is_err());
        assert!(validate_user_name(&"a".repeat(MAX_USER_NAME_BYTES + 1)).is_err());
        assert!(validate_new_secret(&Secret::new("short")).is_err());
        assert!(validate_new_secret(&Secret::new("long enough")).is_ok());
    }
}

//! The check every port makes before a request reaches the event loop.
//!
//! A connection authenticates once (`ClientRequest::Authenticate` on the client port, `AUTH`
//! on the Redis port); the gate verifies the secret against the user table of the metadata this
//! node applied (published by the event loop through a `watch` channel) and the connection keeps
//! a `Session`: the user's name and the hash it was verified against. Before each request the
//! session is looked up again in the current table, so removing a user, changing its role or its
//! secret takes effect on open connections at this node's next applied metadata entry.
//!
//! Cost and abuse: argon2 verification takes tens of milliseconds of CPU, so it runs off the
//! async workers (`off_loop`), at most `MAX_CONCURRENT_VERIFICATIONS` at a time per node; an
//! unknown user is verified against a dummy hash (same cost as a known one, so timing does not
//! tell which names exist); a failed login is answered only after `FAILED_LOGIN_DELAY_MS` and
//! logged with the user name and the client address, never the secret.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

use super::{hash_secret, verify_secret, Credentials, Role, Secret, SecretHash, User};

/// Argon2 verifications running at once on one node (each holds ~19 MiB and a core).
pub const MAX_CONCURRENT_VERIFICATIONS: usize = 2;
/// A failed login is answered after this long (and the client port then closes the
/// connection): bounds guessing to one try per connection per this many milliseconds.
pub const FAILED_LOGIN_DELAY_MS: u64 = 1_000;

/// The users as this node applied them, by name.
pub type UserTable = Arc<BTreeMap<String, User>>;

/// What a connection remembers after a successful login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    /// The hash the secret was verified against: a changed secret ends the session.
    verified: SecretHash,
}

/// Why a request is not served. Display texts are what clients see.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Denied {
    #[error("authentication required: this node has auth enabled (give --user and --password)")]
    Unauthenticated,
    #[error("user {user:?} no longer exists or its secret changed: authenticate again")]
    SessionEnded { user: String },
    #[error("invalid user name or password")]
    WrongCredentials,
    #[error("user {user:?} has role {role}; this request needs {need}")]
    PermissionDenied {
        user: String,
        role: Role,
        need: Role,
    },
}

/// Shared by every connection of one node (client and Redis ports).
pub struct AuthGate {
    users: watch::Receiver<UserTable>,
    verifications: Semaphore,
    /// Verified when the user is unknown, so that an unknown name costs what a known one does.
    dummy_hash: SecretHash,
    failed_login_delay: Duration,
}

impl AuthGate {
    pub fn new(users: watch::Receiver<UserTable>) -> AuthGate {
        let dummy_hash = hash_secret(&Secret::new("no such user"), &mut rand::rng())
            .expect("hashing a constant with a fresh salt cannot fail");
        AuthGate {
            users,
            verifications: Semaphore::new(MAX_CONCURRENT_VERIFICATIONS),
            dummy_hash,
            failed_login_delay: Duration::from_millis(FAILED_LOGIN_DELAY_MS),
        }
    }

    /// The current table (as this node applied it).
    pub fn users(&self) -> UserTable {
        self.users.borrow().clone()
    }

    /// Verifies `credentials`; on failure waits `FAILED_LOGIN_DELAY_MS` first.
    pub async fn authenticate(
        &self,
        credentials: &Credentials,
        peer: SocketAddr,
    ) -> Result<(Session, Role), Denied> {
        let user = self.users().get(&credentials.user).cloned();
        let hash = user
            .as_ref()
            .map_or(self.dummy_hash.clone(), |u| u.secret_hash.clone());
        let secret = credentials.secret.clone();
        let matched = {
            let _permit = self.verifications.acquire().await;
            off_loop(move || verify_secret(&secret, &hash)).await
        };
        match user {
            Some(user) if matched => {
                info!(user = %user.name, role = %user.role, %peer, "authenticated");
                let session = Session {
                    user: user.name,
                    verified: user.secret_hash,
                };
                Ok((session, user.role))
            }
            _ => {
                warn!(user = %credentials.user, %peer, "failed login (unknown user or wrong secret)");
                tokio::time::sleep(self.failed_login_delay).await;
                Err(Denied::WrongCredentials)
            }
        }
    }

    /// Whether the session (if any) may make a request that needs `need`, by the current table.
    pub fn authorize(&self, session: Option<&Session>, need: Role) -> Result<Role, Denied> {
        let Some(session) = session else {
            return Err(Denied::Unauthenticated);
        };
        let users = self.users.borrow();
        let Some(user) = users
            .get(&session.user)
            .filter(|u| u.secret_hash == session.verified)
        else {
            return Err(Denied::SessionEnded {
                user: session.user.clone(),
            });
        };
        if user.role < need {
            return Err(Denied::PermissionDenied {
                user: user.name.clone(),
                role: user.role,
                need,
            });
        }
        Ok(user.role)
    }
}

/// Runs CPU-heavy work (argon2) where it cannot stall the event loop or the connection tasks:
/// tokio's blocking pool in real builds; inline in simulation (madsim runs one task at a time
/// and has no blocking pool; hashing costs no simulated time).
pub async fn off_loop<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    #[cfg(not(madsim))]
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // The blocking pool runs the closure to the end even if this future is dropped.
        drop(tokio::task::spawn_blocking(move || {
            let _ = tx.send(work());
        }));
        rx.await
            .expect("spawn_blocking runs every closure it accepted to completion")
    }
    #[cfg(madsim)]
    {
        work()
    }
}

/// Hashes a new secret off the event loop, with a salt from `rand::rng()` (deterministic under
/// madsim).
pub async fn hash_off_loop(secret: Secret) -> Result<SecretHash, String> {
    off_loop(move || hash_secret(&secret, &mut rand::rng())).await
}

#[cfg(test)]
mod tests {
    use super::super::SecretKind;
    use super::*;

    fn table(users: &[(&str, Role, &str)]) -> UserTable {
        let mut rng = rand::rng();
        Arc::new(
            users
                .iter()
                .map(|(name, role, secret)| {
                    let user = User {
                        name: name.to_string(),
                        role: *role,
                        kind: SecretKind::Password,
                        secret_hash: hash_secret(&Secret::new(*secret), &mut rng).unwrap(),
                    };
                    (name.to_string(), user)
                })
                .collect(),
        )
    }

    fn creds(user: &str, secret: &str) -> Credentials {
        Credentials {
            user: user.into(),
            secret: Secret::new(secret),
        }
    }

    #[tokio::test]
    async fn logins_roles_and_ended_sessions() {
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (tx, rx) = watch::channel(table(&[
            ("reader", Role::Read, "reader-secret"),
            ("writer", Role::Write, "writer-secret"),
        ]));
        let mut gate = AuthGate::new(rx);
        gate.failed_login_delay = Duration::from_millis(1);
        assert_eq!(
            gate.authorize(None, Role::Read),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            gate.authenticate(&creds("reader", "wrong"), peer).await,
            Err(Denied::WrongCredentials)
        );
        assert_eq!(
            gate.authenticate(&creds("nobody", "reader-secret"), peer)
                .await,
            Err(Denied::WrongCredentials)
        );
        let (reader, role) = gate
            .authenticate(&creds("reader", "reader-secret"), peer)
            .await
            .unwrap();
        assert_eq!(role, Role::Read);
        assert_eq!(gate.authorize(Some(&reader), Role::Read), Ok(Role::Read));
        assert!(matches!(
            gate.authorize(Some(&reader), Role::Write),
            Err(Denied::PermissionDenied {
                need: Role::Write,
                ..
            })
        ));
        let (writer, _) = gate
            .authenticate(&creds("writer", "writer-secret"), peer)
            .await
            .unwrap();
        assert_eq!(gate.authorize(Some(&writer), Role::Write), Ok(Role::Write));
        assert!(gate.authorize(Some(&writer), Role::Admin).is_err());
        // The reader is removed and the writer's secret changes: both sessions end.
        tx.send(table(&[("writer", Role::Write, "new-writer-secret")]))
            .unwrap();
        assert!(matches!(
            gate.authorize(Some(&reader), Role::Read),
            Err(Denied::SessionEnded { .. })
        ));
        assert!(matches!(
            gate.authorize(Some(&writer), Role::Read),
            Err(Denied::SessionEnded { .. })
        ));
    }
}

//! Addresses given as `HOST:PORT`, where HOST is an IP literal or a DNS name.
//!
//! Inside the node every address is a `SocketAddr`; names exist only where an operator writes
//! addresses (flags, environment, TOML, CLI endpoints) and in the peer transport, which looks a
//! member's name up again before each connect so that a peer that came back at a new address
//! (a restarted container) is found. Lookups go through `tokio::net::lookup_host`, which the
//! simulator replaces, so node code never calls the OS resolver directly.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::{sleep, timeout, Instant};

/// One lookup gives up after this long (a resolver that does not answer is a failure).
pub const LOOKUP_TIMEOUT_MS: u64 = 2_000;
/// Pause between lookups of a name that does not resolve yet (a container not started yet).
pub const LOOKUP_RETRY_MS: u64 = 250;

/// `HOST:PORT` with an IP literal, if it is one.
pub fn literal(spec: &str) -> Option<SocketAddr> {
    spec.trim().parse().ok()
}

/// Whether `spec` looks like `HOST:PORT` (a name or a literal; `[v6]:port` included).
pub fn check_syntax(spec: &str) -> Result<(), String> {
    let spec = spec.trim();
    if literal(spec).is_some() {
        return Ok(());
    }
    let (host, port) = spec
        .rsplit_once(':')
        .ok_or_else(|| format!("{spec:?}: expected HOST:PORT"))?;
    port.parse::<u16>()
        .map_err(|e| format!("{spec:?}: port {port:?}: {e}"))?;
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if host_ok {
        Ok(())
    } else {
        Err(format!("{spec:?}: {host:?} is not a host name"))
    }
}

/// A `HOST:PORT` whose syntax was checked (for flags: clap parses into it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostPort(String);

impl HostPort {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub async fn resolve_within(&self, wait: Duration) -> io::Result<SocketAddr> {
        resolve_within(&self.0, wait).await
    }
}

impl std::str::FromStr for HostPort {
    type Err = String;

    fn from_str(spec: &str) -> Result<HostPort, String> {
        check_syntax(spec)?;
        Ok(HostPort(spec.trim().to_string()))
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<SocketAddr> for HostPort {
    fn from(addr: SocketAddr) -> HostPort {
        HostPort(addr.to_string())
    }
}

/// Resolves every address in order, each within `wait`.
pub async fn resolve_all(specs: &[HostPort], wait: Duration) -> io::Result<Vec<SocketAddr>> {
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        out.push(spec.resolve_within(wait).await?);
    }
    Ok(out)
}

/// Resolves `spec` once: an IP literal at once, a name through the resolver (IPv4 first).
pub async fn resolve(spec: &str) -> io::Result<SocketAddr> {
    if let Some(addr) = literal(spec) {
        return Ok(addr);
    }
    check_syntax(spec).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let lookup = tokio::net::lookup_host(spec.trim());
    let addrs: Vec<SocketAddr> = timeout(Duration::from_millis(LOOKUP_TIMEOUT_MS), lookup)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("looking up {spec} timed out"),
            )
        })??
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{spec} has no address")))
}

/// Resolves `spec`, retrying until `wait` has passed: at startup, the containers named in a
/// member list may not exist yet.
pub async fn resolve_within(spec: &str, wait: Duration) -> io::Result<SocketAddr> {
    let deadline = Instant::now() + wait;
    loop {
        match resolve(spec).await {
            Ok(addr) => return Ok(addr),
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => return Err(e),
            Err(e) if Instant::now() >= deadline => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot resolve {spec}: {e}"),
                ))
            }
            Err(_) => sleep(Duration::from_millis(LOOKUP_RETRY_MS)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax() {
        assert!(check_syntax("127.0.0.1:1").is_ok());
        assert!(check_syntax("[::1]:7379").is_ok());
        assert!(check_syntax("qkv-1.example:7380").is_ok());
        assert!(check_syntax("qkv1").is_err());
        assert!(check_syntax("qkv1:port").is_err());
        assert!(check_syntax("bad host:1").is_err());
        assert!(check_syntax(":1").is_err());
    }

    #[tokio::test]
    async fn resolves_literals_and_localhost() {
        assert_eq!(
            resolve("127.0.0.1:9").await.unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        let local = resolve("localhost:9").await.unwrap();
        assert!(local.ip().is_loopback() && local.port() == 9, "{local}");
        let err = resolve_within("no-such-host.invalid:1", Duration::from_millis(10))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no-such-host.invalid"), "{err}");
    }
}

//! The seam between the ports' protocols and the bytes they travel on.
//!
//! Every port (client, peer, Redis, admin) and the client library accept and dial through an
//! `Acceptor` and a `Connector` and then read and write a `Stream`, whatever is underneath. A
//! `Stream` is a TCP stream, or (real builds with TLS configured) a TLS session over one. In
//! simulation builds the TLS variant does not exist, so simulated nodes run exactly the
//! protocol code real ones run, on madsim's plaintext TCP: the handshake is the only code the
//! simulator does not cover (the loopback tests in `tests/tls.rs` do).
//!
//! Invariants: a handshake is bounded in time by its caller's limit and its failure is an error
//! naming the cause, never a hang; a plaintext client on a TLS port is detected before the
//! handshake (its first byte is not a TLS handshake record) and handed back to the port, which
//! answers it in the port's own protocol that TLS is required.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::raft::NodeId;

/// The DNS name (a subject alternative name) a member's certificate must carry.
pub fn member_name(id: NodeId) -> String {
    format!("node-{id}.quorumkv")
}

/// A connection's byte stream: plain TCP or TLS over TCP.
pub enum Stream {
    Plain(TcpStream),
    #[cfg(not(madsim))]
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let peer = match self {
            Stream::Plain(s) => s.peer_addr().ok(),
            #[cfg(not(madsim))]
            Stream::Tls(s) => s.get_ref().0.peer_addr().ok(),
        };
        f.debug_struct("Stream")
            .field("tls", &self.is_tls())
            .field("peer", &peer)
            .finish()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(not(madsim))]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(not(madsim))]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(not(madsim))]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(not(madsim))]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The certificate (DER) a TLS client presented.
#[derive(Clone, Debug)]
pub struct PeerCertificate(pub Vec<u8>);

impl PeerCertificate {
    /// Whether the certificate names member `id` (`node-<id>.quorumkv`).
    pub fn names_member(&self, id: NodeId) -> bool {
        #[cfg(not(madsim))]
        {
            let der = rustls::pki_types::CertificateDer::from(self.0.as_slice());
            crate::tls::certificate_names(&der, &member_name(id))
        }
        #[cfg(madsim)]
        {
            let _ = id;
            false
        }
    }
}

/// What an accepted connection turned out to be.
pub enum Accepted {
    /// Ready for the port's protocol, with the client's certificate if it presented one.
    Ready {
        stream: Stream,
        client_cert: Option<PeerCertificate>,
    },
    /// A plaintext client on a TLS port: the port tells it (in its own protocol) that TLS is
    /// required, then closes.
    Plaintext(Stream),
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake not finished within {timeout_ms} ms (transport.handshake_timeout_ms)")]
    Timeout { timeout_ms: u64 },
    #[error("TLS handshake failed: {0}")]
    Failed(String),
    #[error("closed before the TLS handshake")]
    Closed,
}

/// The first byte of a TLS record carrying a handshake message (a ClientHello).
#[cfg(not(madsim))]
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The server side of a port: plaintext, or TLS with the node's current certificates.
#[derive(Clone, Debug, Default)]
pub struct Acceptor {
    #[cfg(not(madsim))]
    tls: Option<(std::sync::Arc<crate::tls::TlsFiles>, crate::tls::PortKind)>,
}

impl Acceptor {
    pub fn plaintext() -> Acceptor {
        Acceptor::default()
    }

    #[cfg(not(madsim))]
    pub fn tls(
        files: std::sync::Arc<crate::tls::TlsFiles>,
        port: crate::tls::PortKind,
    ) -> Acceptor {
        Acceptor {
            tls: Some((files, port)),
        }
    }

    pub fn is_tls(&self) -> bool {
        #[cfg(not(madsim))]
        {
            self.tls.is_some()
        }
        #[cfg(madsim)]
        {
            false
        }
    }

    /// Completes the TLS handshake on a new connection (at once for a plaintext port), within
    /// `handshake_timeout_ms`.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        handshake_timeout_ms: u64,
    ) -> Result<Accepted, HandshakeError> {
        let _ = tcp.set_nodelay(true);
        #[cfg(not(madsim))]
        if let Some((files, port)) = &self.tls {
            let within = Duration::from_millis(handshake_timeout_ms);
            return match timeout(within, accept_tls(tcp, files, *port)).await {
                Ok(result) => result,
                Err(_) => Err(HandshakeError::Timeout {
                    timeout_ms: handshake_timeout_ms,
                }),
            };
        }
        let _ = handshake_timeout_ms;
        Ok(Accepted::Ready {
            stream: Stream::Plain(tcp),
            client_cert: None,
        })
    }
}

#[cfg(not(madsim))]
async fn accept_tls(
    tcp: TcpStream,
    files: &crate::tls::TlsFiles,
    port: crate::tls::PortKind,
) -> Result<Accepted, HandshakeError> {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(0) => return Err(HandshakeError::Closed),
        Ok(_) if first[0] != TLS_HANDSHAKE_RECORD => {
            return Ok(Accepted::Plaintext(Stream::Plain(tcp)))
        }
        Ok(_) => {}
        Err(e) => return Err(HandshakeError::Failed(e.to_string())),
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(files.server_config(port));
    let tls = acceptor
        .accept(tcp)
        .await
        .map_err(|e| HandshakeError::Failed(crate::tls::explain(&e)))?;
    let client_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| PeerCertificate(leaf.as_ref().to_vec()));
    Ok(Accepted::Ready {
        stream: Stream::Tls(Box::new(tls.into())),
        client_cert,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("connecting to {addr} timed out after {timeout_ms} ms")]
    Timeout { addr: SocketAddr, timeout_ms: u64 },
    #[error("TLS handshake with {addr} failed: {reason}")]
    Tls { addr: SocketAddr, reason: String },
}

/// The client side: plaintext, or TLS with fixed settings (a CLI's) or a node's current ones.
#[derive(Clone, Debug, Default)]
pub struct Connector {
    #[cfg(not(madsim))]
    tls: Option<ClientSide>,
}

#[cfg(not(madsim))]
#[derive(Clone, Debug)]
enum ClientSide {
    Fixed(std::sync::Arc<crate::tls::ClientTls>),
    Node(std::sync::Arc<crate::tls::TlsFiles>),
}

impl Connector {
    pub fn plaintext() -> Connector {
        Connector::default()
    }

    /// A client's TLS settings (CA, optional client certificate, optional fixed server name).
    #[cfg(not(madsim))]
    pub fn tls(tls: std::sync::Arc<crate::tls::ClientTls>) -> Connector {
        Connector {
            tls: Some(ClientSide::Fixed(tls)),
        }
    }

    /// A node's own settings: it presents its certificate (peers, its own client port).
    #[cfg(not(madsim))]
    pub fn node(files: std::sync::Arc<crate::tls::TlsFiles>) -> Connector {
        Connector {
            tls: Some(ClientSide::Node(files)),
        }
    }

    pub fn is_tls(&self) -> bool {
        #[cfg(not(madsim))]
        {
            self.tls.is_some()
        }
        #[cfg(madsim)]
        {
            false
        }
    }

    /// Dials `addr` and completes the TLS handshake, together within `within`. With `member`,
    /// the node's certificate must name that member; without, the address or any member (or
    /// the fixed server name of the client's settings).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        member: Option<NodeId>,
        within: Duration,
    ) -> Result<Stream, ConnectError> {
        let timed_out = || ConnectError::Timeout {
            addr,
            timeout_ms: within.as_millis() as u64,
        };
        let dial = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|source| ConnectError::Io { addr, source })?;
            let _ = tcp.set_nodelay(true);
            self.handshake(tcp, addr, member).await
        };
        timeout(within, dial).await.map_err(|_| timed_out())?
    }

    async fn handshake(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        member: Option<NodeId>,
    ) -> Result<Stream, ConnectError> {
        #[cfg(not(madsim))]
        if let Some(side) = &self.tls {
            use rustls::pki_types::ServerName;
            let (config, fixed_name) = match side {
                ClientSide::Fixed(tls) => (tls.config.clone(), tls.server_name.clone()),
                ClientSide::Node(files) => (files.client_config(), None),
            };
            let name = match (member, fixed_name) {
                (Some(id), _) => member_name(id),
                (None, Some(fixed)) => fixed,
                (None, None) => addr.ip().to_string(),
            };
            let server_name =
                ServerName::try_from(name.clone()).map_err(|e| ConnectError::Tls {
                    addr,
                    reason: format!("{name:?} is not a usable server name: {e}"),
                })?;
            let connector = tokio_rustls::TlsConnector::from(config);
            let tls = connector
                .connect(server_name, tcp)
                .await
                .map_err(|e| ConnectError::Tls {
                    addr,
                    reason: crate::tls::explain(&e),
                })?;
            return Ok(Stream::Tls(Box::new(tls.into())));
        }
        let _ = (addr, member);
        Ok(Stream::Plain(tcp))
    }
}

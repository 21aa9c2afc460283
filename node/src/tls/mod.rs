//! TLS for every port (real builds only): certificates from files, reloaded without a restart.
//!
//! Why a module of its own: the ports never see rustls. They accept and connect through
//! `transport::stream` (`Acceptor`, `Connector`), which wraps a TCP stream in TLS only when a
//! `TlsFiles` is configured; simulation builds compile this module out and run the very same
//! port code on plaintext streams (docs/SECURITY.md, "The seam").
//!
//! Identity: every node's certificate names it as `node-<id>.quorumkv` in a DNS subject
//! alternative name (`member_name`). Peers use mutual TLS: the caller checks that the callee's
//! certificate names the member it dialled, and the callee checks that the caller's certificate
//! names the member its `Hello` claims to be. Clients check that the node's certificate is signed
//! by the cluster's CA and names the address they dialled or, failing that, some member (the
//! client dials addresses from the cluster map, which does not carry host names); a fixed
//! `server_name` replaces that rule.
//!
//! Reload: `TlsFiles` re-reads the three files when one's modification time changes (checked at
//! each new connection) or when told to (`reload`, on SIGHUP); connections already open keep
//! the certificates they started with. A reload that fails keeps the previous certificates and
//! logs the error once per change of the files.
//!
//! Invariant: this module reads the wall clock (certificate validity) and the file system; both
//! are why it does not exist in simulation builds.
pub mod certs;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tracing::{info, warn};

use crate::config::TlsConfig;
use crate::raft::NodeId;

pub use crate::transport::stream::member_name;

/// Whether `name` is some member's name (`node-<id>.quorumkv` with `id` >= 1).
fn is_member_name(name: &str) -> bool {
    name.strip_prefix("node-")
        .and_then(|rest| rest.strip_suffix(".quorumkv"))
        .and_then(|id| id.parse::<NodeId>().ok())
        .is_some_and(|id| id >= 1 && member_name(id) == name)
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} file {path}: {problem}")]
    Content {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// rustls with *ring*: classical key exchange (X25519, P-256, P-384) only. rustls 0.23.48 marks
/// its ring provider deprecated for lacking post-quantum key exchange, which needs aws-lc-rs (a
/// C/CMake build of several minutes on this project's 2-core machines); see docs/SECURITY.md.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificates (leaf first) from a PEM file.
pub fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Content {
            what,
            path: path.to_path_buf(),
            problem: format!("not PEM certificates: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Content {
            what,
            path: path.to_path_buf(),
            problem: "holds no certificate (expected -----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what: "key",
        path: path.to_path_buf(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Content {
        what: "key",
        path: path.to_path_buf(),
        problem: format!("no usable private key: {e}"),
    })
}

/// The trust anchors of a PEM file of CA certificates.
pub fn read_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("CA", path)? {
        roots.add(cert).map_err(|e| TlsError::Content {
            what: "CA",
            path: path.to_path_buf(),
            problem: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(Arc::new(roots))
}

/// A client's TLS settings: whom it trusts, what it presents, which name it expects.
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    /// Verify every node against this name instead of "the dialled address or any member".
    pub server_name: Option<String>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field(
                "client_certificate",
                &self.config.client_auth_cert_resolver.has_certs(),
            )
            .finish()
    }
}

impl ClientTls {
    /// Trusts the CA certificates in `ca_file`; presents `cert_file`/`key_file` when given
    /// (needed where the nodes require client certificates).
    pub fn from_files(
        ca_file: &Path,
        client_cert: Option<(&Path, &Path)>,
        server_name: Option<String>,
    ) -> Result<ClientTls, TlsError> {
        let roots = read_roots(ca_file)?;
        let identity = match client_cert {
            Some((cert, key)) => Some((read_certs("certificate", cert)?, read_key(key)?)),
            None => None,
        };
        Ok(ClientTls {
            config: client_config(roots, identity)?,
            server_name,
        })
    }
}

fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Setup(format!("server verifier: {e}")))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NodeVerifier { inner }));
    let config = match identity {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| TlsError::Setup(format!("certificate and key do not match: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The web PKI check (chain to the CA, validity, server usage, name), except that a node dialled
/// by IP address may instead name any member: the client found the address in the cluster map,
/// which the CA-signed certificate ties to the cluster. Any other failure stands.
#[derive(Debug)]
struct NodeVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        let wrong_name = matches!(
            &verdict,
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        );
        // The web PKI verifier checks the name last: a name error means the chain is good.
        if wrong_name
            && matches!(server_name, ServerName::IpAddress(_))
            && names_some_member(end_entity)
        {
            return Ok(ServerCertVerified::assertion());
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn names_some_member(end_entity: &CertificateDer<'_>) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(end_entity) else {
        return false;
    };
    let candidates: Vec<&str> = cert
        .valid_dns_names()
        .filter(|n| is_member_name(n))
        .collect();
    candidates
        .into_iter()
        .any(|name| certificate_names(end_entity, name))
}

/// Whether the certificate is valid for the DNS name `name` (webpki's own name matching).
pub fn certificate_names(end_entity: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(end_entity) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(name) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

/// The rustls settings a node uses, built from one reading of its files.
struct Loaded {
    /// Modification times of (cert, key, CA) when read.
    stamps: [Option<SystemTime>; 3],
    /// Peer port: a client certificate from the CA is required.
    peer_server: Arc<rustls::ServerConfig>,
    /// Client, Redis and admin ports: a client certificate is required or optional.
    client_server: Arc<rustls::ServerConfig>,
    /// Outbound: to peers and to the node's own client port (the Redis port routes through it).
    client: Arc<rustls::ClientConfig>,
}

/// A node's certificate, key and CA files, read again when they change.
pub struct TlsFiles {
    cert_file: PathBuf,
    key_file: PathBuf,
    ca_file: PathBuf,
    client_cert_required: bool,
    loaded: Mutex<Arc<Loaded>>,
    /// Modification times of the last failed reload (not retried until they change).
    failed_stamps: Mutex<Option<[Option<SystemTime>; 3]>>,
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("ca_file", &self.ca_file)
            .field("client_cert_required", &self.client_cert_required)
            .finish()
    }
}

/// Which server settings an accepted connection gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// Mutual TLS: the caller must present a member's certificate.
    Peer,
    /// Client, Redis and admin ports.
    Client,
}

impl TlsFiles {
    /// Reads the files named by `config`; `None` when TLS is off (no file named).
    pub fn from_config(config: &TlsConfig) -> Result<Option<Arc<TlsFiles>>, TlsError> {
        let (Some(cert), Some(key), Some(ca)) =
            (&config.cert_file, &config.key_file, &config.ca_file)
        else {
            return Ok(None);
        };
        let files = TlsFiles {
            cert_file: cert.clone(),
            key_file: key.clone(),
            ca_file: ca.clone(),
            client_cert_required: config.client_cert_required,
            loaded: Mutex::new(Arc::new(Loaded::read(
                cert,
                key,
                ca,
                config.client_cert_required,
            )?)),
            failed_stamps: Mutex::new(None),
        };
        Ok(Some(Arc::new(files)))
    }

    fn stamps(&self) -> [Option<SystemTime>; 3] {
        [&self.cert_file, &self.key_file, &self.ca_file]
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    }

    /// Reads the files again now (SIGHUP); on error the previous certificates stay in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Loaded::read(
            &self.cert_file,
            &self.key_file,
            &self.ca_file,
            self.client_cert_required,
        )?;
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        info!(cert_file = %self.cert_file.display(), "TLS certificates reloaded");
        Ok(())
    }

    /// The current settings, read again first if a file changed since they were read.
    fn current(&self) -> Arc<Loaded> {
        let loaded = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let stamps = self.stamps();
        if stamps == loaded.stamps {
            return loaded;
        }
        let mut failed = self.failed_stamps.lock().unwrap_or_else(|p| p.into_inner());
        if *failed == Some(stamps) {
            return loaded;
        }
        match self.reload() {
            Ok(()) => {
                *failed = None;
                self.loaded
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
            }
            Err(e) => {
                warn!(error = %e, "TLS files changed but cannot be used; keeping the previous certificates");
                *failed = Some(stamps);
                loaded
            }
        }
    }

    pub fn server_config(&self, port: PortKind) -> Arc<rustls::ServerConfig> {
        let loaded = self.current();
        match port {
            PortKind::Peer => loaded.peer_server.clone(),
            PortKind::Client => loaded.client_server.clone(),
        }
    }

    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.current().client.clone()
    }
}

impl Loaded {
    fn read(
        cert: &Path,
        key: &Path,
        ca: &Path,
        client_cert_required: bool,
    ) -> Result<Loaded, TlsError> {
        // Stamps first: a file replaced while being read is read again at the next check.
        let stamps = [cert, key, ca].map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        let chain = read_certs("certificate", cert)?;
        let private_key = read_key(key)?;
        let roots = read_roots(ca)?;
        let peer_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Setup(format!("client verifier: {e}")))?;
        let client_verifier = if client_cert_required {
            peer_verifier.clone()
        } else {
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Setup(format!("client verifier: {e}")))?
        };
        let server = |verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>| {
            rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Setup(e.to_string()))?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), private_key.clone_key())
                .map(Arc::new)
                .map_err(|e| TlsError::Content {
                    what: "certificate",
                    path: cert.to_path_buf(),
                    problem: format!("does not match the key {}: {e}", key.display()),
                })
        };
        Ok(Loaded {
            stamps,
            peer_server: server(peer_verifier)?,
            client_server: server(client_verifier)?,
            client: client_config(roots, Some((chain.clone(), private_key.clone_key())))?,
        })
    }
}

/// Says what went wrong in a handshake in words an operator can act on.
pub fn explain(error: &std::io::Error) -> String {
    let Some(inner) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return error.to_string();
    };
    let hint = match inner {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            " (the certificate is not signed by the CA this side trusts)"
        }
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => " (the certificate has expired)",
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => " (the certificate does not name the node dialled)",
        rustls::Error::AlertReceived(_) => {
            " (the other side refused this side's certificate or settings)"
        }
        rustls::Error::InvalidMessage(_) => " (the other side does not speak TLS?)",
        rustls::Error::NoCertificatesPresented => " (no client certificate was presented)",
        _ => "",
    };
    format!("{inner}{hint}")
}

//! Throwaway certificates: a CA and the node and client certificates it signs (`quorumkv local
//! --tls` and the tests). Production clusters bring their own; what those must contain is in
//! docs/SECURITY.md.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::member_name;
use crate::raft::NodeId;

pub use rcgen::date_time_ymd;
/// A point in time for certificate validity.
pub type Time = time::OffsetDateTime;

/// A certificate and its key, both PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// Writes `<dir>/<name>.crt` and `<dir>/<name>.key` (the key readable by the owner only);
    /// returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem)?;
        write_private(&key, &self.key_pem)?;
        Ok((cert, key))
    }
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// A certificate authority whose key stays in memory.
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

/// The validity window of certificates issued.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub not_before: Time,
    pub not_after: Time,
}

impl Validity {
    /// From `days_before` days ago to `days_after` days from now (reads the wall clock: for
    /// tools and tests, never node code).
    pub fn around_now(days_before: i64, days_after: i64) -> Validity {
        let now = Time::now_utc();
        Validity {
            not_before: now - time::Duration::days(days_before),
            not_after: now + time::Duration::days(days_after),
        }
    }
}

fn error(e: rcgen::Error) -> std::io::Error {
    std::io::Error::other(format!("certificate generation: {e}"))
}

impl LocalCa {
    /// A new CA named `common_name` with a fresh key.
    pub fn generate(common_name: &str, validity: Validity) -> std::io::Result<LocalCa> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(error)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = name(common_name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let key = KeyPair::generate().map_err(error)?;
        let cert = params.self_signed(&key).map_err(error)?;
        Ok(LocalCa {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        })
    }

    /// A node's certificate: `node-<id>.quorumkv` (its identity) plus `hosts` (names or IP
    /// addresses clients may dial), usable for both server and client authentication.
    pub fn issue_node(
        &self,
        id: NodeId,
        hosts: &[String],
        validity: Validity,
    ) -> std::io::Result<Issued> {
        let mut names = vec![member_name(id)];
        names.extend(hosts.iter().cloned());
        self.issue(&member_name(id), names, validity)
    }

    /// A client's certificate (for nodes that require client certificates).
    pub fn issue_client(&self, common_name: &str, validity: Validity) -> std::io::Result<Issued> {
        self.issue(common_name, Vec::new(), validity)
    }

    fn issue(
        &self,
        common_name: &str,
        names: Vec<String>,
        validity: Validity,
    ) -> std::io::Result<Issued> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(error)?;
        params.subject_alt_names = names
            .into_iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName).map_err(|e| {
                    std::io::Error::other(format!("{n:?} is not a usable host name: {e}"))
                }),
            })
            .collect::<Result<_, _>>()?;
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let key = KeyPair::generate().map_err(error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(error)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes the CA certificate (not its key) to `<dir>/ca.crt`.
    pub fn write_cert(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let path = dir.join("ca.crt");
        std::fs::write(&path, &self.cert_pem)?;
        Ok(path)
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name.push(DnType::OrganizationName, "quorumkv");
    name
}

//! TLS for listeners: rustls (with the `ring` provider), TLS 1.2 and 1.3
//! only, the certificate chain and key read from PEM files, optional client
//! certificates checked against a CA file.
//!
//! A [`TlsAcceptor`] belongs to a listener. The acceptor thread asks it for a
//! new `ServerConnection` per accepted socket; the shard that owns the
//! connection drives it (`shard/conn.rs`: TLS records in and out of the
//! socket, plaintext to and from the session). [`TlsAcceptor::reload`] reads
//! the files again and swaps the configuration: new connections get the new
//! certificate, open ones keep theirs and are not interrupted.
//!
//! rustls implements no weak cipher suite and no protocol version before TLS
//! 1.2, so nothing has to be switched off.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::ring as provider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Plaintext a TLS connection buffers before the socket takes it (rustls's
/// buffer limit): writes beyond it wait in the connection's own outbound
/// queue, which the slow-consumer policy bounds.
pub const TLS_PLAINTEXT_BUFFER_BYTES: usize = 64 * 1024;

/// Whether clients must present a certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// A client may present one; if it does, it must chain to the CA file.
    Optional,
    /// Every client must present one that chains to the CA file.
    Required,
}

impl fmt::Display for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClientAuth::None => "none",
            ClientAuth::Optional => "optional",
            ClientAuth::Required => "required",
        })
    }
}

/// Which user a verified client certificate signs in as, when the client
/// gives no token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertUser {
    /// None: a certificate only admits the connection; the client signs in
    /// with a token as without one.
    #[default]
    None,
    /// The certificate's subject common name (CN) is the user name.
    Cn,
}

impl fmt::Display for ClientCertUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClientCertUser::None => "none",
            ClientCertUser::Cn => "cn",
        })
    }
}

/// Where a listener's certificate, key and client CAs come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the server certificate, then its intermediates.
    pub cert_file: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM: CA certificates that client certificates must chain to.
    pub client_ca_file: Option<PathBuf>,
    /// PEM: certificate revocation lists of those CAs; a client
    /// certificate they list is refused at the handshake.
    pub client_crl_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub client_cert_user: ClientCertUser,
}

/// Why a TLS configuration could not be built.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {detail}; check the path and that it holds PEM data")]
    Pem {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{path} holds no {what}; it must hold at least one PEM block of that kind")]
    Empty { what: &'static str, path: PathBuf },
    #[error("client_auth = \"{client_auth}\" needs tls.client_ca_file, the CA certificates that client certificates must chain to")]
    NoClientCa { client_auth: ClientAuth },
    #[error("client_cert_user = \"{client_cert_user}\" needs client certificates: set tls.client_auth to \"optional\" or \"required\"")]
    NoClientCertificates { client_cert_user: ClientCertUser },
    #[error(
        "the TLS configuration is not usable ({0}); check that the key belongs to the certificate"
    )]
    Rustls(String),
}

fn pem_error(what: &'static str, path: &Path, error: impl fmt::Display) -> TlsError {
    TlsError::Pem {
        what,
        path: path.to_path_buf(),
        detail: error.to_string(),
    }
}

fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certificates.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certificates)
}

/// Builds a server configuration from the files (read now).
fn build(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(provider::default_provider());
    let certificates = read_certificates("certificates", &files.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|e| pem_error("a private key", &files.key_file, e))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    if files.client_auth == ClientAuth::None && files.client_cert_user != ClientCertUser::None {
        return Err(TlsError::NoClientCertificates {
            client_cert_user: files.client_cert_user,
        });
    }
    let builder = match files.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        client_auth => {
            let path = files
                .client_ca_file
                .as_ref()
                .ok_or(TlsError::NoClientCa { client_auth })?;
            let mut roots = RootCertStore::empty();
            for certificate in read_certificates("CA certificates", path)? {
                roots
                    .add(certificate)
                    .map_err(|e| pem_error("CA certificates", path, e))?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if let Some(path) = &files.client_crl_file {
                let crls = CertificateRevocationListDer::pem_file_iter(path)
                    .map_err(|e| pem_error("revocation lists", path, e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| pem_error("revocation lists", path, e))?;
                if crls.is_empty() {
                    return Err(TlsError::Empty {
                        what: "revocation lists (X509 CRL)",
                        path: path.clone(),
                    });
                }
                verifier = verifier.with_crls(crls);
            }
            let verifier = if client_auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsError::Rustls(e.to_string()))?,
            )
        }
    };
    builder
        .with_single_cert(certificates, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))
}

/// A listener's TLS configuration, swappable while the server runs.
pub struct TlsAcceptor {
    files: TlsFiles,
    config: RwLock<Arc<ServerConfig>>,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Reads the files and builds the configuration.
    pub fn new(files: TlsFiles) -> Result<Arc<TlsAcceptor>, TlsError> {
        let config = build(&files)?;
        Ok(Arc::new(TlsAcceptor {
            files,
            config: RwLock::new(Arc::new(config)),
        }))
    }

    /// The files this acceptor reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reads the files again and uses them for connections accepted from
    /// now on. On error the old configuration stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Arc::new(build(&self.files)?);
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    /// A server-side TLS session for a new connection.
    pub(crate) fn accept(&self) -> Result<TlsSession, rustls::Error> {
        let config = Arc::clone(&self.config.read().unwrap_or_else(|e| e.into_inner()));
        let mut connection = ServerConnection::new(config)?;
        connection.set_buffer_limit(Some(TLS_PLAINTEXT_BUFFER_BYTES));
        Ok(TlsSession {
            connection,
            client_cert_user: self.files.client_cert_user,
            certificate_user: None,
        })
    }
}

/// The TLS session of one connection, and how its client certificate
/// names a user. It derefs to the rustls session.
pub(crate) struct TlsSession {
    connection: ServerConnection,
    client_cert_user: ClientCertUser,
    /// What [`TlsSession::certificate_user`] found: `None` until the
    /// handshake is done (the certificate is read once).
    certificate_user: Option<Option<Arc<str>>>,
}

impl TlsSession {
    /// The user the client's certificate names, once the handshake is
    /// done: only a certificate rustls verified against the client CAs is
    /// there to ask, and only with `client_cert_user` other than `none`.
    pub(crate) fn certificate_user(&mut self) -> Option<Arc<str>> {
        if self.client_cert_user == ClientCertUser::None || self.connection.is_handshaking() {
            return None;
        }
        self.certificate_user
            .get_or_insert_with(|| {
                let certificate = self.connection.peer_certificates()?.first()?;
                match self.client_cert_user {
                    ClientCertUser::None => None,
                    ClientCertUser::Cn => subject_common_name(certificate).map(Arc::from),
                }
            })
            .clone()
    }
}

impl std::ops::Deref for TlsSession {
    type Target = ServerConnection;
    fn deref(&self) -> &ServerConnection {
        &self.connection
    }
}

impl std::ops::DerefMut for TlsSession {
    fn deref_mut(&mut self) -> &mut ServerConnection {
        &mut self.connection
    }
}

/// The subject common name (CN) of a DER X.509 certificate: `None` when it
/// does not parse, or has no CN, more than one, or one that is not a
/// UTF8String, PrintableString or IA5String.
pub fn subject_common_name(certificate: &[u8]) -> Option<String> {
    use x509_cert::der::{Decode, Tag, Tagged};
    let certificate = x509_cert::Certificate::from_der(certificate).ok()?;
    let mut found = None;
    for name in certificate.tbs_certificate.subject.0.iter() {
        for attribute in name.0.iter() {
            if attribute.oid != x509_cert::der::oid::db::rfc4519::CN {
                continue;
            }
            let text = match attribute.value.tag() {
                Tag::Utf8String | Tag::PrintableString | Tag::Ia5String => {
                    std::str::from_utf8(attribute.value.value()).ok()?
                }
                _ => return None,
            };
            if found.is_some() {
                return None;
            }
            found = Some(text.to_owned());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl req -x509 -newkey ec -subj SUBJECT`, for three subjects.
    const WITH_CN: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBozCCAUmgAwIBAgIUdX/6B1q/fBcN2lU+fU3PP0PKP0UwCgYIKoZIzj0EAwIw\n\
JzEVMBMGA1UECgwMRXhhbXBsZSBDb3JwMQ4wDAYDVQQDDAVhbGljZTAeFw0yNjEx\n\
MjgxMDIwMzVaFw0yNjExMjkxMDIwMzVaMCcxFTATBgNVBAoMDEV4YW1wbGUgQ29y\n\
cDEOMAwGA1UEAwwFYWxpY2UwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARiZAGD\n\
Vbdanuhba2eek2aFdkp0yQmIb8/JvIijRu7MzMc3RkK+GOC3VH9JMBLV8RSNYFul\n\
pJT3dlW7EVDdbE2bo1MwUTAdBgNVHQ4EFgQU3IuLYE62xVTtAq3nusA9SO0oJ+4w\n\
HwYDVR0jBBgwFoAU3IuLYE62xVTtAq3nusA9SO0oJ+4wDwYDVR0TAQH/BAUwAwEB\n\
/zAKBggqhkjOPQQDAgNIADBFAiAbmxsY+0DhdXrsYJBpW1d3CdOFYLHySvkkWkvS\n\
97xRuQIhAMMAJv1l3WIShgF7j1JTwTAE0ss1TMF1y6xUAc7JgAPH\n\
-----END CERTIFICATE-----";
    const WITHOUT_CN: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBgzCCASmgAwIBAgIUGBM9zqfm5/zwDCcISRxT04z/fVcwCgYIKoZIzj0EAwIw\n\
FzEVMBMGA1UECgwMRXhhbXBsZSBDb3JwMB4XDTI2MTEyODEwMjAzNVoXDTI2MTEy\n\
OTEwMjAzNVowFzEVMBMGA1UECgwMRXhhbXBsZSBDb3JwMFkwEwYHKoZIzj0CAQYI\n\
KoZIzj0DAQcDQgAEYdB5lhxpze5uJzxyKESWRw1HoX8BF9KpztaBeLiEmqFUZVCx\n\
kFNN6/688VkAhVZ9kmlCIlDW+CM5F9+TWrF/P6NTMFEwHQYDVR0OBBYEFPReH0f2\n\
QKwTiSEsq/FVMYTpRvNoMB8GA1UdIwQYMBaAFPReH0f2QKwTiSEsq/FVMYTpRvNo\n\
MA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIhAN+BBAF2EmrYe6xv\n\
D2/j9QICmQpU4oHDP4huptpC+1HHAiBcC1v/jvH6vSfVmYcLoUadXTy50xPDkb5t\n\
c/lNWtN3NA==\n\
-----END CERTIFICATE-----";
    const TWO_CNS: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBkTCCATegAwIBAgIUW8m7aHM0r+TSVU5Gcbi6beMkawQwCgYIKoZIzj0EAwIw\n\
HjEOMAwGA1UEAwwFYWxpY2UxDDAKBgNVBAMMA2JvYjAeFw0yNjExMjgxMDIwMzVa\n\
Fw0yNjExMjkxMDIwMzVaMB4xDjAMBgNVBAMMBWFsaWNlMQwwCgYDVQQDDANib2Iw\n\
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARaDpl4YwBO1P+vmnMfGKIALSve84Gf\n\
L+1upCuvbACbJIK4r5a4nJXnJ8xSJkvnweuUTgdL77PLkx0beCgOjwDNo1MwUTAd\n\
BgNVHQ4EFgQU6haW80DuMcUpyDAzPkacJM7RjaYwHwYDVR0jBBgwFoAU6haW80Du\n\
McUpyDAzPkacJM7RjaYwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBF\n\
AiBfFaYysSkkkRfIG3aeAQI+WltT+A8yXemGSJGI5OwCSQIhAIJV46QCX9xDCVs6\n\
QA99914iQK6SdVAbdxL1ElT2Xr72\n\
-----END CERTIFICATE-----";

    fn common_name(pem: &str) -> Option<String> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        subject_common_name(&der)
    }

    #[test]
    fn the_subject_common_name_is_read_from_the_certificate() {
        assert_eq!(common_name(WITH_CN).as_deref(), Some("alice"));
        assert_eq!(common_name(WITHOUT_CN), None);
        // Two names: ambiguous, so none.
        assert_eq!(common_name(TWO_CNS), None);
    }

    #[test]
    fn truncated_certificates_name_nobody() {
        let der = CertificateDer::from_pem_slice(WITH_CN.as_bytes()).unwrap();
        for length in 0..der.len() {
            assert_eq!(subject_common_name(&der[..length]), None, "{length} bytes");
        }
    }
}

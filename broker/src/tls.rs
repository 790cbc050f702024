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
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
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

/// Where a listener's certificate, key and client CAs come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the server certificate, then its intermediates.
    pub cert_file: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM: CA certificates that client certificates must chain to.
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
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
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
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
    pub(crate) fn accept(&self) -> Result<ServerConnection, rustls::Error> {
        let config = Arc::clone(&self.config.read().unwrap_or_else(|e| e.into_inner()));
        let mut connection = ServerConnection::new(config)?;
        connection.set_buffer_limit(Some(TLS_PLAINTEXT_BUFFER_BYTES));
        Ok(connection)
    }
}

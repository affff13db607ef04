//! TLS for the API (rustls, ring provider): the certificate chain and key come from PEM files
//! (`--tls-cert`, `--tls-key`, what cert-manager writes into a Secret) and are read again
//! when they change ([`super::reload`]); each handshake takes the pair in use at that
//! moment, so connections opened after a rotation get the new certificate and open ones
//! keep theirs.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use super::reload::{AgentFileError, Reloading, read_file};
use crate::replay::tls::provider;

/// The certificate pair in use, reloaded when its files change.
pub type ReloadingCert = Reloading<CertifiedKey>;

/// Opens `--tls-cert` and `--tls-key`; errors name the file and the fix.
pub fn open(cert: PathBuf, key: PathBuf) -> Result<ReloadingCert, AgentFileError> {
    Reloading::open("tls", vec![cert, key], load_pair)
}

/// Loads `[cert, key]`: a PEM chain (leaf first) and the PEM private key that belongs to it.
fn load_pair(files: &[PathBuf]) -> Result<CertifiedKey, AgentFileError> {
    let [cert_path, key_path] = files else {
        unreachable!("open passes the certificate and the key")
    };
    let cert_pem = read_file(
        "--tls-cert",
        cert_path,
        "give the certificate cert-manager wrote, e.g. /etc/capture/tls/tls.crt",
    )?;
    let key_pem = read_file(
        "--tls-key",
        key_path,
        "give the key cert-manager wrote, e.g. /etc/capture/tls/tls.key",
    )?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AgentFileError::NoCertificate {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(AgentFileError::NoCertificate {
            path: cert_path.clone(),
            reason: "no CERTIFICATE section".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| AgentFileError::BadKey {
        path: key_path.clone(),
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => AgentFileError::Mismatch {
            cert: cert_path.clone(),
            key: key_path.clone(),
            reason: e.to_string(),
        },
        _ => AgentFileError::BadKey {
            path: key_path.clone(),
            reason: e.to_string(),
        },
    })
}

/// Hands every handshake the pair in use now.
#[derive(Debug)]
struct CurrentCert(Arc<ReloadingCert>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

/// The acceptor for the API's connections: TLS 1.2 and 1.3, HTTP/1.1 by ALPN.
pub fn acceptor(cert: Arc<ReloadingCert>) -> Result<TlsAcceptor, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(CurrentCert(cert)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

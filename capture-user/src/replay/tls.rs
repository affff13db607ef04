//! TLS to an https:// target (rustls, the ring provider the agent's API uses too): which
//! certificates are trusted (`--ca-file`, or none checked with `--insecure`), the server name
//! sent as SNI and verified (`--host` without its port, else the target's host), and ALPN
//! (`http/1.1` for HTTP/1 connections, `h2` for HTTP/2 sessions). The requests inside the
//! session are the same bytes as over TCP: TLS changes how they travel, not what they are.
//!
//! This build carries no platform or Mozilla roots (no webpki-roots, no native-certs), so a
//! target is trusted only through a CA file given for it, or explicitly not verified.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Serialize;
use tokio_rustls::TlsConnector;

/// ALPN protocol of an HTTP/1 connection.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN protocol of an HTTP/2 session.
pub const ALPN_H2: &[u8] = b"h2";

/// ring's provider: it builds without a C toolchain beyond ring's own. rustls deprecates it
/// for lacking post-quantum key exchange (aws-lc-rs has it, at the cost of a CMake build);
/// the classical suites it offers protect the agent's token and replayed traffic today.
/// The agent's API and replay both use this one.
#[allow(deprecated)]
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// How an https target's certificate is checked, as the flags (or API fields) ask.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsTrust {
    /// `--ca-file`: PEM with one or more CA certificates, the only trust anchors.
    pub ca_file: Option<PathBuf>,
    /// `--insecure`: no certificate check at all (handshake signatures still are).
    pub insecure: bool,
    /// The server name to ask for and verify instead of the target's host: `--host` without
    /// its port (the name the requests carry is the name the certificate should have).
    pub server_name: Option<String>,
}

/// Why TLS to the target cannot be set up (before anything is sent).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(
        "{target} is https and no certificate can be trusted (this build has no platform roots): give --ca-file FILE (the CA that signed the target's certificate) or --insecure (no verification)"
    )]
    NoTrust { target: String },
    #[error(
        "--ca-file and --insecure: choose one (a CA file is pointless when nothing is verified)"
    )]
    Both,
    #[error("--ca-file {}: {reason}; give a PEM file of the CA that signed the target's certificate", path.display())]
    BadCaFile { path: PathBuf, reason: String },
    #[error("--ca-file and --insecure apply to https targets only; {target} is http")]
    NotHttps { target: String },
    #[error(
        "{name:?} is not a name TLS can ask for (SNI); give a DNS name or an IP address with --host"
    )]
    BadServerName { name: String },
    #[error("setting up TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What the summary says about TLS: loudly, when certificates were not verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TlsSummary {
    /// True when certificates were NOT verified (`--insecure`): the answers may not come
    /// from the target they claim to.
    pub insecure: bool,
    /// The name sent as SNI (a DNS name) and verified against the certificate.
    pub server_name: String,
    /// The CA file the certificate was verified against (none with `insecure`).
    pub ca_file: Option<String>,
}

impl TlsSummary {
    /// One line for the summary and the starting line.
    pub fn to_text(&self) -> String {
        match (&self.ca_file, self.insecure) {
            (_, true) => format!(
                "tls: INSECURE (--insecure): certificates of {} NOT verified, answers may come from anyone",
                self.server_name
            ),
            (Some(ca), false) => format!(
                "tls: server name {}, certificate verified against {ca}",
                self.server_name
            ),
            (None, false) => format!("tls: server name {}", self.server_name),
        }
    }
}

/// Everything a connection needs to speak TLS to one target: one connector per ALPN offer
/// and the server name.
#[derive(Clone)]
pub struct TlsClient {
    http1: TlsConnector,
    h2: TlsConnector,
    server_name: ServerName<'static>,
    summary: TlsSummary,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// TLS for `target_url` (its host `host`) as `trust` asks; refuses an https target
    /// that nothing would verify, rather than failing every handshake later.
    pub fn new(target_url: &str, host: &str, trust: &TlsTrust) -> Result<Self, TlsSetupError> {
        let verifier: Verifier = match (&trust.ca_file, trust.insecure) {
            (Some(_), true) => return Err(TlsSetupError::Both),
            (None, false) => {
                return Err(TlsSetupError::NoTrust {
                    target: target_url.to_string(),
                });
            }
            (Some(path), false) => Verifier::Roots(Arc::new(read_roots(path)?)),
            (None, true) => Verifier::AnyCertificate,
        };
        let name = trust
            .server_name
            .as_deref()
            .map(host_without_port)
            .unwrap_or(host);
        let server_name = server_name(name)?;
        Ok(Self {
            http1: connector(&verifier, ALPN_HTTP1)?,
            h2: connector(&verifier, ALPN_H2)?,
            server_name,
            summary: TlsSummary {
                insecure: trust.insecure,
                server_name: name.to_string(),
                ca_file: trust.ca_file.as_ref().map(|p| p.display().to_string()),
            },
        })
    }

    /// The connector offering `http/1.1` (`h2` when `http2`).
    pub fn connector(&self, http2: bool) -> &TlsConnector {
        if http2 { &self.h2 } else { &self.http1 }
    }

    /// The name sent as SNI and verified.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }

    /// What the summary says about it.
    pub fn summary(&self) -> &TlsSummary {
        &self.summary
    }
}

/// `name.test:8443` → `name.test`, `[::1]:8443` → `::1` (a `--host` value names the port
/// too; SNI and certificates do not).
pub fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.parse::<u16>().is_ok() => name,
        _ => host,
    }
}

/// A DNS name or an IP literal as rustls takes it (an IP is verified against the
/// certificate's IP SANs and sent without SNI, which carries DNS names only).
fn server_name(name: &str) -> Result<ServerName<'static>, TlsSetupError> {
    ServerName::try_from(name.to_string()).map_err(|_| TlsSetupError::BadServerName {
        name: name.to_string(),
    })
}

/// How the certificate is checked.
enum Verifier {
    Roots(Arc<RootCertStore>),
    AnyCertificate,
}

/// A client config offering `alpn`, verifying as `verifier` says.
fn connector(verifier: &Verifier, alpn: &[u8]) -> Result<TlsConnector, TlsSetupError> {
    let provider = Arc::new(provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = match verifier {
        Verifier::Roots(roots) => builder
            .with_root_certificates(roots.clone())
            .with_no_client_auth(),
        Verifier::AnyCertificate => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The CA certificates of a PEM file, as trust anchors.
fn read_roots(path: &Path) -> Result<RootCertStore, TlsSetupError> {
    let bad = |reason: String| TlsSetupError::BadCaFile {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read it ({e})")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM ({e})")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE section".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| bad(format!("a certificate in it is not a CA ({e})")))?;
    }
    Ok(roots)
}

/// `--insecure`: any certificate is accepted, for whatever name. The handshake's signatures
/// are still checked with the provider's algorithms, so the session is with whoever holds the
/// key of the certificate shown: encrypted, but not authenticated.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust(ca_file: Option<&Path>, insecure: bool, host: Option<&str>) -> TlsTrust {
        TlsTrust {
            ca_file: ca_file.map(Path::to_path_buf),
            insecure,
            server_name: host.map(str::to_string),
        }
    }

    #[test]
    fn an_https_target_nothing_would_verify_is_refused_naming_both_flags() {
        let err = TlsClient::new("https://x:443", "x", &trust(None, false, None)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("--ca-file") && text.contains("--insecure"),
            "{text}"
        );
        assert!(!text.contains('\n'));
        let both = TlsClient::new(
            "https://x:443",
            "x",
            &trust(Some(Path::new("a")), true, None),
        );
        assert!(matches!(both, Err(TlsSetupError::Both)));
    }

    #[test]
    fn insecure_skips_verification_and_says_so() {
        let client = TlsClient::new(
            "https://10.0.0.2:8443",
            "10.0.0.2",
            &trust(None, true, None),
        )
        .unwrap();
        assert!(client.summary().insecure);
        assert!(client.summary().to_text().contains("INSECURE"));
        assert!(matches!(client.server_name(), ServerName::IpAddress(_)));
    }

    #[test]
    fn the_server_name_is_the_host_flag_without_its_port_else_the_targets_host() {
        let t = trust(None, true, Some("name.test:8443"));
        let client = TlsClient::new("https://10.0.0.2:8443", "10.0.0.2", &t).unwrap();
        assert_eq!(client.summary().server_name, "name.test");
        assert!(matches!(client.server_name(), ServerName::DnsName(_)));
        assert_eq!(host_without_port("[::1]:8443"), "::1");
        assert_eq!(host_without_port("::1"), "::1");
        assert_eq!(host_without_port("name.test"), "name.test");
        let bad = TlsClient::new("https://x", "x", &trust(None, true, Some("a b")));
        assert!(matches!(bad, Err(TlsSetupError::BadServerName { .. })));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = TlsClient::new("https://x", "x", &trust(Some(&empty), false, None)).unwrap_err();
        assert!(err.to_string().contains("empty.pem"), "{err}");
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
        let missing = dir.path().join("missing.pem");
        let err =
            TlsClient::new("https://x", "x", &trust(Some(&missing), false, None)).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }
}

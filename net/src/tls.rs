use std::path::{Path, PathBuf};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::{transport_config, NetError, Result};

/// Where a node's TLS material lives.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Ready-to-use QUIC configurations for one node identity.
#[derive(Clone)]
pub struct Tls {
    pub server: quinn::ServerConfig,
    pub client: quinn::ClientConfig,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> NetError {
    NetError::Tls(e.to_string())
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| NetError::Tls(format!("{}: {e}", path.display())))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| NetError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(NetError::Tls(format!(
            "{}: no certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_pem_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| NetError::Tls(format!("{}: {e}", path.display())))
}

fn roots(ca: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots.add(c.clone()).map_err(tls_err)?;
    }
    Ok(Arc::new(roots))
}

/// A client configuration that trusts `ca` and presents `identity` if given.
/// Nodes always present one; the `None` case exists to prove that a client
/// without a certificate is refused.
pub fn client_config(
    ca: &[CertificateDer<'static>],
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<quinn::ClientConfig> {
    client_config_revoking(ca, identity, crate::pki::Revocations::none())
}

fn client_config_revoking(
    ca: &[CertificateDer<'static>],
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    revoked: Arc<crate::pki::Revocations>,
) -> Result<quinn::ClientConfig> {
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider())
        .build()
        .map_err(tls_err)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(crate::pki::RevokingServerVerifier {
            inner,
            revoked,
        }));
    let mut cfg = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(tls_err)?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![mosix_proto::ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(cfg).map_err(tls_err)?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(Arc::new(transport_config()));
    Ok(client)
}

impl Tls {
    pub fn load(files: &TlsFiles) -> Result<Self> {
        Self::load_revoking(files, crate::pki::Revocations::none())
    }

    /// [`Tls::load`], refusing the certificates in `revoked` both ways.
    pub fn load_revoking(files: &TlsFiles, revoked: Arc<crate::pki::Revocations>) -> Result<Self> {
        let ca = read_pem_certs(&files.ca)?;
        let chain = read_pem_certs(&files.cert)?;
        let key = read_pem_key(&files.key)?;
        Self::new_revoking(&ca, chain, key, revoked)
    }

    pub fn new(
        ca: &[CertificateDer<'static>],
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self> {
        Self::new_revoking(ca, chain, key, crate::pki::Revocations::none())
    }

    fn new_revoking(
        ca: &[CertificateDer<'static>],
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        revoked: Arc<crate::pki::Revocations>,
    ) -> Result<Self> {
        // Client certificates are mandatory: a peer without one from our CA
        // fails the handshake and never reaches a request handler.
        let inner = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider())
            .build()
            .map_err(tls_err)?;
        let verifier = Arc::new(crate::pki::RevokingClientVerifier {
            inner,
            revoked: revoked.clone(),
        });
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(tls_err)?;
        server.alpn_protocols = vec![mosix_proto::ALPN.to_vec()];
        let quic = QuicServerConfig::try_from(server).map_err(tls_err)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
        server.transport_config(Arc::new(transport_config()));
        // Connection attempts waiting for the accept loop, and what they
        // may buffer meanwhile: the loop answers each at once (Retry,
        // ignore or accept), so a queue this long means a flood.
        server
            .max_incoming(crate::limits::MAX_HANDSHAKES * 4)
            .incoming_buffer_size(64 << 10)
            .incoming_buffer_size_total(8 << 20);
        let client = client_config_revoking(ca, Some((chain, key)), revoked)?;
        Ok(Tls { server, client })
    }
}

/// Loads just the CA certificates from a PEM file (for test clients).
pub fn load_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    read_pem_certs(path)
}

/// Loads a certificate chain and its key (for test clients).
pub fn load_identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    Ok((read_pem_certs(cert)?, read_pem_key(key)?))
}

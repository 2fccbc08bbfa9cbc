//! TLS termination with rustls, so an endpoint can be served over HTTPS without a proxy in front.
//!
//! The certificate chain and key are read from PEM files and read again when either file
//! changes ([`Tls::watch`]), so a renewed certificate (cert-manager, certbot) is served to new
//! connections without a restart; connections already open keep theirs. A renewal that cannot
//! be read (half-written, mismatched) is logged by the caller and the current certificate stays.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A TLS acceptor whose certificate follows its files.
#[derive(Clone)]
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    resolver: Arc<FileCert>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("cert", &self.resolver.cert_path).finish_non_exhaustive()
    }
}

/// The served certificate and the files it came from.
#[derive(Debug)]
struct FileCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for FileCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", path.display()))
}

/// Reads a PEM certificate chain and its private key, and checks that they belong together.
fn load(cert_path: &Path, key_path: &Path) -> io::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| invalid(cert_path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert_path, e))?;
    if chain.is_empty() {
        return Err(invalid(cert_path, "no PEM certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| invalid(key_path, e))?;
    let signing_key =
        provider::sign::any_supported_type(&key).map_err(|e| invalid(key_path, format!("unusable key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| invalid(key_path, format!("the key does not match the certificate: {e}")))?;
    Ok(certified)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Tls {
    /// TLS 1.2 and 1.3 with the certificate chain in `cert_path` and the key in `key_path` (PEM),
    /// speaking HTTP/1.1 (ALPN `http/1.1`).
    pub fn from_files(cert_path: &Path, key_path: &Path) -> io::Result<Tls> {
        let resolver = Arc::new(FileCert {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: RwLock::new(Arc::new(load(cert_path, key_path)?)),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)), resolver })
    }

    pub(crate) fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    /// An acceptor for HTTP/2 (ALPN `h2`, as gRPC needs) with the same certificate, reloads
    /// included: it shares this one's certificate source.
    pub fn h2_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let mut config = (**self.acceptor.config()).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    /// Reads the files again whenever one of them changes, checking every `period`; runs for as
    /// long as it is polled. `on_reload` hears each attempt: the new certificate is served, or
    /// the error says why the current one stays.
    pub async fn watch(self, period: Duration, on_reload: impl Fn(io::Result<()>)) {
        let r = &self.resolver;
        let stamp = || (modified(&r.cert_path), modified(&r.key_path));
        let mut seen = stamp();
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = stamp();
            if now == seen {
                continue;
            }
            seen = now;
            let loaded = load(&r.cert_path, &r.key_path).map(|certified| {
                *r.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(certified);
            });
            on_reload(loaded);
        }
    }
}

//! TLS with rustls (ring provider): certificate loading and validity checks. A SIGHUP reload
//! loads a new [`Tls`] with the rest of the configuration.
//!
//! PEM goes through rustls-pki-types' `PemObject` (rustls-pemfile is archived); it accepts
//! PKCS#8, PKCS#1 and SEC1 keys. Its errors do not name the file, so every error here does.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Warn when the certificate expires sooner than this.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// A loaded certificate and key.
#[derive(Debug)]
pub struct Tls {
    config: Arc<ServerConfig>,
}

impl Tls {
    /// Load and check the certificate chain and key.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        Ok(Tls { config: Arc::new(build(cert, key)?) })
    }

    /// An acceptor for the next handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
    }
}

/// The TLS library and crypto provider [`provider`] picks, as `apopd --version` names them.
pub const PROVIDER: &str = "rustls 0.23, ring provider";

/// The crypto provider of every TLS config apopd builds: ring (see [`PROVIDER`]).
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn build(cert_path: &Path, key_path: &Path) -> anyhow::Result<ServerConfig> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("tls_cert {}: cannot read a PEM certificate chain", cert_path.display()))?;
    let Some(leaf) = certs.first() else {
        bail!("tls_cert {}: no CERTIFICATE block in the file", cert_path.display());
    };
    check_validity(leaf, SystemTime::now()).with_context(|| format!("tls_cert {}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("tls_key {}: cannot read a PEM private key", key_path.display()))?;
    ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!("tls_key {} does not fit tls_cert {} (or is unsupported)", key_path.display(), cert_path.display())
        })
}

/// Refuse a certificate outside its validity period (rustls would serve it anyway).
fn check_validity(leaf: &CertificateDer<'_>, now: SystemTime) -> anyhow::Result<()> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| anyhow::anyhow!("bad certificate: {e}"))?;
    let validity = cert.validity();
    let now_secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    if now_secs > validity.not_after.timestamp() {
        bail!("certificate expired on {}", validity.not_after);
    }
    if now_secs < validity.not_before.timestamp() {
        bail!("certificate is not valid before {}", validity.not_before);
    }
    if validity.not_after.timestamp() - now_secs < EXPIRY_WARNING.as_secs() as i64 {
        tracing::warn!("TLS certificate expires on {}", validity.not_after);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const TEST_KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tls-test");

    fn fixture(name: &str) -> PathBuf {
        Path::new(TEST_KEYS).join(name)
    }

    #[test]
    fn every_key_kind_and_encoding_loads() {
        for name in ["rsa-pkcs1", "rsa-pkcs8", "ec-sec1", "ed25519"] {
            let loaded = Tls::load(&fixture(&format!("{name}.pem")), &fixture(&format!("{name}.key")));
            assert!(loaded.is_ok(), "{name}: {:#}", loaded.unwrap_err());
        }
    }

    #[test]
    fn errors_name_the_file() {
        let err = |cert: &str, key: &str| format!("{:#}", Tls::load(&fixture(cert), &fixture(key)).unwrap_err());
        let missing = err("nope.pem", "ec-sec1.key");
        assert!(missing.contains("tls_cert") && missing.contains("nope.pem"), "{missing}");
        let missing_key = err("ec-sec1.pem", "nope.key");
        assert!(missing_key.contains("tls_key") && missing_key.contains("nope.key"), "{missing_key}");
        let not_a_cert = err("ec-sec1.key", "ec-sec1.key");
        assert!(not_a_cert.contains("ec-sec1.key"), "{not_a_cert}");
        let mismatched = err("ec-sec1.pem", "ed25519.key");
        assert!(mismatched.contains("does not fit") && mismatched.contains("ed25519.key"), "{mismatched}");
    }

    #[test]
    fn expired_and_future_certificates_are_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("k.pem"), key.serialize_pem()).unwrap();
        let err = format!("{:#}", Tls::load(&dir.path().join("c.pem"), &dir.path().join("k.pem")).unwrap_err());
        assert!(err.contains("expired") && err.contains("c.pem"), "{err}");

        let der = CertificateDer::from(cert.der().to_vec());
        let before = UNIX_EPOCH + Duration::from_secs(1_500_000_000);
        assert!(format!("{:#}", check_validity(&der, before).unwrap_err()).contains("not valid before"));
    }
}

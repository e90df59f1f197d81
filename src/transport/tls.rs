//! rustls configs on the aws-lc-rs provider (the one provider of the crate), the hub's key and
//! certificate, its SPKI fingerprint, and how an edge decides to trust a hub.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use thiserror::Error;

pub(crate) use crate::protocol::dialect::ALPN;

/// Name in the generated certificate. Edges that pin or trust a CA check keys, not names.
const GENERATED_CERT_NAME: &str = "remoteingress-hub";

const FINGERPRINT_PREFIX: &str = "sha256/";

#[derive(Debug, Error)]
pub(crate) enum TlsSetupError {
    #[error("could not generate the hub certificate: {0}")]
    Generate(String),
    #[error("{field}: {reason}")]
    BadPem { field: &'static str, reason: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    // AES-128-GCM first (the default puts AES-256 first): four fewer AES rounds per block
    // for every tunneled byte, with a margin that is still far beyond reach.
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// The hub's certificate chain, private key and the fingerprint edges can pin.
#[derive(Debug)]
pub(crate) struct HubIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    pub fingerprint: String,
}

impl HubIdentity {
    /// A fresh self-signed certificate with an ECDSA P-256 key.
    pub(crate) fn generate() -> Result<Self, TlsSetupError> {
        let certified = rcgen::generate_simple_self_signed(vec![GENERATED_CERT_NAME.to_string()])
            .map_err(|e| TlsSetupError::Generate(e.to_string()))?;
        let cert = certified.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()).into();
        Self::new(vec![cert], key)
    }

    /// A fresh self-signed certificate and key as PEM, for a hub that keeps its key on disk so
    /// pinned edges still trust it after a restart.
    pub(crate) fn generate_pem() -> Result<(String, String), TlsSetupError> {
        let certified = rcgen::generate_simple_self_signed(vec![GENERATED_CERT_NAME.to_string()])
            .map_err(|e| TlsSetupError::Generate(e.to_string()))?;
        Ok((certified.cert.pem(), certified.signing_key.serialize_pem()))
    }

    /// A certificate chain (leaf first) and its private key, both PEM.
    pub(crate) fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsSetupError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsSetupError::BadPem {
                field: "tls.certPem",
                reason: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsSetupError::BadPem {
                field: "tls.certPem",
                reason: "no CERTIFICATE block found".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            TlsSetupError::BadPem {
                field: "tls.keyPem",
                reason: e.to_string(),
            }
        })?;
        Self::new(chain, key)
    }

    fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsSetupError> {
        let fingerprint = spki_fingerprint(&chain[0]).map_err(|e| TlsSetupError::BadPem {
            field: "tls.certPem",
            reason: e.to_string(),
        })?;
        Ok(Self {
            chain,
            key,
            fingerprint,
        })
    }

    pub(crate) fn server_config(&self) -> Result<Arc<ServerConfig>, TlsSetupError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsSetupError::BadPem {
                field: "tls.keyPem",
                reason: format!("does not match the certificate or is unsupported: {e}"),
            })?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        // The tunnel's records are sealed outside rustls once the handshake is done
        // (`tls_stream`); no session is ever resumed, so no tickets are sent.
        config.enable_secret_extraction = true;
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }
}

/// Why a certificate has no fingerprint, or a fingerprint is not one.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FingerprintError {
    #[error("bad certificate: {0}")]
    BadCertificate(webpki::Error),
    #[error("must look like sha256/<43 base64url characters>, as in the hub's certFingerprint")]
    Malformed,
}

/// `sha256/<base64url of SHA-256 of the SubjectPublicKeyInfo>`: stays valid when the
/// certificate is renewed with the same key.
pub(crate) fn spki_fingerprint(cert: &CertificateDer<'_>) -> Result<String, FingerprintError> {
    let parsed = webpki::EndEntityCert::try_from(cert).map_err(FingerprintError::BadCertificate)?;
    let spki = parsed.subject_public_key_info();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki.as_ref());
    Ok(format!(
        "{FINGERPRINT_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(digest.as_ref())
    ))
}

/// Checks the form of a fingerprint given in config or a token.
pub(crate) fn validate_fingerprint(fingerprint: &str) -> Result<(), FingerprintError> {
    let ok = fingerprint
        .strip_prefix(FINGERPRINT_PREFIX)
        .and_then(|b64| URL_SAFE_NO_PAD.decode(b64).ok())
        .is_some_and(|digest| digest.len() == 32);
    if ok {
        Ok(())
    } else {
        Err(FingerprintError::Malformed)
    }
}

/// How an edge decides whether the hub it reached is the right one.
#[derive(Debug, Clone)]
pub(crate) enum HubTrust {
    /// Any key (upstream behaviour); the edge warns about it.
    AnyKey,
    /// Only the key with this fingerprint, checked before the secret is sent.
    Pinned(String),
    /// A certificate chain to one of these roots, for the hub's name.
    Ca(Arc<RootCertStore>),
}

impl HubTrust {
    pub(crate) fn ca_from_pem(ca_pem: &str) -> Result<Self, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| TlsSetupError::BadPem {
                field: "caPem",
                reason: e.to_string(),
            })?;
            roots.add(cert).map_err(|e| TlsSetupError::BadPem {
                field: "caPem",
                reason: e.to_string(),
            })?;
        }
        if roots.is_empty() {
            return Err(TlsSetupError::BadPem {
                field: "caPem",
                reason: "no CERTIFICATE block found".into(),
            });
        }
        Ok(Self::Ca(Arc::new(roots)))
    }

    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, TlsSetupError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let mut config =
            match self {
                HubTrust::Ca(roots) => builder.with_root_certificates(roots.clone()),
                HubTrust::AnyKey => builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(HubKeyVerifier::new(None))),
                HubTrust::Pinned(fingerprint) => builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(HubKeyVerifier::new(Some(
                        fingerprint.clone(),
                    )))),
            }
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN.to_vec()];
        // As on the hub: records are sealed outside rustls, and sessions are not resumed.
        config.enable_secret_extraction = true;
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }
}

/// The name an edge presents (SNI) and, with a CA, verifies.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string())
        .map_err(|_| format!("{host:?} is not a valid host name or IP address"))
}

/// Accepts the hub's key when it matches the pin (or always, without one), and still checks
/// the handshake signatures so the peer proves it holds that key.
#[derive(Debug)]
struct HubKeyVerifier {
    pin: Option<String>,
    provider: Arc<CryptoProvider>,
}

impl HubKeyVerifier {
    fn new(pin: Option<String>) -> Self {
        Self {
            pin,
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for HubKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(pin) = &self.pin else {
            return Ok(ServerCertVerified::assertion());
        };
        let actual = spki_fingerprint(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        if actual.as_bytes() == pin.as_bytes() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identity_has_a_well_formed_fingerprint() {
        let id = HubIdentity::generate().unwrap();
        assert!(
            validate_fingerprint(&id.fingerprint).is_ok(),
            "{}",
            id.fingerprint
        );
        assert_eq!(id.fingerprint.len(), "sha256/".len() + 43);
        assert!(id.server_config().is_ok());
    }

    #[test]
    fn fingerprint_validation_rejects_other_shapes() {
        assert!(validate_fingerprint("sha256/abc").is_err());
        assert!(validate_fingerprint("md5/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").is_err());
        assert!(validate_fingerprint("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").is_err());
    }

    #[test]
    fn pem_errors_name_the_field() {
        let err = HubIdentity::from_pem("nonsense", "nonsense").unwrap_err();
        assert!(err.to_string().starts_with("tls.certPem:"), "{err}");
        let id = rcgen::generate_simple_self_signed(vec!["x".to_string()]).unwrap();
        let err = HubIdentity::from_pem(&id.cert.pem(), "nonsense").unwrap_err();
        assert!(err.to_string().starts_with("tls.keyPem:"), "{err}");
    }

    #[test]
    fn pem_identity_fingerprint_matches_its_key() {
        let id = rcgen::generate_simple_self_signed(vec!["x".to_string()]).unwrap();
        let hub = HubIdentity::from_pem(&id.cert.pem(), &id.signing_key.serialize_pem()).unwrap();
        let again = HubIdentity::from_pem(&id.cert.pem(), &id.signing_key.serialize_pem()).unwrap();
        assert_eq!(hub.fingerprint, again.fingerprint);
        assert!(hub.server_config().is_ok());
    }
}

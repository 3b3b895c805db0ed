//! The certificates of every live TLS context, for the admin `/certs` endpoint (Envoy's
//! `ContextManager`): each context registers when it is compiled and leaves when the listener
//! or cluster holding it is gone.

use std::sync::{Arc, Mutex, Weak};

use legate_api::pb::envoy::config::core::v3::DataSource;
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::CommonTlsContext;
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use rustls::sign::CertifiedKey;

use super::CertificateInfo;

/// The certificates of one TLS context as the admin `/certs` lists them (Envoy's
/// `Ssl::Context::getCaCertInformation` and `getCertChainInformation`): the first certificate
/// of `trusted_ca`, and the leaf of each `tls_certificates` entry, each with the file it came
/// from (`<inline>` for inline data), or the current certificate of each SDS secret.
pub struct ContextCertificates {
    ca_cert: Option<CertificateFile>,
    /// The `trusted_ca` in force, for a validation context from an SDS secret.
    ca_secret: Option<SecretCa>,
    cert_chain: Vec<CertificateFile>,
    secrets: Vec<SecretCertificate>,
}

/// The `trusted_ca` a validation context from an SDS secret has now.
pub type SecretCa = Box<dyn Fn() -> Option<DataSource> + Send + Sync>;

/// The certificate an SDS secret holds now (`None` before it arrives).
pub type SecretCertificate = Box<dyn Fn() -> Option<Arc<CertifiedKey>> + Send + Sync>;

impl std::fmt::Debug for ContextCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextCertificates")
            .field("ca_cert", &self.ca_cert)
            .field("cert_chain", &self.cert_chain)
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

/// A certificate and the path it was read from.
#[derive(Clone, Debug)]
pub struct CertificateFile {
    pub path: String,
    pub details: CertificateInfo,
}

/// Every TLS context alive, as Envoy's `ContextManager` knows them: a context registers when
/// it is compiled and leaves when the listener or cluster holding it is gone.
static CONTEXTS: Mutex<Vec<Weak<ContextCertificates>>> = Mutex::new(Vec::new());

impl ContextCertificates {
    /// Reads the certificates of a compiled context (its files were read moments before, so
    /// an error here only drops the entry from `/certs`) and registers them for as long as the
    /// returned handle lives. `secrets` give the certificates of its SDS secrets, `ca_secret`
    /// the CA of its SDS validation context.
    pub fn register(
        common: &CommonTlsContext,
        secrets: Vec<SecretCertificate>,
        ca_secret: Option<SecretCa>,
    ) -> Arc<ContextCertificates> {
        let ca_cert = match &common.validation_context_type {
            Some(ValidationContextType::ValidationContext(v)) => first(v.trusted_ca.as_ref()),
            _ => None,
        };
        let cert_chain = common
            .tls_certificates
            .iter()
            .filter_map(|c| first(c.certificate_chain.as_ref()))
            .collect();
        let context = Arc::new(ContextCertificates {
            ca_cert,
            ca_secret,
            cert_chain,
            secrets,
        });
        let mut all = CONTEXTS.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|c| c.strong_count() > 0);
        all.push(Arc::downgrade(&context));
        context
    }

    /// The first certificate of the context's `trusted_ca` now. From an SDS secret its path
    /// is `<inline>`, as for SDS certificates.
    pub fn ca_cert(&self) -> Option<CertificateFile> {
        match &self.ca_secret {
            None => self.ca_cert.clone(),
            Some(current) => first(current().as_ref()).map(|c| CertificateFile {
                path: "<inline>".to_owned(),
                ..c
            }),
        }
    }

    /// The context's certificates now. An SDS certificate's path is `<inline>`, as Envoy
    /// shows it (its secret's files are read into inline data).
    pub fn cert_chain(&self) -> Vec<CertificateFile> {
        let from_secrets = self.secrets.iter().filter_map(|current| {
            let key = current()?;
            Some(CertificateFile {
                path: "<inline>".to_owned(),
                details: CertificateInfo::parse(key.end_entity_cert().ok()?)?,
            })
        });
        self.cert_chain
            .iter()
            .cloned()
            .chain(from_secrets)
            .collect()
    }

    /// The contexts alive, in the order they were compiled.
    pub fn all() -> Vec<Arc<ContextCertificates>> {
        let all = CONTEXTS.lock().unwrap_or_else(|e| e.into_inner());
        all.iter().filter_map(Weak::upgrade).collect()
    }
}

/// The first certificate of a source, with the path it was read from.
fn first(source: Option<&DataSource>) -> Option<CertificateFile> {
    let source = source?;
    let (_, path) = crate::tls::read_data_source(source).ok()?;
    let der = crate::tls::certificates(source, "")
        .ok()?
        .into_iter()
        .next()?;
    Some(CertificateFile {
        path,
        details: CertificateInfo::parse(&der)?,
    })
}

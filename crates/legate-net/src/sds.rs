//! TLS certificates from SDS files: `tls_certificate_sds_secret_configs` whose `sds_config` is
//! a file source. The file holds a `DiscoveryResponse` of `Secret`s; the one with the given
//! name is the certificate (its chain and key inline or in files of their own). When the file,
//! or a certificate file it names, is replaced, the certificate changes for the handshakes
//! that start from then on; connections already open keep theirs.
//!
//! Secrets are shared, as Envoy's secret manager shares them: every TLS context naming the
//! same secret at the same source uses one [`CertificateSecret`], registered process-wide (the
//! contexts are compiled where no server state is at hand) for the control thread, which reads
//! the files with the configuration checks and watches them, to find and feed.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use arc_swap::ArcSwapOption;
use legate_api::pb::envoy::config::core::v3::{DataSource, data_source};
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::{
    SdsSecretConfig, Secret, TlsCertificate, secret,
};
use legate_core::ConfigError;
use legate_core::config_source::FileSource;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;

use crate::cert_select::ServedCert;

/// A TLS certificate kept current from its SDS file.
pub struct CertificateSecret {
    pub name: String,
    pub source: FileSource,
    provider: Arc<CryptoProvider>,
    /// The certificate in force, with the names it serves (read once per install).
    served: ArcSwapOption<ServedCert>,
    /// The certificate and key files the secret names: replacing one reloads it too.
    files: Mutex<Vec<PathBuf>>,
}

impl std::fmt::Debug for CertificateSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateSecret")
            .field("name", &self.name)
            .field("source", &self.source.path)
            .finish_non_exhaustive()
    }
}

type Registry = Mutex<Vec<Weak<CertificateSecret>>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

impl CertificateSecret {
    /// The secret `config` names, shared with every other context that names it; a new one
    /// has no certificate until the control thread installs the file's (before the listener
    /// that uses it starts).
    pub fn subscribe(
        config: &SdsSecretConfig,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Arc<CertificateSecret>, ConfigError> {
        let source = match &config.sds_config {
            Some(s) => FileSource::from_proto(s).map_err(|e| e.within("sds_config"))?,
            None => {
                return Err(ConfigError::new(
                    "sds_config",
                    "an SDS config source is required (Legate reads secrets from files)",
                ));
            }
        };
        let mut live = registry().lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|w| w.strong_count() > 0);
        if let Some(existing) = live
            .iter()
            .filter_map(Weak::upgrade)
            .find(|s| s.name == config.name && s.source == source)
        {
            return Ok(existing);
        }
        let secret = Arc::new(CertificateSecret {
            name: config.name.clone(),
            source,
            provider: provider.clone(),
            served: ArcSwapOption::empty(),
            files: Mutex::default(),
        });
        live.push(Arc::downgrade(&secret));
        Ok(secret)
    }

    /// Every secret some TLS context uses.
    pub fn live() -> Vec<Arc<CertificateSecret>> {
        let mut live = registry().lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|w| w.strong_count() > 0);
        live.iter().filter_map(Weak::upgrade).collect()
    }

    /// The certificate for a handshake starting now (`None` before the first install).
    pub fn key(&self) -> Option<Arc<CertifiedKey>> {
        self.served.load().as_ref().map(|s| s.key.clone())
    }

    /// [`Self::key`] with the names it serves, for certificate selection.
    pub fn served(&self) -> Option<Arc<ServedCert>> {
        self.served.load_full()
    }

    /// The files whose replacement reloads the secret.
    pub fn files(&self) -> Vec<PathBuf> {
        self.files.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `certificate` in force for the handshakes that start from now on; on error the
    /// certificate in force stays.
    pub fn install(&self, certificate: &TlsCertificate) -> Result<(), String> {
        if certificate.ocsp_staple.is_some() {
            return Err(
                "ocsp_staple: OCSP stapling of SDS certificates is not supported by Legate".into(),
            );
        }
        let key =
            legate_core::tls::certified_key(certificate, &self.provider).map_err(|errors| {
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
        self.served.store(Some(Arc::new(ServedCert::plain(key))));
        *self.files.lock().unwrap_or_else(|p| p.into_inner()) = files_of(certificate);
        Ok(())
    }
}

/// The TLS certificate a `Secret` resource holds.
pub fn tls_certificate(secret: Secret) -> Option<TlsCertificate> {
    match secret.r#type? {
        secret::Type::TlsCertificate(c) => Some(c),
        _ => None,
    }
}

fn files_of(c: &TlsCertificate) -> Vec<PathBuf> {
    let file = |s: &Option<DataSource>| match s.as_ref()?.specifier.as_ref()? {
        data_source::Specifier::Filename(f) => Some(PathBuf::from(f)),
        _ => None,
    };
    [file(&c.certificate_chain), file(&c.private_key)]
        .into_iter()
        .flatten()
        .collect()
}

//! SDS secrets from files: `tls_certificate_sds_secret_configs`, the validation context of
//! `validation_context_sds_secret_config` / `combined_validation_context`, and
//! `session_ticket_keys_sds_secret_config`, whose `sds_config` is a file source. The file
//! holds a `DiscoveryResponse` with the one `Secret` it is read for (as Envoy, a file with
//! another or with more is refused); its certificates and keys are inline or in files of their
//! own. When the file, or a file the secret names, is replaced, the secret changes for the
//! handshakes that start from then on; connections already open keep what they had.
//!
//! Secrets are shared, as Envoy's secret manager shares them: every TLS context naming the
//! same secret at the same source uses one subscription, registered process-wide (contexts are
//! compiled where no server state is at hand) for the control thread, which reads the files
//! with the configuration checks and watches them, to find ([`live`]) and feed.
//!
//! A validation secret changes what its contexts build from it (their verifiers, their session
//! caches and ticket contexts), as Envoy rebuilds a TLS context when its secret changes: each
//! context is a [`Validated`], rebuilt from its default validation context merged with the
//! secret's (protobuf merge, as Envoy's `MergeFrom`). An update is all or nothing: if one
//! context cannot be built from it, the update is rejected and every context keeps what it has.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use arc_swap::ArcSwapOption;
use legate_api::pb::envoy::config::core::v3::{DataSource, data_source};
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SdsSecretConfig, Secret, TlsCertificate,
    common_tls_context::ValidationContextType, secret,
};
use prost::Message;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;

use super::{ServedCert, SslStats, Validation};
use crate::config_source::FileSource;
use crate::{Compiled, ConfigError};

/// A secret some TLS context subscribes to, as the control thread feeds it.
pub trait Subscription: Send + Sync {
    fn id(&self) -> &SecretId;
    /// Whether a version of the secret is in force.
    fn installed(&self) -> bool;
    /// Puts `secret` (the resource named so) in force; on error what is in force stays.
    fn install(&self, secret: Secret) -> Result<(), String>;

    fn name(&self) -> &str {
        &self.id().name
    }

    fn source(&self) -> &FileSource {
        &self.id().source
    }

    /// The files whose replacement reloads the secret.
    fn files(&self) -> Vec<PathBuf> {
        lock(&self.id().files).clone()
    }
}

/// What names a subscription: the secret's name and source, and the files the version in
/// force names (certificates, keys, CAs: replacing one reloads the secret too).
#[derive(Debug)]
pub struct SecretId {
    pub name: String,
    pub source: FileSource,
    files: Mutex<Vec<PathBuf>>,
}

impl SecretId {
    fn new(name: String, source: FileSource) -> SecretId {
        SecretId {
            name,
            source,
            files: Mutex::default(),
        }
    }

    fn set_files(&self, files: Vec<PathBuf>) {
        *lock(&self.files) = files;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every secret some TLS context uses.
pub fn live() -> Vec<Arc<dyn Subscription>> {
    let certificates = CERTIFICATES.live().into_iter().map(|s| s as _);
    let validations = VALIDATIONS.live().into_iter().map(|s| s as _);
    let ticket_keys = TICKET_KEYS.live().into_iter().map(|s| s as _);
    certificates.chain(validations).chain(ticket_keys).collect()
}

/// The subscriptions of one kind, by name and source.
struct Registry<T>(Mutex<Vec<Weak<T>>>);

static CERTIFICATES: Registry<CertificateSecret> = Registry(Mutex::new(Vec::new()));
static VALIDATIONS: Registry<ValidationSecret> = Registry(Mutex::new(Vec::new()));
static TICKET_KEYS: Registry<TicketKeysSecret> = Registry(Mutex::new(Vec::new()));

impl<T: Subscription> Registry<T> {
    /// The subscription to `config`'s secret, shared with every context that names it.
    fn subscribe(
        &self,
        config: &SdsSecretConfig,
        make: impl FnOnce(SecretId) -> T,
    ) -> Result<Arc<T>, ConfigError> {
        let source = match &config.sds_config {
            Some(s) => FileSource::subscribe(s).map_err(|e| e.within("sds_config"))?,
            None => {
                return Err(ConfigError::new(
                    "sds_config",
                    "an SDS config source is required (Legate reads secrets from files)",
                ));
            }
        };
        let mut live = lock(&self.0);
        live.retain(|w| w.strong_count() > 0);
        if let Some(existing) = live
            .iter()
            .filter_map(Weak::upgrade)
            .find(|s| s.name() == config.name && *s.source() == source)
        {
            return Ok(existing);
        }
        let secret = Arc::new(make(SecretId::new(config.name.clone(), source)));
        live.push(Arc::downgrade(&secret));
        Ok(secret)
    }

    fn live(&self) -> Vec<Arc<T>> {
        let mut live = lock(&self.0);
        live.retain(|w| w.strong_count() > 0);
        live.iter().filter_map(Weak::upgrade).collect()
    }
}

/// A TLS certificate kept current from its SDS file.
pub struct CertificateSecret {
    pub id: SecretId,
    provider: Arc<CryptoProvider>,
    /// The certificate in force, with the names it serves (read once per install).
    served: ArcSwapOption<ServedCert>,
}

impl std::fmt::Debug for CertificateSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateSecret")
            .field("name", &self.id.name)
            .field("source", &self.id.source.path)
            .finish_non_exhaustive()
    }
}

impl CertificateSecret {
    /// The secret `config` names, shared with every other context that names it; a new one
    /// has no certificate until the control thread installs the file's (before the listener
    /// or cluster that uses it starts).
    pub fn subscribe(
        config: &SdsSecretConfig,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Arc<CertificateSecret>, ConfigError> {
        CERTIFICATES.subscribe(config, |id| CertificateSecret {
            id,
            provider: provider.clone(),
            served: ArcSwapOption::empty(),
        })
    }

    /// The certificate for a handshake starting now (`None` before the first install).
    pub fn key(&self) -> Option<Arc<CertifiedKey>> {
        self.served.load().as_ref().map(|s| s.key.clone())
    }

    /// [`Self::key`] with the names it serves, for certificate selection.
    pub fn served(&self) -> Option<Arc<ServedCert>> {
        self.served.load_full()
    }
}

impl Subscription for CertificateSecret {
    fn id(&self) -> &SecretId {
        &self.id
    }

    fn installed(&self) -> bool {
        self.served.load().is_some()
    }

    fn install(&self, secret: Secret) -> Result<(), String> {
        let Some(secret::Type::TlsCertificate(certificate)) = secret.r#type else {
            return Err(format!(
                "secret '{}' is not a tls_certificate",
                self.id.name
            ));
        };
        if certificate.ocsp_staple.is_some() {
            return Err(
                "ocsp_staple: OCSP stapling of SDS certificates is not supported by Legate".into(),
            );
        }
        let key = super::certified_key(&certificate, &self.provider).map_err(joined)?;
        self.served.store(Some(Arc::new(ServedCert::plain(key))));
        self.id.set_files(certificate_files(&certificate));
        Ok(())
    }
}

/// A validation context kept current from its SDS file, and the contexts built from it.
pub struct ValidationSecret {
    pub id: SecretId,
    current: ArcSwapOption<CertificateValidationContext>,
    /// The contexts to rebuild when it changes.
    users: Mutex<Vec<Weak<dyn Rebuild>>>,
}

impl ValidationSecret {
    fn subscribe(config: &SdsSecretConfig) -> Result<Arc<ValidationSecret>, ConfigError> {
        VALIDATIONS.subscribe(config, |id| ValidationSecret {
            id,
            current: ArcSwapOption::empty(),
            users: Mutex::default(),
        })
    }

    /// The validation context in force (`None` before the first install).
    pub fn current(&self) -> Option<Arc<CertificateValidationContext>> {
        self.current.load_full()
    }
}

impl Subscription for ValidationSecret {
    fn id(&self) -> &SecretId {
        &self.id
    }

    fn installed(&self) -> bool {
        self.current.load().is_some()
    }

    fn install(&self, secret: Secret) -> Result<(), String> {
        let Some(secret::Type::ValidationContext(context)) = secret.r#type else {
            return Err(format!(
                "secret '{}' is not a validation_context",
                self.id.name
            ));
        };
        let mut users = lock(&self.users);
        users.retain(|w| w.strong_count() > 0);
        // Every context is built before any is changed: the update is all or nothing.
        let mut commits = Vec::new();
        for user in users.iter().filter_map(Weak::upgrade) {
            commits.push(user.prepare(&context)?);
        }
        commits.into_iter().for_each(|commit| commit());
        self.id.set_files(
            [&context.trusted_ca, &context.crl]
                .into_iter()
                .filter_map(|s| filename(s.as_ref()))
                .collect(),
        );
        self.current.store(Some(Arc::new(context)));
        Ok(())
    }
}

/// The size of one Envoy session ticket key: a 16-byte name, a 32-byte HMAC key and a 32-byte
/// AES key.
pub const TICKET_KEY_LEN: usize = 80;

/// Envoy's check of a session ticket key's length.
pub fn check_ticket_key(data: &[u8]) -> Result<(), String> {
    if data.len() == TICKET_KEY_LEN {
        return Ok(());
    }
    Err(format!(
        "Incorrect TLS session ticket key length. Length {}, expected length {TICKET_KEY_LEN}.",
        data.len()
    ))
}

/// Session ticket keys kept current from their SDS file (`session_ticket_keys_sds_secret_config`).
pub struct TicketKeysSecret {
    pub id: SecretId,
    /// The keys in force, each [`TICKET_KEY_LEN`] bytes, the first sealing new tickets.
    current: ArcSwapOption<Vec<Vec<u8>>>,
}

impl TicketKeysSecret {
    /// The secret `config` names, shared with every other context that names it.
    pub fn subscribe(config: &SdsSecretConfig) -> Result<Arc<TicketKeysSecret>, ConfigError> {
        TICKET_KEYS.subscribe(config, |id| TicketKeysSecret {
            id,
            current: ArcSwapOption::empty(),
        })
    }

    /// The keys for a ticket sealed or opened now (`None` before the first install).
    pub fn current(&self) -> Option<Arc<Vec<Vec<u8>>>> {
        self.current.load_full()
    }
}

impl Subscription for TicketKeysSecret {
    fn id(&self) -> &SecretId {
        &self.id
    }

    fn installed(&self) -> bool {
        self.current.load().is_some()
    }

    fn install(&self, secret: Secret) -> Result<(), String> {
        let Some(secret::Type::SessionTicketKeys(keys)) = secret.r#type else {
            return Err(format!(
                "secret '{}' is not session_ticket_keys",
                self.id.name
            ));
        };
        if keys.keys.is_empty() {
            return Err("session_ticket_keys.keys: value must contain at least 1 item".into());
        }
        let mut data = Vec::new();
        for (i, source) in keys.keys.iter().enumerate() {
            let (bytes, _) = super::read_data_source(source).map_err(joined)?;
            check_ticket_key(&bytes).map_err(|e| format!("session_ticket_keys.keys[{i}]: {e}"))?;
            data.push(bytes);
        }
        self.current.store(Some(Arc::new(data)));
        self.id
            .set_files(keys.keys.iter().filter_map(|k| filename(Some(k))).collect());
        Ok(())
    }
}

/// A context built from a validation secret: what it would build from a new version.
trait Rebuild: Send + Sync {
    /// Builds from `dynamic`; the returned function puts the result in force.
    fn prepare(
        self: Arc<Self>,
        dynamic: &CertificateValidationContext,
    ) -> Result<Box<dyn FnOnce() + Send>, String>;
}

/// What a TLS context builds from its validation settings (`T`: its rustls configurations),
/// from `CommonTlsContext.validation_context_type`: built once for an inline
/// `validation_context` (or none), and again whenever the SDS secret of
/// `validation_context_sds_secret_config` / `combined_validation_context` changes.
pub struct Validated<T> {
    built: ArcSwapOption<T>,
    /// The default validation context the secret's is merged into (`combined_validation_context`).
    default: CertificateValidationContext,
    build: Box<dyn Fn(Option<Validation>) -> Compiled<T> + Send + Sync>,
    /// The listener's or cluster's `ssl.*` stats, given to every [`Validation`] built.
    stats: Arc<OnceLock<SslStats>>,
    /// Keeps the subscription (and so the updates) alive as long as the context.
    secret: Option<Arc<ValidationSecret>>,
}

impl<T: Send + Sync + 'static> Validated<T> {
    /// Compiles `common`'s validation settings and builds `T` from them with `build` (which
    /// gets `None` without validation settings; its errors name their own fields). A context
    /// whose SDS secret has not arrived yet builds when it does.
    pub fn compile(
        common: &CommonTlsContext,
        build: impl Fn(Option<Validation>) -> Compiled<T> + Send + Sync + 'static,
    ) -> Compiled<Arc<Validated<T>>> {
        let (default, secret) = match &common.validation_context_type {
            None => (None, None),
            Some(ValidationContextType::ValidationContext(v)) => (Some(v.clone()), None),
            Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
                let path = "common_tls_context.validation_context_sds_secret_config";
                let secret = ValidationSecret::subscribe(s).map_err(|e| vec![e.within(path)])?;
                (Some(CertificateValidationContext::default()), Some(secret))
            }
            Some(ValidationContextType::CombinedValidationContext(c)) => {
                let path = "common_tls_context.combined_validation_context";
                let Some(s) = &c.validation_context_sds_secret_config else {
                    return Err(vec![ConfigError::new(
                        format!("{path}.validation_context_sds_secret_config"),
                        "value is required",
                    )]);
                };
                let Some(default) = &c.default_validation_context else {
                    return Err(vec![ConfigError::new(
                        format!("{path}.default_validation_context"),
                        "value is required",
                    )]);
                };
                let secret = ValidationSecret::subscribe(s).map_err(|e| {
                    vec![e.within(&format!("{path}.validation_context_sds_secret_config"))]
                })?;
                (Some(default.clone()), Some(secret))
            }
            // Certificate providers (deprecated): refused by the configuration check.
            Some(_) => {
                return Err(vec![ConfigError::new(
                    "common_tls_context",
                    "certificate providers are not supported by Legate",
                )]);
            }
        };
        let validated = Arc::new(Validated {
            built: ArcSwapOption::empty(),
            default: default.clone().unwrap_or_default(),
            build: Box::new(build),
            stats: Arc::default(),
            secret: secret.clone(),
        });
        match secret {
            None => {
                let validation = match &default {
                    Some(v) => Some(validated.validation(v).map_err(|errors| {
                        let path = "common_tls_context.validation_context";
                        errors
                            .into_iter()
                            .map(|e| e.within(path))
                            .collect::<Vec<_>>()
                    })?),
                    None => None,
                };
                let built = (validated.build)(validation)?;
                validated.built.store(Some(Arc::new(built)));
            }
            Some(secret) => {
                let mut users = lock(&secret.users);
                if let Some(current) = secret.current() {
                    let commit = validated
                        .clone()
                        .prepare(&current)
                        .map_err(|e| vec![ConfigError::new("common_tls_context", e)])?;
                    commit();
                }
                users.retain(|w| w.strong_count() > 0);
                users.push(Arc::downgrade(&validated) as Weak<dyn Rebuild>);
            }
        }
        Ok(validated)
    }

    /// What the context uses for a handshake starting now: `None` while its SDS secret has
    /// not arrived (the handshake is refused).
    pub fn current(&self) -> Option<Arc<T>> {
        self.built.load_full()
    }

    /// Whether the validation settings come from an SDS secret.
    pub fn from_sds(&self) -> bool {
        self.secret.is_some()
    }

    /// For the admin `/certs` of a context whose validation context comes from SDS: the
    /// `trusted_ca` in force (`None` for an inline one, listed as compiled).
    pub fn ca_secret(self: &Arc<Self>) -> Option<crate::x509::SecretCa> {
        self.secret.as_ref()?;
        let this = Arc::downgrade(self);
        Some(Box::new(move || {
            let this = this.upgrade()?;
            let current = this.secret.as_ref()?.current()?;
            merged(&this.default, &current).trusted_ca
        }))
    }

    /// Where failures let through by `ACCEPT_UNTRUSTED` are counted, in every version built.
    pub fn attach_stats(&self, stats: &SslStats) {
        let _ = self.stats.set(stats.clone());
    }

    fn validation(&self, v: &CertificateValidationContext) -> Compiled<Validation> {
        let mut validation = Validation::compile(v)?;
        validation.stats = self.stats.clone();
        Ok(validation)
    }
}

impl<T: Send + Sync + 'static> Rebuild for Validated<T> {
    fn prepare(
        self: Arc<Self>,
        dynamic: &CertificateValidationContext,
    ) -> Result<Box<dyn FnOnce() + Send>, String> {
        let merged = merged(&self.default, dynamic);
        let built = self
            .validation(&merged)
            .and_then(|v| (self.build)(Some(v)))
            .map_err(joined)?;
        Ok(Box::new(move || self.built.store(Some(Arc::new(built)))))
    }
}

/// `default` with `dynamic` merged into it, as protobuf's `MergeFrom` (Envoy's combined
/// validation context): fields set in `dynamic` replace the default's, lists are appended.
pub fn merged(
    default: &CertificateValidationContext,
    dynamic: &CertificateValidationContext,
) -> CertificateValidationContext {
    let mut merged = default.clone();
    // Merging a message's own encoding cannot fail.
    let _ = merged.merge(dynamic.encode_to_vec().as_slice());
    merged
}

/// Every message of a list of configuration errors, on one line.
fn joined(errors: Vec<ConfigError>) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn certificate_files(c: &TlsCertificate) -> Vec<PathBuf> {
    [&c.certificate_chain, &c.private_key]
        .into_iter()
        .filter_map(|s| filename(s.as_ref()))
        .collect()
}

fn filename(source: Option<&DataSource>) -> Option<PathBuf> {
    match source?.specifier.as_ref()? {
        data_source::Specifier::Filename(f) => Some(PathBuf::from(f)),
        _ => None,
    }
}

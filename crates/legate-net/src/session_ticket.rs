//! Stateless TLS session resumption: the ticket keys of a `DownstreamTlsContext`
//! (`session_ticket_keys`, or those an SDS secret holds now: [`SdsTicketKeys`]), or, without
//! them, a random key made when the context is built (BoringSSL's default, which Envoy keeps).
//!
//! Envoy's key files carry 80 bytes each: a 16-byte name, a 32-byte HMAC key and a 32-byte AES
//! key. The first key seals new tickets and every key opens them, so keys rotate by putting
//! the new one first. Legate seals with AES-256-GCM under the AES key (the AEAD makes the HMAC
//! key unnecessary), so tickets are not interchangeable with Envoy's, only among Legate
//! processes and listeners that share the key files.
//!
//! A ticket is `name (16) || nonce (12) || ciphertext || tag (16)`. The additional data binds
//! the key name and the context's identity (its certificates and trusted CAs): a session is
//! only resumed by a context that would have accepted the same peer, as BoringSSL's session-id
//! context (which Envoy derives from the same inputs) ensures.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest::{Context, SHA256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use legate_core::tls::sds::{TICKET_KEY_LEN as KEY_LEN, TicketKeysSecret, check_ticket_key};

const NAME_LEN: usize = 16;
const AES_KEY_AT: usize = 48;
const TAG_LEN: usize = 16;

/// One key: its name (the ticket's first bytes) and the AEAD key.
struct TicketKey {
    name: [u8; NAME_LEN],
    key: LessSafeKey,
}

/// A context's ticket keys, sealing with the first.
pub struct TicketKeys {
    keys: Vec<TicketKey>,
    /// SHA-256 of the context's certificates and trusted CAs (the session-id context).
    context: [u8; 32],
    lifetime_secs: u32,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKeys")
            .field("keys", &self.keys.len())
            .field("lifetime_secs", &self.lifetime_secs)
            .finish_non_exhaustive()
    }
}

impl TicketKeys {
    /// Keys from `session_ticket_keys` (each exactly [`KEY_LEN`] bytes; the error is Envoy's).
    pub fn from_key_data<'a>(
        data: impl IntoIterator<Item = &'a [u8]>,
        context: [u8; 32],
        lifetime_secs: u32,
    ) -> Result<TicketKeys, String> {
        let mut keys = Vec::new();
        for d in data {
            keys.push(ticket_key(d)?);
        }
        Ok(TicketKeys {
            keys,
            context,
            lifetime_secs,
        })
    }

    /// One random key, for a context without `session_ticket_keys`.
    pub fn random(context: [u8; 32], lifetime_secs: u32) -> Result<TicketKeys, String> {
        let mut data = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut data)
            .map_err(|_| "no randomness for a session ticket key".to_string())?;
        TicketKeys::from_key_data([&data[..]], context, lifetime_secs)
    }

    fn aad(&self, name: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(NAME_LEN + self.context.len());
        aad.extend_from_slice(name);
        aad.extend_from_slice(&self.context);
        aad
    }
}

fn ticket_key(data: &[u8]) -> Result<TicketKey, String> {
    check_ticket_key(data)?;
    let mut name = [0u8; NAME_LEN];
    name.copy_from_slice(&data[..NAME_LEN]);
    let key = UnboundKey::new(&AES_256_GCM, &data[AES_KEY_AT..])
        .map_err(|_| "unusable session ticket key".to_string())?;
    Ok(TicketKey {
        name,
        key: LessSafeKey::new(key),
    })
}

/// A context's ticket keys from an SDS secret (`session_ticket_keys_sds_secret_config`): each
/// ticket is sealed and opened with the keys in force, so a rotation takes effect at once.
pub struct SdsTicketKeys {
    secret: Arc<TicketKeysSecret>,
    context: [u8; 32],
    lifetime_secs: u32,
    /// The keys made from the secret's version in force (by that version).
    made: ArcSwapOption<(Arc<Vec<Vec<u8>>>, TicketKeys)>,
}

impl std::fmt::Debug for SdsTicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdsTicketKeys")
            .field("secret", &self.secret.id.name)
            .finish_non_exhaustive()
    }
}

impl SdsTicketKeys {
    pub fn new(secret: Arc<TicketKeysSecret>, context: [u8; 32], lifetime_secs: u32) -> Self {
        SdsTicketKeys {
            secret,
            context,
            lifetime_secs,
            made: ArcSwapOption::empty(),
        }
    }

    /// The keys in force (`None` before the secret arrives).
    fn keys(&self) -> Option<Arc<(Arc<Vec<Vec<u8>>>, TicketKeys)>> {
        let current = self.secret.current()?;
        if let Some(made) = self.made.load_full()
            && Arc::ptr_eq(&made.0, &current)
        {
            return Some(made);
        }
        // The secret's keys were checked when it was installed.
        let keys = TicketKeys::from_key_data(
            current.iter().map(|k| &k[..]),
            self.context,
            self.lifetime_secs,
        )
        .ok()?;
        let made = Arc::new((current, keys));
        self.made.store(Some(made.clone()));
        Some(made)
    }
}

impl ProducesTickets for SdsTicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime_secs
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.keys()?.1.encrypt(plain)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        self.keys()?.1.decrypt(ticket)
    }
}

/// The session-id context of a server context: a digest of its certificates and its trusted
/// CAs, in order.
pub fn context_id<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut digest = Context::new(&SHA256);
    for p in parts {
        digest.update(&(p.len() as u64).to_be_bytes());
        digest.update(p);
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(digest.finish().as_ref());
    id
}

impl ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    fn lifetime(&self) -> u32 {
        self.lifetime_secs
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let key = self.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad(&key.name)),
                &mut sealed,
            )
            .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < NAME_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (name, rest) = ticket.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let key = self.keys.iter().find(|k| k.name == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(self.aad(name)), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(fill: u8) -> Vec<u8> {
        (0..KEY_LEN as u8).map(|i| i ^ fill).collect()
    }

    #[test]
    fn tickets_open_under_any_listed_key_and_only_in_the_same_context() {
        let (old, new) = (key(1), key(2));
        let sealing_old = TicketKeys::from_key_data([&old[..]], [7; 32], 60).unwrap();
        let rotated = TicketKeys::from_key_data([&new[..], &old[..]], [7; 32], 60).unwrap();
        let ticket = sealing_old.encrypt(b"session state").unwrap();
        assert_eq!(rotated.decrypt(&ticket).unwrap(), b"session state");
        // Sealed with the first key after rotation, which the old set does not have.
        let newer = rotated.encrypt(b"later").unwrap();
        assert_eq!(&newer[..NAME_LEN], &new[..NAME_LEN]);
        assert!(sealing_old.decrypt(&newer).is_none());
        let other_context = TicketKeys::from_key_data([&old[..]], [8; 32], 60).unwrap();
        assert!(other_context.decrypt(&ticket).is_none());
        let mut tampered = ticket.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(sealing_old.decrypt(&tampered).is_none());
        assert!(sealing_old.decrypt(&ticket[..20]).is_none());
    }

    #[test]
    fn key_length_is_checked_with_envoys_message() {
        let err = TicketKeys::from_key_data([&[0u8; 79][..]], [0; 32], 60).unwrap_err();
        assert_eq!(
            err,
            "Incorrect TLS session ticket key length. Length 79, expected length 80."
        );
    }
}

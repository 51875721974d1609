//! A key set: the usable keys of one JWKS document (or of inline keys), indexed by `kid`.

use std::collections::HashMap;

use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::key::{KeyError, VerifyingKey};

/// Most keys one set may hold; a larger JWKS is refused (it bounds memory and the work a
/// token without `kid` can cause).
pub const MAX_KEYS: usize = 100;
/// Most keys tried for a token without `kid`.
pub const MAX_KEYLESS_TRIES: usize = 10;

/// Why a key set document was refused as a whole.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeySetError {
    /// Not a JSON object with a `keys` array.
    #[error("not a JWKS document (a JSON object with a \"keys\" array): {0}")]
    NotJwks(String),
    /// More than [`MAX_KEYS`] keys.
    #[error("the key set has {0} keys, more than the {MAX_KEYS} accepted")]
    TooManyKeys(usize),
    /// Every key was refused; the reasons are listed.
    #[error("no usable signing key in the set ({0})")]
    NoUsableKeys(String),
    /// Stored keys that are neither a JWKS document nor PEM public keys.
    #[error(
        "neither a JWKS document (JSON with a \"keys\" array) nor PEM public keys (-----BEGIN PUBLIC KEY-----)"
    )]
    NotKeys,
    /// A PEM private key where public keys are expected.
    #[error(
        "PEM block {0} is a private key: store only the public key (whoever can read a private key can sign tokens)"
    )]
    PrivateKey(usize),
    /// A PEM block that is malformed or not a public key tollgate can use.
    #[error("PEM block {index} ({label}): {error}")]
    PemBlock {
        index: usize,
        label: String,
        error: KeyError,
    },
}

/// A refused key and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedKey {
    pub kid: Option<String>,
    pub error: KeyError,
}

/// The usable keys of one source.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<VerifyingKey>,
    by_kid: HashMap<String, Vec<usize>>,
    /// Keys that were skipped, kept for status and logs.
    pub rejected: Vec<RejectedKey>,
    /// Unique per set built in this process: what the verified-token cache checks against.
    version: u64,
    /// Digest of the JWKS document (its parsed, canonical form), when built from one.
    content: Option<[u8; 32]>,
}

static VERSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl KeySet {
    /// Builds a set from already parsed keys.
    pub fn from_keys(keys: Vec<VerifyingKey>) -> Self {
        let mut by_kid: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            if let Some(kid) = &key.kid {
                by_kid.entry(kid.clone()).or_default().push(i);
            }
        }
        KeySet {
            keys,
            by_kid,
            rejected: Vec::new(),
            version: VERSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            content: None,
        }
    }

    /// Parses a JWKS document (RFC 7517 §5). Unusable keys are skipped and reported; a set
    /// with no usable key at all is an error, so a bad publish never replaces good keys.
    pub fn from_jwks_json(bytes: &[u8]) -> Result<Self, KeySetError> {
        let doc: Value =
            serde_json::from_slice(bytes).map_err(|e| KeySetError::NotJwks(e.to_string()))?;
        Self::from_jwks_value(&doc)
    }

    /// Like [`Self::from_jwks_json`] for a document already parsed (inline `jwks`).
    pub fn from_jwks_value(doc: &Value) -> Result<Self, KeySetError> {
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| KeySetError::NotJwks("no \"keys\" array".into()))?;
        if keys.len() > MAX_KEYS {
            return Err(KeySetError::TooManyKeys(keys.len()));
        }
        let mut usable = Vec::new();
        let mut rejected = Vec::new();
        for jwk in keys {
            match VerifyingKey::from_jwk(jwk) {
                Ok(key) => usable.push(key),
                Err(error) => rejected.push(RejectedKey {
                    kid: jwk.get("kid").and_then(Value::as_str).map(str::to_owned),
                    error,
                }),
            }
        }
        if usable.is_empty() {
            let reasons: Vec<String> = rejected
                .iter()
                .map(|r| format!("{}: {}", r.kid.as_deref().unwrap_or("(no kid)"), r.error))
                .collect();
            let summary = if reasons.is_empty() {
                "the set is empty".to_string()
            } else {
                reasons.join("; ")
            };
            return Err(KeySetError::NoUsableKeys(summary));
        }
        let mut set = Self::from_keys(usable);
        set.rejected = rejected;
        set.content = serde_json::to_vec(doc)
            .ok()
            .map(|canonical| crate::jose::sha256(&canonical));
        Ok(set)
    }

    /// Public keys as stored in a Secret, a ConfigMap or a file: a JWKS document, or one or
    /// more PEM blocks (`PUBLIC KEY` or `RSA PUBLIC KEY`; PEM carries no `kid`, so these keys
    /// are tried for tokens whose `kid` no key has). A private key (a PEM `… PRIVATE KEY`
    /// block, or a JWK with private members) is refused: whoever can read where it is stored
    /// could sign tokens. JWKS keys that are refused are listed in `rejected`.
    pub fn from_stored(bytes: &[u8]) -> Result<Self, KeySetError> {
        let text = std::str::from_utf8(bytes).map_err(|_| KeySetError::NotKeys)?;
        let trimmed = text.trim_start_matches('\u{feff}').trim();
        if trimmed.starts_with('{') {
            return Self::from_jwks_json(trimmed.as_bytes());
        }
        let blocks = pem_blocks(trimmed);
        if blocks.is_empty() {
            return Err(KeySetError::NotKeys);
        }
        if blocks.len() > MAX_KEYS {
            return Err(KeySetError::TooManyKeys(blocks.len()));
        }
        let mut keys = Vec::with_capacity(blocks.len());
        for (index, (label, block)) in blocks.into_iter().enumerate() {
            let error = |error| KeySetError::PemBlock {
                index,
                label: label.to_string(),
                error,
            };
            if label.contains("PRIVATE KEY") {
                return Err(KeySetError::PrivateKey(index));
            }
            if label != "PUBLIC KEY" && label != "RSA PUBLIC KEY" {
                return Err(error(KeyError::Pem(
                    "expected PUBLIC KEY or RSA PUBLIC KEY (a certificate is not accepted: give its public key)".into(),
                )));
            }
            keys.push(VerifyingKey::from_pem(None, block).map_err(error)?);
        }
        Ok(Self::from_keys(keys))
    }

    /// This set's version: unique in the process, so a verified-token cache entry made with it
    /// is recognized as stale once the set is replaced.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether both sets were built from the same JWKS document (whatever its formatting).
    pub fn same_document(&self, other: &KeySet) -> bool {
        self.content.is_some() && self.content == other.content
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether some key was configured without a `kid`.
    pub fn has_keyless(&self) -> bool {
        self.keys.iter().any(|k| k.kid.is_none())
    }

    /// Whether any key has this `kid` (whatever its type).
    pub fn has_kid(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    /// The keys to try for a token, only those that fit `alg`:
    /// - a `kid` some key has: the keys with that `kid`;
    /// - a `kid` no key has: the keys configured without a `kid` (PEM keys, shared secrets);
    /// - no `kid`: every key.
    ///
    /// The last two are bounded to [`MAX_KEYLESS_TRIES`] keys.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a VerifyingKey> + 'a {
        let has_kid = kid.is_some();
        let indices: &[usize] = kid
            .and_then(|kid| self.by_kid.get(kid))
            .map_or(&[], Vec::as_slice);
        let by_kid = indices.iter().map(|i| &self.keys[*i]);
        let fallback = indices.is_empty();
        let others = self
            .keys
            .iter()
            .filter(move |k| fallback && (!has_kid || k.kid.is_none()))
            .take(MAX_KEYLESS_TRIES);
        by_kid.chain(others).filter(move |k| k.fits(alg))
    }

    /// All keys, for status and diagnostics.
    pub fn keys(&self) -> &[VerifyingKey] {
        &self.keys
    }
}

/// The PEM blocks of `text` as `(label, whole block)`; text between blocks is ignored, an
/// unterminated block ends the list.
fn pem_blocks(text: &str) -> Vec<(&str, &str)> {
    const BEGIN: &str = "-----BEGIN ";
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start + BEGIN.len()..];
        let Some(label_end) = after.find("-----") else {
            break;
        };
        let label = &after[..label_end];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = rest[start..].find(&end_marker) else {
            break;
        };
        let stop = start + end + end_marker.len();
        blocks.push((label, &rest[start..stop]));
        rest = &rest[stop..];
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n";

    #[test]
    fn stored_keys_are_jwks_or_pem_public_keys_never_private_keys() {
        use crate::fixtures::{EC, RSA};
        let ec_public = EC.public_pem().expect("EC public key");
        let other_public = RSA.public_pem().expect("RSA public key");
        let two = format!("{ec_public}\n# rotated in\n{other_public}");
        let set = KeySet::from_stored(two.as_bytes()).expect("two PEM keys");
        assert_eq!(set.len(), 2);
        assert!(set.has_keyless());

        let private = KeySet::from_stored(RSA_PRIVATE.as_bytes()).expect_err("private key");
        assert!(private.to_string().contains("private key"), "{private}");
        let ec_private = format!(
            "{ec_public}-----BEGIN EC PRIVATE KEY-----\nAA==\n-----END EC PRIVATE KEY-----\n"
        );
        assert!(matches!(
            KeySet::from_stored(ec_private.as_bytes()),
            Err(KeySetError::PrivateKey(1))
        ));
        let certificate = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----";
        assert!(KeySet::from_stored(certificate.as_bytes()).is_err());
        assert_eq!(
            KeySet::from_stored(b"just text").err(),
            Some(KeySetError::NotKeys)
        );
        assert_eq!(
            KeySet::from_stored(&[0xff, 0xfe]).err(),
            Some(KeySetError::NotKeys)
        );

        let jwks = serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "k1", "x": "AA", "y": "AA", "d": "AA"},
        ]});
        let refused = KeySet::from_stored(jwks.to_string().as_bytes()).expect_err("private JWK");
        assert!(
            refused.to_string().contains("private key material"),
            "{refused}"
        );
    }
}

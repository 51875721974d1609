//! API keys: static secrets a client sends in a header (or a query parameter), each standing
//! for an owner with scopes (docs/api-keys.md).
//!
//! ```text
//! Secret {key, owner, scopes} ─► KeyRecord::new: SHA-256(key), plaintext dropped
//!                                          │
//!            request's key ─► SHA-256 ─► HashMap<digest, KeyRecord> ─► constant-time compare
//!                                                   │                        of the digests
//!                                                   ▼
//!                            claims {sub: owner, scope: "a b", key_id} ─► requiredClaims, rules,
//!                                                                         when, forward
//! ```
//!
//! Only digests are kept. A lookup hashes the presented key first, so what the map compares
//! is a digest, never the key: how long a lookup takes can only tell an attacker how many
//! leading bytes of SHA-256(guess) match a stored digest, which says nothing useful about a
//! key (finding a guess whose digest shares a prefix does not bring the key closer). The final
//! comparison of the found digest runs in constant time anyway.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::decision::ClaimSet;

/// The shortest key accepted: 32 characters (e.g. 128 bits as hex, 192 bits as base64).
pub const MIN_KEY_LEN: usize = 32;
/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 512;
/// The most keys one policy holds.
pub const MAX_KEYS: usize = 10_000;
/// The longest owner and scopes values.
pub const MAX_OWNER_LEN: usize = 256;
pub const MAX_SCOPES_LEN: usize = 4096;

/// Why a key Secret cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No `key` data field.
    #[error("has no data field `key`")]
    Missing,
    /// The key is too short to be a secret.
    #[error(
        "its key is {0} characters long; at least {MIN_KEY_LEN} are required (e.g. `openssl rand -hex 32`)"
    )]
    TooShort(usize),
    /// The key is longer than any header should carry.
    #[error("its key is longer than {MAX_KEY_LEN} characters")]
    TooLong,
    /// The key has characters a header value or query parameter cannot carry unchanged.
    #[error("its key has characters other than visible ASCII (no spaces)")]
    BadCharacters,
    /// No `owner`, or not usable as a header value.
    #[error("needs a data field `owner`: visible ASCII or spaces, at most {MAX_OWNER_LEN} bytes")]
    Owner,
    /// `scopes` is not a space-separated list of visible ASCII words.
    #[error("its `scopes` must be scope words separated by spaces, at most {MAX_SCOPES_LEN} bytes")]
    Scopes,
}

impl KeyError {
    /// Bounded reason for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            KeyError::Missing => "key_missing",
            KeyError::TooShort(_) => "key_too_short",
            KeyError::TooLong => "key_too_long",
            KeyError::BadCharacters => "key_bad_characters",
            KeyError::Owner => "owner_invalid",
            KeyError::Scopes => "scopes_invalid",
        }
    }
}

/// The SHA-256 of a key.
pub fn digest(key: &[u8]) -> [u8; 32] {
    crate::jose::sha256(key)
}

/// The key id: the first 8 hex characters of the key's SHA-256. Not secret (it names the key
/// in logs, traces and denials), and too short to help find the key.
pub fn key_id(digest: &[u8; 32]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(8);
    for b in &digest[..4] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// One accepted key, without its plaintext.
#[derive(Clone, Debug)]
pub struct KeyRecord {
    digest: [u8; 32],
    /// [`key_id`] of the key.
    pub id: String,
    /// Where it came from (`namespace/name` of the Secret, or the file).
    pub source: String,
    pub owner: String,
    pub scopes: Vec<String>,
    /// What the rules see: `sub`, `scope`, `key_id`.
    pub claims: ClaimSet,
}

impl KeyRecord {
    /// A record from a key Secret's data fields; the plaintext key is only hashed.
    pub fn new(source: String, data: &KeyData<'_>) -> Result<KeyRecord, KeyError> {
        let key = data.key.ok_or(KeyError::Missing)?;
        // A Secret written with a trailing newline (`echo … | base64`) means the same key.
        let key = key.strip_suffix(b"\n").unwrap_or(key);
        let key = key.strip_suffix(b"\r").unwrap_or(key);
        if key.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong);
        }
        if !key.iter().all(|b| b.is_ascii_graphic()) {
            return Err(KeyError::BadCharacters);
        }
        if key.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort(key.len()));
        }
        let owner = data
            .owner
            .and_then(|o| std::str::from_utf8(o).ok())
            .map(str::trim)
            .filter(|o| {
                !o.is_empty()
                    && o.len() <= MAX_OWNER_LEN
                    && o.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
            })
            .ok_or(KeyError::Owner)?
            .to_string();
        let scopes = match data.scopes {
            None => Vec::new(),
            Some(raw) => {
                let text = std::str::from_utf8(raw).map_err(|_| KeyError::Scopes)?;
                if text.len() > MAX_SCOPES_LEN
                    || !text
                        .bytes()
                        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
                {
                    return Err(KeyError::Scopes);
                }
                let mut scopes: Vec<String> =
                    text.split_ascii_whitespace().map(str::to_string).collect();
                scopes.dedup();
                scopes
            }
        };
        let digest = digest(key);
        let id = key_id(&digest);
        let mut claims = Map::new();
        claims.insert("sub".into(), Value::String(owner.clone()));
        claims.insert("scope".into(), Value::String(scopes.join(" ")));
        claims.insert("key_id".into(), Value::String(id.clone()));
        Ok(KeyRecord {
            digest,
            id,
            source,
            owner,
            scopes,
            claims: ClaimSet::Parsed(Arc::new(claims)),
        })
    }
}

/// The data fields of one key Secret.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyData<'a> {
    pub key: Option<&'a [u8]>,
    pub owner: Option<&'a [u8]>,
    pub scopes: Option<&'a [u8]>,
}

/// What a request with both a key and a token gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WithToken {
    /// 400 `api_key_ambiguous`.
    #[default]
    Refuse,
    /// The token is judged; the key is removed.
    Token,
}

/// A policy's compiled API keys.
#[derive(Clone, Debug, Default)]
pub struct ApiKeys {
    /// Lower-case header carrying the key, if any.
    pub header: Option<String>,
    /// Query parameter carrying the key, if any.
    pub query: Option<String>,
    pub with_token: WithToken,
    keys: HashMap<[u8; 32], KeyRecord>,
}

/// Why two records cannot be in one set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the same key as {0}")]
pub struct Duplicate(pub String);

impl ApiKeys {
    pub fn new(header: Option<String>, query: Option<String>, with_token: WithToken) -> Self {
        ApiKeys {
            header,
            query,
            with_token,
            keys: HashMap::new(),
        }
    }

    /// Adds a key; the same key twice (under two owners, say) is refused.
    pub fn insert(&mut self, record: KeyRecord) -> Result<(), Duplicate> {
        if let Some(other) = self.keys.get(&record.digest) {
            return Err(Duplicate(other.source.clone()));
        }
        self.keys.insert(record.digest, record);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The record of a presented key, looked up by the key's digest (see the module's docs).
    pub fn lookup(&self, digest: &[u8; 32]) -> Option<&KeyRecord> {
        let record = self.keys.get(digest)?;
        aws_lc_rs::constant_time::verify_slices_are_equal(&record.digest, digest)
            .ok()
            .map(|()| record)
    }

    /// Where the key is read, in words.
    pub fn describe(&self) -> String {
        match (&self.header, &self.query) {
            (Some(h), Some(q)) => format!("the {h} header or the {q} query parameter"),
            (Some(h), None) => format!("the {h} header"),
            (None, Some(q)) => format!("the {q} query parameter"),
            (None, None) => "nowhere".into(),
        }
    }

    /// The `WWW-Authenticate` parameters saying where the key goes.
    pub fn challenge_params(&self) -> Vec<String> {
        let mut params = Vec::with_capacity(2);
        if let Some(h) = &self.header {
            params.push(format!("header=\"{h}\""));
        }
        if let Some(q) = &self.query {
            params.push(format!("query=\"{q}\""));
        }
        params
    }
}

#[cfg(test)]
mod tests;

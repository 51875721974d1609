//! Compact JWE (RFC 7516) decryption, for access tokens that an identity provider signs and
//! then encrypts to the resource server (nested JWTs, RFC 7519 §5.2, `cty: JWT`).
//!
//! ```text
//! header.encrypted_key.iv.ciphertext.tag
//!   │         │          └──────┴───────┴─► content: AES-GCM or AES-CBC + HMAC (tag first)
//!   │         └─► key management: RSA-OAEP(-256), RSA1_5 (opt-in), ECDH-ES(+A128KW/A256KW),
//!   │                              A128KW/A256KW, dir  ──► CEK
//!   └─► alg, enc, kid (chooses the key), zip (refused), crit (refused)
//! ```
//!
//! Composed from aws-lc primitives and checked against the RFC 7520 examples. Nothing in the
//! token chooses a key from outside the policy's own keys, and every failure after the key was
//! chosen looks the same ([`JweError::Failed`]), so the answer is no oracle.

pub mod alg;
pub mod content;
mod der;
pub mod gate;
pub mod key;

use serde_json::Value;

use crate::decision::Reason;
use crate::jose::{self, B64, Claims, MAX_TOKEN_BYTES};

pub use alg::{ContentEncryption, KeyManagement};
pub use key::{DecryptionKey, EncryptionKey, KeyError, parse_keys};

use base64::Engine as _;

/// Why an encrypted token could not be decrypted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JweError {
    /// Not a well-formed compact JWE.
    #[error("{0}")]
    Malformed(String),
    /// An `alg` or `enc` tollgate does not implement.
    #[error("{member} {name:?} is not supported; use {supported}")]
    Unsupported {
        member: &'static str,
        name: String,
        supported: &'static str,
    },
    /// `RSA1_5` without `decryption.allowRsa1_5`.
    #[error(
        "alg RSA1_5 is refused: it is open to padding-oracle attacks (set decryption.allowRsa1_5 only if the issuer cannot use RSA-OAEP)"
    )]
    Rsa1_5NotAllowed,
    /// A compressed payload (`zip`).
    #[error("compressed tokens (zip {0:?}) are refused")]
    Compressed(String),
    /// `crit` names extensions tollgate does not implement.
    #[error("the header marks {0:?} as critical, which is not supported")]
    CriticalHeader(Vec<String>),
    /// No configured key has the token's `kid` and fits its `alg`/`enc`.
    #[error("no decryption key {} can decrypt alg {alg} / enc {enc}", kid.as_ref().map_or_else(|| "(the token has no kid)".to_string(), |k| format!("{k:?}")))]
    KeyNotFound {
        kid: Option<String>,
        alg: String,
        enc: String,
    },
    /// Keys were tried and none decrypted the token: a wrong key, or a tampered token.
    #[error("decryption failed: the token was encrypted to another key, or altered")]
    Failed,
    /// Too many encrypted tokens wait for a private-key operation ([`gate`]).
    #[error("{0} encrypted tokens already wait to be decrypted; try again shortly")]
    Overloaded(usize),
}

impl JweError {
    pub fn reason(&self) -> Reason {
        match self {
            JweError::Malformed(_) => Reason::TokenMalformed,
            JweError::Unsupported { .. } | JweError::Rsa1_5NotAllowed | JweError::Compressed(_) => {
                Reason::AlgorithmNotAllowed
            }
            JweError::CriticalHeader(_) => Reason::UnsupportedCriticalHeader,
            JweError::KeyNotFound { .. } => Reason::DecryptionKeyNotFound,
            JweError::Failed => Reason::DecryptionFailed,
            JweError::Overloaded(_) => Reason::DecryptionOverloaded,
        }
    }
}

/// The JOSE header of a JWE.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JweHeader {
    pub alg: String,
    pub enc: String,
    pub kid: Option<String>,
    pub cty: Option<String>,
    pub typ: Option<String>,
    pub zip: Option<String>,
    pub crit: Option<Vec<String>>,
    /// The whole decoded header.
    pub object: Claims,
}

impl JweHeader {
    fn from_object(object: Claims) -> Result<Self, JweError> {
        let string = |name: &str| -> Result<Option<String>, JweError> {
            match object.get(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(JweError::Malformed(format!(
                    "header member {name:?} must be a string"
                ))),
            }
        };
        let required = |name: &str| {
            string(name)?.ok_or_else(|| {
                JweError::Malformed(format!("the encrypted token's header has no {name}"))
            })
        };
        let crit = match object.get("crit") {
            None => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|item| item.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| JweError::Malformed("crit must list strings".into()))?,
            ),
            Some(_) => return Err(JweError::Malformed("crit must be an array".into())),
        };
        Ok(JweHeader {
            alg: required("alg")?,
            enc: required("enc")?,
            kid: string("kid")?,
            cty: string("cty")?,
            typ: string("typ")?,
            zip: string("zip")?,
            crit,
            object,
        })
    }

    /// Whether the header says the content is a JWT (`cty: JWT`, case-insensitive, RFC 7519
    /// §5.2).
    pub fn says_nested_jwt(&self) -> bool {
        self.cty
            .as_deref()
            .is_some_and(|cty| cty.eq_ignore_ascii_case("JWT"))
    }
}

/// A parsed compact JWE, not yet decrypted.
#[derive(Debug)]
pub struct Compact<'a> {
    pub header: JweHeader,
    /// The base64url protected header: the additional authenticated data.
    protected: &'a str,
    encrypted_key: Vec<u8>,
    iv: Vec<u8>,
    ciphertext: Vec<u8>,
    tag: Vec<u8>,
}

/// Whether `token` has the form of a compact JWE: five base64url segments.
pub fn is_compact_jwe(token: &str) -> bool {
    jose::is_compact(token, 5)
}

/// Splits and decodes a compact JWE.
pub fn parse(token: &str) -> Result<Compact<'_>, JweError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JweError::Malformed(format!(
            "the token is {} bytes, more than the {MAX_TOKEN_BYTES}-byte limit",
            token.len()
        )));
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [protected, encrypted_key, iv, ciphertext, tag] = parts[..] else {
        return Err(JweError::Malformed(format!(
            "the token has {} segments; an encrypted JWT has 5",
            parts.len()
        )));
    };
    let decode = |segment: &str, name: &str| {
        B64.decode(segment)
            .map_err(|_| JweError::Malformed(format!("the JWE {name} is not valid base64url")))
    };
    let object = jose::decode_object(protected, "header")
        .map_err(|e| JweError::Malformed(format!("encrypted token: {e}")))?;
    Ok(Compact {
        header: JweHeader::from_object(object)?,
        protected,
        encrypted_key: decode(encrypted_key, "encrypted key")?,
        iv: decode(iv, "iv")?,
        ciphertext: decode(ciphertext, "ciphertext")?,
        tag: decode(tag, "tag")?,
    })
}

/// A decrypted token.
#[derive(Debug)]
pub struct Decrypted {
    pub header: JweHeader,
    pub plaintext: Vec<u8>,
    /// Which configured key decrypted it (its `kid`, or its position).
    pub key: String,
}

/// Most keys tried for a token whose `kid` names none of them (or that has no `kid`).
pub const MAX_UNNAMED_TRIES: usize = 2;

/// A policy's decryption keys.
#[derive(Debug, Clone)]
pub struct Decryptor {
    keys: Vec<DecryptionKey>,
    allow_rsa1_5: bool,
}

const SUPPORTED_ALG: &str =
    "RSA-OAEP, RSA-OAEP-256, ECDH-ES, ECDH-ES+A128KW, ECDH-ES+A256KW, A128KW, A256KW or dir";
const SUPPORTED_ENC: &str = "A128CBC-HS256, A192CBC-HS384, A256CBC-HS512, A128GCM or A256GCM";

impl Decryptor {
    pub fn new(keys: Vec<DecryptionKey>, allow_rsa1_5: bool) -> Self {
        Decryptor { keys, allow_rsa1_5 }
    }

    pub fn keys(&self) -> &[DecryptionKey] {
        &self.keys
    }

    pub fn allows_rsa1_5(&self) -> bool {
        self.allow_rsa1_5
    }

    /// Decrypts a compact JWE with the key its `kid` names (or, without a match, the keys
    /// without a `kid` that fit the algorithms; a token without `kid`, any key that fits), trying
    /// at most [`MAX_UNNAMED_TRIES`] keys that the token does not name: each try is a private-key
    /// operation an unauthenticated client can ask for.
    /// Whether decrypting `token` takes a private-key operation (RSA, ECDH), which
    /// [`gate`] bounds; symmetric key management does not.
    pub fn uses_private_key(token: &str) -> bool {
        parse(token)
            .ok()
            .and_then(|jwe| KeyManagement::parse(&jwe.header.alg))
            .is_some_and(|alg| {
                !matches!(
                    alg,
                    KeyManagement::A128Kw | KeyManagement::A256Kw | KeyManagement::Dir
                )
            })
    }

    pub fn decrypt(&self, token: &str) -> Result<Decrypted, JweError> {
        let jwe = parse(token)?;
        let header = &jwe.header;
        let alg = KeyManagement::parse(&header.alg).ok_or_else(|| JweError::Unsupported {
            member: "alg",
            name: header.alg.clone(),
            supported: SUPPORTED_ALG,
        })?;
        let enc = ContentEncryption::parse(&header.enc).ok_or_else(|| JweError::Unsupported {
            member: "enc",
            name: header.enc.clone(),
            supported: SUPPORTED_ENC,
        })?;
        if alg == KeyManagement::Rsa1_5 && !self.allow_rsa1_5 {
            return Err(JweError::Rsa1_5NotAllowed);
        }
        if let Some(zip) = &header.zip {
            return Err(JweError::Compressed(zip.clone()));
        }
        if let Some(crit) = &header.crit {
            return Err(JweError::CriticalHeader(crit.clone()));
        }
        if jwe.iv.len() != enc.iv_len() || jwe.tag.len() != enc.tag_len() {
            return Err(JweError::Malformed(format!(
                "{enc} uses a {}-byte iv and a {}-byte tag; the token has {} and {}",
                enc.iv_len(),
                enc.tag_len(),
                jwe.iv.len(),
                jwe.tag.len()
            )));
        }
        let party = |name: &str| -> Result<Vec<u8>, JweError> {
            match header.object.get(name) {
                None => Ok(Vec::new()),
                Some(Value::String(s)) => B64
                    .decode(s)
                    .map_err(|_| JweError::Malformed(format!("{name} is not base64url"))),
                Some(_) => Err(JweError::Malformed(format!("{name} must be a string"))),
            }
        };
        let (apu, apv) = (party("apu")?, party("apv")?);
        let fitting = || {
            self.keys
                .iter()
                .enumerate()
                .filter(|(_, key)| key.fits(alg, enc))
        };
        // The key the token names; failing that, the keys without a kid. A token without a
        // kid may be for any key that fits.
        let candidates: Vec<_> = match &header.kid {
            Some(kid) => {
                let named: Vec<_> = fitting()
                    .filter(|(_, key)| key.kid.as_deref() == Some(kid.as_str()))
                    .collect();
                if named.is_empty() {
                    fitting().filter(|(_, key)| key.kid.is_none()).collect()
                } else {
                    named
                }
            }
            None => fitting().collect(),
        };
        let named = header.kid.as_deref().is_some_and(|kid| {
            candidates
                .iter()
                .any(|(_, key)| key.kid.as_deref() == Some(kid))
        });
        let candidates: Vec<_> = if named {
            candidates
        } else {
            candidates.into_iter().take(MAX_UNNAMED_TRIES).collect()
        };
        if candidates.is_empty() {
            return Err(JweError::KeyNotFound {
                kid: header.kid.clone(),
                alg: header.alg.clone(),
                enc: header.enc.clone(),
            });
        }
        let epk = header.object.get("epk");
        for (index, key) in candidates {
            let Ok(cek) = key.unwrap_cek(alg, enc, epk, (&apu, &apv), &jwe.encrypted_key) else {
                continue;
            };
            if let Ok(plaintext) = content::decrypt(
                enc,
                &cek,
                jwe.protected.as_bytes(),
                &jwe.iv,
                &jwe.ciphertext,
                &jwe.tag,
            ) {
                return Ok(Decrypted {
                    header: jwe.header,
                    plaintext,
                    key: key
                        .kid
                        .as_ref()
                        .map_or_else(|| format!("#{}", index + 1), |kid| format!("{kid:?}")),
                });
            }
        }
        Err(JweError::Failed)
    }
}

/// Encrypts `plaintext` to `to` as a compact JWE; `cty` is set for nested JWTs.
pub fn encrypt(
    plaintext: &[u8],
    to: &EncryptionKey,
    alg: KeyManagement,
    enc: ContentEncryption,
    cty: Option<&str>,
) -> Result<String, JweError> {
    let failed = |_| JweError::Failed;
    let wrapped = to.wrap_new_cek(alg, enc).map_err(failed)?;
    let mut header = serde_json::Map::new();
    header.insert("alg".into(), alg.name().into());
    header.insert("enc".into(), enc.name().into());
    if let Some(kid) = &to.kid {
        header.insert("kid".into(), kid.clone().into());
    }
    if let Some(cty) = cty {
        header.insert("cty".into(), cty.into());
    }
    header.extend(wrapped.header);
    let protected = B64.encode(Value::Object(header).to_string());
    let sealed = content::encrypt(enc, &wrapped.cek, protected.as_bytes(), plaintext)
        .map_err(|_| JweError::Failed)?;
    Ok(format!(
        "{protected}.{}.{}.{}.{}",
        B64.encode(wrapped.encrypted_key),
        B64.encode(sealed.iv),
        B64.encode(sealed.ciphertext),
        B64.encode(sealed.tag)
    ))
}

#[cfg(test)]
mod tests;

//! One verification key: parsed once from a JWK, a PEM block or a shared secret, checked for
//! strength, and bound to the algorithms it may verify.

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ED25519, UnparsedPublicKey,
};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use crate::jose::B64;

/// Smallest RSA modulus accepted (NIST SP 800-131A).
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted (bounds verification cost).
pub const MAX_RSA_BITS: usize = 8192;

/// Why a key was refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The JWK is not a JSON object of the expected shape.
    #[error("not a valid JWK: {0}")]
    Shape(String),
    /// `kty` is not RSA, EC or OKP.
    #[error("unsupported key type {0:?}")]
    UnsupportedType(String),
    /// A symmetric (`oct`) key in a key set; HMAC secrets come only from `sharedSecret`.
    #[error("symmetric (oct) keys are not accepted from a key set; configure sharedSecret instead")]
    Symmetric,
    /// `use: enc` or `key_ops` without `verify`.
    #[error("the key is not for signature verification (use/key_ops)")]
    NotForSignatures,
    /// A member is missing or not base64url.
    #[error("member {0:?} is missing or not base64url")]
    Encoding(&'static str),
    /// RSA modulus too small or too large.
    #[error("RSA key of {0} bits is outside the accepted {MIN_RSA_BITS}..={MAX_RSA_BITS} bits")]
    RsaSize(usize),
    /// RSA public exponent even, below 65537 or above 2^32.
    #[error("RSA public exponent is not acceptable (must be odd, 65537 <= e < 2^32)")]
    RsaExponent,
    /// `crv` not P-256, P-384 or Ed25519.
    #[error("unsupported curve {0:?}")]
    UnsupportedCurve(String),
    /// The point is not on the curve, or has the wrong length.
    #[error("the public key is not a valid point on {0}")]
    InvalidPoint(&'static str),
    /// The JWK's `alg` cannot be used with its key type, or is not a signature algorithm.
    #[error("the key's alg {0:?} does not fit its key type")]
    AlgorithmMismatch(String),
    /// A PEM block that is not a public key tollgate can use.
    #[error("not a usable PEM public key: {0}")]
    Pem(String),
    /// The RSA modulus has the ROCA fingerprint: its private key can be computed from it.
    #[error(
        "the RSA modulus has the ROCA fingerprint (CVE-2017-15361, Infineon RSALib): its private key can be computed from the public key; replace the key at the issuer"
    )]
    Roca,
    /// A key set publishes private key material: whoever fetched it can sign tokens.
    #[error(
        "the key set publishes private key material ({0}): anyone who fetched it can sign tokens with it; the key is refused — replace it at the issuer and publish public keys only"
    )]
    PrivateMaterial(&'static str),
    /// An HMAC secret shorter than the smallest hash (32 bytes for HS256, RFC 7518 §3.2).
    #[error("shared secret of {0} bytes is too short (at least 32 bytes)")]
    SecretTooShort(usize),
}

/// The kind of key, with what decides which algorithms it may verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Rsa { bits: usize },
    P256,
    P384,
    Ed25519,
    Hmac { len: usize },
}

impl KeyKind {
    pub fn describe(&self) -> String {
        match self {
            KeyKind::Rsa { bits } => format!("RSA-{bits}"),
            KeyKind::P256 => "EC P-256".into(),
            KeyKind::P384 => "EC P-384".into(),
            KeyKind::Ed25519 => "Ed25519".into(),
            KeyKind::Hmac { len } => format!("HMAC secret ({len} bytes)"),
        }
    }
}

/// A parsed, strength-checked verification key.
#[derive(Clone)]
pub struct VerifyingKey {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The algorithm the key's own JWK `alg` pins it to, if any.
    pub alg: Option<Algorithm>,
    decoding: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// The JWK members tollgate reads; everything else (x5c, x5t, …) is ignored.
#[derive(Deserialize)]
struct JwkFields {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

fn b64_member(value: &Option<String>, name: &'static str) -> Result<Vec<u8>, KeyError> {
    let text = value.as_deref().ok_or(KeyError::Encoding(name))?;
    B64.decode(text).map_err(|_| KeyError::Encoding(name))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

fn bit_len(bytes: &[u8]) -> usize {
    let bytes = strip_leading_zeros(bytes);
    match bytes.first() {
        None => 0,
        Some(first) => bytes.len() * 8 - first.leading_zeros() as usize,
    }
}

impl VerifyingKey {
    /// Parses one JWK (RFC 7517) from a key set.
    pub fn from_jwk(value: &serde_json::Value) -> Result<Self, KeyError> {
        let jwk: JwkFields =
            serde_json::from_value(value.clone()).map_err(|e| KeyError::Shape(e.to_string()))?;
        // A private key in a public set is a leaked key: verifying with it proves nothing.
        if let Some(member) = ["d", "p", "q", "dp", "dq", "qi", "oth"]
            .into_iter()
            .find(|m| value.get(*m).is_some())
        {
            return Err(KeyError::PrivateMaterial(member));
        }
        if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
            return Err(KeyError::NotForSignatures);
        }
        if let Some(ops) = &jwk.key_ops
            && !ops.iter().any(|op| op == "verify")
        {
            return Err(KeyError::NotForSignatures);
        }
        let key = match jwk.kty.as_str() {
            "RSA" => {
                let n = b64_member(&jwk.n, "n")?;
                let e = b64_member(&jwk.e, "e")?;
                Self::rsa(jwk.kid.clone(), &n, &e)?
            }
            "EC" => {
                let crv = jwk.crv.clone().unwrap_or_default();
                let x = b64_member(&jwk.x, "x")?;
                let y = b64_member(&jwk.y, "y")?;
                let (kind, size, name) = match crv.as_str() {
                    "P-256" => (KeyKind::P256, 32, "P-256"),
                    "P-384" => (KeyKind::P384, 48, "P-384"),
                    _ => return Err(KeyError::UnsupportedCurve(crv)),
                };
                if x.len() != size || y.len() != size {
                    return Err(KeyError::InvalidPoint(name));
                }
                let mut point = Vec::with_capacity(1 + 2 * size);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Self::ec_point(jwk.kid.clone(), kind, point)?
            }
            "OKP" => {
                let crv = jwk.crv.clone().unwrap_or_default();
                if crv != "Ed25519" {
                    return Err(KeyError::UnsupportedCurve(crv));
                }
                let x = b64_member(&jwk.x, "x")?;
                Self::ed25519(jwk.kid.clone(), x)?
            }
            "oct" => return Err(KeyError::Symmetric),
            other => return Err(KeyError::UnsupportedType(other.to_string())),
        };
        match jwk.alg {
            None => Ok(key),
            Some(name) => {
                let alg: Algorithm = name
                    .parse()
                    .map_err(|_| KeyError::AlgorithmMismatch(name.clone()))?;
                if !key.kind_fits(alg) {
                    return Err(KeyError::AlgorithmMismatch(name));
                }
                Ok(VerifyingKey {
                    alg: Some(alg),
                    ..key
                })
            }
        }
    }

    /// An RSA key from its big-endian modulus and exponent.
    pub fn rsa(kid: Option<String>, n: &[u8], e: &[u8]) -> Result<Self, KeyError> {
        let bits = bit_len(n);
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(KeyError::RsaSize(bits));
        }
        let e = strip_leading_zeros(e);
        if e.len() > 4 || e.last().is_none_or(|b| b & 1 == 0) {
            return Err(KeyError::RsaExponent);
        }
        let exponent = e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        if exponent < 65537 {
            return Err(KeyError::RsaExponent);
        }
        if super::roca::has_roca_fingerprint(n) {
            return Err(KeyError::Roca);
        }
        Ok(VerifyingKey {
            kid,
            kind: KeyKind::Rsa { bits },
            alg: None,
            decoding: DecodingKey::from_rsa_raw_components(strip_leading_zeros(n), e),
        })
    }

    fn ec_point(kid: Option<String>, kind: KeyKind, point: Vec<u8>) -> Result<Self, KeyError> {
        let (alg, name) = match kind {
            KeyKind::P256 => (&ECDSA_P256_SHA256_FIXED, "P-256"),
            _ => (&ECDSA_P384_SHA384_FIXED, "P-384"),
        };
        UnparsedPublicKey::new(alg, &point)
            .parse()
            .map_err(|_| KeyError::InvalidPoint(name))?;
        Ok(VerifyingKey {
            kid,
            kind,
            alg: None,
            decoding: DecodingKey::from_ec_der(&point),
        })
    }

    fn ed25519(kid: Option<String>, x: Vec<u8>) -> Result<Self, KeyError> {
        if x.len() != 32 {
            return Err(KeyError::InvalidPoint("Ed25519"));
        }
        UnparsedPublicKey::new(&ED25519, &x)
            .parse()
            .map_err(|_| KeyError::InvalidPoint("Ed25519"))?;
        Ok(VerifyingKey {
            kid,
            kind: KeyKind::Ed25519,
            alg: None,
            decoding: DecodingKey::from_ed_der(&x),
        })
    }

    /// A public key in PEM (`PUBLIC KEY` SPKI or `RSA PUBLIC KEY` PKCS#1).
    pub fn from_pem(kid: Option<String>, pem: &str) -> Result<Self, KeyError> {
        if let Ok(rsa) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
            let jsonwebtoken::DecodingKeyKind::SecretOrDer(der) = rsa.kind() else {
                return Err(KeyError::Pem("unexpected RSA key form".into()));
            };
            let public = aws_lc_rs::rsa::PublicKey::from_der(der)
                .map_err(|e| KeyError::Pem(e.to_string()))?;
            let parts = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(&public);
            return Self::rsa(kid, &parts.n, &parts.e);
        }
        if let Ok(ec) = DecodingKey::from_ec_pem(pem.as_bytes()) {
            let jsonwebtoken::DecodingKeyKind::SecretOrDer(point) = ec.kind() else {
                return Err(KeyError::Pem("unexpected EC key form".into()));
            };
            let point = point.clone();
            let kind = match point.len() {
                65 => KeyKind::P256,
                97 => KeyKind::P384,
                _ => {
                    return Err(KeyError::UnsupportedCurve(format!(
                        "{}-byte point",
                        point.len()
                    )));
                }
            };
            return Self::ec_point(kid, kind, point);
        }
        match DecodingKey::from_ed_pem(pem.as_bytes()) {
            Ok(ed) => match ed.kind() {
                jsonwebtoken::DecodingKeyKind::SecretOrDer(x) => Self::ed25519(kid, x.clone()),
                jsonwebtoken::DecodingKeyKind::RsaModulusExponent { .. } => {
                    Err(KeyError::Pem("unexpected Ed25519 key form".into()))
                }
            },
            Err(e) => Err(KeyError::Pem(e.to_string())),
        }
    }

    /// An HMAC shared secret (HS256 needs >= 32 bytes, HS384 >= 48, HS512 >= 64).
    pub fn from_secret(kid: Option<String>, secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < 32 {
            return Err(KeyError::SecretTooShort(secret.len()));
        }
        Ok(VerifyingKey {
            kid,
            kind: KeyKind::Hmac { len: secret.len() },
            alg: None,
            decoding: DecodingKey::from_secret(secret),
        })
    }

    fn kind_fits(&self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match (self.kind, alg) {
            (KeyKind::Rsa { .. }, RS256 | RS384 | RS512 | PS256 | PS384 | PS512) => true,
            (KeyKind::P256, ES256) | (KeyKind::P384, ES384) | (KeyKind::Ed25519, EdDSA) => true,
            (KeyKind::Hmac { len }, HS256) => len >= 32,
            (KeyKind::Hmac { len }, HS384) => len >= 48,
            (KeyKind::Hmac { len }, HS512) => len >= 64,
            _ => false,
        }
    }

    /// Whether this key may verify a token signed with `alg`: the key type fits the algorithm
    /// (no RSA-public-key-as-HMAC-secret confusion) and the JWK's own `alg`, if any, agrees.
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.kind_fits(alg) && self.alg.is_none_or(|pinned| pinned == alg)
    }

    /// Verifies `signature` (base64url) over `signing_input`. Call only when [`Self::fits`].
    pub fn verify(&self, alg: Algorithm, signing_input: &[u8], signature: &str) -> bool {
        self.fits(alg)
            && jsonwebtoken::crypto::verify(signature, signing_input, &self.decoding, alg)
                .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests;

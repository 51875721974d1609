//! Decryption keys (private RSA, EC and X25519 keys, or shared AES keys) read from PEM or JWK,
//! each bound to the key-management algorithms its type allows, and the matching public
//! [`EncryptionKey`] for issuing encrypted tokens.

use std::sync::Arc;

use aws_lc_rs::agreement::{self, UnparsedPublicKey};
use aws_lc_rs::key_wrap::{self, AesKek, KeyWrap as _};
use aws_lc_rs::rsa::{
    OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepAlgorithm, OaepPrivateDecryptingKey,
    OaepPublicEncryptingKey, Pkcs1PrivateDecryptingKey, Pkcs1PublicEncryptingKey,
    PrivateDecryptingKey, PublicEncryptingKey,
};
use base64::Engine as _;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use serde::Deserialize;
use serde_json::Value;

use super::alg::{ContentEncryption, KeyManagement};
use super::der;
use crate::jose::B64;

/// Most keys one secret may hold.
pub const MAX_KEYS: usize = 16;

/// Why a decryption key was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Neither PEM nor a JSON JWK / JWK set.
    #[error("not a PEM private key, a JWK or a JWK set")]
    Format,
    /// A PEM block that is not a usable private key.
    #[error("PEM: {0}")]
    Pem(String),
    /// The JWK is not a JSON object of the expected shape.
    #[error("not a valid JWK: {0}")]
    Shape(String),
    /// A JWK without the private members decryption needs.
    #[error("the {0} JWK has no private member {1:?}; decryption needs the private key")]
    NotPrivate(&'static str, &'static str),
    /// A member is not base64url.
    #[error("member {0:?} is not base64url")]
    Encoding(&'static str),
    /// `kty`/`crv` tollgate cannot decrypt with.
    #[error("unsupported key type {0}")]
    Unsupported(String),
    /// aws-lc refused the key (RSA outside 2048..=8192 bits, inconsistent components, point
    /// not on the curve).
    #[error(
        "the {0} key is not acceptable (RSA keys must have 2048 to 8192 bits; EC points must be on the curve)"
    )]
    Rejected(&'static str),
    /// The private key does not match the public members given with it.
    #[error("the private key does not match its public members x/y")]
    Mismatch,
    /// `use` is not `enc`, or `key_ops` lacks `decrypt`/`unwrapKey`.
    #[error("the key is not for encryption (use/key_ops)")]
    NotForEncryption,
    /// The JWK's `alg` is not a supported key-management algorithm for its type.
    #[error("the key's alg {0:?} is not a key-management algorithm its type supports")]
    AlgorithmMismatch(String),
    /// A shared key of a length no algorithm uses.
    #[error(
        "a shared key of {0} bytes fits no algorithm (16 or 32 for A128KW/A256KW; 16, 32, 48 or 64 for dir)"
    )]
    OctLength(usize),
    /// More keys than [`MAX_KEYS`].
    #[error("more than {MAX_KEYS} keys")]
    TooMany,
    /// Nothing found.
    #[error("no key found")]
    Empty,
}

/// An elliptic curve for ECDH-ES.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
    P521,
    X25519,
}

impl Curve {
    fn from_crv(crv: &str) -> Option<Self> {
        match crv {
            "P-256" => Some(Curve::P256),
            "P-384" => Some(Curve::P384),
            "P-521" => Some(Curve::P521),
            "X25519" => Some(Curve::X25519),
            _ => None,
        }
    }

    pub fn crv(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
            Curve::X25519 => "X25519",
        }
    }

    fn agreement(self) -> &'static agreement::Algorithm {
        match self {
            Curve::P256 => &agreement::ECDH_P256,
            Curve::P384 => &agreement::ECDH_P384,
            Curve::P521 => &agreement::ECDH_P521,
            Curve::X25519 => &agreement::X25519,
        }
    }

    /// Bytes per coordinate (and private scalar).
    fn size(self) -> usize {
        match self {
            Curve::P256 | Curve::X25519 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    /// The peer point of an `epk` (or public) JWK in the form aws-lc reads.
    pub(super) fn public_point(self, jwk: &Value) -> Option<Vec<u8>> {
        let object = jwk.as_object()?;
        let crv = object.get("crv")?.as_str()?;
        if Curve::from_crv(crv)? != self {
            return None;
        }
        let member = |name: &str| B64.decode(object.get(name)?.as_str()?).ok();
        let x = member("x")?;
        if x.len() != self.size() {
            return None;
        }
        if self == Curve::X25519 {
            return (object.get("kty")?.as_str()? == "OKP").then_some(x);
        }
        let y = member("y")?;
        if y.len() != self.size() || object.get("kty")?.as_str()? != "EC" {
            return None;
        }
        Some([&[0x04][..], &x, &y].concat())
    }

    /// The JWK form of a public point.
    pub(super) fn point_jwk(self, point: &[u8]) -> Value {
        if self == Curve::X25519 {
            return serde_json::json!({"kty": "OKP", "crv": "X25519", "x": B64.encode(point)});
        }
        let size = self.size();
        let (x, y) = point
            .get(1..)
            .unwrap_or_default()
            .split_at(size.min(point.len().saturating_sub(1)));
        serde_json::json!({"kty": "EC", "crv": self.crv(), "x": B64.encode(x), "y": B64.encode(y)})
    }
}

enum Secret {
    Rsa(PrivateDecryptingKey),
    Ec(Curve, agreement::PrivateKey),
    Oct(Vec<u8>),
}

/// A private key that can decrypt tokens, with the algorithms it may be used with.
#[derive(Clone)]
pub struct DecryptionKey {
    /// Matched against the JWE header's `kid`. Without one the key is tried for any token.
    pub kid: Option<String>,
    /// The algorithms the key may be used with (the JWK's `alg`, the policy's list); `None`:
    /// every algorithm its type supports.
    pub only: Option<Vec<KeyManagement>>,
    secret: Arc<Secret>,
}

impl std::fmt::Debug for DecryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecryptionKey")
            .field("kid", &self.kid)
            .field("kind", &self.describe())
            .field("only", &self.only)
            .finish_non_exhaustive()
    }
}

/// Why no content encryption key came out (deliberately coarse: see RFC 7516 §11.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct UnwrapError;

/// The JWK members read for decryption keys; others (x5c, …) are ignored.
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
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    d: Option<String>,
    #[serde(default)]
    p: Option<String>,
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    dp: Option<String>,
    #[serde(default)]
    dq: Option<String>,
    #[serde(default)]
    qi: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    k: Option<String>,
}

fn member(
    value: &Option<String>,
    kty: &'static str,
    name: &'static str,
) -> Result<Vec<u8>, KeyError> {
    let text = value.as_deref().ok_or(KeyError::NotPrivate(kty, name))?;
    B64.decode(text).map_err(|_| KeyError::Encoding(name))
}

/// Left-pads a big-endian scalar to `size` bytes.
fn left_pad(bytes: &[u8], size: usize) -> Option<Vec<u8>> {
    let start = bytes.len().saturating_sub(size);
    if bytes[..start].iter().any(|b| *b != 0) {
        return None;
    }
    let bytes = &bytes[start..];
    let mut out = vec![0u8; size - bytes.len()];
    out.extend_from_slice(bytes);
    Some(out)
}

impl DecryptionKey {
    fn new(kid: Option<String>, secret: Secret) -> Self {
        DecryptionKey {
            kid,
            only: None,
            secret: Arc::new(secret),
        }
    }

    /// The same key under another `kid`.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The same key, restricted to `algorithms` (within any earlier restriction).
    pub fn restricted_to(mut self, algorithms: &[KeyManagement]) -> Self {
        self.only = Some(match self.only {
            None => algorithms.to_vec(),
            Some(only) => only
                .into_iter()
                .filter(|alg| algorithms.contains(alg))
                .collect(),
        });
        self
    }

    /// What kind of key this is, for messages.
    pub fn describe(&self) -> String {
        match &*self.secret {
            Secret::Rsa(key) => format!("RSA-{}", key.key_size_bits()),
            Secret::Ec(curve, _) => format!("EC {}", curve.crv()),
            Secret::Oct(bytes) => format!("AES key ({} bytes)", bytes.len()),
        }
    }

    /// The key-management algorithms this key's type supports.
    pub fn algorithms(&self) -> Vec<KeyManagement> {
        KeyManagement::ALL
            .into_iter()
            .filter(|alg| self.type_fits(*alg))
            .filter(|alg| self.allows(*alg))
            .collect()
    }

    fn allows(&self, alg: KeyManagement) -> bool {
        self.only.as_ref().is_none_or(|only| only.contains(&alg))
    }

    fn type_fits(&self, alg: KeyManagement) -> bool {
        match &*self.secret {
            Secret::Rsa(_) => alg.is_rsa(),
            Secret::Ec(..) => alg.is_ecdh(),
            Secret::Oct(bytes) => match alg.wrap_key_len() {
                Some(len) => !alg.is_ecdh() && bytes.len() == len,
                None => alg == KeyManagement::Dir,
            },
        }
    }

    /// Whether this key may decrypt a token with `alg`/`enc`.
    pub fn fits(&self, alg: KeyManagement, enc: ContentEncryption) -> bool {
        self.type_fits(alg)
            && self.allows(alg)
            && match (&*self.secret, alg) {
                (Secret::Oct(bytes), KeyManagement::Dir) => bytes.len() == enc.key_len(),
                _ => true,
            }
    }

    /// Parses one private JWK (RFC 7517/7518; OKP X25519 per RFC 8037).
    pub fn from_jwk(value: &Value) -> Result<Self, KeyError> {
        let jwk: JwkFields =
            serde_json::from_value(value.clone()).map_err(|e| KeyError::Shape(e.to_string()))?;
        if jwk.use_.as_deref().is_some_and(|u| u != "enc") {
            return Err(KeyError::NotForEncryption);
        }
        if let Some(ops) = &jwk.key_ops
            && !ops.iter().any(|op| op == "decrypt" || op == "unwrapKey")
        {
            return Err(KeyError::NotForEncryption);
        }
        let secret = match jwk.kty.as_str() {
            "RSA" => {
                let parts = [
                    member(&jwk.n, "RSA", "n")?,
                    member(&jwk.e, "RSA", "e")?,
                    member(&jwk.d, "RSA", "d")?,
                    member(&jwk.p, "RSA", "p")?,
                    member(&jwk.q, "RSA", "q")?,
                    member(&jwk.dp, "RSA", "dp")?,
                    member(&jwk.dq, "RSA", "dq")?,
                    member(&jwk.qi, "RSA", "qi")?,
                ];
                let refs: [&[u8]; 8] = [
                    &parts[0], &parts[1], &parts[2], &parts[3], &parts[4], &parts[5], &parts[6],
                    &parts[7],
                ];
                let pkcs8 = der::rsa_pkcs1_to_pkcs8(&der::rsa_private_pkcs1(refs));
                Secret::Rsa(
                    PrivateDecryptingKey::from_pkcs8(&pkcs8)
                        .map_err(|_| KeyError::Rejected("RSA"))?,
                )
            }
            "EC" | "OKP" => {
                let crv = jwk.crv.clone().unwrap_or_default();
                let curve = Curve::from_crv(&crv)
                    .filter(|c| (*c == Curve::X25519) == (jwk.kty == "OKP"))
                    .ok_or_else(|| KeyError::Unsupported(format!("{} {crv}", jwk.kty)))?;
                let kty = if curve == Curve::X25519 { "OKP" } else { "EC" };
                let d = member(&jwk.d, kty, "d")?;
                let d = left_pad(&d, curve.size()).ok_or(KeyError::Rejected("EC"))?;
                let key = agreement::PrivateKey::from_private_key(curve.agreement(), &d)
                    .map_err(|_| KeyError::Rejected("EC"))?;
                if jwk.x.is_some() {
                    let public = key
                        .compute_public_key()
                        .map_err(|_| KeyError::Rejected("EC"))?;
                    if curve.public_point(value).as_deref() != Some(public.as_ref()) {
                        return Err(KeyError::Mismatch);
                    }
                }
                Secret::Ec(curve, key)
            }
            "oct" => {
                let k = member(&jwk.k, "oct", "k")?;
                if ![16, 32, 48, 64].contains(&k.len()) {
                    return Err(KeyError::OctLength(k.len()));
                }
                Secret::Oct(k)
            }
            other => return Err(KeyError::Unsupported(other.to_string())),
        };
        let mut key = DecryptionKey::new(jwk.kid, secret);
        if let Some(name) = jwk.alg {
            // A shared key may name the content encryption it is the direct key of (RFC 7520
            // §5.6 does: `"alg": "A128GCM"`).
            let direct = ContentEncryption::parse(&name)
                .filter(|enc| matches!(&*key.secret, Secret::Oct(k) if k.len() == enc.key_len()))
                .map(|_| KeyManagement::Dir);
            let alg = KeyManagement::parse(&name)
                .filter(|alg| key.type_fits(*alg))
                .or(direct)
                .ok_or(KeyError::AlgorithmMismatch(name))?;
            key.only = Some(vec![alg]);
        }
        Ok(key)
    }

    /// Parses one DER private key as found in a PEM block.
    fn from_der(der: PrivateKeyDer<'_>) -> Result<Self, KeyError> {
        let rejected = |what| move |_| KeyError::Rejected(what);
        let secret = match der {
            PrivateKeyDer::Pkcs1(pkcs1) => Secret::Rsa(
                PrivateDecryptingKey::from_pkcs8(&der::rsa_pkcs1_to_pkcs8(
                    pkcs1.secret_pkcs1_der(),
                ))
                .map_err(rejected("RSA"))?,
            ),
            PrivateKeyDer::Sec1(sec1) => Self::ec_from_der(sec1.secret_sec1_der())?,
            PrivateKeyDer::Pkcs8(pkcs8) => {
                let bytes = pkcs8.secret_pkcs8_der();
                if let Ok(rsa) = PrivateDecryptingKey::from_pkcs8(bytes) {
                    Secret::Rsa(rsa)
                } else if let Some(seed) = bytes.strip_prefix(&der::X25519_PKCS8_PREFIX[..]) {
                    Secret::Ec(
                        Curve::X25519,
                        agreement::PrivateKey::from_private_key(&agreement::X25519, seed)
                            .map_err(rejected("X25519"))?,
                    )
                } else {
                    Self::ec_from_der(bytes)?
                }
            }
            _ => return Err(KeyError::Pem("unsupported private key format".into())),
        };
        Ok(DecryptionKey::new(None, secret))
    }

    fn ec_from_der(der: &[u8]) -> Result<Secret, KeyError> {
        for curve in [Curve::P256, Curve::P384, Curve::P521] {
            if let Ok(key) = agreement::PrivateKey::from_private_key_der(curve.agreement(), der) {
                return Ok(Secret::Ec(curve, key));
            }
        }
        Err(KeyError::Pem(
            "not an RSA (2048-8192 bits), EC P-256/P-384/P-521 or X25519 private key".into(),
        ))
    }

    /// The public half, for encrypting tokens to this key.
    pub fn public(&self) -> Result<EncryptionKey, KeyError> {
        let public = match &*self.secret {
            Secret::Rsa(key) => PublicKind::Rsa(key.public_key()),
            Secret::Ec(curve, key) => PublicKind::Ec(
                *curve,
                key.compute_public_key()
                    .map_err(|_| KeyError::Rejected("EC"))?
                    .as_ref()
                    .to_vec(),
            ),
            Secret::Oct(bytes) => PublicKind::Oct(bytes.clone()),
        };
        Ok(EncryptionKey {
            kid: self.kid.clone(),
            key: public,
        })
    }

    /// Recovers the content encryption key. For `RSA1_5` this never fails: a padding error
    /// yields a random key, so the failure shows only as a tag mismatch, in the same time
    /// (RFC 7516 §11.5, RFC 3218 §2.3.2).
    pub(super) fn unwrap_cek(
        &self,
        alg: KeyManagement,
        enc: ContentEncryption,
        epk: Option<&Value>,
        party: (&[u8], &[u8]),
        encrypted_key: &[u8],
    ) -> Result<Vec<u8>, UnwrapError> {
        let cek_len = enc.key_len();
        match (&*self.secret, alg) {
            (Secret::Rsa(key), KeyManagement::Rsa1_5) => {
                let mut cek = vec![0u8; cek_len];
                aws_lc_rs::rand::fill(&mut cek).map_err(|_| UnwrapError)?;
                let key = Pkcs1PrivateDecryptingKey::new(key.clone()).map_err(|_| UnwrapError)?;
                let mut out = vec![0u8; key.min_output_size()];
                let decrypted = key.decrypt(encrypted_key, &mut out).ok();
                if let Some(plain) = decrypted.filter(|p| p.len() == cek_len) {
                    cek.copy_from_slice(plain);
                }
                Ok(cek)
            }
            (Secret::Rsa(key), KeyManagement::RsaOaep | KeyManagement::RsaOaep256) => {
                let oaep = oaep(alg);
                let key = OaepPrivateDecryptingKey::new(key.clone()).map_err(|_| UnwrapError)?;
                let mut out = vec![0u8; key.min_output_size()];
                let plain = key
                    .decrypt(oaep, encrypted_key, &mut out, None)
                    .map_err(|_| UnwrapError)?;
                (plain.len() == cek_len)
                    .then(|| plain.to_vec())
                    .ok_or(UnwrapError)
            }
            (Secret::Oct(kek), KeyManagement::A128Kw | KeyManagement::A256Kw) => {
                aes_unwrap(kek, encrypted_key, cek_len)
            }
            (Secret::Oct(key), KeyManagement::Dir) => (encrypted_key.is_empty()
                && key.len() == cek_len)
                .then(|| key.clone())
                .ok_or(UnwrapError),
            (Secret::Ec(curve, key), alg) if alg.is_ecdh() => {
                let peer = epk
                    .and_then(|epk| curve.public_point(epk))
                    .ok_or(UnwrapError)?;
                let (alg_id, len) = match alg.wrap_key_len() {
                    Some(len) => (alg.name(), len),
                    None => (enc.name(), cek_len),
                };
                let derived = agreement::agree(
                    key,
                    UnparsedPublicKey::new(curve.agreement(), &peer),
                    UnwrapError,
                    |z| Ok(concat_kdf(z, alg_id, party.0, party.1, len)),
                )?;
                match alg.wrap_key_len() {
                    Some(_) => aes_unwrap(&derived, encrypted_key, cek_len),
                    None if encrypted_key.is_empty() => Ok(derived),
                    None => Err(UnwrapError),
                }
            }
            _ => Err(UnwrapError),
        }
    }
}

/// The OAEP parameters of `RSA-OAEP` (SHA-1) and `RSA-OAEP-256`.
fn oaep(alg: KeyManagement) -> &'static OaepAlgorithm {
    if alg == KeyManagement::RsaOaep {
        &OAEP_SHA1_MGF1SHA1
    } else {
        &OAEP_SHA256_MGF1SHA256
    }
}

fn kek(key: &[u8]) -> Result<AesKek, UnwrapError> {
    let cipher = match key.len() {
        16 => &key_wrap::AES_128,
        32 => &key_wrap::AES_256,
        _ => return Err(UnwrapError),
    };
    AesKek::new(cipher, key).map_err(|_| UnwrapError)
}

fn aes_unwrap(key: &[u8], wrapped: &[u8], cek_len: usize) -> Result<Vec<u8>, UnwrapError> {
    if wrapped.len() != cek_len + 8 {
        return Err(UnwrapError);
    }
    let mut out = vec![0u8; wrapped.len()];
    let len = kek(key)?
        .unwrap(wrapped, &mut out)
        .map_err(|_| UnwrapError)?
        .len();
    out.truncate(len);
    (len == cek_len).then_some(out).ok_or(UnwrapError)
}

/// The Concat KDF of NIST SP 800-56A with SHA-256, as RFC 7518 §4.6.2 profiles it.
pub(super) fn concat_kdf(z: &[u8], alg_id: &str, apu: &[u8], apv: &[u8], len: usize) -> Vec<u8> {
    let field = |bytes: &[u8]| {
        let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(bytes);
        out
    };
    let mut other = field(alg_id.as_bytes());
    other.extend(field(apu));
    other.extend(field(apv));
    other.extend(((len * 8) as u32).to_be_bytes());
    let mut out = Vec::with_capacity(len + 32);
    let mut counter: u32 = 1;
    while out.len() < len {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(&counter.to_be_bytes());
        ctx.update(z);
        ctx.update(&other);
        out.extend_from_slice(ctx.finish().as_ref());
        counter += 1;
    }
    out.truncate(len);
    out
}

/// Reads the decryption keys in a secret: PEM private keys (PKCS#8, PKCS#1 `RSA PRIVATE KEY`,
/// SEC1 `EC PRIVATE KEY`), one JWK, or a JWK set (`{"keys": [...]}`).
pub fn parse_keys(bytes: &[u8]) -> Result<Vec<DecryptionKey>, KeyError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| KeyError::Format)?
        .trim();
    let keys = if text.starts_with("-----BEGIN") {
        let mut keys = Vec::new();
        for der in PrivateKeyDer::pem_slice_iter(text.as_bytes()) {
            let der = der.map_err(|e| KeyError::Pem(e.to_string()))?;
            if keys.len() == MAX_KEYS {
                return Err(KeyError::TooMany);
            }
            keys.push(DecryptionKey::from_der(der)?);
        }
        keys
    } else if text.starts_with('{') {
        let value: Value =
            serde_json::from_str(text).map_err(|e| KeyError::Shape(e.to_string()))?;
        match value.get("keys") {
            Some(Value::Array(items)) if items.len() > MAX_KEYS => return Err(KeyError::TooMany),
            Some(Value::Array(items)) => items
                .iter()
                .map(DecryptionKey::from_jwk)
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(KeyError::Shape("keys must be an array".into())),
            None => vec![DecryptionKey::from_jwk(&value)?],
        }
    } else {
        return Err(KeyError::Format);
    };
    if keys.is_empty() {
        return Err(KeyError::Empty);
    }
    Ok(keys)
}

enum PublicKind {
    Rsa(PublicEncryptingKey),
    Ec(Curve, Vec<u8>),
    Oct(Vec<u8>),
}

/// A fresh content encryption key, as the recipient receives it.
pub(super) struct WrappedCek {
    pub encrypted_key: Vec<u8>,
    pub cek: Vec<u8>,
    /// Header members the recipient needs (`epk`).
    pub header: serde_json::Map<String, Value>,
}

/// A recipient's public key (or shared key) to encrypt tokens to.
pub struct EncryptionKey {
    pub kid: Option<String>,
    key: PublicKind,
}

impl EncryptionKey {
    /// From a public JWK (RSA `n`/`e`, EC `x`/`y`, OKP X25519 `x`) or a shared `oct` JWK.
    pub fn from_jwk(value: &Value) -> Result<Self, KeyError> {
        let jwk: JwkFields =
            serde_json::from_value(value.clone()).map_err(|e| KeyError::Shape(e.to_string()))?;
        let key = match jwk.kty.as_str() {
            "RSA" => {
                let n = member(&jwk.n, "RSA", "n")?;
                let e = member(&jwk.e, "RSA", "e")?;
                PublicKind::Rsa(
                    PublicEncryptingKey::from_der(&der::rsa_public_spki(&n, &e))
                        .map_err(|_| KeyError::Rejected("RSA"))?,
                )
            }
            "EC" | "OKP" => {
                let crv = jwk.crv.clone().unwrap_or_default();
                let curve = Curve::from_crv(&crv)
                    .ok_or_else(|| KeyError::Unsupported(format!("{} {crv}", jwk.kty)))?;
                let point = curve.public_point(value).ok_or(KeyError::Rejected("EC"))?;
                PublicKind::Ec(curve, point)
            }
            "oct" => PublicKind::Oct(member(&jwk.k, "oct", "k")?),
            other => return Err(KeyError::Unsupported(other.to_string())),
        };
        Ok(EncryptionKey { kid: jwk.kid, key })
    }

    /// Produces `(encrypted_key, cek, extra header members)` for `alg`/`enc`.
    pub(super) fn wrap_new_cek(
        &self,
        alg: KeyManagement,
        enc: ContentEncryption,
    ) -> Result<WrappedCek, UnwrapError> {
        let mut cek = vec![0u8; enc.key_len()];
        aws_lc_rs::rand::fill(&mut cek).map_err(|_| UnwrapError)?;
        let mut extra = serde_json::Map::new();
        let encrypted = match (&self.key, alg) {
            (PublicKind::Rsa(key), KeyManagement::Rsa1_5) => {
                let key = Pkcs1PublicEncryptingKey::new(key.clone()).map_err(|_| UnwrapError)?;
                let mut out = vec![0u8; key.ciphertext_size()];
                key.encrypt(&cek, &mut out)
                    .map_err(|_| UnwrapError)?
                    .to_vec()
            }
            (PublicKind::Rsa(key), KeyManagement::RsaOaep | KeyManagement::RsaOaep256) => {
                let oaep = oaep(alg);
                let key = OaepPublicEncryptingKey::new(key.clone()).map_err(|_| UnwrapError)?;
                let mut out = vec![0u8; key.ciphertext_size()];
                key.encrypt(oaep, &cek, &mut out, None)
                    .map_err(|_| UnwrapError)?
                    .to_vec()
            }
            (PublicKind::Oct(kek), KeyManagement::A128Kw | KeyManagement::A256Kw) => {
                if Some(kek.len()) != alg.wrap_key_len() {
                    return Err(UnwrapError);
                }
                aes_wrap(kek, &cek)?
            }
            (PublicKind::Oct(key), KeyManagement::Dir) => {
                if key.len() != cek.len() {
                    return Err(UnwrapError);
                }
                cek = key.clone();
                Vec::new()
            }
            (PublicKind::Ec(curve, point), alg) if alg.is_ecdh() => {
                let ephemeral =
                    agreement::PrivateKey::generate(curve.agreement()).map_err(|_| UnwrapError)?;
                let epk = ephemeral.compute_public_key().map_err(|_| UnwrapError)?;
                extra.insert("epk".into(), curve.point_jwk(epk.as_ref()));
                let (alg_id, len) = match alg.wrap_key_len() {
                    Some(len) => (alg.name(), len),
                    None => (enc.name(), enc.key_len()),
                };
                let derived = agreement::agree(
                    &ephemeral,
                    UnparsedPublicKey::new(curve.agreement(), point),
                    UnwrapError,
                    |z| Ok(concat_kdf(z, alg_id, b"", b"", len)),
                )?;
                match alg.wrap_key_len() {
                    Some(_) => aes_wrap(&derived, &cek)?,
                    None => {
                        cek = derived;
                        Vec::new()
                    }
                }
            }
            _ => return Err(UnwrapError),
        };
        Ok(WrappedCek {
            encrypted_key: encrypted,
            cek,
            header: extra,
        })
    }
}

fn aes_wrap(key: &[u8], cek: &[u8]) -> Result<Vec<u8>, UnwrapError> {
    let mut out = vec![0u8; cek.len() + 8];
    let len = kek(key)?
        .wrap(cek, &mut out)
        .map_err(|_| UnwrapError)?
        .len();
    out.truncate(len);
    Ok(out)
}

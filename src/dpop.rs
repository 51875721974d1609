//! DPoP (RFC 9449): sender-constrained access tokens. A token bound to a key (`cnf.jkt`, the
//! RFC 7638 thumbprint of the client's public key) is accepted only with a proof of possession
//! of that key, made for this request.
//!
//! ```text
//! Authorization: DPoP <token>     DPoP: <proof JWS>
//!       │                              │ typ dpop+jwt, asymmetric alg on the list, public jwk
//!       ▼                              ▼ in its header, signature by that jwk
//!  token verified (or a cache hit) ─► thumbprint(jwk) == cnf.jkt
//!                                  ─► htm == method, htu == scheme://host[:port]/path as judged
//!                                  ─► ath == base64url(SHA-256(token))
//!                                  ─► iat within proofMaxAge (and clockSkew ahead)
//!                                  ─► (jkt, jti) never seen in that window on this replica
//! ```
//!
//! Pure except for the replay cache, which is per replica: bounded in entries and time, keyed
//! by (jkt, jti), and shared by every compilation of the same policy in this process, so a
//! policy update does not forget the proofs already used. With N replicas, a proof replayed to
//! another replica within the window is not detected (see docs/dpop.md).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::Value;

use crate::jose::{self, B64};
use crate::jwks::VerifyingKey;

/// The proof's media type (`typ`).
pub const PROOF_TYPE: &str = "dpop+jwt";

/// Proofs larger than this are refused before decoding.
pub const MAX_PROOF_BYTES: usize = 8 * 1024;

/// The longest `jti` accepted (RFC 9449 asks for at least 96 bits of randomness; bounded so
/// the replay cache's memory is too).
pub const MAX_JTI_BYTES: usize = 256;

/// The algorithms accepted when the policy names none: every asymmetric one tollgate verifies.
pub const DEFAULT_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
];

/// Whether a policy reads DPoP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Tokens are bearer tokens; a DPoP-bound token (`cnf.jkt`) is refused, since its proof
    /// is not checked.
    #[default]
    Disabled,
    /// Bearer tokens and DPoP-bound tokens with their proof; a bound token sent as Bearer is
    /// refused.
    Allowed,
    /// Only DPoP-bound tokens with their proof.
    Required,
}

/// A policy's DPoP settings (`spec.dpop`).
#[derive(Clone, Debug)]
pub struct Settings {
    pub mode: Mode,
    /// Accepted proof algorithms (asymmetric only).
    pub algorithms: Vec<Algorithm>,
    /// How old a proof's `iat` may be, in seconds.
    pub max_age: u64,
    /// Proofs already used, per replica.
    pub replay: Arc<ReplayCache>,
    /// Server-provided nonces (`dpop.nonce`), when the policy sets them.
    pub nonces: Option<Nonces>,
}

impl Settings {
    /// The `algs` parameter of the DPoP challenge.
    pub fn algs(&self) -> String {
        self.algorithms
            .iter()
            .map(|a| alg_name(*a))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The JOSE name of an algorithm.
pub fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        // Not accepted for proofs (never on a policy's list).
        _ => "unsupported",
    }
}

/// Why a DPoP proof is not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    /// The request has no `DPoP` header.
    #[error("the request has no DPoP proof header")]
    Missing,
    /// More than one `DPoP` header (or values joined with a comma).
    #[error("the request carries more than one DPoP header")]
    Several,
    /// Larger than [`MAX_PROOF_BYTES`].
    #[error("the DPoP proof is {0} bytes, more than the {MAX_PROOF_BYTES}-byte limit")]
    TooLarge(usize),
    /// Not a compact JWS with strict base64url and JSON.
    #[error("the DPoP proof is not a well-formed JWS: {0}")]
    Malformed(String),
    /// `typ` is not `dpop+jwt`.
    #[error("the DPoP proof's typ is {0:?}, not \"dpop+jwt\"")]
    Type(Option<String>),
    /// `alg` is `none`, symmetric, unknown or not on the list.
    #[error(
        "the DPoP proof's alg {0:?} is not accepted (asymmetric algorithms of dpop.algorithms only)"
    )]
    Algorithm(String),
    /// A `crit` header member.
    #[error("the DPoP proof names critical header extensions (crit)")]
    Critical,
    /// No usable public `jwk` in the header (missing, private, symmetric, weak).
    #[error("the DPoP proof's jwk header is not a usable public key: {0}")]
    Key(String),
    /// The signature does not verify with the header's `jwk`.
    #[error("the DPoP proof's signature does not verify with its jwk")]
    Signature,
    /// A claim is missing or has the wrong type.
    #[error("the DPoP proof's {0} claim is missing or not {1}")]
    Claim(&'static str, &'static str),
    /// `htm` is not the request's method.
    #[error("the DPoP proof is for method {proof:?}, the request is {request}")]
    Method { proof: String, request: String },
    /// `htu` is not the request's URI.
    #[error("the DPoP proof is for {proof:?}, the request is {request}")]
    Uri { proof: String, request: String },
    /// `iat` is too old, or in the future.
    #[error("the DPoP proof's iat is {age}s from now, outside the window (-{max_age}s, +{skew}s)")]
    Time { age: i64, max_age: u64, skew: u64 },
    /// `ath` is not the hash of the token.
    #[error("the DPoP proof's ath is not the hash of the access token")]
    TokenHash,
    /// The key's thumbprint is not the token's `cnf.jkt`.
    #[error("the DPoP proof's key (thumbprint {proof}) is not the one the token is bound to")]
    Thumbprint { proof: String },
    /// The `(jkt, jti)` was seen within the window on this replica.
    #[error("the DPoP proof (jti) was already used")]
    Replayed,
    /// The replay cache is full of proofs still inside their window.
    #[error("the DPoP replay cache is full ({0} proofs inside their window)")]
    CacheFull(usize),
    /// The scheme the client used is not known (a forward-auth family that does not send it).
    #[error("the request's scheme is not known, so the DPoP proof's htu cannot be compared")]
    UnknownScheme,
    /// The policy sets nonces and the proof has no `nonce` claim.
    #[error("the DPoP proof carries no nonce, and this policy requires the one it provides")]
    NonceMissing,
    /// The proof's `nonce` is not one this server issued with its current secret, or it
    /// expired.
    #[error("the DPoP proof's nonce {0}")]
    Nonce(NonceError),
}

/// Why a proof's `nonce` is not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NonceError {
    #[error("is not a string")]
    NotString,
    #[error("is not one this server issued (malformed, or made with another secret)")]
    Forged,
    #[error("expired {0}s ago")]
    Expired(u64),
    #[error("was issued {0}s in the future")]
    Future(u64),
}

impl DpopError {
    /// The reason code of the denial.
    pub fn reason(&self) -> crate::decision::Reason {
        use crate::decision::Reason;
        match self {
            DpopError::Missing => Reason::DpopProofMissing,
            DpopError::Replayed => Reason::DpopReplayed,
            DpopError::CacheFull(_) => Reason::DpopReplayCacheFull,
            DpopError::NonceMissing | DpopError::Nonce(_) => Reason::DpopNonceRequired,
            _ => Reason::DpopProofInvalid,
        }
    }
}

/// The request a proof must be made for.
#[derive(Clone, Copy, Debug)]
pub struct Expected<'a> {
    pub method: &'a str,
    /// `http` or `https`, as the client used it (`None`: unknown, refused).
    pub scheme: Option<&'a str>,
    /// The host as judged (lower case, no port).
    pub host: &'a str,
    /// The port the client named in its host, if any.
    pub port: Option<u16>,
    /// The path as judged (no query).
    pub path: &'a str,
    /// How the path was read, so `htu`'s path is read the same way.
    pub reading: crate::policy::route::PathReading,
    /// The access token.
    pub token: &'a str,
    /// The token's `cnf.jkt`.
    pub jkt: &'a str,
    /// Seconds since the epoch.
    pub now: u64,
    /// Tolerance for an `iat` in the future.
    pub skew: u64,
}

impl Expected<'_> {
    /// The URI, in words.
    pub fn uri(&self) -> String {
        let scheme = self.scheme.unwrap_or("?");
        match self.port {
            Some(port) => format!("{scheme}://{}:{port}{}", self.host, self.path),
            None => format!("{scheme}://{}{}", self.host, self.path),
        }
    }
}

/// What a proof that passed says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub alg: &'static str,
    pub jti: String,
    pub iat: i64,
    /// When the proof's nonce was issued (seconds since the epoch), under a policy with nonces.
    pub nonce_issued: Option<u64>,
}

/// The one `DPoP` header of a request: counted over every header line (any letter case), and a
/// value with a comma (Envoy joins repeated headers with ",") is more than one proof.
pub fn proof_header(headers: &crate::engine::Headers<'_>) -> Result<String, DpopError> {
    let mut found: Option<String> = None;
    let mut several = false;
    headers.for_each(|name, value| {
        if name.eq_ignore_ascii_case("dpop") {
            several |= found.is_some() || value.contains(',');
            found = Some(value.trim().to_string());
        }
    });
    match found {
        _ if several => Err(DpopError::Several),
        None => Err(DpopError::Missing),
        Some(value) if value.is_empty() => Err(DpopError::Missing),
        Some(value) => Ok(value),
    }
}

/// Checks a proof against the request, without the replay cache ([`ReplayCache::admit`] next).
pub fn verify(
    proof: &str,
    settings: &Settings,
    expected: &Expected<'_>,
) -> Result<Accepted, DpopError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(DpopError::TooLarge(proof.len()));
    }
    let jws = jose::parse(proof).map_err(|e| DpopError::Malformed(e.to_string()))?;
    if jws.header.typ.as_deref() != Some(PROOF_TYPE) {
        return Err(DpopError::Type(jws.header.typ.clone()));
    }
    let alg = settings
        .algorithms
        .iter()
        .copied()
        .find(|a| alg_name(*a) == jws.header.alg)
        .ok_or_else(|| DpopError::Algorithm(jws.header.alg.clone()))?;
    if jws.header.crit.is_some() {
        return Err(DpopError::Critical);
    }
    let jwk = jws
        .header_object
        .get("jwk")
        .ok_or_else(|| DpopError::Key("no jwk header".into()))?;
    let key = VerifyingKey::from_jwk(jwk).map_err(|e| DpopError::Key(e.to_string()))?;
    if !key.fits(alg) {
        return Err(DpopError::Key(format!(
            "a {} key cannot sign {}",
            key.kind.describe(),
            alg_name(alg)
        )));
    }
    if !key.verify(alg, jws.signing_input.as_bytes(), jws.signature) {
        return Err(DpopError::Signature);
    }
    let thumbprint = thumbprint(jwk).map_err(DpopError::Key)?;
    let claims = &jws.claims;
    let string = |name: &'static str| match claims.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.as_str()),
        _ => Err(DpopError::Claim(name, "a non-empty string")),
    };
    let jti = string("jti")?;
    if jti.len() > MAX_JTI_BYTES {
        return Err(DpopError::Claim("jti", "at most 256 bytes"));
    }
    let htm = string("htm")?;
    if htm != expected.method {
        return Err(DpopError::Method {
            proof: htm.to_string(),
            request: expected.method.to_string(),
        });
    }
    let htu = string("htu")?;
    let scheme = expected.scheme.ok_or(DpopError::UnknownScheme)?;
    if !same_uri(htu, scheme, expected) {
        return Err(DpopError::Uri {
            proof: htu.to_string(),
            request: expected.uri(),
        });
    }
    let iat = match claims.get("iat") {
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .ok_or(DpopError::Claim("iat", "a number"))?,
        _ => return Err(DpopError::Claim("iat", "a number")),
    };
    let now = i64::try_from(expected.now).unwrap_or(i64::MAX);
    let age = now.saturating_sub(iat);
    let max_age = i64::try_from(settings.max_age).unwrap_or(i64::MAX);
    let skew = i64::try_from(expected.skew).unwrap_or(i64::MAX);
    if age > max_age || age < -skew {
        return Err(DpopError::Time {
            age: -age,
            max_age: settings.max_age,
            skew: expected.skew,
        });
    }
    let ath = string("ath")?;
    let hash = B64.encode(jose::sha256(expected.token.as_bytes()));
    if !constant_eq(ath.as_bytes(), hash.as_bytes()) {
        return Err(DpopError::TokenHash);
    }
    if !constant_eq(thumbprint.as_bytes(), expected.jkt.as_bytes()) {
        return Err(DpopError::Thumbprint { proof: thumbprint });
    }
    // Last: a proof wrong in any other way is invalid, whatever its nonce.
    let nonce_issued = match &settings.nonces {
        None => None,
        Some(nonces) => match claims.get("nonce") {
            None => return Err(DpopError::NonceMissing),
            Some(Value::String(nonce)) => Some(
                nonces
                    .check(nonce, expected.now, expected.skew)
                    .map_err(DpopError::Nonce)?,
            ),
            Some(_) => return Err(DpopError::Nonce(NonceError::NotString)),
        },
    };
    Ok(Accepted {
        alg: alg_name(alg),
        jti: jti.to_string(),
        iat,
        nonce_issued,
    })
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `htu` names the request's URI: the scheme (any case), the host as tollgate reads
/// hosts (lower case, no trailing dot), the port (the scheme's default when absent), and the
/// path read as the request's path was; query and fragment ignored (RFC 9449 §4.3).
fn same_uri(htu: &str, scheme: &str, expected: &Expected<'_>) -> bool {
    let Some((proof_scheme, rest)) = htu.split_once("://") else {
        return false;
    };
    if !proof_scheme.eq_ignore_ascii_case(scheme) {
        return false;
    }
    let rest = rest.split(['#', '?']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return false;
    }
    let Ok(host) = crate::policy::route::read_host(authority) else {
        return false;
    };
    let default = match scheme {
        "https" => 443,
        _ => 80,
    };
    if host != expected.host
        || port_of(authority).map(|port| port.unwrap_or(default))
            != Ok(expected.port.unwrap_or(default))
    {
        return false;
    }
    crate::policy::route::read_path_with(path, expected.reading)
        .is_ok_and(|(read, _)| read == expected.path)
}

/// The port a host names: `Ok(None)` when it names none, `Err` when it is not a number.
pub fn port_of(authority: &str) -> Result<Option<u16>, std::num::ParseIntError> {
    let after = match authority.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or("", |(_, after)| after),
        None => authority,
    };
    match after.rsplit_once(':') {
        Some((_, port)) if after.starts_with(':') || !authority.starts_with('[') => {
            if port.is_empty() {
                Ok(None)
            } else {
                port.parse().map(Some)
            }
        }
        _ => Ok(None),
    }
}

/// The RFC 7638 thumbprint of a public JWK: base64url(SHA-256) of its required members in
/// lexicographic order, as compact JSON.
pub fn thumbprint(jwk: &Value) -> Result<String, String> {
    let member = |name: &str| -> Result<&str, String> {
        jwk.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the jwk has no string {name}"))
    };
    let kty = member("kty")?;
    let required: &[&str] = match kty {
        "EC" => &["crv", "kty", "x", "y"],
        "RSA" => &["e", "kty", "n"],
        "OKP" => &["crv", "kty", "x"],
        other => return Err(format!("no thumbprint for key type {other:?}")),
    };
    let mut object = serde_json::Map::new();
    for name in required {
        object.insert(
            (*name).to_string(),
            Value::String(member(name)?.to_string()),
        );
    }
    // serde_json's map is ordered by key (no `preserve_order` here), and writes compact JSON.
    let json = serde_json::to_string(&Value::Object(object)).map_err(|e| e.to_string())?;
    Ok(B64.encode(jose::sha256(json.as_bytes())))
}

/// The `cnf.jkt` of a token's claims: `Ok(None)` when the token is not DPoP-bound; `Err` when
/// `cnf` or `jkt` is malformed (such a token is refused).
pub fn bound_key(claims: &serde_json::Map<String, Value>) -> Result<Option<String>, String> {
    match claims.get("cnf") {
        None => Ok(None),
        Some(Value::Object(cnf)) => match cnf.get("jkt") {
            None => Ok(None),
            Some(Value::String(jkt)) if !jkt.is_empty() && jkt.len() <= 128 => {
                Ok(Some(jkt.clone()))
            }
            Some(_) => Err("the token's cnf.jkt is not a thumbprint".into()),
        },
        Some(_) => Err("the token's cnf claim is not an object".into()),
    }
}

/// Server-provided nonces (RFC 9449 §9), stateless: a nonce is the time it was issued and a
/// MAC of it under the policy's nonce secret, so every replica with the same secret accepts
/// the nonces of the others and none keeps a list.
///
/// ```text
/// nonce = base64url( issued (8 bytes, big-endian seconds) ‖ HMAC-SHA256(secret, label ‖ issued)[..16] )
/// ```
///
/// `issued` is the current time rounded down to half the lifetime, so a nonce handed out is
/// good for between half and all of `lifetime`, and one value serves every client for half a
/// lifetime. A proof whose nonce was issued before the current one gets the current one on
/// its answer (`DPoP-Nonce`), well before it expires.
#[derive(Clone)]
pub struct Nonces {
    key: aws_lc_rs::hmac::Key,
    /// How long a nonce is accepted, in seconds.
    pub lifetime: u64,
}

/// The shortest secret a policy's nonces are made with.
pub const MIN_NONCE_SECRET_BYTES: usize = 32;

/// Bytes of the MAC a nonce carries.
const NONCE_TAG_BYTES: usize = 16;

/// Separates nonce MACs from anything else the same secret could be used for.
const NONCE_LABEL: &[u8] = b"tollgate dpop nonce v1\0";

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nonces")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Nonces {
    /// Nonces made with `secret` (at least [`MIN_NONCE_SECRET_BYTES`]) and accepted for
    /// `lifetime` seconds (at least 2).
    pub fn new(secret: &[u8], lifetime: u64) -> Result<Self, String> {
        if secret.len() < MIN_NONCE_SECRET_BYTES {
            return Err(format!(
                "the nonce secret is {} bytes; it needs at least {MIN_NONCE_SECRET_BYTES} random bytes",
                secret.len()
            ));
        }
        if lifetime < 2 {
            return Err("the nonce lifetime must be at least 2s".into());
        }
        Ok(Nonces {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret),
            lifetime,
        })
    }

    /// When the nonce handed out at `now` was issued.
    pub fn issued_at(&self, now: u64) -> u64 {
        let step = self.lifetime / 2;
        now - now % step
    }

    /// The nonce handed out at `now` (seconds since the epoch).
    pub fn issue(&self, now: u64) -> String {
        let issued = self.issued_at(now).to_be_bytes();
        let mut out = Vec::with_capacity(issued.len() + NONCE_TAG_BYTES);
        out.extend_from_slice(&issued);
        out.extend_from_slice(&self.tag(&issued).as_ref()[..NONCE_TAG_BYTES]);
        B64.encode(out)
    }

    /// When `nonce` was issued, if it is one of ours and still good at `now` (an issue time up
    /// to `skew` ahead is another replica's clock).
    pub fn check(&self, nonce: &str, now: u64, skew: u64) -> Result<u64, NonceError> {
        // 24 bytes are 32 base64url characters; anything longer is not ours (and not decoded).
        if nonce.len() != 32 {
            return Err(NonceError::Forged);
        }
        let bytes = B64.decode(nonce).map_err(|_| NonceError::Forged)?;
        let (issued, tag) = bytes.split_at(8);
        if tag.len() != NONCE_TAG_BYTES
            || !constant_eq(tag, &self.tag(issued).as_ref()[..NONCE_TAG_BYTES])
        {
            return Err(NonceError::Forged);
        }
        let mut be = [0u8; 8];
        be.copy_from_slice(issued);
        let issued = u64::from_be_bytes(be);
        if issued > now.saturating_add(skew) {
            return Err(NonceError::Future(issued - now));
        }
        let end = issued.saturating_add(self.lifetime);
        if now >= end {
            return Err(NonceError::Expired(now - end));
        }
        Ok(issued)
    }

    fn tag(&self, issued: &[u8]) -> aws_lc_rs::hmac::Tag {
        let mut context = aws_lc_rs::hmac::Context::with_key(&self.key);
        context.update(NONCE_LABEL);
        context.update(issued);
        context.sign()
    }
}

/// Proofs used within their window on this replica, keyed by SHA-256 of (jkt, jti). Bounded:
/// at most `max_entries`; an entry leaves when its proof's window ends. When every entry is
/// still inside its window, a new proof is refused (503) rather than forgetting one that could
/// then be replayed.
#[derive(Debug)]
pub struct ReplayCache {
    max_entries: usize,
    inner: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    until: HashMap<[u8; 32], u64>,
    /// Insertion order with each entry's end; windows have one length per policy, so this is
    /// also (nearly) the order in which they end.
    order: VecDeque<([u8; 32], u64)>,
}

impl ReplayCache {
    pub fn new(max_entries: usize) -> Self {
        ReplayCache {
            max_entries,
            inner: Mutex::new(Seen::default()),
        }
    }

    /// Records the proof `(jkt, jti)`, remembered until `until` (seconds since the epoch).
    /// Held for a few hash-map operations, never across an await.
    pub fn admit(&self, jkt: &str, jti: &str, now: u64, until: u64) -> Result<(), DpopError> {
        let mut input = Vec::with_capacity(jkt.len() + jti.len() + 1);
        input.extend_from_slice(jkt.as_bytes());
        input.push(0);
        input.extend_from_slice(jti.as_bytes());
        let key = jose::sha256(&input);
        let mut seen = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some((old, end)) = seen.order.front().copied() {
            if end > now {
                break;
            }
            seen.order.pop_front();
            if seen.until.get(&old).is_some_and(|e| *e <= now) {
                seen.until.remove(&old);
            }
        }
        if seen.until.get(&key).is_some_and(|end| *end > now) {
            return Err(DpopError::Replayed);
        }
        if seen.until.len() >= self.max_entries {
            return Err(DpopError::CacheFull(seen.until.len()));
        }
        seen.until.insert(key, until);
        seen.order.push_back((key, until));
        Ok(())
    }

    /// Proofs remembered now.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .until
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The replay cache of the policy `id` in this process: the one its previous compilation used
/// while that is alive, so a policy update keeps the proofs already seen. Called when a policy
/// compiles, never on the request path.
pub fn replay_cache_for(id: &str, max_entries: usize) -> Arc<ReplayCache> {
    static CACHES: OnceLock<Mutex<HashMap<String, Weak<ReplayCache>>>> = OnceLock::new();
    let mut caches = CACHES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    caches.retain(|_, cache| cache.strong_count() > 0);
    if let Some(cache) = caches.get(id).and_then(Weak::upgrade)
        && cache.max_entries == max_entries
    {
        return cache;
    }
    let cache = Arc::new(ReplayCache::new(max_entries));
    caches.insert(id.to_string(), Arc::downgrade(&cache));
    cache
}

#[cfg(test)]
mod tests;

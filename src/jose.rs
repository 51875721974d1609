//! Compact JWS parsing (RFC 7515 §7.1): split, base64url-decode and JSON-parse a token without
//! trusting any of it. Signature and claim checks live in `validate`.
//!
//! Strict on purpose: no base64 padding or non-canonical trailing bits (signature malleability),
//! no duplicate member names in the header or claims, at any depth (two parsers could read
//! different values), JSON objects only, and a hard size bound before any decoding. Values are
//! built by our own visitor, not `serde_json::Value`'s: with serde_json's `raw_value` feature
//! (which a dependency turns on) `Value` reads an object whose member is
//! `$serde_json::private::RawValue` as the JSON text inside it, which no other parser does.

use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

/// base64url without padding, rejecting padding and non-canonical trailing bits.
pub const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// Tokens above this size are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The claims of a token: a JSON object with unique member names.
pub type Claims = Map<String, Value>;

/// Why a token could not be parsed.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoseError {
    /// Larger than [`MAX_TOKEN_BYTES`].
    #[error("the token is {0} bytes, more than the {MAX_TOKEN_BYTES}-byte limit")]
    TooLarge(usize),
    /// Five segments: a JWE (encrypted token).
    #[error("the token is encrypted (JWE) and this policy has no decryption keys")]
    Encrypted,
    /// Not three dot-separated segments.
    #[error("the token has {0} segments; a signed JWT has 3 (header.payload.signature)")]
    Segments(usize),
    /// A segment is not canonical unpadded base64url.
    #[error("the {0} is not valid base64url")]
    Base64(&'static str),
    /// A segment is not a JSON object, or repeats a member name.
    #[error("the {0} is not a JSON object with unique member names: {1}")]
    Json(&'static str, String),
    /// The header's `alg` is missing or not a string.
    #[error("the header has no string alg")]
    NoAlgorithm,
    /// A header member has the wrong type (e.g. a numeric `kid`).
    #[error("header member {0:?} has the wrong type")]
    HeaderMember(&'static str),
}

/// The JOSE header members tollgate uses. `jku`, `x5u`, `jwk` and `x5c` are deliberately never
/// read: keys always come from the policy's issuer, never from the token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub alg: String,
    pub kid: Option<String>,
    pub typ: Option<String>,
    pub cty: Option<String>,
    /// Critical extensions the token says the verifier must understand.
    pub crit: Option<Vec<String>>,
}

impl Header {
    fn from_object(object: &Claims) -> Result<Self, JoseError> {
        let string = |name: &'static str| -> Result<Option<String>, JoseError> {
            match object.get(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(JoseError::HeaderMember(name)),
            }
        };
        let alg = match object.get("alg") {
            Some(Value::String(alg)) => alg.clone(),
            _ => return Err(JoseError::NoAlgorithm),
        };
        let crit = match object.get("crit") {
            None => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|item| {
                        item.as_str()
                            .map(str::to_owned)
                            .ok_or(JoseError::HeaderMember("crit"))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(_) => return Err(JoseError::HeaderMember("crit")),
        };
        Ok(Header {
            alg,
            kid: string("kid")?,
            typ: string("typ")?,
            cty: string("cty")?,
            crit,
        })
    }
}

/// A parsed, not yet verified, compact JWS.
#[derive(Debug)]
pub struct Jws<'a> {
    pub header: Header,
    /// The whole decoded header object (for diagnostics such as Azure's `nonce`).
    pub header_object: Claims,
    pub claims: Claims,
    /// `base64url(header) "." base64url(payload)`: what the signature covers.
    pub signing_input: &'a str,
    /// The base64url signature segment.
    pub signature: &'a str,
}

/// Whether `token` is `segments` base64url segments joined by dots (a JWS has 3, a JWE 5).
pub fn is_compact(token: &str, segments: usize) -> bool {
    token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && token.bytes().filter(|b| *b == b'.').count() + 1 == segments
}

/// Splits and decodes a compact JWS.
pub fn parse(token: &str) -> Result<Jws<'_>, JoseError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JoseError::TooLarge(token.len()));
    }
    let dots = token.bytes().filter(|b| *b == b'.').count();
    match dots {
        2 => {}
        4 => return Err(JoseError::Encrypted),
        n => return Err(JoseError::Segments(n + 1)),
    }
    let (signing_input, signature) = token
        .rsplit_once('.')
        .ok_or(JoseError::Segments(dots + 1))?;
    let (header_b64, payload_b64) = signing_input
        .split_once('.')
        .ok_or(JoseError::Segments(dots + 1))?;
    // The signature must decode too, so garbage never reaches the crypto layer. (It may be
    // empty: `alg: none` tokens have none, and are refused by their algorithm, not here.)
    if B64.decode(signature).is_err() {
        return Err(JoseError::Base64("signature"));
    }
    let header_object = decode_object(header_b64, "header")?;
    let header = Header::from_object(&header_object)?;
    let claims = decode_object(payload_b64, "payload")?;
    Ok(Jws {
        header,
        header_object,
        claims,
        signing_input,
        signature,
    })
}

pub(crate) fn decode_object(segment: &str, part: &'static str) -> Result<Claims, JoseError> {
    let bytes = B64.decode(segment).map_err(|_| JoseError::Base64(part))?;
    parse_object(&bytes, part)
}

/// Parses a JSON object with unique member names (the claims of a decrypted token).
pub fn parse_object(bytes: &[u8], part: &'static str) -> Result<Claims, JoseError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let object =
        UniqueObject::deserialize(&mut de).map_err(|e| JoseError::Json(part, e.to_string()))?;
    de.end().map_err(|e| JoseError::Json(part, e.to_string()))?;
    Ok(object.0)
}

/// A JSON object whose top-level member names are unique (RFC 7515 §5.2 step 4 and RFC 7519
/// §4 ask to reject duplicates or use the last; rejecting is the safe choice).
struct UniqueObject(Claims);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, access: A) -> Result<UniqueObject, A::Error> {
                unique_members(access).map(UniqueObject)
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// The members of a JSON object, refusing a name given twice.
fn unique_members<'de, A: MapAccess<'de>>(mut access: A) -> Result<Claims, A::Error> {
    let mut map = Map::new();
    while let Some(key) = access.next_key::<String>()? {
        if map.contains_key(&key) {
            return Err(serde::de::Error::custom(format_args!(
                "duplicate member {key:?}"
            )));
        }
        let StrictValue(value) = access.next_value()?;
        map.insert(key, value);
    }
    Ok(map)
}

/// Any JSON value, with unique member names in every object and no special members.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = StrictValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::from(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::from(v)))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<StrictValue, E> {
                serde_json::Number::from_f64(v)
                    .map(|n| StrictValue(Value::Number(n)))
                    .ok_or_else(|| E::custom("a number that is not finite"))
            }
            fn visit_str<E>(self, v: &str) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::String(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::String(v)))
            }
            fn visit_unit<E>(self) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::Null))
            }
            fn visit_none<E>(self) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::Null))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<StrictValue, A::Error> {
                let mut items = Vec::new();
                while let Some(StrictValue(item)) = access.next_element()? {
                    items.push(item);
                }
                Ok(StrictValue(Value::Array(items)))
            }
            fn visit_map<A: MapAccess<'de>>(self, access: A) -> Result<StrictValue, A::Error> {
                unique_members(access).map(|map| StrictValue(Value::Object(map)))
            }
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}

/// SHA-256 of `bytes` (cache keys and change detection; never stored with the input).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// A short, non-reversible fingerprint of a token for logs (never log the token itself).
pub fn fingerprint(token: &str) -> String {
    fingerprint_of(&sha256(token.as_bytes()))
}

/// [`fingerprint`] from the token's SHA-256 digest.
pub fn fingerprint_of(digest: &[u8; 32]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(12);
    for b in &digest[..6] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(json: &str) -> String {
        B64.encode(json)
    }

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.{}", seg(header), seg(payload), B64.encode(b"sig"))
    }

    #[test]
    fn parses_a_well_formed_token() {
        let t = token(
            r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#,
            r#"{"sub":"a","n":1}"#,
        );
        let jws = parse(&t).expect("parses");
        assert_eq!(jws.header.alg, "RS256");
        assert_eq!(jws.header.kid.as_deref(), Some("k1"));
        assert_eq!(jws.claims["sub"], "a");
        assert!(t.starts_with(jws.signing_input));
    }

    #[test]
    fn rejects_hostile_shapes() {
        let ok_header = r#"{"alg":"RS256"}"#;
        let cases: Vec<(String, JoseError)> = vec![
            ("a.b".into(), JoseError::Segments(2)),
            ("a.b.c.d".into(), JoseError::Segments(4)),
            ("a.b.c.d.e".into(), JoseError::Encrypted),
            (
                format!("{}.{}.%%", seg(ok_header), seg("{}")),
                JoseError::Base64("signature"),
            ),
            (
                format!("{}=.{}.c2ln", seg(ok_header), seg("{}")),
                JoseError::Base64("header"),
            ),
            (
                format!("{}.%%%.c2ln", seg(ok_header)),
                JoseError::Base64("payload"),
            ),
            (token(r#"{"alg":5}"#, "{}"), JoseError::NoAlgorithm),
            (token(r#"{"typ":"JWT"}"#, "{}"), JoseError::NoAlgorithm),
            (
                token(r#"{"alg":"RS256","kid":7}"#, "{}"),
                JoseError::HeaderMember("kid"),
            ),
            (
                token(r#"{"alg":"RS256","crit":"b64"}"#, "{}"),
                JoseError::HeaderMember("crit"),
            ),
            (
                "x".repeat(MAX_TOKEN_BYTES + 1),
                JoseError::TooLarge(MAX_TOKEN_BYTES + 1),
            ),
        ];
        for (input, expected) in cases {
            let got = parse(&input).expect_err(&input[..input.len().min(40)]);
            assert_eq!(got, expected, "{}", &input[..input.len().min(40)]);
        }
    }

    #[test]
    fn rejects_non_objects_duplicates_and_bad_utf8() {
        for payload in [
            r#"[1,2]"#,
            r#""s""#,
            r#"{"sub":"a","sub":"b"}"#,
            r#"{"a":1} x"#,
            // Duplicates nested in claims, too.
            r#"{"billing":{"tier":"free","tier":"gold"}}"#,
            r#"{"a":[{"x":1,"x":2}]}"#,
        ] {
            let t = token(r#"{"alg":"RS256"}"#, payload);
            assert!(
                matches!(parse(&t), Err(JoseError::Json("payload", _))),
                "{payload}"
            );
        }
        let t = format!(
            "{}.{}.c2ln",
            seg(r#"{"alg":"RS256","alg":"none"}"#),
            seg("{}")
        );
        assert!(matches!(parse(&t), Err(JoseError::Json("header", _))));
        let t = format!(
            "{}.{}.c2ln",
            seg(r#"{"alg":"RS256"}"#),
            B64.encode([0xff, 0xfe, b'{'])
        );
        assert!(matches!(parse(&t), Err(JoseError::Json("payload", _))));
    }

    /// serde_json's `Value` (with the `raw_value` feature a dependency enables) reads this
    /// member as the JSON text inside it; tollgate reads it as the object it is.
    #[test]
    fn the_raw_value_member_is_an_ordinary_member() {
        let t = token(
            r#"{"alg":"RS256"}"#,
            r#"{"aud":{"$serde_json::private::RawValue":"\"api://orders\""}}"#,
        );
        let jws = parse(&t).expect("parses");
        assert!(jws.claims["aud"].is_object(), "{:?}", jws.claims["aud"]);
        assert_eq!(
            jws.claims["aud"]["$serde_json::private::RawValue"],
            "\"api://orders\""
        );
    }

    #[test]
    fn deeply_nested_claims_are_refused_not_overflowing() {
        let bomb = format!("{}{}", "[".repeat(8000), "]".repeat(8000));
        let t = token(r#"{"alg":"RS256"}"#, &format!(r#"{{"a":{bomb}}}"#));
        // Larger than the limit once encoded, so refused before parsing.
        assert!(matches!(parse(&t), Err(JoseError::TooLarge(_))));
        let nested = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let t = token(r#"{"alg":"RS256"}"#, &format!(r#"{{"a":{nested}}}"#));
        assert!(matches!(parse(&t), Err(JoseError::Json("payload", _))));
    }

    #[test]
    fn fingerprint_is_short_and_stable() {
        assert_eq!(fingerprint("abc"), fingerprint("abc"));
        assert_eq!(fingerprint("abc").len(), 12);
        assert_ne!(fingerprint("abc"), fingerprint("abd"));
    }
}

//! A local token issuer: generated signing keys, their JWKS, and token minting. Used by
//! `tollgate demo` and by the tests, which mint every token with a freshly generated key.
//!
//! `server` serves the keys over HTTP (OpenID discovery + JWKS) like a real identity provider,
//! with switches to rotate keys or go down.

pub mod server;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    self, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    Ed25519KeyPair, KeyPair,
};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::jose::B64;

enum Material {
    Rsa(signature::RsaKeyPair),
    Ec(EcdsaKeyPair, &'static str),
    Ed(Ed25519KeyPair),
    Hmac(Vec<u8>),
}

/// A signing key with its `kid` and algorithm.
pub struct SigningKey {
    pub kid: String,
    /// The JWS `alg` this key signs with.
    pub alg: &'static str,
    material: Material,
}

/// Why a key could not be generated or a token signed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct IssuerError(String);

fn err(e: impl std::fmt::Display) -> IssuerError {
    IssuerError(e.to_string())
}

impl SigningKey {
    /// A new RSA key (2048, 3072 or 4096 bits) signing with `alg` (RS*/PS*).
    pub fn rsa(kid: &str, alg: &'static str, bits: usize) -> Result<Self, IssuerError> {
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            other => return Err(IssuerError(format!("unsupported RSA size {other}"))),
        };
        let pair = aws_lc_rs::rsa::KeyPair::generate(size).map_err(err)?;
        let der = pair.as_der().map_err(err)?;
        let pair = signature::RsaKeyPair::from_pkcs8(der.as_ref()).map_err(err)?;
        Ok(SigningKey {
            kid: kid.into(),
            alg,
            material: Material::Rsa(pair),
        })
    }

    /// A new EC key: `ES256` (P-256) or `ES384` (P-384).
    pub fn ec(kid: &str, alg: &'static str) -> Result<Self, IssuerError> {
        let (curve, crv) = match alg {
            "ES256" => (&ECDSA_P256_SHA256_FIXED_SIGNING, "P-256"),
            "ES384" => (&ECDSA_P384_SHA384_FIXED_SIGNING, "P-384"),
            other => return Err(IssuerError(format!("unsupported EC algorithm {other}"))),
        };
        let pair = EcdsaKeyPair::generate(curve).map_err(err)?;
        Ok(SigningKey {
            kid: kid.into(),
            alg,
            material: Material::Ec(pair, crv),
        })
    }

    /// A new Ed25519 key (`EdDSA`).
    pub fn ed25519(kid: &str) -> Result<Self, IssuerError> {
        let pair = Ed25519KeyPair::generate().map_err(err)?;
        Ok(SigningKey {
            kid: kid.into(),
            alg: "EdDSA",
            material: Material::Ed(pair),
        })
    }

    /// An HMAC key (`HS256`/`HS384`/`HS512`) from any bytes, including too-short ones.
    pub fn hmac(kid: &str, alg: &'static str, secret: &[u8]) -> Self {
        SigningKey {
            kid: kid.into(),
            alg,
            material: Material::Hmac(secret.to_vec()),
        }
    }

    /// The public JWK (with `kid`, `use: sig` and `alg`). HMAC keys have none.
    pub fn jwk(&self) -> Option<Value> {
        match &self.material {
            Material::Rsa(pair) => {
                let parts = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                Some(
                    json!({"kty": "RSA", "kid": self.kid, "use": "sig", "alg": self.alg,
                    "n": B64.encode(&parts.n), "e": B64.encode(&parts.e)}),
                )
            }
            Material::Ec(pair, crv) => {
                let point = pair.public_key().as_ref();
                let size = (point.len() - 1) / 2;
                Some(
                    json!({"kty": "EC", "kid": self.kid, "use": "sig", "alg": self.alg, "crv": crv,
                    "x": B64.encode(&point[1..1 + size]), "y": B64.encode(&point[1 + size..])}),
                )
            }
            Material::Ed(pair) => Some(
                json!({"kty": "OKP", "kid": self.kid, "use": "sig", "alg": "EdDSA",
                "crv": "Ed25519", "x": B64.encode(pair.public_key().as_ref())}),
            ),
            Material::Hmac(_) => None,
        }
    }

    /// The public key as PEM (`PUBLIC KEY`, SPKI). HMAC keys have none.
    pub fn public_pem(&self) -> Option<String> {
        let der: Vec<u8> = match &self.material {
            Material::Rsa(pair) => pair.public_key().as_der().ok()?.as_ref().to_vec(),
            Material::Ec(pair, _) => pair.public_key().as_der().ok()?.as_ref().to_vec(),
            Material::Ed(pair) => pair.public_key().as_der().ok()?.as_ref().to_vec(),
            Material::Hmac(_) => return None,
        };
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .filter_map(|c| std::str::from_utf8(c).ok())
            .collect();
        Some(format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        ))
    }

    /// Signs `input` with this key's algorithm.
    pub fn sign(&self, input: &[u8]) -> Result<Vec<u8>, IssuerError> {
        let rng = SystemRandom::new();
        match &self.material {
            Material::Rsa(pair) => {
                let padding: &'static dyn signature::RsaEncoding = match self.alg {
                    "RS256" => &signature::RSA_PKCS1_SHA256,
                    "RS384" => &signature::RSA_PKCS1_SHA384,
                    "RS512" => &signature::RSA_PKCS1_SHA512,
                    "PS256" => &signature::RSA_PSS_SHA256,
                    "PS384" => &signature::RSA_PSS_SHA384,
                    "PS512" => &signature::RSA_PSS_SHA512,
                    other => return Err(IssuerError(format!("{other} is not an RSA algorithm"))),
                };
                let mut out = vec![0; pair.public_modulus_len()];
                pair.sign(padding, &rng, input, &mut out).map_err(err)?;
                Ok(out)
            }
            Material::Ec(pair, _) => Ok(pair.sign(&rng, input).map_err(err)?.as_ref().to_vec()),
            Material::Ed(pair) => Ok(pair.sign(input).as_ref().to_vec()),
            Material::Hmac(secret) => {
                let alg = match self.alg {
                    "HS256" => aws_lc_rs::hmac::HMAC_SHA256,
                    "HS384" => aws_lc_rs::hmac::HMAC_SHA384,
                    "HS512" => aws_lc_rs::hmac::HMAC_SHA512,
                    other => return Err(IssuerError(format!("{other} is not an HMAC algorithm"))),
                };
                let key = aws_lc_rs::hmac::Key::new(alg, secret);
                Ok(aws_lc_rs::hmac::sign(&key, input).as_ref().to_vec())
            }
        }
    }

    /// Mints a compact JWS with header `{alg, typ: JWT, kid}` and the given claims.
    pub fn mint(&self, claims: &Value) -> Result<String, IssuerError> {
        self.mint_with_header(
            &json!({"alg": self.alg, "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }

    /// Mints a compact JWS with exactly this header (which may lie about `alg`: the signature
    /// is always made with this key's own algorithm).
    pub fn mint_with_header(&self, header: &Value, claims: &Value) -> Result<String, IssuerError> {
        let input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(header).map_err(err)?),
            B64.encode(serde_json::to_vec(claims).map_err(err)?)
        );
        let signature = self.sign(input.as_bytes())?;
        Ok(format!("{input}.{}", B64.encode(signature)))
    }
}

impl SigningKey {
    /// The RFC 7638 thumbprint of the public key: a DPoP-bound token's `cnf.jkt`.
    pub fn thumbprint(&self) -> Option<String> {
        crate::dpop::thumbprint(&self.jwk()?).ok()
    }

    /// A DPoP proof (RFC 9449) made with this key: header `{typ: dpop+jwt, alg, jwk}`, and
    /// `claims` (`jti`, `htm`, `htu`, `iat`, `ath`) as given.
    pub fn dpop_proof(&self, claims: &Value) -> Result<String, IssuerError> {
        let mut jwk = self
            .jwk()
            .ok_or_else(|| IssuerError("an HMAC key has no public JWK".into()))?;
        if let Some(object) = jwk.as_object_mut() {
            object.remove("kid");
            object.remove("use");
        }
        self.mint_with_header(
            &json!({"typ": crate::dpop::PROOF_TYPE, "alg": self.alg, "jwk": jwk}),
            claims,
        )
    }
}

/// The `ath` of a DPoP proof for `token`: base64url(SHA-256(token)).
pub fn dpop_ath(token: &str) -> String {
    B64.encode(crate::jose::sha256(token.as_bytes()))
}

/// A JWKS document of the given keys' public halves.
pub fn jwks(keys: &[&SigningKey]) -> Value {
    json!({"keys": keys.iter().filter_map(|k| k.jwk()).collect::<Vec<_>>()})
}

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

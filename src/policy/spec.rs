//! The policy document: the public contract shared by policy files and (later) the `JwtPolicy`
//! custom resource. Field names are stable; new fields are added, never renamed.
//!
//! These types only describe shape. Meaning (URLs, durations, algorithms, limits) is checked in
//! `compile`, which turns a spec into a `Policy` or a `CompileError` that says what to change.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// `apiVersion` of policy documents.
pub const API_VERSION: &str = "tollgate.dev/v1alpha1";
/// `kind` of policy documents.
pub const KIND: &str = "JwtPolicy";

/// A policy document as written in a file (`apiVersion`, `kind`, `metadata`, `spec`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDocument {
    pub api_version: String,
    pub kind: String,
    pub metadata: DocumentMetadata,
    pub spec: JwtPolicySpec,
    /// Ignored: lets the output of `kubectl get -o yaml` be used as a file.
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

/// The parts of Kubernetes object metadata a policy file uses; other members are ignored.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentMetadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// What a `JwtPolicy` says: which requests it judges and how their tokens are validated.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtPolicySpec {
    /// Which requests this policy judges.
    #[serde(default, rename = "match")]
    pub match_: MatchSpec,
    /// Where the token is read. Default: `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token: TokenSpec,
    /// Accepted issuers and where their keys come from.
    pub issuers: Vec<IssuerSpec>,
    /// Claims every token must carry (Azure API Management `required-claims` semantics).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_claims: Vec<ClaimRequirementSpec>,
    /// Extra requirements per path/method, checked after the policy-wide ones. The matching rule
    /// with the longest path prefix applies; its failure answers 403 `insufficient_scope`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleSpec>,
    /// Tolerance for `exp`, `nbf` and `iat`, e.g. `30s` (default `30s`, at most `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew: Option<String>,
    /// Whether tokens without `exp` are refused (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_expiration_time: Option<bool>,
    /// What the upstream receives when the request is allowed.
    #[serde(default)]
    pub forward: ForwardSpec,
    /// The answer when the request is denied.
    #[serde(default)]
    pub deny: DenySpec,
}

/// Request matching. Empty lists match everything.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchSpec {
    /// Exact hosts (`api.example.com`), wildcards (`*.example.org`: any subdomain) or `*`.
    /// The port is ignored. Default: every host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Path prefixes, segment-aware: `/orders` matches `/orders` and `/orders/1`, not
    /// `/ordersx`. Default: every path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// HTTP methods. Default: every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

/// Where the token is read, in this order: header, query parameter, cookie.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenSpec {
    /// Header name (default `Authorization`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Scheme before the token, case-insensitive (default `Bearer`); `""` takes the whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Query parameter carrying the token (RFC 6750 §2.3), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Cookie carrying the token, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// One accepted issuer. Keys come from exactly one of: `discovery` (the default when nothing
/// else is set), `jwksUri`, `jwks`, `publicKeys`, `sharedSecret`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerSpec {
    /// The exact `iss` value of this issuer's tokens.
    pub issuer: String,
    /// OpenID discovery document. Default: `<issuer>/.well-known/openid-configuration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<String>,
    /// JWKS URL, instead of discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Inline JWKS (`{keys: [...]}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwksSpec>,
    /// Inline PEM public keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_keys: Vec<PublicKeySpec>,
    /// HMAC shared secret (HS256/384/512 are accepted only with one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_secret: Option<SecretSpec>,
    /// Accepted `aud` values; a token must name at least one. Required.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Allowed signature algorithms. Default: every asymmetric algorithm that fits the key
    /// (HS* only with `sharedSecret`). `none` is never accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub algorithms: Vec<String>,
    /// Allow plain-http discovery/JWKS URLs (local development only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_insecure_http: bool,
}

/// An inline JSON Web Key Set.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwksSpec {
    /// JWKs (RFC 7517).
    pub keys: Vec<serde_json::Value>,
}

/// An inline PEM public key.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublicKeySpec {
    /// Key id matched against the token's `kid`; without one the key is tried for tokens
    /// without `kid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// `-----BEGIN PUBLIC KEY-----` (RSA, EC P-256/P-384, Ed25519) or `RSA PUBLIC KEY`.
    pub pem: String,
}

/// Where a secret value is read.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretSpec {
    /// A file (relative paths are relative to the policy file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// A Kubernetes Secret in the policy's namespace (Kubernetes mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// How the stored value is encoded (default `raw`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<SecretEncoding>,
}

/// A key of a Kubernetes Secret.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// Encoding of a stored secret.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SecretEncoding {
    /// The bytes as stored (a trailing newline is removed).
    #[default]
    Raw,
    /// Standard base64.
    Base64,
    /// base64url, with or without padding.
    Base64url,
}

/// `any`: at least one value must be present; `all`: every value must be present.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MatchMode {
    #[default]
    Any,
    All,
}

/// A claim the token must carry.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimRequirementSpec {
    /// Claim name; a dotted path (`realm_access.roles`) reaches nested claims when no claim has
    /// the literal name.
    pub name: String,
    /// `any` (default) or `all` of `values`.
    #[serde(default, rename = "match")]
    pub match_: MatchMode,
    /// Splits string claims (e.g. `" "` for `scp`/`scope`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
    /// Accepted values, compared as strings (numbers and booleans by their JSON text). Empty:
    /// the claim only has to be present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<ClaimValue>,
}

/// A rule for some paths/methods.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    /// Path prefixes (segment-aware). Default: every path of the policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Methods. Default: every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Claims required in addition to the policy-wide ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_claims: Vec<ClaimRequirementSpec>,
    /// Let matching requests through without a token (the token is not read).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_anonymous: bool,
}

/// What the upstream receives on allow.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForwardSpec {
    /// Claims copied into request headers (arrays joined with `,`). A header a client sent
    /// itself is always replaced or removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims_to_headers: Vec<ClaimToHeaderSpec>,
    /// Header receiving the verified claims as base64url JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_header: Option<String>,
    /// Whether the token stays in the request (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_token: Option<bool>,
}

/// One claim copied into a header.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeaderSpec {
    pub claim: String,
    pub header: String,
}

/// How much `error_description` reveals.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DenyDetail {
    /// Only the message.
    None,
    /// The reason code and what failed (never the token, never the policy's own settings).
    #[default]
    Reason,
}

/// The answer for a denied request.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DenySpec {
    /// Status for token failures (default 401, 400–499). Failed `rules` answer 403.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Human message in the JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `reason` (default) or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<DenyDetail>,
    /// `realm` of the `WWW-Authenticate` challenge (default: the request's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
}

/// A claim value in `requiredClaims`: written as a string, number or boolean, compared as text.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClaimValue(pub String);

impl fmt::Display for ClaimValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ClaimValue {
    fn from(value: &str) -> Self {
        ClaimValue(value.to_string())
    }
}

impl Serialize for ClaimValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ClaimValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = ClaimValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ClaimValue, E> {
                Ok(ClaimValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ClaimValue, E> {
                Ok(ClaimValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ClaimValue, E> {
                Ok(ClaimValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ClaimValue, E> {
                Ok(ClaimValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ClaimValue, E> {
                serde_json::Number::from_f64(v)
                    .map(|n| ClaimValue(n.to_string()))
                    .ok_or_else(|| E::custom("not a finite number"))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

impl JsonSchema for ClaimValue {
    fn schema_name() -> Cow<'static, str> {
        "ClaimValue".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "Compared as text; write numbers and booleans in quotes (\"42\", \"true\")."
        })
    }
}

//! What a check decides, and the stable reason codes every decision carries.
//!
//! Reason codes are part of the public contract: they appear in `error_description`, logs,
//! metric labels and `docs/reasons.md`, so they are never renamed, only added.

use std::fmt;
use std::sync::Arc;

use crate::trace::Trace;

/// Why a request was allowed or denied. Bounded: safe as a metric label.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A valid token satisfied the policy.
    #[default]
    Valid,
    /// The request matched a rule with `allowAnonymous: true`.
    Anonymous,
    /// No policy matched and `--default-action allow` is set.
    DefaultAllow,
    /// No token in any of the places the policy reads.
    TokenMissing,
    /// The token is not a well-formed compact JWS, too large, or sent in more than one place.
    TokenMalformed,
    /// The token is an encrypted JWE and the policy cannot decrypt it.
    TokenEncrypted,
    /// The token is encrypted and no decryption key of the policy has its `kid` and fits its
    /// `alg`/`enc`.
    DecryptionKeyNotFound,
    /// The token is encrypted and could not be decrypted: another key, or altered on the way.
    DecryptionFailed,
    /// A decrypted token does not contain a signed JWT (`requireSignedTokens`).
    TokenNotSigned,
    /// A Microsoft Graph (or SharePoint) token: `nonce` in its header, or Graph as its
    /// audience. Only Microsoft can validate it.
    AzureGraphToken,
    /// An Azure AD v1 token where only v2 is accepted, or the reverse.
    AzureTokenVersion,
    /// The header names critical extensions (`crit`) tollgate does not implement.
    UnsupportedCriticalHeader,
    /// The algorithm is `none`, unknown, not on the issuer's allowlist, or does not fit the key.
    AlgorithmNotAllowed,
    /// The `iss` claim is missing or not one of the policy's issuers.
    IssuerNotAllowed,
    /// The issuer's keys have never been fetched successfully (answers 503, not 401).
    IssuerUnavailable,
    /// No key of the issuer has the token's `kid` (after a rate-limited refetch).
    KeyNotFound,
    /// The signature does not verify with the issuer's key.
    SignatureInvalid,
    /// The `aud` claim is missing or names none of the accepted audiences.
    AudienceMismatch,
    /// `exp` is in the past (beyond the clock skew).
    TokenExpired,
    /// `nbf` or `iat` is in the future (beyond the clock skew).
    TokenNotYetValid,
    /// The token has no `exp` and the policy requires one.
    ExpirationMissing,
    /// The token lives longer than its issuer's `maxTokenLifetime` (`exp - iat`, or
    /// `exp - now` without `iat`).
    TokenLifetimeExceeded,
    /// A policy-wide `requiredClaims` entry is not satisfied.
    ClaimMismatch,
    /// A `rules` entry for this path/method is not satisfied (403).
    InsufficientScope,
    /// A CEL condition (`when`) of the policy or the rule is not true (403, or the
    /// condition's `status`).
    ConditionFailed,
    /// No policy matches the request's host, path and method.
    NoPolicy,
    /// The route names a policy (`tollgate.dev/policy`) that is not loaded.
    PolicyNotFound,
    /// Two policies judge the same HTTPRoute rule the same way (a route attached to two
    /// listeners, each with its own policy): which one applies cannot be known (403).
    PolicyConflict,
    /// The check request itself is malformed (no HTTP attributes), or the request is one an
    /// upstream could read in more than one way (its path, its method, its forwarded headers).
    RequestMalformed,
    /// A call to the HTTP listener from an address outside `--trusted-proxies` (403).
    ProxyNotTrusted,
    /// Introspection answered that the token is not active (expired, revoked, unknown).
    TokenInactive,
    /// The introspection endpoint answered 503 or could not be reached (answers 503).
    IntrospectionUnavailable,
    /// The introspection call timed out (answers 503).
    IntrospectionTimeout,
    /// The introspection endpoint refused the call: 401/403/404 or another 5xx (answers 502).
    IntrospectionFailed,
    /// The introspection answer breaks the protocol (answers 500).
    IntrospectionInvalid,
    /// Policies or keys are not loaded yet (answers 503).
    NotReady,
    /// A bug or an unexpected internal state (answers 500).
    Internal,
    /// A GET or HEAD of a protected resource metadata URL a policy declares (RFC 9728):
    /// answered with the document (200) by tollgate itself, never by the upstream; 404 from
    /// forward authentication, which can only let the request through.
    ResourceMetadata,
    /// Allowed because the policy is in `mode: dryRun`; it would have denied the request
    /// (the decision's `dry_run` says with which reason).
    DryRun,
    /// A policy that accepts only API keys: no key in the request (401, `ApiKey` challenge).
    ApiKeyMissing,
    /// The API key is not one of the policy's keys, or cannot be one (sent twice, bad
    /// characters) (401, `ApiKey` challenge).
    ApiKeyInvalid,
    /// The request carries both an API key and a token and the policy does not say which
    /// counts (`apiKeys.withToken: Refuse`) (400).
    ApiKeyAmbiguous,
    /// The token is bound to a client certificate (RFC 8705 `cnf.x5t#S256`) and the request
    /// came without one.
    CertificateMissing,
    /// The token is bound to a client certificate other than the request's (or its `cnf`
    /// binding is malformed).
    CertificateBindingMismatch,
    /// The policy requires a client certificate (`clientCertificate.required`) and the
    /// request came without one (403).
    CertificateRequired,
    /// A forwarded client certificate header (`x-forwarded-client-cert`, `client-cert`) from
    /// a proxy not trusted to set it (403).
    CertificateUntrusted,
    /// A DPoP-bound token (or the `DPoP` scheme) without a `DPoP` proof header.
    DpopProofMissing,
    /// The `DPoP` proof is not valid for this request and token: its form, `typ`, `alg`,
    /// `jwk`, signature, `htm`, `htu`, `iat`, `ath` or key thumbprint; or more than one proof.
    DpopProofInvalid,
    /// The `DPoP` proof's `jti` was already used with this key within the proof window (on
    /// this replica).
    DpopReplayed,
    /// The replay cache is full of proofs still inside their window (answers 503).
    DpopReplayCacheFull,
    /// A DPoP-bound token (`cnf.jkt`) presented as a bearer token, or to a policy that does not
    /// read DPoP.
    DpopBoundTokenAsBearer,
    /// The policy requires DPoP (`dpop.mode: required`) and the request presents a bearer
    /// token, or a token that is not DPoP-bound.
    DpopRequired,
    /// The policy sets DPoP nonces (`dpop.nonce`) and the proof carries none, or one that is
    /// not this server's or has expired: the answer carries a fresh `DPoP-Nonce`
    /// (`use_dpop_nonce`, RFC 9449 §9).
    DpopNonceRequired,
    /// Too many fresh encrypted tokens wait for a private-key operation (answers 503): the
    /// decryptions a replica runs at once, and those waiting, are bounded.
    DecryptionOverloaded,
}

impl Reason {
    /// Every reason, for documentation and tests.
    pub const ALL: [Reason; 54] = [
        Reason::Valid,
        Reason::Anonymous,
        Reason::DefaultAllow,
        Reason::TokenMissing,
        Reason::TokenMalformed,
        Reason::TokenEncrypted,
        Reason::DecryptionKeyNotFound,
        Reason::DecryptionFailed,
        Reason::TokenNotSigned,
        Reason::AzureGraphToken,
        Reason::AzureTokenVersion,
        Reason::UnsupportedCriticalHeader,
        Reason::AlgorithmNotAllowed,
        Reason::IssuerNotAllowed,
        Reason::IssuerUnavailable,
        Reason::KeyNotFound,
        Reason::SignatureInvalid,
        Reason::AudienceMismatch,
        Reason::TokenExpired,
        Reason::TokenNotYetValid,
        Reason::ExpirationMissing,
        Reason::TokenLifetimeExceeded,
        Reason::ClaimMismatch,
        Reason::InsufficientScope,
        Reason::ConditionFailed,
        Reason::NoPolicy,
        Reason::PolicyNotFound,
        Reason::PolicyConflict,
        Reason::RequestMalformed,
        Reason::ProxyNotTrusted,
        Reason::TokenInactive,
        Reason::IntrospectionUnavailable,
        Reason::IntrospectionTimeout,
        Reason::IntrospectionFailed,
        Reason::IntrospectionInvalid,
        Reason::NotReady,
        Reason::Internal,
        Reason::ResourceMetadata,
        Reason::DryRun,
        Reason::ApiKeyMissing,
        Reason::ApiKeyInvalid,
        Reason::ApiKeyAmbiguous,
        Reason::CertificateMissing,
        Reason::CertificateBindingMismatch,
        Reason::CertificateRequired,
        Reason::CertificateUntrusted,
        Reason::DpopProofMissing,
        Reason::DpopProofInvalid,
        Reason::DpopReplayed,
        Reason::DpopReplayCacheFull,
        Reason::DpopBoundTokenAsBearer,
        Reason::DpopRequired,
        Reason::DpopNonceRequired,
        Reason::DecryptionOverloaded,
    ];

    /// The stable snake_case code.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Valid => "valid",
            Reason::Anonymous => "anonymous",
            Reason::DefaultAllow => "default_allow",
            Reason::TokenMissing => "token_missing",
            Reason::TokenMalformed => "token_malformed",
            Reason::TokenEncrypted => "token_encrypted",
            Reason::DecryptionKeyNotFound => "decryption_key_not_found",
            Reason::DecryptionFailed => "decryption_failed",
            Reason::TokenNotSigned => "token_not_signed",
            Reason::AzureGraphToken => "azure_graph_token",
            Reason::AzureTokenVersion => "azure_token_version",
            Reason::UnsupportedCriticalHeader => "unsupported_critical_header",
            Reason::AlgorithmNotAllowed => "algorithm_not_allowed",
            Reason::IssuerNotAllowed => "issuer_not_allowed",
            Reason::IssuerUnavailable => "issuer_unavailable",
            Reason::KeyNotFound => "key_not_found",
            Reason::SignatureInvalid => "signature_invalid",
            Reason::AudienceMismatch => "audience_mismatch",
            Reason::TokenExpired => "token_expired",
            Reason::TokenNotYetValid => "token_not_yet_valid",
            Reason::ExpirationMissing => "expiration_missing",
            Reason::TokenLifetimeExceeded => "token_lifetime_exceeded",
            Reason::ClaimMismatch => "claim_mismatch",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::ConditionFailed => "condition_failed",
            Reason::NoPolicy => "no_policy",
            Reason::PolicyNotFound => "policy_not_found",
            Reason::PolicyConflict => "policy_conflict",
            Reason::RequestMalformed => "request_malformed",
            Reason::ProxyNotTrusted => "proxy_not_trusted",
            Reason::TokenInactive => "token_inactive",
            Reason::IntrospectionUnavailable => "introspection_unavailable",
            Reason::IntrospectionTimeout => "introspection_timeout",
            Reason::IntrospectionFailed => "introspection_failed",
            Reason::IntrospectionInvalid => "introspection_invalid",
            Reason::NotReady => "not_ready",
            Reason::Internal => "internal_error",
            Reason::ResourceMetadata => "resource_metadata",
            Reason::DryRun => "dry_run",
            Reason::ApiKeyMissing => "api_key_missing",
            Reason::ApiKeyInvalid => "api_key_invalid",
            Reason::ApiKeyAmbiguous => "api_key_ambiguous",
            Reason::CertificateMissing => "certificate_missing",
            Reason::CertificateBindingMismatch => "certificate_binding_mismatch",
            Reason::CertificateRequired => "certificate_required",
            Reason::CertificateUntrusted => "certificate_untrusted",
            Reason::DpopProofMissing => "dpop_proof_missing",
            Reason::DpopProofInvalid => "dpop_proof_invalid",
            Reason::DpopReplayed => "dpop_replayed",
            Reason::DpopReplayCacheFull => "dpop_replay_cache_full",
            Reason::DpopBoundTokenAsBearer => "dpop_bound_token_as_bearer",
            Reason::DpopRequired => "dpop_required",
            Reason::DpopNonceRequired => "dpop_nonce_required",
            Reason::DecryptionOverloaded => "decryption_overloaded",
        }
    }

    /// The fixed text clients get after the code in `error_description`. The details (which
    /// audience, which URL failed, which setting to change) go to the log, `explain` and the
    /// opt-in trace only: they can name internal hosts and configuration, and the request
    /// (its query may hold a token) is never echoed.
    pub fn public_text(self) -> &'static str {
        match self {
            Reason::Valid => "the token is valid",
            Reason::Anonymous => "no token is needed here",
            Reason::DefaultAllow => "no policy applies",
            Reason::TokenMissing => "no access token in the request",
            Reason::TokenMalformed => "the access token is malformed",
            Reason::TokenEncrypted => "the access token is encrypted and cannot be decrypted here",
            Reason::DecryptionKeyNotFound => "no key here decrypts the access token",
            Reason::DecryptionFailed => "the access token could not be decrypted",
            Reason::TokenNotSigned => "the access token is not signed",
            Reason::AzureGraphToken => {
                "this token is for Microsoft Graph and cannot be validated by a third party; request a token for your API's scope (api://.../.default)"
            }
            Reason::AzureTokenVersion => {
                "the Azure AD token version (v1.0 or v2.0) is not the one this API accepts"
            }
            Reason::UnsupportedCriticalHeader => {
                "the access token requires an extension (crit) that is not supported"
            }
            Reason::AlgorithmNotAllowed => "the access token's algorithm is not accepted",
            Reason::IssuerNotAllowed => "the access token's issuer is not accepted",
            Reason::IssuerUnavailable => "the issuer's keys are not available; try again later",
            Reason::KeyNotFound => "the key that signed the access token is not known",
            Reason::SignatureInvalid => "the access token's signature is invalid",
            Reason::AudienceMismatch => "the access token is not meant for this API (audience)",
            Reason::TokenExpired => "the access token has expired",
            Reason::TokenNotYetValid => "the access token is not valid yet",
            Reason::ExpirationMissing => "the access token has no expiration time",
            Reason::TokenLifetimeExceeded => {
                "the access token's lifetime is longer than this API accepts"
            }
            Reason::ClaimMismatch => "the access token lacks a claim this API requires",
            Reason::InsufficientScope => {
                "the access token lacks the scope or role this request needs"
            }
            Reason::ConditionFailed => "the request does not meet a condition of this API",
            Reason::NoPolicy => "no policy covers this request",
            Reason::PolicyNotFound => "the policy this route names is not loaded",
            Reason::PolicyConflict => {
                "two policies claim this request; which one applies cannot be known"
            }
            Reason::RequestMalformed => {
                "the request cannot be judged as exactly one request (its path, method or forwarded headers)"
            }
            Reason::ProxyNotTrusted => "the caller is not a trusted proxy",
            Reason::TokenInactive => "the access token is not active",
            Reason::IntrospectionUnavailable => {
                "token introspection is unavailable; try again later"
            }
            Reason::IntrospectionTimeout => "token introspection timed out; try again later",
            Reason::IntrospectionFailed => "token introspection failed",
            Reason::IntrospectionInvalid => "token introspection gave an invalid answer",
            Reason::NotReady => "policies are still loading; try again shortly",
            Reason::Internal => "internal error",
            Reason::ResourceMetadata => {
                "the protected resource metadata is served by tollgate at this URL, not through forward authentication"
            }
            Reason::DryRun => "the policy is in dry-run mode and lets the request through",
            Reason::ApiKeyMissing => "no API key in the request",
            Reason::ApiKeyInvalid => "the API key is not valid",
            Reason::ApiKeyAmbiguous => {
                "the request carries both an API key and an access token; send one"
            }
            Reason::CertificateMissing => {
                "the access token is bound to a client certificate and none was presented"
            }
            Reason::CertificateBindingMismatch => {
                "the access token is bound to another client certificate"
            }
            Reason::CertificateRequired => "this API requires a client certificate",
            Reason::CertificateUntrusted => {
                "a forwarded client certificate header came from a proxy not trusted to set it"
            }
            Reason::DpopProofMissing => "the DPoP-bound access token needs a DPoP proof",
            Reason::DpopProofInvalid => "the DPoP proof is not valid for this request",
            Reason::DpopReplayed => "the DPoP proof was already used",
            Reason::DpopReplayCacheFull => "too many DPoP proofs at once; try again shortly",
            Reason::DpopBoundTokenAsBearer => {
                "the access token is bound to a key (DPoP) and cannot be used as a bearer token"
            }
            Reason::DpopRequired => "this API accepts only DPoP-bound access tokens",
            Reason::DpopNonceRequired => {
                "the DPoP proof must carry the nonce this server provides in DPoP-Nonce"
            }
            Reason::DecryptionOverloaded => {
                "too many encrypted tokens to decrypt at once; try again shortly"
            }
        }
    }

    /// The RFC 6750 `error` code for the challenge, if any. A missing token gets none (§3.1).
    pub fn oauth_error(self) -> Option<&'static str> {
        match self {
            Reason::Valid
            | Reason::Anonymous
            | Reason::DefaultAllow
            | Reason::DryRun
            | Reason::TokenMissing => None,
            Reason::InsufficientScope | Reason::ConditionFailed => Some("insufficient_scope"),
            // RFC 9449 §7.1.
            Reason::DpopProofMissing | Reason::DpopProofInvalid | Reason::DpopReplayed => {
                Some("invalid_dpop_proof")
            }
            Reason::DpopNonceRequired => Some("use_dpop_nonce"),
            Reason::DpopReplayCacheFull | Reason::DecryptionOverloaded => None,
            Reason::RequestMalformed => Some("invalid_request"),
            Reason::NoPolicy
            | Reason::PolicyNotFound
            | Reason::PolicyConflict
            | Reason::ProxyNotTrusted
            | Reason::IssuerUnavailable
            | Reason::IntrospectionUnavailable
            | Reason::IntrospectionTimeout
            | Reason::IntrospectionFailed
            | Reason::IntrospectionInvalid
            | Reason::NotReady
            | Reason::Internal
            | Reason::ResourceMetadata
            | Reason::ApiKeyMissing
            | Reason::ApiKeyInvalid
            | Reason::CertificateRequired
            | Reason::CertificateUntrusted => None,
            Reason::ApiKeyAmbiguous => Some("invalid_request"),
            _ => Some("invalid_token"),
        }
    }

    /// Whether a `WWW-Authenticate: Bearer` challenge belongs in the answer.
    pub fn challenges(self) -> bool {
        !matches!(
            self,
            Reason::Valid
                | Reason::Anonymous
                | Reason::DefaultAllow
                | Reason::DryRun
                | Reason::NoPolicy
                | Reason::PolicyNotFound
                | Reason::PolicyConflict
                | Reason::ProxyNotTrusted
                | Reason::IssuerUnavailable
                | Reason::IntrospectionUnavailable
                | Reason::IntrospectionTimeout
                | Reason::IntrospectionFailed
                | Reason::IntrospectionInvalid
                | Reason::NotReady
                | Reason::Internal
                | Reason::ResourceMetadata
                | Reason::ApiKeyAmbiguous
                | Reason::CertificateRequired
                | Reason::CertificateUntrusted
                | Reason::DpopReplayCacheFull
                | Reason::DecryptionOverloaded
        )
    }

    /// Whether the failure is about the DPoP proof (its error goes in the `DPoP` challenge).
    pub fn is_dpop(self) -> bool {
        matches!(
            self,
            Reason::DpopProofMissing
                | Reason::DpopProofInvalid
                | Reason::DpopReplayed
                | Reason::DpopReplayCacheFull
                | Reason::DpopBoundTokenAsBearer
                | Reason::DpopRequired
                | Reason::DpopNonceRequired
        )
    }

    /// Whether the challenge is an `ApiKey` one (where the key goes), not `Bearer`.
    pub fn is_api_key(self) -> bool {
        matches!(self, Reason::ApiKeyMissing | Reason::ApiKeyInvalid)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one check, independent of the transport that asked.
#[derive(Clone, Debug)]
pub enum Decision {
    Allow(Allow),
    Deny(Deny),
}

impl Decision {
    pub fn reason(&self) -> Reason {
        match self {
            Decision::Allow(a) => a.reason,
            Decision::Deny(d) => d.reason,
        }
    }

    pub fn policy(&self) -> Option<&str> {
        match self {
            Decision::Allow(a) => a.policy.as_deref(),
            Decision::Deny(d) => d.policy.as_deref(),
        }
    }

    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// The trace, when tracing was on.
    pub fn trace(&self) -> Option<&Arc<Trace>> {
        match self {
            Decision::Allow(a) => a.trace.as_ref(),
            Decision::Deny(d) => d.trace.as_ref(),
        }
    }

    /// The path as judged, when the request got that far.
    pub fn path(&self) -> Option<&str> {
        match self {
            Decision::Allow(a) => a.path.as_deref(),
            Decision::Deny(d) => d.path.as_deref(),
        }
    }

    /// Records the path as judged.
    pub fn with_path(mut self, path: String) -> Self {
        match &mut self {
            Decision::Allow(a) => a.path = Some(path),
            Decision::Deny(d) => d.path = Some(path),
        }
        self
    }

    /// The denial a dry-run policy recorded instead of answering (`mode: dryRun`).
    pub fn would_deny(&self) -> Option<&Deny> {
        match self {
            Decision::Allow(a) => a.dry_run.as_deref(),
            Decision::Deny(_) => None,
        }
    }

    /// The credential that passed verification, if one did (the decision log's issuer and
    /// subject come from it, never from a token that failed).
    pub fn identity(&self) -> Option<&Identity> {
        match self {
            Decision::Allow(a) => a.identity.as_ref(),
            Decision::Deny(d) => d.identity.as_deref(),
        }
    }

    /// Attaches a trace (if it recorded anything).
    pub fn with_trace(mut self, trace: Trace) -> Self {
        if trace.is_on() {
            let trace = Some(Arc::new(trace));
            match &mut self {
                Decision::Allow(a) => a.trace = trace,
                Decision::Deny(d) => d.trace = trace,
            }
        }
        self
    }
}

/// A verified token's claims: parsed, or as the compact JSON the verified-token cache keeps
/// (a parsed map takes several times the memory of its text).
#[derive(Clone)]
pub enum ClaimSet {
    Parsed(Arc<Claims>),
    Json(Arc<str>),
    /// From the cache, with the claims the policy's expressions read kept parsed (so a hit
    /// evaluates them without scanning the JSON).
    Cached {
        json: Arc<str>,
        read: Arc<Claims>,
    },
}

type Claims = serde_json::Map<String, serde_json::Value>;

impl ClaimSet {
    /// The claims as a map (parsed from the JSON, which this process wrote from a map).
    pub fn map(&self) -> std::borrow::Cow<'_, Claims> {
        match self {
            ClaimSet::Parsed(claims) => std::borrow::Cow::Borrowed(claims),
            ClaimSet::Json(json) | ClaimSet::Cached { json, .. } => {
                std::borrow::Cow::Owned(serde_json::from_str(json).unwrap_or_default())
            }
        }
    }
}

impl ClaimSet {
    /// The claims the policy's CEL expressions read (`reads` says which): those the cache
    /// entry kept parsed for them (the cache key names the policy, so they are the same
    /// claims), else as [`ClaimSet::subset`] finds them.
    pub fn read_by_expressions(
        &self,
        reads: &dyn Fn(&str) -> bool,
    ) -> std::borrow::Cow<'_, Claims> {
        match self {
            ClaimSet::Cached { read, .. } => std::borrow::Cow::Borrowed(read),
            _ => self.subset(reads),
        }
    }

    /// The claims `keep` wants, as a map: from the JSON form, the others are skipped without
    /// being built.
    pub fn subset(&self, keep: &dyn Fn(&str) -> bool) -> std::borrow::Cow<'_, Claims> {
        match self {
            ClaimSet::Parsed(claims) => std::borrow::Cow::Borrowed(claims),
            ClaimSet::Json(json) | ClaimSet::Cached { json, .. } => {
                let mut de = serde_json::Deserializer::from_str(json);
                std::borrow::Cow::Owned(
                    serde::de::DeserializeSeed::deserialize(Subset(keep), &mut de)
                        .unwrap_or_default(),
                )
            }
        }
    }
}

/// Deserializes the members of a JSON object that a predicate keeps.
struct Subset<'k>(&'k dyn Fn(&str) -> bool);

impl<'de> serde::de::DeserializeSeed<'de> for Subset<'_> {
    type Value = Claims;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Claims, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Subset<'_> {
    type Value = Claims;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object of claims")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Claims, A::Error> {
        let mut out = Claims::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if (self.0)(&key) {
                out.insert(key.into_owned(), map.next_value()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

/// Both forms print as the map, so equal claims look equal.
impl fmt::Debug for ClaimSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.map(), f)
    }
}

/// A credential that passed verification (a token, or an API key), for the decision log: the
/// fingerprint logs name it by, its issuer, and all its verified claims (shared with the
/// verified-token cache, not copied: the log reads the subject from them on its own thread).
#[derive(Clone)]
pub struct Identity {
    /// [`crate::jose::fingerprint`] of the token, or an API key's id.
    pub token_id: String,
    /// The issuer that signed (or introspected) the token; `None` for an API key.
    pub issuer: Option<String>,
    pub claims: ClaimSet,
}

/// The claims are left out: a cache hit holds only those the policy (and the decision log's
/// subject) read, so a hit and a miss print alike.
impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("token_id", &self.token_id)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// An allowed request and how to change it before it reaches the upstream.
#[derive(Clone, Debug, Default)]
pub struct Allow {
    /// `namespace/name` of the policy that judged the request.
    pub policy: Option<Arc<str>>,
    pub reason: Reason,
    /// Set (overwriting any value the client sent).
    pub headers_to_set: Vec<(String, String)>,
    /// Removed from the upstream request.
    pub headers_to_remove: Vec<String>,
    /// Query parameters removed from the upstream request (a token read from the query).
    pub query_params_to_remove: Vec<String>,
    /// The policy reads an API key from the query: only a transport that removes
    /// `query_params_to_remove` may let the request through (forward authentication cannot).
    pub query_key: bool,
    /// Added to the response the client receives (not the upstream's request): a fresh
    /// `DPoP-Nonce` when the proof's nonce is due for renewal.
    pub response_headers: Vec<(&'static str, String)>,
    /// The verified claims, for the proxy's dynamic metadata.
    pub claims: Option<ClaimSet>,
    /// The issuer that signed the token.
    pub issuer: Option<String>,
    /// Every check the request went through, when tracing was on.
    pub trace: Option<Arc<Trace>>,
    /// The path as judged (see `route::read_path`), once it could be read.
    pub path: Option<String>,
    /// Set when the policy is in `mode: dryRun` and would have denied the request: the denial
    /// it would have answered (status, reason, description, hint). The request is allowed
    /// (`reason` is `dry_run`) without identity headers unless the token itself passed.
    pub dry_run: Option<Box<Deny>>,
    /// The verified credential (none for an anonymous or default allow).
    pub identity: Option<Identity>,
}

/// A denied request and the HTTP answer the client receives.
#[derive(Clone, Debug)]
pub struct Deny {
    pub policy: Option<Arc<str>>,
    /// HTTP status, always set explicitly in the proxy's answer.
    pub status: u16,
    pub reason: Reason,
    /// Why, in words, for logs and (per `deny.detail`) for the client. Never contains the token.
    pub description: String,
    /// The `WWW-Authenticate` header value, when the answer is a Bearer challenge.
    pub www_authenticate: Option<String>,
    /// JSON body: `{"error", "error_description", "message"}`.
    pub body: String,
    /// What the operator could change, naming the policy's settings. Logs only.
    pub hint: Option<String>,
    /// Fingerprint of the token (never the token), for correlating logs.
    pub token_id: Option<String>,
    /// Every check the request went through, when tracing was on.
    pub trace: Option<Arc<Trace>>,
    /// The path as judged (see `route::read_path`), once it could be read.
    pub path: Option<String>,
    /// A fresh `DPoP-Nonce` (RFC 9449 §9), on the 401s of a policy that sets DPoP nonces.
    pub dpop_nonce: Option<String>,
    /// The credential, when it passed verification and something after it failed (a rule,
    /// a condition, the certificate binding, the DPoP proof).
    pub identity: Option<Box<Identity>>,
}

impl Deny {
    /// Whether the answer is a protected resource metadata document (status 200), which the
    /// proxy sends as its own reply.
    pub fn is_document(&self) -> bool {
        self.reason == Reason::ResourceMetadata && self.status == 200
    }

    /// The answer's headers besides the trace: content type, caching and the challenge. A
    /// metadata document is public: cached for [`crate::policy::compile::MAX_AGE_SECS`] and
    /// readable by browser-based clients (CORS); anything else is `no-store`.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("content-type", "application/json".to_string())];
        if self.is_document() {
            out.push((
                "cache-control",
                format!("public, max-age={}", crate::policy::compile::MAX_AGE_SECS),
            ));
            out.push(("access-control-allow-origin", "*".to_string()));
        } else {
            out.push(("cache-control", "no-store".to_string()));
        }
        if let Some(challenge) = &self.www_authenticate {
            out.push(("www-authenticate", challenge.clone()));
        }
        if let Some(nonce) = &self.dpop_nonce {
            out.push(("dpop-nonce", nonce.clone()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn reason_codes_are_unique_snake_case() {
        let codes: HashSet<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(codes.len(), Reason::ALL.len());
        for code in codes {
            assert!(
                code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{code}"
            );
        }
    }

    #[test]
    fn every_reason_is_documented() {
        let doc = include_str!("../docs/reasons.md");
        for reason in Reason::ALL {
            assert!(
                doc.contains(&format!("| `{reason}` |")),
                "docs/reasons.md lacks a row for {reason}"
            );
        }
    }

    #[test]
    fn missing_token_challenge_has_no_error_code() {
        assert_eq!(Reason::TokenMissing.oauth_error(), None);
        assert!(Reason::TokenMissing.challenges());
        assert_eq!(Reason::TokenExpired.oauth_error(), Some("invalid_token"));
        assert_eq!(
            Reason::InsufficientScope.oauth_error(),
            Some("insufficient_scope")
        );
        assert!(!Reason::NoPolicy.challenges());
    }
}

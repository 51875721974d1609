//! Pure token validation: a parsed token, a policy's issuers, a key set and a clock in; the
//! verified issuer or a typed [`ValidationError`] out. No I/O: fetching keys on a miss is the
//! engine's job, so every step here is table-testable.
//!
//! Order of checks (the first failure is the answer):
//! `alg` is a real signature algorithm → no unknown `crit` → `iss` is one of the policy's
//! issuers → `alg` is on that issuer's allowlist → a key of *that* issuer with the token's `kid`
//! fits the algorithm → signature → `exp` / `nbf` / `iat` with clock skew → `aud`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::Algorithm;
use serde_json::Value;

use crate::azure::{self, GraphToken};
use crate::claims::Unmet;
use crate::decision::Reason;
use crate::jose::{Claims, JoseError, Jws};
use crate::jwe::JweError;
use crate::jwks::{KeySet, VerifyingKey};
use crate::policy::spec::AzureVersion;
use crate::policy::tenants::AdmitError;
use crate::policy::{Issuer, Policy};
use crate::trace::Trace;

/// Why a token was refused. Client-facing text never includes the policy's own settings.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ValidationError {
    /// Not a well-formed compact JWS (or too large, or a JWE).
    #[error("{0}")]
    Malformed(JoseError),
    /// `alg: none` in any spelling.
    #[error("unsigned tokens (alg {0:?}) are never accepted")]
    AlgorithmNone(String),
    /// An `alg` that is not a supported signature algorithm.
    #[error("alg {0:?} is not a supported signature algorithm")]
    AlgorithmUnsupported(String),
    /// A supported `alg` the issuer does not allow.
    #[error("alg {0:?} is not allowed for this issuer")]
    AlgorithmNotAllowed(String),
    /// `crit` names extensions tollgate does not implement.
    #[error("the header marks {0:?} as critical, which is not supported")]
    CriticalHeader(Vec<String>),
    /// No `iss` claim (or not a string).
    #[error("the token has no iss claim")]
    IssuerMissing,
    /// `iss` is not one of the policy's issuers.
    #[error("issuer {0:?} is not accepted here")]
    IssuerNotAllowed(String),
    /// The issuer's keys were never loaded.
    #[error("the keys of issuer {issuer:?} are not available: {detail}")]
    IssuerUnavailable { issuer: String, detail: String },
    /// No key with the token's `kid`.
    #[error("no key with kid {0:?} (the issuer may have rotated its keys)")]
    KeyNotFound(String),
    /// Keys exist (with this `kid`, or at all) but none can verify this `alg`.
    #[error("no key {kid} can verify alg {alg:?}")]
    NoKeyFits { kid: String, alg: String },
    /// The signature does not verify.
    #[error("the signature does not verify with the issuer's key{0}")]
    SignatureInvalid(String),
    /// A registered claim with the wrong JSON type.
    #[error("claim {claim:?} must be {expected}")]
    ClaimType {
        claim: &'static str,
        expected: &'static str,
    },
    /// No `exp` while the policy requires one.
    #[error("the token has no exp claim")]
    ExpirationMissing,
    /// `exp` passed.
    #[error("the token expired at {at} ({ago} ago)")]
    Expired { at: String, ago: String },
    /// `nbf` in the future.
    #[error("the token is not valid before {at} (in {wait})")]
    NotYetValid { at: String, wait: String },
    /// `iat` in the future.
    #[error("the token was issued in the future ({at})")]
    IssuedInFuture { at: String },
    /// No `aud` claim.
    #[error("the token has no aud claim")]
    AudienceMissing,
    /// `aud` names none of the accepted audiences.
    #[error("audience {0:?} is not accepted here")]
    AudienceMismatch(Vec<String>),
    /// A policy-wide required claim is missing or has other values.
    #[error("{}", .0.detail)]
    ClaimUnmet(Unmet),
    /// An encrypted token could not be decrypted.
    #[error("{0}")]
    Decryption(JweError),
    /// A decrypted token holds no signed JWT while the policy requires one.
    #[error("the decrypted token is not a signed JWT{}; this API accepts only signed tokens", .cty.as_ref().map(|c| format!(" (cty {c:?})")).unwrap_or_default())]
    NotSigned { cty: Option<String> },
    /// A Microsoft Graph token sent to another API.
    #[error("{}", match .0 {
        GraphToken::Nonce => azure::GRAPH_TOKEN_MESSAGE.to_string(),
        GraphToken::Audience(aud) => format!("the token was requested for Microsoft Graph (aud {aud:?}), not for this API; request a token for your API's scope (api://…/.default)"),
    })]
    AzureGraph(GraphToken),
    /// An Azure AD token of the version this API does not accept.
    #[error("this is an Azure AD {} token and this API accepts {} tokens only; set {} in the API's app registration manifest", azure::version_name(*.token), azure::version_name(*.accepted), azure::accepted_version_setting(*.accepted))]
    AzureVersion {
        token: AzureVersion,
        accepted: AzureVersion,
    },
    /// The calling application (`appid`/`azp`) is not one of `clientApplicationIds`.
    #[error("the calling application ({claim} {}) is not allowed to call this API", .caller.as_deref().map_or_else(|| "missing".to_string(), |c| format!("{c:?}")))]
    AzureCaller {
        claim: &'static str,
        caller: Option<String>,
    },
    /// The `tid` claim is not the tenant of the token's issuer.
    #[error("the token's tid {tid:?} is not the tenant of its issuer")]
    AzureTenant { tid: String },
    /// The token lives longer than its issuer's `maxTokenLifetime` allows.
    #[error("{0}")]
    LifetimeExceeded(Lifetime),
    /// `iss` has the shape of an issuer template, for a tenant the template does not allow.
    #[error("tenant {tenant:?} is not allowed for the issuer template {template:?}")]
    TenantNotAllowed { tenant: String, template: String },
    /// `iss` names a tenant of an issuer template that its condition (`admitTenants`) does not
    /// admit (false, or an error), nor its list.
    #[error("tenant {:?} is not admitted by the issuer template {:?}: {}.admitTenants `{}` {}", .0.tenant, .0.template, .0.field, .0.expression, .0.outcome)]
    TenantNotAdmitted(Box<TenantRefusal>),
    /// A tenant the condition admits has no keys to judge its token with: its first fetch
    /// failed, or every slot of the template is held.
    #[error("tenant {tenant:?} of the issuer template {template:?} is admitted, but {cause}")]
    TenantUnavailable {
        tenant: String,
        template: String,
        cause: Box<AdmitError>,
    },
}

/// A tenant an issuer template's condition refused.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantRefusal {
    pub tenant: String,
    /// The template's issuer, as written.
    pub template: String,
    /// Where the template is written, e.g. `spec.issuers[2]`.
    pub field: String,
    pub expression: String,
    /// `is false`, or `failed: …`.
    pub outcome: String,
    /// The template's `admitTenants.message`.
    pub message: Option<String>,
}

/// Why a token lives too long, by its own claims (never the clock, so the answer is the same
/// however often it is asked).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lifetime {
    /// `exp - iat`, in seconds.
    Issued(f64),
    /// The `exp` of a token without `iat`, too far from now.
    Remaining { exp: f64 },
    /// The `iat` of a token without `exp`, too long ago.
    Age { iat: f64 },
    /// Neither `exp` nor `iat`: nothing bounds it.
    Unbounded,
}

impl std::fmt::Display for Lifetime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Lifetime::Issued(s) => write!(
                f,
                "the token is valid for {}{} (exp - iat), longer than its issuer allows",
                if s >= SPAN_LIMIT { "more than " } else { "" },
                span(s)
            ),
            Lifetime::Remaining { exp } => write!(
                f,
                "the token has no iat and expires at {} (exp - now), later than its issuer allows",
                rfc3339(exp)
            ),
            Lifetime::Age { iat } => write!(
                f,
                "the token has no exp and was issued at {}, longer ago than its issuer lets a token live",
                rfc3339(iat)
            ),
            Lifetime::Unbounded => f.write_str(
                "the token has neither exp nor iat: nothing bounds its lifetime, and its issuer limits it",
            ),
        }
    }
}

impl ValidationError {
    pub fn reason(&self) -> Reason {
        use ValidationError::*;
        match self {
            Malformed(JoseError::Encrypted) => Reason::TokenEncrypted,
            Malformed(_) | ClaimType { .. } => Reason::TokenMalformed,
            AlgorithmNone(_)
            | AlgorithmUnsupported(_)
            | AlgorithmNotAllowed(_)
            | NoKeyFits { .. } => Reason::AlgorithmNotAllowed,
            CriticalHeader(_) => Reason::UnsupportedCriticalHeader,
            IssuerMissing | IssuerNotAllowed(_) => Reason::IssuerNotAllowed,
            IssuerUnavailable { .. } => Reason::IssuerUnavailable,
            KeyNotFound(_) => Reason::KeyNotFound,
            SignatureInvalid(_) => Reason::SignatureInvalid,
            ExpirationMissing => Reason::ExpirationMissing,
            Expired { .. } => Reason::TokenExpired,
            NotYetValid { .. } | IssuedInFuture { .. } => Reason::TokenNotYetValid,
            AudienceMissing | AudienceMismatch(_) => Reason::AudienceMismatch,
            ClaimUnmet(_) | AzureCaller { .. } => Reason::ClaimMismatch,
            Decryption(e) => e.reason(),
            NotSigned { .. } => Reason::TokenNotSigned,
            AzureGraph(_) => Reason::AzureGraphToken,
            AzureVersion { .. } => Reason::AzureTokenVersion,
            AzureTenant { .. } => Reason::IssuerNotAllowed,
            LifetimeExceeded(_) => Reason::TokenLifetimeExceeded,
            TenantNotAllowed { .. } | TenantNotAdmitted(_) => Reason::IssuerNotAllowed,
            TenantUnavailable { .. } => Reason::IssuerUnavailable,
        }
    }

    /// The name of the check that failed, as traces show it.
    pub fn check(&self) -> &'static str {
        use ValidationError::*;
        match self {
            Malformed(JoseError::Encrypted) | Decryption(_) | NotSigned { .. } => "decrypt",
            Malformed(_) => "token",
            ClaimType { claim, .. } => claim,
            AlgorithmNone(_)
            | AlgorithmUnsupported(_)
            | AlgorithmNotAllowed(_)
            | NoKeyFits { .. } => "algorithm",
            CriticalHeader(_) => "header",
            IssuerMissing | IssuerNotAllowed(_) | AzureVersion { .. } => "issuer",
            IssuerUnavailable { .. } => "keys",
            KeyNotFound(_) => "kid",
            SignatureInvalid(_) => "signature",
            ExpirationMissing | Expired { .. } => "exp",
            NotYetValid { .. } => "nbf",
            IssuedInFuture { .. } => "iat",
            AudienceMissing | AudienceMismatch(_) => "aud",
            ClaimUnmet(_) => "requiredClaims",
            AzureGraph(_) | AzureCaller { .. } | AzureTenant { .. } => "azure",
            LifetimeExceeded(_) => "lifetime",
            TenantNotAllowed { .. } | TenantNotAdmitted(_) => "issuer",
            TenantUnavailable { .. } => "keys",
        }
    }

    /// What to change, naming the policy's settings: for logs and `tollgate explain`, never
    /// for clients.
    pub fn hint(&self, policy: &Policy, issuer: Option<&Issuer>) -> Option<String> {
        use ValidationError::*;
        let issuers: Vec<&str> = policy.issuers.iter().map(|i| i.issuer.as_str()).collect();
        let audiences: Vec<&str> = match issuer {
            Some(i) => i.audiences.iter().map(String::as_str).collect(),
            None => policy
                .issuers
                .iter()
                .flat_map(|i| &i.audiences)
                .map(String::as_str)
                .collect(),
        };
        let scope = || {
            audiences
                .iter()
                .find(|a| a.starts_with("api://"))
                .or(audiences.first())
                .map(|a| format!("{}/.default", a.trim_end_matches('/')))
        };
        match self {
            Malformed(JoseError::Encrypted) => Some(
                "the token is encrypted (JWE): add the private key the issuer encrypts to under spec.decryption.keys".into(),
            ),
            IssuerMissing | IssuerNotAllowed(_) if issuers.is_empty() => None,
            IssuerMissing => Some(format!("the policy accepts issuers {issuers:?}; the token names none")),
            IssuerNotAllowed(iss) => {
                let near = issuers.iter().find(|known| known.trim_end_matches('/') == iss.trim_end_matches('/'));
                Some(match near {
                    Some(known) => format!("the policy accepts {known:?}, which differs only in the trailing slash; issuers must match exactly"),
                    None => format!("the policy accepts issuers {issuers:?}; add {iss:?} to spec.issuers if it is trusted"),
                })
            }
            AudienceMismatch(aud) => Some(format!(
                "the token's aud is {}; this policy accepts {}{}",
                aud.join(", "),
                audiences.join(", "),
                match scope() {
                    Some(scope) if issuer.is_some_and(|i| i.azure.is_some()) || scope.starts_with("api://") => {
                        format!(" — request the token with scope {scope}")
                    }
                    _ => " — request a token for one of them, or add the audience to the issuer".into(),
                }
            )),
            AudienceMissing => Some(format!(
                "the token has no aud; this policy accepts {}{}",
                audiences.join(", "),
                if policy.introspection.is_some() {
                    " (if the IdP's introspection answers never name the audience, say so with introspection.acceptWithout: [aud])"
                } else {
                    ""
                }
            )),
                        AlgorithmNotAllowed(alg) => issuer.map(|i| {
                let allowed: Vec<String> = i.algorithms.iter().map(|a| format!("{a:?}")).collect();
                if alg.starts_with("HS") && !allowed.iter().any(|a| a.starts_with("HS")) {
                    format!("the issuer signs with public-key algorithms {allowed:?}; an {alg} token checked against a public key is the key-confusion forgery, so HMAC needs sharedSecret")
                } else {
                    format!("spec.issuers[].algorithms allows {allowed:?}, not {alg}")
                }
            }),
            IssuerUnavailable { .. } => issuer.map(|i| {
                format!("tollgate could not fetch {}: check that it is reachable from tollgate (the tollgate_jwks_up metric, the `key set refresh failed` log line)", i.keys.id())
            }),
                        KeyNotFound(kid) => issuer.map(|i| match i.keys.origin() {
                crate::jwks::Origin::Fixed => format!("the keys written in the policy ({}) have no key {kid:?}: add the issuer's current key", i.keys.id()),
                _ => format!("key source {} has no key {kid:?} even after a refetch; is the token from this issuer's current keys (or another environment's)?", i.keys.id()),
            }),
            SignatureInvalid(_) => issuer.map(|i| {
                format!("no key of {} verifies the signature (IDX10511): the token was signed by another environment or tenant with the same kid, or altered", i.keys.id())
            }),
            Expired { .. } | NotYetValid { .. } | IssuedInFuture { .. } => Some(format!(
                "the clock skew allowed is {}s (spec.clockSkew); check the clocks of the issuer and this host",
                policy.clock_skew
            )),
            Decryption(JweError::KeyNotFound { kid, .. }) => {
                let kids: Vec<String> = policy
                    .decryption
                    .iter()
                    .flat_map(|d| d.keys())
                    .map(|k| format!("{} {}", k.kid.as_deref().unwrap_or("(no kid)"), k.describe()))
                    .collect();
                Some(format!(
                    "spec.decryption.keys holds [{}]; the token names {} (IDX10609): add the key the issuer encrypts to",
                    kids.join(", "),
                    kid.as_deref().map_or_else(|| "no kid".to_string(), |k| format!("kid {k:?}"))
                ))
            }
            Decryption(JweError::Failed) => Some(
                "none of spec.decryption.keys decrypts the token (IDX10609): the issuer encrypts to another public key, or the token was altered".into(),
            ),
            Decryption(JweError::Overloaded(_)) => Some(format!(
                "fresh encrypted tokens arrive faster than {} private-key operations at a time can decrypt them (--decryption-concurrency); a token seen before comes from the verified-token cache",
                crate::jwe::gate::gate().concurrency()
            )),
            Decryption(JweError::Rsa1_5NotAllowed) => Some(
                "ask the issuer to encrypt with RSA-OAEP-256; if it cannot, set spec.decryption.allowRsa1_5: true".into(),
            ),
            NotSigned { .. } => Some(
                "the issuer encrypts claims without signing them: have it sign, then encrypt (a nested JWT); only if the encryption key itself proves the issuer (dir, A128KW, A256KW) set spec.requireSignedTokens: false".into(),
            ),
            AzureGraph(_) => Some(format!(
                "a Graph token's signature can be checked only by Microsoft Graph (its header carries a nonce); the client must request a token for this API{}",
                scope().map(|s| format!(": scope {s}")).unwrap_or_default()
            )),
            AzureVersion { token, accepted } => Some(format!(
                "the app registration issues {} tokens; set {} in its manifest, or accept {} tokens with spec.azureAd.versions",
                azure::version_name(*token),
                azure::accepted_version_setting(*accepted),
                azure::version_name(*token),
            )),
            AzureCaller { .. } => policy.azure.as_ref().map(|p| {
                format!("spec.azureAd.clientApplicationIds allows {:?}", p.client_application_ids)
            }),
            AzureTenant { .. } => issuer.and_then(|i| i.azure.as_ref()).map(|a| {
                format!("the issuer is tenant {}; the tid claim must match it", a.tenant)
            }),
            LifetimeExceeded(_) => issuer.and_then(|i| i.max_lifetime).map(|max| {
                format!(
                    "{} allows tokens of at most {} (maxTokenLifetime; exp - iat, or exp - now without iat): have the issuer issue shorter-lived tokens, or raise maxTokenLifetime if it is deliberate",
                    issuer.map_or("the issuer", |i| i.issuer.as_str()),
                    humantime::format_duration(max)
                )
            }),
            TenantNotAllowed { tenant, template } => policy
                .templates
                .iter()
                .find(|t| &t.issuer == template)
                .map(|t| {
                    format!(
                        "{}.tenants allows {:?}; add {tenant:?} if this tenant is trusted",
                        t.field, t.tenants
                    )
                }),
            TenantNotAdmitted(refusal) => {
                let TenantRefusal { tenant, field, .. } = &**refusal;
                let listed = policy
                    .templates
                    .iter()
                    .find(|t| &t.field == field)
                    .filter(|t| !t.tenants.is_empty())
                    .map(|t| format!(" and {field}.tenants lists {:?}", t.tenants))
                    .unwrap_or_default();
                Some(format!(
                    "{field}.admitTenants admits the tenants its expression is true for{listed}; if {tenant:?} is trusted, change the expression or list it"
                ))
            }
            TenantUnavailable { cause, .. } => Some(match &**cause {
                AdmitError::Full { field, .. } => format!(
                    "raise {field}.admitTenants.maxTenants, or narrow its expression to the tenants you expect (tollgate keeps the tenants in use rather than evict them for new ones)"
                ),
                AdmitError::Unavailable { .. } => "check that the tenant exists at the identity provider and that its discovery (or jwksUri) answers from tollgate: a tenant the expression admits is fetched when a token first names it".into(),
                AdmitError::Invalid(_) => "the template's URLs with this tenant in them do not compile: check the issuer template".into(),
            }),
            ExpirationMissing => Some(if policy.introspection.is_some() {
                "the token has no exp: issue tokens with exp, set requireExpirationTime: false, or (if the IdP's introspection answers never carry it) introspection.acceptWithout: [exp]".into()
            } else {
                "the token has no exp: issue tokens with exp, or set requireExpirationTime: false".into()
            }),
            _ => None,
        }
    }
}

/// Routes a parsed token to its issuer: checks `alg`, `crit` and `iss`.
pub fn route<'p>(
    jws: &Jws<'_>,
    policy: &'p Policy,
) -> Result<(&'p Issuer, Algorithm), ValidationError> {
    let alg_name = &jws.header.alg;
    if alg_name.eq_ignore_ascii_case("none") {
        return Err(ValidationError::AlgorithmNone(alg_name.clone()));
    }
    let alg: Algorithm = alg_name
        .parse()
        .map_err(|_| ValidationError::AlgorithmUnsupported(alg_name.clone()))?;
    if let Some(crit) = &jws.header.crit {
        // No extension is implemented, so any critical one is unknown (RFC 7515 §4.1.11).
        return Err(ValidationError::CriticalHeader(crit.clone()));
    }
    let iss = match jws.claims.get("iss") {
        Some(Value::String(iss)) => iss,
        None => return Err(ValidationError::IssuerMissing),
        Some(_) => {
            return Err(ValidationError::ClaimType {
                claim: "iss",
                expected: "a string",
            });
        }
    };
    let issuer = policy.issuer(iss);
    let azure_issuer = issuer.is_some_and(|i| i.azure.is_some()) || classify(policy, iss).is_some();
    if let Some(graph) = azure::graph_token(&jws.header_object, &jws.claims, azure_issuer) {
        let accepted = |aud: &str| issuer.is_some_and(|i| i.audiences.iter().any(|a| a == aud));
        if !matches!(&graph, GraphToken::Audience(aud) if accepted(aud)) {
            return Err(ValidationError::AzureGraph(graph));
        }
    }
    let issuer = issuer.ok_or_else(|| unknown_issuer(policy, iss))?;
    if !issuer.algorithms.contains(&alg) {
        return Err(ValidationError::AlgorithmNotAllowed(alg_name.clone()));
    }
    Ok((issuer, alg))
}

/// Why the policy has no issuer for `iss`: a tenant an issuer template does not allow, an
/// Azure v1/v2 mix-up, or an issuer it does not know.
pub fn unknown_issuer(policy: &Policy, iss: &str) -> ValidationError {
    if let Some((template, tenant)) = policy
        .templates
        .iter()
        .find_map(|t| t.tenant_of(iss).map(|tenant| (t, tenant)))
    {
        return ValidationError::TenantNotAllowed {
            tenant: tenant.to_string(),
            template: template.issuer.clone(),
        };
    }
    version_mismatch(policy, iss)
        .unwrap_or_else(|| ValidationError::IssuerNotAllowed(iss.to_string()))
}

/// How the trace names an accepted issuer: with its tenant when a template expanded it, or
/// its condition admitted it.
pub fn describe_issuer(policy: &Policy, issuer: &Issuer) -> String {
    match issuer.tenant.as_ref().and_then(|t| {
        policy
            .templates
            .get(t.template)
            .map(|template| (t, template))
    }) {
        Some((tenant, template)) => format!(
            "{} is accepted: tenant {:?} of the issuer template {} ({}.{})",
            issuer.issuer,
            tenant.name,
            template.issuer,
            template.field,
            if tenant.admitted {
                "admitTenants"
            } else {
                "tenants"
            }
        ),
        None => format!("{} is accepted", issuer.issuer),
    }
}

/// The algorithm of a token routed to `issuer` by other means than [`route`] (a tenant an
/// issuer template admitted): `route`'s last check.
pub fn algorithm_for(jws: &Jws<'_>, issuer: &Issuer) -> Result<Algorithm, ValidationError> {
    let alg_name = &jws.header.alg;
    let alg: Algorithm = alg_name
        .parse()
        .map_err(|_| ValidationError::AlgorithmUnsupported(alg_name.clone()))?;
    if !issuer.algorithms.contains(&alg) {
        return Err(ValidationError::AlgorithmNotAllowed(alg_name.clone()));
    }
    Ok(alg)
}

/// What `iss` says about an Azure tenant, knowing the policy's own Azure authority.
fn classify(policy: &Policy, iss: &str) -> Option<azure::AzureIssuer> {
    match &policy.azure {
        Some(profile) => azure::classify_with(iss, &profile.authority, &profile.v1_host),
        None => azure::classify(iss),
    }
}

/// An Azure issuer the policy does not accept, while it accepts the same tenant's issuer of
/// the other version: a v1/v2 mix-up (IDX10205), not a foreign issuer.
pub fn version_mismatch(policy: &Policy, iss: &str) -> Option<ValidationError> {
    let token = classify(policy, iss)?;
    let accepted = policy.issuer(&token.sibling)?.azure.as_ref()?;
    Some(ValidationError::AzureVersion {
        token: token.version,
        accepted: accepted.version,
    })
}

/// Azure AD: the `tid` is the issuer's tenant, and the caller (`appid`/`azp`) is allowed.
pub fn check_azure(
    claims: &Claims,
    issuer: &Issuer,
    policy: &Policy,
    trace: &mut Trace,
) -> Result<(), ValidationError> {
    let Some(azure) = &issuer.azure else {
        return Ok(());
    };
    let outcome = azure_claims(claims, azure, policy);
    match &outcome {
        Ok(caller) => trace.pass("azure", || {
            format!(
                "tenant {}, {} token{}",
                azure.tenant,
                azure::version_name(azure.version),
                caller
                    .map(|c| format!(", caller {c} allowed"))
                    .unwrap_or_default()
            )
        }),
        Err(e) => trace.fail(
            "azure",
            e.reason(),
            || e.to_string(),
            || e.hint(policy, Some(issuer)),
        ),
    }
    outcome.map(|_| ())
}

/// The Azure claim checks; `Ok(Some(caller))` when `clientApplicationIds` was checked.
fn azure_claims<'c>(
    claims: &'c Claims,
    azure: &azure::AzureIssuer,
    policy: &Policy,
) -> Result<Option<&'c str>, ValidationError> {
    if let Some(tid) = claims.get("tid").and_then(Value::as_str)
        && tid != azure.tenant
    {
        return Err(ValidationError::AzureTenant {
            tid: tid.to_string(),
        });
    }
    let Some(allowed) = policy
        .azure
        .as_ref()
        .map(|p| &p.client_application_ids)
        .filter(|ids| !ids.is_empty())
    else {
        return Ok(None);
    };
    let caller = azure::caller(claims, azure.version);
    if let Some(caller) = caller.filter(|c| allowed.iter().any(|a| a == c)) {
        return Ok(Some(caller));
    }
    Err(ValidationError::AzureCaller {
        claim: match azure.version {
            AzureVersion::V1 => "appid",
            AzureVersion::V2 => "azp",
        },
        caller: caller.map(str::to_owned),
    })
}

/// Verifies the signature with the issuer's key set; the key that verified it.
pub fn verify_signature<'k>(
    jws: &Jws<'_>,
    alg: Algorithm,
    keys: &'k KeySet,
) -> Result<&'k VerifyingKey, ValidationError> {
    let kid = jws.header.kid.as_deref();
    let mut tried = 0;
    for key in keys.candidates(kid, alg) {
        tried += 1;
        if key.verify(alg, jws.signing_input.as_bytes(), jws.signature) {
            return Ok(key);
        }
    }
    if tried > 0 {
        return Err(ValidationError::SignatureInvalid(
            kid.map(|k| format!(" {k:?}")).unwrap_or_default(),
        ));
    }
    match kid {
        Some(kid) if !keys.has_kid(kid) && !keys.has_keyless() => {
            Err(ValidationError::KeyNotFound(kid.to_string()))
        }
        Some(kid) => Err(ValidationError::NoKeyFits {
            kid: format!("{kid:?}"),
            alg: jws.header.alg.clone(),
        }),
        None => Err(ValidationError::NoKeyFits {
            kid: "(the token has no kid)".into(),
            alg: jws.header.alg.clone(),
        }),
    }
}

fn numeric_date(claims: &Claims, name: &'static str) -> Result<Option<f64>, ValidationError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            n.as_f64()
                .filter(|v| v.is_finite())
                .map(Some)
                .ok_or(ValidationError::ClaimType {
                    claim: name,
                    expected: "a NumericDate (seconds since 1970)",
                })
        }
        Some(_) => Err(ValidationError::ClaimType {
            claim: name,
            expected: "a NumericDate (seconds since 1970)",
        }),
    }
}

fn rfc3339(seconds: f64) -> String {
    if !(0.0..=253_402_300_799.0).contains(&seconds) {
        return format!("{seconds} (out of range)");
    }
    let t = UNIX_EPOCH + Duration::from_secs(seconds as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The longest span [`span`] writes out (about 31,700 years).
const SPAN_LIMIT: f64 = 1e12;

fn span(seconds: f64) -> String {
    let secs = seconds.abs().min(SPAN_LIMIT) as u64;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// Seconds since the epoch, as every time check counts them.
pub fn seconds_since_epoch(now: SystemTime) -> f64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn check_exp(claims: &Claims, policy: &Policy, now: f64) -> Result<(), ValidationError> {
    match numeric_date(claims, "exp")? {
        None if policy.require_exp => Err(ValidationError::ExpirationMissing),
        Some(exp) if now >= exp + policy.clock_skew as f64 => Err(ValidationError::Expired {
            at: rfc3339(exp),
            ago: span(now - exp),
        }),
        _ => Ok(()),
    }
}

fn check_nbf(claims: &Claims, policy: &Policy, now: f64) -> Result<(), ValidationError> {
    match numeric_date(claims, "nbf")? {
        Some(nbf) if now + (policy.clock_skew as f64) < nbf => Err(ValidationError::NotYetValid {
            at: rfc3339(nbf),
            wait: span(nbf - now),
        }),
        _ => Ok(()),
    }
}

fn check_iat(claims: &Claims, policy: &Policy, now: f64) -> Result<(), ValidationError> {
    match numeric_date(claims, "iat")? {
        Some(iat) if now + (policy.clock_skew as f64) < iat => {
            Err(ValidationError::IssuedInFuture { at: rfc3339(iat) })
        }
        _ => Ok(()),
    }
}

/// `maxTokenLifetime`: `exp - iat`, or `exp - now` (with the clock skew, as it compares with
/// this host's clock) without `iat`. Without `exp` the token lives until `iat` plus the
/// maximum; with neither, nothing bounds it.
fn check_lifetime(
    claims: &Claims,
    issuer: &Issuer,
    policy: &Policy,
    now: f64,
) -> Result<(), ValidationError> {
    let Some(max) = issuer.max_lifetime else {
        return Ok(());
    };
    let (max, skew) = (max.as_secs_f64(), policy.clock_skew as f64);
    let exceeded = |lifetime| Err(ValidationError::LifetimeExceeded(lifetime));
    match (numeric_date(claims, "exp")?, numeric_date(claims, "iat")?) {
        (Some(exp), Some(iat)) if exp - iat > max => exceeded(Lifetime::Issued(exp - iat)),
        // The same comparison as `TimeWindow::holds` makes with `not_before = exp - max`.
        (Some(exp), None) if now + skew < exp - max => exceeded(Lifetime::Remaining { exp }),
        // The same comparison as `TimeWindow::holds` makes with `expires = iat + max`.
        (None, Some(iat)) if now >= iat + max + skew => exceeded(Lifetime::Age { iat }),
        (None, None) => exceeded(Lifetime::Unbounded),
        _ => Ok(()),
    }
}

fn audiences(claims: &Claims) -> Result<Vec<&str>, ValidationError> {
    let wrong = ValidationError::ClaimType {
        claim: "aud",
        expected: "a string or an array of strings",
    };
    match claims.get("aud") {
        None => Err(ValidationError::AudienceMissing),
        Some(Value::String(aud)) => Ok(vec![aud.as_str()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().ok_or(wrong.clone()))
            .collect(),
        Some(_) => Err(wrong),
    }
}

fn check_aud(claims: &Claims, issuer: &Issuer) -> Result<(), ValidationError> {
    let audiences = audiences(claims)?;
    if audiences
        .iter()
        .any(|aud| issuer.audiences.iter().any(|accepted| accepted == aud))
    {
        Ok(())
    } else if audiences.is_empty() {
        Err(ValidationError::AudienceMissing)
    } else {
        Err(ValidationError::AudienceMismatch(
            audiences.into_iter().map(str::to_owned).collect(),
        ))
    }
}

/// What a passed time or audience check saw, for the trace.
fn describe(check: &'static str, claims: &Claims, issuer: &Issuer, now: f64) -> String {
    let date = |name: &'static str| numeric_date(claims, name).ok().flatten();
    match (check, date(check)) {
        ("exp", Some(t)) => format!("expires {} (in {})", rfc3339(t), span(t - now)),
        ("exp", None) => "absent (requireExpirationTime: false)".into(),
        ("nbf", Some(t)) => format!("valid since {}", rfc3339(t)),
        ("iat", Some(t)) => format!("issued {} ({} ago)", rfc3339(t), span(now - t)),
        ("nbf" | "iat", None) => "absent".into(),
        ("lifetime", _) => {
            let max = issuer
                .max_lifetime
                .map(|m| humantime::format_duration(m).to_string())
                .unwrap_or_default();
            match (date("exp"), date("iat")) {
                (Some(exp), Some(iat)) => {
                    format!("valid for {} (exp - iat), at most {max}", span(exp - iat))
                }
                (Some(exp), None) => format!(
                    "no iat; expires in {} (exp - now), at most {max}",
                    span(exp - now)
                ),
                (None, Some(iat)) => format!(
                    "no exp; accepted until iat + {max} ({})",
                    rfc3339(iat + issuer.max_lifetime.map_or(0.0, |m| m.as_secs_f64()))
                ),
                (None, None) => "unbounded".into(),
            }
        }
        _ => format!(
            "{:?} is accepted (the issuer accepts {:?})",
            audiences(claims).unwrap_or_default(),
            issuer.audiences
        ),
    }
}

/// Claims an answer may lack without being refused (`introspection.acceptWithout`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptWithout {
    pub aud: bool,
    pub exp: bool,
}

/// Checks `exp`, `nbf`, `iat` (with the policy's clock skew) and `aud`, in this order. With the
/// trace on, every one is checked and recorded; the first failure is the answer.
pub fn check_claims(
    claims: &Claims,
    issuer: &Issuer,
    policy: &Policy,
    now: SystemTime,
    trace: &mut Trace,
) -> Result<(), ValidationError> {
    check_answer_claims(claims, issuer, policy, AcceptWithout::default(), now, trace)
}

/// [`check_claims`] for the claims of an introspection or userinfo answer: an `aud` or `exp`
/// the answer lacks is accepted only when `introspection.acceptWithout` names it (present, it
/// is always checked).
pub fn check_answer_claims(
    claims: &Claims,
    issuer: &Issuer,
    policy: &Policy,
    without: AcceptWithout,
    now: SystemTime,
    trace: &mut Trace,
) -> Result<(), ValidationError> {
    let now = seconds_since_epoch(now);
    let mut first = None;
    for check in ["exp", "nbf", "iat", "lifetime", "aud"] {
        if check == "lifetime" && issuer.max_lifetime.is_none() {
            continue;
        }
        // An answer without exp that is accepted without it: `active: true` (re-asked when the
        // cached answer ends) bounds the token, not its claims.
        if check == "lifetime" && without.exp && !claims.contains_key("exp") {
            trace.pass(check, || {
                "exp absent from the IdP's answer (introspection.acceptWithout): the IdP's active: true bounds the token".into()
            });
            continue;
        }
        let absent = !claims.contains_key(check);
        let accepted_absent = absent
            && match check {
                "exp" => without.exp,
                "aud" => without.aud,
                _ => false,
            };
        if accepted_absent {
            trace.pass(check, || {
                "absent from the IdP's answer, accepted without it (introspection.acceptWithout)"
                    .into()
            });
            continue;
        }
        let outcome = match check {
            "exp" => check_exp(claims, policy, now),
            "nbf" => check_nbf(claims, policy, now),
            "iat" => check_iat(claims, policy, now),
            "lifetime" => check_lifetime(claims, issuer, policy, now),
            _ => check_aud(claims, issuer),
        };
        match outcome {
            Ok(()) => trace.pass(check, || describe(check, claims, issuer, now)),
            Err(e) => {
                trace.fail(
                    check,
                    e.reason(),
                    || e.to_string(),
                    || e.hint(policy, Some(issuer)),
                );
                if !trace.is_on() {
                    return Err(e);
                }
                first.get_or_insert(e);
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// When the time checks of [`check_claims`] pass for a token: the same comparisons, kept for
/// later (the verified-token cache re-checks them on every hit).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimeWindow {
    /// The later of `nbf` and `iat` (−∞ without either).
    not_before: f64,
    /// `exp` (+∞ without it).
    expires: f64,
    skew: f64,
}

impl TimeWindow {
    /// The window of claims that passed [`check_claims`] for `issuer`; `None` if their time
    /// claims are not usable (then they did not pass). The issuer's `maxTokenLifetime` narrows
    /// it by the comparisons `check_lifetime` makes: a token without `iat` starts to pass at
    /// `exp - max`, one without `exp` stops at `iat + max`.
    pub fn of(claims: &Claims, issuer: &Issuer, policy: &Policy) -> Option<TimeWindow> {
        let nbf = numeric_date(claims, "nbf").ok()?;
        let iat = numeric_date(claims, "iat").ok()?;
        let exp = numeric_date(claims, "exp").ok()?;
        if exp.is_none() && policy.require_exp {
            return None;
        }
        let max = issuer.max_lifetime.map(|m| m.as_secs_f64());
        let (from_lifetime, until_lifetime) = match (max, exp, iat) {
            (None, ..) => (None, None),
            (Some(_), None, None) => return None,
            (Some(max), Some(exp), None) => (Some(exp - max), None),
            (Some(max), None, Some(iat)) => (None, Some(iat + max)),
            (Some(_), Some(_), Some(_)) => (None, None),
        };
        Some(TimeWindow {
            not_before: nbf
                .into_iter()
                .chain(iat)
                .chain(from_lifetime)
                .fold(f64::NEG_INFINITY, f64::max),
            expires: exp.or(until_lifetime).unwrap_or(f64::INFINITY),
            skew: policy.clock_skew as f64,
        })
    }

    /// Whether `check_exp`, `check_nbf` and `check_iat` pass at `now` (seconds since the epoch),
    /// by the very sums they compare (negated; no operand is ever NaN: the claims are finite and
    /// the missing ones infinite, never subtracted).
    pub fn holds(&self, now: f64) -> bool {
        now + self.skew >= self.not_before && now < self.expires + self.skew
    }
}

/// Checks the policy-wide `requiredClaims`.
pub fn check_required(
    claims: &Claims,
    policy: &Policy,
    trace: &mut Trace,
) -> Result<(), ValidationError> {
    for (i, requirement) in policy.required_claims.iter().enumerate() {
        let check = || format!("requiredClaims[{i}]");
        match requirement.check(claims) {
            Ok(()) => trace.pass(&check(), || requirement.describe()),
            Err(unmet) => {
                let e = ValidationError::ClaimUnmet(unmet);
                trace.fail(
                    &check(),
                    e.reason(),
                    || e.to_string(),
                    || {
                        Some(format!(
                            "grant the client {}, or change spec.requiredClaims[{i}]",
                            requirement.describe()
                        ))
                    },
                );
                return Err(e);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

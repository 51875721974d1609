//! OAuth2 token introspection (RFC 7662) and its variants: the `application/jwt` answer
//! (Curity's phantom token), signed answers (RFC 9701), and OpenID userinfo.
//!
//! This module talks HTTP and parses; every JWT an answer carries is verified by the engine
//! with the issuer's keys, exactly like an access token. Answers are cached per policy under a
//! digest of the token (never the token), with bounded size and TTLs, and concurrent requests
//! for the same uncached token share one call.
//!
//! IdP failures never allow: 503 and unreachable/timeout → 503; 401/403/404 and other 5xx → 502;
//! anything else unexpected → 500. Only an explicit inactive answer is a 401.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use url::Url;

use crate::decision::Reason;
use crate::jose::Claims;
use crate::jwks::{FetchError, Fetcher, KeySource, Reach};
use crate::policy::spec::{ClientAuthMethod, IntrospectWhen, IntrospectionResponse};

/// Cache settings of one policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSettings {
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub negative_ttl: Duration,
    pub max_entries: u64,
}

/// Where the endpoint comes from.
#[derive(Clone, Debug)]
pub enum EndpointSource {
    Fixed(Url),
    /// The issuer's discovery document (`introspection_endpoint` or `userinfo_endpoint`).
    Discovered(Arc<KeySource>),
}

/// Why introspection gave no answer. Never an allow.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum IntrospectError {
    /// The endpoint answered 503, or could not be reached.
    #[error("the introspection endpoint is unavailable: {0}")]
    Unavailable(String),
    /// No answer within the timeout.
    #[error("introspection timed out after {0:?}")]
    Timeout(Duration),
    /// The endpoint refused the call (401/403/404, other 5xx).
    #[error("the introspection endpoint answered HTTP {status}{hint}")]
    Failed { status: u16, hint: &'static str },
    /// An answer that breaks the protocol (malformed JSON, `active` not a boolean, too large, …).
    #[error("unexpected introspection answer: {0}")]
    Invalid(String),
}

impl IntrospectError {
    /// The `outcome` label of the introspection metrics (bounded).
    pub fn outcome(&self) -> &'static str {
        match self {
            IntrospectError::Unavailable(_) => "unavailable",
            IntrospectError::Timeout(_) => "timeout",
            IntrospectError::Failed { .. } => "failed",
            IntrospectError::Invalid(_) => "invalid",
        }
    }

    pub fn reason(&self) -> Reason {
        match self {
            IntrospectError::Unavailable(_) => Reason::IntrospectionUnavailable,
            IntrospectError::Timeout(_) => Reason::IntrospectionTimeout,
            IntrospectError::Failed { .. } => Reason::IntrospectionFailed,
            IntrospectError::Invalid(_) => Reason::IntrospectionInvalid,
        }
    }
}

/// What the IdP said, before any JWT in it is verified.
#[derive(Clone, Debug, PartialEq)]
pub enum Raw {
    /// `active: false`, 204 (JWT mode) or 401/403 (userinfo).
    Inactive,
    /// An active JSON answer (introspection or userinfo); `jwt` is Curity's phantom token field.
    Claims {
        claims: Claims,
        jwt: Option<String>,
        max_age: Option<Duration>,
    },
    /// `application/jwt`: the body is the phantom token.
    Jwt {
        token: String,
        max_age: Option<Duration>,
    },
    /// RFC 9701 signed introspection answer.
    Signed {
        token: String,
        max_age: Option<Duration>,
    },
}

/// A verified answer, as cached.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Active {
        claims: Arc<Claims>,
        /// The JWT to forward in place of the opaque token (phantom token), if any.
        jwt: Option<String>,
        ttl: Duration,
    },
    Inactive {
        ttl: Duration,
    },
}

impl Answer {
    fn ttl(&self) -> Duration {
        match self {
            Answer::Active { ttl, .. } | Answer::Inactive { ttl } => *ttl,
        }
    }
}

struct AnswerExpiry;

impl moka::Expiry<[u8; 32], Arc<Answer>> for AnswerExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Answer>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(value.ttl())
    }
}

/// The outcomes of an introspection call, as metrics count them: the answer (`active`,
/// `inactive`), or why there was none ([`IntrospectError::outcome`]).
pub const OUTCOMES: [&str; 6] = [
    "active",
    "inactive",
    "unavailable",
    "timeout",
    "failed",
    "invalid",
];

/// What one policy's introspection did, for `/metrics`: calls by outcome, their duration, and
/// lookups in the answer cache. Shared by the successive compilations of the policy (through
/// [`crate::jwks::KeySources::introspection_stats`]), so the counters survive a recompile and
/// end with the policy.
#[derive(Debug)]
pub struct IntrospectionStats {
    outcomes: [AtomicU64; OUTCOMES.len()],
    hits: AtomicU64,
    misses: AtomicU64,
    duration: prometheus_client::metrics::histogram::Histogram,
}

impl Default for IntrospectionStats {
    fn default() -> Self {
        IntrospectionStats {
            outcomes: Default::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            // 1 ms … ~16 s (the timeout is at most 30 s)
            duration: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15),
            ),
        }
    }
}

impl IntrospectionStats {
    fn record(&self, result: &Result<Answer, IntrospectError>, elapsed: Duration) {
        let outcome = match result {
            Ok(Answer::Active { .. }) => "active",
            Ok(Answer::Inactive { .. }) => "inactive",
            Err(e) => e.outcome(),
        };
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.outcomes[i].fetch_add(1, Ordering::Relaxed);
        }
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Calls by outcome, in the order of [`OUTCOMES`].
    pub fn outcomes(&self) -> [(&'static str, u64); OUTCOMES.len()] {
        std::array::from_fn(|i| (OUTCOMES[i], self.outcomes[i].load(Ordering::Relaxed)))
    }

    /// Answer-cache lookups: (answered from the cache or by a call in flight, needed a call).
    pub fn lookups(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// The duration histogram of the calls (answer verification included).
    pub fn duration(&self) -> &prometheus_client::metrics::histogram::Histogram {
        &self.duration
    }
}

/// A policy's introspection client and answer cache.
pub struct Introspector {
    pub endpoint: EndpointSource,
    pub reach: Reach,
    pub client_id: String,
    client_secret: String,
    pub auth_method: ClientAuthMethod,
    pub response: IntrospectionResponse,
    pub when: IntrospectWhen,
    pub phantom_token: bool,
    pub cache_settings: CacheSettings,
    pub timeout: Duration,
    /// Claims its answers may lack (their checks are skipped when absent).
    pub accept_without: AcceptWithout,
    cache: moka::future::Cache<[u8; 32], Arc<Answer>>,
    fetcher: Fetcher,
    /// Calls made to the endpoint (not cache hits).
    calls: AtomicU64,
    stats: Arc<IntrospectionStats>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("response", &self.response)
            .finish_non_exhaustive()
    }
}

/// Everything an [`Introspector`] is built from (compiled from the policy).
pub use crate::validate::AcceptWithout;

pub struct IntrospectorConfig {
    pub endpoint: EndpointSource,
    pub reach: Reach,
    pub client_id: String,
    pub client_secret: String,
    pub auth_method: ClientAuthMethod,
    pub response: IntrospectionResponse,
    pub when: IntrospectWhen,
    pub phantom_token: bool,
    pub cache: CacheSettings,
    pub timeout: Duration,
    pub accept_without: AcceptWithout,
    /// Where its calls and cache lookups are counted (the policy's, shared across compilations).
    pub stats: Arc<IntrospectionStats>,
}

/// The RFC 6749 §2.3.1 encoding of client credentials for HTTP Basic.
fn basic_credentials(id: &str, secret: &str) -> String {
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(id), encode(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

#[cfg(test)]
pub(crate) fn basic_credentials_for_test(id: &str, secret: &str) -> String {
    basic_credentials(id, secret)
}

fn digest(token: &str) -> [u8; 32] {
    crate::jose::sha256(token.as_bytes())
}

impl Introspector {
    pub fn new(config: IntrospectorConfig, fetcher: Fetcher) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(config.cache.max_entries)
            .expire_after(AnswerExpiry)
            .build();
        Introspector {
            endpoint: config.endpoint,
            reach: config.reach,
            client_id: config.client_id,
            client_secret: config.client_secret,
            auth_method: config.auth_method,
            response: config.response,
            when: config.when,
            phantom_token: config.phantom_token,
            cache_settings: config.cache,
            timeout: config.timeout,
            accept_without: config.accept_without,
            cache,
            fetcher,
            calls: AtomicU64::new(0),
            stats: config.stats,
        }
    }

    /// Calls made to the endpoint so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Cached answers (approximate: expired entries leave lazily).
    pub fn cached(&self) -> u64 {
        self.cache.entry_count()
    }

    /// The cached answer for `token`, or `compute`'s, computed once however many callers ask
    /// at the same time. Errors are not cached. Each computation is counted by outcome, with its
    /// duration; each lookup as a hit (no computation of its own) or a miss.
    pub async fn answer(
        &self,
        token: &str,
        compute: impl Future<Output = Result<Answer, IntrospectError>>,
    ) -> Result<Arc<Answer>, IntrospectError> {
        let computed = AtomicBool::new(false);
        let answer = self
            .cache
            .try_get_with(digest(token), async {
                computed.store(true, Ordering::Relaxed);
                let start = Instant::now();
                let answer = compute.await;
                self.stats.record(&answer, start.elapsed());
                answer.map(Arc::new)
            })
            .await
            .map_err(|e| (*e).clone());
        let counter = if computed.load(Ordering::Relaxed) {
            &self.stats.misses
        } else {
            &self.stats.hits
        };
        counter.fetch_add(1, Ordering::Relaxed);
        answer
    }

    /// TTL of an active answer: `max-age` (or the default), bounded by the token's `exp` and the
    /// maximum.
    pub fn active_ttl(
        &self,
        max_age: Option<Duration>,
        exp: Option<f64>,
        now_secs: f64,
    ) -> Duration {
        let mut ttl = max_age
            .unwrap_or(self.cache_settings.default_ttl)
            .min(self.cache_settings.max_ttl);
        if let Some(exp) = exp {
            let left = (exp - now_secs).max(0.0);
            ttl = ttl.min(Duration::from_secs_f64(left.min(1e9)));
        }
        ttl
    }

    pub fn negative_ttl(&self) -> Duration {
        self.cache_settings.negative_ttl
    }

    fn endpoint(&self) -> Result<Url, IntrospectError> {
        match &self.endpoint {
            EndpointSource::Fixed(url) => Ok(url.clone()),
            EndpointSource::Discovered(source) => {
                let endpoints = source.endpoints().ok_or_else(|| {
                    IntrospectError::Unavailable(format!(
                        "discovery {} has not been read yet",
                        source.id()
                    ))
                })?;
                let found = match self.response {
                    IntrospectionResponse::Userinfo => endpoints.userinfo.clone(),
                    _ => endpoints.introspection.clone(),
                };
                found.ok_or_else(|| {
                    IntrospectError::Invalid(format!(
                        "discovery {} announces no {} endpoint; set introspection.endpoint",
                        source.id(),
                        if self.response == IntrospectionResponse::Userinfo {
                            "userinfo"
                        } else {
                            "introspection"
                        }
                    ))
                })
            }
        }
    }

    /// Asks the IdP about `token` (a child span of the traced check, when there is one: the
    /// endpoint and the answer's status, never the token).
    pub async fn call(&self, token: &str) -> Result<Raw, IntrospectError> {
        let span = crate::otel::child("introspect", opentelemetry::trace::SpanKind::Client);
        let mut status = None;
        let result = crate::otel::within(&span, self.call_inner(token, &mut status)).await;
        if span.is_some() {
            let mut attributes = Vec::with_capacity(3);
            if let Ok(url) = self.endpoint() {
                attributes.push(opentelemetry::KeyValue::new(
                    "url.full",
                    format!("{}{}", url.origin().ascii_serialization(), url.path()),
                ));
            }
            if let Some(status) = status {
                attributes.push(opentelemetry::KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
            }
            let error = result.as_ref().err().map(|e| e.reason().as_str());
            attributes.push(opentelemetry::KeyValue::new(
                "tollgate.outcome",
                error.unwrap_or("ok"),
            ));
            crate::otel::end_child(span, attributes, error.map(Into::into));
        }
        result
    }

    async fn call_inner(
        &self,
        token: &str,
        status: &mut Option<u16>,
    ) -> Result<Raw, IntrospectError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let url = self.endpoint()?;
        let request = match self.response {
            IntrospectionResponse::Userinfo => self
                .fetcher
                .request(reqwest::Method::GET, &url, self.reach)
                .header(reqwest::header::ACCEPT, "application/json")
                .header(reqwest::header::AUTHORIZATION, format!("Bearer {token}")),
            _ => {
                let accept = match self.response {
                    IntrospectionResponse::Jwt => "application/jwt",
                    IntrospectionResponse::TokenIntrospectionJwt => {
                        "application/token-introspection+jwt"
                    }
                    _ => "application/json",
                };
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                form.append_pair("token", token)
                    .append_pair("token_type_hint", "access_token");
                let mut request = self
                    .fetcher
                    .request(reqwest::Method::POST, &url, self.reach)
                    .header(reqwest::header::ACCEPT, accept);
                match self.auth_method {
                    ClientAuthMethod::ClientSecretBasic => {
                        request = request.header(
                            reqwest::header::AUTHORIZATION,
                            basic_credentials(&self.client_id, &self.client_secret),
                        );
                    }
                    ClientAuthMethod::ClientSecretPost => {
                        form.append_pair("client_id", &self.client_id)
                            .append_pair("client_secret", &self.client_secret);
                    }
                }
                request
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(form.finish())
            }
        };
        let answer = self
            .fetcher
            .exchange(&url, self.reach, request, self.timeout)
            .await
            .map_err(|e| match e {
                FetchError::Timeout(t) => IntrospectError::Timeout(t),
                FetchError::TooLarge(limit) => {
                    IntrospectError::Invalid(format!("answer larger than {limit} bytes"))
                }
                FetchError::Insecure(url) => {
                    IntrospectError::Invalid(format!("{url} is not https"))
                }
                FetchError::Forbidden(reason) => IntrospectError::Invalid(reason),
                FetchError::Status(status) => IntrospectError::Failed { status, hint: "" },
                FetchError::Transport(detail) => IntrospectError::Unavailable(detail),
                FetchError::Saturated(waited) => {
                    IntrospectError::Unavailable(FetchError::Saturated(waited).to_string())
                }
            });
        if let Err(IntrospectError::Failed { status: code, .. }) = &answer {
            *status = Some(*code);
        }
        let answer = answer?;
        *status = Some(answer.status);
        self.parse(answer)
    }

    fn parse(&self, answer: crate::jwks::fetch::Answer) -> Result<Raw, IntrospectError> {
        let status = answer.status;
        match (self.response, status) {
            (_, 503) => return Err(IntrospectError::Unavailable("HTTP 503".into())),
            (IntrospectionResponse::Userinfo, 401 | 403) => return Ok(Raw::Inactive),
            (_, 401 | 403) => {
                return Err(IntrospectError::Failed {
                    status,
                    hint: ": check introspection.clientId and the client secret",
                });
            }
            (IntrospectionResponse::Jwt, 204) => return Ok(Raw::Inactive),
            (_, 200) => {}
            (_, 404 | 500..=599) => return Err(IntrospectError::Failed { status, hint: "" }),
            (_, other) => return Err(IntrospectError::Invalid(format!("HTTP {other}"))),
        }
        let max_age = answer.max_age;
        let text = || {
            std::str::from_utf8(&answer.body)
                .map(|t| t.trim().to_string())
                .map_err(|_| IntrospectError::Invalid("the body is not UTF-8".into()))
        };
        match self.response {
            IntrospectionResponse::Jwt => Ok(Raw::Jwt {
                token: text()?,
                max_age,
            }),
            IntrospectionResponse::TokenIntrospectionJwt => Ok(Raw::Signed {
                token: text()?,
                max_age,
            }),
            IntrospectionResponse::Json | IntrospectionResponse::Userinfo => {
                let object: Claims = serde_json::from_slice(&answer.body)
                    .map_err(|e| IntrospectError::Invalid(format!("not a JSON object: {e}")))?;
                if self.response == IntrospectionResponse::Userinfo {
                    return Ok(Raw::Claims {
                        claims: object,
                        jwt: None,
                        max_age,
                    });
                }
                parse_json(object, max_age)
            }
        }
    }
}

/// An RFC 7662 JSON answer: `active` must be a boolean; `true` makes the rest the claims.
pub fn parse_json(mut object: Claims, max_age: Option<Duration>) -> Result<Raw, IntrospectError> {
    match object.remove("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return Ok(Raw::Inactive),
        Some(other) => {
            return Err(IntrospectError::Invalid(format!(
                "active is {other}, not a boolean"
            )));
        }
        None => {
            return Err(IntrospectError::Invalid(
                "the answer has no active member".into(),
            ));
        }
    }
    let jwt = match object.remove("jwt") {
        None => None,
        Some(Value::String(jwt)) => Some(jwt),
        Some(_) => return Err(IntrospectError::Invalid("jwt is not a string".into())),
    };
    Ok(Raw::Claims {
        claims: object,
        jwt,
        max_age,
    })
}

/// Whether a token looks like a JWT (a compact JWS or JWE) rather than an opaque token.
pub fn looks_like_jwt(token: &str) -> bool {
    matches!(token.bytes().filter(|b| *b == b'.').count(), 2 | 4)
}

#[cfg(test)]
mod tests;

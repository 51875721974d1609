//! Outbound HTTP for key material and introspection: timeouts, a body size limit, a redirect
//! policy that never downgrades to plain HTTP, the address guard of [`super::guard`], and a
//! bound on concurrent calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use url::Url;

use super::guard::{self, GuardedResolver, Reach};

/// Limits for every outbound call.
#[derive(Clone, Debug)]
pub struct FetchSettings {
    /// Whole request, connect to last byte.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Most bytes read from a response body.
    pub max_body_bytes: usize,
    /// Most discovery and key set calls in flight at once.
    pub max_concurrent: usize,
    /// Most introspection (and userinfo) calls in flight at once: a budget of their own, so a
    /// flood of random opaque tokens never delays a key refresh.
    pub max_concurrent_introspection: usize,
    /// Most discovery and key set calls in flight at once for tenants an issuer template
    /// admits by its condition (`admitTenants`): a budget of their own, so a stream of new
    /// tenants never delays the refresh of the issuers policies list.
    pub max_concurrent_admitted: usize,
    /// Send outbound calls through the proxy the environment names (`HTTPS_PROXY`,
    /// `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, in upper or lower case), if any.
    pub egress_proxy: bool,
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            max_body_bytes: 1024 * 1024,
            max_concurrent: 16,
            max_concurrent_introspection: 64,
            max_concurrent_admitted: 4,
            egress_proxy: true,
        }
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// No answer within the timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Connection, TLS or protocol failure.
    #[error("request failed: {0}")]
    Transport(String),
    /// Answered with a non-2xx status.
    #[error("answered HTTP {0}")]
    Status(u16),
    /// Body larger than the limit.
    #[error("response body larger than {0} bytes")]
    TooLarge(usize),
    /// A plain-HTTP URL without `allowInsecureHttp`.
    #[error("{0} is not https (set allowInsecureHttp on the issuer to allow it)")]
    Insecure(String),
    /// A link-local or cloud metadata address without `allowMetadataAddresses`.
    #[error("{0}")]
    Forbidden(String),
    /// Every outbound slot of this kind stayed busy for the whole timeout.
    #[error(
        "no free slot for an outbound call within {0:?} (too many calls of this kind in flight)"
    )]
    Saturated(Duration),
}

/// Most distinct CA bundles whose clients are kept for sharing; past it the cache starts over
/// (sources keep the clients they were given, so nothing in use breaks, only sharing is lost).
const MAX_CA_BUNDLES: usize = 64;
/// Most certificates in one CA bundle.
const MAX_BUNDLE_CERTIFICATES: usize = 100;

/// The identity of a CA bundle: the digest of its certificates, so the same bundle named by
/// several policies (or read again unchanged) is one set of clients.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrustId(pub [u8; 32]);

impl std::fmt::Debug for TrustId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ca-bundle:")?;
        for byte in &self.0[..6] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// The trust roots of an issuer with a private CA: HTTP clients that trust exactly the
/// bundle's certificates (the system's roots are not added), with every other setting of the
/// shared clients (timeouts, redirects, the address guard).
#[derive(Clone, Debug)]
pub struct CaBundle {
    pub id: TrustId,
    /// How many CA certificates the bundle holds.
    pub certificates: usize,
    guarded: reqwest::Client,
    open: reqwest::Client,
}

/// Why a CA bundle was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CaBundleError {
    /// No `CERTIFICATE` PEM block.
    #[error("no PEM certificate (-----BEGIN CERTIFICATE-----) in the CA bundle")]
    Empty,
    /// More certificates than the bound.
    #[error("the CA bundle has {0} certificates, more than the {MAX_BUNDLE_CERTIFICATES} accepted")]
    TooMany(usize),
    /// A PEM block that does not parse, or a private key.
    #[error("the CA bundle is not PEM certificates: {0}")]
    Invalid(String),
    /// The clients could not be built with it.
    #[error("the CA bundle cannot be used: {0}")]
    Unusable(String),
}

/// The DER certificates of a PEM bundle; a private key in it is refused (a CA bundle is
/// public, and a key there means the wrong file was given).
fn bundle_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, CaBundleError> {
    use rustls_pki_types::pem::{PemObject as _, SectionKind};
    let mut certificates = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        match section {
            Ok((SectionKind::Certificate, der)) => certificates.push(der),
            Ok((
                SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey,
                _,
            )) => {
                return Err(CaBundleError::Invalid(
                    "it holds a private key; give the CA certificates only".into(),
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(CaBundleError::Invalid(e.to_string())),
        }
    }
    match certificates.len() {
        0 => Err(CaBundleError::Empty),
        n if n > MAX_BUNDLE_CERTIFICATES => Err(CaBundleError::TooMany(n)),
        _ => Ok(certificates),
    }
}

/// A successful response: the body and how long it may be cached.
#[derive(Debug)]
pub struct Fetched {
    pub body: bytes::Bytes,
    /// From `Cache-Control: max-age`; `Some(0)` for `no-cache`/`no-store`.
    pub max_age: Option<Duration>,
}

/// The shared HTTP clients for discovery, key sets and introspection. Each purpose has its own
/// bound on calls in flight ([`Fetcher::with_budget`]); waiting for a slot counts against the
/// call's timeout.
#[derive(Clone)]
pub struct Fetcher {
    /// Never reaches link-local or metadata addresses.
    guarded: reqwest::Client,
    /// For policies with `allowMetadataAddresses: true`.
    open: reqwest::Client,
    permits: Arc<Semaphore>,
    settings: FetchSettings,
    /// Clients of the CA bundles in use, shared by every fetcher cloned from this one.
    bundles: Arc<Mutex<HashMap<TrustId, CaBundle>>>,
    /// Whether the environment names a proxy these clients use: then the proxy resolves the
    /// destination, and the guard resolves it too before each call.
    proxied: bool,
}

/// Whether the environment names an egress proxy.
pub fn proxy_in_environment() -> bool {
    [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

fn build_client(
    settings: &FetchSettings,
    guarded: bool,
    roots: Option<&[Vec<u8>]>,
) -> Result<reqwest::Client, FetchError> {
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        let downgrade = attempt.url().scheme() != "https"
            && attempt.previous().iter().any(|u| u.scheme() == "https");
        if attempt.previous().len() >= 3 {
            attempt.error("more than 3 redirects")
        } else if downgrade {
            attempt.error("redirect from https to plain http refused")
        } else if let Some(reason) = guarded
            .then(|| guard::forbidden_url(attempt.url()))
            .flatten()
        {
            attempt.error(format!("redirect refused: {reason}"))
        } else {
            attempt.follow()
        }
    });
    let mut builder = reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.connect_timeout)
        .redirect(redirects)
        .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")));
    if !settings.egress_proxy {
        builder = builder.no_proxy();
    }
    if guarded {
        builder = builder.dns_resolver(Arc::new(GuardedResolver));
    }
    if let Some(roots) = roots {
        let certificates = roots
            .iter()
            .map(|der| reqwest::Certificate::from_der(der))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| FetchError::Transport(e.to_string()))?;
        builder = builder.tls_certs_only(certificates);
    }
    builder
        .build()
        .map_err(|e| FetchError::Transport(e.to_string()))
}

impl Fetcher {
    pub fn new(settings: FetchSettings) -> Result<Self, FetchError> {
        Ok(Fetcher {
            guarded: build_client(&settings, true, None)?,
            open: build_client(&settings, false, None)?,
            permits: Arc::new(Semaphore::new(settings.max_concurrent.max(1))),
            bundles: Arc::new(Mutex::new(HashMap::new())),
            proxied: settings.egress_proxy && proxy_in_environment(),
            settings,
        })
    }

    /// The clients trusting exactly the CA certificates of `pem` (one or more `CERTIFICATE`
    /// blocks), built once per distinct bundle and shared.
    pub fn ca_bundle(&self, pem: &[u8]) -> Result<CaBundle, CaBundleError> {
        let certificates = bundle_certificates(pem)?;
        let mut digest_input = Vec::new();
        for der in &certificates {
            digest_input.extend_from_slice(&crate::jose::sha256(der));
        }
        let id = TrustId(crate::jose::sha256(&digest_input));
        let mut bundles = self.bundles.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bundle) = bundles.get(&id) {
            return Ok(bundle.clone());
        }
        let build = |guarded| {
            build_client(&self.settings, guarded, Some(&certificates))
                .map_err(|e| CaBundleError::Unusable(e.to_string()))
        };
        let bundle = CaBundle {
            id,
            certificates: certificates.len(),
            guarded: build(true)?,
            open: build(false)?,
        };
        if bundles.len() >= MAX_CA_BUNDLES {
            bundles.clear();
        }
        bundles.insert(id, bundle.clone());
        Ok(bundle)
    }

    /// The same fetcher (budget, limits) with the clients of `bundle`.
    pub fn with_ca_bundle(&self, bundle: &CaBundle) -> Fetcher {
        Fetcher {
            guarded: bundle.guarded.clone(),
            open: bundle.open.clone(),
            ..self.clone()
        }
    }

    /// The same clients with a separate bound of `max_concurrent` calls in flight.
    pub fn with_budget(&self, max_concurrent: usize) -> Fetcher {
        Fetcher {
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            settings: FetchSettings {
                max_concurrent,
                ..self.settings.clone()
            },
            ..self.clone()
        }
    }

    pub fn settings(&self) -> &FetchSettings {
        &self.settings
    }

    fn client(&self, reach: Reach) -> &reqwest::Client {
        if reach.metadata {
            &self.open
        } else {
            &self.guarded
        }
    }

    /// GETs `url` as JSON within `reach`; non-2xx is an error.
    pub async fn get(&self, url: &Url, reach: Reach) -> Result<Fetched, FetchError> {
        let request = self
            .client(reach)
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json");
        let answer = self
            .exchange(url, reach, request, self.settings.timeout)
            .await?;
        if !(200..300).contains(&answer.status) {
            return Err(FetchError::Status(answer.status));
        }
        Ok(Fetched {
            body: answer.body,
            max_age: answer.max_age,
        })
    }

    /// A request builder on the client for `reach` (for `exchange` with the same `reach`).
    pub fn request(
        &self,
        method: reqwest::Method,
        url: &Url,
        reach: Reach,
    ) -> reqwest::RequestBuilder {
        self.client(reach).request(method, url.clone())
    }

    /// Sends `request` (to `url`) within `timeout`, the body size limit and the concurrency
    /// bound, and returns whatever status came back.
    pub async fn exchange(
        &self,
        url: &Url,
        reach: Reach,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<Answer, FetchError> {
        check_reach(url, reach)?;
        if self.proxied && !reach.metadata {
            // Through a proxy the proxy resolves the name, past the guarded resolver: the
            // destination is resolved and checked here first.
            guard::check_destination(url)
                .await
                .map_err(FetchError::Forbidden)?;
        }
        let started = std::time::Instant::now();
        let _permit = match tokio::time::timeout(timeout, self.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(FetchError::Transport("fetcher closed".into())),
            Err(_) => return Err(FetchError::Saturated(timeout)),
        };
        // The wait for a slot is part of the call's time.
        let timeout = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        let limit = self.settings.max_body_bytes;
        // A call a traced check waits for names its span, so the server's trace can join.
        let request = match crate::otel::outgoing() {
            Some((parent, state)) => {
                let request = request.header(crate::otel::TRACEPARENT, parent);
                match state {
                    Some(state) => request.header(crate::otel::TRACESTATE, state),
                    None => request,
                }
            }
            None => request,
        };
        let exchange = async {
            let mut response = request
                .timeout(timeout)
                .send()
                .await
                .map_err(|e| classify(e, timeout))?;
            let status = response.status().as_u16();
            let header = |name: reqwest::header::HeaderName| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let max_age = header(reqwest::header::CACHE_CONTROL)
                .as_deref()
                .and_then(parse_max_age);
            let content_type = header(reqwest::header::CONTENT_TYPE);
            if response
                .content_length()
                .is_some_and(|len| len > limit as u64)
            {
                return Err(FetchError::TooLarge(limit));
            }
            let mut body = bytes::BytesMut::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| classify(e, timeout))? {
                if body.len() + chunk.len() > limit {
                    return Err(FetchError::TooLarge(limit));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Answer {
                status,
                content_type,
                max_age,
                body: body.freeze(),
            })
        };
        // The client timeout covers the request; this bounds the body loop as well.
        tokio::time::timeout(timeout + Duration::from_millis(100), exchange)
            .await
            .map_err(|_| FetchError::Timeout(timeout))?
    }
}

/// Any HTTP answer, bounded.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    /// From `Cache-Control: max-age`; `Some(0)` for `no-cache`/`no-store`.
    pub max_age: Option<Duration>,
    pub body: bytes::Bytes,
}

/// Refuses non-https URLs and link-local or metadata hosts, unless `reach` allows them.
pub fn check_reach(url: &Url, reach: Reach) -> Result<(), FetchError> {
    match url.scheme() {
        "https" => {}
        "http" if reach.insecure_http => {}
        _ => return Err(FetchError::Insecure(url.to_string())),
    }
    match guard::forbidden_url(url) {
        Some(reason) if !reach.metadata => Err(FetchError::Forbidden(reason)),
        _ => Ok(()),
    }
}

fn classify(error: reqwest::Error, timeout: Duration) -> FetchError {
    if error.is_timeout() {
        FetchError::Timeout(timeout)
    } else {
        // The chain carries the useful part (connection refused, certificate, …).
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(inner) = source {
            text.push_str(": ");
            text.push_str(&inner.to_string());
            source = inner.source();
        }
        FetchError::Transport(text)
    }
}

/// `max-age` from a Cache-Control value; `no-cache`/`no-store` count as zero.
pub fn parse_max_age(value: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in value.split(',') {
        let directive = directive.trim().to_ascii_lowercase();
        if directive == "no-cache" || directive == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(seconds) = directive.strip_prefix("max-age=") {
            max_age = seconds
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    max_age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            parse_max_age("public, max-age=3600"),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            parse_max_age("max-age=\"60\""),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("Max-Age=10, No-Cache"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("public"), None);
        assert_eq!(parse_max_age("max-age=abc"), None);
    }

    #[test]
    fn plain_http_and_metadata_addresses_need_explicit_permission() {
        let http = Url::parse("http://idp.example/keys").expect("url");
        let https = Url::parse("https://idp.example/keys").expect("url");
        let file = Url::parse("file:///etc/passwd").expect("url");
        let metadata = Url::parse("http://169.254.169.254/latest/meta-data/").expect("url");
        let strict = Reach::default();
        let insecure = Reach::new(true, false);
        assert!(check_reach(&https, strict).is_ok());
        assert!(matches!(
            check_reach(&http, strict),
            Err(FetchError::Insecure(_))
        ));
        assert!(check_reach(&http, insecure).is_ok());
        assert!(check_reach(&file, Reach::new(true, true)).is_err());
        assert!(matches!(
            check_reach(&metadata, insecure),
            Err(FetchError::Forbidden(_))
        ));
        assert!(check_reach(&metadata, Reach::new(true, true)).is_ok());
    }

    /// However many fetches are asked for at once, at most `max_concurrent` reach the network.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outbound_calls_in_flight_are_bounded() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (in_flight, highest) = (now.clone(), peak.clone());
        let app = axum::Router::new().route(
            "/keys",
            axum::routing::get(move || {
                let (in_flight, highest) = (in_flight.clone(), highest.clone());
                async move {
                    let n = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    highest.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    axum::Json(serde_json::json!({"keys": []}))
                }
            }),
        );
        let addr = crate::fixtures::serve(app).await;
        let url = Url::parse(&format!("http://{addr}/keys")).expect("url");
        let fetcher = Fetcher::new(FetchSettings {
            max_concurrent: 3,
            ..FetchSettings::default()
        })
        .expect("fetcher");
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let (fetcher, url) = (fetcher.clone(), url.clone());
                tokio::spawn(async move { fetcher.get(&url, Reach::new(true, false)).await })
            })
            .collect();
        for call in calls {
            assert!(call.await.expect("task").is_ok());
        }
        let peak = peak.load(Ordering::SeqCst);
        assert!((2..=3).contains(&peak), "{peak} calls in flight at once");
    }

    /// Introspection has a budget of its own: while every introspection slot hangs on a silent
    /// endpoint, key sets are still fetched, and a further introspection call gives up within
    /// its timeout instead of queueing forever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_purpose_has_its_own_budget_and_waits_are_bounded() {
        let app = axum::Router::new()
            .route(
                "/introspect",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .route(
                "/keys",
                axum::routing::get(|| async { axum::Json(serde_json::json!({"keys": []})) }),
            );
        let addr = crate::fixtures::serve(app).await;
        let reach = Reach::new(true, false);
        let keys = Fetcher::new(FetchSettings {
            timeout: Duration::from_secs(5),
            max_concurrent: 2,
            max_concurrent_introspection: 2,
            ..FetchSettings::default()
        })
        .expect("fetcher");
        let introspection = keys.with_budget(2);
        let slow = Url::parse(&format!("http://{addr}/introspect")).expect("url");
        let hanging: Vec<_> = (0..2)
            .map(|_| {
                let (fetcher, url) = (introspection.clone(), slow.clone());
                tokio::spawn(async move { fetcher.get(&url, reach).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        let keys_url = Url::parse(&format!("http://{addr}/keys")).expect("url");
        assert!(keys.get(&keys_url, reach).await.is_ok());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "key fetch waited"
        );
        // A third introspection call finds no slot and says so within its own timeout.
        let request = introspection.request(reqwest::Method::GET, &slow, reach);
        let started = std::time::Instant::now();
        let third = introspection
            .exchange(&slow, reach, request, Duration::from_millis(300))
            .await;
        assert!(matches!(third, Err(FetchError::Saturated(_))), "{third:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        for call in hanging {
            call.abort();
        }
    }

    /// An issuer with a private CA: reached with its bundle, refused with the system's roots
    /// and with another CA's bundle; the same bundle is one set of clients.
    #[tokio::test]
    async fn a_ca_bundle_replaces_the_system_roots_for_its_issuer() {
        let app = axum::Router::new().route(
            "/keys",
            axum::routing::get(|| async { axum::Json(serde_json::json!({"keys": []})) }),
        );
        let backend = crate::fixtures::serve(app).await;
        let (ca, front) = crate::fixtures::private_ca_https(backend).await;
        let (other_ca, _) = crate::fixtures::private_ca_https(backend).await;
        let url = Url::parse(&format!("https://{front}/keys")).expect("url");
        let fetcher = Fetcher::new(FetchSettings::default()).expect("fetcher");
        let reach = Reach::default();

        let refused = fetcher.get(&url, reach).await.expect_err("system roots");
        assert!(
            matches!(&refused, FetchError::Transport(t) if t.contains("certificate")),
            "{refused:?}"
        );
        let bundle = fetcher.ca_bundle(ca.as_bytes()).expect("bundle");
        assert_eq!(bundle.certificates, 1);
        let trusted = fetcher.with_ca_bundle(&bundle);
        assert_eq!(
            &trusted.get(&url, reach).await.expect("trusted").body[..],
            br#"{"keys":[]}"#
        );
        assert_eq!(
            fetcher
                .ca_bundle(format!("# the same\n{ca}").as_bytes())
                .expect("again")
                .id,
            bundle.id
        );
        let other = fetcher
            .ca_bundle(other_ca.as_bytes())
            .expect("other bundle");
        assert_ne!(other.id, bundle.id);
        assert!(
            fetcher
                .with_ca_bundle(&other)
                .get(&url, reach)
                .await
                .is_err()
        );

        assert_eq!(fetcher.ca_bundle(b"").err(), Some(CaBundleError::Empty));
        let key = rcgen::KeyPair::generate().expect("key").serialize_pem();
        assert!(matches!(
            fetcher.ca_bundle(format!("{ca}{key}").as_bytes()),
            Err(CaBundleError::Invalid(m)) if m.contains("private key")
        ));
    }

    /// A host name that resolves only to a link-local address is refused at connect time, so
    /// DNS cannot smuggle the metadata service past the check of the URL.
    #[tokio::test]
    async fn names_resolving_to_link_local_addresses_are_refused() {
        use reqwest::dns::Resolve as _;
        let error = GuardedResolver
            .resolve("169.254.169.254".parse().expect("name"))
            .await
            .err()
            .expect("refused");
        assert!(error.to_string().contains("link-local"), "{error}");
        let ok = GuardedResolver
            .resolve("localhost".parse().expect("name"))
            .await
            .expect("localhost resolves");
        assert!(ok.count() >= 1);
    }
}

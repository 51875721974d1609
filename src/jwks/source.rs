//! A key source: where one issuer's keys come from (fixed, a JWKS URI, or OpenID discovery),
//! the current key set, and the refresh logic.
//!
//! The request path only calls [`KeySource::current`] (a lock-free `ArcSwap` load). On an
//! unknown `kid` it calls [`KeySource::refresh_on_miss`], which is rate-limited and coalesced:
//! however many requests miss at once, one fetch runs and the others wait for its result.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use serde::Deserialize;
use url::Url;

use super::fetch::{FetchError, Fetcher, TrustId};
use super::guard::Reach;
use super::keyset::{KeySet, KeySetError};

/// How key sets are refreshed. Shared by every source.
#[derive(Clone, Debug)]
pub struct RefreshSettings {
    /// Used when the response has no `Cache-Control: max-age`.
    pub default_interval: Duration,
    /// Lower bound on the refresh interval, whatever `max-age` says.
    pub min_interval: Duration,
    /// Upper bound on the refresh interval.
    pub max_interval: Duration,
    /// Least time between two refetches caused by unknown `kid`s.
    pub miss_refetch_interval: Duration,
    /// Retry delay after a failed fetch grows up to this.
    pub max_retry_delay: Duration,
    /// How long the last good keys keep being used while every refresh fails. Past it, the
    /// issuer's tokens are answered 503 `issuer_unavailable` instead of being judged by keys
    /// the issuer may have revoked since.
    pub max_staleness: Duration,
    /// How long a tenant an issuer template admitted by its condition (`admitTenants`) keeps
    /// its slot while no token names it.
    pub admitted_idle: Duration,
}

impl Default for RefreshSettings {
    fn default() -> Self {
        RefreshSettings {
            default_interval: Duration::from_secs(600),
            min_interval: Duration::from_secs(60),
            max_interval: Duration::from_secs(3600),
            miss_refetch_interval: Duration::from_secs(30),
            max_retry_delay: Duration::from_secs(30),
            max_staleness: Duration::from_secs(24 * 3600),
            admitted_idle: Duration::from_secs(3600),
        }
    }
}

/// Where the keys come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Inline JWKS, PEM keys or a shared secret: never refreshed.
    Fixed,
    /// A JWKS URI. `trust`: the CA bundle its TLS is checked against (`None`: the system's
    /// roots); part of the identity, so a source is shared only under the same trust.
    JwksUri {
        url: Url,
        reach: Reach,
        trust: Option<TrustId>,
    },
    /// OpenID discovery: the document's `issuer` must equal `issuer`, then its `jwks_uri`.
    Discovery {
        url: Url,
        issuer: String,
        reach: Reach,
        trust: Option<TrustId>,
    },
}

/// Why keys could not be refreshed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SourceError {
    /// The discovery document could not be fetched.
    #[error("discovery {url}: {error}")]
    DiscoveryFetch { url: String, error: FetchError },
    /// The discovery document is not JSON or lacks `jwks_uri`.
    #[error("discovery {url}: {detail}")]
    DiscoveryInvalid { url: String, detail: String },
    /// The discovery document names another issuer (e.g. Azure AD v1 vs v2 endpoints).
    #[error("discovery {url} is for issuer {found:?}, not the configured {expected:?}")]
    DiscoveryIssuerMismatch {
        url: String,
        expected: String,
        found: String,
    },
    /// The key set could not be fetched.
    #[error("key set {url}: {error}")]
    JwksFetch { url: String, error: FetchError },
    /// The key set was fetched but is unusable.
    #[error("key set {url}: {error}")]
    JwksInvalid { url: String, error: KeySetError },
}

/// A point-in-time view of a source, for status, metrics and readiness.
#[derive(Clone, Debug, Default)]
pub struct SourceStatus {
    pub key_count: usize,
    /// Keys of the last fetched set that were refused, as `kid: why` (ROCA, private material,
    /// too small, …).
    pub rejected_keys: Vec<String>,
    pub last_success: Option<SystemTime>,
    pub last_error: Option<String>,
    pub fetches_ok: u64,
    pub fetches_failed: u64,
    /// Refetches caused by unknown `kid`s.
    pub miss_refetches: u64,
    /// Unknown-`kid` refetches refused by the rate limit.
    pub miss_rate_limited: u64,
    /// Tokens whose key was in the cached key set.
    pub key_hits: u64,
    /// Tokens whose `kid` was not in the cached key set.
    pub key_misses: u64,
}

#[derive(Default)]
struct Mutable {
    status: SourceStatus,
    last_miss_refetch: Option<Instant>,
}

/// One issuer's keys. Shared (`Arc`) by every policy that names the same source.
pub struct KeySource {
    id: Arc<str>,
    origin: Origin,
    keys: ArcSwapOption<KeySet>,
    /// Introspection and userinfo endpoints from the last discovery document.
    endpoints: ArcSwapOption<Endpoints>,
    /// Set once the first fetch finished, successfully or not (readiness).
    attempted: AtomicBool,
    attempted_notify: tokio::sync::Notify,
    refetch_lock: tokio::sync::Mutex<()>,
    mutable: Mutex<Mutable>,
    fetcher: Option<Fetcher>,
    settings: RefreshSettings,
    key_hits: AtomicU64,
    key_misses: AtomicU64,
    /// Unix seconds of the last successful fetch (0: never). Read on the request path.
    fresh_at: AtomicU64,
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySource")
            .field("id", &self.id)
            .field("origin", &self.origin)
            .finish()
    }
}

/// Result of a refetch caused by a miss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refetch {
    /// Keys were fetched (by this call or a concurrent one); look again.
    Refreshed,
    /// A refetch ran less than `miss_refetch_interval` ago; nothing fetched.
    RateLimited,
    /// The fetch failed; the previous keys (if any) stay.
    Failed,
    /// A fixed source: nothing to fetch.
    Fixed,
}

/// Why a source has no keys to judge tokens with right now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    /// No fetch has succeeded yet.
    #[error("{0}")]
    NeverFetched(String),
    /// The last successful fetch is older than [`RefreshSettings::max_staleness`].
    #[error(
        "the keys were last refreshed {age} ago, more than the {max} they may be used without a refresh (--jwks-max-staleness); last error: {last_error}"
    )]
    Stale {
        age: String,
        max: String,
        last_error: String,
    },
}

#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: Option<String>,
    jwks_uri: Option<String>,
    #[serde(default)]
    introspection_endpoint: Option<String>,
    #[serde(default)]
    userinfo_endpoint: Option<String>,
}

/// Endpoints a discovery document announced besides the key set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub introspection: Option<Url>,
    pub userinfo: Option<Url>,
}

impl KeySource {
    /// A source whose keys never change.
    pub fn fixed(id: impl Into<Arc<str>>, keys: KeySet) -> Arc<Self> {
        let source = Self::new(id.into(), Origin::Fixed, None, RefreshSettings::default());
        source.keys.store(Some(Arc::new(keys)));
        source.attempted.store(true, Ordering::Release);
        let mut mutable = source.lock();
        mutable.status.key_count = source.current().map_or(0, |k| k.len());
        mutable.status.last_success = Some(SystemTime::now());
        drop(mutable);
        source
    }

    /// A remote source. Nothing is fetched until [`Self::fetch`] or [`spawn_refresh`].
    pub fn remote(origin: Origin, fetcher: Fetcher, settings: RefreshSettings) -> Arc<Self> {
        let id: Arc<str> = match &origin {
            Origin::Fixed => "fixed".into(),
            Origin::JwksUri { url, .. } | Origin::Discovery { url, .. } => url.as_str().into(),
        };
        Self::new(id, origin, Some(fetcher), settings)
    }

    /// A remote source that is never fetched (offline checks): it stays without keys, and
    /// says so.
    pub fn unfetched(origin: Origin) -> Arc<Self> {
        let id: Arc<str> = match &origin {
            Origin::Fixed => "fixed".into(),
            Origin::JwksUri { url, .. } | Origin::Discovery { url, .. } => url.as_str().into(),
        };
        let source = Self::new(id, origin, None, RefreshSettings::default());
        source.lock().status.last_error = Some(format!(
            "offline: the keys are published at {} and were not fetched",
            source.id
        ));
        source.attempted.store(true, Ordering::Release);
        source
    }

    fn new(
        id: Arc<str>,
        origin: Origin,
        fetcher: Option<Fetcher>,
        settings: RefreshSettings,
    ) -> Arc<Self> {
        Arc::new(KeySource {
            id,
            origin,
            keys: ArcSwapOption::empty(),
            endpoints: ArcSwapOption::empty(),
            attempted: AtomicBool::new(false),
            attempted_notify: tokio::sync::Notify::new(),
            refetch_lock: tokio::sync::Mutex::new(()),
            mutable: Mutex::new(Mutable::default()),
            fetcher,
            settings,
            key_hits: AtomicU64::new(0),
            key_misses: AtomicU64::new(0),
            fresh_at: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mutable> {
        // A poisoned lock only means a panic elsewhere while holding plain data; keep going.
        self.mutable
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The URL (or "inline …" name) of this source.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The endpoints discovery announced (`None` before the first discovery, or without one).
    pub fn endpoints(&self) -> Option<Arc<Endpoints>> {
        self.endpoints.load_full()
    }

    /// The current keys; `None` until a fetch has succeeded once.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    /// The keys to judge tokens with at `now`: the current set, unless none was ever fetched or
    /// every refresh has failed for longer than [`RefreshSettings::max_staleness`].
    pub fn usable(&self, now: SystemTime) -> Result<Arc<KeySet>, Unusable> {
        match self.keys.load_full() {
            Some(keys) => match self.stale_for(now) {
                None => Ok(keys),
                Some(age) => Err(Unusable::Stale {
                    age: humantime::format_duration(age).to_string(),
                    max: humantime::format_duration(self.settings.max_staleness).to_string(),
                    last_error: self
                        .lock()
                        .status
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "none yet; the next refresh is due".into()),
                }),
            },
            None => Err(Unusable::NeverFetched(
                self.lock()
                    .status
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "the first fetch has not finished".into()),
            )),
        }
    }

    /// How long past its last successful fetch a remote source is, when that is more than the
    /// allowed staleness (`None`: fresh enough, or a fixed source).
    fn stale_for(&self, now: SystemTime) -> Option<Duration> {
        // Fixed sources never go stale.
        self.fetcher.as_ref()?;
        let age = self.age(now);
        (age > self.settings.max_staleness).then_some(age)
    }

    /// Time since the last successful fetch (whole seconds).
    fn age(&self, now: SystemTime) -> Duration {
        let fresh_at = self.fresh_at.load(Ordering::Relaxed);
        Duration::from_secs(unix_secs(now).saturating_sub(fresh_at))
    }

    /// The version of the keys usable at `now` (see [`Self::usable`]), for the verified-token
    /// cache: a stale source matches no cached entry.
    pub fn usable_version(&self, now: SystemTime) -> Option<u64> {
        if self.stale_for(now).is_some() {
            return None;
        }
        self.version()
    }

    /// Replaces the keys as a fetch would (tests of what depends on key changes).
    #[cfg(test)]
    pub(crate) fn install(&self, keys: KeySet) {
        self.keys.store(Some(Arc::new(keys)));
    }

    /// The version of the current keys ([`KeySet::version`]), without taking a reference.
    pub fn version(&self) -> Option<u64> {
        self.keys.load().as_ref().map(|keys| keys.version())
    }

    pub fn status(&self) -> SourceStatus {
        let mut status = self.lock().status.clone();
        status.key_hits = self.key_hits.load(Ordering::Relaxed);
        status.key_misses = self.key_misses.load(Ordering::Relaxed);
        status
    }

    /// Counts a key lookup in the cached set (`found`: the token's key was there).
    pub fn record_lookup(&self, found: bool) {
        let counter = if found {
            &self.key_hits
        } else {
            &self.key_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the first fetch finished (successfully or not).
    pub fn attempted(&self) -> bool {
        self.attempted.load(Ordering::Acquire)
    }

    /// Waits until the first fetch finished.
    pub async fn wait_attempted(&self) {
        loop {
            let notified = self.attempted_notify.notified();
            if self.attempted() {
                return;
            }
            notified.await;
        }
    }

    /// Fetches now and stores the result. Returns when to refresh next.
    pub async fn fetch(&self) -> Result<Duration, SourceError> {
        let Some(fetcher) = &self.fetcher else {
            return Ok(self.settings.max_interval);
        };
        // A fetch a check waits for (unknown kid, first use) is a child span of that check.
        let span = crate::otel::child("keys.fetch", opentelemetry::trace::SpanKind::Client);
        let result = crate::otel::within(&span, self.fetch_keys(fetcher)).await;
        if span.is_some() {
            let mut attributes = vec![opentelemetry::KeyValue::new(
                "tollgate.key_source",
                self.id.to_string(),
            )];
            attributes.push(match &result {
                Ok((keys, _)) => opentelemetry::KeyValue::new("tollgate.keys", keys.len() as i64),
                Err(_) => opentelemetry::KeyValue::new("tollgate.outcome", "error"),
            });
            let error = result.as_ref().err().map(|e| e.to_string().into());
            crate::otel::end_child(span, attributes, error);
        }
        let next = {
            let mut mutable = self.lock();
            let status = &mut mutable.status;
            match &result {
                Ok((keys, _)) => {
                    status.key_count = keys.len();
                    status.rejected_keys = keys
                        .rejected
                        .iter()
                        .map(|r| format!("{}: {}", r.kid.as_deref().unwrap_or("(no kid)"), r.error))
                        .collect();
                    let now = SystemTime::now();
                    status.last_success = Some(now);
                    status.last_error = None;
                    status.fetches_ok += 1;
                    self.fresh_at.store(unix_secs(now), Ordering::Relaxed);
                }
                Err(error) => {
                    status.last_error = Some(error.to_string());
                    status.fetches_failed += 1;
                }
            }
            match result {
                Ok((keys, max_age)) => {
                    for rejected in &keys.rejected {
                        tracing::warn!(source = %self.id, kid = rejected.kid.as_deref().unwrap_or(""),
                            error = %rejected.error, "skipped a key of the key set");
                    }
                    // An unchanged document keeps the current set, and with it the
                    // verified-token cache entries made with it.
                    let unchanged = self
                        .keys
                        .load()
                        .as_ref()
                        .is_some_and(|current| current.same_document(&keys));
                    if !unchanged {
                        self.keys.store(Some(Arc::new(keys)));
                    }
                    let interval = max_age.unwrap_or(self.settings.default_interval);
                    Ok(interval
                        .max(self.settings.min_interval)
                        .min(self.settings.max_interval))
                }
                Err(error) => {
                    let have_keys = self.keys.load().is_some();
                    let now = SystemTime::now();
                    let age = have_keys.then(|| self.age(now).as_secs());
                    let stale = self.stale_for(now).is_some();
                    tracing::warn!(source = %self.id, %error, keeping_last_good_keys = have_keys && !stale,
                        keys_age_seconds = age, max_staleness_seconds = self.settings.max_staleness.as_secs(),
                        "key set refresh failed");
                    Err(error)
                }
            }
        };
        if !self.attempted.swap(true, Ordering::AcqRel) {
            self.attempted_notify.notify_waiters();
        }
        next
    }

    async fn fetch_keys(
        &self,
        fetcher: &Fetcher,
    ) -> Result<(KeySet, Option<Duration>), SourceError> {
        let (jwks_url, reach) = match &self.origin {
            Origin::Fixed => unreachable_fixed(),
            Origin::JwksUri { url, reach, .. } => (url.clone(), *reach),
            Origin::Discovery {
                url, issuer, reach, ..
            } => (
                {
                    let (jwks, endpoints) = discover(fetcher, url, issuer, *reach).await?;
                    self.endpoints.store(Some(Arc::new(endpoints)));
                    jwks
                },
                *reach,
            ),
        };
        let fetched =
            fetcher
                .get(&jwks_url, reach)
                .await
                .map_err(|error| SourceError::JwksFetch {
                    url: jwks_url.to_string(),
                    error,
                })?;
        let keys =
            KeySet::from_jwks_json(&fetched.body).map_err(|error| SourceError::JwksInvalid {
                url: jwks_url.to_string(),
                error,
            })?;
        Ok((keys, fetched.max_age))
    }

    /// Called when a token names a `kid` that `seen` (the key set the caller looked in, `None`
    /// if none was loaded) lacks. Coalesced: concurrent callers wait for one fetch, and a caller
    /// whose `seen` set has been replaced meanwhile just looks again. Rate-limited per source.
    pub async fn refresh_on_miss(&self, seen: Option<&Arc<KeySet>>) -> Refetch {
        if self.fetcher.is_none() {
            return Refetch::Fixed;
        }
        let replaced = || match (self.keys.load().as_ref(), seen) {
            (Some(now), Some(seen)) => !Arc::ptr_eq(now, seen),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if replaced() {
            return Refetch::Refreshed;
        }
        let _guard = self.refetch_lock.lock().await;
        if replaced() {
            // Someone fetched while we waited: use their result.
            return Refetch::Refreshed;
        }
        {
            let mut mutable = self.lock();
            let now = Instant::now();
            if mutable
                .last_miss_refetch
                .is_some_and(|last| now.duration_since(last) < self.settings.miss_refetch_interval)
            {
                mutable.status.miss_rate_limited += 1;
                return Refetch::RateLimited;
            }
            mutable.last_miss_refetch = Some(now);
            mutable.status.miss_refetches += 1;
        }
        match self.fetch().await {
            Ok(_) => Refetch::Refreshed,
            Err(_) => Refetch::Failed,
        }
    }
}

fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unreachable_fixed() -> ! {
    // Fixed sources have no fetcher, so fetch() returns before reaching fetch_keys().
    panic!("invariant: fixed key sources are never fetched")
}

async fn discover(
    fetcher: &Fetcher,
    url: &Url,
    issuer: &str,
    reach: Reach,
) -> Result<(Url, Endpoints), SourceError> {
    let fetched = fetcher
        .get(url, reach)
        .await
        .map_err(|error| SourceError::DiscoveryFetch {
            url: url.to_string(),
            error,
        })?;
    let doc: DiscoveryDocument =
        serde_json::from_slice(&fetched.body).map_err(|e| SourceError::DiscoveryInvalid {
            url: url.to_string(),
            detail: format!("not a discovery document: {e}"),
        })?;
    let found = doc.issuer.unwrap_or_default();
    if found != issuer {
        return Err(SourceError::DiscoveryIssuerMismatch {
            url: url.to_string(),
            expected: issuer.to_string(),
            found,
        });
    }
    let jwks_uri = doc.jwks_uri.ok_or_else(|| SourceError::DiscoveryInvalid {
        url: url.to_string(),
        detail: "no jwks_uri".into(),
    })?;
    let jwks = Url::parse(&jwks_uri).map_err(|e| SourceError::DiscoveryInvalid {
        url: url.to_string(),
        detail: format!("jwks_uri {jwks_uri:?} is not a URL: {e}"),
    })?;
    let endpoints = Endpoints {
        introspection: doc
            .introspection_endpoint
            .as_deref()
            .and_then(|u| Url::parse(u).ok()),
        userinfo: doc
            .userinfo_endpoint
            .as_deref()
            .and_then(|u| Url::parse(u).ok()),
    };
    Ok((jwks, endpoints))
}

/// Starts the background refresh of a remote source. The task holds only a `Weak`, so it
/// stops by itself once no policy uses the source any more.
pub fn spawn_refresh(source: &Arc<KeySource>) {
    if source.fetcher.is_none() {
        return;
    }
    let weak: Weak<KeySource> = Arc::downgrade(source);
    tokio::spawn(async move {
        let mut retry = Duration::from_millis(500);
        loop {
            let Some(source) = weak.upgrade() else { return };
            let max_retry = source.settings.max_retry_delay;
            let delay = match source.fetch().await {
                Ok(next) => {
                    retry = Duration::from_millis(500);
                    next
                }
                Err(_) => {
                    let delay = retry;
                    retry = (retry * 2).min(max_retry);
                    delay
                }
            };
            drop(source);
            tokio::time::sleep(delay).await;
        }
    });
}

//! The verified-token cache: what the signature and claim checks concluded about a JWT, so a
//! token seen again skips the signature (and decryption) work.
//!
//! An entry is keyed by the SHA-256 digest of the token and the compiled policy instance that
//! judged it, so it is never shared between policies, and a recompiled policy (new spec, new
//! Secret, new snapshot of it) starts empty. It holds the claims, the issuer, the headers the
//! claims fill, the version of the issuer's key set that verified the token, and the time
//! window in which the claim checks pass (from `max(nbf, iat) - clockSkew` until
//! `exp + clockSkew`, by the comparisons the checks themselves make). A hit is used
//! only when all of these still hold at the time of the request, so a hit decides exactly what
//! a full verification would. Everything else about the decision (the rule for the path and
//! method, where the token came from) is judged on every request.
//!
//! Denials are not cached: a client controls how many distinct bad tokens it sends, so caching
//! them would let it evict good entries, and a denial never costs more than an allow.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quick_cache::Weighter;

use crate::policy::Issuer;
use crate::validate::TimeWindow;

/// Bounds of the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheLimits {
    /// Most entries (0 disables the cache).
    pub max_entries: usize,
    /// Most bytes held by entries (estimated: claims, headers and bookkeeping).
    pub max_bytes: u64,
    /// Longest an entry is used before the token is verified again, even if it has not expired.
    pub max_age: Duration,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_entries: 100_000,
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(600),
        }
    }
}

/// The headers a token's claims fill (`forward.claimsToHeaders`, `forward.payloadHeader`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimHeaders {
    pub set: Vec<(String, String)>,
    /// Forwarded headers the claims cannot fill: removed, so a client cannot supply them.
    pub remove: Vec<String>,
}

impl ClaimHeaders {
    fn bytes(&self) -> usize {
        self.set
            .iter()
            .map(|(k, v)| k.len() + v.len() + 48)
            .sum::<usize>()
            + self.remove.iter().map(|k| k.len() + 24).sum::<usize>()
    }
}

/// The issuer that verified a cached token.
#[derive(Clone, Debug)]
pub enum CachedIssuer {
    /// Index of the issuer in the policy's `issuers`.
    Listed(usize),
    /// A tenant an issuer template's condition admitted: its issuer itself, which the entry
    /// keeps (the entry belongs to the policy instance whose condition admitted it).
    Admitted(Arc<Issuer>),
}

/// What a verified token concluded.
#[derive(Debug)]
pub struct Entry {
    /// The claims as compact JSON: a parsed map would take several times the memory.
    pub claims: Arc<str>,
    /// The claims the policy's CEL expressions read, parsed (none when they read none).
    pub read: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    pub issuer: CachedIssuer,
    pub headers: Arc<ClaimHeaders>,
    keys_version: u64,
    /// When the claims' time checks pass.
    window: TimeWindow,
    /// Seconds since the epoch after which the entry is not used (`max_age`).
    stale_at: f64,
    bytes: u64,
}

/// The cache key: a policy instance and the token's digest.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Key {
    policy: u64,
    digest: [u8; 32],
}

impl Key {
    pub fn new(policy: u64, digest: [u8; 32]) -> Self {
        Key { policy, digest }
    }
}

/// Weighs entries so that both bounds hold: every entry weighs at least
/// `max_bytes / max_entries`, so the total weight (at most `max_bytes`) also bounds the count.
#[derive(Clone)]
struct EntryWeight {
    floor: u64,
}

impl Weighter<Key, Arc<Entry>> for EntryWeight {
    fn weight(&self, _key: &Key, entry: &Arc<Entry>) -> u64 {
        entry.bytes.max(self.floor)
    }
}

/// Counters, read by the metrics at scrape time.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Entries found but not used: expired, past `max_age`, or verified with keys since replaced.
    pub stale: u64,
    pub inserts: u64,
    pub entries: u64,
    /// Estimated bytes held (each entry weighs at least `max_bytes / max_entries`).
    pub weight: u64,
}

/// The process-wide cache, shared by every snapshot (entries are per policy instance).
pub struct TokenCache {
    cache: quick_cache::sync::Cache<Key, Arc<Entry>, EntryWeight>,
    limits: CacheLimits,
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    inserts: AtomicU64,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("limits", &self.limits)
            .field("entries", &self.cache.len())
            .finish()
    }
}

/// Fixed cost of an entry besides its claims and headers: key, `Arc`s, bookkeeping, the
/// cache's own slot.
const ENTRY_OVERHEAD: u64 = 256;

/// About what a parsed map of claims takes in memory: its text and, per value, the map entry
/// or list slot and allocation that hold it.
fn parsed_bytes(claims: &serde_json::Map<String, serde_json::Value>) -> u64 {
    fn value(v: &serde_json::Value) -> u64 {
        48 + match v {
            serde_json::Value::String(s) => s.len() as u64,
            serde_json::Value::Array(items) => items.iter().map(value).sum(),
            serde_json::Value::Object(members) => {
                members.iter().map(|(k, v)| k.len() as u64 + value(v)).sum()
            }
            _ => 0,
        }
    }
    claims.iter().map(|(k, v)| k.len() as u64 + value(v)).sum()
}

impl TokenCache {
    /// A cache with these bounds; `None` when `max_entries` is 0 (caching off).
    pub fn new(limits: CacheLimits) -> Option<Arc<Self>> {
        if limits.max_entries == 0 || limits.max_bytes == 0 {
            return None;
        }
        let floor = limits
            .max_bytes
            .div_ceil(limits.max_entries as u64)
            .max(ENTRY_OVERHEAD);
        Some(Arc::new(TokenCache {
            cache: quick_cache::sync::Cache::with_weighter(
                limits.max_entries,
                limits.max_bytes,
                EntryWeight { floor },
            ),
            limits,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            inserts: AtomicU64::new(0),
        }))
    }

    pub fn limits(&self) -> CacheLimits {
        self.limits
    }

    /// The entry for `key` if it still decides as a verification would: `now` (seconds since
    /// the epoch) inside its window and before `max_age`, and its issuer's current key set
    /// (`current_keys(issuer)`) the one that verified it. An entry that no longer holds is
    /// removed.
    pub fn get(
        &self,
        key: &Key,
        now: f64,
        current_keys: impl FnOnce(&CachedIssuer) -> Option<u64>,
    ) -> Option<Arc<Entry>> {
        let Some(entry) = self.cache.get(key) else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let usable = entry.window.holds(now)
            && now < entry.stale_at
            && current_keys(&entry.issuer) == Some(entry.keys_version);
        if usable {
            self.hits.fetch_add(1, Ordering::Relaxed);
            Some(entry)
        } else {
            self.stale.fetch_add(1, Ordering::Relaxed);
            self.cache.remove(key);
            None
        }
    }

    /// Remembers a verified token. `claims` is its claims as compact JSON; `window` when its
    /// claim checks pass; `now` in seconds since the epoch.
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &self,
        key: Key,
        claims: Arc<str>,
        read: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
        issuer: CachedIssuer,
        keys_version: u64,
        headers: Arc<ClaimHeaders>,
        window: TimeWindow,
        now: f64,
    ) {
        if !window.holds(now) {
            return;
        }
        let bytes = ENTRY_OVERHEAD
            + claims.len() as u64
            + read.as_deref().map_or(0, parsed_bytes)
            + headers.bytes() as u64;
        let entry = Entry {
            claims,
            read,
            issuer,
            headers,
            keys_version,
            window,
            stale_at: now + self.limits.max_age.as_secs_f64(),
            bytes,
        };
        self.inserts.fetch_add(1, Ordering::Relaxed);
        self.cache.insert(key, Arc::new(entry));
    }

    /// Drops the entries of policy instances that are no longer served.
    pub fn retain_policies(&self, live: impl Fn(u64) -> bool) {
        self.cache.retain(|key, _| live(key.policy));
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            inserts: self.inserts.load(Ordering::Relaxed),
            entries: self.cache.len() as u64,
            weight: self.cache.weight(),
        }
    }
}

#[cfg(test)]
mod tests;

use serde_json::json;

use super::*;
use crate::fixtures::*;
use crate::jose::Claims;

fn limits(max_entries: usize, max_bytes: u64) -> CacheLimits {
    CacheLimits {
        max_entries,
        max_bytes,
        max_age: Duration::from_secs(600),
    }
}

fn claims(exp: f64) -> Arc<Claims> {
    let value = json!({"iss": ISSUER, "sub": "user-1", "aud": AUDIENCE, "exp": exp, "iat": 1000});
    Arc::new(serde_json::from_value(value).expect("claims"))
}

fn window(claims: &Claims, skew: &str) -> TimeWindow {
    let policy = try_compile("w", &spec_with(&format!("clockSkew: {skew}"))).expect("policy");
    TimeWindow::of(claims, &policy.issuers[0], &policy).expect("window")
}

fn put(cache: &TokenCache, policy: u64, n: u8, claims: Arc<Claims>, now: f64) {
    let w = window(&claims, "0s");
    cache.insert(
        Key::new(policy, [n; 32]),
        serde_json::to_string(&*claims).expect("json").into(),
        None,
        CachedIssuer::Listed(0),
        7,
        Arc::new(ClaimHeaders::default()),
        w,
        now,
    );
}

#[test]
fn zero_entries_or_bytes_turn_the_cache_off() {
    assert!(TokenCache::new(limits(0, 1 << 20)).is_none());
    assert!(TokenCache::new(limits(10, 0)).is_none());
    assert!(TokenCache::new(CacheLimits::default()).is_some());
}

#[test]
fn a_hit_needs_the_same_keys_and_a_time_inside_the_window() {
    let cache = TokenCache::new(limits(100, 1 << 20)).expect("cache");
    put(&cache, 1, 1, claims(2000.0), 1500.0);
    let key = Key::new(1, [1; 32]);
    assert!(cache.get(&key, 1500.0, |_| Some(7)).is_some());
    assert!(cache.get(&key, 1999.5, |_| Some(7)).is_some());
    // Another policy instance never sees it.
    assert!(
        cache
            .get(&Key::new(2, [1; 32]), 1500.0, |_| Some(7))
            .is_none()
    );
    // Expired (exp is exclusive): found, not used, and removed.
    assert!(cache.get(&key, 2000.0, |_| Some(7)).is_none());
    assert!(cache.get(&key, 1500.0, |_| Some(7)).is_none());
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.stale, stats.misses), (2, 1, 2));

    // Keys replaced since: not used, removed.
    put(&cache, 1, 1, claims(2000.0), 1500.0);
    assert!(cache.get(&key, 1500.0, |_| Some(8)).is_none());
    assert!(cache.get(&key, 1500.0, |_| Some(7)).is_none());
    // The issuer lost its keys altogether: not used either.
    put(&cache, 1, 1, claims(2000.0), 1500.0);
    assert!(cache.get(&key, 1500.0, |_| None).is_none());
    // Before iat (a clock that went back): not used.
    put(&cache, 1, 1, claims(2000.0), 1500.0);
    assert!(cache.get(&key, 999.0, |_| Some(7)).is_none());
}

#[test]
fn entries_are_used_no_longer_than_max_age() {
    let cache = TokenCache::new(CacheLimits {
        max_age: Duration::from_secs(60),
        ..limits(100, 1 << 20)
    })
    .expect("cache");
    put(&cache, 1, 1, claims(1_000_000.0), 1500.0);
    let key = Key::new(1, [1; 32]);
    assert!(cache.get(&key, 1559.0, |_| Some(7)).is_some());
    assert!(cache.get(&key, 1560.0, |_| Some(7)).is_none());
}

#[test]
fn a_token_outside_its_window_is_not_inserted() {
    let cache = TokenCache::new(limits(100, 1 << 20)).expect("cache");
    put(&cache, 1, 1, claims(1400.0), 1500.0);
    assert_eq!(cache.stats().entries, 0);
}

#[test]
fn both_bounds_hold() {
    // 50 entries at most: far more are inserted.
    let cache = TokenCache::new(limits(50, 1 << 20)).expect("cache");
    for n in 0..=255u8 {
        put(&cache, 1, n, claims(2000.0), 1500.0);
    }
    let stats = cache.stats();
    assert!(stats.entries <= 50, "{stats:?}");
    assert!(
        stats.entries >= 25,
        "eviction keeps the cache in use: {stats:?}"
    );
    assert!(stats.weight <= 1 << 20, "{stats:?}");

    // 64 KiB at most, with entries of about 3 KiB each: the byte bound is the tighter one.
    let cache = TokenCache::new(limits(10_000, 64 << 10)).expect("cache");
    let big: Arc<str> = "x".repeat(2800).into();
    for n in 0..=255u8 {
        let w = window(&claims(2000.0), "0s");
        cache.insert(
            Key::new(1, [n; 32]),
            big.clone(),
            None,
            CachedIssuer::Listed(0),
            7,
            Arc::new(ClaimHeaders::default()),
            w,
            1500.0,
        );
    }
    let stats = cache.stats();
    assert!(stats.weight <= 64 << 10, "{stats:?}");
    assert!(stats.entries <= (64 << 10) / 3000 + 1, "{stats:?}");
}

#[test]
fn entries_of_policies_no_longer_served_are_dropped() {
    let cache = TokenCache::new(limits(100, 1 << 20)).expect("cache");
    put(&cache, 1, 1, claims(2000.0), 1500.0);
    put(&cache, 2, 1, claims(2000.0), 1500.0);
    cache.retain_policies(|instance| instance == 2);
    assert!(
        cache
            .get(&Key::new(1, [1; 32]), 1500.0, |_| Some(7))
            .is_none()
    );
    assert!(
        cache
            .get(&Key::new(2, [1; 32]), 1500.0, |_| Some(7))
            .is_some()
    );
    assert_eq!(cache.stats().entries, 1);
}

#[test]
fn the_window_uses_the_checks_own_comparisons() {
    let c = claims(2000.0);
    let w = window(&c, "30s");
    // iat 1000 minus 30 s of skew, up to exp 2000 plus 30 s.
    assert!(!w.holds(969.9));
    assert!(w.holds(970.0));
    assert!(w.holds(2029.9));
    assert!(!w.holds(2030.0));
    // A token without exp, when the policy does not require one, never expires by time.
    let no_exp: Claims = serde_json::from_value(json!({"nbf": 1500, "iat": 1000})).expect("claims");
    let policy = try_compile(
        "n",
        &spec_with("{requireExpirationTime: false, clockSkew: 0s}"),
    )
    .expect("policy");
    let w = TimeWindow::of(&no_exp, &policy.issuers[0], &policy).expect("window");
    assert!(!w.holds(1499.0));
    assert!(w.holds(1e12));
    // A string exp never passed the checks, so it has no window.
    let bad: Claims = serde_json::from_value(json!({"exp": "2000"})).expect("claims");
    assert!(TimeWindow::of(&bad, &policy.issuers[0], &policy).is_none());
}

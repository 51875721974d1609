//! The verified-token cache never changes a decision: the same requests, judged with and
//! without it, at times around every token's window, across key rotations and recompiles.

use std::sync::LazyLock;
use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;

use super::*;
use crate::jwks::KeySet;
use crate::local_issuer::SigningKey;
use crate::policy::SharedSnapshot;
use crate::verified::{CacheLimits, TokenCache};

const POLICY: &str = r#"{match: {hosts: [api.example.com], paths: [/orders]}, clockSkew: 10s,
    requiredClaims: [{name: scp, separator: " ", values: [orders.read]}],
    rules: [{paths: [/orders/admin], requiredClaims: [{name: roles, values: [admin]}]},
            {paths: [/orders/healthz], allowAnonymous: true}],
    forward: {claimsToHeaders: [{claim: sub, header: x-user-id}, {claim: email, header: x-email}],
              payloadHeader: x-jwt-payload}}"#;

const PATHS: [&str; 3] = ["/orders/1", "/orders/admin", "/orders/healthz"];

/// The time every token's claims are relative to.
static BASE: LazyLock<i64> = LazyLock::new(now_secs);

fn at(offset_ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis((*BASE * 1000 + offset_ms) as u64)
}

/// A token of `key` with `good_claims` changed; times are seconds from `BASE`.
fn mint_at(key: &SigningKey, changes: serde_json::Value) -> String {
    let b = *BASE;
    let mut claims = claims_with(changes);
    for name in ["iat", "exp", "nbf"] {
        match claims.get(name) {
            Some(v) if v.is_i64() && v.as_i64().is_some_and(|o| o.abs() < 1_000_000) => {
                claims[name] = json!(b + v.as_i64().unwrap_or_default());
            }
            Some(v) if v.is_f64() => {
                claims[name] = json!(b as f64 + v.as_f64().unwrap_or_default());
            }
            _ => {}
        }
    }
    key.mint(&claims).expect("mint")
}

/// Tokens whose windows, signatures and claims differ; times are seconds from `BASE`.
static TOKENS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let with = mint_at;
    vec![
        with(&RSA, json!({"iat": -5, "exp": 60})),
        with(&EC, json!({"iat": -5, "exp": 30, "roles": ["admin"]})),
        with(&RSA, json!({"iat": -5, "nbf": 20, "exp": 90})),
        with(&RSA, json!({"iat": 40, "exp": 100})),
        with(&ED, json!({"iat": -5, "exp": null})),
        with(&ROGUE, json!({"iat": -5, "exp": 60})),
        with(&RSA, json!({"iat": -5, "exp": 60, "aud": "api://other"})),
        with(&RSA, json!({"iat": -100, "exp": -50})),
        with(
            &RSA_PS,
            json!({"iat": -5, "exp": 10, "email": "a@example.com"}),
        ),
        with(&EC, json!({"iat": -5, "exp": 60, "scp": "orders.write"})),
        with(&ED, json!({"iat": -5, "exp": 45.5, "nbf": -0.5})),
    ]
});

/// Key sets the issuer may publish: all keys, RSA rotated out, PS and ED gone.
fn key_set(variant: usize) -> KeySet {
    let keys: Vec<&SigningKey> = match variant {
        0 => vec![&RSA, &RSA_PS, &EC, &ED],
        1 => vec![&EC, &ED],
        _ => vec![&RSA, &EC],
    };
    KeySet::from_jwks_value(&crate::local_issuer::jwks(&keys)).expect("key set")
}

#[derive(Clone, Debug)]
enum Step {
    Check {
        token: usize,
        offset_ms: i64,
        path: usize,
    },
    /// The issuer publishes another key set.
    Rotate(usize),
    /// The policy is compiled again (a spec or Secret change).
    Recompile,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    steps_for(TOKENS.len())
}

fn steps_for(tokens: usize) -> impl Strategy<Value = Vec<Step>> {
    let check = (0..tokens, -130_000i64..130_000, 0..3usize).prop_map(|(token, ms, path)| {
        // Whole seconds half of the time, so the window's edges are hit exactly.
        let offset_ms = if ms % 2 == 0 { ms / 1000 * 1000 } else { ms };
        Step::Check {
            token,
            offset_ms,
            path,
        }
    });
    prop::collection::vec(
        prop_oneof![
            12 => check,
            1 => (0..3usize).prop_map(Step::Rotate),
            1 => Just(Step::Recompile),
        ],
        1..80,
    )
}

fn snapshots(policy: &Arc<Policy>, cache: &Arc<TokenCache>) -> (Snapshot, Snapshot) {
    let plain = snapshot(std::slice::from_ref(policy), DefaultAction::Deny);
    let mut cached = snapshot(std::slice::from_ref(policy), DefaultAction::Deny);
    cached.token_cache = Some(cache.clone());
    (plain, cached)
}

/// The engine's view of a test request, with another host if given.
fn request<'a>(r: &'a Req, host: Option<&'a str>) -> Request<'a> {
    Request {
        host: host.unwrap_or(r.host),
        path: &r.path,
        method: r.method,
        headers: Headers::Map(&r.headers),
        policy: None,
        route: None,
        source: Default::default(),
    }
}

async fn judge_at(s: &Snapshot, token: &str, path: &str, now: SystemTime) -> Decision {
    let r = req(path)
        .bearer(token)
        .header("x-email", "spoofed@example.com");
    check(s, &request(&r, None), now).await
}

async fn run(steps: Vec<Step>, cache: &Arc<TokenCache>) -> Result<(), TestCaseError> {
    run_with(POLICY, &TOKENS, steps, cache).await
}

async fn run_with(
    spec: &str,
    tokens: &[String],
    steps: Vec<Step>,
    cache: &Arc<TokenCache>,
) -> Result<(), TestCaseError> {
    let mut policy = mk_policy("orders", spec);
    let (mut plain, mut cached) = snapshots(&policy, cache);
    for step in steps {
        match step {
            Step::Check {
                token,
                offset_ms,
                path,
            } => {
                let now = at(offset_ms);
                let token = &tokens[token];
                // Twice through the cache: the second is a hit whenever the first was cached.
                let first = judge_at(&cached, token, PATHS[path], now).await;
                let second = judge_at(&cached, token, PATHS[path], now).await;
                let expected = judge_at(&plain, token, PATHS[path], now).await;
                prop_assert_eq!(format!("{first:?}"), format!("{expected:?}"));
                prop_assert_eq!(format!("{second:?}"), format!("{expected:?}"));
            }
            Step::Rotate(variant) => {
                for issuer in &policy.issuers {
                    issuer.keys.install(key_set(variant));
                }
            }
            Step::Recompile => {
                policy = mk_policy("orders", spec);
                (plain, cached) = snapshots(&policy, cache);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_cache_never_changes_a_decision(steps in steps()) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let cache = TokenCache::new(CacheLimits::default()).expect("cache");
        runtime.block_on(run(steps, &cache))?;
    }

    /// With `maxTokenLifetime`, a token without `iat` passes only from `exp - max`, and one
    /// without `exp` only until `iat + max`: the cache keeps neither a moment longer.
    #[test]
    fn the_cache_never_changes_a_decision_under_a_lifetime_limit(steps in steps_for(LIFETIME_TOKENS.len())) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let cache = TokenCache::new(CacheLimits::default()).expect("cache");
        runtime.block_on(run_with(&LIFETIME_POLICY, &LIFETIME_TOKENS, steps, &cache))?;
    }

    /// A policy whose cache entries keep only some claims decides as one that verifies.
    #[test]
    fn the_cache_never_changes_a_decision_when_it_keeps_some_claims(steps in steps()) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let cache = TokenCache::new(CacheLimits::default()).expect("cache");
        runtime.block_on(run_with(PRUNED_POLICY, &TOKENS, steps, &cache))?;
    }
}

#[tokio::test]
async fn entries_keep_only_the_claims_a_hit_reads() {
    let cache = cache();
    let policy = mk_policy("orders", PRUNED_POLICY);
    assert_eq!(
        policy.cached_claims.as_deref(),
        Some(&["cnf", "email", "roles", "scp", "sub"].map(String::from)[..])
    );
    let (_, s) = snapshots(&policy, &cache);
    let token = mint_at(
        &EC,
        json!({"iat": -5, "exp": 60, "roles": ["admin"], "email": "a@example.com"}),
    );
    let first = judge_at(&s, &token, "/orders/admin", at(0)).await;
    let digest = crate::jose::sha256(token.as_bytes());
    let entry = cache
        .get(
            &crate::verified::Key::new(policy.instance, digest),
            *BASE as f64,
            |_| policy.issuers[0].keys.usable_version(at(0)),
        )
        .expect("cached");
    let kept: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&entry.claims).expect("json");
    let mut names: Vec<&str> = kept.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["email", "roles", "scp", "sub"]);
    // The hit decides and answers as the miss did: metadata holds the listed claims only.
    let second = judge_at(&s, &token, "/orders/admin", at(0)).await;
    assert_eq!(format!("{first:?}"), format!("{second:?}"));
    let metadata = allowed(&second)
        .claims
        .as_ref()
        .expect("metadata claims")
        .map();
    let mut names: Vec<&str> = metadata.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["scp", "sub"]);
    // An expression reading every claim, or metadata of every claim: entries keep them all.
    for spec in [
        r#"{forward: {metadataClaims: []}, when: [{expression: "size(claims) > 0"}]}"#,
        r#"{forward: {claimsToHeaders: [{claim: sub, header: x-user-id}]}}"#,
    ] {
        assert_eq!(mk_policy("all", spec).cached_claims, None, "{spec}");
    }
    assert_eq!(
        mk_policy("none", "{forward: {metadataClaims: []}}")
            .cached_claims
            .as_deref(),
        Some(&["cnf".to_string()][..])
    );
}

/// [`POLICY`] returning two claims as metadata, with a condition on a third: the cache keeps
/// only the claims a hit reads.
const PRUNED_POLICY: &str = r#"{match: {hosts: [api.example.com], paths: [/orders]}, clockSkew: 10s,
    requiredClaims: [{name: scp, separator: " ", values: [orders.read]}],
    rules: [{paths: [/orders/admin], requiredClaims: [{name: roles, values: [admin]}],
             when: [{expression: "!has(claims.email) || claims.email.endsWith('@example.com')"}]},
            {paths: [/orders/healthz], allowAnonymous: true}],
    forward: {claimsToHeaders: [{claim: sub, header: x-user-id}, {claim: email, header: x-email}],
              payloadHeader: x-jwt-payload, metadataClaims: [sub, scp]}}"#;

/// [`POLICY`] with `maxTokenLifetime: 70s` and tokens without `exp` accepted.
static LIFETIME_POLICY: LazyLock<String> = LazyLock::new(|| {
    let issuers = json!([{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": trusted_jwks(), "maxTokenLifetime": "70s"}]);
    format!(
        "{}, requireExpirationTime: false, issuers: {issuers}}}",
        POLICY
            .trim_end()
            .strip_suffix('}')
            .expect("a YAML flow mapping")
    )
});

/// [`TOKENS`] and tokens whose lifetime decides: without `iat`, without `exp`, without both,
/// and one whose `exp` is 2^63.
static LIFETIME_TOKENS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let mut tokens = TOKENS.clone();
    tokens.extend([
        mint_at(&RSA, json!({"iat": null, "exp": 100})),
        mint_at(&EC, json!({"iat": null, "exp": 50.5})),
        mint_at(&RSA, json!({"iat": -20, "exp": null})),
        mint_at(&ED, json!({"iat": 30.5, "exp": null})),
        mint_at(&RSA, json!({"iat": null, "exp": null})),
        mint_at(
            &RSA,
            json!({"iat": -5, "exp": 9_223_372_036_854_775_808u64}),
        ),
    ]);
    tokens
});

#[tokio::test]
async fn lifetime_edges_hold_with_and_without_the_cache() {
    let cache = cache();
    let policy = mk_policy("orders", &LIFETIME_POLICY);
    let (plain, cached) = snapshots(&policy, &cache);
    let n = TOKENS.len();
    // (token, seconds from BASE, reason)
    let cases = [
        // exp 100 without iat: exp - now within 70s + 10s skew from 20s on.
        (n, 19_999, Reason::TokenLifetimeExceeded),
        (n, 20_000, Reason::Valid),
        (n, 99_999, Reason::Valid),
        (n, 110_000, Reason::TokenExpired),
        // iat -20 without exp: accepted until iat + 70s + 10s skew.
        (n + 2, 0, Reason::Valid),
        (n + 2, 59_999, Reason::Valid),
        (n + 2, 60_000, Reason::TokenLifetimeExceeded),
        (n + 4, 0, Reason::TokenLifetimeExceeded),
        (n + 5, 0, Reason::TokenLifetimeExceeded),
        // exp - iat = 65s: within the limit.
        (0, 0, Reason::Valid),
    ];
    for (token, ms, want) in cases {
        for s in [&cached, &cached, &plain] {
            let decision = judge_at(s, &LIFETIME_TOKENS[token], "/orders/1", at(ms)).await;
            assert_eq!(
                decision.reason(),
                want,
                "token {token} at {ms} ms: {decision:?}"
            );
        }
    }
    assert!(cache.stats().hits > 0, "{:?}", cache.stats());
}

fn cache() -> Arc<TokenCache> {
    TokenCache::new(CacheLimits::default()).expect("cache")
}

#[tokio::test]
async fn a_token_seen_again_is_answered_from_the_cache() {
    let cache = cache();
    let policy = mk_policy("orders", POLICY);
    let (_, s) = snapshots(&policy, &cache);
    let now = at(0);
    let first = judge_at(&s, &TOKENS[0], "/orders/1", now).await;
    assert_eq!(cache.stats().inserts, 1);
    let second = judge_at(&s, &TOKENS[0], "/orders/1", now).await;
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (1, 1, 1));
    assert_eq!(format!("{first:?}"), format!("{second:?}"));
    // The rule is judged per request, from the cached claims.
    let admin = judge_at(&s, &TOKENS[0], "/orders/admin", now).await;
    assert_eq!(denied(&admin).reason, Reason::InsufficientScope);
    assert_eq!(cache.stats().hits, 2);

    // Denials are not cached.
    for token in [5, 6, 7, 9] {
        judge_at(&s, &TOKENS[token], "/orders/1", now).await;
    }
    assert_eq!(cache.stats().inserts, 1);
}

#[tokio::test]
async fn a_traced_request_is_verified_in_full() {
    let cache = cache();
    let policy = mk_policy("orders", POLICY);
    let (_, s) = snapshots(&policy, &cache);
    judge_at(&s, &TOKENS[0], "/orders/1", at(0)).await;
    let r = req("/orders/1").bearer(&TOKENS[0]);
    let decision = check_traced(&s, &request(&r, None), at(0), Trace::on()).await;
    let trace = decision.trace().expect("traced");
    assert!(
        trace.steps.iter().any(|step| step.check == "signature"),
        "{trace:?}"
    );
    assert_eq!(cache.stats().hits, 0);
}

#[tokio::test]
async fn rotated_keys_and_recompiled_policies_start_afresh() {
    let cache = cache();
    let policy = mk_policy("orders", POLICY);
    let (_, s) = snapshots(&policy, &cache);
    judge_at(&s, &TOKENS[0], "/orders/1", at(0)).await;
    // The issuer drops the RSA key: the cached verification is not used.
    for issuer in &policy.issuers {
        issuer.keys.install(key_set(1));
    }
    let decision = judge_at(&s, &TOKENS[0], "/orders/1", at(0)).await;
    assert_eq!(denied(&decision).reason, Reason::KeyNotFound);
    assert_eq!(cache.stats().stale, 1);

    // A recompiled policy has entries of its own.
    let again = mk_policy("orders", POLICY);
    let (_, s2) = snapshots(&again, &cache);
    allowed(&judge_at(&s2, &TOKENS[1], "/orders/1", at(0)).await);
    let misses = cache.stats().misses;
    allowed(&judge_at(&s2, &TOKENS[1], "/orders/1", at(0)).await);
    assert_eq!(cache.stats().misses, misses);
    let policy_3 = mk_policy("orders", POLICY);
    let (_, s3) = snapshots(&policy_3, &cache);
    allowed(&judge_at(&s3, &TOKENS[1], "/orders/1", at(0)).await);
    assert_eq!(cache.stats().misses, misses + 1);
}

#[tokio::test]
async fn publishing_without_a_policy_drops_its_entries() {
    let cache = cache();
    let shared = SharedSnapshot::with_cache(DefaultAction::Deny, Some(cache.clone()));
    let orders = mk_policy("orders", POLICY);
    let other = mk_policy(
        "other",
        r#"{match: {hosts: [other.example.com]}, clockSkew: 10s}"#,
    );
    shared.publish(Snapshot::build(vec![orders.clone(), other.clone()], DefaultAction::Deny).0);
    allowed(&judge_at(&shared.load(), &TOKENS[0], "/orders/1", at(0)).await);
    let r = req("/").bearer(&TOKENS[0]);
    let other_host = request(&r, Some("other.example.com"));
    allowed(&check(&shared.load(), &other_host, at(0)).await);
    assert_eq!(cache.stats().entries, 2);
    // "orders" is recompiled: its old entry goes, the other policy's stays.
    let recompiled = mk_policy("orders", POLICY);
    shared.publish(Snapshot::build(vec![recompiled, other], DefaultAction::Deny).0);
    // Off the request path, on the blocking pool.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cache.stats().entries != 1 {
        assert!(std::time::Instant::now() < deadline, "{:?}", cache.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

use serde_json::json;

use super::*;

#[test]
fn thumbprint_matches_rfc_7638_example() {
    // RFC 7638 §3.1.
    let jwk = json!({
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29"
    });
    assert_eq!(
        thumbprint(&jwk).as_deref(),
        Ok("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
    );
    // Members beyond the required ones do not change it; a missing one is an error.
    assert!(thumbprint(&json!({"kty": "EC", "crv": "P-256", "x": "a"})).is_err());
    assert!(thumbprint(&json!({"kty": "oct", "k": "a"})).is_err());
}

#[test]
fn replay_cache_refuses_a_second_use_and_forgets_after_the_window() {
    let cache = ReplayCache::new(100);
    assert_eq!(cache.admit("jkt", "one", 1000, 1061), Ok(()));
    assert_eq!(
        cache.admit("jkt", "one", 1030, 1091),
        Err(DpopError::Replayed)
    );
    // The same jti with another key is another proof.
    assert_eq!(cache.admit("other", "one", 1030, 1091), Ok(()));
    // Once the window ended, the entry is gone (and the proof itself would be stale).
    assert_eq!(cache.admit("jkt", "one", 1061, 1122), Ok(()));
    assert_eq!(cache.len(), 2);
}

#[test]
fn a_full_replay_cache_refuses_rather_than_forgets() {
    let cache = ReplayCache::new(3);
    for jti in ["a", "b", "c"] {
        assert_eq!(cache.admit("k", jti, 10, 70), Ok(()));
    }
    assert_eq!(cache.admit("k", "d", 20, 80), Err(DpopError::CacheFull(3)));
    // Still refused as a replay, not forgotten.
    assert_eq!(cache.admit("k", "a", 20, 80), Err(DpopError::Replayed));
    // Room again once the oldest windows end.
    assert_eq!(cache.admit("k", "d", 70, 130), Ok(()));
    assert_eq!(cache.len(), 1);
}

#[test]
fn a_recompiled_policy_keeps_its_replay_cache() {
    let first = replay_cache_for("ns/dpop-keep", 100);
    first.admit("k", "j", 10, 70).expect("first use");
    let again = replay_cache_for("ns/dpop-keep", 100);
    assert_eq!(again.admit("k", "j", 11, 71), Err(DpopError::Replayed));
    assert!(Arc::ptr_eq(&first, &again));
    let other = replay_cache_for("ns/dpop-other", 100);
    assert!(!Arc::ptr_eq(&first, &other));
}

#[test]
fn ports_of_hosts() {
    assert_eq!(port_of("api.example.com"), Ok(None));
    assert_eq!(port_of("api.example.com:8443"), Ok(Some(8443)));
    assert_eq!(port_of("[::1]:8080"), Ok(Some(8080)));
    assert_eq!(port_of("[::1]"), Ok(None));
    assert!(port_of("api.example.com:x").is_err());
}

#[test]
fn cnf_jkt_is_read_strictly() {
    let claims = |v: serde_json::Value| v.as_object().cloned().expect("object");
    assert_eq!(bound_key(&claims(json!({"sub": "a"}))), Ok(None));
    assert_eq!(
        bound_key(&claims(json!({"cnf": {"jkt": "abc"}}))),
        Ok(Some("abc".into()))
    );
    assert_eq!(
        bound_key(&claims(json!({"cnf": {"x5t#S256": "abc"}}))),
        Ok(None)
    );
    assert!(bound_key(&claims(json!({"cnf": "abc"}))).is_err());
    assert!(bound_key(&claims(json!({"cnf": {"jkt": 1}}))).is_err());
}

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

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

#[test]
fn nonces_are_accepted_for_their_lifetime_and_no_longer() {
    let nonces = Nonces::new(SECRET, 60).expect("nonces");
    let now = 1_800_000_015;
    let nonce = nonces.issue(now);
    assert_eq!(nonce.len(), 32, "{nonce}");
    // One value for every client during half a lifetime.
    assert_eq!(nonces.issue(now + 14), nonce);
    assert_ne!(nonces.issue(now + 15), nonce);
    let issued = nonces.check(&nonce, now, 0).expect("fresh");
    assert_eq!(issued, 1_800_000_000);
    assert_eq!(nonces.check(&nonce, issued + 59, 0), Ok(issued));
    assert_eq!(
        nonces.check(&nonce, issued + 60, 0),
        Err(NonceError::Expired(0))
    );
    // Issued on a replica whose clock is ahead: within the skew only.
    assert_eq!(nonces.check(&nonce, issued - 5, 5), Ok(issued));
    assert_eq!(
        nonces.check(&nonce, issued - 6, 5),
        Err(NonceError::Future(6))
    );
}

#[test]
fn nonces_of_another_secret_or_altered_are_refused() {
    let nonces = Nonces::new(SECRET, 60).expect("nonces");
    let now = 1_800_000_000;
    let other = Nonces::new(b"another secret of thirty-two b..", 60).expect("other");
    assert_eq!(
        nonces.check(&other.issue(now), now, 0),
        Err(NonceError::Forged)
    );
    // Every byte matters: the time (a later issue time would lengthen its life) and the MAC.
    let good = nonces.issue(now);
    let bytes = B64.decode(&good).expect("b64");
    for i in 0..bytes.len() {
        let mut changed = bytes.clone();
        changed[i] ^= 1;
        assert_eq!(
            nonces.check(&B64.encode(&changed), now, 0),
            Err(NonceError::Forged),
            "byte {i}"
        );
    }
    for hostile in ["", "x", &"A".repeat(32), &format!("{good}A"), &good[..31]] {
        assert_eq!(
            nonces.check(hostile, now, 0),
            Err(NonceError::Forged),
            "{hostile:?}"
        );
    }
    // Non-canonical base64url (padding, the standard alphabet) is not ours either.
    let padded = format!("{}=", &good[..31]);
    assert_eq!(nonces.check(&padded, now, 0), Err(NonceError::Forged));
}

#[test]
fn nonce_secrets_must_be_long_enough() {
    assert!(Nonces::new(&SECRET[..31], 60).is_err());
    assert!(Nonces::new(SECRET, 1).is_err());
    let debug = format!("{:?}", Nonces::new(SECRET, 60).expect("nonces"));
    assert!(!debug.contains("0123"), "{debug}");
}

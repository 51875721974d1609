//! `tollgate serve` over real sockets: a tonic client, a local OpenID provider, policy files
//! edited while requests flow.

use std::time::Duration;

use serde_json::json;
use tollgate::local_issuer::server::IdpServer;
use tollgate::local_issuer::{SigningKey, jwks};
use tollgate::proto::auth::check_response::HttpResponse;

use crate::support::*;

async fn idp(keys: &[&SigningKey]) -> IdpServer {
    IdpServer::start("127.0.0.1:0".parse().expect("addr"), jwks(keys))
        .await
        .expect("idp")
}

fn rsa(kid: &str) -> SigningKey {
    SigningKey::rsa(kid, "RS256", 2048).expect("key")
}

const FORWARD: &str = "  forward:\n    claimsToHeaders: [{claim: sub, header: x-user-id}]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_and_invalid_tokens_over_grpc() {
    let key = rsa("k1");
    let rogue = rsa("k1");
    let idp = idp(&[&key]).await;
    let iss = idp.issuer();
    let dir = tempfile::tempdir().expect("dir");
    write_policy(
        dir.path(),
        "orders.yaml",
        &policy_yaml("orders", &iss, FORWARD),
    );
    let tollgate = Tollgate::start(dir.path(), &[]);
    let url = tollgate.url();

    let good = key.mint(&claims(&iss, json!({}))).expect("mint");
    let response = check(&url, "/orders", Some(&good)).await;
    assert_eq!(outcome(&response), (true, 200, "valid".into()));
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        panic!("ok response")
    };
    let set: Vec<(String, String)> = ok
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    assert_eq!(set, [("x-user-id".to_string(), "user-1".to_string())]);
    let metadata = response.dynamic_metadata.as_ref().expect("metadata");
    assert!(metadata.fields.contains_key("claims"));

    let now = tollgate::local_issuer::now_secs();
    let cases = [
        (
            key.mint(&claims(&iss, json!({"exp": now - 300})))
                .expect("mint"),
            401,
            "token_expired",
        ),
        (
            key.mint(&claims(&iss, json!({"aud": "api://other"})))
                .expect("mint"),
            401,
            "audience_mismatch",
        ),
        (
            rogue.mint(&claims(&iss, json!({}))).expect("mint"),
            401,
            "signature_invalid",
        ),
        (
            key.mint(&claims("https://other.example/", json!({})))
                .expect("mint"),
            401,
            "issuer_not_allowed",
        ),
        ("garbage".to_string(), 401, "token_malformed"),
    ];
    for (token, status, reason) in cases {
        let response = check(&url, "/orders", Some(&token)).await;
        assert_eq!(
            outcome(&response),
            (false, status, reason.to_string()),
            "{reason}"
        );
        let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
            panic!("denied")
        };
        let challenge = denied
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == "www-authenticate")
            .expect("challenge");
        assert!(
            challenge
                .value
                .contains(&format!("error_description=\"{reason}: ")),
            "{}",
            challenge.value
        );
        let body: serde_json::Value = serde_json::from_str(&denied.body).expect("json body");
        assert_eq!(body["error"], "invalid_token");
    }
    let missing = check(&url, "/orders", None).await;
    assert_eq!(outcome(&missing), (false, 401, "token_missing".into()));

    // Every denial was logged with its reason and a token fingerprint, never the token.
    // (Once the log reader has the line: it can arrive after the answer.)
    let fingerprinted = eventually(Duration::from_secs(10), async || {
        tollgate.log_events("denied").iter().any(|d| {
            d["reason"] == "signature_invalid" && d["token"].as_str().is_some_and(|t| t.len() == 12)
        })
    })
    .await;
    assert!(fingerprinted, "{:#?}", tollgate.log_events("denied"));
    let all_logs = tollgate.logs().join("\n");
    assert!(
        !all_logs.contains(&good[..60]),
        "a token appeared in the logs"
    );

    let metrics = tollgate.metrics();
    assert!(metrics.contains(r#"tollgate_decisions_total{transport="grpc",policy="shop/orders",result="deny",reason="token_expired"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"tollgate_decisions_total{transport="grpc",policy="shop/orders",result="allow",reason="valid"} 1"#));
    assert!(metrics.contains("tollgate_jwks_keys{source="));
    assert!(metrics.contains("tollgate_check_duration_seconds_bucket"));

    // grpc.health.v1 reports the ext_authz service as serving.
    let channel = tonic::transport::Channel::from_shared(url.clone())
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "envoy.service.auth.v3.Authorization".into(),
        })
        .await
        .expect("health");
    assert_eq!(
        status.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_is_picked_up_without_restart_with_one_coalesced_fetch() {
    let old = rsa("2026-a");
    let new = SigningKey::ec("2026-b", "ES256").expect("key");
    let idp = idp(&[&old]).await;
    let iss = idp.issuer();
    let dir = tempfile::tempdir().expect("dir");
    write_policy(dir.path(), "p.yaml", &policy_yaml("orders", &iss, ""));
    let tollgate = Tollgate::start(dir.path(), &[]);
    let url = tollgate.url();
    assert!(
        outcome(
            &check(
                &url,
                "/",
                Some(&old.mint(&claims(&iss, json!({}))).expect("mint"))
            )
            .await
        )
        .0
    );
    let fetches_before = idp.jwks_fetches();

    // The IdP rotates: publishes the new key, retires the old one.
    idp.set_jwks(jwks(&[&new]));
    let token = new.mint(&claims(&iss, json!({}))).expect("mint");
    let requests = (0..200).map(|_| {
        let (url, token) = (url.clone(), token.clone());
        tokio::spawn(async move { outcome(&check(&url, "/", Some(&token)).await) })
    });
    for request in futures_util::future::join_all(requests).await {
        assert_eq!(request.expect("task"), (true, 200, "valid".into()));
    }
    assert_eq!(
        idp.jwks_fetches() - fetches_before,
        1,
        "200 concurrent unknown-kid requests cause one fetch"
    );

    // Another unknown kid right after: the refetch is rate-limited, no new fetch.
    let stranger = rsa("2026-c");
    let response = check(
        &url,
        "/",
        Some(&stranger.mint(&claims(&iss, json!({}))).expect("mint")),
    )
    .await;
    assert_eq!(outcome(&response), (false, 401, "key_not_found".into()));
    assert_eq!(idp.jwks_fetches() - fetches_before, 1);
    let metrics = tollgate.metrics();
    assert!(metrics.contains("outcome=\"rate_limited\"} 1"), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tollgate_jwks_key_lookups_total{")
                && l.contains("result=\"hit\"")
                && !l.ends_with(" 0"))
    );
    // The retired key no longer verifies.
    let response = check(
        &url,
        "/",
        Some(&old.mint(&claims(&iss, json!({}))).expect("mint")),
    )
    .await;
    assert!(!outcome(&response).0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_good_keys_serve_until_the_maximum_staleness_then_503_then_recover() {
    let key = rsa("k1");
    let idp = idp(&[&key]).await;
    let addr = idp.addr();
    let iss = idp.issuer();
    // A short refresh interval, so tollgate really tries (and fails) while the IdP is down.
    idp.set_cache_control(Some("max-age=0"));
    let dir = tempfile::tempdir().expect("dir");
    write_policy(dir.path(), "p.yaml", &policy_yaml("orders", &iss, ""));
    let tollgate = Tollgate::start(
        dir.path(),
        &[
            "--jwks-min-refresh",
            "200ms",
            "--jwks-max-retry-delay",
            "200ms",
            "--jwks-max-staleness",
            "4s",
        ],
    );
    let url = tollgate.url();
    let token = key.mint(&claims(&iss, json!({}))).expect("mint");
    assert!(outcome(&check(&url, "/", Some(&token)).await).0);

    idp.stop().await;
    let failed = eventually(Duration::from_secs(10), async || {
        let metrics = tollgate.metrics();
        metric(&metrics, "tollgate_jwks_up{").is_some_and(|v| v == 0.0)
            && metrics.lines().any(|l| {
                l.starts_with("tollgate_jwks_fetches_total{")
                    && l.contains("outcome=\"error\"")
                    && !l.ends_with(" 0")
            })
    })
    .await;
    assert!(
        failed,
        "refreshes failed while the IdP is down:\n{}",
        tollgate.metrics()
    );
    // Within the staleness bound, the last good keys judge.
    assert_eq!(
        outcome(&check(&url, "/", Some(&token)).await),
        (true, 200, "valid".into())
    );
    let kept = eventually(Duration::from_secs(10), async || {
        tollgate
            .log_events("key set refresh failed")
            .iter()
            .any(|e| e["keeping_last_good_keys"] == true)
    })
    .await;
    assert!(
        kept,
        "no failed refresh keeping the last good keys was logged"
    );

    // Past it: 503, not an allow by keys the issuer may have revoked, and not a 401.
    let stale = eventually(Duration::from_secs(10), async || {
        !outcome(&check(&url, "/", Some(&token)).await).0
    })
    .await;
    assert!(stale, "the keys never went stale");
    let response = check(&url, "/", Some(&token)).await;
    assert_eq!(
        outcome(&response),
        (false, 503, "issuer_unavailable".into())
    );
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        panic!("denied response")
    };
    assert!(!denied.body.contains("last refreshed"), "{}", denied.body);
    assert!(denial_logged(&tollgate, "issuer_unavailable", "last refreshed").await);
    assert!(denial_logged(&tollgate, "issuer_unavailable", "jwks-max-staleness").await);
    let age = metric(&tollgate.metrics(), "tollgate_jwks_age_seconds{").expect("age metric");
    assert!(age >= 4.0, "tollgate_jwks_age_seconds {age}");
    // The next failed refresh says the keys are no longer kept, and how old they are.
    let logged = eventually(Duration::from_secs(5), async || {
        tollgate
            .log_events("key set refresh failed")
            .iter()
            .any(|e| {
                e["keeping_last_good_keys"] == false && e["keys_age_seconds"].as_u64() >= Some(4)
            })
    })
    .await;
    assert!(logged, "{}", tollgate.logs().join("\n"));

    // The IdP comes back on the same address: the keys load without a restart.
    let idp = IdpServer::start(addr, jwks(&[&key])).await.expect("idp");
    let recovered = eventually(Duration::from_secs(10), async || {
        outcome(&check(&url, "/", Some(&token)).await) == (true, 200, "valid".into())
    })
    .await;
    assert!(recovered, "{}", tollgate.metrics());
    drop(idp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_idp_at_start_answers_503_then_recovers_without_restart() {
    let port = free_port();
    let iss = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("dir");
    write_policy(
        dir.path(),
        "p.yaml",
        &policy_yaml("orders", &iss, "  match: {paths: [/]}\n"),
    );
    // Another policy whose IdP is up is not held back by the one that is down.
    let healthy_key = rsa("h1");
    let healthy_idp = idp(&[&healthy_key]).await;
    let healthy_iss = healthy_idp.issuer();
    write_policy(
        dir.path(),
        "healthy.yaml",
        &policy_yaml("payments", &healthy_iss, "  match: {paths: [/payments]}\n"),
    );
    // Ready even though the keys could not be fetched: the failure is visible, not hidden.
    let tollgate = Tollgate::start(
        dir.path(),
        &[
            "--jwks-max-retry-delay",
            "300ms",
            "--unknown-kid-refetch-interval",
            "100ms",
        ],
    );
    let url = tollgate.url();
    let key = rsa("k1");
    let token = key.mint(&claims(&iss, json!({}))).expect("mint");
    let response = check(&url, "/", Some(&token)).await;
    assert_eq!(
        outcome(&response),
        (false, 503, "issuer_unavailable".into())
    );
    let healthy = healthy_key
        .mint(&claims(&healthy_iss, json!({})))
        .expect("mint");
    assert_eq!(
        outcome(&check(&url, "/payments/1", Some(&healthy)).await),
        (true, 200, "valid".into())
    );

    let idp = IdpServer::start(
        format!("127.0.0.1:{port}").parse().expect("addr"),
        jwks(&[&key]),
    )
    .await
    .expect("idp on the same port");
    let recovered = eventually(Duration::from_secs(10), async || {
        outcome(&check(&url, "/", Some(&token)).await).0
    })
    .await;
    assert!(recovered, "keys loaded once the IdP came back");
    drop(idp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_must_name_the_configured_issuer() {
    let key = rsa("k1");
    let idp = idp(&[&key]).await;
    let iss = idp.issuer();
    idp.set_announced_issuer(&format!("{iss}/v2.0"));
    let dir = tempfile::tempdir().expect("dir");
    write_policy(dir.path(), "p.yaml", &policy_yaml("orders", &iss, ""));
    let tollgate = Tollgate::start(dir.path(), &[]);
    let response = check(
        &tollgate.url(),
        "/",
        Some(&key.mint(&claims(&iss, json!({}))).expect("mint")),
    )
    .await;
    assert_eq!(
        outcome(&response),
        (false, 503, "issuer_unavailable".into())
    );
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        panic!("denied")
    };
    assert!(!denied.body.contains("is for issuer"), "{}", denied.body);
    assert!(denial_logged(&tollgate, "issuer_unavailable", "is for issuer").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_files_hot_reload_add_edit_break_delete() {
    let key = rsa("k1");
    let idp = idp(&[&key]).await;
    let iss = idp.issuer();
    let dir = tempfile::tempdir().expect("dir");
    let tollgate = Tollgate::start(dir.path(), &[]);
    let url = tollgate.url();
    let token = key.mint(&claims(&iss, json!({}))).expect("mint");
    assert_eq!(
        outcome(&check(&url, "/orders", Some(&token)).await),
        (false, 403, "no_policy".into())
    );

    // Add.
    write_policy(dir.path(), "orders.yaml", &policy_yaml("orders", &iss, ""));
    assert!(
        eventually(Duration::from_secs(10), async || outcome(
            &check(&url, "/orders", Some(&token)).await
        )
        .0)
        .await,
        "added policy applies"
    );

    // Edit: now the token lacks a required claim.
    let strict = policy_yaml(
        "orders",
        &iss,
        "  requiredClaims: [{name: roles, values: [admin]}]\n",
    );
    write_policy(dir.path(), "orders.yaml", &strict);
    assert!(
        eventually(Duration::from_secs(10), async || outcome(
            &check(&url, "/orders", Some(&token)).await
        )
        .2 == "claim_mismatch")
        .await
    );

    // Break: a file that does not parse keeps the last good version.
    write_policy(
        dir.path(),
        "orders.yaml",
        "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nspec: [",
    );
    let logged = eventually(Duration::from_secs(10), async || {
        !tollgate.log_events("policy not loaded").is_empty()
    })
    .await;
    assert!(logged);
    assert_eq!(
        outcome(&check(&url, "/orders", Some(&token)).await).2,
        "claim_mismatch",
        "still the last good version"
    );

    // Delete.
    std::fs::remove_file(dir.path().join("orders.yaml")).expect("remove");
    assert!(
        eventually(Duration::from_secs(10), async || outcome(
            &check(&url, "/orders", Some(&token)).await
        )
        .2 == "no_policy")
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_is_judged_by_half_a_policy_while_files_change() {
    let key = rsa("k1");
    let idp = idp(&[&key]).await;
    let iss = idp.issuer();
    // Version A: audience api://a and scope a. Version B: audience api://b and scope b.
    let version = |v: &str| {
        format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {{name: orders, namespace: shop}}\nspec:\n  issuers:\n  - issuer: {iss}\n    audiences: [\"api://{v}\"]\n    allowInsecureHttp: true\n  requiredClaims: [{{name: scp, values: [\"{v}\"]}}]\n"
        )
    };
    let dir = tempfile::tempdir().expect("dir");
    write_policy(dir.path(), "orders.yaml", &version("a"));
    let tollgate = Tollgate::start(dir.path(), &[]);
    let url = tollgate.url();
    let token = |aud: &str, scp: &str| {
        key.mint(&claims(
            &iss,
            json!({"aud": format!("api://{aud}"), "scp": scp}),
        ))
        .expect("mint")
    };
    let (ta, tb, mixed) = (token("a", "a"), token("b", "b"), token("a", "b"));

    let writer = {
        let dir = dir.path().to_path_buf();
        let (a, b) = (version("a"), version("b"));
        tokio::spawn(async move {
            for i in 0..16 {
                write_policy(&dir, "orders.yaml", if i % 2 == 0 { &b } else { &a });
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let mut judged = 0;
    let mut allowed_a = 0;
    let mut allowed_b = 0;
    while !writer.is_finished() {
        let (ra, rb, rm) = tokio::join!(
            check(&url, "/", Some(&ta)),
            check(&url, "/", Some(&tb)),
            check(&url, "/", Some(&mixed))
        );
        assert!(
            !outcome(&rm).0,
            "a token that only a mix of both versions accepts was allowed"
        );
        // Every answer is a real decision under one of the two versions.
        for r in [&ra, &rb] {
            let (ok, status, reason) = outcome(r);
            assert!(
                ok || (status == 401
                    && (reason == "audience_mismatch" || reason == "claim_mismatch")),
                "{status} {reason}"
            );
        }
        allowed_a += usize::from(outcome(&ra).0);
        allowed_b += usize::from(outcome(&rb).0);
        judged += 3;
    }
    writer.await.expect("writer");
    assert!(
        judged > 30 && allowed_a > 0 && allowed_b > 0,
        "judged {judged}, a {allowed_a}, b {allowed_b}"
    );
    // The last version written is A.
    let settled = eventually(Duration::from_secs(10), async || {
        outcome(&check(&url, "/", Some(&ta)).await).0
            && !outcome(&check(&url, "/", Some(&tb)).await).0
    })
    .await;
    assert!(settled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_gracefully() {
    let dir = tempfile::tempdir().expect("dir");
    let tollgate = Tollgate::start(dir.path(), &[]);
    let logs = tollgate.logs.clone();
    let status = tollgate.terminate();
    assert!(status.success(), "{status:?}");
    let lines = logs.lock().expect("logs").join("\n");
    assert!(
        lines.contains("draining in-flight checks") && lines.contains("\"stopped\""),
        "{lines}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_denial_is_traced_in_the_log_when_asked() {
    let key = rsa("k1");
    let idp = idp(&[&key]).await;
    let iss = idp.issuer();
    let dir = tempfile::tempdir().expect("dir");
    write_policy(dir.path(), "orders.yaml", &policy_yaml("orders", &iss, ""));
    let args = vec!["--policies".to_string(), dir.path().display().to_string()];
    let tollgate = Tollgate::spawn_with(
        &args,
        &[("RUST_LOG", "info,tollgate::trace=debug".to_string())],
    );
    tollgate.wait_ready(Duration::from_secs(30));
    let wrong_aud = key
        .mint(&claims(&iss, json!({"aud": "api://payments"})))
        .expect("mint");
    let response = check(&tollgate.url(), "/orders", Some(&wrong_aud)).await;
    assert_eq!(outcome(&response).2, "audience_mismatch");
    let good = key.mint(&claims(&iss, json!({}))).expect("mint");
    assert!(outcome(&check(&tollgate.url(), "/orders", Some(&good)).await).0);
    let traced = eventually(Duration::from_secs(10), async || {
        !tollgate.log_events("denial trace").is_empty()
    })
    .await;
    assert!(traced, "{}", tollgate.logs().join("\n"));
    let lines = tollgate.log_events("denial trace");
    assert_eq!(lines.len(), 1, "one line per denial, none for the allow");
    let trace = lines[0]["trace"].as_str().expect("trace");
    assert!(
        trace.contains("signature ok: verified with key \"k1\"")
            && trace.contains(
                "aud FAIL: audience [\"api://payments\"] is not accepted here [audience_mismatch]"
            ),
        "{trace}"
    );
    assert_eq!(lines[0]["reason"], "audience_mismatch");
    assert!(!trace.contains(&wrong_aud), "the token is never logged");
    tollgate.terminate();
    idp.stop().await;
}

/// A Keycloak-like server on 127.0.0.1: discovery and the realm's own key set for the realms
/// of `sets`, 404 for others. Records every path asked for.
async fn realms(
    sets: Vec<(&'static str, serde_json::Value)>,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::extract::{Path, State};
    use axum::routing::get;
    type Shared = (
        String,
        std::sync::Arc<Vec<(&'static str, serde_json::Value)>>,
        std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    );
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let state: Shared = (base.clone(), std::sync::Arc::new(sets), asked.clone());
    let app = axum::Router::new()
        .route(
            "/realms/{realm}/.well-known/openid-configuration",
            get(
                |State((base, sets, asked)): State<Shared>, Path(realm): Path<String>| async move {
                    use axum::response::IntoResponse;
                    asked
                        .lock()
                        .expect("lock")
                        .push(format!("{realm} discovery"));
                    if !sets.iter().any(|(r, _)| *r == realm) {
                        return axum::http::StatusCode::NOT_FOUND.into_response();
                    }
                    axum::Json(json!({
                        "issuer": format!("{base}/realms/{realm}"),
                        "jwks_uri": format!("{base}/realms/{realm}/certs"),
                    }))
                    .into_response()
                },
            ),
        )
        .route(
            "/realms/{realm}/certs",
            get(
                |State((_, sets, asked)): State<Shared>, Path(realm): Path<String>| async move {
                    asked.lock().expect("lock").push(format!("{realm} keys"));
                    let own = sets
                        .iter()
                        .find(|(r, _)| *r == realm)
                        .map_or_else(|| jwks(&[]), |(_, set)| set.clone());
                    axum::Json(own)
                },
            ),
        )
        .with_state(state);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, asked)
}

fn challenge(response: &tollgate::proto::auth::CheckResponse) -> String {
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        panic!("denied")
    };
    denied
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "www-authenticate")
        .map(|h| h.value.clone())
        .expect("challenge")
}

/// The issue's three policy features through `tollgate serve` and gRPC: tenants of an issuer
/// template with keys of their own (others refused and never fetched), `maxTokenLifetime`
/// against an `exp` of 2^63, and the `scope` an `insufficient_scope` challenge names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_lifetimes_and_scope_challenges_over_grpc() {
    let (acme_key, globex_key, initech_key) = (rsa("acme"), rsa("globex"), rsa("initech"));
    let (base, asked) = realms(vec![
        ("acme", jwks(&[&acme_key])),
        ("globex", jwks(&[&globex_key])),
        ("initech", jwks(&[&initech_key])),
    ])
    .await;
    let dir = tempfile::tempdir().expect("dir");
    let policy = format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {{name: orders, namespace: shop}}\nspec:\n  issuers:\n  - issuer: '{base}/realms/{{tenant}}'\n    tenants: [acme, globex]\n    audiences: [\"{AUDIENCE}\"]\n    allowInsecureHttp: true\n    maxTokenLifetime: 1h\n  rules:\n  - paths: [/orders/admin]\n    requiredClaims: [{{name: scp, match: all, separator: \" \", values: [orders.read, orders.admin]}}]\n"
    );
    write_policy(dir.path(), "orders.yaml", &policy);
    let tollgate = Tollgate::start(dir.path(), &[]);
    let url = tollgate.url();
    let iss = |realm: &str| format!("{base}/realms/{realm}");

    // Listed tenants pass, each with its own keys.
    for (realm, key) in [("acme", &acme_key), ("globex", &globex_key)] {
        let token = key.mint(&claims(&iss(realm), json!({}))).expect("mint");
        assert_eq!(
            outcome(&check(&url, "/orders", Some(&token)).await),
            (true, 200, "valid".into()),
            "{realm}"
        );
    }
    // A tenant the IdP serves but the policy does not list: refused, named in the log.
    let initech = initech_key
        .mint(&claims(&iss("initech"), json!({})))
        .expect("mint");
    let response = check(&url, "/orders", Some(&initech)).await;
    assert_eq!(
        outcome(&response),
        (false, 401, "issuer_not_allowed".into())
    );
    assert!(challenge(&response).contains("error=\"invalid_token\""));
    assert!(
        denial_logged(
            &tollgate,
            "issuer_not_allowed",
            "tenant \"initech\" is not allowed for the issuer template"
        )
        .await
    );
    // One tenant's key does not speak for another.
    let forged = acme_key
        .mint(&claims(&iss("globex"), json!({})))
        .expect("mint");
    assert_eq!(
        outcome(&check(&url, "/orders", Some(&forged)).await),
        (false, 401, "key_not_found".into())
    );
    let fetched = asked.lock().expect("lock").clone();
    assert!(
        fetched.iter().all(|a| !a.starts_with("initech")),
        "{fetched:?}"
    );
    assert!(fetched.contains(&"acme keys".to_string()), "{fetched:?}");

    // An exp of 2^63 on a valid signature: its own reason.
    let now = tollgate::local_issuer::now_secs();
    let forever = acme_key
        .mint(&claims(
            &iss("acme"),
            json!({"iat": now, "exp": 9_223_372_036_854_775_808u64}),
        ))
        .expect("mint");
    let response = check(&url, "/orders", Some(&forever)).await;
    assert_eq!(
        outcome(&response),
        (false, 401, "token_lifetime_exceeded".into())
    );
    assert!(
        challenge(&response)
            .contains("error=\"invalid_token\", error_description=\"token_lifetime_exceeded: "),
        "{}",
        challenge(&response)
    );
    let hour = acme_key
        .mint(&claims(
            &iss("acme"),
            json!({"iat": now, "exp": now + 3600}),
        ))
        .expect("mint");
    assert!(outcome(&check(&url, "/orders", Some(&hour)).await).0);

    // A missing scope: 403 with the scopes to request.
    let read_only = acme_key
        .mint(&claims(&iss("acme"), json!({"scp": "orders.read"})))
        .expect("mint");
    let response = check(&url, "/orders/admin", Some(&read_only)).await;
    assert_eq!(
        outcome(&response),
        (false, 403, "insufficient_scope".into())
    );
    assert!(
        challenge(&response).ends_with(", scope=\"orders.read orders.admin\""),
        "{}",
        challenge(&response)
    );
    let admin = acme_key
        .mint(&claims(
            &iss("acme"),
            json!({"scp": "orders.read orders.admin"}),
        ))
        .expect("mint");
    assert!(outcome(&check(&url, "/orders/admin", Some(&admin)).await).0);
}

/// Tenants of an issuer template admitted by a CEL condition, through `tollgate serve` and
/// gRPC with a discovery server per tenant path: admitted on first use with their own keys,
/// refused by the condition without a fetch, a tenant the IdP does not know answered 503 and
/// not asked again at once, the bound keeping the tenants in use; `tollgate explain` names the
/// tenant tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_admitted_by_a_condition_over_grpc() {
    let keys: Vec<(&'static str, SigningKey)> = ["acme", "cust-1", "cust-2", "cust-3", "initech"]
        .into_iter()
        .map(|realm| (realm, SigningKey::ec(realm, "ES256").expect("key")))
        .collect();
    let key = |realm: &str| &keys.iter().find(|(r, _)| *r == realm).expect("realm").1;
    let (base, asked) = realms(keys.iter().map(|(r, k)| (*r, jwks(&[k]))).collect()).await;
    let asked_for = |realm: &str| -> Vec<String> {
        let prefix = format!("{realm} ");
        asked
            .lock()
            .expect("lock")
            .iter()
            .filter(|a| a.starts_with(&prefix))
            .cloned()
            .collect()
    };
    let dir = tempfile::tempdir().expect("dir");
    let policy = format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {{name: orders, namespace: shop}}\nspec:\n  issuers:\n  - issuer: '{base}/realms/{{tenant}}'\n    tenants: [acme]\n    admitTenants:\n      expression: \"tenant.startsWith('cust-')\"\n      message: customer realms only\n      maxTenants: 2\n    audiences: [\"{AUDIENCE}\"]\n    allowInsecureHttp: true\n"
    );
    let file = write_policy(dir.path(), "orders.yaml", &policy);
    let tollgate = Tollgate::start(dir.path(), &[]);
    let url = tollgate.url();
    let iss = |realm: &str| format!("{base}/realms/{realm}");
    let token = |realm: &str, signer: &str| {
        key(signer)
            .mint(&claims(&iss(realm), json!({})))
            .expect("mint")
    };

    // A tenant the condition admits and the IdP does not know: 503, remembered, one fetch.
    for _ in 0..3 {
        let response = check(&url, "/orders", Some(&token("cust-9", "cust-1"))).await;
        assert_eq!(
            outcome(&response),
            (false, 503, "issuer_unavailable".into())
        );
    }
    assert!(denial_logged(&tollgate, "issuer_unavailable", "tenant \"cust-9\"").await);
    assert_eq!(asked_for("cust-9"), ["cust-9 discovery"]);

    // The listed tenant and two admitted ones pass, each with its own keys, fetched once.
    for realm in ["acme", "cust-1", "cust-1", "cust-2", "cust-1"] {
        assert_eq!(
            outcome(&check(&url, "/orders", Some(&token(realm, realm))).await),
            (true, 200, "valid".into()),
            "{realm}"
        );
    }
    assert_eq!(asked_for("cust-1"), ["cust-1 discovery", "cust-1 keys"]);
    let forged = token("cust-2", "cust-1");
    assert_eq!(
        outcome(&check(&url, "/orders", Some(&forged)).await),
        (false, 401, "key_not_found".into())
    );

    // maxTenants 2: a third admitted tenant waits, the two in use keep working.
    let response = check(&url, "/orders", Some(&token("cust-3", "cust-3"))).await;
    assert_eq!(
        outcome(&response),
        (false, 503, "issuer_unavailable".into())
    );
    assert!(denial_logged(&tollgate, "issuer_unavailable", "are in use").await);
    assert_eq!(asked_for("cust-3"), Vec::<String>::new());
    for realm in ["cust-1", "cust-2"] {
        assert!(outcome(&check(&url, "/orders", Some(&token(realm, realm))).await).0);
    }

    // A tenant the condition refuses: 401 with the policy's message, never fetched.
    let response = check(&url, "/orders", Some(&token("initech", "initech"))).await;
    assert_eq!(
        outcome(&response),
        (false, 401, "issuer_not_allowed".into())
    );
    assert!(
        challenge(&response).contains(
            "error=\"invalid_token\", error_description=\"issuer_not_allowed: customer realms only\""
        ),
        "{}",
        challenge(&response)
    );
    assert!(
        denial_logged(
            &tollgate,
            "issuer_not_allowed",
            "is not admitted by the issuer template"
        )
        .await
    );
    assert_eq!(asked_for("initech"), Vec::<String>::new());
    tollgate.terminate();

    // explain names the tenant tried and what the condition said.
    let explain = |realm: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["explain", "--policy"])
            .arg(&file)
            .args(["--token", &token(realm, realm)])
            .env_remove("RUST_LOG")
            .output()
            .expect("explain");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let admitted = explain("cust-2");
    assert!(
        admitted.contains(&format!(
            "✓ tenant     \"cust-2\" of the issuer template {base}/realms/{{tenant}}: spec.issuers[0].admitTenants `tenant.startsWith('cust-')` is true (tenant = \"cust-2\")"
        )) && admitted.ends_with("ALLOWED (valid)\n"),
        "{admitted}"
    );
    let refused = explain("initech");
    assert!(
        refused.contains(&format!(
            "✗ issuer  tenant \"initech\" is not admitted by the issuer template \"{base}/realms/{{tenant}}\": spec.issuers[0].admitTenants `tenant.startsWith('cust-')` is false"
        )),
        "{refused}"
    );
}

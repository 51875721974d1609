//! Check latency: the plain JWT path (RS256, verified on every request) next to an opaque token
//! answered from a warm introspection cache. Both over real gRPC to an in-process `tollgate
//! serve`, and both through `engine::check` alone (no transport), measured interleaved in one
//! run so the figures are comparable (the verified-token cache is off: every request verifies).
//! The engine rows add the same JWT encrypted to the API
//! (RSA-OAEP-256 / A256GCM, decrypted on every request) and the JWT with the trace on (what
//! `explain` and the debug line cost), and the JWT over HTTP forward auth (`/auth`, as nginx's
//! `auth_request` calls it). Reports median, p90 and p99, and the ratios.
//!
//! `cargo bench --bench check` measures; under `cargo test` it runs a short smoke pass.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::routing::post;
use base64::Engine as _;
use serde_json::json;
use tollgate::client::{Probe, check_request};
use tollgate::engine::{self, Headers, Request};
use tollgate::jwks::{FetchSettings, RefreshSettings};
use tollgate::local_issuer::{SigningKey, jwks, now_secs};
use tollgate::policy::{DefaultAction, SharedSnapshot};
use tollgate::proto::auth::authorization_client::AuthorizationClient;
use tollgate::serve::{self, PolicySource, ServeConfig};
use tollgate::trace::Trace;

const ISSUER: &str = "https://idp.bench.example/";
const AUDIENCE: &str = "api://bench";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    (
        percentile(&samples, 0.5),
        percentile(&samples, 0.9),
        percentile(&samples, 0.99),
    )
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let measure = std::env::args().any(|a| a == "--bench");
    let rounds = if measure { 5000 } else { 20 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(rounds, measure));
}

async fn run(rounds: usize, measure: bool) {
    let key = SigningKey::rsa("k1", "RS256", 2048).expect("key");
    let claims = json!({"iss": ISSUER, "sub": "user-1", "aud": AUDIENCE, "scope": "orders.read",
        "exp": now_secs() + 3600, "iat": now_secs()});
    let jwt = key.mint(&claims).expect("mint");

    // An introspection endpoint that says every token is active (it is asked only once).
    let answer = {
        let mut a = claims.clone();
        a["active"] = json!(true);
        a
    };
    let app = Router::new().route(
        "/introspect",
        post(move || {
            let answer = answer.clone();
            async move { axum::Json(answer) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let introspect: SocketAddr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("secret"), "s").expect("write");
    let issuer = json!({"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": jwks(&[&key])});
    let policy = |name: &str, host: &str, extra: serde_json::Value| {
        let mut spec = json!({"match": {"hosts": [host]}, "issuers": [issuer.clone()],
            "forward": {"claimsToHeaders": [{"claim": "sub", "header": "x-user-id"}]}});
        for (k, v) in extra.as_object().expect("object") {
            spec[k] = v.clone();
        }
        json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "JwtPolicy", "metadata": {"name": name}, "spec": spec}).to_string()
    };
    std::fs::write(
        dir.path().join("jwt.yaml"),
        policy("jwt", "jwt.example", json!({})),
    )
    .expect("write");
    let introspection = json!({"introspection": {"endpoint": format!("http://{introspect}/introspect"), "clientId": "bench",
        "clientSecretRef": {"file": dir.path().join("secret").display().to_string()}, "allowInsecureHttp": true,
        "cache": {"defaultTtl": "1h"}}});
    std::fs::write(
        dir.path().join("opaque.yaml"),
        policy("opaque", "opaque.example", introspection),
    )
    .expect("write");
    // The same JWT, encrypted to the API's RSA key.
    let decryption_key = {
        use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
        let key = aws_lc_rs::rsa::PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("rsa");
        let der: Pkcs8V1Der = key.as_der().expect("der");
        let body = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n")
    };
    std::fs::write(dir.path().join("api.pem"), &decryption_key).expect("write");
    let decryption = json!({"decryption": {"keys": [{"file": dir.path().join("api.pem").display().to_string(), "kid": "api"}]}});
    std::fs::write(
        dir.path().join("jwe.yaml"),
        policy("jwe", "jwe.example", decryption),
    )
    .expect("write");
    let public = tollgate::jwe::parse_keys(decryption_key.as_bytes()).expect("key")[0]
        .clone()
        .with_kid("api")
        .public()
        .expect("public");
    let jwe = tollgate::jwe::encrypt(
        jwt.as_bytes(),
        &public,
        tollgate::jwe::KeyManagement::RsaOaep256,
        tollgate::jwe::ContentEncryption::A256Gcm,
        Some("JWT"),
    )
    .expect("encrypt");

    let config = ServeConfig {
        source: PolicySource::Files(vec![dir.path().to_path_buf()]),
        grpc_addr: "127.0.0.1:0".parse().expect("addr"),
        admin_addr: "127.0.0.1:0".parse().expect("addr"),
        default_action: DefaultAction::Deny,
        delegations: tollgate::policy::HostDelegations::none(),
        fetch: FetchSettings::default(),
        refresh: RefreshSettings::default(),
        poll: Duration::from_secs(3600),
        webhook: None,
        http_addr: Some("127.0.0.1:0".parse().expect("addr")),
        trusted_proxies: vec![(
            "127.0.0.0/8".parse().expect("cidr"),
            tollgate::http::Family::Nginx,
        )],
        client_cert_proxies: Vec::new(),
        http_header_timeout: tollgate::http::listener::HEADER_READ_TIMEOUT,
        ext_authz_path_prefix: tollgate::http::PathPrefix::default(),
        // Every JWT row verifies the token on each request; the cached path is measured by
        // `cargo bench --bench load` and `--bench stages`.
        token_cache: tollgate::verified::CacheLimits {
            max_entries: 0,
            ..Default::default()
        },
        grpc_tls: None,
        drain_timeout: Duration::from_secs(5),
        decision_log: Default::default(),
        tracing: None,
    };
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(serve::run(
        config,
        std::future::pending(),
        move |bound, shared| {
            let _ = bound_tx.send((bound, shared));
        },
    ));
    let (bound, shared): (serve::Bound, Arc<SharedSnapshot>) =
        bound_rx.await.expect("tollgate started");
    while !shared.is_ready() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut client = AuthorizationClient::connect(format!("http://{}", bound.grpc))
        .await
        .expect("connect");
    let probe = |host: &str, token: &str| {
        check_request(&Probe {
            host: host.into(),
            path: "/".into(),
            method: "GET".into(),
            token: Some(token.into()),
            ..Probe::default()
        })
    };
    let jwt_request = probe("jwt.example", &jwt);
    let opaque_request = probe("opaque.example", "opaque-token-0123456789");

    // Warm up: connection, key parsing, and the one introspection call.
    for _ in 0..(rounds / 10).max(5) {
        for request in [&jwt_request, &opaque_request] {
            let response = client
                .check(request.clone())
                .await
                .expect("check")
                .into_inner();
            assert_eq!(
                response.status.map(|s| s.code),
                Some(0),
                "the bench's requests must be allowed"
            );
        }
    }

    // HTTP forward auth (`/auth`, as nginx auth_request calls it), over one kept-alive connection.
    let http = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(1)
        .build()
        .expect("client");
    let auth_url = format!(
        "http://{}/auth",
        bound.http.expect("the bench serves HTTP forward auth")
    );
    let forward_auth = || {
        http.get(&auth_url)
            .header("host", "jwt.example")
            .header("x-original-url", "https://jwt.example/")
            .header("x-original-method", "GET")
            .header("authorization", format!("Bearer {jwt}"))
            .send()
    };
    for _ in 0..(rounds / 10).max(5) {
        let response = forward_auth().await.expect("auth");
        assert_eq!(
            response.status(),
            200,
            "the bench's requests must be allowed"
        );
    }

    // Interleaved, so drift (other load, frequency changes) hits every path alike.
    let mut grpc_jwt = Vec::with_capacity(rounds);
    let mut grpc_opaque = Vec::with_capacity(rounds);
    let mut http_jwt = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        let response = forward_auth().await.expect("auth");
        http_jwt.push(start.elapsed());
        assert_eq!(response.status(), 200);
        let start = Instant::now();
        let response = client
            .check(jwt_request.clone())
            .await
            .expect("check")
            .into_inner();
        grpc_jwt.push(start.elapsed());
        assert_eq!(response.status.map(|s| s.code), Some(0));
        let start = Instant::now();
        let response = client
            .check(opaque_request.clone())
            .await
            .expect("check")
            .into_inner();
        grpc_opaque.push(start.elapsed());
        assert_eq!(response.status.map(|s| s.code), Some(0));
    }

    // The engine alone.
    let snapshot = shared.load_full();
    let jwt_headers = vec![("authorization".to_string(), format!("Bearer {jwt}"))];
    let opaque_headers = vec![(
        "authorization".to_string(),
        "Bearer opaque-token-0123456789".to_string(),
    )];
    let jwe_headers = vec![("authorization".to_string(), format!("Bearer {jwe}"))];
    let mut engine_jwt = Vec::with_capacity(rounds);
    let mut engine_opaque = Vec::with_capacity(rounds);
    let mut engine_jwe = Vec::with_capacity(rounds);
    let mut engine_traced = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        for (host, headers, samples, traced) in [
            ("jwt.example", &jwt_headers, &mut engine_jwt, false),
            ("opaque.example", &opaque_headers, &mut engine_opaque, false),
            ("jwe.example", &jwe_headers, &mut engine_jwe, false),
            ("jwt.example", &jwt_headers, &mut engine_traced, true),
        ] {
            let request = Request {
                host,
                path: "/",
                method: "GET",
                headers: Headers::List(headers),
                policy: None,
                route: None,
                source: Default::default(),
            };
            let start = Instant::now();
            let decision = if traced {
                engine::check_traced(&snapshot, &request, SystemTime::now(), Trace::on()).await
            } else {
                engine::check(&snapshot, &request, SystemTime::now()).await
            };
            samples.push(start.elapsed());
            assert!(decision.is_allow());
        }
    }

    if !measure {
        println!(
            "check bench: smoke pass ok ({rounds} rounds); run `cargo bench --bench check` to measure"
        );
        return;
    }
    println!("Check latency, {rounds} requests per path, interleaved (median / p90 / p99, µs):");
    let rows = [
        ("gRPC Check, JWT RS256", summary(grpc_jwt)),
        (
            "gRPC Check, opaque, warm introspection cache",
            summary(grpc_opaque),
        ),
        ("engine::check, JWT RS256", summary(engine_jwt)),
        (
            "engine::check, opaque, warm introspection cache",
            summary(engine_opaque),
        ),
        (
            "engine::check, JWT in JWE (RSA-OAEP-256/A256GCM)",
            summary(engine_jwe),
        ),
        ("engine::check, JWT RS256, trace on", summary(engine_traced)),
        ("HTTP /auth (forward auth), JWT RS256", summary(http_jwt)),
    ];
    for (name, (p50, p90, p99)) in &rows {
        println!(
            "  {name:<48} {:>8.1} {:>8.1} {:>8.1}",
            us(*p50),
            us(*p90),
            us(*p99)
        );
    }
    let ratio = |a: Duration, b: Duration| us(a) / us(b);
    println!(
        "  median ratio opaque-warm / JWT: gRPC {:.2}, engine {:.3}",
        ratio(rows[1].1.0, rows[0].1.0),
        ratio(rows[3].1.0, rows[2].1.0)
    );
    println!(
        "  median ratio engine JWE / JWT {:.2}, traced / untraced {:.2}",
        ratio(rows[4].1.0, rows[2].1.0),
        ratio(rows[5].1.0, rows[2].1.0)
    );
    println!(
        "  median ratio HTTP /auth / gRPC Check (JWT) {:.2}",
        ratio(rows[6].1.0, rows[0].1.0)
    );
}

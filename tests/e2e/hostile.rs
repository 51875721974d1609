//! Hostile requests at the listeners of a running `tollgate serve`: check requests without
//! attributes, oversized and crowded header maps, invalid UTF-8, floods of concurrent streams on
//! one connection, oversized HTTP heads, and a hostile identity provider (huge bodies, endless
//! redirects, thousands of keys, an answer that never comes). Every case ends in a clear denial
//! or error, never an allow, and the server keeps answering.

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use serde_json::{Value, json};
use tollgate::client::{Probe, check_request};
use tollgate::local_issuer::server::IdpServer;
use tollgate::local_issuer::{SigningKey, jwks};
use tollgate::proto::auth::authorization_client::AuthorizationClient;
use tollgate::proto::auth::{CheckRequest, CheckResponse};

use crate::support::*;

fn rsa(kid: &str) -> SigningKey {
    SigningKey::rsa(kid, "RS256", 2048).expect("key")
}

fn probe(token: Option<&str>, headers: Vec<(String, String)>) -> CheckRequest {
    check_request(&Probe {
        host: HOST.into(),
        path: "/orders".into(),
        method: "GET".into(),
        token: token.map(str::to_owned),
        headers,
        ..Probe::default()
    })
}

async fn client(tollgate: &Tollgate) -> AuthorizationClient<tonic::transport::Channel> {
    AuthorizationClient::connect(tollgate.url())
        .await
        .expect("connect")
}

fn reason(response: &CheckResponse) -> String {
    outcome(response).2
}

/// Tollgate with one policy whose keys come from a local IdP, and a token it accepts.
async fn serving() -> (Tollgate, IdpServer, String, tempfile::TempDir) {
    serving_with(&["--token-cache-entries", "0"]).await
}

/// [`serving`] with the HTTP endpoint and extra flags.
async fn serving_with(extra: &[&str]) -> (Tollgate, IdpServer, String, tempfile::TempDir) {
    let key = rsa("k1");
    let idp = IdpServer::start("127.0.0.1:0".parse().expect("addr"), jwks(&[&key]))
        .await
        .expect("idp");
    let iss = idp.issuer();
    let dir = tempfile::tempdir().expect("dir");
    write_policy(dir.path(), "p.yaml", &policy_yaml("orders", &iss, ""));
    let mut flags = vec![
        "--http-addr",
        "127.0.0.1:0",
        "--forward-auth-family",
        "nginx",
    ];
    flags.extend_from_slice(extra);
    let tollgate = Tollgate::start(dir.path(), &flags);
    let token = key.mint(&claims(&iss, json!({}))).expect("mint");
    (tollgate, idp, token, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_check_requests_are_denied_or_refused_and_the_server_keeps_answering() {
    let (tollgate, _idp, token, _dir) = serving().await;
    let mut grpc = client(&tollgate).await;

    // No attributes at all.
    let answer = grpc
        .check(CheckRequest::default())
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(outcome(&answer), (false, 400, "request_malformed".into()));

    // A header map over the 1 MiB message limit: refused before decoding, never judged.
    let big = vec![("x-pad".to_string(), "a".repeat(1024 * 1024 + 10))];
    let status = grpc
        .check(probe(Some(&token), big))
        .await
        .expect_err("over the limit");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");

    // Thousands of headers under the limit: judged like any request.
    let many: Vec<(String, String)> = (0..5000)
        .map(|i| (format!("x-h{i}"), format!("v{i}")))
        .collect();
    let answer = grpc
        .check(probe(Some(&token), many.clone()))
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(outcome(&answer), (true, 200, "valid".into()));
    let answer = grpc
        .check(probe(None, many))
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(reason(&answer), "token_missing");

    // Raw header values that are not UTF-8: read lossily, so a token cannot hide in them.
    let mut raw = probe(None, Vec::new());
    if let Some(http) = raw
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        http.headers.clear();
        let mut value = b"Bearer ".to_vec();
        value.extend_from_slice(token.as_bytes());
        value.push(0xff);
        http.header_map = Some(tollgate::proto::core::HeaderMap {
            headers: vec![tollgate::proto::core::HeaderValue {
                key: "authorization".into(),
                value: String::new(),
                raw_value: value,
            }],
        });
    }
    let answer = grpc.check(raw).await.expect("answer").into_inner();
    assert!(!outcome(&answer).0, "{:?}", outcome(&answer));
    assert_eq!(reason(&answer), "token_malformed");

    // Paths that normalize to nothing sensible.
    for path in ["/orders/%ff%fe", "/../../../../etc/passwd", "//%2e%2e/%00"] {
        let mut request = probe(Some(&token), Vec::new());
        if let Some(http) = request
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
        {
            http.path = path.into();
        }
        let answer = grpc.check(request).await.expect("answer").into_inner();
        let (allowed, status, why) = outcome(&answer);
        assert!(
            !allowed || why == "valid",
            "{path}: {allowed} {status} {why}"
        );
    }

    // Still answering after all of that.
    let answer = grpc
        .check(probe(Some(&token), Vec::new()))
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(outcome(&answer), (true, 200, "valid".into()));
}

/// Bytes that are not a valid gRPC message: a clear error, not a decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_check_requests_are_refused() {
    let (tollgate, _idp, _token, _dir) = serving().await;
    // A CheckRequest whose path field (a string) holds invalid UTF-8, framed by hand:
    // CheckRequest.attributes(1) { AttributeContext.request(4) { Request.http(2) {
    // HttpRequest.path(4): 0xff 0xfe } } }.
    let path = [0x22u8, 0x02, 0xff, 0xfe];
    let http = [&[0x12u8, path.len() as u8][..], &path].concat();
    let request = [&[0x22u8, http.len() as u8][..], &http].concat();
    let message = [&[0x0au8, request.len() as u8][..], &request].concat();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let (status, grpc_status) = raw_grpc(tollgate.grpc, frame).await;
    assert_eq!(status, 200);
    assert_eq!(
        grpc_status.as_deref(),
        Some("13"),
        "INTERNAL: the message does not decode"
    );
}

/// POSTs one gRPC frame over HTTP/2 and returns the HTTP status and `grpc-status`.
async fn raw_grpc(addr: std::net::SocketAddr, frame: Vec<u8>) -> (u16, Option<String>) {
    use http_body_util::BodyExt as _;
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2");
    tokio::spawn(conn);
    let request = http::Request::post(format!(
        "http://{addr}/envoy.service.auth.v3.Authorization/Check"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
    .expect("request");
    let response = send.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let header_status = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let collected = response.into_body().collect().await.expect("body");
    let trailer_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, header_status.or(trailer_status))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_streams_on_one_connection_is_served_within_its_bounds() {
    let (tollgate, _idp, token, _dir) = serving().await;
    let channel = tonic::transport::Endpoint::from_shared(tollgate.url())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let rss = |pid| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let before = rss(tollgate.pid());
    // 5,000 streams at once on one HTTP/2 connection: the server admits 1,024 at a time
    // (SETTINGS_MAX_CONCURRENT_STREAMS), the rest wait in the client; every one is answered.
    let wrong = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..5000)
        .map(|i| {
            let mut client = AuthorizationClient::new(channel.clone());
            let request = probe((i % 2 == 0).then_some(token.as_str()), Vec::new());
            let wrong = wrong.clone();
            tokio::spawn(async move {
                let answer = client.check(request).await.map(|r| r.into_inner());
                let expected = i % 2 == 0;
                if answer.map(|a| tollgate::client::allowed(&a)).ok() != Some(expected) {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    assert_eq!(wrong.load(Ordering::Relaxed), 0);
    let after = rss(tollgate.pid());
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_crowded_http_heads_are_refused_before_judging() {
    let (tollgate, _idp, token, _dir) = serving().await;
    let addr = tollgate.http.expect("http addr");
    let send = |head: Vec<u8>| -> String {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let _ = stream.write_all(&head);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    };
    let mut huge = format!("GET /auth HTTP/1.1\r\nHost: {HOST}\r\nX-Pad: ").into_bytes();
    huge.extend(std::iter::repeat_n(b'a', 1024 * 1024));
    huge.extend_from_slice(format!("\r\nAuthorization: Bearer {token}\r\n\r\n").as_bytes());
    assert!(send(huge).contains(" 431 "));
    let mut crowded = format!("GET /auth HTTP/1.1\r\nHost: {HOST}\r\n");
    for i in 0..2000 {
        crowded.push_str(&format!("X-H{i}: v\r\n"));
    }
    crowded.push_str(&format!(
        "Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    ));
    assert!(send(crowded.into_bytes()).contains(" 431 "));
    // Invalid UTF-8 in the original URL: a 400, not a guess at the path.
    let mut bad = format!(
        "GET /auth HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\nX-Original-Method: GET\r\nX-Original-URL: http://{HOST}/orders/"
    )
    .into_bytes();
    bad.extend_from_slice(&[0xff, 0xfe]);
    bad.extend_from_slice(b"\r\n\r\n");
    let line = send(bad);
    assert!(line.contains(" 400 "), "{line}");
    // And a normal request still passes.
    let ok = format!(
        "GET /auth HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {token}\r\nX-Original-URL: http://{HOST}/orders/1\r\nX-Original-Method: GET\r\nConnection: close\r\n\r\n"
    );
    assert!(send(ok.into_bytes()).contains(" 200 "));
}

/// An identity provider that misbehaves in every way a key fetch can meet.
async fn hostile_idp() -> (String, Arc<AtomicU64>, Arc<AtomicU64>) {
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    let slow_hits = Arc::new(AtomicU64::new(0));
    let slow_counter = slow_hits.clone();
    let base = Arc::new(std::sync::OnceLock::<String>::new());
    let base_for_discovery = base.clone();
    let base_for_meta = base.clone();
    let discovery = move |kind: &'static str| {
        let base = base_for_discovery.clone();
        move || {
            let base = base.get().cloned().unwrap_or_default();
            async move {
                axum::Json(json!({"issuer": format!("{base}/{kind}"),
                    "jwks_uri": format!("{base}/{kind}/jwks")}))
            }
        }
    };
    let many_keys: Value = {
        let point = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
        let y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
        // 10,000 keys in well under the 1 MiB body limit: only the first would be real.
        let mut keys: Vec<Value> =
            vec![json!({"kty": "EC", "crv": "P-256", "kid": "k0", "x": point, "y": y})];
        keys.extend((1..10_000).map(|i| json!({"kid": format!("k{i}")})));
        json!({ "keys": keys })
    };
    let app = Router::new()
        .route(
            "/huge/.well-known/openid-configuration",
            get(discovery("huge")),
        )
        .route(
            "/huge/jwks",
            get(move || {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    // 50 MB, streamed: the reader must stop at its limit.
                    let chunk = bytes::Bytes::from(vec![b' '; 1024 * 1024]);
                    let stream = futures_util::stream::iter(
                        (0..50).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
                    );
                    axum::body::Body::from_stream(stream).into_response()
                }
            }),
        )
        .route(
            "/loop/.well-known/openid-configuration",
            get(discovery("loop")),
        )
        .route(
            "/loop/jwks",
            get(|| async { Redirect::temporary("/loop/jwks") }),
        )
        .route(
            "/many/.well-known/openid-configuration",
            get(discovery("many")),
        )
        .route(
            "/many/jwks",
            get(move || {
                let body = many_keys.clone();
                async move { axum::Json(body) }
            }),
        )
        // Discovery that points the key set at the cloud metadata service.
        .route(
            "/meta/.well-known/openid-configuration",
            get(move || {
                let base = base_for_meta.get().cloned().unwrap_or_default();
                async move {
                    axum::Json(json!({"issuer": format!("{base}/meta"),
                        "jwks_uri": "http://169.254.169.254/latest/meta-data/iam/security-credentials/"}))
                }
            }),
        )
        // A key set that redirects there.
        .route(
            "/bounce/.well-known/openid-configuration",
            get(discovery("bounce")),
        )
        .route(
            "/bounce/jwks",
            get(|| async { Redirect::temporary("http://169.254.169.254/latest/meta-data/") }),
        )
        .route(
            "/slow/.well-known/openid-configuration",
            get(discovery("slow")),
        )
        .route(
            "/slow/jwks",
            get(move || {
                let counter = slow_counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    axum::Json(json!({"keys": []}))
                }
            }),
        );
    // The discovery documents name the server's own address, known once it listens; no request
    // can arrive before the address is handed out below.
    let (addr, _) = serve_app(app).await;
    let url = format!("http://{addr}");
    let _ = base.set(url.clone());
    (url, hits, slow_hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_identity_provider_costs_bounded_work_and_answers_503() {
    let (base, huge_hits, slow_hits) = hostile_idp().await;
    let dir = tempfile::tempdir().expect("dir");
    for kind in ["huge", "loop", "many", "slow", "meta", "bounce"] {
        let extra = format!("  match: {{hosts: [{kind}.example.com]}}\n");
        write_policy(
            dir.path(),
            &format!("{kind}.yaml"),
            &policy_yaml(kind, &format!("{base}/{kind}"), &extra),
        );
    }
    write_policy(
        dir.path(),
        "nowhere.yaml",
        &policy_yaml(
            "nowhere",
            "https://idp.tollgate.invalid",
            "  match: {hosts: [nowhere.example.com]}\n",
        ),
    );
    let started = Instant::now();
    let tollgate = Tollgate::start(
        dir.path(),
        &["--fetch-timeout", "2s", "--jwks-max-retry-delay", "30s"],
    );
    // Ready within the fetch timeout, even with an IdP that never answers.
    assert!(started.elapsed() < Duration::from_secs(15));
    let key = rsa("k1");
    for kind in ["huge", "loop", "many", "slow", "meta", "bounce"] {
        let token = key
            .mint(&claims(&format!("{base}/{kind}"), json!({})))
            .expect("mint");
        let probe = Probe {
            host: format!("{kind}.example.com"),
            path: "/".into(),
            method: "GET".into(),
            token: Some(token),
            ..Probe::default()
        };
        let began = Instant::now();
        let answer = tollgate::client::send(&tollgate.url(), &probe)
            .await
            .expect("answer");
        assert_eq!(
            outcome(&answer),
            (false, 503, "issuer_unavailable".into()),
            "{kind}"
        );
        // The answer waits at most for one bounded fetch, never for the IdP's 10 s.
        assert!(
            began.elapsed() < Duration::from_secs(8),
            "{kind}: {:?}",
            began.elapsed()
        );
        let tollgate::proto::auth::check_response::HttpResponse::DeniedResponse(denied) =
            answer.http_response.as_ref().expect("response")
        else {
            panic!("denied")
        };
        let expected = match kind {
            "huge" => "larger than 1048576 bytes",
            "loop" => "redirect",
            "many" => "more than the 100 accepted",
            "meta" => "169.254.169.254 is a link-local address",
            "bounce" => "redirect refused: 169.254.169.254 is a link-local address",
            _ => "timed out",
        };
        // The client learns the reason, never the issuer's URLs or what went wrong there.
        assert!(!denied.body.contains(expected), "{kind}: {}", denied.body);
        assert!(!denied.body.contains("http"), "{kind}: {}", denied.body);
        assert!(
            denial_logged(&tollgate, "issuer_unavailable", expected).await,
            "{kind}: no denial logged with {expected:?}"
        );
    }
    // A host that does not resolve: the same 503, with the resolver's error.
    let nowhere = "https://idp.tollgate.invalid";
    let token = key.mint(&claims(nowhere, json!({}))).expect("mint");
    let probe = Probe {
        host: "nowhere.example.com".into(),
        path: "/".into(),
        method: "GET".into(),
        token: Some(token),
        ..Probe::default()
    };
    let answer = tollgate::client::send(&tollgate.url(), &probe)
        .await
        .expect("answer");
    assert_eq!(outcome(&answer), (false, 503, "issuer_unavailable".into()));
    // The 50 MB body was asked for, not read to its end.
    assert!(huge_hits.load(Ordering::SeqCst) >= 1);

    // 200 checks at once for the issuer that never answers: they do not pile up on it. They
    // share one fetch (or are refused by the refetch rate limit) and all end within the fetch
    // timeout, as 503.
    let before = slow_hits.load(Ordering::SeqCst);
    let token = key
        .mint(&claims(&format!("{base}/slow"), json!({})))
        .expect("mint");
    let began = Instant::now();
    let checks: Vec<_> = (0..200)
        .map(|_| {
            let url = tollgate.url();
            let probe = Probe {
                host: "slow.example.com".into(),
                path: "/".into(),
                method: "GET".into(),
                token: Some(token.clone()),
                ..Probe::default()
            };
            tokio::spawn(async move { tollgate::client::send(&url, &probe).await })
        })
        .collect();
    for check in checks {
        let answer = check.await.expect("task").expect("answer");
        assert_eq!(outcome(&answer), (false, 503, "issuer_unavailable".into()));
    }
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "{:?}",
        began.elapsed()
    );
    let fetches = slow_hits.load(Ordering::SeqCst) - before;
    assert!(fetches <= 1, "{fetches} fetches for 200 checks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_request_head_is_cut_off() {
    let (tollgate, _idp, token, _dir) = serving_with(&["--http-header-timeout", "1s"]).await;
    let addr = tollgate.http.expect("http addr");
    let slow = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let began = Instant::now();
        // Half a head, then a byte now and then: never the blank line that ends it.
        let _ = stream.write_all(format!("GET /auth HTTP/1.1\r\nHost: {HOST}\r\n").as_bytes());
        let mut closed = false;
        for _ in 0..8 {
            std::thread::sleep(Duration::from_millis(400));
            if stream.write_all(b"X-Slow: 1\r\n").is_err() {
                closed = true;
                break;
            }
        }
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        (closed || !rest.is_empty(), began.elapsed(), rest)
    });
    // Meanwhile a normal client is served.
    let ok = format!(
        "GET /auth HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {token}\r\nX-Original-URL: http://{HOST}/orders/1\r\nX-Original-Method: GET\r\nConnection: close\r\n\r\n"
    );
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.write_all(ok.as_bytes()).expect("write");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (cut, took, rest) = slow.await.expect("slow client");
    assert!(cut, "the trickling connection was never closed");
    assert!(took < Duration::from_secs(8), "closed after {took:?}");
    // hyper answers 408 when it gives up on a head (or just closes).
    let head = String::from_utf8_lossy(&rest);
    assert!(
        head.is_empty() || head.starts_with("HTTP/1.1 408"),
        "{head}"
    );
}

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::Request;
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use super::*;
use crate::fixtures::*;
use crate::policy::{DefaultAction, Snapshot};

const ORDERS: &str = r#"{match: {hosts: [api.example.com], paths: [/orders]},
    rules: [{paths: [/orders/healthz], allowAnonymous: true}],
    forward: {claimsToHeaders: [{claim: sub, header: x-user-id}]}}"#;

fn auth(
    ready: bool,
    trusted: &str,
    policies: Vec<Arc<crate::policy::Policy>>,
) -> (ForwardAuth, Arc<Metrics>) {
    let shared = SharedSnapshot::new(DefaultAction::Deny);
    shared.publish(Snapshot::build(policies, DefaultAction::Deny).0);
    if ready {
        shared.set_ready();
    }
    let metrics = Metrics::new(None, None);
    let trusted = trusted
        .split(',')
        .map(|t| parse_trusted(t).expect("cidr"))
        .collect();
    (ForwardAuth::new(shared, metrics.clone(), trusted), metrics)
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn call(service: &ForwardAuth, peer: &str, headers: &[(&str, &str)]) -> Answer {
    let peer: SocketAddr = peer.parse().expect("peer");
    let app = service.clone().router().layer(MockConnectInfo(peer));
    let mut request = Request::builder().method("GET").uri("/auth");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = app
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn traefik_and_nginx_headers_describe_the_request() {
    let (service, metrics) = auth(
        true,
        DEFAULT_TRUSTED_PROXIES,
        vec![mk_policy("orders", ORDERS)],
    );
    let token = RSA.mint(&good_claims()).expect("mint");
    let auth_header = bearer(&token);

    // Traefik forwardAuth: 200, claim headers and the kept token for authResponseHeaders.
    let answer = call(
        &service,
        "127.0.0.1:50000",
        &[
            ("host", "tollgate:8080"),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "api.example.com"),
            ("x-forwarded-uri", "/orders/1"),
            ("authorization", &auth_header),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("x-user-id"), Some("user-1"));
    assert_eq!(answer.header("authorization"), Some(auth_header.as_str()));

    // nginx auth_request: a client's own X-Forwarded-Uri naming the anonymous path does not
    // choose the path: X-Original-URI does.
    let spoof = call(
        &service,
        "127.0.0.1:50000",
        &[
            ("host", "api.example.com"),
            ("x-original-uri", "/orders/7"),
            ("x-original-method", "GET"),
            ("x-forwarded-uri", "/orders/healthz"),
        ],
    )
    .await;
    assert_eq!(spoof.status, 401, "{}", spoof.body);
    assert_eq!(
        spoof.header("www-authenticate"),
        Some("Bearer realm=\"api.example.com\"")
    );
    let body: serde_json::Value = serde_json::from_str(&spoof.body).expect("json");
    assert_eq!(
        body["error_description"]
            .as_str()
            .map(|d| d.starts_with("token_missing")),
        Some(true)
    );
    assert_eq!(spoof.header("content-type"), Some("application/json"));

    // The same request for the anonymous path really is anonymous, and no identity header
    // can be smuggled through it.
    let anonymous = call(
        &service,
        "127.0.0.1:50000",
        &[
            ("host", "api.example.com"),
            ("x-original-uri", "/orders/healthz"),
        ],
    )
    .await;
    assert_eq!(anonymous.status, 200);
    assert_eq!(anonymous.header("x-user-id"), None);

    let text = metrics.encode();
    assert!(
        text.contains("tollgate_decisions_total{transport=\"http\",policy=\"test/orders\",result=\"allow\",reason=\"valid\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn forwarded_headers_from_untrusted_addresses_are_ignored() {
    let (service, _) = auth(true, "10.0.0.0/8", vec![mk_policy("orders", ORDERS)]);
    let token = RSA.mint(&good_claims()).expect("mint");
    let auth_header = bearer(&token);
    let headers = [
        ("host", "api.example.com"),
        ("x-forwarded-uri", "/orders/healthz"),
        ("x-original-uri", "/orders/healthz"),
        ("authorization", auth_header.as_str()),
    ];
    // From 127.0.0.1 (not trusted here) the request is /auth itself: no policy covers it.
    let answer = call(&service, "127.0.0.1:50000", &headers).await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(answer.body.contains("no_policy"), "{}", answer.body);
    // From the trusted network the proxy's headers count.
    let answer = call(&service, "10.1.2.3:50000", &headers).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // IPv4-mapped IPv6 peers are matched as IPv4.
    let answer = call(&service, "[::ffff:10.1.2.3]:50000", &headers).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[tokio::test]
async fn malformed_forwarded_headers_are_400_never_allow() {
    let (service, _) = auth(true, DEFAULT_TRUSTED_PROXIES, vec![mk_policy("any", "{}")]);
    for headers in [
        vec![("x-original-uri", "orders")],
        vec![("x-forwarded-uri", "/a"), ("x-forwarded-proto", "ftp")],
        vec![("x-original-url", "not a url")],
    ] {
        let answer = call(&service, "127.0.0.1:1", &headers).await;
        assert_eq!(answer.status, 400, "{headers:?}: {}", answer.body);
        let body: serde_json::Value = serde_json::from_str(&answer.body).expect("json");
        assert_eq!(body["error"], "invalid_request");
        assert!(
            body["error_description"]
                .as_str()
                .is_some_and(|d| d.starts_with("request_malformed: forwarded request headers:")),
            "{body}"
        );
    }
    let mut repeated = Request::builder().uri("/auth");
    repeated = repeated
        .header("x-original-uri", "/a")
        .header("x-original-uri", "/b");
    let app = service.clone().router().layer(MockConnectInfo(
        "127.0.0.1:1".parse::<SocketAddr>().expect("addr"),
    ));
    let response = app
        .oneshot(repeated.body(Body::empty()).expect("request"))
        .await
        .expect("response");
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn not_ready_answers_503_and_keep_token_false_drops_the_token() {
    let (loading, _) = auth(false, DEFAULT_TRUSTED_PROXIES, vec![mk_policy("any", "{}")]);
    assert_eq!(
        call(&loading, "127.0.0.1:1", &[("host", "h")]).await.status,
        503
    );

    let (service, _) = auth(
        true,
        DEFAULT_TRUSTED_PROXIES,
        vec![mk_policy("drop", "{forward: {keepToken: false}}")],
    );
    let token = RSA.mint(&good_claims()).expect("mint");
    let answer = call(
        &service,
        "127.0.0.1:1",
        &[("host", "h"), ("authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("authorization"),
        None,
        "the proxy copies nothing: the token is dropped"
    );
}

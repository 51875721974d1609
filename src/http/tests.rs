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
    let trusted: Vec<TrustedProxy> = trusted
        .split(',')
        .map(|t| parse_trusted(t).expect("cidr"))
        .collect();
    let trusted = resolve_families(&trusted, None).expect("every entry names its family");
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

/// Loopback, for each family.
const NGINX: &str = "127.0.0.0/8=nginx";
const TRAEFIK: &str = "127.0.0.0/8=traefik";

fn nginx(url: &'static str, method: &'static str) -> Vec<(&'static str, String)> {
    vec![
        ("host", "tollgate:8080".into()),
        ("x-original-url", url.into()),
        ("x-original-method", method.into()),
    ]
}

fn traefik(
    method: &'static str,
    host: &'static str,
    uri: &'static str,
) -> Vec<(&'static str, String)> {
    vec![
        ("host", "tollgate:8080".into()),
        ("x-forwarded-method", method.into()),
        ("x-forwarded-proto", "https".into()),
        ("x-forwarded-host", host.into()),
        ("x-forwarded-uri", uri.into()),
    ]
}

fn plus(
    mut base: Vec<(&'static str, String)>,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    base.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    base
}

async fn send(service: &ForwardAuth, peer: &str, headers: &[(&'static str, String)]) -> Answer {
    let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    call(service, peer, &pairs).await
}

#[tokio::test]
async fn each_family_judges_the_request_its_proxy_describes() {
    let token = RSA.mint(&good_claims()).expect("mint");
    let auth_header = bearer(&token);
    let (traefik_auth, metrics) = auth(true, TRAEFIK, vec![mk_policy("orders", ORDERS)]);

    // Traefik forwardAuth: 200, claim headers and the kept token for authResponseHeaders.
    let answer = send(
        &traefik_auth,
        "127.0.0.1:50000",
        &plus(
            traefik("GET", "api.example.com", "/orders/1"),
            &[("authorization", &auth_header)],
        ),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("x-user-id"), Some("user-1"));
    assert_eq!(answer.header("authorization"), Some(auth_header.as_str()));

    // The attack this family rule stops: Traefik copies the client's headers onto the auth
    // request, so a client asking for DELETE /orders/admin/1 adds nginx's header naming the
    // anonymous path. Refused, never read.
    let spoof = send(
        &traefik_auth,
        "127.0.0.1:50000",
        &plus(
            traefik("DELETE", "api.example.com", "/orders/admin/1"),
            &[("x-original-url", "https://api.example.com/orders/healthz")],
        ),
    )
    .await;
    assert_eq!(spoof.status, 400, "{}", spoof.body);
    assert!(spoof.body.contains("request_malformed"), "{}", spoof.body);
    // The reason in full is for the log.
    let mut map = HeaderMap::new();
    for (k, v) in plus(
        traefik("DELETE", "api.example.com", "/orders/admin/1"),
        &[("x-original-url", "https://api.example.com/orders/healthz")],
    ) {
        map.append(k, v.parse().expect("value"));
    }
    let (decision, _, _) = traefik_auth
        .decide(
            "127.0.0.1".parse().expect("ip"),
            &Method::GET,
            &"/auth".parse().expect("uri"),
            &map,
        )
        .await;
    let Decision::Deny(deny) = decision else {
        panic!("allowed")
    };
    assert!(
        deny.description.contains("belongs to another proxy family"),
        "{}",
        deny.description
    );

    // nginx: a client's own X-Forwarded-Uri (auth_request passes every client header on) is
    // refused rather than read.
    let (nginx_auth, _) = auth(true, NGINX, vec![mk_policy("orders", ORDERS)]);
    let spoof = send(
        &nginx_auth,
        "127.0.0.1:50000",
        &plus(
            nginx("https://api.example.com/orders/7", "GET"),
            &[("x-forwarded-uri", "/orders/healthz")],
        ),
    )
    .await;
    assert_eq!(spoof.status, 400, "{}", spoof.body);
    // Without it: the request as nginx describes it, which needs a token.
    let missing = send(
        &nginx_auth,
        "127.0.0.1:50000",
        &nginx("https://api.example.com/orders/7", "GET"),
    )
    .await;
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer realm=\"api.example.com\"")
    );
    assert_eq!(missing.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&missing.body).expect("json");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.starts_with("token_missing")),
        "{body}"
    );

    // The anonymous path really is anonymous, and an identity header the client sends is never
    // echoed back for the proxy to copy upstream.
    let anonymous = send(
        &nginx_auth,
        "127.0.0.1:50000",
        &plus(
            nginx("https://api.example.com/orders/healthz", "GET"),
            &[("x-user-id", "admin"), ("authorization", &auth_header)],
        ),
    )
    .await;
    assert_eq!(anonymous.status, 200, "{}", anonymous.body);
    assert_eq!(
        anonymous.header("x-user-id"),
        None,
        "a client's x-user-id is not echoed"
    );
    // A valid token with a client-sent identity header: the claim's value, not the client's.
    let answer = send(
        &nginx_auth,
        "127.0.0.1:50000",
        &plus(
            nginx("https://api.example.com/orders/7", "GET"),
            &[("x-user-id", "admin"), ("authorization", &auth_header)],
        ),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("x-user-id"), Some("user-1"));

    let text = metrics.encode();
    assert!(
        text.contains("tollgate_decisions_total{transport=\"http\",policy=\"test/orders\",result=\"allow\",reason=\"valid\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn calls_from_untrusted_addresses_are_refused() {
    let (service, _) = auth(
        true,
        "10.0.0.0/8=nginx,10.9.0.0/16=traefik",
        vec![mk_policy("orders", ORDERS)],
    );
    let token = RSA.mint(&good_claims()).expect("mint");
    let auth_header = bearer(&token);
    let nginx_call = plus(
        nginx("https://api.example.com/orders/1", "GET"),
        &[("authorization", &auth_header)],
    );
    // From 127.0.0.1 (not trusted here): refused, whatever the headers say.
    let answer = send(&service, "127.0.0.1:50000", &nginx_call).await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(answer.body.contains("proxy_not_trusted"), "{}", answer.body);
    // From the trusted network the proxy's headers count.
    let answer = send(&service, "10.1.2.3:50000", &nginx_call).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // IPv4-mapped IPv6 peers are matched as IPv4.
    let answer = send(&service, "[::ffff:10.1.2.3]:50000", &nginx_call).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // The most specific network decides the family: 10.9/16 is Traefik.
    let answer = send(&service, "10.9.0.1:50000", &nginx_call).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    let traefik_call = plus(
        traefik("GET", "api.example.com", "/orders/1"),
        &[("authorization", &auth_header)],
    );
    let answer = send(&service, "10.9.0.1:50000", &traefik_call).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[test]
fn every_trusted_network_needs_a_family() {
    let entries: Vec<TrustedProxy> = ["10.0.0.0/8", "192.168.1.7=traefik"]
        .iter()
        .map(|t| parse_trusted(t).expect("entry"))
        .collect();
    let err = resolve_families(&entries, None).expect_err("no default");
    assert!(err.contains("--forward-auth-family"), "{err}");
    let resolved = resolve_families(&entries, Some(Family::Nginx)).expect("default");
    assert_eq!(resolved[0].1, Family::Nginx);
    assert_eq!(resolved[1].1, Family::Traefik);
    assert_eq!(resolved[1].0.to_string(), "192.168.1.7/32");
    assert!(parse_trusted("10.0.0.0/8=haproxy").is_err());
    assert!(parse_trusted("ten").is_err());
}

#[tokio::test]
async fn malformed_forwarded_headers_are_400_never_allow() {
    let (service, _) = auth(true, NGINX, vec![mk_policy("any", "{}")]);
    for headers in [
        nginx("https://h/orders", "GE T"),
        nginx("ftp://h/x", "GET"),
        nginx("not a url", "GET"),
        vec![("x-original-url", "https://h/x".to_string())],
        plus(
            nginx("https://h/x", "GET"),
            &[("x-original-url", "https://h/y")],
        ),
        plus(
            nginx("https://h/x", "GET"),
            &[("X-Original-Method", "DELETE")],
        ),
    ] {
        let answer = send(&service, "127.0.0.1:1", &headers).await;
        assert_eq!(answer.status, 400, "{headers:?}: {}", answer.body);
        let body: serde_json::Value = serde_json::from_str(&answer.body).expect("json");
        assert_eq!(body["error"], "invalid_request");
        assert!(
            body["error_description"]
                .as_str()
                .is_some_and(|d| d.starts_with("request_malformed")),
            "{body}"
        );
    }
    // Paths an upstream could read otherwise are refused by the engine, through either family.
    for url in [
        "https://h/orders/healthz/..%2Fadmin/1",
        "https://h/orders/healthz/../admin/1",
        "https://h/orders/admin;x=1/1",
        "https://h//orders",
    ] {
        let answer = send(&service, "127.0.0.1:1", &nginx(url, "GET")).await;
        assert_eq!(answer.status, 400, "{url}: {}", answer.body);
    }
}

#[tokio::test]
async fn not_ready_answers_503_and_keep_token_false_drops_the_token() {
    let (loading, _) = auth(false, NGINX, vec![mk_policy("any", "{}")]);
    assert_eq!(
        send(&loading, "127.0.0.1:1", &nginx("https://h/", "GET"))
            .await
            .status,
        503
    );

    let (service, _) = auth(
        true,
        NGINX,
        vec![mk_policy(
            "drop",
            "{rules: [{paths: [/public], allowAnonymous: true}], forward: {keepToken: false}}",
        )],
    );
    let token = RSA.mint(&good_claims()).expect("mint");
    for url in ["https://h/x", "https://h/public/x"] {
        let answer = send(
            &service,
            "127.0.0.1:1",
            &plus(nginx(url, "GET"), &[("authorization", &bearer(&token))]),
        )
        .await;
        assert_eq!(answer.status, 200, "{url}");
        assert_eq!(
            answer.header("authorization"),
            None,
            "{url}: the proxy copies nothing: the token is dropped"
        );
    }
}

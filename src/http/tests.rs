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
    (
        ForwardAuth::new(shared, metrics.clone(), trusted, PathPrefix::default()),
        metrics,
    )
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
    call_at(service, peer, "GET", "/auth", headers).await
}

/// A call of `method target` to the router.
async fn call_at(
    service: &ForwardAuth,
    peer: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let peer: SocketAddr = peer.parse().expect("peer");
    let app = service.clone().router().layer(MockConnectInfo(peer));
    let mut request = Request::builder().method(method).uri(target);
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

/// How many decisions `metrics` counted with `reason`: a denial to the nginx family has no body
/// (nginx never reads it), so its reason is read where the operator reads it.
fn counted(metrics: &Metrics, reason: &str) -> u64 {
    let label = format!("reason=\"{reason}\"");
    metrics
        .encode()
        .lines()
        .filter(|line| line.starts_with("tollgate_decisions_total{") && line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
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
    let (nginx_auth, nginx_metrics) = auth(true, NGINX, vec![mk_policy("orders", ORDERS)]);
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
    // No body: nginx's auth_request never reads it, and closes a connection it left unread.
    assert_eq!(missing.header("content-type"), None);
    assert_eq!(missing.body, "");
    assert_eq!(counted(&nginx_metrics, "token_missing"), 1);

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
    let (service, metrics) = auth(true, NGINX, vec![mk_policy("any", "{}")]);
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
        let before = counted(&metrics, "request_malformed");
        let answer = send(&service, "127.0.0.1:1", &headers).await;
        assert_eq!(answer.status, 400, "{headers:?}: {}", answer.body);
        assert_eq!(
            counted(&metrics, "request_malformed"),
            before + 1,
            "{headers:?}"
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

// The `envoy` family: Envoy's HTTP ext_authz protocol.

const ENVOY: &str = "127.0.0.0/8=envoy";

/// The orders policy with a rule needing a role, and the token dropped before the upstream.
const ORDERS_ENVOY: &str = r#"{match: {hosts: [api.example.com], paths: [/orders]},
    rules: [{paths: [/orders/healthz], allowAnonymous: true},
            {paths: [/orders/admin], requiredClaims: [{name: roles, values: [admin]}]}],
    forward: {claimsToHeaders: [{claim: sub, header: x-user-id}], keepToken: false}}"#;

/// Call target, headers, and a fragment of the logged description.
type Refusal = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);
/// Method, host, path and query, token, and the expected status and reason.
type ParityCase<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, u16, &'a str);

#[tokio::test]
async fn envoy_callers_are_judged_on_any_path_and_answered_in_envoys_terms() {
    let (service, metrics) = auth(true, ENVOY, vec![mk_policy("orders", ORDERS_ENVOY)]);
    let token = RSA.mint(&good_claims()).expect("mint");
    let bearer = bearer(&token);
    const HOST: (&str, &str) = ("host", "api.example.com");

    // Allowed: the claim header to set, the token to remove in Envoy's header, nothing else
    // (no echoed token, no cache-control Envoy could copy upstream).
    let ok = call_at(
        &service,
        "127.0.0.1:1",
        "DELETE",
        "/ext-authz/orders/7?x=1",
        &[HOST, ("authorization", &bearer), ("x-user-id", "forged")],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.header("x-user-id"), Some("user-1"));
    assert_eq!(ok.header(ENVOY_HEADERS_TO_REMOVE), Some("authorization"));
    let names: Vec<&str> = ok
        .headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| *k != "content-length")
        .collect();
    assert_eq!(
        names,
        ["x-user-id", ENVOY_HEADERS_TO_REMOVE],
        "{:?}",
        ok.headers
    );
    assert_eq!(ok.body, "");

    // Anonymous: a client's own identity header is removed, never passed on.
    let anonymous = call_at(
        &service,
        "127.0.0.1:1",
        "GET",
        "/ext-authz/orders/healthz",
        &[HOST, ("x-user-id", "forged"), ("authorization", &bearer)],
    )
    .await;
    assert_eq!(anonymous.status, 200, "{}", anonymous.body);
    assert_eq!(anonymous.header("x-user-id"), None);
    assert_eq!(
        anonymous.header(ENVOY_HEADERS_TO_REMOVE),
        Some("x-user-id, authorization")
    );

    // Denied: status, challenge and JSON body, as for every family.
    let missing = call_at(
        &service,
        "127.0.0.1:1",
        "GET",
        "/ext-authz/orders/7",
        &[HOST],
    )
    .await;
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer realm=\"api.example.com\"")
    );
    assert_eq!(missing.header("content-type"), Some("application/json"));
    assert_eq!(missing.header(ENVOY_HEADERS_TO_REMOVE), None);
    let body: serde_json::Value = serde_json::from_str(&missing.body).expect("json");
    assert_eq!(body["error"], "unauthorized", "{body}");

    // Calls that do not follow the protocol: 400, with the reason in the log.
    // (target, headers, fragment of the logged description)
    let refused: &[Refusal] = &[
        (
            "/auth",
            &[HOST],
            "is not /ext-authz/<original path and query>",
        ),
        (
            "/orders/7",
            &[HOST],
            "must be --ext-authz-path-prefix /ext-authz",
        ),
        ("/ext-authzorders/7", &[HOST], "is not /ext-authz/"),
        ("/ext-authz/orders/7", &[], "header host is missing"),
        (
            "/ext-authz/orders/7",
            &[HOST, ("host", "other.example")],
            "header host is sent more than once",
        ),
    ];
    for &(target, headers, fragment) in refused {
        let answer = call_at(&service, "127.0.0.1:1", "GET", target, headers).await;
        assert_eq!(answer.status, 400, "{target}: {}", answer.body);
        let body: serde_json::Value = serde_json::from_str(&answer.body).expect("json");
        assert!(
            body["error_description"]
                .as_str()
                .is_some_and(|d| d.starts_with("request_malformed")),
            "{target}: {body}"
        );
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(*k, v.parse().expect("value"));
        }
        let (decision, _, original) = service
            .decide(
                "127.0.0.1".parse().expect("ip"),
                &Method::GET,
                &target.parse().expect("uri"),
                &map,
            )
            .await;
        let Decision::Deny(deny) = decision else {
            panic!("{target}: allowed")
        };
        assert!(
            deny.description.starts_with("the envoy ext_authz call: ")
                && deny.description.contains(fragment),
            "{target}: {}",
            deny.description
        );
        assert_eq!(original.target, target, "logged as called");
    }

    // The X-Original-*/X-Forwarded-* headers of the other families are neither read nor
    // refused: a CDN's X-Forwarded-Host passes, a forged X-Original-URL changes nothing.
    let forged = call_at(
        &service,
        "127.0.0.1:1",
        "GET",
        "/ext-authz/orders/admin/1",
        &[
            HOST,
            ("authorization", &bearer),
            ("x-original-url", "https://api.example.com/orders/healthz"),
            ("x-forwarded-uri", "/orders/healthz"),
            ("x-forwarded-host", "cdn.example"),
        ],
    )
    .await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(
        forged.body.contains("insufficient_scope"),
        "{}",
        forged.body
    );

    let text = metrics.encode();
    for line in [
        "tollgate_decisions_total{transport=\"http\",policy=\"test/orders\",result=\"allow\",reason=\"valid\"} 1",
        "tollgate_decisions_total{transport=\"http\",policy=\"test/orders\",result=\"allow\",reason=\"anonymous\"} 1",
        "tollgate_decisions_total{transport=\"http\",policy=\"\",result=\"deny\",reason=\"request_malformed\"} 5",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
}

#[tokio::test]
async fn the_path_a_caller_may_use_depends_on_its_family() {
    // 10.1/16 nginx, 10.2/16 traefik, 10.3/16 envoy; 10.9.0.1 is trusted by nobody.
    let mixed = "10.1.0.0/16=nginx,10.2.0.0/16=traefik,10.3.0.0/16=envoy";
    let (service, _) = auth(true, mixed, vec![mk_policy("any", "{}")]);
    let (without_envoy, _) = auth(true, "10.1.0.0/16=nginx,10.2.0.0/16=traefik", vec![]);
    let host = [("host", "api.example.com")];
    // (service, peer, target, status)
    let cases: &[(&ForwardAuth, &str, &str, u16)] = &[
        // nginx and Traefik: /auth only, as before.
        (&service, "10.1.0.1:1", "/ext-authz/x", 404),
        (&service, "10.2.0.1:1", "/ext-authz/x", 404),
        (&service, "10.1.0.1:1", "/auth/x", 404),
        (&service, "10.2.0.1:1", "/", 404),
        // On /auth they are judged (here: their headers are missing).
        (&service, "10.1.0.1:1", "/auth", 400),
        (&service, "10.2.0.1:1", "/auth", 400),
        // Envoy: any path is judged; /auth is not its protocol.
        (&service, "10.3.0.1:1", "/ext-authz/x", 401),
        (&service, "10.3.0.1:1", "/auth", 400),
        (&service, "10.3.0.1:1", "/x", 400),
        // Anyone else: refused where an Envoy would be served, so a missing trusted network
        // reads as such.
        (&service, "10.9.0.1:1", "/ext-authz/x", 403),
        (&service, "10.9.0.1:1", "/auth", 403),
        // Without an envoy network, other paths are 404 for everyone, as before.
        (&without_envoy, "10.9.0.1:1", "/ext-authz/x", 404),
        (&without_envoy, "10.9.0.1:1", "/auth", 403),
    ];
    for &(service, peer, target, status) in cases {
        let answer = call_at(service, peer, "GET", target, &host).await;
        assert_eq!(answer.status, status, "{peer} {target}: {}", answer.body);
        if status == 404 {
            assert_eq!(answer.body, "", "{peer} {target}");
        }
        if status == 403 {
            assert!(answer.body.contains("proxy_not_trusted"), "{}", answer.body);
        }
    }
}

/// The same request through the `envoy` family and through gRPC `Check`: the same decision,
/// status, reason, headers to set and to remove.
#[tokio::test]
async fn envoy_over_http_decides_exactly_as_grpc() {
    use crate::authz::AuthzService;
    use crate::proto::auth::attribute_context::{HttpRequest, Request as AttrRequest};
    use crate::proto::auth::{AttributeContext, CheckRequest};

    let shared = SharedSnapshot::new(DefaultAction::Deny);
    shared.publish(Snapshot::build(vec![mk_policy("orders", ORDERS_ENVOY)], DefaultAction::Deny).0);
    shared.set_ready();
    let metrics = Metrics::new(None, None);
    let grpc = AuthzService::new(shared.clone(), metrics.clone());
    let trusted = resolve_families(&[parse_trusted(ENVOY).expect("cidr")], None).expect("family");
    let http = ForwardAuth::new(shared, metrics, trusted, PathPrefix::default());

    let good = RSA.mint(&good_claims()).expect("mint");
    let admin = RSA
        .mint(&claims_with(serde_json::json!({"roles": ["admin"]})))
        .expect("mint");
    let billing = RSA
        .mint(&claims_with(serde_json::json!({"aud": "api://billing"})))
        .expect("mint");
    let expired = RSA
        .mint(&claims_with(serde_json::json!({"exp": 1_000_000})))
        .expect("mint");
    let rogue = ROGUE.mint(&good_claims()).expect("mint");
    // (method, host, path and query, token, expected status and reason)
    let cases: &[ParityCase] = &[
        (
            "GET",
            "api.example.com",
            "/orders/7",
            Some(&good),
            200,
            "valid",
        ),
        (
            "POST",
            "api.example.com:443",
            "/orders/7?x=1",
            Some(&good),
            200,
            "valid",
        ),
        (
            "GET",
            "api.example.com",
            "/orders/admin/1",
            Some(&admin),
            200,
            "valid",
        ),
        (
            "GET",
            "api.example.com",
            "/orders/healthz",
            None,
            200,
            "anonymous",
        ),
        (
            "GET",
            "api.example.com",
            "/orders/7",
            None,
            401,
            "token_missing",
        ),
        (
            "GET",
            "api.example.com",
            "/orders/7",
            Some(&billing),
            401,
            "audience_mismatch",
        ),
        (
            "GET",
            "api.example.com",
            "/orders/7",
            Some(&expired),
            401,
            "token_expired",
        ),
        (
            "GET",
            "api.example.com",
            "/orders/7",
            Some(&rogue),
            401,
            "signature_invalid",
        ),
        (
            "GET",
            "api.example.com",
            "/orders/7",
            Some("not-a-jwt"),
            401,
            "token_malformed",
        ),
        (
            "GET",
            "api.example.com",
            "/orders/admin/1",
            Some(&good),
            403,
            "insufficient_scope",
        ),
        (
            "DELETE",
            "api.example.com",
            "/orders/admin/1",
            Some(&good),
            403,
            "insufficient_scope",
        ),
        (
            "GET",
            "other.example.com",
            "/orders/7",
            Some(&good),
            403,
            "no_policy",
        ),
        // Hostile paths: refused by the same path reader, whatever the token.
        (
            "GET",
            "api.example.com",
            "/orders/healthz/..%2Fadmin/1",
            None,
            400,
            "request_malformed",
        ),
        (
            "GET",
            "api.example.com",
            "/orders/healthz/../admin/1",
            Some(&good),
            400,
            "request_malformed",
        ),
        (
            "GET",
            "api.example.com",
            "/orders/%2Fadmin",
            Some(&good),
            400,
            "request_malformed",
        ),
        (
            "GET",
            "api.example.com",
            "/orders/admin;x=1/1",
            Some(&admin),
            400,
            "request_malformed",
        ),
        (
            "GET",
            "api.example.com",
            "/orders/%252e%252e/admin",
            Some(&good),
            400,
            "request_malformed",
        ),
        (
            "GET",
            "api.example.com",
            "//orders/admin",
            Some(&good),
            400,
            "request_malformed",
        ),
        (
            "GET",
            "api.example.com",
            "/orders/%2e%2e/admin",
            None,
            400,
            "request_malformed",
        ),
        (
            "GET",
            "api.example.com",
            "/orders/Admin/1",
            Some(&good),
            400,
            "request_malformed",
        ),
        (
            "GET",
            "api.example.com:abc",
            "/orders/healthz",
            None,
            400,
            "request_malformed",
        ),
    ];
    let outcome = |decision: &Decision| match decision {
        Decision::Allow(allow) => (
            200,
            allow.reason.as_str(),
            allow.policy.clone(),
            allow.headers_to_set.clone(),
            allow.headers_to_remove.clone(),
        ),
        Decision::Deny(deny) => (
            deny.status,
            deny.reason.as_str(),
            deny.policy.clone(),
            Vec::new(),
            Vec::new(),
        ),
    };
    for &(method, host, path, token, status, reason) in cases {
        let what = format!("{method} {host}{path} (token: {})", token.is_some());
        let mut headers = std::collections::HashMap::from([
            (":authority".to_string(), host.to_string()),
            (":method".to_string(), method.to_string()),
            (":path".to_string(), path.to_string()),
        ]);
        let mut map = HeaderMap::new();
        map.insert("host", host.parse().expect("host"));
        if let Some(token) = token {
            headers.insert("authorization".into(), bearer(token));
            map.insert("authorization", bearer(token).parse().expect("value"));
        }
        let check = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(AttrRequest {
                    time: None,
                    http: Some(HttpRequest {
                        method: method.into(),
                        host: host.into(),
                        path: path.into(),
                        headers,
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
        };
        let (by_grpc, _) = grpc.decide(&check).await;
        let method_ = Method::from_bytes(method.as_bytes()).expect("method");
        let uri: Uri = format!("/ext-authz{path}").parse().expect("uri");
        let (by_http, _, original) = http
            .decide("127.0.0.1".parse().expect("ip"), &method_, &uri, &map)
            .await;
        assert_eq!(
            (
                original.method.as_str(),
                original.host.as_str(),
                original.target.as_str()
            ),
            (method, host, path),
            "{what}"
        );
        assert_eq!(outcome(&by_http), outcome(&by_grpc), "{what}");
        assert_eq!(
            (outcome(&by_http).0, outcome(&by_http).1),
            (status, reason),
            "{what}"
        );
        if let (Decision::Deny(h), Decision::Deny(g)) = (&by_http, &by_grpc) {
            assert_eq!(
                (&h.www_authenticate, &h.body, &h.description),
                (&g.www_authenticate, &g.body, &g.description),
                "{what}"
            );
        }
        // And the answer on the wire carries that status.
        let mut pairs = vec![("host", host)];
        let auth_value = token.map(bearer);
        if let Some(value) = &auth_value {
            pairs.push(("authorization", value));
        }
        let answer = call_at(&http, "127.0.0.1:1", method, &uri.to_string(), &pairs).await;
        assert_eq!(answer.status, status, "{what}: {}", answer.body);
    }
}

#[test]
fn the_envoy_family_is_a_family_like_the_others() {
    let entry = parse_trusted("10.3.0.0/16=envoy").expect("entry");
    assert_eq!(entry.family, Some(Family::Envoy));
    let err = resolve_families(&[parse_trusted("10.0.0.0/8").expect("entry")], None)
        .expect_err("no family");
    assert!(err.contains("nginx|traefik|envoy"), "{err}");
    assert!(
        parse_trusted("10.0.0.0/8=istio")
            .expect_err("not a family")
            .contains("nginx, traefik or envoy")
    );
}

const MCP: &str = "{match: {hosts: [api.example.com], paths: [/mcp]}, resourceMetadata: {resource: 'https://api.example.com/mcp'}}";
const MCP_METADATA: &str = "/.well-known/oauth-protected-resource/mcp";

#[tokio::test]
async fn the_listener_serves_declared_metadata_documents_to_any_caller() {
    let (service, _) = auth(
        true,
        "10.0.0.0/8=nginx,10.1.0.0/16=envoy",
        vec![mk_policy("mcp", MCP)],
    );
    // A proxy routing the path to tollgate (nginx, Envoy without a check prefix), or anyone.
    for peer in ["10.0.0.1:1", "10.1.0.1:1", "192.0.2.1:1"] {
        let answer = call_at(
            &service,
            peer,
            "GET",
            MCP_METADATA,
            &[("host", "api.example.com")],
        )
        .await;
        assert_eq!(answer.status, 200, "{peer}: {}", answer.body);
        assert_eq!(answer.header("content-type"), Some("application/json"));
        assert_eq!(answer.header("cache-control"), Some("public, max-age=300"));
        let doc: serde_json::Value = serde_json::from_str(&answer.body).expect("json");
        assert_eq!(doc["resource"], "https://api.example.com/mcp");
    }
    let head = call_at(
        &service,
        "10.0.0.1:1",
        "HEAD",
        MCP_METADATA,
        &[("host", "api.example.com")],
    )
    .await;
    assert_eq!(head.status, 200);
    for (method, target, host, status) in [
        ("GET", MCP_METADATA, "other.example.com", 403),
        (
            "GET",
            "/.well-known/oauth-protected-resource",
            "api.example.com",
            403,
        ),
        ("POST", MCP_METADATA, "api.example.com", 405),
    ] {
        let answer = call_at(&service, "10.0.0.1:1", method, target, &[("host", host)]).await;
        assert_eq!(
            answer.status, status,
            "{method} {host}{target}: {}",
            answer.body
        );
        assert_ne!(answer.header("cache-control"), Some("public, max-age=300"));
    }
}

#[tokio::test]
async fn forward_auth_never_lets_a_metadata_request_through() {
    let (service, metrics) = auth(
        true,
        "10.0.0.0/8=nginx,10.1.0.0/16=envoy",
        vec![mk_policy("mcp", MCP)],
    );
    // nginx asks about the well-known path: a 2xx would send it upstream unchecked.
    let nginx = send(
        &service,
        "10.0.0.1:1",
        &nginx(
            "https://api.example.com/.well-known/oauth-protected-resource/mcp",
            "GET",
        ),
    )
    .await;
    assert_eq!(nginx.status, 404, "{}", nginx.body);
    assert_eq!(counted(&metrics, "resource_metadata"), 1);
    // Envoy's HTTP ext_authz check of the same request, under its prefix.
    let envoy = call_at(
        &service,
        "10.1.0.1:1",
        "GET",
        &format!("/ext-authz{MCP_METADATA}"),
        &[("host", "api.example.com")],
    )
    .await;
    assert_eq!(envoy.status, 404, "{}", envoy.body);
    assert_eq!(envoy.header("cache-control"), Some("no-store"));
}

/// A dry-run policy over forward auth: a would-be denial is a 200 that echoes neither the
/// token (keepToken: false) nor an identity header, and the replica's window records it.
#[tokio::test]
async fn forward_auth_allows_and_records_what_a_dry_run_policy_would_deny() {
    let policy = mk_policy(
        "orders",
        "{mode: dryRun, match: {hosts: [api.example.com]}, forward: {claimsToHeaders: [{claim: sub, header: x-user-id}], keepToken: false}}",
    );
    let (nginx_auth, metrics) = auth(true, NGINX, vec![policy]);
    let expired = RSA
        .mint(&claims_with(serde_json::json!({"exp": 1})))
        .expect("mint");
    let answer = send(
        &nginx_auth,
        "127.0.0.1:50000",
        &plus(
            nginx("https://api.example.com/orders/1", "GET"),
            &[
                ("authorization", &bearer(&expired)),
                ("x-user-id", "forged"),
            ],
        ),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("x-user-id"), None);
    assert_eq!(answer.header("authorization"), None);
    let text = metrics.encode();
    assert!(
        text.contains(
            "tollgate_dry_run_denials_total{policy=\"test/orders\",reason=\"token_expired\"} 1"
        ),
        "{text}"
    );
    let report = nginx_auth.shared.dry_run().report(SystemTime::now());
    assert_eq!(report["test/orders"].1.denials["token_expired"], 1);
}

#[tokio::test]
async fn forwarded_certificates_are_read_only_from_the_proxies_trusted_to_set_them() {
    use base64::Engine as _;
    let (mine, digest) = client_certificate(&["billing.partners.example"]);
    let (other, _) = client_certificate(&["billing.partners.example"]);
    let claims = claims_with(serde_json::json!({"cnf": {
        "x5t#S256": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest)}}));
    let token = RSA.mint(&claims).expect("mint");
    let auth_header = bearer(&token);
    // Loopback is a trusted nginx; only 127.0.0.2 also forwards certificates.
    let (service, metrics) = auth(true, NGINX, vec![mk_policy("orders", ORDERS)]);
    let service = service.with_client_cert_proxies(vec![(
        "127.0.0.2/32".parse().expect("net"),
        CertHeader::Xfcc,
    )]);
    let request = |cert: Option<&str>| {
        let mut headers = plus(
            nginx("https://api.example.com/orders/1", "GET"),
            &[("authorization", &auth_header)],
        );
        if let Some(cert) = cert {
            headers.push((
                forwarded_cert::XFCC,
                format!("Hash=00;Cert=\"{cert}\";Subject=\"CN=billing-client\""),
            ));
        }
        headers
    };
    let cases = [
        ("127.0.0.2:1", Some(mine.as_str()), 200, "valid"),
        (
            "127.0.0.2:1",
            Some(other.as_str()),
            401,
            "certificate_binding_mismatch",
        ),
        ("127.0.0.2:1", None, 401, "certificate_missing"),
        // The same header, from a proxy trusted for forward auth but not for certificates:
        // the client may have written it.
        (
            "127.0.0.1:1",
            Some(mine.as_str()),
            403,
            "certificate_untrusted",
        ),
        ("127.0.0.1:1", None, 401, "certificate_missing"),
    ];
    for (peer, cert, status, reason) in cases {
        let before = counted(&metrics, reason);
        let answer = send(&service, peer, &request(cert)).await;
        assert_eq!(answer.status, status, "{peer} {cert:?}: {}", answer.body);
        assert_eq!(counted(&metrics, reason), before + 1, "{peer} {cert:?}");
    }
    // A header that does not read from the trusted proxy is a malformed request.
    let mut bad = request(None);
    bad.push((forwarded_cert::XFCC, "Hash=00".into()));
    assert_eq!(send(&service, "127.0.0.2:1", &bad).await.status, 400);
}

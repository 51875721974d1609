use std::collections::HashMap;

use serde_json::json;

use super::*;
use crate::fixtures::*;
use crate::local_issuer::now_secs;
use crate::policy::DefaultAction;

struct Req {
    host: &'static str,
    path: String,
    method: &'static str,
    headers: HashMap<String, String>,
    policy: Option<&'static str>,
    certificate: Option<String>,
}

fn req(path: &str) -> Req {
    Req {
        host: "api.example.com",
        path: path.into(),
        method: "GET",
        headers: HashMap::new(),
        policy: None,
        certificate: None,
    }
}

impl Req {
    fn bearer(mut self, token: &str) -> Self {
        self.headers
            .insert("authorization".into(), format!("Bearer {token}"));
        self
    }
    fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.insert(k.into(), v.into());
        self
    }
    fn method(mut self, m: &'static str) -> Self {
        self.method = m;
        self
    }
    fn policy(mut self, p: &'static str) -> Self {
        self.policy = Some(p);
        self
    }
    /// The client certificate, as Envoy sends it.
    fn certificate(mut self, encoded: &str) -> Self {
        self.certificate = Some(encoded.into());
        self
    }
}

async fn decide(snapshot: &Snapshot, r: &Req) -> Decision {
    let request = Request {
        host: r.host,
        path: &r.path,
        method: r.method,
        headers: Headers::Map(&r.headers),
        policy: r.policy,
        route: None,
        source: Peer {
            certificate: r.certificate.as_deref(),
            ..Peer::default()
        },
    };
    check(snapshot, &request, SystemTime::now()).await
}

fn snapshot(policies: &[Arc<Policy>], default_action: DefaultAction) -> Snapshot {
    Snapshot::build(policies.to_vec(), default_action).0
}

fn good() -> String {
    RSA.mint(&good_claims()).expect("mint")
}

fn denied(decision: &Decision) -> &crate::decision::Deny {
    match decision {
        Decision::Deny(d) => d,
        Decision::Allow(a) => panic!("expected a denial, got {a:?}"),
    }
}

fn allowed(decision: &Decision) -> &crate::decision::Allow {
    match decision {
        Decision::Allow(a) => a,
        Decision::Deny(d) => panic!(
            "expected allow, got {} {}: {}",
            d.status, d.reason, d.description
        ),
    }
}

const ORDERS: &str = r#"{match: {hosts: [api.example.com], paths: [/orders]},
    rules: [{paths: [/orders/admin], requiredClaims: [{name: roles, values: [admin]}]},
            {paths: [/orders/healthz], allowAnonymous: true}],
    forward: {claimsToHeaders: [{claim: sub, header: x-user-id}, {claim: email, header: x-email}], payloadHeader: x-jwt-payload}}"#;

#[tokio::test]
async fn a_valid_token_is_allowed_with_forward_headers() {
    let s = snapshot(&[mk_policy("orders", ORDERS)], DefaultAction::Deny);
    let decision = decide(
        &s,
        &req("/orders/1")
            .bearer(&good())
            .header("x-email", "spoofed@evil"),
    )
    .await;
    let allow = allowed(&decision);
    assert_eq!(allow.policy.as_deref(), Some("test/orders"));
    assert_eq!(allow.reason, Reason::Valid);
    assert!(
        allow
            .headers_to_set
            .contains(&("x-user-id".into(), "user-1".into()))
    );
    // The token has no email: the client's own x-email must not reach the upstream.
    assert_eq!(allow.headers_to_remove, ["x-email"]);
    let payload = allow
        .headers_to_set
        .iter()
        .find(|(k, _)| k == "x-jwt-payload")
        .expect("payload")
        .1
        .clone();
    let decoded: serde_json::Value =
        serde_json::from_slice(&B64.decode(payload).expect("b64")).expect("json");
    assert_eq!(decoded["sub"], "user-1");
    assert_eq!(
        allow.claims.as_ref().expect("claims").map()["sub"],
        "user-1"
    );
    assert_eq!(allow.issuer.as_deref(), Some(ISSUER));
}

#[tokio::test]
async fn a_missing_token_is_a_challenge_without_error_code() {
    let s = snapshot(&[mk_policy("orders", ORDERS)], DefaultAction::Deny);
    let decision = decide(&s, &req("/orders")).await;
    let deny = denied(&decision);
    assert_eq!(deny.status, 401);
    assert_eq!(deny.reason, Reason::TokenMissing);
    assert_eq!(
        deny.www_authenticate.as_deref(),
        Some("Bearer realm=\"api.example.com\"")
    );
    let body: serde_json::Value = serde_json::from_str(&deny.body).expect("json");
    assert_eq!(body["error"], "unauthorized");
    // Clients get the code and its fixed text; the details are for the log.
    assert_eq!(
        body["error_description"],
        "token_missing: no access token in the request"
    );
    assert!(
        deny.description
            .starts_with("no token in the authorization header"),
        "{}",
        deny.description
    );
}

#[tokio::test]
async fn an_invalid_token_says_why() {
    let s = snapshot(&[mk_policy("orders", ORDERS)], DefaultAction::Deny);
    let expired = RSA
        .mint(&claims_with(json!({"exp": now_secs() - 3600})))
        .expect("mint");
    let decision = decide(&s, &req("/orders").bearer(&expired)).await;
    let deny = denied(&decision);
    assert_eq!((deny.status, deny.reason), (401, Reason::TokenExpired));
    let challenge = deny.www_authenticate.as_deref().expect("challenge");
    assert_eq!(
        challenge,
        "Bearer realm=\"api.example.com\", error=\"invalid_token\", error_description=\"token_expired: the access token has expired\""
    );
    assert!(
        deny.description.starts_with("the token expired at "),
        "{}",
        deny.description
    );
    assert!(
        deny.hint
            .as_deref()
            .is_some_and(|h| h.contains("clockSkew"))
    );
    assert_eq!(
        deny.token_id.as_deref(),
        Some(crate::jose::fingerprint(&expired).as_str())
    );
    let body: serde_json::Value = serde_json::from_str(&deny.body).expect("json");
    assert_eq!(body["error"], "invalid_token");
}

#[tokio::test]
async fn rules_answer_403_insufficient_scope_and_anonymous_paths_pass() {
    let s = snapshot(&[mk_policy("orders", ORDERS)], DefaultAction::Deny);
    let deny_decision = decide(&s, &req("/orders/admin/users").bearer(&good())).await;
    let deny = denied(&deny_decision);
    assert_eq!((deny.status, deny.reason), (403, Reason::InsufficientScope));
    assert!(
        deny.www_authenticate
            .as_deref()
            .is_some_and(|c| c.contains("error=\"insufficient_scope\""))
    );

    let admin = RSA
        .mint(&claims_with(json!({"roles": ["admin"]})))
        .expect("mint");
    allowed(&decide(&s, &req("/orders/admin/users").bearer(&admin)).await);

    let anonymous_decision = decide(&s, &req("/orders/healthz").header("x-user-id", "root")).await;
    let anonymous = allowed(&anonymous_decision);
    assert_eq!(anonymous.reason, Reason::Anonymous);
    assert!(
        anonymous
            .headers_to_remove
            .contains(&"x-user-id".to_string()),
        "identity headers are stripped"
    );

    // Spelling the admin path another way is refused, never judged as the anonymous path (or
    // as anything else an upstream might not serve).
    for sneaky in [
        "/orders/healthz/../admin",
        "/orders/healthz/..%2Fadmin",
        "/orders//admin",
        "/orders/healthz/..;/admin",
        "/orders/admin;x=1",
    ] {
        let decision = decide(&s, &req(sneaky)).await;
        assert_eq!(
            denied(&decision).reason,
            Reason::RequestMalformed,
            "{sneaky}"
        );
        assert_eq!(denied(&decision).status, 400, "{sneaky}");
    }
}

#[tokio::test]
async fn selection_defaults_and_explicit_policies() {
    let orders = mk_policy("orders", ORDERS);
    let other = mk_policy("other", "{match: {hosts: [other.example.com]}}");
    let deny_all = snapshot(&[orders.clone(), other.clone()], DefaultAction::Deny);
    let decision = decide(&deny_all, &req("/users").bearer(&good())).await;
    let deny = denied(&decision);
    assert_eq!((deny.status, deny.reason), (403, Reason::NoPolicy));
    assert!(deny.www_authenticate.is_none());

    let allow_rest = snapshot(std::slice::from_ref(&orders), DefaultAction::Allow);
    assert_eq!(
        allowed(&decide(&allow_rest, &req("/users")).await).reason,
        Reason::DefaultAllow
    );

    // The route names a policy: it judges, whatever the host.
    allowed(
        &decide(
            &deny_all,
            &req("/users").bearer(&good()).policy("test/other"),
        )
        .await,
    );
    let decision = decide(&deny_all, &req("/users").policy("test/missing")).await;
    assert_eq!(denied(&decision).reason, Reason::PolicyNotFound);
    // A named policy that is missing never falls back to the default action.
    let decision = decide(&allow_rest, &req("/users").policy("test/missing")).await;
    assert_eq!(denied(&decision).status, 403);

    let decision = decide(&deny_all, &req("/a%zz")).await;
    assert_eq!(denied(&decision).reason, Reason::RequestMalformed);
}

#[tokio::test]
async fn deny_settings_shape_the_answer() {
    let quiet = mk_policy(
        "quiet",
        r#"{deny: {status: 403, detail: none, message: "Access token is missing or invalid.", realm: shop}}"#,
    );
    let s = snapshot(&[quiet], DefaultAction::Deny);
    let decision = decide(&s, &req("/").bearer("a.b.c")).await;
    let deny = denied(&decision);
    assert_eq!(deny.status, 403);
    assert_eq!(
        deny.www_authenticate.as_deref(),
        Some("Bearer realm=\"shop\", error=\"invalid_token\"")
    );
    let body: serde_json::Value = serde_json::from_str(&deny.body).expect("json");
    assert_eq!(
        body["error_description"],
        "Access token is missing or invalid."
    );
    assert_eq!(body["message"], "Access token is missing or invalid.");
    assert_eq!(
        deny.reason,
        Reason::TokenMalformed,
        "the reason is still recorded for logs and metrics"
    );
}

#[tokio::test]
async fn tokens_from_query_and_cookie_can_be_removed_before_the_upstream() {
    let p = mk_policy(
        "p",
        "{token: {query: access_token, cookie: at}, forward: {keepToken: false}}",
    );
    let s = snapshot(&[p], DefaultAction::Deny);
    let t = good();
    let from_header = decide(&s, &req("/x").bearer(&t)).await;
    assert_eq!(allowed(&from_header).headers_to_remove, ["authorization"]);
    let from_query = decide(&s, &req(&format!("/x?a=1&access_token={t}"))).await;
    assert_eq!(
        allowed(&from_query).query_params_to_remove,
        ["access_token"]
    );
    let from_cookie = decide(&s, &req("/x").header("cookie", &format!("lang=en; at={t}"))).await;
    assert_eq!(
        allowed(&from_cookie).headers_to_set,
        [("cookie".to_string(), "lang=en".to_string())]
    );
    let twice = decide(&s, &req(&format!("/x?access_token={t}")).bearer(&t)).await;
    assert_eq!(denied(&twice).reason, Reason::TokenMalformed);
}

#[tokio::test]
async fn methods_and_error_descriptions_are_safe_in_headers() {
    let p = mk_policy("p", "{match: {methods: [GET]}}");
    let s = snapshot(&[p], DefaultAction::Deny);
    assert_eq!(
        denied(&decide(&s, &req("/").method("POST")).await).reason,
        Reason::NoPolicy
    );
    let weird_iss = RSA
        .mint(&claims_with(json!({"iss": "evil\"\\\r\n"})))
        .expect("mint");
    let decision = decide(&s, &req("/").bearer(&weird_iss)).await;
    let challenge = denied(&decision)
        .www_authenticate
        .clone()
        .expect("challenge");
    assert!(
        challenge.chars().all(|c| (' '..='~').contains(&c)),
        "{challenge:?}"
    );
    assert_eq!(
        challenge.matches('"').count(),
        6,
        "only the quotes of the three parameters: {challenge}"
    );
}

mod admitted;
mod azure;
mod bound;
mod cache;
mod cel;
mod dpop;
mod encrypted;
mod hostile;
mod issuers;

/// A policy attached to one route that matches on a header and a query parameter.
fn header_and_query_routed() -> Snapshot {
    let policy = targeting(
        "test",
        "beta",
        "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: beta}]",
    );
    let attached = attach_to(
        &[policy],
        &[(
            "test",
            "eg",
            "listeners: [{name: http, protocol: HTTP, port: 80}]",
        )],
        &[(
            "test",
            "beta",
            "2026-01-01T00:00:00Z",
            "parentRefs: [{name: eg}]\nhostnames: [api.example.com]\nrules: [{matches: [{path: {value: /orders}, headers: [{name: x-beta, value: 'yes'}], queryParams: [{name: v, value: '2'}]}]}]",
        )],
    );
    snapshot(&attached, DefaultAction::Deny)
}

#[tokio::test]
async fn route_header_and_query_matches_are_read_one_way_or_refused() {
    let snapshot = header_and_query_routed();
    let token = good();
    let ok = decide(
        &snapshot,
        &req("/orders/1?v=2").header("x-beta", "yes").bearer(&token),
    )
    .await;
    assert_eq!(allowed(&ok).policy.as_deref(), Some("test/beta"));
    // Without the header or with another value, the route does not match.
    let other = decide(&snapshot, &req("/orders/1?v=2").bearer(&token)).await;
    assert_eq!(denied(&other).reason, Reason::NoPolicy);
    // Query parameters that gateways and upstreams read differently are refused.
    for path in [
        "/orders/1?v=2&v=3",
        "/orders/1?%76=2",
        "/orders/1?v=%32",
        "/orders/1?v=2+",
    ] {
        let d = decide(&snapshot, &req(path).header("x-beta", "yes").bearer(&token)).await;
        assert_eq!(denied(&d).reason, Reason::RequestMalformed, "{path}");
        assert_eq!(denied(&d).status, 400, "{path}");
    }
    // A matched header sent twice (one header line each) is refused.
    let list = vec![
        ("x-beta".to_string(), "yes".to_string()),
        ("X-Beta".to_string(), "no".to_string()),
        ("authorization".to_string(), format!("Bearer {token}")),
    ];
    let request = Request {
        host: "api.example.com",
        path: "/orders/1?v=2",
        method: "GET",
        headers: Headers::List(&list),
        policy: None,
        route: None,
        source: Default::default(),
    };
    let d = check(&snapshot, &request, SystemTime::now()).await;
    assert_eq!(denied(&d).reason, Reason::RequestMalformed);
    assert!(
        denied(&d)
            .description
            .contains("x-beta header is sent more than once"),
        "{}",
        denied(&d).description
    );
}

#[tokio::test]
async fn a_route_two_listener_policies_judge_is_refused_with_policy_conflict() {
    let policies: Vec<Arc<Policy>> = ["public", "internal"]
        .iter()
        .map(|listener| {
            targeting(
                "infra",
                listener,
                &format!(
                    "[{{group: gateway.networking.k8s.io, kind: Gateway, name: eg, sectionName: {listener}}}]"
                ),
            )
        })
        .collect();
    let attached = attach_to(
        &policies,
        &[(
            "infra",
            "eg",
            "listeners: [{name: public, protocol: HTTP, port: 80}, {name: internal, protocol: HTTP, port: 8080}]",
        )],
        &[(
            "infra",
            "orders",
            "2026-01-01T00:00:00Z",
            "parentRefs: [{name: eg}]\nhostnames: [api.example.com]\nrules: [{matches: [{path: {value: /orders}}]}]",
        )],
    );
    let snapshot = snapshot(&attached, DefaultAction::Allow);
    let d = decide(&snapshot, &req("/orders/1").bearer(&good())).await;
    let deny = denied(&d);
    assert_eq!((deny.status, deny.reason), (403, Reason::PolicyConflict));
    assert!(
        deny.description.contains("infra/public") && deny.description.contains("infra/internal"),
        "{}",
        deny.description
    );
    // Elsewhere on the host, nothing is claimed: --default-action applies.
    let other = decide(&snapshot, &req("/cart")).await;
    assert_eq!(allowed(&other).reason, Reason::DefaultAllow);
}

/// Every check's future is built and moved (boxed by the gRPC server) on each request, so its
/// size is copied per check: the slow paths (introspection, key fetches, verification on a
/// cache miss) are boxed where they are awaited. Unboxed they made it about 30 KB.
#[test]
fn a_checks_future_stays_small() {
    fn size_of<F: std::future::Future>(_: &F) -> usize {
        std::mem::size_of::<F>()
    }
    let snapshot = snapshot(&[mk_policy("p", "")], DefaultAction::Deny);
    let headers = HashMap::new();
    let request = Request {
        host: "api.example.com",
        path: "/",
        method: "GET",
        headers: Headers::Map(&headers),
        policy: None,
        route: None,
        source: Peer::default(),
    };
    let future = check(&snapshot, &request, SystemTime::now());
    let size = size_of(&future);
    assert!(size <= 8 * 1024, "a check's future is {size} bytes");
}

use std::sync::Arc;

use super::*;
use crate::fixtures::*;
use crate::policy::{DefaultAction, Snapshot};
use crate::proto::auth::attribute_context::{HttpRequest, Request as AttrRequest};
use crate::proto::auth::{AttributeContext, CheckRequest};
use crate::proto::core::HeaderMap;

fn service(ready: bool) -> AuthzService {
    let shared = SharedSnapshot::new(DefaultAction::Deny);
    let policy = mk_policy(
        "orders",
        "{match: {hosts: [api.example.com]}, forward: {claimsToHeaders: [{claim: sub, header: x-user-id}]}}",
    );
    shared.publish(Snapshot::build(vec![policy], DefaultAction::Deny).0);
    if ready {
        shared.set_ready();
    }
    AuthzService::new(shared, Metrics::new(None, None))
}

fn request(http: HttpRequest) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                time: None,
                http: Some(http),
            }),
            ..Default::default()
        }),
    }
}

fn http(token: Option<&str>) -> HttpRequest {
    let mut headers = std::collections::HashMap::new();
    if let Some(token) = token {
        headers.insert("authorization".to_string(), format!("Bearer {token}"));
    }
    HttpRequest {
        method: "GET".into(),
        host: "api.example.com".into(),
        path: "/orders".into(),
        headers,
        ..Default::default()
    }
}

fn denied(response: &CheckResponse) -> &DeniedHttpResponse {
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(d)) => d,
        other => panic!("expected a denied response, got {other:?}"),
    }
}

#[tokio::test]
async fn allow_carries_headers_and_claims_metadata() {
    let token = RSA.mint(&good_claims()).expect("mint");
    let (decision, _) = service(true).decide(&request(http(Some(&token)))).await;
    let response = to_check_response(&decision);
    assert_eq!(response.status.as_ref().map(|s| s.code), Some(0));
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        panic!("ok")
    };
    let header = ok.headers[0].header.as_ref().expect("header");
    assert_eq!(
        (header.key.as_str(), header.value.as_str()),
        ("x-user-id", "user-1")
    );
    assert_eq!(
        ok.headers[0].append_action,
        HeaderAppendAction::OverwriteIfExistsOrAdd as i32
    );
    let fields = &response.dynamic_metadata.as_ref().expect("metadata").fields;
    assert_eq!(
        fields["policy"].kind,
        Some(Kind::StringValue("test/orders".into()))
    );
    let Some(Kind::StructValue(claims)) = &fields["claims"].kind else {
        panic!("claims struct")
    };
    assert_eq!(
        claims.fields["sub"].kind,
        Some(Kind::StringValue("user-1".into()))
    );
}

#[tokio::test]
async fn raw_header_maps_are_read_too() {
    let token = RSA.mint(&good_claims()).expect("mint");
    let mut h = http(None);
    h.header_map = Some(HeaderMap {
        headers: vec![HeaderValue {
            key: "Authorization".into(),
            value: String::new(),
            raw_value: format!("Bearer {token}").into_bytes(),
        }],
    });
    let (decision, _) = service(true).decide(&request(h)).await;
    assert!(decision.is_allow(), "{decision:?}");
}

#[tokio::test]
async fn denials_set_the_http_status_explicitly() {
    let svc = service(true);
    let cases = [
        (
            request(http(None)),
            401,
            code::UNAUTHENTICATED,
            "token_missing",
        ),
        (
            request(http(Some("a.b.c"))),
            401,
            code::UNAUTHENTICATED,
            "token_malformed",
        ),
        (
            request(HttpRequest {
                host: "other".into(),
                ..http(None)
            }),
            403,
            code::PERMISSION_DENIED,
            "no_policy",
        ),
        (
            CheckRequest { attributes: None },
            400,
            code::INVALID_ARGUMENT,
            "request_malformed",
        ),
    ];
    for (req, status, grpc, reason) in cases {
        let (decision, _) = svc.decide(&req).await;
        let response = to_check_response(&decision);
        assert_eq!(
            response.status.as_ref().map(|s| s.code),
            Some(grpc),
            "{reason}"
        );
        let d = denied(&response);
        assert_eq!(d.status.as_ref().map(|s| s.code), Some(status), "{reason}");
        assert_eq!(
            response.dynamic_metadata.as_ref().expect("metadata").fields["reason"].kind,
            Some(Kind::StringValue(reason.into()))
        );
        let names: Vec<&str> = d
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| h.key.as_str())
            .collect();
        assert!(
            names.contains(&"content-type") && names.contains(&"cache-control"),
            "{names:?}"
        );
    }
}

#[tokio::test]
async fn not_ready_answers_503_without_judging() {
    let token = RSA.mint(&good_claims()).expect("mint");
    let (decision, _) = service(false).decide(&request(http(Some(&token)))).await;
    let response = to_check_response(&decision);
    assert_eq!(
        response.status.as_ref().map(|s| s.code),
        Some(code::UNAVAILABLE)
    );
    assert_eq!(denied(&response).status.as_ref().map(|s| s.code), Some(503));
}

#[test]
fn the_service_is_registered_under_envoys_name() {
    let metrics = Metrics::new(None, None);
    let server = AuthzService::new(
        SharedSnapshot::new(DefaultAction::Deny),
        Arc::clone(&metrics),
    )
    .into_server();
    assert_eq!(
        <AuthorizationServer<AuthzService> as tonic::server::NamedService>::NAME,
        "envoy.service.auth.v3.Authorization"
    );
    drop(server);
}

#[tokio::test]
async fn the_trace_header_returns_the_trace_only_with_the_secret() {
    use std::io::Write as _;
    let mut secret = tempfile::NamedTempFile::new().expect("temp file");
    secret
        .write_all(b"let-me-see-the-trace-0123\n")
        .expect("write");
    let shared = SharedSnapshot::new(DefaultAction::Deny);
    let policy = mk_policy(
        "orders",
        &format!(
            "{{match: {{hosts: [api.example.com]}}, debug: {{traceHeader: {{name: X-Debug-Key, value: {{file: {:?}}}}}}}}}",
            secret.path()
        ),
    );
    shared.publish(Snapshot::build(vec![policy], DefaultAction::Deny).0);
    shared.set_ready();
    let service = AuthzService::new(shared, Metrics::new(None, None));
    let trace_of = |headers: &[HeaderValueOption]| {
        headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == trace::RESPONSE_HEADER)
            .map(|h| h.value.clone())
    };

    // A denial with the secret: the trace names the failed check, its reason and the fix.
    let expired = RSA
        .mint(&claims_with(serde_json::json!({"exp": 1})))
        .expect("mint");
    let mut with_secret = http(Some(&expired));
    with_secret
        .headers
        .insert("x-debug-key".into(), "let-me-see-the-trace-0123".into());
    let (decision, _) = service.decide(&request(with_secret.clone())).await;
    let response = to_check_response(&decision);
    let trace = trace_of(&denied(&response).headers).expect("trace header");
    assert!(
        trace.contains("exp FAIL: the token expired at 1970-01-01T00:00:01Z")
            && trace.contains("[token_expired] fix: the clock skew allowed is 30s"),
        "{trace}"
    );
    assert!(trace.bytes().all(|b| (b' '..=b'~').contains(&b)));

    // The wrong secret, or none: no trace.
    let mut wrong = with_secret.clone();
    wrong
        .headers
        .insert("x-debug-key".into(), "let-me-see-the-trace-0124".into());
    for http in [wrong, http(Some(&expired))] {
        let (decision, _) = service.decide(&request(http)).await;
        assert_eq!(
            trace_of(&denied(&to_check_response(&decision)).headers),
            None
        );
    }

    // An allowed request with the secret: the trace goes back to the client, the secret does
    // not go upstream.
    let good = RSA.mint(&good_claims()).expect("mint");
    let mut allowed = http(Some(&good));
    allowed
        .headers
        .insert("x-debug-key".into(), "let-me-see-the-trace-0123".into());
    let (decision, _) = service.decide(&request(allowed)).await;
    let Some(HttpResponse::OkResponse(ok)) = to_check_response(&decision).http_response else {
        panic!("expected an allow");
    };
    let trace = trace_of(&ok.response_headers_to_add).expect("trace header");
    assert!(
        trace.contains("signature ok: verified with key \"rsa-1\""),
        "{trace}"
    );
    assert!(ok.headers_to_remove.contains(&"x-debug-key".to_string()));
}

#[test]
fn cached_claims_give_the_same_metadata_as_parsed_ones() {
    let claims: serde_json::Map<String, serde_json::Value> = serde_json::from_value(
        serde_json::json!({"sub": "user-1", "n": 3, "neg": -2, "f": 1.5, "ok": true, "none": null,
            "roles": ["a", "b"], "nested": {"deep": [1, {"x": "y"}]}, "esc": "q\"\\u00e9"}),
    )
    .expect("claims");
    let json: std::sync::Arc<str> = serde_json::to_string(&claims).expect("json").into();
    let parsed = claims_struct(&ClaimSet::Parsed(std::sync::Arc::new(claims)));
    let cached = claims_struct(&ClaimSet::Json(json));
    assert_eq!(parsed, cached);
    assert_eq!(parsed.fields.len(), 9);
}

/// Envoy Gateway's route metadata, as its xDS puts it on a route.
fn envoy_gateway_metadata(resource: serde_json::Value) -> crate::proto::core::Metadata {
    fn value(v: &serde_json::Value) -> prost_types::Value {
        let kind = match v {
            serde_json::Value::String(s) => Kind::StringValue(s.clone()),
            serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
                values: items.iter().map(value).collect(),
            }),
            serde_json::Value::Object(map) => Kind::StructValue(prost_types::Struct {
                fields: map.iter().map(|(k, v)| (k.clone(), value(v))).collect(),
            }),
            _ => Kind::NullValue(0),
        };
        prost_types::Value { kind: Some(kind) }
    }
    let Some(Kind::StructValue(fields)) = value(&serde_json::json!({"resources": [resource]})).kind
    else {
        unreachable!("an object is a struct");
    };
    crate::proto::core::Metadata {
        filter_metadata: HashMap::from([(ENVOY_GATEWAY_METADATA.to_string(), fields)]),
    }
}

#[test]
fn envoy_gateway_route_metadata_names_the_route_and_rule() {
    use crate::policy::snapshot::RouteName;
    let read = |resource| route_from_metadata(&envoy_gateway_metadata(resource));
    assert_eq!(
        read(
            serde_json::json!({"kind": "HTTPRoute", "namespace": "shop", "name": "orders", "sectionName": "write"})
        ),
        Some(RouteName {
            namespace: "shop".into(),
            name: "orders".into(),
            section: Some("write".into()),
        })
    );
    assert_eq!(
        read(serde_json::json!({"kind": "HTTPRoute", "namespace": "shop", "name": "orders"})),
        Some(RouteName {
            namespace: "shop".into(),
            name: "orders".into(),
            section: None,
        })
    );
    // Not an HTTPRoute, or incomplete: no route is named (selection by host and path).
    assert_eq!(
        read(serde_json::json!({"kind": "GRPCRoute", "namespace": "shop", "name": "orders"})),
        None
    );
    assert_eq!(
        read(serde_json::json!({"kind": "HTTPRoute", "name": "orders"})),
        None
    );
    assert_eq!(
        route_from_metadata(&crate::proto::core::Metadata::default()),
        None
    );
}

/// A dry-run policy over the whole gRPC path: the answer allows and tells the gateway what it
/// would have denied, the metric counts it, the replica's window holds it.
#[tokio::test]
async fn a_dry_run_policy_allows_and_reports_what_it_would_deny() {
    let shared = SharedSnapshot::new(DefaultAction::Deny);
    let policy = mk_policy(
        "orders",
        "{mode: dryRun, match: {hosts: [api.example.com]}, forward: {claimsToHeaders: [{claim: sub, header: x-user-id}]}}",
    );
    shared.publish(Snapshot::build(vec![policy], DefaultAction::Deny).0);
    shared.set_ready();
    let metrics = Metrics::new(None, None);
    let service = AuthzService::new(shared.clone(), metrics.clone());
    let expired = RSA
        .mint(&claims_with(serde_json::json!({"exp": 1})))
        .expect("mint");
    for token in [None, Some(expired.as_str()), Some(expired.as_str())] {
        let response = service
            .check(tonic::Request::new(request(http(token))))
            .await
            .expect("an answer")
            .into_inner()
            .into_message()
            .expect("an answer prost decodes");
        let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
            panic!("expected an allow, got {response:?}");
        };
        assert_eq!(ok.headers_to_remove, ["x-user-id"]);
        assert!(ok.headers.is_empty());
        let fields = &response.dynamic_metadata.expect("metadata").fields;
        let reason = if token.is_some() {
            "token_expired"
        } else {
            "token_missing"
        };
        assert_eq!(fields["dry_run"], string_value(reason));
        assert_eq!(
            fields["dry_run_status"].kind,
            Some(Kind::NumberValue(401.0))
        );
        assert!(!fields.contains_key("claims"));
    }
    let text = metrics.encode();
    for line in [
        "tollgate_dry_run_denials_total{policy=\"test/orders\",reason=\"token_missing\"} 1",
        "tollgate_dry_run_denials_total{policy=\"test/orders\",reason=\"token_expired\"} 2",
        "tollgate_decisions_total{transport=\"grpc\",policy=\"test/orders\",result=\"allow\",reason=\"dry_run\"} 3",
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
    let report = shared.dry_run().report(std::time::SystemTime::now());
    let (_, window) = &report["test/orders"];
    assert_eq!(window.requests, 3);
    assert_eq!(window.denials["token_expired"], 2);
}

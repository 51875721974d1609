//! Envoy's external authorization API (`envoy.service.auth.v3.Authorization/Check`) over the
//! decision engine. The only module that knows protobuf on the server side.
//!
//! A denied request is a successful RPC carrying a `denied_response` with the HTTP status set
//! explicitly (Envoy answers 403 otherwise). Even malformed check requests and "not ready" get a
//! denied response rather than an RPC error, so a proxy configured with `failure_mode_allow`
//! still never lets them through.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use prost_types::value::Kind;
use tonic::{Request, Response, Status};

use crate::decision::{ClaimSet, Decision, Reason};
use crate::decision_log::{DecisionLog, Origin};
use crate::engine::{self, Headers};
use crate::metrics::Metrics;
use crate::policy::SharedSnapshot;
use crate::proto::auth::authorization_server::{Authorization, AuthorizationServer};
use crate::proto::auth::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response::HttpResponse,
};
use crate::proto::core::header_value_option::HeaderAppendAction;
use crate::proto::core::{HeaderValue, HeaderValueOption};
use crate::proto::http_type::HttpStatus;
use crate::telemetry::{self, RequestInfo};
use crate::trace;

mod answer;
pub use answer::Answer;

/// The route's context extension that names a policy explicitly (`namespace/name`).
pub const POLICY_EXTENSION: &str = "tollgate.dev/policy";

/// gRPC status codes used in `CheckResponse.status`.
mod code {
    pub const OK: i32 = 0;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// The ext_authz gRPC service.
#[derive(Clone)]
pub struct AuthzService {
    shared: Arc<SharedSnapshot>,
    metrics: Arc<Metrics>,
    decision_log: DecisionLog,
    /// OpenTelemetry traces, when on.
    tracing: Option<crate::otel::Tracing>,
}

impl AuthzService {
    pub fn new(shared: Arc<SharedSnapshot>, metrics: Arc<Metrics>) -> Self {
        AuthzService {
            shared,
            metrics,
            decision_log: DecisionLog::default(),
            tracing: None,
        }
    }

    /// Records every decision in the decision log (`--decision-log`).
    pub fn with_decision_log(mut self, log: DecisionLog) -> Self {
        self.decision_log = log;
        self
    }

    /// Records a span per check (OpenTelemetry), joined to the caller's trace.
    pub fn with_tracing(mut self, tracing: Option<crate::otel::Tracing>) -> Self {
        self.tracing = tracing;
        self
    }

    /// The tonic server wrapper, with request size bounds.
    pub fn into_server(self) -> AuthorizationServer<Self> {
        AuthorizationServer::new(self).max_decoding_message_size(1024 * 1024)
    }

    /// Decides one `CheckRequest`.
    pub async fn decide<'a>(&self, request: &'a CheckRequest) -> (Decision, RequestInfo<'a>) {
        let http = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let Some(http) = http else {
            let info = RequestInfo {
                transport: "grpc",
                ..RequestInfo::default()
            };
            let decision = engine::deny(
                None,
                "",
                Reason::RequestMalformed,
                "the check request has no HTTP attributes (is this the HTTP ext_authz filter?)"
                    .into(),
                None,
                None,
            );
            return (decision, info);
        };
        // Envoy's `id` is its stream number; the x-request-id header is what its access log and
        // the upstream see, so that is the id the decision log carries when present.
        let request_id = http
            .headers
            .get("x-request-id")
            .filter(|id| !id.is_empty())
            .unwrap_or(&http.id);
        let route = request
            .attributes
            .as_ref()
            .and_then(|a| a.route_metadata_context.as_ref())
            .and_then(route_from_metadata);
        let info = RequestInfo {
            transport: "grpc",
            request_id,
            method: &http.method,
            host: &http.host,
            path: &http.path,
            route: route.as_ref().map(|r| match &r.section {
                Some(rule) => format!("{}/{} rule {rule}", r.namespace, r.name),
                None => format!("{}/{}", r.namespace, r.name),
            }),
        };
        if !self.shared.is_ready() {
            return (engine::not_ready(&http.host), info);
        }
        let raw: Vec<(String, String)>;
        let headers = if http.headers.is_empty() && http.header_map.is_some() {
            raw = http
                .header_map
                .iter()
                .flat_map(|m| &m.headers)
                .map(|h| {
                    let value = if h.raw_value.is_empty() {
                        h.value.clone()
                    } else {
                        String::from_utf8_lossy(&h.raw_value).into_owned()
                    };
                    (h.key.to_ascii_lowercase(), value)
                })
                .collect();
            Headers::List(&raw)
        } else {
            Headers::Map(&http.headers)
        };
        let policy = request
            .attributes
            .as_ref()
            .and_then(|a| a.context_extensions.get(POLICY_EXTENSION))
            .map(String::as_str)
            .filter(|p| !p.is_empty());
        let host = if http.host.is_empty() {
            http.headers.get(":authority").map_or("", String::as_str)
        } else {
            &http.host
        };
        let peer = request.attributes.as_ref().and_then(|a| a.source.as_ref());
        let source = engine::Peer {
            address: source_address(request),
            principal: peer.map(|p| p.principal.as_str()).filter(|p| !p.is_empty()),
            certificate: peer
                .map(|p| p.certificate.as_str())
                .filter(|c| !c.is_empty()),
            scheme: Some(http.scheme.as_str()).filter(|s| matches!(*s, "http" | "https")),
        };
        let req = engine::Request {
            host,
            path: &http.path,
            method: &http.method,
            headers,
            policy,
            route: route.as_ref(),
            source,
        };
        let snapshot = self.shared.load_full();
        let decision = engine::check(&snapshot, &req, SystemTime::now()).await;
        (decision, info)
    }
}

/// The downstream client's address as Envoy reports it (`attributes.source.address`).
fn source_address(request: &CheckRequest) -> Option<&str> {
    let address = request
        .attributes
        .as_ref()?
        .source
        .as_ref()?
        .address
        .as_ref()?;
    match &address.address {
        Some(crate::proto::core::address::Address::SocketAddress(s)) if !s.address.is_empty() => {
            Some(s.address.as_str())
        }
        _ => None,
    }
}

/// The filter metadata namespace under which Envoy Gateway describes the Gateway API object a
/// route comes from (`resources: [{kind, namespace, name, sectionName}]`).
pub const ENVOY_GATEWAY_METADATA: &str = "envoy-gateway";

/// The HTTPRoute (and rule) of a request, from Envoy Gateway's route metadata when the ext_authz
/// filter forwards it (`route_metadata_context`). `None` when absent or not an HTTPRoute.
pub fn route_from_metadata(
    metadata: &crate::proto::core::Metadata,
) -> Option<crate::policy::snapshot::RouteName> {
    let fields = &metadata.filter_metadata.get(ENVOY_GATEWAY_METADATA)?.fields;
    let Some(Kind::ListValue(list)) = fields.get("resources")?.kind.as_ref() else {
        return None;
    };
    let Some(Kind::StructValue(first)) = list.values.first()?.kind.as_ref() else {
        return None;
    };
    let text = |key: &str| match first.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    if text("kind")? != "HTTPRoute" {
        return None;
    }
    Some(crate::policy::snapshot::RouteName {
        namespace: text("namespace")?,
        name: text("name")?,
        section: text("sectionName"),
    })
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<Answer>, Status> {
        let start = Instant::now();
        let proxy = request.remote_addr().map(|a| a.ip());
        let span = self
            .tracing
            .as_ref()
            .map(|tracing| tracing.check_span("grpc", grpc_parent(&request)));
        let request = request.into_inner();
        // Off, the check awaits `decide` as it always did: no wrapper, no context.
        let (decision, info) = match &span {
            Some(cx) => crate::otel::traced(cx, self.decide(&request)).await,
            None => self.decide(&request).await,
        };
        if let Some(span) = &span {
            crate::otel::finish_check(span, &decision);
        }
        self.metrics.observe("grpc", &decision, start.elapsed());
        let client = source_address(&request);
        let origin = Origin { proxy, client };
        self.decision_log
            .record(&info, &decision, start.elapsed(), origin);
        telemetry::log_decision(&info, &decision);
        self.shared
            .dry_run()
            .observe(&info, &decision, SystemTime::now());
        Ok(Response::new(to_answer(&decision)))
    }
}

/// The trace a check joins: the span of the proxy's call (Envoy puts `traceparent` in the
/// gRPC metadata of the ext_authz call when it traces), else the judged request's own.
fn grpc_parent(request: &Request<CheckRequest>) -> Option<opentelemetry::trace::SpanContext> {
    let metadata = request.metadata();
    let text = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
    if let Some(parent) = crate::otel::remote_parent(
        text(crate::otel::TRACEPARENT),
        text(crate::otel::TRACESTATE),
    ) {
        return Some(parent);
    }
    let http = request
        .get_ref()
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())?;
    let header = |name: &str| -> Option<String> {
        match http.headers.get(name) {
            Some(value) => Some(value.clone()),
            None => http
                .header_map
                .iter()
                .flat_map(|m| &m.headers)
                .find(|h| h.key.eq_ignore_ascii_case(name))
                .map(|h| {
                    if h.raw_value.is_empty() {
                        h.value.clone()
                    } else {
                        String::from_utf8_lossy(&h.raw_value).into_owned()
                    }
                }),
        }
    };
    crate::otel::remote_parent(
        header(crate::otel::TRACEPARENT).as_deref(),
        header(crate::otel::TRACESTATE).as_deref(),
    )
}

#[allow(deprecated)] // `append` must stay unset; `append_action` replaces it
fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: value.to_string(),
            raw_value: Vec::new(),
        }),
        append: None,
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        keep_empty_value: false,
    }
}

/// The `x-tollgate-trace` header's value, when the policy's trace header asked for it.
fn trace_value(decision: &Decision) -> Option<String> {
    decision
        .trace()
        .filter(|t| t.expose)
        .map(|t| t.to_header_value())
}

/// The `x-tollgate-trace` header, when the policy's trace header asked for it.
fn trace_header(decision: &Decision) -> Option<HeaderValueOption> {
    trace_value(decision).map(|value| header(trace::RESPONSE_HEADER, &value))
}

/// Envoy's answer as the server sends it: an allow encoded straight from the decision
/// ([`answer::allow`], the bytes of [`to_check_response`]'s message without building it), a
/// denial built.
pub fn to_answer(decision: &Decision) -> Answer {
    match decision {
        Decision::Allow(allow) => {
            let trace = trace_value(decision);
            let trace = trace
                .as_deref()
                .map(|value| (trace::RESPONSE_HEADER, value));
            Answer::Encoded(answer::allow(allow, trace))
        }
        Decision::Deny(_) => Answer::Message(to_check_response(decision)),
    }
}

/// Converts a decision into Envoy's answer, as a message.
pub fn to_check_response(decision: &Decision) -> CheckResponse {
    let trace = trace_header(decision);
    match decision {
        Decision::Allow(allow) => {
            let mut metadata = BTreeMap::new();
            if let Some(policy) = &allow.policy {
                metadata.insert("policy".to_string(), string_value(policy));
            }
            if let Some(issuer) = &allow.issuer {
                metadata.insert("issuer".to_string(), string_value(issuer));
            }
            // A dry-run policy's would-be denial, for the gateway's access log
            // (`%DYNAMIC_METADATA(envoy.filters.http.ext_authz:dry_run)%`).
            if let Some(deny) = &allow.dry_run {
                metadata.insert("dry_run".to_string(), string_value(deny.reason.as_str()));
                metadata.insert(
                    "dry_run_status".to_string(),
                    prost_types::Value {
                        kind: Some(Kind::NumberValue(f64::from(deny.status))),
                    },
                );
            }
            if let Some(claims) = &allow.claims {
                metadata.insert(
                    "claims".to_string(),
                    prost_types::Value {
                        kind: Some(Kind::StructValue(claims_struct(claims))),
                    },
                );
            }
            CheckResponse {
                status: Some(crate::proto::google::rpc::Status {
                    code: code::OK,
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: allow
                        .headers_to_set
                        .iter()
                        .map(|(k, v)| header(k, v))
                        .collect(),
                    headers_to_remove: allow.headers_to_remove.clone(),
                    query_parameters_to_remove: allow.query_params_to_remove.clone(),
                    // To the client's response: the trace, a renewed DPoP nonce.
                    response_headers_to_add: trace
                        .into_iter()
                        .chain(allow.response_headers.iter().map(|(k, v)| header(k, v)))
                        .collect(),
                    ..Default::default()
                })),
                dynamic_metadata: (!metadata.is_empty())
                    .then_some(prost_types::Struct { fields: metadata }),
            }
        }
        Decision::Deny(deny) => {
            let grpc = match deny.status {
                401 => code::UNAUTHENTICATED,
                400 => code::INVALID_ARGUMENT,
                503 => code::UNAVAILABLE,
                500..=599 => code::INTERNAL,
                _ => code::PERMISSION_DENIED,
            };
            // A metadata document (status 200) keeps a non-OK code: with OK, Envoy would let
            // the request through to the upstream instead of sending the document.
            let mut headers: Vec<HeaderValueOption> = deny
                .headers()
                .iter()
                .map(|(name, value)| header(name, value))
                .collect();
            headers.extend(trace);
            CheckResponse {
                status: Some(crate::proto::google::rpc::Status {
                    code: grpc,
                    message: deny.reason.as_str().to_string(),
                    details: Vec::new(),
                }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: i32::from(deny.status),
                    }),
                    headers,
                    body: deny.body.clone(),
                })),
                dynamic_metadata: Some(prost_types::Struct {
                    fields: BTreeMap::from([(
                        "reason".to_string(),
                        string_value(deny.reason.as_str()),
                    )]),
                }),
            }
        }
    }
}

fn string_value(s: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

/// The claims as a protobuf `Struct`: from the map, or straight from the cached JSON text in
/// one pass (no intermediate map).
fn claims_struct(claims: &ClaimSet) -> prost_types::Struct {
    match claims {
        ClaimSet::Parsed(map) => to_proto_struct(map),
        ClaimSet::Json(json) | ClaimSet::Cached { json, .. } => {
            serde_json::from_str::<ProtoStruct>(json)
                .map(|s| s.0)
                .unwrap_or_default()
        }
    }
}

struct ProtoStruct(prost_types::Struct);
struct ProtoValue(prost_types::Value);

struct ProtoVisitor;

impl<'de> serde::de::Visitor<'de> for ProtoVisitor {
    type Value = ProtoValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<ProtoValue, E> {
        Ok(kind(Kind::BoolValue(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<ProtoValue, E> {
        Ok(kind(Kind::NumberValue(v as f64)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<ProtoValue, E> {
        Ok(kind(Kind::NumberValue(v as f64)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<ProtoValue, E> {
        Ok(kind(Kind::NumberValue(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<ProtoValue, E> {
        Ok(kind(Kind::StringValue(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<ProtoValue, E> {
        Ok(kind(Kind::StringValue(v)))
    }
    fn visit_unit<E>(self) -> Result<ProtoValue, E> {
        Ok(kind(Kind::NullValue(0)))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<ProtoValue, A::Error> {
        let mut values = Vec::new();
        while let Some(ProtoValue(v)) = seq.next_element()? {
            values.push(v);
        }
        Ok(kind(Kind::ListValue(prost_types::ListValue { values })))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ProtoValue, A::Error> {
        let mut fields = BTreeMap::new();
        while let Some((k, ProtoValue(v))) = map.next_entry::<String, ProtoValue>()? {
            fields.insert(k, v);
        }
        Ok(kind(Kind::StructValue(prost_types::Struct { fields })))
    }
}

fn kind(kind: Kind) -> ProtoValue {
    ProtoValue(prost_types::Value { kind: Some(kind) })
}

impl<'de> serde::Deserialize<'de> for ProtoValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ProtoVisitor)
    }
}

impl<'de> serde::Deserialize<'de> for ProtoStruct {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_map(ProtoVisitor)?.0.kind {
            Some(Kind::StructValue(s)) => Ok(ProtoStruct(s)),
            _ => Err(serde::de::Error::custom("the claims are not a JSON object")),
        }
    }
}

/// A parsed map, through the same visitor as the JSON text (`&Value` is a deserializer too).
fn to_proto_struct(map: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    use serde::Deserialize as _;
    prost_types::Struct {
        fields: map
            .iter()
            .filter_map(|(k, v)| ProtoValue::deserialize(v).ok().map(|p| (k.clone(), p.0)))
            .collect(),
    }
}

/// Headers of a `CheckRequest` built by hand (the CLI and tests).
pub fn request_headers(pairs: &[(String, String)]) -> HashMap<String, String> {
    let mut map: HashMap<String, String> = HashMap::new();
    for (k, v) in pairs {
        map.entry(k.to_ascii_lowercase())
            .and_modify(|existing| {
                existing.push(',');
                existing.push_str(v);
            })
            .or_insert_with(|| v.clone());
    }
    map
}

#[cfg(test)]
mod tests;

//! OpenTelemetry traces: one `check` span per decision, joined to the trace of the request it
//! judges, with child spans for the I/O and the costly work a check waits for.
//!
//! ```text
//! Envoy span (traceparent in the gRPC call's metadata, or in the judged request's headers)
//!   └─ check            server  tollgate.policy, tollgate.decision, tollgate.reason, tollgate.issuer
//!        ├─ keys.fetch  client  a key set fetch the check waited for (unknown kid, first use)
//!        ├─ introspect  client  an RFC 7662 call (status, never the token)
//!        │    (both calls carry `traceparent` naming their span, so the IdP's trace joins)
//!        └─ jwe.decrypt internal
//! ```
//!
//! Off unless `OTEL_TRACES_EXPORTER=otlp` (and `OTEL_SDK_DISABLED` is not `true`). Off costs a
//! branch: the transports hold an `Option<Tracing>`, and the child spans look for the tracer
//! in the current OpenTelemetry context, which only a traced check sets. There is no global
//! tracer provider.
//!
//! What a client sends is hostile: `traceparent` and `tracestate` are read strictly and
//! bounded, and only decide which trace the span joins (and, with a `parentbased_*` sampler,
//! whether it is sampled), never the decision. Attributes never hold a token or a claim value.

use std::future::Future;
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{BatchConfigBuilder, Sampler, SdkTracer, SdkTracerProvider};

use crate::decision::Decision;

/// The W3C trace context request header.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C vendor trace state request header.
pub const TRACESTATE: &str = "tracestate";
/// Longest `tracestate` read; a longer one is dropped (the trace is still joined).
const MAX_TRACESTATE_BYTES: usize = 512;
/// Longest `traceparent` read (a future version may append fields; ours has 55 bytes).
const MAX_TRACEPARENT_BYTES: usize = 256;
/// The service name when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` gives one.
pub const DEFAULT_SERVICE_NAME: &str = "tollgate";
/// How long the last export may take on shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// A bad `OTEL_*` setting: reported at startup, never guessed around.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    /// `OTEL_TRACES_EXPORTER` names an exporter tollgate does not have.
    #[error("OTEL_TRACES_EXPORTER={0:?}: tollgate exports traces with \"otlp\" (or \"none\")")]
    Exporter(String),
    /// The OTLP protocol is not one tollgate speaks.
    #[error("{var}={value:?}: the OTLP protocol is \"grpc\" or \"http/protobuf\"")]
    Protocol { var: &'static str, value: String },
    /// The sampler is unknown.
    #[error(
        "OTEL_TRACES_SAMPLER={0:?}: one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
    )]
    Sampler(String),
    /// The sampler's ratio is not a number from 0 to 1.
    #[error("OTEL_TRACES_SAMPLER_ARG={0:?}: a ratio from 0 to 1")]
    SamplerArg(String),
    /// The collector's endpoint is not an http(s) URL.
    #[error("{var}={value:?}: the collector's URL, http:// or https://")]
    Endpoint { var: &'static str, value: String },
    /// `OTEL_SDK_DISABLED` is neither true nor false.
    #[error("OTEL_SDK_DISABLED={0:?}: true or false")]
    Disabled(String),
    /// The exporter could not be built (a bad endpoint, header or timeout).
    #[error("the OTLP span exporter: {0}")]
    Build(String),
}

impl OtelError {
    /// A bounded code for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            OtelError::Exporter(_) => "exporter",
            OtelError::Protocol { .. } => "protocol",
            OtelError::Sampler(_) => "sampler",
            OtelError::SamplerArg(_) => "sampler_arg",
            OtelError::Endpoint { .. } => "endpoint",
            OtelError::Disabled(_) => "disabled",
            OtelError::Build(_) => "build",
        }
    }
}

/// How spans travel to the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC (port 4317 by convention).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318, path `/v1/traces`); the spec's default.
    HttpProtobuf,
}

/// Which checks are recorded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SamplerSetting {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    /// Follow the caller's `sampled` flag; roots (no valid parent) by the inner setting.
    ParentBased(ParentlessRoot),
}

/// The sampling of roots under [`SamplerSetting::ParentBased`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParentlessRoot {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
}

/// Tracing settings read from the `OTEL_*` environment variables. The endpoint, headers,
/// timeout and compression are read by the OTLP exporter itself (the standard variables).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub protocol: Protocol,
    pub sampler: SamplerSetting,
    /// `Some("tollgate")` unless the environment names the service.
    pub service_name: Option<String>,
    /// The collector's URL, overriding `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT` (benchmarks and
    /// tests; `None` from the environment).
    pub endpoint: Option<String>,
}

impl Settings {
    /// Reads the settings from the process environment; `None`: tracing is off.
    pub fn from_env() -> Result<Option<Settings>, OtelError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `var` (the environment, or a table in tests).
    pub fn from_lookup(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Settings>, OtelError> {
        let value = |name: &str| {
            var(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        match value("OTEL_SDK_DISABLED").map(|v| v.to_ascii_lowercase()) {
            Some(v) if v == "true" => return Ok(None),
            Some(v) if v == "false" => {}
            None => {}
            Some(other) => return Err(OtelError::Disabled(other)),
        }
        match value("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("none") => return Ok(None),
            Some("otlp") => {}
            Some(other) => return Err(OtelError::Exporter(other.to_string())),
        }
        let protocol = {
            let (var, text) = match value("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
                Some(v) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", Some(v)),
                None => (
                    "OTEL_EXPORTER_OTLP_PROTOCOL",
                    value("OTEL_EXPORTER_OTLP_PROTOCOL"),
                ),
            };
            match text.as_deref() {
                None | Some("http/protobuf") => Protocol::HttpProtobuf,
                Some("grpc") => Protocol::Grpc,
                Some(other) => {
                    return Err(OtelError::Protocol {
                        var,
                        value: other.to_string(),
                    });
                }
            }
        };
        for var in [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ] {
            if let Some(text) = value(var) {
                let url = url::Url::parse(&text).ok();
                if !url.is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host()) {
                    return Err(OtelError::Endpoint { var, value: text });
                }
            }
        }
        let ratio = || -> Result<f64, OtelError> {
            match value("OTEL_TRACES_SAMPLER_ARG") {
                None => Ok(1.0),
                Some(text) => text
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or(OtelError::SamplerArg(text)),
            }
        };
        let sampler = match value("OTEL_TRACES_SAMPLER").as_deref() {
            None | Some("parentbased_always_on") => {
                SamplerSetting::ParentBased(ParentlessRoot::AlwaysOn)
            }
            Some("parentbased_always_off") => {
                SamplerSetting::ParentBased(ParentlessRoot::AlwaysOff)
            }
            Some("parentbased_traceidratio") => {
                SamplerSetting::ParentBased(ParentlessRoot::Ratio(ratio()?))
            }
            Some("always_on") => SamplerSetting::AlwaysOn,
            Some("always_off") => SamplerSetting::AlwaysOff,
            Some("traceidratio") => SamplerSetting::Ratio(ratio()?),
            Some(other) => return Err(OtelError::Sampler(other.to_string())),
        };
        let named = value("OTEL_SERVICE_NAME").is_some()
            || value("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attrs| {
                attrs
                    .split(',')
                    .any(|kv| kv.split('=').next().map(str::trim) == Some("service.name"))
            });
        Ok(Some(Settings {
            protocol,
            sampler,
            service_name: (!named).then(|| DEFAULT_SERVICE_NAME.to_string()),
            endpoint: None,
        }))
    }

    fn sdk_sampler(&self) -> Sampler {
        let root = |root: ParentlessRoot| match root {
            ParentlessRoot::AlwaysOn => Sampler::AlwaysOn,
            ParentlessRoot::AlwaysOff => Sampler::AlwaysOff,
            ParentlessRoot::Ratio(r) => Sampler::TraceIdRatioBased(r),
        };
        match self.sampler {
            SamplerSetting::AlwaysOn => Sampler::AlwaysOn,
            SamplerSetting::AlwaysOff => Sampler::AlwaysOff,
            SamplerSetting::Ratio(r) => Sampler::TraceIdRatioBased(r),
            SamplerSetting::ParentBased(r) => Sampler::ParentBased(Box::new(root(r))),
        }
    }
}

/// The tracer of a serving process. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// Carried in a traced check's context, so that child spans find the tracer without a global.
#[derive(Clone)]
struct Handle(SdkTracer);

impl Tracing {
    /// Builds the exporter and the batch processor (on the current tokio runtime).
    pub fn start(settings: &Settings) -> Result<Tracing, OtelError> {
        let exporter = match (settings.protocol, settings.endpoint.clone()) {
            (Protocol::Grpc, None) => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build(),
            (Protocol::Grpc, Some(endpoint)) => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build(),
            (Protocol::HttpProtobuf, endpoint) => {
                let builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
                match endpoint {
                    Some(endpoint) => builder.with_endpoint(endpoint).build(),
                    None => builder.build(),
                }
            }
        }
        .map_err(|e| OtelError::Build(e.to_string()))?;
        // Bounded: 2048 spans wait at most (OTEL_BSP_MAX_QUEUE_SIZE); beyond, new spans are
        // dropped, never waited for. OTEL_BSP_* are read here.
        let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
            .with_batch_config(BatchConfigBuilder::default().build())
            .build();
        let mut resource = Resource::builder();
        if let Some(name) = &settings.service_name {
            resource = resource.with_service_name(name.clone());
        }
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(settings.sdk_sampler())
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("tollgate");
        Ok(Tracing { provider, tracer })
    }

    /// Starts the `check` span of one request, a child of `parent` when the request carries
    /// a valid trace context. The returned context is the one to run the check in.
    pub fn check_span(&self, transport: &'static str, parent: Option<SpanContext>) -> Context {
        let parent_cx = match parent {
            Some(parent) => Context::new().with_remote_span_context(parent),
            None => Context::new(),
        };
        let span = self
            .tracer
            .span_builder("check")
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new("tollgate.transport", transport)])
            .start_with_context(&self.tracer, &parent_cx);
        parent_cx
            .with_span(span)
            .with_value(Handle(self.tracer.clone()))
    }

    /// Exports what is queued and stops the exporter (bounded by a timeout). Called once the
    /// servers have drained.
    pub async fn shutdown(&self) {
        let provider = self.provider.clone();
        let result =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
                .await;
        match result {
            Ok(Ok(())) => tracing::debug!("trace exporter flushed and stopped"),
            Ok(Err(e)) => tracing::warn!(error = %e, "trace exporter shutdown"),
            Err(e) => tracing::warn!(error = %e, "trace exporter shutdown"),
        }
    }
}

/// The parent a request names: `traceparent` (version 00, or a later version's first four
/// fields), strictly; `tracestate` kept when it is valid and short. `None` for anything else.
pub fn remote_parent(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<SpanContext> {
    let text = traceparent?.trim_matches([' ', '\t']);
    if text.len() > MAX_TRACEPARENT_BYTES || text.len() < 55 || !text.is_ascii() {
        return None;
    }
    let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let (version, rest) = text.split_at(2);
    if !lower_hex(version) || version == "ff" {
        return None;
    }
    // Version 00 is exactly 55 bytes; a later version may append "-…" fields.
    if (version == "00" && text.len() != 55) || (text.len() > 55 && &text[55..56] != "-") {
        return None;
    }
    let fields = &rest[..53];
    let bytes = fields.as_bytes();
    if bytes[0] != b'-' || bytes[33] != b'-' || bytes[50] != b'-' {
        return None;
    }
    let (trace_id, span_id, flags) = (&fields[1..33], &fields[34..50], &fields[51..53]);
    if !lower_hex(trace_id) || !lower_hex(span_id) || !lower_hex(flags) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let state = tracestate
        .filter(|s| s.len() <= MAX_TRACESTATE_BYTES)
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    // Only the sampled bit is defined; others are not passed on.
    let flags = TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8());
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// Records the decision on the check span of `cx` and ends it.
pub fn finish_check(cx: &Context, decision: &Decision) {
    let span = cx.span();
    let (result, status) = match decision {
        Decision::Allow(_) => ("allow", 200),
        Decision::Deny(deny) if deny.is_document() => ("answer", deny.status),
        Decision::Deny(deny) => ("deny", deny.status),
    };
    let mut attributes = vec![
        KeyValue::new("tollgate.decision", result),
        KeyValue::new("tollgate.reason", decision.reason().as_str()),
        KeyValue::new("http.response.status_code", i64::from(status)),
    ];
    let policy = match decision {
        Decision::Allow(allow) => allow.policy.as_deref(),
        Decision::Deny(deny) => deny.policy.as_deref(),
    };
    if let Some(policy) = policy {
        attributes.push(KeyValue::new("tollgate.policy", policy.to_string()));
    }
    if let Decision::Allow(allow) = decision {
        // The issuer whose keys verified the token: configured, never an unverified `iss`.
        if let Some(issuer) = &allow.issuer {
            attributes.push(KeyValue::new("tollgate.issuer", issuer.clone()));
        }
        if let Some(would) = &allow.dry_run {
            attributes.push(KeyValue::new(
                "tollgate.dry_run.reason",
                would.reason.as_str(),
            ));
        }
    }
    span.set_attributes(attributes);
    if status >= 500 {
        span.set_status(Status::error(decision.reason().as_str()));
    }
    span.end();
}

/// Starts a child span of the traced check this task runs for; `None` (and nothing done
/// beyond reading the context) when the check is not traced.
pub fn child(name: &'static str, kind: SpanKind) -> Option<Context> {
    Context::map_current(|cx| {
        let Handle(tracer) = cx.get::<Handle>()?;
        if !cx.has_active_span() {
            return None;
        }
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .start_with_context(tracer, cx);
        Some(cx.with_span(span))
    })
}

/// The trace context to send on an outbound call a traced check waits for (a key set fetch, an
/// introspection call): `traceparent` naming the current span (the call's own child span),
/// and `tracestate` when the trace carries one. So an identity provider that traces joins the
/// check's trace. `None` outside a traced check (background refreshes, tracing off).
pub fn outgoing() -> Option<(String, Option<String>)> {
    Context::map_current(|cx| {
        cx.get::<Handle>()?;
        if !cx.has_active_span() {
            return None;
        }
        let span = cx.span();
        let context = span.span_context();
        if !context.is_valid() {
            return None;
        }
        let state = context.trace_state().header();
        Some((
            format!(
                "00-{}-{}-{:02x}",
                context.trace_id(),
                context.span_id(),
                context.trace_flags().to_u8()
            ),
            (!state.is_empty()).then_some(state),
        ))
    })
}

/// Runs `future` inside `cx` (a [`child`] span) when there is one.
pub async fn within<F: Future>(cx: &Option<Context>, future: F) -> F::Output {
    use opentelemetry::context::FutureExt as _;
    match cx {
        Some(cx) => future.with_context(cx.clone()).await,
        None => future.await,
    }
}

/// Ends a [`child`] span with its attributes and, when `error` is set, an error status.
pub fn end_child(
    cx: Option<Context>,
    attributes: Vec<KeyValue>,
    error: Option<std::borrow::Cow<'static, str>>,
) {
    let Some(cx) = cx else { return };
    let span = cx.span();
    span.set_attributes(attributes);
    if let Some(error) = error {
        span.set_status(Status::error(error));
    }
    span.end();
}

/// Runs a traced check's `future` inside its span's context. (An untraced check awaits its
/// future directly: wrapping it would move it into another state machine for nothing.)
pub fn traced<F: Future>(cx: &Context, future: F) -> opentelemetry::context::WithContext<F> {
    use opentelemetry::context::FutureExt as _;
    future.with_context(cx.clone())
}

#[cfg(test)]
mod tests;

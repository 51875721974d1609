//! `tollgate authorize`: sends one `Check` to a running tollgate (or anything speaking the
//! ext_authz API) and prints the decision as a proxy would apply it.

use std::collections::HashMap;
use std::fmt::Write as _;

use anyhow::Context as _;

use crate::authz::{POLICY_EXTENSION, request_headers};
use crate::proto::auth::attribute_context::{HttpRequest, Request as AttrRequest};
use crate::proto::auth::authorization_client::AuthorizationClient;
use crate::proto::auth::check_response::HttpResponse;
use crate::proto::auth::{AttributeContext, CheckRequest, CheckResponse};

/// One request to judge.
#[derive(Clone, Debug, Default)]
pub struct Probe {
    pub host: String,
    pub path: String,
    pub method: String,
    /// Sent as `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
    /// Extra headers (`name`, `value`).
    pub headers: Vec<(String, String)>,
    /// Explicit policy selection (`namespace/name`), as a route's context extension would.
    pub policy: Option<String>,
}

/// Builds the `CheckRequest` Envoy would send for `probe`.
pub fn check_request(probe: &Probe) -> CheckRequest {
    let mut pairs = probe.headers.clone();
    if let Some(token) = &probe.token {
        pairs.push(("authorization".into(), format!("Bearer {token}")));
    }
    pairs.push((":authority".into(), probe.host.clone()));
    pairs.push((":path".into(), probe.path.clone()));
    pairs.push((":method".into(), probe.method.clone()));
    let mut context_extensions = HashMap::new();
    if let Some(policy) = &probe.policy {
        context_extensions.insert(POLICY_EXTENSION.to_string(), policy.clone());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                time: None,
                http: Some(HttpRequest {
                    id: "tollgate-authorize".into(),
                    method: probe.method.clone(),
                    headers: request_headers(&pairs),
                    path: probe.path.clone(),
                    host: probe.host.clone(),
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                    size: -1,
                    ..Default::default()
                }),
            }),
            context_extensions,
            ..Default::default()
        }),
    }
}

/// Sends `probe` to the ext_authz server at `server` (e.g. `http://127.0.0.1:9001`).
pub async fn send(server: &str, probe: &Probe) -> anyhow::Result<CheckResponse> {
    let mut client = AuthorizationClient::connect(server.to_string())
        .await
        .with_context(|| format!("connecting to {server}"))?;
    let response = client
        .check(check_request(probe))
        .await
        .context("Check RPC failed")?;
    Ok(response.into_inner())
}

/// Whether the response allows the request.
pub fn allowed(response: &CheckResponse) -> bool {
    response.status.as_ref().is_none_or(|s| s.code == 0)
}

/// A human rendering of a response.
pub fn render(response: &CheckResponse) -> String {
    let mut out = String::new();
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) if allowed(response) => {
            let _ = writeln!(out, "ALLOW");
            for h in &ok.headers {
                if let Some(h) = &h.header {
                    let _ = writeln!(out, "  set header     {}: {}", h.key, h.value);
                }
            }
            for h in &ok.headers_to_remove {
                let _ = writeln!(out, "  remove header  {h}");
            }
            for q in &ok.query_parameters_to_remove {
                let _ = writeln!(out, "  remove query   {q}");
            }
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            let status = denied.status.as_ref().map_or(403, |s| s.code);
            let _ = writeln!(out, "DENY {status}");
            for h in &denied.headers {
                if let Some(h) = &h.header {
                    let _ = writeln!(out, "  {}: {}", h.key, h.value);
                }
            }
            let _ = writeln!(out, "  body: {}", denied.body);
        }
        _ => {
            let code = response.status.as_ref().map_or(0, |s| s.code);
            let _ = writeln!(
                out,
                "{} (gRPC status {code})",
                if allowed(response) { "ALLOW" } else { "DENY" }
            );
        }
    }
    if let Some(meta) = &response.dynamic_metadata
        && let Some(policy) = meta.fields.get("policy")
        && let Some(prost_types::value::Kind::StringValue(p)) = &policy.kind
    {
        let _ = writeln!(out, "  policy: {p}");
    }
    out
}

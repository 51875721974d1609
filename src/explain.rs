//! `tollgate explain`: which policy judges a request, and every check its token goes through,
//! with ✓/✗, the reason code and a concrete fix for each failure.
//!
//! It runs the engine itself (the same code that answers Envoy) with the trace on, so the
//! explanation cannot drift from the decision. With `--offline` no key is fetched: issuers with
//! keys in the policy are checked completely; for the others the signature is reported as not
//! checked and the claims are still checked (marked unverified).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

use crate::decision::{Decision, Reason};
use crate::engine::{self, Headers, Request};
use crate::jwks::KeySources;
use crate::policy::files::FileLoader;
use crate::policy::{DefaultAction, IssuerRef, Policy, Snapshot};
use crate::trace::{Outcome, Step, Trace};
use crate::validate;

/// Where the policy comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicySource {
    /// A policy file or a directory of them.
    File(PathBuf),
    /// `namespace/name` of a `JwtPolicy` in the cluster of the current kubeconfig.
    Cluster { namespace: String, name: String },
}

impl PolicySource {
    /// A path that exists is a file; otherwise `namespace/name` names a cluster object.
    pub fn parse(text: &str) -> Self {
        let path = PathBuf::from(text);
        if !path.exists()
            && let Some((namespace, name)) = text.split_once('/')
            && is_dns_name(namespace, false)
            && is_dns_name(name, true)
        {
            return PolicySource::Cluster {
                namespace: namespace.into(),
                name: name.into(),
            };
        }
        PolicySource::File(path)
    }
}

fn is_dns_name(text: &str, dots: bool) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.')
        })
}

/// Why `explain` could not run (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("{0}")]
    Policy(String),
    #[error("{0}")]
    Request(String),
}

/// The request to explain.
#[derive(Clone, Debug, Default)]
pub struct ExplainRequest {
    pub token: Option<String>,
    pub host: Option<String>,
    pub path: Option<String>,
    pub method: Option<String>,
    /// Extra headers (`name`, `value`).
    pub headers: Vec<(String, String)>,
    /// Judge as if the clock said this.
    pub at: Option<SystemTime>,
    /// The client's TLS certificate (PEM), as the gateway would report it.
    pub client_certificate: Option<String>,
    /// The scheme the client used (`https` when not said), for a DPoP proof's `htu`.
    pub scheme: Option<String>,
}

/// What was asked.
#[derive(Clone, Debug, Serialize)]
pub struct RequestSummary {
    pub host: String,
    pub path: String,
    pub method: String,
}

/// The explanation: the decision, the decoded token, every check.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    /// `allow`, `deny`, or `answer` (tollgate answers itself: a protected resource metadata
    /// document, which the upstream never sees).
    pub decision: &'static str,
    /// The HTTP status the client would get (200 when allowed).
    pub status: u16,
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    pub request: RequestSummary,
    /// Keys were not fetched.
    pub offline: bool,
    /// The signature could not be checked offline: the verdict is not final.
    pub unverified: bool,
    #[serde(flatten)]
    pub trace: Trace,
    /// The policy is in `mode: dryRun` and would have denied the request (which is allowed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<WouldDeny>,
}

/// The denial a dry-run policy records instead of answering.
#[derive(Clone, Debug, Serialize)]
pub struct WouldDeny {
    pub status: u16,
    pub reason: &'static str,
    pub description: String,
}

impl Explanation {
    pub fn allowed(&self) -> bool {
        self.decision == "allow"
    }
}

/// The policies of a file or directory, compiled; every problem is a usage error.
pub fn load_files(path: PathBuf, key_sources: Arc<KeySources>) -> Result<Snapshot, UsageError> {
    if !path.exists() {
        return Err(UsageError::Policy(format!(
            "{} does not exist (for a cluster object write namespace/name)",
            path.display()
        )));
    }
    let mut loader = FileLoader::new(vec![path.clone()], key_sources, DefaultAction::Deny);
    let (snapshot, report) = loader.reload();
    let mut problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    problems.extend(
        report
            .conflicts
            .iter()
            .map(|c| format!("policy {}: {c}", c.policy)),
    );
    if !problems.is_empty() {
        return Err(UsageError::Policy(format!(
            "the policy does not load:\n  {}",
            problems.join("\n  ")
        )));
    }
    match snapshot {
        Some(snapshot) if !snapshot.is_empty() => Ok(snapshot),
        _ => Err(UsageError::Policy(format!(
            "{} holds no JwtPolicy",
            path.display()
        ))),
    }
}

/// A snapshot of one policy (from the cluster).
pub fn single(policy: Arc<Policy>) -> Snapshot {
    Snapshot::build(vec![policy], DefaultAction::Deny).0
}

/// A host the policy matches, for when none is given.
fn default_host(policy: &Policy) -> String {
    use crate::policy::route::HostPattern;
    match policy.hosts.first() {
        Some(HostPattern::Exact(host)) => host.clone(),
        Some(HostPattern::Wildcard(suffix)) => format!("host.{suffix}"),
        _ => "localhost".into(),
    }
}

/// Explains one request against `snapshot`.
pub async fn explain(
    snapshot: &Snapshot,
    request: &ExplainRequest,
    offline: bool,
) -> Result<Explanation, UsageError> {
    let selecting = request.host.is_some() || request.path.is_some() || request.method.is_some();
    let mut ids: Vec<&str> = snapshot.policies().map(|p| &*p.id).collect();
    ids.sort_unstable();
    // Without a host/path/method, the only policy is judged directly.
    let explicit = match ids.as_slice() {
        [only] if !selecting => Some(
            snapshot
                .policy(only)
                .cloned()
                .ok_or_else(|| UsageError::Policy(format!("policy {only} is not loaded")))?,
        ),
        [_, _, ..] if !selecting => {
            return Err(UsageError::Request(format!(
                "there are {} policies ({}); give --host/--path/--method to select one as a route would",
                ids.len(),
                ids.join(", ")
            )));
        }
        _ => None,
    };
    let host = match (&request.host, &explicit) {
        (Some(host), _) => host.clone(),
        (None, Some(policy)) => default_host(policy),
        (None, None) => "localhost".into(),
    };
    let path = request.path.clone().unwrap_or_else(|| {
        explicit
            .as_ref()
            .and_then(|p| p.paths.first())
            .map_or_else(|| "/".to_string(), |p| p.to_string())
    });
    let method = request
        .method
        .clone()
        .unwrap_or_else(|| "GET".into())
        .to_ascii_uppercase();
    let mut headers: HashMap<String, String> = request
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    if let Some(token) = &request.token {
        // Put the token where the policy reads it.
        let (name, scheme, dpop) = match explicit.as_ref().or_else(|| {
            let host = crate::policy::route::normalize_host(&host);
            let path = crate::policy::route::read_path(&path).ok()?;
            snapshot.select(&host, &path, &method, false)
        }) {
            Some(p) => (
                p.token.header.clone(),
                p.token.scheme.clone(),
                p.dpop.is_some(),
            ),
            None => ("authorization".into(), Some("Bearer".into()), false),
        };
        // With a DPoP proof among the headers, the token goes with the DPoP scheme.
        let scheme = if dpop && headers.contains_key("dpop") {
            Some("DPoP".to_string())
        } else {
            scheme
        };
        let value = match scheme {
            Some(scheme) => format!("{scheme} {token}"),
            None => token.clone(),
        };
        headers.insert(name, value);
    }
    let now = request.at.unwrap_or_else(SystemTime::now);
    let engine_request = Request {
        host: &host,
        path: &path,
        method: &method,
        headers: Headers::Map(&headers),
        policy: explicit.as_ref().map(|p| &*p.id),
        route: None,
        source: crate::engine::Peer {
            certificate: request.client_certificate.as_deref(),
            scheme: Some(request.scheme.as_deref().unwrap_or("https")),
            ..Default::default()
        },
    };
    let decision = engine::check_traced(snapshot, &engine_request, now, Trace::on()).await;
    let mut trace = decision
        .trace()
        .map(|t| (**t).clone())
        .unwrap_or_else(Trace::on);
    // A dry-run policy's would-be denial is explained like a denial.
    let judged = decision
        .would_deny()
        .map_or(decision.reason(), |d| d.reason);
    let unverified = offline
        && judged == Reason::IssuerUnavailable
        && continue_unverified(snapshot, &decision, &mut trace, now).await;
    let (status, description) = match &decision {
        Decision::Allow(_) => (200, None),
        Decision::Deny(deny) => (deny.status, Some(deny.description.clone())),
    };
    Ok(Explanation {
        decision: match &decision {
            Decision::Allow(_) => "allow",
            Decision::Deny(deny) if deny.is_document() => "answer",
            Decision::Deny(_) => "deny",
        },
        status,
        reason: decision.reason().as_str(),
        description,
        policy: decision.policy().map(str::to_owned),
        request: RequestSummary { host, path, method },
        offline,
        unverified,
        trace,
        dry_run: decision.would_deny().map(|deny| WouldDeny {
            status: deny.status,
            reason: deny.reason.as_str(),
            description: deny.description.clone(),
        }),
    })
}

/// Offline, a remote issuer's keys are missing: check the (unverified) claims anyway, so the
/// rest of the explanation is still useful. True when the claims were checked.
async fn continue_unverified(
    snapshot: &Snapshot,
    decision: &Decision,
    trace: &mut Trace,
    now: SystemTime,
) -> bool {
    let Some(policy) = decision.policy().and_then(|id| snapshot.policy(id)) else {
        return false;
    };
    let Some(claims) = trace.claims.clone() else {
        return false;
    };
    let Some(iss) = claims.get("iss").and_then(Value::as_str) else {
        return false;
    };
    let issuer = match policy.issuer(iss) {
        Some(listed) => IssuerRef::Listed(listed),
        // A tenant an issuer template's condition admitted (offline: without its keys).
        None => match admitted(policy, iss).await {
            Some(issuer) => IssuerRef::Admitted(issuer),
            None => return false,
        },
    };
    let mut rest = Trace::on();
    let _ = validate::check_claims(&claims, &issuer, policy, now, &mut rest)
        .and_then(|()| validate::check_azure(&claims, &issuer, policy, &mut rest))
        .and_then(|()| validate::check_required(&claims, policy, &mut rest));
    for mut step in rest.steps {
        step.detail = format!("{} (unverified)", step.detail);
        trace.steps.push(step);
    }
    true
}

/// The issuer of a tenant some issuer template of `policy` has admitted for `iss`.
async fn admitted(policy: &Policy, iss: &str) -> Option<Arc<crate::policy::Issuer>> {
    for template in &policy.templates {
        if let (Some(admission), Some(tenant)) = (&template.admission, template.tenant_of(iss))
            && let Some(issuer) = admission.cached(tenant).await
        {
            return Some(issuer);
        }
    }
    None
}

fn pretty(object: &serde_json::Map<String, Value>) -> String {
    serde_json::to_string_pretty(object).unwrap_or_default()
}

fn indent(text: &str, by: &str) -> String {
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            if i == 0 {
                line.to_string()
            } else {
                format!("{by}{line}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The explanation for a terminal.
pub fn render_text(e: &Explanation) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "request  {} {}{}\n",
        e.request.method, e.request.host, e.request.path
    ));
    if let Some(policy) = &e.policy {
        out.push_str(&format!("policy   {policy}\n"));
    }
    for (label, object) in [
        ("header", &e.trace.header),
        ("inner", &e.trace.inner_header),
        ("claims", &e.trace.claims),
    ] {
        if let Some(object) = object {
            out.push_str(&format!(
                "{label:<8} {}\n",
                indent(&pretty(object), "         ")
            ));
        }
    }
    out.push('\n');
    out.push_str(&e.trace.to_text());
    out.push('\n');
    if e.offline {
        out.push_str(
            "(offline: keys were not fetched; only keys written in the policy were used)\n",
        );
    }
    let verdict = if e.allowed() {
        format!("ALLOWED ({})", e.reason)
    } else if e.decision == "answer" {
        format!(
            "ANSWERED {} {}: {} (by tollgate; the upstream is not called)",
            e.status,
            e.reason,
            e.description.as_deref().unwrap_or_default()
        )
    } else if e.unverified {
        format!(
            "NOT VERIFIED {} {}: {}; run without --offline to check the signature",
            e.status,
            e.reason,
            e.description.as_deref().unwrap_or_default()
        )
    } else {
        format!(
            "DENIED {} {}: {}",
            e.status,
            e.reason,
            e.description.as_deref().unwrap_or_default()
        )
    };
    out.push_str(&verdict);
    out.push('\n');
    if let Some(would) = &e.dry_run {
        out.push_str(&format!(
            "dry run: would deny with {} ({}): {}\n",
            would.reason, would.status, would.description
        ));
    }
    out
}

/// The failing steps, for tools that only want the reasons.
pub fn failures(e: &Explanation) -> impl Iterator<Item = &Step> {
    e.trace.steps.iter().filter(|s| s.outcome == Outcome::Fail)
}

#[cfg(test)]
mod tests;

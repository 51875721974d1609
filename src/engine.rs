//! The decision engine: `check(&Snapshot, &Request) -> Decision`, independent of the transport.
//!
//! ```text
//! request ─► normalize host/path ─► select policy ─► rule (anonymous?) ─► extract token
//!         ─► parse ─► route to issuer ─► keys (refetch once on unknown kid) ─► signature
//!         ─► exp/nbf/iat/aud ─► requiredClaims ─► rule requirements ─► Allow + forward headers
//! ```
//!
//! The only I/O is a coalesced, rate-limited key refetch when a token names an unknown `kid`,
//! and the first fetch of a tenant an issuer template's condition admits (coalesced, bounded,
//! failures remembered for a while: see [`crate::policy::tenants::admission`]).

mod metadata;
pub mod request;

use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;

use crate::apikeys;
use crate::claims;
use crate::client_cert::{CertError, ClientCertificate};
use crate::decision::{Allow, ClaimSet, Decision, Deny, Identity, Reason};
use crate::expression::{Inputs, RequestView, Scope};
use crate::introspect::{self, Answer, IntrospectError, Introspector, Raw};
use crate::jose::{self, B64, Claims, JoseError};
use crate::jwe::{self, JweError};
use crate::jwks::{Refetch, Unusable};
use crate::policy::route::{PathCase, PathReading, read_host, read_path, read_path_with};
use crate::policy::snapshot::MatchInput;
use crate::policy::spec::IntrospectWhen;
use crate::policy::{DefaultAction, DenyDetail, IssuerRef, MetadataClaims, Policy, Rule, Snapshot};
use crate::trace::{self, Trace};
use crate::validate::{self, TimeWindow, ValidationError};
use crate::verified::{self, CachedIssuer, ClaimHeaders, TokenCache};

pub use metadata::resource_metadata;
pub use request::{Headers, Peer, Request, TokenSource};

/// Judges one request against a snapshot. The checks are traced when the debug line of
/// [`trace::LOG_TARGET`] is enabled, or when the policy's trace header matches.
pub async fn check(snapshot: &Snapshot, request: &Request<'_>, now: SystemTime) -> Decision {
    let trace = if tracing::enabled!(target: trace::LOG_TARGET, tracing::Level::DEBUG) {
        Trace::on()
    } else {
        Trace::off()
    };
    check_traced(snapshot, request, now, trace).await
}

/// Judges one request, recording every check in `trace` when it is on (`tollgate explain`).
pub async fn check_traced(
    snapshot: &Snapshot,
    request: &Request<'_>,
    now: SystemTime,
    mut trace: Trace,
) -> Decision {
    let host = match read_host(request.host) {
        Ok(host) => host,
        Err(why) => {
            let text = format!("the host has {why}");
            trace.fail(
                "request",
                Reason::RequestMalformed,
                || text.clone(),
                || None,
            );
            return deny(None, "", Reason::RequestMalformed, text, None, None).with_trace(trace);
        }
    };
    let read = read_path(request.path).map(|path| (path, PathReading::STRICT));
    // A class a policy accepts (`match.pathReading`): read again with the readings offered;
    // the policy that judges the request must accept every one the path needed.
    let read = read.or_else(|e| {
        let offered = match request.policy.and_then(|id| snapshot.policy(id)) {
            Some(policy) => policy.path_reading,
            None => snapshot.readings(),
        };
        if offered.covers(e) {
            read_path_with(request.path, offered)
        } else {
            Err(e)
        }
    });
    let (path, reading) = match read {
        Ok(read) => read,
        Err(e) => {
            let text = format!("the path {e} ({})", e.class());
            trace.fail(
                "request",
                Reason::RequestMalformed,
                || text.clone(),
                || Some("send the path as the upstream should serve it: tollgate refuses what an upstream could read in more than one way (docs/security.md)".into()),
            );
            return deny(None, &host, Reason::RequestMalformed, text, None, None).with_trace(trace);
        }
    };
    check_path(snapshot, request, &host, &path, reading, now, trace)
        .await
        .with_path(path)
}

/// [`check_traced`] once the path is read.
async fn check_path(
    snapshot: &Snapshot,
    request: &Request<'_>,
    host: &str,
    path: &str,
    reading: PathReading,
    now: SystemTime,
    mut trace: Trace,
) -> Decision {
    let other = match method_override(request) {
        Ok(other) => other,
        Err(text) => {
            trace.fail(
                "request",
                Reason::RequestMalformed,
                || text.clone(),
                || None,
            );
            return deny(None, host, Reason::RequestMalformed, text, None, None).with_trace(trace);
        }
    };
    let Some(other) = other else {
        return check_method(snapshot, request, host, path, reading, now, trace).await;
    };
    // A method override: the upstream may run either method, so the request must pass as both.
    let traced = trace.is_on();
    let as_sent = Box::pin(check_method(
        snapshot, request, host, path, reading, now, trace,
    ))
    .await;
    // A denial, or a dry-run policy's would-be denial, of the method as sent is the answer.
    if !as_sent.is_allow() || as_sent.would_deny().is_some() {
        return as_sent;
    }
    let overridden = Request {
        method: &other,
        ..*request
    };
    let mut trace = if traced { Trace::on() } else { Trace::off() };
    trace.info("request", || {
        format!(
            "a method override asks for {other}: allowed as {}, judged as {other} too",
            request.method
        )
    });
    Box::pin(check_method(
        snapshot,
        &overridden,
        host,
        path,
        reading,
        now,
        trace,
    ))
    .await
}

/// [`check_path`] for one method.
#[allow(clippy::too_many_arguments)]
async fn check_method(
    snapshot: &Snapshot,
    request: &Request<'_>,
    host: &str,
    path: &str,
    reading: PathReading,
    now: SystemTime,
    mut trace: Trace,
) -> Decision {
    let explicit = match request.policy {
        Some(id) => match snapshot.policy(id) {
            Some(policy) => Some(policy),
            None => {
                let text = format!("the route selects policy {id:?}, which is not loaded");
                trace.fail("policy", Reason::PolicyNotFound, || text.clone(), || None);
                return deny(None, host, Reason::PolicyNotFound, text, None, None)
                    .with_trace(trace);
            }
        },
        None => None,
    };
    if let Some(answer) =
        metadata::answer(snapshot, explicit, host, path, request.method, &mut trace)
    {
        return answer.with_trace(trace);
    }
    let (headers, query) = match route_values(snapshot, request) {
        Ok(values) => values,
        Err(text) => {
            trace.fail(
                "request",
                Reason::RequestMalformed,
                || text.clone(),
                || None,
            );
            return deny(None, host, Reason::RequestMalformed, text, None, None).with_trace(trace);
        }
    };
    let input = MatchInput {
        headers: &headers,
        query: &query,
        route: request.route,
    };
    let (policy, rule) = match select(snapshot, explicit, host, path, request.method, &input) {
        Ok(Some(found)) => found,
        Ok(None) if snapshot.default_action == DefaultAction::Allow => {
            trace.info("policy", || {
                "no policy matches; --default-action allow lets the request through".into()
            });
            return Decision::Allow(Allow {
                reason: Reason::DefaultAllow,
                ..Allow::default()
            })
            .with_trace(trace);
        }
        Ok(None) => {
            let text = format!(
                "no policy matches host {host:?}, path {path:?}, method {}",
                request.method
            );
            trace.fail("policy", Reason::NoPolicy, || text.clone(), || {
                Some("add a policy whose match covers the request, or select one with the route's tollgate.dev/policy context extension".into())
            });
            return deny(None, host, Reason::NoPolicy, text, None, None).with_trace(trace);
        }
        Err(SelectError::Case(text)) => {
            trace.fail("request", Reason::RequestMalformed, || text.clone(), || {
                Some("set match.pathCase (Exact or IgnoreCase) in the policy to say how its upstream compares letter case".into())
            });
            return deny(None, host, Reason::RequestMalformed, text, None, None).with_trace(trace);
        }
        Err(SelectError::Conflict(text)) => {
            trace.fail("policy", Reason::PolicyConflict, || text.clone(), || {
                Some("attach one policy to the route (targetRefs: HTTPRoute) instead of one per listener, or give the listeners hostnames that do not overlap".into())
            });
            return deny(None, host, Reason::PolicyConflict, text, None, None).with_trace(trace);
        }
    };
    if !policy.path_reading.allows(reading) {
        let text = format!(
            "the path is read with {}, and policy {} does not say its upstream reads paths that way (match.pathReading)",
            describe_reading(reading),
            policy.id
        );
        trace.fail(
            "request",
            Reason::RequestMalformed,
            || text.clone(),
            || None,
        );
        return deny(None, host, Reason::RequestMalformed, text, None, None).with_trace(trace);
    }
    trace.info("policy", || {
        format!(
            "{} (host {host:?}, path {path:?}, method {})",
            policy.id, request.method
        )
    });
    let cache = snapshot.token_cache.as_deref();
    judge_traced(policy, rule, cache, request, host, path, now, trace).await
}

/// The readings a path needed, in words.
fn describe_reading(reading: PathReading) -> String {
    let mut out = Vec::new();
    if reading.keep_encoded_slashes {
        out.push("%2F kept in its segment");
    }
    if reading.merge_empty_segments {
        out.push("// merged");
    }
    if reading.strip_parameters {
        out.push(";parameters stripped");
    }
    out.join(", ")
}

/// Headers and the query parameter with which frameworks let a client run another method
/// (Express `method-override`, Rails, Laravel, Spring's `HiddenHttpMethodFilter`, ASP.NET).
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The method an upstream could run instead of the request's own: from a method-override header
/// or the `_method` query parameter (names and values decoded as frameworks decode them; PHP
/// also reads `.method` and ` _method` as `_method`). `Ok(None)`: none, or the request's own
/// method. `Err`: several that disagree, or one that is not a method.
fn method_override<'r>(request: &Request<'r>) -> Result<Option<String>, String> {
    let mut found: Option<(String, &'static str)> = None;
    let mut consider = |value: &str, source: &'static str| -> Result<(), String> {
        let value = value.trim();
        if value.eq_ignore_ascii_case(request.method) {
            return Ok(());
        }
        let token = !value.is_empty()
            && value.len() <= 32
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(format!("{source} names no HTTP method"));
        }
        match &found {
            Some((other, first)) if !other.eq_ignore_ascii_case(value) => Err(format!(
                "{first} and {source} ask for different methods ({other}, {value})"
            )),
            Some(_) => Ok(()),
            None => {
                found = Some((value.to_ascii_uppercase(), source));
                Ok(())
            }
        }
    };
    // One pass over the headers (most requests carry none of these); names in any letter case,
    // and one sent twice is refused (frameworks would read "DELETE, PATCH" or either one).
    let mut header_result = Ok(());
    let mut seen = [false; METHOD_OVERRIDES.len()];
    request.headers.for_each(|name, value| {
        if header_result.is_ok()
            && name.len() >= 13
            && name.as_bytes()[0].eq_ignore_ascii_case(&b'x')
            && let Some(at) = METHOD_OVERRIDES
                .iter()
                .position(|known| name.eq_ignore_ascii_case(known))
        {
            header_result = if std::mem::replace(&mut seen[at], true) {
                Err(format!(
                    "the {} header is sent more than once",
                    METHOD_OVERRIDES[at]
                ))
            } else {
                consider(value, METHOD_OVERRIDES[at])
            };
        }
    });
    header_result?;
    if let Some((_, query)) = request.path.split_once('?') {
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if php_name(&key).eq_ignore_ascii_case("_method") {
                consider(&value, "the _method query parameter")?;
            }
        }
    }
    Ok(found.map(|(method, _)| method))
}

/// A query parameter name as PHP reads it: leading spaces dropped, ` `, `.` and `[` turned
/// into `_` (Laravel and Symfony read `_method` from there).
fn php_name(name: &str) -> String {
    name.trim()
        .chars()
        .map(|c| if matches!(c, ' ' | '.' | '[') { '_' } else { c })
        .collect()
}

type Selection<'s> = Option<(&'s Arc<Policy>, Option<&'s Rule>)>;

/// Why no single policy can judge a request.
#[derive(Debug, thiserror::Error)]
enum SelectError {
    /// Letter case changes the answer and the policies do not say how their upstream reads it
    /// (400 `request_malformed`).
    #[error("{0}")]
    Case(String),
    /// Two policies have the same entry for the route (403 `policy_conflict`).
    #[error("{0}")]
    Conflict(String),
}

/// The request's values of the headers and query parameters some route entry matches on
/// (HTTPRoute `Exact` matches). Gateways disagree about a header sent twice (Envoy joins the
/// values, others take the first) and about encoded query names and values, so a request that
/// sends a matched header or parameter twice, or encodes a matched parameter, is refused: which
/// route serves it cannot be known. Nothing is read when no route matches on either.
#[allow(clippy::type_complexity)]
fn route_values(
    snapshot: &Snapshot,
    request: &Request<'_>,
) -> Result<(Vec<(String, String)>, Vec<(String, String)>), String> {
    let mut headers: Vec<(String, String)> = Vec::new();
    let names = snapshot.matched_headers();
    if !names.is_empty() {
        let mut repeated = None;
        request.headers.for_each(|name, value| {
            if let Some(known) = names.iter().find(|n| name.eq_ignore_ascii_case(n)) {
                if headers.iter().any(|(n, _)| n == known) {
                    repeated = Some(known.clone());
                }
                headers.push((known.clone(), value.to_string()));
            }
        });
        if let Some(name) = repeated {
            return Err(format!(
                "the {name} header is sent more than once, and a route matches on it: gateways disagree about which value counts"
            ));
        }
        // Envoy's `headers` map has repeated headers already joined with ","; a route's
        // exact value with a comma stays comparable, and a joined value never matches one
        // without.
    }
    let mut query: Vec<(String, String)> = Vec::new();
    let names = snapshot.matched_query();
    if !names.is_empty()
        && let Some((_, raw)) = request.path.split_once('?')
    {
        for pair in raw.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded: String = url::form_urlencoded::parse(key.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            let Some(known) = names.iter().find(|n| **n == decoded) else {
                continue;
            };
            if key != decoded || value.contains(['%', '+']) {
                return Err(format!(
                    "the query parameter {known} is encoded, and a route matches on it: gateways and upstreams decode it differently"
                ));
            }
            if query.iter().any(|(n, _)| n == known) {
                return Err(format!(
                    "the query parameter {known} is sent more than once, and a route matches on it: gateways disagree about which value counts"
                ));
            }
            query.push((known.clone(), value.to_string()));
        }
    }
    Ok((headers, query))
}

/// The policy (and its rule) judging a request. When letter case changes the answer (a
/// prefix matches only in another case), the policies' `match.pathCase` must say how their
/// upstream reads the path; otherwise the request is refused with the reason.
fn select<'s>(
    snapshot: &'s Snapshot,
    explicit: Option<&'s Arc<Policy>>,
    host: &str,
    path: &str,
    method: &str,
    input: &MatchInput<'_>,
) -> Result<Selection<'s>, SelectError> {
    let ambiguous: std::cell::Cell<Option<(Arc<str>, Arc<str>)>> = std::cell::Cell::new(None);
    let pick = |ignore_case: bool| -> Selection<'s> {
        let policy = match explicit {
            Some(policy) => policy,
            None => {
                let picked = snapshot.select_with(host, path, method, ignore_case, input)?;
                if let Some(other) = picked.ambiguous_with {
                    ambiguous.set(Some((picked.policy.id.clone(), other.clone())));
                }
                picked.policy
            }
        };
        Some((policy, policy.rule_for(path, method, ignore_case)))
    };
    let exact = pick(false);
    let refuse_ambiguous = |ambiguous: Option<(Arc<str>, Arc<str>)>| match ambiguous {
        Some((one, other)) => Err(SelectError::Conflict(format!(
            "policies {one} and {other} both judge this HTTPRoute rule (the route attaches to listeners each policy targets, with hostnames in common), and the gateway does not say which listener the request came through"
        ))),
        None => Ok(()),
    };
    refuse_ambiguous(ambiguous.take())?;
    let case_matters = snapshot.has_upper_prefixes()
        || explicit.is_some_and(|p| {
            p.rules
                .iter()
                .any(|r| r.paths.iter().any(|x| x.has_upper()))
        })
        || path.bytes().any(|b| b.is_ascii_uppercase());
    if !case_matters {
        return Ok(exact);
    }
    let folded = pick(true);
    refuse_ambiguous(ambiguous.take())?;
    let same = match (exact, folded) {
        (None, None) => true,
        (Some((a, ra)), Some((b, rb))) => {
            Arc::ptr_eq(a, b)
                && match (ra, rb) {
                    (None, None) => true,
                    (Some(x), Some(y)) => std::ptr::eq(x, y),
                    _ => false,
                }
        }
        _ => false,
    };
    // An upstream that ignores case may fold non-ASCII letters too (Java's equalsIgnoreCase
    // reads ſ as s), which tollgate does not: escaped non-ASCII is refused there.
    let ignores_case = |selection: Selection<'_>| {
        selection.is_some_and(|(p, _)| p.path_case == Some(PathCase::IgnoreCase))
    };
    let non_ascii = path
        .as_bytes()
        .windows(2)
        .any(|w| w[0] == b'%' && matches!(w[1], b'8'..=b'9' | b'A'..=b'F'));
    if non_ascii && (ignores_case(exact) || ignores_case(folded)) {
        return Err(SelectError::Case(format!(
            "the path {path:?} has escaped non-ASCII characters, which an upstream that ignores letter case may fold into other letters (match.pathCase: IgnoreCase)"
        )));
    }
    if same {
        return Ok(exact);
    }
    // Each policy involved must say how its upstream reads case, and they must agree: the
    // gateway may route the request to either upstream.
    let says = |selection: Selection<'_>| selection.map(|(p, _)| p.path_case);
    let agree = |case: PathCase| {
        says(folded) == Some(Some(case)) && says(exact).is_none_or(|said| said == Some(case))
    };
    match (agree(PathCase::Exact), agree(PathCase::IgnoreCase)) {
        (true, false) => Ok(exact),
        (false, true) => Ok(folded),
        _ => {
            let describe = |selection: Selection<'_>| match selection {
                None => "no policy".to_string(),
                Some((policy, None)) => format!("policy {}", policy.id),
                Some((policy, Some(rule))) => format!(
                    "policy {} rule for {}",
                    policy.id,
                    if rule.paths.is_empty() {
                        "every path".to_string()
                    } else {
                        rule.paths
                            .iter()
                            .map(|p| p.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            };
            Err(SelectError::Case(format!(
                "the path {path:?} is judged by {} as written and by {} ignoring letter case; \
                 match.pathCase does not say which one its upstream serves",
                describe(exact),
                describe(folded)
            )))
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn judge_traced(
    policy: &Arc<Policy>,
    rule: Option<&Rule>,
    cache: Option<&TokenCache>,
    request: &Request<'_>,
    host: &str,
    path: &str,
    now: SystemTime,
    mut trace: Trace,
) -> Decision {
    // The policy's trace header turns the trace on, and lets it be returned.
    if let Some(header) = &policy.trace_header
        && request
            .headers
            .get(&header.name)
            .is_some_and(|v| header.matches(&v))
    {
        if !trace.is_on() {
            trace = Trace::on();
            trace.info("policy", || policy.id.to_string());
        }
        trace.expose = true;
    }
    // A traced request is verified in full, so the trace shows every check.
    let cache = cache.filter(|_| !trace.is_on());
    let decision = judge_inner(policy, rule, cache, request, host, path, now, &mut trace).await;
    if trace.is_on()
        && let Decision::Deny(deny) = &decision
        && trace.failure().is_none()
    {
        trace.fail(
            "decision",
            deny.reason,
            || deny.description.clone(),
            || deny.hint.clone(),
        );
    }
    let decision = match decision {
        Decision::Deny(deny) if policy.dry_run => {
            let allow = dry_run_allow(policy, request);
            would_deny(allow, deny, &mut trace)
        }
        decision => decision,
    };
    decision.with_trace(trace)
}

/// What the upstream receives when a dry-run policy would have denied a request whose token
/// did not pass (or was not there): what an anonymous rule sends. No identity header (the
/// policy's `claimsToHeaders` and `payloadHeader`) travels, whatever the client sent, nor the
/// debug header; the token is removed from every place the policy reads when `keepToken` is
/// false.
fn dry_run_allow(policy: &Arc<Policy>, request: &Request<'_>) -> Allow {
    let mut out = Allow {
        policy: Some(policy.id.clone()),
        headers_to_remove: forward_headers(policy)
            .chain(policy.trace_header.as_ref().map(|t| t.name.as_str()))
            .map(str::to_owned)
            .collect(),
        ..Allow::default()
    };
    if !policy.forward.keep_token {
        for source in [TokenSource::Header, TokenSource::Query, TokenSource::Cookie] {
            remove_token(policy, request, source, &mut out);
        }
    }
    remove_key(policy, request, &mut out);
    out
}

/// `mode: dryRun`: `allow` goes through, carrying the denial the policy would have answered.
fn would_deny(mut allow: Allow, deny: Deny, trace: &mut Trace) -> Decision {
    trace.info("mode", || {
        format!(
            "dry run: would deny with {} ({}); allowed because the policy has mode: dryRun",
            deny.reason, deny.status
        )
    });
    allow.reason = Reason::DryRun;
    allow.dry_run = Some(Box::new(deny));
    Decision::Allow(allow)
}

#[allow(clippy::too_many_arguments)]
async fn judge_inner(
    policy: &Arc<Policy>,
    rule: Option<&Rule>,
    cache: Option<&TokenCache>,
    request: &Request<'_>,
    host: &str,
    path: &str,
    now: SystemTime,
    trace: &mut Trace,
) -> Decision {
    let view = || RequestView {
        method: request.method,
        host,
        path,
        query: request.path.split_once('?').map(|(_, q)| q),
        headers: request.headers,
        address: request.source.address,
        principal: request.source.principal,
        certificate: request.source.certificate,
    };
    if policy.require_client_certificate
        && let Err(denied) = required_certificate(policy, request, host, trace)
    {
        return *denied;
    }
    if rule.is_some_and(|r| r.allow_anonymous) {
        trace.pass("rule", || "allowAnonymous: the token is not read".into());
        let inputs = policy
            .cel
            .as_ref()
            .map(|cel| (cel, Inputs::new(&cel.reads, None, &view(), now)));
        let scope = inputs
            .as_ref()
            .map(|(cel, inputs)| cel.environment.scope(inputs));
        if let Some(scope) = &scope
            && let Err(denied) = conditions(policy, rule, scope, host, None, trace)
        {
            return *denied;
        }
        let mut out = Allow {
            policy: Some(policy.id.clone()),
            reason: Reason::Anonymous,
            // Never let a client supply the identity headers itself.
            headers_to_remove: forward_headers(policy)
                .chain(policy.trace_header.as_ref().map(|t| t.name.as_str()))
                .map(str::to_owned)
                .collect(),
            ..Allow::default()
        };
        if let Some(scope) = &scope {
            computed_headers(policy, scope, &mut out, trace);
        }
        // keepToken: false holds here too: whatever token the client sent stays with tollgate.
        if !policy.forward.keep_token {
            for source in [TokenSource::Header, TokenSource::Query, TokenSource::Cookie] {
                remove_token(policy, request, source, &mut out);
            }
        }
        remove_key(policy, request, &mut out);
        return Decision::Allow(out);
    }
    let (verified, source, token_id) =
        match credential(policy, cache, request, host, path, now, trace).await {
            Ok(found) => found,
            Err(denied) => return *denied,
        };
    let identity = Identity {
        token_id: token_id.clone(),
        issuer: verified.issuer.as_ref().map(|i| i.issuer.clone()),
        claims: verified.claims.clone(),
    };
    let token_id = || token_id.clone();
    let mut unmet_rule = None;
    if let Some(rule) = rule.filter(|r| !r.requirements.is_empty()) {
        let claims = verified.claims.map();
        for requirement in &rule.requirements {
            if let Err(unmet) = requirement.check(&claims) {
                trace.fail("rule", Reason::InsufficientScope, || unmet.detail.clone(), || {
                    Some(format!(
                        "this path/method needs {}: grant it to the client, or change spec.rules",
                        requirement.describe()
                    ))
                });
                // RFC 6750 §3: a scope a client can request, when a scope was what failed.
                let scope = rule.scope.as_deref().filter(|_| requirement.is_scope());
                if let Some(scope) = scope {
                    trace.info("challenge", || {
                        format!("the insufficient_scope challenge names scope=\"{scope}\": the scopes this rule and spec.requiredClaims require")
                    });
                }
                unmet_rule = Some((unmet.detail, requirement, scope));
                break;
            }
            trace.pass("rule", || requirement.describe());
        }
    }
    if let Some((detail, requirement, scope)) = unmet_rule {
        let denial = with_scope(
            deny(
                Some(policy),
                host,
                Reason::InsufficientScope,
                detail,
                None,
                Some(token_id()),
            ),
            scope,
        );
        // Dry run: the token passed, so its verified claims fill the identity headers as on
        // any allow; only the rule's requirement is unmet.
        return match denial {
            Decision::Deny(mut denial) if policy.dry_run => {
                denial.hint = Some(format!(
                    "this path/method needs {}: grant it to the client, or change spec.rules",
                    requirement.describe()
                ));
                match allow(policy, verified, request, source, identity) {
                    Decision::Allow(allowed) => would_deny(allowed, denial, trace),
                    other => other,
                }
            }
            denial => identified(denial, identity),
        };
    }
    let Some(cel) = &policy.cel else {
        return allow(policy, verified, request, source, identity);
    };
    // The claims stay borrowed by the inputs while `verified` moves into the allow.
    let claim_set = verified.claims.clone();
    let claims = cel
        .reads
        .claims()
        .then(|| claim_set.read_by_expressions(&|name| cel.reads.claims.wants(name)));
    let inputs = Inputs::new(&cel.reads, claims.as_deref(), &view(), now);
    let scope = cel.environment.scope(&inputs);
    let failed = match conditions(policy, rule, &scope, host, Some(token_id()), trace) {
        Err(denial) if !policy.dry_run => return identified(*denial, identity),
        result => result.err(),
    };
    let mut decision = allow(policy, verified, request, source, identity);
    if let Decision::Allow(out) = &mut decision {
        computed_headers(policy, &scope, out, trace);
    }
    match (failed.map(|d| *d), decision) {
        // Dry run: the token passed, so its verified claims fill the identity headers as on
        // any allow; only the condition is not met.
        (Some(Decision::Deny(denial)), Decision::Allow(allowed)) => {
            would_deny(allowed, denial, trace)
        }
        (_, decision) => decision,
    }
}

/// What the request authenticates with: a token, or an API key (`apiKeys`). Returns what
/// passed, where the token was (`None` for a key), and the fingerprint the logs name it by
/// (a key's: its [`apikeys::key_id`]).
async fn credential<'p>(
    policy: &'p Policy,
    cache: Option<&TokenCache>,
    request: &Request<'_>,
    host: &str,
    path: &str,
    now: SystemTime,
    trace: &mut Trace,
) -> Result<(Verified<'p>, Option<TokenSource>, String), Box<Decision>> {
    // With DPoP, `Authorization: DPoP` carries a token too.
    let extract = || {
        if policy.dpop.is_some() {
            request::extract_with_dpop(&policy.token, request)
        } else {
            request::extract(&policy.token, request).map(|(token, source)| (token, source, false))
        }
    };
    if let Some(keys) = &policy.api_keys {
        let key = match request::extract_key(keys, request) {
            Ok(key) => key,
            Err(why) => {
                trace.fail("api key", Reason::ApiKeyInvalid, || why.clone(), || None);
                let denial = deny(Some(policy), host, Reason::ApiKeyInvalid, why, None, None);
                return Err(Box::new(denial));
            }
        };
        let tokens = !policy.issuers.is_empty() || !policy.templates.is_empty();
        let token_sent = tokens && !matches!(extract(), Err(request::ExtractError::Missing(_)));
        match key {
            Some(_) if token_sent && keys.with_token == apikeys::WithToken::Refuse => {
                let text = format!(
                    "both an API key (in the {}) and a token were sent, and spec.apiKeys.withToken is Refuse",
                    keys.describe()
                );
                trace.fail(
                    "api key",
                    Reason::ApiKeyAmbiguous,
                    || text.clone(),
                    || Some("the client must send either the API key or the token".into()),
                );
                let denial = deny(
                    Some(policy),
                    host,
                    Reason::ApiKeyAmbiguous,
                    text,
                    None,
                    None,
                );
                return Err(Box::new(denial));
            }
            Some(_) if token_sent => {
                trace.info("api key", || {
                    "a token was sent too: the token is judged (apiKeys.withToken: Token) and the key removed".into()
                });
            }
            Some((key, source)) => {
                return judge_key(policy, keys, &key, source, host, trace)
                    .map(|(verified, id)| (verified, None, id));
            }
            None if !tokens => {
                let text = format!("no API key in {}", keys.describe());
                trace.fail(
                    "api key",
                    Reason::ApiKeyMissing,
                    || text.clone(),
                    || {
                        Some(format!(
                            "the client must send its key in {}",
                            keys.describe()
                        ))
                    },
                );
                let denial = deny(Some(policy), host, Reason::ApiKeyMissing, text, None, None);
                return Err(Box::new(denial));
            }
            None => {}
        }
    }
    let (token, source, dpop_scheme) = match extract() {
        Ok(found) => found,
        Err(request::ExtractError::Missing(places)) => {
            let text = format!("no token in {places}");
            trace.fail(
                "token",
                Reason::TokenMissing,
                || text.clone(),
                || Some(format!("the client must send the token in {places}")),
            );
            let denial = deny(Some(policy), host, Reason::TokenMissing, text, None, None);
            return Err(Box::new(denial));
        }
        Err(request::ExtractError::Malformed(why)) => {
            trace.fail("token", Reason::TokenMalformed, || why.clone(), || None);
            let denial = deny(Some(policy), host, Reason::TokenMalformed, why, None, None);
            return Err(Box::new(denial));
        }
    };
    let digest = jose::sha256(token.as_bytes());
    let token_id = jose::fingerprint_of(&digest);
    trace.info("token", || {
        format!(
            "from the {} ({} bytes, fingerprint {})",
            source.describe(&policy.token),
            token.len(),
            token_id
        )
    });
    let verified = match authenticate(policy, cache, &token, &digest, now, trace).await {
        Ok(verified) => verified,
        Err(failure) => return Err(Box::new(failure.deny(policy, host, token_id, trace))),
    };
    // Cache hit or not: the certificate binding (RFC 8705) and the DPoP proof are the
    // request's, never remembered with the token. The binding first: it refuses a `cnf` that
    // is not an object, whatever the policy says of DPoP.
    let identified_by = |verified: &Verified<'_>, denial: Box<Decision>| {
        let identity = Identity {
            token_id: token_id.clone(),
            issuer: verified.issuer.as_ref().map(|i| i.issuer.clone()),
            claims: verified.claims.clone(),
        };
        Box::new(identified(*denial, identity))
    };
    certificate_binding(
        policy,
        &verified.claims,
        request,
        host,
        token_id.clone(),
        trace,
    )
    .map_err(|denial| identified_by(&verified, denial))?;
    let mut verified = verified;
    match proof_of_possession(
        policy,
        &verified.claims,
        &token,
        dpop_scheme,
        request,
        host,
        path,
        now,
        trace,
    ) {
        Ok(nonce) => verified.dpop_nonce = nonce,
        Err((reason, text)) => {
            let denial = deny(
                Some(policy),
                host,
                reason,
                text,
                None,
                Some(token_id.clone()),
            );
            return Err(identified_by(&verified, Box::new(denial)));
        }
    }
    Ok((verified, Some(source), token_id))
}

/// Looks the key up and checks the policy's `requiredClaims` against its claims. The key
/// itself is hashed here and never copied, logged or traced: only its id is.
fn judge_key<'p>(
    policy: &'p Policy,
    keys: &apikeys::ApiKeys,
    key: &str,
    source: request::KeySource,
    host: &str,
    trace: &mut Trace,
) -> Result<(Verified<'p>, String), Box<Decision>> {
    let digest = apikeys::digest(key.as_bytes());
    let id = apikeys::key_id(&digest);
    let Some(record) = keys.lookup(&digest) else {
        let text = format!(
            "the API key {id} from the {} is not one of the policy's keys",
            source.describe(keys)
        );
        trace.fail(
            "api key",
            Reason::ApiKeyInvalid,
            || text.clone(),
            || Some("the key was never issued, or its Secret was removed".into()),
        );
        let denial = deny(
            Some(policy),
            host,
            Reason::ApiKeyInvalid,
            text,
            None,
            Some(id),
        );
        return Err(Box::new(denial));
    };
    trace.pass("api key", || {
        format!(
            "key {id} of {} from the {} ({})",
            record.owner,
            source.describe(keys),
            record.source
        )
    });
    if let Err(error) = validate::check_required(&record.claims.map(), policy, trace) {
        return Err(Box::new(
            Failure::Token(error, None).deny(policy, host, id, trace),
        ));
    }
    Ok((
        Verified {
            claims: record.claims.clone(),
            issuer: None,
            phantom: None,
            headers: None,
            dpop_nonce: None,
        },
        id,
    ))
}

/// DPoP (RFC 9449, [`crate::dpop`]): a token bound to a key (`cnf.jkt`) needs the `DPoP` scheme
/// and a valid proof made for this request with that key; `dpop.mode: required` accepts no
/// other token. On success, the nonce the client should use next when the policy sets nonces
/// and the proof's is not the current one; the failure's reason and description otherwise.
#[allow(clippy::too_many_arguments)]
fn proof_of_possession(
    policy: &Policy,
    claims: &ClaimSet,
    token: &str,
    dpop_scheme: bool,
    request: &Request<'_>,
    host: &str,
    path: &str,
    now: SystemTime,
    trace: &mut Trace,
) -> Result<Option<String>, (Reason, String)> {
    use crate::dpop::{self, Mode};
    let fail = |trace: &mut Trace, reason: Reason, text: String, hint: Option<String>| {
        trace.fail("dpop", reason, || text.clone(), || hint.clone());
        Err((reason, text))
    };
    // Most tokens have no `cnf`: the cached JSON text says so without parsing it.
    let may_be_bound = match claims {
        ClaimSet::Json(json) | ClaimSet::Cached { json, .. } => json.contains("\"cnf\""),
        ClaimSet::Parsed(map) => map.contains_key("cnf"),
    };
    if !may_be_bound && policy.dpop.is_none() {
        return Ok(None);
    }
    let bound = match dpop::bound_key(&claims.subset(&|name| name == "cnf")) {
        Ok(bound) => bound,
        Err(text) => return fail(trace, Reason::DpopProofInvalid, text, None),
    };
    let Some(settings) = &policy.dpop else {
        return match bound {
            Some(_) => fail(trace, Reason::DpopBoundTokenAsBearer,
                "the token is DPoP-bound (cnf.jkt) and the policy does not check DPoP proofs".into(),
                Some("set spec.dpop.mode to allowed or required to accept DPoP-bound tokens with their proof".into()),
            ),
            None => Ok(None),
        };
    };
    let jkt = match (dpop_scheme, bound, settings.mode) {
        (false, Some(_), _) => {
            return fail(
                trace,
                Reason::DpopBoundTokenAsBearer,
                "the token is DPoP-bound (cnf.jkt) and was sent with the Bearer scheme".into(),
                Some("the client must send Authorization: DPoP <token> with a DPoP proof".into()),
            );
        }
        (false, None, Mode::Required) => {
            return fail(
                trace,
                Reason::DpopRequired,
                "the policy requires DPoP (dpop.mode: required) and the token is a bearer token"
                    .into(),
                Some("the client must get a DPoP-bound token and send it with a DPoP proof".into()),
            );
        }
        (false, None, _) => {
            trace.info("dpop", || {
                "a bearer token, not DPoP-bound: no proof needed (dpop.mode: allowed)".into()
            });
            return Ok(None);
        }
        (true, None, _) => {
            return fail(
                trace,
                Reason::DpopProofInvalid,
                "the token was sent with the DPoP scheme and is not DPoP-bound (no cnf.jkt)".into(),
                None,
            );
        }
        (true, Some(jkt), _) => jkt,
    };
    let proof = match dpop::proof_header(&request.headers) {
        Ok(proof) => proof,
        Err(e) => return fail(trace, e.reason(), e.to_string(), None),
    };
    let port = match dpop::port_of(request.host) {
        Ok(port) => port,
        Err(_) => {
            return fail(
                trace,
                Reason::DpopProofInvalid,
                "the request's host has an invalid port".into(),
                None,
            );
        }
    };
    let seconds = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let expected = dpop::Expected {
        method: request.method,
        scheme: request.source.scheme,
        host,
        port,
        path,
        reading: policy.path_reading,
        token,
        jkt: &jkt,
        now: seconds,
        skew: policy.clock_skew,
    };
    let accepted = match dpop::verify(&proof, settings, &expected) {
        Ok(accepted) => accepted,
        Err(e) => {
            let hint = match e {
                dpop::DpopError::UnknownScheme => Some("the proxy does not say which scheme the client used (Envoy's HTTP ext_authz family): use the gRPC check, nginx or Traefik for DPoP".to_string()),
                dpop::DpopError::NonceMissing | dpop::DpopError::Nonce(_) => Some("the client must retry with the nonce of the answer's DPoP-Nonce header (RFC 9449 §9); nonces are made with spec.dpop.nonce.secret".to_string()),
                _ => None,
            };
            return fail(trace, e.reason(), e.to_string(), hint);
        }
    };
    trace.pass("dpop", || {
        format!(
            "the proof ({}, jwk thumbprint {jkt} = cnf.jkt) is for {} {}, ath is the token's hash, iat {}s ago",
            accepted.alg,
            request.method,
            expected.uri(),
            i64::try_from(seconds).unwrap_or(i64::MAX).saturating_sub(accepted.iat)
        )
    });
    // Remembered until the proof's iat leaves the window (and no less than the skew from now).
    let until = u64::try_from(accepted.iat)
        .unwrap_or(0)
        .saturating_add(settings.max_age)
        .max(seconds.saturating_add(policy.clock_skew))
        .saturating_add(1);
    if let Err(e) = settings.replay.admit(&jkt, &accepted.jti, seconds, until) {
        let hint = matches!(e, dpop::DpopError::CacheFull(_))
            .then(|| "raise spec.dpop.replayCacheSize, or lower proofMaxAge".to_string());
        return fail(trace, e.reason(), e.to_string(), hint);
    }
    trace.pass("dpop", || "the proof's jti is new on this replica".into());
    // The next nonce, once the proof's is no longer the one handed out.
    let renewed = settings.nonces.as_ref().and_then(|nonces| {
        let issued = accepted.nonce_issued?;
        trace.pass("dpop", || {
            format!(
                "the proof's nonce is this server's, issued {}s ago (lifetime {}s)",
                seconds.saturating_sub(issued),
                nonces.lifetime
            )
        });
        (issued < nonces.issued_at(seconds)).then(|| nonces.issue(seconds))
    });
    Ok(renewed)
}

/// Checks the policy's and then the rule's `when` conditions: the first that is not true
/// (false, or an error) denies.
fn conditions(
    policy: &Policy,
    rule: Option<&Rule>,
    scope: &Scope<'_>,
    host: &str,
    token_id: Option<String>,
    trace: &mut Trace,
) -> Result<(), Box<Decision>> {
    let all = policy
        .when
        .iter()
        .chain(rule.into_iter().flat_map(|r| &r.when));
    for condition in all {
        let e = &condition.expression;
        let failure = match e.condition(scope) {
            Ok(true) => {
                trace.pass("condition", || {
                    format!(
                        "{} `{}` is true ({})",
                        condition.field,
                        e.source,
                        e.describe_inputs(scope.inputs())
                    )
                });
                continue;
            }
            Ok(false) => "is false".to_string(),
            Err(error) => format!("failed: {error}"),
        };
        let text = format!("{} `{}` {failure}", condition.field, e.source);
        trace.fail(
            "condition",
            Reason::ConditionFailed,
            || format!("{text} ({})", e.describe_inputs(scope.inputs())),
            || condition.message.clone(),
        );
        return Err(Box::new(deny_with(
            Some(policy),
            host,
            Reason::ConditionFailed,
            text,
            condition.message.clone(),
            token_id,
            Some(Said {
                text: condition.message.as_deref(),
                status: Some(condition.status),
            }),
        )));
    }
    Ok(())
}

/// Sets the headers `forward.headers` computes; one whose expression fails or reads claims
/// the request does not have is removed, so a client-sent value never passes.
fn computed_headers(policy: &Policy, scope: &Scope<'_>, out: &mut Allow, trace: &mut Trace) {
    for header in &policy.forward.computed {
        match header.expression.header(scope) {
            Ok(value) => {
                trace.pass("forward", || format!("{}: {value:?}", header.name));
                out.headers_to_remove.retain(|h| *h != header.name);
                out.headers_to_set.push((header.name.clone(), value));
            }
            Err(error) => {
                trace.info("forward", || {
                    format!(
                        "{} removed: `{}` {error}",
                        header.name, header.expression.source
                    )
                });
                out.headers_to_remove.push(header.name.clone());
            }
        }
    }
}

/// A token that passed, and what the upstream may receive instead of it.
struct Verified<'p> {
    claims: ClaimSet,
    /// `None` for an API key.
    issuer: Option<IssuerRef<'p>>,
    /// The JWT introspection returned, forwarded in place of the opaque token.
    phantom: Option<String>,
    /// The headers the claims fill, when the verified-token cache has them already.
    headers: Option<Arc<ClaimHeaders>>,
    /// A fresh `DPoP-Nonce` for the client, when the proof's nonce is due for renewal.
    dpop_nonce: Option<String>,
}

/// A token whose signature (or decryption) checked out.
struct Signed<'p> {
    claims: Claims,
    header: jose::Header,
    issuer: IssuerRef<'p>,
    /// The version of the issuer's key set that verified it.
    keys_version: u64,
}

/// Why a token did not pass.
enum Failure<'p> {
    Token(ValidationError, Option<IssuerRef<'p>>),
    Introspection(IntrospectError),
    Inactive,
}

impl Failure<'_> {
    fn deny(self, policy: &Policy, host: &str, token_id: String, trace: &mut Trace) -> Decision {
        match self {
            Failure::Token(error, issuer) => {
                let hint = error.hint(policy, issuer.as_deref());
                if trace.failure().is_none() {
                    trace.fail(
                        error.check(),
                        error.reason(),
                        || error.to_string(),
                        || hint.clone(),
                    );
                }
                // A tenant the template's condition refuses: its message is the denial's.
                let said = match &error {
                    ValidationError::TenantNotAdmitted(refusal) => refusal.message.as_deref(),
                    _ => None,
                };
                deny_with(
                    Some(policy),
                    host,
                    error.reason(),
                    error.to_string(),
                    hint,
                    Some(token_id),
                    said.map(|text| Said {
                        text: Some(text),
                        status: None,
                    }),
                )
            }
            Failure::Introspection(error) => {
                trace.fail(
                    "introspection",
                    error.reason(),
                    || error.to_string(),
                    || None,
                );
                deny(
                    Some(policy),
                    host,
                    error.reason(),
                    error.to_string(),
                    None,
                    Some(token_id),
                )
            }
            Failure::Inactive => {
                let text =
                    "introspection says the token is not active (expired, revoked or unknown)";
                trace.fail(
                    "introspection",
                    Reason::TokenInactive,
                    || text.into(),
                    || Some("get a new token".into()),
                );
                deny(
                    Some(policy),
                    host,
                    Reason::TokenInactive,
                    text.into(),
                    None,
                    Some(token_id),
                )
            }
        }
    }
}

fn token_failure<'p>((error, issuer): TokenFailure<'p>) -> Failure<'p> {
    Failure::Token(error, issuer)
}

/// Validates the token: a JWT with the issuer's keys, an opaque token by introspection, or both
/// (`introspection.when: always`).
async fn authenticate<'p>(
    policy: &'p Policy,
    cache: Option<&TokenCache>,
    token: &str,
    digest: &[u8; 32],
    now: SystemTime,
    trace: &mut Trace,
) -> Result<Verified<'p>, Failure<'p>> {
    let introspection = policy.introspection.as_deref();
    if let Some(intro) = introspection
        && !introspect::looks_like_jwt(token)
    {
        // The slow paths are boxed: their futures (HTTP calls, key fetches) would otherwise make
        // every check's future, copied on each request, tens of KB.
        return Box::pin(introspect_opaque(policy, intro, token, now, trace)).await;
    }
    let (claims, issuer, headers) = match cache {
        Some(cache) => verify_cached(policy, cache, token, digest, now).await?,
        None => {
            let (signed, _) = Box::pin(verify(policy, token, now, trace))
                .await
                .map_err(token_failure)?;
            (
                ClaimSet::Parsed(Arc::new(signed.claims)),
                signed.issuer,
                None,
            )
        }
    };
    if let Some(intro) = introspection.filter(|i| i.when == IntrospectWhen::Always) {
        // Revocation check: the JWT is valid; is it still active?
        let answer = Box::pin(intro.answer(token, finalize(policy, intro, token, now)))
            .await
            .map_err(Failure::Introspection)?;
        if matches!(*answer, Answer::Inactive { .. }) {
            return Err(Failure::Inactive);
        }
        trace.pass("introspection", || "the token is still active".into());
    }
    Ok(Verified {
        claims,
        issuer: Some(issuer),
        phantom: None,
        headers,
        dpop_nonce: None,
    })
}

/// [`verify`] through the verified-token cache: a hit decides as the checks would (see
/// [`crate::verified`]); a token that passes is remembered with the headers its claims fill.
async fn verify_cached<'p>(
    policy: &'p Policy,
    cache: &TokenCache,
    token: &str,
    digest: &[u8; 32],
    now: SystemTime,
) -> Result<(ClaimSet, IssuerRef<'p>, Option<Arc<ClaimHeaders>>), Failure<'p>> {
    let key = verified::Key::new(policy.instance, *digest);
    let seconds = validate::seconds_since_epoch(now);
    let cached = |issuer: &CachedIssuer| match issuer {
        CachedIssuer::Listed(i) => policy.issuers.get(*i).map(IssuerRef::Listed),
        CachedIssuer::Admitted(issuer) => Some(IssuerRef::Admitted(issuer.clone())),
    };
    let current_keys =
        |issuer: &CachedIssuer| cached(issuer).and_then(|i| i.keys.usable_version(now));
    if let Some(entry) = cache.get(&key, seconds, current_keys)
        && let Some(issuer) = cached(&entry.issuer)
    {
        let claims = match &entry.read {
            Some(read) => ClaimSet::Cached {
                json: entry.claims.clone(),
                read: read.clone(),
            },
            None => ClaimSet::Json(entry.claims.clone()),
        };
        return Ok((claims, issuer, Some(entry.headers.clone())));
    }
    // A miss: boxed, so that the hit path's future stays small.
    let (signed, window) = Box::pin(verify(policy, token, now, &mut Trace::off()))
        .await
        .map_err(token_failure)?;
    let claims = Arc::new(signed.claims);
    let headers = Arc::new(claim_headers(policy, &claims));
    let issuer = match &signed.issuer {
        IssuerRef::Listed(listed) => policy
            .issuers
            .iter()
            .position(|i| std::ptr::eq(i, *listed))
            .map(CachedIssuer::Listed),
        IssuerRef::Admitted(admitted) => Some(CachedIssuer::Admitted(admitted.clone())),
    };
    if let (Some(window), Some(issuer)) = (window, issuer) {
        // Only what a hit reads (`Policy::cached_claims`): a smaller entry, and less to parse.
        let json = match &policy.cached_claims {
            None => serde_json::to_string(&*claims),
            Some(kept) => serde_json::to_string(
                &claims
                    .iter()
                    .filter(|(k, _)| kept.iter().any(|n| n == *k))
                    .collect::<std::collections::BTreeMap<_, _>>(),
            ),
        };
        let json: Arc<str> = json.unwrap_or_default().into();
        // The claims the expressions read stay parsed: a hit then evaluates them as they are.
        let read = policy
            .cel
            .as_ref()
            .filter(|cel| cel.reads.claims())
            .map(|cel| {
                Arc::new(
                    claims
                        .iter()
                        .filter(|(k, _)| cel.reads.claims.wants(k))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                )
            });
        cache.insert(
            key,
            json,
            read,
            issuer,
            signed.keys_version,
            headers.clone(),
            window,
            seconds,
        );
    }
    Ok((ClaimSet::Parsed(claims), signed.issuer, Some(headers)))
}

async fn introspect_opaque<'p>(
    policy: &'p Policy,
    intro: &Introspector,
    token: &str,
    now: SystemTime,
    trace: &mut Trace,
) -> Result<Verified<'p>, Failure<'p>> {
    let answer = intro
        .answer(token, finalize(policy, intro, token, now))
        .await
        .map_err(Failure::Introspection)?;
    let Answer::Active { claims, jwt, .. } = &*answer else {
        return Err(Failure::Inactive);
    };
    trace.pass("introspection", || {
        format!(
            "active{}",
            if jwt.is_some() {
                ", with a JWT to forward"
            } else {
                ""
            }
        )
    });
    trace.claims(|| (**claims).clone());
    // The answer's claims meet the same checks as a JWT's (cached answers are re-checked, so an
    // exp passing while cached still counts).
    let issuer = answer_issuer(policy, claims, trace)
        .await
        .map_err(|e| Failure::Token(e, None))?;
    let fail = |e| Failure::Token(e, Some(issuer.clone()));
    validate::check_answer_claims(claims, &issuer, policy, intro.accept_without, now, trace)
        .map_err(fail)?;
    validate::check_azure(claims, &issuer, policy, trace).map_err(fail)?;
    validate::check_required(claims, policy, trace).map_err(fail)?;
    Ok(Verified {
        claims: ClaimSet::Parsed(claims.clone()),
        issuer: Some(issuer),
        phantom: jwt.clone().filter(|_| intro.phantom_token),
        headers: None,
        dpop_nonce: None,
    })
}

/// The issuer an introspection answer speaks for: its `iss` (a tenant an issuer template's
/// condition admits among them), or the policy's first issuer.
async fn answer_issuer<'p>(
    policy: &'p Policy,
    claims: &Claims,
    trace: &mut Trace,
) -> Result<IssuerRef<'p>, ValidationError> {
    match claims.get("iss") {
        Some(serde_json::Value::String(iss)) => match policy.issuer(iss) {
            Some(issuer) => Ok(IssuerRef::Listed(issuer)),
            None => admit(policy, iss, validate::unknown_issuer(policy, iss), trace).await,
        },
        Some(_) => Err(ValidationError::ClaimType {
            claim: "iss",
            expected: "a string",
        }),
        None => policy
            .issuers
            .first()
            .map(IssuerRef::Listed)
            .ok_or(ValidationError::IssuerMissing),
    }
}

/// The issuer of a token whose `iss` no listed issuer has, when it names a tenant an issuer
/// template's condition admits: built (and its keys fetched) the first time, from then on the
/// one the template holds. `refused`: the answer when no template's condition admits it.
async fn admit<'p>(
    policy: &'p Policy,
    iss: &str,
    refused: ValidationError,
    trace: &mut Trace,
) -> Result<IssuerRef<'p>, ValidationError> {
    if !matches!(refused, ValidationError::TenantNotAllowed { .. }) {
        return Err(refused);
    }
    let mut refusal = None;
    for template in &policy.templates {
        let (Some(admission), Some(tenant)) = (&template.admission, template.tenant_of(iss)) else {
            continue;
        };
        let expression = &admission.condition.expression.source;
        let outcome = match admission.admits(tenant) {
            Ok(true) => None,
            Ok(false) => Some("is false".to_string()),
            Err(error) => Some(format!("failed: {error}")),
        };
        if let Some(outcome) = outcome {
            refusal.get_or_insert_with(|| {
                ValidationError::TenantNotAdmitted(Box::new(validate::TenantRefusal {
                    tenant: tenant.to_string(),
                    template: template.issuer.clone(),
                    field: admission.field.clone(),
                    expression: expression.to_string(),
                    outcome,
                    message: admission.condition.message.clone(),
                }))
            });
            continue;
        }
        trace.pass("tenant", || {
            format!(
                "{tenant:?} of the issuer template {}: {}.admitTenants `{expression}` is true (tenant = {tenant:?})",
                template.issuer, admission.field
            )
        });
        return match admission.issuer(tenant).await {
            Ok(admitted) => {
                if admitted.first {
                    trace.info("tenant", || {
                        format!(
                            "{tenant:?} admitted now: its issuer built and its keys ({}) fetched on first use",
                            admitted.issuer.keys.id()
                        )
                    });
                }
                Ok(IssuerRef::Admitted(admitted.issuer))
            }
            Err(cause) => Err(ValidationError::TenantUnavailable {
                tenant: tenant.to_string(),
                template: template.issuer.clone(),
                cause: Box::new(cause),
            }),
        };
    }
    Err(refusal.unwrap_or(refused))
}

fn exp(claims: &Claims) -> Option<f64> {
    claims.get("exp").and_then(serde_json::Value::as_f64)
}

/// Calls the endpoint and verifies every JWT in its answer: what gets cached.
async fn finalize(
    policy: &Policy,
    intro: &Introspector,
    token: &str,
    now: SystemTime,
) -> Result<Answer, IntrospectError> {
    let invalid = |what: &str, e: ValidationError| {
        IntrospectError::Invalid(format!("{what} does not verify: {e}"))
    };
    match intro.call(token).await? {
        Raw::Inactive => Ok(Answer::Inactive {
            ttl: intro.negative_ttl(),
        }),
        Raw::Claims {
            claims,
            jwt,
            max_age,
        } => active(policy, intro, claims, jwt, max_age, now).await,
        Raw::Jwt {
            token: jwt,
            max_age,
        } => {
            let claims = verify(policy, &jwt, now, &mut Trace::off())
                .await
                .map_err(|(e, _)| invalid("the JWT answer", e))?
                .0
                .claims;
            let ttl = intro.active_ttl(max_age, exp(&claims), validate::seconds_since_epoch(now));
            Ok(Answer::Active {
                claims: Arc::new(claims),
                jwt: Some(jwt),
                ttl,
            })
        }
        Raw::Signed {
            token: signed,
            max_age,
        } => {
            let Signed { claims, header, .. } =
                verify_signed(policy, &signed, now, &mut Trace::off())
                    .await
                    .map_err(|(e, _)| invalid("the signed introspection answer", e))?;
            if header.typ.as_deref() != Some("token-introspection+jwt") {
                return Err(IntrospectError::Invalid(format!(
                    "the signed answer has typ {:?}, not token-introspection+jwt (RFC 9701)",
                    header.typ
                )));
            }
            let audiences =
                claims::claim_values(claims.get("aud").unwrap_or(&serde_json::Value::Null), None);
            if !audiences.contains(&intro.client_id) {
                return Err(IntrospectError::Invalid(format!(
                    "the signed answer is for audience {audiences:?}, not this client"
                )));
            }
            let Some(serde_json::Value::Object(inner)) = claims.get("token_introspection") else {
                return Err(IntrospectError::Invalid(
                    "the signed answer has no token_introspection object".into(),
                ));
            };
            match introspect::parse_json(inner.clone(), max_age)? {
                Raw::Claims {
                    claims,
                    jwt,
                    max_age,
                } => active(policy, intro, claims, jwt, max_age, now).await,
                _ => Ok(Answer::Inactive {
                    ttl: intro.negative_ttl(),
                }),
            }
        }
    }
}

/// An active answer; a phantom JWT in it must verify like any access token.
async fn active(
    policy: &Policy,
    intro: &Introspector,
    claims: Claims,
    jwt: Option<String>,
    max_age: Option<std::time::Duration>,
    now: SystemTime,
) -> Result<Answer, IntrospectError> {
    if intro.phantom_token && jwt.is_none() {
        return Err(IntrospectError::Invalid(
            "the answer has no jwt to forward (phantomToken: true)".into(),
        ));
    }
    let claims = match &jwt {
        Some(jwt) => {
            verify(policy, jwt, now, &mut Trace::off())
                .await
                .map_err(|(e, _)| {
                    IntrospectError::Invalid(format!("the phantom JWT does not verify: {e}"))
                })?
                .0
                .claims
        }
        None => claims,
    };
    let ttl = intro.active_ttl(max_age, exp(&claims), validate::seconds_since_epoch(now));
    Ok(Answer::Active {
        claims: Arc::new(claims),
        jwt,
        ttl,
    })
}

type TokenFailure<'p> = (ValidationError, Option<IssuerRef<'p>>);

/// Checks a JWT completely: signature with its issuer's keys, then time, audience and the
/// policy-wide required claims. Also says when its time checks pass.
async fn verify<'p>(
    policy: &'p Policy,
    token: &str,
    now: SystemTime,
    trace: &mut Trace,
) -> Result<(Signed<'p>, Option<TimeWindow>), TokenFailure<'p>> {
    let signed = verify_signed(policy, token, now, trace).await?;
    let (claims, issuer) = (&signed.claims, &signed.issuer);
    let fail = |e| (e, Some(issuer.clone()));
    validate::check_claims(claims, issuer, policy, now, trace).map_err(fail)?;
    validate::check_azure(claims, issuer, policy, trace).map_err(fail)?;
    validate::check_required(claims, policy, trace).map_err(fail)?;
    let window = TimeWindow::of(claims, issuer, policy);
    Ok((signed, window))
}

/// Checks a token's signature with its issuer's keys (refetching once on an unknown `kid`),
/// decrypting it first when it is an encrypted (nested) token.
async fn verify_signed<'p>(
    policy: &'p Policy,
    token: &str,
    now: SystemTime,
    trace: &mut Trace,
) -> Result<Signed<'p>, TokenFailure<'p>> {
    if !jwe::is_compact_jwe(token) {
        return verify_jws(policy, token, now, trace).await;
    }
    if trace.is_on()
        && let Ok(jwe) = jwe::parse(token)
    {
        trace.header = Some(jwe.header.object.clone());
    }
    let Some(decryptor) = &policy.decryption else {
        return Err((ValidationError::Malformed(JoseError::Encrypted), None));
    };
    // A private-key operation waits for a decryption thread of its own (`jwe::gate`, lowest
    // priority), so a flood of fresh encrypted tokens never holds the runtime's workers.
    let span = crate::otel::child("jwe.decrypt", opentelemetry::trace::SpanKind::Internal);
    let private_key = jwe::Decryptor::uses_private_key(token);
    let decrypted = if private_key {
        let (decryptor, token) = (decryptor.clone(), token.to_owned());
        jwe::gate::gate()
            .run(move || decryptor.decrypt(&token))
            .await
    } else {
        decryptor.decrypt(token)
    };
    if span.is_some() {
        let error = decrypted.as_ref().err().map(|e| e.reason().as_str());
        let mut attributes = vec![
            opentelemetry::KeyValue::new("tollgate.jwe.private_key", private_key),
            opentelemetry::KeyValue::new("tollgate.outcome", error.unwrap_or("ok")),
        ];
        if let Ok(decrypted) = &decrypted {
            attributes.push(opentelemetry::KeyValue::new(
                "tollgate.jwe.alg",
                decrypted.header.alg.clone(),
            ));
            attributes.push(opentelemetry::KeyValue::new(
                "tollgate.jwe.enc",
                decrypted.header.enc.clone(),
            ));
        }
        crate::otel::end_child(span, attributes, error.map(Into::into));
    }
    let decrypted = decrypted.map_err(|e| (ValidationError::Decryption(e), None))?;
    trace.pass("decrypt", || {
        format!(
            "JWE alg {}, enc {}, decrypted with key {}",
            decrypted.header.alg, decrypted.header.enc, decrypted.key
        )
    });
    let inner = std::str::from_utf8(&decrypted.plaintext).unwrap_or_default();
    if jwe::is_compact_jwe(inner) {
        return Err((
            ValidationError::Decryption(JweError::Malformed(
                "the decrypted token is encrypted again; one layer of encryption is accepted"
                    .into(),
            )),
            None,
        ));
    }
    let jws_shaped = jose::is_compact(inner, 3);
    if jws_shaped && (policy.require_signed || !is_unsecured(inner)) {
        return verify_jws(policy, inner, now, trace).await;
    }
    // Unsigned claims only when the key management proves the sender (compile refuses other
    // keys; this holds even if a key slipped through).
    let proves_sender = jwe::KeyManagement::parse(&decrypted.header.alg)
        .is_some_and(jwe::KeyManagement::proves_sender);
    if policy.require_signed || !proves_sender {
        return Err((
            ValidationError::NotSigned {
                cty: decrypted.header.cty.clone(),
            },
            None,
        ));
    }
    let out = unsigned_claims(policy, &decrypted, jws_shaped.then_some(inner))?;
    trace.claims(|| out.claims.clone());
    trace.pass("signature", || {
        "none: the claims are only encrypted (requireSignedTokens: false)".into()
    });
    Ok(out)
}

/// Whether a compact JWS is an unsecured JWT (`alg: none`, empty signature).
fn is_unsecured(token: &str) -> bool {
    token.ends_with('.')
        && token
            .split('.')
            .next()
            .and_then(|h| jose::decode_object(h, "header").ok())
            .and_then(|h| h.get("alg").and_then(|a| a.as_str()).map(str::to_owned))
            .is_some_and(|alg| alg.eq_ignore_ascii_case("none"))
}

/// The claims of a decrypted token that carries no signature (`requireSignedTokens: false`):
/// a JSON object, or an unsecured JWT.
fn unsigned_claims<'p>(
    policy: &'p Policy,
    decrypted: &jwe::Decrypted,
    unsecured: Option<&str>,
) -> Result<Signed<'p>, TokenFailure<'p>> {
    let malformed = |e| (ValidationError::Malformed(e), None);
    let claims = match unsecured.and_then(|t| t.split('.').nth(1)) {
        Some(payload) => jose::decode_object(payload, "payload").map_err(malformed)?,
        None => jose::parse_object(&decrypted.plaintext, "payload").map_err(malformed)?,
    };
    let iss = match claims.get("iss") {
        Some(serde_json::Value::String(iss)) => iss.clone(),
        None => return Err((ValidationError::IssuerMissing, None)),
        Some(_) => {
            return Err((
                ValidationError::ClaimType {
                    claim: "iss",
                    expected: "a string",
                },
                None,
            ));
        }
    };
    // Never a tenant admitted by a condition: requireSignedTokens: false refuses them.
    let issuer = policy
        .issuer(&iss)
        .map(IssuerRef::Listed)
        .ok_or_else(|| (validate::unknown_issuer(policy, &iss), None))?;
    let header = jose::Header {
        alg: decrypted.header.alg.clone(),
        kid: decrypted.header.kid.clone(),
        typ: decrypted.header.typ.clone(),
        cty: decrypted.header.cty.clone(),
        crit: None,
    };
    // Nothing was verified with the issuer's keys; entries still expire with them.
    let keys_version = issuer.keys.version().unwrap_or(0);
    Ok(Signed {
        claims,
        header,
        issuer,
        keys_version,
    })
}

/// Checks a compact JWS's signature with its issuer's keys.
async fn verify_jws<'p>(
    policy: &'p Policy,
    token: &str,
    now: SystemTime,
    trace: &mut Trace,
) -> Result<Signed<'p>, TokenFailure<'p>> {
    let jws = jose::parse(token).map_err(|e| (ValidationError::Malformed(e), None))?;
    trace.token(|| jws.header_object.clone(), || jws.claims.clone());
    trace.pass("token", || {
        format!(
            "a JWT (JWS): alg {}, kid {}",
            jws.header.alg,
            jws.header
                .kid
                .as_deref()
                .map_or_else(|| "(none)".to_string(), |k| format!("{k:?}"))
        )
    });
    let (issuer, alg) = match validate::route(&jws, policy) {
        Ok((issuer, alg)) => (IssuerRef::Listed(issuer), alg),
        Err(refused @ ValidationError::TenantNotAllowed { .. }) => {
            let iss = jws
                .claims
                .get("iss")
                .and_then(|v| v.as_str())
                .unwrap_or_default();
            let issuer = admit(policy, iss, refused, trace)
                .await
                .map_err(|e| (e, None))?;
            let alg =
                validate::algorithm_for(&jws, &issuer).map_err(|e| (e, Some(issuer.clone())))?;
            (issuer, alg)
        }
        Err(e) => {
            // The issuer named by `iss` (if accepted) makes the hint precise.
            let named = jws
                .claims
                .get("iss")
                .and_then(|v| v.as_str())
                .and_then(|iss| policy.issuer(iss))
                .map(IssuerRef::Listed);
            return Err((e, named));
        }
    };
    trace.pass("issuer", || validate::describe_issuer(policy, &issuer));
    trace.pass("algorithm", || {
        format!("{alg:?} is allowed for this issuer")
    });
    let fail = |e| (e, Some(issuer.clone()));
    let unavailable = |e: Unusable| {
        fail(ValidationError::IssuerUnavailable {
            issuer: issuer.issuer.clone(),
            detail: e.to_string(),
        })
    };
    let keys = match issuer.keys.usable(now) {
        Ok(keys) => keys,
        Err(Unusable::NeverFetched(_)) => {
            issuer.keys.refresh_on_miss(None).await;
            issuer.keys.usable(now).map_err(unavailable)?
        }
        Err(stale) => return Err(unavailable(stale)),
    };
    trace.pass("keys", || {
        let mut text = format!("{}: {} usable keys", issuer.keys.id(), keys.len());
        for rejected in &keys.rejected {
            text.push_str(&format!(
                "; refused {}: {}",
                rejected.kid.as_deref().unwrap_or("(no kid)"),
                rejected.error
            ));
        }
        text
    });
    let first = validate::verify_signature(&jws, alg, &keys);
    // A kid the set does not have, tried in vain against its keys without a kid: as likely a
    // rotation as any unknown kid, so it refetches too (a keyless key must not block that).
    let unknown_kid = jws.header.kid.as_deref().filter(|kid| !keys.has_kid(kid));
    let missed = match &first {
        Err(ValidationError::KeyNotFound(_)) => true,
        Err(ValidationError::SignatureInvalid(_)) => unknown_kid.is_some(),
        _ => false,
    };
    issuer.keys.record_lookup(!missed);
    let signed_by = |key: &crate::jwks::VerifyingKey| {
        format!(
            "verified with key {} ({})",
            key.kid
                .as_deref()
                .map_or_else(|| "without kid".to_string(), |k| format!("{k:?}")),
            key.kind.describe()
        )
    };
    let mut keys_version = keys.version();
    match first {
        Ok(key) => trace.pass("signature", || signed_by(key)),
        Err(error) if missed => {
            // Rotation: the issuer may have published a new key since the last refresh.
            if issuer.keys.refresh_on_miss(Some(&keys)).await != Refetch::Refreshed {
                return Err(fail(error));
            }
            let keys = issuer.keys.current().ok_or_else(|| fail(error))?;
            let key = validate::verify_signature(&jws, alg, &keys).map_err(fail)?;
            trace.pass("signature", || {
                format!("{} after refetching the key set", signed_by(key))
            });
            keys_version = keys.version();
        }
        Err(e) => return Err(fail(e)),
    }
    Ok(Signed {
        claims: jws.claims,
        header: jws.header,
        issuer,
        keys_version,
    })
}

fn forward_headers(policy: &Policy) -> impl Iterator<Item = &str> {
    policy
        .forward
        .claims_to_headers
        .iter()
        .map(|(_, header)| header.as_str())
        .chain(policy.forward.payload_header.as_deref())
        .chain(policy.forward.computed.iter().map(|h| h.name.as_str()))
}

/// The headers a token's claims fill for the upstream.
fn claim_headers(policy: &Policy, claims: &Claims) -> ClaimHeaders {
    let mut out = ClaimHeaders::default();
    for (claim, header) in &policy.forward.claims_to_headers {
        match claims::lookup(claims, claim).and_then(claims::header_value) {
            Some(value) => out.set.push((header.clone(), value)),
            // Absent (or not representable): make sure a client-sent value does not pass.
            None => out.remove.push(header.clone()),
        }
    }
    if let Some(header) = &policy.forward.payload_header {
        let json = serde_json::to_vec(claims).unwrap_or_default();
        out.set.push((header.clone(), B64.encode(json)));
    }
    out
}

/// A denial after the credential passed: it names who was denied (in the decision log).
fn identified(decision: Decision, identity: Identity) -> Decision {
    match decision {
        Decision::Deny(mut deny) => {
            deny.identity = Some(Box::new(identity));
            Decision::Deny(deny)
        }
        allow => allow,
    }
}

fn allow(
    policy: &Arc<Policy>,
    verified: Verified<'_>,
    request: &Request<'_>,
    source: Option<TokenSource>,
    identity: Identity,
) -> Decision {
    let mut out = Allow {
        policy: Some(policy.id.clone()),
        reason: Reason::Valid,
        issuer: verified.issuer.as_ref().map(|i| i.issuer.clone()),
        identity: Some(identity),
        ..Allow::default()
    };
    let claims = verified.claims;
    // The debug secret never travels upstream.
    out.headers_to_remove
        .extend(policy.trace_header.as_ref().map(|t| t.name.clone()));
    let from_claims = match verified.headers {
        Some(headers) => headers,
        None => Arc::new(claim_headers(policy, &claims.map())),
    };
    out.headers_to_set.extend(from_claims.set.iter().cloned());
    out.headers_to_remove
        .extend(from_claims.remove.iter().cloned());
    let drop_token = match &verified.phantom {
        // Phantom token: the upstream gets the JWT, and the opaque token leaves wherever it was.
        Some(jwt) => {
            out.headers_to_set
                .push(("authorization".into(), format!("Bearer {jwt}")));
            !(source == Some(TokenSource::Header) && policy.token.header == "authorization")
        }
        None => !policy.forward.keep_token,
    };
    if drop_token && let Some(source) = source {
        remove_token(policy, request, source, &mut out);
    }
    remove_key(policy, request, &mut out);
    if let Some(nonce) = verified.dpop_nonce {
        out.response_headers.push(("dpop-nonce", nonce));
    }
    // The dynamic metadata: every claim, or those `forward.metadataClaims` lists.
    out.claims = match &policy.forward.metadata_claims {
        MetadataClaims::All => Some(claims),
        MetadataClaims::Listed(names) if names.is_empty() => None,
        MetadataClaims::Listed(names) => {
            let wanted = |name: &str| names.iter().any(|n| n == name);
            Some(ClaimSet::Parsed(Arc::new(match &claims {
                ClaimSet::Parsed(map) => map
                    .iter()
                    .filter(|(k, _)| wanted(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                _ => claims.subset(&wanted).into_owned(),
            })))
        }
    };
    Decision::Allow(out)
}

/// Takes the token out of the place `source` names, so the upstream does not receive it.
fn remove_token(policy: &Policy, request: &Request<'_>, source: TokenSource, out: &mut Allow) {
    match source {
        TokenSource::Header => out.headers_to_remove.push(policy.token.header.clone()),
        TokenSource::Query => out
            .query_params_to_remove
            .extend(policy.token.query.clone()),
        TokenSource::Cookie => {
            let Some(name) = policy.token.cookie.as_deref() else {
                return;
            };
            let Some(cookies) = request.headers.get("cookie") else {
                return;
            };
            match request::cookie_without(&cookies, name) {
                Some(rest) if rest == *cookies => {}
                Some(rest) => out.headers_to_set.push(("cookie".into(), rest)),
                None => out.headers_to_remove.push("cookie".into()),
            }
        }
    }
}

/// Takes the API key out of the places the policy reads it: the upstream never receives a
/// key (`keepToken` does not apply to keys). A key in the query can only be removed by
/// Envoy's gRPC check: forward authentication refuses such a request (`query_key`).
fn remove_key(policy: &Policy, request: &Request<'_>, out: &mut Allow) {
    let Some(keys) = &policy.api_keys else {
        return;
    };
    out.headers_to_remove.extend(keys.header.clone());
    if let Some(query) = &keys.query {
        out.query_params_to_remove.push(query.clone());
        out.query_key |= !matches!(request::from_query(request.path, query), Ok(None));
    }
}

/// RFC 6750 quoted-string content: printable ASCII without `"` and `\`.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(400));
    for c in text.chars().take(400) {
        match c {
            '"' | '\\' => out.push('\''),
            '…' => out.push_str("..."),
            '–' | '—' => out.push('-'),
            c if (' '..='~').contains(&c) => out.push(c),
            _ => out.push('?'),
        }
    }
    out
}

/// An `insufficient_scope` denial whose challenge names `scope` (RFC 6750 §3), checked when
/// the policy compiled to be scope tokens that quoting keeps whole.
fn with_scope(mut decision: Decision, scope: Option<&str>) -> Decision {
    if let (Decision::Deny(deny), Some(scope)) = (&mut decision, scope)
        && let Some(challenge) = &mut deny.www_authenticate
    {
        challenge.push_str(&format!(", scope=\"{}\"", quoted(scope)));
    }
    decision
}

/// The answer while policies or keys are still loading: 503 `not_ready`, never an allow.
pub fn not_ready(host: &str) -> Decision {
    deny(
        None,
        host,
        Reason::NotReady,
        "policies are still loading".into(),
        None,
        None,
    )
}

/// The request's client certificate, parsed: `None` when the gateway sent none, an error
/// when what it sent is not one certificate.
fn client_certificate(request: &Request<'_>) -> Result<Option<ClientCertificate>, CertError> {
    request
        .source
        .certificate
        .filter(|sent| !sent.is_empty())
        .map(ClientCertificate::from_envoy)
        .transpose()
}

fn describe_certificate(certificate: &ClientCertificate) -> String {
    format!(
        "subject {:?}, issuer {:?}, x5t#S256 {}",
        certificate.subject,
        certificate.issuer,
        certificate.thumbprint()
    )
}

fn unreadable_certificate(
    policy: &Policy,
    host: &str,
    error: &CertError,
    token_id: Option<String>,
    trace: &mut Trace,
) -> Box<Decision> {
    let text = format!("the gateway's client certificate: {error}");
    trace.fail(
        "certificate",
        Reason::RequestMalformed,
        || text.clone(),
        || None,
    );
    Box::new(deny(
        Some(policy),
        host,
        Reason::RequestMalformed,
        text,
        None,
        token_id,
    ))
}

/// `clientCertificate.required`: the request must come with a certificate that parses.
fn required_certificate(
    policy: &Policy,
    request: &Request<'_>,
    host: &str,
    trace: &mut Trace,
) -> Result<(), Box<Decision>> {
    match client_certificate(request) {
        Ok(Some(certificate)) => {
            trace.pass("certificate", || {
                format!(
                    "clientCertificate.required: {}",
                    describe_certificate(&certificate)
                )
            });
            Ok(())
        }
        Ok(None) => {
            let text = "clientCertificate.required: the request came without a client certificate";
            let hint = "the client must present a TLS client certificate, and the gateway must pass it (Envoy: include_peer_certificate: true; forward auth: a certificate header from a proxy in --client-cert-proxies)";
            trace.fail(
                "certificate",
                Reason::CertificateRequired,
                || text.into(),
                || Some(hint.into()),
            );
            Err(Box::new(deny(
                Some(policy),
                host,
                Reason::CertificateRequired,
                text.into(),
                Some(hint.into()),
                None,
            )))
        }
        Err(error) => Err(unreadable_certificate(policy, host, &error, None, trace)),
    }
}

/// The `x5t#S256` member of a token's `cnf` claim (RFC 8705 §3.1), if it has one. A `cnf`
/// that is not an object, or a thumbprint that is not a string, is an error: whether the
/// token is bound cannot be told, so it is not taken as unbound.
pub fn bound_thumbprint(claims: &ClaimSet) -> Result<Option<String>, &'static str> {
    // A cache hit holds the claims as JSON this process wrote (member names unescaped): most
    // tokens are not bound, and those are told without parsing anything.
    if let ClaimSet::Json(json) = claims
        && !json.contains("\"cnf\"")
    {
        return Ok(None);
    }
    let claims = claims.subset(&|name| name == "cnf");
    match claims.get("cnf") {
        None => Ok(None),
        Some(serde_json::Value::Object(cnf)) => match cnf.get("x5t#S256") {
            None => Ok(None),
            Some(serde_json::Value::String(thumbprint)) => Ok(Some(thumbprint.clone())),
            Some(_) => Err("the token's cnf.x5t#S256 is not a string"),
        },
        Some(_) => Err("the token's cnf claim is not a JSON object"),
    }
}

/// RFC 8705 §3: a token bound to a certificate passes only with that certificate, whatever
/// the policy says and whether or not the verified-token cache knew the token.
fn certificate_binding(
    policy: &Policy,
    claims: &ClaimSet,
    request: &Request<'_>,
    host: &str,
    token_id: String,
    trace: &mut Trace,
) -> Result<(), Box<Decision>> {
    let fail = |reason: Reason, text: String, hint: &str, trace: &mut Trace| {
        trace.fail("certificate", reason, || text.clone(), || Some(hint.into()));
        Box::new(deny(
            Some(policy),
            host,
            reason,
            text,
            Some(hint.into()),
            Some(token_id.clone()),
        ))
    };
    let thumbprint = match bound_thumbprint(claims) {
        Ok(Some(thumbprint)) => thumbprint,
        Ok(None) => return Ok(()),
        Err(why) => {
            return Err(fail(
                Reason::CertificateBindingMismatch,
                why.into(),
                "the issuer's cnf claim must be an object whose x5t#S256 is the base64url SHA-256 of the certificate (RFC 8705)",
                trace,
            ));
        }
    };
    let certificate = match client_certificate(request) {
        Ok(Some(certificate)) => certificate,
        Ok(None) => {
            return Err(fail(
                Reason::CertificateMissing,
                format!(
                    "the token is bound to the client certificate with x5t#S256 {thumbprint}, and the request came without a certificate"
                ),
                "the client must present the certificate the token was issued for, and the gateway must pass it (Envoy: include_peer_certificate: true; forward auth: a certificate header from a proxy in --client-cert-proxies)",
                trace,
            ));
        }
        Err(error) => {
            return Err(unreadable_certificate(
                policy,
                host,
                &error,
                Some(token_id.clone()),
                trace,
            ));
        }
    };
    if certificate.thumbprint() != thumbprint {
        return Err(fail(
            Reason::CertificateBindingMismatch,
            format!(
                "the token is bound to the client certificate with x5t#S256 {thumbprint}; the request's is {}",
                describe_certificate(&certificate)
            ),
            "the client must use the certificate the token was issued for (or get a token with its certificate)",
            trace,
        ));
    }
    trace.pass("certificate", || {
        format!(
            "cnf.x5t#S256 matches the client certificate: {}",
            describe_certificate(&certificate)
        )
    });
    Ok(())
}

/// Builds a denial: status, challenge and JSON body.
pub fn deny(
    policy: Option<&Policy>,
    host: &str,
    reason: Reason,
    description: String,
    hint: Option<String>,
    token_id: Option<String>,
) -> Decision {
    deny_with(policy, host, reason, description, hint, token_id, None)
}

/// What a denial says in place of its reason's fixed text and status: a failed condition's
/// `message` and `status`.
#[derive(Clone, Copy, Debug, Default)]
struct Said<'a> {
    text: Option<&'a str>,
    status: Option<u16>,
}

/// [`deny`], with what the policy says about this denial.
fn deny_with(
    policy: Option<&Policy>,
    host: &str,
    reason: Reason,
    description: String,
    hint: Option<String>,
    token_id: Option<String>,
    said: Option<Said<'_>>,
) -> Decision {
    let said = said.unwrap_or_default();
    let configured = policy.map_or(401, |p| p.deny.status);
    let status = match reason {
        Reason::InsufficientScope
        | Reason::NoPolicy
        | Reason::PolicyNotFound
        | Reason::PolicyConflict
        | Reason::ProxyNotTrusted
        | Reason::CertificateRequired
        | Reason::CertificateUntrusted => 403,
        Reason::IssuerUnavailable
        | Reason::NotReady
        | Reason::IntrospectionUnavailable
        | Reason::IntrospectionTimeout => 503,
        Reason::IntrospectionFailed => 502,
        Reason::DpopReplayCacheFull | Reason::DecryptionOverloaded => 503,
        // RFC 9449 §9: the client retries with the nonce only on a 401.
        Reason::DpopNonceRequired => 401,
        Reason::IntrospectionInvalid => 500,
        Reason::RequestMalformed | Reason::ApiKeyAmbiguous => 400,
        Reason::ApiKeyMissing | Reason::ApiKeyInvalid => 401,
        Reason::Internal => 500,
        Reason::ResourceMetadata => 404,
        _ => configured,
    };
    let status = said.status.unwrap_or(status);
    // RFC 9449 §9: a policy with nonces hands the current one out with every challenge, so a
    // client learns it from its first answer, whichever check failed.
    let dpop_nonce = policy
        .and_then(|p| p.dpop.as_ref()?.nonces.as_ref())
        .filter(|_| reason.challenges() && !reason.is_api_key())
        .map(|nonces| {
            nonces.issue(
                SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            )
        });
    let detail = policy.map_or(DenyDetail::Reason, |p| p.deny.detail);
    let message = policy.and_then(|p| p.deny.message.clone());
    // Clients learn the reason code and its fixed text; `description` (which may name
    // internal URLs, settings and what the request carried) is for the log and `explain`.
    let public_description = match detail {
        DenyDetail::Reason => Some(format!(
            "{reason}: {}",
            said.text.unwrap_or(reason.public_text())
        )),
        DenyDetail::None => None,
    };
    let www_authenticate = reason.challenges().then(|| {
        let realm = policy.and_then(|p| p.deny.realm.as_deref()).unwrap_or(host);
        let dpop = policy.and_then(|p| p.dpop.as_ref());
        // The challenge that carries the error: DPoP's for a proof failure, or when the policy
        // accepts nothing else (RFC 9449 §7.1); Bearer's otherwise.
        let on_dpop =
            dpop.is_some_and(|d| reason.is_dpop() || d.mode == crate::dpop::Mode::Required);
        let challenge = |scheme: &str, with_error: bool, algs: Option<String>| {
            let mut params = Vec::with_capacity(4);
            // No host known (forward-auth headers that could not be read): no empty realm.
            if !realm.is_empty() {
                params.push(format!("realm=\"{}\"", quoted(realm)));
            }
            if with_error && let Some(error) = reason.oauth_error() {
                params.push(format!("error=\"{error}\""));
                if let Some(text) = &public_description {
                    params.push(format!("error_description=\"{}\"", quoted(text)));
                }
            }
            if let Some(algs) = algs {
                params.push(format!("algs=\"{algs}\""));
            }
            // RFC 9728 §5.1: where the client finds the authorization servers for this
            // resource. The URL holds only characters a quoted-string carries unescaped
            // (compile checks).
            if let Some(resource) = policy.and_then(|p| p.resource.as_deref()) {
                params.push(format!("resource_metadata=\"{}\"", resource.metadata_url));
            }
            if params.is_empty() {
                scheme.to_string()
            } else {
                format!("{scheme} {}", params.join(", "))
            }
        };
        if reason.is_api_key() {
            // Where the key goes, in place of OAuth's error parameters.
            let mut params = Vec::with_capacity(3);
            if !realm.is_empty() {
                params.push(format!("realm=\"{}\"", quoted(realm)));
            }
            params.extend(
                policy
                    .and_then(|p| p.api_keys.as_deref())
                    .map(|k| k.challenge_params())
                    .unwrap_or_default(),
            );
            return if params.is_empty() {
                "ApiKey".to_string()
            } else {
                format!("ApiKey {}", params.join(", "))
            };
        }
        match dpop {
            None => challenge("Bearer", true, None),
            Some(d) => {
                let dpop = challenge("DPoP", on_dpop, Some(d.algs()));
                if d.mode == crate::dpop::Mode::Required {
                    dpop
                } else {
                    format!("{}, {dpop}", challenge("Bearer", !on_dpop, None))
                }
            }
        }
    });
    let error = reason.oauth_error().unwrap_or(match status {
        401 => "unauthorized",
        403 => "forbidden",
        503 => "temporarily_unavailable",
        400 => "invalid_request",
        404 => "not_found",
        _ => "server_error",
    });
    let mut body = serde_json::Map::new();
    body.insert("error".into(), error.into());
    match (&public_description, &message) {
        (Some(text), _) => {
            body.insert("error_description".into(), text.clone().into());
        }
        (None, Some(message)) => {
            body.insert("error_description".into(), message.clone().into());
        }
        (None, None) => {}
    }
    if let Some(message) = message {
        body.insert("message".into(), message.into());
    }
    Decision::Deny(Deny {
        policy: policy.map(|p| p.id.clone()),
        status,
        reason,
        description,
        www_authenticate,
        body: serde_json::Value::Object(body).to_string(),
        hint,
        token_id,
        trace: None,
        path: None,
        dpop_nonce,
        identity: None,
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod dry_run_tests;

#[cfg(test)]
mod api_key_tests;

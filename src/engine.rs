//! The decision engine: `check(&Snapshot, &Request) -> Decision`, independent of the transport.
//!
//! ```text
//! request ─► normalize host/path ─► select policy ─► rule (anonymous?) ─► extract token
//!         ─► parse ─► route to issuer ─► keys (refetch once on unknown kid) ─► signature
//!         ─► exp/nbf/iat/aud ─► requiredClaims ─► rule requirements ─► Allow + forward headers
//! ```
//!
//! The only I/O is a coalesced, rate-limited key refetch when a token names an unknown `kid`.

pub mod request;

use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;

use crate::claims;
use crate::decision::{Allow, Decision, Deny, Reason};
use crate::jose::{self, B64, Claims};
use crate::jwks::Refetch;
use crate::policy::route::{normalize_host, normalize_path};
use crate::policy::{DefaultAction, DenyDetail, Issuer, Policy, Snapshot};
use crate::validate::{self, ValidationError};

pub use request::{Headers, Request, TokenSource};

/// Judges one request against a snapshot.
pub async fn check(snapshot: &Snapshot, request: &Request<'_>, now: SystemTime) -> Decision {
    let host = normalize_host(request.host);
    let path = match normalize_path(request.path) {
        Ok(path) => path,
        Err(e) => {
            return deny(
                None,
                &host,
                Reason::RequestMalformed,
                e.to_string(),
                None,
                None,
            );
        }
    };
    let policy = match request.policy {
        Some(id) => match snapshot.policy(id) {
            Some(policy) => policy,
            None => {
                return deny(
                    None,
                    &host,
                    Reason::PolicyNotFound,
                    format!("the route selects policy {id:?}, which is not loaded"),
                    None,
                    None,
                );
            }
        },
        None => match snapshot.select(&host, &path, request.method) {
            Some(policy) => policy,
            None if snapshot.default_action == DefaultAction::Allow => {
                return Decision::Allow(Allow {
                    reason: Reason::DefaultAllow,
                    ..Allow::default()
                });
            }
            None => {
                return deny(
                    None,
                    &host,
                    Reason::NoPolicy,
                    format!(
                        "no policy matches host {host:?}, path {path:?}, method {}",
                        request.method
                    ),
                    None,
                    None,
                );
            }
        },
    };
    judge(policy, request, &host, &path, now).await
}

/// Judges a request with a given policy.
pub async fn judge(
    policy: &Arc<Policy>,
    request: &Request<'_>,
    host: &str,
    path: &str,
    now: SystemTime,
) -> Decision {
    let rule = policy.rule_for(path, request.method);
    if rule.is_some_and(|r| r.allow_anonymous) {
        return Decision::Allow(Allow {
            policy: Some(policy.id.clone()),
            reason: Reason::Anonymous,
            // Never let a client supply the identity headers itself.
            headers_to_remove: forward_headers(policy).map(str::to_owned).collect(),
            ..Allow::default()
        });
    }
    let (token, source) = match request::extract(&policy.token, request) {
        Ok(found) => found,
        Err(request::ExtractError::Missing(places)) => {
            let reason = Reason::TokenMissing;
            return deny(
                Some(policy),
                host,
                reason,
                format!("no token in {places}"),
                None,
                None,
            );
        }
        Err(request::ExtractError::Malformed(why)) => {
            return deny(Some(policy), host, Reason::TokenMalformed, why, None, None);
        }
    };
    let token_id = jose::fingerprint(&token);
    let (claims, issuer) = match verify(policy, &token, now).await {
        Ok(ok) => ok,
        Err((error, issuer)) => {
            let hint = error.hint(policy, issuer);
            return deny(
                Some(policy),
                host,
                error.reason(),
                error.to_string(),
                hint,
                Some(token_id),
            );
        }
    };
    if let Some(rule) = rule {
        for requirement in &rule.requirements {
            if let Err(unmet) = requirement.check(&claims) {
                return deny(
                    Some(policy),
                    host,
                    Reason::InsufficientScope,
                    unmet.detail,
                    None,
                    Some(token_id),
                );
            }
        }
    }
    allow(policy, issuer, claims, request, source)
}

type Failure<'p> = (ValidationError, Option<&'p Issuer>);

async fn verify<'p>(
    policy: &'p Policy,
    token: &str,
    now: SystemTime,
) -> Result<(Claims, &'p Issuer), Failure<'p>> {
    let jws = jose::parse(token).map_err(|e| (ValidationError::Malformed(e), None))?;
    let (issuer, alg) = validate::route(&jws, policy).map_err(|e| (e, None))?;
    let fail = |e| (e, Some(issuer));
    let keys = match issuer.keys.current() {
        Some(keys) => keys,
        None => {
            issuer.keys.refresh_on_miss(None).await;
            issuer.keys.current().ok_or_else(|| {
                let detail = issuer
                    .keys
                    .status()
                    .last_error
                    .unwrap_or_else(|| "the first fetch has not finished".into());
                fail(ValidationError::IssuerUnavailable {
                    issuer: issuer.issuer.clone(),
                    detail,
                })
            })?
        }
    };
    let first = validate::verify_signature(&jws, alg, &keys);
    issuer
        .keys
        .record_lookup(!matches!(first, Err(ValidationError::KeyNotFound(_))));
    match first {
        Ok(()) => {}
        Err(ValidationError::KeyNotFound(kid)) => {
            // Rotation: the issuer may have published a new key since the last refresh.
            if issuer.keys.refresh_on_miss(Some(&keys)).await != Refetch::Refreshed {
                return Err(fail(ValidationError::KeyNotFound(kid)));
            }
            let keys = issuer
                .keys
                .current()
                .ok_or_else(|| fail(ValidationError::KeyNotFound(kid)))?;
            validate::verify_signature(&jws, alg, &keys).map_err(fail)?;
        }
        Err(e) => return Err(fail(e)),
    }
    validate::check_claims(&jws.claims, issuer, policy, now).map_err(fail)?;
    validate::check_required(&jws.claims, policy).map_err(fail)?;
    Ok((jws.claims, issuer))
}

fn forward_headers(policy: &Policy) -> impl Iterator<Item = &str> {
    policy
        .forward
        .claims_to_headers
        .iter()
        .map(|(_, header)| header.as_str())
        .chain(policy.forward.payload_header.as_deref())
}

fn allow(
    policy: &Arc<Policy>,
    issuer: &Issuer,
    claims: Claims,
    request: &Request<'_>,
    source: TokenSource,
) -> Decision {
    let mut out = Allow {
        policy: Some(policy.id.clone()),
        reason: Reason::Valid,
        issuer: Some(issuer.issuer.clone()),
        ..Allow::default()
    };
    for (claim, header) in &policy.forward.claims_to_headers {
        match claims::lookup(&claims, claim).and_then(claims::header_value) {
            Some(value) => out.headers_to_set.push((header.clone(), value)),
            // Absent (or not representable): make sure a client-sent value does not pass.
            None => out.headers_to_remove.push(header.clone()),
        }
    }
    if let Some(header) = &policy.forward.payload_header {
        let json = serde_json::to_vec(&claims).unwrap_or_default();
        out.headers_to_set.push((header.clone(), B64.encode(json)));
    }
    if !policy.forward.keep_token {
        match source {
            TokenSource::Header => out.headers_to_remove.push(policy.token.header.clone()),
            TokenSource::Query => out
                .query_params_to_remove
                .extend(policy.token.query.clone()),
            TokenSource::Cookie => {
                let name = policy.token.cookie.as_deref().unwrap_or_default();
                match request
                    .headers
                    .get("cookie")
                    .and_then(|c| request::cookie_without(&c, name))
                {
                    Some(rest) => out.headers_to_set.push(("cookie".into(), rest)),
                    None => out.headers_to_remove.push("cookie".into()),
                }
            }
        }
    }
    out.claims = Some(Arc::new(claims));
    Decision::Allow(out)
}

/// RFC 6750 quoted-string content: printable ASCII without `"` and `\`.
fn quoted(text: &str) -> String {
    text.chars()
        .take(400)
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if (' '..='~').contains(&c) => c,
            _ => '?',
        })
        .collect()
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
    let configured = policy.map_or(401, |p| p.deny.status);
    let status = match reason {
        Reason::InsufficientScope | Reason::NoPolicy | Reason::PolicyNotFound => 403,
        Reason::IssuerUnavailable | Reason::NotReady => 503,
        Reason::RequestMalformed => 400,
        Reason::Internal => 500,
        _ => configured,
    };
    let detail = policy.map_or(DenyDetail::Reason, |p| p.deny.detail);
    let message = policy.and_then(|p| p.deny.message.clone());
    let public_description = match detail {
        DenyDetail::Reason => Some(format!("{reason}: {description}")),
        DenyDetail::None => None,
    };
    let www_authenticate = reason.challenges().then(|| {
        let realm = policy.and_then(|p| p.deny.realm.as_deref()).unwrap_or(host);
        let mut challenge = format!("Bearer realm=\"{}\"", quoted(realm));
        if let Some(error) = reason.oauth_error() {
            challenge.push_str(&format!(", error=\"{error}\""));
            if let Some(text) = &public_description {
                challenge.push_str(&format!(", error_description=\"{}\"", quoted(text)));
            }
        }
        challenge
    });
    let error = reason.oauth_error().unwrap_or(match status {
        401 => "unauthorized",
        403 => "forbidden",
        503 => "temporarily_unavailable",
        400 => "invalid_request",
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
    })
}

#[cfg(test)]
mod tests;

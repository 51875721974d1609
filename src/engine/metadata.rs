//! Protected resource metadata (RFC 9728): a `GET` or `HEAD` of the metadata URL a policy
//! declares (`spec.resourceMetadata`) is answered with its document by tollgate, before any
//! token is read. Over gRPC the answer is a denied response with status 200, which Envoy sends
//! as its own reply: the request never reaches the upstream.
//!
//! The URL is found by the request's host and path, exactly (letter case included; the query
//! is ignored), not by `match.paths`: the well-known path is usually outside them. Other
//! methods on that path are judged like any other request. When two policies declare the URL
//! with different documents it is refused (403 `policy_conflict`), never answered by a guess.

use std::sync::Arc;

use super::deny;
use crate::decision::{Decision, Deny, Reason};
use crate::policy::route::{read_host, read_path};
use crate::policy::snapshot::ResourceEntry;
use crate::policy::{Policy, Snapshot};
use crate::trace::Trace;

/// The answer to a request for a metadata document, or `None` when the request is not one
/// (another method, a URL no policy declares, or a route that names another policy).
pub(super) fn answer(
    snapshot: &Snapshot,
    explicit: Option<&Arc<Policy>>,
    host: &str,
    path: &str,
    method: &str,
    trace: &mut Trace,
) -> Option<Decision> {
    if method != "GET" && method != "HEAD" {
        return None;
    }
    // A route naming a policy (tollgate.dev/policy) is judged by that policy, unless it is
    // one that declares this URL.
    let named = |id: &str| explicit.is_none_or(|p| *p.id == *id);
    match snapshot.resource(host, path)? {
        ResourceEntry::Served(policy) => {
            if !named(&policy.id) {
                return None;
            }
            let resource = policy.resource.as_deref()?;
            trace.info("policy", || {
                format!(
                    "{} (host {host:?}, path {path:?}, method {method})",
                    policy.id
                )
            });
            trace.pass("resource", || {
                format!(
                    "{method} of the protected resource metadata of {} (RFC 9728): answered with the document, the upstream is not called",
                    resource.resource
                )
            });
            Some(Decision::Deny(Deny {
                policy: Some(policy.id.clone()),
                status: 200,
                reason: Reason::ResourceMetadata,
                description: format!(
                    "answered with the protected resource metadata of {}",
                    resource.resource
                ),
                www_authenticate: None,
                body: resource.document.clone(),
                hint: None,
                token_id: None,
                trace: None,
                path: None,
                dpop_nonce: None,
                identity: None,
            }))
        }
        ResourceEntry::Conflicted(ids) => {
            if !ids.iter().any(|id| named(id)) {
                return None;
            }
            let list = ids.iter().map(|id| &**id).collect::<Vec<_>>().join(", ");
            let text = format!(
                "policies {list} declare the protected resource metadata at this URL with different documents"
            );
            trace.fail("resource", Reason::PolicyConflict, || text.clone(), || {
                Some("declare the same spec.resourceMetadata in each policy of the resource, or different resources".into())
            });
            Some(deny(None, host, Reason::PolicyConflict, text, None, None))
        }
    }
}

/// A request to tollgate's own metadata endpoint (the HTTP listener's
/// `/.well-known/oauth-protected-resource…`, for proxies that authorize over HTTP and so cannot
/// return a document): the document, or a denial. Nothing else is judged there: no upstream
/// stands behind it, so a URL no policy declares is 403 `no_policy`.
pub fn resource_metadata(snapshot: &Snapshot, host: &str, target: &str, method: &str) -> Decision {
    let host = match read_host(host) {
        Ok(host) => host,
        Err(why) => {
            return deny(
                None,
                "",
                Reason::RequestMalformed,
                format!("the host has {why}"),
                None,
                None,
            );
        }
    };
    let path = match read_path(target) {
        Ok(path) => path,
        Err(e) => {
            return deny(
                None,
                &host,
                Reason::RequestMalformed,
                format!("the path {e} ({})", e.class()),
                None,
                None,
            );
        }
    };
    let answer = answer(snapshot, None, &host, &path, method, &mut Trace::off());
    answer
        .unwrap_or_else(|| {
            deny(
                None,
                &host,
                Reason::NoPolicy,
                format!(
                    "no policy declares a protected resource whose metadata is at host {host:?}, path {path:?} (method {method})"
                ),
                None,
                None,
            )
        })
        .with_path(path)
}

#[cfg(test)]
mod tests;

//! `spec.resourceMetadata` → [`ProtectedResource`]: the OAuth 2.0 Protected Resource Metadata
//! document (RFC 9728), checked and serialized once when the policy compiles, and the URL the
//! policy's challenges name.
//!
//! ```text
//! resource  https://api.example.com/mcp
//!              │ host            │ path
//! metadata  https://api.example.com/.well-known/oauth-protected-resource/mcp   (RFC 9728 §3.1)
//! ```

use std::sync::Arc;

use url::Url;

use super::{Checker, Issuer, Problem, ProblemKind, TokenLocation, parse_url};
use crate::jwks::Reach;
use crate::policy::route::{HostPattern, read_path};
use crate::policy::spec::{AzureVersion, JwtPolicySpec};

/// The well-known path every metadata document is under (RFC 9728 §3).
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// How long clients and caches may keep a document (`Cache-Control: max-age`): a changed
/// policy reaches every client within this time.
pub const MAX_AGE_SECS: u32 = 300;

/// A protected resource and its metadata, as served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtectedResource {
    /// The resource identifier, exactly as written (the document's `resource`).
    pub resource: String,
    /// The host the document is served on: lower case, without the port.
    pub host: String,
    /// The path it is served at: [`WELL_KNOWN`] followed by the resource's path.
    pub path: String,
    /// `https://<authority><path>`: what challenges name in `resource_metadata`. Only
    /// characters that may stand in a quoted-string unescaped.
    pub metadata_url: String,
    /// The JSON document (RFC 9728 §2 member names).
    pub document: String,
}

/// Characters a resource identifier may contain: those of a URL that need no escaping in a
/// header's quoted-string (RFC 3986 unreserved, reserved and `%`).
fn url_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=%".contains(&b)
}

/// A scope token (RFC 6749 §3.3).
fn scope_char(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E)
}

/// The resource identifier's host, authority (host and port as written) and path (`""` for
/// none), or the problems it has.
fn identifier(c: &mut Checker, field: &str, text: &str) -> Option<(String, String, String)> {
    let before = c.problems.len();
    if text.len() > 1024 {
        c.invalid(field, "at most 1024 characters");
    }
    if !text.bytes().all(url_char) {
        c.invalid(
            field,
            format!("{text:?} has characters a URL does not contain unescaped"),
        );
    }
    let Some(rest) = text.strip_prefix("https://") else {
        c.invalid(field, format!("{text:?} is not an https URL (RFC 9728 §2)"));
        return None;
    };
    if text.contains('#') {
        c.invalid(field, "a resource identifier has no fragment (RFC 9728 §2)");
    }
    if text.contains('?') {
        c.invalid(
            field,
            "leave out the query: its metadata is found by host and path (RFC 8707 §2 discourages a query in a resource identifier)",
        );
    }
    if c.problems.len() > before {
        return None;
    }
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    if authority.contains('@') {
        c.invalid(field, "credentials in URLs are not allowed");
        return None;
    }
    let url = match Url::parse(text) {
        Ok(url) => url,
        Err(e) => {
            c.invalid(field, format!("{text:?} is not a URL: {e}"));
            return None;
        }
    };
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        c.invalid(field, format!("{text} has no host"));
        return None;
    };
    // Clients compare the document's `resource` with the URL they used, as a string (RFC 9728
    // §3.3), after their URL parser normalized it: write it normalized.
    let normalized = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    if authority != normalized {
        c.invalid(
            field,
            format!(
                "write the host as clients normalize it, {normalized:?} (lower case, no default port :443): they compare the identifier as a string"
            ),
        );
        return None;
    }
    let canonical =
        path.is_empty() || (read_path(path).as_deref() == Ok(path) && url.path() == path);
    if !canonical {
        c.invalid(
            field,
            format!(
                "write the path {path:?} as requests carry it: no dot segments, //, ; or escapes of characters that need none"
            ),
        );
        return None;
    }
    Some((host.to_string(), authority.to_string(), path.to_string()))
}

/// The authorization servers a policy's issuers stand for: the https issuers (and the http
/// ones a policy allows for development), and for an Azure AD issuer the tenant's v2.0 issuer.
fn default_servers(spec: &JwtPolicySpec, issuers: &[Issuer]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for issuer in issuers {
        let server = match &issuer.azure {
            Some(azure) if azure.version == AzureVersion::V2 => issuer.issuer.clone(),
            Some(azure) => azure.sibling.clone(),
            None => {
                let insecure_allowed = spec
                    .issuers
                    .iter()
                    .any(|s| s.issuer == issuer.issuer && s.allow_insecure_http);
                let usable = Url::parse(&issuer.issuer).is_ok_and(|url| {
                    (url.scheme() == "https" || (url.scheme() == "http" && insecure_allowed))
                        && url.host_str().is_some()
                        && url.query().is_none()
                        && url.fragment().is_none()
                });
                if !usable {
                    continue;
                }
                issuer.issuer.clone()
            }
        };
        if !out.contains(&server) {
            out.push(server);
        }
    }
    out
}

/// RFC 9728 `bearer_methods_supported` from where the policy reads the token: `header` for
/// `Authorization: Bearer`, `query` for the `access_token` parameter (RFC 6750 §2). Another
/// header, scheme, parameter or a cookie is no method RFC 6750 defines, and is not listed.
fn bearer_methods(token: &TokenLocation) -> Vec<&'static str> {
    let mut out = Vec::new();
    if token.header == "authorization"
        && token
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("bearer"))
    {
        out.push("header");
    }
    if token.query.as_deref() == Some("access_token") {
        out.push("query");
    }
    out
}

/// Checks `spec.resourceMetadata` and builds its document. `hosts`: the policy's `match.hosts`
/// (empty when its routes decide them). Warnings go to `warnings`.
pub(super) fn compile_resource(
    c: &mut Checker,
    spec: &JwtPolicySpec,
    hosts: &[HostPattern],
    issuers: &[Issuer],
    token: &TokenLocation,
    warnings: &mut Vec<Problem>,
) -> Option<Arc<ProtectedResource>> {
    let r = spec.resource_metadata.as_ref()?;
    let before = c.problems.len();
    let field = "spec.resourceMetadata.resource";
    let identified = identifier(c, field, &r.resource);
    if let Some((host, _, _)) = &identified
        && !hosts.is_empty()
        && !hosts.iter().any(|h| h.matches(host))
    {
        c.invalid(
            field,
            format!(
                "host {host} is not among spec.match.hosts: a policy declares resources on hosts it judges"
            ),
        );
    }

    let defaults = default_servers(spec, issuers);
    let servers = if r.authorization_servers.is_empty() {
        if defaults.is_empty() {
            c.invalid(
                "spec.resourceMetadata.authorizationServers",
                "none of the policy's issuers is an https URL a client can discover an authorization server at: list the authorization servers",
            );
        }
        defaults
    } else {
        let mut listed: Vec<String> = Vec::new();
        for (i, text) in r.authorization_servers.iter().enumerate() {
            let field = format!("spec.resourceMetadata.authorizationServers[{i}]");
            if listed.contains(text) {
                c.invalid(&field, format!("{text} is listed twice"));
                continue;
            }
            let Some(url) = parse_url(c, &field, text, Reach::default()) else {
                continue;
            };
            if url.query().is_some() || url.fragment().is_some() {
                c.invalid(
                    &field,
                    "an issuer identifier has no query or fragment (RFC 8414 §2)",
                );
                continue;
            }
            if !defaults.contains(text) && issuers.iter().all(|i| i.issuer != *text) {
                warnings.push(Problem {
                    field,
                    message: format!(
                        "{text} is not an issuer of this policy: tokens it issues are refused unless their iss is one of the policy's issuers"
                    ),
                    kind: ProblemKind::Warning,
                });
            }
            listed.push(text.clone());
        }
        listed
    };

    let mut scopes: Vec<&str> = Vec::new();
    for (i, scope) in r.scopes_supported.iter().enumerate() {
        let field = format!("spec.resourceMetadata.scopesSupported[{i}]");
        if scope.is_empty() || scope.len() > 256 || !scope.bytes().all(scope_char) {
            c.invalid(
                field,
                format!("{scope:?} is not a scope (printable ASCII without spaces, \" and \\)"),
            );
        } else if scopes.contains(&scope.as_str()) {
            c.invalid(field, format!("{scope} is listed twice"));
        } else {
            scopes.push(scope);
        }
    }
    if r.scopes_supported.len() > 64 {
        c.invalid("spec.resourceMetadata.scopesSupported", "at most 64 scopes");
    }
    if let Some(name) = &r.resource_name
        && (name.is_empty() || name.len() > 256 || name.chars().any(char::is_control))
    {
        c.invalid(
            "spec.resourceMetadata.resourceName",
            "1 to 256 characters, no control characters",
        );
    }
    if let Some(docs) = &r.resource_documentation {
        parse_url(
            c,
            "spec.resourceMetadata.resourceDocumentation",
            docs,
            Reach::default(),
        );
    }
    if c.problems.len() > before {
        return None;
    }
    let (host, authority, path) = identified?;

    let mut document = serde_json::Map::new();
    document.insert("resource".into(), r.resource.clone().into());
    document.insert("authorization_servers".into(), servers.into());
    if !scopes.is_empty() {
        document.insert("scopes_supported".into(), scopes.into());
    }
    // Present even when empty: `[]` says no RFC 6750 method is supported (RFC 9728 §2).
    document.insert(
        "bearer_methods_supported".into(),
        bearer_methods(token).into(),
    );
    if let Some(name) = &r.resource_name {
        document.insert("resource_name".into(), name.clone().into());
    }
    if let Some(docs) = &r.resource_documentation {
        document.insert("resource_documentation".into(), docs.clone().into());
    }
    // A trailing slash after the host goes before the well-known path is inserted (§3.1).
    let suffix = if path == "/" { "" } else { path.as_str() };
    let well_known = format!("{WELL_KNOWN}{suffix}");
    Some(Arc::new(ProtectedResource {
        resource: r.resource.clone(),
        metadata_url: format!("https://{authority}{well_known}"),
        host,
        path: well_known,
        document: serde_json::Value::Object(document).to_string(),
    }))
}

#[cfg(test)]
mod tests;

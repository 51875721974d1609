//! Authorization over HTTP for proxies that do not use Envoy's gRPC API: forward auth (`/auth`,
//! any method) for nginx `auth_request` (and ingress-nginx's `auth-url`) and Traefik's
//! `forwardAuth`, and Envoy's HTTP ext_authz protocol (any path under a prefix) for Envoy,
//! Envoy Gateway, Istio and Gateway API `ExternalAuth` with `protocol: HTTP`. The same engine,
//! the same decisions, reason codes, metrics (`transport="http"`) and logs as gRPC; only the
//! transport differs.
//!
//! ```text
//! nginx/Traefik ── GET /auth (client headers + X-Original-* or X-Forwarded-*) ──► original request
//! Envoy ── <method> <prefix><path and query>, Host, allowed headers ─────────────► original request
//!       ◄── 200 + headers for the upstream  |  401/403 + WWW-Authenticate + JSON  |  4xx/5xx
//! ```
//!
//! Only calls from `--trusted-proxies` are judged (others get 403 `proxy_not_trusted`), and the
//! original request's method, host and path come from what that proxy's configured family
//! sends (see [`original`]). The token comes from the headers as the policy says, like in gRPC
//! mode. Routing follows the family of the caller: nginx and Traefik are answered on `/auth`
//! only (any other path is 404, as it always was), an `envoy` caller on every path.
//!
//! What an allow says differs by family, each in the terms its proxy understands:
//!
//! | | nginx, traefik | envoy |
//! |---|---|---|
//! | headers to set | in the answer; the proxy copies the ones it is told to | in the answer; Envoy copies those in `allowed_upstream_headers` |
//! | the token kept | echoed in its header, so copying it keeps it | not echoed: Envoy leaves the request's own headers alone |
//! | headers to remove (`keepToken: false`, identity headers the token cannot fill, the debug header) | not echoed: copying removes them | `x-envoy-auth-headers-to-remove: a, b`, which Envoy applies after setting |
//!
//! A denial is the same for every family: the status, `WWW-Authenticate`, the JSON body. Envoy
//! passes them to the client, except 5xx (`not_ready`, IdP trouble), which Envoy takes for a
//! failure of the authorization server: it answers `status_on_error` (403 unless configured) and,
//! with `failure_mode_allow: true`, lets the request through. Over gRPC tollgate can send a 503
//! as a denial; over HTTP it cannot, so `failure_mode_allow` must stay false.

pub mod forwarded_cert;
pub mod listener;
pub mod original;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse as _, Response};
use ipnet::IpNet;

use crate::decision::{Decision, Reason};
use crate::decision_log::{DecisionLog, Origin};
use crate::engine::{self, Headers};
use crate::metrics::Metrics;
use crate::policy::compile::WELL_KNOWN;
use crate::policy::{SharedSnapshot, Snapshot};
use crate::telemetry::{self, RequestInfo};
use crate::trace;
pub use forwarded_cert::{CertHeader, ForwardedCertError};
pub use original::{Family, PathPrefix};

/// The header Envoy's HTTP ext_authz reads, on an allow, for the request headers to remove
/// (comma-separated), after it has set the allowed upstream headers.
pub const ENVOY_HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// Trusted by default: the loopback addresses (a proxy on the same host or in the same pod).
pub const DEFAULT_TRUSTED_PROXIES: &str = "127.0.0.0/8,::1/128";

/// A `--trusted-proxies` entry: addresses, and the family of headers their proxy sends
/// (`None`: the `--forward-auth-family` default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrustedProxy {
    pub net: IpNet,
    pub family: Option<Family>,
}

/// Gives every trusted proxy entry its family; an entry without one takes `default`, and
/// without a default that is an error: which headers describe a request is never guessed.
pub fn resolve_families(
    proxies: &[TrustedProxy],
    default: Option<Family>,
) -> Result<Vec<(IpNet, Family)>, String> {
    proxies
        .iter()
        .map(|p| match p.family.or(default) {
            Some(family) => Ok((p.net, family)),
            None => Err(format!(
                "--trusted-proxies {} names no proxy family: set --forward-auth-family nginx|traefik|envoy, or write {}=nginx",
                p.net, p.net
            )),
        })
        .collect()
}

/// The forward-auth endpoint's state.
#[derive(Clone)]
pub struct ForwardAuth {
    shared: Arc<SharedSnapshot>,
    metrics: Arc<Metrics>,
    /// Trusted proxy networks and their header family, most specific network first.
    trusted: Arc<Vec<(IpNet, Family)>>,
    /// The path prefix of the `envoy` family.
    prefix: Arc<PathPrefix>,
    /// Proxies trusted to forward the client's certificate, and the header each sets, most
    /// specific network first (`--client-cert-proxies`).
    cert_proxies: Arc<Vec<(IpNet, CertHeader)>>,
    decision_log: DecisionLog,
    /// OpenTelemetry traces, when on.
    tracing: Option<crate::otel::Tracing>,
}

impl ForwardAuth {
    pub fn new(
        shared: Arc<SharedSnapshot>,
        metrics: Arc<Metrics>,
        mut trusted: Vec<(IpNet, Family)>,
        prefix: PathPrefix,
    ) -> Self {
        trusted.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        ForwardAuth {
            shared,
            metrics,
            trusted: Arc::new(trusted),
            prefix: Arc::new(prefix),
            cert_proxies: Arc::new(Vec::new()),
            decision_log: DecisionLog::default(),
            tracing: None,
        }
    }

    /// Records every decision in the decision log (`--decision-log`).
    pub fn with_decision_log(mut self, log: DecisionLog) -> Self {
        self.decision_log = log;
        self
    }

    /// Records a span per check (OpenTelemetry), joined to the trace of the judged request
    /// (its `traceparent`, as a trusted proxy forwarded it).
    pub fn with_tracing(mut self, tracing: Option<crate::otel::Tracing>) -> Self {
        self.tracing = tracing;
        self
    }

    /// The proxies whose forwarded client certificate header is read
    /// (`--client-cert-proxies`); a certificate header from anyone else is refused.
    pub fn with_client_cert_proxies(mut self, mut proxies: Vec<(IpNet, CertHeader)>) -> Self {
        proxies.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        self.cert_proxies = Arc::new(proxies);
        self
    }

    /// The certificate header `peer` is trusted to set, if any.
    fn cert_header_of(&self, peer: IpAddr) -> Option<CertHeader> {
        let peer = peer.to_canonical();
        self.cert_proxies
            .iter()
            .find(|(net, _)| net.contains(&peer))
            .map(|(_, header)| *header)
    }

    /// `/auth` with any method, every other path for `envoy` callers (under their prefix),
    /// and the protected resource metadata documents policies declare, for every caller.
    /// Serve with [`listener::serve`] (or anything that provides `ConnectInfo<SocketAddr>`).
    pub fn router(self) -> Router {
        Router::new()
            .route("/auth", axum::routing::any(handle))
            .route(WELL_KNOWN, axum::routing::get(metadata))
            .route(
                &format!("{WELL_KNOWN}/{{*rest}}"),
                axum::routing::get(metadata),
            )
            .fallback(fallback)
            .with_state(self)
    }

    /// Whether a call to another path than `/auth` is judged: from an `envoy` caller, or from
    /// an untrusted address when some network is `envoy` (refused as on `/auth`, so a missing
    /// `--trusted-proxies` entry shows as `proxy_not_trusted`, not as a 404). nginx and
    /// Traefik callers, and everyone when no network is `envoy`, get 404 there as before.
    fn serves_any_path(&self, peer: IpAddr) -> bool {
        match self.family_of(peer) {
            Some(family) => family == Family::Envoy,
            None => self.trusted.iter().any(|(_, f)| *f == Family::Envoy),
        }
    }

    /// The header family of a trusted proxy (the most specific network containing it).
    fn family_of(&self, peer: IpAddr) -> Option<Family> {
        let peer = peer.to_canonical();
        self.trusted
            .iter()
            .find(|(net, _)| net.contains(&peer))
            .map(|(_, family)| *family)
    }

    /// Judges one forward-auth request.
    pub async fn decide(
        &self,
        peer: IpAddr,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> (Decision, String, original::Original) {
        let request_id = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        // A call refused before its request was read is logged with what is known of it: the
        // call's method and path (its whole target for `envoy`, where that is the request's).
        let unknown = |family| original::Original {
            method: method.as_str().to_string(),
            host: String::new(),
            target: match family {
                Some(Family::Envoy) => uri.to_string(),
                _ => uri.path().to_string(),
            },
            family,
            scheme: None,
        };
        let Some(family) = self.family_of(peer) else {
            tracing::debug!(%peer, "forward-auth call from an address outside --trusted-proxies");
            let decision = engine::deny(
                None,
                "",
                Reason::ProxyNotTrusted,
                format!("{peer} is not in --trusted-proxies"),
                None,
                None,
            );
            return (decision, request_id, unknown(None));
        };
        let call = original::Call {
            method,
            uri,
            headers,
        };
        let original = match original::original(&call, family, &self.prefix) {
            Ok(original) => original,
            Err(e) => {
                let decision = engine::deny(
                    None,
                    "",
                    Reason::RequestMalformed,
                    match family {
                        Family::Envoy => format!("the envoy ext_authz call: {e}"),
                        _ => format!("forwarded request headers ({family}): {e}"),
                    },
                    None,
                    None,
                );
                return (decision, request_id, unknown(Some(family)));
            }
        };
        if !self.shared.is_ready() {
            return (engine::not_ready(&original.host), request_id, original);
        }
        let certificate =
            match forwarded_cert::forwarded_certificate(peer, self.cert_header_of(peer), headers) {
                Ok(certificate) => certificate,
                Err(e) => {
                    let reason = match e {
                        ForwardedCertError::Untrusted(_) => Reason::CertificateUntrusted,
                        ForwardedCertError::Malformed(_) => Reason::RequestMalformed,
                    };
                    tracing::debug!(%peer, error = %e, "forwarded client certificate refused");
                    let decision =
                        engine::deny(None, &original.host, reason, e.to_string(), None, None);
                    return (decision, request_id, original);
                }
            };
        let list: Vec<(String, String)> = headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let request = engine::Request {
            host: &original.host,
            path: &original.target,
            method: &original.method,
            headers: Headers::List(&list),
            policy: None,
            route: None,
            source: engine::Peer {
                certificate: certificate.as_deref(),
                scheme: original.scheme,
                ..Default::default()
            },
        };
        let snapshot = self.shared.load_full();
        let decision = engine::check(&snapshot, &request, SystemTime::now()).await;
        (
            unanswerable(&snapshot, decision, &original.host),
            request_id,
            original,
        )
    }

    /// The value the upstream should receive in the policy's token header, echoed back so a
    /// proxy that copies it (`auth_request_set` + `proxy_set_header`, `authResponseHeaders`)
    /// keeps the token when `keepToken` says so and drops it otherwise. Not for `envoy`: Envoy
    /// keeps the request's headers unless told to remove them.
    fn kept_token(
        &self,
        family: Option<Family>,
        decision: &Decision,
        headers: &HeaderMap,
    ) -> Option<(String, String)> {
        let Decision::Allow(allow) = decision else {
            return None;
        };
        if family == Some(Family::Envoy) {
            return None;
        }
        let snapshot = self.shared.load();
        // Without a policy (`--default-action allow`) the request passes as it came.
        let name = match allow.policy.as_deref() {
            Some(id) => snapshot.policy(id)?.token.header.clone(),
            None => "authorization".to_string(),
        };
        let name = &name;
        let decided = |h: &String| h.eq_ignore_ascii_case(name);
        if allow.headers_to_remove.iter().any(decided)
            || allow.headers_to_set.iter().any(|(h, _)| decided(h))
        {
            return None;
        }
        let value = headers.get(name.as_str())?.to_str().ok()?;
        Some((name.clone(), value.to_string()))
    }
}

fn header_pair(name: &str, value: &str) -> Option<(HeaderName, HeaderValue)> {
    Some((
        HeaderName::from_bytes(name.as_bytes()).ok()?,
        HeaderValue::from_str(value).ok()?,
    ))
}

/// The HTTP answer for a decision, in the terms of the caller's family (`None`: refused before
/// the family was known).
pub fn to_response(
    decision: &Decision,
    family: Option<Family>,
    kept_token: Option<(String, String)>,
) -> Response {
    let trace = decision
        .trace()
        .filter(|t| t.expose)
        .map(|t| (trace::RESPONSE_HEADER.to_string(), t.to_header_value()));
    let (status, headers, body): (StatusCode, Vec<(String, String)>, Body) = match decision {
        // What the gRPC answer's `OkHttpResponse` says: the headers to set, those to remove,
        // the trace. Nothing else: Envoy may copy any header of this answer upstream (its
        // `allowed_upstream_headers` can be a pattern), and caches nothing.
        Decision::Allow(allow) if family == Some(Family::Envoy) => {
            let mut headers = allow.headers_to_set.clone();
            if !allow.headers_to_remove.is_empty() {
                headers.push((
                    ENVOY_HEADERS_TO_REMOVE.into(),
                    allow.headers_to_remove.join(", "),
                ));
            }
            headers.extend(trace);
            headers.extend(client_headers(allow));
            (StatusCode::OK, headers, Body::empty())
        }
        Decision::Allow(allow) => {
            let mut headers = allow.headers_to_set.clone();
            headers.extend(kept_token);
            headers.extend(trace);
            headers.extend(client_headers(allow));
            headers.push(("cache-control".into(), "no-store".into()));
            (StatusCode::OK, headers, Body::empty())
        }
        Decision::Deny(deny) => {
            // nginx's `auth_request` never reads the body of the auth answer: the client gets
            // nginx's own error page, and a kept-alive connection whose body was left unread
            // is closed, so each denied request would cost a new connection to tollgate. The
            // status and `WWW-Authenticate` are what nginx passes on. A document (RFC 9728
            // metadata) keeps its body: it is the answer.
            let bodyless = family == Some(Family::Nginx) && !deny.is_document();
            let mut headers: Vec<(String, String)> = deny
                .headers()
                .into_iter()
                .filter(|(name, _)| !(bodyless && *name == "content-type"))
                .map(|(name, value)| (name.to_string(), value))
                .collect();
            headers.extend(trace);
            let body = if bodyless {
                Body::empty()
            } else {
                Body::from(deny.body.clone())
            };
            (
                StatusCode::from_u16(deny.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                headers,
                body,
            )
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    for (name, value) in headers {
        // Claim values were checked to be header-safe; anything else is dropped, never sent
        // half-written.
        if let Some((name, value)) = header_pair(&name, &value) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// Headers meant for the client's response (`DPoP-Nonce`): a proxy passes them on when told
/// to (nginx's `auth_request_set` and `add_header`); the upstream may see them too, and they
/// are not secrets.
fn client_headers(allow: &crate::decision::Allow) -> impl Iterator<Item = (String, String)> + '_ {
    allow
        .response_headers
        .iter()
        .map(|(name, value)| ((*name).to_string(), value.clone()))
}

async fn handle(
    State(auth): State<ForwardAuth>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let start = Instant::now();
    let span = auth.tracing.as_ref().map(|tracing| {
        // Only a trusted proxy's call joins the trace it names; anyone else starts a new one.
        let parent = auth.family_of(peer.ip()).and_then(|_| {
            // A header sent twice is ambiguous: neither is read.
            let text = |name| {
                let mut values = headers.get_all(name).iter();
                match (values.next(), values.next()) {
                    (Some(value), None) => value.to_str().ok(),
                    _ => None,
                }
            };
            crate::otel::remote_parent(
                text(crate::otel::TRACEPARENT),
                text(crate::otel::TRACESTATE),
            )
        });
        tracing.check_span("http", parent)
    });
    let (decision, request_id, original) = match &span {
        Some(cx) => crate::otel::traced(cx, auth.decide(peer.ip(), &method, &uri, &headers)).await,
        None => auth.decide(peer.ip(), &method, &uri, &headers).await,
    };
    if let Some(span) = &span {
        crate::otel::finish_check(span, &decision);
    }
    auth.metrics.observe("http", &decision, start.elapsed());
    let info = RequestInfo {
        transport: "http",
        request_id: &request_id,
        method: &original.method,
        host: &original.host,
        path: &original.target,
        route: None,
    };
    let origin = Origin {
        proxy: Some(peer.ip()),
        client: None,
    };
    auth.decision_log
        .record(&info, &decision, start.elapsed(), origin);
    telemetry::log_decision(&info, &decision);
    auth.shared
        .dry_run()
        .observe(&info, &decision, SystemTime::now());
    let kept = auth.kept_token(original.family, &decision, &headers);
    to_response(&decision, original.family, kept)
}

/// A metadata document cannot travel through forward authentication: every 2xx answer lets
/// the request through to the upstream. Such a check is refused (404 `resource_metadata`) and
/// logged with what to change: route the well-known path to tollgate's own endpoint.
fn unanswerable(snapshot: &Snapshot, decision: Decision, host: &str) -> Decision {
    match decision {
        // The upstream would receive the key: forward authentication cannot change the query.
        Decision::Allow(allow) if allow.query_key => {
            let policy = allow.policy.as_deref().and_then(|id| snapshot.policy(id));
            engine::deny(
                policy.map(|p| &**p),
                host,
                Reason::RequestMalformed,
                "an API key in the query would reach the upstream: forward authentication cannot remove a query parameter".into(),
                Some("send the key in the apiKeys.header, or check through Envoy's gRPC ext_authz, which removes the parameter".into()),
                None,
            )
        }
        Decision::Deny(deny) if deny.is_document() => {
            let policy = deny.policy.as_deref().and_then(|id| snapshot.policy(id));
            let mut refused = engine::deny(
                policy.map(|p| &**p),
                host,
                Reason::ResourceMetadata,
                "a protected resource metadata document was asked for through forward authentication, which can only let the request through to the upstream".into(),
                Some(format!(
                    "route {WELL_KNOWN} (and the paths under it) to tollgate's HTTP listener, which serves the documents itself (docs/kubernetes.md)"
                )),
                None,
            );
            if let (Decision::Deny(out), Some(path)) = (&mut refused, deny.path) {
                out.path = Some(path);
            }
            refused
        }
        other => other,
    }
}

/// `GET`/`HEAD /.well-known/oauth-protected-resource[/…]`: the document a policy declares for
/// the request's `Host` and path, from any caller (the documents are public). Never a
/// forward-auth check: checks come on `/auth` or under the envoy prefix.
async fn metadata(
    State(auth): State<ForwardAuth>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let start = Instant::now();
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let decision = if auth.shared.is_ready() {
        engine::resource_metadata(&auth.shared.load(), host, uri.path(), method.as_str())
    } else {
        engine::not_ready(host)
    };
    auth.metrics.observe("http", &decision, start.elapsed());
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let info = RequestInfo {
        transport: "http",
        request_id,
        method: method.as_str(),
        host,
        path: uri.path(),
        route: None,
    };
    auth.decision_log
        .record(&info, &decision, start.elapsed(), Origin::default());
    telemetry::log_decision(&info, &decision);
    to_response(&decision, None, None)
}

/// Every path but `/auth`: judged for `envoy` callers, 404 for the others.
async fn fallback(
    state: State<ForwardAuth>,
    connect: ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if !state.serves_any_path(connect.0.ip()) {
        return StatusCode::NOT_FOUND.into_response();
    }
    handle(state, connect, method, uri, headers).await
}

/// Parses a `--trusted-proxies` entry: a CIDR (`10.0.0.0/8`) or a single address, optionally
/// with the family of headers that proxy sends (`10.0.0.0/8=traefik`).
pub fn parse_trusted(text: &str) -> Result<TrustedProxy, String> {
    let (net, family) = match text.trim().split_once('=') {
        Some((net, family)) => (
            net.trim(),
            Some(Family::parse(family).ok_or_else(|| {
                format!("{family:?} is not a proxy family (nginx, traefik or envoy)")
            })?),
        ),
        None => (text.trim(), None),
    };
    let net = net
        .parse::<IpNet>()
        .or_else(|_| net.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{net:?} is not an address or a CIDR like 10.0.0.0/8"))?;
    Ok(TrustedProxy {
        net: net.trunc(),
        family,
    })
}

#[cfg(test)]
mod tests;

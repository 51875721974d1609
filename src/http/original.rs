//! Which request a forward-auth call is about, from the call the proxy makes.
//!
//! Which headers describe the original request is **configuration, never inference**: every
//! trusted proxy address has one family (`--forward-auth-family`, or `CIDR=family` in
//! `--trusted-proxies`), and only what that proxy itself sets is read:
//!
//! | family | sent by | method | host | path and query |
//! |---|---|---|---|---|
//! | `nginx` | `auth_request` (the example), ingress-nginx `auth-url` | `X-Original-Method` | `X-Original-URL` | `X-Original-URL` |
//! | `traefik` | `forwardAuth` | `X-Forwarded-Method` | `X-Forwarded-Host` | `X-Forwarded-Uri` |
//! | `envoy` | Envoy HTTP ext_authz (`http_service.path_prefix`), Envoy Gateway `extAuth.http` (`path`), Istio `envoyExtAuthzHttp` (`pathPrefix`), Gateway API `ExternalAuth` with `protocol: HTTP` (`http.path`) | the call's method | the call's `Host` | the call's target after `--ext-authz-path-prefix` |
//!
//! **`nginx` and `traefik`** call one endpoint (`/auth`) and describe the request in headers. A
//! proxy in front of tollgate passes many client headers on (nginx's `auth_request` all of
//! them, Traefik's `forwardAuth` all of them unless `authRequestHeaders` is set). Guessing the
//! family from which headers are present would let a client choose: a `DELETE /orders/admin/1`
//! carrying `X-Original-URL: https://api.example.com/orders/healthz` through Traefik would be
//! judged as the health path. So a request that misses a header its family always sets, that
//! carries the other family's headers, or that sends one of them twice (in any letter case), is
//! refused (400) — never guessed. The auth request's own method, `Host` and target are never
//! used: they describe the call to tollgate, not the client's request.
//!
//! **`envoy`** is the other way round: Envoy's HTTP ext_authz sends the check *as* the client's
//! request — its method, its `Host` (`:authority`), and `<prefix><path and query>` as the
//! target — with only the headers its configuration allows (by default, in Envoy 1.40:
//! `Authorization`, plus `Content-Length: 0`, `x-envoy-internal` and
//! `x-envoy-expected-rq-timeout-ms`). The call itself is read, nothing else:
//!
//! - the method as received (the same text the gRPC check carries in `http.method`);
//! - `Host`, exactly once (absent, repeated or empty: 400); HTTP/1.1 carries `:authority` there;
//! - the request-target as received, which must be origin-form and start with the prefix
//!   followed by `/` (segment-aware: `/ext-authz/orders`, never `/ext-authzorders` or
//!   `/ext-authz?x`); what follows the prefix is the original path and query, not decoded and
//!   not normalized, for the engine's path reader, which refuses hostile encodings as it does
//!   for gRPC's `http.path`. Anything else is 400 with the reason: the proxy's prefix and
//!   `--ext-authz-path-prefix` differ, or the caller is not an Envoy.
//!
//! The prefix cannot be empty. Every one of those proxies can set one, and it is the only sign
//! that a call follows the protocol: with no prefix, a proxy that adds one (or an nginx sending
//! `/auth`, if its network were given the wrong family) would be judged on a path that is not
//! the one served, silently, where a prefix makes the mismatch a 400 on every call.
//!
//! The other families' headers (`X-Original-*`, `X-Forwarded-*`) are **never read** for
//! `envoy`, and **not refused** either. Nothing about the request comes from headers, so a
//! client that forges them gains nothing; and refusing them would break real traffic: CDNs and
//! load balancers in front of Envoy set `X-Forwarded-Host`, `-Proto` and `-For`, and an Envoy
//! whose `allowed_headers` forwards every header (a catch-all pattern, to give tollgate what the
//! gRPC check sees) passes them on. It would also judge the same request differently than over
//! gRPC, which ignores them.

use http::{HeaderMap, Method, Uri};

/// The proxy family whose headers describe the original request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Family {
    /// nginx `auth_request` with `X-Original-URL` and `X-Original-Method` set (ingress-nginx
    /// sets both itself).
    Nginx,
    /// Traefik `forwardAuth`: `X-Forwarded-Method`, `-Proto`, `-Host` and `-Uri`.
    Traefik,
    /// Envoy's HTTP ext_authz (and the gateways built on it): the call's own method, `Host` and
    /// `<--ext-authz-path-prefix><path and query>`; any path, not only `/auth`.
    Envoy,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Nginx => "nginx",
            Family::Traefik => "traefik",
            Family::Envoy => "envoy",
        }
    }

    pub fn parse(text: &str) -> Option<Family> {
        match text.trim().to_ascii_lowercase().as_str() {
            "nginx" => Some(Family::Nginx),
            "traefik" => Some(Family::Traefik),
            "envoy" => Some(Family::Envoy),
            _ => None,
        }
    }

    /// The headers this family's proxy always sets (all of them must be present).
    fn required(self) -> &'static [&'static str] {
        match self {
            Family::Envoy => &["host"],
            Family::Nginx => &["x-original-url", "x-original-method"],
            Family::Traefik => &[
                "x-forwarded-method",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-forwarded-uri",
            ],
        }
    }

    /// Headers only the *other* families' proxies set: present, they mean a client wrote them
    /// (or the family is configured wrong). None for `envoy`: it reads no such header (see the
    /// module docs).
    fn foreign(self) -> &'static [&'static str] {
        match self {
            Family::Envoy => &[],
            Family::Nginx => &["x-forwarded-uri", "x-forwarded-method"],
            Family::Traefik => &["x-original-url", "x-original-uri", "x-original-method"],
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the forwarded headers cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForwardedError {
    /// A header appears more than once (in any letter case).
    #[error("header {0} is sent more than once")]
    Repeated(&'static str),
    /// A header the family's proxy always sets is missing.
    #[error(
        "header {header} is missing; the {family} proxy always sets it (is --forward-auth-family right for this proxy?)"
    )]
    Missing {
        header: &'static str,
        family: Family,
    },
    /// A header of another family is present.
    #[error(
        "header {header} belongs to another proxy family than {family}; a client may have sent it, so the request is refused"
    )]
    Foreign {
        header: &'static str,
        family: Family,
    },
    /// A header's value is not what it must be.
    #[error("header {header}: {why}")]
    Invalid { header: &'static str, why: String },
    /// The call's target is not `<prefix>/<original path>` (family `envoy`).
    #[error(
        "the call's target {target:?} is not {prefix}/<original path and query>: the proxy's path prefix (Envoy http_service.path_prefix, Envoy Gateway extAuth.http.path, Istio pathPrefix, Gateway API http.path) must be --ext-authz-path-prefix {prefix}"
    )]
    Prefix { target: String, prefix: PathPrefix },
}

/// The path prefix Envoy's HTTP ext_authz puts before the original path
/// (`--ext-authz-path-prefix`): one or more segments of unreserved characters, starting with
/// `/` and not ending with one, such as `/ext-authz`. Never empty (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPrefix(String);

impl PathPrefix {
    /// The default prefix.
    pub const DEFAULT: &'static str = "/ext-authz";

    /// Parses and checks a prefix as the proxy must be configured with it.
    pub fn parse(text: &str) -> Result<PathPrefix, String> {
        if text.is_empty() {
            return Err(format!(
                "the empty prefix is refused: set the same prefix in the proxy (Envoy http_service.path_prefix, Envoy Gateway extAuth.http.path, Istio pathPrefix, Gateway API http.path) and here, e.g. {}",
                Self::DEFAULT
            ));
        }
        let segments = text.strip_prefix('/').map(|rest| rest.split('/'));
        let valid = text.len() <= 128
            && segments.is_some_and(|mut segments| {
                segments.all(|s| {
                    !s.is_empty()
                        && s != "."
                        && s != ".."
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
                })
            });
        if valid {
            Ok(PathPrefix(text.to_string()))
        } else {
            Err(format!(
                "{text:?} is not a path prefix like {}: segments of letters, digits and -._~ after a /, no trailing /",
                Self::DEFAULT
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for PathPrefix {
    fn default() -> Self {
        PathPrefix(Self::DEFAULT.to_string())
    }
}

impl std::fmt::Display for PathPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for PathPrefix {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        PathPrefix::parse(text)
    }
}

/// The call to tollgate, as received.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
}

/// The original request, as the proxy describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Original {
    pub method: String,
    /// Host, possibly with a port.
    pub host: String,
    /// Origin-form target: path and query.
    pub target: String,
    /// Which family's headers described it (none when the call was refused before reading
    /// them).
    pub family: Option<Family>,
    /// The scheme the client used, when the family's proxy says it (nginx's `X-Original-URL`,
    /// Traefik's `X-Forwarded-Proto`); Envoy's HTTP ext_authz call does not say it.
    pub scheme: Option<&'static str>,
}

fn one<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<Option<&'h str>, ForwardedError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ForwardedError::Repeated(name));
    }
    let text = first.to_str().map_err(|_| ForwardedError::Invalid {
        header: name,
        why: "not visible ASCII".into(),
    })?;
    if text.is_empty() {
        return Err(ForwardedError::Invalid {
            header: name,
            why: "empty".into(),
        });
    }
    Ok(Some(text))
}

fn required<'h>(
    headers: &'h HeaderMap,
    name: &'static str,
    family: Family,
) -> Result<&'h str, ForwardedError> {
    one(headers, name)?.ok_or(ForwardedError::Missing {
        header: name,
        family,
    })
}

fn method(header: &'static str, text: &str) -> Result<String, ForwardedError> {
    let token = !text.is_empty()
        && text.len() <= 32
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        Ok(text.to_string())
    } else {
        Err(ForwardedError::Invalid {
            header,
            why: format!("{text:?} is not an HTTP method"),
        })
    }
}

fn target(header: &'static str, text: &str) -> Result<String, ForwardedError> {
    if !text.starts_with('/') {
        return Err(ForwardedError::Invalid {
            header,
            why: "must be a path starting with / (origin-form)".into(),
        });
    }
    text.parse::<Uri>().map_err(|e| ForwardedError::Invalid {
        header,
        why: e.to_string(),
    })?;
    Ok(text.to_string())
}

fn host(header: &'static str, text: &str) -> Result<String, ForwardedError> {
    let valid = !text.is_empty()
        && text.len() <= 255
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
    if valid {
        Ok(text.to_string())
    } else {
        Err(ForwardedError::Invalid {
            header,
            why: format!("{text:?} is not a host"),
        })
    }
}

fn scheme(header: &'static str, text: &str) -> Result<&'static str, ForwardedError> {
    if text == "http" {
        Ok("http")
    } else if text == "https" {
        Ok("https")
    } else {
        Err(ForwardedError::Invalid {
            header,
            why: format!("{text:?} is not http or https"),
        })
    }
}

/// Reads the original request the way `family`'s proxy describes it (`prefix`: the path prefix
/// of the `envoy` family).
pub fn original(
    call: &Call<'_>,
    family: Family,
    prefix: &PathPrefix,
) -> Result<Original, ForwardedError> {
    let headers = call.headers;
    // Repeated and foreign headers first: each must be refused whatever else is wrong.
    for name in family.required() {
        one(headers, name)?;
    }
    if let Some(header) = family
        .foreign()
        .iter()
        .find(|name| headers.contains_key(**name))
    {
        return Err(ForwardedError::Foreign { header, family });
    }
    match family {
        Family::Nginx => {
            let method = method(
                "X-Original-Method",
                required(headers, "x-original-method", family)?,
            )?;
            let url = required(headers, "x-original-url", family)?;
            let invalid = |why: String| ForwardedError::Invalid {
                header: "X-Original-URL",
                why,
            };
            // Split by hand: a URL parser would normalize the path this header must carry as
            // the client sent it. nginx builds the URL from the client's Host header, which it
            // accepts with `?` or `#` in it (`Host: api.example.com?` puts the whole path in
            // the query of a URL parser): the authority runs to the first `/` and must be a
            // plain host, or the request is refused.
            let (scheme_part, rest) = url
                .split_once("://")
                .ok_or_else(|| invalid("must be an absolute http(s) URL".into()))?;
            let scheme = scheme("X-Original-URL", scheme_part)?;
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            if authority.contains('@') {
                return Err(invalid("credentials in the URL".into()));
            }
            let host = host("X-Original-URL", authority)?;
            let target = self::target("X-Original-URL", path)?;
            Ok(Original {
                method,
                host,
                target,
                family: Some(family),
                scheme: Some(scheme),
            })
        }
        Family::Traefik => {
            let scheme = scheme(
                "X-Forwarded-Proto",
                required(headers, "x-forwarded-proto", family)?,
            )?;
            Ok(Original {
                scheme: Some(scheme),
                method: method(
                    "X-Forwarded-Method",
                    required(headers, "x-forwarded-method", family)?,
                )?,
                host: host(
                    "X-Forwarded-Host",
                    required(headers, "x-forwarded-host", family)?,
                )?,
                target: target(
                    "X-Forwarded-Uri",
                    required(headers, "x-forwarded-uri", family)?,
                )?,
                family: Some(family),
            })
        }
        Family::Envoy => {
            // The host as the gRPC check carries `:authority`: for the engine to read.
            let host = required(headers, "host", family)?.to_string();
            let target = call.uri.path_and_query().map_or("", |t| t.as_str());
            let origin_form = call.uri.scheme().is_none() && call.uri.authority().is_none();
            let original = target
                .strip_prefix(prefix.as_str())
                .filter(|rest| origin_form && rest.starts_with('/'))
                .ok_or_else(|| ForwardedError::Prefix {
                    target: call.uri.to_string(),
                    prefix: prefix.clone(),
                })?;
            Ok(Original {
                method: call.method.as_str().to_string(),
                host,
                target: original.to_string(),
                family: Some(family),
                scheme: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                http::HeaderValue::from_str(v).expect("value"),
            );
        }
        map
    }

    fn read(
        pairs: &[(&str, &str)],
        family: Family,
    ) -> Result<(String, String, String), ForwardedError> {
        call("GET", "/auth", pairs, family)
    }

    /// Reads a call of `method target` with `pairs` as its headers.
    fn call(
        method: &str,
        target: &str,
        pairs: &[(&str, &str)],
        family: Family,
    ) -> Result<(String, String, String), ForwardedError> {
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let uri: Uri = target.parse().expect("uri");
        let headers = headers(pairs);
        let call = Call {
            method: &method,
            uri: &uri,
            headers: &headers,
        };
        original(&call, family, &PathPrefix::default()).map(|o| (o.method, o.host, o.target))
    }

    const NGINX: [(&str, &str); 3] = [
        ("host", "tollgate:8080"),
        ("x-original-url", "https://api.example.com/orders/7?x=1"),
        ("x-original-method", "DELETE"),
    ];
    const TRAEFIK: [(&str, &str); 5] = [
        ("host", "tollgate:8080"),
        ("x-forwarded-method", "PUT"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "api.example.com"),
        ("x-forwarded-uri", "/orders/1"),
    ];

    fn with(
        base: &[(&'static str, &'static str)],
        extra: &[(&'static str, &'static str)],
    ) -> Vec<(&'static str, &'static str)> {
        base.iter().chain(extra).copied().collect()
    }

    /// The scheme DPoP's `htu` is compared with: what the family's proxy says, never guessed.
    #[test]
    fn the_scheme_comes_from_the_family_or_is_unknown() {
        let scheme = |pairs: &[(&str, &str)], family, target: &str| {
            let method = Method::GET;
            let uri: Uri = target.parse().expect("uri");
            let headers = headers(pairs);
            let call = Call {
                method: &method,
                uri: &uri,
                headers: &headers,
            };
            original(&call, family, &PathPrefix::default()).map(|o| o.scheme)
        };
        assert_eq!(scheme(&NGINX, Family::Nginx, "/auth"), Ok(Some("https")));
        let http = [
            ("host", "tollgate:8080"),
            ("x-original-url", "http://api.example.com/orders/7"),
            ("x-original-method", "GET"),
        ];
        assert_eq!(scheme(&http, Family::Nginx, "/auth"), Ok(Some("http")));
        assert_eq!(
            scheme(&TRAEFIK, Family::Traefik, "/auth"),
            Ok(Some("https"))
        );
        // Envoy's HTTP ext_authz call does not carry the scheme; a forwarded one is the client's.
        let envoy = [("host", "api.example.com"), ("x-forwarded-proto", "https")];
        assert_eq!(
            scheme(
                &envoy,
                Family::Envoy,
                &format!("{}/orders", PathPrefix::default())
            ),
            Ok(None)
        );
    }

    #[test]
    fn each_family_reads_only_its_own_headers() {
        let ok = |m: &str, h: &str, t: &str| Ok((m.to_string(), h.to_string(), t.to_string()));
        assert_eq!(
            read(&NGINX, Family::Nginx),
            ok("DELETE", "api.example.com", "/orders/7?x=1")
        );
        // X-Original-URI is not read: ingress-nginx does not set it, so a client could.
        assert_eq!(
            read(
                &with(&NGINX, &[("x-original-uri", "/orders/healthz")]),
                Family::Nginx
            ),
            ok("DELETE", "api.example.com", "/orders/7?x=1")
        );
        // The path travels as the client sent it, dot segments and all, for the engine to judge.
        assert_eq!(
            read(
                &[
                    ("x-original-url", "http://h:8443/a/../b/%2e?q"),
                    ("x-original-method", "GET")
                ],
                Family::Nginx
            ),
            ok("GET", "h:8443", "/a/../b/%2e?q")
        );
        assert_eq!(
            read(
                &[("x-original-url", "http://h"), ("x-original-method", "GET")],
                Family::Nginx
            ),
            ok("GET", "h", "/")
        );
        assert_eq!(
            read(&TRAEFIK, Family::Traefik),
            ok("PUT", "api.example.com", "/orders/1")
        );
    }

    /// Headers, the family they are read as, and a fragment of the expected error.
    type Case = (Vec<(&'static str, &'static str)>, Family, &'static str);

    #[test]
    fn the_other_familys_headers_missing_ones_and_repeats_are_refused() {
        let cases: Vec<Case> = vec![
            // The attack: Traefik copies a client's X-Original-URL onto the auth request.
            (
                with(
                    &TRAEFIK,
                    &[("x-original-url", "https://api.example.com/orders/healthz")],
                ),
                Family::Traefik,
                "x-original-url belongs to another proxy family",
            ),
            (
                with(&TRAEFIK, &[("x-original-method", "GET")]),
                Family::Traefik,
                "another proxy family",
            ),
            (
                with(&TRAEFIK, &[("x-original-uri", "/healthz")]),
                Family::Traefik,
                "another proxy family",
            ),
            (
                with(&NGINX, &[("x-forwarded-uri", "/orders/healthz")]),
                Family::Nginx,
                "another proxy family",
            ),
            (
                with(&NGINX, &[("x-forwarded-method", "GET")]),
                Family::Nginx,
                "another proxy family",
            ),
            // nginx configured where Traefik calls: nothing is guessed from the auth request.
            (TRAEFIK.to_vec(), Family::Nginx, "another proxy family"),
            (
                vec![("x-original-method", "GET")],
                Family::Nginx,
                "x-original-url is missing",
            ),
            (NGINX.to_vec(), Family::Traefik, "another proxy family"),
            (
                vec![("x-forwarded-uri", "/")],
                Family::Traefik,
                "x-forwarded-proto is missing",
            ),
            (
                vec![("x-original-url", "https://h/x")],
                Family::Nginx,
                "x-original-method is missing",
            ),
            (
                TRAEFIK
                    .iter()
                    .copied()
                    .filter(|(k, _)| *k != "x-forwarded-host")
                    .collect(),
                Family::Traefik,
                "x-forwarded-host is missing",
            ),
            // Twice, in another letter case: still twice.
            (
                with(
                    &NGINX,
                    &[("X-ORIGINAL-URL", "https://api.example.com/orders/healthz")],
                ),
                Family::Nginx,
                "sent more than once",
            ),
            (
                with(&TRAEFIK, &[("X-Forwarded-Uri", "/orders/healthz")]),
                Family::Traefik,
                "sent more than once",
            ),
            (
                with(&TRAEFIK, &[("x-forwarded-host", "evil.example")]),
                Family::Traefik,
                "sent more than once",
            ),
        ];
        for (pairs, family, expected) in cases {
            let err = read(&pairs, family).expect_err(expected);
            assert!(err.to_string().contains(expected), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn malformed_headers_are_errors_not_fallbacks() {
        let nginx = |url: &'static str, method: &'static str| {
            vec![("x-original-url", url), ("x-original-method", method)]
        };
        let cases: Vec<Case> = vec![
            (
                nginx("/relative", "GET"),
                Family::Nginx,
                "must be an absolute",
            ),
            (
                nginx("ftp://h/x", "GET"),
                Family::Nginx,
                "\"ftp\" is not http",
            ),
            (
                nginx("https://user@h/x", "GET"),
                Family::Nginx,
                "credentials",
            ),
            (
                nginx("https://a b/x", "GET"),
                Family::Nginx,
                "is not a host",
            ),
            (nginx("https:///x", "GET"), Family::Nginx, "is not a host"),
            // nginx copies a client's Host header with ? or # into the URL.
            (
                nginx("http://api.example.com?/orders/admin/1", "GET"),
                Family::Nginx,
                "is not a host",
            ),
            (
                nginx("http://api.example.com#/orders/admin/1", "GET"),
                Family::Nginx,
                "is not a host",
            ),
            (
                nginx("http://api.example.com?", "GET"),
                Family::Nginx,
                "is not a host",
            ),
            (
                nginx("http://api.example.com\\orders\\healthz?/x", "GET"),
                Family::Nginx,
                "is not a host",
            ),
            (
                nginx("https://h/x", "GE T"),
                Family::Nginx,
                "X-Original-Method",
            ),
            (nginx("https://h/x", ""), Family::Nginx, "empty"),
            (
                TRAEFIK
                    .iter()
                    .map(|&(k, v)| {
                        if k == "x-forwarded-uri" {
                            (k, "x")
                        } else {
                            (k, v)
                        }
                    })
                    .collect(),
                Family::Traefik,
                "X-Forwarded-Uri: must be a path",
            ),
            (
                TRAEFIK
                    .iter()
                    .map(|&(k, v)| {
                        if k == "x-forwarded-proto" {
                            (k, "gopher")
                        } else {
                            (k, v)
                        }
                    })
                    .collect(),
                Family::Traefik,
                "X-Forwarded-Proto",
            ),
            (
                TRAEFIK
                    .iter()
                    .map(|&(k, v)| {
                        if k == "x-forwarded-host" {
                            (k, "a/b")
                        } else {
                            (k, v)
                        }
                    })
                    .collect(),
                Family::Traefik,
                "X-Forwarded-Host",
            ),
        ];
        for (pairs, family, expected) in cases {
            let err = read(&pairs, family).expect_err(expected);
            assert!(err.to_string().contains(expected), "{pairs:?}: {err}");
        }
    }

    type Pairs = &'static [(&'static str, &'static str)];
    /// Method, call target, headers, and the method, host and target read.
    type EnvoyCase = (
        &'static str,
        &'static str,
        Pairs,
        (&'static str, &'static str, &'static str),
    );
    /// Call target, headers, and a fragment of the error.
    type Refusal = (&'static str, Pairs, &'static str);

    #[test]
    fn envoy_reads_the_call_itself() {
        let ok = |m: &str, h: &str, t: &str| Ok((m.to_string(), h.to_string(), t.to_string()));
        const HOST: Pairs = &[("host", "api.example.com")];
        // (method, call target, headers, expected method, host, original target)
        let cases: &[EnvoyCase] = &[
            (
                "GET",
                "/ext-authz/orders/7?x=1",
                HOST,
                ("GET", "api.example.com", "/orders/7?x=1"),
            ),
            (
                "DELETE",
                "/ext-authz/",
                HOST,
                ("DELETE", "api.example.com", "/"),
            ),
            (
                "PROPFIND",
                "/ext-authz/a",
                &[("host", "h:8443")],
                ("PROPFIND", "h:8443", "/a"),
            ),
            // Not decoded, not normalized: the engine's path reader judges it.
            (
                "GET",
                "/ext-authz/orders/..%2Fadmin",
                HOST,
                ("GET", "api.example.com", "/orders/..%2Fadmin"),
            ),
            (
                "GET",
                "/ext-authz//orders/a;x=1/%252e",
                HOST,
                ("GET", "api.example.com", "//orders/a;x=1/%252e"),
            ),
            // The prefix again after the prefix is the original path's own.
            (
                "GET",
                "/ext-authz/ext-authz/x",
                HOST,
                ("GET", "api.example.com", "/ext-authz/x"),
            ),
            // The other families' headers are never read, nor refused.
            (
                "GET",
                "/ext-authz/orders/admin/1",
                &[
                    ("host", "api.example.com"),
                    ("x-original-url", "https://api.example.com/orders/healthz"),
                    ("x-original-method", "GET"),
                    ("x-forwarded-uri", "/orders/healthz"),
                    ("x-forwarded-host", "cdn.example"),
                    ("x-forwarded-host", "twice.example"),
                ],
                ("GET", "api.example.com", "/orders/admin/1"),
            ),
        ];
        for &(method, target, pairs, (m, h, t)) in cases {
            assert_eq!(
                call(method, target, pairs, Family::Envoy),
                ok(m, h, t),
                "{method} {target}"
            );
        }
    }

    #[test]
    fn envoy_refuses_calls_that_do_not_follow_the_protocol() {
        const HOST: Pairs = &[("host", "api.example.com")];
        let cases: &[Refusal] = &[
            // nginx's or Traefik's call, or an Envoy without the prefix.
            ("/auth", HOST, "is not /ext-authz/<original path"),
            (
                "/orders/7",
                HOST,
                "must be --ext-authz-path-prefix /ext-authz",
            ),
            // Segment-aware.
            ("/ext-authzorders/7", HOST, "is not /ext-authz/"),
            ("/ext-authz", HOST, "is not /ext-authz/"),
            ("/ext-authz?x=1", HOST, "is not /ext-authz/"),
            ("/EXT-AUTHZ/orders", HOST, "is not /ext-authz/"),
            ("/ext-authz%2Forders", HOST, "is not /ext-authz/"),
            // Absolute- and asterisk-form are not what Envoy sends.
            (
                "http://api.example.com/ext-authz/orders",
                HOST,
                "is not /ext-authz/",
            ),
            ("*", HOST, "is not /ext-authz/"),
            // Host: exactly once, not empty.
            ("/ext-authz/orders", &[], "header host is missing"),
            (
                "/ext-authz/orders",
                &[("host", "api.example.com"), ("Host", "evil.example")],
                "header host is sent more than once",
            ),
            ("/ext-authz/orders", &[("host", "")], "header host: empty"),
        ];
        for &(target, pairs, expected) in cases {
            let err = call("GET", target, pairs, Family::Envoy).expect_err(target);
            assert!(err.to_string().contains(expected), "{target}: {err}");
        }
    }

    #[test]
    fn prefixes_are_checked_when_configured() {
        for good in ["/ext-authz", "/a", "/check/v1", "/auth", "/a.b~c_d-e"] {
            assert_eq!(
                PathPrefix::parse(good).map(|p| p.to_string()),
                Ok(good.into())
            );
        }
        for bad in [
            "",
            "/",
            "ext-authz",
            "/ext-authz/",
            "//a",
            "/a//b",
            "/./a",
            "/a/..",
            "/a%2Fb",
            "/a b",
            "/a?x",
            "/a#x",
            "/a;x",
            "/é",
        ] {
            assert!(PathPrefix::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(
            PathPrefix::parse("")
                .expect_err("empty")
                .contains("empty prefix is refused")
        );
        assert_eq!(PathPrefix::default().as_str(), PathPrefix::DEFAULT);
        assert_eq!(Family::parse(" Envoy "), Some(Family::Envoy));
    }
}

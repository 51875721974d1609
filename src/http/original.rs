//! Which request a forward-auth call is about, from the headers the proxy sends.
//!
//! Two families, never mixed:
//!
//! | family | sent by | method | host | path and query |
//! |---|---|---|---|---|
//! | nginx | `auth_request`, ingress-nginx | `X-Original-Method` | `X-Original-URL` | `X-Original-URL`, else `X-Original-URI` |
//! | Traefik | `forwardAuth` | `X-Forwarded-Method` | `X-Forwarded-Host` | `X-Forwarded-Uri` |
//!
//! When any `X-Original-*` header is present the request is read the nginx way and every
//! `X-Forwarded-*` header is ignored: nginx's `auth_request` passes the client's own headers on
//! to the subrequest, so a client-sent `X-Forwarded-Uri: /healthz` would otherwise choose the
//! path it is judged by. Whatever a family does not say comes from the auth request itself
//! (its method, `Host`, and target). From an address outside `--trusted-proxies` none of these
//! headers is read at all.
//!
//! A malformed header is an error (answered 400), never a fallback: a half-understood request
//! must not be judged as some other request.

use http::{HeaderMap, Method, Uri};

/// Why the forwarded headers cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForwardedError {
    /// A header appears more than once.
    #[error("header {0} is sent more than once")]
    Repeated(&'static str),
    /// A header's value is not what it must be.
    #[error("header {header}: {why}")]
    Invalid { header: &'static str, why: String },
}

/// The original request, as the proxy describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Original {
    pub method: String,
    /// Host, possibly with a port.
    pub host: String,
    /// Origin-form target: path and query.
    pub target: String,
    /// Which headers described it (for logs): `nginx`, `traefik` or `direct`.
    pub family: &'static str,
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

fn method(header: &'static str, text: &str) -> Result<String, ForwardedError> {
    match Method::from_bytes(text.as_bytes()) {
        Ok(m) if text.len() <= 32 => Ok(m.as_str().to_string()),
        _ => Err(ForwardedError::Invalid {
            header,
            why: format!("{text:?} is not an HTTP method"),
        }),
    }
}

fn target(header: &'static str, text: &str) -> Result<String, ForwardedError> {
    if !text.starts_with('/') || text.starts_with("//") {
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
    let valid = text.len() <= 255
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

/// Reads the original request. `trusted`: the auth request comes from a trusted proxy.
pub fn original(
    headers: &HeaderMap,
    own_method: &Method,
    own_uri: &Uri,
    trusted: bool,
) -> Result<Original, ForwardedError> {
    let own_target = own_uri
        .path_and_query()
        .map_or_else(|| "/".to_string(), |pq| pq.as_str().to_string());
    let own_host = match one(headers, "host")? {
        Some(h) => host("Host", h)?,
        None => own_uri
            .authority()
            .map_or_else(String::new, |a| a.to_string()),
    };
    let direct = Original {
        method: own_method.as_str().to_string(),
        host: own_host,
        target: own_target,
        family: "direct",
    };
    if !trusted {
        return Ok(direct);
    }
    let url = one(headers, "x-original-url")?;
    let uri = one(headers, "x-original-uri")?;
    let original_method = one(headers, "x-original-method")?;
    if url.is_some() || uri.is_some() || original_method.is_some() {
        let mut out = Original {
            family: "nginx",
            ..direct
        };
        if let Some(m) = original_method {
            out.method = method("X-Original-Method", m)?;
        }
        if let Some(url) = url {
            let parsed: Uri =
                url.parse()
                    .map_err(|e: http::uri::InvalidUri| ForwardedError::Invalid {
                        header: "X-Original-URL",
                        why: e.to_string(),
                    })?;
            let (Some(scheme), Some(authority)) = (parsed.scheme_str(), parsed.authority()) else {
                return Err(ForwardedError::Invalid {
                    header: "X-Original-URL",
                    why: "must be an absolute http(s) URL".into(),
                });
            };
            if scheme != "http" && scheme != "https" {
                return Err(ForwardedError::Invalid {
                    header: "X-Original-URL",
                    why: format!("scheme {scheme:?} is not http or https"),
                });
            }
            if authority.as_str().contains('@') {
                return Err(ForwardedError::Invalid {
                    header: "X-Original-URL",
                    why: "credentials in the URL".into(),
                });
            }
            out.host = host("X-Original-URL", authority.as_str())?;
            out.target = parsed
                .path_and_query()
                .map_or_else(|| "/".to_string(), |pq| pq.as_str().to_string());
            if out.target.is_empty() {
                out.target = "/".into();
            }
        } else if let Some(uri) = uri {
            out.target = target("X-Original-URI", uri)?;
        }
        return Ok(out);
    }
    let forwarded_uri = one(headers, "x-forwarded-uri")?;
    let forwarded_host = one(headers, "x-forwarded-host")?;
    let forwarded_method = one(headers, "x-forwarded-method")?;
    if let Some(proto) = one(headers, "x-forwarded-proto")?
        && proto != "http"
        && proto != "https"
    {
        return Err(ForwardedError::Invalid {
            header: "X-Forwarded-Proto",
            why: format!("{proto:?} is not http or https"),
        });
    }
    if forwarded_uri.is_none() && forwarded_host.is_none() && forwarded_method.is_none() {
        return Ok(direct);
    }
    let mut out = Original {
        family: "traefik",
        ..direct
    };
    if let Some(m) = forwarded_method {
        out.method = method("X-Forwarded-Method", m)?;
    }
    if let Some(h) = forwarded_host {
        out.host = host("X-Forwarded-Host", h)?;
    }
    if let Some(uri) = forwarded_uri {
        out.target = target("X-Forwarded-Uri", uri)?;
    }
    Ok(out)
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
        trusted: bool,
    ) -> Result<(String, String, String, &'static str), ForwardedError> {
        let uri: Uri = "/auth".parse().expect("uri");
        original(&headers(pairs), &Method::GET, &uri, trusted)
            .map(|o| (o.method, o.host, o.target, o.family))
    }

    fn ok(
        method: &str,
        host: &str,
        target: &str,
        family: &'static str,
    ) -> Result<(String, String, String, &'static str), ForwardedError> {
        Ok((method.into(), host.into(), target.into(), family))
    }

    #[test]
    fn each_family_and_its_precedence() {
        let cases: Vec<(Vec<(&str, &str)>, _)> = vec![
            // nginx auth_request with the example's explicit headers.
            (
                vec![
                    ("host", "tollgate:8080"),
                    ("x-original-uri", "/orders/7?x=1"),
                    ("x-original-method", "DELETE"),
                ],
                ok("DELETE", "tollgate:8080", "/orders/7?x=1", "nginx"),
            ),
            // ingress-nginx: X-Original-URL carries the host; it wins over X-Original-URI.
            (
                vec![
                    ("host", "tollgate.tollgate.svc"),
                    (
                        "x-original-url",
                        "https://api.example.com/orders?access_token=t",
                    ),
                    ("x-original-uri", "/elsewhere"),
                    ("x-original-method", "POST"),
                ],
                ok("POST", "api.example.com", "/orders?access_token=t", "nginx"),
            ),
            // A client's own X-Forwarded-* reach tollgate through nginx: ignored as a family.
            (
                vec![
                    ("host", "api.example.com"),
                    ("x-original-uri", "/orders/admin"),
                    ("x-forwarded-uri", "/healthz"),
                    ("x-forwarded-host", "public.example.com"),
                    ("x-forwarded-method", "GET"),
                ],
                ok("GET", "api.example.com", "/orders/admin", "nginx"),
            ),
            // Traefik forwardAuth.
            (
                vec![
                    ("host", "tollgate:8080"),
                    ("x-forwarded-method", "PUT"),
                    ("x-forwarded-proto", "https"),
                    ("x-forwarded-host", "api.example.com"),
                    ("x-forwarded-uri", "/orders/1"),
                ],
                ok("PUT", "api.example.com", "/orders/1", "traefik"),
            ),
            // Nothing forwarded: the auth request is the request.
            (
                vec![("host", "api.example.com")],
                ok("GET", "api.example.com", "/auth", "direct"),
            ),
        ];
        for (pairs, expected) in cases {
            assert_eq!(read(&pairs, true), expected, "{pairs:?}");
        }
    }

    #[test]
    fn untrusted_peers_are_judged_as_themselves() {
        let pairs = [
            ("host", "tollgate:8080"),
            ("x-original-uri", "/healthz"),
            ("x-forwarded-uri", "/healthz"),
            ("x-forwarded-host", "public.example.com"),
        ];
        assert_eq!(
            read(&pairs, false),
            ok("GET", "tollgate:8080", "/auth", "direct")
        );
    }

    #[test]
    fn malformed_headers_are_errors_not_fallbacks() {
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (
                vec![("x-original-uri", "/a"), ("x-original-uri", "/b")],
                "x-original-uri is sent more than once",
            ),
            (
                vec![("x-original-uri", "orders")],
                "X-Original-URI: must be a path",
            ),
            (
                vec![("x-original-uri", "//evil.example/x")],
                "X-Original-URI: must be a path",
            ),
            (vec![("x-original-method", "GE T")], "X-Original-Method"),
            (
                vec![("x-original-url", "/relative")],
                "X-Original-URL: must be an absolute",
            ),
            (
                vec![("x-original-url", "ftp://h/x")],
                "X-Original-URL: scheme \"ftp\"",
            ),
            (
                vec![("x-original-url", "https://user@h/x")],
                "X-Original-URL: credentials",
            ),
            (
                vec![("x-forwarded-uri", "x")],
                "X-Forwarded-Uri: must be a path",
            ),
            (vec![("x-forwarded-host", "a b")], "X-Forwarded-Host"),
            (
                vec![("x-forwarded-uri", "/a"), ("x-forwarded-proto", "gopher")],
                "X-Forwarded-Proto",
            ),
            (vec![("x-forwarded-method", "")], "empty"),
        ];
        for (pairs, expected) in cases {
            let err = read(&pairs, true).expect_err(expected);
            assert!(err.to_string().contains(expected), "{pairs:?}: {err}");
        }
    }
}

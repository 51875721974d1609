//! The transport-independent view of a request, and reading the token from it.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::apikeys::ApiKeys;
use crate::policy::TokenLocation;
use crate::policy::snapshot::RouteName;

/// The request's headers, as each transport has them.
#[derive(Clone, Copy, Debug)]
pub enum Headers<'a> {
    /// Lower-case names, repeated headers already merged with "," (Envoy's `headers`).
    Map(&'a HashMap<String, String>),
    /// One entry per header line (Envoy's `header_map`, HTTP forward-auth).
    List(&'a [(String, String)]),
}

impl<'a> Headers<'a> {
    /// Calls `f` with every header (name, value), in one pass: cheaper than several lookups
    /// when looking for any of a few names.
    pub fn for_each(&self, mut f: impl FnMut(&str, &str)) {
        match self {
            Headers::Map(map) => map.iter().for_each(|(k, v)| f(k, v)),
            Headers::List(list) => list.iter().for_each(|(k, v)| f(k, v)),
        }
    }

    /// [`Headers::for_each`] with the names and values borrowed for as long as the headers.
    pub fn for_each_borrowed(&self, mut f: impl FnMut(&'a str, &'a str)) {
        match *self {
            Headers::Map(map) => map.iter().for_each(|(k, v)| f(k, v)),
            Headers::List(list) => list.iter().for_each(|(k, v)| f(k, v)),
        }
    }

    /// The value of `name` (lower case). Repeated headers are joined with ", " as HTTP does,
    /// so a token sent twice never silently picks one of them.
    pub fn get(&self, name: &str) -> Option<Cow<'a, str>> {
        match self {
            Headers::Map(map) => map.get(name).map(|v| Cow::Borrowed(v.as_str())),
            Headers::List(list) => {
                let mut found = list.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name));
                let first = found.next()?;
                match found.next() {
                    None => Some(Cow::Borrowed(first.1.as_str())),
                    Some(second) => {
                        let mut joined = format!("{}, {}", first.1, second.1);
                        for (_, v) in found {
                            joined.push_str(", ");
                            joined.push_str(v);
                        }
                        Some(Cow::Owned(joined))
                    }
                }
            }
        }
    }
}

/// What the engine needs to know about a request.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// Host or `:authority`, possibly with a port.
    pub host: &'a str,
    /// Request target: path and query, not decoded.
    pub path: &'a str,
    pub method: &'a str,
    pub headers: Headers<'a>,
    /// `namespace/name` of a policy the route selects explicitly.
    pub policy: Option<&'a str>,
    /// The HTTPRoute (and rule) the gateway says the request is on (Envoy Gateway's route
    /// metadata): only policies attached to it can judge the request.
    pub route: Option<&'a RouteName>,
    /// The client, as the gateway saw it (CEL's `source`).
    pub source: Peer<'a>,
}

/// The client of a request as the gateway reports it; empty when it does not.
#[derive(Clone, Copy, Debug, Default)]
pub struct Peer<'a> {
    /// The address of the connection's peer.
    pub address: Option<&'a str>,
    /// The identity of its TLS client certificate (Envoy: the first URI SAN, else the first
    /// DNS SAN, else the subject).
    pub principal: Option<&'a str>,
    /// Its TLS client certificate as the gateway sends it (Envoy with
    /// `include_peer_certificate: true`: the URL-encoded PEM of the leaf), unparsed: see
    /// [`crate::client_cert`].
    pub certificate: Option<&'a str>,
    /// The scheme the client used (`http` or `https`), as the gateway reports it (Envoy's
    /// `attributes.request.http.scheme`, the trusted proxy's forwarded scheme): DPoP's `htu`
    /// is compared with it. `None`: not known, and a DPoP proof is refused.
    pub scheme: Option<&'a str>,
}

/// Where a token was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Query,
    Cookie,
}

impl TokenSource {
    /// Where exactly, in words: `authorization header (Bearer)`, `query parameter access_token`.
    pub fn describe(self, location: &crate::policy::TokenLocation) -> String {
        match self {
            TokenSource::Header => match &location.scheme {
                Some(scheme) => format!("{} header ({scheme})", location.header),
                None => format!("{} header", location.header),
            },
            TokenSource::Query => format!(
                "query parameter {}",
                location.query.as_deref().unwrap_or_default()
            ),
            TokenSource::Cookie => {
                format!("cookie {}", location.cookie.as_deref().unwrap_or_default())
            }
        }
    }
}

/// Why no usable token could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    /// No token in any configured place.
    #[error("no bearer token in {0}")]
    Missing(String),
    /// A token is there but unusable (bad characters, sent twice, in two places).
    #[error("{0}")]
    Malformed(String),
}

/// The bytes of an RFC 6750 b64token (`=` padding aside), as a lookup table: one load per byte
/// of a token that is read on every request.
const B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] =
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
};

/// RFC 6750 b64token characters (plus `=` padding at the end).
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(|b| B64TOKEN[usize::from(b)])
}

/// Reads the token as the policy says: header, then query parameter, then cookie. A token in
/// more than one place is refused (RFC 6750 §2: clients must use one method).
pub fn extract<'a>(
    location: &TokenLocation,
    request: &Request<'a>,
) -> Result<(Cow<'a, str>, TokenSource), ExtractError> {
    let mut found: Option<(Cow<'a, str>, TokenSource)> = None;
    let mut places = 0;
    if let Some(value) = request.headers.get(&location.header)
        && let Some(token) = from_header(location, value)?
    {
        places += 1;
        found = Some((token, TokenSource::Header));
    }
    if let Some(param) = &location.query
        && let Some(token) = from_query(request.path, param)?
    {
        places += 1;
        found.get_or_insert((Cow::Owned(token), TokenSource::Query));
    }
    if let Some(name) = &location.cookie
        && let Some(cookies) = request.headers.get("cookie")
        && let Some(token) = from_cookie(&cookies, name)?
    {
        places += 1;
        found.get_or_insert((Cow::Owned(token), TokenSource::Cookie));
    }
    match (found, places) {
        (Some((token, source)), 1) => {
            if !is_b64token(&token) {
                return Err(ExtractError::Malformed(
                    "the token contains characters a bearer token cannot have".into(),
                ));
            }
            Ok((token, source))
        }
        (None, _) => Err(ExtractError::Missing(describe(location))),
        _ => Err(ExtractError::Malformed(
            "the token was sent in more than one place".into(),
        )),
    }
}

/// Where an API key was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    Header,
    Query,
}

impl KeySource {
    pub fn describe(self, keys: &ApiKeys) -> String {
        match self {
            KeySource::Header => format!("{} header", keys.header.as_deref().unwrap_or_default()),
            KeySource::Query => format!(
                "query parameter {}",
                keys.query.as_deref().unwrap_or_default()
            ),
        }
    }
}

/// Reads the API key from the header or the query parameter the policy names: `Ok(None)` when
/// neither has one, an error (for the log, never with the key) when it cannot be one key.
pub fn extract_key<'a>(
    keys: &ApiKeys,
    request: &Request<'a>,
) -> Result<Option<(Cow<'a, str>, KeySource)>, String> {
    let mut found = None;
    if let Some(name) = &keys.header
        && let Some(value) = request.headers.get(name)
    {
        let trimmed = value.trim();
        if !trimmed.is_empty() {
            // Repeated headers arrive joined with ", ": never pick one of them.
            if !trimmed.bytes().all(|b| b.is_ascii_graphic()) || trimmed.contains(',') {
                return Err(format!(
                    "the {name} header is not one key (sent twice, or with spaces or other characters a key cannot have)"
                ));
            }
            found = Some((
                match value {
                    Cow::Borrowed(v) => Cow::Borrowed(v.trim()),
                    Cow::Owned(v) => Cow::Owned(v.trim().to_string()),
                },
                KeySource::Header,
            ));
        }
    }
    if let Some(param) = &keys.query
        && let Some(key) = from_query(request.path, param).map_err(|e| e.to_string())?
    {
        if found.is_some() {
            return Err("the API key was sent in more than one place".into());
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "the {param} query parameter has characters a key cannot have"
            ));
        }
        found = Some((Cow::Owned(key), KeySource::Query));
    }
    Ok(found)
}

/// [`extract`], when the policy also reads DPoP: `Authorization: DPoP <token>` first (RFC 9449
/// §7.1), and the token is then in no other place the policy reads. The flag says whether the
/// token came with the `DPoP` scheme.
pub fn extract_with_dpop<'a>(
    location: &TokenLocation,
    request: &Request<'a>,
) -> Result<(Cow<'a, str>, TokenSource, bool), ExtractError> {
    let dpop = TokenLocation {
        header: "authorization".into(),
        scheme: Some("DPoP".into()),
        query: None,
        cookie: None,
    };
    let found = match request.headers.get("authorization") {
        Some(value) => from_header(&dpop, value)?,
        None => None,
    };
    let Some(token) = found else {
        return extract(location, request).map(|(token, source)| (token, source, false));
    };
    match extract(location, request) {
        Err(ExtractError::Missing(_)) => {}
        Ok(_) => {
            return Err(ExtractError::Malformed(
                "the token was sent in more than one place".into(),
            ));
        }
        Err(malformed) => return Err(malformed),
    }
    if !is_b64token(&token) {
        return Err(ExtractError::Malformed(
            "the token contains characters a bearer token cannot have".into(),
        ));
    }
    Ok((token, TokenSource::Header, true))
}

fn describe(location: &TokenLocation) -> String {
    let mut places = vec![match &location.scheme {
        Some(scheme) => format!("the {} header ({scheme} scheme)", location.header),
        None => format!("the {} header", location.header),
    }];
    if let Some(q) = &location.query {
        places.push(format!("the {q} query parameter"));
    }
    if let Some(c) = &location.cookie {
        places.push(format!("the {c} cookie"));
    }
    places.join(" or ")
}

fn from_header<'a>(
    location: &TokenLocation,
    value: Cow<'a, str>,
) -> Result<Option<Cow<'a, str>>, ExtractError> {
    let Some(scheme) = &location.scheme else {
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        return Ok(Some(match value {
            Cow::Borrowed(v) => Cow::Borrowed(v.trim()),
            Cow::Owned(v) => Cow::Owned(v.trim().to_string()),
        }));
    };
    let trimmed = value.trim_start();
    let Some(rest) = trimmed
        .get(..scheme.len())
        .filter(|prefix| prefix.eq_ignore_ascii_case(scheme))
        .map(|_| &trimmed[scheme.len()..])
    else {
        // Another scheme (e.g. Basic): not a token for this policy.
        return Ok(None);
    };
    if !rest.starts_with(' ') {
        return Ok(None);
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(ExtractError::Malformed(format!(
            "the {scheme} scheme has no token"
        )));
    }
    if token.bytes().any(|b| b == b' ' || b == b',') {
        return Err(ExtractError::Malformed(
            "more than one token in the header".into(),
        ));
    }
    // Borrow the token from the header value when it is borrowed (no copy per request).
    let (start, len) = (value.len() - rest.trim_start().len(), token.len());
    Ok(Some(match value {
        Cow::Borrowed(v) => Cow::Borrowed(&v[start..start + len]),
        Cow::Owned(v) => Cow::Owned(v[start..start + len].to_string()),
    }))
}

pub(crate) fn from_query(path: &str, param: &str) -> Result<Option<String>, ExtractError> {
    let Some((_, query)) = path.split_once('?') else {
        return Ok(None);
    };
    let query = query.split('#').next().unwrap_or("");
    let mut values = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == param)
        .map(|(_, v)| v);
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ExtractError::Malformed(format!(
            "the {param} query parameter appears more than once"
        )));
    }
    Ok((!first.is_empty()).then(|| first.into_owned()))
}

fn from_cookie(cookies: &str, name: &str) -> Result<Option<String>, ExtractError> {
    let mut values = cookies
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().trim_matches('"'));
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ExtractError::Malformed(format!(
            "the {name} cookie appears more than once"
        )));
    }
    Ok((!first.is_empty()).then(|| first.to_string()))
}

/// The `cookie` header without the named cookie (`None` when nothing else is left).
pub fn cookie_without(cookies: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = cookies
        .split(';')
        .map(str::trim)
        .filter(|pair| {
            !pair.is_empty() && pair.split_once('=').is_none_or(|(k, _)| k.trim() != name)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(scheme: Option<&str>, query: Option<&str>, cookie: Option<&str>) -> TokenLocation {
        TokenLocation {
            header: "authorization".into(),
            scheme: scheme.map(str::to_owned),
            query: query.map(str::to_owned),
            cookie: cookie.map(str::to_owned),
        }
    }

    fn run(
        loc: &TokenLocation,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(String, TokenSource), ExtractError> {
        let list: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let req = Request {
            host: "h",
            path,
            method: "GET",
            headers: Headers::List(&list),
            policy: None,
            route: None,
            source: Default::default(),
        };
        extract(loc, &req).map(|(t, s)| (t.into_owned(), s))
    }

    #[test]
    fn extraction_table() {
        let bearer = location(Some("Bearer"), Some("access_token"), Some("at"));
        let ok = |t: &str, s| Ok((t.to_string(), s));
        type Case<'a> = (
            &'a str,
            Vec<(&'a str, &'a str)>,
            Result<(String, TokenSource), ExtractError>,
        );
        let cases: Vec<Case> = vec![
            (
                "/",
                vec![("authorization", "Bearer abc.def.ghi")],
                ok("abc.def.ghi", TokenSource::Header),
            ),
            (
                "/",
                vec![("Authorization", "bearer   abc")],
                ok("abc", TokenSource::Header),
            ),
            (
                "/",
                vec![("authorization", "BEARER abc")],
                ok("abc", TokenSource::Header),
            ),
            ("/?access_token=abc", vec![], ok("abc", TokenSource::Query)),
            (
                "/",
                vec![("cookie", "x=1; at=abc; y=2")],
                ok("abc", TokenSource::Cookie),
            ),
            (
                "/",
                vec![("authorization", "Basic dXNlcjpwYXNz")],
                Err(ExtractError::Missing(describe(&bearer))),
            ),
            (
                "/",
                vec![("authorization", "Bearerabc")],
                Err(ExtractError::Missing(describe(&bearer))),
            ),
            ("/", vec![], Err(ExtractError::Missing(describe(&bearer)))),
            (
                "/",
                vec![("authorization", "Bearer ")],
                Err(ExtractError::Malformed(
                    "the Bearer scheme has no token".into(),
                )),
            ),
            (
                "/",
                vec![("authorization", "Bearer a b")],
                Err(ExtractError::Malformed(
                    "more than one token in the header".into(),
                )),
            ),
            (
                "/",
                vec![("authorization", "Bearer a"), ("authorization", "Bearer b")],
                Err(ExtractError::Malformed(
                    "more than one token in the header".into(),
                )),
            ),
            (
                "/?access_token=abc",
                vec![("authorization", "Bearer abc")],
                Err(ExtractError::Malformed(
                    "the token was sent in more than one place".into(),
                )),
            ),
            (
                "/?access_token=a&access_token=b",
                vec![],
                Err(ExtractError::Malformed(
                    "the access_token query parameter appears more than once".into(),
                )),
            ),
            (
                "/",
                vec![("authorization", "Bearer a\"b")],
                Err(ExtractError::Malformed(
                    "the token contains characters a bearer token cannot have".into(),
                )),
            ),
        ];
        for (path, headers, want) in cases {
            assert_eq!(run(&bearer, path, &headers), want, "{path} {headers:?}");
        }
    }

    #[test]
    fn raw_header_without_scheme() {
        let mut loc = location(None, None, None);
        loc.header = "x-token".into();
        assert_eq!(
            run(&loc, "/", &[("x-token", " abc ")]),
            Ok(("abc".into(), TokenSource::Header))
        );
    }

    #[test]
    fn cookie_removal_keeps_the_others() {
        assert_eq!(
            cookie_without("a=1; at=xyz; b=2", "at"),
            Some("a=1; b=2".into())
        );
        assert_eq!(cookie_without("at=xyz", "at"), None);
    }
}

//! Request matching primitives: host patterns, normalized paths, segment-aware prefixes and
//! method sets. Shared by policy selection and per-path rules, so both see the same path.
//!
//! Paths are normalized before matching because a policy's anonymous or weaker rules must never
//! be reachable by spelling a protected path differently (`/a/../admin`, `//admin`,
//! `/%61dmin`). Encoded `/` and `\` stay encoded, so they never create a segment boundary.

use std::fmt;

/// A host pattern from `match.hosts`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// `api.example.com`
    Exact(String),
    /// `*.example.org`, stored as `example.org`: matches any subdomain, not the apex.
    Wildcard(String),
    /// `*`
    Any,
}

/// Why a pattern, path or method was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("host {0:?}: {1}")]
    Host(String, &'static str),
    #[error("path {0:?}: {1}")]
    Path(String, &'static str),
    #[error("method {0:?} is not an HTTP method token")]
    Method(String),
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        let lower = text.trim().to_ascii_lowercase();
        let err = |why| RouteError::Host(text.to_string(), why);
        if lower == "*" {
            return Ok(HostPattern::Any);
        }
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() {
            return Err(err("empty host name"));
        }
        if name.contains('*') {
            return Err(err(
                "a wildcard is only allowed as the whole first label (*.example.com)",
            ));
        }
        if name.contains(':') && !name.starts_with('[') {
            return Err(err("leave out the port: hosts match on any port"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b))
        {
            return Err(err("not a DNS name or IP address"));
        }
        Ok(if wild {
            HostPattern::Wildcard(name.to_string())
        } else {
            HostPattern::Exact(name.to_string())
        })
    }

    /// Specificity for selection: exact beats wildcard (longer suffix first) beats any.
    pub fn specificity(&self) -> (u8, usize) {
        match self {
            HostPattern::Exact(h) => (2, h.len()),
            HostPattern::Wildcard(s) => (1, s.len()),
            HostPattern::Any => (0, 0),
        }
    }

    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix.as_str())
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
            HostPattern::Any => true,
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
            HostPattern::Any => f.write_str("*"),
        }
    }
}

/// Lower-cases a request host and strips the port and a trailing dot.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    let without_dot = without_port.strip_suffix('.').unwrap_or(without_port);
    without_dot.to_ascii_lowercase()
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalizes a request path for matching: drops the query and fragment, decodes
/// percent-encoded unreserved characters (and upper-cases the other escapes), merges repeated
/// slashes and removes `.`/`..` segments (RFC 3986 §5.2.4). Encoded `/`, `\` and other reserved
/// characters stay encoded. Invalid escapes or a path not starting with `/` are errors.
pub fn normalize_path(raw: &str) -> Result<String, RouteError> {
    let path = raw.split(['?', '#']).next().unwrap_or("");
    if path.is_empty() {
        return Ok("/".to_string());
    }
    if !path.starts_with('/') {
        return Err(RouteError::Path(truncate(raw), "does not start with /"));
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(RouteError::Path(truncate(raw), "invalid percent-encoding"));
            };
            let value = hi * 16 + lo;
            if is_unreserved(value) {
                decoded.push(value);
            } else {
                decoded.extend_from_slice(format!("%{value:02X}").as_bytes());
            }
            i += 3;
        } else if b == b'\\' || b < 0x20 || b == 0x7f {
            return Err(RouteError::Path(
                truncate(raw),
                "contains a backslash or control character",
            ));
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    // Only ASCII was pushed for escapes, and the input was valid UTF-8.
    let decoded = String::from_utf8(decoded)
        .map_err(|_| RouteError::Path(truncate(raw), "is not UTF-8 after decoding"))?;
    let trailing_slash =
        decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || (trailing_slash && !segments.is_empty()) {
        out.push('/');
    }
    Ok(out)
}

fn truncate(text: &str) -> String {
    text.chars().take(80).collect()
}

/// A segment-aware path prefix: `/orders` matches `/orders`, `/orders/`, `/orders/1`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathPrefix(String);

impl PathPrefix {
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        if text.contains(['?', '#']) {
            return Err(RouteError::Path(
                text.to_string(),
                "a prefix cannot contain ? or #",
            ));
        }
        let normalized = normalize_path(text)?;
        let trimmed = if normalized.len() > 1 {
            normalized.trim_end_matches('/')
        } else {
            &normalized
        };
        Ok(PathPrefix(trimmed.to_string()))
    }

    pub fn root() -> Self {
        PathPrefix("/".to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Length used to pick the most specific prefix.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `path` must already be normalized.
    pub fn matches(&self, path: &str) -> bool {
        if self.0 == "/" {
            return true;
        }
        path.starts_with(self.0.as_str())
            && matches!(path.as_bytes().get(self.0.len()), None | Some(b'/'))
    }
}

impl fmt::Display for PathPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A set of HTTP methods; empty means all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Methods(Vec<String>);

impl Methods {
    pub fn parse(methods: &[String]) -> Result<Self, RouteError> {
        let mut out = Vec::with_capacity(methods.len());
        for m in methods {
            let upper = m.trim().to_ascii_uppercase();
            if upper.is_empty()
                || !upper
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                return Err(RouteError::Method(m.clone()));
            }
            if !out.contains(&upper) {
                out.push(upper);
            }
        }
        out.sort();
        Ok(Methods(out))
    }

    pub fn is_all(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, method: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|m| m.eq_ignore_ascii_case(method))
    }

    /// Whether some method is in both sets.
    pub fn overlaps(&self, other: &Methods) -> bool {
        self.0.is_empty() || other.0.is_empty() || self.0.iter().any(|m| other.0.contains(m))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        let exact = HostPattern::parse("API.Example.com.").expect("parse");
        assert_eq!(exact, HostPattern::Exact("api.example.com".into()));
        let wild = HostPattern::parse("*.example.org").expect("parse");
        for (host, want) in [
            ("a.example.org", true),
            ("a.b.example.org", true),
            ("example.org", false),
            ("xexample.org", false),
            ("a.example.org.evil", false),
        ] {
            assert_eq!(wild.matches(host), want, "{host}");
        }
        assert!(HostPattern::parse("*").expect("parse").matches("anything"));
        for bad in [
            "",
            "*.",
            "a.*.com",
            "api.example.com:443",
            "sp ace",
            "*foo.com",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
        assert!(
            HostPattern::Exact("a".into()).specificity()
                > HostPattern::Wildcard("zzzz".into()).specificity()
        );
    }

    #[test]
    fn request_hosts_are_normalized() {
        for (raw, want) in [
            ("API.example.com:8443", "api.example.com"),
            ("api.example.com.", "api.example.com"),
            ("[::1]:8080", "[::1]"),
            ("[::1]", "[::1]"),
            ("127.0.0.1:80", "127.0.0.1"),
        ] {
            assert_eq!(normalize_host(raw), want, "{raw}");
        }
    }

    #[test]
    fn paths_are_normalized() {
        let cases = [
            ("/orders?x=1", "/orders"),
            ("/orders#frag", "/orders"),
            ("", "/"),
            ("/", "/"),
            ("//orders//1", "/orders/1"),
            ("/orders/./1", "/orders/1"),
            ("/orders/healthz/../admin", "/orders/admin"),
            ("/../../etc", "/etc"),
            ("/%6Frders", "/orders"),
            ("/orders/%2e%2e/admin", "/admin"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2Fb/", "/a%2Fb/"),
            ("/orders/", "/orders/"),
            ("/orders/1/..", "/orders/"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_path(raw).expect(raw), want, "{raw}");
        }
        for bad in ["orders", "/a%zz", "/a%2", "/a\\b", "/a\u{1}b"] {
            assert!(normalize_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefixes_are_segment_aware() {
        let p = PathPrefix::parse("/orders/").expect("parse");
        assert_eq!(p.as_str(), "/orders");
        for (path, want) in [
            ("/orders", true),
            ("/orders/", true),
            ("/orders/1", true),
            ("/ordersx", false),
            ("/order", false),
            ("/", false),
        ] {
            assert_eq!(p.matches(path), want, "{path}");
        }
        assert!(PathPrefix::root().matches("/anything"));
        assert!(PathPrefix::parse("/a?b").is_err());
        // An encoded slash never reaches into a prefix.
        let admin = PathPrefix::parse("/orders/admin").expect("parse");
        assert!(!admin.matches(&normalize_path("/orders%2Fadmin").expect("norm")));
    }

    #[test]
    fn method_sets() {
        let m = Methods::parse(&["get".into(), "POST".into(), "GET".into()]).expect("parse");
        assert_eq!(m.as_slice(), ["GET", "POST"]);
        assert!(m.matches("get"));
        assert!(!m.matches("DELETE"));
        assert!(Methods::default().matches("DELETE"));
        assert!(m.overlaps(&Methods::default()));
        assert!(!m.overlaps(&Methods::parse(&["DELETE".into()]).expect("parse")));
        assert!(Methods::parse(&["GE T".into()]).is_err());
    }
}

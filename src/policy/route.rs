//! Request matching primitives: host patterns, the path as judged, segment-aware prefixes and
//! method sets. Shared by policy selection and per-path rules, so both see the same path.
//!
//! # The path tollgate judges is the path the upstream serves
//!
//! A rule that does not match falls back to looser checks (an `allowAnonymous` rule skips the
//! token), so every difference between how tollgate and the upstream read a path fails *open*.
//! Proxies and frameworks disagree about encoded slashes, `;` parameters, dot segments, double
//! encoding and more (nginx decodes `%2F` and resolves `..` when `proxy_pass` carries a URI,
//! Tomcat strips `;` parameters, IIS treats `\` as `/`). So [`read_path`] does not pick one
//! reading: a path that some upstream could read in more than one way is refused (400
//! `request_malformed`, with the class in the log and `explain`). What is left has exactly one
//! meaning: escapes of characters that mean the same encoded or not are decoded (`%61` is `a`),
//! the others are kept upper-cased (`%3F`, `%20`, `%C3%A9`).
//!
//! | class | example | why it is refused |
//! |---|---|---|
//! | encoded `/` | `/a%2Fb` | decoded into a segment boundary by nginx (URI-bearing `proxy_pass`) and many frameworks |
//! | `\` raw or encoded | `/a%5Cb` | a path separator on Windows, IIS and some Java servers |
//! | `;` parameters | `/a;x=1/b`, `/..;/` | stripped by Tomcat, Jetty and Spring before routing |
//! | dot segments | `/a/../b`, `/%2e%2e/` | resolved by some hops and not by others |
//! | empty segments | `/a//b` | merged by nginx and Envoy, not by every upstream |
//! | double encoding | `/%252e%252e/` | decoded twice by some stacks |
//! | `#`, control characters, space | `/a#b`, `/a%00b` | truncate or split the path in some parsers |
//! | invalid escapes, raw non-ASCII, invalid or overlong UTF-8 | `/%zz`, `/%C0%AF` | no single reading |
//!
//! Letter case and `HEAD` are matters of matching, not reading: see [`PathPrefix::matches`] and
//! [`Methods::matches`].

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

/// How a policy's upstream compares letter case in paths (`match.pathCase`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathCase {
    /// `/Admin` is another path than `/admin`.
    Exact,
    /// Prefixes match in any letter case.
    IgnoreCase,
}

/// Why a pattern, path or method was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("host {0:?}: {1}")]
    Host(String, &'static str),
    #[error("path {0:?}: {1}")]
    Path(String, String),
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

/// The host of a request as tollgate judges it: lower case, without the port and a trailing
/// dot. Refused when it is not a host name or IP literal with an optional numeric port: a host
/// the proxy routes one way (nginx picks the server by what precedes `:`, Go's `SplitHostPort`
/// does not check the port) must not be judged as another host that nobody owns. An empty
/// host stays empty.
pub fn read_host(raw: &str) -> Result<String, &'static str> {
    let (name, port) = if let Some(rest) = raw.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err("an IPv6 literal without its closing ]");
        };
        if inside.is_empty()
            || !inside
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err("not an IPv6 literal");
        }
        match after.strip_prefix(':') {
            Some(port) => (&raw[..inside.len() + 2], Some(port)),
            None if after.is_empty() => (raw, None),
            None => return Err("text after an IPv6 literal"),
        }
    } else {
        match raw.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (raw, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("a port that is not a number");
    }
    if !name.starts_with('[') {
        let valid = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !valid {
            return Err("characters a host name cannot have");
        }
        if name.is_empty() && port.is_some() {
            return Err("a port without a host");
        }
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    Ok(name.to_ascii_lowercase())
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

/// Longest path tollgate reads (bytes before the query); longer requests are refused.
pub const MAX_PATH_BYTES: usize = 8 * 1024;

/// Why a request path is refused: each is a way an upstream could read the path differently
/// from tollgate (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Empty, or not starting with `/` (only origin-form targets are judged).
    #[error("does not start with /")]
    NotOrigin,
    /// Longer than [`MAX_PATH_BYTES`].
    #[error("is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    /// `%2F`: an upstream may decode it into a segment boundary.
    #[error("contains an encoded / (%2F), which some upstreams decode into a path separator")]
    EncodedSlash,
    /// `\` or `%5C`: a path separator for some servers.
    #[error("contains a backslash, which some upstreams read as /")]
    Backslash,
    /// `;` or `%3B`: path parameters, stripped by some servers before routing.
    #[error("contains ; (a path parameter), which some upstreams strip before routing")]
    Parameters,
    /// A `.` or `..` segment, in any encoding.
    #[error(
        "contains a . or .. segment (in any encoding), which some hops resolve and others do not"
    )]
    DotSegment,
    /// `//`: an empty segment.
    #[error("contains an empty segment (//), which some hops merge and others do not")]
    EmptySegment,
    /// `%25` followed by two hex digits: decoded twice by some stacks.
    #[error("is double-encoded (%25 followed by hex digits)")]
    DoubleEncoding,
    /// `%` not followed by two hex digits.
    #[error("contains an invalid percent-escape")]
    BadEscape,
    /// `#` in the request target.
    #[error("contains # (a fragment is never sent to a server)")]
    Fragment,
    /// A control character, space or DEL, raw or encoded (`%00`, `%0A`, …; a space only raw).
    #[error("contains a control character, NUL or a raw space")]
    Control,
    /// A raw byte above 0x7F (request targets are ASCII; UTF-8 travels percent-encoded).
    #[error("contains a raw non-ASCII byte")]
    NotAscii,
    /// Percent-escapes that decode to invalid or overlong UTF-8.
    #[error("contains escapes that are not valid UTF-8 (or are overlong)")]
    BadUtf8,
}

impl PathError {
    /// A bounded code for logs and metrics: `encoded_slash`, `dot_segment`, ….
    pub fn class(self) -> &'static str {
        match self {
            PathError::NotOrigin => "not_origin_form",
            PathError::TooLong => "too_long",
            PathError::EncodedSlash => "encoded_slash",
            PathError::Backslash => "backslash",
            PathError::Parameters => "path_parameters",
            PathError::DotSegment => "dot_segment",
            PathError::EmptySegment => "empty_segment",
            PathError::DoubleEncoding => "double_encoding",
            PathError::BadEscape => "invalid_escape",
            PathError::Fragment => "fragment",
            PathError::Control => "control_character",
            PathError::NotAscii => "raw_non_ascii",
            PathError::BadUtf8 => "invalid_utf8",
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_escape(out: &mut String, value: u8) {
    out.push('%');
    out.push(char::from(HEX[usize::from(value >> 4)]));
    out.push(char::from(HEX[usize::from(value & 15)]));
}

/// Checks that the escaped bytes above 0x7F just read (`run`) form valid UTF-8.
fn check_utf8(run: &mut Vec<u8>) -> Result<(), PathError> {
    if !run.is_empty() {
        std::str::from_utf8(run).map_err(|_| PathError::BadUtf8)?;
        run.clear();
    }
    Ok(())
}

/// The byte at `i` once decoded (a valid escape counts as the byte it stands for), and the
/// position after it.
fn decoded_at(bytes: &[u8], i: usize) -> Option<(u8, usize)> {
    match bytes.get(i)? {
        b'%' => {
            let value = hex(*bytes.get(i + 1)?)? * 16 + hex(*bytes.get(i + 2)?)?;
            Some((value, i + 3))
        }
        b => Some((*b, i + 1)),
    }
}

/// Whether what follows `%25` at `i` reads as two hex digits, raw or themselves escaped
/// (`%25%32%65`): decoded twice, that is an escape (`%2e`, a dot) again.
fn escapes_hex_pair(bytes: &[u8], i: usize) -> bool {
    let Some((first, next)) = decoded_at(bytes, i) else {
        return false;
    };
    let Some((second, _)) = decoded_at(bytes, next) else {
        return false;
    };
    hex(first).is_some() && hex(second).is_some()
}

/// Readings of a path that tollgate refuses unless a policy says its upstream reads the path
/// that way (`match.pathReading`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathReading {
    /// `%2F` is a character of its segment: the upstream does not decode it (GitLab-style ids).
    pub keep_encoded_slashes: bool,
    /// `//` is read as `/`: the upstream merges empty segments.
    pub merge_empty_segments: bool,
    /// `;` and what follows it up to the next `/` are dropped from each segment: the upstream
    /// strips path parameters (Tomcat, Jetty: `;jsessionid=`).
    pub strip_parameters: bool,
}

impl PathReading {
    /// Every reading refused.
    pub const STRICT: PathReading = PathReading {
        keep_encoded_slashes: false,
        merge_empty_segments: false,
        strip_parameters: false,
    };

    /// The readings either allows.
    pub fn union(self, other: PathReading) -> PathReading {
        PathReading {
            keep_encoded_slashes: self.keep_encoded_slashes || other.keep_encoded_slashes,
            merge_empty_segments: self.merge_empty_segments || other.merge_empty_segments,
            strip_parameters: self.strip_parameters || other.strip_parameters,
        }
    }

    /// Whether every reading `used` needs is allowed here.
    pub fn allows(self, used: PathReading) -> bool {
        (!used.keep_encoded_slashes || self.keep_encoded_slashes)
            && (!used.merge_empty_segments || self.merge_empty_segments)
            && (!used.strip_parameters || self.strip_parameters)
    }

    pub fn is_strict(self) -> bool {
        self == PathReading::STRICT
    }

    /// Whether this reading would accept what `error` refuses.
    pub fn covers(self, error: PathError) -> bool {
        match error {
            PathError::EncodedSlash => self.keep_encoded_slashes,
            PathError::EmptySegment => self.merge_empty_segments,
            PathError::Parameters => self.strip_parameters,
            _ => false,
        }
    }
}

/// The path of a request target as tollgate judges it, or why it cannot be judged.
///
/// The query is dropped. Escapes of printable ASCII characters are decoded except `%20`,
/// `%23` (`#`), `%25` (`%`) and `%3F` (`?`), which are kept (upper-cased) like escaped UTF-8.
/// Everything an upstream could read in more than one way is a [`PathError`]. Letter case is
/// kept. Runs in one pass over the bytes, plus one over the segments.
pub fn read_path(target: &str) -> Result<String, PathError> {
    read_path_with(target, PathReading::STRICT).map(|(path, _)| path)
}

/// [`read_path`] with the readings `allowed` accepted: the path, and the readings it needed.
pub fn read_path_with(
    target: &str,
    allowed: PathReading,
) -> Result<(String, PathReading), PathError> {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if !path.starts_with('/') {
        return Err(PathError::NotOrigin);
    }
    let mut used = PathReading::STRICT;
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut high: Vec<u8> = Vec::new();
    // Inside a path parameter that is being dropped: bytes are still checked, not kept.
    let mut dropping = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            check_utf8(&mut high)?;
            match b {
                b'\\' => return Err(PathError::Backslash),
                b'#' => return Err(PathError::Fragment),
                b';' if allowed.strip_parameters => {
                    used.strip_parameters = true;
                    dropping = true;
                }
                b';' => return Err(PathError::Parameters),
                0..=0x20 | 0x7f => return Err(PathError::Control),
                0x80.. => return Err(PathError::NotAscii),
                b'/' => {
                    dropping = false;
                    out.push('/');
                }
                _ if dropping => {}
                _ => out.push(char::from(b)),
            }
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadEscape);
        };
        let value = hi * 16 + lo;
        i += 3;
        if value >= 0x80 {
            high.push(value);
            if !dropping {
                push_escape(&mut out, value);
            }
            continue;
        }
        check_utf8(&mut high)?;
        match value {
            0..=0x1f | 0x7f => return Err(PathError::Control),
            b'/' if allowed.keep_encoded_slashes => {
                used.keep_encoded_slashes = true;
                if !dropping {
                    push_escape(&mut out, value);
                }
            }
            b'/' => return Err(PathError::EncodedSlash),
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Parameters),
            b'%' if escapes_hex_pair(bytes, i) => return Err(PathError::DoubleEncoding),
            _ if dropping => {}
            b' ' | b'#' | b'%' | b'?' => push_escape(&mut out, value),
            _ => out.push(char::from(value)),
        }
    }
    check_utf8(&mut high)?;
    // Segments: the first is the empty string before the leading '/'; the last may be empty
    // (a trailing slash).
    let mut merged: Option<String> = None;
    let mut segments = out.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        match segment {
            "." | ".." => return Err(PathError::DotSegment),
            "" if segments.peek().is_some() => {
                if !allowed.merge_empty_segments {
                    return Err(PathError::EmptySegment);
                }
                used.merge_empty_segments = true;
            }
            _ => {}
        }
    }
    if used.merge_empty_segments {
        let mut joined = String::with_capacity(out.len());
        let parts: Vec<&str> = out.split('/').skip(1).collect();
        let last = parts.len().saturating_sub(1);
        for (n, part) in parts.iter().enumerate() {
            if part.is_empty() && n != last {
                continue;
            }
            joined.push('/');
            joined.push_str(part);
        }
        if joined.is_empty() {
            joined.push('/');
        }
        merged = Some(joined);
    }
    Ok((merged.unwrap_or(out), used))
}

/// Characters that make a path look like a pattern (glob, regex, template) rather than a
/// literal prefix.
const PATTERN_CHARS: &[char] = &['*', '?', '[', ']', '{', '}', '|', '#'];

/// A segment-aware path prefix: `/orders` matches `/orders`, `/orders/`, `/orders/1`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathPrefix(String);

impl PathPrefix {
    /// A prefix as written in a policy. Patterns are refused rather than matched literally
    /// (`/orders/admin/*` would otherwise protect only a segment named `*`), and so is
    /// anything a request path can never be (dot segments, `//`, `;`, encoded `/`).
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        let refuse = |why: String| Err(RouteError::Path(text.to_string(), why));
        if let Some(c) = text.chars().find(|c| PATTERN_CHARS.contains(c)) {
            return refuse(format!(
                "{c:?} is not a pattern here: paths are literal prefixes matched on whole segments \
                 (\"/orders/admin\" covers /orders/admin and /orders/admin/7, not /orders/administrator); \
                 leave out wildcards, regular expressions and the query"
            ));
        }
        if let Some(segment) = text.split('/').find(|s| s.starts_with(':')) {
            return refuse(format!(
                "{segment:?} looks like a route parameter: paths are literal prefixes; cut the path before it"
            ));
        }
        let read = match read_path(text) {
            Ok(read) => read,
            Err(e) => {
                return refuse(format!(
                    "{e}; such requests are refused, so this prefix could never match"
                ));
            }
        };
        let trimmed = if read.len() > 1 {
            read.trim_end_matches('/')
        } else {
            &read
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

    /// Whether the prefix has upper-case letters (then letter case can change what it matches).
    pub fn has_upper(&self) -> bool {
        self.0.bytes().any(|b| b.is_ascii_uppercase())
    }

    /// Whether `path` (as [`read_path`] returns it) is this prefix or below it. With
    /// `ignore_case`, ASCII letters match in either case (for upstreams that route that way).
    pub fn matches(&self, path: &str, ignore_case: bool) -> bool {
        if self.0 == "/" {
            return true;
        }
        let (prefix, path) = (self.0.as_bytes(), path.as_bytes());
        let Some(head) = path.get(..prefix.len()) else {
            return false;
        };
        let same = if ignore_case {
            head.eq_ignore_ascii_case(prefix)
        } else {
            head == prefix
        };
        same && matches!(path.get(prefix.len()), None | Some(b'/'))
    }

    /// Whether every path this prefix matches is also matched by `other`.
    pub fn within(&self, other: &PathPrefix) -> bool {
        other.matches(&self.0, false)
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

    /// Whether a request with `method` is covered. `HEAD` is covered by `GET` as well: most
    /// frameworks answer `HEAD` with the `GET` handler, so a `GET`-only rule must judge it.
    pub fn matches(&self, method: &str) -> bool {
        self.0.is_empty()
            || self.0.iter().any(|m| m.eq_ignore_ascii_case(method))
            || (method.eq_ignore_ascii_case("HEAD") && self.0.iter().any(|m| m == "GET"))
    }

    /// Whether `method` is in the set exactly, as a gateway's route match compares it (no
    /// `HEAD` for `GET`, letter case significant); an empty set matches every method.
    pub fn matches_exactly(&self, method: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|m| m == method)
    }

    /// Whether some request method is covered by both sets.
    pub fn overlaps(&self, other: &Methods) -> bool {
        let head = |set: &Methods| set.matches("HEAD");
        self.0.is_empty()
            || other.0.is_empty()
            || self.0.iter().any(|m| other.0.contains(m))
            || (head(self) && head(other))
    }

    /// Whether every method `self` covers is covered by `other`.
    pub fn within(&self, other: &Methods) -> bool {
        other.is_all()
            || (!self.is_all()
                && self.0.iter().all(|m| other.matches(m))
                && (!self.matches("HEAD") || other.matches("HEAD")))
    }

    /// Whether the set names `method` itself (not through `HEAD` ⊂ `GET` or "all").
    pub fn names(&self, method: &str) -> bool {
        self.0.iter().any(|m| m.eq_ignore_ascii_case(method))
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
    fn request_hosts_are_read_or_refused() {
        for (raw, want) in [
            ("API.example.com:8443", "api.example.com"),
            ("api.example.com.", "api.example.com"),
            ("[::1]:8080", "[::1]"),
            ("[::1]", "[::1]"),
            ("127.0.0.1:80", "127.0.0.1"),
            ("under_score.internal", "under_score.internal"),
            ("", ""),
        ] {
            assert_eq!(read_host(raw), Ok(want.to_string()), "{raw}");
        }
        for bad in [
            "api.example.com:abc",
            "api.example.com:",
            "api.example.com:80:80",
            "api.example.com:123456",
            "api example.com",
            "api.example.com?",
            "api.example.com\\x",
            "user@api.example.com",
            "[::1",
            "[::1]x",
            "[zz]",
            ":80",
            "::1",
        ] {
            assert!(read_host(bad).is_err(), "{bad:?}");
        }
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
    fn paths_with_one_reading_are_judged_as_written() {
        let cases = [
            ("/orders?x=1", "/orders"),
            ("/orders?next=/../admin#x", "/orders"),
            ("/", "/"),
            ("/orders/", "/orders/"),
            ("/Orders/Admin", "/Orders/Admin"),
            ("/%6Frders", "/orders"),
            ("/%7Euser/%2Bplus%3A%40", "/~user/+plus:@"),
            ("/a%20b%3fc%23d", "/a%20b%3Fc%23d"),
            ("/100%25", "/100%25"),
            ("/100%25%20off", "/100%25%20off"),
            ("/100%25x", "/100%25x"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a.b/..c/.../c..", "/a.b/..c/.../c.."),
            ("/a%2Eb", "/a.b"),
        ];
        for (raw, want) in cases {
            assert_eq!(read_path(raw).expect(raw), want, "{raw}");
        }
    }

    #[test]
    fn paths_an_upstream_could_read_otherwise_are_refused() {
        use PathError::*;
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        let cases: Vec<(&str, PathError)> = vec![
            ("", NotOrigin),
            ("orders", NotOrigin),
            ("*", NotOrigin),
            ("http://evil/x", NotOrigin),
            (&long, TooLong),
            ("/orders/healthz/..%2Fadmin/1", EncodedSlash),
            ("/a%2fb", EncodedSlash),
            ("/a\\b", Backslash),
            ("/a%5cb", Backslash),
            ("/orders/admin;x=1/1", Parameters),
            ("/orders/healthz/..;/admin/1", Parameters),
            ("/a%3Bb", Parameters),
            ("/orders/healthz/../admin", DotSegment),
            ("/orders/./admin", DotSegment),
            ("/orders/%2e%2e/admin", DotSegment),
            ("/orders/.%2E/admin", DotSegment),
            ("/orders/%2e", DotSegment),
            ("/..", DotSegment),
            ("/orders/1/..", DotSegment),
            ("//orders", EmptySegment),
            ("/orders//admin", EmptySegment),
            ("/%252e%252e/admin", DoubleEncoding),
            ("/a%252Fb", DoubleEncoding),
            // The hex digits escaped themselves: decoded twice, a dot or a slash all the same.
            ("/orders/healthz/%25%32%65%25%32%65/admin", DoubleEncoding),
            ("/orders/healthz/%252%65%252%65/admin", DoubleEncoding),
            ("/orders/healthz/%25%32%66admin", DoubleEncoding),
            ("/a%zz", BadEscape),
            ("/a%2", BadEscape),
            ("/a%", BadEscape),
            ("/a#b", Fragment),
            ("/a%00b", Control),
            ("/a%0d%0ab", Control),
            ("/a b", Control),
            ("/a\u{1}b", Control),
            ("/a%7f", Control),
            ("/caf\u{e9}", NotAscii),
            ("/%C0%AF", BadUtf8),
            ("/%E0%80%AF", BadUtf8),
            ("/%C0%AE%C0%AE/", BadUtf8),
            ("/%FF", BadUtf8),
            ("/%A9", BadUtf8),
            ("/%C3", BadUtf8),
            ("/%C3/", BadUtf8),
            ("/%ED%A0%80", BadUtf8),
        ];
        for (raw, want) in cases {
            assert_eq!(read_path(raw), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn readings_a_policy_declares() {
        let all = PathReading {
            keep_encoded_slashes: true,
            merge_empty_segments: true,
            strip_parameters: true,
        };
        for (raw, want, used) in [
            ("/a%2fb/c", "/a%2Fb/c", (true, false, false)),
            ("//a//b//", "/a/b/", (false, true, false)),
            ("/a;jsessionid=1/b;v=2", "/a/b", (false, false, true)),
            ("/a;x=%00", "", (false, false, false)),
            ("/plain", "/plain", (false, false, false)),
        ] {
            match read_path_with(raw, all) {
                Ok((path, reading)) => {
                    assert_eq!(path, want, "{raw}");
                    assert_eq!(
                        (
                            reading.keep_encoded_slashes,
                            reading.merge_empty_segments,
                            reading.strip_parameters
                        ),
                        used,
                        "{raw}"
                    );
                }
                // What is dropped is still checked.
                Err(e) => assert_eq!((raw, e), ("/a;x=%00", PathError::Control)),
            }
        }
        // Never accepted: dot segments (after stripping), encoded ; and the rest.
        for (raw, error) in [
            ("/a/..;x/b", PathError::DotSegment),
            ("/a/.;/b", PathError::DotSegment),
            ("/a%3Bb", PathError::Parameters),
            ("/a%5Cb", PathError::Backslash),
            ("/a//../b", PathError::DotSegment),
        ] {
            assert_eq!(
                read_path_with(raw, all).map(|(p, _)| p),
                Err(error),
                "{raw}"
            );
        }
        // Only the readings allowed.
        let merge_only = PathReading {
            merge_empty_segments: true,
            ..PathReading::STRICT
        };
        assert_eq!(
            read_path_with("/a//b%2Fc", merge_only).map(|(p, _)| p),
            Err(PathError::EncodedSlash)
        );
        assert!(all.allows(merge_only) && !merge_only.allows(all));
        assert!(merge_only.covers(PathError::EmptySegment));
        assert!(!merge_only.covers(PathError::DotSegment));
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
            ("/Orders/1", false),
        ] {
            assert_eq!(p.matches(path, false), want, "{path}");
        }
        assert!(p.matches("/ORDERS/1", true));
        assert!(!p.matches("/ORDERSX", true));
        assert!(PathPrefix::root().matches("/anything", false));
        assert_eq!(
            PathPrefix::parse("/%61dmin").expect("parse").as_str(),
            "/admin"
        );
        assert!(
            PathPrefix::parse("/orders/admin")
                .expect("parse")
                .within(&p)
        );
        assert!(!p.within(&PathPrefix::parse("/orders/admin").expect("parse")));
    }

    #[test]
    fn patterns_and_unmatchable_prefixes_are_refused() {
        for (bad, says) in [
            ("/orders/admin/*", "not a pattern"),
            ("/orders/*/items", "not a pattern"),
            ("/orders/.*", "not a pattern"),
            ("^/orders$", "could never match"),
            ("/orders/{id}", "not a pattern"),
            ("/orders/[0-9]+", "not a pattern"),
            ("/a?b", "not a pattern"),
            ("/orders/:id", "route parameter"),
            ("/orders/../admin", "could never match"),
            ("/orders//admin", "could never match"),
            ("/orders;v=1", "could never match"),
            ("/a%2Fb", "could never match"),
            ("orders", "could never match"),
        ] {
            let err = PathPrefix::parse(bad).expect_err(bad).to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
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
        // HEAD runs the GET handler in most frameworks: a GET rule judges it.
        assert!(m.matches("HEAD"));
        assert!(
            !Methods::parse(&["POST".into()])
                .expect("parse")
                .matches("HEAD")
        );
        let head = Methods::parse(&["HEAD".into()]).expect("parse");
        assert!(head.overlaps(&m) && !head.matches("GET"));
        assert!(head.within(&m) && !m.within(&head));
        assert!(m.names("get") && !m.names("HEAD"));
    }
}

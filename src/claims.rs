//! Claim lookup and `requiredClaims` evaluation (Azure API Management semantics), and the
//! conversion of claim values into header values.
//!
//! Values compare as text: strings as they are (split by the separator if one is set),
//! numbers by their JSON text, booleans as `true`/`false`, arrays element by element.
//! Objects and `null` never match a value.

use serde_json::Value;

use crate::jose::Claims;
use crate::policy::spec::MatchMode;

/// A compiled claim requirement.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimRequirement {
    pub name: String,
    pub mode: MatchMode,
    pub separator: Option<String>,
    pub values: Vec<String>,
}

/// A requirement that was not met, with what the token had (for logs and descriptions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unmet {
    pub claim: String,
    /// Human text: what was required and what was found.
    pub detail: String,
}

/// Finds a claim by literal name first (URL-style names contain dots), then by dotted path.
pub fn lookup<'a>(claims: &'a Claims, name: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(name) {
        return Some(value);
    }
    if !name.contains('.') {
        return None;
    }
    let mut parts = name.split('.');
    let mut current = claims.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The text values a claim holds, for comparison.
pub fn claim_values(value: &Value, separator: Option<&str>) -> Vec<String> {
    match (value, separator) {
        (Value::String(s), Some(sep)) if !sep.is_empty() => s
            .split(sep)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
        (Value::Array(items), _) => items.iter().filter_map(scalar_text).collect(),
        (other, _) => scalar_text(other).into_iter().collect(),
    }
}

impl ClaimRequirement {
    /// Whether it is a requirement on a scope claim (`scope`, `scp`).
    pub fn is_scope(&self) -> bool {
        SCOPE_CLAIMS.contains(&self.name.as_str())
    }

    /// The requirement in words: `scp with one of ["orders.read"]`.
    pub fn describe(&self) -> String {
        if self.values.is_empty() {
            return format!("claim {:?} present", self.name);
        }
        let mode = match self.mode {
            MatchMode::Any => "one of",
            MatchMode::All => "all of",
        };
        format!("claim {:?} with {mode} {:?}", self.name, self.values)
    }

    /// Checks the requirement against verified claims.
    pub fn check(&self, claims: &Claims) -> Result<(), Unmet> {
        let unmet = |detail: String| {
            Err(Unmet {
                claim: self.name.clone(),
                detail,
            })
        };
        let Some(value) = lookup(claims, &self.name).filter(|v| !v.is_null()) else {
            return unmet(format!("the token has no {:?} claim", self.name));
        };
        if self.values.is_empty() {
            return Ok(());
        }
        let held = claim_values(value, self.separator.as_deref());
        let has = |wanted: &String| held.iter().any(|h| h == wanted);
        let ok = match self.mode {
            MatchMode::Any => self.values.iter().any(has),
            MatchMode::All => self.values.iter().all(has),
        };
        if ok {
            return Ok(());
        }
        let missing: Vec<&String> = self.values.iter().filter(|v| !has(v)).collect();
        let mode = match self.mode {
            MatchMode::Any => "one of",
            MatchMode::All => "all of",
        };
        unmet(format!(
            "claim {:?} must contain {mode} {:?}; missing {:?}",
            self.name, self.values, missing
        ))
    }
}

/// The claims that carry OAuth scopes: `scope` (RFC 8693, RFC 9068) and `scp` (Azure AD, Okta).
pub const SCOPE_CLAIMS: [&str; 2] = ["scope", "scp"];

/// Longest `scope` a challenge names: what `WWW-Authenticate` quoting keeps whole.
pub const MAX_CHALLENGE_SCOPE: usize = 400;

/// Whether `text` is a scope token (RFC 6749 §3.3): printable ASCII but space, `"` and `\`.
pub fn is_scope_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// The `scope` an `insufficient_scope` challenge names for a rule (RFC 6750 §3): every scope a
/// token needs to pass both the policy-wide requirements and the rule's, as far as they are
/// requirements on a scope claim (`scope`, `scp`). A `match: all` requirement contributes every
/// value; a `match: any` one its first value (one scope that suffices: list the narrowest
/// first); one without values, nothing. In order, without repeats. `Ok(None)`: the rule
/// requires no scope. `Err`: a value is not a scope token, or the list is too long to quote
/// whole; the challenge then names none rather than an incomplete one.
pub fn challenge_scope(
    policy_wide: &[ClaimRequirement],
    rule: &[ClaimRequirement],
) -> Result<Option<String>, String> {
    let mut scopes: Vec<&str> = Vec::new();
    for requirement in policy_wide.iter().chain(rule).filter(|r| r.is_scope()) {
        let values = match requirement.mode {
            MatchMode::All => &requirement.values[..],
            MatchMode::Any => &requirement.values[..requirement.values.len().min(1)],
        };
        for value in values {
            if !is_scope_token(value) {
                return Err(format!(
                    "{value:?} of claim {:?} is not a scope token (RFC 6749 §3.3: no spaces, quotes or backslashes)",
                    requirement.name
                ));
            }
            if !scopes.contains(&value.as_str()) {
                scopes.push(value);
            }
        }
    }
    let scope = scopes.join(" ");
    if scope.len() > MAX_CHALLENGE_SCOPE {
        return Err(format!(
            "the scopes it requires take {} characters, more than the {MAX_CHALLENGE_SCOPE} a challenge carries",
            scope.len()
        ));
    }
    Ok((!scope.is_empty()).then_some(scope))
}

/// A claim as a header value: strings as they are, arrays joined with `,`, objects as JSON.
/// `None` when the claim is absent/null or the value cannot be a header (control characters).
pub fn header_value(value: &Value) -> Option<String> {
    let text = match value {
        Value::Null => return None,
        Value::Array(items) => items
            .iter()
            .map(|item| scalar_text(item).unwrap_or_else(|| item.to_string()))
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(_) => value.to_string(),
        other => scalar_text(other).unwrap_or_default(),
    };
    let valid = text.len() <= 8192 && !text.chars().any(|c| c.is_control());
    valid.then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: Value) -> Claims {
        value.as_object().cloned().expect("object")
    }

    fn req(name: &str, mode: MatchMode, sep: Option<&str>, values: &[&str]) -> ClaimRequirement {
        ClaimRequirement {
            name: name.into(),
            mode,
            separator: sep.map(str::to_owned),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn requirement_table() {
        let c = claims(json!({
            "scp": "orders.read orders.write",
            "roles": ["admin", "user"],
            "level": 3,
            "verified": true,
            "realm_access": {"roles": ["ops"]},
            "https://example.com/tenant": "t1",
            "nothing": null,
            "obj": {"a": 1},
        }));
        use MatchMode::*;
        let cases = [
            (req("scp", Any, Some(" "), &["orders.read"]), true),
            (
                req("scp", All, Some(" "), &["orders.read", "orders.write"]),
                true,
            ),
            (
                req("scp", All, Some(" "), &["orders.read", "orders.delete"]),
                false,
            ),
            (req("scp", Any, None, &["orders.read"]), false),
            (req("scp", Any, None, &["orders.read orders.write"]), true),
            (req("roles", Any, None, &["admin"]), true),
            (req("roles", All, None, &["admin", "user"]), true),
            (req("roles", All, None, &["admin", "root"]), false),
            (req("roles", Any, None, &["root", "guest"]), false),
            (req("level", Any, None, &["3"]), true),
            (req("level", Any, None, &["4"]), false),
            (req("verified", Any, None, &["true"]), true),
            (req("verified", Any, None, &["false"]), false),
            (req("realm_access.roles", Any, None, &["ops"]), true),
            (req("realm_access.missing", Any, None, &[]), false),
            (req("https://example.com/tenant", Any, None, &["t1"]), true),
            (req("absent", Any, None, &[]), false),
            (req("nothing", Any, None, &[]), false),
            (req("roles", Any, None, &[]), true),
            (req("obj", Any, None, &["{\"a\":1}"]), false),
        ];
        for (requirement, want) in cases {
            assert_eq!(requirement.check(&c).is_ok(), want, "{requirement:?}");
        }
    }

    #[test]
    fn unmet_says_what_is_missing() {
        let c = claims(json!({"roles": ["user"]}));
        let unmet = req("roles", MatchMode::All, None, &["admin", "user"])
            .check(&c)
            .expect_err("unmet");
        assert_eq!(unmet.claim, "roles");
        assert!(
            unmet.detail.contains("missing [\"admin\"]"),
            "{}",
            unmet.detail
        );
    }

    /// Policy-wide requirements, a rule's, and the scope (or an error fragment).
    type Case = (
        Vec<ClaimRequirement>,
        Vec<ClaimRequirement>,
        Result<Option<&'static str>, &'static str>,
    );

    #[test]
    fn the_challenge_scope_names_what_a_new_token_needs() {
        use MatchMode::*;
        let sp = Some(" ");
        let cases: Vec<Case> = vec![
            // all: every value; any: the first.
            (
                vec![],
                vec![req("scp", All, sp, &["orders.read", "orders.write"])],
                Ok(Some("orders.read orders.write")),
            ),
            (
                vec![],
                vec![req("scope", Any, sp, &["orders.write", "orders.admin"])],
                Ok(Some("orders.write")),
            ),
            // The policy-wide scopes first, then the rule's, each once; other claims never.
            (
                vec![
                    req("scope", All, sp, &["api"]),
                    req("roles", All, None, &["admin"]),
                ],
                vec![
                    req("scp", All, sp, &["api", "orders.write"]),
                    req("groups", Any, None, &["ops"]),
                ],
                Ok(Some("api orders.write")),
            ),
            // Nothing to name: no scope requirement, or only presence.
            (vec![], vec![req("roles", All, None, &["admin"])], Ok(None)),
            (vec![], vec![req("scp", Any, None, &[])], Ok(None)),
            // Claims only named like scope claims do not count.
            (
                vec![],
                vec![
                    req("scopes", All, None, &["a"]),
                    req("x.scp", All, None, &["b"]),
                ],
                Ok(None),
            ),
            // A value no scope token can be: no scope rather than a wrong one.
            (
                vec![],
                vec![req("scope", All, None, &["a b"])],
                Err("not a scope token"),
            ),
            (
                vec![],
                vec![req("scope", All, sp, &["ok", "say\"hi\""])],
                Err("not a scope token"),
            ),
            (
                vec![],
                vec![req("scope", All, sp, &["caf\u{e9}"])],
                Err("not a scope token"),
            ),
        ];
        for (policy_wide, rule, want) in cases {
            let got = challenge_scope(&policy_wide, &rule);
            match want {
                Ok(want) => assert_eq!(got.as_ref().map(Option::as_deref), Ok(want), "{rule:?}"),
                Err(fragment) => assert!(
                    got.as_ref().is_err_and(|e| e.contains(fragment)),
                    "{rule:?}: {got:?}"
                ),
            }
        }
        let many: Vec<String> = (0..60).map(|i| format!("orders.scope{i:03}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let long = challenge_scope(&[], &[req("scp", All, sp, &many)]);
        assert!(long.is_err_and(|e| e.contains("more than the 400")));
    }

    #[test]
    fn scope_tokens_follow_rfc_6749() {
        for ok in [
            "orders.read",
            "api://orders/.default",
            "a!#$%&'()*+,-./:;<=>?@[]^_`{|}~",
        ] {
            assert!(is_scope_token(ok), "{ok}");
        }
        for bad in ["", "a b", "a\"b", "a\\b", "a\tb", "\u{7f}", "\u{e9}"] {
            assert!(!is_scope_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn header_values() {
        assert_eq!(header_value(&json!("user-1")), Some("user-1".into()));
        assert_eq!(header_value(&json!(["a", "b", 3])), Some("a,b,3".into()));
        assert_eq!(header_value(&json!(42)), Some("42".into()));
        assert_eq!(header_value(&json!({"a": 1})), Some("{\"a\":1}".into()));
        assert_eq!(header_value(&json!(null)), None);
        assert_eq!(header_value(&json!("evil\r\nx-admin: 1")), None);
    }
}

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

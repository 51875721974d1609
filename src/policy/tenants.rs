//! Multi-tenant issuers: an issuer whose `issuer` (and `discovery` or `jwksUri`) holds the
//! placeholder `{tenant}` (or Azure's spelling `{tenantid}`, as Entra's common discovery
//! document publishes it), with the tenants it accepts listed in `tenants`, admitted by a CEL
//! condition on the tenant's name in `admitTenants`, or both.
//!
//! ```text
//! issuer: https://kc.example.com/realms/{tenant}      ─► https://kc.example.com/realms/acme
//! tenants: [acme, globex]                                https://kc.example.com/realms/globex
//! admitTenants: {expression: "tenant.startsWith('cust-')"}
//!                            ─► at request time: https://kc.example.com/realms/cust-7 (admission)
//! ```
//!
//! Each listed tenant expands, when the policy compiles, to an issuer spec of its own that
//! compiles like a hand-written one (as `azureAd.tenants` does): its URLs meet the same checks
//! and the SSRF guard, and its keys come from the shared key source of its URL. A tenant the
//! condition admits gets the same issuer when a token first names it ([`admission`]): the
//! compiled policy stays immutable, the admitted tenants live in a bounded cache the template
//! owns. Nothing is fetched for a tenant that is neither listed nor admitted. The
//! [`IssuerTemplate`] stays in the compiled policy to name the tenant of an `iss` no issuer
//! accepts (`issuer_not_allowed`, with the tenant).
//!
//! A tenant is substituted into URLs, so it is a short run of `[A-Za-z0-9._-]` starting with a
//! letter or digit (never `.` or `..`, which a URL parser reads as a path step), and the
//! placeholder may stand only after the host: a tenant never chooses where keys are fetched
//! from.

use std::borrow::Cow;
use std::sync::Arc;

use super::spec::IssuerSpec;
use crate::expression::{self, Expression, Kind};

pub mod admission;

pub use admission::{Admission, AdmitError};

/// Both spellings of the placeholder.
pub const PLACEHOLDERS: [&str; 2] = ["{tenant}", "{tenantid}"];
/// Most tenants of one template.
pub const MAX_TENANTS: usize = 64;
/// Longest tenant.
pub const MAX_TENANT_LEN: usize = 64;
/// Tenants a condition admits that one template holds at once, unless `maxTenants` says.
pub const DEFAULT_ADMITTED: usize = 100;
/// The most `maxTenants` may say.
pub const MAX_ADMITTED: usize = 1000;

// An admitTenants expression is costed for tenants of this length.
const _: () = assert!(MAX_TENANT_LEN as u64 == expression::limits::TENANT);

/// Whether `text` is a tenant: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
pub fn valid_tenant(text: &str) -> bool {
    text.len() <= MAX_TENANT_LEN
        && text
            .as_bytes()
            .first()
            .is_some_and(u8::is_ascii_alphanumeric)
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn has_placeholder(text: &str) -> bool {
    PLACEHOLDERS.iter().any(|p| text.contains(p))
}

fn placeholders_in(text: &str) -> usize {
    PLACEHOLDERS.iter().map(|p| text.matches(p).count()).sum()
}

fn substitute(text: &str, tenant: &str) -> String {
    PLACEHOLDERS
        .iter()
        .fold(text.to_string(), |out, p| out.replace(p, tenant))
}

/// The issuer spec of one tenant of a template: the tenant in its URLs, neither list nor
/// condition.
pub fn for_tenant(spec: &IssuerSpec, tenant: &str) -> IssuerSpec {
    IssuerSpec {
        issuer: substitute(&spec.issuer, tenant),
        discovery: spec.discovery.as_deref().map(|d| substitute(d, tenant)),
        jwks_uri: spec.jwks_uri.as_deref().map(|j| substitute(j, tenant)),
        tenants: Vec::new(),
        admit_tenants: None,
        ..spec.clone()
    }
}

/// Whether the placeholder stands in the scheme or host of a URL (`scheme://host…`).
fn in_host(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    has_placeholder(scheme) || has_placeholder(authority)
}

/// The tenant of one expanded issuer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    pub name: String,
    /// Index of its template in the policy's `templates`.
    pub template: usize,
    /// Admitted by the template's condition (`admitTenants`), not listed in `tenants`.
    pub admitted: bool,
}

/// An issuer template as the compiled policy keeps it: how its issuers read, and which
/// tenants it admits.
#[derive(Clone, Debug)]
pub struct IssuerTemplate {
    /// Where the policy writes it, e.g. `spec.issuers[2]`.
    pub field: String,
    /// The issuer with its placeholder, as written.
    pub issuer: String,
    /// What the issuer reads before and after the placeholder.
    prefix: String,
    suffix: String,
    /// The tenants listed, each compiled to an issuer of the policy.
    pub tenants: Vec<String>,
    /// The tenants its condition admits (`admitTenants`), built when a token names them.
    pub admission: Option<Arc<Admission>>,
}

impl IssuerTemplate {
    /// The tenant an `iss` names, if it has this template's shape.
    pub fn tenant_of<'a>(&self, iss: &'a str) -> Option<&'a str> {
        iss.strip_prefix(self.prefix.as_str())?
            .strip_suffix(self.suffix.as_str())
            .filter(|tenant| valid_tenant(tenant))
    }

    /// Whether another template's issuers read the same (`{tenant}` and `{tenantid}` alike).
    pub fn same_shape(&self, other: &IssuerTemplate) -> bool {
        self.prefix == other.prefix && self.suffix == other.suffix
    }
}

/// `admitTenants`, checked: the expression compiled and costed, the bound.
#[derive(Clone, Debug)]
pub struct TenantCondition {
    pub expression: Arc<Expression>,
    pub message: Option<String>,
    pub max_tenants: usize,
}

/// An issuer spec expanded: one spec per tenant, or the spec as it is.
pub struct Expanded<'s> {
    pub template: Option<IssuerTemplate>,
    /// Each issuer to compile, with its tenant's name for a template.
    pub issuers: Vec<(Cow<'s, IssuerSpec>, Option<String>)>,
    /// The template's condition, when it admits tenants by one.
    pub condition: Option<TenantCondition>,
}

/// Expands the issuer at `field` into one issuer per tenant when it is a template, or says
/// what is wrong (`(field, message)`).
pub fn expand<'s>(
    field: &str,
    spec: &'s IssuerSpec,
) -> Result<Expanded<'s>, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let urls = [
        ("discovery", spec.discovery.as_deref()),
        ("jwksUri", spec.jwks_uri.as_deref()),
    ];
    if !has_placeholder(&spec.issuer) {
        if !spec.tenants.is_empty() {
            problems.push((
                format!("{field}.tenants"),
                "tenants apply only to an issuer template: write {tenant} where the tenant stands in issuer".into(),
            ));
        }
        if spec.admit_tenants.is_some() {
            problems.push((
                format!("{field}.admitTenants"),
                "admitTenants applies only to an issuer template: write {tenant} where the tenant stands in issuer".into(),
            ));
        }
        for (name, url) in urls {
            if url.is_some_and(has_placeholder) {
                problems.push((
                    format!("{field}.{name}"),
                    "holds a tenant placeholder while issuer does not: every tenant would have the same iss, so write {tenant} in issuer too".into(),
                ));
            }
        }
        return if problems.is_empty() {
            Ok(Expanded {
                template: None,
                issuers: vec![(Cow::Borrowed(spec), None)],
                condition: None,
            })
        } else {
            Err(problems)
        };
    }
    if placeholders_in(&spec.issuer) != 1 {
        problems.push((
            format!("{field}.issuer"),
            "an issuer template holds its placeholder ({tenant} or {tenantid}) exactly once".into(),
        ));
    }
    for (name, text) in [("issuer", Some(spec.issuer.as_str()))]
        .into_iter()
        .chain(urls)
    {
        if text.is_some_and(in_host) {
            problems.push((
                format!("{field}.{name}"),
                "the tenant placeholder may stand only in the path: a tenant must never choose the host keys are fetched from (list issuers of other hosts one by one)".into(),
            ));
        }
    }
    if spec.tenants.is_empty() && spec.admit_tenants.is_none() {
        problems.push((
            format!("{field}.tenants"),
            "an issuer template needs the tenants it accepts, e.g. tenants: [acme, globex], or a condition that admits them, e.g. admitTenants: {expression: \"tenant.startsWith('cust-')\"}; tokens of other tenants are refused".into(),
        ));
    }
    let condition = spec
        .admit_tenants
        .as_ref()
        .and_then(|admit| condition(field, spec, admit, &mut problems));
    if spec.tenants.len() > MAX_TENANTS {
        problems.push((
            format!("{field}.tenants"),
            format!(
                "{} tenants; at most {MAX_TENANTS} are allowed",
                spec.tenants.len()
            ),
        ));
    }
    for (i, tenant) in spec.tenants.iter().enumerate() {
        if !valid_tenant(tenant) {
            problems.push((
                format!("{field}.tenants[{i}]"),
                format!("{tenant:?} is not a tenant: letters, digits, '.', '_' and '-', starting with a letter or digit, at most {MAX_TENANT_LEN}"),
            ));
        } else if spec.tenants[..i].contains(tenant) {
            problems.push((
                format!("{field}.tenants[{i}]"),
                format!("{tenant:?} is listed twice"),
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let placeholder = PLACEHOLDERS
        .iter()
        .filter_map(|p| spec.issuer.find(p).map(|at| (at, p.len())))
        .min()
        .expect("invariant: the issuer holds a placeholder");
    let template = IssuerTemplate {
        field: field.to_string(),
        issuer: spec.issuer.clone(),
        prefix: spec.issuer[..placeholder.0].to_string(),
        suffix: spec.issuer[placeholder.0 + placeholder.1..].to_string(),
        tenants: spec.tenants.clone(),
        admission: None,
    };
    let issuers = spec
        .tenants
        .iter()
        .map(|tenant| (Cow::Owned(for_tenant(spec, tenant)), Some(tenant.clone())))
        .collect();
    Ok(Expanded {
        template: Some(template),
        issuers,
        condition,
    })
}

/// Checks `admitTenants`: its expression of `tenant`, its message, its bound, and that the
/// keys of its tenants are fetched (a condition over keys written in the policy would admit
/// tenants that all share them).
fn condition(
    field: &str,
    spec: &IssuerSpec,
    admit: &super::spec::TenantAdmissionSpec,
    problems: &mut Vec<(String, String)>,
) -> Option<TenantCondition> {
    let at = format!("{field}.admitTenants");
    let before = problems.len();
    let inline = [
        spec.jwks.as_ref().map(|_| "jwks"),
        (!spec.public_keys.is_empty()).then_some("publicKeys"),
        spec.keys_from.as_ref().map(|_| "keysFrom"),
        spec.shared_secret.as_ref().map(|_| "sharedSecret"),
    ];
    if let Some(source) = inline.into_iter().flatten().next() {
        problems.push((
            at.clone(),
            format!("admitTenants fetches each tenant's keys when a token first names it: use discovery or jwksUri, not {source} (keys written in the policy are every tenant's; list the tenants instead)"),
        ));
    }
    if let Some(message) = &admit.message
        && (message.len() > 256 || message.chars().any(char::is_control))
    {
        problems.push((
            format!("{at}.message"),
            "at most 256 characters, no control characters".into(),
        ));
    }
    let max_tenants = admit.max_tenants.map_or(DEFAULT_ADMITTED, |n| n as usize);
    if !(1..=MAX_ADMITTED).contains(&max_tenants) {
        problems.push((
            format!("{at}.maxTenants"),
            format!("{max_tenants} is not between 1 and {MAX_ADMITTED}"),
        ));
    }
    let expression = match expression::compile(&admit.expression, Kind::Tenant) {
        Ok(compiled) => Some(Arc::new(compiled)),
        Err(e) => {
            problems.push((format!("{at}.expression"), e.to_string()));
            None
        }
    };
    if problems.len() > before {
        return None;
    }
    Some(TenantCondition {
        expression: expression?,
        message: admit.message.clone(),
        max_tenants,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(issuer: &str, extra: serde_json::Value) -> IssuerSpec {
        let mut spec = serde_json::json!({"issuer": issuer, "audiences": ["api://orders"]});
        for (k, v) in extra.as_object().expect("object") {
            spec[k] = v.clone();
        }
        serde_json::from_value(spec).expect("issuer spec")
    }

    fn fields(problems: &[(String, String)]) -> Vec<&str> {
        problems.iter().map(|(f, _)| f.as_str()).collect()
    }

    #[test]
    fn each_tenant_expands_to_its_own_issuer_and_urls() {
        let spec = template(
            "https://kc.example.com/realms/{tenant}",
            serde_json::json!({"tenants": ["acme", "globex"], "jwksUri": "https://kc.example.com/realms/{tenant}/protocol/openid-connect/certs"}),
        );
        let expanded = expand("spec.issuers[0]", &spec).expect("expands");
        let out: Vec<(String, Option<String>, Option<String>)> = expanded
            .issuers
            .iter()
            .map(|(s, t)| (s.issuer.clone(), s.jwks_uri.clone(), t.clone()))
            .collect();
        assert_eq!(
            out,
            [
                (
                    "https://kc.example.com/realms/acme".to_string(),
                    Some(
                        "https://kc.example.com/realms/acme/protocol/openid-connect/certs"
                            .to_string()
                    ),
                    Some("acme".to_string())
                ),
                (
                    "https://kc.example.com/realms/globex".to_string(),
                    Some(
                        "https://kc.example.com/realms/globex/protocol/openid-connect/certs"
                            .to_string()
                    ),
                    Some("globex".to_string())
                ),
            ]
        );
        assert!(expanded.issuers.iter().all(|(s, _)| s.tenants.is_empty()));
        let template = expanded.template.expect("template");
        assert_eq!(
            template.tenant_of("https://kc.example.com/realms/initech"),
            Some("initech")
        );
        assert_eq!(template.tenant_of("https://kc.example.com/realms/"), None);
        assert_eq!(
            template.tenant_of("https://kc.example.com/realms/a/b"),
            None
        );
        assert_eq!(
            template.tenant_of("https://other.example.com/realms/acme"),
            None
        );
    }

    #[test]
    fn azure_spelling_and_a_suffix_after_the_placeholder() {
        let spec = template(
            "https://login.microsoftonline.com/{tenantid}/v2.0",
            serde_json::json!({"tenants": ["72f988bf-86f1-41af-91ab-2d7cd011db47"]}),
        );
        let expanded = expand("spec.issuers[1]", &spec).expect("expands");
        assert_eq!(
            expanded.issuers[0].0.issuer,
            "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"
        );
        let template = expanded.template.expect("template");
        assert_eq!(
            template.tenant_of(
                "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000001/v2.0"
            ),
            Some("00000000-0000-0000-0000-000000000001")
        );
        assert_eq!(
            template.tenant_of("https://login.microsoftonline.com/x/v1.0"),
            None
        );
    }

    #[test]
    fn a_plain_issuer_is_returned_as_it_is() {
        let spec = template("https://idp.example.com/", serde_json::json!({}));
        let expanded = expand("spec.issuers[0]", &spec).expect("plain");
        assert!(expanded.template.is_none());
        assert!(matches!(
            expanded.issuers.as_slice(),
            [(Cow::Borrowed(_), None)]
        ));
    }

    #[test]
    fn templates_that_would_let_a_tenant_choose_too_much_are_refused() {
        let too_many: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
        let cases = [
            (
                template(
                    "https://kc.example.com/realms/{tenant}",
                    serde_json::json!({}),
                ),
                vec!["spec.issuers[0].tenants"],
            ),
            (
                template(
                    "https://idp.example.com/",
                    serde_json::json!({"tenants": ["acme"]}),
                ),
                vec!["spec.issuers[0].tenants"],
            ),
            (
                template(
                    "https://idp.example.com/",
                    serde_json::json!({"jwksUri": "https://idp.example.com/{tenant}/keys"}),
                ),
                vec!["spec.issuers[0].jwksUri"],
            ),
            (
                template(
                    "https://{tenant}.auth.example.com/",
                    serde_json::json!({"tenants": ["acme"]}),
                ),
                vec!["spec.issuers[0].issuer"],
            ),
            (
                template(
                    "https://kc.example.com/realms/{tenant}",
                    serde_json::json!({"tenants": ["acme"], "discovery": "https://kc-{tenantid}.example.com/.well-known/openid-configuration"}),
                ),
                vec!["spec.issuers[0].discovery"],
            ),
            (
                template(
                    "https://kc.example.com/{tenant}/{tenant}",
                    serde_json::json!({"tenants": ["acme"]}),
                ),
                vec!["spec.issuers[0].issuer"],
            ),
            (
                template(
                    "https://kc.example.com/realms/{tenant}",
                    serde_json::json!({"tenants": ["..", "a/b", "acme", "acme", "", "-x", "a?b=c", "x".repeat(65)]}),
                ),
                vec![
                    "spec.issuers[0].tenants[0]",
                    "spec.issuers[0].tenants[1]",
                    "spec.issuers[0].tenants[3]",
                    "spec.issuers[0].tenants[4]",
                    "spec.issuers[0].tenants[5]",
                    "spec.issuers[0].tenants[6]",
                    "spec.issuers[0].tenants[7]",
                ],
            ),
            (
                template(
                    "https://kc.example.com/realms/{tenant}",
                    serde_json::json!({"tenants": too_many}),
                ),
                vec!["spec.issuers[0].tenants"],
            ),
        ];
        for (spec, want) in cases {
            let problems = match expand("spec.issuers[0]", &spec) {
                Ok(_) => panic!("{spec:?} expanded"),
                Err(problems) => problems,
            };
            assert_eq!(fields(&problems), want, "{problems:?}");
        }
    }

    #[test]
    fn tenant_names_are_path_safe() {
        for ok in [
            "acme",
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "a.b_c-d",
            "A1",
        ] {
            assert!(valid_tenant(ok), "{ok}");
        }
        for bad in [
            "", ".", "..", ".acme", "_x", "a/b", "a%2Fb", "a b", "a@b", "a:b", "ä",
        ] {
            assert!(!valid_tenant(bad), "{bad}");
        }
        assert!(valid_tenant(&"a".repeat(64)));
        assert!(!valid_tenant(&"a".repeat(65)));
    }
}

//! `when` conditions and `forward.headers`: CEL expressions checked and costed here, so a
//! policy with an expression that cannot work never loads.

use std::sync::Arc;

use super::{
    Checker, ComputedHeader, Condition, Forward, RESERVED_HEADERS, Rule, TokenLocation,
    valid_header_name,
};
use crate::expression::{self, Environment, Kind, Reads};
use crate::policy::spec::{ComputedHeaderSpec, ConditionSpec};

/// At most this many conditions in one `when`, and computed headers.
pub const MAX_EXPRESSIONS: usize = 16;

/// Compiles the conditions at `field` (`spec.when`, `spec.rules[2].when`). `anonymous`: the
/// requests they judge may carry no token, so they cannot read `claims`.
pub(super) fn conditions(
    c: &mut Checker,
    field: &str,
    specs: &[ConditionSpec],
    anonymous: bool,
) -> Vec<Condition> {
    c.at_most(field, specs, MAX_EXPRESSIONS);
    let mut out = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let at = format!("{field}[{i}]");
        if let Some(message) = &spec.message
            && (message.len() > 256 || message.chars().any(char::is_control))
        {
            c.invalid(
                format!("{at}.message"),
                "at most 256 characters, no control characters",
            );
        }
        let status = spec.status.unwrap_or(403);
        if !(400..=499).contains(&status) {
            c.invalid(
                format!("{at}.status"),
                format!("{status} is not a 4xx status"),
            );
        }
        match expression::compile(&spec.expression, Kind::Condition) {
            Ok(compiled) => {
                if anonymous && compiled.reads.claims() {
                    let whose = if field == "spec.when" {
                        "this policy has allowAnonymous rules, whose requests carry no token: move the condition to the rules that need a token"
                    } else {
                        "an allowAnonymous rule's requests carry no token"
                    };
                    c.invalid(
                        format!("{at}.expression"),
                        format!("reads claims, but {whose}"),
                    );
                }
                out.push(Condition {
                    field: at,
                    expression: Arc::new(compiled),
                    message: spec.message.clone(),
                    status,
                });
            }
            Err(e) => c.invalid(format!("{at}.expression"), e.to_string()),
        }
    }
    out
}

/// Compiles `forward.headers`: names as the other forwarded headers, values as expressions.
pub(super) fn headers(
    c: &mut Checker,
    specs: &[ComputedHeaderSpec],
    forward: &Forward,
    token: &TokenLocation,
) -> Vec<ComputedHeader> {
    c.at_most("spec.forward.headers", specs, MAX_EXPRESSIONS);
    let mut out: Vec<ComputedHeader> = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let at = format!("spec.forward.headers[{i}]");
        let name = spec.name.to_ascii_lowercase();
        let taken = forward
            .claims_to_headers
            .iter()
            .map(|(_, h)| h.as_str())
            .chain(forward.payload_header.as_deref())
            .chain(out.iter().map(|h| h.name.as_str()))
            .any(|h| h == name);
        if !valid_header_name(&name) {
            c.invalid(
                format!("{at}.name"),
                format!("{:?} is not a valid header name", spec.name),
            );
        } else if RESERVED_HEADERS.contains(&name.as_str()) {
            c.invalid(
                format!("{at}.name"),
                format!("{} cannot be set by a policy", spec.name),
            );
        } else if name == token.header {
            c.invalid(
                format!("{at}.name"),
                format!(
                    "{} is where the token is read; pick another header",
                    spec.name
                ),
            );
        } else if taken {
            c.invalid(format!("{at}.name"), format!("{} is set twice", spec.name));
        }
        match expression::compile(&spec.expression, Kind::Header) {
            Ok(compiled) => out.push(ComputedHeader {
                name,
                expression: Arc::new(compiled),
            }),
            Err(e) => c.invalid(format!("{at}.expression"), e.to_string()),
        }
    }
    out
}

/// The environment of a policy's expressions, if it has any.
pub(super) fn environment(
    when: &[Condition],
    rules: &[Rule],
    forward: &Forward,
) -> Option<super::Cel> {
    let all: Vec<&expression::Expression> = when
        .iter()
        .chain(rules.iter().flat_map(|r| &r.when))
        .map(|c| &*c.expression)
        .chain(forward.computed.iter().map(|h| &*h.expression))
        .collect();
    if all.is_empty() {
        return None;
    }
    let mut reads = Reads::default();
    for e in &all {
        reads.merge(&e.reads);
    }
    Some(super::Cel {
        environment: Arc::new(Environment::new(all.iter().copied())),
        reads,
    })
}

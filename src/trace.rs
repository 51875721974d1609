//! The record of every check one decision went through: what `tollgate explain` prints, what
//! the opt-in debug log line carries, and what the opt-in `x-tollgate-trace` header returns.
//!
//! Off by default, and then free: a step's text is produced by a closure that only runs when
//! the trace is on. Never holds the token or its signature; the decoded header and claims are
//! kept because they are what the reader needs to see (the token's holder sees them anyway).

use std::fmt::Write as _;

use serde::Serialize;

use crate::decision::Reason;
use crate::jose::Claims;

/// The `tracing` target of the per-denial debug line (`RUST_LOG=tollgate::trace=debug`).
pub const LOG_TARGET: &str = "tollgate::trace";
/// The response header that carries the trace when the policy's `debug.traceHeader` asks.
pub const RESPONSE_HEADER: &str = "x-tollgate-trace";
/// Upper bound of the header form.
const MAX_HEADER_BYTES: usize = 4096;

/// How one check went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    /// Context, not a check (which policy, where the token was found).
    Info,
}

impl Outcome {
    fn mark(self) -> &'static str {
        match self {
            Outcome::Pass => "✓",
            Outcome::Fail => "✗",
            Outcome::Info => "·",
        }
    }

    fn ascii(self) -> &'static str {
        match self {
            Outcome::Pass => "ok",
            Outcome::Fail => "FAIL",
            Outcome::Info => "-",
        }
    }
}

/// One check.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    pub check: String,
    pub outcome: Outcome,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// What to change, naming the policy's settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The checks of one decision, in order.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Trace {
    #[serde(skip)]
    on: bool,
    /// Whether the trace may be returned to the client (the policy's trace header matched).
    #[serde(skip)]
    pub expose: bool,
    /// The decoded JOSE header of the token (of the outer JWE for encrypted tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<Claims>,
    /// The header of the signed token inside an encrypted one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inner_header: Option<Claims>,
    /// The (not necessarily verified) claims.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<Claims>,
    pub steps: Vec<Step>,
}

impl Trace {
    /// A trace that records nothing.
    pub fn off() -> Self {
        Trace::default()
    }

    /// A trace that records every step.
    pub fn on() -> Self {
        Trace {
            on: true,
            ..Trace::default()
        }
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    fn push(&mut self, check: &str, outcome: Outcome, detail: String) -> &mut Step {
        self.steps.push(Step {
            check: check.to_string(),
            outcome,
            detail,
            reason: None,
            fix: None,
        });
        let last = self.steps.len() - 1;
        &mut self.steps[last]
    }

    pub fn pass(&mut self, check: &str, detail: impl FnOnce() -> String) {
        if self.on {
            self.push(check, Outcome::Pass, detail());
        }
    }

    pub fn info(&mut self, check: &str, detail: impl FnOnce() -> String) {
        if self.on {
            self.push(check, Outcome::Info, detail());
        }
    }

    pub fn fail(
        &mut self,
        check: &str,
        reason: Reason,
        detail: impl FnOnce() -> String,
        fix: impl FnOnce() -> Option<String>,
    ) {
        if self.on {
            let fix = fix();
            let step = self.push(check, Outcome::Fail, detail());
            step.reason = Some(reason.as_str());
            step.fix = fix;
        }
    }

    /// Records the decoded header and claims of the token being judged.
    pub fn token(&mut self, header: impl FnOnce() -> Claims, claims: impl FnOnce() -> Claims) {
        if self.on {
            let header = header();
            if self.header.is_some() {
                self.inner_header = Some(header);
            } else {
                self.header = Some(header);
            }
            self.claims = Some(claims());
        }
    }

    /// Records decoded claims (an introspection answer, a decrypted unsigned token).
    pub fn claims(&mut self, claims: impl FnOnce() -> Claims) {
        if self.on {
            self.claims = Some(claims());
        }
    }

    /// The first failed step.
    pub fn failure(&self) -> Option<&Step> {
        self.steps.iter().find(|s| s.outcome == Outcome::Fail)
    }

    /// Human-readable lines: `✓ check  detail`, with the reason and fix under failures.
    pub fn to_text(&self) -> String {
        let width = self
            .steps
            .iter()
            .map(|s| s.check.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for step in &self.steps {
            let _ = writeln!(
                out,
                "{} {:<width$}  {}",
                step.outcome.mark(),
                step.check,
                step.detail
            );
            let indent = " ".repeat(width + 4);
            if let Some(reason) = step.reason {
                let _ = writeln!(out, "{indent}reason: {reason}");
            }
            if let Some(fix) = &step.fix {
                let _ = writeln!(out, "{indent}fix:    {fix}");
            }
        }
        out
    }

    /// One line of visible ASCII for a response header, at most 4 KiB.
    pub fn to_header_value(&self) -> String {
        let mut out = String::new();
        for step in &self.steps {
            if !out.is_empty() {
                out.push_str("; ");
            }
            let _ = write!(
                out,
                "{} {}: {}",
                step.check,
                step.outcome.ascii(),
                step.detail
            );
            if let Some(reason) = step.reason {
                let _ = write!(out, " [{reason}]");
            }
            if let Some(fix) = &step.fix {
                let _ = write!(out, " fix: {fix}");
            }
        }
        let mut ascii: String = out
            .chars()
            .map(|c| match c {
                '…' => '.',
                '—' | '–' => '-',
                c if (' '..='~').contains(&c) => c,
                _ => '?',
            })
            .collect();
        if ascii.len() > MAX_HEADER_BYTES {
            ascii.truncate(MAX_HEADER_BYTES - 3);
            ascii.push_str("...");
        }
        ascii
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_off_trace_runs_no_closure() {
        let mut trace = Trace::off();
        trace.pass("x", || unreachable!("not evaluated"));
        trace.fail(
            "x",
            Reason::TokenExpired,
            || unreachable!("not evaluated"),
            || unreachable!("not evaluated"),
        );
        assert!(trace.steps.is_empty());
    }

    #[test]
    fn renders_text_and_a_bounded_ascii_header() {
        let mut trace = Trace::on();
        trace.pass("signature", || "verified with key \"k1\" (RSA-2048)".into());
        trace.fail(
            "aud",
            Reason::AudienceMismatch,
            || "audience [\"api://other\"] is not accepted here".into(),
            || Some("request the token with scope api://orders/.default".into()),
        );
        let text = trace.to_text();
        assert_eq!(
            text,
            "✓ signature  verified with key \"k1\" (RSA-2048)\n\
             ✗ aud        audience [\"api://other\"] is not accepted here\n\
             \x20            reason: audience_mismatch\n\
             \x20            fix:    request the token with scope api://orders/.default\n"
        );
        assert_eq!(
            trace.to_header_value(),
            "signature ok: verified with key \"k1\" (RSA-2048); aud FAIL: audience [\"api://other\"] is not accepted here [audience_mismatch] fix: request the token with scope api://orders/.default"
        );
        assert_eq!(trace.failure().map(|s| s.check.as_str()), Some("aud"));
        for _ in 0..200 {
            trace.pass("filler", || "é".repeat(40));
        }
        let header = trace.to_header_value();
        assert!(header.len() <= MAX_HEADER_BYTES);
        assert!(header.bytes().all(|b| (b' '..=b'~').contains(&b)));
    }
}

//! Logging: the subscriber set-up and the one structured line every decision produces.
//!
//! A decision line carries the policy, result, reason code, a description and (for denials) a
//! hint naming the setting to change, plus a fingerprint of the token. Never the token itself.
//! Denial lines are limited per second (`--denial-log-limit`); the next line logged says how
//! many were left out.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tracing_subscriber::EnvFilter;

use crate::decision::{Allow, Decision, Deny};
use crate::trace;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. `RUST_LOG` overrides `default_level`.
pub fn init(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// Denial lines per second, at most (the rest are counted and reported with the next line).
/// A flood of bad tokens must not turn into a flood of log writes; metrics count every denial.
pub const DEFAULT_DENIAL_LOG_LIMIT: u64 = 100;

struct LogLimiter {
    limit: AtomicU64,
    /// Seconds since `START` of the current window.
    window: AtomicU64,
    in_window: AtomicU64,
    suppressed: AtomicU64,
}

static START: OnceLock<Instant> = OnceLock::new();

static DENIAL_LINES: LogLimiter = LogLimiter::new(DEFAULT_DENIAL_LOG_LIMIT);

/// Refused TLS handshakes: a scanner or a misconfigured client must not flood the log either.
static CONNECTION_LINES: LogLimiter = LogLimiter::new(10);

/// `Some(lines suppressed since the last one)` if a connection-level line (a refused TLS
/// handshake) may be logged now: at most 10 per second.
pub fn admit_connection_line() -> Option<u64> {
    CONNECTION_LINES.admit()
}

/// Sets the most denial lines logged per second (0: every denial).
pub fn set_denial_log_limit(lines_per_second: u64) {
    DENIAL_LINES
        .limit
        .store(lines_per_second, Ordering::Relaxed);
}

impl LogLimiter {
    const fn new(lines_per_second: u64) -> Self {
        LogLimiter {
            limit: AtomicU64::new(lines_per_second),
            window: AtomicU64::new(0),
            in_window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines suppressed since the last one logged)` if this line may be logged.
    fn admit(&self) -> Option<u64> {
        let limit = self.limit.load(Ordering::Relaxed);
        if limit == 0 {
            return Some(0);
        }
        let second = START.get_or_init(Instant::now).elapsed().as_secs();
        let window = self.window.load(Ordering::Relaxed);
        if second != window
            && self
                .window
                .compare_exchange(window, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.in_window.store(0, Ordering::Relaxed);
        }
        if self.in_window.fetch_add(1, Ordering::Relaxed) < limit {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// What the transport knows about the request, for the log line.
#[derive(Clone, Debug, Default)]
pub struct RequestInfo<'a> {
    pub transport: &'static str,
    pub request_id: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    /// Path without the query (which may hold a token).
    pub path: &'a str,
    /// The HTTPRoute (and rule) the gateway named, when it did (Envoy Gateway's route metadata).
    pub route: Option<String>,
}

/// Logs one decision: denials at info, allows at debug; with `RUST_LOG=tollgate::trace=debug`
/// every denial also gets a line with the trace of its checks.
pub fn log_decision(info: &RequestInfo<'_>, decision: &Decision) {
    // The path as judged; as received (without the query, which may hold a token) when it
    // could not be read.
    let path = decision
        .path()
        .unwrap_or_else(|| info.path.split('?').next().unwrap_or(""));
    let denied = match decision {
        Decision::Deny(deny) => Some(deny),
        Decision::Allow(allow) => allow.dry_run.as_deref(),
    };
    if let (Some(deny), Some(steps)) = (denied, decision.trace()) {
        tracing::debug!(
            target: trace::LOG_TARGET,
            request_id = info.request_id,
            policy = deny.policy.as_deref().unwrap_or(""),
            reason = deny.reason.as_str(),
            token = deny.token_id.as_deref().unwrap_or(""),
            trace = %steps.to_header_value(),
            "denial trace"
        );
    }
    match decision {
        Decision::Allow(allow) => tracing::debug!(
            transport = info.transport,
            request_id = info.request_id,
            method = info.method,
            host = info.host,
            path,
            route = info.route.as_deref().unwrap_or(""),
            policy = allow.policy.as_deref().unwrap_or(""),
            result = "allow",
            reason = allow.reason.as_str(),
            issuer = allow.issuer.as_deref().unwrap_or(""),
            "allowed"
        ),
        Decision::Deny(deny) if deny.is_document() => tracing::debug!(
            transport = info.transport,
            request_id = info.request_id,
            method = info.method,
            host = info.host,
            path,
            route = info.route.as_deref().unwrap_or(""),
            policy = deny.policy.as_deref().unwrap_or(""),
            result = "answer",
            reason = deny.reason.as_str(),
            "answered with a protected resource metadata document"
        ),
        Decision::Deny(deny) => {
            if !tracing::enabled!(tracing::Level::INFO) {
                return;
            }
            let Some(suppressed) = DENIAL_LINES.admit() else {
                return;
            };
            tracing::info!(
                transport = info.transport,
                request_id = info.request_id,
                method = info.method,
                host = info.host,
                path,
                route = info.route.as_deref().unwrap_or(""),
                policy = deny.policy.as_deref().unwrap_or(""),
                result = "deny",
                status = deny.status,
                reason = deny.reason.as_str(),
                description = %deny.description,
                hint = deny.hint.as_deref().unwrap_or(""),
                token = deny.token_id.as_deref().unwrap_or(""),
                suppressed_before = suppressed,
                "denied"
            )
        }
    }
}

/// Logs what a dry-run policy would have denied (at info, like a denial): the request is
/// allowed, and the line says with which status, reason, description and hint it would not
/// have been. `suppressed` counts the lines of this policy left out since its last one
/// (`--dry-run-log-limit`).
pub fn log_would_deny(info: &RequestInfo<'_>, allow: &Allow, deny: &Deny, suppressed: u64) {
    let path = allow
        .path
        .as_deref()
        .unwrap_or_else(|| info.path.split('?').next().unwrap_or(""));
    tracing::info!(
        transport = info.transport,
        request_id = info.request_id,
        method = info.method,
        host = info.host,
        path,
        route = info.route.as_deref().unwrap_or(""),
        policy = allow.policy.as_deref().unwrap_or(""),
        result = "allow",
        dry_run = true,
        status = deny.status,
        reason = deny.reason.as_str(),
        description = %deny.description,
        hint = deny.hint.as_deref().unwrap_or(""),
        token = deny.token_id.as_deref().unwrap_or(""),
        suppressed_before = suppressed,
        "dry run: would deny"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(limit: u64) -> LogLimiter {
        LogLimiter {
            limit: AtomicU64::new(limit),
            window: AtomicU64::new(START.get_or_init(Instant::now).elapsed().as_secs()),
            in_window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    #[test]
    fn denial_lines_are_limited_and_the_rest_counted() {
        let l = limiter(3);
        let admitted: Vec<Option<u64>> = (0..5).map(|_| l.admit()).collect();
        // Unless the second turned meanwhile, the first three pass and two are suppressed.
        if l.window.load(Ordering::Relaxed) == START.get_or_init(Instant::now).elapsed().as_secs() {
            assert_eq!(admitted, [Some(0), Some(0), Some(0), None, None]);
            assert_eq!(l.suppressed.load(Ordering::Relaxed), 2);
        }
        // A new window admits again, and reports what was left out.
        l.window.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(l.admit(), Some(2));
        // No limit: every line.
        let all = limiter(0);
        assert!((0..1000).all(|_| all.admit() == Some(0)));
    }
}

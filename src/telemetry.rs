//! Logging: the subscriber set-up and the one structured line every decision produces.
//!
//! A decision line carries the policy, result, reason code, a description and (for denials) a
//! hint naming the setting to change, plus a fingerprint of the token. Never the token itself.

use tracing_subscriber::EnvFilter;

use crate::decision::Decision;
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

/// What the transport knows about the request, for the log line.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestInfo<'a> {
    pub transport: &'static str,
    pub request_id: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    /// Path without the query (which may hold a token).
    pub path: &'a str,
}

/// Logs one decision: denials at info, allows at debug; with `RUST_LOG=tollgate::trace=debug`
/// every denial also gets a line with the trace of its checks.
pub fn log_decision(info: &RequestInfo<'_>, decision: &Decision) {
    let path = info.path.split('?').next().unwrap_or("");
    if let (Decision::Deny(deny), Some(steps)) = (decision, decision.trace()) {
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
            policy = allow.policy.as_deref().unwrap_or(""),
            result = "allow",
            reason = allow.reason.as_str(),
            issuer = allow.issuer.as_deref().unwrap_or(""),
            "allowed"
        ),
        Decision::Deny(deny) => tracing::info!(
            transport = info.transport,
            request_id = info.request_id,
            method = info.method,
            host = info.host,
            path,
            policy = deny.policy.as_deref().unwrap_or(""),
            result = "deny",
            status = deny.status,
            reason = deny.reason.as_str(),
            description = %deny.description,
            hint = deny.hint.as_deref().unwrap_or(""),
            token = deny.token_id.as_deref().unwrap_or(""),
            "denied"
        ),
    }
}

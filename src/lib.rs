//! tollgate: OAuth2 / OpenID Connect access-token validation for Envoy's external
//! authorization API.
//!
//! ```text
//! policy files ─► policy::files ─► policy::compile ─► policy::Snapshot ─► SharedSnapshot (ArcSwap)
//! JwtPolicy, HTTPRoute, Gateway ─► controller ─┘  │ policy::gateway              │
//!                                   (attach route entries to targetRefs)       │
//!                               jwks::KeySources (shared,                      │ load()
//!                               self-refreshing key sets)                      ▼
//! Envoy ── gRPC Check ──► authz ──► engine::check ──► validate (pure) ──► Decision
//! nginx, Traefik (/auth), ──► http ──┘                                  ├─► metrics, telemetry
//! Envoy HTTP ext_authz                                                  ├─► dry_run (mode: dryRun)
//!                                                                       └─► CheckResponse, HTTP answer
//! ```
//!
//! Layering: `jose`, `claims`, `validate`, `engine` and `policy` know neither protobuf nor
//! HTTP servers; `authz` is the only server-side module that knows protobuf, `http` the only
//! one that serves HTTP authorization.

pub mod admin;
pub mod apikeys;
pub mod authz;
pub mod azure;
pub mod claims;
pub mod cli;
pub mod client;
pub mod client_cert;
pub mod controller;
pub mod decision;
pub mod decision_log;
pub mod demo;
pub mod dpop;
pub mod dry_run;
pub mod engine;
pub mod explain;
pub mod expression;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod http;
pub mod introspect;
pub mod jose;
pub mod jwe;
pub mod jwks;
pub mod local_issuer;
pub mod metrics;
pub mod otel;
pub mod policy;
pub mod priority;
pub mod proto;
pub mod serve;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod validate;
pub mod verified;

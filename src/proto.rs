//! Generated Envoy external-authorization v3 types (from `proto/`, compiled by `build.rs`).
//!
//! Only `authz` (server) and `client` (the `tollgate authorize` command) use these; the decision
//! engine never sees protobuf.

#![allow(clippy::all, missing_docs, rustdoc::all)]

include!(concat!(env!("OUT_DIR"), "/envoy_api.rs"));

pub use envoy::config::core::v3 as core;
pub use envoy::service::auth::v3 as auth;
pub use envoy::r#type::v3 as http_type;

//! Generated Envoy external-authorization v3 types (from `proto/`, compiled by `build.rs`).
//!
//! Only `authz` (server) and `client` (the `tollgate authorize` command) use these; the decision
//! engine never sees protobuf.

#![allow(clippy::all, missing_docs, rustdoc::all)]

include!(concat!(env!("OUT_DIR"), "/envoy_api.rs"));

pub use envoy::config::core::v3 as core;
/// The external-authorization messages and client, and the server `build.rs` declares (its
/// `Check` answers with [`crate::authz::Answer`]).
pub mod auth {
    pub use super::envoy::service::auth::v3::*;
    include!(concat!(
        env!("OUT_DIR"),
        "/envoy.service.auth.v3.Authorization.rs"
    ));
}
pub use envoy::r#type::v3 as http_type;

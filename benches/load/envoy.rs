//! Envoy configurations for the side-by-side runs: one worker, a `direct_response` route (no
//! upstream is measured), and in front of it nothing, `jwt_authn`, or `ext_authz` to a server.

use std::net::SocketAddr;

use serde_json::Value;

use crate::workload::AUDIENCE;

/// What sits in front of the direct response.
pub enum Auth<'a> {
    None,
    /// Envoy's own JWT filter with the same keys, for tokens of `issuer`; `cache`: its JWT cache
    /// (1,000 tokens) on.
    JwtAuthn {
        jwks: &'a Value,
        issuer: &'a str,
        cache: bool,
    },
    /// ext_authz over gRPC to `server`; `allowed_headers`: send only these request headers.
    ExtAuthz {
        server: SocketAddr,
        allowed_headers: Option<&'a [&'a str]>,
    },
}

/// Paths under `/public` skip ext_authz (`ExtAuthzPerRoute.disabled`), as anonymous routes should.
pub const PUBLIC_PATH: &str = "/public/health";

pub fn config(listen: SocketAddr, admin: SocketAddr, auth: &Auth<'_>) -> String {
    let filter = match auth {
        Auth::None => String::new(),
        Auth::JwtAuthn {
            jwks,
            issuer,
            cache,
        } => {
            let inline = serde_json::to_string(&jwks.to_string()).unwrap_or_default();
            let cache = if *cache {
                "\n                  jwt_cache_config: {jwt_cache_size: 1000}"
            } else {
                ""
            };
            format!(
                r#"
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                bench:
                  issuer: "{issuer}"
                  audiences: ["{AUDIENCE}"]
                  local_jwks: {{inline_string: {inline}}}
                  forward: true{cache}
              rules:
              - match: {{prefix: "/public"}}
              - match: {{prefix: "/"}}
                requires: {{provider_name: bench}}"#
            )
        }
        Auth::ExtAuthz {
            allowed_headers, ..
        } => {
            let allowed = allowed_headers.map_or(String::new(), |names| {
                let patterns: Vec<String> = names
                    .iter()
                    .map(|n| format!("{{exact: \"{n}\"}}"))
                    .collect();
                format!(
                    "\n              allowed_headers: {{patterns: [{}]}}",
                    patterns.join(", ")
                )
            });
            format!(
                r#"
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              grpc_service:
                envoy_grpc: {{cluster_name: authz}}
                timeout: 2s{allowed}"#
            )
        }
    };
    let per_route_public = match auth {
        Auth::ExtAuthz { .. } => {
            r#"
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    disabled: true"#
        }
        _ => "",
    };
    let cluster = match auth {
        Auth::ExtAuthz { server, .. } => format!(
            r#"
  clusters:
  - name: authz
    type: STATIC
    connect_timeout: 1s
    # The default 1,024 concurrent requests overflow (and fail closed, 403) once an overloaded
    # open-loop run queues more than that; size it to the load, as in production.
    circuit_breakers:
      thresholds: [{{max_pending_requests: 100000, max_requests: 100000}}]
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: authz
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}]}}]"#,
            server.ip(),
            server.port()
        ),
        _ => String::new(),
    };
    format!(
        r#"
admin:
  address: {{socket_address: {{address: {}, port_value: {}}}}}
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: {}, port_value: {}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/public"}}
                direct_response: {{status: 200, body: {{inline_string: "ok"}}}}{per_route_public}
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: "ok"}}}}
          http_filters:{filter}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router{cluster}
"#,
        admin.ip(),
        admin.port(),
        listen.ip(),
        listen.port(),
    )
}

//! Black-box tests over real sockets: the `tollgate` binary, a local identity provider, and the
//! real peers (Envoy). One test binary, so the suite links once.

mod api_keys;
mod authorino_peer;
mod cel;
mod cli;
mod client_cert;
mod cluster;
mod control_plane;
mod crd;
mod deploy;
mod dpop;
mod drain;
mod dry_run;
mod encrypted;
mod envoy;
mod envoy_gateway;
mod envoy_http;
mod envoy_http_client_cert;
mod examples_schemas;
mod explain;
mod gateway_api;
mod hostile;
mod image;
mod install;
mod introspection;
mod key_material;
mod mtls;
mod nginx;
mod otel;
mod paths;
mod replicas;
mod resource_metadata;
mod serve;
mod support;
mod traefik;
mod traefik_mtls;

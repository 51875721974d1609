//! Black-box tests over real sockets: the `tollgate` binary, a local identity provider, and the
//! real peers (Envoy). One test binary, so the suite links once.

mod apiserver;
mod cli;
mod deploy;
mod drain;
mod encrypted;
mod envoy;
mod explain;
mod hostile;
mod image;
mod introspection;
mod kubernetes;
mod mtls;
mod nginx;
mod paths;
mod serve;
mod support;
mod traefik;

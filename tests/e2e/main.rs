//! Black-box tests over real sockets: the `tollgate` binary, a local identity provider, and the
//! real peers (Envoy). One test binary, so the suite links once.

mod cli;
mod envoy;
mod serve;
mod support;

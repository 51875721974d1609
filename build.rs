//! Compiles the Envoy external-authorization API in `proto/` with protox (pure Rust, no `protoc`).
//!
//! The messages and the client come from the protos. The server is declared here instead, so
//! that its `Check` answers with [`tollgate::authz::Answer`]: a built `CheckResponse`, or an
//! allow already encoded on the request path (the same bytes, without building the message).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["envoy/service/auth/v3/external_auth.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .include_file("envoy_api.rs")
        .compile_fds(fds)?;
    let check = tonic_build::manual::Method::builder()
        .name("check")
        .route_name("Check")
        .comment("Judges one request from its attributes; status OK allows it.")
        .input_type("crate::proto::auth::CheckRequest")
        .output_type("crate::authz::Answer")
        .codec_path("tonic_prost::ProstCodec")
        .build();
    let service = tonic_build::manual::Service::builder()
        .name("Authorization")
        .package("envoy.service.auth.v3")
        .comment("Decides whether a request may proceed.")
        .method(check)
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .compile(&[service]);
    Ok(())
}

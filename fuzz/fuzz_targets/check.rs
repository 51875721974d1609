//! A protobuf CheckRequest as Envoy sends it (host, path, method, headers, context extensions), judged against the harness's reference model of the fuzz policy: a wrong allow or a wrong deny is a finding.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = harness::check(data);
});

//! A protobuf CheckRequest as Envoy sends it, judged by the fuzz policy. Allowed only if it carries a token signed by the fuzzing key.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = harness::check(data);
});

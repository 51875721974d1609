//! A compact JWS or JWE as the bearer token of a protected request: parsed, decrypted when encrypted, verified and judged. Allowed only if signed by the fuzzing key.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = harness::token(data);
});

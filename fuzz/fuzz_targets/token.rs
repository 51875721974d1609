//! A compact JWS or JWE as the bearer token of four requests (policy-wide claims, a method rule, HEAD under a GET rule, a dotted claim), judged against the harness's reference model: a wrong allow or a wrong deny is a finding.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = harness::token(data);
});

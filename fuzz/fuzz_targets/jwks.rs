//! A JWKS document: only keys within the limits (RSA >= 2048 bits, points on the curve, no HMAC) are kept.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::jwks(data);
});

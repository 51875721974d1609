//! A compact JWE decrypted with a fixed AES key, against the harness's own decryption: the same plaintext, the same refusals, and one uniform error after the key was chosen.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = harness::jwe(data);
});

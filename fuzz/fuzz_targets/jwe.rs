//! A compact JWE decrypted with a fixed AES key: parsing, key unwrapping and authenticated decryption.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::jwe(data);
});

//! Policy file content (YAML or JSON): parsed, compiled offline, routed and judged without a token.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::policy(data);
});

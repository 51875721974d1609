//! Policy file content (YAML or JSON): parsed, compiled offline, routed and judged without a token; an allow needs an allowAnonymous rule that covers the request, on a path the harness's reader accepts.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::policy(data);
});

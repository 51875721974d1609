//! Micro-benchmarks of each stage of a check, with criterion: extract the token → decode the
//! JWS → route and verify the signature → claims → build Envoy's answer; then the whole engine
//! with and without the verified-token cache, and `decide` on a `CheckRequest` as the gRPC
//! service runs it.
//!
//! `cargo bench --bench stages`; under `cargo test` each runs once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use tollgate::authz::{AuthzService, to_answer, to_check_response};
use tollgate::client::{Probe, check_request};
use tollgate::engine::{self, Headers, Request, request};
use tollgate::jwks::KeySources;
use tollgate::local_issuer::{SigningKey, jwks, now_secs};
use tollgate::metrics::Metrics;
use tollgate::policy::{
    CompileContext, DefaultAction, FileSecrets, JwtPolicySpec, SharedSnapshot, Snapshot, compile,
};
use tollgate::trace::Trace;
use tollgate::verified::{CacheLimits, TokenCache};
use tollgate::{jose, validate};

const ISSUER: &str = "https://idp.bench.example/";
const AUDIENCE: &str = "api://bench";

fn spec(key: &SigningKey) -> JwtPolicySpec {
    serde_json::from_value(json!({
        "match": {"hosts": ["api.bench.example"]},
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": jwks(&[key])}],
        "requiredClaims": [{"name": "scope", "separator": " ", "values": ["orders.read"]}],
        "forward": {"claimsToHeaders": [{"claim": "sub", "header": "x-user-id"},
                                        {"claim": "email", "header": "x-user-email"}]},
    }))
    .expect("spec")
}

/// `spec` with what platform teams write in CEL: the tenant header must be one of the token's
/// tenants, a role OR a scope, and a header computed from two claims (docs/cel.md).
fn cel_spec(key: &SigningKey) -> JwtPolicySpec {
    let mut spec = spec(key);
    let extra: JwtPolicySpec = serde_json::from_value(json!({
        "when": [{"expression": "request.headers['x-tenant'] in claims.tenants && ('admin' in claims.roles || 'orders.write' in claims.scope.split(' '))"}],
        "forward": {"headers": [{"name": "x-tenant-user", "expression": "request.headers['x-tenant'] + '/' + claims.sub"}]},
    }))
    .expect("cel spec");
    spec.when = extra.when;
    spec.forward.headers = extra.forward.headers;
    spec
}

fn compile_spec(spec: &JwtPolicySpec) -> Arc<tollgate::policy::Policy> {
    let sources = KeySources::offline().expect("sources");
    let policy = compile(
        "bench",
        "main",
        spec,
        &CompileContext {
            key_sources: &sources,
            secrets: &FileSecrets::new(None),
        },
    )
    .expect("compiles");
    Arc::new(policy)
}

/// The plain policy, the same with CEL, and a token both accept.
fn setup_both() -> (
    Arc<tollgate::policy::Policy>,
    Arc<tollgate::policy::Policy>,
    String,
) {
    let key = SigningKey::rsa("rs", "RS256", 2048).expect("key");
    let now = now_secs();
    let token = key
        .mint(
            &json!({"iss": ISSUER, "sub": "user-1", "aud": AUDIENCE, "iat": now, "exp": now + 3600,
            "scope": "orders.read orders.write", "email": "user-1@example.com", "roles": ["user"],
            "tenants": ["acme", "globex"]}),
        )
        .expect("mint");
    (
        compile_spec(&spec(&key)),
        compile_spec(&cel_spec(&key)),
        token,
    )
}

fn stages(c: &mut Criterion) {
    let (policy, cel_policy, token) = setup_both();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut headers = HashMap::new();
    headers.insert("authorization".to_string(), format!("Bearer {token}"));
    headers.insert("user-agent".to_string(), "bench/1.0".to_string());
    headers.insert("x-tenant".to_string(), "acme".to_string());
    let request = Request {
        host: "api.bench.example",
        path: "/orders/1",
        method: "GET",
        headers: Headers::Map(&headers),
        policy: None,
        route: None,
        source: Default::default(),
    };
    let keys = policy.issuers[0].keys.current().expect("inline keys");
    let now = SystemTime::now();

    c.bench_function("1 extract the token", |b| {
        b.iter(|| request::extract(black_box(&policy.token), black_box(&request)))
    });
    c.bench_function("2 decode the JWS (base64url + JSON)", |b| {
        b.iter(|| jose::parse(black_box(&token)))
    });
    let jws = jose::parse(&token).expect("parses");
    c.bench_function("3 route + verify RS256", |b| {
        b.iter(|| {
            let (_, alg) = validate::route(black_box(&jws), &policy).expect("routes");
            validate::verify_signature(&jws, alg, &keys).map(|_| ())
        })
    });
    let issuer = &policy.issuers[0];
    c.bench_function("4 claims (exp/nbf/iat/aud, requiredClaims)", |b| {
        b.iter(|| {
            let mut trace = Trace::off();
            validate::check_claims(black_box(&jws.claims), issuer, &policy, now, &mut trace)
                .and_then(|()| validate::check_required(&jws.claims, &policy, &mut trace))
        })
    });
    let plain = Snapshot::build(vec![policy.clone()], DefaultAction::Deny).0;
    let decision = runtime.block_on(engine::check(&plain, &request, now));
    assert!(decision.is_allow());
    // The allow as the server writes it, against building the message and encoding that.
    c.bench_function("5 encode the allow (as served)", |b| {
        b.iter(|| prost::Message::encode_to_vec(&to_answer(black_box(&decision))))
    });
    c.bench_function("5 build Envoy's CheckResponse and encode it", |b| {
        b.iter(|| prost::Message::encode_to_vec(&to_check_response(black_box(&decision))))
    });
    c.bench_function("engine::check, uncached", |b| {
        b.iter(|| runtime.block_on(engine::check(&plain, black_box(&request), now)))
    });
    let mut cached = Snapshot::build(vec![policy.clone()], DefaultAction::Deny).0;
    cached.token_cache = TokenCache::new(CacheLimits::default());
    c.bench_function("engine::check, verified-token cache hit", |b| {
        b.iter(|| runtime.block_on(engine::check(&cached, black_box(&request), now)))
    });
    // The same cached check with a CEL condition and a computed header: their cost is the
    // difference between the two lines (docs/cel.md, docs/benchmarks.md).
    let mut with_cel = Snapshot::build(vec![cel_policy.clone()], DefaultAction::Deny).0;
    with_cel.token_cache = TokenCache::new(CacheLimits::default());
    let decision = runtime.block_on(engine::check(&with_cel, &request, now));
    assert!(decision.is_allow(), "{decision:?}");
    c.bench_function(
        "engine::check, cache hit, CEL condition + computed header",
        |b| b.iter(|| runtime.block_on(engine::check(&with_cel, black_box(&request), now))),
    );
    let cel = cel_policy.cel.as_ref().expect("expressions");
    let view = tollgate::expression::RequestView {
        method: "GET",
        host: "api.bench.example",
        path: "/orders/1",
        query: None,
        headers: Headers::Map(&headers),
        address: None,
        principal: None,
        certificate: None,
    };
    let claims = jose::parse(&token).expect("parses").claims;
    c.bench_function("6 CEL: inputs + condition + header", |b| {
        b.iter(|| {
            let inputs =
                tollgate::expression::Inputs::new(&cel.reads, Some(black_box(&claims)), &view, now);
            let scope = cel.environment.scope(&inputs);
            let ok = cel_policy.when[0].expression.condition(&scope);
            let header = cel_policy.forward.computed[0].expression.header(&scope);
            (ok, header)
        })
    });
    let shared =
        SharedSnapshot::with_cache(DefaultAction::Deny, TokenCache::new(CacheLimits::default()));
    shared.publish(Snapshot::build(vec![policy.clone()], DefaultAction::Deny).0);
    shared.set_ready();
    let service = AuthzService::new(shared, Metrics::new(None, None));
    let check = check_request(&Probe {
        host: "api.bench.example".into(),
        path: "/orders/1".into(),
        method: "GET".into(),
        token: Some(token.clone()),
        ..Probe::default()
    });
    c.bench_function("gRPC decide + answer, cache hit", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let (decision, _) = service.decide(black_box(&check)).await;
                to_answer(&decision)
            })
        })
    });
    // What an allow returns, encoded as it goes on the wire: every claim as dynamic metadata
    // (the default), or none (`forward.metadataClaims: []`).
    let mut without_metadata = policy.as_ref().clone();
    without_metadata.forward.metadata_claims =
        tollgate::policy::MetadataClaims::Listed(Vec::new().into());
    without_metadata.cached_claims = Some(vec!["cnf".to_string()].into());
    for (name, policy) in [
        ("every claim", policy.clone()),
        ("metadataClaims: []", Arc::new(without_metadata)),
    ] {
        let shared = SharedSnapshot::with_cache(
            DefaultAction::Deny,
            TokenCache::new(CacheLimits::default()),
        );
        shared.publish(Snapshot::build(vec![policy], DefaultAction::Deny).0);
        shared.set_ready();
        let service = AuthzService::new(shared, Metrics::new(None, None));
        // Deciding, then the answer alone for the decision it made: as served, and built as a
        // message then encoded (what the server did before).
        c.bench_function(&format!("gRPC decide, cache hit, {name}"), |b| {
            b.iter(|| runtime.block_on(service.decide(black_box(&check))).0)
        });
        let (decision, _) = runtime.block_on(service.decide(&check));
        assert!(decision.is_allow());
        c.bench_function(&format!("answer as served, {name}"), |b| {
            b.iter(|| prost::Message::encode_to_vec(&to_answer(black_box(&decision))))
        });
        c.bench_function(
            &format!("answer built as a CheckResponse and encoded, {name}"),
            |b| b.iter(|| prost::Message::encode_to_vec(&to_check_response(black_box(&decision)))),
        );
        println!(
            "the answer, {name}: {} bytes",
            prost::Message::encoded_len(&to_answer(&decision))
        );
    }
}

/// The whole gRPC `Check` of a cached token (decide, metrics, log line, answer) with the
/// decision log off and on (every record written to a file, subject hashed): what the record
/// costs the request path. The writer runs on its own thread; the figures say how many records
/// it wrote and how many found the queue full.
fn decision_log(c: &mut Criterion) {
    use tollgate::decision_log::{self, DecisionLog, Dropped};
    use tollgate::proto::auth::authorization_server::Authorization as _;
    let (policy, _, token) = setup_both();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let shared =
        SharedSnapshot::with_cache(DefaultAction::Deny, TokenCache::new(CacheLimits::default()));
    shared.publish(Snapshot::build(vec![policy], DefaultAction::Deny).0);
    shared.set_ready();
    let check = check_request(&Probe {
        host: "api.bench.example".into(),
        path: "/orders/1?page=2".into(),
        method: "GET".into(),
        token: Some(token),
        headers: vec![(
            "x-request-id".into(),
            "4bf92f35-77b3-4da6-a3ce-929d0e0e4736".into(),
        )],
        ..Probe::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    let key = dir.path().join("key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef").expect("key");
    let metrics = Metrics::new(None, None);
    let settings = decision_log::Settings {
        output: decision_log::Output::File(dir.path().join("decisions.jsonl")),
        limit: 0,
        subject_key: Some(key),
        ..decision_log::Settings::default()
    };
    let (log, writer) = DecisionLog::spawn(&settings, metrics.decision_log.clone())
        .expect("decision log")
        .expect("on");
    for (name, log) in [("off", DecisionLog::default()), ("to a file", log)] {
        let service = AuthzService::new(shared.clone(), metrics.clone()).with_decision_log(log);
        c.bench_function(
            &format!("gRPC Check, cache hit, decision log {name}"),
            |b| {
                b.iter(|| {
                    runtime.block_on(service.check(tonic::Request::new(black_box(check.clone()))))
                })
            },
        );
    }
    runtime.block_on(writer.close(std::time::Duration::from_secs(10)));
    let counters = &metrics.decision_log;
    eprintln!(
        "decision log: {} lines written, {} dropped (queue full), {} (rate limited)",
        counters.written(),
        counters.dropped(Dropped::QueueFull),
        counters.dropped(Dropped::RateLimited)
    );
}

/// What a policy reload costs per policy: parsing its document and compiling it (inline keys).
fn reload(c: &mut Criterion) {
    let key = SigningKey::rsa("rs", "RS256", 2048).expect("key");
    let document = serde_json::to_string(&json!({"apiVersion": "tollgate.dev/v1alpha1",
        "kind": "JwtPolicy", "metadata": {"name": "p", "namespace": "bench"},
        "spec": serde_json::to_value(spec(&key)).expect("value")}))
    .expect("json");
    c.bench_function("reload: parse one policy document (YAML)", |b| {
        b.iter(|| tollgate::policy::files::parse_documents(black_box(document.as_bytes())))
    });
    let sources = KeySources::offline().expect("sources");
    let secrets = FileSecrets::new(None);
    let spec = spec(&key);
    c.bench_function("reload: compile one policy (inline RSA key)", |b| {
        b.iter(|| {
            compile(
                "bench",
                "p",
                black_box(&spec),
                &CompileContext {
                    key_sources: &sources,
                    secrets: &secrets,
                },
            )
        })
    });
}

/// A reload of 1,000 changed policy files through the file loader (read, parse, compile,
/// index), as `serve` does when every file changes.
fn reload_many(c: &mut Criterion) {
    let key = SigningKey::rsa("rs", "RS256", 2048).expect("key");
    let ec = SigningKey::ec("es", "ES256").expect("key");
    let ed = SigningKey::ed25519("ed").expect("key");
    let dir = tempfile::tempdir().expect("dir");
    let write = |audience: &str| {
        for i in 0..1000 {
            let doc = json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "JwtPolicy",
                "metadata": {"name": format!("p{i:04}"), "namespace": "bench"},
                "spec": {"match": {"hosts": [format!("h{i:04}.bench.example")]},
                    "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE, audience],
                                 "jwks": jwks(&[&key, &ec, &ed])}],
                    "requiredClaims": [{"name": "scope", "separator": " ", "values": ["orders.read"]}]}});
            std::fs::write(dir.path().join(format!("p{i:04}.yaml")), doc.to_string())
                .expect("write");
        }
    };
    write("api://a");
    let sources = KeySources::offline().expect("sources");
    let mut loader = tollgate::policy::files::FileLoader::new(
        vec![dir.path().to_path_buf()],
        sources,
        DefaultAction::Deny,
    );
    let (first, report) = loader.reload();
    assert_eq!(
        (first.map(|s| s.len()), report.problems.len()),
        (Some(1000), 0)
    );
    let mut flip = false;
    let mut group = c.benchmark_group("reload");
    group.sample_size(10);
    group.bench_function(
        "1,000 changed policies (read, parse, compile, index)",
        |b| {
            b.iter_batched(
                || {
                    flip = !flip;
                    write(if flip { "api://b" } else { "api://a" });
                },
                |()| loader.reload(),
                criterion::BatchSize::PerIteration,
            )
        },
    );
    group.bench_function("1,000 unchanged policies (the poll)", |b| {
        b.iter(|| loader.reload())
    });
    group.finish();
}

/// What OpenTelemetry costs a cached check: the gRPC service's `Check` as tonic calls it (span,
/// decision, metrics, log line), with tracing off, on and sampled (exported over OTLP/HTTP to a
/// local sink that accepts everything), and on but not sampled. The "off" row is the one to
/// compare with the same row before tracing existed.
fn tracing_overhead(c: &mut Criterion) {
    use tollgate::proto::auth::authorization_server::Authorization as _;
    let (policy, _, token) = setup_both();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let shared =
        SharedSnapshot::with_cache(DefaultAction::Deny, TokenCache::new(CacheLimits::default()));
    shared.publish(Snapshot::build(vec![policy], DefaultAction::Deny).0);
    shared.set_ready();
    let check = check_request(&Probe {
        host: "api.bench.example".into(),
        path: "/orders/1".into(),
        method: "GET".into(),
        token: Some(token),
        ..Probe::default()
    });
    let sink = runtime.block_on(async {
        let app = axum::Router::new().route("/v1/traces", axum::routing::post(|| async { "" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}/v1/traces")
    });
    let mut rows = vec![("off", None)];
    for (name, sampler) in [
        ("on, sampled", tollgate::otel::SamplerSetting::AlwaysOn),
        ("on, not sampled", tollgate::otel::SamplerSetting::AlwaysOff),
    ] {
        let _runtime = runtime.enter();
        let tracing = tollgate::otel::Tracing::start(&tollgate::otel::Settings {
            protocol: tollgate::otel::Protocol::HttpProtobuf,
            sampler,
            service_name: Some("bench".into()),
            endpoint: Some(sink.clone()),
        })
        .expect("tracing");
        rows.push((name, Some(tracing)));
    }
    let mut started = Vec::new();
    for (name, tracing) in rows {
        started.extend(tracing.clone());
        let service =
            AuthzService::new(shared.clone(), Metrics::new(None, None)).with_tracing(tracing);
        c.bench_function(&format!("gRPC Check, cache hit, tracing {name}"), |b| {
            b.iter(|| {
                runtime.block_on(service.check(tonic::Request::new(black_box(check.clone()))))
            })
        });
    }
    // The exporters stop while the runtime that runs them is driven (dropping a provider that
    // was not shut down would wait for its task on a runtime nobody drives).
    for tracing in started {
        runtime.block_on(tracing.shutdown());
    }
}

criterion_group!(
    benches,
    stages,
    decision_log,
    reload,
    reload_many,
    tracing_overhead
);
criterion_main!(benches);

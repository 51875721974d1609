//! SIGTERM while checks are in flight: they complete on their connection, new connections are
//! refused, and the drain timeout bounds how long a stuck check can hold the shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Form;
use axum::routing::post;
use serde_json::json;
use tollgate::client::{Probe, check_request};
use tollgate::proto::auth::authorization_client::AuthorizationClient;

use crate::support::*;

const ISSUER: &str = "https://idp.example.com/";

/// An introspection endpoint that answers every token as active after `delay`.
async fn slow_introspection(delay: Duration) -> (String, Arc<AtomicU64>) {
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let app = Router::new().route(
        "/introspect",
        post(
            move |Form(form): Form<std::collections::HashMap<String, String>>| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    let now = tollgate::local_issuer::now_secs();
                    axum::Json(json!({"active": true, "iss": ISSUER, "aud": AUDIENCE,
                        "sub": form.get("token").cloned().unwrap_or_default(),
                        "exp": now + 600}))
                }
            },
        ),
    );
    let (addr, _) = serve_app(app).await;
    (format!("http://{addr}/introspect"), calls)
}

fn start(dir: &std::path::Path, endpoint: &str, drain: &str) -> Tollgate {
    std::fs::write(dir.join("secret"), "s3cret\n").expect("secret");
    let policy = json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "JwtPolicy",
        "metadata": {"name": "opaque", "namespace": "shop"},
        "spec": {
            "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwksUri": "https://idp.example.com/keys"}],
            "introspection": {"endpoint": endpoint, "clientId": "gateway", "allowInsecureHttp": true,
                "clientSecretRef": {"file": "secret"}, "timeout": "30s"},
        }
    });
    write_policy(dir, "opaque.json", &policy.to_string());
    Tollgate::start(dir, &["--drain-timeout", drain])
}

/// Sends `n` checks with distinct opaque tokens over one HTTP/2 connection.
fn in_flight(
    tollgate: &Tollgate,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<bool, tonic::Status>>> {
    let channel = tonic::transport::Endpoint::from_shared(tollgate.url())
        .expect("endpoint")
        .connect_lazy();
    (0..n)
        .map(|i| {
            let mut client = AuthorizationClient::new(channel.clone());
            let request = check_request(&Probe {
                host: HOST.into(),
                path: "/orders".into(),
                method: "GET".into(),
                token: Some(format!("opaque-{i}")),
                ..Probe::default()
            });
            tokio::spawn(async move {
                let response = client.check(request).await?.into_inner();
                Ok(tollgate::client::allowed(&response))
            })
        })
        .collect()
}

async fn wait_calls(calls: &AtomicU64, n: u64) {
    let arrived = eventually(Duration::from_secs(10), async || {
        calls.load(Ordering::SeqCst) >= n
    })
    .await;
    assert!(
        arrived,
        "{} of {n} checks reached the IdP",
        calls.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_checks_finish_and_refuses_new_connections() {
    let (endpoint, calls) = slow_introspection(Duration::from_millis(1500)).await;
    let dir = tempfile::tempdir().expect("dir");
    let mut tollgate = start(dir.path(), &endpoint, "20s");
    let grpc = tollgate.grpc;
    let checks = in_flight(&tollgate, 40);
    wait_calls(&calls, 40).await;

    tollgate.signal("TERM");
    // New connections are refused once the signal is handled.
    let refused = eventually(Duration::from_secs(5), async || {
        tokio::net::TcpStream::connect(grpc).await.is_err()
    })
    .await;
    assert!(
        refused,
        "the gRPC port still accepts connections after SIGTERM"
    );

    // Every check already in flight completes with its real answer: no reset, no error.
    for check in checks {
        let answer = check.await.expect("task");
        assert_eq!(answer.map_err(|s| s.to_string()), Ok(true));
    }
    let status = tollgate.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    let logs = tollgate.logs().join("\n");
    assert!(logs.contains("\"stopped\""), "{logs}");
    assert!(!logs.contains("drain timeout reached"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_stuck_past_the_drain_timeout_does_not_hold_the_shutdown() {
    let (endpoint, calls) = slow_introspection(Duration::from_secs(60)).await;
    let dir = tempfile::tempdir().expect("dir");
    let mut tollgate = start(dir.path(), &endpoint, "1s");
    let checks = in_flight(&tollgate, 3);
    wait_calls(&calls, 3).await;

    let signalled = Instant::now();
    tollgate.signal("TERM");
    let status = tollgate.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
    assert!(
        !tollgate
            .log_events("drain timeout reached: closing the connections still open")
            .is_empty(),
        "{}",
        tollgate.logs().join("\n")
    );
    // The cut checks fail (Envoy's failure_mode_allow: false turns that into a denial): none
    // is answered as allowed.
    for check in checks {
        let answer = check.await.expect("task");
        assert!(answer.is_err(), "{answer:?}");
    }
}

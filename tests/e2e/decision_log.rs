//! The decision log (`--decision-log <file>`) of the real binary, with checks coming from a
//! real Envoy (gRPC ext_authz) and a real nginx (`auth_request`, the example configuration):
//! one record per check with the documented fields, the request id the upstream saw, and never
//! a token, whether it came in a header or in the query string.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tollgate::local_issuer::server::IdpServer;
use tollgate::local_issuer::{SigningKey, jwks};

use crate::envoy::{counting_echo_upstream, get, start_envoy};
use crate::nginx::start_nginx;
use crate::support::*;

const KEY: &str = "8d3f6a0c2b194e7f8a6d5c4b3a29181706f5e4d3c2b1a0998877665544332211";

/// Reads the policy's token from the query too, so a query token is judged (and must still
/// never be logged). With `metadataClaims: []` the verified-token cache keeps only the claims
/// a hit reads: the subject must be among them, or hits would be recorded without it.
const POLICY: &str = "  token: {query: access_token}\n  forward:\n    claimsToHeaders: [{claim: sub, header: x-user-id}]\n    metadataClaims: []\n";

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON record ({e}): {l}"))
        })
        .collect()
}

/// HMAC-SHA256(key, issuer NUL subject), first 128 bits in hex: what docs/operations.md says an
/// auditor computes to find a subject's records.
fn subject_hash(issuer: &str, subject: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, KEY.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, format!("{issuer}\0{subject}").as_bytes());
    tag.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The records that have a given request id, once the writer has flushed them.
async fn record_of(path: &Path, request_id: &str) -> Value {
    let mut found = None;
    let seen = eventually(Duration::from_secs(10), async || {
        found = records(path)
            .into_iter()
            .find(|r| r["request_id"] == request_id);
        found.is_some()
    })
    .await;
    assert!(seen, "no record for {request_id}: {:?}", records(path));
    found.expect("found")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_over_envoy_and_nginx_are_recorded_without_tokens() {
    let Some(envoy_bin) = peer("TOLLGATE_ENVOY", "envoy") else {
        return;
    };
    let Some(nginx_bin) = peer("TOLLGATE_NGINX", "nginx") else {
        return;
    };
    let key = SigningKey::rsa("k1", "RS256", 2048).expect("key");
    let idp = IdpServer::start("127.0.0.1:0".parse().expect("addr"), jwks(&[&key]))
        .await
        .expect("idp");
    let iss = idp.issuer();
    let dir = tempfile::tempdir().expect("dir");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).expect("dir");
    write_policy(
        &policies,
        "orders.yaml",
        &policy_yaml("orders", &iss, POLICY),
    );
    let key_file = dir.path().join("subject-key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("key");
    let log = dir.path().join("decisions.jsonl");
    let tollgate = Tollgate::start(
        &policies,
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--trusted-proxies",
            "127.0.0.1=nginx",
            "--decision-log",
            log.to_str().expect("path"),
            "--decision-log-subject-key",
            key_file.to_str().expect("path"),
            "--decision-log-flush-interval",
            "50ms",
        ],
    );
    let (upstream, _hits, _task) = counting_echo_upstream().await;
    let envoy = start_envoy(&envoy_bin, tollgate.grpc, upstream).await;
    let nginx = start_nginx(&nginx_bin, tollgate.http.expect("http"), upstream).await;

    let now = tollgate::local_issuer::now_secs();
    let good = key.mint(&claims(&iss, json!({}))).expect("mint");
    let expired = key
        .mint(&claims(&iss, json!({"exp": now - 300})))
        .expect("mint");
    let rogue = SigningKey::rsa("k1", "RS256", 2048)
        .expect("key")
        .mint(&claims(&iss, json!({"sub": "mallory"})))
        .expect("mint");
    let bearer = |t: &str| format!("Bearer {t}");

    // gRPC through Envoy: the token in the header, then in the query.
    let answer = get(
        envoy.port,
        "/orders/1",
        &[("authorization", &bearer(&good))],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // The id Envoy gave the request, as the upstream received it.
    let id = answer.json()["x-request-id"]
        .as_str()
        .expect("x-request-id upstream")
        .to_string();
    let record = record_of(&log, &id).await;
    let latency = record["latency_us"].as_u64().expect("latency");
    assert!(latency > 0 && latency < 10_000_000, "{record}");
    let time = record["time"].as_str().expect("time").to_string();
    assert!(chrono::DateTime::parse_from_rfc3339(&time).is_ok() && time.ends_with('Z'));
    let mut fields = record.clone();
    for variable in ["time", "latency_us"] {
        fields.as_object_mut().expect("object").remove(variable);
    }
    assert_eq!(
        fields,
        json!({
            "record": "decision",
            "request_id": id,
            "transport": "grpc",
            "method": "GET",
            "host": HOST,
            "path": "/orders/1",
            "policy": "shop/orders",
            "decision": "allow",
            "reason": "valid",
            "dry_run": false,
            "issuer": iss,
            "subject_hash": subject_hash(&iss, "user-1"),
            "token_fingerprint": tollgate::jose::fingerprint(&good),
            "client_address": "127.0.0.1",
            "proxy_address": "127.0.0.1",
        })
    );
    let answer = get(
        envoy.port,
        &format!("/orders/2?access_token={good}&page=3"),
        &[],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let id = answer.json()["x-request-id"]
        .as_str()
        .expect("id")
        .to_string();
    let record = record_of(&log, &id).await;
    assert_eq!(
        (&record["path"], &record["decision"]),
        (&json!("/orders/2"), &json!("allow"))
    );
    let answer = get(
        envoy.port,
        "/orders/3",
        &[
            ("authorization", &bearer(&expired)),
            ("x-request-id", "envoy-expired"),
        ],
    )
    .await;
    assert_eq!(answer.status, 401);
    let answer = get(envoy.port, &format!("/orders/4?access_token={rogue}"), &[]).await;
    assert_eq!(answer.status, 401);

    // HTTP forward auth through nginx. The example configuration gives tollgate and the
    // upstream nginx's own $request_id (whatever x-request-id the client sent).
    let via_nginx = |path: String, headers: Vec<(&'static str, String)>| {
        let port = nginx.port;
        async move {
            let mut request = reqwest::Client::new()
                .get(format!("http://127.0.0.1:{port}{path}"))
                .header("host", HOST);
            for (k, v) in headers {
                request = request.header(k, v);
            }
            let response = request.send().await.expect("through nginx");
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            let upstream_id = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["x-request-id"].as_str().map(str::to_owned));
            (status, upstream_id)
        }
    };
    let (status, id) = via_nginx(
        "/orders/7".into(),
        vec![
            ("authorization", bearer(&good)),
            ("x-request-id", "client-chosen".into()),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let id = id.expect("the upstream got nginx's request id");
    assert_ne!(id, "client-chosen");
    let allowed = record_of(&log, &id).await;
    assert_eq!(
        (
            &allowed["transport"],
            &allowed["path"],
            &allowed["decision"],
            &allowed["subject_hash"],
            &allowed["proxy_address"]
        ),
        (
            &json!("http"),
            &json!("/orders/7"),
            &json!("allow"),
            &json!(subject_hash(&iss, "user-1")),
            &json!("127.0.0.1")
        )
    );
    assert!(allowed.get("client_address").is_none(), "{allowed}");
    let (status, id) = via_nginx(format!("/orders/8?access_token={good}"), vec![]).await;
    assert_eq!(status, 200);
    let query = record_of(&log, &id.expect("id")).await;
    assert_eq!(query["path"], "/orders/8");
    let (status, _) = via_nginx("/orders/9".into(), vec![("authorization", bearer(&rogue))]).await;
    assert_eq!(status, 401);
    let (status, _) = via_nginx("/orders/10".into(), vec![("x-request-id", good.clone())]).await;
    assert_eq!(status, 401);

    let expired_record = record_of(&log, "envoy-expired").await;
    assert_eq!(
        (
            &expired_record["decision"],
            &expired_record["status"],
            &expired_record["reason"],
            &expired_record["token_fingerprint"]
        ),
        (
            &json!("deny"),
            &json!(401),
            &json!("token_expired"),
            &json!(tollgate::jose::fingerprint(&expired))
        )
    );
    let by_path = |path: &str| {
        records(&log)
            .into_iter()
            .find(|r| r["path"] == path)
            .unwrap_or_else(|| panic!("no record for {path}: {:?}", records(&log)))
    };
    assert!(
        eventually(Duration::from_secs(10), async || records(&log)
            .iter()
            .any(|r| r["path"] == "/orders/10"))
        .await
    );
    // A forged token: denied, named by its fingerprint, with no issuer or subject (it did not
    // verify, so what it claims is not recorded).
    for path in ["/orders/4", "/orders/9"] {
        let forged = by_path(path);
        assert_eq!(forged["reason"], "signature_invalid");
        assert_eq!(
            forged["token_fingerprint"],
            tollgate::jose::fingerprint(&rogue)
        );
        assert!(
            forged.get("issuer").is_none() && forged.get("subject_hash").is_none(),
            "{forged}"
        );
    }
    assert_eq!(by_path("/orders/4")["transport"], "grpc");
    assert_eq!(by_path("/orders/10")["reason"], "token_missing");

    // Rotation: move the file away and send SIGHUP; the next records go to a new file.
    let rotated = dir.path().join("decisions.jsonl.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    tollgate.signal("HUP");
    assert!(eventually(Duration::from_secs(10), async || log.exists()).await);
    let (status, id) = via_nginx("/orders/11".into(), vec![("authorization", bearer(&good))]).await;
    assert_eq!(status, 200);
    record_of(&log, &id.expect("id")).await;
    assert!(!records(&rotated).iter().any(|r| r["path"] == "/orders/11"));

    let metrics = tollgate.metrics();
    assert!(
        metric(&metrics, "tollgate_decision_log_records_total").is_some_and(|n| n >= 9.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "tollgate_decision_log_dropped_total{cause=\"queue_full\"}"
        ),
        Some(0.0)
    );
    let status = tollgate.terminate();
    assert!(status.success(), "{status}");

    // Not one token, in any form, in either file; no query string either.
    let text = std::fs::read_to_string(&rotated).expect("rotated")
        + &std::fs::read_to_string(&log).expect("log");
    assert_eq!(text.lines().count(), 9, "one record per check: {text}");
    for token in [&good, &expired, &rogue] {
        assert!(
            !text.contains(token.as_str()),
            "a token in the decision log"
        );
        // Not even its signature or payload alone.
        for part in token.split('.') {
            assert!(!text.contains(part), "a token part in the decision log");
        }
    }
    assert!(
        !text.contains("access_token") && !text.contains("page=3"),
        "{text}"
    );
    assert!(
        !text.contains("user-1") && !text.contains("mallory"),
        "a subject in clear: {text}"
    );
    drop(envoy);
    drop(nginx);
    idp.stop().await;
}

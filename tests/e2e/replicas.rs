//! `tollgate serve --kubernetes` against a real API server (tests/e2e/cluster.rs): the chart
//! installed with helm, its Deployment run as local replicas authenticating as the chart's
//! ServiceAccount, so the chart's RBAC decides what they may do.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate::local_issuer::server::IdpServer;
use tollgate::local_issuer::{SigningKey, jwks};

use crate::cluster::Cluster;
use crate::support::*;

const RELEASE: &str = "tg";
const NAMESPACE: &str = "tollgate";
const DEPLOYMENT: &str = "tg-tollgate";

async fn allowed(tollgate: &Tollgate, token: &str) -> bool {
    outcome(&check(&tollgate.url(), "/", Some(token)).await).0
}

fn policy(name: &str, spec: Value) -> String {
    serde_json::to_string(&json!({
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "JwtPolicy",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec,
    }))
    .expect("json")
}

fn spec(issuer: &str, audience: &str) -> Value {
    json!({
        "match": {"hosts": [HOST]},
        "issuers": [{"issuer": issuer, "audiences": [audience], "allowInsecureHttp": true}],
    })
}

/// Waits until the status of shop/orders satisfies `check`.
async fn status_becomes(cluster: &Cluster, what: &str, check: impl Fn(&Value) -> bool) {
    let ok = eventually(Duration::from_secs(20), async || {
        cluster
            .get("jwtpolicy", Some("shop"), "orders")
            .is_some_and(|p| check(&p["status"]))
    })
    .await;
    assert!(
        ok,
        "status never showed {what}: {:#}",
        cluster
            .get("jwtpolicy", Some("shop"), "orders")
            .unwrap_or_default()["status"]
    );
}

fn status_holder(cluster: &Cluster) -> Option<String> {
    cluster
        .get("lease", Some(NAMESPACE), &format!("{DEPLOYMENT}-status"))?["spec"]
        ["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_and_three_replicas_converge_as_its_service_account() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    cluster.helm_install(RELEASE, NAMESPACE, &[]);
    let chart = cluster.chart_replicas(NAMESPACE, DEPLOYMENT);
    let key = SigningKey::ec("k1", "ES256").expect("key");
    let idp = IdpServer::start("127.0.0.1:0".parse().expect("addr"), jwks(&[&key]))
        .await
        .expect("idp");
    let iss = idp.issuer();
    let mut replicas: Vec<Option<Tollgate>> = (0..3)
        .map(|i| Some(chart.start(&format!("replica-{i}"))))
        .collect();
    let webhook = replicas[0]
        .as_ref()
        .and_then(|r| r.webhook)
        .expect("the chart's Deployment serves the webhook");
    cluster.point_webhook_at(
        DEPLOYMENT,
        webhook.port(),
        chart.webhook_cert.as_deref().expect("webhook certificate"),
    );
    cluster.kubectl(&["create", "namespace", "shop"]);
    cluster.apply(&policy("orders", spec(&iss, "api://v1")));

    let token = |aud: &str| key.mint(&claims(&iss, json!({"aud": aud}))).expect("mint");
    let (v1, v2) = (token("api://v1"), token("api://v2"));
    for replica in replicas.iter().flatten() {
        assert!(eventually(Duration::from_secs(5), async || allowed(replica, &v1).await).await);
        assert!(!allowed(replica, &v2).await);
    }
    status_becomes(&cluster, "generation 1 on 3/3, Ready", |s| {
        s["observedGeneration"] == 1 && s["loaded"] == "3/3"
    })
    .await;
    eprintln!(
        "{}",
        cluster.kubectl(&["get", "jwtpolicies", "-A", "-o", "wide"])
    );
    drop(replicas.pop());
}

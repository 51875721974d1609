//! Policies attached to Gateway API objects (`spec.targetRefs`) against a real API server with
//! the real Gateway API CRDs (tests/kube/crds.sh): the chart installed with helm, its Deployment
//! run as a local replica authenticating as the chart's ServiceAccount (so the chart's RBAC
//! must grant the route and Gateway reads), the derived hosts and paths judged through gRPC,
//! route edits followed, and the per-ancestor status written to the object.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tollgate::client::{self, Probe};

use crate::cluster::Cluster;
use crate::support::*;

const NAMESPACE: &str = "tollgate";
const DEPLOYMENT: &str = "tg-tollgate";

/// Installs the standard-channel Gateway API CRDs of the bundle.
fn install_gateway_api(cluster: &Cluster, bundle: &Path) {
    let folder = bundle.join("gateway-api");
    let mut files: Vec<_> = std::fs::read_dir(&folder)
        .expect("gateway-api CRDs (tests/kube/crds.sh)")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no CRD in {}", folder.display());
    for file in &files {
        let text = std::fs::read_to_string(file).expect("CRD file");
        cluster
            .try_apply(&text)
            .unwrap_or_else(|e| panic!("installing {}: {e}", file.display()));
    }
    cluster.wait_established(
        &[
            "httproutes.gateway.networking.k8s.io",
            "gateways.gateway.networking.k8s.io",
        ],
        "120s",
    );
}

fn apply_json(cluster: &Cluster, value: Value) {
    cluster.apply(&serde_json::to_string(&value).expect("json"));
}

fn gateway() -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "eg", "namespace": "infra"},
        "spec": {
            "gatewayClassName": "eg",
            "listeners": [
                {"name": "http", "protocol": "HTTP", "port": 80, "hostname": "*.example.com",
                 "allowedRoutes": {"namespaces": {"from": "All"}}},
            ],
        },
    })
}

fn route(rules: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {
            "parentRefs": [{"name": "eg", "namespace": "infra", "sectionName": "http"}],
            "hostnames": [HOST, "shop.other.org"],
            "rules": rules,
        },
    })
}

fn policy(issuer: &str) -> Value {
    json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "JwtPolicy",
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "orders"}],
            "issuers": [{"issuer": issuer, "audiences": [AUDIENCE], "allowInsecureHttp": true}],
        },
    })
}

async fn judge(
    tollgate: &Tollgate,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    token: Option<&str>,
) -> (bool, u16, String) {
    let probe = Probe {
        host: host.into(),
        path: path.into(),
        method: "GET".into(),
        token: token.map(str::to_owned),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Probe::default()
    };
    outcome(
        &client::send(&tollgate.url(), &probe)
            .await
            .expect("Check RPC"),
    )
}

/// Waits until shop/orders' status satisfies `check`.
async fn status_becomes(cluster: &Cluster, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let ok = eventually(Duration::from_secs(20), async || {
        cluster
            .get("jwtpolicy", Some("shop"), "orders")
            .is_some_and(|p| check(&p["status"]))
    })
    .await;
    let status = cluster
        .get("jwtpolicy", Some("shop"), "orders")
        .unwrap_or_default()["status"]
        .clone();
    assert!(ok, "status never showed {what}: {status:#}");
    status
}

fn condition<'a>(conditions: &'a Value, type_: &str) -> &'a Value {
    conditions
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_attached_to_an_httproute_judges_its_requests_and_follows_its_edits() {
    let Some(bundle) = peer_dir(
        "TOLLGATE_GATEWAY_CRDS",
        "the gateways' and operators' CRDs (tests/kube/crds.sh)",
    ) else {
        return;
    };
    let Some(cluster) = Cluster::start() else {
        return;
    };
    install_gateway_api(&cluster, &bundle);
    cluster.helm_install("tg", NAMESPACE, &["--set", "webhook.enabled=false"]);
    let mut chart = cluster.chart_replicas(NAMESPACE, DEPLOYMENT);
    chart.args.push("--heartbeat-interval=1s".into());
    for namespace in ["shop", "infra"] {
        cluster.kubectl(&["create", "namespace", namespace]);
    }
    let idp = Idp::start().await;
    let token = idp.token(AUDIENCE);

    // The real CRDs refuse what Gateway API refuses, and tollgate's CRD refuses targetRefs
    // together with match.hosts.
    let mut both = policy(&idp.issuer);
    both["spec"]["match"] = json!({"hosts": [HOST]});
    let refused = cluster
        .try_apply(&serde_json::to_string(&both).expect("json"))
        .expect_err("targetRefs with match.hosts");
    assert!(refused.contains("are exclusive"), "{refused}");

    apply_json(&cluster, gateway());
    apply_json(
        &cluster,
        route(json!([
            {"name": "read", "matches": [{"path": {"type": "PathPrefix", "value": "/orders"}, "method": "GET"}]},
            {"name": "beta", "matches": [{"path": {"type": "Exact", "value": "/beta"}, "headers": [{"name": "X-Beta", "value": "yes"}]}]},
        ])),
    );
    apply_json(&cluster, policy(&idp.issuer));
    let replica = chart.start("replica-0");

    // The derived requests: the route's hostnames within the listener's *.example.com, its
    // rules' paths, methods and headers.
    assert!(
        eventually(Duration::from_secs(15), async || judge(
            &replica,
            HOST,
            "/orders/7",
            &[],
            Some(&token)
        )
        .await
        .0)
        .await,
        "the route's requests are judged by the attached policy: {:?}",
        replica.logs().iter().rev().take(20).collect::<Vec<_>>()
    );
    // host, path, headers, token, (allowed, status, reason)
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        Option<&'a str>,
        (bool, u16, &'a str),
    );
    let cases: Vec<Case<'_>> = vec![
        (
            HOST,
            "/orders/7",
            vec![],
            None,
            (false, 401, "token_missing"),
        ),
        (
            HOST,
            "/beta",
            vec![("x-beta", "yes")],
            Some(&token),
            (true, 200, "valid"),
        ),
        (
            HOST,
            "/beta",
            vec![("x-beta", "yes")],
            None,
            (false, 401, "token_missing"),
        ),
        // Not the route's: no policy (default deny).
        (
            HOST,
            "/beta",
            vec![],
            Some(&token),
            (false, 403, "no_policy"),
        ),
        (
            HOST,
            "/cart",
            vec![],
            Some(&token),
            (false, 403, "no_policy"),
        ),
        (
            "shop.other.org",
            "/orders/7",
            vec![],
            Some(&token),
            (false, 403, "no_policy"),
        ),
    ];
    for (host, path, headers, token, (allowed, status, reason)) in &cases {
        let (got_allowed, got_status, got_reason) =
            judge(&replica, host, path, headers, *token).await;
        assert_eq!(
            (got_allowed, got_status, got_reason.as_str()),
            (*allowed, *status, *reason),
            "{host}{path} {headers:?} token={}",
            token.is_some()
        );
    }
    let status = status_becomes(&cluster, "an accepted ancestor", |s| {
        condition(&s["ancestors"][0]["conditions"], "Accepted")["status"] == "True"
    })
    .await;
    let ancestor = &status["ancestors"][0];
    assert_eq!(
        ancestor["ancestorRef"],
        json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "infra", "name": "eg", "sectionName": "http"})
    );
    assert_eq!(
        ancestor["controllerName"],
        "tollgate.dev/jwtpolicy-controller"
    );
    assert_eq!(
        condition(&ancestor["conditions"], "ResolvedRefs")["status"],
        "True"
    );
    let message = condition(&ancestor["conditions"], "Accepted")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("shop/orders rule read") && message.contains("rule beta"),
        "{message}"
    );
    assert_eq!(
        condition(&status["conditions"], "Accepted")["status"],
        "True"
    );

    // The route is edited (kubectl, as a user would): the policy follows without a change of
    // its own.
    apply_json(
        &cluster,
        route(json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/cart"}}]}])),
    );
    assert!(
        eventually(Duration::from_secs(15), async || judge(
            &replica,
            HOST,
            "/cart/1",
            &[],
            Some(&token)
        )
        .await
        .0)
        .await,
        "the edited route's paths are judged"
    );
    assert_eq!(
        judge(&replica, HOST, "/orders/7", &[], Some(&token)).await,
        (false, 403, "no_policy".to_string())
    );

    // A rule tollgate cannot judge as the gateway routes it: not Accepted, with the reason;
    // the last good entries keep serving.
    apply_json(
        &cluster,
        route(
            json!([{"matches": [{"path": {"type": "RegularExpression", "value": "/cart/[0-9]+"}}]}]),
        ),
    );
    let status = status_becomes(&cluster, "UnsupportedRouteMatch", |s| {
        condition(&s["conditions"], "Accepted")["reason"] == "UnsupportedRouteMatch"
    })
    .await;
    let message = condition(&status["conditions"], "Accepted")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("RegularExpression path match"),
        "{message}"
    );
    assert_eq!(
        condition(&status["ancestors"][0]["conditions"], "Accepted")["reason"],
        "Invalid"
    );
    assert!(judge(&replica, HOST, "/cart/1", &[], Some(&token)).await.0);

    // The route is deleted: the policy judges nothing and says its target is gone.
    cluster.kubectl(&["delete", "httproute", "orders", "-n", "shop"]);
    let status = status_becomes(&cluster, "TargetNotFound", |s| {
        condition(&s["conditions"], "Accepted")["reason"] == "TargetNotFound"
    })
    .await;
    assert_eq!(status["ancestors"][0]["ancestorRef"]["kind"], "HTTPRoute");
    assert_eq!(
        judge(&replica, HOST, "/cart/1", &[], Some(&token)).await,
        (false, 403, "no_policy".to_string())
    );

    // The audit log shows the replica's ServiceAccount watching routes and Gateways (the
    // chart's RBAC grants exactly these reads).
    let sa = format!("system:serviceaccount:{NAMESPACE}:{DEPLOYMENT}");
    let watched: Vec<String> = cluster
        .audit()
        .iter()
        .filter(|e| {
            e["user"]["username"] == sa.as_str()
                && e["objectRef"]["apiGroup"] == "gateway.networking.k8s.io"
        })
        .map(|e| {
            format!(
                "{} {} {}",
                e["verb"].as_str().unwrap_or(""),
                e["objectRef"]["resource"].as_str().unwrap_or(""),
                e["responseStatus"]["code"]
            )
        })
        .collect();
    for expected in [
        "list httproutes 200",
        "watch httproutes 200",
        "list gateways 200",
        "watch gateways 200",
    ] {
        assert!(
            watched.iter().any(|w| w == expected),
            "{expected} not in {watched:?}"
        );
    }
    assert!(watched.iter().all(|w| w.ends_with(" 200")), "{watched:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_gateway_api_crds_a_targeting_policy_judges_nothing_and_the_others_serve() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    cluster.helm_install("tg", NAMESPACE, &["--set", "webhook.enabled=false"]);
    let chart = cluster.chart_replicas(NAMESPACE, DEPLOYMENT);
    cluster.kubectl(&["create", "namespace", "shop"]);
    let idp = Idp::start().await;
    let token = idp.token(AUDIENCE);
    apply_json(&cluster, policy(&idp.issuer));
    let mut plain = policy(&idp.issuer);
    plain["metadata"]["name"] = json!("plain");
    plain["spec"] = json!({
        "match": {"hosts": ["plain.example.com"]},
        "issuers": [{"issuer": idp.issuer, "audiences": [AUDIENCE], "allowInsecureHttp": true}],
    });
    apply_json(&cluster, plain);
    let replica = chart.start("replica-0");
    replica.wait_ready(Duration::from_secs(20));
    assert!(
        judge(&replica, "plain.example.com", "/", &[], Some(&token))
            .await
            .0
    );
    assert_eq!(
        judge(&replica, HOST, "/orders", &[], Some(&token)).await,
        (false, 403, "no_policy".to_string())
    );
    let status = status_becomes(&cluster, "TargetNotFound", |s| {
        condition(&s["conditions"], "Accepted")["reason"] == "TargetNotFound"
    })
    .await;
    assert_eq!(
        condition(&status["ancestors"][0]["conditions"], "ResolvedRefs")["reason"],
        "TargetNotFound"
    );
    let (_, body) = http_get(&format!("http://{}/readyz", replica.admin)).expect("readyz");
    assert!(body.contains("does not serve HTTPRoute"), "{body}");
}

//! `tollgate serve --kubernetes` against a real API server (tests/e2e/cluster.rs): the chart
//! installed with helm, its Deployment run as local replicas authenticating as the chart's
//! ServiceAccount, so the chart's RBAC decides what they may do.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate::local_issuer::SigningKey;

use crate::cluster::{ChartReplicas, Cluster};
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
    cluster.get(
        "lease",
        Some(NAMESPACE),
        &format!("tollgate-{DEPLOYMENT}-status"),
    )?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

/// The chart's Deployment as three local replicas (with short Lease timings, so failover is
/// quick), and a policy namespace `shop`.
async fn install(cluster: &Cluster) -> (ChartReplicas, Vec<Option<Tollgate>>) {
    cluster.helm_install(RELEASE, NAMESPACE, &[]);
    let mut chart = cluster.chart_replicas(NAMESPACE, DEPLOYMENT);
    chart.args.extend(
        ["--heartbeat-interval=1s", "--status-lease-duration=3s"]
            .iter()
            .map(|a| a.to_string()),
    );
    let replicas: Vec<Option<Tollgate>> = (0..3)
        .map(|i| Some(chart.start(&format!("replica-{i}"))))
        .collect();
    cluster.kubectl(&["create", "namespace", "shop"]);
    (chart, replicas)
}

/// The chart without its webhook, its Deployment as `ChartReplicas` (none started), and the
/// policy namespace `shop`.
fn install_without_webhook(cluster: &Cluster) -> ChartReplicas {
    cluster.helm_install(RELEASE, NAMESPACE, &["--set", "webhook.enabled=false"]);
    let chart = cluster.chart_replicas(NAMESPACE, DEPLOYMENT);
    cluster.kubectl(&["create", "namespace", "shop"]);
    chart
}

/// A Secret `namespace/name` holding `key` under the key `key`.
fn secret(namespace: &str, name: &str, key: &[u8]) -> String {
    use base64::Engine as _;
    serde_json::to_string(&json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"key": base64::engine::general_purpose::STANDARD.encode(key)},
    }))
    .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_and_three_replicas_converge_as_its_service_account() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let (chart, mut replicas) = install(&cluster).await;
    let first = replicas[0].as_ref().expect("replica");
    assert!(
        first.webhook.is_some(),
        "the chart's Deployment serves the webhook"
    );
    cluster.point_webhook_at(
        DEPLOYMENT,
        first.webhook.expect("webhook").port(),
        chart.webhook_cert.as_deref().expect("webhook certificate"),
    );
    let idp = Idp::start().await;
    let iss = idp.issuer.clone();
    cluster.apply(&policy("orders", spec(&iss, "api://v1")));

    let token = |aud: &str| idp.token(aud);
    let (v1, v2, v3) = (token("api://v1"), token("api://v2"), token("api://v3"));
    for replica in replicas.iter().flatten() {
        assert!(eventually(Duration::from_secs(5), async || allowed(replica, &v1).await).await);
        assert!(!allowed(replica, &v2).await);
    }
    status_becomes(&cluster, "generation 1 on 3/3, Ready", |s| {
        s["observedGeneration"] == 1
            && s["loaded"] == "3/3"
            && s["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
    })
    .await;

    // Update: every replica enforces the new generation; status follows.
    cluster.apply(&policy("orders", spec(&iss, "api://v2")));
    let changed = Instant::now();
    for replica in replicas.iter().flatten() {
        assert!(
            eventually(Duration::from_secs(5), async || allowed(replica, &v2).await
                && !allowed(replica, &v1).await)
            .await
        );
    }
    eprintln!(
        "3 replicas enforced generation 2 within {:?}",
        changed.elapsed()
    );
    status_becomes(&cluster, "generation 2 on 3/3", |s| {
        s["observedGeneration"] == 2 && s["loaded"] == "3/3"
    })
    .await;
    eprintln!(
        "kubectl get jwtpolicies -A -o wide (3 replicas):\n{}",
        cluster.kubectl(&["get", "jwtpolicies", "-A", "-o", "wide"])
    );

    // A Secret-backed issuer, then the Secret rotates.
    let internal = "https://internal.example.com";
    cluster.apply(&secret("shop", "hmac", &[1u8; 32]));
    cluster.apply(&policy(
        "internal",
        json!({
            "match": {"hosts": ["internal.example.com"]},
            "issuers": [{"issuer": internal, "audiences": [AUDIENCE],
                         "sharedSecret": {"secretRef": {"name": "hmac", "key": "key"}}}],
        }),
    ));
    let hmac = |k: u8| {
        SigningKey::hmac("h", "HS256", &[k; 32])
            .mint(&claims(internal, json!({})))
            .expect("mint")
    };
    let internal_allows = async |replica: &Tollgate, token: &str| {
        outcome(&check_host(&replica.url(), "internal.example.com", Some(token)).await).0
    };
    for replica in replicas.iter().flatten() {
        assert!(
            eventually(Duration::from_secs(5), async || internal_allows(
                replica,
                &hmac(1)
            )
            .await)
            .await
        );
    }
    cluster.apply(&secret("shop", "hmac", &[2u8; 32]));
    for replica in replicas.iter().flatten() {
        assert!(
            eventually(Duration::from_secs(5), async || internal_allows(
                replica,
                &hmac(2)
            )
            .await
                && !internal_allows(replica, &hmac(1)).await)
            .await,
            "the rotated Secret applies on every replica"
        );
    }

    // The API server calls the chart's webhook: a policy that compiles is admitted (above); one
    // that does not is refused with the compiler's message.
    let refused = cluster
        .try_apply(&policy("squatter", spec(&iss, "api://v9")))
        .expect_err("a second policy for the same host is refused");
    assert!(
        refused.contains("denied the request")
            && refused.contains("HostConflict")
            && refused.contains("shop/orders"),
        "{refused}"
    );

    // The status writer dies (SIGKILL, no goodbye): another replica takes the Lease over.
    let leader = status_holder(&cluster).expect("a replica holds the status Lease");
    let index: usize = leader
        .trim_start_matches("replica-")
        .parse()
        .expect("replica name");
    drop(replicas[index].take());
    let point_webhook = |replica: &Tollgate| {
        cluster.point_webhook_at(
            DEPLOYMENT,
            replica.webhook.expect("webhook address").port(),
            chart.webhook_cert.as_deref().expect("webhook certificate"),
        )
    };
    point_webhook(replicas.iter().flatten().next().expect("a live replica"));
    cluster.apply(&policy("orders", spec(&iss, "api://v3")));
    for replica in replicas.iter().flatten() {
        assert!(eventually(Duration::from_secs(5), async || allowed(replica, &v3).await).await);
    }
    status_becomes(&cluster, "generation 3 on the 2 live replicas", |s| {
        s["observedGeneration"] == 3 && s["loaded"] == "2/2"
    })
    .await;
    let successor = status_holder(&cluster).expect("a new holder");
    assert_ne!(successor, leader, "the status Lease moved");
    eprintln!(
        "after {leader} was killed ({successor} writes status):\n{}",
        cluster.kubectl(&["get", "jwtpolicies", "-A", "-o", "wide"])
    );

    // A graceful stop releases the Lease at once: the last replica holds it before the
    // stopped holder's Lease would have expired.
    let index: usize = successor
        .trim_start_matches("replica-")
        .parse()
        .expect("replica name");
    let stopped = Instant::now();
    let holder = replicas[index].take().expect("holder");
    let holder_logs = holder.logs.clone();
    let status = holder.terminate();
    assert!(status.success(), "{status}");
    let goodbye = holder_logs.lock().expect("logs").join("\n");
    assert!(
        goodbye.contains("released the status Lease"),
        "a graceful stop releases the status Lease:\n{goodbye}"
    );
    let last = replicas.iter().flatten().next().expect("one replica left");
    let taken = eventually(Duration::from_secs(10), async || {
        status_holder(&cluster).is_some_and(|h| h != successor)
    })
    .await;
    assert!(
        taken,
        "the Lease was not taken over: {:?}",
        status_holder(&cluster)
    );
    eprintln!(
        "a graceful stop handed the status Lease over in {:?}",
        stopped.elapsed()
    );
    status_becomes(&cluster, "generation 3 on the last replica", |s| {
        s["observedGeneration"] == 3 && s["loaded"] == "1/1"
    })
    .await;

    point_webhook(last);

    // Deleted: stops matching on every replica.
    cluster.kubectl(&["delete", "jwtpolicy", "orders", "-n", "shop"]);
    assert!(
        eventually(Duration::from_secs(5), async || {
            outcome(&check(&last.url(), "/", Some(&v3)).await).2 == "no_policy"
        })
        .await
    );

    // The webhook is down (the last replica stopped): the chart's failurePolicy (Fail) refuses.
    let webhook = last.webhook.expect("webhook address");
    replicas.clear();
    let refused = cluster
        .try_apply(&policy("orders", spec(&iss, "api://v4")))
        .expect_err("failurePolicy: Fail refuses while the webhook is down");
    assert!(refused.contains("failed calling webhook"), "{refused}");
    // failurePolicy: Ignore (a helm upgrade) admits. The test's re-pointed clientConfig (url)
    // would merge with the chart's (service) into an invalid object: the upgrade recreates it.
    cluster.kubectl(&["delete", "validatingwebhookconfiguration", DEPLOYMENT]);
    cluster
        .helm(&[
            "upgrade",
            RELEASE,
            &chart_path(),
            "-n",
            NAMESPACE,
            "--reuse-values",
            "--set",
            "webhook.failurePolicy=Ignore",
        ])
        .expect("helm upgrade");
    cluster.point_webhook_at(
        DEPLOYMENT,
        webhook.port(),
        chart.webhook_cert.as_deref().expect("webhook certificate"),
    );
    cluster.apply(&policy("orders", spec(&iss, "api://v4")));
}

fn chart_path() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/helm/tollgate")
        .display()
        .to_string()
}

/// The readiness answer of a replica: (status, body).
fn readiness(replica: &Tollgate) -> (u16, String) {
    http_get(&format!("http://{}/readyz", replica.admin)).unwrap_or((0, String::new()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verb_missing_from_the_chart_rbac_surfaces_instead_of_a_silent_stall() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let chart = install_without_webhook(&cluster);
    let idp = Idp::start().await;
    let iss = idp.issuer.clone();
    cluster.apply(&policy("orders", spec(&iss, "api://v1")));
    let token = idp.token("api://v1");

    // The ClusterRole loses `list` on jwtpolicies: the replica cannot load any policy.
    let role = format!("{DEPLOYMENT}-policies");
    let rules = cluster
        .get("clusterrole", None, &role)
        .expect("the chart's ClusterRole")["rules"]
        .clone();
    let verbs = rules[0]["verbs"].clone();
    assert_eq!(rules[0]["resources"], json!(["jwtpolicies"]));
    let without_list: Vec<&Value> = verbs
        .as_array()
        .expect("verbs")
        .iter()
        .filter(|v| *v != "list")
        .collect();
    cluster.kubectl(&[
        "patch",
        "clusterrole",
        &role,
        "--type",
        "json",
        "-p",
        &json!([{"op": "replace", "path": "/rules/0/verbs", "value": without_list}]).to_string(),
    ]);
    let replica = chart.spawn("replica-0");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, body) = readiness(&replica);
    assert_eq!(status, 503, "not ready without its policies: {body}");
    assert!(
        body.contains("forbidden") && body.contains("jwtpolicies"),
        "readiness says why: {body}"
    );
    let logs = replica.logs().join("\n");
    assert!(
        logs.contains("\"level\":\"ERROR\"") && logs.contains("forbidden") && logs.contains("list"),
        "the log names the missing permission:\n{logs}"
    );
    assert!(!allowed(&replica, &token).await);

    // The verb comes back: the replica loads and becomes ready without a restart.
    cluster.kubectl(&[
        "patch",
        "clusterrole",
        &role,
        "--type",
        "json",
        "-p",
        &json!([{"op": "replace", "path": "/rules/0/verbs", "value": verbs}]).to_string(),
    ]);
    replica.wait_ready(Duration::from_secs(60));
    assert!(allowed(&replica, &token).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_ride_out_api_server_and_etcd_restarts_and_an_expired_watch() {
    let Some(mut cluster) = Cluster::start() else {
        return;
    };
    let chart = install_without_webhook(&cluster);
    let idp = Idp::start().await;
    let iss = idp.issuer.clone();
    let token = |aud: &str| idp.token(aud);
    cluster.apply(&policy("orders", spec(&iss, "api://v1")));
    let replica = chart.start("replica-0");
    let enforces = async |aud: &str, within: Duration| {
        let (wanted, other) = (token(aud), token("api://none"));
        eventually(within, async || {
            allowed(&replica, &wanted).await && !allowed(&replica, &other).await
        })
        .await
    };
    assert!(enforces("api://v1", Duration::from_secs(5)).await);

    // kube-apiserver stops: the replica keeps judging with its last good policies, stays ready,
    // and says which source fails; it comes back and a change made then applies.
    cluster.stop_apiserver();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(allowed(&replica, &token("api://v1")).await);
    let (status, body) = readiness(&replica);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("JwtPolicy watch"), "{body}");
    cluster.start_apiserver();
    cluster.apply(&policy("orders", spec(&iss, "api://v2")));
    assert!(
        enforces("api://v2", Duration::from_secs(40)).await,
        "the change after the API server's restart applies"
    );

    // etcd stops under a running API server: the same.
    cluster.stop_etcd();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(allowed(&replica, &token("api://v2")).await);
    assert_eq!(readiness(&replica).0, 200);
    cluster.start_etcd();
    cluster.wait_apiserver_ready();
    cluster.apply(&policy("orders", spec(&iss, "api://v3")));
    assert!(
        enforces("api://v3", Duration::from_secs(40)).await,
        "the change after etcd's restart applies"
    );

    // The watch expires: the replica is frozen while the API server restarts, policies change
    // and etcd compacts its history, so it resumes from a resource version that is gone (410).
    // It lists again and loses no change: the update and the new policy both apply.
    replica.signal("STOP");
    cluster.stop_apiserver();
    cluster.start_apiserver();
    cluster.apply(&policy("orders", spec(&iss, "api://v4")));
    cluster.apply(&policy(
        "billing",
        json!({
            "match": {"hosts": ["billing.example.com"]},
            "issuers": [{"issuer": iss, "audiences": ["api://billing"], "allowInsecureHttp": true}],
        }),
    ));
    cluster.compact_etcd();
    replica.signal("CONT");
    assert!(
        enforces("api://v4", Duration::from_secs(40)).await,
        "the update made while the watch was away applies"
    );
    let billing = token("api://billing");
    assert!(
        eventually(Duration::from_secs(10), async || {
            outcome(&check_host(&replica.url(), "billing.example.com", Some(&billing)).await).0
        })
        .await,
        "the policy created while the watch was away loads"
    );
    let logs = replica.logs();
    let expired: Vec<&String> = logs
        .iter()
        .filter(|l| {
            l.contains("JwtPolicy watch")
                && l.contains("too old resource version")
                && l.contains("Expired")
        })
        .collect();
    assert!(
        !expired.is_empty(),
        "the watch expired (410 Gone) and was relisted:\n{}",
        logs.join("\n")
    );
    assert_eq!(readiness(&replica).0, 200);
}

/// `spec` in a JwtPolicy CRD that accepts anything, as an older or looser version of the CRD
/// might have: objects stored under it stay as they are when the strict CRD replaces it.
fn loose_crd() -> String {
    let mut crd: Value = serde_yaml::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("crds/jwtpolicies.tollgate.dev.yaml"),
        )
        .expect("CRD"),
    )
    .expect("CRD YAML");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"] =
        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    serde_json::to_string(&crd).expect("json")
}

fn labelled(namespace: &str, name: &str, shard: &str, spec: Value) -> String {
    serde_json::to_string(&json!({
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "JwtPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": {"tollgate.dev/shard": shard}},
        "spec": spec,
    }))
    .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_sharded_install_reads_only_its_policies_and_secrets_by_name() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    // An object the strict CRD would refuse, stored under a looser one before it.
    cluster.apply(&loose_crd());
    cluster.wait_established(&["jwtpolicies.tollgate.dev"], "60s");
    for namespace in ["shop", "billing"] {
        cluster.kubectl(&["create", "namespace", namespace]);
    }
    cluster.apply(&labelled(
        "shop",
        "broken",
        "a",
        json!({"issuers": "not a list"}),
    ));
    cluster.install_crd();
    let refused = cluster
        .try_apply(&labelled(
            "shop",
            "broken2",
            "a",
            json!({"issuers": "not a list"}),
        ))
        .expect_err("the strict CRD refuses it now");
    assert!(refused.contains("issuers"), "{refused}");

    let iss = "https://internal.example.com";
    let hmac_spec = |host: &str| {
        json!({
            "match": {"hosts": [host]},
            "issuers": [{"issuer": iss, "audiences": [AUDIENCE], "sharedSecret": {"secretRef": {"name": "hmac", "key": "key"}}}],
        })
    };
    let secret_in = |namespace: &str, key: u8| secret(namespace, "hmac", &[key; 32]);
    cluster.apply(&secret_in("shop", 1));
    cluster.apply(&secret_in("billing", 1));
    cluster.apply(&labelled("shop", "hmac", "a", hmac_spec(HOST)));
    cluster.apply(&labelled(
        "shop",
        "other-shard",
        "b",
        hmac_spec("b.example.com"),
    ));
    cluster.apply(&labelled(
        "billing",
        "elsewhere",
        "a",
        hmac_spec("c.example.com"),
    ));

    cluster.helm_install(
        RELEASE,
        NAMESPACE,
        &[
            "--set",
            "webhook.enabled=false",
            "--set",
            "watchNamespaces={shop}",
            "--set",
            "selector=tollgate.dev/shard=a",
        ],
    );
    let chart = cluster.chart_replicas(NAMESPACE, DEPLOYMENT);
    let replica = chart.start("solo");
    let mint = |key: u8| {
        SigningKey::hmac("h", "HS256", &[key; 32])
            .mint(&claims(iss, json!({})))
            .expect("mint")
    };
    assert!(
        eventually(Duration::from_secs(5), async || allowed(&replica, &mint(1))
            .await)
        .await
    );
    assert!(!allowed(&replica, &mint(2)).await);

    // Rotation of the referenced Secret.
    cluster.apply(&secret_in("shop", 2));
    assert!(
        eventually(Duration::from_secs(5), async || allowed(&replica, &mint(2))
            .await
            && !allowed(&replica, &mint(1)).await)
        .await
    );

    // The object that does not parse is logged and skipped; the watch goes on.
    let logs = replica.logs().join("\n");
    assert!(
        logs.contains("shop/broken") && logs.contains("does not parse"),
        "{logs}"
    );
    // Other shard, other namespace: not this deployment's.
    for host in ["b.example.com", "c.example.com"] {
        let answer = check_host(&replica.url(), host, Some(&mint(2))).await;
        assert_eq!(outcome(&answer).2, "no_policy", "{host}");
    }
    // The chart's namespaced RBAC: no JwtPolicy or Secret outside the watched namespace.
    let account = format!("system:serviceaccount:{NAMESPACE}:{DEPLOYMENT}");
    for (verb, resource, namespace, expected) in [
        ("list", "jwtpolicies.tollgate.dev", "shop", "yes"),
        ("list", "jwtpolicies.tollgate.dev", "billing", "no"),
        ("get", "secrets", "billing", "no"),
    ] {
        let answer = cluster.kubectl_output(&[
            "auth", "can-i", verb, resource, "-n", namespace, "--as", &account,
        ]);
        assert_eq!(
            String::from_utf8_lossy(&answer.stdout).trim(),
            expected,
            "{verb} {resource} in {namespace}"
        );
    }
    // The API server's audit log: the replica read its Secret by name, and its policies only
    // in its namespace with its selector.
    let requests: Vec<(String, String)> = cluster
        .audit()
        .iter()
        .filter(|e| e["user"]["username"] == account.as_str() && e["stage"] == "ResponseComplete")
        .filter_map(|e| {
            Some((
                e["objectRef"]["resource"].as_str()?.to_string(),
                e["requestURI"].as_str()?.to_string(),
            ))
        })
        .collect();
    let secrets: Vec<&String> = requests
        .iter()
        .filter(|(resource, _)| resource == "secrets")
        .map(|(_, uri)| uri)
        .collect();
    assert!(!secrets.is_empty(), "{requests:?}");
    assert!(
        secrets
            .iter()
            .all(|uri| uri.starts_with("/api/v1/namespaces/shop/secrets?")
                && uri.contains("fieldSelector=metadata.name%3Dhmac")),
        "{secrets:?}"
    );
    let policies: Vec<&String> = requests
        .iter()
        .filter(|(resource, _)| resource == "jwtpolicies")
        .map(|(_, uri)| uri)
        .filter(|uri| !uri.contains("/status"))
        .collect();
    assert!(!policies.is_empty(), "{requests:?}");
    assert!(
        policies.iter().all(|uri| uri
            .starts_with("/apis/tollgate.dev/v1alpha1/namespaces/shop/jwtpolicies")
            && uri.contains("labelSelector=tollgate.dev%2Fshard%3Da")),
        "{policies:?}"
    );
}

/// A key Secret of `apiKeys` (labelled `tollgate.dev/api-key: orders` when `labelled`).
fn key_secret(name: &str, key: &str, owner: &str, labelled: bool) -> String {
    let labels = if labelled {
        json!({"tollgate.dev/api-key": "orders"})
    } else {
        json!({"other": "orders"})
    };
    serde_json::to_string(&json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "stringData": {"key": key, "owner": owner, "scopes": "orders:read"},
    }))
    .expect("json")
}

/// (allowed, status, reason, the upstream's x-owner) of a check with `key` in `x-api-key`.
async fn with_key(replica: &Tollgate, key: &str) -> (bool, u16, String, Option<String>) {
    let probe = tollgate::client::Probe {
        host: HOST.into(),
        path: "/".into(),
        method: "GET".into(),
        headers: vec![("x-api-key".into(), key.into())],
        ..Default::default()
    };
    let answer = tollgate::client::send(&replica.url(), &probe)
        .await
        .expect("Check RPC");
    let owner = match &answer.http_response {
        Some(tollgate::proto::auth::check_response::HttpResponse::OkResponse(ok)) => ok
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == "x-owner")
            .map(|h| h.value.clone()),
        _ => None,
    };
    let (allowed, status, reason) = outcome(&answer);
    (allowed, status, reason, owner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_secrets_added_and_removed_by_label_take_effect_without_a_restart() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    // The chart's RBAC, as its ServiceAccount: the label-selected list/watch must be allowed.
    let chart = install_without_webhook(&cluster);
    const ACME: &str = "acme-9f8e7d6c5b4a39281706f5e4d3c2b1a0";
    const GLOBEX: &str = "globex-0a1b2c3d4e5f60718293a4b5c6d7e8f9";
    cluster.apply(&key_secret("key-acme", ACME, "acme", true));
    cluster.apply(&policy(
        "orders",
        json!({
            "match": {"hosts": [HOST]},
            "apiKeys": {"secretSelector": {"matchLabels": {"tollgate.dev/api-key": "orders"}}},
            "forward": {"claimsToHeaders": [{"claim": "sub", "header": "x-owner"}]},
        }),
    ));
    let replica = chart.start("replica-0");
    let accepted = eventually(Duration::from_secs(10), async || {
        with_key(&replica, ACME).await.0
    })
    .await;
    assert!(
        accepted,
        "the labelled key Secret was not read: {:?}",
        with_key(&replica, ACME).await
    );
    assert_eq!(
        with_key(&replica, ACME).await,
        (true, 200, "valid".into(), Some("acme".into()))
    );
    assert_eq!(
        with_key(&replica, GLOBEX).await,
        (false, 401, "api_key_invalid".into(), None)
    );

    // A Secret without the label is not a key; once labelled, it is (no restart).
    cluster.apply(&key_secret("key-globex", GLOBEX, "globex", false));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !with_key(&replica, GLOBEX).await.0,
        "an unlabelled Secret is a key"
    );
    cluster.apply(&key_secret("key-globex", GLOBEX, "globex", true));
    let added = eventually(Duration::from_secs(10), async || {
        with_key(&replica, GLOBEX).await == (true, 200, "valid".into(), Some("globex".into()))
    })
    .await;
    assert!(added, "the added key was not accepted without a restart");

    // Deleting a key Secret revokes its key.
    cluster.kubectl(&["delete", "secret", "-n", "shop", "key-acme"]);
    let removed = eventually(Duration::from_secs(10), async || {
        with_key(&replica, ACME).await.2 == "api_key_invalid"
    })
    .await;
    assert!(removed, "the deleted key still works");
    assert!(with_key(&replica, GLOBEX).await.0);

    // A key Secret that is no key (too short) fails the policy: the last good keys serve on,
    // and the status names the Secret, never the key.
    cluster.apply(&key_secret("key-short", "short-key", "initech", true));
    status_becomes(&cluster, "the short key refused", |s| {
        s["conditions"].as_array().is_some_and(|c| {
            c.iter().any(|c| {
                c["type"] == "Accepted"
                    && c["status"] == "False"
                    && c["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("shop/key-short") && !m.contains("short-key\""))
            })
        })
    })
    .await;
    assert!(with_key(&replica, GLOBEX).await.0);
    assert!(
        !replica.logs().join("\n").contains(&GLOBEX[..16]),
        "a key is in the log"
    );
}

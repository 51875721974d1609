//! `tollgate serve --kubernetes` against the fake API server: several replicas, policy changes,
//! Secrets, namespaces and selectors.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate::local_issuer::server::IdpServer;
use tollgate::local_issuer::{SigningKey, jwks};

use crate::apiserver::{FakeApiServer, Kind, jwt_policy, secret};
use crate::support::*;

fn spec(issuer: &str, audience: &str) -> Value {
    json!({
        "match": {"hosts": [HOST]},
        "issuers": [{"issuer": issuer, "audiences": [audience], "allowInsecureHttp": true}],
    })
}

async fn allowed(tollgate: &Tollgate, token: &str) -> bool {
    outcome(&check(&tollgate.url(), "/", Some(token)).await).0
}

/// `kubectl get jwtpolicies -o wide` as the fake API server holds them (the CRD's printer columns).
fn kubectl_get(api: &FakeApiServer) -> String {
    let mut out = format!(
        "{:<8} {:<14} {:<6} {:<18} {:<30} {:<7} {}\n",
        "NAMESPACE", "NAME", "READY", "HOSTS", "ISSUERS", "LOADED", "REASON"
    );
    for policy in api.all(Kind::JwtPolicy) {
        let condition = |t: &str, field: &str| {
            policy["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == t))
                .and_then(|c| c[field].as_str())
                .unwrap_or("")
                .to_string()
        };
        let issuers: Vec<&str> = policy["spec"]["issuers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["issuer"].as_str())
            .collect();
        out.push_str(&format!(
            "{:<8} {:<14} {:<6} {:<18} {:<30} {:<7} {}\n",
            policy["metadata"]["namespace"].as_str().unwrap_or(""),
            policy["metadata"]["name"].as_str().unwrap_or(""),
            condition("Ready", "status"),
            policy["spec"]["match"]["hosts"].to_string(),
            format!("{issuers:?}"),
            policy["status"]["loaded"].as_str().unwrap_or(""),
            condition("Accepted", "reason"),
        ));
    }
    out
}

/// Waits until the status of shop/orders satisfies `check`.
async fn status_becomes(api: &FakeApiServer, what: &str, check: impl Fn(&Value) -> bool) {
    let ok = eventually(Duration::from_secs(15), async || {
        api.get(Kind::JwtPolicy, "shop", "orders")
            .is_some_and(|p| check(&p["status"]))
    })
    .await;
    assert!(
        ok,
        "status never showed {what}: {:#}",
        api.get(Kind::JwtPolicy, "shop", "orders")
            .unwrap_or_default()["status"]
    );
}

fn status_holder(api: &FakeApiServer) -> Option<String> {
    api.get(Kind::Lease, "tollgate", "tollgate-tollgate-status")?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_enforces_a_policy_change_within_a_second() {
    let api = FakeApiServer::start().await;
    let key = SigningKey::ec("k1", "ES256").expect("key");
    let idp = IdpServer::start("127.0.0.1:0".parse().expect("addr"), jwks(&[&key]))
        .await
        .expect("idp");
    let iss = idp.issuer();
    let dir = tempfile::tempdir().expect("dir");
    let kubeconfig = api.kubeconfig(dir.path());
    api.apply(
        Kind::JwtPolicy,
        jwt_policy("shop", "orders", HashMap::new(), spec(&iss, "api://v1")),
    );

    let mut replicas: Vec<Option<Tollgate>> = (0..3)
        .map(|i| {
            Some(Tollgate::start_kubernetes(
                &kubeconfig,
                &format!("replica-{i}"),
                &[],
            ))
        })
        .collect();
    let token = |aud: &str| key.mint(&claims(&iss, json!({"aud": aud}))).expect("mint");
    let (v1, v2, v3) = (token("api://v1"), token("api://v2"), token("api://v3"));
    for replica in replicas.iter().flatten() {
        assert!(allowed(replica, &v1).await);
        assert!(!allowed(replica, &v2).await);
    }
    status_becomes(&api, "generation 1 on 3/3, Ready", |s| {
        s["observedGeneration"] == 1
            && s["loaded"] == "3/3"
            && s["conditions"][1]["status"] == "True"
    })
    .await;

    api.apply(
        Kind::JwtPolicy,
        jwt_policy("shop", "orders", HashMap::new(), spec(&iss, "api://v2")),
    );
    let changed = Instant::now();
    let mut converged = vec![None; replicas.len()];
    while converged.iter().any(Option::is_none) && changed.elapsed() < Duration::from_secs(5) {
        for (i, replica) in replicas.iter().flatten().enumerate() {
            if converged[i].is_none() && allowed(replica, &v2).await && !allowed(replica, &v1).await
            {
                converged[i] = Some(changed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let times: Vec<Duration> = converged
        .iter()
        .map(|t| t.expect("every replica enforces the new version"))
        .collect();
    eprintln!("replicas enforced the new policy version after {times:?}");
    assert!(
        times.iter().all(|t| *t < Duration::from_secs(1)),
        "{times:?}"
    );
    status_becomes(&api, "generation 2 on 3/3", |s| {
        s["observedGeneration"] == 2 && s["loaded"] == "3/3"
    })
    .await;
    eprintln!("after the change:\n{}", kubectl_get(&api));

    // The status writer dies (SIGKILL, no goodbye): another replica takes the Lease over.
    let leader = status_holder(&api).expect("a replica holds the status Lease");
    let index: usize = leader
        .trim_start_matches("replica-")
        .parse()
        .expect("replica name");
    drop(replicas[index].take());
    api.apply(
        Kind::JwtPolicy,
        jwt_policy("shop", "orders", HashMap::new(), spec(&iss, "api://v3")),
    );
    for replica in replicas.iter().flatten() {
        assert!(eventually(Duration::from_secs(1), async || allowed(replica, &v3).await).await);
    }
    status_becomes(&api, "generation 3 on the 2 live replicas", |s| {
        s["observedGeneration"] == 3 && s["loaded"] == "2/2"
    })
    .await;
    let successor = status_holder(&api).expect("a new holder");
    assert_ne!(successor, leader, "the status Lease moved");
    eprintln!(
        "after {leader} was killed ({successor} writes status):\n{}",
        kubectl_get(&api)
    );

    // Deleted: stops matching at once, everywhere.
    api.delete(Kind::JwtPolicy, "shop", "orders");
    for replica in replicas.iter().flatten() {
        let gone = eventually(Duration::from_secs(1), async || {
            outcome(&check(&replica.url(), "/", Some(&v3)).await).2 == "no_policy"
        })
        .await;
        assert!(gone);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_bad_objects_namespaces_and_selectors() {
    let api = FakeApiServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let kubeconfig = api.kubeconfig(dir.path());
    let iss = "https://internal.example.com";
    let hmac_spec = |host: &str| {
        json!({
            "match": {"hosts": [host]},
            "issuers": [{"issuer": iss, "audiences": [AUDIENCE], "sharedSecret": {"secretRef": {"name": "hmac", "key": "key"}}}],
        })
    };
    let selected = HashMap::from([("tollgate.dev/shard", "a")]);
    api.apply(Kind::Secret, secret("shop", "hmac", &[("key", &[1u8; 32])]));
    api.apply(
        Kind::JwtPolicy,
        jwt_policy("shop", "hmac", selected.clone(), hmac_spec(HOST)),
    );
    // Malformed: must be skipped without stopping the watch.
    api.apply(
        Kind::JwtPolicy,
        jwt_policy(
            "shop",
            "broken",
            selected.clone(),
            json!({"issuers": "not a list"}),
        ),
    );
    // Other shard and other namespace: not this deployment's.
    api.apply(
        Kind::JwtPolicy,
        jwt_policy(
            "shop",
            "other-shard",
            HashMap::from([("tollgate.dev/shard", "b")]),
            hmac_spec("b.example.com"),
        ),
    );
    api.apply(
        Kind::JwtPolicy,
        jwt_policy(
            "billing",
            "elsewhere",
            selected.clone(),
            hmac_spec("c.example.com"),
        ),
    );

    let tollgate = Tollgate::start_kubernetes(
        &kubeconfig,
        "solo",
        &["--namespaces", "shop", "--selector", "tollgate.dev/shard=a"],
    );
    let old = SigningKey::hmac("h", "HS256", &[1u8; 32])
        .mint(&claims(iss, json!({})))
        .expect("mint");
    let new = SigningKey::hmac("h", "HS256", &[2u8; 32])
        .mint(&claims(iss, json!({})))
        .expect("mint");
    assert!(allowed(&tollgate, &old).await);
    assert!(!allowed(&tollgate, &new).await);

    // Rotation of the referenced Secret.
    api.apply(Kind::Secret, secret("shop", "hmac", &[("key", &[2u8; 32])]));
    assert!(
        eventually(Duration::from_secs(2), async || allowed(&tollgate, &new)
            .await
            && !allowed(&tollgate, &old).await)
        .await
    );

    // The API server goes away: the last good snapshot keeps serving, and the replica stays ready.
    api.set_down(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(allowed(&tollgate, &new).await);
    assert_eq!(
        http_get(&format!("http://{}/readyz", tollgate.admin)).map(|r| r.0),
        Ok(200)
    );
    let logs = tollgate.logs().join("\n");
    assert!(
        logs.contains("watch failed"),
        "the outage is visible in the logs:\n{logs}"
    );
    // It comes back: the watches resume and a change made meanwhile applies.
    api.set_down(false);
    api.apply(Kind::Secret, secret("shop", "hmac", &[("key", &[1u8; 32])]));
    assert!(
        eventually(Duration::from_secs(10), async || allowed(&tollgate, &old)
            .await
            && !allowed(&tollgate, &new).await)
        .await
    );

    // The Secret is watched by name, never listed cluster-wide or namespace-wide.
    let requests = api.requests();
    let secret_requests: Vec<&String> = requests.iter().filter(|r| r.contains("Secret")).collect();
    assert!(!secret_requests.is_empty());
    assert!(
        secret_requests
            .iter()
            .all(|r| r.contains("ns=shop") && r.contains("fields=metadata.name=hmac")),
        "{secret_requests:?}"
    );
    let policy_watches: Vec<&String> = requests
        .iter()
        .filter(|r| r.starts_with("GET JwtPolicy"))
        .collect();
    assert!(
        policy_watches
            .iter()
            .all(|r| r.contains("ns=shop") && r.contains("labels=tollgate.dev/shard=a")),
        "{policy_watches:?}"
    );

    // Out-of-scope policies never load; the broken one is logged, not fatal.
    let logs = tollgate.logs().join("\n");
    assert!(
        logs.contains("shop/broken") && logs.contains("does not parse"),
        "{logs}"
    );
    let metrics = tollgate.metrics();
    for host in ["b.example.com", "c.example.com"] {
        let probe = tollgate::client::Probe {
            host: host.into(),
            path: "/".into(),
            method: "GET".into(),
            token: Some(new.clone()),
            ..Default::default()
        };
        let response = tollgate::client::send(&tollgate.url(), &probe)
            .await
            .expect("check");
        assert_eq!(outcome(&response).2, "no_policy", "{host}: {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admission_webhook_answers_over_https_with_the_replicas_compile() {
    let api = FakeApiServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let kubeconfig = api.kubeconfig(dir.path());
    // A certificate for the webhook, as cert-manager or the chart would mount it.
    let key = rcgen::KeyPair::generate().expect("key pair");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    std::fs::write(dir.path().join("tls.crt"), cert.pem()).expect("write");
    std::fs::write(dir.path().join("tls.key"), key.serialize_pem()).expect("write");
    let jwks_issuer = json!({"issuer": "https://idp.example.com/", "audiences": [AUDIENCE], "jwksUri": "https://idp.example.com/keys"});
    api.apply(
        Kind::JwtPolicy,
        jwt_policy(
            "shop",
            "orders",
            HashMap::new(),
            json!({"match": {"hosts": [HOST]}, "issuers": [jwks_issuer.clone()]}),
        ),
    );
    let cert_file = dir.path().join("tls.crt").display().to_string();
    let key_file = dir.path().join("tls.key").display().to_string();
    let tollgate = Tollgate::start_kubernetes(
        &kubeconfig,
        "webhook",
        &[
            "--webhook-addr",
            "127.0.0.1:0",
            "--webhook-cert",
            &cert_file,
            "--webhook-key",
            &key_file,
        ],
    );
    let port = tollgate.webhook.expect("webhook address").port();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.pem().as_bytes()).expect("cert"))
        .build()
        .expect("client");
    let ask = |name: &'static str, spec: Value| {
        let review = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": format!("uid-{name}"),
                "kind": {"group": "tollgate.dev", "version": "v1alpha1", "kind": "JwtPolicy"},
                "resource": {"group": "tollgate.dev", "version": "v1alpha1", "resource": "jwtpolicies"},
                "operation": "CREATE", "userInfo": {"username": "a-user"}, "name": name, "namespace": "shop",
                "object": {"apiVersion": "tollgate.dev/v1alpha1", "kind": "JwtPolicy", "metadata": {"name": name, "namespace": "shop"}, "spec": spec},
            }
        });
        let request = client
            .post(format!("https://localhost:{port}/validate-jwtpolicy"))
            .header("content-type", "application/json")
            .body(review.to_string());
        async move {
            let body = request
                .send()
                .await
                .expect("webhook answers")
                .bytes()
                .await
                .expect("body");
            let response: Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(response["kind"], "AdmissionReview");
            assert_eq!(response["response"]["uid"], format!("uid-{name}"));
            (
                response["response"]["allowed"] == true,
                response["response"]["status"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        }
    };
    assert_eq!(
        ask(
            "billing",
            json!({"match": {"hosts": ["billing.example.com"]}, "issuers": [jwks_issuer.clone()]})
        )
        .await,
        (true, String::new())
    );
    let (allowed, message) = ask(
        "squatter",
        json!({"match": {"hosts": [HOST]}, "issuers": [jwks_issuer.clone()]}),
    )
    .await;
    assert!(
        !allowed && message.contains("HostConflict") && message.contains("shop/orders"),
        "{message}"
    );
    let (allowed, message) = ask(
        "bad",
        json!({"issuers": [{"issuer": "https://idp/", "audiences": [], "algorithms": ["none"]}]}),
    )
    .await;
    assert!(
        !allowed && message.contains("\"none\" (unsigned tokens) is never accepted"),
        "{message}"
    );
}

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

    let replicas: Vec<Tollgate> = (0..3)
        .map(|_| Tollgate::start_kubernetes(&kubeconfig, &[]))
        .collect();
    let v1 = key
        .mint(&claims(&iss, json!({"aud": "api://v1"})))
        .expect("mint");
    let v2 = key
        .mint(&claims(&iss, json!({"aud": "api://v2"})))
        .expect("mint");
    for replica in &replicas {
        assert!(allowed(replica, &v1).await);
        assert!(!allowed(replica, &v2).await);
    }

    api.apply(
        Kind::JwtPolicy,
        jwt_policy("shop", "orders", HashMap::new(), spec(&iss, "api://v2")),
    );
    let changed = Instant::now();
    let mut converged = vec![None; replicas.len()];
    while converged.iter().any(Option::is_none) && changed.elapsed() < Duration::from_secs(5) {
        for (i, replica) in replicas.iter().enumerate() {
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

    // Deleted: stops matching at once, everywhere.
    api.delete(Kind::JwtPolicy, "shop", "orders");
    for replica in &replicas {
        let gone = eventually(Duration::from_secs(1), async || {
            outcome(&check(&replica.url(), "/", Some(&v2)).await).2 == "no_policy"
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
    assert!(
        requests
            .iter()
            .filter(|r| r.contains("JwtPolicy"))
            .all(|r| r.contains("ns=shop") && r.contains("labels=tollgate.dev/shard=a")),
        "{requests:?}"
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

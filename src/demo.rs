//! `tollgate demo`: everything on this machine, no cluster, no internet. Starts a local
//! identity provider with a freshly generated key, writes an example policy file, serves it,
//! and judges three real tokens through the gRPC API: one accepted, one rejected, one
//! forbidden. Then it keeps running so you can try your own requests.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;

use crate::client::{self, Probe};
use crate::jwks::{FetchSettings, RefreshSettings};
use crate::local_issuer::server::IdpServer;
use crate::local_issuer::{SigningKey, jwks, now_secs};
use crate::policy::DefaultAction;
use crate::serve::{self, ServeConfig};

/// Options of `tollgate demo`.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Judge the example tokens, print, and exit (non-zero if a decision was not the expected one).
    pub once: bool,
}

const HOST: &str = "api.example.com";
const AUDIENCE: &str = "api://orders";

fn policy_yaml(issuer: &str) -> String {
    format!(
        r#"# A tollgate policy: edit this file while the demo runs, changes load without restart.
apiVersion: tollgate.dev/v1alpha1
kind: JwtPolicy
metadata:
  name: orders
  namespace: demo
spec:
  match:
    hosts: ["{HOST}"]
    paths: ["/orders"]
  issuers:
  - issuer: {issuer}
    audiences: ["{AUDIENCE}"]
    algorithms: ["RS256"]
    allowInsecureHttp: true      # the demo issuer is plain http on 127.0.0.1
  requiredClaims:
  - name: scp
    separator: " "
    values: ["orders.read"]
  rules:
  - paths: ["/orders/admin"]
    requiredClaims: [{{name: roles, values: ["admin"]}}]
  forward:
    claimsToHeaders: [{{claim: sub, header: x-user-id}}]
"#
    )
}

fn write_policy(dir: &Path, issuer: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("orders.yaml");
    std::fs::write(&path, policy_yaml(issuer))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

struct Example {
    title: &'static str,
    path: &'static str,
    token: String,
    expect_allow: bool,
}

/// Runs the demo until Ctrl-C (or, with `once`, until the examples are judged).
pub async fn run(options: DemoOptions) -> anyhow::Result<bool> {
    let key = SigningKey::rsa("demo-1", "RS256", 2048).context("generating the demo key")?;
    let idp = IdpServer::start("127.0.0.1:0".parse()?, jwks(&[&key]))
        .await
        .context("starting the demo identity provider")?;
    let issuer = idp.issuer();
    let dir = tempfile::Builder::new()
        .prefix("tollgate-demo-")
        .tempdir()
        .context("creating a temp dir")?;
    let policy_file = write_policy(dir.path(), &issuer)?;

    let now = now_secs();
    let claims = |exp: i64, scp: &str| json!({"iss": issuer, "sub": "user-1", "aud": AUDIENCE, "scp": scp, "iat": now - 60, "exp": exp});
    let examples = vec![
        Example {
            title: "accepted: valid token with scope orders.read",
            path: "/orders/42",
            token: key.mint(&claims(now + 3600, "orders.read"))?,
            expect_allow: true,
        },
        Example {
            title: "rejected: the same token, expired 10 minutes ago",
            path: "/orders/42",
            token: key.mint(&claims(now - 600, "orders.read"))?,
            expect_allow: false,
        },
        Example {
            title: "forbidden: valid token, but /orders/admin needs role admin",
            path: "/orders/admin",
            token: key.mint(&claims(now + 3600, "orders.read"))?,
            expect_allow: false,
        },
    ];

    let config = ServeConfig {
        source: crate::serve::PolicySource::Files(vec![dir.path().to_path_buf()]),
        grpc_addr: options.grpc_addr,
        admin_addr: options.admin_addr,
        default_action: DefaultAction::Deny,
        delegations: crate::policy::HostDelegations::none(),
        fetch: FetchSettings::default(),
        refresh: RefreshSettings::default(),
        poll: Duration::from_secs(5),
        webhook: None,
        http_addr: None,
        trusted_proxies: Vec::new(),
        client_cert_proxies: Vec::new(),
        http_header_timeout: crate::http::listener::HEADER_READ_TIMEOUT,
        ext_authz_path_prefix: crate::http::PathPrefix::default(),
        token_cache: Default::default(),
        grpc_tls: None,
        drain_timeout: Duration::from_secs(5),
        decision_log: Default::default(),
        tracing: None,
    };
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve::run(
        config,
        async move {
            tokio::select! {
                _ = serve::shutdown_signal() => {}
                _ = stop_rx => {}
            }
        },
        move |bound, shared| {
            let _ = bound_tx.send((bound, shared));
        },
    ));
    let (bound, shared) = match bound_rx.await {
        Ok(bound) => bound,
        Err(_) => {
            return match server.await {
                Ok(Err(e)) => Err(e.context(
                    "starting tollgate (try --grpc-addr 127.0.0.1:0 if the port is taken)",
                )),
                _ => Err(anyhow::anyhow!("tollgate stopped during start-up")),
            };
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !shared.is_ready() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "tollgate did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let server_url = format!("http://{}", bound.grpc);
    println!("tollgate demo: everything runs on this machine\n");
    println!("  identity provider   {issuer}  (OpenID discovery + JWKS, RS256 key \"demo-1\")");
    println!("  policy file         {}", policy_file.display());
    println!("  ext_authz (gRPC)    {}", bound.grpc);
    println!(
        "  admin               http://{}/readyz  /metrics\n",
        bound.admin
    );

    let mut as_expected = true;
    for example in &examples {
        let probe = Probe {
            host: HOST.into(),
            path: example.path.into(),
            method: "GET".into(),
            token: Some(example.token.clone()),
            ..Probe::default()
        };
        let response = client::send(&server_url, &probe).await?;
        let allowed = client::allowed(&response);
        as_expected &= allowed == example.expect_allow;
        println!("── {} ──", example.title);
        println!(
            "GET https://{HOST}{}  Authorization: Bearer {}…",
            example.path,
            &example.token[..24]
        );
        for line in client::render(&response).lines() {
            println!("  {line}");
        }
        println!();
    }
    println!("Try it yourself (the full tokens):");
    for example in &examples {
        println!(
            "\n  # {}\n  cargo run -- authorize --server {server_url} --host {HOST} --path {} --token {}",
            example.title, example.path, example.token
        );
    }
    if let Some(rejected) = examples.iter().find(|e| !e.expect_allow) {
        println!(
            "\nWhy was it rejected? Every check, with the fix:\n  cargo run -- explain --policy {} --host {HOST} --path {} --token {}",
            policy_file.display(),
            rejected.path,
            rejected.token
        );
    }
    if !as_expected {
        println!("\nsome decisions were not the expected ones: see above");
    }
    if options.once {
        let _ = stop_tx.send(());
    } else {
        println!(
            "\nEdit {} and run the commands again; Ctrl-C stops the demo.",
            policy_file.display()
        );
    }
    server.await.context("tollgate task")??;
    idp.stop().await;
    Ok(as_expected)
}

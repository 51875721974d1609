//! The chart installed with the real `helm install`, and the plain manifests applied with
//! `kubectl apply --server-side`, against a real API server (tests/e2e/cluster.rs). What a
//! render cannot show, the server decides: whether it accepts every object and keeps every field
//! as written (a field it does not know is refused by a server-side apply, or pruned; a value it
//! normalizes comes back changed), whether `lookup` keeps the webhook's certificate across an
//! upgrade, whether its selectors select, and whether the chart's RBAC lets the Deployment do
//! its work, and no more. So each variant is installed, compared field by field with what the server
//! holds, and its Deployment run as local replicas under the chart's ServiceAccount until it
//! serves a policy:
//!
//! ```text
//!  values ─► helm install ─► server objects ══ helm get manifest   (every field kept)
//!                               │
//!                               └─► Deployment ─► chart_replicas ─► tollgate serve (SA token)
//!                                                                      │ loads a JwtPolicy
//!                                          gRPC Check / TLS Check / HTTP /auth ◄┘ answers
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tollgate::client::{self, Probe};
use tollgate::local_issuer::SigningKey;
use tollgate::proto::auth::CheckResponse;
use tollgate::proto::auth::authorization_client::AuthorizationClient;

use crate::cluster::Cluster;
use crate::deploy::{documents, repo};
use crate::support::*;

const CRD: &str = "jwtpolicies.tollgate.dev";

impl Idp {
    /// A JwtPolicy for `host` accepting this issuer's tokens for `audience(host)`.
    fn policy(&self, namespace: &str, name: &str, host: &str, labels: Value) -> String {
        json!({
            "apiVersion": "tollgate.dev/v1alpha1",
            "kind": "JwtPolicy",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "match": {"hosts": [host]},
                "issuers": [{"issuer": self.issuer, "audiences": [audience(host)], "allowInsecureHttp": true}],
            },
        })
        .to_string()
    }
}

/// Each host's policy wants its own audience, so a token passes only where it is meant to.
fn audience(host: &str) -> String {
    format!("api://{host}")
}

fn probe(host: &str, token: Option<&str>) -> Probe {
    Probe {
        host: host.into(),
        path: "/orders/1".into(),
        method: "GET".into(),
        token: token.map(str::to_owned),
        ..Probe::default()
    }
}

/// Whether a Check for `host` with `token` is allowed by the replica.
async fn allows(replica: &Tollgate, host: &str, token: &str) -> bool {
    client::allowed(
        &client::send(&replica.url(), &probe(host, Some(token)))
            .await
            .expect("Check RPC"),
    )
}

/// Waits until the replica allows `host` with `token`: it loaded the policy for `host`.
async fn serves(replica: &Tollgate, host: &str, token: &str) {
    assert!(
        eventually(Duration::from_secs(15), async || allows(
            replica, host, token
        )
        .await)
        .await,
        "the replica never served {host}; logs:\n{}",
        replica.logs().join("\n")
    );
}

/// Waits until the Lease holder wrote the status of `namespace/name`: generation 1 Ready.
/// Writing it takes the chart's `jwtpolicies/status` permission.
async fn status_written(cluster: &Cluster, namespace: &str, name: &str) {
    let written = |p: &Value| {
        p["status"]["observedGeneration"] == 1
            && p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| {
                    c["type"] == "Ready" && c["status"] == "True" && c["observedGeneration"] == 1
                })
    };
    let ok = eventually(Duration::from_secs(20), async || {
        cluster
            .get("jwtpolicy", Some(namespace), name)
            .is_some_and(|p| written(&p))
    })
    .await;
    assert!(
        ok,
        "no status on {namespace}/{name}: {:#}",
        cluster
            .get("jwtpolicy", Some(namespace), name)
            .unwrap_or_default()["status"]
    );
}

/// Fails the test when the replica logged a refusal from the API server: the chart's RBAC
/// must let the Deployment do all of its work.
fn assert_never_forbidden(replica: &Tollgate) {
    let refused: Vec<String> = replica
        .logs()
        .into_iter()
        .filter(|line| {
            // A decision (a 403 denial) is not the API server's answer.
            let decision =
                serde_json::from_str::<Value>(line).is_ok_and(|v| v["message"] == "denied");
            !decision && line.to_ascii_lowercase().contains("forbidden")
        })
        .collect();
    assert!(
        refused.is_empty(),
        "the API server refused the replica:\n{}",
        refused.join("\n")
    );
}

/// The chart at deploy/helm/tollgate.
fn chart() -> String {
    repo("deploy/helm/tollgate").display().to_string()
}

/// Writes `values` (JSON is YAML) for `helm -f`.
fn values_file(cluster: &Cluster, name: &str, values: &Value) -> String {
    let path = cluster.dir.path().join(format!("{name}-values.yaml"));
    std::fs::write(&path, values.to_string()).expect("values file");
    path.display().to_string()
}

fn helm(cluster: &Cluster, args: &[&str]) -> String {
    cluster
        .helm(args)
        .unwrap_or_else(|e| panic!("helm {}: {e}", args.join(" ")))
}

/// What helm rendered for a release.
fn manifest(cluster: &Cluster, release: &str, namespace: &str) -> String {
    helm(cluster, &["get", "manifest", release, "-n", namespace])
}

/// The objects of `yaml` as the server holds them, by (kind, namespace, name); `kubectl get -f`
/// resolves each kind as the server serves it.
fn live_objects(cluster: &Cluster, yaml: &str) -> Vec<Value> {
    let out = cluster
        .try_kubectl_stdin(&["get", "-o", "json", "--ignore-not-found"], yaml)
        .unwrap_or_else(|e| panic!("kubectl get: {e}"));
    if out.trim().is_empty() {
        return Vec::new();
    }
    let got: Value = serde_json::from_str(&out).expect("kubectl get JSON");
    if got["kind"] == "List" {
        got["items"].as_array().cloned().unwrap_or_default()
    } else {
        vec![got]
    }
}

fn identity(object: &Value) -> String {
    format!(
        "{} {}/{}",
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["namespace"].as_str().unwrap_or(""),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Every place where the server's `live` differs from `rendered`: a field the server dropped
/// (pruned) or changed (normalized). Fields the server adds (defaults, status, helm's annotations)
/// are not differences.
fn differences(rendered: &Value, live: &Value, path: &str, out: &mut Vec<String>) {
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    match (rendered, live) {
        (Value::Object(fields), Value::Object(kept)) => {
            for (name, value) in fields {
                let at = format!("{path}.{name}");
                match kept.get(name) {
                    Some(live) if !live.is_null() => differences(value, live, &at, out),
                    _ if empty(value) => {}
                    _ => out.push(format!("{at}: the server dropped it (rendered {value})")),
                }
            }
        }
        (Value::Array(items), Value::Array(kept)) if items.len() == kept.len() => {
            for (i, (item, live)) in items.iter().zip(kept).enumerate() {
                differences(item, live, &format!("{path}[{i}]"), out);
            }
        }
        _ if rendered == live => {}
        _ => out.push(format!(
            "{path}: rendered {rendered}, the server holds {live}"
        )),
    }
}

/// Fails the test unless every object of `rendered` (YAML documents) is on the server, with
/// every field as rendered. Returns the documents.
fn assert_on_server(cluster: &Cluster, rendered: &str) -> Vec<Value> {
    let docs = documents(rendered);
    assert!(!docs.is_empty(), "nothing rendered");
    let live = live_objects(cluster, rendered);
    let mut problems = Vec::new();
    for doc in &docs {
        let id = identity(doc);
        match live.iter().find(|l| identity(l) == id) {
            Some(object) => differences(doc, object, &id, &mut problems),
            None => problems.push(format!("{id}: not on the server")),
        }
    }
    assert!(
        problems.is_empty(),
        "the server does not hold what was rendered:\n{}",
        problems.join("\n")
    );
    docs
}

/// The kinds (`Kind namespace/name`) of `docs`.
fn identities(docs: &[Value]) -> Vec<String> {
    docs.iter().map(identity).collect()
}

/// Whether ServiceAccount `namespace/name` may `verb resource` (`scope`: `-n x` or `-A`).
fn can_i(cluster: &Cluster, account: &str, verb: &str, resource: &str, scope: &[&str]) -> bool {
    let user = format!("system:serviceaccount:{account}");
    let mut args = vec!["auth", "can-i", verb, resource, "--as", &user];
    args.extend(scope);
    let out = cluster.kubectl_output(&args);
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        answer == "yes" || answer == "no",
        "kubectl {}: {answer}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    answer == "yes"
}

fn webhook_ca(cluster: &Cluster, name: &str) -> String {
    cluster
        .get("validatingwebhookconfiguration", None, name)
        .expect("webhook configuration")["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .expect("caBundle")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_values_install_upgrade_keeping_the_webhook_certificate_and_uninstall() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let (release, namespace, deployment) = ("tg", "tollgate", "tg-tollgate");
    cluster.helm_install(release, namespace, &[]);
    let installed = assert_on_server(&cluster, &manifest(&cluster, release, namespace));
    let kinds = identities(&installed);
    for expected in [
        "ClusterRole /tg-tollgate-policies",
        "Secret tollgate/tg-tollgate-webhook-tls",
        "ValidatingWebhookConfiguration /tg-tollgate",
        "PodDisruptionBudget tollgate/tg-tollgate",
    ] {
        assert!(kinds.iter().any(|k| k == expected), "{expected}: {kinds:?}");
    }
    assert!(
        cluster.get("crd", None, CRD).is_some(),
        "helm installs crds/"
    );
    let secret = |cluster: &Cluster| {
        cluster
            .get("secret", Some(namespace), "tg-tollgate-webhook-tls")
            .expect("webhook Secret")["data"]
            .clone()
    };
    let certificate = secret(&cluster);
    let ca = webhook_ca(&cluster, deployment);
    assert_eq!(
        certificate["ca.crt"],
        ca.as_str(),
        "caBundle is the Secret's CA"
    );

    // Upgrade with other values: one object more, one less, more replicas. The chart looks the
    // Secret up on the server and keeps the certificate; a new one would break every replica
    // still serving the old one.
    let upgraded = [
        "upgrade",
        release,
        &chart(),
        "-n",
        namespace,
        "--wait=hookOnly",
        "--set",
        "replicaCount=3",
        "--set",
        "podDisruptionBudget.enabled=false",
        "--set",
        "networkPolicy.enabled=true",
    ];
    helm(&cluster, &upgraded);
    let rendered = manifest(&cluster, release, namespace);
    let after = assert_on_server(&cluster, &rendered);
    let kinds = identities(&after);
    assert!(kinds.contains(&"NetworkPolicy tollgate/tg-tollgate".to_string()));
    assert!(!kinds.iter().any(|k| k.starts_with("PodDisruptionBudget")));
    assert!(
        cluster
            .get("poddisruptionbudget", Some(namespace), deployment)
            .is_none(),
        "the upgrade removes what the values no longer render"
    );
    assert_eq!(
        cluster
            .get("deployment", Some(namespace), deployment)
            .expect("Deployment")["spec"]["replicas"],
        3
    );
    assert_eq!(
        secret(&cluster),
        certificate,
        "the upgrade kept the certificate"
    );
    assert_eq!(webhook_ca(&cluster, deployment), ca, "and the caBundle");

    // The kept certificate still serves the webhook's Service name under the caBundle: what
    // the API server checks when it calls the webhook through the Service.
    let chart = cluster.chart_replicas(namespace, deployment);
    assert_eq!(
        chart.webhook_secret.as_deref(),
        Some("tg-tollgate-webhook-tls")
    );
    let mounted = chart.with_mounted_webhook_certificate().start("tg-mounted");
    let webhook = mounted.webhook.expect("webhook");
    let ca_pem = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(&ca)
            .expect("caBundle is base64"),
    )
    .expect("PEM");
    handshake(webhook, "tg-tollgate.tollgate.svc", &ca_pem)
        .await
        .expect("the chart's certificate is for its Service under its caBundle");
    handshake(webhook, "tg-tollgate.tollgate.svc.cluster.local", &ca_pem)
        .await
        .expect("and for the Service's full name");
    let other = handshake(webhook, "other.tollgate.svc", &ca_pem).await;
    assert!(other.is_err(), "{other:?}");
    drop(mounted);

    // The upgraded release serves: a replica under the chart's ServiceAccount loads a policy
    // admitted by its webhook, and the webhook refuses a second claim on the same host.
    let idp = Idp::start().await;
    let replica = chart.start("tg-0");
    cluster.point_webhook_at(
        deployment,
        replica
            .webhook
            .expect("the Deployment serves the webhook")
            .port(),
        chart.webhook_cert.as_deref().expect("webhook certificate"),
    );
    cluster.kubectl(&["create", "namespace", "shop"]);
    cluster.apply(&idp.policy("shop", "orders", HOST, json!({})));
    serves(&replica, HOST, &idp.token(&audience(HOST))).await;
    status_written(&cluster, "shop", "orders").await;
    let refused = cluster
        .try_apply(&idp.policy("shop", "squatter", HOST, json!({})))
        .expect_err("the webhook refuses a second claim on a host");
    assert!(refused.contains("HostConflict"), "{refused}");
    assert_never_forbidden(&replica);
    drop(replica);

    // Uninstall removes every object of the release but the CRD (helm never deletes crds/):
    // policies outlive the release that served them.
    helm(&cluster, &["uninstall", release, "-n", namespace]);
    let left = live_objects(&cluster, &rendered);
    assert!(
        left.is_empty(),
        "left after uninstall: {:?}",
        identities(&left)
    );
    assert!(cluster.get("crd", None, CRD).is_some());
    assert!(cluster.get("jwtpolicy", Some("shop"), "orders").is_some());
    assert_eq!(helm(&cluster, &["list", "-A", "-q"]).trim(), "");
}

/// A CA and a serving certificate from it, as PEM, with a client certificate from the same CA.
struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

impl Pki {
    fn new(server_name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "tollgate test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &ca).expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        Pki {
            server: leaf(server_name, ExtendedKeyUsagePurpose::ServerAuth),
            client: leaf("envoy", ExtendedKeyUsagePurpose::ClientAuth),
            ca: ca.pem(),
        }
    }
}

/// A TLS client trusting `ca` (PEM), with a client certificate when given, speaking HTTP/2.
fn tls_client(ca: &str, client_cert: Option<&(String, String)>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.expect("CA")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(|c| c.expect("cert"))
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
            )
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A TLS handshake with `addr` as `server_name`, trusting only `ca`: what the API server does
/// before it sends an AdmissionReview to the webhook's Service.
async fn handshake(addr: SocketAddr, server_name: &str, ca: &str) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(server_name.to_string()).expect("server name");
    tls_client(ca, None)
        .connect(name, tcp)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// One Check over TLS to `addr` as `server_name`, trusting `ca`, with a client certificate
/// when given: how a gateway reaches a gRPC listener with TLS.
async fn check_over_tls(
    addr: SocketAddr,
    server_name: &str,
    ca: &str,
    client_cert: Option<&(String, String)>,
    probe: &Probe,
) -> Result<CheckResponse, String> {
    let connector = tls_client(ca, client_cert);
    let name = ServerName::try_from(server_name.to_string()).expect("server name");
    let connect = tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let (connector, name) = (connector.clone(), name.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    let channel = tonic::transport::Endpoint::from_static("http://tollgate.invalid")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(connect)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    AuthorizationClient::new(channel)
        .check(client::check_request(probe))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| format!("Check: {e}"))
}

/// `GET /auth` as Traefik's forwardAuth sends it for `https://host/orders/1`.
async fn forward_auth(addr: SocketAddr, host: &str, token: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new()
        .get(format!("http://{addr}/auth"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", host)
        .header("x-forwarded-uri", "/orders/1");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request
        .send()
        .await
        .expect("forward auth")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_grpc_tls_and_host_delegations_install_and_serve() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    // Release `edge`: HTTP forward auth for Traefik, trusting the proxies on 127.0.0.1.
    let edge = values_file(
        &cluster,
        "edge",
        &json!({"http": {"enabled": true, "family": "traefik", "trustedProxies": ["127.0.0.1/32"]}}),
    );
    cluster.helm_install("edge", "edge", &["-f", &edge]);
    // Release `tls`: TLS with client certificates on the gRPC port, from a Secret made before
    // (by cert-manager, in a cluster), and a host delegated to namespace shop.
    let pki = Pki::new("tls-tollgate.tls.svc");
    cluster.kubectl(&["create", "namespace", "tls"]);
    cluster.apply(
        &json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "grpc-tls", "namespace": "tls"},
            "stringData": {"tls.crt": pki.server.0, "tls.key": pki.server.1, "ca.crt": pki.ca},
        })
        .to_string(),
    );
    let tls = values_file(
        &cluster,
        "tls",
        &json!({
            "grpcTls": {"enabled": true, "secretName": "grpc-tls"},
            "hostDelegations": [{"namespace": "shop", "hosts": ["secure.example.com"]}],
        }),
    );
    cluster.helm_install("tls", "tls", &["-f", &tls]);
    for (release, namespace) in [("edge", "edge"), ("tls", "tls")] {
        assert_on_server(&cluster, &manifest(&cluster, release, namespace));
    }

    let idp = Idp::start().await;
    let edge = cluster.chart_replicas("edge", "edge-tollgate");
    let tls = cluster.chart_replicas("tls", "tls-tollgate");
    let mounted: Vec<&str> = tls.files.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(
        mounted,
        [
            "/etc/tollgate/host-delegations/delegations.yaml",
            "/etc/tollgate/grpc-tls/tls.crt",
            "/etc/tollgate/grpc-tls/tls.key",
            "/etc/tollgate/grpc-tls/ca.crt",
            "/etc/tollgate/webhook/tls.crt",
            "/etc/tollgate/webhook/tls.key",
        ]
    );
    let edge_replica = edge.start("edge-0");
    let tls_replica = tls.start("tls-0");
    assert!(
        !tls_replica.log_events("gRPC listener uses TLS").is_empty(),
        "{:?}",
        tls_replica.logs()
    );
    for (name, chart, replica) in [
        ("edge-tollgate", &edge, &edge_replica),
        ("tls-tollgate", &tls, &tls_replica),
    ] {
        cluster.point_webhook_at(
            name,
            replica.webhook.expect("webhook").port(),
            chart.webhook_cert.as_deref().expect("webhook certificate"),
        );
    }
    for namespace in ["shop", "intruder"] {
        cluster.kubectl(&["create", "namespace", namespace]);
    }
    // The delegation file reached the `tls` replica: its webhook refuses a claim from another
    // namespace on the delegated host, though no policy names it yet (without the file, the
    // first claim would win).
    let secure = "secure.example.com";
    let refused = cluster
        .try_apply(&idp.policy("intruder", "secure", secure, json!({})))
        .expect_err("a delegated host is refused to other namespaces");
    assert!(refused.contains("delegated to namespace shop"), "{refused}");
    cluster.apply(&idp.policy("shop", "secure", secure, json!({})));
    cluster.apply(&idp.policy("shop", "orders", HOST, json!({})));

    // Forward auth answers Traefik's request on the HTTP port.
    let token = idp.token(&audience(HOST));
    let http = edge_replica
        .http
        .expect("the Deployment serves forward auth");
    assert!(
        eventually(Duration::from_secs(15), async || {
            forward_auth(http, HOST, Some(&token)).await == 200
        })
        .await,
        "forward auth never allowed; logs:\n{}",
        edge_replica.logs().join("\n")
    );
    assert_eq!(forward_auth(http, HOST, None).await, 401);
    assert_eq!(
        forward_auth(http, HOST, Some(&idp.token("api://elsewhere"))).await,
        401
    );

    // Check over TLS with the client certificate; refused without one.
    let server_name = "tls-tollgate.tls.svc";
    let token = idp.token(&audience(secure));
    let probe = probe(secure, Some(&token));
    assert!(
        eventually(Duration::from_secs(15), async || {
            check_over_tls(
                tls_replica.grpc,
                server_name,
                &pki.ca,
                Some(&pki.client),
                &probe,
            )
            .await
            .is_ok_and(|r| client::allowed(&r))
        })
        .await,
        "no allowed Check over TLS: {:?}\n{}",
        check_over_tls(
            tls_replica.grpc,
            server_name,
            &pki.ca,
            Some(&pki.client),
            &probe
        )
        .await,
        tls_replica.logs().join("\n")
    );
    let anonymous = check_over_tls(tls_replica.grpc, server_name, &pki.ca, None, &probe).await;
    assert!(anonymous.is_err(), "{anonymous:?}");
    assert_never_forbidden(&edge_replica);
    assert_never_forbidden(&tls_replica);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_of_listed_namespaces_get_roles_there_and_a_webhook_each_for_their_own_policies()
{
    let Some(cluster) = Cluster::start() else {
        return;
    };
    // The watched namespaces hold the chart's Roles: they exist before the install.
    for namespace in ["a", "b", "c"] {
        cluster.kubectl(&["create", "namespace", namespace]);
    }
    let values = values_file(
        &cluster,
        "scoped",
        &json!({"watchNamespaces": ["a", "b"], "selector": "tollgate.dev/shard=one"}),
    );
    cluster.helm_install("scoped", "scoped", &["-f", &values]);
    // A second shard of the same namespaces, whose replicas never start: its webhook (failure
    // policy Fail) is down. Its objectSelector keeps it from judging the first shard's policies.
    let spare = values_file(
        &cluster,
        "spare",
        &json!({"watchNamespaces": ["a", "b"], "selector": "tollgate.dev/shard in (two)"}),
    );
    cluster.helm_install("spare", "spare", &["-f", &spare]);
    assert_on_server(&cluster, &manifest(&cluster, "spare", "spare"));
    let kinds = identities(&assert_on_server(
        &cluster,
        &manifest(&cluster, "scoped", "scoped"),
    ));
    for expected in [
        "Role a/scoped-tollgate-policies",
        "RoleBinding b/scoped-tollgate-policies",
    ] {
        assert!(kinds.iter().any(|k| k == expected), "{expected}: {kinds:?}");
    }
    assert!(
        !kinds.iter().any(|k| k.starts_with("ClusterRole")),
        "{kinds:?}"
    );

    // What the server lets the ServiceAccount do: policies and Secrets in a and b only.
    let account = "scoped:scoped-tollgate";
    let policies = "jwtpolicies.tollgate.dev";
    assert!(can_i(&cluster, account, "list", policies, &["-n", "a"]));
    assert!(can_i(&cluster, account, "watch", policies, &["-n", "b"]));
    assert!(can_i(
        &cluster,
        account,
        "patch",
        policies,
        &["--subresource", "status", "-n", "b"]
    ));
    assert!(!can_i(&cluster, account, "list", policies, &["-A"]));
    assert!(!can_i(&cluster, account, "list", policies, &["-n", "c"]));
    assert!(!can_i(&cluster, account, "get", "secrets", &["-n", "c"]));
    assert!(can_i(
        &cluster,
        account,
        "update",
        "leases.coordination.k8s.io",
        &["-n", "scoped"]
    ));
    assert!(!can_i(
        &cluster,
        account,
        "update",
        "leases.coordination.k8s.io",
        &["-n", "a"]
    ));

    let idp = Idp::start().await;
    let chart = cluster.chart_replicas("scoped", "scoped-tollgate");
    let replica = chart.start("scoped-0");
    cluster.point_webhook_at(
        "scoped-tollgate",
        replica.webhook.expect("webhook").port(),
        chart.webhook_cert.as_deref().expect("webhook certificate"),
    );
    let shard = json!({"tollgate.dev/shard": "one"});
    let selected = |name: &str| {
        cluster
            .get("validatingwebhookconfiguration", None, name)
            .expect("webhook configuration")["webhooks"][0]["objectSelector"]
            .clone()
    };
    assert_eq!(
        selected("scoped-tollgate"),
        json!({"matchExpressions": [{"key": "tollgate.dev/shard", "operator": "In", "values": ["one"]}]})
    );
    assert_eq!(
        selected("spare-tollgate"),
        json!({"matchExpressions": [{"key": "tollgate.dev/shard", "operator": "In", "values": ["two"]}]})
    );
    // The shard that is down still guards its own policies.
    let refused = cluster
        .try_apply(&idp.policy(
            "a",
            "second",
            "s.example.com",
            json!({"tollgate.dev/shard": "two"}),
        ))
        .expect_err("the second shard's webhook is down");
    assert!(
        refused.contains("failed calling webhook") && refused.contains("spare-tollgate"),
        "{refused}"
    );
    // Outside the watch: another namespace, or without the selector's label.
    cluster.apply(&idp.policy("c", "outside", "c.example.com", shard.clone()));
    cluster.apply(&idp.policy("a", "unlabelled", "u.example.com", json!({})));
    cluster.apply(&idp.policy("a", "orders", "a.example.com", shard.clone()));
    cluster.apply(&idp.policy("b", "orders", "b.example.com", shard));
    for host in ["a.example.com", "b.example.com"] {
        serves(&replica, host, &idp.token(&audience(host))).await;
    }
    for namespace in ["a", "b"] {
        status_written(&cluster, namespace, "orders").await;
    }
    for host in ["c.example.com", "u.example.com"] {
        let response = client::send(
            &replica.url(),
            &probe(host, Some(&idp.token(&audience(host)))),
        )
        .await
        .expect("Check RPC");
        assert_eq!(
            outcome(&response),
            (false, 403, "no_policy".to_string()),
            "{host}"
        );
    }
    assert_eq!(metric(&replica.metrics(), "tollgate_policies "), Some(2.0));

    // A policy keyed by a Secret of a watched namespace: until the Secret exists the Lease
    // holder reports it with an Event there, then the replica reads the Secret and serves.
    // Both are the Role's doing.
    let keyed = "k.example.com";
    cluster.apply(
        &json!({
            "apiVersion": "tollgate.dev/v1alpha1",
            "kind": "JwtPolicy",
            "metadata": {"name": "keyed", "namespace": "b", "labels": {"tollgate.dev/shard": "one"}},
            "spec": {
                "match": {"hosts": [keyed]},
                "issuers": [{"issuer": idp.issuer, "audiences": [audience(keyed)],
                    "sharedSecret": {"secretRef": {"name": "hmac", "key": "key"}}}],
            },
        })
        .to_string(),
    );
    let reported = eventually(Duration::from_secs(20), async || {
        let events: Value = serde_json::from_str(&cluster.kubectl(&[
            "get",
            "events.events.k8s.io",
            "-n",
            "b",
            "-o",
            "json",
        ]))
        .expect("events");
        events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["regarding"]["name"] == "keyed" && e["type"] == "Warning")
    })
    .await;
    assert!(
        reported,
        "no Event for b/keyed; logs:\n{}",
        replica.logs().join("\n")
    );
    let secret = "an HMAC key of thirty-two bytes!";
    cluster.apply(
        &json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "hmac", "namespace": "b"},
            "stringData": {"key": secret},
        })
        .to_string(),
    );
    let token = SigningKey::hmac("h", "HS256", secret.as_bytes())
        .mint(&claims(&idp.issuer, json!({"aud": audience(keyed)})))
        .expect("mint");
    serves(&replica, keyed, &token).await;
    for (namespace, name) in [("c", "outside"), ("a", "unlabelled")] {
        let status = &cluster
            .get("jwtpolicy", Some(namespace), name)
            .expect("policy")["status"];
        assert!(status.is_null(), "{namespace}/{name}: {status}");
    }
    assert_never_forbidden(&replica);
}

/// The chart's other optional objects and values, each release in its own namespace: every
/// object accepted as rendered, and the Deployment ready under its ServiceAccount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_optional_object_and_value_is_accepted_and_runs() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let variants = [
        (
            "scale",
            json!({
                "autoscaling": {"enabled": true, "minReplicas": 2, "maxReplicas": 5},
                "podDisruptionBudget": {"minAvailable": "50%"},
                "service": {"type": "NodePort"},
            }),
        ),
        (
            "fenced",
            json!({
                "networkPolicy": {"enabled": true, "gatewayNamespaceSelector": {"matchLabels": {"gateway": "true"}}},
                "http": {"enabled": true, "trustedProxies": ["10.0.0.0/8=nginx", "127.0.0.1/32=traefik"]},
                "webhook": {"failurePolicy": "Ignore", "timeoutSeconds": 30},
                "selector": "tollgate.dev/shard in (a, b),tier!=test,example.com/canary,!legacy",
            }),
        ),
        (
            "strict",
            json!({
                "undelegatedHosts": "Refused",
                "defaultAction": "allow",
                "logFormat": "text",
                "readSecrets": false,
                "webhook": {"enabled": false},
                "drainTimeout": "1m",
                "terminationGracePeriodSeconds": 90,
                "extraArgs": ["--heartbeat-interval=5s"],
                "image": {"repository": "registry.example.com/tollgate", "tag": "v9", "pullPolicy": "Always"},
                "imagePullSecrets": [{"name": "registry"}],
                "podAnnotations": {"example.com/team": "platform"},
                "podLabels": {"example.com/tier": "auth"},
                "priorityClassName": "system-cluster-critical",
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "auth", "effect": "NoSchedule"}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]}]}]}}},
                "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
            }),
        ),
    ];
    for (release, values) in &variants {
        let file = values_file(&cluster, release, values);
        cluster.helm_install(release, release, &["-f", &file]);
        assert_on_server(&cluster, &manifest(&cluster, release, release));
        let replica = cluster
            .chart_replicas(release, &format!("{release}-tollgate"))
            .start(&format!("{release}-0"));
        assert_never_forbidden(&replica);
    }
    // Every form of label selector term, as the webhook's objectSelector (the server checks
    // each key and value) and as the replicas' watch (the server parsed it).
    assert_eq!(
        cluster
            .get("validatingwebhookconfiguration", None, "fenced-tollgate")
            .expect("webhook configuration")["webhooks"][0]["objectSelector"],
        json!({"matchExpressions": [
            {"key": "tollgate.dev/shard", "operator": "In", "values": ["a", "b"]},
            {"key": "tier", "operator": "NotIn", "values": ["test"]},
            {"key": "example.com/canary", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist"},
        ]})
    );
}

/// The cert-manager kinds the webhook variant needs; this cluster has none of their CRDs.
fn cert_manager(doc: &Value) -> bool {
    doc["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("cert-manager.io/"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_manifests_apply_server_side_and_run() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let variant = |name: &str| {
        repo(&format!("deploy/kubernetes/{name}"))
            .display()
            .to_string()
    };
    // `kubectl apply -k deploy/kubernetes`, as the README says: the base variant.
    let base = repo("deploy/kubernetes").display().to_string();
    cluster.kubectl(&["apply", "--server-side", "-k", &base]);
    assert_on_server(&cluster, &cluster.kubectl(&["kustomize", &base]));
    cluster.wait_established(&[CRD], "30s");
    let idp = Idp::start().await;
    let chart = cluster.chart_replicas("tollgate", "tollgate");
    assert!(chart.webhook_cert.is_none(), "base serves no webhook");
    let replica = chart.start("tollgate-0");
    cluster.kubectl(&["create", "namespace", "shop"]);
    cluster.apply(&idp.policy("shop", "orders", HOST, json!({})));
    serves(&replica, HOST, &idp.token(&audience(HOST))).await;
    status_written(&cluster, "shop", "orders").await;
    assert_never_forbidden(&replica);
    drop(replica);

    // with-webhook over base, as an upgrade. Its Certificate and Issuer are cert-manager's
    // kinds: without cert-manager's CRDs the server cannot take them, nor judge them in a dry
    // run, so kubectl refuses those two and applies the rest.
    let with_webhook = variant("with-webhook");
    let rendered = cluster.kubectl(&["kustomize", &with_webhook]);
    let docs = documents(&rendered);
    let (third_party, ours): (Vec<Value>, Vec<Value>) = docs.into_iter().partition(cert_manager);
    assert_eq!(
        identities(&third_party),
        [
            "Certificate tollgate/tollgate-webhook",
            "Issuer tollgate/tollgate-selfsigned"
        ]
    );
    let refused = cluster
        .try_kubectl(&["apply", "--server-side", "-k", &with_webhook])
        .expect_err("no cert-manager CRDs here");
    let complaints: Vec<&str> = refused
        .lines()
        .filter(|l| !l.ends_with(" serverside-applied") && *l != "ensure CRDs are installed first")
        .collect();
    assert_eq!(complaints.len(), 2, "{refused}");
    for (complaint, kind) in complaints.iter().zip(["Certificate", "Issuer"]) {
        assert!(
            complaint.contains(&format!(
                "no matches for kind \"{kind}\" in version \"cert-manager.io/v1\""
            )),
            "{refused}"
        );
    }
    let ours: String = ours
        .iter()
        .map(|d| format!("---\n{}\n", serde_json::to_string(d).expect("json")))
        .collect();
    assert_on_server(&cluster, &ours);

    // The webhook variant's Deployment mounts the Secret cert-manager's Certificate writes, and
    // serves the webhook the server calls.
    let chart = cluster.chart_replicas("tollgate", "tollgate");
    assert_eq!(
        chart.webhook_secret.as_deref(),
        third_party[0]["spec"]["secretName"].as_str()
    );
    let replica = chart.start("tollgate-1");
    cluster.point_webhook_at(
        "tollgate",
        replica
            .webhook
            .expect("with-webhook serves the webhook")
            .port(),
        chart.webhook_cert.as_deref().expect("webhook certificate"),
    );
    serves(&replica, HOST, &idp.token(&audience(HOST))).await;
    let refused = cluster
        .try_apply(&idp.policy("shop", "squatter", HOST, json!({})))
        .expect_err("the webhook refuses a second claim on a host");
    assert!(refused.contains("HostConflict"), "{refused}");
    assert_never_forbidden(&replica);
}

#[test]
fn a_field_the_server_dropped_or_changed_is_a_difference() {
    let mut found = Vec::new();
    differences(
        &json!({"spec": {"a": 1, "b": [1, 2], "c": {}, "d": "x", "e": [{"f": true}]}}),
        &json!({"spec": {"b": [1], "d": "y", "e": [{"f": true, "g": 0}], "h": 3}}),
        "Kind ns/name",
        &mut found,
    );
    assert_eq!(
        found,
        [
            "Kind ns/name.spec.a: the server dropped it (rendered 1)",
            "Kind ns/name.spec.b: rendered [1,2], the server holds [1]",
            "Kind ns/name.spec.d: rendered \"x\", the server holds \"y\"",
        ]
    );
}

/// Issuer keys kept in the cluster (`keysFrom`): a ConfigMap holding PEM public keys and a
/// Secret holding a JWKS, read under the chart's ServiceAccount (its RBAC must allow the
/// ConfigMap), and rotated in place: the replica follows each rotation without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_keys_from_a_config_map_and_a_secret_rotate_without_a_restart() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let (release, namespace, deployment) = ("keys", "keys", "keys-tollgate");
    cluster.helm_install(release, namespace, &[]);
    let account = "keys:keys-tollgate";
    for verb in ["get", "list", "watch"] {
        assert!(can_i(
            &cluster,
            account,
            verb,
            "configmaps",
            &["-n", "shop"]
        ));
    }
    let chart = cluster.chart_replicas(namespace, deployment);
    let replica = chart.start("keys-0");
    cluster.point_webhook_at(
        deployment,
        replica.webhook.expect("webhook").port(),
        chart.webhook_cert.as_deref().expect("webhook certificate"),
    );
    cluster.kubectl(&["create", "namespace", "shop"]);

    let issuer = "https://keys.example.com/";
    let first = SigningKey::ec("first", "ES256").expect("key");
    let second = SigningKey::rsa("second", "RS256", 2048).expect("key");
    let token = |key: &SigningKey, host: &str| {
        key.mint(&claims(issuer, json!({"aud": audience(host)})))
            .expect("mint")
    };
    let config_map = |pem: String| {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "idp-keys", "namespace": "shop"},
            "data": {"keys.pem": pem},
        })
        .to_string()
    };
    let policy = |name: &str, host: &str, keys_from: Value| {
        json!({
            "apiVersion": "tollgate.dev/v1alpha1",
            "kind": "JwtPolicy",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {
                "match": {"hosts": [host]},
                "issuers": [{"issuer": issuer, "audiences": [audience(host)],
                    "algorithms": ["ES256", "RS256"], "keysFrom": keys_from}],
            },
        })
        .to_string()
    };

    // PEM keys from a ConfigMap, then a rotation to another key (and key type).
    let pem_host = "pem.example.com";
    cluster.apply(&config_map(first.public_pem().expect("pem")));
    cluster.apply(&policy(
        "pem",
        pem_host,
        json!({"configMapRef": {"name": "idp-keys", "key": "keys.pem"}}),
    ));
    serves(&replica, pem_host, &token(&first, pem_host)).await;
    assert!(!allows(&replica, pem_host, &token(&second, pem_host)).await);
    cluster.apply(&config_map(second.public_pem().expect("pem")));
    serves(&replica, pem_host, &token(&second, pem_host)).await;
    assert!(!allows(&replica, pem_host, &token(&first, pem_host)).await);

    // A private key put in the ConfigMap by mistake is refused, in the policy's status; the
    // last good keys keep serving.
    let private = KeyPair::generate().expect("key").serialize_pem();
    cluster.apply(&config_map(private));
    let refused = eventually(Duration::from_secs(20), async || {
        cluster
            .get("jwtpolicy", Some("shop"), "pem")
            .is_some_and(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| {
                        c["type"] == "Accepted"
                            && c["status"] == "False"
                            && c["message"]
                                .as_str()
                                .is_some_and(|m| m.contains("is a private key"))
                    })
            })
    })
    .await;
    assert!(refused, "logs:\n{}", replica.logs().join("\n"));
    assert!(allows(&replica, pem_host, &token(&second, pem_host)).await);

    // A JWKS from a Secret, rotated by replacing the Secret's data.
    let jwks_host = "jwks.example.com";
    let secret = |key: &SigningKey| {
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "idp-jwks", "namespace": "shop"},
            "stringData": {"jwks.json": tollgate::local_issuer::jwks(&[key]).to_string()},
        })
        .to_string()
    };
    cluster.apply(&secret(&first));
    cluster.apply(&policy(
        "jwks",
        jwks_host,
        json!({"secretRef": {"name": "idp-jwks", "key": "jwks.json"}}),
    ));
    serves(&replica, jwks_host, &token(&first, jwks_host)).await;
    cluster.apply(&secret(&second));
    serves(&replica, jwks_host, &token(&second, jwks_host)).await;
    assert!(!allows(&replica, jwks_host, &token(&first, jwks_host)).await);

    // An IdP behind a private CA, its bundle in a ConfigMap: first another CA's (refused),
    // then the right one (fetched, without a restart).
    let idp = Idp::start().await;
    let backend: SocketAddr = idp
        .issuer
        .trim_start_matches("http://")
        .parse()
        .expect("IdP address");
    let (ca, front) = crate::key_material::private_ca_front(backend).await;
    let (other_ca, _) = crate::key_material::private_ca_front(backend).await;
    let bundle = |pem: &str| {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "idp-ca", "namespace": "shop"},
            "data": {"ca.crt": pem},
        })
        .to_string()
    };
    let private_host = "private.example.com";
    cluster.apply(&bundle(&other_ca));
    cluster.apply(
        &json!({
            "apiVersion": "tollgate.dev/v1alpha1",
            "kind": "JwtPolicy",
            "metadata": {"name": "private", "namespace": "shop"},
            "spec": {
                "match": {"hosts": [private_host]},
                "issuers": [{"issuer": issuer, "audiences": [audience(private_host)],
                    "jwksUri": format!("https://{front}/jwks"),
                    "caBundle": {"configMapRef": {"name": "idp-ca", "key": "ca.crt"}}}],
            },
        })
        .to_string(),
    );
    let private_token = token(&idp.key, private_host);
    let refused = eventually(Duration::from_secs(20), async || {
        let response = client::send(&replica.url(), &probe(private_host, Some(&private_token)))
            .await
            .expect("Check RPC");
        outcome(&response) == (false, 503, "issuer_unavailable".to_string())
    })
    .await;
    assert!(refused, "logs:\n{}", replica.logs().join("\n"));
    cluster.apply(&bundle(&ca));
    serves(&replica, private_host, &private_token).await;
    assert_never_forbidden(&replica);
}

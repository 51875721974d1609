//! The client certificate through a real Traefik terminating mutual TLS, configured with
//! `deploy/examples/traefik/dynamic.yaml` and `dynamic-mtls.yaml` themselves: the
//! `passTLSClientCert` middleware (`pem: true`) sets `X-Forwarded-Tls-Client-Cert` and the
//! example's `forwardAuth` passes it to tollgate, which reads it from Traefik's address only
//! (`--client-cert-proxies 127.0.0.1=traefik`).
//!
//! ```text
//! TLS client ══mTLS══► Traefik :websecure  api.example.com       (RequireAndVerifyClientCert)
//!                                          optional.example.com  (VerifyClientCertIfGiven)
//! raw client ────────► Traefik :web        the example, no TLS
//!                      Traefik :trusting   forwardedHeaders.insecure (trusts the client)
//!                           │ GET /auth + X-Forwarded-* + X-Forwarded-Tls-Client-Cert
//!                           ▼
//!                      tollgate (or a recorder of what Traefik sends) ──► echo upstream
//! ```
//!
//! First what Traefik sends (a recorder in tollgate's place), so the format tollgate reads is
//! the one Traefik writes; then certificate-bound tokens through it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::HeaderMap;
use base64::Engine as _;
use rcgen::{DnType, ExtendedKeyUsagePurpose};
use serde_json::json;

use crate::client_cert::{Leaf, TlsGet, leaf};
use crate::envoy::Answer;
use crate::mtls::Pki;
use crate::support::*;
use crate::traefik::{Traefik, Upstream, conf_dir, echo_upstream, example, send, spawn_traefik};

const MTLS_EXAMPLE: &str = include_str!("../../deploy/examples/traefik/dynamic-mtls.yaml");
/// The folder the example's certificate files are in.
const EXAMPLE_CERTS: &str = "/etc/traefik/certs/";
/// A host whose router only asks for a client certificate (test-only).
pub(crate) const OPTIONAL_HOST: &str = "optional.example.com";
/// The header Traefik's passTLSClientCert sets.
pub(crate) const HEADER: &str = "X-Forwarded-Tls-Client-Cert";

/// Routers beside the examples': `optional.example.com` on `websecure` with a client
/// certificate optional, and the example's host on the `trusting` entrypoint, whose
/// forwardedHeaders trust the client; both with the examples' middlewares.
fn probes(certs: &Path) -> String {
    let config = json!({
        "http": {"routers": {
            "optional": {
                "rule": format!("Host(`{OPTIONAL_HOST}`) && PathPrefix(`/orders`)"),
                "entryPoints": ["websecure"],
                "middlewares": ["client-cert", "tollgate"],
                "service": "orders",
                "tls": {"options": "optional-cert"},
            },
            "trusting": {
                "rule": "Host(`api.example.com`) && PathPrefix(`/orders`)",
                "entryPoints": ["trusting"],
                "middlewares": ["client-cert", "tollgate"],
                "service": "orders",
            },
        }},
        "tls": {"options": {"optional-cert": {"clientAuth": {
            "caFiles": [certs.join("client-ca.crt")],
            "clientAuthType": "VerifyClientCertIfGiven",
        }}}},
    });
    serde_yaml::to_string(&config).expect("yaml")
}

/// The test PKI: a root CA (the one Traefik trusts for clients, and the server certificate's
/// issuer), an intermediate, and client certificates.
pub(crate) struct Certs {
    pub(crate) ca_pem: String,
    /// Issued by the root.
    pub(crate) mine: Leaf,
    /// Issued by the root, same names as `mine`.
    pub(crate) other: Leaf,
    /// Issued by the intermediate: sent with it.
    pub(crate) chained: Leaf,
    pub(crate) intermediate: Vec<u8>,
}

impl Certs {
    /// Generates the PKI and writes the files the example names into `dir`.
    pub(crate) fn write(dir: &Path) -> Certs {
        std::fs::create_dir_all(dir).expect("certs dir");
        let ca = Pki::ca("traefik client CA");
        let intermediate = Pki::intermediate(&ca, "traefik intermediate CA");
        let server = leaf(
            &ca,
            &[(DnType::CommonName, HOST)],
            &[HOST, OPTIONAL_HOST],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        std::fs::write(dir.join("api.example.com.crt"), &server.pem).expect("write");
        std::fs::write(dir.join("api.example.com.key"), &server.key).expect("write");
        std::fs::write(dir.join("client-ca.crt"), ca.pem()).expect("write");
        let client = |issuer| {
            leaf(
                issuer,
                &[(DnType::CommonName, "billing.example")],
                &["billing.example"],
                ExtendedKeyUsagePurpose::ClientAuth,
            )
        };
        Certs {
            ca_pem: ca.pem(),
            mine: client(&ca),
            other: client(&ca),
            chained: client(&intermediate),
            intermediate: intermediate.der().to_vec(),
        }
    }
}

/// RFC 8705's `x5t#S256` of a DER certificate.
pub(crate) fn thumbprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

fn b64(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(der)
}

/// Traefik with the two examples and the probe routers, its forwardAuth calling `auth`.
pub(crate) struct MtlsTraefik {
    pub(crate) traefik: Traefik,
    pub(crate) web: u16,
    pub(crate) websecure: u16,
    pub(crate) trusting: u16,
    pub(crate) certs: Certs,
}

impl MtlsTraefik {
    pub(crate) async fn start(bin: &Path, auth: SocketAddr, upstream: SocketAddr) -> MtlsTraefik {
        let dir = tempfile::tempdir().expect("dir");
        let conf = conf_dir(&dir);
        let cert_dir = dir.path().join("certs");
        let certs = Certs::write(&cert_dir);
        let mtls = MTLS_EXAMPLE.replace(EXAMPLE_CERTS, &format!("{}/", cert_dir.display()));
        assert!(!mtls.contains(EXAMPLE_CERTS), "{mtls}");
        std::fs::write(conf.join("dynamic.yaml"), example(auth, upstream)).expect("write");
        std::fs::write(conf.join("dynamic-mtls.yaml"), mtls).expect("write");
        std::fs::write(conf.join("probes.yaml"), probes(&cert_dir)).expect("write");
        let (web, websecure, trusting) = (free_port(), free_port(), free_port());
        let mut traefik = spawn_traefik(
            bin,
            dir,
            &[
                ("web", web),
                ("websecure", websecure),
                ("trusting", trusting),
            ],
            &["--entryPoints.trusting.forwardedHeaders.insecure=true".to_string()],
        );
        // The file provider loads the folder as one configuration: once the example's route
        // answers, the others are there too.
        traefik
            .wait_for_route(web, |reply| reply.status != 404)
            .await;
        MtlsTraefik {
            traefik,
            web,
            websecure,
            trusting,
            certs,
        }
    }

    pub(crate) fn log(&self) -> String {
        self.traefik.log()
    }

    /// A GET on `websecure` with SNI `server_name`, `Host: host`, and `client` (with the
    /// certificates it sends after its own).
    pub(crate) async fn get(
        &self,
        server_name: &str,
        host: &str,
        client: Option<(&Leaf, &[&[u8]])>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Answer, reqwest::Error> {
        TlsGet {
            port: self.websecure,
            ca: &self.certs.ca_pem,
            server_name,
            host,
            client,
        }
        .get(path, headers)
        .await
    }
}

/// A forwardAuth server that records the certificate header of every call and allows.
async fn recorder() -> (SocketAddr, Arc<Mutex<Vec<Vec<String>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = Router::new().fallback(move |headers: HeaderMap| {
        let record = record.clone();
        async move {
            let values = headers
                .get_all(HEADER)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            record.lock().expect("record").push(values);
            ""
        }
    });
    let (addr, task) = serve_app(app).await;
    // The server lives as long as the test's runtime.
    drop(task);
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_traefik_forwards_as_the_client_certificate() {
    let Some(bin) = peer("TOLLGATE_TRAEFIK", "Traefik") else {
        return;
    };
    let (auth, seen) = recorder().await;
    let upstream = echo_upstream().await;
    let stack = MtlsTraefik::start(&bin, auth, upstream.addr).await;
    let certs = &stack.certs;
    let last = || {
        seen.lock()
            .expect("seen")
            .last()
            .cloned()
            .unwrap_or_default()
    };
    let calls = || seen.lock().expect("seen").len();
    let (calls_before, hits_before) = (calls(), upstream.hits());
    let ok = |answer: Result<Answer, reqwest::Error>, what: &str| {
        let answer = answer.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(answer.status, 200, "{what}: {}", answer.body);
    };
    let chain: &[&[u8]] = &[&certs.intermediate];

    // The client's certificate: its DER in base64, no PEM lines, no URL escaping.
    ok(
        stack
            .get(HOST, HOST, Some((&certs.mine, &[])), "/orders/1", &[])
            .await,
        "mine",
    );
    assert_eq!(last(), [b64(&certs.mine.der)]);
    // A chain: every certificate the client sent, in its order (its own first), joined by
    // commas.
    ok(
        stack
            .get(HOST, HOST, Some((&certs.chained, chain)), "/orders/1", &[])
            .await,
        "chained",
    );
    let sent = last();
    assert_eq!(
        sent,
        [format!(
            "{},{}",
            b64(&certs.chained.der),
            b64(&certs.intermediate)
        )]
    );
    eprintln!("Traefik's {HEADER} for a chain: {}", sent[0]);
    eprintln!(
        "the leaf's x5t#S256: {}; the leaf:\n{}",
        thumbprint(&certs.chained.der),
        certs.chained.pem
    );
    // The client's own header is replaced on a connection with a certificate.
    let forged = b64(&certs.other.der);
    ok(
        stack
            .get(
                HOST,
                HOST,
                Some((&certs.mine, &[])),
                "/orders/1",
                &[(HEADER, &forged)],
            )
            .await,
        "mine + forged header",
    );
    assert_eq!(last(), [b64(&certs.mine.der)]);
    // No certificate: the route's TLS options refuse the handshake.
    assert!(
        stack.get(HOST, HOST, None, "/orders/1", &[]).await.is_err(),
        "RequireAndVerifyClientCert without a certificate"
    );
    // A route where the certificate is optional: without one passTLSClientCert sets nothing,
    // and the entrypoint (forwardedHeaders untrusted) deleted the client's header.
    ok(
        stack
            .get(
                OPTIONAL_HOST,
                OPTIONAL_HOST,
                None,
                "/orders/1",
                &[(HEADER, &forged)],
            )
            .await,
        "optional, no certificate",
    );
    assert!(last().is_empty(), "{:?}", last());
    ok(
        stack
            .get(
                OPTIONAL_HOST,
                OPTIONAL_HOST,
                Some((&certs.other, &[])),
                "/orders/1",
                &[],
            )
            .await,
        "optional, a certificate",
    );
    assert_eq!(last(), [b64(&certs.other.der)]);
    // The SNI of the optional host, the Host of the mutual TLS one: Traefik refuses (421)
    // before any middleware.
    let before = calls();
    let fronted = stack
        .get(OPTIONAL_HOST, HOST, None, "/orders/1", &[(HEADER, &forged)])
        .await
        .expect("TLS request");
    assert_eq!(fronted.status, 421, "{}\n{}", fronted.body, stack.log());
    assert_eq!(calls(), before);
    // The plain example entrypoint deletes the client's header too.
    let reply = send(stack.web, "GET", "/orders/1", &[(HEADER, &forged)]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(last().is_empty(), "{:?}", last());
    // An entrypoint whose forwardedHeaders trust the client: without a client certificate
    // Traefik passes the client's own header on, unchanged. Such an entrypoint must never be
    // one tollgate reads certificates from (docs/security.md).
    let reply = send(stack.trusting, "GET", "/orders/1", &[(HEADER, &forged)]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(last(), [forged]);
    assert_eq!(calls() - calls_before, 7);
    assert_eq!(upstream.hits() - hits_before, 7);
    drop(stack);
}

fn assert_denied(answer: &Answer, status: u16, reason: &str, what: &str) {
    assert_eq!(answer.status, status, "{what}: {}", answer.body);
    assert!(
        answer.json()["error_description"]
            .as_str()
            .is_some_and(|d| d.starts_with(&format!("{reason}:"))),
        "{what}: {}",
        answer.body
    );
}

/// A forward-auth call straight to tollgate from `source` (an address in --trusted-proxies,
/// not in --client-cert-proxies), with the headers Traefik would send.
async fn direct(tollgate: SocketAddr, source: [u8; 4], headers: &[(&str, &str)]) -> Answer {
    let http = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(source))
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("client");
    let mut request = http
        .get(format!("http://{tollgate}/auth"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", HOST)
        .header("x-forwarded-uri", "/orders/1");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.expect("direct call");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    Answer {
        status,
        headers,
        body: response.text().await.expect("body"),
    }
}

const BOUND: &str = "  match: {hosts: [api.example.com, optional.example.com], paths: [/orders]}\n  forward:\n    claimsToHeaders: [{claim: sub, header: x-user-id}]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_bound_tokens_through_traefik() {
    let Some(bin) = peer("TOLLGATE_TRAEFIK", "Traefik") else {
        return;
    };
    let idp = Idp::start().await;
    let policies = tempfile::tempdir().expect("dir");
    write_policy(
        policies.path(),
        "bound.yaml",
        &policy_yaml("bound", &idp.issuer, BOUND),
    );
    let tollgate = Tollgate::start(
        policies.path(),
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--forward-auth-family",
            "traefik",
            "--client-cert-proxies",
            "127.0.0.1=traefik",
        ],
    );
    let http = tollgate.http.expect("http listener");
    let upstream: Upstream = echo_upstream().await;
    let stack = MtlsTraefik::start(&bin, http, upstream.addr).await;
    let certs = &stack.certs;
    let bound_to = |der: &[u8]| {
        format!(
            "Bearer {}",
            idp.key
                .mint(&claims(
                    &idp.issuer,
                    json!({"cnf": {"x5t#S256": thumbprint(der)}})
                ))
                .expect("mint")
        )
    };
    let (to_mine, to_chained, to_intermediate) = (
        bound_to(&certs.mine.der),
        bound_to(&certs.chained.der),
        bound_to(&certs.intermediate),
    );
    let forged = b64(&certs.mine.der);
    let chain: &[&[u8]] = &[&certs.intermediate];
    let auth = |token: &str| ("authorization".to_string(), token.to_string());
    let mut allowed = 0;

    // (SNI and Host, client certificate and the ones after it, token, a header the client
    // adds, status, reason)
    type Case<'a> = (
        &'a str,
        Option<(&'a Leaf, &'a [&'a [u8]])>,
        &'a str,
        Option<&'a str>,
        u16,
        &'a str,
    );
    let cases: [Case; 8] = [
        (HOST, Some((&certs.mine, &[])), &to_mine, None, 200, ""),
        (
            HOST,
            Some((&certs.other, &[])),
            &to_mine,
            None,
            401,
            "certificate_binding_mismatch",
        ),
        // The client's header naming the certificate it does not hold: Traefik replaces it.
        (
            HOST,
            Some((&certs.other, &[])),
            &to_mine,
            Some(&forged),
            401,
            "certificate_binding_mismatch",
        ),
        // A chain: the client's own certificate is the one judged, never the intermediate.
        (
            HOST,
            Some((&certs.chained, chain)),
            &to_chained,
            None,
            200,
            "",
        ),
        (
            HOST,
            Some((&certs.chained, chain)),
            &to_intermediate,
            None,
            401,
            "certificate_binding_mismatch",
        ),
        // Where a certificate is optional: none, and the client's header was deleted.
        (
            OPTIONAL_HOST,
            None,
            &to_mine,
            None,
            401,
            "certificate_missing",
        ),
        (
            OPTIONAL_HOST,
            None,
            &to_mine,
            Some(&forged),
            401,
            "certificate_missing",
        ),
        (
            OPTIONAL_HOST,
            Some((&certs.mine, &[])),
            &to_mine,
            None,
            200,
            "",
        ),
    ];
    for (name, client, token, extra, status, reason) in cases {
        let mut headers = vec![auth(token)];
        headers.extend(extra.map(|v| (HEADER.to_string(), v.to_string())));
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let what = format!(
            "{name} {:?} {extra:?}",
            client.map(|(l, more)| (&l.pem[..60], more.len()))
        );
        let answer = stack
            .get(name, name, client, "/orders/1", &pairs)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        if status == 200 {
            assert_eq!(
                answer.status,
                200,
                "{what}: {}\n{}\n{}",
                answer.body,
                tollgate.logs().join("\n"),
                stack.log()
            );
            assert_eq!(
                answer.json()["headers"]["x-user-id"],
                json!(["user-1"]),
                "{what}"
            );
            allowed += 1;
        } else {
            assert_denied(&answer, status, reason, &what);
            assert!(
                answer.challenge().contains("invalid_token"),
                "{what}: {:?}",
                answer.headers
            );
        }
    }
    // No certificate where one is required: no connection at all.
    assert!(stack.get(HOST, HOST, None, "/orders/1", &[]).await.is_err());
    // The optional host's SNI to reach the mutual TLS host without a certificate: 421.
    let fronted = stack
        .get(
            OPTIONAL_HOST,
            HOST,
            None,
            "/orders/1",
            &[("authorization", &to_mine), (HEADER, &forged)],
        )
        .await
        .expect("TLS request");
    assert_eq!(fronted.status, 421, "{}", fronted.body);
    // The plain example entrypoint: no certificate, the client's header deleted.
    let reply = send(
        stack.web,
        "GET",
        "/orders/1",
        &[("Authorization", &to_mine), (HEADER, &forged)],
    )
    .await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.reason(), "certificate_missing", "{reply:?}");
    assert_eq!(upstream.hits(), allowed);

    // Straight to tollgate from 127.0.0.3, trusted for forward auth but not to forward
    // certificates: the header is refused, never read.
    let spoofed = direct(
        http,
        [127, 0, 0, 3],
        &[("authorization", &to_mine), (HEADER, &forged)],
    )
    .await;
    assert_denied(
        &spoofed,
        403,
        "certificate_untrusted",
        "spoofed header, direct",
    );
    let bare = direct(http, [127, 0, 0, 3], &[("authorization", &to_mine)]).await;
    assert_denied(&bare, 401, "certificate_missing", "no header, direct");
    assert!(
        denial_logged(
            &tollgate,
            "certificate_untrusted",
            "x-forwarded-tls-client-cert from 127.0.0.3"
        )
        .await
    );
    assert!(
        denial_logged(
            &tollgate,
            "certificate_binding_mismatch",
            &thumbprint(&certs.mine.der)
        )
        .await
    );
    assert_eq!(upstream.hits(), allowed);
    drop(stack);
}

/// The file-provider example and the Kubernetes one configure mutual TLS alike: the same
/// passTLSClientCert, the same client authentication, the middlewares in the same order.
#[test]
fn the_mutual_tls_examples_agree() {
    use serde::Deserialize as _;
    let file: serde_json::Value = serde_yaml::from_str(MTLS_EXAMPLE).expect("YAML");
    let resources = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/examples/traefik/middleware-mtls.yaml"
    ))
    .expect("middleware-mtls.yaml");
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&resources)
        .map(|doc| serde_json::Value::deserialize(doc).expect("YAML"))
        .collect();
    let kind = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("a {kind} in middleware-mtls.yaml"))
    };
    assert_eq!(
        file["http"]["middlewares"]["client-cert"],
        kind("Middleware")["spec"]
    );
    assert_eq!(kind("Middleware")["metadata"]["name"], "client-cert");
    assert_eq!(
        file["tls"]["options"]["client-cert"]["clientAuth"]["clientAuthType"],
        kind("TLSOption")["spec"]["clientAuth"]["clientAuthType"]
    );
    let route = kind("IngressRoute");
    let names: Vec<&serde_json::Value> = route["spec"]["routes"][0]["middlewares"]
        .as_array()
        .expect("middlewares")
        .iter()
        .map(|m| &m["name"])
        .collect();
    let router = &file["http"]["routers"]["orders-mtls"];
    assert_eq!(
        names,
        router["middlewares"]
            .as_array()
            .expect("middlewares")
            .iter()
            .collect::<Vec<_>>()
    );
    assert_eq!(route["spec"]["routes"][0]["match"], router["rule"]);
    assert_eq!(
        route["spec"]["tls"]["options"]["name"],
        router["tls"]["options"]
    );
    // The forwardAuth both use passes the header on.
    assert!(
        crate::traefik::example_forward_auth()["authRequestHeaders"]
            .as_array()
            .is_some_and(|l| l.iter().any(|h| h == HEADER)),
        "the tollgate middleware's authRequestHeaders lists {HEADER}"
    );
}

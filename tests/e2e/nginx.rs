//! Forward authentication through a real nginx (Debian's package; its `auth_request` module is
//! what ingress-nginx uses), configured with `deploy/examples/nginx/tollgate.conf` itself, and
//! the Traefik `forwardAuth` header contract against the endpoint directly (Traefik cannot be
//! installed here).

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use tollgate::local_issuer::server::IdpServer;
use tollgate::local_issuer::{SigningKey, jwks};

use crate::envoy::{Answer, counting_echo_upstream, get_host};
use crate::support::*;

/// nginx running the example configuration, stopped on drop.
struct Nginx {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

const EXAMPLE: &str = include_str!("../../deploy/examples/nginx/tollgate.conf");

async fn start_nginx(bin: &Path, tollgate: SocketAddr, upstream: SocketAddr) -> Nginx {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    // The example, with this test's addresses.
    let site = EXAMPLE
        .replace("127.0.0.1:8080", &tollgate.to_string())
        .replace("127.0.0.1:9000", &upstream.to_string())
        .replace("127.0.0.1:8000", &format!("127.0.0.1:{port}"));
    assert_ne!(site, EXAMPLE, "the example's addresses were substituted");
    std::fs::write(dir.path().join("tollgate.conf"), site).expect("write site");
    let d = dir.path().display();
    let main = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/client_body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         include {d}/tollgate.conf;\n}}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), main).expect("write conf");
    let child = Command::new(bin)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start nginx");
    let nginx = Nginx { child, port, dir };
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not listen; error log:\n{}",
            nginx.error_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nginx
}

/// A GET with the target exactly as written (HTTP clients normalize dot segments themselves).
fn raw_get(port: u16, target: &str) -> u16 {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer}"))
}

/// A local IdP, its key, and a policy file for it (kept alive with the returned folder).
async fn orders_idp() -> (SigningKey, IdpServer, String, tempfile::TempDir) {
    let key = SigningKey::rsa("k1", "RS256", 2048).expect("key");
    let idp = IdpServer::start("127.0.0.1:0".parse().expect("addr"), jwks(&[&key]))
        .await
        .expect("idp");
    let iss = idp.issuer();
    let dir = tempfile::tempdir().expect("dir");
    write_policy(
        dir.path(),
        "orders.yaml",
        &policy_yaml("orders", &iss, POLICY),
    );
    (key, idp, iss, dir)
}

const POLICY: &str = "  match: {hosts: [api.example.com], paths: [/orders]}\n  rules:\n  - {paths: [/orders/healthz], allowAnonymous: true}\n  - {paths: [/orders/admin], requiredClaims: [{name: roles, values: [admin]}]}\n  forward:\n    claimsToHeaders: [{claim: sub, header: x-user-id}]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_end_to_end() {
    let Some(nginx_bin) = peer("TOLLGATE_NGINX", "nginx (Debian)") else {
        return;
    };
    let (key, idp, iss, dir) = orders_idp().await;
    let tollgate = Tollgate::start(dir.path(), &["--http-addr", "127.0.0.1:0"]);
    let http = tollgate.http.expect("http listener");
    let (upstream, hits, _task) = counting_echo_upstream().await;
    let nginx = start_nginx(&nginx_bin, http, upstream).await;
    let get = |path: &'static str, headers: Vec<(&'static str, String)>| {
        let port = nginx.port;
        async move {
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            get_host(port, HOST, path, &pairs).await
        }
    };
    let upstream_saw = |answer: &Answer| answer.json();

    // A valid token: 200, and the upstream sees the claim header and the token.
    let good = key.mint(&claims(&iss, json!({}))).expect("mint");
    let bearer = format!("Bearer {good}");
    let answer = get(
        "/orders/7",
        vec![
            ("authorization", bearer.clone()),
            ("x-user-id", "forged-user".into()),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, nginx.error_log());
    let seen = upstream_saw(&answer);
    assert_eq!(
        seen["x-user-id"], "user-1",
        "the claim replaces the client's own header"
    );
    assert_eq!(seen["authorization"], bearer.as_str());
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // An expired token: 401, tollgate's WWW-Authenticate reaches the client, the upstream not.
    let now = tollgate::local_issuer::now_secs();
    let expired = key
        .mint(&claims(&iss, json!({"exp": now - 600, "iat": now - 1200})))
        .expect("mint");
    let answer = get(
        "/orders/7",
        vec![("authorization", format!("Bearer {expired}"))],
    )
    .await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert!(
        answer
            .challenge()
            .starts_with("Bearer realm=\"api.example.com\", error=\"invalid_token\", error_description=\"token_expired: the token expired at"),
        "{:?}",
        answer.headers
    );
    // A client naming the anonymous path itself, while asking for a protected one: judged by
    // the path it asked for.
    let answer = get(
        "/orders/7",
        vec![
            ("x-forwarded-uri", "/orders/healthz".into()),
            ("x-original-uri", "/orders/healthz".into()),
            (
                "x-original-url",
                "http://api.example.com/orders/healthz".into(),
            ),
            ("x-forwarded-host", "other.example.com".into()),
        ],
    )
    .await;
    assert_eq!(answer.status, 401, "spoofed path: {}", answer.body);
    assert_eq!(answer.challenge(), "Bearer realm=\"api.example.com\"");
    // The real anonymous path needs no token, and a client cannot smuggle an identity through it.
    let answer = get("/orders/healthz", vec![("x-user-id", "forged-user".into())]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(upstream_saw(&answer).get("x-user-id").is_none());
    // Dot segments (plain or percent-encoded) cannot walk out of the anonymous path: tollgate
    // normalizes X-Original-URL the way nginx and the upstream resolve it.
    for target in [
        "/orders/healthz/../7",
        "/orders/healthz/%2e%2e/7",
        "/orders/healthz/%2E%2E/7",
    ] {
        let status = raw_get(nginx.port, target);
        assert_eq!(status, 401, "{target}");
    }
    // A rule the token does not meet: 403.
    let answer = get("/orders/admin/1", vec![("authorization", bearer.clone())]).await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "only the two allowed requests reached the upstream"
    );

    // The same decisions are counted under the http transport.
    let metrics = tollgate.metrics();
    assert!(
        metrics.contains("tollgate_decisions_total{transport=\"http\",policy=\"shop/orders\",result=\"deny\",reason=\"token_expired\"} 1"),
        "{metrics}"
    );

    // tollgate down: nginx fails closed (500) and the upstream is never reached.
    tollgate.terminate();
    let answer = get("/orders/7", vec![("authorization", bearer.clone())]).await;
    assert!(
        answer.status == 500 || answer.status == 503,
        "tollgate down: {} {}",
        answer.status,
        answer.body
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    idp.stop().await;
}

/// Traefik's forwardAuth sends X-Forwarded-Method/-Proto/-Host/-Uri (replacing any a client
/// sent, with trustForwardHeader off) and copies `authResponseHeaders` from a 2xx answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_forward_auth_header_contract() {
    let (key, idp, iss, dir) = orders_idp().await;
    let trusted = Tollgate::start(dir.path(), &["--http-addr", "127.0.0.1:0"]);
    let good = key.mint(&claims(&iss, json!({}))).expect("mint");
    let client = reqwest::Client::new();
    let forward_auth = |base: SocketAddr, uri: &'static str, token: Option<&str>| {
        let mut request = client
            .get(format!("http://{base}/auth"))
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", HOST)
            .header("x-forwarded-uri", uri)
            .header("x-forwarded-for", "203.0.113.9");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request.send()
    };
    let http = trusted.http.expect("http");
    let ok = forward_auth(http, "/orders/7", Some(&good))
        .await
        .expect("auth");
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-user-id"], "user-1");
    let denied = forward_auth(http, "/orders/7", None).await.expect("auth");
    assert_eq!(denied.status(), 401);
    assert_eq!(
        denied.headers()["www-authenticate"],
        "Bearer realm=\"api.example.com\""
    );
    let body: serde_json::Value =
        serde_json::from_str(&denied.text().await.expect("body")).expect("json body");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.starts_with("token_missing"))
    );
    let malformed = client
        .get(format!("http://{http}/auth"))
        .header("x-forwarded-uri", "orders")
        .send()
        .await
        .expect("auth");
    assert_eq!(malformed.status(), 400);
    trusted.terminate();

    // The same request from an address that is not a trusted proxy: its X-Forwarded-* are
    // ignored, so it is judged as GET /auth on the tollgate host, which no policy covers.
    let untrusted = Tollgate::start(
        dir.path(),
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--trusted-proxies",
            "10.0.0.0/8",
        ],
    );
    let http = untrusted.http.expect("http");
    let answer = forward_auth(http, "/orders/healthz", None)
        .await
        .expect("auth");
    assert_eq!(answer.status(), 403);
    let body: serde_json::Value =
        serde_json::from_str(&answer.text().await.expect("body")).expect("json body");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.starts_with("no_policy")),
        "{body}"
    );
    untrusted.terminate();
    idp.stop().await;
}

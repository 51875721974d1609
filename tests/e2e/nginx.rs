//! Forward authentication through a real nginx (Debian's package; its `auth_request` module is
//! what ingress-nginx uses), configured with `deploy/examples/nginx/tollgate.conf` itself: the
//! request tollgate judges is the one nginx serves, whatever headers a client adds. (Traefik:
//! `traefik.rs`; hostile paths through nginx and Envoy: `paths.rs`.)

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
pub struct Nginx {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

const EXAMPLE: &str = include_str!("../../deploy/examples/nginx/tollgate.conf");

pub async fn start_nginx(bin: &Path, tollgate: SocketAddr, upstream: SocketAddr) -> Nginx {
    start_nginx_with(bin, tollgate, upstream, |site| site).await
}

/// nginx with the example configuration, its addresses substituted and then `edit` applied.
pub async fn start_nginx_with(
    bin: &Path,
    tollgate: SocketAddr,
    upstream: SocketAddr,
    edit: impl FnOnce(String) -> String,
) -> Nginx {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    // The example, with this test's addresses.
    let site = EXAMPLE
        .replace("127.0.0.1:8080", &tollgate.to_string())
        .replace("127.0.0.1:9000", &upstream.to_string())
        .replace("127.0.0.1:8000", &format!("127.0.0.1:{port}"));
    assert_ne!(site, EXAMPLE, "the example's addresses were substituted");
    let site = edit(site);
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
    raw_request(port, "GET", target, HOST, &[])
}

/// A request with the method, target and Host exactly as written; the answer's status.
fn raw_request(port: u16, method: &str, target: &str, host: &str, headers: &[(&str, &str)]) -> u16 {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
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

const POLICY: &str = "  match: {hosts: [api.example.com], paths: [/orders]}\n  rules:\n  - {paths: [/orders/healthz], allowAnonymous: true}\n  - {paths: [/orders/admin], requiredClaims: [{name: roles, values: [admin]}]}\n  - {paths: [/orders/reports], methods: [GET], requiredClaims: [{name: roles, values: [auditor]}]}\n  forward:\n    claimsToHeaders: [{claim: sub, header: x-user-id}]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_end_to_end() {
    let Some(nginx_bin) = peer("TOLLGATE_NGINX", "nginx (Debian)") else {
        return;
    };
    let (key, idp, iss, dir) = orders_idp().await;
    let tollgate = Tollgate::start(
        dir.path(),
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--forward-auth-family",
            "nginx",
        ],
    );
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
            ("x-tollgate-debug", "the-debug-secret-of-the-policy".into()),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, nginx.error_log());
    let seen = upstream_saw(&answer);
    assert_eq!(
        seen["x-user-id"], "user-1",
        "the claim replaces the client's own header"
    );
    assert!(
        seen.get("x-tollgate-debug").is_none(),
        "the debug secret never reaches the upstream"
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
    assert_eq!(
        answer.challenge(),
        "Bearer realm=\"api.example.com\", error=\"invalid_token\", error_description=\"token_expired: the access token has expired\"",
        "{:?}",
        answer.headers
    );
    // A client naming the anonymous path itself, in either family's headers, twice and in
    // other letter cases, while asking for a protected one: nginx replaces or drops them, and
    // tollgate judges the path the client asked for.
    let answer = get(
        "/orders/7",
        vec![
            ("x-forwarded-uri", "/orders/healthz".into()),
            ("X-FORWARDED-URI", "/orders/healthz".into()),
            ("x-forwarded-method", "GET".into()),
            ("x-original-uri", "/orders/healthz".into()),
            (
                "x-original-url",
                "http://api.example.com/orders/healthz".into(),
            ),
            (
                "X-Original-Url",
                "http://api.example.com/orders/healthz".into(),
            ),
            ("x-original-method", "GET".into()),
            ("x-forwarded-host", "other.example.com".into()),
        ],
    )
    .await;
    assert_eq!(answer.status, 401, "spoofed path: {}", answer.body);
    assert_eq!(answer.challenge(), "Bearer realm=\"api.example.com\"");
    let judged = || -> Vec<String> {
        tollgate
            .log_events("denied")
            .iter()
            .filter(|e| e["reason"] == "token_missing")
            .map(|e| e["path"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(5), async || !judged().is_empty()).await,
        "no denial logged"
    );
    assert_eq!(judged(), ["/orders/7"], "the path tollgate judged");
    // A Host header nginx accepts but that would end a URL early ("api.example.com?"): the
    // example sends its own server name, so the request is judged as the path it is.
    for host in ["api.example.com?", "api.example.com#"] {
        let status = raw_request(nginx.port, "GET", "/orders/7", host, &[]);
        assert_eq!(status, 401, "Host: {host}");
    }
    // The real anonymous path needs no token, and a client cannot smuggle an identity through it.
    let answer = get("/orders/healthz", vec![("x-user-id", "forged-user".into())]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(upstream_saw(&answer).get("x-user-id").is_none());
    // Dot segments (plain or percent-encoded), encoded slashes, ; parameters and // cannot
    // walk out of the anonymous path: an upstream could read them otherwise, so tollgate
    // refuses them (400 request_malformed) instead of picking one reading. nginx's
    // auth_request turns every answer but 2xx, 401 and 403 into 500: refused all the same.
    for target in [
        "/orders/healthz/../7",
        "/orders/healthz/%2e%2e/7",
        "/orders/healthz/%2E%2E/7",
        "/orders/healthz/..%2F7",
        "/orders/healthz/..;/7",
        "/orders/healthz;x=1/../7",
    ] {
        let status = raw_get(nginx.port, target);
        assert_eq!(status, 500, "{target}");
    }
    let refused = || {
        tollgate
            .log_events("denied")
            .iter()
            .filter(|e| e["reason"] == "request_malformed")
            .count()
    };
    assert!(
        eventually(Duration::from_secs(5), async || refused() == 6).await,
        "tollgate refused each one itself: {}",
        refused()
    );
    // HEAD runs the GET handler: judged as GET, so the admin rule applies to it too.
    assert_eq!(
        raw_request(
            nginx.port,
            "HEAD",
            "/orders/reports/1",
            HOST,
            &[("authorization", &bearer)]
        ),
        403
    );
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

/// Only the proxies in `--trusted-proxies` may ask: anyone else could ask about requests they
/// never make and read the answer as a permission slip. And a proxy family is never guessed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_answers_only_trusted_proxies_of_the_configured_family() {
    let (key, idp, iss, dir) = orders_idp().await;
    let good = key.mint(&claims(&iss, json!({}))).expect("mint");
    let client = reqwest::Client::new();
    let ask = |base: SocketAddr| {
        client
            .get(format!("http://{base}/auth"))
            .header("x-original-url", "https://api.example.com/orders/7")
            .header("x-original-method", "GET")
            .header("authorization", format!("Bearer {good}"))
            .send()
    };
    let untrusted = Tollgate::start(
        dir.path(),
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--trusted-proxies",
            "10.0.0.0/8=nginx",
        ],
    );
    let answer = ask(untrusted.http.expect("http")).await.expect("auth");
    assert_eq!(answer.status(), 403);
    let body: serde_json::Value =
        serde_json::from_str(&answer.text().await.expect("body")).expect("json body");
    assert_eq!(
        body["error_description"],
        "proxy_not_trusted: the caller is not a trusted proxy"
    );
    untrusted.terminate();

    let trusted = Tollgate::start(
        dir.path(),
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--trusted-proxies",
            "127.0.0.1=nginx",
        ],
    );
    let answer = ask(trusted.http.expect("http")).await.expect("auth");
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-user-id"], "user-1");
    trusted.terminate();

    // No family configured: tollgate does not start, and says which flag to set.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--policies"])
        .arg(dir.path())
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .env_remove("TOLLGATE_FORWARD_AUTH_FAMILY")
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--forward-auth-family"), "{stderr}");
    idp.stop().await;
}

/// The connections open or closing from nginx to `port` on 127.0.0.1, as the kernel lists them
/// (`/proc/net/tcp`: established, closing and TIME-WAIT alike): the distinct local ports of
/// sockets whose remote end is `port`.
fn connections_to(port: u16) -> std::collections::BTreeSet<u16> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port_of = |address: &str| {
        address
            .rsplit(':')
            .next()
            .and_then(|hex| u16::from_str_radix(hex, 16).ok())
    };
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let mut fields = row.split_whitespace().skip(1);
            let local = port_of(fields.next()?)?;
            let remote = port_of(fields.next()?)?;
            (remote == port).then_some(local)
        })
        .collect()
}

/// The example keeps its connections to tollgate alive (`upstream` with `keepalive`), and a
/// denial does not cost one: nginx closes a kept-alive connection whose answer body it did not
/// read, and `auth_request` reads none, so tollgate answers the nginx family's denials without
/// a body. Counted in the kernel's socket table, with the real nginx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_keeps_its_connection_to_tollgate_through_denials() {
    let Some(nginx_bin) = peer("TOLLGATE_NGINX", "nginx (Debian)") else {
        return;
    };
    let (key, idp, iss, dir) = orders_idp().await;
    let tollgate = Tollgate::start(
        dir.path(),
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--forward-auth-family",
            "nginx",
        ],
    );
    let http = tollgate.http.expect("http listener");
    let (upstream, hits, _task) = counting_echo_upstream().await;
    let nginx = start_nginx(&nginx_bin, http, upstream).await;
    let good = key.mint(&claims(&iss, json!({}))).expect("mint");
    let expired = key
        .mint(&claims(
            &iss,
            json!({"exp": tollgate::local_issuer::now_secs() - 600}),
        ))
        .expect("mint");
    let cases = [
        (None, 401),
        (Some("Bearer not-a-jwt".to_string()), 401),
        (Some(format!("Bearer {expired}")), 401),
        (Some(format!("Bearer {good}")), 200),
    ];
    for round in 0..10 {
        for (authorization, status) in &cases {
            let headers: Vec<(&str, &str)> = authorization
                .iter()
                .map(|value| ("authorization", value.as_str()))
                .collect();
            let answer = get_host(nginx.port, HOST, "/orders/7", &headers).await;
            assert_eq!(answer.status, *status, "round {round}: {}", answer.body);
            if *status == 401 {
                // What nginx passes on by itself: the challenge with the reason.
                assert!(
                    answer
                        .challenge()
                        .starts_with("Bearer realm=\"api.example.com\""),
                    "{:?}",
                    answer.headers
                );
            }
        }
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        10,
        "only the allowed requests reached the API"
    );
    let opened = connections_to(http.port());
    assert!(
        !opened.is_empty() && opened.len() <= 2,
        "40 checks, 30 of them denied, should share one kept-alive connection (nginx runs one \
         worker); nginx opened {}: {opened:?}\n{}",
        opened.len(),
        nginx.error_log()
    );
    drop(nginx);
    tollgate.terminate();
    idp.stop().await;
}

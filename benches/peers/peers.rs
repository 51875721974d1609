//! The peers' processes and configurations: OPA-Envoy (a Rego policy on its gRPC ext_authz),
//! Authorino (AuthConfigs on a real API server, authorino.rs), oauth2-proxy (bearer tokens, for
//! nginx `auth_request`), nginx itself, and tollgate's policy files for the same checks. Each binary is the one `benches/peers/build.sh` builds from the
//! pinned module under `tests/peers/`; an environment variable can name another.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::authorino::{self, ControlPlane, IdentityCache, KubeBinaries};
use crate::idp::BenchIdp;
use crate::servers::{self, Server};
use crate::workload::{AUDIENCE, HOST, many_host};

/// The scope every peer requires.
pub const SCOPE: &str = "orders.read";

/// A peer built from a pinned Go module.
pub struct GoPeer {
    pub name: &'static str,
    /// Overrides the cached binary.
    pub env: &'static str,
    /// The module folder under tests/peers/.
    pub module: &'static str,
    /// The binary's name in the cache.
    pub binary: &'static str,
}

pub const OPA_ENVOY: GoPeer = GoPeer {
    name: "OPA-Envoy",
    env: "TOLLGATE_OPA_ENVOY",
    module: "opa-envoy",
    binary: "opa-envoy",
};

pub const OAUTH2_PROXY: GoPeer = GoPeer {
    name: "oauth2-proxy",
    env: "TOLLGATE_OAUTH2_PROXY",
    module: "oauth2-proxy",
    binary: "oauth2-proxy",
};

pub const AUTHORINO: GoPeer = GoPeer {
    name: "Authorino",
    env: "TOLLGATE_AUTHORINO",
    module: "authorino",
    binary: "authorino",
};

impl GoPeer {
    /// The binary: `$<env>`, or the one `tests/peers/go-build.sh` builds for the committed
    /// go.sum (`$CACHE/bin/<name>-<first 16 hex of sha256(go.sum)>`).
    pub fn find(&self) -> anyhow::Result<PathBuf> {
        if let Some(path) = std::env::var_os(self.env) {
            let path = PathBuf::from(path);
            anyhow::ensure!(
                path.is_file(),
                "{}: {} names {}, which is not a file",
                self.name,
                self.env,
                path.display()
            );
            return Ok(path);
        }
        let sum = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/peers")
            .join(self.module)
            .join("go.sum");
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &std::fs::read(&sum).with_context(|| format!("reading {}", sum.display()))?,
        );
        let hex: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let cache = std::env::var_os("TOLLGATE_TEST_CACHE")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tollgate-test"))
            })
            .context("neither TOLLGATE_TEST_CACHE nor HOME is set")?;
        let path = cache.join("bin").join(format!("{}-{hex}", self.binary));
        anyhow::ensure!(
            path.is_file(),
            "{} is not built: {} is missing. Run `bash benches/peers/build.sh` (or set {})",
            self.name,
            path.display(),
            self.env
        );
        Ok(path)
    }
}

/// Waits until `addr` accepts connections.
fn wait_listening(name: &str, addr: SocketAddr, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(addr).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} did not listen on {addr}; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn spawn(name: &str, mut command: Command, addr: SocketAddr, log: &Path) -> anyhow::Result<Server> {
    let file = std::fs::File::create(log)?;
    let child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let server = Server::spawned(name, child, addr);
    wait_listening(name, addr, log)?;
    Ok(server)
}

/// The hosts every peer knows: the main one and the 1,000 of the many-hosts scenario.
pub fn hosts(many: usize) -> Vec<String> {
    std::iter::once(HOST.to_string())
        .chain((0..many).map(many_host))
        .collect()
}

/// tollgate: one policy per host, each with the IdP's keys inline (as OPA gets them as data),
/// the audience, the scope, and `sub` forwarded as `x-user-id`. Like the peers' answers, an
/// allow carries no claims as dynamic metadata (`metadataClaims: []`): nothing here reads them.
pub fn write_tollgate_policies(dir: &Path, idp: &BenchIdp, many: usize) -> anyhow::Result<()> {
    for (i, host) in hosts(many).iter().enumerate() {
        let doc = json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "JwtPolicy",
        "metadata": {"name": format!("p{i:04}"), "namespace": "bench"},
        "spec": {
            "match": {"hosts": [host]},
            "issuers": [{"issuer": idp.issuer(), "audiences": [AUDIENCE], "jwks": idp.jwks()}],
            "requiredClaims": [{"name": "scope", "separator": " ", "values": [SCOPE]}],
            "forward": {
                "claimsToHeaders": [{"claim": "sub", "header": "x-user-id"}],
                "metadataClaims": [],
            },
        }});
        std::fs::write(dir.join(format!("p{i:04}.json")), doc.to_string())?;
    }
    Ok(())
}

/// tollgate serving gRPC and HTTP forward auth (nginx family) on the same policies.
pub fn tollgate(name: &str, policies: &Path, cache: bool) -> anyhow::Result<Server> {
    let mut extra = vec![
        "--http-addr",
        "127.0.0.1:0",
        "--trusted-proxies",
        "127.0.0.1/32",
        "--forward-auth-family",
        "nginx",
    ];
    if !cache {
        extra.extend(["--token-cache-entries", "0"]);
    }
    let server = servers::tollgate(name, policies, &extra)?;
    anyhow::ensure!(server.http.is_some(), "{name}: no HTTP listener");
    Ok(server)
}

/// The Rego policy: one policy for every host, deciding by the request's host through
/// `data.hosts` (1,001 entries). `io.jwt.decode_verify` checks the signature with the IdP's
/// JWKS (loaded as data, never fetched), `exp`/`nbf` against the current time, `iss`, and that
/// `aud` contains the host's audience; the scope is split and must contain the host's scope.
/// An allow forwards `sub` as `x-user-id`; anything else is a 401.
pub const REGO: &str = r#"package bench.authz

default result := {"allowed": false, "http_status": 401}

bearer := t if {
	auth := input.attributes.request.http.headers.authorization
	startswith(auth, "Bearer ")
	t := substring(auth, 7, -1)
}

policy := data.hosts[input.attributes.request.http.host]

claims := payload if {
	[valid, _, payload] := io.jwt.decode_verify(bearer, {
		"cert": data.jwks,
		"iss": data.issuer,
		"aud": policy.audience,
	})
	valid
}

result := {"allowed": true, "headers": {"x-user-id": claims.sub}} if {
	policy.scope in split(claims.scope, " ")
}
"#;

/// OPA-Envoy: the Rego policy and its data as files, its gRPC ext_authz on a free port,
/// decision logs off. `cache`: OPA's inter-query cache of verified tokens (`io_jwt`, off by
/// default in OPA) on, the counterpart of tollgate's verified-token cache.
pub fn opa_envoy(
    binary: &Path,
    name: &str,
    dir: &Path,
    idp: &BenchIdp,
    many: usize,
    cache: bool,
) -> anyhow::Result<Server> {
    let dir = dir.join(name.replace(|c: char| !c.is_ascii_alphanumeric(), "-"));
    std::fs::create_dir_all(&dir)?;
    let policy: serde_json::Map<String, Value> = hosts(many)
        .into_iter()
        .map(|h| (h, json!({"audience": AUDIENCE, "scope": SCOPE})))
        .collect();
    let data = json!({
        "jwks": idp.jwks().to_string(),
        "issuer": idp.issuer(),
        "hosts": policy,
    });
    std::fs::write(dir.join("policy.rego"), REGO)?;
    std::fs::write(dir.join("data.json"), data.to_string())?;
    let grpc = servers::free_port()?;
    let http = servers::free_port()?;
    let config = json!({
        "plugins": {"envoy_ext_authz_grpc": {
            "addr": grpc.to_string(),
            "path": "bench/authz/result",
        }},
        "decision_logs": {"console": false},
        "caching": {"inter_query_builtin_value_cache": {"named": {"io_jwt": {
            "disabled": !cache,
            "max_num_entries": 100_000,
        }}}},
    });
    std::fs::write(dir.join("config.json"), config.to_string())?;
    let mut command = Command::new(binary);
    command
        .arg("run")
        .arg("--server")
        .arg("--addr")
        .arg(http.to_string())
        .args(["--log-level", "error", "--config-file"])
        .arg(dir.join("config.json"))
        .arg(dir.join("policy.rego"))
        .arg(dir.join("data.json"));
    spawn(name, command, grpc, &dir.join("log"))
}

/// oauth2-proxy as nginx's `auth_request` endpoint for bearer tokens: OIDC discovery against
/// the bench IdP (issuer check), the client id as the audience, `sub` as the user, answering
/// `/oauth2/auth` with 202 and `X-Auth-Request-User`. No browser flow is ever started: a request
/// without a valid bearer token gets 401.
pub fn oauth2_proxy(binary: &Path, dir: &Path, idp: &BenchIdp) -> anyhow::Result<Server> {
    let addr = servers::free_port()?;
    let mut command = Command::new(binary);
    command.args([
        &format!("--http-address=http://{addr}"),
        "--provider=oidc",
        &format!("--oidc-issuer-url={}", idp.issuer()),
        &format!("--client-id={AUDIENCE}"),
        "--client-secret=bench-client-secret",
        "--cookie-secret=0123456789abcdef0123456789abcdef",
        "--cookie-secure=false",
        "--email-domain=*",
        "--skip-jwt-bearer-tokens=true",
        "--set-xauthrequest=true",
        "--reverse-proxy=true",
        "--upstream=static://202",
        "--request-logging=false",
        "--auth-logging=false",
        "--standard-logging=false",
        "--silence-ping-logging=true",
    ]);
    spawn("oauth2-proxy", command, addr, &dir.join("oauth2-proxy.log"))
}

/// Where nginx's auth subrequest goes, and the answer header that carries the user.
pub enum NginxAuth {
    /// tollgate's `/auth` (forward-auth family nginx): `X-User-Id`.
    Tollgate(SocketAddr),
    /// oauth2-proxy's `/oauth2/auth`: `X-Auth-Request-User`.
    Oauth2Proxy(SocketAddr),
}

/// nginx, one worker process, HTTP/2 without TLS (prior knowledge) on its listener, every host
/// behind `auth_request`; an allowed request goes (kept-alive connections) to a second server
/// of the same nginx that answers 200 with the `X-User-Id` it got, so the forwarded user can
/// be checked. Both auth upstreams use kept-alive HTTP/1.1 connections.
pub fn nginx(
    binary: &Path,
    name: &str,
    dir: &Path,
    auth: &NginxAuth,
    many: usize,
) -> anyhow::Result<Server> {
    let dir = dir.join(name.replace(|c: char| !c.is_ascii_alphanumeric(), "-"));
    std::fs::create_dir_all(&dir)?;
    let listen = servers::free_port()?;
    let echo = servers::free_port()?;
    let (upstream, path, user_header) = match auth {
        NginxAuth::Tollgate(a) => (*a, "/auth", "x_user_id"),
        NginxAuth::Oauth2Proxy(a) => (*a, "/oauth2/auth", "x_auth_request_user"),
    };
    let names = hosts(many).join(" ");
    let d = dir.display();
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {d}/client_body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 100000000;
  server_names_hash_max_size 4096;
  upstream auth {{ server {upstream}; keepalive 64; keepalive_requests 100000000; }}
  upstream echo {{ server {echo}; keepalive 64; keepalive_requests 100000000; }}
  server {{
    listen {echo};
    location / {{ return 200 "$http_x_user_id"; }}
  }}
  server {{
    listen {listen} http2;
    server_name {names};
    location / {{
      auth_request /_auth;
      auth_request_set $auth_user $upstream_http_{user_header};
      proxy_set_header X-User-Id $auth_user;
      proxy_set_header Authorization "";
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://echo;
    }}
    location = /_auth {{
      internal;
      proxy_pass http://auth{path};
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Original-URL $scheme://$host$request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Forwarded-Uri "";
      proxy_set_header X-Forwarded-Method "";
      proxy_connect_timeout 1s;
      proxy_read_timeout 5s;
    }}
  }}
}}
"#
    );
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let mut command = Command::new(binary);
    command
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"));
    spawn(name, command, listen, &dir.join("error.log"))
}

/// nginx: `TOLLGATE_NGINX`, as tests/run.sh installs it.
pub fn nginx_binary() -> Option<PathBuf> {
    std::env::var_os("TOLLGATE_NGINX")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
}

/// The control plane Authorino reads its AuthConfigs from: `TOLLGATE_KUBE_APISERVER`,
/// `TOLLGATE_ETCD` and `TOLLGATE_KUBECTL`, as tests/run.sh builds and installs them.
pub fn kube_binaries() -> anyhow::Result<KubeBinaries> {
    let get = |var: &str, what: &str| -> anyhow::Result<PathBuf> {
        let path = std::env::var_os(var).map(PathBuf::from);
        match path {
            Some(path) if path.is_file() => Ok(path),
            _ => anyhow::bail!(
                "Authorino needs {what}: set {var} (tests/run.sh builds it and prints the path)"
            ),
        }
    };
    Ok(KubeBinaries {
        apiserver: get("TOLLGATE_KUBE_APISERVER", "kube-apiserver")?,
        etcd: get("TOLLGATE_ETCD", "etcd")?,
        kubectl: get("TOLLGATE_KUBECTL", "kubectl")?,
        helm: None,
    })
}

/// Authorino's identity cache as the benchmark configures it: Authorino's default ttl (60 s),
/// and 2 MiB per evaluator, the smallest size that caches these tokens (entries up to 2,024
/// bytes): the default 1 MiB refuses every entry above 1,000 bytes
/// and a bench token's `Authorization` header and claims are 1,200 to 1,500 together (see
/// [`IdentityCache`]).
pub const AUTHORINO_CACHE: IdentityCache = IdentityCache {
    ttl: 60,
    size_mib: 2,
};

/// The namespaces of the two Authorino instances (cache on, cache off).
const AUTHORINO_NAMESPACES: [&str; 2] = ["bench", "bench-no-cache"];

/// Authorino, twice on one control plane (each instance watching its own namespace with one
/// AuthConfig per host): with its identity cache ([`AUTHORINO_CACHE`]), and without it for the
/// fresh-token scenarios. Both start at once; returns when every AuthConfig of both is `Ready`.
/// The servers are Authorino's processes only; the control plane stays up while the returned
/// [`ControlPlane`] is kept. Blocking: call it in `spawn_blocking` (Authorino reads the IdP's
/// discovery while it loads each AuthConfig).
pub fn authorino(
    binary: &Path,
    kube: KubeBinaries,
    dir: &Path,
    issuer: &str,
    many: usize,
) -> anyhow::Result<(ControlPlane, [Server; 2])> {
    let plane = ControlPlane::start(kube)?;
    let hosts = hosts(many);
    let dirs = AUTHORINO_NAMESPACES.map(|ns| dir.join(format!("authorino-{ns}")));
    let [cached, uncached] = std::thread::scope(|scope| {
        let start = |i: usize| {
            let (plane, hosts, dirs) = (&plane, &hosts, &dirs);
            scope.spawn(move || {
                plane.start_authorino(&authorino::Instance {
                    authorino: binary,
                    namespace: AUTHORINO_NAMESPACES[i],
                    issuer,
                    audience: AUDIENCE,
                    scope: SCOPE,
                    hosts,
                    grpc_port: None,
                    identity_cache: (i == 0).then_some(AUTHORINO_CACHE),
                    dir: Some(&dirs[i]),
                })
            })
        };
        let handles = [start(0), start(1)];
        handles.map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("starting Authorino panicked"))
                .and_then(|r| r)
        })
    });
    let servers =
        [(cached?, "Authorino"), (uncached?, "Authorino (cache off)")].map(|(instance, name)| {
            let grpc = instance.grpc;
            Server::spawned(name, instance.into_process(), grpc)
        });
    Ok((plane, servers))
}

//! Authorino (`github.com/kuadrant/authorino`, pinned in tests/peers/authorino/go.mod) as a peer
//! of the side-by-side benchmark: its gRPC ext_authz server reading `AuthConfig`s from a real
//! API server (etcd + kube-apiserver started here, the e2e tests' control_plane.rs), as a
//! namespaced instance with the RBAC its install bundle ships.
//!
//! ```text
//! ControlPlane::start ─► etcd + kube-apiserver ─► install/manifests.yaml of the pinned module
//!                        (AuthConfig CRD, ClusterRoles)
//! plane.start_authorino(instance) ─► namespace, ServiceAccount, RoleBinding
//!                   ─► one AuthConfig per host ─► `authorino server` (ServiceAccount token)
//!                   ─► every AuthConfig's status Ready ─► Authorino { grpc, pid }
//! ```
//!
//! Several instances can share one control plane, each in its own namespace (the benchmark runs
//! one with Authorino's identity cache and one without). Every process is killed on drop: an
//! instance by its [`Authorino`] (or whoever took its process with [`Authorino::into_process`]),
//! the control plane when the last of its [`ControlPlane`] and instances is gone.
//!
//! The AuthConfig ([`auth_config_yaml`]) asks for what tollgate's bench policy asks for, with
//! Authorino's own means: JWT verification with keys from the issuer's OpenID discovery,
//! then pattern-matching authorization on `iss`, `aud` and `scope`, and `sub` as the
//! `x-user-id` header on allow. What is and is not equivalent is listed on that function.
//!
//! Blocking (std::process and kubectl): from async code, call [`start`] and
//! [`ControlPlane::start`] in `spawn_blocking`. The issuer must already serve discovery:
//! Authorino fetches it while it loads each AuthConfig.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

// The e2e tests' control plane, the same file (not a copy). Included here so that this module
// stands alone; the e2e crate, which includes this module for its test, then compiles the file
// twice (hence duplicate_mod), and uses only part of it here (dead_code).
#[allow(dead_code, clippy::duplicate_mod)]
#[path = "../../tests/e2e/control_plane.rs"]
mod control_plane;

pub use control_plane::Binaries as KubeBinaries;
use control_plane::{Cluster, free_port, http_get};

/// The Go module of the pinned Authorino (its version is the one tests/peers/authorino/go.mod
/// selects).
pub const MODULE: &str = "github.com/kuadrant/authorino";
/// The namespace the AuthConfigs live in and the instance watches.
pub const NAMESPACE: &str = "bench";
/// The ServiceAccount Authorino runs as.
const SERVICE_ACCOUNT: &str = "authorino";

/// What [`start`] starts: a control plane and one instance in namespace [`NAMESPACE`], without
/// an identity cache.
pub struct Settings<'a> {
    /// The `authorino` binary (`bash tests/peers/go-build.sh tests/peers/authorino
    /// github.com/kuadrant/authorino authorino`).
    pub authorino: &'a Path,
    /// etcd, kube-apiserver and kubectl (helm is not used).
    pub kube: KubeBinaries,
    /// The issuer URL, also its OpenID discovery base (`http://127.0.0.1:<port>`).
    pub issuer: &'a str,
    /// The audience a token must carry.
    pub audience: &'a str,
    /// The scope the space-separated `scope` claim must contain.
    pub scope: &'a str,
    /// One AuthConfig per host, in this order (the first is the main host). A user with 1,000
    /// services writes one AuthConfig per service (Kuadrant generates one per route), so 1,000
    /// hosts are 1,000 AuthConfigs.
    pub hosts: &'a [String],
    /// Authorino's gRPC port (it listens on every interface), or `None` for a free one.
    pub grpc_port: Option<u16>,
}

/// One Authorino instance on a [`ControlPlane`].
pub struct Instance<'a> {
    /// The `authorino` binary.
    pub authorino: &'a Path,
    /// The namespace its AuthConfigs live in and it watches (created here; one per instance).
    pub namespace: &'a str,
    pub issuer: &'a str,
    pub audience: &'a str,
    pub scope: &'a str,
    /// One AuthConfig per host, as in [`Settings::hosts`].
    pub hosts: &'a [String],
    pub grpc_port: Option<u16>,
    /// Authorino's cache of the JWT evaluator's result ([`IdentityCache`]), or `None`.
    pub identity_cache: Option<IdentityCache>,
    /// Where its log and the AuthConfigs it was given are written (kept after the run), or
    /// `None` for the control plane's temporary directory.
    pub dir: Option<&'a Path>,
}

/// Authorino's identity cache: `authentication.<name>.cache` of the AuthConfig, keyed by the
/// `Authorization` header, and `--evaluator-cache-size`. What it keeps is the verified token's
/// claims, so a hit skips the signature verification (the pattern-matching authorization and
/// the response still run on every request): the counterpart of tollgate's verified-token cache
/// and OPA's `io_jwt` cache.
///
/// Each evaluator (so each AuthConfig) gets its own freecache of `size_mib`. freecache refuses
/// an entry (key + value) larger than 1/1024 of its size, and Authorino then only logs it at
/// debug level: with the default 1 MiB, no entry above 1,000 bytes is ever cached, and a bench
/// token's bearer header (the key) is about 1,000 bytes for RS256 and 750 for ES256, its claims
/// (the value) about 450. Only successes are cached, for `ttl` seconds
/// whatever the token's `exp` (an entry can outlive its token by up to `ttl`).
#[derive(Clone, Copy, Debug)]
pub struct IdentityCache {
    /// Seconds (Authorino's default: 60).
    pub ttl: u32,
    /// `--evaluator-cache-size`, MiB per evaluator (Authorino's default: 1).
    pub size_mib: u32,
}

/// How long the start took.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    /// etcd and kube-apiserver started, `/readyz` ok.
    pub api_server: Duration,
    /// Install bundle, RBAC and every AuthConfig written.
    pub objects: Duration,
    /// From `authorino server` to its gRPC port accepting connections.
    pub grpc_listening: Duration,
    /// From `authorino server` to every AuthConfig's status `Ready` (what `start` waits for).
    pub auth_configs_ready: Duration,
}

/// etcd and kube-apiserver with Authorino's CRD and ClusterRoles installed. Stopped when this
/// and every instance started on it are dropped.
pub struct ControlPlane {
    cluster: Arc<Cluster>,
    /// The pinned Authorino version (from tests/peers/authorino/go.mod).
    pub version: String,
    /// etcd and kube-apiserver started, `/readyz` ok.
    pub api_server: Duration,
    /// The install bundle applied and its CRD established.
    pub bundle: Duration,
}

/// A running Authorino; its process is killed on drop.
pub struct Authorino {
    /// `None` only once [`Authorino::into_process`] took it (which consumes `self`).
    child: Option<Child>,
    /// Connect here (Authorino listens on all interfaces: its flag is a port, not an address).
    pub grpc: SocketAddr,
    /// Prometheus metrics (`/metrics`, `/server-metrics`).
    pub metrics: SocketAddr,
    /// Health probes (`/healthz`, `/readyz`, `/readyz/authconfigs`).
    pub health: SocketAddr,
    /// The pinned version (from tests/peers/authorino/go.mod).
    pub version: String,
    pub timings: Timings,
    /// When `authorino server` was started (`timings` count from here).
    pub started: Instant,
    namespace: String,
    log: PathBuf,
    /// Dropped after `child` is killed (Drop below).
    cluster: Arc<Cluster>,
}

impl Authorino {
    fn child(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("invariant: the process is only taken by into_process, which consumes self")
    }

    /// Authorino's process id, for CPU and RSS from `/proc`.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("invariant: the process is only taken by into_process, which consumes self")
            .id()
    }

    /// The process, for a caller that keeps and stops it itself (the benchmark's `Server`). The
    /// control plane stays up as long as its [`ControlPlane`] is kept.
    pub fn into_process(mut self) -> Child {
        self.child
            .take()
            .expect("invariant: the process is only taken by into_process, which consumes self")
    }

    /// `http://<grpc>`, for a gRPC client.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The last lines of Authorino's log.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// The AuthConfigs of its namespace as the API server has them (JSON list).
    pub fn auth_configs(&self) -> anyhow::Result<Value> {
        auth_configs(&self.cluster, &self.namespace)
    }
}

impl Drop for Authorino {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn auth_configs(cluster: &Cluster, namespace: &str) -> anyhow::Result<Value> {
    let out = cluster
        .try_kubectl(&["get", "authconfigs", "-n", namespace, "-o", "json"])
        .map_err(anyhow::Error::msg)?;
    Ok(serde_json::from_str(&out)?)
}

/// The AuthConfig for `host` (YAML), what a user would write for tollgate's bench policy
/// (`issuers: [{issuer, audiences: [audience]}]`, `requiredClaims: scope ∋ scope`,
/// `forward.claimsToHeaders: sub → x-user-id`):
///
/// - `authentication.jwt.issuerUrl`: OpenID discovery, then the JWKS it names; go-oidc
///   verifies the signature (algorithms: the discovery's `id_token_signing_alg_values_supported`,
///   RS256 when absent), requires `exp` in the future (no leeway) and `nbf` (5 minutes of
///   leeway, fixed). Authorino turns off go-oidc's issuer and audience checks
///   (`SkipIssuerCheck`, `SkipClientIDCheck`), hence the patterns below.
/// - `authorization.patternMatching`: `iss` equal to the issuer, `aud` (a string or an array)
///   including the audience, `scope` matching `(^| )<scope>( |$)` (Authorino has no
///   "space-separated list contains" operator; `incl` only looks into JSON arrays).
/// - `response.success.headers.x-user-id`: the `sub` claim.
/// - with `identity_cache`: `authentication.idp.cache`, keyed by the `Authorization` header
///   (see [`IdentityCache`]).
///
/// Not equivalent: a failed `iss`/`aud`/`scope` check is an authorization failure (403,
/// PERMISSION_DENIED) where tollgate answers 401; `iat` and `typ` are not looked at; the clock
/// leeway is go-oidc's, not configurable; a token whose signature does not verify makes
/// go-oidc fetch the JWKS again (coalesced while one fetch is in flight), every time; each
/// AuthConfig has its own discovery document and key cache.
pub fn auth_config_yaml(
    name: &str,
    namespace: &str,
    host: &str,
    issuer: &str,
    audience: &str,
    scope: &str,
    identity_cache: Option<IdentityCache>,
) -> String {
    let scope_pattern = format!("(^| ){}( |$)", regex_escape(scope));
    let cache = identity_cache.map_or(String::new(), |c| {
        format!(
            "      cache:\n        key:\n          selector: context.request.http.headers.authorization\n        ttl: {}\n",
            c.ttl
        )
    });
    format!(
        r#"apiVersion: authorino.kuadrant.io/v1beta3
kind: AuthConfig
metadata:
  name: {name}
  namespace: {namespace}
spec:
  hosts:
  - {host}
  authentication:
    idp:
      jwt:
        issuerUrl: {issuer}
      credentials:
        authorizationHeader:
          prefix: Bearer
{cache}  authorization:
    claims:
      patternMatching:
        patterns:
        - selector: auth.identity.iss
          operator: eq
          value: {issuer_json}
        - selector: auth.identity.aud
          operator: incl
          value: {audience_json}
        - selector: auth.identity.scope
          operator: matches
          value: {scope_json}
  response:
    success:
      headers:
        x-user-id:
          plain:
            selector: auth.identity.sub
"#,
        issuer_json = Value::from(issuer),
        audience_json = Value::from(audience),
        scope_json = Value::from(scope_pattern),
    )
}

/// `text` with the characters Go's regexp syntax treats specially escaped.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The pinned module's folder in the Go module cache (`go mod download -json`, in
/// tests/peers/authorino with the cache go-build.sh uses): its install bundle is read from
/// there, not copied into this repository. Returns (folder, version).
pub fn module_dir() -> anyhow::Result<(PathBuf, String)> {
    let peer = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/authorino");
    let cache = std::env::var_os("TOLLGATE_TEST_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tollgate-test")))
        .context("neither TOLLGATE_TEST_CACHE nor HOME is set")?;
    let go = which_go().unwrap_or_else(|| PathBuf::from("/usr/local/go/bin/go"));
    let out = Command::new(&go)
        .args(["mod", "download", "-json", MODULE])
        .current_dir(&peer)
        .env("GOMODCACHE", cache.join("go/mod"))
        .env("GOFLAGS", "-modcacherw")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} mod download", go.display()))?;
    let info: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "go mod download -json {MODULE}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(error) = info["Error"].as_str() {
        bail!("go mod download {MODULE}: {error}");
    }
    let dir = info["Dir"].as_str().context("no Dir in go mod download")?;
    let version = info["Version"].as_str().unwrap_or_default().to_string();
    Ok((PathBuf::from(dir), version))
}

fn which_go() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("go"))
            .find(|p| p.is_file())
    })
}

/// Starts a control plane and one Authorino with one AuthConfig per host (namespace
/// [`NAMESPACE`], no identity cache), and waits until every AuthConfig's status is `Ready`.
pub fn start(settings: Settings<'_>) -> anyhow::Result<Authorino> {
    let plane = ControlPlane::start(settings.kube)?;
    let mut authorino = plane.start_authorino(&Instance {
        authorino: settings.authorino,
        namespace: NAMESPACE,
        issuer: settings.issuer,
        audience: settings.audience,
        scope: settings.scope,
        hosts: settings.hosts,
        grpc_port: settings.grpc_port,
        identity_cache: None,
        dir: None,
    })?;
    authorino.timings.api_server = plane.api_server;
    authorino.timings.objects += plane.bundle;
    Ok(authorino)
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver and installs Authorino's bundle (CRD + ClusterRoles)
    /// exactly as the pinned release ships it.
    pub fn start(kube: KubeBinaries) -> anyhow::Result<ControlPlane> {
        let (module, version) = module_dir()?;
        let began = Instant::now();
        let cluster = Cluster::launch(kube, &[]).map_err(anyhow::Error::msg)?;
        let api_server = began.elapsed();

        let bundle_began = Instant::now();
        let bundle = std::fs::read_to_string(module.join("install/manifests.yaml"))
            .with_context(|| format!("{}/install/manifests.yaml", module.display()))?;
        cluster.try_apply(&bundle).map_err(anyhow::Error::msg)?;
        cluster
            .try_kubectl(&[
                "wait",
                "--for",
                "condition=Established",
                "--timeout",
                "60s",
                "crd/authconfigs.authorino.kuadrant.io",
            ])
            .map_err(anyhow::Error::msg)?;
        Ok(ControlPlane {
            cluster: Arc::new(cluster),
            version,
            api_server,
            bundle: bundle_began.elapsed(),
        })
    }

    /// The API server's version (`kubectl version`), for a report.
    pub fn server_version(&self) -> String {
        self.cluster
            .try_kubectl(&["version", "-o", "json"])
            .ok()
            .and_then(|out| serde_json::from_str::<Value>(&out).ok())
            .and_then(|v| v["serverVersion"]["gitVersion"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "?".into())
    }

    /// Starts one Authorino watching `instance.namespace`, with one AuthConfig per host, and
    /// waits until every AuthConfig's status is `Ready`. Instances on the same plane must use
    /// different namespaces.
    pub fn start_authorino(&self, instance: &Instance<'_>) -> anyhow::Result<Authorino> {
        if instance.hosts.is_empty() {
            bail!("no hosts");
        }
        let cluster = &self.cluster;
        let namespace = instance.namespace;
        let objects_began = Instant::now();
        // A namespaced instance (what the Authorino operator sets up for `clusterWide: false`):
        // a RoleBinding of the manager role in the watched namespace.
        cluster
            .try_apply(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}}}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {SERVICE_ACCOUNT}, namespace: {namespace}}}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: authorino, namespace: {namespace}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: authorino-manager-role}}\nsubjects:\n- {{kind: ServiceAccount, name: {SERVICE_ACCOUNT}, namespace: {namespace}}}\n"
            ))
            .map_err(anyhow::Error::msg)?;
        let configs: Vec<String> = instance
            .hosts
            .iter()
            .enumerate()
            .map(|(i, host)| {
                auth_config_yaml(
                    &format!("host-{i:04}"),
                    namespace,
                    host,
                    instance.issuer,
                    instance.audience,
                    instance.scope,
                    instance.identity_cache,
                )
            })
            .collect();
        let dir = instance.dir.map_or_else(
            || cluster.dir.path().join(format!("authorino-{namespace}")),
            Path::to_path_buf,
        );
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("auth-configs.yaml"), configs.join("---\n"))?;
        // Several objects per kubectl call: one call per object would cost a process each.
        for chunk in configs.chunks(250) {
            cluster
                .try_apply(&chunk.join("---\n"))
                .map_err(anyhow::Error::msg)?;
        }
        let kubeconfig = cluster.service_account_kubeconfig(namespace, SERVICE_ACCOUNT);
        let objects = objects_began.elapsed();

        let grpc_port = instance.grpc_port.unwrap_or_else(free_port);
        let metrics: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let health: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join("authorino.log");
        let log_file = File::create(&log)?;
        let mut command = Command::new(instance.authorino);
        command
            .arg("server")
            .args(["--watch-namespace", namespace])
            .args(["--ext-auth-grpc-port", &grpc_port.to_string()])
            // 0 turns the raw HTTP authorization interface and the wristband OIDC server off.
            .args(["--ext-auth-http-port", "0", "--oidc-http-port", "0"])
            .args(["--metrics-addr", &metrics.to_string()])
            .args(["--health-probe-addr", &health.to_string()])
            .args(["--webhook-service-port", &free_port().to_string()])
            .arg("--enable-leader-election=false")
            .args(["--log-level", "warn", "--log-mode", "production"]);
        if let Some(cache) = instance.identity_cache {
            command.args(["--evaluator-cache-size", &cache.size_mib.to_string()]);
        }
        let started = Instant::now();
        let child = command
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("WATCH_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", instance.authorino.display()))?;
        let mut authorino = Authorino {
            child: Some(child),
            grpc: SocketAddr::from(([127, 0, 0, 1], grpc_port)),
            metrics,
            health,
            version: self.version.clone(),
            started,
            timings: Timings {
                api_server: Duration::ZERO,
                objects,
                grpc_listening: Duration::ZERO,
                auth_configs_ready: Duration::ZERO,
            },
            namespace: namespace.to_string(),
            log,
            cluster: self.cluster.clone(),
        };
        authorino.wait_ready(instance.hosts.len())?;
        Ok(authorino)
    }
}

impl Authorino {
    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child().try_wait()? {
            bail!("Authorino exited ({status}):\n{}", self.log_tail());
        }
        Ok(())
    }

    /// Waits until the gRPC port listens, then until `count` AuthConfigs are `Ready` and
    /// `/readyz/authconfigs` answers 200.
    fn wait_ready(&mut self, count: usize) -> anyhow::Result<()> {
        let deadline =
            self.started + Duration::from_secs(60) + Duration::from_millis(200) * count as u32;
        loop {
            self.check_running()?;
            if TcpStream::connect_timeout(&self.grpc, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "Authorino's gRPC port is not listening:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.timings.grpc_listening = self.started.elapsed();
        loop {
            self.check_running()?;
            let list = self.auth_configs()?;
            let items = list["items"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let ready = items.iter().filter(|item| is_ready(item)).count();
            if ready == count
                && http_get(&format!("http://{}/readyz/authconfigs", self.health))
                    .is_ok_and(|(status, _)| status == 200)
            {
                break;
            }
            if Instant::now() >= deadline {
                let not_ready: Vec<String> = items
                    .iter()
                    .filter(|item| !is_ready(item))
                    .take(3)
                    .map(|item| format!("{} {}", item["metadata"]["name"], item["status"]))
                    .collect();
                bail!(
                    "{ready} of {count} AuthConfigs ready; e.g. {not_ready:?}\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.timings.auth_configs_ready = self.started.elapsed();
        Ok(())
    }
}

/// Whether an AuthConfig's status has `Ready=True` (Authorino indexed every host).
fn is_ready(item: &Value) -> bool {
    item["status"]["conditions"]
        .as_array()
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[cfg(test)]
mod tests {
    // The peers bench (harness = false) compiles this module without its #[test] functions.
    #[allow(unused_imports)]
    use super::*;

    #[test]
    fn scope_pattern_escapes_regex_syntax() {
        assert_eq!(regex_escape("orders.read"), r"orders\.read");
        assert_eq!(regex_escape("a+b(c)"), r"a\+b\(c\)");
        let yaml = auth_config_yaml(
            "n",
            "ns",
            "h",
            "http://i",
            "api://bench",
            "orders.read",
            None,
        );
        assert!(
            yaml.contains(r#"value: "(^| )orders\\.read( |$)""#),
            "{yaml}"
        );
        assert!(!yaml.contains("cache:"), "{yaml}");
    }

    #[test]
    fn identity_cache_is_keyed_by_the_authorization_header() {
        let cache = IdentityCache {
            ttl: 60,
            size_mib: 4,
        };
        let yaml = auth_config_yaml("n", "ns", "h", "http://i", "a", "s", Some(cache));
        let doc: Value = serde_yaml::from_str(&yaml).expect("YAML");
        let idp = &doc["spec"]["authentication"]["idp"];
        assert_eq!(idp["jwt"]["issuerUrl"], "http://i");
        assert_eq!(
            idp["cache"],
            serde_json::json!({"key": {"selector": "context.request.http.headers.authorization"}, "ttl": 60})
        );
        assert_eq!(doc["metadata"]["namespace"], "ns");
    }
}

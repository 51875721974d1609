//! Test harness: run the tollgate binary, an identity provider, an echo upstream and Envoy, all
//! on 127.0.0.1 with ports chosen at run time, and stop every process at the end.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate::client::{self, Probe};
use tollgate::proto::auth::CheckResponse;
use tollgate::proto::auth::check_response::HttpResponse;

pub use crate::control_plane::{free_port, http_get};

pub const AUDIENCE: &str = "api://orders";
pub const HOST: &str = "api.example.com";

/// Whether a missing peer must fail the test instead of skipping it.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A running `tollgate serve`, killed on drop.
pub struct Tollgate {
    child: Child,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// The admission webhook, when started with one.
    pub webhook: Option<SocketAddr>,
    /// The HTTP forward-auth endpoint, when started with `--http-addr`.
    pub http: Option<SocketAddr>,
    pub logs: Arc<Mutex<Vec<String>>>,
}

fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

impl Tollgate {
    /// Starts `tollgate serve` on `policies` with extra flags and waits until it is ready.
    pub fn start(policies: &Path, extra: &[&str]) -> Tollgate {
        let tollgate = Self::spawn(policies, extra);
        tollgate.wait_ready(Duration::from_secs(30));
        tollgate
    }

    /// Starts without waiting for readiness.
    pub fn spawn(policies: &Path, extra: &[&str]) -> Tollgate {
        let mut args = vec![
            "--policies".to_string(),
            policies.display().to_string(),
            "--poll-interval".into(),
            "1s".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::spawn_with(&args, &[])
    }

    /// `tollgate serve <args>` with extra environment variables, without waiting for readiness.
    pub fn spawn_with(args: &[String], envs: &[(&str, String)]) -> Tollgate {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        command
            .arg("serve")
            .args([
                "--grpc-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .args(args)
            .env("RUST_LOG", "info")
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .env_remove("KUBERNETES_SERVICE_HOST");
        Self::spawn_command(command)
    }

    /// Runs `command`, a `tollgate serve --log-format json` however it is started (e.g. from a
    /// container image's root filesystem), and waits for the addresses it logs.
    pub fn spawn_command(mut command: Command) -> Tollgate {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start tollgate");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["message"] == "listening"
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send((
                        v["grpc"].as_str().unwrap_or_default().to_string(),
                        v["admin"].as_str().unwrap_or_default().to_string(),
                        v["webhook"].as_str().map(str::to_owned),
                        v["http"].as_str().map(str::to_owned),
                    ));
                }
                sink.lock().expect("logs").push(line);
            }
        });
        let (grpc, admin, webhook, http) =
            rx.recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| {
                    // Give the reader a moment to collect the last lines of a process that exited.
                    std::thread::sleep(Duration::from_millis(200));
                    panic!(
                        "tollgate printed no listening addresses; its log:\n{}",
                        logs.lock().expect("logs").join("\n")
                    )
                });
        Tollgate {
            child,
            grpc: grpc.parse().expect("grpc addr"),
            admin: admin.parse().expect("admin addr"),
            webhook: webhook.map(|w| w.parse().expect("webhook addr")),
            http: http.map(|h| h.parse().expect("http addr")),
            logs,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = http_get(&format!("http://{}/readyz", self.admin)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tollgate not ready; logs:\n{}",
                self.logs().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("logs").clone()
    }

    /// Log lines (JSON) with `message == msg`.
    pub fn log_events(&self, msg: &str) -> Vec<Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == msg)
            .collect()
    }

    pub fn metrics(&self) -> String {
        http_get(&format!("http://{}/metrics", self.admin))
            .expect("metrics")
            .1
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(10))
    }

    /// Sends a signal (`TERM`, `HUP`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal);
    }

    /// Waits for the process to exit; fails the test after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "tollgate did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tollgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a policy file (atomically: write, then rename).
pub fn write_policy(dir: &Path, file: &str, yaml: &str) -> PathBuf {
    let path = dir.join(file);
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, yaml).expect("write policy");
    std::fs::rename(&tmp, &path).expect("rename policy");
    path
}

/// A policy document for `HOST` whose issuer is `issuer` (keys by discovery over http).
pub fn policy_yaml(name: &str, issuer: &str, spec_extra: &str) -> String {
    format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  issuers:\n  - issuer: {issuer}\n    audiences: [\"{AUDIENCE}\"]\n    allowInsecureHttp: true\n{spec_extra}"
    )
}

/// Claims that pass `policy_yaml` policies.
pub fn claims(issuer: &str, extra: Value) -> Value {
    let now = tollgate::local_issuer::now_secs();
    let mut c = json!({"iss": issuer, "sub": "user-1", "aud": AUDIENCE, "iat": now - 5, "exp": now + 600, "scp": "orders.read"});
    for (k, v) in extra.as_object().expect("object") {
        if v.is_null() {
            c.as_object_mut().expect("object").remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

/// Sends one Check.
pub async fn check(tollgate: &str, path: &str, token: Option<&str>) -> CheckResponse {
    let probe = Probe {
        host: HOST.into(),
        path: path.into(),
        method: "GET".into(),
        token: token.map(str::to_owned),
        ..Probe::default()
    };
    client::send(tollgate, &probe).await.expect("Check RPC")
}

/// Sends one Check of `GET /` for `host`.
pub async fn check_host(tollgate: &str, host: &str, token: Option<&str>) -> CheckResponse {
    let probe = Probe {
        host: host.into(),
        path: "/".into(),
        method: "GET".into(),
        token: token.map(str::to_owned),
        ..Probe::default()
    };
    client::send(tollgate, &probe).await.expect("Check RPC")
}

/// (allowed, HTTP status, reason) of a response.
pub fn outcome(response: &CheckResponse) -> (bool, u16, String) {
    let allowed = client::allowed(response);
    let status = match &response.http_response {
        Some(HttpResponse::DeniedResponse(d)) => d.status.as_ref().map_or(0, |s| s.code as u16),
        _ => 200,
    };
    let reason = response
        .dynamic_metadata
        .as_ref()
        .and_then(|m| m.fields.get("reason"))
        .and_then(|v| match &v.kind {
            Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "valid".into());
    (allowed, status, reason)
}

/// The location of a peer binary from the test cache, or `None` (skip) outside CI.
pub fn peer(env_var: &str, what: &str) -> Option<PathBuf> {
    installed(env_var, what, Path::is_file)
}

/// A peer installed as a directory (e.g. an npm package), or `None` (skip) outside CI.
pub fn peer_dir(env_var: &str, what: &str) -> Option<PathBuf> {
    installed(env_var, what, Path::is_dir)
}

fn installed(env_var: &str, what: &str, exists: fn(&Path) -> bool) -> Option<PathBuf> {
    if let Ok(path) = std::env::var(env_var)
        && exists(Path::new(&path))
    {
        return Some(PathBuf::from(path));
    }
    assert!(
        !ci(),
        "{what} is required under CI but {env_var} does not point to it: run tests/run.sh, which installs it"
    );
    eprintln!(
        "SKIPPED: {what} not installed ({env_var} unset); run `bash tests/run.sh` to install the test peers"
    );
    None
}

/// The value of the first sample whose line starts with `prefix`.
pub fn metric(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// Serves `app` on a port of 127.0.0.1 chosen at run time, for as long as the test runs (or
/// until the returned task is aborted).
pub async fn serve_app(app: axum::Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

/// Whether tollgate logged (within 5 s) a denial with `reason` whose description contains
/// `fragment`: the details that stay in the log, while clients get the reason's fixed text.
pub async fn denial_logged(tollgate: &Tollgate, reason: &str, fragment: &str) -> bool {
    eventually(Duration::from_secs(5), async || {
        tollgate.log_events("denied").iter().any(|e| {
            e["reason"] == reason
                && e["description"]
                    .as_str()
                    .is_some_and(|d| d.contains(fragment))
        })
    })
    .await
}

/// Runs `f` until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// An identity provider on 127.0.0.1 and the ES256 key it signs with; stopped on drop.
pub struct Idp {
    pub key: tollgate::local_issuer::SigningKey,
    pub issuer: String,
    _server: tollgate::local_issuer::server::IdpServer,
}

impl Idp {
    pub async fn start() -> Idp {
        let key = tollgate::local_issuer::SigningKey::ec("k1", "ES256").expect("key");
        let server = tollgate::local_issuer::server::IdpServer::start(
            "127.0.0.1:0".parse().expect("addr"),
            tollgate::local_issuer::jwks(&[&key]),
        )
        .await
        .expect("idp");
        Idp {
            key,
            issuer: server.issuer(),
            _server: server,
        }
    }

    /// A token of this issuer for `audience`.
    pub fn token(&self, audience: &str) -> String {
        self.key
            .mint(&claims(&self.issuer, json!({"aud": audience})))
            .expect("mint")
    }
}

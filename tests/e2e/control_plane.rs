//! A real Kubernetes control plane as local processes: etcd and kube-apiserver (built from their
//! Go modules by tests/run.sh, tests/kube/) on 127.0.0.1, RBAC on, driven with the real kubectl
//! (and helm, when given). Each `Cluster` has its own data directory and ports and is stopped on
//! drop; tests stop and restart its parts to produce faults.
//!
//! Self-contained (std, tempfile, rcgen, serde_json; nothing from the e2e crate), so that the
//! benchmarks include the same file with `#[path]` (benches/peers/authorino.rs). The e2e tests'
//! own additions (finding the binaries under CI rules, tollgate's CRD, the chart) are in
//! cluster.rs.

use std::fs::File;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The admin's bearer token (group `system:masters`), from `--token-auth-file`.
const ADMIN_TOKEN: &str = "tollgate-test-admin";

/// The binaries a cluster runs.
pub struct Binaries {
    pub apiserver: PathBuf,
    pub etcd: PathBuf,
    pub kubectl: PathBuf,
    /// Only for [`Cluster::helm`].
    pub helm: Option<PathBuf>,
}

/// A process of the control plane, killed on drop.
struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd and kube-apiserver, running. Dropped in field order: the API server, then etcd, then
/// their data directory.
pub struct Cluster {
    apiserver: Option<Process>,
    etcd: Option<Process>,
    bin: Binaries,
    etcd_port: u16,
    etcd_peer_port: u16,
    pub port: u16,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Extra kube-apiserver flags this cluster was started with.
    extra: Vec<String>,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts etcd and kube-apiserver (with `extra` kube-apiserver flags) and waits until the
    /// API server is ready, or `Err(why, with the last lines of the logs)`.
    pub fn launch(bin: Binaries, extra: &[&str]) -> Result<Cluster, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("cluster dir: {e}"))?;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("service account key: {e}"))?;
        let write = |name: &str, content: &str| {
            std::fs::write(dir.path().join(name), content).map_err(|e| format!("{name}: {e}"))
        };
        write("sa.key", &key.serialize_pem())?;
        write("sa.pub", &key.public_key_pem())?;
        write(
            "audit-policy.yaml",
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n",
        )?;
        write(
            "tokens.csv",
            &format!("{ADMIN_TOKEN},admin,admin,system:masters\n"),
        )?;
        let port = free_port();
        let mut cluster = Cluster {
            bin,
            etcd: None,
            apiserver: None,
            etcd_port: free_port(),
            etcd_peer_port: free_port(),
            port,
            kubeconfig: dir.path().join("admin.kubeconfig"),
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        // A port `free_port` found free can be taken before etcd binds it: start again on
        // other ports.
        for attempt in 1.. {
            match cluster.try_start_etcd() {
                Ok(()) => break,
                Err(log) if attempt < 3 && log.contains("address already in use") => {
                    cluster.etcd = None;
                    let _ = std::fs::remove_dir_all(cluster.dir.path().join("etcd"));
                    cluster.etcd_port = free_port();
                    cluster.etcd_peer_port = free_port();
                }
                Err(log) => return Err(format!("etcd not healthy:\n{log}")),
            }
        }
        // A port `free_port` found free can be taken before the API server binds it (another
        // test's connection): then start again on another port.
        for attempt in 1.. {
            let kubeconfig = cluster.kubeconfig_yaml("admin", ADMIN_TOKEN);
            std::fs::write(&cluster.kubeconfig, kubeconfig)
                .map_err(|e| format!("kubeconfig: {e}"))?;
            cluster.spawn_apiserver();
            match cluster.try_wait_apiserver_ready() {
                Ok(()) => break,
                Err(log) if attempt < 3 && log.contains("address already in use") => {
                    cluster.apiserver = None;
                    cluster.port = free_port();
                }
                Err(log) => return Err(format!("kube-apiserver not ready:\n{log}")),
            }
        }
        Ok(cluster)
    }

    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The API server's serving certificate (self-signed, written to `--cert-dir`).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("certs").join("apiserver.crt")
    }

    fn log(&self, name: &str) -> File {
        File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .expect("log file")
    }

    /// The last lines of a component's log, for failure messages.
    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn spawn(&self, program: &Path, args: &[String], log: &str) -> Process {
        let child = Command::new(program)
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(self.log(log))
            .stderr(self.log(log))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        Process { child }
    }

    pub fn start_etcd(&mut self) {
        if let Err(log) = self.try_start_etcd() {
            panic!("etcd not healthy:\n{log}");
        }
    }

    /// Starts etcd and waits until it is healthy, or `Err(its log)`.
    fn try_start_etcd(&mut self) -> Result<(), String> {
        let client = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer = format!("http://127.0.0.1:{}", self.etcd_peer_port);
        let args: Vec<String> = [
            "--name",
            "test",
            "--data-dir",
            &self.dir.path().join("etcd").display().to_string(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("test={peer}"),
            "--log-level",
            "warn",
            "--unsafe-no-fsync",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let process = self.spawn(&self.bin.etcd, &args, "etcd");
        self.etcd = Some(process);
        let health = format!("{client}/health");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http_get(&health).is_ok_and(|(status, body)| status == 200 && body.contains("true"))
        {
            let exited = self
                .etcd
                .as_mut()
                .is_some_and(|p| matches!(p.child.try_wait(), Ok(Some(_))));
            if exited || Instant::now() >= deadline {
                return Err(self.log_tail("etcd"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn stop_etcd(&mut self) {
        self.etcd = None;
    }

    fn spawn_apiserver(&mut self) {
        let dir = self.dir.path();
        let key = dir.join("sa.key").display().to_string();
        let public = dir.join("sa.pub").display().to_string();
        let mut args: Vec<String> = [
            "--etcd-servers",
            &format!("http://127.0.0.1:{}", self.etcd_port),
            "--cert-dir",
            &dir.join("certs").display().to_string(),
            "--secure-port",
            &self.port.to_string(),
            "--bind-address",
            "127.0.0.1",
            "--endpoint-reconciler-type",
            "none",
            "--service-cluster-ip-range",
            "10.0.0.0/24",
            "--service-account-issuer",
            "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file",
            &public,
            "--service-account-signing-key-file",
            &key,
            "--authorization-mode",
            "RBAC",
            "--token-auth-file",
            &dir.join("tokens.csv").display().to_string(),
            "--disable-admission-plugins",
            "ServiceAccount",
            "--enable-priority-and-fairness=false",
            "--audit-policy-file",
            &dir.join("audit-policy.yaml").display().to_string(),
            "--audit-log-path",
            &dir.join("audit.log").display().to_string(),
            "--v",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.extra.iter().cloned());
        let process = self.spawn(&self.bin.apiserver, &args, "kube-apiserver");
        self.apiserver = Some(process);
    }

    pub fn start_apiserver(&mut self) {
        self.spawn_apiserver();
        self.wait_apiserver_ready();
    }

    pub fn stop_apiserver(&mut self) {
        self.apiserver = None;
    }

    /// Waits until `/readyz` answers ok (every post-start hook done, RBAC bootstrapped).
    pub fn wait_apiserver_ready(&mut self) {
        if let Err(log) = self.try_wait_apiserver_ready() {
            panic!("kube-apiserver not ready:\n{log}");
        }
    }

    /// [`Self::wait_apiserver_ready`], or `Err(its log)` when the API server exited or was not
    /// ready within 60 s.
    fn try_wait_apiserver_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(process) = &mut self.apiserver
                && let Ok(Some(status)) = process.child.try_wait()
            {
                return Err(format!("({status}) {}", self.log_tail("kube-apiserver")));
            }
            let out = self.kubectl_output(&["get", "--raw", "/readyz"]);
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not ready after 60 s: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.log_tail("kube-apiserver")
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A kubeconfig for this cluster authenticating with `token`.
    pub fn kubeconfig_yaml(&self, user: &str, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: {user}}}\ncurrent-context: test\n",
            self.server(),
            self.ca().display()
        )
    }

    /// A kubeconfig file for ServiceAccount `namespace/name`, with a token from the TokenRequest
    /// API (what a pod of that ServiceAccount gets projected), so RBAC applies as in a cluster.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let token = self.kubectl(&["create", "token", name, "-n", namespace, "--duration", "2h"]);
        let path = self
            .dir
            .path()
            .join(format!("{namespace}-{name}.kubeconfig"));
        std::fs::write(
            &path,
            self.kubeconfig_yaml(&format!("{namespace}-{name}"), token.trim()),
        )
        .expect("kubeconfig");
        path
    }

    fn tool(&self, program: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let home = self.dir.path().join("helm");
        let mut child = Command::new(program)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write stdin");
        }
        child.wait_with_output().expect("wait")
    }

    /// `kubectl <args>` as the admin, whatever its outcome.
    pub fn kubectl_output(&self, args: &[&str]) -> Output {
        self.tool(&self.bin.kubectl, args, None)
    }

    /// `kubectl <args>` as the admin, `Ok(stdout)` or `Err(stderr)`.
    pub fn try_kubectl(&self, args: &[&str]) -> Result<String, String> {
        result(self.kubectl_output(args))
    }

    /// `kubectl <args>` as the admin; fails the test when kubectl fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.try_kubectl(args)
            .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")))
    }

    /// `kubectl <args> -f -` with `yaml` on stdin.
    pub fn try_kubectl_stdin(&self, args: &[&str], yaml: &str) -> Result<String, String> {
        let mut all = args.to_vec();
        all.extend(["-f", "-"]);
        result(self.tool(&self.bin.kubectl, &all, Some(yaml)))
    }

    /// Server-side apply of `yaml` as the admin (field manager `tollgate-test`).
    pub fn apply(&self, yaml: &str) -> String {
        self.try_apply(yaml)
            .unwrap_or_else(|e| panic!("kubectl apply: {e}\n{yaml}"))
    }

    pub fn try_apply(&self, yaml: &str) -> Result<String, String> {
        self.try_kubectl_stdin(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager",
                "tollgate-test",
            ],
            yaml,
        )
    }

    /// `helm <args>` as the admin.
    pub fn helm(&self, args: &[&str]) -> Result<String, String> {
        let helm = self
            .bin
            .helm
            .as_ref()
            .ok_or("this cluster was started without helm")?;
        result(self.tool(helm, args, None))
    }

    /// An object as JSON, or `None` when it does not exist.
    pub fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let mut args = vec!["get", kind, name, "-o", "json", "--ignore-not-found"];
        if let Some(namespace) = namespace {
            args.extend(["-n", namespace]);
        }
        let out = self.kubectl(&args);
        if out.trim().is_empty() {
            None
        } else {
            Some(serde_json::from_str(&out).expect("object JSON"))
        }
    }

    /// Waits until each CustomResourceDefinition named is Established (at most `timeout`, a
    /// kubectl duration); fails the test otherwise.
    pub fn wait_established(&self, crds: &[&str], timeout: &str) {
        let names: Vec<String> = crds.iter().map(|name| format!("crd/{name}")).collect();
        let mut args = vec![
            "wait",
            "--for",
            "condition=Established",
            "--timeout",
            timeout,
        ];
        args.extend(names.iter().map(String::as_str));
        self.kubectl(&args);
    }

    /// The API server's audit log so far (metadata of every request), one event per entry.
    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Compacts etcd's history up to its current revision (etcd's JSON gateway), so watches from
    /// an older resource version get `410 Gone`.
    pub fn compact_etcd(&self) {
        let base = format!("http://127.0.0.1:{}", self.etcd_port);
        let status = http_post_json(&format!("{base}/v3/kv/range"), r#"{"key":"AA=="}"#)
            .expect("etcd range");
        let header: Value = serde_json::from_str(&status).expect("etcd answer");
        let revision = header["header"]["revision"]
            .as_str()
            .expect("etcd revision")
            .to_string();
        http_post_json(
            &format!("{base}/v3/kv/compaction"),
            &format!(r#"{{"revision":"{revision}","physical":true}}"#),
        )
        .expect("etcd compaction");
    }
}

fn result(out: Output) -> Result<String, String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// A blocking HTTP/1.0 POST of a JSON body, returning the answer's body on 200.
fn http_post_json(url: &str, body: &str) -> Result<String, String> {
    use std::io::Read as _;
    let rest = url.strip_prefix("http://").ok_or("not http")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = std::net::TcpStream::connect(authority).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or("no body")?;
    if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
        Ok(body.to_string())
    } else {
        Err(answer)
    }
}

/// A free port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A blocking HTTP/1.0 GET of `http://host:port/path` returning (status, body). Plain std I/O,
/// so it works inside and outside async tests.
pub fn http_get(url: &str) -> Result<(u16, String), String> {
    use std::io::{Read as _, Write as _};
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let addr: SocketAddr = authority.parse().map_err(|e| format!("{authority}: {e}"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

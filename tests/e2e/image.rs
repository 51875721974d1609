//! The container image `deploy/image/build.sh` builds without a Docker engine (tests/run.sh
//! builds it and sets `TOLLGATE_IMAGE` to its OCI layout), read the way a container runtime
//! reads it: index → manifest → config and layers, each blob checked against its digest, the
//! layers unpacked into an empty folder. Then `tollgate serve` runs from that folder the way
//! the Helm chart runs it: as 65532:65532 with no capabilities, on a read-only root, as PID 1 of
//! its own PID namespace, started by the image's own ENTRYPOINT and CMD.
//!
//! ```text
//! OCI layout ─► index.json ─► manifest ─► config: user, entrypoint, cmd, ports, env = deploy/Dockerfile
//!                                    └──► layer ─► root filesystem: owners, no shell, CA bundle
//!                                                     │ unshare --mount --pid, read-only bind, /proc
//!                                                     ▼ chroot --userspec=65532:65532
//! test ──Check──► ENTRYPOINT + CMD (ports → 127.0.0.1:0) ──https──► TLS front ──► IdpServer
//!                   (the front's CA appended to the image's bundle; a second front's CA is not)
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tollgate::local_issuer::server::IdpServer;
use tollgate::local_issuer::{SigningKey, jwks};

use crate::support::*;

const DOCKERFILE: &str = include_str!("../../deploy/Dockerfile");
const CHART: &str = include_str!("../../deploy/helm/tollgate/Chart.yaml");
const VALUES: &str = include_str!("../../deploy/helm/tollgate/values.yaml");
const DEPLOYMENT: &str = include_str!("../../deploy/helm/tollgate/templates/deployment.yaml");
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The user of distroless's `nonroot`, the image and the chart's `runAsUser`.
const NONROOT: u32 = 65532;

/// The OCI image layout `TOLLGATE_IMAGE` points to, or `None` (skip) outside CI.
fn layout() -> Option<Layout> {
    let dir = peer_dir(
        "TOLLGATE_IMAGE",
        "the container image (its OCI layout, built by deploy/image/build.sh)",
    )?;
    Some(Layout { dir })
}

/// Whether this process may chroot (root); under CI it must.
fn may_chroot() -> bool {
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    assert!(
        root || !ci(),
        "running the image needs root (chroot, mount namespaces)"
    );
    if !root {
        eprintln!("SKIPPED: running the image needs root (chroot, mount namespaces)");
    }
    root
}

struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// The blob a descriptor names, checked against its digest and size.
    fn blob(&self, descriptor: &Value) -> Vec<u8> {
        let digest = descriptor["digest"].as_str().expect("descriptor digest");
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        let bytes = std::fs::read(self.dir.join("blobs/sha256").join(hex)).expect("blob");
        assert_eq!(
            sha256(&bytes),
            hex,
            "blob {digest} does not match its digest"
        );
        assert_eq!(
            descriptor["size"].as_u64(),
            Some(bytes.len() as u64),
            "size of {digest}"
        );
        bytes
    }

    fn index(&self) -> Value {
        let layout: Value = read_json(&self.dir.join("oci-layout"));
        assert_eq!(layout["imageLayoutVersion"], "1.0.0");
        read_json(&self.dir.join("index.json"))
    }

    /// The index's only manifest.
    fn manifest(&self) -> (Value, Value) {
        let index = self.index();
        let manifests = index["manifests"].as_array().expect("manifests");
        assert_eq!(manifests.len(), 1, "one image in the layout: {index}");
        let descriptor = manifests[0].clone();
        let manifest = serde_json::from_slice(&self.blob(&descriptor)).expect("manifest JSON");
        (descriptor, manifest)
    }

    fn config(&self) -> Value {
        let (_, manifest) = self.manifest();
        serde_json::from_slice(&self.blob(&manifest["config"])).expect("config JSON")
    }

    /// Unpacks every layer, in order, into `root` (owners and modes kept: run as root), after
    /// checking each against the config's `diff_ids`.
    fn unpack(&self, root: &Path) {
        let (_, manifest) = self.manifest();
        let config = self.config();
        let layers = manifest["layers"].as_array().expect("layers");
        let diff_ids = config["rootfs"]["diff_ids"].as_array().expect("diff_ids");
        assert_eq!(layers.len(), diff_ids.len());
        assert!(!layers.is_empty());
        let scratch = tempfile::tempdir().expect("dir");
        for (layer, diff_id) in layers.iter().zip(diff_ids) {
            assert_eq!(
                layer["mediaType"],
                "application/vnd.oci.image.layer.v1.tar+gzip"
            );
            let gz = scratch.path().join("layer.tar.gz");
            std::fs::write(&gz, self.blob(layer)).expect("write layer");
            let tar = run_output(Command::new("gzip").arg("-dc").arg(&gz));
            assert_eq!(
                format!("sha256:{}", sha256(&tar)),
                diff_id.as_str().expect("diff_id"),
                "the layer's content does not match its diff_id"
            );
            let names = String::from_utf8(run_input(Command::new("tar").arg("-tf").arg("-"), &tar))
                .expect("utf-8 names");
            for name in names.lines() {
                assert!(
                    !name.starts_with('/')
                        && !name.split('/').any(|s| s == ".." || s.starts_with(".wh.")),
                    "layer entry {name:?}: absolute, .. or a whiteout"
                );
            }
            run_input(
                Command::new("tar")
                    .args([
                        "-x",
                        "-p",
                        "--same-owner",
                        "--numeric-owner",
                        "-f",
                        "-",
                        "-C",
                    ])
                    .arg(root),
                &tar,
            );
        }
        // The layer has no entry for / itself: a runtime's root is 0755.
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("JSON")
}

fn sha256(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn run_output(command: &mut Command) -> Vec<u8> {
    let output = command.output().expect("run");
    assert!(output.status.success(), "{command:?}: {output:?}");
    output.stdout
}

fn run_input(command: &mut Command, input: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().expect("wait");
    writer.join().expect("writer").expect("write stdin");
    assert!(output.status.success(), "{command:?}: {output:?}");
    output.stdout
}

/// What deploy/Dockerfile's last stage says about the container.
#[derive(Debug, Default)]
struct Dockerfile {
    user: String,
    expose: Vec<String>,
    env: Vec<String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
}

fn dockerfile() -> Dockerfile {
    let lines: Vec<&str> = DOCKERFILE.lines().collect();
    let last = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("FROM");
    let mut found = Dockerfile::default();
    for line in &lines[last..] {
        let (word, rest) = line.trim().split_once(' ').unwrap_or((line, ""));
        let words = || {
            rest.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        match word {
            "USER" => found.user = rest.trim().to_string(),
            "EXPOSE" => found.expose = words(),
            "ENV" => found.env.extend(words()),
            "ENTRYPOINT" => found.entrypoint = serde_json::from_str(rest).expect("exec form"),
            "CMD" => found.cmd = serde_json::from_str(rest).expect("exec form"),
            _ => {}
        }
    }
    found
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("an array: {value}"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_string())
        .collect()
}

#[test]
fn image_config_is_the_dockerfiles_and_the_charts() {
    let Some(layout) = layout() else { return };
    let (descriptor, manifest) = layout.manifest();
    assert_eq!(
        descriptor["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let config = layout.config();
    let docker = dockerfile();

    // The process: what deploy/Dockerfile says, and non-root.
    let container = &config["config"];
    assert_eq!(container["User"], format!("{NONROOT}:{NONROOT}"));
    assert_eq!(container["User"], docker.user.as_str());
    assert_eq!(
        strings(&container["Entrypoint"]),
        ["/usr/local/bin/tollgate"]
    );
    assert_eq!(strings(&container["Entrypoint"]), docker.entrypoint);
    assert_eq!(strings(&container["Cmd"]), docker.cmd);
    assert_eq!(docker.cmd.first().map(String::as_str), Some("serve"));
    let ports: Vec<&String> = container["ExposedPorts"]
        .as_object()
        .expect("ExposedPorts")
        .keys()
        .collect();
    let expected: Vec<String> = docker.expose.iter().map(|p| format!("{p}/tcp")).collect();
    assert_eq!(ports, expected.iter().collect::<Vec<_>>());
    assert_eq!(strings(&container["Env"]), docker.env);
    assert!(
        docker
            .env
            .contains(&"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt".to_string())
    );

    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    assert_eq!(
        (config["os"].as_str(), config["architecture"].as_str()),
        (Some("linux"), Some(arch))
    );
    let labels = &container["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], VERSION);
    assert_eq!(labels["org.opencontainers.image.title"], "tollgate");
    assert!(
        labels["org.opencontainers.image.source"]
            .as_str()
            .is_some_and(|s| s.starts_with("https://")),
        "{labels}"
    );

    // The chart runs this image: repository and tag (appVersion = the crate's version), the
    // same user, and `args` only, so the image's ENTRYPOINT starts tollgate.
    let values: Value = serde_yaml::from_str(VALUES).expect("values.yaml");
    let chart: Value = serde_yaml::from_str(CHART).expect("Chart.yaml");
    assert_eq!(chart["appVersion"], VERSION);
    let name = format!(
        "{}:{VERSION}",
        values["image"]["repository"]
            .as_str()
            .expect("image.repository")
    );
    assert_eq!(
        descriptor["annotations"],
        json!({"io.containerd.image.name": name, "org.opencontainers.image.ref.name": VERSION})
    );
    for line in [
        format!("runAsUser: {NONROOT}"),
        format!("runAsGroup: {NONROOT}"),
        "readOnlyRootFilesystem: true".to_string(),
    ] {
        assert!(DEPLOYMENT.contains(&line), "the chart lost {line:?}");
    }
    assert!(
        !DEPLOYMENT.contains("command:"),
        "the chart must keep the image's ENTRYPOINT"
    );
}

/// Every entry under `root` (relative path → metadata), symlinks not followed.
fn walk(root: &Path) -> BTreeMap<String, std::fs::Metadata> {
    let mut entries = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let entry = entry.expect("entry");
            let meta = entry.path().symlink_metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(entry.path());
            }
            let rel = entry
                .path()
                .strip_prefix(root)
                .expect("prefix")
                .display()
                .to_string();
            entries.insert(rel, meta);
        }
    }
    entries
}

#[test]
fn image_root_filesystem_holds_tollgate_its_libraries_and_ca_bundle_only() {
    let Some(layout) = layout() else { return };
    if !may_chroot() {
        return;
    }
    let root = tempfile::tempdir().expect("dir");
    layout.unpack(root.path());
    let entries = walk(root.path());

    // Owned by root but for nonroot's home; nothing setuid, nothing others may write but /tmp.
    for (path, meta) in &entries {
        let owner = if path == "home/nonroot" { NONROOT } else { 0 };
        assert_eq!((meta.uid(), meta.gid()), (owner, owner), "owner of {path}");
        let mode = meta.mode() & 0o7777;
        assert_eq!(mode & 0o6000, 0, "{path} is setuid or setgid ({mode:o})");
        if !meta.is_symlink() && path != "tmp" {
            assert_eq!(mode & 0o002, 0, "{path} is writable by others ({mode:o})");
        }
    }
    assert_eq!(entries["tmp"].mode() & 0o7777, 0o1777);
    assert_eq!(entries["home/nonroot"].mode() & 0o7777, 0o700);

    // No shell or any other program: the only executable outside the library folders is
    // tollgate (libc.so.6 and ld.so are executable in Debian).
    let programs: Vec<&String> = entries
        .iter()
        .filter(|(path, meta)| {
            meta.is_file()
                && meta.mode() & 0o111 != 0
                && !["lib/", "lib64/", "usr/lib/"]
                    .iter()
                    .any(|d| path.starts_with(d))
        })
        .map(|(path, _)| path)
        .collect();
    assert_eq!(programs, ["usr/local/bin/tollgate"]);
    for shell in ["sh", "bash", "dash", "ash", "busybox", "zsh"] {
        assert!(
            !entries.keys().any(|p| p.rsplit('/').next() == Some(shell)),
            "{shell} in the image"
        );
    }
    assert_eq!(entries["usr/local/bin/tollgate"].mode() & 0o7777, 0o755);

    // The CA bundle: every certificate parses into a trust anchor.
    let bundle = std::fs::read(root.path().join("etc/ssl/certs/ca-certificates.crt"))
        .expect("the CA bundle");
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bundle)
        .collect::<Result<_, _>>()
        .expect("PEM certificates");
    let marked = String::from_utf8_lossy(&bundle)
        .matches("-----BEGIN CERTIFICATE-----")
        .count();
    assert_eq!(certs.len(), marked);
    let mut store = rustls::RootCertStore::empty();
    let (added, ignored) = store.add_parsable_certificates(certs);
    assert!(
        added >= 100 && ignored == 0,
        "{added} trust anchors, {ignored} unusable"
    );

    // nonroot as in distroless, and what tells scanners what is inside.
    let read = |path: &str| std::fs::read_to_string(root.path().join(path)).expect(path);
    assert!(
        read("etc/passwd")
            .lines()
            .any(|l| l
                == format!("nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin"))
    );
    assert!(
        read("etc/group")
            .lines()
            .any(|l| l == format!("nonroot:x:{NONROOT}:"))
    );
    assert!(read("usr/lib/os-release").contains("VERSION_ID=\"12\""));
    assert_eq!(
        std::fs::read_link(root.path().join("etc/os-release")).expect("link"),
        Path::new("../usr/lib/os-release")
    );
    for package in ["libc6", "libgcc-s1", "ca-certificates", "base-files"] {
        let record = read(&format!("var/lib/dpkg/status.d/{package}"));
        assert!(
            record.starts_with(&format!("Package: {package}\n")),
            "{record}"
        );
        assert!(
            record.lines().any(|l| l.starts_with("Version: ")),
            "{record}"
        );
    }
}

/// A CA for the test's https fronts.
fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca")
}

/// An https front on 127.0.0.1 with a certificate from `ca`: TLS ends here and the bytes go on
/// to `upstream` (the IdP's plain http port). Stops when the returned task is aborted.
async fn https_front(
    upstream: SocketAddr,
    ca: &CertifiedIssuer<'static, KeyPair>,
) -> (String, tokio::task::JoinHandle<()>) {
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, "idp");
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &**ca).expect("sign");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut plain) = TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    (format!("https://{addr}"), task)
}

/// The host PID of the process `unshare --fork` started (PID 1 of the new namespace).
fn namespace_init(unshare: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
        .expect("children")
        .split_whitespace()
        .next()
        .expect("a child")
        .parse()
        .expect("pid")
}

/// `Uid`, `Gid`, `Groups` and `CapEff` of a process.
fn credentials(pid: u32) -> BTreeMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| ["Uid", "Gid", "Groups", "CapEff"].contains(k))
        .map(|(k, v)| {
            (
                k.to_string(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tollgate_serves_from_the_image_as_nonroot_on_a_read_only_root() {
    let Some(layout) = layout() else { return };
    if !may_chroot() {
        return;
    }
    let root = tempfile::tempdir().expect("dir");
    layout.unpack(root.path());
    let config = layout.config();

    // The IdP behind two https fronts: one whose CA is added to the image's bundle (as a
    // cluster adds a private CA), one whose CA is not.
    let key = SigningKey::rsa("k1", "RS256", 2048).expect("key");
    let rogue = SigningKey::rsa("k1", "RS256", 2048).expect("key");
    let idp = IdpServer::start("127.0.0.1:0".parse().expect("addr"), jwks(&[&key]))
        .await
        .expect("idp");
    let (trusted_ca, other_ca) = (ca("tollgate test CA"), ca("unknown CA"));
    let (trusted, trusted_front) = https_front(idp.addr(), &trusted_ca).await;
    let (untrusted, untrusted_front) = https_front(idp.addr(), &other_ca).await;
    let bundle = root.path().join("etc/ssl/certs/ca-certificates.crt");
    let mut pem = std::fs::read_to_string(&bundle).expect("bundle");
    pem.push_str(&trusted_ca.pem());
    std::fs::write(&bundle, pem).expect("write bundle");

    // The policy where the image's CMD reads policies (a ConfigMap in a cluster).
    let cmd = strings(&config["config"]["Cmd"]);
    let policies = cmd
        .iter()
        .position(|a| a == "--policies")
        .map(|i| cmd[i + 1].trim_start_matches('/').to_string())
        .expect("the CMD names --policies");
    let dir = root.path().join(&policies);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let issuer = |url: &str| {
        format!("  - issuer: {url}\n    jwksUri: {url}/jwks\n    audiences: [\"{AUDIENCE}\"]\n")
    };
    write_policy(
        &dir,
        "orders.yaml",
        &format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {{name: orders, namespace: shop}}\nspec:\n  issuers:\n{}{}",
            issuer(&trusted),
            issuer(&untrusted)
        ),
    );
    for path in [&dir, &dir.join("orders.yaml")] {
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    std::fs::create_dir(root.path().join("proc")).expect("mkdir proc");

    // ENTRYPOINT + CMD with the ports moved to 127.0.0.1:0, the config's environment only,
    // the user of the config, a read-only root and /proc in new mount and PID namespaces.
    let mut args = strings(&config["config"]["Entrypoint"]);
    let mut rest = cmd.into_iter();
    while let Some(arg) = rest.next() {
        let listener = arg == "--grpc-addr" || arg == "--admin-addr";
        args.push(arg);
        if listener {
            rest.next().expect("an address");
            args.push("127.0.0.1:0".into());
        }
    }
    let user = config["config"]["User"].as_str().expect("User");
    let script = r#"set -e
root=$1; user=$2; shift 2
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t proc proc "$root/proc"
exec chroot --userspec="$user" "$root" "$@""#;
    let mut command = Command::new("unshare");
    command
        .args([
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(root.path())
        .arg(user)
        .args(&args)
        .env_clear()
        .envs(
            strings(&config["config"]["Env"])
                .iter()
                .map(|e| e.split_once('=').expect("KEY=value")),
        );
    let mut tollgate = Tollgate::spawn_command(command);
    tollgate.wait_ready(Duration::from_secs(30));

    // It runs as 65532:65532 (its group only), without capabilities, as its namespace's PID 1,
    // on a read-only root.
    let pid = namespace_init(tollgate.pid());
    let creds = credentials(pid);
    let expected = |v: &str| Some(v.to_string());
    assert_eq!(
        creds.get("Uid").cloned(),
        expected("65532 65532 65532 65532"),
        "{creds:?}"
    );
    assert_eq!(
        creds.get("Gid").cloned(),
        expected("65532 65532 65532 65532"),
        "{creds:?}"
    );
    assert_eq!(creds.get("Groups").cloned(), expected("65532"), "{creds:?}");
    assert_eq!(
        creds.get("CapEff").cloned(),
        expected("0000000000000000"),
        "{creds:?}"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert!(
        status.lines().any(|l| l == format!("NSpid:\t{pid}\t1")),
        "{status}"
    );
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let root_mount: Vec<&str> = mounts
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|fields| fields.get(4) == Some(&"/"))
        .expect("a mount at /");
    assert!(
        root_mount[5].split(',').any(|o| o == "ro"),
        "{root_mount:?}"
    );

    // Judged with keys fetched over https, trusted through the image's CA bundle.
    let url = tollgate.url();
    let good = key.mint(&claims(&trusted, json!({}))).expect("mint");
    assert_eq!(
        outcome(&check(&url, "/orders", Some(&good)).await),
        (true, 200, "valid".into())
    );
    let forged = rogue.mint(&claims(&trusted, json!({}))).expect("mint");
    assert_eq!(
        outcome(&check(&url, "/orders", Some(&forged)).await),
        (false, 401, "signature_invalid".into())
    );
    // A certificate from a CA outside the bundle is refused: no keys from there.
    let elsewhere = key.mint(&claims(&untrusted, json!({}))).expect("mint");
    assert_eq!(
        outcome(&check(&url, "/orders", Some(&elsewhere)).await),
        (false, 503, "issuer_unavailable".into())
    );
    let refused_untrusted = |refused: &[serde_json::Value]| {
        refused.iter().any(|e| {
            e["source"].as_str().is_some_and(|s| s.contains(&untrusted))
                && e["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("UnknownIssuer"))
        })
    };
    // (Once the log reader has the line: it can arrive after the answer.)
    eventually(Duration::from_secs(10), async || {
        refused_untrusted(&tollgate.log_events("key set refresh failed"))
    })
    .await;
    let refused = tollgate.log_events("key set refresh failed");
    assert!(refused_untrusted(&refused), "{refused:?}");
    assert!(
        !refused
            .iter()
            .any(|e| e["source"].as_str().is_some_and(|s| s.contains(&trusted))),
        "{refused:?}"
    );

    // SIGTERM to PID 1 of the namespace, as the kubelet sends it: a clean exit.
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let exit = tollgate.wait_exit(Duration::from_secs(30));
    assert!(exit.success(), "{exit:?}\n{}", tollgate.logs().join("\n"));
    trusted_front.abort();
    untrusted_front.abort();
}

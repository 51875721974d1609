//! The status writer: only the replica holding the status Lease (kube-lease-manager) writes
//! `JwtPolicy` status, with server-side apply, and only when it changed. It also records a
//! Kubernetes Event when a generation fails to compile or loses a host/path conflict.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube_lease_manager::LeaseManagerBuilder;
use serde_json::json;
use tokio::sync::watch;

use super::index::{IndexView, PolicyView};
use super::replicas::Identity;
use super::status::{ReplicaReport, desired_status, same_but_dry_run_counts};
use super::watch::jwt_policy_resource;
use crate::policy::spec::JwtPolicyStatus;

/// Field manager of status writes.
pub const FIELD_MANAGER: &str = "tollgate";

/// Status is recomputed at least this often (key refresh results change over time).
pub const RESYNC: Duration = Duration::from_secs(10);

/// How long a stopping replica waits for the API server to take its status Lease back.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// Starts the status writer of this replica; it writes only while this replica holds the Lease.
pub fn spawn_status_writer(
    client: Client,
    identity: Identity,
    mut views: watch::Receiver<Arc<IndexView>>,
    mut replicas: watch::Receiver<Vec<ReplicaReport>>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stopped = super::watch::stopped(stop);
        tokio::pin!(stopped);
        let manager = loop {
            let built = LeaseManagerBuilder::new(client.clone(), identity.status_lease_name())
                .with_namespace(identity.namespace.clone())
                .with_identity(identity.name.clone())
                .with_duration(identity.status_lease.as_secs().max(2))
                .with_grace((identity.status_lease.as_secs() / 3).max(1))
                .build()
                .await;
            match built {
                Ok(manager) => break manager,
                Err(error) => {
                    tracing::warn!(%error, "cannot set up the status Lease; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(2)) => {}
                        () = &mut stopped => return,
                    }
                }
            }
        };
        let (mut leader, lease_task) = manager.watch().await;
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "tollgate".into(),
                instance: Some(identity.name.clone()),
            },
        );
        let mut writer = StatusWriter {
            client,
            recorder,
            written: HashMap::new(),
            evented: HashSet::new(),
            counted: HashMap::new(),
            count_every: identity.heartbeat * 3,
        };
        let mut ticker = tokio::time::interval(RESYNC);
        loop {
            // The stop comes first: when the index stops too, its channels close in the
            // same moment, and a random pick would end the task without releasing the Lease.
            tokio::select! {
                biased;
                () = &mut stopped => {
                    // Whether the Lease names this replica, as the API server has it: the
                    // manager's last word may lag (a renewal that conflicted), and it releases
                    // the Lease it holds either way.
                    let held = holds_lease(&writer.client, &identity)
                        .await
                        .unwrap_or(*leader.borrow());
                    // Closing the channel makes the manager release the Lease if it holds it.
                    drop(leader);
                    match tokio::time::timeout(RELEASE_TIMEOUT, lease_task).await {
                        Ok(Ok(Ok(_))) => {
                            if held {
                                tracing::info!("released the status Lease");
                            }
                        }
                        Ok(Ok(Err(error))) => {
                            tracing::warn!(%error, "could not release the status Lease; it expires on its own")
                        }
                        Ok(Err(error)) => {
                            tracing::warn!(%error, "the status Lease task failed; the Lease expires on its own")
                        }
                        Err(_) => tracing::warn!(
                            timeout = ?RELEASE_TIMEOUT,
                            "releasing the status Lease timed out; it expires on its own"
                        ),
                    }
                    return;
                }
                changed = views.changed() => if changed.is_err() { return },
                changed = replicas.changed() => if changed.is_err() { return },
                changed = leader.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // A new leader rewrites whatever differs; a former one forgets what it wrote.
                    writer.written.clear();
                    tracing::info!(leader = *leader.borrow(), "status Lease holder changed");
                }
                _ = ticker.tick() => {}
            }
            if !*leader.borrow() {
                continue;
            }
            let view = views.borrow().clone();
            let reports = replicas.borrow().clone();
            writer.sync(&view, &reports).await;
        }
    })
}

/// Whether the status Lease names this replica as its holder (`None`: the API server did not
/// answer within a second).
async fn holds_lease(client: &Client, identity: &Identity) -> Option<bool> {
    let api: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &identity.namespace);
    let lease = tokio::time::timeout(
        Duration::from_secs(1),
        api.get_opt(&identity.status_lease_name()),
    )
    .await
    .ok()?
    .ok()?;
    Some(
        lease
            .and_then(|l| l.spec)
            .and_then(|spec| spec.holder_identity)
            .is_some_and(|holder| holder == identity.name),
    )
}

struct StatusWriter {
    client: Client,
    recorder: Recorder,
    /// What this replica last wrote, to skip writes the watch has not echoed back yet.
    written: HashMap<Arc<str>, JwtPolicyStatus>,
    /// (policy, generation, reason) already recorded as an Event.
    evented: HashSet<(Arc<str>, i64, String)>,
    /// When each dry-run policy's status was last written.
    counted: HashMap<Arc<str>, std::time::Instant>,
    /// New dry-run counts alone are written at most this often (every replica's heartbeat
    /// changes them; three heartbeats keep the writes per policy independent of the replicas).
    count_every: Duration,
}

impl StatusWriter {
    async fn sync(&mut self, view: &IndexView, reports: &[ReplicaReport]) {
        let now = SystemTime::now();
        for policy in &view.policies {
            let desired = desired_status(policy, reports, now);
            let unchanged = policy.status.as_ref() == Some(&desired)
                || self.written.get(&policy.id) == Some(&desired);
            let only_counts = self
                .written
                .get(&policy.id)
                .or(policy.status.as_ref())
                .is_some_and(|old| same_but_dry_run_counts(old, &desired));
            let counted_lately = self
                .counted
                .get(&policy.id)
                .is_some_and(|at| at.elapsed() < self.count_every);
            let skip = unchanged || (only_counts && counted_lately);
            if !skip {
                match write_status(&self.client, policy, &desired).await {
                    Ok(()) => {
                        if desired.dry_run.is_some() {
                            self.counted
                                .insert(policy.id.clone(), std::time::Instant::now());
                        }
                        self.written.insert(policy.id.clone(), desired);
                    }
                    Err(error) => {
                        tracing::warn!(policy = %policy.id, %error, "could not write JwtPolicy status")
                    }
                }
            }
            self.record_event(policy).await;
        }
        self.written
            .retain(|id, _| view.policies.iter().any(|p| p.id == *id));
        self.counted
            .retain(|id, _| view.policies.iter().any(|p| p.id == *id));
    }

    async fn record_event(&mut self, policy: &PolicyView) {
        let (reason, note) = match (&policy.conflict, &policy.error) {
            (Some(conflict), _) => ("HostConflict".to_string(), conflict.to_string()),
            (None, Some(error)) => (error.reason().to_string(), error.to_string()),
            (None, None) => return,
        };
        if !self
            .evented
            .insert((policy.id.clone(), policy.generation, reason.clone()))
        {
            return;
        }
        let event = Event {
            type_: EventType::Warning,
            reason,
            note: Some(note.chars().take(1000).collect()),
            action: "Compile".into(),
            secondary: None,
        };
        let reference = ObjectReference {
            api_version: Some("tollgate.dev/v1alpha1".into()),
            kind: Some("JwtPolicy".into()),
            name: Some(policy.name.clone()),
            namespace: Some(policy.namespace.clone()),
            uid: policy.uid.clone(),
            ..ObjectReference::default()
        };
        if let Err(error) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(policy = %policy.id, %error, "could not record an Event");
        }
    }
}

async fn write_status(
    client: &Client,
    policy: &PolicyView,
    status: &JwtPolicyStatus,
) -> Result<(), kube::Error> {
    // Untyped, so the answer parses even when the object's spec does not (its status says why).
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &policy.namespace, &jwt_policy_resource());
    let patch =
        json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "JwtPolicy", "status": status});
    api.patch_status(
        &policy.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests;

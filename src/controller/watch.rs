//! The watches every replica runs: `JwtPolicy` objects (all namespaces, or one watch per
//! `--namespaces` entry, filtered by `--selector`) and one name-selected watch per Secret that a
//! policy references. Events go to the index task; watch errors are retried with backoff while
//! the last good snapshot keeps serving.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::mpsc;

use super::index::{
    Change, GatewayKind, IndexView, PolicyIndex, Scope, SecretKey, SelectorKey, spawn_index,
};
use super::leader;
use super::replicas::{self, Identity};
use crate::jwks::KeySources;
use crate::policy::spec::JwtPolicy;
use crate::policy::{SharedSnapshot, SnapshotSettings};

/// The index task and its stream of views.
pub type IndexHandle = (
    tokio::task::JoinHandle<PolicyIndex>,
    tokio::sync::watch::Receiver<Arc<IndexView>>,
);

/// What to watch.
#[derive(Clone, Debug, Default)]
pub struct WatchOptions {
    /// Namespaces to watch; empty: all namespaces.
    pub namespaces: Vec<String>,
    /// Label selector on `JwtPolicy` objects, to shard policies across deployments.
    pub selector: Option<String>,
    /// Name of this deployment, keeping its status Lease and replica reports apart from other
    /// tollgate deployments in the same namespace.
    pub instance: String,
    /// Replica heartbeat period.
    pub heartbeat: std::time::Duration,
    /// Status Lease validity.
    pub status_lease: std::time::Duration,
}

/// The `JwtPolicy` API resource (group, version, plural).
pub fn jwt_policy_resource() -> ApiResource {
    ApiResource::erase::<JwtPolicy>(&())
}

/// Who this replica is: `POD_NAME`/`POD_NAMESPACE` (downward API) when set, else the host name
/// and process id, and the client's default namespace.
pub fn identity(client: &Client, options: &WatchOptions) -> Identity {
    let name = std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "tollgate".into());
            format!("{host}-{}", std::process::id())
        });
    let namespace = std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| client.default_namespace().to_string());
    Identity {
        namespace,
        name,
        instance: options.instance.clone(),
        heartbeat: options.heartbeat,
        status_lease: options.status_lease,
    }
}

/// Runs Kubernetes mode: the watches and index (snapshots into `shared`), this replica's
/// heartbeat, and the status writer (active while this replica holds the status Lease).
///
/// When `stop` turns true the replica says goodbye: its heartbeat Lease is marked as ending
/// (the `loaded N/M` count drops it at once) and the status Lease is released, so another
/// replica writes status without waiting for the Lease to expire. The returned task ends when
/// both are done.
pub fn spawn_kubernetes(
    client: Client,
    options: &WatchOptions,
    key_sources: Arc<KeySources>,
    settings: SnapshotSettings,
    shared: Arc<SharedSnapshot>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (IndexHandle, tokio::task::JoinHandle<()>) {
    let identity = identity(&client, options);
    tracing::info!(replica = %identity.name, namespace = %identity.namespace, instance = %identity.instance,
        "Kubernetes mode");
    let dry_run = shared.dry_run().clone();
    let (index, views) = spawn_controller(client.clone(), options, key_sources, settings, shared);
    let heartbeat = replicas::spawn_heartbeat(
        client.clone(),
        identity.clone(),
        views.clone(),
        stop.clone(),
        dry_run,
    );
    let reports = replicas::spawn_replica_watch(client.clone(), &identity);
    let writer = leader::spawn_status_writer(client, identity, views.clone(), reports, stop);
    let goodbye = tokio::spawn(async move {
        let _ = tokio::join!(heartbeat, writer);
    });
    ((index, views), goodbye)
}

/// Resolves once `stop` is true (or its sender is gone).
pub async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Starts the watches and the index task that publishes snapshots into `shared`.
pub fn spawn_controller(
    client: Client,
    options: &WatchOptions,
    key_sources: Arc<KeySources>,
    settings: impl Into<SnapshotSettings>,
    shared: Arc<SharedSnapshot>,
) -> IndexHandle {
    let scopes: Vec<Scope> = if options.namespaces.is_empty() {
        vec![None]
    } else {
        options.namespaces.iter().cloned().map(Some).collect()
    };
    let (tx, rx) = mpsc::channel(1024);
    for scope in &scopes {
        spawn_policy_watch(
            client.clone(),
            scope.clone(),
            options.selector.clone(),
            tx.clone(),
            shared.clone(),
        );
    }
    let mut secrets = NamedWatches::<Secret> {
        client: client.clone(),
        tx: tx.clone(),
        running: HashMap::new(),
        labelled: HashMap::new(),
        shared: shared.clone(),
        change: Change::Secret,
    };
    let mut config_maps = NamedWatches::<ConfigMap> {
        client,
        tx,
        running: HashMap::new(),
        labelled: HashMap::new(),
        shared: shared.clone(),
        change: Change::ConfigMap,
    };
    let mut gateway_api = GatewayWatches {
        client: secrets.client.clone(),
        tx: secrets.tx.clone(),
        running: Vec::new(),
        shared: shared.clone(),
        generation: 0,
    };
    let index = PolicyIndex::new(key_sources, settings, scopes);
    spawn_index(index, shared, rx, move |index| {
        secrets.update(index.referenced_secrets());
        secrets.update_selected(index.referenced_selectors());
        config_maps.update(index.referenced_config_maps());
        index.forget_unreferenced_secrets();
        let wanted = index.wants_gateway_api();
        // Start the watches when the first policy targets routes, stop them with the last.
        if wanted == gateway_api.running.is_empty() {
            if wanted {
                let generation = gateway_api.start(index.scopes().cloned().collect());
                index.follow_gateway_watches(generation);
            } else {
                gateway_api.stop();
                index.forget_gateway_api();
            }
        }
    })
}

/// The HTTPRoute and Gateway API resource (`gateway.networking.k8s.io/v1`).
pub fn gateway_resource(kind: GatewayKind) -> ApiResource {
    let plural = match kind {
        GatewayKind::HttpRoute => "httproutes",
        GatewayKind::Gateway => "gateways",
    };
    ApiResource {
        group: crate::policy::gateway::GROUP.into(),
        version: "v1".into(),
        api_version: format!("{}/v1", crate::policy::gateway::GROUP),
        kind: kind.kind().into(),
        plural: plural.into(),
    }
}

/// Watches of HTTPRoutes and Gateways (per policy scope), running while some policy has
/// `targetRefs`. When the API server does not serve the kind (Gateway API's CRDs are not
/// installed) the watch reports an empty list, so the other policies keep being published and
/// the targeting ones say their targets are not found; it keeps retrying, and lists for real
/// once the CRDs are installed.
struct GatewayWatches {
    client: Client,
    tx: mpsc::Sender<Change>,
    running: Vec<tokio::task::JoinHandle<()>>,
    shared: Arc<SharedSnapshot>,
    /// How many times the watches were started; events carry it.
    generation: u64,
}

impl GatewayWatches {
    /// Starts the watches; returns the generation their events carry.
    fn start(&mut self, scopes: Vec<Scope>) -> u64 {
        self.generation += 1;
        let generation = self.generation;
        for scope in scopes {
            for kind in GatewayKind::ALL {
                let resource = gateway_resource(kind);
                let api: Api<DynamicObject> = match &scope {
                    None => Api::all_with(self.client.clone(), &resource),
                    Some(namespace) => {
                        Api::namespaced_with(self.client.clone(), namespace, &resource)
                    }
                };
                let source = format!(
                    "{} watch ({})",
                    kind.kind(),
                    scope.as_deref().map_or_else(
                        || "all namespaces".to_string(),
                        |ns| format!("namespace {ns}")
                    )
                );
                let tx = self.tx.clone();
                let shared = self.shared.clone();
                let scope = scope.clone();
                self.running.push(tokio::spawn(async move {
                    let mut events = watcher(api, watcher::Config::default())
                        .default_backoff()
                        .boxed();
                    let mut listed = false;
                    while let Some(event) = events.next().await {
                        let event = match event {
                            Ok(event) => {
                                shared.set_source_problem(&source, None);
                                if matches!(event, watcher::Event::InitDone) {
                                    listed = true;
                                }
                                event
                            }
                            // Never listed: publish the other policies rather than wait.
                            Err(error) if !listed && (not_served(&error) || forbidden(&error)) => {
                                if forbidden(&error) {
                                    watch_failed(&shared, &source, &error);
                                }
                                else {
                                    shared.set_source_problem(
                                        &source,
                                        Some(format!(
                                            "the API server does not serve {} (are Gateway API's CRDs installed?): policies with targetRefs judge nothing",
                                            kind.kind()
                                        )),
                                    );
                                    tracing::warn!(source, %error,
                                        "Gateway API kind not served; policies with targetRefs judge nothing until it is");
                                }
                                listed = true;
                                for empty in [watcher::Event::Init, watcher::Event::InitDone] {
                                    if tx
                                        .send(Change::Gateway(generation, kind, scope.clone(), empty))
                                        .await
                                        .is_err()
                                    {
                                        return;
                                    }
                                }
                                continue;
                            }
                            Err(error) => {
                                if not_served(&error) {
                                    shared.set_source_problem(
                                        &source,
                                        Some(format!("the API server no longer serves {}: {error}", kind.kind())),
                                    );
                                } else {
                                    watch_failed(&shared, &source, &error);
                                }
                                continue;
                            }
                        };
                        if tx
                            .send(Change::Gateway(generation, kind, scope.clone(), event))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }));
            }
        }
        generation
    }

    fn stop(&mut self) {
        for task in self.running.drain(..) {
            task.abort();
        }
        for kind in GatewayKind::ALL {
            for problem in self.shared.source_problems() {
                if problem.0.starts_with(kind.kind()) {
                    self.shared.set_source_problem(&problem.0, None);
                }
            }
        }
    }
}

impl Drop for GatewayWatches {
    fn drop(&mut self) {
        for task in &self.running {
            task.abort();
        }
    }
}

/// Whether a watch failed because the API server does not serve the resource (404).
fn not_served(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 404,
        watcher::Error::WatchError(status) => status.code == 404,
        _ => false,
    }
}

/// Whether a watch failed because the API server refused this replica's identity a verb
/// (403): a configuration problem (the ServiceAccount's RBAC), not a passing fault.
fn forbidden(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 403,
        watcher::Error::WatchError(status) => status.code == 403,
        _ => false,
    }
}

/// Logs a failed watch (an error when forbidden, a warning otherwise) and records it for
/// `/readyz`; the watch retries with backoff.
fn watch_failed(shared: &SharedSnapshot, source: &str, error: &watcher::Error) {
    if forbidden(error) {
        tracing::error!(source, %error,
            "the API server forbids this watch: grant the verb to tollgate's ServiceAccount (the chart's RBAC); retrying, the last good policies keep serving");
    } else {
        tracing::warn!(source, %error, "watch failed; retrying, the last good policies keep serving");
    }
    shared.set_source_problem(source, Some(error.to_string()));
}

fn spawn_policy_watch(
    client: Client,
    scope: Scope,
    selector: Option<String>,
    tx: mpsc::Sender<Change>,
    shared: Arc<SharedSnapshot>,
) {
    let source = format!(
        "JwtPolicy watch ({})",
        scope.as_deref().map_or_else(
            || "all namespaces".to_string(),
            |ns| format!("namespace {ns}")
        )
    );
    tokio::spawn(async move {
        let resource = jwt_policy_resource();
        let api: Api<DynamicObject> = match &scope {
            None => Api::all_with(client, &resource),
            Some(namespace) => Api::namespaced_with(client, namespace, &resource),
        };
        let mut config = watcher::Config::default();
        if let Some(selector) = &selector {
            config = config.labels(selector);
        }
        let mut events = watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    shared.set_source_problem(&source, None);
                    if tx.send(Change::Policy(scope.clone(), event)).await.is_err() {
                        return;
                    }
                }
                Err(error) => watch_failed(&shared, &source, &error),
            }
        }
    });
}

/// One watch per referenced Secret (or ConfigMap), and for Secrets one per label selector of
/// `apiKeys`, started and stopped as policies come and go.
struct NamedWatches<K> {
    client: Client,
    tx: mpsc::Sender<Change>,
    running: HashMap<SecretKey, tokio::task::JoinHandle<()>>,
    labelled: HashMap<SelectorKey, tokio::task::JoinHandle<()>>,
    shared: Arc<SharedSnapshot>,
    /// Wraps an event of the watch on one object for the index.
    change: fn(SecretKey, watcher::Event<K>) -> Change,
}

impl NamedWatches<Secret> {
    /// A label-selected watch per `apiKeys.secretSelector`: a key Secret added, changed or
    /// removed recompiles the policies that select it.
    fn update_selected(&mut self, wanted: BTreeSet<SelectorKey>) {
        let shared = self.shared.clone();
        self.labelled.retain(|key, task| {
            let keep = wanted.contains(key);
            if !keep {
                task.abort();
                shared.set_source_problem(&selector_source(key), None);
            }
            keep
        });
        for key in wanted {
            if self.labelled.contains_key(&key) {
                continue;
            }
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &key.0);
            let config = watcher::Config::default().labels(&key.1);
            let tx = self.tx.clone();
            let task_key = key.clone();
            let shared = self.shared.clone();
            let task = tokio::spawn(async move {
                let source = selector_source(&task_key);
                let mut events = watcher(api, config).default_backoff().boxed();
                while let Some(event) = events.next().await {
                    match event {
                        Ok(event) => {
                            shared.set_source_problem(&source, None);
                            if tx
                                .send(Change::Selected(task_key.clone(), event))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(error) => watch_failed(&shared, &source, &error),
                    }
                }
            });
            self.labelled.insert(key, task);
        }
    }
}

impl<K> NamedWatches<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    fn update(&mut self, wanted: BTreeSet<SecretKey>) {
        let shared = self.shared.clone();
        self.running.retain(|key, task| {
            let keep = wanted.contains(key);
            if !keep {
                task.abort();
                shared.set_source_problem(&watch_source::<K>(key), None);
            }
            keep
        });
        for key in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let (namespace, name) = key.clone();
            let api: Api<K> = Api::namespaced(self.client.clone(), &namespace);
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let tx = self.tx.clone();
            let task_key = key.clone();
            let shared = self.shared.clone();
            let change = self.change;
            let task = tokio::spawn(async move {
                let source = watch_source::<K>(&task_key);
                let mut events = watcher(api, config).default_backoff().boxed();
                while let Some(event) = events.next().await {
                    match event {
                        Ok(event) => {
                            shared.set_source_problem(&source, None);
                            if tx.send(change(task_key.clone(), event)).await.is_err() {
                                return;
                            }
                        }
                        Err(error) => watch_failed(&shared, &source, &error),
                    }
                }
            });
            self.running.insert(key, task);
        }
    }
}

fn watch_source<K: kube::Resource<DynamicType = ()>>(key: &SecretKey) -> String {
    format!("{} watch ({}/{})", K::kind(&()), key.0, key.1)
}

fn selector_source(key: &SelectorKey) -> String {
    format!("Secret watch ({}, labels {})", key.0, key.1)
}

impl<K> Drop for NamedWatches<K> {
    fn drop(&mut self) {
        for task in self.running.values().chain(self.labelled.values()) {
            task.abort();
        }
    }
}

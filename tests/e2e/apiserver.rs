//! A small fake Kubernetes API server for black-box tests of `tollgate serve --kubernetes`,
//! over plain HTTP on 127.0.0.1:
//! - list and watch (resource versions, label and field selectors) for JwtPolicies, Secrets and
//!   Leases;
//! - JwtPolicy status writes (server-side apply on the `status` subresource);
//! - Leases: get, create, and patch with server-side apply field ownership, so an apply that
//!   would take a field another manager owns answers 409 Conflict, as kube-lease-manager's
//!   locking relies on;
//! - Events (events.k8s.io/v1) creation.
//!
//! Tests change JwtPolicies and Secrets directly, and can cut the server off (`set_down`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

/// A kind the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    JwtPolicy,
    Secret,
    Lease,
    Event,
}

impl Kind {
    fn api_version(self) -> &'static str {
        match self {
            Kind::JwtPolicy => "tollgate.dev/v1alpha1",
            Kind::Secret => "v1",
            Kind::Lease => "coordination.k8s.io/v1",
            Kind::Event => "events.k8s.io/v1",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::JwtPolicy => "JwtPolicy",
            Kind::Secret => "Secret",
            Kind::Lease => "Lease",
            Kind::Event => "Event",
        }
    }
}

#[derive(Clone, Debug)]
struct WatchEvent {
    kind: Kind,
    kind_of_change: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    resource_version: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    /// Every event, so a watch from an older resource version misses nothing.
    history: Vec<WatchEvent>,
    /// Server-side apply ownership of Lease spec fields: (namespace, name, field) → manager.
    managers: HashMap<(String, String, String), String>,
}

impl Store {
    /// Stores `object` (stamping resourceVersion) and broadcasts the change.
    fn write(
        &mut self,
        events: &broadcast::Sender<WatchEvent>,
        kind: Kind,
        mut object: Value,
        change: &'static str,
    ) -> Value {
        self.resource_version += 1;
        object["apiVersion"] = json!(kind.api_version());
        object["kind"] = json!(kind.name());
        object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if change == "DELETED" {
            self.objects.remove(&(kind, namespace, name));
        } else {
            self.objects.insert((kind, namespace, name), object.clone());
        }
        let event = WatchEvent {
            kind,
            kind_of_change: change,
            object: object.clone(),
        };
        self.history.push(event.clone());
        let _ = events.send(event);
        object
    }
}

fn api_error(code: u16, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PatchQuery {
    field_manager: Option<String>,
    force: Option<bool>,
}

/// Merges `patch` into `target` (JSON merge patch: `null` removes).
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(target), Some(patch)) => {
            for (k, v) in patch {
                if v.is_null() {
                    target.remove(k);
                } else if v.is_object() && target.get(k).is_some_and(Value::is_object) {
                    merge(target.get_mut(k).expect("present"), v);
                } else {
                    target.insert(k.clone(), v.clone());
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// `GET` of one object (as `kubectl get` and `tollgate explain --policy ns/name` do).
fn object_get(kind: Kind) -> axum::routing::MethodRouter<Arc<Shared>> {
    get(
        move |State(s): State<Arc<Shared>>, UrlPath((ns, name)): UrlPath<(String, String)>| async move {
            s.requests
                .lock()
                .expect("requests")
                .push(format!("GET {} ns={ns} name={name}", kind.name()));
            let store = s.store.lock().expect("store");
            match store.objects.get(&(kind, ns, name.clone())) {
                Some(object) => {
                    let mut object = object.clone();
                    object["apiVersion"] = json!(kind.api_version());
                    object["kind"] = json!(kind.name());
                    axum::Json(object).into_response()
                }
                None => api_error(
                    404,
                    "NotFound",
                    format!("{} \"{name}\" not found", kind.name()),
                ),
            }
        },
    )
}

async fn lease_get(
    State(s): State<Arc<Shared>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    let store = s.store.lock().expect("store");
    match store.objects.get(&(Kind::Lease, ns, name.clone())) {
        Some(lease) => axum::Json(lease.clone()).into_response(),
        None => api_error(
            404,
            "NotFound",
            format!("leases.coordination.k8s.io \"{name}\" not found"),
        ),
    }
}

async fn lease_create(
    State(s): State<Arc<Shared>>,
    UrlPath(ns): UrlPath<String>,
    axum::Json(mut lease): axum::Json<Value>,
) -> Response {
    let mut store = s.store.lock().expect("store");
    let name = lease["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if store
        .objects
        .contains_key(&(Kind::Lease, ns.clone(), name.clone()))
    {
        return api_error(
            409,
            "AlreadyExists",
            format!("leases.coordination.k8s.io \"{name}\" already exists"),
        );
    }
    lease["metadata"]["namespace"] = json!(ns);
    let stored = store.write(&s.events, Kind::Lease, lease, "ADDED");
    (StatusCode::CREATED, axum::Json(stored)).into_response()
}

async fn lease_patch(
    State(s): State<Arc<Shared>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    Query(q): Query<PatchQuery>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return api_error(400, "BadRequest", "patch is not JSON".into());
    };
    let apply = headers.get("content-type").and_then(|v| v.to_str().ok())
        == Some("application/apply-patch+yaml");
    let manager = q.field_manager.clone().unwrap_or_else(|| "unknown".into());
    let mut store = s.store.lock().expect("store");
    s.requests.lock().expect("requests").push(format!(
        "PATCH Lease ns={ns} name={name} manager={manager} apply={apply}"
    ));
    let key = (Kind::Lease, ns.clone(), name.clone());
    let existing = store.objects.get(&key).cloned();
    if existing.is_none() && !apply {
        return api_error(
            404,
            "NotFound",
            format!("leases.coordination.k8s.io \"{name}\" not found"),
        );
    }
    let mut lease = existing
        .clone()
        .unwrap_or_else(|| json!({"metadata": {"name": name, "namespace": ns}, "spec": {}}));
    let spec_patch = patch["spec"].as_object().cloned().unwrap_or_default();
    if apply && !q.force.unwrap_or(false) {
        for (field, value) in &spec_patch {
            let current = &lease["spec"][field];
            let owner = store
                .managers
                .get(&(ns.clone(), name.clone(), field.clone()));
            if !current.is_null() && current != value && owner.is_some_and(|o| *o != manager) {
                return api_error(
                    409,
                    "Conflict",
                    format!("Apply failed with 1 conflict: conflict with {owner:?}: .spec.{field}"),
                );
            }
        }
    }
    for (field, value) in &spec_patch {
        let owner_key = (ns.clone(), name.clone(), field.clone());
        if value.is_null() {
            store.managers.remove(&owner_key);
        } else {
            store.managers.insert(owner_key, manager.clone());
        }
    }
    if let Some(metadata) = patch.get("metadata") {
        let mut meta = metadata.clone();
        if let Some(m) = meta.as_object_mut() {
            m.remove("name");
            m.remove("namespace");
        }
        merge(&mut lease["metadata"], &meta);
    }
    if lease.get("spec").is_none_or(|v| !v.is_object()) {
        lease["spec"] = json!({});
    }
    merge(&mut lease["spec"], &Value::Object(spec_patch));
    let change = if existing.is_some() {
        "MODIFIED"
    } else {
        "ADDED"
    };
    let stored = store.write(&s.events, Kind::Lease, lease, change);
    axum::Json(stored).into_response()
}

async fn status_patch(
    State(s): State<Arc<Shared>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    Query(q): Query<PatchQuery>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return api_error(400, "BadRequest", "patch is not JSON".into());
    };
    let mut store = s.store.lock().expect("store");
    s.requests.lock().expect("requests").push(format!(
        "PATCH JwtPolicy/status ns={ns} name={name} manager={}",
        q.field_manager.as_deref().unwrap_or("")
    ));
    let Some(mut object) = store
        .objects
        .get(&(Kind::JwtPolicy, ns, name.clone()))
        .cloned()
    else {
        return api_error(
            404,
            "NotFound",
            format!("jwtpolicies.tollgate.dev \"{name}\" not found"),
        );
    };
    object["status"] = patch["status"].clone();
    let stored = store.write(&s.events, Kind::JwtPolicy, object, "MODIFIED");
    axum::Json(stored).into_response()
}

async fn event_create(
    State(s): State<Arc<Shared>>,
    UrlPath(ns): UrlPath<String>,
    axum::Json(mut event): axum::Json<Value>,
) -> Response {
    let mut store = s.store.lock().expect("store");
    event["metadata"]["namespace"] = json!(ns);
    if event["metadata"]["name"].is_null() {
        let prefix = event["metadata"]["generateName"]
            .as_str()
            .unwrap_or("event.")
            .to_string();
        event["metadata"]["name"] = json!(format!("{prefix}{}", store.resource_version + 1));
    }
    let stored = store.write(&s.events, Kind::Event, event, "ADDED");
    (StatusCode::CREATED, axum::Json(stored)).into_response()
}

struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<WatchEvent>,
    requests: Mutex<Vec<String>>,
    /// An outage: open connections are reset and new ones refused.
    down: tokio::sync::watch::Sender<bool>,
}

/// The running fake.
pub struct FakeApiServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListParams {
    watch: Option<String>,
    resource_version: Option<String>,
    label_selector: Option<String>,
    field_selector: Option<String>,
}

fn matches(object: &Value, namespace: Option<&str>, params: &ListParams) -> bool {
    let meta = &object["metadata"];
    if namespace.is_some_and(|ns| meta["namespace"] != ns) {
        return false;
    }
    if let Some(selector) = params.label_selector.as_deref().filter(|s| !s.is_empty()) {
        for term in selector.split(',') {
            let Some((k, v)) = term.split_once('=') else {
                return false;
            };
            if meta["labels"][k.trim_end_matches('=')] != v {
                return false;
            }
        }
    }
    if let Some(selector) = params.field_selector.as_deref().filter(|s| !s.is_empty()) {
        for term in selector.split(',') {
            match term.split_once('=') {
                Some(("metadata.name", name)) if meta["name"] == name => {}
                Some(("metadata.namespace", ns)) if meta["namespace"] == ns => {}
                _ => return false,
            }
        }
    }
    true
}

async fn list_or_watch(
    shared: Arc<Shared>,
    kind: Kind,
    namespace: Option<String>,
    params: ListParams,
) -> Response {
    shared.requests.lock().expect("requests").push(format!(
        "{} {kind:?} ns={} watch={} rv={} labels={} fields={}",
        "GET",
        namespace.as_deref().unwrap_or("*"),
        params.watch.as_deref().unwrap_or(""),
        params.resource_version.as_deref().unwrap_or(""),
        params.label_selector.as_deref().unwrap_or(""),
        params.field_selector.as_deref().unwrap_or("")
    ));
    let watching = matches!(params.watch.as_deref(), Some("true" | "1"));
    if !watching {
        let store = shared.store.lock().expect("store");
        let items: Vec<Value> = store
            .objects
            .iter()
            .filter(|((k, _, _), o)| *k == kind && matches(o, namespace.as_deref(), &params))
            .map(|(_, o)| o.clone())
            .collect();
        let list = json!({
            "apiVersion": kind.api_version(),
            "kind": format!("{}List", kind.name()),
            "metadata": {"resourceVersion": store.resource_version.to_string()},
            "items": items,
        });
        return axum::Json(list).into_response();
    }
    // Replay what happened after the requested resource version, then follow live events.
    // Subscribing under the store lock (changes broadcast under it too) leaves no gap.
    let since: u64 = params
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0);
    let (past, receiver) = {
        let store = shared.store.lock().expect("store");
        (store.history.clone(), shared.events.subscribe())
    };
    let past = futures_util::stream::iter(past.into_iter().map(Ok));
    let live = BroadcastStream::new(receiver);
    let lines = past.chain(live).filter_map(move |event| {
        let params = ListParams {
            label_selector: params.label_selector.clone(),
            field_selector: params.field_selector.clone(),
            ..ListParams::default()
        };
        let namespace = namespace.clone();
        async move {
            let event = event.ok()?;
            let rv: u64 = event.object["metadata"]["resourceVersion"]
                .as_str()?
                .parse()
                .ok()?;
            if event.kind != kind
                || rv <= since
                || !matches(&event.object, namespace.as_deref(), &params)
            {
                return None;
            }
            let line = format!(
                "{}\n",
                json!({"type": event.kind_of_change, "object": event.object})
            );
            Some(Ok::<_, std::io::Error>(line))
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(lines))
        .expect("response")
}

/// `GET` list/watch of one kind in the namespace of the path.
fn namespaced_list(kind: Kind) -> axum::routing::MethodRouter<Arc<Shared>> {
    get(
        move |State(s): State<Arc<Shared>>,
              UrlPath(ns): UrlPath<String>,
              Query(q): Query<ListParams>| { list_or_watch(s, kind, Some(ns), q) },
    )
}

impl FakeApiServer {
    pub async fn start() -> FakeApiServer {
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            events,
            requests: Mutex::new(Vec::new()),
            down: tokio::sync::watch::channel(false).0,
        });
        let app = Router::new()
            .route(
                "/apis/tollgate.dev/v1alpha1/jwtpolicies",
                get(
                    |State(s): State<Arc<Shared>>, Query(q): Query<ListParams>| {
                        list_or_watch(s, Kind::JwtPolicy, None, q)
                    },
                ),
            )
            .route(
                "/apis/tollgate.dev/v1alpha1/namespaces/{ns}/jwtpolicies",
                namespaced_list(Kind::JwtPolicy),
            )
            .route(
                "/apis/tollgate.dev/v1alpha1/namespaces/{ns}/jwtpolicies/{name}",
                object_get(Kind::JwtPolicy),
            )
            .route(
                "/api/v1/namespaces/{ns}/secrets",
                namespaced_list(Kind::Secret),
            )
            .route(
                "/api/v1/namespaces/{ns}/secrets/{name}",
                object_get(Kind::Secret),
            )
            .route(
                "/apis/tollgate.dev/v1alpha1/namespaces/{ns}/jwtpolicies/{name}/status",
                axum::routing::patch(status_patch),
            )
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
                namespaced_list(Kind::Lease).post(lease_create),
            )
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}",
                get(lease_get).patch(lease_patch),
            )
            .route(
                "/apis/events.k8s.io/v1/namespaces/{ns}/events",
                axum::routing::post(event_create),
            )
            .fallback(|request: axum::extract::Request| async move {
                (
                    StatusCode::NOT_FOUND,
                    format!(
                        "fake apiserver: no route for {} {}",
                        request.method(),
                        request.uri()
                    ),
                )
            })
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Connections are served one by one so an outage can reset all of them, as a crashed or
        // partitioned API server would; while down, new connections are closed at once.
        let mut down = shared.down.subscribe();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        if *down.borrow() {
                            drop(stream);
                            continue;
                        }
                        let service = hyper_util::service::TowerToHyperService::new(app.clone());
                        connections.spawn(async move {
                            let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    changed = down.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        if *down.borrow() {
                            connections.abort_all();
                        }
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        FakeApiServer { addr, shared, task }
    }

    /// Creates or replaces an object (generation increases when the spec changes).
    pub fn apply(&self, kind: Kind, mut object: Value) {
        let mut store = self.shared.store.lock().expect("store");
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_string();
        let key = (kind, namespace.clone(), name.clone());
        let previous = store.objects.get(&key).cloned();
        let generation = match &previous {
            Some(old) if old["spec"] == object["spec"] => {
                old["metadata"]["generation"].as_i64().unwrap_or(1)
            }
            Some(old) => old["metadata"]["generation"].as_i64().unwrap_or(1) + 1,
            None => 1,
        };
        let created = previous
            .as_ref()
            .and_then(|o| {
                o["metadata"]["creationTimestamp"]
                    .as_str()
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| {
                humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
            });
        let meta = object["metadata"].as_object_mut().expect("metadata");
        meta.insert("namespace".into(), json!(namespace));
        meta.insert("generation".into(), json!(generation));
        meta.insert("creationTimestamp".into(), json!(created));
        meta.entry("uid")
            .or_insert_with(|| json!(format!("uid-{namespace}-{name}")));
        if let Some(status) = previous.as_ref().and_then(|p| p.get("status")) {
            object["status"] = status.clone();
        }
        let kind_of_change = if previous.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        store.write(&self.shared.events, kind, object, kind_of_change);
    }

    /// Deletes an object.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let mut store = self.shared.store.lock().expect("store");
        if let Some(object) = store
            .objects
            .get(&(kind, namespace.to_string(), name.to_string()))
            .cloned()
        {
            store.write(&self.shared.events, kind, object, "DELETED");
        }
    }

    /// The object as stored now.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let store = self.shared.store.lock().expect("store");
        store
            .objects
            .get(&(kind, namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every stored object of a kind.
    pub fn all(&self, kind: Kind) -> Vec<Value> {
        let store = self.shared.store.lock().expect("store");
        store
            .objects
            .iter()
            .filter(|((k, _, _), _)| *k == kind)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Simulates an outage (`true`) or the recovery (`false`).
    pub fn set_down(&self, down: bool) {
        self.shared.down.send_replace(down);
    }

    /// Requests received so far, one line each.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().expect("requests").clone()
    }

    /// Writes a kubeconfig pointing at this server and returns its path.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{}\"}}\nusers:\n- name: fake\n  user: {{token: test-token}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake, namespace: default}}\ncurrent-context: fake\n",
            self.addr
        );
        std::fs::write(&path, config).expect("write kubeconfig");
        path
    }
}

/// A `JwtPolicy` object for the fake.
pub fn jwt_policy(namespace: &str, name: &str, labels: HashMap<&str, &str>, spec: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": namespace, "labels": labels}, "spec": spec})
}

/// A `Secret` object for the fake (values base64-encoded, as the API sends them).
pub fn secret(namespace: &str, name: &str, data: &[(&str, &[u8])]) -> Value {
    use base64::Engine as _;
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                json!(base64::engine::general_purpose::STANDARD.encode(v)),
            )
        })
        .collect();
    json!({"metadata": {"name": name, "namespace": namespace}, "type": "Opaque", "data": data})
}

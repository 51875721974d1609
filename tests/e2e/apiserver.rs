//! A small fake Kubernetes API server for black-box tests of `tollgate serve --kubernetes`:
//! list and watch (with resource versions, label and field selectors) for JwtPolicies and
//! Secrets, served over plain HTTP on 127.0.0.1. Objects are changed directly by the test.

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
}

impl Kind {
    fn api_version(self) -> &'static str {
        match self {
            Kind::JwtPolicy => "tollgate.dev/v1alpha1",
            Kind::Secret => "v1",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::JwtPolicy => "JwtPolicy",
            Kind::Secret => "Secret",
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
}

struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<WatchEvent>,
    requests: Mutex<Vec<String>>,
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

impl FakeApiServer {
    pub async fn start() -> FakeApiServer {
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            events,
            requests: Mutex::new(Vec::new()),
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
                get(
                    |State(s): State<Arc<Shared>>,
                     UrlPath(ns): UrlPath<String>,
                     Query(q): Query<ListParams>| {
                        list_or_watch(s, Kind::JwtPolicy, Some(ns), q)
                    },
                ),
            )
            .route(
                "/api/v1/namespaces/{ns}/secrets",
                get(
                    |State(s): State<Arc<Shared>>,
                     UrlPath(ns): UrlPath<String>,
                     Query(q): Query<ListParams>| {
                        list_or_watch(s, Kind::Secret, Some(ns), q)
                    },
                ),
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
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeApiServer { addr, shared, task }
    }

    /// Creates or replaces an object (generation increases when the spec changes).
    pub fn apply(&self, kind: Kind, mut object: Value) {
        let mut store = self.shared.store.lock().expect("store");
        store.resource_version += 1;
        let rv = store.resource_version;
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
        object["apiVersion"] = json!(kind.api_version());
        object["kind"] = json!(kind.name());
        let meta = object["metadata"].as_object_mut().expect("metadata");
        meta.insert("namespace".into(), json!(namespace));
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.insert("generation".into(), json!(generation));
        meta.insert("creationTimestamp".into(), json!(created));
        meta.entry("uid")
            .or_insert_with(|| json!(format!("uid-{namespace}-{name}")));
        store.objects.insert(key, object.clone());
        let kind_of_change = if previous.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let event = WatchEvent {
            kind,
            kind_of_change,
            object,
        };
        store.history.push(event.clone());
        let _ = self.shared.events.send(event);
    }

    /// Deletes an object.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let mut store = self.shared.store.lock().expect("store");
        store.resource_version += 1;
        let rv = store.resource_version;
        if let Some(mut object) =
            store
                .objects
                .remove(&(kind, namespace.to_string(), name.to_string()))
        {
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            let event = WatchEvent {
                kind,
                kind_of_change: "DELETED",
                object,
            };
            store.history.push(event.clone());
            let _ = self.shared.events.send(event);
        }
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

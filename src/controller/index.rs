//! The index of watched objects: `JwtPolicy` → compiled `Policy` (or why not), the Secrets they
//! reference, and the snapshot built from them. One task owns it; nothing else mutates it.
//!
//! - `Init … InitApply … InitDone` (a relist) replaces the whole set at once; until `InitDone`
//!   the previous set keeps serving, so a relist never publishes half a list.
//! - A policy that fails to compile keeps its last good version (reported in its state).
//! - An object that does not even parse as a `JwtPolicy` is recorded as invalid and skipped; it
//!   never stops the watch.
//! - Secrets (and the ConfigMaps `keysFrom` names) are watched one by one (a name-selected
//!   watch per referenced object, never a cluster-wide list); a change recompiles exactly the
//!   policies that reference it.
//! - Nothing is published until the policy list is complete and every referenced Secret has
//!   reported (present or absent), so a policy is never judged before its Secret was read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt as _;
use kube::api::DynamicObject;
use kube::runtime::watcher;
use tokio::sync::{mpsc, watch};

use crate::jwks::KeySources;
use crate::policy::compile::SelectedSecret;
use crate::policy::gateway::{
    self, AncestorState, Attacher, Attachment, GatewayObject, GatewaySpec, HttpRouteSpec,
    ObjectKey, RouteObject,
};
use crate::policy::route::HostPattern;
use crate::policy::spec::{ConfigMapKeyRef, JwtPolicy, JwtPolicyStatus, SecretSpec};
use crate::policy::{
    Claimant, CompileContext, CompileError, Conflict, HostDelegations, Policy, Problem,
    ProblemKind, SecretSource, SharedSnapshot, Snapshot, SnapshotSettings, compile,
};

/// Which namespace a policy watch covers (`None`: all namespaces).
pub type Scope = Option<String>;

/// A watch event for one of the kinds the index follows.
#[derive(Debug)]
pub enum Change {
    /// `JwtPolicy` objects of one watch scope, untyped so one malformed object cannot break the
    /// stream.
    Policy(Scope, watcher::Event<DynamicObject>),
    /// Events of the watch on one referenced Secret.
    Secret(SecretKey, watcher::Event<Secret>),
    /// Events of the watch on the Secrets one `apiKeys.secretSelector` selects.
    Selected(SelectorKey, watcher::Event<Secret>),
    /// Events of the watch on one referenced ConfigMap.
    ConfigMap(SecretKey, watcher::Event<ConfigMap>),
    /// `HTTPRoute` or `Gateway` objects of one watch scope (watched while some policy has
    /// `targetRefs`), from the watches started `generation`-th (events still queued from
    /// watches stopped since are dropped).
    Gateway(u64, GatewayKind, Scope, watcher::Event<DynamicObject>),
}

/// The Gateway API kinds the index follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GatewayKind {
    HttpRoute,
    Gateway,
}

impl GatewayKind {
    pub const ALL: [GatewayKind; 2] = [GatewayKind::HttpRoute, GatewayKind::Gateway];

    pub fn kind(self) -> &'static str {
        match self {
            GatewayKind::HttpRoute => "HTTPRoute",
            GatewayKind::Gateway => "Gateway",
        }
    }
}

/// `namespace/name` of a Secret (or of a ConfigMap).
pub type SecretKey = (String, String);

/// A namespace and a label selector (`k=v,k2=v2`, sorted): the Secrets of `apiKeys`.
pub type SelectorKey = (String, String);

/// The Secrets a selector selects: name → data.
pub(crate) type Selected = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// The label selector of `labels`, in the API server's syntax (compilation checks that the
/// names and values are label syntax, so the text is unambiguous).
pub(crate) fn label_selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The selectors of the Secrets a policy's `apiKeys` read.
pub(crate) fn referenced_selectors(namespace: &str, policy: &JwtPolicy) -> BTreeSet<SelectorKey> {
    policy
        .spec
        .api_keys
        .iter()
        .filter(|k| !k.secret_selector.match_labels.is_empty())
        .map(|k| {
            (
                namespace.to_string(),
                label_selector(&k.secret_selector.match_labels),
            )
        })
        .collect()
}

/// What the index knows about one `JwtPolicy`.
#[derive(Clone, Debug)]
pub struct PolicyState {
    /// `metadata.generation` of the object last seen.
    pub generation: i64,
    /// Creation time (RFC 3339), which decides who keeps a contested host/path.
    pub created: String,
    /// The last good compiled version, if any.
    pub compiled: Option<Arc<Policy>>,
    /// The generation `compiled` came from.
    pub compiled_generation: Option<i64>,
    /// Why the current generation is not the one serving, if it is not.
    pub error: Option<CompileError>,
    /// Secrets the current generation references.
    pub secrets: BTreeSet<SecretKey>,
    /// Label selectors of the Secrets the current generation reads (`apiKeys`).
    pub selectors: BTreeSet<SelectorKey>,
    /// ConfigMaps the current generation references.
    pub config_maps: BTreeSet<SecretKey>,
    /// The object as last seen, to recompile when a Secret changes.
    object: Option<Arc<JwtPolicy>>,
    /// The status on the object as last seen (also for objects whose spec does not parse).
    pub status: Option<JwtPolicyStatus>,
    /// `metadata.uid`.
    pub uid: Option<String>,
    /// The current generation compiled, before its route entries are attached (policies with
    /// `targetRefs` are re-attached, not recompiled, when routes change).
    base: Option<Arc<Policy>>,
}

impl PolicyState {
    /// Whether the current generation compiled and is the one serving.
    pub fn current(&self) -> bool {
        self.error.is_none() && self.compiled_generation == Some(self.generation)
    }
}

/// The data of a Secret, or `None` when its watch reported it absent.
pub(crate) type SecretData = Option<BTreeMap<String, Vec<u8>>>;

/// Every policy's state as the index sees it after a batch of changes.
#[derive(Clone, Debug, Default)]
pub struct IndexView {
    pub policies: Vec<PolicyView>,
    /// The operator's host delegations, which the admission webhook applies as the index does.
    pub delegations: Arc<HostDelegations>,
}

/// One policy in an [`IndexView`].
#[derive(Clone, Debug)]
pub struct PolicyView {
    /// `namespace/name`
    pub id: Arc<str>,
    pub namespace: String,
    pub name: String,
    /// `metadata.uid`, for Events.
    pub uid: Option<String>,
    /// Creation time (RFC 3339): the older of two policies keeps a contested host/path.
    pub created: String,
    /// `metadata.generation` as last seen.
    pub generation: i64,
    /// The generation this replica serves (`None`: not served, e.g. never compiled or left out
    /// by a host/path conflict).
    pub serving_generation: Option<i64>,
    /// Why the current generation is not the one serving.
    pub error: Option<CompileError>,
    /// The host/path conflict that keeps this policy out of the snapshot.
    pub conflict: Option<Conflict>,
    /// The compiled version serving, for issuer key status.
    pub policy: Option<Arc<Policy>>,
    /// The status on the object as last seen.
    pub status: Option<JwtPolicyStatus>,
    /// The hosts its spec names (or its routes derive), which it holds even while it does
    /// not compile.
    pub hosts: Vec<String>,
    /// Per target ancestor: whether the target resolved and the policy judges it there.
    pub ancestors: Vec<AncestorState>,
    /// Whether it has `targetRefs` (its hosts are derived; none claims none, never `*`).
    pub targeted: bool,
}

impl IndexView {
    /// This replica's load report: `namespace/name` → generation served.
    pub fn loaded(&self) -> BTreeMap<String, i64> {
        self.policies
            .iter()
            .filter_map(|p| Some((p.id.to_string(), p.serving_generation?)))
            .collect()
    }
}

/// Secret values for compilation, from the watched (or fetched) Secrets.
pub(crate) struct SecretCache<'a> {
    pub(crate) secrets: &'a HashMap<SecretKey, SecretData>,
    /// Secrets by label selector, once their watch (or list) reported.
    pub(crate) selected: &'a HashMap<SelectorKey, Selected>,
    pub(crate) config_maps: &'a HashMap<SecretKey, SecretData>,
}

impl SecretSource for SecretCache<'_> {
    fn read(&self, namespace: &str, spec: &SecretSpec) -> Result<Vec<u8>, String> {
        let Some(reference) = &spec.secret_ref else {
            return Err(
                "file: is for policy files; in Kubernetes use secretRef: {name, key}".into(),
            );
        };
        let data = self
            .secrets
            .get(&(namespace.to_string(), reference.name.clone()))
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("Secret {namespace}/{} not found", reference.name))?;
        data.get(&reference.key).cloned().ok_or_else(|| {
            format!(
                "Secret {namespace}/{} has no key {:?}",
                reference.name, reference.key
            )
        })
    }

    fn select(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        _dir: Option<&str>,
    ) -> Result<Vec<SelectedSecret>, String> {
        let selector = label_selector(labels);
        let selected = self
            .selected
            .get(&(namespace.to_string(), selector.clone()))
            .ok_or_else(|| {
                format!("the Secrets labelled {selector} in {namespace} are not listed yet")
            })?;
        Ok(selected
            .iter()
            .map(|(name, data)| SelectedSecret {
                source: format!("Secret {namespace}/{name}"),
                data: data.clone(),
            })
            .collect())
    }

    fn read_config_map(
        &self,
        namespace: &str,
        reference: &ConfigMapKeyRef,
    ) -> Result<Vec<u8>, String> {
        let data = self
            .config_maps
            .get(&(namespace.to_string(), reference.name.clone()))
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("ConfigMap {namespace}/{} not found", reference.name))?;
        data.get(&reference.key).cloned().ok_or_else(|| {
            format!(
                "ConfigMap {namespace}/{} has no key {:?}",
                reference.name, reference.key
            )
        })
    }
}

/// The Secrets a policy reads, as `(namespace, name)`.
pub(crate) fn referenced_secrets(namespace: &str, policy: &JwtPolicy) -> BTreeSet<SecretKey> {
    let shared = policy
        .spec
        .issuers
        .iter()
        .filter_map(|i| i.shared_secret.as_ref()?.secret_ref.as_ref())
        .map(|r| r.name.clone());
    let introspection = policy
        .spec
        .introspection
        .iter()
        .filter_map(|i| i.client_secret_ref.as_ref()?.name.clone());
    let decryption = policy
        .spec
        .decryption
        .iter()
        .flat_map(|d| &d.keys)
        .filter_map(|k| k.secret_ref.as_ref())
        .map(|r| r.name.clone());
    let trace = policy
        .spec
        .debug
        .iter()
        .filter_map(|d| d.trace_header.as_ref()?.value.secret_ref.as_ref())
        .map(|r| r.name.clone());
    let nonce = policy
        .spec
        .dpop
        .iter()
        .filter_map(|d| d.nonce.as_ref()?.secret.secret_ref.as_ref())
        .map(|r| r.name.clone());
    let keys = policy
        .spec
        .issuers
        .iter()
        .flat_map(|i| {
            [
                i.keys_from.as_ref().and_then(|k| k.secret_ref.as_ref()),
                i.ca_bundle.as_ref().and_then(|b| b.secret_ref.as_ref()),
            ]
        })
        .flatten()
        .map(|r| r.name.clone());
    shared
        .chain(introspection)
        .chain(decryption)
        .chain(trace)
        .chain(nonce)
        .chain(keys)
        .map(|name| (namespace.to_string(), name))
        .collect()
}

/// The ConfigMaps a policy reads (`keysFrom` and `caBundle`), as `(namespace, name)`.
pub(crate) fn referenced_config_maps(namespace: &str, policy: &JwtPolicy) -> BTreeSet<SecretKey> {
    policy
        .spec
        .issuers
        .iter()
        .flat_map(|i| {
            [
                i.keys_from.as_ref().and_then(|k| k.config_map_ref.as_ref()),
                i.ca_bundle.as_ref().and_then(|b| b.config_map_ref.as_ref()),
            ]
        })
        .flatten()
        .map(|r| (namespace.to_string(), r.name.clone()))
        .collect()
}

/// The data of a ConfigMap: `data` as UTF-8 bytes, and `binaryData`.
pub(crate) fn config_map_data(config_map: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = config_map
        .binary_data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in config_map.data.iter().flatten() {
        data.insert(k.clone(), v.clone().into_bytes());
    }
    data
}

pub(crate) fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        data.insert(k.clone(), v.clone().into_bytes());
    }
    data
}

/// The index. See the module documentation.
pub struct PolicyIndex {
    key_sources: Arc<KeySources>,
    settings: SnapshotSettings,
    policies: BTreeMap<Arc<str>, PolicyState>,
    /// Reported Secrets (a key is present once its watch has listed it).
    secrets: HashMap<SecretKey, SecretData>,
    /// Reported ConfigMaps, likewise.
    config_maps: HashMap<SecretKey, SecretData>,
    policy_buffers: HashMap<Scope, Vec<DynamicObject>>,
    secret_buffers: HashMap<SecretKey, Vec<Secret>>,
    /// Secrets by label selector (a selector is present once its watch has listed).
    selected: HashMap<SelectorKey, Selected>,
    selected_buffers: HashMap<SelectorKey, Vec<Secret>>,
    config_map_buffers: HashMap<SecretKey, Vec<ConfigMap>>,
    /// The watch scopes that must list once before anything is published.
    scopes: BTreeSet<Scope>,
    listed_scopes: BTreeSet<Scope>,
    routes: BTreeMap<ObjectKey, RouteObject>,
    gateways: BTreeMap<ObjectKey, GatewayObject>,
    gateway_buffers: HashMap<(GatewayKind, Scope), Vec<DynamicObject>>,
    /// The Gateway API watches that have listed once.
    gateway_listed: BTreeSet<(GatewayKind, Scope)>,
    attachments: HashMap<Arc<str>, Attachment>,
    /// Which start of the Gateway API watches the index follows.
    gateway_generation: u64,
    /// Whether a snapshot was published: after that, a policy that starts targeting routes
    /// does not hold back the others while the route watches list.
    published: bool,
}

impl PolicyIndex {
    /// `scopes`: the policy watches that will report (`[None]` for all namespaces).
    pub fn new(
        key_sources: Arc<KeySources>,
        settings: impl Into<SnapshotSettings>,
        scopes: Vec<Scope>,
    ) -> Self {
        PolicyIndex {
            key_sources,
            settings: settings.into(),
            policies: BTreeMap::new(),
            secrets: HashMap::new(),
            config_maps: HashMap::new(),
            policy_buffers: HashMap::new(),
            secret_buffers: HashMap::new(),
            selected: HashMap::new(),
            selected_buffers: HashMap::new(),
            config_map_buffers: HashMap::new(),
            scopes: scopes.into_iter().collect(),
            listed_scopes: BTreeSet::new(),
            routes: BTreeMap::new(),
            gateways: BTreeMap::new(),
            gateway_buffers: HashMap::new(),
            gateway_listed: BTreeSet::new(),
            attachments: HashMap::new(),
            gateway_generation: 0,
            published: false,
        }
    }

    /// Follows the Gateway API watches started `generation`-th; what the index knew from
    /// earlier watches is forgotten.
    pub fn follow_gateway_watches(&mut self, generation: u64) {
        self.forget_gateway_api();
        self.gateway_generation = generation;
    }

    /// Records that a snapshot was published.
    pub fn mark_published(&mut self) {
        self.published = true;
    }

    /// Whether some policy has `targetRefs`, so HTTPRoutes and Gateways must be watched.
    pub fn wants_gateway_api(&self) -> bool {
        self.policies.values().any(|p| {
            p.object
                .as_ref()
                .is_some_and(|o| !o.spec.target_refs.is_empty())
        })
    }

    /// The scopes the Gateway API watches cover (those of the policy watches).
    pub fn scopes(&self) -> impl Iterator<Item = &Scope> {
        self.scopes.iter()
    }

    /// Forgets routes and Gateways once no policy targets any (their watches are stopped).
    pub fn forget_gateway_api(&mut self) {
        self.routes.clear();
        self.gateways.clear();
        self.gateway_buffers.clear();
        self.gateway_listed.clear();
    }

    /// Whether every policy watch listed once, every referenced Secret and ConfigMap has
    /// reported and every `apiKeys` selector has listed.
    pub fn synced(&self) -> bool {
        self.scopes.is_subset(&self.listed_scopes)
            && self
                .referenced_secrets()
                .iter()
                .all(|k| self.secrets.contains_key(k))
            && self
                .referenced_selectors()
                .iter()
                .all(|k| self.selected.contains_key(k))
            && self
                .referenced_config_maps()
                .iter()
                .all(|k| self.config_maps.contains_key(k))
            && (self.published
                || !self.wants_gateway_api()
                || self.scopes.iter().all(|scope| {
                    GatewayKind::ALL
                        .iter()
                        .all(|k| self.gateway_listed.contains(&(*k, scope.clone())))
                }))
    }

    /// Per-policy state, for status and logs.
    pub fn states(&self) -> impl Iterator<Item = (&Arc<str>, &PolicyState)> {
        self.policies.iter()
    }

    /// Every Secret some policy references.
    pub fn referenced_secrets(&self) -> BTreeSet<SecretKey> {
        self.policies
            .values()
            .flat_map(|p| p.secrets.iter().cloned())
            .collect()
    }

    /// Every label selector some policy's `apiKeys` reads.
    pub fn referenced_selectors(&self) -> BTreeSet<SelectorKey> {
        self.policies
            .values()
            .flat_map(|p| p.selectors.iter().cloned())
            .collect()
    }

    /// Every ConfigMap some policy references.
    pub fn referenced_config_maps(&self) -> BTreeSet<SecretKey> {
        self.policies
            .values()
            .flat_map(|p| p.config_maps.iter().cloned())
            .collect()
    }

    /// Applies one event. Returns whether the set of serving policies may have changed.
    pub fn apply(&mut self, change: Change) -> bool {
        let changed = match change {
            Change::Policy(scope, event) => self.apply_policy_event(scope, event),
            Change::Secret(key, event) => self.apply_secret_event(key, event),
            Change::Selected(key, event) => self.apply_selected_event(key, event),
            Change::ConfigMap(key, event) => self.apply_config_map_event(key, event),
            Change::Gateway(generation, kind, scope, event) => {
                if generation != self.gateway_generation {
                    return false;
                }
                self.apply_gateway_event(kind, scope, event)
            }
        };
        if changed {
            self.reattach();
        }
        changed
    }

    fn apply_gateway_event(
        &mut self,
        kind: GatewayKind,
        scope: Scope,
        event: watcher::Event<DynamicObject>,
    ) -> bool {
        match event {
            watcher::Event::Init => {
                self.gateway_buffers.insert((kind, scope), Vec::new());
                false
            }
            watcher::Event::InitApply(object) => {
                self.gateway_buffers
                    .entry((kind, scope))
                    .or_default()
                    .push(object);
                false
            }
            watcher::Event::InitDone => {
                let objects = self
                    .gateway_buffers
                    .remove(&(kind, scope.clone()))
                    .unwrap_or_default();
                let in_scope = |key: &ObjectKey| scope.as_ref().is_none_or(|ns| *ns == key.0);
                match kind {
                    GatewayKind::HttpRoute => self.routes.retain(|k, _| !in_scope(k)),
                    GatewayKind::Gateway => self.gateways.retain(|k, _| !in_scope(k)),
                }
                for object in objects {
                    self.upsert_gateway_object(kind, &object);
                }
                self.gateway_listed.insert((kind, scope));
                true
            }
            watcher::Event::Apply(object) => self.upsert_gateway_object(kind, &object),
            watcher::Event::Delete(object) => {
                let key = object_key(&object);
                match kind {
                    GatewayKind::HttpRoute => self.routes.remove(&key).is_some(),
                    GatewayKind::Gateway => self.gateways.remove(&key).is_some(),
                }
            }
        }
    }

    /// Records an HTTPRoute or Gateway; one whose spec does not parse is dropped (it attaches
    /// nothing) with a warning. Returns whether anything tollgate reads changed.
    fn upsert_gateway_object(&mut self, kind: GatewayKind, object: &DynamicObject) -> bool {
        let key = object_key(object);
        let spec = object.data.get("spec").cloned().unwrap_or_default();
        match kind {
            GatewayKind::HttpRoute => match serde_json::from_value::<HttpRouteSpec>(spec) {
                Ok(spec) => {
                    let route = RouteObject {
                        namespace: key.0.clone(),
                        name: key.1.clone(),
                        created: object
                            .metadata
                            .creation_timestamp
                            .as_ref()
                            .map(|t| t.0.to_string())
                            .unwrap_or_default(),
                        spec,
                    };
                    self.routes.insert(key, route.clone()) != Some(route)
                }
                Err(e) => {
                    tracing::warn!(route = %format!("{}/{}", key.0, key.1), error = %e,
                        "skipping an HTTPRoute whose spec tollgate cannot read");
                    self.routes.remove(&key).is_some()
                }
            },
            GatewayKind::Gateway => match serde_json::from_value::<GatewaySpec>(spec) {
                Ok(spec) => {
                    let gateway = GatewayObject {
                        namespace: key.0.clone(),
                        name: key.1.clone(),
                        spec,
                    };
                    self.gateways.insert(key, gateway.clone()) != Some(gateway)
                }
                Err(e) => {
                    tracing::warn!(gateway = %format!("{}/{}", key.0, key.1), error = %e,
                        "skipping a Gateway whose spec tollgate cannot read");
                    self.gateways.remove(&key).is_some()
                }
            },
        }
    }

    /// Derives every targeting policy's route entries and per-ancestor status again, and
    /// attaches the entries to their compiled policies. Returns whether any changed.
    fn reattach(&mut self) -> bool {
        let attachers: Vec<Attacher<'_>> = self
            .policies
            .iter()
            .filter_map(|(id, state)| {
                let object = state.object.as_ref()?;
                if object.spec.target_refs.is_empty() {
                    return None;
                }
                Some(Attacher {
                    id: id.clone(),
                    namespace: id.split_once('/').map_or("default", |(ns, _)| ns),
                    created: &state.created,
                    targets: &object.spec.target_refs,
                })
            })
            .collect();
        let attachments = gateway::attach(&attachers, &self.routes, &self.gateways);
        if attachments == self.attachments {
            return false;
        }
        let changed: Vec<Arc<str>> = self
            .policies
            .keys()
            .filter(|id| attachments.get(*id) != self.attachments.get(*id))
            .cloned()
            .collect();
        self.attachments = attachments;
        for id in changed {
            self.settle(&id);
        }
        true
    }

    /// Puts a policy's compiled base and its attachment together: serving with its route
    /// entries, or (when its routes cannot be judged) not accepted, keeping the last good.
    fn settle(&mut self, id: &Arc<str>) {
        let attachment = self.attachments.get(id);
        let Some(state) = self.policies.get_mut(id) else {
            return;
        };
        let Some(base) = state.base.clone() else {
            return;
        };
        if !base.is_targeted() {
            state.compiled = Some(base);
            state.compiled_generation = Some(state.generation);
            state.error = None;
            return;
        }
        let empty = Attachment::default();
        let attachment = attachment.unwrap_or(&empty);
        if !attachment.problems.is_empty() {
            let error = CompileError {
                problems: attachment.problems.clone(),
            };
            tracing::warn!(policy = %id, kept_last_good = state.compiled.is_some(), error = %error,
                "JwtPolicy's routes cannot be judged as the gateway routes them");
            state.error = Some(error);
            return;
        }
        state.compiled = Some(Arc::new(base.attach(attachment.entries.clone())));
        state.compiled_generation = Some(state.generation);
        state.error = None;
    }

    fn apply_policy_event(&mut self, scope: Scope, event: watcher::Event<DynamicObject>) -> bool {
        match event {
            watcher::Event::Init => {
                self.policy_buffers.insert(scope, Vec::new());
                false
            }
            watcher::Event::InitApply(object) => {
                self.policy_buffers.entry(scope).or_default().push(object);
                false
            }
            watcher::Event::InitDone => {
                let objects = self.policy_buffers.remove(&scope).unwrap_or_default();
                let listed: BTreeSet<Arc<str>> = objects.iter().map(object_id).collect();
                let in_scope = |id: &str| match &scope {
                    None => true,
                    Some(namespace) => id.split('/').next() == Some(namespace.as_str()),
                };
                self.policies
                    .retain(|id, _| !in_scope(id) || listed.contains(id));
                for object in objects {
                    self.upsert(object);
                }
                self.listed_scopes.insert(scope);
                true
            }
            // A status write also arrives as an update: only a changed spec recompiles.
            watcher::Event::Apply(object) => self.upsert(object),
            watcher::Event::Delete(object) => self.policies.remove(&object_id(&object)).is_some(),
        }
    }

    fn apply_secret_event(&mut self, key: SecretKey, event: watcher::Event<Secret>) -> bool {
        let Some(data) = stored_event(&mut self.secret_buffers, &key, event, secret_data) else {
            return false;
        };
        if self.secrets.get(&key) == Some(&data) {
            return false;
        }
        self.secrets.insert(key.clone(), data);
        self.recompile_for(|p| p.secrets.contains(&key))
    }

    fn apply_selected_event(&mut self, key: SelectorKey, event: watcher::Event<Secret>) -> bool {
        let name = |s: &Secret| s.metadata.name.clone().unwrap_or_default();
        let mut selected = self.selected.get(&key).cloned();
        match event {
            watcher::Event::Init => {
                self.selected_buffers.insert(key, Vec::new());
                return false;
            }
            watcher::Event::InitApply(secret) => {
                self.selected_buffers.entry(key).or_default().push(secret);
                return false;
            }
            watcher::Event::InitDone => {
                let listed = self.selected_buffers.remove(&key).unwrap_or_default();
                selected = Some(listed.iter().map(|s| (name(s), secret_data(s))).collect());
            }
            watcher::Event::Apply(secret) => {
                selected
                    .get_or_insert_default()
                    .insert(name(&secret), secret_data(&secret));
            }
            watcher::Event::Delete(secret) => {
                selected.get_or_insert_default().remove(&name(&secret));
            }
        }
        let Some(selected) = selected else {
            return false;
        };
        if self.selected.get(&key) == Some(&selected) {
            return false;
        }
        self.selected.insert(key.clone(), selected);
        let affected: Vec<Arc<JwtPolicy>> = self
            .policies
            .values()
            .filter(|p| p.selectors.contains(&key))
            .filter_map(|p| p.object.clone())
            .collect();
        for policy in &affected {
            self.compile_into_state(policy);
        }
        !affected.is_empty()
    }

    fn apply_config_map_event(&mut self, key: SecretKey, event: watcher::Event<ConfigMap>) -> bool {
        let Some(data) = stored_event(&mut self.config_map_buffers, &key, event, config_map_data)
        else {
            return false;
        };
        if self.config_maps.get(&key) == Some(&data) {
            return false;
        }
        self.config_maps.insert(key.clone(), data);
        self.recompile_for(|p| p.config_maps.contains(&key))
    }

    /// Forgets Secrets and ConfigMaps no policy references any more (their watches are
    /// stopped).
    pub fn forget_unreferenced_secrets(&mut self) {
        let referenced = self.referenced_secrets();
        self.secrets.retain(|k, _| referenced.contains(k));
        self.secret_buffers.retain(|k, _| referenced.contains(k));
        let selectors = self.referenced_selectors();
        self.selected.retain(|k, _| selectors.contains(k));
        self.selected_buffers.retain(|k, _| selectors.contains(k));
        let referenced = self.referenced_config_maps();
        self.config_maps.retain(|k, _| referenced.contains(k));
        self.config_map_buffers
            .retain(|k, _| referenced.contains(k));
    }

    /// Recompiles the policies `affects` picks.
    fn recompile_for(&mut self, affects: impl Fn(&PolicyState) -> bool) -> bool {
        let affected: Vec<Arc<JwtPolicy>> = self
            .policies
            .values()
            .filter(|p| affects(p))
            .filter_map(|p| p.object.clone())
            .collect();
        for policy in &affected {
            self.compile_into_state(policy);
        }
        !affected.is_empty()
    }

    /// Adds or updates a policy; returns whether anything changed.
    fn upsert(&mut self, object: DynamicObject) -> bool {
        let id = object_id(&object);
        let generation = object.metadata.generation.unwrap_or(0);
        let parsed = object.clone().try_parse::<JwtPolicy>();
        let unchanged = self.policies.get(&id).is_some_and(|state| {
            state.generation == generation
                && match &parsed {
                    Ok(policy) => state.object.as_ref().is_some_and(|o| o.spec == policy.spec),
                    Err(_) => state.object.is_none() && state.error.is_some(),
                }
        });
        // The status and uid are kept from every update, even one that changes nothing else.
        let state = self
            .policies
            .entry(id.clone())
            .or_insert_with(|| empty_state(generation, ""));
        state.status = object
            .data
            .get("status")
            .and_then(|s| serde_json::from_value::<JwtPolicyStatus>(s.clone()).ok());
        state.uid = object.metadata.uid.clone();
        if unchanged {
            return false;
        }
        state.generation = generation;
        state.created = object
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        match parsed {
            Ok(policy) => self.compile_into_state(&Arc::new(policy)),
            Err(e) => {
                tracing::warn!(policy = %id, error = %e, "skipping a JwtPolicy that does not parse");
                state.object = None;
                state.error = Some(CompileError {
                    problems: vec![Problem {
                        field: "spec".into(),
                        message: format!("not a valid JwtPolicy: {e}"),
                        kind: ProblemKind::InvalidSpec,
                    }],
                });
            }
        }
        true
    }

    fn compile_into_state(&mut self, policy: &Arc<JwtPolicy>) {
        let namespace = policy.namespace().unwrap_or_else(|| "default".into());
        let name = policy.name_any();
        let id: Arc<str> = format!("{namespace}/{name}").into();
        let secrets = SecretCache {
            secrets: &self.secrets,
            selected: &self.selected,
            config_maps: &self.config_maps,
        };
        let ctx = CompileContext {
            key_sources: &self.key_sources,
            secrets: &secrets,
        };
        let result = compile(&namespace, &name, &policy.spec, &ctx);
        let generation = policy.metadata.generation.unwrap_or(0);
        let Some(state) = self.policies.get_mut(&id) else {
            return;
        };
        state.object = Some(policy.clone());
        state.secrets = referenced_secrets(&namespace, policy);
        state.selectors = referenced_selectors(&namespace, policy);
        state.config_maps = referenced_config_maps(&namespace, policy);
        match result {
            Ok(compiled) => {
                state.base = Some(Arc::new(compiled));
                state.generation = generation;
                self.settle(&id);
            }
            Err(error) => {
                tracing::warn!(policy = %id, generation, kept_last_good = state.compiled.is_some(),
                    error = %error, "JwtPolicy does not compile");
                state.base = None;
                state.error = Some(error);
            }
        }
    }

    /// What each policy's state is, for status and for this replica's load report.
    pub fn view(&self, conflicts: &[Conflict]) -> IndexView {
        let policies = self
            .policies
            .iter()
            .map(|(id, state)| {
                let conflict = conflicts.iter().find(|c| c.policy == *id).cloned();
                let (namespace, name) = id.split_once('/').unwrap_or(("default", id));
                PolicyView {
                    id: id.clone(),
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    uid: state.uid.clone(),
                    created: state.created.clone(),
                    generation: state.generation,
                    serving_generation: state
                        .compiled_generation
                        .filter(|_| conflict.as_ref().is_none_or(Conflict::keeps_serving)),
                    error: state.error.clone(),
                    conflict,
                    policy: state.compiled.clone(),
                    status: state.status.clone(),
                    hosts: match self.attachments.get(id) {
                        Some(attachment) => attachment
                            .hosts()
                            .iter()
                            .map(HostPattern::to_string)
                            .collect(),
                        None => state
                            .object
                            .as_ref()
                            .map(|o| o.spec.match_.hosts.clone())
                            .unwrap_or_default(),
                    },
                    ancestors: self
                        .attachments
                        .get(id)
                        .map(|a| a.ancestors.clone())
                        .unwrap_or_default(),
                    targeted: state
                        .object
                        .as_ref()
                        .is_some_and(|o| !o.spec.target_refs.is_empty()),
                }
            })
            .collect();
        IndexView {
            policies,
            delegations: self.settings.delegations.clone(),
        }
    }

    /// The snapshot of every serving policy, oldest first (the older keeps a contested route);
    /// a policy that does not compile and has no last good version holds its hosts all the same.
    pub fn snapshot(&self) -> (Snapshot, Vec<Conflict>) {
        let mut claimants: Vec<(&str, &Arc<str>, Claimant)> = self
            .policies
            .iter()
            .filter_map(|(id, s)| {
                let claimant = match (&s.compiled, &s.object) {
                    (Some(policy), _) => Claimant::Serving(policy.clone()),
                    (None, Some(object)) if !object.spec.target_refs.is_empty() => {
                        Claimant::Failing {
                            id: id.clone(),
                            hosts: self
                                .attachments
                                .get(id)
                                .map(Attachment::hosts)
                                .unwrap_or_default(),
                        }
                    }
                    (None, Some(object)) => {
                        Claimant::failing(id.clone(), &object.spec.match_.hosts)
                    }
                    (None, None) => return None,
                };
                Some((s.created.as_str(), id, claimant))
            })
            .collect();
        claimants.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        Snapshot::build_claimants(
            claimants.into_iter().map(|(_, _, c)| c).collect(),
            self.settings.clone(),
        )
    }
}

fn empty_state(generation: i64, created: &str) -> PolicyState {
    PolicyState {
        generation,
        created: created.to_string(),
        compiled: None,
        compiled_generation: None,
        error: None,
        secrets: BTreeSet::new(),
        selectors: BTreeSet::new(),
        config_maps: BTreeSet::new(),
        object: None,
        status: None,
        uid: None,
        base: None,
    }
}

fn object_id(object: &DynamicObject) -> Arc<str> {
    let namespace = object.metadata.namespace.as_deref().unwrap_or("default");
    let name = object.metadata.name.as_deref().unwrap_or("");
    format!("{namespace}/{name}").into()
}

fn object_key(object: &DynamicObject) -> ObjectKey {
    (
        object
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        object.metadata.name.clone().unwrap_or_default(),
    )
}

fn stored_key<K: kube::Resource>(object: &K) -> SecretKey {
    (
        object.namespace().unwrap_or_else(|| "default".into()),
        object.name_any(),
    )
}

/// One event of a name-selected watch (Secret or ConfigMap): the object's data once known
/// (`Some(None)`: absent), `None` while a relist is still buffered.
fn stored_event<K: kube::Resource>(
    buffers: &mut HashMap<SecretKey, Vec<K>>,
    key: &SecretKey,
    event: watcher::Event<K>,
    data: fn(&K) -> BTreeMap<String, Vec<u8>>,
) -> Option<SecretData> {
    match event {
        watcher::Event::Init => {
            buffers.insert(key.clone(), Vec::new());
            None
        }
        watcher::Event::InitApply(object) => {
            buffers.entry(key.clone()).or_default().push(object);
            None
        }
        watcher::Event::InitDone => {
            let listed = buffers.remove(key).unwrap_or_default();
            Some(listed.iter().find(|o| stored_key(*o) == *key).map(data))
        }
        watcher::Event::Apply(object) => Some(Some(data(&object))),
        watcher::Event::Delete(_) => Some(None),
    }
}

/// Runs the index: applies changes as they arrive, coalescing whatever is already queued into
/// one publish, and publishes a new snapshot whenever the serving set may have changed (once both
/// watches have listed everything). Returns the index when the channel closes.
///
/// `after_batch` runs after each batch of changes (the watch layer starts and stops Secret
/// watches there).
pub fn spawn_index(
    mut index: PolicyIndex,
    shared: Arc<SharedSnapshot>,
    mut changes: mpsc::Receiver<Change>,
    mut after_batch: impl FnMut(&mut PolicyIndex) + Send + 'static,
) -> (
    tokio::task::JoinHandle<PolicyIndex>,
    watch::Receiver<Arc<IndexView>>,
) {
    let (views, view) = watch::channel(Arc::new(IndexView::default()));
    let task = tokio::spawn(async move {
        let mut published = false;
        while let Some(change) = changes.recv().await {
            let mut changed = index.apply(change);
            while let Ok(next) = changes.try_recv() {
                changed |= index.apply(next);
            }
            after_batch(&mut index);
            if !index.synced() {
                continue;
            }
            let (snapshot, conflicts) = index.snapshot();
            // Every batch refreshes the view (statuses arrive as updates that change nothing
            // else); only a real change publishes a new snapshot.
            views.send_replace(Arc::new(index.view(&conflicts)));
            if changed || !published {
                published = true;
                index.mark_published();
                for conflict in &conflicts {
                    if conflict.keeps_serving() {
                        tracing::error!(policy = %conflict.policy, holder = %conflict.holder, "JwtPolicy's resource metadata not served: {conflict}");
                    } else {
                        tracing::error!(policy = %conflict.policy, holder = %conflict.holder, "JwtPolicy not served: {conflict}");
                    }
                }
                let generation = shared.publish(snapshot);
                tracing::debug!(
                    generation,
                    policies = index.policies.len(),
                    "published a snapshot"
                );
            }
        }
        index
    });
    (task, view)
}

#[cfg(test)]
mod tests;

//! The index of watched objects: `JwtPolicy` → compiled `Policy` (or why not), the Secrets they
//! reference, and the snapshot built from them. One task owns it; nothing else mutates it.
//!
//! - `Init … InitApply … InitDone` (a relist) replaces the whole set at once; until `InitDone`
//!   the previous set keeps serving, so a relist never publishes half a list.
//! - A policy that fails to compile keeps its last good version (reported in its state).
//! - An object that does not even parse as a `JwtPolicy` is recorded as invalid and skipped; it
//!   never stops the watch.
//! - A Secret change recompiles exactly the policies that reference it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt as _;
use kube::api::DynamicObject;
use kube::runtime::watcher;
use tokio::sync::mpsc;

use crate::jwks::KeySources;
use crate::policy::spec::{JwtPolicy, SecretSpec};
use crate::policy::{
    CompileContext, CompileError, Conflict, DefaultAction, Policy, Problem, ProblemKind,
    SecretSource, SharedSnapshot, Snapshot, compile,
};

/// A watch event for one of the two kinds the index follows.
#[derive(Debug)]
pub enum Change {
    /// `JwtPolicy` objects, untyped so one malformed object cannot break the stream.
    Policy(watcher::Event<DynamicObject>),
    Secret(watcher::Event<Secret>),
}

/// `namespace/name` of a Secret.
pub type SecretKey = (String, String);

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
    /// The object as last seen, to recompile when a Secret changes.
    object: Option<Arc<JwtPolicy>>,
}

impl PolicyState {
    /// Whether the current generation compiled and is the one serving.
    pub fn current(&self) -> bool {
        self.error.is_none() && self.compiled_generation == Some(self.generation)
    }
}

/// Secret values for compilation, from the watched Secrets.
struct SecretCache<'a> {
    secrets: &'a HashMap<SecretKey, BTreeMap<String, Vec<u8>>>,
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
            .ok_or_else(|| format!("Secret {namespace}/{} not found", reference.name))?;
        data.get(&reference.key).cloned().ok_or_else(|| {
            format!(
                "Secret {namespace}/{} has no key {:?}",
                reference.name, reference.key
            )
        })
    }
}

fn referenced_secrets(namespace: &str, policy: &JwtPolicy) -> BTreeSet<SecretKey> {
    policy
        .spec
        .issuers
        .iter()
        .filter_map(|i| i.shared_secret.as_ref()?.secret_ref.as_ref())
        .map(|r| (namespace.to_string(), r.name.clone()))
        .collect()
}

fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
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
    default_action: DefaultAction,
    policies: BTreeMap<Arc<str>, PolicyState>,
    secrets: HashMap<SecretKey, BTreeMap<String, Vec<u8>>>,
    policy_buffer: Option<Vec<DynamicObject>>,
    secret_buffer: Option<Vec<Secret>>,
    policies_synced: bool,
    secrets_synced: bool,
}

impl PolicyIndex {
    /// `watch_secrets: false` when no Secret watch runs (then Secrets count as synced).
    pub fn new(
        key_sources: Arc<KeySources>,
        default_action: DefaultAction,
        watch_secrets: bool,
    ) -> Self {
        PolicyIndex {
            key_sources,
            default_action,
            policies: BTreeMap::new(),
            secrets: HashMap::new(),
            policy_buffer: None,
            secret_buffer: None,
            policies_synced: false,
            secrets_synced: !watch_secrets,
        }
    }

    /// Whether both watches completed their first list (before that, nothing is published).
    pub fn synced(&self) -> bool {
        self.policies_synced && self.secrets_synced
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

    /// Applies one event. Returns whether the set of serving policies may have changed.
    pub fn apply(&mut self, change: Change) -> bool {
        match change {
            Change::Policy(event) => self.apply_policy_event(event),
            Change::Secret(event) => self.apply_secret_event(event),
        }
    }

    fn apply_policy_event(&mut self, event: watcher::Event<DynamicObject>) -> bool {
        match event {
            watcher::Event::Init => {
                self.policy_buffer = Some(Vec::new());
                false
            }
            watcher::Event::InitApply(object) => {
                self.policy_buffer.get_or_insert_with(Vec::new).push(object);
                false
            }
            watcher::Event::InitDone => {
                let objects = self.policy_buffer.take().unwrap_or_default();
                let ids: BTreeSet<Arc<str>> = objects.iter().map(object_id).collect();
                self.policies.retain(|id, _| ids.contains(id));
                for object in objects {
                    self.upsert(object);
                }
                self.policies_synced = true;
                true
            }
            watcher::Event::Apply(object) => {
                self.upsert(object);
                true
            }
            watcher::Event::Delete(object) => self.policies.remove(&object_id(&object)).is_some(),
        }
    }

    fn apply_secret_event(&mut self, event: watcher::Event<Secret>) -> bool {
        match event {
            watcher::Event::Init => {
                self.secret_buffer = Some(Vec::new());
                false
            }
            watcher::Event::InitApply(secret) => {
                self.secret_buffer.get_or_insert_with(Vec::new).push(secret);
                false
            }
            watcher::Event::InitDone => {
                let secrets = self.secret_buffer.take().unwrap_or_default();
                let before: BTreeSet<SecretKey> = self.secrets.keys().cloned().collect();
                self.secrets = secrets
                    .iter()
                    .map(|s| (secret_key(s), secret_data(s)))
                    .collect();
                let changed: BTreeSet<SecretKey> = before
                    .union(&self.secrets.keys().cloned().collect())
                    .cloned()
                    .collect();
                self.secrets_synced = true;
                self.recompile_for(&changed);
                true
            }
            watcher::Event::Apply(secret) => {
                let key = secret_key(&secret);
                let data = secret_data(&secret);
                if self.secrets.get(&key) == Some(&data) {
                    return false;
                }
                self.secrets.insert(key.clone(), data);
                self.recompile_for(&BTreeSet::from([key]))
            }
            watcher::Event::Delete(secret) => {
                let key = secret_key(&secret);
                self.secrets.remove(&key);
                self.recompile_for(&BTreeSet::from([key]))
            }
        }
    }

    /// Recompiles the policies that reference any of `secrets`.
    fn recompile_for(&mut self, secrets: &BTreeSet<SecretKey>) -> bool {
        let affected: Vec<Arc<JwtPolicy>> = self
            .policies
            .values()
            .filter(|p| p.secrets.iter().any(|s| secrets.contains(s)))
            .filter_map(|p| p.object.clone())
            .collect();
        for policy in &affected {
            self.compile_into_state(policy);
        }
        !affected.is_empty()
    }

    fn upsert(&mut self, object: DynamicObject) {
        let id = object_id(&object);
        let generation = object.metadata.generation.unwrap_or(0);
        let created = object
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        match object.clone().try_parse::<JwtPolicy>() {
            Ok(policy) => {
                let state = self
                    .policies
                    .entry(id.clone())
                    .or_insert_with(|| empty_state(generation, &created));
                state.generation = generation;
                state.created = created;
                self.compile_into_state(&Arc::new(policy));
            }
            Err(e) => {
                tracing::warn!(policy = %id, error = %e, "skipping a JwtPolicy that does not parse");
                let state = self
                    .policies
                    .entry(id.clone())
                    .or_insert_with(|| empty_state(generation, &created));
                state.generation = generation;
                state.created = created;
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
    }

    fn compile_into_state(&mut self, policy: &Arc<JwtPolicy>) {
        let namespace = policy.namespace().unwrap_or_else(|| "default".into());
        let name = policy.name_any();
        let id: Arc<str> = format!("{namespace}/{name}").into();
        let secrets = SecretCache {
            secrets: &self.secrets,
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
        match result {
            Ok(compiled) => {
                state.compiled = Some(Arc::new(compiled));
                state.compiled_generation = Some(generation);
                state.error = None;
            }
            Err(error) => {
                tracing::warn!(policy = %id, generation, kept_last_good = state.compiled.is_some(),
                    error = %error, "JwtPolicy does not compile");
                state.error = Some(error);
            }
        }
    }

    /// The snapshot of every serving policy, oldest first (the older keeps a contested route).
    pub fn snapshot(&self) -> (Snapshot, Vec<Conflict>) {
        let mut serving: Vec<(&str, &Arc<str>, Arc<Policy>)> = self
            .policies
            .iter()
            .filter_map(|(id, s)| s.compiled.clone().map(|p| (s.created.as_str(), id, p)))
            .collect();
        serving.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        Snapshot::build(
            serving.into_iter().map(|(_, _, p)| p).collect(),
            self.default_action,
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
        object: None,
    }
}

fn object_id(object: &DynamicObject) -> Arc<str> {
    let namespace = object.metadata.namespace.as_deref().unwrap_or("default");
    let name = object.metadata.name.as_deref().unwrap_or("");
    format!("{namespace}/{name}").into()
}

fn secret_key(secret: &Secret) -> SecretKey {
    (
        secret.namespace().unwrap_or_else(|| "default".into()),
        secret.name_any(),
    )
}

/// Runs the index: applies changes as they arrive, coalescing whatever is already queued into
/// one publish, and publishes a new snapshot whenever the serving set may have changed (once both
/// watches have listed everything). Returns the index when the channel closes.
pub fn spawn_index(
    mut index: PolicyIndex,
    shared: Arc<SharedSnapshot>,
    mut changes: mpsc::Receiver<Change>,
) -> tokio::task::JoinHandle<PolicyIndex> {
    tokio::spawn(async move {
        while let Some(change) = changes.recv().await {
            let mut changed = index.apply(change);
            while let Ok(next) = changes.try_recv() {
                changed |= index.apply(next);
            }
            if changed && index.synced() {
                let (snapshot, conflicts) = index.snapshot();
                for conflict in &conflicts {
                    tracing::error!(policy = %conflict.policy, holder = %conflict.holder, "JwtPolicy not served: {conflict}");
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
    })
}

#[cfg(test)]
mod tests;

//! The immutable index of compiled policies that every check reads, and the shared handle
//! through which a new one is published atomically.
//!
//! Selection: host first (exact, then wildcards from the longest suffix, then `*`), then the
//! longest matching path prefix with a matching method. A host level with no matching path falls
//! through to the next, less specific host level, so a wildcard policy still protects paths an
//! exact-host policy does not claim.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::compile::Policy;
use super::route::{HostPattern, Methods, PathPrefix};
use crate::verified::TokenCache;

/// What happens to a request no policy matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DefaultAction {
    /// 403 `no_policy`.
    #[default]
    Deny,
    /// Allowed without a token check.
    Allow,
}

#[derive(Clone, Debug)]
struct Route {
    prefix: PathPrefix,
    methods: Methods,
    policy: Arc<Policy>,
}

/// A host+path claimed by two policies; the newer one is left out of the snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The policy left out.
    pub policy: Arc<str>,
    /// The older policy that keeps the route.
    pub holder: Arc<str>,
    pub host: String,
    pub path: String,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "host {} path {} is already claimed by {}; give this policy other hosts/paths/methods, or select it explicitly with the route's tollgate.dev/policy context extension",
            self.host, self.path, self.holder
        )
    }
}

/// An immutable view of every loaded policy.
#[derive(Debug, Default)]
pub struct Snapshot {
    policies: HashMap<Arc<str>, Arc<Policy>>,
    exact: HashMap<String, Vec<Route>>,
    wildcard: HashMap<String, Vec<Route>>,
    any: Vec<Route>,
    /// Increases with every published snapshot.
    pub generation: u64,
    pub default_action: DefaultAction,
    /// The verified-token cache of the serving process (none in offline checks).
    pub token_cache: Option<Arc<TokenCache>>,
}

impl Snapshot {
    /// Indexes `policies`, given oldest first: on a host+path+method collision the older policy
    /// keeps the route and the newer one is left out whole (reported as a [`Conflict`]).
    pub fn build(
        policies: Vec<Arc<Policy>>,
        default_action: DefaultAction,
    ) -> (Snapshot, Vec<Conflict>) {
        let mut snapshot = Snapshot {
            default_action,
            ..Snapshot::default()
        };
        let mut conflicts = Vec::new();
        for policy in policies {
            let root = [PathPrefix::root()];
            let prefixes: &[PathPrefix] = if policy.paths.is_empty() {
                &root
            } else {
                &policy.paths
            };
            let clash = policy.hosts.iter().find_map(|host| {
                let bucket = snapshot.bucket(host)?;
                prefixes.iter().find_map(|prefix| {
                    bucket
                        .iter()
                        .find(|r| r.prefix == *prefix && r.methods.overlaps(&policy.methods))
                        .map(|r| Conflict {
                            policy: policy.id.clone(),
                            holder: r.policy.id.clone(),
                            host: host.to_string(),
                            path: prefix.to_string(),
                        })
                })
            });
            if let Some(conflict) = clash {
                conflicts.push(conflict);
                continue;
            }
            for host in &policy.hosts {
                let bucket = match host {
                    HostPattern::Exact(h) => snapshot.exact.entry(h.clone()).or_default(),
                    HostPattern::Wildcard(s) => snapshot.wildcard.entry(s.clone()).or_default(),
                    HostPattern::Any => &mut snapshot.any,
                };
                for prefix in prefixes {
                    bucket.push(Route {
                        prefix: prefix.clone(),
                        methods: policy.methods.clone(),
                        policy: policy.clone(),
                    });
                }
            }
            snapshot.policies.insert(policy.id.clone(), policy);
        }
        for bucket in snapshot
            .exact
            .values_mut()
            .chain(snapshot.wildcard.values_mut())
            .chain([&mut snapshot.any])
        {
            // Longest prefix first; routes naming methods before catch-all ones of equal length.
            bucket.sort_by(|a, b| {
                b.prefix
                    .len()
                    .cmp(&a.prefix.len())
                    .then(a.methods.is_all().cmp(&b.methods.is_all()))
            });
        }
        (snapshot, conflicts)
    }

    fn bucket(&self, host: &HostPattern) -> Option<&Vec<Route>> {
        match host {
            HostPattern::Exact(h) => self.exact.get(h),
            HostPattern::Wildcard(s) => self.wildcard.get(s),
            HostPattern::Any => Some(&self.any),
        }
    }

    /// The policy judging a request. `host` must be normalized (lower case, no port) and
    /// `path` normalized (see `route::normalize_path`).
    pub fn select(&self, host: &str, path: &str, method: &str) -> Option<&Arc<Policy>> {
        fn pick<'s>(routes: &'s [Route], path: &str, method: &str) -> Option<&'s Arc<Policy>> {
            routes
                .iter()
                .find(|r| r.prefix.matches(path) && r.methods.matches(method))
                .map(|r| &r.policy)
        }
        if let Some(found) = self
            .exact
            .get(host)
            .and_then(|routes| pick(routes, path, method))
        {
            return Some(found);
        }
        if !self.wildcard.is_empty() {
            let mut rest = host;
            while let Some((_, suffix)) = rest.split_once('.') {
                if let Some(found) = self
                    .wildcard
                    .get(suffix)
                    .and_then(|routes| pick(routes, path, method))
                {
                    return Some(found);
                }
                rest = suffix;
            }
        }
        pick(&self.any, path, method)
    }

    /// A policy by `namespace/name` (explicit selection by the route).
    pub fn policy(&self, id: &str) -> Option<&Arc<Policy>> {
        self.policies.get(id)
    }

    pub fn policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.policies.values()
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}

/// The current snapshot, swapped atomically, plus readiness and a change feed.
pub struct SharedSnapshot {
    current: ArcSwap<Snapshot>,
    ready: AtomicBool,
    changes: watch::Sender<u64>,
    token_cache: Option<Arc<TokenCache>>,
}

impl SharedSnapshot {
    /// An empty, not-ready snapshot, without a verified-token cache.
    pub fn new(default_action: DefaultAction) -> Arc<Self> {
        Self::with_cache(default_action, None)
    }

    /// An empty, not-ready snapshot; every published snapshot uses `token_cache`.
    pub fn with_cache(
        default_action: DefaultAction,
        token_cache: Option<Arc<TokenCache>>,
    ) -> Arc<Self> {
        Arc::new(SharedSnapshot {
            current: ArcSwap::from_pointee(Snapshot {
                default_action,
                token_cache: token_cache.clone(),
                ..Snapshot::default()
            }),
            ready: AtomicBool::new(false),
            changes: watch::channel(0).0,
            token_cache,
        })
    }

    pub fn token_cache(&self) -> Option<&Arc<TokenCache>> {
        self.token_cache.as_ref()
    }

    /// The snapshot to judge one request with (lock-free).
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The snapshot as an owned `Arc`, for holding across `.await`.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the snapshot; its generation is set to one more than the current one.
    /// The entries of the policies it no longer holds leave the verified-token cache.
    pub fn publish(&self, mut snapshot: Snapshot) -> u64 {
        let previous = self.current.load_full();
        let generation = previous.generation + 1;
        snapshot.generation = generation;
        snapshot.token_cache = self.token_cache.clone();
        let live: HashSet<u64> = snapshot.policies.values().map(|p| p.instance).collect();
        self.current.store(Arc::new(snapshot));
        if let Some(cache) = &self.token_cache
            && previous
                .policies
                .values()
                .any(|p| !live.contains(&p.instance))
        {
            cache.retain_policies(|instance| live.contains(&instance));
        }
        self.changes.send_replace(generation);
        generation
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Notified with the generation of every published snapshot.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests;

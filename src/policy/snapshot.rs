//! The immutable index of compiled policies that every check reads, and the shared handle
//! through which a new one is published atomically.
//!
//! Selection: first the namespace that owns the host (see [`super::owners`]); then, among that
//! namespace's policies only, host patterns (exact, then wildcards from the longest suffix,
//! then `*`) and the longest matching path prefix with a matching method. A host level with no
//! matching path falls through to the next, less specific level of the same namespace, so a
//! team's wildcard policy still protects paths its exact-host policy does not claim — and
//! another namespace's never does.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::compile::Policy;
use super::gateway::{PathMatch, RouteId, RouteOrder};
use super::owners::{self, HostDelegations};
use super::route::{HostPattern, Methods, PathPrefix, PathReading};
use crate::dry_run::DryRunLedger;
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

/// What a snapshot is built with besides the policies.
#[derive(Clone, Debug, Default)]
pub struct SnapshotSettings {
    pub default_action: DefaultAction,
    /// Hosts a cluster operator gave to namespaces (`--host-delegations`).
    pub delegations: Arc<HostDelegations>,
}

impl From<DefaultAction> for SnapshotSettings {
    /// Without delegations: ownership by age alone.
    fn from(default_action: DefaultAction) -> Self {
        SnapshotSettings {
            default_action,
            delegations: HostDelegations::none(),
        }
    }
}

#[derive(Clone, Debug)]
struct Route {
    path: PathMatch,
    methods: Methods,
    /// `Exact` header matches of a route entry (lower-case name, value).
    headers: Vec<(String, String)>,
    /// `Exact` query parameter matches of a route entry.
    query: Vec<(String, String)>,
    /// The route rule a route entry comes from, and its precedence among equal matches.
    origin: Option<(RouteId, RouteOrder)>,
    /// The namespace whose host this is: the route's for a route entry (a Gateway's policy
    /// judges the routes of other namespaces on their hosts), else the policy's.
    namespace: Arc<str>,
    /// Another policy with the very same entry for the same route (a route attached to two
    /// listeners judged by different policies): which one the gateway used cannot be known.
    ambiguous_with: Option<Arc<str>>,
    policy: Arc<Policy>,
}

impl Route {
    fn matches(&self, path: &str, method: &str, ignore_case: bool, input: &MatchInput<'_>) -> bool {
        // A route entry compares the method as the gateway does: exactly.
        let method_matches = if self.origin.is_some() {
            self.methods.matches_exactly(method)
        } else {
            self.methods.matches(method)
        };
        self.path.matches(path, ignore_case)
            && method_matches
            && self
                .headers
                .iter()
                .all(|(n, v)| input.headers.iter().any(|(k, w)| k == n && w == v))
            && self
                .query
                .iter()
                .all(|(n, v)| input.query.iter().any(|(k, w)| k == n && w == v))
    }

    /// Whether two routes match exactly the same requests.
    fn same_match(&self, other: &Route) -> bool {
        self.path == other.path
            && self.methods.overlaps(&other.methods)
            && self.headers == other.headers
            && self.query == other.query
    }
}

/// What selection needs of a request besides host, path and method: the values of the headers
/// and query parameters some route entry matches on, and the route the gateway names.
#[derive(Clone, Copy, Debug, Default)]
pub struct MatchInput<'a> {
    /// (lower-case name, value) of each header in [`Snapshot::matched_headers`] the request
    /// carries (each at most once: a repeated one is refused before selection).
    pub headers: &'a [(String, String)],
    /// (name, value) of each query parameter in [`Snapshot::matched_query`] the request carries.
    pub query: &'a [(String, String)],
    /// The HTTPRoute rule the gateway says the request is on (Envoy Gateway's route metadata).
    pub route: Option<&'a RouteName>,
}

/// The policy judging a request, as [`Snapshot::select_with`] finds it.
#[derive(Clone, Copy, Debug)]
pub struct Picked<'s> {
    pub policy: &'s Arc<Policy>,
    /// Another policy with the same entry for the same route: the request must be refused.
    pub ambiguous_with: Option<&'s Arc<str>>,
}

/// An HTTPRoute (and rule) as a gateway names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteName {
    pub namespace: String,
    pub name: String,
    /// The rule's name, if the gateway says.
    pub section: Option<String>,
}

/// Why a policy was left out of the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictKind {
    /// An older policy of the same namespace holds the same host, path and method.
    Route,
    /// The host (or a wildcard overlapping it) belongs to another namespace.
    Host,
    /// The host belongs to another namespace through a policy that does not compile: it holds
    /// the host (denied) until it compiles.
    HostOfFailing,
    /// A cluster operator delegated the host to another namespace.
    Delegated,
    /// The host is delegated to nobody, and the operator's delegations allow no undelegated
    /// claim of its kind (`undelegatedHosts`).
    NotDelegated,
    /// Another policy declares the same protected resource metadata URL with another
    /// document. Both policies keep serving; the metadata URL is refused (`policy_conflict`).
    Resource,
}

/// A policy left out of the snapshot because another one holds what it claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The policy left out.
    pub policy: Arc<str>,
    /// The older policy that keeps the route or owns the host; for a delegation, the
    /// namespace it is delegated to.
    pub holder: Arc<str>,
    pub host: String,
    pub path: String,
    pub kind: ConflictKind,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            ConflictKind::Route => write!(
                f,
                "host {} path {} is already claimed by {}; give this policy other hosts/paths/methods, or select it explicitly with the route's tollgate.dev/policy context extension",
                self.host, self.path, self.holder
            ),
            ConflictKind::Host => {
                let namespace = self
                    .holder
                    .split_once('/')
                    .map_or(&*self.holder, |(ns, _)| ns);
                write!(
                    f,
                    "host {} belongs to namespace {namespace} ({} is the oldest policy naming it); a host belongs to one namespace: choose other hosts, or ask a cluster operator to delegate it (--host-delegations)",
                    self.host, self.holder
                )
            }
            ConflictKind::HostOfFailing => {
                let namespace = self
                    .holder
                    .split_once('/')
                    .map_or(&*self.holder, |(ns, _)| ns);
                write!(
                    f,
                    "host {} belongs to namespace {namespace}: {} is the oldest policy naming it, and it does not compile, so it holds the host (its requests are denied) until it does; fix it, or ask a cluster operator to delegate the host (--host-delegations)",
                    self.host, self.holder
                )
            }
            ConflictKind::Delegated => write!(
                f,
                "host {} is delegated to namespace {} by the cluster operator (--host-delegations); a host belongs to one namespace",
                self.host, self.holder
            ),
            ConflictKind::NotDelegated => write!(
                f,
                "host {} is not delegated to namespace {}, and the cluster operator's host delegations (undelegatedHosts) allow no such claim without one",
                self.host, self.holder
            ),
            ConflictKind::Resource => write!(
                f,
                "policy {} declares the protected resource metadata at https://{}{} too, with another document: it is refused (403 policy_conflict) until both policies declare the same spec.resourceMetadata or different resources",
                self.holder, self.host, self.path
            ),
        }
    }
}

impl Conflict {
    /// Whether the policy still serves its requests: a conflict over its resource metadata
    /// refuses only that document.
    pub fn keeps_serving(&self) -> bool {
        self.kind == ConflictKind::Resource
    }
}

/// Who answers a protected resource metadata URL (see [`Snapshot::resource`]).
#[derive(Clone, Debug)]
pub enum ResourceEntry {
    /// The policy declaring it (the oldest, when several declare the same document).
    Served(Arc<Policy>),
    /// Policies declaring it with different documents, oldest first: refused.
    Conflicted(Vec<Arc<str>>),
}

/// An immutable view of every loaded policy.
#[derive(Debug, Default)]
pub struct Snapshot {
    policies: HashMap<Arc<str>, Arc<Policy>>,
    exact: HashMap<String, Vec<Route>>,
    wildcard: HashMap<String, Vec<Route>>,
    any: Vec<Route>,
    /// The namespace owning each exact host and wildcard (claims and delegations).
    owners_exact: HashMap<String, Arc<str>>,
    owners_wildcard: HashMap<String, Arc<str>>,
    /// Whether some path prefix (of a policy or a rule) has upper-case letters.
    upper_prefixes: bool,
    /// Header names (lower case) and query parameter names some route entry matches on.
    matched_headers: Vec<String>,
    matched_query: Vec<String>,
    /// `namespace/name` of every HTTPRoute some policy's entries come from.
    routed: HashSet<String>,
    /// Every path reading some policy accepts.
    readings: PathReading,
    /// Increases with every published snapshot.
    pub generation: u64,
    pub default_action: DefaultAction,
    /// The verified-token cache of the serving process (none in offline checks).
    pub token_cache: Option<Arc<TokenCache>>,
    /// Protected resource metadata documents: host → well-known path → who answers.
    resources: HashMap<String, HashMap<String, ResourceEntry>>,
}

/// A policy as the snapshot sees it: serving (compiled), or failing to compile with no last
/// good version. A failing policy serves nothing, but it still holds the hosts it names, so a
/// broken policy never hands its hosts to another namespace's wildcard or `*` (its requests are
/// denied, `no_policy`, until it compiles), and every replica agrees whatever compiled where.
#[derive(Clone, Debug)]
pub enum Claimant {
    Serving(Arc<Policy>),
    Failing {
        /// `namespace/name`.
        id: Arc<str>,
        /// The hosts its spec names (those that parse); `*` when it names none.
        hosts: Vec<HostPattern>,
    },
}

impl Claimant {
    /// A failing policy's claim, from the host names of its spec.
    pub fn failing(id: Arc<str>, hosts: &[String]) -> Claimant {
        let mut parsed: Vec<HostPattern> = hosts
            .iter()
            .filter_map(|h| HostPattern::parse(h).ok())
            .collect();
        if hosts.is_empty() {
            parsed.push(HostPattern::Any);
        }
        Claimant::Failing { id, hosts: parsed }
    }
}

/// Who holds what while a snapshot is built.
#[derive(Default)]
struct Holdings {
    claims: owners::Claims,
    any_holder: Option<(Arc<str>, Arc<str>)>,
}

impl Holdings {
    /// The first host of `hosts` that another namespace owns (or that is delegated away).
    fn clash(
        &self,
        id: &Arc<str>,
        namespace: &Arc<str>,
        hosts: &[HostPattern],
        delegations: &HostDelegations,
    ) -> Option<Conflict> {
        let conflict = |host: &HostPattern, holder: &Arc<str>, kind| Conflict {
            policy: id.clone(),
            holder: holder.clone(),
            host: host.to_string(),
            path: String::new(),
            kind,
        };
        hosts.iter().find_map(|host| {
            if *host == HostPattern::Any {
                return match delegations.any() {
                    Some(owner) if owner != namespace => {
                        Some(conflict(host, owner, ConflictKind::Delegated))
                    }
                    Some(_) => None,
                    None if !delegations.claimable_undelegated(host) => {
                        Some(conflict(host, namespace, ConflictKind::NotDelegated))
                    }
                    None => self
                        .any_holder
                        .as_ref()
                        .filter(|(ns, _)| ns != namespace)
                        .map(|(_, holder)| conflict(host, holder, ConflictKind::Host)),
                };
            }
            let delegated = delegations.covering(host);
            if let Some((_, owner)) = &delegated
                && *owner != namespace
            {
                return Some(conflict(host, owner, ConflictKind::Delegated));
            }
            if delegated.is_some() {
                return None;
            }
            if !delegations.claimable_undelegated(host) {
                return Some(conflict(host, namespace, ConflictKind::NotDelegated));
            }
            self.claims
                .overlapping(host)
                .into_iter()
                .find(|(other, ns, _)| {
                    *ns != namespace
                        && delegations
                            .covering(other)
                            .is_none_or(|(_, owner)| owner != *ns)
                })
                .map(|(_, _, holder)| conflict(host, holder, ConflictKind::Host))
        })
    }

    /// Records `hosts` as held by `namespace` (through `id`).
    fn hold(
        &mut self,
        snapshot: &mut Snapshot,
        id: &Arc<str>,
        namespace: &Arc<str>,
        hosts: &[HostPattern],
        delegations: &HostDelegations,
    ) {
        for host in hosts {
            match host {
                HostPattern::Any => {
                    self.any_holder
                        .get_or_insert_with(|| (namespace.clone(), id.clone()));
                }
                _ => {
                    self.claims.insert(host, namespace, id);
                    if delegations.covering(host).is_none() {
                        snapshot.set_owner(host, namespace);
                    }
                }
            }
        }
    }
}

/// A policy's routes: its route entries when it has targets, else `match.hosts` × paths with
/// its methods.
fn routes_of(policy: &Arc<Policy>) -> Vec<(HostPattern, Route)> {
    if policy.is_targeted() {
        return policy
            .entries
            .iter()
            .map(|e| {
                (
                    e.host.clone(),
                    Route {
                        path: e.path.clone(),
                        methods: e.methods.clone(),
                        headers: e.headers.clone(),
                        query: e.query.clone(),
                        origin: Some((e.route.clone(), e.order.clone())),
                        namespace: e.route.namespace.clone(),
                        ambiguous_with: None,
                        policy: policy.clone(),
                    },
                )
            })
            .collect();
    }
    let root = [PathPrefix::root()];
    let prefixes: &[PathPrefix] = if policy.paths.is_empty() {
        &root
    } else {
        &policy.paths
    };
    let namespace: Arc<str> = policy.namespace().into();
    let namespace = &namespace;
    policy
        .hosts
        .iter()
        .flat_map(|host| {
            prefixes.iter().map(move |prefix| {
                (
                    host.clone(),
                    Route {
                        path: PathMatch::Prefix(prefix.clone()),
                        methods: policy.methods.clone(),
                        headers: Vec::new(),
                        query: Vec::new(),
                        origin: None,
                        namespace: namespace.clone(),
                        ambiguous_with: None,
                        policy: policy.clone(),
                    },
                )
            })
        })
        .collect()
}

impl Snapshot {
    /// Indexes `policies`, given oldest first, with the operator's host delegations. A policy
    /// naming a host another namespace owns, or a host+path+method an older policy of its
    /// namespace holds, is left out whole (reported as a [`Conflict`]).
    pub fn build(
        policies: Vec<Arc<Policy>>,
        settings: impl Into<SnapshotSettings>,
    ) -> (Snapshot, Vec<Conflict>) {
        Self::build_claimants(
            policies.into_iter().map(Claimant::Serving).collect(),
            settings,
        )
    }

    /// [`Self::build`] with the policies that fail to compile (and have no last good version)
    /// among them, in age order: they hold their hosts, and serve nothing.
    pub fn build_claimants(
        claimants: Vec<Claimant>,
        settings: impl Into<SnapshotSettings>,
    ) -> (Snapshot, Vec<Conflict>) {
        let settings = settings.into();
        let delegations = &*settings.delegations;
        let mut snapshot = Snapshot {
            default_action: settings.default_action,
            ..Snapshot::default()
        };
        for (pattern, namespace) in delegations.entries() {
            snapshot.set_owner(&pattern, namespace);
        }
        let mut holdings = Holdings::default();
        let mut conflicts = Vec::new();
        let mut failing: HashSet<Arc<str>> = HashSet::new();
        let mut declared: Vec<Arc<Policy>> = Vec::new();
        for claimant in claimants {
            let policy = match claimant {
                Claimant::Failing { id, hosts } => {
                    failing.insert(id.clone());
                    let namespace: Arc<str> = id.split_once('/').map_or(&*id, |(ns, _)| ns).into();
                    if holdings
                        .clash(&id, &namespace, &hosts, delegations)
                        .is_none()
                    {
                        holdings.hold(&mut snapshot, &id, &namespace, &hosts, delegations);
                    }
                    continue;
                }
                Claimant::Serving(policy) => policy,
            };
            let routes = routes_of(&policy);
            // The hosts it claims, per namespace: route entries claim for their route's.
            let mut claims: Vec<(Arc<str>, Vec<HostPattern>)> = Vec::new();
            if policy.is_targeted() {
                for (host, route) in &routes {
                    match claims.iter_mut().find(|(ns, _)| *ns == route.namespace) {
                        Some((_, hosts)) if hosts.contains(host) => {}
                        Some((_, hosts)) => hosts.push(host.clone()),
                        None => claims.push((route.namespace.clone(), vec![host.clone()])),
                    }
                }
            } else {
                claims.push((policy.namespace().into(), policy.hosts.clone()));
            }
            // A declared resource claims its host for the policy's namespace: no other
            // namespace can name the authorization servers of a host it does not own.
            if let Some(resource) = &policy.resource {
                let host = HostPattern::Exact(resource.host.clone());
                let namespace: Arc<str> = policy.namespace().into();
                match claims.iter_mut().find(|(ns, _)| *ns == namespace) {
                    Some((_, hosts)) if hosts.contains(&host) => {}
                    Some((_, hosts)) => hosts.push(host),
                    None => claims.push((namespace, vec![host])),
                }
            }
            let host_clash = claims
                .iter()
                .find_map(|(ns, hosts)| holdings.clash(&policy.id, ns, hosts, delegations));
            let clash = host_clash.or_else(|| {
                routes.iter().find_map(|(host, route)| {
                    let bucket = snapshot.bucket(host)?;
                    bucket
                        .iter()
                        .find(|r| {
                            r.same_match(route) && (r.origin.is_none() || route.origin.is_none())
                        })
                        .map(|r| Conflict {
                            policy: policy.id.clone(),
                            holder: r.policy.id.clone(),
                            host: host.to_string(),
                            path: route.path.to_string(),
                            kind: ConflictKind::Route,
                        })
                })
            });
            if let Some(mut conflict) = clash {
                if conflict.kind == ConflictKind::Host && failing.contains(&conflict.holder) {
                    conflict.kind = ConflictKind::HostOfFailing;
                }
                conflicts.push(conflict);
                continue;
            }
            for (namespace, hosts) in &claims {
                holdings.hold(&mut snapshot, &policy.id, namespace, hosts, delegations);
            }
            for (host, route) in routes {
                snapshot.upper_prefixes |= route.path.has_upper();
                for (name, _) in &route.headers {
                    if !snapshot.matched_headers.contains(name) {
                        snapshot.matched_headers.push(name.clone());
                    }
                }
                for (name, _) in &route.query {
                    if !snapshot.matched_query.contains(name) {
                        snapshot.matched_query.push(name.clone());
                    }
                }
                if let Some((id, _)) = &route.origin {
                    snapshot
                        .routed
                        .insert(format!("{}/{}", id.namespace, id.name));
                }
                let bucket = match host {
                    HostPattern::Exact(h) => snapshot.exact.entry(h).or_default(),
                    HostPattern::Wildcard(s) => snapshot.wildcard.entry(s).or_default(),
                    HostPattern::Any => &mut snapshot.any,
                };
                bucket.push(route);
            }
            snapshot.upper_prefixes |= policy
                .rules
                .iter()
                .any(|r| r.paths.iter().any(PathPrefix::has_upper));
            snapshot.readings = snapshot.readings.union(policy.path_reading);
            if policy.resource.is_some() {
                declared.push(policy.clone());
            }
            snapshot.policies.insert(policy.id.clone(), policy);
        }
        conflicts.extend(snapshot.index_resources(declared));
        for bucket in snapshot
            .exact
            .values_mut()
            .chain(snapshot.wildcard.values_mut())
            .chain([&mut snapshot.any])
        {
            // Gateway API precedence: exact paths, then the longest prefix, then routes naming
            // a method, then more header matches, then more query matches; among route entries
            // that still tie, the older route (then namespace/name, rule and match order).
            bucket.sort_by(|a, b| {
                b.path
                    .is_exact()
                    .cmp(&a.path.is_exact())
                    .then(b.path.len().cmp(&a.path.len()))
                    .then(a.methods.is_all().cmp(&b.methods.is_all()))
                    .then(b.headers.len().cmp(&a.headers.len()))
                    .then(b.query.len().cmp(&a.query.len()))
                    .then_with(|| match (&a.origin, &b.origin) {
                        (Some((_, x)), Some((_, y))) => x.cmp(y),
                        _ => std::cmp::Ordering::Equal,
                    })
            });
        }
        snapshot.mark_ambiguous();
        (snapshot, conflicts)
    }

    /// Marks route entries that another policy has identically for the same route (a route
    /// attached to two listeners, each judged by its own policy, with hostnames in common): the
    /// gateway names the route, never the listener, so such a request is refused.
    fn mark_ambiguous(&mut self) {
        type Key = (
            RouteId,
            PathMatch,
            Methods,
            Vec<(String, String)>,
            Vec<(String, String)>,
        );
        for bucket in self
            .exact
            .values_mut()
            .chain(self.wildcard.values_mut())
            .chain([&mut self.any])
        {
            let mut first: HashMap<Key, Arc<str>> = HashMap::new();
            let mut clashing: HashMap<Key, Vec<Arc<str>>> = HashMap::new();
            for route in bucket.iter() {
                let Some((id, _)) = &route.origin else {
                    continue;
                };
                let key = (
                    id.clone(),
                    route.path.clone(),
                    route.methods.clone(),
                    route.headers.clone(),
                    route.query.clone(),
                );
                match first.get(&key) {
                    None => {
                        first.insert(key, route.policy.id.clone());
                    }
                    Some(holder) if *holder != route.policy.id => {
                        let list = clashing.entry(key).or_insert_with(|| vec![holder.clone()]);
                        if !list.contains(&route.policy.id) {
                            list.push(route.policy.id.clone());
                        }
                    }
                    Some(_) => {}
                }
            }
            if clashing.is_empty() {
                continue;
            }
            for route in bucket.iter_mut() {
                let Some((id, _)) = &route.origin else {
                    continue;
                };
                let key = (
                    id.clone(),
                    route.path.clone(),
                    route.methods.clone(),
                    route.headers.clone(),
                    route.query.clone(),
                );
                if let Some(list) = clashing.get(&key) {
                    route.ambiguous_with = list.iter().find(|p| **p != route.policy.id).cloned();
                }
            }
        }
    }

    /// Indexes the resource metadata of the served policies that declare a resource, oldest
    /// first. Policies declaring the same URL share it when their documents are equal;
    /// otherwise the URL is refused and each of them gets a [`ConflictKind::Resource`].
    fn index_resources(&mut self, declared: Vec<Arc<Policy>>) -> Vec<Conflict> {
        // (host, well-known path) and the policies declaring it, oldest first.
        type Group = ((String, String), Vec<Arc<Policy>>);
        let mut groups: Vec<Group> = Vec::new();
        for policy in declared {
            let Some(resource) = &policy.resource else {
                continue;
            };
            let key = (resource.host.clone(), resource.path.clone());
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, group)) => group.push(policy),
                None => groups.push((key, vec![policy])),
            }
        }
        let document = |p: &Arc<Policy>| p.resource.as_ref().map(|r| r.document.clone());
        let mut conflicts = Vec::new();
        for ((host, path), group) in groups {
            let first = document(&group[0]);
            let entry = if group.iter().all(|p| document(p) == first) {
                ResourceEntry::Served(group[0].clone())
            } else {
                for policy in &group {
                    let mine = document(policy);
                    let Some(holder) = group.iter().find(|other| document(other) != mine) else {
                        continue;
                    };
                    conflicts.push(Conflict {
                        policy: policy.id.clone(),
                        holder: holder.id.clone(),
                        host: host.clone(),
                        path: path.clone(),
                        kind: ConflictKind::Resource,
                    });
                }
                ResourceEntry::Conflicted(group.iter().map(|p| p.id.clone()).collect())
            };
            self.resources.entry(host).or_default().insert(path, entry);
        }
        conflicts
    }

    /// Who answers the protected resource metadata URL `path` (read, without the query) on
    /// `host` (normalized), if a policy declares one there.
    pub fn resource(&self, host: &str, path: &str) -> Option<&ResourceEntry> {
        if self.resources.is_empty() || !path.starts_with(super::compile::WELL_KNOWN) {
            return None;
        }
        self.resources.get(host)?.get(path)
    }

    fn set_owner(&mut self, pattern: &HostPattern, namespace: &Arc<str>) {
        match pattern {
            HostPattern::Exact(h) => {
                self.owners_exact
                    .entry(h.clone())
                    .or_insert_with(|| namespace.clone());
            }
            HostPattern::Wildcard(s) => {
                self.owners_wildcard
                    .entry(s.clone())
                    .or_insert_with(|| namespace.clone());
            }
            HostPattern::Any => {}
        }
    }

    fn bucket(&self, host: &HostPattern) -> Option<&Vec<Route>> {
        match host {
            HostPattern::Exact(h) => self.exact.get(h),
            HostPattern::Wildcard(s) => self.wildcard.get(s),
            HostPattern::Any => Some(&self.any),
        }
    }

    /// The namespace that owns a (normalized) request host: the most specific claim or
    /// delegation covering it. `None`: nobody owns it, and only `*` policies can judge it.
    pub fn owner(&self, host: &str) -> Option<&Arc<str>> {
        if let Some(owner) = self.owners_exact.get(host) {
            return Some(owner);
        }
        if !self.owners_wildcard.is_empty() {
            let mut rest = host;
            while let Some((_, suffix)) = rest.split_once('.') {
                if let Some(owner) = self.owners_wildcard.get(suffix) {
                    return Some(owner);
                }
                rest = suffix;
            }
        }
        None
    }

    /// Header names (lower case) some route entry matches on.
    pub fn matched_headers(&self) -> &[String] {
        &self.matched_headers
    }

    /// Query parameter names some route entry matches on.
    pub fn matched_query(&self) -> &[String] {
        &self.matched_query
    }

    /// Every path reading some loaded policy accepts.
    pub fn readings(&self) -> PathReading {
        self.readings
    }

    /// Whether some prefix has upper-case letters, so letter case can change a match.
    pub fn has_upper_prefixes(&self) -> bool {
        self.upper_prefixes
    }

    /// The policy judging a request. `host` must be normalized (lower case, no port) and
    /// `path` read by `route::read_path`. With `ignore_case`, prefixes match in any case.
    pub fn select<'s>(
        &'s self,
        host: &str,
        path: &str,
        method: &str,
        ignore_case: bool,
    ) -> Option<&'s Arc<Policy>> {
        self.select_with(host, path, method, ignore_case, &MatchInput::default())
            .map(|picked| picked.policy)
    }

    /// [`Self::select`] with the headers and query parameters route entries match on, and the
    /// route the gateway names. When the gateway names an HTTPRoute that policies are attached
    /// to, only that route's entries (of the named rule, if it says) can judge the request;
    /// when it names another route, no route entry can (they belong to routes the gateway
    /// did not choose), only `match` policies.
    pub fn select_with<'s>(
        &'s self,
        host: &str,
        path: &str,
        method: &str,
        ignore_case: bool,
        input: &MatchInput<'_>,
    ) -> Option<Picked<'s>> {
        let named = input.route.map(|r| {
            let known = self.routed.contains(&format!("{}/{}", r.namespace, r.name));
            (r, known)
        });
        let eligible_origin = |route: &Route| match (named, &route.origin) {
            (None, _) => true,
            (Some((_, true)), None) => false,
            (Some((_, false)), None) => true,
            (Some((_, false)), Some(_)) => false,
            (Some((r, true)), Some((id, _))) => {
                *id.namespace == *r.namespace
                    && *id.name == *r.name
                    && r.section
                        .as_deref()
                        .is_none_or(|s| id.rule.as_deref() == Some(s))
            }
        };
        let picked = |r: &'s Route| Picked {
            policy: &r.policy,
            ambiguous_with: r.ambiguous_with.as_ref(),
        };
        let pick = |routes: &'s [Route], owner: Option<&Arc<str>>| -> Option<Picked<'s>> {
            let eligible = |r: &&Route| {
                owner.is_none_or(|ns| **ns == *r.namespace)
                    && eligible_origin(r)
                    && r.matches(path, method, ignore_case, input)
            };
            let first = routes.iter().find(eligible)?;
            // An `OPTIONS` request (a CORS preflight carries no token) is taken first by a
            // `match` policy route that names `OPTIONS`, so a longer route for all methods does
            // not shadow it. Route entries keep the gateway's order: the gateway routes a
            // preflight like any request.
            if method.eq_ignore_ascii_case("OPTIONS")
                && first.origin.is_none()
                && let Some(found) = routes
                    .iter()
                    .filter(eligible)
                    .filter(|r| r.origin.is_none())
                    .find(|r| r.methods.names("OPTIONS"))
            {
                return Some(picked(found));
            }
            Some(picked(first))
        };
        // Every route of an exact host belongs to its owner (build refused the others).
        if let Some(found) = self.exact.get(host).and_then(|routes| pick(routes, None)) {
            return Some(found);
        }
        let owner = self.owner(host);
        if !self.wildcard.is_empty() {
            let mut rest = host;
            while let Some((_, suffix)) = rest.split_once('.') {
                if let Some(found) = self
                    .wildcard
                    .get(suffix)
                    .and_then(|routes| pick(routes, owner))
                {
                    return Some(found);
                }
                rest = suffix;
            }
        }
        pick(&self.any, owner)
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

/// How long `/readyz` shows a source's last failure.
const SOURCE_PROBLEM_MEMORY: Duration = Duration::from_secs(60);

/// The current snapshot, swapped atomically, plus readiness and a change feed.
pub struct SharedSnapshot {
    current: ArcSwap<Snapshot>,
    ready: AtomicBool,
    changes: watch::Sender<u64>,
    token_cache: Option<Arc<TokenCache>>,
    /// What keeps a policy source from being read (a watch the API server refuses, …), by
    /// source, with when it last failed; shown by `/readyz`. Never read on the request path.
    source_problems: std::sync::Mutex<std::collections::BTreeMap<String, (Instant, String)>>,
    /// What the dry-run policies of the served snapshot would have denied.
    dry_run: Arc<DryRunLedger>,
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
            source_problems: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            dry_run: DryRunLedger::new(),
        })
    }

    /// Records (`Some`) or clears (`None`) why `source` cannot be read.
    pub fn set_source_problem(&self, source: &str, problem: Option<String>) {
        let mut problems = self
            .source_problems
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match problem {
            Some(problem) => {
                problems.insert(source.to_string(), (Instant::now(), problem));
            }
            None => {
                problems.remove(source);
            }
        }
    }

    /// Why sources could not be read lately: (source, how long ago, problem), sorted by source.
    /// A watch that keeps failing records its error again on every retry (at most 30 s
    /// apart); one that recovered without a change to report is forgotten after a minute.
    pub fn source_problems(&self) -> Vec<(String, Duration, String)> {
        self.source_problems
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(_, (at, _))| at.elapsed() <= SOURCE_PROBLEM_MEMORY)
            .map(|(source, (at, problem))| (source.clone(), at.elapsed(), problem.clone()))
            .collect()
    }

    /// The dry-run counts of this process (`mode: dryRun` policies).
    pub fn dry_run(&self) -> &Arc<DryRunLedger> {
        &self.dry_run
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
    ///
    /// Inside a runtime the clean-up (scanning the cache, freeing the previous snapshot's
    /// policies) runs on the blocking pool, after the new snapshot serves: requests never wait
    /// behind it on a runtime worker. Dropping an entry only costs a verification later, so a
    /// clean-up that runs after a newer snapshot is harmless.
    pub fn publish(&self, mut snapshot: Snapshot) -> u64 {
        let previous = self.current.load_full();
        let generation = previous.generation + 1;
        snapshot.generation = generation;
        snapshot.token_cache = self.token_cache.clone();
        let live: HashSet<u64> = snapshot.policies.values().map(|p| p.instance).collect();
        self.dry_run
            .sync(snapshot.policies.values(), std::time::SystemTime::now());
        self.current.store(Arc::new(snapshot));
        self.changes.send_replace(generation);
        let cache = self.token_cache.clone().filter(|_| {
            previous
                .policies
                .values()
                .any(|p| !live.contains(&p.instance))
        });
        let clean_up = move || {
            if let Some(cache) = cache {
                cache.retain_policies(|instance| live.contains(&instance));
            }
            drop(previous);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(clean_up);
            }
            Err(_) => clean_up(),
        }
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

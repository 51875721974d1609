//! Gateway API attachment (GEP-713): which requests a `JwtPolicy` with `targetRefs` judges,
//! derived from the `HTTPRoute`s and `Gateway`s it targets.
//!
//! ```text
//! JwtPolicy.targetRefs ─┐
//! HTTPRoute (hostnames, rules[].matches, parentRefs) ─┼─► attach() ─► RouteEntry per host × match ─► Snapshot
//! Gateway (listeners: hostname, allowedRoutes) ───────┘            └─► per-ancestor status
//! ```
//!
//! # Which policy judges a route rule
//! The most specific attachment wins, as GEP-713 orders them: a policy naming the rule
//! (`HTTPRoute` + `sectionName`), then the route, then the listener the route attaches to
//! (`Gateway` + `sectionName`), then the Gateway. Two policies at the same level: the older one
//! (then the one first by name) judges, the other's status names it (`Conflicted`).
//!
//! # What is derived, and what refuses the policy
//! Per rule match: the route's hostnames intersected with each attached listener's hostname,
//! `Exact` and `PathPrefix` paths, the method, `Exact` header and query parameter matches.
//! A `RegularExpression` (or implementation-specific) match cannot be judged the way the
//! gateway routes it, so the policy is **not Accepted** (it keeps its last good version) rather
//! than judging a superset or a subset of the rule's requests. A listener choosing namespaces
//! by label selector is refused for the same reason (tollgate does not read Namespace labels).
//!
//! Nothing here knows kube: the controller hands in the objects as these types.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Deserialize;

use super::compile::{Problem, ProblemKind};
use super::route::{HostPattern, Methods, PathPrefix, read_path};
use super::spec::TargetRefSpec;

/// The Gateway API group.
pub const GROUP: &str = "gateway.networking.k8s.io";

/// At most this many entries per policy: a route set that derives more is refused.
pub const MAX_ENTRIES: usize = 10_000;

/// `spec` of an `HTTPRoute`, the fields tollgate reads.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RouteRule>,
}

/// A route's `parentRefs` entry.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default)]
    pub section_name: Option<String>,
    #[serde(default)]
    pub port: Option<i32>,
}

/// One of a route's `rules`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<RouteMatchSpec>,
}

/// One of a rule's `matches`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatchSpec {
    #[serde(default)]
    pub path: Option<PathMatchSpec>,
    #[serde(default)]
    pub headers: Vec<ValueMatchSpec>,
    #[serde(default)]
    pub query_params: Vec<ValueMatchSpec>,
    #[serde(default)]
    pub method: Option<String>,
}

/// `matches[].path`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct PathMatchSpec {
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

/// `matches[].headers[]` and `matches[].queryParams[]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ValueMatchSpec {
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    pub name: String,
    pub value: String,
}

/// `spec` of a `Gateway`, the fields tollgate reads.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(default)]
    pub listeners: Vec<Listener>,
}

/// A Gateway listener.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    pub name: String,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub port: Option<i32>,
    #[serde(default)]
    pub allowed_routes: Option<AllowedRoutes>,
}

/// `listeners[].allowedRoutes`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AllowedRoutes {
    #[serde(default)]
    pub namespaces: Option<RouteNamespaces>,
    #[serde(default)]
    pub kinds: Option<Vec<RouteGroupKind>>,
}

/// `allowedRoutes.namespaces`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct RouteNamespaces {
    #[serde(default)]
    pub from: Option<String>,
}

/// `allowedRoutes.kinds[]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct RouteGroupKind {
    #[serde(default)]
    pub group: Option<String>,
    pub kind: String,
}

/// An `HTTPRoute` as the index holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteObject {
    pub namespace: String,
    pub name: String,
    /// `metadata.creationTimestamp` (RFC 3339): the older route wins a tie, as in Gateway API.
    pub created: String,
    pub spec: HttpRouteSpec,
}

/// A `Gateway` as the index holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayObject {
    pub namespace: String,
    pub name: String,
    pub spec: GatewaySpec,
}

/// `(namespace, name)` of a route or Gateway.
pub type ObjectKey = (String, String);

/// How a derived entry compares the path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathMatch {
    /// Segment-aware prefix (`PathPrefix`).
    Prefix(PathPrefix),
    /// The whole path, as [`read_path`] reads it (`Exact`).
    Exact(String),
}

impl PathMatch {
    pub fn matches(&self, path: &str, ignore_case: bool) -> bool {
        match self {
            PathMatch::Prefix(prefix) => prefix.matches(path, ignore_case),
            PathMatch::Exact(exact) if ignore_case => exact.eq_ignore_ascii_case(path),
            PathMatch::Exact(exact) => exact == path,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            PathMatch::Prefix(prefix) => prefix.len(),
            PathMatch::Exact(exact) => exact.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_exact(&self) -> bool {
        matches!(self, PathMatch::Exact(_))
    }

    pub fn has_upper(&self) -> bool {
        match self {
            PathMatch::Prefix(prefix) => prefix.has_upper(),
            PathMatch::Exact(exact) => exact.bytes().any(|b| b.is_ascii_uppercase()),
        }
    }
}

impl std::fmt::Display for PathMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathMatch::Prefix(prefix) => write!(f, "{prefix}"),
            PathMatch::Exact(exact) => write!(f, "{exact} (exact)"),
        }
    }
}

/// The route rule an entry comes from: what Envoy Gateway's route metadata names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// The rule's `name`, if it has one.
    pub rule: Option<Arc<str>>,
}

/// The order in which the gateway prefers routes that match equally well: the older route,
/// then `namespace/name`, then rule and match order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteOrder {
    pub created: Arc<str>,
    pub key: Arc<str>,
    pub rule: usize,
    pub index: usize,
}

/// One host × rule match of a route, judged by the policy it is attached to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteEntry {
    pub host: HostPattern,
    pub path: PathMatch,
    /// The match's method (all methods when unset).
    pub methods: Methods,
    /// `Exact` header matches: lower-case name, value.
    pub headers: Vec<(String, String)>,
    /// `Exact` query parameter matches: name, value.
    pub query: Vec<(String, String)>,
    pub route: RouteId,
    pub order: RouteOrder,
}

/// The object a policy's status speaks about (GEP-713 `ancestorRef`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AncestorRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub section_name: Option<String>,
}

/// A condition's outcome: `Ok(message)` or `Err((reason, message))`.
pub type Outcome = Result<String, (&'static str, String)>;

/// What one target means for the policy, per ancestor.
#[derive(Clone, Debug, PartialEq)]
pub struct AncestorState {
    /// Index into `targetRefs`.
    pub target: usize,
    pub ancestor: AncestorRef,
    /// Whether the target and the Gateway/listener it reaches exist.
    pub resolved: Outcome,
    /// Whether the policy judges the target's requests there.
    pub accepted: Outcome,
}

/// Everything the routes say about one policy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attachment {
    /// What the policy judges (empty: nothing).
    pub entries: Vec<RouteEntry>,
    /// Matches that cannot be judged as the gateway routes them: the policy is not Accepted.
    pub problems: Vec<Problem>,
    pub ancestors: Vec<AncestorState>,
}

impl Attachment {
    /// The distinct hosts of the entries (what the policy claims for its namespace).
    pub fn hosts(&self) -> Vec<HostPattern> {
        let mut hosts: Vec<HostPattern> = Vec::new();
        for entry in &self.entries {
            if !hosts.contains(&entry.host) {
                hosts.push(entry.host.clone());
            }
        }
        hosts
    }
}

/// A policy with `targetRefs`, as [`attach`] needs it.
#[derive(Clone, Debug)]
pub struct Attacher<'a> {
    /// `namespace/name`.
    pub id: Arc<str>,
    pub namespace: &'a str,
    /// Creation time (RFC 3339): the older of two policies at the same level judges.
    pub created: &'a str,
    pub targets: &'a [TargetRefSpec],
}

/// The level at which a policy attaches to a route rule; lower is more specific.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    RouteRule,
    Route,
    Listener,
    Gateway,
}

/// A listener a route attaches to, with the hostnames the route gets there.
struct Attached<'g> {
    gateway: &'g GatewayObject,
    listener: &'g Listener,
    hosts: Vec<HostPattern>,
    /// Why tollgate cannot know whether the route attaches here (a listener choosing route
    /// namespaces by label selector): the policy judging it there is refused, not guessed.
    unknowable: Option<String>,
}

/// Derives, for every policy with targets, what it judges and its per-ancestor status.
pub fn attach(
    policies: &[Attacher<'_>],
    routes: &BTreeMap<ObjectKey, RouteObject>,
    gateways: &BTreeMap<ObjectKey, GatewayObject>,
) -> HashMap<Arc<str>, Attachment> {
    // Who targets what: (kind, namespace, name, section) → policies, oldest first.
    let mut by_target: HashMap<(&str, &str, &str, Option<&str>), Vec<&Attacher<'_>>> =
        HashMap::new();
    let mut ordered: Vec<&Attacher<'_>> = policies.iter().collect();
    ordered.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    for policy in &ordered {
        for target in policy.targets {
            if target.group != GROUP {
                continue;
            }
            by_target
                .entry((
                    target.kind.as_str(),
                    policy.namespace,
                    target.name.as_str(),
                    target.section_name.as_deref(),
                ))
                .or_default()
                .push(policy);
        }
    }
    let winner = |kind, namespace, name, section| -> Option<&Attacher<'_>> {
        by_target
            .get(&(kind, namespace, name, section))
            .and_then(|v| v.first().copied())
    };

    let mut out: HashMap<Arc<str>, Attachment> = policies
        .iter()
        .map(|p| (p.id.clone(), Attachment::default()))
        .collect();
    // Per (policy, target index): routes judged, routes overridden by a more specific policy.
    let mut judged: HashMap<(Arc<str>, usize), Vec<String>> = HashMap::new();
    let mut overridden: HashMap<(Arc<str>, usize), Vec<String>> = HashMap::new();

    for route in routes.values() {
        let route_key: Arc<str> = format!("{}/{}", route.namespace, route.name).into();
        let attached = attachments_of(route, gateways);
        for (rule_index, rule) in route.spec.rules.iter().enumerate() {
            let rule_name = rule.name.as_deref();
            // Candidates per listener, most specific first.
            for place in &attached {
                let candidates = [
                    (
                        Level::RouteRule,
                        rule_name.and_then(|r| {
                            winner("HTTPRoute", &route.namespace, &route.name, Some(r))
                        }),
                    ),
                    (
                        Level::Route,
                        winner("HTTPRoute", &route.namespace, &route.name, None),
                    ),
                    (
                        Level::Listener,
                        winner(
                            "Gateway",
                            &place.gateway.namespace,
                            &place.gateway.name,
                            Some(&place.listener.name),
                        ),
                    ),
                    (
                        Level::Gateway,
                        winner(
                            "Gateway",
                            &place.gateway.namespace,
                            &place.gateway.name,
                            None,
                        ),
                    ),
                ];
                let mut found = candidates
                    .iter()
                    .filter_map(|(level, p)| Some((*level, (*p)?)));
                let Some((level, owner)) = found.next() else {
                    continue;
                };
                let target_index = |policy: &Attacher<'_>, level: Level| {
                    policy.targets.iter().position(|t| match level {
                        Level::RouteRule => {
                            t.kind == "HTTPRoute"
                                && t.name == route.name
                                && t.section_name.as_deref() == rule_name
                        }
                        Level::Route => {
                            t.kind == "HTTPRoute"
                                && t.name == route.name
                                && t.section_name.is_none()
                        }
                        Level::Listener => {
                            t.kind == "Gateway"
                                && t.name == place.gateway.name
                                && t.section_name.as_deref() == Some(place.listener.name.as_str())
                        }
                        Level::Gateway => {
                            t.kind == "Gateway"
                                && t.name == place.gateway.name
                                && t.section_name.is_none()
                        }
                    })
                };
                let what = match rule_name {
                    Some(r) => format!("{route_key} rule {r}"),
                    None => format!("{route_key} rule {}", rule_index + 1),
                };
                if let Some(i) = target_index(owner, level) {
                    judged
                        .entry((owner.id.clone(), i))
                        .or_default()
                        .push(what.clone());
                }
                for (less, other) in found {
                    if other.id != owner.id
                        && let Some(i) = target_index(other, less)
                    {
                        overridden
                            .entry((other.id.clone(), i))
                            .or_default()
                            .push(format!("{what} (judged by {})", owner.id));
                    }
                }
                let Some(attachment) = out.get_mut(&owner.id) else {
                    continue;
                };
                let field = match target_index(owner, level) {
                    Some(i) => format!("spec.targetRefs[{i}]"),
                    None => "spec.targetRefs".to_string(),
                };
                if let Some(why) = &place.unknowable {
                    attachment.problems.push(Problem {
                        field,
                        message: format!(
                            "HTTPRoute {route_key} on Gateway {}/{}: {why}",
                            place.gateway.namespace, place.gateway.name
                        ),
                        kind: ProblemKind::UnsupportedRoute,
                    });
                    continue;
                }
                derive_rule(
                    attachment,
                    route,
                    &route_key,
                    rule_index,
                    rule,
                    &place.hosts,
                    &field,
                );
            }
        }
    }

    for policy in policies {
        let Some(attachment) = out.get_mut(&policy.id) else {
            continue;
        };
        for (i, target) in policy.targets.iter().enumerate() {
            let key = (policy.id.clone(), i);
            let conflicted_by = by_target
                .get(&(
                    target.kind.as_str(),
                    policy.namespace,
                    target.name.as_str(),
                    target.section_name.as_deref(),
                ))
                .and_then(|v| v.first())
                .filter(|first| first.id != policy.id)
                .map(|first| first.id.clone());
            let states = ancestor_states(
                policy,
                i,
                target,
                routes,
                gateways,
                conflicted_by,
                judged.get(&key).map(Vec::as_slice).unwrap_or_default(),
                overridden.get(&key).map(Vec::as_slice).unwrap_or_default(),
                &attachment.problems,
            );
            attachment.ancestors.extend(states);
        }
        if attachment.entries.len() > MAX_ENTRIES {
            attachment.problems.push(Problem {
                field: "spec.targetRefs".into(),
                message: format!(
                    "the targeted routes derive {} host × match entries, more than {MAX_ENTRIES}",
                    attachment.entries.len()
                ),
                kind: ProblemKind::UnsupportedRoute,
            });
            attachment.entries.clear();
        }
        attachment.entries.sort_by(|a, b| a.order.cmp(&b.order));
        attachment.entries.dedup();
    }
    out
}

/// The listeners a route attaches to, with the hostnames it gets on each (an empty
/// intersection attaches nothing there).
fn attachments_of<'g>(
    route: &RouteObject,
    gateways: &'g BTreeMap<ObjectKey, GatewayObject>,
) -> Vec<Attached<'g>> {
    let mut out = Vec::new();
    for parent in &route.spec.parent_refs {
        if !is_gateway_ref(parent) {
            continue;
        }
        let namespace = parent.namespace.as_deref().unwrap_or(&route.namespace);
        let Some(gateway) = gateways.get(&(namespace.to_string(), parent.name.clone())) else {
            continue;
        };
        for listener in &gateway.spec.listeners {
            if parent
                .section_name
                .as_ref()
                .is_some_and(|s| *s != listener.name)
                || parent.port.is_some_and(|p| Some(p) != listener.port)
            {
                continue;
            }
            let unknowable = match listener_refuses(listener, gateway, route) {
                None => None,
                Some(Refusal::Unknowable(why)) => Some(why),
                Some(Refusal::Refused(_)) => continue,
            };
            let hosts = intersect_hosts(&route.spec.hostnames, listener.hostname.as_deref());
            if hosts.is_empty() {
                continue;
            }
            if out
                .iter()
                .any(|a: &Attached<'_>| std::ptr::eq(a.listener, listener))
            {
                continue;
            }
            out.push(Attached {
                gateway,
                listener,
                hosts,
                unknowable,
            });
        }
    }
    out
}

fn is_gateway_ref(parent: &ParentRef) -> bool {
    parent.group.as_deref().is_none_or(|g| g == GROUP)
        && parent.kind.as_deref().is_none_or(|k| k == "Gateway")
}

/// Why a listener does not take a route.
enum Refusal {
    /// It does not.
    Refused(String),
    /// Whether it does depends on what tollgate does not read.
    Unknowable(String),
}

impl Refusal {
    fn message(self) -> String {
        match self {
            Refusal::Refused(why) | Refusal::Unknowable(why) => why,
        }
    }
}

/// Why a listener does not (or may not) take this route, if it does not.
fn listener_refuses(
    listener: &Listener,
    gateway: &GatewayObject,
    route: &RouteObject,
) -> Option<Refusal> {
    if !matches!(listener.protocol.as_str(), "HTTP" | "HTTPS") {
        return Some(Refusal::Refused(format!(
            "listener {} speaks {}, not HTTP",
            listener.name, listener.protocol
        )));
    }
    let allowed = listener.allowed_routes.as_ref();
    if let Some(kinds) = allowed.and_then(|a| a.kinds.as_ref())
        && !kinds.is_empty()
        && !kinds
            .iter()
            .any(|k| k.kind == "HTTPRoute" && k.group.as_deref().is_none_or(|g| g == GROUP))
    {
        return Some(Refusal::Refused(format!(
            "listener {} allows no HTTPRoute",
            listener.name
        )));
    }
    let from = allowed
        .and_then(|a| a.namespaces.as_ref())
        .and_then(|n| n.from.as_deref())
        .unwrap_or("Same");
    match from {
        "All" => None,
        "Same" if gateway.namespace == route.namespace => None,
        "Same" => Some(Refusal::Refused(format!(
            "listener {} takes routes of namespace {} only",
            listener.name, gateway.namespace
        ))),
        other => Some(Refusal::Unknowable(format!(
            "listener {} chooses route namespaces by {other}, which tollgate cannot follow (it reads no Namespace labels), so whether the route attaches there cannot be known",
            listener.name
        ))),
    }
}

/// Gateway API hostname intersection of a route's hostnames with a listener's hostname.
pub fn intersect_hosts(route: &[String], listener: Option<&str>) -> Vec<HostPattern> {
    let listener = listener.and_then(|h| HostPattern::parse(h).ok());
    let route: Vec<HostPattern> = route
        .iter()
        .filter_map(|h| HostPattern::parse(h).ok())
        .collect();
    let mut out: Vec<HostPattern> = Vec::new();
    let mut push = |h: HostPattern| {
        if !out.contains(&h) {
            out.push(h);
        }
    };
    match (route.is_empty(), listener) {
        (true, None) => push(HostPattern::Any),
        (true, Some(l)) => push(l),
        (false, None) => route.into_iter().for_each(push),
        (false, Some(l)) => {
            for r in route {
                if let Some(h) = intersect(&r, &l) {
                    push(h);
                }
            }
        }
    }
    out
}

fn intersect(a: &HostPattern, b: &HostPattern) -> Option<HostPattern> {
    use HostPattern::*;
    match (a, b) {
        (Any, x) | (x, Any) => Some(x.clone()),
        (Exact(x), Exact(y)) => (x == y).then(|| a.clone()),
        (Exact(x), w @ Wildcard(_)) | (w @ Wildcard(_), Exact(x)) => {
            w.matches(x).then(|| Exact(x.clone()))
        }
        (Wildcard(x), Wildcard(y)) => {
            if x == y || x.ends_with(&format!(".{y}")) {
                Some(a.clone())
            } else if y.ends_with(&format!(".{x}")) {
                Some(b.clone())
            } else {
                None
            }
        }
    }
}

/// The entries of one rule on one listener, or the problems that refuse the policy.
fn derive_rule(
    attachment: &mut Attachment,
    route: &RouteObject,
    route_key: &Arc<str>,
    rule_index: usize,
    rule: &RouteRule,
    hosts: &[HostPattern],
    field: &str,
) {
    let default_match = [RouteMatchSpec::default()];
    let matches: &[RouteMatchSpec] = if rule.matches.is_empty() {
        &default_match
    } else {
        &rule.matches
    };
    let route_id = RouteId {
        namespace: route.namespace.as_str().into(),
        name: route.name.as_str().into(),
        rule: rule.name.as_deref().map(Arc::from),
    };
    let created: Arc<str> = route.created.as_str().into();
    for (index, m) in matches.iter().enumerate() {
        let at = format!("HTTPRoute {route_key} rules[{rule_index}].matches[{index}]");
        let problem = |message: String| Problem {
            field: field.to_string(),
            message: format!("{at}: {message}"),
            kind: ProblemKind::UnsupportedRoute,
        };
        let path = match derive_path(m.path.as_ref()) {
            Ok(path) => path,
            Err(why) => {
                attachment.problems.push(problem(why));
                continue;
            }
        };
        let methods = match &m.method {
            Some(method) => match Methods::parse(std::slice::from_ref(method)) {
                Ok(methods) => methods,
                Err(e) => {
                    attachment.problems.push(problem(e.to_string()));
                    continue;
                }
            },
            None => Methods::default(),
        };
        let headers = match exact_values(&m.headers, "header", true) {
            Ok(v) => v,
            Err(why) => {
                attachment.problems.push(problem(why));
                continue;
            }
        };
        let query = match exact_values(&m.query_params, "query parameter", false) {
            Ok(v) => v,
            Err(why) => {
                attachment.problems.push(problem(why));
                continue;
            }
        };
        for host in hosts {
            attachment.entries.push(RouteEntry {
                host: host.clone(),
                path: path.clone(),
                methods: methods.clone(),
                headers: headers.clone(),
                query: query.clone(),
                route: route_id.clone(),
                order: RouteOrder {
                    created: created.clone(),
                    key: route_key.clone(),
                    rule: rule_index,
                    index,
                },
            });
        }
    }
}

fn derive_path(path: Option<&PathMatchSpec>) -> Result<PathMatch, String> {
    let kind = path
        .and_then(|p| p.type_.as_deref())
        .unwrap_or("PathPrefix");
    let value = path.and_then(|p| p.value.as_deref()).unwrap_or("/");
    match kind {
        "PathPrefix" => PathPrefix::parse(value)
            .map(PathMatch::Prefix)
            .map_err(|e| e.to_string()),
        "Exact" => {
            let read = read_path(value).map_err(|e| format!("path {value:?}: {e}"))?;
            if read != value {
                return Err(format!(
                    "path {value:?} is read as {read:?}; write the exact path as it is read"
                ));
            }
            Ok(PathMatch::Exact(read))
        }
        other => Err(format!(
            "a {other} path match cannot be judged the way the gateway routes it; use Exact or PathPrefix, or select the policy with the route's tollgate.dev/policy context extension"
        )),
    }
}

/// `Exact` matches as (name, value); names lower-cased for headers.
fn exact_values(
    matches: &[ValueMatchSpec],
    what: &str,
    header: bool,
) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for m in matches {
        let kind = m.type_.as_deref().unwrap_or("Exact");
        if kind != "Exact" {
            return Err(format!(
                "a {kind} {what} match ({}) cannot be judged the way the gateway routes it; use Exact",
                m.name
            ));
        }
        let name = if header {
            m.name.to_ascii_lowercase()
        } else {
            m.name.clone()
        };
        // Gateway API: only the first entry of a name counts.
        if out.iter().any(|(n, _)| *n == name) {
            continue;
        }
        if !header && (name.contains(['%', '+']) || m.value.contains(['%', '+'])) {
            return Err(format!(
                "query parameter {}={}: names and values with % or + are read differently by gateways and upstreams",
                m.name, m.value
            ));
        }
        out.push((name, m.value.clone()));
    }
    out.sort();
    Ok(out)
}

/// The per-ancestor status of one target.
#[allow(clippy::too_many_arguments)]
fn ancestor_states(
    policy: &Attacher<'_>,
    index: usize,
    target: &TargetRefSpec,
    routes: &BTreeMap<ObjectKey, RouteObject>,
    gateways: &BTreeMap<ObjectKey, GatewayObject>,
    conflicted_by: Option<Arc<str>>,
    judged: &[String],
    overridden: &[String],
    problems: &[Problem],
) -> Vec<AncestorState> {
    let itself = AncestorRef {
        kind: target.kind.clone(),
        namespace: policy.namespace.to_string(),
        name: target.name.clone(),
        section_name: target.section_name.clone(),
    };
    let not_found = |why: String| {
        vec![AncestorState {
            target: index,
            ancestor: itself.clone(),
            resolved: Err(("TargetNotFound", why.clone())),
            accepted: Err(("TargetNotFound", why)),
        }]
    };
    let key = (policy.namespace.to_string(), target.name.clone());
    let field = format!("spec.targetRefs[{index}]");
    let invalid: Vec<&Problem> = problems.iter().filter(|p| p.field == field).collect();
    let accepted = |found_routes: bool| -> Outcome {
        if let Some(holder) = &conflicted_by {
            return Err((
                "Conflicted",
                format!(
                    "{} {} is targeted by the older policy {holder}, which judges its requests",
                    target.kind, target.name
                ),
            ));
        }
        if !invalid.is_empty() {
            let text: Vec<&str> = invalid.iter().map(|p| p.message.as_str()).collect();
            return Err(("Invalid", text.join("; ")));
        }
        if !found_routes {
            return Err((
                "NoRoutes",
                "no attached route rule is judged by this policy, so it judges no request".into(),
            ));
        }
        let mut message = format!("judges {}", judged.join(", "));
        if !overridden.is_empty() {
            message.push_str(&format!(
                "; more specific policies judge {}",
                overridden.join(", ")
            ));
        }
        Ok(message)
    };
    match target.kind.as_str() {
        "HTTPRoute" => {
            let Some(route) = routes.get(&key) else {
                return not_found(format!(
                    "HTTPRoute {}/{} does not exist (or tollgate cannot read it)",
                    key.0, key.1
                ));
            };
            if let Some(section) = &target.section_name
                && !route
                    .spec
                    .rules
                    .iter()
                    .any(|r| r.name.as_ref() == Some(section))
            {
                return not_found(format!(
                    "HTTPRoute {}/{} has no rule named {section}",
                    key.0, key.1
                ));
            }
            let attached = attachments_of(route, gateways);
            let mut out = Vec::new();
            for parent in route.spec.parent_refs.iter().filter(|p| is_gateway_ref(p)) {
                let namespace = parent
                    .namespace
                    .clone()
                    .unwrap_or_else(|| route.namespace.clone());
                let ancestor = AncestorRef {
                    kind: "Gateway".into(),
                    namespace: namespace.clone(),
                    name: parent.name.clone(),
                    section_name: parent.section_name.clone(),
                };
                let gateway = gateways.get(&(namespace.clone(), parent.name.clone()));
                let here = attached.iter().any(|a| {
                    a.gateway.namespace == namespace
                        && a.gateway.name == parent.name
                        && parent
                            .section_name
                            .as_ref()
                            .is_none_or(|s| *s == a.listener.name)
                });
                let resolved: Outcome = match gateway {
                    None => Err((
                        "ParentNotFound",
                        format!(
                            "Gateway {namespace}/{} does not exist (or tollgate cannot read it), so the route attaches nowhere there",
                            parent.name
                        ),
                    )),
                    Some(g) if !here => {
                        let why: Vec<String> = g
                            .spec
                            .listeners
                            .iter()
                            .filter(|l| parent.section_name.as_ref().is_none_or(|s| *s == l.name))
                            .map(|l| {
                                listener_refuses(l, g, route)
                                    .map(Refusal::message)
                                    .unwrap_or_else(|| {
                                        format!(
                                            "listener {}: no hostname in common with the route",
                                            l.name
                                        )
                                    })
                            })
                            .collect();
                        Err((
                            "NotAttached",
                            if why.is_empty() {
                                "no listener matches the route's parentRef".to_string()
                            } else {
                                why.join("; ")
                            },
                        ))
                    }
                    Some(_) => Ok(format!(
                        "HTTPRoute {}/{} attaches to Gateway {namespace}/{}",
                        key.0, key.1, parent.name
                    )),
                };
                let accepted = match &resolved {
                    Err((reason, message)) => Err((*reason, message.clone())),
                    Ok(_) => accepted(!judged.is_empty()),
                };
                out.push(AncestorState {
                    target: index,
                    ancestor,
                    resolved,
                    accepted,
                });
            }
            if out.is_empty() {
                return vec![AncestorState {
                    target: index,
                    ancestor: itself,
                    resolved: Err(("NotAttached", "the route names no Gateway parent".into())),
                    accepted: Err(("NotAttached", "the route names no Gateway parent".into())),
                }];
            }
            out
        }
        "Gateway" => {
            let Some(gateway) = gateways.get(&key) else {
                return not_found(format!(
                    "Gateway {}/{} does not exist (or tollgate cannot read it)",
                    key.0, key.1
                ));
            };
            if let Some(section) = &target.section_name
                && !gateway.spec.listeners.iter().any(|l| l.name == *section)
            {
                return not_found(format!(
                    "Gateway {}/{} has no listener named {section}",
                    key.0, key.1
                ));
            }
            vec![AncestorState {
                target: index,
                ancestor: itself,
                resolved: Ok(format!("Gateway {}/{} found", key.0, key.1)),
                accepted: accepted(!judged.is_empty()),
            }]
        }
        other => not_found(format!("kind {other} is not HTTPRoute or Gateway")),
    }
}

#[cfg(test)]
mod tests;

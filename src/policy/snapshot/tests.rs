use super::*;
use crate::fixtures::*;
use crate::policy::HostDelegations;

fn build(policies: &[&Arc<Policy>]) -> (Snapshot, Vec<Conflict>) {
    Snapshot::build(
        policies.iter().map(|p| (*p).clone()).collect(),
        DefaultAction::Deny,
    )
}

fn selected<'a>(snapshot: &'a Snapshot, host: &str, path: &str, method: &str) -> Option<&'a str> {
    snapshot.select(host, path, method, false).map(|p| &*p.id)
}

#[test]
fn most_specific_match_wins() {
    let exact = mk_policy(
        "exact",
        "{match: {hosts: [api.example.com], paths: [/orders]}}",
    );
    let exact_admin = mk_policy(
        "exact-admin",
        "{match: {hosts: [api.example.com], paths: [/orders/admin]}}",
    );
    let wildcard = mk_policy("wild", "{match: {hosts: ['*.example.com']}}");
    let deep_wildcard = mk_policy("deep", "{match: {hosts: ['*.eu.example.com']}}");
    let any = mk_policy("any", "{match: {hosts: ['*'], paths: [/public]}}");
    let (snapshot, conflicts) = build(&[&exact, &exact_admin, &wildcard, &deep_wildcard, &any]);
    assert!(conflicts.is_empty());
    let cases = [
        ("api.example.com", "/orders", "GET", Some("test/exact")),
        ("api.example.com", "/orders/1", "GET", Some("test/exact")),
        (
            "api.example.com",
            "/orders/admin/x",
            "GET",
            Some("test/exact-admin"),
        ),
        // The exact host does not claim /users: the wildcard still protects it.
        ("api.example.com", "/users", "GET", Some("test/wild")),
        ("x.eu.example.com", "/", "GET", Some("test/deep")),
        ("x.us.example.com", "/", "GET", Some("test/wild")),
        ("example.com", "/", "GET", None),
        ("other.org", "/public/a", "GET", Some("test/any")),
        ("other.org", "/private", "GET", None),
    ];
    for (host, path, method, want) in cases {
        assert_eq!(
            selected(&snapshot, host, path, method),
            want,
            "{host}{path}"
        );
    }
}

#[test]
fn methods_split_a_path() {
    let reads = mk_policy(
        "reads",
        "{match: {hosts: [h], paths: [/a], methods: [GET, HEAD]}}",
    );
    let writes = mk_policy(
        "writes",
        "{match: {hosts: [h], paths: [/a], methods: [POST]}}",
    );
    let rest = mk_policy("rest", "{match: {hosts: [h], paths: [/]}}");
    let (snapshot, conflicts) = build(&[&reads, &writes, &rest]);
    assert!(conflicts.is_empty(), "{conflicts:?}");
    assert_eq!(selected(&snapshot, "h", "/a", "GET"), Some("test/reads"));
    assert_eq!(selected(&snapshot, "h", "/a", "POST"), Some("test/writes"));
    assert_eq!(selected(&snapshot, "h", "/a", "DELETE"), Some("test/rest"));
}

#[test]
fn the_older_policy_keeps_a_contested_route() {
    let older = mk_policy("older", "{match: {hosts: [h], paths: [/a]}}");
    let newer = mk_policy("newer", "{match: {hosts: [h, other], paths: [/a]}}");
    let (snapshot, conflicts) = build(&[&older, &newer]);
    assert_eq!(conflicts.len(), 1);
    assert_eq!(&*conflicts[0].policy, "test/newer");
    assert_eq!(&*conflicts[0].holder, "test/older");
    assert!(
        conflicts[0]
            .to_string()
            .contains("already claimed by test/older")
    );
    // Rejected whole: it does not get its uncontested host either.
    assert_eq!(selected(&snapshot, "other", "/a", "GET"), None);
    assert!(snapshot.policy("test/newer").is_none());
    assert!(snapshot.policy("test/older").is_some());
}

#[test]
fn published_snapshots_replace_each_other_atomically() {
    let shared = SharedSnapshot::new(DefaultAction::Deny);
    let mut changes = shared.subscribe();
    assert!(!shared.is_ready());
    let a = mk_policy("a", "");
    let (snapshot, _) = build(&[&a]);
    assert_eq!(shared.publish(snapshot), 1);
    assert!(changes.has_changed().expect("open"));
    assert_eq!(*changes.borrow_and_update(), 1);
    let held = shared.load_full();
    let (empty, _) = build(&[]);
    assert_eq!(shared.publish(empty), 2);
    // A reader holding the old snapshot still sees all of it.
    assert_eq!(held.len(), 1);
    assert_eq!(shared.load().len(), 0);
}

fn in_namespace(namespace: &str, name: &str, extra: &str) -> Arc<Policy> {
    Arc::new(
        crate::fixtures::compile_with(
            &crate::jwks::KeySources::offline().expect("client"),
            namespace,
            name,
            &spec_with(extra),
        )
        .expect("compiles"),
    )
}

fn build_with(policies: &[&Arc<Policy>], delegations: &str) -> (Snapshot, Vec<Conflict>) {
    let delegations = if delegations.is_empty() {
        HostDelegations::none()
    } else {
        Arc::new(HostDelegations::parse(delegations).expect("delegations"))
    };
    Snapshot::build(
        policies.iter().map(|p| (*p).clone()).collect(),
        SnapshotSettings {
            default_action: DefaultAction::Deny,
            delegations,
        },
    )
}

/// The attack of the issue: another namespace claims a longer prefix of a host with
/// allowAnonymous, or a wildcard / `*` catching what an exact-host policy does not list.
#[test]
fn a_host_belongs_to_one_namespace() {
    let orders = in_namespace(
        "shop",
        "orders",
        "{match: {hosts: [api.example.com], paths: [/orders]}}",
    );
    let squatter = in_namespace(
        "other-team",
        "squatter",
        "{match: {hosts: [api.example.com], paths: [/orders/admin]}, rules: [{allowAnonymous: true}]}",
    );
    let wildcard = in_namespace("other-team", "wild", "{match: {hosts: ['*.example.com']}}");
    let catch_all = in_namespace("other-team", "all", "{match: {hosts: ['*']}}");
    let (snapshot, conflicts) = build(&[&orders, &squatter, &wildcard, &catch_all]);
    // The squatter and the overlapping wildcard are not loaded; `*` is, for unowned hosts.
    let left_out: Vec<(&str, ConflictKind)> =
        conflicts.iter().map(|c| (&*c.policy, c.kind)).collect();
    assert_eq!(
        left_out,
        [
            ("other-team/squatter", ConflictKind::Host),
            ("other-team/wild", ConflictKind::Host)
        ]
    );
    assert!(
        conflicts[0]
            .to_string()
            .contains("belongs to namespace shop (shop/orders is the oldest"),
        "{}",
        conflicts[0]
    );
    for (host, path, want) in [
        ("api.example.com", "/orders/admin/1", Some("shop/orders")),
        // Owned by shop: not judged by another namespace's `*`, even where shop has no path.
        ("api.example.com", "/billing", None),
        ("unowned.example.org", "/x", Some("other-team/all")),
    ] {
        assert_eq!(selected(&snapshot, host, path, "GET"), want, "{host}{path}");
    }
    assert_eq!(
        snapshot.owner("api.example.com").map(|n| &**n),
        Some("shop")
    );

    // The same policies in the other order: the older namespace keeps the host.
    let (snapshot, conflicts) = build(&[&squatter, &orders]);
    assert_eq!(&*conflicts[0].policy, "shop/orders");
    assert_eq!(
        selected(&snapshot, "api.example.com", "/orders/admin", "GET"),
        Some("other-team/squatter")
    );
}

#[test]
fn wildcards_and_star_fall_through_only_within_the_owning_namespace() {
    let exact = in_namespace(
        "shop",
        "exact",
        "{match: {hosts: [api.example.com], paths: [/orders]}}",
    );
    let shop_wild = in_namespace("shop", "wild", "{match: {hosts: ['*.example.com']}}");
    let shop_all = in_namespace("shop", "all", "{match: {hosts: ['*'], paths: [/public]}}");
    let other_all = in_namespace("other", "all", "{match: {hosts: ['*']}}");
    let (snapshot, conflicts) = build(&[&exact, &shop_wild, &shop_all, &other_all]);
    // `*` is held by one namespace: the newer one is left out.
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(&*conflicts[0].policy, "other/all");
    for (host, path, want) in [
        ("api.example.com", "/orders/1", Some("shop/exact")),
        // shop's own wildcard protects what its exact policy does not list.
        ("api.example.com", "/users", Some("shop/wild")),
        ("x.example.com", "/", Some("shop/wild")),
        ("other.org", "/public/a", Some("shop/all")),
        ("other.org", "/private", None),
    ] {
        assert_eq!(selected(&snapshot, host, path, "GET"), want, "{host}{path}");
    }
}

#[test]
fn an_operator_delegates_hosts_to_namespaces() {
    let delegations = "apiVersion: tollgate.dev/v1alpha1\nkind: HostDelegations\ndelegations:\n\
                       - {namespace: shop, hosts: [api.example.com, '*.shop.example.com']}\n";
    let platform = in_namespace("platform", "default", "{match: {hosts: ['*.example.com']}}");
    let taker = in_namespace("platform", "taker", "{match: {hosts: [api.example.com]}}");
    let orders = in_namespace(
        "shop",
        "orders",
        "{match: {hosts: [api.example.com], paths: [/orders]}}",
    );
    let deep = in_namespace("other", "deep", "{match: {hosts: [a.shop.example.com]}}");
    // Older policies of other namespaces do not take a delegated host.
    let (snapshot, conflicts) = build_with(&[&platform, &taker, &deep, &orders], delegations);
    let left_out: Vec<(&str, ConflictKind)> =
        conflicts.iter().map(|c| (&*c.policy, c.kind)).collect();
    assert_eq!(
        left_out,
        [
            ("platform/taker", ConflictKind::Delegated),
            ("other/deep", ConflictKind::Delegated)
        ]
    );
    assert!(
        conflicts[0]
            .to_string()
            .contains("delegated to namespace shop")
    );
    for (host, path, want) in [
        ("api.example.com", "/orders/1", Some("shop/orders")),
        // Delegated to shop: the platform's older wildcard never judges it.
        ("api.example.com", "/other", None),
        ("a.shop.example.com", "/", None),
        // The rest of *.example.com stays the platform's.
        ("www.example.com", "/", Some("platform/default")),
    ] {
        assert_eq!(selected(&snapshot, host, path, "GET"), want, "{host}{path}");
    }
}

/// A policy that does not compile (and never did) serves nothing, but keeps its hosts: they
/// are not handed to another namespace's wildcard or `*` meanwhile, so its requests are denied
/// rather than judged by someone else's policy.
#[test]
fn a_failing_policy_still_holds_its_hosts() {
    let broken = Claimant::failing("shop/orders".into(), &["api.example.com".to_string()]);
    let catch_all = in_namespace(
        "other-team",
        "all",
        "{match: {hosts: ['*']}, rules: [{allowAnonymous: true}]}",
    );
    let squatter = in_namespace(
        "other-team",
        "squatter",
        "{match: {hosts: [api.example.com]}, rules: [{allowAnonymous: true}]}",
    );
    let (snapshot, conflicts) = Snapshot::build_claimants(
        vec![
            broken,
            Claimant::Serving(catch_all),
            Claimant::Serving(squatter),
        ],
        DefaultAction::Deny,
    );
    assert_eq!(conflicts.len(), 1);
    assert_eq!(&*conflicts[0].policy, "other-team/squatter");
    assert_eq!(&*conflicts[0].holder, "shop/orders");
    assert_eq!(conflicts[0].kind, ConflictKind::HostOfFailing);
    assert!(conflicts[0].to_string().contains("does not compile"));
    assert_eq!(selected(&snapshot, "api.example.com", "/", "GET"), None);
    assert_eq!(
        selected(&snapshot, "elsewhere.example.org", "/", "GET"),
        Some("other-team/all")
    );
    // A failing policy without hosts holds `*` for its namespace.
    let (snapshot, conflicts) = Snapshot::build_claimants(
        vec![
            Claimant::failing("shop/all".into(), &[]),
            Claimant::Serving(in_namespace("other-team", "all", "{match: {hosts: ['*']}}")),
        ],
        DefaultAction::Deny,
    );
    assert_eq!(conflicts.len(), 1);
    assert_eq!(selected(&snapshot, "any.example.org", "/", "GET"), None);
}

/// In a cluster whose tenants do not trust each other, the operator decides what may be claimed
/// without a delegation: nobody takes every future subdomain, or every unowned host, first.
#[test]
fn delegations_can_require_a_delegation_for_wildcards_or_for_everything() {
    let exact_only = "apiVersion: tollgate.dev/v1alpha1\nkind: HostDelegations\nundelegatedHosts: ExactHostsOnly\n\
                      delegations:\n- {namespace: platform, hosts: ['*', '*.example.com']}\n";
    let early_wildcard = in_namespace("tenant-a", "wild", "{match: {hosts: ['*.example.org']}}");
    let early_star = in_namespace("tenant-a", "all", "{match: {hosts: ['*']}}");
    let exact = in_namespace("tenant-b", "api", "{match: {hosts: [api.example.org]}}");
    let platform = in_namespace("platform", "all", "{match: {hosts: ['*']}}");
    let (snapshot, conflicts) = build_with(
        &[&early_wildcard, &early_star, &exact, &platform],
        exact_only,
    );
    let left_out: Vec<(&str, ConflictKind)> =
        conflicts.iter().map(|c| (&*c.policy, c.kind)).collect();
    assert_eq!(
        left_out,
        [
            ("tenant-a/wild", ConflictKind::NotDelegated),
            ("tenant-a/all", ConflictKind::Delegated)
        ]
    );
    assert!(
        conflicts[0].to_string().contains("undelegatedHosts"),
        "{}",
        conflicts[0]
    );
    assert_eq!(
        selected(&snapshot, "api.example.org", "/", "GET"),
        Some("tenant-b/api")
    );
    assert_eq!(
        selected(&snapshot, "x.example.org", "/", "GET"),
        Some("platform/all")
    );

    // Refused: every host must be delegated.
    let strict = "apiVersion: tollgate.dev/v1alpha1\nkind: HostDelegations\nundelegatedHosts: Refused\n\
                  delegations:\n- {namespace: tenant-b, hosts: [api.example.org]}\n";
    let other = in_namespace("tenant-b", "other", "{match: {hosts: [other.example.org]}}");
    let (snapshot, conflicts) = build_with(&[&exact, &other], strict);
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(&*conflicts[0].policy, "tenant-b/other");
    assert_eq!(conflicts[0].kind, ConflictKind::NotDelegated);
    assert_eq!(
        selected(&snapshot, "api.example.org", "/", "GET"),
        Some("tenant-b/api")
    );
}

/// Policies attached to HTTPRoutes of one Gateway, derived as the controller derives them:
/// `(policy, route created, route spec)`, each policy targeting the route of its name.
fn attached(routes: &[(&str, &str, &str)]) -> Vec<Arc<Policy>> {
    let specs: Vec<String> = routes
        .iter()
        .map(|(_, _, yaml)| format!("parentRefs: [{{name: eg}}]\n{yaml}"))
        .collect();
    let objects: Vec<(&str, &str, &str, &str)> = routes
        .iter()
        .zip(&specs)
        .map(|((name, created, _), spec)| ("test", *name, *created, spec.as_str()))
        .collect();
    let policies: Vec<Arc<Policy>> = routes
        .iter()
        .map(|(name, _, _)| {
            targeting(
                "test",
                name,
                &format!("[{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: {name}}}]"),
            )
        })
        .collect();
    attach_to(
        &policies,
        &[(
            "test",
            "eg",
            "listeners: [{name: http, protocol: HTTP, port: 80}]",
        )],
        &objects,
    )
}

#[test]
fn route_entries_follow_gateway_api_precedence() {
    let policies = attached(&[
        (
            "prefix",
            "2026-01-02T00:00:00Z",
            "hostnames: [api.example.com]\nrules: [{matches: [{path: {type: PathPrefix, value: /orders}}]}]",
        ),
        (
            "exact",
            "2026-01-03T00:00:00Z",
            "hostnames: [api.example.com]\nrules: [{matches: [{path: {type: Exact, value: /orders/admin}}]}]",
        ),
        (
            "header",
            "2026-01-04T00:00:00Z",
            "hostnames: [api.example.com]\nrules: [{matches: [{path: {type: PathPrefix, value: /orders}, headers: [{name: X-Beta, value: 'yes'}]}]}]",
        ),
        (
            "query",
            "2026-01-05T00:00:00Z",
            "hostnames: [api.example.com]\nrules: [{matches: [{path: {type: PathPrefix, value: /orders}, queryParams: [{name: v, value: '2'}]}]}]",
        ),
        (
            "older",
            "2026-01-01T00:00:00Z",
            "hostnames: [api.example.com]\nrules: [{matches: [{path: {type: PathPrefix, value: /cart}}]}]",
        ),
        (
            "younger",
            "2026-01-09T00:00:00Z",
            "hostnames: [api.example.com]\nrules: [{matches: [{path: {type: PathPrefix, value: /cart}}]}]",
        ),
    ]);
    let refs: Vec<&Arc<Policy>> = policies.iter().collect();
    let (snapshot, conflicts) = build(&refs);
    assert!(conflicts.is_empty(), "{conflicts:?}");
    assert_eq!(snapshot.matched_headers(), ["x-beta"]);
    assert_eq!(snapshot.matched_query(), ["v"]);
    let beta = [("x-beta".to_string(), "yes".to_string())];
    let v2 = [("v".to_string(), "2".to_string())];
    type Pairs<'a> = &'a [(String, String)];
    let cases: [(&str, Pairs<'_>, Pairs<'_>, Option<&str>); 8] = [
        ("/orders/1", &[], &[], Some("test/prefix")),
        // Exact beats any prefix; a path below it is not exact.
        ("/orders/admin", &beta, &[], Some("test/exact")),
        ("/orders/admin/x", &[], &[], Some("test/prefix")),
        // More header matches beat fewer; headers beat query parameters.
        ("/orders/1", &beta, &[], Some("test/header")),
        ("/orders/1", &beta, &v2, Some("test/header")),
        ("/orders/1", &[], &v2, Some("test/query")),
        // Equal matches: the older route, as the gateway picks.
        ("/cart", &[], &[], Some("test/older")),
        ("/users", &[], &[], None),
    ];
    for (path, headers, query, want) in cases {
        let input = MatchInput {
            headers,
            query,
            route: None,
        };
        assert_eq!(
            snapshot
                .select_with("api.example.com", path, "GET", false, &input)
                .map(|p| &*p.policy.id),
            want,
            "{path} {headers:?} {query:?}"
        );
    }
}

#[test]
fn a_route_named_by_the_gateway_is_judged_only_by_its_own_policy() {
    let policies = attached(&[
        (
            "orders",
            "2026-01-01T00:00:00Z",
            "hostnames: [api.example.com]\nrules: [{name: read, matches: [{path: {value: /orders}, method: GET}]}, {name: write, matches: [{path: {value: /orders}}]}]",
        ),
        (
            "shadow",
            "2026-01-02T00:00:00Z",
            "hostnames: [api.example.com]\nrules: [{matches: [{path: {type: Exact, value: /orders/1}}]}]",
        ),
    ]);
    let plain = mk_policy(
        "plain",
        "{match: {hosts: [api.example.com], paths: [/orders/1]}}",
    );
    let mut refs: Vec<&Arc<Policy>> = policies.iter().collect();
    refs.push(&plain);
    let (snapshot, conflicts) = build(&refs);
    assert!(conflicts.is_empty(), "{conflicts:?}");
    let pick = |route: Option<RouteName>| {
        let input = MatchInput {
            route: route.as_ref(),
            ..MatchInput::default()
        };
        snapshot
            .select_with("api.example.com", "/orders/1", "POST", false, &input)
            .map(|p| p.policy.id.to_string())
    };
    let named = |name: &str, section: Option<&str>| {
        Some(RouteName {
            namespace: "test".into(),
            name: name.into(),
            section: section.map(str::to_string),
        })
    };
    // By host and path alone, the exact route wins.
    assert_eq!(pick(None).as_deref(), Some("test/shadow"));
    // The gateway says the request is on route orders: only its entries count.
    assert_eq!(pick(named("orders", None)).as_deref(), Some("test/orders"));
    assert_eq!(
        pick(named("orders", Some("write"))).as_deref(),
        Some("test/orders")
    );
    // Rule read is GET only: a POST on it matches none of its entries.
    assert_eq!(pick(named("orders", Some("read"))), None);
    // A route no policy is attached to: only `match` policies can judge it.
    assert_eq!(pick(named("other", None)).as_deref(), Some("test/plain"));
}

/// Policies `(namespace, name, targetRefs YAML)` attached to `routes` `(namespace, name,
/// created, spec YAML)` on `gateways` `(namespace, name, spec YAML)`, as the controller does.
fn attach_world(
    gateways: &[(&str, &str, &str)],
    routes: &[(&str, &str, &str, &str)],
    policies: &[(&str, &str, &str)],
) -> Vec<Arc<Policy>> {
    let compiled: Vec<Arc<Policy>> = policies
        .iter()
        .map(|(namespace, name, targets)| targeting(namespace, name, targets))
        .collect();
    attach_to(&compiled, gateways, routes)
}

#[test]
fn a_route_judged_by_two_listener_policies_is_refused_not_guessed() {
    // One route on two listeners of one Gateway, each listener with its own policy, and
    // hostnames in common: the gateway names the route, not the listener.
    let policies = attach_world(
        &[(
            "infra",
            "eg",
            "listeners: [{name: public, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}, {name: internal, protocol: HTTP, port: 8080, allowedRoutes: {namespaces: {from: All}}}]",
        )],
        &[(
            "shop",
            "orders",
            "2026-01-01T00:00:00Z",
            "parentRefs: [{name: eg, namespace: infra}]\nhostnames: [api.example.com]\nrules: [{matches: [{path: {value: /orders}}]}]",
        )],
        &[
            (
                "infra",
                "public",
                "[{group: gateway.networking.k8s.io, kind: Gateway, name: eg, sectionName: public}]",
            ),
            (
                "infra",
                "internal",
                "[{group: gateway.networking.k8s.io, kind: Gateway, name: eg, sectionName: internal}]",
            ),
        ],
    );
    let refs: Vec<&Arc<Policy>> = policies.iter().collect();
    let (snapshot, conflicts) = build(&refs);
    assert!(conflicts.is_empty(), "{conflicts:?}");
    let picked = snapshot
        .select_with(
            "api.example.com",
            "/orders/1",
            "GET",
            false,
            &MatchInput::default(),
        )
        .expect("picked");
    assert!(picked.ambiguous_with.is_some(), "{picked:?}");
}

#[test]
fn a_gateway_policy_and_a_team_policy_share_the_team_host() {
    // The platform team's Gateway policy judges every route of the Gateway; a team attaches a
    // stricter policy to one rule of its route. Both hold the host for the route's namespace.
    let policies = attach_world(
        &[(
            "infra",
            "eg",
            "listeners: [{name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}]",
        )],
        &[(
            "shop",
            "orders",
            "2026-01-01T00:00:00Z",
            "parentRefs: [{name: eg, namespace: infra}]\nhostnames: [api.example.com]\nrules: [{name: admin, matches: [{path: {value: /admin}}]}, {name: rest, matches: [{path: {value: /}}]}]",
        )],
        &[
            (
                "infra",
                "platform",
                "[{group: gateway.networking.k8s.io, kind: Gateway, name: eg}]",
            ),
            (
                "shop",
                "admin",
                "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: orders, sectionName: admin}]",
            ),
        ],
    );
    let refs: Vec<&Arc<Policy>> = policies.iter().collect();
    let (snapshot, conflicts) = build(&refs);
    assert!(conflicts.is_empty(), "{conflicts:?}");
    assert_eq!(
        snapshot.owner("api.example.com").map(|o| &**o),
        Some("shop")
    );
    assert_eq!(
        selected(&snapshot, "api.example.com", "/admin/users", "GET"),
        Some("shop/admin")
    );
    assert_eq!(
        selected(&snapshot, "api.example.com", "/orders", "GET"),
        Some("infra/platform")
    );
    // A match policy of another namespace cannot take the host.
    let intruder = Arc::new(
        compile_with(
            &crate::jwks::KeySources::offline().expect("client"),
            "other",
            "intruder",
            &spec_with("{match: {hosts: [api.example.com], paths: [/admin/users]}}"),
        )
        .expect("compiles"),
    );
    let mut with_intruder = refs.clone();
    with_intruder.push(&intruder);
    let (snapshot, conflicts) = build(&with_intruder);
    assert_eq!(conflicts.len(), 1);
    assert_eq!(&*conflicts[0].policy, "other/intruder");
    assert_eq!(
        selected(&snapshot, "api.example.com", "/admin/users", "GET"),
        Some("shop/admin")
    );
}

#[test]
fn route_entries_compare_methods_exactly_as_the_gateway_does() {
    // GET /files is public on one route; every other method of /files goes to a stricter one.
    let policies = attached(&[
        (
            "reads",
            "2026-01-01T00:00:00Z",
            "hostnames: [api.example.com]\nrules: [{matches: [{path: {value: /files}, method: GET}]}]",
        ),
        (
            "rest",
            "2026-01-02T00:00:00Z",
            "hostnames: [api.example.com]\nrules: [{matches: [{path: {value: /files}}]}]",
        ),
    ]);
    let refs: Vec<&Arc<Policy>> = policies.iter().collect();
    let (snapshot, _) = build(&refs);
    assert_eq!(
        selected(&snapshot, "api.example.com", "/files/1", "GET"),
        Some("test/reads")
    );
    // The gateway sends HEAD, a lower-case get, and OPTIONS to the route for every method.
    for method in ["HEAD", "get", "OPTIONS", "DELETE"] {
        assert_eq!(
            selected(&snapshot, "api.example.com", "/files/1", method),
            Some("test/rest"),
            "{method}"
        );
    }
}

mod precedence_model {
    //! Route-entry selection against a direct reading of Gateway API's precedence: among the
    //! entries that match, the exact path, then the longest prefix, then a method, then the most
    //! header matches, then the most query matches, then the oldest route (then namespace/name,
    //! rule and match order).
    use proptest::prelude::*;

    use super::*;

    const PATHS: [&str; 3] = ["/", "/a", "/a/b"];
    const METHODS: [&str; 3] = ["GET", "POST", "HEAD"];

    /// One rule match: (exact?, path index, method index or none, header x-h value or none,
    /// query q value or none).
    type Match = (bool, usize, Option<usize>, Option<u8>, Option<u8>);

    fn yaml(m: &Match) -> String {
        let (exact, path, method, header, query) = *m;
        let mut out = format!(
            "{{path: {{type: {}, value: '{}'}}",
            if exact { "Exact" } else { "PathPrefix" },
            PATHS[path]
        );
        if let Some(i) = method {
            out.push_str(&format!(", method: {}", METHODS[i]));
        }
        if let Some(v) = header {
            out.push_str(&format!(", headers: [{{name: x-h, value: '{v}'}}]"));
        }
        if let Some(v) = query {
            out.push_str(&format!(", queryParams: [{{name: q, value: '{v}'}}]"));
        }
        out.push('}');
        out
    }

    fn path_matches(m: &Match, path: &str) -> bool {
        let value = PATHS[m.1];
        if m.0 {
            return path == value;
        }
        value == "/"
            || path == value
            || path
                .strip_prefix(value)
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// The route (index) Gateway API picks, read directly from the specification.
    fn reference(
        routes: &[Vec<Match>],
        path: &str,
        method: &str,
        header: Option<u8>,
        query: Option<u8>,
    ) -> Option<usize> {
        /// (exact, prefix length, method, headers, queries): higher wins.
        type Rank = (bool, usize, bool, usize, usize);
        let mut best: Option<(Rank, (usize, usize), usize)> = None;
        for (r, matches) in routes.iter().enumerate() {
            for (i, m) in matches.iter().enumerate() {
                let ok = path_matches(m, path)
                    && m.2.is_none_or(|x| METHODS[x] == method)
                    && m.3.is_none_or(|v| header == Some(v))
                    && m.4.is_none_or(|v| query == Some(v));
                if !ok {
                    continue;
                }
                let rank = (
                    m.0,
                    PATHS[m.1].len(),
                    m.2.is_some(),
                    usize::from(m.3.is_some()),
                    usize::from(m.4.is_some()),
                );
                // Routes are created in index order: the lower index is older.
                let better = match &best {
                    None => true,
                    Some((b, order, _)) => rank > *b || (rank == *b && (r, i) < *order),
                };
                if better {
                    best = Some((rank, (r, i), r));
                }
            }
        }
        best.map(|(_, _, r)| r)
    }

    thread_local! {
        /// Policies r0..r3, each attached to the route of its name (compiled once).
        static COMPILED: Vec<Arc<Policy>> = (0..4)
            .map(|r| {
                mk_policy(
                    &format!("r{r}"),
                    &format!("{{targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r{r}}}]}}"),
                )
            })
            .collect();
    }

    fn arb_match() -> impl Strategy<Value = Match> {
        (
            any::<bool>(),
            0..PATHS.len(),
            proptest::option::of(0..METHODS.len()),
            proptest::option::of(0u8..2),
            proptest::option::of(0u8..2),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]
        #[test]
        fn route_entries_are_selected_as_gateway_api_orders_them(
            routes in proptest::collection::vec(proptest::collection::vec(arb_match(), 1..3), 1..5),
            path in 0..4usize,
            method in 0..METHODS.len(),
            header in proptest::option::of(0u8..2),
            query in proptest::option::of(0u8..2),
        ) {
            let request_paths = ["/a", "/a/b", "/ab", "/a/b/c"];
            let path = request_paths[path];
            let method = METHODS[method];
            let names: Vec<String> = (0..routes.len()).map(|r| format!("r{r}")).collect();
            let created: Vec<String> =
                (0..routes.len()).map(|r| format!("2026-01-0{}T00:00:00Z", r + 1)).collect();
            let specs: Vec<String> = routes
                .iter()
                .map(|matches| {
                    let rules: Vec<String> = matches.iter().map(yaml).collect();
                    format!(
                        "parentRefs: [{{name: eg}}]\nhostnames: [api.example.com]\nrules: [{{matches: [{}]}}]",
                        rules.join(", ")
                    )
                })
                .collect();
            let objects: Vec<(&str, &str, &str, &str)> = (0..routes.len())
                .map(|r| ("test", names[r].as_str(), created[r].as_str(), specs[r].as_str()))
                .collect();
            let policies: Vec<Arc<Policy>> =
                COMPILED.with(|compiled| compiled[..routes.len()].to_vec());
            let attached = attach_to(
                &policies,
                &[("test", "eg", "listeners: [{name: http, protocol: HTTP, port: 80}]")],
                &objects,
            );
            let (snapshot, conflicts) = Snapshot::build(attached, DefaultAction::Deny);
            prop_assert!(conflicts.is_empty());
            let headers: Vec<(String, String)> = header.iter().map(|v| ("x-h".to_string(), v.to_string())).collect();
            let queries: Vec<(String, String)> = query.iter().map(|v| ("q".to_string(), v.to_string())).collect();
            let input = MatchInput { headers: &headers, query: &queries, route: None };
            let got = snapshot
                .select_with("api.example.com", path, method, false, &input)
                .map(|p| p.policy.id.to_string());
            let want = reference(&routes, path, method, header, query).map(|r| format!("test/r{r}"));
            prop_assert_eq!(got, want, "{} {} h={:?} q={:?} routes={:?}", method, path, header, query, routes);
        }
    }
}

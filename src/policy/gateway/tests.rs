use super::*;

fn route(namespace: &str, name: &str, created: &str, yaml: &str) -> RouteObject {
    RouteObject {
        namespace: namespace.into(),
        name: name.into(),
        created: created.into(),
        spec: serde_yaml::from_str(yaml).expect("route spec"),
    }
}

fn gateway(namespace: &str, name: &str, yaml: &str) -> GatewayObject {
    GatewayObject {
        namespace: namespace.into(),
        name: name.into(),
        spec: serde_yaml::from_str(yaml).expect("gateway spec"),
    }
}

fn target(kind: &str, name: &str, section: Option<&str>) -> TargetRefSpec {
    TargetRefSpec {
        group: GROUP.into(),
        kind: kind.into(),
        name: name.into(),
        section_name: section.map(str::to_string),
    }
}

struct World {
    routes: BTreeMap<ObjectKey, RouteObject>,
    gateways: BTreeMap<ObjectKey, GatewayObject>,
}

impl World {
    fn new(routes: Vec<RouteObject>, gateways: Vec<GatewayObject>) -> Self {
        World {
            routes: routes
                .into_iter()
                .map(|r| ((r.namespace.clone(), r.name.clone()), r))
                .collect(),
            gateways: gateways
                .into_iter()
                .map(|g| ((g.namespace.clone(), g.name.clone()), g))
                .collect(),
        }
    }

    /// `(id, created, targets)` per policy, all in namespace `shop`.
    fn attach(
        &self,
        policies: &[(&str, &str, Vec<TargetRefSpec>)],
    ) -> HashMap<Arc<str>, Attachment> {
        let attachers: Vec<Attacher<'_>> = policies
            .iter()
            .map(|(id, created, targets)| Attacher {
                id: Arc::from(format!("shop/{id}")),
                namespace: "shop",
                created,
                targets,
            })
            .collect();
        attach(&attachers, &self.routes, &self.gateways)
    }
}

fn describe(entries: &[RouteEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| {
            let mut text = format!("{} {}", e.host, e.path);
            if !e.methods.is_all() {
                text.push_str(&format!(" {}", e.methods.as_slice().join(",")));
            }
            for (n, v) in &e.headers {
                text.push_str(&format!(" h:{n}={v}"));
            }
            for (n, v) in &e.query {
                text.push_str(&format!(" q:{n}={v}"));
            }
            text
        })
        .collect()
}

const GATEWAY: &str = "
listeners:
- {name: http, protocol: HTTP, port: 80, hostname: '*.example.com', allowedRoutes: {namespaces: {from: All}}}
- {name: admin, protocol: HTTP, port: 8080, hostname: admin.example.com}
";

fn shop_gateway() -> GatewayObject {
    gateway("infra", "eg", GATEWAY)
}

#[test]
fn a_route_derives_its_hosts_paths_methods_headers_and_query() {
    let world = World::new(
        vec![route(
            "shop",
            "orders",
            "2026-01-01T00:00:00Z",
            "
parentRefs: [{name: eg, namespace: infra, sectionName: http}]
hostnames: [api.example.com, other.org]
rules:
- matches:
  - path: {type: PathPrefix, value: /orders/}
    method: GET
  - path: {type: Exact, value: /health}
    headers: [{name: X-Version, value: '2'}]
    queryParams: [{name: debug, value: 'on'}]
- backendRefs: []
",
        )],
        vec![shop_gateway()],
    );
    let out = world.attach(&[(
        "p",
        "2026-01-02T00:00:00Z",
        vec![target("HTTPRoute", "orders", None)],
    )]);
    let attachment = &out["shop/p"];
    assert!(attachment.problems.is_empty(), "{:?}", attachment.problems);
    // other.org is outside the listener's *.example.com; the rule without matches is `/`.
    assert_eq!(
        describe(&attachment.entries),
        [
            "api.example.com /orders GET",
            "api.example.com /health (exact) h:x-version=2 q:debug=on",
            "api.example.com /",
        ]
    );
    assert_eq!(attachment.ancestors.len(), 1);
    let ancestor = &attachment.ancestors[0];
    assert_eq!(
        ancestor.ancestor,
        AncestorRef {
            kind: "Gateway".into(),
            namespace: "infra".into(),
            name: "eg".into(),
            section_name: Some("http".into()),
        }
    );
    assert!(
        ancestor.resolved.is_ok() && ancestor.accepted.is_ok(),
        "{ancestor:?}"
    );
}

#[test]
fn hostnames_intersect_as_gateway_api_says() {
    let cases: &[(&[&str], Option<&str>, &[&str])] = &[
        (&[], None, &["*"]),
        (&[], Some("*.example.com"), &["*.example.com"]),
        (&["a.example.com"], None, &["a.example.com"]),
        (
            &["a.example.com", "b.org"],
            Some("*.example.com"),
            &["a.example.com"],
        ),
        (
            &["*.example.com"],
            Some("a.example.com"),
            &["a.example.com"],
        ),
        (
            &["*.a.example.com"],
            Some("*.example.com"),
            &["*.a.example.com"],
        ),
        (
            &["*.example.com"],
            Some("*.a.example.com"),
            &["*.a.example.com"],
        ),
        (&["b.org"], Some("a.example.com"), &[]),
        (&["example.com"], Some("*.example.com"), &[]),
    ];
    for (route, listener, expected) in cases {
        let route: Vec<String> = route.iter().map(|s| s.to_string()).collect();
        let got: Vec<String> = intersect_hosts(&route, *listener)
            .iter()
            .map(|h| h.to_string())
            .collect();
        assert_eq!(got, *expected, "{route:?} ∩ {listener:?}");
    }
}

#[test]
fn a_match_that_cannot_be_judged_refuses_the_policy_with_the_reason() {
    for (rule, fragment) in [
        (
            "path: {type: RegularExpression, value: '/orders/[0-9]+'}",
            "RegularExpression path match",
        ),
        (
            "headers: [{type: RegularExpression, name: x-v, value: '.*'}]",
            "RegularExpression header match (x-v)",
        ),
        (
            "queryParams: [{type: RegularExpression, name: v, value: '.*'}]",
            "RegularExpression query parameter match (v)",
        ),
        (
            "queryParams: [{name: 'a+b', value: '1'}]",
            "names and values with % or +",
        ),
        ("path: {type: Exact, value: '/a/../b'}", "path \"/a/../b\""),
    ] {
        let world = World::new(
            vec![route(
                "shop",
                "orders",
                "2026-01-01T00:00:00Z",
                &format!(
                    "parentRefs: [{{name: eg, namespace: infra}}]\nhostnames: [api.example.com]\nrules:\n- matches:\n  - {rule}\n"
                ),
            )],
            vec![shop_gateway()],
        );
        let out = world.attach(&[(
            "p",
            "2026-01-02T00:00:00Z",
            vec![target("HTTPRoute", "orders", None)],
        )]);
        let attachment = &out["shop/p"];
        assert_eq!(attachment.problems.len(), 1, "{rule}");
        let problem = &attachment.problems[0];
        assert_eq!(problem.field, "spec.targetRefs[0]");
        assert_eq!(problem.kind, ProblemKind::UnsupportedRoute);
        assert!(
            problem.message.contains(fragment),
            "{rule}: {}",
            problem.message
        );
        assert!(
            problem
                .message
                .contains("HTTPRoute shop/orders rules[0].matches[0]"),
            "{}",
            problem.message
        );
        let (reason, _) = attachment.ancestors[0]
            .accepted
            .clone()
            .expect_err("not accepted");
        assert_eq!(reason, "Invalid");
    }
}

#[test]
fn the_most_specific_attachment_judges_a_rule_and_the_older_policy_wins_a_tie() {
    let world = World::new(
        vec![
            route(
                "shop",
                "orders",
                "2026-01-01T00:00:00Z",
                "
parentRefs: [{name: eg, namespace: infra}]
hostnames: [api.example.com]
rules:
- name: read
  matches: [{path: {type: PathPrefix, value: /orders}, method: GET}]
- name: write
  matches: [{path: {type: PathPrefix, value: /orders}}]
",
            ),
            route(
                "shop",
                "cart",
                "2026-01-01T00:00:00Z",
                "
parentRefs: [{name: eg, namespace: infra}]
hostnames: [api.example.com]
rules: [{matches: [{path: {type: PathPrefix, value: /cart}}]}]
",
            ),
        ],
        vec![shop_gateway()],
    );
    let out = world.attach(&[
        // Gateway-wide (routes from all namespaces attach to listener http).
        (
            "gw",
            "2026-01-01T00:00:00Z",
            vec![TargetRefSpec {
                ..target("Gateway", "eg", None)
            }],
        ),
        (
            "route",
            "2026-01-02T00:00:00Z",
            vec![target("HTTPRoute", "orders", None)],
        ),
        (
            "rule",
            "2026-01-03T00:00:00Z",
            vec![target("HTTPRoute", "orders", Some("write"))],
        ),
        (
            "younger",
            "2026-01-04T00:00:00Z",
            vec![target("HTTPRoute", "orders", None)],
        ),
    ]);
    assert_eq!(
        describe(&out["shop/rule"].entries),
        ["api.example.com /orders"]
    );
    assert_eq!(
        describe(&out["shop/route"].entries),
        ["api.example.com /orders GET"]
    );
    // The Gateway policy is in namespace shop here, so it targets shop/eg, which does not
    // exist: nothing.
    assert!(out["shop/gw"].entries.is_empty());
    assert_eq!(
        out["shop/gw"].ancestors[0]
            .accepted
            .clone()
            .expect_err("missing")
            .0,
        "TargetNotFound"
    );
    let younger = &out["shop/younger"];
    assert!(younger.entries.is_empty());
    let (reason, message) = younger.ancestors[0]
        .accepted
        .clone()
        .expect_err("conflicted");
    assert_eq!(reason, "Conflicted");
    assert!(message.contains("shop/route"), "{message}");
    // The route policy's status says which rule a more specific policy judges.
    let route_message = out["shop/route"].ancestors[0]
        .accepted
        .clone()
        .expect("accepted");
    assert!(
        route_message.contains("shop/orders rule write (judged by shop/rule)"),
        "{route_message}"
    );
}

#[test]
fn a_gateway_policy_judges_the_routes_of_its_listener_that_no_route_policy_judges() {
    // Gateway and policies in one namespace.
    let world = World::new(
        vec![
            route(
                "shop",
                "orders",
                "2026-01-01T00:00:00Z",
                "parentRefs: [{name: eg}]\nhostnames: [api.example.com]\nrules: [{matches: [{path: {value: /orders}}]}]\n",
            ),
            route(
                "shop",
                "admin",
                "2026-01-01T00:00:00Z",
                "parentRefs: [{name: eg, sectionName: admin}]\nrules: [{matches: [{path: {value: /}}]}]\n",
            ),
            route(
                "elsewhere",
                "foreign",
                "2026-01-01T00:00:00Z",
                "parentRefs: [{name: eg, namespace: shop, sectionName: admin}]\nrules: [{}]\n",
            ),
        ],
        vec![gateway("shop", "eg", GATEWAY)],
    );
    let out = world.attach(&[
        (
            "listener",
            "2026-01-01T00:00:00Z",
            vec![target("Gateway", "eg", Some("admin"))],
        ),
        (
            "all",
            "2026-01-02T00:00:00Z",
            vec![target("Gateway", "eg", None)],
        ),
    ]);
    // admin's listener takes routes of its own namespace only: elsewhere/foreign is not there.
    assert_eq!(
        describe(&out["shop/listener"].entries),
        ["admin.example.com /"]
    );
    assert_eq!(
        describe(&out["shop/all"].entries),
        ["api.example.com /orders"]
    );
}

#[test]
fn status_says_when_a_route_is_missing_or_attaches_nowhere() {
    let world = World::new(
        vec![
            route(
                "shop",
                "lost",
                "2026-01-01T00:00:00Z",
                "parentRefs: [{name: nowhere}]\nrules: []\n",
            ),
            route(
                "shop",
                "refused",
                "2026-01-01T00:00:00Z",
                "parentRefs: [{name: eg, namespace: infra, sectionName: admin}]\nrules: []\n",
            ),
        ],
        vec![shop_gateway()],
    );
    let out = world.attach(&[(
        "p",
        "2026-01-01T00:00:00Z",
        vec![
            target("HTTPRoute", "missing", None),
            target("HTTPRoute", "lost", None),
            target("HTTPRoute", "refused", None),
            target("HTTPRoute", "lost", Some("nope")),
        ],
    )]);
    let attachment = &out["shop/p"];
    assert!(attachment.entries.is_empty());
    let reasons: Vec<(&str, &str)> = attachment
        .ancestors
        .iter()
        .map(|a| {
            (
                a.resolved.as_ref().err().map_or("ok", |e| e.0),
                a.accepted.as_ref().err().map_or("ok", |e| e.0),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("TargetNotFound", "TargetNotFound"),
            ("ParentNotFound", "ParentNotFound"),
            ("NotAttached", "NotAttached"),
            ("TargetNotFound", "TargetNotFound"),
        ]
    );
    let refused = attachment.ancestors[2]
        .resolved
        .clone()
        .expect_err("refused")
        .1;
    assert!(
        refused.contains("takes routes of namespace infra only"),
        "{refused}"
    );
}

#[test]
fn a_listener_choosing_namespaces_by_selector_attaches_nothing_and_says_why() {
    let world = World::new(
        vec![route(
            "shop",
            "orders",
            "2026-01-01T00:00:00Z",
            "parentRefs: [{name: eg, namespace: infra}]\nrules: [{}]\n",
        )],
        vec![gateway(
            "infra",
            "eg",
            "listeners: [{name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: Selector}}}]",
        )],
    );
    let out = world.attach(&[(
        "p",
        "2026-01-01T00:00:00Z",
        vec![target("HTTPRoute", "orders", None)],
    )]);
    let attachment = &out["shop/p"];
    assert!(attachment.entries.is_empty());
    // Whether the route attaches cannot be known: the policy is refused, not guessed.
    assert_eq!(attachment.problems.len(), 1);
    assert_eq!(attachment.problems[0].field, "spec.targetRefs[0]");
    assert!(
        attachment.problems[0].message.contains("by Selector"),
        "{:?}",
        attachment.problems
    );
    let (reason, message) = attachment.ancestors[0]
        .accepted
        .clone()
        .expect_err("selector");
    assert_eq!(reason, "Invalid");
    assert!(message.contains("by Selector"), "{message}");
}

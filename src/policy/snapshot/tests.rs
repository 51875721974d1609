use super::*;
use crate::fixtures::*;

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

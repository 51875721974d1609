use serde_json::{Value, json};

use super::*;
use crate::fixtures::*;
use crate::policy::compile::{CompileError, ProblemKind};
use crate::policy::{ConflictKind, DefaultAction, Policy, ResourceEntry, Snapshot};

fn compiled(extra: &str) -> Arc<ProtectedResource> {
    let policy = try_compile("mcp", &spec_with(extra)).expect("policy compiles");
    policy.resource.clone().expect("a resource")
}

fn document(extra: &str) -> Value {
    serde_json::from_str(&compiled(extra).document).expect("JSON document")
}

fn problems(extra: &str) -> Vec<(String, String)> {
    let error: CompileError = try_compile("mcp", &spec_with(extra)).expect_err("refused");
    error
        .problems
        .into_iter()
        .map(|p| (p.field, p.message))
        .collect()
}

#[test]
fn the_well_known_url_inserts_the_suffix_between_host_and_path() {
    // RFC 9728 §3.1, with its own examples: a path is kept after the suffix; a resource
    // without path (or with only "/") has the bare well-known path.
    let cases = [
        (
            "https://api.example.com/orders",
            "/.well-known/oauth-protected-resource/orders",
            "https://api.example.com/.well-known/oauth-protected-resource/orders",
        ),
        (
            "https://api.example.com",
            "/.well-known/oauth-protected-resource",
            "https://api.example.com/.well-known/oauth-protected-resource",
        ),
        (
            "https://api.example.com/",
            "/.well-known/oauth-protected-resource",
            "https://api.example.com/.well-known/oauth-protected-resource",
        ),
        (
            "https://api.example.com:8443/v1/mcp",
            "/.well-known/oauth-protected-resource/v1/mcp",
            "https://api.example.com:8443/.well-known/oauth-protected-resource/v1/mcp",
        ),
    ];
    for (resource, path, url) in cases {
        let r = compiled(&format!("{{resourceMetadata: {{resource: '{resource}'}}}}"));
        assert_eq!(r.host, "api.example.com", "{resource}");
        assert_eq!(r.path, path, "{resource}");
        assert_eq!(r.metadata_url, url, "{resource}");
        assert_eq!(r.resource, resource, "the identifier is kept as written");
    }
}

#[test]
fn the_document_uses_rfc_9728_member_names() {
    let doc = document(
        "{resourceMetadata: {resource: 'https://api.example.com/mcp', scopesSupported: [mcp.read, mcp.write], resourceName: Orders MCP, resourceDocumentation: 'https://docs.example.com/mcp'}}",
    );
    assert_eq!(
        doc,
        json!({
            "resource": "https://api.example.com/mcp",
            "authorization_servers": [ISSUER],
            "scopes_supported": ["mcp.read", "mcp.write"],
            "bearer_methods_supported": ["header"],
            "resource_name": "Orders MCP",
            "resource_documentation": "https://docs.example.com/mcp",
        })
    );
    // Optional members are left out, never null.
    let bare = document("{resourceMetadata: {resource: 'https://api.example.com'}}");
    let keys: Vec<&str> = bare
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "authorization_servers",
            "bearer_methods_supported",
            "resource"
        ]
    );
}

#[test]
fn bearer_methods_follow_where_the_token_is_read() {
    let cases = [
        ("{}", json!(["header"])),
        ("{scheme: bearer}", json!(["header"])),
        ("{query: access_token}", json!(["header", "query"])),
        // Not RFC 6750's methods: another header, scheme or parameter, a cookie.
        ("{header: x-api-token, query: token}", json!([])),
        ("{scheme: DPoP}", json!([])),
        ("{header: x-token, cookie: session}", json!([])),
    ];
    for (token, want) in cases {
        let doc = document(&format!(
            "{{token: {token}, resourceMetadata: {{resource: 'https://api.example.com/mcp'}}}}"
        ));
        assert_eq!(doc["bearer_methods_supported"], want, "token: {token}");
    }
}

#[test]
fn authorization_servers_default_to_the_issuers_that_clients_can_discover() {
    // An https issuer is its own authorization server (listed once); a non-URL issuer (an
    // internal shared-secret one) is none; a plain-http one only where the policy allows
    // plain http for it (development); an Azure v1 issuer stands for the tenant's v2.0 one.
    let tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    let spec = spec(&format!(
        r#"{{issuers: [
            {{issuer: "https://idp.example.com/", audiences: [a]}},
            {{issuer: internal, audiences: [a]}},
            {{issuer: "http://127.0.0.1:8080", audiences: [a], allowInsecureHttp: true}},
            {{issuer: "http://plain.example.com", audiences: [a]}},
            {{issuer: "https://sts.windows.net/{tenant}/", audiences: [a]}},
            {{issuer: "https://idp.example.com/", audiences: [b]}}]}}"#
    ));
    let issuers: Vec<Issuer> = spec
        .issuers
        .iter()
        .map(|i| Issuer {
            issuer: i.issuer.clone(),
            audiences: i.audiences.clone(),
            algorithms: Vec::new(),
            keys: crate::jwks::KeySource::fixed("test", crate::jwks::KeySet::default()),
            azure: crate::azure::classify(&i.issuer),
            max_lifetime: None,
            tenant: None,
            ca_bundle: None,
        })
        .collect();
    assert_eq!(
        default_servers(&spec, &issuers),
        [
            "https://idp.example.com/".to_string(),
            "http://127.0.0.1:8080".to_string(),
            format!("https://login.microsoftonline.com/{tenant}/v2.0"),
        ]
    );
}

#[test]
fn azure_issuers_stand_for_the_tenants_v2_authorization_server() {
    let tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    for versions in ["[v1]", "[v2]", "[v1, v2]"] {
        let policy = try_compile(
            "azure",
            &spec(&format!(
                "{{azureAd: {{tenantId: {tenant}, versions: {versions}, audiences: [api://orders]}}, resourceMetadata: {{resource: 'https://api.example.com/mcp'}}}}"
            )),
        )
        .expect("compiles");
        let doc: Value =
            serde_json::from_str(&policy.resource.expect("resource").document).expect("json");
        assert_eq!(
            doc["authorization_servers"],
            json!([format!("https://login.microsoftonline.com/{tenant}/v2.0")]),
            "versions {versions}"
        );
    }
}

#[test]
fn explicit_authorization_servers_are_checked_and_unknown_ones_warned_about() {
    let policy = try_compile(
        "mcp",
        &spec_with("{resourceMetadata: {resource: 'https://api.example.com/mcp', authorizationServers: ['https://as.example.net']}}"),
    )
    .expect("compiles");
    let doc: Value =
        serde_json::from_str(&policy.resource.as_ref().expect("r").document).expect("json");
    assert_eq!(
        doc["authorization_servers"],
        json!(["https://as.example.net"])
    );
    let warning = policy
        .warnings
        .iter()
        .find(|w| w.field == "spec.resourceMetadata.authorizationServers[0]")
        .expect("a warning for an authorization server that is not an issuer");
    assert_eq!(warning.kind, ProblemKind::Warning);
    // The policy's own issuer: no warning.
    let policy = try_compile(
        "mcp",
        &spec_with(&format!("{{resourceMetadata: {{resource: 'https://api.example.com/mcp', authorizationServers: ['{ISSUER}']}}}}")),
    )
    .expect("compiles");
    assert!(policy.warnings.is_empty(), "{:?}", policy.warnings);
}

#[test]
fn invalid_declarations_are_refused_with_their_field() {
    let field = "spec.resourceMetadata.resource";
    let servers = "spec.resourceMetadata.authorizationServers";
    let cases: [(&str, &str, &str); 16] = [
        ("{resource: 'http://api.example.com/mcp'}", field, "https"),
        ("{resource: 'api.example.com/mcp'}", field, "https"),
        (
            "{resource: 'https://api.example.com/mcp#top'}",
            field,
            "fragment",
        ),
        (
            "{resource: 'https://api.example.com/mcp?v=1'}",
            field,
            "query",
        ),
        (
            "{resource: 'https://API.example.com/mcp'}",
            field,
            "lower case",
        ),
        (
            "{resource: 'https://api.example.com:443/mcp'}",
            field,
            ":443",
        ),
        (
            "{resource: 'https://user@api.example.com/mcp'}",
            field,
            "credentials",
        ),
        (
            "{resource: 'https://api.example.com/a/../mcp'}",
            field,
            "dot segments",
        ),
        (
            "{resource: 'https://api.example.com/a//mcp'}",
            field,
            "dot segments",
        ),
        (
            "{resource: 'https://api.example.com/m\"cp'}",
            field,
            "characters",
        ),
        (
            "{resource: 'https://other.example.com/mcp'}",
            field,
            "spec.match.hosts",
        ),
        (
            "{resource: 'https://api.example.com/mcp', authorizationServers: ['http://as.example.net']}",
            "spec.resourceMetadata.authorizationServers[0]",
            "https",
        ),
        (
            "{resource: 'https://api.example.com/mcp', authorizationServers: ['https://as.example.net/?x=1']}",
            "spec.resourceMetadata.authorizationServers[0]",
            "query",
        ),
        (
            "{resource: 'https://api.example.com/mcp', authorizationServers: ['https://a.example.net', 'https://a.example.net']}",
            "spec.resourceMetadata.authorizationServers[1]",
            "twice",
        ),
        (
            "{resource: 'https://api.example.com/mcp', scopesSupported: ['mcp read']}",
            "spec.resourceMetadata.scopesSupported[0]",
            "not a scope",
        ),
        (
            "{resource: 'https://api.example.com/mcp', resourceDocumentation: 'http://docs.example.com'}",
            "spec.resourceMetadata.resourceDocumentation",
            "https",
        ),
    ];
    for (declaration, want_field, want) in cases {
        let found = problems(&format!(
            "{{match: {{hosts: [api.example.com, API.example.com]}}, resourceMetadata: {declaration}}}"
        ));
        assert!(
            found
                .iter()
                .any(|(f, m)| f == want_field && m.contains(want)),
            "{declaration}: want {want_field} ~ {want:?}, got {found:?}"
        );
    }
    // No issuer a client could discover, and no list: refused rather than an empty list.
    let found = problems(
        "{issuers: [{issuer: internal, audiences: [a], jwks: {keys: []}}], resourceMetadata: {resource: 'https://api.example.com/mcp'}}",
    );
    assert!(found.iter().any(|(f, _)| f == servers), "{found:?}");
}

#[test]
fn a_resource_on_a_wildcard_host_of_the_policy_compiles() {
    let r = compiled(
        "{match: {hosts: ['*.example.com']}, resourceMetadata: {resource: 'https://api.example.com/mcp'}}",
    );
    assert_eq!(r.host, "api.example.com");
}

fn declaring(namespace: &str, name: &str, extra: &str) -> Arc<Policy> {
    Arc::new(
        compile_with(
            &crate::jwks::KeySources::offline().expect("client"),
            namespace,
            name,
            &spec_with(extra),
        )
        .expect("policy compiles"),
    )
}

const MCP: &str = "{match: {hosts: [api.example.com], paths: [/mcp]}, resourceMetadata: {resource: 'https://api.example.com/mcp'}}";

#[test]
fn the_snapshot_finds_the_document_by_exact_host_and_path() {
    let policy = declaring("shop", "mcp", MCP);
    let (snapshot, conflicts) = Snapshot::build(vec![policy], DefaultAction::Deny);
    assert!(conflicts.is_empty(), "{conflicts:?}");
    let path = "/.well-known/oauth-protected-resource/mcp";
    assert!(matches!(
        snapshot.resource("api.example.com", path),
        Some(ResourceEntry::Served(p)) if &*p.id == "shop/mcp"
    ));
    for (host, path) in [
        ("other.example.com", path),
        ("api.example.com", "/.well-known/oauth-protected-resource"),
        (
            "api.example.com",
            "/.well-known/oauth-protected-resource/mcp/x",
        ),
        (
            "api.example.com",
            "/.well-known/oauth-protected-resource/MCP",
        ),
        ("api.example.com", "/mcp"),
    ] {
        assert!(
            snapshot.resource(host, path).is_none(),
            "{host}{path} is not the declared URL"
        );
    }
}

#[test]
fn two_policies_with_the_same_document_share_it_and_different_ones_conflict() {
    // The same resource split over two policies (reads and writes): one document.
    let reads = declaring("shop", "reads", MCP);
    let writes = declaring(
        "shop",
        "writes",
        "{match: {hosts: [api.example.com], paths: [/mcp/tools]}, resourceMetadata: {resource: 'https://api.example.com/mcp'}}",
    );
    let (snapshot, conflicts) =
        Snapshot::build(vec![reads.clone(), writes.clone()], DefaultAction::Deny);
    assert!(conflicts.is_empty(), "{conflicts:?}");
    let path = "/.well-known/oauth-protected-resource/mcp";
    assert!(matches!(
        snapshot.resource("api.example.com", path),
        Some(ResourceEntry::Served(p)) if &*p.id == "shop/reads"
    ));

    let other = declaring(
        "shop",
        "other",
        "{match: {hosts: [api.example.com], paths: [/mcp/admin]}, resourceMetadata: {resource: 'https://api.example.com/mcp', scopesSupported: [admin]}}",
    );
    let (snapshot, conflicts) = Snapshot::build(
        vec![reads.clone(), writes.clone(), other.clone()],
        DefaultAction::Deny,
    );
    match snapshot.resource("api.example.com", path) {
        Some(ResourceEntry::Conflicted(ids)) => {
            assert_eq!(
                ids.iter().map(|i| &**i).collect::<Vec<_>>(),
                ["shop/reads", "shop/writes", "shop/other"]
            );
        }
        found => panic!("expected a conflict, got {found:?}"),
    }
    // Every policy involved is told, and every one keeps serving its requests.
    let mut told: Vec<&str> = conflicts.iter().map(|c| &*c.policy).collect();
    told.sort();
    assert_eq!(told, ["shop/other", "shop/reads", "shop/writes"]);
    assert!(
        conflicts
            .iter()
            .all(|c| c.kind == ConflictKind::Resource && c.keeps_serving())
    );
    assert_eq!(snapshot.len(), 3);
    let text = conflicts[0].to_string();
    assert!(
        text.contains("https://api.example.com/.well-known/oauth-protected-resource/mcp"),
        "{text}"
    );
}

#[test]
fn a_resource_claims_its_host_for_the_namespace() {
    // A `*` policy of one namespace declares a resource on a host; a newer policy of another
    // namespace naming that host is left out, so it cannot answer for it.
    let any = declaring(
        "team-a",
        "mcp",
        "{resourceMetadata: {resource: 'https://api.example.com/mcp'}}",
    );
    let other = declaring(
        "team-b",
        "mcp",
        "{match: {hosts: [api.example.com]}, resourceMetadata: {resource: 'https://api.example.com/mcp', scopesSupported: [x]}}",
    );
    let (snapshot, conflicts) = Snapshot::build(vec![any, other], DefaultAction::Deny);
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(&*conflicts[0].policy, "team-b/mcp");
    assert_eq!(conflicts[0].kind, ConflictKind::Host);
    assert_eq!(
        snapshot.owner("api.example.com").map(|o| &**o),
        Some("team-a")
    );
    assert!(matches!(
        snapshot.resource("api.example.com", "/.well-known/oauth-protected-resource/mcp"),
        Some(ResourceEntry::Served(p)) if &*p.id == "team-a/mcp"
    ));
}

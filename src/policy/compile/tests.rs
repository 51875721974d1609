use super::*;
use crate::fixtures::*;

fn problems(yaml: &str) -> Vec<String> {
    let spec: JwtPolicySpec = serde_yaml::from_str(yaml).expect("yaml");
    match try_compile("p", &spec) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect(),
    }
}

fn assert_problem(yaml: &str, field: &str, fragment: &str) {
    let found = problems(yaml);
    assert!(
        found
            .iter()
            .any(|p| p.starts_with(field) && p.contains(fragment)),
        "expected {field} ~ {fragment:?} in {found:?}"
    );
}

const JWKS_ISSUER: &str =
    "issuers: [{issuer: https://idp/, audiences: [a], jwksUri: https://idp/keys}]";

#[test]
fn a_complete_policy_compiles() {
    let policy = mk_policy(
        "orders",
        r#"{match: {hosts: ["API.example.com", "*.example.org"], paths: ["/orders/"], methods: [get, POST]},
            token: {header: X-Token, scheme: "", query: access_token, cookie: at},
            requiredClaims: [{name: scp, match: all, separator: " ", values: [a, 1, true]}],
            rules: [{paths: [/orders/admin], methods: [DELETE], requiredClaims: [{name: roles, values: [admin]}]},
                    {paths: [/orders/healthz], allowAnonymous: true}],
            clockSkew: 2m, requireExpirationTime: false,
            forward: {claimsToHeaders: [{claim: sub, header: X-User}], payloadHeader: x-jwt, keepToken: false},
            deny: {status: 403, message: "no", detail: none, realm: orders}}"#,
    );
    assert_eq!(&*policy.id, "test/orders");
    assert_eq!(policy.hosts.len(), 2);
    assert_eq!(policy.paths[0].as_str(), "/orders");
    assert_eq!(policy.methods.as_slice(), ["GET", "POST"]);
    assert_eq!(policy.token.header, "x-token");
    assert_eq!(policy.token.scheme, None);
    assert_eq!(policy.required_claims[0].values, ["a", "1", "true"]);
    assert_eq!(policy.clock_skew, 120);
    assert!(!policy.require_exp);
    assert_eq!(
        policy.forward.claims_to_headers,
        [("sub".to_string(), "x-user".to_string())]
    );
    assert!(!policy.forward.keep_token);
    assert_eq!(policy.deny.status, 403);
    assert_eq!(
        policy.issuers[0].algorithms.len(),
        9,
        "all asymmetric algorithms by default"
    );
    assert!(
        policy
            .rule_for("/orders/healthz/x", "GET", false)
            .is_some_and(|r| r.allow_anonymous)
    );
    assert!(policy.rule_for("/orders/admin", "GET", false).is_none());
    assert!(
        policy
            .rule_for("/orders/admin/1", "DELETE", false)
            .is_some_and(|r| !r.requirements.is_empty())
    );
}

#[test]
fn defaults() {
    let policy = mk_policy("p", "");
    assert_eq!(policy.hosts, [HostPattern::Any]);
    assert!(policy.paths.is_empty());
    assert_eq!(policy.token.header, "authorization");
    assert_eq!(policy.token.scheme.as_deref(), Some("Bearer"));
    assert_eq!(policy.clock_skew, 30);
    assert!(policy.require_exp);
    assert!(policy.forward.keep_token);
    assert_eq!(policy.deny.status, 401);
    assert_eq!(policy.deny.detail, DenyDetail::Reason);
}

#[test]
fn bad_specs_name_the_field_and_the_fix() {
    let cases = [
        ("issuers: []", "spec.issuers", "at least one issuer"),
        (
            "issuers: [{issuer: https://idp/, jwksUri: https://idp/keys}]",
            "spec.issuers[0].audiences",
            "list the audiences",
        ),
        (
            "issuers: [{issuer: https://idp/, audiences: [a], jwksUri: http://idp/keys}]",
            "spec.issuers[0].jwksUri",
            "plain http",
        ),
        (
            "issuers: [{issuer: https://idp/, audiences: [a], jwksUri: ftp://idp/keys}]",
            "spec.issuers[0].jwksUri",
            "not supported",
        ),
        (
            "issuers: [{issuer: https://idp/, audiences: [a], jwksUri: 'https://u:p@idp/keys'}]",
            "spec.issuers[0].jwksUri",
            "credentials",
        ),
        (
            "issuers: [{issuer: not-a-url, audiences: [a]}]",
            "spec.issuers[0].issuer",
            "not a URL",
        ),
        (
            "issuers: [{issuer: https://idp/, audiences: [a], jwksUri: https://idp/k, discovery: https://idp/d}]",
            "spec.issuers[0]",
            "exactly one source",
        ),
        (
            "issuers: [{issuer: https://idp/, audiences: [a], jwksUri: https://idp/k, algorithms: [none]}]",
            "spec.issuers[0].algorithms[0]",
            "never accepted",
        ),
        (
            "issuers: [{issuer: https://idp/, audiences: [a], jwksUri: https://idp/k, algorithms: [HS256]}]",
            "spec.issuers[0].algorithms[0]",
            "needs a sharedSecret",
        ),
        (
            "issuers: [{issuer: https://idp/, audiences: [a], jwksUri: https://idp/k, algorithms: [RS1]}]",
            "spec.issuers[0].algorithms[0]",
            "not supported",
        ),
        (
            "issuers: [{issuer: https://idp/, audiences: [a], sharedSecret: {file: /nonexistent/secret}}]",
            "spec.issuers[0].sharedSecret",
            "/nonexistent/secret",
        ),
        (
            "issuers: [{issuer: https://idp/, audiences: [a], jwks: {keys: [{kty: oct, k: abc}]}}]",
            "spec.issuers[0].jwks",
            "symmetric",
        ),
        (
            "issuers: [{issuer: https://idp/, audiences: [a], publicKeys: [{pem: nope}]}]",
            "spec.issuers[0].publicKeys[0]",
            "PEM",
        ),
        (
            "issuers: [{issuer: https://idp/, audiences: [a], jwksUri: https://idp/k}, {issuer: https://idp/, audiences: [a], jwksUri: https://idp/k}]",
            "spec.issuers[1].issuer",
            "twice",
        ),
    ];
    for (yaml, field, fragment) in cases {
        assert_problem(yaml, field, fragment);
    }
    let with = |extra: &str| format!("{JWKS_ISSUER}\n{extra}");
    let cases = [
        (
            "match: {hosts: ['a.*.com']}",
            "spec.match.hosts[0]",
            "wildcard",
        ),
        (
            "match: {hosts: ['api.example.com:443']}",
            "spec.match.hosts[0]",
            "port",
        ),
        (
            "match: {paths: [orders]}",
            "spec.match.paths[0]",
            "start with /",
        ),
        (
            "match: {methods: ['GE T']}",
            "spec.match.methods",
            "not an HTTP method",
        ),
        (
            "token: {scheme: 'Bear er'}",
            "spec.token.scheme",
            "one token",
        ),
        (
            "token: {header: 'bad header'}",
            "spec.token.header",
            "not a valid header",
        ),
        ("clockSkew: 1h", "spec.clockSkew", "10m maximum"),
        ("clockSkew: 10m1ms", "spec.clockSkew", "10m maximum"),
        ("clockSkew: soon", "spec.clockSkew", "not a duration"),
        (
            "rules: [{paths: [/a]}]",
            "spec.rules[0]",
            "needs requiredClaims, when, or allowAnonymous",
        ),
        (
            "rules: [{paths: [/a], allowAnonymous: true, requiredClaims: [{name: x}]}]",
            "spec.rules[0]",
            "contradict",
        ),
        (
            "requiredClaims: [{name: ''}]",
            "spec.requiredClaims[0].name",
            "empty",
        ),
        (
            "requiredClaims: [{name: scp, separator: ''}]",
            "spec.requiredClaims[0].separator",
            "empty",
        ),
        (
            "forward: {claimsToHeaders: [{claim: sub, header: Host}]}",
            "spec.forward.claimsToHeaders[0].header",
            "cannot be set",
        ),
        (
            "forward: {claimsToHeaders: [{claim: sub, header: authorization}]}",
            "spec.forward.claimsToHeaders[0].header",
            "where the token is read",
        ),
        (
            "forward: {claimsToHeaders: [{claim: sub, header: x-a}, {claim: oid, header: X-A}]}",
            "spec.forward.claimsToHeaders[1].header",
            "set twice",
        ),
        (
            "forward: {payloadHeader: 'x y'}",
            "spec.forward.payloadHeader",
            "not a valid header",
        ),
        ("deny: {status: 500}", "spec.deny.status", "4xx"),
        ("deny: {realm: 'a\"b'}", "spec.deny.realm", "quotes"),
    ];
    for (extra, field, fragment) in cases {
        assert_problem(&with(extra), field, fragment);
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let found = problems(
        "issuers: [{issuer: https://idp/, jwksUri: http://idp/k}]\nclockSkew: 1h\ndeny: {status: 200}",
    );
    assert_eq!(found.len(), 4, "{found:?}");
}

#[test]
fn names_must_be_kubernetes_names() {
    let sources = KeySources::offline().expect("client");
    let err =
        compile_with(&sources, "Bad_NS", "Orders", &spec_with("")).expect_err("invalid names");
    assert_eq!(err.problems.len(), 2);
    assert_eq!(err.reason(), "InvalidSpec");
}

#[test]
fn a_missing_secret_is_its_own_reason() {
    let spec: JwtPolicySpec = serde_yaml::from_str(
        "issuers: [{issuer: https://idp/, audiences: [a], sharedSecret: {file: /nonexistent/x}}]",
    )
    .expect("yaml");
    assert_eq!(
        try_compile("p", &spec).expect_err("missing").reason(),
        "SecretNotFound"
    );
}

#[test]
fn unknown_fields_are_refused_not_ignored() {
    // A misspelt requiredClaims must not silently drop a check.
    let result: Result<JwtPolicySpec, _> =
        serde_yaml::from_str(&format!("{JWKS_ISSUER}\nrequiredClaim: [{{name: scp}}]"));
    let err = result.expect_err("unknown field").to_string();
    assert!(err.contains("requiredClaim"), "{err}");
}

#[test]
fn remote_sources_are_shared_by_origin() {
    let sources = KeySources::offline().expect("client");
    let spec: JwtPolicySpec = serde_yaml::from_str(JWKS_ISSUER).expect("yaml");
    let a = compile_with(&sources, "ns", "a", &spec).expect("a");
    let b = compile_with(&sources, "ns", "b", &spec).expect("b");
    assert!(Arc::ptr_eq(&a.issuers[0].keys, &b.issuers[0].keys));
    assert_eq!(sources.live().len(), 1);
    drop((a, b));
    assert_eq!(
        sources.live().len(),
        0,
        "a source no policy uses is released"
    );
}

#[test]
fn discovery_is_the_default_source() {
    let spec: JwtPolicySpec =
        serde_yaml::from_str("issuers: [{issuer: https://idp.example/tenant/, audiences: [a]}]")
            .expect("yaml");
    let policy = try_compile("p", &spec).expect("compiles");
    match policy.issuers[0].keys.origin() {
        crate::jwks::Origin::Discovery { url, issuer, .. } => {
            assert_eq!(
                url.as_str(),
                "https://idp.example/tenant/.well-known/openid-configuration"
            );
            assert_eq!(issuer, "https://idp.example/tenant/");
        }
        other => panic!("unexpected origin {other:?}"),
    }
}

#[test]
fn rules_that_can_never_apply_are_warned_about() {
    let policy = mk_policy(
        "warned",
        r#"{match: {paths: [/orders], methods: [GET, POST]},
            rules: [{paths: [/billing], allowAnonymous: true},
                    {paths: [/orders/a], methods: [DELETE], allowAnonymous: true},
                    {paths: [/orders/b], methods: [GET], requiredClaims: [{name: roles, values: [x]}]},
                    {paths: [/orders/b], methods: [GET], allowAnonymous: true},
                    {paths: [/orders/c], allowAnonymous: true},
                    {paths: [/orders/c], methods: [GET], requiredClaims: [{name: roles, values: [x]}]},
                    {paths: [/], requiredClaims: [{name: roles, values: [y]}]}]}"#,
    );
    let warnings: Vec<String> = policy
        .warnings
        .iter()
        .map(|w| format!("{}: {}", w.field, w.message))
        .collect();
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    assert!(warnings[0].starts_with("spec.rules[0].paths[0]: /billing is outside match.paths"));
    assert!(warnings[1].starts_with("spec.rules[1].methods: the policy judges only GET, POST"));
    assert!(warnings[2].starts_with("spec.rules[3]: spec.rules[2] has the same paths"));
    // A rule naming a method over an earlier one for all methods, and the root rule covering
    // the policy's paths, both apply: no warning for them.
    assert!(
        policy
            .warnings
            .iter()
            .all(|w| w.kind == ProblemKind::Warning)
    );
}

#[test]
fn path_patterns_are_refused_with_the_prefix_semantics() {
    assert_problem(
        &format!("{{{JWKS_ISSUER}, match: {{paths: [\"/orders/admin/*\"]}}}}"),
        "spec.match.paths[0]",
        "not a pattern here: paths are literal prefixes",
    );
    assert_problem(
        &format!(
            "{{{JWKS_ISSUER}, rules: [{{paths: [\"/orders/{{id}}\"], allowAnonymous: true}}]}}"
        ),
        "spec.rules[0].paths[0]",
        "not a pattern here",
    );
    assert_problem(
        &format!("{{{JWKS_ISSUER}, rules: [{{paths: [/orders/../admin], allowAnonymous: true}}]}}"),
        "spec.rules[0].paths[0]",
        "could never match",
    );
}

#[test]
fn target_refs_are_checked_and_exclude_match() {
    let ok = try_compile(
        "t",
        &spec_with("{targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: orders}], match: {pathCase: Exact}}"),
    )
    .expect("targetRefs compile");
    assert!(ok.is_targeted());
    assert!(
        ok.hosts.is_empty(),
        "nothing is claimed before routes are attached"
    );
    assert!(ok.entries.is_empty());
    for (extra, field, fragment) in [
        (
            "{targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: a}, {group: gateway.networking.k8s.io, kind: HTTPRoute, name: a}]}",
            "spec.targetRefs[1]",
            "the same target",
        ),
        (
            "{targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: a}], match: {hosts: [api.example.com]}}",
            "spec.match.hosts",
            "exclusive",
        ),
        (
            "{targetRefs: [{group: '', kind: Service, name: a}]}",
            "spec.targetRefs[0].kind",
            "HTTPRoute or Gateway",
        ),
    ] {
        let error = try_compile("t", &spec_with(extra)).expect_err(extra);
        assert!(
            error
                .problems
                .iter()
                .any(|p| p.field == field && p.message.contains(fragment)),
            "{extra}: {error}"
        );
    }
}

#[test]
fn max_token_lifetime_is_bounded_and_per_issuer() {
    for (value, fragment) in [
        ("500ms", "less than the 1s minimum"),
        ("0s", "less than the 1s minimum"),
        ("8761h", "more than the 8760h maximum"),
        ("forever", "not a duration like 1h"),
        // What the CRD's pattern refuses, compile refuses too.
        ("1d", "not a duration like 1h"),
        ("1h 30m", "not a duration like 1h"),
        ("h", "not a duration like 1h"),
        ("99999999999999999999h", "not a duration like 1h"),
    ] {
        assert_problem(
            &format!(
                "issuers: [{{issuer: https://idp/, audiences: [a], jwksUri: https://idp/keys, maxTokenLifetime: {value}}}]"
            ),
            "spec.issuers[0].maxTokenLifetime",
            fragment,
        );
    }
    let spec: JwtPolicySpec = serde_yaml::from_str(
        "issuers: [{issuer: https://a/, audiences: [a], jwksUri: https://a/keys, maxTokenLifetime: 1h30m}, {issuer: https://b/, audiences: [a], jwksUri: https://b/keys}]",
    )
    .expect("yaml");
    let policy = try_compile("p", &spec).expect("compiles");
    assert_eq!(
        policy.issuers[0].max_lifetime,
        Some(Duration::from_secs(5400))
    );
    assert_eq!(policy.issuers[1].max_lifetime, None);
    // azureAd: every issuer it expands to; a bad value is named under azureAd.
    let spec: JwtPolicySpec = serde_yaml::from_str(
        "azureAd: {tenantId: 72f988bf-86f1-41af-91ab-2d7cd011db47, audiences: [api://orders], maxTokenLifetime: 2h}",
    )
    .expect("yaml");
    let policy = try_compile("p", &spec).expect("compiles");
    assert_eq!(policy.issuers.len(), 2);
    assert!(
        policy
            .issuers
            .iter()
            .all(|i| i.max_lifetime == Some(Duration::from_secs(7200)))
    );
    assert_problem(
        "azureAd: {tenantId: 72f988bf-86f1-41af-91ab-2d7cd011db47, audiences: [api://orders], maxTokenLifetime: 9000h}",
        "spec.azureAd.maxTokenLifetime",
        "8760h maximum",
    );
}

#[test]
fn issuer_templates_expand_per_tenant_with_their_own_key_sources() {
    let sources = KeySources::offline().expect("client");
    let spec: JwtPolicySpec = serde_yaml::from_str(
        "issuers:\n- {issuer: https://idp/static, audiences: [a], jwksUri: https://idp/keys}\n- {issuer: 'https://kc.example.com/realms/{tenant}', tenants: [acme, globex], audiences: [a], maxTokenLifetime: 1h}\n- {issuer: 'https://login.microsoftonline.com/{tenantid}/v2.0', jwksUri: https://login.microsoftonline.com/common/discovery/v2.0/keys, tenants: [72f988bf-86f1-41af-91ab-2d7cd011db47], audiences: [a]}",
    )
    .expect("yaml");
    let policy = compile_with(&sources, "ns", "p", &spec).expect("compiles");
    let issuers: Vec<(&str, Option<&str>, String)> = policy
        .issuers
        .iter()
        .map(|i| {
            (
                i.issuer.as_str(),
                i.tenant.as_ref().map(|t| t.name.as_str()),
                i.keys.id().to_string(),
            )
        })
        .collect();
    assert_eq!(issuers.len(), 4, "{issuers:?}");
    assert_eq!(issuers[0].1, None);
    assert_eq!(
        (issuers[1].0, issuers[1].1),
        ("https://kc.example.com/realms/acme", Some("acme"))
    );
    assert!(
        issuers[1]
            .2
            .contains("https://kc.example.com/realms/acme/.well-known/openid-configuration"),
        "{}",
        issuers[1].2
    );
    assert!(
        issuers[2].2.contains("realms/globex/.well-known"),
        "{}",
        issuers[2].2
    );
    // Each tenant has the template's settings.
    assert!(
        policy.issuers[1..3]
            .iter()
            .all(|i| i.max_lifetime == Some(Duration::from_secs(3600)))
    );
    // An Entra template is an Azure issuer (its tid is checked), its keys the common ones.
    assert_eq!(
        policy.issuers[3].azure.as_ref().map(|a| a.tenant.as_str()),
        Some("72f988bf-86f1-41af-91ab-2d7cd011db47")
    );
    assert_eq!(policy.templates.len(), 2);
    assert_eq!(policy.templates[0].field, "spec.issuers[1]");
    assert_eq!(policy.templates[1].field, "spec.issuers[2]");
    assert_eq!(
        policy.issuers[3].tenant.as_ref().map(|t| t.template),
        Some(1)
    );
    // Nothing else is created: 1 + 2 + 1 sources, nothing for tenants not listed.
    assert_eq!(sources.live().len(), 4);
}

#[test]
fn bad_issuer_templates_name_the_field() {
    let cases = [
        (
            "issuers: [{issuer: 'https://kc/realms/{tenant}', audiences: [a]}]",
            "spec.issuers[0].tenants",
            "needs the tenants it accepts",
        ),
        (
            "issuers: [{issuer: https://kc/realms/acme, tenants: [acme], audiences: [a]}]",
            "spec.issuers[0].tenants",
            "apply only to an issuer template",
        ),
        (
            "issuers: [{issuer: 'https://{tenant}.okta.example/', tenants: [acme], audiences: [a]}]",
            "spec.issuers[0].issuer",
            "only in the path",
        ),
        (
            "issuers: [{issuer: 'https://kc/realms/{tenant}', jwksUri: 'https://{tenant}.keys.example/certs', tenants: [acme], audiences: [a]}]",
            "spec.issuers[0].jwksUri",
            "only in the path",
        ),
        (
            "issuers: [{issuer: 'https://kc/realms/{tenant}', tenants: [../../admin], audiences: [a]}]",
            "spec.issuers[0].tenants[0]",
            "is not a tenant",
        ),
        (
            "issuers: [{issuer: 'http://kc/realms/{tenant}', tenants: [acme], audiences: [a]}]",
            "spec.issuers[0].issuer",
            "plain http",
        ),
        (
            "issuers: [{issuer: 'https://169.254.169.254/{tenant}', tenants: [acme], audiences: [a]}]",
            "spec.issuers[0].issuer",
            "metadata",
        ),
        (
            "issuers: [{issuer: https://kc/realms/acme, audiences: [a], jwksUri: https://kc/k}, {issuer: 'https://kc/realms/{tenant}', tenants: [globex, acme], audiences: [a]}]",
            "spec.issuers[1].issuer",
            "\"https://kc/realms/acme\" is listed twice",
        ),
    ];
    for (yaml, field, fragment) in cases {
        assert_problem(yaml, field, fragment);
    }
    // A URL problem of a template is reported once, not once per tenant.
    let found = problems(
        "issuers: [{issuer: 'http://kc/realms/{tenant}', tenants: [a, b, c], audiences: [a]}]",
    );
    assert_eq!(found.len(), 1, "{found:?}");
}

#[test]
fn expanded_issuers_are_bounded() {
    let tenants: Vec<String> = (0..64).map(|i| format!("t{i}")).collect();
    let template = |n: usize| {
        format!(
            "{{issuer: 'https://kc{n}.example/realms/{{tenant}}', tenants: [{}], audiences: [a]}}",
            tenants.join(", ")
        )
    };
    let two = format!("issuers: [{}, {}]", template(0), template(1));
    let spec: JwtPolicySpec = serde_yaml::from_str(&two).expect("yaml");
    assert_eq!(
        try_compile("p", &spec).expect("128 issuers").issuers.len(),
        128
    );
    let three = format!(
        "issuers: [{}, {}, {}]",
        template(0),
        template(1),
        template(2)
    );
    assert_problem(&three, "spec.issuers", "192 issuers");
}

#[test]
fn only_rules_requiring_a_scope_name_one_in_their_challenge() {
    let policy = mk_policy(
        "scoped",
        r#"{requiredClaims: [{name: scp, separator: " ", values: [api]}, {name: scope, values: ["two words"]}],
            rules: [{paths: [/a], requiredClaims: [{name: roles, values: [admin]}]},
                    {paths: [/b], allowAnonymous: true},
                    {paths: [/c], requiredClaims: [{name: scp, match: all, separator: " ", values: [c.read]}]}]}"#,
    );
    let scopes: Vec<Option<&str>> = policy.rules.iter().map(|r| r.scope.as_deref()).collect();
    assert_eq!(scopes, [None, None, None]);
    // The policy-wide value that is no scope token spoils only the rule whose challenge needs it.
    let warned: Vec<&str> = policy
        .warnings
        .iter()
        .filter(|w| w.message.contains("names no scope"))
        .map(|w| w.field.as_str())
        .collect();
    assert_eq!(warned, ["spec.rules[2].requiredClaims"]);
    let clean = mk_policy(
        "clean",
        r#"{requiredClaims: [{name: scp, separator: " ", values: [api]}],
            rules: [{paths: [/a], requiredClaims: [{name: roles, values: [admin]}]},
                    {paths: [/c], requiredClaims: [{name: scp, match: all, separator: " ", values: [c.read, c.write]}]}]}"#,
    );
    let scopes: Vec<Option<&str>> = clean.rules.iter().map(|r| r.scope.as_deref()).collect();
    assert_eq!(scopes, [None, Some("api c.read c.write")]);
    assert!(clean.warnings.is_empty(), "{:?}", clean.warnings);
}

#[test]
fn templates_admitting_tenants_by_a_condition_compile_without_creating_a_source() {
    let sources = KeySources::offline().expect("client");
    let spec: JwtPolicySpec = serde_yaml::from_str(
        "issuers:\n- {issuer: 'https://kc.example.com/realms/{tenant}', admitTenants: {expression: \"tenant.startsWith('cust-')\"}, audiences: [a]}\n- {issuer: 'https://login.microsoftonline.com/{tenantid}/v2.0', tenants: [72f988bf-86f1-41af-91ab-2d7cd011db47], admitTenants: {expression: \"tenant.matches('^[0-9a-f-]{36}$')\", message: 'Entra tenants only', maxTenants: 1000}, audiences: [a]}",
    )
    .expect("yaml");
    let policy = compile_with(&sources, "shop", "orders", &spec).expect("compiles");
    // Only the listed tenant is an issuer; the conditions' tenants come with their tokens.
    assert_eq!(policy.issuers.len(), 1);
    assert_eq!(sources.live().len(), 1, "no source for a condition");
    let admissions: Vec<(&str, usize, Option<&str>)> = policy
        .templates
        .iter()
        .map(|t| {
            let a = t.admission.as_deref().expect("an admission");
            (
                &*a.condition.expression.source,
                a.condition.max_tenants,
                a.condition.message.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        admissions,
        [
            ("tenant.startsWith('cust-')", 100, None),
            (
                "tenant.matches('^[0-9a-f-]{36}$')",
                1000,
                Some("Entra tenants only")
            ),
        ]
    );
    let condition = policy.templates[0].admission.as_deref().expect("admission");
    assert_eq!(condition.admits("cust-7"), Ok(true));
    assert_eq!(condition.admits("acme"), Ok(false));
}

#[test]
fn bad_tenant_conditions_name_the_field() {
    let template = |extra: &str| {
        format!("issuers: [{{issuer: 'https://kc/realms/{{tenant}}', audiences: [a], {extra}}}]")
    };
    let cases = [
        (
            template("admitTenants: {expression: \"tenant.startsWith(\"}"),
            "spec.issuers[0].admitTenants.expression",
            "does not parse",
        ),
        (
            template("admitTenants: {expression: \"claims.tid == tenant\"}"),
            "spec.issuers[0].admitTenants.expression",
            "an admitTenants expression sees only tenant",
        ),
        (
            template("admitTenants: {expression: \"request.headers['x-tenant'] == tenant\"}"),
            "spec.issuers[0].admitTenants.expression",
            "sees only tenant",
        ),
        (
            template("admitTenants: {expression: \"tenant\"}"),
            "spec.issuers[0].admitTenants.expression",
            "not a bool",
        ),
        (
            template("admitTenants: {expression: 'true', maxTenants: 1001}"),
            "spec.issuers[0].admitTenants.maxTenants",
            "1001 is not between 1 and 1000",
        ),
        (
            template("admitTenants: {expression: 'true', maxTenants: 0}"),
            "spec.issuers[0].admitTenants.maxTenants",
            "0 is not between 1 and 1000",
        ),
        (
            template("admitTenants: {expression: 'true', message: \"two\\nlines\"}"),
            "spec.issuers[0].admitTenants.message",
            "no control characters",
        ),
        (
            template(
                "admitTenants: {expression: 'true'}, jwks: {keys: [{kty: oct, k: AAAA, kid: s}]}",
            ),
            "spec.issuers[0].admitTenants",
            "use discovery or jwksUri, not jwks",
        ),
        (
            template(""),
            "spec.issuers[0].tenants",
            "or a condition that admits them, e.g. admitTenants:",
        ),
        (
            "issuers: [{issuer: https://kc/realms/acme, admitTenants: {expression: 'true'}, audiences: [a]}]".into(),
            "spec.issuers[0].admitTenants",
            "applies only to an issuer template",
        ),
        // The template's URLs are checked when it compiles, though no tenant is listed.
        (
            "issuers: [{issuer: 'http://kc/realms/{tenant}', admitTenants: {expression: 'true'}, audiences: [a]}]".into(),
            "spec.issuers[0].issuer",
            "plain http",
        ),
        (
            "issuers: [{issuer: 'https://kc/realms/{tenant}', discovery: 'https://169.254.169.254/{tenant}/conf', admitTenants: {expression: 'true'}, audiences: [a]}]".into(),
            "spec.issuers[0].discovery",
            "metadata",
        ),
        (
            "issuers: [{issuer: 'https://kc/realms/{tenant}', admitTenants: {expression: 'true'}, audiences: []}]".into(),
            "spec.issuers[0].audiences",
            "list the audiences",
        ),
        (
            "issuers: [{issuer: 'https://kc/realms/{tenant}', tenants: [acme], audiences: [a]}, {issuer: 'https://kc/realms/{tenantid}', admitTenants: {expression: 'true'}, audiences: [a]}]".into(),
            "spec.issuers[1].issuer",
            "reads like the issuer template of spec.issuers[0]",
        ),
        (
            "{issuers: [{issuer: 'https://kc/realms/{tenant}', admitTenants: {expression: 'true'}, audiences: [a]}], requireSignedTokens: false, decryption: {keys: [{file: /nonexistent}]}}".into(),
            "spec.requireSignedTokens",
            "admitTenants admits any number",
        ),
    ];
    for (yaml, field, fragment) in cases {
        assert_problem(&yaml, field, fragment);
    }
}

#[test]
fn issuer_keys_from_a_file_are_checked_against_the_algorithms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = dir.path().join("keys.pem");
    std::fs::write(&pem, EC.public_pem().expect("pem")).expect("write");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, trusted_jwks().to_string()).expect("write");
    let private = dir.path().join("private.pem");
    std::fs::write(
        &private,
        "-----BEGIN RSA PRIVATE KEY-----\nAA==\n-----END RSA PRIVATE KEY-----\n",
    )
    .expect("write");
    let issuer = |keys_from: String, algorithms: &str| {
        format!(
            "issuers: [{{issuer: https://idp/, audiences: [a], algorithms: [{algorithms}], keysFrom: {keys_from}}}]"
        )
    };
    let file = |path: &std::path::Path| format!("{{file: '{}'}}", path.display());

    let spec: JwtPolicySpec = serde_yaml::from_str(&issuer(file(&pem), "ES256")).expect("yaml");
    let policy = try_compile("p", &spec).expect("EC key for ES256");
    let keys = policy.issuers[0].keys.current().expect("fixed keys");
    assert_eq!(keys.len(), 1);
    let spec: JwtPolicySpec =
        serde_yaml::from_str(&issuer(file(&jwks), "RS256, PS256, ES256, EdDSA")).expect("yaml");
    assert_eq!(
        try_compile("p", &spec).expect("jwks").issuers[0]
            .keys
            .current()
            .expect("keys")
            .len(),
        4
    );

    assert_problem(
        &issuer(file(&pem), "RS256"),
        "spec.issuers[0].keysFrom",
        "fits none of the issuer's algorithms (RS256)",
    );
    assert_problem(
        &issuer(file(&private), "RS256"),
        "spec.issuers[0].keysFrom",
        "is a private key: store only the public key",
    );
    assert_problem(
        &issuer("{configMapRef: {name: keys, key: k}}".into(), "RS256"),
        "spec.issuers[0].keysFrom",
        "configMapRef needs Kubernetes mode",
    );
    assert_problem(
        &issuer(
            format!(
                "{{file: '{}', secretRef: {{name: s, key: k}}}}",
                pem.display()
            ),
            "ES256",
        ),
        "spec.issuers[0].keysFrom",
        "exactly one of file, secretRef, configMapRef",
    );
    assert_problem(
        "issuers: [{issuer: https://idp/, audiences: [a], jwksUri: https://idp/k, keysFrom: {file: k}}]",
        "spec.issuers[0]",
        "jwksUri and keysFrom",
    );
    let missing: JwtPolicySpec =
        serde_yaml::from_str(&issuer("{file: /nonexistent/keys.pem}".into(), "ES256"))
            .expect("yaml");
    assert_eq!(
        try_compile("p", &missing).expect_err("missing").reason(),
        "SecretNotFound"
    );
}

#[tokio::test]
async fn a_ca_bundle_is_part_of_the_key_source_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = serve(axum::Router::new()).await;
    let (ca, _) = private_ca_https(backend).await;
    let (other, _) = private_ca_https(backend).await;
    std::fs::write(dir.path().join("ca.pem"), &ca).expect("write");
    std::fs::write(dir.path().join("other.pem"), &other).expect("write");
    let issuer = |extra: &str| -> JwtPolicySpec {
        serde_yaml::from_str(&format!(
            "issuers: [{{issuer: https://idp/, audiences: [a], jwksUri: https://idp/keys{extra}}}]"
        ))
        .expect("yaml")
    };
    let bundle = |file: &str| {
        format!(
            ", caBundle: {{file: '{}'}}",
            dir.path().join(file).display()
        )
    };
    let sources = KeySources::offline().expect("client");
    let plain = compile_with(&sources, "ns", "plain", &issuer("")).expect("plain");
    let trusted = compile_with(&sources, "ns", "trusted", &issuer(&bundle("ca.pem"))).expect("ca");
    let again = compile_with(&sources, "ns", "again", &issuer(&bundle("ca.pem"))).expect("ca");
    let other =
        compile_with(&sources, "ns", "other", &issuer(&bundle("other.pem"))).expect("other");
    let keys = |p: &Policy| p.issuers[0].keys.clone();
    assert!(
        Arc::ptr_eq(&keys(&trusted), &keys(&again)),
        "same URL, same CA: shared"
    );
    assert!(
        !Arc::ptr_eq(&keys(&trusted), &keys(&plain)),
        "a bundle never leaks to an issuer without one"
    );
    assert!(!Arc::ptr_eq(&keys(&trusted), &keys(&other)));
    assert_eq!(sources.live().len(), 3);

    std::fs::write(
        dir.path().join("key.pem"),
        rcgen::KeyPair::generate().expect("key").serialize_pem(),
    )
    .expect("write");
    let yaml =
        |extra: String| format!("issuers: [{{issuer: https://idp/, audiences: [a]{extra}}}]");
    assert_problem(
        &yaml(format!(", jwksUri: https://idp/keys{}", bundle("key.pem"))),
        "spec.issuers[0].caBundle",
        "private key",
    );
    assert_problem(
        &yaml(format!(", jwks: {{keys: []}}{}", bundle("ca.pem"))),
        "spec.issuers[0].caBundle",
        "not jwks",
    );
    assert_problem(
        &format!(
            "issuers: [{{issuer: 'https://idp/{{tenant}}', audiences: [a], admitTenants: {{expression: 'true'}}{}}}]",
            bundle("ca.pem")
        ),
        "spec.issuers[0].caBundle",
        "not supported with admitTenants",
    );
    let missing: JwtPolicySpec =
        serde_yaml::from_str(&yaml(", caBundle: {file: /nonexistent/ca.pem}".into()))
            .expect("yaml");
    assert_eq!(
        try_compile("p", &missing).expect_err("missing").reason(),
        "SecretNotFound"
    );
}

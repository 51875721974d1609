use kube::core::cel::{Validator, WarningKind, compile_schema, estimate_rule_cost};
use serde_json::{Value, json};

use super::*;

fn crd_file() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/jwtpolicies.tollgate.dev.yaml"))
        .expect("crds/jwtpolicies.tollgate.dev.yaml exists (run `cargo run -- crdgen --out crds/jwtpolicies.tollgate.dev.yaml`)")
}

fn schema() -> Value {
    let crd: Value = serde_yaml::from_str(&crd_file()).expect("CRD YAML");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

#[test]
fn crds_match_the_rust_types() {
    let generated = crd_yaml().expect("render");
    assert!(
        crd_file() == generated,
        "crds/ drifted from src/policy/spec.rs: run `cargo run -- crdgen --out {CRD_FILE}` and commit the result"
    );
}

#[test]
fn the_crd_names_and_columns() {
    let crd: Value = serde_yaml::from_str(&crd_file()).expect("yaml");
    assert_eq!(crd["metadata"]["name"], "jwtpolicies.tollgate.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["jwtp"]));
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], json!({}));
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "Ready",
            "Hosts",
            "Targets",
            "Issuers",
            "Loaded",
            "Mode",
            "Would-Deny",
            "Reason",
            "Age"
        ]
    );
}

/// Every node of the schema that carries CEL rules.
fn rule_nodes(node: &Value, out: &mut Vec<Value>) {
    if node.get("x-kubernetes-validations").is_some() {
        out.push(node.clone());
    }
    match node {
        Value::Object(map) => map.values().for_each(|v| rule_nodes(v, out)),
        Value::Array(items) => items.iter().for_each(|v| rule_nodes(v, out)),
        _ => {}
    }
}

#[test]
fn every_cel_rule_compiles_within_the_cost_budget() {
    let mut nodes = Vec::new();
    rule_nodes(&schema(), &mut nodes);
    let rules: usize = nodes
        .iter()
        .map(|n| n["x-kubernetes-validations"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(
        rules >= 7,
        "expected the CEL rules of spec.rs, found {rules}"
    );
    for node in &nodes {
        let compiled = compile_schema(node);
        assert!(
            compiled.compilation_errors().is_empty(),
            "{:?}",
            compiled.compilation_errors()
        );
        for rule in node["x-kubernetes-validations"].as_array().expect("rules") {
            let text = rule["rule"].as_str().expect("rule text");
            // Unbounded lists or strings make the API server refuse a rule as too costly. The
            // local estimate is coarser than the server's: it sizes every comprehension with the
            // first list under the rule's node (or 1000 items), not the list it walks, and warns
            // above the runtime per-call limit (1,000,000). So it is held here to the limit the
            // server applies to estimates (StaticEstimatedCostLimit, 10,000,000 per rule); the
            // server's own estimate decides in tests/e2e/crd.rs, where the CRD must install.
            for warning in estimate_rule_cost(text, &compiled) {
                let estimate = (warning.kind == WarningKind::CostExceeded)
                    .then(|| warning.message.strip_prefix("estimated cost "))
                    .flatten()
                    .and_then(|m| m.split(' ').next())
                    .and_then(|n| n.parse::<u64>().ok());
                assert!(
                    estimate.is_some_and(|cost| cost <= 10_000_000),
                    "{text}: {warning:?}"
                );
            }
        }
    }
}

fn policy(spec: Value) -> Value {
    json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "JwtPolicy", "metadata": {"name": "p", "namespace": "ns"}, "spec": spec})
}

fn issuer(extra: Value) -> Value {
    let mut issuer = json!({"issuer": "https://idp.example.com/", "audiences": ["api://orders"]});
    for (k, v) in extra.as_object().expect("object") {
        issuer[k] = v.clone();
    }
    issuer
}

fn cel(object: &Value) -> Result<(), String> {
    Validator::new()
        .validate(&schema(), object, None)
        .map_err(|e| e.to_string())
}

#[test]
fn cel_rules_accept_good_policies_and_name_the_problem_in_bad_ones() {
    let ok = [
        json!({"issuers": [issuer(json!({}))]}),
        json!({"issuers": [issuer(json!({"jwksUri": "https://idp/keys", "algorithms": ["RS256", "ES256"]}))], "clockSkew": "1m30s"}),
        // An empty list is the default list, as in compile.
        json!({"issuers": [issuer(json!({"algorithms": []}))]}),
        json!({"issuers": [issuer(json!({"issuer": "http://127.0.0.1:8080", "allowInsecureHttp": true}))]}),
        json!({"issuers": [issuer(json!({"sharedSecret": {"secretRef": {"name": "s", "key": "k"}}, "algorithms": ["HS256"]}))]}),
        json!({"issuers": [issuer(json!({}))], "rules": [{"paths": ["/a"], "allowAnonymous": true}, {"paths": ["/b"], "requiredClaims": [{"name": "roles"}]}]}),
        json!({"azureAd": {"tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47", "audiences": ["api://orders"], "versions": ["v2"]}}),
        json!({"issuers": [issuer(json!({}))], "decryption": {"keys": [{"secretRef": {"name": "k", "key": "pem"}}], "allowRsa1_5": true}}),
        json!({"issuers": [issuer(json!({}))], "decryption": {"keys": [{"secretRef": {"name": "k", "key": "jwk"}, "algorithms": ["A256KW", "dir"]}]}, "requireSignedTokens": false}),
        json!({"issuers": [issuer(json!({}))], "match": {"paths": ["/orders/admin"], "pathCase": "IgnoreCase"}}),
        json!({"issuers": [issuer(json!({}))], "debug": {"traceHeader": {"value": {"secretRef": {"name": "d", "key": "v"}}}}}),
        json!({"issuers": [issuer(json!({}))], "when": [{"expression": "request.headers['x-tenant'] in claims.tenants", "message": "m", "status": 403}],
            "rules": [{"paths": ["/a"], "when": [{"expression": "'admin' in claims.roles"}]}, {"paths": ["/h"], "allowAnonymous": true, "when": [{"expression": "request.method == 'GET'"}]}],
            "forward": {"headers": [{"name": "x-tenant-user", "expression": "claims.tid + '/' + claims.sub"}]}}),
        json!({"issuers": [issuer(json!({"maxTokenLifetime": "1h"}))]}),
        json!({"issuers": [issuer(json!({"maxTokenLifetime": "1s"})), issuer(json!({"issuer": "https://b.example.com/", "maxTokenLifetime": "8760h"}))]}),
        json!({"azureAd": {"tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47", "audiences": ["api://orders"], "maxTokenLifetime": "90m"}}),
        json!({"issuers": [issuer(json!({"issuer": "https://kc.example.com/realms/{tenant}", "tenants": ["acme", "globex"]}))]}),
        json!({"issuers": [issuer(json!({"issuer": "https://login.microsoftonline.com/{tenantid}/v2.0", "tenants": ["72f988bf-86f1-41af-91ab-2d7cd011db47"]}))]}),
        json!({"issuers": [issuer(json!({"issuer": "https://kc.example.com/realms/{tenant}", "admitTenants": {"expression": "tenant.startsWith('cust-')"}}))]}),
        json!({"issuers": [issuer(json!({"issuer": "https://kc.example.com/realms/{tenant}", "jwksUri": "https://kc.example.com/realms/{tenant}/certs", "tenants": ["acme"], "admitTenants": {"expression": "true", "message": "m", "maxTenants": 1000}}))]}),
    ];
    for spec in ok {
        assert_eq!(cel(&policy(spec.clone())), Ok(()), "{spec}");
    }
    let bad = [
        (
            json!({"issuers": [issuer(json!({"jwksUri": "https://idp/keys", "discovery": "https://idp/d"}))]}),
            "exactly one of",
        ),
        (
            json!({"issuers": [issuer(json!({"jwksUri": "http://idp/keys"}))]}),
            "must be https URLs",
        ),
        (
            json!({"issuers": [issuer(json!({"issuer": "idp-without-url"}))]}),
            "must be an https URL",
        ),
        (
            json!({"issuers": [issuer(json!({"jwksUri": "https://idp/keys", "algorithms": ["HS256"]}))]}),
            "need sharedSecret",
        ),
        (
            json!({"issuers": [issuer(json!({"sharedSecret": {"file": "k"}, "algorithms": ["RS256"]}))]}),
            "need sharedSecret",
        ),
        (
            json!({"issuers": [issuer(json!({"jwksUri": "https://idp/keys", "algorithms": ["RS256", "HS256"]}))]}),
            "need sharedSecret",
        ),
        (
            json!({"issuers": [issuer(json!({"algorithms": ["none"]}))]}),
            "none is never accepted",
        ),
        (
            json!({"issuers": [issuer(json!({}))], "clockSkew": "1h"}),
            "at most 10m",
        ),
        (
            json!({"issuers": [issuer(json!({}))], "rules": [{"paths": ["/a"]}]}),
            "a rule needs requiredClaims, when, or allowAnonymous",
        ),
        (
            json!({"issuers": [issuer(json!({}))], "rules": [{"allowAnonymous": true, "requiredClaims": [{"name": "x"}]}]}),
            "either requiredClaims or allowAnonymous",
        ),
        (
            json!({}),
            "list at least one issuer, or set azureAd or apiKeys",
        ),
        (
            json!({"azureAd": {"tenantId": "t", "tenants": ["u"], "audiences": ["a"]}}),
            "set tenantId, or tenants",
        ),
        (
            json!({"issuers": [issuer(json!({}))], "requireSignedTokens": false}),
            "configure decryption",
        ),
        (
            json!({"issuers": [issuer(json!({}))], "decryption": {"keys": [{"secretRef": {"name": "k", "key": "pem"}}]}, "requireSignedTokens": false}),
            "anyone holding the public key",
        ),
        (
            json!({"issuers": [issuer(json!({})), issuer(json!({"issuer": "https://other.example.com/"}))], "decryption": {"keys": [{"secretRef": {"name": "k", "key": "jwk"}, "algorithms": ["dir"]}]}, "requireSignedTokens": false}),
            "exactly one issuer",
        ),
        (
            json!({"issuers": [issuer(json!({}))], "decryption": {"keys": [{"secretRef": {"name": "k", "key": "pem"}, "algorithms": ["RSA-OAEP-256"]}]}, "requireSignedTokens": false}),
            "anyone holding the public key",
        ),
        (
            json!({"issuers": [issuer(json!({}))], "decryption": {"keys": [{"secretRef": {"name": "k", "key": "jwk"}, "algorithms": ["A192KW"]}]}, "requireSignedTokens": false}),
            "anyone holding the public key",
        ),
        (
            json!({"issuers": [issuer(json!({"maxTokenLifetime": "8761h"}))]}),
            "maxTokenLifetime must be at least 1s and at most 8760h",
        ),
        (
            json!({"issuers": [issuer(json!({"maxTokenLifetime": "999ms"}))]}),
            "maxTokenLifetime must be at least 1s and at most 8760h",
        ),
        (
            json!({"azureAd": {"tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47", "audiences": ["api://orders"], "maxTokenLifetime": "0s"}}),
            "azureAd.maxTokenLifetime must be between 1s and 8760h",
        ),
        (
            json!({"issuers": [issuer(json!({"issuer": "https://kc.example.com/realms/{tenant}"}))]}),
            "needs tenants",
        ),
        (
            json!({"issuers": [issuer(json!({"issuer": "https://kc.example.com/realms/{tenantid}", "tenants": []}))]}),
            "needs tenants",
        ),
        (
            json!({"issuers": [issuer(json!({"tenants": ["acme"]}))]}),
            "tenants and admitTenants need a template",
        ),
        (
            json!({"issuers": [issuer(json!({"admitTenants": {"expression": "true"}}))]}),
            "tenants and admitTenants need a template",
        ),
        (
            json!({"issuers": [issuer(json!({"issuer": "https://kc.example.com/realms/{tenant}", "admitTenants": {"expression": "true"}, "sharedSecret": {"file": "k"}, "algorithms": ["HS256"]}))]}),
            "admitTenants fetches each tenant's keys when a token first names it",
        ),
        (
            json!({"issuers": [issuer(json!({"issuer": "https://kc.example.com/realms/{tenant}", "admitTenants": {"expression": "true"}, "publicKeys": [{"pem": "x"}]}))]}),
            "admitTenants fetches each tenant's keys when a token first names it",
        ),
    ];
    for (spec, message) in bad {
        let err = cel(&policy(spec.clone())).expect_err(&spec.to_string());
        assert!(err.contains(message), "{spec}: {err}");
    }
}

#[test]
fn the_example_policies_pass_the_crd_rules() {
    let mut names = Vec::new();
    for file in ["orders.yaml", "azure-ad.yaml"] {
        let path = format!("{}/examples/policies/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect("example");
        let docs = crate::policy::files::parse_documents(text.as_bytes()).expect("parses");
        for (_, doc) in docs {
            let object = policy(serde_json::to_value(&doc.spec).expect("json"));
            assert_eq!(cel(&object), Ok(()), "{}", doc.metadata.name);
            names.push(doc.metadata.name);
        }
    }
    assert_eq!(names, ["orders", "internal", "inventory"]);
}

#[test]
fn cel_rules_of_resource_metadata() {
    let with =
        |metadata: Value| json!({"issuers": [issuer(json!({}))], "resourceMetadata": metadata});
    let ok = [
        json!({"resource": "https://api.example.com"}),
        json!({"resource": "https://api.example.com/mcp", "authorizationServers": ["https://login.example.com/t/v2.0"], "scopesSupported": ["mcp.tools"], "resourceName": "MCP", "resourceDocumentation": "https://docs.example.com/mcp"}),
    ];
    for metadata in ok {
        assert_eq!(cel(&policy(with(metadata.clone()))), Ok(()), "{metadata}");
    }
    let bad = [
        (
            json!({"resource": "http://api.example.com/mcp"}),
            "without query or fragment",
        ),
        (
            json!({"resource": "https://api.example.com/mcp#x"}),
            "without query or fragment",
        ),
        (
            json!({"resource": "https://api.example.com/mcp?v=1"}),
            "without query or fragment",
        ),
        (
            json!({"resource": "https://api.example.com/mcp", "authorizationServers": ["http://login.example.com/"]}),
            "https issuer identifiers",
        ),
        (
            json!({"resource": "https://api.example.com/mcp", "resourceDocumentation": "http://docs.example.com/"}),
            "resourceDocumentation must be an https URL",
        ),
    ];
    for (metadata, message) in bad {
        let err = cel(&policy(with(metadata.clone()))).expect_err(&metadata.to_string());
        assert!(err.contains(message), "{metadata}: {err}");
    }
}

#[test]
fn the_mcp_example_passes_the_crd_rules_and_compiles() {
    let path = format!("{}/examples/policies/mcp.yaml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("example");
    let docs = crate::policy::files::parse_documents(text.as_bytes()).expect("parses");
    assert_eq!(docs.len(), 1);
    for (_, doc) in docs {
        assert_eq!(
            cel(&policy(serde_json::to_value(&doc.spec).expect("json"))),
            Ok(())
        );
        let policy = crate::fixtures::try_compile(&doc.metadata.name, &doc.spec).expect("compiles");
        let resource = policy.resource.expect("declares a resource");
        assert_eq!(
            resource.metadata_url,
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        );
    }
}

//! The JwtPolicy CRD in a real API server (tests/e2e/cluster.rs): the server, not an
//! approximation of it, decides what its schema and CEL rules accept.
//!
//! ```text
//!  case (spec) ──► kube-apiserver (server-side apply) ──► accepted | refused with the rule's message
//!              ├─► kube's local CEL evaluator (src/policy/spec/tests.rs) ─► same rules? else listed
//!              └─► tollgate's compile (the replicas' and the webhook's) ─► the CRD refuses only
//!                                                                     what tollgate refuses
//! ```
//!
//! Every `x-kubernetes-validations` message of crds/ needs a case the server refuses with it, so
//! a new rule without one fails here. The lists the rules iterate are filled to their `maxItems`
//! to show the server's runtime CEL cost budget holds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use kube::core::cel::Validator;
use serde::Deserialize as _;
use serde_json::{Value, json};
use tollgate::jwks::KeySources;
use tollgate::policy::spec::{JwtPolicySpec, SecretSpec};
use tollgate::policy::{CompileContext, SecretSource, compile};

use crate::cluster::Cluster;

const NAMESPACE: &str = "cases";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const OTHER_TENANT: &str = "2d4d11a2-f814-46a7-890a-274a72a7309e";

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn crd_path() -> PathBuf {
    repository().join("crds/jwtpolicies.tollgate.dev.yaml")
}

/// The `openAPIV3Schema` of crds/.
fn schema() -> Value {
    let text = std::fs::read_to_string(crd_path()).expect("crds/jwtpolicies.tollgate.dev.yaml");
    let crd: Value = serde_yaml::from_str(&text).expect("CRD YAML");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// One `x-kubernetes-validations` entry of the CRD.
#[derive(Clone, Debug)]
struct CelRule {
    rule: String,
    message: String,
}

/// Every CEL rule of the schema, in document order.
fn cel_rules(node: &Value, out: &mut Vec<CelRule>) {
    if let Some(rules) = node
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for rule in rules {
            out.push(CelRule {
                rule: rule["rule"].as_str().expect("rule").to_string(),
                message: rule["message"]
                    .as_str()
                    .expect("every rule has a message")
                    .to_string(),
            });
        }
    }
    match node {
        Value::Object(map) => map.values().for_each(|v| cel_rules(v, out)),
        Value::Array(items) => items.iter().for_each(|v| cel_rules(v, out)),
        _ => {}
    }
}

/// Applies crds/ as a user would (server-side apply) and waits until it is Established; fails on
/// any warning the server sends back (it warned about unknown integer formats before). Then
/// creates the namespace of the cases.
fn install(cluster: &Cluster) {
    let path = crd_path().display().to_string();
    let out = cluster.kubectl_output(&[
        "apply",
        "--server-side",
        "--field-manager",
        "tollgate-test",
        "-f",
        &path,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the server refused crds/: {stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("Warning")).collect();
    assert!(
        warnings.is_empty(),
        "the server warned about crds/:\n{}",
        warnings.join("\n")
    );
    cluster.wait_established(&["jwtpolicies.tollgate.dev"], "60s");
    let crd = cluster
        .get("crd", None, "jwtpolicies.tollgate.dev")
        .expect("the CRD exists");
    let conditions = crd["status"]["conditions"].as_array().expect("conditions");
    let status = |kind: &str| {
        conditions
            .iter()
            .find(|c| c["type"] == kind)
            .map(|c| c["status"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(status("NamesAccepted").as_deref(), Some("True"), "{crd:#}");
    assert_eq!(status("Established").as_deref(), Some("True"), "{crd:#}");
    assert_eq!(status("NonStructuralSchema"), None, "{crd:#}");
    assert_eq!(crd["status"]["acceptedNames"]["kind"], "JwtPolicy");
    assert_eq!(
        crd["status"]["acceptedNames"]["shortNames"],
        json!(["jwtp"])
    );
    cluster.kubectl(&["create", "namespace", NAMESPACE]);
}

fn object(name: &str, namespace: &str, spec: &Value) -> Value {
    json!({
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "JwtPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

/// What the real server answered to a server-side apply.
struct Answer {
    accepted: bool,
    /// stdout and stderr: the object applied, or the server's reasons.
    text: String,
    warnings: Vec<String>,
}

fn submit(cluster: &Cluster, object: &Value) -> Answer {
    let name = object["metadata"]["name"].as_str().expect("name");
    let namespace = object["metadata"]["namespace"].as_str().expect("namespace");
    let path = cluster.dir.path().join(format!("{namespace}-{name}.json"));
    std::fs::write(&path, object.to_string()).expect("write object");
    let out = cluster.kubectl_output(&[
        "apply",
        "--server-side",
        "--field-manager",
        "tollgate-test",
        "-f",
        &path.display().to_string(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    Answer {
        accepted: out.status.success(),
        warnings: stderr
            .lines()
            .filter(|l| l.contains("Warning"))
            .map(str::to_string)
            .collect(),
        text: format!("{}{stderr}", String::from_utf8_lossy(&out.stdout)),
    }
}

/// `submit` for each object, four at a time (each is one kubectl process); answers in order.
fn submit_all(cluster: &Cluster, objects: &[&Value]) -> Vec<Answer> {
    let next = AtomicUsize::new(0);
    let answers: Vec<Mutex<Option<Answer>>> = objects.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(object) = objects.get(i) else { break };
                    let answer = submit(cluster, object);
                    *answers[i].lock().expect("answer") = Some(answer);
                }
            });
        }
    });
    answers
        .into_iter()
        .map(|a| {
            a.into_inner()
                .expect("answer")
                .expect("every object submitted")
        })
        .collect()
}

/// The Secrets the cases name, with real key material, so tollgate's verdict is the replicas'
/// (which read the keys), not only the webhook's (which may not): key `pem` holds an EC P-256
/// private key, key `jwk` a 256-bit AES JWK, key `public.pem` (in a Secret or a ConfigMap)
/// that key's public half, key `ca.crt` a CA certificate, any other key 64 bytes.
struct Secrets {
    pem: Vec<u8>,
    jwk: Vec<u8>,
    public: Vec<u8>,
    ca: Vec<u8>,
}

impl Secrets {
    fn new() -> Secrets {
        use base64::Engine as _;
        let ec = rcgen::KeyPair::generate().expect("EC key");
        let aes = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0x5a; 32]);
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params
            .self_signed(&rcgen::KeyPair::generate().expect("key"))
            .expect("CA");
        Secrets {
            ca: ca.pem().into_bytes(),
            public: ec.public_key_pem().into_bytes(),
            pem: ec.serialize_pem().into_bytes(),
            jwk: json!({"kty": "oct", "k": aes}).to_string().into_bytes(),
        }
    }
}

impl SecretSource for Secrets {
    fn read(&self, _namespace: &str, spec: &SecretSpec) -> Result<Vec<u8>, String> {
        match &spec.secret_ref {
            Some(r) if r.key == "pem" => Ok(self.pem.clone()),
            Some(r) if r.key == "jwk" => Ok(self.jwk.clone()),
            Some(r) if r.key == "public.pem" => Ok(self.public.clone()),
            Some(r) if r.key == "ca.crt" => Ok(self.ca.clone()),
            Some(r) if !r.name.is_empty() && !r.key.is_empty() => Ok(vec![0x5a; 64]),
            _ => Err("file: is for policy files; in Kubernetes use secretRef: {name, key}".into()),
        }
    }

    /// One usable key Secret for any selector, as the replicas' label watch would list.
    fn select(
        &self,
        namespace: &str,
        _labels: &std::collections::BTreeMap<String, String>,
        _dir: Option<&str>,
    ) -> Result<Vec<tollgate::policy::compile::SelectedSecret>, String> {
        Ok(vec![tollgate::policy::compile::SelectedSecret {
            source: format!("Secret {namespace}/key"),
            data: [
                ("key".to_string(), vec![b'k'; 32]),
                ("owner".to_string(), b"owner".to_vec()),
            ]
            .into(),
        }])
    }

    fn read_config_map(
        &self,
        _namespace: &str,
        reference: &tollgate::policy::spec::ConfigMapKeyRef,
    ) -> Result<Vec<u8>, String> {
        match reference.key.as_str() {
            "public.pem" => Ok(self.public.clone()),
            "ca.crt" => Ok(self.ca.clone()),
            _ => Err(format!(
                "ConfigMap {} has no key {:?}",
                reference.name, reference.key
            )),
        }
    }
}

/// tollgate's verdict on a spec in Kubernetes mode: what the webhook and the replicas decide.
fn tollgate_verdict(spec: &Value, sources: &KeySources, secrets: &Secrets) -> Result<(), String> {
    let spec: JwtPolicySpec = serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
    let ctx = CompileContext {
        key_sources: sources,
        secrets,
    };
    compile(NAMESPACE, "case", &spec, &ctx)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The rules whose messages appear in the server's answer.
fn rules_in(text: &str, rules: &[CelRule]) -> BTreeSet<String> {
    rules
        .iter()
        .filter(|r| text.contains(&r.message))
        .map(|r| r.message.clone())
        .collect()
}

/// kube's local CEL evaluator exactly as src/policy/spec/tests.rs runs it: the messages of the
/// rules that fail, and any error it raised outside a rule (as `(no rule) …`).
fn local_verdict(schema: &Value, object: &Value, rules: &[CelRule]) -> BTreeSet<String> {
    match Validator::new().validate(schema, object, None) {
        Ok(()) => BTreeSet::new(),
        Err(errors) => errors
            .iter()
            .map(|e| {
                rules
                    .iter()
                    .find(|r| r.rule == e.rule)
                    .map_or_else(|| format!("(no rule) {e}"), |r| r.message.clone())
            })
            .collect(),
    }
}

/// What the real server must do with a case.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Accepted,
    /// Refused by the CEL rule whose message contains this text (one rule exactly).
    Rule(&'static str),
    /// Refused by the schema (not CEL); the server's answer contains this text.
    Schema(&'static str),
}

struct Case {
    label: &'static str,
    spec: Value,
    expect: Expect,
    /// Why the CRD may refuse this spec although tollgate's compile accepts it.
    only_the_crd_refuses: Option<&'static str>,
}

fn case(label: &'static str, spec: Value, expect: Expect) -> Case {
    Case {
        label,
        spec,
        expect,
        only_the_crd_refuses: None,
    }
}

/// `base` with the members of `extra` set over it.
fn merged(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().expect("object") {
        base[k] = v.clone();
    }
    base
}

fn issuer(extra: Value) -> Value {
    merged(
        json!({"issuer": "https://idp.example.com/", "audiences": ["api://orders"]}),
        extra,
    )
}

fn with_issuer(extra: Value) -> Value {
    merged(json!({"issuers": [issuer(json!({}))]}), extra)
}

/// An introspection client with its secret, and `extra`.
fn introspection(extra: Value) -> Value {
    merged(
        json!({"clientId": "tollgate", "clientSecretRef": {"name": "i", "key": "secret"}}),
        extra,
    )
}

fn unsigned(keys: Value) -> Value {
    with_issuer(json!({"decryption": {"keys": keys}, "requireSignedTokens": false}))
}

fn key(algorithms: Value) -> Value {
    json!({"secretRef": {"name": "k", "key": "jwk"}, "algorithms": algorithms})
}

fn cases() -> Vec<Case> {
    use Expect::*;
    let secret = json!({"secretRef": {"name": "s", "key": "k"}});
    let anonymous = json!({"paths": ["/a"], "allowAnonymous": true});
    let claims = json!([{"name": "roles"}]);
    vec![
        // Accepted: the unit tests' good policies, then each rule's edge.
        case("discovery by default", with_issuer(json!({})), Accepted),
        case(
            "jwksUri, asymmetric algorithms, clockSkew 1m30s",
            json!({"issuers": [issuer(json!({"jwksUri": "https://idp/keys", "algorithms": ["RS256", "ES256"]}))], "clockSkew": "1m30s"}),
            Accepted,
        ),
        case(
            "http issuer with allowInsecureHttp",
            json!({"issuers": [issuer(json!({"issuer": "http://127.0.0.1:8080", "allowInsecureHttp": true}))]}),
            Accepted,
        ),
        case(
            "sharedSecret with HS256",
            json!({"issuers": [issuer(json!({"sharedSecret": secret, "algorithms": ["HS256"]}))]}),
            Accepted,
        ),
        case(
            "a rule with allowAnonymous, one with requiredClaims",
            with_issuer(json!({"rules": [anonymous, {"paths": ["/b"], "requiredClaims": claims}]})),
            Accepted,
        ),
        case(
            "azureAd alone",
            json!({"azureAd": {"tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47", "audiences": ["api://orders"], "versions": ["v2"]}}),
            Accepted,
        ),
        case(
            "decryption with allowRsa1_5",
            with_issuer(
                json!({"decryption": {"keys": [{"secretRef": {"name": "k", "key": "pem"}}], "allowRsa1_5": true}}),
            ),
            Accepted,
        ),
        case(
            "unsigned tokens with an A256KW/dir key",
            unsigned(json!([key(json!(["A256KW", "dir"]))])),
            Accepted,
        ),
        case(
            "match paths with pathCase",
            with_issuer(json!({"match": {"paths": ["/orders/admin"], "pathCase": "IgnoreCase"}})),
            Accepted,
        ),
        case(
            "debug trace header",
            with_issuer(
                json!({"debug": {"traceHeader": {"value": {"secretRef": {"name": "d", "key": "v"}}}}}),
            ),
            Accepted,
        ),
        case(
            "clockSkew 10m",
            with_issuer(json!({"clockSkew": "10m"})),
            Accepted,
        ),
        case(
            "clockSkew 600s",
            with_issuer(json!({"clockSkew": "600s"})),
            Accepted,
        ),
        case(
            "clockSkew 500ms",
            with_issuer(json!({"clockSkew": "500ms"})),
            Accepted,
        ),
        case(
            "clockSkew null",
            with_issuer(json!({"clockSkew": null})),
            Accepted,
        ),
        case(
            "empty publicKeys beside jwksUri",
            json!({"issuers": [issuer(json!({"jwksUri": "https://idp/keys", "publicKeys": []}))]}),
            Accepted,
        ),
        case(
            "an issuer that is no URL, with jwksUri",
            json!({"issuers": [issuer(json!({"issuer": "urn:example:idp", "jwksUri": "https://idp/keys"}))]}),
            Accepted,
        ),
        case(
            "empty algorithms with discovery",
            json!({"issuers": [issuer(json!({"algorithms": []}))]}),
            Accepted,
        ),
        case(
            "empty algorithms with sharedSecret",
            json!({"issuers": [issuer(json!({"sharedSecret": secret, "algorithms": []}))]}),
            Accepted,
        ),
        case(
            "azureAd tenants",
            json!({"azureAd": {"tenants": [TENANT, OTHER_TENANT], "audiences": ["api://orders"]}}),
            Accepted,
        ),
        case(
            "azureAd tenantId with empty tenants",
            json!({"azureAd": {"tenantId": TENANT, "tenants": [], "audiences": ["api://orders"]}}),
            Accepted,
        ),
        case(
            "azureAd tenantId null with tenants",
            json!({"azureAd": {"tenantId": null, "tenants": [TENANT], "audiences": ["api://orders"]}}),
            Accepted,
        ),
        case(
            "issuers beside azureAd",
            with_issuer(json!({"azureAd": {"tenantId": TENANT, "audiences": ["api://orders"]}})),
            Accepted,
        ),
        case(
            "a rule with allowAnonymous false and requiredClaims",
            with_issuer(json!({"rules": [{"allowAnonymous": false, "requiredClaims": claims}]})),
            Accepted,
        ),
        case(
            "http introspection endpoint with allowInsecureHttp",
            with_issuer(
                json!({"introspection": introspection(json!({"endpoint": "http://idp/introspect", "allowInsecureHttp": true}))}),
            ),
            Accepted,
        ),
        case(
            "userinfo with acceptWithout [aud, exp]",
            with_issuer(
                json!({"introspection": {"endpoint": "https://idp/userinfo", "response": "userinfo", "acceptWithout": ["aud", "exp"]}}),
            ),
            Accepted,
        ),
        case(
            "jwt introspection answers without acceptWithout",
            with_issuer(json!({"introspection": introspection(json!({"response": "jwt"}))})),
            Accepted,
        ),
        case(
            "requireSignedTokens true without decryption",
            with_issuer(json!({"requireSignedTokens": true})),
            Accepted,
        ),
        case(
            "requireSignedTokens null",
            with_issuer(json!({"requireSignedTokens": null})),
            Accepted,
        ),
        case(
            "targetRefs to an HTTPRoute rule and a Gateway, with pathCase",
            with_issuer(json!({
                "targetRefs": [
                    {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "orders", "sectionName": "read"},
                    {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "orders"},
                    {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "eg"},
                ],
                "match": {"pathCase": "Exact"},
            })),
            Accepted,
        ),
        case(
            "maxTokenLifetime 1s and 8760h",
            json!({"issuers": [issuer(json!({"maxTokenLifetime": "1s"})), issuer(json!({"issuer": "https://other.example.com/", "maxTokenLifetime": "8760h"}))]}),
            Accepted,
        ),
        case(
            "azureAd maxTokenLifetime 90m",
            json!({"azureAd": {"tenantId": TENANT, "audiences": ["api://orders"], "maxTokenLifetime": "90m"}}),
            Accepted,
        ),
        case(
            "issuer templates of both spellings",
            json!({"issuers": [
                issuer(json!({"issuer": "https://kc.example.com/realms/{tenant}", "tenants": ["acme", "globex"]})),
                issuer(json!({"issuer": "https://login.microsoftonline.com/{tenantid}/v2.0", "tenants": [TENANT, OTHER_TENANT]})),
            ]}),
            Accepted,
        ),
        case(
            "32 issuer templates of 64 tenants, 2048-byte issuers",
            json!({"issuers": (0..32).map(|i| issuer(json!({
                "issuer": format!("https://kc{i:02}.example.com/{}/{{tenant}}", "r".repeat(2048 - 34)),
                "jwksUri": "https://kc.example.com/certs",
                "tenants": (0..64).map(|t| format!("{t:02}{}", "t".repeat(62))).collect::<Vec<_>>(),
                "maxTokenLifetime": format!("{}h", "0".repeat(28) + "1"),
            }))).collect::<Vec<_>>()}),
            Accepted,
        ),
        case(
            "issuer templates admitting tenants by a condition, alone and with a list",
            json!({"issuers": [
                issuer(json!({"issuer": "https://kc.example.com/realms/{tenant}", "admitTenants": {"expression": "tenant.startsWith('cust-')", "message": "customer realms only"}})),
                issuer(json!({"issuer": "https://login.microsoftonline.com/{tenantid}/v2.0", "tenants": [TENANT], "admitTenants": {"expression": "tenant.matches('^[0-9a-f-]{36}$')", "maxTenants": 1000}})),
            ]}),
            Accepted,
        ),
        // Refused by a CEL rule.
        case(
            "maxTokenLifetime 8761h",
            with_issuer(json!({"issuers": [issuer(json!({"maxTokenLifetime": "8761h"}))]})),
            Rule("maxTokenLifetime must be at least 1s"),
        ),
        case(
            "maxTokenLifetime 999ms",
            with_issuer(json!({"issuers": [issuer(json!({"maxTokenLifetime": "999ms"}))]})),
            Rule("maxTokenLifetime must be at least 1s"),
        ),
        case(
            "maxTokenLifetime beyond a Go duration",
            with_issuer(
                json!({"issuers": [issuer(json!({"maxTokenLifetime": "99999999999999999999h"}))]}),
            ),
            Rule("maxTokenLifetime must be at least 1s"),
        ),
        case(
            "dpop required with ES256 and EdDSA, proofs for 5m",
            with_issuer(
                json!({"dpop": {"mode": "required", "algorithms": ["ES256", "EdDSA"], "proofMaxAge": "5m", "replayCacheSize": 1000}}),
            ),
            Accepted,
        ),
        case(
            "dpop with HS256 proofs",
            with_issuer(json!({"dpop": {"mode": "allowed", "algorithms": ["HS256"]}})),
            Rule("dpop.algorithms are"),
        ),
        case(
            "dpop with none",
            with_issuer(json!({"dpop": {"mode": "allowed", "algorithms": ["none"]}})),
            Rule("dpop.algorithms are"),
        ),
        case(
            "dpop proofMaxAge 6m",
            with_issuer(json!({"dpop": {"mode": "allowed", "proofMaxAge": "6m"}})),
            Rule("dpop.proofMaxAge must be between"),
        ),
        case(
            "dpop proofMaxAge 500ms",
            with_issuer(json!({"dpop": {"mode": "allowed", "proofMaxAge": "500ms"}})),
            Rule("dpop.proofMaxAge must be between"),
        ),
        case(
            "dpop mode unknown",
            with_issuer(json!({"dpop": {"mode": "optional"}})),
            Schema("Unsupported value"),
        ),
        case(
            "dpop replayCacheSize 10",
            with_issuer(json!({"dpop": {"mode": "allowed", "replayCacheSize": 10}})),
            Schema("replayCacheSize"),
        ),
        case(
            "azureAd maxTokenLifetime 0s",
            json!({"azureAd": {"tenantId": TENANT, "audiences": ["a"], "maxTokenLifetime": "0s"}}),
            Rule("azureAd.maxTokenLifetime"),
        ),
        case(
            "an issuer template without tenants",
            json!({"issuers": [issuer(json!({"issuer": "https://kc.example.com/realms/{tenant}"}))]}),
            Rule("needs tenants"),
        ),
        case(
            "tenants without a template",
            json!({"issuers": [issuer(json!({"tenants": ["acme"]}))]}),
            Rule("needs tenants"),
        ),
        case(
            "admitTenants without a template",
            json!({"issuers": [issuer(json!({"admitTenants": {"expression": "true"}}))]}),
            Rule("needs tenants"),
        ),
        case(
            "admitTenants with a shared secret",
            json!({"issuers": [issuer(json!({
                "issuer": "https://kc.example.com/realms/{tenant}",
                "admitTenants": {"expression": "true"},
                "sharedSecret": {"secretRef": {"name": "s", "key": "k"}},
                "algorithms": ["HS256"],
            }))]}),
            Rule("admitTenants fetches each tenant's keys"),
        ),
        case(
            "admitTenants with inline JWKS",
            json!({"issuers": [issuer(json!({
                "issuer": "https://kc.example.com/realms/{tenant}",
                "admitTenants": {"expression": "true"},
                "jwks": {"keys": [{"kty": "oct", "k": "AAAA"}]},
            }))]}),
            Rule("admitTenants fetches each tenant's keys"),
        ),
        case(
            "targetRefs with match.hosts",
            with_issuer(json!({
                "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "orders"}],
                "match": {"hosts": ["api.example.com"]},
            })),
            Rule("targetRefs and match.hosts/paths/methods are exclusive"),
        ),
        case(
            "targetRefs with match.methods",
            with_issuer(json!({
                "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "eg"}],
                "match": {"methods": ["GET"]},
            })),
            Rule("targetRefs and match.hosts/paths/methods are exclusive"),
        ),
        case(
            "jwksUri and discovery",
            json!({"issuers": [issuer(json!({"jwksUri": "https://idp/keys", "discovery": "https://idp/d"}))]}),
            Rule("exactly one of discovery"),
        ),
        case(
            "publicKeys and sharedSecret",
            json!({"issuers": [issuer(json!({"publicKeys": [{"pem": "x"}], "sharedSecret": secret}))]}),
            Rule("exactly one of discovery"),
        ),
        case(
            "keys from a Secret",
            json!({"issuers": [issuer(json!({"keysFrom": {"secretRef": {"name": "idp", "key": "public.pem"}}, "algorithms": ["ES256"]}))]}),
            Accepted,
        ),
        case(
            "keys from a ConfigMap",
            json!({"issuers": [issuer(json!({"keysFrom": {"configMapRef": {"name": "idp", "key": "public.pem"}}}))]}),
            Accepted,
        ),
        case(
            "a CA bundle from a ConfigMap for discovery",
            json!({"issuers": [issuer(json!({"caBundle": {"configMapRef": {"name": "idp-ca", "key": "ca.crt"}}}))]}),
            Accepted,
        ),
        case(
            "a CA bundle from a Secret for jwksUri",
            json!({"issuers": [issuer(json!({"jwksUri": "https://idp/keys", "caBundle": {"secretRef": {"name": "idp-ca", "key": "ca.crt"}}}))]}),
            Accepted,
        ),
        case(
            "a CA bundle with keys written in the policy",
            json!({"issuers": [issuer(json!({"publicKeys": [{"pem": "x"}], "caBundle": {"secretRef": {"name": "idp-ca", "key": "ca.crt"}}}))]}),
            Rule("caBundle is for keys fetched over https"),
        ),
        case(
            "a CA bundle naming two places",
            json!({"issuers": [issuer(json!({"caBundle": {"file": "ca.pem", "secretRef": {"name": "idp-ca", "key": "ca.crt"}}}))]}),
            Rule("caBundle needs exactly one of"),
        ),
        case(
            "keysFrom and jwksUri",
            json!({"issuers": [issuer(json!({"keysFrom": {"configMapRef": {"name": "idp", "key": "public.pem"}}, "jwksUri": "https://idp/keys"}))]}),
            Rule("exactly one of discovery"),
        ),
        case(
            "keysFrom from both a Secret and a ConfigMap",
            json!({"issuers": [issuer(json!({"keysFrom": {"configMapRef": {"name": "idp", "key": "public.pem"}, "secretRef": {"name": "idp", "key": "public.pem"}}}))]}),
            Rule("keysFrom needs exactly one of"),
        ),
        case(
            "keysFrom naming nothing",
            json!({"issuers": [issuer(json!({"keysFrom": {}}))]}),
            Rule("keysFrom needs exactly one of"),
        ),
        case(
            "admitTenants with keysFrom",
            json!({"issuers": [issuer(json!({
                "issuer": "https://kc.example.com/realms/{tenant}",
                "admitTenants": {"expression": "true"},
                "keysFrom": {"secretRef": {"name": "idp", "key": "public.pem"}},
            }))]}),
            Rule("admitTenants fetches each tenant's keys"),
        ),
        case(
            "jwks and jwksUri",
            json!({"issuers": [issuer(json!({"jwks": {"keys": []}, "jwksUri": "https://idp/keys"}))]}),
            Rule("exactly one of discovery"),
        ),
        case(
            "http jwksUri",
            json!({"issuers": [issuer(json!({"jwksUri": "http://idp/keys"}))]}),
            Rule("must be https URLs"),
        ),
        case(
            "http discovery",
            json!({"issuers": [issuer(json!({"discovery": "http://idp/d"}))]}),
            Rule("must be https URLs"),
        ),
        case(
            "http jwksUri with allowInsecureHttp false",
            json!({"issuers": [issuer(json!({"jwksUri": "http://idp/keys", "allowInsecureHttp": false}))]}),
            Rule("must be https URLs"),
        ),
        case(
            "an issuer that is no URL, without key source",
            json!({"issuers": [issuer(json!({"issuer": "idp-without-url"}))]}),
            Rule("used for OpenID discovery"),
        ),
        case(
            "http issuer without allowInsecureHttp",
            json!({"issuers": [issuer(json!({"issuer": "http://127.0.0.1:8080"}))]}),
            Rule("used for OpenID discovery"),
        ),
        case(
            "HS256 with jwksUri",
            json!({"issuers": [issuer(json!({"jwksUri": "https://idp/keys", "algorithms": ["HS256"]}))]}),
            Rule("need sharedSecret"),
        ),
        case(
            "RS256 and HS256 with jwksUri",
            json!({"issuers": [issuer(json!({"jwksUri": "https://idp/keys", "algorithms": ["RS256", "HS256"]}))]}),
            Rule("need sharedSecret"),
        ),
        case(
            "RS256 with sharedSecret",
            json!({"issuers": [issuer(json!({"sharedSecret": secret, "algorithms": ["RS256"]}))]}),
            Rule("need sharedSecret"),
        ),
        case(
            "HS256 and RS256 with sharedSecret",
            json!({"issuers": [issuer(json!({"sharedSecret": secret, "algorithms": ["HS256", "RS256"]}))]}),
            Rule("need sharedSecret"),
        ),
        case(
            "algorithm none",
            json!({"issuers": [issuer(json!({"algorithms": ["none"]}))]}),
            Rule("none is never accepted"),
        ),
        case(
            "algorithm ES512",
            json!({"issuers": [issuer(json!({"algorithms": ["ES256", "ES512"]}))]}),
            Rule("none is never accepted"),
        ),
        case(
            "clockSkew 1h",
            with_issuer(json!({"clockSkew": "1h"})),
            Rule("at most 10m"),
        ),
        case(
            "clockSkew 10m1ms",
            with_issuer(json!({"clockSkew": "10m1ms"})),
            Rule("at most 10m"),
        ),
        case(
            "clockSkew beyond a Go duration",
            with_issuer(json!({"clockSkew": "99999999999999999999h"})),
            Rule("at most 10m"),
        ),
        case(
            "azureAd tenantId and tenants",
            json!({"azureAd": {"tenantId": TENANT, "tenants": [OTHER_TENANT], "audiences": ["a"]}}),
            Rule("set tenantId, or tenants"),
        ),
        case(
            "azureAd without tenantId or tenants",
            json!({"azureAd": {"audiences": ["a"]}}),
            Rule("set tenantId, or tenants"),
        ),
        case(
            "azureAd with empty tenants only",
            json!({"azureAd": {"tenants": [], "audiences": ["a"]}}),
            Rule("set tenantId, or tenants"),
        ),
        case(
            "a rule with neither requiredClaims nor allowAnonymous",
            with_issuer(json!({"rules": [{"paths": ["/a"]}]})),
            Rule("a rule needs requiredClaims, when, or allowAnonymous"),
        ),
        case(
            "a rule with only a CEL condition",
            with_issuer(
                json!({"rules": [{"paths": ["/a"], "when": [{"expression": "request.method == 'GET'", "status": 400}]}]}),
            ),
            Accepted,
        ),
        case(
            "an anonymous rule with a CEL condition, a policy condition and a computed header",
            with_issuer(json!({
                "when": [{"expression": "request.headers['x-api-version'] == '2'"}],
                "rules": [{"paths": ["/h"], "allowAnonymous": true, "when": [{"expression": "request.method == 'GET'"}]}],
                "forward": {"headers": [{"name": "x-tenant-user", "expression": "claims.tid + '/' + claims.sub"}]},
            })),
            Accepted,
        ),
        case(
            "a protected resource with its authorization servers",
            with_issuer(json!({"resourceMetadata": {
                "resource": "https://api.example.com/mcp",
                "authorizationServers": ["https://idp.example.com/"],
                "resourceDocumentation": "https://docs.example.com/mcp",
            }})),
            Accepted,
        ),
        case(
            "an http authorization server",
            with_issuer(json!({"resourceMetadata": {
                "resource": "https://api.example.com/mcp",
                "authorizationServers": ["http://idp.example.com/"],
            }})),
            Rule("authorization servers are https"),
        ),
        case(
            "a resource with a query",
            with_issuer(
                json!({"resourceMetadata": {"resource": "https://api.example.com/mcp?x=1"}}),
            ),
            Rule("resource must be an https URL"),
        ),
        case(
            "http resource documentation",
            with_issuer(json!({"resourceMetadata": {
                "resource": "https://api.example.com/mcp",
                "resourceDocumentation": "http://docs.example.com/",
            }})),
            Rule("resourceDocumentation must be an https URL"),
        ),
        case(
            "a rule with both",
            with_issuer(json!({"rules": [{"allowAnonymous": true, "requiredClaims": claims}]})),
            Rule("either requiredClaims or allowAnonymous"),
        ),
        case(
            "a rule with allowAnonymous false only",
            with_issuer(json!({"rules": [{"paths": ["/a"], "allowAnonymous": false}]})),
            Rule("a rule needs requiredClaims, when, or allowAnonymous"),
        ),
        case(
            "http introspection endpoint",
            with_issuer(
                json!({"introspection": introspection(json!({"endpoint": "http://idp/introspect"}))}),
            ),
            Rule("introspection endpoint must be an https URL"),
        ),
        case(
            "userinfo without acceptWithout",
            with_issuer(json!({"introspection": {"response": "userinfo"}})),
            Rule("userinfo answers carry no aud"),
        ),
        case(
            "userinfo with acceptWithout [aud]",
            with_issuer(
                json!({"introspection": {"response": "userinfo", "acceptWithout": ["aud"]}}),
            ),
            Rule("userinfo answers carry no aud"),
        ),
        case("an empty spec", json!({}), Rule("list at least one issuer")),
        case(
            "API keys without issuers",
            json!({"apiKeys": {"secretSelector": {"matchLabels": {"tollgate.dev/api-key": "orders"}}}}),
            Accepted,
        ),
        case(
            "empty issuers",
            json!({"issuers": []}),
            Rule("list at least one issuer"),
        ),
        case(
            "requireSignedTokens false without decryption",
            with_issuer(json!({"requireSignedTokens": false})),
            Rule("configure decryption"),
        ),
        case(
            "requireSignedTokens false with two issuers",
            json!({"issuers": [issuer(json!({})), issuer(json!({"issuer": "https://other.example.com/"}))], "decryption": {"keys": [key(json!(["dir"]))]}, "requireSignedTokens": false}),
            Rule("exactly one issuer"),
        ),
        case(
            "requireSignedTokens false with azureAd",
            {
                let mut spec = unsigned(json!([key(json!(["dir"]))]));
                spec["azureAd"] = json!({"tenantId": TENANT, "audiences": ["a"]});
                spec
            },
            Rule("exactly one issuer"),
        ),
        case(
            "requireSignedTokens false, a key without algorithms",
            unsigned(json!([{"secretRef": {"name": "k", "key": "pem"}}])),
            Rule("anyone holding the public key"),
        ),
        case(
            "requireSignedTokens false, an RSA-OAEP-256 key",
            unsigned(json!([key(json!(["RSA-OAEP-256"]))])),
            Rule("anyone holding the public key"),
        ),
        case(
            "requireSignedTokens false, a dir key and an ECDH-ES+A128KW key",
            unsigned(json!([key(json!(["dir"])), key(json!(["ECDH-ES+A128KW"]))])),
            Rule("anyone holding the public key"),
        ),
        case(
            "requireSignedTokens false, an A192KW key",
            unsigned(json!([key(json!(["A192KW"]))])),
            Rule("anyone holding the public key"),
        ),
        case(
            "clientCertificate required",
            with_issuer(json!({"clientCertificate": {"required": true}})),
            Accepted,
        ),
        // Refused by the schema.
        case(
            "clientCertificate constraints are when conditions, not fields",
            with_issuer(json!({"clientCertificate": {"required": true, "subjects": ["CN=a"]}})),
            Schema("field not declared in schema"),
        ),
        case(
            "a misspelt field",
            with_issuer(json!({"requiredClaim": [{"name": "scp"}]})),
            Schema("field not declared in schema"),
        ),
        case(
            "33 issuers",
            json!({"issuers": (0..33).map(|i| issuer(json!({"issuer": format!("https://idp{i}.example.com/")}))).collect::<Vec<_>>()}),
            Schema("must have at most 32 items"),
        ),
        case(
            "empty audiences",
            json!({"issuers": [issuer(json!({"audiences": []}))]}),
            Schema("should have at least 1 items"),
        ),
        case(
            "deny.detail full",
            with_issuer(json!({"deny": {"detail": "full"}})),
            Schema("Unsupported value: \"full\""),
        ),
        case(
            "deny.status 399",
            with_issuer(json!({"deny": {"status": 399}})),
            Schema("greater than or equal to 400"),
        ),
        case(
            "deny.status 500",
            with_issuer(json!({"deny": {"status": 500}})),
            Schema("less than or equal to 499"),
        ),
        case(
            "deny.status as a string",
            with_issuer(json!({"deny": {"status": "401"}})),
            Schema("expected numeric"),
        ),
        case(
            "a path without a leading slash",
            with_issuer(json!({"match": {"paths": ["orders"]}})),
            Schema("should match '^/[^*?#]*$'"),
        ),
        case(
            "a path with a wildcard",
            with_issuer(json!({"match": {"paths": ["/orders/*"]}})),
            Schema("should match '^/[^*?#]*$'"),
        ),
        case(
            "clockSkew 1d",
            with_issuer(json!({"clockSkew": "1d"})),
            Schema("should match '^([0-9]+(ms|s|m|h))+$'"),
        ),
        case(
            "a tenant with a slash",
            json!({"issuers": [issuer(json!({"issuer": "https://kc.example.com/realms/{tenant}", "tenants": ["a/b"]}))]}),
            Schema("should match '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'"),
        ),
        case(
            "maxTenants 1001",
            json!({"issuers": [issuer(json!({"issuer": "https://kc.example.com/realms/{tenant}", "admitTenants": {"expression": "true", "maxTenants": 1001}}))]}),
            Schema("should be less than or equal to 1000"),
        ),
        case(
            "admitTenants without an expression",
            json!({"issuers": [issuer(json!({"issuer": "https://kc.example.com/realms/{tenant}", "admitTenants": {"maxTenants": 5}}))]}),
            Schema("expression: Required value"),
        ),
        case(
            "65 tenants",
            json!({"issuers": [issuer(json!({"issuer": "https://kc.example.com/realms/{tenant}", "tenants": (0..65).map(|t| format!("t{t}")).collect::<Vec<_>>()}))]}),
            Schema("must have at most 64 items"),
        ),
        case(
            "maxTokenLifetime 1d",
            with_issuer(json!({"issuers": [issuer(json!({"maxTokenLifetime": "1d"}))]})),
            Schema("should match '^([0-9]+(ms|s|m|h))+$'"),
        ),
        case(
            "azureAd version v3",
            json!({"azureAd": {"tenantId": TENANT, "audiences": ["a"], "versions": ["v3"]}}),
            Schema("Unsupported value: \"v3\""),
        ),
        case(
            "a secretRef without key",
            with_issuer(json!({"debug": {"traceHeader": {"value": {"secretRef": {"name": "d"}}}}})),
            Schema("Required value"),
        ),
        case(
            "introspection cache of 0 entries",
            with_issuer(
                json!({"introspection": introspection(json!({"cache": {"maxEntries": 0}}))}),
            ),
            Schema("greater than or equal to 1"),
        ),
        Case {
            only_the_crd_refuses: Some(
                "the API server checks an enum on null too (kube-openapi's enum validator never \
                 matches null, even where the CRD lists it) although the field is nullable: \
                 in a cluster an enum field is left out, not set to null",
            ),
            ..case(
                "an enum field set to null",
                with_issuer(json!({"introspection": introspection(json!({"response": null}))})),
                Schema("Unsupported value: null"),
            )
        },
        Case {
            only_the_crd_refuses: Some(
                "the schema types claim values as strings: YAML files may write 42 or true, \
                 Kubernetes objects write \"42\" (the field's description says so)",
            ),
            ..case(
                "a claim value written as a number",
                with_issuer(json!({"requiredClaims": [{"name": "level", "values": [42]}]})),
                Schema("expected string"),
            )
        },
        Case {
            only_the_crd_refuses: Some(
                "string lengths are bounded in the CRD so the server can bound the rules' CEL \
                 cost; policy files have no such bound",
            ),
            ..case(
                "an issuer of 2049 bytes",
                json!({"issuers": [issuer(json!({"issuer": format!("https://{}", "i".repeat(2041))}))]}),
                Schema("may not be more than 2048 bytes"),
            )
        },
    ]
}

/// The example policies of the repository, each in a real namespace: examples/policies in
/// `shop`, each deploy/examples/<name>/jwtpolicy.yaml in namespace `<name>`.
fn example_policies() -> Vec<(String, Value)> {
    let mut files: Vec<(PathBuf, Option<String>)> = Vec::new();
    for entry in std::fs::read_dir(repository().join("examples/policies")).expect("examples") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            files.push((path, None));
        }
    }
    for entry in std::fs::read_dir(repository().join("deploy/examples")).expect("deploy/examples") {
        let dir = entry.expect("entry").path();
        let path = dir.join("jwtpolicy.yaml");
        if path.exists() {
            let name = dir
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            files.push((path, Some(name)));
        }
    }
    files.sort();
    let mut objects = Vec::new();
    for (path, namespace) in files {
        let text = std::fs::read_to_string(&path).expect("example");
        for document in serde_yaml::Deserializer::from_str(&text) {
            let mut object = Value::deserialize(document).expect("example YAML");
            if let Some(namespace) = &namespace {
                object["metadata"]["namespace"] = json!(namespace);
            }
            let label = format!(
                "{} ({})",
                path.strip_prefix(repository()).expect("in repo").display(),
                object["metadata"]["name"].as_str().expect("name")
            );
            objects.push((label, object));
        }
    }
    objects
}

fn verdict(rules: &BTreeSet<String>) -> String {
    if rules.is_empty() {
        "accepted".into()
    } else {
        format!("refused: {}", rules_summary(rules))
    }
}

fn rules_summary(rules: &BTreeSet<String>) -> String {
    rules
        .iter()
        .map(|m| format!("«{}»", m.chars().take(40).collect::<String>()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a value holds an explicit `null` anywhere.
fn holds_null(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.values().any(holds_null),
        Value::Array(items) => items.iter().any(holds_null),
        _ => false,
    }
}

/// Where the local evaluator is only an approximation of the server, and how: `Some(why)` for a
/// disagreement that is the evaluator's and not the CRD's.
///
/// The one approximation found: an explicit `null` in a nullable field. The API server treats it
/// as absent (`has()` is false, the field's own rules are not run: `tenantId: null` beside
/// `tenants`, `clockSkew: null`, `requireSignedTokens: null` are accepted), as tollgate's
/// `Option` fields do; kube's local evaluator binds the null, so `has()` is true and the field's
/// rules run on it and fail.
fn approximation(
    object: &Value,
    server_accepted: bool,
    local: &BTreeSet<String>,
) -> Option<&'static str> {
    (server_accepted && !local.is_empty() && holds_null(&object["spec"])).then_some(
        "the local evaluator runs rules on explicit nulls, which the server treats as absent",
    )
}

#[test]
fn every_rule_of_the_crd_is_decided_by_the_real_server_as_tollgate_expects() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    install(&cluster);
    let schema = schema();
    let mut rules = Vec::new();
    cel_rules(&schema, &mut rules);
    let messages: BTreeSet<&str> = rules.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(messages.len(), rules.len(), "two rules share a message");
    let secrets = Secrets::new();

    let mut submissions: Vec<(String, Value, Expect, Option<&str>)> = cases()
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let object = object(&format!("case-{i}"), NAMESPACE, &c.spec);
            (
                c.label.to_string(),
                object,
                c.expect,
                c.only_the_crd_refuses,
            )
        })
        .collect();
    let examples = example_policies();
    assert!(
        examples.len() >= 9,
        "examples/policies and deploy/examples hold fewer policies than expected: {}",
        examples.len()
    );
    let namespaces: BTreeSet<&str> = examples
        .iter()
        .map(|(_, o)| o["metadata"]["namespace"].as_str().expect("namespace"))
        .collect();
    for namespace in namespaces {
        cluster.kubectl(&["create", "namespace", namespace]);
    }
    for (label, object) in examples {
        submissions.push((label, object, Expect::Accepted, None));
    }

    let mut problems: Vec<String> = Vec::new();
    let mut disagreements: Vec<String> = Vec::new();
    let mut excused: Vec<String> = Vec::new();
    let mut covered: BTreeSet<String> = BTreeSet::new();
    let mut table: Vec<String> = Vec::new();
    let objects: Vec<&Value> = submissions.iter().map(|(_, object, ..)| object).collect();
    let answers = submit_all(&cluster, &objects);
    let sources = KeySources::offline().expect("offline key sources");
    for ((label, object, expect, only_the_crd_refuses), answer) in submissions.iter().zip(answers) {
        let server = rules_in(&answer.text, &rules);
        let local = local_verdict(&schema, object, &rules);
        let tollgate = tollgate_verdict(&object["spec"], &sources, &secrets);
        table.push(format!(
            "{label:<56} server {:<52} local {:<52} tollgate {}",
            if answer.accepted {
                "accepted".into()
            } else if server.is_empty() {
                "refused by the schema".into()
            } else {
                verdict(&server)
            },
            verdict(&local),
            match &tollgate {
                Ok(()) => "accepted".into(),
                Err(e) => format!("refused: {}", e.lines().next().unwrap_or_default()),
            },
        ));
        match expect {
            Expect::Accepted => {
                if !answer.accepted {
                    problems.push(format!("{label}: the server refused it: {}", answer.text));
                }
                if !answer.warnings.is_empty() {
                    problems.push(format!(
                        "{label}: the server warned: {}",
                        answer.warnings.join("; ")
                    ));
                }
            }
            Expect::Rule(fragment) => {
                let matching: Vec<&&str> =
                    messages.iter().filter(|m| m.contains(fragment)).collect();
                assert_eq!(
                    matching.len(),
                    1,
                    "{label}: «{fragment}» must name exactly one rule message"
                );
                let message = matching[0];
                if answer.accepted {
                    problems.push(format!(
                        "{label}: the server accepted it, expected «{message}»"
                    ));
                } else if !server.contains(*message) {
                    problems.push(format!(
                        "{label}: the server refused it without «{message}»: {}",
                        answer.text
                    ));
                } else {
                    covered.insert(message.to_string());
                }
            }
            Expect::Schema(fragment) => {
                if answer.accepted || !answer.text.contains(fragment) {
                    problems.push(format!(
                        "{label}: expected the schema to refuse it with «{fragment}», got: {}",
                        answer.text
                    ));
                }
            }
        }
        // The local evaluator runs the CEL rules only, never the schema (types, enums, lengths,
        // patterns, unknown fields): its verdict is compared with the rules the server names.
        if server != local {
            let line = format!(
                "{label}: the server {}, the local evaluator {}",
                verdict(&server),
                verdict(&local)
            );
            match approximation(object, answer.accepted, &local) {
                Some(why) => excused.push(format!("{line} ({why})")),
                None => disagreements.push(line),
            }
        }
        if !answer.accepted && tollgate.is_ok() && only_the_crd_refuses.is_none() {
            problems.push(format!(
                "{label}: the server refuses what tollgate accepts: {}",
                answer.text
            ));
        }
    }
    eprintln!("{}", table.join("\n"));
    if !excused.is_empty() {
        eprintln!(
            "\nwhere the local CEL evaluator is an approximation of the server:\n  {}",
            excused.join("\n  ")
        );
    }
    if !disagreements.is_empty() {
        eprintln!(
            "\nthe local CEL evaluator and the real server disagree:\n  {}",
            disagreements.join("\n  ")
        );
    }

    let uncovered: Vec<&&str> = messages.iter().filter(|m| !covered.contains(**m)).collect();
    if !uncovered.is_empty() {
        problems.push(format!(
            "CEL rules without a case the server refuses with their message (add one to cases()):\n  {}",
            uncovered
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
                .join("\n  ")
        ));
    }
    problems.extend(disagreements);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn unknown_fields_are_refused_and_status_is_written_only_through_its_subresource() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    install(&cluster);

    // A misspelt field is refused, never dropped: server-side apply and kubectl create (strict
    // field validation) both name it.
    let mut misspelt = object("misspelt", NAMESPACE, &with_issuer(json!({})));
    misspelt["spec"]["requiredClaim"] = json!([{"name": "scp"}]);
    let answer = submit(&cluster, &misspelt);
    assert!(
        !answer.accepted
            && answer
                .text
                .contains(".spec.requiredClaim: field not declared in schema"),
        "{}",
        answer.text
    );
    let created = cluster.try_kubectl_stdin(&["create"], &misspelt.to_string());
    assert!(
        created
            .as_ref()
            .is_err_and(|e| e.contains("unknown field \"spec.requiredClaim\"")),
        "{created:?}"
    );
    assert_eq!(cluster.get("jwtpolicy", Some(NAMESPACE), "misspelt"), None);

    // A status written with the object is dropped: only the status subresource writes it.
    let mut orders = object("orders", NAMESPACE, &with_issuer(json!({})));
    orders["status"] = json!({"loaded": "9/9", "observedGeneration": 7});
    let answer = submit(&cluster, &orders);
    assert!(answer.accepted, "{}", answer.text);
    let stored = cluster
        .get("jwtpolicy", Some(NAMESPACE), "orders")
        .expect("stored");
    assert_eq!(stored["status"], Value::Null, "{stored:#}");
    assert_eq!(stored["metadata"]["generation"], 1);

    cluster.kubectl(&[
        "patch",
        "jwtpolicy",
        "orders",
        "-n",
        NAMESPACE,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status": {"loaded": "1/1", "observedGeneration": 1}}"#,
    ]);
    let answer = submit(&cluster, &orders);
    assert!(answer.accepted, "{}", answer.text);
    let stored = cluster
        .get("jwtpolicy", Some(NAMESPACE), "orders")
        .expect("stored");
    assert_eq!(
        stored["status"],
        json!({"loaded": "1/1", "observedGeneration": 1}),
        "the object's own status replaced the subresource's"
    );
    assert_eq!(
        stored["metadata"]["generation"], 1,
        "a status write is no new generation"
    );
    let listed = cluster.kubectl(&["get", "jwtpolicies", "-n", NAMESPACE]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("orders") && l.contains("1/1")),
        "{listed}"
    );

    // A status that breaks the status schema is refused there too.
    let refused = cluster.try_kubectl(&[
        "patch",
        "jwtpolicy",
        "orders",
        "-n",
        NAMESPACE,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status": {"observedGeneration": "one"}}"#,
    ]);
    assert!(refused.is_err(), "{refused:?}");
}

/// The JSON pointer, in the `openAPIV3Schema`, of a path below `spec`: field names, `[]` for
/// the items of a list (`issuers[].algorithms`).
fn schema_pointer(path: &str) -> String {
    let mut pointer = "/properties/spec".to_string();
    for part in path.split('.') {
        let field = part.strip_suffix("[]").unwrap_or(part);
        pointer.push_str("/properties/");
        pointer.push_str(field);
        if part.ends_with("[]") {
            pointer.push_str("/items");
        }
    }
    pointer
}

fn node<'a>(schema: &'a Value, path: &str) -> &'a Value {
    schema
        .pointer(&schema_pointer(path))
        .unwrap_or_else(|| panic!("no {path} in the CRD's schema"))
}

fn max_items(schema: &Value, path: &str) -> usize {
    node(schema, path)["maxItems"]
        .as_u64()
        .unwrap_or_else(|| panic!("{path} has no maxItems: the server could not bound its cost"))
        as usize
}

fn max_length(schema: &Value, path: &str) -> usize {
    node(schema, path)["maxLength"]
        .as_u64()
        .unwrap_or_else(|| panic!("{path} has no maxLength")) as usize
}

/// The lists the CRD's rules iterate, below `spec`: lists whose items carry rules (run once per
/// item) and lists a rule walks with `all`/`exists`/`in`.
const ITERATED: [&str; 8] = [
    "issuers",
    "dpop.algorithms",
    "issuers[].algorithms",
    "rules",
    "decryption.keys",
    "decryption.keys[].algorithms",
    "introspection.acceptWithout",
    "resourceMetadata.authorizationServers",
];

/// The rules that walk a list (by a fragment of their message); their lists are in `ITERATED`.
const ITERATING_RULES: [&str; 6] = [
    "none is never accepted",
    "proofs are signed with asymmetric keys",
    "need sharedSecret",
    "anyone holding the public key",
    "userinfo answers carry no aud",
    "authorization servers are https issuer identifiers",
];

/// Every list of the schema (below `spec`) whose items carry CEL rules.
fn lists_with_item_rules(node: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(properties) = node["properties"].as_object() {
        for (name, child) in properties {
            let child_path = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            lists_with_item_rules(child, &child_path, out);
        }
    }
    if node["items"].is_object() {
        if node["items"].get("x-kubernetes-validations").is_some() {
            out.push(path.to_string());
        }
        lists_with_item_rules(&node["items"], &format!("{path}[]"), out);
    }
}

/// Counts the items of a list at `path` (below `spec`) in every place it occurs in `spec`.
fn list_sizes(spec: &Value, path: &str) -> Vec<usize> {
    let mut values = vec![spec];
    for part in path.split('.') {
        let (field, items) = match part.strip_suffix("[]") {
            Some(field) => (field, true),
            None => (part, false),
        };
        values = values.iter().map(|v| &v[field]).collect();
        if items {
            values = values
                .iter()
                .flat_map(|v| v.as_array().into_iter().flatten())
                .collect();
        }
    }
    values
        .iter()
        .filter_map(|v| v.as_array().map(Vec::len))
        .collect()
}

#[test]
fn objects_at_the_schema_maxima_stay_within_the_cel_cost_budget() {
    let schema = schema();
    let mut rules = Vec::new();
    cel_rules(&schema, &mut rules);
    // By construction: a new rule that walks a list, or a new list whose items carry rules,
    // fails here until the maximal objects below fill that list too.
    let walks = |rule: &str| {
        [
            ".all(",
            ".exists(",
            ".exists_one(",
            ".map(",
            ".filter(",
            " in self.",
            " in k.",
        ]
        .iter()
        .any(|w| rule.contains(w))
    };
    for rule in rules.iter().filter(|r| walks(&r.rule)) {
        assert!(
            ITERATING_RULES.iter().any(|f| rule.message.contains(f)),
            "the rule «{}» walks a list: add its list to ITERATED and ITERATING_RULES",
            rule.message
        );
    }
    let mut item_rules = Vec::new();
    lists_with_item_rules(&schema["properties"]["spec"], "", &mut item_rules);
    for list in &item_rules {
        assert!(
            ITERATED.contains(&list.as_str()),
            "the items of {list} carry rules: add {list} to ITERATED"
        );
    }

    let Some(cluster) = Cluster::start() else {
        return;
    };
    install(&cluster);

    let long = |prefix: &str, len: usize| format!("{prefix}{}", "a".repeat(len - prefix.len()));
    let cycle = |names: &[&str], n: usize| -> Vec<String> {
        names
            .iter()
            .cycle()
            .take(n)
            .map(|s| s.to_string())
            .collect()
    };
    let asymmetric = [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ];
    let shared = ["dir", "A128KW", "A256KW"];
    let issuers = max_items(&schema, "issuers");
    let algorithms = max_items(&schema, "issuers[].algorithms");
    let keys = max_items(&schema, "decryption.keys");
    let key_algorithms = max_items(&schema, "decryption.keys[].algorithms");
    let url = max_length(&schema, "issuers[].issuer");
    let rule_list: Vec<Value> = (0..max_items(&schema, "rules"))
        .map(|i| json!({"paths": [format!("/p{i}")], "requiredClaims": [{"name": "scope"}]}))
        .collect();
    let introspection = introspection(json!({
        "response": "userinfo",
        "acceptWithout": cycle(&["exp", "aud"], max_items(&schema, "introspection.acceptWithout")),
    }));
    let many_issuers = |last: &str| -> Vec<Value> {
        (0..issuers)
            .map(|i| {
                let mut names = cycle(&asymmetric, algorithms - 1);
                names.push(last.to_string());
                issuer(json!({
                    "issuer": long(&format!("https://idp{i}.example.com/"), url),
                    "jwksUri": long(&format!("https://idp{i}.example.com/keys/"), url),
                    "algorithms": names,
                }))
            })
            .collect()
    };
    let many_keys = |last: &str| -> Vec<Value> {
        (0..keys)
            .map(|i| {
                let mut names = cycle(&shared, key_algorithms - 1);
                names.push(last.to_string());
                json!({"secretRef": {"name": format!("k{i}"), "key": "jwk"}, "kid": format!("k{i}"), "algorithms": names})
            })
            .collect()
    };

    let servers = |last: &str| -> Vec<String> {
        let n = max_items(&schema, "resourceMetadata.authorizationServers");
        let len = max_length(&schema, "resourceMetadata.authorizationServers[]");
        let mut all: Vec<String> = (0..n - 1)
            .map(|i| long(&format!("https://as{i}.example.com/"), len))
            .collect();
        all.push(long(last, len));
        all
    };
    let accepted = [
        (
            "every issuer and rule at the maximum",
            json!({
                "issuers": many_issuers("EdDSA"),
                "rules": rule_list,
                "introspection": introspection,
                "resourceMetadata": {"resource": "https://api.example.com/mcp", "authorizationServers": servers("https://last.example.com/")},
                "dpop": {"mode": "allowed", "algorithms": cycle(&asymmetric, max_items(&schema, "dpop.algorithms"))},
            }),
        ),
        (
            "unsigned tokens with every key at the maximum",
            json!({
                "issuers": [issuer(json!({}))],
                "decryption": {"keys": many_keys("A256KW")},
                "requireSignedTokens": false,
                "rules": rule_list,
                "introspection": introspection,
            }),
        ),
    ];
    let longest_unknown = "X".repeat(max_length(&schema, "issuers[].algorithms[]"));
    let longest_open = "ECDH-ES+A256KW";
    let mut dpop_refused = cycle(&asymmetric, max_items(&schema, "dpop.algorithms") - 1);
    dpop_refused.push(longest_unknown.clone());
    let refused = json!({
        "issuers": many_issuers(&longest_unknown),
        "decryption": {"keys": many_keys(longest_open)},
        "requireSignedTokens": false,
        "rules": rule_list,
        "introspection": introspection,
        "resourceMetadata": {"resource": "https://api.example.com/mcp", "authorizationServers": servers("http://last.example.com/")},
        "dpop": {"mode": "allowed", "algorithms": dpop_refused},
    });

    let filled = |spec: &Value, path: &str| {
        let max = max_items(&schema, path);
        list_sizes(spec, path).contains(&max)
    };
    for path in ITERATED {
        assert!(
            accepted.iter().any(|(_, spec)| filled(spec, path)) && filled(&refused, path),
            "no maximal object fills {path}"
        );
    }

    // The server's estimate at CRD creation is what the bounds are for: without the bound of
    // a list a rule walks inside another walk, it refuses the CRD.
    let crd: Value =
        serde_yaml::from_str(&std::fs::read_to_string(crd_path()).expect("CRD")).expect("CRD YAML");
    for path in ITERATED {
        let mut unbounded = crd.clone();
        let pointer = format!(
            "/spec/versions/0/schema/openAPIV3Schema{}",
            schema_pointer(path)
        );
        unbounded
            .pointer_mut(&pointer)
            .and_then(Value::as_object_mut)
            .expect("list schema")
            .remove("maxItems");
        let file = cluster.dir.path().join("unbounded.json");
        std::fs::write(&file, unbounded.to_string()).expect("write CRD");
        let out = cluster.kubectl_output(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            "tollgate-test",
            "--dry-run=server",
            "-f",
            &file.display().to_string(),
        ]);
        let text = String::from_utf8_lossy(&out.stderr);
        let over = text.contains("estimated rule cost exceeds budget");
        eprintln!(
            "without maxItems on {path}, the server {} the CRD",
            if out.status.success() {
                "accepts"
            } else if over {
                "refuses (estimated CEL cost)"
            } else {
                "refuses"
            }
        );
        if path == "decryption.keys[].algorithms" {
            assert!(over, "{text}");
        }
    }

    let message = |fragment: &str| {
        rules
            .iter()
            .find(|r| r.message.contains(fragment))
            .map(|r| r.message.clone())
            .expect("rule")
    };
    for (i, (label, spec)) in accepted.iter().enumerate() {
        let object = object(&format!("maximal-{i}"), NAMESPACE, spec);
        let answer = submit(&cluster, &object);
        assert!(
            answer.accepted && answer.warnings.is_empty(),
            "{label}: {}",
            answer.text
        );
        assert_eq!(
            local_verdict(&schema, &object, &rules),
            BTreeSet::new(),
            "{label}: the local evaluator disagrees"
        );
    }
    let object = object("maximal-refused", NAMESPACE, &refused);
    let answer = submit(&cluster, &object);
    let expected: BTreeSet<String> = [
        "none is never accepted",
        "exactly one issuer",
        "anyone holding the public key",
        "authorization servers are https issuer identifiers",
        "proofs are signed with asymmetric keys",
    ]
    .iter()
    .map(|f| message(f))
    .collect();
    assert!(!answer.accepted, "the maximal refused object was accepted");
    assert!(
        !answer.text.to_lowercase().contains("cost"),
        "the server ran out of CEL cost budget: {}",
        answer.text
    );
    assert_eq!(rules_in(&answer.text, &rules), expected, "{}", answer.text);
    assert_eq!(
        local_verdict(&schema, &object, &rules),
        expected,
        "the local evaluator disagrees"
    );
    // Every issuer's own rule ran: none was skipped for want of budget.
    let per_issuer = answer
        .text
        .matches(&message("none is never accepted"))
        .count();
    assert_eq!(per_issuer, issuers, "{}", answer.text);
}

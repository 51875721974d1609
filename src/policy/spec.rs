//! The policy document: the public contract shared by policy files and (later) the `JwtPolicy`
//! custom resource. Field names are stable; new fields are added, never renamed.
//!
//! These types only describe shape. Meaning (URLs, durations, algorithms, limits) is checked in
//! `compile`, which turns a spec into a `Policy` or a `CompileError` that says what to change.

use std::borrow::Cow;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// `apiVersion` of policy documents.
pub const API_VERSION: &str = "tollgate.dev/v1alpha1";
/// `kind` of policy documents.
pub const KIND: &str = "JwtPolicy";

/// A policy document as written in a file (`apiVersion`, `kind`, `metadata`, `spec`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDocument {
    pub api_version: String,
    pub kind: String,
    pub metadata: DocumentMetadata,
    pub spec: JwtPolicySpec,
    /// Ignored: lets the output of `kubectl get -o yaml` be used as a file.
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

/// The parts of Kubernetes object metadata a policy file uses; other members are ignored.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentMetadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// What a `JwtPolicy` says: which requests it judges and how their tokens are validated.
///
/// Also the `JwtPolicy` custom resource (`tollgate.dev/v1alpha1`): the schema, its CEL rules and
/// the printer columns in `crds/` are generated from these types (`tollgate crdgen`).
// clippy reads the repeated `printcolumn(type_ = …)` arguments as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "JwtPolicy",
    namespaced,
    shortname = "jwtp",
    category = "tollgate",
    status = "JwtPolicyStatus",
    doc = "Which requests must carry a valid OAuth2/OIDC access token, and how it is validated.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Hosts", type_ = "string", json_path = ".spec.match.hosts"),
    printcolumn(
        name = "Targets",
        type_ = "string",
        priority = 1,
        json_path = ".spec.targetRefs[*].name"
    ),
    printcolumn(
        name = "Issuers",
        type_ = "string",
        json_path = ".spec.issuers[*].issuer"
    ),
    printcolumn(name = "Loaded", type_ = "string", json_path = ".status.loaded"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Would-Deny",
        type_ = "integer",
        priority = 1,
        json_path = ".status.dryRun.wouldDeny"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Accepted\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!has(self.targetRefs) || size(self.targetRefs) == 0 || !has(self.match) || ((!has(self.match.hosts) || size(self.match.hosts) == 0) && (!has(self.match.paths) || size(self.match.paths) == 0) && (!has(self.match.methods) || size(self.match.methods) == 0))").message("targetRefs and match.hosts/paths/methods are exclusive: the routes say which requests the policy judges"))]
#[x_kube(validation = Rule::new("(has(self.issuers) && size(self.issuers) > 0) || has(self.azureAd) || has(self.apiKeys)").message("list at least one issuer, or set azureAd or apiKeys"))]
#[x_kube(validation = Rule::new("!has(self.requireSignedTokens) || self.requireSignedTokens || has(self.decryption)").message("requireSignedTokens: false only applies to encrypted tokens; configure decryption"))]
#[x_kube(validation = Rule::new("!has(self.requireSignedTokens) || self.requireSignedTokens || (!has(self.azureAd) && has(self.issuers) && size(self.issuers) == 1)").message("requireSignedTokens: false needs exactly one issuer (and no azureAd): an unsigned token's iss is whatever the holder of the shared key wrote"))]
#[x_kube(validation = Rule::new("!has(self.requireSignedTokens) || self.requireSignedTokens || !has(self.decryption) || self.decryption.keys.all(k, has(k.algorithms) && size(k.algorithms) > 0 && k.algorithms.all(a, a in ['dir', 'A128KW', 'A256KW']))").message("requireSignedTokens: false needs every decryption key limited to dir, A128KW or A256KW (keys[].algorithms): with RSA or EC keys anyone holding the public key can encrypt claims"))]
pub struct JwtPolicySpec {
    /// Which requests this policy judges, by host, path and method. Exclusive with
    /// `targetRefs` (only `pathCase` and `pathReading` apply to both).
    #[serde(default, rename = "match")]
    pub match_: MatchSpec,
    /// Gateway API objects this policy attaches to (GEP-713, same namespace): an `HTTPRoute`
    /// (optionally one rule, by `sectionName`) or a `Gateway` (optionally one listener). The
    /// hosts, paths, methods, headers and query parameters it judges are derived from the
    /// routes and follow their edits. Exclusive with `match.hosts`, `match.paths` and
    /// `match.methods`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub target_refs: Vec<TargetRefSpec>,
    /// Where the token is read. Default: `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token: TokenSpec,
    /// Accepted issuers and where their keys come from. May be empty when `azureAd` is set.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub issuers: Vec<IssuerSpec>,
    /// Azure AD / Microsoft Entra ID tenants: expands to their v1/v2 issuers and discovery
    /// documents, checks the calling application, and explains Graph tokens and version
    /// mix-ups (API Management's `validate-azure-ad-token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_ad: Option<AzureAdSpec>,
    /// Keys that decrypt encrypted (JWE) access tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decryption: Option<DecryptionSpec>,
    /// API keys accepted beside (or instead of) tokens: each key is a Secret selected by
    /// label, with its owner and scopes, which `requiredClaims`, `rules`, `when` and
    /// `forward` read as the claims `sub` and `scope` (docs/api-keys.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<ApiKeysSpec>,
    /// Whether a decrypted token must contain a signed JWT, validated like any other (default
    /// true). `false` accepts encrypted claims without a signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_signed_tokens: Option<bool>,
    /// Claims every token must carry (Azure API Management `required-claims` semantics).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub required_claims: Vec<ClaimRequirementSpec>,
    /// Extra requirements per path/method, checked after the policy-wide ones. The matching rule
    /// with the longest path prefix applies; its failure answers 403 `insufficient_scope`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub rules: Vec<RuleSpec>,
    /// Tolerance for `exp`, `nbf` and `iat`, e.g. `30s` (default `30s`, at most `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) <= duration('10m')").message("clockSkew must be at most 10m"))]
    pub clock_skew: Option<String>,
    /// Whether tokens without `exp` are refused (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_expiration_time: Option<bool>,
    /// What the upstream receives when the request is allowed.
    #[serde(default)]
    pub forward: ForwardSpec,
    /// The answer when the request is denied.
    #[serde(default)]
    pub deny: DenySpec,
    /// OAuth2 token introspection (RFC 7662) for opaque tokens, or for every token (revocation
    /// checks), with the phantom-token pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection: Option<IntrospectionSpec>,
    /// Opt-in diagnostics for live traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug: Option<DebugSpec>,
    /// CEL conditions every request must meet, checked after the token (and the rule's
    /// `requiredClaims`); each sees `claims`, `request`, `source` and `now` (docs/cel.md). The
    /// first that is not true denies with 403 `condition_failed` and its `message`. Requests
    /// of `allowAnonymous` rules meet them too, without `claims`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub when: Vec<ConditionSpec>,
    /// The OAuth 2.0 protected resource this policy guards (RFC 9728): tollgate answers
    /// `GET /.well-known/oauth-protected-resource<path of resource>` on the resource's host
    /// with its metadata document, and names that URL in the `resource_metadata` parameter of
    /// the policy's `WWW-Authenticate` challenges, so clients (MCP clients among them) discover
    /// where to get a token. Declaring a resource claims its host for the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_metadata: Option<ResourceMetadataSpec>,
    /// `enforce` (default): a request the policy denies is answered with its denial.
    /// `dryRun`: every request is judged fully but allowed; what the policy would have denied
    /// is counted (`tollgate_dry_run_denials_total`), logged (rate-limited, with the reason and
    /// the hint) and summed in `status.dryRun`. Identity headers are set only from a token that
    /// passed; a request that would have been denied reaches the upstream without them.
    #[serde(default, skip_serializing_if = "PolicyMode::is_enforce")]
    pub mode: PolicyMode,
    /// The client's TLS certificate, as the gateway reports it (Envoy with
    /// `include_peer_certificate`, or a forwarded certificate header from a proxy in
    /// `--client-cert-proxies`). `required: true` refuses requests without one (403
    /// `certificate_required`), `allowAnonymous` rules included. Constraints on its subject,
    /// names or issuer are `when` conditions on `source.certificate` (docs/cel.md). Tokens
    /// bound to a certificate (RFC 8705 `cnf.x5t#S256`) are checked against it whatever this
    /// says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificateSpec>,
    /// DPoP (RFC 9449) sender-constrained tokens: whether `Authorization: DPoP <token>` with a
    /// `DPoP` proof header is read, and whether it is required (docs/dpop.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop: Option<DpopSpec>,
}

/// What a policy asks of the client's TLS certificate.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientCertificateSpec {
    /// Refuse requests that come without a client certificate (default false).
    #[serde(default)]
    pub required: bool,
}

/// `spec.dpop`: DPoP-bound access tokens (RFC 9449).
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new(
    "!has(self.proofMaxAge) || (duration(self.proofMaxAge) >= duration('1s') && duration(self.proofMaxAge) <= duration('5m'))"
).message("dpop.proofMaxAge must be between 1s and 5m"))]
pub struct DpopSpec {
    /// `disabled` (default): bearer tokens only, and a DPoP-bound token (`cnf.jkt`) is
    /// refused. `allowed`: bearer tokens, and DPoP-bound tokens with their proof.
    /// `required`: DPoP-bound tokens with their proof only.
    #[serde(default)]
    pub mode: DpopMode,
    /// Accepted proof algorithms. Default: every asymmetric algorithm (ES256, ES384, EdDSA,
    /// PS256/384/512, RS256/384/512). Symmetric algorithms and `none` are never accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9), inner(length(max = 8)))]
    #[x_kube(validation = Rule::new(
        "self.all(a, a in ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'EdDSA'])"
    ).message("dpop.algorithms are RS256/384/512, PS256/384/512, ES256/384 or EdDSA: proofs are signed with asymmetric keys"))]
    pub algorithms: Vec<String>,
    /// How old a proof's `iat` may be, e.g. `60s` (default `60s`, between `1s` and `5m`). A
    /// proof's `jti` is remembered this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = 32))]
    pub proof_max_age: Option<String>,
    /// The most proofs each replica remembers at once (default 100000, between 100 and
    /// 10000000). When all are inside their window, new proofs are refused (503) until some
    /// leave it: size it for the proof rate times `proofMaxAge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 10_000_000), transform = kubernetes_int32)]
    pub replay_cache_size: Option<u32>,
    /// Server-provided nonces (RFC 9449 §9): every proof must carry a nonce this policy
    /// issued (`DPoP-Nonce` on its 401s, `use_dpop_nonce`), so a proof cannot be made ahead
    /// of time and is good only while its nonce is. Stateless: every replica with the same
    /// secret accepts the nonces of the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<DpopNonceSpec>,
}

/// `dpop.nonce`: the secret nonces are made with, and how long each is accepted.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DpopNonceSpec {
    /// At least 32 random bytes, shared by every replica: a Secret's key (Kubernetes mode) or
    /// a file (file mode). Watched: a new secret applies without a restart (nonces made with
    /// the old one are then refused, and clients get a new one with `use_dpop_nonce`).
    pub secret: SecretSpec,
    /// How long a nonce is accepted, e.g. `5m` (default `5m`, between `10s` and `1h`). A new
    /// nonce is handed out every half lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = 32))]
    pub lifetime: Option<String>,
}

/// Whether a policy reads DPoP.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum DpopMode {
    /// Bearer tokens only; DPoP-bound tokens are refused.
    #[default]
    Disabled,
    /// Bearer tokens, and DPoP-bound tokens with their proof.
    Allowed,
    /// DPoP-bound tokens with their proof only.
    Required,
}

/// A CEL condition (docs/cel.md).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConditionSpec {
    /// A CEL expression that is true when the request may pass, e.g.
    /// `request.headers['x-tenant'] in claims.tenants`. Checked and costed when the policy
    /// compiles; an error while evaluating it counts as not true.
    #[schemars(length(min = 1, max = 4096))]
    pub expression: String,
    /// What the denial says when the condition is not true (in `error_description` unless
    /// `deny.detail: none`, and in the log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub message: Option<String>,
    /// The status of that denial (default 403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 400, max = 499), transform = kubernetes_int32)]
    pub status: Option<u16>,
}

/// A header computed with CEL (docs/cel.md).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComputedHeaderSpec {
    /// Header name. A value the client sent itself is always replaced or removed.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// A CEL expression of `claims`, `request`, `source` and `now` that yields the value, e.g.
    /// `claims.tid + '/' + claims.sub`. An error, a result that is not a string, or a string a
    /// header cannot carry removes the header.
    #[schemars(length(min = 1, max = 4096))]
    pub expression: String,
}

/// An OAuth 2.0 protected resource and its metadata (RFC 9728 §2).
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceMetadataSpec {
    /// The resource identifier: an https URL without query or fragment, with a lower-case
    /// host and no default port, written exactly as clients name the resource (they compare
    /// it as a string with the document's `resource`), e.g. `https://api.example.com/mcp`.
    /// Its metadata is served at `https://api.example.com/.well-known/oauth-protected-resource/mcp`
    /// (for `https://api.example.com`: `…/.well-known/oauth-protected-resource`).
    #[schemars(length(min = 9, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') && !self.contains('#') && !self.contains('?')").message("resource must be an https URL without query or fragment (RFC 9728 §2)"))]
    pub resource: String,
    /// Issuer identifiers of the authorization servers that issue tokens for this resource
    /// (`authorization_servers`). Default: the policy's issuers that are https URLs, and for
    /// Azure AD issuers (azureAd or hand-written) the tenant's v2.0 issuer, whose discovery
    /// document serves v1 and v2 tokens alike.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 9, max = 2048)))]
    #[x_kube(validation = Rule::new("self.all(s, s.startsWith('https://'))").message("authorization servers are https issuer identifiers"))]
    pub authorization_servers: Vec<String>,
    /// Scope values clients may request to reach this resource (`scopes_supported`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^[!#-\[\]-~]+$"), length(min = 1, max = 256))
    )]
    pub scopes_supported: Vec<String>,
    /// A human-readable name of the resource (`resource_name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub resource_name: Option<String>,
    /// An https URL of the resource's documentation for developers (`resource_documentation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://')").message("resourceDocumentation must be an https URL"))]
    pub resource_documentation: Option<String>,
}

/// Whether a policy's denials are answered (`enforce`) or only recorded (`dryRun`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub enum PolicyMode {
    /// Denials are answered.
    #[default]
    #[serde(rename = "enforce")]
    Enforce,
    /// Denials are counted, logged and shown in status; the request is allowed.
    #[serde(rename = "dryRun")]
    DryRun,
}

impl PolicyMode {
    pub fn is_enforce(&self) -> bool {
        *self == PolicyMode::Enforce
    }
}

/// Azure AD token versions.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum AzureVersion {
    /// v1.0 tokens: issuer `https://sts.windows.net/{tenant}/`, caller in `appid`.
    V1,
    /// v2.0 tokens: issuer `https://login.microsoftonline.com/{tenant}/v2.0`, caller in `azp`.
    V2,
}

/// An Azure AD (Microsoft Entra ID) application.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new(
    "has(self.tenantId) != (has(self.tenants) && size(self.tenants) > 0)"
).message("set tenantId, or tenants for a multi-tenant application, not both"))]
#[x_kube(validation = Rule::new(
    "!has(self.maxTokenLifetime) || (duration(self.maxTokenLifetime) >= duration('1s') && duration(self.maxTokenLifetime) <= duration('8760h'))"
).message("azureAd.maxTokenLifetime must be between 1s and 8760h"))]
pub struct AzureAdSpec {
    /// The directory (tenant) id, a GUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub tenant_id: Option<String>,
    /// The tenants a multi-tenant application accepts; each expands to its own issuers
    /// (the `{tenantid}` of the issuer template).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 64)))]
    pub tenants: Vec<String>,
    /// Token versions accepted (default both). Which one Azure issues is the API's
    /// `accessTokenAcceptedVersion` in its app registration manifest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub versions: Vec<AzureVersion>,
    /// The API's Application ID URI (`api://…`) and/or client id. Required.
    #[serde(default)]
    #[schemars(
        length(min = 1, max = 64),
        inner(length(min = 1, max = 1024)),
        transform = no_default
    )]
    pub audiences: Vec<String>,
    /// Applications allowed to call (`appid` of v1 tokens, `azp` of v2). Default: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 64)))]
    pub client_application_ids: Vec<String>,
    /// The cloud's login endpoint (default `https://login.microsoftonline.com`; e.g.
    /// `https://login.microsoftonline.us` or `https://login.chinacloudapi.cn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub authority: Option<String>,
    /// The host of v1 issuers (default `https://sts.windows.net`; `https://sts.chinacloudapi.cn`
    /// in the China cloud).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub v1_issuer_host: Option<String>,
    /// Allow a plain-http authority (local development only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_insecure_http: bool,
    /// The longest a token may live (`exp - iat`, or `exp - now` without `iat`), e.g. `1h`:
    /// `maxTokenLifetime` of every issuer the profile expands to. Azure issues access tokens
    /// for 60 to 90 minutes (up to 28 hours with continuous access evaluation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = 32))]
    pub max_token_lifetime: Option<String>,
}

/// Private keys that decrypt encrypted access tokens.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DecryptionSpec {
    /// Key files or Secret keys: PEM private keys (PKCS#8, `RSA PRIVATE KEY`, `EC PRIVATE KEY`),
    /// a private JWK or a JWK set. The token's `kid` chooses the key. At most 16 keys in all.
    #[schemars(length(min = 1, max = 16))]
    pub keys: Vec<DecryptionKeySpec>,
    /// Accept `RSA1_5` key encryption. RSAES-PKCS1-v1_5 is open to padding-oracle attacks;
    /// enable it only for an issuer that cannot use RSA-OAEP (padding failures are then handled
    /// in constant time, RFC 7516 §11.5).
    #[serde(
        default,
        rename = "allowRsa1_5",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub allow_rsa1_5: bool,
}

/// Where decryption keys are read.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DecryptionKeySpec {
    /// A file (file mode; relative to the policy file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// A key of a Kubernetes Secret in the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// The `kid` of the key (for PEM keys, which carry none; overrides a JWK's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub kid: Option<String>,
    /// Key-management algorithms the key may be used with (default: all that fit its type:
    /// RSA-OAEP/RSA-OAEP-256 for RSA, ECDH-ES* for EC/X25519, A128KW/A256KW/dir for AES keys).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9), inner(length(max = 16)))]
    pub algorithms: Vec<String>,
}

/// Opt-in diagnostics for live traffic.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DebugSpec {
    /// Return the check's trace in the `x-tollgate-trace` response header, only to requests
    /// that carry a header with a secret value (like API Management's `Ocp-Apim-Trace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_header: Option<TraceHeaderSpec>,
}

/// The request header that turns the trace on.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraceHeaderSpec {
    /// Header name (default `x-tollgate-debug`). Removed before the request goes upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The value the header must carry: a Secret key or a file (at least 16 bytes).
    pub value: SecretSpec,
}

/// A Gateway API object a policy attaches to (GEP-713 `LocalPolicyTargetReferenceWithSectionName`).
#[derive(
    Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRefSpec {
    /// `gateway.networking.k8s.io`.
    #[schemars(regex(pattern = r"^gateway\.networking\.k8s\.io$"))]
    pub group: String,
    /// `HTTPRoute` or `Gateway`.
    #[schemars(regex(pattern = "^(HTTPRoute|Gateway)$"))]
    pub kind: String,
    /// The object's name, in the policy's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// An HTTPRoute rule's `name`, or a Gateway listener's `name`. Unset: the whole object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 253)
    )]
    pub section_name: Option<String>,
}

/// Request matching. Empty lists match everything.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchSpec {
    /// Exact hosts (`api.example.com`), wildcards (`*.example.org`: any subdomain) or `*`.
    /// The port is ignored. Default: every host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(length(min = 1, max = 253)))]
    pub hosts: Vec<String>,
    /// Path prefixes, segment-aware: `/orders` matches `/orders` and `/orders/1`, not
    /// `/ordersx`. Literal: no wildcards, regular expressions or route parameters. Default:
    /// every path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 100),
        inner(regex(pattern = "^/[^*?#]*$"), length(max = 1024))
    )]
    pub paths: Vec<String>,
    /// HTTP methods (`GET` also covers `HEAD`). Default: every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// How the upstream compares letter case in paths: `Exact` (`/Admin` is another path than
    /// `/admin`) or `IgnoreCase` (ASP.NET, IIS: prefixes match in any case). Unset: a request
    /// whose policy or rule would differ by letter case is refused (400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_case: Option<PathCase>,
    /// Readings of a path tollgate otherwise refuses (400) because upstreams disagree about
    /// them; set one only when this policy's upstream reads paths that way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_reading: Option<PathReadingSpec>,
}

/// How a policy's upstream reads what tollgate otherwise refuses.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathReadingSpec {
    /// `Keep`: `%2F` is a character of its segment, never a separator (the upstream does not
    /// decode it, e.g. GitLab's `projects/group%2Fproject`). Default `Refuse`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoded_slashes: Option<EncodedSlashes>,
    /// `Merge`: `//` is read as `/`. Default `Refuse`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_segments: Option<EmptySegments>,
    /// `Strip`: `;` and the rest of its segment are dropped (Tomcat, Jetty: `;jsessionid=`).
    /// Default `Refuse`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<PathParameters>,
}

/// `%2F` in a path.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum EncodedSlashes {
    Refuse,
    Keep,
}

/// `//` in a path.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum EmptySegments {
    Refuse,
    Merge,
}

/// `;` parameters in a path.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum PathParameters {
    Refuse,
    Strip,
}

/// How an upstream compares letter case in paths.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum PathCase {
    /// Case-sensitive: `/Admin` and `/admin` are different paths.
    Exact,
    /// Case-insensitive: prefixes match in any letter case.
    IgnoreCase,
}

/// API keys (docs/api-keys.md). Each key is one Secret (data `key`, `owner`, optional
/// `scopes`), selected by label in the policy's namespace; in file mode, the Secret manifests
/// in `dir`, selected by the same labels.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeysSpec {
    /// Which Secrets hold the keys: all of these labels (at least one). Adding or removing a
    /// matching Secret takes effect without a restart.
    pub secret_selector: SecretSelectorSpec,
    /// File mode only: the folder of Secret manifests (`*.yaml`, `*.yml`, `*.json`), relative
    /// to the policy file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub dir: Option<String>,
    /// Header carrying the key, its whole value (default `x-api-key` unless `query` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
    /// Query parameter carrying the key. It is removed before the request goes upstream, which
    /// only Envoy's gRPC check can do: forward authentication (HTTP) refuses such a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub query: Option<String>,
    /// A request with both a key and a token: `Refuse` (default, 400 `api_key_ambiguous`) or
    /// `Token` (the token is judged, the key is removed and ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with_token: Option<ApiKeyWithToken>,
}

/// Labels selecting Secrets.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretSelectorSpec {
    /// Label name → value; a Secret must carry all of them.
    #[serde(default)]
    pub match_labels: std::collections::BTreeMap<String, String>,
}

/// What a request carrying both an API key and a token gets.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum ApiKeyWithToken {
    /// Denied as ambiguous (400 `api_key_ambiguous`).
    #[default]
    Refuse,
    /// The token is judged; the key is ignored and removed.
    Token,
}

/// Where the token is read, in this order: header, query parameter, cookie.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenSpec {
    /// Header name (default `Authorization`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Scheme before the token, case-insensitive (default `Bearer`); `""` takes the whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Query parameter carrying the token (RFC 6750 §2.3), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Cookie carrying the token, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// One accepted issuer. Keys come from exactly one of: `discovery` (the default when nothing
/// else is set), `jwksUri`, `jwks`, `publicKeys`, `keysFrom`, `sharedSecret`.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new(
    "(has(self.discovery) ? 1 : 0) + (has(self.jwksUri) ? 1 : 0) + (has(self.jwks) ? 1 : 0) + (has(self.publicKeys) && size(self.publicKeys) > 0 ? 1 : 0) + (has(self.keysFrom) ? 1 : 0) + (has(self.sharedSecret) ? 1 : 0) <= 1"
).message("keys must come from exactly one of discovery, jwksUri, jwks, publicKeys, keysFrom, sharedSecret"))]
#[x_kube(validation = Rule::new(
    "(has(self.allowInsecureHttp) && self.allowInsecureHttp) || ((!has(self.discovery) || self.discovery.startsWith('https://')) && (!has(self.jwksUri) || self.jwksUri.startsWith('https://')))"
).message("discovery and jwksUri must be https URLs (allowInsecureHttp: true allows http for development)"))]
#[x_kube(validation = Rule::new(
    "has(self.discovery) || has(self.jwksUri) || has(self.jwks) || (has(self.publicKeys) && size(self.publicKeys) > 0) || has(self.keysFrom) || has(self.sharedSecret) || self.issuer.startsWith('https://') || ((has(self.allowInsecureHttp) && self.allowInsecureHttp) && self.issuer.startsWith('http://'))"
).message("without another key source the issuer is used for OpenID discovery and must be an https URL"))]
#[x_kube(validation = Rule::new(
    "!has(self.algorithms) || self.algorithms.all(a, a.startsWith('HS') == has(self.sharedSecret))"
).message("HS256/HS384/HS512 need sharedSecret, and sharedSecret allows only HS256/HS384/HS512"))]
#[x_kube(validation = Rule::new(
    "(self.issuer.contains('{tenant}') || self.issuer.contains('{tenantid}')) == ((has(self.tenants) && size(self.tenants) > 0) || has(self.admitTenants))"
).message("an issuer template ({tenant} or {tenantid} in issuer) needs tenants or admitTenants, and tenants and admitTenants need a template"))]
#[x_kube(validation = Rule::new(
    "!has(self.admitTenants) || (!has(self.jwks) && !(has(self.publicKeys) && size(self.publicKeys) > 0) && !has(self.keysFrom) && !has(self.sharedSecret))"
).message("admitTenants fetches each tenant's keys when a token first names it: use discovery or jwksUri, not keys written in the policy"))]
#[x_kube(validation = Rule::new(
    "!has(self.caBundle) || (!has(self.jwks) && !(has(self.publicKeys) && size(self.publicKeys) > 0) && !has(self.keysFrom) && !has(self.sharedSecret) && !has(self.admitTenants))"
).message("caBundle is for keys fetched over https: use it with discovery or jwksUri (and not with admitTenants)"))]
pub struct IssuerSpec {
    /// The exact `iss` value of this issuer's tokens.
    #[schemars(length(min = 1, max = 2048))]
    pub issuer: String,
    /// OpenID discovery document. Default: `<issuer>/.well-known/openid-configuration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub discovery: Option<String>,
    /// JWKS URL, instead of discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub jwks_uri: Option<String>,
    /// Inline JWKS (`{keys: [...]}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwksSpec>,
    /// Inline PEM public keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub public_keys: Vec<PublicKeySpec>,
    /// Public keys kept in the cluster or on disk: a JWKS document (`{"keys": [...]}`) or one
    /// or more PEM public keys, read from a key of a Secret or a ConfigMap in the policy's
    /// namespace (Kubernetes mode) or from a file (file mode). Watched: a change applies
    /// without a restart. Private keys are refused, and every key must fit one of
    /// `algorithms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_from: Option<KeyMaterialSpec>,
    /// HMAC shared secret (HS256/384/512 are accepted only with one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_secret: Option<SecretSpec>,
    /// The CA certificates (PEM) that this issuer's discovery and key set servers are checked
    /// against, for identity providers with a private CA: a key of a Secret or ConfigMap in the
    /// policy's namespace, or a file (file mode). They replace the system's roots for this
    /// issuer (a public CA is not trusted unless its certificate is in the bundle). Watched:
    /// a new bundle applies without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundleSpec>,
    /// Accepted `aud` values; a token must name at least one. Required.
    #[serde(default)]
    #[schemars(
        length(min = 1, max = 64),
        inner(length(min = 1, max = 1024)),
        transform = no_default
    )]
    pub audiences: Vec<String>,
    /// Allowed signature algorithms. Default: every asymmetric algorithm that fits the key
    /// (HS* only with `sharedSecret`). `none` is never accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 12), inner(length(max = 8)))]
    #[x_kube(validation = Rule::new(
        "self.all(a, a in ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'EdDSA', 'HS256', 'HS384', 'HS512'])"
    ).message("algorithms are RS256/384/512, PS256/384/512, ES256/384, EdDSA or HS256/384/512; none is never accepted"))]
    pub algorithms: Vec<String>,
    /// Allow plain-http discovery/JWKS URLs (local development only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_insecure_http: bool,
    /// Allow discovery/JWKS URLs on link-local or cloud metadata addresses (169.254.0.0/16,
    /// fe80::/10, metadata.google.internal, …), refused by default so a policy cannot make
    /// tollgate read instance credentials.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_metadata_addresses: bool,
    /// The longest a token of this issuer may live, e.g. `1h` (at least `1s`, at most
    /// `8760h`): its `exp - iat`, or `exp - now` (with `clockSkew`) when it has no `iat`. A
    /// token that would live longer is refused (`token_lifetime_exceeded`), however far in the
    /// future its `exp`. A token without `exp` (`requireExpirationTime: false`) is accepted
    /// until `iat` plus this, and refused without `iat`. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('8760h')").message("maxTokenLifetime must be at least 1s and at most 8760h"))]
    pub max_token_lifetime: Option<String>,
    /// The tenants of an issuer template: when `issuer` (and `discovery` or `jwksUri`, if set)
    /// contains `{tenant}` (or Azure's spelling `{tenantid}`), each tenant listed expands to
    /// an issuer of its own, with its own keys; a token of a tenant not listed is refused
    /// (`issuer_not_allowed`). Required with a template, refused without one. The placeholder
    /// stands only in a URL's path, never in its host. At most 64 tenants, each letters,
    /// digits, `.`, `_` and `-` (starting with a letter or digit, at most 64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(
            length(min = 1, max = 64),
            regex(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
        )
    )]
    pub tenants: Vec<String>,
    /// Tenants of an issuer template admitted by a CEL condition on the tenant's name, for
    /// tenant sets too large or too open to list: a token of a tenant `tenants` does not list
    /// is accepted when `expression` is true for it. The tenant's issuer is built when a token
    /// first names it (its URLs checked as at load, its keys from the shared source of its URL,
    /// fetched then); a tenant the expression refuses is refused (`issuer_not_allowed`) and
    /// nothing is fetched for it. With `tenants` too, a token's tenant is accepted when either
    /// admits it. Keys must come from discovery or `jwksUri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admit_tenants: Option<TenantAdmissionSpec>,
}

/// Which tenants an issuer template admits beyond those it lists (`admitTenants`), and how
/// many it holds at once.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantAdmissionSpec {
    /// A CEL expression of `tenant` (a string: the tenant's name from the token's `iss`) that
    /// is true for a tenant to admit, e.g. `tenant.startsWith('cust-')` or
    /// `tenant.matches('^[0-9a-f-]{36}$')`. Nothing of the token is verified when it runs, so
    /// it sees no claims, request or time. Checked and costed when the policy compiles; an
    /// error while evaluating it refuses the tenant.
    #[schemars(length(min = 1, max = 4096))]
    pub expression: String,
    /// What the denial of a tenant the expression refuses says (in `error_description` unless
    /// `deny.detail: none`, and in the log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub message: Option<String>,
    /// The most tenants admitted by the expression held at once (default 100, at most 1000;
    /// listed tenants do not count). A tenant no token named for an hour leaves its slot; while
    /// every slot is held, a new tenant is answered 503 `issuer_unavailable` and no admitted
    /// tenant is evicted for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000), transform = kubernetes_int32)]
    pub max_tenants: Option<u32>,
}

/// An inline JSON Web Key Set.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwksSpec {
    /// JWKs (RFC 7517).
    #[schemars(schema_with = "jwk_list_schema")]
    pub keys: Vec<serde_json::Value>,
}

/// An inline PEM public key.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublicKeySpec {
    /// Key id matched against the token's `kid`; without one the key is tried for tokens
    /// without `kid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// `-----BEGIN PUBLIC KEY-----` (RSA, EC P-256/P-384, Ed25519) or `RSA PUBLIC KEY`.
    pub pem: String,
}

/// Where an issuer's public keys (`keysFrom`) are read: exactly one of `file`, `secretRef`,
/// `configMapRef`.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new(
    "(has(self.file) ? 1 : 0) + (has(self.secretRef) ? 1 : 0) + (has(self.configMapRef) ? 1 : 0) == 1"
).message("keysFrom needs exactly one of file, secretRef, configMapRef"))]
pub struct KeyMaterialSpec {
    /// A file (file mode; relative paths are relative to the policy file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub file: Option<String>,
    /// A key of a Secret in the policy's namespace (Kubernetes mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// A key of a ConfigMap in the policy's namespace (Kubernetes mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapKeyRef>,
}

/// Where an issuer's CA bundle (`caBundle`) is read: exactly one of `file`, `secretRef`,
/// `configMapRef`.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new(
    "(has(self.secretRef) ? 1 : 0) + (has(self.configMapRef) ? 1 : 0) + (has(self.file) ? 1 : 0) == 1"
).message("caBundle needs exactly one of file, secretRef, configMapRef"))]
pub struct CaBundleSpec {
    /// A file (file mode; relative paths are relative to the policy file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub file: Option<String>,
    /// A key of a Secret in the policy's namespace (Kubernetes mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// A key of a ConfigMap in the policy's namespace (Kubernetes mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapKeyRef>,
}

/// A key of a Kubernetes ConfigMap.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMapKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Where a secret value is read.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretSpec {
    /// A file (relative paths are relative to the policy file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// A Kubernetes Secret in the policy's namespace (Kubernetes mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// How the stored value is encoded (default `raw`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<SecretEncoding>,
}

/// A key of a Kubernetes Secret.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// Encoding of a stored secret.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SecretEncoding {
    /// The bytes as stored (a trailing newline is removed).
    #[default]
    Raw,
    /// Standard base64.
    Base64,
    /// base64url, with or without padding.
    Base64url,
}

/// `any`: at least one value must be present; `all`: every value must be present.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MatchMode {
    #[default]
    Any,
    All,
}

/// A claim the token must carry.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimRequirementSpec {
    /// Claim name; a dotted path (`realm_access.roles`) reaches nested claims when no claim has
    /// the literal name.
    pub name: String,
    /// `any` (default) or `all` of `values`.
    #[serde(default, rename = "match")]
    pub match_: MatchMode,
    /// Splits string claims (e.g. `" "` for `scp`/`scope`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
    /// Accepted values, compared as strings (numbers and booleans by their JSON text). Empty:
    /// the claim only has to be present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<ClaimValue>,
}

/// A rule for some paths/methods.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new(
    "!((has(self.allowAnonymous) && self.allowAnonymous) && has(self.requiredClaims) && size(self.requiredClaims) > 0)"
).message("a rule needs either requiredClaims or allowAnonymous: true, not both"))]
#[x_kube(validation = Rule::new(
    "(has(self.allowAnonymous) && self.allowAnonymous) || (has(self.requiredClaims) && size(self.requiredClaims) > 0) || (has(self.when) && size(self.when) > 0)"
).message("a rule needs requiredClaims, when, or allowAnonymous: true"))]
pub struct RuleSpec {
    /// Path prefixes (segment-aware, literal). Default: every path of the policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = "^/[^*?#]*$"), length(max = 1024)))]
    pub paths: Vec<String>,
    /// Methods (`GET` also covers `HEAD`; a rule naming `OPTIONS` takes preflights before
    /// longer rules for all methods). Default: every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Claims required in addition to the policy-wide ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_claims: Vec<ClaimRequirementSpec>,
    /// Let matching requests through without a token (the token is not read).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_anonymous: bool,
    /// CEL conditions for these paths/methods, after the policy-wide ones (docs/cel.md).
    /// In an `allowAnonymous` rule they cannot read `claims`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub when: Vec<ConditionSpec>,
}

/// What the upstream receives on allow.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForwardSpec {
    /// Claims copied into request headers (arrays joined with `,`). A header a client sent
    /// itself is always replaced or removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims_to_headers: Vec<ClaimToHeaderSpec>,
    /// Header receiving the verified claims as base64url JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_header: Option<String>,
    /// Whether the token stays in the request (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_token: Option<bool>,
    /// Headers computed with CEL from the claims and the request (docs/cel.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<ComputedHeaderSpec>,
    /// The claims an allow returns to Envoy as dynamic metadata (`claims` under
    /// `envoy.filters.http.ext_authz`), for RBAC, routing or access logs. Absent: every
    /// verified claim. `[]`: none (the answer carries only the policy and the issuer, and the
    /// verified-token cache keeps only the claims the policy reads). A list: those top-level
    /// claims. Envoy's gRPC check only; forward authentication has no metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub metadata_claims: Option<Vec<String>>,
}

/// One claim copied into a header.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeaderSpec {
    pub claim: String,
    pub header: String,
}

/// How much `error_description` reveals.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DenyDetail {
    /// Only the message.
    None,
    /// The reason code and what failed (never the token, never the policy's own settings).
    #[default]
    Reason,
}

/// How tokens are introspected.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new(
    "!has(self.endpoint) || self.endpoint.startsWith('https://') || (has(self.allowInsecureHttp) && self.allowInsecureHttp)"
).message("the introspection endpoint must be an https URL (allowInsecureHttp: true allows http for development)"))]
#[x_kube(validation = Rule::new(
    "!has(self.response) || self.response != 'userinfo' || (has(self.acceptWithout) && 'aud' in self.acceptWithout && 'exp' in self.acceptWithout)"
).message("userinfo answers carry no aud and no exp: say so with acceptWithout: [aud, exp] (the answer then proves only that the token is active for its user)"))]
pub struct IntrospectionSpec {
    /// Introspection endpoint (or userinfo endpoint with `response: userinfo`). Default: the
    /// `introspection_endpoint` (`userinfo_endpoint`) of the first issuer's discovery document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub endpoint: Option<String>,
    /// The client tollgate authenticates as.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub client_id: String,
    /// The client secret: `{name, key}` of a Kubernetes Secret in the policy's namespace, or
    /// `{file}` in file mode (relative to the policy file). Re-read when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_ref: Option<ClientSecretRef>,
    /// `client_secret_basic` (default) or `client_secret_post`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_method: Option<ClientAuthMethod>,
    /// `json` (RFC 7662, default), `jwt` (`Accept: application/jwt`, the body is a JWT; 204 is
    /// inactive), `token-introspection+jwt` (RFC 9701, a signed response), or `userinfo` (call the
    /// OpenID userinfo endpoint with the token; 200 is active).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<IntrospectionResponse>,
    /// `opaque` (default): only tokens that are not JWTs; `always`: JWTs too (revocation checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<IntrospectWhen>,
    /// Forward the JWT the IdP returns instead of the opaque token.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub phantom_token: bool,
    /// Claims the IdP's answers do not carry, whose checks are then skipped when they are
    /// absent (a claim present is always checked): `aud` (the audience check), `exp` (the
    /// expiration requirement; `active: true` already says the token is live). Userinfo answers
    /// carry neither, so `response: userinfo` needs both: its answer proves only that the token
    /// is active for its user. Never implied: an answer without them is refused otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub accept_without: Vec<AnswerClaim>,
    /// Answer caching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<IntrospectionCacheSpec>,
    /// Timeout of one introspection call (default 2s, at most 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub timeout: Option<String>,
    /// Allow a plain-http endpoint (local development only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_insecure_http: bool,
    /// Allow an endpoint on a link-local or cloud metadata address (refused by default).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_metadata_addresses: bool,
}

/// A claim an introspection or userinfo answer may lack.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AnswerClaim {
    /// The audience: without it, the answer does not say which API the token is for.
    Aud,
    /// The expiration time.
    Exp,
}

/// Where the introspection client secret is.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientSecretRef {
    /// Kubernetes Secret name (same namespace as the policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Key in that Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// A file (file mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// OAuth2 client authentication at the introspection endpoint.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
}

/// The introspection response format.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum IntrospectionResponse {
    #[default]
    #[serde(rename = "json")]
    Json,
    #[serde(rename = "jwt")]
    Jwt,
    #[serde(rename = "token-introspection+jwt")]
    TokenIntrospectionJwt,
    #[serde(rename = "userinfo")]
    Userinfo,
}

/// Which tokens are introspected.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IntrospectWhen {
    #[default]
    Opaque,
    Always,
}

/// Introspection answer caching. Keys are digests of the token, never the token.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IntrospectionCacheSpec {
    /// TTL of an active answer without `Cache-Control: max-age` (default 300s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_ttl: Option<String>,
    /// Upper bound of any TTL (default 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<String>,
    /// TTL of an inactive answer (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_ttl: Option<String>,
    /// Most cached answers (default 100000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000), transform = kubernetes_int64)]
    pub max_entries: Option<u64>,
}

/// The answer for a denied request.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DenySpec {
    /// Status for token failures (default 401, 400–499). Failed `rules` answer 403.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 400, max = 499), transform = kubernetes_int32)]
    pub status: Option<u16>,
    /// Human message in the JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `reason` (default) or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<DenyDetail>,
    /// `realm` of the `WWW-Authenticate` challenge (default: the request's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
}

/// The `JwtPolicy` CustomResourceDefinition as YAML, as `tollgate crdgen` writes it to `crds/`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt as _;
    Ok(format!(
        "# Generated from src/policy/spec.rs by `tollgate crdgen`; do not edit.\n{}",
        serde_yaml::to_string(&JwtPolicy::crd())?
    ))
}

/// Where `crdgen` writes the CRD, relative to the repository root.
pub const CRD_FILE: &str = "crds/jwtpolicies.tollgate.dev.yaml";

/// Drops the `default` schemars derives from `#[serde(default)]`: a required list defaults to
/// empty in Rust (so that its absence gets the compiler's message), but the API server refuses a
/// CRD whose default breaks the field's own `minItems`.
fn no_default(schema: &mut Schema) {
    schema.remove("default");
}

/// Kubernetes knows the integer formats `int32` and `int64` only (the API server warns about
/// schemars' `uint16`/`uint64`); the ranges stay in `minimum`/`maximum`.
fn kubernetes_int32(schema: &mut Schema) {
    schema.insert("format".into(), "int32".into());
}

fn kubernetes_int64(schema: &mut Schema) {
    schema.insert("format".into(), "int64".into());
}

fn jwk_list_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 100,
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

/// What the replicas report about a policy. Written by the replica holding the status Lease.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JwtPolicyStatus {
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (the spec compiled; reasons `InvalidSpec`, `SecretNotFound`, `HostConflict`,
    /// `ResourceConflict`: its resource metadata is refused, its requests are still judged) and
    /// `Ready` (every issuer's keys fetched; reason `IssuerUnreachable` when not).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Per issuer: keys loaded, last refresh, last error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<IssuerStatus>,
    /// Replicas serving `observedGeneration` out of those running, e.g. `3/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loaded: Option<String>,
    /// The same as numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<ReplicaCounts>,
    /// Per Gateway API ancestor of each `targetRefs` entry (GEP-713): `Accepted` (the policy
    /// judges the target's requests there; reasons `TargetNotFound`, `ParentNotFound`, `NotAttached`,
    /// `Conflicted`, `Invalid`, `NoRoutes`) and `ResolvedRefs` (the target and the Gateway it
    /// attaches to exist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub ancestors: Vec<PolicyAncestorStatus>,
    /// Present while the serving generation has `mode: dryRun`: what it would have denied over
    /// the recent window, summed over the replicas serving that generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<DryRunStatus>,
}

/// What a dry-run policy would have denied recently (`status.dryRun`). Every replica counts the
/// requests it judges in one-minute buckets and reports the last `window` in its heartbeat
/// Lease; the status writer sums the replicas serving `observedGeneration`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DryRunStatus {
    /// How far back the counts reach, e.g. `10m` (in whole minutes: the current minute and
    /// the ones before it).
    #[schemars(length(max = 16))]
    pub window: String,
    /// The generation whose decisions are counted (counting restarts with every new one).
    pub observed_generation: i64,
    /// RFC 3339 time from which the counts are complete, when that is less than one window
    /// ago: the latest time a counted replica began judging with this generation (a new
    /// generation, a restarted replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub since: Option<String>,
    /// Replicas whose counts are included (those serving `observedGeneration`).
    pub replicas: i32,
    /// Requests the policy judged in the window.
    pub requests: i64,
    /// Of those, the requests it would have denied (allowed because of `mode: dryRun`).
    pub would_deny: i64,
    /// The would-be denials by reason code (docs/reasons.md), most frequent first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub denials: Vec<DryRunDenial>,
}

/// How often a dry-run policy would have denied for one reason.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DryRunDenial {
    /// The reason code the denial would have carried (`token_expired`, `insufficient_scope`, …).
    #[schemars(length(max = 64))]
    pub reason: String,
    pub count: i64,
}

/// The status of a policy at one ancestor (Gateway API `PolicyAncestorStatus`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAncestorStatus {
    pub ancestor_ref: AncestorRefStatus,
    /// `tollgate.dev/jwtpolicy-controller`.
    pub controller_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Gateway API `ParentReference` of an ancestor.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AncestorRefStatus {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// Key status of one issuer.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerStatus {
    pub issuer: String,
    /// Usable keys in the issuer's key set.
    pub keys: i32,
    /// RFC 3339 time of the last successful fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh: Option<String>,
    /// Why the last fetch failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Keys of the issuer's key set that are refused, and why (`kid: reason`): a key with the
    /// ROCA weakness, private key material, a key too small.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected_keys: Vec<String>,
}

/// How many replicas serve the current generation.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaCounts {
    pub loaded: i32,
    pub total: i32,
}

/// A claim value in `requiredClaims`: written as a string, number or boolean, compared as text.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClaimValue(pub String);

impl fmt::Display for ClaimValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ClaimValue {
    fn from(value: &str) -> Self {
        ClaimValue(value.to_string())
    }
}

impl Serialize for ClaimValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ClaimValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = ClaimValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ClaimValue, E> {
                Ok(ClaimValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ClaimValue, E> {
                Ok(ClaimValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ClaimValue, E> {
                Ok(ClaimValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ClaimValue, E> {
                Ok(ClaimValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ClaimValue, E> {
                serde_json::Number::from_f64(v)
                    .map(|n| ClaimValue(n.to_string()))
                    .ok_or_else(|| E::custom("not a finite number"))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

impl JsonSchema for ClaimValue {
    fn schema_name() -> Cow<'static, str> {
        "ClaimValue".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "Compared as text; write numbers and booleans in quotes (\"42\", \"true\")."
        })
    }
}

#[cfg(test)]
mod tests;

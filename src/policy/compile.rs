//! Spec → compiled [`Policy`]: every field checked, every problem reported with its path and
//! what to change. A policy either compiles whole or not at all.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::Algorithm;
use url::Url;

mod resource;

pub use resource::{MAX_AGE_SECS, ProtectedResource, WELL_KNOWN};

use super::gateway::{self, RouteEntry};
use super::route::{HostPattern, Methods, PathCase, PathPrefix, PathReading};
use super::spec::{
    self, AzureAdSpec, CaBundleSpec, ClaimRequirementSpec, ConfigMapKeyRef, DecryptionSpec,
    DenyDetail, IntrospectionResponse, IntrospectionSpec, IssuerSpec, JwtPolicySpec,
    KeyMaterialSpec, SecretEncoding, SecretKeyRef, SecretSpec, TargetRefSpec, TraceHeaderSpec,
};
use super::tenants::{self, Admission, IssuerTemplate, Tenant};
use crate::apikeys::{self, ApiKeys, KeyData, KeyRecord, WithToken};
use crate::azure::{self, AzureIssuer};
use crate::claims::ClaimRequirement;
use crate::expression::{Environment, Expression, Reads};
use crate::introspect::{
    AcceptWithout, CacheSettings, EndpointSource, Introspector, IntrospectorConfig,
};
use crate::jwe::{self, Decryptor};
use crate::jwks::{CaBundle, KeySet, KeySource, KeySources, Origin, Reach, VerifyingKey};

/// Bounds that keep one policy's cost predictable.
pub mod limits {
    pub const ISSUERS: usize = 32;
    pub const AUDIENCES: usize = 64;
    pub const HOSTS: usize = 1000;
    pub const PATHS: usize = 100;
    pub const RULES: usize = 1000;
    pub const REQUIREMENTS: usize = 64;
    pub const VALUES: usize = 256;
    pub const FORWARD_HEADERS: usize = 64;
    pub const MAX_CLOCK_SKEW_SECS: u64 = 600;
    pub const DEFAULT_CLOCK_SKEW_SECS: u64 = 30;
    /// Issuers of a policy once issuer templates and `azureAd` are expanded.
    pub const EXPANDED_ISSUERS: usize = 128;
    /// Bounds of `maxTokenLifetime` (as the CRD's rule: 1s to 8760h).
    pub const MIN_TOKEN_LIFETIME_SECS: u64 = 1;
    pub const MAX_TOKEN_LIFETIME_SECS: u64 = 8760 * 3600;
}

const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];
const SYMMETRIC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

/// What kind of problem, for the `Accepted` condition's reason in Kubernetes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// The spec itself is wrong.
    InvalidSpec,
    /// A referenced secret (file or Kubernetes Secret) could not be read.
    SecretNotFound,
    /// Not an error: something that compiles but can never apply (a shadowed rule).
    Warning,
    /// A targeted route has a match tollgate cannot judge the way the gateway routes it.
    UnsupportedRoute,
}

/// One thing wrong with a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where, e.g. `spec.issuers[0].jwksUri`.
    pub field: String,
    /// What is wrong and what to change.
    pub message: String,
    pub kind: ProblemKind,
}

/// Why a policy did not compile: every problem found, not just the first.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct CompileError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", p.field, p.message)?;
        }
        Ok(())
    }
}

impl CompileError {
    /// Bounded reason for status conditions and metrics.
    pub fn reason(&self) -> &'static str {
        if self
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::SecretNotFound)
        {
            "SecretNotFound"
        } else if self
            .problems
            .iter()
            .all(|p| p.kind == ProblemKind::UnsupportedRoute)
        {
            "UnsupportedRouteMatch"
        } else {
            "InvalidSpec"
        }
    }
}

/// One Secret a label selector picked (`apiKeys`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelectedSecret {
    /// Where it came from, for messages: `namespace/name`, or `file (name)` in file mode.
    pub source: String,
    pub data: std::collections::BTreeMap<String, Vec<u8>>,
}

/// Reads secret values referenced by a policy.
pub trait SecretSource: Send + Sync {
    /// The raw bytes of the referenced secret, or why they cannot be read.
    fn read(&self, namespace: &str, spec: &SecretSpec) -> Result<Vec<u8>, String>;

    /// The Secrets in `namespace` carrying all of `labels` (in file mode: the Secret
    /// manifests in `dir`), sorted by source.
    fn select(
        &self,
        _namespace: &str,
        _labels: &std::collections::BTreeMap<String, String>,
        _dir: Option<&str>,
    ) -> Result<Vec<SelectedSecret>, String> {
        Err("Secrets selected by label cannot be read here".into())
    }

    /// The bytes of a key of a ConfigMap (Kubernetes mode only).
    fn read_config_map(
        &self,
        _namespace: &str,
        _reference: &ConfigMapKeyRef,
    ) -> Result<Vec<u8>, String> {
        Err("configMapRef needs Kubernetes mode; in file mode use file:".to_string())
    }

    /// False when `read` only stands in for values it cannot see (admission review): the
    /// content of keys is then checked later, by the replicas.
    fn has_values(&self) -> bool {
        true
    }
}

/// Secrets from files (file mode). Relative paths are resolved against `base_dir`.
pub struct FileSecrets {
    pub base_dir: Option<PathBuf>,
    /// Every file read, with a digest of its content, so a change can be noticed.
    pub read: std::sync::Mutex<Vec<(PathBuf, [u8; 32])>>,
}

impl FileSecrets {
    pub fn new(base_dir: Option<PathBuf>) -> Self {
        FileSecrets {
            base_dir,
            read: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The files read so far and their digests.
    pub fn files(&self) -> Vec<(PathBuf, [u8; 32])> {
        self.read.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// A digest of a secret file's content (of a folder's: its files' names and contents), or
/// `None` when it cannot be read.
pub fn file_digest(path: &std::path::Path) -> Option<[u8; 32]> {
    if path.is_dir() {
        return dir_digest(path);
    }
    std::fs::read(path)
        .ok()
        .map(|bytes| crate::jose::sha256(&bytes))
}

/// The most files an `apiKeys.dir` may hold.
const MAX_KEY_FILES: usize = crate::apikeys::MAX_KEYS;

fn key_files(dir: &std::path::Path) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        let manifest = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if manifest && !hidden && path.is_file() {
            files.push(path);
        }
        if files.len() > MAX_KEY_FILES {
            return Err(format!(
                "{}: more than {MAX_KEY_FILES} files",
                dir.display()
            ));
        }
    }
    files.sort();
    Ok(files)
}

fn dir_digest(dir: &std::path::Path) -> Option<[u8; 32]> {
    let mut all = Vec::new();
    for path in key_files(dir).ok()? {
        all.extend_from_slice(path.as_os_str().as_encoded_bytes());
        all.push(0);
        all.extend_from_slice(&std::fs::read(&path).ok().map(|b| crate::jose::sha256(&b))?);
    }
    Some(crate::jose::sha256(&all))
}

/// The Secret manifests of one file that carry all of `labels`.
fn secrets_in(
    path: &std::path::Path,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<SelectedSecret>, String> {
    use serde::Deserialize as _;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > 64 * 1024 {
        return Err(format!("{}: larger than 64 KiB", path.display()));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_slice(&bytes).enumerate() {
        let value = serde_json::Value::deserialize(document)
            .map_err(|e| format!("{} document {i}: {e}", path.display()))?;
        if value.is_null() || value.get("kind").and_then(|k| k.as_str()) != Some("Secret") {
            continue;
        }
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(value)
            .map_err(|e| format!("{} document {i}: not a Secret: {e}", path.display()))?;
        let carried = secret.metadata.labels.unwrap_or_default();
        if !labels.iter().all(|(k, v)| carried.get(k) == Some(v)) {
            continue;
        }
        let mut data: std::collections::BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        for (k, v) in secret.string_data.unwrap_or_default() {
            data.insert(k, v.into_bytes());
        }
        let name = secret.metadata.name.unwrap_or_default();
        out.push(SelectedSecret {
            source: format!("{} ({name})", path.display()),
            data,
        });
    }
    Ok(out)
}

impl SecretSource for FileSecrets {
    fn read(&self, _namespace: &str, spec: &SecretSpec) -> Result<Vec<u8>, String> {
        let Some(file) = &spec.file else {
            return Err(if spec.secret_ref.is_some() {
                "secretRef needs Kubernetes mode; in file mode use file:".to_string()
            } else {
                "set file: (or secretRef: in Kubernetes mode)".to_string()
            });
        };
        let path = match &self.base_dir {
            Some(base) if PathBuf::from(file).is_relative() => base.join(file),
            _ => PathBuf::from(file),
        };
        let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.len() > 64 * 1024 {
            return Err(format!("{}: larger than 64 KiB", path.display()));
        }
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Ok(mut read) = self.read.lock() {
            read.push((path, crate::jose::sha256(&bytes)));
        }
        Ok(bytes)
    }

    fn select(
        &self,
        _namespace: &str,
        labels: &std::collections::BTreeMap<String, String>,
        dir: Option<&str>,
    ) -> Result<Vec<SelectedSecret>, String> {
        let Some(dir) = dir else {
            return Err(
                "in file mode set apiKeys.dir: the folder of the key Secrets' manifests".into(),
            );
        };
        let path = match &self.base_dir {
            Some(base) if PathBuf::from(dir).is_relative() => base.join(dir),
            _ => PathBuf::from(dir),
        };
        // The digest first: a change while the files are read is seen on the next reload.
        let digest = dir_digest(&path);
        let mut out = Vec::new();
        for file in key_files(&path)? {
            out.extend(secrets_in(&file, labels)?);
        }
        if let (Ok(mut read), Some(digest)) = (self.read.lock(), digest) {
            read.push((path, digest));
        }
        Ok(out)
    }
}

/// What compilation needs from outside the spec.
pub struct CompileContext<'a> {
    pub key_sources: &'a KeySources,
    pub secrets: &'a dyn SecretSource,
}

/// Where the token is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenLocation {
    /// Lower-case header name.
    pub header: String,
    /// `None`: the whole header value is the token.
    pub scheme: Option<String>,
    pub query: Option<String>,
    pub cookie: Option<String>,
}

/// An accepted issuer with its keys.
#[derive(Clone, Debug)]
pub struct Issuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub keys: Arc<KeySource>,
    /// The Azure AD tenant and token version, when the issuer has Azure's shape.
    pub azure: Option<AzureIssuer>,
    /// The longest a token may live (`maxTokenLifetime`).
    pub max_lifetime: Option<Duration>,
    /// The tenant, when an issuer template expanded to this issuer.
    pub tenant: Option<Tenant>,
    /// The private CA its TLS is checked against (`caBundle`), also for the introspection
    /// endpoint its discovery names.
    pub ca_bundle: Option<CaBundle>,
}

/// The issuer a token is judged by: one the policy lists (issuer templates' listed tenants
/// among them), or a tenant an issuer template's condition admitted, which its template's
/// admission holds ([`tenants::admission`]).
#[derive(Clone, Debug)]
pub enum IssuerRef<'p> {
    Listed(&'p Issuer),
    Admitted(Arc<Issuer>),
}

impl std::ops::Deref for IssuerRef<'_> {
    type Target = Issuer;

    fn deref(&self) -> &Issuer {
        match self {
            IssuerRef::Listed(issuer) => issuer,
            IssuerRef::Admitted(issuer) => issuer,
        }
    }
}

/// Where a compiled issuer's remote keys come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeysFrom {
    /// The shared source of the URL.
    Shared,
    /// The shared source of the URL, created with the budget of tenants a condition admits.
    Admitted,
    /// A source of its own that is never fetched: the spec is only checked.
    Probe,
}

/// What an `azureAd` profile adds beyond its issuers.
#[derive(Clone, Debug, Default)]
pub struct AzureProfile {
    /// Allowed callers (`appid`/`azp`); empty: any.
    pub client_application_ids: Vec<String>,
    pub authority: String,
    pub v1_host: String,
}

/// The request header that returns the trace (`debug.traceHeader`).
#[derive(Clone)]
pub struct TraceHeader {
    /// Lower-case header name.
    pub name: String,
    value: Vec<u8>,
}

impl std::fmt::Debug for TraceHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceHeader")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TraceHeader {
    /// Whether a request header value carries the secret (compared in constant time).
    pub fn matches(&self, value: &str) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(value.as_bytes(), &self.value).is_ok()
    }
}

/// A compiled per-path rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Empty: every path of the policy.
    pub paths: Vec<PathPrefix>,
    pub methods: Methods,
    pub requirements: Vec<ClaimRequirement>,
    pub allow_anonymous: bool,
    /// CEL conditions after the policy-wide ones.
    pub when: Vec<Condition>,
    /// What its `insufficient_scope` challenge names in `scope` (RFC 6750 §3), when one of its
    /// requirements on `scope`/`scp` fails: see [`crate::claims::challenge_scope`].
    pub scope: Option<String>,
}

/// A CEL condition (`when`).
#[derive(Clone, Debug)]
pub struct Condition {
    /// Where it is written, e.g. `spec.rules[2].when[0]`.
    pub field: String,
    pub expression: Arc<Expression>,
    pub message: Option<String>,
    /// The status of the denial when it is not true.
    pub status: u16,
}

/// A header computed with CEL (`forward.headers`).
#[derive(Clone, Debug)]
pub struct ComputedHeader {
    /// Lower-case name.
    pub name: String,
    pub expression: Arc<Expression>,
}

/// What a policy's CEL expressions need at request time: their functions and the inputs
/// any of them reads.
#[derive(Clone, Debug)]
pub struct Cel {
    pub environment: Arc<Environment>,
    pub reads: Reads,
}

impl Rule {
    /// The length of the longest matching prefix, if the rule matches (0 for "all paths").
    pub fn match_len(&self, path: &str, method: &str, ignore_case: bool) -> Option<usize> {
        if !self.methods.matches(method) {
            return None;
        }
        if self.paths.is_empty() {
            return Some(0);
        }
        self.paths
            .iter()
            .filter(|p| p.matches(path, ignore_case))
            .map(PathPrefix::len)
            .max()
    }
}

/// What the upstream receives on allow.
#[derive(Clone, Debug, Default)]
pub struct Forward {
    /// (claim, lower-case header)
    pub claims_to_headers: Vec<(String, String)>,
    pub payload_header: Option<String>,
    pub keep_token: bool,
    /// Headers computed with CEL.
    pub computed: Vec<ComputedHeader>,
    /// The claims an allow returns as Envoy dynamic metadata (`forward.metadataClaims`).
    pub metadata_claims: MetadataClaims,
}

/// Which claims an allow returns as Envoy dynamic metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum MetadataClaims {
    /// Every verified claim (`forward.metadataClaims` absent).
    #[default]
    All,
    /// These top-level claims (none when empty).
    Listed(Arc<[String]>),
}

impl MetadataClaims {
    pub fn wants(&self, name: &str) -> bool {
        match self {
            MetadataClaims::All => true,
            MetadataClaims::Listed(names) => names.iter().any(|n| n == name),
        }
    }
}

/// How denials are answered.
#[derive(Clone, Debug)]
pub struct DenyConfig {
    pub status: u16,
    pub message: Option<String>,
    pub detail: DenyDetail,
    pub realm: Option<String>,
}

/// A compiled policy: immutable, shared by snapshots through `Arc`.
#[derive(Clone, Debug)]
pub struct Policy {
    /// `namespace/name`
    pub id: Arc<str>,
    /// The hosts it claims for its namespace: `match.hosts`, or those of its route entries.
    pub hosts: Vec<HostPattern>,
    /// Empty: every path.
    pub paths: Vec<PathPrefix>,
    /// `targetRefs`: the Gateway API objects it attaches to (empty: `match` decides).
    pub targets: Vec<TargetRefSpec>,
    /// What it judges when it has targets, derived from the routes ([`Policy::attach`]);
    /// until then, nothing.
    pub entries: Arc<[RouteEntry]>,
    pub methods: Methods,
    pub token: TokenLocation,
    pub issuers: Vec<Issuer>,
    pub required_claims: Vec<ClaimRequirement>,
    pub rules: Vec<Rule>,
    pub clock_skew: u64,
    pub require_exp: bool,
    pub forward: Forward,
    pub deny: DenyConfig,
    /// Token introspection, if configured.
    pub introspection: Option<Arc<Introspector>>,
    /// Keys for encrypted (JWE) tokens.
    pub decryption: Option<Arc<Decryptor>>,
    /// Whether a decrypted token must contain a signed JWT.
    pub require_signed: bool,
    /// The `azureAd` profile, if any.
    pub azure: Option<AzureProfile>,
    /// `debug.traceHeader`, if any.
    pub trace_header: Option<TraceHeader>,
    /// How the upstream compares letter case in paths; `None`: unknown, so a path whose
    /// match depends on letter case is refused.
    pub path_case: Option<PathCase>,
    /// Readings of a path the policy's upstream is known to use (`match.pathReading`).
    pub path_reading: PathReading,
    /// Rules that can never apply (check-policy, the webhook and status warn about them).
    pub warnings: Vec<Problem>,
    /// Unique per compilation in this process: verified-token cache entries belong to one
    /// compiled policy, so a recompiled one never sees its predecessor's.
    pub instance: u64,
    /// Policy-wide CEL conditions.
    pub when: Vec<Condition>,
    /// The CEL environment, when the policy has expressions.
    pub cel: Option<Cel>,
    /// `resourceMetadata`: the protected resource and its RFC 9728 document, if declared.
    pub resource: Option<Arc<ProtectedResource>>,
    /// `mode: dryRun`: a denial becomes an allow that records it ([`crate::dry_run`]).
    pub dry_run: bool,
    /// `clientCertificate.required`: a request without a client certificate is refused.
    pub require_client_certificate: bool,
    /// Issuer templates (`{tenant}` in `issuer`): their tenants are among `issuers`; the
    /// templates name the tenant of an `iss` none of them admits.
    pub templates: Vec<IssuerTemplate>,
    /// `apiKeys`, if configured.
    pub api_keys: Option<Arc<ApiKeys>>,
    /// `dpop` (RFC 9449), when its mode is `allowed` or `required`; `None`: disabled, and a
    /// DPoP-bound token is refused.
    pub dpop: Option<crate::dpop::Settings>,
    /// The claims a verified-token cache entry keeps: those read after a hit (the metadata
    /// claims, the rules' requirements, the expressions' claims, `cnf`). `None`: every claim
    /// (the metadata returns them all, or an expression reads claims as a whole).
    pub cached_claims: Option<Arc<[String]>>,
}

/// What [`Policy::cached_claims`] holds: `None` when a hit may read any claim.
fn cached_claims(forward: &Forward, rules: &[Rule], cel: Option<&Cel>) -> Option<Arc<[String]>> {
    let MetadataClaims::Listed(metadata) = &forward.metadata_claims else {
        return None;
    };
    let mut names: Vec<String> = metadata.to_vec();
    // The certificate binding and DPoP read `cnf` on every request.
    names.push("cnf".into());
    // The decision log names the subject of hits as of misses.
    names.extend(crate::decision_log::subject_claim().map(str::to_owned));
    match cel.map(|cel| &cel.reads.claims) {
        Some(crate::expression::Keys::All) => return None,
        Some(crate::expression::Keys::Named(keys)) => names.extend(keys.iter().cloned()),
        Some(crate::expression::Keys::None) | None => {}
    }
    for requirement in rules.iter().flat_map(|r| &r.requirements) {
        // A dotted name reaches a nested claim when no claim has the literal name.
        if let Some((top, _)) = requirement.name.split_once('.') {
            names.push(top.to_string());
        }
        names.push(requirement.name.clone());
    }
    names.sort();
    names.dedup();
    Some(names.into())
}

fn next_instance() -> u64 {
    static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Policy {
    pub fn issuer(&self, iss: &str) -> Option<&Issuer> {
        self.issuers.iter().find(|i| i.issuer == iss)
    }

    /// The policy's namespace.
    pub fn namespace(&self) -> &str {
        self.id.split_once('/').map_or(&*self.id, |(ns, _)| ns)
    }

    /// The rule for a request: the matching rule with the longest path prefix; on a tie, one
    /// that names methods over one that does not, then the first listed. An `OPTIONS` request
    /// (a CORS preflight, which carries no token) is taken first by the longest rule naming
    /// `OPTIONS`, so a longer rule for all methods does not shadow it.
    pub fn rule_for(&self, path: &str, method: &str, ignore_case: bool) -> Option<&Rule> {
        let options = method.eq_ignore_ascii_case("OPTIONS")
            && self.rules.iter().any(|r| r.methods.names("OPTIONS"));
        let mut best: Option<(&Rule, (bool, usize, bool))> = None;
        for rule in &self.rules {
            if let Some(len) = rule.match_len(path, method, ignore_case) {
                let rank = (
                    options && rule.methods.names("OPTIONS"),
                    len,
                    !rule.methods.is_all(),
                );
                if best.as_ref().is_none_or(|(_, r)| rank > *r) {
                    best = Some((rule, rank));
                }
            }
        }
        best.map(|(rule, _)| rule)
    }
}

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn invalid(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            field: field.into(),
            message: message.into(),
            kind: ProblemKind::InvalidSpec,
        });
    }

    fn secret(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            field: field.into(),
            message: message.into(),
            kind: ProblemKind::SecretNotFound,
        });
    }

    fn at_most<T>(&mut self, field: &str, items: &[T], max: usize) {
        if items.len() > max {
            self.invalid(
                field,
                format!("{} entries; at most {max} are allowed", items.len()),
            );
        }
    }
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && name.bytes().all(is_token_char)
}

/// Headers a policy may not set from claims.
const RESERVED_HEADERS: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "trailer",
];

fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

/// Compiles one policy. `namespace`/`name` identify it (`namespace/name`).
pub fn compile(
    namespace: &str,
    name: &str,
    spec: &JwtPolicySpec,
    ctx: &CompileContext<'_>,
) -> Result<Policy, CompileError> {
    let mut c = Checker {
        problems: Vec::new(),
    };
    if !valid_name(namespace, 63) {
        c.invalid(
            "metadata.namespace",
            "must be a DNS label: lower-case letters, digits, '-' (at most 63)",
        );
    }
    if !valid_name(name, 253) {
        c.invalid(
            "metadata.name",
            "must be a DNS subdomain name: lower-case letters, digits, '-', '.'",
        );
    }
    let id: Arc<str> = format!("{namespace}/{name}").into();

    // match
    c.at_most("spec.match.hosts", &spec.match_.hosts, limits::HOSTS);
    c.at_most("spec.match.paths", &spec.match_.paths, limits::PATHS);
    let mut hosts = Vec::new();
    for (i, h) in spec.match_.hosts.iter().enumerate() {
        match HostPattern::parse(h) {
            Ok(p) if !hosts.contains(&p) => hosts.push(p),
            Ok(_) => {}
            Err(e) => c.invalid(format!("spec.match.hosts[{i}]"), e.to_string()),
        }
    }
    let targeted = !spec.target_refs.is_empty();
    if targeted {
        target_refs(&mut c, spec);
    } else if hosts.is_empty() {
        hosts.push(HostPattern::Any);
    }
    let paths = prefixes(&mut c, "spec.match.paths", &spec.match_.paths);
    let methods = Methods::parse(&spec.match_.methods).unwrap_or_else(|e| {
        c.invalid("spec.match.methods", e.to_string());
        Methods::default()
    });

    let token = token_location(&mut c, spec);

    // issuers
    if spec.issuers.is_empty() && spec.azure_ad.is_none() && spec.api_keys.is_none() {
        c.invalid(
            "spec.issuers",
            "at least one issuer is required (or an azureAd profile, or apiKeys)",
        );
    }
    let api_keys = spec
        .api_keys
        .as_ref()
        .and_then(|keys| compile_api_keys(&mut c, namespace, keys, &token, ctx))
        .map(Arc::new);
    c.at_most("spec.issuers", &spec.issuers, limits::ISSUERS);
    let mut issuers: Vec<Issuer> = Vec::new();
    let mut templates: Vec<IssuerTemplate> = Vec::new();
    for (i, issuer) in spec.issuers.iter().enumerate() {
        let field = format!("spec.issuers[{i}]");
        let expanded = match tenants::expand(&field, issuer) {
            Ok(expanded) => expanded,
            Err(problems) => {
                for (field, message) in problems {
                    c.invalid(field, message);
                }
                continue;
            }
        };
        let template = match expanded.template {
            Some(mut t) => {
                let index = templates.len();
                if let Some(other) = templates.iter().find(|o| o.same_shape(&t)) {
                    c.invalid(
                        format!("{field}.issuer"),
                        format!(
                            "reads like the issuer template of {} ({}): a token's iss would name a tenant of both; keep one",
                            other.field, other.issuer
                        ),
                    );
                }
                if let Some(condition) = expanded.condition {
                    // Its tenants' issuers are built at request time: what is wrong with them
                    // is wrong now, for any tenant (listed tenants are compiled below anyway).
                    if issuer.tenants.is_empty() {
                        // As written: a URL parser takes the placeholder as path characters, and
                        // the messages show the template.
                        let probe = IssuerSpec {
                            tenants: Vec::new(),
                            admit_tenants: None,
                            ..issuer.clone()
                        };
                        let _ = compile_issuer(
                            &mut c,
                            &field,
                            namespace,
                            &id,
                            &probe,
                            ctx,
                            KeysFrom::Probe,
                        );
                    }
                    t.admission = Some(Arc::new(Admission::new(
                        &field,
                        condition,
                        issuer,
                        namespace,
                        id.clone(),
                        index,
                        ctx.key_sources,
                    )));
                }
                templates.push(t);
                Some(index)
            }
            None => None,
        };
        for (spec, tenant) in expanded.issuers {
            if issuers.iter().any(|known| known.issuer == spec.issuer) {
                c.invalid(
                    format!("{field}.issuer"),
                    format!("{:?} is listed twice", spec.issuer),
                );
                continue;
            }
            let Some(mut compiled) =
                compile_issuer(&mut c, &field, namespace, &id, &spec, ctx, KeysFrom::Shared)
            else {
                // What is wrong with one tenant's issuer is wrong with the template's.
                break;
            };
            compiled.azure = azure::classify(&compiled.issuer);
            compiled.tenant = tenant.zip(template).map(|(name, template)| Tenant {
                name,
                template,
                admitted: false,
            });
            issuers.push(compiled);
        }
    }
    let azure = spec
        .azure_ad
        .as_ref()
        .map(|profile| compile_azure(&mut c, namespace, &id, profile, &mut issuers, ctx));
    if issuers.len() > limits::EXPANDED_ISSUERS {
        c.invalid(
            "spec.issuers",
            format!(
                "{} issuers (with those issuer templates and azureAd expand to); at most {} are allowed",
                issuers.len(),
                limits::EXPANDED_ISSUERS
            ),
        );
    }

    let required_claims = requirements(&mut c, "spec.requiredClaims", &spec.required_claims);
    c.at_most("spec.rules", &spec.rules, limits::RULES);
    let mut rules = Vec::with_capacity(spec.rules.len());
    let mut scope_warnings = Vec::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        let field = format!("spec.rules[{i}]");
        let paths = prefixes(&mut c, &format!("{field}.paths"), &rule.paths);
        let methods = Methods::parse(&rule.methods).unwrap_or_else(|e| {
            c.invalid(format!("{field}.methods"), e.to_string());
            Methods::default()
        });
        let reqs = requirements(
            &mut c,
            &format!("{field}.requiredClaims"),
            &rule.required_claims,
        );
        if rule.allow_anonymous && !reqs.is_empty() {
            c.invalid(
                field.clone(),
                "allowAnonymous and requiredClaims contradict each other; keep one",
            );
        }
        let when = expressions::conditions(
            &mut c,
            &format!("{field}.when"),
            &rule.when,
            rule.allow_anonymous,
        );
        if !rule.allow_anonymous && reqs.is_empty() && rule.when.is_empty() {
            c.invalid(
                field.clone(),
                "a rule needs requiredClaims, when, or allowAnonymous: true",
            );
        }
        // Only a rule's own requirement on a scope claim can make its challenge name scopes.
        let scoped = reqs.iter().any(ClaimRequirement::is_scope);
        let scope = match crate::claims::challenge_scope(&required_claims, &reqs) {
            Ok(scope) => scope.filter(|_| scoped),
            Err(_) if !scoped => None,
            Err(why) => {
                scope_warnings.push(Problem {
                    field: format!("{field}.requiredClaims"),
                    message: format!("its insufficient_scope challenge names no scope: {why}"),
                    kind: ProblemKind::Warning,
                });
                None
            }
        };
        rules.push(Rule {
            paths,
            methods,
            requirements: reqs,
            allow_anonymous: rule.allow_anonymous,
            when,
            scope,
        });
    }

    let clock_skew = match &spec.clock_skew {
        None => limits::DEFAULT_CLOCK_SKEW_SECS,
        Some(text) => match humantime::parse_duration(text) {
            // Compared in full: the CRD refuses 10m1ms as well.
            Ok(d) if d <= Duration::from_secs(limits::MAX_CLOCK_SKEW_SECS) => d.as_secs(),
            Ok(_) => {
                c.invalid(
                    "spec.clockSkew",
                    format!("{text} is more than the 10m maximum"),
                );
                0
            }
            Err(e) => {
                c.invalid(
                    "spec.clockSkew",
                    format!("{text:?} is not a duration like 30s or 2m: {e}"),
                );
                0
            }
        },
    };

    let mut forward = forward(&mut c, spec, &token);
    let anonymous_rules = spec.rules.iter().any(|r| r.allow_anonymous);
    let when = expressions::conditions(&mut c, "spec.when", &spec.when, anonymous_rules);
    forward.computed = expressions::headers(&mut c, &spec.forward.headers, &forward, &token);
    let cel = expressions::environment(&when, &rules, &forward);
    let deny = deny_config(&mut c, spec);
    let introspection = spec
        .introspection
        .as_ref()
        .and_then(|i| compile_introspection(&mut c, &id, namespace, i, &issuers, ctx));
    let require_signed = spec.require_signed_tokens.unwrap_or(true);
    let decryption = spec
        .decryption
        .as_ref()
        .and_then(|d| compile_decryption(&mut c, namespace, d, require_signed, ctx));
    if !require_signed && issuers.len() > 1 {
        c.invalid(
            "spec.requireSignedTokens",
            format!(
                "false needs exactly one issuer: an unsigned token's iss is whatever the holder of a shared key wrote, so with {} issuers the key of one could speak for another",
                issuers.len()
            ),
        );
    }
    if !require_signed && templates.iter().any(|t| t.admission.is_some()) {
        c.invalid(
            "spec.requireSignedTokens",
            "false needs exactly one issuer, and admitTenants admits any number",
        );
    }
    if !require_signed && spec.decryption.is_none() {
        c.invalid(
            "spec.requireSignedTokens",
            "false only applies to encrypted tokens (configure decryption); unsigned JWTs are never accepted",
        );
    }
    let trace_header = spec
        .debug
        .as_ref()
        .and_then(|d| d.trace_header.as_ref())
        .and_then(|t| compile_trace_header(&mut c, namespace, t, &token, ctx));

    let dpop = spec
        .dpop
        .as_ref()
        .and_then(|d| compile_dpop(&mut c, &id, namespace, d, ctx));

    let mut resource_warnings = Vec::new();
    let resource = resource::compile_resource(
        &mut c,
        spec,
        &hosts,
        &issuers,
        &token,
        &mut resource_warnings,
    );

    if !c.problems.is_empty() {
        return Err(CompileError {
            problems: c.problems,
        });
    }
    let mut warnings = rule_warnings(&paths, &methods, &rules);
    warnings.extend(resource_warnings);
    warnings.extend(scope_warnings);
    let cached_claims = cached_claims(&forward, &rules, cel.as_ref());
    Ok(Policy {
        id,
        hosts,
        paths,
        targets: spec.target_refs.clone(),
        entries: Arc::from(Vec::new()),
        methods,
        token,
        issuers,
        required_claims,
        rules,
        clock_skew,
        require_exp: spec.require_expiration_time.unwrap_or(true),
        forward,
        deny,
        introspection,
        decryption,
        require_signed,
        azure,
        trace_header,
        path_case: spec.match_.path_case.map(|case| match case {
            spec::PathCase::Exact => PathCase::Exact,
            spec::PathCase::IgnoreCase => PathCase::IgnoreCase,
        }),
        path_reading: spec
            .match_
            .path_reading
            .as_ref()
            .map(|r| PathReading {
                keep_encoded_slashes: r.encoded_slashes == Some(spec::EncodedSlashes::Keep),
                merge_empty_segments: r.empty_segments == Some(spec::EmptySegments::Merge),
                strip_parameters: r.parameters == Some(spec::PathParameters::Strip),
            })
            .unwrap_or_default(),
        warnings,
        instance: next_instance(),
        when,
        cel,
        resource,
        dry_run: spec.mode == spec::PolicyMode::DryRun,
        require_client_certificate: spec.client_certificate.as_ref().is_some_and(|c| c.required),
        templates,
        api_keys,
        dpop,
        cached_claims,
    })
}

/// `spec.dpop`: `None` when disabled (or invalid, with the problem recorded).
fn compile_dpop(
    c: &mut Checker,
    id: &str,
    namespace: &str,
    spec: &spec::DpopSpec,
    ctx: &CompileContext<'_>,
) -> Option<crate::dpop::Settings> {
    use crate::dpop::{self, Mode};
    let mode = match spec.mode {
        spec::DpopMode::Disabled => Mode::Disabled,
        spec::DpopMode::Allowed => Mode::Allowed,
        spec::DpopMode::Required => Mode::Required,
    };
    c.at_most("spec.dpop.algorithms", &spec.algorithms, 9);
    let mut algorithms = Vec::new();
    for name in &spec.algorithms {
        match dpop::DEFAULT_ALGORITHMS
            .iter()
            .find(|a| dpop::alg_name(**a) == name)
        {
            Some(alg) if !algorithms.contains(alg) => algorithms.push(*alg),
            Some(_) => {}
            None => c.invalid(
                "spec.dpop.algorithms",
                format!("{name:?} is not an asymmetric algorithm (RS256/384/512, PS256/384/512, ES256/384, EdDSA); proofs are never HMAC or none"),
            ),
        }
    }
    if algorithms.is_empty() {
        algorithms = dpop::DEFAULT_ALGORITHMS.to_vec();
    }
    let max_age = match &spec.proof_max_age {
        None => 60,
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(300) => d.as_secs(),
            Ok(_) => {
                c.invalid(
                    "spec.dpop.proofMaxAge",
                    format!("{text} is not between 1s and 5m"),
                );
                60
            }
            Err(e) => {
                c.invalid(
                    "spec.dpop.proofMaxAge",
                    format!("{text:?} is not a duration like 30s or 2m: {e}"),
                );
                60
            }
        },
    };
    let size = spec.replay_cache_size.unwrap_or(100_000);
    if !(100..=10_000_000).contains(&size) {
        c.invalid(
            "spec.dpop.replayCacheSize",
            format!("{size} is not between 100 and 10000000"),
        );
    }
    let nonces = spec
        .nonce
        .as_ref()
        .and_then(|n| dpop_nonces(c, namespace, n, ctx));
    if mode == Mode::Disabled {
        return None;
    }
    let replay = dpop::replay_cache_for(id, size as usize);
    Some(dpop::Settings {
        mode,
        algorithms,
        max_age,
        replay,
        nonces,
    })
}

/// `spec.dpop.nonce`: the secret read and long enough, the lifetime in range.
fn dpop_nonces(
    c: &mut Checker,
    namespace: &str,
    spec: &spec::DpopNonceSpec,
    ctx: &CompileContext<'_>,
) -> Option<crate::dpop::Nonces> {
    const FIELD: &str = "spec.dpop.nonce";
    let lifetime = match &spec.lifetime {
        None => 300,
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) if d >= Duration::from_secs(10) && d <= Duration::from_secs(3600) => d.as_secs(),
            Ok(_) => {
                c.invalid(
                    "spec.dpop.nonce.lifetime",
                    format!("{text} is not between 10s and 1h"),
                );
                300
            }
            Err(e) => {
                c.invalid(
                    "spec.dpop.nonce.lifetime",
                    format!("{text:?} is not a duration like 30s or 5m: {e}"),
                );
                300
            }
        },
    };
    let secret = secret_bytes(c, &format!("{FIELD}.secret"), namespace, &spec.secret, ctx)?;
    match crate::dpop::Nonces::new(&secret, lifetime) {
        Ok(nonces) => Some(nonces),
        Err(e) => {
            c.invalid(format!("{FIELD}.secret"), e);
            None
        }
    }
}

/// `targetRefs`: Gateway API kinds in the policy's namespace, exclusive with `match`'s hosts,
/// paths and methods.
fn target_refs(c: &mut Checker, spec: &JwtPolicySpec) {
    c.at_most("spec.targetRefs", &spec.target_refs, 16);
    for (field, set) in [
        ("spec.match.hosts", !spec.match_.hosts.is_empty()),
        ("spec.match.paths", !spec.match_.paths.is_empty()),
        ("spec.match.methods", !spec.match_.methods.is_empty()),
    ] {
        if set {
            c.invalid(
                field,
                "targetRefs and match.hosts/paths/methods are exclusive: the routes say which requests the policy judges",
            );
        }
    }
    for (i, target) in spec.target_refs.iter().enumerate() {
        if target.group != gateway::GROUP {
            c.invalid(
                format!("spec.targetRefs[{i}].group"),
                format!("must be {}", gateway::GROUP),
            );
        }
        if !matches!(target.kind.as_str(), "HTTPRoute" | "Gateway") {
            c.invalid(
                format!("spec.targetRefs[{i}].kind"),
                "must be HTTPRoute or Gateway",
            );
        }
        if !valid_name(&target.name, 253) {
            c.invalid(
                format!("spec.targetRefs[{i}].name"),
                "must be a DNS subdomain name",
            );
        }
        if spec.target_refs[..i].iter().any(|t| {
            t.kind == target.kind && t.name == target.name && t.section_name == target.section_name
        }) {
            c.invalid(
                format!("spec.targetRefs[{i}]"),
                "names the same target as an earlier entry",
            );
        }
    }
}

impl Policy {
    /// This policy with the requests its targets derive (see [`gateway::attach`]); it claims
    /// their hosts for its namespace. A policy without targets is returned as it is.
    pub fn attach(&self, entries: Vec<RouteEntry>) -> Policy {
        let mut policy = self.clone();
        if policy.targets.is_empty() {
            return policy;
        }
        let mut hosts: Vec<HostPattern> = Vec::new();
        for entry in &entries {
            if !hosts.contains(&entry.host) {
                hosts.push(entry.host.clone());
            }
        }
        policy.hosts = hosts;
        policy.entries = entries.into();
        policy
    }

    /// Whether what it judges is derived from Gateway API routes.
    pub fn is_targeted(&self) -> bool {
        !self.targets.is_empty()
    }
}

fn compile_azure(
    c: &mut Checker,
    namespace: &str,
    policy_id: &str,
    spec: &AzureAdSpec,
    issuers: &mut Vec<Issuer>,
    ctx: &CompileContext<'_>,
) -> AzureProfile {
    let authority = spec
        .authority
        .clone()
        .unwrap_or_else(|| azure::DEFAULT_AUTHORITY.into());
    let v1_host = spec
        .v1_issuer_host
        .clone()
        .unwrap_or_else(|| azure::DEFAULT_V1_HOST.into());
    for (field, text) in [
        ("spec.azureAd.authority", &authority),
        ("spec.azureAd.v1IssuerHost", &v1_host),
    ] {
        if let Some(url) = parse_url(c, field, text, Reach::new(spec.allow_insecure_http, false))
            && url.path() != "/"
        {
            c.invalid(
                field,
                format!("{text} must be a bare origin like https://login.microsoftonline.com"),
            );
        }
    }
    match azure::expand(spec) {
        Ok(expanded) => {
            for e in expanded {
                if issuers.iter().any(|i| i.issuer == e.spec.issuer) {
                    c.invalid(
                        "spec.azureAd",
                        format!("{} is also listed in spec.issuers; keep one", e.spec.issuer),
                    );
                    continue;
                }
                if let Some(mut issuer) = compile_issuer(
                    c,
                    "spec.azureAd",
                    namespace,
                    policy_id,
                    &e.spec,
                    ctx,
                    KeysFrom::Shared,
                ) {
                    issuer.azure = Some(e.azure);
                    issuers.push(issuer);
                }
            }
        }
        Err(problems) => {
            for (field, message) in problems {
                c.invalid(field, message);
            }
        }
    }
    AzureProfile {
        client_application_ids: spec.client_application_ids.clone(),
        authority: authority.trim_end_matches('/').to_string(),
        v1_host: v1_host.trim_end_matches('/').to_string(),
    }
}

fn compile_decryption(
    c: &mut Checker,
    namespace: &str,
    spec: &DecryptionSpec,
    require_signed: bool,
    ctx: &CompileContext<'_>,
) -> Option<Arc<Decryptor>> {
    let before = c.problems.len();
    if spec.keys.is_empty() {
        c.invalid("spec.decryption.keys", "list at least one key");
    }
    let mut keys = Vec::new();
    for (i, entry) in spec.keys.iter().enumerate() {
        let field = format!("spec.decryption.keys[{i}]");
        let source = SecretSpec {
            file: entry.file.clone(),
            secret_ref: entry.secret_ref.clone(),
            encoding: None,
        };
        if entry.file.is_some() == entry.secret_ref.is_some() {
            c.invalid(&field, "give either file or secretRef");
            continue;
        }
        let mut allowed = Vec::new();
        for (j, name) in entry.algorithms.iter().enumerate() {
            match jwe::KeyManagement::parse(name) {
                Some(jwe::KeyManagement::Rsa1_5) if !spec.allow_rsa1_5 => c.invalid(
                    format!("{field}.algorithms[{j}]"),
                    "RSA1_5 needs decryption.allowRsa1_5: true (it is open to padding-oracle attacks)",
                ),
                Some(alg) => allowed.push(alg),
                None => c.invalid(
                    format!("{field}.algorithms[{j}]"),
                    format!("{name:?} is not supported; use RSA-OAEP, RSA-OAEP-256, RSA1_5, ECDH-ES, ECDH-ES+A128KW, ECDH-ES+A256KW, A128KW, A256KW or dir"),
                ),
            }
        }
        let raw = match ctx.secrets.read(namespace, &source) {
            Ok(_) if !ctx.secrets.has_values() => continue,
            Ok(raw) => raw,
            Err(e) => {
                c.secret(&field, e);
                continue;
            }
        };
        let mut found = match jwe::parse_keys(&raw) {
            Ok(found) => found,
            Err(e) => {
                c.invalid(&field, e.to_string());
                continue;
            }
        };
        if let Some(kid) = &entry.kid {
            if found.len() != 1 {
                c.invalid(
                    format!("{field}.kid"),
                    format!("kid names one key; this secret holds {}", found.len()),
                );
                continue;
            }
            found = found.into_iter().map(|k| k.with_kid(kid.clone())).collect();
        }
        if !entry.algorithms.is_empty() {
            found = found
                .into_iter()
                .map(|k| k.restricted_to(&allowed))
                .collect();
        }
        for key in &found {
            if key.algorithms().is_empty() {
                c.invalid(
                    &field,
                    format!(
                        "the {} key {} can be used with none of the algorithms allowed for it",
                        key.describe(),
                        key.kid.as_deref().unwrap_or("(no kid)")
                    ),
                );
            }
        }
        keys.extend(found);
    }
    if keys.len() > jwe::key::MAX_KEYS {
        c.invalid(
            "spec.decryption.keys",
            format!(
                "{} keys; at most {} are allowed",
                keys.len(),
                jwe::key::MAX_KEYS
            ),
        );
    }
    let unnamed = keys.iter().filter(|k| k.kid.is_none()).count();
    if unnamed > jwe::MAX_UNNAMED_TRIES {
        c.invalid(
            "spec.decryption.keys",
            format!(
                "{unnamed} keys have no kid; a token is tried against at most {} keys it does not name, so give the others a kid (keys[].kid)",
                jwe::MAX_UNNAMED_TRIES
            ),
        );
    }
    let mut kids: Vec<&str> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
    kids.sort_unstable();
    if let Some(pair) = kids.windows(2).find(|w| w[0] == w[1]) {
        c.invalid(
            "spec.decryption.keys",
            format!(
                "kid {:?} is used by two keys; the token's kid must choose one",
                pair[0]
            ),
        );
    }
    if !require_signed {
        // The same rule as the CRD's: every key lists its algorithms, all proving the sender.
        for (i, entry) in spec.keys.iter().enumerate() {
            if entry.algorithms.is_empty() {
                c.invalid(
                    format!("spec.decryption.keys[{i}].algorithms"),
                    "with requireSignedTokens: false list the key's algorithms (dir, A128KW or A256KW), so only a key shared with the issuer can carry unsigned claims",
                );
            }
        }
        for key in &keys {
            let open: Vec<&str> = key
                .algorithms()
                .into_iter()
                .filter(|alg| !alg.proves_sender())
                .map(|alg| alg.name())
                .collect();
            if !open.is_empty() {
                c.invalid(
                    "spec.requireSignedTokens",
                    format!(
                        "false accepts claims that are only encrypted, which proves the issuer only when the key is shared with it (dir, A128KW, A256KW); the {} key {} allows {}, with which anyone holding the public key can encrypt claims: sign the tokens, or use a shared key and list its algorithms",
                        key.describe(),
                        key.kid.as_deref().unwrap_or("(no kid)"),
                        open.join(", ")
                    ),
                );
            }
        }
    }
    if c.problems.len() > before {
        return None;
    }
    Some(Arc::new(Decryptor::new(keys, spec.allow_rsa1_5)))
}

fn compile_trace_header(
    c: &mut Checker,
    namespace: &str,
    spec: &TraceHeaderSpec,
    token: &TokenLocation,
    ctx: &CompileContext<'_>,
) -> Option<TraceHeader> {
    let field = "spec.debug.traceHeader";
    let name = spec
        .name
        .clone()
        .unwrap_or_else(|| "x-tollgate-debug".into())
        .to_ascii_lowercase();
    if !valid_header_name(&name)
        || RESERVED_HEADERS.contains(&name.as_str())
        || name == token.header
    {
        c.invalid(
            format!("{field}.name"),
            format!("{name:?} cannot be the trace header"),
        );
        return None;
    }
    let value = secret_bytes(c, &format!("{field}.value"), namespace, &spec.value, ctx)?;
    if value.len() >= 16 && value.iter().all(|b| (b' '..=b'~').contains(b)) {
        Some(TraceHeader { name, value })
    } else {
        c.invalid(
            format!("{field}.value"),
            "the value must be at least 16 printable ASCII characters (it guards the trace)",
        );
        None
    }
}

/// Rules that compile but can never apply: outside the policy's paths or methods, or taken
/// entirely by an earlier rule with the same prefix.
fn rule_warnings(paths: &[PathPrefix], methods: &Methods, rules: &[Rule]) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut warn = |field: String, message: String| {
        out.push(Problem {
            field,
            message,
            kind: ProblemKind::Warning,
        })
    };
    let list = |prefixes: &[PathPrefix]| {
        prefixes
            .iter()
            .map(PathPrefix::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let root = [PathPrefix::root()];
    let of = |rule: &Rule| -> Vec<PathPrefix> {
        if rule.paths.is_empty() {
            root.to_vec()
        } else {
            rule.paths.clone()
        }
    };
    for (i, rule) in rules.iter().enumerate() {
        let field = format!("spec.rules[{i}]");
        if !paths.is_empty() {
            for (j, prefix) in rule.paths.iter().enumerate() {
                if !paths.iter().any(|p| prefix.within(p) || p.within(prefix)) {
                    warn(
                        format!("{field}.paths[{j}]"),
                        format!(
                            "{prefix} is outside match.paths ({}): this part of the rule can never apply",
                            list(paths)
                        ),
                    );
                }
            }
        }
        if !rule.methods.overlaps(methods) {
            warn(
                format!("{field}.methods"),
                format!(
                    "the policy judges only {}: this rule can never apply",
                    methods.as_slice().join(", ")
                ),
            );
            continue;
        }
        let shadowed_by = of(rule).iter().try_fold(None, |found, prefix| {
            let earlier = rules[..i].iter().position(|other| {
                of(other).contains(prefix)
                    && rule.methods.within(&other.methods)
                    && rule.methods.is_all() == other.methods.is_all()
            })?;
            Some(found.or(Some(earlier)))
        });
        if let Some(Some(earlier)) = shadowed_by {
            warn(
                field,
                format!(
                    "spec.rules[{earlier}] has the same paths and takes every method of this rule first: this rule can never apply"
                ),
            );
        }
    }
    out
}

fn prefixes(c: &mut Checker, field: &str, paths: &[String]) -> Vec<PathPrefix> {
    let mut out = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        match PathPrefix::parse(p) {
            Ok(prefix) if !out.contains(&prefix) => out.push(prefix),
            Ok(_) => {}
            Err(e) => c.invalid(format!("{field}[{i}]"), e.to_string()),
        }
    }
    out
}

fn token_location(c: &mut Checker, spec: &JwtPolicySpec) -> TokenLocation {
    let t = &spec.token;
    let header = t
        .header
        .clone()
        .unwrap_or_else(|| "authorization".into())
        .to_ascii_lowercase();
    if !valid_header_name(&header) {
        c.invalid(
            "spec.token.header",
            format!("{header:?} is not a valid header name"),
        );
    }
    let scheme = match t.scheme.as_deref() {
        None => Some("Bearer".to_string()),
        Some("") => None,
        Some(s) if s.bytes().all(is_token_char) => Some(s.to_string()),
        Some(s) => {
            c.invalid(
                "spec.token.scheme",
                format!("{s:?} is not a valid auth scheme (one token, no spaces)"),
            );
            None
        }
    };
    for (field, value) in [
        ("spec.token.query", &t.query),
        ("spec.token.cookie", &t.cookie),
    ] {
        if let Some(v) = value
            && (v.is_empty() || !v.bytes().all(is_token_char))
        {
            c.invalid(field, format!("{v:?} is not a valid name"));
        }
    }
    TokenLocation {
        header,
        scheme,
        query: t.query.clone(),
        cookie: t.cookie.clone(),
    }
}

fn parse_url(c: &mut Checker, field: &str, text: &str, reach: Reach) -> Option<Url> {
    let url = match Url::parse(text) {
        Ok(url) => url,
        Err(e) => {
            c.invalid(field, format!("{text:?} is not a URL: {e}"));
            return None;
        }
    };
    match url.scheme() {
        "https" => {}
        "http" if reach.insecure_http => {}
        "http" => {
            c.invalid(field, format!("{text} is plain http; use https (or set allowInsecureHttp: true for local development)"));
            return None;
        }
        other => {
            c.invalid(
                field,
                format!("scheme {other:?} is not supported; use https"),
            );
            return None;
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        c.invalid(field, format!("{text} has no host"));
        return None;
    }
    if !reach.metadata
        && let Some(reason) = crate::jwks::guard::forbidden_url(&url)
    {
        c.invalid(field, reason);
        return None;
    }
    if !url.username().is_empty() || url.password().is_some() {
        c.invalid(field, "credentials in URLs are not allowed");
        return None;
    }
    Some(url)
}

/// Secrets at request time: none (a template that admits tenants by a condition has no
/// shared secret).
struct NoSecrets;

impl SecretSource for NoSecrets {
    fn read(&self, _namespace: &str, _spec: &SecretSpec) -> Result<Vec<u8>, String> {
        Err("no secret is read for a tenant admitted at request time".into())
    }
}

/// The issuer of one tenant an issuer template's condition admitted, built when a token first
/// names it: compiled as a listed tenant's issuer is (the same URL checks and SSRF guard), its
/// keys from the shared source of its URL. `Err`: what is wrong, as `field: message`.
pub(crate) fn admitted_issuer(
    field: &str,
    namespace: &str,
    policy_id: &str,
    template: &IssuerSpec,
    tenant: &str,
    template_index: usize,
    key_sources: &KeySources,
) -> Result<Issuer, String> {
    let mut c = Checker {
        problems: Vec::new(),
    };
    let ctx = CompileContext {
        key_sources,
        secrets: &NoSecrets,
    };
    let spec = tenants::for_tenant(template, tenant);
    let compiled = compile_issuer(
        &mut c,
        field,
        namespace,
        policy_id,
        &spec,
        &ctx,
        KeysFrom::Admitted,
    );
    match compiled {
        Some(mut issuer) if c.problems.is_empty() => {
            issuer.azure = azure::classify(&issuer.issuer);
            issuer.tenant = Some(Tenant {
                name: tenant.to_string(),
                template: template_index,
                admitted: true,
            });
            Ok(issuer)
        }
        _ => Err(CompileError {
            problems: c.problems,
        }
        .to_string()),
    }
}

fn compile_issuer(
    c: &mut Checker,
    field: &str,
    namespace: &str,
    policy_id: &str,
    spec: &IssuerSpec,
    ctx: &CompileContext<'_>,
    keys_from: KeysFrom,
) -> Option<Issuer> {
    let before = c.problems.len();
    let bundle = match &spec.ca_bundle {
        None => None,
        Some(_) if keys_from != KeysFrom::Shared => {
            c.invalid(
                format!("{field}.caBundle"),
                "caBundle is not supported with admitTenants (a tenant's issuer is built when a token names it, without reading Secrets)",
            );
            None
        }
        Some(bundle) => ca_bundle(c, &format!("{field}.caBundle"), namespace, bundle, ctx),
    };
    let trust = bundle.as_ref().map(|b| b.id);
    let remote = |origin: Origin| match (keys_from, &bundle) {
        (KeysFrom::Shared, Some(bundle)) => ctx.key_sources.remote_trusting(origin, bundle),
        (KeysFrom::Shared, None) => ctx.key_sources.remote(origin),
        (KeysFrom::Admitted, _) => ctx.key_sources.remote_admitted(origin),
        (KeysFrom::Probe, _) => KeySource::unfetched(origin),
    };
    let reach = Reach::new(spec.allow_insecure_http, spec.allow_metadata_addresses);
    if spec.issuer.is_empty() {
        c.invalid(format!("{field}.issuer"), "must not be empty");
    }
    if spec.audiences.is_empty() {
        c.invalid(
            format!("{field}.audiences"),
            "list the audiences your API accepts (the tokens' aud); without them any token of the issuer would pass",
        );
    }
    c.at_most(
        &format!("{field}.audiences"),
        &spec.audiences,
        limits::AUDIENCES,
    );
    if spec.audiences.iter().any(String::is_empty) {
        c.invalid(
            format!("{field}.audiences"),
            "an audience must not be empty",
        );
    }

    let sources: Vec<&str> = [
        spec.discovery.as_ref().map(|_| "discovery"),
        spec.jwks_uri.as_ref().map(|_| "jwksUri"),
        spec.jwks.as_ref().map(|_| "jwks"),
        (!spec.public_keys.is_empty()).then_some("publicKeys"),
        spec.keys_from.as_ref().map(|_| "keysFrom"),
        spec.shared_secret.as_ref().map(|_| "sharedSecret"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if sources.len() > 1 {
        c.invalid(
            field,
            format!(
                "keys must come from exactly one source, found {}",
                sources.join(" and ")
            ),
        );
        return None;
    }
    if spec.ca_bundle.is_some()
        && let Some(inline) = sources
            .iter()
            .find(|s| !matches!(**s, "discovery" | "jwksUri"))
    {
        c.invalid(
            format!("{field}.caBundle"),
            format!("caBundle is for keys fetched over https (discovery or jwksUri), not {inline}"),
        );
    }
    let symmetric = spec.shared_secret.is_some();

    // algorithms
    let mut algorithms = Vec::new();
    for (i, name) in spec.algorithms.iter().enumerate() {
        let afield = format!("{field}.algorithms[{i}]");
        if name.eq_ignore_ascii_case("none") {
            c.invalid(afield, "\"none\" (unsigned tokens) is never accepted");
            continue;
        }
        match name.parse::<Algorithm>() {
            Ok(alg) if SYMMETRIC.contains(&alg) && !symmetric => c.invalid(
                afield,
                format!("{name} needs a sharedSecret; with public keys an HMAC algorithm would let anyone who has the public key sign tokens"),
            ),
            Ok(alg) if !SYMMETRIC.contains(&alg) && symmetric => {
                c.invalid(afield, format!("{name} cannot be verified with a sharedSecret; use HS256/HS384/HS512"))
            }
            Ok(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
            Ok(_) => {}
            Err(_) => c.invalid(
                afield,
                format!("{name:?} is not supported; use RS256/384/512, PS256/384/512, ES256/384, EdDSA or HS256/384/512"),
            ),
        }
    }
    if algorithms.is_empty() {
        algorithms = if symmetric {
            SYMMETRIC.to_vec()
        } else {
            ASYMMETRIC.to_vec()
        };
    }

    let fixed_id = || format!("inline:{policy_id}#{}", spec.issuer);
    let keys = if let Some(jwks) = &spec.jwks {
        let doc = serde_json::json!({ "keys": jwks.keys });
        match KeySet::from_jwks_value(&doc) {
            Ok(set) => {
                for rejected in &set.rejected {
                    c.invalid(
                        format!("{field}.jwks"),
                        format!(
                            "key {}: {}",
                            rejected.kid.as_deref().unwrap_or("(no kid)"),
                            rejected.error
                        ),
                    );
                }
                Some(KeySource::fixed(fixed_id(), set))
            }
            Err(e) => {
                c.invalid(format!("{field}.jwks"), e.to_string());
                None
            }
        }
    } else if !spec.public_keys.is_empty() {
        let mut keys = Vec::new();
        for (i, pk) in spec.public_keys.iter().enumerate() {
            match VerifyingKey::from_pem(pk.kid.clone(), &pk.pem) {
                Ok(key) => keys.push(key),
                Err(e) => c.invalid(format!("{field}.publicKeys[{i}]"), e.to_string()),
            }
        }
        Some(KeySource::fixed(fixed_id(), KeySet::from_keys(keys)))
    } else if let Some(stored) = &spec.keys_from {
        stored_keys(
            c,
            &format!("{field}.keysFrom"),
            namespace,
            stored,
            &algorithms,
            ctx,
        )
        .map(|set| KeySource::fixed(fixed_id(), set))
    } else if let Some(secret) = &spec.shared_secret {
        let sfield = format!("{field}.sharedSecret");
        secret_bytes(c, &sfield, namespace, secret, ctx).and_then(|bytes| {
            match VerifyingKey::from_secret(None, &bytes) {
                Ok(key) => Some(KeySource::fixed(fixed_id(), KeySet::from_keys(vec![key]))),
                Err(e) => {
                    c.invalid(sfield, e.to_string());
                    None
                }
            }
        })
    } else if let Some(jwks_uri) = &spec.jwks_uri {
        parse_url(c, &format!("{field}.jwksUri"), jwks_uri, reach)
            .map(|url| remote(Origin::JwksUri { url, reach, trust }))
    } else {
        let (dfield, text) = match &spec.discovery {
            Some(d) => (format!("{field}.discovery"), d.clone()),
            None => (
                format!("{field}.issuer"),
                format!(
                    "{}/.well-known/openid-configuration",
                    spec.issuer.trim_end_matches('/')
                ),
            ),
        };
        parse_url(c, &dfield, &text, reach).map(|url| {
            remote(Origin::Discovery {
                url,
                issuer: spec.issuer.clone(),
                reach,
                trust,
            })
        })
    };
    let max_lifetime = spec
        .max_token_lifetime
        .as_deref()
        .and_then(|text| max_token_lifetime(c, &format!("{field}.maxTokenLifetime"), text));
    if c.problems.len() > before {
        return None;
    }
    Some(Issuer {
        issuer: spec.issuer.clone(),
        audiences: spec.audiences.clone(),
        algorithms,
        keys: keys?,
        azure: None,
        max_lifetime,
        tenant: None,
        ca_bundle: bundle,
    })
}

/// The bytes of a file, a Secret's key or a ConfigMap's key.
fn read_stored(
    namespace: &str,
    file: &Option<String>,
    secret_ref: &Option<SecretKeyRef>,
    config_map_ref: &Option<ConfigMapKeyRef>,
    ctx: &CompileContext<'_>,
) -> Result<Vec<u8>, String> {
    match config_map_ref {
        Some(reference) => ctx.secrets.read_config_map(namespace, reference),
        None => ctx.secrets.read(
            namespace,
            &SecretSpec {
                file: file.clone(),
                secret_ref: secret_ref.clone(),
                encoding: None,
            },
        ),
    }
}

/// `caBundle`: the CA certificates an issuer's TLS is checked against, and the clients built
/// with them (shared by every issuer naming the same certificates).
fn ca_bundle(
    c: &mut Checker,
    field: &str,
    namespace: &str,
    spec: &CaBundleSpec,
    ctx: &CompileContext<'_>,
) -> Option<CaBundle> {
    let given = [
        spec.file.is_some(),
        spec.secret_ref.is_some(),
        spec.config_map_ref.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        c.invalid(field, "give exactly one of file, secretRef, configMapRef");
        return None;
    }
    let raw = match read_stored(
        namespace,
        &spec.file,
        &spec.secret_ref,
        &spec.config_map_ref,
        ctx,
    ) {
        // Admission review: the reference is well formed; the replicas read the bundle.
        Ok(_) if !ctx.secrets.has_values() => return None,
        Ok(raw) => raw,
        Err(e) => {
            c.secret(field, e);
            return None;
        }
    };
    match ctx.key_sources.fetcher().ca_bundle(&raw) {
        Ok(bundle) => Some(bundle),
        Err(e) => {
            c.invalid(field, e.to_string());
            None
        }
    }
}

/// `keysFrom`: the public keys kept in a Secret, a ConfigMap or a file. Every key must fit one
/// of the issuer's `algorithms`, so a stored key never widens (or silently narrows) what the
/// policy says it accepts.
fn stored_keys(
    c: &mut Checker,
    field: &str,
    namespace: &str,
    spec: &KeyMaterialSpec,
    algorithms: &[Algorithm],
    ctx: &CompileContext<'_>,
) -> Option<KeySet> {
    let given = [
        spec.file.is_some(),
        spec.secret_ref.is_some(),
        spec.config_map_ref.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        c.invalid(field, "give exactly one of file, secretRef, configMapRef");
        return None;
    }
    let raw = match read_stored(
        namespace,
        &spec.file,
        &spec.secret_ref,
        &spec.config_map_ref,
        ctx,
    ) {
        Ok(_) if !ctx.secrets.has_values() => {
            // Admission review: the reference is well formed; the replicas read the keys.
            return Some(KeySet::default());
        }
        Ok(raw) => raw,
        Err(e) => {
            c.secret(field, e);
            return None;
        }
    };
    let set = match KeySet::from_stored(&raw) {
        Ok(set) => set,
        Err(e) => {
            c.invalid(field, e.to_string());
            return None;
        }
    };
    let before = c.problems.len();
    for rejected in &set.rejected {
        c.invalid(
            field,
            format!(
                "key {}: {}",
                rejected.kid.as_deref().unwrap_or("(no kid)"),
                rejected.error
            ),
        );
    }
    for (i, key) in set.keys().iter().enumerate() {
        if !algorithms.iter().any(|alg| key.fits(*alg)) {
            let allowed: Vec<String> = algorithms.iter().map(|a| format!("{a:?}")).collect();
            c.invalid(
                field,
                format!(
                    "key {} ({}) fits none of the issuer's algorithms ({}); list an algorithm for it or remove the key",
                    key.kid.clone().unwrap_or_else(|| format!("#{i}")),
                    key.kind.describe(),
                    allowed.join(", ")
                ),
            );
        }
    }
    (c.problems.len() == before).then_some(set)
}

/// Whether `text` is written as the CRD's pattern `^([0-9]+(ms|s|m|h))+$` asks (Go's
/// duration units, which the API server's CEL `duration()` reads).
fn duration_units(text: &str) -> bool {
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        match ["ms", "s", "m", "h"]
            .iter()
            .find(|unit| rest.starts_with(**unit))
        {
            Some(unit) => rest = &rest[unit.len()..],
            None => return false,
        }
    }
    !text.is_empty()
}

/// `maxTokenLifetime`: a duration from 1s to 8760h, as the CRD's pattern and rule say.
fn max_token_lifetime(c: &mut Checker, field: &str, text: &str) -> Option<Duration> {
    let min = Duration::from_secs(limits::MIN_TOKEN_LIFETIME_SECS);
    let max = Duration::from_secs(limits::MAX_TOKEN_LIFETIME_SECS);
    if !duration_units(text) {
        c.invalid(
            field,
            format!("{text:?} is not a duration like 1h or 90m (units h, m, s, ms)"),
        );
        return None;
    }
    match humantime::parse_duration(text) {
        Ok(d) if d < min => c.invalid(
            field,
            format!("{text} is less than the 1s minimum: a token must live long enough to be used"),
        ),
        Ok(d) if d > max => c.invalid(field, format!("{text} is more than the 8760h maximum")),
        Ok(d) => return Some(d),
        Err(e) => c.invalid(
            field,
            format!("{text:?} is not a duration like 1h or 90m: {e}"),
        ),
    }
    None
}

fn duration(
    c: &mut Checker,
    field: &str,
    text: Option<&str>,
    default: Duration,
    max: Duration,
) -> Duration {
    let Some(text) = text else { return default };
    match humantime::parse_duration(text) {
        Ok(d) if d <= max => d,
        Ok(_) => {
            c.invalid(
                field,
                format!(
                    "{text} is more than the {} maximum",
                    humantime::format_duration(max)
                ),
            );
            default
        }
        Err(e) => {
            c.invalid(
                field,
                format!("{text:?} is not a duration like 30s or 5m: {e}"),
            );
            default
        }
    }
}

fn compile_introspection(
    c: &mut Checker,
    id: &str,
    namespace: &str,
    spec: &IntrospectionSpec,
    issuers: &[Issuer],
    ctx: &CompileContext<'_>,
) -> Option<Arc<Introspector>> {
    let before = c.problems.len();
    let response = spec.response.unwrap_or_default();
    let userinfo = response == IntrospectionResponse::Userinfo;
    if spec.phantom_token
        && matches!(
            response,
            IntrospectionResponse::Userinfo | IntrospectionResponse::TokenIntrospectionJwt
        )
    {
        c.invalid("spec.introspection.phantomToken", "this response type carries no JWT to forward; use response: json (a jwt member) or jwt");
    }
    let accept_without = AcceptWithout {
        aud: spec.accept_without.contains(&spec::AnswerClaim::Aud),
        exp: spec.accept_without.contains(&spec::AnswerClaim::Exp),
    };
    if userinfo && !(accept_without.aud && accept_without.exp) {
        c.invalid(
            "spec.introspection.acceptWithout",
            "userinfo answers carry no aud and no exp: say so with acceptWithout: [aud, exp] (the answer then proves only that the token is active for its user; use response: json for an answer that names the audience)",
        );
    }
    // The endpoint the first issuer's discovery names is that issuer's server: its CA bundle.
    let mut discovered_bundle = None;
    let endpoint = match &spec.endpoint {
        Some(text) => parse_url(
            c,
            "spec.introspection.endpoint",
            text,
            Reach::new(spec.allow_insecure_http, spec.allow_metadata_addresses),
        )
        .map(EndpointSource::Fixed),
        None => match issuers.first().map(|i| (i.keys.origin(), &i.keys)) {
            Some((Origin::Discovery { .. }, keys)) => {
                discovered_bundle = issuers.first().and_then(|i| i.ca_bundle.clone());
                Some(EndpointSource::Discovered(keys.clone()))
            }
            Some(_) => {
                c.invalid(
                    "spec.introspection.endpoint",
                    "set the endpoint: the first issuer does not use OpenID discovery",
                );
                None
            }
            None => {
                c.invalid(
                    "spec.introspection.endpoint",
                    "set the endpoint: the policy lists no issuer whose discovery could name it (tenants admitted by a condition are not known when it compiles)",
                );
                None
            }
        },
    };
    let client_secret = if userinfo {
        String::new()
    } else {
        if spec.client_id.is_empty() {
            c.invalid(
                "spec.introspection.clientId",
                "the client tollgate authenticates as is required",
            );
        }
        let field = "spec.introspection.clientSecretRef";
        let secret = match &spec.client_secret_ref {
            None => {
                c.invalid(
                    field,
                    "the client secret is required: {name, key} of a Secret, or {file}",
                );
                None
            }
            Some(r) => match (&r.name, &r.key, &r.file) {
                (Some(name), Some(key), None) => Some(SecretSpec {
                    secret_ref: Some(SecretKeyRef {
                        name: name.clone(),
                        key: key.clone(),
                    }),
                    ..SecretSpec::default()
                }),
                (None, None, Some(file)) => Some(SecretSpec {
                    file: Some(file.clone()),
                    ..SecretSpec::default()
                }),
                _ => {
                    c.invalid(
                        field,
                        "give either name and key (a Kubernetes Secret) or file",
                    );
                    None
                }
            },
        };
        match secret.map(|s| ctx.secrets.read(namespace, &s)) {
            Some(Ok(raw)) => {
                let raw = raw.strip_suffix(b"\n").unwrap_or(&raw).to_vec();
                String::from_utf8(raw).unwrap_or_else(|_| {
                    c.invalid(field, "the client secret is not UTF-8 text");
                    String::new()
                })
            }
            Some(Err(e)) => {
                c.secret(field, e);
                String::new()
            }
            None => String::new(),
        }
    };
    let cache = spec.cache.clone().unwrap_or_default();
    let hour = Duration::from_secs(3600);
    let settings = CacheSettings {
        default_ttl: duration(
            c,
            "spec.introspection.cache.defaultTtl",
            cache.default_ttl.as_deref(),
            Duration::from_secs(300),
            24 * hour,
        ),
        max_ttl: duration(
            c,
            "spec.introspection.cache.maxTtl",
            cache.max_ttl.as_deref(),
            hour,
            24 * hour,
        ),
        negative_ttl: duration(
            c,
            "spec.introspection.cache.negativeTtl",
            cache.negative_ttl.as_deref(),
            Duration::from_secs(5),
            hour,
        ),
        max_entries: cache.max_entries.unwrap_or(100_000),
    };
    if settings.max_entries == 0 {
        c.invalid("spec.introspection.cache.maxEntries", "must be at least 1");
    }
    let timeout = duration(
        c,
        "spec.introspection.timeout",
        spec.timeout.as_deref(),
        Duration::from_secs(2),
        Duration::from_secs(30),
    );
    if c.problems.len() > before {
        return None;
    }
    let config = IntrospectorConfig {
        endpoint: endpoint?,
        reach: Reach::new(spec.allow_insecure_http, spec.allow_metadata_addresses),
        client_id: spec.client_id.clone(),
        client_secret,
        auth_method: spec.auth_method.unwrap_or_default(),
        response,
        when: spec.when.unwrap_or_default(),
        phantom_token: spec.phantom_token,
        cache: settings,
        timeout,
        accept_without,
        stats: ctx.key_sources.introspection_stats(id),
    };
    let fetcher = match &discovered_bundle {
        Some(bundle) => ctx
            .key_sources
            .introspection_fetcher()
            .with_ca_bundle(bundle),
        None => ctx.key_sources.introspection_fetcher().clone(),
    };
    Some(Arc::new(Introspector::new(config, fetcher)))
}

/// `spec.apiKeys`: where keys are read, and the keys of the selected Secrets (hashed; a
/// Secret that is not a usable key fails the policy, which keeps its last good version).
fn compile_api_keys(
    c: &mut Checker,
    namespace: &str,
    spec: &spec::ApiKeysSpec,
    token: &TokenLocation,
    ctx: &CompileContext<'_>,
) -> Option<ApiKeys> {
    let field = "spec.apiKeys";
    let before = c.problems.len();
    let labels = &spec.secret_selector.match_labels;
    if labels.is_empty() {
        c.invalid(
            format!("{field}.secretSelector.matchLabels"),
            "name at least one label: an empty selector would make every Secret of the namespace a key",
        );
    }
    // Label syntax: the selector is sent to the API server as `k=v,…`.
    let label_text = |t: &str, max: usize| {
        t.len() <= max
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
    };
    for (k, v) in labels {
        if k.is_empty() || !label_text(k, 317) || !label_text(v, 63) || v.contains('/') {
            c.invalid(
                format!("{field}.secretSelector.matchLabels"),
                format!("{k:?}: {v:?} is not a label name and value"),
            );
        }
    }
    let header = match (&spec.header, &spec.query) {
        (Some(h), _) => Some(h.to_ascii_lowercase()),
        (None, Some(_)) => None,
        (None, None) => Some("x-api-key".to_string()),
    };
    if let Some(h) = &header {
        if !valid_header_name(h) || RESERVED_HEADERS.contains(&h.as_str()) || h == "cookie" {
            c.invalid(
                format!("{field}.header"),
                "not a header name a key can travel in",
            );
        } else if *h == token.header {
            c.invalid(
                format!("{field}.header"),
                format!("{h} carries the token (spec.token.header); name another header"),
            );
        }
    }
    if let Some(q) = &spec.query {
        if q.is_empty() || q.len() > 256 || !q.bytes().all(is_token_char) {
            c.invalid(format!("{field}.query"), "not a query parameter name");
        } else if token.query.as_deref() == Some(q.as_str()) {
            c.invalid(
                format!("{field}.query"),
                format!("{q} carries the token (spec.token.query); name another parameter"),
            );
        }
    }
    let with_token = match spec.with_token.unwrap_or_default() {
        spec::ApiKeyWithToken::Refuse => WithToken::Refuse,
        spec::ApiKeyWithToken::Token => WithToken::Token,
    };
    let mut keys = ApiKeys::new(header, spec.query.clone(), with_token);
    if c.problems.len() > before || !ctx.secrets.has_values() {
        return (c.problems.len() == before).then_some(keys);
    }
    let selected = match ctx.secrets.select(namespace, labels, spec.dir.as_deref()) {
        Ok(selected) => selected,
        Err(message) => {
            c.secret(format!("{field}.secretSelector"), message);
            return None;
        }
    };
    if selected.len() > apikeys::MAX_KEYS {
        c.invalid(
            format!("{field}.secretSelector"),
            format!(
                "selects {} Secrets; at most {} keys are allowed",
                selected.len(),
                apikeys::MAX_KEYS
            ),
        );
        return None;
    }
    for secret in &selected {
        let get = |name: &str| secret.data.get(name).map(Vec::as_slice);
        let data = KeyData {
            key: get("key"),
            owner: get("owner"),
            scopes: get("scopes"),
        };
        match KeyRecord::new(secret.source.clone(), &data) {
            Ok(record) => {
                if let Err(duplicate) = keys.insert(record) {
                    c.invalid(
                        format!("{field}.secretSelector"),
                        format!(
                            "{} holds {duplicate}: every key must be unique",
                            secret.source
                        ),
                    );
                }
            }
            Err(error) => c.invalid(
                format!("{field}.secretSelector"),
                format!("{} {error}", secret.source),
            ),
        }
    }
    (c.problems.len() == before).then_some(keys)
}

/// The decoded bytes of a secret value, with the problem recorded under `field` when it
/// cannot be read (a missing secret) or decoded (invalid).
fn secret_bytes(
    c: &mut Checker,
    field: &str,
    namespace: &str,
    spec: &SecretSpec,
    ctx: &CompileContext<'_>,
) -> Option<Vec<u8>> {
    match ctx.secrets.read(namespace, spec) {
        Ok(raw) => match decode_secret(&raw, spec.encoding.unwrap_or_default()) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                c.invalid(field, e);
                None
            }
        },
        Err(e) => {
            c.secret(field, e);
            None
        }
    }
}

fn decode_secret(raw: &[u8], encoding: SecretEncoding) -> Result<Vec<u8>, String> {
    let trimmed = raw.strip_suffix(b"\n").unwrap_or(raw);
    let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
    match encoding {
        SecretEncoding::Raw => Ok(trimmed.to_vec()),
        SecretEncoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(trimmed)
            .map_err(|e| format!("not standard base64: {e}")),
        SecretEncoding::Base64url => {
            let unpadded: Vec<u8> = trimmed.iter().copied().filter(|b| *b != b'=').collect();
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(unpadded)
                .map_err(|e| format!("not base64url: {e}"))
        }
    }
}

fn requirements(
    c: &mut Checker,
    field: &str,
    specs: &[ClaimRequirementSpec],
) -> Vec<ClaimRequirement> {
    c.at_most(field, specs, limits::REQUIREMENTS);
    let mut out = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if spec.name.is_empty() {
            c.invalid(format!("{f}.name"), "must not be empty");
        }
        if spec.separator.as_deref() == Some("") {
            c.invalid(
                format!("{f}.separator"),
                "must not be empty (leave it out to compare whole values)",
            );
        }
        c.at_most(&format!("{f}.values"), &spec.values, limits::VALUES);
        out.push(ClaimRequirement {
            name: spec.name.clone(),
            mode: spec.match_,
            separator: spec.separator.clone(),
            values: spec.values.iter().map(|v| v.0.clone()).collect(),
        });
    }
    out
}

fn forward(c: &mut Checker, spec: &JwtPolicySpec, token: &TokenLocation) -> Forward {
    let f = &spec.forward;
    c.at_most(
        "spec.forward.claimsToHeaders",
        &f.claims_to_headers,
        limits::FORWARD_HEADERS,
    );
    let mut seen: Vec<String> = Vec::new();
    let mut check_header = |c: &mut Checker, field: String, header: &str| -> String {
        let lower = header.to_ascii_lowercase();
        if !valid_header_name(&lower) {
            c.invalid(field, format!("{header:?} is not a valid header name"));
        } else if RESERVED_HEADERS.contains(&lower.as_str()) {
            c.invalid(field, format!("{header} cannot be set by a policy"));
        } else if lower == token.header {
            c.invalid(
                field,
                format!("{header} is where the token is read; pick another header"),
            );
        } else if seen.contains(&lower) {
            c.invalid(field, format!("{header} is set twice"));
        }
        seen.push(lower.clone());
        lower
    };
    let mut claims_to_headers = Vec::new();
    for (i, m) in f.claims_to_headers.iter().enumerate() {
        if m.claim.is_empty() {
            c.invalid(
                format!("spec.forward.claimsToHeaders[{i}].claim"),
                "must not be empty",
            );
        }
        let header = check_header(
            c,
            format!("spec.forward.claimsToHeaders[{i}].header"),
            &m.header,
        );
        claims_to_headers.push((m.claim.clone(), header));
    }
    let payload_header = f
        .payload_header
        .as_ref()
        .map(|h| check_header(c, "spec.forward.payloadHeader".into(), h));
    let metadata_claims = match &f.metadata_claims {
        None => MetadataClaims::All,
        Some(names) => {
            c.at_most("spec.forward.metadataClaims", names, 64);
            let mut listed: Vec<String> = Vec::with_capacity(names.len());
            for (i, name) in names.iter().enumerate() {
                if name.is_empty() || name.len() > 256 {
                    c.invalid(
                        format!("spec.forward.metadataClaims[{i}]"),
                        "a claim name of 1 to 256 characters",
                    );
                } else if !listed.contains(name) {
                    listed.push(name.clone());
                }
            }
            MetadataClaims::Listed(listed.into())
        }
    };
    Forward {
        claims_to_headers,
        payload_header,
        keep_token: f.keep_token.unwrap_or(true),
        computed: Vec::new(),
        metadata_claims,
    }
}

fn deny_config(c: &mut Checker, spec: &JwtPolicySpec) -> DenyConfig {
    let d = &spec.deny;
    let status = d.status.unwrap_or(401);
    if !(400..=499).contains(&status) {
        c.invalid("spec.deny.status", format!("{status} is not a 4xx status"));
    }
    if let Some(m) = &d.message
        && (m.len() > 1024 || m.chars().any(char::is_control))
    {
        c.invalid(
            "spec.deny.message",
            "at most 1024 characters, no control characters",
        );
    }
    if let Some(r) = &d.realm
        && (r.len() > 256
            || r.chars()
                .any(|ch| ch == '"' || ch == '\\' || ch.is_control()))
    {
        c.invalid(
            "spec.deny.realm",
            "at most 256 characters, no quotes, backslashes or control characters",
        );
    }
    DenyConfig {
        status,
        message: d.message.clone(),
        detail: d.detail.unwrap_or_default(),
        realm: d.realm.clone(),
    }
}

mod expressions;

#[cfg(test)]
mod tests;

//! Command-line interface: `serve`, `check-policy`, `explain`, `authorize`, `demo`, `crdgen`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::controller::watch::WatchOptions;
use crate::controller::webhook::WebhookConfig;
use crate::jwks::{FetchSettings, KeySources, RefreshSettings};
use crate::policy::files::FileLoader;
use crate::policy::{DefaultAction, HostDelegations, SnapshotSettings};
use crate::serve::{self, PolicySource, ServeConfig};
use crate::telemetry::{self, LogFormat};
use crate::tls::TlsFiles;
use crate::verified::CacheLimits;
use crate::{client, demo};

/// OAuth2 / OpenID Connect access-token validation for Envoy ext_authz.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "TOLLGATE_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the ext_authz gRPC API for policies read from YAML files (watched for changes).
    Serve(Box<ServeArgs>),
    /// Validate policy files offline and print every problem; exits 1 if any.
    CheckPolicy {
        /// Policy files or directories of `*.yaml`/`*.yml`/`*.json` files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The host delegation file the servers use (`serve --host-delegations`), so host
        /// ownership is checked as they check it.
        #[arg(long, env = "TOLLGATE_HOST_DELEGATIONS")]
        host_delegations: Option<PathBuf>,
    },
    /// Send one Check to a running ext_authz server and print the decision.
    Authorize(AuthorizeArgs),
    /// Run a local identity provider, an example policy and tollgate, and judge example tokens.
    Demo(DemoArgs),
    /// Explain why a token is allowed or denied by a policy, check by check, with a fix for
    /// each failure. Exit code 0: allowed, 1: denied, 2: usage error.
    Explain(ExplainArgs),
    /// Print the JwtPolicy CustomResourceDefinition, or write it to a file (`crds/` in this repository).
    Crdgen {
        /// Write here instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Policy files or directories (repeatable).
    #[arg(
        long = "policies",
        env = "TOLLGATE_POLICIES",
        value_delimiter = ',',
        conflicts_with = "kubernetes"
    )]
    pub policies: Vec<PathBuf>,
    /// Watch JwtPolicy objects in Kubernetes (the default inside a pod when --policies is not given).
    #[arg(long)]
    pub kubernetes: bool,
    /// Kubernetes: watch only these namespaces (default: all).
    #[arg(
        long,
        env = "TOLLGATE_NAMESPACES",
        value_delimiter = ',',
        requires = "kubernetes"
    )]
    pub namespaces: Vec<String>,
    /// Kubernetes: only JwtPolicy objects matching this label selector (to shard policies
    /// across several tollgate deployments).
    #[arg(long, env = "TOLLGATE_SELECTOR")]
    pub selector: Option<String>,
    /// Kubernetes: the name of this deployment (its status Lease and replica heartbeat Leases
    /// are named after it).
    #[arg(long, env = "TOLLGATE_INSTANCE", default_value = "tollgate")]
    pub instance: String,
    /// Kubernetes: how often each replica renews its heartbeat Lease (it counts for 3 periods).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// Kubernetes: validity of the status Lease; another replica takes over status writes this
    /// long after its holder stops renewing.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub status_lease_duration: Duration,
    /// Kubernetes: serve the validating admission webhook (HTTPS) on this address.
    #[arg(long, requires_all = ["webhook_cert", "webhook_key"])]
    pub webhook_addr: Option<SocketAddr>,
    /// The webhook's certificate chain (PEM); reloaded when it changes.
    #[arg(long, requires = "webhook_addr")]
    pub webhook_cert: Option<PathBuf>,
    /// The webhook's private key (PEM).
    #[arg(long, requires = "webhook_addr")]
    pub webhook_key: Option<PathBuf>,
    /// gRPC listen address (ext_authz and grpc.health.v1).
    #[arg(long, default_value = "127.0.0.1:9001", env = "TOLLGATE_GRPC_ADDR")]
    pub grpc_addr: SocketAddr,
    /// Serve gRPC over TLS with this certificate chain (PEM); reloaded when it changes.
    #[arg(long, env = "TOLLGATE_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --grpc-tls-cert.
    #[arg(long, env = "TOLLGATE_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<PathBuf>,
    /// Mutual TLS: refuse gRPC clients (Envoy) whose certificate does not chain to these CA
    /// certificates (PEM). Needs --grpc-tls-cert.
    #[arg(long, env = "TOLLGATE_GRPC_CLIENT_CA", requires = "grpc_tls_cert")]
    pub grpc_client_ca: Option<PathBuf>,
    /// After SIGTERM: how long in-flight checks and open connections get to finish before
    /// they are closed. New connections are refused from the signal on.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Serve HTTP authorization on this address: forward auth (`/auth`, for nginx auth_request,
    /// ingress-nginx and Traefik forwardAuth) and Envoy's HTTP ext_authz protocol (family
    /// `envoy`: Envoy http_service, Envoy Gateway extAuth.http, Istio envoyExtAuthzHttp, Gateway
    /// API ExternalAuth with protocol HTTP).
    #[arg(long, env = "TOLLGATE_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Addresses (CIDRs) of the proxies allowed to call the HTTP listener; calls from anywhere
    /// else are refused (403 proxy_not_trusted). Set it to your proxies' addresses (their pod
    /// network). `CIDR=nginx`, `CIDR=traefik` or `CIDR=envoy` gives a network its own family.
    #[arg(
        long,
        env = "TOLLGATE_TRUSTED_PROXIES",
        value_delimiter = ',',
        default_value = crate::http::DEFAULT_TRUSTED_PROXIES,
        value_parser = crate::http::parse_trusted
    )]
    pub trusted_proxies: Vec<crate::http::TrustedProxy>,
    /// Proxies (CIDRs) that terminate mutual TLS and forward the client's certificate in a
    /// header to the HTTP listener: `CIDR` or `CIDR=xfcc` for `x-forwarded-client-cert`
    /// (Envoy's format, with `Cert="<URL-encoded PEM>"`), `CIDR=client-cert` for RFC 9440
    /// `Client-Cert`, `CIDR=traefik` for Traefik's `x-forwarded-tls-client-cert`
    /// (passTLSClientCert with pem: true; the first certificate is the client's). Default:
    /// none. A request carrying any of these headers from any other address, or one its proxy
    /// does not set, is refused (403 certificate_untrusted): the client may have written it.
    /// The proxy must overwrite the header, never append to it.
    #[arg(
        long,
        env = "TOLLGATE_CLIENT_CERT_PROXIES",
        value_delimiter = ',',
        value_parser = crate::http::forwarded_cert::parse_cert_proxy
    )]
    pub client_cert_proxies: Vec<(ipnet::IpNet, crate::http::CertHeader)>,
    /// What describes the original request on the HTTP listener: `nginx` (X-Original-URL and
    /// X-Original-Method on /auth, as auth_request with the example configuration and
    /// ingress-nginx send them), `traefik` (X-Forwarded-Method/-Proto/-Host/-Uri on /auth, as
    /// forwardAuth sends them) or `envoy` (the call itself: its method, Host, and target after
    /// --ext-authz-path-prefix, as Envoy's HTTP ext_authz sends them). Required with
    /// --http-addr unless every --trusted-proxies entry names its family: it is never guessed
    /// from the request.
    #[arg(long, env = "TOLLGATE_FORWARD_AUTH_FAMILY", value_enum)]
    pub forward_auth_family: Option<crate::http::Family>,
    /// The path prefix the `envoy` family's proxy puts before the original path and query
    /// (Envoy http_service.path_prefix, Envoy Gateway extAuth.http.path, Istio pathPrefix,
    /// Gateway API http.path): set the same on both sides. A call without it is refused (400).
    /// Never empty.
    #[arg(
        long,
        env = "TOLLGATE_EXT_AUTHZ_PATH_PREFIX",
        default_value = crate::http::PathPrefix::DEFAULT,
        value_parser = crate::http::PathPrefix::parse
    )]
    pub ext_authz_path_prefix: crate::http::PathPrefix,
    /// How long a client of the HTTP listener may take to send a request's head, and may leave
    /// a kept-alive connection idle; slower connections are closed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub http_header_timeout: Duration,
    /// Admin HTTP listen address (/healthz, /readyz, /metrics).
    #[arg(long, default_value = "127.0.0.1:9090", env = "TOLLGATE_ADMIN_ADDR")]
    pub admin_addr: SocketAddr,
    /// What happens to requests no policy matches.
    #[arg(long, value_enum, default_value_t = DefaultAction::Deny)]
    pub default_action: DefaultAction,
    /// A HostDelegations file: hosts a cluster operator gives to namespaces. A delegated host
    /// belongs to its namespace whatever policies other namespaces create; other hosts belong
    /// to the namespace of the oldest policy naming them (docs/security.md). Read at start.
    #[arg(long, env = "TOLLGATE_HOST_DELEGATIONS")]
    pub host_delegations: Option<PathBuf>,
    /// Timeout of each discovery/JWKS request.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub fetch_timeout: Duration,
    /// Never send outbound calls (discovery, JWKS, introspection) through the proxy the
    /// environment names (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY with NO_PROXY); by default they
    /// use it when one is set.
    #[arg(long, env = "TOLLGATE_NO_EGRESS_PROXY")]
    pub no_egress_proxy: bool,
    /// Least time between two key set refetches caused by unknown `kid`s (per source).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub unknown_kid_refetch_interval: Duration,
    /// Shortest key set refresh interval: the IdP's Cache-Control max-age is raised to it.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub jwks_min_refresh: Duration,
    /// Longest key set refresh interval (also used when the IdP sends no max-age, if shorter
    /// than the 10m default).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub jwks_max_refresh: Duration,
    /// After a failed fetch, retries back off exponentially up to this delay.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwks_max_retry_delay: Duration,
    /// How long the last good keys of an issuer stay in use while every refresh fails; after
    /// that its tokens are answered 503 issuer_unavailable until a refresh succeeds.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub jwks_max_staleness: Duration,
    /// Rescan interval of the policy files, besides change notifications.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// Most tokens the verified-token cache holds (0 turns it off): a token seen again skips
    /// signature verification (and decryption) until it expires or its keys change.
    #[arg(long, default_value_t = 100_000, env = "TOLLGATE_TOKEN_CACHE_ENTRIES")]
    pub token_cache_entries: usize,
    /// Most memory the verified-token cache holds, in MiB (estimated from claims and headers).
    #[arg(long, default_value_t = 64, env = "TOLLGATE_TOKEN_CACHE_MIB")]
    pub token_cache_mib: u64,
    /// Most denial log lines per second (0: every denial). The lines left out are counted in
    /// the next line's `suppressed_before`; the metrics count every denial.
    #[arg(long, default_value_t = crate::telemetry::DEFAULT_DENIAL_LOG_LIMIT, env = "TOLLGATE_DENIAL_LOG_LIMIT")]
    pub denial_log_limit: u64,
    /// Longest a cached verification is used before the token is verified again.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub token_cache_max_age: Duration,
    /// Most "dry run: would deny" log lines per dry-run policy and minute (0: every one). The
    /// lines left out are counted in the next line's `suppressed_before`; the metrics and
    /// `status.dryRun` count every would-be denial.
    #[arg(long, default_value_t = crate::dry_run::DEFAULT_LOG_LIMIT, env = "TOLLGATE_DRY_RUN_LOG_LIMIT")]
    pub dry_run_log_limit: u64,
    /// Most private-key decryptions (RSA-OAEP, ECDH-ES) of encrypted tokens at once (0: half
    /// the CPUs, at least 1). 64 times as many may wait; beyond that a check is answered 503
    /// decryption_overloaded. Tokens from the verified-token cache never wait.
    #[arg(long, default_value_t = 0, env = "TOLLGATE_DECRYPTION_CONCURRENCY")]
    pub decryption_concurrency: usize,
    /// The decision log, an audit trail of checks as JSON lines (docs/operations.md): `off`,
    /// `stdout`, or a file path (appended to, reopened on SIGHUP or when moved away). Never
    /// holds a token or a query string.
    #[arg(
        long,
        default_value = "off",
        env = "TOLLGATE_DECISION_LOG",
        value_parser = crate::decision_log::Output::parse
    )]
    pub decision_log: crate::decision_log::Output,
    /// Share of allows the decision log records, 0 to 1 (at random; 1: every one).
    #[arg(
        long,
        default_value_t = 1.0,
        env = "TOLLGATE_DECISION_LOG_SAMPLE_ALLOW"
    )]
    pub decision_log_sample_allow: f64,
    /// Share of denials (and dry-run would-be denials) the decision log records, 0 to 1.
    #[arg(long, default_value_t = 1.0, env = "TOLLGATE_DECISION_LOG_SAMPLE_DENY")]
    pub decision_log_sample_deny: f64,
    /// Most decision log records per second (0: no limit). The rest are counted in
    /// tollgate_decision_log_dropped_total{cause="rate_limited"} and in the next `dropped` record.
    #[arg(long, default_value_t = crate::decision_log::DEFAULT_LIMIT, env = "TOLLGATE_DECISION_LOG_LIMIT")]
    pub decision_log_limit: u64,
    /// What a record says of the subject: `hash` (HMAC-SHA256 of the issuer and `sub`, keyed
    /// with --decision-log-subject-key), `hash:<claim>`, `claim:<name>` (the claim's value in
    /// clear) or `none`. Only from a verified token.
    #[arg(
        long,
        default_value = "hash",
        env = "TOLLGATE_DECISION_LOG_SUBJECT",
        value_parser = crate::decision_log::SubjectMode::parse
    )]
    pub decision_log_subject: crate::decision_log::SubjectMode,
    /// The key of the subject hash: a file whose text (without the final newline) is the key,
    /// at least 32 bytes, the same on every replica (`openssl rand -hex 32`). Read at start.
    #[arg(long, env = "TOLLGATE_DECISION_LOG_SUBJECT_KEY")]
    pub decision_log_subject_key: Option<PathBuf>,
    /// Records waiting for the decision log writer, at most; a record that finds the queue
    /// full is dropped (counted, cause="queue_full"), never waited for.
    #[arg(long, default_value_t = crate::decision_log::DEFAULT_QUEUE)]
    pub decision_log_queue: usize,
    /// How often the decision log is flushed to its output: what a crash loses, at most.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub decision_log_flush_interval: Duration,
}

#[derive(Debug, Args)]
pub struct AuthorizeArgs {
    /// ext_authz server URL.
    #[arg(long, default_value = "http://127.0.0.1:9001")]
    pub server: String,
    /// Request host (`:authority`).
    #[arg(long)]
    pub host: String,
    /// Request path (with query, if any).
    #[arg(long, default_value = "/")]
    pub path: String,
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Sent as `Authorization: Bearer <token>`.
    #[arg(long)]
    pub token: Option<String>,
    /// Extra request header `name: value` (repeatable).
    #[arg(long = "header", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Select a policy explicitly (`namespace/name`), like a route's context extension.
    #[arg(long)]
    pub policy: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// A policy file or directory, or `namespace/name` of a JwtPolicy in the cluster of the
    /// current kubeconfig.
    #[arg(long)]
    pub policy: String,
    /// The token, or `-` to read it from standard input. Without one, the request has none.
    #[arg(long)]
    pub token: Option<String>,
    /// Request host; with --path/--method it selects the policy as a route would.
    #[arg(long)]
    pub host: Option<String>,
    /// Request path.
    #[arg(long)]
    pub path: Option<String>,
    /// Request method (default GET).
    #[arg(long)]
    pub method: Option<String>,
    /// Extra request header `name: value` (repeatable).
    #[arg(long = "header", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// The client's TLS certificate, a PEM file: what the gateway reports of a mutual TLS
    /// connection (for certificate-bound tokens, `clientCertificate`, `source.certificate`).
    #[arg(long)]
    pub client_cert: Option<std::path::PathBuf>,
    /// Never fetch discovery or JWKS: use only keys written in the policy.
    #[arg(long)]
    pub offline: bool,
    /// Judge as if the clock said this time (RFC 3339, e.g. 2026-01-01T00:00:00Z).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub at: Option<std::time::SystemTime>,
    /// The scheme the client used, which a DPoP proof's `htu` names (`http` or `https`).
    #[arg(long, default_value = "https", value_parser = ["http", "https"])]
    pub scheme: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExplainOutput::Text)]
    pub output: ExplainOutput,
}

/// `tollgate explain` output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExplainOutput {
    /// ✓/✗ per check, for people.
    Text,
    /// One JSON document, for tools.
    Json,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub grpc_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_addr: SocketAddr,
    /// Judge the example tokens and exit instead of serving until Ctrl-C.
    #[arg(long)]
    pub once: bool,
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not `name: value`"))?;
    Ok((name.trim().to_string(), value.trim().to_string()))
}

/// Runs the parsed command; the returned code is the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Serve(args) => {
            crate::jwe::gate::configure(args.decryption_concurrency);
            let in_pod = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
            let source = if args.kubernetes || (args.policies.is_empty() && in_pod) {
                PolicySource::Kubernetes(WatchOptions {
                    namespaces: args.namespaces,
                    selector: args.selector,
                    instance: args.instance,
                    heartbeat: args.heartbeat_interval,
                    status_lease: args.status_lease_duration,
                })
            } else if !args.policies.is_empty() {
                anyhow::ensure!(
                    args.selector.is_none(),
                    "--selector applies to --kubernetes only"
                );
                PolicySource::Files(args.policies)
            } else {
                anyhow::bail!("give --policies <file|dir> or --kubernetes");
            };
            let webhook = match (args.webhook_addr, args.webhook_cert, args.webhook_key) {
                (Some(addr), Some(cert), Some(key)) => Some(WebhookConfig { addr, cert, key }),
                _ => None,
            };
            telemetry::set_denial_log_limit(args.denial_log_limit);
            crate::dry_run::set_log_limit(args.dry_run_log_limit);
            let grpc_tls = match (args.grpc_tls_cert, args.grpc_tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert,
                    key,
                    client_ca: args.grpc_client_ca,
                }),
                _ => None,
            };
            let decision_log = crate::decision_log::Settings {
                output: args.decision_log,
                sample_allow: args.decision_log_sample_allow,
                sample_deny: args.decision_log_sample_deny,
                limit: args.decision_log_limit,
                subject: args.decision_log_subject,
                subject_key: args.decision_log_subject_key,
                queue: args.decision_log_queue,
                flush_interval: args.decision_log_flush_interval,
            };
            let config = ServeConfig {
                decision_log,
                grpc_tls,
                drain_timeout: args.drain_timeout,
                tracing: crate::otel::Settings::from_env()
                    .context("reading the OpenTelemetry settings (OTEL_*)")?,
                webhook,
                http_addr: args.http_addr,
                trusted_proxies: match args.http_addr {
                    Some(_) => crate::http::resolve_families(
                        &args.trusted_proxies,
                        args.forward_auth_family,
                    )
                    .map_err(anyhow::Error::msg)?,
                    None => Vec::new(),
                },
                client_cert_proxies: args.client_cert_proxies,
                http_header_timeout: args.http_header_timeout,
                ext_authz_path_prefix: args.ext_authz_path_prefix,
                source,
                grpc_addr: args.grpc_addr,
                admin_addr: args.admin_addr,
                default_action: args.default_action,
                delegations: load_delegations(args.host_delegations.as_deref())?,
                fetch: FetchSettings {
                    timeout: args.fetch_timeout,
                    egress_proxy: !args.no_egress_proxy,
                    ..FetchSettings::default()
                },
                refresh: RefreshSettings {
                    miss_refetch_interval: args.unknown_kid_refetch_interval,
                    min_interval: args.jwks_min_refresh,
                    max_interval: args.jwks_max_refresh.max(args.jwks_min_refresh),
                    max_retry_delay: args.jwks_max_retry_delay,
                    max_staleness: args.jwks_max_staleness,
                    ..RefreshSettings::default()
                },
                poll: args.poll_interval,
                token_cache: CacheLimits {
                    max_entries: args.token_cache_entries,
                    max_bytes: args.token_cache_mib.saturating_mul(1 << 20),
                    max_age: args.token_cache_max_age,
                },
            };
            serve::run(config, serve::shutdown_signal(), |_, _| {}).await?;
            Ok(0)
        }
        Command::CheckPolicy {
            paths,
            host_delegations,
        } => check_policy(paths, host_delegations.as_deref()),
        Command::Authorize(args) => {
            let probe = client::Probe {
                host: args.host,
                path: args.path,
                method: args.method.to_ascii_uppercase(),
                token: args.token,
                headers: args.headers,
                policy: args.policy,
            };
            let response = client::send(&args.server, &probe).await?;
            print!("{}", client::render(&response));
            Ok(if client::allowed(&response) { 0 } else { 1 })
        }
        Command::Explain(args) => explain_command(args).await,
        Command::Crdgen { out } => {
            let yaml = crate::policy::spec::crd_yaml().context("rendering the CRD")?;
            match out {
                Some(path) => std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{yaml}"),
            }
            Ok(0)
        }
        Command::Demo(args) => {
            let ok = demo::run(demo::DemoOptions {
                grpc_addr: args.grpc_addr,
                admin_addr: args.admin_addr,
                once: args.once,
            })
            .await?;
            Ok(if ok { 0 } else { 1 })
        }
    }
}

async fn explain_command(args: ExplainArgs) -> anyhow::Result<i32> {
    match explain_run(args).await {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(2)
        }
    }
}

async fn explain_run(args: ExplainArgs) -> anyhow::Result<i32> {
    use crate::explain::{self, PolicySource};
    let token = match args.token.as_deref() {
        Some("-") => {
            let mut text = String::new();
            std::io::Read::read_to_string(
                &mut std::io::Read::take(std::io::stdin(), 1 << 20),
                &mut text,
            )
            .context("reading the token from standard input")?;
            let token = text.trim().to_string();
            anyhow::ensure!(!token.is_empty(), "standard input holds no token");
            Some(token)
        }
        other => other.map(str::to_owned),
    };
    let key_sources = if args.offline {
        KeySources::offline()
    } else {
        crate::jwks::Fetcher::new(FetchSettings::default())
            .map(|fetcher| KeySources::new(fetcher, RefreshSettings::default()))
    }
    .context("creating the HTTP client")?;
    let snapshot = match PolicySource::parse(&args.policy) {
        PolicySource::File(path) => explain::load_files(path, key_sources)?,
        PolicySource::Cluster { namespace, name } => explain::single(
            crate::controller::fetch::fetch_policy(&namespace, &name, &key_sources).await?,
        ),
    };
    let request = explain::ExplainRequest {
        token,
        host: args.host,
        path: args.path,
        method: args.method,
        headers: args.headers,
        at: args.at,
        client_certificate: args
            .client_cert
            .map(|path| {
                std::fs::read_to_string(&path)
                    .with_context(|| format!("reading --client-cert {}", path.display()))
            })
            .transpose()?,
        scheme: Some(args.scheme),
    };
    let explanation = explain::explain(&snapshot, &request, args.offline).await?;
    match args.output {
        ExplainOutput::Text => print!("{}", explain::render_text(&explanation)),
        ExplainOutput::Json => println!(
            "{}",
            serde_json::to_string_pretty(&explanation).context("rendering JSON")?
        ),
    }
    Ok(
        if explanation.allowed() || explanation.decision == "answer" {
            0
        } else {
            1
        },
    )
}

/// Reads `--host-delegations` (none: ownership by age alone).
fn load_delegations(path: Option<&std::path::Path>) -> anyhow::Result<Arc<HostDelegations>> {
    Ok(match path {
        Some(path) => Arc::new(HostDelegations::load(path)?),
        None => HostDelegations::none(),
    })
}

fn check_policy(paths: Vec<PathBuf>, delegations: Option<&std::path::Path>) -> anyhow::Result<i32> {
    for path in &paths {
        anyhow::ensure!(path.exists(), "{} does not exist", path.display());
    }
    let sources = KeySources::offline().context("creating the HTTP client")?;
    let settings = SnapshotSettings {
        default_action: DefaultAction::Deny,
        delegations: load_delegations(delegations)?,
    };
    let mut loader = FileLoader::new(paths, sources, settings);
    let (snapshot, report) = loader.reload();
    for problem in &report.problems {
        println!("error: {}: {}", problem.location, problem.message);
    }
    for conflict in &report.conflicts {
        println!("error: policy {}: {conflict}", conflict.policy);
    }
    let mut warnings: Vec<String> = snapshot
        .iter()
        .flat_map(|s| s.policies())
        .flat_map(|p| {
            p.warnings
                .iter()
                .map(move |w| format!("warning: policy {}: {}: {}", p.id, w.field, w.message))
        })
        .collect();
    // Tenants admitted by a condition are known only when their tokens come: say how.
    warnings.extend(snapshot.iter().flat_map(|s| s.policies()).flat_map(|p| {
        p.templates.iter().filter_map(move |t| {
            let admission = t.admission.as_ref()?;
            Some(format!(
                "note: policy {}: {}: tenants of {} for which `{}` is true are admitted when a token first names them (their keys fetched then; at most {} at once{})",
                p.id,
                t.field,
                t.issuer,
                admission.condition.expression.source,
                admission.condition.max_tenants,
                if t.tenants.is_empty() {
                    String::new()
                } else {
                    format!(", besides the listed {}", t.tenants.join(", "))
                }
            ))
        })
    }));
    // A policy on trial enforces nothing: say so, so it is not mistaken for one that does.
    warnings.extend(
        snapshot
            .iter()
            .flat_map(|s| s.policies())
            .filter(|p| p.dry_run)
            .map(|p| format!("note: policy {}: mode: dryRun: it allows every request and records what it would deny", p.id)),
    );
    warnings.sort();
    for warning in &warnings {
        println!("{warning}");
    }
    let mut ids: Vec<String> = snapshot
        .iter()
        .flat_map(|s| s.policies().map(|p| p.id.to_string()))
        .collect();
    ids.sort();
    if report.problems.is_empty() && report.conflicts.is_empty() {
        println!("ok: {} policies ({})", ids.len(), ids.join(", "));
        Ok(0)
    } else {
        println!(
            "{} problem(s); valid policies: {}",
            report.problems.len() + report.conflicts.len(),
            ids.len()
        );
        Ok(1)
    }
}

/// Initializes logging for the command.
pub fn init_logging(cli: &Cli) {
    // The demo prints its own story; its logs would only interleave with it.
    let default_level = match cli.command {
        Command::Demo(_)
        | Command::CheckPolicy { .. }
        | Command::Authorize(_)
        | Command::Explain(_)
        | Command::Crdgen { .. } => "warn",
        Command::Serve(_) => "info",
    };
    telemetry::init(cli.log_format, default_level);
}

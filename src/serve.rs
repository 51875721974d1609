//! `tollgate serve`: wires the policy loader, key sources, the gRPC ext_authz server, health and
//! the admin endpoint, and shuts them down gracefully (in-flight checks drain on SIGTERM).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::admin;
use crate::authz::AuthzService;
use crate::controller;
use crate::controller::watch::WatchOptions;
use crate::controller::webhook::{WebhookConfig, spawn_webhook};
use crate::decision_log::{self, DecisionLog};
use crate::http::ForwardAuth;
use crate::jwks::{FetchSettings, Fetcher, KeySources, RefreshSettings};
use crate::metrics::Metrics;
use crate::policy::files::{FileLoader, spawn_watch};
use crate::policy::{DefaultAction, HostDelegations, SharedSnapshot, SnapshotSettings};
use crate::tls::{self, ReloadingTls, TlsFiles};
use crate::verified::{CacheLimits, TokenCache};

/// Where policies come from.
#[derive(Clone, Debug)]
pub enum PolicySource {
    /// YAML files and directories, watched.
    Files(Vec<PathBuf>),
    /// `JwtPolicy` objects in the cluster (KUBECONFIG or the pod's service account).
    Kubernetes(WatchOptions),
}

/// Everything `serve` needs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub source: PolicySource,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub default_action: DefaultAction,
    /// Hosts a cluster operator gave to namespaces (`--host-delegations`).
    pub delegations: Arc<HostDelegations>,
    pub fetch: FetchSettings,
    pub refresh: RefreshSettings,
    /// Rescan interval of policy files, in addition to change notifications.
    pub poll: Duration,
    /// The admission webhook (Kubernetes mode only).
    pub webhook: Option<WebhookConfig>,
    /// The HTTP listener (forward auth on `/auth`, Envoy's HTTP ext_authz), if enabled.
    pub http_addr: Option<SocketAddr>,
    /// The proxies allowed to call the HTTP listener, and the family of headers each
    /// sends to describe the request.
    pub trusted_proxies: Vec<(ipnet::IpNet, crate::http::Family)>,
    /// The proxies trusted to forward the client's certificate in a header, and which header.
    pub client_cert_proxies: Vec<(ipnet::IpNet, crate::http::CertHeader)>,
    /// How long an HTTP client may take to send a request head (or leave a connection idle).
    pub http_header_timeout: Duration,
    /// The path prefix Envoy's HTTP ext_authz puts before the original path (family `envoy`).
    pub ext_authz_path_prefix: crate::http::PathPrefix,
    /// Bounds of the verified-token cache (`max_entries: 0` turns it off).
    pub token_cache: CacheLimits,
    /// TLS (and, with a client CA, mutual TLS) on the gRPC listener.
    pub grpc_tls: Option<TlsFiles>,
    /// After SIGTERM, how long in-flight checks and open connections get to finish.
    pub drain_timeout: Duration,
    /// The decision log (`--decision-log`; off by default).
    pub decision_log: decision_log::Settings,
    /// OpenTelemetry traces (`OTEL_TRACES_EXPORTER=otlp`); `None`: off.
    pub tracing: Option<crate::otel::Settings>,
}

/// The addresses actually bound (port 0 resolved).
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// The admission webhook (Kubernetes mode with `--webhook-addr`).
    pub webhook: Option<SocketAddr>,
    /// The HTTP listener (`--http-addr`).
    pub http: Option<SocketAddr>,
}

/// Connections the kernel completes for a listener before tollgate accepts them. A proxy
/// opens new connections in bursts when its kept-alive ones are all busy (nginx beyond its
/// `keepalive`): with tokio's default of 1,024 the queue overflowed in the peers benchmark,
/// the kernel dropped the SYNs, and nginx's connects timed out (a 500 for the client). The
/// kernel caps it at `net.core.somaxconn` (4,096 by default since Linux 5.4).
pub const LISTEN_BACKLOG: u32 = 8192;

/// Binds a request listener (gRPC, HTTP forward auth) with [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Streams one gRPC connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// Largest HTTP/2 header block a gRPC client may send (the Check itself travels in the body,
/// bounded by the decoding limit of the service).
const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

type BoxedServer =
    std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// Runs until `shutdown` resolves. `on_bound` is called once the listeners are bound.
pub async fn run(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(Bound, Arc<SharedSnapshot>),
) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.webhook.is_none() || matches!(config.source, PolicySource::Kubernetes(_)),
        "the admission webhook runs in Kubernetes mode only"
    );
    if let PolicySource::Files(paths) = &config.source {
        for path in paths {
            anyhow::ensure!(
                path.exists(),
                "policy path {} does not exist",
                path.display()
            );
        }
    }
    let kube_client = match &config.source {
        PolicySource::Kubernetes(_) => Some(kube::Client::try_default().await.context(
            "connecting to Kubernetes (set KUBECONFIG, or run in a pod with a service account)",
        )?),
        PolicySource::Files(_) => None,
    };
    let grpc_tls = match &config.grpc_tls {
        Some(files) => Some(
            ReloadingTls::start(files.clone(), &[b"h2"], "grpc")
                .context("loading the gRPC TLS files")?,
        ),
        None => None,
    };
    let tracing = match &config.tracing {
        Some(settings) => {
            let tracing = crate::otel::Tracing::start(settings)
                .context("starting the OpenTelemetry trace exporter")?;
            tracing::info!(protocol = ?settings.protocol, sampler = ?settings.sampler, "exporting traces over OTLP");
            Some(tracing)
        }
        None => None,
    };
    let fetcher = Fetcher::new(config.fetch.clone()).context("creating the HTTP client")?;
    let sources = KeySources::new(fetcher, config.refresh.clone());
    let token_cache = TokenCache::new(config.token_cache);
    let metrics = Metrics::new(Some(sources.clone()), token_cache.clone());
    let shared = SharedSnapshot::with_cache(config.default_action, token_cache);
    let (decision_log, log_writer) =
        match DecisionLog::spawn(&config.decision_log, metrics.decision_log.clone())
            .context("starting the decision log")?
        {
            Some((log, writer)) => (log, Some(writer)),
            None => (DecisionLog::default(), None),
        };
    if let Some(writer) = &log_writer {
        let settings = &config.decision_log;
        tracing::info!(
            output = ?settings.output,
            sample_allow = settings.sample_allow,
            sample_deny = settings.sample_deny,
            limit = settings.limit,
            subject = ?settings.subject,
            "decision log on"
        );
        if matches!(settings.output, decision_log::Output::File(_)) {
            spawn_reopen_on_hangup(writer.reopener());
        }
    }

    let grpc_listener = bind(config.grpc_addr)
        .with_context(|| format!("binding the gRPC address {}", config.grpc_addr))?;
    let admin_listener = TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("binding the admin address {}", config.admin_addr))?;
    let http_listener = match config.http_addr {
        Some(addr) => Some(
            bind(addr).with_context(|| format!("binding the HTTP forward-auth address {addr}"))?,
        ),
        None => None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let stopping_health = health_reporter.clone();
    tokio::spawn(async move {
        shutdown.await;
        // Health checkers (Envoy's, the kubelet's gRPC probe) stop sending new work first.
        set_health(&stopping_health, tonic_health::ServingStatus::NotServing).await;
        let _ = stop_tx.send(true);
    });

    let settings = SnapshotSettings {
        default_action: config.default_action,
        delegations: config.delegations.clone(),
    };
    let mut webhook = None;
    let mut farewell = None;
    let watch = match (&config.source, kube_client) {
        (PolicySource::Kubernetes(options), Some(client)) => {
            let ((index, views), goodbye) = controller::watch::spawn_kubernetes(
                client,
                options,
                sources.clone(),
                settings.clone(),
                shared.clone(),
                stop_rx.clone(),
            );
            farewell = Some(goodbye);
            spawn_policy_gauges(metrics.clone(), views.clone(), shared.subscribe());
            if let Some(webhook_config) = config.webhook.clone() {
                webhook = Some(
                    spawn_webhook(webhook_config, views, metrics.clone(), stop_rx.clone()).await?,
                );
            }
            index.abort_handle()
        }
        (PolicySource::Files(paths), _) => {
            let reload_metrics = metrics.clone();
            let loader = FileLoader::new(paths.clone(), sources.clone(), settings.clone());
            spawn_watch(loader, shared.clone(), config.poll, move |report| {
                if report.changed {
                    reload_metrics.reloaded(
                        report.policies,
                        report.problems.len() + report.conflicts.len(),
                        report.duration,
                    );
                }
            })
            .abort_handle()
        }
        (PolicySource::Kubernetes(_), None) => unreachable_no_client(),
    };
    let bound = Bound {
        grpc: grpc_listener.local_addr()?,
        admin: admin_listener.local_addr()?,
        webhook,
        http: http_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?,
    };
    let optional = |addr: Option<SocketAddr>| addr.map(|a| a.to_string());
    tracing::info!(
        grpc = %bound.grpc,
        admin = %bound.admin,
        webhook = optional(bound.webhook),
        http = optional(bound.http),
        "listening"
    );
    if bound.http.is_some() {
        let families: Vec<String> = config
            .trusted_proxies
            .iter()
            .map(|(net, family)| format!("{net}={family}"))
            .collect();
        let envoy = config
            .trusted_proxies
            .iter()
            .any(|(_, family)| *family == crate::http::Family::Envoy);
        let cert_proxies: Vec<String> = config
            .client_cert_proxies
            .iter()
            .map(|(net, header)| format!("{net}={}", header.name()))
            .collect();
        tracing::info!(
            trusted_proxies = families.join(","),
            client_cert_proxies = cert_proxies.join(","),
            ext_authz_path_prefix = envoy.then(|| config.ext_authz_path_prefix.to_string()),
            "HTTP authorization: the header family of each trusted network"
        );
    }

    set_health(&health_reporter, tonic_health::ServingStatus::NotServing).await;
    tokio::spawn(become_ready(
        shared.clone(),
        sources.clone(),
        health_reporter,
    ));

    on_bound(bound, shared.clone());

    let wait_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let service = AuthzService::new(shared.clone(), metrics.clone())
        .with_decision_log(decision_log.clone())
        .with_tracing(tracing.clone());
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // Bounds per connection: streams at once, header block size, and RST floods.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_max_header_list_size(Some(MAX_HEADER_LIST_BYTES))
        .http2_max_pending_accept_reset_streams(Some(100))
        .add_service(health_service)
        .add_service(service.into_server());
    let grpc: BoxedServer = match grpc_tls {
        Some(tls) => {
            tracing::info!(mutual = tls.mutual(), "gRPC listener uses TLS");
            let incoming =
                tls::incoming(grpc_listener, tls, "grpc", metrics.clone(), stop_rx.clone());
            Box::pin(router.serve_with_incoming_shutdown(incoming, wait_stop(stop_rx.clone())))
        }
        None => Box::pin(router.serve_with_incoming_shutdown(
            // Without TCP_NODELAY, small Check answers wait on delayed ACKs (tens of ms).
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            wait_stop(stop_rx.clone()),
        )),
    };
    let grpc = async { grpc.await.map_err(anyhow::Error::from) };
    let http = http_listener.map(|listener| {
        let app = ForwardAuth::new(
            shared.clone(),
            metrics.clone(),
            config.trusted_proxies.clone(),
            config.ext_authz_path_prefix.clone(),
        )
        .with_client_cert_proxies(config.client_cert_proxies.clone())
        .with_decision_log(decision_log.clone())
        .with_tracing(tracing.clone())
        .router();
        crate::http::listener::serve(listener, app, config.http_header_timeout, stop_rx.clone())
    });
    let admin = axum::serve(admin_listener, admin::router(shared, metrics))
        .with_graceful_shutdown(wait_stop(stop_rx.clone()));

    let servers = async {
        // The forward-auth listener handles its own connection errors; it ends without one.
        let (grpc, admin, ()) = tokio::join!(grpc, async { admin.await }, async {
            if let Some(server) = http {
                server.await;
            }
        });
        (grpc, admin)
    };
    // After the stop signal, the servers refuse new connections and finish what is in flight;
    // past the drain timeout, whatever is left is cut.
    let drain_deadline = async {
        wait_stop(stop_rx.clone()).await;
        tokio::time::sleep(config.drain_timeout).await;
    };
    let (grpc_result, admin_result) = tokio::select! {
        results = servers => results,
        () = drain_deadline => {
            tracing::warn!(drain_timeout = ?config.drain_timeout,
                "drain timeout reached: closing the connections still open");
            (Ok(()), Ok(()))
        }
    };
    // The checks are done: what the decision log holds is written and flushed.
    if let Some(writer) = log_writer
        && !writer.close(Duration::from_secs(5)).await
    {
        tracing::warn!(
            "the decision log writer did not finish within 5s: its last records are lost"
        );
    }
    watch.abort();
    if let Some(farewell) = farewell {
        // The status Lease is released and the heartbeat marked as ending (bounded waits).
        let _ = tokio::time::timeout(Duration::from_secs(5), farewell).await;
    }
    if let Some(tracing) = &tracing {
        // The spans of the drained checks are exported before the process ends.
        tracing.shutdown().await;
    }
    grpc_result.context("gRPC server")?;
    admin_result.context("admin server")?;
    tracing::info!("stopped");
    Ok(())
}

/// Marks the service ready once the first snapshot is published and every key source it uses
/// has finished its first fetch (successfully or visibly failed).
async fn become_ready(
    shared: Arc<SharedSnapshot>,
    sources: Arc<KeySources>,
    health: tonic_health::server::HealthReporter,
) {
    let mut changes = shared.subscribe();
    if changes
        .wait_for(|generation| *generation >= 1)
        .await
        .is_err()
    {
        return;
    }
    for source in sources.live() {
        source.wait_attempted().await;
    }
    shared.set_ready();
    set_health(&health, tonic_health::ServingStatus::Serving).await;
    let snapshot = shared.load();
    tracing::info!(policies = snapshot.len(), "ready");
}

/// Sets the grpc.health.v1 status of the ext_authz service and of the server as a whole ("").
async fn set_health(
    reporter: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
    for service in ["envoy.service.auth.v3.Authorization", ""] {
        reporter.set_service_status(service, status).await;
    }
}

/// Keeps the policy gauges current in Kubernetes mode: served policies (and the generation of
/// each), and objects whose current generation does not compile or loses a host/path conflict;
/// counts each published snapshot as a reload.
fn spawn_policy_gauges(
    metrics: Arc<Metrics>,
    mut views: tokio::sync::watch::Receiver<Arc<controller::index::IndexView>>,
    mut published: tokio::sync::watch::Receiver<u64>,
) {
    let problems = |view: &controller::index::IndexView| {
        view.policies
            .iter()
            .filter(|p| p.error.is_some() || p.conflict.is_some())
            .count()
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = views.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let view = views.borrow_and_update().clone();
                    let served = view
                        .policies
                        .iter()
                        .filter(|p| p.serving_generation.is_some())
                        .count();
                    metrics.set_policies(served, problems(&view));
                    metrics.set_served(view.loaded());
                }
                changed = published.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // The index sends its view before it publishes: the view is current.
                    published.borrow_and_update();
                    metrics.published(problems(&views.borrow()));
                }
            }
        }
    });
}

fn unreachable_no_client() -> ! {
    panic!("invariant: a Kubernetes client is created for the Kubernetes source")
}

/// Reopens the decision log file on each SIGHUP (after log rotation moved it away).
fn spawn_reopen_on_hangup(reopen: decision_log::Reopen) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!(
                "cannot listen for SIGHUP: the decision log is reopened only when its file is moved"
            );
            return;
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reopening the decision log");
            reopen.reopen();
        }
    });
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down: draining in-flight checks");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// More connections than tokio's default backlog (1,024) complete while nothing accepts
    /// them: a burst of new proxy connections waits in the queue instead of losing its SYNs.
    #[tokio::test]
    async fn a_burst_of_connections_waits_for_accept() {
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(4096);
        let burst = 1_200.min(somaxconn);
        let listener = super::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connected = tokio::task::spawn_blocking(move || {
            let mut open = Vec::with_capacity(burst);
            for n in 0..burst {
                match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                    Ok(stream) => open.push(stream),
                    Err(e) => return Err(format!("connection {n} of {burst}: {e}")),
                }
            }
            Ok(open.len())
        })
        .await
        .expect("task");
        assert_eq!(connected, Ok(burst));
        drop(listener);
    }
}

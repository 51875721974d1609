//! The validating admission webhook's HTTPS endpoint: `POST /validate-jwtpolicy` answers
//! `AdmissionReview`s with [`super::admission::review`] against this replica's current view.
//!
//! The certificate comes from files (a cert-manager Certificate, or the one the Helm chart
//! generates) and is re-read when the files change ([`crate::tls`]), so rotation needs no
//! restart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::api::DynamicObject;
use kube::core::admission::AdmissionReview;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt as _;

use super::admission;
use super::index::IndexView;
use crate::jwks::KeySources;
use crate::metrics::Metrics;
use crate::tls::{self, ReloadingTls, TlsFiles};

/// Where the webhook listens and its certificate files (PEM).
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub addr: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone)]
struct WebhookState {
    views: watch::Receiver<Arc<IndexView>>,
    key_sources: Arc<KeySources>,
}

async fn validate(
    State(state): State<WebhookState>,
    axum::Json(request): axum::Json<AdmissionReview<DynamicObject>>,
) -> axum::Json<AdmissionReview<DynamicObject>> {
    let view = state.views.borrow().clone();
    let response = admission::review(request, &view, &state.key_sources);
    if let Some(r) = &response.response
        && !r.allowed
    {
        tracing::info!(uid = %r.uid, reason = %r.result.message, "admission denied");
    }
    axum::Json(response)
}

/// Binds the webhook and serves it until `shutdown` resolves. Returns the bound address.
pub async fn spawn_webhook(
    config: WebhookConfig,
    views: watch::Receiver<Arc<IndexView>>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    let tls = ReloadingTls::start(
        TlsFiles {
            cert: config.cert.clone(),
            key: config.key.clone(),
            client_ca: None,
        },
        &[b"h2", b"http/1.1"],
        "webhook",
    )?;
    let listener = TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding the webhook address {}", config.addr))?;
    let bound = listener.local_addr()?;
    let key_sources = KeySources::offline().context("creating the admission key registry")?;
    let app = Router::new()
        .route("/validate-jwtpolicy", post(validate))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(WebhookState { views, key_sources });

    // Handshakes bounded in number and time, as on the gRPC listener.
    let mut connections = tls::incoming(listener, tls, "webhook", metrics, shutdown);
    tokio::spawn(async move {
        while let Some(Ok(connection)) = connections.next().await {
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(connection), service)
                    .await;
            });
        }
    });
    tracing::info!(webhook = %bound, "admission webhook listening");
    Ok(bound)
}

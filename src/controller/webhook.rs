//! The validating admission webhook's HTTPS endpoint: `POST /validate-jwtpolicy` answers
//! `AdmissionReview`s with [`super::admission::review`] against this replica's current view.
//!
//! The certificate comes from files (a cert-manager Certificate, or the one the Helm chart
//! generates) and is re-read when the files change, so rotation needs no restart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::api::DynamicObject;
use kube::core::admission::AdmissionReview;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::admission;
use super::index::IndexView;
use crate::jwks::KeySources;

/// Where the webhook listens and its certificate files (PEM).
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub addr: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Serves the certificate from files, reloading it when they change.
#[derive(Debug)]
struct ReloadingCert {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn load(config: &WebhookConfig) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert)
        .with_context(|| format!("reading {}", config.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", config.cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "{} holds no certificate",
        config.cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .with_context(|| format!("reading {}", config.key.display()))?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .context("unsupported private key")?;
    Ok(CertifiedKey::new(chain, signing))
}

fn modified(config: &WebhookConfig) -> Option<(SystemTime, SystemTime)> {
    let cert = std::fs::metadata(&config.cert)
        .and_then(|m| m.modified())
        .ok()?;
    let key = std::fs::metadata(&config.key)
        .and_then(|m| m.modified())
        .ok()?;
    Some((cert, key))
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
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    let resolver = Arc::new(ReloadingCert {
        current: ArcSwap::from_pointee(load(&config)?),
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_no_client_auth()
    .with_cert_resolver(resolver.clone());
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding the webhook address {}", config.addr))?;
    let bound = listener.local_addr()?;
    let key_sources = KeySources::offline().context("creating the admission key registry")?;
    let app = Router::new()
        .route("/validate-jwtpolicy", post(validate))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(WebhookState { views, key_sources });

    // Certificate rotation.
    let reload_config = config.clone();
    tokio::spawn(async move {
        let mut seen = modified(&reload_config);
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let now = modified(&reload_config);
            if now.is_some() && now != seen {
                match load(&reload_config) {
                    Ok(key) => {
                        resolver.current.store(Arc::new(key));
                        tracing::info!("webhook certificate reloaded");
                        seen = now;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "webhook certificate changed but does not load; keeping the old one")
                    }
                }
            }
        }
    });

    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            let Ok((stream, _)) = accepted else { continue };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(tls) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
                else {
                    return;
                };
                let Ok(tls) = tls else { return };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    tracing::info!(webhook = %bound, "admission webhook listening");
    Ok(bound)
}

//! A small OpenID provider on 127.0.0.1 serving discovery and a JWKS, for the demo and tests.
//! It can rotate keys, answer 503 ("down"), or stop, and counts the fetches it served.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

#[derive(Default)]
struct IdpState {
    base: String,
    issuer: RwLock<String>,
    jwks: RwLock<Value>,
    up: AtomicBool,
    cache_control: RwLock<Option<String>>,
    jwks_fetches: AtomicU64,
}

/// A running local identity provider.
pub struct IdpServer {
    addr: SocketAddr,
    state: Arc<IdpState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl IdpServer {
    /// Starts on `addr` (use `127.0.0.1:0` for any free port) serving `jwks`.
    pub async fn start(addr: SocketAddr, jwks: Value) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(IdpState {
            base: format!("http://{addr}"),
            ..IdpState::default()
        });
        *state.issuer.write().unwrap_or_else(|p| p.into_inner()) = format!("http://{addr}");
        *state.jwks.write().unwrap_or_else(|p| p.into_inner()) = jwks;
        state.up.store(true, Ordering::SeqCst);
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks_handler))
            .with_state(state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(IdpServer {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The issuer identifier (`http://127.0.0.1:<port>`), also the discovery base.
    pub fn issuer(&self) -> String {
        self.state
            .issuer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes discovery announce another issuer (to test the issuer check).
    pub fn set_announced_issuer(&self, issuer: &str) {
        *self.state.issuer.write().unwrap_or_else(|p| p.into_inner()) = issuer.to_string();
    }

    /// Replaces the published key set (key rotation).
    pub fn set_jwks(&self, jwks: Value) {
        *self.state.jwks.write().unwrap_or_else(|p| p.into_inner()) = jwks;
    }

    /// `false`: every request answers 503.
    pub fn set_up(&self, up: bool) {
        self.state.up.store(up, Ordering::SeqCst);
    }

    /// A `Cache-Control` header for JWKS responses.
    pub fn set_cache_control(&self, value: Option<&str>) {
        *self
            .state
            .cache_control
            .write()
            .unwrap_or_else(|p| p.into_inner()) = value.map(str::to_owned);
    }

    /// How many JWKS requests were answered.
    pub fn jwks_fetches(&self) -> u64 {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Stops the server and waits until the port is closed.
    pub async fn stop(mut self) {
        self.stop_inner().await;
    }

    async fn stop_inner(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // Open keep-alive connections could hold graceful shutdown: do not wait forever.
            let abort = task.abort_handle();
            if tokio::time::timeout(std::time::Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for IdpServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn discovery(State(state): State<Arc<IdpState>>) -> Response {
    if !state.up.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let issuer = state
        .issuer
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    axum::Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{}/jwks", state.base),
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
    }))
    .into_response()
}

async fn jwks_handler(State(state): State<Arc<IdpState>>) -> Response {
    if !state.up.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let body = state.jwks.read().unwrap_or_else(|p| p.into_inner()).clone();
    let cache = state
        .cache_control
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut response = axum::Json(body).into_response();
    if let Some(cache) = cache
        && let Ok(value) = cache.parse()
    {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    response
}

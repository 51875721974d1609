//! The admin HTTP endpoint: `/healthz` (the process runs), `/readyz` (policies loaded and their
//! key sets fetched once), `/metrics` (Prometheus / OpenMetrics text).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::policy::SharedSnapshot;

#[derive(Clone)]
struct AdminState {
    shared: Arc<SharedSnapshot>,
    metrics: Arc<Metrics>,
}

/// The admin router.
pub fn router(shared: Arc<SharedSnapshot>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState { shared, metrics })
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let snapshot = state.shared.load();
    if state.shared.is_ready() {
        (
            StatusCode::OK,
            format!(
                "ready: {} policies, generation {}\n",
                snapshot.len(),
                snapshot.generation
            ),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: loading policies and fetching their keys\n".to_string(),
        )
    }
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

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

/// Ready once the first policies are loaded; a source that fails afterwards (the API server
/// away, a permission withdrawn) keeps the replica ready on its last good policies, and the
/// answer names the problem either way.
async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let snapshot = state.shared.load();
    let mut problems = String::new();
    for (source, ago, problem) in state.shared.source_problems() {
        problems.push_str(&format!(
            "{source}: failed {}s ago: {problem}\n",
            ago.as_secs()
        ));
    }
    if state.shared.is_ready() {
        let serving = format!(
            "ready: {} policies, generation {}\n",
            snapshot.len(),
            snapshot.generation
        );
        if problems.is_empty() {
            (StatusCode::OK, serving)
        } else {
            (
                StatusCode::OK,
                format!("{serving}serving the last good policies; failing sources:\n{problems}"),
            )
        }
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: loading policies and fetching their keys\n{problems}"),
        )
    }
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    state.metrics.set_ready(state.shared.is_ready());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

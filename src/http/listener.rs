//! The forward-auth listener: HTTP/1.1 connections with bounds a proxy never hits and a slow
//! client always does. A request head must arrive within the header timeout (default
//! [`HEADER_READ_TIMEOUT`]; a client trickling bytes cannot hold a connection open), it is
//! limited in size (hyper answers 431 past it), and on shutdown every connection finishes its
//! request and closes.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt as _;

/// How long a client may take to send a request's head (line and headers), by default.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The most bytes of a request head hyper buffers.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves `app` on `listener` until `stop`; then lets open connections finish their request.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small answers: do not wait on delayed ACKs.
        let _ = tcp.set_nodelay(true);
        let service = app
            .clone()
            .map_request(move |mut request: http::Request<Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                request.map(axum::body::Body::new)
            });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(MAX_HEAD_BYTES);
        let connection = builder
            .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

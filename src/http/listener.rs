//! The HTTP listener: HTTP/1.1 connections with bounds a proxy never hits and a slow client
//! always does. Only HTTP/1.1: the proxies that call it (nginx, Traefik, and Envoy's HTTP
//! ext_authz with its cluster's default protocol) speak it, and HTTP/2 (h2c) has no equivalent
//! of the header timeout below, so an h2c connection preface is answered as a malformed HTTP/1
//! request and the connection closed. A request head must arrive within the header timeout
//! (default [`HEADER_READ_TIMEOUT`]; a client trickling bytes cannot hold a connection open, and
//! a kept-alive connection idle that long is closed), it is limited in size (hyper answers 431
//! past it), and on shutdown every connection finishes its request and closes.

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
        let mut builder =
            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
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

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    /// An h2c client gets no HTTP/2 connection (which the header timeout could not bound): the
    /// preface is a bad HTTP/1 request and the connection is closed at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn h2c_is_not_served() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = watch::channel(false);
        let app = Router::new().route("/auth", axum::routing::get(|| async { "ok" }));
        let server = tokio::spawn(serve(listener, app, Duration::from_secs(10), stop_rx));
        let exchange = move |bytes: &'static [u8]| {
            tokio::task::spawn_blocking(move || {
                let mut stream = std::net::TcpStream::connect(addr).expect("connect");
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                stream.write_all(bytes).expect("write");
                let started = std::time::Instant::now();
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
                (answer, started.elapsed())
            })
        };
        // The h2c prior-knowledge preface and an empty SETTINGS frame.
        let (answer, took) =
            exchange(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                .await
                .expect("task");
        assert!(
            answer.is_empty()
                || answer.starts_with(b"HTTP/1.1 4")
                || answer.starts_with(b"HTTP/1.1 5"),
            "an HTTP/2 answer: {answer:?}"
        );
        assert!(
            took < Duration::from_secs(4),
            "the connection was held {took:?}"
        );
        // HTTP/1.1 is served as before.
        let (answer, _) = exchange(b"GET /auth HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .expect("task");
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        let _ = stop_tx.send(true);
        server.await.expect("server stops");
    }
}

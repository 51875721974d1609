//! Server-side TLS from PEM files: the certificate chain, its key and, for mutual TLS, the CA
//! bundle client certificates must chain to.
//!
//! The files are re-read when they change (a cert-manager or Helm-generated Secret is rotated in
//! place), so rotation needs no restart. A change that does not load keeps the previous
//! configuration and says why in the log. Each accepted connection uses the configuration current
//! at its handshake.
//!
//! [`incoming`] turns a TCP listener into a stream of TLS connections (for the gRPC server and
//! the admission webhook): handshakes run on their own tasks, bounded in number and in time, so
//! a slow or silent client cannot stall the accept loop.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait to be accepted.
const MAX_HANDSHAKES: usize = 256;
/// How often the files are checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// The PEM files a TLS listener is configured from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates that client certificates must chain to. When set, a client without a
    /// valid certificate is refused during the handshake (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.cert, &self.key]
            .into_iter()
            .chain(self.client_ca.as_ref())
    }

    fn modified(&self) -> Option<Vec<SystemTime>> {
        self.paths()
            .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
            .collect()
    }
}

/// A TLS server configuration kept current with its files.
#[derive(Debug)]
pub struct ReloadingTls {
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    current: ArcSwap<rustls::ServerConfig>,
    /// Modification times of the files the current configuration was built from.
    seen: Mutex<Option<Vec<SystemTime>>>,
}

impl ReloadingTls {
    /// Loads the files now (an error names the file and what is wrong with it) and starts
    /// watching them. `alpn` lists the protocols offered, most preferred first.
    pub fn start(files: TlsFiles, alpn: &[&[u8]], what: &'static str) -> anyhow::Result<Arc<Self>> {
        let tls = Arc::new(Self::load(files, alpn)?);
        spawn_reload(Arc::downgrade(&tls), what);
        Ok(tls)
    }

    fn load(files: TlsFiles, alpn: &[&[u8]]) -> anyhow::Result<Self> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let seen = files.modified();
        let config = build(&files, &alpn)?;
        Ok(ReloadingTls {
            files,
            alpn,
            current: ArcSwap::from_pointee(config),
            seen: Mutex::new(seen),
        })
    }

    /// Rebuilds the configuration if a file changed since the last load. `Ok(true)`: reloaded;
    /// an error leaves the previous configuration in place (and is retried at the next change).
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        let now = self.files.modified();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if now.is_none() || now == *seen {
            return Ok(false);
        }
        // Remember the attempt either way: a broken file is reported once, not every tick.
        *seen = now;
        let config = build(&self.files, &self.alpn)?;
        self.current.store(Arc::new(config));
        Ok(true)
    }

    /// An acceptor with the current configuration.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Whether client certificates are required.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }
}

fn certificates(path: &PathBuf) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
    Ok(certs)
}

fn build(files: &TlsFiles, alpn: &[Vec<u8>]) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading the private key {}", files.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca)? {
                roots
                    .add(cert)
                    .with_context(|| format!("{}: not a usable CA certificate", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .with_context(|| format!("client CA {}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).with_context(|| {
        format!(
            "{} and {} do not form a usable certificate and key",
            files.cert.display(),
            files.key.display()
        )
    })?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}

fn spawn_reload(tls: Weak<ReloadingTls>, what: &'static str) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RELOAD_INTERVAL).await;
            let Some(tls) = tls.upgrade() else { return };
            match tls.reload_if_changed() {
                Ok(true) => tracing::info!(listener = what, "TLS certificate reloaded"),
                Ok(false) => {}
                Err(error) => tracing::warn!(listener = what, error = %format!("{error:#}"),
                    "TLS files changed but do not load; keeping the previous certificate"),
            }
        }
    });
}

/// One accepted TLS connection, for tonic.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
}

/// What a request learns about its connection.
#[derive(Clone, Debug)]
pub struct TlsConnectInfo {
    pub remote_addr: Option<std::net::SocketAddr>,
    /// Whether the client presented a certificate that chains to the client CA.
    pub client_verified: bool,
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> TlsConnectInfo {
        let (tcp, session) = self.stream.get_ref();
        TlsConnectInfo {
            remote_addr: tcp.peer_addr().ok(),
            client_verified: session.peer_certificates().is_some_and(|c| !c.is_empty()),
        }
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts TCP connections on `listener` until `stop`, completes their TLS handshakes and
/// yields them. Failed handshakes (no client certificate under mutual TLS, an untrusted one,
/// a timeout) are logged and dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    name: &'static str,
    metrics: Arc<crate::metrics::Metrics>,
    mut stop: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<TlsConnection>> {
    let (tx, rx) = mpsc::channel(64);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.wait_for(|stop| *stop) => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(listener = name, %error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Without TCP_NODELAY, small Check answers wait on delayed ACKs (tens of ms).
            let _ = tcp.set_nodelay(true);
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(permit);
                match handshake {
                    Ok(Ok(stream)) => {
                        metrics.tls_handshake(name, "ok");
                        let _ = tx.send(Ok(TlsConnection { stream })).await;
                    }
                    Ok(Err(error)) => {
                        metrics.tls_handshake(name, "refused");
                        if let Some(suppressed_before) = crate::telemetry::admit_connection_line() {
                            tracing::info!(listener = name, %peer, %error, suppressed_before, "TLS handshake refused");
                        }
                    }
                    Err(_) => {
                        metrics.tls_handshake(name, "timeout");
                        if let Some(suppressed_before) = crate::telemetry::admit_connection_line() {
                            tracing::info!(listener = name, %peer, suppressed_before, "TLS handshake timed out");
                        }
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests;

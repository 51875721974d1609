use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::ServerName;

use super::*;

/// Writes a self-signed certificate for `name` as `cert.pem`/`key.pem`, stamped `mtime`, and
/// returns it (DER) for the client to trust.
fn write_cert(dir: &Path, name: &str, mtime: SystemTime) -> CertificateDer<'static> {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    for (file, pem) in [("cert.pem", cert.pem()), ("key.pem", key.serialize_pem())] {
        let path = dir.join(file);
        std::fs::write(&path, pem).expect("write");
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(mtime))
            .expect("mtime");
    }
    cert.der().clone()
}

fn files(dir: &Path) -> TlsFiles {
    TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        client_ca: None,
    }
}

/// Whether a client trusting `roots` completes a handshake for `name` with `tls`.
async fn handshake(tls: &ReloadingTls, roots: &[CertificateDer<'static>], name: &str) -> bool {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(store)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let (client, server) = tokio::io::duplex(64 * 1024);
    let acceptor = tls.acceptor();
    let server = tokio::spawn(async move { acceptor.accept(server).await.is_ok() });
    let name = ServerName::try_from(name.to_string()).expect("name");
    // The client's stream stays open until the server is done: a TLS 1.3 server still writes
    // (session tickets) after the client considers the handshake complete.
    let client = connector.connect(name, client).await;
    let client_ok = client.is_ok();
    let server_ok = server.await.unwrap_or(false);
    drop(client);
    client_ok && server_ok
}

#[tokio::test]
async fn a_rotated_certificate_is_served_and_a_broken_one_keeps_the_last() {
    let dir = tempfile::tempdir().expect("dir");
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let first = write_cert(dir.path(), "a.example", t0);
    let tls = ReloadingTls::load(files(dir.path()), &[b"h2"]).expect("load");
    assert!(!tls.reload_if_changed().expect("unchanged"));

    let second = write_cert(dir.path(), "b.example", t0 + Duration::from_secs(60));
    let roots = [first, second];
    assert!(handshake(&tls, &roots, "a.example").await);
    assert!(!handshake(&tls, &roots, "b.example").await);
    assert!(tls.reload_if_changed().expect("reloads"));
    assert!(handshake(&tls, &roots, "b.example").await);
    assert!(!handshake(&tls, &roots, "a.example").await);

    // A half-written rotation: the previous certificate stays, the error names the file.
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").expect("write");
    let error = tls.reload_if_changed().expect_err("broken");
    assert!(format!("{error:#}").contains("cert.pem"), "{error:#}");
    assert!(handshake(&tls, &roots, "b.example").await);
    // Reported once, not at every tick.
    assert!(!tls.reload_if_changed().expect("same broken files"));
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("dir");
    let t0 = SystemTime::now();
    write_cert(dir.path(), "a.example", t0);
    let other = rcgen::KeyPair::generate().expect("key");
    std::fs::write(dir.path().join("key.pem"), other.serialize_pem()).expect("write");
    let error = ReloadingTls::load(files(dir.path()), &[b"h2"]).expect_err("mismatch");
    assert!(
        format!("{error:#}").contains("do not form a usable certificate and key"),
        "{error:#}"
    );
}

#[test]
fn a_client_ca_without_certificates_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    write_cert(dir.path(), "a.example", SystemTime::now());
    std::fs::write(dir.path().join("ca.pem"), "").expect("write");
    let mut files = files(dir.path());
    files.client_ca = Some(dir.path().join("ca.pem"));
    let error = ReloadingTls::load(files, &[b"h2"]).expect_err("empty CA");
    assert!(
        format!("{error:#}").contains("ca.pem holds no certificate"),
        "{error:#}"
    );
}

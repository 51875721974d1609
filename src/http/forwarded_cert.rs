//! The client certificate a proxy that terminated mutual TLS forwards in a header, read only
//! from the proxies trusted to set it (`--client-cert-proxies`).
//!
//! ```text
//! client ══mTLS══► proxy (terminates TLS, sets the header) ── forward auth ──► tollgate
//!   x-forwarded-client-cert: Hash=…;Cert="<URL-encoded PEM>";Subject="…"   (Envoy's XFCC, nginx)
//!   client-cert: :<base64 of the DER>:                                     (RFC 9440)
//!   x-forwarded-tls-client-cert: <base64 of the DER>[,<base64 of the DER>…] (Traefik)
//! ```
//!
//! The headers are ordinary request headers: a client can send them, and a proxy passes them
//! on unless it strips or overwrites them. So a header is believed only from an address in
//! `--client-cert-proxies`, and only the one header that proxy is declared to set. Anything
//! else carrying any of them is refused (`certificate_untrusted`), never ignored: the
//! upstream may read the header too, and an answer that lets it through would vouch for it.
//! An XFCC value with several elements (a chain of proxies, or a client's element before the
//! proxy's when it appends) is refused too: which one is the client's cannot be known.
//!
//! Traefik's `passTLSClientCert` (`pem: true`) writes every certificate the client sent in its
//! TLS `Certificate` message, in that order, each as its PEM without the BEGIN/END lines and
//! line ends (the base64 of the DER, not URL-escaped), joined with commas (a character base64
//! never holds). The first is the client's own: Go's TLS server verifies `PeerCertificates[0]`
//! against the client CA with the others as intermediates, and the client proved it holds that
//! certificate's key (`CertificateVerify`); the others are intermediates the client chose to
//! send, never read. The header is `Set`, replacing a client's, only when the connection has
//! a client certificate; without one Traefik leaves the request's headers as they are, so the
//! client's own header must be stripped before (Traefik's entrypoints do, unless their
//! `forwardedHeaders` trust the client: docs/security.md).
//!
//! Over Envoy's gRPC `Check` tollgate never reads either header: Envoy reports the connection's
//! own certificate in `attributes.source.certificate` (`include_peer_certificate: true`), and
//! the request headers there are whatever the client sent unless Envoy's
//! `forward_client_cert_details` sanitizes them.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// `x-forwarded-client-cert`.
pub const XFCC: &str = "x-forwarded-client-cert";
/// RFC 9440 `Client-Cert`.
pub const CLIENT_CERT: &str = "client-cert";
/// Traefik's `X-Forwarded-Tls-Client-Cert` (`passTLSClientCert` with `pem: true`).
pub const TRAEFIK_CERT: &str = "x-forwarded-tls-client-cert";

/// The most bytes of a forwarded certificate header that are read (a URL-encoded PEM is
/// about three times its DER; see [`crate::client_cert::MAX_BYTES`]).
const MAX_HEADER_BYTES: usize = 3 * crate::client_cert::MAX_BYTES + 1024;

/// The header a trusted proxy puts the client's certificate in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CertHeader {
    /// `x-forwarded-client-cert` in Envoy's format, with a `Cert` (URL-encoded PEM).
    Xfcc,
    /// RFC 9440 `Client-Cert`: a structured-field byte sequence of the DER.
    ClientCert,
    /// Traefik's `X-Forwarded-Tls-Client-Cert`: the base64 DER of each certificate the client
    /// sent, comma-separated, its own first.
    Traefik,
}

impl CertHeader {
    /// Every header kind: a request carrying any but the one its proxy sets is refused.
    const ALL: [CertHeader; 3] = [
        CertHeader::Xfcc,
        CertHeader::ClientCert,
        CertHeader::Traefik,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CertHeader::Xfcc => XFCC,
            CertHeader::ClientCert => CLIENT_CERT,
            CertHeader::Traefik => TRAEFIK_CERT,
        }
    }
}

/// A `--client-cert-proxies` entry: `CIDR` (the header is `x-forwarded-client-cert`) or
/// `CIDR=xfcc|client-cert|traefik`.
pub fn parse_cert_proxy(text: &str) -> Result<(IpNet, CertHeader), String> {
    let (net, header) = match text.trim().split_once('=') {
        Some((net, header)) => (
            net.trim(),
            match header.trim() {
                "xfcc" => CertHeader::Xfcc,
                "client-cert" => CertHeader::ClientCert,
                "traefik" => CertHeader::Traefik,
                other => {
                    return Err(format!(
                        "{other:?} is not a certificate header (xfcc, client-cert or traefik)"
                    ));
                }
            },
        ),
        None => (text.trim(), CertHeader::Xfcc),
    };
    let net = net
        .parse::<IpNet>()
        .or_else(|_| net.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{net:?} is not an address or a CIDR like 10.0.0.0/8"))?;
    Ok((net.trunc(), header))
}

/// Why a forwarded certificate header is not used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForwardedCertError {
    /// The header came from an address not trusted to set it, or is not the one that proxy
    /// sets, or is ambiguous.
    #[error("{0}")]
    Untrusted(String),
    /// The trusted proxy's header does not have the expected shape.
    #[error("{0}")]
    Malformed(String),
}

/// The client certificate the request's proxy forwards, as text [`ClientCertificate::from_envoy`]
/// reads (URL-encoded PEM, or PEM): `None` when the trusted proxy forwards none. `trusted`
/// is the header `peer` is trusted to set, if any.
///
/// [`ClientCertificate::from_envoy`]: crate::client_cert::ClientCertificate::from_envoy
pub fn forwarded_certificate(
    peer: IpAddr,
    trusted: Option<CertHeader>,
    headers: &HeaderMap,
) -> Result<Option<String>, ForwardedCertError> {
    let present = |h: CertHeader| headers.contains_key(h.name());
    let Some(header) = trusted else {
        return match CertHeader::ALL.into_iter().find(|h| present(*h)) {
            Some(h) => Err(ForwardedCertError::Untrusted(format!(
                "{} from {peer}, which is not in --client-cert-proxies: it may come from the client",
                h.name()
            ))),
            None => Ok(None),
        };
    };
    if let Some(other) = CertHeader::ALL
        .into_iter()
        .find(|h| *h != header && present(*h))
    {
        return Err(ForwardedCertError::Untrusted(format!(
            "{} from {peer}, which sets {} (--client-cert-proxies): it may come from the client",
            other.name(),
            header.name()
        )));
    }
    let mut values = headers.get_all(header.name()).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ForwardedCertError::Untrusted(format!(
            "{} appears more than once: which certificate is the client's cannot be known",
            header.name()
        )));
    }
    if value.len() > MAX_HEADER_BYTES {
        return Err(ForwardedCertError::Malformed(format!(
            "{} is {} bytes long; at most {MAX_HEADER_BYTES} are read",
            header.name(),
            value.len()
        )));
    }
    let value = value.to_str().map_err(|_| {
        ForwardedCertError::Malformed(format!("{} is not visible ASCII", header.name()))
    })?;
    match header {
        CertHeader::Xfcc => xfcc_cert(value).map(Some),
        CertHeader::ClientCert => client_cert(value).map(Some),
        CertHeader::Traefik => traefik_cert(value).map(Some),
    }
}

/// Splits `text` at `separator` outside double quotes (a `\` escapes the next character inside
/// them).
fn split_unquoted(text: &str, separator: u8) -> Result<Vec<&str>, ForwardedCertError> {
    let mut parts = Vec::new();
    let (mut quoted, mut escaped, mut start) = (false, false, 0);
    for (i, b) in text.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ if b == separator && !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err(ForwardedCertError::Malformed(format!(
            "{XFCC} has an unterminated quoted value"
        )));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

/// The `Cert` of the one element of an XFCC value.
fn xfcc_cert(value: &str) -> Result<String, ForwardedCertError> {
    let elements = split_unquoted(value, b',')?;
    if elements.len() != 1 {
        return Err(ForwardedCertError::Untrusted(format!(
            "{XFCC} has {} elements: which certificate is the client's cannot be known",
            elements.len()
        )));
    }
    let mut cert = None;
    for pair in split_unquoted(elements[0], b';')? {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(ForwardedCertError::Malformed(format!(
                "{XFCC}: {:?} is not key=value",
                pair.chars().take(40).collect::<String>()
            )));
        };
        if !key.trim().eq_ignore_ascii_case("cert") {
            continue;
        }
        if cert.is_some() {
            return Err(ForwardedCertError::Malformed(format!(
                "{XFCC} has Cert twice"
            )));
        }
        let value = value.trim();
        let value = match value.strip_prefix('"') {
            Some(rest) => rest.strip_suffix('"').ok_or_else(|| {
                ForwardedCertError::Malformed(format!("{XFCC}: Cert is badly quoted"))
            })?,
            None => value,
        };
        // A URL-encoded PEM has no quote or backslash; an escaped one is not a certificate.
        if value.contains(['"', '\\']) {
            return Err(ForwardedCertError::Malformed(format!(
                "{XFCC}: Cert has quotes or escapes inside"
            )));
        }
        cert = Some(value.to_string());
    }
    match cert {
        Some(cert) if !cert.is_empty() => Ok(cert),
        _ => Err(ForwardedCertError::Malformed(format!(
            "{XFCC} has no Cert: have the proxy forward the certificate itself (Envoy: set_current_client_cert_details.cert: true; nginx: $ssl_client_escaped_cert)"
        ))),
    }
}

/// RFC 9440: `:<base64 of the DER>:`, returned as PEM.
fn client_cert(value: &str) -> Result<String, ForwardedCertError> {
    let body = value
        .trim()
        .strip_prefix(':')
        .and_then(|v| v.strip_suffix(':'))
        .ok_or_else(|| {
            ForwardedCertError::Malformed(format!(
                "{CLIENT_CERT} is not a byte sequence (:base64:)"
            ))
        })?;
    if body.is_empty()
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    {
        return Err(ForwardedCertError::Malformed(format!(
            "{CLIENT_CERT} is not base64"
        )));
    }
    Ok(format!(
        "-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"
    ))
}

/// Traefik: `<base64 DER>[,<base64 DER>…]`, the client's own certificate first; returned as
/// the PEM of that first one. Every element must be base64: a value that is not exactly what
/// Traefik writes is refused, never read in part.
fn traefik_cert(value: &str) -> Result<String, ForwardedCertError> {
    // Padded standard base64, as Go's encoding/pem writes it: `=` only at the end.
    let is_base64 = |element: &str| {
        let body = element.trim_end_matches('=');
        !body.is_empty()
            && element.len().is_multiple_of(4)
            && element.len() - body.len() <= 2
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/'))
    };
    let count = value.split(',').count();
    for (i, element) in value.split(',').enumerate() {
        if !is_base64(element) {
            return Err(ForwardedCertError::Malformed(format!(
                "{TRAEFIK_CERT}: certificate {} of {count} is not base64 (passTLSClientCert with pem: true writes each certificate's base64 DER, comma-separated)",
                i + 1
            )));
        }
    }
    let leaf = value.split_once(',').map_or(value, |(leaf, _)| leaf);
    Ok(format!(
        "-----BEGIN CERTIFICATE-----\n{leaf}\n-----END CERTIFICATE-----\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_cert::ClientCertificate;
    use base64::Engine as _;

    const PROXY: &str = "10.0.0.5";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        map
    }

    fn read(
        trusted: Option<CertHeader>,
        pairs: &[(&str, &str)],
    ) -> Result<Option<String>, ForwardedCertError> {
        forwarded_certificate(PROXY.parse().expect("ip"), trusted, &headers(pairs))
    }

    fn thumbprint(text: &str) -> String {
        ClientCertificate::from_envoy(text)
            .expect("certificate")
            .thumbprint()
    }

    #[test]
    fn trusted_headers_give_the_certificate() {
        let (encoded, digest) = crate::fixtures::client_certificate(&["a.example"]);
        let want = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest);
        let hash: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let xfcc = format!(
            "By=spiffe://proxy.example;Hash={hash};Cert=\"{encoded}\";Subject=\"CN=billing-client,O=Partners\";URI=spiffe://partners.example/billing"
        );
        let got = read(Some(CertHeader::Xfcc), &[(XFCC, &xfcc)])
            .expect("read")
            .expect("some");
        assert_eq!(thumbprint(&got), want);
        // Unquoted too (nginx writes it so).
        let got = read(
            Some(CertHeader::Xfcc),
            &[(XFCC, &format!("Cert={encoded}"))],
        )
        .expect("read")
        .expect("some");
        assert_eq!(thumbprint(&got), want);
        let pem = percent_encoding::percent_decode_str(&encoded)
            .decode_utf8()
            .expect("utf8");
        let der = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>();
        let got = read(
            Some(CertHeader::ClientCert),
            &[(CLIENT_CERT, &format!(":{der}:"))],
        )
        .expect("read")
        .expect("some");
        assert_eq!(thumbprint(&got), want);
        assert_eq!(read(Some(CertHeader::Xfcc), &[]), Ok(None));
        assert_eq!(read(None, &[("authorization", "Bearer x")]), Ok(None));
    }

    #[test]
    fn untrusted_or_ambiguous_headers_are_refused() {
        let (encoded, _) = crate::fixtures::client_certificate(&["a.example"]);
        let one = format!("Cert=\"{encoded}\"");
        let two = format!("{one},Cert=\"{encoded}\"");
        let untrusted = |r: Result<Option<String>, ForwardedCertError>| {
            assert!(matches!(r, Err(ForwardedCertError::Untrusted(_))), "{r:?}")
        };
        untrusted(read(None, &[(XFCC, &one)]));
        untrusted(read(None, &[(CLIENT_CERT, ":AAAA:")]));
        untrusted(read(
            Some(CertHeader::Xfcc),
            &[(XFCC, &one), (CLIENT_CERT, ":AAAA:")],
        ));
        untrusted(read(Some(CertHeader::ClientCert), &[(XFCC, &one)]));
        untrusted(read(Some(CertHeader::Xfcc), &[(XFCC, &two)]));
        untrusted(read(Some(CertHeader::Xfcc), &[(XFCC, &one), (XFCC, &one)]));
        // A comma inside a quoted value does not split elements.
        let quoted = format!("Subject=\"CN=a,O=b\";Cert=\"{encoded}\"");
        assert!(read(Some(CertHeader::Xfcc), &[(XFCC, &quoted)]).is_ok_and(|c| c.is_some()));
    }

    #[test]
    fn malformed_trusted_headers_are_refused() {
        for (header, value) in [
            (CertHeader::Xfcc, "Hash=abcd"),
            (CertHeader::Xfcc, "Cert=\"abc"),
            (CertHeader::Xfcc, "Cert"),
            (CertHeader::Xfcc, "Cert=\"a\";Cert=\"b\""),
            (CertHeader::Xfcc, "Cert=\"a\\\"b\""),
            (CertHeader::ClientCert, "AAAA"),
            (CertHeader::ClientCert, "::"),
            (CertHeader::ClientCert, ":AA%0A-----END:"),
        ] {
            let r = read(Some(header), &[(header.name(), value)]);
            assert!(
                matches!(r, Err(ForwardedCertError::Malformed(_))),
                "{value}: {r:?}"
            );
        }
    }

    /// What the real Traefik v3.6 sent tollgate for a client that presented its certificate
    /// (CN=billing.example, issued by an intermediate) and the intermediate after it
    /// (tests/e2e/traefik_mtls.rs, `what_traefik_forwards_as_the_client_certificate`).
    const TRAEFIK_CHAIN: &str = "MIIBczCCARmgAwIBAgIUXSfEjR/Z8M5CSLT3UJ7Yg8KrQiwwCgYIKoZIzj0EAwIwIjEgMB4GA1UEAwwXdHJhZWZpayBpbnRlcm1lZGlhdGUgQ0EwIBcNNzUwMTAxMDAwMDAwWhgPNDA5NjAxMDEwMDAwMDBaMBoxGDAWBgNVBAMMD2JpbGxpbmcuZXhhbXBsZTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABOXjPfiVobJKXPMZ1GxKG4tUHgNR1sF+2pm8elKIbmukGn3Qo9sahhz0LSRKrEbnMv3vaEKjiphGDzmwJQgswf6jMzAxMBoGA1UdEQQTMBGCD2JpbGxpbmcuZXhhbXBsZTATBgNVHSUEDDAKBggrBgEFBQcDAjAKBggqhkjOPQQDAgNIADBFAiBomEJ8UEunQsZxaT8jDfr+7nbG+sXL3mA9vQKa9thM0wIhAOXH5r8TwDUKwC+WJ/hPxoP3sQpsT+DOBmQsVrCtvO3m,MIIBgzCCASqgAwIBAgIUYDoqH0Vf7M/00MOEdpbIu5OpfzQwCgYIKoZIzj0EAwIwHDEaMBgGA1UEAwwRdHJhZWZpayBjbGllbnQgQ0EwIBcNNzUwMTAxMDAwMDAwWhgPNDA5NjAxMDEwMDAwMDBaMCIxIDAeBgNVBAMMF3RyYWVmaWsgaW50ZXJtZWRpYXRlIENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEfr5v4if8ubnwqkHUemIs3QBFy4fX65fJrFetJwZ2LYq4EnsqUayVZENw3JnMXmD8y8ZqBkFa/86+2t9Res1wq6NCMEAwDgYDVR0PAQH/BAQDAgEGMB0GA1UdDgQWBBQHIijmD9GtnotU/JCw5sT8rNj/gTAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cAMEQCIBL9JldqQ7fK8xXgSfuEwcvig2geFO5KQvQtru5fmz5fAiBKPvijfZ0fQAh8wQkoPS9H56sWcuCi3oKDIRM1EB93iA==";
    /// The `x5t#S256` of the first certificate there, computed by openssl
    /// (`openssl x509 -outform DER | openssl dgst -sha256 -binary`, base64url).
    const TRAEFIK_LEAF_X5T: &str = "FG2vE8ElZtUTdslpip-9ZjtllZnffdw1O8BOcmrF2Zc";

    #[test]
    fn traefik_sends_the_clients_certificate_first() {
        let traefik = Some(CertHeader::Traefik);
        let (leaf, intermediate) = TRAEFIK_CHAIN.split_once(',').expect("a chain");
        // The chain and the leaf alone (a client that sends no intermediate) give the leaf.
        for value in [TRAEFIK_CHAIN, leaf] {
            let pem = read(traefik, &[(TRAEFIK_CERT, value)])
                .expect("read")
                .expect("some");
            let cert = ClientCertificate::from_envoy(&pem).expect("certificate");
            assert_eq!(cert.thumbprint(), TRAEFIK_LEAF_X5T);
            assert_eq!(cert.subject, "CN=billing.example");
            assert_eq!(cert.issuer, "CN=traefik intermediate CA");
        }
        // The intermediate is another certificate: never taken for the client's.
        let pem = read(traefik, &[(TRAEFIK_CERT, intermediate)])
            .expect("read")
            .expect("some");
        assert_ne!(thumbprint(&pem), TRAEFIK_LEAF_X5T);
        assert_eq!(read(traefik, &[]), Ok(None));
    }

    #[test]
    fn traefik_headers_from_elsewhere_or_beside_others_are_refused() {
        let untrusted = |r: Result<Option<String>, ForwardedCertError>| {
            assert!(matches!(r, Err(ForwardedCertError::Untrusted(_))), "{r:?}")
        };
        let (encoded, _) = crate::fixtures::client_certificate(&["a.example"]);
        let xfcc = format!("Cert=\"{encoded}\"");
        untrusted(read(None, &[(TRAEFIK_CERT, TRAEFIK_CHAIN)]));
        untrusted(read(
            Some(CertHeader::Xfcc),
            &[(TRAEFIK_CERT, TRAEFIK_CHAIN)],
        ));
        untrusted(read(
            Some(CertHeader::ClientCert),
            &[(TRAEFIK_CERT, TRAEFIK_CHAIN)],
        ));
        untrusted(read(
            Some(CertHeader::Traefik),
            &[(TRAEFIK_CERT, TRAEFIK_CHAIN), (XFCC, &xfcc)],
        ));
        untrusted(read(
            Some(CertHeader::Traefik),
            &[(TRAEFIK_CERT, TRAEFIK_CHAIN), (CLIENT_CERT, ":AAAA:")],
        ));
        untrusted(read(Some(CertHeader::Traefik), &[(XFCC, &xfcc)]));
        // Twice (a client's and Traefik's, were both ever passed): which is the client's
        // cannot be known.
        untrusted(read(
            Some(CertHeader::Traefik),
            &[(TRAEFIK_CERT, TRAEFIK_CHAIN), (TRAEFIK_CERT, TRAEFIK_CHAIN)],
        ));
    }

    #[test]
    fn malformed_traefik_headers_are_refused() {
        let (leaf, intermediate) = TRAEFIK_CHAIN.split_once(',').expect("a chain");
        let pem = format!("-----BEGIN CERTIFICATE-----{leaf}-----END CERTIFICATE-----");
        let escaped = leaf.replace('+', "%2B").replace('/', "%2F");
        let too_long = "A".repeat(MAX_HEADER_BYTES + 1);
        for value in [
            "",
            ",",
            &format!("{leaf},"),
            &format!(",{leaf}"),
            &format!("{leaf},,{intermediate}"),
            &format!("{leaf}, {intermediate}"),
            &format!("{leaf};{intermediate}"),
            &format!(":{leaf}:"),
            &format!("\"{leaf}\""),
            &format!("Cert={leaf}"),
            &pem,
            &escaped,
            &too_long,
        ] {
            let r = read(Some(CertHeader::Traefik), &[(TRAEFIK_CERT, value)]);
            assert!(
                matches!(r, Err(ForwardedCertError::Malformed(_))),
                "{}: {r:?}",
                value.chars().take(80).collect::<String>()
            );
        }
        // Base64 that is not a certificate passes here, and is refused where the certificate
        // is parsed (400 request_malformed, never "no certificate").
        let pem = read(Some(CertHeader::Traefik), &[(TRAEFIK_CERT, "AAAA")])
            .expect("read")
            .expect("some");
        assert!(ClientCertificate::from_envoy(&pem).is_err());
    }

    #[test]
    fn proxy_entries_parse() {
        let net = |t: &str| t.parse::<IpNet>().expect("net");
        assert_eq!(
            parse_cert_proxy("10.0.0.0/8"),
            Ok((net("10.0.0.0/8"), CertHeader::Xfcc))
        );
        assert_eq!(
            parse_cert_proxy("10.1.2.3=client-cert"),
            Ok((net("10.1.2.3/32"), CertHeader::ClientCert))
        );
        assert_eq!(
            parse_cert_proxy("127.0.0.1=traefik"),
            Ok((net("127.0.0.1/32"), CertHeader::Traefik))
        );
        assert!(parse_cert_proxy("10.0.0.0/8=pem").is_err());
        assert!(parse_cert_proxy("ten").is_err());
    }
}

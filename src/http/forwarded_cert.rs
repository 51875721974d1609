//! The client certificate a proxy that terminated mutual TLS forwards in a header, read only
//! from the proxies trusted to set it (`--client-cert-proxies`).
//!
//! ```text
//! client ══mTLS══► proxy (terminates TLS, sets the header) ── forward auth ──► tollgate
//!   x-forwarded-client-cert: Hash=…;Cert="<URL-encoded PEM>";Subject="…"   (Envoy's XFCC, nginx)
//!   client-cert: :<base64 of the DER>:                                     (RFC 9440)
//! ```
//!
//! Both headers are ordinary request headers: a client can send them, and a proxy passes them
//! on unless it strips or overwrites them. So a header is believed only from an address in
//! `--client-cert-proxies`, and only the one header that proxy is declared to set. Anything
//! else carrying either header is refused (`certificate_untrusted`), never ignored: the
//! upstream may read the header too, and an answer that lets it through would vouch for it.
//! An XFCC value with several elements (a chain of proxies, or a client's element before the
//! proxy's when it appends) is refused too: which one is the client's cannot be known.
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
}

impl CertHeader {
    pub fn name(self) -> &'static str {
        match self {
            CertHeader::Xfcc => XFCC,
            CertHeader::ClientCert => CLIENT_CERT,
        }
    }

    fn other(self) -> CertHeader {
        match self {
            CertHeader::Xfcc => CertHeader::ClientCert,
            CertHeader::ClientCert => CertHeader::Xfcc,
        }
    }
}

/// A `--client-cert-proxies` entry: `CIDR` (the header is `x-forwarded-client-cert`) or
/// `CIDR=xfcc|client-cert`.
pub fn parse_cert_proxy(text: &str) -> Result<(IpNet, CertHeader), String> {
    let (net, header) = match text.trim().split_once('=') {
        Some((net, header)) => (
            net.trim(),
            match header.trim() {
                "xfcc" => CertHeader::Xfcc,
                "client-cert" => CertHeader::ClientCert,
                other => {
                    return Err(format!(
                        "{other:?} is not a certificate header (xfcc or client-cert)"
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
        return match [CertHeader::Xfcc, CertHeader::ClientCert]
            .into_iter()
            .find(|h| present(*h))
        {
            Some(h) => Err(ForwardedCertError::Untrusted(format!(
                "{} from {peer}, which is not in --client-cert-proxies: it may come from the client",
                h.name()
            ))),
            None => Ok(None),
        };
    };
    if present(header.other()) {
        return Err(ForwardedCertError::Untrusted(format!(
            "{} from {peer}, which sets {} (--client-cert-proxies): it may come from the client",
            header.other().name(),
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
        assert!(parse_cert_proxy("10.0.0.0/8=pem").is_err());
        assert!(parse_cert_proxy("ten").is_err());
    }
}

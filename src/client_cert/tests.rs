use rcgen::{
    CertificateParams, DistinguishedName, DnType, DnValue, KeyPair, SanType, SerialNumber,
    date_time_ymd,
};

use super::*;

/// A certificate with every kind of SAN tollgate reads, and its DER.
fn partner_cert() -> (String, Vec<u8>) {
    let mut params = CertificateParams::default();
    // rcgen's default name has a common name first: start from an empty one.
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Partners, Inc.");
    params
        .distinguished_name
        .push(DnType::CommonName, "billing-client");
    params.subject_alt_names = vec![
        SanType::DnsName("billing.partners.example".try_into().expect("ia5")),
        SanType::URI("spiffe://partners.example/billing".try_into().expect("ia5")),
        SanType::Rfc822Name("ops@partners.example".try_into().expect("ia5")),
        SanType::IpAddress("192.0.2.7".parse().expect("ip")),
        SanType::IpAddress("2001:db8::7".parse().expect("ip")),
        SanType::DnsName("api.partners.example".try_into().expect("ia5")),
    ];
    params.serial_number = Some(SerialNumber::from(vec![0x00, 0x9a, 0x01]));
    params.not_before = date_time_ymd(2026, 1, 2);
    params.not_after = date_time_ymd(2027, 1, 2);
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    (cert.pem(), cert.der().to_vec())
}

/// Percent-encodes as Envoy's `urlEncode` does: everything but RFC 3986's unreserved
/// characters.
fn envoy_encode(pem: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(pem, SET).to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn reads_every_field_of_a_certificate() {
    let (pem, der) = partner_cert();
    let cert = ClientCertificate::from_pem(&pem).expect("parses");
    // RFC 4514: the last RDN first, the comma in the organization escaped.
    assert_eq!(cert.subject, "CN=billing-client,O=Partners\\, Inc.");
    assert_eq!(cert.issuer, cert.subject, "self-signed");
    assert_eq!(
        cert.dns_names,
        ["billing.partners.example", "api.partners.example"]
    );
    assert_eq!(cert.uris, ["spiffe://partners.example/billing"]);
    assert_eq!(cert.emails, ["ops@partners.example"]);
    assert_eq!(cert.ips, ["192.0.2.7", "2001:db8::7"]);
    assert_eq!(cert.serial, "9a01");
    assert_eq!(cert.not_before.to_rfc3339(), "2026-01-02T00:00:00+00:00");
    assert_eq!(cert.not_after.to_rfc3339(), "2027-01-02T00:00:00+00:00");

    // The digest is of the DER, computed independently here.
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
    assert_eq!(cert.sha256().as_slice(), digest.as_ref());
    assert_eq!(cert.fingerprint(), hex(digest.as_ref()));
    assert_eq!(cert.fingerprint().len(), 64);
    assert_eq!(
        cert.thumbprint(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
    );
    assert_eq!(cert.thumbprint().len(), 43);
    assert!(!cert.thumbprint().contains(['+', '/', '=']));

    // The same certificate from its DER, and as Envoy sends it.
    assert_eq!(ClientCertificate::from_der(&der), Ok(cert.clone()));
    let encoded = envoy_encode(&pem);
    assert!(
        encoded.contains("%0A") && !encoded.contains('\n'),
        "{encoded}"
    );
    assert_eq!(ClientCertificate::from_envoy(&encoded), Ok(cert.clone()));
    // Plain PEM, and CRLF line ends, read the same.
    assert_eq!(ClientCertificate::from_envoy(&pem), Ok(cert.clone()));
    assert_eq!(
        ClientCertificate::from_pem(&pem.replace('\n', "\r\n")),
        Ok(cert)
    );
}

#[test]
fn a_certificate_without_sans_has_empty_lists() {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, "plain");
    let cert = params
        .self_signed(&KeyPair::generate().expect("key"))
        .expect("cert");
    let cert = ClientCertificate::from_der(cert.der()).expect("parses");
    assert_eq!(cert.subject, "CN=plain");
    assert!(cert.dns_names.is_empty() && cert.uris.is_empty());
    assert!(cert.emails.is_empty() && cert.ips.is_empty());
}

#[test]
fn distinguished_names_follow_rfc_4514() {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = DistinguishedName::new();
    let dn = &mut params.distinguished_name;
    dn.push(DnType::CountryName, "DE");
    dn.push(
        DnType::CustomDnType(vec![0, 9, 2342, 19200300, 100, 1, 25]),
        DnValue::Ia5String("example".try_into().expect("ia5")),
    );
    // Not one of RFC 4514's names: the dotted OID and the value's DER in hex.
    dn.push(
        DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
        DnValue::Ia5String("a@b".try_into().expect("ia5")),
    );
    dn.push(
        DnType::OrganizationalUnitName,
        DnValue::BmpString("Zürich".try_into().expect("bmp")),
    );
    dn.push(DnType::CommonName, " #lead+<trail>;\"q\"\\ ");
    let cert = params
        .self_signed(&KeyPair::generate().expect("key"))
        .expect("cert");
    let cert = ClientCertificate::from_der(cert.der()).expect("parses");
    assert_eq!(
        cert.subject,
        "CN=\\ #lead\\+\\<trail\\>\\;\\\"q\\\"\\\\\\ ,OU=Zürich,\
         1.2.840.113549.1.9.1=#1603614062,DC=example,C=DE"
    );

    let mut out = String::new();
    escape_to("#a\u{0}b\nc", &mut out);
    assert_eq!(out, "\\#a\\00b\\0Ac");
}

#[test]
fn malformed_input_is_an_error() {
    let (pem, der) = partner_cert();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let cases: Vec<(String, CertError)> = vec![
        (
            String::new(),
            CertError::Pem("no BEGIN CERTIFICATE line at the start"),
        ),
        (
            "hello".into(),
            CertError::Pem("no BEGIN CERTIFICATE line at the start"),
        ),
        (
            body.clone(),
            CertError::Pem("no BEGIN CERTIFICATE line at the start"),
        ),
        (
            pem.replace("-----END CERTIFICATE-----", ""),
            CertError::Pem("no END CERTIFICATE line at the end"),
        ),
        (
            format!("{pem}{pem}"),
            CertError::Pem("more than one PEM block"),
        ),
        (
            format!("{pem}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            CertError::Pem("no END CERTIFICATE line at the end"),
        ),
        (
            pem.replacen(&body[..8], "!!!!!!!!", 1),
            CertError::Pem("the body is not base64"),
        ),
        (
            format!("garbage\n{pem}"),
            CertError::Pem("no BEGIN CERTIFICATE line at the start"),
        ),
    ];
    for (input, want) in cases {
        assert_eq!(ClientCertificate::from_pem(&input), Err(want), "{input}");
    }
    // Invalid percent-encoding leaves a `%` in the text, which PEM cannot have.
    assert!(matches!(
        ClientCertificate::from_envoy(&envoy_encode(&pem).replacen("%0A", "%0", 1)),
        Err(CertError::Pem(_))
    ));
    assert_eq!(
        ClientCertificate::from_envoy("%ff%fe"),
        Err(CertError::Pem("the decoded text is not UTF-8"))
    );

    // DER: truncated, with trailing bytes, not a certificate.
    assert!(matches!(
        ClientCertificate::from_der(&der[..der.len() - 1]),
        Err(CertError::Der(_))
    ));
    let mut trailing = der.clone();
    trailing.push(0);
    assert_eq!(
        ClientCertificate::from_der(&trailing),
        Err(CertError::Der("1 bytes follow the certificate".into()))
    );
    assert!(matches!(
        ClientCertificate::from_der(&[0x30, 0x03, 0x02, 0x01, 0x01]),
        Err(CertError::Der(_))
    ));
    let b64 = base64::engine::general_purpose::STANDARD.encode([0x30u8, 0x00]);
    assert!(matches!(
        ClientCertificate::from_pem(&format!(
            "-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n"
        )),
        Err(CertError::Der(_))
    ));
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let (pem, _) = partner_cert();
    let padded = format!("{pem}{}", " ".repeat(MAX_BYTES));
    assert_eq!(
        ClientCertificate::from_pem(&padded),
        Err(CertError::TooLarge(padded.len()))
    );
    // Within the bound encoded, one byte over it decoded.
    let encoded = format!("{}%20", "A".repeat(MAX_BYTES));
    assert_eq!(
        ClientCertificate::from_envoy(&encoded),
        Err(CertError::TooLarge(MAX_BYTES + 1))
    );
    let huge = "A".repeat(3 * MAX_BYTES + 1);
    assert_eq!(
        ClientCertificate::from_envoy(&huge),
        Err(CertError::TooLarge(huge.len()))
    );
    assert_eq!(
        ClientCertificate::from_der(&vec![0u8; MAX_BYTES + 1]),
        Err(CertError::TooLarge(MAX_BYTES + 1))
    );
    for e in [
        CertError::TooLarge(1),
        CertError::Pem("x"),
        CertError::Der("x".into()),
    ] {
        assert!(e.reason().starts_with("certificate_"));
    }
}

#[test]
fn serials_lose_only_the_sign_byte() {
    assert_eq!(serial(&[0x00, 0x80]), "80");
    assert_eq!(serial(&[0x01, 0x00]), "0100");
    assert_eq!(serial(&[0x00]), "00");
    assert_eq!(serial(&[]), "");
    assert!(ip(&[1, 2, 3]).is_err());
}

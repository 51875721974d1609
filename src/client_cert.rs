//! The client's TLS certificate, as the gateway that terminated the connection reports it.
//!
//! ```text
//! Envoy ext_authz (include_peer_certificate: true)
//!   attributes.source.certificate: URL-encoded PEM of the leaf ─► from_envoy ─► from_pem ─┐
//!                                                                                       ▼
//!                        DER (at most MAX_BYTES) ─► from_der ─► ClientCertificate {subject, issuer,
//!                                                  SANs by kind, SHA-256 of the DER, validity, serial}
//! ```
//!
//! Why tollgate reads the certificate but does not verify it: the gateway terminated the TLS
//! connection and checked the chain against its trust anchors (a downstream listener that
//! requires a client certificate); tollgate only sees what the gateway tells it over the
//! ext_authz channel, which is trusted as the rest of the `CheckRequest` is. So no signature,
//! chain or validity check happens here, only strict parsing: anything that is not exactly
//! one well-formed X.509 certificate is an error, never a certificate with fewer names.
//!
//! The type is transport-free: CEL's `source.certificate` is built from it, and the SHA-256
//! thumbprint ([`ClientCertificate::thumbprint`]) is the RFC 8705 `x5t#S256` value a
//! certificate-bound access token carries in its `cnf` claim.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use x509_parser::asn1_rs::{Any, Tag, ToDer as _};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

/// The most bytes of a certificate's PEM text (and so of its DER) that are read. A leaf
/// certificate is one to two kilobytes; a much larger one is refused, not parsed.
pub const MAX_BYTES: usize = 16 * 1024;

/// A parsed client certificate: what policies may judge, and its thumbprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertificate {
    /// The subject's distinguished name as an RFC 4514 string: `CN=client,O=Example`.
    pub subject: String,
    /// The issuer's distinguished name, in the same form.
    pub issuer: String,
    /// `dNSName` subject alternative names, in certificate order.
    pub dns_names: Vec<String>,
    /// `uniformResourceIdentifier` SANs (e.g. SPIFFE IDs).
    pub uris: Vec<String>,
    /// `rfc822Name` (email) SANs.
    pub emails: Vec<String>,
    /// `iPAddress` SANs, as text (`192.0.2.1`, `2001:db8::1`).
    pub ips: Vec<String>,
    /// Start of the validity period.
    pub not_before: DateTime<Utc>,
    /// End of the validity period.
    pub not_after: DateTime<Utc>,
    /// The serial number's magnitude in lower-case hex, two digits per byte, without the
    /// DER sign byte (`01f3`).
    pub serial: String,
    sha256: [u8; 32],
}

/// Why a certificate could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// Over [`MAX_BYTES`].
    #[error("the client certificate is {0} bytes long; at most {MAX_BYTES} are read")]
    TooLarge(usize),
    /// Not one PEM `CERTIFICATE` block (or the percent-encoding around it is broken).
    #[error("the client certificate is not one PEM certificate: {0}")]
    Pem(&'static str),
    /// The DER is not an X.509 certificate, or a field tollgate reads is malformed.
    #[error("the client certificate does not parse: {0}")]
    Der(String),
}

impl CertError {
    /// A bounded label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            CertError::TooLarge(_) => "certificate_too_large",
            CertError::Pem(_) => "certificate_not_pem",
            CertError::Der(_) => "certificate_malformed",
        }
    }
}

impl ClientCertificate {
    /// Envoy's `attributes.source.certificate`: the PEM of the client's leaf certificate,
    /// percent-encoded (`%0A` for the line ends, `%2B`, `%2F`, `%3D` for the base64 symbols).
    /// Plain PEM reads too: it has nothing to decode.
    pub fn from_envoy(encoded: &str) -> Result<ClientCertificate, CertError> {
        // Every PEM byte is at most three encoded ones: refuse before decoding more.
        if encoded.len() > 3 * MAX_BYTES {
            return Err(CertError::TooLarge(encoded.len()));
        }
        let pem = percent_encoding::percent_decode_str(encoded)
            .decode_utf8()
            .map_err(|_| CertError::Pem("the decoded text is not UTF-8"))?;
        Self::from_pem(&pem)
    }

    /// Exactly one `-----BEGIN CERTIFICATE-----` block, with nothing but white space around
    /// it (RFC 7468's strict form, lines of any length).
    pub fn from_pem(pem: &str) -> Result<ClientCertificate, CertError> {
        if pem.len() > MAX_BYTES {
            return Err(CertError::TooLarge(pem.len()));
        }
        const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
        const END: &str = "-----END CERTIFICATE-----";
        let body = pem
            .trim()
            .strip_prefix(BEGIN)
            .ok_or(CertError::Pem("no BEGIN CERTIFICATE line at the start"))?
            .strip_suffix(END)
            .ok_or(CertError::Pem("no END CERTIFICATE line at the end"))?;
        if body.contains("-----") {
            return Err(CertError::Pem("more than one PEM block"));
        }
        let base64: String = body.split_ascii_whitespace().collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(base64)
            .map_err(|_| CertError::Pem("the body is not base64"))?;
        Self::from_der(&der)
    }

    /// A DER-encoded X.509 certificate, with nothing after it.
    pub fn from_der(der: &[u8]) -> Result<ClientCertificate, CertError> {
        if der.len() > MAX_BYTES {
            return Err(CertError::TooLarge(der.len()));
        }
        let (rest, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| CertError::Der(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CertError::Der(format!(
                "{} bytes follow the certificate",
                rest.len()
            )));
        }
        let mut out = ClientCertificate {
            subject: rfc4514(cert.subject())?,
            issuer: rfc4514(cert.issuer())?,
            dns_names: Vec::new(),
            uris: Vec::new(),
            emails: Vec::new(),
            ips: Vec::new(),
            not_before: timestamp(cert.validity().not_before.timestamp())?,
            not_after: timestamp(cert.validity().not_after.timestamp())?,
            serial: serial(cert.raw_serial()),
            sha256: crate::jose::sha256(der),
        };
        out.read_sans(&cert)?;
        Ok(out)
    }

    fn read_sans(&mut self, cert: &X509Certificate<'_>) -> Result<(), CertError> {
        let Some(sans) = cert
            .subject_alternative_name()
            .map_err(|e| CertError::Der(format!("subjectAltName: {e}")))?
        else {
            return Ok(());
        };
        for name in &sans.value.general_names {
            match name {
                GeneralName::DNSName(n) => self.dns_names.push(n.to_string()),
                GeneralName::URI(u) => self.uris.push(u.to_string()),
                GeneralName::RFC822Name(e) => self.emails.push(e.to_string()),
                GeneralName::IPAddress(bytes) => self.ips.push(ip(bytes)?),
                // A name that does not decode is refused rather than left out: a policy
                // judging "no name matches" must not pass because one was skipped.
                GeneralName::Invalid(tag, _) => {
                    return Err(CertError::Der(format!(
                        "subjectAltName: a malformed name (tag {tag})"
                    )));
                }
                // otherName, directoryName, registeredID, x400Address, ediPartyName: not
                // exposed.
                _ => {}
            }
        }
        Ok(())
    }

    /// SHA-256 of the DER.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    /// SHA-256 of the DER in lower-case hex (64 characters): the fingerprint tools print
    /// (`openssl x509 -fingerprint -sha256` without the colons, Envoy's
    /// `%DOWNSTREAM_PEER_FINGERPRINT_256%`, the `Hash` of `x-forwarded-client-cert`).
    pub fn fingerprint(&self) -> String {
        let mut out = String::with_capacity(64);
        for b in &self.sha256 {
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// SHA-256 of the DER in base64url without padding (43 characters): RFC 8705's
    /// `x5t#S256`, the value a certificate-bound token's `cnf` claim carries.
    pub fn thumbprint(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.sha256)
    }
}

fn timestamp(seconds: i64) -> Result<DateTime<Utc>, CertError> {
    DateTime::from_timestamp(seconds, 0)
        .ok_or_else(|| CertError::Der("a validity time is out of range".into()))
}

fn serial(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    let mut out = String::with_capacity(2 * raw.len());
    for b in &raw[start..] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn ip(bytes: &[u8]) -> Result<String, CertError> {
    let address = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(bytes).expect("invariant: 4 bytes"),
        )),
        16 => IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).expect("invariant: 16 bytes"),
        )),
        n => {
            return Err(CertError::Der(format!(
                "subjectAltName: an IP address of {n} bytes"
            )));
        }
    };
    Ok(address.to_string())
}

/// The attribute types RFC 4514 §3 names; any other is written as its dotted OID.
const SHORT_NAMES: [(&str, &str); 9] = [
    ("2.5.4.3", "CN"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.6", "C"),
    ("2.5.4.9", "STREET"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("0.9.2342.19200300.100.1.1", "UID"),
];

/// A distinguished name as RFC 4514 writes it: the last RDN first, RDNs separated by `,`,
/// the attributes of a multi-valued RDN by `+`, special characters escaped with `\`.
fn rfc4514(name: &X509Name<'_>) -> Result<String, CertError> {
    let rdns: Vec<_> = name.iter_rdn().collect();
    let mut out = String::new();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attribute) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            attribute_to(attribute, &mut out)?;
        }
    }
    Ok(out)
}

fn attribute_to(attribute: &AttributeTypeAndValue<'_>, out: &mut String) -> Result<(), CertError> {
    let oid = attribute.attr_type().to_id_string();
    let short = SHORT_NAMES.iter().find(|(o, _)| *o == oid).map(|(_, s)| *s);
    let value = attribute.attr_value();
    match (short, string_value(value)) {
        (Some(short), Some(text)) => {
            out.push_str(short);
            out.push('=');
            escape_to(&text, out);
        }
        // RFC 4514 §2.4: a dotted type, or a value with no string form: `#` and the hex
        // of the value's BER encoding.
        (short, _) => {
            out.push_str(short.unwrap_or(&oid));
            out.push_str("=#");
            let der = value
                .to_der_vec()
                .map_err(|e| CertError::Der(format!("a name attribute: {e}")))?;
            for b in der {
                let _ = write!(out, "{b:02x}");
            }
        }
    }
    Ok(())
}

/// The text of a directory string, when it has one that decodes.
fn string_value(value: &Any<'_>) -> Option<String> {
    let data = value.data;
    match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::VisibleString => std::str::from_utf8(data).ok().map(str::to_owned),
        Tag::BmpString => {
            if !data.len().is_multiple_of(2) {
                return None;
            }
            let units = data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        Tag::UniversalString => {
            if !data.len().is_multiple_of(4) {
                return None;
            }
            data.chunks_exact(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        }
        _ => None,
    }
}

/// RFC 4514 §2.4 escaping, plus control characters as `\XX` so a name is one printable line.
fn escape_to(text: &str, out: &mut String) {
    let last = text.chars().count().saturating_sub(1);
    for (i, c) in text.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '#' if i == 0 => out.push_str("\\#"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests;

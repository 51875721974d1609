//! Just enough DER to hand RSA keys given as JWK members (or PKCS#1) to aws-lc, which reads
//! PKCS#8 private keys and SubjectPublicKeyInfo public keys.

/// `AlgorithmIdentifier { rsaEncryption, NULL }`.
const RSA_ALGORITHM: [u8; 15] = [
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

/// The fixed PKCS#8 prefix of an X25519 private key (RFC 8410), followed by the 32-byte key.
pub const X25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
];

fn header(tag: u8, len: usize, out: &mut Vec<u8>) {
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    header(tag, content.len(), &mut out);
    out.extend_from_slice(content);
    out
}

/// A non-negative INTEGER from big-endian bytes.
fn integer(bytes: &[u8]) -> Vec<u8> {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    let mut content = Vec::with_capacity(bytes.len() - start + 1);
    if bytes.get(start).is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(&bytes[start..]);
    tlv(0x02, &content)
}

fn sequence(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// PKCS#1 `RSAPrivateKey` from its components (n, e, d, p, q, dp, dq, qi), big-endian.
pub fn rsa_private_pkcs1(components: [&[u8]; 8]) -> Vec<u8> {
    let mut parts = vec![integer(&[0])];
    parts.extend(components.iter().map(|c| integer(c)));
    sequence(&parts)
}

/// Wraps a PKCS#1 `RSAPrivateKey` in a PKCS#8 `PrivateKeyInfo`.
pub fn rsa_pkcs1_to_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    sequence(&[integer(&[0]), RSA_ALGORITHM.to_vec(), tlv(0x04, pkcs1)])
}

/// SubjectPublicKeyInfo of an RSA public key (n, e big-endian).
pub fn rsa_public_spki(n: &[u8], e: &[u8]) -> Vec<u8> {
    let pkcs1 = sequence(&[integer(n), integer(e)]);
    let mut bits = vec![0u8];
    bits.extend_from_slice(&pkcs1);
    sequence(&[RSA_ALGORITHM.to_vec(), tlv(0x03, &bits)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_minimal_and_non_negative() {
        assert_eq!(integer(&[0, 0, 1]), vec![0x02, 0x01, 0x01]);
        assert_eq!(integer(&[0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(integer(&[]), vec![0x02, 0x01, 0x00]);
        let long = tlv(0x04, &[7u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }
}

//! The JWE algorithms tollgate implements (RFC 7518 §4 and §5), by their registered names.

use std::fmt;

/// How the content encryption key (CEK) reaches the recipient: the JWE header's `alg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyManagement {
    /// RSAES-PKCS1-v1_5. Open to padding-oracle attacks: accepted only with `allowRsa1_5`.
    Rsa1_5,
    /// RSAES-OAEP with SHA-1 and MGF1-SHA-1.
    RsaOaep,
    /// RSAES-OAEP with SHA-256 and MGF1-SHA-256.
    RsaOaep256,
    /// ECDH-ES: the agreed key is the CEK.
    EcdhEs,
    /// ECDH-ES, then AES-128 key wrap of the CEK.
    EcdhEsA128Kw,
    /// ECDH-ES, then AES-256 key wrap of the CEK.
    EcdhEsA256Kw,
    /// AES-128 key wrap (RFC 3394) with a shared key.
    A128Kw,
    /// AES-256 key wrap (RFC 3394) with a shared key.
    A256Kw,
    /// The shared key is the CEK.
    Dir,
}

impl KeyManagement {
    pub const ALL: [KeyManagement; 9] = [
        KeyManagement::Rsa1_5,
        KeyManagement::RsaOaep,
        KeyManagement::RsaOaep256,
        KeyManagement::EcdhEs,
        KeyManagement::EcdhEsA128Kw,
        KeyManagement::EcdhEsA256Kw,
        KeyManagement::A128Kw,
        KeyManagement::A256Kw,
        KeyManagement::Dir,
    ];

    /// The registered `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            KeyManagement::Rsa1_5 => "RSA1_5",
            KeyManagement::RsaOaep => "RSA-OAEP",
            KeyManagement::RsaOaep256 => "RSA-OAEP-256",
            KeyManagement::EcdhEs => "ECDH-ES",
            KeyManagement::EcdhEsA128Kw => "ECDH-ES+A128KW",
            KeyManagement::EcdhEsA256Kw => "ECDH-ES+A256KW",
            KeyManagement::A128Kw => "A128KW",
            KeyManagement::A256Kw => "A256KW",
            KeyManagement::Dir => "dir",
        }
    }

    /// Whether decrypting proves who encrypted: only the holder of a key shared with the issuer
    /// can encrypt with `dir` or AES key wrap; anyone with an RSA or EC public key can encrypt
    /// to it. So only these may carry claims without a signature (`requireSignedTokens: false`).
    pub fn proves_sender(self) -> bool {
        matches!(
            self,
            KeyManagement::A128Kw | KeyManagement::A256Kw | KeyManagement::Dir
        )
    }

    /// The algorithm with this exact registered name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|alg| alg.name() == name)
    }

    /// The length of the AES key-wrapping key, for the key-wrap variants.
    pub fn wrap_key_len(self) -> Option<usize> {
        match self {
            KeyManagement::A128Kw | KeyManagement::EcdhEsA128Kw => Some(16),
            KeyManagement::A256Kw | KeyManagement::EcdhEsA256Kw => Some(32),
            _ => None,
        }
    }

    pub fn is_rsa(self) -> bool {
        matches!(
            self,
            KeyManagement::Rsa1_5 | KeyManagement::RsaOaep | KeyManagement::RsaOaep256
        )
    }

    pub fn is_ecdh(self) -> bool {
        matches!(
            self,
            KeyManagement::EcdhEs | KeyManagement::EcdhEsA128Kw | KeyManagement::EcdhEsA256Kw
        )
    }
}

impl fmt::Display for KeyManagement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the content is encrypted and authenticated: the JWE header's `enc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContentEncryption {
    A128CbcHs256,
    A192CbcHs384,
    A256CbcHs512,
    A128Gcm,
    A256Gcm,
}

impl ContentEncryption {
    pub const ALL: [ContentEncryption; 5] = [
        ContentEncryption::A128CbcHs256,
        ContentEncryption::A192CbcHs384,
        ContentEncryption::A256CbcHs512,
        ContentEncryption::A128Gcm,
        ContentEncryption::A256Gcm,
    ];

    /// The registered `enc` name.
    pub fn name(self) -> &'static str {
        match self {
            ContentEncryption::A128CbcHs256 => "A128CBC-HS256",
            ContentEncryption::A192CbcHs384 => "A192CBC-HS384",
            ContentEncryption::A256CbcHs512 => "A256CBC-HS512",
            ContentEncryption::A128Gcm => "A128GCM",
            ContentEncryption::A256Gcm => "A256GCM",
        }
    }

    /// The algorithm with this exact registered name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|enc| enc.name() == name)
    }

    /// Length of the CEK in bytes (for CBC-HMAC: MAC key and encryption key together).
    pub fn key_len(self) -> usize {
        match self {
            ContentEncryption::A128CbcHs256 => 32,
            ContentEncryption::A192CbcHs384 => 48,
            ContentEncryption::A256CbcHs512 => 64,
            ContentEncryption::A128Gcm => 16,
            ContentEncryption::A256Gcm => 32,
        }
    }

    /// Length of the initialization vector in bytes.
    pub fn iv_len(self) -> usize {
        match self {
            ContentEncryption::A128Gcm | ContentEncryption::A256Gcm => 12,
            _ => 16,
        }
    }

    /// Length of the authentication tag in bytes.
    pub fn tag_len(self) -> usize {
        match self {
            ContentEncryption::A128CbcHs256 => 16,
            ContentEncryption::A192CbcHs384 => 24,
            ContentEncryption::A256CbcHs512 => 32,
            ContentEncryption::A128Gcm | ContentEncryption::A256Gcm => 16,
        }
    }
}

impl fmt::Display for ContentEncryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_exact() {
        for alg in KeyManagement::ALL {
            assert_eq!(KeyManagement::parse(alg.name()), Some(alg));
        }
        for enc in ContentEncryption::ALL {
            assert_eq!(ContentEncryption::parse(enc.name()), Some(enc));
        }
        assert_eq!(KeyManagement::parse("rsa-oaep"), None);
        assert_eq!(KeyManagement::parse("PBES2-HS256+A128KW"), None);
        assert_eq!(ContentEncryption::parse("a128gcm"), None);
    }
}

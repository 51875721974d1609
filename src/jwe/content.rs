//! Content encryption (RFC 7518 §5): AES-CBC with HMAC-SHA2 (§5.2) and AES-GCM (§5.3).
//!
//! For CBC-HMAC the tag is checked (in constant time) before anything is decrypted, so a
//! padding error can never be observed separately from a bad tag: no padding oracle.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{
    self, DecryptionContext, EncryptionContext, PaddedBlockDecryptingKey, PaddedBlockEncryptingKey,
    UnboundCipherKey,
};
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;

use super::alg::ContentEncryption;

/// The content could not be authenticated or decrypted. Deliberately without detail: which
/// step failed must not be observable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the authentication tag does not verify")]
pub struct ContentError;

fn cbc_parts(enc: ContentEncryption) -> (hmac::Algorithm, &'static cipher::Algorithm) {
    match enc {
        ContentEncryption::A192CbcHs384 => (hmac::HMAC_SHA384, &cipher::AES_192),
        ContentEncryption::A256CbcHs512 => (hmac::HMAC_SHA512, &cipher::AES_256),
        _ => (hmac::HMAC_SHA256, &cipher::AES_128),
    }
}

fn gcm_algorithm(enc: ContentEncryption) -> &'static aead::Algorithm {
    match enc {
        ContentEncryption::A256Gcm => &aead::AES_256_GCM,
        _ => &aead::AES_128_GCM,
    }
}

fn is_gcm(enc: ContentEncryption) -> bool {
    matches!(enc, ContentEncryption::A128Gcm | ContentEncryption::A256Gcm)
}

/// `MAC(AAD || IV || ciphertext || AL)` truncated to the tag length (RFC 7518 §5.2.2.1).
fn cbc_tag(enc: ContentEncryption, mac_key: &[u8], aad: &[u8], iv: &[u8], ct: &[u8]) -> Vec<u8> {
    let (mac, _) = cbc_parts(enc);
    let key = hmac::Key::new(mac, mac_key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(aad);
    ctx.update(iv);
    ctx.update(ct);
    let aad_bits = (aad.len() as u64).saturating_mul(8);
    ctx.update(&aad_bits.to_be_bytes());
    let full = ctx.sign();
    full.as_ref()[..enc.tag_len()].to_vec()
}

/// Authenticates and decrypts. Every length must already match `enc`.
pub fn decrypt(
    enc: ContentEncryption,
    cek: &[u8],
    aad: &[u8],
    iv: &[u8],
    ciphertext: &[u8],
    tag: &[u8],
) -> Result<Vec<u8>, ContentError> {
    if cek.len() != enc.key_len() || iv.len() != enc.iv_len() || tag.len() != enc.tag_len() {
        return Err(ContentError);
    }
    if is_gcm(enc) {
        let key = UnboundKey::new(gcm_algorithm(enc), cek).map_err(|_| ContentError)?;
        let key = LessSafeKey::new(key);
        let nonce = Nonce::try_assume_unique_for_key(iv).map_err(|_| ContentError)?;
        let mut buf = Vec::with_capacity(ciphertext.len() + tag.len());
        buf.extend_from_slice(ciphertext);
        buf.extend_from_slice(tag);
        let plain = key
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| ContentError)?;
        let len = plain.len();
        buf.truncate(len);
        return Ok(buf);
    }
    let half = cek.len() / 2;
    let (mac_key, enc_key) = cek.split_at(half);
    let expected = cbc_tag(enc, mac_key, aad, iv, ciphertext);
    verify_slices_are_equal(&expected, tag).map_err(|_| ContentError)?;
    if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(16) {
        return Err(ContentError);
    }
    let (_, aes) = cbc_parts(enc);
    let key = UnboundCipherKey::new(aes, enc_key).map_err(|_| ContentError)?;
    let key = PaddedBlockDecryptingKey::cbc_pkcs7(key).map_err(|_| ContentError)?;
    let iv: [u8; 16] = iv.try_into().map_err(|_| ContentError)?;
    let mut buf = ciphertext.to_vec();
    let len = key
        .decrypt(&mut buf, DecryptionContext::Iv128(FixedLength::from(iv)))
        .map_err(|_| ContentError)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// Encrypted content.
#[derive(Debug)]
pub struct Sealed {
    pub iv: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub tag: Vec<u8>,
}

/// Encrypts with a fresh random IV.
pub fn encrypt(
    enc: ContentEncryption,
    cek: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Sealed, ContentError> {
    if cek.len() != enc.key_len() {
        return Err(ContentError);
    }
    let mut iv = vec![0u8; enc.iv_len()];
    aws_lc_rs::rand::fill(&mut iv).map_err(|_| ContentError)?;
    if is_gcm(enc) {
        let key = UnboundKey::new(gcm_algorithm(enc), cek).map_err(|_| ContentError)?;
        let key = LessSafeKey::new(key);
        let nonce = Nonce::try_assume_unique_for_key(&iv).map_err(|_| ContentError)?;
        let mut buf = plaintext.to_vec();
        let tag = key
            .seal_in_place_separate_tag(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| ContentError)?;
        return Ok(Sealed {
            iv,
            ciphertext: buf,
            tag: tag.as_ref().to_vec(),
        });
    }
    let half = cek.len() / 2;
    let (mac_key, enc_key) = cek.split_at(half);
    let (_, aes) = cbc_parts(enc);
    let key = UnboundCipherKey::new(aes, enc_key).map_err(|_| ContentError)?;
    let key = PaddedBlockEncryptingKey::cbc_pkcs7(key).map_err(|_| ContentError)?;
    let iv16: [u8; 16] = iv.as_slice().try_into().map_err(|_| ContentError)?;
    let mut buf = plaintext.to_vec();
    key.less_safe_encrypt(&mut buf, EncryptionContext::Iv128(FixedLength::from(iv16)))
        .map_err(|_| ContentError)?;
    let tag = cbc_tag(enc, mac_key, aad, &iv, &buf);
    Ok(Sealed {
        iv,
        ciphertext: buf,
        tag,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7518 Appendix B.1: AES_128_CBC_HMAC_SHA_256 with a fixed IV.
    #[test]
    fn rfc7518_appendix_b1_tag() {
        let k: Vec<u8> = (0u8..32).collect();
        let iv = hex("1af38c2dc2b96ffdd86694092341bc04");
        let aad = b"The second principle of Auguste Kerckhoffs";
        let ct = hex(concat!(
            "c80edfa32ddf39d5ef00c0b468834279a2e46a1b8049f792f76bfe54b903a9c9",
            "a94ac9b47ad2655c5f10f9aef71427e2fc6f9b3f399a221489f16362c7032336",
            "09d45ac69864e3321cf82935ac4096c86e133314c54019e8ca7980dfa4b9cf1b",
            "384c486f3a54c51078158ee5d79de59fbd34d848b3d69550a67646344427ade5",
            "4b8851ffb598f7f80074b9473c82e2db"
        ));
        let tag = hex("652c3fa36b0a7c5b3219fab3a30bc1c4");
        assert_eq!(
            cbc_tag(ContentEncryption::A128CbcHs256, &k[..16], aad, &iv, &ct),
            tag
        );
        let plain =
            decrypt(ContentEncryption::A128CbcHs256, &k, aad, &iv, &ct, &tag).expect("decrypts");
        assert!(plain.starts_with(b"A cipher system must not be required to be secret"));
    }

    #[test]
    fn every_encryption_round_trips_and_detects_tampering() {
        for enc in ContentEncryption::ALL {
            let mut cek = vec![0u8; enc.key_len()];
            aws_lc_rs::rand::fill(&mut cek).expect("rng");
            let Sealed {
                iv,
                ciphertext: ct,
                tag,
            } = encrypt(enc, &cek, b"aad", b"hello, world").expect("encrypts");
            assert_eq!(
                decrypt(enc, &cek, b"aad", &iv, &ct, &tag).expect("decrypts"),
                b"hello, world",
                "{enc}"
            );
            let mut bad_tag = tag.clone();
            bad_tag[0] ^= 1;
            assert_eq!(
                decrypt(enc, &cek, b"aad", &iv, &ct, &bad_tag),
                Err(ContentError)
            );
            assert_eq!(
                decrypt(enc, &cek, b"aab", &iv, &ct, &tag),
                Err(ContentError)
            );
            let mut bad_ct = ct.clone();
            bad_ct[0] ^= 1;
            assert_eq!(
                decrypt(enc, &cek, b"aad", &iv, &bad_ct, &tag),
                Err(ContentError)
            );
            assert_eq!(
                decrypt(enc, &cek, b"aad", &iv, &ct, &tag[1..]),
                Err(ContentError)
            );
        }
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }
}

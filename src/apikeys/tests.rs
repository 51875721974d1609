use super::*;

const KEY: &[u8] = b"4f1c9a0e7d2b6c3a8e5f1d0b9c7a6e4f";

fn data<'a>(key: &'a [u8], owner: &'a [u8], scopes: Option<&'a [u8]>) -> KeyData<'a> {
    KeyData {
        key: Some(key),
        owner: Some(owner),
        scopes,
    }
}

fn keys_with(records: Vec<KeyRecord>) -> ApiKeys {
    let mut keys = ApiKeys::new(Some("x-api-key".into()), None, WithToken::Refuse);
    for record in records {
        keys.insert(record).expect("unique");
    }
    keys
}

#[test]
fn a_key_is_kept_as_its_sha256_and_found_by_it() {
    let record = KeyRecord::new(
        "ns/acme".into(),
        &data(KEY, b"acme", Some(b"orders:read orders:write")),
    )
    .expect("valid key");
    // SHA-256 of KEY, computed independently of the code under test.
    let expected = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, KEY);
    assert_eq!(record.digest.as_slice(), expected.as_ref());
    assert_eq!(record.id, hex(&expected.as_ref()[..4]));
    assert_eq!(record.id.len(), 8);
    let keys = keys_with(vec![record]);
    let found = keys.lookup(&digest(KEY)).expect("the key is found");
    assert_eq!(found.owner, "acme");
    assert_eq!(found.scopes, ["orders:read", "orders:write"]);
    let claims = found.claims.map();
    assert_eq!(claims["sub"], "acme");
    assert_eq!(claims["scope"], "orders:read orders:write");
    assert_eq!(claims["key_id"], found.id.as_str());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_wrong_key_is_not_found() {
    let keys = keys_with(vec![
        KeyRecord::new("ns/acme".into(), &data(KEY, b"acme", None)).expect("valid"),
    ]);
    let mut other = KEY.to_vec();
    other[31] ^= 1;
    assert!(keys.lookup(&digest(&other)).is_none());
    assert!(keys.lookup(&digest(&KEY[..31])).is_none());
    assert!(keys.lookup(&digest(b"")).is_none());
}

#[test]
fn the_record_keeps_no_plaintext() {
    let record = KeyRecord::new("ns/acme".into(), &data(KEY, b"acme", None)).expect("valid");
    let debug = format!("{record:?}");
    let key = std::str::from_utf8(KEY).expect("ascii");
    assert!(!debug.contains(key), "{debug}");
    assert!(!debug.contains(&key[..8]), "{debug}");
}

#[test]
fn unusable_key_secrets_are_refused() {
    let short = b"0123456789abcdef0123456789abcde"; // 31 characters
    let cases: Vec<(KeyData<'_>, KeyError)> = vec![
        (
            KeyData {
                key: None,
                owner: Some(b"acme"),
                scopes: None,
            },
            KeyError::Missing,
        ),
        (data(short, b"acme", None), KeyError::TooShort(31)),
        (data(b"", b"acme", None), KeyError::TooShort(0)),
        (
            data(b"0123456789abcdef 0123456789abcdef", b"acme", None),
            KeyError::BadCharacters,
        ),
        (
            data("0123456789abcdef0123456789abcdéf".as_bytes(), b"acme", None),
            KeyError::BadCharacters,
        ),
        (
            data(&[b'a'; MAX_KEY_LEN + 1], b"acme", None),
            KeyError::TooLong,
        ),
        (
            KeyData {
                key: Some(KEY),
                owner: None,
                scopes: None,
            },
            KeyError::Owner,
        ),
        (data(KEY, b"  ", None), KeyError::Owner),
        (data(KEY, b"acme\nx-admin: 1", None), KeyError::Owner),
        (data(KEY, b"acme", Some(b"read\x00write")), KeyError::Scopes),
    ];
    for (data, expected) in cases {
        let got = KeyRecord::new("ns/k".into(), &data).expect_err("refused");
        assert_eq!(got, expected);
    }
    // 32 characters pass; a trailing newline (`echo key | base64`) is not part of the key.
    let mut with_newline = KEY.to_vec();
    with_newline.push(b'\n');
    let record = KeyRecord::new("ns/k".into(), &data(&with_newline, b"acme", None)).expect("ok");
    assert_eq!(record.digest, digest(KEY));
}

#[test]
fn the_same_key_twice_is_refused() {
    let mut keys = keys_with(vec![
        KeyRecord::new("ns/acme".into(), &data(KEY, b"acme", None)).expect("valid"),
    ]);
    let again = KeyRecord::new("ns/other".into(), &data(KEY, b"other", None)).expect("valid");
    assert_eq!(keys.insert(again), Err(Duplicate("ns/acme".into())));
    assert_eq!(keys.len(), 1);
    assert_eq!(keys.lookup(&digest(KEY)).expect("kept").owner, "acme");
}

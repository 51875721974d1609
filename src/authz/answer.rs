//! What `Check` sends back: a built `CheckResponse`, or an allow encoded straight from the
//! decision.
//!
//! An allow is the answer of almost every request a deployment serves, and most of them come
//! from the verified-token cache, where building the message cost as much as deciding: every
//! header and metadata value copied into its own `String`, a map of metadata, and the whole
//! tree walked twice by the encoder (once to size it, once to write it), then dropped. Here an
//! allow is written once, into one buffer sized exactly, from the decision's own fields (tonic
//! then copies those bytes into its frame, as it copies any encoded message). The
//! bytes are the ones prost writes for the built message, field for field in the same order
//! (tests compare them byte for byte), so Envoy reads the same answer either way.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType};

use crate::decision::Allow;
use crate::proto::auth::CheckResponse;
use crate::proto::core::header_value_option::HeaderAppendAction;

/// Envoy's answer to one `Check`, as the server writes it.
// Moved once, into the response: boxing the message would cost every denial an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// A message built field by field: denials, and any other server's answer.
    Message(CheckResponse),
    /// An answer already encoded ([`allow`]).
    Encoded(Bytes),
}

/// An empty message, as prost's `Default` (which `Message` needs): it has no `status`, which
/// Envoy reads as OK. The server never answers with it.
impl Default for Answer {
    fn default() -> Self {
        Answer::Message(CheckResponse::default())
    }
}

impl From<CheckResponse> for Answer {
    fn from(message: CheckResponse) -> Self {
        Answer::Message(message)
    }
}

impl Answer {
    /// The answer as a message (encoded bytes are decoded: tests and tools read them so).
    pub fn into_message(self) -> Result<CheckResponse, prost::DecodeError> {
        match self {
            Answer::Message(message) => Ok(message),
            Answer::Encoded(bytes) => prost::Message::decode(bytes),
        }
    }
}

impl prost::Message for Answer {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            Answer::Message(message) => message.encode_raw(buf),
            Answer::Encoded(bytes) => buf.put_slice(bytes),
        }
    }

    /// Decoding (which the server never does) reads into a message.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        if let Answer::Encoded(bytes) = self {
            *self = Answer::Message(prost::Message::decode(bytes.clone())?);
        }
        match self {
            Answer::Message(message) => message.merge_field(tag, wire_type, buf, ctx),
            Answer::Encoded(_) => Ok(()),
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Answer::Message(message) => message.encoded_len(),
            Answer::Encoded(bytes) => bytes.len(),
        }
    }

    fn clear(&mut self) {
        *self = Answer::default();
    }
}

/// Field numbers of the messages an allow writes.
mod tag {
    /// `CheckResponse`
    pub const STATUS: u32 = 1;
    pub const OK_RESPONSE: u32 = 3;
    pub const DYNAMIC_METADATA: u32 = 4;
    /// `OkHttpResponse`
    pub const HEADERS: u32 = 2;
    pub const HEADERS_TO_REMOVE: u32 = 5;
    pub const RESPONSE_HEADERS_TO_ADD: u32 = 6;
    pub const QUERY_PARAMETERS_TO_REMOVE: u32 = 8;
    /// `HeaderValueOption`
    pub const HEADER: u32 = 1;
    pub const APPEND_ACTION: u32 = 3;
    /// `HeaderValue`
    pub const KEY: u32 = 1;
    pub const VALUE: u32 = 2;
    /// `Struct` (its map's entries), and a map entry's key and value
    pub const FIELDS: u32 = 1;
    pub const ENTRY_KEY: u32 = 1;
    pub const ENTRY_VALUE: u32 = 2;
    /// `Value`
    pub const NUMBER_VALUE: u32 = 2;
    pub const STRING_VALUE: u32 = 3;
    pub const STRUCT_VALUE: u32 = 5;
}

const APPEND_ACTION: u64 = HeaderAppendAction::OverwriteIfExistsOrAdd as u64;

fn varint_len(value: u64) -> usize {
    // 7 bits a byte; 0 still takes one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(mut value: u64, buf: &mut Vec<u8>) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

fn key_len(tag: u32) -> usize {
    varint_len(u64::from(tag) << 3)
}

fn put_key(tag: u32, wire_type: WireType, buf: &mut Vec<u8>) {
    put_varint((u64::from(tag) << 3) | wire_type as u64, buf);
}

/// A length-delimited field whose content takes `len` bytes.
fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + varint_len(len as u64) + len
}

fn put_delimited(tag: u32, len: usize, buf: &mut Vec<u8>) {
    put_key(tag, WireType::LengthDelimited, buf);
    put_varint(len as u64, buf);
}

fn put_str(tag: u32, text: &str, buf: &mut Vec<u8>) {
    put_delimited(tag, text.len(), buf);
    buf.extend_from_slice(text.as_bytes());
}

/// A repeated string field: every element written, empty or not.
fn repeated_str_len(tag: u32, texts: &[String]) -> usize {
    texts
        .iter()
        .map(|text| delimited_len(tag, text.len()))
        .sum()
}

/// A singular proto3 string: left out when empty.
fn singular_str_len(tag: u32, text: &str) -> usize {
    if text.is_empty() {
        0
    } else {
        delimited_len(tag, text.len())
    }
}

/// `HeaderValue { key, value }`'s length.
fn header_value_len(key: &str, value: &str) -> usize {
    singular_str_len(tag::KEY, key) + singular_str_len(tag::VALUE, value)
}

/// `HeaderValueOption { header, append_action: OVERWRITE_IF_EXISTS_OR_ADD }`'s length.
fn header_option_len(key: &str, value: &str) -> usize {
    delimited_len(tag::HEADER, header_value_len(key, value))
        + key_len(tag::APPEND_ACTION)
        + varint_len(APPEND_ACTION)
}

fn put_header_option(tag: u32, key: &str, value: &str, buf: &mut Vec<u8>) {
    put_delimited(tag, header_option_len(key, value), buf);
    put_delimited(tag::HEADER, header_value_len(key, value), buf);
    if !key.is_empty() {
        put_str(tag::KEY, key, buf);
    }
    if !value.is_empty() {
        put_str(tag::VALUE, value, buf);
    }
    put_key(tag::APPEND_ACTION, WireType::Varint, buf);
    put_varint(APPEND_ACTION, buf);
}

/// A metadata value: a `google.protobuf.Value`.
enum Meta<'a> {
    Text(&'a str),
    Number(f64),
    Struct(prost_types::Struct, usize),
}

impl Meta<'_> {
    /// The `Value` message's length.
    fn len(&self) -> usize {
        match self {
            Meta::Text(text) => delimited_len(tag::STRING_VALUE, text.len()),
            Meta::Number(_) => key_len(tag::NUMBER_VALUE) + 8,
            Meta::Struct(_, len) => delimited_len(tag::STRUCT_VALUE, *len),
        }
    }

    fn put(&self, buf: &mut Vec<u8>) {
        match self {
            Meta::Text(text) => put_str(tag::STRING_VALUE, text, buf),
            Meta::Number(number) => {
                put_key(tag::NUMBER_VALUE, WireType::SixtyFourBit, buf);
                buf.extend_from_slice(&number.to_le_bytes());
            }
            Meta::Struct(fields, len) => {
                put_delimited(tag::STRUCT_VALUE, *len, buf);
                prost::Message::encode_raw(fields, buf);
            }
        }
    }
}

/// A map entry `{ key, value }` of the metadata `Struct`.
fn entry_len(key: &str, value: &Meta<'_>) -> usize {
    delimited_len(tag::ENTRY_KEY, key.len()) + delimited_len(tag::ENTRY_VALUE, value.len())
}

/// An allow as `CheckResponse` bytes: status OK, the `ok_response` (headers set and removed,
/// query parameters removed, headers added to the client's response, the first of them the
/// trace when `trace` is set), and the dynamic metadata (policy, issuer, a dry run's would-be
/// denial, the claims), byte for byte what prost writes for the message
/// [`super::to_check_response`] builds.
pub fn allow(allow: &Allow, trace: Option<(&str, &str)>) -> Bytes {
    // The metadata's entries, in the order of their keys (a `Struct`'s map is sorted).
    let mut metadata: Vec<(&str, Meta<'_>)> = Vec::with_capacity(5);
    if let Some(claims) = &allow.claims {
        let fields = super::claims_struct(claims);
        let len = prost::Message::encoded_len(&fields);
        metadata.push(("claims", Meta::Struct(fields, len)));
    }
    if let Some(deny) = &allow.dry_run {
        metadata.push(("dry_run", Meta::Text(deny.reason.as_str())));
        metadata.push(("dry_run_status", Meta::Number(f64::from(deny.status))));
    }
    if let Some(issuer) = &allow.issuer {
        metadata.push(("issuer", Meta::Text(issuer)));
    }
    if let Some(policy) = &allow.policy {
        metadata.push(("policy", Meta::Text(policy)));
    }
    debug_assert!(metadata.is_sorted_by_key(|(key, _)| *key));

    let response_headers = || {
        trace
            .into_iter()
            .chain(allow.response_headers.iter().map(|(k, v)| (*k, v.as_str())))
    };
    let ok_len = allow
        .headers_to_set
        .iter()
        .map(|(k, v)| delimited_len(tag::HEADERS, header_option_len(k, v)))
        .sum::<usize>()
        + repeated_str_len(tag::HEADERS_TO_REMOVE, &allow.headers_to_remove)
        + response_headers()
            .map(|(k, v)| delimited_len(tag::RESPONSE_HEADERS_TO_ADD, header_option_len(k, v)))
            .sum::<usize>()
        + repeated_str_len(
            tag::QUERY_PARAMETERS_TO_REMOVE,
            &allow.query_params_to_remove,
        );
    let metadata_len = metadata
        .iter()
        .map(|(key, value)| delimited_len(tag::FIELDS, entry_len(key, value)))
        .sum::<usize>();
    let len = delimited_len(tag::STATUS, 0)
        + delimited_len(tag::OK_RESPONSE, ok_len)
        + if metadata.is_empty() {
            0
        } else {
            delimited_len(tag::DYNAMIC_METADATA, metadata_len)
        };

    let mut buf = Vec::with_capacity(len);
    // `status { code: OK }`: every field at its default, so an empty message.
    put_delimited(tag::STATUS, 0, &mut buf);
    put_delimited(tag::OK_RESPONSE, ok_len, &mut buf);
    for (k, v) in &allow.headers_to_set {
        put_header_option(tag::HEADERS, k, v, &mut buf);
    }
    for name in &allow.headers_to_remove {
        put_str(tag::HEADERS_TO_REMOVE, name, &mut buf);
    }
    for (k, v) in response_headers() {
        put_header_option(tag::RESPONSE_HEADERS_TO_ADD, k, v, &mut buf);
    }
    for name in &allow.query_params_to_remove {
        put_str(tag::QUERY_PARAMETERS_TO_REMOVE, name, &mut buf);
    }
    if !metadata.is_empty() {
        put_delimited(tag::DYNAMIC_METADATA, metadata_len, &mut buf);
        for (key, value) in &metadata {
            put_delimited(tag::FIELDS, entry_len(key, value), &mut buf);
            put_str(tag::ENTRY_KEY, key, &mut buf);
            put_delimited(tag::ENTRY_VALUE, value.len(), &mut buf);
            value.put(&mut buf);
        }
    }
    debug_assert_eq!(buf.len(), len);
    Bytes::from(buf)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use prost::Message as _;
    use serde_json::Value;

    use super::*;
    use crate::decision::{ClaimSet, Decision, Deny, Reason};
    use crate::trace::Trace;

    /// Any JSON a token's claims can hold: nested objects and lists, numbers of every kind.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(".{0,12}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn claims() -> impl Strategy<Value = ClaimSet> {
        (prop::collection::btree_map(".{0,12}", json(), 0..6), 0..4u8).prop_map(|(map, form)| {
            let map: serde_json::Map<String, Value> = map.into_iter().collect();
            let text = || -> Arc<str> { Value::Object(map.clone()).to_string().into() };
            match form {
                0 => ClaimSet::Parsed(Arc::new(map)),
                1 => ClaimSet::Json(text()),
                // A cache hit: the JSON, and the claims expressions read kept parsed.
                2 => ClaimSet::Cached {
                    json: text(),
                    read: Arc::new(map.into_iter().take(2).collect()),
                },
                // Text that is not a JSON object: an empty `Struct` either way.
                _ => ClaimSet::Json(format!("[{}", text()).into()),
            }
        })
    }

    fn dry_run() -> impl Strategy<Value = Box<Deny>> {
        (0..Reason::ALL.len(), 100u16..600).prop_map(|(reason, status)| {
            match crate::engine::deny(None, "", Reason::ALL[reason], String::new(), None, None) {
                Decision::Deny(mut deny) => {
                    deny.status = status;
                    Box::new(deny)
                }
                Decision::Allow(_) => unreachable!("deny() denies"),
            }
        })
    }

    /// Names and values of every length: empty (a singular field left out), and past 127 and
    /// 16,383 bytes (lengths of two and three bytes).
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => ".{0,40}",
            1 => Just(String::new()),
            1 => "[a-z]{120,300}",
            1 => (16_300usize..16_500).prop_map(|n| "v".repeat(n)),
        ]
    }

    prop_compose! {
        fn allows()(
            policy in prop::option::of(prop_oneof![".{0,60}", "[a-z/-]{128,200}"]),
            issuer in prop::option::of(text()),
            headers_to_set in prop::collection::vec((text(), text()), 0..4),
            headers_to_remove in prop::collection::vec(text(), 0..4),
            query_params_to_remove in prop::collection::vec(text(), 0..3),
            response_headers in prop::collection::vec(
                (prop::sample::select(vec!["dpop-nonce", "", "x-other"]), text()), 0..3),
            claims in prop::option::of(claims()),
            dry_run in prop::option::of(dry_run()),
            trace in prop::option::of((any::<bool>(), ".{0,80}")),
        ) -> Allow {
            Allow {
                policy: policy.map(Into::into),
                issuer,
                headers_to_set,
                headers_to_remove,
                query_params_to_remove,
                response_headers,
                claims,
                dry_run,
                trace: trace.map(|(expose, detail)| {
                    let mut trace = Trace::on();
                    trace.expose = expose;
                    trace.pass("token", || detail);
                    Arc::new(trace)
                }),
                ..Allow::default()
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// The encoded allow is, byte for byte, what prost writes for the built message, and
        /// reads back as that message.
        #[test]
        fn an_encoded_allow_is_the_built_message_byte_for_byte(allow in allows()) {
            let decision = Decision::Allow(allow);
            let built = crate::authz::to_check_response(&decision);
            let Answer::Encoded(bytes) = crate::authz::to_answer(&decision) else {
                panic!("an allow is encoded");
            };
            let expected = built.encode_to_vec();
            prop_assert_eq!(bytes.as_ref(), expected.as_slice());
            prop_assert_eq!(CheckResponse::decode(bytes.clone())?, built);
            let answer = Answer::Encoded(bytes);
            prop_assert_eq!(answer.encoded_len(), answer.encode_to_vec().len());
        }
    }

    #[test]
    fn varint_lengths_match_the_encoding() {
        for value in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut buf = Vec::new();
            put_varint(value, &mut buf);
            assert_eq!(buf.len(), varint_len(value), "{value}");
            assert_eq!(
                prost::encoding::decode_varint(&mut buf.as_slice()).ok(),
                Some(value)
            );
        }
    }

    /// A denial stays a built message; both forms read back the same through `into_message`.
    #[test]
    fn a_denial_is_built_and_both_forms_read_back() {
        let denial =
            crate::engine::deny(None, "", Reason::TokenExpired, "expired".into(), None, None);
        let Answer::Message(built) = crate::authz::to_answer(&denial) else {
            panic!("a denial is built");
        };
        assert_eq!(
            Answer::Encoded(built.encode_to_vec().into())
                .into_message()
                .ok(),
            Some(built)
        );
    }
}

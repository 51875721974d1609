use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::*;
use crate::engine::Headers;
use crate::fixtures::client_certificate;

fn claims(json: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match json {
        serde_json::Value::Object(map) => map,
        _ => panic!("test claims must be an object"),
    }
}

struct Req {
    headers: HashMap<String, String>,
    list: Vec<(String, String)>,
    query: Option<&'static str>,
}

impl Req {
    fn new(headers: &[(&str, &str)], query: Option<&'static str>) -> Req {
        Req {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            list: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            query,
        }
    }
    fn view(&self, list: bool) -> RequestView<'_> {
        RequestView {
            method: "POST",
            host: "api.example.com",
            path: "/orders/7",
            query: self.query,
            headers: if list {
                Headers::List(&self.list)
            } else {
                Headers::Map(&self.headers)
            },
            address: Some("10.0.0.7"),
            principal: None,
            certificate: None,
        }
    }
}

fn eval(source: &str, c: serde_json::Value, req: &Req) -> Result<bool, EvalError> {
    let e = compile(source, Kind::Condition).expect("compiles");
    let env = Environment::new([&e]);
    let c = claims(c);
    let inputs = Inputs::new(
        &e.reads,
        Some(&c),
        &req.view(true),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    );
    e.condition(&env.scope(&inputs))
}

#[test]
fn conditions_decide_on_claims_and_request() {
    let req = Req::new(
        &[("x-tenant", "acme"), ("x-api-version", "2")],
        Some("v=3&tool=search+all"),
    );
    let token = serde_json::json!({
        "tenants": ["acme", "globex"], "roles": ["reader"], "scope": "orders.read orders.write",
        "age": 42, "exp": 1_900_000_000, "nested": {"level": {"deep": true}}
    });
    let cases: &[(&str, bool)] = &[
        ("request.headers['x-tenant'] in claims.tenants", true),
        (
            "'admin' in claims.roles || 'orders.write' in claims.scope.split(' ')",
            true,
        ),
        (
            "'admin' in claims.roles && 'orders.write' in claims.scope.split(' ')",
            false,
        ),
        ("claims.age >= 18 && claims.age < 65", true),
        ("int(request.headers['x-api-version']) >= 2", true),
        (
            "request.method == 'POST' && request.path.startsWith('/orders/')",
            true,
        ),
        ("request.host.endsWith('.example.com')", true),
        (
            "request.query.v == '3' && request.query.tool == 'search all'",
            true,
        ),
        (
            "has(claims.nested.level.deep) && claims.nested.level.deep",
            true,
        ),
        ("has(claims.missing)", false),
        ("claims.roles.exists(r, r.startsWith('read'))", true),
        ("claims.tenants.all(t, t.matches('^[a-z]+$'))", true),
        ("size(claims.tenants) == 2", true),
        (
            "sets.intersects(claims.tenants, ['globex', 'initech'])",
            true,
        ),
        (
            "timestamp(int(claims.exp)) > now && timestamp(claims.exp) > now",
            true,
        ),
        ("now - duration('1h') < now", true),
        ("source.address == '10.0.0.7'", true),
        (
            "claims.scope.split(' ').filter(s, s.startsWith('orders.')).size() == 2",
            true,
        ),
        ("request.headers['x-tenant'].lowerAscii() == 'acme'", true),
        ("!('x-debug' in request.headers)", true),
    ];
    for (source, want) in cases {
        assert_eq!(eval(source, token.clone(), &req), Ok(*want), "{source}");
    }
}

#[test]
fn evaluation_errors_are_errors_not_values() {
    let req = Req::new(&[], None);
    // A missing key is an error, which a condition treats as failed: never as true.
    assert!(matches!(
        eval("claims.tenant == 'acme'", serde_json::json!({}), &req),
        Err(EvalError::Failed(_))
    ));
    assert!(matches!(
        eval("!(claims.tenant == 'acme')", serde_json::json!({}), &req),
        Err(EvalError::Failed(_))
    ));
    assert!(eval("claims.n / 0 == 1", serde_json::json!({"n": 1}), &req).is_err());
}

#[test]
fn type_errors_are_compile_errors() {
    let cases: &[(&str, &str)] = &[
        ("request.method + 1", "cannot add"),
        ("request.methd == 'GET'", "request has no field \"methd\""),
        ("clamis.sub == 'x'", "undeclared reference to \"clamis\""),
        ("request.method == 1", "never true"),
        ("request.headers['X-Tenant'] == 'a'", "lower-case names"),
        ("claims.sub.matches(request.path)", "literal pattern"),
        ("claims.sub.matches('(')", "matches()"),
        ("request.method", "not a bool"),
        ("claims.sub.frobnicate()", "unknown function .frobnicate()"),
        ("timestamp('yesterday') < now", "not a valid timestamp"),
        ("request.method.size() > 1 &&", "does not parse"),
        ("1 in request.method", "`in` needs a list or a map"),
        ("google.protobuf.Int64Value{value: 1} == 1", "not supported"),
    ];
    for (source, want) in cases {
        let error = compile(source, Kind::Condition)
            .expect_err(source)
            .to_string();
        assert!(error.contains(want), "{source}: {error}");
    }
    assert!(
        compile("request.method == 'GET'", Kind::Header)
            .expect_err("a bool is not a header")
            .to_string()
            .contains("not a string")
    );
}

#[test]
fn cost_limit_refuses_nested_comprehensions_over_claims() {
    let cheap = compile("claims.roles.exists(r, r == 'admin')", Kind::Condition).expect("cheap");
    assert!(cheap.cost < 20_000, "{}", cheap.cost);
    let nested = compile(
        "claims.a.exists(x, claims.b.exists(y, claims.c.exists(z, x == y && y == z)))",
        Kind::Condition,
    );
    assert!(matches!(nested, Err(CheckError::Cost { .. })), "{nested:?}");
    let typical = compile(
        "request.headers['x-tenant'] in claims.tenants && ('admin' in claims.roles || 'orders.write' in claims.scope.split(' '))",
        Kind::Condition,
    )
    .expect("typical");
    assert!(typical.cost < limits::COST / 10, "{}", typical.cost);
    assert!(matches!(
        compile(&"a".repeat(limits::SOURCE + 1), Kind::Condition),
        Err(CheckError::TooLong(_))
    ));
}

#[test]
fn reads_name_only_what_is_read() {
    let e = compile(
        "request.headers['x-tenant'] in claims.tenants && has(claims.org) && 'v' in request.query",
        Kind::Condition,
    )
    .expect("compiles");
    assert_eq!(
        e.reads.claims,
        Keys::Named(["org".to_string(), "tenants".to_string()].into())
    );
    assert_eq!(
        e.reads.headers,
        Keys::Named(["x-tenant".to_string()].into())
    );
    assert_eq!(e.reads.query, Keys::Named(["v".to_string()].into()));
    assert!(!e.reads.method && !e.reads.source && !e.reads.now);
    let all = compile("claims.exists(k, k.startsWith('x'))", Kind::Condition).expect("compiles");
    assert_eq!(all.reads.claims, Keys::All);
    // A comprehension variable named like a variable is not the variable.
    let shadow = compile("[1].exists(request, request == 1)", Kind::Condition).expect("compiles");
    assert!(shadow.reads.headers.is_none() && !shadow.reads.method);
}

#[test]
fn ambiguous_or_oversized_inputs_fail_the_expression() {
    let token = serde_json::json!({"tenants": ["acme"]});
    // A query parameter sent twice: the upstream may read either value.
    let twice = Req::new(&[], Some("v=1&v=2"));
    assert!(matches!(
        eval("request.query.v == '1'", token.clone(), &twice),
        Err(EvalError::Input(_))
    ));
    // ... but only when the expression reads it.
    assert_eq!(
        eval("'acme' in claims.tenants", token.clone(), &twice),
        Ok(true)
    );
    // A header sent twice (one line each).
    let dup = Req::new(&[("x-tenant", "acme"), ("x-tenant", "evil")], None);
    assert!(matches!(
        eval("request.headers['x-tenant'] == 'acme'", token.clone(), &dup),
        Err(EvalError::Input(_))
    ));
    let long: Vec<serde_json::Value> = (0..=limits::LIST).map(|i| i.into()).collect();
    assert!(matches!(
        eval(
            "size(claims.big) > 0",
            serde_json::json!({"big": long}),
            &Req::new(&[], None)
        ),
        Err(EvalError::Input(_))
    ));
}

#[test]
fn anonymous_requests_have_no_claims() {
    let e = compile("claims.sub == 'x'", Kind::Condition).expect("compiles");
    let env = Environment::new([&e]);
    let req = Req::new(&[], None);
    let inputs = Inputs::new(&e.reads, None, &req.view(false), SystemTime::now());
    assert!(matches!(
        e.condition(&env.scope(&inputs)),
        Err(EvalError::Input(_))
    ));
}

#[test]
fn headers_are_strings_a_header_can_carry() {
    let token = claims(serde_json::json!({"sub": "u1", "tid": "t9", "bad": "a\nb", "n": 3}));
    let req = Req::new(&[], None);
    let view = req.view(false);
    let run = |source: &str| {
        let e = compile(source, Kind::Header).expect("compiles");
        let env = Environment::new([&e]);
        let inputs = Inputs::new(&e.reads, Some(&token), &view, SystemTime::now());
        e.header(&env.scope(&inputs))
    };
    assert_eq!(
        run("claims.tid + '/' + claims.sub"),
        Ok("t9/u1".to_string())
    );
    assert!(matches!(run("claims.bad"), Err(EvalError::Input(_))));
    assert!(matches!(
        run("claims.n"),
        Err(EvalError::Type("an int", "string"))
    ));
}

#[test]
fn explain_shows_inputs() {
    let e = compile(
        "request.headers['x-tenant'] in claims.tenants",
        Kind::Condition,
    )
    .expect("compiles");
    let token = claims(serde_json::json!({"tenants": ["acme"]}));
    let req = Req::new(&[("x-tenant", "acme")], None);
    let inputs = Inputs::new(&e.reads, Some(&token), &req.view(false), SystemTime::now());
    assert_eq!(
        e.describe_inputs(&inputs),
        "request.headers[\"x-tenant\"] = \"acme\", claims.tenants = [\"acme\"]"
    );
}

/// Evaluates a condition (or, with `Kind::Header`, a header) for a request whose client
/// sent `certificate`.
fn eval_with_certificate(
    source: &str,
    kind: Kind,
    certificate: Option<&str>,
) -> Result<String, EvalError> {
    let e = compile(source, kind).expect("compiles");
    let env = Environment::new([&e]);
    let req = Req::new(&[], None);
    let view = RequestView {
        certificate,
        ..req.view(false)
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let inputs = Inputs::new(&e.reads, None, &view, now);
    let scope = env.scope(&inputs);
    match kind {
        Kind::Condition => e.condition(&scope).map(|b| b.to_string()),
        Kind::Header => e.header(&scope),
        Kind::Tenant => panic!("certificate expressions are conditions or headers"),
    }
}

#[test]
fn certificate_fields_decide_conditions_and_fill_headers() {
    let (encoded, digest) = client_certificate(&["billing.partners.example"]);
    let cert = Some(encoded.as_str());
    let cases = [
        "has(source.certificate)",
        "source.certificate.dnsNames.exists(n, n.endsWith('.partners.example'))",
        "source.certificate.dnsNames == ['billing.partners.example']",
        "'spiffe://partners.example/billing' in source.certificate.uris",
        "source.certificate.emails == ['ops@partners.example']",
        "source.certificate.ips == ['192.0.2.7']",
        "source.certificate.subject == 'CN=billing-client,O=Partners'",
        "source.certificate.issuer == source.certificate.subject",
        "source.certificate.notBefore < now && now < source.certificate.notAfter",
        "source.certificate.notAfter == timestamp('2030-01-01T00:00:00Z')",
        "source.certificate.serial == '0a'",
        "size(source.certificate.fingerprint) == 64 && size(source.certificate.thumbprint) == 43",
    ];
    for source in cases {
        assert_eq!(
            eval_with_certificate(source, Kind::Condition, cert),
            Ok("true".into()),
            "{source}"
        );
    }
    assert_eq!(
        eval_with_certificate(
            "source.certificate.dnsNames.exists(n, n.endsWith('.other.example'))",
            Kind::Condition,
            cert
        ),
        Ok("false".into())
    );
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        eval_with_certificate("source.certificate.fingerprint", Kind::Header, cert),
        Ok(hex)
    );
    use base64::Engine as _;
    assert_eq!(
        eval_with_certificate("source.certificate.thumbprint", Kind::Header, cert),
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest))
    );
}

#[test]
fn without_a_certificate_its_fields_fail_and_has_is_false() {
    assert_eq!(
        eval_with_certificate("has(source.certificate)", Kind::Condition, None),
        Ok("false".into())
    );
    assert_eq!(
        eval_with_certificate(
            "!has(source.certificate) || source.certificate.subject == 'CN=x'",
            Kind::Condition,
            None
        ),
        Ok("true".into())
    );
    // Reading a field fails: a condition denies even when negated, a header is removed.
    for source in [
        "source.certificate.subject == 'CN=billing-client,O=Partners'",
        "source.certificate.subject != 'CN=blocked'",
        "!source.certificate.dnsNames.exists(n, n == 'blocked.example')",
        "size(source.certificate.uris) == 0",
    ] {
        assert!(
            matches!(
                eval_with_certificate(source, Kind::Condition, None),
                Err(EvalError::Failed(_))
            ),
            "{source}"
        );
    }
    assert!(eval_with_certificate("source.certificate.fingerprint", Kind::Header, None).is_err());
}

#[test]
fn a_malformed_certificate_fails_only_the_expressions_that_read_it() {
    let (encoded, _) = client_certificate(&["billing.partners.example"]);
    let truncated = &encoded[..encoded.len() / 2];
    let oversized = "A".repeat(limits::CERTIFICATE + 1);
    for (bad, why) in [
        (truncated, "not one PEM certificate"),
        ("not a certificate", "not one PEM certificate"),
        (oversized.as_str(), "at most 16384"),
    ] {
        for source in [
            "has(source.certificate)",
            "!has(source.certificate)",
            "source.certificate.subject != 'CN=blocked'",
        ] {
            match eval_with_certificate(source, Kind::Condition, Some(bad)) {
                Err(EvalError::Input(e)) => assert!(e.contains(why), "{source}: {e}"),
                other => panic!("{source}: {other:?}"),
            }
        }
        // An expression that does not read the certificate does not parse it.
        assert_eq!(
            eval_with_certificate("source.address == '10.0.0.7'", Kind::Condition, Some(bad)),
            Ok("true".into())
        );
    }
    // More names than the evaluation bounds allow.
    let many: Vec<String> = (0..=limits::LIST).map(|i| format!("n{i}.x")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let (crowded, _) = client_certificate(&many);
    match eval_with_certificate(
        "size(source.certificate.dnsNames) > 0",
        Kind::Condition,
        Some(&crowded),
    ) {
        Err(EvalError::Input(e)) => assert!(e.contains("more than 1024 DNS names"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn certificate_fields_are_checked_and_estimated() {
    let cases: &[(&str, &str)] = &[
        (
            "source.certificate.subjct == 'x'",
            "source.certificate has no field \"subjct\" (fields: subject, issuer, dnsNames, uris, emails, ips, fingerprint, thumbprint, notBefore, notAfter, serial)",
        ),
        (
            "source.certifcate.subject == 'x'",
            "source has no field \"certifcate\" (fields: address, principal, certificate)",
        ),
        ("source.certificate.notAfter == 'x'", "never true"),
        ("source.certificate.dnsNames + 1 == 1", "cannot add"),
        ("source.certificate.subject", "not a bool"),
    ];
    for (source, want) in cases {
        let error = compile(source, Kind::Condition)
            .expect_err(source)
            .to_string();
        assert!(error.contains(want), "{source}: {error}");
    }
    let reads = |source: &str| compile(source, Kind::Condition).expect(source).reads;
    let address = reads("source.address == '10.0.0.7'");
    assert!(address.source && !address.certificate);
    for source in [
        "has(source.certificate)",
        "source.certificate.subject == 'x'",
        "'a' in source.certificate.dnsNames",
    ] {
        let r = reads(source);
        assert!(r.source && r.certificate, "{source}");
    }
    let exists = compile(
        "source.certificate.dnsNames.exists(n, n.endsWith('.partners.example'))",
        Kind::Condition,
    )
    .expect("compiles");
    assert!(exists.cost < 20_000, "{}", exists.cost);
}

#[test]
fn explain_shows_certificate_fields() {
    let (encoded, _) = client_certificate(&["billing.partners.example"]);
    let e = compile(
        "source.certificate.dnsNames.exists(n, n.endsWith('.partners.example')) && source.certificate.subject != ''",
        Kind::Condition,
    )
    .expect("compiles");
    let req = Req::new(&[], None);
    let view = RequestView {
        certificate: Some(&encoded),
        ..req.view(false)
    };
    let inputs = Inputs::new(&e.reads, None, &view, SystemTime::now());
    assert_eq!(
        e.describe_inputs(&inputs),
        "source.certificate.dnsNames = [\"billing.partners.example\"], \
         source.certificate.subject = \"CN=billing-client,O=Partners\""
    );
    let absent = Inputs::new(&e.reads, None, &req.view(false), SystemTime::now());
    assert_eq!(
        e.describe_inputs(&absent),
        "source.certificate.dnsNames = (absent), source.certificate.subject = (absent)"
    );
}

#[test]
fn the_documented_examples_compile() {
    let doc = include_str!("../../docs/cel.md");
    let mut count = 0;
    for block in doc
        .split("```cel\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
    {
        for line in block.lines().filter(|l| !l.trim().is_empty()) {
            let expression = line.rsplit_once(" //").map_or(line, |(e, _)| e).trim();
            // The admitTenants examples see `tenant` alone.
            let kind = if expression.starts_with("tenant") {
                Kind::Tenant
            } else {
                Kind::Condition
            };
            compile(expression, kind).unwrap_or_else(|e| panic!("{expression}: {e}"));
            count += 1;
        }
    }
    assert!(count >= 9, "{count} examples");
}

mod hostile {
    //! Claims, headers, query strings and certificates a client controls never make an
    //! expression panic, and never turn an evaluation error into a value.
    use proptest::prelude::*;

    use super::*;

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            ".{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z]{1,3}", inner, 0..4)
                    .prop_map(|m| { serde_json::Value::Object(m.into_iter().collect()) }),
            ]
        })
    }

    const EXPRESSIONS: &[&str] = &[
        "request.headers['x-tenant'] in claims.tenants",
        "'admin' in claims.roles || 'orders.write' in claims.scope.split(' ')",
        "claims.tenants.exists(t, t.startsWith(request.headers['x-tenant']))",
        "size(claims.roles) > 0 && claims.roles.all(r, r.matches('^[a-z]+$'))",
        "timestamp(claims.exp) > now && int(claims.n) + 1 > 0",
        "claims.a.b.c == request.query.v",
        "sets.intersects(claims.roles, ['a', 'b']) && claims.scope.lowerAscii().trim() != ''",
        "claims.scope.split(' ').filter(s, s.endsWith('.read')).size() < 3",
        "string(claims.n) + claims.scope == request.headers['x-tenant']",
        "has(source.certificate) && source.certificate.dnsNames.exists(n, n == request.headers['x-tenant'])",
    ];

    /// Expressions of the kinds plans cover, built at random: strings, lists, ints and the
    /// conditions over them, with operands of the wrong type now and then.
    fn expression() -> impl Strategy<Value = String> {
        let strings = prop_oneof![
            Just("'a'".to_string()),
            Just("'admin'".to_string()),
            Just("''".to_string()),
            Just("'x y'".to_string()),
            Just("claims.sub".to_string()),
            Just("claims.scope".to_string()),
            Just("claims.tenants[0]".to_string()),
            Just("claims['sub']".to_string()),
            Just("request.headers['x-tenant']".to_string()),
            Just("request.method".to_string()),
            Just("request.path".to_string()),
            Just("request.query.v".to_string()),
            Just("source.address".to_string()),
        ];
        let strings = strings.prop_recursive(2, 8, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} + {b})")),
                (inner.clone(), inner).prop_map(|(a, b)| format!("(true ? {a} : {b})")),
            ]
        });
        let lists = prop_oneof![
            Just("claims.roles".to_string()),
            Just("claims.tenants".to_string()),
            Just("claims.n".to_string()),
            Just("['a', 'admin', 'b']".to_string()),
            Just("[1, 2]".to_string()),
            Just("[]".to_string()),
            strings.clone().prop_map(|s| format!("{s}.split(' ')")),
            strings
                .clone()
                .prop_map(|s| format!("claims.roles.map(r, r + {s})")),
            strings
                .clone()
                .prop_map(|s| format!("claims.roles.filter(r, r != {s})")),
        ];
        let ints = prop_oneof![
            Just("1".to_string()),
            Just("-3".to_string()),
            Just("0u".to_string()),
            Just("claims.n".to_string()),
            Just("claims.exp".to_string()),
            lists.clone().prop_map(|l| format!("size({l})")),
            strings.clone().prop_map(|s| format!("{s}.size()")),
        ];
        let leaves = prop_oneof![
            (strings.clone(), strings.clone()).prop_map(|(a, b)| format!("{a} == {b}")),
            (strings.clone(), strings.clone()).prop_map(|(a, b)| format!("{a} != {b}")),
            (strings.clone(), strings.clone()).prop_map(|(a, b)| format!("{a} < {b}")),
            (strings.clone(), lists.clone()).prop_map(|(a, l)| format!("{a} in {l}")),
            (ints.clone(), lists.clone()).prop_map(|(a, l)| format!("{a} in {l}")),
            (strings.clone(), strings.clone()).prop_map(|(a, b)| format!("{a}.startsWith({b})")),
            (strings.clone(), strings.clone()).prop_map(|(a, b)| format!("{a}.endsWith({b})")),
            (strings.clone(), strings.clone()).prop_map(|(a, b)| format!("{a}.contains({b})")),
            (ints.clone(), ints.clone()).prop_map(|(a, b)| format!("{a} <= {b}")),
            (ints.clone(), ints.clone()).prop_map(|(a, b)| format!("{a} + {b} > {b}")),
            (lists.clone(), strings.clone()).prop_map(|(l, s)| format!("{l}.exists(x, x == {s})")),
            (lists.clone(), strings.clone())
                .prop_map(|(l, s)| format!("{l}.all(x, x.startsWith({s}))")),
            (lists.clone(), strings.clone())
                .prop_map(|(l, s)| format!("{l}.exists_one(x, x == {s})")),
            strings
                .clone()
                .prop_map(|s| format!("{s}.matches('^[a-z]+$')")),
            strings.clone().prop_map(|s| format!("'admin' in {s}")),
            Just("has(claims.sub)".to_string()),
            Just("has(claims.a.b)".to_string()),
            Just("has(request.headers.x)".to_string()),
            Just("claims.flag".to_string()),
            Just("claims.a.b == 'c'".to_string()),
            Just("'x-tenant' in request.headers".to_string()),
            Just("claims.flag == null".to_string()),
        ];
        leaves.prop_recursive(3, 16, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} && {b})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} || {b})")),
                inner.clone().prop_map(|a| format!("!({a})")),
                (inner.clone(), inner.clone(), inner)
                    .prop_map(|(a, b, c)| format!("({a} ? {b} : {c})")),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Where a plan decides, the interpreter decides the same; the plan decides most of
        /// these expressions.
        #[test]
        fn plans_decide_as_the_interpreter(
            source in expression(),
            claims in prop::collection::btree_map(
                prop_oneof![Just("sub".to_string()), Just("scope".to_string()),
                    Just("roles".to_string()), Just("tenants".to_string()),
                    Just("n".to_string()), Just("exp".to_string()), Just("flag".to_string()),
                    Just("a".to_string())],
                prop_oneof![
                    3 => prop_oneof![Just("admin"), Just("a"), Just(""), Just("x y"), Just("b")]
                        .prop_map(serde_json::Value::from),
                    2 => prop::collection::vec(
                        prop_oneof![Just("admin"), Just("a"), Just("x y"), Just("b")], 0..4)
                        .prop_map(serde_json::Value::from),
                    1 => json_value(),
                ],
                0..8,
            ),
            header in prop_oneof![Just("a"), Just("admin"), Just(""), Just("x y")],
            query in prop_oneof![Just("v=a"), Just("v=admin"), Just(""), Just("v=1&v=2")],
        ) {
            let Ok(e) = compile(&source, Kind::Condition) else {
                return Ok(());
            };
            let claims: serde_json::Map<String, serde_json::Value> = claims.into_iter().collect();
            let headers = vec![("x-tenant".to_string(), header.to_string())];
            let view = RequestView {
                method: "GET",
                host: "api.example.com",
                path: "/a",
                query: Some(query),
                headers: Headers::List(&headers),
                address: Some("10.0.0.7"),
                principal: None,
                certificate: None,
            };
            let env = Environment::new([&e]);
            let inputs = Inputs::new(&e.reads, Some(&claims), &view, SystemTime::now());
            let scope = env.scope(&inputs);
            let by_interpreter = e.run(&scope);
            if let Some(plan) = &e.plan
                && inputs.gate(&e.reads).is_ok()
                && let Ok(planned) = plan::eval(plan, &inputs, &e.regexes)
            {
                let by_interpreter = by_interpreter.map_err(|err| format!("{err}"));
                match planned {
                    plan::V::Bool(b) => prop_assert_eq!(
                        by_interpreter,
                        Ok(Value::Bool(b)),
                        "{}", source
                    ),
                    other => prop_assert!(
                        by_interpreter.is_err() || !matches!(by_interpreter, Ok(Value::Bool(_))),
                        "{}: the plan gave {:?}", source, other
                    ),
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn hostile_inputs_never_panic(
            claims in prop::collection::btree_map(
                prop_oneof![Just("tenants".to_string()), Just("roles".to_string()),
                    Just("scope".to_string()), Just("exp".to_string()), Just("n".to_string()),
                    Just("a".to_string()), "[a-z]{1,4}"],
                json_value(),
                0..8,
            ),
            header in ".{0,16}",
            query in "[a-z=&%+0-9]{0,24}",
            certificate in "(-----BEGIN CERTIFICATE-----)?[A-Za-z0-9%+/= \n-]{0,48}",
        ) {
            let claims: serde_json::Map<String, serde_json::Value> = claims.into_iter().collect();
            let headers = vec![("x-tenant".to_string(), header)];
            let view = RequestView {
                method: "GET",
                host: "api.example.com",
                path: "/",
                query: Some(&query),
                headers: Headers::List(&headers),
                address: None,
                principal: None,
                certificate: Some(&certificate),
            };
            for source in EXPRESSIONS {
                let e = compile(source, Kind::Condition).expect("compiles");
                let env = Environment::new([&e]);
                let inputs = Inputs::new(&e.reads, Some(&claims), &view, SystemTime::now());
                // Ok(bool) or a typed error; a panic fails the test.
                let _ = e.condition(&env.scope(&inputs));
            }
        }
    }
}

/// The conditions and headers docs/cel.md shows are evaluated by their plans, not by the
/// interpreter.
#[test]
fn typical_expressions_are_decided_by_their_plans() {
    let token = claims(serde_json::json!({
        "sub": "user-1",
        "tenants": ["acme", "globex"],
        "roles": ["reader"],
        "scope": "orders.read orders.write",
        "groups": ["team-a", "team-b"],
        "email_verified": true,
        "acr": 2,
    }));
    let req = Req::new(
        &[("x-tenant", "acme"), ("x-api-version", "2")],
        Some("tool=search"),
    );
    let view = req.view(true);
    let cases: &[(&str, Kind, &str)] = &[
        (
            "request.headers['x-tenant'] in claims.tenants && ('admin' in claims.roles || 'orders.write' in claims.scope.split(' '))",
            Kind::Condition,
            "true",
        ),
        (
            "claims.groups.exists(g, g.startsWith('team-'))",
            Kind::Condition,
            "true",
        ),
        (
            "claims.email_verified && claims.acr >= 2",
            Kind::Condition,
            "true",
        ),
        (
            "request.method == 'POST' && request.path.startsWith('/orders/')",
            Kind::Condition,
            "true",
        ),
        (
            "request.query.tool in ['search', 'fetch']",
            Kind::Condition,
            "true",
        ),
        (
            "has(claims.act) || request.headers['x-api-version'] != '1'",
            Kind::Condition,
            "true",
        ),
        (
            "request.headers['x-tenant'] + '/' + claims.sub",
            Kind::Header,
            "acme/user-1",
        ),
        (
            "claims.tenants.size() > 1 ? 'multi' : claims.tenants[0]",
            Kind::Header,
            "multi",
        ),
    ];
    for (source, kind, want) in cases {
        let e = compile(source, *kind).expect("compiles");
        let plan = e
            .plan
            .as_ref()
            .unwrap_or_else(|| panic!("{source}: no plan"));
        let env = Environment::new([&e]);
        let inputs = Inputs::new(&e.reads, Some(&token), &view, SystemTime::now());
        let got = match plan::eval(plan, &inputs, &e.regexes) {
            Ok(plan::V::Bool(b)) => b.to_string(),
            Ok(plan::V::Str(s)) => s.into_owned(),
            other => panic!("{source}: the plan gave {other:?}"),
        };
        assert_eq!(&got, want, "{source}");
        let scope = env.scope(&inputs);
        match kind {
            Kind::Condition => {
                assert_eq!(e.condition(&scope).expect("evaluates").to_string(), *want)
            }
            Kind::Header => assert_eq!(e.header(&scope).expect("evaluates"), *want),
            Kind::Tenant => panic!("{source}: tenant expressions have no plan"),
        }
    }
}

#[test]
fn a_tenant_expression_sees_only_the_tenant() {
    let admits = |source: &str, tenant: &str| {
        let e = compile(source, Kind::Tenant).expect(source);
        let env = Environment::new([&e]);
        e.admits(&env, tenant)
    };
    let prefix = "tenant.startsWith('cust-') && size(tenant) <= 12";
    assert_eq!(admits(prefix, "cust-1"), Ok(true));
    assert_eq!(admits(prefix, "acme"), Ok(false));
    assert_eq!(admits(prefix, "cust-123456789"), Ok(false));
    let pattern =
        "tenant.matches('^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$')";
    assert_eq!(
        admits(pattern, "72f988bf-86f1-41af-91ab-2d7cd011db47"),
        Ok(true)
    );
    assert_eq!(admits(pattern, "common"), Ok(false));
    assert_eq!(admits("tenant in ['acme', 'globex']", "globex"), Ok(true));
    // An evaluation error is an error, never an admission.
    assert!(matches!(
        admits("int(tenant) > 3", "acme"),
        Err(EvalError::Failed(_))
    ));
    assert!(matches!(
        admits("true", &"a".repeat(65)),
        Err(EvalError::Input(_))
    ));

    // Nothing of the token, the request or the clock is a variable: it is not verified yet.
    for source in [
        "claims.tid == tenant",
        "request.host.startsWith(tenant)",
        "source.address != ''",
        "now > timestamp('2020-01-01T00:00:00Z')",
    ] {
        let error = compile(source, Kind::Tenant).expect_err(source).to_string();
        assert!(
            error.contains("an admitTenants expression sees only tenant"),
            "{source}: {error}"
        );
    }
    // ...and `tenant` is no variable of the other expressions.
    assert!(
        compile("tenant == 'acme'", Kind::Condition)
            .expect_err("tenant in a condition")
            .to_string()
            .contains("undeclared reference to \"tenant\"")
    );
    for (source, want) in [
        ("tenant", "is a string, not a bool"),
        ("tenant + 1 == 'a'", "cannot add"),
        ("tenant.startsWith(", "does not parse"),
    ] {
        let error = compile(source, Kind::Tenant).expect_err(source).to_string();
        assert!(error.contains(want), "{source}: {error}");
    }
    // The cost limit holds; a tenant is short, so only a literal list can make one costly.
    let cheap = compile(
        "tenant in ['a', 'b'] || tenant.endsWith('-eu')",
        Kind::Tenant,
    )
    .expect("cheap");
    assert!(cheap.cost < 100, "{}", cheap.cost);
    assert!(cheap.reads == Reads::default(), "{:?}", cheap.reads);
}

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::*;
use crate::engine::Headers;

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

mod hostile {
    //! Claims, headers and query strings a client controls never make an expression panic,
    //! and never turn an evaluation error into a value.
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
    ];

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

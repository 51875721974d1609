//! The command line: the README's first command (`demo`), `check-policy` and `authorize`.

use std::process::Command;

use serde_json::json;
use tollgate::local_issuer::server::IdpServer;
use tollgate::local_issuer::{SigningKey, jwks};

use crate::support::*;

fn tollgate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command.env_remove("RUST_LOG");
    command
}

#[test]
fn demo_shows_one_token_accepted_and_one_rejected() {
    let output = tollgate()
        .args([
            "demo",
            "--once",
            "--grpc-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("── accepted: valid token with scope orders.read ──\nGET https://api.example.com/orders/42"), "{stdout}");
    assert!(
        stdout.contains("  ALLOW\n    set header     x-user-id: user-1"),
        "{stdout}"
    );
    assert!(stdout.contains("  DENY 401\n"), "{stdout}");
    assert!(
        stdout.contains("error_description=\"token_expired: the access token has expired\""),
        "{stdout}"
    );
    assert!(stdout.contains("  DENY 403\n"), "{stdout}");
    assert!(
        stdout.contains("cargo run -- authorize --server http://127.0.0.1:"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "Why was it rejected? Every check, with the fix:\n  cargo run -- explain --policy "
        ),
        "{stdout}"
    );
}

#[test]
fn check_policy_reports_every_problem_with_its_field() {
    let dir = tempfile::tempdir().expect("dir");
    write_policy(
        dir.path(),
        "good.yaml",
        &policy_yaml("good", "https://idp.example.com/", ""),
    );
    let ok = tollgate()
        .arg("check-policy")
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        "ok: 1 policies (shop/good)\n"
    );

    let bad = "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {name: bad}\nspec:\n  match: {hosts: [bad.example.com]}\n  issuers: [{issuer: 'https://idp/', jwksUri: 'http://idp/keys', algorithms: [none]}]\n  clockSkew: 2h\n";
    write_policy(dir.path(), "bad.yaml", bad);
    write_policy(
        dir.path(),
        "typo.yaml",
        &policy_yaml("typo", "https://idp/", "  requiredClaim: []\n"),
    );
    let out = tollgate()
        .arg("check-policy")
        .arg(dir.path())
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for expected in [
        "spec.issuers[0].audiences: list the audiences",
        "spec.issuers[0].jwksUri: http://idp/keys is plain http",
        "spec.issuers[0].algorithms[0]: \"none\" (unsigned tokens) is never accepted",
        "spec.clockSkew: 2h is more than the 10m maximum",
        "unknown field `requiredClaim`",
        "valid policies: 1",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    // Another namespace naming the same host: not loaded, the owner named. And a rule that can
    // never apply: a warning (it loads).
    let other = tempfile::tempdir().expect("dir");
    write_policy(
        other.path(),
        "a.yaml",
        &policy_yaml(
            "orders",
            "https://idp.example.com/",
            "  match: {hosts: [api.example.com], paths: [/orders]}\n  rules: [{paths: [/billing], allowAnonymous: true}]\n",
        ),
    );
    write_policy(
        other.path(),
        "b.yaml",
        &policy_yaml(
            "squatter",
            "https://idp.example.com/",
            "  match: {hosts: [api.example.com], paths: [/orders/admin]}\n",
        )
        .replace("namespace: shop", "namespace: other-team"),
    );
    let out = tollgate()
        .arg("check-policy")
        .arg(other.path())
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for expected in [
        "error: policy other-team/squatter: host api.example.com belongs to namespace shop (shop/orders is the oldest policy naming it)",
        "warning: policy shop/orders: spec.rules[0].paths[0]: /billing is outside match.paths",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }

    let missing = tollgate()
        .args(["check-policy", "/nonexistent/policies"])
        .output()
        .expect("run");
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/policies does not exist")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_prints_the_decision_and_exits_by_it() {
    let key = SigningKey::ec("k1", "ES256").expect("key");
    let idp = IdpServer::start("127.0.0.1:0".parse().expect("addr"), jwks(&[&key]))
        .await
        .expect("idp");
    let iss = idp.issuer();
    let dir = tempfile::tempdir().expect("dir");
    write_policy(dir.path(), "p.yaml", &policy_yaml("orders", &iss, ""));
    let server = Tollgate::start(dir.path(), &[]);
    let token = key.mint(&claims(&iss, json!({}))).expect("mint");
    let run = |token: &str| {
        tollgate()
            .args([
                "authorize",
                "--server",
                &server.url(),
                "--host",
                HOST,
                "--path",
                "/orders",
                "--token",
                token,
            ])
            .output()
            .expect("run")
    };
    let allowed = run(&token);
    assert_eq!(
        allowed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&allowed.stdout)
    );
    assert!(String::from_utf8_lossy(&allowed.stdout).starts_with("ALLOW\n"));
    let denied = run("x.y.z");
    assert_eq!(denied.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&denied.stdout).contains("DENY 401"));
}

#[test]
fn serve_refuses_a_missing_policy_path() {
    let out = tollgate()
        .args([
            "serve",
            "--policies",
            "/nonexistent/dir",
            "--grpc-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("policy path /nonexistent/dir does not exist")
    );
}

#[test]
fn the_example_policies_are_valid() {
    let out = tollgate()
        .args([
            "check-policy",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/policies"),
        ])
        .output()
        .expect("run");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok: 5 policies (shop/internal, shop/inventory, shop/mcp, shop/orders, shop/partners)\n"
    );
}

#[test]
fn check_policy_names_lifetime_tenant_and_scope_problems() {
    let dir = tempfile::tempdir().expect("dir");
    let spec = "  issuers:\n  - {issuer: 'https://kc.example.com/realms/{tenant}', audiences: [a]}\n  - {issuer: 'https://{tenant}.okta.example/', tenants: [acme], audiences: [a]}\n  - {issuer: 'https://kc.example.com/realms/{tenantid}', tenants: [acme, ../admin], audiences: [a]}\n  - {issuer: https://idp.example.com/, audiences: [a], maxTokenLifetime: 9000h}\n";
    write_policy(
        dir.path(),
        "bad.yaml",
        &format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {{name: bad, namespace: shop}}\nspec:\n{spec}"
        ),
    );
    let out = tollgate()
        .arg("check-policy")
        .arg(dir.path())
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for expected in [
        "spec.issuers[0].tenants: an issuer template needs the tenants it accepts",
        "spec.issuers[1].issuer: the tenant placeholder may stand only in the path",
        "spec.issuers[2].tenants[1]: \"../admin\" is not a tenant",
        "spec.issuers[3].maxTokenLifetime: 9000h is more than the 8760h maximum",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    // A rule whose scope no challenge can name: it loads, with a warning.
    let ok = tempfile::tempdir().expect("dir");
    write_policy(
        ok.path(),
        "scoped.yaml",
        &policy_yaml(
            "scoped",
            "https://idp.example.com/",
            "  rules: [{paths: [/a], requiredClaims: [{name: scope, values: [\"two words\"]}]}]\n",
        ),
    );
    let out = tollgate()
        .arg("check-policy")
        .arg(ok.path())
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("warning: policy shop/scoped: spec.rules[0].requiredClaims: its insufficient_scope challenge names no scope: \"two words\""),
        "{stdout}"
    );
}

#[test]
fn check_policy_names_tenant_condition_problems_and_notes_each_condition() {
    let dir = tempfile::tempdir().expect("dir");
    let spec = "  issuers:\n  - {issuer: 'https://kc.example.com/realms/{tenant}', admitTenants: {expression: 'claims.tid == tenant'}, audiences: [a]}\n  - {issuer: 'http://kc2.example.com/realms/{tenant}', admitTenants: {expression: 'true'}, audiences: [a]}\n  - {issuer: https://idp.example.com/, admitTenants: {expression: 'true'}, audiences: [a]}\n";
    write_policy(
        dir.path(),
        "bad.yaml",
        &format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {{name: bad, namespace: shop}}\nspec:\n{spec}"
        ),
    );
    let out = tollgate()
        .arg("check-policy")
        .arg(dir.path())
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for expected in [
        "spec.issuers[0].admitTenants.expression: undeclared reference to \"claims\": an admitTenants expression sees only tenant",
        "spec.issuers[1].issuer: http://kc2.example.com/realms/{tenant}/.well-known/openid-configuration is plain http",
        "spec.issuers[2].admitTenants: admitTenants applies only to an issuer template",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }

    let ok = tempfile::tempdir().expect("dir");
    write_policy(
        ok.path(),
        "tenants.yaml",
        "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {name: tenants, namespace: shop}\nspec:\n  issuers:\n  - {issuer: 'https://kc.example.com/realms/{tenant}', tenants: [acme], admitTenants: {expression: \"tenant.startsWith('cust-')\", maxTenants: 20}, audiences: [a]}\n",
    );
    let out = tollgate()
        .arg("check-policy")
        .arg(ok.path())
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("note: policy shop/tenants: spec.issuers[0]: tenants of https://kc.example.com/realms/{tenant} for which `tenant.startsWith('cust-')` is true are admitted when a token first names them (their keys fetched then; at most 20 at once, besides the listed acme)"),
        "{stdout}"
    );
}

//! Certificate-bound tokens (RFC 8705 `cnf.x5t#S256`) and `clientCertificate.required`.

use base64::Engine as _;

use super::*;

/// The x5t#S256 of a certificate from its SHA-256.
fn x5t(digest: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}

fn bound_token(thumbprint: serde_json::Value) -> String {
    RSA.mint(&claims_with(json!({"cnf": thumbprint})))
        .expect("mint")
}

/// Allowed, or denied with this status, reason and words in the description.
type Expected = Result<(), (u16, Reason, &'static str)>;

const PLAIN: &str = "{match: {hosts: [api.example.com], paths: [/orders]}}";

/// The same with a condition on a claim: its cache entries keep that claim parsed, and the
/// binding is still read from the whole token on a hit.
const WITH_CEL: &str = r#"{match: {hosts: [api.example.com], paths: [/orders]},
    when: [{expression: "claims.sub != ''"}]}"#;

#[tokio::test]
async fn bound_tokens_need_their_certificate_with_and_without_the_cache() {
    let (mine, digest) = crate::fixtures::client_certificate(&["billing.partners.example"]);
    let (other, _) = crate::fixtures::client_certificate(&["billing.partners.example"]);
    let token = bound_token(json!({"x5t#S256": x5t(&digest)}));
    let unbound = good();
    for spec in [PLAIN, WITH_CEL] {
        let mut cached = snapshot(&[mk_policy("orders", spec)], DefaultAction::Deny);
        cached.token_cache =
            crate::verified::TokenCache::new(crate::verified::CacheLimits::default());
        assert!(cached.token_cache.is_some());
        let uncached = snapshot(&[mk_policy("orders", spec)], DefaultAction::Deny);
        // The right certificate first, so the cache holds the token for the requests after it.
        let cases: Vec<(Req, Expected)> = vec![
            (req("/orders/1").bearer(&token).certificate(&mine), Ok(())),
            (
                req("/orders/1").bearer(&token).certificate(&other),
                Err((
                    401,
                    Reason::CertificateBindingMismatch,
                    "is bound to the client certificate",
                )),
            ),
            (
                req("/orders/1").bearer(&token),
                Err((
                    401,
                    Reason::CertificateMissing,
                    "came without a certificate",
                )),
            ),
            (
                req("/orders/1").bearer(&token).certificate("garbage"),
                Err((400, Reason::RequestMalformed, "not one PEM certificate")),
            ),
            (req("/orders/1").bearer(&token).certificate(&mine), Ok(())),
            // A token without cnf passes with or without a certificate.
            (req("/orders/1").bearer(&unbound), Ok(())),
            (
                req("/orders/1").bearer(&unbound).certificate(&other),
                Ok(()),
            ),
        ];
        for s in [&cached, &uncached] {
            for (r, want) in &cases {
                let d = decide(s, r).await;
                match want {
                    Ok(()) => {
                        allowed(&d);
                    }
                    Err((status, reason, text)) => {
                        let deny = denied(&d);
                        assert_eq!((deny.status, deny.reason), (*status, *reason));
                        assert!(deny.description.contains(text), "{}", deny.description);
                        if *reason != Reason::RequestMalformed {
                            let challenge = deny.www_authenticate.as_deref().unwrap_or_default();
                            assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
                        }
                    }
                }
            }
        }
        let hits = cached.token_cache.as_ref().map(|c| c.stats().hits);
        assert!(hits.is_some_and(|h| h > 0), "the cache was used: {hits:?}");
    }
}

#[tokio::test]
async fn malformed_bindings_are_refused() {
    let (mine, digest) = crate::fixtures::client_certificate(&["billing.partners.example"]);
    let s = snapshot(&[mk_policy("orders", PLAIN)], DefaultAction::Deny);
    for (cnf, why) in [
        (json!("x5t"), "cnf claim is not a JSON object"),
        (json!({"x5t#S256": 7}), "x5t#S256 is not a string"),
        // Padded, or hex: not the base64url form RFC 8705 defines.
        (
            json!({"x5t#S256": format!("{}=", x5t(&digest))}),
            "is bound",
        ),
        (
            json!({"x5t#S256": digest.iter().map(|b| format!("{b:02x}")).collect::<String>()}),
            "is bound",
        ),
    ] {
        let d = decide(
            &s,
            &req("/orders/1")
                .bearer(&bound_token(cnf.clone()))
                .certificate(&mine),
        )
        .await;
        let deny = denied(&d);
        assert_eq!(deny.reason, Reason::CertificateBindingMismatch, "{cnf}");
        assert!(
            deny.description.contains(why),
            "{cnf}: {}",
            deny.description
        );
    }
    // A cnf with other confirmation methods only (a DPoP `jkt`) binds no certificate: the
    // DPoP check judges it (refused as a bearer token by a policy that reads no proofs).
    let d = decide(
        &s,
        &req("/orders/1")
            .bearer(&bound_token(json!({"jkt": "abc"})))
            .certificate(&mine),
    )
    .await;
    assert_eq!(denied(&d).reason, Reason::DpopBoundTokenAsBearer);
}

#[tokio::test]
async fn bound_tokens_are_checked_under_every_policy_mode() {
    let (mine, digest) = crate::fixtures::client_certificate(&["billing.partners.example"]);
    let token = bound_token(json!({"x5t#S256": x5t(&digest)}));
    // A dry-run policy lets the request through but records the binding failure, with no
    // identity header from the token.
    let dry = snapshot(
        &[mk_policy(
            "orders",
            "{match: {hosts: [api.example.com], paths: [/orders]}, mode: dryRun, forward: {claimsToHeaders: [{claim: sub, header: x-user}]}}",
        )],
        DefaultAction::Deny,
    );
    let d = decide(&dry, &req("/orders/1").bearer(&token)).await;
    let allow = allowed(&d);
    assert_eq!(allow.reason, Reason::DryRun);
    assert_eq!(
        allow.dry_run.as_ref().map(|d| d.reason),
        Some(Reason::CertificateMissing)
    );
    assert!(
        allow.headers_to_set.is_empty(),
        "{:?}",
        allow.headers_to_set
    );
    let d = decide(&dry, &req("/orders/1").bearer(&token).certificate(&mine)).await;
    assert_eq!(allowed(&d).reason, Reason::Valid);
}

const REQUIRED: &str = r#"{match: {hosts: [api.example.com], paths: [/partners]},
    clientCertificate: {required: true},
    when: [{expression: "source.certificate.dnsNames.exists(n, n.endsWith('.partners.example'))"}],
    rules: [{paths: [/partners/healthz], allowAnonymous: true}]}"#;

#[tokio::test]
async fn a_required_certificate_is_checked_before_the_token() {
    let s = snapshot(&[mk_policy("partners", REQUIRED)], DefaultAction::Deny);
    let (partner, _) = crate::fixtures::client_certificate(&["billing.partners.example"]);
    let (other, _) = crate::fixtures::client_certificate(&["billing.other.example"]);
    let token = good();
    allowed(&decide(&s, &req("/partners/1").bearer(&token).certificate(&partner)).await);
    assert_eq!(
        allowed(&decide(&s, &req("/partners/healthz").certificate(&partner)).await).reason,
        Reason::Anonymous
    );
    for r in [
        req("/partners/1").bearer(&token),
        req("/partners/healthz"),
        req("/partners/1"),
    ] {
        let d = decide(&s, &r).await;
        let deny = denied(&d);
        assert_eq!(
            (deny.status, deny.reason),
            (403, Reason::CertificateRequired)
        );
        assert!(deny.www_authenticate.is_none());
        assert!(deny.body.contains("certificate_required"), "{}", deny.body);
    }
    assert_eq!(
        denied(
            &decide(
                &s,
                &req("/partners/1").bearer(&token).certificate("garbage")
            )
            .await
        )
        .reason,
        Reason::RequestMalformed
    );
    // The constraints are the policy's conditions.
    assert_eq!(
        denied(&decide(&s, &req("/partners/1").bearer(&token).certificate(&other)).await).reason,
        Reason::ConditionFailed
    );
}

use std::sync::Arc;

use super::*;
use crate::dry_run::WindowReport;
use crate::fixtures::*;
use crate::policy::{CompileError, Conflict, Problem, ProblemKind};

fn view(generation: i64, serving: Option<i64>) -> PolicyView {
    PolicyView {
        id: "shop/orders".into(),
        namespace: "shop".into(),
        name: "orders".into(),
        uid: None,
        created: String::new(),
        generation,
        serving_generation: serving,
        error: None,
        conflict: None,
        policy: serving.map(|_| mk_policy("orders", "")),
        status: None,
        hosts: Vec::new(),
        ancestors: Vec::new(),
        targeted: false,
    }
}

fn replica(name: &str, generation: Option<i64>, renewed_ago: u64) -> ReplicaReport {
    ReplicaReport {
        identity: name.into(),
        loaded: generation
            .map(|g| BTreeMap::from([("shop/orders".to_string(), g)]))
            .unwrap_or_default(),
        renewed: Some(SystemTime::now() - Duration::from_secs(renewed_ago)),
        lease_duration: Duration::from_secs(30),
        dry_run: BTreeMap::new(),
    }
}

fn condition<'a>(status: &'a JwtPolicyStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .expect("condition")
}

#[test]
fn an_accepted_policy_loaded_everywhere() {
    let replicas = [
        replica("a", Some(3), 1),
        replica("b", Some(3), 5),
        replica("c", Some(2), 2),
        replica("dead", Some(3), 300),
    ];
    let status = desired_status(&view(3, Some(3)), &replicas, SystemTime::now());
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(
        status.loaded.as_deref(),
        Some("2/3"),
        "c serves an older generation, dead has expired"
    );
    let accepted = condition(&status, "Accepted");
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("True", "Accepted")
    );
    assert_eq!(accepted.observed_generation, Some(3));
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Ready"),
        "{}",
        ready.message
    );
    assert_eq!(status.issuers.len(), 1);
    assert_eq!(status.issuers[0].keys, 4, "inline keys of the fixture");
}

#[test]
fn a_failing_generation_says_why_and_what_keeps_serving() {
    let mut v = view(4, Some(3));
    v.error = Some(CompileError {
        problems: vec![Problem {
            field: "spec.issuers[0].sharedSecret".into(),
            message: "Secret shop/hmac not found".into(),
            kind: ProblemKind::SecretNotFound,
        }],
    });
    let status = desired_status(&v, &[replica("a", Some(3), 1)], SystemTime::now());
    let accepted = condition(&status, "Accepted");
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("False", "SecretNotFound")
    );
    assert!(
        accepted.message.ends_with("(generation 3 keeps serving)"),
        "{}",
        accepted.message
    );
    assert_eq!(status.loaded.as_deref(), Some("0/1"));
    assert_eq!(
        condition(&status, "Ready").status,
        "True",
        "the last good version still serves"
    );

    let mut never = view(1, None);
    never.conflict = Some(Conflict {
        policy: "shop/orders".into(),
        holder: "shop/older".into(),
        host: "api".into(),
        path: "/".into(),
        kind: crate::policy::ConflictKind::Route,
    });
    let status = desired_status(&never, &[], SystemTime::now());
    assert_eq!(condition(&status, "Accepted").reason, "HostConflict");
    assert!(
        condition(&status, "Accepted")
            .message
            .contains("shop/older")
    );
    assert_eq!(condition(&status, "Ready").reason, "NotAccepted");
}

#[test]
fn unreachable_issuers_make_the_policy_not_ready() {
    let sources = crate::jwks::KeySources::offline().expect("client");
    let spec = spec(
        "issuers: [{issuer: https://idp.example/, audiences: [a], jwksUri: https://idp.example/keys}]",
    );
    let policy = compile_with(&sources, "shop", "orders", &spec).expect("compiles");
    let mut v = view(1, Some(1));
    v.policy = Some(Arc::new(policy));
    let status = desired_status(&v, &[], SystemTime::now());
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "IssuerUnreachable")
    );
    assert!(
        ready
            .message
            .contains("https://idp.example/: no keys: offline"),
        "{}",
        ready.message
    );
    assert_eq!(status.issuers[0].keys, 0);
}

#[test]
fn transition_times_move_only_when_a_condition_flips() {
    let first = desired_status(
        &view(1, Some(1)),
        &[],
        SystemTime::now() - Duration::from_secs(3600),
    );
    let mut v = view(1, Some(1));
    v.status = Some(first.clone());
    let again = desired_status(&v, &[], SystemTime::now());
    assert_eq!(
        condition(&again, "Accepted").last_transition_time,
        condition(&first, "Accepted").last_transition_time
    );
    v.error = Some(CompileError { problems: vec![] });
    let flipped = desired_status(&v, &[], SystemTime::now());
    assert_ne!(
        condition(&flipped, "Accepted").last_transition_time,
        condition(&first, "Accepted").last_transition_time
    );
}

#[test]
fn accepted_says_which_rules_can_never_apply() {
    let mut warned = view(1, Some(1));
    warned.policy = Some(mk_policy(
        "orders",
        "{match: {paths: [/orders]}, rules: [{paths: [/billing], allowAnonymous: true}]}",
    ));
    let status = desired_status(&warned, &[], SystemTime::now());
    let accepted = condition(&status, "Accepted");
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("True", "Accepted")
    );
    assert!(
        accepted
            .message
            .contains("warning: spec.rules[0].paths[0]: /billing is outside match.paths"),
        "{}",
        accepted.message
    );
}

fn counted(
    name: &str,
    generation: i64,
    since: SystemTime,
    requests: u64,
    denials: &[(&str, u64)],
) -> ReplicaReport {
    let mut report = replica(name, Some(generation), 1);
    report.dry_run = BTreeMap::from([(
        "shop/orders".to_string(),
        WindowReport {
            generation,
            since: since
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("after 1970")
                .as_secs(),
            requests,
            denials: denials.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
        },
    )]);
    report
}

#[test]
fn dry_run_counts_are_summed_over_the_replicas_serving_the_generation() {
    let now = SystemTime::now();
    let mut v = view(3, Some(3));
    v.policy = Some(mk_policy("orders", "{mode: dryRun}"));
    let long_ago = now - Duration::from_secs(3600);
    let replicas = [
        counted(
            "a",
            3,
            long_ago,
            100,
            &[("token_expired", 4), ("insufficient_scope", 1)],
        ),
        counted(
            "b",
            3,
            long_ago,
            50,
            &[("token_expired", 2), ("token_missing", 6)],
        ),
        // An older generation's counts, and a dead replica's, are not this generation's.
        counted("old", 2, long_ago, 1000, &[("token_expired", 500)]),
        ReplicaReport {
            renewed: Some(now - Duration::from_secs(300)),
            ..counted("dead", 3, long_ago, 1000, &[("token_expired", 500)])
        },
    ];
    let status = desired_status(&v, &replicas, now);
    let dry_run = status.dry_run.expect("status.dryRun");
    assert_eq!(dry_run.window, "10m");
    assert_eq!(dry_run.observed_generation, 3);
    assert_eq!(dry_run.replicas, 2);
    assert_eq!((dry_run.requests, dry_run.would_deny), (150, 13));
    let denials: Vec<(&str, i64)> = dry_run
        .denials
        .iter()
        .map(|d| (d.reason.as_str(), d.count))
        .collect();
    assert_eq!(
        denials,
        [
            ("token_expired", 6),
            ("token_missing", 6),
            ("insufficient_scope", 1)
        ],
        "most frequent first, ties by reason"
    );
    assert_eq!(dry_run.since, None, "counting began more than a window ago");

    // A replica that began counting two minutes ago: the counts are complete from then.
    let recent = now - Duration::from_secs(120);
    let status = desired_status(
        &v,
        &[
            counted("a", 3, long_ago, 1, &[]),
            counted("b", 3, recent, 1, &[]),
        ],
        now,
    );
    let dry_run = status.dry_run.expect("status.dryRun");
    assert_eq!(dry_run.since.as_deref(), Some(&*rfc3339(recent)));
    assert!(dry_run.denials.is_empty() && dry_run.would_deny == 0);

    // No replica has reported yet: the block is there, with nothing counted.
    let status = desired_status(&v, &[replica("a", Some(3), 1)], now);
    let dry_run = status.dry_run.expect("status.dryRun");
    assert_eq!((dry_run.replicas, dry_run.requests), (0, 0));
}

#[test]
fn an_enforcing_policy_has_no_dry_run_status() {
    let replicas = [counted(
        "a",
        3,
        SystemTime::now(),
        5,
        &[("token_expired", 5)],
    )];
    let status = desired_status(&view(3, Some(3)), &replicas, SystemTime::now());
    assert_eq!(status.dry_run, None);
    let mut v = view(3, None);
    v.policy = None;
    assert_eq!(
        desired_status(&v, &replicas, SystemTime::now()).dry_run,
        None
    );
}

#[test]
fn only_count_changes_are_told_apart() {
    let now = SystemTime::now();
    let mut v = view(3, Some(3));
    v.policy = Some(mk_policy("orders", "{mode: dryRun}"));
    let one = desired_status(&v, &[counted("a", 3, now, 5, &[("token_expired", 5)])], now);
    let more = desired_status(&v, &[counted("a", 3, now, 9, &[("token_missing", 1)])], now);
    assert!(same_but_dry_run_counts(&one, &more));
    let two = desired_status(
        &v,
        &[counted("a", 3, now, 5, &[]), counted("b", 3, now, 5, &[])],
        now,
    );
    assert!(!same_but_dry_run_counts(&one, &two), "replicas changed");
    let enforcing = desired_status(&view(3, Some(3)), &[replica("a", Some(3), 1)], now);
    assert!(!same_but_dry_run_counts(&one, &enforcing));
}

use std::time::UNIX_EPOCH;

use super::*;
use crate::decision::Allow;
use crate::fixtures::mk_policy;

/// A minute boundary (2026-01-01T00:00:00Z), so every test step lands in a known minute.
fn at(minute: u64, second: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_767_225_600 + minute * 60 + second)
}

fn info() -> RequestInfo<'static> {
    RequestInfo {
        transport: "grpc",
        ..RequestInfo::default()
    }
}

/// What a dry-run policy decides when it would have denied with `reason`.
fn would_deny(policy: &Policy, reason: Reason) -> Decision {
    let Decision::Deny(deny) =
        crate::engine::deny(Some(policy), "h", reason, "why".into(), None, None)
    else {
        unreachable!("deny builds a denial")
    };
    Decision::Allow(Allow {
        policy: Some(policy.id.clone()),
        reason: Reason::DryRun,
        dry_run: Some(Box::new(deny)),
        ..Allow::default()
    })
}

fn passed(policy: &Policy) -> Decision {
    Decision::Allow(Allow {
        policy: Some(policy.id.clone()),
        ..Allow::default()
    })
}

fn counts(ledger: &DryRunLedger, id: &str, now: SystemTime) -> Option<WindowReport> {
    ledger.report(now).get(id).map(|(_, w)| w.clone())
}

#[test]
fn reason_indexes_follow_the_declaration_order() {
    for (i, reason) in Reason::ALL.iter().enumerate() {
        assert_eq!(*reason as usize, i, "{reason}: Reason::ALL out of order");
    }
}

#[test]
fn requests_and_would_be_denials_are_counted_per_policy_and_reason() {
    let trial = mk_policy("orders", "{mode: dryRun}");
    let enforcing = mk_policy("billing", "{}");
    let ledger = DryRunLedger::new();
    let start = at(0, 0);
    ledger.sync([&trial, &enforcing].into_iter(), start);
    let now = at(0, 30);
    for decision in [
        passed(&trial),
        would_deny(&trial, Reason::TokenExpired),
        would_deny(&trial, Reason::TokenExpired),
        would_deny(&trial, Reason::InsufficientScope),
        // An enforcing policy's decisions are not this ledger's.
        passed(&enforcing),
        crate::engine::deny(
            Some(&enforcing),
            "h",
            Reason::TokenMissing,
            "x".into(),
            None,
            None,
        ),
    ] {
        ledger.observe(&info(), &decision, now);
    }
    let report = counts(&ledger, "test/orders", now).expect("counted");
    assert_eq!(report.requests, 4);
    assert_eq!(
        report.denials,
        BTreeMap::from([
            ("token_expired".to_string(), 2),
            ("insufficient_scope".to_string(), 1)
        ])
    );
    assert_eq!(report.since, unix_seconds(start));
    assert!(counts(&ledger, "test/billing", now).is_none());
}

#[test]
fn the_window_keeps_the_last_ten_minutes() {
    let trial = mk_policy("orders", "{mode: dryRun}");
    let ledger = DryRunLedger::new();
    ledger.sync([&trial].into_iter(), at(0, 0));
    let deny = would_deny(&trial, Reason::TokenMissing);
    ledger.observe(&info(), &deny, at(0, 10));
    ledger.observe(&info(), &deny, at(3, 10));
    ledger.observe(&info(), &deny, at(3, 50));
    let total = |now| {
        counts(&ledger, "test/orders", now)
            .expect("counted")
            .denials
            .get("token_missing")
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(total(at(9, 59)), 3, "minute 0 is still in the window");
    assert_eq!(total(at(10, 0)), 2, "minute 0 has left the window");
    assert_eq!(total(at(13, 0)), 0);
    // The bucket of minute 0 serves minute 10: the old count does not come back.
    ledger.observe(&info(), &deny, at(10, 5));
    assert_eq!(total(at(10, 6)), 3);
    assert_eq!(
        counts(&ledger, "test/orders", at(10, 6))
            .expect("c")
            .requests,
        3
    );
}

#[test]
fn the_log_admits_a_few_lines_per_policy_and_minute_and_counts_the_rest() {
    let trial = mk_policy("orders", "{mode: dryRun}");
    let other = mk_policy("billing", "{mode: dryRun}");
    let ledger = DryRunLedger::new();
    ledger.sync([&trial, &other].into_iter(), at(0, 0));
    let record = |policy: &str, now| {
        let map = ledger.policies.read().expect("lock");
        map[policy].record(Some(Reason::TokenExpired), now)
    };
    let limit = DEFAULT_LOG_LIMIT as usize;
    let first: Vec<Option<u64>> = (0..limit + 3)
        .map(|_| record("test/orders", at(1, 0)))
        .collect();
    assert!(first[..limit].iter().all(|l| *l == Some(0)), "{first:?}");
    assert!(first[limit..].iter().all(Option::is_none), "{first:?}");
    // Another policy has its own lines.
    assert_eq!(record("test/billing", at(1, 1)), Some(0));
    // The next minute logs again, and says how many lines were left out.
    assert_eq!(record("test/orders", at(2, 0)), Some(3));
    assert_eq!(record("test/orders", at(2, 1)), Some(0));
    // A request that passes is counted, never logged.
    let map = ledger.policies.read().expect("lock");
    assert_eq!(map["test/orders"].record(None, at(2, 2)), None);
}

#[test]
fn a_recompiled_or_enforcing_policy_starts_again() {
    let first = mk_policy("orders", "{mode: dryRun}");
    let ledger = DryRunLedger::new();
    assert!(!ledger.any.load(Ordering::Relaxed));
    ledger.sync([&first].into_iter(), at(0, 0));
    assert!(ledger.any.load(Ordering::Relaxed));
    ledger.observe(&info(), &would_deny(&first, Reason::TokenMissing), at(0, 1));
    // The same compiled policy in a new snapshot: the counts carry on.
    ledger.sync([&first].into_iter(), at(1, 0));
    let kept = counts(&ledger, "test/orders", at(1, 1)).expect("kept");
    assert_eq!((kept.requests, kept.since), (1, unix_seconds(at(0, 0))));
    // A new generation compiles anew: its counts start from zero.
    let second = mk_policy("orders", "{mode: dryRun, clockSkew: 10s}");
    ledger.sync([&second].into_iter(), at(2, 0));
    let (instance, fresh) = ledger
        .report(at(2, 1))
        .remove("test/orders")
        .expect("entry");
    assert_eq!(instance, second.instance);
    assert_eq!((fresh.requests, fresh.since), (0, unix_seconds(at(2, 0))));
    // Back to enforce: nothing is counted any more.
    let enforcing = mk_policy("orders", "{}");
    ledger.sync([&enforcing].into_iter(), at(3, 0));
    assert!(ledger.report(at(3, 1)).is_empty());
    assert!(!ledger.any.load(Ordering::Relaxed));
}

#[test]
fn window_reports_round_trip_as_json() {
    let report = WindowReport {
        generation: 4,
        since: 1_767_225_600,
        requests: 12,
        denials: BTreeMap::from([("token_expired".to_string(), 3)]),
    };
    let text = serde_json::to_string(&report).expect("json");
    assert_eq!(
        text,
        r#"{"generation":4,"since":1767225600,"requests":12,"denials":{"token_expired":3}}"#
    );
    assert_eq!(
        serde_json::from_str::<WindowReport>(&text).expect("parse"),
        report
    );
    assert_eq!(window_text(), "10m");
}

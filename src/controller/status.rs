//! What a `JwtPolicy`'s status should say, computed from the index view of the replica holding
//! the status Lease and the load reports of every replica. Pure: no I/O, table-tested.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::index::PolicyView;
use crate::dry_run::{self, WindowReport};
use crate::policy::gateway::{self, AncestorState};
use crate::policy::spec::{
    AncestorRefStatus, DryRunDenial, DryRunStatus, IssuerStatus, JwtPolicyStatus,
    PolicyAncestorStatus, ReplicaCounts,
};

/// What one replica reports it serves, read from its heartbeat Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaReport {
    pub identity: String,
    /// `namespace/name` → generation served.
    pub loaded: BTreeMap<String, i64>,
    /// When the replica last renewed its Lease.
    pub renewed: Option<SystemTime>,
    /// How long a renewal stays valid.
    pub lease_duration: Duration,
    /// Per dry-run policy it serves (`namespace/name`): what it would have denied recently.
    pub dry_run: BTreeMap<String, WindowReport>,
}

impl ReplicaReport {
    /// A replica counts while its Lease is valid.
    pub fn alive(&self, now: SystemTime) -> bool {
        self.renewed.is_some_and(|t| t + self.lease_duration >= now)
    }
}

/// Whole seconds, as the API server stores them (so written and read back compare equal).
fn timestamp(t: SystemTime) -> Time {
    let seconds = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Time(
        Timestamp::from_second(i64::try_from(seconds).unwrap_or(0))
            .unwrap_or(Timestamp::UNIX_EPOCH),
    )
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn truncate(text: String) -> String {
    if text.len() <= 1024 {
        return text;
    }
    let mut end = 1021;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// A condition that keeps its previous transition time when its status did not change.
fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: i64,
    previous: Option<&JwtPolicyStatus>,
    now: SystemTime,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let earlier = previous.and_then(|p| p.conditions.iter().find(|c| c.type_ == type_));
    let last_transition_time = match earlier {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => timestamp(now),
    };
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: truncate(message),
        observed_generation: Some(generation),
        last_transition_time,
    }
}

/// The status the object should have.
pub fn desired_status(
    view: &PolicyView,
    replicas: &[ReplicaReport],
    now: SystemTime,
) -> JwtPolicyStatus {
    let generation = view.generation;
    let previous = view.status.as_ref();
    let serving = view.serving_generation;
    let keeps = |text: String| match serving {
        Some(g) if g != generation => format!("{text} (generation {g} keeps serving)"),
        _ => text,
    };
    let (accepted, accepted_reason, accepted_message) = if let Some(conflict) = &view.conflict {
        let reason = if conflict.keeps_serving() {
            "ResourceConflict"
        } else {
            "HostConflict"
        };
        (false, reason, keeps(conflict.to_string()))
    } else if let Some(error) = &view.error {
        (false, error.reason(), keeps(error.to_string()))
    } else {
        let warnings: Vec<String> = view
            .policy
            .iter()
            .flat_map(|p| &p.warnings)
            .map(|w| format!("{}: {}", w.field, w.message))
            .collect();
        let message = if warnings.is_empty() {
            format!("generation {generation} compiled")
        } else {
            // Rules that can never apply are not errors, but they are rarely meant.
            truncate(format!(
                "generation {generation} compiled; warning: {}",
                warnings.join("; warning: ")
            ))
        };
        (true, "Accepted", message)
    };

    let issuers: Vec<IssuerStatus> = view
        .policy
        .iter()
        .flat_map(|p| p.issuers.iter())
        .map(|issuer| {
            let status = issuer.keys.status();
            IssuerStatus {
                issuer: issuer.issuer.clone(),
                keys: i32::try_from(status.key_count).unwrap_or(i32::MAX),
                last_refresh: status.last_success.map(rfc3339),
                last_error: status.last_error.map(truncate),
                rejected_keys: status
                    .rejected_keys
                    .into_iter()
                    .take(10)
                    .map(truncate)
                    .collect(),
            }
        })
        .collect();
    let unreachable: Vec<String> = issuers
        .iter()
        .filter(|i| i.keys == 0 || i.last_error.is_some())
        .map(|i| match (&i.last_error, i.keys) {
            (Some(error), 0) => format!("{}: no keys: {error}", i.issuer),
            (Some(error), n) => format!(
                "{}: refresh failing, serving {n} last good keys: {error}",
                i.issuer
            ),
            (None, _) => format!("{}: keys not fetched yet", i.issuer),
        })
        .collect();
    let (ready, ready_reason, ready_message) = if !accepted && serving.is_none() {
        (false, "NotAccepted", "the policy is not served".to_string())
    } else if unreachable.iter().any(|u| !u.contains("serving")) {
        (false, "IssuerUnreachable", unreachable.join("; "))
    } else if !unreachable.is_empty() {
        (true, "Ready", unreachable.join("; "))
    } else {
        (
            true,
            "Ready",
            format!("keys loaded for {} issuer(s)", issuers.len()),
        )
    };

    let alive: Vec<&ReplicaReport> = replicas.iter().filter(|r| r.alive(now)).collect();
    let loaded = alive
        .iter()
        .filter(|r| r.loaded.get(&*view.id) == Some(&generation))
        .count();
    let counts = ReplicaCounts {
        loaded: i32::try_from(loaded).unwrap_or(i32::MAX),
        total: i32::try_from(alive.len()).unwrap_or(i32::MAX),
    };
    let ancestors = ancestor_statuses(view, previous, now);
    let (accepted, accepted_reason, accepted_message) = match &view.policy {
        // A policy attached to routes that judges nothing says why.
        Some(policy) if accepted && policy.is_targeted() && policy.entries.is_empty() => {
            let failing: Vec<&AncestorState> = view
                .ancestors
                .iter()
                .filter(|a| a.accepted.is_err())
                .collect();
            let reason = failing
                .first()
                .and_then(|a| a.accepted.as_ref().err())
                .map_or("NoRoutes", |(reason, _)| *reason);
            let why: Vec<String> = failing
                .iter()
                .filter_map(|a| a.accepted.as_ref().err())
                .map(|(_, message)| message.clone())
                .collect();
            (
                false,
                reason,
                truncate(format!("the policy judges no request: {}", why.join("; "))),
            )
        }
        _ => (accepted, accepted_reason, accepted_message),
    };
    JwtPolicyStatus {
        ancestors,
        observed_generation: Some(generation),
        conditions: vec![
            condition(
                "Accepted",
                accepted,
                accepted_reason,
                accepted_message,
                generation,
                previous,
                now,
            ),
            condition(
                "Ready",
                ready,
                ready_reason,
                ready_message,
                generation,
                previous,
                now,
            ),
        ],
        issuers,
        loaded: Some(format!("{}/{}", counts.loaded, counts.total)),
        replicas: Some(counts),
        dry_run: dry_run_status(view, &alive, now),
    }
}

/// `status.dryRun` of a policy whose serving generation is in dry run: the window counts of
/// the live replicas serving that generation, summed. `None` for a policy that enforces.
fn dry_run_status(
    view: &PolicyView,
    alive: &[&ReplicaReport],
    now: SystemTime,
) -> Option<DryRunStatus> {
    let generation = view.serving_generation?;
    if !view.policy.as_ref().is_some_and(|p| p.dry_run) {
        return None;
    }
    let reports: Vec<&WindowReport> = alive
        .iter()
        .filter_map(|r| r.dry_run.get(&*view.id))
        .filter(|w| w.generation == generation)
        .collect();
    let mut denials: BTreeMap<&str, u64> = BTreeMap::new();
    for report in &reports {
        for (reason, n) in &report.denials {
            *denials.entry(reason.as_str()).or_default() += n;
        }
    }
    let mut denials: Vec<(&str, u64)> = denials.into_iter().collect();
    // Most frequent first; equal counts by reason code, so the order is stable.
    denials.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let would_deny: u64 = denials.iter().map(|(_, n)| n).sum();
    // The counts are complete from the time the last counted replica began counting; when
    // that is a window ago or more, `since` has nothing to add.
    let window_start = now - Duration::from_secs(dry_run::WINDOW_MINUTES * 60);
    let since = reports
        .iter()
        .map(|r| SystemTime::UNIX_EPOCH + Duration::from_secs(r.since))
        .max()
        .filter(|since| *since > window_start)
        .map(rfc3339);
    Some(DryRunStatus {
        window: dry_run::window_text(),
        observed_generation: generation,
        since,
        replicas: i32::try_from(reports.len()).unwrap_or(i32::MAX),
        requests: count(reports.iter().map(|r| r.requests).sum()),
        would_deny: count(would_deny),
        denials: denials
            .into_iter()
            .take(64)
            .map(|(reason, n)| DryRunDenial {
                reason: reason.to_string(),
                count: count(n),
            })
            .collect(),
    })
}

/// Whether two statuses differ at most in their dry-run counts (`requests`, `wouldDeny`,
/// `denials`, `since`): such a change alone is written at a bounded rate.
pub fn same_but_dry_run_counts(a: &JwtPolicyStatus, b: &JwtPolicyStatus) -> bool {
    let shape = |s: &JwtPolicyStatus| {
        let mut s = s.clone();
        if let Some(d) = &mut s.dry_run {
            d.requests = 0;
            d.would_deny = 0;
            d.denials.clear();
            d.since = None;
        }
        s
    };
    shape(a) == shape(b)
}

/// The controller name in ancestor statuses.
pub const CONTROLLER_NAME: &str = "tollgate.dev/jwtpolicy-controller";

/// Gateway API allows 16 ancestors per policy status.
const MAX_ANCESTORS: usize = 16;

/// Per-ancestor status (GEP-713), keeping transition times of conditions that did not change.
fn ancestor_statuses(
    view: &PolicyView,
    previous: Option<&JwtPolicyStatus>,
    now: SystemTime,
) -> Vec<PolicyAncestorStatus> {
    let mut out: Vec<PolicyAncestorStatus> = Vec::new();
    for state in view.ancestors.iter().take(MAX_ANCESTORS) {
        let reference = AncestorRefStatus {
            group: gateway::GROUP.into(),
            kind: state.ancestor.kind.clone(),
            namespace: state.ancestor.namespace.clone(),
            name: state.ancestor.name.clone(),
            section_name: state.ancestor.section_name.clone(),
        };
        let before = previous.and_then(|p| {
            p.ancestors
                .iter()
                .find(|a| a.ancestor_ref == reference)
                .map(|a| JwtPolicyStatus {
                    conditions: a.conditions.clone(),
                    ..JwtPolicyStatus::default()
                })
        });
        let make = |type_: &str, ok_reason: &str, outcome: &gateway::Outcome| match outcome {
            Ok(message) => condition(
                type_,
                true,
                ok_reason,
                message.clone(),
                view.generation,
                before.as_ref(),
                now,
            ),
            Err((reason, message)) => condition(
                type_,
                false,
                reason,
                message.clone(),
                view.generation,
                before.as_ref(),
                now,
            ),
        };
        let conditions = vec![
            make("Accepted", "Accepted", &state.accepted),
            make("ResolvedRefs", "ResolvedRefs", &state.resolved),
        ];
        // Two targets can share an ancestor (two routes on one Gateway): one entry, where a
        // failure wins over success.
        if let Some(existing) = out.iter_mut().find(|a| a.ancestor_ref == reference) {
            for new in conditions {
                if let Some(old) = existing
                    .conditions
                    .iter_mut()
                    .find(|c| c.type_ == new.type_)
                    && old.status == "True"
                    && new.status == "False"
                {
                    *old = new;
                } else if let Some(old) = existing
                    .conditions
                    .iter_mut()
                    .find(|c| c.type_ == new.type_)
                    && old.status == "True"
                    && new.status == "True"
                    && !old.message.contains(&new.message)
                {
                    old.message = truncate(format!("{}; {}", old.message, new.message));
                }
            }
            continue;
        }
        out.push(PolicyAncestorStatus {
            ancestor_ref: reference,
            controller_name: CONTROLLER_NAME.into(),
            conditions,
        });
    }
    out
}

#[cfg(test)]
mod tests;

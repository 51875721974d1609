//! `mode: dryRun`: what a policy on trial would have denied, counted per replica.
//!
//! A dry-run policy judges every request fully; the engine turns its denial into an allow that
//! carries the denial ([`crate::decision::Allow::dry_run`]). After the transport has answered,
//! [`DryRunLedger::observe`] records the decision here:
//!
//! ```text
//! decision ─► metrics: tollgate_dry_run_denials_total{policy,reason}   (every would-deny)
//!          ─► ledger: per policy, one-minute buckets of requests and would-deny reasons
//!                     ─► heartbeat Lease annotation tollgate.dev/dry-run ─► status.dryRun
//!          ─► log: "dry run: would deny", at most --dry-run-log-limit lines per policy and
//!                  minute, the next line saying how many were left out
//! ```
//!
//! Bounded: one entry per dry-run policy of the current snapshot (entries of policies that
//! leave the snapshot or return to `enforce` are dropped when it is published), each a fixed
//! ring of [`WINDOW_MINUTES`] buckets with one counter per reason code. Policies in `enforce`
//! mode cost one atomic load per decision while no policy is in dry run.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::decision::{Decision, Reason};
use crate::policy::Policy;
use crate::telemetry::{self, RequestInfo};

/// How far back the counts in `status.dryRun` reach: this minute and the nine before it.
pub const WINDOW_MINUTES: u64 = 10;

/// The default of `--dry-run-log-limit`: would-deny lines per policy and minute.
pub const DEFAULT_LOG_LIMIT: u64 = 10;

static LOG_LIMIT: AtomicU64 = AtomicU64::new(DEFAULT_LOG_LIMIT);

/// Sets the most would-deny lines logged per policy and minute (0: every one).
pub fn set_log_limit(lines_per_minute: u64) {
    LOG_LIMIT.store(lines_per_minute, Ordering::Relaxed);
}

const SLOTS: usize = WINDOW_MINUTES as usize;
const REASONS: usize = Reason::ALL.len();

/// The dry-run policies of one serving process and what they would have denied.
#[derive(Debug, Default)]
pub struct DryRunLedger {
    /// Whether any policy of the current snapshot is in dry run (the fast path for the rest).
    any: AtomicBool,
    policies: RwLock<HashMap<Arc<str>, Arc<PolicyCounts>>>,
}

#[derive(Debug)]
struct PolicyCounts {
    /// The compiled policy counted: a recompiled one (a new generation, a rotated Secret)
    /// starts again from zero.
    instance: u64,
    /// When this replica began judging with it.
    since: SystemTime,
    state: Mutex<Counts>,
}

#[derive(Debug)]
struct Counts {
    buckets: [Bucket; SLOTS],
    /// The minute of the log limit, the lines logged in it, and those left out since the last
    /// line logged.
    log_minute: u64,
    logged: u64,
    suppressed: u64,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Minutes since the Unix epoch this bucket counts.
    minute: u64,
    requests: u64,
    denials: [u64; REASONS],
}

const EMPTY: Bucket = Bucket {
    minute: 0,
    requests: 0,
    denials: [0; REASONS],
};

/// One replica's counts for one dry-run policy over the window, as its heartbeat Lease
/// carries them (annotation `tollgate.dev/dry-run`, `namespace/name` → this).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowReport {
    /// The generation counted (set by the heartbeat from what the replica serves).
    #[serde(default)]
    pub generation: i64,
    /// Unix seconds since which the replica counts this compiled policy.
    #[serde(default)]
    pub since: u64,
    /// Requests judged in the window.
    #[serde(default)]
    pub requests: u64,
    /// Would-be denials in the window by reason code.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub denials: BTreeMap<String, u64>,
}

fn minute_of(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl DryRunLedger {
    pub fn new() -> Arc<Self> {
        Arc::new(DryRunLedger::default())
    }

    /// Follows a newly published snapshot: counts of a dry-run policy compiled as before carry
    /// on, a recompiled one starts from zero, the others are dropped.
    pub fn sync<'p>(&self, policies: impl Iterator<Item = &'p Arc<Policy>>, now: SystemTime) {
        let mut map = self
            .policies
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next: HashMap<Arc<str>, Arc<PolicyCounts>> = HashMap::new();
        for policy in policies.filter(|p| p.dry_run) {
            let kept = map
                .get(&policy.id)
                .filter(|c| c.instance == policy.instance)
                .cloned();
            let counts = kept.unwrap_or_else(|| {
                Arc::new(PolicyCounts {
                    instance: policy.instance,
                    since: now,
                    state: Mutex::new(Counts {
                        buckets: [EMPTY; SLOTS],
                        log_minute: 0,
                        logged: 0,
                        suppressed: 0,
                    }),
                })
            });
            next.insert(policy.id.clone(), counts);
        }
        self.any.store(!next.is_empty(), Ordering::Release);
        *map = next;
    }

    /// Records one decision (after the answer went out): a request judged by a dry-run policy
    /// is counted, and a would-be denial is logged unless this policy's lines for the minute
    /// are used up.
    pub fn observe(&self, info: &RequestInfo<'_>, decision: &Decision, now: SystemTime) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let Some(id) = decision.policy() else {
            return;
        };
        let counts = {
            let map = self.policies.read().unwrap_or_else(PoisonError::into_inner);
            match map.get(id) {
                Some(counts) => counts.clone(),
                None => return,
            }
        };
        let would_deny = decision.would_deny();
        let log = counts.record(would_deny.map(|d| d.reason), now);
        if let (Some(suppressed), Decision::Allow(allow), Some(deny)) = (log, decision, would_deny)
        {
            telemetry::log_would_deny(info, allow, deny, suppressed);
        }
    }

    /// What this replica would report now: per dry-run policy, its compiled instance and the
    /// counts of the window (the generation is the caller's to fill in).
    pub fn report(&self, now: SystemTime) -> BTreeMap<Arc<str>, (u64, WindowReport)> {
        let map = self.policies.read().unwrap_or_else(PoisonError::into_inner);
        map.iter()
            .map(|(id, counts)| (id.clone(), (counts.instance, counts.window(now))))
            .collect()
    }
}

impl PolicyCounts {
    /// Counts a request (and its would-be denial reason); `Some(lines left out)` when its
    /// would-deny line may be logged.
    fn record(&self, reason: Option<Reason>, now: SystemTime) -> Option<u64> {
        let minute = minute_of(now);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = &mut state.buckets[(minute % WINDOW_MINUTES) as usize];
        if bucket.minute != minute {
            *bucket = Bucket { minute, ..EMPTY };
        }
        bucket.requests += 1;
        let reason = reason?;
        bucket.denials[reason as usize] += 1;
        let limit = LOG_LIMIT.load(Ordering::Relaxed);
        if state.log_minute != minute {
            state.log_minute = minute;
            state.logged = 0;
        }
        if limit == 0 || state.logged < limit {
            state.logged += 1;
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed += 1;
            None
        }
    }

    /// The counts of the buckets inside the window ending at `now`.
    fn window(&self, now: SystemTime) -> WindowReport {
        let current = minute_of(now);
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut requests = 0;
        let mut denials = [0u64; REASONS];
        for bucket in &state.buckets {
            if bucket.minute + WINDOW_MINUTES > current && bucket.minute <= current {
                requests += bucket.requests;
                for (sum, n) in denials.iter_mut().zip(bucket.denials) {
                    *sum += n;
                }
            }
        }
        WindowReport {
            generation: 0,
            since: unix_seconds(self.since),
            requests,
            denials: Reason::ALL
                .iter()
                .zip(denials)
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| (r.as_str().to_string(), n))
                .collect(),
        }
    }
}

/// The window as `status.dryRun.window` writes it.
pub fn window_text() -> String {
    humantime::format_duration(Duration::from_secs(WINDOW_MINUTES * 60)).to_string()
}

#[cfg(test)]
mod tests;

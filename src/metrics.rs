//! Prometheus metrics: decisions, check latency, policy reloads, readiness, the generation of
//! each served policy, key sources and introspection (read from the live sources and
//! introspectors at scrape time, so they never go stale).
//!
//! Label values are bounded: policy ids (as many as loaded policies), reason codes, transports,
//! key source URLs and the issuers their discovery is for (those of tenants an issuer template
//! admits by its condition among them: at most its `maxTenants`). Tokens, subjects and hosts are
//! never labels.
//!
//! What the alerts of the Helm chart (docs/operations.md) compare across replicas:
//! `tollgate_policy_generation` is, per policy, the `metadata.generation` this replica serves —
//! the very report its heartbeat Lease gives the status writer (`status.replicas`); and
//! `tollgate_ready` with `tollgate_start_time_seconds` show readiness lost and regained.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::decision::Decision;
use crate::jwks::{KeySources, Origin, SourceStatus};
use crate::verified::TokenCache;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    transport: &'static str,
    policy: String,
    result: &'static str,
    reason: &'static str,
}

/// Would-be denials of dry-run policies: one series per policy and reason code, bounded like
/// the decision counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DryRunLabels {
    policy: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    transport: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    listener: &'static str,
    outcome: &'static str,
}

/// All metrics of one process.
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    reloads: Family<OutcomeLabels, Counter>,
    policies: Gauge,
    policy_problems: Gauge,
    reload_duration: Histogram,
    handshakes: Family<HandshakeLabels, Counter>,
    dry_run_denials: Family<DryRunLabels, Counter>,
    ready: Gauge,
    /// `namespace/name` → served generation, replaced whole (a scrape never sees half a list).
    served: Arc<Mutex<Arc<BTreeMap<String, i64>>>>,
    /// The decision log's counts (`tollgate_decision_log_*`, exported while it is on).
    pub decision_log: Arc<crate::decision_log::Counters>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Creates the registry; key source and token cache metrics are read from `sources` and
    /// `token_cache` at each scrape.
    pub fn new(
        sources: Option<Arc<KeySources>>,
        token_cache: Option<Arc<TokenCache>>,
    ) -> Arc<Self> {
        let mut registry = Registry::with_prefix("tollgate");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Check decisions by transport, policy, result and reason",
            decisions.clone(),
        );
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(|| {
            // 20 µs … ~5 s
            Histogram::new(exponential_buckets(0.00002, 2.0, 19))
        });
        registry.register(
            "check_duration_seconds",
            "Time to decide one check",
            latency.clone(),
        );
        let reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy reloads by outcome (ok, problems)",
            reloads.clone(),
        );
        // 1 ms … ~16 s
        let reload_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "policy_reload_duration_seconds",
            "Time to read, compile, index and publish the policies after a change",
            reload_duration.clone(),
        );
        let policies = Gauge::default();
        registry.register(
            "policies",
            "Policies in the current snapshot",
            policies.clone(),
        );
        let policy_problems = Gauge::default();
        registry.register(
            "policy_problems",
            "Policy documents that failed to parse or compile in the last reload",
            policy_problems.clone(),
        );
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes on a listener by outcome (ok, refused, timeout)",
            handshakes.clone(),
        );
        let dry_run_denials = Family::<DryRunLabels, Counter>::default();
        registry.register(
            "dry_run_denials",
            "Requests a policy in mode: dryRun would have denied (and allowed), by policy and reason",
            dry_run_denials.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 when the replica is ready (policies loaded, their keys fetched once), as /readyz answers",
            ready.clone(),
        );
        let started = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        started.set(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        registry.register(
            "start_time_seconds",
            "Unix time the process started (a change is a restart)",
            started,
        );
        let served = Arc::new(Mutex::new(Arc::new(BTreeMap::new())));
        registry.register_collector(Box::new(ServedCollector {
            served: served.clone(),
        }));
        let decision_log = Arc::new(crate::decision_log::Counters::default());
        registry.register_collector(Box::new(decision_log.collector()));
        if let Some(sources) = sources {
            registry.register_collector(Box::new(SourceCollector { sources }));
        }
        if let Some(cache) = token_cache {
            registry.register_collector(Box::new(CacheCollector { cache }));
        }
        Arc::new(Metrics {
            registry,
            decisions,
            latency,
            reloads,
            policies,
            policy_problems,
            reload_duration,
            handshakes,
            dry_run_denials,
            ready,
            served,
            decision_log,
        })
    }

    /// Sets the readiness gauge (what `/readyz` answers).
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The policies this replica serves (`namespace/name` → `metadata.generation`), as its
    /// heartbeat reports them (Kubernetes mode).
    pub fn set_served(&self, served: BTreeMap<String, i64>) {
        *self.served.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(served);
    }

    /// Counts a decision and its latency.
    pub fn observe(&self, transport: &'static str, decision: &Decision, elapsed: Duration) {
        let result = if decision.is_allow() { "allow" } else { "deny" };
        self.decisions
            .get_or_create(&DecisionLabels {
                transport,
                policy: decision.policy().unwrap_or("").to_string(),
                result,
                reason: decision.reason().as_str(),
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels { transport, result })
            .observe(elapsed.as_secs_f64());
        if let Some(deny) = decision.would_deny() {
            self.dry_run_denials
                .get_or_create(&DryRunLabels {
                    policy: decision.policy().unwrap_or("").to_string(),
                    reason: deny.reason.as_str(),
                })
                .inc();
        }
    }

    /// Records a reload and how long it took.
    pub fn reloaded(&self, policies: usize, problems: usize, duration: Duration) {
        let outcome = if problems == 0 { "ok" } else { "problems" };
        self.reloads.get_or_create(&OutcomeLabels { outcome }).inc();
        self.reload_duration.observe(duration.as_secs_f64());
        self.set_policies(policies, problems);
    }

    /// Counts a snapshot the Kubernetes watch published (a reload whose duration the watch
    /// does not measure), with the policies that have problems then.
    pub fn published(&self, problems: usize) {
        let outcome = if problems == 0 { "ok" } else { "problems" };
        self.reloads.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts a TLS handshake on `listener` (`ok`, `refused`, `timeout`).
    pub fn tls_handshake(&self, listener: &'static str, outcome: &'static str) {
        self.handshakes
            .get_or_create(&HandshakeLabels { listener, outcome })
            .inc();
    }

    /// Sets the policy gauges (served policies, policies with problems).
    pub fn set_policies(&self, policies: usize, problems: usize) {
        self.policies.set(policies as i64);
        self.policy_problems.set(problems as i64);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The generation of each served policy.
#[derive(Debug)]
struct ServedCollector {
    served: Arc<Mutex<Arc<BTreeMap<String, i64>>>>,
}

impl Collector for ServedCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let served = self
            .served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        family(
            &mut encoder,
            "policy_generation",
            "The metadata.generation of each policy this replica serves (Kubernetes mode): the same on every replica once they all loaded it",
            served.iter().map(|(policy, generation)| {
                (
                    vec![("policy", policy.as_str())],
                    ConstGauge::new(*generation),
                )
            }),
        )
    }
}

/// The issuer a key source's discovery document must name; empty for a JWKS URI, which may
/// serve several issuers.
fn issuer_of(origin: &Origin) -> &str {
    match origin {
        Origin::Discovery { issuer, .. } => issuer,
        Origin::JwksUri { .. } | Origin::Fixed => "",
    }
}

/// Key source and introspection metrics, computed from the live sources on each scrape.
#[derive(Debug)]
struct SourceCollector {
    sources: Arc<KeySources>,
}

/// Encodes one metric family with one sample per (labels, value) row.
fn family<'a, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'static str, &'a str)>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut rows = rows.into_iter().peekable();
    let Some((_, first)) = rows.peek() else {
        return Ok(());
    };
    let mut metric = encoder.encode_descriptor(name, help, None, first.metric_type())?;
    for (labels, value) in rows {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for SourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut sources = self.sources.live();
        sources.sort_by(|a, b| a.id().cmp(b.id()));
        let statuses: Vec<_> = sources
            .iter()
            .map(|s| (s.id().to_string(), issuer_of(s.origin()), s.status()))
            .collect();
        let now = SystemTime::now();
        fn gauge<'a>(
            id: &'a str,
            issuer: &'a str,
            value: f64,
        ) -> (Vec<(&'static str, &'a str)>, ConstGauge<f64>) {
            (
                vec![("source", id), ("issuer", issuer)],
                ConstGauge::new(value),
            )
        }

        family(
            &mut encoder,
            "jwks_keys",
            "Usable keys in each key set",
            statuses
                .iter()
                .map(|(id, issuer, s)| gauge(id, issuer, s.key_count as f64)),
        )?;
        family(
            &mut encoder,
            "jwks_up",
            "1 if the last fetch of the key set succeeded",
            statuses.iter().map(|(id, issuer, s)| {
                gauge(
                    id,
                    issuer,
                    f64::from(u8::from(s.last_success.is_some() && s.last_error.is_none())),
                )
            }),
        )?;
        family(
            &mut encoder,
            "jwks_age_seconds",
            "Seconds since the key set was last fetched successfully (-1: never)",
            statuses.iter().map(|(id, issuer, s)| {
                let age = s
                    .last_success
                    .and_then(|t| now.duration_since(t).ok())
                    .map_or(-1.0, |d| d.as_secs_f64());
                gauge(id, issuer, age)
            }),
        )?;
        let counters =
            |label: &'static str, pick: fn(&SourceStatus) -> [(&'static str, u64); 2]| {
                statuses
                    .iter()
                    .flat_map(move |(id, issuer, s)| {
                        pick(s).map(|(value, n)| {
                            (
                                vec![("source", id.as_str()), ("issuer", *issuer), (label, value)],
                                ConstCounter::new(n),
                            )
                        })
                    })
                    .collect::<Vec<_>>()
            };
        family(
            &mut encoder,
            "jwks_fetches",
            "Key set fetches by outcome",
            counters("outcome", |s| {
                [("ok", s.fetches_ok), ("error", s.fetches_failed)]
            }),
        )?;
        family(
            &mut encoder,
            "jwks_key_lookups",
            "Token key lookups in the cached key set: hit (key found) or miss (unknown kid)",
            counters("result", |s| [("hit", s.key_hits), ("miss", s.key_misses)]),
        )?;
        family(
            &mut encoder,
            "jwks_unknown_kid_refetches",
            "Refetches caused by tokens with an unknown kid, by outcome",
            counters("outcome", |s| {
                [
                    ("refreshed", s.miss_refetches),
                    ("rate_limited", s.miss_rate_limited),
                ]
            }),
        )?;
        let mut introspection = self.sources.live_introspection();
        introspection.sort_by(|a, b| a.0.cmp(&b.0));
        family(
            &mut encoder,
            "introspection_requests",
            "Introspection calls (RFC 7662, userinfo) by policy and outcome: active, inactive, or why there was no answer (unavailable, timeout, failed, invalid)",
            introspection.iter().flat_map(|(policy, stats)| {
                stats.outcomes().map(|(outcome, n)| {
                    (
                        vec![("policy", &**policy), ("outcome", outcome)],
                        ConstCounter::new(n),
                    )
                })
            }),
        )?;
        family(
            &mut encoder,
            "introspection_duration_seconds",
            "Time an introspection call took, its answer's verification included",
            introspection
                .iter()
                .map(|(policy, stats)| (vec![("policy", &**policy)], stats.duration().clone())),
        )?;
        family(
            &mut encoder,
            "introspection_cache_lookups",
            "Introspection answer cache lookups by policy: hit (answered without a call of its own, a call in flight shared) or miss",
            introspection.iter().flat_map(|(policy, stats)| {
                let (hits, misses) = stats.lookups();
                [("hit", hits), ("miss", misses)].map(|(result, n)| {
                    (
                        vec![("policy", &**policy), ("result", result)],
                        ConstCounter::new(n),
                    )
                })
            }),
        )?;
        Ok(())
    }
}

/// Verified-token cache metrics, read from the cache on each scrape.
#[derive(Debug)]
struct CacheCollector {
    cache: Arc<TokenCache>,
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.cache.stats();
        family(
            &mut encoder,
            "token_cache_lookups",
            "Verified-token cache lookups: hit, miss, or stale (found but expired, past max age, or verified with replaced keys)",
            [
                ("hit", stats.hits),
                ("miss", stats.misses),
                ("stale", stats.stale),
            ]
            .map(|(result, n)| (vec![("result", result)], ConstCounter::new(n))),
        )?;
        family(
            &mut encoder,
            "token_cache_inserts",
            "Tokens added to the verified-token cache",
            [(vec![], ConstCounter::new(stats.inserts))],
        )?;
        family(
            &mut encoder,
            "token_cache_entries",
            "Tokens in the verified-token cache",
            [(vec![], ConstGauge::new(stats.entries as f64))],
        )?;
        family(
            &mut encoder,
            "token_cache_weight_bytes",
            "Estimated bytes the verified-token cache holds (its bounded weight)",
            [(vec![], ConstGauge::new(stats.weight as f64))],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{Allow, Reason};
    use crate::fixtures::mk_policy;

    #[test]
    fn dry_run_denials_are_counted_by_policy_and_reason_only() {
        let metrics = Metrics::new(None, None);
        let policy = mk_policy("orders", "{mode: dryRun}");
        let deny =
            |reason| crate::engine::deny(Some(&policy), "h", reason, "why".into(), None, None);
        let would = |reason| match deny(reason) {
            Decision::Deny(d) => Decision::Allow(Allow {
                policy: Some(policy.id.clone()),
                reason: Reason::DryRun,
                dry_run: Some(Box::new(d)),
                ..Allow::default()
            }),
            allow => allow,
        };
        for decision in [
            would(Reason::TokenExpired),
            would(Reason::TokenExpired),
            would(Reason::IssuerUnavailable),
            // An enforced denial and a plain allow are decisions, not dry-run denials.
            deny(Reason::TokenExpired),
            Decision::Allow(Allow {
                policy: Some(policy.id.clone()),
                ..Allow::default()
            }),
        ] {
            metrics.observe("grpc", &decision, Duration::from_millis(1));
        }
        let text = metrics.encode();
        // A metric family encodes its series in no particular order.
        let mut series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tollgate_dry_run_denials_total"))
            .collect();
        series.sort_unstable();
        assert_eq!(
            series,
            [
                "tollgate_dry_run_denials_total{policy=\"test/orders\",reason=\"issuer_unavailable\"} 1",
                "tollgate_dry_run_denials_total{policy=\"test/orders\",reason=\"token_expired\"} 2",
            ],
            "{text}"
        );
    }

    fn series(metrics: &Metrics, prefix: &str) -> Vec<String> {
        let text = metrics.encode();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect();
        lines.sort_unstable();
        lines
    }

    #[test]
    fn readiness_start_time_and_served_generations() {
        let metrics = Metrics::new(None, None);
        assert_eq!(series(&metrics, "tollgate_ready"), ["tollgate_ready 0"]);
        metrics.set_ready(true);
        assert_eq!(series(&metrics, "tollgate_ready"), ["tollgate_ready 1"]);
        let started = metric_value(&metrics, "tollgate_start_time_seconds ");
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        assert!((now - 60.0..=now).contains(&started), "{started} vs {now}");

        // Files mode: no generations to compare.
        assert_eq!(
            series(&metrics, "tollgate_policy_generation"),
            Vec::<String>::new()
        );
        metrics.set_served(BTreeMap::from([
            ("shop/orders".to_string(), 3),
            ("shop/billing".to_string(), 1),
        ]));
        assert_eq!(
            series(&metrics, "tollgate_policy_generation"),
            [
                "tollgate_policy_generation{policy=\"shop/billing\"} 1",
                "tollgate_policy_generation{policy=\"shop/orders\"} 3",
            ]
        );
        // A policy no longer served leaves; the list is replaced whole.
        metrics.set_served(BTreeMap::from([("shop/orders".to_string(), 4)]));
        assert_eq!(
            series(&metrics, "tollgate_policy_generation"),
            ["tollgate_policy_generation{policy=\"shop/orders\"} 4"]
        );
    }

    fn metric_value(metrics: &Metrics, prefix: &str) -> f64 {
        series(metrics, prefix)
            .first()
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {}", metrics.encode()))
    }

    #[test]
    fn key_sources_name_the_issuer_their_discovery_is_for() {
        use crate::jwks::Reach;
        let sources = KeySources::offline().expect("client");
        let discovery = "https://idp.example/.well-known/openid-configuration";
        let jwks = "https://keys.example/jwks.json";
        let _discovered = sources.remote(Origin::Discovery {
            url: discovery.parse().expect("url"),
            issuer: "https://idp.example/".into(),
            reach: Reach::new(false, false),
            trust: None,
        });
        let _listed = sources.remote(Origin::JwksUri {
            url: jwks.parse().expect("url"),
            reach: Reach::new(false, false),
            trust: None,
        });
        let metrics = Metrics::new(Some(sources), None);
        assert_eq!(
            series(&metrics, "tollgate_jwks_age_seconds"),
            [
                format!(
                    "tollgate_jwks_age_seconds{{source=\"{discovery}\",issuer=\"https://idp.example/\"}} -1.0"
                ),
                format!("tollgate_jwks_age_seconds{{source=\"{jwks}\",issuer=\"\"}} -1.0"),
            ]
        );
        assert_eq!(
            series(&metrics, "tollgate_jwks_fetches_total{source=\"https://idp"),
            [
                format!(
                    "tollgate_jwks_fetches_total{{source=\"{discovery}\",issuer=\"https://idp.example/\",outcome=\"error\"}} 0"
                ),
                format!(
                    "tollgate_jwks_fetches_total{{source=\"{discovery}\",issuer=\"https://idp.example/\",outcome=\"ok\"}} 0"
                ),
            ]
        );
    }
}

//! Tenants an issuer template admits by its condition (`admitTenants`), built when a token
//! first names them.
//!
//! ```text
//! iss ─► template shape (tenant_of) ─► condition(tenant)? ──false/error──► issuer_not_allowed
//!                                             │ true                       (nothing fetched)
//!        admitted (moka: idle expiry) ◄── hit ─┤
//!        failed (moka: negative TTL)  ◄── hit ─┼─────────────────────────► issuer_unavailable
//!                                             │ miss: one first use per tenant, coalesced,
//!                                             │ in a task of its own
//!        a slot free? ──no──────────────────────────────────────────────► issuer_unavailable
//!             │ yes                                              (no admitted tenant evicted)
//!        build the issuer (URL checks, SSRF guard, shared key source of its URL)
//!        ─► wait for its first fetch (the fetch timeouts) ─► admitted, or failed for a while
//! ```
//!
//! The snapshot the request path reads stays immutable: what changes lives here, in caches the
//! compiled template owns, shared by every clone of the policy and dropped with it. A first use
//! runs in a task of its own, which the requests waiting for it share: a request that goes away
//! (the proxy's timeout) neither stops the fetch nor leaves its slot taken.
//!
//! Bound and eviction: at most `maxTenants` tenants hold a slot at once (those admitted, and
//! those whose first fetch runs). A tenant no token named for
//! [`RefreshSettings::admitted_idle`](crate::jwks::RefreshSettings::admitted_idle) (an hour)
//! leaves its slot. While every slot is held, a new tenant is answered `issuer_unavailable`
//! and nobody is evicted for it: a stream of tenants the condition admits can keep new tenants
//! out for as long as it lasts, never take the keys of tenants in use. A tenant whose first
//! fetch fails (an unknown realm answers 404) holds no slot: it is remembered as failed for
//! `--unknown-kid-refetch-interval` (30 s) and answered from that meanwhile, so a stream of
//! its tokens costs one fetch per interval. First fetches and refreshes of admitted tenants
//! have their own budget of outbound calls, so they never delay the refresh of listed issuers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};

use super::TenantCondition;
use crate::expression::{Environment, EvalError};
use crate::jwks::KeySources;
use crate::policy::Issuer;
use crate::policy::spec::IssuerSpec;

/// Why a tenant the condition admits has no issuer to judge its token with (503
/// `issuer_unavailable`: the token may well be valid).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    /// Every slot is held by a tenant in use; none is evicted for a new one.
    #[error(
        "all {max} tenants {field}.admitTenants holds at once are in use (maxTenants); a tenant leaves its slot after {idle} without tokens"
    )]
    Full {
        field: String,
        max: usize,
        idle: String,
    },
    /// The tenant's issuer does not compile (its URLs with the tenant in them).
    #[error("{0}")]
    Invalid(String),
    /// The first fetch of the tenant's keys failed.
    #[error(
        "its keys could not be fetched: {detail} (a tenant whose first fetch failed is asked again after {retry})"
    )]
    Unavailable { detail: String, retry: String },
}

/// A tenant's issuer, and whether this request (or one concurrent with it) built it.
#[derive(Clone, Debug)]
pub struct Admitted {
    pub issuer: Arc<Issuer>,
    pub first: bool,
}

/// What the issuer of a tenant is built from, besides the tenant.
struct Blueprint {
    spec: IssuerSpec,
    namespace: String,
    policy_id: Arc<str>,
    /// Index of the template in the policy's `templates`.
    template: usize,
}

/// A first use under way, shared by the requests that wait for it.
type FirstUse = Shared<BoxFuture<'static, Result<Arc<Issuer>, AdmitError>>>;

/// The tenants one template's condition admitted, and those that failed.
pub struct Admission {
    /// Where the template is written, e.g. `spec.issuers[2]`.
    pub field: String,
    pub condition: TenantCondition,
    environment: Environment,
    blueprint: Blueprint,
    key_sources: Arc<KeySources>,
    admitted: moka::future::Cache<Arc<str>, Arc<Issuer>>,
    /// Slots held: admitted tenants and first uses under way. At most `max_tenants`.
    held: Arc<AtomicUsize>,
    /// Tenants whose first fetch failed, with why, for the negative TTL.
    failed: moka::future::Cache<Arc<str>, Arc<str>>,
    /// First uses under way, by tenant.
    first_uses: Mutex<HashMap<Arc<str>, FirstUse>>,
    idle: Duration,
    negative_ttl: Duration,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("field", &self.field)
            .field("expression", &self.condition.expression.source)
            .field("max_tenants", &self.condition.max_tenants)
            .field("held", &self.held())
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// The admission of the template `spec` at `field`, the `template`-th of policy
    /// `policy_id`. Nothing is built or fetched until a token names a tenant.
    pub fn new(
        field: &str,
        condition: TenantCondition,
        spec: &IssuerSpec,
        namespace: &str,
        policy_id: Arc<str>,
        template: usize,
        key_sources: &KeySources,
    ) -> Admission {
        let settings = key_sources.settings();
        let held = Arc::new(AtomicUsize::new(0));
        let released = held.clone();
        let admitted = moka::future::Cache::builder()
            // A safety net: `held` keeps the count at or below it, so nothing is evicted for
            // size. Whatever leaves (idle, or that net) gives its slot back.
            .max_capacity(condition.max_tenants as u64)
            .time_to_idle(settings.admitted_idle)
            .eviction_listener(move |_, _, _| {
                let _ = released.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    Some(n.saturating_sub(1))
                });
            })
            .build();
        let failed = moka::future::Cache::builder()
            .max_capacity((condition.max_tenants as u64 * 4).max(256))
            .time_to_live(settings.miss_refetch_interval)
            .build();
        Admission {
            field: field.to_string(),
            environment: Environment::new([&*condition.expression]),
            condition,
            blueprint: Blueprint {
                spec: spec.clone(),
                namespace: namespace.to_string(),
                policy_id,
                template,
            },
            key_sources: key_sources.handle(),
            admitted,
            held,
            failed,
            first_uses: Mutex::new(HashMap::new()),
            idle: settings.admitted_idle,
            negative_ttl: settings.miss_refetch_interval,
        }
    }

    /// Whether the condition admits `tenant` (an error admits nothing).
    pub fn admits(&self, tenant: &str) -> Result<bool, EvalError> {
        self.condition.expression.admits(&self.environment, tenant)
    }

    /// Slots held now (admitted tenants and first uses under way).
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// The issuer of a tenant admitted already, without building or fetching anything.
    pub async fn cached(&self, tenant: &str) -> Option<Arc<Issuer>> {
        self.admitted.get(tenant).await
    }

    /// The issuer of `tenant`, which the condition admits (the caller asked [`Self::admits`]):
    /// the one admitted already, or built now and its keys fetched, once however many requests
    /// ask at the same time.
    pub async fn issuer(self: &Arc<Self>, tenant: &str) -> Result<Admitted, AdmitError> {
        if let Some(issuer) = self.admitted.get(tenant).await {
            return Ok(Admitted {
                issuer,
                first: false,
            });
        }
        if let Some(detail) = self.failed.get(tenant).await {
            return Err(self.unavailable(detail.to_string()));
        }
        let first_use = {
            let mut first_uses = self
                .first_uses
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            first_uses
                .entry(Arc::from(tenant))
                .or_insert_with_key(|tenant| {
                    // The fetch is traced as a child of the check that asked first.
                    let task =
                        tokio::spawn(opentelemetry::context::FutureExt::with_current_context(
                            Arc::clone(self).first_use(tenant.clone()),
                        ));
                    async move {
                        task.await.unwrap_or_else(|e| {
                            Err(AdmitError::Invalid(format!("the first use failed: {e}")))
                        })
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        first_use.await.map(|issuer| Admitted {
            issuer,
            first: true,
        })
    }

    fn unavailable(&self, detail: String) -> AdmitError {
        AdmitError::Unavailable {
            detail,
            retry: humantime::format_duration(self.negative_ttl).to_string(),
        }
    }

    /// A first use, in a task of its own: its result is in the caches before the requests
    /// waiting for it stop sharing it.
    async fn first_use(self: Arc<Self>, tenant: Arc<str>) -> Result<Arc<Issuer>, AdmitError> {
        let result = self.admit_now(&tenant).await;
        self.first_uses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&tenant);
        result
    }

    /// Builds a tenant's issuer in a slot of its own, which the admitted entry then holds; a
    /// failure gives the slot back, and a failed fetch is remembered for the negative TTL.
    async fn admit_now(&self, tenant: &Arc<str>) -> Result<Arc<Issuer>, AdmitError> {
        // Admitted by a first use that ended while this one started.
        if let Some(issuer) = self.admitted.get(&**tenant).await {
            return Ok(issuer);
        }
        if !self.reserve().await {
            return Err(AdmitError::Full {
                field: self.field.clone(),
                max: self.condition.max_tenants,
                idle: humantime::format_duration(self.idle).to_string(),
            });
        }
        match self.build(tenant).await {
            Ok(issuer) => {
                self.admitted.insert(tenant.clone(), issuer.clone()).await;
                Ok(issuer)
            }
            Err(error) => {
                self.release();
                if let AdmitError::Unavailable { detail, .. } = &error {
                    self.failed
                        .insert(tenant.clone(), Arc::from(detail.as_str()))
                        .await;
                }
                Err(error)
            }
        }
    }

    async fn reserve(&self) -> bool {
        let take = || {
            self.held
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.condition.max_tenants).then_some(n + 1)
                })
                .is_ok()
        };
        if take() {
            return true;
        }
        // Tenants idle past their time hold their slots until the cache's housekeeping runs.
        self.admitted.run_pending_tasks().await;
        take()
    }

    fn release(&self) {
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
    }

    async fn build(&self, tenant: &str) -> Result<Arc<Issuer>, AdmitError> {
        let b = &self.blueprint;
        let issuer = crate::policy::compile::admitted_issuer(
            &self.field,
            &b.namespace,
            &b.policy_id,
            &b.spec,
            tenant,
            b.template,
            &self.key_sources,
        )
        .map_err(AdmitError::Invalid)?;
        if self.key_sources.fetches() {
            // The source fetches as it starts (or has, when another policy uses it already);
            // each of its calls is bounded by the fetch timeout, waiting for a slot included.
            let limit = self.key_sources.fetcher().settings().timeout * 3;
            if tokio::time::timeout(limit, issuer.keys.wait_attempted())
                .await
                .is_err()
            {
                return Err(self.unavailable(format!(
                    "{}: the first fetch did not finish within {}",
                    issuer.keys.id(),
                    humantime::format_duration(limit)
                )));
            }
            issuer
                .keys
                .usable(SystemTime::now())
                .map_err(|e| self.unavailable(e.to_string()))?;
        }
        Ok(Arc::new(issuer))
    }
}

#[cfg(test)]
mod tests;

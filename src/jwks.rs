//! Issuer keys: parsing (`key`, `keyset`), fetching (`fetch`), and sources that refresh
//! themselves (`source`), shared across policies by origin through [`KeySources`].
//!
//! ```text
//! policy A ─┐                        ┌─ refresh task (holds Weak) ── discovery ─► JWKS
//!           ├─► Arc<KeySource> ──────┤
//! policy B ─┘   (one per origin)     └─ refresh_on_miss (unknown kid, coalesced, rate-limited)
//! ```

pub mod fetch;
pub mod guard;
pub mod key;
pub mod keyset;
pub mod roca;
pub mod source;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use crate::introspect::IntrospectionStats;

pub use fetch::{CaBundle, CaBundleError, FetchError, FetchSettings, Fetcher, TrustId};
pub use guard::Reach;
pub use key::{KeyError, KeyKind, VerifyingKey};
pub use keyset::{KeySet, KeySetError};
pub use source::{
    Endpoints, KeySource, Origin, Refetch, RefreshSettings, SourceError, SourceStatus, Unusable,
};

/// The registry of remote key sources, keyed by origin. Holds only `Weak` references: a
/// source lives as long as some compiled policy uses it.
pub struct KeySources {
    fetcher: Fetcher,
    /// The same clients with the introspection budget.
    introspection: Fetcher,
    /// The same clients with the budget of tenants admitted by an issuer template's condition.
    admitted: Fetcher,
    /// Itself, for what must hold the registry beyond compilation (tenants admitted at
    /// request time).
    this: Weak<KeySources>,
    settings: RefreshSettings,
    /// False for offline checks (`tollgate check-policy`, `explain --offline`): sources are
    /// created but never fetched.
    refresh: bool,
    sources: Mutex<HashMap<Origin, Weak<KeySource>>>,
    /// The introspection counters of each policy (by id) that introspects, held by its
    /// introspector: a recompiled policy keeps counting where it was (the metrics read them).
    introspection_stats: Mutex<HashMap<Arc<str>, Weak<IntrospectionStats>>>,
}

impl std::fmt::Debug for KeySources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySources")
            .field("live", &self.live().len())
            .finish()
    }
}

impl KeySources {
    pub fn new(fetcher: Fetcher, settings: RefreshSettings) -> Arc<Self> {
        Self::build(fetcher, settings, true)
    }

    /// A registry that never fetches, for validating policies offline.
    pub fn offline() -> Result<Arc<Self>, FetchError> {
        let fetcher = Fetcher::new(FetchSettings::default())?;
        Ok(Self::build(fetcher, RefreshSettings::default(), false))
    }

    fn build(fetcher: Fetcher, settings: RefreshSettings, refresh: bool) -> Arc<Self> {
        Arc::new_cyclic(|this| KeySources {
            introspection: fetcher.with_budget(fetcher.settings().max_concurrent_introspection),
            admitted: fetcher.with_budget(fetcher.settings().max_concurrent_admitted),
            fetcher,
            this: this.clone(),
            settings,
            refresh,
            sources: Mutex::new(HashMap::new()),
            introspection_stats: Mutex::new(HashMap::new()),
        })
    }

    /// The registry itself, shared.
    pub fn handle(&self) -> Arc<KeySources> {
        self.this
            .upgrade()
            .expect("invariant: a KeySources lives in the Arc its constructor returned")
    }

    /// The shared source for `origin`, created (and its refresh started) on first use.
    pub fn remote(&self, origin: Origin) -> Arc<KeySource> {
        self.remote_with(origin, &self.fetcher)
    }

    /// Like [`Self::remote`], fetched through the clients of `bundle` (an issuer with a private
    /// CA); `origin` must carry the bundle's id, so the source is shared only under that trust.
    pub fn remote_trusting(&self, origin: Origin, bundle: &CaBundle) -> Arc<KeySource> {
        self.remote_with(origin, &self.fetcher.with_ca_bundle(bundle))
    }

    /// The shared source for `origin` of a tenant an issuer template admitted by its
    /// condition: created with the budget of admitted tenants, unless some policy uses the
    /// source already.
    pub fn remote_admitted(&self, origin: Origin) -> Arc<KeySource> {
        self.remote_with(origin, &self.admitted)
    }

    fn remote_with(&self, origin: Origin, fetcher: &Fetcher) -> Arc<KeySource> {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = sources.get(&origin).and_then(Weak::upgrade) {
            return existing;
        }
        sources.retain(|_, weak| weak.strong_count() > 0);
        let source = if self.refresh {
            let source = KeySource::remote(origin.clone(), fetcher.clone(), self.settings.clone());
            source::spawn_refresh(&source);
            source
        } else {
            KeySource::unfetched(origin.clone())
        };
        sources.insert(origin, Arc::downgrade(&source));
        source
    }

    /// How sources refresh.
    pub fn settings(&self) -> &RefreshSettings {
        &self.settings
    }

    /// False for offline checks: sources are never fetched.
    pub fn fetches(&self) -> bool {
        self.refresh
    }

    /// The shared HTTP clients with the key-fetching budget.
    pub fn fetcher(&self) -> &Fetcher {
        &self.fetcher
    }

    /// The shared HTTP clients with the introspection budget of their own.
    pub fn introspection_fetcher(&self) -> &Fetcher {
        &self.introspection
    }

    /// The introspection counters of policy `id` (`namespace/name`), created on first use and
    /// shared by its compilations while one of them lives.
    pub fn introspection_stats(&self, id: &str) -> Arc<IntrospectionStats> {
        let mut stats = self
            .introspection_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = stats.get(id).and_then(Weak::upgrade) {
            return existing;
        }
        stats.retain(|_, weak| weak.strong_count() > 0);
        let created = Arc::new(IntrospectionStats::default());
        stats.insert(id.into(), Arc::downgrade(&created));
        created
    }

    /// The introspection counters of every policy still served, by policy id.
    pub fn live_introspection(&self) -> Vec<(Arc<str>, Arc<IntrospectionStats>)> {
        let stats = self
            .introspection_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        stats
            .iter()
            .filter_map(|(id, weak)| Some((id.clone(), weak.upgrade()?)))
            .collect()
    }

    /// Every source some policy still uses.
    pub fn live(&self) -> Vec<Arc<KeySource>> {
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources.values().filter_map(Weak::upgrade).collect()
    }
}

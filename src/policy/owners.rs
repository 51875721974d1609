//! Host ownership: a host belongs to one namespace.
//!
//! Without it, any namespace allowed to create a `JwtPolicy` could take another team's paths:
//! a longer prefix with `allowAnonymous: true` on the same host, or a `*` / wildcard policy that
//! catches every path an exact-host policy does not list. So ownership is decided per host,
//! before paths are looked at, the same way by every replica, the admission webhook and file
//! mode (all of them build the snapshot with [`crate::policy::Snapshot::build`]):
//!
//! 1. **Delegations** by a cluster operator ([`HostDelegations`], `--host-delegations`) come
//!    first: a delegated host or wildcard belongs to its namespace, whatever is older.
//! 2. Otherwise the **oldest policy** naming a host (or a wildcard covering it) owns it for its
//!    namespace. Policies are ordered by creation time (file mode: the order files were first
//!    loaded), ties by `namespace/name`.
//! 3. A newer policy in another namespace naming an owned host, or a wildcard that overlaps one,
//!    is not loaded (`HostConflict`, naming the owner) — unless the overlap is carved out by a
//!    delegation to one of the two namespaces.
//! 4. `*` is not a claim on hosts: it judges the hosts nobody owns, and one namespace (the
//!    oldest) holds it. A request for an owned host is judged only by policies of the owner's
//!    namespace (its exact, wildcard and `*` policies), never by another namespace's.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use serde::Deserialize;

use super::route::HostPattern;

/// `apiVersion` of a delegation file.
pub const DELEGATIONS_API_VERSION: &str = "tollgate.dev/v1alpha1";
/// `kind` of a delegation file.
pub const DELEGATIONS_KIND: &str = "HostDelegations";

/// Which hosts a namespace may claim without a delegation (`undelegatedHosts`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum Undelegated {
    /// Any host, wildcard or `*`: the oldest policy naming it owns it (the default; fits a
    /// cluster whose policy authors trust each other).
    #[default]
    OldestClaim,
    /// Exact hosts by the oldest claim; a wildcard or `*` only when delegated (a tenant cannot
    /// take every future subdomain or every unowned host).
    ExactHostsOnly,
    /// Nothing: every host a policy names must be delegated to its namespace.
    Refused,
}

/// Hosts a cluster operator has given to namespaces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostDelegations {
    exact: HashMap<String, Arc<str>>,
    wildcard: HashMap<String, Arc<str>>,
    /// The namespace `*` is delegated to, if any.
    any: Option<Arc<str>>,
    /// What may be claimed without a delegation.
    pub undelegated: Undelegated,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DelegationsDocument {
    api_version: String,
    kind: String,
    #[serde(default)]
    undelegated_hosts: Undelegated,
    #[serde(default)]
    delegations: Vec<DelegationEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DelegationEntry {
    namespace: String,
    hosts: Vec<String>,
}

/// Whether every host `inner` matches is matched by `outer` (neither is `*`).
pub fn within(inner: &HostPattern, outer: &HostPattern) -> bool {
    match (inner, outer) {
        (_, HostPattern::Any) => true,
        (HostPattern::Any, _) => false,
        (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
        (HostPattern::Exact(_), HostPattern::Wildcard(_)) => outer.matches(host_of(inner)),
        (HostPattern::Wildcard(_), HostPattern::Exact(_)) => false,
        (HostPattern::Wildcard(a), HostPattern::Wildcard(b)) => {
            a == b || (a.len() > b.len() + 1 && a.ends_with(&format!(".{b}")))
        }
    }
}

fn host_of(pattern: &HostPattern) -> &str {
    match pattern {
        HostPattern::Exact(h) | HostPattern::Wildcard(h) => h,
        HostPattern::Any => "*",
    }
}

/// Whether some host is matched by both patterns.
pub fn overlap(a: &HostPattern, b: &HostPattern) -> bool {
    within(a, b) || within(b, a)
}

/// The hosts and wildcards policies have claimed, with the first namespace and policy to claim
/// each, indexed so that finding the claims overlapping a new one costs a few hash lookups (and a
/// scan only for a new wildcard).
#[derive(Debug, Default)]
pub struct Claims {
    exact: HashMap<String, (Arc<str>, Arc<str>)>,
    wildcard: HashMap<String, (Arc<str>, Arc<str>)>,
}

impl Claims {
    /// Records a claim (the first claimant of a pattern stays).
    pub fn insert(&mut self, pattern: &HostPattern, namespace: &Arc<str>, policy: &Arc<str>) {
        let slot = match pattern {
            HostPattern::Exact(h) => self.exact.entry(h.clone()),
            HostPattern::Wildcard(s) => self.wildcard.entry(s.clone()),
            HostPattern::Any => return,
        };
        slot.or_insert_with(|| (namespace.clone(), policy.clone()));
    }

    /// The claims overlapping `pattern`: (the claimed pattern, namespace, policy).
    pub fn overlapping(&self, pattern: &HostPattern) -> Vec<(HostPattern, &Arc<str>, &Arc<str>)> {
        let mut out = Vec::new();
        let wild = |s: &str| HostPattern::Wildcard(s.to_string());
        let (name, is_wildcard) = match pattern {
            HostPattern::Exact(h) => (h.as_str(), false),
            HostPattern::Wildcard(s) => (s.as_str(), true),
            HostPattern::Any => return out,
        };
        if !is_wildcard && let Some((ns, policy)) = self.exact.get(name) {
            out.push((pattern.clone(), ns, policy));
        }
        if is_wildcard && let Some((ns, policy)) = self.wildcard.get(name) {
            out.push((pattern.clone(), ns, policy));
        }
        // Wildcards covering it: *.example.com covers a.example.com and *.a.example.com.
        let mut rest = name;
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some((ns, policy)) = self.wildcard.get(suffix) {
                out.push((wild(suffix), ns, policy));
            }
            rest = suffix;
        }
        // Claims a new wildcard covers.
        if is_wildcard {
            let tail = format!(".{name}");
            for (host, (ns, policy)) in &self.exact {
                if host.ends_with(&tail) {
                    out.push((HostPattern::Exact(host.clone()), ns, policy));
                }
            }
            for (suffix, (ns, policy)) in &self.wildcard {
                if suffix.ends_with(&tail) {
                    out.push((wild(suffix), ns, policy));
                }
            }
        }
        out
    }
}

impl HostDelegations {
    /// No delegations: ownership is by age alone.
    pub fn none() -> Arc<Self> {
        Arc::new(HostDelegations::default())
    }

    /// Reads a delegation file:
    ///
    /// ```yaml
    /// apiVersion: tollgate.dev/v1alpha1
    /// kind: HostDelegations
    /// delegations:
    /// - namespace: shop
    ///   hosts: [api.example.com, "*.shop.example.com"]
    /// ```
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading host delegations {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("host delegations {}", path.display()))
    }

    /// Parses the YAML of a delegation file; every problem is an error, nothing is skipped.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let doc: DelegationsDocument = serde_yaml::from_str(text).context("not valid YAML")?;
        if doc.api_version != DELEGATIONS_API_VERSION || doc.kind != DELEGATIONS_KIND {
            anyhow::bail!(
                "expected apiVersion {DELEGATIONS_API_VERSION} and kind {DELEGATIONS_KIND}, found {} {}",
                doc.api_version,
                doc.kind
            );
        }
        let mut out = HostDelegations {
            undelegated: doc.undelegated_hosts,
            ..HostDelegations::default()
        };
        for (i, entry) in doc.delegations.iter().enumerate() {
            let field = format!("delegations[{i}]");
            let namespace = entry.namespace.trim();
            let valid = !namespace.is_empty()
                && namespace.len() <= 63
                && namespace
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid {
                anyhow::bail!("{field}.namespace: {namespace:?} is not a namespace name");
            }
            let namespace: Arc<str> = namespace.into();
            for (j, host) in entry.hosts.iter().enumerate() {
                let pattern = HostPattern::parse(host)
                    .map_err(|e| anyhow::anyhow!("{field}.hosts[{j}]: {e}"))?;
                let slot = match &pattern {
                    HostPattern::Exact(h) => out.exact.entry(h.clone()),
                    HostPattern::Wildcard(s) => out.wildcard.entry(s.clone()),
                    HostPattern::Any => {
                        match &out.any {
                            Some(taken) if *taken != namespace => anyhow::bail!(
                                "{field}.hosts[{j}]: \"*\" is already delegated to namespace {taken}"
                            ),
                            _ => out.any = Some(namespace.clone()),
                        }
                        continue;
                    }
                };
                match slot {
                    std::collections::hash_map::Entry::Occupied(taken)
                        if *taken.get() != namespace =>
                    {
                        anyhow::bail!(
                            "{field}.hosts[{j}]: {pattern} is already delegated to namespace {}",
                            taken.get()
                        );
                    }
                    std::collections::hash_map::Entry::Occupied(_) => {}
                    std::collections::hash_map::Entry::Vacant(free) => {
                        free.insert(namespace.clone());
                    }
                }
            }
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.is_none()
    }

    /// The namespace `*` (the hosts nobody owns) is delegated to.
    pub fn any(&self) -> Option<&Arc<str>> {
        self.any.as_ref()
    }

    /// Whether a policy may claim `pattern` without a delegation covering it.
    pub fn claimable_undelegated(&self, pattern: &HostPattern) -> bool {
        match self.undelegated {
            Undelegated::OldestClaim => true,
            Undelegated::ExactHostsOnly => matches!(pattern, HostPattern::Exact(_)),
            Undelegated::Refused => false,
        }
    }

    /// The delegation covering `pattern` most specifically: (the delegated pattern, namespace).
    pub fn covering(&self, pattern: &HostPattern) -> Option<(HostPattern, &Arc<str>)> {
        if let HostPattern::Exact(h) = pattern
            && let Some(ns) = self.exact.get(h)
        {
            return Some((pattern.clone(), ns));
        }
        let mut rest = match pattern {
            HostPattern::Exact(h) => h.as_str(),
            // A wildcard is covered by the same wildcard or a shorter one.
            HostPattern::Wildcard(s) => {
                if let Some(ns) = self.wildcard.get(s) {
                    return Some((pattern.clone(), ns));
                }
                s.as_str()
            }
            HostPattern::Any => return None,
        };
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(ns) = self.wildcard.get(suffix) {
                return Some((HostPattern::Wildcard(suffix.to_string()), ns));
            }
            rest = suffix;
        }
        None
    }

    /// The namespace a request host (normalized) is delegated to, if any.
    pub fn owner_of_host(&self, host: &str) -> Option<&Arc<str>> {
        self.covering(&HostPattern::Exact(host.to_string()))
            .map(|(_, ns)| ns)
    }

    /// Every delegation, for building the ownership index: (pattern, namespace).
    pub fn entries(&self) -> impl Iterator<Item = (HostPattern, &Arc<str>)> {
        self.exact
            .iter()
            .map(|(h, ns)| (HostPattern::Exact(h.clone()), ns))
            .chain(
                self.wildcard
                    .iter()
                    .map(|(s, ns)| (HostPattern::Wildcard(s.clone()), ns)),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> HostPattern {
        HostPattern::parse(text).expect("pattern")
    }

    #[test]
    fn containment_and_overlap() {
        for (inner, outer, want) in [
            ("a.example.com", "a.example.com", true),
            ("a.example.com", "*.example.com", true),
            ("example.com", "*.example.com", false),
            ("*.a.example.com", "*.example.com", true),
            ("*.example.com", "*.a.example.com", false),
            ("*.example.com", "*.example.com", true),
            ("*.xexample.com", "*.example.com", false),
            ("*.example.com", "a.example.com", false),
            ("anything", "*", true),
        ] {
            assert_eq!(within(&p(inner), &p(outer)), want, "{inner} in {outer}");
        }
        assert!(overlap(&p("*.example.com"), &p("a.example.com")));
        assert!(!overlap(&p("a.example.com"), &p("b.example.com")));
    }

    #[test]
    fn claims_find_every_overlap_the_brute_force_finds() {
        let names = [
            "a.example.com",
            "*.example.com",
            "*.b.example.com",
            "c.b.example.com",
            "example.com",
            "*.com",
            "x.org",
            "*.x.org",
        ];
        let ns: Arc<str> = "ns".into();
        for i in 0..names.len() {
            let mut claims = Claims::default();
            for (j, name) in names.iter().enumerate() {
                if j != i {
                    claims.insert(&p(name), &ns, &Arc::from(*name));
                }
            }
            let mut found: Vec<String> = claims
                .overlapping(&p(names[i]))
                .iter()
                .map(|(pattern, _, _)| pattern.to_string())
                .collect();
            found.sort();
            let mut expected: Vec<String> = names
                .iter()
                .enumerate()
                .filter(|(j, other)| *j != i && overlap(&p(names[i]), &p(other)))
                .map(|(_, other)| other.to_string())
                .collect();
            expected.sort();
            assert_eq!(found, expected, "{}", names[i]);
        }
    }

    #[test]
    fn delegation_files() {
        let d = HostDelegations::parse(
            "apiVersion: tollgate.dev/v1alpha1\nkind: HostDelegations\ndelegations:\n\
             - {namespace: shop, hosts: [api.example.com, '*.shop.example.com']}\n\
             - {namespace: billing, hosts: [pay.example.com]}\n",
        )
        .expect("parse");
        assert_eq!(
            d.owner_of_host("api.example.com").map(|n| &**n),
            Some("shop")
        );
        assert_eq!(
            d.owner_of_host("x.y.shop.example.com").map(|n| &**n),
            Some("shop")
        );
        assert_eq!(d.owner_of_host("shop.example.com"), None);
        assert_eq!(
            d.owner_of_host("pay.example.com").map(|n| &**n),
            Some("billing")
        );
        let (pattern, ns) = d.covering(&p("*.eu.shop.example.com")).expect("covered");
        assert_eq!(
            (pattern.to_string().as_str(), &**ns),
            ("*.shop.example.com", "shop")
        );
        assert!(d.covering(&p("*.example.com")).is_none());

        for (bad, says) in [
            (
                "apiVersion: v1\nkind: HostDelegations\n",
                "expected apiVersion",
            ),
            (
                "apiVersion: tollgate.dev/v1alpha1\nkind: HostDelegations\ndelegations: [{namespace: a, hosts: ['*']}, {namespace: b, hosts: ['*']}]\n",
                "\"*\" is already delegated to namespace a",
            ),
            (
                "apiVersion: tollgate.dev/v1alpha1\nkind: HostDelegations\nundelegatedHosts: Sometimes\n",
                "undelegatedHosts",
            ),
            (
                "apiVersion: tollgate.dev/v1alpha1\nkind: HostDelegations\ndelegations: [{namespace: a, hosts: [h]}, {namespace: b, hosts: [H]}]\n",
                "already delegated to namespace a",
            ),
            (
                "apiVersion: tollgate.dev/v1alpha1\nkind: HostDelegations\ndelegations: [{namespace: A_B, hosts: [h]}]\n",
                "not a namespace name",
            ),
            (
                "apiVersion: tollgate.dev/v1alpha1\nkind: HostDelegations\ndelegations: [{namespace: a, hosts: [h], extra: 1}]\n",
                "unknown field",
            ),
        ] {
            let err = format!("{:#}", HostDelegations::parse(bad).expect_err(bad));
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}

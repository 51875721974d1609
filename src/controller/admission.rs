//! Admission: judges `JwtPolicy` creations and updates with the *same* `compile` function the
//! replicas run, so the webhook and the replicas can never disagree, plus the cross-object check
//! (host/path conflicts) against the policies this replica serves.
//!
//! Differences from the watch, on purpose:
//! - key sources are not fetched (an unreachable issuer is a `Ready` problem, not a reason to
//!   refuse an object);
//! - a referenced Secret need not exist yet (it may be created after the policy); its reference
//!   is checked, its value is not.

use std::sync::Arc;

use kube::ResourceExt as _;
use kube::api::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use super::index::IndexView;
use crate::jwks::KeySources;
use crate::policy::route::HostPattern;
use crate::policy::spec::{JwtPolicy, SecretSpec};
use crate::policy::{
    Claimant, CompileContext, DefaultAction, SecretSource, Snapshot, SnapshotSettings, compile,
};

/// Stands in for Secrets at admission time: references must be well formed, values are not read.
struct ReferencedSecrets;

impl SecretSource for ReferencedSecrets {
    fn read(&self, _namespace: &str, spec: &SecretSpec) -> Result<Vec<u8>, String> {
        match &spec.secret_ref {
            Some(reference) if !reference.name.is_empty() && !reference.key.is_empty() => {
                // Long enough for every HMAC algorithm; the real value is checked by the replicas.
                Ok(vec![0x5a; 64])
            }
            Some(_) => Err("secretRef needs name and key".into()),
            None => {
                Err("file: is for policy files; in Kubernetes use secretRef: {name, key}".into())
            }
        }
    }

    fn read_config_map(
        &self,
        _namespace: &str,
        reference: &crate::policy::spec::ConfigMapKeyRef,
    ) -> Result<Vec<u8>, String> {
        if reference.name.is_empty() || reference.key.is_empty() {
            return Err("configMapRef needs name and key".into());
        }
        Ok(Vec::new())
    }

    fn has_values(&self) -> bool {
        false
    }
}

/// Judges one admission review.
pub fn review(
    review: AdmissionReview<DynamicObject>,
    current: &IndexView,
    key_sources: &KeySources,
) -> AdmissionReview<DynamicObject> {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(error) => return AdmissionResponse::invalid(error.to_string()).into_review(),
    };
    let response = AdmissionResponse::from(&request);
    if request.kind.group != "tollgate.dev" || request.kind.kind != "JwtPolicy" {
        return response
            .deny(format!(
                "tollgate validates JwtPolicy objects only, not {}",
                request.kind.kind
            ))
            .into_review();
    }
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return response.into_review();
    }
    let Some(object) = request.object else {
        return response
            .deny("the admission request carries no object")
            .into_review();
    };
    match judge(object, current, key_sources) {
        Ok(warnings) if warnings.is_empty() => response.into_review(),
        Ok(warnings) => {
            // kubectl prints these: rules that compile but can never apply.
            let mut response = response;
            response.warnings = Some(warnings);
            response.into_review()
        }
        Err(message) => response.deny(message).into_review(),
    }
}

/// `Ok(warnings)` when the object may be stored; `Err(why)` when it is refused.
fn judge(
    object: DynamicObject,
    current: &IndexView,
    key_sources: &KeySources,
) -> Result<Vec<String>, String> {
    let namespace = object
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let created = object
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string());
    let policy: JwtPolicy = object
        .try_parse()
        .map_err(|e| format!("not a valid JwtPolicy: {e}"))?;
    let name = policy.name_any();
    let ctx = CompileContext {
        key_sources,
        secrets: &ReferencedSecrets,
    };
    let compiled = compile(&namespace, &name, &policy.spec, &ctx).map_err(|e| e.to_string())?;
    // Host/path conflicts: order every served policy and the candidate by creation time (a new
    // object is the newest) and see whether the candidate keeps its routes.
    let candidate = Arc::new(compiled);
    let mut ordered: Vec<(String, Arc<str>, Claimant)> = current
        .policies
        .iter()
        .filter(|p| p.id != candidate.id)
        .map(|p| {
            let claimant = match &p.policy {
                Some(policy) => Claimant::Serving(policy.clone()),
                // A failing policy attached to routes holds the hosts they derived, if any.
                None if p.targeted => Claimant::Failing {
                    id: p.id.clone(),
                    hosts: p
                        .hosts
                        .iter()
                        .filter_map(|h| HostPattern::parse(h).ok())
                        .collect(),
                },
                None => Claimant::failing(p.id.clone(), &p.hosts),
            };
            (p.created.clone(), p.id.clone(), claimant)
        })
        .collect();
    ordered.push((
        created.unwrap_or_else(|| "9999-12-31T23:59:59Z".into()),
        candidate.id.clone(),
        Claimant::Serving(candidate.clone()),
    ));
    ordered.sort_by(|a, b| (a.0.as_str(), &*a.1).cmp(&(b.0.as_str(), &*b.1)));
    let (_, conflicts) = Snapshot::build_claimants(
        ordered.into_iter().map(|(_, _, c)| c).collect(),
        SnapshotSettings {
            default_action: DefaultAction::Deny,
            delegations: current.delegations.clone(),
        },
    );
    match conflicts.into_iter().find(|c| c.policy == candidate.id) {
        Some(conflict) if conflict.keeps_serving() => Err(format!("ResourceConflict: {conflict}")),
        Some(conflict) => Err(format!("HostConflict: {conflict}")),
        None => Ok(candidate
            .warnings
            .iter()
            .map(|w| format!("{}: {}", w.field, w.message))
            .collect()),
    }
}

#[cfg(test)]
mod tests;

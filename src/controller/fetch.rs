//! One `JwtPolicy` read from the cluster with the user's kubeconfig and compiled with the
//! Secrets it references, exactly as the replicas compile it (`tollgate explain --policy ns/name`).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;

use super::index::{
    SecretCache, config_map_data, referenced_config_maps, referenced_secrets, referenced_selectors,
    secret_data,
};
use crate::jwks::KeySources;
use crate::policy::spec::JwtPolicy;
use crate::policy::{CompileContext, CompileError, Policy, compile};

/// Why a policy could not be read or compiled.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The cluster could not be reached, or refused.
    #[error("{0:#}")]
    Cluster(anyhow::Error),
    /// The policy does not exist.
    #[error("JwtPolicy {0} not found")]
    NotFound(String),
    /// The policy does not compile (the replicas serve its last good version, if any).
    #[error("JwtPolicy {id} does not compile: {error}")]
    Invalid { id: String, error: CompileError },
}

/// Reads and compiles `namespace/name`.
pub async fn fetch_policy(
    namespace: &str,
    name: &str,
    key_sources: &KeySources,
) -> Result<Arc<Policy>, FetchError> {
    let id = format!("{namespace}/{name}");
    let client = kube::Client::try_default()
        .await
        .context("connecting with the kubeconfig (KUBECONFIG or ~/.kube/config)")
        .map_err(FetchError::Cluster)?;
    let policies: Api<JwtPolicy> = Api::namespaced(client.clone(), namespace);
    let object = policies
        .get_opt(name)
        .await
        .with_context(|| format!("reading JwtPolicy {id}"))
        .map_err(FetchError::Cluster)?
        .ok_or_else(|| FetchError::NotFound(id.clone()))?;
    let config_maps_api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut config_maps = HashMap::new();
    for key in referenced_config_maps(namespace, &object) {
        let config_map = config_maps_api
            .get_opt(&key.1)
            .await
            .with_context(|| format!("reading ConfigMap {}/{}", key.0, key.1))
            .map_err(FetchError::Cluster)?;
        config_maps.insert(key, config_map.as_ref().map(config_map_data));
    }
    let secrets_api: Api<Secret> = Api::namespaced(client, namespace);
    let mut selected = HashMap::new();
    for key in referenced_selectors(namespace, &object) {
        let listed = secrets_api
            .list(&kube::api::ListParams::default().labels(&key.1))
            .await
            .with_context(|| format!("listing the Secrets labelled {} in {}", key.1, key.0))
            .map_err(FetchError::Cluster)?;
        let by_name = listed
            .items
            .iter()
            .map(|s| (s.metadata.name.clone().unwrap_or_default(), secret_data(s)))
            .collect();
        selected.insert(key, by_name);
    }
    let mut secrets = HashMap::new();
    for key in referenced_secrets(namespace, &object) {
        let secret = secrets_api
            .get_opt(&key.1)
            .await
            .with_context(|| format!("reading Secret {}/{}", key.0, key.1))
            .map_err(FetchError::Cluster)?;
        secrets.insert(key, secret.as_ref().map(secret_data));
    }
    let cache = SecretCache {
        secrets: &secrets,
        selected: &selected,
        config_maps: &config_maps,
    };
    compile(
        namespace,
        name,
        &object.spec,
        &CompileContext {
            key_sources,
            secrets: &cache,
        },
    )
    .map(Arc::new)
    .map_err(|error| FetchError::Invalid { id, error })
}

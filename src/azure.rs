//! Azure AD (Microsoft Entra ID): the issuer shapes of v1 and v2 tokens, the expansion of an
//! `azureAd` profile into issuers, and diagnostics for the failures users hit most:
//!
//! - a Microsoft Graph token (its header has `nonce`, or its `aud` is Graph) sent to a
//!   third-party API: its signature can only be checked by Graph (IDX10511 elsewhere);
//! - a v1 token where only v2 is accepted, or the reverse (IDX10205): the API's
//!   `accessTokenAcceptedVersion` decides which one Azure issues;
//! - a caller (`appid`/`azp`) or tenant (`tid`) that is not the expected one.
//!
//! The diagnostics apply to hand-written issuers of Azure's shape too, not only to `azureAd`.

use serde_json::Value;

use crate::jose::Claims;
use crate::policy::spec::{AzureAdSpec, AzureVersion, IssuerSpec};

/// The application id of Microsoft Graph.
pub const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";
/// The global cloud's login endpoint.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// The global cloud's v1 issuer host.
pub const DEFAULT_V1_HOST: &str = "https://sts.windows.net";

/// The v1 issuer hosts and v2 authorities of the public and sovereign clouds.
const V1_HOSTS: [&str; 2] = [DEFAULT_V1_HOST, "https://sts.chinacloudapi.cn"];
const AUTHORITIES: [&str; 3] = [
    DEFAULT_AUTHORITY,
    "https://login.microsoftonline.us",
    "https://login.chinacloudapi.cn",
];

/// The word-for-word description of a denied Graph token.
pub const GRAPH_TOKEN_MESSAGE: &str = "this token is for Microsoft Graph and cannot be validated by a third party; request a token for your API's scope (api://…/.default)";

/// What an issuer string says about an Azure tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureIssuer {
    pub tenant: String,
    pub version: AzureVersion,
    /// The same tenant's issuer of the other version.
    pub sibling: String,
}

/// Whether `text` is a GUID (the form of tenant and application ids).
pub fn is_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn v1_issuer(host: &str, tenant: &str) -> String {
    format!("{}/{tenant}/", host.trim_end_matches('/'))
}

fn v2_issuer(authority: &str, tenant: &str) -> String {
    format!("{}/{tenant}/v2.0", authority.trim_end_matches('/'))
}

/// Recognizes the issuers of Azure's clouds (`https://sts.windows.net/{tid}/`,
/// `https://login.microsoftonline.com/{tid}/v2.0`, and their sovereign-cloud forms).
pub fn classify(iss: &str) -> Option<AzureIssuer> {
    classify_with(iss, DEFAULT_AUTHORITY, DEFAULT_V1_HOST)
}

/// Like [`classify`], also knowing one configured authority and v1 host.
pub fn classify_with(iss: &str, authority: &str, v1_host: &str) -> Option<AzureIssuer> {
    let authority = authority.trim_end_matches('/');
    let v1_host = v1_host.trim_end_matches('/');
    for host in V1_HOSTS.iter().copied().chain([v1_host]) {
        if let Some(tenant) = iss
            .strip_prefix(host)
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|rest| rest.strip_suffix('/'))
            .filter(|t| is_guid(t))
        {
            let paired = if host == v1_host {
                authority
            } else if host.ends_with("chinacloudapi.cn") {
                "https://login.chinacloudapi.cn"
            } else {
                DEFAULT_AUTHORITY
            };
            return Some(AzureIssuer {
                tenant: tenant.to_string(),
                version: AzureVersion::V1,
                sibling: v2_issuer(paired, tenant),
            });
        }
    }
    for base in AUTHORITIES.iter().copied().chain([authority]) {
        if let Some(tenant) = iss
            .strip_prefix(base)
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|rest| rest.strip_suffix("/v2.0"))
            .filter(|t| is_guid(t))
        {
            let paired = if base == authority {
                v1_host
            } else if base.ends_with("chinacloudapi.cn") {
                "https://sts.chinacloudapi.cn"
            } else {
                DEFAULT_V1_HOST
            };
            return Some(AzureIssuer {
                tenant: tenant.to_string(),
                version: AzureVersion::V2,
                sibling: v1_issuer(paired, tenant),
            });
        }
    }
    None
}

/// One issuer an `azureAd` profile expands to.
#[derive(Clone, Debug, PartialEq)]
pub struct Expanded {
    pub spec: IssuerSpec,
    pub azure: AzureIssuer,
}

/// Expands a profile into one issuer per tenant and version, or says what is wrong.
pub fn expand(spec: &AzureAdSpec) -> Result<Vec<Expanded>, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let tenants: Vec<&String> = spec.tenant_id.iter().chain(&spec.tenants).collect();
    if tenants.is_empty() {
        problems.push((
            "spec.azureAd.tenantId".into(),
            "set the directory (tenant) id, or tenants for a multi-tenant application".into(),
        ));
    }
    if spec.tenant_id.is_some() && !spec.tenants.is_empty() {
        problems.push((
            "spec.azureAd".into(),
            "set tenantId or tenants, not both".into(),
        ));
    }
    for (i, tenant) in tenants.iter().enumerate() {
        if !is_guid(tenant) {
            let field = if spec.tenant_id.is_some() && i == 0 {
                "spec.azureAd.tenantId".to_string()
            } else {
                format!(
                    "spec.azureAd.tenants[{}]",
                    i - usize::from(spec.tenant_id.is_some())
                )
            };
            let hint = match tenant.as_str() {
                "common" | "organizations" | "consumers" => {
                    "list the tenants you accept in tenants; tokens always carry the tenant's own id"
                }
                _ => {
                    "use the directory (tenant) id, a GUID like 72f988bf-86f1-41af-91ab-2d7cd011db47"
                }
            };
            problems.push((field, format!("{tenant:?} is not a tenant id: {hint}")));
        }
    }
    if spec.audiences.is_empty() {
        problems.push((
            "spec.azureAd.audiences".into(),
            "list the API's Application ID URI (api://…) and/or client id".into(),
        ));
    }
    for (i, id) in spec.client_application_ids.iter().enumerate() {
        if !is_guid(id) {
            problems.push((
                format!("spec.azureAd.clientApplicationIds[{i}]"),
                format!("{id:?} is not an application (client) id GUID"),
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let authority = spec.authority.as_deref().unwrap_or(DEFAULT_AUTHORITY);
    let authority = authority.trim_end_matches('/');
    let v1_host = spec.v1_issuer_host.as_deref().unwrap_or(DEFAULT_V1_HOST);
    let versions = if spec.versions.is_empty() {
        vec![AzureVersion::V1, AzureVersion::V2]
    } else {
        spec.versions.clone()
    };
    let mut out = Vec::new();
    for tenant in tenants {
        for version in &versions {
            let (issuer, discovery, sibling) = match version {
                AzureVersion::V1 => (
                    v1_issuer(v1_host, tenant),
                    format!("{authority}/{tenant}/.well-known/openid-configuration"),
                    v2_issuer(authority, tenant),
                ),
                AzureVersion::V2 => (
                    v2_issuer(authority, tenant),
                    format!("{authority}/{tenant}/v2.0/.well-known/openid-configuration"),
                    v1_issuer(v1_host, tenant),
                ),
            };
            if out.iter().any(|e: &Expanded| e.spec.issuer == issuer) {
                continue;
            }
            out.push(Expanded {
                spec: IssuerSpec {
                    issuer,
                    discovery: Some(discovery),
                    audiences: spec.audiences.clone(),
                    algorithms: vec!["RS256".into()],
                    allow_insecure_http: spec.allow_insecure_http,
                    max_token_lifetime: spec.max_token_lifetime.clone(),
                    ..IssuerSpec::default()
                },
                azure: AzureIssuer {
                    tenant: tenant.to_string(),
                    version: *version,
                    sibling,
                },
            });
        }
    }
    Ok(out)
}

/// Whether an audience names Microsoft Graph.
pub fn is_graph_audience(aud: &str) -> bool {
    let aud = aud.trim_end_matches('/');
    aud == GRAPH_APP_ID
        || aud.eq_ignore_ascii_case("https://graph.microsoft.com")
        || aud.eq_ignore_ascii_case("https://graph.microsoft.us")
        || aud.eq_ignore_ascii_case("https://microsoftgraph.chinacloudapi.cn")
}

/// Why a token is a Graph token, if it is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GraphToken {
    /// The header carries `nonce` (Graph and SharePoint tokens).
    Nonce,
    /// The audience is Graph.
    Audience(String),
}

/// Recognizes a Graph token by its header `nonce` or its `aud`. Only for tokens of Azure
/// issuers (or whose audience is Graph), so other identity providers are never misread.
pub fn graph_token(header: &Claims, claims: &Claims, azure_issuer: bool) -> Option<GraphToken> {
    let graph_aud = crate::claims::claim_values(claims.get("aud").unwrap_or(&Value::Null), None)
        .into_iter()
        .find(|aud| is_graph_audience(aud));
    if azure_issuer && header.contains_key("nonce") {
        return Some(GraphToken::Nonce);
    }
    graph_aud.map(GraphToken::Audience)
}

/// The calling application of a token: `appid` (v1) or `azp` (v2).
pub fn caller(claims: &Claims, version: AzureVersion) -> Option<&str> {
    let name = match version {
        AzureVersion::V1 => "appid",
        AzureVersion::V2 => "azp",
    };
    claims.get(name).and_then(Value::as_str)
}

/// The manifest setting that makes Azure issue `version` tokens.
pub fn accepted_version_setting(version: AzureVersion) -> &'static str {
    match version {
        AzureVersion::V1 => "accessTokenAcceptedVersion: null (or 1)",
        AzureVersion::V2 => "accessTokenAcceptedVersion: 2",
    }
}

pub fn version_name(version: AzureVersion) -> &'static str {
    match version {
        AzureVersion::V1 => "v1.0",
        AzureVersion::V2 => "v2.0",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

    #[test]
    fn recognizes_v1_and_v2_issuers_of_every_cloud() {
        let v1 = classify(&format!("https://sts.windows.net/{TENANT}/")).expect("v1");
        assert_eq!(v1.version, AzureVersion::V1);
        assert_eq!(v1.tenant, TENANT);
        assert_eq!(
            v1.sibling,
            format!("https://login.microsoftonline.com/{TENANT}/v2.0")
        );
        let v2 = classify(&format!("https://login.microsoftonline.com/{TENANT}/v2.0")).expect("v2");
        assert_eq!(v2.version, AzureVersion::V2);
        assert_eq!(v2.sibling, format!("https://sts.windows.net/{TENANT}/"));
        let china = classify(&format!("https://login.chinacloudapi.cn/{TENANT}/v2.0")).expect("cn");
        assert_eq!(
            china.sibling,
            format!("https://sts.chinacloudapi.cn/{TENANT}/")
        );
        for not_azure in [
            "https://sts.windows.net/common/",
            "https://login.microsoftonline.com/organizations/v2.0",
            &format!("https://sts.windows.net/{TENANT}"),
            "https://idp.example.com/",
        ] {
            assert_eq!(classify(not_azure), None, "{not_azure}");
        }
        let local = classify_with(
            &format!("http://127.0.0.1:8080/{TENANT}/v2.0"),
            "http://127.0.0.1:8080",
            DEFAULT_V1_HOST,
        )
        .expect("configured authority");
        assert_eq!(local.sibling, format!("https://sts.windows.net/{TENANT}/"));
    }

    #[test]
    fn expands_tenants_and_versions() {
        let spec = AzureAdSpec {
            tenants: vec![TENANT.into(), "00000000-0000-0000-0000-000000000001".into()],
            audiences: vec!["api://orders".into()],
            ..AzureAdSpec::default()
        };
        let issuers: Vec<String> = expand(&spec)
            .expect("expands")
            .into_iter()
            .map(|e| format!("{} {}", e.spec.issuer, e.spec.discovery.unwrap_or_default()))
            .collect();
        assert_eq!(
            issuers,
            [
                format!("https://sts.windows.net/{TENANT}/ https://login.microsoftonline.com/{TENANT}/.well-known/openid-configuration"),
                format!("https://login.microsoftonline.com/{TENANT}/v2.0 https://login.microsoftonline.com/{TENANT}/v2.0/.well-known/openid-configuration"),
                "https://sts.windows.net/00000000-0000-0000-0000-000000000001/ https://login.microsoftonline.com/00000000-0000-0000-0000-000000000001/.well-known/openid-configuration".to_string(),
                "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000001/v2.0 https://login.microsoftonline.com/00000000-0000-0000-0000-000000000001/v2.0/.well-known/openid-configuration".to_string(),
            ]
        );
        let bad = AzureAdSpec {
            tenant_id: Some("common".into()),
            client_application_ids: vec!["my-app".into()],
            ..AzureAdSpec::default()
        };
        let problems = expand(&bad).expect_err("refused");
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.azureAd.tenantId",
                "spec.azureAd.audiences",
                "spec.azureAd.clientApplicationIds[0]"
            ]
        );
        assert!(problems[0].1.contains("list the tenants you accept"));
    }

    #[test]
    fn graph_tokens_are_recognized_by_nonce_or_audience() {
        let header: Claims =
            serde_json::from_value(serde_json::json!({"alg": "RS256", "nonce": "abc"}))
                .expect("object");
        let plain: Claims =
            serde_json::from_value(serde_json::json!({"alg": "RS256"})).expect("object");
        let api: Claims =
            serde_json::from_value(serde_json::json!({"aud": "api://orders"})).expect("object");
        let graph: Claims =
            serde_json::from_value(serde_json::json!({"aud": GRAPH_APP_ID})).expect("object");
        assert_eq!(graph_token(&header, &api, true), Some(GraphToken::Nonce));
        assert_eq!(graph_token(&header, &api, false), None);
        assert_eq!(
            graph_token(&plain, &graph, false),
            Some(GraphToken::Audience(GRAPH_APP_ID.into()))
        );
        assert_eq!(graph_token(&plain, &api, true), None);
        assert!(is_graph_audience("https://graph.microsoft.com/"));
        assert!(is_guid(TENANT));
        assert!(!is_guid("72f988bf-86f1-41af-91ab-2d7cd011db4"));
    }
}

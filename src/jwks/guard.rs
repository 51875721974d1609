//! Where outbound calls may go. A policy names URLs (discovery, JWKS, introspection), and a
//! discovery document names more; none of them may make tollgate fetch from the cloud metadata
//! services (instance credentials live there) or other link-local addresses, unless the policy
//! says `allowMetadataAddresses: true`. The check applies to the URL as written, to every
//! redirect, and to every address a host name resolves to (so a DNS name pointing at
//! 169.254.169.254 is refused as well).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::{Host, Url};

/// What an outbound call may reach besides public endpoints over https.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Reach {
    /// Plain `http://` (`allowInsecureHttp`).
    pub insecure_http: bool,
    /// Link-local and cloud metadata addresses (`allowMetadataAddresses`).
    pub metadata: bool,
}

impl Reach {
    pub fn new(insecure_http: bool, metadata: bool) -> Self {
        Reach {
            insecure_http,
            metadata,
        }
    }
}

/// Host names of metadata services (GCP, AWS).
const METADATA_NAMES: [&str; 5] = [
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
];

/// Why an address is off limits, or `None`.
pub fn forbidden_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        // IPv4 inside IPv6: mapped (::ffff:a.b.c.d), compatible (::a.b.c.d) and the NAT64
        // well-known prefix (64:ff9b::a.b.c.d) reach the same IPv4 host.
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => forbidden_v4(v4).or_else(|| forbidden_v6(v6)),
            None => forbidden_v6(v6),
        },
    }
}

fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., a, b] = s;
        return Some(Ipv4Addr::new(
            (a >> 8) as u8,
            a as u8,
            (b >> 8) as u8,
            b as u8,
        ));
    }
    ip.to_ipv4()
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_link_local() {
        // 169.254.169.254 (AWS, GCP, Azure, OCI, DigitalOcean, …) and the rest of 169.254/16.
        Some("a link-local address (cloud metadata services answer on 169.254.169.254)")
    } else if ip == Ipv4Addr::new(100, 100, 100, 200) {
        Some("the Alibaba Cloud metadata address")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if (ip.segments()[0] & 0xffc0) == 0xfe80 {
        Some("a link-local address")
    } else if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
        Some("the AWS metadata address")
    } else {
        None
    }
}

/// Why `url`'s host is off limits as written (an address or a metadata service's name).
pub fn forbidden_url(url: &Url) -> Option<String> {
    let reason = match url.host()? {
        Host::Ipv4(ip) => forbidden_ip(IpAddr::V4(ip)),
        Host::Ipv6(ip) => forbidden_ip(IpAddr::V6(ip)),
        Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            METADATA_NAMES
                .contains(&name.as_str())
                .then_some("the name of a cloud metadata service")
        }
    }?;
    Some(format!(
        "{} is {reason}; tollgate does not fetch from it unless allowMetadataAddresses: true",
        url.host_str().unwrap_or_default()
    ))
}

/// Before a call through an egress proxy (which resolves the name itself, so the guarded
/// resolver never sees it): refuses a host name that resolves here to any forbidden address.
/// A name that does not resolve here is left to the proxy (environments with a proxy often
/// resolve only through it); the address literals and metadata names were checked already.
pub async fn check_destination(url: &Url) -> Result<(), String> {
    let Some(Host::Domain(name)) = url.host() else {
        return Ok(());
    };
    let Ok(addrs) =
        tokio::net::lookup_host((name, url.port_or_known_default().unwrap_or(443))).await
    else {
        return Ok(());
    };
    for addr in addrs {
        if let Some(reason) = forbidden_ip(addr.ip()) {
            return Err(format!(
                "{name} resolves to {}, {reason}; tollgate does not fetch from it (through the proxy either) unless allowMetadataAddresses: true",
                addr.ip()
            ));
        }
    }
    Ok(())
}

/// A resolver that drops forbidden addresses from every answer, and fails when none is left.
#[derive(Debug, Default)]
pub struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|addr| forbidden_ip(addr.ip()).is_none())
                .collect();
            if allowed.is_empty() && !resolved.is_empty() {
                let reason = forbidden_ip(resolved[0].ip()).unwrap_or("forbidden");
                return Err(format!(
                    "{host} resolves to {}, {reason}; tollgate does not fetch from it unless allowMetadataAddresses: true",
                    resolved[0].ip()
                )
                .into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Before a proxied call: names are resolved and checked; literals and names that do not
    /// resolve here are left to the URL check and the proxy.
    #[tokio::test]
    async fn destinations_are_resolved_before_a_proxied_call() {
        for url in [
            "https://localhost:8443/keys",
            "https://127.0.0.1/keys",
            "https://name-that-does-not-resolve.invalid/keys",
        ] {
            let url = Url::parse(url).expect("url");
            assert_eq!(check_destination(&url).await, Ok(()), "{url}");
        }
    }

    #[test]
    fn metadata_and_link_local_addresses_are_recognized() {
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "https://169.254.1.7/jwks",
            "http://[fe80::1]/",
            "http://[fd00:ec2::254]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[::a9fe:a9fe]/",
            "http://100.100.100.200/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://Metadata.Google.Internal./",
            "http://metadata/",
        ] {
            let url = Url::parse(url).expect("url");
            assert!(forbidden_url(&url).is_some(), "{url}");
        }
        for url in [
            "https://login.microsoftonline.com/",
            "http://127.0.0.1:8080/",
            "https://10.0.0.5/",
            "http://[::1]/",
            "https://metadata.example.com/",
        ] {
            let url = Url::parse(url).expect("url");
            assert_eq!(forbidden_url(&url), None, "{url}");
        }
    }
}

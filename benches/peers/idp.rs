//! The bench's identity provider, shared by every peer: OIDC discovery and a JWKS on
//! `http://127.0.0.1:<port>` (`tollgate::local_issuer::server::IdpServer`), an RS256 and an
//! ES256 key, and tokens with the load bench's claims (`workload::claims`) whose `iss` is that
//! address, so that peers which read discovery (oauth2-proxy) find the tokens' issuer there.

use serde_json::Value;
use tollgate::local_issuer::server::IdpServer;
use tollgate::local_issuer::{SigningKey, jwks};

use crate::workload;

pub struct BenchIdp {
    pub server: IdpServer,
    pub rs256: SigningKey,
    pub es256: SigningKey,
}

impl BenchIdp {
    pub async fn start() -> anyhow::Result<BenchIdp> {
        let rs256 = SigningKey::rsa("rs", "RS256", 2048)?;
        let es256 = SigningKey::ec("es", "ES256")?;
        let server = IdpServer::start("127.0.0.1:0".parse()?, jwks(&[&rs256, &es256])).await?;
        Ok(BenchIdp {
            server,
            rs256,
            es256,
        })
    }

    /// `http://127.0.0.1:<port>`: discovery's `issuer` and every token's `iss`.
    pub fn issuer(&self) -> String {
        self.server.issuer()
    }

    pub fn jwks(&self) -> Value {
        jwks(&[&self.rs256, &self.es256])
    }

    /// The load bench's claims (aud `api://bench`, scope with `orders.read`, sub `user-<n>`),
    /// issued by this IdP.
    pub fn claims(&self, n: u64) -> Value {
        let mut claims = workload::claims(n);
        claims["iss"] = Value::String(self.issuer());
        claims
    }

    /// `count` distinct tokens signed by `key`, numbered from `offset`.
    pub fn mint(&self, key: &SigningKey, count: usize, offset: u64) -> anyhow::Result<Vec<String>> {
        (0..count as u64)
            .map(|n| Ok(key.mint(&self.claims(offset + n))?))
            .collect()
    }

    /// The subject of token number `n`, which every peer forwards as `x-user-id`.
    pub fn subject(n: u64) -> String {
        format!("user-{n:08}")
    }
}

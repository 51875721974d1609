//! One request to a peer before it is measured, to learn and check its answer: an allow must be
//! an allow that forwards the token's subject as `x-user-id` (where the answer shows it), a deny
//! must be a deny, and its codes become what every answer of the run must be.

use std::net::SocketAddr;

use bytes::Bytes;
use tollgate::proto::auth::check_response::HttpResponse;

use crate::generator::{self, Client, Expect, Prepared, Protocol};

/// What one answer was.
#[derive(Clone, Debug)]
pub struct Answer {
    pub expect: Expect,
    /// For the report: "gRPC 16, HTTP 401", "HTTP 200".
    pub text: String,
    /// The `x-user-id` the answer carried (gRPC: the header to add; nginx: the upstream's echo).
    pub user: Option<String>,
}

impl Answer {
    pub fn allowed(&self) -> bool {
        matches!(self.expect, Expect::Allow)
    }
}

/// Sends `request` once to `addr` and describes the answer.
pub async fn probe(
    protocol: Protocol,
    addr: SocketAddr,
    request: &Prepared,
) -> anyhow::Result<Answer> {
    match generator::connect(protocol, addr).await? {
        Client::Grpc(mut grpc) => {
            let response = generator::check(&mut grpc, request.body.clone()).await?;
            let code = response.status.as_ref().map_or(-1, |s| s.code);
            match response.http_response {
                Some(HttpResponse::DeniedResponse(denied)) if code != 0 => {
                    let http = denied.status.as_ref().map_or(0, |s| s.code);
                    Ok(Answer {
                        expect: Expect::Deny {
                            grpc: code,
                            http: u16::try_from(http)?,
                        },
                        text: format!("gRPC {code}, HTTP {http}"),
                        user: None,
                    })
                }
                Some(HttpResponse::OkResponse(ok)) if code == 0 => {
                    let user = ok
                        .headers
                        .iter()
                        .filter_map(|h| h.header.as_ref())
                        .find(|h| h.key.eq_ignore_ascii_case("x-user-id"))
                        .map(|h| {
                            if h.value.is_empty() {
                                String::from_utf8_lossy(&h.raw_value).into_owned()
                            } else {
                                h.value.clone()
                            }
                        });
                    Ok(Answer {
                        expect: Expect::Allow,
                        text: "gRPC 0".into(),
                        user,
                    })
                }
                None if code == 0 => Ok(Answer {
                    expect: Expect::Allow,
                    text: "gRPC 0".into(),
                    user: None,
                }),
                None => Ok(Answer {
                    expect: Expect::Deny {
                        grpc: code,
                        http: 0,
                    },
                    text: format!("gRPC {code}, no HTTP status"),
                    user: None,
                }),
                Some(_) => anyhow::bail!("gRPC {code} with an answer of the other kind"),
            }
        }
        Client::Http2(mut send) => {
            send.ready().await?;
            let mut builder =
                http::Request::get(format!("http://{}{}", request.authority, request.path));
            if let Some(token) = &request.token {
                builder = builder.header("authorization", format!("Bearer {token}"));
            }
            let response = send
                .send_request(builder.body(http_body_util::Empty::<Bytes>::new())?)
                .await?;
            let status = response.status().as_u16();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await?
                .to_bytes();
            Ok(Answer {
                expect: if status == 200 {
                    Expect::Allow
                } else {
                    Expect::Status(status)
                },
                text: format!("HTTP {status}"),
                user: (status == 200 && !body.is_empty())
                    .then(|| String::from_utf8_lossy(&body).into_owned()),
            })
        }
    }
}

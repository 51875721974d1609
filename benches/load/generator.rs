//! The load generator: gRPC `Check` (pre-encoded requests, so the generator spends little CPU of
//! its own) or HTTP/2 GETs, closed-loop (N connections × M streams, each sending as soon as the
//! last answer came) or open-loop (a fixed rate, latency counted from when each request was due,
//! so a stall is charged to every request it delays: no coordinated omission).
//!
//! Every answer is checked against what the workload expects; a wrong one is counted and fails
//! the run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use hdrhistogram::Histogram;
use http::uri::PathAndQuery;
use prost::Message;
use tollgate::proto::auth::CheckResponse;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};

/// What an answer must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// gRPC: status OK. HTTP: this status.
    Allow,
    /// gRPC: this status code, with this HTTP status in the denied response.
    Deny { grpc: i32, http: u16 },
    /// HTTP: exactly this status (through Envoy).
    Status(u16),
    /// gRPC: allowed, or refused for load (UNAVAILABLE, HTTP 503): a flood's answers.
    AllowOrOverloaded,
}

/// One prepared request.
#[derive(Clone)]
pub struct Prepared {
    /// gRPC: the encoded `CheckRequest`. HTTP: unused.
    pub body: Bytes,
    /// HTTP: authority, path, and the bearer token (if any).
    pub authority: String,
    pub path: String,
    pub token: Option<String>,
    pub expect: Expect,
}

/// The requests of a run, picked in a fixed pseudo-random order (or in order).
pub struct Workload {
    pub requests: Vec<Prepared>,
    /// Each request in turn instead of a pseudo-random pick.
    pub sequential: bool,
    /// Closed loop: stop after this many requests.
    pub limit: Option<u64>,
}

impl Workload {
    pub fn new(requests: Vec<Prepared>) -> Self {
        Workload {
            requests,
            sequential: false,
            limit: None,
        }
    }

    fn pick(&self, n: u64) -> &Prepared {
        if self.sequential {
            return &self.requests[(n % self.requests.len() as u64) as usize];
        }
        // splitmix64: a fixed, well-spread order, the same in every run.
        let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        &self.requests[(z % self.requests.len() as u64) as usize]
    }
}

/// How the load is applied.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    Closed { connections: usize, streams: usize },
    Open { connections: usize, rate: u64 },
}

/// What a run measured.
pub struct Outcome {
    pub sent: u64,
    pub wrong: u64,
    pub errors: u64,
    /// Latency in µs (open loop: from when each request was due).
    pub latency: Histogram<u64>,
    pub elapsed: Duration,
    /// The first wrong answer, for the report.
    pub first_wrong: Option<String>,
    /// Open loop: each request's latency in µs, in the order they were due (`u64::MAX`: no
    /// answer), and the interval between them. Empty for a closed loop.
    pub schedule: Vec<u64>,
    pub interval: Duration,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64()
    }
}

#[derive(Clone, Copy)]
pub enum Protocol {
    Grpc,
    Http2,
}

#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = CheckResponse;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = CheckResponse;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<CheckResponse>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        CheckResponse::decode(bytes)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

/// One connection's client.
#[derive(Clone)]
pub enum Client {
    Grpc(tonic::client::Grpc<Channel>),
    Http2(hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>),
}

/// One gRPC connection, for drivers that send with [`check`] and judge answers themselves.
pub async fn connect_grpc(addr: SocketAddr) -> anyhow::Result<tonic::client::Grpc<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(tonic::client::Grpc::new(channel))
}

pub async fn connect(protocol: Protocol, addr: SocketAddr) -> anyhow::Result<Client> {
    Ok(match protocol {
        Protocol::Grpc => Client::Grpc(connect_grpc(addr).await?),
        Protocol::Http2 => {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let (send, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tcp),
            )
            .await?;
            tokio::spawn(conn);
            Client::Http2(send)
        }
    })
}

const CHECK: &str = "/envoy.service.auth.v3.Authorization/Check";

/// Sends one encoded `CheckRequest` and returns the answer.
pub async fn check(
    grpc: &mut tonic::client::Grpc<Channel>,
    body: Bytes,
) -> anyhow::Result<CheckResponse> {
    grpc.ready().await?;
    Ok(grpc
        .unary(
            tonic::Request::new(body),
            PathAndQuery::from_static(CHECK),
            Raw,
        )
        .await?
        .into_inner())
}

/// Sends one request; `Ok(None)` if the answer is right, `Ok(Some(what))` if it is wrong.
async fn send(client: &mut Client, request: &Prepared) -> anyhow::Result<Option<String>> {
    match client {
        Client::Grpc(grpc) => {
            let response = check(grpc, request.body.clone()).await?;
            let code = response.status.as_ref().map_or(-1, |s| s.code);
            let (http, body) = match &response.http_response {
                Some(tollgate::proto::auth::check_response::HttpResponse::DeniedResponse(d)) => {
                    (d.status.as_ref().map_or(0, |s| s.code), d.body.as_str())
                }
                _ => (0, ""),
            };
            let right = match request.expect {
                Expect::Allow => code == 0,
                Expect::Deny { grpc, http: want } => code == grpc && http == i32::from(want),
                Expect::AllowOrOverloaded => code == 0 || (code == 14 && http == 503),
                Expect::Status(_) => false,
            };
            Ok((!right).then(|| {
                format!(
                    "gRPC {code}, HTTP {http} {body}; expected {:?}",
                    request.expect
                )
            }))
        }
        Client::Http2(send) => {
            send.ready().await?;
            let mut builder =
                http::Request::get(format!("http://{}{}", request.authority, request.path));
            if let Some(token) = &request.token {
                builder = builder.header("authorization", format!("Bearer {token}"));
            }
            let response = send
                .send_request(builder.body(http_body_util::Empty::new())?)
                .await?;
            let status = response.status().as_u16();
            let details = response
                .headers()
                .iter()
                .filter(|(k, _)| {
                    k.as_str().starts_with("www-") || k.as_str().starts_with("x-envoy")
                })
                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join("; ");
            // Drain the body so the stream closes.
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let right = match request.expect {
                Expect::Allow => status == 200,
                Expect::Status(want) => status == want,
                Expect::Deny { http, .. } => status == http,
                Expect::AllowOrOverloaded => status == 200 || status == 503,
            };
            Ok((!right).then(|| {
                format!(
                    "HTTP {status} [{details}] {}; expected {:?}",
                    String::from_utf8_lossy(&body[..body.len().min(200)]),
                    request.expect
                )
            }))
        }
    }
}

struct Shared {
    wrong: AtomicU64,
    errors: AtomicU64,
    first_wrong: std::sync::Mutex<Option<String>>,
}

impl Shared {
    fn record(&self, result: anyhow::Result<Option<String>>) {
        match result {
            Ok(None) => {}
            Ok(Some(what)) => {
                self.wrong.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_wrong.lock() {
                    first.get_or_insert(what);
                }
            }
            Err(e) => {
                if self.errors.fetch_add(1, Ordering::Relaxed) == 0
                    && let Ok(mut first) = self.first_wrong.lock()
                {
                    first.get_or_insert(format!("error: {e:#}"));
                }
            }
        }
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs … 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// Applies `load` for `duration` to `addr`.
pub async fn run(
    protocol: Protocol,
    addr: SocketAddr,
    workload: Arc<Workload>,
    load: Load,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let shared = Arc::new(Shared {
        wrong: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_wrong: std::sync::Mutex::new(None),
    });
    let connections = match load {
        Load::Closed { connections, .. } | Load::Open { connections, .. } => connections.max(1),
    };
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(connect(protocol, addr).await?);
    }
    let start = Instant::now();
    let mut schedule = Vec::new();
    let mut interval = Duration::ZERO;
    let (sent, latency) = match load {
        Load::Closed { streams, .. } => {
            let deadline = start + duration;
            let counter = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for client in &clients {
                for _ in 0..streams.max(1) {
                    let (mut client, workload, shared, counter) = (
                        client.clone(),
                        workload.clone(),
                        shared.clone(),
                        counter.clone(),
                    );
                    tasks.push(tokio::spawn(async move {
                        let mut hist = histogram();
                        while Instant::now() < deadline {
                            let n = counter.fetch_add(1, Ordering::Relaxed);
                            if workload.limit.is_some_and(|limit| n >= limit) {
                                break;
                            }
                            let request = workload.pick(n);
                            let began = Instant::now();
                            let result = send(&mut client, request).await;
                            let _ = hist.record(began.elapsed().as_micros() as u64);
                            shared.record(result);
                        }
                        hist
                    }));
                }
            }
            let mut latency = histogram();
            for task in tasks {
                latency.add(task.await?)?;
            }
            (latency.len(), latency)
        }
        Load::Open { rate, .. } => {
            let total = (rate as f64 * duration.as_secs_f64()) as usize;
            let slots: Arc<Vec<AtomicU64>> =
                Arc::new((0..total).map(|_| AtomicU64::new(u64::MAX)).collect());
            let done = Arc::new(AtomicUsize::new(0));
            // The schedule runs on a thread of its own: nanosleep wakes within tens of µs,
            // where the runtime's timer wheel has 1 ms ticks that would count as latency.
            let runtime = tokio::runtime::Handle::current();
            let scheduler = {
                let (shared, slots, done) = (shared.clone(), slots.clone(), done.clone());
                std::thread::spawn(move || {
                    let begin = Instant::now();
                    let interval = Duration::from_secs_f64(1.0 / rate as f64);
                    let mut handles = Vec::with_capacity(total);
                    for i in 0..total {
                        let due = begin + interval.mul_f64(i as f64);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        let mut client = clients[i % clients.len()].clone();
                        let (workload, shared, slots, done) = (
                            workload.clone(),
                            shared.clone(),
                            slots.clone(),
                            done.clone(),
                        );
                        handles.push(runtime.spawn(async move {
                            let result = send(&mut client, workload.pick(i as u64)).await;
                            slots[i].store(due.elapsed().as_micros() as u64, Ordering::Relaxed);
                            shared.record(result);
                            done.fetch_add(1, Ordering::Relaxed);
                        }));
                    }
                    handles
                })
            };
            let handles = tokio::task::spawn_blocking(move || scheduler.join())
                .await?
                .map_err(|_| anyhow::anyhow!("the open-loop scheduler panicked"))?;
            for handle in handles {
                handle.await?;
            }
            let mut latency = histogram();
            schedule = slots.iter().map(|s| s.load(Ordering::Relaxed)).collect();
            for &v in &schedule {
                if v != u64::MAX {
                    latency.saturating_record(v.max(1));
                }
            }
            interval = Duration::from_secs_f64(1.0 / rate as f64);
            (done.load(Ordering::Relaxed) as u64, latency)
        }
    };
    let elapsed = start.elapsed();
    let first_wrong = shared.first_wrong.lock().ok().and_then(|f| f.clone());
    Ok(Outcome {
        sent,
        wrong: shared.wrong.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        latency,
        elapsed,
        first_wrong,
        schedule,
        interval,
    })
}

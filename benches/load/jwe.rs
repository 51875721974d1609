//! Encrypted tokens against signed ones. A fresh JWE (RSA-OAEP-256) costs one RSA private-key
//! operation that no cache can spare; a client can send a flood of them. This run measures what
//! the flood does to everyone else: an open-loop stream of fresh RS256 tokens at a fixed rate,
//! its p99 alone and then while a closed-loop flood of fresh JWEs runs on the same server.
//! Both servers have the verified-token cache off, so every token is decrypted or verified:
//! - `bounded`: tollgate as it ships (private-key work off the request workers, at most
//!   `--decryption-concurrency` at once, half the CPUs);
//! - `unbounded`: the same with `--decryption-concurrency 64`, about what decrypting on the
//!   request path did before the bound.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::generator::{self, Expect, Load, Outcome, Protocol, Workload};
use crate::servers::{Server, metric_sum};
use crate::workload::{HOST, JWE_HOST, Keys, check, claims};
use crate::{Options, measure, median};

#[derive(Clone, Debug, Default, Serialize)]
pub struct JweRow {
    /// `--decryption-concurrency` of the server.
    pub server: String,
    /// Fresh JWEs judged per second during the flood (allowed or refused for load).
    pub flood_rate: f64,
    /// Share of the flood refused with 503 decryption_overloaded.
    pub overloaded: f64,
    /// The signed stream's offered rate.
    pub signed_rate: f64,
    pub signed_p99_alone_us: f64,
    pub signed_p99_flood_us: f64,
}

/// Runs the contention rounds on each server (`(label, server)`); `rs` are fresh RS256 tokens
/// and `uncached_rate` the closed-loop maximum of the cache-off server on them.
pub async fn contention(
    options: &Options,
    servers: &[(&str, &Server)],
    keys: &Keys,
    rs: &[String],
    uncached_rate: f64,
) -> anyhow::Result<Vec<JweRow>> {
    let fresh_jwes: Vec<String> = (0..options.pool.max(8) as u64)
        .map(|n| keys.encrypt(&keys.rs256.mint(&claims(5_000_000 + n))?))
        .collect::<anyhow::Result<_>>()?;
    let flood = Arc::new(Workload::new(
        fresh_jwes
            .iter()
            .enumerate()
            .map(|(i, t)| {
                check(
                    JWE_HOST,
                    "/orders/1",
                    Some(t),
                    i as u64,
                    Expect::AllowOrOverloaded,
                )
            })
            .collect(),
    ));
    let signed = Arc::new(Workload::new(
        rs.iter()
            .enumerate()
            .map(|(i, t)| check(HOST, "/orders/1", Some(t), i as u64, Expect::Allow))
            .collect(),
    ));
    // A quarter of what the server verifies at most: room to spare, without the flood.
    let rate = (uncached_rate * 0.25).max(50.0) as u64;
    let steady = Load::Open {
        connections: 2,
        rate,
    };
    let flood_load = Load::Closed {
        connections: 2,
        streams: 32,
    };
    let mut rows = Vec::new();
    for (label, server) in servers {
        let (mut alone, mut during, mut flood_rates, mut refused) =
            (vec![], vec![], vec![], vec![]);
        for _ in 0..options.rounds {
            let m = measure(Protocol::Grpc, server, &signed, steady, options.duration).await?;
            alone.push(m.outcome.latency.value_at_quantile(0.99) as f64);
            let before = server.metrics_text()?;
            // The flood stands for clients on other machines: its generator runs on a thread of
            // its own at nice 19, so that what it spends on these two shared cores is not
            // charged to the server (it still gets the CPU before the decryptions, which run in
            // the idle class).
            let flooder = {
                let (flood, addr) = (flood.clone(), server.addr);
                let duration = options.duration + Duration::from_millis(400);
                std::thread::spawn(move || -> anyhow::Result<Outcome> {
                    tollgate::priority::nice_for_current_thread("the flood's generator");
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?
                        .block_on(generator::run(
                            Protocol::Grpc,
                            addr,
                            flood,
                            flood_load,
                            duration,
                        ))
                })
            };
            let (flooded, measured) = tokio::join!(
                async {
                    tokio::task::spawn_blocking(move || flooder.join())
                        .await?
                        .map_err(|_| anyhow::anyhow!("the flood's generator panicked"))?
                },
                async {
                    // Let the flood fill the queue before measuring the signed stream.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    measure(Protocol::Grpc, server, &signed, steady, options.duration).await
                }
            );
            let (flooded, measured): (Outcome, _) = (flooded?, measured?);
            anyhow::ensure!(
                flooded.wrong == 0 && flooded.errors == 0,
                "{label}: the flood had {} wrong answers, {} errors of {} ({})",
                flooded.wrong,
                flooded.errors,
                flooded.sent,
                flooded.first_wrong.as_deref().unwrap_or("")
            );
            during.push(measured.outcome.latency.value_at_quantile(0.99) as f64);
            flood_rates.push(flooded.rate());
            let after = server.metrics_text()?;
            let overloaded = |text: &str| {
                metric_sum(
                    &text
                        .lines()
                        .filter(|l| l.contains("reason=\"decryption_overloaded\""))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    "tollgate_decisions_total",
                )
            };
            let answered = flooded.rate() * flooded.elapsed.as_secs_f64();
            refused.push((overloaded(&after) - overloaded(&before)) / answered.max(1.0));
        }
        rows.push(JweRow {
            server: (*label).to_string(),
            flood_rate: median(flood_rates),
            overloaded: median(refused),
            signed_rate: rate as f64,
            signed_p99_alone_us: median(alone),
            signed_p99_flood_us: median(during),
        });
    }
    Ok(rows)
}

//! The load benchmark: tollgate's gRPC `Check` side by side with a trivial allow-everything
//! server (the transport ceiling), then the same through real Envoy next to Envoy's own
//! `jwt_authn` and no auth at all. Results are ratios measured in one run, medians of rounds.
//!
//! ```text
//! cargo bench --bench load                  # the full run (about 7 minutes)
//! cargo bench --bench load -- --quick       # shorter rounds
//! cargo bench --bench load -- --no-envoy    # gRPC only
//! cargo test --bench load -- --soak 150     # the soak run: every decision judged (soak.rs)
//! ```
//!
//! Under `cargo test` it runs a smoke pass: every scenario briefly, every answer checked. It
//! writes `report.md`, `report.json` and `latency.png` to `target/tollgate-bench/` (or
//! `TOLLGATE_BENCH_OUT`). See docs/benchmarks.md.

mod chart;
mod envoy;
mod generator;
mod jwe;
mod report;
mod servers;
mod soak;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use generator::{Expect, Load, Outcome, Prepared, Protocol, Workload};
use report::{EnvoyRow, Report, Row};
use servers::Server;
use workload::*;

/// How big the run is.
#[derive(Clone, Debug)]
pub struct Options {
    pub smoke: bool,
    pub duration: Duration,
    pub rounds: usize,
    pub envoy: bool,
    /// Policies in the many-hosts scenario.
    pub many: usize,
    /// Distinct live tokens in the churn scenario.
    pub churn_tokens: usize,
    /// Distinct tokens per algorithm in the uncached scenarios.
    pub pool: usize,
    pub out: PathBuf,
    pub connections: usize,
    pub streams: usize,
    /// Only the Envoy runs.
    pub envoy_only: bool,
    /// Only the gRPC scenarios whose name contains this (no Envoy, no rebuild unless
    /// `rebuild`).
    pub only: Option<String>,
    /// Run the rebuild with `only` too (`--rebuild`).
    pub rebuild: bool,
}

impl Options {
    fn from_args(args: &[String]) -> Options {
        let measure = args.iter().any(|a| a == "--bench");
        let quick = args.iter().any(|a| a == "--quick");
        let out = std::env::var_os("TOLLGATE_BENCH_OUT").map_or_else(
            || {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("target")
                    .join("tollgate-bench")
            },
            PathBuf::from,
        );
        let envoy = !args.iter().any(|a| a == "--no-envoy");
        let envoy_only = args.iter().any(|a| a == "--envoy-only");
        let only = args
            .iter()
            .position(|a| a == "--only")
            .and_then(|i| args.get(i + 1))
            .cloned();
        let envoy = envoy && only.is_none();
        let rebuild = only.is_none() || args.iter().any(|a| a == "--rebuild");
        if !measure {
            return Options {
                smoke: true,
                duration: Duration::from_millis(300),
                rounds: 1,
                envoy,
                many: 20,
                churn_tokens: 300,
                pool: 8,
                out: out.join("smoke"),
                connections: 2,
                streams: 4,
                envoy_only,
                only,
                rebuild,
            };
        }
        Options {
            smoke: false,
            duration: Duration::from_secs(if quick { 2 } else { 4 }),
            rounds: if quick { 1 } else { 3 },
            envoy,
            many: 1000,
            churn_tokens: 100_000,
            pool: 256,
            out,
            connections: 2,
            streams: 16,
            envoy_only,
            only,
            rebuild,
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--baseline-server") {
        return match servers::run_baseline() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("baseline server: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // Redraws the chart of an earlier run: `-- --replot <folder with report.json>`.
    if let Some(dir) = args
        .iter()
        .position(|a| a == "--replot")
        .and_then(|i| args.get(i + 1))
    {
        let dir = PathBuf::from(dir);
        let replot = || -> anyhow::Result<()> {
            let report: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("report.json"))?)?;
            let curve: Vec<chart::CurvePoint> = serde_json::from_value(report["curve"].clone())?;
            chart::chart(&curve, &dir.join("latency.png"), report::ENVOY_CHART)
        };
        return match replot() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("replot: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let soak_seconds = args
        .iter()
        .position(|a| a == "--soak")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse::<u64>());
    let options = Options::from_args(&args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(seconds) = soak_seconds {
        let Ok(seconds) = seconds else {
            eprintln!("--soak takes a number of seconds");
            return ExitCode::FAILURE;
        };
        let rate = args
            .iter()
            .position(|a| a == "--soak-rate")
            .and_then(|i| args.get(i + 1))
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(400);
        let out = std::env::var_os("TOLLGATE_BENCH_OUT").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tollgate-bench"),
            PathBuf::from,
        );
        return match runtime.block_on(soak::run(seconds, rate, &out.join("soak"))) {
            Ok(report) => {
                println!("{}", report.markdown());
                if report.passed() {
                    ExitCode::SUCCESS
                } else {
                    eprintln!("soak FAILED: see the figures above");
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("soak: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(run(options.clone())) {
        Ok(report) => {
            if options.smoke {
                println!(
                    "load bench: smoke pass ok ({} scenarios, every answer checked); run `cargo bench --bench load` to measure",
                    report.rows.len() + report.envoy.len()
                );
            } else {
                println!("{}", report.markdown());
                println!("written to {}", options.out.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("load bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One measured run against one server.
struct Measured {
    outcome: Outcome,
    /// Server CPU per answered request.
    cpu_per_request: Duration,
}

async fn measure(
    protocol: Protocol,
    server: &Server,
    workload: &Arc<Workload>,
    load: Load,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let before = server.usage()?;
    let outcome = generator::run(protocol, server.addr, workload.clone(), load, duration).await?;
    let after = server.usage()?;
    anyhow::ensure!(
        outcome.wrong == 0 && outcome.errors == 0,
        "{}: {} wrong answers, {} errors of {} ({}) {}",
        server.name,
        outcome.wrong,
        outcome.errors,
        outcome.sent,
        outcome.first_wrong.as_deref().unwrap_or(""),
        server.envoy_stats()
    );
    let cpu = after.cpu.saturating_sub(before.cpu);
    Ok(Measured {
        cpu_per_request: cpu.div_f64(outcome.sent.max(1) as f64),
        outcome,
    })
}

/// Sends every request of `workload` once, in order (cache warm-up).
async fn warm(server: &Server, requests: &[Prepared]) -> anyhow::Result<()> {
    let workload = Arc::new(Workload {
        requests: requests.to_vec(),
        sequential: true,
        limit: Some(requests.len() as u64),
    });
    let load = Load::Closed {
        connections: 2,
        streams: 8,
    };
    let outcome = generator::run(
        Protocol::Grpc,
        server.addr,
        workload,
        load,
        Duration::from_secs(3600),
    )
    .await?;
    anyhow::ensure!(
        outcome.wrong == 0 && outcome.errors == 0,
        "warm-up of {}: {}",
        server.name,
        outcome.first_wrong.unwrap_or_default()
    );
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Median time of one full RS256 decode and validation with jsonwebtoken (aws-lc-rs), the cost
/// the uncached target is stated against.
fn rs256_verify_cost(keys: &Keys, token: &str) -> anyhow::Result<Duration> {
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(keys.rs256.jwk().context("jwk")?)?;
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk)?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[AUDIENCE]);
    validation.set_issuer(&[ISSUER]);
    let mut samples = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let start = Instant::now();
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)?;
        samples.push(start.elapsed().as_secs_f64());
    }
    Ok(Duration::from_secs_f64(median(samples)))
}

async fn run(options: Options) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&options.out)?;
    let keys = Keys::new()?;
    let introspect = introspection_server().await?;
    let dir = tempfile::tempdir()?;
    write_policies(dir.path(), &keys.jwks(), introspect, options.many, None)?;
    write_jwe_policy(dir.path(), &keys)?;

    let baseline = servers::baseline()?;
    let cached = servers::tollgate("tollgate", dir.path(), &[])?;
    let uncached = servers::tollgate(
        "tollgate (cache off)",
        dir.path(),
        &["--token-cache-entries", "0"],
    )?;

    let idle = cached.usage()?;
    // Tokens.
    let hit = keys.rs256.mint(&claims(1))?;
    let rs = mint_many(&keys.rs256, options.pool, 1000)?;
    let es = mint_many(&keys.es256, options.pool, 2000)?;
    let ed = mint_many(&keys.eddsa, options.pool, 3000)?;
    let churn = mint_many(&keys.es256, options.churn_tokens, 1_000_000)?;
    let verify_cost = rs256_verify_cost(&keys, &hit)?;

    let allow =
        |host: &str, token: &str, n: u64| check(host, "/orders/1", Some(token), n, Expect::Allow);
    let deny =
        |host: &str, token: &str, n: u64| check(host, "/orders/1", Some(token), n, UNAUTHENTICATED);
    let many: Vec<Prepared> = (0..options.many)
        .map(|i| allow(&many_host(i), &hit, i as u64))
        .collect();
    let churn_requests: Vec<Prepared> = churn
        .iter()
        .enumerate()
        .map(|(i, t)| allow(HOST, t, i as u64))
        .collect();
    let scenarios: Vec<(&str, &Server, Vec<Prepared>)> = vec![
        (
            "(a) one valid RS256 token, repeated (cache hit)",
            &cached,
            vec![allow(HOST, &hit, 0)],
        ),
        (
            "(b) a fresh RS256 token per request (uncached)",
            &uncached,
            rs.iter()
                .enumerate()
                .map(|(i, t)| allow(HOST, t, i as u64))
                .collect(),
        ),
        (
            "(b) a fresh ES256 token per request (uncached)",
            &uncached,
            es.iter()
                .enumerate()
                .map(|(i, t)| allow(HOST, t, i as u64))
                .collect(),
        ),
        (
            "(b) a fresh EdDSA token per request (uncached)",
            &uncached,
            ed.iter()
                .enumerate()
                .map(|(i, t)| allow(HOST, t, i as u64))
                .collect(),
        ),
        (
            "(c) invalid RS256 signature",
            &cached,
            rs.iter()
                .enumerate()
                .map(|(i, t)| deny(HOST, &bad_signature(t), i as u64))
                .collect(),
        ),
        (
            "(c) malformed token",
            &cached,
            (0..options.pool as u64)
                .map(|i| deny(HOST, &format!("not-a-jwt-{i}"), i))
                .collect(),
        ),
        (
            "(d) 1,000 policies, random host (cache hit)",
            &cached,
            many.clone(),
        ),
        (
            "(e) 100,000 distinct live ES256 tokens",
            &cached,
            churn_requests.clone(),
        ),
        (
            "(f) opaque token, warm introspection cache",
            &cached,
            (0..100)
                .map(|i| allow(OPAQUE_HOST, &opaque_token(i), i))
                .collect(),
        ),
    ];
    let load = Load::Closed {
        connections: options.connections,
        streams: options.streams,
    };
    let baseline_workload = Arc::new(Workload::new(vec![allow(HOST, &hit, 0)]));
    let mut rows = Vec::new();
    let scenarios: Vec<_> = if options.envoy_only {
        Vec::new()
    } else {
        scenarios
            .into_iter()
            .filter(|(name, _, _)| {
                options
                    .only
                    .as_ref()
                    .is_none_or(|o| name.contains(o.as_str()))
            })
            .collect()
    };
    for (name, server, requests) in scenarios {
        let size = average_size(&requests);
        warm(server, &requests).await?;
        let workload = Arc::new(Workload::new(requests));
        let lookups_before = server.metrics_text()?;
        let (mut base_rate, mut base_cpu, mut rate, mut cpu, mut p50, mut p99) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..options.rounds {
            let b = measure(
                Protocol::Grpc,
                &baseline,
                &baseline_workload,
                load,
                options.duration,
            )
            .await?;
            let t = measure(Protocol::Grpc, server, &workload, load, options.duration).await?;
            base_rate.push(b.outcome.rate());
            base_cpu.push(b.cpu_per_request.as_secs_f64() * 1e6);
            rate.push(t.outcome.rate());
            cpu.push(t.cpu_per_request.as_secs_f64() * 1e6);
            p50.push(t.outcome.latency.value_at_quantile(0.5) as f64);
            p99.push(t.outcome.latency.value_at_quantile(0.99) as f64);
        }
        let lookups_after = server.metrics_text()?;
        let hit_ratio = report::hit_ratio(&lookups_before, &lookups_after);
        let rss_mib = server.usage()?.rss_kib as f64 / 1024.0;
        rows.push(Row {
            rss_mib,
            name: name.to_string(),
            server: server.name.to_string(),
            request_bytes: size,
            rate: median(rate),
            baseline_rate: median(base_rate),
            cpu_us: median(cpu),
            baseline_cpu_us: median(base_cpu),
            p50_us: median(p50),
            p99_us: median(p99),
            cache_hit_ratio: hit_ratio,
        });
    }

    // Memory with every policy loaded and the churn tokens cached.
    let memory = cached.usage()?;
    let cache_entries = cached.metric("tollgate_token_cache_entries")?;
    let cache_weight = cached.metric("tollgate_token_cache_weight_bytes")?;

    // A rebuild of the many policies under open-loop load.
    let rebuild = if options.envoy_only || !options.rebuild {
        report::Rebuild::default()
    } else {
        report::rebuild(
            &options,
            &cached,
            dir.path(),
            &keys,
            introspect,
            &rows,
            &hit,
        )
        .await?
    };

    // Fresh encrypted tokens flooding the server while signed ones are judged.
    let jwe = if options.envoy_only || options.only.as_ref().is_some_and(|o| !o.contains("jwe")) {
        Vec::new()
    } else {
        let unbounded = servers::tollgate(
            "tollgate (cache off, decryption unbounded)",
            dir.path(),
            &[
                "--token-cache-entries",
                "0",
                "--decryption-concurrency",
                "64",
            ],
        )?;
        let uncached_rate = rows
            .iter()
            .find(|r| r.name.starts_with("(b) a fresh RS256"))
            .map_or(2000.0, |r| r.rate);
        jwe::contention(
            &options,
            &[
                ("bounded (default)", &uncached),
                ("unbounded (64)", &unbounded),
            ],
            &keys,
            &rs,
            uncached_rate,
        )
        .await?
    };

    let envoy = if options.envoy {
        envoy_runs(&options, &keys, [&baseline, &cached, &uncached], &hit, &rs).await?
    } else {
        report::EnvoyRuns::default()
    };

    let report = Report {
        options: options.clone(),
        rows,
        verify_rs256_us: verify_cost.as_secs_f64() * 1e6,
        memory_peak_kib: memory.peak_rss_kib,
        memory_idle_kib: idle.rss_kib,
        memory_kib: memory.rss_kib,
        cache_entries,
        cache_weight,
        rebuild,
        jwe,
        envoy: envoy.rows,
        curve: envoy.curve,
    };
    report.write(&options.out)?;
    drop((baseline, cached, uncached));
    Ok(report)
}

/// The Envoy in front of tollgate without its verified-token cache, sent a fresh token each time.
pub const UNCACHED_ENVOY: &str = "ext_authz -> tollgate, cache off, fresh RS256 tokens";

/// The four Envoys (plus the recommended-settings and uncached variants), closed-loop maxima
/// and an open-loop latency curve.
async fn envoy_runs(
    options: &Options,
    keys: &Keys,
    [baseline, tollgate, uncached]: [&Server; 3],
    hit: &str,
    fresh: &[String],
) -> anyhow::Result<report::EnvoyRuns> {
    let binary = match servers::envoy_binary() {
        Some(binary) => binary,
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            anyhow::bail!("envoy is missing under CI: run tests/run.sh, which installs it")
        }
        None => {
            eprintln!(
                "envoy not found (set TOLLGATE_ENVOY or run tests/run.sh): Envoy runs skipped"
            );
            return Ok(report::EnvoyRuns::default());
        }
    };
    let dir = tempfile::tempdir()?;
    let jwks = keys.jwks();
    let only_authorization = ["authorization"];
    let variants: Vec<(&'static str, envoy::Auth<'_>)> = vec![
        ("no auth", envoy::Auth::None),
        (
            "jwt_authn (JWT cache on)",
            envoy::Auth::JwtAuthn {
                jwks: &jwks,
                issuer: ISSUER,
                cache: true,
            },
        ),
        (
            "ext_authz -> trivial allow",
            envoy::Auth::ExtAuthz {
                server: baseline.addr,
                allowed_headers: None,
            },
        ),
        (
            "ext_authz -> tollgate",
            envoy::Auth::ExtAuthz {
                server: tollgate.addr,
                allowed_headers: None,
            },
        ),
        (
            "ext_authz -> tollgate, allowed_headers: [authorization]",
            envoy::Auth::ExtAuthz {
                server: tollgate.addr,
                allowed_headers: Some(&only_authorization),
            },
        ),
        (
            UNCACHED_ENVOY,
            envoy::Auth::ExtAuthz {
                server: uncached.addr,
                allowed_headers: None,
            },
        ),
    ];
    let mut envoys = Vec::new();
    for (name, auth) in &variants {
        let (listen, admin) = (servers::free_port()?, servers::free_port()?);
        let config = envoy::config(listen, admin, auth);
        envoys.push((
            *name,
            servers::envoy(&binary, name, &config, dir.path(), listen, admin)?,
        ));
    }
    let protected = Arc::new(Workload::new(vec![Prepared {
        body: Default::default(),
        authority: HOST.into(),
        path: "/orders/1".into(),
        token: Some(hit.to_string()),
        expect: Expect::Status(200),
    }]));
    let fresh = Arc::new(Workload::new(
        fresh
            .iter()
            .map(|token| Prepared {
                body: Default::default(),
                authority: HOST.into(),
                path: "/orders/1".into(),
                token: Some(token.clone()),
                expect: Expect::Status(200),
            })
            .collect(),
    ));
    let public = Arc::new(Workload::new(vec![Prepared {
        body: Default::default(),
        authority: HOST.into(),
        path: envoy::PUBLIC_PATH.into(),
        token: None,
        expect: Expect::Status(200),
    }]));
    // A request without a token must be refused by every authenticating Envoy.
    let refused = Arc::new(Workload::new(vec![Prepared {
        body: Default::default(),
        authority: HOST.into(),
        path: "/orders/1".into(),
        token: None,
        expect: Expect::Status(401),
    }]));
    let short = Duration::from_millis(200);
    let one = Load::Closed {
        connections: 1,
        streams: 1,
    };
    for (name, envoy) in &envoys[1..] {
        if name.contains("trivial") {
            continue;
        }
        generator::run(Protocol::Http2, envoy.addr, refused.clone(), one, short)
            .await
            .and_then(|o| {
                anyhow::ensure!(o.wrong == 0 && o.errors == 0, "{name}: {:?}", o.first_wrong);
                Ok(())
            })?;
    }
    let load = Load::Closed {
        connections: 4,
        streams: 16,
    };
    let mut rows = Vec::new();
    let mut maxima = Vec::new();
    for (name, envoy) in &envoys {
        let tokens = if *name == UNCACHED_ENVOY {
            &fresh
        } else {
            &protected
        };
        for (label, workload) in [("", tokens), (" (route with ext_authz disabled)", &public)] {
            if !label.is_empty() && *name != "ext_authz -> tollgate" {
                continue;
            }
            let mut rates = Vec::new();
            let mut cpu = Vec::new();
            let mut p99 = Vec::new();
            for _ in 0..options.rounds {
                let env_before = envoy.usage()?;
                let m = measure(Protocol::Http2, envoy, workload, load, options.duration).await?;
                let env_after = envoy.usage()?;
                rates.push(m.outcome.rate());
                cpu.push(
                    env_after.cpu.saturating_sub(env_before.cpu).as_secs_f64() * 1e6
                        / m.outcome.sent.max(1) as f64,
                );
                p99.push(m.outcome.latency.value_at_quantile(0.99) as f64);
            }
            let row = EnvoyRow {
                name: format!("{name}{label}"),
                rate: median(rates),
                envoy_cpu_us: median(cpu),
                p99_us: median(p99),
            };
            maxima.push((name.to_string(), label.is_empty(), row.rate));
            rows.push(row);
        }
    }
    // Open loop: the same offered rates for no auth, jwt_authn and tollgate, as fractions of
    // the Envoy + tollgate maximum.
    let tollgate_max = maxima
        .iter()
        .find(|(n, protected, _)| *n == "ext_authz -> tollgate" && *protected)
        .map_or(1000.0, |(_, _, r)| *r);
    let fractions: &[f64] = if options.smoke {
        &[0.5]
    } else {
        &[0.1, 0.25, 0.5, 0.75, 0.9]
    };
    let mut curve = Vec::new();
    let open_duration = if options.smoke {
        short
    } else {
        options.duration
    };
    for &fraction in fractions {
        let rate = (tollgate_max * fraction).max(50.0) as u64;
        for (name, envoy) in &envoys {
            if name.contains("allowed") || *name == UNCACHED_ENVOY {
                continue;
            }
            let m = measure(
                Protocol::Http2,
                envoy,
                &protected,
                Load::Open {
                    connections: 4,
                    rate,
                },
                open_duration,
            )
            .await?;
            curve.push(report::CurvePoint {
                series: name.to_string(),
                fraction,
                rate: rate as f64,
                p50_us: m.outcome.latency.value_at_quantile(0.5) as f64,
                p99_us: m.outcome.latency.value_at_quantile(0.99) as f64,
                p999_us: m.outcome.latency.value_at_quantile(0.999) as f64,
            });
        }
    }
    drop(envoys);
    Ok(report::EnvoyRuns { rows, curve })
}

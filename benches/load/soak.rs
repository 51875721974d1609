//! The soak run: tollgate under steady gRPC load from this generator while, every few seconds,
//! one of these happens in turn: the IdP publishes its next signing key, tokens start being
//! signed with it, a policy accepts a second audience (or stops), a policy file is rewritten
//! unchanged, the old key is retired, the IdP stops and later comes back. Expired, wrongly
//! signed and tokenless requests are mixed in all the time.
//!
//! Every answer is judged against a decision computed here, from what the soak itself did:
//! - a token of a published key, with the accepted audience: allow;
//! - expired, signed by a key the IdP never published, or no token: deny (401);
//! - the second audience: allow while the policy accepts it, deny while it does not. Between
//!   writing the file and the first answer that shows the change (probed on a connection of
//!   its own), either answer is right: that window is counted and reported, not judged.
//!
//! Figures: requests, wrong allows (must be 0), wrong denies (must be 0), 5xx, errors, p50/p99,
//! and tollgate's RSS after warm-up and at the end (growth must stay under a stated bound).
//!
//! `cargo test --bench load -- --soak 150` (the README's test command runs this), or
//! `cargo bench --bench load -- --soak 3600` for an hour on a release build.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tollgate::local_issuer::server::IdpServer;
use tollgate::local_issuer::{SigningKey, jwks, now_secs};

use crate::generator;
use crate::servers;
use crate::workload::{AUDIENCE, HOST};

/// The audience a policy accepts only in some phases.
const SECOND_AUDIENCE: &str = "api://soak-second";
/// Most RSS growth from after warm-up to the end.
const RSS_GROWTH_BOUND_MIB: f64 = 48.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Valid,
    SecondAudience,
    Expired,
    Rogue,
    NoToken,
}

struct Pool {
    requests: Vec<(Kind, Bytes)>,
}

/// A change of the accepted audiences: written at `write`, first seen in an answer at
/// `observed` (`None` while the probe still waits).
#[derive(Clone, Copy)]
struct Toggle {
    write: Instant,
    observed: Option<Instant>,
    accepts_second: bool,
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    wrong_allows: AtomicU64,
    wrong_denies: AtomicU64,
    server_errors: AtomicU64,
    errors: AtomicU64,
    in_transition: AtomicU64,
    first_wrong: Mutex<Option<String>>,
}

impl Tally {
    fn wrong(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_wrong.lock() {
            first.get_or_insert(what);
        }
    }
}

/// What an answer should be, or `None` inside an audience change's window.
fn expected(kind: Kind, sent: Instant, answered: Instant, toggles: &[Toggle]) -> Option<bool> {
    match kind {
        Kind::Valid => Some(true),
        Kind::Expired | Kind::Rogue | Kind::NoToken => Some(false),
        Kind::SecondAudience => {
            let mut accepts = false;
            for toggle in toggles {
                if toggle.write > answered {
                    break;
                }
                match toggle.observed {
                    Some(seen) if seen < sent => accepts = toggle.accepts_second,
                    _ => return None,
                }
            }
            Some(accepts)
        }
    }
}

fn policy(issuer: &str, accepts_second: bool) -> String {
    let audiences = if accepts_second {
        json!([AUDIENCE, SECOND_AUDIENCE])
    } else {
        json!([AUDIENCE])
    };
    json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "JwtPolicy",
    "metadata": {"name": "soak", "namespace": "bench"},
    "spec": {
        "match": {"hosts": [HOST]},
        "issuers": [{"issuer": issuer, "audiences": audiences, "allowInsecureHttp": true}],
        "forward": {"claimsToHeaders": [{"claim": "sub", "header": "x-user-id"}]},
    }})
    .to_string()
}

fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn claims(issuer: &str, n: usize, aud: &str, exp: i64) -> Value {
    json!({"iss": issuer, "sub": format!("soak-{n}"), "aud": aud, "iat": now_secs() - 5, "exp": exp})
}

/// The requests of one key generation.
fn pool(issuer: &str, key: &SigningKey, until: i64) -> anyhow::Result<Pool> {
    let rogue = SigningKey::rsa(&key.kid, "RS256", 2048)?;
    let mut requests = Vec::new();
    let mut add = |kind: Kind, token: Option<String>, n: usize| {
        let prepared = crate::workload::check(
            HOST,
            "/orders",
            token.as_deref(),
            n as u64,
            generator::Expect::Allow,
        );
        requests.push((kind, prepared.body));
    };
    for n in 0..16 {
        add(
            Kind::Valid,
            Some(key.mint(&claims(issuer, n, AUDIENCE, until))?),
            n,
        );
    }
    for n in 0..6 {
        add(
            Kind::SecondAudience,
            Some(key.mint(&claims(issuer, n, SECOND_AUDIENCE, until))?),
            n,
        );
    }
    for n in 0..3 {
        let expired = claims(issuer, n, AUDIENCE, now_secs() - 600);
        add(Kind::Expired, Some(key.mint(&expired)?), n);
        add(
            Kind::Rogue,
            Some(rogue.mint(&claims(issuer, n, AUDIENCE, until))?),
            n,
        );
    }
    add(Kind::NoToken, None, 0);
    Ok(Pool { requests })
}

/// Whether tollgate accepts the second audience now (asked with a fresh token each time, so
/// no cache answers for an older policy).
async fn accepts_second(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    issuer: &str,
    key: &SigningKey,
    n: usize,
) -> anyhow::Result<bool> {
    let token = key.mint(&claims(
        issuer,
        1_000_000 + n,
        SECOND_AUDIENCE,
        now_secs() + 600,
    ))?;
    let probe = crate::workload::check(HOST, "/orders", Some(&token), 0, generator::Expect::Allow);
    let response = generator::check(client, probe.body).await?;
    Ok(tollgate::client::allowed(&response))
}

pub struct SoakReport {
    pub seconds: u64,
    pub rate: u64,
    pub sent: u64,
    pub wrong_allows: u64,
    pub wrong_denies: u64,
    pub server_errors: u64,
    pub errors: u64,
    pub in_transition: u64,
    pub events: Vec<(f64, String)>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub rss_start_mib: f64,
    pub rss_end_mib: f64,
    pub first_wrong: Option<String>,
}

impl SoakReport {
    pub fn passed(&self) -> bool {
        self.sent > 0
            && self.wrong_allows == 0
            && self.wrong_denies == 0
            && self.server_errors == 0
            && self.errors == 0
            && self.rss_end_mib - self.rss_start_mib <= RSS_GROWTH_BOUND_MIB
    }

    pub fn markdown(&self) -> String {
        let mut out = format!(
            "## Soak: {} s at {} req/s\n\n| figure | value |\n|---|---|\n\
             | requests judged | {} |\n| wrong allows (must be 0) | {} |\n\
             | wrong denies (must be 0) | {} |\n| 5xx answers | {} |\n| transport errors | {} |\n\
             | in an audience change's window (either answer right) | {} |\n\
             | latency p50 / p99 / max | {:.2} / {:.2} / {:.2} ms |\n\
             | RSS after warm-up → end | {:.1} → {:.1} MiB (bound: +{RSS_GROWTH_BOUND_MIB} MiB) |\n\
             | events | {} |\n",
            self.seconds,
            self.rate,
            self.sent,
            self.wrong_allows,
            self.wrong_denies,
            self.server_errors,
            self.errors,
            self.in_transition,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.rss_start_mib,
            self.rss_end_mib,
            self.events.len(),
        );
        if let Some(first) = &self.first_wrong {
            out.push_str(&format!("\nFirst wrong answer: {first}\n"));
        }
        out.push_str("\n| at (s) | event |\n|---|---|\n");
        for (at, event) in &self.events {
            out.push_str(&format!("| {at:.1} | {event} |\n"));
        }
        out
    }
}

/// Runs the soak for `seconds` at `rate` requests per second in all.
pub async fn run(seconds: u64, rate: u64, out: &Path) -> anyhow::Result<SoakReport> {
    let dir = tempfile::tempdir()?;
    let mut keys = vec![SigningKey::rsa("soak-0", "RS256", 2048)?];
    let mut published: Vec<usize> = vec![0];
    let publish = |keys: &[SigningKey], published: &[usize]| {
        let refs: Vec<&SigningKey> = published.iter().map(|&i| &keys[i]).collect();
        jwks(&refs)
    };
    let mut idp = Some(IdpServer::start("127.0.0.1:0".parse()?, publish(&keys, &published)).await?);
    let idp_addr: SocketAddr = idp.as_ref().map(IdpServer::addr).context("idp")?;
    let issuer = idp.as_ref().map(IdpServer::issuer).context("idp")?;
    let set_cache = |idp: &IdpServer| idp.set_cache_control(Some("max-age=1"));
    if let Some(idp) = &idp {
        set_cache(idp);
    }
    let policy_file = dir.path().join("soak.json");
    write_atomically(&policy_file, &policy(&issuer, false))?;
    let tollgate = servers::tollgate(
        "tollgate",
        dir.path(),
        &[
            "--jwks-min-refresh",
            "1s",
            "--unknown-kid-refetch-interval",
            "1s",
            "--jwks-max-retry-delay",
            "1s",
            "--poll-interval",
            "1s",
            "--denial-log-limit",
            "10",
        ],
    )?;
    let until = now_secs() + seconds as i64 + 3600;
    let current = Arc::new(ArcSwap::from_pointee(pool(&issuer, &keys[0], until)?));
    let toggles: Arc<Mutex<Vec<Toggle>>> = Arc::new(Mutex::new(Vec::new()));
    let tally = Arc::new(Tally::default());
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));

    // The load: `tasks` connections, each paced to its share of the rate.
    let tasks = 8usize;
    let interval = Duration::from_secs_f64(tasks as f64 / rate.max(1) as f64);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut load = Vec::new();
    for t in 0..tasks {
        let mut client = generator::connect_grpc(tollgate.addr).await?;
        let (current, toggles, tally, histogram) = (
            current.clone(),
            toggles.clone(),
            tally.clone(),
            histogram.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = t;
            while Instant::now() < deadline {
                ticker.tick().await;
                let pool = current.load_full();
                let (kind, body) = pool.requests[n % pool.requests.len()].clone();
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407)
                    >> 1;
                let sent = Instant::now();
                let result = generator::check(&mut client, body).await;
                let answered = Instant::now();
                tally.sent.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut h) = histogram.lock() {
                    let _ = h.record((answered - sent).as_micros().max(1) as u64);
                }
                let response = match result {
                    Ok(response) => response,
                    Err(error) => {
                        tally.wrong(&tally.errors, format!("{kind:?}: error {error:#}"));
                        continue;
                    }
                };
                let allowed = tollgate::client::allowed(&response);
                let status = match &response.http_response {
                    Some(tollgate::proto::auth::check_response::HttpResponse::DeniedResponse(
                        d,
                    )) => d.status.as_ref().map_or(0, |s| s.code),
                    _ => 200,
                };
                if status >= 500 {
                    tally.wrong(
                        &tally.server_errors,
                        format!("{kind:?}: {}", tollgate::client::render(&response)),
                    );
                }
                let log = toggles.lock().map(|t| t.clone()).unwrap_or_default();
                match expected(kind, sent, answered, &log) {
                    None => {
                        tally.in_transition.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(true) if !allowed => tally.wrong(
                        &tally.wrong_denies,
                        format!(
                            "{kind:?} denied at {:.1}s: {}",
                            (sent - start).as_secs_f64(),
                            tollgate::client::render(&response)
                        ),
                    ),
                    Some(false) if allowed => tally.wrong(
                        &tally.wrong_allows,
                        format!("{kind:?} allowed at {:.1}s", (sent - start).as_secs_f64()),
                    ),
                    Some(false) if status != 401 => tally.wrong(
                        &tally.wrong_denies,
                        format!("{kind:?} denied with {status}, not 401"),
                    ),
                    Some(_) => {}
                }
            }
        }));
    }

    // Warm-up, then the first memory reading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_start = tollgate.usage()?.rss_kib as f64 / 1024.0;

    // The events, one per tick, in a fixed cycle.
    let tick = Duration::from_secs(3);
    let mut events = Vec::new();
    let mut probe = generator::connect_grpc(tollgate.addr).await?;
    let mut accepts = false;
    let mut probes = 0usize;
    let mut step = 0usize;
    while Instant::now() + tick < deadline {
        tokio::time::sleep(tick).await;
        let at = start.elapsed().as_secs_f64();
        let newest = keys.len() - 1;
        let event = match step % 8 {
            0 => {
                keys.push(SigningKey::rsa(
                    &format!("soak-{}", keys.len()),
                    "RS256",
                    2048,
                )?);
                published.push(keys.len() - 1);
                if let Some(idp) = &idp {
                    idp.set_jwks(publish(&keys, &published));
                }
                format!("IdP publishes its next key {}", keys[keys.len() - 1].kid)
            }
            1 => {
                current.store(Arc::new(pool(&issuer, &keys[newest], until)?));
                format!("tokens are now signed with {}", keys[newest].kid)
            }
            2 | 6 => {
                accepts = !accepts;
                let write = Instant::now();
                write_atomically(&policy_file, &policy(&issuer, accepts))?;
                if let Ok(mut log) = toggles.lock() {
                    log.push(Toggle {
                        write,
                        observed: None,
                        accepts_second: accepts,
                    });
                }
                let seen_by = write + Duration::from_secs(15);
                let mut seen = false;
                while Instant::now() < seen_by {
                    probes += 1;
                    if accepts_second(&mut probe, &issuer, &keys[newest], probes).await? == accepts
                    {
                        seen = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                anyhow::ensure!(seen, "the audience change was not served within 15 s");
                let observed = Instant::now();
                if let Ok(mut log) = toggles.lock()
                    && let Some(last) = log.last_mut()
                {
                    last.observed = Some(observed);
                }
                format!(
                    "policy {} the second audience (served {:.0} ms after the write)",
                    if accepts {
                        "accepts"
                    } else {
                        "no longer accepts"
                    },
                    (observed - write).as_secs_f64() * 1000.0
                )
            }
            3 => {
                published.retain(|&i| i == newest);
                if let Some(idp) = &idp {
                    idp.set_jwks(publish(&keys, &published));
                }
                format!("IdP retires every key but {}", keys[newest].kid)
            }
            4 => {
                write_atomically(&policy_file, &policy(&issuer, accepts))?;
                "policy file rewritten unchanged".to_string()
            }
            5 => {
                if let Some(idp) = idp.take() {
                    idp.stop().await;
                }
                "IdP stopped".to_string()
            }
            _ => {
                let restarted = IdpServer::start(idp_addr, publish(&keys, &published)).await?;
                set_cache(&restarted);
                idp = Some(restarted);
                "IdP back".to_string()
            }
        };
        println!("soak {at:7.1}s  {event}");
        events.push((at, event));
        step += 1;
        // The IdP is never left down at the end.
        if idp.is_none() && Instant::now() + tick >= deadline {
            idp = Some(IdpServer::start(idp_addr, publish(&keys, &published)).await?);
        }
    }
    for task in load {
        task.await?;
    }
    let rss_end = tollgate.usage()?.rss_kib as f64 / 1024.0;
    drop(idp);
    let h = histogram
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock"))?
        .clone();
    let ms = |us: u64| us as f64 / 1000.0;
    let report = SoakReport {
        seconds,
        rate,
        sent: tally.sent.load(Ordering::Relaxed),
        wrong_allows: tally.wrong_allows.load(Ordering::Relaxed),
        wrong_denies: tally.wrong_denies.load(Ordering::Relaxed),
        server_errors: tally.server_errors.load(Ordering::Relaxed),
        errors: tally.errors.load(Ordering::Relaxed),
        in_transition: tally.in_transition.load(Ordering::Relaxed),
        events,
        p50_ms: ms(h.value_at_quantile(0.5)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
        rss_start_mib: rss_start,
        rss_end_mib: rss_end,
        first_wrong: tally.first_wrong.lock().ok().and_then(|f| f.clone()),
    };
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("soak.md"), report.markdown())?;
    Ok(report)
}

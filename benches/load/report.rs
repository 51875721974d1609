//! The results: a Markdown table with every target and its measured ratio, the same as JSON,
//! the policy-rebuild run, and the latency-against-load chart.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::generator::{Expect, Load, Protocol, Workload};
use crate::servers::{Server, metric_sum};
use crate::workload::{HOST, Keys, check, render_policies, write_files};
use crate::{Options, measure, median};

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub server: String,
    pub request_bytes: usize,
    pub rate: f64,
    pub baseline_rate: f64,
    pub cpu_us: f64,
    pub baseline_cpu_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Verified-token cache hits / lookups during the rounds (None: no lookups).
    pub cache_hit_ratio: Option<f64>,
    /// The server's resident memory after the scenario.
    pub rss_mib: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct EnvoyRow {
    pub name: String,
    pub rate: f64,
    pub envoy_cpu_us: f64,
    pub p99_us: f64,
}

pub use crate::chart::CurvePoint;

/// The title of the load bench's chart.
pub const ENVOY_CHART: &str = "p99 latency against offered load, through Envoy (one worker)";

#[derive(Default)]
pub struct EnvoyRuns {
    pub rows: Vec<EnvoyRow>,
    pub curve: Vec<CurvePoint>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Rebuild {
    pub policies: usize,
    pub reloads: f64,
    pub reload_ms: f64,
    pub rate: f64,
    pub steady_p99_us: f64,
    pub during_p99_us: f64,
    /// Rounds whose snapshot was published before their measured window ended, of `rounds`:
    /// the others measured the writes only.
    pub published_in_window: usize,
    pub rounds: usize,
    /// p99 while the same files were written to a folder tollgate does not watch: what the
    /// writes alone cost the checks.
    pub writes_only_p99_us: f64,
    /// The longest stretch during a rebuild where answers came late (see [`stalls`]), ms.
    pub longest_stall_ms: f64,
    /// Where it began, in ms after the writer began writing (negative: before).
    pub stall_after_writes_ms: f64,
}

/// A stretch of the schedule where every 5 ms slice had an answer later than `late_us`:
/// (begins, ends, worst latency), in µs from the first request.
pub fn stalls(schedule: &[u64], interval: Duration, late_us: u64) -> Vec<(u64, u64, u64)> {
    const SLICE_US: u64 = 5_000;
    let interval_us = (interval.as_secs_f64() * 1e6).max(1.0);
    let slices = (schedule.len() as f64 * interval_us / SLICE_US as f64).ceil() as usize;
    let mut worst = vec![0u64; slices.max(1)];
    for (i, &latency) in schedule.iter().enumerate() {
        let slice = ((i as f64 * interval_us) as u64 / SLICE_US) as usize;
        if let Some(w) = worst.get_mut(slice) {
            *w = (*w).max(latency);
        }
    }
    let mut out: Vec<(u64, u64, u64)> = Vec::new();
    for (i, &w) in worst.iter().enumerate() {
        if w <= late_us {
            continue;
        }
        let (begins, ends) = (i as u64 * SLICE_US, (i as u64 + 1) * SLICE_US);
        match out.last_mut() {
            Some(last) if last.1 == begins => {
                last.1 = ends;
                last.2 = last.2.max(w);
            }
            _ => out.push((begins, ends, w)),
        }
    }
    out
}

#[derive(Serialize)]
pub struct Report {
    #[serde(skip)]
    pub options: Options,
    pub rows: Vec<Row>,
    pub verify_rs256_us: f64,
    pub memory_peak_kib: u64,
    /// Right after start, every policy loaded, nothing cached.
    pub memory_idle_kib: u64,
    pub memory_kib: u64,
    pub cache_entries: f64,
    pub cache_weight: f64,
    pub rebuild: Rebuild,
    /// Fresh encrypted tokens against signed ones ([`crate::jwe`]).
    pub jwe: Vec<crate::jwe::JweRow>,
    pub envoy: Vec<EnvoyRow>,
    pub curve: Vec<CurvePoint>,
}

/// Hits / (hits + misses + stale) of the verified-token cache between two scrapes.
pub fn hit_ratio(before: &str, after: &str) -> Option<f64> {
    let count = |text: &str, result: &str| {
        metric_sum(
            &text
                .lines()
                .filter(|l| l.contains(&format!("result=\"{result}\"")))
                .collect::<Vec<_>>()
                .join("\n"),
            "tollgate_token_cache_lookups_total",
        )
    };
    let delta = |result: &str| count(after, result) - count(before, result);
    let (hits, misses, stale) = (delta("hit"), delta("miss"), delta("stale"));
    let total = hits + misses + stale;
    (total > 0.0).then(|| hits / total)
}

/// Rewrites every many-hosts policy while an open-loop load runs against the main host, and
/// compares its p99 with a steady run at the same rate.
pub async fn rebuild(
    options: &Options,
    server: &Server,
    dir: &Path,
    keys: &Keys,
    introspect: SocketAddr,
    rows: &[Row],
    hit: &str,
) -> anyhow::Result<Rebuild> {
    let rate = (rows.first().map_or(1000.0, |r| r.rate) * 0.5).max(50.0) as u64;
    let workload = Arc::new(Workload::new(vec![check(
        HOST,
        "/orders/1",
        Some(hit),
        0,
        Expect::Allow,
    )]));
    let load = Load::Open {
        connections: 2,
        rate,
    };
    let (mut steady, mut during, mut reload_ms, mut reloads) = (vec![], vec![], vec![], vec![]);
    let (mut longest_stall, mut stall_after) = (vec![], vec![]);
    let mut writes_only = vec![];
    let mut published_in_window = 0;
    // The control: the same files written to a folder on the same disk that tollgate does not
    // watch. What the writes alone cost the checks on these two cores is then measured in the
    // same run, next to what the rebuild costs.
    let unwatched = tempfile::tempdir_in(dir.parent().unwrap_or(dir))?;
    let moved = |files: &[(std::path::PathBuf, String)]| -> Vec<(std::path::PathBuf, String)> {
        files
            .iter()
            .map(|(path, text)| {
                let name = path.file_name().unwrap_or_default();
                (unwatched.path().join(name), text.clone())
            })
            .collect()
    };
    // Rewritten in the windows, as the watched files are, not created there.
    write_files(&moved(&render_policies(
        dir,
        &keys.jwks(),
        introspect,
        options.many,
        None,
    )?))?;
    for round in 0..options.rounds {
        let m = measure(Protocol::Grpc, server, &workload, load, options.duration).await?;
        steady.push(m.outcome.latency.value_at_quantile(0.99) as f64);
        let steady_p99 = *steady.last().unwrap_or(&1000.0);
        // Late: over twice the steady p99 (at least 2 ms, a scheduler slice on these cores).
        let late_us = (2.0 * steady_p99).max(2000.0) as u64;
        let audience = (round % 2 == 0).then_some("api://rebuilt");
        let files = render_policies(dir, &keys.jwks(), introspect, options.many, audience)?;
        let control = window_with_writes(options, server, &workload, load, moved(&files)).await?;
        writes_only.push(control.p99_us);
        eprintln!(
            "rebuild round {round}, control (the same writes, unwatched): {}",
            control.describe(late_us, &control.stalls(late_us))
        );
        let text = server.metrics_text()?;
        let (sum, count) = (
            metric_sum(&text, "tollgate_policy_reload_duration_seconds_sum"),
            metric_sum(&text, "tollgate_policy_reload_duration_seconds_count"),
        );
        let window = window_with_writes(options, server, &workload, load, files).await?;
        if metric_sum(
            &server.metrics_text()?,
            "tollgate_policy_reload_duration_seconds_count",
        ) > count
        {
            published_in_window += 1;
        }
        during.push(window.p99_us);
        let stalls = window.stalls(late_us);
        eprintln!(
            "rebuild round {round}: {}",
            window.describe(late_us, &stalls)
        );
        let writes_at = window.writes_at_ms;
        let longest = stalls.iter().max_by_key(|(b, e, _)| e - b);
        longest_stall.push(longest.map_or(0.0, |(b, e, _)| (e - b) as f64 / 1e3));
        stall_after.push(longest.map_or(0.0, |(b, _, _)| *b as f64 / 1e3 - writes_at));
        // The reload is done when its duration is recorded.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let text = server.metrics_text()?;
            let (s, c) = (
                metric_sum(&text, "tollgate_policy_reload_duration_seconds_sum"),
                metric_sum(&text, "tollgate_policy_reload_duration_seconds_count"),
            );
            if c > count {
                reload_ms.push((s - sum) / (c - count) * 1000.0);
                reloads.push(c - count);
                break;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the policy rebuild was not seen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(Rebuild {
        policies: options.many,
        reloads: median(reloads),
        reload_ms: median(reload_ms),
        rate: rate as f64,
        steady_p99_us: median(steady),
        during_p99_us: median(during),
        published_in_window,
        rounds: options.rounds,
        writes_only_p99_us: median(writes_only),
        longest_stall_ms: median(longest_stall),
        stall_after_writes_ms: median(stall_after),
    })
}

/// One measured window with a writer writing `files` from a quarter of the way in.
struct Window {
    p99_us: f64,
    schedule: Vec<u64>,
    interval: Duration,
    writes_at_ms: f64,
    writing_ms: f64,
}

impl Window {
    /// The stretches of answers later than `late_us` (see [`stalls`]).
    fn stalls(&self, late_us: u64) -> Vec<(u64, u64, u64)> {
        stalls(&self.schedule, self.interval, late_us)
    }

    fn describe(&self, late_us: u64, stalls: &[(u64, u64, u64)]) -> String {
        format!(
            "p99 {:.1} ms; writes from {:.0} ms for {:.0} ms; answers over {:.1} ms late: {}",
            self.p99_us / 1e3,
            self.writes_at_ms,
            self.writing_ms,
            late_us as f64 / 1e3,
            stalls
                .iter()
                .map(|(b, e, w)| format!(
                    "{:.0}-{:.0} ms (worst {:.1} ms)",
                    *b as f64 / 1e3,
                    *e as f64 / 1e3,
                    *w as f64 / 1e3
                ))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// The writer stands for a process elsewhere (a controller, a configuration sync): the files
/// are rendered before the window and written at the lowest priority, so that its CPU on these
/// two shared cores is not charged to the checks.
async fn window_with_writes(
    options: &Options,
    server: &Server,
    workload: &Arc<Workload>,
    load: Load,
    files: Vec<(std::path::PathBuf, String)>,
) -> anyhow::Result<Window> {
    let delay = options.duration / 4;
    let writer = std::thread::spawn(move || {
        tollgate::priority::nice_for_current_thread("the bench's writer");
        std::thread::sleep(delay);
        let began = std::time::Instant::now();
        write_files(&files).map(|()| (began, began.elapsed()))
    });
    let window = std::time::Instant::now();
    let m = measure(Protocol::Grpc, server, workload, load, options.duration).await?;
    let (began, writing) = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the policy writer panicked"))??;
    Ok(Window {
        p99_us: m.outcome.latency.value_at_quantile(0.99) as f64,
        schedule: m.outcome.schedule,
        interval: m.outcome.interval,
        writes_at_ms: began.duration_since(window).as_secs_f64() * 1e3,
        writing_ms: writing.as_secs_f64() * 1e3,
    })
}

/// A target's name, the figure measured, and whether it was met (`None`: a figure reported,
/// with no bound to meet).
pub type Target = (String, String, Option<bool>);

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "not met",
        None => "reported",
    }
}

impl Report {
    fn row(&self, prefix: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.name.starts_with(prefix))
    }

    fn envoy_row(&self, name: &str) -> Option<&EnvoyRow> {
        self.envoy.iter().find(|r| r.name == name)
    }

    /// Envoy with the ext_authz row `name` against Envoy with a trivial-allow ext_authz:
    /// throughput at least `min` times the baseline.
    fn envoy_ratio(&self, name: &str, min: f64, token: &str) -> Option<Target> {
        let (t, base) = (
            self.envoy_row(name)?,
            self.envoy_row("ext_authz -> trivial allow")?,
        );
        let ratio = t.rate / base.rate;
        Some((
            format!("Envoy + ext_authz(tollgate) >= {min} x Envoy + ext_authz(trivial), {token}"),
            format!("{:.0} vs {:.0} req/s: {ratio:.2}x", t.rate, base.rate),
            Some(ratio >= min),
        ))
    }

    /// Every target with its measured figure and ratio.
    pub fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        if let Some(a) = self.row("(a)") {
            let ratio = a.rate / a.baseline_rate;
            out.push((
                "Cache-hit Check throughput >= 0.9 x trivial-allow baseline".into(),
                format!("{:.0} vs {:.0} req/s: {ratio:.2}x", a.rate, a.baseline_rate),
                Some(ratio >= 0.9),
            ));
            out.push((
                "Server CPU per cached check <= 30 us".into(),
                format!(
                    "{:.1} us (baseline server {:.1} us)",
                    a.cpu_us, a.baseline_cpu_us
                ),
                Some(a.cpu_us <= 30.0),
            ));
        }
        if let Some(b) = self.row("(b) a fresh RS256") {
            let bound = 1.15 * (b.baseline_cpu_us + self.verify_rs256_us);
            out.push((
                "Uncached RS256 CPU <= 1.15 x (baseline CPU + one RS256 verify)".into(),
                format!(
                    "{:.1} us vs 1.15 x ({:.1} + {:.1}) = {bound:.1} us: {:.2}x of (baseline + verify)",
                    b.cpu_us,
                    b.baseline_cpu_us,
                    self.verify_rs256_us,
                    b.cpu_us / (b.baseline_cpu_us + self.verify_rs256_us)
                ),
                Some(b.cpu_us <= bound),
            ));
            out.push((
                "Server CPU per uncached RS256 check <= 70 us".into(),
                format!("{:.1} us", b.cpu_us),
                Some(b.cpu_us <= 70.0),
            ));
            if let Some(c) = self.row("(c) invalid") {
                out.push((
                    "An invalid signature costs no more CPU than a valid one".into(),
                    format!(
                        "{:.1} vs {:.1} us: {:.2}x",
                        c.cpu_us,
                        b.cpu_us,
                        c.cpu_us / b.cpu_us
                    ),
                    Some(c.cpu_us <= b.cpu_us * 1.05),
                ));
            }
            if let Some(m) = self.row("(c) malformed") {
                out.push((
                    "A malformed token costs far less than a valid one".into(),
                    format!(
                        "{:.1} vs {:.1} us: {:.2}x",
                        m.cpu_us,
                        b.cpu_us,
                        m.cpu_us / b.cpu_us
                    ),
                    Some(m.cpu_us <= b.cpu_us * 0.6),
                ));
            }
        }
        out.extend(self.envoy_ratio("ext_authz -> tollgate", 0.95, "cached token"));
        out.extend(self.envoy_ratio(crate::UNCACHED_ENVOY, 0.9, "uncached RS256"));
        if let (Some(t), Some(jwt)) = (
            self.envoy_row("ext_authz -> tollgate"),
            self.envoy_row("jwt_authn (JWT cache on)"),
        ) {
            let recovered = self
                .envoy_row("ext_authz -> tollgate, allowed_headers: [authorization]")
                .map_or(t.rate, |r| r.rate);
            out.push((
                "Gap to jwt_authn, and what the recommended Envoy settings recover (reported)"
                    .into(),
                format!(
                    "ext_authz(tollgate) {:.2}x of jwt_authn; with allowed_headers {:.2}x; routes with ext_authz disabled run at no-auth speed",
                    t.rate / jwt.rate,
                    recovered / jwt.rate
                ),
                None,
            ));
        }
        if let Some(point) = self
            .curve
            .iter()
            .find(|p| p.series == "ext_authz -> tollgate" && (p.fraction - 0.5).abs() < 1e-9)
        {
            out.push((
                "Open loop at 50% of the Envoy + tollgate maximum: p99 <= 1 ms".into(),
                format!("{:.0} req/s: p99 {:.0} us", point.rate, point.p99_us),
                Some(point.p99_us <= 1000.0),
            ));
        }
        let rss_mib = self.memory_peak_kib as f64 / 1024.0;
        out.push((
            format!(
                "{} policies + {} cached tokens: RSS <= 128 MiB",
                self.options.many, self.cache_entries
            ),
            format!(
                "peak {rss_mib:.1} MiB (idle with the policies loaded {:.1} MiB; now {:.1} MiB; cache weight {:.1} MiB)",
                self.memory_idle_kib as f64 / 1024.0,
                self.memory_kib as f64 / 1024.0,
                self.cache_weight / 1048576.0
            ),
            Some(rss_mib <= 128.0),
        ));
        let r = &self.rebuild;
        out.push((
            format!("Snapshot rebuild of {} policies <= 100 ms", r.policies),
            format!("{:.1} ms ({} reloads)", r.reload_ms, r.reloads),
            Some(r.reload_ms <= 100.0),
        ));
        out.push((
            "p99 during a rebuild within 2x of steady state".into(),
            format!(
                "{:.0} vs {:.0} us at {:.0} req/s: {:.2}x (the same writes to a folder tollgate does not watch: {:.0} us, {:.2}x; published inside the window in {} of {} rounds; {})",
                r.during_p99_us,
                r.steady_p99_us,
                r.rate,
                r.during_p99_us / r.steady_p99_us.max(1.0),
                r.writes_only_p99_us,
                r.writes_only_p99_us / r.steady_p99_us.max(1.0),
                r.published_in_window,
                r.rounds,
                if r.longest_stall_ms > 0.0 {
                    format!(
                        "longest stretch of answers over 2x the steady p99: {:.0} ms, from {:.0} ms after the writes began",
                        r.longest_stall_ms, r.stall_after_writes_ms
                    )
                } else {
                    "no stretch of answers over 2x the steady p99".into()
                }
            ),
            Some(
                r.during_p99_us <= 2.0 * r.steady_p99_us
                    && r.published_in_window == r.rounds,
            ),
        ));
        if let Some(bounded) = self.jwe.first() {
            let unbounded = self
                .jwe
                .get(1)
                .map(|u| {
                    format!(
                        "; without the bound {:.0} us ({:.1}x)",
                        u.signed_p99_flood_us,
                        u.signed_p99_flood_us / u.signed_p99_alone_us.max(1.0)
                    )
                })
                .unwrap_or_default();
            out.push((
                "A flood of fresh JWEs does not starve signed checks: their p99 within 2x".into(),
                format!(
                    "{:.0} us alone, {:.0} us during {:.0} JWE/s ({:.1}% refused 503): {:.1}x{unbounded}",
                    bounded.signed_p99_alone_us,
                    bounded.signed_p99_flood_us,
                    bounded.flood_rate,
                    bounded.overloaded * 100.0,
                    bounded.signed_p99_flood_us / bounded.signed_p99_alone_us.max(1.0)
                ),
                Some(bounded.signed_p99_flood_us <= 2.0 * bounded.signed_p99_alone_us),
            ));
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "## gRPC Check, {} connections x {} streams, closed loop, medians of {} rounds of {:?}\n",
            self.options.connections,
            self.options.streams,
            self.options.rounds,
            self.options.duration
        );
        let _ = writeln!(
            s,
            "| scenario | server | req/s | x baseline | server CPU us/req | baseline CPU us/req | p50 us | p99 us | cache hits | request bytes | RSS MiB |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {:.2} | {:.1} | {:.1} | {:.0} | {:.0} | {} | {} | {:.0} |",
                r.name,
                r.server,
                r.rate,
                r.rate / r.baseline_rate,
                r.cpu_us,
                r.baseline_cpu_us,
                r.p50_us,
                r.p99_us,
                r.cache_hit_ratio
                    .map_or("-".into(), |h| format!("{:.1}%", h * 100.0)),
                r.request_bytes,
                r.rss_mib
            );
        }
        let _ = writeln!(
            s,
            "\nOne RS256 decode + validation (jsonwebtoken, aws-lc-rs), in the bench process: {:.1} us (median of 2,000).\n",
            self.verify_rs256_us
        );
        if !self.jwe.is_empty() {
            let _ = writeln!(
                s,
                "## Fresh encrypted tokens (RSA-OAEP-256) flooding the server, fresh RS256 tokens measured alongside (open loop), cache off\n"
            );
            let _ = writeln!(
                s,
                "| decryption | JWE/s during the flood | refused 503 | signed req/s offered | signed p99 alone us | signed p99 during us | x |"
            );
            let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
            for r in &self.jwe {
                let _ = writeln!(
                    s,
                    "| {} | {:.0} | {:.1}% | {:.0} | {:.0} | {:.0} | {:.1} |",
                    r.server,
                    r.flood_rate,
                    r.overloaded * 100.0,
                    r.signed_rate,
                    r.signed_p99_alone_us,
                    r.signed_p99_flood_us,
                    r.signed_p99_flood_us / r.signed_p99_alone_us.max(1.0)
                );
            }
            let _ = writeln!(s);
        }
        if !self.envoy.is_empty() {
            let _ = writeln!(
                s,
                "## Through Envoy (one worker, direct response), HTTP/2, 4 connections x 16 streams\n"
            );
            let _ = writeln!(
                s,
                "| Envoy | req/s | x no auth | Envoy CPU us/req | p99 us |"
            );
            let _ = writeln!(s, "|---|---:|---:|---:|---:|");
            let none = self.envoy_row("no auth").map_or(1.0, |r| r.rate);
            for r in &self.envoy {
                let _ = writeln!(
                    s,
                    "| {} | {:.0} | {:.2} | {:.1} | {:.0} |",
                    r.name,
                    r.rate,
                    r.rate / none,
                    r.envoy_cpu_us,
                    r.p99_us
                );
            }
            let _ = writeln!(
                s,
                "\n## Open loop through Envoy (latency from when each request was due)\n"
            );
            let _ = writeln!(s, "| series | offered req/s | p50 us | p99 us | p99.9 us |");
            let _ = writeln!(s, "|---|---:|---:|---:|---:|");
            for p in &self.curve {
                let _ = writeln!(
                    s,
                    "| {} | {:.0} ({:.0}%) | {:.0} | {:.0} | {:.0} |",
                    p.series,
                    p.rate,
                    p.fraction * 100.0,
                    p.p50_us,
                    p.p99_us,
                    p.p999_us
                );
            }
        }
        let _ = writeln!(s, "\n## Targets\n");
        let _ = writeln!(s, "| target | measured | |");
        let _ = writeln!(s, "|---|---|---|");
        for (target, measured, met) in self.targets() {
            let _ = writeln!(s, "| {target} | {measured} | {} |", verdict(met));
        }
        s
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(dir.join("report.md"), self.markdown())?;
        std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(self)?)?;
        if !self.curve.is_empty() {
            crate::chart::chart(&self.curve, &dir.join("latency.png"), ENVOY_CHART)?;
        }
        Ok(())
    }
}

//! The peers report: one table per scenario, every figure also as a ratio to tollgate on the same
//! path (direct, through Envoy, through nginx), the issue-18 targets with their measured ratios,
//! and the versions of everything that ran. Written as report.md and report.json.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

use crate::Via;
use crate::chart::{CurvePoint, chart};

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub via: Via,
    pub peer: String,
    /// The process the generator talked to.
    pub server: String,
    /// The answer every request of the scenario got from this path (checked on each).
    pub answer: String,
    /// Closed-loop maximum, req/s (median of rounds).
    pub rate: f64,
    /// CPU of the process that judges (for jwt_authn: Envoy), µs per check.
    pub auth_cpu_us: f64,
    /// CPU of the proxy in front (Envoy, nginx), µs per check.
    pub proxy_cpu_us: Option<f64>,
    /// The open-loop rate (half the maximum) the latencies were measured at.
    pub open_rate: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Resident memory of the judging process after the scenario.
    pub rss_mib: f64,
    /// JWKS fetches the IdP served per check during the closed loop.
    pub jwks_fetches_per_check: f64,
    pub judges: bool,
}

#[derive(Debug, Serialize)]
pub struct ScenarioReport {
    pub name: String,
    pub allow: bool,
    pub rows: Vec<Row>,
    /// Latency against offered load, per path (only for the scenarios that draw it), with the
    /// answers that failed at that load (above half the maximum a proxy may fail closed).
    pub curve: Vec<(u64, Via, CurvePoint)>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub options: String,
    pub quick: bool,
    pub versions: Vec<(String, String)>,
    /// What the tables count and how a peer is configured, where that needs saying.
    pub notes: Vec<String>,
    pub skipped: Vec<String>,
    pub idp_issuer: String,
    pub scenarios: Vec<ScenarioReport>,
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The first line a command prints (stdout, else stderr).
fn first_line(binary: &Path, args: &[&str]) -> String {
    Command::new(binary)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// The version a pinned module's go.mod requires.
fn pinned(module: &str, path: &str) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(module)
        .join("go.mod");
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            let first = words.next()?;
            let (name, version) = if first == "require" {
                (words.next()?, words.next()?)
            } else {
                (first, words.next()?)
            };
            (name == path).then(|| version.to_string())
        })
        .unwrap_or_else(|| "?".into())
}

/// `authorino`: the binary and the version of the API server holding its AuthConfigs.
pub fn versions(
    opa: Option<&Path>,
    authorino: Option<(&Path, &str)>,
    oauth2_proxy: Option<&Path>,
    envoy: Option<&Path>,
    nginx: Option<&Path>,
) -> Vec<(String, String)> {
    let mut out = vec![(
        "tollgate".to_string(),
        format!("{} (release build of this tree)", env!("CARGO_PKG_VERSION")),
    )];
    if let Some(bin) = opa {
        out.push((
            "OPA-Envoy".into(),
            format!(
                "opa-envoy-plugin {} with OPA {} ({})",
                pinned("opa-envoy", "github.com/open-policy-agent/opa-envoy-plugin"),
                pinned("opa-envoy", "github.com/open-policy-agent/opa"),
                bin.display()
            ),
        ));
    }
    if let Some((bin, kube)) = authorino {
        out.push((
            "Authorino".into(),
            format!(
                "{} ({}); AuthConfigs on kube-apiserver {kube} with etcd (not counted)",
                pinned("authorino", "github.com/kuadrant/authorino"),
                bin.display()
            ),
        ));
    }
    if let Some(bin) = oauth2_proxy {
        out.push((
            "oauth2-proxy".into(),
            format!(
                "{} ({})",
                pinned("oauth2-proxy", "github.com/oauth2-proxy/oauth2-proxy/v7"),
                bin.display()
            ),
        ));
    }
    if let Some(bin) = envoy {
        out.push(("Envoy".into(), first_line(bin, &["--version"])));
    }
    if let Some(bin) = nginx {
        out.push(("nginx".into(), first_line(bin, &["-v"])));
    }
    out
}

fn ratio(value: f64, reference: Option<f64>) -> String {
    match reference {
        Some(r) if r > 0.0 => format!("{:.2}", value / r),
        _ => "-".into(),
    }
}

impl ScenarioReport {
    /// tollgate's row on the same path.
    fn tollgate(&self, via: Via) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.via == via && r.peer == "tollgate")
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("### {}\n\n", self.name);
        out.push_str(
            "| path | peer | answer | req/s | x tollgate | judge CPU us/check | x tollgate | proxy CPU us/check | p50 us | p99 us | at req/s | RSS MiB | x tollgate | JWKS fetches/check |\n\
             |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in &self.rows {
            let t = self.tollgate(r.via);
            out.push_str(&format!(
                "| {} | {} | {} | {:.0} | {} | {:.1} | {} | {} | {} | {} | {} | {:.0} | {} | {} |\n",
                r.via.label(),
                r.peer,
                r.answer,
                r.rate,
                ratio(r.rate, t.map(|t| t.rate)),
                r.auth_cpu_us,
                ratio(r.auth_cpu_us, t.map(|t| t.auth_cpu_us)),
                r.proxy_cpu_us.map_or("-".into(), |c| format!("{c:.1}")),
                r.p50_us,
                r.p99_us,
                r.open_rate,
                r.rss_mib,
                ratio(r.rss_mib, t.map(|t| t.rss_mib)),
                if r.jwks_fetches_per_check > 0.0 {
                    format!("{:.3}", r.jwks_fetches_per_check)
                } else {
                    "0".into()
                },
            ));
        }
        out
    }
}

/// One issue-18 target: the peer's CPU per check over tollgate's, on one path.
struct Target {
    scenario: String,
    via: Via,
    peer: String,
    /// Peer CPU per check / tollgate CPU per check (= tollgate's checks per CPU second over
    /// the peer's).
    ratio: f64,
    /// What issue 18 asks: 3x Authorino and OPA-Envoy, 2x oauth2-proxy through nginx.
    needed: f64,
}

impl Report {
    fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        for s in &self.scenarios {
            for r in &s.rows {
                let needed = match (r.via, r.peer.as_str()) {
                    (Via::Direct | Via::Envoy, "OPA-Envoy" | "Authorino") => 3.0,
                    (Via::Nginx, "oauth2-proxy") => 2.0,
                    _ => continue,
                };
                let Some(t) = s.tollgate(r.via) else { continue };
                if t.auth_cpu_us <= 0.0 {
                    continue;
                }
                out.push(Target {
                    scenario: s.name.clone(),
                    via: r.via,
                    peer: r.peer.clone(),
                    ratio: r.auth_cpu_us / t.auth_cpu_us,
                    needed,
                });
            }
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = String::from("## tollgate and its peers, side by side\n\n");
        out.push_str(&format!(
            "One run{}; IdP issuer `{}`. Ratios are to tollgate on the same path.\n\n",
            if self.quick { " (--quick)" } else { "" },
            self.idp_issuer
        ));
        out.push_str("| component | version |\n|---|---|\n");
        for (name, version) in &self.versions {
            out.push_str(&format!("| {name} | {version} |\n"));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                out.push_str(&format!("- {note}\n"));
            }
        }
        if !self.skipped.is_empty() {
            out.push_str(&format!("\nLeft out: {}\n", self.skipped.join("; ")));
        }
        out.push('\n');
        for s in &self.scenarios {
            out.push_str(&s.markdown());
            out.push('\n');
        }
        for s in self.scenarios.iter().filter(|s| !s.curve.is_empty()) {
            out.push_str(&format!(
                "### Latency against offered load: {} (open loop, fractions of each path's own maximum)\n\n\
                 | path | peer | fraction | offered req/s | p50 us | p99 us | p99.9 us | failed answers |\n|---|---|---:|---:|---:|---:|---:|---:|\n",
                s.name
            ));
            for (failed, via, p) in &s.curve {
                out.push_str(&format!(
                    "| {} | {} | {:.0}% | {:.0} | {:.0} | {:.0} | {:.0} | {failed} |\n",
                    via.label(),
                    p.series,
                    p.fraction * 100.0,
                    p.rate,
                    p.p50_us,
                    p.p99_us,
                    p.p999_us
                ));
            }
            out.push('\n');
        }
        out.push_str("### Issue-18 targets (tollgate's checks per CPU second of the judging process, over the peer's)\n\n");
        out.push_str(
            "| scenario | path | peer | measured | needed | |\n|---|---|---|---:|---:|---|\n",
        );
        for t in self.targets() {
            out.push_str(&format!(
                "| {} | {} | {} | {:.2}x | {:.0}x | {} |\n",
                t.scenario,
                t.via.label(),
                t.peer,
                t.ratio,
                t.needed,
                if t.ratio >= t.needed {
                    "met"
                } else {
                    "not met"
                }
            ));
        }
        out
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(self)?)?;
        for s in self.scenarios.iter().filter(|s| !s.curve.is_empty()) {
            for (via, file) in [
                (Via::Direct, "latency-direct.png"),
                (Via::Envoy, "latency-envoy.png"),
                (Via::Nginx, "latency-nginx.png"),
            ] {
                let points: Vec<CurvePoint> = s
                    .curve
                    .iter()
                    .filter(|(_, v, _)| *v == via)
                    .map(|(_, _, p)| p.clone())
                    .collect();
                if !points.is_empty() {
                    let title = format!("p99 against offered load, {}: {}", via.label(), s.name);
                    chart(&points, &dir.join(file), &title)?;
                }
            }
        }
        Ok(())
    }
}

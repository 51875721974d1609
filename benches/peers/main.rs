//! tollgate side by side with what users would pick instead, in one run, on the same tokens from
//! the same IdP (issue 18): OPA-Envoy (a Rego policy with `io.jwt.decode_verify`) and Authorino
//! (one AuthConfig per host, read from a real API server) on their gRPC ext_authz, direct and
//! through the same Envoy (one worker); oauth2-proxy with bearer tokens and
//! tollgate's HTTP forward auth behind the same nginx `auth_request`; Envoy's own `jwt_authn` and
//! the trivial allow-all ext_authz server as in the load bench.
//!
//! ```text
//! bash benches/peers/build.sh                  # builds the pinned peers once (minutes)
//! cargo bench --bench peers                    # the full run
//! cargo bench --bench peers -- --quick         # one round of 2 s per measurement
//! cargo bench --bench peers -- --only ES256    # the scenarios whose name contains this
//! cargo bench --bench peers -- --peers authorino   # only these peers (opa-envoy, authorino,
//!                                                  # oauth2-proxy; comma-separated)
//! ```
//!
//! Under `cargo bench` a peer that is asked for (all by default) and not built fails the run.
//! Under `cargo test` it runs a short smoke pass of every path whose binaries are there (so that
//! the harness itself stays tested in CI, where the peers are not built) and says which it left
//! out; nothing is timed there. Authorino also needs the control plane tests/run.sh builds
//! (`TOLLGATE_KUBE_APISERVER`, `TOLLGATE_ETCD`, `TOLLGATE_KUBECTL`). Writes `report.md` and
//! `report.json` to `target/tollgate-bench/peers/` (or `$TOLLGATE_BENCH_OUT/peers`). See
//! docs/benchmarks.md.

#[allow(dead_code)]
mod authorino;
#[path = "../load/chart.rs"]
mod chart;
#[allow(dead_code)]
#[path = "../load/envoy.rs"]
mod envoy;
#[allow(dead_code)]
#[path = "../load/generator.rs"]
mod generator;
mod idp;
mod peers;
mod probe;
mod report;
#[allow(dead_code)]
#[path = "../load/servers.rs"]
mod servers;
#[allow(dead_code)]
#[path = "../load/workload.rs"]
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use generator::{Expect, Load, Prepared, Protocol, Workload};
use idp::BenchIdp;
use report::{Report, Row, ScenarioReport};
use servers::Server;

/// How big the run is, and what it runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub smoke: bool,
    pub quick: bool,
    /// Each closed-loop and each open-loop measurement.
    pub duration: Duration,
    /// Closed-loop rounds (the median is reported); the open-loop run is done once.
    pub rounds: usize,
    /// Hosts (policies) of the many-hosts scenario.
    pub many: usize,
    /// Distinct tokens of the fresh-token scenarios.
    pub pool: usize,
    pub out: PathBuf,
    pub only: Option<String>,
    pub opa: bool,
    pub authorino: bool,
    pub oauth2_proxy: bool,
}

impl Options {
    fn from_args(args: &[String]) -> anyhow::Result<Options> {
        let measure = args.iter().any(|a| a == "--bench");
        let quick = args.iter().any(|a| a == "--quick");
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let out = std::env::var_os("TOLLGATE_BENCH_OUT")
            .map_or_else(
                || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tollgate-bench"),
                PathBuf::from,
            )
            .join("peers");
        let (opa, authorino, oauth2_proxy) = match value("--peers") {
            None => (true, true, true),
            Some(list) => {
                let names: Vec<&str> = list.split(',').map(str::trim).collect();
                for name in &names {
                    anyhow::ensure!(
                        matches!(*name, "opa-envoy" | "authorino" | "oauth2-proxy"),
                        "--peers: unknown peer {name:?} (opa-envoy, authorino, oauth2-proxy)"
                    );
                }
                (
                    names.contains(&"opa-envoy"),
                    names.contains(&"authorino"),
                    names.contains(&"oauth2-proxy"),
                )
            }
        };
        Ok(if measure {
            Options {
                smoke: false,
                quick,
                duration: Duration::from_secs(if quick { 2 } else { 4 }),
                rounds: if quick { 1 } else { 2 },
                many: 1000,
                pool: 256,
                out,
                only: value("--only"),
                opa,
                authorino,
                oauth2_proxy,
            }
        } else {
            Options {
                smoke: true,
                quick: true,
                duration: Duration::from_millis(300),
                rounds: 1,
                many: 20,
                pool: 8,
                out: out.join("smoke"),
                only: value("--only"),
                opa,
                authorino,
                oauth2_proxy,
            }
        })
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
    let options = match Options::from_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("peers bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
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
    match runtime.block_on(run(options.clone())) {
        Ok(report) => {
            if options.smoke {
                println!(
                    "peers bench: smoke pass ok ({} measurements, every answer checked){}; run `cargo bench --bench peers` to measure",
                    report.scenarios.iter().map(|s| s.rows.len()).sum::<usize>(),
                    if report.skipped.is_empty() {
                        String::new()
                    } else {
                        format!("; left out: {}", report.skipped.join("; "))
                    }
                );
            } else {
                println!("{}", report.markdown());
                println!("written to {}", options.out.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("peers bench FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How a request reaches the server that judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Via {
    /// gRPC `Check` straight to the ext_authz server.
    Direct,
    /// HTTP/2 through Envoy (one worker), ext_authz over gRPC or its own filter.
    Envoy,
    /// HTTP/2 through nginx (one worker process), `auth_request` over HTTP/1.1.
    Nginx,
}

impl Via {
    pub fn label(self) -> &'static str {
        match self {
            Via::Direct => "direct gRPC Check",
            Via::Envoy => "through Envoy",
            Via::Nginx => "through nginx auth_request",
        }
    }

    fn protocol(self) -> Protocol {
        match self {
            Via::Direct => Protocol::Grpc,
            Via::Envoy | Via::Nginx => Protocol::Http2,
        }
    }

    fn connections(self) -> usize {
        match self {
            Via::Direct => 2,
            Via::Envoy | Via::Nginx => 4,
        }
    }
}

/// One way of judging a request: the server the generator talks to, the process that judges
/// (its CPU and memory are the peer's), and the proxy in between (its CPU is reported apart).
struct Target {
    via: Via,
    peer: &'static str,
    /// Index into the run's servers.
    front: usize,
    auth: usize,
    proxy: Option<usize>,
    /// False for the trivial allow-all server, which answers allow without looking.
    judges: bool,
    /// Whether the forwarded user can be seen in the answer (gRPC and nginx: yes; Envoy's
    /// direct response: no).
    shows_user: bool,
}

/// One scenario: requests (all with the same expected decision), and whether the peers with
/// their token caches on or off judge it.
struct Scenario {
    name: &'static str,
    cached: bool,
    allow: bool,
    requests: Vec<Prepared>,
    /// The subject each request's token carries (the same order).
    subjects: Vec<Option<String>>,
    /// Latency against offered load too (open loop at 10 % … 90 % of each path's maximum).
    curve: bool,
}

/// The run's processes, by role.
#[derive(Default)]
struct Roles {
    baseline: usize,
    tollgate: [usize; 2],
    opa: Option<[usize; 2]>,
    authorino: Option<[usize; 2]>,
    oauth2_proxy: Option<usize>,
    envoy_jwt: Option<[usize; 2]>,
    envoy_baseline: Option<usize>,
    envoy_tollgate: Option<[usize; 2]>,
    envoy_opa: Option<[usize; 2]>,
    envoy_authorino: Option<[usize; 2]>,
    nginx_tollgate: Option<[usize; 2]>,
    nginx_oauth2_proxy: Option<usize>,
}

impl Roles {
    /// The targets of a scenario: `c` picks the cache-on (0) or cache-off (1) instance.
    fn targets(&self, cached: bool) -> Vec<Target> {
        let c = usize::from(!cached);
        let t = |via, peer, front, auth, proxy, judges| Target {
            via,
            peer,
            front,
            auth,
            proxy,
            judges,
            shows_user: via != Via::Envoy,
        };
        let mut out = vec![
            t(
                Via::Direct,
                "trivial allow",
                self.baseline,
                self.baseline,
                None,
                false,
            ),
            t(
                Via::Direct,
                "tollgate",
                self.tollgate[c],
                self.tollgate[c],
                None,
                true,
            ),
        ];
        if let Some(opa) = self.opa {
            out.push(t(Via::Direct, "OPA-Envoy", opa[c], opa[c], None, true));
        }
        if let Some(a) = self.authorino {
            out.push(t(Via::Direct, "Authorino", a[c], a[c], None, true));
        }
        if let Some(e) = self.envoy_baseline {
            out.push(t(
                Via::Envoy,
                "trivial allow",
                e,
                self.baseline,
                Some(e),
                false,
            ));
        }
        if let Some(e) = self.envoy_tollgate {
            out.push(t(
                Via::Envoy,
                "tollgate",
                e[c],
                self.tollgate[c],
                Some(e[c]),
                true,
            ));
        }
        if let (Some(e), Some(opa)) = (self.envoy_opa, self.opa) {
            out.push(t(Via::Envoy, "OPA-Envoy", e[c], opa[c], Some(e[c]), true));
        }
        if let (Some(e), Some(a)) = (self.envoy_authorino, self.authorino) {
            out.push(t(Via::Envoy, "Authorino", e[c], a[c], Some(e[c]), true));
        }
        if let Some(e) = self.envoy_jwt {
            // In-process: Envoy is both the proxy and the judge.
            out.push(t(Via::Envoy, "Envoy jwt_authn", e[c], e[c], None, true));
        }
        if let Some(n) = self.nginx_tollgate {
            out.push(t(
                Via::Nginx,
                "tollgate",
                n[c],
                self.tollgate[c],
                Some(n[c]),
                true,
            ));
        }
        if let (Some(n), Some(o)) = (self.nginx_oauth2_proxy, self.oauth2_proxy) {
            out.push(t(Via::Nginx, "oauth2-proxy", n, o, Some(n), true));
        }
        out
    }
}

const PATH: &str = "/orders/1";

fn request(host: &str, token: &str, n: u64) -> Prepared {
    workload::check(host, PATH, Some(token), n, Expect::Allow)
}

fn scenarios(idp: &BenchIdp, options: &Options) -> anyhow::Result<Vec<Scenario>> {
    use workload::HOST;
    let rs = idp.mint(&idp.rs256, options.pool, 0)?;
    let es = idp.mint(&idp.es256, options.pool, 100_000)?;
    let one = idp.rs256.mint(&idp.claims(7))?;
    let subject = |n: u64| Some(BenchIdp::subject(n));
    let pool = options.pool as u64;
    let all = vec![
        Scenario {
            name: "a cached token repeated (RS256)",
            cached: true,
            allow: true,
            requests: vec![request(HOST, &one, 7)],
            subjects: vec![subject(7)],
            curve: true,
        },
        Scenario {
            name: "a fresh RS256 token per request",
            cached: false,
            allow: true,
            requests: rs
                .iter()
                .enumerate()
                .map(|(i, t)| request(HOST, t, i as u64))
                .collect(),
            subjects: (0..pool).map(subject).collect(),
            curve: false,
        },
        Scenario {
            name: "a fresh ES256 token per request",
            cached: false,
            allow: true,
            requests: es
                .iter()
                .enumerate()
                .map(|(i, t)| request(HOST, t, i as u64))
                .collect(),
            subjects: (0..pool).map(|n| subject(100_000 + n)).collect(),
            curve: false,
        },
        Scenario {
            name: "an invalid RS256 signature",
            cached: true,
            allow: false,
            requests: rs
                .iter()
                .enumerate()
                .map(|(i, t)| request(HOST, &workload::bad_signature(t), i as u64))
                .collect(),
            subjects: vec![None; options.pool],
            curve: false,
        },
        Scenario {
            name: "a malformed token",
            cached: true,
            allow: false,
            requests: (0..pool)
                .map(|i| request(HOST, &format!("not-a-jwt-{i}"), i))
                .collect(),
            subjects: vec![None; options.pool],
            curve: false,
        },
        Scenario {
            name: "1,000 hosts (policies), a random host, a cached token",
            cached: true,
            allow: true,
            requests: (0..options.many)
                .map(|i| request(&workload::many_host(i), &one, i as u64))
                .collect(),
            subjects: vec![subject(7); options.many],
            curve: false,
        },
    ];
    Ok(all
        .into_iter()
        .filter(|s| options.only.as_ref().is_none_or(|o| s.name.contains(o)))
        .collect())
}

/// Finds a peer's binary: under `cargo bench` a missing one is an error, under `cargo test` it
/// is left out with a note.
fn find(
    peer: &peers::GoPeer,
    wanted: bool,
    options: &Options,
    skipped: &mut Vec<String>,
) -> anyhow::Result<Option<PathBuf>> {
    if !wanted {
        skipped.push(format!("{} (not asked for)", peer.name));
        return Ok(None);
    }
    match peer.find() {
        Ok(path) => Ok(Some(path)),
        Err(e) if options.smoke => {
            skipped.push(format!("{e:#}"));
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

async fn run(options: Options) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&options.out)?;
    let mut skipped = Vec::new();
    let opa_bin = find(&peers::OPA_ENVOY, options.opa, &options, &mut skipped)?;
    let authorino_bin = match find(&peers::AUTHORINO, options.authorino, &options, &mut skipped)? {
        Some(bin) => match peers::kube_binaries() {
            Ok(kube) => Some((bin, kube)),
            Err(e) if options.smoke => {
                skipped.push(format!("{e:#}"));
                None
            }
            Err(e) => return Err(e),
        },
        None => None,
    };
    let oauth2_bin = find(
        &peers::OAUTH2_PROXY,
        options.oauth2_proxy,
        &options,
        &mut skipped,
    )?;
    let envoy_bin = servers::envoy_binary();
    let nginx_bin = peers::nginx_binary();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    for (name, found, how) in [
        ("Envoy", envoy_bin.is_some(), "TOLLGATE_ENVOY"),
        ("nginx", nginx_bin.is_some(), "TOLLGATE_NGINX"),
    ] {
        if !found {
            anyhow::ensure!(
                options.smoke && !ci,
                "{name} is missing: set {how} (tests/run.sh installs it)"
            );
            skipped.push(format!("{name}: set {how}"));
        }
    }

    let idp = BenchIdp::start().await?;
    // Every configuration and log stays in `work/` after the run, to read after a failure.
    let work = options.out.join("work");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let policies = work.join("policies");
    std::fs::create_dir_all(&policies)?;
    peers::write_tollgate_policies(&policies, &idp, options.many)?;
    // Authorino's control plane and AuthConfigs take a while (about a minute for 2 x 1,001
    // AuthConfigs, whose statuses it writes at 20 per second): started first, in the background,
    // while the IdP keeps answering its discovery requests on this runtime.
    let authorino_path = authorino_bin.as_ref().map(|(bin, _)| bin.clone());
    let authorino_start = authorino_bin.map(|(bin, kube)| {
        let (work, issuer, many) = (work.clone(), idp.issuer(), options.many);
        tokio::task::spawn_blocking(move || peers::authorino(&bin, kube, &work, &issuer, many))
    });

    let mut procs: Vec<Server> = Vec::new();
    let mut roles = Roles {
        baseline: add(&mut procs, servers::baseline()?),
        ..Roles::default()
    };
    roles.tollgate = [
        add(&mut procs, peers::tollgate("tollgate", &policies, true)?),
        add(
            &mut procs,
            peers::tollgate("tollgate (cache off)", &policies, false)?,
        ),
    ];
    if let Some(bin) = &opa_bin {
        roles.opa = Some([
            add(
                &mut procs,
                peers::opa_envoy(bin, "OPA-Envoy", &work, &idp, options.many, true)?,
            ),
            add(
                &mut procs,
                peers::opa_envoy(
                    bin,
                    "OPA-Envoy (cache off)",
                    &work,
                    &idp,
                    options.many,
                    false,
                )?,
            ),
        ]);
    }
    if let Some(bin) = &oauth2_bin {
        roles.oauth2_proxy = Some(add(&mut procs, peers::oauth2_proxy(bin, &work, &idp)?));
    }
    // Kept until the end of the run: Authorino's AuthConfigs live there. Declared after
    // `procs`, so dropped before them on an early return (Authorino is then killed without
    // its API server, which is harmless).
    let mut control_plane = None;
    if let Some(start) = authorino_start {
        let (plane, [cached, uncached]) = start.await.context("starting Authorino")??;
        eprintln!(
            "Authorino {} ready ({} AuthConfigs in each of 2 namespaces)",
            plane.version,
            options.many + 1
        );
        roles.authorino = Some([add(&mut procs, cached), add(&mut procs, uncached)]);
        control_plane = Some(plane);
    }
    let jwks = idp.jwks();
    let issuer = idp.issuer();
    if let Some(bin) = &envoy_bin {
        let envoy = |name: &str, auth: envoy::Auth<'_>| -> anyhow::Result<Server> {
            let (listen, admin) = (servers::free_port()?, servers::free_port()?);
            let config = envoy::config(listen, admin, &auth);
            servers::envoy(bin, name, &config, &work, listen, admin)
        };
        let ext = |i: usize, procs: &[Server]| envoy::Auth::ExtAuthz {
            server: procs[i].addr,
            allowed_headers: None,
        };
        let jwt = |cache| envoy::Auth::JwtAuthn {
            jwks: &jwks,
            issuer: &issuer,
            cache,
        };
        let e = [
            envoy("jwt_authn", jwt(true))?,
            envoy("jwt_authn, no JWT cache", jwt(false))?,
            envoy("ext_authz -> trivial allow", ext(roles.baseline, &procs))?,
            envoy("ext_authz -> tollgate", ext(roles.tollgate[0], &procs))?,
            envoy(
                "ext_authz -> tollgate (cache off)",
                ext(roles.tollgate[1], &procs),
            )?,
        ];
        let opa = match roles.opa {
            Some(opa) => Some([
                envoy("ext_authz -> OPA-Envoy", ext(opa[0], &procs))?,
                envoy("ext_authz -> OPA-Envoy (cache off)", ext(opa[1], &procs))?,
            ]),
            None => None,
        };
        let authorino = match roles.authorino {
            Some(a) => Some([
                envoy("ext_authz -> Authorino", ext(a[0], &procs))?,
                envoy("ext_authz -> Authorino (cache off)", ext(a[1], &procs))?,
            ]),
            None => None,
        };
        let [j0, j1, b, t0, t1] = e;
        roles.envoy_jwt = Some([add(&mut procs, j0), add(&mut procs, j1)]);
        roles.envoy_baseline = Some(add(&mut procs, b));
        roles.envoy_tollgate = Some([add(&mut procs, t0), add(&mut procs, t1)]);
        if let Some([o0, o1]) = opa {
            roles.envoy_opa = Some([add(&mut procs, o0), add(&mut procs, o1)]);
        }
        if let Some([a0, a1]) = authorino {
            roles.envoy_authorino = Some([add(&mut procs, a0), add(&mut procs, a1)]);
        }
    }
    if let Some(bin) = &nginx_bin {
        let http = |i: usize, procs: &[Server]| {
            procs[i]
                .http
                .context("tollgate has no HTTP listener")
                .map(peers::NginxAuth::Tollgate)
        };
        let n0 = peers::nginx(
            bin,
            "nginx -> tollgate",
            &work,
            &http(roles.tollgate[0], &procs)?,
            options.many,
        )?;
        let n1 = peers::nginx(
            bin,
            "nginx -> tollgate (cache off)",
            &work,
            &http(roles.tollgate[1], &procs)?,
            options.many,
        )?;
        roles.nginx_tollgate = Some([add(&mut procs, n0), add(&mut procs, n1)]);
        if let Some(o) = roles.oauth2_proxy {
            let auth = peers::NginxAuth::Oauth2Proxy(procs[o].addr);
            let n = peers::nginx(bin, "nginx -> oauth2-proxy", &work, &auth, options.many)?;
            roles.nginx_oauth2_proxy = Some(add(&mut procs, n));
        }
    }
    let versions = report::versions(
        opa_bin.as_deref(),
        authorino_path
            .as_deref()
            .zip(
                control_plane
                    .as_ref()
                    .map(authorino::ControlPlane::server_version),
            )
            .as_ref()
            .map(|(bin, kube)| (*bin, kube.as_str())),
        oauth2_bin.as_deref(),
        envoy_bin.as_deref(),
        nginx_bin.as_deref(),
    );

    let mut notes = Vec::new();
    if roles.authorino.is_some() {
        notes.push(format!(
            "Authorino: judge CPU and RSS are those of the `authorino server` process alone; etcd and kube-apiserver, which hold its AuthConfigs ({} per instance, one per host), are not counted.",
            options.many + 1
        ));
        notes.push(format!(
            "Authorino's cache: the instance judging the cached scenarios has its identity cache on (`authentication.idp.cache` keyed by the `Authorization` header, ttl {} s, `--evaluator-cache-size {}`: the default 1 MiB refuses entries above 1,000 bytes, and a bearer header here with its claims is 1,200 to 1,500); it keeps the verified claims, so a hit skips the signature, while the pattern-matching authorization and the response still run. freecache allocates that size whole for each of the {} AuthConfigs, which the cache-on instance's RSS shows. The fresh-token scenarios go to a second instance without it.",
            peers::AUTHORINO_CACHE.ttl,
            peers::AUTHORINO_CACHE.size_mib,
            options.many + 1
        ));
    }
    let mut report = Report {
        options: format!("{options:?}"),
        quick: options.quick,
        versions,
        notes,
        skipped,
        scenarios: Vec::new(),
        idp_issuer: idp.issuer(),
    };
    for scenario in scenarios(&idp, &options)? {
        eprintln!("== {}", scenario.name);
        let (rows, curve) = run_scenario(&scenario, &roles, &procs, &idp, &options).await?;
        report.scenarios.push(ScenarioReport {
            name: scenario.name.to_string(),
            allow: scenario.allow,
            rows,
            curve,
        });
    }
    report.write(&options.out)?;
    drop(procs);
    drop(control_plane);
    Ok(report)
}

/// Probes, warms and measures every target of one scenario.
async fn run_scenario(
    scenario: &Scenario,
    roles: &Roles,
    procs: &[Server],
    idp: &BenchIdp,
    options: &Options,
) -> anyhow::Result<(Vec<Row>, Vec<(u64, Via, chart::CurvePoint)>)> {
    struct Ready {
        target: Target,
        answer: probe::Answer,
        workload: Arc<Workload>,
        rates: Vec<f64>,
        auth_cpu: Vec<f64>,
        proxy_cpu: Vec<f64>,
        fetches: Vec<f64>,
    }
    let mut ready = Vec::new();
    for target in roles.targets(scenario.cached) {
        let front = &procs[target.front];
        let protocol = target.via.protocol();
        let answer = probe::probe(protocol, front.addr, &scenario.requests[0])
            .await
            .with_context(|| format!("{} {}", target.via.label(), target.peer))?;
        let what = format!(
            "{}, {} ({}), {}",
            target.via.label(),
            target.peer,
            front.name,
            scenario.name
        );
        if target.judges {
            anyhow::ensure!(
                answer.allowed() == scenario.allow,
                "{what}: answered {} where the scenario expects {}",
                answer.text,
                if scenario.allow { "an allow" } else { "a deny" }
            );
            // A deny is a deny: a refusal of the token (401 or 403), not an error or a 404
            // (an unknown host) that a proxy could treat otherwise.
            if !scenario.allow {
                anyhow::ensure!(
                    match answer.expect {
                        Expect::Deny { grpc, http } => grpc != 0 && matches!(http, 401 | 403),
                        Expect::Status(status) => matches!(status, 401 | 403),
                        Expect::Allow | Expect::AllowOrOverloaded => false,
                    },
                    "{what}: answered {}, not a denial with 401 or 403",
                    answer.text
                );
            }
            if scenario.allow && target.shows_user {
                anyhow::ensure!(
                    answer.user == scenario.subjects[0],
                    "{what}: forwarded x-user-id {:?}, the token's sub is {:?}",
                    answer.user,
                    scenario.subjects[0]
                );
            }
        } else {
            anyhow::ensure!(answer.allowed(), "{what}: the trivial server denied");
        }
        let requests: Vec<Prepared> = scenario
            .requests
            .iter()
            .map(|r| Prepared {
                expect: answer.expect,
                ..r.clone()
            })
            .collect();
        // Warm-up: every request once, in order (fills the caches that may serve them).
        let warm = Arc::new(Workload {
            requests: requests.clone(),
            sequential: true,
            limit: Some(requests.len() as u64),
        });
        let outcome = generator::run(
            protocol,
            front.addr,
            warm,
            Load::Closed {
                connections: 1,
                streams: 8,
            },
            Duration::from_secs(600),
        )
        .await?;
        anyhow::ensure!(
            outcome.wrong == 0 && outcome.errors == 0,
            "{what}: warm-up: {}",
            outcome.first_wrong.unwrap_or_default()
        );
        ready.push(Ready {
            target,
            answer,
            workload: Arc::new(Workload::new(requests)),
            rates: Vec::new(),
            auth_cpu: Vec::new(),
            proxy_cpu: Vec::new(),
            fetches: Vec::new(),
        });
    }
    // Closed loop, round by round over every target: the maximum and its CPU cost.
    for _ in 0..options.rounds {
        for r in &mut ready {
            let front = &procs[r.target.front];
            let auth = &procs[r.target.auth];
            let proxy = r.target.proxy.map(|p| &procs[p]);
            let load = Load::Closed {
                connections: r.target.via.connections(),
                streams: 16,
            };
            let fetches = idp.server.jwks_fetches();
            let (auth_before, proxy_before) =
                (auth.usage()?, proxy.map(Server::usage).transpose()?);
            let outcome = generator::run(
                r.target.via.protocol(),
                front.addr,
                r.workload.clone(),
                load,
                options.duration,
            )
            .await?;
            let (auth_after, proxy_after) = (auth.usage()?, proxy.map(Server::usage).transpose()?);
            anyhow::ensure!(
                outcome.wrong == 0 && outcome.errors == 0,
                "{} {} ({}): {} wrong answers, {} errors of {}: {} {}",
                r.target.via.label(),
                r.target.peer,
                front.name,
                outcome.wrong,
                outcome.errors,
                outcome.sent,
                outcome.first_wrong.as_deref().unwrap_or(""),
                front.envoy_stats()
            );
            let sent = outcome.sent.max(1) as f64;
            r.rates.push(outcome.rate());
            r.auth_cpu
                .push(auth_after.cpu.saturating_sub(auth_before.cpu).as_secs_f64() * 1e6 / sent);
            if let (Some(b), Some(a)) = (proxy_before, proxy_after) {
                r.proxy_cpu
                    .push(a.cpu.saturating_sub(b.cpu).as_secs_f64() * 1e6 / sent);
            }
            r.fetches
                .push((idp.server.jwks_fetches() - fetches) as f64 / sent);
        }
    }
    // Open loop at half of each target's own maximum: the latency (and, for a curve, at more
    // fractions of it).
    let fractions: &[f64] = if scenario.curve {
        &[0.1, 0.25, 0.5, 0.75, 0.9]
    } else {
        &[0.5]
    };
    let mut rows = Vec::new();
    let mut curve = Vec::new();
    for r in ready {
        let front = &procs[r.target.front];
        let auth = &procs[r.target.auth];
        let max = report::median(r.rates.clone());
        let mut half = None;
        for &fraction in fractions {
            let rate = ((max * fraction) as u64).max(20);
            let outcome = generator::run(
                r.target.via.protocol(),
                front.addr,
                r.workload.clone(),
                Load::Open {
                    connections: r.target.via.connections(),
                    rate,
                },
                options.duration,
            )
            .await?;
            // At half the maximum every answer must be right. Above it a proxy may fail closed
            // once the peer falls behind (Envoy: 403 after the ext_authz timeout of 2 s; nginx:
            // 500): such answers are counted in the curve's point, not hidden, and do not stop
            // the run. Only where an allow is expected: there a wrong answer is a denial or an
            // error, never a wrong allow.
            let failed = outcome.wrong + outcome.errors;
            anyhow::ensure!(
                failed == 0 || (fraction > 0.5 && scenario.allow),
                "open loop at {rate} req/s, {} {}: {}",
                r.target.via.label(),
                r.target.peer,
                outcome.first_wrong.as_deref().unwrap_or("")
            );
            if failed > 0 {
                eprintln!(
                    "open loop at {rate} req/s ({:.0}% of the maximum), {} {}: {failed} of {} answers failed: {}",
                    fraction * 100.0,
                    r.target.via.label(),
                    r.target.peer,
                    outcome.sent,
                    outcome.first_wrong.as_deref().unwrap_or("")
                );
            }
            let quantile = |q| outcome.latency.value_at_quantile(q);
            curve.push((
                failed,
                r.target.via,
                chart::CurvePoint {
                    series: r.target.peer.to_string(),
                    fraction,
                    rate: rate as f64,
                    p50_us: quantile(0.5) as f64,
                    p99_us: quantile(0.99) as f64,
                    p999_us: quantile(0.999) as f64,
                },
            ));
            if fraction == 0.5 {
                half = Some((rate, quantile(0.5), quantile(0.99)));
            }
        }
        let (rate, p50, p99) = half.context("no run at half the maximum")?;
        let usage = auth.usage()?;
        rows.push(Row {
            via: r.target.via,
            peer: r.target.peer.to_string(),
            server: front.name.clone(),
            answer: r.answer.text.clone(),
            rate: max,
            auth_cpu_us: report::median(r.auth_cpu),
            proxy_cpu_us: (!r.proxy_cpu.is_empty()).then(|| report::median(r.proxy_cpu)),
            open_rate: rate,
            p50_us: p50,
            p99_us: p99,
            rss_mib: usage.rss_kib as f64 / 1024.0,
            jwks_fetches_per_check: report::median(r.fetches),
            judges: r.target.judges,
        });
    }
    if !scenario.curve {
        curve.clear();
    }
    Ok((rows, curve))
}

/// Keeps `server` with the run's procs; its index.
fn add(procs: &mut Vec<Server>, server: Server) -> usize {
    procs.push(server);
    procs.len() - 1
}

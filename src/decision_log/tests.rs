use std::sync::{Condvar, Mutex};

use proptest::prelude::*;
use serde_json::{Value, json};

use super::Rng;
use super::*;
use crate::decision::{Allow, ClaimSet, Deny};

const KEY: &str = "0123456789abcdef0123456789abcdef";
const ISSUER: &str = "https://idp.example/";

fn info<'a>(request_id: &'a str, path: &'a str) -> RequestInfo<'a> {
    RequestInfo {
        transport: "grpc",
        request_id,
        method: "GET",
        host: "api.example.com",
        path,
        route: None,
    }
}

fn identity(token: &str) -> Identity {
    let claims = json!({"iss": ISSUER, "sub": "user-1", "email": "a@example.com", "n": 7});
    Identity {
        token_id: crate::jose::fingerprint(token),
        issuer: Some(ISSUER.into()),
        claims: ClaimSet::Json(claims.to_string().into()),
    }
}

fn allow(token: &str) -> Decision {
    Decision::Allow(Allow {
        policy: Some("shop/orders".into()),
        issuer: Some(ISSUER.into()),
        identity: Some(identity(token)),
        ..Allow::default()
    })
}

fn deny(token: &str, reason: Reason) -> Decision {
    crate::engine::deny(
        None,
        "api.example.com",
        reason,
        format!("why (never the token {})", &token[..token.len().min(4)]),
        None,
        Some(crate::jose::fingerprint(token)),
    )
}

fn hash_subject() -> Subject {
    Subject::Hash {
        claim: "sub".into(),
        key: Box::new(aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            KEY.as_bytes(),
        )),
    }
}

/// One rendered record, parsed.
fn line(info: &RequestInfo<'_>, decision: &Decision, subject: &Subject) -> (String, Value) {
    let entry = Entry::new(
        info,
        decision,
        Duration::from_micros(1234),
        Origin {
            proxy: Some("10.0.0.9".parse().expect("ip")),
            client: Some("203.0.113.7"),
        },
    );
    let mut out = Vec::new();
    render(&entry, subject, &Rng::seeded(1), &mut out);
    let text = String::from_utf8(out).expect("utf-8");
    assert!(
        text.ends_with('\n') && text.matches('\n').count() == 1,
        "{text}"
    );
    let value = serde_json::from_str(&text).expect("one JSON object");
    (text, value)
}

#[test]
fn an_allow_record_has_the_documented_fields() {
    let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2ln";
    let (_, v) = line(
        &info("4bf92f35-77b3-4da6-a3ce-929d0e0e4736", "/orders/1?x=1"),
        &allow(token),
        &hash_subject(),
    );
    let time = v["time"].as_str().expect("time");
    assert!(
        chrono::DateTime::parse_from_rfc3339(time).is_ok() && time.ends_with('Z'),
        "{time}"
    );
    assert_eq!(time.len(), "2026-01-01T00:00:00.000Z".len(), "{time}");
    let mut v = v;
    v.as_object_mut().expect("object").remove("time");
    assert_eq!(
        v,
        json!({
            "record": "decision",
            "request_id": "4bf92f35-77b3-4da6-a3ce-929d0e0e4736",
            "transport": "grpc",
            "method": "GET",
            "host": "api.example.com",
            "path": "/orders/1",
            "policy": "shop/orders",
            "decision": "allow",
            "reason": "valid",
            "dry_run": false,
            "issuer": ISSUER,
            // The value `openssl dgst -sha256 -mac HMAC -macopt key:$KEY` gives for
            // "https://idp.example/\0user-1" (docs/operations.md shows the command).
            "subject_hash": "c81fac72a5441371803e220dd730abbe",
            "token_fingerprint": crate::jose::fingerprint(token),
            "latency_us": 1234,
            "client_address": "203.0.113.7",
            "proxy_address": "10.0.0.9",
        })
    );
}

#[test]
fn a_denial_names_status_and_fingerprint_and_no_unverified_identity() {
    let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJldmUifQ.Zm9yZ2Vk";
    let (_, v) = line(
        &info("", "/orders"),
        &deny(token, Reason::SignatureInvalid),
        &hash_subject(),
    );
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["status"], 401);
    assert_eq!(v["reason"], "signature_invalid");
    assert_eq!(v["token_fingerprint"], crate::jose::fingerprint(token));
    // The token did not verify: neither its issuer nor its subject is named.
    assert!(
        v.get("issuer").is_none() && v.get("subject_hash").is_none(),
        "{v}"
    );
    // No request id was sent: one is made up, and said to be.
    assert_eq!(v["request_id"].as_str().map(str::len), Some(32));
    assert_eq!(v["request_id_generated"], true);

    // A denial after verification (a rule, a condition) names who was denied.
    let Decision::Deny(mut verified) = deny(token, Reason::InsufficientScope) else {
        unreachable!("a denial")
    };
    verified.identity = Some(Box::new(identity(token)));
    let (_, v) = line(
        &info("r1", "/orders"),
        &Decision::Deny(verified),
        &hash_subject(),
    );
    assert_eq!(v["issuer"], ISSUER);
    assert_eq!(v["subject_hash"], "c81fac72a5441371803e220dd730abbe");
    assert_eq!(v["status"], 403);
}

#[test]
fn subject_modes() {
    let token = "t0123456789";
    let claim = |name: &str| Subject::Claim(name.into());
    let (_, v) = line(&info("r", "/"), &allow(token), &claim("email"));
    assert_eq!(v["subject"], "a@example.com");
    assert!(v.get("subject_hash").is_none());
    let (_, v) = line(&info("r", "/"), &allow(token), &claim("n"));
    assert_eq!(v["subject"], "7");
    // A claim the token lacks: no subject at all.
    let (_, v) = line(&info("r", "/"), &allow(token), &claim("missing"));
    assert!(v.get("subject").is_none());
    let (_, v) = line(&info("r", "/"), &allow(token), &Subject::None);
    assert!(v.get("subject").is_none() && v.get("subject_hash").is_none());
    // Another key, another hash: without the key a list of subject ids cannot be matched.
    let other = Subject::Hash {
        claim: "sub".into(),
        key: Box::new(aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            &[7u8; 32],
        )),
    };
    let (_, v) = line(&info("r", "/"), &allow(token), &other);
    assert_ne!(v["subject_hash"], "c81fac72a5441371803e220dd730abbe");
    assert_eq!(v["subject_hash"].as_str().map(str::len), Some(32));
}

#[test]
fn dry_run_answers_and_bounds() {
    let token = "t0123456789";
    let Decision::Deny(would) = deny(token, Reason::TokenExpired) else {
        unreachable!("a denial")
    };
    let dry = Decision::Allow(Allow {
        policy: Some("shop/trial".into()),
        reason: Reason::DryRun,
        dry_run: Some(Box::new(would)),
        ..Allow::default()
    });
    let (_, v) = line(&info("r", "/"), &dry, &Subject::None);
    assert_eq!(
        (
            &v["decision"],
            &v["reason"],
            &v["dry_run"],
            &v["dry_run_reason"],
            &v["dry_run_status"]
        ),
        (
            &json!("allow"),
            &json!("dry_run"),
            &json!(true),
            &json!("token_expired"),
            &json!(401)
        )
    );
    let document = Decision::Deny(Deny {
        status: 200,
        reason: Reason::ResourceMetadata,
        ..match deny(token, Reason::ResourceMetadata) {
            Decision::Deny(d) => d,
            Decision::Allow(_) => unreachable!("a denial"),
        }
    });
    let (_, v) = line(&info("r", "/"), &document, &Subject::None);
    assert_eq!(
        (&v["decision"], &v["status"]),
        (&json!("answer"), &json!(200))
    );
    // Long paths are cut (and said to be); long or odd request ids replaced.
    let long = format!("/{}", "é".repeat(2000));
    let long_id = "a".repeat(MAX_REQUEST_ID + 1);
    let (_, v) = line(&info(&long_id, &long), &allow(token), &Subject::None);
    assert!(v["path"].as_str().is_some_and(|p| p.len() <= MAX_PATH));
    assert_eq!(v["path_truncated"], true);
    assert_eq!(v["request_id_generated"], true);
    let (_, v) = line(&info("has space", "/"), &allow(token), &Subject::None);
    assert_eq!(v["request_id_generated"], true);
    let id = "a".repeat(MAX_REQUEST_ID);
    let (_, v) = line(&info(&id, "/"), &allow(token), &Subject::None);
    assert_eq!(v["request_id"], id.as_str());
}

#[test]
fn the_credential_sent_as_request_id_is_replaced() {
    // An opaque token short enough to pass for an id, sent as x-request-id too.
    let token = "opaque-0123456789";
    for decision in [allow(token), deny(token, Reason::TokenInactive)] {
        let (text, v) = line(&info(token, "/"), &decision, &Subject::None);
        assert!(!text.contains(token), "{text}");
        assert_eq!(v["request_id_generated"], true);
    }
    // An API key's id is 8 hex characters of the same digest.
    let key = "key-0123456789";
    let mut decision = allow(key);
    if let Decision::Allow(a) = &mut decision
        && let Some(i) = &mut a.identity
    {
        i.token_id = crate::apikeys::key_id(&crate::apikeys::digest(key.as_bytes()));
    }
    let (text, _) = line(&info(key, "/"), &decision, &Subject::None);
    assert!(!text.contains(key), "{text}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Wherever a client puts its token (the query, the fragment, the request id), in
    /// whatever form, no record holds it.
    #[test]
    fn no_record_holds_the_token(
        token in "[A-Za-z0-9_-]{8,40}(\\.[A-Za-z0-9_-]{8,60}){0,2}",
        segments in proptest::collection::vec("[a-z0-9%._~-]{0,12}", 0..6),
        param in "(access_token|api_key|code|jwt)",
        as_id in any::<bool>(),
        allowed in any::<bool>(),
        subject in 0..3u8,
    ) {
        let path = format!("/{}?{param}={token}&x=1#{token}", segments.join("/"));
        let request_id = if as_id { token.clone() } else { "r-1".to_string() };
        let decision = if allowed { allow(&token) } else { deny(&token, Reason::TokenExpired) };
        let subject = match subject {
            0 => hash_subject(),
            1 => Subject::Claim("sub".into()),
            _ => Subject::None,
        };
        let (text, v) = line(&info(&request_id, &path), &decision, &subject);
        prop_assert!(!text.contains(&token), "{}", text);
        prop_assert!(!text.contains(&param), "{}", text);
        let expected = format!("/{}", segments.join("/"));
        prop_assert_eq!(v["path"].as_str(), Some(expected.as_str()));
    }
}

#[test]
fn settings_parse() {
    assert_eq!(Output::parse("off"), Ok(Output::Off));
    assert_eq!(Output::parse("stdout"), Ok(Output::Stdout));
    assert_eq!(
        Output::parse("/var/log/t.jsonl"),
        Ok(Output::File("/var/log/t.jsonl".into()))
    );
    assert!(Output::parse(" ").is_err());
    assert_eq!(
        SubjectMode::parse("hash"),
        Ok(SubjectMode::Hash {
            claim: "sub".into()
        })
    );
    assert_eq!(
        SubjectMode::parse("hash:oid"),
        Ok(SubjectMode::Hash {
            claim: "oid".into()
        })
    );
    assert_eq!(
        SubjectMode::parse("claim:email"),
        Ok(SubjectMode::Claim("email".into()))
    );
    assert_eq!(SubjectMode::parse("none"), Ok(SubjectMode::None));
    for bad in ["sub", "claim:", "hash:", "raw:sub"] {
        assert!(SubjectMode::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_subject_key_is_required_and_long_enough() {
    let dir = tempfile::tempdir().expect("dir");
    let short = dir.path().join("short");
    std::fs::write(&short, "0123456789abcdef0123456789abcde\n").expect("write");
    let good = dir.path().join("good");
    std::fs::write(&good, format!("{KEY}\n")).expect("write");
    assert!(matches!(
        read_key(&short),
        Err(SettingsError::KeyTooShort { len: 31, .. })
    ));
    assert_eq!(read_key(&good).expect("key"), KEY.as_bytes());
    let settings = |key: Option<PathBuf>| Settings {
        output: Output::Stdout,
        subject_key: key,
        ..Settings::default()
    };
    let start = |s: &Settings| {
        DecisionLog::spawn_with(
            s,
            Arc::new(Counters::default()),
            Sink::stream(Box::new(|| Box::new(std::io::sink()))),
            Rng::seeded(1),
        )
        .map(|_| ())
    };
    assert!(matches!(
        start(&settings(None)),
        Err(SettingsError::KeyMissing)
    ));
    assert!(start(&settings(Some(good))).is_ok());
    let mut off_range = settings(None);
    off_range.subject = SubjectMode::None;
    off_range.sample_allow = 1.5;
    assert!(matches!(
        start(&off_range),
        Err(SettingsError::Sample("allow", _))
    ));
}

#[test]
fn sampling_is_random_per_class_and_deterministic_from_the_seed() {
    let admission = |seed| Admission {
        allow: Sample::new(0.25),
        deny: Sample::new(1.0),
        rng: Rng::seeded(seed),
        limit: RateLimit::new(0),
    };
    let a = admission(42);
    let picks: Vec<Admit> = (0..100_000).map(|_| a.admit(Class::Allow, 0)).collect();
    let kept = picks.iter().filter(|p| **p == Admit::Yes).count();
    assert!((24_000..26_000).contains(&kept), "{kept}");
    // The same seed, the same choices.
    let b = admission(42);
    assert!(picks.iter().all(|p| *p == b.admit(Class::Allow, 0)));
    // Denials at 1: every one; a share of 0: none.
    assert!((0..1000).all(|_| a.admit(Class::Deny, 0) == Admit::Yes));
    let none = Admission {
        allow: Sample::new(0.0),
        ..admission(1)
    };
    assert!((0..1000).all(|_| none.admit(Class::Allow, 0) == Admit::SampledOut));
}

#[test]
fn the_rate_limit_admits_so_many_per_second() {
    let limit = RateLimit::new(3);
    let second = |s| (0..5).map(|_| limit.admit(s)).collect::<Vec<_>>();
    assert_eq!(second(0), [true, true, true, false, false]);
    assert_eq!(second(0), [false; 5]);
    assert_eq!(second(1), [true, true, true, false, false]);
    // A late caller with an older second does not reopen the window.
    assert!(!limit.admit(0));
    assert_eq!(second(7), [true, true, true, false, false]);
    let none = RateLimit::new(0);
    assert!((0..10_000).all(|_| none.admit(0)));
    // Sampled out first, so the limit counts only what would be written.
    let a = Admission {
        allow: Sample::new(1.0),
        deny: Sample::new(1.0),
        rng: Rng::seeded(3),
        limit: RateLimit::new(2),
    };
    let got: Vec<Admit> = (0..3).map(|_| a.admit(Class::Deny, 0)).collect();
    assert_eq!(got, [Admit::Yes, Admit::Yes, Admit::RateLimited]);
}

/// A stream that blocks every write until released, and keeps what it was given.
#[derive(Clone, Default)]
struct Gate {
    state: Arc<(Mutex<(bool, bool)>, Condvar)>,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Gate {
    fn entered(&self) -> bool {
        self.state.0.lock().expect("gate").0
    }
    fn release(&self) {
        self.state.0.lock().expect("gate").1 = true;
        self.state.1.notify_all();
    }
    fn text(&self) -> String {
        String::from_utf8(self.out.lock().expect("out").clone()).expect("utf-8")
    }
}

impl std::io::Write for Gate {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (lock, wake) = &*self.state;
        let mut state = lock.lock().expect("gate");
        state.0 = true;
        while !state.1 {
            state = wake.wait(state).expect("gate");
        }
        self.out.lock().expect("out").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts a writer on `stream` (each reopen gets a clone of it) with `settings`.
fn spawn_on<W: std::io::Write + Clone + Send + 'static>(
    stream: W,
    settings: &Settings,
    counters: Arc<Counters>,
) -> (DecisionLog, Writer) {
    DecisionLog::spawn_with(
        settings,
        counters,
        Sink::stream(Box::new(move || Box::new(stream.clone()))),
        Rng::seeded(9),
    )
    .expect("start")
}

#[tokio::test]
async fn a_blocked_output_drops_and_counts_and_never_blocks_a_check() {
    let gate = Gate::default();
    let counters = Arc::new(Counters::default());
    let settings = Settings {
        output: Output::Stdout,
        subject: SubjectMode::None,
        queue: 4,
        limit: 0,
        flush_interval: Duration::from_millis(10),
        ..Settings::default()
    };
    let (log, writer) = spawn_on(gate.clone(), &settings, counters.clone());
    let token = "t0123456789";
    let decision = allow(token);
    let record =
        |id: &str| log.record(&info(id, "/"), &decision, Duration::ZERO, Origin::default());
    record("first");
    // The writer flushes the first record and blocks in the output.
    wait_for("the writer to block", || gate.entered());
    let started = Instant::now();
    for i in 0..10 {
        record(&format!("r{i}"));
    }
    // Ten offers against a blocked output return at once: four are queued, six dropped.
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(counters.dropped(Dropped::QueueFull), 6);
    gate.release();
    assert!(writer.close(Duration::from_secs(10)).await);
    let text = gate.text();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let ids: Vec<&str> = lines
        .iter()
        .filter(|l| l["record"] == "decision")
        .filter_map(|l| l["request_id"].as_str())
        .collect();
    // In the order they were offered; those that found the queue full are missing.
    assert_eq!(ids, ["first", "r0", "r1", "r2", "r3"]);
    let dropped: Vec<&Value> = lines.iter().filter(|l| l["record"] == "dropped").collect();
    assert_eq!(dropped.len(), 1, "{text}");
    assert_eq!(dropped[0]["queue_full"], 6);
    assert_eq!(dropped[0]["rate_limited"], 0);
    assert_eq!(counters.written(), 6, "five records and the dropped line");
    // After the writer stopped, a record is counted, not queued.
    record("late");
    assert_eq!(counters.dropped(Dropped::Shutdown), 1);
}

/// An output that keeps what it was given.
#[derive(Clone, Default)]
struct Kept(Arc<Mutex<Vec<u8>>>);

impl Kept {
    fn holds(&self, id: &str) -> bool {
        String::from_utf8_lossy(&self.0.lock().expect("kept"))
            .contains(&format!("\"request_id\":\"{id}\""))
    }
}

impl std::io::Write for Kept {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("kept").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn an_idle_writer_blocks_and_the_next_record_wakes_it() {
    let kept = Kept::default();
    let settings = Settings {
        output: Output::Stdout,
        subject: SubjectMode::None,
        flush_interval: Duration::from_millis(100),
        ..Settings::default()
    };
    let (log, writer) = spawn_on(kept.clone(), &settings, Arc::new(Counters::default()));
    let record = |id: &str| {
        log.record(
            &info(id, "/"),
            &allow("t0123456789"),
            Duration::ZERO,
            Origin::default(),
        )
    };
    record("before");
    wait_for("the first record", || kept.holds("before"));
    // Past the quiet spell, the writer wakes for its flushes only (about 6 in 600 ms), not
    // every 2 ms (about 300).
    std::thread::sleep(IDLE_BLOCK_AFTER + Duration::from_millis(100));
    let idle = || writer.control.idle_wakeups.load(Ordering::Relaxed);
    let start = idle();
    std::thread::sleep(Duration::from_millis(600));
    let woke = idle() - start;
    assert!(woke <= 30, "an idle writer woke {woke} times in 600 ms");
    record("after");
    wait_for("the record after the quiet spell", || kept.holds("after"));
    assert!(writer.close(Duration::from_secs(10)).await);
}

/// An output that fails every write.
#[derive(Clone)]
struct Broken;

impl std::io::Write for Broken {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("disk full"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn failed_writes_are_counted() {
    let counters = Arc::new(Counters::default());
    let settings = Settings {
        output: Output::Stdout,
        subject: SubjectMode::None,
        flush_interval: Duration::from_millis(10),
        ..Settings::default()
    };
    let (log, writer) = spawn_on(Broken, &settings, counters.clone());
    for _ in 0..3 {
        log.record(
            &info("r", "/"),
            &allow("t0123456789"),
            Duration::ZERO,
            Origin::default(),
        );
    }
    assert!(writer.close(Duration::from_secs(10)).await);
    assert!(counters.dropped(Dropped::WriteFailed) >= 3);
    assert_eq!(counters.written(), 0);
}

#[tokio::test]
async fn a_moved_file_is_reopened_and_a_hangup_reopens_too() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("decisions.jsonl");
    let counters = Arc::new(Counters::default());
    let settings = Settings {
        output: Output::File(path.clone()),
        subject: SubjectMode::None,
        flush_interval: Duration::from_millis(10),
        ..Settings::default()
    };
    let (log, writer) = DecisionLog::spawn(&settings, counters.clone())
        .expect("start")
        .expect("on");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&path).expect("file").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let record = |id: &str| {
        log.record(
            &info(id, "/"),
            &allow("t0123456789"),
            Duration::ZERO,
            Origin::default(),
        )
    };
    let holds = |p: &Path, id: &str| {
        std::fs::read_to_string(p).is_ok_and(|t| t.contains(&format!("\"request_id\":\"{id}\"")))
    };
    record("before");
    wait_for("the first record", || holds(&path, "before"));
    // logrotate's default: move the file away (and maybe create an empty one).
    let rotated = dir.path().join("decisions.jsonl.1");
    std::fs::rename(&path, &rotated).expect("rename");
    wait_for("the file to be recreated", || path.exists());
    record("after");
    wait_for("the record in the new file", || holds(&path, "after"));
    assert!(!holds(&rotated, "after"));
    assert!(writer.close(Duration::from_secs(10)).await);
    for file in [&path, &rotated] {
        let text = std::fs::read_to_string(file).expect("read");
        for l in text.lines() {
            serde_json::from_str::<Value>(l).expect("a whole JSON record");
        }
    }

    // SIGHUP's reopen, without waiting for the next check of the path (here an hour away).
    let settings = Settings {
        flush_interval: Duration::from_secs(3600),
        ..settings
    };
    let (log, writer) = DecisionLog::spawn(&settings, counters.clone())
        .expect("start")
        .expect("on");
    let moved = dir.path().join("decisions.jsonl.2");
    std::fs::rename(&path, &moved).expect("rename");
    writer.reopener().reopen();
    wait_for("the reopened file", || path.exists());
    log.record(
        &info("hup", "/"),
        &allow("t0123456789"),
        Duration::ZERO,
        Origin::default(),
    );
    // Closing flushes what the buffer holds.
    assert!(writer.close(Duration::from_secs(10)).await);
    assert!(holds(&path, "hup"), "{:?}", std::fs::read_to_string(&path));
    assert!(!holds(&moved, "hup"));
}

#[test]
fn metrics_are_exported_only_while_on() {
    let metrics = crate::metrics::Metrics::new(None, None);
    assert!(!metrics.encode().contains("decision_log"));
    metrics.decision_log.enabled.store(true, Ordering::Relaxed);
    metrics.decision_log.drop_one(Dropped::QueueFull);
    let text = metrics.encode();
    assert!(
        text.contains("tollgate_decision_log_dropped_total{cause=\"queue_full\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tollgate_decision_log_records_total 0"),
        "{text}"
    );
}

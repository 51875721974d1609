//! The status writer against kube's mock client: each test scripts the API calls it expects
//! (method, path, body) and answers them; a call that never comes fails by timeout.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use super::*;
use crate::fixtures::*;
use crate::policy::{CompileError, Problem, ProblemKind};

type ApiServerHandle = Handle<Request<Body>, Response<Body>>;

fn writer() -> (StatusWriter, ApiServerHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "tollgate");
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "tollgate".into(),
            instance: Some("pod-a".into()),
        },
    );
    (
        StatusWriter {
            client,
            recorder,
            written: HashMap::new(),
            evented: HashSet::new(),
            counted: HashMap::new(),
            count_every: Duration::from_secs(3600),
        },
        handle,
    )
}

fn view(error: Option<CompileError>) -> IndexView {
    IndexView {
        policies: vec![PolicyView {
            id: "shop/orders".into(),
            namespace: "shop".into(),
            name: "orders".into(),
            uid: Some("uid-1".into()),
            created: String::new(),
            generation: 2,
            serving_generation: Some(2).filter(|_| error.is_none()),
            error,
            conflict: None,
            policy: Some(mk_policy("orders", "")),
            status: None,
            hosts: Vec::new(),
            ancestors: Vec::new(),
            targeted: false,
        }],
        delegations: crate::policy::HostDelegations::none(),
    }
}

/// Two live replicas serving `generation` of shop/orders.
fn reports(generation: i64) -> Vec<ReplicaReport> {
    ["a", "b"]
        .iter()
        .map(|name| ReplicaReport {
            identity: name.to_string(),
            loaded: [("shop/orders".to_string(), generation)].into(),
            renewed: Some(SystemTime::now()),
            lease_duration: Duration::from_secs(30),
            dry_run: BTreeMap::new(),
        })
        .collect()
}

/// Waits for the next request, checks it, and answers `response` (status 200/201).
async fn expect(handle: &mut ApiServerHandle, method: &str, path: &str, response: Value) -> Value {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no {method} {path} request"))
        .expect("the client is alive");
    assert_eq!(request.method().as_str(), method);
    assert_eq!(request.uri().path(), path);
    let query = request.uri().query().unwrap_or("").to_string();
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = http_body_util::BodyExt::collect(request.into_body())
        .await
        .expect("body")
        .to_bytes();
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).expect("JSON body")
    };
    if method == "PATCH" {
        assert!(
            query.contains("fieldManager=tollgate") && query.contains("force=true"),
            "{query}"
        );
        assert_eq!(content_type, "application/apply-patch+yaml");
    }
    let status = if method == "POST" { 201 } else { 200 };
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&response).expect("json")))
            .expect("response"),
    );
    body
}

/// The object the API server answers a status write with.
fn stored() -> Value {
    json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "JwtPolicy",
        "metadata": {"name": "orders", "namespace": "shop", "uid": "uid-1", "generation": 2},
        "spec": {"issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE]}]}})
}

async fn quiet(handle: &mut ApiServerHandle) {
    let next = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
    assert!(
        next.is_err(),
        "unexpected request: {:?}",
        next.ok()
            .flatten()
            .map(|(r, _)| format!("{} {}", r.method(), r.uri()))
    );
}

#[tokio::test]
async fn status_is_written_once_with_server_side_apply() {
    let (mut writer, mut handle) = writer();
    let view = view(None);
    let reports = reports(2);
    let sync = async {
        writer.sync(&view, &reports).await;
        writer.sync(&view, &reports).await;
    };
    let api = async {
        let body = expect(
            &mut handle,
            "PATCH",
            "/apis/tollgate.dev/v1alpha1/namespaces/shop/jwtpolicies/orders/status",
            stored(),
        )
        .await;
        assert_eq!(body["apiVersion"], "tollgate.dev/v1alpha1");
        assert_eq!(body["kind"], "JwtPolicy");
        let status = &body["status"];
        assert_eq!(status["observedGeneration"], 2);
        assert_eq!(status["loaded"], "2/2");
        assert_eq!(status["conditions"][0]["type"], "Accepted");
        assert_eq!(status["conditions"][0]["status"], "True");
        assert_eq!(status["conditions"][1]["type"], "Ready");
        assert_eq!(status["issuers"][0]["keys"], 4);
        // The second sync has nothing new to say.
        quiet(&mut handle).await;
    };
    tokio::join!(sync, api);
}

#[tokio::test]
async fn a_compile_error_is_reported_in_status_and_one_event() {
    let (mut writer, mut handle) = writer();
    let error = CompileError {
        problems: vec![Problem {
            field: "spec.clockSkew".into(),
            message: "1h is more than the 10m maximum".into(),
            kind: ProblemKind::InvalidSpec,
        }],
    };
    let view = view(Some(error));
    // Generation 2 does not compile: the replicas still serve generation 1.
    let reports = reports(1);
    let sync = async {
        writer.sync(&view, &reports).await;
        writer.sync(&view, &reports).await;
    };
    let api = async {
        let body = expect(
            &mut handle,
            "PATCH",
            "/apis/tollgate.dev/v1alpha1/namespaces/shop/jwtpolicies/orders/status",
            stored(),
        )
        .await;
        let accepted = &body["status"]["conditions"][0];
        assert_eq!(
            (accepted["status"].as_str(), accepted["reason"].as_str()),
            (Some("False"), Some("InvalidSpec"))
        );
        assert!(
            accepted["message"]
                .as_str()
                .is_some_and(|m| m.contains("spec.clockSkew"))
        );
        assert_eq!(body["status"]["loaded"], "0/2");
        let event = expect(
            &mut handle,
            "POST",
            "/apis/events.k8s.io/v1/namespaces/shop/events",
            json!({"metadata": {"name": "e"}}),
        )
        .await;
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], "InvalidSpec");
        assert_eq!(event["regarding"]["name"], "orders");
        assert_eq!(event["regarding"]["uid"], "uid-1");
        quiet(&mut handle).await;
    };
    tokio::join!(sync, api);
}

/// Two replicas serving generation 2 of a dry-run shop/orders, each with its window counts.
fn dry_run_reports(expired: [u64; 2]) -> Vec<ReplicaReport> {
    let mut reports = reports(2);
    for (report, n) in reports.iter_mut().zip(expired) {
        report.dry_run = BTreeMap::from([(
            "shop/orders".to_string(),
            crate::dry_run::WindowReport {
                generation: 2,
                since: 0,
                requests: 10,
                denials: BTreeMap::from([("token_expired".to_string(), n)]),
            },
        )]);
    }
    reports
}

#[tokio::test]
async fn new_dry_run_counts_alone_are_written_at_a_bounded_rate() {
    let (mut writer, mut handle) = writer();
    let mut view = view(None);
    view.policies[0].policy = Some(mk_policy("orders", "{mode: dryRun}"));
    let path = "/apis/tollgate.dev/v1alpha1/namespaces/shop/jwtpolicies/orders/status";
    let sync = async {
        writer.sync(&view, &dry_run_reports([1, 2])).await;
        // Only the counts changed, within the interval: not written.
        writer.sync(&view, &dry_run_reports([5, 2])).await;
        // One replica less changes more than the counts: written at once.
        let one = dry_run_reports([5, 2])
            .into_iter()
            .take(1)
            .collect::<Vec<_>>();
        writer.sync(&view, &one).await;
        // Once the interval has passed, new counts are written again.
        writer.count_every = Duration::ZERO;
        writer.sync(&view, &dry_run_reports([7, 2])).await;
    };
    let api = async {
        let body = expect(&mut handle, "PATCH", path, stored()).await;
        let dry_run = &body["status"]["dryRun"];
        assert_eq!(dry_run["window"], "10m");
        assert_eq!(dry_run["observedGeneration"], 2);
        assert_eq!(dry_run["replicas"], 2);
        assert_eq!(dry_run["requests"], 20);
        assert_eq!(dry_run["wouldDeny"], 3);
        assert_eq!(
            dry_run["denials"],
            json!([{"reason": "token_expired", "count": 3}])
        );
        let body = expect(&mut handle, "PATCH", path, stored()).await;
        assert_eq!(body["status"]["dryRun"]["replicas"], 1);
        assert_eq!(body["status"]["dryRun"]["wouldDeny"], 5);
        let body = expect(&mut handle, "PATCH", path, stored()).await;
        assert_eq!(body["status"]["dryRun"]["wouldDeny"], 9);
        quiet(&mut handle).await;
    };
    tokio::join!(sync, api);
}

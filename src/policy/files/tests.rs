use std::path::Path;

use super::*;
use crate::fixtures::*;
use crate::policy::DefaultAction;

/// A policy document for host `<name>.example.com` (unless `extra` has its own `match`).
fn doc(name: &str, extra: &str) -> String {
    let extra = if extra.contains("match:") {
        extra.to_string()
    } else {
        format!("  match: {{hosts: [{name}.example.com]}}\n{extra}")
    };
    format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  issuers: [{{issuer: '{ISSUER}', audiences: ['{AUDIENCE}'], jwks: {jwks}}}]\n{extra}",
        jwks = trusted_jwks()
    )
}

fn loader(path: &Path) -> FileLoader {
    FileLoader::new(
        vec![path.to_path_buf()],
        KeySources::offline().expect("client"),
        DefaultAction::Deny,
    )
}

fn ids(snapshot: &Snapshot) -> Vec<String> {
    let mut ids: Vec<String> = snapshot.policies().map(|p| p.id.to_string()).collect();
    ids.sort();
    ids
}

#[test]
fn loads_every_document_of_every_yaml_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("a.yaml"),
        format!("{}---\n{}---\n", doc("a", ""), doc("b", "")),
    )
    .expect("write");
    std::fs::write(dir.path().join("c.yml"), doc("c", "")).expect("write");
    std::fs::write(dir.path().join("notes.txt"), "not a policy").expect("write");
    std::fs::write(dir.path().join(".hidden.yaml"), "garbage: [").expect("write");
    let (snapshot, report) = loader(dir.path()).reload();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(
        ids(&snapshot.expect("snapshot")),
        ["shop/a", "shop/b", "shop/c"]
    );
}

#[test]
fn unchanged_files_publish_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.yaml"), doc("a", "")).expect("write");
    let mut loader = loader(dir.path());
    assert!(loader.reload().0.is_some());
    let (snapshot, report) = loader.reload();
    assert!(snapshot.is_none());
    assert!(!report.changed);
}

#[test]
fn a_file_that_fails_to_parse_keeps_its_last_good_policies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a.yaml");
    std::fs::write(&file, doc("a", "  requiredClaims: [{name: scp}]\n")).expect("write");
    let mut loader = loader(dir.path());
    let first = loader.reload().0.expect("snapshot");
    assert_eq!(first.policy("shop/a").expect("a").required_claims.len(), 1);

    std::fs::write(
        &file,
        "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nspec: [unclosed",
    )
    .expect("write");
    let (snapshot, report) = loader.reload();
    let snapshot = snapshot.expect("republished");
    assert_eq!(ids(&snapshot), ["shop/a"]);
    assert_eq!(
        snapshot.policy("shop/a").expect("a").required_claims.len(),
        1,
        "the last good version"
    );
    assert_eq!(report.problems.len(), 1);
    assert!(report.problems[0].kept_last_good);
    assert!(
        report.problems[0]
            .to_string()
            .contains("still serving the last good version")
    );
}

#[test]
fn a_policy_that_fails_to_compile_keeps_its_last_good_version_others_update() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a.yaml");
    std::fs::write(
        &file,
        format!(
            "{}---\n{}",
            doc("a", "  clockSkew: 10s\n"),
            doc("b", "  clockSkew: 10s\n")
        ),
    )
    .expect("write");
    let mut loader = loader(dir.path());
    loader.reload();
    std::fs::write(
        &file,
        format!(
            "{}---\n{}",
            doc("a", "  clockSkew: 1h\n"),
            doc("b", "  clockSkew: 20s\n")
        ),
    )
    .expect("write");
    let (snapshot, report) = loader.reload();
    let snapshot = snapshot.expect("snapshot");
    assert_eq!(
        snapshot.policy("shop/a").expect("a").clock_skew,
        10,
        "a keeps its last good version"
    );
    assert_eq!(
        snapshot.policy("shop/b").expect("b").clock_skew,
        20,
        "b is updated"
    );
    assert_eq!(report.problems.len(), 1);
    assert!(
        report.problems[0].message.contains("spec.clockSkew"),
        "{}",
        report.problems[0]
    );
    // A new policy that never compiled is simply absent.
    std::fs::write(
        dir.path().join("c.yaml"),
        doc("c", "  deny: {status: 200}\n"),
    )
    .expect("write");
    let (snapshot, report) = loader.reload();
    assert!(snapshot.expect("snapshot").policy("shop/c").is_none());
    assert!(
        !report
            .problems
            .iter()
            .find(|p| p.location.contains("shop/c"))
            .expect("c problem")
            .kept_last_good
    );
}

#[test]
fn deleted_documents_stop_matching() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.yaml"), doc("a", "")).expect("write");
    std::fs::write(dir.path().join("b.yaml"), doc("b", "")).expect("write");
    let mut loader = loader(dir.path());
    loader.reload();
    std::fs::remove_file(dir.path().join("a.yaml")).expect("remove");
    assert_eq!(ids(&loader.reload().0.expect("snapshot")), ["shop/b"]);
}

#[test]
fn an_emptied_file_keeps_its_policies_until_it_is_written_or_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a.yaml");
    std::fs::write(&file, format!("{}---\n{}", doc("a", ""), doc("b", ""))).expect("write");
    std::fs::write(dir.path().join("c.yaml"), doc("c", "")).expect("write");
    let mut loader = loader(dir.path());
    loader.reload();

    // Truncated by a writer that has not written yet: nothing is published.
    std::fs::write(&file, "").expect("truncate");
    let (snapshot, report) = loader.reload();
    assert!(snapshot.is_none(), "an emptied file changed the snapshot");
    let problem = report.problems.first().expect("a problem");
    assert!(problem.kept_last_good);
    assert!(
        problem.message.contains("empty") && problem.message.contains("2 policy document"),
        "{}",
        problem.message
    );

    // Written again: its new content counts.
    std::fs::write(&file, doc("d", "")).expect("write");
    let (snapshot, report) = loader.reload();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(ids(&snapshot.expect("snapshot")), ["shop/c", "shop/d"]);

    // Emptied, then removed: its policies go.
    std::fs::write(&file, "").expect("truncate");
    assert!(loader.reload().0.is_none());
    std::fs::remove_file(&file).expect("remove");
    assert_eq!(ids(&loader.reload().0.expect("snapshot")), ["shop/c"]);

    // A file that never held a policy may be empty.
    std::fs::write(dir.path().join("e.yaml"), "").expect("write");
    let (_, report) = loader.reload();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_writes_settles_before_the_reload() {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let began = tokio::time::Instant::now();
    // A change every 100 ms for a second: quieter than 150 ms only after the last one.
    let writer = tokio::spawn(async move {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = tx.try_send(());
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(tx);
    });
    rx.recv().await.expect("first change");
    settle(&mut rx).await;
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_millis(1150) && waited < Duration::from_millis(1310),
        "{waited:?}"
    );
    writer.abort();
}

#[tokio::test(start_paused = true)]
async fn a_writer_that_never_pauses_is_read_after_two_seconds() {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let writer = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.try_send(());
        }
    });
    rx.recv().await.expect("first change");
    let began = tokio::time::Instant::now();
    settle(&mut rx).await;
    let waited = began.elapsed();
    assert!(
        waited >= SETTLE_AT_MOST && waited < SETTLE_AT_MOST + Duration::from_millis(10),
        "{waited:?}"
    );
    writer.abort();
}

#[test]
fn duplicates_wrong_kinds_and_conflicts_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let route = "  match: {hosts: [api.example.com]}\n";
    std::fs::write(dir.path().join("1.yaml"), doc("a", route)).expect("write");
    std::fs::write(dir.path().join("2.yaml"), doc("a", "")).expect("write");
    std::fs::write(
        dir.path().join("3.yaml"),
        doc("x", "").replace("kind: JwtPolicy", "kind: Policy"),
    )
    .expect("write");
    let mut loader = loader(dir.path());
    let (snapshot, report) = loader.reload();
    assert_eq!(ids(&snapshot.expect("snapshot")), ["shop/a"]);
    let text: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    assert!(
        text.iter().any(|p| p.contains("already defined")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|p| p.contains("expected tollgate.dev/v1alpha1/JwtPolicy")),
        "{text:?}"
    );

    // A policy added later that claims the same route loses, even if its file sorts first.
    std::fs::write(dir.path().join("0.yaml"), doc("late", route)).expect("write");
    let (snapshot, report) = loader.reload();
    assert!(snapshot.expect("snapshot").policy("shop/late").is_none());
    assert_eq!(report.conflicts.len(), 1);
    assert_eq!(&*report.conflicts[0].holder, "shop/a");
}

#[test]
fn relative_secret_files_resolve_next_to_the_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("hmac.key"), "k".repeat(32)).expect("write");
    let yaml = "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {name: h}\nspec:\n  issuers: [{issuer: https://idp/, audiences: [a], sharedSecret: {file: hmac.key}}]\n";
    std::fs::write(dir.path().join("h.yaml"), yaml).expect("write");
    let (snapshot, report) = loader(dir.path()).reload();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(ids(&snapshot.expect("snapshot")), ["default/h"]);
}

#[test]
fn a_changed_secret_file_recompiles_its_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("hmac.key");
    std::fs::write(&key, "a".repeat(32)).expect("write");
    let yaml = "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {name: h}\nspec:\n  issuers: [{issuer: https://idp/, audiences: [a], sharedSecret: {file: hmac.key}}]\n";
    std::fs::write(dir.path().join("h.yaml"), yaml).expect("write");
    let mut loader = loader(dir.path());
    let first = loader.reload().0.expect("snapshot");
    let before = first.policy("default/h").expect("h").clone();
    assert!(loader.reload().0.is_none(), "nothing changed");
    std::fs::write(&key, "b".repeat(32)).expect("rotate");
    let (snapshot, report) = loader.reload();
    let after = snapshot
        .expect("the rotation republishes")
        .policy("default/h")
        .expect("h")
        .clone();
    assert!(report.changed);
    assert!(
        !Arc::ptr_eq(&before, &after),
        "recompiled with the new secret"
    );
    assert!(loader.reload().0.is_none(), "and only once");
}

#[test]
fn a_changed_key_file_recompiles_its_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("idp-keys.pem");
    std::fs::write(&keys, EC.public_pem().expect("pem")).expect("write");
    let yaml = "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {name: k}\nspec:\n  issuers: [{issuer: https://idp/, audiences: [a], keysFrom: {file: idp-keys.pem}}]\n";
    std::fs::write(dir.path().join("k.yaml"), yaml).expect("write");
    let mut loader = loader(dir.path());
    let first = loader.reload().0.expect("snapshot");
    let kind = |snapshot: &Snapshot| {
        snapshot.policy("default/k").expect("k").issuers[0]
            .keys
            .current()
            .expect("keys")
            .keys()[0]
            .kind
    };
    assert_eq!(kind(&first), crate::jwks::KeyKind::P256);
    assert!(loader.reload().0.is_none(), "nothing changed");
    std::fs::write(&keys, RSA.public_pem().expect("pem")).expect("rotate");
    let (snapshot, report) = loader.reload();
    assert!(report.changed);
    let snapshot = snapshot.expect("the rotation republishes");
    assert!(matches!(kind(&snapshot), crate::jwks::KeyKind::Rsa { .. }));
}

//! Policies from YAML files: `tollgate serve --policies <file|dir>`.
//!
//! A file may hold several documents (`---`). Each reload re-reads the files, re-compiles the
//! policies whose document changed, and builds one new snapshot:
//! - a file that fails to parse keeps the last good version of all its policies;
//! - a policy that fails to compile keeps its last good version;
//! - a policy whose document disappeared is removed;
//! - two documents with the same `namespace/name`: the one seen first wins.
//!
//! Files should be replaced atomically (write elsewhere, then rename), as Kubernetes ConfigMap
//! volumes and most editors do; changes are debounced so a burst of writes is read once.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::compile::{
    CompileContext, CompileError, FileSecrets, Policy, Problem, ProblemKind, compile, file_digest,
};
use super::snapshot::{Claimant, Conflict, SharedSnapshot, Snapshot, SnapshotSettings};
use super::spec::{API_VERSION, KIND, PolicyDocument};
use crate::jwks::KeySources;

/// Most bytes read from one policy file.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// A problem found while loading, tied to where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadProblem {
    /// File (and document index, policy id) the problem is in.
    pub location: String,
    pub message: String,
    /// Whether a last good version is still being served.
    pub kept_last_good: bool,
}

impl std::fmt::Display for LoadProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.message)?;
        if self.kept_last_good {
            f.write_str(" (still serving the last good version)")?;
        }
        Ok(())
    }
}

/// What a reload did.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Policies in the new snapshot.
    pub policies: usize,
    pub problems: Vec<LoadProblem>,
    pub conflicts: Vec<Conflict>,
    /// Whether anything changed since the previous reload.
    pub changed: bool,
    /// Reading, compiling, indexing and publishing took this long.
    pub duration: Duration,
}

struct FileEntry {
    content: Vec<u8>,
    /// Last documents that parsed: (index in file, document).
    documents: Vec<(usize, PolicyDocument)>,
}

struct PolicyEntry {
    /// Order of first sighting: older policies win host/path conflicts.
    order: u64,
    /// The document the compiled policy came from.
    document: Option<serde_json::Value>,
    compiled: Option<Arc<Policy>>,
    /// The last document that failed to compile (reported once, not on every reload).
    failed: Option<serde_json::Value>,
    /// The failure was a missing secret: retry on every reload until it appears.
    retry: bool,
    /// Secret files the compiled version read, with their digests: a change recompiles.
    secret_files: Vec<(PathBuf, [u8; 32])>,
}

/// Loads and re-loads policies from files and directories.
pub struct FileLoader {
    paths: Vec<PathBuf>,
    files: HashMap<PathBuf, FileEntry>,
    policies: BTreeMap<Arc<str>, PolicyEntry>,
    next_order: u64,
    key_sources: Arc<KeySources>,
    settings: SnapshotSettings,
    loaded_once: bool,
}

/// Files of a policy directory that are read, as `kubectl apply -f <dir>` reads them.
fn is_policy_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Parses every document of a policy file.
pub fn parse_documents(content: &[u8]) -> Result<Vec<(usize, PolicyDocument)>, String> {
    let text = std::str::from_utf8(content).map_err(|_| "the file is not UTF-8".to_string())?;
    // A JSON document (what generators write) parses several times faster as JSON; anything
    // that does not goes through the YAML parser, which reports the errors.
    if text.trim_start().starts_with('{')
        && let Ok(doc) = serde_json::from_str::<PolicyDocument>(text)
        && doc.api_version == API_VERSION
        && doc.kind == KIND
    {
        return Ok(vec![(0, doc)]);
    }
    let mut out = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| format!("document {index}: {e}"))?;
        if value.is_null() {
            continue; // an empty document, e.g. a trailing `---`
        }
        let doc: PolicyDocument =
            serde_yaml::from_value(value).map_err(|e| format!("document {index}: {e}"))?;
        if doc.api_version != API_VERSION || doc.kind != KIND {
            return Err(format!(
                "document {index}: apiVersion/kind is {}/{}, expected {API_VERSION}/{KIND}",
                doc.api_version, doc.kind
            ));
        }
        out.push((index, doc));
    }
    Ok(out)
}

impl FileLoader {
    pub fn new(
        paths: Vec<PathBuf>,
        key_sources: Arc<KeySources>,
        settings: impl Into<SnapshotSettings>,
    ) -> Self {
        FileLoader {
            paths,
            files: HashMap::new(),
            policies: BTreeMap::new(),
            next_order: 0,
            key_sources,
            settings: settings.into(),
            loaded_once: false,
        }
    }

    /// The paths given on the command line.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Lists the policy files now present, sorted.
    fn list_files(&self, problems: &mut Vec<LoadProblem>) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for path in &self.paths {
            match std::fs::metadata(path) {
                Ok(meta) if meta.is_dir() => match std::fs::read_dir(path) {
                    Ok(entries) => {
                        for entry in entries.flatten() {
                            let p = entry.path();
                            if is_policy_file(&p) && !hidden(&p) && p.is_file() {
                                files.push(p);
                            }
                        }
                    }
                    Err(e) => problems.push(LoadProblem {
                        location: path.display().to_string(),
                        message: format!("cannot list the directory: {e}"),
                        kept_last_good: false,
                    }),
                },
                Ok(_) => files.push(path.clone()),
                Err(e) => problems.push(LoadProblem {
                    location: path.display().to_string(),
                    message: format!("cannot read: {e}"),
                    kept_last_good: false,
                }),
            }
        }
        files.sort();
        files.dedup();
        files
    }

    /// Re-reads the files. Returns the new snapshot when something changed.
    pub fn reload(&mut self) -> (Option<Snapshot>, LoadReport) {
        let mut report = LoadReport::default();
        let files = self.list_files(&mut report.problems);
        let mut changed = !self.loaded_once;

        // 1. Read files; keep the last good documents of files that fail to parse.
        let mut seen = HashMap::new();
        for path in &files {
            let content = match read_bounded(path) {
                Ok(content) => content,
                Err(message) => {
                    let kept = self
                        .files
                        .get(path)
                        .is_some_and(|f| !f.documents.is_empty());
                    report.problems.push(LoadProblem {
                        location: path.display().to_string(),
                        message,
                        kept_last_good: kept,
                    });
                    if let Some(entry) = self.files.remove(path) {
                        seen.insert(path.clone(), entry);
                    }
                    continue;
                }
            };
            match self.files.remove(path) {
                Some(entry) if entry.content == content => {
                    seen.insert(path.clone(), entry);
                }
                previous => {
                    // Emptied, not removed: most often a writer that truncated the file and
                    // has not written it yet. Dropping its policies would leave their hosts to
                    // the default action until the next reload; they stay, as a file that
                    // fails to parse keeps its own, until it has content again or is removed.
                    let emptied = content.is_empty()
                        && previous.as_ref().is_some_and(|p| !p.documents.is_empty());
                    changed |= !emptied;
                    let parsed = match &previous {
                        Some(p) if emptied => Err(format!(
                            "the file is empty; its {} policy document(s) stay in force until it is written or removed",
                            p.documents.len()
                        )),
                        _ => parse_documents(&content),
                    };
                    match parsed {
                        Ok(documents) => {
                            seen.insert(path.clone(), FileEntry { content, documents });
                        }
                        Err(message) => {
                            let kept = previous.as_ref().is_some_and(|p| !p.documents.is_empty());
                            report.problems.push(LoadProblem {
                                location: path.display().to_string(),
                                message,
                                kept_last_good: kept,
                            });
                            // Remember the bad content so it is not re-parsed until it changes.
                            let documents = previous.map(|p| p.documents).unwrap_or_default();
                            seen.insert(path.clone(), FileEntry { content, documents });
                        }
                    }
                }
            }
        }
        if !self.files.is_empty() {
            changed = true; // some files disappeared
        }
        changed |= self.policies.values().any(|p| p.retry);
        // A secret file (HMAC key, introspection client secret) changed: recompile its policies.
        for entry in self.policies.values_mut() {
            if entry
                .secret_files
                .iter()
                .any(|(path, digest)| file_digest(path).as_ref() != Some(digest))
            {
                entry.document = None;
                entry.secret_files.clear();
                changed = true;
            }
        }
        self.files = seen;
        if !changed {
            return (None, report);
        }
        self.loaded_once = true;
        report.changed = true;

        // 2. Collect documents by policy id (first file in sorted order wins a duplicate id).
        let mut documents: BTreeMap<Arc<str>, (PathBuf, usize, PolicyDocument)> = BTreeMap::new();
        let mut paths: Vec<&PathBuf> = self.files.keys().collect();
        paths.sort();
        for path in paths {
            for (index, doc) in &self.files[path].documents {
                let namespace = doc
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                let id: Arc<str> = format!("{namespace}/{}", doc.metadata.name).into();
                if let Some((other, other_index, _)) = documents.get(&id) {
                    report.problems.push(LoadProblem {
                        location: format!("{} document {index}", path.display()),
                        message: format!(
                            "policy {id} is already defined in {} document {other_index}; ignored",
                            other.display()
                        ),
                        kept_last_good: false,
                    });
                    continue;
                }
                documents.insert(id, (path.clone(), *index, doc.clone()));
            }
        }

        // 3. Compile what changed; keep last good versions on failure.
        self.policies.retain(|id, _| documents.contains_key(id));
        // New policies get their age in file order (path, then document): the older of two
        // keeps a contested host or route, as the older object does in Kubernetes.
        let mut in_file_order: Vec<_> = documents.iter().collect();
        in_file_order.sort_by(|a, b| (&(a.1).0, (a.1).1).cmp(&(&(b.1).0, (b.1).1)));
        for (id, (path, index, doc)) in in_file_order {
            let value = serde_json::to_value(doc).unwrap_or_default();
            let next_order = &mut self.next_order;
            let entry = self.policies.entry(id.clone()).or_insert_with(|| {
                *next_order += 1;
                PolicyEntry {
                    order: *next_order,
                    document: None,
                    compiled: None,
                    failed: None,
                    retry: false,
                    secret_files: Vec::new(),
                }
            });
            if entry.document.as_ref() == Some(&value)
                || (entry.failed.as_ref() == Some(&value) && !entry.retry)
            {
                continue;
            }
            let secrets = FileSecrets::new(path.parent().map(Path::to_path_buf));
            let ctx = CompileContext {
                key_sources: &self.key_sources,
                secrets: &secrets,
            };
            let namespace = doc.metadata.namespace.as_deref().unwrap_or("default");
            let compiled = compile(namespace, &doc.metadata.name, &doc.spec, &ctx)
                .and_then(|policy| {
                    if policy.is_targeted() {
                        return Err(CompileError {
                            problems: vec![Problem {
                                field: "spec.targetRefs".into(),
                                message: "targetRefs attach to Gateway API objects, which only Kubernetes mode reads; in policy files use match.hosts, match.paths and match.methods".into(),
                                kind: ProblemKind::InvalidSpec,
                            }],
                        });
                    }
                    Ok(policy)
                });
            match compiled {
                Ok(policy) => {
                    entry.compiled = Some(Arc::new(policy));
                    entry.document = Some(value);
                    entry.secret_files = secrets.files();
                    entry.failed = None;
                    entry.retry = false;
                }
                Err(error) => {
                    entry.retry = error.reason() == "SecretNotFound";
                    entry.failed = Some(value);
                    report.problems.push(LoadProblem {
                        location: format!("{} document {index} ({id})", path.display()),
                        message: error.to_string(),
                        kept_last_good: entry.compiled.is_some(),
                    });
                }
            }
        }

        // 4. Build the snapshot, oldest policies first. One that does not compile (and has no
        // last good version) still holds its hosts.
        let mut ordered: Vec<(u64, Claimant)> = self
            .policies
            .iter()
            .filter_map(|(id, e)| {
                let claimant = match (&e.compiled, &e.failed) {
                    (Some(policy), _) => Claimant::Serving(policy.clone()),
                    // targetRefs: refused in files, and never a claim on every host.
                    (None, Some(failed))
                        if failed["spec"]["targetRefs"]
                            .as_array()
                            .is_some_and(|t| !t.is_empty()) =>
                    {
                        return None;
                    }
                    (None, Some(failed)) => {
                        let hosts: Vec<String> = failed["spec"]["match"]["hosts"]
                            .as_array()
                            .map(|hosts| {
                                hosts
                                    .iter()
                                    .filter_map(|h| h.as_str().map(str::to_owned))
                                    .collect()
                            })
                            .unwrap_or_default();
                        Claimant::failing(id.clone(), &hosts)
                    }
                    (None, None) => return None,
                };
                Some((e.order, claimant))
            })
            .collect();
        ordered.sort_by_key(|(order, _)| *order);
        let (snapshot, conflicts) = Snapshot::build_claimants(
            ordered.into_iter().map(|(_, c)| c).collect(),
            self.settings.clone(),
        );
        report.policies = snapshot.len();
        report.conflicts = conflicts;
        (Some(snapshot), report)
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    std::fs::read(path).map_err(|e| format!("cannot read: {e}"))
}

/// Logs a reload's problems and conflicts.
pub fn log_report(report: &LoadReport) {
    for problem in &report.problems {
        tracing::error!(location = %problem.location, kept_last_good = problem.kept_last_good,
            error = %problem.message, "policy not loaded");
    }
    for conflict in &report.conflicts {
        tracing::error!(policy = %conflict.policy, holder = %conflict.holder, host = %conflict.host,
            path = %conflict.path, serving = conflict.keeps_serving(), "policy rejected: {conflict}");
    }
    if report.changed {
        tracing::info!(
            policies = report.policies,
            problems = report.problems.len(),
            conflicts = report.conflicts.len(),
            duration_ms = report.duration.as_secs_f64() * 1000.0,
            "policies loaded"
        );
    }
}

/// Runs the loader: an initial load, then a reload after every change to the watched paths
/// (debounced) and every `poll` as a safety net. Returns the task handle.
pub fn spawn_watch(
    mut loader: FileLoader,
    shared: Arc<SharedSnapshot>,
    poll: Duration,
    on_reload: impl Fn(&LoadReport) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = notify_watcher(loader.paths(), tx);
    tokio::spawn(async move {
        loop {
            // File I/O and compilation run on the blocking pool, off the request threads.
            let started = std::time::Instant::now();
            // On a thread of its own at the lowest priority: with the CPUs busy, requests go
            // first and the reload takes longer, instead of requests queueing behind it.
            let (done, reloaded) = tokio::sync::oneshot::channel();
            // Compiling starts key refresh tasks: the thread needs the runtime's context.
            let runtime = tokio::runtime::Handle::current();
            let spawned = std::thread::Builder::new()
                .name("policy-reload".into())
                .spawn(move || {
                    let _runtime = runtime.enter();
                    crate::priority::nice_for_current_thread("the policy reload");
                    let (snapshot, report) = loader.reload();
                    let _ = done.send((loader, snapshot, report));
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the policy reload; policies are no longer watched");
                return;
            }
            let Ok((returned, snapshot, mut report)) = reloaded.await else {
                tracing::error!(
                    "policy reload panicked; policies stay as they are and are no longer watched"
                );
                return;
            };
            loader = returned;
            if let Some(snapshot) = snapshot {
                shared.publish(snapshot);
            }
            report.duration = started.elapsed();
            log_report(&report);
            on_reload(&report);
            // Wait for a change event (then for the burst to settle) or the poll interval.
            let event = tokio::time::timeout(poll, rx.recv()).await;
            if matches!(event, Ok(None)) {
                // The watcher is gone; keep polling.
                watcher = None;
                tokio::time::sleep(poll).await;
            } else if event.is_ok() {
                settle(&mut rx).await;
            }
            let _ = &watcher;
        }
    })
}

/// A burst of writes is over once no change has been seen for this long.
const SETTLE_QUIET: Duration = Duration::from_millis(150);
/// A writer that never pauses still gets its changes loaded this long after its first one.
const SETTLE_AT_MOST: Duration = Duration::from_secs(2);

/// Waits until the watched paths have been quiet for [`SETTLE_QUIET`] (at most
/// [`SETTLE_AT_MOST`]): a reload that starts while a writer rewrites many files would read some
/// of them half written, and run again for the rest.
///
/// Changes are looked at after each quiet period, not waited on: a writer rewriting a thousand
/// files sends thousands of events, and waking a runtime worker for each would cost the
/// requests more than the reload does.
async fn settle(rx: &mut tokio::sync::mpsc::Receiver<()>) {
    let deadline = tokio::time::Instant::now() + SETTLE_AT_MOST;
    loop {
        let now = tokio::time::Instant::now();
        tokio::time::sleep_until((now + SETTLE_QUIET).min(deadline)).await;
        let mut changed = false;
        while rx.try_recv().is_ok() {
            changed = true;
        }
        if !changed || tokio::time::Instant::now() >= deadline {
            return;
        }
    }
}

fn notify_watcher(
    paths: &[PathBuf],
    tx: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let mut lowered = false;
    let handler = move |event: notify::Result<notify::Event>| {
        // The watcher's thread wakes for every event of every file a writer touches (and for
        // every file a reload opens): a thousand files rewritten cost it about 100 ms of CPU
        // here. That must not be taken from requests.
        if !lowered {
            crate::priority::nice_for_current_thread("the policy file watcher");
            lowered = true;
        }
        // Reading the files is an event too (open, close without writing): reacting to those
        // would make every reload cause the next one.
        if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            let _ = tx.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "file watching unavailable; polling only");
            return None;
        }
    };
    for path in paths {
        // Watch directories, and the directory of a file (editors replace files by rename).
        let target = if path.is_dir() {
            path.clone()
        } else {
            path.parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        };
        let target = if target.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            target
        };
        if let Err(e) = watcher.watch(&target, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(path = %target.display(), error = %e, "cannot watch; polling only");
        }
    }
    Some(watcher)
}

#[cfg(test)]
mod tests;

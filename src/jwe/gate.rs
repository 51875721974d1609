//! Bounds the private-key work of decrypting tokens. An RSA-OAEP or ECDH-ES decryption costs
//! one private-key operation (about a millisecond for RSA-2048, more for larger keys), and a
//! token that was never seen before cannot come from the verified-token cache: a client that
//! sends a flood of fresh (or forged) encrypted tokens could otherwise keep every runtime
//! worker busy with them, and signed tokens would wait behind.
//!
//! So those decryptions run on threads of their own, `concurrency` of them (half the CPUs by
//! default, `--decryption-concurrency`), at the lowest scheduling priority (the idle class,
//! [`crate::priority`]): when the CPUs are busy, the workers that judge requests run first and
//! the decryptions wait. At most [`QUEUED_PER_PERMIT`] × `concurrency` tokens wait for a
//! decryption thread; beyond that a check is answered 503 `decryption_overloaded` at once, and
//! a waiting token whose check was abandoned is never decrypted. Symmetric key management
//! (`A128KW`, `A256KW`, `dir`) costs microseconds and is not gated.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};

use super::JweError;

/// A decryption waiting for a thread.
type Job = Box<dyn FnOnce() + Send>;

/// Decryptions that may wait per one that runs.
pub const QUEUED_PER_PERMIT: usize = 64;

/// The process's gate.
pub struct Gate {
    jobs: mpsc::SyncSender<Job>,
    concurrency: usize,
    /// Jobs sent and not yet started.
    queued: Arc<AtomicUsize>,
    max_queued: usize,
}

static GATE: OnceLock<Gate> = OnceLock::new();

/// Half the CPUs, at least one.
pub fn default_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Sets the concurrency (0: [`default_concurrency`]) before the first decryption; `false` if
/// the gate was already in use (it keeps its settings).
pub fn configure(concurrency: usize) -> bool {
    GATE.set(Gate::new(concurrency)).is_ok()
}

/// The process's gate, configured by [`configure`] or with the defaults.
pub fn gate() -> &'static Gate {
    GATE.get_or_init(|| Gate::new(0))
}

impl Gate {
    /// Starts `concurrency` decryption threads (0: [`default_concurrency`]).
    pub fn new(concurrency: usize) -> Gate {
        let concurrency = if concurrency == 0 {
            default_concurrency()
        } else {
            concurrency
        };
        let max_queued = concurrency.saturating_mul(QUEUED_PER_PERMIT);
        let (jobs, receiver) = mpsc::sync_channel::<Job>(max_queued);
        let receiver = Arc::new(Mutex::new(receiver));
        let queued = Arc::new(AtomicUsize::new(0));
        for i in 0..concurrency {
            let (receiver, queued) = (receiver.clone(), queued.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("jwe-decrypt-{i}"))
                .spawn(move || {
                    // Requests first: a busy CPU runs the request workers before decryptions.
                    crate::priority::lowest_for_current_thread("decryption");
                    loop {
                        let job = {
                            let receiver = receiver
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            receiver.recv()
                        };
                        let Ok(job) = job else { return };
                        queued.fetch_sub(1, Ordering::AcqRel);
                        job();
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a decryption thread");
            }
        }
        Gate {
            jobs,
            concurrency,
            queued,
            max_queued,
        }
    }

    /// Decryptions that may run at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Decryptions waiting for a thread now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Runs `work` on a decryption thread when one is free; [`JweError::Overloaded`] at once
    /// when the queue is full. If the caller stops waiting (the check was abandoned) before a
    /// thread takes the job, the work is skipped.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, JweError> + Send + 'static,
    ) -> Result<T, JweError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            if !done.is_closed() {
                let _ = done.send(work());
            }
        });
        self.queued.fetch_add(1, Ordering::AcqRel);
        if self.jobs.try_send(job).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(JweError::Overloaded(self.max_queued));
        }
        // A panic inside the decryption (the sender dropped unsent) decides nothing: the
        // token is refused.
        result.await.unwrap_or(Err(JweError::Failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    async fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_the_concurrency_runs_and_a_full_queue_is_refused_at_once() {
        let gate = Arc::new(Gate::new(1));
        assert_eq!(gate.concurrency(), 1);
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let spawn = |gate: &Arc<Gate>| {
            let (gate, held, running, most) =
                (gate.clone(), held.clone(), running.clone(), most.clone());
            tokio::spawn(async move {
                gate.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let _ = held.lock().map(|rx| rx.recv());
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                })
                .await
            })
        };
        // One runs (blocked until released), then 64 wait: the queue is full.
        let mut tasks = vec![spawn(&gate)];
        wait_until("the first runs", || running.load(Ordering::SeqCst) == 1).await;
        tasks.extend((0..QUEUED_PER_PERMIT).map(|_| spawn(&gate)));
        wait_until("64 wait", || gate.queued() == QUEUED_PER_PERMIT).await;
        let refused = gate.run(|| Ok(())).await;
        assert!(
            matches!(refused, Err(JweError::Overloaded(64))),
            "{refused:?}"
        );
        for _ in 0..=QUEUED_PER_PERMIT {
            release.send(()).expect("release");
        }
        for task in tasks {
            assert!(task.await.expect("task").is_ok());
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
        assert_eq!(gate.queued(), 0);
    }

    #[tokio::test]
    async fn an_abandoned_check_is_never_decrypted() {
        let gate = Gate::new(1);
        let (release, held) = std::sync::mpsc::channel::<()>();
        let first = gate.run(move || {
            let _ = held.recv();
            Ok(())
        });
        tokio::pin!(first);
        // The first takes the thread; a second waits, and its check is abandoned.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut first)
                .await
                .is_err()
        );
        let ran = Arc::new(AtomicUsize::new(0));
        let second = {
            let ran = ran.clone();
            gate.run(move || {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        };
        assert!(
            tokio::time::timeout(Duration::from_millis(20), second)
                .await
                .is_err()
        );
        release.send(()).expect("release");
        assert!(first.await.is_ok());
        wait_until("the queue drains", || gate.queued() == 0).await;
        // A third runs after the abandoned one was skipped.
        assert!(gate.run(|| Ok(())).await.is_ok());
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }
}

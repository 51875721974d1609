//! Bounds the private-key work of decrypting tokens. An RSA-OAEP or ECDH-ES decryption costs
//! one private-key operation (about a millisecond for RSA-2048, more for larger keys), and a
//! token that was never seen before cannot come from the verified-token cache: a client that
//! sends a flood of fresh (or forged) encrypted tokens could otherwise keep every runtime
//! worker busy with them, and signed tokens would wait behind.
//!
//! So those decryptions run on the blocking pool, at most `concurrency` at a time (half the
//! CPUs by default, `--decryption-concurrency`), and at most [`QUEUED_PER_PERMIT`] ×
//! `concurrency` wait for their turn; beyond that a check is answered 503
//! `decryption_overloaded` at once. The runtime workers keep judging everything else.
//! Symmetric key management (`A128KW`, `A256KW`, `dir`) costs microseconds and is not gated.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

use super::JweError;

/// Decryptions that may wait per one that runs.
pub const QUEUED_PER_PERMIT: usize = 64;

/// The process's gate.
pub struct Gate {
    permits: Semaphore,
    concurrency: usize,
    queued: AtomicUsize,
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

/// Leaves the queue when the wait ends, whether the decryption ran or the check was dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gate {
    pub fn new(concurrency: usize) -> Gate {
        let concurrency = if concurrency == 0 {
            default_concurrency()
        } else {
            concurrency
        };
        Gate {
            permits: Semaphore::new(concurrency),
            concurrency,
            queued: AtomicUsize::new(0),
            max_queued: concurrency.saturating_mul(QUEUED_PER_PERMIT),
        }
    }

    /// Decryptions that may run at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Decryptions waiting for their turn now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Runs `work` on the blocking pool when its turn comes; [`JweError::Overloaded`] at once
    /// when the queue is full.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, JweError> + Send + 'static,
    ) -> Result<T, JweError> {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(JweError::Overloaded(self.max_queued));
        }
        let waiting = Waiting(&self.queued);
        // The semaphore is never closed.
        let Ok(permit) = self.permits.acquire().await else {
            return Err(JweError::Overloaded(self.max_queued));
        };
        drop(waiting);
        let result = tokio::task::spawn_blocking(work).await;
        drop(permit);
        // A panic inside the decryption decides nothing: the token is refused.
        result.unwrap_or(Err(JweError::Failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_the_concurrency_runs_and_a_full_queue_is_refused_at_once() {
        let gate = Arc::new(Gate::new(1));
        assert_eq!(gate.concurrency(), 1);
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Arc::new(std::sync::Mutex::new(held));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        // One runs (blocked until released) and 64 wait: the queue is then full.
        for _ in 0..=QUEUED_PER_PERMIT {
            let (gate, held, running, most) =
                (gate.clone(), held.clone(), running.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                gate.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let _ = held.lock().map(|rx| rx.recv());
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                })
                .await
            }));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while gate.queued() < QUEUED_PER_PERMIT {
            assert!(std::time::Instant::now() < deadline, "{}", gate.queued());
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
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
    async fn a_dropped_check_leaves_the_queue() {
        let gate = Gate::new(1);
        let (release, held) = std::sync::mpsc::channel::<()>();
        let first = gate.run(move || {
            let _ = held.recv();
            Ok(())
        });
        tokio::pin!(first);
        // Start the first (it holds the permit), then give up on a second while it waits.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), &mut first)
                .await
                .is_err()
        );
        let second = gate.run(|| Ok(()));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), second)
                .await
                .is_err()
        );
        assert_eq!(gate.queued(), 0);
        release.send(()).expect("release");
        assert!(first.await.is_ok());
    }
}

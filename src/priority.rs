//! Work that must never delay a request runs on threads of its own at the lowest priority.
//!
//! Decryptions of fresh encrypted tokens run in Linux's `SCHED_IDLE` class, not only at nice
//! 19: a waking request worker preempts an idle-class thread at once, where a nice-19 thread
//! keeps its CPU for part of a slice. During a flood of fresh JWEs that took the p99 of signed
//! checks from 14× their p99 alone to 3.7× (`cargo bench --bench load`, `docs/benchmarks.md`).
//! An idle-class thread gets almost no CPU while requests keep the CPUs busy, which is what a
//! decryption queue should do (it fills, and further tokens are refused 503).
//!
//! The policy reload stays at nice 19: a rebuild must finish even under sustained load, and
//! in the idle class it measured no better for the requests' p99.

/// Runs the calling thread at nice 19, the lowest priority of the normal class; `what` names
/// the work for the log line when it cannot.
pub fn nice_for_current_thread(what: &str) {
    if let Err(e) =
        thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)
    {
        tracing::debug!(error = ?e, "{what} runs at normal priority");
    }
}

/// Lowers the calling thread's scheduling priority as far as it goes (the idle class, else
/// [`nice_for_current_thread`]); `what` names the work for the log line when it cannot.
pub fn lowest_for_current_thread(what: &str) {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
            set_thread_priority_and_policy, thread_native_id,
        };
        if set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
        )
        .is_ok()
        {
            return;
        }
    }
    nice_for_current_thread(what);
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};

    #[test]
    fn the_thread_runs_in_the_idle_class() {
        let policy = std::thread::spawn(|| {
            super::lowest_for_current_thread("a test");
            thread_priority::thread_schedule_policy()
        })
        .join()
        .expect("thread");
        assert_eq!(
            policy.expect("policy"),
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle)
        );
        // Only that thread: the caller keeps its class.
        assert_eq!(
            thread_priority::thread_schedule_policy().expect("policy"),
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other)
        );
    }
}

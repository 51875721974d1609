//! Kubernetes mode: every replica watches `JwtPolicy` objects (and the Secrets they reference)
//! and turns them into the same immutable snapshot the file mode publishes.
//!
//! ```text
//! watcher(JwtPolicy) ─┐                      ┌─► Snapshot ─► SharedSnapshot (every replica)
//!                     ├─► Change ─► index ───┤
//! watcher(Secret) ────┘  (mpsc)   (one task) └─► per-policy state ─► status (Lease holder only)
//! ```
//!
//! Only this module knows kube's client and runtime; the engine and the gRPC layer never see
//! Kubernetes types.

pub mod admission;
pub mod fetch;
pub mod index;
pub mod leader;
pub mod replicas;
pub mod status;
pub mod watch;
pub mod webhook;

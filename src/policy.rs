//! Policies: the document shape (`spec`), compilation into immutable [`Policy`] values
//! (`compile`), request matching primitives (`route`), the snapshot every check reads
//! (`snapshot`), and loading from files (`files`).

pub mod compile;
pub mod files;
pub mod gateway;
pub mod owners;
pub mod route;
pub mod snapshot;
pub mod spec;
pub mod tenants;

pub use compile::{
    CompileContext, CompileError, DenyConfig, FileSecrets, Forward, Issuer, IssuerRef,
    MetadataClaims, Policy, Problem, ProblemKind, Rule, SecretSource, TokenLocation, compile,
};
pub use owners::HostDelegations;
pub use snapshot::{
    Claimant, Conflict, ConflictKind, DefaultAction, ResourceEntry, SharedSnapshot, Snapshot,
    SnapshotSettings,
};
pub use spec::{DenyDetail, JwtPolicySpec, PolicyDocument};

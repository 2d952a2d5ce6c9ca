//! Kervan's protocol: everything two nodes must agree on, with no I/O and no async runtime.
//!
//! - [`ids`]: parks, documents, devices, records, change hashes, the federation id, actors.
//! - [`records`]: the schema of every record, field validation, and the mapping to and from
//!   Automerge maps.
//! - [`envelope`]: the signed change and the bundle, encoded canonically and decoded safely.
//! - [`genesis`]: park cards, the federation's genesis and a ledger's first change.
//! - [`rules`]: `check(change, context) -> Verdict`, the same verdict on every node.
//! - [`sync`]: the anti-entropy messages and what one node must send another.
//! - [`pack`]: a sync page's run of changes of one document, taken apart into fields and op
//!   columns and deflated.
//! - [`vouch`]: which vouched changes of a batch their vouchers' signatures authenticate.

pub mod envelope;
pub mod genesis;
pub mod ids;
pub mod pack;
pub mod records;
pub mod rules;
pub mod sync;
pub mod vouch;

pub use envelope::{Bundle, DecodeError, Proof, SignedChange, Verified, VerifyError};
pub use genesis::{
    GenesisError, GenesisInfo, ParkCard, device_proof, genesis_change, ledger_root_change,
    verify_device_proof,
};
pub use ids::{Actor, DeviceKey, DocId, FederationId, Hash, IdError, ParkId, RecordId};
pub use rules::{
    CausalInfo, Checked, Context, Limits, ObjKey, ObjectInfo, PendingReason, Registration,
    RejectReason, Touched, Verdict, check, check_verified,
};

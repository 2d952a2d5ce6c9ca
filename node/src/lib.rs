//! A Kervan park node: the store, the replica with its query index, and the data directory.
//!
//! - [`store`]: sled trees behind the `Store` trait.
//! - [`actor`]: the replica's own thread, reached through a bounded channel.
//! - [`api`]: the local HTTP API and its OpenAPI document; [`metrics`]: `/metrics`.
//! - [`replica`]: owns the Automerge documents and the store; checks, applies, indexes.
//! - [`query`]: the query index and its filters, sorting and paging.
//! - [`config`]: the node's TOML configuration.
//! - [`data_dir`]: the data directory: device key, API token, config, store.
//! - [`sample`]: seeded sample records for the demo and tests.
//! - [`demo`]: `kervan demo`, a local federation with sample data.

pub mod actor;
pub mod api;
pub mod client;
pub mod config;
pub mod data_dir;
pub mod demo;
pub mod metrics;
pub mod query;
pub mod replica;
pub mod sample;
pub mod store;

pub use config::Config;
pub use data_dir::DataDir;
pub use replica::{Collection, Identity, Options, Outcome, Replica, ReplicaError, Report};
pub use store::{SledStore, Store, StoreError};

/// The libp2p peer id of a device: the identity multihash of its protobuf-encoded ed25519
/// public key, in base58. The device key is the node's network identity.
pub fn peer_id(key: &kervan_protocol::DeviceKey) -> String {
    // PublicKey { Type: Ed25519 = 1, Data: 32 bytes } as protobuf, then multihash identity.
    let mut bytes = vec![0x00, 36, 0x08, 0x01, 0x12, 32];
    bytes.extend_from_slice(&key.0);
    bs58::encode(bytes).into_string()
}

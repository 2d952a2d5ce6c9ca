//! A Kervan park node: the store, the replica with its query index, and the data directory.
//!
//! - [`store`]: sled trees behind the `Store` trait.
//! - [`actor`]: the replica's own thread, reached through a bounded channel.
//! - [`api`]: the local HTTP API and its OpenAPI document; [`metrics`]: `/metrics`.
//! - [`net`]: the net actor, sole owner of the libp2p swarm; [`node`]: a running node.
//! - [`replica`]: owns the Automerge documents and the store; checks, applies, indexes.
//! - [`query`]: the query index and its filters, sorting and paging.
//! - `snapshots`: the thread that saves and writes documents' snapshots.
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
mod meta;
pub mod metrics;
pub mod net;
pub mod node;
pub mod query;
pub mod replica;
pub mod sample;
mod snapshots;
pub mod store;

pub use config::Config;
pub use data_dir::DataDir;
pub use replica::{
    Collection, Identity, Options, Outcome, Replica, ReplicaError, Report, Starting,
};
pub use store::{SledStore, Store, StoreError};

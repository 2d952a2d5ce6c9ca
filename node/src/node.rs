//! A running node: the replica actor, the net actor and the API server of one data directory,
//! started together and stopped together. `kervan run`, `kervan demo` and the test harness
//! all run nodes through this.

use std::net::SocketAddr;
use std::sync::Arc;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, watch};

use crate::actor::{self, ReplicaHandle};
use crate::api::{self, ApiState, Metrics};
use crate::config::Config;
use crate::data_dir::{DataDir, DataDirError};
use crate::net::{Net, NetConfig, NetError, NetHandle, OUTBOX_CAPACITY};
use crate::replica::ReplicaError;

/// Largest bundle the API takes in one upload: 256 MiB.
pub const MAX_BUNDLE_BYTES: usize = 256 << 20;

/// Why a node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error("cannot listen for the API on {addr}: {source}")]
    Api {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Config(String),
    #[error("the replica thread panicked")]
    Panicked,
    #[error("the node stopped after a storage failure")]
    Fatal,
}

/// What may be set for one run instead of the config (runtime knobs).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub api: Option<SocketAddr>,
    pub listen: Option<Vec<Multiaddr>>,
    pub bootstrap: Option<Vec<Multiaddr>>,
    pub sync_interval: Option<std::time::Duration>,
}

/// A node that runs.
#[derive(Debug)]
pub struct RunningNode {
    pub park: kervan_protocol::ParkId,
    pub api_addr: SocketAddr,
    pub peer_id: PeerId,
    pub p2p_addrs: Vec<Multiaddr>,
    pub replica: ReplicaHandle,
    pub net: NetHandle,
    pub token: String,
    dir: DataDir,
    shutdown: watch::Sender<bool>,
    fatal: watch::Receiver<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    net_task: tokio::task::JoinHandle<()>,
    replica_thread: std::thread::JoinHandle<Result<(), ReplicaError>>,
}

fn parse_addrs(items: &[String]) -> Result<Vec<Multiaddr>, NodeError> {
    items
        .iter()
        .map(|a| {
            a.parse()
                .map_err(|e| NodeError::Config(format!("{a:?} is not a multiaddr: {e}")))
        })
        .collect()
}

/// Writes a file whole or not at all (a temporary file renamed over it): whoever sees it
/// exist reads all of it.
fn write(path: std::path::PathBuf, text: &str) -> Result<(), NodeError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| NodeError::Io {
            path: path.display().to_string(),
            source,
        })
}

/// Starts a node of a data directory that has joined a federation.
pub async fn start(dir: &DataDir, config: Config, o: Overrides) -> Result<RunningNode, NodeError> {
    let mut starting = dir.open_starting()?;
    let federation = starting.federation();
    let (outbox_tx, outbox_rx) = mpsc::channel(OUTBOX_CAPACITY);
    starting.set_outbox(outbox_tx);
    let actor::Spawned {
        handle,
        thread: replica_thread,
        loaded,
    } = actor::spawn(starting);
    let secret = dir.signing_key()?.to_bytes();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (fatal_tx, fatal) = watch::channel(false);
    let net_config = NetConfig {
        listen: match o.listen {
            Some(l) => l,
            None => parse_addrs(&config.network.listen)?,
        },
        bootstrap: match o.bootstrap {
            Some(b) => b,
            None => parse_addrs(&config.network.bootstrap)?,
        },
        sync_interval: o.sync_interval.unwrap_or(config.network.sync_interval),
    };

    // The API first: it answers queries from the index while the documents still load.
    let api_addr = o.api.unwrap_or(config.api.listen);
    let listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .map_err(|source| NodeError::Api {
            addr: api_addr,
            source,
        })?;
    let api_addr = listener.local_addr().map_err(|source| NodeError::Api {
        addr: api_addr,
        source,
    })?;
    let token = dir.api_token()?;
    let net_slot = Arc::new(std::sync::OnceLock::new());
    let state = ApiState {
        replica: handle.clone(),
        net: net_slot.clone(),
        token: Arc::from(token.as_str()),
        metrics: Arc::new(Metrics::default()),
        fatal: fatal_tx.clone(),
        max_body: config.api.max_body_bytes,
        max_bundle: MAX_BUNDLE_BYTES,
    };
    let mut stop = shutdown_rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, api::router(state))
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    });
    let failure = match loaded.await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(NodeError::DataDir(dir.damaged(e.into()))),
        Err(_) => Some(NodeError::Panicked),
    };
    if let Some(e) = failure {
        return Err(abort(&shutdown, server, e).await);
    }
    let started = Net::start(
        secret,
        federation,
        net_config,
        handle.clone(),
        outbox_rx,
        shutdown_rx,
        fatal_tx,
    )
    .await;
    let (net, net_handle) = match started {
        Ok(n) => n,
        Err(e) => return Err(abort(&shutdown, server, e.into()).await),
    };
    let net_task = tokio::spawn(net.run());
    let p2p_addrs = net_handle.listening().await;
    let _ = net_slot.set(net_handle.clone());
    let p2p_text: Vec<String> = p2p_addrs.iter().map(ToString::to_string).collect();
    let written = write(dir.path("api.addr"), &api_addr.to_string())
        .and_then(|()| write(dir.path("p2p.addr"), &p2p_text.join("\n")));
    if let Err(e) = written {
        // The shutdown signal stops the net actor too.
        let e = abort(&shutdown, server, e).await;
        let _ = net_task.await;
        return Err(e);
    }
    tracing::info!(park = %config.park, %api_addr, peer = %net_handle.peer_id, "node running");
    Ok(RunningNode {
        park: config.park,
        api_addr,
        peer_id: net_handle.peer_id,
        p2p_addrs,
        replica: handle,
        net: net_handle,
        token,
        dir: dir.clone(),
        shutdown,
        fatal,
        server,
        net_task,
        replica_thread,
    })
}

/// Stops the API server of a start that failed, and answers its error.
async fn abort(
    shutdown: &watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    e: NodeError,
) -> NodeError {
    let _ = shutdown.send(true);
    let _ = server.await;
    e
}

impl RunningNode {
    /// Resolves when a storage failure asks the node to stop.
    pub async fn failed(&mut self) {
        let _ = self.fatal.wait_for(|f| *f).await;
    }

    /// Stops the API and the network, then lets the replica write its snapshots.
    pub async fn stop(self) -> Result<(), NodeError> {
        let failed = *self.fatal.borrow();
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
        let _ = self.net_task.await;
        drop(self.replica);
        drop(self.net);
        let thread = self.replica_thread;
        let joined = tokio::task::spawn_blocking(move || thread.join()).await;
        let _ = std::fs::remove_file(self.dir.path("api.addr"));
        let _ = std::fs::remove_file(self.dir.path("p2p.addr"));
        let flushed = joined
            .map_err(|_| NodeError::Panicked)?
            .map_err(|_| NodeError::Panicked)?;
        flushed?;
        if failed {
            return Err(NodeError::Fatal);
        }
        Ok(())
    }
}

//! The replica actor: one thread owns the replica (the Automerge documents and the sled store,
//! both synchronous and CPU-bound); async tasks reach it through a bounded channel, each
//! command carrying its own reply channel.

use tokio::sync::{mpsc, oneshot};

use crate::replica::Replica;
use crate::store::SledStore;

/// Commands that may wait for the replica before senders are held back.
pub const COMMAND_CAPACITY: usize = 256;

/// The longest changes received from peers stay unflushed while the replica is busy.
pub const MAX_UNFLUSHED: std::time::Duration = std::time::Duration::from_millis(200);

type Job = Box<dyn FnOnce(&mut Replica<SledStore>) + Send>;

/// The replica actor has stopped (shut down, or a storage failure ended it).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the replica has stopped")]
pub struct Stopped;

/// A cheap, cloneable way to reach the replica.
#[derive(Debug, Clone)]
pub struct ReplicaHandle {
    tx: mpsc::Sender<Job>,
}

impl ReplicaHandle {
    /// Runs `f` on the replica's thread and returns its result.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Replica<SledStore>) -> T + Send + 'static,
    ) -> Result<T, Stopped> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |r| {
            // The caller may have gone (a client hung up); the work is done all the same.
            let _ = reply.send(f(r));
        });
        self.tx.send(job).await.map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }
}

/// Starts the replica's thread. It runs until every handle is dropped, then snapshots and
/// flushes the store, and returns the outcome of that final write.
pub fn spawn(
    mut replica: Replica<SledStore>,
) -> (
    ReplicaHandle,
    std::thread::JoinHandle<Result<(), crate::ReplicaError>>,
) {
    let (tx, mut rx) = mpsc::channel::<Job>(COMMAND_CAPACITY);
    let thread = std::thread::Builder::new()
        .name("replica".into())
        .spawn(move || {
            while let Some(job) = rx.blocking_recv() {
                job(&mut replica);
                // Changes received from peers are flushed once nothing else waits, so a burst
                // of gossip costs one flush and no query waits for the disk — and at the latest
                // after MAX_UNFLUSHED, however busy the replica is.
                if replica
                    .unflushed_for()
                    .is_some_and(|waited| rx.is_empty() || waited >= MAX_UNFLUSHED)
                {
                    if let Err(e) = replica.flush_received() {
                        tracing::error!(error = %e, "cannot flush received changes: stopping");
                        return Err(e);
                    }
                }
            }
            tracing::info!("replica stopping: writing snapshots");
            replica.snapshot_all()
        })
        .expect("the replica thread starts");
    (ReplicaHandle { tx }, thread)
}

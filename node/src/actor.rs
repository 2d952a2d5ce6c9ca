//! The replica actor: one thread owns the replica (the Automerge documents and the sled store,
//! both synchronous and CPU-bound); async tasks reach it through a bounded channel, each
//! command carrying its own reply channel.
//!
//! At start the thread may get a replica whose ledgers' documents still load (a
//! [`Starting`]): queries ([`ReplicaHandle::query`]) are answered from its index meanwhile,
//! and the first other command waits until the documents are in place.

use tokio::sync::{mpsc, oneshot};

use crate::query::Index;
use crate::replica::{Replica, ReplicaError, Starting};
use crate::store::SledStore;

/// Commands that may wait for the replica before senders are held back.
pub const COMMAND_CAPACITY: usize = 256;

/// The longest changes received from peers stay unflushed while the replica is busy.
pub const MAX_UNFLUSHED: std::time::Duration = std::time::Duration::from_millis(200);

/// How long the replica waits with nothing to do before it applies the changes whose records
/// the index already holds to their documents ([`Replica::settle`]): a burst of gossip shares
/// one `apply_changes` per document, and no query waits behind it meanwhile.
pub const SETTLE_WHEN_IDLE: std::time::Duration = std::time::Duration::from_millis(10);

/// The longest changes wait to be applied to their documents while the replica is busy.
pub const MAX_UNSETTLED: std::time::Duration = std::time::Duration::from_millis(500);

/// While the documents load, how long the thread waits for them before it looks again for a
/// command: the longest a query then waits.
const LOADING_POLL: std::time::Duration = std::time::Duration::from_millis(1);

type Job = Box<dyn FnOnce(&mut Replica<SledStore>) + Send>;
type QueryJob = Box<dyn FnOnce(&Index) + Send>;

/// What the replica's thread is asked to run.
enum Command {
    /// Anything: waits for the documents at start.
    Replica(Job),
    /// A read of the query index only: answered at start while the documents load.
    Query(QueryJob),
}

/// The replica actor has stopped (shut down, or a storage failure ended it).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the replica has stopped")]
pub struct Stopped;

/// A cheap, cloneable way to reach the replica.
#[derive(Debug, Clone)]
pub struct ReplicaHandle {
    tx: mpsc::Sender<Command>,
}

impl ReplicaHandle {
    /// Runs `f` on the replica's thread and returns its result.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Replica<SledStore>) -> T + Send + 'static,
    ) -> Result<T, Stopped> {
        // The caller may have gone (a client hung up); the work is done all the same.
        self.ask(|reply| Command::Replica(Box::new(move |r| drop(reply.send(f(r))))))
            .await
    }

    /// Runs `f` on the query index, on the replica's thread, and returns its result. Unlike
    /// [`Self::call`], it does not wait for the documents to load at start.
    pub async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Index) -> T + Send + 'static,
    ) -> Result<T, Stopped> {
        self.ask(|reply| Command::Query(Box::new(move |index| drop(reply.send(f(index))))))
            .await
    }

    /// Sends the command `make` builds around a reply channel, and waits for the reply.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }
}

/// The replica's thread, as [`spawn`] starts it.
#[derive(Debug)]
pub struct Spawned {
    pub handle: ReplicaHandle,
    /// Runs until every handle is dropped, then snapshots and flushes the store, and returns
    /// the outcome of that final write.
    pub thread: std::thread::JoinHandle<Result<(), ReplicaError>>,
    /// Whether the documents loaded: an error (a damaged saved document) ends the thread.
    pub loaded: oneshot::Receiver<Result<(), ReplicaError>>,
}

/// Starts the replica's thread on a replica that may still be loading its documents.
pub fn spawn(starting: Starting<SledStore>) -> Spawned {
    let (tx, mut rx) = mpsc::channel::<Command>(COMMAND_CAPACITY);
    let (loaded_tx, loaded) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("replica".into())
        .spawn(move || {
            let mut starting = starting;
            let mut first = None;
            let mut open = true;
            loop {
                match rx.try_recv() {
                    Ok(Command::Query(q)) => q(starting.index()),
                    Ok(Command::Replica(job)) => {
                        first = Some(job);
                        break;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {
                        if starting.poll(LOADING_POLL) {
                            break;
                        }
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            // Times the wait for a command while changes wait to be applied.
            let timer = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a runtime with a timer and no I/O driver opens nothing that can fail");
            let mut replica = match starting.finish() {
                Ok(r) => {
                    tracing::info!("replica loaded");
                    let _ = loaded_tx.send(Ok(()));
                    r
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot load the replica: stopping");
                    // Nothing was written: every command so far was a query.
                    let _ = loaded_tx.send(Err(e));
                    return Ok(());
                }
            };
            // Whether anything but a query ran: if not, the snapshots the start read (or
            // wrote) are the replica's state, and the last step has nothing to write.
            let mut ran = first.is_some();
            if let Some(job) = first {
                job(&mut replica);
            }
            while open {
                // The answer to the last command has gone: the seal follows a write's.
                if let Err(e) = replica.seal_if_due() {
                    tracing::error!(error = %e, "cannot write the store's seal: stopping");
                    return Err(e);
                }
                if replica
                    .unflushed_for()
                    .is_some_and(|waited| rx.is_empty() || waited >= MAX_UNFLUSHED)
                {
                    // Changes received from peers are flushed once nothing else waits, so a
                    // burst of gossip costs one flush and no query waits for the disk — and
                    // at the latest after MAX_UNFLUSHED, however busy the replica is.
                    if let Err(e) = replica.flush_received() {
                        tracing::error!(error = %e, "cannot flush received changes: stopping");
                        return Err(e);
                    }
                }
                // Changes waiting to be applied to their documents are applied once no command
                // has come for SETTLE_WHEN_IDLE, and after MAX_UNSETTLED however busy it is.
                let next = match replica.deferred() {
                    None => Some(rx.blocking_recv()),
                    Some((waited, _)) if waited >= MAX_UNSETTLED => None,
                    Some(_) => timer
                        .block_on(async { tokio::time::timeout(SETTLE_WHEN_IDLE, rx.recv()).await })
                        .ok(),
                };
                let Some(next) = next else {
                    if let Err(e) = replica.settle() {
                        tracing::error!(error = %e, "cannot apply accepted changes: stopping");
                        return Err(e);
                    }
                    continue;
                };
                match next {
                    Some(Command::Replica(job)) => {
                        ran = true;
                        job(&mut replica);
                    }
                    Some(Command::Query(q)) => q(replica.index()),
                    None => open = false,
                }
            }
            if !ran {
                tracing::info!("replica stopping: nothing changed since the start");
                return Ok(());
            }
            tracing::info!("replica stopping: writing snapshots");
            replica.snapshot_all()
        })
        .expect("the replica thread starts");
    Spawned {
        handle: ReplicaHandle { tx },
        thread,
        loaded,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Drops the last handle and waits for the replica's thread to end cleanly.
    async fn stop(
        handle: ReplicaHandle,
        thread: std::thread::JoinHandle<Result<(), ReplicaError>>,
    ) {
        drop(handle);
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .expect("joined")
            .expect("no panic")
            .expect("final write");
    }

    /// A received change that makes a record is answered by the index at once and applied to
    /// its document once the replica has had nothing to do for a while.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn received_records_are_applied_once_the_replica_is_idle() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (_, dirs) = crate::demo::prepare(tmp.path(), 2, 1, 3).expect("prepare");
        let mut a = dirs[0].open_replica().expect("open");
        let before: std::collections::HashSet<Vec<u8>> = a.entries().into_iter().collect();
        let id = a
            .create(
                crate::Collection::Startups,
                None,
                &crate::sample::Sample::new(4).startup("KZ"),
            )
            .expect("create");
        let mut new = a.entries();
        new.retain(|e| !before.contains(e));
        assert_eq!(new.len(), 1);
        let Spawned {
            handle,
            thread,
            mut loaded,
        } = spawn(dirs[1].open_starting().expect("open"));
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            let old: Vec<Vec<u8>> = before.into_iter().collect();
            handle
                .call(move |r| r.ingest(old, "a").map(|_| ()))
                .await
                .expect("runs")
                .expect("catch up");
            handle
                .call(move |r| {
                    let reports = r.ingest_received(new, "a").expect("ingest");
                    (reports, r.deferred().map(|(_, n)| n))
                })
                .await
                .expect("runs")
        })
        .await
        .expect("answered in time");
        assert_eq!(answer.0[0].outcome, crate::replica::Outcome::Accepted);
        assert_eq!(answer.1, Some(1), "the change did not wait to be applied");
        let seen = handle
            .query({
                let id = id.clone();
                move |index| index.startup(&id).is_some()
            })
            .await
            .expect("runs");
        assert!(seen, "the index does not answer the received record");
        // Nothing asks anything of the replica for longer than SETTLE_WHEN_IDLE, and not as
        // long as MAX_UNSETTLED (checked only when a command comes): it applies the change
        // because it was idle.
        let quiet = SETTLE_WHEN_IDLE * 20;
        assert!(quiet < MAX_UNSETTLED);
        tokio::time::sleep(quiet).await;
        let (waiting, since) = handle
            .call(|r| r.deferred())
            .await
            .expect("runs")
            .map_or((0, Duration::ZERO), |(waited, n)| (n, waited));
        assert_eq!(
            waiting, 0,
            "the change waited {since:?} though the replica was idle"
        );
        loaded.try_recv().expect("told").expect("loaded");
        stop(handle, thread).await;
    }

    /// A write is answered before the store's seal is written for it, and the seal follows
    /// before the next command runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writes_seal_follows_its_answer() {
        use crate::store::Store as _;
        let tmp = tempfile::tempdir().expect("tempdir");
        let (_, dirs) = crate::demo::prepare(tmp.path(), 1, 2, 1).expect("prepare");
        let seal_file = dirs[0].path("store").join("kervan.seal");
        let sealed = move || -> usize {
            std::fs::read_to_string(&seal_file)
                .expect("the seal is readable")
                .trim()
                .parse()
                .expect("the seal is a count")
        };
        let Spawned {
            handle,
            thread,
            loaded,
        } = spawn(dirs[0].open_starting().expect("open"));
        loaded.await.expect("told").expect("loaded");
        // Whatever the start left unsealed is sealed by a first command's turn.
        handle.call(|_| ()).await.expect("runs");
        let (before, after, at_answer) = tokio::time::timeout(Duration::from_secs(10), async {
            let sealed = sealed.clone();
            handle
                .call(move |r| {
                    let before = r.store().change_count();
                    r.create(
                        crate::Collection::Startups,
                        None,
                        &crate::sample::Sample::new(9).startup("KG"),
                    )
                    .expect("create");
                    (before, r.store().change_count(), sealed())
                })
                .await
                .expect("runs")
        })
        .await
        .expect("answered in time");
        assert_eq!(after, before + 1, "the write stored one change");
        assert_eq!(at_answer, before, "the seal was written before the answer");
        handle.call(|_| ()).await.expect("runs");
        assert_eq!(sealed(), after, "the seal did not follow the write");
        stop(handle, thread).await;
    }

    /// While the documents load, a query is answered from the index and a write waits; once
    /// they are in place the write runs and the load is reported.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queries_are_answered_while_the_documents_load_and_writes_wait() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (_, dirs) = crate::demo::prepare(tmp.path(), 1, 5, 1).expect("prepare");
        let replica = dirs[0].open_replica().expect("open");
        let counts = replica.index().counts();
        assert_eq!(counts.startups, 5);
        let (starting, release) = Starting::held_back(replica);
        let Spawned {
            handle,
            thread,
            mut loaded,
        } = spawn(starting);
        let answered = tokio::time::timeout(Duration::from_secs(10), handle.query(Index::counts))
            .await
            .expect("a query waited for the documents")
            .expect("runs");
        assert_eq!(answered.startups, counts.startups, "answered while loading");
        let write = tokio::spawn({
            let handle = handle.clone();
            async move {
                handle
                    .call(|r| r.index().counts().startups)
                    .await
                    .expect("runs")
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !write.is_finished(),
            "a write ran before the documents loaded"
        );
        assert!(loaded.try_recv().is_err(), "reported loaded too early");
        drop(release);
        assert_eq!(write.await.expect("joined"), counts.startups);
        loaded.await.expect("told").expect("loaded");
        stop(handle, thread).await;
    }
}

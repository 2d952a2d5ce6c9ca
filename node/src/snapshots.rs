//! Snapshots saved and written on a thread of their own.
//!
//! A document's snapshot is its state at one moment: the metadata of its accepted changes and
//! its saved Automerge document, with the query index's copy of a ledger's records beside it.
//! The replica's thread takes that moment (it applies what waits, encodes the metadata,
//! copies the records and clones the document) and hands it to this thread, which saves the
//! clone, encodes the records and writes both into the store. So a write or a page
//! that makes a snapshot due is not answered late by a save whose time grows with the whole
//! document, and the save runs on another core than the next command.
//!
//! One snapshot at a time: handing over the next waits until the one in hand is written, so
//! at most one copy of a document is alive beside the replica's, and every snapshot holds
//! what it would have held if saved on the replica's thread. A snapshot is derived data, a
//! start's shortcut: one that is written late, or not at all, costs the next start the
//! judging of more stored changes, never a change.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};

use automerge::AutoCommit;
use kervan_protocol::DocId;

use crate::replica::RecordsCopy;
use crate::store::{Store, StoreError};

/// A document's state at one moment, to be saved and written.
pub(crate) struct Snapshot {
    pub(crate) doc: DocId,
    /// The encoded metadata of the document's accepted changes.
    pub(crate) meta: Vec<u8>,
    /// A copy of the document, holding exactly the changes `meta` describes.
    pub(crate) document: AutoCommit,
    /// The query index's copy of a ledger's records, made at the same moment.
    pub(crate) records: Option<RecordsCopy>,
}

enum Message {
    Write(Box<Snapshot>),
    /// Answered once everything handed over before it is written.
    Wait(Sender<()>),
}

/// The snapshot thread of one replica, started with the first snapshot it is handed.
pub(crate) struct Snapshots<S: Store> {
    store: S,
    worker: Option<Worker>,
}

struct Worker {
    tx: SyncSender<Message>,
    /// Raised by the replica's thread when it hands over a snapshot, lowered by the worker
    /// once that snapshot is written.
    busy: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl<S: Store> Snapshots<S> {
    pub(crate) fn new(store: S) -> Self {
        Self {
            store,
            worker: None,
        }
    }

    /// Hands a snapshot to the thread, starting it if need be, once the snapshot in hand, if
    /// any, is written.
    pub(crate) fn hand_over(&mut self, snapshot: Snapshot) {
        if self
            .worker
            .as_ref()
            .is_some_and(|w| w.busy.load(Ordering::Acquire))
        {
            self.wait();
        }
        let worker = match &mut self.worker {
            Some(w) => w,
            None => self.worker.insert(Worker::start(self.store.clone())),
        };
        worker.busy.store(true, Ordering::Release);
        if worker.tx.send(Message::Write(Box::new(snapshot))).is_err() {
            // The thread is gone (it panicked): the document stays as its store holds it.
            worker.busy.store(false, Ordering::Release);
            tracing::error!("the snapshot thread has stopped: this snapshot is not written");
        }
    }

    /// Waits until every snapshot handed over is written.
    pub(crate) fn wait(&self) {
        let Some(worker) = &self.worker else {
            return;
        };
        let (tx, rx) = mpsc::channel();
        if worker.tx.send(Message::Wait(tx)).is_ok() {
            // An error: the thread is gone, and with it anything it held.
            let _ = rx.recv();
        }
    }
}

impl<S: Store> Drop for Snapshots<S> {
    /// Writes the snapshot in hand, if any, and stops the thread, which holds the store open.
    fn drop(&mut self) {
        if let Some(Worker { tx, thread, .. }) = self.worker.take() {
            drop(tx);
            if thread.join().is_err() {
                tracing::error!("the snapshot thread panicked");
            }
        }
    }
}

impl Worker {
    fn start<S: Store>(store: S) -> Self {
        // Room for one message: a snapshot in hand and a wait behind it never block the
        // replica's thread for longer than that snapshot takes.
        let (tx, rx) = mpsc::sync_channel(1);
        let busy = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&busy);
        let thread = std::thread::Builder::new()
            .name("kervan-snapshots".into())
            .spawn(move || run(&store, &rx, &flag))
            .expect("the snapshot thread starts");
        Self { tx, busy, thread }
    }
}

fn run<S: Store>(store: &S, rx: &Receiver<Message>, busy: &AtomicBool) {
    while let Ok(message) = rx.recv() {
        match message {
            Message::Write(snapshot) => {
                if let Err(e) = write(store, *snapshot) {
                    tracing::error!(error = %e, "cannot write a snapshot: the next start judges the changes since the last one again");
                }
                busy.store(false, Ordering::Release);
            }
            Message::Wait(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Saves the document and writes the copy of its records, then the snapshot. The copy is
/// kept out of sled's log, which a start would otherwise read back into memory, and only the
/// next start's speed depends on it: failing to write it is logged, not answered.
pub(crate) fn write<S: Store>(store: &S, snapshot: Snapshot) -> Result<(), StoreError> {
    let Snapshot {
        doc,
        meta,
        mut document,
        records,
    } = snapshot;
    if let Some(records) = records
        && let Err(e) = store.put_ledger_records(&doc, &records.encode())
    {
        tracing::warn!(%doc, error = %e, "cannot keep the copy of the ledger's records");
    }
    let saved = document.save();
    let mut bytes = Vec::with_capacity(8 + meta.len() + saved.len());
    bytes.extend_from_slice(&(meta.len() as u64).to_be_bytes());
    bytes.extend_from_slice(&meta);
    bytes.extend_from_slice(&saved);
    store.put_snapshot(&doc, &bytes)
}

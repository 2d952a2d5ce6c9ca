//! The replica: owns the Automerge documents and the store, runs every change through the
//! validation rules, applies what they accept in batches, keeps what must wait, records what
//! they refuse, and keeps the query index current.
//!
//! Its state is a function of the set of changes it holds: whatever order changes arrive in,
//! the accepted set, and so the documents and the state digest, come out the same. Equivocation
//! is the one fact that can take back an acceptance; when it does, the replica rebuilds every
//! document from its stored signed changes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{AutoCommit, ObjId, ObjType, ROOT, ReadDoc};
use ed25519_dalek::SigningKey;
use kervan_protocol::records::{self, Field, FieldError, FieldErrors, Mode};
use kervan_protocol::rules::{self, CausalInfo, ObjKey, ObjectInfo};
use kervan_protocol::vouch::{Link, Own};
use kervan_protocol::{
    Actor, Bundle, Checked, Context, DecodeError, DeviceKey, DocId, FederationId, Hash, Limits,
    ParkId, PendingReason, RecordId, Registration, RejectReason, SignedChange, Touched, Verdict,
    Verified,
};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::meta::DocMeta;
use crate::query::{Index, LedgerRecords};
use crate::snapshots::{self, Snapshot, Snapshots};
use crate::store::{Evidence, Rejected, Store, StoreError};

/// Why a replica operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid fields: {0}")]
    Invalid(FieldErrors),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{id} belongs to park {owner}; this node writes only for park {park}")]
    Forbidden {
        id: String,
        owner: ParkId,
        park: ParkId,
    },
    #[error("{0} already exists")]
    Conflict(RecordId),
    #[error("this node has no ledger yet: {0}")]
    NoLedger(String),
    #[error("this node has no device identity")]
    NoIdentity,
    #[error("automerge refused a change the rules accepted: {0}")]
    Automerge(String),
    #[error("the rules refused this node's own change: {0}")]
    OwnChangeRefused(String),
    #[error("snapshot of {doc} is corrupt: {why}")]
    Snapshot { doc: DocId, why: String },
}

/// What this node is: the park it writes for and its device key.
#[derive(Debug, Clone)]
pub struct Identity {
    pub park: ParkId,
    pub key: SigningKey,
    /// Drawn when the store was created, so a recreated store is a new actor.
    pub epoch: [u8; 8],
}

impl Identity {
    pub fn actor(&self) -> Actor {
        Actor {
            key: self.device(),
            epoch: self.epoch,
        }
    }

    pub fn device(&self) -> DeviceKey {
        DeviceKey(self.key.verifying_key().to_bytes())
    }
}

/// Tunables of the replica.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub limits: Limits,
    /// Changes kept while they wait; the oldest is dropped beyond this (sync fetches it again).
    pub max_pending: usize,
    /// Envelope bytes kept while they wait; the oldest is dropped beyond this, so a member
    /// flooding changes that can never apply holds a bounded amount of memory.
    pub max_pending_bytes: usize,
    /// A document is snapshotted after this many accepted changes, or after a quarter of its
    /// history if that is more.
    pub snapshot_every: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_pending: 10_000,
            max_pending_bytes: 64 << 20,
            snapshot_every: 1_000,
        }
    }
}

/// What became of one change handed to the replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Accepted,
    Duplicate,
    Pending { reason: String },
    Rejected { code: String, reason: String },
}

/// The outcome of one change, named by its hash where the envelope parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub hash: Option<Hash>,
    pub doc: Option<DocId>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Counters since start, for status and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub accepted: u64,
    pub duplicates: u64,
    pub pending_dropped: u64,
    pub rejected: BTreeMap<String, u64>,
    /// Time spent applying batches: a cumulative histogram over [`APPLY_BUCKETS`].
    pub apply_buckets: [u64; APPLY_BUCKETS.len()],
    pub apply_count: u64,
    pub apply_seconds: f64,
    pub rebuilds: u64,
    /// Records the last start indexed from the snapshots' copies of the ledgers' records
    /// rather than by reading them back out of Automerge.
    pub records_from_snapshots: u64,
}

/// Upper bounds, in seconds, of the apply-latency histogram.
pub const APPLY_BUCKETS: [f64; 8] = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0];

/// The result of re-verifying every stored change.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub stored: usize,
    pub verified: usize,
    pub failed: Vec<(String, String)>,
    pub accepted: usize,
    pub pending: usize,
    pub excluded: usize,
    pub rejected: usize,
    pub evidence: usize,
    pub digest: String,
}

/// One document and what the replica knows about its accepted changes.
struct DocState {
    doc: AutoCommit,
    /// Accepted changes in the order they were accepted: a causal order.
    order: Vec<Hash>,
    accepted: HashMap<Hash, CausalInfo>,
    objects: HashMap<ObjKey, ObjectInfo>,
    /// Each actor's newest accepted change: the summary behind the state digest.
    heads: BTreeMap<Actor, (u64, Hash)>,
    registrations: Vec<Registration>,
    since_snapshot: usize,
    /// Accepted changes not yet applied to `doc`, in causal order: each makes records only,
    /// on top of everything before it (its deps are the heads before it, so the last one is
    /// the document's head once they are applied), and the index already holds those records
    /// ([`Replica::settle`]).
    deferred: Vec<automerge::Change>,
    /// Since when the first of `deferred` has waited.
    deferred_since: Option<Instant>,
}

impl DocState {
    fn new(actor: Option<Actor>) -> Self {
        let mut doc = AutoCommit::new();
        if let Some(a) = actor {
            doc.set_actor(a.to_automerge());
        }
        Self {
            doc,
            order: Vec::new(),
            accepted: HashMap::new(),
            objects: HashMap::new(),
            heads: BTreeMap::new(),
            registrations: Vec::new(),
            since_snapshot: 0,
            deferred: Vec::new(),
            deferred_since: None,
        }
    }

    /// Applies the deferred changes, and then `more`, to the document in one call.
    fn settle(&mut self, more: Vec<automerge::Change>) -> Result<(), ReplicaError> {
        if self.deferred.is_empty() && more.is_empty() {
            return Ok(());
        }
        let waiting = std::mem::take(&mut self.deferred);
        let applied = self
            .doc
            .apply_changes(waiting.iter().cloned().chain(more))
            .map_err(|e| ReplicaError::Automerge(e.to_string()));
        if applied.is_err() {
            // Accepted and stored all the same: they go on waiting, so that a snapshot of
            // this document fails as this did rather than save it without them.
            self.deferred = waiting;
        } else {
            self.deferred_since = None;
        }
        applied
    }

    /// Leaves `changes`, whose records the index took from their ops, to be applied later.
    fn defer(&mut self, changes: Vec<automerge::Change>) {
        self.deferred_since.get_or_insert_with(Instant::now);
        self.deferred.extend(changes);
    }

    /// The records a batch of accepted changes of this ledger (of `park`) makes, read from the
    /// changes' own ops, where that is what reading them back out of the document after
    /// applying the changes would give: each change builds on everything
    /// the document holds (and on the deferred changes before it), it only makes records
    /// ([`records::records_made_by`]) in the collections' maps the document shows, and those
    /// are all the records the rules found it touches. The changes can then wait to be
    /// applied ([`Replica::settle`]).
    fn records_made(
        &mut self,
        park: &ParkId,
        changes: &[automerge::Change],
        touched: &BTreeSet<Touched>,
    ) -> Option<Vec<IndexedRecord>> {
        // The collections' maps as the document shows them at its root: the rules let a
        // ledger's first change make more than one map at a collection's key, and only the
        // winner is read. Deferred changes never write at the root, so the unsettled
        // document shows the same ones.
        let shown: Vec<(&'static str, u64, automerge::ActorId)> = records::COLLECTIONS
            .iter()
            .filter_map(|name| match child(&self.doc, &ROOT, name)? {
                ObjId::Id(counter, actor, _) => Some((*name, counter, actor)),
                ObjId::Root => None,
            })
            .collect();
        let mut tip = match self.deferred.last() {
            Some(last) => vec![last.hash()],
            None => self.doc.get_heads(),
        };
        tip.sort_unstable();
        let mut records = Vec::new();
        let mut made = BTreeSet::new();
        for change in changes {
            let mut deps = change.deps().to_vec();
            deps.sort_unstable();
            if deps != tip {
                return None;
            }
            tip = vec![change.hash()];
            let collection_of = |counter: u64, actor: &automerge::ActorId| {
                shown
                    .iter()
                    .find(|(_, c, a)| *c == counter && a == actor)
                    .map(|(name, _, _)| *name)
            };
            for (collection, key, value) in records::records_made_by(change, collection_of)? {
                let id = key.parse::<RecordId>().ok()?;
                made.insert(Touched::Record {
                    collection,
                    id: id.clone(),
                });
                records.push(IndexedRecord::from_stored(
                    park,
                    collection,
                    id,
                    Some(value),
                ));
            }
        }
        (made == *touched).then_some(records)
    }

    fn accept(&mut self, c: &Checked) {
        self.order.push(c.hash);
        self.accepted.insert(c.hash, c.info.clone());
        self.objects.extend(c.objects.iter().cloned());
        let head = self.heads.entry(c.info.actor).or_insert((0, c.hash));
        if c.info.seq >= head.0 {
            *head = (c.info.seq, c.hash);
        }
        self.registrations.extend(c.registrations.iter().cloned());
        self.since_snapshot += 1;
    }

    /// The encoded metadata of the accepted changes: a snapshot's first part.
    fn snapshot_meta(&self) -> Vec<u8> {
        DocMeta {
            order: self
                .order
                .iter()
                .filter_map(|h| self.accepted.get(h).map(|i| (*h, i.clone())))
                .collect(),
            objects: self.objects.iter().map(|(k, v)| (*k, v.clone())).collect(),
            registrations: self.registrations.clone(),
        }
        .encode()
    }

    /// Splits a snapshot into its metadata and its saved Automerge document.
    fn split_snapshot(bytes: &[u8]) -> Result<(&[u8], &[u8]), String> {
        let len = bytes
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or("shorter than its header")?;
        let meta = bytes
            .get(8..8usize.saturating_add(len))
            .ok_or("metadata truncated")?;
        Ok((meta, &bytes[8 + len..]))
    }

    /// The state a snapshot's metadata describes, with an empty document: the saved document
    /// is loaded apart ([`work_loading`]), as it takes most of the time.
    fn decode_meta(meta: &[u8]) -> Result<Self, String> {
        let meta = DocMeta::decode(meta)?;
        let mut state = Self::new(None);
        for (hash, info) in meta.order {
            let head = state.heads.entry(info.actor).or_insert((0, hash));
            if info.seq >= head.0 {
                *head = (info.seq, hash);
            }
            state.order.push(hash);
            state.accepted.insert(hash, info);
        }
        state.objects = meta.objects.into_iter().collect();
        state.registrations = meta.registrations;
        Ok(state)
    }

    /// Names the set of accepted changes: the tag of a copy of the records made from them.
    fn tag(&self) -> Hash {
        let mut h = Sha256::new();
        for hash in &self.order {
            h.update(hash.0);
        }
        Hash(h.finalize().into())
    }
}

/// How often the store's seal is written after flushes of received changes alone.
const SEAL_RECEIVED_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The most changes of one document in a batch whose records are read from their ops and
/// whose apply waits ([`Replica::settle`]): one `apply_changes` call costs time in proportion
/// to the document, so a few changes wait to share one, while a larger batch is applied at
/// once and its records read back, cheaper per change than decoding each change's ops again.
const DEFER_AT_MOST: usize = 64;

/// The most changes that wait to be applied to their documents: one more and they all are.
const MAX_DEFERRED: usize = 1024;

/// Batches of at least this many envelopes (pages) are decoded and verified on every core.
const PREPARE_IN_PARALLEL: usize = 64;
/// Envelopes prepared at a time within such a batch.
const PREPARE_CHUNK: usize = 512;

/// An envelope taken apart as far as its bytes alone allow: what [`Replica::admit`] would
/// find of them, computed beforehand when a page is checked on every core.
struct Prepared {
    /// The hash of the envelope's bytes, under which a refusal before its signature verified
    /// is recorded.
    raw_key: Hash,
    /// The decoded envelope, its change's hash and its signature; or why it does not decode or
    /// parse, with its document if that much decoded.
    parsed: Result<(SignedChange, Hash, Signature), (Option<DocId>, RejectReason)>,
}

/// A parsed change's signature: checked already, or left to be checked once the change is
/// known to be new (a duplicate costs no signature check); or, for a vouched change, whether
/// its voucher in the same batch authenticates it.
enum Signature {
    Checked(Result<Verified, RejectReason>),
    Unchecked(automerge::Change),
    Vouched(automerge::Change, bool),
}

impl Prepared {
    /// Everything, the signature included.
    fn new(bytes: &[u8], federation: &FederationId, limits: Limits) -> Self {
        Self {
            raw_key: raw_key(bytes),
            parsed: Self::parse(bytes, federation, limits, true),
        }
    }

    /// Decodes and parses; checks the signature if `check`.
    #[allow(clippy::type_complexity)]
    fn parse(
        bytes: &[u8],
        federation: &FederationId,
        limits: Limits,
        check: bool,
    ) -> Result<(SignedChange, Hash, Signature), (Option<DocId>, RejectReason)> {
        SignedChange::decode(bytes, limits.max_change_bytes)
            .map_err(|e| (None, RejectReason::from(e)))
            .and_then(|envelope| match envelope.parse() {
                Ok(parsed) => {
                    let hash = Hash::from(parsed.hash());
                    let signature = if envelope.vouched_by().is_some() {
                        Signature::Vouched(parsed, false)
                    } else if check {
                        Signature::Checked(rules::verify_signed(
                            &envelope, parsed, federation, limits,
                        ))
                    } else {
                        Signature::Unchecked(parsed)
                    };
                    Ok((envelope, hash, signature))
                }
                Err(e) => Err((
                    Some(envelope.doc),
                    RejectReason::BadChange {
                        message: e.to_string(),
                    },
                )),
            })
    }
}

/// The hash of an envelope's bytes.
fn raw_key(bytes: &[u8]) -> Hash {
    Hash(Sha256::digest(bytes).into())
}

/// What vouching needs of a prepared envelope: nothing of one that did not parse, or whose
/// signature failed.
fn link_of(p: &Prepared) -> Option<Link<'_>> {
    let (envelope, hash, signature) = p.parsed.as_ref().ok()?;
    let (change, actor, own) = match signature {
        Signature::Checked(Ok(v)) => (&v.change, v.actor, Own::Signed),
        Signature::Vouched(c, _) => {
            let actor = Actor::from_bytes(c.actor_id().to_bytes())?;
            (c, actor, Own::Vouched(envelope.vouched_by()?))
        }
        Signature::Checked(Err(_)) | Signature::Unchecked(_) => return None,
    };
    Some(Link {
        doc: &envelope.doc,
        hash: *hash,
        actor,
        deps: change.deps().iter().map(|d| Hash::from(*d)).collect(),
        start_op: change.start_op().get(),
        own,
    })
}

/// Prepares every envelope of a batch that holds vouched changes, and marks each vouched one
/// its voucher authenticates. `extra` are envelopes that may vouch but are not admitted (the
/// kept proofs, at a restore). Vouchers are rare (one per actor and document in a page), so
/// every signature is checked here, on every core for a page.
fn prepare_vouched(
    envelopes: Vec<Vec<u8>>,
    extra: Vec<Vec<u8>>,
    federation: &FederationId,
    limits: Limits,
) -> Vec<(Vec<u8>, Prepared)> {
    let prepare = |bytes: Vec<u8>| {
        let p = Prepared::new(&bytes, federation, limits);
        (bytes, p)
    };
    let prepare_all = |items: Vec<Vec<u8>>| {
        if items.len() >= PREPARE_IN_PARALLEL {
            parallel_map(items, prepare)
        } else {
            items.into_iter().map(prepare).collect::<Vec<_>>()
        }
    };
    let mut batch = prepare_all(envelopes);
    let extra = prepare_all(extra);
    let (positions, links): (Vec<usize>, Vec<Link<'_>>) = batch
        .iter()
        .chain(&extra)
        .enumerate()
        .filter_map(|(i, (_, p))| link_of(p).map(|l| (i, l)))
        .unzip();
    let vouched = kervan_protocol::vouch::vouch(&links);
    drop(links);
    for (i, ok) in positions.into_iter().zip(vouched) {
        if let Some((_, p)) = batch.get_mut(i)
            && let Ok((_, _, Signature::Vouched(_, v))) = &mut p.parsed
        {
            *v = ok;
        }
    }
    batch
}

/// Marks the query index's copy of a ledger's records: `KVR1 | tag:[u8; 32] | JSON`, the tag
/// naming the accepted changes it was made from ([`DocState::tag`]).
const RECORDS_MAGIC: &[u8; 4] = b"KVR\x01";

/// The query index's copy of a ledger's records, kept beside its snapshot, with the tag of the
/// accepted changes it was made from.
pub(crate) struct RecordsCopy {
    tag: Hash,
    records: LedgerRecords,
}

impl RecordsCopy {
    /// The file's bytes: the magic, the tag, the records.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut bytes = RECORDS_MAGIC.to_vec();
        bytes.extend_from_slice(&self.tag.0);
        bytes.extend_from_slice(&self.records.encode());
        bytes
    }
}

/// What a node already knows of a change it receives.
enum Seen {
    New,
    Held,
    Refused,
}

/// Parks and devices the federation document registers.
#[derive(Debug, Default)]
struct Registry {
    parks: BTreeSet<ParkId>,
    devices: HashMap<DeviceKey, BTreeSet<ParkId>>,
    roots: HashMap<ParkId, Actor>,
    /// Keys registered for two parks: the device signed proofs for both, so it is frozen.
    frozen: HashSet<DeviceKey>,
}

impl Registry {
    /// Adds a registration; answers a device key that is now registered for two parks.
    fn add(&mut self, r: &Registration) -> Option<(DeviceKey, Vec<ParkId>)> {
        match r {
            Registration::Park(p) => {
                self.parks.insert(p.clone());
            }
            Registration::Device(p, k) => {
                let parks = self.devices.entry(*k).or_default();
                parks.insert(p.clone());
                if parks.len() > 1 && self.frozen.insert(*k) {
                    return Some((*k, parks.iter().cloned().collect()));
                }
            }
            Registration::RootActor(p, a) => {
                self.roots.entry(p.clone()).or_insert(*a);
            }
        }
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Wait {
    Dep(DocId, Hash),
    Device(DeviceKey),
    Park(ParkId),
}

/// A change and what it waits for, keyed by (doc, hash).
type PendingKey = (DocId, Hash);

struct Waiting {
    verified: Verified,
    envelope: Vec<u8>,
    source: String,
    ticket: u64,
    waits: Vec<Wait>,
}

/// Changes that wait for a dependency or a registration, oldest first.
#[derive(Default)]
struct Pending {
    items: HashMap<PendingKey, Waiting>,
    by_ticket: BTreeMap<u64, PendingKey>,
    waits: HashMap<Wait, Vec<PendingKey>>,
    next: u64,
    /// Envelope bytes held.
    bytes: usize,
}

impl Pending {
    fn insert(
        &mut self,
        key: PendingKey,
        verified: Verified,
        envelope: Vec<u8>,
        source: String,
        reason: &PendingReason,
    ) {
        let waits: Vec<Wait> = match reason {
            PendingReason::MissingDeps(deps) => {
                deps.iter().map(|d| Wait::Dep(key.0.clone(), *d)).collect()
            }
            PendingReason::UnknownDevice(k) => vec![Wait::Device(*k)],
            PendingReason::UnknownPark(p) => vec![Wait::Park(p.clone())],
        };
        for w in &waits {
            self.waits.entry(w.clone()).or_default().push(key.clone());
        }
        let ticket = self.next;
        self.next += 1;
        self.bytes += envelope.len();
        self.by_ticket.insert(ticket, key.clone());
        let replaced = self.items.insert(
            key,
            Waiting {
                verified,
                envelope,
                source,
                ticket,
                waits,
            },
        );
        if let Some(old) = replaced {
            // The same change again: the newer copy stands in for the older one.
            self.bytes -= old.envelope.len();
            self.by_ticket.remove(&old.ticket);
        }
    }

    /// Removes a change and every index entry that names it.
    fn take(&mut self, key: &PendingKey) -> Option<Waiting> {
        let w = self.items.remove(key)?;
        self.bytes -= w.envelope.len();
        self.by_ticket.remove(&w.ticket);
        for wait in &w.waits {
            if let Some(list) = self.waits.get_mut(wait) {
                list.retain(|k| k != key);
                if list.is_empty() {
                    self.waits.remove(wait);
                }
            }
        }
        Some(w)
    }

    /// The changes that waited for `wait`, taken out of the queue.
    fn wake(&mut self, wait: &Wait) -> Vec<(PendingKey, Waiting)> {
        let keys = self.waits.get(wait).cloned().unwrap_or_default();
        keys.into_iter()
            .filter_map(|k| self.take(&k).map(|w| (k, w)))
            .collect()
    }

    fn oldest(&mut self) -> Option<(PendingKey, Waiting)> {
        let key = self.by_ticket.values().next()?.clone();
        self.take(&key).map(|w| (key, w))
    }

    fn contains(&self, doc: &DocId, hash: &Hash) -> bool {
        self.items.contains_key(&(doc.clone(), *hash))
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

struct Work {
    /// The same change came earlier in this batch and was admitted: this copy gets what it
    /// would get in a later batch.
    again: bool,
    doc: DocId,
    verified: Verified,
    envelope: Vec<u8>,
    source: String,
    report: Option<usize>,
    /// The verdict, when the change was judged just before against this same state: this
    /// node's own change, judged before anything of it was stored.
    checked: Option<Box<Checked>>,
    /// The voucher that authenticated a vouched change, when it was admitted.
    voucher: Option<Hash>,
}

/// The replica. One owner: the node's replica actor (or a CLI command) holds it.
pub struct Replica<S: Store> {
    store: S,
    federation: FederationId,
    identity: Option<Identity>,
    opts: Options,
    docs: BTreeMap<DocId, DocState>,
    registry: Registry,
    slots: HashMap<(DocId, Actor, u64), Hash>,
    frozen: HashMap<(DocId, Actor), u64>,
    /// Changes excluded by equivocation (frozen, or built on a frozen change). Not kept in
    /// snapshots: a restore judges them again from the stored evidence.
    excluded: HashSet<(DocId, Hash)>,
    pending: Pending,
    index: Index,
    stats: Stats,
    /// Where this node's own accepted changes go to be published (the net actor).
    outbox: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    /// Raised for the length of a restore from the store: order of arrival is arbitrary, so
    /// the pending queue is unbounded, and stored changes refused earlier are judged again
    /// (their verdicts may rest on evidence, which is kept apart).
    restoring: bool,
    /// Changes received from peers are stored but not yet flushed (see [`Self::ingest_received`]).
    unflushed: Option<Instant>,
    /// When the store's seal was last written after a flush of received changes.
    sealed: Option<Instant>,
    /// A write of this node's was flushed and acknowledged, and the seal not yet written for
    /// it (see [`Self::seal_if_due`]).
    seal_due: bool,
    /// The thread that saves and writes the snapshots that come due as changes are accepted.
    snapshots: Snapshots<S>,
}

impl<S: Store> std::fmt::Debug for Replica<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("federation", &self.federation)
            .field("docs", &self.docs.keys().collect::<Vec<_>>())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

/// The view of the replica the rules judge against.
struct View<'a, S: Store> {
    federation: FederationId,
    limits: Limits,
    docs: &'a BTreeMap<DocId, DocState>,
    registry: &'a Registry,
    slots: &'a HashMap<(DocId, Actor, u64), Hash>,
    frozen: &'a HashMap<(DocId, Actor), u64>,
    excluded: &'a HashSet<(DocId, Hash)>,
    store: &'a S,
}

impl<S: Store> Context for View<'_, S> {
    fn federation(&self) -> FederationId {
        self.federation
    }
    fn limits(&self) -> Limits {
        self.limits
    }
    fn park_exists(&self, park: &ParkId) -> bool {
        self.registry.parks.contains(park)
    }
    fn is_device(&self, park: &ParkId, key: &DeviceKey) -> bool {
        self.registry
            .devices
            .get(key)
            .is_some_and(|ps| ps.contains(park))
    }
    fn is_any_device(&self, key: &DeviceKey) -> bool {
        self.registry.devices.contains_key(key)
    }
    fn root_actor(&self, park: &ParkId) -> Option<Actor> {
        self.registry.roots.get(park).copied()
    }
    fn device_frozen(&self, key: &DeviceKey) -> bool {
        self.registry.frozen.contains(key)
    }
    fn accepted(&self, doc: &DocId, hash: &Hash) -> Option<&CausalInfo> {
        self.docs.get(doc)?.accepted.get(hash)
    }
    fn excluded(&self, doc: &DocId, hash: &Hash) -> bool {
        self.excluded.contains(&(doc.clone(), *hash))
    }
    fn rejected(&self, doc: &DocId, hash: &Hash) -> bool {
        // A store that cannot answer is a fatal fault the next write will surface; here the
        // change simply stays pending.
        self.store.is_rejected(Some(doc), hash).unwrap_or(false)
    }
    fn slot(&self, doc: &DocId, actor: &Actor, seq: u64) -> Option<Hash> {
        self.slots.get(&(doc.clone(), *actor, seq)).copied()
    }
    fn frozen_from(&self, doc: &DocId, actor: &Actor) -> Option<u64> {
        self.frozen.get(&(doc.clone(), *actor)).copied()
    }
    fn object(&self, doc: &DocId, key: &ObjKey) -> Option<&ObjectInfo> {
        self.docs.get(doc)?.objects.get(key)
    }
}

fn now_seconds() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The collections a caller writes through the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    Startups,
    Programs,
    Applications,
}

impl Collection {
    pub fn name(self) -> &'static str {
        match self {
            Collection::Startups => "startups",
            Collection::Programs => "programs",
            Collection::Applications => "applications",
        }
    }

    fn fields(self) -> &'static [Field] {
        match self {
            Collection::Startups => records::STARTUP_FIELDS,
            Collection::Programs => records::PROGRAM_FIELDS,
            Collection::Applications => records::APPLICATION_FIELDS,
        }
    }

    fn singular(self) -> &'static str {
        match self {
            Collection::Startups => "startup",
            Collection::Programs => "program",
            Collection::Applications => "application",
        }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> ReplicaError {
    ReplicaError::Invalid(FieldErrors(vec![FieldError {
        field: field.into(),
        message: message.into(),
    }]))
}

fn this_year() -> i64 {
    i64::from(time::OffsetDateTime::now_utc().year())
}

impl<S: Store> Replica<S> {
    /// Opens the replica of a federation: loads each document's snapshot, then checks and
    /// applies the stored changes after it.
    pub fn open(
        store: S,
        federation: FederationId,
        identity: Option<Identity>,
        opts: Options,
    ) -> Result<Self, ReplicaError> {
        Self::open_starting(store, federation, identity, opts)?.finish()
    }

    /// Opens the replica far enough to answer queries. When the snapshots cover every stored
    /// change and each ledger's copy of its records is usable, the query index is built from
    /// those copies and the ledgers' saved documents go on loading on worker threads: the
    /// answer is a [`Starting`] that queries its index meanwhile and becomes the replica with
    /// [`Starting::finish`]. Otherwise (a tail to judge again, a copy missing) everything is
    /// loaded before it returns, as [`Self::open`] does.
    pub fn open_starting(
        store: S,
        federation: FederationId,
        identity: Option<Identity>,
        opts: Options,
    ) -> Result<Starting<S>, ReplicaError> {
        let mut replica = Self {
            snapshots: Snapshots::new(store.clone()),
            store,
            federation,
            identity,
            opts,
            docs: BTreeMap::new(),
            registry: Registry::default(),
            slots: HashMap::new(),
            frozen: HashMap::new(),
            excluded: HashSet::new(),
            pending: Pending::default(),
            index: Index::default(),
            stats: Stats::default(),
            outbox: None,
            restoring: false,
            unflushed: None,
            sealed: None,
            seal_due: false,
        };
        let unloaded = replica.load(true, true)?;
        // A node killed without its final snapshot judged its whole tail again just now:
        // snapshot, so the next start does not do it again. (Never with documents still
        // loading: those start only with no tail.)
        if unloaded.is_none() && replica.docs.values().any(|d| d.since_snapshot > 0) {
            replica.snapshot_all()?;
        }
        Ok(Starting { replica, unloaded })
    }

    fn actor(&self) -> Option<Actor> {
        self.identity.as_ref().map(Identity::actor)
    }

    /// Loads the state from the store: snapshots if `use_snapshots`, then every stored change
    /// they do not cover. With `early`, and when the snapshots cover every stored change and
    /// the index took each ledger's records from its copy, it returns as soon as the index is
    /// built, with the ledgers' saved documents still loading (see [`Starting`]).
    fn load(&mut self, use_snapshots: bool, early: bool) -> Result<Option<Unloaded>, ReplicaError> {
        self.docs.clear();
        self.registry = Registry::default();
        self.pending = Pending::default();
        self.index = Index::default();
        // Every stored change is looked at here, cheaply (`scan_store`). Only the keys are
        // kept: the envelopes the snapshots do not cover are read again below.
        // The snapshots' metadata and the copies of the ledgers' records are decoded on worker
        // threads and indexed on this one while a thread of its own scans the store; their
        // saved documents load once that is done (see [`Loading`]).
        let loading = if use_snapshots {
            Some(self.start_loading()?)
        } else {
            None
        };
        self.frozen.clear();
        self.excluded.clear();
        for e in self.store.evidence()? {
            let f = self.frozen.entry((e.doc, e.actor)).or_insert(e.seq);
            *f = (*f).min(e.seq);
        }
        self.registry.frozen = self.store.frozen_keys()?.into_iter().collect();
        self.stats.records_from_snapshots = 0;
        let (scanned, taken) = std::thread::scope(|scope| {
            let store = &self.store;
            let scan = std::thread::Builder::new()
                .name("store-scan".into())
                .spawn_scoped(scope, move || scan_store(store));
            let taken = match &loading {
                Some(loading) => Self::take_metadata(
                    loading,
                    &mut self.registry,
                    &mut self.index,
                    &mut self.stats,
                ),
                None => Ok((BTreeMap::new(), HashSet::new())),
            };
            let scanned = match scan {
                Ok(scan) => scan
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                // No thread to spare: the scan runs here.
                Err(_) => scan_store(store),
            };
            (scanned, taken)
        });
        let (stored, slots) = scanned?;
        self.slots = slots;
        let (mut held, indexed) = taken?;
        let covered = |held: &BTreeMap<DocId, DocState>, doc: &DocId, h: &Hash| {
            held.get(doc).is_some_and(|d| d.accepted.contains_key(h))
        };
        let mut tail_keys: Vec<(DocId, Hash)> = Vec::new();
        for (doc, hashes) in stored {
            for h in hashes {
                if !covered(&held, &doc, &h) {
                    tail_keys.push((doc.clone(), h));
                }
            }
        }
        // Queries before the documents: only when nothing is left to judge and no ledger's
        // records must be read out of its document.
        let early = early
            && tail_keys.is_empty()
            && held.contains_key(&DocId::Federation)
            && held
                .keys()
                .all(|doc| doc.park().is_none() || indexed.contains(doc));
        match loading {
            Some(mut loading) if early => {
                loading.open_docs();
                // The federation document is small, and the parks' entries are read out of it.
                let saved = loading.wait_for(&DocId::Federation);
                if let Some(state) = held.remove(&DocId::Federation) {
                    self.install(DocId::Federation, state, saved)?;
                }
                self.reindex_all(&indexed);
                return Ok(Some(Unloaded { loading, held }));
            }
            Some(loading) => {
                loading.open_docs();
                let mut loaded = loading.wait();
                for (doc, state) in std::mem::take(&mut held) {
                    let saved = loaded.remove(&doc);
                    self.install(doc, state, saved)?;
                }
            }
            None => {}
        }
        tail_keys.sort();
        let mut tail = Vec::with_capacity(tail_keys.len());
        if tail_keys.len() > 1024 {
            // A long tail (a rebuild, a start without snapshots): one pass over the store.
            let docs = &self.docs;
            self.store.for_each_change(&mut |d, h, env| {
                if !covered(docs, &d, &h) {
                    tail.push(env.to_vec());
                }
                Ok(())
            })?;
        } else {
            for (doc, h) in &tail_keys {
                if let Some(env) = self.store.change(doc, h)? {
                    tail.push(env);
                }
            }
        }
        // The tail re-reads the records it touches, over the snapshots' copies.
        self.restoring = true;
        let result = self.ingest_inner(tail, "restore", true);
        self.restoring = false;
        result?;
        self.reindex_all(&indexed);
        Ok(None)
    }

    /// Reads the snapshots of the federation document and of the ledgers it registers, and
    /// starts loading their saved Automerge documents on worker threads.
    fn start_loading(&self) -> Result<Loading, ReplicaError> {
        let mut snapshots = Vec::new();
        if let Some(bytes) = self.store.snapshot(&DocId::Federation)? {
            let parks: Vec<ParkId> = DocState::split_snapshot(&bytes)
                .and_then(|(meta, _)| DocState::decode_meta(meta))
                .map_err(|why| ReplicaError::Snapshot {
                    doc: DocId::Federation,
                    why,
                })?
                .registrations
                .iter()
                .filter_map(|r| match r {
                    Registration::Park(p) => Some(p.clone()),
                    _ => None,
                })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            snapshots.push((DocId::Federation, bytes, Ok(None)));
            for park in parks {
                let doc = DocId::Ledger(park);
                if let Some(bytes) = self.store.snapshot(&doc)? {
                    let copy = self.store.ledger_records(&doc).map_err(|e| e.to_string());
                    snapshots.push((doc, bytes, copy));
                }
            }
        }
        Ok(Loading::start(snapshots))
    }

    /// Takes in the metadata of the snapshots `loading` reads: each document's state (with an
    /// empty document), its registrations and the copy of a ledger's records kept beside its
    /// snapshot (indexed while the saved documents still load). Answers the states and the
    /// ledgers whose records were indexed from their copies.
    #[allow(clippy::type_complexity)]
    fn take_metadata(
        loading: &Loading,
        registry: &mut Registry,
        index: &mut Index,
        stats: &mut Stats,
    ) -> Result<(BTreeMap<DocId, DocState>, HashSet<DocId>), ReplicaError> {
        let mut states = BTreeMap::new();
        let mut indexed = HashSet::new();
        // The workers read the metadata (and decode the copies) first; they arrive in any
        // order and are taken in in the order of `loading.order`.
        let mut early = HashMap::new();
        for (i, doc) in loading.order.iter().enumerate() {
            let read = loop {
                if let Some(read) = early.remove(&i) {
                    break read;
                }
                match loading.metas.recv() {
                    Ok((j, read)) => {
                        loading.taken();
                        early.insert(j, read);
                    }
                    Err(_) => break Err("its metadata was not read".to_owned()),
                }
            };
            let (state, records) = read.map_err(|why| ReplicaError::Snapshot {
                doc: doc.clone(),
                why,
            })?;
            for r in &state.registrations {
                registry.add(r);
            }
            if let Some(park) = doc.park() {
                match records {
                    Ok(Some(records)) => {
                        stats.records_from_snapshots += records.len() as u64;
                        index.load_ledger(park, records);
                        indexed.insert(doc.clone());
                    }
                    Ok(None) => {}
                    Err(why) => {
                        // Derived data: the records are read out of the document instead.
                        tracing::warn!(%doc, why, "the copy of the ledger's records is unreadable; re-reading them");
                    }
                }
            }
            states.insert(doc.clone(), state);
        }
        Ok((states, indexed))
    }

    /// Puts a document's loaded snapshot in place: its state and its saved document, or the
    /// error that names the snapshot as corrupt.
    fn install(
        &mut self,
        doc: DocId,
        mut state: DocState,
        saved: Option<Result<AutoCommit, String>>,
    ) -> Result<(), ReplicaError> {
        let saved = saved.unwrap_or_else(|| Err("its saved document was not loaded".into()));
        let mut am = saved.map_err(|why| ReplicaError::Snapshot {
            doc: doc.clone(),
            why,
        })?;
        if let Some(a) = self.actor() {
            am.set_actor(a.to_automerge());
        }
        state.doc = am;
        self.docs.insert(doc, state);
        Ok(())
    }

    /// Throws away every derived state and rebuilds it from the stored signed changes alone.
    pub fn rebuild(&mut self) -> Result<(), ReplicaError> {
        tracing::warn!("rebuilding every document from the stored signed changes");
        self.stats.rebuilds += 1;
        // A snapshot being written now would outlive the clearing.
        self.snapshots.wait();
        self.store.clear_snapshots()?;
        self.load(false, false)?;
        self.snapshot_all()?;
        self.store.flush()?;
        Ok(())
    }

    fn view(&self) -> View<'_, S> {
        View {
            federation: self.federation,
            limits: self.opts.limits,
            docs: &self.docs,
            registry: &self.registry,
            slots: &self.slots,
            frozen: &self.frozen,
            excluded: &self.excluded,
            store: &self.store,
        }
    }

    /// Whether this node holds the change already (accepted, excluded or waiting), or refused it
    /// before.
    fn seen(&self, doc: &DocId, hash: &Hash) -> Result<Seen, StoreError> {
        if self
            .docs
            .get(doc)
            .is_some_and(|d| d.accepted.contains_key(hash))
            || self.excluded.contains(&(doc.clone(), *hash))
            || self.pending.contains(doc, hash)
        {
            return Ok(Seen::Held);
        }
        if !self.restoring && self.store.is_rejected(Some(doc), hash)? {
            return Ok(Seen::Refused);
        }
        Ok(Seen::New)
    }

    /// A change refused before, sent again: refused again, and not as a harmless duplicate, so
    /// the network neither forwards it nor spares its sender.
    fn refused_again(&mut self) -> Outcome {
        *self
            .stats
            .rejected
            .entry("already_rejected".to_owned())
            .or_default() += 1;
        Outcome::Rejected {
            code: "already_rejected".into(),
            reason: "this node rejected the same envelope before".into(),
        }
    }

    /// Checks, stores and applies a batch of encoded envelopes from one source, and answers
    /// for each. Everything accepted is durable when this returns.
    pub fn ingest(
        &mut self,
        envelopes: Vec<Vec<u8>>,
        source: &str,
    ) -> Result<Vec<Report>, ReplicaError> {
        self.ingest_inner(envelopes, source, true)
    }

    /// Like [`Self::ingest`] for changes a peer sent: they are checked, stored, applied and
    /// visible to queries when this returns, but flushed later by [`Self::flush_received`],
    /// which the replica actor calls as soon as it has nothing else queued. Forwarding a
    /// received change, or answering a query about it, need not wait for the disk: its author
    /// flushed it before publishing, and anti-entropy fetches again whatever a crash loses
    /// here. This node's own writes, imports and anything signed here are flushed before they
    /// are acknowledged, and a flush of sled covers every write made before it.
    pub fn ingest_received(
        &mut self,
        envelopes: Vec<Vec<u8>>,
        source: &str,
    ) -> Result<Vec<Report>, ReplicaError> {
        self.ingest_inner(envelopes, source, false)
    }

    /// Writes the store's seal for what the last flush made durable.
    fn seal(&mut self) -> Result<(), ReplicaError> {
        self.store.seal()?;
        self.sealed = Some(Instant::now());
        self.seal_due = false;
        Ok(())
    }

    /// Writes the seal for this node's own writes since it was last written. A write is
    /// flushed before it is acknowledged or published; the seal (a file written and renamed,
    /// not itself synced) may follow the acknowledgement, so the replica actor calls this
    /// after each command's answer has gone. Until then the seal lags the store, which it may
    /// (it never leads it).
    pub fn seal_if_due(&mut self) -> Result<(), ReplicaError> {
        if self.seal_due {
            self.seal()?;
        }
        Ok(())
    }

    /// Flushes changes received by [`Self::ingest_received`] since the last flush.
    pub fn flush_received(&mut self) -> Result<(), ReplicaError> {
        if self.unflushed.take().is_some() {
            // The seal (a file written and renamed) is kept up to date at most every
            // SEAL_RECEIVED_EVERY for received changes alone: it may lag the store, and a
            // received change lost with sled's tail is fetched again from the peers.
            self.store.flush_unsealed()?;
            if self
                .sealed
                .is_none_or(|t| t.elapsed() >= SEAL_RECEIVED_EVERY)
            {
                self.seal()?;
            }
        }
        Ok(())
    }

    /// How long changes received from peers have waited in the store for
    /// [`Self::flush_received`], if any do.
    pub fn unflushed_for(&self) -> Option<std::time::Duration> {
        self.unflushed.map(|since| since.elapsed())
    }

    /// Applies changes read back from this node's own damaged store (`kervan repair`): each is
    /// judged as if a peer had sent it, and the pending queue holds them all while they sort
    /// themselves into causal order, whatever order the store gave them in.
    pub fn ingest_salvaged(
        &mut self,
        envelopes: Vec<Vec<u8>>,
    ) -> Result<Vec<Report>, ReplicaError> {
        let opts = self.opts;
        self.opts.max_pending = usize::MAX;
        self.opts.max_pending_bytes = usize::MAX;
        let result = self.ingest_inner(envelopes, "repair", true);
        self.opts = opts;
        let reports = result?;
        self.bound_pending()?;
        Ok(reports)
    }

    fn ingest_inner(
        &mut self,
        envelopes: Vec<Vec<u8>>,
        source: &str,
        flush: bool,
    ) -> Result<Vec<Report>, ReplicaError> {
        let mut reports: Vec<Report> = Vec::with_capacity(envelopes.len());
        let mut work = VecDeque::new();
        let mut admitted = HashSet::new();
        if envelopes
            .iter()
            .any(|e| kervan_protocol::envelope::is_vouched(e))
        {
            // A vouched change is authenticated by a voucher later in the batch: the whole
            // batch is prepared before the first is admitted.
            let extra = if self.restoring {
                self.store.proofs()?
            } else {
                Vec::new()
            };
            let prepared = prepare_vouched(envelopes, extra, &self.federation, self.opts.limits);
            for (bytes, p) in prepared {
                let idx = reports.len();
                let (hash, doc, outcome) =
                    self.admit(bytes, Some(p), source, &mut work, &mut admitted, idx)?;
                reports.push(Report { hash, doc, outcome });
            }
        } else if envelopes.len() < PREPARE_IN_PARALLEL {
            for bytes in envelopes {
                let idx = reports.len();
                let (hash, doc, outcome) =
                    self.admit(bytes, None, source, &mut work, &mut admitted, idx)?;
                reports.push(Report { hash, doc, outcome });
            }
        } else {
            // A page: each envelope's decoding and signature depend on its bytes alone, so
            // they are checked on every core, a chunk at a time (each chunk's copies are
            // dropped before the next is made). Admission then runs in order, as above.
            let (federation, limits) = (self.federation, self.opts.limits);
            let mut rest = envelopes.into_iter();
            loop {
                let chunk: Vec<Vec<u8>> = rest.by_ref().take(PREPARE_CHUNK).collect();
                if chunk.is_empty() {
                    break;
                }
                let prepared = parallel_map(chunk, |bytes| {
                    let p = Prepared::new(&bytes, &federation, limits);
                    (bytes, p)
                });
                for (bytes, p) in prepared {
                    let idx = reports.len();
                    let (hash, doc, outcome) =
                        self.admit(bytes, Some(p), source, &mut work, &mut admitted, idx)?;
                    reports.push(Report { hash, doc, outcome });
                }
            }
        }
        self.run(work, &mut reports, flush)?;
        if flush {
            self.seal()?;
        }
        Ok(reports)
    }

    /// Steps 3 to 10 for admitted changes, in order, and what follows from the verdicts:
    /// stores, applies in one call per document, re-indexes, flushes if `flush`, snapshots or
    /// rebuilds. Each item's outcome goes to its report.
    fn run(
        &mut self,
        mut work: VecDeque<Work>,
        reports: &mut [Report],
        flush: bool,
    ) -> Result<(), ReplicaError> {
        let mut to_apply: BTreeMap<DocId, Vec<automerge::Change>> = BTreeMap::new();
        let mut touched: BTreeMap<DocId, BTreeSet<Touched>> = BTreeMap::new();
        let mut needs_rebuild = false;
        // The vouchers of the vouched changes kept in this batch.
        let mut vouchers: BTreeSet<(DocId, Hash)> = BTreeSet::new();
        while let Some(mut w) = work.pop_front() {
            let hash = w.verified.hash;
            if w.again {
                let outcome = match self.seen(&w.doc, &hash)? {
                    Seen::Held => {
                        self.stats.duplicates += 1;
                        Some(Outcome::Duplicate)
                    }
                    Seen::Refused => Some(self.refused_again()),
                    // The first copy was dropped from the pending queue: judge this one.
                    Seen::New => None,
                };
                if let Some(outcome) = outcome {
                    if let Some(i) = w.report {
                        reports[i].outcome = outcome;
                    }
                    continue;
                }
            }
            // Only this node's own write comes judged, and `write` committed it into its
            // document before it came here.
            let in_doc = w.checked.is_some();
            let verdict = match w.checked.take() {
                Some(checked) => Verdict::Accept(checked),
                None => rules::check_verified(&w.doc, w.verified.clone(), &self.view()),
            };
            if let Some(v) = w.voucher
                && !matches!(verdict, Verdict::Reject(_))
            {
                vouchers.insert((w.doc.clone(), v));
            }
            let outcome = match verdict {
                Verdict::Accept(checked) => {
                    self.store.put_change(&w.doc, &hash, &w.envelope)?;
                    needs_rebuild |= self.accept(&checked, &mut work)?;
                    touched
                        .entry(checked.doc.clone())
                        .or_default()
                        .extend(checked.touched.iter().cloned());
                    // Applying again a change the document holds would find nothing to do,
                    // at the cost of a walk of the whole document; its records are read back
                    // from the document, as the touched records of a document applied to.
                    if !in_doc {
                        to_apply
                            .entry(checked.doc.clone())
                            .or_default()
                            .push(checked.change);
                    }
                    self.stats.accepted += 1;
                    Outcome::Accepted
                }
                Verdict::Pending(reason) => {
                    self.store.put_change(&w.doc, &hash, &w.envelope)?;
                    let text = reason.to_string();
                    self.pending.insert(
                        (w.doc.clone(), hash),
                        w.verified,
                        w.envelope,
                        w.source,
                        &reason,
                    );
                    self.bound_pending()?;
                    Outcome::Pending { reason: text }
                }
                Verdict::Reject(reason) => {
                    needs_rebuild |= self.refuse(&w, &reason, &mut work)?;
                    Outcome::Rejected {
                        code: reason.code().into(),
                        reason: reason.to_string(),
                    }
                }
            };
            if let Some(i) = w.report {
                reports[i].outcome = outcome;
            }
        }
        if !self.restoring {
            for (doc, voucher) in vouchers {
                self.keep_proof(&doc, voucher)?;
            }
        }
        let started = Instant::now();
        let mut index = Vec::with_capacity(to_apply.len());
        for (doc, changes) in to_apply {
            let t = touched.remove(&doc).unwrap_or_default();
            let state = self
                .docs
                .get_mut(&doc)
                .expect("a document exists once a change of it is accepted");
            let made = match doc.park() {
                Some(park)
                    if !needs_rebuild && !self.restoring && changes.len() <= DEFER_AT_MOST =>
                {
                    state.records_made(park, &changes, &t)
                }
                _ => None,
            };
            match made {
                Some(records) => {
                    state.defer(changes);
                    index.push(Ok(records));
                }
                None => {
                    state.settle(changes)?;
                    index.push(Err((doc, t)));
                }
            }
        }
        if self.deferred().is_some_and(|(_, n)| n >= MAX_DEFERRED) {
            self.settle()?;
        }
        self.record_apply(started.elapsed().as_secs_f64());
        for i in index.into_iter().chain(touched.into_iter().map(Err)) {
            match i {
                Ok(records) => records.into_iter().for_each(|r| r.index(&mut self.index)),
                Err((doc, t)) => self.reindex(&doc, t),
            }
        }
        if flush {
            // Sealed by the caller once the change is on its way ([`Self::write`]).
            self.store.flush_unsealed()?;
            self.unflushed = None;
        } else if self.unflushed.is_none() {
            self.unflushed = Some(Instant::now());
        }
        if needs_rebuild && !self.restoring {
            self.rebuild()?;
        } else if !self.restoring {
            self.maybe_snapshot()?;
        }
        Ok(())
    }

    /// Keeps what a kept vouched change needs to be authenticated again: its voucher and the
    /// changes between them, where they are not kept as accepted or excluded changes (a voucher
    /// that waits, or that the rules refused, after its signature verified). Accepted and
    /// excluded changes are kept for good, and so is everything in their causal past.
    fn keep_proof(&mut self, doc: &DocId, voucher: Hash) -> Result<(), ReplicaError> {
        if self.kept(doc, &voucher) {
            return Ok(());
        }
        for (hash, envelope) in self.chain_from(doc, voucher)? {
            tracing::debug!(%doc, %hash, "kept as proof of a vouched change");
            self.store.put_proof(doc, &hash, &envelope)?;
        }
        Ok(())
    }

    /// Whether a change is kept for good: accepted, or excluded and kept as proof.
    fn kept(&self, doc: &DocId, hash: &Hash) -> bool {
        self.docs
            .get(doc)
            .is_some_and(|d| d.accepted.contains_key(hash))
            || self.excluded.contains(&(doc.clone(), *hash))
    }

    /// The stored changes from `from` back through its dependencies that are not accepted,
    /// ancestors first: with `from` a voucher, what must travel or be kept with the vouched
    /// changes it authenticates (the accepted ones below them are held by whoever holds the
    /// vouched change's dependencies).
    fn chain_from(&self, doc: &DocId, from: Hash) -> Result<Vec<(Hash, Vec<u8>)>, ReplicaError> {
        let accepted = |h: &Hash| {
            self.docs
                .get(doc)
                .is_some_and(|d| d.accepted.contains_key(h))
        };
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        // Depth first, each change after its dependencies.
        let mut stack: Vec<(Hash, Option<Vec<u8>>)> = vec![(from, None)];
        while let Some((h, done)) = stack.pop() {
            if let Some(envelope) = done {
                out.push((h, envelope));
                continue;
            }
            if accepted(&h) || !seen.insert(h) {
                continue;
            }
            let found = match self.store.change(doc, &h)? {
                Some(e) => Some(e),
                None => match self.store.proof(doc, &h)? {
                    Some(e) => Some(e),
                    None => self
                        .store
                        .rejected_record(doc, &h)?
                        .filter(|r| r.verified && !r.envelope.is_empty())
                        .map(|r| r.envelope),
                },
            };
            let Some(envelope) = found else { continue };
            let Some(change) = SignedChange::decode(&envelope, usize::MAX)
                .ok()
                .and_then(|e| e.parse().ok())
            else {
                continue;
            };
            stack.push((h, Some(envelope)));
            stack.extend(change.deps().iter().map(|d| (Hash::from(*d), None)));
        }
        Ok(out)
    }

    fn record_apply(&mut self, secs: f64) {
        for (bound, count) in APPLY_BUCKETS
            .iter()
            .zip(self.stats.apply_buckets.iter_mut())
        {
            if secs <= *bound {
                *count += 1;
            }
        }
        self.stats.apply_count += 1;
        self.stats.apply_seconds += secs;
    }

    /// Steps 1 and 2 for one envelope: decode, tell duplicates, verify the signature, claim the
    /// change's slot. What passes goes on the work queue. `prepared` is what
    /// [`Prepared::new`] found of these bytes beforehand, if it ran.
    fn admit(
        &mut self,
        bytes: Vec<u8>,
        prepared: Option<Prepared>,
        source: &str,
        work: &mut VecDeque<Work>,
        admitted: &mut HashSet<(DocId, Hash)>,
        idx: usize,
    ) -> Result<(Option<Hash>, Option<DocId>, Outcome), ReplicaError> {
        // Refusals before the signature is checked are recorded under the envelope's own
        // hash, never the change's: a corrupted copy must not shadow the genuine change.
        let raw_key = prepared
            .as_ref()
            .map_or_else(|| raw_key(&bytes), |p| p.raw_key);
        if !self.restoring && self.store.is_rejected(None, &raw_key)? {
            return Ok((None, None, self.refused_again()));
        }
        let parsed = match prepared {
            Some(p) => p.parsed,
            None => Prepared::parse(&bytes, &self.federation, self.opts.limits, false),
        };
        let (envelope, hash, signature) = match parsed {
            Ok(p) => p,
            Err((doc, reason)) => {
                let outcome = self.reject_raw(raw_key, doc.clone(), &reason, source)?;
                return Ok((None, doc, outcome));
            }
        };
        let doc = envelope.doc.clone();
        match self.seen(&doc, &hash)? {
            Seen::Held => {
                self.stats.duplicates += 1;
                return Ok((Some(hash), Some(doc), Outcome::Duplicate));
            }
            Seen::Refused => return Ok((Some(hash), Some(doc), self.refused_again())),
            Seen::New => {}
        }
        let voucher = match signature {
            Signature::Vouched(_, true) => envelope.vouched_by(),
            _ => None,
        };
        let verified = match signature {
            Signature::Checked(v) => v,
            Signature::Unchecked(parsed) => rules::verify_parsed(&envelope, parsed, &self.view()),
            Signature::Vouched(parsed, true) => {
                rules::verify_vouched(&envelope, parsed, self.opts.limits)
            }
            Signature::Vouched(_, false) => Err(RejectReason::Unvouched {
                voucher: envelope.vouched_by().unwrap_or(Hash([0; 32])),
            }),
        };
        let verified = match verified {
            Ok(v) => v,
            Err(reason @ RejectReason::Unvouched { .. }) => {
                // Nothing is recorded: the same envelope is sound in a batch with its voucher.
                if !self.restoring {
                    tracing::warn!(source, %doc, %hash, %reason, "rejected change");
                }
                *self
                    .stats
                    .rejected
                    .entry(reason.code().to_owned())
                    .or_default() += 1;
                let outcome = Outcome::Rejected {
                    code: reason.code().into(),
                    reason: reason.to_string(),
                };
                return Ok((Some(hash), Some(doc), outcome));
            }
            Err(reason) => {
                let outcome = self.reject_raw(raw_key, Some(doc.clone()), &reason, source)?;
                return Ok((Some(hash), Some(doc), outcome));
            }
        };
        let slot = (doc.clone(), verified.actor, verified.change.seq());
        if !self.slots.contains_key(&slot) {
            self.store.put_slot(&slot.0, &slot.1, slot.2, &hash)?;
            self.slots.insert(slot, hash);
        }
        let again = !admitted.insert((doc.clone(), hash));
        work.push_back(Work {
            doc: doc.clone(),
            verified,
            envelope: bytes,
            source: source.to_owned(),
            report: Some(idx),
            again,
            checked: None,
            voucher,
        });
        Ok((
            Some(hash),
            Some(doc),
            Outcome::Pending {
                reason: "not checked yet".into(),
            },
        ))
    }

    /// Records an envelope refused before its signature verified, under its own hash.
    fn reject_raw(
        &mut self,
        key: Hash,
        doc: Option<DocId>,
        reason: &RejectReason,
        source: &str,
    ) -> Result<Outcome, ReplicaError> {
        tracing::warn!(source, code = reason.code(), %reason, "rejected change");
        *self
            .stats
            .rejected
            .entry(reason.code().to_owned())
            .or_default() += 1;
        self.store.put_rejected(&Rejected {
            key,
            doc,
            verified: false,
            code: reason.code().into(),
            reason: reason.to_string(),
            source: source.into(),
            at: now_seconds(),
            envelope: Vec::new(),
        })?;
        Ok(Outcome::Rejected {
            code: reason.code().into(),
            reason: reason.to_string(),
        })
    }

    /// Records a verified change the rules refused, and wakes what waited for it (it will now
    /// be refused too). Returns whether an acceptance must be taken back (equivocation by an
    /// actor whose changes were already applied).
    fn refuse(
        &mut self,
        w: &Work,
        reason: &RejectReason,
        work: &mut VecDeque<Work>,
    ) -> Result<bool, ReplicaError> {
        let hash = w.verified.hash;
        let actor = w.verified.actor;
        let seq = w.verified.change.seq();
        if !self.restoring {
            tracing::warn!(source = %w.source, doc = %w.doc, %hash, code = reason.code(), %reason, "rejected change");
        }
        *self
            .stats
            .rejected
            .entry(reason.code().to_owned())
            .or_default() += 1;
        let mut rebuild = false;
        let excluded = match reason {
            RejectReason::Equivocation { other, .. } => {
                let other_env = match self.store.change(&w.doc, other)? {
                    Some(e) => e,
                    None => self
                        .store
                        .rejected()?
                        .into_iter()
                        .find(|r| r.key == *other && r.doc.as_ref() == Some(&w.doc))
                        .map(|r| r.envelope)
                        .unwrap_or_default(),
                };
                // Evidence travels: both changes go out on gossip, and sync answers carry them.
                self.publish(other_env.clone());
                self.publish(w.envelope.clone());
                self.store.put_evidence(&Evidence {
                    doc: w.doc.clone(),
                    actor,
                    seq,
                    hashes: vec![*other, hash],
                    envelopes: vec![other_env, w.envelope.clone()],
                })?;
                let f = self.frozen.entry((w.doc.clone(), actor)).or_insert(seq);
                *f = (*f).min(seq);
                rebuild = self
                    .docs
                    .get(&w.doc)
                    .and_then(|d| d.heads.get(&actor))
                    .is_some_and(|(s, _)| *s >= seq);
                true
            }
            RejectReason::Frozen { .. }
            | RejectReason::BuiltOnEquivocation { .. }
            | RejectReason::DeviceFrozen { .. } => true,
            _ => false,
        };
        if excluded {
            // Kept as proof: a restore judges it again, with the evidence, the same way.
            self.store.put_change(&w.doc, &hash, &w.envelope)?;
            self.excluded.insert((w.doc.clone(), hash));
        }
        if !self.restoring || !excluded {
            self.store.put_rejected(&Rejected {
                key: hash,
                doc: Some(w.doc.clone()),
                verified: true,
                code: reason.code().into(),
                reason: reason.to_string(),
                source: w.source.clone(),
                at: now_seconds(),
                envelope: w.envelope.clone(),
            })?;
        }
        self.wake(&Wait::Dep(w.doc.clone(), hash), work);
        Ok(rebuild)
    }

    /// Moves what waited for `wait` back onto the work queue.
    fn wake(&mut self, wait: &Wait, work: &mut VecDeque<Work>) {
        for ((doc, _), w) in self.pending.wake(wait) {
            work.push_back(Work {
                doc,
                verified: w.verified,
                envelope: w.envelope,
                source: w.source,
                report: None,
                again: false,
                checked: None,
                voucher: None,
            });
        }
    }

    /// Takes an accepted change into the replica's knowledge and wakes what waited for it.
    /// Returns whether a device just became registered for a second park, which freezes it
    /// and takes back its changes.
    fn accept(&mut self, c: &Checked, work: &mut VecDeque<Work>) -> Result<bool, ReplicaError> {
        let actor = self.actor();
        let state = self
            .docs
            .entry(c.doc.clone())
            .or_insert_with(|| DocState::new(actor));
        state.accept(c);
        let mut wakes = vec![Wait::Dep(c.doc.clone(), c.hash)];
        let mut rebuild = false;
        for r in &c.registrations {
            if let Some((key, parks)) = self.registry.add(r) {
                tracing::warn!(device = %key, ?parks, "device registered for two parks: frozen");
                self.store.put_frozen_key(&key, &parks)?;
                rebuild = true;
            }
            match r {
                Registration::Park(p) => wakes.push(Wait::Park(p.clone())),
                Registration::Device(_, k) => wakes.push(Wait::Device(*k)),
                Registration::RootActor(..) => {}
            }
        }
        for wait in wakes {
            self.wake(&wait, work);
        }
        Ok(rebuild)
    }

    fn bound_pending(&mut self) -> Result<(), ReplicaError> {
        if self.restoring {
            return Ok(());
        }
        while self.pending.len() > self.opts.max_pending
            || self.pending.bytes > self.opts.max_pending_bytes
        {
            let Some(((doc, hash), _)) = self.pending.oldest() else {
                break;
            };
            tracing::warn!(%doc, %hash, "pending queue full: dropped the oldest change");
            self.store.remove_change(&doc, &hash)?;
            self.stats.pending_dropped += 1;
        }
        Ok(())
    }

    /// Applies the changes whose records the index took from their ops to their documents.
    /// The node's actor calls it once nothing has asked anything of the replica for a moment;
    /// whatever needs a document settles it first.
    pub fn settle(&mut self) -> Result<(), ReplicaError> {
        if self.deferred().is_none() {
            return Ok(());
        }
        let started = Instant::now();
        for state in self.docs.values_mut() {
            state.settle(Vec::new())?;
        }
        self.record_apply(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// How long changes have waited to be applied to their documents, and how many wait, if
    /// any do.
    pub fn deferred(&self) -> Option<(std::time::Duration, usize)> {
        let since = self.docs.values().filter_map(|d| d.deferred_since).min()?;
        let n = self.docs.values().map(|d| d.deferred.len()).sum();
        Some((since.elapsed(), n))
    }

    /// Hands the snapshot thread each document that has come due: every `snapshot_every`
    /// changes, or every quarter of the document's history if that is more. A snapshot costs
    /// time in proportion to the whole document, so a fixed interval would make a long
    /// catch-up quadratic. The snapshot holds the document as it is now; the thread saves and
    /// writes it while this one goes on.
    fn maybe_snapshot(&mut self) -> Result<(), ReplicaError> {
        let due: Vec<DocId> = self
            .docs
            .iter()
            .filter(|(_, d)| d.since_snapshot >= self.opts.snapshot_every.max(d.accepted.len() / 4))
            .map(|(k, _)| k.clone())
            .collect();
        for doc in due {
            if let Some(snapshot) = self.take_snapshot(&doc)? {
                self.snapshots.hand_over(snapshot);
            }
        }
        Ok(())
    }

    /// A document's snapshot as it stands now, to be saved and written: its metadata, the
    /// index's copy of a ledger's records and a copy of the document, after the changes that
    /// wait are applied. The document counts no change since its snapshot from here on.
    fn take_snapshot(&mut self, doc: &DocId) -> Result<Option<Snapshot>, ReplicaError> {
        let records = self.records_copy(doc);
        let Some(state) = self.docs.get_mut(doc) else {
            return Ok(None);
        };
        state.settle(Vec::new())?;
        let snapshot = Snapshot {
            meta: state.snapshot_meta(),
            document: state.doc.clone(),
            records,
            doc: doc.clone(),
        };
        state.since_snapshot = 0;
        Ok(Some(snapshot))
    }

    /// The index's copy of a ledger's records, made for its snapshot. The index is up to date
    /// with every accepted change whenever a snapshot is taken (the deferred ones included):
    /// the copy is tagged with the set of them.
    fn records_copy(&self, doc: &DocId) -> Option<RecordsCopy> {
        let (park, state) = (doc.park()?, self.docs.get(doc)?);
        Some(RecordsCopy {
            tag: state.tag(),
            records: self.index.ledger_records(park),
        })
    }

    /// Snapshots a document on this thread, after any snapshot in the snapshot thread's hands
    /// is written, so that an older one never replaces it.
    fn snapshot(&mut self, doc: &DocId) -> Result<(), ReplicaError> {
        self.snapshots.wait();
        if let Some(snapshot) = self.take_snapshot(doc)? {
            snapshots::write(&self.store, snapshot)?;
        }
        Ok(())
    }

    /// Waits until the snapshots handed to the snapshot thread are written.
    pub fn wait_for_snapshots(&self) {
        self.snapshots.wait();
    }

    /// Snapshots every document and flushes: what a clean shutdown does.
    pub fn snapshot_all(&mut self) -> Result<(), ReplicaError> {
        let docs: Vec<DocId> = self.docs.keys().cloned().collect();
        for doc in docs {
            self.snapshot(&doc)?;
        }
        self.store.flush()?;
        Ok(())
    }

    // ---- the query index ----

    /// Builds the query index from every document at start: the records of each ledger not in
    /// `indexed` (whose snapshot's copy of its records is indexed already) are read out of
    /// Automerge on as many threads as there are cores, then indexed.
    fn reindex_all(&mut self, indexed: &HashSet<DocId>) {
        for p in self.registry.parks.clone() {
            let park = self
                .docs
                .get(&DocId::Federation)
                .and_then(|state| read_park(&state.doc, &p));
            self.index.set_park(p, park);
        }
        let ledgers: Vec<(&ParkId, &DocState)> = self
            .docs
            .iter()
            .filter(|(doc, _)| !indexed.contains(*doc))
            .filter_map(|(doc, state)| doc.park().map(|p| (p, state)))
            .collect();
        let read = parallel_map(ledgers, |(park, state)| {
            let mut out = Vec::new();
            for collection in records::COLLECTIONS {
                let Some(obj) = child(&state.doc, &ROOT, collection) else {
                    continue;
                };
                for item in state.doc.map_range(&obj, ..) {
                    let Ok(id) = item.key.parse::<RecordId>() else {
                        continue;
                    };
                    let record = Some(item.id());
                    out.push(IndexedRecord::read(
                        park, collection, id, &state.doc, record,
                    ));
                }
            }
            out
        });
        for r in read.into_iter().flatten() {
            r.index(&mut self.index);
        }
    }

    fn reindex(&mut self, doc: &DocId, touched: BTreeSet<Touched>) {
        let Some(state) = self.docs.get(doc) else {
            return;
        };
        // Each collection's map is looked up once a batch, not once a record.
        let mut collections: HashMap<&str, Option<ObjId>> = HashMap::new();
        for t in touched {
            match t {
                Touched::Park(p) => {
                    let park = read_park(&state.doc, &p);
                    self.index.set_park(p, park);
                }
                Touched::Record { collection, id } => {
                    let Some(park) = doc.park() else { continue };
                    let record = collections
                        .entry(collection)
                        .or_insert_with(|| child(&state.doc, &ROOT, collection))
                        .as_ref()
                        .and_then(|c| child(&state.doc, c, &id.to_string()));
                    IndexedRecord::read(park, collection, id, &state.doc, record)
                        .index(&mut self.index);
                }
            }
        }
    }

    /// Sends this node's own accepted changes, already flushed, to `outbox` for publishing.
    pub fn set_outbox(&mut self, outbox: tokio::sync::mpsc::Sender<Vec<u8>>) {
        self.outbox = Some(outbox);
    }

    fn publish(&self, envelope: Vec<u8>) {
        // A vouched change proves nothing on its own: sync pages carry it with its voucher.
        if kervan_protocol::envelope::is_vouched(&envelope) {
            return;
        }
        if let Some(tx) = &self.outbox
            && tx.try_send(envelope).is_err()
        {
            tracing::debug!("outbox full or closed: anti-entropy will deliver the change");
        }
    }

    /// Every registered device that is not frozen: the peers a node lets connect.
    pub fn member_keys(&self) -> Vec<DeviceKey> {
        self.registry
            .devices
            .keys()
            .filter(|k| !self.registry.frozen.contains(k))
            .copied()
            .collect()
    }

    // ---- reads ----

    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn federation(&self) -> FederationId {
        self.federation
    }

    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Envelope bytes of the changes that wait.
    pub fn pending_bytes(&self) -> usize {
        self.pending.bytes
    }

    pub fn accepted_count(&self) -> usize {
        self.docs.values().map(|d| d.accepted.len()).sum()
    }

    pub fn has_doc(&self, doc: &DocId) -> bool {
        self.docs.contains_key(doc)
    }

    /// Whether the device is registered for the park.
    pub fn is_device(&self, park: &ParkId, key: &DeviceKey) -> bool {
        self.view().is_device(park, key)
    }

    /// For each (doc, actor), the newest accepted seq and its hash.
    pub fn summary(&self) -> Vec<(DocId, Actor, u64, Hash)> {
        self.docs
            .iter()
            .flat_map(|(doc, d)| {
                d.heads
                    .iter()
                    .map(move |(a, (s, h))| (doc.clone(), *a, *s, *h))
            })
            .collect()
    }

    /// The state digest: equal on two nodes exactly when they hold the same accepted changes.
    pub fn digest(&self) -> Hash {
        self.sync_summary().digest
    }

    /// The summary this node sends in a sync round.
    pub fn sync_summary(&self) -> kervan_protocol::sync::Summary {
        kervan_protocol::sync::Summary::new(
            self.summary()
                .into_iter()
                .map(|(doc, actor, seq, hash)| kervan_protocol::sync::Head {
                    doc,
                    actor,
                    seq,
                    hash,
                })
                .collect(),
        )
    }

    /// The changes a peer with `remote` lacks, federation document first, each document in
    /// causal order, up to about `max_bytes`; and whether more remain.
    ///
    /// A page carries one signature per actor and document, over the actor's newest change in
    /// it, and the receiver keeps the actor's other changes as vouched for by it; so the page
    /// ends only where each actor's last change in it has a signature of its own here. A
    /// change this node holds as vouched has one further on (its voucher, or one before it),
    /// so a page past `max_bytes` goes on to it, up to what a receiver takes.
    pub fn sync_page(
        &self,
        remote: &kervan_protocol::sync::Summary,
        max_bytes: usize,
    ) -> Result<(Vec<Vec<u8>>, bool), ReplicaError> {
        use kervan_protocol::sync::{MAX_PAGE_CHANGES, MAX_UNPACKED_BYTES};
        let mut wanted: Vec<(&DocId, u64, Hash, Actor)> = Vec::new();
        for m in kervan_protocol::sync::missing(&self.sync_summary(), remote) {
            let Some((doc, state)) = self.docs.get_key_value(&m.doc) else {
                continue;
            };
            for seq in m.seqs {
                let Some(hash) = self.slots.get(&(m.doc.clone(), m.actor, seq)) else {
                    continue;
                };
                // A change's clock sums to more than any change in its causal past: sorting
                // by it is a causal order.
                if let Some(info) = state.accepted.get(hash) {
                    wanted.push((doc, info.clock.values().sum(), *hash, info.actor));
                }
            }
        }
        wanted.sort();
        // Equivocation evidence rides along whenever the digests differ: a node that took one
        // side of a fork learns of the other however it pulls. A vouched side travels with
        // the changes up to its voucher, so a fork's evidence goes whole or waits: cut inside,
        // it would end before the voucher and prove nothing. Evidence fills at most half a
        // page, or a whole one for a single fork, and the forks the receiver took a side of
        // (it holds the actor at or past the fork's seq) go first, so forks it knows already
        // cannot keep those out.
        let mut forks = self.store.evidence()?;
        if forks.len() > 1 {
            let remote_at: HashMap<(&DocId, Actor), u64> = remote
                .heads
                .iter()
                .map(|h| ((&h.doc, h.actor), h.seq))
                .collect();
            // Sorted `false` first: those the receiver holds at or past the fork's seq.
            forks.sort_by_key(|e| {
                remote_at
                    .get(&(&e.doc, e.actor))
                    .is_none_or(|seq| *seq < e.seq)
            });
        }
        let mut page: Vec<Vec<u8>> = Vec::new();
        let mut bytes = 0;
        for e in forks {
            let mut group: Vec<Vec<u8>> = Vec::new();
            for env in e.envelopes.into_iter().filter(|e| !e.is_empty()) {
                match SignedChange::decode(&env, usize::MAX)
                    .ok()
                    .and_then(|d| d.vouched_by())
                {
                    Some(voucher) => group.extend(
                        self.chain_from(&e.doc, voucher)?
                            .into_iter()
                            .map(|(_, env)| env),
                    ),
                    None => group.push(env),
                }
            }
            let size: usize = group.iter().map(Vec::len).sum();
            let fits = if page.is_empty() {
                group.len() <= MAX_PAGE_CHANGES && size <= MAX_UNPACKED_BYTES / 2
            } else {
                page.len() + group.len() <= MAX_PAGE_CHANGES / 2
                    && bytes + size <= MAX_UNPACKED_BYTES / 2
            };
            if !fits {
                if page.is_empty() {
                    tracing::warn!(doc = %e.doc, seq = e.seq, changes = group.len(), size,
                        "the evidence of a fork is larger than a page: not sent");
                }
                continue;
            }
            bytes += size;
            page.extend(group);
        }
        // Where the page may end: each actor's last change so far has its own signature.
        let mut cut = (page.len(), bytes, 0);
        let mut unsigned: HashSet<(&DocId, Actor)> = HashSet::new();
        // The last wanted change of each actor: where one held as vouched by a voucher that is
        // no longer accepted (excluded by a fork found later), the voucher follows it.
        let last: HashMap<(&DocId, Actor), usize> = wanted
            .iter()
            .enumerate()
            .map(|(i, (doc, _, _, actor))| ((*doc, *actor), i))
            .collect();
        for (i, (doc, _, hash, actor)) in wanted.iter().enumerate() {
            let full = bytes >= max_bytes || page.len() >= MAX_PAGE_CHANGES;
            if full && unsigned.is_empty() {
                return Ok((page, true));
            }
            let Some(env) = self.store.change(doc, hash)? else {
                continue;
            };
            if bytes + env.len() > MAX_UNPACKED_BYTES || page.len() >= MAX_PAGE_CHANGES {
                // No signature within what a receiver takes: end where the page could.
                tracing::warn!(
                    %doc,
                    "a run of vouched changes is longer than a page: sending up to the last signed change"
                );
                page.truncate(cut.0);
                return Ok((page, cut.2 < wanted.len()));
            }
            let vouched = kervan_protocol::envelope::is_vouched(&env);
            let stranded = if vouched && last[&(*doc, *actor)] == i {
                SignedChange::decode(&env, usize::MAX)
                    .ok()
                    .and_then(|e| e.vouched_by())
                    .filter(|by| {
                        !self
                            .docs
                            .get(*doc)
                            .is_some_and(|d| d.accepted.contains_key(by))
                    })
            } else {
                None
            };
            if vouched {
                unsigned.insert((doc, *actor));
            } else {
                unsigned.remove(&(*doc, *actor));
            }
            bytes += env.len();
            page.push(env);
            if let Some(voucher) = stranded {
                for (_, env) in self.chain_from(doc, voucher)? {
                    bytes += env.len();
                    page.push(env);
                }
                unsigned.remove(&(*doc, *actor));
            }
            if unsigned.is_empty() {
                cut = (page.len(), bytes, i + 1);
            }
        }
        if !unsigned.is_empty() {
            // Cannot happen while every vouched change's voucher is stored: an accepted one is
            // wanted too, another travels after the actor's last wanted change.
            tracing::warn!("vouched changes without a signed change after them: left out");
            page.truncate(cut.0);
            return Ok((page, false));
        }
        Ok((page, false))
    }

    /// Every accepted change, federation document first, each document in causal order, and
    /// what authenticates the vouched ones among them: with `since`, the changes up to the
    /// voucher of each vouched change exported, however old; and the kept proofs.
    pub fn export<'a>(&'a self, since: Option<i64>) -> Result<Bundle, ReplicaError> {
        let mut entries = Vec::new();
        for (doc, d) in &self.docs {
            // By place in the document's causal order, so that what is taken back below
            // goes out in that order too.
            let mut kept: Vec<(usize, Vec<u8>)> = Vec::new();
            let mut skipped = Vec::new();
            let mut needed: Vec<(&CausalInfo, &CausalInfo)> = Vec::new();
            let mut stranded: Vec<Hash> = Vec::new();
            // Notes what authenticates a vouched change that is exported: its voucher, and
            // the changes between them.
            let vouched = |hash: &Hash,
                           by: Option<Hash>,
                           needed: &mut Vec<(&'a CausalInfo, &'a CausalInfo)>,
                           stranded: &mut Vec<Hash>| {
                if let Some(by) = by {
                    match (d.accepted.get(hash), d.accepted.get(&by)) {
                        (Some(x), Some(v)) => needed.push((x, v)),
                        // A voucher excluded after it vouched (a fork found later) is not
                        // exported as accepted: it travels with what it vouched for.
                        (_, None) => stranded.push(by),
                        _ => {}
                    }
                }
            };
            for (i, hash) in d.order.iter().enumerate() {
                let Some(env) = self.store.change(doc, hash)? else {
                    continue;
                };
                let decoded = SignedChange::decode(&env, usize::MAX).ok();
                let by = decoded.as_ref().and_then(SignedChange::vouched_by);
                if let Some(since) = since {
                    let time = decoded.and_then(|e| e.parse().ok()).map(|c| c.timestamp());
                    if time.is_some_and(|t| t < since) {
                        skipped.push((i, *hash, by, env));
                        continue;
                    }
                }
                vouched(hash, by, &mut needed, &mut stranded);
                kept.push((i, env));
            }
            // A change left out by time is taken back if it lies between a vouched change
            // exported and its voucher: after the one, in the causal past of the other. One
            // taken back may itself be vouched, by a voucher left out too (a device's clock
            // behind the others'): that voucher and what lies between them are taken back in
            // the next round, until a round takes nothing.
            let mut from = 0;
            while from < needed.len() && !skipped.is_empty() {
                let round = needed.len();
                let between = |c: &CausalInfo| {
                    needed[from..round].iter().any(|(x, v)| {
                        c.clock.get(&x.actor).is_some_and(|s| *s >= x.seq)
                            && v.clock.get(&c.actor).is_some_and(|s| *s >= c.seq)
                    })
                };
                let (taken, left): (Vec<_>, Vec<_>) = skipped
                    .into_iter()
                    .partition(|(_, hash, ..)| d.accepted.get(hash).is_some_and(between));
                skipped = left;
                for (i, hash, by, env) in taken {
                    vouched(&hash, by, &mut needed, &mut stranded);
                    kept.push((i, env));
                }
                from = round;
            }
            kept.sort_by_key(|(i, _)| *i);
            entries.extend(kept.into_iter().map(|(_, env)| env));
            stranded.sort();
            stranded.dedup();
            let mut chained = HashSet::new();
            for voucher in stranded {
                if self.store.proof(doc, &voucher)?.is_some() {
                    // Kept as proof, so exported below with the rest of the proofs.
                    continue;
                }
                for (hash, env) in self.chain_from(doc, voucher)? {
                    if chained.insert(hash) {
                        entries.push(env);
                    }
                }
            }
        }
        entries.extend(self.store.proofs()?);
        Ok(Bundle {
            federation: self.federation,
            entries,
        })
    }

    /// Imports a bundle file's bytes: the framing must be sound and the bundle of this
    /// federation before any change in it is looked at.
    pub fn import(&mut self, bytes: &[u8], source: &str) -> Result<Vec<Report>, ImportError> {
        let limit =
            self.opts.limits.max_change_bytes + kervan_protocol::envelope::ENVELOPE_OVERHEAD;
        let bundle = Bundle::decode(bytes, MAX_BUNDLE_BYTES, limit)?;
        if bundle.federation != self.federation {
            return Err(ImportError::Federation {
                found: bundle.federation,
                expected: self.federation,
            });
        }
        Ok(self.ingest(bundle.entries, source)?)
    }

    /// Re-verifies every stored change against its key and signature (a vouched change: its
    /// voucher's signature, and the chain of hashes between them), and counts.
    pub fn verify_all(&self) -> Result<VerifyReport, ReplicaError> {
        let stored = self.store.changes()?;
        let mut keys = Vec::with_capacity(stored.len());
        let mut envelopes = Vec::with_capacity(stored.len());
        for (doc, key, env) in stored {
            keys.push((doc, key));
            envelopes.push(env);
        }
        let prepared = prepare_vouched(
            envelopes,
            self.store.proofs()?,
            &self.federation,
            self.opts.limits,
        );
        let mut failed = Vec::new();
        let mut verified = 0;
        for ((doc, key), (_, p)) in keys.iter().zip(&prepared) {
            let result = match &p.parsed {
                Err((_, reason)) => Err(reason.to_string()),
                Ok((e, _, _)) if e.doc != *doc => {
                    Err(format!("stored under {doc} but signed for {}", e.doc))
                }
                Ok((_, hash, _)) if hash != key => {
                    Err(format!("stored under {key} but hashes to {hash}"))
                }
                Ok((_, _, Signature::Checked(Err(reason)))) => Err(reason.to_string()),
                Ok((e, _, Signature::Vouched(_, false))) => Err(RejectReason::Unvouched {
                    voucher: e.vouched_by().unwrap_or(Hash([0; 32])),
                }
                .to_string()),
                Ok(_) => Ok(()),
            };
            match result {
                Ok(()) => verified += 1,
                Err(why) => failed.push((key.to_string(), why)),
            }
        }
        let stored = keys;
        Ok(VerifyReport {
            stored: stored.len(),
            verified,
            failed,
            accepted: self.accepted_count(),
            pending: self.pending.len(),
            excluded: self.excluded.len(),
            rejected: self.store.rejected()?.len(),
            evidence: self.store.evidence()?.len(),
            digest: self.digest().to_string(),
        })
    }

    // ---- local writes ----

    /// Makes one change to a document as this device, checks it by the same rules as a peer's,
    /// stores and flushes it. The change is durable when this returns. An edit that changes
    /// nothing makes no change and answers `None`.
    fn write(
        &mut self,
        doc: &DocId,
        edit: impl FnOnce(&mut AutoCommit) -> Result<(), automerge::AutomergeError>,
    ) -> Result<Option<Hash>, ReplicaError> {
        let identity = self.identity.clone().ok_or(ReplicaError::NoIdentity)?;
        let state = self
            .docs
            .get_mut(doc)
            .ok_or_else(|| ReplicaError::NoLedger(format!("{doc} has not been started")))?;
        state.settle(Vec::new())?;
        state.doc.set_actor(identity.actor().to_automerge());
        if let Err(e) = edit(&mut state.doc) {
            state.doc.rollback();
            return Err(ReplicaError::Automerge(e.to_string()));
        }
        if state
            .doc
            .commit_with(CommitOptions::default().with_time(now_seconds()))
            .is_none()
        {
            // The edit set what was already there: nothing to sign, nothing to send.
            return Ok(None);
        }
        let mut change = state
            .doc
            .get_last_local_change()
            .expect("a change was just committed");
        let signed = SignedChange::sign(&self.federation, doc.clone(), &mut change, &identity.key);
        // Judge it first, storing nothing: a refused change must leave no slot, no pending
        // entry and no trace, so the next write may take the same seq. It is judged once: the
        // bytes are Automerge's own encoding of the change, and nothing runs on this thread
        // between the verdict and storing it, so the verdict stands for the work queue.
        let verified = rules::verify_signed(&signed, change, &self.federation, self.opts.limits);
        let verdict = verified.map(|v| (rules::check_verified(doc, v.clone(), &self.view()), v));
        let why = match verdict {
            Ok((Verdict::Accept(checked), verified)) => {
                let hash = verified.hash;
                let envelope = signed.encode();
                let slot = (doc.clone(), verified.actor, verified.change.seq());
                if !self.slots.contains_key(&slot) {
                    self.store.put_slot(&slot.0, &slot.1, slot.2, &hash)?;
                    self.slots.insert(slot, hash);
                }
                let mut reports = vec![Report {
                    hash: Some(hash),
                    doc: Some(doc.clone()),
                    outcome: Outcome::Pending {
                        reason: "not checked yet".into(),
                    },
                }];
                let work = VecDeque::from([Work {
                    again: false,
                    doc: doc.clone(),
                    verified,
                    envelope: envelope.clone(),
                    source: "local".to_owned(),
                    report: Some(0),
                    checked: Some(checked),
                    voucher: None,
                }]);
                self.run(work, &mut reports, true)?;
                match reports.first().map(|r| &r.outcome) {
                    Some(Outcome::Accepted) => {
                        self.publish(envelope);
                        // Flushed before it was published and acknowledged; the seal
                        // follows once the answer has gone ([`Self::seal_if_due`]).
                        self.seal_due = true;
                        return Ok(Some(hash));
                    }
                    other => format!("{other:?}"),
                }
            }
            Ok((Verdict::Pending(p), _)) => p.to_string(),
            Ok((Verdict::Reject(r), _)) => r.to_string(),
            Err(r) => r.to_string(),
        };
        // The document already holds the refused change: rebuild it from the store, which
        // never received it.
        tracing::error!(%doc, why, "own change refused; rebuilding");
        self.rebuild()?;
        Err(ReplicaError::OwnChangeRefused(why))
    }

    fn own_park(&self) -> Result<ParkId, ReplicaError> {
        self.identity
            .as_ref()
            .map(|i| i.park.clone())
            .ok_or(ReplicaError::NoIdentity)
    }

    /// Starts this park's ledger if this device is the root device the genesis names and the
    /// ledger does not exist yet. Returns whether it did.
    pub fn start_ledger(&mut self) -> Result<bool, ReplicaError> {
        let identity = self.identity.clone().ok_or(ReplicaError::NoIdentity)?;
        let doc = DocId::Ledger(identity.park.clone());
        if self.docs.contains_key(&doc)
            || self.registry.roots.get(&identity.park) != Some(&identity.actor())
        {
            return Ok(false);
        }
        let mut change = kervan_protocol::ledger_root_change(identity.actor(), now_seconds());
        let signed = SignedChange::sign(&self.federation, doc, &mut change, &identity.key);
        let envelope = signed.encode();
        let report = self.ingest(vec![envelope.clone()], "local")?;
        match report.first().map(|r| &r.outcome) {
            Some(Outcome::Accepted) => {
                self.publish(envelope);
                Ok(true)
            }
            other => Err(ReplicaError::OwnChangeRefused(format!("{other:?}"))),
        }
    }

    fn ledger(&self) -> Result<DocId, ReplicaError> {
        Ok(DocId::Ledger(self.own_park()?))
    }

    fn check_owner(&self, id: &RecordId) -> Result<(), ReplicaError> {
        let park = self.own_park()?;
        if id.park() != &park {
            return Err(ReplicaError::Forbidden {
                id: id.to_string(),
                owner: id.park().clone(),
                park,
            });
        }
        Ok(())
    }

    fn exists(&self, collection: Collection, id: &RecordId) -> bool {
        match collection {
            Collection::Startups => self.index.startup(id).is_some(),
            Collection::Programs => self.index.program(id).is_some(),
            Collection::Applications => self.index.application(id).is_some(),
        }
    }

    /// Creates a record of this park. `local` names it; without it the node assigns a ULID.
    pub fn create(
        &mut self,
        collection: Collection,
        local: Option<&str>,
        input: &Value,
    ) -> Result<RecordId, ReplicaError> {
        let park = self.own_park()?;
        records::validate_input(collection.fields(), input, Mode::Create, this_year())
            .map_err(ReplicaError::Invalid)?;
        let local = local.map_or_else(|| ulid::Ulid::new().to_string(), str::to_owned);
        let id = RecordId::new(park, &local).map_err(|e| invalid("id", e.to_string()))?;
        if self.exists(collection, &id) {
            return Err(ReplicaError::Conflict(id));
        }
        self.check_relations(collection, input, None)?;
        let mut obj = input.as_object().cloned().unwrap_or_default();
        let now = Value::String(now_rfc3339());
        match collection {
            Collection::Applications => {
                obj.insert("submitted_at".into(), now);
            }
            _ => {
                obj.insert("created_at".into(), now.clone());
                obj.insert("updated_at".into(), now);
            }
        }
        let value = records::record_to_automerge(collection.fields(), &obj);
        let key = id.to_string();
        self.write(&self.ledger()?, |doc| {
            let coll = child(doc, &ROOT, collection.name()).ok_or_else(no_collection)?;
            doc.batch_create_object(&coll, key.as_str(), &value, false)?;
            Ok(())
        })?;
        Ok(id)
    }

    /// Cross-record checks of a create or patch: an application's startup is this park's and
    /// exists, its program exists; a program ends after it starts.
    fn check_relations(
        &self,
        collection: Collection,
        input: &Value,
        existing: Option<&Value>,
    ) -> Result<(), ReplicaError> {
        let get = |k: &str| {
            input
                .get(k)
                .or_else(|| existing.and_then(|e| e.get(k)))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        match collection {
            Collection::Applications => {
                if let Some(s) = input.get("startup").and_then(Value::as_str) {
                    let id: RecordId = s
                        .parse()
                        .map_err(|_| invalid("startup", "not a record id"))?;
                    self.check_owner(&id)?;
                    if self.index.startup(&id).is_none() {
                        return Err(invalid("startup", format!("no startup {id}")));
                    }
                }
                if let Some(p) = input.get("program").and_then(Value::as_str) {
                    let id: RecordId = p
                        .parse()
                        .map_err(|_| invalid("program", "not a record id"))?;
                    if self.index.program(&id).is_none() {
                        return Err(invalid("program", format!("no program {id}")));
                    }
                }
            }
            Collection::Programs => {
                if let (Some(s), Some(e)) = (get("starts"), get("ends"))
                    && let (Some(s), Some(e)) = (records::parse_date(&s), records::parse_date(&e))
                    && e < s
                {
                    return Err(invalid("ends", "expected a date on or after starts"));
                }
            }
            Collection::Startups => {}
        }
        Ok(())
    }

    /// Changes the named fields of a record of this park; `null` removes an optional field.
    pub fn update(
        &mut self,
        collection: Collection,
        id: &RecordId,
        patch: &Value,
    ) -> Result<(), ReplicaError> {
        self.check_owner(id)?;
        if !self.exists(collection, id) {
            return Err(ReplicaError::NotFound {
                what: collection.singular(),
                id: id.to_string(),
            });
        }
        records::validate_input(collection.fields(), patch, Mode::Patch, this_year())
            .map_err(ReplicaError::Invalid)?;
        if collection == Collection::Applications
            && (patch.get("startup").is_some() || patch.get("program").is_some())
        {
            return Err(invalid(
                "program",
                "an application's startup and program cannot change; withdraw it and apply again",
            ));
        }
        let existing = match collection {
            Collection::Programs => self
                .index
                .program(id)
                .and_then(|p| serde_json::to_value(p).ok()),
            _ => None,
        };
        self.check_relations(collection, patch, existing.as_ref())?;
        let fields = collection.fields();
        let obj = patch.as_object().cloned().unwrap_or_default();
        let key = id.to_string();
        let stamp = (collection != Collection::Applications).then(now_rfc3339);
        self.write(&self.ledger()?, |doc| {
            let coll = child(doc, &ROOT, collection.name()).ok_or_else(no_collection)?;
            let rec = child(doc, &coll, &key).ok_or_else(no_collection)?;
            for (k, v) in &obj {
                if v.is_null() {
                    doc.delete(&rec, k.as_str())?;
                    continue;
                }
                let Some(f) = records::find_field(fields, k) else {
                    continue;
                };
                match records::field_to_automerge(&f.kind, v) {
                    automerge::hydrate::Value::Scalar(s) => doc.put(&rec, k.as_str(), s)?,
                    other => {
                        doc.batch_create_object(&rec, k.as_str(), &other, false)?;
                    }
                }
            }
            if let Some(stamp) = &stamp {
                doc.put(&rec, "updated_at", stamp.as_str())?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Removes a record of this park.
    pub fn remove(&mut self, collection: Collection, id: &RecordId) -> Result<(), ReplicaError> {
        self.check_owner(id)?;
        if !self.exists(collection, id) {
            return Err(ReplicaError::NotFound {
                what: collection.singular(),
                id: id.to_string(),
            });
        }
        let key = id.to_string();
        self.write(&self.ledger()?, |doc| {
            let coll = child(doc, &ROOT, collection.name()).ok_or_else(no_collection)?;
            doc.delete(&coll, key.as_str())
        })?;
        Ok(())
    }

    /// Records this park's decision on an application to one of its programs.
    pub fn decide(&mut self, app: &RecordId, input: &Value) -> Result<(), ReplicaError> {
        let park = self.own_park()?;
        let application = self
            .index
            .application(app)
            .ok_or_else(|| ReplicaError::NotFound {
                what: "application",
                id: app.to_string(),
            })?;
        if application.program.park() != &park {
            return Err(ReplicaError::Forbidden {
                id: application.program.to_string(),
                owner: application.program.park().clone(),
                park,
            });
        }
        records::validate_input(records::DECISION_FIELDS, input, Mode::Create, this_year())
            .map_err(ReplicaError::Invalid)?;
        let mut obj = input.as_object().cloned().unwrap_or_default();
        obj.insert("decided_at".into(), Value::String(now_rfc3339()));
        let value = records::record_to_automerge(records::DECISION_FIELDS, &obj);
        let key = app.to_string();
        self.write(&self.ledger()?, |doc| {
            let coll = child(doc, &ROOT, "decisions").ok_or_else(no_collection)?;
            doc.batch_create_object(&coll, key.as_str(), &value, false)?;
            Ok(())
        })?;
        Ok(())
    }
}

impl<S: Store> Replica<S> {
    /// Registers a further device of this park in the federation document.
    /// Registers a further device of this park from its card (`kervan init` on that device
    /// prints it): the card's proof shows the device holds its key.
    pub fn add_device(&mut self, card: &kervan_protocol::ParkCard) -> Result<Hash, ReplicaError> {
        let park = self.own_park()?;
        let key = card.device;
        if card.id != park {
            return Err(invalid(
                "id",
                format!(
                    "the card is for park {}, this node writes for {park}",
                    card.id
                ),
            ));
        }
        if !kervan_protocol::verify_device_proof(&key, &park, &card.proof) {
            return Err(invalid(
                "proof",
                "does not verify for the card's device and park",
            ));
        }
        if self.is_device(&park, &key) {
            return Err(invalid(
                "device",
                format!("device {key} is already registered for {park}"),
            ));
        }
        if let Some(l) = &card.label {
            records::check_scalar(
                &records::DEVICE_FIELDS[0].kind,
                records::Scalar::Str(l),
                None,
            )
            .map_err(|m| invalid("label", m))?;
        }
        let mut device = serde_json::Map::new();
        device.insert("added_at".into(), Value::String(now_rfc3339()));
        device.insert("proof".into(), Value::String(card.proof.clone()));
        if let Some(l) = &card.label {
            device.insert("label".into(), Value::String(l.clone()));
        }
        let value = records::record_to_automerge(records::DEVICE_FIELDS, &device);
        self.write(&DocId::Federation, |doc| {
            let parks = child(doc, &ROOT, "parks").ok_or_else(no_collection)?;
            let p = child(doc, &parks, park.as_str()).ok_or_else(no_collection)?;
            let devices = child(doc, &p, "devices").ok_or_else(no_collection)?;
            doc.batch_create_object(&devices, key.to_hex(), &value, false)?;
            Ok(())
        })?
        .ok_or_else(|| invalid("device", "the registration changed nothing"))
    }
}

/// The largest bundle file `import` reads: 1 GiB.
pub const MAX_BUNDLE_BYTES: usize = 1 << 30;

/// Why a bundle could not be imported at all.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("bundle is not readable: {0}")]
    Decode(#[from] DecodeError),
    #[error("bundle belongs to federation {found}, this node is in {expected}")]
    Federation {
        found: FederationId,
        expected: FederationId,
    },
    #[error(transparent)]
    Replica(#[from] ReplicaError),
}

/// A record read out of a ledger for the query index (`None`: removed or unreadable).
enum IndexedRecord {
    Startup(RecordId, Option<records::Startup>),
    Program(RecordId, Option<records::Program>),
    Application(RecordId, Option<records::Application>),
    Decision(RecordId, ParkId, Option<records::Decision>),
    Other,
}

impl IndexedRecord {
    /// The record at `record` of `doc`, if it is there, as the index keeps it.
    fn read(
        park: &ParkId,
        collection: &str,
        id: RecordId,
        doc: &AutoCommit,
        record: Option<ObjId>,
    ) -> Self {
        let fields = records::collection_fields(collection).unwrap_or(&[]);
        let stored = record.map(|o| records::record_from_doc(fields, doc, &o));
        Self::from_stored(park, collection, id, stored)
    }

    /// The record `stored` holds, read as [`records::record_from_doc`] reads it, as the index
    /// keeps it.
    fn from_stored(park: &ParkId, collection: &str, id: RecordId, stored: Option<Value>) -> Self {
        match collection {
            "startups" => {
                let r = stored.and_then(|v| records::read_record(&id, v));
                Self::Startup(id, r)
            }
            "programs" => {
                let r = stored.and_then(|v| records::read_record(&id, v));
                Self::Program(id, r)
            }
            "applications" => {
                let r = stored.and_then(|v| records::read_record(&id, v));
                Self::Application(id, r)
            }
            "decisions" => {
                let r = stored.and_then(|v| serde_json::from_value(v).ok());
                Self::Decision(id, park.clone(), r)
            }
            _ => Self::Other,
        }
    }

    fn index(self, index: &mut Index) {
        match self {
            Self::Startup(id, r) => index.set_startup(id, r),
            Self::Program(id, r) => index.set_program(id, r),
            Self::Application(id, r) => index.set_application(id, r),
            Self::Decision(id, by, r) => index.set_decision(id, by, r),
            Self::Other => {}
        }
    }
}

/// The keys of the stored changes by document (each change decoded, not verified: a store
/// damaged under a snapshot is noticed at start), counted against the store's seal, and the
/// slots that count: a slot counts only with its change (a crash between writing the slot and
/// flushing the change can leave the slot alone, and an orphan slot would make the node's own
/// next change at that seq look like equivocation) or its rejection.
#[allow(clippy::type_complexity)]
fn scan_store<S: Store>(
    store: &S,
) -> Result<
    (
        HashMap<DocId, HashSet<Hash>>,
        HashMap<(DocId, Actor, u64), Hash>,
    ),
    StoreError,
> {
    // By document, so a lookup needs no copy of the document's id.
    let mut stored: HashMap<DocId, HashSet<Hash>> = HashMap::new();
    let mut held = 0u64;
    store.for_each_change(&mut |d, h, env| {
        held += 1;
        match SignedChange::decode(env, usize::MAX) {
            Ok(e) if e.doc == d => {}
            Ok(e) => {
                return Err(StoreError::Corrupt {
                    what: format!("changes/{d}/{h}"),
                    why: format!("stored under {d} but signed for {}", e.doc),
                });
            }
            Err(e) => {
                return Err(StoreError::Corrupt {
                    what: format!("changes/{d}/{h}"),
                    why: format!("not a signed change: {e}"),
                });
            }
        }
        stored.entry(d).or_default().insert(h);
        Ok(())
    })?;
    // The same pass counts the changes against the store's seal, if it opened without.
    store.changes_counted(held)?;
    let held_slots = store.slots()?;
    let mut slots = HashMap::with_capacity(held_slots.len());
    for (d, a, s, h) in held_slots {
        if stored.get(&d).is_some_and(|s| s.contains(&h)) || store.is_rejected(Some(&d), &h)? {
            slots.insert((d, a, s), h);
        }
    }
    Ok((stored, slots))
}

/// The copy of a ledger's records kept beside its snapshot (`bytes`, as stored), if there is
/// one made from the snapshot's changes (a copy from another snapshot, older or newer, is not
/// used).
fn records_from_copy(
    bytes: Option<Vec<u8>>,
    park: &ParkId,
    state: &DocState,
) -> Result<Option<LedgerRecords>, String> {
    let Some(bytes) = bytes else {
        return Ok(None);
    };
    let body = bytes
        .strip_prefix(RECORDS_MAGIC)
        .ok_or("not a copy of ledger records (bad magic bytes)")?;
    let (tag, json) = body.split_at_checked(32).ok_or("truncated")?;
    if tag != state.tag().0 {
        return Ok(None);
    }
    LedgerRecords::decode(park, json).map(Some)
}

/// What a worker reads of a snapshot's metadata: the document's state (with an empty
/// document) and, for a ledger, the copy of its records, if usable, or why not.
type MetaRead = Result<(DocState, Result<Option<LedgerRecords>, String>), String>;

/// A ledger's stored copy of its records, as read from the store (or why it could not be).
type StoredCopy = Result<Option<Vec<u8>>, String>;

/// A snapshot to read: its metadata and, for a ledger, the stored copy of its records.
struct MetaJob {
    index: usize,
    doc: DocId,
    /// The whole snapshot, shared with the job that loads its saved document.
    snapshot: Arc<Vec<u8>>,
    copy: StoredCopy,
}

/// What the workers of [`Loading`] have left to do: the metadata first, as the replica's
/// thread waits for it, then the saved documents (the federation document first, then the
/// ledgers by size, popped from the end: the largest is taken first).
struct Jobs {
    metas: VecDeque<MetaJob>,
    saved: Vec<(DocId, Arc<Vec<u8>>)>,
    /// Metadata read and not yet taken in by the replica's thread: a worker reads more only
    /// while fewer than [`META_AHEAD`] wait (each may hold a ledger's decoded records), or once
    /// no saved document is left to load.
    waiting: usize,
    /// Whether the ledgers' saved documents may load. Not until the replica's thread has
    /// built the index and scanned the store (see [`Loading::open_docs`]): their loads would
    /// take the cores that work needs, and the first query waits for it, not for them.
    docs_open: bool,
    /// Nobody waits for the work any more (the start failed): the workers stop.
    stopped: bool,
}

impl Jobs {
    /// The next job for a worker, if there is one now.
    fn next(&mut self) -> Option<Job> {
        let doc_ready = self
            .saved
            .last()
            .is_some_and(|(doc, _)| self.docs_open || *doc == DocId::Federation);
        if !self.metas.is_empty() && (self.waiting < META_AHEAD || self.saved.is_empty()) {
            self.waiting += 1;
            return self.metas.pop_front().map(Job::Meta);
        }
        if doc_ready {
            return self.saved.pop().map(|(doc, bytes)| Job::Saved(doc, bytes));
        }
        None
    }

    fn is_empty(&self) -> bool {
        self.metas.is_empty() && self.saved.is_empty()
    }
}

/// One job of a worker of [`Loading`].
enum Job {
    Meta(MetaJob),
    Saved(DocId, Arc<Vec<u8>>),
}

/// A saved document a worker loaded (or why it could not).
type LoadedDoc = (DocId, Result<AutoCommit, String>);

/// The jobs, and the signal that wakes the workers waiting for one.
type Shared = (std::sync::Mutex<Jobs>, std::sync::Condvar);

/// How many read snapshots' metadata (with their decoded records) may wait for the replica's
/// thread: two, so that both workers decode while it indexes (decoding a ledger's copy takes
/// about as long as indexing it).
const META_AHEAD: usize = 2;

/// Snapshots read from the store, whose metadata, copies of records and saved Automerge
/// documents are decoded on worker threads, one job at a time each.
struct Loading {
    /// The documents, the federation document first, then the ledgers.
    order: Vec<DocId>,
    metas: std::sync::mpsc::Receiver<(usize, MetaRead)>,
    docs: std::sync::mpsc::Receiver<LoadedDoc>,
    /// The saved documents loaded so far and not taken (or why one could not be).
    loaded: HashMap<DocId, Result<AutoCommit, String>>,
    /// How many have arrived, taken or not.
    arrived: usize,
    /// Every worker has stopped: nothing more will arrive.
    done: bool,
    jobs: Arc<Shared>,
}

impl Loading {
    fn start(snapshots: Vec<(DocId, Vec<u8>, StoredCopy)>) -> Self {
        let mut order = Vec::with_capacity(snapshots.len());
        let mut jobs = Jobs {
            metas: VecDeque::with_capacity(snapshots.len()),
            saved: Vec::with_capacity(snapshots.len()),
            waiting: 0,
            docs_open: false,
            stopped: false,
        };
        for (index, (doc, bytes, copy)) in snapshots.into_iter().enumerate() {
            let bytes = Arc::new(bytes);
            jobs.metas.push_back(MetaJob {
                index,
                doc: doc.clone(),
                snapshot: bytes.clone(),
                copy,
            });
            order.push(doc.clone());
            jobs.saved.push((doc, bytes));
        }
        // Popped from the end: the federation document last in the vector, before it the
        // largest ledger.
        jobs.saved
            .sort_by_key(|(doc, bytes)| (*doc == DocId::Federation, bytes.len()));
        let count = order.len();
        let jobs = Arc::new((std::sync::Mutex::new(jobs), std::sync::Condvar::new()));
        let (meta_tx, metas) = std::sync::mpsc::channel();
        let (doc_tx, docs) = std::sync::mpsc::channel();
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .min(count);
        for _ in 0..threads {
            let (j, m, d) = (jobs.clone(), meta_tx.clone(), doc_tx.clone());
            let spawned = std::thread::Builder::new()
                .name("snapshot-load".into())
                .spawn(move || work_loading(&j, &m, &d));
            if spawned.is_err() {
                // No thread to spare: the work is done here, all of it (nothing is held back
                // for this thread to do first).
                if let Ok(mut j) = jobs.0.lock() {
                    j.docs_open = true;
                }
                work_loading(&jobs, &meta_tx, &doc_tx);
            }
        }
        Self {
            order,
            metas,
            docs,
            loaded: HashMap::with_capacity(count),
            arrived: 0,
            done: count == 0,
            jobs,
        }
    }

    /// Changes the jobs and wakes the workers waiting for one.
    fn update(&self, f: impl FnOnce(&mut Jobs)) {
        if let Ok(mut j) = self.jobs.0.lock() {
            f(&mut j);
            self.jobs.1.notify_all();
        }
    }

    /// Tells the workers that the replica's thread took in one snapshot's metadata.
    fn taken(&self) {
        self.update(|j| j.waiting = j.waiting.saturating_sub(1));
    }

    /// Lets the workers load the ledgers' saved documents.
    fn open_docs(&self) {
        self.update(|j| j.docs_open = true);
    }

    /// Takes in one saved document that arrived.
    fn arrive(&mut self, doc: DocId, saved: Result<AutoCommit, String>) {
        self.loaded.insert(doc, saved);
        self.arrived += 1;
        self.done |= self.arrived == self.order.len();
    }

    /// Takes in the saved documents loaded by now, waiting up to `timeout` for the next one.
    /// Answers whether every one has arrived (or no more will).
    fn poll(&mut self, timeout: std::time::Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.done {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.docs.recv_timeout(left) {
                Ok((doc, saved)) => self.arrive(doc, saved),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => self.done = true,
            }
        }
        self.done
    }

    /// Waits for one saved document and takes it (`None` if it will not arrive).
    fn wait_for(&mut self, doc: &DocId) -> Option<Result<AutoCommit, String>> {
        while !self.done && !self.loaded.contains_key(doc) {
            match self.docs.recv() {
                Ok((d, saved)) => self.arrive(d, saved),
                Err(_) => self.done = true,
            }
        }
        self.loaded.remove(doc)
    }

    /// Waits for every saved document not taken yet.
    fn wait(mut self) -> HashMap<DocId, Result<AutoCommit, String>> {
        while !self.done {
            match self.docs.recv() {
                Ok((doc, saved)) => self.arrive(doc, saved),
                Err(_) => self.done = true,
            }
        }
        std::mem::take(&mut self.loaded)
    }
}

impl Drop for Loading {
    fn drop(&mut self) {
        // A worker waiting for a job that will never come stops.
        self.update(|j| j.stopped = true);
    }
}

/// The ledgers' documents still loading when a replica answers queries from its index.
struct Unloaded {
    loading: Loading,
    held: BTreeMap<DocId, DocState>,
}

/// A replica that answers queries from its index while the saved documents of its ledgers
/// may still load on worker threads (see [`Replica::open_starting`]). Everything but a query
/// needs the documents: [`Starting::finish`] waits for them and gives the replica.
pub struct Starting<S: Store> {
    replica: Replica<S>,
    unloaded: Option<Unloaded>,
}

impl<S: Store> std::fmt::Debug for Starting<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Starting")
            .field("replica", &self.replica)
            .field(
                "loading",
                &self
                    .unloaded
                    .as_ref()
                    .map(|u| u.held.keys().collect::<Vec<_>>()),
            )
            .finish()
    }
}

impl<S: Store> Starting<S> {
    /// The query index, whole: built from the snapshots' copies of the ledgers' records.
    pub fn index(&self) -> &Index {
        &self.replica.index
    }

    pub fn federation(&self) -> FederationId {
        self.replica.federation
    }

    /// See [`Replica::set_outbox`].
    pub fn set_outbox(&mut self, outbox: tokio::sync::mpsc::Sender<Vec<u8>>) {
        self.replica.set_outbox(outbox);
    }

    /// Whether the ledgers' documents were left loading once the index was built (a start
    /// that had nothing left to judge), rather than loaded before [`Replica::open_starting`]
    /// returned.
    pub fn loads_in_background(&self) -> bool {
        self.unloaded.is_some()
    }

    /// Waits up to `timeout` for the documents: answers whether [`Self::finish`] would now
    /// return at once.
    pub fn poll(&mut self, timeout: std::time::Duration) -> bool {
        self.unloaded
            .as_mut()
            .is_none_or(|u| u.loading.poll(timeout))
    }

    /// A replica that is whole, wrapped as if its documents still loaded until the answered
    /// sender is dropped (tests of what waits for them).
    #[cfg(test)]
    pub(crate) fn held_back(replica: Replica<S>) -> (Self, std::sync::mpsc::Sender<LoadedDoc>) {
        let (_, metas) = std::sync::mpsc::channel();
        let (release, docs) = std::sync::mpsc::channel();
        let jobs = Jobs {
            metas: VecDeque::new(),
            saved: Vec::new(),
            waiting: 0,
            docs_open: true,
            stopped: false,
        };
        let loading = Loading {
            order: vec![DocId::Federation],
            metas,
            docs,
            loaded: HashMap::new(),
            arrived: 0,
            done: false,
            jobs: Arc::new((std::sync::Mutex::new(jobs), std::sync::Condvar::new())),
        };
        let unloaded = Some(Unloaded {
            loading,
            held: BTreeMap::new(),
        });
        (Self { replica, unloaded }, release)
    }

    /// Waits for the saved documents and puts them in place: the replica, whole. A damaged
    /// saved document is [`ReplicaError::Snapshot`], naming it, as with [`Replica::open`].
    pub fn finish(mut self) -> Result<Replica<S>, ReplicaError> {
        if let Some(unloaded) = self.unloaded.take() {
            let mut loaded = unloaded.loading.wait();
            for (doc, state) in unloaded.held {
                let saved = loaded.remove(&doc);
                self.replica.install(doc, state, saved)?;
            }
        }
        Ok(self.replica)
    }
}

/// The text of a panic caught in a worker of [`Loading`].
fn worker_panic(what: &str, panic: &(dyn std::any::Any + Send)) -> String {
    format!("{what} panicked: {}", crate::store::panic_text(panic))
}

/// A worker of [`Loading`]: reads metadata, then loads saved documents, until nothing is left
/// (or nobody waits).
fn work_loading(
    jobs: &Shared,
    metas: &std::sync::mpsc::Sender<(usize, MetaRead)>,
    docs: &std::sync::mpsc::Sender<LoadedDoc>,
) {
    loop {
        let job = {
            let Ok(mut j) = jobs.0.lock() else { return };
            loop {
                if j.stopped || j.is_empty() {
                    return;
                }
                if let Some(job) = j.next() {
                    break job;
                }
                j = match jobs.1.wait(j) {
                    Ok(j) => j,
                    Err(_) => return,
                };
            }
        };
        match job {
            Job::Meta(job) => {
                let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let (meta, _) = DocState::split_snapshot(&job.snapshot)?;
                    let state = DocState::decode_meta(meta)?;
                    let records = match job.doc.park() {
                        Some(park) => job
                            .copy
                            .and_then(|bytes| records_from_copy(bytes, park, &state)),
                        None => Ok(None),
                    };
                    Ok((state, records))
                }))
                .unwrap_or_else(|panic| Err(worker_panic("reading its metadata", &*panic)));
                if metas.send((job.index, read)).is_err() {
                    return;
                }
            }
            Job::Saved(doc, bytes) => {
                let loaded = std::panic::catch_unwind(|| {
                    let (_, saved) = DocState::split_snapshot(&bytes)?;
                    AutoCommit::load(saved).map_err(|e| e.to_string())
                })
                .unwrap_or_else(|panic| Err(worker_panic("loading its saved document", &*panic)));
                if docs.send((doc, loaded)).is_err() {
                    return;
                }
            }
        }
    }
}

/// Maps `items` on up to as many scoped threads as there are cores, keeping their order.
fn parallel_map<T: Send, U: Send>(items: Vec<T>, f: impl Fn(T) -> U + Sync) -> Vec<U> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(items.len());
    if threads <= 1 {
        return items.into_iter().map(f).collect();
    }
    let mut chunks: Vec<Vec<(usize, T)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        chunks[i % threads].push((i, item));
    }
    let f = &f;
    let mut out: Vec<(usize, U)> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .into_iter()
                        .map(|(i, t)| (i, f(t)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a start-up worker thread panicked"))
            .collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, u)| u).collect()
}

fn no_collection() -> automerge::AutomergeError {
    automerge::AutomergeError::InvalidObjId("collection or record".into())
}

/// The map under `key` in `obj`, if there is one.
fn child(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<ObjId> {
    match doc.get(obj, key).ok()?? {
        (automerge::Value::Object(ObjType::Map), id) => Some(id),
        _ => None,
    }
}

fn read_park(doc: &AutoCommit, park: &ParkId) -> Option<records::Park> {
    let parks = child(doc, &ROOT, "parks")?;
    let obj = child(doc, &parks, park.as_str())?;
    let mut json = records::record_from_doc(records::PARK_FIELDS, doc, &obj);
    let mut devices = Vec::new();
    if let Some(dobj) = child(doc, &obj, "devices") {
        for key in doc.keys(&dobj) {
            let Ok(k) = key.parse::<DeviceKey>() else {
                continue;
            };
            let d = child(doc, &dobj, &key)
                .map(|o| records::record_from_doc(records::DEVICE_FIELDS, doc, &o))
                .unwrap_or(Value::Null);
            devices.push(serde_json::json!({
                "key": k, "label": d.get("label"), "added_at": d.get("added_at"),
            }));
        }
    }
    let o = json.as_object_mut()?;
    o.insert("id".into(), Value::String(park.to_string()));
    o.insert("devices".into(), Value::Array(devices));
    serde_json::from_value(json).ok()
}

/// One op of a change, as the audit shows it: what it did, where, with what value.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditOp {
    /// `make_map`, `put` or `delete` (other actions never pass the rules).
    pub action: String,
    /// The path from the document's root, `/`-separated.
    pub path: String,
    #[schema(value_type = Object)]
    pub value: Option<Value>,
}

/// One signed change, as the audit shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub hash: Hash,
    pub doc: DocId,
    /// The park the signing device belongs to (none for the genesis).
    pub park: Option<ParkId>,
    pub device: DeviceKey,
    pub actor: Actor,
    pub seq: u64,
    pub deps: Vec<Hash>,
    /// The author's clock, RFC 3339: shown, never trusted.
    pub time: String,
    /// `accepted`, `pending` or `excluded`.
    pub status: String,
    /// `valid` when the signature verifies now; for a change kept without a signature of its
    /// own, `vouched` when its voucher's does and the voucher holds it in its causal past.
    pub signature: String,
    /// The voucher of a change kept without a signature of its own: the later change of the
    /// same actor whose signature covers it.
    pub vouched_by: Option<Hash>,
    pub ops: Vec<AuditOp>,
}

/// Which changes the audit log lists.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub doc: Option<DocId>,
    pub park: Option<ParkId>,
    pub record: Option<RecordId>,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

impl<S: Store> Replica<S> {
    fn device_park(&self, key: &DeviceKey) -> Option<ParkId> {
        self.registry
            .devices
            .get(key)
            .and_then(|ps| ps.iter().next().cloned())
    }

    /// Whether `by` vouches for `change` now: its own signature verifies, it is of the same
    /// actor, and it holds the change in its causal past (by its clock where it is accepted,
    /// else by walking back to the change).
    fn vouches(&self, doc: &DocId, by: &Hash, actor: &Actor, change: &automerge::Change) -> bool {
        let envelope = match (self.store.change(doc, by), self.store.proof(doc, by)) {
            (Ok(Some(e)), _) | (_, Ok(Some(e))) => e,
            _ => return false,
        };
        let Ok(voucher) = SignedChange::decode(&envelope, usize::MAX)
            .map_err(|_| ())
            .and_then(|e| e.verify(&self.federation).map_err(|_| ()))
        else {
            return false;
        };
        if voucher.actor != *actor || voucher.change.seq() <= change.seq() {
            return false;
        }
        let hash = Hash::from(change.hash());
        match self.docs.get(doc).and_then(|d| d.accepted.get(by)) {
            Some(info) => info.clock.get(actor).is_some_and(|s| *s >= change.seq()),
            None => self
                .chain_from(doc, *by)
                .is_ok_and(|chain| chain.iter().any(|(h, _)| *h == hash)),
        }
    }

    fn audit_entry(&self, doc: &DocId, envelope: &[u8], status: &str) -> Option<AuditEntry> {
        let env = SignedChange::decode(envelope, usize::MAX).ok()?;
        let change = env.parse().ok()?;
        let actor = Actor::from_bytes(change.actor_id().to_bytes())?;
        let signature = match env.vouched_by() {
            None if env.verify(&self.federation).is_ok() => "valid",
            None => "invalid",
            Some(by) if self.vouches(doc, &by, &actor, &change) => "vouched",
            Some(_) => "invalid",
        };
        let objects = self.docs.get(doc).map(|d| &d.objects);
        let start = change.start_op().get();
        let mut local: HashMap<ObjKey, String> = HashMap::new();
        let mut ops = Vec::new();
        for (i, op) in change.decode().operations.iter().enumerate() {
            let parent = match &op.obj {
                automerge::legacy::ObjectId::Root => String::new(),
                automerge::legacy::ObjectId::Id(id) => {
                    let key = Actor::from_bytes(id.1.to_bytes()).map(|a| ObjKey {
                        counter: id.0,
                        actor: a,
                    });
                    key.and_then(|k| {
                        local
                            .get(&k)
                            .cloned()
                            .or_else(|| objects?.get(&k).map(|o| o.path.join("/")))
                    })
                    .unwrap_or_else(|| format!("?{}", id.0))
                }
            };
            let key = match &op.key {
                automerge::legacy::Key::Map(k) => k.to_string(),
                automerge::legacy::Key::Seq(_) => "[]".into(),
            };
            let path = if parent.is_empty() {
                key
            } else {
                format!("{parent}/{key}")
            };
            let (action, value) = match &op.action {
                automerge::legacy::OpType::Make(t) => {
                    local.insert(
                        ObjKey {
                            counter: start + i as u64,
                            actor,
                        },
                        path.clone(),
                    );
                    (format!("make_{t:?}").to_lowercase(), None)
                }
                automerge::legacy::OpType::Put(v) => ("put".into(), Some(scalar_json(v))),
                automerge::legacy::OpType::Delete => ("delete".into(), None),
                other => (format!("{other:?}").to_lowercase(), None),
            };
            ops.push(AuditOp {
                action,
                path,
                value,
            });
        }
        let park = match doc {
            DocId::Ledger(p) => Some(p.clone()),
            DocId::Federation => self.device_park(&actor.key),
        };
        Some(AuditEntry {
            hash: Hash::from(change.hash()),
            doc: doc.clone(),
            park,
            device: actor.key,
            actor,
            seq: change.seq(),
            deps: change.deps().iter().map(|d| Hash::from(*d)).collect(),
            time: time::OffsetDateTime::from_unix_timestamp(change.timestamp())
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default(),
            status: status.into(),
            signature: signature.into(),
            vouched_by: env.vouched_by(),
            ops,
        })
    }

    /// The signed history, newest first: every accepted change of the chosen documents, or of
    /// the chosen record.
    pub fn audit_log(
        &self,
        f: &AuditFilter,
    ) -> Result<crate::query::Page<AuditEntry>, ReplicaError> {
        let limit = match f.limit {
            None => crate::query::DEFAULT_LIMIT,
            Some(n) if (1..=crate::query::MAX_LIMIT).contains(&n) => n,
            Some(n) => return Err(invalid("limit", format!("expected 1 to 500, found {n}"))),
        };
        let skip = match &f.cursor {
            None => 0,
            Some(c) => c
                .parse::<usize>()
                .map_err(|_| invalid("cursor", "not a cursor this node issued"))?,
        };
        let record_prefix = f.record.as_ref().map(|r| r.to_string());
        let mut items = Vec::new();
        let mut seen = 0;
        let mut more = false;
        'docs: for (doc, state) in self.docs.iter().rev() {
            if f.doc.as_ref().is_some_and(|d| d != doc) {
                continue;
            }
            if let (Some(p), DocId::Ledger(owner)) = (&f.park, doc)
                && p != owner
            {
                continue;
            }
            for hash in state.order.iter().rev() {
                let Some(env) = self.store.change(doc, hash)? else {
                    continue;
                };
                let Some(entry) = self.audit_entry(doc, &env, "accepted") else {
                    continue;
                };
                if f.park.is_some() && *doc == DocId::Federation && entry.park != f.park {
                    continue;
                }
                if let Some(rid) = &record_prefix {
                    // Record ids hold one '/', so a record's path is `<collection>/<park>/<local>`.
                    let touches = entry.ops.iter().any(|op| {
                        op.path.split_once('/').is_some_and(|(_, rest)| {
                            rest == rid || rest.starts_with(&format!("{rid}/"))
                        })
                    });
                    if !touches {
                        continue;
                    }
                }
                if seen < skip {
                    seen += 1;
                    continue;
                }
                if items.len() == limit {
                    more = true;
                    break 'docs;
                }
                seen += 1;
                items.push(entry);
            }
        }
        Ok(crate::query::Page {
            items,
            next_cursor: more.then(|| seen.to_string()),
        })
    }

    /// One stored change with its status, as the audit shows it, and its signed envelope.
    pub fn audit_change(&self, hash: &Hash) -> Result<Option<(AuditEntry, Vec<u8>)>, ReplicaError> {
        let mut docs: Vec<DocId> = self.docs.keys().cloned().collect();
        docs.extend(self.pending.items.keys().map(|(d, _)| d.clone()));
        docs.extend(self.excluded.iter().map(|(d, _)| d.clone()));
        for doc in docs {
            let Some(env) = self.store.change(&doc, hash)? else {
                continue;
            };
            let status = match self.docs.get(&doc) {
                Some(d) if d.accepted.contains_key(hash) => "accepted",
                _ if self.pending.contains(&doc, hash) => "pending",
                _ => "excluded",
            };
            return Ok(self.audit_entry(&doc, &env, status).map(|e| (e, env)));
        }
        Ok(None)
    }
}

fn scalar_json(v: &automerge::ScalarValue) -> Value {
    match v {
        automerge::ScalarValue::Str(s) => Value::String(s.to_string()),
        automerge::ScalarValue::Int(i) => Value::from(*i),
        automerge::ScalarValue::Uint(u) => Value::from(*u),
        automerge::ScalarValue::F64(f) => Value::from(*f),
        automerge::ScalarValue::Boolean(b) => Value::Bool(*b),
        automerge::ScalarValue::Null => Value::Null,
        other => Value::String(format!("{other:?}")),
    }
}

#[cfg(test)]
impl<S: Store> Replica<S> {
    /// Every stored signed change, as an export carries them.
    pub(crate) fn entries(&self) -> Vec<Vec<u8>> {
        self.export(None).expect("export").entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `record_from_doc` reads a record as hydrating it and `record_from_automerge` did: a
    /// nested map, a list kept as JSON text, every field of the schema, the winner of a
    /// conflict; keys outside the schema and deleted keys left out.
    #[test]
    fn a_record_reads_the_same_out_of_the_document_as_hydrated() {
        let mut sample = crate::sample::Sample::new(3);
        let startup = sample.startup("KZ");
        let fields = records::collection_fields("startups").expect("fields");
        let stored = records::record_to_automerge(fields, startup.as_object().expect("object"));
        let mut a = AutoCommit::new();
        let coll = a.put_object(ROOT, "startups", ObjType::Map).expect("put");
        a.batch_create_object(&coll, "kz-astana-hub/x", &stored, false)
            .expect("create");
        let rec = child(&a, &coll, "kz-astana-hub/x").expect("record");
        a.put(&rec, "not_in_schema", "ignored").expect("put");
        a.put(&rec, "website", "https://soon.example.kz")
            .expect("put");
        a.delete(&rec, "website").expect("delete");
        a.commit();
        let mut b = a.fork();
        a.put(&rec, "name", "Qazaq Robotics LLP").expect("put");
        b.put(&rec, "name", "QR").expect("put");
        a.merge(&mut b).expect("merge");
        assert_eq!(a.get_all(&rec, "name").expect("get").len(), 2);
        let hydrated = a.hydrate(&rec, None).expect("hydrate");
        let read = records::record_from_doc(fields, &a, &rec);
        assert_eq!(read, records::record_from_automerge(fields, &hydrated));
        assert!(read.get("contact").is_some_and(Value::is_object), "{read}");
        assert!(read.get("sectors").is_some_and(Value::is_array), "{read}");
        assert!(read.get("not_in_schema").is_none());
    }

    /// The last change of `doc`, as a peer would receive it.
    fn last_change(doc: &mut AutoCommit) -> automerge::Change {
        let heads = doc.get_heads();
        doc.get_change_by_hash(&heads[0]).expect("the head").clone()
    }

    /// Applies `change` to `doc` and answers each record `records_made_by` reads from its
    /// ops beside the record read back out of the document.
    fn made_and_read(
        doc: &mut AutoCommit,
        coll: &ObjId,
        change: automerge::Change,
    ) -> Option<Vec<(Value, Value)>> {
        let (counter, actor) = match coll {
            ObjId::Id(counter, actor, _) => (*counter, actor.clone()),
            ObjId::Root => unreachable!("a collection is not the root"),
        };
        let made = records::records_made_by(&change, |c, a| {
            (c == counter && *a == actor).then_some("startups")
        });
        doc.apply_changes([change]).expect("apply");
        let made = made?;
        let fields = records::collection_fields("startups").expect("fields");
        Some(
            made.into_iter()
                .map(|(collection, key, value)| {
                    assert_eq!(collection, "startups");
                    let rec = child(doc, coll, &key).expect("the record is a map");
                    (value, records::record_from_doc(fields, doc, &rec))
                })
                .collect(),
        )
    }

    /// A change that makes records reads, from its ops alone, as each record reads out of the
    /// document once it is applied on top of it: sample records made as `create` makes them,
    /// and one change that writes a field twice, deletes one, replaces a nested map with a
    /// scalar and makes a record where another stood. Where the outcome depends on what the
    /// document holds (an edit of a record, a delete of one) it answers nothing.
    #[test]
    fn records_made_by_a_change_read_as_the_applied_document_does() {
        let fields = records::collection_fields("startups").expect("fields");
        let mut writer = AutoCommit::new();
        writer.set_actor(automerge::ActorId::from([7u8; 40]));
        let coll = writer
            .put_object(ROOT, "startups", ObjType::Map)
            .expect("put");
        writer.commit();
        let mut reader = AutoCommit::new();
        reader
            .apply_changes([last_change(&mut writer)])
            .expect("apply");
        let mut sample = crate::sample::Sample::new(11);
        for i in 0..20 {
            let startup = sample.startup(["KZ", "UZ", "TR"][i % 3]);
            let stored = records::record_to_automerge(fields, startup.as_object().expect("map"));
            writer
                .batch_create_object(
                    &coll,
                    format!("kz-astana-hub/s{i}").as_str(),
                    &stored,
                    false,
                )
                .expect("create");
            if i % 5 == 0 {
                // Two records in one change.
                let again = records::record_to_automerge(
                    fields,
                    sample.startup("KG").as_object().expect("map"),
                );
                writer
                    .batch_create_object(
                        &coll,
                        format!("kz-astana-hub/t{i}").as_str(),
                        &again,
                        false,
                    )
                    .expect("create");
            }
            writer.commit();
            let pairs = made_and_read(&mut reader, &coll, last_change(&mut writer))
                .expect("a change that makes records reads from its ops");
            assert_eq!(pairs.len(), if i % 5 == 0 { 2 } else { 1 });
            for (made, read) in pairs {
                assert_eq!(made, read);
            }
        }

        // One change: a record over one that stood, fields written twice, a field deleted, a
        // nested map replaced by a scalar, and a key outside the schema.
        let rec = writer
            .put_object(&coll, "kz-astana-hub/s3", ObjType::Map)
            .expect("put");
        writer.put(&rec, "name", "First").expect("put");
        writer.put(&rec, "name", "Second").expect("put");
        writer.put(&rec, "city", "Astana").expect("put");
        writer.delete(&rec, "city").expect("delete");
        let contact = writer
            .put_object(&rec, "contact", ObjType::Map)
            .expect("put");
        writer.put(&contact, "name", "Aigerim").expect("put");
        writer.put(&rec, "stage", "seed").expect("put");
        writer.put(&rec, "founded", 2021i64).expect("put");
        writer.put(&rec, "unknown", true).expect("put");
        writer
            .put(&rec, "sectors", r#"["ai","fintech"]"#)
            .expect("put");
        let other = writer
            .put_object(&coll, "kz-astana-hub/n1", ObjType::Map)
            .expect("put");
        let nested = writer
            .put_object(&other, "contact", ObjType::Map)
            .expect("put");
        writer.put(&nested, "email", "a@b.kz").expect("put");
        writer.put(&other, "contact", "not a map").expect("put");
        writer.put(&other, "name", "Scalar contact").expect("put");
        writer.commit();
        let pairs = made_and_read(&mut reader, &coll, last_change(&mut writer)).expect("made");
        assert_eq!(pairs.len(), 2);
        for (made, read) in &pairs {
            assert_eq!(made, read);
        }
        assert_eq!(pairs[1].0["name"], "Second", "{}", pairs[1].0);
        assert!(pairs[1].0.get("city").is_none());
        assert_eq!(pairs[1].0["sectors"], serde_json::json!(["ai", "fintech"]));

        // What depends on the document: an edit of a record, a delete of one.
        let rec = child(&writer, &coll, "kz-astana-hub/s4").expect("record");
        writer.put(&rec, "name", "Renamed").expect("put");
        writer.commit();
        assert!(made_and_read(&mut reader, &coll, last_change(&mut writer)).is_none());
        writer.delete(&coll, "kz-astana-hub/s5").expect("delete");
        writer.commit();
        assert!(made_and_read(&mut reader, &coll, last_change(&mut writer)).is_none());
        // Both documents still read the same.
        let read = |d: &AutoCommit, key: &str| {
            child(d, &coll, key).map(|r| records::record_from_doc(fields, d, &r))
        };
        for key in ["kz-astana-hub/s3", "kz-astana-hub/s4", "kz-astana-hub/s5"] {
            assert_eq!(read(&writer, key), read(&reader, key), "{key}");
        }
    }

    /// A ledger whose first change made two maps at `startups` (the second over the first: the
    /// rules take any map made at a collection's key in that change) shows only the second;
    /// a record made in the first is not read from its change's ops, since the document would
    /// not show it, while one made in the second is, as the document reads it.
    #[test]
    fn records_in_a_collection_map_the_document_does_not_show_are_not_read_from_ops() {
        let park: ParkId = "kz-astana-hub".parse().expect("park");
        let mut writer = AutoCommit::new();
        writer.set_actor(automerge::ActorId::from([7u8; 40]));
        let hidden = writer
            .put_object(ROOT, "startups", ObjType::Map)
            .expect("put");
        let shown = writer
            .put_object(ROOT, "startups", ObjType::Map)
            .expect("put");
        writer.commit();
        let mut state = DocState::new(None);
        state
            .doc
            .apply_changes([last_change(&mut writer)])
            .expect("apply");
        let touched = |local: &str| {
            BTreeSet::from([Touched::Record {
                collection: "startups",
                id: format!("kz-astana-hub/{local}").parse().expect("id"),
            }])
        };
        let ghost = writer
            .put_object(&hidden, "kz-astana-hub/ghost", ObjType::Map)
            .expect("put");
        writer.put(&ghost, "name", "Ghost").expect("put");
        writer.commit();
        let change = last_change(&mut writer);
        assert!(
            state
                .records_made(&park, std::slice::from_ref(&change), &touched("ghost"))
                .is_none(),
            "a record in the map the document does not show was read from the ops"
        );
        state.settle(vec![change]).expect("apply");
        let real = writer
            .put_object(&shown, "kz-astana-hub/real", ObjType::Map)
            .expect("put");
        writer.put(&real, "name", "Real").expect("put");
        writer.put(&real, "country", "KZ").expect("put");
        writer.put(&real, "stage", "idea").expect("put");
        writer.commit();
        let change = last_change(&mut writer);
        let made = state
            .records_made(&park, std::slice::from_ref(&change), &touched("real"))
            .expect("a record in the shown map reads from the ops");
        state.settle(vec![change]).expect("apply");
        let fields = records::collection_fields("startups").expect("fields");
        let coll = child(&state.doc, &ROOT, "startups").expect("shown");
        let rec = child(&state.doc, &coll, "kz-astana-hub/real").expect("record");
        let read = records::record_from_doc(fields, &state.doc, &rec);
        let id: RecordId = "kz-astana-hub/real".parse().expect("id");
        assert!(matches!(
            &made[..],
            [IndexedRecord::Startup(i, Some(s))]
                if *i == id && Some(s) == records::read_record::<records::Startup>(&id, read).as_ref()
        ));
        assert!(child(&state.doc, &coll, "kz-astana-hub/ghost").is_none());
    }

    /// Fails naming the first record the two replicas' indexes hold differently.
    fn same_ledger(
        a: &Replica<crate::store::SledStore>,
        b: &Replica<crate::store::SledStore>,
        park: &ParkId,
    ) {
        let read = |r: &Replica<crate::store::SledStore>| -> Value {
            serde_json::from_slice(&r.index().encode_ledger(park)).expect("json")
        };
        let (x, y) = (read(a), read(b));
        // In the order the index holds them, which is not the same on both.
        let by_id = |v: &Value| -> BTreeMap<String, Value> {
            v.as_array()
                .into_iter()
                .flatten()
                .map(|r| (r["id"].to_string(), r.clone()))
                .collect()
        };
        for c in records::COLLECTIONS {
            let (xs, ys) = (by_id(&x[c]), by_id(&y[c]));
            assert_eq!(
                xs.keys().collect::<Vec<_>>(),
                ys.keys().collect::<Vec<_>>(),
                "{c}"
            );
            for (p, q) in xs.values().zip(ys.values()) {
                assert_eq!(p, q, "{c}");
            }
        }
    }

    /// Records made by changes received one at a time are answered by the index before the
    /// changes are applied to their document, exactly as a replica that read them back out of
    /// the applied document answers them: the writer's own index, and the receiver's after it
    /// settled and after it rebuilt every document from its stored changes. An edit waits for
    /// nothing: the document is settled first and the record read back.
    #[test]
    fn records_received_one_at_a_time_index_before_they_are_applied() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (_, dirs) = crate::demo::prepare(tmp.path(), 2, 3, 5).expect("prepare");
        let mut a = dirs[0].open_replica().expect("open");
        let mut b = dirs[1].open_replica().expect("open");
        let park = a.identity().expect("identity").park.clone();
        let before: HashSet<Vec<u8>> = a.entries().into_iter().collect();
        b.ingest(before.iter().cloned().collect(), "a")
            .expect("catch up");
        let mut sample = crate::sample::Sample::new(9);
        let mut ids = Vec::new();
        for i in 0..12 {
            let id = a
                .create(Collection::Startups, None, &sample.startup("KZ"))
                .expect("create");
            if i == 5 {
                a.update(
                    Collection::Startups,
                    &ids[1],
                    &serde_json::json!({"name": "Renamed"}),
                )
                .expect("update");
            }
            if i == 8 {
                a.remove(Collection::Startups, &ids[2]).expect("remove");
            }
            ids.push(id);
        }
        let program = a
            .create(Collection::Programs, None, &sample.program("Astana Hub"))
            .expect("program");
        let mut new = a.entries();
        new.retain(|e| !before.contains(e));
        // The export holds them in causal order.
        assert_eq!(new.len(), 15);
        let mut waited = 0;
        for e in new.drain(..) {
            let reports = b.ingest_received(vec![e], "a").expect("ingest");
            assert_eq!(reports[0].outcome, Outcome::Accepted, "{reports:?}");
            if b.deferred().is_some_and(|(_, n)| n > 0) {
                waited += 1;
            }
        }
        assert!(waited >= 10, "only {waited} changes waited to be applied");
        assert!(b.index().program(&program).is_some());
        assert_eq!(
            b.index().startup(&ids[1]).map(|s| s.name.as_str()),
            Some("Renamed")
        );
        assert!(b.index().startup(&ids[2]).is_none());
        same_ledger(&a, &b, &park);
        let digest = b.digest();
        b.settle().expect("settle");
        assert!(b.deferred().is_none());
        same_ledger(&a, &b, &park);
        b.rebuild().expect("rebuild");
        same_ledger(&a, &b, &park);
        assert_eq!(b.digest(), digest);
    }

    /// A snapshot that comes due as changes are accepted is saved and written on the snapshot
    /// thread, and holds the document as it stood when it came due: written changes after it
    /// are the tail a start judges again. A snapshot taken on the replica's thread afterwards
    /// is never replaced by the older one.
    #[test]
    fn a_snapshot_due_is_written_by_its_thread_as_it_stood() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (_, dirs) = crate::demo::prepare(tmp.path(), 2, 0, 5).expect("prepare");
        let mut config = dirs[0].config().expect("config");
        config.store.snapshot_every = 4;
        dirs[0].write_config(&config).expect("config");
        let mut r = dirs[0].open_replica().expect("open");
        let ledger = r.ledger().expect("ledger");
        let snapshot_order = |r: &Replica<crate::SledStore>| {
            let bytes = r
                .store()
                .snapshot(&ledger)
                .expect("read")
                .expect("a snapshot");
            let (meta, _) = DocState::split_snapshot(&bytes).expect("split");
            DocState::decode_meta(meta).expect("decode").order
        };
        let before = r.docs[&ledger].since_snapshot;
        let mut sample = crate::sample::Sample::new(6);
        let mut order_when_due = None;
        // Due at the fourth write; the fifth and sixth are the tail.
        for _ in 0..6 {
            r.create(Collection::Startups, None, &sample.startup("KZ"))
                .expect("write");
            if r.docs[&ledger].since_snapshot == 0 && order_when_due.is_none() {
                order_when_due = Some(r.docs[&ledger].order.clone());
            }
        }
        let order_when_due = order_when_due.expect("a snapshot came due");
        let park = ledger.park().expect("a ledger");
        assert_eq!(
            r.index().ledger_records(park).encode(),
            r.index().encode_ledger(park),
            "the copied records encode as the index encodes them"
        );
        assert!(before < 4, "the ledger was not due before the writes");
        r.wait_for_snapshots();
        let written = snapshot_order(&r);
        assert_eq!(
            written, order_when_due,
            "the snapshot holds the ledger as it stood when it came due"
        );
        // The writes after the last snapshot are a tail: a start judges them again.
        let all = r.docs[&ledger].order.clone();
        assert!(written.len() < all.len(), "some writes came after it");
        r.snapshot_all().expect("snapshot");
        assert_eq!(snapshot_order(&r), all, "the newest snapshot stays");
        let digest = r.digest();
        drop(r);
        let r = dirs[0].open_replica().expect("reopen");
        assert_eq!(r.docs[&ledger].order, all);
        assert_eq!(r.digest(), digest);
    }
}

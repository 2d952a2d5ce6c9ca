//! Durable storage of signed changes, behind the [`Store`] trait, with sled 0.34 beneath it.
//!
//! Trees (DESIGN §7): `changes` (doc, hash → envelope of every verified change that was not
//! rejected), `by_actor` (doc, actor, seq → hash of every verified change, rejected ones too,
//! so equivocation is judged the same whatever the order), `rejected` (doc, hash, or the
//! envelope's own hash where it never verified → record with the reason), `evidence` (doc,
//! actor, seq → both envelopes), `frozen_keys` (device keys registered for two parks), `meta`,
//! `snapshots` (doc → saved document and the replica's facts about it), `proofs` (doc, hash →
//! envelope of a change that is neither accepted nor excluded but vouches, itself or on the
//! way, for a vouched change that is: kept so the vouched change can be authenticated again).
//!
//! Changes are keyed by document and hash: the same Automerge change signed for two documents
//! is two entries, each judged in its own document.

use std::path::Path;

use kervan_protocol::{Actor, DeviceKey, DocId, Hash, ParkId};
use serde::{Deserialize, Serialize};

/// A failure of the storage layer. The replica treats it as fatal.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store record {what} is corrupt: {why}")]
    Corrupt { what: String, why: String },
    /// sled's files are damaged: they do not open, or hold less than was flushed.
    #[error("{0}")]
    Damaged(String),
    /// A copy of ledger records (derived data) could not be read or written.
    #[error("copy of ledger records in {0}")]
    Records(String),
}

/// A change refused for good, kept with its reason and never requested again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    /// The change hash where the signature verified, else the SHA-256 of the raw envelope:
    /// a corrupted copy never shadows the genuine change.
    pub key: Hash,
    pub doc: Option<DocId>,
    /// Whether the signature verified, so the rejection belongs to the change itself.
    #[serde(default)]
    pub verified: bool,
    pub code: String,
    pub reason: String,
    /// Who sent it: `local`, `import`, `restore` or a peer id.
    pub source: String,
    /// Unix seconds, local clock: when it was refused here.
    pub at: i64,
    /// The raw envelope, kept as proof where it verified (equivocation evidence).
    #[serde(default, with = "hex_bytes")]
    pub envelope: Vec<u8>,
}

/// Two different signed changes in one slot: the proof that an actor equivocated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub doc: DocId,
    pub actor: Actor,
    pub seq: u64,
    pub hashes: Vec<Hash>,
    #[serde(with = "hex_list")]
    pub envelopes: Vec<Vec<u8>>,
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub(super) fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

mod hex_list {
    use serde::{Deserialize, Deserializer, Serializer};
    pub(super) fn serialize<S: Serializer>(b: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(b.iter().map(hex::encode))
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<String>::deserialize(d)?
            .into_iter()
            .map(|s| hex::decode(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// A visitor of stored changes: document, hash, envelope.
pub type EachChange<'a> = dyn FnMut(DocId, Hash, &[u8]) -> Result<(), StoreError> + 'a;

/// What the replica needs from storage. A store is a handle: its clones share the same storage
/// (the replica's snapshot thread writes through one).
pub trait Store: Send + Sync + Clone + 'static {
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Stores a verified change that was not rejected.
    fn put_change(&self, doc: &DocId, hash: &Hash, envelope: &[u8]) -> Result<(), StoreError>;
    fn change(&self, doc: &DocId, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError>;
    fn remove_change(&self, doc: &DocId, hash: &Hash) -> Result<(), StoreError>;
    /// Every stored change, by document, then hash.
    fn changes(&self) -> Result<Vec<(DocId, Hash, Vec<u8>)>, StoreError>;
    /// Calls `f` with every stored change, by document, then hash, without holding them all.
    fn for_each_change(&self, f: &mut EachChange<'_>) -> Result<(), StoreError> {
        for (doc, hash, envelope) in self.changes()? {
            f(doc, hash, &envelope)?;
        }
        Ok(())
    }
    fn change_count(&self) -> usize;
    /// Hands over the number of changes a scan of the whole store (`for_each_change`, before
    /// anything was written) found, for a store that did not count them when it opened;
    /// refuses the store if it holds fewer than were stored and flushed.
    fn changes_counted(&self, held: u64) -> Result<(), StoreError>;
    /// Records which verified change holds a slot (doc, actor, seq); the first one keeps it.
    fn put_slot(&self, doc: &DocId, actor: &Actor, seq: u64, hash: &Hash)
    -> Result<(), StoreError>;
    fn slots(&self) -> Result<Vec<(DocId, Actor, u64, Hash)>, StoreError>;
    fn put_rejected(&self, rejected: &Rejected) -> Result<(), StoreError>;
    /// Whether a change of `doc` (or, with no doc, an envelope by its own hash) was rejected.
    fn is_rejected(&self, doc: Option<&DocId>, key: &Hash) -> Result<bool, StoreError>;
    fn rejected(&self) -> Result<Vec<Rejected>, StoreError>;
    /// The record of a verified change of `doc` refused with `hash`, if there is one.
    fn rejected_record(&self, doc: &DocId, hash: &Hash) -> Result<Option<Rejected>, StoreError>;
    fn put_evidence(&self, evidence: &Evidence) -> Result<(), StoreError>;
    fn evidence(&self) -> Result<Vec<Evidence>, StoreError>;
    /// Keeps the envelope of a change that a kept vouched change needs to be authenticated
    /// again, when it is not kept as a change itself (pending, or rejected).
    fn put_proof(&self, doc: &DocId, hash: &Hash, envelope: &[u8]) -> Result<(), StoreError>;
    /// Every kept proof envelope.
    fn proofs(&self) -> Result<Vec<Vec<u8>>, StoreError>;
    fn proof(&self, doc: &DocId, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError>;
    /// Records a device key registered for two parks: it is frozen everywhere.
    fn put_frozen_key(&self, key: &DeviceKey, parks: &[ParkId]) -> Result<(), StoreError>;
    fn frozen_keys(&self) -> Result<Vec<DeviceKey>, StoreError>;
    fn put_snapshot(&self, doc: &DocId, bytes: &[u8]) -> Result<(), StoreError>;
    fn snapshot(&self, doc: &DocId) -> Result<Option<Vec<u8>>, StoreError>;
    /// Clears the snapshots and the copies of ledger records.
    fn clear_snapshots(&self) -> Result<(), StoreError>;
    /// Keeps the query index's copy of a ledger's records, made with its latest snapshot. It is
    /// derived data, a cache for the next start: written outside the store's log and never
    /// synced, so a crash may leave an older copy, or none, or a torn one, which the reader
    /// must tell and ignore.
    fn put_ledger_records(&self, doc: &DocId, bytes: &[u8]) -> Result<(), StoreError>;
    fn ledger_records(&self, doc: &DocId) -> Result<Option<Vec<u8>>, StoreError>;
    /// Makes everything written so far durable, and writes the seal.
    fn flush(&self) -> Result<(), StoreError> {
        self.flush_unsealed()?;
        self.seal()
    }
    /// Makes everything written so far durable, leaving the seal as it was: it lags until
    /// [`Store::seal`] or the next [`Store::flush`].
    fn flush_unsealed(&self) -> Result<(), StoreError>;
    /// Writes the seal for what the last flush made durable.
    fn seal(&self) -> Result<(), StoreError>;
    fn size_on_disk(&self) -> Result<u64, StoreError>;
}

/// The sled-backed store of a data directory.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    meta: sled::Tree,
    changes: sled::Tree,
    by_actor: sled::Tree,
    rejected: sled::Tree,
    evidence: sled::Tree,
    proofs: sled::Tree,
    frozen_keys: sled::Tree,
    snapshots: sled::Tree,
    seal: std::sync::Arc<Seal>,
    /// Where the copies of ledger records are kept: a directory beside sled's files.
    records_dir: std::path::PathBuf,
}

/// The store's seal: a small file beside sled's, rewritten after a flush (at once by
/// [`Store::flush`]; by [`Store::seal`] later, for a flush that leaves it lagging), holding how
/// many signed changes the store held when it was flushed. sled recovers a log that was truncated or
/// overwritten by quietly dropping everything after the first bad checksum, which would make
/// a damaged store open as an older one — and a node that lost its own published changes would
/// sign new ones with the same seqs. A store holding fewer changes than its seal says is
/// damaged. The seal is written after sled's flush and is not itself synced, so after a crash
/// it may lag the store, never lead it.
#[derive(Debug)]
struct Seal {
    path: std::path::PathBuf,
    changes: std::sync::atomic::AtomicU64,
    /// What the file says.
    written: std::sync::atomic::AtomicU64,
    /// `changes` at the last flush: what the next seal may say.
    flushed: std::sync::atomic::AtomicU64,
    /// Whether `changes` was counted and checked against the file: a store opened with
    /// [`SledStore::open_deferred`] is counted by the first scan of its changes, or before
    /// anything that needs the count.
    counted: std::sync::atomic::AtomicBool,
}

/// What [`Seal::flushed`] holds before the first flush: nothing to seal yet.
const NOT_FLUSHED: u64 = u64::MAX;

/// The seal's file name inside the store directory.
const SEAL_FILE: &str = "kervan.seal";
/// The directory of the copies of ledger records inside the store directory.
const RECORDS_DIR: &str = "records";

impl Seal {
    fn write(&self, n: u64) -> Result<(), StoreError> {
        if self.written.swap(n, std::sync::atomic::Ordering::SeqCst) == n {
            return Ok(());
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, format!("{n}\n"))
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|e| StoreError::Corrupt {
                what: self.path.display().to_string(),
                why: format!("cannot write the seal: {e}"),
            })
    }
}

/// sled's page cache. Its default is 1 GiB, which a node fills with every page it reads at
/// start (the snapshots, the change log) and keeps: the replica holds what it needs in memory
/// itself, so the cache only serves sync pages and audits, which read envelopes once.
const CACHE_BYTES: u64 = 32 << 20;

impl SledStore {
    /// Opens the store at `path`, refusing it if it holds fewer changes than its seal says.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let store = Self::open_unsealed(path)?;
        store.ensure_counted()?;
        Ok(store)
    }

    /// Opens the store at `path` without counting its changes yet: the caller scans them all
    /// before it writes anything and hands the count to [`Store::changes_counted`], which
    /// refuses the store as [`SledStore::open`] does. Anything that needs the count before
    /// that (a write, a flush) counts them first.
    pub fn open_deferred(path: &Path) -> Result<Self, StoreError> {
        Self::open_unsealed(path)
    }

    fn ensure_counted(&self) -> Result<(), StoreError> {
        if self.seal.counted.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        self.check_count(self.changes.len() as u64)
    }

    /// Takes `held` as the number of stored changes, and refuses the store if its seal says
    /// more were stored and flushed.
    fn check_count(&self, held: u64) -> Result<(), StoreError> {
        let sealed = std::fs::read_to_string(&self.seal.path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        self.seal
            .written
            .store(sealed.unwrap_or(0), std::sync::atomic::Ordering::SeqCst);
        if let Some(sealed) = sealed.filter(|s| *s > held) {
            return Err(StoreError::Damaged(format!(
                "{sealed} signed changes were stored and flushed, only {held} are left: \
                 its files were truncated or overwritten"
            )));
        }
        self.seal
            .changes
            .store(held, std::sync::atomic::Ordering::SeqCst);
        self.seal
            .counted
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Opens the store without looking at its seal: to read what is left of a damaged one.
    fn open_unsealed(path: &Path) -> Result<Self, StoreError> {
        // No background flusher: the replica flushes before it acknowledges or publishes,
        // and without that thread the lock is released as soon as the store is dropped.
        // sled panics on some damage it finds while recovering its files: that is a damaged
        // store to report, not a crash.
        let opened = std::panic::catch_unwind(|| {
            sled::Config::new()
                .path(path)
                .flush_every_ms(None)
                .cache_capacity(CACHE_BYTES)
                .open()
        });
        let db = match opened {
            Ok(db) => db?,
            Err(panic) => {
                return Err(StoreError::Damaged(format!(
                    "its files do not open: {}",
                    panic_text(&*panic)
                )));
            }
        };
        let changes = db.open_tree("changes")?;
        let seal = std::sync::Arc::new(Seal {
            path: path.join(SEAL_FILE),
            changes: std::sync::atomic::AtomicU64::new(0),
            written: std::sync::atomic::AtomicU64::new(0),
            flushed: std::sync::atomic::AtomicU64::new(NOT_FLUSHED),
            counted: std::sync::atomic::AtomicBool::new(false),
        });
        Ok(Self {
            meta: db.open_tree("meta")?,
            changes,
            seal,
            by_actor: db.open_tree("by_actor")?,
            rejected: db.open_tree("rejected")?,
            evidence: db.open_tree("evidence")?,
            proofs: db.open_tree("proofs")?,
            frozen_keys: db.open_tree("frozen_keys")?,
            snapshots: db.open_tree("snapshots")?,
            records_dir: path.join(RECORDS_DIR),
            db,
        })
    }
}

/// The message of a caught panic.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".into())
}

/// What could still be read from a damaged store.
#[derive(Debug, Default)]
pub struct Salvage {
    /// Envelopes of stored changes that decode (their signatures are checked when applied).
    pub envelopes: Vec<Vec<u8>>,
    /// What could not be read, in words.
    pub problems: Vec<String>,
}

impl SledStore {
    /// Reads every stored change that can still be read from the store at `path`, without
    /// trusting anything else in it. Never fails: what cannot be read is listed instead.
    pub fn salvage(path: &Path) -> Salvage {
        let mut out = Salvage::default();
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let store = Self::open_unsealed(path).map_err(|e| e.to_string())?;
            let mut problems = Vec::new();
            let mut envelopes = Vec::new();
            for kv in store.changes.iter() {
                match kv {
                    Ok((k, v)) => match (
                        parse_doc_key(&k),
                        kervan_protocol::SignedChange::decode(&v, usize::MAX),
                    ) {
                        (Some((doc, _)), Ok(e)) if e.doc == doc => envelopes.push(v.to_vec()),
                        (key, decoded) => problems.push(format!(
                            "skipped an unreadable change ({}, {})",
                            key.map_or_else(|| "bad key".into(), |(d, h)| format!("{d}/{h}")),
                            decoded.map_or_else(|e| e.to_string(), |_| "wrong document".into())
                        )),
                    },
                    Err(e) => {
                        problems.push(format!("reading stopped: {e}"));
                        break;
                    }
                }
            }
            // Proofs vouch for vouched changes: judged with them, they are judged again.
            for kv in store.proofs.iter() {
                match kv {
                    Ok((_, v)) => envelopes.push(v.to_vec()),
                    Err(e) => {
                        problems.push(format!("reading the proofs stopped: {e}"));
                        break;
                    }
                }
            }
            Ok::<_, String>((envelopes, problems))
        }));
        match read {
            Ok(Ok((envelopes, problems))) => {
                out.envelopes = envelopes;
                out.problems = problems;
            }
            Ok(Err(e)) => out.problems.push(format!("the store does not open: {e}")),
            Err(panic) => out
                .problems
                .push(format!("reading the store failed: {}", panic_text(&*panic))),
        }
        out
    }
}

fn slot_key(doc: &DocId, actor: &Actor, seq: u64) -> Vec<u8> {
    let doc = doc.to_string();
    let mut k = Vec::with_capacity(doc.len() + 1 + 40 + 8);
    k.extend_from_slice(doc.as_bytes());
    k.push(0);
    k.extend_from_slice(&actor.to_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn doc_key(doc: Option<&DocId>, hash: &Hash) -> Vec<u8> {
    let doc = doc.map_or_else(|| "raw".to_owned(), ToString::to_string);
    let mut k = Vec::with_capacity(doc.len() + 1 + 32);
    k.extend_from_slice(doc.as_bytes());
    k.push(0);
    k.extend_from_slice(&hash.0);
    k
}

fn parse_doc_key(k: &[u8]) -> Option<(DocId, Hash)> {
    let nul = k.iter().position(|b| *b == 0)?;
    let doc = std::str::from_utf8(&k[..nul]).ok()?.parse().ok()?;
    let hash = <[u8; 32]>::try_from(&k[nul + 1..]).ok()?;
    Some((doc, Hash(hash)))
}

fn parse_slot_key(k: &[u8]) -> Option<(DocId, Actor, u64)> {
    let nul = k.iter().position(|b| *b == 0)?;
    let doc = std::str::from_utf8(&k[..nul]).ok()?.parse().ok()?;
    let rest = &k[nul + 1..];
    if rest.len() != 48 {
        return None;
    }
    let actor = Actor::from_bytes(&rest[..40])?;
    let seq = u64::from_be_bytes(rest[40..].try_into().ok()?);
    Some((doc, actor, seq))
}

fn hash_of(bytes: &[u8], what: &str) -> Result<Hash, StoreError> {
    <[u8; 32]>::try_from(bytes)
        .map(Hash)
        .map_err(|_| StoreError::Corrupt {
            what: what.into(),
            why: format!("a key of {} bytes, expected 32", bytes.len()),
        })
}

fn json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what: what.into(),
        why: e.to_string(),
    })
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("store records serialise")
}

impl SledStore {
    /// The file of a document's copy of records: named by the hex of its id, which holds `/`.
    fn records_path(&self, doc: &DocId) -> std::path::PathBuf {
        self.records_dir.join(hex::encode(doc.to_string()))
    }

    fn records_error(&self, e: std::io::Error) -> StoreError {
        StoreError::Records(format!("{}: {e}", self.records_dir.display()))
    }
}

impl Store for SledStore {
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(key)?.map(|v| v.to_vec()))
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(key, value)?;
        Ok(())
    }

    fn put_change(&self, doc: &DocId, hash: &Hash, envelope: &[u8]) -> Result<(), StoreError> {
        self.ensure_counted()?;
        if self
            .changes
            .insert(doc_key(Some(doc), hash), envelope)?
            .is_none()
        {
            self.seal
                .changes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }

    fn change(&self, doc: &DocId, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .changes
            .get(doc_key(Some(doc), hash))?
            .map(|v| v.to_vec()))
    }

    fn remove_change(&self, doc: &DocId, hash: &Hash) -> Result<(), StoreError> {
        self.ensure_counted()?;
        let key = doc_key(Some(doc), hash);
        if !self.changes.contains_key(&key)? {
            return Ok(());
        }
        // sled may write the removal out before the next flush: lower the seal first, so it
        // never says more than the files hold.
        let n = self
            .seal
            .changes
            .load(std::sync::atomic::Ordering::SeqCst)
            .saturating_sub(1);
        if n < self.seal.written.load(std::sync::atomic::Ordering::SeqCst) {
            self.seal.write(n)?;
        }
        if self.changes.remove(key)?.is_some() {
            self.seal
                .changes
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }

    fn changes(&self) -> Result<Vec<(DocId, Hash, Vec<u8>)>, StoreError> {
        self.changes
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let (doc, hash) = parse_doc_key(&k).ok_or_else(|| StoreError::Corrupt {
                    what: "changes".into(),
                    why: "a key that is not a document and a hash".into(),
                })?;
                Ok((doc, hash, v.to_vec()))
            })
            .collect()
    }

    fn for_each_change(&self, f: &mut EachChange<'_>) -> Result<(), StoreError> {
        for kv in &self.changes {
            let (k, v) = kv?;
            let (doc, hash) = parse_doc_key(&k).ok_or_else(|| StoreError::Corrupt {
                what: "changes".into(),
                why: "a key that is not a document and a hash".into(),
            })?;
            f(doc, hash, &v)?;
        }
        Ok(())
    }

    fn change_count(&self) -> usize {
        // Counted at open, or by the replica's first scan before anything asks.
        self.seal.changes.load(std::sync::atomic::Ordering::SeqCst) as usize
    }

    fn changes_counted(&self, held: u64) -> Result<(), StoreError> {
        if self.seal.counted.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        self.check_count(held)
    }

    fn put_slot(
        &self,
        doc: &DocId,
        actor: &Actor,
        seq: u64,
        hash: &Hash,
    ) -> Result<(), StoreError> {
        // The first verified change keeps the slot; a second one is evidence, stored apart.
        let _ = self.by_actor.compare_and_swap(
            slot_key(doc, actor, seq),
            None as Option<&[u8]>,
            Some(&hash.0[..]),
        )?;
        Ok(())
    }

    fn slots(&self) -> Result<Vec<(DocId, Actor, u64, Hash)>, StoreError> {
        self.by_actor
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let (doc, actor, seq) = parse_slot_key(&k).ok_or_else(|| StoreError::Corrupt {
                    what: "by_actor".into(),
                    why: "a key that is not doc, actor and seq".into(),
                })?;
                Ok((doc, actor, seq, hash_of(&v, "by_actor")?))
            })
            .collect()
    }

    fn put_rejected(&self, rejected: &Rejected) -> Result<(), StoreError> {
        let key = doc_key(
            rejected.doc.as_ref().filter(|_| rejected.verified),
            &rejected.key,
        );
        self.rejected.insert(key, to_json(rejected))?;
        Ok(())
    }

    fn is_rejected(&self, doc: Option<&DocId>, key: &Hash) -> Result<bool, StoreError> {
        Ok(self.rejected.contains_key(doc_key(doc, key))?)
    }

    fn rejected(&self) -> Result<Vec<Rejected>, StoreError> {
        self.rejected
            .iter()
            .map(|kv| json(&kv?.1, "rejected"))
            .collect()
    }

    fn rejected_record(&self, doc: &DocId, hash: &Hash) -> Result<Option<Rejected>, StoreError> {
        self.rejected
            .get(doc_key(Some(doc), hash))?
            .map(|v| json(&v, "rejected"))
            .transpose()
    }

    fn put_evidence(&self, evidence: &Evidence) -> Result<(), StoreError> {
        let key = slot_key(&evidence.doc, &evidence.actor, evidence.seq);
        self.evidence.insert(key, to_json(evidence))?;
        Ok(())
    }

    fn evidence(&self) -> Result<Vec<Evidence>, StoreError> {
        self.evidence
            .iter()
            .map(|kv| json(&kv?.1, "evidence"))
            .collect()
    }

    fn put_proof(&self, doc: &DocId, hash: &Hash, envelope: &[u8]) -> Result<(), StoreError> {
        self.proofs.insert(doc_key(Some(doc), hash), envelope)?;
        Ok(())
    }

    fn proof(&self, doc: &DocId, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .proofs
            .get(doc_key(Some(doc), hash))?
            .map(|v| v.to_vec()))
    }

    fn proofs(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.proofs.iter().map(|kv| Ok(kv?.1.to_vec())).collect()
    }

    fn put_frozen_key(&self, key: &DeviceKey, parks: &[ParkId]) -> Result<(), StoreError> {
        self.frozen_keys.insert(key.0, to_json(&parks))?;
        Ok(())
    }

    fn frozen_keys(&self) -> Result<Vec<DeviceKey>, StoreError> {
        self.frozen_keys
            .iter()
            .map(|kv| Ok(DeviceKey(hash_of(&kv?.0, "frozen_keys")?.0)))
            .collect()
    }

    fn put_snapshot(&self, doc: &DocId, bytes: &[u8]) -> Result<(), StoreError> {
        self.snapshots.insert(doc.to_string(), bytes)?;
        Ok(())
    }

    fn snapshot(&self, doc: &DocId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.snapshots.get(doc.to_string())?.map(|v| v.to_vec()))
    }

    fn clear_snapshots(&self) -> Result<(), StoreError> {
        self.snapshots.clear()?;
        match std::fs::remove_dir_all(&self.records_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.records_error(e)),
            _ => Ok(()),
        }
    }

    fn put_ledger_records(&self, doc: &DocId, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.records_path(doc);
        let tmp = path.with_extension("tmp");
        std::fs::create_dir_all(&self.records_dir)
            .and_then(|()| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| self.records_error(e))
    }

    fn ledger_records(&self, doc: &DocId) -> Result<Option<Vec<u8>>, StoreError> {
        match std::fs::read(self.records_path(doc)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.records_error(e)),
        }
    }

    fn flush_unsealed(&self) -> Result<(), StoreError> {
        self.ensure_counted()?;
        // The seal must never say more than the files hold: a count that went down (a change
        // dropped) is written before the flush, one that went up after it.
        let n = self.seal.changes.load(std::sync::atomic::Ordering::SeqCst);
        if n < self.seal.written.load(std::sync::atomic::Ordering::SeqCst) {
            self.seal.write(n)?;
        }
        self.db.flush()?;
        self.seal
            .flushed
            .store(n, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn seal(&self) -> Result<(), StoreError> {
        match self.seal.flushed.load(std::sync::atomic::Ordering::SeqCst) {
            NOT_FLUSHED => Ok(()),
            // A change removed since that flush lowers what the seal may say.
            n => self
                .seal
                .write(n.min(self.seal.changes.load(std::sync::atomic::Ordering::SeqCst))),
        }
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_keep_the_first_change_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let doc: DocId = "park/kg-htp".parse().expect("doc");
        let actor = Actor {
            key: kervan_protocol::DeviceKey([3; 32]),
            epoch: [1; 8],
        };
        {
            let store = SledStore::open(dir.path()).expect("open");
            store
                .put_slot(&doc, &actor, 7, &Hash([1; 32]))
                .expect("slot");
            store
                .put_slot(&doc, &actor, 7, &Hash([2; 32]))
                .expect("slot");
            store
                .put_change(&doc, &Hash([1; 32]), b"envelope")
                .expect("change");
            store.flush().expect("flush");
        }
        let store = SledStore::open(dir.path()).expect("reopen");
        assert_eq!(
            store.slots().expect("slots"),
            vec![(doc.clone(), actor, 7, Hash([1; 32]))]
        );
        assert_eq!(
            store.change(&doc, &Hash([1; 32])).expect("read"),
            Some(b"envelope".to_vec())
        );
        let other = store
            .change(&DocId::Federation, &Hash([1; 32]))
            .expect("read");
        assert_eq!(other, None, "changes are keyed by document");
    }

    /// A flush that leaves the seal lagging leaves the file as it was; the seal written later
    /// says what that flush made durable, never a change stored after it.
    #[test]
    fn a_lagging_seal_says_what_the_last_flush_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let doc: DocId = "park/kg-htp".parse().expect("doc");
        let read_seal = || {
            std::fs::read_to_string(dir.path().join(SEAL_FILE))
                .ok()
                .map(|t| t.trim().to_owned())
        };
        let store = SledStore::open(dir.path()).expect("open");
        store.seal().expect("nothing flushed yet: nothing to seal");
        assert_eq!(read_seal(), None);
        store
            .put_change(&doc, &Hash([1; 32]), b"envelope")
            .expect("change");
        store.flush().expect("flush");
        assert_eq!(read_seal().as_deref(), Some("1"));
        for i in 2..4u8 {
            store
                .put_change(&doc, &Hash([i; 32]), b"envelope")
                .expect("change");
        }
        store.flush_unsealed().expect("flush");
        assert_eq!(read_seal().as_deref(), Some("1"), "the seal lags");
        store
            .put_change(&doc, &Hash([9; 32]), b"envelope")
            .expect("change");
        store.seal().expect("seal");
        assert_eq!(
            read_seal().as_deref(),
            Some("3"),
            "what the last flush held"
        );
        store.flush().expect("flush");
        assert_eq!(read_seal().as_deref(), Some("4"));
    }

    /// A store opened without counting its changes is refused as `open` refuses it once the
    /// count handed over says it holds fewer than its seal; a write or a flush before any
    /// count counts the changes first, so the seal never goes down.
    #[test]
    fn a_deferred_count_checks_the_seal_as_open_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let doc: DocId = "park/kg-htp".parse().expect("doc");
        {
            let store = SledStore::open(dir.path()).expect("open");
            for i in 0..3u8 {
                store
                    .put_change(&doc, &Hash([i; 32]), b"envelope")
                    .expect("change");
            }
            store.flush().expect("flush");
        }
        let read_seal = || {
            std::fs::read_to_string(dir.path().join(SEAL_FILE))
                .expect("seal")
                .trim()
                .to_owned()
        };
        assert_eq!(read_seal(), "3");
        {
            let store = SledStore::open_deferred(dir.path()).expect("open");
            match store.changes_counted(2) {
                Err(StoreError::Damaged(why)) => {
                    assert!(why.contains("3 signed changes were stored"), "{why}");
                }
                other => panic!("a count below the seal was taken: {other:?}"),
            }
            store.changes_counted(3).expect("the true count");
            assert_eq!(store.change_count(), 3);
        }
        {
            // Written to before any count: the changes are counted first.
            let store = SledStore::open_deferred(dir.path()).expect("open");
            store
                .put_change(&doc, &Hash([9; 32]), b"envelope")
                .expect("change");
            store.flush().expect("flush");
            assert_eq!(store.change_count(), 4);
        }
        assert_eq!(read_seal(), "4");
    }
}

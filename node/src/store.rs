//! Durable storage of signed changes, behind the [`Store`] trait, with sled 0.34 beneath it.
//!
//! Trees (DESIGN §7): `changes` (doc, hash → envelope of every verified change that was not
//! rejected), `by_actor` (doc, actor, seq → hash of every verified change, rejected ones too,
//! so equivocation is judged the same whatever the order), `rejected` (doc, hash, or the
//! envelope's own hash where it never verified → record with the reason), `evidence` (doc,
//! actor, seq → both envelopes), `frozen_keys` (device keys registered for two parks), `meta`,
//! `snapshots` (doc → saved document and the replica's facts about it).
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

/// What the replica needs from storage.
pub trait Store: Send {
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Stores a verified change that was not rejected.
    fn put_change(&self, doc: &DocId, hash: &Hash, envelope: &[u8]) -> Result<(), StoreError>;
    fn change(&self, doc: &DocId, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError>;
    fn remove_change(&self, doc: &DocId, hash: &Hash) -> Result<(), StoreError>;
    /// Every stored change, by document, then hash.
    fn changes(&self) -> Result<Vec<(DocId, Hash, Vec<u8>)>, StoreError>;
    fn change_count(&self) -> usize;
    /// Records which verified change holds a slot (doc, actor, seq); the first one keeps it.
    fn put_slot(&self, doc: &DocId, actor: &Actor, seq: u64, hash: &Hash)
    -> Result<(), StoreError>;
    fn slots(&self) -> Result<Vec<(DocId, Actor, u64, Hash)>, StoreError>;
    fn put_rejected(&self, rejected: &Rejected) -> Result<(), StoreError>;
    /// Whether a change of `doc` (or, with no doc, an envelope by its own hash) was rejected.
    fn is_rejected(&self, doc: Option<&DocId>, key: &Hash) -> Result<bool, StoreError>;
    fn rejected(&self) -> Result<Vec<Rejected>, StoreError>;
    fn put_evidence(&self, evidence: &Evidence) -> Result<(), StoreError>;
    fn evidence(&self) -> Result<Vec<Evidence>, StoreError>;
    /// Records a device key registered for two parks: it is frozen everywhere.
    fn put_frozen_key(&self, key: &DeviceKey, parks: &[ParkId]) -> Result<(), StoreError>;
    fn frozen_keys(&self) -> Result<Vec<DeviceKey>, StoreError>;
    fn put_snapshot(&self, doc: &DocId, bytes: &[u8]) -> Result<(), StoreError>;
    fn snapshot(&self, doc: &DocId) -> Result<Option<Vec<u8>>, StoreError>;
    fn clear_snapshots(&self) -> Result<(), StoreError>;
    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), StoreError>;
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
    frozen_keys: sled::Tree,
    snapshots: sled::Tree,
}

impl SledStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // No background flusher: the replica flushes before it acknowledges or publishes,
        // and without that thread the lock is released as soon as the store is dropped.
        let db = sled::Config::new().path(path).flush_every_ms(None).open()?;
        Ok(Self {
            meta: db.open_tree("meta")?,
            changes: db.open_tree("changes")?,
            by_actor: db.open_tree("by_actor")?,
            rejected: db.open_tree("rejected")?,
            evidence: db.open_tree("evidence")?,
            frozen_keys: db.open_tree("frozen_keys")?,
            snapshots: db.open_tree("snapshots")?,
            db,
        })
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

impl Store for SledStore {
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(key)?.map(|v| v.to_vec()))
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(key, value)?;
        Ok(())
    }

    fn put_change(&self, doc: &DocId, hash: &Hash, envelope: &[u8]) -> Result<(), StoreError> {
        self.changes.insert(doc_key(Some(doc), hash), envelope)?;
        Ok(())
    }

    fn change(&self, doc: &DocId, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .changes
            .get(doc_key(Some(doc), hash))?
            .map(|v| v.to_vec()))
    }

    fn remove_change(&self, doc: &DocId, hash: &Hash) -> Result<(), StoreError> {
        self.changes.remove(doc_key(Some(doc), hash))?;
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

    fn change_count(&self) -> usize {
        self.changes.len()
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
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
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
}

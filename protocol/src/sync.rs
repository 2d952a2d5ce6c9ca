//! Anti-entropy (DESIGN §6): the wire messages of `/kervan/sync/1` and the pure decision of
//! what one node must send another.
//!
//! A node sends its summary: for each (document, actor) the highest accepted seq and that
//! change's hash, and the digest of the whole. Equal digests end the exchange in one round
//! trip. Otherwise the peer answers with the changes the requester lacks, in causal order, in
//! pages bounded in bytes; a head with the same seq and another hash reveals equivocation, and
//! the peer sends its own change at that seq as evidence.

use std::collections::HashMap;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::{Actor, DocId, Hash};

/// The request-response protocol name.
pub const PROTOCOL: &str = "/kervan/sync/1";
/// The most bytes of changes one page carries (the last change may cross it).
pub const MAX_PAGE_BYTES: usize = 1 << 20;
/// The most changes one page carries; an answer with more is refused whole.
pub const MAX_PAGE_CHANGES: usize = 4096;
/// The largest request a node reads: a summary of some 10,000 actors.
pub const MAX_REQUEST_BYTES: usize = 2 << 20;
/// The largest response a node reads: a full page and its framing.
pub const MAX_RESPONSE_BYTES: usize = MAX_PAGE_BYTES + (1 << 20);

/// An actor's newest accepted change in a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub doc: DocId,
    pub actor: Actor,
    pub seq: u64,
    pub hash: Hash,
}

/// What a node holds, in brief.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub digest: Hash,
    pub heads: Vec<Head>,
}

impl Summary {
    /// Builds a summary and its digest from the heads, in any order.
    pub fn new(mut heads: Vec<Head>) -> Self {
        heads.sort_by(|a, b| (&a.doc, &a.actor).cmp(&(&b.doc, &b.actor)));
        Self {
            digest: digest(&heads),
            heads,
        }
    }
}

/// The state digest: equal on two nodes exactly when they hold the same accepted changes.
/// `heads` must be sorted by document, then actor.
pub fn digest(heads: &[Head]) -> Hash {
    let mut h = Sha256::new();
    h.update(b"kervan/digest/v1");
    for head in heads {
        h.update(head.doc.to_string().as_bytes());
        h.update([0]);
        h.update(head.actor.to_bytes());
        h.update(head.seq.to_be_bytes());
        h.update(head.hash.0);
    }
    Hash(h.finalize().into())
}

/// A member's known addresses, passed on so a park needs only one reachable peer to find the
/// rest of the federation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddrs {
    pub peer: String,
    pub addrs: Vec<String>,
}

/// A request of `/kervan/sync/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// "This is what I hold: send what I lack."
    Pull(Summary),
}

/// A response of `/kervan/sync/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The digests are equal.
    UpToDate { peers: Vec<PeerAddrs> },
    /// Signed envelopes the requester lacks, in causal order; `more` when the page was full.
    Changes {
        #[serde(with = "envelopes")]
        changes: Vec<Vec<u8>>,
        more: bool,
        peers: Vec<PeerAddrs>,
    },
}

mod envelopes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_bytes::ByteBuf;

    pub(super) fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let bufs: Vec<&serde_bytes::Bytes> = v.iter().map(|b| serde_bytes::Bytes::new(b)).collect();
        bufs.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Ok(Vec::<ByteBuf>::deserialize(d)?
            .into_iter()
            .map(ByteBuf::into_vec)
            .collect())
    }
}

/// One run of one actor's changes the remote lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub doc: DocId,
    pub actor: Actor,
    pub seqs: RangeInclusive<u64>,
}

/// What `local` holds that `remote` lacks: for each actor, the seqs after the remote's head.
/// Where both hold the same seq with different hashes, the local change at that seq is sent
/// too: it is the evidence of equivocation.
pub fn missing(local: &Summary, remote: &Summary) -> Vec<Missing> {
    let theirs: HashMap<(&DocId, &Actor), &Head> = remote
        .heads
        .iter()
        .map(|h| ((&h.doc, &h.actor), h))
        .collect();
    let mut out = Vec::new();
    for mine in &local.heads {
        let from = match theirs.get(&(&mine.doc, &mine.actor)) {
            None => 1,
            Some(t) if t.seq < mine.seq => t.seq + 1,
            Some(t) if t.seq == mine.seq && t.hash != mine.hash => mine.seq,
            Some(_) => continue,
        };
        out.push(Missing {
            doc: mine.doc.clone(),
            actor: mine.actor,
            seqs: from..=mine.seq,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::DeviceKey;

    fn head(doc: &str, a: u8, seq: u64, h: u8) -> Head {
        Head {
            doc: doc.parse().expect("doc"),
            actor: Actor {
                key: DeviceKey([a; 32]),
                epoch: [0; 8],
            },
            seq,
            hash: Hash([h; 32]),
        }
    }

    #[test]
    fn equal_summaries_have_equal_digests_and_miss_nothing() {
        let a = Summary::new(vec![
            head("federation", 1, 3, 9),
            head("park/kg-htp", 2, 5, 7),
        ]);
        let b = Summary::new(vec![
            head("park/kg-htp", 2, 5, 7),
            head("federation", 1, 3, 9),
        ]);
        assert_eq!(a.digest, b.digest);
        assert!(missing(&a, &b).is_empty());
    }

    #[test]
    fn sends_what_the_remote_lacks_and_evidence_of_forks() {
        let local = Summary::new(vec![
            head("federation", 1, 3, 9),
            head("park/kg-htp", 2, 5, 7),
            head("park/kg-htp", 3, 2, 6),
        ]);
        let remote = Summary::new(vec![
            head("federation", 1, 3, 9),
            head("park/kg-htp", 2, 2, 4),
            head("park/kg-htp", 3, 2, 5),
        ]);
        let m = missing(&local, &remote);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].seqs, 3..=5);
        assert_eq!(
            m[1].seqs,
            2..=2,
            "same seq, other hash: send ours as evidence"
        );
        let empty = Summary::new(vec![]);
        assert_eq!(missing(&local, &empty)[0].seqs, 1..=3);
        assert_ne!(local.digest, empty.digest);
    }
}

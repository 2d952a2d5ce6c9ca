//! Anti-entropy (DESIGN §6): the wire messages of `/kervan/sync/4` and the pure decisions of
//! what one node must send another.
//!
//! A node sends its summary: for each (document, actor) the highest accepted seq and that
//! change's hash. Equal digests end the exchange in one round trip. Otherwise the peer answers
//! with the changes the requester lacks, in causal order, in pages bounded in bytes; a head
//! with the same seq and another hash reveals equivocation, and the peer sends its own change
//! at that seq as evidence.
//!
//! When a pull ends with equal digests, both nodes know the same summary: the responder keeps
//! it by digest ([`SummaryCache`]), the requester keeps it as agreed with that peer, the
//! analogue of Automerge's sync state. The requester's next pull to that peer names it by its
//! digest and carries only the heads that differ from it ([`Delta`], made by [`delta`]), with
//! the digest of its whole summary; the responder rebuilds the whole summary from the cached
//! one ([`resolve`]) and checks the rebuilt digest against the requester's. A responder that
//! does not hold the base, or rebuilds another digest, answers [`Response::UnknownBase`], and
//! the requester pulls again with its whole summary.
//!
//! # Wire form
//!
//! CBOR as libp2p's request-response codec writes it (`cbor4ii`): arrays rather than maps,
//! hashes and actors as byte strings (32 and 40 bytes), each actor and each document once.
//!
//! ```text
//! Request  = [0, Summary] / [1, Delta]
//! Summary  = [actors, groups]                ; no digest: it is computed again on decoding
//! Delta    = [base: bstr 32, digest: bstr 32, changed, actors, groups]  ; groups: added heads
//! actors   = [* bstr 40]                     ; device key and store epoch, each actor once
//! groups   = [* [doc, * (actor: uint, seq: uint, hash: bstr 32)]]  ; actor: index in actors
//! doc      = "" / park-id: tstr              ; the federation document, or a park's ledger
//! changed  = [* (index: uint, seq: uint, hash: bstr 32)]  ; index in the base's sorted heads
//! Response = [0, peers] / [1, runs, more: bool, peers] / [2]  ; 2: UnknownBase
//! runs     = [* run]
//! run      = [doc: bstr, packed: bstr, sigs: bstr]
//!                                             ; changes of one document in a row: its id
//!                                             ; (utf8) once, the changes taken apart into
//!                                             ; fields and op columns, each deflated
//!                                             ; (crate::pack), and one signature per actor,
//!                                             ; over its newest signed change in the run: the
//!                                             ; receiver keeps the actor's earlier changes as
//!                                             ; vouched for by it
//!          / [h'', * envelope: bstr]          ; envelopes that do not decode, whole
//! peers    = [* [peer: tstr, [* addr: tstr]]]
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::ops::RangeInclusive;
use std::sync::Arc;

use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::envelope::{Proof, SignedChange};
use crate::ids::{Actor, DocId, Hash};

/// The request-response protocol name.
pub const PROTOCOL: &str = "/kervan/sync/4";
/// The most bytes of changes one page carries (the last change may cross it).
pub const MAX_PAGE_BYTES: usize = 1 << 20;
/// The most changes one page carries; an answer with more is refused whole.
pub const MAX_PAGE_CHANGES: usize = 4096;
/// The largest request a node reads: a summary of some 20,000 actors.
pub const MAX_REQUEST_BYTES: usize = 2 << 20;
/// The largest response a node reads: a full page and its framing.
pub const MAX_RESPONSE_BYTES: usize = MAX_PAGE_BYTES + (1 << 20);
/// What the packed runs of one response may inflate to, all together.
pub const MAX_UNPACKED_BYTES: usize = MAX_RESPONSE_BYTES;
/// Summaries a [`SummaryCache`] keeps by default.
pub const CACHED_SUMMARIES: usize = 64;
/// Heads, summed over its summaries, a [`SummaryCache`] keeps by default.
pub const CACHED_HEADS: usize = 1 << 16;

/// An actor's newest accepted change in a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub doc: DocId,
    pub actor: Actor,
    pub seq: u64,
    pub hash: Hash,
}

/// What a node holds, in brief. On the wire it is its heads (see the module's wire form); the
/// digest is computed again from them on decoding, so a decoded summary's digest is always its
/// heads' digest and its heads are sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub digest: Hash,
    pub heads: Vec<Head>,
}

impl Summary {
    /// Builds a summary and its digest from the heads, in any order.
    pub fn new(mut heads: Vec<Head>) -> Self {
        heads.sort_by(|a, b| key(a).cmp(&key(b)));
        Self {
            digest: digest(&heads),
            heads,
        }
    }
}

/// The order of a summary's heads.
fn key(h: &Head) -> (&DocId, &Actor) {
    (&h.doc, &h.actor)
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
/// rest of the federation. On the wire: `[peer, [addr...]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddrs {
    pub peer: String,
    pub addrs: Vec<String>,
}

/// A request of `/kervan/sync/4`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// "This is what I hold: send what I lack."
    Pull(Summary),
    /// The same, told as the difference from a summary both sides agreed on.
    PullDelta(Delta),
}

/// A response of `/kervan/sync/4`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The digests are equal.
    UpToDate { peers: Vec<PeerAddrs> },
    /// Signed envelopes the requester lacks, in causal order; `more` when the page was full.
    Changes {
        changes: Vec<Vec<u8>>,
        more: bool,
        peers: Vec<PeerAddrs>,
    },
    /// The answer to a [`Request::PullDelta`] whose base this node does not hold, or from which
    /// it rebuilds another digest than the requester's: pull again with the whole summary.
    UnknownBase,
}

/// A summary told as its difference from an agreed one (the base): what a node sends a peer
/// with which its last exchange ended with equal digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// The digest of the agreed summary.
    pub base: Hash,
    /// The digest of the requester's whole summary, which the rebuilt summary must have.
    pub digest: Hash,
    /// Heads of the base with another seq or hash, by index into the base's heads, increasing.
    pub changed: Vec<Changed>,
    /// Heads the base lacks, sorted by document and actor.
    pub added: Vec<Head>,
}

/// A head of the base that moved: the base's head at `index` now stands at `seq` with `hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    pub index: u32,
    pub seq: u64,
    pub hash: Hash,
}

/// Why a delta does not rebuild a summary. The responder answers each with
/// [`Response::UnknownBase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("the delta is against another base")]
    OtherBase,
    #[error("changed heads are out of order or named twice")]
    ChangedOrder,
    #[error("a changed head's index is past the base's heads")]
    IndexOutOfRange,
    #[error("added heads are out of order or named twice")]
    AddedOrder,
    #[error("an added head is already in the base")]
    AddedInBase,
    #[error("the rebuilt summary has another digest than the requester's")]
    DigestMismatch,
}

/// `current` told as its difference from `agreed`; `None` when it cannot be (a head of
/// `agreed` is gone from `current`, or either is not sorted and unique): send it whole then.
pub fn delta(agreed: &Summary, current: &Summary) -> Option<Delta> {
    let mut changed = Vec::new();
    let mut added = Vec::new();
    let mut base = agreed.heads.iter().enumerate().peekable();
    let mut prev: Option<(&DocId, &Actor)> = None;
    for head in &current.heads {
        let k = key(head);
        if prev.is_some_and(|p| p >= k) {
            return None;
        }
        prev = Some(k);
        match base.peek() {
            // A head of the agreed summary that `current` lacks: heads do not disappear, but
            // a delta cannot say so.
            Some(&(_, b)) if key(b) < k => return None,
            Some(&(i, b)) if key(b) == k => {
                if b.seq != head.seq || b.hash != head.hash {
                    changed.push(Changed {
                        index: u32::try_from(i).ok()?,
                        seq: head.seq,
                        hash: head.hash,
                    });
                }
                base.next();
            }
            _ => added.push(head.clone()),
        }
    }
    if base.next().is_some() {
        return None;
    }
    Some(Delta {
        base: agreed.digest,
        digest: current.digest,
        changed,
        added,
    })
}

/// The requester's whole summary, rebuilt from the agreed `base` and its `delta`. Refuses a
/// delta against another base, with changed heads out of order, named twice or past the base,
/// with added heads out of order, named twice or already in the base, and one whose rebuilt
/// digest is not the requester's.
pub fn resolve(base: &Summary, delta: &Delta) -> Result<Summary, DeltaError> {
    if base.digest != delta.base {
        return Err(DeltaError::OtherBase);
    }
    let mut heads = base.heads.clone();
    let mut lowest = 0usize;
    for c in &delta.changed {
        let i = c.index as usize;
        if i < lowest {
            return Err(DeltaError::ChangedOrder);
        }
        let h = heads.get_mut(i).ok_or(DeltaError::IndexOutOfRange)?;
        h.seq = c.seq;
        h.hash = c.hash;
        lowest = i + 1;
    }
    if delta.added.windows(2).any(|w| key(&w[0]) >= key(&w[1])) {
        return Err(DeltaError::AddedOrder);
    }
    let mut out = Vec::with_capacity(heads.len() + delta.added.len());
    let mut added = delta.added.iter().peekable();
    for h in heads {
        while let Some(a) = added.next_if(|a| key(a) < key(&h)) {
            out.push(a.clone());
        }
        if added.peek().is_some_and(|a| key(a) == key(&h)) {
            return Err(DeltaError::AddedInBase);
        }
        out.push(h);
    }
    out.extend(added.cloned());
    let digest = digest(&out);
    if digest != delta.digest {
        return Err(DeltaError::DigestMismatch);
    }
    Ok(Summary { digest, heads: out })
}

/// Agreed summaries by digest, the newest used kept: a responder's memory of the bases its
/// peers may name. Bounded in summaries and in heads summed over them; a summary larger than
/// the whole budget is not kept.
#[derive(Debug)]
pub struct SummaryCache {
    entries: VecDeque<Arc<Summary>>,
    heads: usize,
    max_entries: usize,
    max_heads: usize,
}

impl Default for SummaryCache {
    fn default() -> Self {
        Self::new(CACHED_SUMMARIES, CACHED_HEADS)
    }
}

impl SummaryCache {
    pub fn new(max_entries: usize, max_heads: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            heads: 0,
            max_entries,
            max_heads,
        }
    }

    /// Keeps `summary` as the newest, dropping the least recently used beyond the bounds.
    pub fn insert(&mut self, summary: Arc<Summary>) {
        if self.get(&summary.digest).is_some() {
            return;
        }
        if summary.heads.len() > self.max_heads || self.max_entries == 0 {
            return;
        }
        self.heads += summary.heads.len();
        self.entries.push_back(summary);
        while self.entries.len() > self.max_entries || self.heads > self.max_heads {
            match self.entries.pop_front() {
                Some(old) => self.heads -= old.heads.len(),
                None => break,
            }
        }
    }

    /// The summary with this digest, now the most recently used.
    pub fn get(&mut self, digest: &Hash) -> Option<Arc<Summary>> {
        let i = self.entries.iter().position(|s| s.digest == *digest)?;
        let s = self.entries.remove(i)?;
        self.entries.push_back(s.clone());
        Some(s)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
    let theirs: HashMap<(&DocId, &Actor), &Head> =
        remote.heads.iter().map(|h| (key(h), h)).collect();
    let mut out = Vec::new();
    for mine in &local.heads {
        let from = match theirs.get(&key(mine)) {
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

// The wire form.

/// A byte string of exactly `N` bytes.
struct Fixed<const N: usize>([u8; N]);

impl<'de, const N: usize> Deserialize<'de> for Fixed<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const N: usize>;
        impl<const N: usize> Visitor<'_> for V<N> {
            type Value = Fixed<N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a byte string of {N} bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Fixed<N>, E> {
                <[u8; N]>::try_from(v)
                    .map(Fixed)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(V::<N>)
    }
}

fn bytes(b: &[u8]) -> &serde_bytes::Bytes {
    serde_bytes::Bytes::new(b)
}

/// The next element of an array that must have it.
fn field<'de, T: Deserialize<'de>, A: SeqAccess<'de>>(
    seq: &mut A,
    i: usize,
    what: &'static str,
) -> Result<T, A::Error> {
    seq.next_element()?
        .ok_or_else(|| de::Error::invalid_length(i, &what))
}

/// The end of an array: anything more is refused.
fn end<'de, A: SeqAccess<'de>>(seq: &mut A, what: &'static str) -> Result<(), A::Error> {
    match seq.next_element::<IgnoredAny>()? {
        None => Ok(()),
        Some(_) => Err(de::Error::custom(format_args!(
            "trailing elements in {what}"
        ))),
    }
}

/// The heads of a summary or a delta as the wire carries them: each actor once, in the order
/// of first appearance, then the heads grouped by runs of one document.
fn heads_out(heads: &[Head]) -> (ActorsOut, Vec<GroupOut<'_>>) {
    let mut index: HashMap<Actor, u32> = HashMap::new();
    let mut actors = Vec::new();
    let mut groups: Vec<GroupOut<'_>> = Vec::new();
    for h in heads {
        let next = index.len() as u32;
        let a = *index.entry(h.actor).or_insert_with(|| {
            actors.push(h.actor.to_bytes());
            next
        });
        match groups.last_mut() {
            Some(g) if *g.doc == h.doc => g.heads.push((a, h)),
            _ => groups.push(GroupOut {
                doc: &h.doc,
                heads: vec![(a, h)],
            }),
        }
    }
    (ActorsOut(actors), groups)
}

/// The heads an actor table and groups stand for, in the order the wire gives them.
fn heads_in<E: de::Error>(
    actors: Vec<Fixed<{ Actor::LEN }>>,
    groups: Vec<GroupIn>,
) -> Result<Vec<Head>, E> {
    let actors: Vec<Actor> = actors
        .iter()
        .filter_map(|a| Actor::from_bytes(&a.0))
        .collect();
    let mut out = Vec::new();
    for g in groups {
        for (a, seq, hash) in g.heads {
            let actor = *actors
                .get(a as usize)
                .ok_or_else(|| E::custom("actor index past the actor table"))?;
            out.push(Head {
                doc: g.doc.clone(),
                actor,
                seq,
                hash,
            });
        }
    }
    Ok(out)
}

struct ActorsOut(Vec<[u8; Actor::LEN]>);

impl Serialize for ActorsOut {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|a| bytes(a)))
    }
}

/// `[doc, actor, seq, hash, actor, seq, hash...]`
struct GroupOut<'a> {
    doc: &'a DocId,
    heads: Vec<(u32, &'a Head)>,
}

impl Serialize for GroupOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq as _;
        let mut seq = s.serialize_seq(Some(1 + 3 * self.heads.len()))?;
        seq.serialize_element(&DocOut(self.doc))?;
        for (a, h) in &self.heads {
            seq.serialize_element(a)?;
            seq.serialize_element(&h.seq)?;
            seq.serialize_element(bytes(&h.hash.0))?;
        }
        seq.end()
    }
}

/// A document on the wire: `""` for the federation document, the park id for its ledger.
struct DocOut<'a>(&'a DocId);

impl Serialize for DocOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            DocId::Federation => s.serialize_str(""),
            DocId::Ledger(park) => s.serialize_str(park.as_str()),
        }
    }
}

struct DocIn(DocId);

impl<'de> Deserialize<'de> for DocIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DocIn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"\" or a park id")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DocIn, E> {
                if v.is_empty() {
                    return Ok(DocIn(DocId::Federation));
                }
                v.parse()
                    .map(|p| DocIn(DocId::Ledger(p)))
                    .map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

struct GroupIn {
    doc: DocId,
    heads: Vec<(u32, u64, Hash)>,
}

impl<'de> Deserialize<'de> for GroupIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = GroupIn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a document and its heads")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<GroupIn, A::Error> {
                let DocIn(doc) = field(&mut seq, 0, "a document")?;
                let heads = triples(&mut seq, 1)?;
                Ok(GroupIn { doc, heads })
            }
        }
        d.deserialize_seq(V)
    }
}

/// The rest of an array as (uint, uint, 32 bytes) triples; `at` elements were read before.
fn triples<'de, A: SeqAccess<'de>>(
    seq: &mut A,
    at: usize,
) -> Result<Vec<(u32, u64, Hash)>, A::Error> {
    let mut out = Vec::new();
    while let Some(a) = seq.next_element::<u32>()? {
        let i = at + 3 * out.len();
        let n: u64 = field(seq, i + 1, "a seq")?;
        let h: Fixed<32> = field(seq, i + 2, "a hash")?;
        out.push((a, n, Hash(h.0)));
    }
    Ok(out)
}

/// `[index, seq, hash, index, seq, hash...]`
struct ChangedOut<'a>(&'a [Changed]);

impl Serialize for ChangedOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq as _;
        let mut seq = s.serialize_seq(Some(3 * self.0.len()))?;
        for c in self.0 {
            seq.serialize_element(&c.index)?;
            seq.serialize_element(&c.seq)?;
            seq.serialize_element(bytes(&c.hash.0))?;
        }
        seq.end()
    }
}

struct ChangedIn(Vec<Changed>);

impl<'de> Deserialize<'de> for ChangedIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ChangedIn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("changed heads")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ChangedIn, A::Error> {
                Ok(ChangedIn(
                    triples(&mut seq, 0)?
                        .into_iter()
                        .map(|(index, seq, hash)| Changed { index, seq, hash })
                        .collect(),
                ))
            }
        }
        d.deserialize_seq(V)
    }
}

impl Serialize for Summary {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        heads_out(&self.heads).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Summary {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (actors, groups) = <(Vec<Fixed<{ Actor::LEN }>>, Vec<GroupIn>)>::deserialize(d)?;
        Ok(Summary::new(heads_in(actors, groups)?))
    }
}

impl Serialize for Delta {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (actors, groups) = heads_out(&self.added);
        (
            bytes(&self.base.0),
            bytes(&self.digest.0),
            ChangedOut(&self.changed),
            actors,
            groups,
        )
            .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Delta {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        type Wire = (
            Fixed<32>,
            Fixed<32>,
            ChangedIn,
            Vec<Fixed<{ Actor::LEN }>>,
            Vec<GroupIn>,
        );
        let (base, digest, changed, actors, groups) = Wire::deserialize(d)?;
        Ok(Delta {
            base: Hash(base.0),
            digest: Hash(digest.0),
            changed: changed.0,
            added: heads_in(actors, groups)?,
        })
    }
}

impl Serialize for PeerAddrs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.peer, &self.addrs).serialize(s)
    }
}

impl<'de> Deserialize<'de> for PeerAddrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (peer, addrs) = <(String, Vec<String>)>::deserialize(d)?;
        Ok(PeerAddrs { peer, addrs })
    }
}

/// A page's envelopes on the wire: runs of envelopes of one document, the document named once
/// per run and its changes packed together ([`crate::pack`]):
/// `[* [doc: bstr, packed: bstr, sigs: bstr]]`. A run carries one signature per actor: over
/// the newest change of that actor in the run that has one; the receiver rebuilds the changes
/// before it as vouched for by it ([`crate::envelope::Proof::Vouched`]). Envelopes that do not
/// decode travel whole after an empty document: `[h'', * envelope: bstr]`.
struct EnvelopesOut<'a>(&'a [Vec<u8>]);

impl Serialize for EnvelopesOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut runs: Vec<(Vec<u8>, Vec<Entry<'_>>)> = Vec::new();
        for e in self.0 {
            let (doc, item) = match SignedChange::decode(e, usize::MAX) {
                Ok(env) => (env.doc.to_string().into_bytes(), Ok(env)),
                Err(_) => (Vec::new(), Err(e.as_slice())),
            };
            match runs.last_mut() {
                Some((d, items)) if *d == doc => items.push(item),
                _ => runs.push((doc, vec![item])),
            }
        }
        s.collect_seq(runs.iter().map(|(doc, items)| RunOut(doc, items)))
    }
}

/// An envelope of a page: decoded, or the bytes of one that does not decode.
type Entry<'a> = Result<SignedChange, &'a [u8]>;

/// A run: its document and its envelopes.
struct RunOut<'a>(&'a [u8], &'a [Entry<'a>]);

impl Serialize for RunOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (doc, items) = (self.0, self.1);
        if doc.is_empty() {
            let whole = items.iter().filter_map(|i| i.as_ref().err().copied());
            return s.collect_seq(std::iter::once(doc).chain(whole).map(bytes));
        }
        let envs: Vec<&SignedChange> = items.iter().filter_map(|i| i.as_ref().ok()).collect();
        let facts: Vec<Fact<'_>> = envs
            .iter()
            .map(|env| {
                let (actor, seq) = crate::pack::change_actor_seq(&env.change).unzip();
                (actor, seq, env.signature().is_some())
            })
            .collect();
        let carried = carried(&facts);
        let packed_items: Vec<crate::pack::Item<'_>> = envs
            .iter()
            .zip(&carried)
            .map(|(env, carry)| crate::pack::Item {
                change: &env.change,
                sig: env.signature().filter(|_| *carry),
            })
            .collect();
        let (packed, sigs) = crate::pack::pack(&packed_items);
        (bytes(doc), bytes(&packed), bytes(&sigs)).serialize(s)
    }
}

/// A change of a run as [`carried`] sees it: its actor and seq (where its header reads), and
/// whether a signature of it is at hand.
type Fact<'a> = (Option<&'a [u8]>, Option<u64>, bool);

/// Which signatures of a run travel, given each change's actor, seq and whether this node
/// holds a signature of it. The receiver takes a change without one as vouched for by the
/// next change of its actor in the run that has one, so an actor's signed change carries its
/// signature where it is the actor's newest signed change in the run; where the change before
/// it of the same actor travels without (the actor's changes before it need a voucher, and a
/// change held as vouched has none of its own); and where the next change of the actor does
/// not have a higher seq, so is on another branch of a fork (a run lists each branch of an
/// actor in one stretch: evidence, then what is wanted).
fn carried(items: &[Fact<'_>]) -> Vec<bool> {
    let mut out = vec![false; items.len()];
    // Per actor: the previous change's index. Maps, not lists: a hostile page may hold a
    // different actor in every change.
    let mut last: HashMap<Option<&[u8]>, usize> = HashMap::new();
    for (i, (actor, _, _)) in items.iter().enumerate() {
        if let Some(p) = last.insert(*actor, i) {
            let (_, seq, signed) = items[i];
            let (_, prev_seq, prev_signed) = items[p];
            if prev_signed && seq.zip(prev_seq).is_none_or(|(s, ps)| s <= ps) {
                out[p] = true;
            }
            if signed && !prev_signed {
                out[i] = true;
            }
        }
    }
    let mut newest: HashSet<Option<&[u8]>> = HashSet::new();
    for (i, (actor, _, signed)) in items.iter().enumerate().rev() {
        if *signed && newest.insert(*actor) {
            out[i] = true;
        }
    }
    out
}

fn envelopes_in<E: de::Error>(runs: Vec<Vec<serde_bytes::ByteBuf>>) -> Result<Vec<Vec<u8>>, E> {
    let mut out = Vec::new();
    // What a page's runs may inflate to, and rebuild, all together: no more than a page may
    // weigh on the wire before packing.
    let mut budget = MAX_UNPACKED_BYTES;
    // A page has one form: what decodes as an envelope is packed, and a document's envelopes
    // in a row are one run (so which signatures travel is the encoder's one choice).
    let mut last_doc: Option<Vec<u8>> = None;
    for run in runs {
        let mut run = run.into_iter();
        let doc = run
            .next()
            .ok_or_else(|| E::custom("a run of envelopes without its document"))?;
        if last_doc.as_deref() == Some(doc.as_slice()) {
            return Err(E::custom("two runs of one document in a row"));
        }
        last_doc = Some(doc.to_vec());
        // How many changes a page may hold is the net actor's to judge (a page over
        // MAX_PAGE_CHANGES bans its sender); the codec's byte limit and the unpacking budget
        // bound what is read here.
        if doc.is_empty() {
            for e in run {
                if SignedChange::decode(&e, usize::MAX).is_ok() {
                    return Err(E::custom("an envelope sent whole instead of packed"));
                }
                out.push(e.into_vec());
            }
            continue;
        }
        let doc = std::str::from_utf8(&doc)
            .ok()
            .and_then(|d| d.parse::<DocId>().ok())
            .ok_or_else(|| E::custom("a run names no document"))?;
        let (Some(packed), Some(sigs), None) = (run.next(), run.next(), run.next()) else {
            return Err(E::custom(
                "a packed run is a document, the packed changes and their signatures",
            ));
        };
        let changes = crate::pack::unpack(&packed, &sigs, budget).map_err(E::custom)?;
        budget = budget.saturating_sub(changes.iter().map(|c| c.change.len()).sum());
        // The signatures are those the encoder carries ([`carried`]), so a page has one form.
        let facts: Vec<Fact<'_>> = changes
            .iter()
            .map(|c| {
                let seq = crate::pack::change_actor_seq(&c.change).map(|(_, s)| s);
                (c.actor.as_deref(), seq, c.sig.is_some())
            })
            .collect();
        if carried(&facts).iter().zip(&facts).any(|(c, f)| *c != f.2) {
            return Err(E::custom(
                "a run carries a signature its encoding leaves out",
            ));
        }
        // Each change without a signature is vouched for by the next change of its actor in
        // the run that has one; with none, it names no voucher and proves nothing.
        let mut next_signed: HashMap<Option<&[u8]>, Hash> = HashMap::new();
        let mut vouchers = vec![Hash([0; 32]); changes.len()];
        for (i, c) in changes.iter().enumerate().rev() {
            if c.sig.is_some() {
                next_signed.insert(c.actor.as_deref(), Hash(c.hash));
            } else if let Some(h) = next_signed.get(&c.actor.as_deref()) {
                vouchers[i] = *h;
            }
        }
        for (c, voucher) in changes.into_iter().zip(vouchers) {
            let env = match c.sig {
                Some(sig) => SignedChange {
                    doc: doc.clone(),
                    change: c.change,
                    proof: Proof::Signature(sig),
                },
                None => SignedChange::vouched(doc.clone(), c.change, voucher),
            };
            out.push(env.encode());
        }
    }
    Ok(out)
}

impl Serialize for Request {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Request::Pull(summary) => (0u8, summary).serialize(s),
            Request::PullDelta(delta) => (1u8, delta).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Request;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sync request")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Request, A::Error> {
                let request = match field::<u8, A>(&mut seq, 0, "a request kind")? {
                    0 => Request::Pull(field(&mut seq, 1, "a summary")?),
                    1 => Request::PullDelta(field(&mut seq, 1, "a delta")?),
                    k => {
                        return Err(de::Error::invalid_value(
                            de::Unexpected::Unsigned(k.into()),
                            &"0 or 1",
                        ));
                    }
                };
                end(&mut seq, "a request")?;
                Ok(request)
            }
        }
        d.deserialize_seq(V)
    }
}

impl Serialize for Response {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Response::UpToDate { peers } => (0u8, peers).serialize(s),
            Response::Changes {
                changes,
                more,
                peers,
            } => (1u8, EnvelopesOut(changes), more, peers).serialize(s),
            Response::UnknownBase => (2u8,).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Response;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sync response")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Response, A::Error> {
                let response = match field::<u8, A>(&mut seq, 0, "a response kind")? {
                    0 => Response::UpToDate {
                        peers: field(&mut seq, 1, "peers")?,
                    },
                    1 => Response::Changes {
                        changes: envelopes_in(field(&mut seq, 1, "envelopes")?)?,
                        more: field(&mut seq, 2, "more")?,
                        peers: field(&mut seq, 3, "peers")?,
                    },
                    2 => Response::UnknownBase,
                    k => {
                        return Err(de::Error::invalid_value(
                            de::Unexpected::Unsigned(k.into()),
                            &"0, 1 or 2",
                        ));
                    }
                };
                end(&mut seq, "a response")?;
                Ok(response)
            }
        }
        d.deserialize_seq(V)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// An envelope around a real Automerge change (`change` is the value it writes) and a
    /// placeholder signature.
    fn envelope(doc: &str, change: &[u8], sig: u8) -> Vec<u8> {
        use automerge::transaction::Transactable as _;
        let mut d = automerge::AutoCommit::new();
        d.put(
            automerge::ROOT,
            "v",
            automerge::ScalarValue::Bytes(change.to_vec()),
        )
        .expect("put");
        d.commit();
        let bytes = d
            .get_last_local_change()
            .expect("change")
            .raw_bytes()
            .to_vec();
        crate::envelope::SignedChange {
            doc: doc.parse().expect("doc"),
            change: bytes,
            proof: Proof::Signature([sig; 64]),
        }
        .encode()
    }

    #[test]
    fn pages_name_each_run_of_a_document_once_and_rebuild_the_same_envelopes() {
        let changes = vec![
            envelope("park/kz-astana-hub", b"one", 1),
            envelope("park/kz-astana-hub", b"two", 2),
            envelope("federation", b"fed", 3),
            envelope("park/kz-astana-hub", &[7; 300], 4),
            vec![1, 2, 3],
            envelope("park/uz-it-park", b"", 5),
        ];
        let page = Response::Changes {
            changes: changes.clone(),
            more: true,
            peers: Vec::new(),
        };
        let wire = serde_json::to_vec(&page).expect("encodes");
        let back: Response = serde_json::from_slice(&wire).expect("decodes");
        assert_eq!(back, page);
        // Two envelopes of one document in a row cost their document once.
        let two = Response::Changes {
            changes: changes[..2].to_vec(),
            more: false,
            peers: Vec::new(),
        };
        let one = Response::Changes {
            changes: changes[..1].to_vec(),
            more: false,
            peers: Vec::new(),
        };
        let runs = |r: &Response| -> serde_json::Value {
            serde_json::to_value(r).expect("value")[1].clone()
        };
        assert_eq!(runs(&two).as_array().map(Vec::len), Some(1));
        // A run is its document, its packed changes and their signatures; each of these
        // changes is of an actor of its own, so each carries its signature.
        assert_eq!(runs(&one)[0].as_array().map(Vec::len), Some(3));
        assert_eq!(runs(&two)[0].as_array().map(Vec::len), Some(3));
        assert_eq!(runs(&two)[0][2].as_array().map(Vec::len), Some(128));
    }

    #[test]
    fn a_page_of_a_real_ledger_packs_to_a_fraction_and_carries_one_signature_per_actor() {
        use automerge::transaction::Transactable as _;
        let mut d = automerge::AutoCommit::new();
        let doc: DocId = "park/kz-astana-hub".parse().expect("doc");
        let actors = [
            automerge::ActorId::from([1u8; 40]),
            automerge::ActorId::from([2u8; 40]),
        ];
        let mut changes: Vec<SignedChange> = (0..200)
            .map(|i| {
                // Actor 1 writes the first 150, actor 2 the rest but one.
                d.set_actor(actors[usize::from(i >= 150 && i != 199)].clone());
                let rec = d
                    .put_object(automerge::ROOT, format!("s{i}"), automerge::ObjType::Map)
                    .expect("object");
                for (k, v) in [
                    ("name", format!("Startup {i}")),
                    ("country", "KZ".into()),
                    ("sector", "fintech".into()),
                ] {
                    d.put(&rec, k, v).expect("put");
                }
                d.commit();
                let change = d.get_last_local_change().expect("change");
                SignedChange {
                    doc: doc.clone(),
                    change: change.raw_bytes().to_vec(),
                    proof: Proof::Signature([i as u8; 64]),
                }
            })
            .collect();
        // One change is vouched for already: its signature is not there to send.
        let last = Hash(crate::pack::change_hash(&changes[199].change));
        changes[10] = SignedChange::vouched(doc.clone(), changes[10].change.clone(), last);
        let page = Response::Changes {
            changes: changes.iter().map(SignedChange::encode).collect(),
            more: false,
            peers: Vec::new(),
        };
        let mut wire = Vec::new();
        cbor4ii::serde::to_writer(&mut wire, &page).expect("encodes");
        let back: Response = cbor4ii::serde::from_slice(&wire).expect("decodes");
        let Response::Changes { changes: back, .. } = back else {
            panic!("not a page");
        };
        // Actor 1's newest change is the last; actor 2's is the one before it; and the change
        // after the one held as vouched keeps its signature. Every other change comes back
        // vouched for by its actor's next change with one, byte for byte the same change.
        let hash = |i: usize| Hash(crate::pack::change_hash(&changes[i].change));
        for (i, (b, sent)) in back.iter().zip(&changes).enumerate() {
            let b = SignedChange::decode(b, usize::MAX).expect("an envelope");
            assert_eq!(b.change, sent.change);
            let expected = match i {
                11 | 198 | 199 => sent.proof,
                0..=10 => Proof::Vouched(hash(11)),
                150..=197 => Proof::Vouched(hash(198)),
                _ => Proof::Vouched(last),
            };
            assert_eq!(b.proof, expected, "change {i}");
        }
        let whole: usize = changes.iter().map(|c| c.encode().len()).sum();
        assert!(
            wire.len() * 5 < whole,
            "{} B on the wire for {whole} B of envelopes",
            wire.len()
        );
    }

    #[test]
    fn each_branch_of_a_fork_keeps_the_signature_that_vouches_for_it() {
        use automerge::transaction::Transactable as _;
        let doc: DocId = "park/kz-astana-hub".parse().expect("doc");
        let mut a = automerge::AutoCommit::new();
        a.set_actor(automerge::ActorId::from([1u8; 40]));
        let env = |d: &mut automerge::AutoCommit, k: &str, sig: u8| {
            d.put(automerge::ROOT, k, "v").expect("put");
            d.commit();
            let c = d.get_last_local_change().expect("change");
            SignedChange {
                doc: doc.clone(),
                change: c.raw_bytes().to_vec(),
                proof: Proof::Signature([sig; 64]),
            }
        };
        let base = env(&mut a, "base", 1);
        let mut b = a.fork();
        b.set_actor(automerge::ActorId::from([1u8; 40]));
        // Two branches of one actor at seq 2 and 3, each listed in one stretch.
        let a2 = env(&mut a, "a", 2);
        let a3 = env(&mut a, "a3", 3);
        let b2 = env(&mut b, "b", 4);
        let b3 = env(&mut b, "b3", 5);
        let run = [base, a2, a3.clone(), b2, b3.clone()];
        let page = Response::Changes {
            changes: run.iter().map(SignedChange::encode).collect(),
            more: false,
            peers: Vec::new(),
        };
        let wire = serde_json::to_vec(&page).expect("encodes");
        let Response::Changes { changes, .. } = serde_json::from_slice(&wire).expect("decodes")
        else {
            panic!("a page");
        };
        let proofs: Vec<Proof> = changes
            .iter()
            .map(|e| SignedChange::decode(e, usize::MAX).expect("envelope").proof)
            .collect();
        let hash = |e: &SignedChange| Hash(crate::pack::change_hash(&e.change));
        // Branch a's head vouches for the base and a2; branch b's head for b2.
        assert_eq!(
            proofs,
            vec![
                Proof::Vouched(hash(&a3)),
                Proof::Vouched(hash(&a3)),
                a3.proof,
                Proof::Vouched(hash(&b3)),
                b3.proof
            ]
        );
        // Sent again as the receiver holds it, the page is the same.
        let again = Response::Changes {
            changes: changes.clone(),
            more: false,
            peers: Vec::new(),
        };
        assert_eq!(serde_json::to_vec(&again).expect("encodes"), wire);
        // A run that carries a signature the encoder leaves out is refused.
        let mut v: serde_json::Value = serde_json::from_slice(&wire).expect("json");
        let all = run
            .iter()
            .map(|e| crate::pack::Item {
                change: &e.change,
                sig: e.signature(),
            })
            .collect::<Vec<_>>();
        let (packed, sigs) = crate::pack::pack(&all);
        v[1][0][1] = serde_json::json!(packed);
        v[1][0][2] = serde_json::json!(sigs);
        let err = serde_json::from_value::<Response>(v).expect_err("refused");
        assert!(err.to_string().contains("leaves out"), "{err}");
    }

    #[test]
    fn malformed_runs_are_errors() {
        let decode = |v: serde_json::Value| serde_json::from_value::<Response>(v);
        // A run without its document, one that names none.
        assert!(decode(serde_json::json!([1, [[]], false, []])).is_err());
        assert!(
            decode(serde_json::json!([
                1,
                [[[1, 1, 120], [2, 0, 0, 0, 0, 0, 0], []]],
                false,
                []
            ]))
            .is_err()
        );
        let fed: Vec<u8> = b"federation".to_vec();
        // A packed run without its signatures, or with something after them.
        assert!(decode(serde_json::json!([1, [[fed, [0]]], false, []])).is_err());
        assert!(decode(serde_json::json!([1, [[fed, [], [], []]], false, []])).is_err());
        // Packed changes that would inflate past what a page may weigh: refused on what they
        // declare, before inflating.
        let mut bomb = vec![2];
        let mut n = MAX_UNPACKED_BYTES as u64 + 1;
        while n >= 0x80 {
            bomb.push((n as u8) | 0x80);
            n >>= 7;
        }
        bomb.push(n as u8);
        bomb.extend_from_slice(&[0, 0, 0, 0, 0]);
        let err =
            decode(serde_json::json!([1, [[fed, bomb, []]], false, []])).expect_err("refused");
        assert!(err.to_string().contains("inflate to more than"), "{err}");
        // An empty prefix carries whole envelopes, whatever they hold.
        let page = decode(serde_json::json!([1, [[[], [9, 9]]], false, []])).expect("decodes");
        assert_eq!(
            page,
            Response::Changes {
                changes: vec![vec![9, 9]],
                more: false,
                peers: Vec::new()
            }
        );
    }
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

    fn agreed_and_current() -> (Summary, Summary) {
        let agreed = Summary::new(vec![
            head("federation", 1, 3, 9),
            head("federation", 2, 4, 8),
            head("park/kg-htp", 2, 5, 7),
            head("park/uz-it-park", 3, 2, 6),
        ]);
        let current = Summary::new(vec![
            head("federation", 1, 3, 9),
            head("federation", 2, 6, 5),
            head("federation", 4, 1, 1),
            head("park/kg-htp", 2, 5, 7),
            head("park/kz-astana-hub", 4, 1, 2),
            head("park/uz-it-park", 3, 2, 3),
        ]);
        (agreed, current)
    }

    #[test]
    fn a_delta_carries_only_what_moved_and_rebuilds_the_summary() {
        let (agreed, current) = agreed_and_current();
        let d = delta(&agreed, &current).expect("a delta");
        assert_eq!(d.base, agreed.digest);
        assert_eq!(d.digest, current.digest);
        assert_eq!(
            d.changed,
            vec![
                Changed {
                    index: 1,
                    seq: 6,
                    hash: Hash([5; 32])
                },
                Changed {
                    index: 3,
                    seq: 2,
                    hash: Hash([3; 32])
                },
            ],
            "a newer seq, and another hash at the same seq"
        );
        assert_eq!(
            d.added,
            vec![
                head("federation", 4, 1, 1),
                head("park/kz-astana-hub", 4, 1, 2)
            ]
        );
        assert_eq!(resolve(&agreed, &d), Ok(current.clone()));
        // Nothing moved: an empty delta that still rebuilds the whole.
        let same = delta(&current, &current).expect("a delta");
        assert!(same.changed.is_empty() && same.added.is_empty());
        assert_eq!(resolve(&current, &same), Ok(current.clone()));
        // From nothing: every head is added.
        let empty = Summary::new(Vec::new());
        let all = delta(&empty, &current).expect("a delta");
        assert_eq!(all.added, current.heads);
        assert_eq!(resolve(&empty, &all), Ok(current));
    }

    #[test]
    fn a_head_gone_from_the_current_summary_makes_no_delta() {
        let (agreed, current) = agreed_and_current();
        let mut heads = current.heads.clone();
        heads.retain(|h| h.doc.to_string() != "park/kg-htp");
        assert_eq!(delta(&agreed, &Summary::new(heads)), None);
        let mut last_gone = agreed.heads.clone();
        last_gone.pop();
        assert_eq!(delta(&agreed, &Summary::new(last_gone)), None);
        // Unsorted or repeated heads are not a summary this node made: send it whole.
        let mut unsorted = current.clone();
        unsorted.heads.swap(0, 2);
        assert_eq!(delta(&agreed, &unsorted), None);
        let mut twice = current.clone();
        twice.heads.insert(1, twice.heads[0].clone());
        assert_eq!(delta(&agreed, &twice), None);
    }

    #[test]
    fn a_delta_against_another_base_or_digest_is_refused() {
        let (agreed, current) = agreed_and_current();
        let d = delta(&agreed, &current).expect("a delta");
        // The responder holds another summary under the digest it looked up.
        assert_eq!(resolve(&current, &d), Err(DeltaError::OtherBase));
        let mut wrong = d.clone();
        wrong.digest = Hash([0xaa; 32]);
        assert_eq!(resolve(&agreed, &wrong), Err(DeltaError::DigestMismatch));
        let mut wrong = d.clone();
        wrong.changed[0].hash = Hash([0xbb; 32]);
        assert_eq!(resolve(&agreed, &wrong), Err(DeltaError::DigestMismatch));
        // A responder that never agreed on the base does not hold it.
        let mut cache = SummaryCache::default();
        assert!(cache.get(&d.base).is_none());
        cache.insert(Arc::new(agreed.clone()));
        let base = cache.get(&d.base).expect("cached");
        assert_eq!(resolve(&base, &d), Ok(current));
    }

    #[test]
    fn hostile_deltas_are_refused_without_panicking() {
        let (agreed, current) = agreed_and_current();
        let d = delta(&agreed, &current).expect("a delta");
        let refused = |f: &dyn Fn(&mut Delta)| {
            let mut bad = d.clone();
            f(&mut bad);
            resolve(&agreed, &bad).expect_err("refused")
        };
        assert_eq!(refused(&|b| b.changed.swap(0, 1)), DeltaError::ChangedOrder);
        assert_eq!(
            refused(&|b| b.changed.push(b.changed[1])),
            DeltaError::ChangedOrder,
            "the same head changed twice"
        );
        assert_eq!(
            refused(&|b| b.changed[1].index = 4),
            DeltaError::IndexOutOfRange
        );
        assert_eq!(
            refused(&|b| b.changed[1].index = u32::MAX),
            DeltaError::IndexOutOfRange
        );
        assert_eq!(refused(&|b| b.added.swap(0, 1)), DeltaError::AddedOrder);
        assert_eq!(
            refused(&|b| b.added.insert(0, b.added[0].clone())),
            DeltaError::AddedOrder,
            "the same head added twice"
        );
        assert_eq!(
            refused(&|b| b.added.insert(0, head("federation", 1, 4, 4))),
            DeltaError::AddedInBase,
            "a head of the base added again"
        );
        assert_eq!(
            refused(&|b| b.added.push(head("park/uz-it-park", 3, 9, 9))),
            DeltaError::AddedInBase,
            "the base's last head added again"
        );
        // Deltas of any shape against any base end in a summary or a refusal.
        let mut rng = Lcg(7);
        for _ in 0..2000 {
            let base = random_summary(&mut rng);
            let bad = Delta {
                base: base.digest,
                digest: Hash([0; 32]),
                changed: (0..rng.below(4))
                    .map(|_| Changed {
                        index: rng.below(8) as u32,
                        seq: rng.below(4),
                        hash: Hash([rng.below(3) as u8; 32]),
                    })
                    .collect(),
                added: (0..rng.below(4)).map(|_| random_head(&mut rng)).collect(),
            };
            if let Ok(s) = resolve(&base, &bad) {
                assert_eq!(s.digest, digest(&s.heads));
            }
        }
    }

    #[test]
    fn deltas_between_random_summaries_rebuild_them() {
        let mut rng = Lcg(11);
        for _ in 0..2000 {
            let agreed = random_summary(&mut rng);
            // Heads only move forward or appear, as on a node; now and then one disappears.
            let mut heads = agreed.heads.clone();
            for h in &mut heads {
                if rng.below(3) == 0 {
                    h.seq += rng.below(3);
                    h.hash = Hash([rng.below(200) as u8; 32]);
                }
            }
            let gone = rng.below(10) == 0 && !heads.is_empty();
            if gone {
                heads.remove(rng.below(heads.len() as u64) as usize);
            }
            heads.extend((0..rng.below(3)).map(|_| random_head(&mut rng)));
            heads.sort_by(|a, b| key(a).cmp(&key(b)));
            heads.dedup_by(|a, b| key(a) == key(b));
            let current = Summary::new(heads);
            match delta(&agreed, &current) {
                Some(d) => assert_eq!(resolve(&agreed, &d), Ok(current)),
                None => assert!(gone, "no delta though no head disappeared"),
            }
        }
    }

    #[test]
    fn the_cache_keeps_the_most_recently_used_within_its_bounds() {
        let s = |n: u8, heads: usize| {
            Arc::new(Summary::new(
                (0..heads)
                    .map(|i| head("federation", i as u8, u64::from(n), n))
                    .collect(),
            ))
        };
        let mut cache = SummaryCache::new(3, 10);
        for n in 1..=3 {
            cache.insert(s(n, 2));
        }
        assert!(cache.get(&s(1, 2).digest).is_some(), "1 is now the newest");
        cache.insert(s(4, 2));
        assert!(cache.get(&s(2, 2).digest).is_none(), "2 was the oldest");
        assert_eq!(cache.len(), 3);
        cache.insert(s(5, 6));
        assert!(cache.get(&s(5, 6).digest).is_some());
        assert!(cache.get(&s(3, 2).digest).is_none(), "over the head budget");
        cache.insert(s(6, 11));
        assert!(
            cache.get(&s(6, 11).digest).is_none(),
            "larger than the budget"
        );
        cache.insert(s(5, 6));
        assert!(cache.len() <= 3 && !cache.is_empty());
    }

    /// A small deterministic generator: the tests need no seed file and no crate.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n.max(1)
        }
    }

    fn random_head(rng: &mut Lcg) -> Head {
        let docs = ["federation", "park/kg-htp", "park/uz-it-park"];
        head(
            docs[rng.below(3) as usize],
            rng.below(4) as u8,
            1 + rng.below(5),
            rng.below(250) as u8,
        )
    }

    fn random_summary(rng: &mut Lcg) -> Summary {
        let mut heads: Vec<Head> = (0..rng.below(8)).map(|_| random_head(rng)).collect();
        heads.sort_by(|a, b| key(a).cmp(&key(b)));
        heads.dedup_by(|a, b| key(a) == key(b));
        Summary::new(heads)
    }
}

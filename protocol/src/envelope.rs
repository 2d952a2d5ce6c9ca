//! The signed change and the bundle: Kervan's two wire encodings.
//!
//! ```text
//! SignedChange v1 = version:u8 (1) | doc_len:u8 | doc:utf8 | change_len:u32be | change | sig:[u8; 64]
//!              v2 = version:u8 (2) | doc_len:u8 | doc:utf8 | change_len:u32be | change | voucher:[u8; 32]
//! Bundle v1       = "KERVANB" 0x01 | federation:[u8; 32] | count:u32be | (len:u32be | SignedChange)*
//! signature       = Ed25519(key, "kervan/change/v1" | federation | doc | change_hash)
//! ```
//!
//! A v2 envelope is a **vouched** change: it has no signature of its own, and names instead
//! its voucher, a later change of the same actor whose signature covers it. A change's hash
//! covers the hashes of its dependencies, so a signed change authenticates every change in its
//! causal past; a sync page therefore carries one signature per actor, over that actor's newest
//! change in the page, and the receiver keeps the others as vouched changes (DESIGN §6). A
//! vouched change is authenticated only together with its voucher and the changes between
//! them ([`crate::vouch`]): alone it proves nothing.
//!
//! Every length is checked against the input and the limits before anything is allocated, and
//! an encoding has exactly one byte string: no trailing bytes, no second form of a length.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::ids::{Actor, DocId, FederationId, Hash};

/// The domain separator of every change signature.
pub const SIGNING_CONTEXT: &[u8] = b"kervan/change/v1";
const VERSION: u8 = 1;
const VERSION_VOUCHED: u8 = 2;
const BUNDLE_MAGIC: &[u8; 8] = b"KERVANB\x01";
/// Bytes of an envelope around its change: version, doc length, doc, change length, signature.
pub const ENVELOPE_OVERHEAD: usize = 1 + 1 + DocId::MAX_LEN + 4 + 64;

/// Why bytes are not a valid envelope or bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated: expected {expected} more bytes, found {found}")]
    Truncated { expected: usize, found: usize },
    #[error("unsupported envelope version {0}, expected 1 or 2")]
    Version(u8),
    #[error("not a Kervan bundle (bad magic bytes)")]
    BundleMagic,
    #[error("too large: {found} bytes, the limit is {limit}")]
    TooLarge { found: usize, limit: usize },
    #[error("bad document id: {0}")]
    Doc(String),
    #[error("{0} trailing bytes after the end")]
    Trailing(usize),
    #[error("bundle claims {0} changes, more than its bytes can hold")]
    Count(u32),
}

/// Why a decoded envelope does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("change bytes do not parse: {0}")]
    Change(String),
    #[error("actor is {0} bytes, expected 40 (device key and store epoch)")]
    Actor(usize),
    #[error("actor's key is not a valid ed25519 public key")]
    Key,
    #[error("signature does not verify for the actor's key over this federation and document")]
    Signature,
    #[error("the change has no signature of its own: it is vouched for by {0}")]
    Vouched(Hash),
}

/// One Automerge change with what proves its author made it.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedChange {
    pub doc: DocId,
    pub change: Vec<u8>,
    pub proof: Proof,
}

/// What proves who made a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// The author's signature over the change (envelope v1).
    Signature([u8; 64]),
    /// No signature of its own: the hash of a later change of the same actor, in the same
    /// document, whose signature covers this one through its dependencies (envelope v2).
    Vouched(Hash),
}

impl std::fmt::Debug for SignedChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedChange")
            .field("doc", &self.doc)
            .field("change_bytes", &self.change.len())
            .field("vouched_by", &self.vouched_by())
            .finish_non_exhaustive()
    }
}

/// Whether encoded envelope bytes are of a vouched change (v2), by their version byte alone.
pub fn is_vouched(envelope: &[u8]) -> bool {
    envelope.first() == Some(&VERSION_VOUCHED)
}

/// The message a device signs for one change.
pub fn signing_message(federation: &FederationId, doc: &DocId, hash: &Hash) -> Vec<u8> {
    let doc = doc.to_string();
    let mut msg = Vec::with_capacity(SIGNING_CONTEXT.len() + 64 + doc.len());
    msg.extend_from_slice(SIGNING_CONTEXT);
    msg.extend_from_slice(&federation.0.0);
    msg.extend_from_slice(doc.as_bytes());
    msg.extend_from_slice(&hash.0);
    msg
}

/// A change that parsed and whose signature verified.
#[derive(Debug, Clone)]
pub struct Verified {
    pub change: automerge::Change,
    pub actor: Actor,
    pub hash: Hash,
}

impl SignedChange {
    /// Signs `change` for `doc` in `federation`. The key must be the actor's: the replica builds
    /// actors from the device key, so a mismatch is a programming error caught by `verify`.
    pub fn sign(
        federation: &FederationId,
        doc: DocId,
        change: &mut automerge::Change,
        key: &SigningKey,
    ) -> Self {
        let hash = Hash::from(change.hash());
        let sig = key.sign(&signing_message(federation, &doc, &hash));
        Self {
            doc,
            // Uncompressed: a node never inflates a peer's bytes before it has judged them.
            change: change.raw_bytes().to_vec(),
            proof: Proof::Signature(sig.to_bytes()),
        }
    }

    /// The same change, vouched for by `voucher` instead of signed.
    pub fn vouched(doc: DocId, change: Vec<u8>, voucher: Hash) -> Self {
        Self {
            doc,
            change,
            proof: Proof::Vouched(voucher),
        }
    }

    /// The change's own signature, if it has one.
    pub fn signature(&self) -> Option<&[u8; 64]> {
        match &self.proof {
            Proof::Signature(s) => Some(s),
            Proof::Vouched(_) => None,
        }
    }

    /// The change's own signature, to tamper with in tests of forgery.
    pub fn signature_mut(&mut self) -> Option<&mut [u8; 64]> {
        match &mut self.proof {
            Proof::Signature(s) => Some(s),
            Proof::Vouched(_) => None,
        }
    }

    /// The voucher of a vouched change.
    pub fn vouched_by(&self) -> Option<Hash> {
        match self.proof {
            Proof::Signature(_) => None,
            Proof::Vouched(h) => Some(h),
        }
    }

    /// Parses the change and checks the signature: the first 32 bytes of the actor are the key
    /// that must have signed it.
    pub fn verify(&self, federation: &FederationId) -> Result<Verified, VerifyError> {
        self.verify_parsed(federation, self.parse()?)
    }

    /// Parses the change bytes, so a node can tell a duplicate by its hash before it spends a
    /// signature check on it.
    pub fn parse(&self) -> Result<automerge::Change, VerifyError> {
        // Byte 8 of an Automerge chunk is its type: 1 is an uncompressed change. A compressed
        // chunk (2) would inflate without bound before any check could refuse it.
        match self.change.get(8) {
            Some(1) => {}
            Some(2) => {
                return Err(VerifyError::Change(
                    "compressed changes are refused; send the uncompressed chunk".into(),
                ));
            }
            _ => return Err(VerifyError::Change("not an Automerge change chunk".into())),
        }
        // Automerge 0.12 panics on some malformed chunks instead of refusing them (found by the
        // `envelope` and `rules_check` fuzz targets): an op counter past u32::MAX panics in
        // `try_from`, a pred naming an actor the change does not list panics in `decode`, which
        // the rules run on every op. A peer's bytes must be refused, not end the node, so both
        // run here and a panic is a refusal. Parsing touches nothing but its input, so nothing
        // is left half-done. This relies on panics unwinding, the default: no Kervan profile
        // sets `panic = "abort"`.
        let bytes = self.change.as_slice();
        let parsed = std::panic::catch_unwind(|| {
            let change = automerge::Change::try_from(bytes).map_err(|e| e.to_string())?;
            // Automerge hashes a change's bytes but keeps only its ops, and writes them back
            // in its own encoding. Bytes that are not that encoding (a run in a column longer
            // than the ops, a wrong checksum) would be saved under another hash, and a document
            // holding the change would no longer load. One change, one encoding.
            if automerge::Change::from(change.decode()).raw_bytes() != bytes {
                return Err(
                    "expected the canonical encoding of the change's ops, found other bytes"
                        .to_owned(),
                );
            }
            Ok(change)
        });
        match parsed {
            Ok(Ok(change)) => Ok(change),
            Ok(Err(why)) => Err(VerifyError::Change(why)),
            Err(_) => Err(VerifyError::Change(
                "automerge cannot read this change (its parser panicked)".into(),
            )),
        }
    }

    /// Checks the signature of a change parsed from this envelope. A vouched change has none:
    /// it is [`VerifyError::Vouched`], to be authenticated with its voucher
    /// ([`crate::vouch`]) and then taken by [`Self::vouched_parsed`].
    pub fn verify_parsed(
        &self,
        federation: &FederationId,
        change: automerge::Change,
    ) -> Result<Verified, VerifyError> {
        let sig = match self.proof {
            Proof::Signature(sig) => sig,
            Proof::Vouched(by) => return Err(VerifyError::Vouched(by)),
        };
        let (actor, hash) = actor_and_hash(&change)?;
        let key = VerifyingKey::from_bytes(&actor.key.0).map_err(|_| VerifyError::Key)?;
        key.verify_strict(
            &signing_message(federation, &self.doc, &hash),
            &Signature::from_bytes(&sig),
        )
        .map_err(|_| VerifyError::Signature)?;
        Ok(Verified {
            change,
            actor,
            hash,
        })
    }

    /// A change parsed from this envelope, once the caller has authenticated it by its voucher
    /// (a signed change may be taken so too: its signature then vouches for nothing more).
    pub fn vouched_parsed(change: automerge::Change) -> Result<Verified, VerifyError> {
        let (actor, hash) = actor_and_hash(&change)?;
        Ok(Verified {
            change,
            actor,
            hash,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let doc = self.doc.to_string();
        let mut out = Vec::with_capacity(1 + 1 + doc.len() + 4 + self.change.len() + 64);
        out.push(match self.proof {
            Proof::Signature(_) => VERSION,
            Proof::Vouched(_) => VERSION_VOUCHED,
        });
        // DocId::MAX_LEN < 256, so the length fits a byte.
        out.push(doc.len() as u8);
        out.extend_from_slice(doc.as_bytes());
        out.extend_from_slice(&(self.change.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.change);
        match &self.proof {
            Proof::Signature(sig) => out.extend_from_slice(sig),
            Proof::Vouched(by) => out.extend_from_slice(&by.0),
        }
        out
    }

    /// Decodes one envelope whose change is at most `max_change` bytes.
    pub fn decode(bytes: &[u8], max_change: usize) -> Result<Self, DecodeError> {
        let limit = max_change.saturating_add(ENVELOPE_OVERHEAD);
        if bytes.len() > limit {
            return Err(DecodeError::TooLarge {
                found: bytes.len(),
                limit,
            });
        }
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != VERSION && version != VERSION_VOUCHED {
            return Err(DecodeError::Version(version));
        }
        let doc_len = usize::from(r.u8()?);
        if doc_len > DocId::MAX_LEN {
            return Err(DecodeError::Doc(format!(
                "{doc_len} bytes, longer than any document id"
            )));
        }
        let doc = std::str::from_utf8(r.take(doc_len)?)
            .map_err(|_| DecodeError::Doc("not UTF-8".into()))?;
        let doc = doc
            .parse::<DocId>()
            .map_err(|e| DecodeError::Doc(e.to_string()))?;
        let change_len = r.u32()? as usize;
        if change_len > max_change {
            return Err(DecodeError::TooLarge {
                found: change_len,
                limit: max_change,
            });
        }
        let change = r.take(change_len)?.to_vec();
        let proof = if version == VERSION {
            let mut sig = [0u8; 64];
            sig.copy_from_slice(r.take(64)?);
            Proof::Signature(sig)
        } else {
            let mut by = [0u8; 32];
            by.copy_from_slice(r.take(32)?);
            Proof::Vouched(Hash(by))
        };
        r.end()?;
        Ok(Self { doc, change, proof })
    }
}

/// A parsed change's actor, which must be a device key and an epoch, and its hash.
fn actor_and_hash(change: &automerge::Change) -> Result<(Actor, Hash), VerifyError> {
    let actor_bytes = change.actor_id().to_bytes();
    let actor = Actor::from_bytes(actor_bytes).ok_or(VerifyError::Actor(actor_bytes.len()))?;
    Ok((actor, Hash::from(change.hash())))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated {
                expected: n,
                found: self.0.len(),
            });
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn end(&self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.0.len()))
        }
    }
}

/// A set of signed changes for offline transfer, backup and the genesis file. Each entry is
/// kept as raw bytes: one malformed envelope is that entry's rejection, not the bundle's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub federation: FederationId,
    pub entries: Vec<Vec<u8>>,
}

impl Bundle {
    pub fn new(federation: FederationId, changes: &[SignedChange]) -> Self {
        Self {
            federation,
            entries: changes.iter().map(SignedChange::encode).collect(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let size: usize = self.entries.iter().map(|e| e.len() + 4).sum();
        let mut out = Vec::with_capacity(8 + 32 + 4 + size);
        out.extend_from_slice(BUNDLE_MAGIC);
        out.extend_from_slice(&self.federation.0.0);
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for e in &self.entries {
            out.extend_from_slice(&(e.len() as u32).to_be_bytes());
            out.extend_from_slice(e);
        }
        out
    }

    /// Decodes a bundle of at most `max_bytes` whose entries are at most `max_entry` bytes.
    pub fn decode(bytes: &[u8], max_bytes: usize, max_entry: usize) -> Result<Self, DecodeError> {
        if bytes.len() > max_bytes {
            return Err(DecodeError::TooLarge {
                found: bytes.len(),
                limit: max_bytes,
            });
        }
        let mut r = Reader(bytes);
        if r.take(8).map_err(|_| DecodeError::BundleMagic)? != BUNDLE_MAGIC {
            return Err(DecodeError::BundleMagic);
        }
        let mut fid = [0u8; 32];
        fid.copy_from_slice(r.take(32)?);
        let count = r.u32()?;
        // Each entry takes at least its 4-byte length: refuse a count the bytes cannot hold
        // before reserving room for it.
        if count as usize > r.0.len() / 4 {
            return Err(DecodeError::Count(count));
        }
        let mut entries = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let len = r.u32()? as usize;
            if len > max_entry {
                return Err(DecodeError::TooLarge {
                    found: len,
                    limit: max_entry,
                });
            }
            entries.push(r.take(len)?.to_vec());
        }
        r.end()?;
        Ok(Self {
            federation: FederationId(Hash(fid)),
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vouched_envelope_round_trips_and_proves_nothing_alone() {
        let k = key(3);
        let mut change = fixed_change(&k);
        let signed = SignedChange::sign(&federation(), DocId::Federation, &mut change, &k);
        let voucher = Hash([9; 32]);
        let vouched = SignedChange::vouched(DocId::Federation, signed.change.clone(), voucher);
        let bytes = vouched.encode();
        assert!(is_vouched(&bytes) && !is_vouched(&signed.encode()));
        // The voucher's 32 bytes stand where the signature's 64 would.
        assert_eq!(bytes.len() + 32, signed.encode().len());
        let back = SignedChange::decode(&bytes, MAX).expect("decodes");
        assert_eq!(back, vouched);
        assert_eq!((back.vouched_by(), back.signature()), (Some(voucher), None));
        assert_eq!(
            back.verify(&federation()).err(),
            Some(VerifyError::Vouched(voucher))
        );
        let parsed = back.parse().expect("parses");
        let taken = SignedChange::vouched_parsed(parsed).expect("a 40-byte actor");
        assert_eq!(taken.hash, Hash::from(change.hash()));
        for cut in 0..bytes.len() {
            assert!(SignedChange::decode(&bytes[..cut], MAX).is_err(), "{cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            SignedChange::decode(&longer, MAX).err(),
            Some(DecodeError::Trailing(1))
        );
        let mut other = bytes;
        other[0] = 3;
        assert_eq!(
            SignedChange::decode(&other, MAX).err(),
            Some(DecodeError::Version(3))
        );
    }
    use automerge::transaction::{CommitOptions, Transactable};

    const MAX: usize = 1 << 20;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    /// A change that is the same bytes on every run: fixed actor, fixed time.
    fn fixed_change(key: &SigningKey) -> automerge::Change {
        let actor = Actor {
            key: crate::ids::DeviceKey(key.verifying_key().to_bytes()),
            epoch: [1, 2, 3, 4, 5, 6, 7, 8],
        };
        let mut doc = automerge::AutoCommit::new().with_actor(actor.to_automerge());
        doc.put(automerge::ROOT, "name", "Kervan")
            .expect("put on root");
        doc.commit_with(CommitOptions::default().with_time(1_767_225_600));
        doc.get_last_local_change().expect("just committed")
    }

    fn federation() -> FederationId {
        FederationId(Hash([9; 32]))
    }

    #[test]
    fn signed_change_round_trips_and_verifies() {
        let k = key(7);
        let mut change = fixed_change(&k);
        let signed = SignedChange::sign(&federation(), DocId::Federation, &mut change, &k);
        let decoded = SignedChange::decode(&signed.encode(), MAX).expect("decodes");
        assert_eq!(decoded, signed);
        let verified = decoded.verify(&federation()).expect("verifies");
        assert_eq!(verified.actor.key.0, k.verifying_key().to_bytes());
        assert_eq!(verified.hash, Hash::from(change.hash()));
    }

    #[test]
    fn signature_is_bound_to_federation_and_document() {
        let k = key(7);
        let mut change = fixed_change(&k);
        let signed = SignedChange::sign(&federation(), DocId::Federation, &mut change, &k);
        let other_fed = FederationId(Hash([8; 32]));
        assert_eq!(
            signed.verify(&other_fed).err(),
            Some(VerifyError::Signature)
        );
        let mut moved = signed.clone();
        moved.doc = "park/kg-htp".parse().expect("doc id");
        assert_eq!(
            moved.verify(&federation()).err(),
            Some(VerifyError::Signature)
        );
        let mut forged = signed;
        if let Proof::Signature(s) = &mut forged.proof {
            s[0] ^= 1;
        }
        assert_eq!(
            forged.verify(&federation()).err(),
            Some(VerifyError::Signature)
        );
    }

    #[test]
    fn decoding_rejects_every_truncation_and_trailing_bytes() {
        let k = key(7);
        let mut change = fixed_change(&k);
        let bytes = SignedChange::sign(&federation(), DocId::Federation, &mut change, &k).encode();
        for n in 0..bytes.len() {
            assert!(
                matches!(
                    SignedChange::decode(&bytes[..n], MAX),
                    Err(DecodeError::Truncated { .. })
                ),
                "prefix of {n} bytes"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            SignedChange::decode(&long, MAX),
            Err(DecodeError::Trailing(1))
        );
        assert!(matches!(
            SignedChange::decode(&bytes, 10),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocating() {
        // A 4 GiB change length in a 100-byte input must fail on the length, not on memory.
        let mut bytes = vec![1u8, 10];
        bytes.extend_from_slice(b"federation");
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        bytes.extend_from_slice(&[0; 64]);
        assert!(matches!(
            SignedChange::decode(&bytes, MAX),
            Err(DecodeError::TooLarge { .. })
        ));
        let mut bundle = BUNDLE_MAGIC.to_vec();
        bundle.extend_from_slice(&[0; 32]);
        bundle.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            Bundle::decode(&bundle, MAX, MAX),
            Err(DecodeError::Count(u32::MAX))
        );
    }

    #[test]
    fn bundles_round_trip_and_reject_bad_framing() {
        let k = key(7);
        let mut change = fixed_change(&k);
        let signed = SignedChange::sign(&federation(), DocId::Federation, &mut change, &k);
        let bundle = Bundle::new(federation(), &[signed.clone(), signed]);
        let bytes = bundle.encode();
        assert_eq!(Bundle::decode(&bytes, MAX, MAX), Ok(bundle));
        assert_eq!(
            Bundle::decode(b"not a bundle at all, certainly", MAX, MAX),
            Err(DecodeError::BundleMagic)
        );
        assert!(matches!(
            Bundle::decode(&bytes[..bytes.len() - 1], MAX, MAX),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            Bundle::decode(&bytes, 100, MAX),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    /// The golden vector's change (a put of `name` at the root), with its column list and the
    /// columns' data as given: the regression tests edit them as the fuzz targets found them
    /// (`fuzz/regressions/`).
    fn golden_change_with(columns: &str, data: &str) -> Vec<u8> {
        // deps, actor, seq, start_op, time, message, other actors; then the column list and
        // the columns' data.
        let mut body = hex::decode(concat!(
            "0028ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c",
            "0102030405060708010180f2d6ca060000",
        ))
        .expect("hex");
        body.extend(hex::decode(columns).expect("hex"));
        body.extend(hex::decode(data).expect("hex"));
        let mut chunk = hex::decode("856f4a8348709f2d01").expect("hex");
        let len = u8::try_from(body.len()).ok().filter(|l| *l < 0x80);
        chunk.push(len.expect("a length that fits one LEB128 byte"));
        chunk.extend(body);
        chunk
    }

    /// Asserts that `parse` refuses the change bytes.
    fn refuses_unreadable(change: Vec<u8>) {
        let envelope = SignedChange {
            doc: DocId::Federation,
            change,
            proof: Proof::Signature([0; 64]),
        };
        assert!(
            matches!(envelope.parse(), Err(VerifyError::Change(_))),
            "a change Automerge cannot read is refused"
        );
    }

    #[test]
    fn refuses_a_change_with_an_op_counter_past_u32() {
        // An op on the object (2^32, actor 0): obj actor and obj counter columns added.
        refuses_unreadable(golden_change_with(
            "0801020206150634014202560257067002",
            "7f007f80808080107f046e616d65017f017f664b657276616e7f00",
        ));
    }

    #[test]
    fn refuses_a_change_whose_pred_names_an_unlisted_actor() {
        // The put gets one pred, (1, actor 5), in a change that lists one actor.
        refuses_unreadable(golden_change_with(
            "0815063401420256025706700271027302",
            "7f046e616d65017f017f664b657276616e7f017f057f01",
        ));
    }

    #[test]
    fn refuses_a_change_that_is_not_the_canonical_encoding_of_its_ops() {
        // The golden change parses and round-trips; the same op with a pred-count run of two
        // (one op, so one value is left over) parses too, but Automerge would re-encode it
        // under another hash, and save a document it cannot load.
        let canonical = golden_change_with(
            "06150634014202560257067002",
            "7f046e616d65017f017f664b657276616e7f00",
        );
        let long_run = with_valid_checksum(golden_change_with(
            "06150634014202560257067002",
            "7f046e616d65017f017f664b657276616e0200",
        ));
        let envelope = |change| SignedChange {
            doc: DocId::Federation,
            change,
            proof: Proof::Signature([0; 64]),
        };
        assert!(envelope(canonical.clone()).parse().is_ok());
        assert!(matches!(
            envelope(long_run).parse(),
            Err(VerifyError::Change(_))
        ));
        let mut bad_checksum = canonical;
        bad_checksum[4] ^= 1;
        refuses_unreadable(bad_checksum);
    }

    /// Writes the checksum Automerge expects (the first bytes of the change's hash), so only
    /// the edit under test makes the change wrong.
    fn with_valid_checksum(mut chunk: Vec<u8>) -> Vec<u8> {
        let hash = automerge::Change::try_from(chunk.as_slice())
            .expect("the edited change parses")
            .hash();
        chunk[4..8].copy_from_slice(&hash.0[..4]);
        chunk
    }

    /// The checked-in vectors pin the wire format: a change of this version must keep its bytes,
    /// its hash and its signature. Regenerate with `KERVAN_BLESS=1` only for a new version.
    #[test]
    fn golden_vectors_match() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/envelope-v1.json");
        let k = key(7);
        let mut change = fixed_change(&k);
        let signed = SignedChange::sign(&federation(), DocId::Federation, &mut change, &k);
        let current = serde_json::json!({
            "signing_key_seed": hex::encode([7u8; 32]),
            "federation": federation().to_string(),
            "doc": "federation",
            "change_hash": Hash::from(change.hash()).to_string(),
            "envelope": hex::encode(signed.encode()),
        });
        if std::env::var_os("KERVAN_BLESS").is_some() {
            let text = serde_json::to_string_pretty(&current).expect("json");
            std::fs::write(path, text + "\n").expect("write golden vectors");
        }
        let text = std::fs::read_to_string(path).expect("golden vectors are checked in");
        let golden: serde_json::Value = serde_json::from_str(&text).expect("valid json");
        assert_eq!(golden, current, "the v1 wire format changed");
        let bytes = hex::decode(golden["envelope"].as_str().expect("hex")).expect("hex");
        let decoded = SignedChange::decode(&bytes, MAX).expect("golden envelope decodes");
        let verified = decoded
            .verify(&federation())
            .expect("golden envelope verifies");
        assert_eq!(verified.hash.to_string(), golden["change_hash"]);
    }
}

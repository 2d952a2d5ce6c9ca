//! The validation rules: `check(change, context) -> Verdict`, the same on every node.
//!
//! A verdict may depend only on the change and on facts every correct node eventually holds
//! identically: the change's causal past (which must be present before anything else is
//! judged), monotonic registrations of parks and devices, and equivocation evidence. Never on
//! arrival order, the local clock or who relayed the change.
//!
//! The checks, cheapest first (DESIGN §5):
//! 1. sizes of the envelope, the change, its ops and its strings;
//! 2. decoding, the 40-byte actor, the signature over this federation and document; a second
//!    change in a slot (doc, actor, seq) already held by another is equivocation, and an actor
//!    frozen by equivocation writes nothing more in that document;
//! 3. the document exists;
//! 4. the actor's key is a registered device of the document's owner;
//! 5. causality: every dep accepted, `seq` one past the actor's previous change, `start_op`
//!    one past the highest op in the causal past;
//! 6. (with 2) nothing is built on a change excluded by equivocation;
//! 7. every op writes a path the schema allows, with a value of the field's kind, and in the
//!    federation document only under `parks/<P>/` of the device's own park.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use automerge::legacy::{Key, ObjectId, OpType};
use automerge::{ObjType, ScalarValue};
use serde::{Deserialize, Serialize};

use crate::envelope::{DecodeError, SignedChange, Verified};
use crate::ids::{Actor, DeviceKey, DocId, FederationId, Hash, ParkId, RecordId};
use crate::records::{self, Field, Kind, Scalar};

/// Size limits on every change. They are part of the protocol, not of a node's config: a node
/// with other limits would judge the same change differently. The defaults fit a record of the
/// largest allowed size with room to spare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Bytes of one Automerge change. Default 60 KiB, so an envelope fits a 64 KiB message.
    pub max_change_bytes: usize,
    /// Ops in one change. Default 4096.
    pub max_ops: usize,
    /// Bytes of one string value or map key. Default 16 KiB.
    pub max_string_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_change_bytes: 60 * 1024,
            max_ops: 4096,
            max_string_bytes: 16 * 1024,
        }
    }
}

/// The causal facts of an accepted change that later checks need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CausalInfo {
    pub actor: Actor,
    pub seq: u64,
    /// For every actor in the causal past (this change included), its highest seq there.
    pub clock: BTreeMap<Actor, u64>,
    /// The highest op counter in the causal past, this change's ops included.
    pub past_max_op: u64,
}

/// An Automerge object, named as its ops name it: the id of the op that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjKey {
    pub counter: u64,
    pub actor: Actor,
}

/// Where an object sits and which change made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub path: Vec<String>,
    pub made_by: (Actor, u64),
}

/// What a node knows that a verdict may depend on.
pub trait Context {
    fn federation(&self) -> FederationId;
    fn limits(&self) -> Limits;
    /// The park is registered in the federation document.
    fn park_exists(&self, park: &ParkId) -> bool;
    /// The key is a registered device of the park.
    fn is_device(&self, park: &ParkId, key: &DeviceKey) -> bool;
    /// The key is a registered device of some park.
    fn is_any_device(&self, key: &DeviceKey) -> bool;
    /// The actor (device key and store epoch) that starts the park's ledger: the genesis
    /// names it, so a ledger has exactly one possible root.
    fn root_actor(&self, park: &ParkId) -> Option<Actor>;
    /// The device is registered for two parks (it signed proofs of possession for both): it
    /// is frozen everywhere.
    fn device_frozen(&self, key: &DeviceKey) -> bool;
    /// An accepted change of the document.
    fn accepted(&self, doc: &DocId, hash: &Hash) -> Option<&CausalInfo>;
    /// A change excluded by equivocation: frozen, or built on a frozen change.
    fn excluded(&self, doc: &DocId, hash: &Hash) -> bool;
    /// A change that passed its signature check and was then refused for good.
    fn rejected(&self, doc: &DocId, hash: &Hash) -> bool;
    /// The verified change that holds the slot (doc, actor, seq), if any.
    fn slot(&self, doc: &DocId, actor: &Actor, seq: u64) -> Option<Hash>;
    /// The seq from which the actor is frozen in the document.
    fn frozen_from(&self, doc: &DocId, actor: &Actor) -> Option<u64>;
    /// An object made by an accepted change of the document.
    fn object(&self, doc: &DocId, key: &ObjKey) -> Option<&ObjectInfo>;
}

/// A fact the federation document registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Registration {
    Park(ParkId),
    Device(ParkId, DeviceKey),
    RootActor(ParkId, Actor),
}

/// A record a change wrote: the query index re-reads it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Touched {
    Record {
        collection: &'static str,
        id: RecordId,
    },
    Park(ParkId),
}

/// An accepted change and what accepting it adds to the node's knowledge.
#[derive(Debug, Clone)]
pub struct Checked {
    pub doc: DocId,
    pub hash: Hash,
    pub change: automerge::Change,
    pub info: CausalInfo,
    pub objects: Vec<(ObjKey, ObjectInfo)>,
    pub registrations: Vec<Registration>,
    pub touched: Vec<Touched>,
}

/// Why a change waits. A pending change is kept (in a bounded queue) and checked again when
/// what it waits for arrives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PendingReason {
    MissingDeps(Vec<Hash>),
    UnknownPark(ParkId),
    UnknownDevice(DeviceKey),
}

impl fmt::Display for PendingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PendingReason::MissingDeps(deps) => write!(
                f,
                "waiting for {} missing dependencies (first {})",
                deps.len(),
                deps.first().map(|h| h.to_string()).unwrap_or_default()
            ),
            PendingReason::UnknownPark(p) => write!(f, "waiting for park {p} to be registered"),
            PendingReason::UnknownDevice(k) => {
                write!(f, "waiting for device {k} to be registered")
            }
        }
    }
}

/// Why a change is refused for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum RejectReason {
    #[error("malformed envelope: {message}")]
    Malformed { message: String },
    #[error("change is {found} bytes, the limit is {limit}")]
    TooLarge { found: usize, limit: usize },
    #[error("change has {found} ops, the limit is {limit}")]
    TooManyOps { found: usize, limit: usize },
    #[error("change does not parse: {message}")]
    BadChange { message: String },
    #[error("actor is {found} bytes, expected 40 (device key and store epoch)")]
    BadActor { found: usize },
    #[error("signature does not verify for the actor's key over this federation and document")]
    BadSignature,
    #[error("{}", unvouched(voucher))]
    Unvouched { voucher: Hash },
    #[error("equivocation: another change {other} holds the same actor and seq {seq}")]
    Equivocation { other: Hash, seq: u64 },
    #[error("actor is frozen in this document from seq {from} after equivocation")]
    Frozen { from: u64 },
    #[error("built on {dep}, a change excluded by equivocation")]
    BuiltOnEquivocation { dep: Hash },
    #[error("built on {dep}, a rejected change")]
    BuiltOnRejected { dep: Hash },
    #[error("device {key} is registered for two parks and frozen")]
    DeviceFrozen { key: DeviceKey },
    #[error("op {op} names a predecessor {pred} outside the change's causal past")]
    BadPred { op: u64, pred: String },
    #[error("a document has one root: {why}")]
    SecondRoot { why: String },
    #[error("seq {found} does not follow the actor's previous change (expected {expected})")]
    SeqGap { expected: u64, found: u64 },
    #[error("counter inflation: start_op {found}, expected {expected}")]
    CounterInflation { expected: u64, found: u64 },
    #[error("writes {path}, which belongs to park {owner}")]
    WritesAnotherPark { path: String, owner: ParkId },
    #[error("writes {path}: {why}")]
    PathNotAllowed { path: String, why: String },
    #[error("writes {path}: {message}")]
    InvalidValue { path: String, message: String },
    #[error("references object {object} outside the change's causal past")]
    UnknownObject { object: String },
}

fn unvouched(voucher: &Hash) -> String {
    if voucher.0 == [0; 32] {
        "no signature of its own, and no later signed change of its actor came with it".into()
    } else {
        format!(
            "no signature of its own, and its voucher {voucher} is not a signed later change of \
             its actor, sent with it, that has it in its causal past"
        )
    }
}

impl RejectReason {
    /// A stable code for metrics and the API.
    pub fn code(&self) -> &'static str {
        match self {
            RejectReason::Malformed { .. } => "malformed",
            RejectReason::TooLarge { .. } => "too_large",
            RejectReason::TooManyOps { .. } => "too_many_ops",
            RejectReason::BadChange { .. } => "bad_change",
            RejectReason::BadActor { .. } => "bad_actor",
            RejectReason::BadSignature => "bad_signature",
            RejectReason::Unvouched { .. } => "unvouched",
            RejectReason::Equivocation { .. } => "equivocation",
            RejectReason::Frozen { .. } => "frozen",
            RejectReason::BuiltOnEquivocation { .. } => "built_on_equivocation",
            RejectReason::BuiltOnRejected { .. } => "built_on_rejected",
            RejectReason::DeviceFrozen { .. } => "device_frozen",
            RejectReason::BadPred { .. } => "bad_pred",
            RejectReason::SecondRoot { .. } => "second_root",
            RejectReason::SeqGap { .. } => "seq_gap",
            RejectReason::CounterInflation { .. } => "counter_inflation",
            RejectReason::WritesAnotherPark { .. } => "writes_another_park",
            RejectReason::PathNotAllowed { .. } => "path_not_allowed",
            RejectReason::InvalidValue { .. } => "invalid_value",
            RejectReason::UnknownObject { .. } => "unknown_object",
        }
    }

    /// Whether the reason is the sender's fault. Exclusion by equivocation is not: an honest
    /// relay may have forwarded the change before the evidence reached it.
    pub fn penalises_sender(&self) -> bool {
        !matches!(
            self,
            RejectReason::Equivocation { .. }
                | RejectReason::Frozen { .. }
                | RejectReason::BuiltOnEquivocation { .. }
                | RejectReason::DeviceFrozen { .. }
        )
    }
}

impl From<DecodeError> for RejectReason {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::TooLarge { found, limit } => RejectReason::TooLarge { found, limit },
            other => RejectReason::Malformed {
                message: other.to_string(),
            },
        }
    }
}

/// The outcome of checking one change.
#[derive(Debug, Clone)]
pub enum Verdict {
    Accept(Box<Checked>),
    Pending(PendingReason),
    Reject(RejectReason),
}

/// Checks steps 1 and 2 of one envelope: sizes, decoding and the signature. The replica runs
/// this once per change it receives and keeps the result while the change is pending.
pub fn verify(change: &SignedChange, ctx: &dyn Context) -> Result<Verified, RejectReason> {
    let parsed = change.parse().map_err(verify_error)?;
    verify_parsed(change, parsed, ctx)
}

/// [`verify`] for a change already parsed from the envelope.
pub fn verify_parsed(
    change: &SignedChange,
    parsed: automerge::Change,
    ctx: &dyn Context,
) -> Result<Verified, RejectReason> {
    verify_signed(change, parsed, &ctx.federation(), ctx.limits())
}

/// [`verify_parsed`] with the only two facts it needs from the context: a pure function of
/// its arguments, so the envelopes of a page can be verified on every core at once.
pub fn verify_signed(
    change: &SignedChange,
    parsed: automerge::Change,
    federation: &FederationId,
    limits: Limits,
) -> Result<Verified, RejectReason> {
    within_bytes(change, &parsed, limits)?;
    let verified = change
        .verify_parsed(federation, parsed)
        .map_err(verify_error)?;
    within_ops(verified, limits)
}

/// [`verify_signed`] for a vouched change the caller has authenticated by its voucher
/// ([`crate::vouch`]): every check but the signature's.
pub fn verify_vouched(
    change: &SignedChange,
    parsed: automerge::Change,
    limits: Limits,
) -> Result<Verified, RejectReason> {
    within_bytes(change, &parsed, limits)?;
    let verified = SignedChange::vouched_parsed(parsed).map_err(verify_error)?;
    within_ops(verified, limits)
}

fn within_bytes(
    change: &SignedChange,
    parsed: &automerge::Change,
    limits: Limits,
) -> Result<(), RejectReason> {
    if change.change.len() > limits.max_change_bytes {
        return Err(RejectReason::TooLarge {
            found: change.change.len(),
            limit: limits.max_change_bytes,
        });
    }
    if !parsed.extra_bytes().is_empty() {
        return Err(RejectReason::BadChange {
            message: "extra bytes (an author footer) are not part of the protocol".into(),
        });
    }
    Ok(())
}

fn within_ops(verified: Verified, limits: Limits) -> Result<Verified, RejectReason> {
    if verified.change.len() > limits.max_ops {
        return Err(RejectReason::TooManyOps {
            found: verified.change.len(),
            limit: limits.max_ops,
        });
    }
    Ok(verified)
}

fn verify_error(e: crate::envelope::VerifyError) -> RejectReason {
    match e {
        crate::envelope::VerifyError::Change(message) => RejectReason::BadChange { message },
        crate::envelope::VerifyError::Actor(found) => RejectReason::BadActor { found },
        crate::envelope::VerifyError::Key | crate::envelope::VerifyError::Signature => {
            RejectReason::BadSignature
        }
        crate::envelope::VerifyError::Vouched(voucher) => RejectReason::Unvouched { voucher },
    }
}

/// Checks one envelope from scratch.
pub fn check(change: &SignedChange, ctx: &dyn Context) -> Verdict {
    match verify(change, ctx) {
        Ok(v) => check_verified(&change.doc, v, ctx),
        Err(reason) => Verdict::Reject(reason),
    }
}

/// Checks steps 2 (equivocation) to 7 of a change whose envelope already verified.
pub fn check_verified(doc: &DocId, v: Verified, ctx: &dyn Context) -> Verdict {
    match judge(doc, &v, ctx) {
        Ok((info, walk)) => Verdict::Accept(Box::new(Checked {
            doc: doc.clone(),
            hash: v.hash,
            change: v.change,
            info,
            objects: walk.objects,
            registrations: walk.registrations,
            touched: walk.touched,
        })),
        Err(Outcome::Pending(p)) => Verdict::Pending(p),
        Err(Outcome::Reject(r)) => Verdict::Reject(r),
    }
}

enum Outcome {
    Pending(PendingReason),
    Reject(RejectReason),
}

impl From<RejectReason> for Outcome {
    fn from(r: RejectReason) -> Self {
        Outcome::Reject(r)
    }
}

fn judge(doc: &DocId, v: &Verified, ctx: &dyn Context) -> Result<(CausalInfo, Walk), Outcome> {
    let change = &v.change;
    let actor = v.actor;
    let seq = change.seq();

    // 2. equivocation: one slot, one change.
    if let Some(other) = ctx.slot(doc, &actor, seq).filter(|h| *h != v.hash) {
        return Err(RejectReason::Equivocation { other, seq }.into());
    }
    if let Some(from) = ctx.frozen_from(doc, &actor).filter(|from| seq >= *from) {
        return Err(RejectReason::Frozen { from }.into());
    }
    if ctx.device_frozen(&actor.key) {
        return Err(RejectReason::DeviceFrozen { key: actor.key }.into());
    }

    // The genesis is the federation's root: pinned by its hash in every config, so it is
    // trusted as a whole and only walked for what it registers.
    let genesis = *doc == DocId::Federation && v.hash == ctx.federation().0;
    if genesis {
        let info = CausalInfo {
            actor,
            seq,
            clock: BTreeMap::from([(actor, seq)]),
            past_max_op: change.max_op(),
        };
        let walk = walk_ops(doc, v, &info.clock, ctx, true)?;
        return Ok((info, walk));
    }

    // 3. the document exists.
    if let DocId::Ledger(park) = doc
        && !ctx.park_exists(park)
    {
        return Err(Outcome::Pending(PendingReason::UnknownPark(park.clone())));
    }

    // 4. a registered device of the owner (in the federation document, of some park: step 7
    // holds every path to the device's own park).
    // A key registered for another park is not unknown: it writes where it may not.
    match doc {
        DocId::Ledger(park)
            if !ctx.is_device(park, &actor.key) && ctx.is_any_device(&actor.key) =>
        {
            return Err(RejectReason::WritesAnotherPark {
                path: doc.to_string(),
                owner: park.clone(),
            }
            .into());
        }
        DocId::Ledger(park) if !ctx.is_device(park, &actor.key) => {
            return Err(Outcome::Pending(PendingReason::UnknownDevice(actor.key)));
        }
        DocId::Federation if !ctx.is_any_device(&actor.key) => {
            return Err(Outcome::Pending(PendingReason::UnknownDevice(actor.key)));
        }
        _ => {}
    }

    // 5. causality.
    if change.deps().is_empty() {
        let root_actor = doc.park().and_then(|p| ctx.root_actor(p));
        let why = match doc {
            DocId::Federation => Some("only the genesis starts the federation document".into()),
            DocId::Ledger(park) if root_actor != Some(actor) => Some(format!(
                "only the root actor of {park} named in the genesis starts its ledger"
            )),
            DocId::Ledger(_) if seq != 1 => Some(format!("a change with seq {seq} has no deps")),
            DocId::Ledger(_) => None,
        };
        if let Some(why) = why {
            return Err(RejectReason::SecondRoot { why }.into());
        }
    }
    let mut clock: BTreeMap<Actor, u64> = BTreeMap::new();
    let mut past_max_op = 0;
    let mut missing = Vec::new();
    for dep in change.deps() {
        let dep = Hash::from(*dep);
        if ctx.excluded(doc, &dep) {
            return Err(RejectReason::BuiltOnEquivocation { dep }.into());
        }
        if ctx.rejected(doc, &dep) {
            return Err(RejectReason::BuiltOnRejected { dep }.into());
        }
        match ctx.accepted(doc, &dep) {
            Some(info) => {
                for (a, s) in &info.clock {
                    let e = clock.entry(*a).or_insert(0);
                    *e = (*e).max(*s);
                }
                past_max_op = past_max_op.max(info.past_max_op);
            }
            None => missing.push(dep),
        }
    }
    if !missing.is_empty() {
        return Err(Outcome::Pending(PendingReason::MissingDeps(missing)));
    }
    let previous = clock.get(&actor).copied().unwrap_or(0);
    if seq != previous + 1 {
        return Err(RejectReason::SeqGap {
            expected: previous + 1,
            found: seq,
        }
        .into());
    }
    let start_op = change.start_op().get();
    if start_op != past_max_op + 1 {
        return Err(RejectReason::CounterInflation {
            expected: past_max_op + 1,
            found: start_op,
        }
        .into());
    }
    clock.insert(actor, seq);
    let info = CausalInfo {
        actor,
        seq,
        clock,
        past_max_op: past_max_op.max(change.max_op()),
    };

    // 7. the schema.
    let walk = walk_ops(doc, v, &info.clock, ctx, false)?;
    Ok((info, walk))
}

#[derive(Default)]
struct Walk {
    objects: Vec<(ObjKey, ObjectInfo)>,
    registrations: Vec<Registration>,
    touched: Vec<Touched>,
    /// Proofs of possession written in this change: (park, device) and the signature.
    proofs: Vec<((ParkId, DeviceKey), String)>,
}

fn walk_ops(
    doc: &DocId,
    v: &Verified,
    clock: &BTreeMap<Actor, u64>,
    ctx: &dyn Context,
    genesis: bool,
) -> Result<Walk, RejectReason> {
    let limits = ctx.limits();
    let expanded = v.change.decode();
    let mut walk = Walk::default();
    let mut local: HashMap<ObjKey, usize> = HashMap::new();
    let start = v.change.start_op().get();
    let seq = v.change.seq();
    for (i, op) in expanded.operations.iter().enumerate() {
        let parent: Vec<String> = match &op.obj {
            ObjectId::Root => Vec::new(),
            ObjectId::Id(opid) => {
                let key = Actor::from_bytes(opid.1.to_bytes()).map(|actor| ObjKey {
                    counter: opid.0,
                    actor,
                });
                let unknown = || RejectReason::UnknownObject {
                    object: format!("{}@{}", opid.0, opid.1),
                };
                let key = key.ok_or_else(unknown)?;
                if let Some(idx) = local.get(&key) {
                    walk.objects[*idx].1.path.clone()
                } else {
                    let info = ctx.object(doc, &key).ok_or_else(unknown)?;
                    // The object must come from the change's causal past, or its path would
                    // depend on which concurrent changes a node happens to hold.
                    let (maker, maker_seq) = info.made_by;
                    if clock.get(&maker).copied().unwrap_or(0) < maker_seq {
                        return Err(unknown());
                    }
                    info.path.clone()
                }
            }
        };
        let key = match &op.key {
            Key::Map(k) => k.to_string(),
            Key::Seq(_) => {
                return Err(RejectReason::PathNotAllowed {
                    path: show(&parent, "[]"),
                    why: "the registry holds no lists or text, only maps".into(),
                });
            }
        };
        if key.len() > limits.max_string_bytes.min(256) {
            let cut: String = key.chars().take(32).collect();
            return Err(RejectReason::PathNotAllowed {
                path: show(&parent, &format!("{cut}…")),
                why: format!("key of {} bytes is too long", key.len()),
            });
        }
        // Written out only for a refusal.
        let path = || show(&parent, &key);
        if op.insert {
            return Err(RejectReason::PathNotAllowed {
                path: path(),
                why: "inserts are list ops; the registry holds only maps".into(),
            });
        }
        if !genesis {
            // A predecessor is an earlier op of this change or an op in its causal past (whose
            // counters end at start - 1); anything else would reach Automerge unchecked.
            for pred in op.pred.iter() {
                let pred_actor = Actor::from_bytes(pred.1.to_bytes());
                let earlier_here =
                    pred_actor == Some(v.actor) && (start..start + i as u64).contains(&pred.0);
                let in_past = pred_actor.is_some_and(|a| clock.contains_key(&a)) && pred.0 < start;
                if !(earlier_here || in_past) {
                    return Err(RejectReason::BadPred {
                        op: start + i as u64,
                        pred: format!("{}@{}", pred.0, pred.1),
                    });
                }
            }
        }
        let action = match &op.action {
            OpType::Make(ObjType::Map) => Action::MakeMap,
            OpType::Make(other) => {
                return Err(RejectReason::PathNotAllowed {
                    path: path(),
                    why: format!("makes a {other:?}, the registry holds only maps"),
                });
            }
            OpType::Put(value) => {
                if let ScalarValue::Str(s) = value
                    && s.len() > limits.max_string_bytes
                {
                    return Err(RejectReason::InvalidValue {
                        path: path(),
                        message: format!(
                            "string of {} bytes, the limit is {}",
                            s.len(),
                            limits.max_string_bytes
                        ),
                    });
                }
                Action::Put(value)
            }
            OpType::Delete => Action::Delete,
            OpType::Increment(_) | OpType::MarkBegin(..) | OpType::MarkEnd(_) => {
                return Err(RejectReason::PathNotAllowed {
                    path: path(),
                    why: "counters and marks are not part of the registry".into(),
                });
            }
        };
        let effect = if genesis {
            genesis_effect(&parent, &key, &action)
        } else {
            match doc {
                DocId::Federation => federation_rule(&parent, &key, &action, v, ctx)?,
                DocId::Ledger(park) => ledger_rule(park, &parent, &key, &action, v)?,
            }
        };
        if let Some(reg) = effect.registration {
            walk.registrations.push(reg);
        }
        if let (Some(proof), Action::Put(ScalarValue::Str(sig))) = (effect.proof_for, &action) {
            walk.proofs.push((proof, sig.to_string()));
        }
        if let Some(t) = effect.touched
            && !walk.touched.contains(&t)
        {
            walk.touched.push(t);
        }
        if matches!(action, Action::MakeMap) {
            let mut child = parent;
            child.push(key);
            let okey = ObjKey {
                counter: start + i as u64,
                actor: v.actor,
            };
            local.insert(okey, walk.objects.len());
            walk.objects.push((
                okey,
                ObjectInfo {
                    path: child,
                    made_by: (v.actor, seq),
                },
            ));
        }
    }
    // A device is registered only with its own proof that it holds the key, for this park.
    if !genesis {
        for r in &walk.registrations {
            if let Registration::Device(park, key) = r {
                let proven = walk.proofs.iter().any(|((p, k), sig)| {
                    p == park && k == key && crate::genesis::verify_device_proof(key, park, sig)
                });
                if !proven {
                    return Err(RejectReason::InvalidValue {
                        path: format!("parks/{park}/devices/{key}"),
                        message: "a device is registered with its proof of possession (kervan init prints it in the card)".into(),
                    });
                }
            }
        }
    }
    Ok(walk)
}

enum Action<'a> {
    MakeMap,
    Put(&'a ScalarValue),
    Delete,
}

#[derive(Default)]
struct Effect {
    registration: Option<Registration>,
    touched: Option<Touched>,
    /// The op writes the proof of possession of this park's device.
    proof_for: Option<(ParkId, DeviceKey)>,
}

fn show(parent: &[String], key: &str) -> String {
    let mut s = parent.join("/");
    if !s.is_empty() {
        s.push('/');
    }
    s.push_str(key);
    s
}

fn not_allowed(parent: &[String], key: &str, why: impl Into<String>) -> RejectReason {
    RejectReason::PathNotAllowed {
        path: show(parent, key),
        why: why.into(),
    }
}

/// What the genesis registers: every park under `parks/`, its devices and its root device.
fn genesis_effect(parent: &[String], key: &str, action: &Action<'_>) -> Effect {
    let mut effect = Effect::default();
    let segs: Vec<&str> = parent.iter().map(String::as_str).collect();
    match (segs.as_slice(), action) {
        (["parks"], Action::MakeMap) => {
            if let Ok(p) = key.parse() {
                effect.registration = Some(Registration::Park(p));
            }
        }
        (["parks", p, "devices"], Action::MakeMap) => {
            if let (Ok(p), Ok(k)) = (p.parse(), key.parse()) {
                effect.registration = Some(Registration::Device(p, k));
            }
        }
        (["parks", p], Action::Put(ScalarValue::Str(s))) if key == "root_actor" => {
            if let (Ok(p), Ok(a)) = (p.parse(), s.parse()) {
                effect.registration = Some(Registration::RootActor(p, a));
            }
        }
        _ => {}
    }
    if let Some(p) = segs.get(1).and_then(|p| p.parse().ok()) {
        effect.touched = Some(Touched::Park(p));
    }
    effect
}

/// The federation document after genesis: a device writes only its own park's profile and
/// registers further devices of its own park.
fn federation_rule(
    parent: &[String],
    key: &str,
    action: &Action<'_>,
    v: &Verified,
    ctx: &dyn Context,
) -> Result<Effect, RejectReason> {
    let segs: Vec<&str> = parent.iter().map(String::as_str).collect();
    let owner: ParkId = match segs.as_slice() {
        [] => {
            return Err(not_allowed(
                parent,
                key,
                "nobody writes at the root after genesis",
            ));
        }
        ["parks"] => {
            return Err(not_allowed(
                parent,
                key,
                "parks join the federation through governance, not by writing parks/",
            ));
        }
        ["parks", p, ..] => p
            .parse()
            .map_err(|_| not_allowed(parent, key, "not a park"))?,
        _ => return Err(not_allowed(parent, key, "outside the federation schema")),
    };
    if !ctx.is_device(&owner, &v.actor.key) {
        return Err(RejectReason::WritesAnotherPark {
            path: show(parent, key),
            owner,
        });
    }
    let mut effect = Effect {
        touched: Some(Touched::Park(owner.clone())),
        ..Effect::default()
    };
    match (&segs[2..], action) {
        ([], _) if key == "devices" || key == "root_actor" => {
            return Err(not_allowed(parent, key, "set only by the genesis"));
        }
        ([], _) => check_field(records::PARK_FIELDS, parent, key, action)?,
        (["devices"], Action::MakeMap) => {
            let device: DeviceKey =
                key.parse()
                    .map_err(|e: crate::ids::IdError| RejectReason::InvalidValue {
                        path: show(parent, key),
                        message: e.to_string(),
                    })?;
            effect.registration = Some(Registration::Device(owner, device));
        }
        (["devices"], _) => {
            return Err(not_allowed(
                parent,
                key,
                "a device is registered as a map and never removed",
            ));
        }
        (["devices", device], _) => {
            check_field(records::DEVICE_FIELDS, parent, key, action)?;
            if key == "proof"
                && let Ok(d) = device.parse()
            {
                effect.proof_for = Some((owner, d));
            }
        }
        _ => return Err(not_allowed(parent, key, "outside the federation schema")),
    }
    Ok(effect)
}

/// A park ledger: its collections, each keyed by record id, each record a map of schema fields.
fn ledger_rule(
    park: &ParkId,
    parent: &[String],
    key: &str,
    action: &Action<'_>,
    v: &Verified,
) -> Result<Effect, RejectReason> {
    let segs: Vec<&str> = parent.iter().map(String::as_str).collect();
    match segs.as_slice() {
        [] => {
            if !v.change.deps().is_empty() {
                return Err(not_allowed(
                    parent,
                    key,
                    "only the ledger's first change writes at the root",
                ));
            }
            if !records::COLLECTIONS.contains(&key) || !matches!(action, Action::MakeMap) {
                return Err(not_allowed(
                    parent,
                    key,
                    "the ledger's root holds only startups, programs, applications and decisions",
                ));
            }
            Ok(Effect::default())
        }
        [collection] => {
            let collection = collection_name(collection);
            let id: RecordId =
                key.parse()
                    .map_err(|e: crate::ids::IdError| RejectReason::InvalidValue {
                        path: show(parent, key),
                        message: e.to_string(),
                    })?;
            // Decisions are keyed by the application they answer, which another park owns.
            if collection != "decisions" && id.park() != park {
                return Err(RejectReason::WritesAnotherPark {
                    path: show(parent, key),
                    owner: id.park().clone(),
                });
            }
            if matches!(action, Action::Put(_)) {
                return Err(not_allowed(parent, key, "a record is a map"));
            }
            Ok(Effect {
                touched: Some(Touched::Record { collection, id }),
                ..Effect::default()
            })
        }
        [collection, id, rest @ ..] => {
            let collection = collection_name(collection);
            let fields = records::collection_fields(collection)
                .ok_or_else(|| not_allowed(parent, key, "not a collection"))?;
            let id: RecordId = id
                .parse()
                .map_err(|_| not_allowed(parent, key, "not a record"))?;
            let fields = match rest {
                [] => fields,
                [sub] => match records::find_field(fields, sub).map(|f| f.kind) {
                    Some(Kind::Object(sub_fields)) => sub_fields,
                    _ => return Err(not_allowed(parent, key, "not an object field")),
                },
                _ => return Err(not_allowed(parent, key, "nested deeper than the schema")),
            };
            check_field(fields, parent, key, action)?;
            if collection == "applications"
                && key == "startup"
                && let Action::Put(ScalarValue::Str(s)) = action
                && s.parse::<RecordId>()
                    .map(|r| r.park() != park)
                    .unwrap_or(false)
            {
                return Err(RejectReason::InvalidValue {
                    path: show(parent, key),
                    message: format!("an application of {park} names a startup of another park"),
                });
            }
            Ok(Effect {
                touched: Some(Touched::Record { collection, id }),
                ..Effect::default()
            })
        }
    }
}

fn collection_name(s: &str) -> &'static str {
    records::COLLECTIONS
        .iter()
        .find(|c| **c == s)
        .copied()
        .unwrap_or("unknown")
}

/// One op on a field of a record: the field must exist, a put must fit its kind, an object
/// field is made as a map, and only optional fields are deleted.
fn check_field(
    fields: &'static [Field],
    parent: &[String],
    key: &str,
    action: &Action<'_>,
) -> Result<(), RejectReason> {
    let field = records::find_field(fields, key)
        .ok_or_else(|| not_allowed(parent, key, "no such field in the schema"))?;
    match (action, &field.kind) {
        (Action::MakeMap, Kind::Object(_)) => Ok(()),
        (Action::MakeMap, _) => Err(not_allowed(parent, key, "a scalar field, not a map")),
        (Action::Put(_), Kind::Object(_)) => {
            Err(not_allowed(parent, key, "an object field, not a scalar"))
        }
        (Action::Put(value), kind) => {
            records::check_scalar(kind, Scalar::from_automerge(value), None).map_err(|message| {
                RejectReason::InvalidValue {
                    path: show(parent, key),
                    message,
                }
            })
        }
        (Action::Delete, _) if field.required => Err(not_allowed(
            parent,
            key,
            "a required field cannot be removed",
        )),
        (Action::Delete, _) => Ok(()),
    }
}

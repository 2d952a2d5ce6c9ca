//! The packed form of a run of changes of one document in a sync page: each change taken apart
//! into its fields and its op columns, every field and every column of the run kept together
//! and deflated as one stream, and the few signatures the page carries beside them.
//!
//! A change sent on its own repeats what its neighbours already said: its actor, its record's
//! field names in the key column, the hash of the change before it. Automerge's own sync sends
//! a fresh peer the columns of the whole document, so similar values lie side by side; this does
//! the same for a run of whole changes, without leaving their encoding: each change is rebuilt
//! byte for byte, so its hash, and the signature that covers it, hold. A dependency on an earlier
//! change of the run costs an index instead of 32 bytes, a repeated actor an index instead of
//! 40, and seq, start op and time are told as differences from the change before.
//!
//! ```text
//! packed  = nstreams:uleb * (raw_len:uleb deflated_len:uleb spec:uleb) * deflated
//!                                           ; streams: head, lens, then one per column spec,
//!                                           ; each DEFLATE(raw bytes); spec 0 for head, lens
//! head    = * item                          ; one per change, in the run's order
//! item    = form:u8 ...                     ; bit 0: a signature follows in `sigs`;
//!                                           ; bit 1: columns (else the change as it is)
//!   as it is: change_len:uleb change        ; the whole change chunk, magic and checksum too
//!   columns:  ndeps:uleb * dep actor seq_delta:uleb start_op_delta:zigzag time_delta:zigzag
//!             message_len:uleb message nothers:uleb * actor ncols:uleb * spec:uleb
//!             extra_len:uleb extra
//! dep     = 0 hash:32 / k:uleb              ; k >= 1: the hash of the k-th change before it
//! actor   = 0 len:uleb bytes / k:uleb       ; k >= 1: the k-th actor the run named
//! lens    = * len:uleb                      ; each column's length, in the order of the items
//! column  = the bytes of that spec's column of each change in turn
//! sigs    = * sig:64                        ; one per item whose form has bit 0
//! ```
//!
//! The columns form is used only when the change rebuilds from it to exactly its bytes (the
//! sender checks), so a change in any other encoding travels as it is. Seq differences are
//! from the previous change of the same actor, start op and time from the previous change of
//! the run told in columns.
//!
//! Unpacking is bounded: the receiver inflates at most a given number of bytes and rebuilds at
//! most as many, checked before each part is built, so a few kilobytes cannot expand into
//! gigabytes: a one-byte reference rebuilds a 32-byte hash or a 40-byte actor.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use sha2::{Digest, Sha256};

/// How hard the sender deflates. Each stream is deflated on its own; on the benchmark's
/// 10k-record catch-up the streams of level 9 were no smaller than level 6's.
const LEVEL: u32 = 6;
const SIG: usize = 64;
const HASH: usize = 32;
/// The magic bytes that open every Automerge chunk.
const CHUNK_MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// The chunk type of an uncompressed change.
const CHANGE: u8 = 1;
const SIGNED: u8 = 1;
const COLUMNS: u8 = 2;
/// The most streams a run may have: a change has a few dozen column specs.
const MAX_STREAMS: usize = 1024;

/// Why a packed run does not unpack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnpackError {
    #[error("the packed changes inflate to more than {0} bytes")]
    TooLarge(usize),
    #[error("the packed changes do not inflate: {0}")]
    Inflate(String),
    #[error("a packed change is cut short")]
    Truncated,
    #[error("unknown packed change form {0}")]
    Form(u8),
    #[error("a reference to the {0}-th earlier item is past the start of the run")]
    Reference(u64),
    #[error("{flagged} packed changes carry a signature but {sigs} bytes of signatures came")]
    Signatures { flagged: usize, sigs: usize },
    #[error("a length does not fit")]
    Length,
    #[error("{0} bytes of a stream are left over after the last change")]
    Trailing(usize),
}

/// One change of a run to pack: its bytes as an envelope holds them, and the signature to send
/// with it, if any.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    pub change: &'a [u8],
    pub sig: Option<&'a [u8; SIG]>,
}

/// One change as [`unpack`] rebuilt it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// The change's bytes, byte for byte as they were packed.
    pub change: Vec<u8>,
    /// The SHA-256 of the chunk after its magic bytes and checksum: Automerge's change hash,
    /// if the bytes are a change.
    pub hash: [u8; HASH],
    pub sig: Option<[u8; SIG]>,
    /// The change's actor, where its header reads.
    pub actor: Option<Vec<u8>>,
}

/// The hash of change bytes as [`Unpacked::hash`] gives it.
pub fn change_hash(change: &[u8]) -> [u8; HASH] {
    Sha256::digest(change.get(8..).unwrap_or_default()).into()
}

/// The actor named by a change's header, if the bytes read as a change chunk that far.
pub fn change_actor(change: &[u8]) -> Option<&[u8]> {
    actor_cursor(change).map(|(a, _)| a)
}

/// The actor and seq named by a change's header, if the bytes read as a change chunk that far.
pub fn change_actor_seq(change: &[u8]) -> Option<(&[u8], u64)> {
    let (actor, mut rest) = actor_cursor(change)?;
    Some((actor, rest.uleb().ok()?))
}

fn actor_cursor(change: &[u8]) -> Option<(&[u8], Cursor<'_>)> {
    let mut r = Cursor(change.get(8..)?);
    if r.take(1).ok()? != [CHANGE] {
        return None;
    }
    r.uleb().ok()?;
    let ndeps = usize::try_from(r.uleb().ok()?).ok()?;
    r.take(ndeps.checked_mul(HASH)?).ok()?;
    let n = usize::try_from(r.uleb().ok()?).ok()?;
    let actor = r.take(n).ok()?;
    Some((actor, r))
}

/// A change chunk's parts, as its header lays them out.
struct Parts<'a> {
    deps: Vec<&'a [u8]>,
    actor: &'a [u8],
    seq: u64,
    start_op: u64,
    time: i64,
    message: &'a [u8],
    others: Vec<&'a [u8]>,
    columns: Vec<(u64, &'a [u8])>,
    extra: &'a [u8],
}

impl<'a> Parts<'a> {
    /// The parts of a whole change (magic, checksum, type, length, body); `None` if it is not
    /// laid out as an uncompressed change chunk.
    fn of(change: &'a [u8]) -> Option<Self> {
        let mut r = Cursor(change.get(8..)?);
        if r.take(1).ok()? != [CHANGE] {
            return None;
        }
        let body_len = usize::try_from(r.uleb().ok()?).ok()?;
        if r.0.len() != body_len {
            return None;
        }
        let ndeps = usize::try_from(r.uleb().ok()?).ok()?;
        let mut deps = Vec::new();
        for _ in 0..ndeps {
            deps.push(r.take(HASH).ok()?);
        }
        let actor = r.bytes().ok()?;
        let seq = r.uleb().ok()?;
        let start_op = r.uleb().ok()?;
        let time = r.sleb().ok()?;
        let message = r.bytes().ok()?;
        let nothers = usize::try_from(r.uleb().ok()?).ok()?;
        let mut others = Vec::new();
        for _ in 0..nothers {
            others.push(r.bytes().ok()?);
        }
        let ncols = usize::try_from(r.uleb().ok()?).ok()?;
        let mut specs = Vec::new();
        for _ in 0..ncols {
            specs.push((r.uleb().ok()?, usize::try_from(r.uleb().ok()?).ok()?));
        }
        let mut columns = Vec::with_capacity(specs.len());
        for (spec, len) in specs {
            columns.push((spec, r.take(len).ok()?));
        }
        Some(Self {
            deps,
            actor,
            seq,
            start_op,
            time,
            message,
            others,
            columns,
            extra: r.0,
        })
    }
}

/// The whole change the parts make: magic bytes, checksum, type, length, body.
fn rebuild(p: &Parts<'_>) -> Vec<u8> {
    let mut body = Vec::new();
    uleb(&mut body, p.deps.len() as u64);
    for d in &p.deps {
        body.extend_from_slice(d);
    }
    put_bytes(&mut body, p.actor);
    uleb(&mut body, p.seq);
    uleb(&mut body, p.start_op);
    sleb(&mut body, p.time);
    put_bytes(&mut body, p.message);
    uleb(&mut body, p.others.len() as u64);
    for o in &p.others {
        put_bytes(&mut body, o);
    }
    uleb(&mut body, p.columns.len() as u64);
    for (spec, data) in &p.columns {
        uleb(&mut body, *spec);
        uleb(&mut body, data.len() as u64);
    }
    for (_, data) in &p.columns {
        body.extend_from_slice(data);
    }
    body.extend_from_slice(p.extra);
    let mut chunk = Vec::with_capacity(body.len() + 11);
    chunk.push(CHANGE);
    uleb(&mut chunk, body.len() as u64);
    chunk.extend_from_slice(&body);
    wrap(chunk)
}

/// A chunk (type, length, body) with its magic bytes and checksum in front.
fn wrap(chunk: Vec<u8>) -> Vec<u8> {
    let sum = Sha256::digest(&chunk);
    let mut out = Vec::with_capacity(8 + chunk.len());
    out.extend_from_slice(&CHUNK_MAGIC);
    out.extend_from_slice(&sum[..4]);
    out.extend_from_slice(&chunk);
    out
}

/// What packing and unpacking carry from one change of the run to the next.
#[derive(Default)]
struct Run {
    /// Hashes of the run's changes so far, in order.
    hashes: Vec<[u8; HASH]>,
    /// Item index of each hash (the latest, for a hash repeated).
    by_hash: HashMap<[u8; HASH], usize>,
    actors: Vec<Vec<u8>>,
    last_seq: HashMap<usize, u64>,
    start_op: u64,
    time: i64,
}

impl Run {
    fn seen(&mut self, hash: [u8; HASH]) {
        self.by_hash.insert(hash, self.hashes.len());
        self.hashes.push(hash);
    }

    fn actor_out(&mut self, out: &mut Vec<u8>, actor: &[u8]) -> usize {
        match self.actors.iter().position(|a| a == actor) {
            Some(k) => {
                uleb(out, k as u64 + 1);
                k
            }
            None => {
                out.push(0);
                put_bytes(out, actor);
                self.actors.push(actor.to_vec());
                self.actors.len() - 1
            }
        }
    }
}

/// The changes of a run packed: the deflated streams, and the signatures of the items that
/// carry one, in order.
pub fn pack(items: &[Item<'_>]) -> (Vec<u8>, Vec<u8>) {
    let mut run = Run::default();
    let mut head = Vec::new();
    let mut lens = Vec::new();
    let mut columns: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut sigs = Vec::new();
    for item in items {
        let signed = if let Some(s) = item.sig {
            sigs.extend_from_slice(s);
            SIGNED
        } else {
            0
        };
        let hash = change_hash(item.change);
        match Parts::of(item.change).filter(|p| rebuild(p) == item.change) {
            Some(p) => {
                head.push(COLUMNS | signed);
                uleb(&mut head, p.deps.len() as u64);
                for d in &p.deps {
                    let back = <[u8; HASH]>::try_from(*d)
                        .ok()
                        .and_then(|d| run.by_hash.get(&d));
                    match back {
                        Some(&j) => uleb(&mut head, (run.hashes.len() - j) as u64),
                        None => {
                            head.push(0);
                            head.extend_from_slice(d);
                        }
                    }
                }
                let a = run.actor_out(&mut head, p.actor);
                let last = run.last_seq.insert(a, p.seq).unwrap_or(0);
                uleb(&mut head, p.seq.wrapping_sub(last));
                uleb(
                    &mut head,
                    zigzag(p.start_op.wrapping_sub(run.start_op) as i64),
                );
                uleb(&mut head, zigzag(p.time.wrapping_sub(run.time)));
                run.start_op = p.start_op;
                run.time = p.time;
                put_bytes(&mut head, p.message);
                uleb(&mut head, p.others.len() as u64);
                for o in &p.others {
                    run.actor_out(&mut head, o);
                }
                uleb(&mut head, p.columns.len() as u64);
                for (spec, data) in &p.columns {
                    uleb(&mut head, *spec);
                    uleb(&mut lens, data.len() as u64);
                    columns.entry(*spec).or_default().extend_from_slice(data);
                }
                put_bytes(&mut head, p.extra);
            }
            None => {
                head.push(signed);
                put_bytes(&mut head, item.change);
            }
        }
        run.seen(hash);
    }
    let streams: Vec<(u64, &[u8])> = [(0, head.as_slice()), (0, lens.as_slice())]
        .into_iter()
        .chain(columns.iter().map(|(s, c)| (*s, c.as_slice())))
        .collect();
    let mut out = Vec::new();
    let mut bodies = Vec::new();
    uleb(&mut out, streams.len() as u64);
    for (spec, raw) in streams {
        let mut e = DeflateEncoder::new(Vec::new(), Compression::new(LEVEL));
        // Writing into a Vec cannot fail.
        let _ = e.write_all(raw);
        let deflated = e.finish().unwrap_or_default();
        uleb(&mut out, raw.len() as u64);
        uleb(&mut out, deflated.len() as u64);
        uleb(&mut out, spec);
        bodies.push(deflated);
    }
    for b in bodies {
        out.extend_from_slice(&b);
    }
    (out, sigs)
}

/// The changes `packed` holds, each with its signature from `sigs` if its form says it has
/// one; inflating at most `budget` bytes and rebuilding at most `budget` bytes of changes.
pub fn unpack(packed: &[u8], sigs: &[u8], budget: usize) -> Result<Vec<Unpacked>, UnpackError> {
    let mut r = Cursor(packed);
    let n = usize::try_from(r.uleb()?).map_err(|_| UnpackError::Length)?;
    if !(2..=MAX_STREAMS).contains(&n) {
        return Err(UnpackError::Length);
    }
    let mut declared = Vec::with_capacity(n);
    let mut inflated = 0usize;
    for _ in 0..n {
        let raw = usize::try_from(r.uleb()?).map_err(|_| UnpackError::Length)?;
        let def = usize::try_from(r.uleb()?).map_err(|_| UnpackError::Length)?;
        let spec = r.uleb()?;
        inflated = inflated.saturating_add(raw);
        if inflated > budget {
            return Err(UnpackError::TooLarge(budget));
        }
        declared.push((raw, def, spec));
    }
    let mut streams = Vec::with_capacity(n);
    for (raw, def, spec) in declared {
        let body = r.take(def)?;
        let mut out = Vec::with_capacity(raw);
        DeflateDecoder::new(body)
            .take(raw as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| UnpackError::Inflate(e.to_string()))?;
        if out.len() != raw {
            return Err(UnpackError::Length);
        }
        streams.push((spec, out));
    }
    if !r.0.is_empty() {
        return Err(UnpackError::Trailing(r.0.len()));
    }
    let mut streams = streams.into_iter();
    let (_, head) = streams.next().ok_or(UnpackError::Length)?;
    let (_, lens) = streams.next().ok_or(UnpackError::Length)?;
    let mut columns: HashMap<u64, Cursor<'_>> = HashMap::new();
    let owned: Vec<(u64, Vec<u8>)> = streams.collect();
    for (spec, data) in &owned {
        if columns.insert(*spec, Cursor(data)).is_some() {
            return Err(UnpackError::Length);
        }
    }
    let mut h = Cursor(&head);
    let mut l = Cursor(&lens);
    let mut run = Run::default();
    let mut out = Vec::new();
    let mut built = 0usize;
    let mut sigs_left = sigs;
    while !h.0.is_empty() {
        let form = h.take(1)?[0];
        if form & !(SIGNED | COLUMNS) != 0 {
            return Err(UnpackError::Form(form));
        }
        let room = budget - built;
        let change = if form & COLUMNS == 0 {
            let n = h.len()?;
            if n > room {
                return Err(UnpackError::TooLarge(budget));
            }
            h.take(n)?.to_vec()
        } else {
            item_in(&mut h, &mut l, &mut columns, &mut run, room, budget)?
        };
        built += change.len();
        let hash = change_hash(&change);
        run.seen(hash);
        let sig = if form & SIGNED != 0 {
            let (s, rest) =
                sigs_left
                    .split_first_chunk::<SIG>()
                    .ok_or(UnpackError::Signatures {
                        flagged: out.iter().filter(|u: &&Unpacked| u.sig.is_some()).count() + 1,
                        sigs: sigs.len(),
                    })?;
            sigs_left = rest;
            Some(*s)
        } else {
            None
        };
        let actor = change_actor(&change).map(<[u8]>::to_vec);
        out.push(Unpacked {
            change,
            hash,
            sig,
            actor,
        });
    }
    if !sigs_left.is_empty() {
        return Err(UnpackError::Signatures {
            flagged: out.iter().filter(|u| u.sig.is_some()).count(),
            sigs: sigs.len(),
        });
    }
    if !l.0.is_empty() {
        return Err(UnpackError::Trailing(l.0.len()));
    }
    if let Some(left) = columns.values().map(|c| c.0.len()).find(|n| *n > 0) {
        return Err(UnpackError::Trailing(left));
    }
    Ok(out)
}

/// Rebuilds one change told in columns, at most `room` bytes of it.
fn item_in(
    h: &mut Cursor<'_>,
    l: &mut Cursor<'_>,
    columns: &mut HashMap<u64, Cursor<'_>>,
    run: &mut Run,
    room: usize,
    budget: usize,
) -> Result<Vec<u8>, UnpackError> {
    let mut body = Vec::new();
    let grow = |body: &Vec<u8>, more: usize| {
        if body.len().saturating_add(more) > room {
            Err(UnpackError::TooLarge(budget))
        } else {
            Ok(())
        }
    };
    let ndeps = h.len()?;
    uleb(&mut body, ndeps as u64);
    for _ in 0..ndeps {
        grow(&body, HASH)?;
        match h.uleb()? {
            0 => body.extend_from_slice(h.take(HASH)?),
            k => {
                let back = usize::try_from(k).map_err(|_| UnpackError::Reference(k))?;
                let j = run
                    .hashes
                    .len()
                    .checked_sub(back)
                    .ok_or(UnpackError::Reference(k))?;
                body.extend_from_slice(&run.hashes[j]);
            }
        }
    }
    let a = actor_in(h, run)?;
    grow(&body, run.actors[a].len() + 10)?;
    put_bytes(&mut body, &run.actors[a]);
    let last = run.last_seq.get(&a).copied().unwrap_or(0);
    let seq = last.wrapping_add(h.uleb()?);
    run.last_seq.insert(a, seq);
    uleb(&mut body, seq);
    let start_op = run.start_op.wrapping_add(unzigzag(h.uleb()?) as u64);
    let time = run.time.wrapping_add(unzigzag(h.uleb()?));
    run.start_op = start_op;
    run.time = time;
    uleb(&mut body, start_op);
    sleb(&mut body, time);
    let message = h.bytes()?;
    grow(&body, message.len() + 10)?;
    put_bytes(&mut body, message);
    let nothers = h.len()?;
    uleb(&mut body, nothers as u64);
    for _ in 0..nothers {
        let o = actor_in(h, run)?;
        grow(&body, run.actors[o].len() + 10)?;
        put_bytes(&mut body, &run.actors[o]);
    }
    let ncols = h.len()?;
    uleb(&mut body, ncols as u64);
    let mut parts = Vec::new();
    for _ in 0..ncols {
        let spec = h.uleb()?;
        // Bounded by the column it is taken from, and by the room left.
        let len = usize::try_from(l.uleb()?).map_err(|_| UnpackError::Length)?;
        grow(&body, len + 20)?;
        uleb(&mut body, spec);
        uleb(&mut body, len as u64);
        parts.push((spec, len));
    }
    for (spec, len) in parts {
        let column = columns.get_mut(&spec).ok_or(UnpackError::Truncated)?;
        body.extend_from_slice(column.take(len)?);
    }
    let extra = h.bytes()?;
    grow(&body, extra.len() + 20)?;
    body.extend_from_slice(extra);
    let mut chunk = Vec::with_capacity(body.len() + 11);
    chunk.push(CHANGE);
    uleb(&mut chunk, body.len() as u64);
    chunk.extend_from_slice(&body);
    Ok(wrap(chunk))
}

fn actor_in(h: &mut Cursor<'_>, run: &mut Run) -> Result<usize, UnpackError> {
    match h.uleb()? {
        0 => {
            let a = h.bytes()?;
            run.actors.push(a.to_vec());
            Ok(run.actors.len() - 1)
        }
        k => {
            let i = usize::try_from(k - 1).map_err(|_| UnpackError::Reference(k))?;
            if i < run.actors.len() {
                Ok(i)
            } else {
                Err(UnpackError::Reference(k))
            }
        }
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    uleb(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn uleb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn sleb(out: &mut Vec<u8>, mut v: i64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        let done = (v == 0 && byte & 0x40 == 0) || (v == -1 && byte & 0x40 != 0);
        if done {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], UnpackError> {
        if self.0.len() < n {
            return Err(UnpackError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn uleb(&mut self) -> Result<u64, UnpackError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.take(1)?[0];
            let bits = u64::from(b & 0x7f);
            if i == 9 && bits > 1 {
                return Err(UnpackError::Length);
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(UnpackError::Length)
    }

    fn sleb(&mut self) -> Result<i64, UnpackError> {
        let mut v: i64 = 0;
        for i in 0..10 {
            let b = self.take(1)?[0];
            v |= i64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if i < 9 && b & 0x40 != 0 {
                    v |= -1i64 << (7 * (i + 1));
                }
                return Ok(v);
            }
        }
        Err(UnpackError::Length)
    }

    /// A length that must fit what is left to read.
    fn len(&mut self) -> Result<usize, UnpackError> {
        let n = usize::try_from(self.uleb()?).map_err(|_| UnpackError::Length)?;
        if n > self.0.len().saturating_mul(HASH + 1) {
            return Err(UnpackError::Truncated);
        }
        Ok(n)
    }

    /// A length-prefixed byte string.
    fn bytes(&mut self) -> Result<&'a [u8], UnpackError> {
        let n = usize::try_from(self.uleb()?).map_err(|_| UnpackError::Length)?;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain of real Automerge changes of two actors, each depending on the one before, with
    /// a message on one of them.
    fn chain(n: usize) -> Vec<Vec<u8>> {
        use automerge::transaction::{CommitOptions, Transactable as _};
        let mut d = automerge::AutoCommit::new();
        let actors = [
            automerge::ActorId::from([1u8; 40]),
            automerge::ActorId::from([2u8; 40]),
        ];
        (0..n)
            .map(|i| {
                d.set_actor(actors[i % 3 / 2].clone());
                d.put(automerge::ROOT, "name", format!("startup {i}"))
                    .expect("put");
                d.put(automerge::ROOT, "sector", "fintech").expect("put");
                let time = 1_800_000_000 - (i as i64 % 5) * 7;
                let mut opts = CommitOptions::default().with_time(time);
                if i == 4 {
                    opts = opts.with_message("a message");
                }
                d.commit_with(opts);
                d.get_last_local_change()
                    .expect("change")
                    .raw_bytes()
                    .to_vec()
            })
            .collect()
    }

    fn items<'a>(changes: &'a [Vec<u8>], sig: &'a [u8; SIG], every: usize) -> Vec<Item<'a>> {
        changes
            .iter()
            .enumerate()
            .map(|(i, c)| Item {
                change: c,
                sig: (i % every == every - 1).then_some(sig),
            })
            .collect()
    }

    #[test]
    fn a_run_unpacks_to_the_same_changes_and_costs_less() {
        let changes = chain(60);
        let mut odd = changes.clone();
        // Not a change at all, and a change whose length is not in its shortest form: both
        // travel as they are.
        odd.insert(3, vec![9, 9, 9]);
        let mut long = odd[10].clone();
        long.insert(9, 0x80 | long[9]);
        long[10] = 0;
        odd.insert(11, long);
        let sig = [7u8; SIG];
        for run in [&changes, &odd] {
            let (packed, sigs) = pack(&items(run, &sig, 3));
            assert_eq!(sigs.len(), run.len() / 3 * SIG);
            let back = unpack(&packed, &sigs, 1 << 20).expect("unpacks");
            assert_eq!(
                back.iter().map(|u| &u.change).collect::<Vec<_>>(),
                run.iter().collect::<Vec<_>>()
            );
            for (i, u) in back.iter().enumerate() {
                assert_eq!(u.hash, change_hash(&run[i]));
                assert_eq!(u.sig.is_some(), i % 3 == 2);
                assert_eq!(u.actor.as_deref(), change_actor(&run[i]));
            }
            let c = automerge::Change::try_from(back[5].change.as_slice()).expect("a change");
            assert_eq!(c.hash().0, back[5].hash);
            assert!(
                back.iter()
                    .any(|u| u.actor.as_deref() == Some(&[2u8; 40][..]))
            );
        }
        let whole: usize = changes.iter().map(Vec::len).sum();
        let (packed, _) = pack(&items(&changes, &sig, 1000));
        assert!(
            packed.len() * 4 < whole,
            "{} B packed from {whole} B",
            packed.len()
        );
    }

    #[test]
    fn signed_leb_round_trips() {
        for v in [
            0,
            1,
            -1,
            63,
            64,
            -64,
            -65,
            1_800_000_000,
            i64::MIN,
            i64::MAX,
        ] {
            let mut out = Vec::new();
            sleb(&mut out, v);
            assert_eq!(Cursor(&out).sleb(), Ok(v), "{v}");
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }

    fn deflate(raw: &[u8]) -> Vec<u8> {
        let mut e = DeflateEncoder::new(Vec::new(), Compression::best());
        e.write_all(raw).expect("write");
        e.finish().expect("finish")
    }

    /// A packed run of the given head and lens streams and no columns.
    fn streams(head: &[u8], lens: &[u8]) -> Vec<u8> {
        let (h, l) = (deflate(head), deflate(lens));
        let mut out = vec![2];
        for (raw, def) in [(head, &h), (lens, &l)] {
            uleb(&mut out, raw.len() as u64);
            uleb(&mut out, def.len() as u64);
            out.push(0);
        }
        out.extend_from_slice(&h);
        out.extend_from_slice(&l);
        out
    }

    #[test]
    fn bad_packed_runs_are_refused() {
        let changes = chain(6);
        let sig = [1u8; SIG];
        let (packed, sigs) = pack(&items(&changes, &sig, 2));
        assert_eq!(
            unpack(&packed, &sigs[..SIG * 2], 1 << 20).err(),
            Some(UnpackError::Signatures {
                flagged: 3,
                sigs: 2 * SIG
            })
        );
        let mut more = sigs.clone();
        more.extend_from_slice(&sig);
        assert!(matches!(
            unpack(&packed, &more, 1 << 20),
            Err(UnpackError::Signatures { .. })
        ));
        let whole: usize = changes.iter().map(Vec::len).sum();
        assert_eq!(
            unpack(&packed, &sigs, whole / 2).err(),
            Some(UnpackError::TooLarge(whole / 2))
        );
        for cut in [1, 5, packed.len() / 2, packed.len() - 1] {
            assert!(unpack(&packed[..cut], &sigs, 1 << 20).is_err(), "{cut}");
        }
        let mut trailing = packed.clone();
        trailing.push(0);
        assert_eq!(
            unpack(&trailing, &sigs, 1 << 20).err(),
            Some(UnpackError::Trailing(1))
        );
        assert!(matches!(
            unpack(b"\x02\x05\x05\x00\x00\x00\x00notdeflate", &[], 1 << 20),
            Err(UnpackError::Inflate(_) | UnpackError::Length | UnpackError::Truncated)
        ));
        // A back-reference before the run's first change, an actor the run never named, an
        // unknown form, a cut item.
        assert_eq!(
            unpack(&streams(&[COLUMNS, 1, 1], &[]), &[], 1 << 20).err(),
            Some(UnpackError::Reference(1))
        );
        assert_eq!(
            unpack(&streams(&[COLUMNS, 0, 3], &[]), &[], 1 << 20).err(),
            Some(UnpackError::Reference(3))
        );
        assert_eq!(
            unpack(&streams(&[7], &[]), &[], 1 << 20).err(),
            Some(UnpackError::Form(7))
        );
        assert_eq!(
            unpack(&streams(&[0, 10, 1], &[]), &[], 1 << 20).err(),
            Some(UnpackError::Truncated)
        );
        // A column the run does not carry.
        let mut head = vec![COLUMNS, 0, 0, 1, 5, 1, 0, 0, 0, 0, 1, 9, 0];
        assert_eq!(
            unpack(&streams(&head, &[3]), &[], 1 << 20).err(),
            Some(UnpackError::Truncated)
        );
        // A kilobyte of back-references that would rebuild 32 times as many bytes, and
        // references to a 40-byte actor.
        head = vec![0];
        put_bytes(&mut head, &[5; 10]);
        head.push(COLUMNS);
        uleb(&mut head, 1000);
        head.extend(std::iter::repeat_n(1, 1000));
        head.extend_from_slice(&[0, 1, 0xee]);
        // seq, start op, time, message, other actors, columns, extra bytes.
        head.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0]);
        let refs = streams(&head, &[]);
        let built = unpack(&refs, &[], 1 << 20).expect("unpacks");
        // Magic and checksum, type, length; deps, the actor, then a byte for each of the rest.
        assert_eq!(built[1].change.len(), 8 + 1 + 3 + 2 + 32_000 + 2 + 6);
        assert_eq!(
            unpack(&refs, &[], 10_000).err(),
            Some(UnpackError::TooLarge(10_000))
        );
        // Megabytes of zeros in a few kilobytes stop at the budget, before inflating.
        let bomb = streams(&vec![0u8; 4 << 20], &[]);
        assert!(bomb.len() < 8 << 10, "{} B", bomb.len());
        assert_eq!(
            unpack(&bomb, &[], 1 << 20).err(),
            Some(UnpackError::TooLarge(1 << 20))
        );
        // A stream that inflates to more than it declares.
        let mut lying = vec![2, 1];
        let z = deflate(&[0u8; 4096]);
        uleb(&mut lying, z.len() as u64);
        lying.push(0);
        lying.extend_from_slice(&[0, 3, 0]);
        lying.extend_from_slice(&z);
        lying.extend_from_slice(&deflate(&[]));
        assert_eq!(
            unpack(&lying, &[], 1 << 20).err(),
            Some(UnpackError::Length)
        );
    }
}

//! Fuzzes the anti-entropy messages of `/kervan/sync/4` as a node reads them from a peer: the
//! bytes are decoded exactly as libp2p's `request_response::cbor` codec decodes them (at most
//! the node's size limit, then `cbor4ii::serde::from_slice`), as a `Request` and as a
//! `Response`, and what comes out is handed to the code that follows in the node.
//!
//! It proves, for any bytes:
//! - decoding never panics, and a decoded message encodes and decodes back to itself;
//! - a request's summary goes through `Summary::new`, `digest` and `missing` (both ways against
//!   a real replica's summary) without panicking; `missing` only asks for seqs the local node
//!   holds, and two equal summaries miss nothing;
//! - a delta request is resolved against the bases a responder may hold (the replica's summary,
//!   and the empty one) without panicking; a summary it rebuilds has the digest the requester
//!   sent and sorted, unique heads, and the delta from that base to it rebuilds it again;
//! - a real replica holding the fixture answers the request with `sync_page` without error,
//!   within `MAX_PAGE_CHANGES`, with envelopes that decode;
//! - a response's envelopes decode, parse and verify, its vouched envelopes go through the
//!   vouching walk the replica runs on a page, and its peer ids and addresses parse, as the
//!   node's `learn` does, without panicking.

#![no_main]

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::{Mutex, OnceLock, PoisonError};

use kervan_fuzz::TempReplica;
use kervan_protocol::sync::{
    self, Delta, MAX_PAGE_BYTES, MAX_PAGE_CHANGES, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, Request,
    Response, Summary,
};
use kervan_protocol::vouch::{Link, Own, vouch};
use kervan_protocol::{Actor, Hash, Limits, SignedChange};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Addresses the node keeps per peer (net.rs `ADDRS_PER_PEER`).
const ADDRS_PER_PEER: usize = 8;

/// The responder: one replica of the fixture per process. The target only reads it, so every
/// input meets the same state.
fn replica() -> &'static Mutex<TempReplica> {
    static REPLICA: OnceLock<Mutex<TempReplica>> = OnceLock::new();
    REPLICA.get_or_init(|| Mutex::new(kervan_fuzz::open_replica("sync_message")))
}

/// What the codec does with a stream: read at most `max` bytes, decode them whole.
fn read<T: DeserializeOwned>(data: &[u8], max: usize) -> Option<T> {
    cbor4ii::serde::from_slice(&data[..data.len().min(max)]).ok()
}

fn assert_round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) {
    let bytes = cbor4ii::serde::to_vec(Vec::new(), value).expect("a decoded message encodes");
    let back: T = cbor4ii::serde::from_slice(&bytes).expect("an encoded message decodes");
    assert_eq!(&back, value, "a message must survive encode and decode");
}

fuzz_target!(|data: &[u8]| kervan_fuzz::run(|| one(data)));

/// One input.
fn one(data: &[u8]) {
    if let Some(request) = read::<Request>(data, MAX_REQUEST_BYTES) {
        assert_round_trip(&request);
        answer(request);
    }
    if let Some(response) = read::<Response>(data, MAX_RESPONSE_BYTES) {
        assert_round_trip(&response);
        take(response);
    }
}

/// The responder's side of a delta pull, as `net.rs` runs it: the summary rebuilt from a base
/// it may hold, or `None` (answered `UnknownBase`).
fn rebuild(delta: &Delta) -> Option<Summary> {
    let local = {
        let guard = replica().lock().unwrap_or_else(PoisonError::into_inner);
        guard.replica.sync_summary()
    };
    let mut rebuilt = None;
    for base in [local, Summary::new(Vec::new())] {
        let Ok(s) = sync::resolve(&base, delta) else {
            continue;
        };
        assert_eq!(
            s.digest, delta.digest,
            "a rebuilt summary has the requester's digest"
        );
        assert_eq!(s.digest, sync::digest(&s.heads));
        assert!(
            s.heads
                .windows(2)
                .all(|w| (&w[0].doc, &w[0].actor) < (&w[1].doc, &w[1].actor)),
            "a rebuilt summary's heads are sorted and unique"
        );
        let again = sync::delta(&base, &s).expect("a rebuilt summary keeps the base's heads");
        assert_eq!(sync::resolve(&base, &again).as_ref(), Ok(&s));
        rebuilt = Some(s);
    }
    rebuilt
}

/// The responder's side of a pull, as `net.rs` runs it on the replica thread.
fn answer(request: Request) {
    let remote = match request {
        Request::Pull(remote) => remote,
        Request::PullDelta(delta) => match rebuild(&delta) {
            Some(s) => s,
            None => return,
        },
    };
    let rebuilt = Summary::new(remote.heads.clone());
    assert_eq!(rebuilt.digest, sync::digest(&rebuilt.heads));
    let unique: HashSet<_> = rebuilt.heads.iter().map(|h| (&h.doc, &h.actor)).collect();
    if unique.len() == rebuilt.heads.len() {
        assert!(
            sync::missing(&rebuilt, &rebuilt).is_empty(),
            "a summary misses nothing of itself"
        );
    }

    let guard = replica().lock().unwrap_or_else(PoisonError::into_inner);
    let r = &guard.replica;
    let local = r.sync_summary();
    for m in sync::missing(&local, &remote) {
        let head = local
            .heads
            .iter()
            .find(|h| h.doc == m.doc && h.actor == m.actor)
            .expect("missing names only heads of the local summary");
        assert!(
            *m.seqs.start() >= 1 && m.seqs.end() == &head.seq && !m.seqs.is_empty(),
            "missing asks for {:?}, the local head is at {}",
            m.seqs,
            head.seq
        );
    }
    // The requester's side of the same comparison: what it would expect to receive.
    let _ = sync::missing(&remote, &local);

    if r.digest() == remote.digest {
        return;
    }
    let (page, _more) = r
        .sync_page(&remote, MAX_PAGE_BYTES)
        .expect("answering a pull only reads the store");
    assert!(
        page.len() <= MAX_PAGE_CHANGES,
        "a page holds {} changes",
        page.len()
    );
    let max = Limits::default().max_change_bytes;
    for envelope in &page {
        SignedChange::decode(envelope, max).expect("a page holds envelopes the replica stored");
    }
}

/// The requester's side of an answer, up to the ingest (which `bundle_import` fuzzes).
fn take(response: Response) {
    let (changes, peers) = match response {
        Response::UpToDate { peers } => (Vec::new(), peers),
        Response::Changes { changes, peers, .. } => (changes, peers),
        Response::UnknownBase => return,
    };
    // The node bans the sender of an oversized page and reads nothing of it.
    if changes.len() > MAX_PAGE_CHANGES {
        return;
    }
    for p in &peers {
        let _ = p.peer.parse::<libp2p::PeerId>();
        for a in p.addrs.iter().take(ADDRS_PER_PEER) {
            let _ = a.parse::<libp2p::Multiaddr>();
        }
    }
    let federation = kervan_fuzz::fixture().federation;
    let max = Limits::default().max_change_bytes;
    let mut parsed = Vec::new();
    for envelope in &changes {
        if let Ok(e) = SignedChange::decode(envelope, max)
            && let Ok(change) = e.parse()
        {
            let own = match e.vouched_by() {
                Some(by) => Own::Vouched(by),
                None if e.verify_parsed(&federation, change.clone()).is_ok() => Own::Signed,
                None => Own::Nothing,
            };
            parsed.push((e.doc, change, own));
        }
    }
    let links: Vec<Link<'_>> = parsed
        .iter()
        .filter_map(|(doc, change, own)| {
            Some(Link {
                doc,
                hash: Hash::from(change.hash()),
                actor: Actor::from_bytes(change.actor_id().to_bytes())?,
                deps: change.deps().iter().map(|d| Hash::from(*d)).collect(),
                start_op: change.start_op().get(),
                own: *own,
            })
        })
        .collect();
    let vouched = vouch(&links);
    assert_eq!(vouched.len(), links.len());
    for (l, v) in links.iter().zip(vouched) {
        assert!(
            !v || matches!(l.own, Own::Vouched(_)),
            "only a vouched change is vouched for"
        );
    }
}

//! Fuzzes a real node's import path: bytes handed to `Replica::import` (what `kervan import`
//! and `POST /v1/bundle` do with a file, and what a sync page's envelopes go through in
//! `ingest`), on one replica over sled in a temporary directory that lives as long as the
//! process and starts with the fixture federation imported.
//!
//! It proves, for any bytes and whatever earlier inputs did to the replica:
//! - `Bundle::decode` with the node's limits never panics, and a bundle has one encoding;
//! - the import never panics and never fails with a replica error (storage, Automerge, a
//!   corrupt snapshot): only the bundle's framing or federation may refuse it whole;
//! - a refused bundle, and a bundle whose every entry is refused before the rules judge it
//!   (malformed, unparsable, unsigned, or refused before), leave the accepted set, the stored
//!   changes and the pending queue as they were;
//! - the replica stays usable: after every input the genesis is still a duplicate and the
//!   state digest is readable.
//!
//! The replica is shared by the inputs of the process (a fresh one replaces it every
//! [`INPUTS_PER_REPLICA`] inputs, to bound sled's files), so its state drifts as seeds are
//! accepted, refused or frozen: a crash may need the inputs before it. libFuzzer prints the
//! input that crashed; replaying it on a fresh process is the first step.

#![no_main]

use std::sync::{Mutex, OnceLock, PoisonError};

use kervan_fuzz::TempReplica;
use kervan_node::Outcome;
use kervan_node::replica::{ImportError, MAX_BUNDLE_BYTES};
use kervan_node::{Replica, SledStore, Store};
use kervan_protocol::envelope::ENVELOPE_OVERHEAD;
use kervan_protocol::{Bundle, Hash, Limits};
use libfuzzer_sys::fuzz_target;

/// Inputs one replica takes before a fresh one replaces it. Every import flushes sled, whose
/// log grows by some 200 bytes an input: 100,000 inputs are about 20 MB, so a run of hours
/// stays bounded in memory on tmpfs while the state still drifts for a long while.
const INPUTS_PER_REPLICA: u64 = 100_000;

/// The process's replica and how many inputs it has taken.
struct Shared {
    inputs: u64,
    replica: TempReplica,
}

fn shared() -> &'static Mutex<Shared> {
    static SHARED: OnceLock<Mutex<Shared>> = OnceLock::new();
    SHARED.get_or_init(|| {
        Mutex::new(Shared {
            inputs: 0,
            replica: kervan_fuzz::open_replica("bundle_import"),
        })
    })
}

/// What an import that accepts nothing must not change.
fn state(r: &Replica<SledStore>) -> (Hash, usize, usize) {
    (r.digest(), r.store().change_count(), r.pending_count())
}

fuzz_target!(|data: &[u8]| kervan_fuzz::run(|| one(data)));

/// One input.
fn one(data: &[u8]) {
    let max_entry = Limits::default().max_change_bytes + ENVELOPE_OVERHEAD;
    let decoded = Bundle::decode(data, MAX_BUNDLE_BYTES, max_entry);
    if let Ok(bundle) = &decoded {
        assert_eq!(bundle.encode(), data, "a bundle has exactly one encoding");
    }

    // A panic in an earlier input ends the process, so a poisoned lock never reaches here
    // with a half-done import; take it anyway rather than add a second failure.
    let mut guard = shared().lock().unwrap_or_else(PoisonError::into_inner);
    guard.inputs += 1;
    if guard.inputs > INPUTS_PER_REPLICA {
        // The old replica closes and its directory goes once the new one is in place.
        guard.replica = kervan_fuzz::open_replica("bundle_import");
        guard.inputs = 1;
    }
    let r = &mut guard.replica.replica;
    let federation = r.federation();
    let before = state(r);
    match r.import(data, "fuzz") {
        Ok(reports) => {
            let bundle = decoded.expect("the replica imported a bundle that does not decode");
            assert_eq!(bundle.federation, federation);
            assert_eq!(reports.len(), bundle.entries.len(), "one report per entry");
            let judged = reports.iter().any(|rep| match &rep.outcome {
                Outcome::Duplicate => false,
                Outcome::Rejected { code, .. } => !kervan_fuzz::refused_before_judging(code),
                Outcome::Accepted | Outcome::Pending { .. } => true,
            });
            if !judged {
                assert_eq!(
                    state(r),
                    before,
                    "entries refused before judging changed the replica: {reports:?}"
                );
            }
        }
        Err(ImportError::Decode(e)) => {
            assert_eq!(decoded.err(), Some(e));
            assert_eq!(state(r), before, "a refused bundle changed the replica");
        }
        Err(ImportError::Federation { found, expected }) => {
            assert_eq!(expected, federation);
            assert_ne!(found, federation);
            assert_eq!(state(r), before, "a refused bundle changed the replica");
        }
        Err(ImportError::Replica(e)) => panic!("an import failed inside the replica: {e}"),
    }

    let genesis = kervan_fuzz::fixture().envelopes[0].clone();
    let again = r
        .ingest(vec![genesis], "fuzz")
        .unwrap_or_else(|e| panic!("the replica is unusable after an import: {e}"));
    assert!(
        matches!(again.as_slice(), [rep] if rep.outcome == Outcome::Duplicate),
        "the genesis is a duplicate after any import: {again:?}"
    );
}

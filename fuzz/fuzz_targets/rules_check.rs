//! Fuzzes the validation rules (`rules::check`, `rules::check_verified`) against the fixture
//! federation: two registered parks with their ledgers, records, objects, causal infos and a
//! second device, in a [`kervan_fuzz::MemoryContext`].
//!
//! Each input is read two ways:
//! - as raw Automerge change bytes. A hostile member signs whatever it likes, so the target
//!   skips only the signature: the bytes go through the same parse and size checks as
//!   `rules::verify_parsed`, then `check_verified` in every document (the federation, both
//!   ledgers and the ledger of a park nobody registered). Unsigned, they must never verify;
//! - as a signed envelope (`SignedChange::decode`), through the full `rules::check`, and
//!   through `check_verified` as if its signature held.
//!
//! It proves, for any change:
//! - the rules never panic, whatever the ops, preds, deps, actors, keys and values;
//! - an unsigned change never passes `rules::verify`;
//! - an accepted change is what it claims (its hash, its actor at its seq in its clock),
//!   Automerge applies it to the document the context describes, and that document saves and
//!   loads back with the same heads: the rules never accept a change that would stop every node
//!   (ARCHITECTURE §11, "Automerge apply errors are fatal"), nor one that would corrupt its
//!   snapshot.

#![no_main]

use automerge::ReadDoc;
use kervan_fuzz::{Fixture, fixture};
use kervan_protocol::rules::{self, Context};
use kervan_protocol::{Actor, DocId, Hash, ParkId, SignedChange, Verdict, Verified};
use libfuzzer_sys::fuzz_target;

/// A park the fixture does not register.
const UNKNOWN_PARK: &str = "zz-unknown-park";

fuzz_target!(|data: &[u8]| kervan_fuzz::run(|| one(data)));

/// One input.
fn one(data: &[u8]) {
    let fx = fixture();
    let mut docs = vec![DocId::Federation];
    docs.extend(fx.parks().cloned().map(DocId::Ledger));
    docs.push(DocId::Ledger(
        UNKNOWN_PARK.parse::<ParkId>().expect("a valid park id"),
    ));

    // Raw change bytes, signed by nobody.
    let unsigned = SignedChange {
        doc: DocId::Federation,
        change: data.to_vec(),
        proof: kervan_protocol::Proof::Signature([0; 64]),
    };
    assert!(
        rules::verify(&unsigned, &fx.context).is_err(),
        "a change with a zero signature verified"
    );
    if let Some(verified) = as_if_signed(&unsigned) {
        for doc in &docs {
            judge(fx, doc, verified.clone());
        }
    }

    // A signed envelope.
    let limits = fx.context.limits();
    if let Ok(envelope) = SignedChange::decode(data, limits.max_change_bytes) {
        if let Verdict::Accept(checked) = rules::check(&envelope, &fx.context) {
            assert_applies(fx, &envelope.doc, &checked.change);
        }
        if let Some(verified) = as_if_signed(&envelope) {
            judge(fx, &envelope.doc, verified);
        }
    }
}

/// `rules::verify_parsed` without the signature: what `check_verified` may assume of a change
/// a registered device signed.
fn as_if_signed(envelope: &SignedChange) -> Option<Verified> {
    let limits = fixture().context.limits();
    if envelope.change.len() > limits.max_change_bytes {
        return None;
    }
    let change = envelope.parse().ok()?;
    if !change.extra_bytes().is_empty() || change.len() > limits.max_ops {
        return None;
    }
    let actor = Actor::from_bytes(change.actor_id().to_bytes())?;
    let hash = Hash::from(change.hash());
    Some(Verified {
        change,
        actor,
        hash,
    })
}

fn judge(fx: &Fixture, doc: &DocId, verified: Verified) {
    let (hash, actor, seq) = (verified.hash, verified.actor, verified.change.seq());
    if let Verdict::Accept(checked) = rules::check_verified(doc, verified, &fx.context) {
        assert_eq!(checked.hash, hash);
        assert_eq!(&checked.doc, doc);
        assert_eq!((checked.info.actor, checked.info.seq), (actor, seq));
        assert_eq!(checked.info.clock.get(&actor), Some(&seq));
        assert!(checked.info.past_max_op >= checked.change.max_op());
        assert_applies(fx, doc, &checked.change);
    }
}

/// An accepted change applies to the document as the context knows it, is then in it, and
/// the document saves and loads again with the same heads, as a replica's snapshot does.
fn assert_applies(fx: &Fixture, doc: &DocId, change: &automerge::Change) {
    let mut am = fx.docs.get(doc).cloned().unwrap_or_default();
    if let Err(e) = am.apply_changes([change.clone()]) {
        panic!("the rules accepted a change of {doc} that Automerge refuses: {e}");
    }
    assert!(
        am.get_change_by_hash(&change.hash()).is_some(),
        "an accepted change of {doc} waits in Automerge for dependencies"
    );
    let heads = am.get_heads();
    match automerge::Automerge::load(&am.save()) {
        Ok(loaded) => assert_eq!(
            loaded.get_heads(),
            heads,
            "{doc} loads with other heads than it was saved with"
        ),
        Err(e) => panic!("{doc} with an accepted change saves but does not load: {e}"),
    }
}

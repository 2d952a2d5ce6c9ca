//! Fuzzes the signed-change envelope (`SignedChange::decode`), the first thing a node does with
//! bytes from gossip, a sync page or a bundle.
//!
//! It proves, for any bytes:
//! - decoding with the protocol's limit never panics and never allocates past the input;
//! - an envelope has exactly one encoding: whatever decodes re-encodes to the same bytes, and
//!   decoding that gives the same envelope back;
//! - parsing the change and verifying the signature (under the fixture's federation and the
//!   golden vectors' one) never panic, and a change that parses has a hash Automerge agrees on.

#![no_main]

use kervan_protocol::{FederationId, Hash, Limits, SignedChange};
use libfuzzer_sys::fuzz_target;

/// The federation of `protocol/testdata/envelope-v1.json`, which the corpus also holds.
const GOLDEN_FEDERATION: FederationId = FederationId(Hash([9; 32]));

fuzz_target!(|data: &[u8]| kervan_fuzz::run(|| one(data)));

/// One input.
fn one(data: &[u8]) {
    let max = Limits::default().max_change_bytes;
    let Ok(envelope) = SignedChange::decode(data, max) else {
        return;
    };
    let encoded = envelope.encode();
    assert_eq!(
        encoded, data,
        "a decoded envelope must re-encode to the bytes it came from"
    );
    let again = SignedChange::decode(&encoded, max).expect("a re-encoded envelope decodes");
    assert_eq!(again, envelope, "decode(encode(x)) must be x");

    let Ok(change) = envelope.parse() else {
        return;
    };
    let hash = Hash::from(change.hash());
    for federation in [kervan_fuzz::fixture().federation, GOLDEN_FEDERATION] {
        if let Ok(verified) = envelope.verify_parsed(&federation, change.clone()) {
            assert_eq!(verified.hash, hash);
            assert_eq!(
                verified.actor.to_bytes().as_slice(),
                change.actor_id().to_bytes()
            );
        }
    }
}

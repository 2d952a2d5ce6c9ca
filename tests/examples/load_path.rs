//! Whether a fresh park could catch up by loading a saved document instead of applying every
//! change: on one park's 10k-record ledger, the time of Automerge's `load` of the saved
//! document, of `get_changes` on the loaded document (the changes and their hashes, which the
//! rules and the store would need), and of one `apply_changes` of the same changes into an
//! empty document (what a catch-up does now, in pages). Also the time of `save` (what a
//! snapshot costs the replica's thread) against a `clone` of the document (what handing the
//! save to another thread would cost it). Medians of five rounds; a probe for choosing a
//! design, not a target.
//!
//! `cargo run --release -p kervan-tests --example load_path`

use std::time::Instant;

use automerge::AutoCommit;
use kervan_tests::median;

fn main() {
    let changes = kervan_tests::sample_ledger(10_000);
    let mut doc = AutoCommit::new();
    doc.apply_changes(changes.clone()).expect("apply");
    let saved = doc.save();
    let (mut load, mut get, mut apply) = (Vec::new(), Vec::new(), Vec::new());
    let (mut save, mut clone) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        let mut loaded = AutoCommit::load(&saved).expect("load");
        load.push(t.elapsed());
        let t = Instant::now();
        let got = loaded.get_changes(&[]);
        get.push(t.elapsed());
        assert_eq!(got.len(), changes.len(), "every change comes back");
        let batch = changes.clone();
        let t = Instant::now();
        let mut fresh = AutoCommit::new();
        fresh.apply_changes(batch).expect("apply");
        apply.push(t.elapsed());
        let t = Instant::now();
        let again = doc.save();
        save.push(t.elapsed());
        assert_eq!(again, saved, "the same document saves the same");
        let t = Instant::now();
        let mut copy = doc.clone();
        clone.push(t.elapsed());
        assert_eq!(
            copy.get_heads(),
            doc.get_heads(),
            "the copy has the same heads"
        );
    }
    println!(
        "{} changes, saved document {} B: load {:?}, get_changes after load {:?}, one apply_changes into an empty document {:?}; save {:?}, clone {:?}",
        changes.len(),
        saved.len(),
        median(load),
        median(get),
        median(apply),
        median(save),
        median(clone)
    );
}

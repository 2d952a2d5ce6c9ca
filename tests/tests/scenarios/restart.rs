use kervan_node::Collection;
use kervan_node::Store;
use kervan_node::replica::Outcome;
use kervan_node::sample::Sample;
use kervan_tests::{FOUNDING, Federation};

/// Every write the replica acknowledged is there after the node is dropped without a clean
/// shutdown (no final snapshot) and opened again.
#[test]
fn restart_recovers_every_acknowledged_change() {
    let mut fed = Federation::founding(1);
    let park = fed.park(0);
    let mut sample = Sample::new(1);
    let mut ids = Vec::new();
    for _ in 0..25 {
        ids.push(
            park.replica()
                .create(Collection::Startups, None, &sample.startup("KZ"))
                .expect("acknowledged write"),
        );
    }
    let digest = park.digest();
    let view = park.view();
    park.restart();
    assert_eq!(park.digest(), digest);
    assert_eq!(park.view(), view);
    for id in &ids {
        assert!(park.replica().index().startup(id).is_some(), "{id} lost");
    }
}

/// With snapshots every 7 changes, a restart loads a snapshot and checks the tail after it;
/// a rebuild replays every stored change from nothing. Both give the same state.
#[test]
fn snapshot_plus_tail_equals_full_replay() {
    let mut fed = Federation::with(&FOUNDING[..1], |c| c.store.snapshot_every = 7);
    let park = fed.park(0);
    let mut sample = Sample::new(2);
    for i in 0..30 {
        let id = park
            .replica()
            .create(Collection::Startups, None, &sample.startup("KZ"))
            .expect("write");
        if i % 5 == 0 {
            park.replica()
                .update(
                    Collection::Startups,
                    &id,
                    &serde_json::json!({"stage": "growth"}),
                )
                .expect("update");
        }
        if i % 9 == 0 {
            park.replica()
                .remove(Collection::Startups, &id)
                .expect("remove");
        }
    }
    let digest = park.digest();
    let view = park.view();
    let ledger = format!("park/{}", park.id).parse().expect("doc id");
    let snapshot = park.replica().store().snapshot(&ledger).expect("read");
    assert!(snapshot.is_some(), "a snapshot was written");

    park.restart();
    assert_eq!(park.digest(), digest, "snapshot + tail");
    assert_eq!(park.view(), view, "snapshot + tail");

    park.replica().rebuild().expect("rebuild");
    assert_eq!(park.digest(), digest, "full replay");
    assert_eq!(park.view(), view, "full replay");

    // And the restarted node keeps writing with the next seq.
    park.replica()
        .create(Collection::Startups, None, &sample.startup("KZ"))
        .expect("write after restart");
}

/// Changes received from peers are applied and visible at once, and flushed when the replica
/// actor asks: after that flush they survive a restart like any other.
#[test]
fn received_changes_are_visible_at_once_and_durable_after_the_deferred_flush() {
    let mut fed = Federation::founding(2);
    let mut sample = Sample::new(3);
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(
            fed.park(0)
                .replica()
                .create(Collection::Startups, None, &sample.startup("KZ"))
                .expect("write"),
        );
    }
    let bundle = fed.park(0).export();
    let park = fed.park(1);
    assert!(park.replica().unflushed_for().is_none());
    let reports = park
        .replica()
        .ingest_received(kervan_tests::entries(&bundle), "peer")
        .expect("ingest");
    assert!(reports.iter().any(|r| r.outcome == Outcome::Accepted));
    assert!(park.replica().unflushed_for().is_some(), "the flush waits");
    for id in &ids {
        assert!(
            park.replica().index().startup(id).is_some(),
            "{id} not visible"
        );
    }
    park.replica().flush_received().expect("flush");
    assert!(park.replica().unflushed_for().is_none());
    let digest = park.digest();
    park.restart();
    assert_eq!(park.digest(), digest);
    for id in &ids {
        assert!(park.replica().index().startup(id).is_some(), "{id} lost");
    }
    // A flushing ingest (a local write) leaves nothing waiting either.
    park.replica()
        .create(Collection::Startups, None, &sample.startup("KG"))
        .expect("write");
    assert!(park.replica().unflushed_for().is_none());
}

use kervan_node::Collection;
use kervan_node::Store;
use kervan_node::replica::Outcome;
use kervan_node::sample::Sample;
use kervan_protocol::Hash;
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
    park.replica().wait_for_snapshots();
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

/// Two parks with startups, a program, an application across them and the host's decision,
/// snapshots every 5 changes, and a tail of updates and removals after the last snapshot.
/// Answers park 0's ledger document id, its view and its digest.
fn two_parks_with_a_tail() -> (Federation, kervan_protocol::DocId, serde_json::Value, Hash) {
    let mut fed = Federation::with(&FOUNDING[..2], |c| c.store.snapshot_every = 5);
    let mut sample = Sample::new(4);
    let mut startups = Vec::new();
    for i in 0..2 {
        let country = fed.park(i).country.clone();
        for _ in 0..12 {
            startups.push(
                fed.park(i)
                    .replica()
                    .create(Collection::Startups, None, &sample.startup(&country))
                    .expect("write"),
            );
        }
    }
    let host = fed.park(0).id.to_string();
    fed.park(0)
        .replica()
        .create(
            Collection::Programs,
            Some("residency"),
            &sample.program(&host),
        )
        .expect("program");
    fed.exchange_all();
    let applicant = startups
        .iter()
        .find(|s| s.park() == &fed.parks[1].id)
        .expect("a startup of park 1")
        .to_string();
    let app = fed
        .park(1)
        .replica()
        .create(
            Collection::Applications,
            None,
            &serde_json::json!({"startup": applicant, "program": format!("{host}/residency")}),
        )
        .expect("apply");
    fed.exchange_all();
    fed.park(0)
        .replica()
        .decide(&app, &serde_json::json!({"status": "accepted"}))
        .expect("decide");
    // The tail: an update and a removal in each ledger, after park 0's last snapshot.
    for (i, s) in [(0, &startups[1]), (1, &startups[13])] {
        fed.park(i)
            .replica()
            .update(
                Collection::Startups,
                s,
                &serde_json::json!({"stage": "growth"}),
            )
            .expect("update");
    }
    for (i, s) in [(0, &startups[2]), (1, &startups[14])] {
        fed.park(i)
            .replica()
            .remove(Collection::Startups, s)
            .expect("remove");
    }
    fed.exchange_all();
    let ledger: kervan_protocol::DocId =
        format!("park/{}", fed.parks[0].id).parse().expect("doc id");
    let park = fed.park(0);
    let view = park.view();
    assert_eq!(
        view["applications"][0]["status"], "accepted",
        "the decision is joined"
    );
    let digest = park.digest();
    // The snapshots that came due are saved and written on the snapshot thread: the tests
    // read them from the store.
    park.replica().wait_for_snapshots();
    (fed, ledger, view, digest)
}

/// A ledger's snapshot keeps the query index's copy of its records, and a start indexes them
/// from there instead of reading every record out of Automerge; the tail after the snapshot
/// (updates, removals, another park's decision) is re-read over them. The answers are those of
/// a full replay.
#[test]
fn a_start_indexes_the_records_kept_with_the_snapshots() {
    let (mut fed, _, view, digest) = two_parks_with_a_tail();
    let park = fed.park(0);
    park.restart();
    assert!(
        park.replica().stats().records_from_snapshots > 0,
        "the start read no records from the snapshots"
    );
    assert_eq!(park.digest(), digest);
    assert_eq!(park.view(), view, "snapshot records + tail");

    // A clean shutdown snapshots everything: the next start reads every record from there.
    park.replica().snapshot_all().expect("snapshot");
    park.restart();
    assert_eq!(park.view(), view, "snapshot records alone");

    park.replica().rebuild().expect("rebuild");
    assert_eq!(park.replica().stats().records_from_snapshots, 0);
    assert_eq!(park.view(), view, "full replay");
}

/// A start whose snapshots cover every stored change (after a clean shutdown, or once a start
/// has judged its tail) answers queries from the index it built out of the snapshots' copies
/// while the ledgers' documents still load, and those answers are the full replica's. A start
/// with a tail to judge again loads everything before its first answer.
#[test]
fn a_start_answers_queries_before_the_documents_load_only_with_nothing_left_to_judge() {
    let (mut fed, _, view, digest) = two_parks_with_a_tail();
    let park = fed.park(0);
    // Dropped without its final snapshot: the tail after the last one is judged again.
    park.close();
    let starting = park.dir.open_starting().expect("open");
    assert!(
        !starting.loads_in_background(),
        "a start with a tail answered before its documents loaded"
    );
    assert_eq!(
        kervan_tests::index_view(starting.index()),
        view,
        "with a tail"
    );
    let replica = starting.finish().expect("loaded");
    assert_eq!(replica.digest(), digest, "with a tail");
    // That start snapshotted what it judged: the next one has nothing left to judge.
    drop(replica);
    let starting = park.dir.open_starting().expect("open");
    assert!(
        starting.loads_in_background(),
        "the documents were loaded before the first answer"
    );
    assert_eq!(
        kervan_tests::index_view(starting.index()),
        view,
        "answers while the documents load"
    );
    let mut replica = starting.finish().expect("loaded");
    assert_eq!(replica.digest(), digest);
    assert_eq!(kervan_tests::view(&replica), view);
    // The replica takes writes once its documents are in place, and keeps them.
    let mut sample = Sample::new(5);
    let id = replica
        .create(Collection::Startups, None, &sample.startup("KZ"))
        .expect("write after the start");
    drop(replica);
    assert!(park.replica().index().startup(&id).is_some(), "{id} lost");
}

/// The copy of a ledger's records is derived data, kept outside the store's log: a copy that is
/// unreadable, or made from other changes than the snapshot's (an older copy a crash left
/// behind), is not used, and the start reads the records out of the document instead.
#[test]
fn a_copy_of_the_records_that_does_not_match_is_not_used() {
    let (mut fed, ledger, view, digest) = two_parks_with_a_tail();
    let park = fed.park(0);
    let older = park
        .replica()
        .store()
        .ledger_records(&ledger)
        .expect("read")
        .expect("the ledger's snapshot has a copy of its records");
    park.replica().snapshot_all().expect("snapshot");
    let bytes = park
        .replica()
        .store()
        .ledger_records(&ledger)
        .expect("read")
        .expect("a copy");
    assert_eq!(&bytes[..4], b"KVR\x01");
    assert_ne!(
        older, bytes,
        "the tail changed the ledger after the older copy"
    );
    let from_snapshots =
        |park: &mut kervan_tests::Park| park.replica().stats().records_from_snapshots;
    park.restart();
    let all = from_snapshots(park);
    assert!(all > 0);

    let mut damaged = bytes.clone();
    damaged[4 + 32] = b'#';
    let mut truncated = bytes.clone();
    truncated.truncate(20);
    for (what, copy) in [
        ("damaged", damaged),
        ("truncated", truncated),
        ("older", older),
    ] {
        park.replica()
            .store()
            .put_ledger_records(&ledger, &copy)
            .expect("write");
        park.restart();
        assert_eq!(park.digest(), digest, "{what}");
        assert_eq!(park.view(), view, "records re-read after the {what} copy");
        assert!(from_snapshots(park) < all, "the {what} copy was used");
    }
}

/// A snapshot whose saved document does not load (its bytes damaged on disk), or that is cut
/// short, stops the start with an error naming the document and the store as damaged; nothing
/// panics, and `repair` brings back the same registry from the stored changes.
#[test]
fn a_damaged_snapshot_stops_the_start_and_names_its_document() {
    let (mut fed, ledger, view, digest) = two_parks_with_a_tail();
    let park = fed.park(0);
    park.replica().snapshot_all().expect("snapshot");
    let bytes = park
        .replica()
        .store()
        .snapshot(&ledger)
        .expect("read")
        .expect("the ledger has a snapshot");
    let meta_len = u64::from_be_bytes(bytes[..8].try_into().expect("header")) as usize;
    // The saved document's body, past its header, overwritten.
    let mut body = bytes.clone();
    let start = 8 + meta_len + 16;
    assert!(
        body.len() > start + 64,
        "a saved document follows the metadata"
    );
    body[start..start + 64].fill(0xA5);
    let mut cut = bytes.clone();
    cut.truncate(8 + meta_len / 2);
    for (what, damaged) in [("a damaged body", body), ("a cut snapshot", cut)] {
        park.replica()
            .store()
            .put_snapshot(&ledger, &damaged)
            .expect("write");
        park.replica().store().flush().expect("flush");
        park.close();
        if what == "a damaged body" {
            // The metadata and the copy of the records are sound: the start answers queries
            // from them, and the load of the document then fails, naming it.
            let starting = park.dir.open_starting().expect("the index is built");
            assert!(starting.loads_in_background(), "{what}");
            assert_eq!(kervan_tests::index_view(starting.index()), view, "{what}");
            match starting.finish() {
                Err(e) => assert!(
                    e.to_string()
                        .contains(&format!("snapshot of {ledger} is corrupt")),
                    "{what}: {e}"
                ),
                Ok(_) => panic!("{what}: the start used it"),
            }
        }
        match park.dir.open_replica() {
            Err(kervan_node::data_dir::DataDirError::Damaged { why, .. }) => {
                assert!(
                    why.contains(&format!("snapshot of {ledger} is corrupt")),
                    "{what}: {why}"
                );
            }
            Err(other) => panic!("{what}: not reported as damaged: {other}"),
            Ok(_) => panic!("{what}: the start used it"),
        }
        let repaired = park.dir.repair(false).expect("repair");
        assert!(repaired.needed, "{what}");
        assert_eq!(park.view(), view, "{what}: repaired");
        assert_eq!(park.digest(), digest, "{what}: repaired");
    }
}

/// The replica's thread, started on a replica whose documents load in the background, answers
/// queries from its index (at once, or once loaded: either way the full replica's answers) and
/// runs a write sent right behind them once the documents are in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_thread_answers_queries_and_then_writes_while_it_starts() {
    let (mut fed, _, view, _) = two_parks_with_a_tail();
    let park = fed.park(0);
    park.replica().snapshot_all().expect("snapshot");
    park.close();
    let starting = park.dir.open_starting().expect("open");
    assert!(starting.loads_in_background());
    let kervan_node::actor::Spawned {
        handle,
        thread,
        loaded,
    } = kervan_node::actor::spawn(starting);
    let query = handle.query(kervan_tests::index_view);
    let mut sample = Sample::new(6);
    let startup = sample.startup("KZ");
    let write = handle.call(move |r| r.create(Collection::Startups, None, &startup));
    let (answered, written) = tokio::join!(query, write);
    assert_eq!(answered.expect("runs"), view);
    let id = written.expect("runs").expect("write accepted");
    loaded.await.expect("told").expect("loaded");
    let found = handle
        .query(move |index| index.startup(&id).is_some())
        .await
        .expect("runs");
    assert!(found, "the write is in the index");
    drop(handle);
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .expect("joined")
        .expect("no panic")
        .expect("final snapshot");
}

//! Equivocation: one actor signs two different changes with the same seq. Whatever order a
//! node sees them in, it ends with both as evidence, neither applied, nothing built on them
//! applied, and the same digest as every other node.

use std::collections::BTreeSet;

use automerge::ObjType;
use automerge::transaction::Transactable;
use kervan_node::replica::Outcome;
use kervan_node::sample::Sample;
use kervan_node::{Collection, Replica, SledStore, Store};
use kervan_protocol::{DocId, Hash};
use kervan_tests::{Federation, Forger, entries, view};

fn evidence(r: &Replica<SledStore>) -> BTreeSet<(String, u64, BTreeSet<Hash>)> {
    r.store()
        .evidence()
        .expect("evidence")
        .into_iter()
        .map(|e| (e.doc.to_string(), e.seq, e.hashes.into_iter().collect()))
        .collect()
}

fn create(f: &mut Forger, id: &str, name: &str) -> automerge::Change {
    let startups = f.obj(&["startups"]);
    f.change(|d| {
        let rec = d.put_object(&startups, id, ObjType::Map).expect("put");
        d.put(&rec, "name", name).expect("put");
    })
}

/// Astana Hub's key, as a second actor, signs two different seq-1 changes to its ledger and
/// builds a seq-2 change on the first. Four observers see them in four orders; one of them
/// applies the first and what is built on it before the second arrives, and must take them
/// back. All end in the state of an observer that never saw the forged actor at all.
#[test]
fn equivocation_reaches_the_same_state_and_evidence_in_every_order() {
    let mut fed = Federation::founding(2);
    let mut sample = Sample::new(5);
    for i in 0..2 {
        let country = fed.park(i).country.clone();
        fed.park(i)
            .replica()
            .create(Collection::Startups, None, &sample.startup(&country))
            .expect("create");
    }
    fed.exchange_all();
    let honest: Vec<Vec<u8>> = [0, 1]
        .iter()
        .flat_map(|i| entries(&fed.park(*i).export()))
        .collect();

    let doc = DocId::Ledger(fed.parks[0].id.clone());
    let key = fed.park(0).key();
    let id = fed.id;
    let mut a = Forger::new(fed.park(0), doc, key, id);
    let mut b = a.twin();
    let mut c1 = create(&mut a, "kz-astana-hub/eq-a", "Version A");
    let rec = a.obj(&["startups", "kz-astana-hub/eq-a"]);
    let mut c3 = a.change(|d| d.put(&rec, "city", "Astana").expect("put"));
    let mut c2 = create(&mut b, "kz-astana-hub/eq-b", "Version B");
    assert_eq!((c1.seq(), c2.seq(), c3.seq()), (1, 1, 2));
    let (e1, e2, e3) = (a.sign(&mut c1), b.sign(&mut c2), a.sign(&mut c3));

    let mut clean = fed.observer();
    clean.ingest(honest.clone());
    let digest = clean.replica.digest();
    let expected = view(&clean.replica);

    let orders: [Vec<Vec<Vec<u8>>>; 4] = [
        vec![vec![e1.clone(), e3.clone()], vec![e2.clone()]],
        vec![vec![e2.clone()], vec![e1.clone(), e3.clone()]],
        vec![vec![e1.clone()], vec![e2.clone()], vec![e3.clone()]],
        vec![vec![e3.clone()], vec![e2.clone(), e1.clone()]],
    ];
    let mut evidences = Vec::new();
    for (n, order) in orders.into_iter().enumerate() {
        let mut o = fed.observer();
        o.ingest(honest.clone());
        for batch in order {
            o.ingest(batch);
        }
        assert_eq!(o.replica.digest(), digest, "order {n}");
        assert_eq!(view(&o.replica), expected, "order {n}");
        for id in ["kz-astana-hub/eq-a", "kz-astana-hub/eq-b"] {
            assert!(
                o.replica
                    .index()
                    .startup(&id.parse().expect("id"))
                    .is_none()
            );
        }
        if n == 0 {
            assert!(
                o.replica.stats().rebuilds >= 1,
                "order 0 took an acceptance back"
            );
        }
        // Evidence is the same set of hashes whichever change came first; resending changes nothing.
        evidences.push(evidence(&o.replica));
        let again = o.ingest(vec![e1.clone(), e2.clone(), e3.clone()]);
        assert!(
            again.iter().all(|r| r.outcome == Outcome::Duplicate),
            "{again:?}"
        );
    }
    assert_eq!(evidences[0].len(), 1);

    // A park node that took the first change and what was built on it, then the evidence,
    // keeps the same verdict across a restart from its store.
    let park = fed.park(1);
    park.replica()
        .ingest(vec![e1.clone(), e3.clone()], "peer")
        .expect("ingest");
    park.replica()
        .ingest(vec![e2.clone()], "peer")
        .expect("ingest");
    let digest_before = park.digest();
    park.restart();
    assert_eq!(park.digest(), digest_before);
    assert_eq!(evidence(park.replica()), evidences[0]);
    assert_eq!(view(park.replica()), expected);
    assert!(
        evidences.iter().all(|e| *e == evidences[0]),
        "{evidences:?}"
    );

    // Honest parks go on writing and converging after the fault.
    fed.park(1)
        .replica()
        .create(Collection::Startups, None, &sample.startup("UZ"))
        .expect("create");
    let uz = fed.park(1).export();
    fed.park(0).import(&uz);
    let mut o = fed.observer();
    o.ingest(honest);
    o.ingest(vec![e1, e2, e3]);
    o.ingest(entries(&uz));
    assert_eq!(o.replica.digest(), fed.park(0).digest());
    assert_eq!(view(&o.replica), fed.park(0).view());
}

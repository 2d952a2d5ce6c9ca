//! Vouched changes (DESIGN §6): a sync page carries one signature per actor, over that actor's
//! newest change in it, and the receiver keeps the actor's other changes as vouched for by it.
//! These scenarios move real pages between real replicas through the page's wire form, and
//! check that what arrives vouched is authenticated exactly as a signed change would be, is
//! relayed onward, survives restarts, rebuilds, audits and bundles, and that a vouched change
//! whose voucher is missing, forged or of another actor proves nothing.

use automerge::transaction::Transactable;
use kervan_node::replica::{AuditFilter, Outcome, Report};
use kervan_node::sample::Sample;
use kervan_node::{Collection, Replica, SledStore, Store};
use kervan_protocol::sync::Response;
use kervan_protocol::{DocId, Hash, SignedChange};
use kervan_tests::{Federation, Forger, Park, fingerprint, tally, view};

/// The envelopes of a page as the receiver rebuilds them from the page's wire form.
fn through_the_wire(changes: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let page = Response::Changes {
        changes,
        more: false,
        peers: Vec::new(),
    };
    let wire = serde_json::to_vec(&page).expect("encodes");
    match serde_json::from_slice(&wire).expect("decodes") {
        Response::Changes { changes, .. } => changes,
        other => panic!("not a page: {other:?}"),
    }
}

/// Pulls everything `to` lacks from `from` the way sync does, in pages of about `page_bytes`
/// of envelopes, each through its wire form. Answers the number of pages.
fn pull(from: &mut Park, to: &mut Replica<SledStore>, page_bytes: usize) -> usize {
    for page in 1..=500 {
        let (changes, more) = from
            .replica()
            .sync_page(&to.sync_summary(), page_bytes)
            .expect("a page");
        let reports = to
            .ingest(through_the_wire(changes), "peer")
            .expect("ingest");
        let refused: Vec<&Report> = reports
            .iter()
            .filter(|r| !matches!(r.outcome, Outcome::Accepted | Outcome::Duplicate))
            .collect();
        assert!(refused.is_empty(), "page {page}: {refused:?}");
        if !more {
            return page;
        }
    }
    panic!("no end in 500 pages");
}

/// How many stored changes of `r` are vouched, not signed.
fn vouched(r: &Replica<SledStore>) -> usize {
    r.store()
        .changes()
        .expect("changes")
        .iter()
        .filter(|(_, _, e)| kervan_protocol::envelope::is_vouched(e))
        .count()
}

fn write(park: &mut Park, sample: &mut Sample, n: usize) {
    let country = park.country.clone();
    for _ in 0..n {
        park.replica()
            .create(Collection::Startups, None, &sample.startup(&country))
            .expect("create");
    }
}

/// Astana Hub writes 150 startups and IT Park 5. IT Park catches up with Astana Hub in small
/// pages and keeps most of Astana Hub's changes as vouched; Kyrgyzstan's park then catches up
/// from IT Park alone, in pages of another size, so IT Park relays vouched changes with the
/// signatures it holds. Both end with Astana Hub's registry, every stored change verifies,
/// the audit shows who vouched for what, and the state survives a restart without a final
/// snapshot, a rebuild from the stored changes alone and a bundle into a fresh replica.
#[test]
fn a_park_that_caught_up_relays_what_it_holds_as_vouched() {
    let mut fed = Federation::founding(3);
    let mut sample = Sample::new(41);
    write(fed.park(0), &mut sample, 150);
    write(fed.park(1), &mut sample, 5);
    let (digest, expected, bundle) = {
        let [astana, tashkent, bishkek] = &mut fed.parks[..] else {
            panic!("three parks");
        };
        let pages = pull(astana, tashkent.replica(), 12_000);
        assert!(pages > 5, "{pages} pages: the registry should take several");
        let held = vouched(tashkent.replica());
        // One signature per page for Astana Hub's actor: the rest arrived vouched.
        assert!(
            held >= 150 - pages,
            "{held} vouched of 150 after {pages} pages"
        );
        pull(tashkent, astana.replica(), 1 << 20);
        assert_eq!(tashkent.digest(), astana.digest());

        // Bishkek pulls from Tashkent only, in smaller pages than Astana Hub's: Tashkent
        // can end a page only at a change it holds signed, so its pages run on to one.
        let relayed = pull(tashkent, bishkek.replica(), 7_000);
        assert!(relayed <= pages + 1, "{relayed} pages, {pages} first");
        // Bishkek's own ledger goes back the same way.
        pull(bishkek, tashkent.replica(), 1 << 20);
        pull(tashkent, astana.replica(), 1 << 20);
        assert_eq!(bishkek.digest(), astana.digest());
        assert_eq!(bishkek.view(), astana.view());
        assert!(vouched(bishkek.replica()) > 140);

        for park in [&mut *tashkent, &mut *bishkek] {
            let report = park.replica().verify_all().expect("verify");
            assert!(report.failed.is_empty(), "{:?}", report.failed);
            assert_eq!(report.verified, report.stored);
            let log = park
                .replica()
                .audit_log(&AuditFilter {
                    doc: Some(DocId::Ledger(astana.id.clone())),
                    limit: Some(500),
                    ..AuditFilter::default()
                })
                .expect("audit");
            assert_eq!(log.items.len(), 151, "the ledger's root and 150 startups");
            for e in &log.items {
                match e.vouched_by {
                    Some(by) => {
                        assert_eq!(e.signature, "vouched", "{}", e.hash);
                        assert_ne!(by, e.hash);
                    }
                    None => assert_eq!(e.signature, "valid", "{}", e.hash),
                }
            }
        }

        let digest = astana.digest();
        let expected = astana.view();
        bishkek.restart();
        assert_eq!(
            (bishkek.digest(), bishkek.view()),
            (digest, expected.clone())
        );
        bishkek.replica().rebuild().expect("rebuild");
        assert_eq!(
            (bishkek.digest(), bishkek.view()),
            (digest, expected.clone())
        );
        (digest, expected, bishkek.export())
    };
    let mut fresh = fed.observer();
    let reports = fresh
        .replica
        .import(&bundle, "import")
        .expect("a bundle of this federation");
    assert_eq!(tally(&reports).get("rejected"), None, "{reports:?}");
    assert_eq!(fresh.replica.digest(), digest);
    assert_eq!(view(&fresh.replica), expected);
}

/// The envelopes Astana Hub would send Tashkent now, as Tashkent rebuilds them.
fn page_for(fed: &mut Federation, from: usize, to: usize) -> Vec<Vec<u8>> {
    let summary = fed.park(to).replica().sync_summary();
    let (changes, more) = fed
        .park(from)
        .replica()
        .sync_page(&summary, 1 << 20)
        .expect("a page");
    assert!(!more);
    through_the_wire(changes)
}

/// What park `to` answers to `envelopes` from a peer.
fn send(fed: &mut Federation, to: usize, envelopes: Vec<Vec<u8>>) -> Vec<Report> {
    fed.park(to)
        .replica()
        .ingest(envelopes, "peer")
        .expect("ingest")
}

fn decoded(e: &[u8]) -> SignedChange {
    SignedChange::decode(e, usize::MAX).expect("an envelope")
}

fn rejections(reports: &[Report]) -> Vec<&str> {
    reports
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Rejected { code, .. } => Some(code.as_str()),
            _ => None,
        })
        .collect()
}

/// A page of Astana Hub's ten startups arrives at Tashkent as ten vouched changes and their
/// voucher. Without the voucher, with the voucher's signature forged, with a voucher of another
/// park's actor, or naming as voucher a change that does not have it in its past, every vouched
/// change is refused `unvouched`, and Tashkent keeps nothing of it, remembers no rejection,
/// and takes the genuine page afterwards.
#[test]
fn a_vouched_change_without_a_voucher_that_covers_it_proves_nothing() {
    let mut fed = Federation::founding(2);
    fed.exchange_all();
    let mut sample = Sample::new(7);
    write(fed.park(0), &mut sample, 10);
    write(fed.park(1), &mut sample, 1);
    let page = page_for(&mut fed, 0, 1);
    let (vouched, signed): (Vec<_>, Vec<_>) = page
        .iter()
        .partition(|e| kervan_protocol::envelope::is_vouched(e));
    assert_eq!(
        (vouched.len(), signed.len()),
        (9, 1),
        "one signature for ten changes"
    );
    let voucher = signed[0].clone();
    let vouched: Vec<Vec<u8>> = vouched.into_iter().cloned().collect();
    // Tashkent's own startup: a signed change of another actor, in another document.
    let own = fed.park(1).export();
    let other = kervan_tests::entries(&own)
        .into_iter()
        .rev()
        .find(|e| decoded(e).doc == DocId::Ledger(fed.parks[1].id.clone()))
        .expect("Tashkent's change");
    let other_hash = Hash::from(decoded(&other).parse().expect("parses").hash());
    // A change Astana Hub writes after the voucher: vouched for by a change in its past.
    write(fed.park(0), &mut sample, 1);
    let later = page_for(&mut fed, 0, 1)
        .into_iter()
        .map(|e| decoded(&e))
        .find(|e| e.signature().is_some())
        .expect("the newest change");
    let voucher_hash = Hash::from(decoded(&voucher).parse().expect("parses").hash());
    let mut forged = decoded(&voucher);
    forged.signature_mut().expect("signed")[3] ^= 1;
    let renamed = |by: Hash| -> Vec<Vec<u8>> {
        vouched
            .iter()
            .map(|e| SignedChange::vouched(decoded(e).doc, decoded(e).change, by).encode())
            .collect()
    };
    let before = fingerprint(fed.park(1).replica());
    let rejected_before = fed
        .park(1)
        .replica()
        .store()
        .rejected()
        .expect("rejected")
        .len();
    for (what, batch, refused) in [
        ("no voucher", vouched.clone(), vec!["unvouched"; 9]),
        (
            "a forged voucher",
            [vouched.clone(), vec![forged.encode()]].concat(),
            {
                let mut r = vec!["unvouched"; 9];
                r.push("bad_signature");
                r
            },
        ),
        (
            "a voucher of another actor",
            [renamed(other_hash), vec![other.clone()]].concat(),
            vec!["unvouched"; 9],
        ),
        (
            "a voucher that comes before",
            vec![
                SignedChange::vouched(later.doc.clone(), later.change.clone(), voucher_hash)
                    .encode(),
                voucher.clone(),
            ],
            vec!["unvouched"],
        ),
    ] {
        let reports = fed.park(1).replica().ingest(batch, "peer").expect("ingest");
        assert_eq!(rejections(&reports), refused, "{what}");
        if what != "a voucher that comes before" {
            assert_eq!(fingerprint(fed.park(1).replica()), before, "{what}");
        }
    }
    // Only the forged signature is remembered: the vouched envelopes may be sound elsewhere.
    let rejected = fed.park(1).replica().store().rejected().expect("rejected");
    assert_eq!(rejected.len(), rejected_before + 1, "{rejected:?}");
    // The voucher waited since the last case, for the changes it vouches for.
    let reports = fed.park(1).replica().ingest(page, "peer").expect("ingest");
    assert_eq!(rejections(&reports), Vec::<&str>::new());
    assert_eq!(tally(&reports).get("accepted"), Some(&9), "{reports:?}");
    let astana = DocId::Ledger(fed.parks[0].id.clone());
    assert!(
        fed.park(1)
            .replica()
            .summary()
            .iter()
            .any(|(d, _, _, h)| *d == astana && *h == voucher_hash),
        "the voucher is Astana Hub's head at Tashkent"
    );
}

/// A vouched change is authenticated by its voucher's signature even where the rules refuse
/// the voucher itself: a device of Astana Hub signs two sound changes and a third that writes
/// outside the schema, and sends the first two vouched for by the third. Tashkent accepts the
/// two, refuses the third, and keeps it as proof, so the two are authenticated again after a
/// restart without a final snapshot, after a rebuild, by the audit, and in a bundle.
#[test]
fn a_voucher_the_rules_refuse_still_vouches_and_is_kept_as_proof() {
    let mut fed = Federation::founding(2);
    fed.exchange_all();
    let doc = DocId::Ledger(fed.parks[0].id.clone());
    let key = fed.park(0).key();
    let id = fed.id;
    let mut f = Forger::new(fed.park(0), doc.clone(), key, id);
    let startups = f.obj(&["startups"]);
    let mut changes: Vec<automerge::Change> = ["kz-astana-hub/one", "kz-astana-hub/two"]
        .iter()
        .map(|rec| {
            f.change(|d| {
                let r = d
                    .put_object(&startups, *rec, automerge::ObjType::Map)
                    .expect("put");
                d.put(&r, "name", *rec).expect("put");
            })
        })
        .collect();
    changes.push(f.change(|d| {
        d.put(automerge::ROOT, "bogus", "outside the schema")
            .expect("put");
    }));
    let voucher = f.sign(&mut changes[2]);
    let voucher_hash = Hash::from(changes[2].hash());
    let mut batch: Vec<Vec<u8>> = changes[..2]
        .iter()
        .map(|c| SignedChange::vouched(doc.clone(), c.raw_bytes().to_vec(), voucher_hash).encode())
        .collect();
    batch.push(voucher);
    let reports = fed.park(1).replica().ingest(batch, "peer").expect("ingest");
    assert_eq!(tally(&reports).get("accepted"), Some(&2), "{reports:?}");
    assert_eq!(rejections(&reports), vec!["path_not_allowed"]);
    let proofs = fed.park(1).replica().store().proofs().expect("proofs");
    assert_eq!(proofs.len(), 1, "the refused voucher is kept");

    let digest = fed.park(1).digest();
    let expected = fed.park(1).view();
    let head = (doc.clone(), f.actor, 2, Hash::from(changes[1].hash()));
    let holds = |r: &Replica<SledStore>| r.summary().contains(&head);
    assert!(
        holds(fed.park(1).replica()),
        "the second change is the actor's head"
    );
    fed.park(1).restart();
    assert!(holds(fed.park(1).replica()), "and still after a restart");
    assert_eq!(
        (fed.park(1).digest(), fed.park(1).view()),
        (digest, expected.clone())
    );
    fed.park(1).replica().rebuild().expect("rebuild");
    assert_eq!(
        (fed.park(1).digest(), fed.park(1).view()),
        (digest, expected.clone())
    );
    let report = fed.park(1).replica().verify_all().expect("verify");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let bundle = fed.park(1).export();
    let mut fresh = fed.observer();
    let reports = fresh.replica.import(&bundle, "import").expect("import");
    assert_eq!(
        rejections(&reports),
        vec!["path_not_allowed"],
        "{reports:?}"
    );
    assert_eq!(fresh.replica.digest(), digest);
}

/// Astana Hub's device equivocates at a seq that Tashkent holds as vouched: Tashkent freezes
/// it on the forged change's arrival. Bishkek, which took the forged change first, learns of
/// the fork from Tashkent's next page, which carries the vouched side with the changes up to
/// its voucher; Bishkek freezes the actor too, and both end with the same ledger and evidence.
#[test]
fn a_fork_at_a_vouched_change_travels_with_its_voucher() {
    let mut fed = Federation::founding(3);
    fed.exchange_all();
    let mut sample = Sample::new(9);
    write(fed.park(0), &mut sample, 2);
    let page = page_for(&mut fed, 0, 2);
    fed.park(2).replica().ingest(page, "peer").expect("ingest");
    write(fed.park(0), &mut sample, 3);
    let page = page_for(&mut fed, 0, 1);
    let reports = fed.park(1).replica().ingest(page, "peer").expect("ingest");
    assert_eq!(rejections(&reports), Vec::<&str>::new());

    // The fork: the same actor's seq 4 (the ledger's root is seq 1), built on seq 3.
    let doc = DocId::Ledger(fed.parks[0].id.clone());
    let fork = fork_of(&mut fed, 3);
    let held = fed.park(1).replica().store().changes().expect("changes");
    assert!(
        held.iter().any(|(_, _, e)| {
            kervan_protocol::envelope::is_vouched(e)
                && decoded(e).parse().is_ok_and(|c| c.seq() == 4)
        }),
        "Tashkent holds seq 4 as vouched"
    );
    let reports = send(&mut fed, 1, vec![fork.clone()]);
    assert_eq!(rejections(&reports), vec!["equivocation"]);
    let reports = send(&mut fed, 2, vec![fork]);
    assert_eq!(tally(&reports).get("accepted"), Some(&1));

    // Bishkek pulls from Tashkent: the page carries the evidence, vouched side and voucher.
    let page = page_for(&mut fed, 1, 2);
    assert!(
        page.iter()
            .any(|e| kervan_protocol::envelope::is_vouched(e))
    );
    let reports = fed.park(2).replica().ingest(page, "peer").expect("ingest");
    assert!(
        rejections(&reports).contains(&"equivocation"),
        "{reports:?}"
    );
    let ledger = |r: &Replica<SledStore>| heads(r, &doc);
    let at = |fed: &mut Federation, i: usize| {
        let r = fed.park(i).replica();
        (ledger(r), r.store().evidence().expect("evidence").len())
    };
    let tashkent = at(&mut fed, 1);
    assert_eq!(tashkent.0.len(), 1);
    assert_eq!(tashkent.0[0].0, 3, "the actor is frozen from seq 4");
    assert_eq!(tashkent.1, 1);
    assert_eq!(at(&mut fed, 2), tashkent);
    let report = fed.park(2).replica().verify_all().expect("verify");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
}

/// A change of Astana Hub's device at seq `after + 1` of its ledger, built on its changes up to
/// seq `after`: the other branch of a fork when the device has already written that seq.
fn fork_of(fed: &mut Federation, after: u64) -> Vec<u8> {
    let doc = DocId::Ledger(fed.parks[0].id.clone());
    let identity = fed.park(0).replica().identity().cloned().expect("identity");
    let actor = identity.actor();
    let mut base = automerge::AutoCommit::new();
    let upto: Vec<automerge::Change> = kervan_tests::entries(&fed.park(0).export())
        .iter()
        .map(|e| decoded(e))
        .filter(|e| e.doc == doc)
        .map(|e| e.parse().expect("parses"))
        .filter(|c| c.seq() <= after)
        .collect();
    base.apply_changes(upto).expect("apply");
    base.set_actor(actor.to_automerge());
    let mut f = Forger {
        doc: base,
        doc_id: doc,
        key: identity.key.clone(),
        actor,
        federation: fed.id,
    };
    let startups = f.obj(&["startups"]);
    let mut fork = f.change(|d| {
        let r = d
            .put_object(&startups, "kz-astana-hub/fork", automerge::ObjType::Map)
            .expect("put");
        d.put(&r, "name", "The other branch").expect("put");
    });
    assert_eq!(fork.seq(), after + 1);
    f.sign(&mut fork)
}

/// Tashkent holds Astana Hub's seqs 2 and 3 as vouched for by seq 4, then learns that the
/// device also wrote another seq 4: it freezes the actor from seq 4, so the voucher is
/// excluded while the changes it vouched for stay accepted. Tashkent must still hand those on:
/// Bishkek, which knew nothing of Astana Hub's ledger, catches up from Tashkent alone to the
/// same ledger and evidence, and a bundle of Tashkent's brings the vouched changes, with their
/// voucher, into a fresh replica.
#[test]
fn a_voucher_excluded_by_a_later_fork_still_vouches_for_what_it_covered() {
    let mut fed = Federation::founding(3);
    fed.exchange_all();
    let mut sample = Sample::new(17);
    write(fed.park(0), &mut sample, 3);
    let page = page_for(&mut fed, 0, 1);
    let reports = fed.park(1).replica().ingest(page, "peer").expect("ingest");
    assert_eq!(rejections(&reports), Vec::<&str>::new());
    let doc = DocId::Ledger(fed.parks[0].id.clone());
    let seqs = |r: &Replica<SledStore>, vouched: bool| -> Vec<u64> {
        let mut seqs: Vec<u64> = r
            .store()
            .changes()
            .expect("changes")
            .iter()
            .filter(|(d, _, e)| *d == doc && kervan_protocol::envelope::is_vouched(e) == vouched)
            .map(|(_, _, e)| decoded(e).parse().expect("parses").seq())
            .collect();
        seqs.sort();
        seqs
    };
    assert_eq!(seqs(fed.park(1).replica(), true), vec![2, 3]);

    let fork = fork_of(&mut fed, 3);
    let reports = fed
        .park(1)
        .replica()
        .ingest(vec![fork], "peer")
        .expect("ingest");
    assert_eq!(rejections(&reports), vec!["equivocation"]);
    let ledger = |r: &Replica<SledStore>| heads(r, &doc);
    let tashkent = ledger(fed.park(1).replica());
    assert_eq!(tashkent.len(), 1);
    assert_eq!(tashkent[0].0, 3, "the actor is frozen from seq 4");

    // Bishkek knows Astana Hub's ledger only by its root: it pulls from Tashkent alone.
    let fresh_start = fed.park(2).replica().sync_summary();
    assert!(fresh_start.digest != fed.park(1).replica().sync_summary().digest);
    for _ in 0..5 {
        if fed.park(2).replica().digest() == fed.park(1).replica().digest() {
            break;
        }
        let page = page_for(&mut fed, 1, 2);
        let reports = fed.park(2).replica().ingest(page, "peer").expect("ingest");
        assert!(!rejections(&reports).contains(&"unvouched"), "{reports:?}");
    }
    let bishkek = fed.park(2).replica();
    assert_eq!(ledger(bishkek), tashkent);
    assert_eq!(seqs(bishkek, true), vec![2, 3]);
    assert_eq!(bishkek.store().evidence().expect("evidence").len(), 1);
    let report = bishkek.verify_all().expect("verify");
    assert!(report.failed.is_empty(), "{:?}", report.failed);

    let bundle = fed.park(1).export();
    let mut fresh = fed.observer();
    let reports = fresh.replica.import(&bundle, "import").expect("a bundle");
    assert!(!rejections(&reports).contains(&"unvouched"), "{reports:?}");
    assert_eq!(seqs(&fresh.replica, true), vec![2, 3]);
    // A bundle carries accepted changes and what authenticates them, not the evidence of a
    // fork: the fresh replica takes the voucher as the actor's seq 4 until it syncs.
    assert_eq!(seqs(&fresh.replica, false), vec![1, 4]);
    let report = fresh.replica.verify_all().expect("verify");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
}

/// The seq and hash of each head of `doc` in `r`'s summary.
fn heads(r: &Replica<SledStore>, doc: &DocId) -> Vec<(u64, Hash)> {
    r.summary()
        .into_iter()
        .filter(|(d, ..)| d == doc)
        .map(|(_, _, seq, hash)| (seq, hash))
        .collect()
}

/// An export `--since` leaves out what is older, but takes back an older change that lies
/// between a vouched change it exports and its voucher, and with it what authenticates that
/// change. A device whose clock runs behind (its changes dated a year ago) writes F0, then F1
/// between two of Astana Hub's changes P1 and P2, then F2 beside P2. Tashkent catches up in
/// one page, so it holds P1 vouched by P2 and F1 vouched by F2. Its bundle since an hour ago
/// must carry F1, which P2 depends on, and F2, F1's voucher, though both are old; not F0,
/// which Bishkek already holds. Bishkek imports it to Tashkent's ledger.
#[test]
fn an_export_since_carries_the_voucher_of_an_old_change_it_takes_back() {
    let mut fed = Federation::founding(3);
    fed.exchange_all();
    let mut sample = Sample::new(23);
    let doc = DocId::Ledger(fed.parks[0].id.clone());
    let (key, id) = (fed.park(0).key(), fed.id);
    let mut behind = Forger::new(fed.park(0), doc.clone(), key, id);
    let startups = behind.obj(&["startups"]);
    let dated = |f: &mut Forger, n: usize| {
        let name = format!("kz-astana-hub/dated-{n}");
        let mut change = f.change(|d| {
            let r = d
                .put_object(&startups, name.as_str(), automerge::ObjType::Map)
                .expect("put");
            d.put(&r, "name", "Dated a year ago").expect("put");
        });
        let envelope = f.sign(&mut change);
        (change.hash(), envelope)
    };
    let accepted = |park: &mut Park, envelope: &[u8]| {
        let reports = park
            .replica()
            .ingest(vec![envelope.to_vec()], "peer")
            .expect("ingest");
        assert_eq!(tally(&reports).get("accepted"), Some(&1), "{reports:?}");
    };

    // F0: old history every park holds.
    let (f0, e0) = dated(&mut behind, 0);
    for park in &mut fed.parks {
        accepted(park, &e0);
    }
    write(fed.park(0), &mut sample, 1); // P1
    behind.catch_up(fed.park(0));
    let (f1, e1) = dated(&mut behind, 1); // after P1
    accepted(fed.park(0), &e1);
    write(fed.park(0), &mut sample, 1); // P2, after F1
    let (f2, e2) = dated(&mut behind, 2); // beside P2
    accepted(fed.park(0), &e2);

    let page = page_for(&mut fed, 0, 1);
    let reports = fed.park(1).replica().ingest(page, "peer").expect("ingest");
    assert_eq!(rejections(&reports), Vec::<&str>::new());
    let f1_held = fed
        .park(1)
        .replica()
        .store()
        .changes()
        .expect("changes")
        .into_iter()
        .map(|(_, _, e)| decoded(&e))
        .find(|e| e.parse().is_ok_and(|c| c.hash() == f1))
        .expect("Tashkent holds F1");
    assert_eq!(
        f1_held.vouched_by().map(|h| h.0),
        Some(f2.0),
        "F1 is held as vouched for by F2"
    );

    let an_hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
        - 3600;
    let bundle = fed
        .park(1)
        .replica()
        .export(Some(an_hour_ago))
        .expect("export");
    let exported: Vec<automerge::ChangeHash> = bundle
        .entries
        .iter()
        .map(|e| decoded(e).parse().expect("parses").hash())
        .collect();
    assert!(
        exported.contains(&f1),
        "F1, between P1 and P2, is taken back"
    );
    assert!(exported.contains(&f2), "F2, F1's voucher, travels with it");
    assert!(!exported.contains(&f0), "F0 is older and nothing needs it");

    let reports = fed
        .park(2)
        .replica()
        .import(&bundle.encode(), "import")
        .expect("a bundle");
    let outcomes = tally(&reports);
    assert!(
        outcomes
            .keys()
            .all(|k| ["accepted", "duplicate"].contains(k)),
        "{reports:?}"
    );
    let tashkent = heads(fed.park(1).replica(), &doc);
    assert_eq!(heads(fed.park(2).replica(), &doc), tashkent);
    assert_eq!(fed.park(2).digest(), fed.park(1).digest());
}

/// A device restored from an old backup writes its first seq again after it had written 2,100
/// changes, which Tashkent holds as vouched for by the last of them. The evidence of that fork
/// is one side's whole run up to its voucher and the other side: more than the half of a page
/// that evidence may fill, so it goes whole, alone, or not at all. Bishkek, which knew nothing
/// of the device but its change after the restore, pulls from Tashkent alone and ends with the
/// same ledger and evidence, with no change refused as unvouched (a page cut inside the run
/// drops the voucher); the evidence of a second, small fork, which then no longer fits beside
/// the first, arrives too.
#[test]
fn the_evidence_of_a_fork_behind_a_long_vouched_run_travels_whole() {
    const RUN: usize = 2100;
    let mut fed = Federation::founding(3);
    fed.exchange_all();
    let doc = DocId::Ledger(fed.parks[0].id.clone());
    let (key, id) = (fed.park(0).key(), fed.id);
    let mut device = Forger::new(fed.park(0), doc.clone(), key, id);
    let mut restored = device.twin();
    // Another device of the park, beside the first's run.
    let mut other = Forger::new(fed.park(0), doc.clone(), device.key.clone(), id);
    let mut twin = other.twin();
    let startups = device.obj(&["startups"]);
    let run: Vec<Vec<u8>> = (0..RUN)
        .map(|n| {
            let mut change = device.change(|d| {
                let r = d
                    .put_object(
                        &startups,
                        format!("kz-astana-hub/run-{n}").as_str(),
                        automerge::ObjType::Map,
                    )
                    .expect("put");
                d.put(&r, "name", "Before the backup").expect("put");
            });
            device.sign(&mut change)
        })
        .collect();
    let reports = fed.park(0).replica().ingest(run, "device").expect("ingest");
    assert_eq!(
        tally(&reports).get("accepted"),
        Some(&RUN),
        "{:?}",
        tally(&reports)
    );
    let page = page_for(&mut fed, 0, 1);
    let reports = fed.park(1).replica().ingest(page, "peer").expect("ingest");
    assert_eq!(rejections(&reports), Vec::<&str>::new());
    assert!(vouched(fed.park(1).replica()) >= RUN - 1);

    let mut again = restored.change(|d| {
        let r = d
            .put_object(
                &startups,
                "kz-astana-hub/after-restore",
                automerge::ObjType::Map,
            )
            .expect("put");
        d.put(&r, "name", "After the backup").expect("put");
    });
    assert_eq!(again.seq(), 1);
    let again = restored.sign(&mut again);
    let reports = send(&mut fed, 1, vec![again.clone()]);
    assert_eq!(rejections(&reports), vec!["equivocation"]);
    // The restored device's change reached Bishkek first: it took that side.
    let reports = send(&mut fed, 2, vec![again]);
    assert_eq!(tally(&reports).get("accepted"), Some(&1));
    assert_eq!(
        fed.park(1)
            .replica()
            .store()
            .evidence()
            .expect("evidence")
            .len(),
        1
    );
    // A second, small fork, by another device of the park: Tashkent holds both sides,
    // Bishkek one. Whichever fork comes first in the store, neither may keep the other out.
    let sides: Vec<Vec<u8>> = [
        (&mut other, "kz-astana-hub/one"),
        (&mut twin, "kz-astana-hub/two"),
    ]
    .into_iter()
    .map(|(f, name)| {
        let mut change = f.change(|d| {
            let r = d
                .put_object(&startups, name, automerge::ObjType::Map)
                .expect("put");
            d.put(&r, "name", "One of two").expect("put");
        });
        f.sign(&mut change)
    })
    .collect();
    let reports = send(&mut fed, 1, sides.clone());
    assert_eq!(rejections(&reports), vec!["equivocation"]);
    let reports = send(&mut fed, 2, vec![sides[0].clone()]);
    assert_eq!(tally(&reports).get("accepted"), Some(&1));

    for _ in 0..5 {
        if fed.park(2).replica().digest() == fed.park(1).replica().digest() {
            break;
        }
        let summary = fed.park(2).replica().sync_summary();
        let (changes, _) = fed
            .park(1)
            .replica()
            .sync_page(&summary, 1 << 20)
            .expect("a page");
        assert!(changes.len() <= kervan_protocol::sync::MAX_PAGE_CHANGES);
        let reports = send(&mut fed, 2, through_the_wire(changes));
        assert!(
            !rejections(&reports).contains(&"unvouched"),
            "{:?}",
            tally(&reports)
        );
    }
    assert_eq!(fed.park(2).digest(), fed.park(1).digest());
    assert_eq!(
        heads(fed.park(2).replica(), &doc),
        heads(fed.park(1).replica(), &doc)
    );
    // Each node lists a fork's sides in the order it met them.
    let evidence = |r: &Replica<SledStore>| -> Vec<(u64, std::collections::BTreeSet<Hash>)> {
        r.store()
            .evidence()
            .expect("evidence")
            .into_iter()
            .map(|e| (e.seq, e.hashes.into_iter().collect()))
            .collect()
    };
    assert_eq!(
        evidence(fed.park(2).replica()),
        evidence(fed.park(1).replica())
    );
    let report = fed.park(2).replica().verify_all().expect("verify");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
}

/// Received changes are flushed when the replica is idle, so a crash can leave the first
/// vouched changes of a page stored and their voucher not (the on-disk state is written here
/// as such a crash leaves it). The next start refuses them `unvouched`, records no rejection
/// and keeps running; `audit verify` lists them as failed; the summary does not count them,
/// so the next page brings them again with their voucher, and every one is accepted.
#[test]
fn vouched_changes_a_crash_kept_without_their_voucher_are_taken_again_with_it() {
    let mut fed = Federation::founding(2);
    fed.exchange_all();
    let mut sample = Sample::new(43);
    write(fed.park(0), &mut sample, 6);
    let page = page_for(&mut fed, 0, 1);
    let vouched: Vec<Vec<u8>> = page
        .iter()
        .filter(|e| kervan_protocol::envelope::is_vouched(e))
        .cloned()
        .collect();
    assert_eq!(vouched.len(), 5, "five changes vouched for by the sixth");
    let hash_of = |e: &[u8]| Hash::from(decoded(e).parse().expect("parses").hash());
    let ledger = decoded(&vouched[0]).doc;
    let before = fed.park(1).digest();
    {
        let store = fed.park(1).replica().store();
        for e in &vouched[..3] {
            store.put_change(&ledger, &hash_of(e), e).expect("stored");
        }
        store.flush().expect("flushed");
    }
    fed.park(1).restart();
    let park = fed.park(1);
    assert_eq!(park.digest(), before, "nothing of them was accepted");
    assert_eq!(
        park.replica().stats().rejected.get("unvouched"),
        Some(&3),
        "the start refused each of them"
    );
    for e in &vouched[..3] {
        assert!(
            !park
                .replica()
                .store()
                .is_rejected(Some(&ledger), &hash_of(e))
                .expect("read"),
            "a refusal was recorded"
        );
    }
    let report = park.replica().verify_all().expect("verify");
    assert_eq!(report.failed.len(), 3, "{:?}", report.failed);

    let again = page_for(&mut fed, 0, 1);
    assert_eq!(again.len(), page.len(), "the page brings them again");
    let reports = send(&mut fed, 1, again);
    assert_eq!(tally(&reports).get("accepted"), Some(&page.len()));
    assert_eq!(fed.park(1).digest(), fed.park(0).digest());
    let report = fed.park(1).replica().verify_all().expect("verify");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    fed.park(1).restart();
    assert_eq!(
        fed.park(1).digest(),
        fed.park(0).digest(),
        "after a restart"
    );
}

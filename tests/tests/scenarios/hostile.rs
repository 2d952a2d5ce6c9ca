//! One test per validation rule of DESIGN §5: each hostile or broken change is refused with
//! its own reason (or kept pending, where the rule says so), and nothing else on the node
//! changes.

use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT};
use ed25519_dalek::SigningKey;
use kervan_node::Collection;
use kervan_node::replica::{ImportError, Outcome};
use kervan_node::sample::Sample;
use kervan_protocol::{Bundle, DocId, FederationId, Hash, SignedChange};
use kervan_tests::{Federation, Forger, Park, fingerprint, only, rejected_code};

/// Two parks with a startup each; park 0 is Astana Hub, park 1 IT Park Uzbekistan.
fn federation() -> Federation {
    let mut fed = Federation::founding(2);
    let mut sample = Sample::new(9);
    for i in 0..2 {
        let country = fed.park(i).country.clone();
        fed.park(i)
            .replica()
            .create(
                Collection::Startups,
                Some("first"),
                &sample.startup(&country),
            )
            .expect("create");
    }
    fed.exchange_all();
    fed
}

fn ledger(park: &Park) -> DocId {
    DocId::Ledger(park.id.clone())
}

/// A forger writing park `writer`'s key into the document `doc` as park `holder` holds it.
fn forger(fed: &mut Federation, holder: usize, doc: DocId, writer: usize) -> Forger {
    let key = fed.park(writer).key();
    let id = fed.id;
    Forger::new(fed.park(holder), doc, key, id)
}

/// Sends one envelope to park `to` and checks that it is refused with `code` and that the
/// node is otherwise exactly as before.
fn assert_refused(fed: &mut Federation, to: usize, envelope: Vec<u8>, code: &str) {
    let before = fingerprint(fed.park(to).replica());
    let reports = fed
        .park(to)
        .replica()
        .ingest(vec![envelope], "peer")
        .expect("ingest");
    assert_eq!(rejected_code(only(&reports)), code, "{reports:?}");
    assert_eq!(fingerprint(fed.park(to).replica()), before, "state changed");
    let rejected = fed.park(to).replica().store().rejected().expect("rejected");
    assert!(
        rejected.iter().any(|r| r.code == code),
        "the rejection of {code} is recorded with its reason"
    );
}

use kervan_node::Store as _;

fn startup_put(f: &mut Forger, record: &str, field: &str, value: &str) -> automerge::Change {
    let startups = f.obj(&["startups"]);
    f.change(|d| {
        let rec = d
            .put_object(&startups, record, ObjType::Map)
            .expect("put object");
        d.put(&rec, field, value).expect("put");
    })
}

// ---- rule 1: sizes ----

#[test]
fn rejects_change_larger_than_the_limit() {
    let mut fed = federation();
    let doc = ledger(&fed.parks[0]);
    let mut f = forger(&mut fed, 0, doc, 0);
    // Random letters, so compression cannot shrink the change under the limit.
    let noise: String = (0..200_000)
        .map(|_| char::from(b'a' + rand::random_range(0..26u8)))
        .collect();
    let mut change = startup_put(&mut f, "kz-astana-hub/big", "summary", &noise);
    let env = f.sign(&mut change);
    assert_refused(&mut fed, 1, env, "too_large");
}

#[test]
fn rejects_change_with_too_many_ops() {
    let mut fed = federation();
    let doc = ledger(&fed.parks[0]);
    let mut f = forger(&mut fed, 0, doc, 0);
    let startups = f.obj(&["startups"]);
    let mut change = f.change(|d| {
        let rec = d
            .put_object(&startups, "kz-astana-hub/many", ObjType::Map)
            .expect("put object");
        for i in 0..5000 {
            d.put(&rec, "name", format!("n{i}")).expect("put");
        }
    });
    let env = f.sign(&mut change);
    assert_refused(&mut fed, 1, env, "too_many_ops");
}

#[test]
fn rejects_overlong_string_value() {
    let mut fed = federation();
    let doc = ledger(&fed.parks[0]);
    let mut f = forger(&mut fed, 0, doc, 0);
    let mut change = startup_put(&mut f, "kz-astana-hub/long", "summary", &"y".repeat(20_000));
    let env = f.sign(&mut change);
    assert_refused(&mut fed, 1, env, "invalid_value");
}

// ---- rule 2: decoding, actor, signature ----

#[test]
fn rejects_forged_signature() {
    let mut fed = federation();
    let doc = ledger(&fed.parks[0]);
    let mut f = forger(&mut fed, 0, doc, 0);
    let mut change = startup_put(&mut f, "kz-astana-hub/forged", "name", "Forged");
    let genuine = f.sign(&mut change);
    let mut env = SignedChange::decode(&genuine, usize::MAX).expect("decode");
    env.signature_mut().expect("signed")[10] ^= 0x40;
    assert_refused(&mut fed, 1, env.encode(), "bad_signature");
    // Sent again, it is refused again, not waved through as a duplicate.
    let again = fed
        .park(1)
        .replica()
        .ingest(vec![env.encode()], "peer")
        .expect("ingest");
    assert_eq!(rejected_code(only(&again)), "already_rejected");
    // The corrupted copy came first; the genuine change is still accepted when it arrives.
    let reports = fed
        .park(1)
        .replica()
        .ingest(vec![genuine], "peer")
        .expect("ingest");
    assert_eq!(only(&reports), &Outcome::Accepted);
}

#[test]
fn rejects_change_signed_by_a_key_that_is_not_its_actor() {
    let mut fed = federation();
    let doc = ledger(&fed.parks[0]);
    let mut f = forger(&mut fed, 0, doc.clone(), 0);
    let mut change = startup_put(&mut f, "kz-astana-hub/other-signer", "name", "X");
    // Park 1's key signs a change whose actor is park 0's key.
    let other = fed.park(1).key();
    let env = SignedChange::sign(&fed.id, doc, &mut change, &other).encode();
    assert_refused(&mut fed, 1, env, "bad_signature");
}

#[test]
fn rejects_actor_that_is_not_key_and_epoch() {
    let mut fed = federation();
    let doc = ledger(&fed.parks[0]);
    let mut f = forger(&mut fed, 0, doc, 0);
    f.doc.set_actor(automerge::ActorId::from([7u8; 16]));
    let mut change = startup_put(&mut f, "kz-astana-hub/short-actor", "name", "X");
    let env = f.sign(&mut change);
    assert_refused(&mut fed, 1, env, "bad_actor");
}

#[test]
fn rejects_change_replayed_into_another_document() {
    let mut fed = federation();
    let doc = ledger(&fed.parks[0]);
    let mut f = forger(&mut fed, 0, doc, 0);
    let mut change = startup_put(&mut f, "kz-astana-hub/replayed", "name", "X");
    let mut env = SignedChange::decode(&f.sign(&mut change), usize::MAX).expect("decode");
    env.doc = ledger(&fed.parks[1]);
    assert_refused(&mut fed, 1, env.encode(), "bad_signature");
}

#[test]
fn rejects_change_replayed_from_another_federation() {
    let mut fed = federation();
    let doc = ledger(&fed.parks[0]);
    let mut f = forger(&mut fed, 0, doc, 0);
    f.federation = FederationId(Hash([0xab; 32]));
    let mut change = startup_put(&mut f, "kz-astana-hub/elsewhere", "name", "X");
    let env = f.sign(&mut change);
    assert_refused(&mut fed, 1, env.clone(), "bad_signature");
    // Whole bundles of another federation are refused before any change is looked at.
    let before = fingerprint(fed.park(1).replica());
    let bundle = Bundle {
        federation: f.federation,
        entries: vec![env],
    };
    let err = fed
        .park(1)
        .replica()
        .import(&bundle.encode(), "import")
        .expect_err("another federation");
    assert!(matches!(err, ImportError::Federation { .. }), "{err}");
    assert_eq!(fingerprint(fed.park(1).replica()), before);
}

#[test]
fn rejects_truncated_malformed_and_oversized_bundles() {
    let mut fed = federation();
    let good = fed.park(0).export();
    let before = fingerprint(fed.park(1).replica());
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() - 3].to_vec()),
        ("not a bundle", b"PK\x03\x04 this is a zip file".to_vec()),
        ("empty", Vec::new()),
    ];
    let mut huge = Bundle {
        federation: fed.id,
        entries: vec![vec![1u8; 2 << 20]],
    }
    .encode();
    cases.push(("oversized entry", std::mem::take(&mut huge)));
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"junk");
    cases.push(("trailing bytes", trailing));
    for (what, bytes) in cases {
        let err = fed
            .park(1)
            .replica()
            .import(&bytes, "import")
            .expect_err(what);
        assert!(matches!(err, ImportError::Decode(_)), "{what}: {err}");
        assert_eq!(fingerprint(fed.park(1).replica()), before, "{what}");
    }
    // A bundle whose framing is sound but whose entries are garbage: each entry is refused.
    let bundle = Bundle {
        federation: fed.id,
        entries: vec![b"garbage".to_vec(), vec![1, 10, b'f']],
    };
    let reports = fed
        .park(1)
        .replica()
        .import(&bundle.encode(), "import")
        .expect("framing is sound");
    assert_eq!(reports.len(), 2);
    for r in &reports {
        assert_eq!(rejected_code(&r.outcome), "malformed");
    }
    assert_eq!(fingerprint(fed.park(1).replica()), before);
}

// ---- rule 3: the document exists ----

#[test]
fn keeps_changes_of_an_unregistered_park_pending() {
    let mut fed = federation();
    let key = SigningKey::from_bytes(&[5; 32]);
    let doc: DocId = "park/tr-teknopark-istanbul".parse().expect("doc");
    let mut f = Forger {
        doc: automerge::AutoCommit::new(),
        doc_id: doc,
        key,
        actor: kervan_protocol::Actor {
            key: kervan_protocol::DeviceKey(
                SigningKey::from_bytes(&[5; 32]).verifying_key().to_bytes(),
            ),
            epoch: [1; 8],
        },
        federation: fed.id,
    };
    f.doc.set_actor(f.actor.to_automerge());
    let mut change = f.change(|d| {
        d.put_object(ROOT, "startups", ObjType::Map).expect("put");
    });
    let env = f.sign(&mut change);
    let reports = fed
        .park(1)
        .replica()
        .ingest(vec![env], "peer")
        .expect("ingest");
    match only(&reports) {
        Outcome::Pending { reason } => {
            assert!(reason.contains("tr-teknopark-istanbul"), "{reason}")
        }
        other => panic!("expected pending, got {other:?}"),
    }
}

// ---- rule 4: a registered device of the owner ----

#[test]
fn rejects_change_signed_by_one_park_in_another_parks_ledger() {
    let mut fed = federation();
    let doc = ledger(&fed.parks[1]);
    // Astana Hub's key writes into IT Park Uzbekistan's ledger.
    let mut f = forger(&mut fed, 1, doc, 0);
    let mut change = startup_put(&mut f, "uz-it-park/hijack", "name", "Hijacked");
    let env = f.sign(&mut change);
    assert_refused(&mut fed, 1, env.clone(), "writes_another_park");
    assert_refused(&mut fed, 0, env, "writes_another_park");
}

#[test]
fn unregistered_device_waits_until_its_registration_arrives() {
    let mut fed = federation();
    // A second device of Astana Hub: its own data directory, its own key.
    let (second, second_card) = Park::init("kz-astana-hub", "Astana Hub", "KZ", "Astana");
    let doc = ledger(&fed.parks[0]);
    let id = fed.id;
    let mut f = Forger::new(fed.park(0), doc, second.key(), id);
    let mut change = startup_put(&mut f, "kz-astana-hub/from-second", "name", "Second device");
    let env = f.sign(&mut change);
    let reports = fed
        .park(1)
        .replica()
        .ingest(vec![env], "peer")
        .expect("ingest");
    match only(&reports) {
        Outcome::Pending { reason } => assert!(reason.contains("device"), "{reason}"),
        other => panic!("expected pending, got {other:?}"),
    }
    let digest = fed.park(1).digest();
    // Astana Hub registers the device; the registration reaches Uzbekistan.
    fed.park(0)
        .replica()
        .add_device(&second_card)
        .expect("register");
    let bundle = fed.park(0).export();
    fed.park(1).import(&bundle);
    assert_eq!(fed.park(1).replica().pending_count(), 0);
    assert_ne!(fed.park(1).digest(), digest);
    let record = "kz-astana-hub/from-second".parse().expect("id");
    // The record has only a name, so it does not fit the startup type; the change is applied.
    let applied = fed
        .park(1)
        .replica()
        .summary()
        .iter()
        .any(|(_, a, _, _)| a.key == second.device());
    assert!(applied, "the second device's change was accepted");
    assert!(fed.park(1).replica().index().startup(&record).is_none());
}

// ---- rule 5: causality ----

#[test]
fn waits_for_missing_dependencies_then_applies() {
    let mut fed = federation();
    let doc = ledger(&fed.parks[0]);
    let mut f = forger(&mut fed, 0, doc, 0);
    let mut sample = Sample::new(3);
    let s = sample.startup("KZ");
    let startups = f.obj(&["startups"]);
    let value = kervan_protocol::records::record_to_automerge(
        kervan_protocol::records::STARTUP_FIELDS,
        s.as_object().expect("object"),
    );
    let mut c1 = f.change(|d| {
        d.batch_create_object(&startups, "kz-astana-hub/dep-1", &value, false)
            .expect("create");
    });
    let mut c2 = f.change(|d| {
        d.batch_create_object(&startups, "kz-astana-hub/dep-2", &value, false)
            .expect("create");
    });
    let (e1, e2) = (f.sign(&mut c1), f.sign(&mut c2));
    let reports = fed
        .park(1)
        .replica()
        .ingest(vec![e2], "peer")
        .expect("ingest");
    assert!(
        matches!(only(&reports), Outcome::Pending { .. }),
        "{reports:?}"
    );
    let reports = fed
        .park(1)
        .replica()
        .ingest(vec![e1], "peer")
        .expect("ingest");
    assert_eq!(only(&reports), &Outcome::Accepted);
    assert_eq!(fed.park(1).replica().pending_count(), 0);
    for id in ["kz-astana-hub/dep-1", "kz-astana-hub/dep-2"] {
        assert!(
            fed.park(1)
                .replica()
                .index()
                .startup(&id.parse().expect("id"))
                .is_some()
        );
    }
}

/// Re-encodes a change after `edit` changes its header fields.
fn rewrite(
    change: &automerge::Change,
    edit: impl FnOnce(&mut automerge::ExpandedChange),
) -> automerge::Change {
    let mut e = change.decode();
    edit(&mut e);
    e.hash = None;
    automerge::Change::from(e)
}

#[test]
fn rejects_counter_inflation() {
    let mut fed = federation();
    let doc = ledger(&fed.parks[0]);
    let mut f = forger(&mut fed, 0, doc, 0);
    let change = startup_put(&mut f, "kz-astana-hub/inflated", "name", "Inflated");
    let mut inflated = rewrite(&change, |e| {
        e.start_op = std::num::NonZeroU64::new(e.start_op.get() + 1_000_000).expect("non-zero");
    });
    let env = f.sign(&mut inflated);
    assert_refused(&mut fed, 1, env, "counter_inflation");
}

#[test]
fn rejects_seq_that_skips_the_actors_previous_change() {
    let mut fed = federation();
    let doc = ledger(&fed.parks[0]);
    let mut f = forger(&mut fed, 0, doc, 0);
    let change = startup_put(&mut f, "kz-astana-hub/skipped", "name", "Skipped");
    let mut skipped = rewrite(&change, |e| e.seq += 1);
    let env = f.sign(&mut skipped);
    assert_refused(&mut fed, 1, env, "seq_gap");
}

#[test]
fn rejects_a_second_root_of_a_document() {
    let mut fed = federation();
    // Park 0's device starts a second federation document root.
    let key = fed.park(0).key();
    let mut f = Forger {
        doc: automerge::AutoCommit::new(),
        doc_id: DocId::Federation,
        key: key.clone(),
        actor: kervan_protocol::Actor {
            key: kervan_protocol::DeviceKey(key.verifying_key().to_bytes()),
            epoch: [2; 8],
        },
        federation: fed.id,
    };
    f.doc.set_actor(f.actor.to_automerge());
    let mut change = f.change(|d| {
        d.put(ROOT, "name", "Another federation").expect("put");
    });
    let env = f.sign(&mut change);
    assert_refused(&mut fed, 1, env, "second_root");
    // And a second root of a ledger, by a device that is not the ledger's root device.
    let (second, second_card) = Park::init("kz-astana-hub", "Astana Hub", "KZ", "Astana");
    fed.park(0)
        .replica()
        .add_device(&second_card)
        .expect("register");
    let bundle = fed.park(0).export();
    fed.park(1).import(&bundle);
    f.doc_id = ledger(&fed.parks[0]);
    f.key = second.key();
    f.actor.key = second.device();
    f.doc = automerge::AutoCommit::new();
    f.doc.set_actor(f.actor.to_automerge());
    let mut change = f.change(|d| {
        d.put_object(ROOT, "startups", ObjType::Map).expect("put");
    });
    let env = f.sign(&mut change);
    assert_refused(&mut fed, 1, env, "second_root");
    // Even the root device's own key, under a new store epoch, cannot start the ledger again:
    // the genesis pins the root actor, key and epoch.
    f.key = fed.park(0).key();
    f.actor = kervan_protocol::Actor {
        key: fed.park(0).device(),
        epoch: [3; 8],
    };
    f.doc = automerge::AutoCommit::new();
    f.doc.set_actor(f.actor.to_automerge());
    let mut change = f.change(|d| {
        d.put_object(ROOT, "startups", ObjType::Map).expect("put");
    });
    let env = f.sign(&mut change);
    assert_refused(&mut fed, 1, env, "second_root");
}

// ---- rule 7: the schema and the federation document's path rules ----

#[test]
fn rejects_record_of_another_park_in_own_ledger() {
    let mut fed = federation();
    let doc = ledger(&fed.parks[0]);
    let mut f = forger(&mut fed, 0, doc, 0);
    let mut change = startup_put(&mut f, "uz-it-park/squatted", "name", "Squatter");
    let env = f.sign(&mut change);
    assert_refused(&mut fed, 1, env, "writes_another_park");
}

#[test]
fn rejects_write_to_another_parks_path_in_the_federation_document() {
    let mut fed = federation();
    let mut f = forger(&mut fed, 0, DocId::Federation, 0);
    let uz = f.obj(&["parks", "uz-it-park"]);
    let mut change = f.change(|d| d.put(&uz, "name", "Renamed by Astana").expect("put"));
    let env = f.sign(&mut change);
    assert_refused(&mut fed, 1, env, "writes_another_park");
    // Registering a device for another park is the same offence.
    let mut f = forger(&mut fed, 0, DocId::Federation, 0);
    let devices = f.obj(&["parks", "uz-it-park", "devices"]);
    let mut change = f.change(|d| {
        d.put_object(&devices, "ab".repeat(32), ObjType::Map)
            .expect("put");
    });
    let env = f.sign(&mut change);
    assert_refused(&mut fed, 1, env, "writes_another_park");
}

#[test]
fn accepts_a_park_editing_its_own_profile() {
    let mut fed = federation();
    let mut f = forger(&mut fed, 0, DocId::Federation, 0);
    let kz = f.obj(&["parks", "kz-astana-hub"]);
    let mut change = f.change(|d| {
        d.put(&kz, "website", "https://astanahub.example")
            .expect("put")
    });
    let env = f.sign(&mut change);
    let reports = fed
        .park(1)
        .replica()
        .ingest(vec![env], "peer")
        .expect("ingest");
    assert_eq!(only(&reports), &Outcome::Accepted);
    let park = fed
        .park(1)
        .replica()
        .index()
        .park(&"kz-astana-hub".parse().expect("id"))
        .cloned();
    assert_eq!(
        park.and_then(|p| p.website).as_deref(),
        Some("https://astanahub.example")
    );
}

#[test]
fn rejects_writes_at_the_federation_root_after_genesis() {
    let mut fed = federation();
    let mut f = forger(&mut fed, 0, DocId::Federation, 0);
    let mut change = f.change(|d| d.put(ROOT, "charter", "Astana decides").expect("put"));
    let env = f.sign(&mut change);
    assert_refused(&mut fed, 1, env, "path_not_allowed");
}

#[test]
fn rejects_ops_outside_the_ledger_schema() {
    let mut fed = federation();
    let doc = ledger(&fed.parks[0]);
    let mut f = forger(&mut fed, 0, doc.clone(), 0);
    let mut change = startup_put(&mut f, "kz-astana-hub/unknown-field", "colour", "blue");
    let env = f.sign(&mut change);
    assert_refused(&mut fed, 1, env, "path_not_allowed");

    let mut f = forger(&mut fed, 0, doc.clone(), 0);
    let startups = f.obj(&["startups"]);
    let mut change = f.change(|d| {
        let rec = d
            .put_object(&startups, "kz-astana-hub/list", ObjType::Map)
            .expect("put");
        d.put_object(&rec, "tags", ObjType::List).expect("list");
    });
    let env = f.sign(&mut change);
    assert_refused(&mut fed, 1, env, "path_not_allowed");

    let mut f = forger(&mut fed, 0, doc, 0);
    let mut change = f.change(|d| {
        d.put_object(ROOT, "secrets", ObjType::Map).expect("put");
    });
    let env = f.sign(&mut change);
    assert_refused(&mut fed, 1, env, "path_not_allowed");
}

#[test]
fn rejects_values_that_do_not_fit_their_field() {
    let mut fed = federation();
    let doc = ledger(&fed.parks[0]);
    for (field, value) in [
        ("country", "XX"),
        ("stage", "unicorn"),
        ("website", "javascript:alert(1)"),
        ("sectors", r#"["ai","biotech"]"#),
    ] {
        let mut f = forger(&mut fed, 0, doc.clone(), 0);
        let mut change = startup_put(&mut f, "kz-astana-hub/bad-value", field, value);
        let env = f.sign(&mut change);
        assert_refused(&mut fed, 1, env, "invalid_value");
    }
    // An application of Astana Hub that names Uzbekistan's startup.
    let mut f = forger(&mut fed, 0, doc, 0);
    let apps = f.obj(&["applications"]);
    let mut change = f.change(|d| {
        let rec = d
            .put_object(&apps, "kz-astana-hub/app", ObjType::Map)
            .expect("put");
        d.put(&rec, "startup", "uz-it-park/first").expect("put");
    });
    let env = f.sign(&mut change);
    assert_refused(&mut fed, 1, env, "invalid_value");
}

#[test]
fn rejects_reference_to_an_object_outside_the_causal_past() {
    let mut fed = federation();
    let doc = ledger(&fed.parks[0]);
    let mut f = forger(&mut fed, 0, doc, 0);
    let heads: Vec<automerge::ChangeHash> = f.doc.get_heads();
    let base_max = f
        .doc
        .get_changes(&[])
        .iter()
        .map(automerge::Change::max_op)
        .max()
        .unwrap_or(0);
    // c1 makes a record; c2 writes into it; then c2 is rewritten to depend only on what came
    // before c1, so the record it writes is not in its causal past.
    let mut c1 = startup_put(&mut f, "kz-astana-hub/made", "name", "Made");
    let rec = f.obj(&["startups", "kz-astana-hub/made"]);
    let c2 = f.change(|d| d.put(&rec, "city", "Astana").expect("put"));
    let mut orphan = rewrite(&c2, |e| {
        e.deps = heads.clone();
        e.seq = 1;
        e.actor_id = kervan_protocol::Actor {
            key: f.actor.key,
            epoch: [9; 8],
        }
        .to_automerge();
        e.start_op = std::num::NonZeroU64::new(base_max + 1).expect("non-zero");
    });
    let e1 = f.sign(&mut c1);
    let reports = fed
        .park(1)
        .replica()
        .ingest(vec![e1], "peer")
        .expect("ingest");
    assert_eq!(only(&reports), &Outcome::Accepted);
    let env = f.sign(&mut orphan);
    assert_refused(&mut fed, 1, env, "unknown_object");
}

// ---- what the review of the rules found: each is refused, none panics ----

/// Re-encodes a change after `edit` changes its ops.
fn rewrite_ops(
    change: &automerge::Change,
    edit: impl FnOnce(&mut Vec<automerge::legacy::Op>),
) -> automerge::Change {
    rewrite(change, |e| edit(&mut e.operations))
}

#[test]
fn rejects_compressed_changes_before_inflating_them() {
    let mut fed = federation();
    let doc = ledger(&fed.parks[0]);
    let mut f = forger(&mut fed, 0, doc.clone(), 0);
    let mut change = startup_put(&mut f, "kz-astana-hub/zip", "summary", &"z".repeat(4000));
    let compressed = change.bytes().into_owned();
    assert_eq!(
        compressed.get(8),
        Some(&2),
        "Automerge compressed this change"
    );
    let key = fed.park(0).key();
    let signed = SignedChange::sign(&fed.id, doc, &mut change, &key);
    let env = SignedChange {
        change: compressed,
        ..signed
    };
    assert_refused(&mut fed, 1, env.encode(), "bad_change");
}

#[test]
fn rejects_a_predecessor_outside_the_causal_past() {
    let mut fed = federation();
    let doc = ledger(&fed.parks[0]);
    let mut f = forger(&mut fed, 0, doc, 0);
    let change = startup_put(&mut f, "kz-astana-hub/pred", "name", "Pred");
    let stranger = automerge::ActorId::from([0x42u8; 40]);
    let mut bad = rewrite_ops(&change, |ops| {
        ops[1].pred = vec![automerge::legacy::OpId(1, stranger)].into();
    });
    let env = f.sign(&mut bad);
    assert_refused(&mut fed, 1, env, "bad_pred");
}

#[test]
fn rejects_map_ops_with_the_insert_flag() {
    let mut fed = federation();
    let doc = ledger(&fed.parks[0]);
    let mut f = forger(&mut fed, 0, doc, 0);
    let change = startup_put(&mut f, "kz-astana-hub/ins", "name", "Insert");
    let mut bad = rewrite_ops(&change, |ops| ops[1].insert = true);
    let env = f.sign(&mut bad);
    assert_refused(&mut fed, 1, env, "path_not_allowed");
}

#[test]
fn rejects_an_overlong_multibyte_key_without_panicking() {
    let mut fed = federation();
    let doc = ledger(&fed.parks[0]);
    let mut f = forger(&mut fed, 0, doc, 0);
    let startups = f.obj(&["startups"]);
    // Byte 32 falls inside a two-byte character.
    let key = format!("k{}", "ş".repeat(200));
    let mut change = f.change(|d| {
        d.put_object(&startups, key.as_str(), ObjType::Map)
            .expect("put");
    });
    let env = f.sign(&mut change);
    assert_refused(&mut fed, 1, env, "path_not_allowed");
}

#[test]
fn rejects_a_device_registered_without_its_proof() {
    let mut fed = federation();
    let (second, _) = Park::init("kz-astana-hub", "Astana Hub", "KZ", "Astana");
    let mut f = forger(&mut fed, 0, DocId::Federation, 0);
    let devices = f.obj(&["parks", "kz-astana-hub", "devices"]);
    let mut change = f.change(|d| {
        let dev = d
            .put_object(&devices, second.device().to_hex(), ObjType::Map)
            .expect("put");
        d.put(&dev, "label", "no proof").expect("put");
    });
    let env = f.sign(&mut change);
    assert_refused(&mut fed, 1, env, "invalid_value");
}

/// A device that signs proofs for two parks is registered by both: it is frozen, and every
/// change it wrote is taken back, whichever registration a node saw first.
#[test]
fn a_device_registered_for_two_parks_is_frozen_everywhere() {
    let mut fed = federation();
    let (rogue, card) = Park::init("kz-astana-hub", "Astana Hub", "KZ", "Astana");
    let mut uz_card = card.clone();
    uz_card.id = fed.parks[1].id.clone();
    uz_card.proof = kervan_protocol::device_proof(&rogue.key(), &uz_card.id);
    fed.park(0)
        .replica()
        .add_device(&card)
        .expect("Astana registers");
    let kz_registration = fed.park(0).export();
    // The device writes into Astana Hub's ledger while it is only Astana Hub's.
    let doc = ledger(&fed.parks[0]);
    let id = fed.id;
    let mut f = Forger::new(fed.park(0), doc, rogue.key(), id);
    let mut c = startup_put(&mut f, "kz-astana-hub/rogue", "name", "Rogue");
    let rogue_change = f.sign(&mut c);
    fed.park(1).import(&kz_registration);
    fed.park(1)
        .replica()
        .add_device(&uz_card)
        .expect("Uzbekistan registers");
    let uz_registration = fed.park(1).export();

    let mut a = fed.observer();
    a.ingest(kervan_tests::entries(&kz_registration));
    assert_eq!(
        only(&a.ingest(vec![rogue_change.clone()])),
        &Outcome::Accepted
    );
    a.ingest(kervan_tests::entries(&uz_registration));
    let mut b = fed.observer();
    b.ingest(kervan_tests::entries(&uz_registration));
    b.ingest(kervan_tests::entries(&kz_registration));
    let reports = b.ingest(vec![rogue_change]);
    assert_eq!(rejected_code(only(&reports)), "device_frozen");
    assert_eq!(a.replica.digest(), b.replica.digest());
    assert!(
        a.replica
            .summary()
            .iter()
            .all(|(_, actor, _, _)| actor.key != rogue.device())
    );
}

/// A member withholding the first of a long run of its changes: the rest wait, the queue keeps
/// within its count and byte bounds by dropping the oldest, and once the withheld change and
/// the dropped ones arrive again (as anti-entropy sends them) everything applies.
#[test]
fn withheld_dependencies_keep_the_pending_queue_within_its_bounds() {
    let mut fed = federation();
    let doc = ledger(&fed.parks[0]);
    let mut f = forger(&mut fed, 0, doc, 0);
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = kervan_node::Options {
        max_pending: 1_000,
        max_pending_bytes: 16 << 10,
        ..kervan_node::Options::default()
    };
    let store = kervan_node::SledStore::open(tmp.path()).expect("store");
    let mut r = kervan_node::Replica::open(store, fed.id, None, opts).expect("open");
    let known = fed.park(0).export();
    r.import(&known, "peer").expect("import");
    let startups = f.obj(&["startups"]);
    let mut sample = Sample::new(4);
    let mut envelopes = Vec::new();
    for i in 0..200 {
        let value = kervan_protocol::records::record_to_automerge(
            kervan_protocol::records::STARTUP_FIELDS,
            sample.startup("KZ").as_object().expect("object"),
        );
        let mut c = f.change(|d| {
            d.batch_create_object(&startups, format!("kz-astana-hub/run-{i}"), &value, false)
                .expect("create");
        });
        envelopes.push(f.sign(&mut c));
    }
    let withheld = envelopes[0].clone();
    let mut peak = 0;
    for e in &envelopes[1..] {
        let reports = r.ingest(vec![e.clone()], "peer").expect("ingest");
        assert!(
            matches!(only(&reports), Outcome::Pending { .. }),
            "{reports:?}"
        );
        peak = peak.max(r.pending_bytes());
    }
    assert!(peak <= 16 << 10, "pending held {peak} bytes");
    assert!(r.pending_count() < 199, "nothing was dropped");
    assert!(r.stats().pending_dropped > 0);
    // The withheld change, then everything again.
    let reports = r.ingest(vec![withheld], "peer").expect("ingest");
    assert_eq!(only(&reports), &Outcome::Accepted);
    r.ingest(envelopes, "peer").expect("ingest");
    assert_eq!(r.pending_count(), 0);
    assert_eq!(r.pending_bytes(), 0);
    for i in 0..200 {
        let id = format!("kz-astana-hub/run-{i}").parse().expect("id");
        assert!(r.index().startup(&id).is_some(), "run-{i} missing");
    }
}

/// A page (64 envelopes or more) is decoded and its signatures checked on every core before the
/// changes are judged in order. Its verdicts are those of the same envelopes handed over one
/// at a time: a forged signature, bytes that are no envelope, a change that does not parse, a
/// repeated refused envelope and a duplicate each get the same outcome either way.
#[test]
fn a_page_checked_on_every_core_gets_the_verdicts_of_one_at_a_time() {
    let mut fed = federation();
    let mut sample = Sample::new(10);
    for _ in 0..90 {
        let country = fed.park(0).country.clone();
        fed.park(0)
            .replica()
            .create(Collection::Startups, None, &sample.startup(&country))
            .expect("create");
    }
    let mut page = kervan_tests::entries(&fed.park(0).export());
    assert!(page.len() >= 64, "a page of {} envelopes", page.len());
    // A forged signature halfway (what follows from its author waits for it), ...
    let forged = page.len() / 2;
    let last = page[forged].len() - 1;
    page[forged][last] ^= 1;
    // ... the same forged envelope again, bytes that are no envelope, a change that does not
    // parse, and a duplicate.
    page.push(page[forged].clone());
    page.insert(3, b"not an envelope".to_vec());
    let mut unparsable = SignedChange::decode(&page[5], usize::MAX).expect("envelope");
    unparsable.change[8] = 2;
    page.insert(7, unparsable.encode());
    page.push(page[10].clone());

    let mut batch = fed.observer();
    let at_once = batch.ingest(page.clone());
    let mut single = fed.observer();
    let one_by_one: Vec<_> = page
        .iter()
        .flat_map(|e| single.ingest(vec![e.clone()]))
        .collect();
    for (i, (a, b)) in at_once.iter().zip(&one_by_one).enumerate() {
        assert_eq!(a, b, "envelope {i}");
    }
    assert_eq!(at_once.len(), one_by_one.len());
    let tally = kervan_tests::tally(&at_once);
    assert!(
        tally.get("accepted").copied().unwrap_or(0) > 40,
        "{tally:?}"
    );
    for code in [
        "bad_signature",
        "already_rejected",
        "malformed",
        "bad_change",
        "duplicate",
    ] {
        assert!(
            at_once.iter().any(|r| match &r.outcome {
                Outcome::Rejected { code: c, .. } => c == code,
                Outcome::Duplicate => code == "duplicate",
                _ => false,
            }),
            "no {code} outcome in {tally:?}"
        );
    }
    assert_eq!(batch.replica.digest(), single.replica.digest());
    assert_eq!(
        batch.replica.pending_count(),
        single.replica.pending_count()
    );
}

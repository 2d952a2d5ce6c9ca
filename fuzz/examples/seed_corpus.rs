//! Writes the fuzz targets' fixture (`fuzz/fixture/federation.kvn`) and seed corpora
//! (`fuzz/corpus/<target>/`) from a real federation built with the node's own code:
//!
//! ```text
//! cargo run --release --manifest-path fuzz/Cargo.toml --example seed_corpus
//! ```
//!
//! Two founding parks are initialised in data directories (`DataDir::init`), listed in one
//! genesis (`genesis_file`) and joined; they write startups, a program, an application and a
//! decision through their replicas, register a second device, and exchange bundles until their
//! digests agree. Their export is the fixture, which every target loads.
//!
//! The seeds are then changes made *on top of* the fixture, each one step past it for its
//! actor and document and signed with the real device keys: honest ones (a new startup, an
//! update, a profile change, a device registration with its proof) and hostile ones (a write
//! into another park, a deleted required field, a list, a counter, a missing proof), so a
//! target judges each seed all the way through the rules instead of stopping at a held slot.
//! From them come envelopes, bundles (single changes, an equivocating pair, a chain in both
//! orders, another federation's), sync requests and responses, and raw change bytes.
//!
//! Keys and epochs are drawn afresh on each run, so running this replaces the fixture and
//! every seed together; the seeds are only valid against the fixture written with them.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{Context as _, Result, bail, ensure};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{AutoCommit, ObjId, ObjType, ROOT, ReadDoc, ScalarValue};
use ed25519_dalek::SigningKey;
use kervan_node::data_dir::genesis_file;
use kervan_node::sample::Sample;
use kervan_node::{Collection, DataDir, Replica, SledStore};
use kervan_protocol::records::{self, DEVICE_FIELDS, PROGRAM_FIELDS, STARTUP_FIELDS};
use kervan_protocol::sync::{self, Head, PeerAddrs, Request, Response, Summary};
use kervan_protocol::{
    Actor, Bundle, DeviceKey, DocId, FederationId, Hash, ParkCard, ParkId, RecordId, SignedChange,
};
use serde_json::{Value, json};

/// Author time of every forged change: 2026-01-01T00:00:00Z.
const TIME: i64 = 1_767_225_600;
const STAMP: &str = "2026-01-01T00:00:00Z";

fn main() -> Result<()> {
    let out = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir()?;
    let built = build_federation(tmp.path())?;
    let fixture = built.a.export(None)?;
    ensure!(
        fixture.entries.len() >= 10,
        "the fixture has {} changes",
        fixture.entries.len()
    );

    let seeds = forge_seeds(&built, &fixture)?;
    judge_seeds(&fixture, &seeds)?;
    let mut corpus = Corpus::default();
    envelope_seeds(&mut corpus, &fixture, &seeds)?;
    rules_seeds(&mut corpus, &fixture, &seeds)?;
    bundle_seeds(&mut corpus, &built, &fixture, &seeds)?;
    sync_seeds(&mut corpus, &built)?;

    write_file(&out.join("fixture/federation.kvn"), &fixture.encode())?;
    corpus.write(&out.join("corpus"))?;
    println!(
        "fixture: {} changes of federation {}",
        fixture.entries.len(),
        built.federation
    );
    Ok(())
}

/// The two parks' nodes and what they wrote.
struct Built {
    federation: FederationId,
    genesis: Vec<u8>,
    a: Replica<SledStore>,
    b: Replica<SledStore>,
    a_park: ParkId,
    b_park: ParkId,
    a_key: SigningKey,
    b_key: SigningKey,
    second_key: SigningKey,
    second_actor: Actor,
    a_startup: RecordId,
    a_program: RecordId,
    application: RecordId,
}

fn build_federation(root: &Path) -> Result<Built> {
    let founding = &kervan_node::demo::PARKS[..2];
    let mut dirs = Vec::new();
    let mut cards = Vec::new();
    for (id, name, country, city) in founding {
        let dir = DataDir::new(root.join(id));
        cards.push(dir.init(card(id, name, country, city, "primary")?)?);
        dirs.push(dir);
    }
    let (federation, genesis) =
        genesis_file("Fuzz Federation", "Seeds for the fuzz targets.", &cards)?;
    for dir in &dirs {
        dir.join(&genesis)?;
    }
    let mut a = dirs[0].open_replica()?;
    let mut b = dirs[1].open_replica()?;
    let mut sample = Sample::new(7);

    let a_startup = a.create(
        Collection::Startups,
        Some("steppe-1"),
        &sample.startup("KZ"),
    )?;
    let a_program = a.create(
        Collection::Programs,
        Some("residency"),
        &sample.program("Astana Hub"),
    )?;
    a.update(
        Collection::Startups,
        &a_startup,
        &json!({"team_size": 12, "stage": "seed"}),
    )?;
    exchange(&mut a, &mut b)?;
    let b_startup = b.create(Collection::Startups, Some("silk-1"), &sample.startup("UZ"))?;
    let application = b.create(
        Collection::Applications,
        Some("app-1"),
        &json!({
            "startup": b_startup.to_string(),
            "program": a_program.to_string(),
            "message": "We would like to join the residency.",
        }),
    )?;
    exchange(&mut a, &mut b)?;
    a.decide(
        &application,
        &json!({"status": "accepted", "note": "Welcome."}),
    )?;

    // A second device of park A: its own data directory, registered by A's first device.
    let (id, name, country, city) = founding[0];
    let second_dir = DataDir::new(root.join("second-device"));
    let second = second_dir.init(card(id, name, country, city, "laptop")?)?;
    a.add_device(&second)?;
    exchange(&mut a, &mut b)?;
    ensure!(a.digest() == b.digest(), "the two parks did not converge");

    let second_actor = second
        .root_actor()
        .map_err(anyhow::Error::msg)
        .context("the second device's actor")?;
    Ok(Built {
        federation,
        genesis,
        a_park: cards[0].id.clone(),
        b_park: cards[1].id.clone(),
        a_key: dirs[0].signing_key()?,
        b_key: dirs[1].signing_key()?,
        second_key: second_dir.signing_key()?,
        second_actor,
        a,
        b,
        a_startup,
        a_program,
        application,
    })
}

fn card(id: &str, name: &str, country: &str, city: &str, label: &str) -> Result<ParkCard> {
    Ok(ParkCard {
        id: id.parse()?,
        name: name.into(),
        country: country.into(),
        city: Some(city.into()),
        website: None,
        device: DeviceKey([0; 32]),
        epoch: String::new(),
        proof: String::new(),
        label: Some(label.into()),
    })
}

/// Each park imports the other's export until neither has anything new.
fn exchange(a: &mut Replica<SledStore>, b: &mut Replica<SledStore>) -> Result<()> {
    for _ in 0..4 {
        if a.digest() == b.digest() {
            return Ok(());
        }
        let from_a = a.export(None)?.encode();
        let from_b = b.export(None)?.encode();
        b.import(&from_a, "seed")?;
        a.import(&from_b, "seed")?;
    }
    ensure!(a.digest() == b.digest(), "exchange did not converge");
    Ok(())
}

/// Who writes a forged change, and where.
struct Author<'a> {
    doc: DocId,
    actor: Actor,
    key: &'a SigningKey,
}

/// One forged change, named for the corpus.
struct Seed {
    name: String,
    signed: SignedChange,
}

/// Makes one change with `edit` on the fixture's copy of the author's document, as the author
/// would write it next, and signs it.
fn forge(
    federation: &FederationId,
    fixture: &Bundle,
    author: &Author<'_>,
    edit: impl FnOnce(&mut AutoCommit) -> Result<()>,
) -> Result<SignedChange> {
    let mut doc = AutoCommit::new();
    let mut changes = Vec::new();
    for e in &fixture.entries {
        let signed = SignedChange::decode(e, usize::MAX)?;
        if signed.doc == author.doc {
            changes.push(signed.parse()?);
        }
    }
    doc.apply_changes(changes)?;
    doc.set_actor(author.actor.to_automerge());
    edit(&mut doc)?;
    doc.commit_with(CommitOptions::default().with_time(TIME));
    let mut change = doc
        .get_last_local_change()
        .context("the edit wrote nothing")?;
    Ok(SignedChange::sign(
        federation,
        author.doc.clone(),
        &mut change,
        author.key,
    ))
}

/// The map at `path` from the root of a document.
fn map_at(doc: &AutoCommit, path: &[&str]) -> Result<ObjId> {
    let mut obj = ROOT;
    for key in path {
        obj = match doc.get(&obj, *key)? {
            Some((automerge::Value::Object(ObjType::Map), id)) => id,
            _ => bail!("no map at {key} of {path:?}"),
        };
    }
    Ok(obj)
}

/// A record's map value as the replica writes it, with its server fields.
fn record(fields: &'static [records::Field], value: Value) -> automerge::hydrate::Value {
    let mut obj = match value {
        Value::Object(obj) => obj,
        _ => serde_json::Map::new(),
    };
    obj.insert("created_at".into(), STAMP.into());
    obj.insert("updated_at".into(), STAMP.into());
    records::record_to_automerge(fields, &obj)
}

type Edit = Box<dyn FnOnce(&mut AutoCommit) -> Result<()>>;

fn forge_seeds(built: &Built, fixture: &Bundle) -> Result<Vec<Seed>> {
    let a_ledger = DocId::Ledger(built.a_park.clone());
    let b_ledger = DocId::Ledger(built.b_park.clone());
    let a_actor = actor(&built.a)?;
    let b_actor = actor(&built.b)?;
    let author = |doc: &DocId, actor: Actor, key| Author {
        doc: doc.clone(),
        actor,
        key,
    };
    let as_a_ledger = author(&a_ledger, a_actor, &built.a_key);
    let as_a_fed = author(&DocId::Federation, a_actor, &built.a_key);
    let as_b_ledger = author(&b_ledger, b_actor, &built.b_key);
    let as_b_fed = author(&DocId::Federation, b_actor, &built.b_key);
    let as_b_in_a = author(&a_ledger, b_actor, &built.b_key);
    let as_second = author(&a_ledger, built.second_actor, &built.second_key);

    let a = built.a_park.to_string();
    let b = built.b_park.to_string();
    let startup = built.a_startup.to_string();
    let program = built.a_program.to_string();
    let application = built.application.to_string();
    let third_key = SigningKey::from_bytes(&[3; 32]);
    let third = DeviceKey(third_key.verifying_key().to_bytes());
    let third_proof = kervan_protocol::device_proof(&third_key, &built.a_park);
    let mut sample = Sample::new(11);
    let new_startup = record(STARTUP_FIELDS, sample.startup("KZ"));
    let second_startup = record(STARTUP_FIELDS, sample.startup("KZ"));
    let b_program = record(PROGRAM_FIELDS, sample.program("IT Park Uzbekistan"));
    let device = records::record_to_automerge(
        DEVICE_FIELDS,
        json!({"label": "server", "added_at": STAMP, "proof": third_proof})
            .as_object()
            .context("a json object")?,
    );

    let mut plan: Vec<(&str, &Author<'_>, Edit)> = Vec::new();
    // Honest changes, one step past the fixture.
    plan.push(("a-new-startup", &as_a_ledger, {
        let (id, v) = (format!("{a}/next-1"), new_startup);
        Box::new(move |d| {
            let coll = map_at(d, &["startups"])?;
            d.batch_create_object(&coll, id.as_str(), &v, false)?;
            Ok(())
        })
    }));
    plan.push(("a-update-startup", &as_a_ledger, {
        let s = startup.clone();
        Box::new(move |d| {
            let rec = map_at(d, &["startups", &s])?;
            d.put(&rec, "team_size", 40i64)?;
            d.put(&rec, "summary", "Now in three countries.")?;
            d.put(&rec, "updated_at", STAMP)?;
            Ok(())
        })
    }));
    plan.push(("a-delete-optional-field", &as_a_ledger, {
        let s = startup.clone();
        Box::new(move |d| Ok(d.delete(&map_at(d, &["startups", &s])?, "website")?))
    }));
    plan.push(("a-close-program", &as_a_ledger, {
        let p = program.clone();
        Box::new(move |d| Ok(d.put(&map_at(d, &["programs", &p])?, "open", false)?))
    }));
    plan.push(("a-decision-note", &as_a_ledger, {
        let app = application.clone();
        Box::new(move |d| {
            let rec = map_at(d, &["decisions", &app])?;
            d.put(&rec, "note", "Welcome, see you in March.")?;
            Ok(())
        })
    }));
    plan.push(("a-remove-startup", &as_a_ledger, {
        let s = startup.clone();
        Box::new(move |d| Ok(d.delete(&map_at(d, &["startups"])?, s.as_str())?))
    }));
    plan.push(("second-device-new-startup", &as_second, {
        let (id, v) = (format!("{a}/by-laptop"), second_startup);
        Box::new(move |d| {
            let coll = map_at(d, &["startups"])?;
            d.batch_create_object(&coll, id.as_str(), &v, false)?;
            Ok(())
        })
    }));
    plan.push(("b-new-program", &as_b_ledger, {
        let (id, v) = (format!("{b}/grant"), b_program);
        Box::new(move |d| {
            let coll = map_at(d, &["programs"])?;
            d.batch_create_object(&coll, id.as_str(), &v, false)?;
            Ok(())
        })
    }));
    plan.push(("b-withdraw-application", &as_b_ledger, {
        let app = application.clone();
        Box::new(move |d| Ok(d.put(&map_at(d, &["applications", &app])?, "withdrawn", true)?))
    }));
    plan.push(("a-profile-website", &as_a_fed, {
        let a = a.clone();
        Box::new(move |d| {
            let park = map_at(d, &["parks", &a])?;
            d.put(&park, "website", "https://astanahub.example")?;
            Ok(())
        })
    }));
    plan.push(("a-register-device", &as_a_fed, {
        let (a, v, k) = (a.clone(), device.clone(), third.to_hex());
        Box::new(move |d| {
            let devices = map_at(d, &["parks", &a, "devices"])?;
            d.batch_create_object(&devices, k.as_str(), &v, false)?;
            Ok(())
        })
    }));
    plan.push(("b-profile-city", &as_b_fed, {
        let b = b.clone();
        Box::new(move |d| Ok(d.put(&map_at(d, &["parks", &b])?, "city", "Tashkent City")?))
    }));
    // Hostile changes, signed by registered devices.
    plan.push(("bad-delete-required-field", &as_a_ledger, {
        let s = startup.clone();
        Box::new(move |d| Ok(d.delete(&map_at(d, &["startups", &s])?, "name")?))
    }));
    plan.push(("bad-foreign-record-id", &as_a_ledger, {
        let b = b.clone();
        Box::new(move |d| {
            let coll = map_at(d, &["startups"])?;
            d.put_object(&coll, format!("{b}/stolen").as_str(), ObjType::Map)?;
            Ok(())
        })
    }));
    plan.push(("bad-list-field", &as_a_ledger, {
        let s = startup.clone();
        Box::new(move |d| {
            let rec = map_at(d, &["startups", &s])?;
            let list = d.put_object(&rec, "tags", ObjType::List)?;
            d.insert(&list, 0, "ai")?;
            Ok(())
        })
    }));
    plan.push(("bad-counter", &as_a_ledger, {
        let s = startup.clone();
        Box::new(move |d| {
            let rec = map_at(d, &["startups", &s])?;
            d.put(&rec, "team_size", ScalarValue::counter(1))?;
            d.increment(&rec, "team_size", 5)?;
            Ok(())
        })
    }));
    plan.push(("bad-field-kind", &as_a_ledger, {
        let s = startup.clone();
        Box::new(move |d| Ok(d.put(&map_at(d, &["startups", &s])?, "founded", "long ago")?))
    }));
    plan.push(("bad-unknown-field", &as_a_ledger, {
        let s = startup.clone();
        Box::new(move |d| Ok(d.put(&map_at(d, &["startups", &s])?, "valuation", 1_000_000i64)?))
    }));
    plan.push(("bad-ledger-root", &as_a_ledger, {
        Box::new(move |d| Ok(d.put(&ROOT, "owner", "me")?))
    }));
    plan.push(("bad-b-writes-a-ledger", &as_b_in_a, {
        let s = startup.clone();
        Box::new(move |d| Ok(d.put(&map_at(d, &["startups", &s])?, "team_size", 1i64)?))
    }));
    plan.push(("bad-device-without-proof", &as_a_fed, {
        let (a, k) = (a.clone(), DeviceKey([4; 32]).to_hex());
        Box::new(move |d| {
            let devices = map_at(d, &["parks", &a, "devices"])?;
            let dev = d.put_object(&devices, k.as_str(), ObjType::Map)?;
            d.put(&dev, "label", "stolen")?;
            Ok(())
        })
    }));
    plan.push(("bad-writes-other-profile", &as_a_fed, {
        let b = b.clone();
        Box::new(move |d| Ok(d.put(&map_at(d, &["parks", &b])?, "name", "Taken")?))
    }));
    plan.push(("bad-root-actor", &as_a_fed, {
        let a = a.clone();
        Box::new(move |d| Ok(d.put(&map_at(d, &["parks", &a])?, "root_actor", "00")?))
    }));
    plan.push(("bad-federation-root", &as_b_fed, {
        Box::new(move |d| Ok(d.put(&ROOT, "name", "Renamed")?))
    }));

    let mut seeds = Vec::new();
    for (name, author, edit) in plan {
        let signed = forge(&built.federation, fixture, author, edit)
            .with_context(|| format!("forging {name}"))?;
        seeds.push(Seed {
            name: name.into(),
            signed,
        });
    }
    Ok(seeds)
}

/// Checks that each seed is judged as its name says, against the fixture: an honest seed is
/// accepted, a `bad-` one rejected (neither waits for anything).
fn judge_seeds(fixture: &Bundle, seeds: &[Seed]) -> Result<()> {
    let mut context = kervan_fuzz::MemoryContext::new(fixture.federation);
    for e in &fixture.entries {
        context
            .admit(e)
            .map_err(anyhow::Error::msg)
            .context("the fixture is accepted in its order")?;
    }
    for s in seeds {
        let verdict = context.clone().admit(&s.signed.encode());
        let summary = match &verdict {
            Ok(_) => "accepted".to_owned(),
            Err(why) => why.clone(),
        };
        println!("  {:<28} {summary}", s.name);
        let expected = if s.name.starts_with("bad-") {
            summary.starts_with("rejected")
        } else {
            verdict.is_ok()
        };
        ensure!(expected, "seed {} was judged: {summary}", s.name);
    }
    Ok(())
}

fn actor(r: &Replica<SledStore>) -> Result<Actor> {
    Ok(r.identity().context("a park node has an identity")?.actor())
}

/// Files to write, by target.
#[derive(Default)]
struct Corpus(BTreeMap<&'static str, Vec<(String, Vec<u8>)>>);

impl Corpus {
    fn add(&mut self, target: &'static str, name: impl Into<String>, bytes: Vec<u8>) {
        self.0.entry(target).or_default().push((name.into(), bytes));
    }

    /// Replaces each target's seed directory with this run's seeds.
    fn write(&self, root: &Path) -> Result<()> {
        for (target, files) in &self.0 {
            let dir = root.join(target);
            if dir.exists() {
                fs::remove_dir_all(&dir)?;
            }
            fs::create_dir_all(&dir)?;
            let total: usize = files.iter().map(|(_, b)| b.len()).sum();
            for (name, bytes) in files {
                write_file(&dir.join(name), bytes)?;
            }
            println!("{target}: {} seeds, {total} bytes", files.len());
        }
        Ok(())
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn envelope_seeds(corpus: &mut Corpus, fixture: &Bundle, seeds: &[Seed]) -> Result<()> {
    for (i, e) in fixture.entries.iter().enumerate() {
        corpus.add("envelope", format!("fixture-{i:02}"), e.clone());
    }
    for s in seeds.iter().filter(|s| !s.name.starts_with("bad-")) {
        corpus.add("envelope", s.name.clone(), s.signed.encode());
    }
    let golden_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../protocol/testdata/envelope-v1.json"
    );
    let golden: Value = serde_json::from_str(&fs::read_to_string(golden_path)?)?;
    let golden = hex::decode(golden["envelope"].as_str().context("golden envelope hex")?)?;
    corpus.add("envelope", "golden-v1", golden.clone());
    let mut version_2 = golden.clone();
    version_2[0] = 2;
    corpus.add("envelope", "bad-version-2", version_2);
    let mut trailing = golden.clone();
    trailing.push(0);
    corpus.add("envelope", "bad-trailing-byte", trailing);
    corpus.add(
        "envelope",
        "bad-truncated",
        golden[..golden.len() / 2].to_vec(),
    );

    // The same change as a compressed chunk, which `parse` must refuse before inflating.
    let first = &seeds[0].signed;
    let mut change = first.parse()?;
    let compressed = change.bytes().to_vec();
    if compressed.get(8) == Some(&2) {
        let envelope = SignedChange {
            change: compressed,
            ..first.clone()
        };
        corpus.add("envelope", "bad-compressed-chunk", envelope.encode());
    }
    Ok(())
}

fn rules_seeds(corpus: &mut Corpus, fixture: &Bundle, seeds: &[Seed]) -> Result<()> {
    for s in seeds {
        corpus.add(
            "rules_check",
            format!("raw-{}", s.name),
            s.signed.change.clone(),
        );
    }
    for s in seeds.iter().filter(|s| !s.name.starts_with("bad-")).take(4) {
        corpus.add(
            "rules_check",
            format!("envelope-{}", s.name),
            s.signed.encode(),
        );
    }
    for (i, e) in fixture.entries.iter().enumerate().take(3) {
        let change = SignedChange::decode(e, usize::MAX)?.change;
        corpus.add("rules_check", format!("raw-fixture-{i:02}"), change);
    }
    Ok(())
}

fn bundle_seeds(
    corpus: &mut Corpus,
    built: &Built,
    fixture: &Bundle,
    seeds: &[Seed],
) -> Result<()> {
    let fed = built.federation;
    let bundle = |changes: &[&SignedChange]| {
        Bundle {
            federation: fed,
            entries: changes.iter().map(|c| c.encode()).collect(),
        }
        .encode()
    };
    corpus.add("bundle_import", "genesis", built.genesis.clone());
    corpus.add("bundle_import", "fixture", fixture.encode());
    corpus.add("bundle_import", "empty", Bundle::new(fed, &[]).encode());
    for s in seeds {
        corpus.add("bundle_import", s.name.clone(), bundle(&[&s.signed]));
    }
    let by_name = |name: &str| {
        seeds
            .iter()
            .find(|s| s.name == name)
            .map(|s| &s.signed)
            .with_context(|| format!("no seed {name}"))
    };
    // Two changes of one actor at one seq: the second is evidence of equivocation.
    corpus.add(
        "bundle_import",
        "equivocation",
        bundle(&[by_name("a-new-startup")?, by_name("a-update-startup")?]),
    );
    let honest: Vec<&SignedChange> = seeds
        .iter()
        .filter(|s| !s.name.starts_with("bad-"))
        .map(|s| &s.signed)
        .collect();
    corpus.add("bundle_import", "honest-all", bundle(&honest));
    // A chain of two changes by one actor, in causal order and reversed (pending, then woken).
    let chain = chain(built, fixture)?;
    corpus.add("bundle_import", "chain", bundle(&[&chain[0], &chain[1]]));
    corpus.add(
        "bundle_import",
        "chain-reversed",
        bundle(&[&chain[1], &chain[0]]),
    );
    let mut other = Bundle {
        federation: fed,
        entries: vec![by_name("a-new-startup")?.encode()],
    };
    other.federation = FederationId(Hash([0x5a; 32]));
    corpus.add("bundle_import", "other-federation", other.encode());
    // What a fresh park keeps of a page: the changes vouched for by each actor's newest.
    let (page, _) = built
        .a
        .sync_page(&Summary::new(Vec::new()), sync::MAX_PAGE_BYTES)?;
    let wire = cbor(&Response::Changes {
        changes: page,
        more: false,
        peers: Vec::new(),
    })?;
    let Response::Changes { changes, .. } = cbor4ii::serde::from_slice(&wire)? else {
        anyhow::bail!("a page decodes as a page");
    };
    anyhow::ensure!(
        changes
            .iter()
            .any(|e| kervan_protocol::envelope::is_vouched(e)),
        "a page of the fixture holds vouched changes"
    );
    corpus.add(
        "bundle_import",
        "vouched-page",
        Bundle {
            federation: fed,
            entries: changes.clone(),
        }
        .encode(),
    );
    // The same without the vouchers: nothing of it is authenticated.
    corpus.add(
        "bundle_import",
        "vouched-without-vouchers",
        Bundle {
            federation: fed,
            entries: changes
                .into_iter()
                .filter(|e| kervan_protocol::envelope::is_vouched(e))
                .collect(),
        }
        .encode(),
    );
    let mut junk_entry = by_name("b-new-program")?.encode();
    junk_entry.truncate(junk_entry.len() - 10);
    let mixed = Bundle {
        federation: fed,
        entries: vec![junk_entry, by_name("b-profile-city")?.encode()],
    };
    corpus.add("bundle_import", "junk-and-honest", mixed.encode());
    Ok(())
}

/// Two consecutive changes of park A's device in its ledger, past the fixture.
fn chain(built: &Built, fixture: &Bundle) -> Result<[SignedChange; 2]> {
    let doc_id = DocId::Ledger(built.a_park.clone());
    let mut doc = AutoCommit::new();
    for e in &fixture.entries {
        let signed = SignedChange::decode(e, usize::MAX)?;
        if signed.doc == doc_id {
            doc.apply_changes([signed.parse()?])?;
        }
    }
    doc.set_actor(actor(&built.a)?.to_automerge());
    let program = built.a_program.to_string();
    let mut out = Vec::new();
    for seats in [20i64, 30] {
        let rec = map_at(&doc, &["programs", &program])?;
        doc.put(&rec, "seats", seats)?;
        doc.commit_with(CommitOptions::default().with_time(TIME));
        let mut change = doc.get_last_local_change().context("committed")?;
        out.push(SignedChange::sign(
            &built.federation,
            doc_id.clone(),
            &mut change,
            &built.a_key,
        ));
    }
    let [first, second] = <[SignedChange; 2]>::try_from(out)
        .map_err(|_| anyhow::anyhow!("expected two changes in the chain"))?;
    Ok([first, second])
}

fn sync_seeds(corpus: &mut Corpus, built: &Built) -> Result<()> {
    let full = built.a.sync_summary();
    corpus.add(
        "sync_message",
        "request-full",
        cbor(&Request::Pull(full.clone()))?,
    );
    corpus.add(
        "sync_message",
        "request-empty",
        cbor(&Request::Pull(Summary::new(Vec::new())))?,
    );
    // A node one change behind on every head, and one that holds another change at a seq.
    let behind: Vec<Head> = full
        .heads
        .iter()
        .filter(|h| h.seq > 1)
        .map(|h| Head {
            seq: h.seq - 1,
            ..h.clone()
        })
        .collect();
    corpus.add(
        "sync_message",
        "request-behind",
        cbor(&Request::Pull(Summary::new(behind.clone())))?,
    );
    // A delta against the agreed summary of a node that was behind and has caught up.
    if let Some(d) = sync::delta(&Summary::new(behind.clone()), &full) {
        corpus.add(
            "sync_message",
            "request-delta",
            cbor(&Request::PullDelta(d))?,
        );
    }
    if let Some(d) = sync::delta(&full, &full) {
        corpus.add(
            "sync_message",
            "request-delta-empty",
            cbor(&Request::PullDelta(d))?,
        );
    }
    corpus.add(
        "sync_message",
        "response-unknown-base",
        cbor(&Response::UnknownBase)?,
    );
    let mut forked = full.heads.clone();
    if let Some(h) = forked.last_mut() {
        h.hash = Hash([0xee; 32]);
    }
    corpus.add(
        "sync_message",
        "request-forked",
        cbor(&Request::Pull(Summary::new(forked)))?,
    );

    let peers: Vec<PeerAddrs> = [&built.a_key, &built.b_key]
        .iter()
        .enumerate()
        .filter_map(|(i, k)| {
            let peer = kervan_node::net::peer_id_of(&DeviceKey(k.verifying_key().to_bytes()))?;
            Some(PeerAddrs {
                peer: peer.to_string(),
                addrs: vec![
                    format!("/ip4/127.0.0.1/tcp/{}", 7701 + i),
                    format!("/ip6/::1/tcp/{}/p2p/{peer}", 7701 + i),
                    "/dns4/park.example/tcp/7701".into(),
                ],
            })
        })
        .collect();
    corpus.add(
        "sync_message",
        "response-up-to-date",
        cbor(&Response::UpToDate {
            peers: peers.clone(),
        })?,
    );
    let (page, more) = built
        .a
        .sync_page(&Summary::new(Vec::new()), sync::MAX_PAGE_BYTES)?;
    corpus.add(
        "sync_message",
        "response-changes",
        cbor(&Response::Changes {
            changes: page.clone(),
            more,
            peers: peers.clone(),
        })?,
    );
    corpus.add(
        "sync_message",
        "response-first-page",
        cbor(&Response::Changes {
            changes: page.into_iter().take(3).collect(),
            more: true,
            peers: Vec::new(),
        })?,
    );
    let (behind_page, more) = built.b.sync_page(
        &Summary::new(vec![full.heads[0].clone()]),
        sync::MAX_PAGE_BYTES,
    )?;
    corpus.add(
        "sync_message",
        "response-partial",
        cbor(&Response::Changes {
            changes: behind_page,
            more,
            peers,
        })?,
    );
    Ok(())
}

/// A sync message, encoded as the node's codec writes it.
fn cbor<T: serde::Serialize>(message: &T) -> Result<Vec<u8>> {
    Ok(cbor4ii::serde::to_vec(Vec::new(), message)?)
}

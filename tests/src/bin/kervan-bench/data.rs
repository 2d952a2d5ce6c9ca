//! Generated registries: realistic records (the node's `sample` generator) written as the parks'
//! own signed changes, ingested by a real replica in sync-page-sized batches, and saved as data
//! directories that each scenario copies. The same changes are kept as plain Automerge documents,
//! the reference most scenarios measure against.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, anyhow, bail};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{AutoCommit, Automerge, ObjId, ROOT, ReadDoc};
use ed25519_dalek::SigningKey;
use kervan_node::sample::Sample;
use kervan_node::{Identity, Outcome, Replica, SledStore};
use kervan_protocol::records::{self, DECISION_STATUSES};
use kervan_protocol::sync::{MAX_PAGE_BYTES, MAX_PAGE_CHANGES};
use kervan_protocol::{Actor, DocId, FederationId, ParkId, RecordId, SignedChange};
use kervan_tests::{FOUNDING, Federation};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use tempfile::TempDir;

/// 2025-01-01T00:00:00Z: generated records are written from then on, 17 s apart.
const EPOCH: i64 = 1_735_689_600;

/// Unix seconds as RFC 3339, UTC, whole seconds.
pub(crate) fn rfc3339(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// A ULID-shaped local id (26 Crockford base-32 digits), as the API would assign.
fn ulid(rng: &mut StdRng, t: i64) -> String {
    const DIGITS: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let ms = (t as u128) * 1000 + rng.random_range(0..1000u128);
    let value = (ms << 80) | (rng.random::<u128>() >> 48);
    (0..26)
        .rev()
        .map(|i| DIGITS[((value >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// Counts of what a registry holds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    pub(crate) startups: usize,
    pub(crate) programs: usize,
    pub(crate) applications: usize,
    pub(crate) decisions: usize,
    pub(crate) updates: usize,
    pub(crate) changes: usize,
}

impl Counts {
    pub(crate) fn records(&self) -> usize {
        self.startups + self.programs + self.applications + self.decisions
    }
}

/// One park writing its own ledger, as its node would: one signed change per record.
pub(crate) struct Writer {
    pub(crate) park: ParkId,
    pub(crate) doc_id: DocId,
    country: String,
    doc: AutoCommit,
    key: SigningKey,
    colls: BTreeMap<&'static str, ObjId>,
    startups: Vec<RecordId>,
    programs: Vec<RecordId>,
    applications: Vec<RecordId>,
    /// Applications to this park's programs that wait for its decision.
    undecided: Vec<RecordId>,
}

/// What a park needs to write as its device: id, country, key and actor.
#[derive(Clone)]
pub(crate) struct ParkIdentity {
    pub(crate) park: ParkId,
    pub(crate) country: String,
    pub(crate) key: SigningKey,
    pub(crate) actor: Actor,
}

impl ParkIdentity {
    pub(crate) fn of(identity: &Identity, country: &str) -> Self {
        Self {
            park: identity.park.clone(),
            country: country.to_owned(),
            key: identity.key.clone(),
            actor: identity.actor(),
        }
    }
}

impl Writer {
    /// A writer continuing `doc`, the park's ledger as it stands.
    pub(crate) fn new(id: &ParkIdentity, mut doc: AutoCommit) -> anyhow::Result<Self> {
        doc.set_actor(id.actor.to_automerge());
        let mut colls = BTreeMap::new();
        for c in records::COLLECTIONS {
            let obj = match doc.get(&ROOT, *c)? {
                Some((automerge::Value::Object(_), o)) => o,
                _ => bail!("the ledger of {} has no {c} map", id.park),
            };
            colls.insert(*c, obj);
        }
        let mut w = Self {
            park: id.park.clone(),
            doc_id: DocId::Ledger(id.park.clone()),
            country: id.country.clone(),
            doc,
            key: id.key.clone(),
            colls,
            startups: Vec::new(),
            programs: Vec::new(),
            applications: Vec::new(),
            undecided: Vec::new(),
        };
        for key in w.doc.keys(&w.colls["startups"]).collect::<Vec<_>>() {
            w.startups.push(key.parse()?);
        }
        for key in w.doc.keys(&w.colls["programs"]).collect::<Vec<_>>() {
            w.programs.push(key.parse()?);
        }
        Ok(w)
    }

    /// Signs what was just edited; `None` when the edit changed nothing (Automerge then
    /// commits no change, and the last change is an older one).
    fn commit(&mut self, fed: &FederationId, t: i64) -> Option<Vec<u8>> {
        self.doc
            .commit_with(CommitOptions::default().with_time(t))?;
        let mut change = self
            .doc
            .get_last_local_change()
            .expect("a change was just committed");
        Some(SignedChange::sign(fed, self.doc_id.clone(), &mut change, &self.key).encode())
    }

    fn create(
        &mut self,
        fed: &FederationId,
        t: i64,
        collection: &'static str,
        id: &RecordId,
        record: &Value,
    ) -> anyhow::Result<Vec<u8>> {
        let fields = records::collection_fields(collection).context("collection")?;
        let obj = record.as_object().cloned().unwrap_or_default();
        let value = records::record_to_automerge(fields, &obj);
        let coll = self.colls[collection].clone();
        self.doc
            .batch_create_object(&coll, id.to_string().as_str(), &value, false)?;
        self.commit(fed, t)
            .context("creating a record committed nothing")
    }

    fn update(
        &mut self,
        fed: &FederationId,
        t: i64,
        collection: &'static str,
        id: &RecordId,
        fields: &[(&str, automerge::ScalarValue)],
    ) -> anyhow::Result<Option<Vec<u8>>> {
        let coll = self.colls[collection].clone();
        let rec = match self.doc.get(&coll, id.to_string().as_str())? {
            Some((automerge::Value::Object(_), o)) => o,
            _ => bail!("no record {id}"),
        };
        for (k, v) in fields {
            self.doc.put(&rec, *k, v.clone())?;
        }
        Ok(self.commit(fed, t))
    }
}

/// Writes the records of a registry, round robin over the parks.
pub(crate) struct Generator {
    federation: FederationId,
    pub(crate) writers: Vec<Writer>,
    sample: Sample,
    rng: StdRng,
    clock: i64,
    pub(crate) counts: Counts,
}

impl Generator {
    pub(crate) fn new(federation: FederationId, writers: Vec<Writer>, seed: u64) -> Self {
        Self {
            federation,
            writers,
            sample: Sample::new(seed),
            rng: StdRng::seed_from_u64(seed ^ 0x6b65_7276_616e),
            clock: EPOCH,
            counts: Counts::default(),
        }
    }

    fn tick(&mut self) -> i64 {
        self.clock += 17;
        self.clock
    }

    fn new_id(&mut self, w: usize, t: i64) -> anyhow::Result<RecordId> {
        let local = ulid(&mut self.rng, t);
        Ok(RecordId::new(self.writers[w].park.clone(), &local)?)
    }

    fn startup(&mut self, w: usize) -> anyhow::Result<Vec<u8>> {
        let t = self.tick();
        let id = self.new_id(w, t)?;
        let country = self.writers[w].country.clone();
        let mut record = self.sample.startup(&country);
        stamp(&mut record, &["created_at", "updated_at"], t);
        let env = self.writers[w].create(&self.federation, t, "startups", &id, &record)?;
        self.writers[w].startups.push(id);
        self.counts.startups += 1;
        Ok(env)
    }

    fn program(&mut self, w: usize) -> anyhow::Result<Vec<u8>> {
        let t = self.tick();
        let id = self.new_id(w, t)?;
        let host = self.writers[w].park.to_string();
        let mut record = self.sample.program(&host);
        stamp(&mut record, &["created_at", "updated_at"], t);
        let env = self.writers[w].create(&self.federation, t, "programs", &id, &record)?;
        self.writers[w].programs.push(id);
        self.counts.programs += 1;
        Ok(env)
    }

    /// A startup of park `w` applies to a program of another park.
    fn application(&mut self, w: usize) -> anyhow::Result<Option<Vec<u8>>> {
        let n = self.writers.len();
        if n < 2 {
            return Ok(None);
        }
        let host = (w + 1 + self.rng.random_range(0..n - 1)) % n;
        if self.writers[w].startups.is_empty() || self.writers[host].programs.is_empty() {
            return Ok(None);
        }
        let s = self.rng.random_range(0..self.writers[w].startups.len());
        let p = self.rng.random_range(0..self.writers[host].programs.len());
        let startup = self.writers[w].startups[s].clone();
        let program = self.writers[host].programs[p].clone();
        let t = self.tick();
        let id = self.new_id(w, t)?;
        let mut record = json!({
            "startup": startup.to_string(),
            "program": program.to_string(),
            "message": "We would like to join this program with our team of founders.",
            "withdrawn": false,
        });
        stamp(&mut record, &["submitted_at"], t);
        let env = self.writers[w].create(&self.federation, t, "applications", &id, &record)?;
        self.writers[w].applications.push(id.clone());
        self.writers[host].undecided.push(id);
        self.counts.applications += 1;
        Ok(Some(env))
    }

    /// Park `w` decides on an application to one of its programs.
    fn decision(&mut self, w: usize) -> anyhow::Result<Option<Vec<u8>>> {
        if self.writers[w].undecided.is_empty() {
            return Ok(None);
        }
        let i = self.rng.random_range(0..self.writers[w].undecided.len());
        let app = self.writers[w].undecided.swap_remove(i);
        let status = DECISION_STATUSES[self.rng.random_range(0..DECISION_STATUSES.len())];
        let t = self.tick();
        let mut record = json!({"status": status, "note": "Decided by the selection committee."});
        stamp(&mut record, &["decided_at"], t);
        let env = self.writers[w].create(&self.federation, t, "decisions", &app, &record)?;
        self.counts.decisions += 1;
        Ok(Some(env))
    }

    /// Park `w` updates one of its startups (stage, team size) or withdraws an application.
    fn update(&mut self, w: usize) -> anyhow::Result<Option<Vec<u8>>> {
        let t = self.tick();
        let stamp_now = automerge::ScalarValue::Str(rfc3339(t).into());
        if self.rng.random_range(0..10) == 0 && !self.writers[w].applications.is_empty() {
            // Withdrawn once: withdrawing again would change nothing.
            let i = self.rng.random_range(0..self.writers[w].applications.len());
            let app = self.writers[w].applications.swap_remove(i);
            let env = self.writers[w].update(
                &self.federation,
                t,
                "applications",
                &app,
                &[("withdrawn", automerge::ScalarValue::Boolean(true))],
            )?;
            self.counts.updates += usize::from(env.is_some());
            return Ok(env);
        }
        if self.writers[w].startups.is_empty() {
            return Ok(None);
        }
        let i = self.rng.random_range(0..self.writers[w].startups.len());
        let id = self.writers[w].startups[i].clone();
        let stage = records::STAGES[self.rng.random_range(0..records::STAGES.len())];
        let team = self.rng.random_range(2..=150i64);
        let env = self.writers[w].update(
            &self.federation,
            t,
            "startups",
            &id,
            &[
                ("stage", automerge::ScalarValue::Str(stage.into())),
                ("team_size", automerge::ScalarValue::Int(team)),
                ("updated_at", stamp_now),
            ],
        )?;
        self.counts.updates += usize::from(env.is_some());
        Ok(env)
    }

    /// The changes of `startups` more startups and what goes with them: about one program per
    /// 500 startups (at least two per park), an application per 10, a decision and an update
    /// per 20. Keeps going until at least `min_changes` changes are made.
    pub(crate) fn grow(
        &mut self,
        startups: usize,
        min_changes: usize,
    ) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let n = self.writers.len();
        let mut made = 0;
        while made < startups || out.len() < min_changes {
            let w = (self.counts.startups) % n;
            if self.writers[w].programs.len() < 2 || self.rng.random_range(0..500) == 0 {
                out.push(self.program(w)?);
            }
            out.push(self.startup(w)?);
            made += 1;
            if self.rng.random_range(0..10) == 0
                && let Some(e) = self.application(w)?
            {
                out.push(e);
            }
            if self.rng.random_range(0..20) == 0
                && let Some(e) = self.decision(w)?
            {
                out.push(e);
            }
            if self.rng.random_range(0..20) == 0
                && let Some(e) = self.update(w)?
            {
                out.push(e);
            }
        }
        self.counts.changes += out.len();
        Ok(out)
    }

    /// `n` new startups of park `w` and nothing else: a gap of `n` changes.
    pub(crate) fn startups_at(&mut self, w: usize, n: usize) -> anyhow::Result<Vec<Vec<u8>>> {
        (0..n).map(|_| self.startup(w)).collect()
    }
}

fn stamp(record: &mut Value, fields: &[&str], t: i64) {
    if let Some(o) = record.as_object_mut() {
        for f in fields {
            o.insert((*f).into(), Value::String(rfc3339(t)));
        }
    }
}

/// Splits envelopes into pages as a sync answer would carry them.
pub(crate) fn pages(envelopes: &[Vec<u8>]) -> Vec<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut page = Vec::new();
    let mut bytes = 0;
    for e in envelopes {
        if bytes >= MAX_PAGE_BYTES || page.len() >= MAX_PAGE_CHANGES {
            out.push(std::mem::take(&mut page));
            bytes = 0;
        }
        bytes += e.len();
        page.push(e.clone());
    }
    if !page.is_empty() {
        out.push(page);
    }
    out
}

/// Ingests envelopes in page-sized batches; fails unless every one is accepted.
pub(crate) fn ingest_all(
    replica: &mut Replica<SledStore>,
    envelopes: &[Vec<u8>],
    source: &str,
) -> anyhow::Result<()> {
    for page in pages(envelopes) {
        let reports = replica.ingest(page, source)?;
        if let Some(r) = reports.iter().find(|r| r.outcome != Outcome::Accepted) {
            bail!("a generated change was not accepted: {r:?}");
        }
    }
    Ok(())
}

/// Envelopes parsed into Automerge changes, by document.
pub(crate) fn by_doc(
    envelopes: &[Vec<u8>],
) -> anyhow::Result<BTreeMap<DocId, Vec<automerge::Change>>> {
    let mut out: BTreeMap<DocId, Vec<automerge::Change>> = BTreeMap::new();
    for e in envelopes {
        let env = SignedChange::decode(e, usize::MAX)?;
        let change = env.parse()?;
        out.entry(env.doc).or_default().push(change);
    }
    Ok(out)
}

/// The documents of a registry as plain Automerge documents.
#[derive(Clone, Default)]
pub(crate) struct Docs(pub(crate) BTreeMap<DocId, Vec<u8>>);

impl Docs {
    pub(crate) fn load(&self) -> anyhow::Result<BTreeMap<DocId, Automerge>> {
        self.0
            .iter()
            .map(|(d, b)| Ok((d.clone(), Automerge::load(b)?)))
            .collect()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.0.values().map(Vec::len).sum()
    }

    /// Writes each document to `dir`, one file each, for a child process to load.
    pub(crate) fn write_to(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let mut out = Vec::new();
        for (i, b) in self.0.values().enumerate() {
            let p = dir.join(format!("doc-{i}.automerge"));
            std::fs::write(&p, b)?;
            out.push(p);
        }
        Ok(out)
    }
}

/// A registry at one size: a closed data directory of the hub park holding everything, and the
/// same documents as plain Automerge.
pub(crate) struct Stage {
    pub(crate) startups: usize,
    pub(crate) counts: Counts,
    pub(crate) dir: PathBuf,
    pub(crate) docs: Docs,
    pub(crate) doc_files: Vec<PathBuf>,
    /// Seconds to write and ingest this stage's changes.
    pub(crate) build_secs: f64,
}

/// Everything the scenarios share.
pub(crate) struct Dataset {
    pub(crate) federation: FederationId,
    pub(crate) work: TempDir,
    /// A park that has joined and holds nothing but the genesis and the ledgers' first changes.
    pub(crate) fresh: PathBuf,
    pub(crate) identities: Vec<ParkIdentity>,
    pub(crate) stages: Vec<Stage>,
    /// The changes written after the first stage, in order: the ingest scenario's stream.
    pub(crate) stream: Vec<Vec<u8>>,
    _fed: Federation,
}

/// Copies a directory tree with its permissions.
pub(crate) fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    std::fs::set_permissions(to, std::fs::metadata(from)?.permissions())?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let dest = to.join(entry.file_name());
        if ty.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else if ty.is_file() {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

/// Parks for a federation of `n`: the founding parks, then generated ones.
pub(crate) fn park_list(n: usize) -> Vec<(String, String, String, String)> {
    const COUNTRIES: [(&str, &str); 5] = [
        ("KZ", "Almaty"),
        ("UZ", "Samarkand"),
        ("KG", "Osh"),
        ("AZ", "Ganja"),
        ("TR", "Izmir"),
    ];
    (0..n)
        .map(|i| {
            if let Some((id, name, country, city)) = FOUNDING.get(i) {
                (
                    (*id).into(),
                    (*name).into(),
                    (*country).into(),
                    (*city).into(),
                )
            } else {
                let (country, city) = COUNTRIES[i % COUNTRIES.len()];
                (
                    format!("{}-regional-hub-{i:02}", country.to_lowercase()),
                    format!("Regional Hub {i}"),
                    country.into(),
                    city.into(),
                )
            }
        })
        .collect()
}

/// A federation of `n` parks, joined, each holding every ledger's first change.
pub(crate) fn federation(n: usize, tune: impl Fn(&mut kervan_node::Config)) -> Federation {
    let list = park_list(n);
    let refs: Vec<(&str, &str, &str, &str)> = list
        .iter()
        .map(|(a, b, c, d)| (a.as_str(), b.as_str(), c.as_str(), d.as_str()))
        .collect();
    let mut fed = Federation::with(&refs, tune);
    fed.exchange_all();
    fed
}

/// Writers for the first `n` parks of `fed`, from the ledgers park 0 holds.
pub(crate) fn writers(
    fed: &mut Federation,
    n: usize,
    seed: u64,
) -> anyhow::Result<(Vec<ParkIdentity>, Generator)> {
    let mut identities = Vec::new();
    for park in fed.parks.iter_mut().take(n) {
        let country = park.country.clone();
        let identity = park
            .replica()
            .identity()
            .ok_or_else(|| anyhow!("park has no identity"))?
            .clone();
        identities.push(ParkIdentity::of(&identity, &country));
    }
    let by = by_doc(&kervan_tests::entries(&fed.parks[0].export()))?;
    let mut ws = Vec::new();
    for id in &identities {
        let mut doc = AutoCommit::new();
        let changes = by
            .get(&DocId::Ledger(id.park.clone()))
            .cloned()
            .ok_or_else(|| anyhow!("no ledger of {}", id.park))?;
        doc.apply_changes(changes)?;
        ws.push(Writer::new(id, doc)?);
    }
    Ok((identities, Generator::new(fed.id, ws, seed)))
}

/// Builds registries of `sizes` startups (ascending) over four parks of a five-park federation
/// (the fifth stays empty: the fresh park), and a stream of at least `stream` changes written
/// after the first stage.
pub(crate) fn build(sizes: &[usize], stream: usize) -> anyhow::Result<Dataset> {
    let work = tempfile::Builder::new().prefix("kervan-bench").tempdir()?;
    let mut fed = federation(5, |_| {});
    let (identities, mut generator) = writers(&mut fed, 4, 7)?;
    let mut reference: BTreeMap<DocId, Automerge> = BTreeMap::new();
    for (doc, changes) in by_doc(&kervan_tests::entries(&fed.parks[0].export()))? {
        let mut d = Automerge::new();
        d.apply_changes(changes)?;
        reference.insert(doc, d);
    }
    for park in &mut fed.parks {
        park.replica().snapshot_all()?;
        park.close();
    }
    let fresh = work.path().join("fresh");
    copy_dir(fed.parks[4].dir.root(), &fresh)?;

    let mut stages = Vec::new();
    let mut stream_changes = Vec::new();
    let mut done = 0;
    for (i, &size) in sizes.iter().enumerate() {
        let started = Instant::now();
        let want_stream = if i == 1 { stream } else { 0 };
        eprintln!("generating a registry of {size} startups");
        let changes = generator.grow(size - done, want_stream)?;
        if i == 1 {
            stream_changes = changes[..stream.min(changes.len())].to_vec();
        }
        done = size;
        let hub = fed.parks[0].replica();
        ingest_all(hub, &changes, "import")?;
        hub.snapshot_all()?;
        for (doc, cs) in by_doc(&changes)? {
            reference
                .get_mut(&doc)
                .ok_or_else(|| anyhow!("no document {doc}"))?
                .apply_changes(cs)?;
        }
        fed.parks[0].close();
        let build_secs = started.elapsed().as_secs_f64();
        let dir = work.path().join(format!("stage-{size}"));
        copy_dir(fed.parks[0].dir.root(), &dir)?;
        let docs = Docs(
            reference
                .iter()
                .map(|(d, a)| (d.clone(), a.save()))
                .collect(),
        );
        let doc_files = docs.write_to(&work.path().join(format!("docs-{size}")))?;
        eprintln!(
            "  {} changes, {} records, in {build_secs:.1} s",
            generator.counts.changes,
            generator.counts.records()
        );
        stages.push(Stage {
            startups: size,
            counts: generator.counts,
            dir,
            docs,
            doc_files,
            build_secs,
        });
    }
    if sizes.len() == 1 && stream > 0 {
        eprintln!("generating a stream of {stream} changes");
        stream_changes = generator.grow(0, stream)?;
        stream_changes.truncate(stream);
    }
    Ok(Dataset {
        federation: fed.id,
        work,
        fresh,
        identities,
        stages,
        stream: stream_changes,
        _fed: fed,
    })
}

impl Dataset {
    pub(crate) fn stage(&self, startups: usize) -> anyhow::Result<&Stage> {
        self.stages
            .iter()
            .find(|s| s.startups == startups)
            .ok_or_else(|| anyhow!("no registry of {startups} startups was built"))
    }

    /// A fresh copy of a directory under the work dir.
    pub(crate) fn copy(&self, from: &Path, name: &str) -> anyhow::Result<PathBuf> {
        let to = self.work.path().join(name);
        if to.exists() {
            std::fs::remove_dir_all(&to)?;
        }
        copy_dir(from, &to)?;
        Ok(to)
    }

    /// A writer of park `w` continuing its ledger as it stands in `stage`.
    pub(crate) fn writer_at(
        &self,
        stage: &Stage,
        w: usize,
        seed: u64,
    ) -> anyhow::Result<Generator> {
        let id = &self.identities[w];
        let bytes = stage
            .docs
            .0
            .get(&DocId::Ledger(id.park.clone()))
            .ok_or_else(|| anyhow!("no ledger of {}", id.park))?;
        let writer = Writer::new(id, AutoCommit::load(bytes)?)?;
        let mut g = Generator::new(self.federation, vec![writer], seed);
        g.clock = EPOCH + 40_000_000;
        Ok(g)
    }
}

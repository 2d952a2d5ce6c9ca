//! Kervan's test harness: federations of real park nodes, each with a real data directory and
//! sled store in a temporary directory, and a forger that writes the changes a hostile member
//! would send. [`testnet`] runs such parks as networked nodes on loopback.

use std::collections::BTreeMap;

pub mod hostile;
pub mod testnet;

use automerge::{AutoCommit, ReadDoc};
use ed25519_dalek::SigningKey;
use kervan_node::data_dir::genesis_file;
use kervan_node::query::{AppFilter, Filter};
use kervan_node::replica::{Options, Outcome, Report};
use kervan_node::{DataDir, Replica, SledStore, Store};
use kervan_protocol::{
    Actor, Bundle, DeviceKey, DocId, FederationId, Hash, ParkCard, ParkId, SignedChange,
};
use serde_json::Value;
use tempfile::TempDir;

/// The founding parks of the federation: id, name, country, city (the demo's parks).
pub use kervan_node::demo::PARKS as FOUNDING;

/// One park's node: a data directory and its open replica.
pub struct Park {
    pub id: ParkId,
    pub country: String,
    pub dir: DataDir,
    replica: Option<Replica<SledStore>>,
    _tmp: TempDir,
}

impl std::fmt::Debug for Park {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Park").field("id", &self.id).finish()
    }
}

impl Park {
    /// Initialises a data directory for a park and returns it with its card.
    pub fn init(id: &str, name: &str, country: &str, city: &str) -> (Self, ParkCard) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DataDir::new(tmp.path().join("node"));
        let card = dir
            .init(ParkCard {
                id: id.parse().expect("park id"),
                name: name.into(),
                country: country.into(),
                city: Some(city.into()),
                website: None,
                device: DeviceKey([0; 32]),
                epoch: String::new(),
                proof: String::new(),
                label: Some("primary".into()),
            })
            .expect("init");
        let park = Self {
            id: card.id.clone(),
            country: country.into(),
            dir,
            replica: None,
            _tmp: tmp,
        };
        (park, card)
    }

    pub fn replica(&mut self) -> &mut Replica<SledStore> {
        if self.replica.is_none() {
            self.replica = Some(self.dir.open_replica().expect("open replica"));
        }
        self.replica.as_mut().expect("just opened")
    }

    /// Drops the replica without a clean shutdown (no final snapshot) and opens it again.
    pub fn restart(&mut self) {
        self.replica = None;
        self.replica();
    }

    /// Closes the replica so the data directory can be opened by someone else.
    pub fn close(&mut self) {
        self.replica = None;
    }

    pub fn key(&self) -> SigningKey {
        self.dir.signing_key().expect("device key")
    }

    pub fn device(&self) -> DeviceKey {
        DeviceKey(self.key().verifying_key().to_bytes())
    }

    pub fn export(&mut self) -> Vec<u8> {
        self.replica().export(None).expect("export").encode()
    }

    pub fn import(&mut self, bundle: &[u8]) -> Vec<Report> {
        self.replica().import(bundle, "test").expect("import")
    }

    pub fn digest(&mut self) -> Hash {
        self.replica().digest()
    }

    /// Everything the query index answers, as JSON, for comparing two nodes.
    pub fn view(&mut self) -> Value {
        view(self.replica())
    }
}

/// Everything a replica's query index answers, as JSON.
pub fn view(r: &Replica<SledStore>) -> Value {
    index_view(r.index())
}

/// Everything a query index answers, as JSON.
pub fn index_view(index: &kervan_node::query::Index) -> Value {
    let all = Filter {
        limit: Some(500),
        ..Filter::default()
    };
    serde_json::json!({
        "parks": index.parks(),
        "startups": index.startups(&all).expect("query").items,
        "programs": index.programs(&all).expect("query").items,
        "applications": index.applications(&AppFilter { limit: Some(500), ..AppFilter::default() })
            .expect("query").items,
    })
}

/// A federation of parks that have all joined the same genesis.
pub struct Federation {
    pub id: FederationId,
    pub genesis: Vec<u8>,
    pub parks: Vec<Park>,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation").field("id", &self.id).finish()
    }
}

impl Federation {
    /// The first `n` founding parks, each initialised, listed in one genesis and joined.
    pub fn founding(n: usize) -> Self {
        Self::with(&FOUNDING[..n], |_| {})
    }

    /// Parks as given; `tune` may change each park's config before it joins.
    pub fn with(
        parks: &[(&str, &str, &str, &str)],
        tune: impl Fn(&mut kervan_node::Config),
    ) -> Self {
        let mut nodes = Vec::new();
        let mut cards = Vec::new();
        for (id, name, country, city) in parks {
            let (park, card) = Park::init(id, name, country, city);
            let mut config = park.dir.config().expect("config");
            tune(&mut config);
            park.dir.write_config(&config).expect("write config");
            nodes.push(park);
            cards.push(card);
        }
        let (id, genesis) = genesis_file("Test Federation", "For tests.", &cards).expect("genesis");
        for park in &nodes {
            park.dir.join(&genesis).expect("join");
        }
        Self {
            id,
            genesis,
            parks: nodes,
        }
    }

    pub fn park(&mut self, i: usize) -> &mut Park {
        &mut self.parks[i]
    }

    /// An empty replica of this federation with no identity: it only receives.
    pub fn observer(&self) -> Observer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(tmp.path()).expect("store");
        let replica = Replica::open(store, self.id, None, Options::default()).expect("open");
        Observer { replica, _tmp: tmp }
    }

    /// Every park sends its export to every other park, in index order.
    pub fn exchange_all(&mut self) {
        let bundles: Vec<Vec<u8>> = self.parks.iter_mut().map(Park::export).collect();
        for (i, park) in self.parks.iter_mut().enumerate() {
            for (j, b) in bundles.iter().enumerate() {
                if i != j {
                    park.import(b);
                }
            }
        }
    }
}

/// A replica that only receives.
pub struct Observer {
    pub replica: Replica<SledStore>,
    _tmp: TempDir,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer").finish_non_exhaustive()
    }
}

impl Observer {
    pub fn ingest(&mut self, envelopes: Vec<Vec<u8>>) -> Vec<Report> {
        self.replica.ingest(envelopes, "test").expect("ingest")
    }
}

/// The changes of one park's ledger after it wrote `startups` sample startups through its
/// replica, one change each, as the API writes them: the data of the examples that probe
/// Automerge on a realistic ledger.
pub fn sample_ledger(startups: usize) -> Vec<automerge::Change> {
    sample_ledger_envelopes(startups)
        .iter()
        .map(|e| e.parse().expect("change"))
        .collect()
}

/// [`sample_ledger`]'s changes in their signed envelopes, as the park stores and sends them.
pub fn sample_ledger_envelopes(startups: usize) -> Vec<SignedChange> {
    let mut fed = Federation::founding(1);
    let mut sample = kervan_node::sample::Sample::new(1);
    let country = fed.park(0).country.clone();
    for _ in 0..startups {
        fed.park(0)
            .replica()
            .create(
                kervan_node::Collection::Startups,
                None,
                &sample.startup(&country),
            )
            .expect("create");
    }
    let ledger = DocId::Ledger(fed.parks[0].id.clone());
    entries(&fed.park(0).export())
        .iter()
        .map(|e| SignedChange::decode(e, usize::MAX).expect("envelope"))
        .filter(|e| e.doc == ledger)
        .collect()
}

/// The median of some durations.
pub fn median(mut xs: Vec<std::time::Duration>) -> std::time::Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// The envelopes of a bundle.
pub fn entries(bundle: &[u8]) -> Vec<Vec<u8>> {
    Bundle::decode(bundle, usize::MAX, usize::MAX)
        .expect("bundle")
        .entries
}

/// The one outcome of a one-change ingest.
pub fn only(reports: &[Report]) -> &Outcome {
    assert_eq!(reports.len(), 1, "{reports:?}");
    &reports[0].outcome
}

/// The rejection code of an outcome, or a panic naming what came instead.
pub fn rejected_code(o: &Outcome) -> &str {
    match o {
        Outcome::Rejected { code, .. } => code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// The state of a node that must not change when it refuses input.
pub fn fingerprint(r: &Replica<SledStore>) -> (Hash, usize, usize, Value) {
    (
        r.digest(),
        r.store().change_count(),
        r.pending_count(),
        view(r),
    )
}

/// Writes changes as a given key would, on top of a document as a park holds it: what a
/// hostile or buggy member sends.
pub struct Forger {
    pub doc: AutoCommit,
    pub doc_id: DocId,
    pub key: SigningKey,
    pub actor: Actor,
    pub federation: FederationId,
}

impl std::fmt::Debug for Forger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forger").field("doc", &self.doc_id).finish()
    }
}

impl Forger {
    /// Starts from the accepted changes of `doc_id` that `park` holds, writing as `key` with a
    /// fresh epoch (a new actor of that key).
    pub fn new(park: &mut Park, doc_id: DocId, key: SigningKey, federation: FederationId) -> Self {
        let actor = Actor {
            key: DeviceKey(key.verifying_key().to_bytes()),
            epoch: rand::random(),
        };
        let mut doc = AutoCommit::new();
        doc.set_actor(actor.to_automerge());
        let mut f = Self {
            doc,
            doc_id,
            key,
            actor,
            federation,
        };
        f.catch_up(park);
        f
    }

    /// Takes in what `park` now holds of this forger's document, so the next change is built
    /// on it.
    pub fn catch_up(&mut self, park: &mut Park) {
        let changes: Vec<automerge::Change> = entries(&park.export())
            .iter()
            .map(|e| SignedChange::decode(e, usize::MAX).expect("envelope"))
            .filter(|e| e.doc == self.doc_id)
            .map(|e| e.parse().expect("change"))
            .collect();
        self.doc.apply_changes(changes).expect("apply");
    }

    /// The same actor on a copy of this forger's document as it is now: its next change takes
    /// the same seq as this one's, the other branch of a fork.
    pub fn twin(&mut self) -> Self {
        let mut doc = self.doc.fork();
        doc.set_actor(self.actor.to_automerge());
        Self {
            doc,
            doc_id: self.doc_id.clone(),
            key: self.key.clone(),
            actor: self.actor,
            federation: self.federation,
        }
    }

    /// Makes one change with `edit` and returns it.
    pub fn change(&mut self, edit: impl FnOnce(&mut AutoCommit)) -> automerge::Change {
        edit(&mut self.doc);
        self.doc
            .commit_with(automerge::transaction::CommitOptions::default().with_time(1_767_225_600));
        self.doc.get_last_local_change().expect("committed")
    }

    /// Signs a change for this forger's document.
    pub fn sign(&self, change: &mut automerge::Change) -> Vec<u8> {
        SignedChange::sign(&self.federation, self.doc_id.clone(), change, &self.key).encode()
    }

    /// The object id of a map at `path` from the root.
    pub fn obj(&self, path: &[&str]) -> automerge::ObjId {
        let mut obj = automerge::ROOT;
        for key in path {
            obj = match self.doc.get(&obj, *key).expect("get") {
                Some((automerge::Value::Object(_), id)) => id,
                _ => panic!("no map at {key} of {path:?}"),
            };
        }
        obj
    }
}

/// Counts the outcomes of reports by kind, for assertions.
pub fn tally(reports: &[Report]) -> BTreeMap<&'static str, usize> {
    let mut t = BTreeMap::new();
    for r in reports {
        let k = match r.outcome {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Pending { .. } => "pending",
            Outcome::Rejected { .. } => "rejected",
        };
        *t.entry(k).or_default() += 1;
    }
    t
}

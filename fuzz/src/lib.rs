//! What Kervan's fuzz targets share: the fixture federation they judge input against, an
//! in-memory rules [`Context`] built from it, and real replicas over sled in a temporary
//! directory.
//!
//! - [`fixture`]: `fixture/federation.kvn`, a real federation of two parks (genesis, both
//!   ledgers, records, a decision, a second device) exported by `examples/seed_corpus.rs`,
//!   judged once per process into a [`MemoryContext`] and an Automerge document per doc.
//! - [`MemoryContext`]: the facts a verdict may depend on, held in maps, as the replica holds
//!   them; [`MemoryContext::admit`] records what an accepted change adds.
//! - [`open_replica`]: a `Replica<SledStore>` in a temporary directory with the fixture
//!   imported, so a target feeds a real node what a peer or a bundle file would.
//! - [`run`]: runs one input, so a panic the code under test catches is not a crash and one
//!   that escapes is.
//!
//! The seed corpora are changes made on top of the fixture (see `examples/seed_corpus.rs`), so
//! each seed is judged all the way through the rules rather than stopping at a slot or a
//! missing dependency.

use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{Once, OnceLock};

use kervan_node::replica::Options;
use kervan_node::{Replica, SledStore};
use kervan_protocol::rules::{self, CausalInfo, Checked, Context, Limits, ObjKey, ObjectInfo};
use kervan_protocol::{
    Actor, Bundle, DeviceKey, DocId, FederationId, Hash, ParkId, Registration, SignedChange,
    Verdict,
};
use tempfile::TempDir;

thread_local! {
    /// Set while [`run`] runs an input on this thread.
    static IN_TARGET: Cell<bool> = const { Cell::new(false) };
    /// The last panic on this thread inside [`run`]: its message and where it happened.
    static LAST_PANIC: RefCell<Option<(String, Backtrace)>> = const { RefCell::new(None) };
}

/// Runs one input of a target. A panic that escapes it is a finding: its message and
/// backtrace are printed and the process aborts, which libFuzzer reports as a crash and saves
/// the input.
///
/// libfuzzer-sys installs a panic hook that aborts on every panic, even one the code under
/// test catches. Kervan catches Automerge's panics on purpose (`SignedChange::parse` refuses
/// what Automerge cannot read), so this replaces that hook with one that only notes a panic on
/// the target's thread; a panic on any other thread (sled's) still aborts at once.
pub fn run(input: impl FnOnce()) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            if IN_TARGET.with(Cell::get) {
                let noted = (info.to_string(), Backtrace::force_capture());
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(noted));
            } else {
                eprintln!("{info}\n{}", Backtrace::force_capture());
                std::process::abort();
            }
        }));
    });
    IN_TARGET.with(|t| t.set(true));
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(input));
    IN_TARGET.with(|t| t.set(false));
    if outcome.is_err() {
        match LAST_PANIC.with(|p| p.borrow_mut().take()) {
            Some((message, backtrace)) => {
                eprintln!("a panic escaped the fuzz target: {message}\n{backtrace}");
            }
            None => eprintln!("a panic escaped the fuzz target"),
        }
        std::process::abort();
    }
}

/// The fixture federation's export: every accepted change, federation document first, each
/// document in causal order. `examples/seed_corpus.rs` writes it with the seed corpora.
pub const FIXTURE: &[u8] = include_bytes!("../fixture/federation.kvn");

/// The fixture federation, judged.
#[derive(Debug)]
pub struct Fixture {
    pub federation: FederationId,
    /// Every envelope of the export, in its order; the first is the genesis.
    pub envelopes: Vec<Vec<u8>>,
    /// What a replica that accepted the whole export knows.
    pub context: MemoryContext,
    /// Each document with the fixture's accepted changes applied.
    pub docs: BTreeMap<DocId, automerge::Automerge>,
}

impl Fixture {
    /// The registered parks, in id order.
    pub fn parks(&self) -> impl Iterator<Item = &ParkId> {
        self.context.parks.iter()
    }
}

/// The fixture, judged on first use and shared by every input of the process.
pub fn fixture() -> &'static Fixture {
    static FIXTURE_STATE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE_STATE.get_or_init(|| {
        let bundle = Bundle::decode(FIXTURE, usize::MAX, usize::MAX)
            .expect("fixture/federation.kvn is a bundle written by examples/seed_corpus.rs");
        let mut context = MemoryContext::new(bundle.federation);
        let mut docs: BTreeMap<DocId, automerge::Automerge> = BTreeMap::new();
        for envelope in &bundle.entries {
            let checked = context.admit(envelope).unwrap_or_else(|why| {
                panic!("the fixture must be accepted in its order, but a change was not: {why}")
            });
            docs.entry(checked.doc.clone())
                .or_default()
                .apply_changes([checked.change.clone()])
                .expect("automerge applies every fixture change");
        }
        Fixture {
            federation: bundle.federation,
            envelopes: bundle.entries,
            context,
            docs,
        }
    })
}

/// The facts a verdict may depend on (the replica's registry, slots, causal infos and
/// objects), in memory.
#[derive(Debug, Clone)]
pub struct MemoryContext {
    federation: FederationId,
    limits: Limits,
    parks: BTreeSet<ParkId>,
    devices: BTreeSet<(ParkId, DeviceKey)>,
    roots: BTreeMap<ParkId, Actor>,
    frozen_keys: BTreeSet<DeviceKey>,
    accepted: HashMap<(DocId, Hash), CausalInfo>,
    excluded: HashSet<(DocId, Hash)>,
    rejected: HashSet<(DocId, Hash)>,
    slots: HashMap<(DocId, Actor, u64), Hash>,
    frozen: HashMap<(DocId, Actor), u64>,
    objects: HashMap<(DocId, ObjKey), ObjectInfo>,
}

impl MemoryContext {
    /// An empty context of a federation, with the protocol's limits.
    pub fn new(federation: FederationId) -> Self {
        Self {
            federation,
            limits: Limits::default(),
            parks: BTreeSet::new(),
            devices: BTreeSet::new(),
            roots: BTreeMap::new(),
            frozen_keys: BTreeSet::new(),
            accepted: HashMap::new(),
            excluded: HashSet::new(),
            rejected: HashSet::new(),
            slots: HashMap::new(),
            frozen: HashMap::new(),
            objects: HashMap::new(),
        }
    }

    /// Judges one envelope with [`rules::check`] and, if it is accepted, records what it adds
    /// as the replica does. There is no pending queue: changes must come in causal order.
    pub fn admit(&mut self, envelope: &[u8]) -> Result<Box<Checked>, String> {
        let signed = SignedChange::decode(envelope, self.limits.max_change_bytes)
            .map_err(|e| format!("envelope does not decode: {e}"))?;
        match rules::check(&signed, self) {
            Verdict::Accept(checked) => {
                self.record(&checked);
                Ok(checked)
            }
            Verdict::Pending(p) => Err(format!("pending: {p}")),
            Verdict::Reject(r) => Err(format!("rejected: {r}")),
        }
    }

    fn record(&mut self, c: &Checked) {
        let actor = c.info.actor;
        self.slots
            .insert((c.doc.clone(), actor, c.info.seq), c.hash);
        self.accepted
            .insert((c.doc.clone(), c.hash), c.info.clone());
        for (key, info) in &c.objects {
            self.objects.insert((c.doc.clone(), *key), info.clone());
        }
        for r in &c.registrations {
            match r {
                Registration::Park(p) => {
                    self.parks.insert(p.clone());
                }
                Registration::Device(p, k) => {
                    if self.devices.iter().any(|(q, d)| d == k && q != p) {
                        self.frozen_keys.insert(*k);
                    }
                    self.devices.insert((p.clone(), *k));
                }
                Registration::RootActor(p, a) => {
                    self.roots.insert(p.clone(), *a);
                }
            }
        }
    }
}

impl Context for MemoryContext {
    fn federation(&self) -> FederationId {
        self.federation
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    fn park_exists(&self, park: &ParkId) -> bool {
        self.parks.contains(park)
    }

    fn is_device(&self, park: &ParkId, key: &DeviceKey) -> bool {
        self.devices.contains(&(park.clone(), *key))
    }

    fn is_any_device(&self, key: &DeviceKey) -> bool {
        self.devices.iter().any(|(_, k)| k == key)
    }

    fn root_actor(&self, park: &ParkId) -> Option<Actor> {
        self.roots.get(park).copied()
    }

    fn device_frozen(&self, key: &DeviceKey) -> bool {
        self.frozen_keys.contains(key)
    }

    fn accepted(&self, doc: &DocId, hash: &Hash) -> Option<&CausalInfo> {
        self.accepted.get(&(doc.clone(), *hash))
    }

    fn excluded(&self, doc: &DocId, hash: &Hash) -> bool {
        self.excluded.contains(&(doc.clone(), *hash))
    }

    fn rejected(&self, doc: &DocId, hash: &Hash) -> bool {
        self.rejected.contains(&(doc.clone(), *hash))
    }

    fn slot(&self, doc: &DocId, actor: &Actor, seq: u64) -> Option<Hash> {
        self.slots.get(&(doc.clone(), *actor, seq)).copied()
    }

    fn frozen_from(&self, doc: &DocId, actor: &Actor) -> Option<u64> {
        self.frozen.get(&(doc.clone(), *actor)).copied()
    }

    fn object(&self, doc: &DocId, key: &ObjKey) -> Option<&ObjectInfo> {
        self.objects.get(&(doc.clone(), *key))
    }
}

/// A real replica (no device identity: it only receives) over sled in its own temporary
/// directory, with the fixture imported.
pub struct TempReplica {
    pub replica: Replica<SledStore>,
    _dir: TempDir,
}

impl std::fmt::Debug for TempReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TempReplica")
            .field("dir", &self._dir.path())
            .finish_non_exhaustive()
    }
}

/// Names of the replicas' directories: `kervan-fuzz.<pid>.<target>.<random>`.
const DIR_PREFIX: &str = "kervan-fuzz.";

/// Opens a replica of the fixture federation in a new directory under the temporary
/// directory (`TMPDIR`; `scripts/fuzz.sh` points it at a scratch directory on tmpfs when there
/// is one, since every ingest flushes sled).
///
/// libFuzzer ends the process with `exit`, so a replica held in a static is never dropped and
/// its directory stays behind: each call first removes the directories of processes that no
/// longer run.
pub fn open_replica(target: &str) -> TempReplica {
    let base = std::env::temp_dir();
    remove_stale_dirs(&base);
    let dir = tempfile::Builder::new()
        .prefix(&format!("{DIR_PREFIX}{}.{target}.", std::process::id()))
        .tempdir_in(&base)
        .expect("a temporary directory for the fuzz replica");
    let store = SledStore::open(dir.path()).expect("sled opens in a new directory");
    let fixture = fixture();
    let mut replica = Replica::open(store, fixture.federation, None, Options::default())
        .expect("an empty replica opens");
    let reports = replica
        .import(FIXTURE, "fixture")
        .expect("the fixture bundle imports");
    assert!(
        reports
            .iter()
            .all(|r| r.outcome == kervan_node::Outcome::Accepted),
        "the replica accepts every fixture change: {reports:?}"
    );
    TempReplica { replica, _dir: dir }
}

fn remove_stale_dirs(base: &Path) {
    // Without /proc there is no telling whether a process still runs: leave everything.
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('.').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            // Best effort: another process may be removing it at the same moment.
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether a rejection code is a refusal before any judgement by the rules: the envelope did
/// not decode, parse or verify, or was refused before. Such an entry must leave a replica's
/// accepted set, stored changes and pending queue as they were.
pub fn refused_before_judging(code: &str) -> bool {
    matches!(
        code,
        "malformed"
            | "too_large"
            | "too_many_ops"
            | "bad_change"
            | "bad_actor"
            | "bad_signature"
            | "already_rejected"
    )
}

//! A node's data directory:
//!
//! ```text
//! <dir>/config.toml   the node's configuration
//! <dir>/device.key    the device's ed25519 secret, hex (mode 0600)
//! <dir>/api.token     the bearer token of the local API (mode 0600)
//! <dir>/card.json     the park card to send to the federation's convener
//! <dir>/genesis.kvn   the federation's genesis, once joined
//! <dir>/store/        the sled store
//! ```

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use kervan_protocol::{
    Actor, Bundle, DeviceKey, DocId, FederationId, GenesisError, Hash, ParkCard, SignedChange,
    genesis,
};

use crate::config::{Config, ConfigError};
use crate::replica::{Identity, Options, Replica, ReplicaError, Starting};
use crate::store::{SledStore, Store, StoreError};

/// Why a data directory operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} is not a Kervan data directory (run `kervan init` first)")]
    NotInitialised(String),
    #[error("{0} already holds a device key; refusing to overwrite it")]
    AlreadyInitialised(String),
    #[error("device key {path} is invalid: {why}")]
    Key { path: String, why: String },
    #[error("device key {path} is readable by others (mode {mode:o}); it must be 0600")]
    KeyMode { path: String, mode: u32 },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("this node has not joined a federation (run `kervan join --genesis FILE`)")]
    NotJoined,
    #[error("genesis: {0}")]
    Genesis(String),
    #[error(
        "this node already belongs to federation {current}; the genesis is of federation {other}"
    )]
    OtherFederation {
        current: FederationId,
        other: FederationId,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error("invalid park card: {0}")]
    Card(String),
    #[error(
        "the store in {path} is damaged ({why}); stop the node and run `kervan repair`: it keeps the damaged store aside, rebuilds the store from every signed change it can still read, and the node fetches the rest from its peers"
    )]
    Damaged { path: String, why: String },
    #[error(
        "{0} is in use by another kervan process (a running node: stop it, or use the commands that talk to it)"
    )]
    InUse(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes a file readable by its owner only, replacing it atomically.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), DataDirError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(contents).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}

/// What joining a federation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    pub federation: FederationId,
    /// This device is the park's root device and started the park's ledger.
    pub started_ledger: bool,
    /// The genesis lists this device; if not, a device of the park must register it.
    pub device_listed: bool,
}

/// What `kervan init` is told about the park.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub card: ParkCard,
}

/// A node's data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Creates the directory with a new device key, API token, config and store, and returns
    /// the park card. `card.device` is replaced by the new key.
    pub fn init(&self, mut card: ParkCard) -> Result<ParkCard, DataDirError> {
        let key_path = self.path("device.key");
        if key_path.exists() {
            return Err(DataDirError::AlreadyInitialised(
                self.root.display().to_string(),
            ));
        }
        fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
            .map_err(io(&self.root))?;
        let key = SigningKey::generate(&mut rand::rng());
        card.device = DeviceKey(key.verifying_key().to_bytes());
        card.proof = kervan_protocol::device_proof(&key, &card.id);
        card.validate(this_year())
            .map_err(|e| DataDirError::Card(e.to_string()))?;
        let store = self.open_store()?;
        card.epoch = hex::encode(store.meta("epoch")?.unwrap_or_default());
        store.flush()?;
        drop(store);
        write_private(
            &self.path("api.token"),
            hex::encode(rand::random::<[u8; 32]>()).as_bytes(),
        )?;
        let config = Config::new(card.id.clone());
        write_private(&self.path("config.toml"), config.to_toml().as_bytes())?;
        let card_json = serde_json::to_string_pretty(&card).expect("a card serialises");
        write_private(&self.path("card.json"), card_json.as_bytes())?;
        // The key last: its presence marks a complete init.
        write_private(&key_path, hex::encode(key.to_bytes()).as_bytes())?;
        Ok(card)
    }

    pub fn is_initialised(&self) -> bool {
        self.path("device.key").exists()
    }

    pub fn config(&self) -> Result<Config, DataDirError> {
        if !self.is_initialised() {
            return Err(DataDirError::NotInitialised(
                self.root.display().to_string(),
            ));
        }
        Ok(Config::load(&self.path("config.toml"))?)
    }

    pub fn write_config(&self, config: &Config) -> Result<(), DataDirError> {
        write_private(&self.path("config.toml"), config.to_toml().as_bytes())
    }

    pub fn signing_key(&self) -> Result<SigningKey, DataDirError> {
        let path = self.path("device.key");
        if !path.exists() {
            return Err(DataDirError::NotInitialised(
                self.root.display().to_string(),
            ));
        }
        let mode = fs::metadata(&path).map_err(io(&path))?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(DataDirError::KeyMode {
                path: path.display().to_string(),
                mode,
            });
        }
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|e| DataDirError::Key {
            path: path.display().to_string(),
            why: e.to_string(),
        })?;
        Ok(SigningKey::from_bytes(&bytes))
    }

    pub fn api_token(&self) -> Result<String, DataDirError> {
        let path = self.path("api.token");
        Ok(fs::read_to_string(&path)
            .map_err(io(&path))?
            .trim()
            .to_owned())
    }

    /// Opens the store, drawing its epoch the first time.
    pub fn open_store(&self) -> Result<SledStore, DataDirError> {
        self.open_store_by(SledStore::open)
    }

    /// Opens the store with `open` ([`SledStore::open`], or [`SledStore::open_deferred`] for a
    /// replica, which counts the changes against the seal in its own scan of them).
    fn open_store_by(
        &self,
        open: fn(&Path) -> Result<SledStore, StoreError>,
    ) -> Result<SledStore, DataDirError> {
        // A store closed a moment ago (by a process that is exiting) may still be locked for
        // a little while: try again for up to 5 s before calling it in use.
        let mut attempts = 0;
        let store = loop {
            match open(&self.path("store")) {
                Ok(s) => break s,
                // sled reports its lock as an I/O error whose text names the lock.
                Err(StoreError::Sled(sled::Error::Io(io)))
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("could not acquire lock") =>
                {
                    attempts += 1;
                    if attempts == 125 {
                        return Err(DataDirError::InUse(self.root.display().to_string()));
                    }
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(std::time::Duration::from_millis(40));
                }
                Err(other) => return Err(self.damaged(other.into())),
            }
        };
        if store.meta("epoch")?.is_none() {
            store.put_meta("epoch", &rand::random::<[u8; 8]>())?;
            store.put_meta("schema_version", b"1")?;
            store.flush()?;
        }
        Ok(store)
    }

    fn identity(&self, config: &Config, store: &SledStore) -> Result<Identity, DataDirError> {
        let epoch = store
            .meta("epoch")?
            .and_then(|e| <[u8; 8]>::try_from(e.as_slice()).ok())
            .ok_or_else(|| StoreError::Corrupt {
                what: "meta/epoch".into(),
                why: "missing or not 8 bytes".into(),
            })?;
        Ok(Identity {
            park: config.park.clone(),
            key: self.signing_key()?,
            epoch,
        })
    }

    fn options(config: &Config) -> Options {
        Options {
            limits: kervan_protocol::Limits::default(),
            max_pending: config.store.max_pending,
            max_pending_bytes: Options::default().max_pending_bytes,
            snapshot_every: config.store.snapshot_every,
        }
    }

    /// Adopts a federation: the genesis must list this device for this node's park. Stores
    /// the genesis, pins the federation id in the store and the config, and starts the park's
    /// ledger when this device is its root device. Joining the same federation again is a
    /// no-op.
    pub fn join(&self, genesis_bytes: &[u8]) -> Result<Joined, DataDirError> {
        let mut config = self.config()?;
        let key = self.signing_key()?;
        let bundle = Bundle::decode(genesis_bytes, 1 << 20, 1 << 20)
            .map_err(|e| DataDirError::Genesis(e.to_string()))?;
        let [entry] = bundle.entries.as_slice() else {
            return Err(DataDirError::Genesis(format!(
                "a genesis file holds exactly one change, found {}",
                bundle.entries.len()
            )));
        };
        let envelope = SignedChange::decode(entry, 1 << 20)
            .map_err(|e| DataDirError::Genesis(e.to_string()))?;
        let info = genesis::inspect(&envelope).map_err(DataDirError::Genesis)?;
        if info.federation != bundle.federation {
            return Err(DataDirError::Genesis(format!(
                "the file names federation {} but its change hashes to {}",
                bundle.federation, info.federation
            )));
        }
        let device = DeviceKey(key.verifying_key().to_bytes());
        if !info.parks().contains(&&config.park) {
            return Err(DataDirError::Genesis(format!(
                "it does not list park {}, the park of this node",
                config.park
            )));
        }
        // A further device of a founding park joins too; it writes once a device of its park
        // has registered it (`kervan devices add --card`) and that registration has arrived.
        let listed = info.lists(&config.park, &device);
        let store = self.open_store()?;
        let pinned = store
            .meta("federation")?
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .map(|b| FederationId(kervan_protocol::Hash(b)));
        if let Some(current) = pinned.filter(|c| *c != info.federation) {
            return Err(DataDirError::OtherFederation {
                current,
                other: info.federation,
            });
        }
        store.put_meta("federation", &info.federation.0.0)?;
        store.flush()?;
        write_private(&self.path("genesis.kvn"), genesis_bytes)?;
        config.federation = Some(info.federation);
        self.write_config(&config)?;
        let identity = self.identity(&config, &store)?;
        let mut replica = Replica::open(
            store,
            info.federation,
            Some(identity),
            Self::options(&config),
        )?;
        replica.ingest(vec![entry.clone()], "genesis")?;
        let started = replica.start_ledger()?;
        replica.snapshot_all()?;
        Ok(Joined {
            federation: info.federation,
            started_ledger: started,
            device_listed: listed,
        })
    }

    /// Opens the replica of a node that has joined.
    pub fn open_replica(&self) -> Result<Replica<SledStore>, DataDirError> {
        self.open_starting()?
            .finish()
            .map_err(|e| self.damaged(e.into()))
    }

    /// Opens the replica far enough to answer queries, its ledgers' documents possibly still
    /// loading (see [`Replica::open_starting`]). An error of [`Starting::finish`] is made
    /// [`DataDirError::Damaged`] by [`Self::damaged`], as [`Self::open_replica`] does.
    pub fn open_starting(&self) -> Result<Starting<SledStore>, DataDirError> {
        let config = self.config()?;
        let store = self.open_store_by(SledStore::open_deferred)?;
        let pinned = store
            .meta("federation")?
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .map(|b| FederationId(kervan_protocol::Hash(b)))
            .ok_or(DataDirError::NotJoined)?;
        if let Some(configured) = config.federation.filter(|c| *c != pinned) {
            return Err(DataDirError::OtherFederation {
                current: pinned,
                other: configured,
            });
        }
        let identity = self.identity(&config, &store)?;
        Replica::open_starting(store, pinned, Some(identity), Self::options(&config))
            .map_err(|e| self.damaged(e.into()))
    }

    /// Turns an error that means the store's files are damaged into [`DataDirError::Damaged`].
    pub fn damaged(&self, e: DataDirError) -> DataDirError {
        let why = match &e {
            DataDirError::Store(s) | DataDirError::Replica(ReplicaError::Store(s)) => match s {
                StoreError::Corrupt { .. }
                | StoreError::Damaged(_)
                | StoreError::Sled(sled::Error::Corruption { .. }) => s.to_string(),
                StoreError::Sled(sled::Error::ReportableBug(b)) => format!("sled: {b}"),
                StoreError::Sled(_) | StoreError::Records(_) => return e,
            },
            DataDirError::Replica(r @ ReplicaError::Snapshot { .. }) => r.to_string(),
            _ => return e,
        };
        DataDirError::Damaged {
            path: self.path("store").display().to_string(),
            why,
        }
    }

    /// Rebuilds a damaged store: moves it aside (nothing is deleted), creates a new store
    /// (a new epoch, so this device never reuses a seq it may have published before),
    /// joins the federation again from `genesis.kvn` and applies every signed change that can
    /// still be read from the old store, each checked as if a peer had sent it. The node
    /// fetches whatever is missing from its peers once it runs.
    pub fn repair(&self, force: bool) -> Result<Repaired, DataDirError> {
        let store_path = self.path("store");
        let genesis_path = self.path("genesis.kvn");
        let genesis = fs::read(&genesis_path).map_err(|_| DataDirError::NotJoined)?;
        if !force {
            match self.open_replica() {
                Ok(r) => {
                    let report = r.verify_all()?;
                    if report.failed.is_empty() {
                        return Ok(Repaired {
                            needed: false,
                            ..Repaired::default()
                        });
                    }
                }
                Err(DataDirError::Damaged { .. }) => {}
                Err(other) => return Err(other),
            }
        }
        // The store must not be open elsewhere: a running node would keep writing to it.
        if let Err(sled::Error::Io(io)) = sled::Config::new()
            .path(&store_path)
            .flush_every_ms(None)
            .open()
            .map(drop)
            && io.to_string().contains("could not acquire lock")
        {
            return Err(DataDirError::InUse(self.root.display().to_string()));
        }
        let salvage = SledStore::salvage(&store_path);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // A name no earlier repair took (two repairs may fall in the same second).
        let aside = (1..)
            .map(|n| match n {
                1 => self.path(&format!("store.damaged-{stamp}")),
                n => self.path(&format!("store.damaged-{stamp}-{n}")),
            })
            .find(|p| !p.exists())
            .expect("a free name");
        if store_path.exists() {
            fs::rename(&store_path, &aside).map_err(io(&store_path))?;
        }
        self.join(&genesis)?;
        let mut replica = self.open_replica()?;
        let reports = replica.ingest_salvaged(salvage.envelopes)?;
        replica.snapshot_all()?;
        replica.store().flush()?;
        let mut out = Repaired {
            needed: true,
            aside: Some(aside.display().to_string()),
            problems: salvage.problems,
            ..Repaired::default()
        };
        for r in &reports {
            match r.outcome {
                crate::Outcome::Accepted => out.recovered += 1,
                crate::Outcome::Duplicate => {}
                crate::Outcome::Pending { .. } => out.pending += 1,
                crate::Outcome::Rejected { .. } => out.refused += 1,
            }
        }
        Ok(out)
    }
}

/// What `kervan repair` did.
#[derive(Debug, Default, Clone)]
pub struct Repaired {
    /// False when the store was sound and nothing was done.
    pub needed: bool,
    /// Where the damaged store was moved.
    pub aside: Option<String>,
    /// Signed changes read back from the damaged store and applied.
    pub recovered: usize,
    /// Read back but still waiting for changes only peers hold.
    pub pending: usize,
    /// Read back but refused by the rules (damaged beyond their signature).
    pub refused: usize,
    /// What could not be read.
    pub problems: Vec<String>,
}

fn this_year() -> i64 {
    i64::from(time::OffsetDateTime::now_utc().year())
}

/// Builds a federation's genesis file from the founding parks' cards and returns its id and
/// bytes. The convener's key signs nothing but the genesis: the genesis is trusted because
/// every member pins its hash, not because of who signed it.
pub fn genesis_file(
    name: &str,
    charter: &str,
    cards: &[ParkCard],
) -> Result<(FederationId, Vec<u8>), GenesisError> {
    let convener = SigningKey::generate(&mut rand::rng());
    let actor = Actor {
        key: DeviceKey(convener.verifying_key().to_bytes()),
        epoch: rand::random(),
    };
    let now = time::OffsetDateTime::now_utc();
    let created_at = now
        .replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut change = genesis::genesis_change(
        actor,
        name,
        charter,
        cards,
        now.unix_timestamp(),
        &created_at,
        i64::from(now.year()),
    )?;
    let federation = FederationId(Hash::from(change.hash()));
    let signed = SignedChange::sign(&federation, DocId::Federation, &mut change, &convener);
    Ok((federation, Bundle::new(federation, &[signed]).encode()))
}

//! Park cards and the changes that start documents: the federation's genesis and a ledger's
//! first change.

use std::collections::{BTreeMap, HashMap, HashSet};

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{AutoCommit, ObjType, ROOT, ReadDoc, ScalarValue, hydrate};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::envelope::SignedChange;
use crate::ids::{Actor, DeviceKey, DocId, FederationId, Hash, ParkId};
use crate::records::{self, FieldErrors, Mode};
use crate::rules::{self, CausalInfo, Context, Limits, ObjKey, ObjectInfo, Registration, Verdict};

/// What a park sends to the federation's convener to be listed in the genesis: its profile
/// and its first device key. `kervan init` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParkCard {
    pub id: ParkId,
    pub name: String,
    pub country: String,
    #[serde(default)]
    pub city: Option<String>,
    #[serde(default)]
    pub website: Option<String>,
    pub device: DeviceKey,
    /// The store epoch of the device's node, 16 hex digits: with the key, the actor that
    /// starts the park's ledger.
    pub epoch: String,
    /// The device's proof that it holds its key, for this park ([`device_proof`]).
    pub proof: String,
    #[serde(default)]
    pub label: Option<String>,
}

/// The domain separator of a device's proof of possession.
pub const DEVICE_PROOF_CONTEXT: &[u8] = b"kervan/device/v1";

/// A device's proof that it holds its key, for a park: hex of its signature over the context
/// and the park id. A park registers a further device only with this proof, so no park can
/// claim another park's device.
pub fn device_proof(key: &ed25519_dalek::SigningKey, park: &ParkId) -> String {
    use ed25519_dalek::Signer;
    let mut msg = DEVICE_PROOF_CONTEXT.to_vec();
    msg.extend_from_slice(park.as_str().as_bytes());
    hex::encode(key.sign(&msg).to_bytes())
}

/// Checks a proof made by [`device_proof`].
pub fn verify_device_proof(key: &DeviceKey, park: &ParkId, proof: &str) -> bool {
    let mut sig = [0u8; 64];
    if proof.len() != 128 || hex::decode_to_slice(proof, &mut sig).is_err() {
        return false;
    }
    let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&key.0) else {
        return false;
    };
    let mut msg = DEVICE_PROOF_CONTEXT.to_vec();
    msg.extend_from_slice(park.as_str().as_bytes());
    vk.verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&sig))
        .is_ok()
}

impl ParkCard {
    /// The actor that starts this park's ledger.
    pub fn root_actor(&self) -> Result<Actor, String> {
        let mut epoch = [0u8; 8];
        hex::decode_to_slice(&self.epoch, &mut epoch)
            .map_err(|_| format!("epoch must be 16 hex digits, found {:?}", self.epoch))?;
        Ok(Actor {
            key: self.device,
            epoch,
        })
    }
}

impl ParkCard {
    /// Checks the profile fields with the park schema.
    pub fn validate(&self, this_year: i64) -> Result<(), FieldErrors> {
        let profile = json!({
            "name": self.name, "country": self.country,
            "city": self.city, "website": self.website,
        });
        let mut profile = profile;
        if let Some(obj) = profile.as_object_mut() {
            obj.retain(|_, v| !v.is_null());
        }
        records::validate_input(records::PARK_FIELDS, &profile, Mode::Create, this_year)
    }
}

/// Why a genesis cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenesisError {
    #[error("a federation needs at least one park card")]
    NoParks,
    #[error("park {0} is listed twice")]
    DuplicatePark(ParkId),
    #[error("device {0} is listed for two parks")]
    DuplicateDevice(DeviceKey),
    #[error("park {park}: {errors}")]
    Card { park: ParkId, errors: FieldErrors },
    #[error("federation name must be 1 to 200 characters")]
    Name,
    #[error("park {park}: {why}")]
    Device { park: ParkId, why: String },
}

fn str_value(s: &str) -> hydrate::Value {
    hydrate::Value::Scalar(ScalarValue::Str(s.into()))
}

/// Builds the genesis: the federation's name and charter and, for every founding park, its
/// profile, its first device (which is also the root device that starts its ledger).
pub fn genesis_change(
    actor: Actor,
    name: &str,
    charter: &str,
    cards: &[ParkCard],
    time: i64,
    created_at: &str,
    this_year: i64,
) -> Result<automerge::Change, GenesisError> {
    if cards.is_empty() {
        return Err(GenesisError::NoParks);
    }
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(GenesisError::Name);
    }
    let mut parks = HashSet::new();
    let mut devices = HashSet::new();
    for card in cards {
        if !parks.insert(card.id.clone()) {
            return Err(GenesisError::DuplicatePark(card.id.clone()));
        }
        if !devices.insert(card.device) {
            return Err(GenesisError::DuplicateDevice(card.device));
        }
        card.validate(this_year)
            .map_err(|errors| GenesisError::Card {
                park: card.id.clone(),
                errors,
            })?;
        card.root_actor().map_err(|why| GenesisError::Device {
            park: card.id.clone(),
            why,
        })?;
        if !verify_device_proof(&card.device, &card.id, &card.proof) {
            return Err(GenesisError::Device {
                park: card.id.clone(),
                why: "the card's proof does not verify for its device and park".into(),
            });
        }
    }
    let mut doc = AutoCommit::new().with_actor(actor.to_automerge());
    let put = |doc: &mut AutoCommit, obj: &automerge::ObjId, k: &str, v: &str| {
        doc.put(obj, k, v).expect("put on a map just made");
    };
    put(&mut doc, &ROOT, "name", name);
    put(&mut doc, &ROOT, "charter", charter);
    put(&mut doc, &ROOT, "created_at", created_at);
    let parks_obj = doc
        .put_object(ROOT, "parks", ObjType::Map)
        .expect("root is a map");
    // Sorted, so the same cards always give the same genesis ops.
    let sorted: BTreeMap<&ParkId, &ParkCard> = cards.iter().map(|c| (&c.id, c)).collect();
    for (id, card) in sorted {
        let mut device = HashMap::from([
            ("added_at", str_value(created_at)),
            ("proof", str_value(&card.proof)),
        ]);
        if let Some(label) = &card.label {
            device.insert("label", str_value(label));
        }
        let mut fields = HashMap::from([
            ("name", str_value(&card.name)),
            ("country", str_value(&card.country)),
            (
                "root_actor",
                str_value(&card.root_actor().expect("checked above").to_string()),
            ),
        ]);
        if let Some(city) = &card.city {
            fields.insert("city", str_value(city));
        }
        if let Some(website) = &card.website {
            fields.insert("website", str_value(website));
        }
        let park_obj = doc
            .put_object(&parks_obj, id.as_str(), ObjType::Map)
            .expect("parks is a map");
        for (k, v) in fields {
            doc.put(&park_obj, k, scalar(v)).expect("park is a map");
        }
        let devices_obj = doc
            .put_object(&park_obj, "devices", ObjType::Map)
            .expect("park is a map");
        doc.batch_create_object(&devices_obj, card.device.to_hex(), &device.into(), false)
            .expect("devices is a map");
    }
    doc.commit_with(CommitOptions::default().with_time(time));
    Ok(doc
        .get_last_local_change()
        .expect("the genesis was just committed"))
}

fn scalar(v: hydrate::Value) -> ScalarValue {
    match v {
        hydrate::Value::Scalar(s) => s,
        _ => ScalarValue::Null,
    }
}

/// Builds a ledger's first change: its four collections, made once by the park's root device.
pub fn ledger_root_change(actor: Actor, time: i64) -> automerge::Change {
    let mut doc = AutoCommit::new().with_actor(actor.to_automerge());
    for c in records::COLLECTIONS {
        doc.put_object(ROOT, *c, ObjType::Map)
            .expect("root is a map");
    }
    doc.commit_with(CommitOptions::default().with_time(time));
    doc.get_last_local_change()
        .expect("the ledger root was just committed")
}

/// What a genesis file declares, read before a node adopts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenesisInfo {
    pub federation: FederationId,
    pub name: String,
    pub registrations: Vec<Registration>,
}

impl GenesisInfo {
    /// Whether the genesis lists `key` as a device of `park`.
    pub fn lists(&self, park: &ParkId, key: &DeviceKey) -> bool {
        self.registrations
            .iter()
            .any(|r| matches!(r, Registration::Device(p, k) if p == park && k == key))
    }

    pub fn parks(&self) -> Vec<&ParkId> {
        self.registrations
            .iter()
            .filter_map(|r| match r {
                Registration::Park(p) => Some(p),
                _ => None,
            })
            .collect()
    }
}

/// The rules' view of a node that holds nothing yet: enough to judge a genesis.
struct Empty(FederationId);

impl Context for Empty {
    fn federation(&self) -> FederationId {
        self.0
    }
    fn limits(&self) -> Limits {
        Limits::default()
    }
    fn park_exists(&self, _: &ParkId) -> bool {
        false
    }
    fn is_device(&self, _: &ParkId, _: &DeviceKey) -> bool {
        false
    }
    fn is_any_device(&self, _: &DeviceKey) -> bool {
        false
    }
    fn root_actor(&self, _: &ParkId) -> Option<Actor> {
        None
    }
    fn device_frozen(&self, _: &DeviceKey) -> bool {
        false
    }
    fn rejected(&self, _: &DocId, _: &Hash) -> bool {
        false
    }
    fn accepted(&self, _: &DocId, _: &Hash) -> Option<&CausalInfo> {
        None
    }
    fn excluded(&self, _: &DocId, _: &Hash) -> bool {
        false
    }
    fn slot(&self, _: &DocId, _: &Actor, _: u64) -> Option<Hash> {
        None
    }
    fn frozen_from(&self, _: &DocId, _: &Actor) -> Option<u64> {
        None
    }
    fn object(&self, _: &DocId, _: &ObjKey) -> Option<&ObjectInfo> {
        None
    }
}

/// Reads a genesis: its federation id is its own change hash, it must verify, and it must be a
/// root change of the federation document.
pub fn inspect(genesis: &SignedChange) -> Result<GenesisInfo, String> {
    if genesis.doc != DocId::Federation {
        return Err(format!(
            "the genesis belongs to the federation document, found a change of {}",
            genesis.doc
        ));
    }
    let parsed = genesis.parse().map_err(|e| e.to_string())?;
    if !parsed.deps().is_empty() || parsed.seq() != 1 {
        return Err("the genesis is the first change of its document, this one has deps".into());
    }
    let federation = FederationId(Hash::from(parsed.hash()));
    let ctx = Empty(federation);
    match rules::check(genesis, &ctx) {
        Verdict::Accept(checked) => {
            let mut doc = AutoCommit::new();
            doc.apply_changes([checked.change.clone()])
                .map_err(|e| e.to_string())?;
            let name = match doc.get(ROOT, "name") {
                Ok(Some((automerge::Value::Scalar(s), _))) => match s.as_ref() {
                    ScalarValue::Str(s) => s.to_string(),
                    _ => String::new(),
                },
                _ => String::new(),
            };
            Ok(GenesisInfo {
                federation,
                name,
                registrations: checked.registrations,
            })
        }
        Verdict::Pending(p) => Err(p.to_string()),
        Verdict::Reject(r) => Err(r.to_string()),
    }
}

//! Identifiers: parks, documents, devices, records and the federation.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an identifier did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error(
        "park id must be 2-48 characters of a-z, 0-9 and '-', starting with a letter, found {0:?}"
    )]
    ParkId(String),
    #[error("document id must be 'federation' or 'park/<park-id>', found {0:?}")]
    DocId(String),
    #[error("device key must be 64 hex characters (32 bytes), found {0:?}")]
    DeviceKey(String),
    #[error(
        "record id must be '<park-id>/<local-id>' with a local id of 1-64 characters of A-Z, a-z, 0-9, '-' and '_', found {0:?}"
    )]
    RecordId(String),
    #[error("actor must be 80 hex characters (device key and store epoch), found {0:?}")]
    Actor(String),
    #[error("hash must be 64 hex characters, found {0:?}")]
    Hash(String),
}

/// Serialises a type through its `Display` / `FromStr` pair, so ids are plain strings in JSON.
macro_rules! string_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// Describes a string id in the OpenAPI document.
macro_rules! string_schema {
    ($t:ty, $desc:expr, $example:expr) => {
        impl utoipa::PartialSchema for $t {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some($desc))
                    .examples([$example])
                    .into()
            }
        }
        impl utoipa::ToSchema for $t {}
    };
}

/// A park's slug, e.g. `kz-astana-hub`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParkId(String);

impl ParkId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ParkId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let ok = (2..=48).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && !s.ends_with('-')
            && !s.contains("--")
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::ParkId(s.to_owned()))
        }
    }
}

impl fmt::Display for ParkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_serde!(ParkId);
string_schema!(ParkId, "a park's slug", "kz-astana-hub");

/// A document of the registry: the federation document or one park's ledger.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DocId {
    Federation,
    Ledger(ParkId),
}

impl DocId {
    /// The longest document id that can parse: `park/` and a 48-byte park id.
    pub const MAX_LEN: usize = 5 + 48;

    /// The park that owns a ledger; `None` for the federation document.
    pub fn park(&self) -> Option<&ParkId> {
        match self {
            DocId::Federation => None,
            DocId::Ledger(p) => Some(p),
        }
    }
}

impl FromStr for DocId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s == "federation" {
            return Ok(DocId::Federation);
        }
        match s.strip_prefix("park/").map(ParkId::from_str) {
            Some(Ok(p)) => Ok(DocId::Ledger(p)),
            _ => Err(IdError::DocId(s.to_owned())),
        }
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocId::Federation => f.write_str("federation"),
            DocId::Ledger(p) => write!(f, "park/{p}"),
        }
    }
}
string_serde!(DocId);
string_schema!(
    DocId,
    "'federation' or 'park/<park-id>'",
    "park/kz-astana-hub"
);

/// A device's ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceKey(pub [u8; 32]);

impl DeviceKey {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex digits, enough to tell devices apart in tables and logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceKey({})", self.to_hex())
    }
}

impl fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for DeviceKey {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        parse_hex32(s)
            .map(DeviceKey)
            .ok_or_else(|| IdError::DeviceKey(s.to_owned()))
    }
}
string_serde!(DeviceKey);
string_schema!(
    DeviceKey,
    "an ed25519 public key, 64 hex digits",
    "50607927845150ce89475de3c69017a4ef8d1f10ac75be7b469af036a2802959"
);

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// A record's id, `<park-id>/<local-id>`: unique without coordination because only the park
/// itself writes ids under its own prefix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId {
    park: ParkId,
    local: String,
}

impl RecordId {
    pub fn new(park: ParkId, local: &str) -> Result<Self, IdError> {
        if valid_local(local) {
            Ok(Self {
                park,
                local: local.to_owned(),
            })
        } else {
            Err(IdError::RecordId(format!("{park}/{local}")))
        }
    }

    pub fn park(&self) -> &ParkId {
        &self.park
    }

    pub fn local(&self) -> &str {
        &self.local
    }
}

fn valid_local(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl FromStr for RecordId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let err = || IdError::RecordId(s.to_owned());
        let (park, local) = s.split_once('/').ok_or_else(err)?;
        let park = park.parse().map_err(|_| err())?;
        Self::new(park, local).map_err(|_| err())
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.park, self.local)
    }
}
string_serde!(RecordId);
string_schema!(
    RecordId,
    "'<park-id>/<local-id>'",
    "kz-astana-hub/01J0Z8Y3QK5R2N4T6V8X0B2D4F"
);

/// The SHA-256 hash of an Automerge change, as Automerge computes it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl From<automerge::ChangeHash> for Hash {
    fn from(h: automerge::ChangeHash) -> Self {
        Hash(h.0)
    }
}

impl From<Hash> for automerge::ChangeHash {
    fn from(h: Hash) -> Self {
        automerge::ChangeHash(h.0)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", &self.to_hex()[..12])
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for Hash {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        parse_hex32(s)
            .map(Hash)
            .ok_or_else(|| IdError::Hash(s.to_owned()))
    }
}
string_serde!(Hash);
string_schema!(
    Hash,
    "a SHA-256 change hash, 64 hex digits",
    "49e1d5e195e6b690b2a7c1f1a4c2a3b0f7e1d2c3b4a5968778695a4b3c2d1e0f"
);

/// A federation's id: the hash of its genesis change. It goes into every signature and into
/// the gossip topic, so two federations never mix.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FederationId(pub Hash);

impl fmt::Debug for FederationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FederationId({})", &self.0.to_hex()[..12])
    }
}

impl fmt::Display for FederationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for FederationId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        s.parse().map(FederationId)
    }
}
string_serde!(FederationId);
string_schema!(
    FederationId,
    "the hash of the federation's genesis change",
    "2030ecb9f66d8a955c12203e245c0a5dda5ff665f99d7647e1898dc3cd81650f"
);

/// An Automerge actor as Kervan builds it: the device key followed by the store epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Actor {
    pub key: DeviceKey,
    pub epoch: [u8; 8],
}

impl Actor {
    pub const LEN: usize = 40;

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::LEN {
            return None;
        }
        let mut key = [0u8; 32];
        let mut epoch = [0u8; 8];
        key.copy_from_slice(&bytes[..32]);
        epoch.copy_from_slice(&bytes[32..]);
        Some(Self {
            key: DeviceKey(key),
            epoch,
        })
    }

    pub fn to_bytes(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        out[..32].copy_from_slice(&self.key.0);
        out[32..].copy_from_slice(&self.epoch);
        out
    }

    pub fn to_automerge(&self) -> automerge::ActorId {
        automerge::ActorId::from(self.to_bytes())
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.key.to_hex(), hex::encode(self.epoch))
    }
}

impl FromStr for Actor {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let mut bytes = [0u8; 40];
        hex::decode_to_slice(s, &mut bytes)
            .ok()
            .and_then(|()| Actor::from_bytes(&bytes))
            .ok_or_else(|| IdError::Actor(s.to_owned()))
    }
}
string_serde!(Actor);
string_schema!(
    Actor,
    "device key and store epoch, 80 hex digits",
    "50607927845150ce89475de3c69017a4ef8d1f10ac75be7b469af036a28029590102030405060708"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn park_ids_are_validated_slugs() {
        assert!("kz-astana-hub".parse::<ParkId>().is_ok());
        assert!("uz-it-park".parse::<ParkId>().is_ok());
        for bad in [
            "", "a", "KZ-hub", "-kz", "kz-", "kz--hub", "kz hub", "kz/hub", "1kz",
        ] {
            assert!(bad.parse::<ParkId>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn doc_ids_round_trip() {
        for s in ["federation", "park/kg-htp"] {
            assert_eq!(s.parse::<DocId>().map(|d| d.to_string()), Ok(s.to_owned()));
        }
        assert!("park/".parse::<DocId>().is_err());
        assert!("ledger/kg-htp".parse::<DocId>().is_err());
    }

    #[test]
    fn record_ids_need_a_park_and_a_local_part() {
        let id: RecordId = "kz-astana-hub/01J0ABC".parse().expect("valid");
        assert_eq!(id.park().as_str(), "kz-astana-hub");
        assert_eq!(id.local(), "01J0ABC");
        for bad in [
            "kz-astana-hub",
            "kz-astana-hub/",
            "/x",
            "kz-astana-hub/a/b",
            "KZ/x",
        ] {
            assert!(
                bad.parse::<RecordId>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn device_keys_are_64_hex_digits() {
        let hex = "ab".repeat(32);
        assert_eq!(
            hex.parse::<DeviceKey>().map(|k| k.to_hex()),
            Ok(hex.clone())
        );
        assert!(hex[..62].parse::<DeviceKey>().is_err());
        assert!("zz".repeat(32).parse::<DeviceKey>().is_err());
    }
}

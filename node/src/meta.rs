//! What a document's snapshot keeps beside the saved Automerge document: every accepted
//! change's causal information, every object's place, the registrations. Written in a compact
//! binary form — actors once in a table, integers as varints — because it is re-written with
//! every snapshot and read at every start, and as JSON (hex actors, one full clock per change)
//! it was larger than the document itself. Snapshots written before this form, as JSON, are
//! still read.

use std::collections::{BTreeMap, HashMap};

use kervan_protocol::rules::{CausalInfo, ObjKey, ObjectInfo, Registration};
use kervan_protocol::{Actor, Hash};
use serde::{Deserialize, Serialize};

/// Marks the binary form; JSON starts with `{`.
const MAGIC: &[u8; 4] = b"KVM\x01";

/// The metadata of one document's snapshot.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct DocMeta {
    /// Accepted changes in the order they were accepted.
    pub order: Vec<(Hash, CausalInfo)>,
    pub objects: Vec<(ObjKey, ObjectInfo)>,
    pub registrations: Vec<Registration>,
}

impl DocMeta {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut actors = Actors::default();
        let mut body = Vec::with_capacity(self.order.len() * 64);
        varint(&mut body, self.order.len() as u64);
        for (hash, info) in &self.order {
            body.extend_from_slice(&hash.0);
            varint(&mut body, actors.index(&info.actor));
            varint(&mut body, info.seq);
            varint(&mut body, info.past_max_op);
            varint(&mut body, info.clock.len() as u64);
            for (actor, seq) in &info.clock {
                varint(&mut body, actors.index(actor));
                varint(&mut body, *seq);
            }
        }
        varint(&mut body, self.objects.len() as u64);
        for (key, info) in &self.objects {
            varint(&mut body, key.counter);
            varint(&mut body, actors.index(&key.actor));
            varint(&mut body, actors.index(&info.made_by.0));
            varint(&mut body, info.made_by.1);
            varint(&mut body, info.path.len() as u64);
            for segment in &info.path {
                varint(&mut body, segment.len() as u64);
                body.extend_from_slice(segment.as_bytes());
            }
        }
        let registrations =
            serde_json::to_vec(&self.registrations).expect("registrations serialise");
        varint(&mut body, registrations.len() as u64);
        body.extend_from_slice(&registrations);

        let mut out = Vec::with_capacity(8 + actors.list.len() * Actor::LEN + body.len());
        out.extend_from_slice(MAGIC);
        varint(&mut out, actors.list.len() as u64);
        for a in &actors.list {
            out.extend_from_slice(&a.to_bytes());
        }
        out.extend_from_slice(&body);
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        let Some(rest) = bytes.strip_prefix(MAGIC) else {
            return serde_json::from_slice(bytes).map_err(|e| e.to_string());
        };
        let mut r = Reader(rest);
        let n = r.count(Actor::LEN)?;
        let mut actors = Vec::with_capacity(n);
        for _ in 0..n {
            actors.push(Actor::from_bytes(r.take(Actor::LEN)?).ok_or("an actor is malformed")?);
        }
        let actor = |r: &mut Reader<'_>| -> Result<Actor, String> {
            let i = r.varint()?;
            usize::try_from(i)
                .ok()
                .and_then(|i| actors.get(i))
                .copied()
                .ok_or_else(|| format!("actor {i} is not in the table"))
        };
        let n = r.count(32 + 4)?;
        let mut order = Vec::with_capacity(n);
        for _ in 0..n {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(r.take(32)?);
            let a = actor(&mut r)?;
            let seq = r.varint()?;
            let past_max_op = r.varint()?;
            let entries = r.count(2)?;
            let mut clock = BTreeMap::new();
            for _ in 0..entries {
                let ca = actor(&mut r)?;
                clock.insert(ca, r.varint()?);
            }
            order.push((
                Hash(hash),
                CausalInfo {
                    actor: a,
                    seq,
                    clock,
                    past_max_op,
                },
            ));
        }
        let n = r.count(5)?;
        let mut objects = Vec::with_capacity(n);
        for _ in 0..n {
            let counter = r.varint()?;
            let key_actor = actor(&mut r)?;
            let made_by = (actor(&mut r)?, r.varint()?);
            let segments = r.count(1)?;
            let mut path = Vec::with_capacity(segments);
            for _ in 0..segments {
                let len = r.count(1)?;
                let s = std::str::from_utf8(r.take(len)?).map_err(|_| "a path is not UTF-8")?;
                path.push(s.to_owned());
            }
            objects.push((
                ObjKey {
                    counter,
                    actor: key_actor,
                },
                ObjectInfo { path, made_by },
            ));
        }
        let len = r.count(1)?;
        let registrations = serde_json::from_slice(r.take(len)?).map_err(|e| e.to_string())?;
        if !r.0.is_empty() {
            return Err(format!("{} bytes after the metadata", r.0.len()));
        }
        Ok(Self {
            order,
            objects,
            registrations,
        })
    }
}

#[derive(Default)]
struct Actors {
    list: Vec<Actor>,
    index: HashMap<Actor, u64>,
}

impl Actors {
    fn index(&mut self, a: &Actor) -> u64 {
        *self.index.entry(*a).or_insert_with(|| {
            self.list.push(*a);
            self.list.len() as u64 - 1
        })
    }
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("metadata truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.take(1)?.first().expect("took one byte");
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err("a number is longer than 64 bits".into())
    }

    /// A count of items of at least `min_bytes` each: no more than the bytes left can hold,
    /// so a corrupt count cannot make the reader allocate without bound.
    fn count(&mut self, min_bytes: usize) -> Result<usize, String> {
        let n = self.varint()?;
        usize::try_from(n)
            .ok()
            .filter(|n| n.saturating_mul(min_bytes.max(1)) <= self.0.len())
            .ok_or_else(|| format!("a count of {n} is more than the metadata holds"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kervan_protocol::{DeviceKey, ParkId};

    fn actor(n: u8) -> Actor {
        Actor::from_bytes(&[n; 40]).expect("actor")
    }

    fn meta() -> DocMeta {
        let mut order = Vec::new();
        for i in 0..300u64 {
            let a = actor((i % 5) as u8);
            let clock = (0..5u8).map(|j| (actor(j), i / 5 + u64::from(j))).collect();
            order.push((
                Hash([i as u8; 32]),
                CausalInfo {
                    actor: a,
                    seq: i / 5 + 1,
                    clock,
                    past_max_op: i * 14 + 300,
                },
            ));
        }
        let objects = (0..50u64)
            .map(|i| {
                (
                    ObjKey {
                        counter: i * 1000,
                        actor: actor((i % 3) as u8),
                    },
                    ObjectInfo {
                        path: vec!["startups".into(), format!("kz-astana-hub/s{i}"), "ş".into()],
                        made_by: (actor(4), i),
                    },
                )
            })
            .collect();
        let park: ParkId = "kz-astana-hub".parse().expect("park");
        DocMeta {
            order,
            objects,
            registrations: vec![
                Registration::Park(park.clone()),
                Registration::Device(park.clone(), DeviceKey([7; 32])),
                Registration::RootActor(park, actor(1)),
            ],
        }
    }

    #[test]
    fn binary_metadata_round_trips_and_is_smaller_than_json() {
        let m = meta();
        let bytes = m.encode();
        assert_eq!(DocMeta::decode(&bytes).expect("decodes"), m);
        let json = serde_json::to_vec(&m).expect("json");
        assert!(
            bytes.len() * 5 < json.len(),
            "{} vs {}",
            bytes.len(),
            json.len()
        );
        // Snapshots written as JSON before are still read.
        assert_eq!(DocMeta::decode(&json).expect("json decodes"), m);
    }

    #[test]
    fn every_truncation_and_a_flipped_count_are_errors_not_panics() {
        let bytes = meta().encode();
        for len in 0..bytes.len() {
            assert!(
                DocMeta::decode(&bytes[..len]).is_err(),
                "truncated to {len}"
            );
        }
        let mut huge = MAGIC.to_vec();
        varint(&mut huge, u64::MAX);
        assert!(DocMeta::decode(&huge).is_err());
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(DocMeta::decode(&extra).is_err());
    }
}

//! Which vouched changes of a batch their vouchers authenticate (DESIGN §6).
//!
//! A change's hash covers its dependencies' hashes, so the signature of a change covers every
//! change in its causal past. A vouched change ([`crate::envelope::Proof::Vouched`]) names a
//! voucher: it is authenticated when the voucher is in the same batch, is a change of the same
//! actor in the same document whose own signature verified, and reaches it through
//! dependencies within the batch. Every hash on that path is recomputed from the bytes the
//! batch holds, so the chain proves exactly those bytes.
//!
//! The walk from each voucher is bounded in all: a batch costs at most
//! [`STEPS_PER_CHANGE`] steps per change, whatever a hostile sender packs into it.

use std::collections::HashMap;

use crate::ids::{Actor, DocId, Hash};

/// Steps of the walks a batch may take, per change in it. An honest page has one voucher per
/// actor and document, so its walks take one step per change and actor.
pub const STEPS_PER_CHANGE: usize = 64;

/// What a change of the batch proves of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Own {
    /// Its own signature verified.
    Signed,
    /// It has none, and names its voucher.
    Vouched(Hash),
    /// Its signature did not verify, or it was not checked: it vouches for nothing.
    Nothing,
}

/// One change of a batch, as far as vouching needs it.
#[derive(Debug, Clone)]
pub struct Link<'a> {
    pub doc: &'a DocId,
    pub hash: Hash,
    pub actor: Actor,
    pub deps: Vec<Hash>,
    pub own: Own,
}

/// For each link, whether it is a vouched change its voucher authenticates.
pub fn vouch(links: &[Link<'_>]) -> Vec<bool> {
    let mut index: HashMap<(&DocId, Hash), usize> = HashMap::with_capacity(links.len());
    for (i, l) in links.iter().enumerate() {
        index.entry((l.doc, l.hash)).or_insert(i);
    }
    let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, l) in links.iter().enumerate() {
        let Own::Vouched(by) = l.own else { continue };
        let Some(&v) = index.get(&(l.doc, by)) else {
            continue;
        };
        let voucher = &links[v];
        if voucher.own == Own::Signed && voucher.actor == l.actor {
            groups.entry(v).or_default().push(i);
        }
    }
    let mut out = vec![false; links.len()];
    let mut steps = links.len().saturating_mul(STEPS_PER_CHANGE);
    let mut order: Vec<usize> = groups.keys().copied().collect();
    // In batch order, so which groups a spent budget leaves out does not depend on hashing.
    order.sort_unstable();
    let mut seen = vec![u32::MAX; links.len()];
    for (walk, v) in order.into_iter().enumerate() {
        let walk = walk as u32;
        let mut stack = vec![v];
        seen[v] = walk;
        while let Some(i) = stack.pop() {
            for dep in &links[i].deps {
                if steps == 0 {
                    return out;
                }
                steps -= 1;
                if let Some(&j) = index.get(&(links[i].doc, *dep))
                    && seen[j] != walk
                {
                    seen[j] = walk;
                    stack.push(j);
                }
            }
        }
        for &i in &groups[&v] {
            out[i] = seen[i] == walk && i != v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::DeviceKey;

    fn actor(n: u8) -> Actor {
        Actor {
            key: DeviceKey([n; 32]),
            epoch: [n; 8],
        }
    }

    fn h(n: u8) -> Hash {
        Hash([n; 32])
    }

    fn link<'a>(doc: &'a DocId, hash: u8, who: u8, deps: &[u8], own: Own) -> Link<'a> {
        Link {
            doc,
            hash: h(hash),
            actor: actor(who),
            deps: deps.iter().map(|d| h(*d)).collect(),
            own,
        }
    }

    #[test]
    fn a_signed_head_vouches_for_its_actors_changes_in_its_past() {
        let d: DocId = "park/kz-astana-hub".parse().expect("doc");
        // 1 <- 2 <- 3 (actor 1), 4 by actor 2 on 3, 5 by actor 1 on 4 and signed; 6 by actor 1
        // outside 5's past; 7 by actor 2 naming 5, a voucher of another actor.
        let links = vec![
            link(&d, 1, 1, &[], Own::Vouched(h(5))),
            link(&d, 2, 1, &[1], Own::Vouched(h(5))),
            link(&d, 3, 1, &[2], Own::Vouched(h(5))),
            link(&d, 4, 2, &[3], Own::Signed),
            link(&d, 5, 1, &[4], Own::Signed),
            link(&d, 6, 1, &[5], Own::Vouched(h(5))),
            link(&d, 7, 2, &[4], Own::Vouched(h(5))),
        ];
        assert_eq!(
            vouch(&links),
            vec![true, true, true, false, false, false, false]
        );
    }

    #[test]
    fn a_voucher_whose_signature_failed_or_that_is_absent_vouches_for_nothing() {
        let d: DocId = "park/kz-astana-hub".parse().expect("doc");
        let e: DocId = "federation".parse().expect("doc");
        let links = vec![
            link(&d, 1, 1, &[], Own::Vouched(h(2))),
            link(&d, 2, 1, &[1], Own::Nothing),
            link(&d, 3, 1, &[], Own::Vouched(h(9))),
            // The voucher's hash in another document does not count.
            link(&d, 4, 1, &[], Own::Vouched(h(5))),
            link(&e, 5, 1, &[4], Own::Signed),
            // A change cannot vouch for itself.
            link(&d, 6, 1, &[], Own::Vouched(h(6))),
        ];
        assert_eq!(vouch(&links), vec![false; 6]);
    }

    #[test]
    fn the_walks_are_bounded() {
        let d: DocId = "park/kz-astana-hub".parse().expect("doc");
        // A chain of n changes of one actor, each naming the last as its voucher: one walk of n
        // steps. Then every change its own distinct signed voucher further up: n walks of up
        // to n steps, cut off by the budget.
        let n = 300u16;
        let hash = |i: u16| {
            let mut b = [0u8; 32];
            b[..2].copy_from_slice(&i.to_be_bytes());
            Hash(b)
        };
        let chain = |own: &dyn Fn(u16) -> Own| -> Vec<Link<'_>> {
            (0..n)
                .map(|i| Link {
                    doc: &d,
                    hash: hash(i),
                    actor: actor(1),
                    deps: if i == 0 { vec![] } else { vec![hash(i - 1)] },
                    own: own(i),
                })
                .collect()
        };
        let honest = chain(&|i| {
            if i == n - 1 {
                Own::Signed
            } else {
                Own::Vouched(hash(n - 1))
            }
        });
        assert!(vouch(&honest)[..n as usize - 1].iter().all(|v| *v));
        let hostile = chain(&|i| {
            if i % 2 == 1 {
                Own::Signed
            } else {
                Own::Vouched(hash(n - 1 - i))
            }
        });
        let got = vouch(&hostile);
        // Every walk that ran found its change; the budget stopped the rest.
        let vouched = got.iter().filter(|v| **v).count();
        assert!(vouched > 0 && vouched < n as usize / 2, "{vouched}");
    }
}

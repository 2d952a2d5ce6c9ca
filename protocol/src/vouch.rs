//! Which vouched changes of a batch their vouchers authenticate (DESIGN §6).
//!
//! A change's hash covers its dependencies' hashes, so the signature of a change covers every
//! change in its causal past. A vouched change ([`crate::envelope::Proof::Vouched`]) names a
//! voucher: it is authenticated when the voucher is in the same batch, is a change of the same
//! actor in the same document whose own signature verified, and reaches it through
//! dependencies within the batch. Every hash on that path is recomputed from the bytes the
//! batch holds, so the chain proves exactly those bytes.
//!
//! The walk from each voucher does not go below the lowest start op among the changes that
//! name it: a change's ops are numbered above every op of its dependencies, so a path from a
//! voucher down to a change it vouches for only passes through changes that start higher. So
//! an honest page costs about one walk over the page per
//! actor, and a whole store judged in one batch (a restore, a rebuild, an import, an audit)
//! about one walk over each page it came in, not over the history beneath it. The walks are
//! also bounded in all: a batch costs at most [`STEPS_PER_CHANGE`] steps per change, whatever a
//! hostile sender packs into it.

use std::collections::HashMap;

use crate::ids::{Actor, DocId, Hash};

/// Steps of the walks a batch may take, per change in it. An honest page has one voucher per
/// actor and document, each walking at most the page, so its walks take about one step per
/// change, actor and dependency: a page of 4,096 changes by 100 actors of one document fits.
pub const STEPS_PER_CHANGE: usize = 256;

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
    /// The number of its first op.
    pub start_op: u64,
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
    'walks: for (walk, v) in order.into_iter().enumerate() {
        let walk = walk as u32;
        // A vouched change is never its own voucher: a voucher is signed, it is not.
        let group = &groups[&v];
        let floor = group.iter().map(|&i| links[i].start_op).min().unwrap_or(0);
        let mut stack = vec![v];
        seen[v] = walk;
        while let Some(i) = stack.pop() {
            for dep in &links[i].deps {
                if steps == 0 {
                    break 'walks;
                }
                steps -= 1;
                if let Some(&j) = index.get(&(links[i].doc, *dep))
                    && seen[j] != walk
                    && links[j].start_op >= floor
                {
                    seen[j] = walk;
                    stack.push(j);
                }
            }
        }
        for &i in group {
            out[i] = seen[i] == walk;
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
            start_op: u64::from(hash),
            own,
        }
    }

    /// How many vouched changes of a batch their vouchers do not authenticate.
    fn refused(links: &[Link<'_>]) -> usize {
        links
            .iter()
            .zip(vouch(links))
            .filter(|(l, ok)| matches!(l.own, Own::Vouched(_)) && !*ok)
            .count()
    }

    fn hash16(i: u32) -> Hash {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&i.to_be_bytes());
        Hash(b)
    }

    /// A history of `n` changes in one document, each on the one before, by `actors` actors in
    /// turn, as it arrives in pages of `page` changes: in each page the last change of each
    /// actor is signed and vouches for that actor's other changes in the page.
    fn paged<'a>(d: &'a DocId, n: u32, actors: u32, page: u32) -> Vec<Link<'a>> {
        let who = |i: u32| i % actors;
        (0..n)
            .map(|i| {
                let end = ((i / page + 1) * page).min(n);
                let last = (i..end).rev().find(|k| who(*k) == who(i)).unwrap_or(i);
                Link {
                    doc: d,
                    hash: hash16(i),
                    actor: actor(who(i) as u8),
                    deps: if i == 0 { vec![] } else { vec![hash16(i - 1)] },
                    start_op: u64::from(i) * 14 + 1,
                    own: if last == i {
                        Own::Signed
                    } else {
                        Own::Vouched(hash16(last))
                    },
                }
            })
            .collect()
    }

    #[test]
    fn a_whole_history_judged_in_one_batch_keeps_every_vouched_change() {
        // A restore, a rebuild, an import or an audit judges every stored change in one batch:
        // each voucher walks its own page, not the history beneath it.
        let d: DocId = "park/kz-astana-hub".parse().expect("doc");
        for (n, actors, page) in [(20_000, 2, 100), (20_000, 4, 2_000), (4_096, 100, 4_096)] {
            let links = paged(&d, n, actors, page);
            assert_eq!(
                refused(&links),
                0,
                "{n} changes, {actors} actors, pages of {page}"
            );
        }
    }

    #[test]
    fn a_walk_does_not_descend_below_the_changes_it_looks_for() {
        // Park B wrote a long history that A's pages merge, one new change of B per page: each
        // voucher of A depends on A's own changes and on B's newest, whose past is all of B's
        // history. The walk meets B's side first; B's ops are all numbered below A's changes
        // in the page, so it goes no further than B's newest. Walking all of B's history from
        // every voucher would spend the batch's budget long before the last page.
        let d: DocId = "park/kz-astana-hub".parse().expect("doc");
        let (history, pages, per_page) = (20_000u32, 1_000u32, 3u32);
        // Every change starts its ops above all before it in the batch, so above its deps.
        let mut links = Vec::new();
        let link = |i: u32, who: u8, deps: Vec<u32>, own: Own| Link {
            doc: &d,
            hash: hash16(i),
            actor: actor(who),
            deps: deps.into_iter().map(hash16).collect(),
            start_op: u64::from(i) * 14 + 1,
            own,
        };
        for i in 0..history {
            links.push(link(
                i,
                2,
                i.checked_sub(1).into_iter().collect(),
                Own::Signed,
            ));
        }
        let mut next = history;
        let mut b_newest = history - 1;
        let mut a_last: Option<u32> = None;
        for _ in 0..pages {
            // B's next change, on its own history only (B has not seen A).
            let b = next;
            links.push(link(b, 2, vec![b_newest], Own::Signed));
            b_newest = b;
            let voucher = b + per_page + 1;
            for i in b + 1..voucher {
                let deps = a_last.into_iter().collect();
                links.push(link(i, 1, deps, Own::Vouched(hash16(voucher))));
                a_last = Some(i);
            }
            // The voucher names A's last change first, so the walk takes B's side first.
            let last = a_last.expect("a page has A's changes");
            links.push(link(voucher, 1, vec![last, b], Own::Signed));
            a_last = Some(voucher);
            next = voucher + 1;
        }
        assert_eq!(refused(&links), 0);
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
        // steps. Then every other change names its own signed voucher at the mirrored place,
        // and every start op is the same, so nothing prunes a walk: each goes to the bottom of
        // the chain, and the budget stops them before the last.
        let n = 4_000u16;
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
                    start_op: 1,
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
        // Only changes below their voucher can be vouched for (n / 4 of them); the budget
        // stopped the walks before all of those were taken.
        let vouched = got.iter().filter(|v| **v).count();
        assert!(vouched > 0 && vouched < n as usize / 4, "{vouched}");
    }
}

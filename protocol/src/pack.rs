//! The packed form of a run of envelopes of one document in a sync page: the changes deflated
//! together, each dependency on an earlier change of the run told as a back-reference, and the
//! signatures beside them.
//!
//! A change sent on its own repeats what its neighbours already said: its actor, the field
//! names of its record, the hash of the change before it. Deflating a run of them as one stream
//! lets each repeat cost a few bits, and a dependency that is the hash of an earlier change in
//! the run costs an index instead of 32 random bytes. Signatures are random and travel as
//! they are.
//!
//! ```text
//! packed  = DEFLATE(* item)                 ; one item per change, in the run's order
//! item    = 0 chunk_len:uleb chunk          ; the chunk as it is (after magic and checksum)
//!         / 1 body_len:uleb ndeps:uleb * dep rest_len:uleb rest
//! dep     = 0 hash:32 / k:uleb              ; k >= 1: the hash of the k-th change before it
//! sigs    = * sig:64                        ; one per item, in order
//! ```
//!
//! `chunk` is `type:u8 body_len:uleb body`, `body` is `ndeps:uleb * hash:32 rest`: the form
//! `1` is used only when the chunk is exactly that, lengths in their shortest encoding, so that
//! what the receiver rebuilds is byte for byte what was sent. Anything else travels as `0`.
//!
//! Unpacking is bounded: the receiver inflates at most a given number of bytes and refuses a
//! run that would need more, so a few kilobytes cannot expand into gigabytes.

use std::collections::HashMap;
use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use sha2::{Digest, Sha256};

/// How hard the sender deflates. On the benchmark's 10k-record catch-up (`kervan-bench
/// catch-up`), all pages: level 1 2.21 MB in 44 ms, level 6 1.84 MB in 88 ms, level 9 1.83 MB
/// in 133 ms; reading them back takes 30–36 ms at any level.
const LEVEL: u32 = 6;
const SIG: usize = 64;
const HASH: usize = 32;

/// Why a packed run does not unpack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnpackError {
    #[error("the packed changes inflate to more than {0} bytes")]
    TooLarge(usize),
    #[error("the packed changes do not inflate: {0}")]
    Inflate(String),
    #[error("a packed change is cut short")]
    Truncated,
    #[error("unknown packed change form {0}")]
    Form(u64),
    #[error("a dependency refers to {0} changes back, past the start of the run")]
    Reference(u64),
    #[error("{changes} packed changes but {sigs} signatures")]
    Signatures { changes: usize, sigs: usize },
    #[error("a length does not fit")]
    Length,
}

/// A change chunk as [`pack`] was given it, its signature, and its hash (the SHA-256 of the
/// chunk, which unpacking computes anyway to resolve back-references).
pub type Unpacked = (Vec<u8>, [u8; SIG], [u8; HASH]);

/// The change chunks of a run (each without its magic bytes and checksum, as
/// [`crate::envelope::split_wire`] leaves it, and without its signature) packed into one
/// deflated stream. Each chunk comes with its hash, its SHA-256 (which
/// [`crate::envelope::split_wire`] computes anyway).
pub fn pack<'a>(chunks: impl IntoIterator<Item = (&'a [u8], [u8; HASH])>) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut seen: HashMap<[u8; HASH], usize> = HashMap::new();
    for (i, (chunk, hash)) in chunks.into_iter().enumerate() {
        match split_deps(chunk) {
            Some((body_len, deps, rest)) => {
                raw.push(1);
                uleb(&mut raw, body_len);
                uleb(&mut raw, (deps.len() / HASH) as u64);
                for dep in deps.chunks_exact(HASH) {
                    match <[u8; HASH]>::try_from(dep).ok().and_then(|d| seen.get(&d)) {
                        Some(&j) => uleb(&mut raw, (i - j) as u64),
                        None => {
                            raw.push(0);
                            raw.extend_from_slice(dep);
                        }
                    }
                }
                uleb(&mut raw, rest.len() as u64);
                raw.extend_from_slice(rest);
            }
            None => {
                raw.push(0);
                uleb(&mut raw, chunk.len() as u64);
                raw.extend_from_slice(chunk);
            }
        }
        seen.insert(hash, i);
    }
    let mut out = DeflateEncoder::new(Vec::new(), Compression::new(LEVEL));
    // Writing into a Vec cannot fail.
    let _ = out.write_all(&raw);
    out.finish().unwrap_or_default()
}

/// The change chunks `packed` holds, with `sigs` split into one signature each; inflating at
/// most `budget` bytes and rebuilding at most `budget` bytes of chunks.
pub fn unpack(packed: &[u8], sigs: &[u8], budget: usize) -> Result<Vec<Unpacked>, UnpackError> {
    let mut raw = Vec::new();
    DeflateDecoder::new(packed)
        .take(budget as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|e| UnpackError::Inflate(e.to_string()))?;
    if raw.len() > budget {
        return Err(UnpackError::TooLarge(budget));
    }
    let mut r = Cursor(&raw);
    let mut hashes: Vec<[u8; HASH]> = Vec::new();
    let mut chunks = Vec::new();
    let mut built = 0usize;
    while !r.0.is_empty() {
        let chunk = match r.uleb()? {
            0 => {
                let n = r.len()?;
                r.take(n)?.to_vec()
            }
            1 => {
                let body_len = r.len()?;
                // A back-reference of one byte rebuilds 32: what comes out is bounded too,
                // before it is built.
                if body_len > budget - built {
                    return Err(UnpackError::TooLarge(budget));
                }
                let ndeps = r.len()?;
                let mut body = Vec::with_capacity(body_len);
                uleb(&mut body, ndeps as u64);
                for _ in 0..ndeps {
                    if body.len() > body_len {
                        return Err(UnpackError::Length);
                    }
                    match r.uleb()? {
                        0 => body.extend_from_slice(r.take(HASH)?),
                        k => {
                            let back = usize::try_from(k).map_err(|_| UnpackError::Reference(k))?;
                            let j = hashes
                                .len()
                                .checked_sub(back)
                                .ok_or(UnpackError::Reference(k))?;
                            body.extend_from_slice(&hashes[j]);
                        }
                    }
                }
                let n = r.len()?;
                body.extend_from_slice(r.take(n)?);
                if body.len() != body_len {
                    return Err(UnpackError::Length);
                }
                let mut chunk = Vec::with_capacity(1 + uleb_len(body_len as u64) + body_len);
                chunk.push(1);
                uleb(&mut chunk, body_len as u64);
                chunk.extend_from_slice(&body);
                chunk
            }
            form => return Err(UnpackError::Form(form)),
        };
        built += chunk.len();
        if built > budget {
            return Err(UnpackError::TooLarge(budget));
        }
        hashes.push(Sha256::digest(&chunk).into());
        chunks.push(chunk);
    }
    if sigs.len() != chunks.len() * SIG {
        return Err(UnpackError::Signatures {
            changes: chunks.len(),
            sigs: sigs.len() / SIG,
        });
    }
    Ok(chunks
        .into_iter()
        .zip(hashes)
        .zip(sigs.chunks_exact(SIG))
        .map(|((c, h), s)| {
            let mut sig = [0; SIG];
            sig.copy_from_slice(s);
            (c, sig, h)
        })
        .collect())
}

/// A chunk `type:u8 body_len:uleb ndeps:uleb * hash:32 rest` of type 1, every length in its
/// shortest form and the body exactly `body_len` long: its body length, deps and rest.
fn split_deps(chunk: &[u8]) -> Option<(u64, &[u8], &[u8])> {
    if chunk.first() != Some(&1) {
        return None;
    }
    let mut r = Cursor(&chunk[1..]);
    let body_len = r.shortest()?;
    if r.0.len() as u64 != body_len {
        return None;
    }
    let ndeps = usize::try_from(r.shortest()?).ok()?;
    let deps = r.take(ndeps.checked_mul(HASH)?).ok()?;
    Some((body_len, deps, r.0))
}

fn uleb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Bytes of `v` as a uleb: one per started 7 bits, one for zero.
fn uleb_len(v: u64) -> usize {
    (64 - v.leading_zeros() as usize).div_ceil(7).max(1)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], UnpackError> {
        if self.0.len() < n {
            return Err(UnpackError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn uleb(&mut self) -> Result<u64, UnpackError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.take(1)?[0];
            let bits = u64::from(b & 0x7f);
            if i == 9 && bits > 1 {
                return Err(UnpackError::Length);
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(UnpackError::Length)
    }

    /// A length that must fit what is left to read.
    fn len(&mut self) -> Result<usize, UnpackError> {
        let n = usize::try_from(self.uleb()?).map_err(|_| UnpackError::Length)?;
        if n > self.0.len().saturating_mul(HASH + 1) {
            return Err(UnpackError::Truncated);
        }
        Ok(n)
    }

    /// A uleb in its shortest encoding, `None` otherwise.
    fn shortest(&mut self) -> Option<u64> {
        let before = self.0.len();
        let v = self.uleb().ok()?;
        (before - self.0.len() == uleb_len(v)).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunks (after magic and checksum) of a chain of real Automerge changes, each
    /// depending on the one before.
    fn chain(n: usize) -> Vec<Vec<u8>> {
        use automerge::transaction::Transactable as _;
        let mut d = automerge::AutoCommit::new();
        (0..n)
            .map(|i| {
                d.put(automerge::ROOT, "name", format!("startup {i}"))
                    .expect("put");
                d.put(automerge::ROOT, "sector", "fintech").expect("put");
                d.commit();
                d.get_last_local_change().expect("change").raw_bytes()[8..].to_vec()
            })
            .collect()
    }

    fn hashed(chunks: &[Vec<u8>]) -> impl Iterator<Item = (&[u8], [u8; HASH])> {
        chunks
            .iter()
            .map(|c| (c.as_slice(), Sha256::digest(c).into()))
    }

    fn sigs(n: usize) -> Vec<u8> {
        (0..n * SIG).map(|i| (i * 7) as u8).collect()
    }

    #[test]
    fn a_run_unpacks_to_the_same_chunks_and_costs_less() {
        let chunks = chain(50);
        let mut odd = chunks.clone();
        // Not a change chunk at all, and a chunk whose length is not in its shortest form:
        // both travel as they are.
        odd.insert(3, vec![9, 9, 9]);
        let mut long = odd[10].clone();
        long.insert(1, 0x80 | long[1]);
        long[2] = 0;
        odd.insert(11, long);
        for run in [&chunks, &odd] {
            let packed = pack(hashed(run));
            let back = unpack(&packed, &sigs(run.len()), 1 << 20).expect("unpacks");
            assert_eq!(
                back.iter().map(|(c, _, _)| c).collect::<Vec<_>>(),
                run.iter().collect::<Vec<_>>()
            );
            for (c, _, h) in &back {
                assert_eq!(h[..], Sha256::digest(c)[..]);
            }
            assert_eq!(back[1].1[..], sigs(run.len())[SIG..2 * SIG]);
        }
        let whole: usize = chunks.iter().map(Vec::len).sum();
        let packed = pack(hashed(&chunks)).len();
        assert!(packed * 3 < whole, "{packed} B packed from {whole} B");
    }

    #[test]
    fn uleb_lengths_are_those_written() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            uleb(&mut out, v);
            assert_eq!(uleb_len(v), out.len(), "{v}");
        }
    }

    #[test]
    fn bad_packed_runs_are_refused() {
        let chunks = chain(5);
        let packed = pack(hashed(&chunks));
        assert_eq!(
            unpack(&packed, &sigs(4), 1 << 20).err(),
            Some(UnpackError::Signatures {
                changes: 5,
                sigs: 4
            })
        );
        let whole: usize = chunks.iter().map(Vec::len).sum();
        assert_eq!(
            unpack(&packed, &sigs(5), whole / 2).err(),
            Some(UnpackError::TooLarge(whole / 2))
        );
        assert!(matches!(
            unpack(b"not deflate", &[], 1 << 20),
            Err(UnpackError::Inflate(_))
        ));
        let deflate = |raw: &[u8]| {
            let mut e = DeflateEncoder::new(Vec::new(), Compression::best());
            e.write_all(raw).expect("write");
            e.finish().expect("finish")
        };
        // A back-reference before the run's first change.
        assert_eq!(
            unpack(&deflate(&[1, 33, 1, 1, 0]), &sigs(1), 1 << 20).err(),
            Some(UnpackError::Reference(1))
        );
        // A body that is not the length it declares.
        assert_eq!(
            unpack(&deflate(&[1, 5, 0, 1, 7]), &sigs(1), 1 << 20).err(),
            Some(UnpackError::Length)
        );
        assert_eq!(
            unpack(&deflate(&[7]), &sigs(1), 1 << 20).err(),
            Some(UnpackError::Form(7))
        );
        assert_eq!(
            unpack(&deflate(&[0, 10, 1]), &sigs(1), 1 << 20).err(),
            Some(UnpackError::Truncated)
        );
        // A kilobyte of back-references that would rebuild 32 times as many bytes.
        let mut refs = vec![0, 1, 7];
        let k = 1000u64;
        refs.push(1);
        uleb(&mut refs, uleb_len(k) as u64 + 32 * k);
        uleb(&mut refs, k);
        refs.extend(std::iter::repeat_n(1, k as usize));
        refs.push(0);
        let refs = deflate(&refs);
        assert_eq!(
            unpack(&refs, &sigs(2), 1 << 20).map(|c| c[1].0.len()).ok(),
            Some(32_006)
        );
        assert_eq!(
            unpack(&refs, &sigs(2), 10_000).err(),
            Some(UnpackError::TooLarge(10_000))
        );
        // Megabytes of zeros in a few kilobytes stop at the budget.
        let bomb = deflate(&vec![0u8; 4 << 20]);
        assert!(bomb.len() < 8 << 10, "{} B", bomb.len());
        assert_eq!(
            unpack(&bomb, &[], 1 << 20).err(),
            Some(UnpackError::TooLarge(1 << 20))
        );
    }
}

//! How small a page of 1,000 new startups could be with another general-purpose compressor
//! than the deflate (level 6) that `/kervan/sync/4` applies to each stream of a packed run:
//! the page a park sends after a reconnect with a gap of 1,000 changes. It packs the last
//! 1,000 changes of a sample ledger of 11,000 startups as a page does (one signature, on the
//! newest change), takes the page's streams back out, and compresses each stream on its own
//! with deflate level 9 and, where the command is installed, `xz -9e` (raw LZMA2) and
//! `zstd -19`. A probe for choosing a design, not a target.
//!
//! `cargo run --release -p kervan-tests --example page_compression [-- DIR]`
//!
//! With `DIR`, each raw stream is also written there (`NN-SPEC.bin`), for other compressors.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use kervan_protocol::pack::{self, Item};

const GAP: usize = 1_000;

fn main() {
    let dump = std::env::args().nth(1);
    let all = kervan_tests::sample_ledger_envelopes(10_000 + GAP);
    let gap = &all[all.len() - GAP..];
    let last = gap.len() - 1;
    let items: Vec<Item<'_>> = gap
        .iter()
        .enumerate()
        .map(|(i, e)| Item {
            change: &e.change,
            sig: if i == last { e.signature() } else { None },
        })
        .collect();
    let (packed, sigs) = pack::pack(&items);
    let streams = streams(&packed);
    let unpacked = pack::unpack(&packed, &sigs, usize::MAX).expect("the page unpacks");
    assert_eq!(unpacked.len(), GAP, "every change comes back");

    let raw: usize = streams.iter().map(|(_, s)| s.len()).sum();
    println!(
        "{GAP} changes: {} B of change bytes; page {} B of streams + {} B of signatures; {} streams, {raw} B raw",
        gap.iter().map(|e| e.change.len()).sum::<usize>(),
        packed.len(),
        sigs.len(),
        streams.len(),
    );
    let mut totals: Vec<(&str, usize)> = Vec::new();
    let mut add = |name: &'static str, n: usize| match totals.iter_mut().find(|(t, _)| *t == name) {
        Some((_, total)) => *total += n,
        None => totals.push((name, n)),
    };
    for (i, (spec, s)) in streams.iter().enumerate() {
        if let Some(dir) = &dump {
            std::fs::write(format!("{dir}/{i:02}-{spec}.bin"), s).expect("write a stream");
        }
        let d6 = deflate(s, 6);
        let d9 = deflate(s, 9);
        let xz = external("xz", &["--format=raw", "-9e", "-c"], s);
        let zstd = external("zstd", &["-19", "-q", "-c", "--no-check"], s);
        println!(
            "stream {i:2} (column spec {spec:3}): raw {:7} B, deflate 6 {:6} B, deflate 9 {:6} B, xz -9e {}, zstd -19 {}",
            s.len(),
            d6,
            d9,
            xz.map_or("-".into(), |n| format!("{n:6} B")),
            zstd.map_or("-".into(), |n| format!("{n:6} B")),
        );
        add("deflate 6 (as sent)", d6);
        add("deflate 9", d9);
        if let Some(n) = xz {
            add("xz -9e", n);
        }
        if let Some(n) = zstd {
            add("zstd -19", n);
        }
    }
    for (name, n) in totals {
        println!(
            "streams compressed with {name}: {n} B, {:.1} B a change",
            n as f64 / GAP as f64
        );
    }
}

/// The raw streams of a packed run, each with its column spec: the header is the number of
/// streams, then for each its raw length, its deflated length and its spec (LEB128), then the
/// deflated bodies in order.
fn streams(packed: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut at = 0;
    let n = uleb(packed, &mut at);
    let heads: Vec<(u64, u64, u64)> = (0..n)
        .map(|_| {
            let raw = uleb(packed, &mut at);
            let deflated = uleb(packed, &mut at);
            (raw, deflated, uleb(packed, &mut at))
        })
        .collect();
    heads
        .into_iter()
        .map(|(raw, deflated, spec)| {
            let body = &packed[at..at + deflated as usize];
            at += deflated as usize;
            let mut out = Vec::new();
            DeflateDecoder::new(body)
                .read_to_end(&mut out)
                .expect("a stream inflates");
            assert_eq!(out.len() as u64, raw, "a stream's declared length");
            (spec, out)
        })
        .collect()
}

fn uleb(bytes: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = bytes[*at];
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
    }
    v
}

fn deflate(raw: &[u8], level: u32) -> usize {
    let mut e = DeflateEncoder::new(Vec::new(), Compression::new(level));
    e.write_all(raw).expect("deflate into memory");
    e.finish().expect("deflate into memory").len()
}

/// The size of `raw` compressed by an installed command, or `None` if it is not installed.
fn external(cmd: &str, args: &[&str], raw: &[u8]) -> Option<usize> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let input = raw.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().ok()?;
    writer.join().ok()?.ok()?;
    out.status.success().then_some(out.stdout.len())
}

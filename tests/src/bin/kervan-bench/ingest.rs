//! Ingest: a stream of signed changes into a park that holds the small registry, in pages as
//! sync delivers them, against batch signature verification and one batched Automerge apply of
//! the same changes.

use std::time::Instant;

use anyhow::{anyhow, ensure};
use ed25519_dalek::{Signature, VerifyingKey};
use kervan_node::{DataDir, Outcome};
use kervan_protocol::envelope::signing_message;
use kervan_protocol::{Actor, Hash, SignedChange};

use crate::Plan;
use crate::data::{Dataset, by_doc, pages};
use crate::report::{Figure, Report, Target};
use crate::stats::median;

struct Signed {
    message: Vec<u8>,
    signature: Signature,
    key: VerifyingKey,
}

fn signed(envelope: &[u8], ds: &Dataset) -> anyhow::Result<Signed> {
    let env = SignedChange::decode(envelope, usize::MAX)?;
    let change = env.parse()?;
    let actor = Actor::from_bytes(change.actor_id().to_bytes())
        .ok_or_else(|| anyhow!("actor is not 40 bytes"))?;
    Ok(Signed {
        message: signing_message(&ds.federation, &env.doc, &Hash::from(change.hash())),
        signature: Signature::from_bytes(
            env.signature()
                .ok_or_else(|| anyhow!("the stream holds a vouched change"))?,
        ),
        key: VerifyingKey::from_bytes(&actor.key.0)?,
    })
}

/// Changes per second through `verify_batch`, one batch per page.
fn verify_rate(ds: &Dataset, stream: &[Vec<u8>]) -> anyhow::Result<f64> {
    let batches: Vec<Vec<Signed>> = pages(stream)
        .iter()
        .map(|p| p.iter().map(|e| signed(e, ds)).collect())
        .collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    for b in &batches {
        let msgs: Vec<&[u8]> = b.iter().map(|s| s.message.as_slice()).collect();
        let sigs: Vec<Signature> = b.iter().map(|s| s.signature).collect();
        let keys: Vec<VerifyingKey> = b.iter().map(|s| s.key).collect();
        ed25519_dalek::verify_batch(&msgs, &sigs, &keys)?;
    }
    Ok(stream.len() as f64 / started.elapsed().as_secs_f64())
}

/// Changes per second through one `apply_changes` call per document.
fn apply_rate(ds: &Dataset, small: usize, stream: &[Vec<u8>]) -> anyhow::Result<f64> {
    let mut docs = ds.stage(small)?.docs.load()?;
    let changes = by_doc(stream)?;
    let started = Instant::now();
    for (doc, cs) in changes {
        docs.get_mut(&doc)
            .ok_or_else(|| anyhow!("no document {doc}"))?
            .apply_changes(cs)?;
    }
    Ok(stream.len() as f64 / started.elapsed().as_secs_f64())
}

/// Changes per second into a real replica; `per_change` ingests one change a call (gossip),
/// else a page a call (sync).
fn kervan_rate(
    ds: &Dataset,
    small: usize,
    stream: &[Vec<u8>],
    per_change: bool,
) -> anyhow::Result<f64> {
    let dir = ds.copy(&ds.stage(small)?.dir, "ingest")?;
    let mut replica = DataDir::new(&dir).open_replica()?;
    let batches: Vec<Vec<Vec<u8>>> = if per_change {
        stream.iter().map(|e| vec![e.clone()]).collect()
    } else {
        pages(stream)
    };
    let section = crate::profile::section(if per_change {
        "ingest-gossip"
    } else {
        "ingest"
    });
    let started = Instant::now();
    let mut accepted = 0;
    for b in batches {
        let reports = replica.ingest(b, "12D3KooWpeer")?;
        accepted += reports
            .iter()
            .filter(|r| r.outcome == Outcome::Accepted)
            .count();
    }
    // Every change applied to its document: those whose records the index read from their ops
    // wait for it (a node's actor applies them once idle). And the snapshots that came due
    // written, which their own thread saves while the stream goes on.
    replica.settle()?;
    replica.wait_for_snapshots();
    let secs = started.elapsed().as_secs_f64();
    drop(section);
    ensure!(
        accepted == stream.len(),
        "only {accepted} of {} accepted",
        stream.len()
    );
    drop(replica);
    std::fs::remove_dir_all(&dir)?;
    Ok(stream.len() as f64 / secs)
}

pub(crate) fn run(ds: &Dataset, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    const S: &str = "ingest";
    let stream = &ds.stream;
    let n = stream.len();
    let mut verify = Vec::new();
    let mut apply = Vec::new();
    let mut kervan = Vec::new();
    for rep in 0..plan.reps.min(3) {
        verify.push(verify_rate(ds, stream)?);
        apply.push(apply_rate(ds, plan.small, stream)?);
        kervan.push(kervan_rate(ds, plan.small, stream, false)?);
        eprintln!(
            "  rep {rep}: kervan {:.0}/s, verify_batch {:.0}/s, apply_changes {:.0}/s",
            kervan[rep], verify[rep], apply[rep]
        );
    }
    let verify = median(&verify);
    let apply = median(&apply);
    let kervan = median(&kervan);
    let (name, floor) = if verify < apply {
        ("ed25519 verify_batch", verify)
    } else {
        ("automerge apply_changes, one batch", apply)
    };
    let label = format!("{}k changes into {}k records", n / 1000, plan.small / 1000);
    report.push(
        Figure::new(
            S,
            format!("{label}: accepted/s, pages of 1 MiB (sync)"),
            kervan,
            "/s",
        )
        .against(name, floor)
        .target(Target::RatioAtLeast(0.5), ">= 0.5x the smaller"),
    );
    report.push(
        Figure::new(S, format!("{label}: reference verify_batch"), verify, "/s")
            .against("automerge apply_changes, one batch", apply),
    );
    let few = &stream[..n.min(plan.gossip_changes)];
    let gossip = kervan_rate(ds, plan.small, few, true)?;
    report.push(
        Figure::new(
            S,
            format!("first {} changes one per ingest (gossip path)", few.len()),
            gossip,
            "/s",
        )
        .against(name, floor),
    );
    Ok(())
}

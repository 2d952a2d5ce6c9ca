//! Catch-up: a fresh park brought up to date, and a park reconnecting after a gap, against
//! Automerge's own sync protocol between documents holding the same changes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure};
use automerge::Automerge;
use automerge::sync::{Message, State, SyncDoc};
use kervan_node::{DataDir, Replica, SledStore};
use kervan_protocol::DocId;
use kervan_protocol::sync::{self, MAX_PAGE_BYTES, Request, Response, Summary, SummaryCache};

use crate::data::{Dataset, Stage, by_doc, ingest_all};
use crate::report::{Figure, Report, Target};
use crate::stats::median;
use crate::{Plan, nodes, wire};

/// What one sync session cost.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cost {
    pub(crate) bytes: usize,
    /// Of which requests (pulls and their summaries, whole or as deltas).
    pub(crate) request_bytes: usize,
    /// What the requests would have been with the whole summary each time: a pull with no
    /// agreed base (a restarted node) gets the same answers, so its bytes are
    /// `bytes - request_bytes + whole_request_bytes`.
    pub(crate) whole_request_bytes: usize,
    pub(crate) round_trips: usize,
    pub(crate) secs: f64,
}

/// One Automerge sync session between `a` (ahead) and `b`, `b` speaking first; a round trip is
/// a message of `b` answered by `a`.
fn am_session(
    a: &mut Automerge,
    b: &mut Automerge,
    sa: &mut State,
    sb: &mut State,
) -> anyhow::Result<Cost> {
    let started = Instant::now();
    let mut cost = Cost::default();
    for _ in 0..1000 {
        let mut spoke = false;
        if let Some(m) = b.generate_sync_message(sb) {
            let bytes = m.encode();
            cost.bytes += bytes.len();
            a.receive_sync_message(sa, Message::decode(&bytes)?)?;
            spoke = true;
        }
        let mut answered = false;
        if let Some(m) = a.generate_sync_message(sa) {
            let bytes = m.encode();
            cost.bytes += bytes.len();
            b.receive_sync_message(sb, Message::decode(&bytes)?)?;
            answered = true;
        }
        if answered {
            cost.round_trips += 1;
        }
        if !spoke && !answered {
            cost.secs = started.elapsed().as_secs_f64();
            return Ok(cost);
        }
    }
    bail!("automerge sync did not settle in 1000 rounds")
}

type Docs = BTreeMap<DocId, Automerge>;
type States = BTreeMap<DocId, (State, State)>;

/// One session per document, summed (bytes, time) or the longest (round trips): the documents
/// could sync side by side over one connection.
fn am_sync(a: &mut Docs, b: &mut Docs, states: Option<&mut States>) -> anyhow::Result<Cost> {
    let mut fresh = States::new();
    let states = states.unwrap_or(&mut fresh);
    let mut total = Cost::default();
    for (doc, da) in a.iter_mut() {
        let db = b.entry(doc.clone()).or_default();
        let (sa, sb) = states.entry(doc.clone()).or_default();
        let c = am_session(da, db, sa, sb)?;
        total.bytes += c.bytes;
        total.secs += c.secs;
        total.round_trips = total.round_trips.max(c.round_trips);
    }
    for (doc, da) in a.iter() {
        ensure!(
            b.get(doc)
                .is_some_and(|db| db.get_heads() == da.get_heads()),
            "automerge sync left {doc} behind"
        );
    }
    Ok(total)
}

/// What the two sides of a pull remember of their last exchange that ended with equal digests,
/// as the net actors do: the requester its agreed summary with this peer, the responder the
/// summaries it agreed on, by digest.
#[derive(Debug, Default)]
struct Session {
    agreed: Option<Summary>,
    cache: SummaryCache,
}

/// Kervan's anti-entropy between two replicas in memory, as the net actor runs it: pull with
/// the summary (as a delta against the agreed one when `session` holds one), ingest the page,
/// pull again while `more`. Bytes are the messages as the node's cbor codec writes them; the
/// requester ingests each page as the codec reads it back.
fn pull(
    src: &Replica<SledStore>,
    req: &mut Replica<SledStore>,
    mut pages: Option<&mut Vec<Vec<Vec<u8>>>>,
    mut session: Option<&mut Session>,
) -> anyhow::Result<Cost> {
    let started = Instant::now();
    let mut cost = Cost::default();
    loop {
        ensure!(cost.round_trips < 10_000, "sync does not end");
        let summary = req.sync_summary();
        let whole = wire::request_bytes(Request::Pull(summary.clone()));
        let delta = session
            .as_ref()
            .and_then(|s| s.agreed.as_ref())
            .and_then(|agreed| sync::delta(agreed, &summary));
        let request = match &delta {
            Some(d) => wire::request_bytes(Request::PullDelta(d.clone())),
            None => whole,
        };
        cost.bytes += request;
        cost.request_bytes += request;
        cost.whole_request_bytes += whole;
        cost.round_trips += 1;
        // The responder rebuilds the requester's summary from the base it cached.
        let told = match (&delta, session.as_deref_mut()) {
            (Some(d), Some(s)) => match s.cache.get(&d.base).map(|b| sync::resolve(&b, d)) {
                Some(Ok(told)) => told,
                _ => {
                    cost.bytes += wire::response_bytes(Response::UnknownBase);
                    s.agreed = None;
                    continue;
                }
            },
            _ => summary,
        };
        if src.digest() == told.digest {
            cost.bytes += wire::response_bytes(Response::UpToDate { peers: Vec::new() });
            if let Some(s) = session.as_deref_mut() {
                let told = Arc::new(told);
                s.cache.insert(told.clone());
                s.agreed = Some((*told).clone());
            }
            break;
        }
        let (changes, more) = src.sync_page(&told, MAX_PAGE_BYTES)?;
        if let Some(p) = pages.as_mut() {
            p.push(changes.clone());
        }
        // What the requester ingests is what it decodes: vouched changes without their own
        // signature, as over the network.
        let (bytes, received) = wire::response_round_trip(Response::Changes {
            changes,
            more,
            peers: Vec::new(),
        })?;
        cost.bytes += bytes;
        let Response::Changes { changes, .. } = received else {
            anyhow::bail!("a page decodes as another message");
        };
        req.ingest(changes, "12D3KooWpeer")?;
        if !more {
            break;
        }
    }
    // Changes whose records the index read from their ops wait to be applied to their
    // documents (a node's actor applies them once idle): timed here with the rest.
    req.settle()?;
    cost.secs = started.elapsed().as_secs_f64();
    ensure!(src.digest() == req.digest(), "digests differ after sync");
    Ok(cost)
}

/// What the same pages would cost in other encodings.
struct Estimates {
    /// Each page's changes as one Automerge bundle per document (columnar, per-column DEFLATE),
    /// with one signature per actor per page over its newest change in the page (hashes chain
    /// through deps, so it authenticates the actor's earlier changes in the page).
    bundled: usize,
    /// Each change deflated on its own (`Change::bytes`), envelope and signature as today.
    deflated: usize,
}

fn estimates(docs: &Docs, pages: &[Vec<Vec<u8>>]) -> anyhow::Result<Estimates> {
    let mut est = Estimates {
        bundled: 0,
        deflated: 0,
    };
    for page in pages {
        let mut by: BTreeMap<DocId, Vec<automerge::ChangeHash>> = BTreeMap::new();
        let mut actors = std::collections::BTreeSet::new();
        for e in page {
            let env = kervan_protocol::SignedChange::decode(e, usize::MAX)?;
            let mut change = env.parse()?;
            let doc_len = env.doc.to_string().len();
            // version, doc length, doc, change length, change, signature; cbor byte-string head.
            est.deflated += 1 + 1 + doc_len + 4 + change.bytes().len() + 64 + 3;
            actors.insert((env.doc.clone(), change.actor_id().clone()));
            by.entry(env.doc).or_default().push(change.hash());
        }
        for (doc, hashes) in by {
            let d = docs.get(&doc).ok_or_else(|| anyhow!("no document {doc}"))?;
            est.bundled += d.bundle(hashes)?.bytes().len() + doc.to_string().len() + 8;
        }
        // Per actor: its newest change's hash (32) and the signature (64), with framing.
        est.bundled += actors.len() * (32 + 64 + 4) + 16;
    }
    Ok(est)
}

fn open(dir: &std::path::Path) -> anyhow::Result<Replica<SledStore>> {
    Ok(DataDir::new(dir).open_replica()?)
}

/// A fresh park catching up with a node that holds the registry, over loopback through a
/// counting proxy: (seconds until the digests are equal, bytes both ways).
async fn fresh_over_network(ds: &Dataset, stage: &Stage, rep: usize) -> anyhow::Result<(f64, u64)> {
    let src_dir = ds.copy(&stage.dir, &format!("catchup-src-{rep}"))?;
    let fresh_dir = ds.copy(&ds.fresh, &format!("catchup-fresh-{rep}"))?;
    let interval = Duration::from_secs(60);
    let src = nodes::start(&src_dir, Vec::new(), interval).await?;
    let target = src.replica.call(|r| r.digest()).await?;
    let proxy = wire::Proxy::start(nodes::tcp_addr(&src)?).await?;
    let bootstrap = nodes::p2p_addr(proxy.addr, src.peer_id)?;
    let started = Instant::now();
    let fresh = nodes::start(&fresh_dir, vec![bootstrap], interval).await?;
    let secs = loop {
        let (digest, at) = fresh.replica.call(|r| (r.digest(), Instant::now())).await?;
        if digest == target {
            break at.duration_since(started).as_secs_f64();
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the fresh park did not catch up in 600 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let bytes = proxy.bytes();
    fresh.stop().await?;
    src.stop().await?;
    drop(proxy);
    std::fs::remove_dir_all(&src_dir)?;
    std::fs::remove_dir_all(&fresh_dir)?;
    Ok((secs, bytes))
}

/// Catch-up of a fresh park with the small registry.
pub(crate) fn fresh(
    ds: &Dataset,
    plan: &Plan,
    rt: &tokio::runtime::Runtime,
    report: &mut Report,
) -> anyhow::Result<()> {
    const S: &str = "catch-up";
    let stage = ds.stage(plan.small)?;
    let label = format!("fresh park, {}k", plan.small / 1000);
    // Kervan in memory: the protocol's own messages, and their round trips.
    let mut mem = Vec::new();
    let mut am = Vec::new();
    let mut net = Vec::new();
    let mut sent = Vec::new();
    for rep in 0..plan.reps {
        let src_dir = ds.copy(&stage.dir, "catchup-mem-src")?;
        let req_dir = ds.copy(&ds.fresh, "catchup-mem-req")?;
        let src = open(&src_dir)?;
        let mut req = open(&req_dir)?;
        let section = crate::profile::section("catch-up");
        mem.push(pull(&src, &mut req, (rep == 0).then_some(&mut sent), None)?);
        drop(section);
        drop((src, req));
        let mut a = stage.docs.load()?;
        let mut b = Docs::new();
        am.push(am_sync(&mut a, &mut b, None)?);
        net.push(rt.block_on(fresh_over_network(ds, stage, rep))?);
        eprintln!(
            "  rep {rep}: kervan {:.2} s over loopback, {} B on the wire; automerge {:.2} s",
            net[rep].0, net[rep].1, am[rep].secs
        );
    }
    let am_bytes = am[0].bytes as f64;
    let am_time = median(&am.iter().map(|c| c.secs).collect::<Vec<_>>());
    let net_time = median(&net.iter().map(|c| c.0).collect::<Vec<_>>());
    let net_bytes = median(&net.iter().map(|c| c.1 as f64).collect::<Vec<_>>());
    let mem_time = median(&mem.iter().map(|c| c.secs).collect::<Vec<_>>());
    report.push(
        Figure::new(
            S,
            format!("{label}: bytes on the wire (loopback TCP, all protocols)"),
            net_bytes,
            "B",
        )
        .against("automerge sync messages", am_bytes)
        .target(Target::RatioAtMost(1.1), "<= 1.1x"),
    );
    report.push(
        Figure::new(
            S,
            format!("{label}: sync messages (cbor, as the codec writes them)"),
            mem[0].bytes as f64,
            "B",
        )
        .against("automerge sync messages", am_bytes)
        .target(Target::RatioAtMost(1.1), "<= 1.1x"),
    );
    let est = estimates(&stage.docs.load()?, &sent)?;
    report.push(
        Figure::new(
            S,
            format!("{label}: estimate, same pages as automerge bundles + 1 signature per actor per page"),
            (est.bundled + mem[0].request_bytes) as f64,
            "B",
        )
        .against("automerge sync messages", am_bytes),
    );
    report.push(
        Figure::new(
            S,
            format!(
                "{label}: estimate, each change deflated (Change::bytes), signature per change"
            ),
            (est.deflated + mem[0].request_bytes) as f64,
            "B",
        )
        .against("automerge sync messages", am_bytes),
    );
    // What the codec costs the two sides: packing every page (the responder) and unpacking it
    // (the requester), part of the time above.
    let (mut write, mut read) = (0.0, 0.0);
    for page in &sent {
        let (w, r) = wire::response_codec_secs(Response::Changes {
            changes: page.clone(),
            more: true,
            peers: Vec::new(),
        })?;
        write += w;
        read += r;
    }
    report.push(
        Figure::new(
            S,
            format!("{label}: codec time, every page written (packed)"),
            write,
            "s",
        )
        .against("automerge sync in memory", am_time),
    );
    report.push(
        Figure::new(
            S,
            format!("{label}: codec time, every page read (unpacked)"),
            read,
            "s",
        )
        .against("automerge sync in memory", am_time),
    );
    report.push(
        Figure::new(
            S,
            format!("{label}: round trips"),
            mem[0].round_trips as f64,
            "",
        )
        .against("automerge sync", am[0].round_trips as f64),
    );
    report.push(
        Figure::new(
            S,
            format!("{label}: time until digests equal (2 nodes, loopback)"),
            net_time,
            "s",
        )
        .against("automerge sync in memory", am_time)
        .target(Target::RatioAtMost(2.0), "<= 2x"),
    );
    report.push(
        Figure::new(
            S,
            format!("{label}: time, replicas in memory (no network)"),
            mem_time,
            "s",
        )
        .against("automerge sync in memory", am_time),
    );
    Ok(())
}

/// Kervan and Automerge after a reconnect, for each gap, at one registry size. Answers Kervan's
/// bytes by gap.
pub(crate) fn reconnect(
    ds: &Dataset,
    startups: usize,
    gaps: &[usize],
    report: &mut Report,
) -> anyhow::Result<BTreeMap<usize, usize>> {
    const S: &str = "reconnect";
    let stage = ds.stage(startups)?;
    let label = format!("{}k", startups / 1000);
    let src_dir = ds.copy(&stage.dir, "reconnect-src")?;
    let req_dir = ds.copy(&stage.dir, "reconnect-req")?;
    let mut src = open(&src_dir)?;
    let mut req = open(&req_dir)?;
    let mut writer = ds.writer_at(stage, 0, 99)?;
    let total: usize = gaps.iter().sum();
    let changes = writer.startups_at(0, total)?;
    let mut a = stage.docs.load()?;
    let mut b_fresh = stage.docs.load()?;
    let mut b_live = stage.docs.load()?;
    let mut live = States::new();
    // The live session: in sync before the gap opens.
    am_sync(&mut a, &mut b_live, Some(&mut live))?;
    let mut out = BTreeMap::new();
    let mut offset = 0;
    let mut session = Session::default();
    for &gap in gaps {
        let slice = &changes[offset..offset + gap];
        offset += gap;
        // The previous session, not counted: in sync, the pull ends with equal digests and
        // both sides remember the summary, as the net actors do.
        let before = pull(&src, &mut req, None, Some(&mut session))?;
        ensure!(
            before.round_trips == 1 && session.agreed.is_some(),
            "the replicas were not in sync before the gap"
        );
        ingest_all(&mut src, slice, "local")?;
        let section = crate::profile::section("reconnect");
        let k = pull(&src, &mut req, None, Some(&mut session))?;
        drop(section);
        // A restarted node pulls with its whole summary and gets the same answers.
        let restarted = k.bytes - k.request_bytes + k.whole_request_bytes;
        for (doc, cs) in by_doc(slice)? {
            a.get_mut(&doc)
                .ok_or_else(|| anyhow!("no document {doc}"))?
                .apply_changes(cs)?;
        }
        let fresh = am_sync(&mut a, &mut b_fresh, None)?;
        let on_live = am_sync(&mut a, &mut b_live, Some(&mut live))?;
        let name = |what: &str| format!("{label} records, gap {gap}: {what}");
        let target = |f: Figure| {
            if startups >= 100_000 {
                f.target(Target::RatioAtMost(0.05), "<= 0.05x")
            } else {
                f
            }
        };
        report.push(target(
            Figure::new(S, name("bytes"), k.bytes as f64, "B")
                .against("automerge, fresh sync state", fresh.bytes as f64),
        ));
        report.push(target(
            Figure::new(
                S,
                name("bytes, restarted node (whole summary, no agreed base)"),
                restarted as f64,
                "B",
            )
            .against("automerge, fresh sync state", fresh.bytes as f64),
        ));
        report.push(
            Figure::new(S, name("bytes vs a live session"), k.bytes as f64, "B")
                .against("automerge, live session", on_live.bytes as f64)
                .target(
                    Target::RefPlus(64.0 * gap as f64),
                    format!("<= ref + {} B", 64 * gap),
                ),
        );
        report.push(
            Figure::new(S, name("round trips"), k.round_trips as f64, "")
                .against("automerge, fresh sync state", fresh.round_trips as f64)
                .target(Target::AtMost(1.0), "1"),
        );
        if gap == gaps[0] {
            report.push(
                Figure::new(
                    S,
                    format!(
                        "{label} records: of which the pull request (delta against the agreed summary)"
                    ),
                    k.request_bytes as f64,
                    "B",
                )
                .against(
                    "the whole summary (a restarted node's pull)",
                    k.whole_request_bytes as f64,
                ),
            );
        }
        out.insert(gap, k.bytes);
    }
    drop((src, req));
    std::fs::remove_dir_all(&src_dir)?;
    std::fs::remove_dir_all(&req_dir)?;
    Ok(out)
}

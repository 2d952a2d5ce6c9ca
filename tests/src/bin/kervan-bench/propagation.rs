//! Propagation: a write at one park until every park's query index answers it, on a federation
//! of real nodes on loopback; against a bare gossipsub mesh of the same size, configuration and
//! connectivity (every member an explicit peer of every other) carrying messages of the same
//! size.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure};
use futures_util::StreamExt as _;
use kervan_node::Collection;
use kervan_node::actor::ReplicaHandle;
use kervan_node::node::RunningNode;
use kervan_node::sample::Sample;
use kervan_protocol::RecordId;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, identity, noise, tcp, yamux};
use tokio::sync::{mpsc, oneshot};

use crate::data::{federation, ingest_all, writers};
use crate::report::{Figure, Report, Target};
use crate::stats::{median, percentile};
use crate::{Plan, nodes};

/// How often the watcher asks every node's index whether a write has arrived.
const POLL: Duration = Duration::from_micros(200);
/// Receipts of the raw mesh that may wait for the collector.
const RECEIPTS: usize = 4096;
/// Commands that may wait for one raw node.
const COMMANDS: usize = 64;

/// Asks every node's query index for `id` until all answer it, from a thread of its own so the
/// polling is finer than the runtime's timer; each answer is timed on the replica's thread.
fn watch(
    rt: tokio::runtime::Handle,
    handles: Vec<ReplicaHandle>,
    id: RecordId,
    timeout: Duration,
) -> std::thread::JoinHandle<Vec<Option<Instant>>> {
    std::thread::spawn(move || {
        let mut seen: Vec<Option<Instant>> = vec![None; handles.len()];
        let started = Instant::now();
        while seen.iter().any(Option::is_none) && started.elapsed() < timeout {
            let asks: Vec<_> = (0..handles.len())
                .filter(|i| seen[*i].is_none())
                .map(|i| {
                    let id = id.clone();
                    let h = handles[i].clone();
                    async move {
                        let at = h
                            .call(move |r| r.index().startup(&id).is_some().then(Instant::now))
                            .await;
                        (i, at)
                    }
                })
                .collect();
            for (i, at) in rt.block_on(futures_util::future::join_all(asks)) {
                if let Ok(Some(t)) = at {
                    seen[i] = Some(t);
                }
            }
            pause(POLL);
        }
        seen
    })
}

/// Waits on a thread that is not the runtime's: the watcher's polling interval.
#[allow(
    clippy::disallowed_methods,
    reason = "the watcher is a plain thread, not an async task"
)]
fn pause(d: Duration) {
    std::thread::sleep(d);
}

/// Seconds from each write until the last node answered it, and until the write was
/// acknowledged at its own node.
async fn kervan_writes(
    nodes: &[RunningNode],
    writers: usize,
    writes: std::ops::Range<usize>,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<Vec<(f64, f64)>> {
    let handles: Vec<ReplicaHandle> = nodes.iter().map(|n| n.replica.clone()).collect();
    let mut sample = Sample::new(21);
    let mut out = Vec::new();
    for i in writes {
        let w = i % writers;
        let park = nodes[w].park.clone();
        let local = format!("prop{i:05}");
        let id = RecordId::new(park, &local)?;
        let record = sample.startup("KZ");
        let watcher = watch(
            rt.clone(),
            handles.clone(),
            id.clone(),
            Duration::from_secs(30),
        );
        let started = Instant::now();
        nodes[w]
            .replica
            .call(move |r| r.create(Collection::Startups, Some(&local), &record))
            .await??;
        let acked = started.elapsed().as_secs_f64();
        let seen = tokio::task::spawn_blocking(move || watcher.join())
            .await?
            .map_err(|_| anyhow!("the watcher panicked"))?;
        let mut last = 0.0f64;
        for (n, s) in seen.iter().enumerate() {
            let at = s.ok_or_else(|| anyhow!("write {i} never reached node {n}"))?;
            last = last.max(at.saturating_duration_since(started).as_secs_f64());
        }
        out.push((last, acked));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(out)
}

fn gossip_config() -> anyhow::Result<gossipsub::Config> {
    // The node's own gossipsub configuration (node/src/net.rs), message id included.
    gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .validate_messages()
        .message_id_fn(|m: &gossipsub::Message| {
            use sha2::Digest as _;
            gossipsub::MessageId::from(sha2::Sha256::digest(&m.data).to_vec())
        })
        .max_transmit_size(
            kervan_protocol::Limits::default().max_change_bytes
                + kervan_protocol::envelope::ENVELOPE_OVERHEAD
                + 1024,
        )
        .mesh_n(4)
        .mesh_n_low(2)
        .mesh_n_high(8)
        .mesh_outbound_min(1)
        .heartbeat_interval(Duration::from_millis(500))
        .build()
        .map_err(|e| anyhow!("gossipsub config: {e}"))
}

type RawSwarm = libp2p::Swarm<gossipsub::Behaviour>;

enum Cmd {
    Publish(Vec<u8>),
    Subscribed(oneshot::Sender<usize>),
}

async fn raw_swarm(topic: &IdentTopic) -> anyhow::Result<(RawSwarm, Multiaddr)> {
    let keypair = identity::Keypair::generate_ed25519();
    let config = gossip_config()?;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(gossipsub::Behaviour::new(
                MessageAuthenticity::Anonymous,
                config,
            )?)
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    swarm.behaviour_mut().subscribe(topic)?;
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    Ok((swarm, addr))
}

/// Runs one raw node: publishes on command, accepts every message at once and reports when it
/// arrived.
async fn raw_loop(
    mut swarm: RawSwarm,
    index: usize,
    topic: IdentTopic,
    mut commands: mpsc::Receiver<Cmd>,
    receipts: mpsc::Sender<(usize, u64, Instant)>,
) {
    loop {
        tokio::select! {
            ev = swarm.select_next_some() => {
                if let SwarmEvent::Behaviour(gossipsub::Event::Message {
                    propagation_source, message_id, message,
                }) = ev {
                    let at = Instant::now();
                    swarm.behaviour_mut().report_message_validation_result(
                        &message_id, &propagation_source, MessageAcceptance::Accept);
                    let mut seq = [0u8; 8];
                    seq.copy_from_slice(&message.data[..8]);
                    let _ = receipts.try_send((index, u64::from_be_bytes(seq), at));
                }
            }
            cmd = commands.recv() => match cmd {
                Some(Cmd::Publish(data)) => {
                    let _ = swarm.behaviour_mut().publish(topic.clone(), data);
                }
                Some(Cmd::Subscribed(reply)) => {
                    let n = swarm.behaviour().all_peers().filter(|(_, t)| !t.is_empty()).count();
                    let _ = reply.send(n);
                }
                None => break,
            }
        }
    }
}

/// Seconds from each publish until the last node received it, on a bare gossipsub mesh.
async fn raw_mesh(
    n: usize,
    writers: usize,
    writes: usize,
    size: usize,
) -> anyhow::Result<Vec<f64>> {
    let topic = IdentTopic::new("kervan/bench/changes/1");
    let mut swarms = Vec::new();
    for _ in 0..n {
        swarms.push(raw_swarm(&topic).await?);
    }
    let peers: Vec<(PeerId, Multiaddr)> = swarms
        .iter()
        .map(|(s, a)| (*s.local_peer_id(), a.clone()))
        .collect();
    let (rtx, mut receipts) = mpsc::channel(RECEIPTS);
    let mut txs = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (mut swarm, _)) in swarms.into_iter().enumerate() {
        // As the node does: every member an explicit peer; each dials those started before it.
        for (j, (peer, addr)) in peers.iter().enumerate() {
            if j == i {
                continue;
            }
            swarm.behaviour_mut().add_explicit_peer(peer);
            if j < i {
                swarm.dial(addr.clone())?;
            }
        }
        let (tx, rx) = mpsc::channel(COMMANDS);
        txs.push(tx);
        tasks.spawn(raw_loop(swarm, i, topic.clone(), rx, rtx.clone()));
    }
    let started = Instant::now();
    loop {
        let mut ready = true;
        for tx in &txs {
            let (reply, answer) = oneshot::channel();
            tx.send(Cmd::Subscribed(reply)).await?;
            if answer.await? < n - 1 {
                ready = false;
            }
        }
        if ready {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the raw mesh did not form in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut out = Vec::new();
    let warmup = 3;
    for i in 0..(warmup + writes) {
        let w = i % writers;
        let mut data = vec![0x5au8; size.max(16)];
        data[..8].copy_from_slice(&(i as u64).to_be_bytes());
        data[8..16].copy_from_slice(&rand::random::<[u8; 8]>());
        let sent = Instant::now();
        txs[w].send(Cmd::Publish(data)).await?;
        let mut got: HashMap<usize, Instant> = HashMap::new();
        while got.len() < n - 1 {
            let r = tokio::time::timeout(Duration::from_secs(10), receipts.recv()).await;
            let Ok(Some((node, seq, at))) = r else {
                bail!("message {i} reached {} of {} nodes", got.len(), n - 1);
            };
            if seq == i as u64 {
                got.insert(node, at);
            }
        }
        if i >= warmup {
            let last = got
                .values()
                .map(|t| t.duration_since(sent).as_secs_f64())
                .fold(0.0, f64::max);
            out.push(last);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(txs);
    while tasks.join_next().await.is_some() {}
    Ok(out)
}

/// A federation of `n` parks with a registry over its first four (all of them, if fewer), all
/// running on loopback.
async fn kervan_net(
    plan: &Plan,
    n: usize,
) -> anyhow::Result<(Vec<RunningNode>, usize, kervan_tests::Federation)> {
    let mut fed = federation(n, |_| {});
    let (_, mut generator) = writers(&mut fed, WRITERS.min(n), 31)?;
    let changes = generator.grow(plan.prop_records, 0)?;
    let mut sizes: Vec<usize> = changes.iter().map(Vec::len).collect();
    sizes.sort_unstable();
    let size = sizes.get(sizes.len() / 2).copied().unwrap_or(500);
    ingest_all(fed.parks[0].replica(), &changes, "import")?;
    let bundle = fed.parks[0].export();
    for park in fed.parks.iter_mut().skip(1) {
        park.import(&bundle);
    }
    for park in &mut fed.parks {
        park.replica().snapshot_all()?;
        park.close();
    }
    let mut running: Vec<RunningNode> = Vec::new();
    for park in &fed.parks {
        let bootstrap: Vec<Multiaddr> = running.iter().flat_map(|r| r.p2p_addrs.clone()).collect();
        running.push(nodes::start(park.dir.root(), bootstrap, Duration::from_secs(1)).await?);
    }
    nodes::connected(&running, Duration::from_secs(120)).await?;
    Ok((running, size, fed))
}

/// The parks that write, in turn, in a propagation run, and whose ledgers hold its registry.
const WRITERS: usize = 4;

pub(crate) fn run(
    plan: &Plan,
    rt: &tokio::runtime::Runtime,
    report: &mut Report,
) -> anyhow::Result<()> {
    const S: &str = "propagation";
    for &n in &plan.parks {
        eprintln!("  {n} parks: building the federation");
        let (writes, size) = rt.block_on(async {
            let (running, size, fed) = kervan_net(plan, n).await?;
            // Warm-up: every node has seen a write before timing starts.
            kervan_writes(&running, WRITERS.min(n), 0..3, rt.handle()).await?;
            let section = crate::profile::section("propagation");
            let times = kervan_writes(
                &running,
                WRITERS.min(n),
                3..3 + plan.prop_writes,
                rt.handle(),
            )
            .await?;
            drop(section);
            nodes::stop_all(running).await?;
            drop(fed);
            anyhow::Ok((times, size))
        })?;
        let raw = rt.block_on(raw_mesh(n, WRITERS.min(n), plan.prop_writes, size))?;
        ensure!(
            !writes.is_empty() && !raw.is_empty(),
            "no propagation measured"
        );
        let kervan: Vec<f64> = writes.iter().map(|w| w.0).collect();
        let after_ack: Vec<f64> = writes.iter().map(|w| w.0 - w.1).collect();
        let label = format!("{n} parks ({}k records)", plan.prop_records / 1000);
        report.push(
            Figure::new(
                S,
                format!("{label}: write -> visible at all, p50"),
                percentile(&kervan, 50.0),
                "s",
            )
            .against(
                format!("raw gossipsub, {size} B, p50"),
                percentile(&raw, 50.0),
            ),
        );
        report.push(
            Figure::new(
                S,
                format!("{label}: write -> visible at all, p99"),
                percentile(&kervan, 99.0),
                "s",
            )
            .against(
                format!("raw gossipsub, {size} B, p99"),
                percentile(&raw, 99.0),
            )
            .target(Target::RatioAtMost(2.0), "<= 2x"),
        );
        report.push(
            Figure::new(
                S,
                format!("{label}: acknowledged at the writer -> visible at all, p50"),
                percentile(&after_ack, 50.0),
                "s",
            )
            .against(
                format!("raw gossipsub, {size} B, p50"),
                percentile(&raw, 50.0),
            ),
        );
        report.push(
            Figure::new(
                S,
                format!("{label}: acknowledged at the writer -> visible at all, p99"),
                percentile(&after_ack, 99.0),
                "s",
            )
            .against(
                format!("raw gossipsub, {size} B, p99"),
                percentile(&raw, 99.0),
            ),
        );
        eprintln!(
            "  median kervan {:.2} ms, raw {:.2} ms",
            median(&kervan) * 1e3,
            median(&raw) * 1e3
        );
    }
    Ok(())
}

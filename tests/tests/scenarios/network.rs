//! The federation over the network: nodes in this process on loopback, gossip and anti-entropy
//! over real libp2p connections.

use std::time::Duration;

use kervan_node::data_dir::DataDir;
use kervan_node::node::{self, Overrides};
use kervan_node::sample::Sample;
use kervan_protocol::{DocId, RecordId, SignedChange};
use kervan_tests::hostile::{HostilePeer, PackedPage};
use kervan_tests::testnet::{TestNet, wait_until};
use kervan_tests::{Forger, Park};

const CONVERGE: Duration = Duration::from_secs(60);

/// Every park writes concurrently; the parks end with equal digests, equal query answers, and
/// every acknowledged write everywhere. Prints the time to converge.
async fn parks_converge(n: usize, per_park: usize) {
    let net = TestNet::start(n).await;
    net.converged(CONVERGE).await;
    let mut ids: Vec<RecordId> = Vec::new();
    let writes = (0..n).map(|i| {
        let net = &net;
        async move {
            let mut sample = Sample::new(i as u64);
            let mut out = Vec::new();
            for _ in 0..per_park {
                let country = net.fed.parks[i].country.clone();
                out.push(net.write(i, sample.startup(&country)).await);
            }
            out
        }
    });
    let started = std::time::Instant::now();
    // All parks write at once: the futures interleave on this task, each write going through
    // its own node's replica thread.
    for batch in futures_util::future::join_all(writes).await {
        ids.extend(batch);
    }
    let took = net.converged(CONVERGE).await;
    println!(
        "{n} parks, {} writes: converged {:?} after the last write ({:?} from the first)",
        ids.len(),
        took,
        started.elapsed()
    );
    let view = net.view(0).await;
    for i in 1..n {
        assert_eq!(net.view(i).await, view, "park {i} answers differently");
    }
    for i in 0..n {
        for id in &ids {
            assert!(net.has_startup(i, id).await, "{id} missing at park {i}");
        }
    }
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_parks_writing_concurrently_converge() {
    parks_converge(3, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_parks_writing_concurrently_converge() {
    parks_converge(6, 10).await;
}

/// Two sides of a partition both write; after the heal, every write is everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_with_writes_on_both_sides_heals_with_nothing_lost() {
    let net = TestNet::start(3).await;
    net.converged(CONVERGE).await;
    net.partition(&[0], &[1, 2]).await;
    let mut sample = Sample::new(7);
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(net.write(0, sample.startup("KZ")).await);
        ids.push(net.write(1, sample.startup("UZ")).await);
        ids.push(net.write(2, sample.startup("KG")).await);
    }
    // Cut off: park 0 sees none of the others' writes.
    let theirs = ids[1].clone();
    wait_until("the other side to converge", CONVERGE, || async {
        net.digest(1).await == net.digest(2).await
    })
    .await;
    assert!(
        !net.has_startup(0, &theirs).await,
        "a write crossed the partition"
    );
    net.heal().await;
    net.converged(CONVERGE).await;
    for i in 0..3 {
        for id in &ids {
            assert!(net.has_startup(i, id).await, "{id} lost at park {i}");
        }
    }
    net.shutdown().await;
}

/// Waits until every node of `parks` holds a summary agreed with `peers` others: its periodic
/// pulls to them were answered `UpToDate`.
async fn agreed(net: &TestNet, parks: &[usize], peers: usize) {
    wait_until("summaries agreed with every peer", CONVERGE, || async {
        for &i in parks {
            if net.node(i).net.sync_stats().await.agreed_peers < peers {
                return false;
            }
        }
        true
    })
    .await;
}

/// Parks that agreed on a summary before a partition catch up after it with delta pulls: each
/// side tells only the heads that moved since, and is answered with the changes it lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_park_catches_up_over_delta_pulls() {
    let net = TestNet::start(3).await;
    net.converged(CONVERGE).await;
    agreed(&net, &[0, 1, 2], 2).await;
    net.partition(&[0], &[1, 2]).await;
    let mut sample = Sample::new(17);
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(net.write(0, sample.startup("KZ")).await);
        ids.push(net.write(1, sample.startup("UZ")).await);
        ids.push(net.write(2, sample.startup("KG")).await);
    }
    wait_until("the other side to converge", CONVERGE, || async {
        net.digest(1).await == net.digest(2).await
    })
    .await;
    let mut before = Vec::new();
    for i in 0..3 {
        before.push(net.node(i).net.sync_stats().await);
    }
    net.heal().await;
    net.converged(CONVERGE).await;
    for i in 0..3 {
        for id in &ids {
            assert!(net.has_startup(i, id).await, "{id} missing at park {i}");
        }
    }
    let after = net.node(0).net.sync_stats().await;
    assert!(
        after.delta_pulls_with_changes > before[0].delta_pulls_with_changes,
        "park 0 caught up without a delta pull: {:?} then {after:?}",
        before[0]
    );
    let mut served = 0;
    for (i, b) in before.iter().enumerate().skip(1) {
        let a = net.node(i).net.sync_stats().await;
        assert!(a.full_pulls >= b.full_pulls && a.delta_pulls >= b.delta_pulls);
        served += a.deltas_served - b.deltas_served;
    }
    assert!(served >= 1, "no delta pull of park 0 was served");
    // Nothing fell back to whole summaries: a node keeps what it answered `UpToDate` to.
    for i in 0..3 {
        let s = net.node(i).net.sync_stats().await;
        assert_eq!(s.unknown_base_answers, 0, "park {i}: {s:?}");
        assert_eq!(s.deltas_refused, 0, "park {i}: {s:?}");
    }
    net.shutdown().await;
}

/// A restarted node has forgotten every agreed summary. Its peer, which has not, pulls with a
/// delta; the restarted node answers `UnknownBase`, the peer pulls again with its whole
/// summary, and the two converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_park_refuses_unknown_bases_and_still_converges() {
    let mut net = TestNet::new(2);
    net.start_node(0).await;
    net.start_node(1).await;
    net.converged(CONVERGE).await;
    agreed(&net, &[0, 1], 1).await;
    net.stop(1).await;
    let mut sample = Sample::new(19);
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(net.write(0, sample.startup("KZ")).await);
    }
    net.start_node(1).await;
    net.converged(CONVERGE).await;
    for id in &ids {
        assert!(
            net.has_startup(1, id).await,
            "{id} missing at the restarted park"
        );
    }
    wait_until(
        "park 0's delta pull to be refused and sent again whole",
        CONVERGE,
        || async {
            let s0 = net.node(0).net.sync_stats().await;
            let s1 = net.node(1).net.sync_stats().await;
            s0.unknown_base_answers >= 1 && s1.deltas_refused >= 1
        },
    )
    .await;
    // And the two agree again, so later pulls are deltas once more.
    agreed(&net, &[0, 1], 1).await;
    let w = net.write(1, sample.startup("UZ")).await;
    wait_until(
        "a write of the restarted park to reach park 0",
        CONVERGE,
        || async { net.has_startup(0, &w).await },
    )
    .await;
    net.shutdown().await;
}

/// A node restarted after missing writes, and a park whose node starts only after the others
/// wrote, both catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_and_late_joiner_catch_up() {
    let mut net = TestNet::new(4);
    for i in 0..3 {
        net.start_node(i).await;
    }
    net.converged(CONVERGE).await;
    net.stop(2).await;
    let mut sample = Sample::new(9);
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(net.write(0, sample.startup("KZ")).await);
        ids.push(net.write(1, sample.startup("UZ")).await);
    }
    net.start_node(2).await;
    net.start_node(3).await;
    net.converged(CONVERGE).await;
    for i in 2..4 {
        for id in &ids {
            assert!(net.has_startup(i, id).await, "{id} missing at park {i}");
        }
    }
    net.shutdown().await;
}

/// A device the federation document does not register is refused at the connection level:
/// it learns nothing of the registry, while the members go on converging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_cannot_connect_and_receives_nothing() {
    let net = TestNet::start(2).await;
    let id = net.write(0, Sample::new(1).startup("KZ")).await;
    net.converged(CONVERGE).await;

    // A device of Astana Hub that Astana Hub never registered.
    let (outsider, _) = Park::init("kz-astana-hub", "Astana Hub", "KZ", "Astana");
    outsider
        .dir
        .join(&net.fed.genesis)
        .expect("joins the genesis");
    let bootstrap: Vec<_> = net
        .nodes
        .iter()
        .flatten()
        .flat_map(|n| n.p2p_addrs.clone())
        .collect();
    let o = Overrides {
        api: Some("127.0.0.1:0".parse().expect("addr")),
        listen: Some(vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")]),
        bootstrap: Some(bootstrap),
        sync_interval: Some(Duration::from_millis(200)),
    };
    let dir: &DataDir = &outsider.dir;
    let stranger = node::start(dir, dir.config().expect("config"), o)
        .await
        .expect("starts");
    // Several sync intervals later it still has nothing and nobody lists it as connected.
    let waited = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let has = stranger
                .replica
                .call({
                    let id = id.clone();
                    move |r| r.index().startup(&id).is_some()
                })
                .await
                .expect("runs");
            if has {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(waited.is_err(), "the non-member received the registry");
    for n in net.nodes.iter().flatten() {
        let peers = n.net.peers().await;
        assert!(
            peers
                .iter()
                .all(|p| !(p.peer_id == stranger.peer_id.to_string() && p.connected)),
            "a member accepted the non-member's connection"
        );
    }
    // Its dials may complete a handshake before the member's allow list closes them: what
    // matters is that no sync round ever completed and nothing was accepted from anyone.
    let seen = stranger.net.peers().await;
    assert!(
        seen.iter()
            .all(|p| p.last_sync.is_none() && p.accepted == 0),
        "{seen:?}"
    );
    stranger.stop().await.expect("stops");
    net.shutdown().await;
}

/// A member publishes forged and unauthorised changes over gossip. The honest parks reject
/// each with its reason, count them against the sender, disconnect it after repeated offences,
/// and still converge on everything honest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_member_is_rejected_penalised_and_cut_off() {
    let mut net = TestNet::new(3);
    for i in 0..3 {
        net.start_node(i).await;
    }
    net.converged(CONVERGE).await;
    // Park 2 turns hostile: it signs changes into park 1's ledger and forges signatures.
    let ledger_1 = DocId::Ledger(net.fed.parks[1].id.clone());
    let key_2 = net.fed.parks[2].key();
    let federation = net.fed.id;
    let bundle = net
        .node(1)
        .replica
        .call(|r| r.export(None).map(|b| b.encode()))
        .await
        .expect("runs")
        .expect("export");
    let mut holder = Park::init("uz-it-park", "IT Park Uzbekistan", "UZ", "Tashkent").0;
    holder.dir.join(&net.fed.genesis).expect("join");
    holder.import(&bundle);
    let mut forger = Forger::new(&mut holder, ledger_1, key_2, federation);
    let startups = forger.obj(&["startups"]);
    let mut bad = Vec::new();
    for i in 0..30 {
        let mut c = forger.change(|d| {
            use automerge::transaction::Transactable;
            let rec = d
                .put_object(
                    &startups,
                    format!("uz-it-park/hijack-{i}"),
                    automerge::ObjType::Map,
                )
                .expect("put");
            d.put(&rec, "name", "Hijacked").expect("put");
        });
        let env = forger.sign(&mut c);
        if i % 2 == 0 {
            let mut e = SignedChange::decode(&env, usize::MAX).expect("decode");
            e.signature_mut().expect("signed")[0] ^= 1;
            bad.push(e.encode());
        } else {
            bad.push(env);
        }
    }
    // The fork goes first: after enough bad changes the honest parks stop listening.
    let (e1, e2) = equivocating_pair(&net, 2);
    bad.insert(0, e2);
    bad.insert(0, e1);
    for env in bad {
        net.node(2).net.publish(env).await;
    }
    let hostile = net.node(2).peer_id.to_string();
    wait_until(
        "honest parks to penalise and ban the hostile member",
        CONVERGE,
        || async {
            let mut banned = 0;
            for i in 0..2 {
                let peers = net.node(i).net.peers().await;
                if peers
                    .iter()
                    .any(|p| p.peer_id == hostile && p.banned && p.rejected >= 20)
                {
                    banned += 1;
                }
            }
            banned >= 1
        },
    )
    .await;
    for i in 0..2 {
        let rejected = net
            .node(i)
            .replica
            .call(|r| r.store().rejected())
            .await
            .expect("runs");
        let rejected = rejected.unwrap_or_default();
        assert!(
            rejected
                .iter()
                .all(|r| ["writes_another_park", "bad_signature", "equivocation"]
                    .contains(&r.code.as_str())),
            "{rejected:?}"
        );
        assert!(rejected.iter().any(|r| r.code == "writes_another_park"));
        assert!(rejected.iter().any(|r| r.code == "bad_signature"));
    }
    wait_until(
        "the equivocation to be kept as evidence",
        CONVERGE,
        || async {
            let mut ok = true;
            for i in 0..2 {
                let n = net
                    .node(i)
                    .replica
                    .call(|r| r.store().evidence().map(|e| e.len()).unwrap_or(0))
                    .await
                    .expect("runs");
                ok &= n == 1;
            }
            ok
        },
    )
    .await;
    // The honest parks go on converging.
    let id = net.write(0, Sample::new(3).startup("KZ")).await;
    wait_until("the honest write to reach park 1", CONVERGE, || async {
        net.has_startup(1, &id).await
    })
    .await;
    assert_eq!(net.digest(0).await, net.digest(1).await);
    net.shutdown().await;
}

use kervan_node::Store as _;

/// Two different changes of one actor with one seq, in the federation document: park `who`'s
/// key edits its own website twice from the same state.
fn equivocating_pair(net: &TestNet, who: usize) -> (Vec<u8>, Vec<u8>) {
    let key = net.fed.parks[who].key();
    let park = net.fed.parks[who].id.to_string();
    let federation = net.fed.id;
    // Any node holding the genesis will do as the starting state.
    let mut h = Park::init("kz-astana-hub", "Astana Hub", "KZ", "Astana").0;
    h.dir.join(&net.fed.genesis).expect("join");
    let mut a = Forger::new(&mut h, DocId::Federation, key, federation);
    let mut b = Forger {
        doc: a.doc.fork(),
        doc_id: DocId::Federation,
        key: a.key.clone(),
        actor: a.actor,
        federation,
    };
    b.doc.set_actor(a.actor.to_automerge());
    let obj = a.obj(&["parks", park.as_str()]);
    let mut c1 = a.change(|d| {
        use automerge::transaction::Transactable;
        d.put(&obj, "website", "https://one.example").expect("put");
    });
    let mut c2 = b.change(|d| {
        use automerge::transaction::Transactable;
        d.put(&obj, "website", "https://two.example").expect("put");
    });
    (a.sign(&mut c1), b.sign(&mut c2))
}

/// Changes signed by park `writer` into park `victim`'s ledger, half with broken signatures,
/// each by an actor of its own.
fn forged(net: &TestNet, victim: usize, writer: usize, n: usize) -> Vec<Vec<u8>> {
    let ledger = DocId::Ledger(net.fed.parks[victim].id.clone());
    let key = net.fed.parks[writer].key();
    let federation = net.fed.id;
    let victim_id = net.fed.parks[victim].id.to_string();
    let mut f = Forger {
        doc: automerge::AutoCommit::new(),
        doc_id: ledger,
        key: key.clone(),
        actor: kervan_protocol::Actor {
            key: kervan_protocol::DeviceKey(key.verifying_key().to_bytes()),
            epoch: [7; 8],
        },
        federation,
    };
    let mut out = Vec::new();
    for i in 0..n {
        // Each change as an actor of its own (the key under another epoch), so each is its
        // actor's newest in a page and its signature, forged or not, travels.
        f.actor.epoch = [7, i as u8, 0, 0, 0, 0, 0, 0];
        f.doc.set_actor(f.actor.to_automerge());
        let mut c = f.change(|d| {
            use automerge::transaction::Transactable;
            let s = d
                .put_object(
                    automerge::ROOT,
                    format!("startups-{i}"),
                    automerge::ObjType::Map,
                )
                .expect("put");
            d.put(&s, "name", victim_id.as_str()).expect("put");
        });
        let env = f.sign(&mut c);
        if i % 2 == 0 {
            let mut e = SignedChange::decode(&env, usize::MAX).expect("decode");
            e.signature_mut().expect("signed")[0] ^= 1;
            out.push(e.encode());
        } else {
            out.push(env);
        }
    }
    out
}

/// A member answers every sync pull with forged changes, changes into another park's ledger
/// and an equivocating pair. The honest parks record each rejection with its reason and the
/// sender, keep the equivocation as evidence, ban the sender, and still converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_member_over_sync_is_rejected_penalised_and_cut_off() {
    let mut net = TestNet::new(3);
    net.start_node(0).await;
    net.start_node(1).await;
    net.converged(CONVERGE).await;
    let mut envelopes = forged(&net, 1, 2, 30);
    let (e1, e2) = equivocating_pair(&net, 2);
    envelopes.push(e1);
    envelopes.push(e2);
    let targets: Vec<_> = net
        .nodes
        .iter()
        .flatten()
        .flat_map(|n| n.p2p_addrs.clone())
        .collect();
    let hostile = HostilePeer::start(net.fed.parks[2].key().to_bytes(), targets, envelopes).await;
    let id = hostile.peer_id.to_string();
    for i in 0..2 {
        wait_until("the hostile member to be banned", CONVERGE, || async {
            net.node(i)
                .net
                .peers()
                .await
                .iter()
                .any(|p| p.peer_id == id && p.banned && p.rejected >= 20)
        })
        .await;
        let (rejected, evidence) = net
            .node(i)
            .replica
            .call(|r| (r.store().rejected(), r.store().evidence()))
            .await
            .expect("runs");
        let rejected = rejected.expect("rejected");
        for code in ["writes_another_park", "bad_signature"] {
            assert!(
                rejected.iter().any(|r| r.code == code && r.source == id),
                "park {i} records no {code} from the hostile member"
            );
        }
        // The fork may reach a park first from the other honest park, which gossips the
        // evidence as soon as it holds it.
        assert!(
            rejected.iter().any(|r| r.code == "equivocation"),
            "park {i} records no equivocation"
        );
        assert_eq!(
            evidence.expect("evidence").len(),
            1,
            "the fork is kept as evidence"
        );
    }
    assert!(
        hostile.stop().await >= 2,
        "both honest parks pulled from it"
    );
    let w = net.write(0, Sample::new(4).startup("KZ")).await;
    wait_until("an honest write to reach park 1", CONVERGE, || async {
        net.has_startup(1, &w).await
    })
    .await;
    net.converged(CONVERGE).await;
    net.shutdown().await;
}

/// One park holds both sides of a fork (the evidence), another only the first side. After the
/// partition heals, the evidence reaches the other park through anti-entropy, which takes back
/// its acceptance: the two end with the same digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equivocation_evidence_reaches_a_park_that_took_one_side() {
    let mut net = TestNet::new(3);
    net.start_node(0).await;
    net.start_node(1).await;
    net.converged(CONVERGE).await;
    let (e1, e2) = equivocating_pair(&net, 2);
    net.partition(&[0], &[1]).await;
    let ingest = |i: usize, envs: Vec<Vec<u8>>| {
        let node = net.node(i);
        async move {
            node.replica
                .call(move |r| r.ingest(envs, "test"))
                .await
                .expect("runs")
                .expect("ingest")
        }
    };
    ingest(1, vec![e1.clone(), e2]).await;
    ingest(0, vec![e1]).await;
    assert_ne!(net.digest(0).await, net.digest(1).await);
    net.heal().await;
    net.converged(CONVERGE).await;
    let evidence = net
        .node(0)
        .replica
        .call(|r| r.store().evidence().map(|e| e.len()))
        .await
        .expect("runs")
        .expect("evidence");
    assert_eq!(evidence, 1);
    net.shutdown().await;
}

/// A member whose sync answers are larger than the protocol allows: the honest parks stop
/// reading at the limit, take nothing from it, count each answer as an offence and ban it,
/// and go on converging with each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_sending_oversized_sync_answers_is_cut_off() {
    // Three times the largest answer the protocol allows.
    let answer = kervan_protocol::sync::Response::Changes {
        changes: vec![
            vec![0xA5; 512 << 10];
            3 * kervan_protocol::sync::MAX_RESPONSE_BYTES / (512 << 10)
        ],
        more: false,
        peers: Vec::new(),
    };
    a_member_answering_so_is_cut_off(answer).await;
}

/// A page within the byte limit but with more changes than a page may hold is refused whole
/// and gets its sender banned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_sending_too_many_changes_in_a_page_is_cut_off() {
    let answer = kervan_protocol::sync::Response::Changes {
        changes: vec![vec![0xA5; 16]; kervan_protocol::sync::MAX_PAGE_CHANGES + 1],
        more: false,
        peers: Vec::new(),
    };
    a_member_answering_so_is_cut_off(answer).await;
}

/// A page small on the wire whose packed changes inflate far past what an answer may hold (a
/// deflate bomb), and one whose packed bytes are no deflate stream at all: each is refused
/// whole at the limit, counted as an offence, and gets its sender banned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_sending_packed_pages_that_do_not_unpack_is_cut_off() {
    use std::io::Write as _;
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    // 64 MiB of zeros, 32 times what one answer may inflate to, in about 64 KB.
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        e.write_all(&zeros).expect("deflate");
    }
    let bomb = e.finish().expect("deflate");
    assert!(bomb.len() < kervan_protocol::sync::MAX_RESPONSE_BYTES);
    let uleb = |mut v: u64| {
        let mut out = Vec::new();
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
        out
    };
    // A head stream that says what it inflates to, and an empty lens stream.
    let streams = |raw: u64, head: &[u8]| {
        let mut p = vec![2];
        p.extend(uleb(raw));
        p.extend(uleb(head.len() as u64));
        p.extend([0, 0, 2, 0]);
        p.extend_from_slice(head);
        p.extend([3, 0]);
        p
    };
    for packed in [
        // Declared as what it is: refused before inflating.
        streams(64 << 20, &bomb),
        // Declared small: inflating stops past the declared size.
        streams(64, &bomb),
        streams(17, b"no deflate stream"),
    ] {
        let answer = PackedPage {
            prefix: b"park/kz-astana-hub".to_vec(),
            packed,
            sigs: vec![7; 64],
        };
        a_member_answering_raw_is_cut_off(answer).await;
    }
}

/// A member answers every pull with `answer`: both honest parks ban it without reading any of
/// it, and go on converging.
async fn a_member_answering_so_is_cut_off(answer: kervan_protocol::sync::Response) {
    a_member_answering_raw_is_cut_off(answer).await;
}

/// [`a_member_answering_so_is_cut_off`] for any answer written as CBOR.
async fn a_member_answering_raw_is_cut_off<R>(answer: R)
where
    R: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + std::fmt::Debug + 'static,
{
    let mut net = TestNet::new(3);
    net.start_node(0).await;
    net.start_node(1).await;
    net.converged(CONVERGE).await;
    let before = net.digest(0).await;
    let targets: Vec<_> = net
        .nodes
        .iter()
        .flatten()
        .flat_map(|n| n.p2p_addrs.clone())
        .collect();
    let hostile =
        HostilePeer::answering_raw(net.fed.parks[2].key().to_bytes(), targets, answer).await;
    let id = hostile.peer_id.to_string();
    for i in 0..2 {
        wait_until("the member to be banned", CONVERGE, || async {
            net.node(i)
                .net
                .peers()
                .await
                .iter()
                .any(|p| p.peer_id == id && p.banned)
        })
        .await;
        let rejected = net
            .node(i)
            .replica
            .call(|r| r.store().rejected())
            .await
            .expect("runs")
            .expect("rejected");
        assert!(
            rejected.iter().all(|r| r.source != id),
            "something of the oversized answer was read: {rejected:?}"
        );
        assert_eq!(net.digest(i).await, before, "the answer changed park {i}");
    }
    hostile.stop().await;
    let w = net.write(1, Sample::new(5).startup("UZ")).await;
    wait_until("an honest write to reach park 0", CONVERGE, || async {
        net.has_startup(0, &w).await
    })
    .await;
    net.shutdown().await;
}

/// A node whose ledger's saved document is damaged on disk does not start: its metadata and
/// the copy of its records are sound, so the index is built (and would answer queries), but
/// the document's load fails, and the start fails naming the store as damaged and the
/// document, with the API port it had opened closed again. After `repair` it starts with the
/// same registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_saved_document_is_damaged_does_not_start() {
    let mut net = TestNet::new(1);
    let park = net.fed.park(0);
    let mut sample = Sample::new(11);
    for _ in 0..10 {
        park.replica()
            .create(
                kervan_node::Collection::Startups,
                None,
                &sample.startup("KZ"),
            )
            .expect("write");
    }
    park.replica().snapshot_all().expect("snapshot");
    let view = park.view();
    let ledger: DocId = format!("park/{}", park.id).parse().expect("doc id");
    let store = park.replica().store();
    let mut bytes = store
        .snapshot(&ledger)
        .expect("read")
        .expect("the ledger has a snapshot");
    let meta_len = u64::from_be_bytes(bytes[..8].try_into().expect("header")) as usize;
    let start = 8 + meta_len + 16;
    bytes[start..start + 64].fill(0xA5);
    store.put_snapshot(&ledger, &bytes).expect("write");
    store.flush().expect("flush");
    park.close();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let api: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let o = Overrides {
        api: Some(api),
        listen: Some(vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")]),
        bootstrap: Some(Vec::new()),
        sync_interval: Some(Duration::from_millis(200)),
    };
    let dir = park.dir.clone();
    match node::start(&dir, dir.config().expect("config"), o).await {
        Err(node::NodeError::DataDir(kervan_node::data_dir::DataDirError::Damaged {
            why, ..
        })) => assert!(
            why.contains(&format!("snapshot of {ledger} is corrupt")),
            "{why}"
        ),
        Err(other) => panic!("not reported as damaged: {other}"),
        Ok(_) => panic!("the node started on a damaged document"),
    }
    std::net::TcpListener::bind(api).expect("the failed start closed its API port");

    assert!(dir.repair(false).expect("repair").needed);
    net.start_node(0).await;
    let answered = net
        .node(0)
        .replica
        .call(|r| kervan_tests::view(r))
        .await
        .expect("runs");
    assert_eq!(answered, view, "repaired");
    net.stop(0).await;
}

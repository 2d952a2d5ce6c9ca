//! A flood: a member publishes at least 10,000 invalid gossip messages a second for 30 s at a
//! park whose node runs in a child process, under a memory cap. The park records the
//! rejections with their reasons, bans and disconnects the attacker, keeps its peak RSS under
//! the cap, and keeps taking honest changes: the latency of an honest write reaching it is
//! measured without the flood and during it.

use std::time::{Duration, Instant};

use kervan_node::sample::Sample;
use kervan_tests::hostile;
use kervan_tests::testnet::{TestNet, wait_until};
use libp2p::Multiaddr;

use crate::child::{ChildNode, agent};

/// Flood rate asked of the attacker, the rate it must reach, and the flood's length.
const RATE: u64 = 12_000;
const MIN_RATE: f64 = 10_000.0;
const FLOOD: Duration = Duration::from_secs(30);
/// The memory cap of the victim's process (a cgroup where the system offers one, and the
/// bound its peak RSS is held to in any case).
const CAP_BYTES: u64 = 256 << 20;
/// Honest writes timed before and during the flood.
const SAMPLES: usize = 20;

/// A memory cgroup (v1) holding the victim, removed when dropped.
struct MemCap {
    dir: std::path::PathBuf,
}

impl MemCap {
    fn new(pid: u32) -> Option<Self> {
        let dir = std::path::PathBuf::from(format!(
            "/sys/fs/cgroup/memory/kervan-flood-{}",
            std::process::id()
        ));
        std::fs::create_dir(&dir).ok()?;
        let cap = Self { dir };
        std::fs::write(cap.dir.join("memory.limit_in_bytes"), CAP_BYTES.to_string()).ok()?;
        // Charge what the process already holds to the group too.
        let _ = std::fs::write(cap.dir.join("memory.move_charge_at_immigrate"), "3");
        std::fs::write(cap.dir.join("cgroup.procs"), pid.to_string()).ok()?;
        Some(cap)
    }

    fn read(&self, file: &str) -> u64 {
        std::fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemCap {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Peak resident set of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Writes at in-process park 1 and waits until the victim's API answers the record.
async fn time_one(net: &TestNet, victim: &ChildNode, sample: &mut Sample) -> Duration {
    let id = net.write(1, sample.startup("UZ")).await;
    let start = Instant::now();
    let url = {
        let api = victim.api.lock().expect("lock").clone().expect("runs");
        (format!("{}/v1/startups/{id}", api.base), api.token)
    };
    let agent = victim.agent.clone();
    // Polled every millisecond, on a blocking thread, for at most a minute.
    tokio::task::spawn_blocking(move || {
        let deadline = start + Duration::from_secs(60);
        loop {
            let found = agent
                .get(&url.0)
                .header("Authorization", format!("Bearer {}", url.1))
                .call()
                .is_ok_and(|r| r.status() == 200);
            if found {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "an honest write did not reach the victim in 60 s"
            );
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(1));
        }
    })
    .await
    .expect("polled");
    start.elapsed()
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_invalid_gossip_is_cut_off_with_bounded_memory_and_honest_latency() {
    let mut net = TestNet::new(4);
    net.start_node(1).await;
    net.start_node(2).await;
    let park = &mut net.fed.parks[0];
    park.close();
    let peer = kervan_node::net::peer_id_of(&park.device()).expect("peer id");
    let mut victim = ChildNode {
        dir: park.dir.root().to_path_buf(),
        peer,
        process: None,
        api: Default::default(),
        agent: agent(),
    };
    let boot: Vec<Multiaddr> = (1..3).flat_map(|i| net.node(i).p2p_addrs.clone()).collect();
    tokio::task::block_in_place(|| victim.start(&boot));
    let pid = victim.process.as_ref().expect("runs").id();
    let cap = MemCap::new(pid);
    net.extra_bootstrap = victim.p2p_addrs();

    let mut sample = Sample::new(3);
    let mut quiet = Vec::new();
    for _ in 0..SAMPLES {
        quiet.push(time_one(&net, &victim, &mut sample).await);
    }
    let rss_before = peak_rss(pid);

    // The attacker: park 3's own device key, a genuine change to forge from.
    let secret = net.fed.parks[3].key().to_bytes();
    let genuine = net
        .node(1)
        .replica
        .call(|r| r.export(None).map(|b| b.encode()))
        .await
        .expect("replica runs")
        .expect("export");
    let genuine = kervan_tests::entries(&genuine)
        .pop()
        .expect("a genuine envelope");
    let flood = tokio::spawn(hostile::flood(
        secret,
        victim.p2p_addrs(),
        net.fed.id,
        genuine,
        RATE,
        FLOOD,
    ));
    let mut loud = Vec::new();
    let started = Instant::now();
    while loud.len() < SAMPLES && started.elapsed() < FLOOD {
        loud.push(time_one(&net, &victim, &mut sample).await);
        tokio::time::sleep(FLOOD / (SAMPLES as u32 + 2)).await;
    }
    let report = flood.await.expect("the flood ran");
    let rss = peak_rss(pid);

    // The victim is alive, banned the attacker, recorded the rejections with their reasons.
    let attacker = kervan_node::net::peer_id_of(&net.fed.parks[3].device())
        .expect("peer id")
        .to_string();
    let (status, rejected) = tokio::task::block_in_place(|| {
        (victim.get("/v1/status"), victim.get("/v1/audit/rejected"))
    });
    let banned = status["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["peer_id"] == attacker.as_str() && p["banned"] == true);
    assert!(banned, "the attacker is not banned: {}", status["peers"]);
    let items = rejected["items"].as_array().cloned().unwrap_or_default();
    assert!(!items.is_empty(), "no rejection recorded");
    assert!(
        items
            .iter()
            .all(|r| r["code"].is_string() && !r["reason"].as_str().unwrap_or_default().is_empty()),
        "a rejection without its reason"
    );
    // Honest parks converge, the victim with them.
    wait_until(
        "the honest parks to converge",
        Duration::from_secs(60),
        || {
            let net = &net;
            let victim = &victim;
            async move {
                let d1 = net.digest(1).await.to_string();
                let d2 = net.digest(2).await.to_string();
                let v = tokio::task::block_in_place(|| victim.digest());
                d1 == d2 && d2 == v
            }
        },
    )
    .await;

    let rate = report.attempted as f64 / report.seconds;
    let (q50, q99) = (percentile(quiet.clone(), 0.5), percentile(quiet, 0.99));
    let (l50, l99) = (
        percentile(loud.clone(), 0.5),
        percentile(loud.clone(), 0.99),
    );
    println!(
        "flood: {} invalid messages in {:.1} s ({rate:.0}/s), {} taken by the attacker's \
         gossipsub while connected, {} redials refused; victim banned it and recorded {} \
         rejections; victim peak RSS {} MiB before, {} MiB after (cap {} MiB{}); honest \
         write -> victim: p50 {q50:?} quiet, {l50:?} flood (x{:.2}); p99 {q99:?} quiet, \
         {l99:?} flood (x{:.2}); {} samples in the flood",
        report.attempted,
        report.seconds,
        report.published,
        report.redials,
        items.len(),
        rss_before >> 20,
        rss >> 20,
        CAP_BYTES >> 20,
        cap.as_ref().map_or_else(
            || ", not enforced: no memory cgroup here".to_owned(),
            |c| format!(
                ", enforced by a cgroup: {} allocations refused",
                c.read("memory.failcnt")
            )
        ),
        l50.as_secs_f64() / q50.as_secs_f64(),
        l99.as_secs_f64() / q99.as_secs_f64(),
        loud.len(),
    );
    assert!(
        rate >= MIN_RATE,
        "the flood ran at {rate:.0} messages/s, below {MIN_RATE}"
    );
    assert!(report.seconds >= FLOOD.as_secs_f64());
    assert!(rss <= CAP_BYTES, "peak RSS {} MiB over the cap", rss >> 20);
    assert!(loud.len() >= SAMPLES / 2, "too few honest writes timed");
    victim.kill9();
    drop(cap);
    net.shutdown().await;
}

//! Seeded chaos: six parks — five nodes in this process and one `kervan-testnode` child process
//! — under random writes at every park, random partitions and heals, clean restarts, SIGKILLs
//! of the child in the middle of its stream of API writes, and changes delivered again,
//! duplicated and out of order. One seed drives the schedule of faults. After the final heal:
//! equal digests everywhere, every acknowledged write present everywhere, no change of an honest
//! park rejected anywhere and no equivocation evidence.
//!
//! A failing seed is printed with the command that replays its schedule
//! (`KERVAN_CHAOS_SEED=<seed>`); `scripts/chaos.sh` runs any number of seeds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kervan_node::Store as _;
use kervan_node::net::peer_id_of;
use kervan_node::sample::Sample;
use kervan_protocol::{Bundle, DeviceKey, RecordId, SignedChange};
use kervan_tests::testnet::{TestNet, wait_until};
use libp2p::{Multiaddr, PeerId};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde_json::Value;

use crate::child::{Api, ChildNode, agent};

const PARKS: usize = 6;
/// The park whose node runs in a child process, the one killed with SIGKILL.
const CHILD: usize = 5;
const CONVERGE: Duration = Duration::from_secs(120);

/// The seeds one run covers: `KERVAN_CHAOS_SEED` replays one; otherwise
/// `KERVAN_CHAOS_SEEDS` (default 6) seeds from `KERVAN_CHAOS_BASE` (default 1) up, as many as
/// fit in `KERVAN_CHAOS_BUDGET_SECS` (default 240 s; the first seed always runs).
struct Plan {
    seeds: Vec<u64>,
    budget: Duration,
    steps: usize,
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn plan() -> Plan {
    let steps = env("KERVAN_CHAOS_STEPS").unwrap_or(60);
    if let Some(seed) = env("KERVAN_CHAOS_SEED") {
        return Plan {
            seeds: vec![seed],
            budget: Duration::MAX,
            steps,
        };
    }
    let base: u64 = env("KERVAN_CHAOS_BASE").unwrap_or(1);
    let count: u64 = env("KERVAN_CHAOS_SEEDS").unwrap_or(6);
    Plan {
        seeds: (base..base + count).collect(),
        budget: Duration::from_secs(env("KERVAN_CHAOS_BUDGET_SECS").unwrap_or(240)),
        steps,
    }
}

/// Writes to the child over its API for as long as `stop` is unset (at most ten minutes),
/// through kills and restarts; every write answered 201 is acknowledged.
#[allow(clippy::disallowed_methods)]
fn child_writer(
    api: Arc<Mutex<Option<Api>>>,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    seed: u64,
) {
    let agent = agent();
    let mut sample = Sample::new(seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let deadline = Instant::now() + Duration::from_secs(600);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let current = api.lock().expect("lock").clone();
        let Some(api) = current else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let sent = agent
            .post(format!("{}/v1/startups", api.base))
            .header("Authorization", format!("Bearer {}", api.token))
            .send_json(sample.startup("AZ"));
        if let Ok(mut r) = sent
            && r.status() == 201
        {
            let v: Value = r.body_mut().read_json().expect("JSON");
            acked
                .lock()
                .expect("lock")
                .push(v["id"].as_str().expect("id").to_owned());
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(10..120)));
    }
}

/// What the schedule did, for the printout.
#[derive(Debug, Default)]
struct Tally {
    writes: usize,
    partitions: usize,
    heals: usize,
    restarts: usize,
    kills: usize,
    redelivered: usize,
}

/// The chaos run of one seed.
struct Chaos {
    seed: u64,
    rng: StdRng,
    net: TestNet,
    child: ChildNode,
    /// The current partition, as the side of each park; `None` when healed.
    sides: Option<[bool; PARKS]>,
    acked: Vec<RecordId>,
    tally: Tally,
}

impl Chaos {
    async fn start(seed: u64) -> Self {
        let mut net = TestNet::new(PARKS);
        for i in 0..CHILD {
            net.start_node(i).await;
        }
        let park = &mut net.fed.parks[CHILD];
        park.close();
        let peer = peer_id_of(&DeviceKey(park.key().verifying_key().to_bytes())).expect("peer");
        let mut child = ChildNode {
            dir: park.dir.root().to_path_buf(),
            peer,
            process: None,
            api: Arc::default(),
            agent: agent(),
        };
        let boot: Vec<Multiaddr> = (0..CHILD)
            .flat_map(|i| net.node(i).p2p_addrs.clone())
            .collect();
        tokio::task::block_in_place(|| child.start(&boot));
        net.extra_bootstrap = child.p2p_addrs();
        Self {
            seed,
            rng: StdRng::seed_from_u64(seed),
            net,
            child,
            sides: None,
            acked: Vec::new(),
            tally: Tally::default(),
        }
    }

    fn peer(&self, i: usize) -> Option<PeerId> {
        if i == CHILD {
            return Some(self.child.peer);
        }
        self.net.nodes[i].as_ref().map(|n| n.peer_id)
    }

    /// Makes in-process node `i` refuse every park on the other side of the partition (the
    /// child is cut off by its peers refusing it).
    async fn apply_partition(&self, i: usize) {
        let Some(sides) = self.sides else { return };
        let others: Vec<PeerId> = (0..PARKS)
            .filter(|j| sides[*j] != sides[i])
            .filter_map(|j| self.peer(j))
            .collect();
        self.net.node(i).net.block(others).await;
    }

    async fn partition(&mut self) {
        self.net.heal().await;
        let mut sides = [false; PARKS];
        loop {
            for s in &mut sides {
                *s = self.rng.random_bool(0.5);
            }
            if sides.iter().any(|s| *s) && sides.iter().any(|s| !*s) {
                break;
            }
        }
        self.sides = Some(sides);
        for i in 0..CHILD {
            if self.net.nodes[i].is_some() {
                self.apply_partition(i).await;
            }
        }
        self.tally.partitions += 1;
    }

    async fn heal(&mut self) {
        self.sides = None;
        self.net.heal().await;
        self.tally.heals += 1;
    }

    async fn write(&mut self, n: usize) {
        let running: Vec<usize> = (0..CHILD)
            .filter(|i| self.net.nodes[*i].is_some())
            .collect();
        let Some(&i) = running.get(self.rng.random_range(0..running.len().max(1))) else {
            return;
        };
        let mut sample = Sample::new(self.rng.random());
        let country = self.net.fed.parks[i].country.clone();
        for _ in 0..n {
            self.acked
                .push(self.net.write(i, sample.startup(&country)).await);
            self.tally.writes += 1;
        }
    }

    /// Stops an in-process node cleanly; starts it again now or after later steps.
    async fn restart(&mut self) {
        let i = self.rng.random_range(0..CHILD);
        if self.net.nodes[i].is_some() {
            self.net.stop(i).await;
            if self.rng.random_bool(0.5) {
                // Stays down for a while: a later restart or the final heal starts it.
                self.tally.restarts += 1;
                return;
            }
        }
        self.net.start_node(i).await;
        self.apply_partition(i).await;
        self.tally.restarts += 1;
    }

    /// SIGKILL of the child at whatever moment its writer is at, then a start from its data
    /// directory.
    async fn kill_child(&mut self) {
        let boot: Vec<Multiaddr> = (0..CHILD)
            .filter_map(|i| self.net.nodes[i].as_ref())
            .flat_map(|n| n.p2p_addrs.clone())
            .collect();
        tokio::task::block_in_place(|| {
            self.child.kill9();
            self.child.start(&boot);
        });
        self.net.extra_bootstrap = self.child.p2p_addrs();
        self.tally.kills += 1;
    }

    /// Takes a random sample of what one park holds and delivers it to another again,
    /// shuffled and with duplicates, as a network that duplicates and reorders would.
    async fn redeliver(&mut self) {
        let running: Vec<usize> = (0..CHILD)
            .filter(|i| self.net.nodes[*i].is_some())
            .collect();
        if running.is_empty() {
            return;
        }
        let from = running[self.rng.random_range(0..running.len())];
        let bundle = self
            .net
            .node(from)
            .replica
            .call(|r| r.export(None).map(|b| b.encode()))
            .await
            .expect("replica runs")
            .expect("export");
        let all = Bundle::decode(&bundle, usize::MAX, usize::MAX)
            .expect("bundle")
            .entries;
        let mut picked: Vec<Vec<u8>> = all
            .iter()
            .filter(|_| self.rng.random_bool(0.3))
            .cloned()
            .collect();
        let dups: Vec<Vec<u8>> = picked
            .iter()
            .filter(|_| self.rng.random_bool(0.3))
            .cloned()
            .collect();
        picked.extend(dups);
        picked.shuffle(&mut self.rng);
        let to = self.rng.random_range(0..PARKS);
        self.tally.redelivered += picked.len();
        if to == CHILD {
            if !self.child.running() {
                return;
            }
            let changes: Vec<SignedChange> = picked
                .iter()
                .map(|e| SignedChange::decode(e, usize::MAX).expect("envelope"))
                .collect();
            let bundle = Bundle::new(self.net.fed.id, &changes).encode();
            tokio::task::block_in_place(|| self.child.deliver(&bundle));
        } else if self.net.nodes[to].is_some() {
            let vouched: Vec<bool> = picked
                .iter()
                .map(|e| kervan_protocol::envelope::is_vouched(e))
                .collect();
            let reports = self
                .net
                .node(to)
                .replica
                .call(move |r| r.ingest(picked, "redelivery"))
                .await
                .expect("replica runs")
                .expect("ingest");
            // A change the sender holds as vouched proves nothing without its voucher and the
            // changes between, which a sample may leave out: it is refused `unvouched`, and
            // nothing of it is kept or remembered. Any other refusal is a fault.
            for (r, vouched) in reports.iter().zip(vouched) {
                if let kervan_node::Outcome::Rejected { code, .. } = &r.outcome {
                    assert!(
                        vouched && code == "unvouched",
                        "seed {}: a redelivered honest change was rejected: {r:?}",
                        self.seed
                    );
                }
            }
        }
    }

    async fn step(&mut self) {
        match self.rng.random_range(0..100) {
            0..35 => {
                let n = self.rng.random_range(1..9);
                self.write(n).await;
            }
            35..50 => self.partition().await,
            50..60 => self.heal().await,
            60..70 => self.restart().await,
            70..82 => self.kill_child().await,
            82..94 => self.redeliver().await,
            _ => {
                let ms = self.rng.random_range(200..1000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
        // Time for gossip and anti-entropy to act between faults, or not.
        let ms = self.rng.random_range(0..400);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Heals everything, starts every node, and checks the invariants.
    async fn finish(mut self, child_acked: Vec<String>) {
        let seed = self.seed;
        self.sides = None;
        self.net.heal().await;
        for i in 0..CHILD {
            if self.net.nodes[i].is_none() {
                self.net.start_node(i).await;
            }
        }
        let took = {
            let start = Instant::now();
            wait_until(
                &format!("seed {seed}: equal digests at all six parks"),
                CONVERGE,
                || {
                    let net = &self.net;
                    let child = &self.child;
                    async move {
                        let d = net.digests().await;
                        let c = tokio::task::block_in_place(|| child.digest());
                        d.windows(2).all(|w| w[0] == w[1])
                            && d.first().is_some_and(|h| h.to_string() == c)
                    }
                },
            )
            .await;
            start.elapsed()
        };
        // Every acknowledged write, in-process or through the child's API, everywhere.
        let mut all: Vec<RecordId> = self.acked.clone();
        for id in &child_acked {
            all.push(id.parse().expect("record id"));
        }
        for i in 0..CHILD {
            for id in &all {
                assert!(
                    self.net.has_startup(i, id).await,
                    "seed {seed}: acknowledged {id} missing at park {i}"
                );
            }
        }
        let ids: Vec<String> = all.iter().map(ToString::to_string).collect();
        let c = &self.child;
        let (missing, rejected, evidence) = tokio::task::block_in_place(|| {
            let missing: Vec<String> = ids
                .iter()
                .filter(|id| {
                    let api = c.api.lock().expect("lock").clone().expect("runs");
                    c.agent
                        .get(format!("{}/v1/startups/{id}", api.base))
                        .header("Authorization", format!("Bearer {}", api.token))
                        .call()
                        .map_or(true, |r| r.status() != 200)
                })
                .cloned()
                .collect();
            let rejected = c.get("/v1/audit/rejected")["items"].clone();
            let evidence = c.get("/v1/audit/verify")["evidence"].clone();
            (missing, rejected, evidence)
        });
        assert!(
            missing.is_empty(),
            "seed {seed}: acknowledged writes missing at the child: {missing:?}"
        );
        assert_eq!(
            rejected.as_array().map(Vec::len),
            Some(0),
            "seed {seed}: the child rejected honest changes: {rejected}"
        );
        assert_eq!(evidence, 0, "seed {seed}: evidence of a fork at the child");
        for i in 0..CHILD {
            let (rejected, evidence) = self
                .net
                .node(i)
                .replica
                .call(|r| (r.store().rejected(), r.store().evidence()))
                .await
                .expect("replica runs");
            let rejected = rejected.expect("rejections");
            assert!(
                rejected.is_empty(),
                "seed {seed}: park {i} rejected honest changes: {rejected:?}"
            );
            assert!(
                evidence.expect("evidence").is_empty(),
                "seed {seed}: evidence of a fork at park {i}"
            );
        }
        println!(
            "chaos seed {seed}: {:?}, {} writes through the child's API acknowledged; \
             six parks converged {took:?} after the final heal with {} records",
            self.tally,
            child_acked.len(),
            all.len()
        );
        self.child.kill9();
        self.net.shutdown().await;
    }
}

async fn run_seed(seed: u64, steps: usize) {
    println!(
        "chaos seed {seed}: replay with KERVAN_CHAOS_SEED={seed} cargo test -p kervan-tests \
         --test scenarios chaos -- --nocapture"
    );
    let mut chaos = Chaos::start(seed).await;
    let stop = Arc::new(AtomicBool::new(false));
    let child_acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let writer = {
        let (api, stop, acked) = (chaos.child.api.clone(), stop.clone(), child_acked.clone());
        std::thread::spawn(move || child_writer(api, stop, acked, seed))
    };
    for _ in 0..steps {
        chaos.step().await;
    }
    stop.store(true, Ordering::SeqCst);
    tokio::task::block_in_place(|| writer.join()).expect("the writer ran");
    let child_acked = child_acked.lock().expect("lock").clone();
    chaos.finish(child_acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_parks_converge_and_lose_nothing_under_seeded_chaos() {
    let plan = plan();
    let started = Instant::now();
    let mut ran = Vec::new();
    for seed in plan.seeds {
        if !ran.is_empty() && started.elapsed() > plan.budget {
            break;
        }
        run_seed(seed, plan.steps).await;
        ran.push(seed);
    }
    println!(
        "chaos: seeds {ran:?} passed ({} steps each) in {:?}",
        plan.steps,
        started.elapsed()
    );
}

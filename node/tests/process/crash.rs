//! Crash test: a node in a child process is killed with SIGKILL at random moments during a
//! stream of API writes, again and again. After every restart each acknowledged write is
//! there, the store opens and verifies, and a second park that received everything the node
//! published never saw two different changes with the same seq.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kervan_node::sample::Sample;

use crate::harness::{Node, setup, wait_until};

/// Kill cycles per run; `KERVAN_CRASH_CYCLES` raises it for a longer run by hand.
fn cycles() -> usize {
    std::env::var("KERVAN_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

/// The seed of the kill moments; a failing run prints it, `KERVAN_CRASH_SEED` replays it.
fn seed() -> u64 {
    std::env::var("KERVAN_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random)
}

/// Every startup id the node lists, page by page.
fn all_ids(node: &Node) -> std::collections::HashSet<String> {
    let mut ids = std::collections::HashSet::new();
    let mut cursor = String::new();
    for _ in 0..1000 {
        let (st, page) = node.call("GET", &format!("/v1/startups?limit=500{cursor}"), None);
        assert_eq!(st, 200);
        for s in page["items"].as_array().into_iter().flatten() {
            ids.insert(s["id"].as_str().unwrap_or_default().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return ids,
        }
    }
    panic!("more than 1000 pages");
}

#[test]
fn acknowledged_writes_survive_sigkill_at_random_moments() {
    let seed = seed();
    println!("crash test seed {seed} (replay with KERVAN_CRASH_SEED={seed})");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let s = setup();
    // Uzbekistan's node listens and receives everything Astana Hub publishes.
    let watcher = Node::start(s.tashkent.root());
    let boot = watcher.p2p_addrs();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let total = cycles();
    for cycle in 0..total {
        let mut node = Node::start_with(&s.astana, &boot);
        let present = all_ids(&node);
        for id in acked.lock().expect("lock").iter() {
            assert!(
                present.contains(id),
                "seed {seed}, cycle {cycle}: acknowledged {id} lost"
            );
        }
        let (st, verify) = node.call("GET", "/v1/audit/verify", None);
        assert_eq!(st, 200);
        assert_eq!(
            verify["failed"].as_array().map(Vec::len),
            Some(0),
            "seed {seed}"
        );
        assert_eq!(
            verify["evidence"], 0,
            "seed {seed}, cycle {cycle}: the node equivocated"
        );
        // Write until the kill lands at a random moment, 5 to 250 ms in.
        let kill_at =
            Instant::now() + Duration::from_millis(rand::RngExt::random_range(&mut rng, 5..250));
        let mut sample = Sample::new(seed ^ cycle as u64);
        while Instant::now() < kill_at {
            let (st, v) = node.call("POST", "/v1/startups", Some(&sample.startup("KZ")));
            if st == 201 {
                acked
                    .lock()
                    .expect("lock")
                    .push(v["id"].as_str().expect("id").to_owned());
            }
        }
        node.kill9();
    }
    // A last start: every acknowledged write is there, and the watcher converges with it
    // without ever having seen a fork.
    let node = Node::start_with(&s.astana, &boot);
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= total,
        "seed {seed}: too few writes to mean anything"
    );
    let present = all_ids(&node);
    for id in &acked {
        assert!(present.contains(id), "seed {seed}: acknowledged {id} lost");
    }
    wait_until("the watcher to converge", Duration::from_secs(60), || {
        watcher.digest() == node.digest()
    });
    let (_, verify) = watcher.call("GET", "/v1/audit/verify", None);
    assert_eq!(
        verify["evidence"], 0,
        "seed {seed}: two changes with one seq were published"
    );
    println!(
        "crash test: {total} SIGKILL cycles, {} acknowledged writes, all present",
        acked.len()
    );
}

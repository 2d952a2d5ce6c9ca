//! Corruption: a store whose files were truncated or scribbled on is refused at start with an
//! error that says so and names `kervan repair`; `kervan repair` keeps the damaged store aside,
//! rebuilds from the signed changes it can still read, and the node gets the rest back from
//! its peer. Nothing acknowledged is lost, and the device never reuses a seq it published.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kervan_node::sample::Sample;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::harness::{KERVAN, Node, setup, wait_until};

/// The largest file of a sled store: its log, where the data lives.
fn largest_file(store: &Path) -> std::path::PathBuf {
    let mut files: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(store)
        .expect("store dir")
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| (e.metadata().map_or(0, |m| m.len()), e.path()))
        .collect();
    files.sort();
    files.pop().expect("a file in the store").1
}

/// Runs `kervan run` on a damaged store: it must exit on its own, non-zero, with a clear error.
#[allow(clippy::disallowed_methods)]
fn start_refuses(dir: &Path) -> String {
    let mut child = Command::new(KERVAN)
        .arg("--data-dir")
        .arg(dir)
        .args([
            "run",
            "--api",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kervan run starts");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the node started on a damaged store instead of refusing it");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    assert!(!status.success(), "exit status {status} on a damaged store");
    err
}

fn damaged_store_is_refused_then_repaired(damage: impl FnOnce(&Path)) {
    let s = setup();
    let peer = Node::start(s.tashkent.root());
    let boot = peer.p2p_addrs();
    let mut node = Node::start_with(&s.astana, &boot);
    let mut sample = Sample::new(11);
    let mut ids = Vec::new();
    for _ in 0..40 {
        let (st, v) = node.call("POST", "/v1/startups", Some(&sample.startup("KZ")));
        assert_eq!(st, 201, "{v}");
        ids.push(v["id"].as_str().expect("id").to_owned());
    }
    wait_until(
        "the peer to hold every write",
        Duration::from_secs(60),
        || peer.digest() == node.digest(),
    );
    node.kill9();

    damage(&s.astana.join("store"));

    let err = start_refuses(&s.astana);
    assert!(
        err.contains("is damaged") && err.contains("kervan repair"),
        "the error does not say what happened and what to do: {err}"
    );

    println!("kervan run refused the store: {}", err.trim());
    let repaired = node.cli(&["repair"]);
    let out = String::from_utf8_lossy(&repaired.stdout);
    assert!(
        repaired.status.success(),
        "repair failed: {out}{}",
        String::from_utf8_lossy(&repaired.stderr)
    );
    assert!(out.contains("rebuilt the store"), "{out}");
    let aside = std::fs::read_dir(&s.astana)
        .expect("data dir")
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("store.damaged-")
        });
    assert!(aside, "the damaged store was not kept aside");

    // The repaired node catches up with its peer: every acknowledged write is back.
    let node = Node::start_with(&s.astana, &boot);
    wait_until(
        "the repaired node to catch up with its peer",
        Duration::from_secs(60),
        || peer.digest() == node.digest(),
    );
    for id in &ids {
        let (st, _) = node.call("GET", &format!("/v1/startups/{id}"), None);
        assert_eq!(st, 200, "acknowledged {id} lost in the repair");
    }
    // It writes again under a new epoch: the peer takes the write and sees no fork.
    let (st, v) = node.call("POST", "/v1/startups", Some(&sample.startup("KZ")));
    assert_eq!(st, 201, "{v}");
    wait_until(
        "the peer to take the new write",
        Duration::from_secs(60),
        || peer.digest() == node.digest(),
    );
    let (_, verify) = peer.call("GET", "/v1/audit/verify", None);
    assert_eq!(verify["evidence"], 0, "the repaired node reused a seq");
    let (_, rejected) = peer.call("GET", "/v1/audit/rejected", None);
    assert_eq!(rejected["items"].as_array().map(Vec::len), Some(0));
    println!("{out}");
}

#[test]
fn a_truncated_store_is_refused_and_repaired_from_its_changes_and_its_peer() {
    damaged_store_is_refused_then_repaired(|store| {
        // sled's log is preallocated in 512 KiB segments: cut it inside the written part, as a
        // copy that stopped short would.
        std::fs::OpenOptions::new()
            .write(true)
            .open(largest_file(store))
            .expect("open")
            .set_len(16 << 10)
            .expect("truncate");
    });
}

#[test]
fn a_scribbled_store_is_refused_and_repaired_from_its_changes_and_its_peer() {
    damaged_store_is_refused_then_repaired(|store| {
        let file = largest_file(store);
        let len = std::fs::metadata(&file).expect("metadata").len();
        let mut rng = StdRng::seed_from_u64(5);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .expect("open");
        for _ in 0..8 {
            let at = rng.random_range(0..len.saturating_sub(512).max(1));
            let junk: Vec<u8> = (0..512).map(|_| rng.random()).collect();
            f.seek(SeekFrom::Start(at)).expect("seek");
            f.write_all(&junk).expect("scribble");
        }
        f.sync_all().expect("sync");
    });
}

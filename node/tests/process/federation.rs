//! Three parks as three `kervan run` processes, set up exactly as the README's "Running a
//! federation" does it, and a node killed with SIGKILL in the middle of a stream of writes.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kervan_node::sample::Sample;

use crate::harness::{KERVAN, Node, wait_until};

/// Runs the `kervan` CLI in `dir` and fails the test with its stderr if it fails.
fn kervan(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(KERVAN)
        .current_dir(dir)
        .args(args)
        .output()
        .expect("kervan runs");
    assert!(
        out.status.success(),
        "kervan {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The README's steps: three parks init, one genesis from their cards, all join.
fn three_parks(dir: &Path) {
    for (data, park, name, country, city) in [
        ("astana", "kz-astana-hub", "Astana Hub", "KZ", "Astana"),
        (
            "tashkent",
            "uz-it-park",
            "IT Park Uzbekistan",
            "UZ",
            "Tashkent",
        ),
        ("bishkek", "kg-htp", "High Technology Park", "KG", "Bishkek"),
    ] {
        let card = kervan(
            dir,
            &[
                "--data-dir",
                data,
                "init",
                "--park",
                park,
                "--name",
                name,
                "--country",
                country,
                "--city",
                city,
            ],
        );
        std::fs::write(dir.join(format!("{data}.json")), card).expect("write card");
    }
    kervan(
        dir,
        &[
            "genesis",
            "--name",
            "OTS Technopark Federation",
            "--card",
            "astana.json",
            "--card",
            "tashkent.json",
            "--card",
            "bishkek.json",
            "--out",
            "genesis.kvn",
        ],
    );
    for data in ["astana", "tashkent", "bishkek"] {
        kervan(
            dir,
            &["--data-dir", data, "join", "--genesis", "genesis.kvn"],
        );
    }
}

/// Writes at Tashkent reach Astana and Bishkek over the network. Bishkek is killed with
/// SIGKILL while Astana keeps writing; restarted, it catches up with every acknowledged write
/// and the three digests are equal.
#[test]
fn three_processes_converge_and_a_killed_node_catches_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    three_parks(tmp.path());
    let astana = Node::start(&tmp.path().join("astana"));
    let boot = astana.p2p_addrs();
    let tashkent = Node::start_with(&tmp.path().join("tashkent"), &boot);
    let mut bishkek = Node::start_with(&tmp.path().join("bishkek"), &boot);

    let mut sample = Sample::new(21);
    let (st, created) = tashkent.call("POST", "/v1/startups", Some(&sample.startup("UZ")));
    assert_eq!(st, 201);
    let path = format!("/v1/startups/{}", created["id"].as_str().expect("id"));
    for node in [&astana, &bishkek] {
        wait_until(
            "the write to cross the network",
            Duration::from_secs(30),
            || node.call("GET", &path, None).0 == 200,
        );
    }

    let mut acked = Vec::new();
    for i in 0..30 {
        if i == 10 {
            bishkek.kill9();
        }
        let (st, v) = astana.call("POST", "/v1/startups", Some(&sample.startup("KZ")));
        assert_eq!(st, 201);
        acked.push(v["id"].as_str().expect("id").to_owned());
    }
    let bishkek = Node::start_with(&tmp.path().join("bishkek"), &boot);
    wait_until(
        "the three digests to be equal",
        Duration::from_secs(60),
        || {
            let d = astana.digest();
            tashkent.digest() == d && bishkek.digest() == d
        },
    );
    for id in &acked {
        for node in [&tashkent, &bishkek] {
            assert_eq!(
                node.call("GET", &format!("/v1/startups/{id}"), None).0,
                200,
                "{id}"
            );
        }
    }
}

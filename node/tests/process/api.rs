//! HTTP-level tests against a real `kervan run` process on a random loopback port, with a
//! temporary data directory: the contract of DESIGN §8, durability under `kill -9`, paging,
//! and the CLI's `--json` output.

use std::process::Command;

use kervan_node::Collection;
use kervan_node::sample::Sample;
use serde_json::{Value, json};

use crate::harness::{KERVAN, Node, error_code, error_fields, setup, startup};

/// Every route of the table in DESIGN §8 answers its success path.
#[test]
fn every_route_answers_its_success_path() {
    let s = setup();
    let node = Node::start(&s.astana);

    let (st, v) = node.call_with("GET", "/v1/health", None, None);
    assert_eq!((st, v["status"].as_str()), (200, Some("ok")));
    let (st, status) = node.call("GET", "/v1/status", None);
    assert_eq!(st, 200);
    assert_eq!(status["park"], "kz-astana-hub");
    assert!(
        status["peer_id"]
            .as_str()
            .is_some_and(|p| p.starts_with("12D3KooW"))
    );
    for key in ["device", "federation", "digest", "counts", "peers"] {
        assert!(!status[key].is_null(), "status has {key}");
    }
    let (st, parks) = node.call("GET", "/v1/parks", None);
    assert_eq!(st, 200);
    assert_eq!(parks["items"].as_array().map(Vec::len), Some(2));
    assert!(parks["items"][0]["devices"][0]["key"].is_string());

    // Startups: create, read, patch, list with filters, delete.
    let (st, created) = node.call("POST", "/v1/startups", Some(&startup("Til AI")));
    assert_eq!(st, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("kz-astana-hub/"));
    let path = format!("/v1/startups/{id}");
    let (st, got) = node.call("GET", &path, None);
    assert_eq!((st, &got), (200, &created));
    let (st, patched) = node.call(
        "PATCH",
        &path,
        Some(&json!({"stage": "mvp", "city": "Astana"})),
    );
    assert_eq!(
        (st, patched["stage"].as_str(), patched["city"].as_str()),
        (200, Some("mvp"), Some("Astana"))
    );
    let (st, page) = node.call(
        "GET",
        "/v1/startups?country=KZ&sector=ai&stage=mvp&q=kazakh&park=kz-astana-hub",
        None,
    );
    assert_eq!(st, 200);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    assert!(page["next_cursor"].is_null());
    let (st, _) = node.call("PATCH", &path, Some(&json!({"city": null})));
    assert_eq!(st, 200);
    let (_, got) = node.call("GET", &path, None);
    assert!(got["city"].is_null());

    // Programs, the same way.
    let program = json!({"kind": "residency", "title": "Digital Nomad IT residency", "seats": 10,
        "starts": "2027-03-01", "ends": "2027-09-01", "id": "residency"});
    let (st, p) = node.call("POST", "/v1/programs", Some(&program));
    assert_eq!(
        (st, p["id"].as_str()),
        (201, Some("kz-astana-hub/residency")),
        "{p}"
    );
    let (st, _) = node.call(
        "PATCH",
        "/v1/programs/kz-astana-hub/residency",
        Some(&json!({"open": false})),
    );
    assert_eq!(st, 200);
    let (st, page) = node.call("GET", "/v1/programs?kind=residency", None);
    assert_eq!((st, page["items"][0]["open"].as_bool()), (200, Some(false)));

    // IT Park Uzbekistan's startup applies to Astana Hub's residency, through a bundle.
    let mut uz = s.tashkent.open_replica().expect("open");
    let (st, bundle) = (200, node.get_bytes("/v1/bundle"));
    assert_eq!(st, 200);
    uz.import(&bundle, "test").expect("import");
    let uz_startup = uz
        .create(
            Collection::Startups,
            Some("sozdik"),
            &Sample::new(1).startup("UZ"),
        )
        .expect("create");
    let app = uz
        .create(
            Collection::Applications,
            Some("a1"),
            &json!({"startup": uz_startup.to_string(), "program": "kz-astana-hub/residency"}),
        )
        .expect("apply");
    let (st, report) = node.post_bytes("/v1/bundle", &uz.export(None).expect("export").encode());
    assert_eq!(st, 200, "{report}");
    assert!(
        report["summary"]["accepted"].as_u64().unwrap_or(0) >= 3,
        "{report}"
    );
    let (st, apps) = node.call(
        "GET",
        "/v1/applications?host=kz-astana-hub&status=pending",
        None,
    );
    assert_eq!((st, apps["items"].as_array().map(Vec::len)), (200, Some(1)));
    let (st, decided) = node.call(
        "PUT",
        &format!("/v1/applications/{app}/decision"),
        Some(&json!({"status": "accepted", "note": "Welcome"})),
    );
    assert_eq!(
        (st, decided["status"].as_str()),
        (200, Some("accepted")),
        "{decided}"
    );
    let (st, got) = node.call("GET", &format!("/v1/applications/{app}"), None);
    assert_eq!(
        (st, got["decision"]["note"].as_str()),
        (200, Some("Welcome"))
    );

    // Astana Hub's own application to its own program, then withdrawn.
    let (st, own) = node.call(
        "POST",
        "/v1/applications",
        Some(&json!({"startup": id, "program": "kz-astana-hub/residency"})),
    );
    assert_eq!(st, 201, "{own}");
    let own_path = format!("/v1/applications/{}", own["id"].as_str().expect("id"));
    let (st, w) = node.call("PATCH", &own_path, Some(&json!({"withdrawn": true})));
    assert_eq!((st, w["status"].as_str()), (200, Some("withdrawn")));

    // Audit: the record's history, one change with its envelope, verify, rejected.
    let (st, log) = node.call("GET", &format!("/v1/audit/changes?record={id}"), None);
    assert_eq!(st, 200);
    let entries = log["items"].as_array().expect("items");
    assert!(entries.len() >= 3, "create and two patches: {log}");
    assert!(
        entries
            .iter()
            .all(|e| e["signature"] == "valid" && e["park"] == "kz-astana-hub")
    );
    assert!(entries.iter().any(|e| {
        e["ops"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|op| op["path"] == format!("startups/{id}/stage") && op["value"] == "mvp")
    }));
    let hash = entries[0]["hash"].as_str().expect("hash");
    let (st, one) = node.call("GET", &format!("/v1/audit/changes/{hash}"), None);
    assert_eq!((st, one["status"].as_str()), (200, Some("accepted")));
    assert!(one["envelope"].as_str().is_some_and(|e| e.len() > 100));
    let (st, page) = node.call("GET", "/v1/audit/changes?doc=federation&limit=5", None);
    assert_eq!((st, page["items"].as_array().map(Vec::len)), (200, Some(1)));
    let (st, verify) = node.call("GET", "/v1/audit/verify", None);
    assert_eq!(st, 200);
    assert_eq!(verify["stored"], verify["verified"]);
    assert_eq!(
        verify["digest"],
        node.call("GET", "/v1/status", None).1["digest"]
    );
    let (st, rejected) = node.call("GET", "/v1/audit/rejected", None);
    assert_eq!(
        (st, rejected["items"].as_array().map(Vec::len)),
        (200, Some(0))
    );

    // Delete, metrics, OpenAPI.
    let (st, _) = node.call("DELETE", &path, None);
    assert_eq!(st, 204);
    let (st, _) = node.call("GET", &path, None);
    assert_eq!(st, 404);
    let metrics = node
        .agent
        .get(format!("{}/metrics", node.base))
        .call()
        .expect("metrics")
        .body_mut()
        .read_to_string()
        .expect("text");
    for m in [
        "kervan_changes_accepted_total",
        "kervan_records{kind=\"startups\"}",
        "kervan_api_requests_total{route=\"/v1/startups\",status=\"201\"}",
        "kervan_apply_seconds_bucket",
        "kervan_store_bytes",
        "kervan_changes_pending",
    ] {
        assert!(metrics.contains(m), "metrics lack {m}");
    }
    let (st, doc) = node.call("GET", "/v1/openapi.json", None);
    assert_eq!(st, 200);
    assert!(doc["paths"]["/v1/startups/{park}/{local}"]["patch"].is_object());
}

/// Each error status of the contract, in the contract's shape.
#[test]
fn errors_have_the_contract_shape_and_status() {
    let s = setup();
    let mut uz = s.tashkent.open_replica().expect("open");
    let theirs = uz
        .create(
            Collection::Startups,
            Some("theirs"),
            &Sample::new(2).startup("UZ"),
        )
        .expect("create");
    let bundle = uz.export(None).expect("export").encode();
    drop(uz);
    let node = Node::start(&s.astana);
    assert_eq!(node.post_bytes("/v1/bundle", &bundle).0, 200);

    // 401: no token, a wrong token.
    let (st, v) = node.call_with("GET", "/v1/status", None, None);
    assert_eq!((st, error_code(&v)), (401, "unauthorized"));
    let (st, v) = node.call_with("GET", "/v1/startups", None, Some("not-the-token"));
    assert_eq!((st, error_code(&v)), (401, "unauthorized"));

    // 400: every bad field named; unknown query parameters; a body that is not JSON.
    let bad = json!({"name": "", "country": "Kazakhstan", "sectors": ["ai", "biotech"],
                     "stage": "seed", "founded": 1850, "colour": "blue"});
    let (st, v) = node.call("POST", "/v1/startups", Some(&bad));
    assert_eq!((st, error_code(&v)), (400, "invalid"));
    assert_eq!(
        error_fields(&v),
        ["colour", "country", "founded", "name", "sectors[1]"]
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("colour"))
    );
    let (st, v) = node.call("GET", "/v1/startups?colour=blue", None);
    assert_eq!((st, error_code(&v)), (400, "bad_request"));
    let (st, v) = node.call("GET", "/v1/startups?limit=100000", None);
    assert_eq!((st, error_code(&v)), (400, "bad_request"));
    let mut r = node
        .agent
        .post(format!("{}/v1/startups", node.base))
        .header("Authorization", format!("Bearer {}", node.token))
        .header("Content-Type", "application/json")
        .send("{not json")
        .expect("answers");
    assert_eq!(r.status(), 400);
    let v: Value = r.body_mut().read_json().expect("json error");
    assert_eq!(error_code(&v), "bad_request");

    // 403: another park's record, named with its owner.
    let (st, v) = node.call(
        "PATCH",
        &format!("/v1/startups/{theirs}"),
        Some(&json!({"stage": "growth"})),
    );
    assert_eq!((st, error_code(&v)), (403, "forbidden"));
    assert_eq!(v["error"]["details"]["owner"], "uz-it-park");
    let (st, v) = node.call("DELETE", &format!("/v1/startups/{theirs}"), None);
    assert_eq!((st, error_code(&v)), (403, "forbidden"));
    let (st, v) = node.call("POST", "/v1/startups", Some(&json!({"id": "uz-it-park/mine", "name": "X", "country": "KZ", "sectors": ["ai"], "stage": "idea"})));
    assert_eq!((st, error_code(&v)), (403, "forbidden"));

    // 404: no such record, no such route, no such change.
    let (st, v) = node.call("GET", "/v1/startups/kz-astana-hub/nothing", None);
    assert_eq!((st, error_code(&v)), (404, "not_found"));
    let (st, v) = node.call("GET", "/v1/nothing", None);
    assert_eq!((st, error_code(&v)), (404, "not_found"));
    let (st, v) = node.call(
        "GET",
        &format!("/v1/audit/changes/{}", "ab".repeat(32)),
        None,
    );
    assert_eq!((st, error_code(&v)), (404, "not_found"));

    // 409: the same id twice.
    let mut s1 = startup("Twice");
    s1["id"] = json!("twice");
    assert_eq!(node.call("POST", "/v1/startups", Some(&s1)).0, 201);
    let (st, v) = node.call("POST", "/v1/startups", Some(&s1));
    assert_eq!((st, error_code(&v)), (409, "conflict"));

    // 413: a body over the limit (1 MiB by default).
    let mut huge = startup("Huge");
    huge["summary"] = json!("x".repeat(2 << 20));
    let (st, v) = node.call("POST", "/v1/startups", Some(&huge));
    assert_eq!((st, error_code(&v)), (413, "too_large"));

    // A bundle that is not one: 400, and nothing changed.
    let digest = node.call("GET", "/v1/status", None).1["digest"].clone();
    let (st, v) = node.post_bytes("/v1/bundle", b"definitely not a bundle");
    assert_eq!((st, error_code(&v)), (400, "bad_request"));
    assert_eq!(node.call("GET", "/v1/status", None).1["digest"], digest);
}

/// Writes acknowledged with 201 survive SIGKILL of the node process, cycle after cycle, and a
/// clean SIGTERM shutdown exits 0.
#[test]
fn acknowledged_writes_survive_kill_9() {
    let s = setup();
    let mut acked: Vec<String> = Vec::new();
    for cycle in 0..3 {
        let mut node = Node::start(&s.astana);
        for id in &acked {
            let (st, _) = node.call("GET", &format!("/v1/startups/{id}"), None);
            assert_eq!(st, 200, "cycle {cycle}: acknowledged {id} lost");
        }
        for i in 0..15 {
            let (st, v) = node.call(
                "POST",
                "/v1/startups",
                Some(&startup(&format!("Kill {cycle}-{i}"))),
            );
            assert_eq!(st, 201);
            acked.push(v["id"].as_str().expect("id").to_owned());
        }
        node.kill9();
    }
    let mut node = Node::start(&s.astana);
    let (_, page) = node.call("GET", "/v1/startups?limit=500", None);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(acked.len()));
    let (_, verify) = node.call("GET", "/v1/audit/verify", None);
    assert_eq!(verify["failed"].as_array().map(Vec::len), Some(0));
    assert!(node.terminate().success(), "clean shutdown exits 0");
    assert!(
        !s.astana.join("api.addr").exists(),
        "a clean shutdown removes api.addr"
    );
}

/// Paging through the API returns every record exactly once, by id and by name, filtered or not.
#[test]
fn paging_returns_every_record_exactly_once() {
    let s = setup();
    let node = Node::start(&s.astana);
    let mut sample = Sample::new(3);
    for _ in 0..60 {
        let (st, _) = node.call("POST", "/v1/startups", Some(&sample.startup("KZ")));
        assert_eq!(st, 201);
    }
    for query in [
        "limit=7",
        "limit=7&sort=name",
        "limit=4&country=KZ&sort=name",
        "limit=500",
    ] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100 {
            let path = match &cursor {
                Some(c) => format!("/v1/startups?{query}&cursor={c}"),
                None => format!("/v1/startups?{query}"),
            };
            let (st, page) = node.call("GET", &path, None);
            assert_eq!(st, 200);
            seen.extend(
                page["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| s["id"].to_string()),
            );
            cursor = page["next_cursor"].as_str().map(str::to_owned);
            if cursor.is_none() {
                break;
            }
        }
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!((seen.len(), unique.len()), (60, 60), "{query}");
    }
}

/// The CLI's `--json` output is the API's JSON: what `add --json` prints is what `show --json`
/// and the API answer, and `list --json --all` lists what the API lists.
#[test]
fn cli_json_output_round_trips() {
    let s = setup();
    let node = Node::start(&s.astana);
    let file = s.astana.join("startup.json");
    std::fs::write(&file, startup("Round Trip").to_string()).expect("write");
    let out = node.cli(&[
        "startups",
        "add",
        "--file",
        &file.display().to_string(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added: Value = serde_json::from_slice(&out.stdout).expect("add --json prints JSON");
    let id = added["id"].as_str().expect("id");
    let out = node.cli(&["startups", "show", id, "--json"]);
    let shown: Value = serde_json::from_slice(&out.stdout).expect("show --json prints JSON");
    assert_eq!(shown, added);
    assert_eq!(
        node.call("GET", &format!("/v1/startups/{id}"), None).1,
        shown
    );
    for i in 0..4 {
        node.call("POST", "/v1/startups", Some(&startup(&format!("More {i}"))));
    }
    let out = node.cli(&["startups", "list", "--json", "--all", "--limit", "2"]);
    let listed: Value = serde_json::from_slice(&out.stdout).expect("list --json prints JSON");
    let api = node.call("GET", "/v1/startups?limit=500", None).1;
    assert_eq!(listed["items"], api["items"]);
    let out = node.cli(&["status", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(
        status["digest"],
        node.call("GET", "/v1/status", None).1["digest"]
    );
    // A user error is one line on stderr and a non-zero exit.
    let out = node.cli(&["startups", "add", "--data", r#"{"name": ""}"#]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("name") && err.contains("country"), "{err}");
}

/// Without a running node, a data command says so in one line and how to start one.
#[test]
fn cli_says_when_no_node_is_running() {
    let s = setup();
    let out = Command::new(KERVAN)
        .arg("--data-dir")
        .arg(&s.astana)
        .args(["startups", "list"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("no node is running") && err.contains("kervan run"),
        "{err}"
    );
}

/// `kervan validate` accepts the example config and names what is wrong in a bad one;
/// `kervan health` answers 0 only while the node runs.
#[test]
fn validate_and_health_commands() {
    let s = setup();
    let run = |args: &[&str]| {
        Command::new(KERVAN)
            .arg("--data-dir")
            .arg(&s.astana)
            .args(args)
            .output()
            .expect("runs")
    };
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/config.example.toml");
    let out = run(&["validate", "--config", example]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        run(&["validate"]).status.success(),
        "the data directory's own config"
    );
    let bad = s.astana.join("bad.toml");
    std::fs::write(
        &bad,
        "park = \"kz-astana-hub\"\n[network]\nsync_interval = \"1ms\"\n",
    )
    .expect("write");
    let out = run(&["validate", "--config", &bad.display().to_string()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sync_interval") && err.trim().lines().count() == 1,
        "{err}"
    );

    assert!(!run(&["health"]).status.success(), "no node runs yet");
    let mut node = Node::start(&s.astana);
    assert!(run(&["health"]).status.success());
    node.kill9();
}

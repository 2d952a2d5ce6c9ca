//! The commands that run the node or talk to a running node through its API.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use kervan_node::client::{Body, Client, encode};
use kervan_node::node::{self, Overrides};
use kervan_node::{Config, DataDir};
use serde_json::{Value, json};

use crate::{ApplicationCommand, ListArgs, RecordCommand, WriteArgs};

/// A client of the node of this data directory, if one is running.
pub(crate) fn running(dir: &DataDir) -> Option<Client> {
    Client::new(dir).ok().filter(Client::is_running)
}

/// A client of the node of this data directory.
pub(crate) fn client(dir: &DataDir) -> anyhow::Result<Client> {
    Ok(Client::new(dir)?)
}

pub(crate) fn run_node(
    dir: &DataDir,
    config_path: Option<&Path>,
    o: Overrides,
) -> anyhow::Result<ExitCode> {
    let config = match config_path {
        Some(p) => Config::load(p)?,
        None => dir.config()?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut node = node::start(dir, config, o)
            .await
            .with_context(|| format!("cannot start the node in {}", dir.root().display()))?;
        println!(
            "kervan node of {} listening on http://{} (api) and {}",
            node.park,
            node.api_addr,
            node.p2p_addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = node.failed() => tracing::error!("storage failure: shutting down"),
        }
        node.stop().await?;
        tracing::info!("stopped cleanly");
        Ok(ExitCode::SUCCESS)
    })
}

pub(crate) fn status(c: &Client, json_out: bool) -> anyhow::Result<ExitCode> {
    let s = c.json("GET", "/v1/status", Body::None)?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("park         {}", s["park"].as_str().unwrap_or(""));
    println!("device       {}", s["device"].as_str().unwrap_or(""));
    println!("peer id      {}", s["peer_id"].as_str().unwrap_or(""));
    println!("federation   {}", s["federation"].as_str().unwrap_or(""));
    println!("digest       {}", s["digest"].as_str().unwrap_or(""));
    let counts = &s["counts"];
    println!(
        "records      {} parks, {} startups, {} programs, {} applications",
        counts["parks"], counts["startups"], counts["programs"], counts["applications"]
    );
    println!(
        "changes      {} accepted, {} pending",
        s["changes"]["accepted"], s["changes"]["pending"]
    );
    let peers = s["peers"].as_array().cloned().unwrap_or_default();
    println!("peers        {}", peers.len());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for p in &peers {
        let id = cell(&p["peer_id"]);
        let synced = p["last_sync"].as_i64().map_or_else(
            || "never synced".to_owned(),
            |t| format!("synced {}s ago", (now - t).max(0)),
        );
        println!(
            "  {}  {:<12}  {:<16}  score {:>4}{}",
            &id[id.len().saturating_sub(12)..],
            if p["connected"].as_bool() == Some(true) {
                "connected"
            } else {
                "disconnected"
            },
            synced,
            p["score"],
            if p["banned"].as_bool() == Some(true) {
                "  banned"
            } else {
                ""
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn read_input(w: &WriteArgs) -> anyhow::Result<Value> {
    let text = match (&w.data, &w.file) {
        (Some(d), _) => d.clone(),
        (None, Some(f)) if f.as_os_str() == "-" => std::io::read_to_string(std::io::stdin())?,
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?
        }
        (None, None) => bail!("give the record with --data JSON or --file FILE"),
    };
    serde_json::from_str(&text).context("the record is not valid JSON")
}

fn print_one(v: &Value, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        for (k, val) in v.as_object().into_iter().flatten() {
            if val.is_null() {
                continue;
            }
            println!("{k:<14} {}", cell(val));
        }
    }
    Ok(())
}

fn record_path(kind: &str, id: &str) -> anyhow::Result<String> {
    let (park, local) = id
        .split_once('/')
        .ok_or_else(|| anyhow!("a record id is <park>/<local>, found {id:?}"))?;
    Ok(format!("/v1/{kind}/{}/{}", encode(park), encode(local)))
}

/// A query string: the limit, then every parameter that is set, percent-encoded.
fn query_string(limit: usize, params: &[(&str, Option<&str>)]) -> String {
    let mut q = vec![format!("limit={limit}")];
    for (k, v) in params {
        if let Some(v) = v {
            q.push(format!("{k}={}", encode(v)));
        }
    }
    q.join("&")
}

fn list_query(a: &ListArgs, cursor: Option<&str>) -> String {
    query_string(
        a.limit,
        &[
            ("park", a.park.as_deref()),
            ("country", a.country.as_deref()),
            ("sector", a.sector.as_deref()),
            ("stage", a.stage.as_deref()),
            ("kind", a.kind.as_deref()),
            ("q", a.q.as_deref()),
            ("sort", a.sort.as_deref()),
            ("cursor", cursor),
        ],
    )
}

pub(crate) fn records(c: &Client, kind: &str, cmd: RecordCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RecordCommand::List(a) => {
            let mut items = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let page = c.json(
                    "GET",
                    &format!("/v1/{kind}?{}", list_query(&a, cursor.as_deref())),
                    Body::None,
                )?;
                items.extend(page["items"].as_array().cloned().unwrap_or_default());
                cursor = page["next_cursor"].as_str().map(str::to_owned);
                if !a.all || cursor.is_none() {
                    break;
                }
            }
            if a.json {
                let out = json!({"items": items, "next_cursor": cursor});
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print_table(kind, &items);
                if let Some(c) = cursor {
                    println!("more: --all, or the API with cursor={c}");
                }
            }
        }
        RecordCommand::Show { id, json } => {
            let v = c.json("GET", &record_path(kind, &id)?, Body::None)?;
            print_one(&v, json)?;
        }
        RecordCommand::Add(w) => {
            let input = read_input(&w)?;
            let v = c.json("POST", &format!("/v1/{kind}"), Body::Json(&input))?;
            if w.json {
                print_one(&v, true)?;
            } else {
                println!("created {}", v["id"].as_str().unwrap_or(""));
            }
        }
        RecordCommand::Update { id, write } => {
            let input = read_input(&write)?;
            let v = c.json("PATCH", &record_path(kind, &id)?, Body::Json(&input))?;
            if write.json {
                print_one(&v, true)?;
            } else {
                println!("updated {id}");
            }
        }
        RecordCommand::Remove { id } => {
            c.json("DELETE", &record_path(kind, &id)?, Body::None)?;
            println!("removed {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

fn print_table(kind: &str, items: &[Value]) {
    let cols: &[&str] = match kind {
        "startups" => &["id", "name", "country", "stage", "sectors"],
        "programs" => &["id", "kind", "title", "seats", "open"],
        _ => &["id", "startup", "program", "status"],
    };
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| cols.iter().map(|c| cell(&i[*c])).collect())
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(n, c)| {
            rows.iter()
                .map(|r| r[n].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
                .min(48)
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| {
                let c: String = c.chars().take(*w).collect();
                format!("{c:<w$}")
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!("{}", line(cols.iter().map(|c| c.to_string()).collect()));
    for r in rows {
        println!("{}", line(r));
    }
    println!("({} {kind})", items.len());
}

pub(crate) fn applications(c: &Client, cmd: ApplicationCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ApplicationCommand::Add {
            startup,
            program,
            message,
            json,
        } => {
            let mut body = json!({"startup": startup, "program": program});
            if let Some(m) = message {
                body["message"] = json!(m);
            }
            let v = c.json("POST", "/v1/applications", Body::Json(&body))?;
            if json {
                print_one(&v, true)?;
            } else {
                println!("applied: {} ({})", cell(&v["id"]), cell(&v["status"]));
            }
        }
        ApplicationCommand::Decide {
            id,
            status,
            note,
            json,
        } => {
            let mut body = json!({"status": status});
            if let Some(n) = note {
                body["note"] = json!(n);
            }
            let path = format!("{}/decision", record_path("applications", &id)?);
            let v = c.json("PUT", &path, Body::Json(&body))?;
            if json {
                print_one(&v, true)?;
            } else {
                println!("{id}: {}", cell(&v["status"]));
            }
        }
        ApplicationCommand::Withdraw { id, json } => {
            let body = json!({"withdrawn": true});
            let v = c.json(
                "PATCH",
                &record_path("applications", &id)?,
                Body::Json(&body),
            )?;
            if json {
                print_one(&v, true)?;
            } else {
                println!("{id}: {}", cell(&v["status"]));
            }
        }
        ApplicationCommand::List {
            park,
            program,
            host,
            status,
            limit,
            json,
        } => {
            let q = query_string(
                limit,
                &[
                    ("park", park.as_deref()),
                    ("program", program.as_deref()),
                    ("host", host.as_deref()),
                    ("status", status.as_deref()),
                ],
            );
            let page = c.json("GET", &format!("/v1/applications?{q}"), Body::None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                print_table("applications", page["items"].as_array().map_or(&[], |v| v));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn export(c: &Client, out: &Path, since: Option<&str>) -> anyhow::Result<ExitCode> {
    let query = match since {
        Some(s) => {
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|_| anyhow!("--since expects an RFC 3339 time, found {s:?}"))?;
            format!("?since={}", t.unix_timestamp())
        }
        None => String::new(),
    };
    let bytes = c.raw("GET", &format!("/v1/bundle{query}"), Body::None)?;
    std::fs::write(out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    let n = kervan_protocol::Bundle::decode(&bytes, usize::MAX, usize::MAX)
        .map(|b| b.entries.len())
        .unwrap_or(0);
    println!("exported {n} signed changes to {}", out.display());
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn import(c: &Client, file: &Path, json_out: bool) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let v = c.json("POST", "/v1/bundle", Body::Bytes(&bytes))?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v["items"])?);
    } else {
        for r in v["items"].as_array().into_iter().flatten() {
            let hash = r["hash"]
                .as_str()
                .map_or("(unparsed)", |h| &h[..16.min(h.len())]);
            let doc = r["doc"].as_str().unwrap_or("");
            let outcome = r["outcome"].as_str().unwrap_or("");
            match r["reason"].as_str() {
                Some(reason) => println!("{outcome:<10} {hash} {doc}: {reason}"),
                None => println!("{outcome:<10} {hash} {doc}"),
            }
        }
    }
    let s = &v["summary"];
    eprintln!(
        "{} accepted, {} duplicate, {} pending, {} rejected",
        s["accepted"].as_u64().unwrap_or(0),
        s["duplicate"].as_u64().unwrap_or(0),
        s["pending"].as_u64().unwrap_or(0),
        s["rejected"].as_u64().unwrap_or(0)
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn audit_verify(c: &Client, json_out: bool) -> anyhow::Result<ExitCode> {
    let r = c.json("GET", "/v1/audit/verify", Body::None)?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        for k in [
            "stored", "verified", "accepted", "pending", "excluded", "rejected", "evidence",
            "digest",
        ] {
            println!("{k:<16} {}", cell(&r[k]));
        }
    }
    let failed = r["failed"].as_array().map_or(0, Vec::len);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub(crate) fn audit_log(
    c: &Client,
    doc: Option<String>,
    park: Option<String>,
    record: Option<String>,
    limit: usize,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let q = query_string(
        limit,
        &[
            ("doc", doc.as_deref()),
            ("park", park.as_deref()),
            ("record", record.as_deref()),
        ],
    );
    let page = c.json("GET", &format!("/v1/audit/changes?{q}"), Body::None)?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(ExitCode::SUCCESS);
    }
    for e in page["items"].as_array().into_iter().flatten() {
        let hash = cell(&e["hash"]);
        let device = cell(&e["device"]);
        println!(
            "{}  {}  {:<22} park {:<22} device {}  seq {}  {} ops  signature {}",
            &hash[..16.min(hash.len())],
            cell(&e["time"]),
            cell(&e["doc"]),
            cell(&e["park"]),
            &device[..8.min(device.len())],
            e["seq"],
            e["ops"].as_array().map_or(0, Vec::len),
            cell(&e["signature"]),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn audit_show(c: &Client, hash: &str, json_out: bool) -> anyhow::Result<ExitCode> {
    let e = c.json(
        "GET",
        &format!("/v1/audit/changes/{}", encode(hash)),
        Body::None,
    )?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&e)?);
        return Ok(ExitCode::SUCCESS);
    }
    for k in [
        "hash",
        "doc",
        "park",
        "device",
        "seq",
        "time",
        "status",
        "signature",
    ] {
        println!("{k:<10} {}", cell(&e[k]));
    }
    println!("deps       {}", cell(&e["deps"]));
    for op in e["ops"].as_array().into_iter().flatten() {
        println!(
            "  {:<9} {} {}",
            cell(&op["action"]),
            cell(&op["path"]),
            if op["value"].is_null() {
                String::new()
            } else {
                format!("= {}", op["value"])
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn audit_rejected(c: &Client, json_out: bool) -> anyhow::Result<ExitCode> {
    let page = c.json("GET", "/v1/audit/rejected", Body::None)?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(ExitCode::SUCCESS);
    }
    let items = page["items"].as_array().cloned().unwrap_or_default();
    for r in &items {
        let key = cell(&r["key"]);
        println!(
            "{}  {:<22} from {:<12} {}",
            &key[..16.min(key.len())],
            cell(&r["code"]),
            cell(&r["source"]),
            cell(&r["reason"])
        );
    }
    println!("({} rejected)", items.len());
    Ok(ExitCode::SUCCESS)
}

//! Local writes: `POST /v1/startups` on a running node until the acknowledgement (the change
//! is committed, signed, judged, stored and flushed), against an Automerge commit of the same
//! record into the same ledger.

use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure};
use automerge::AutoCommit;
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ROOT, ReadDoc};
use kervan_node::Collection;
use kervan_node::sample::Sample;
use kervan_protocol::DocId;
use kervan_protocol::records::{self, STARTUP_FIELDS};
use serde_json::Value;

use crate::data::{Dataset, rfc3339};
use crate::report::{Figure, Report, Target};
use crate::stats::percentile;
use crate::{Plan, nodes};

fn inputs(n: usize, country: &str, seed: u64) -> Vec<Value> {
    let mut s = Sample::new(seed);
    (0..n).map(|_| s.startup(country)).collect()
}

/// Seconds per commit of each record into the park's ledger, as plain Automerge.
fn automerge_commits(ledger: &[u8], records: &[Value]) -> anyhow::Result<Vec<f64>> {
    let mut doc = AutoCommit::load(ledger)?;
    doc.set_actor(automerge::ActorId::random());
    let coll = match doc.get(&ROOT, "startups")? {
        Some((automerge::Value::Object(_), o)) => o,
        _ => return Err(anyhow!("no startups map")),
    };
    let mut out = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let mut obj = r.as_object().cloned().unwrap_or_default();
        let started = Instant::now();
        let now = Value::String(rfc3339(1_800_000_000 + i as i64));
        obj.insert("created_at".into(), now.clone());
        obj.insert("updated_at".into(), now);
        let value = records::record_to_automerge(STARTUP_FIELDS, &obj);
        doc.batch_create_object(
            &coll,
            format!("kz-astana-hub/bench{i:06}").as_str(),
            &value,
            false,
        )?;
        doc.commit_with(CommitOptions::default().with_time(1_800_000_000 + i as i64));
        out.push(started.elapsed().as_secs_f64());
    }
    Ok(out)
}

/// Seconds per acknowledged write through the HTTP API.
fn http_writes(
    addr: std::net::SocketAddr,
    token: &str,
    records: &[Value],
) -> anyhow::Result<Vec<f64>> {
    let agent = ureq::Agent::new_with_defaults();
    let url = format!("http://{addr}/v1/startups");
    let bearer = format!("Bearer {token}");
    let mut out = Vec::new();
    for r in records {
        let started = Instant::now();
        let mut resp = agent
            .post(&url)
            .header("Authorization", &bearer)
            .send_json(r)?;
        let _ = resp.body_mut().read_to_vec()?;
        out.push(started.elapsed().as_secs_f64());
        ensure!(
            resp.status().as_u16() == 201,
            "create answered {}",
            resp.status()
        );
    }
    Ok(out)
}

pub(crate) fn run(
    ds: &Dataset,
    plan: &Plan,
    rt: &tokio::runtime::Runtime,
    report: &mut Report,
) -> anyhow::Result<()> {
    const S: &str = "local write";
    let mut sizes = vec![plan.small];
    if plan.large > plan.small {
        sizes.push(plan.large);
    }
    for startups in sizes {
        let stage = ds.stage(startups)?;
        let label = format!("{}k records", startups / 1000);
        let park = &ds.identities[0];
        let warm = inputs(20, &park.country, 11);
        let records = inputs(plan.writes, &park.country, 12);
        let dir = ds.copy(&stage.dir, "write")?;
        let (http, local) = rt.block_on(async {
            let node = nodes::start(&dir, Vec::new(), Duration::from_secs(60)).await?;
            let (addr, token) = (node.api_addr, node.token.clone());
            let w = warm.clone();
            let r = records.clone();
            let http = tokio::task::spawn_blocking(move || {
                http_writes(addr, &token, &w)?;
                let _section = crate::profile::section("write");
                http_writes(addr, &token, &r)
            })
            .await??;
            // The same path without HTTP: a call on the replica actor.
            let mut local = Vec::new();
            for r in inputs(plan.writes, &park.country, 13) {
                let started = Instant::now();
                node.replica
                    .call(move |rep| rep.create(Collection::Startups, None, &r))
                    .await??;
                local.push(started.elapsed().as_secs_f64());
            }
            node.stop().await?;
            anyhow::Ok((http, local))
        })?;
        std::fs::remove_dir_all(&dir)?;
        let ledger = stage
            .docs
            .0
            .get(&DocId::Ledger(park.park.clone()))
            .ok_or_else(|| anyhow!("no ledger"))?;
        let am = automerge_commits(ledger, &records)?;
        let p = |xs: &[f64], q| percentile(xs, q);
        let mut f = Figure::new(
            S,
            format!("{label}: acknowledged write over HTTP, p50"),
            p(&http, 50.0),
            "s",
        )
        .against("automerge commit, p50", p(&am, 50.0));
        if startups == plan.small {
            f = f.target(Target::AtMost(0.002), "<= 2 ms");
        }
        report.push(f);
        report.push(
            Figure::new(
                S,
                format!("{label}: acknowledged write over HTTP, p99"),
                p(&http, 99.0),
                "s",
            )
            .against("automerge commit, p99", p(&am, 99.0)),
        );
        report.push(
            Figure::new(
                S,
                format!("{label}: the same write in process (no HTTP), p50"),
                p(&local, 50.0),
                "s",
            )
            .against("automerge commit, p50", p(&am, 50.0)),
        );
        report.push(
            Figure::new(
                S,
                format!("{label}: the same write in process (no HTTP), p99"),
                p(&local, 99.0),
                "s",
            )
            .against("automerge commit, p99", p(&am, 99.0)),
        );
    }
    Ok(())
}

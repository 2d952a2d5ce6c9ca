//! Cold start and memory: each measurement in a child process of its own (this binary, run
//! with a hidden subcommand), so one peak does not hide another. Kervan opens a data directory
//! and answers a first query; the reference loads the same documents with Automerge alone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{anyhow, bail, ensure};
use kervan_node::DataDir;
use kervan_node::query::Filter;
use serde_json::{Value, json};

use crate::Plan;
use crate::data::Dataset;
use crate::report::{Figure, Report, Target};
use crate::stats::{median, peak_rss_mb, rss_mb};

/// The hidden subcommands, run in a child process. Prints one JSON line.
pub(crate) fn child(args: &[String]) -> anyhow::Result<()> {
    let (what, rest) = args
        .split_first()
        .ok_or_else(|| anyhow!("child: what to run"))?;
    let started = Instant::now();
    let answer = match what.as_str() {
        "open" => {
            let dir = rest
                .first()
                .ok_or_else(|| anyhow!("open: a data directory"))?;
            let _section = crate::profile::section("cold-start");
            let data_dir = DataDir::new(dir);
            // What a node does: queries are answered from the index while the ledgers'
            // documents may still load; everything else waits for `finish`.
            let starting = data_dir.open_starting()?;
            let page = starting.index().startups(&Filter::default())?;
            ensure!(!page.items.is_empty(), "the first query answered nothing");
            let secs = started.elapsed().as_secs_f64();
            let early = starting.loads_in_background();
            let replica = starting.finish().map_err(|e| data_dir.damaged(e.into()))?;
            let loaded = started.elapsed().as_secs_f64();
            ensure!(
                serde_json::to_value(&replica.index().startups(&Filter::default())?.items)?
                    == serde_json::to_value(&page.items)?,
                "the loaded replica answers the first query otherwise"
            );
            json!({"secs": secs, "loaded_secs": loaded, "early": early, "items": page.items.len()})
        }
        "load" => {
            let mut docs = Vec::new();
            for f in rest {
                docs.push(automerge::Automerge::load(&std::fs::read(f)?)?);
            }
            let secs = started.elapsed().as_secs_f64();
            json!({"secs": secs, "docs": docs.len()})
        }
        other => bail!("unknown child command {other}"),
    };
    let mut answer = answer;
    answer["peak_mb"] = json!(peak_rss_mb());
    answer["rss_mb"] = json!(rss_mb());
    println!("{answer}");
    Ok(())
}

/// Runs this binary's child command and reads its answer: seconds, peak RSS in MB, and the
/// seconds until the documents were loaded (the same as the first for `load`).
fn spawn(args: &[&Path], what: &str) -> anyhow::Result<(f64, f64, f64)> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .arg("__child")
        .arg(what)
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "child {what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let line = text
        .lines()
        .last()
        .ok_or_else(|| anyhow!("child {what} printed nothing"))?;
    let v: Value = serde_json::from_str(line)?;
    let get = |k: &str| v[k].as_f64().ok_or_else(|| anyhow!("child {what}: no {k}"));
    let secs = get("secs")?;
    let loaded = v["loaded_secs"].as_f64().unwrap_or(secs);
    Ok((secs, get("peak_mb")?, loaded))
}

pub(crate) fn run(
    ds: &Dataset,
    plan: &Plan,
    report: &mut Report,
    cold: bool,
    memory: bool,
) -> anyhow::Result<()> {
    let mut sizes = vec![plan.small];
    if plan.large > plan.small {
        sizes.push(plan.large);
    }
    for startups in sizes {
        let stage = ds.stage(startups)?;
        let dir = ds.copy(&stage.dir, &format!("open-{startups}"))?;
        let files: Vec<&Path> = stage.doc_files.iter().map(PathBuf::as_path).collect();
        let mut k_secs = Vec::new();
        let mut k_loaded = Vec::new();
        let mut k_peak = Vec::new();
        let mut a_secs = Vec::new();
        let mut a_peak = Vec::new();
        for rep in 0..plan.reps {
            let (s, p, l) = spawn(&[dir.as_path()], "open")?;
            k_secs.push(s);
            k_peak.push(p);
            k_loaded.push(l);
            let (s, p, _) = spawn(&files, "load")?;
            a_secs.push(s);
            a_peak.push(p);
            eprintln!(
                "  {startups}: rep {rep}: kervan {:.2} s (loaded {:.2} s) {:.0} MB; automerge {:.2} s {:.0} MB",
                k_secs[rep], k_loaded[rep], k_peak[rep], a_secs[rep], a_peak[rep]
            );
        }
        let label = format!("{}k records", startups / 1000);
        if cold {
            let mut f = Figure::new(
                "cold start",
                format!("{label}: data dir opened -> first query answered"),
                median(&k_secs),
                "s",
            )
            .against("automerge load of the documents", median(&a_secs));
            if startups == plan.large {
                f = f.target(Target::AtMostAndRatio(1.5, 1.3), "<= 1.5 s and <= 1.3x");
            }
            report.push(f);
            // For context: when writes and sync are served (every document in place).
            report.push(
                Figure::new(
                    "cold start",
                    format!("{label}: data dir opened -> documents loaded"),
                    median(&k_loaded),
                    "s",
                )
                .against("automerge load of the documents", median(&a_secs)),
            );
        }
        if memory {
            report.push(
                Figure::new(
                    "memory",
                    format!("{label}: peak RSS, open + first query"),
                    median(&k_peak),
                    "MB",
                )
                .against("automerge documents alone (load)", median(&a_peak))
                .target(Target::RatioAtMost(1.0), "<= 1.0x"),
            );
        }
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

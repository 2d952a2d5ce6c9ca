//! `kervan-bench`: Kervan's figures, each measured beside its reference in the same run and
//! reported as a ratio (machines are shared and noisy; the ratio travels, the figure does not).
//!
//! ```text
//! cargo run --release -p kervan-tests --bin kervan-bench -- [SCENARIO...] [--quick] [--out FILE]
//! ```
//!
//! Scenarios (all by default): `catch-up`, `reconnect`, `ingest`, `write`, `propagation`,
//! `cold-start`, `query`, `memory`. Prints a table and writes every figure as JSON to
//! `target/kervan-bench/latest.json` (and the table as Markdown beside it).
//!
//! - [`data`]: generated registries (real replicas, real data directories) and their Automerge twins.
//! - [`catchup`], [`ingest`], [`write`], [`propagation`], [`startup`], [`query`]: the scenarios.
//! - [`nodes`]: real nodes on loopback; [`wire`]: bytes as the codec writes them, a counting proxy.
//! - [`report`]: figures, targets, the table and the JSON; [`stats`]: percentiles, RSS.

mod catchup;
mod data;
mod ingest;
mod nodes;
mod profile;
mod propagation;
mod query;
mod report;
mod startup;
mod stats;
mod wire;
mod write;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use serde_json::json;

use crate::report::{Figure, Report};

/// Sizes and repetitions of one run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) quick: bool,
    /// Startups of the small registry (catch-up, ingest base, writes).
    pub(crate) small: usize,
    /// Startups of the large registry (reconnect, cold start, query, memory).
    pub(crate) large: usize,
    /// Changes in the ingest stream.
    pub(crate) stream: usize,
    /// Changes ingested one per call (the gossip path).
    pub(crate) gossip_changes: usize,
    /// Repetitions of whole-run measurements; medians are reported.
    pub(crate) reps: usize,
    pub(crate) writes: usize,
    /// Questions per query shape.
    pub(crate) queries: usize,
    pub(crate) parks: Vec<usize>,
    pub(crate) prop_records: usize,
    pub(crate) prop_writes: usize,
    pub(crate) gaps: Vec<usize>,
}

impl Plan {
    /// The plan of a mode; `KERVAN_BENCH_REPS`, `KERVAN_BENCH_PROP_RECORDS` and
    /// `KERVAN_BENCH_PARKS` (a comma-separated list of counts, each at least 2) override the
    /// repetitions, the propagation registry and the propagation meshes (for profiling runs
    /// and probes).
    fn new(quick: bool) -> Self {
        let mut plan = Self::of(quick);
        let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
        if let Some(r) = var("KERVAN_BENCH_REPS") {
            plan.reps = r.max(1);
        }
        if let Some(r) = var("KERVAN_BENCH_PROP_RECORDS") {
            plan.prop_records = r;
        }
        if let Ok(list) = std::env::var("KERVAN_BENCH_PARKS") {
            let parks: Option<Vec<usize>> = list
                .split(',')
                .map(|n| n.trim().parse::<usize>().ok().filter(|&n| n >= 2))
                .collect();
            match parks {
                Some(parks) if !parks.is_empty() => plan.parks = parks,
                _ => eprintln!(
                    "KERVAN_BENCH_PARKS={list:?} ignored: expected counts of at least 2, such as 3,6"
                ),
            }
        }
        plan
    }

    fn of(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                small: 10_000,
                large: 10_000,
                stream: 20_000,
                gossip_changes: 300,
                reps: 2,
                writes: 100,
                queries: 200,
                parks: vec![6],
                prop_records: 1_000,
                prop_writes: 30,
                gaps: vec![1, 10, 100, 1000],
            }
        } else {
            Self {
                quick,
                small: 10_000,
                large: 100_000,
                stream: 100_000,
                gossip_changes: 1_000,
                reps: 5,
                writes: 500,
                queries: 1_000,
                parks: vec![6, 20],
                prop_records: 10_000,
                prop_writes: 100,
                gaps: vec![1, 10, 100, 1000],
            }
        }
    }
}

const SCENARIOS: [&str; 8] = [
    "catch-up",
    "reconnect",
    "ingest",
    "write",
    "propagation",
    "cold-start",
    "query",
    "memory",
];

fn canonical(name: &str) -> Option<&'static str> {
    let n = name.to_lowercase().replace('_', "-");
    let n = match n.as_str() {
        "catchup" => "catch-up",
        "coldstart" | "cold" => "cold-start",
        "writes" | "local-write" => "write",
        other => return SCENARIOS.iter().copied().find(|s| *s == other),
    };
    Some(n)
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": model,
        "memory_gb": (mem_kb as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "kernel": kernel.trim(),
    })
}

fn default_out() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("kervan-bench")
        .join("latest.json")
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__child") {
        return startup::child(&args[2..]);
    }
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let mut quick = false;
    let mut out = default_out();
    let mut chosen: Vec<&'static str> = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--out" => match it.next() {
                Some(p) => out = PathBuf::from(p),
                None => bail!("--out needs a file"),
            },
            "-h" | "--help" => {
                println!(
                    "usage: kervan-bench [SCENARIO...] [--quick] [--out FILE]\nscenarios: {}",
                    SCENARIOS.join(" ")
                );
                return Ok(());
            }
            other => match canonical(other) {
                Some(s) if !chosen.contains(&s) => chosen.push(s),
                Some(_) => {}
                None => bail!(
                    "unknown scenario {other:?}; expected one of: {}",
                    SCENARIOS.join(" ")
                ),
            },
        }
    }
    if chosen.is_empty() {
        chosen = SCENARIOS.to_vec();
    }
    let plan = Plan::new(quick);
    let has = |s: &str| chosen.contains(&s);
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut report = Report::default();
    eprintln!(
        "kervan-bench: {} ({}), scenarios: {}",
        if quick { "quick" } else { "full" },
        machine(),
        chosen.join(" ")
    );

    let needs_data = chosen.iter().any(|s| *s != "propagation");
    let needs_large = ["reconnect", "write", "cold-start", "query", "memory"]
        .iter()
        .any(|s| has(s));
    let ds = if needs_data {
        let mut sizes = vec![plan.small];
        if needs_large && plan.large > plan.small {
            sizes.push(plan.large);
        }
        let stream = if has("ingest") { plan.stream } else { 0 };
        let ds = data::build(&sizes, stream)?;
        for s in &ds.stages {
            let c = s.counts;
            report.push(
                Figure::new(
                    "setup",
                    format!(
                        "registry of {}k startups: {} records ({} programs, {} applications, {} decisions), {} changes; written and ingested in",
                        s.startups / 1000,
                        c.records(),
                        c.programs,
                        c.applications,
                        c.decisions,
                        c.changes
                    ),
                    s.build_secs,
                    "s",
                ),
            );
            report.note(format!(
                "registry of {}k startups: automerge save() of its documents is {} bytes",
                s.startups / 1000,
                s.docs.bytes()
            ));
        }
        Some(ds)
    } else {
        None
    };

    let mut reconnect_bytes = Vec::new();
    for name in &chosen {
        eprintln!("== {name}");
        let t = Instant::now();
        let result = match (*name, ds.as_ref()) {
            ("propagation", _) => propagation::run(&plan, &rt, &mut report),
            (_, None) => Ok(()),
            ("catch-up", Some(ds)) => catchup::fresh(ds, &plan, &rt, &mut report),
            ("reconnect", Some(ds)) => {
                let mut sizes = vec![plan.small];
                if plan.large > plan.small {
                    sizes.push(plan.large);
                }
                sizes.iter().try_for_each(|&n| {
                    let b = catchup::reconnect(ds, n, &plan.gaps, &mut report)?;
                    reconnect_bytes.push((n, b));
                    anyhow::Ok(())
                })
            }
            ("ingest", Some(ds)) => ingest::run(ds, &plan, &mut report),
            ("write", Some(ds)) => write::run(ds, &plan, &rt, &mut report),
            ("cold-start", Some(ds)) => startup::run(ds, &plan, &mut report, true, has("memory")),
            ("memory", Some(ds)) if !has("cold-start") => {
                startup::run(ds, &plan, &mut report, false, true)
            }
            ("query", Some(ds)) => query::run(ds, &plan, &rt, &mut report),
            _ => Ok(()),
        };
        if let Err(e) = result {
            eprintln!("  {name} failed: {e:#}");
            report.note(format!("{name} failed: {e:#}"));
        }
        eprintln!("   ({name}: {:.0} s)", t.elapsed().as_secs_f64());
    }
    // History independence: the same gap costs the same at both sizes.
    if let [(small, s), (large, l)] = reconnect_bytes.as_slice() {
        for (gap, b) in l {
            if let Some(a) = s.get(gap) {
                report.push(
                    Figure::new(
                        "reconnect",
                        format!(
                            "gap {gap}: bytes at {}k vs at {}k records",
                            large / 1000,
                            small / 1000
                        ),
                        *b as f64,
                        "B",
                    )
                    .against(format!("bytes at {}k", small / 1000), *a as f64)
                    .target(report::Target::RatioAtMost(1.1), "<= 1.1x"),
                );
            }
        }
    }

    let table = report.table();
    println!("{table}");
    for n in &report.notes {
        println!("note: {n}");
    }
    let passed = report
        .figures
        .iter()
        .filter(|f| f.pass() == Some(true))
        .count();
    let short = report
        .figures
        .iter()
        .filter(|f| f.pass() == Some(false))
        .count();
    println!(
        "{passed} targets met, {short} short; {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    let meta = json!({
        "mode": if plan.quick { "quick" } else { "full" },
        "scenarios": chosen,
        "command": args.join(" "),
        "machine": machine(),
        "seconds": started.elapsed().as_secs_f64(),
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    });
    report.write_json(&out, meta)?;
    std::fs::write(out.with_extension("md"), &table)?;
    eprintln!("wrote {}", out.display());
    if let Some(ds) = ds
        && std::env::var_os("KERVAN_BENCH_KEEP").is_some()
    {
        eprintln!("kept the registries in {}", ds.work.keep().display());
    }
    Ok(())
}

//! Queries over the large registry: five shapes against the node's query index, in process and
//! over HTTP, and the same questions answered by a linear scan of the same records.

use std::time::{Duration, Instant};

use anyhow::ensure;
use kervan_node::DataDir;
use kervan_node::query::{AppFilter, Filter, Index};
use kervan_protocol::RecordId;
use kervan_protocol::records::{Application, SECTORS, Startup};

use crate::data::Dataset;
use crate::report::{Figure, Report, Target};
use crate::stats::percentile;
use crate::{Plan, nodes};

const COUNTRIES: [&str; 4] = ["KZ", "UZ", "KG", "AZ"];
/// Words of the sample records; the last matches nothing, so that query reads every record.
const TERMS: [&str; 8] = [
    "satellite",
    "payments",
    "speech",
    "telemedicine",
    "qazaq",
    "robotics",
    "cold-chain",
    "blockchain",
];
const STATUSES: [&str; 5] = ["pending", "accepted", "rejected", "waitlisted", "withdrawn"];
const LIMIT: usize = 50;

/// One question, in the terms of each way of answering it.
#[derive(Clone)]
enum Q {
    ById(RecordId),
    CountrySector(&'static str, &'static str),
    Text(&'static str),
    Deep { cursor: String, after: RecordId },
    Status(&'static str),
}

const SHAPES: [&str; 5] = [
    "by id",
    "by country + sector",
    "text search",
    "paging deep",
    "applications by status",
];

fn shape(q: &Q) -> usize {
    match q {
        Q::ById(_) => 0,
        Q::CountrySector(..) => 1,
        Q::Text(_) => 2,
        Q::Deep { .. } => 3,
        Q::Status(_) => 4,
    }
}

/// Every startup and application the index holds, and a cursor after each page of 500.
struct Walked {
    startups: Vec<Startup>,
    cursors: Vec<(String, RecordId)>,
    apps: Vec<Application>,
}

fn walk(index: &Index) -> anyhow::Result<Walked> {
    let mut startups = Vec::new();
    let mut cursors = Vec::new();
    let mut cursor = None;
    loop {
        let page = index.startups(&Filter {
            limit: Some(500),
            cursor: cursor.clone(),
            ..Filter::default()
        })?;
        startups.extend(page.items);
        match page.next_cursor {
            Some(c) => {
                let last = startups.last().map(|s: &Startup| s.id.clone());
                if let Some(id) = last {
                    cursors.push((c.clone(), id));
                }
                cursor = Some(c);
            }
            None => break,
        }
    }
    let mut apps = Vec::new();
    let mut cursor = None;
    loop {
        let page = index.applications(&AppFilter {
            limit: Some(500),
            cursor: cursor.clone(),
            ..AppFilter::default()
        })?;
        apps.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    Ok(Walked {
        startups,
        cursors,
        apps,
    })
}

fn questions(n: usize, startups: &[Startup], cursors: &[(String, RecordId)]) -> Vec<Q> {
    let mut out = Vec::new();
    let deep: Vec<&(String, RecordId)> = cursors.iter().skip(cursors.len() / 2).collect();
    for i in 0..n {
        let s = &startups[(i * 7919) % startups.len()];
        out.push(Q::ById(s.id.clone()));
        out.push(Q::CountrySector(
            COUNTRIES[i % 4],
            SECTORS[i % SECTORS.len()],
        ));
        out.push(Q::Text(TERMS[i % TERMS.len()]));
        if !deep.is_empty() {
            let (c, id) = deep[i % deep.len()];
            out.push(Q::Deep {
                cursor: c.clone(),
                after: id.clone(),
            });
        }
        out.push(Q::Status(STATUSES[i % STATUSES.len()]));
    }
    out
}

/// Answers from the index; returns the number of records answered.
fn ask_index(index: &Index, q: &Q) -> anyhow::Result<usize> {
    Ok(match q {
        Q::ById(id) => usize::from(index.startup(id).cloned().is_some()),
        Q::CountrySector(c, s) => index
            .startups(&Filter {
                country: Some((*c).into()),
                sector: Some((*s).into()),
                ..Filter::default()
            })?
            .items
            .len(),
        Q::Text(t) => index
            .startups(&Filter {
                q: Some((*t).into()),
                ..Filter::default()
            })?
            .items
            .len(),
        Q::Deep { cursor, .. } => index
            .startups(&Filter {
                cursor: Some(cursor.clone()),
                limit: Some(LIMIT),
                ..Filter::default()
            })?
            .items
            .len(),
        Q::Status(s) => index
            .applications(&AppFilter {
                status: Some((*s).into()),
                ..AppFilter::default()
            })?
            .items
            .len(),
    })
}

/// The same records in plain vectors, in id order, with their search text.
struct Scan {
    startups: Vec<(Startup, String)>,
    apps: Vec<Application>,
}

impl Scan {
    fn ask(&self, q: &Q) -> usize {
        let first = |it: &mut dyn Iterator<Item = &(Startup, String)>| {
            it.take(LIMIT)
                .map(|(s, _)| s.clone())
                .collect::<Vec<_>>()
                .len()
        };
        match q {
            Q::ById(id) => usize::from(
                self.startups
                    .iter()
                    .find(|(s, _)| &s.id == id)
                    .cloned()
                    .is_some(),
            ),
            Q::CountrySector(c, sec) => first(&mut self.startups.iter().filter(|(s, _)| {
                s.country.eq_ignore_ascii_case(c) && s.sectors.iter().any(|x| x == sec)
            })),
            Q::Text(t) => first(&mut self.startups.iter().filter(|(_, text)| text.contains(t))),
            Q::Deep { after, .. } => {
                first(&mut self.startups.iter().filter(|(s, _)| &s.id > after))
            }
            Q::Status(st) => self
                .apps
                .iter()
                .filter(|a| a.status == *st)
                .take(LIMIT)
                .cloned()
                .collect::<Vec<_>>()
                .len(),
        }
    }
}

fn url(base: &str, q: &Q) -> String {
    match q {
        Q::ById(id) => format!("{base}/v1/startups/{id}"),
        Q::CountrySector(c, s) => format!("{base}/v1/startups?country={c}&sector={s}"),
        Q::Text(t) => format!("{base}/v1/startups?q={t}"),
        Q::Deep { cursor, .. } => format!("{base}/v1/startups?cursor={cursor}&limit={LIMIT}"),
        Q::Status(s) => format!("{base}/v1/applications?status={s}"),
    }
}

type Times = [Vec<f64>; 5];

fn time_each(qs: &[Q], mut f: impl FnMut(&Q) -> anyhow::Result<usize>) -> anyhow::Result<Times> {
    let mut out: Times = Default::default();
    for q in qs {
        let started = Instant::now();
        let n = f(q)?;
        out[shape(q)].push(started.elapsed().as_secs_f64());
        std::hint::black_box(n);
    }
    Ok(out)
}

pub(crate) fn run(
    ds: &Dataset,
    plan: &Plan,
    rt: &tokio::runtime::Runtime,
    report: &mut Report,
) -> anyhow::Result<()> {
    const S: &str = "query";
    let stage = ds.stage(plan.large)?;
    let dir = ds.copy(&stage.dir, "query")?;
    let replica = DataDir::new(&dir).open_replica()?;
    let index = replica.index();
    let Walked {
        startups,
        cursors,
        apps,
    } = walk(index)?;
    ensure!(!startups.is_empty(), "no startups to query");
    let qs = questions(plan.queries, &startups, &cursors);
    let scan = Scan {
        startups: startups
            .iter()
            .map(|s| {
                let text = format!(
                    "{} {} {}",
                    s.name,
                    s.summary.as_deref().unwrap_or(""),
                    s.tags.join(" ")
                )
                .to_lowercase();
                (s.clone(), text)
            })
            .collect(),
        apps,
    };
    // Warm both, then time them interleaved by question.
    time_each(&qs[..qs.len().min(100)], |q| ask_index(index, q))?;
    let section = crate::profile::section("query");
    let indexed = time_each(&qs, |q| ask_index(index, q))?;
    drop(section);
    let scanned = time_each(&qs, |q| Ok(scan.ask(q)))?;
    drop(replica);
    let http = rt.block_on(async {
        let node = nodes::start(&dir, Vec::new(), Duration::from_secs(60)).await?;
        let base = format!("http://{}", node.api_addr);
        let bearer = format!("Bearer {}", node.token);
        let qs2 = qs.clone();
        let times = tokio::task::spawn_blocking(move || {
            let agent = ureq::Agent::new_with_defaults();
            time_each(&qs2, |q| {
                let mut resp = agent
                    .get(url(&base, q))
                    .header("Authorization", &bearer)
                    .call()?;
                Ok(resp.body_mut().read_to_vec()?.len())
            })
        })
        .await??;
        node.stop().await?;
        anyhow::Ok(times)
    })?;
    std::fs::remove_dir_all(&dir)?;
    let label = format!("{}k startups", plan.large / 1000);
    for (i, name) in SHAPES.iter().enumerate() {
        let p = |t: &Times, q| percentile(&t[i], q);
        report.push(
            Figure::new(
                S,
                format!("{label}, {name}: in process p50"),
                p(&indexed, 50.0),
                "s",
            )
            .against("linear scan p50", p(&scanned, 50.0)),
        );
        report.push(
            Figure::new(
                S,
                format!("{label}, {name}: in process p99"),
                p(&indexed, 99.0),
                "s",
            )
            .against("linear scan p99", p(&scanned, 99.0))
            .target(Target::AtMost(0.002), "<= 2 ms"),
        );
        report.push(
            Figure::new(
                S,
                format!("{label}, {name}: over HTTP p50"),
                p(&http, 50.0),
                "s",
            )
            .against("linear scan p50", p(&scanned, 50.0)),
        );
        report.push(
            Figure::new(
                S,
                format!("{label}, {name}: over HTTP p99"),
                p(&http, 99.0),
                "s",
            )
            .against("linear scan p99", p(&scanned, 99.0)),
        );
    }
    Ok(())
}

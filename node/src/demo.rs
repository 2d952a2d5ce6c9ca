//! `kervan demo`: a local federation of real parks with sample data, in one command. Each
//! park gets a data directory, the parks share one genesis, each writes its own sample records,
//! and then their nodes start on loopback and converge over the network.

use std::path::Path;
use std::time::{Duration, Instant};

use kervan_protocol::{DeviceKey, FederationId, ParkCard, RecordId};
use serde_json::json;

use crate::data_dir::{DataDir, DataDirError, genesis_file};
use crate::node::{self, NodeError, Overrides, RunningNode};
use crate::replica::Collection;
use crate::sample::Sample;

/// Founding parks of the demo, in the order `--parks N` takes them.
pub const PARKS: [(&str, &str, &str, &str); 6] = [
    ("kz-astana-hub", "Astana Hub", "KZ", "Astana"),
    ("uz-it-park", "IT Park Uzbekistan", "UZ", "Tashkent"),
    (
        "kg-htp",
        "High Technology Park of the Kyrgyz Republic",
        "KG",
        "Bishkek",
    ),
    ("az-sabah-lab", "Sabah Lab", "AZ", "Baku"),
    ("tr-bilisim-vadisi", "Bilişim Vadisi", "TR", "Kocaeli"),
    ("tr-bilkent-cyberpark", "Bilkent Cyberpark", "TR", "Ankara"),
];

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Replica(#[from] crate::ReplicaError),
    #[error("the replica stopped")]
    Stopped,
    #[error("the parks did not converge within {0:?}")]
    NoConvergence(Duration),
}

impl From<crate::actor::Stopped> for DemoError {
    fn from(_: crate::actor::Stopped) -> Self {
        DemoError::Stopped
    }
}

/// Creates `n` parks (2 to 6) under `root`: data directories, one genesis, and in each park's
/// own ledger `per_park` sample startups and two programs (one a Digital Nomad residency).
pub fn prepare(
    root: &Path,
    n: usize,
    per_park: usize,
    seed: u64,
) -> Result<(FederationId, Vec<DataDir>), DemoError> {
    let n = n.clamp(2, PARKS.len());
    let mut dirs = Vec::new();
    let mut cards = Vec::new();
    for (id, name, country, city) in &PARKS[..n] {
        let dir = DataDir::new(root.join(id));
        let card = dir.init(ParkCard {
            id: id.parse().expect("demo park ids are valid"),
            name: (*name).into(),
            country: (*country).into(),
            city: Some((*city).into()),
            website: None,
            device: DeviceKey([0; 32]),
            epoch: String::new(),
            proof: String::new(),
            label: Some("demo".into()),
        })?;
        cards.push(card);
        dirs.push(dir);
    }
    let (federation, genesis) = genesis_file(
        "Organization of Turkic States technopark federation (demo)",
        "The member parks exchange startups, programs and applications as equals; \
         no member hosts the master copy.",
        &cards,
    )
    .map_err(|e| DataDirError::Genesis(e.to_string()))?;
    std::fs::write(root.join("genesis.kvn"), &genesis).map_err(|source| DataDirError::Io {
        path: root.join("genesis.kvn").display().to_string(),
        source,
    })?;
    let mut sample = Sample::new(seed);
    for (i, dir) in dirs.iter().enumerate() {
        dir.join(&genesis)?;
        let mut r = dir.open_replica()?;
        let (_, name, country, _) = PARKS[i];
        for _ in 0..per_park {
            r.create(Collection::Startups, None, &sample.startup(country))?;
        }
        let mut residency = sample.program(name);
        residency["kind"] = json!("residency");
        residency["title"] = json!("Digital Nomad IT residency");
        r.create(Collection::Programs, Some("residency"), &residency)?;
        r.create(Collection::Programs, None, &sample.program(name))?;
        r.snapshot_all()?;
    }
    Ok((federation, dirs))
}

/// Starts every park's node on loopback; each dials the ones started before it.
pub async fn start(
    dirs: &[DataDir],
    sync_interval: Duration,
) -> Result<Vec<RunningNode>, DemoError> {
    let mut nodes: Vec<RunningNode> = Vec::new();
    for dir in dirs {
        let bootstrap = nodes.iter().flat_map(|n| n.p2p_addrs.clone()).collect();
        let o = Overrides {
            api: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            listen: Some(vec![
                "/ip4/127.0.0.1/tcp/0".parse().expect("a valid multiaddr"),
            ]),
            bootstrap: Some(bootstrap),
            sync_interval: Some(sync_interval),
        };
        nodes.push(node::start(dir, dir.config()?, o).await?);
    }
    Ok(nodes)
}

/// Waits until every node has the same digest; answers how long it took.
pub async fn converge(nodes: &[RunningNode], timeout: Duration) -> Result<Duration, DemoError> {
    let started = Instant::now();
    loop {
        let mut digests = Vec::new();
        for n in nodes {
            digests.push(n.replica.call(|r| r.digest()).await?);
        }
        if digests.windows(2).all(|w| w[0] == w[1]) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            return Err(DemoError::NoConvergence(timeout));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each park's first startup applies to the next park's residency. Run once the parks have
/// converged, so every applicant sees the program.
pub async fn apply(nodes: &[RunningNode]) -> Result<Vec<(usize, RecordId)>, DemoError> {
    let n = nodes.len();
    let mut apps = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let host = (i + 1) % n;
        let program = format!("{}/residency", nodes[host].park);
        let park = node.park.clone();
        let app = node
            .replica
            .call(move |r| {
                let filter = crate::query::Filter {
                    park: Some(park),
                    limit: Some(1),
                    ..Default::default()
                };
                let startup = r
                    .index()
                    .startups(&filter)
                    .ok()
                    .and_then(|p| p.items.first().map(|s| s.id.to_string()));
                startup
                    .map(|s| {
                        r.create(
                            Collection::Applications,
                            None,
                            &json!({"startup": s, "program": program,
                                    "message": "We would like to join your residency."}),
                        )
                    })
                    .transpose()
            })
            .await??;
        if let Some(app) = app {
            apps.push((host, app));
        }
    }
    Ok(apps)
}

/// The hosts decide: accepted, waitlisted, rejected in turn.
pub async fn decide(nodes: &[RunningNode], apps: Vec<(usize, RecordId)>) -> Result<(), DemoError> {
    for (k, (host, app)) in apps.into_iter().enumerate() {
        let status = ["accepted", "waitlisted", "rejected"][k % 3];
        nodes[host]
            .replica
            .call(move |r| {
                r.decide(
                    &app,
                    &json!({"status": status, "note": "Decided in the demo"}),
                )
            })
            .await??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_federation_converges_over_the_network() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (_, dirs) = prepare(tmp.path(), 3, 5, 1).expect("prepare");
        let nodes = start(&dirs, Duration::from_millis(300))
            .await
            .expect("start");
        converge(&nodes, Duration::from_secs(60))
            .await
            .expect("converge");
        let apps = apply(&nodes).await.expect("apply");
        assert_eq!(apps.len(), 3);
        converge(&nodes, Duration::from_secs(60))
            .await
            .expect("converge");
        decide(&nodes, apps).await.expect("decide");
        converge(&nodes, Duration::from_secs(60))
            .await
            .expect("converge");
        for n in &nodes {
            let c = n.replica.call(|r| r.index().counts()).await.expect("runs");
            assert_eq!(
                (c.startups, c.programs, c.applications, c.decisions),
                (15, 6, 3, 3)
            );
        }
        for n in nodes {
            n.stop().await.expect("stop");
        }
    }
}

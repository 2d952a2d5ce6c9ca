//! `kervan demo`: a local federation of real parks with sample data, in one command.

use std::path::{Path, PathBuf};

use kervan_protocol::{DeviceKey, FederationId, Hash, ParkCard};
use serde_json::json;

use crate::data_dir::{DataDir, DataDirError, genesis_file};
use crate::replica::{Collection, Replica};
use crate::sample::Sample;
use crate::store::SledStore;

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

/// One park of a demo federation.
#[derive(Debug)]
pub struct DemoPark {
    pub id: String,
    pub dir: PathBuf,
    pub startups: usize,
    pub programs: usize,
    pub applications: usize,
    pub digest: Hash,
}

/// A demo federation, built.
#[derive(Debug)]
pub struct Demo {
    pub federation: FederationId,
    pub parks: Vec<DemoPark>,
}

/// Builds a federation of `n` parks (2 to 6) under `root`: data directories, a genesis,
/// `per_park` sample startups and two programs per park, applications across parks and
/// decisions on them, and the bundles exchanged until every park holds the same registry.
pub fn build(root: &Path, n: usize, per_park: usize, seed: u64) -> Result<Demo, DataDirError> {
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
    let mut replicas: Vec<Replica<SledStore>> = Vec::new();
    for dir in &dirs {
        dir.join(&genesis)?;
        replicas.push(dir.open_replica()?);
    }
    let mut sample = Sample::new(seed);
    for (i, r) in replicas.iter_mut().enumerate() {
        let (_, name, country, _) = PARKS[i];
        for _ in 0..per_park {
            r.create(Collection::Startups, None, &sample.startup(country))?;
        }
        r.create(Collection::Programs, Some("residency"), &{
            let mut p = sample.program(name);
            p["kind"] = json!("residency");
            p["title"] = json!("Digital Nomad IT residency");
            p
        })?;
        r.create(Collection::Programs, None, &sample.program(name))?;
    }
    exchange(&mut replicas)?;
    // Each park's first startup applies to the next park's residency; the host decides.
    let mut apps = Vec::new();
    for i in 0..n {
        let host = PARKS[(i + 1) % n].0;
        let startup = replicas[i]
            .index()
            .startups(&crate::query::Filter {
                park: Some(PARKS[i].0.parse().expect("valid")),
                limit: Some(1),
                ..Default::default()
            })
            .map_err(|e| DataDirError::Genesis(e.to_string()))?
            .items
            .first()
            .map(|s| s.id.to_string());
        if let Some(startup) = startup {
            let app = replicas[i].create(
                Collection::Applications,
                None,
                &json!({"startup": startup, "program": format!("{host}/residency"),
                        "message": "We would like to join your residency."}),
            )?;
            apps.push(((i + 1) % n, app));
        }
    }
    exchange(&mut replicas)?;
    for (k, (host, app)) in apps.iter().enumerate() {
        let status = ["accepted", "waitlisted", "rejected"][k % 3];
        replicas[*host].decide(
            app,
            &json!({"status": status, "note": "Decided in the demo"}),
        )?;
    }
    exchange(&mut replicas)?;
    let mut parks = Vec::new();
    for (i, r) in replicas.iter_mut().enumerate() {
        r.snapshot_all()?;
        let c = r.index().counts();
        parks.push(DemoPark {
            id: PARKS[i].0.into(),
            dir: dirs[i].root().to_path_buf(),
            startups: c.startups,
            programs: c.programs,
            applications: c.applications,
            digest: r.digest(),
        });
    }
    Ok(Demo { federation, parks })
}

/// Every park imports every other park's export.
fn exchange(replicas: &mut [Replica<SledStore>]) -> Result<(), DataDirError> {
    let bundles = replicas
        .iter()
        .map(|r| r.export(None).map(|b| b.encode()))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, r) in replicas.iter_mut().enumerate() {
        for (j, b) in bundles.iter().enumerate() {
            if i != j {
                r.import(b, "demo")
                    .map_err(|e| DataDirError::Genesis(e.to_string()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_federation_converges() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let demo = build(tmp.path(), 3, 5, 1).expect("demo");
        assert_eq!(demo.parks.len(), 3);
        let first = &demo.parks[0];
        for p in &demo.parks {
            assert_eq!(p.digest, first.digest, "{} differs", p.id);
            assert_eq!((p.startups, p.programs, p.applications), (15, 6, 3));
        }
    }
}

//! How long reading one record of a 10k-record ledger back out of Automerge for the query index
//! takes, three ways: `hydrate` and then `records::record_from_automerge` (what the replica
//! did), `records::record_from_doc` (the same JSON, read with `map_range`; what it does now) and
//! one `get` per schema field. Medians of five rounds over every record; a probe for choosing how the query index reads records, not a target.
//!
//! `cargo run --release -p kervan-tests --example read_record`

use std::time::{Duration, Instant};

use automerge::{AutoCommit, ROOT, ReadDoc};
use kervan_tests::median;

fn main() {
    let changes = kervan_tests::sample_ledger(10_000);
    let mut doc = AutoCommit::new();
    doc.apply_changes(changes).expect("apply");
    let Some((_, startups)) = doc.get(&ROOT, "startups").expect("get") else {
        panic!("no startups");
    };
    let records: Vec<automerge::ObjId> = doc.map_range(&startups, ..).map(|i| i.id()).collect();
    let fields = kervan_protocol::records::collection_fields("startups").expect("fields");
    let per_record = |d: Duration| d / records.len() as u32;
    let (mut hydrate, mut direct, mut get) = (Vec::new(), Vec::new(), Vec::new());
    let mut read = [0usize; 3];
    for _ in 0..5 {
        let t = Instant::now();
        for o in &records {
            let value = doc.hydrate(o, None).expect("hydrate");
            let json = kervan_protocol::records::record_from_automerge(fields, &value);
            read[0] += json.as_object().map_or(0, |m| m.len());
        }
        hydrate.push(per_record(t.elapsed()));
        let t = Instant::now();
        for o in &records {
            let json = kervan_protocol::records::record_from_doc(fields, &doc, o);
            read[1] += json.as_object().map_or(0, |m| m.len());
        }
        direct.push(per_record(t.elapsed()));
        let t = Instant::now();
        for o in &records {
            for f in fields {
                read[2] += usize::from(doc.get(o, f.name).expect("get").is_some());
            }
        }
        get.push(per_record(t.elapsed()));
    }
    assert_eq!(read[0], read[1]);
    println!(
        "{} records, per record: hydrate + record_from_automerge {:?}, record_from_doc {:?}, \
         get per field {:?}",
        records.len(),
        median(hydrate),
        median(direct),
        median(get)
    );
}

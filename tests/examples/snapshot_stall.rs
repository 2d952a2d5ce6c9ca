//! What a write costs when it makes its ledger's snapshot due: a park writes `N` sample
//! startups (10,000 unless given) one by one through its replica, each flushed as the API
//! writes them, with snapshots every `N` changes, so that the last writes cross one snapshot
//! of an `N`-record ledger. Prints the median write, the 99th percentile, the slowest write
//! with its number, and the slowest and the sum of the hundred writes after it (which may wait on
//! the store while the snapshot is written). A probe of the replica's tail latency, not a
//! target.
//!
//! `cargo run --release -p kervan-tests --example snapshot_stall [-- N]`

use std::time::{Duration, Instant};

use kervan_node::Collection;
use kervan_tests::{FOUNDING, Federation};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("N is a number of writes"))
        .unwrap_or(10_000);
    let mut fed = Federation::with(&FOUNDING[..1], |c| c.store.snapshot_every = n);
    let mut sample = kervan_node::sample::Sample::new(1);
    let park = fed.park(0);
    let country = park.country.clone();
    let inputs: Vec<_> = (0..n + 100).map(|_| sample.startup(&country)).collect();
    let mut times: Vec<Duration> = Vec::with_capacity(inputs.len());
    for input in &inputs {
        let t = Instant::now();
        park.replica()
            .create(Collection::Startups, None, input)
            .expect("create");
        times.push(t.elapsed());
    }
    let (slowest, max) = times
        .iter()
        .enumerate()
        .max_by_key(|(_, d)| **d)
        .map(|(i, d)| (i + 1, *d))
        .expect("writes");
    let after = &times[slowest..(slowest + 100).min(times.len())];
    let after_max = after.iter().max().copied().unwrap_or_default();
    let after_sum: Duration = after.iter().sum();
    let mut sorted = times.clone();
    sorted.sort();
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    println!(
        "{} writes, snapshots every {n} changes: p50 {:?}, p99 {:?}, slowest {:?} (write {slowest}); the {} writes after it: slowest {:?}, {:?} in all",
        times.len(),
        at(0.5),
        at(0.99),
        max,
        after.len(),
        after_max,
        after_sum,
    );
}

//! `/metrics` in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::replica::{APPLY_BUCKETS, Replica};
use crate::store::{SledStore, Store};

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Renders the node's metrics: changes by outcome, records by kind, API requests by route and
/// status, the apply latency histogram and the store's size.
pub fn render(r: &Replica<SledStore>, requests: &BTreeMap<(String, u16), u64>) -> String {
    let stats = r.stats();
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line("# HELP kervan_changes_accepted_total Changes accepted since start.".into());
    line("# TYPE kervan_changes_accepted_total counter".into());
    line(format!("kervan_changes_accepted_total {}", stats.accepted));
    line("# HELP kervan_changes_rejected_total Changes rejected since start, by reason.".into());
    line("# TYPE kervan_changes_rejected_total counter".into());
    for (reason, n) in &stats.rejected {
        line(format!(
            "kervan_changes_rejected_total{{reason=\"{}\"}} {n}",
            escape(reason)
        ));
    }
    line("# HELP kervan_changes_duplicate_total Changes received again since start.".into());
    line("# TYPE kervan_changes_duplicate_total counter".into());
    line(format!(
        "kervan_changes_duplicate_total {}",
        stats.duplicates
    ));
    line(
        "# HELP kervan_changes_pending Changes waiting for a dependency or a registration.".into(),
    );
    line("# TYPE kervan_changes_pending gauge".into());
    line(format!("kervan_changes_pending {}", r.pending_count()));
    line("# HELP kervan_changes_stored Accepted changes held by this node.".into());
    line("# TYPE kervan_changes_stored gauge".into());
    line(format!("kervan_changes_stored {}", r.accepted_count()));
    let c = r.index().counts();
    line("# HELP kervan_records Records in the query index, by kind.".into());
    line("# TYPE kervan_records gauge".into());
    for (kind, n) in [
        ("parks", c.parks),
        ("startups", c.startups),
        ("programs", c.programs),
        ("applications", c.applications),
        ("decisions", c.decisions),
    ] {
        line(format!("kervan_records{{kind=\"{kind}\"}} {n}"));
    }
    line("# HELP kervan_api_requests_total API requests, by route and status.".into());
    line("# TYPE kervan_api_requests_total counter".into());
    for ((route, status), n) in requests {
        line(format!(
            "kervan_api_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
            escape(route)
        ));
    }
    line("# HELP kervan_apply_seconds Time to apply one batch of accepted changes.".into());
    line("# TYPE kervan_apply_seconds histogram".into());
    for (bound, n) in APPLY_BUCKETS.iter().zip(stats.apply_buckets.iter()) {
        line(format!("kervan_apply_seconds_bucket{{le=\"{bound}\"}} {n}"));
    }
    line(format!(
        "kervan_apply_seconds_bucket{{le=\"+Inf\"}} {}",
        stats.apply_count
    ));
    line(format!("kervan_apply_seconds_sum {}", stats.apply_seconds));
    line(format!("kervan_apply_seconds_count {}", stats.apply_count));
    line("# HELP kervan_store_bytes Size of the store on disk.".into());
    line("# TYPE kervan_store_bytes gauge".into());
    line(format!(
        "kervan_store_bytes {}",
        r.store().size_on_disk().unwrap_or(0)
    ));
    let mut s = String::new();
    let _ = write!(s, "{out}");
    s
}

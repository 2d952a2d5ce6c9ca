//! Profiling hooks: a measured section can switch a `perf record` of this process on and off,
//! so a profile holds the measurement and not the setup around it.
//!
//! ```text
//! mkfifo /tmp/ctl /tmp/ack
//! KERVAN_BENCH_PERF_CTL=/tmp/ctl KERVAN_BENCH_PERF_ACK=/tmp/ack KERVAN_BENCH_PROFILE=ingest \
//!   perf record -g --control fifo:/tmp/ctl,/tmp/ack -D -1 -o ingest.data -- \
//!   target/release/kervan-bench ingest --quick
//! ```

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::sync::{Mutex, OnceLock};

struct Control {
    ctl: File,
    ack: BufReader<File>,
}

fn control() -> Option<&'static Mutex<Control>> {
    static CONTROL: OnceLock<Option<Mutex<Control>>> = OnceLock::new();
    CONTROL
        .get_or_init(|| {
            let ctl = std::env::var_os("KERVAN_BENCH_PERF_CTL")?;
            let ack = std::env::var_os("KERVAN_BENCH_PERF_ACK")?;
            let ctl = OpenOptions::new().write(true).open(ctl).ok()?;
            let ack = BufReader::new(File::open(ack).ok()?);
            Some(Mutex::new(Control { ctl, ack }))
        })
        .as_ref()
}

fn command(cmd: &str) {
    let Some(c) = control() else { return };
    let Ok(mut c) = c.lock() else { return };
    if writeln!(c.ctl, "{cmd}").is_ok() {
        let mut line = String::new();
        let _ = c.ack.read_line(&mut line);
    }
}

/// Profiling is on while this lives, if `KERVAN_BENCH_PROFILE` names this section.
#[derive(Debug)]
pub(crate) struct Section(bool);

pub(crate) fn section(name: &str) -> Section {
    let wanted = std::env::var("KERVAN_BENCH_PROFILE").is_ok_and(|p| p == name);
    if wanted {
        command("enable");
    }
    Section(wanted)
}

impl Drop for Section {
    fn drop(&mut self) {
        if self.0 {
            command("disable");
        }
    }
}

//! Figures, each beside the reference measured in the same run, and their table and JSON.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};

/// When a figure meets its target.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// No target: shown for context.
    None,
    /// value / reference at most this.
    RatioAtMost(f64),
    /// value / reference at least this.
    RatioAtLeast(f64),
    /// value at most this, in the figure's unit.
    AtMost(f64),
    /// value at most this and value / reference at most the second.
    AtMostAndRatio(f64, f64),
    /// value at most reference + this.
    RefPlus(f64),
}

/// One measured figure.
#[derive(Debug, Clone)]
pub(crate) struct Figure {
    pub(crate) scenario: &'static str,
    pub(crate) name: String,
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
    pub(crate) reference: String,
    pub(crate) reference_value: Option<f64>,
    pub(crate) target: Target,
    /// Target text shown in the table, e.g. "<= 1.1x".
    pub(crate) target_text: String,
}

impl Figure {
    pub(crate) fn new(
        scenario: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) -> Self {
        Self {
            scenario,
            name: name.into(),
            value,
            unit,
            reference: String::new(),
            reference_value: None,
            target: Target::None,
            target_text: String::new(),
        }
    }

    pub(crate) fn against(mut self, reference: impl Into<String>, value: f64) -> Self {
        self.reference = reference.into();
        self.reference_value = Some(value);
        self
    }

    pub(crate) fn target(mut self, target: Target, text: impl Into<String>) -> Self {
        self.target = target;
        self.target_text = text.into();
        self
    }

    pub(crate) fn ratio(&self) -> Option<f64> {
        self.reference_value
            .filter(|r| *r != 0.0)
            .map(|r| self.value / r)
    }

    pub(crate) fn pass(&self) -> Option<bool> {
        let ratio = self.ratio();
        match self.target {
            Target::None => None,
            Target::RatioAtMost(t) => ratio.map(|r| r <= t),
            Target::RatioAtLeast(t) => ratio.map(|r| r >= t),
            Target::AtMost(t) => Some(self.value <= t),
            Target::AtMostAndRatio(t, rt) => {
                Some(self.value <= t && ratio.is_some_and(|r| r <= rt))
            }
            Target::RefPlus(extra) => self.reference_value.map(|r| self.value <= r + extra),
        }
    }

    fn json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "reference": self.reference,
            "reference_value": self.reference_value,
            "ratio": self.ratio(),
            "target": self.target_text,
            "pass": self.pass(),
        })
    }
}

/// Formats a value in its unit, compactly.
pub(crate) fn show(v: f64, unit: &str) -> String {
    match unit {
        "B" => {
            if v >= 10_000_000.0 {
                format!("{:.1} MB", v / 1e6)
            } else if v >= 10_000.0 {
                format!("{:.1} KB", v / 1e3)
            } else {
                format!("{v:.0} B")
            }
        }
        "s" => {
            if v >= 1.0 {
                format!("{v:.2} s")
            } else if v >= 1e-3 {
                format!("{:.2} ms", v * 1e3)
            } else {
                format!("{:.1} µs", v * 1e6)
            }
        }
        "/s" => {
            if v >= 10_000.0 {
                format!("{:.1}k/s", v / 1e3)
            } else {
                format!("{v:.0}/s")
            }
        }
        "MB" => format!("{v:.0} MB"),
        "" => format!("{v:.0}"),
        other => format!("{v:.2} {other}"),
    }
}

/// Every figure of a run.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) figures: Vec<Figure>,
    pub(crate) notes: Vec<String>,
}

impl Report {
    pub(crate) fn push(&mut self, f: Figure) {
        eprintln!("  {}", line(&f));
        self.figures.push(f);
    }

    pub(crate) fn note(&mut self, n: impl Into<String>) {
        let n = n.into();
        eprintln!("  note: {n}");
        self.notes.push(n);
    }

    /// The table as Markdown.
    pub(crate) fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "| scenario | figure | Kervan | reference | ref. value | ratio | target | result |\n",
        );
        out.push_str("|---|---|---:|---|---:|---:|---|---|\n");
        for f in &self.figures {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                f.scenario,
                f.name,
                show(f.value, f.unit),
                f.reference,
                f.reference_value.map_or(String::new(), |r| show(r, f.unit)),
                f.ratio().map_or(String::new(), ratio),
                f.target_text,
                match f.pass() {
                    None => "",
                    Some(true) => "pass",
                    Some(false) => "**short**",
                }
            );
        }
        out
    }

    pub(crate) fn write_json(&self, path: &Path, meta: Value) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let doc = json!({
            "meta": meta,
            "figures": self.figures.iter().map(Figure::json).collect::<Vec<_>>(),
            "notes": self.notes,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)?;
        Ok(())
    }
}

fn ratio(r: f64) -> String {
    if r < 0.1 {
        format!("{r:.3}")
    } else {
        format!("{r:.2}")
    }
}

fn line(f: &Figure) -> String {
    let mut s = format!(
        "{:<12} {:<52} {:>12}",
        f.scenario,
        f.name,
        show(f.value, f.unit)
    );
    if let Some(r) = f.reference_value {
        let _ = write!(s, "  vs {} {}", f.reference, show(r, f.unit));
    }
    if let Some(r) = f.ratio() {
        let _ = write!(s, "  ratio {}", ratio(r));
    }
    match f.pass() {
        Some(true) => s.push_str("  pass"),
        Some(false) => s.push_str("  SHORT"),
        None => {}
    }
    s
}

//! The report: rows for every policy × budget × encoding, as a table for people and as JSON for
//! machines (recalls as fractions in JSON, percentages in the table).

use std::fmt::Write as _;
use std::io::{self, Write};

use serde::Serialize;

use crate::collapse::CollapseMode;

use super::metrics::Row;

/// What was run: enough to reproduce it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunSummary {
    /// Trace names, in the order given.
    pub traces: Vec<String>,
    /// Trace events replayed (needles not included).
    pub events: u64,
    /// recap's collapse mode.
    pub collapse: CollapseMode,
    /// A context is taken after every this many trace events, and at the end.
    pub every: usize,
    /// Needle seed.
    pub seed: u64,
    /// Notes, and critical events, planted per trace.
    pub needles_per_trace: usize,
    /// Weight overrides given to recap, if any.
    pub weights: Option<String>,
}

/// One trace's rows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TraceRows {
    /// The trace.
    pub trace: String,
    /// Its rows.
    pub rows: Vec<Row>,
}

/// Everything a run measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// One row per policy × budget × encoding, over all traces; sorted by encoding, budget and
    /// policy.
    pub rows: Vec<Row>,
    /// What was run.
    pub run: RunSummary,
    /// The same rows per trace (shown with `--per-trace`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_trace: Vec<TraceRows>,
}

impl Report {
    /// Writes the report as JSON: `{"rows": [...], "run": {...}}`, plus `per_trace` when kept.
    pub fn write_json(&self, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer_pretty(&mut *out, self)?;
        out.write_all(b"\n")
    }

    /// Writes the report as a table: the pooled rows, then each trace's when kept.
    pub fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        let run = &self.run;
        writeln!(
            out,
            "recap bench budgets: {} trace{}, {} events, a context every {} events and at the end; collapse {}; {} notes + {} critical needles per trace (seed {}){}",
            run.traces.len(),
            if run.traces.len() == 1 { "" } else { "s" },
            thousands(run.events),
            run.every,
            run.collapse,
            run.needles_per_trace,
            run.needles_per_trace,
            run.seed,
            run.weights
                .as_ref()
                .map(|w| format!("; weights {w}"))
                .unwrap_or_default(),
        )?;
        out.write_all(table(&self.rows).as_bytes())?;
        if let Some(row) = self.rows.first() {
            writeln!(
                out,
                "severe = trace events of severity error or above visible as a line ({} observations per row); needles = planted markers visible ({} observations per row).",
                thousands(row.severe_observations),
                thousands(row.needle_observations),
            )?;
        }
        for trace in &self.per_trace {
            writeln!(out, "\n{}", trace.trace)?;
            out.write_all(table(&trace.rows).as_bytes())?;
        }
        Ok(())
    }
}

/// Rows as aligned columns.
pub fn table(rows: &[Row]) -> String {
    const HEADER: [&str; 14] = [
        "encoding",
        "budget",
        "policy",
        "severe",
        "needles",
        "mean tok",
        "max tok",
        "shown rec",
        "shown ev",
        "elided ev",
        "kinds",
        "ev/rec",
        "p50 µs",
        "p99 µs",
    ];
    let percent =
        |value: Option<f64>| value.map_or("-".to_owned(), |v| format!("{:.1}%", v * 100.0));
    let cells: Vec<[String; 14]> = rows
        .iter()
        .map(|row| {
            let over = if row.over_budget_moments > 0 {
                " OVER"
            } else {
                ""
            };
            [
                row.encoding.to_string(),
                thousands(u64::from(row.budget)),
                row.policy.as_str().to_owned(),
                percent(row.severe_recall),
                percent(row.needle_recall),
                format!("{:.0}", row.mean_tokens),
                format!("{}{over}", thousands(u64::from(row.max_tokens))),
                format!("{:.1}", row.mean_shown_records),
                format!("{:.1}", row.mean_shown_events),
                format!("{:.1}", row.mean_elided_events),
                format!("{:.1}", row.mean_kinds_shown),
                format!("{:.2}", row.collapse_ratio),
                format!("{:.1}", row.build_p50_us),
                format!("{:.1}", row.build_p99_us),
            ]
        })
        .collect();
    let mut widths = HEADER.map(|h| h.chars().count());
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        for (index, (cell, width)) in cells.iter().zip(widths).enumerate() {
            let pad = width - cell.chars().count();
            // Names left-aligned, numbers right-aligned.
            if index == 0 || index == 2 {
                let _ = write!(out, "{cell}{}", " ".repeat(pad));
            } else {
                let _ = write!(out, "{}{cell}", " ".repeat(pad));
            }
            out.push_str(if index + 1 == cells.len() { "\n" } else { "  " });
        }
    };
    line(&HEADER.map(str::to_owned));
    let mut previous: Option<(String, u32)> = None;
    for (row, cells) in rows.iter().zip(&cells) {
        // A blank line between budgets keeps the three policies of one budget together.
        let group = (row.encoding.to_string(), row.budget);
        if previous.as_ref().is_some_and(|p| *p != group) {
            line(&widths.map(|_| String::new()));
        }
        previous = Some(group);
        line(cells);
    }
    out.lines()
        .map(|l| l.trim_end().to_owned() + "\n")
        .collect()
}

/// `13629` as `13,629`.
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(13_629), "13,629");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}

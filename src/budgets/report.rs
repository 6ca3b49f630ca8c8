//! The report: rows for every policy × budget × encoding, as a table for people and as JSON for
//! machines (recalls as fractions in JSON, percentages in the table).

use std::fmt::Write as _;
use std::io::{self, Write};

use serde::Serialize;

use crate::collapse::CollapseMode;

use super::anomalies::TraceAnomalies;
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
    /// Anomalies detection raised on each trace, in the order given.
    pub anomalies: Vec<TraceAnomalies>,
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
        out.write_all(legend(&self.rows).as_bytes())?;
        for trace in &self.per_trace {
            writeln!(out, "\n{}", trace.trace)?;
            out.write_all(table(&trace.rows).as_bytes())?;
        }
        out.write_all(super::anomalies::table(&self.anomalies).as_bytes())?;
        Ok(())
    }
}

/// What the columns mean, with the observations each fraction is over.
fn legend(rows: &[Row]) -> String {
    let Some(first) = rows.first() else {
        return String::new();
    };
    let mut encodings: Vec<String> = rows.iter().map(|r| r.encoding.to_string()).collect();
    encodings.dedup();
    let newest_low = rows
        .iter()
        .map(|r| r.newest_observations)
        .min()
        .unwrap_or(0);
    let newest_high = rows
        .iter()
        .map(|r| r.newest_observations)
        .max()
        .unwrap_or(0);
    let newest = if newest_low == newest_high {
        thousands(newest_low)
    } else {
        format!("{} to {}", thousands(newest_low), thousands(newest_high))
    };
    let entries = [
        (
            "severe recall",
            format!(
                "trace events of severity error or above visible, whole or as a headline ({} observations per row)",
                thousands(first.severe_observations)
            ),
        ),
        (
            "task visible",
            format!(
                "the trace's first task/user event visible, whole or as a headline ({} moments per row)",
                thousands(first.task_observations)
            ),
        ),
        (
            "newest whole",
            format!(
                "the newest trace event's line shown whole and unclipped, at the moments where it takes at most a quarter of the budget ({newest} moments per row)"
            ),
        ),
        (
            "needle recall",
            format!(
                "planted markers in the text ({} observations per row)",
                thousands(first.needle_observations)
            ),
        ),
        (
            "shown",
            "records shown per window, whole + as headlines (every baseline line counts as whole)"
                .to_owned(),
        ),
        (
            "tokens",
            format!(
                "counted with {} over each whole text",
                encodings.join(" and ")
            ),
        ),
    ];
    let width = entries
        .iter()
        .map(|(name, _)| name.len())
        .max()
        .unwrap_or(0);
    entries
        .iter()
        .map(|(name, meaning)| format!("{name:<width$}  {meaning}\n"))
        .collect()
}

/// The table's columns: (header, whether the cells are names, left-aligned).
const COLUMNS: [(&str, bool); 11] = [
    ("encoding", true),
    ("budget", false),
    ("policy", true),
    ("severe recall", false),
    ("task visible", false),
    ("newest whole", false),
    ("needle recall", false),
    ("mean tok", false),
    ("max tok", false),
    ("shown (whole + headline)", false),
    ("build p50 µs", false),
];

/// Rows as aligned columns; the encoding column only when the rows count in several.
pub fn table(rows: &[Row]) -> String {
    let percent =
        |value: Option<f64>| value.map_or("-".to_owned(), |v| format!("{:.1}%", v * 100.0));
    let cells: Vec<[String; 11]> = rows
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
                percent(row.task_visible),
                percent(row.newest_whole),
                percent(row.needle_recall),
                thousands(row.mean_tokens.round() as u64),
                format!("{}{over}", thousands(u64::from(row.max_tokens))),
                format!(
                    "{:.1} ({:.1} + {:.1})",
                    row.mean_shown_records, row.mean_shown_whole, row.mean_shown_headlines
                ),
                format!("{:.1}", row.build_p50_us),
            ]
        })
        .collect();
    let several_encodings = rows.iter().any(|row| row.encoding != rows[0].encoding);
    let shown: Vec<usize> = (0..COLUMNS.len())
        .filter(|&column| column != 0 || several_encodings)
        .collect();
    let mut widths = COLUMNS.map(|(header, _)| header.chars().count());
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        for (position, &column) in shown.iter().enumerate() {
            let cell = &cells[column];
            let pad = " ".repeat(widths[column] - cell.chars().count());
            if COLUMNS[column].1 {
                let _ = write!(out, "{cell}{pad}");
            } else {
                let _ = write!(out, "{pad}{cell}");
            }
            out.push_str(if position + 1 == shown.len() {
                "\n"
            } else {
                "  "
            });
        }
    };
    line(&COLUMNS.map(|(header, _)| header.to_owned()));
    let mut previous: Option<(String, u32)> = None;
    for (row, cells) in rows.iter().zip(&cells) {
        // A blank line between budgets keeps the three policies of one budget together.
        let group = (row.encoding.to_string(), row.budget);
        if previous.as_ref().is_some_and(|p| *p != group) {
            line(&COLUMNS.map(|_| String::new()));
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
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budgets::metrics::{Observation, Policy, RowKey, Tally};
    use crate::tokens::Encoding;

    fn row(encoding: Encoding, policy: Policy) -> Row {
        let mut tally = Tally::default();
        tally.add(
            &Observation {
                tokens: 200,
                shown_records: 5,
                shown_whole: 3,
                shown_headlines: 2,
                task_total: 1,
                task_visible: 1,
                ..Observation::default()
            },
            256,
        );
        let key = RowKey {
            encoding,
            budget: 256,
            policy,
        };
        tally.row(key, CollapseMode::Exact)
    }

    #[test]
    fn the_table_splits_records_shown_and_names_encodings_only_when_several() {
        let one = table(&[row(Encoding::Cl100kBase, Policy::Recap)]);
        let mut lines = one.lines();
        let header = lines.next().unwrap();
        assert!(header.starts_with("budget  policy"), "{header}");
        assert!(header.contains("shown (whole + headline)"), "{header}");
        let cells = lines.next().unwrap();
        assert!(cells.contains("5.0 (3.0 + 2.0)"), "{cells}");
        // Task seen at its one moment; no severe event, no short newest line, no needle.
        assert!(cells.contains("100.0%"), "{cells}");
        let dashes = cells.split_whitespace().filter(|cell| *cell == "-").count();
        assert_eq!(dashes, 3, "{cells}");

        let two = table(&[
            row(Encoding::Cl100kBase, Policy::Recap),
            row(Encoding::O200kBase, Policy::Recap),
        ]);
        assert!(two.starts_with("encoding     budget  policy"), "{two}");
        assert!(two.contains("\no200k_base"), "{two}");
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(13_629), "13,629");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}

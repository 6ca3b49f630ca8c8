//! The SVG plot: what each policy keeps in view against budget, one line per policy (per
//! encoding when several), in four panels of one scale (0 to 100%): severity ≥ error recall and
//! task visible above, newest whole and needle recall below ([`super::metrics`] defines them).
//! head+tail is drawn dashed, as it often coincides with recency.

use std::error::Error;
use std::path::Path;

use plotters::prelude::*;

use crate::tokens::Encoding;

use super::BudgetsError;
use super::metrics::{Policy, Row};

/// Plot size in pixels: four panels, two by two.
const SIZE: (u32, u32) = (1_100, 880);

/// A fraction read off a row.
type Metric = fn(&Row) -> Option<f64>;

/// The panels, in reading order: title, y-axis label, metric.
const PANELS: [(&str, &str, Metric); 4] = [
    ("severity ≥ error recall", "events visible", |row| {
        row.severe_recall
    }),
    ("task visible", "moments visible", |row| row.task_visible),
    (
        "newest whole (line ≤ budget/4)",
        "moments shown whole",
        |row| row.newest_whole,
    ),
    ("needle recall", "needles visible", |row| row.needle_recall),
];

/// Writes the plot of `rows` to `path`.
pub fn write_svg(path: &Path, rows: &[Row]) -> Result<(), BudgetsError> {
    draw(path, rows).map_err(|error| BudgetsError::Svg {
        path: path.display().to_string(),
        detail: error.to_string(),
    })
}

fn color(policy: Policy) -> RGBColor {
    match policy {
        Policy::Recap => RGBColor(31, 119, 180),
        Policy::Recency => RGBColor(214, 39, 40),
        Policy::HeadTail => RGBColor(44, 160, 44),
    }
}

fn draw(path: &Path, rows: &[Row]) -> Result<(), Box<dyn Error>> {
    let mut budgets: Vec<u32> = rows.iter().map(|r| r.budget).collect();
    budgets.sort_unstable();
    budgets.dedup();
    let mut encodings: Vec<Encoding> = rows.iter().map(|r| r.encoding).collect();
    encodings.sort_unstable();
    encodings.dedup();
    // Budgets double from one to the next: plot them on a log2 axis, labelled in tokens.
    let log2 = |budget: u32| f64::from(budget.max(1)).log2();
    let (mut low, mut high) = (
        budgets.first().map_or(8.0, |b| log2(*b)),
        budgets.last().map_or(13.0, |b| log2(*b)),
    );
    if high - low < 1.0 {
        low -= 0.5;
        high += 0.5;
    }

    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((2, 2));
    for (panel, (title, y_desc, metric)) in panels.iter().zip(PANELS) {
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(42)
            .y_label_area_size(56)
            .build_cartesian_2d(low..high, 0.0f64..1.05)?;
        chart
            .configure_mesh()
            .x_desc("budget (tokens)")
            .y_desc(y_desc)
            .x_labels(((high - low).round() as usize) + 1)
            .x_label_formatter(&|x| format!("{}", x.exp2().round()))
            .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
            .draw()?;
        for policy in Policy::ALL {
            for &encoding in &encodings {
                let points: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| r.policy == policy && r.encoding == encoding)
                    .filter_map(|r| metric(r).map(|recall| (log2(r.budget), recall)))
                    .collect();
                let label = if encodings.len() > 1 {
                    format!("{} ({encoding})", policy.as_str())
                } else {
                    policy.as_str().to_owned()
                };
                let color = color(policy);
                let style = color.stroke_width(2);
                // The baselines often coincide (the same newest events): head+tail is dashed so
                // that recency shows through it.
                let series = if policy == Policy::HeadTail {
                    chart.draw_series(DashedLineSeries::new(points.clone(), 9, 6, style))?
                } else {
                    chart.draw_series(LineSeries::new(points.clone(), style))?
                };
                series.label(label).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 16, y + 5)], color.filled())
                });
                chart.draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 3, color.filled())),
                )?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::MiddleRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

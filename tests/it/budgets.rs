//! `recap bench budgets` end to end on small fixture traces: the JSON rows, the budget promise,
//! determinism, needles, and the SVG plot.

use std::path::PathBuf;

use clap::Parser;
use recap::budgets::{self, BudgetsArgs, BudgetsError};
use serde_json::Value;

use crate::support::fixtures;

/// The options as the binary parses them.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BudgetsArgs,
}

fn args(extra: &[&str]) -> BudgetsArgs {
    // pydicom has severe events from its first moment on; reflexion gives many moments.
    let traces = [
        "swe-agent__gpt4-pydicom__pydicom-1458.jsonl",
        "reflexion__trial1-head300.jsonl",
    ]
    .map(|name| fixtures().join("traces").join(name));
    let mut argv: Vec<String> = vec!["bench-budgets".into()];
    argv.extend(traces.iter().map(|p| p.display().to_string()));
    argv.extend(["--budgets", "256,1024,4096", "--every", "25"].map(String::from));
    argv.extend(extra.iter().map(|s| (*s).to_owned()));
    Cli::try_parse_from(argv).unwrap().args
}

fn run_json(args: &BudgetsArgs) -> Value {
    let mut out = Vec::new();
    budgets::run(args, &mut out, false).unwrap();
    serde_json::from_slice(&out).unwrap()
}

/// The JSON minus the fields that measure time, which vary from run to run.
fn without_timing(mut json: Value) -> Value {
    for row in json["rows"].as_array_mut().unwrap() {
        let row = row.as_object_mut().unwrap();
        row.remove("build_p50_us");
        row.remove("build_p99_us");
    }
    json
}

#[test]
fn json_rows_cover_every_policy_and_budget_within_budget_and_repeat_exactly() {
    let args = args(&["--json", "--encodings", "cl100k_base,o200k_base"]);
    let json = run_json(&args);
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3 * 3 * 2, "policy × budget × encoding");
    for encoding in ["cl100k_base", "o200k_base"] {
        for budget in [256, 1024, 4096] {
            for policy in ["recap", "recency", "head+tail"] {
                let matching = rows
                    .iter()
                    .filter(|r| {
                        r["policy"] == policy && r["budget"] == budget && r["encoding"] == encoding
                    })
                    .count();
                assert_eq!(matching, 1, "{policy} at {budget} ({encoding})");
            }
        }
    }
    for row in rows {
        let budget = row["budget"].as_u64().unwrap();
        assert!(row["max_tokens"].as_u64().unwrap() <= budget, "{row}");
        assert!(
            row["mean_tokens"].as_f64().unwrap() <= budget as f64,
            "{row}"
        );
        assert_eq!(row["over_budget_moments"], 0, "{row}");
        for recall in ["severe_recall", "needle_recall"] {
            let value = row[recall].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&value), "{recall} = {value}");
        }
        assert!(row["severe_observations"].as_u64().unwrap() > 0);
        // pydicom's 2 moments (after 25 of 28 events, and at the end) and reflexion's 12.
        assert_eq!(row["moments"], 14, "{row}");
    }
    assert_eq!(
        without_timing(run_json(&args)),
        without_timing(json),
        "a fixed seed gives the same results"
    );
}

#[test]
fn needles_are_planted_and_found_at_a_generous_budget() {
    let json = run_json(&args(&["--json", "--seed", "11", "--needles", "2"]));
    let rows = json["rows"].as_array().unwrap();
    let recap_4096 = rows
        .iter()
        .find(|r| r["policy"] == "recap" && r["budget"] == 4096)
        .unwrap();
    // 2 notes + 2 critical events per trace, each observed at every moment after it is planted.
    let observations = recap_4096["needle_observations"].as_u64().unwrap();
    assert!(observations >= 4 * 2, "{recap_4096}");
    assert_eq!(recap_4096["needle_recall"], 1.0, "{recap_4096}");
    // The baselines see the same needles (as events), so they are asked about as many.
    for row in rows.iter().filter(|r| r["budget"] == 4096) {
        assert_eq!(row["needle_observations"].as_u64(), Some(observations));
    }
}

#[test]
fn the_table_names_every_policy_at_every_budget() {
    let mut out = Vec::new();
    budgets::run(&args(&["--per-trace"]), &mut out, false).unwrap();
    let table = String::from_utf8(out).unwrap();
    assert!(
        table.starts_with("recap bench budgets: 2 traces, 328 events"),
        "{table}"
    );
    for budget in ["256", "1,024", "4,096"] {
        for policy in ["recap", "recency", "head+tail"] {
            let row = format!(" {budget}  {policy}");
            // Pooled, and once per trace.
            assert_eq!(table.matches(&row).count(), 3, "{row}\n{table}");
        }
    }
    assert!(table.contains("reflexion/hotpotqa-react-reflexion-trial1"));
    assert!(!table.contains("OVER"), "{table}");
}

#[test]
fn the_svg_plot_has_one_series_per_policy_in_each_panel() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("budgets.svg");
    let mut args = args(&[]);
    args.svg = Some(path.clone());
    budgets::run(&args, &mut Vec::new(), false).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("xmlns=\"http://www.w3.org/2000/svg\""));
    assert_eq!(
        svg.matches("<svg").count(),
        svg.matches("</svg>").count(),
        "balanced root"
    );
    // Series are the only width-2 lines; axes and ticks are width 1.
    let series: Vec<&str> = svg
        .lines()
        .filter(|l| l.starts_with("<polyline") && l.contains("stroke-width=\"2\""))
        .collect();
    assert_eq!(series.len(), 2 * 3, "two panels × three policies");
    let mut colors: Vec<&str> = series
        .iter()
        .map(|l| {
            l.split("stroke=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
        })
        .collect();
    colors.sort_unstable();
    colors.dedup();
    assert_eq!(colors.len(), 3, "one color per policy");
    for line in &series {
        // Three budgets: three points per line.
        let points = line
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(points.split_whitespace().count(), 3, "{line}");
    }
    for label in [
        "recap",
        "recency",
        "head+tail",
        "needle recall",
        "severity ≥ error recall",
    ] {
        assert!(svg.contains(label), "{label} missing");
    }
}

#[test]
fn bad_options_are_usage_errors_that_say_what_to_do() {
    let mut zero = args(&[]);
    zero.budgets = vec![0];
    let error = budgets::run(&zero, &mut Vec::new(), false).unwrap_err();
    assert!(error.is_usage());
    assert!(error.to_string().contains("use 1 to"), "{error}");

    let error =
        budgets::run(&args(&["--weights", "kind.tool"]), &mut Vec::new(), false).unwrap_err();
    assert!(error.is_usage(), "{error}");

    let mut missing = args(&[]);
    missing
        .files
        .push(PathBuf::from("/nonexistent/trace.jsonl"));
    let error = budgets::run(&missing, &mut Vec::new(), false).unwrap_err();
    assert!(matches!(error, BudgetsError::Trace(_)) && !error.is_usage());

    assert!(Cli::try_parse_from(["b", "x.jsonl", "--collapse", "fuzzy"]).is_err());
    assert!(Cli::try_parse_from(["b", "x.jsonl", "--encodings", "p50k_base"]).is_err());
    assert!(
        Cli::try_parse_from(["b"]).is_err(),
        "a trace file is required"
    );
}

//! `recap bench budgets` end to end on small fixture traces: the JSON rows, the budget promise,
//! determinism, needles, the task and newest-event metrics, and the SVG plot.

use std::path::{Path, PathBuf};

use clap::Parser;
use recap::budgets::{self, BudgetsArgs, BudgetsError};
use recap::event::{Event, Severity, parse_timestamp};
use recap::render;
use recap::tokens::Encoding;
use serde_json::{Value, json};

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
        for fraction in ["task_visible", "newest_whole"] {
            let value = row[fraction].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&value), "{fraction} = {value}");
        }
        // Both traces state their task before the first moment: every moment asks about it.
        assert_eq!(row["task_observations"], 14, "{row}");
        let newest = row["newest_observations"].as_u64().unwrap();
        assert!(newest > 0 && newest <= 14, "{row}");
        let (whole, headlines, shown) = (
            row["mean_shown_whole"].as_f64().unwrap(),
            row["mean_shown_headlines"].as_f64().unwrap(),
            row["mean_shown_records"].as_f64().unwrap(),
        );
        assert!((whole + headlines - shown).abs() < 1e-9, "{row}");
        if row["policy"] != "recap" {
            assert_eq!(headlines, 0.0, "a baseline shows no headlines: {row}");
        }
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

/// Writes a trace file of `events` (kind, message), one second apart, and returns its path.
fn write_trace(dir: &Path, name: &str, events: &[(&str, String)]) -> PathBuf {
    let t0 = parse_timestamp("2024-05-01T10:00:00Z").unwrap();
    let lines: Vec<String> = events
        .iter()
        .enumerate()
        .map(|(i, (kind, message))| {
            let ts = t0 + chrono::TimeDelta::seconds(i as i64);
            json!({
                "stream": format!("synthetic/{name}"),
                "ts": ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "kind": kind,
                "severity": "info",
                "message": message,
            })
            .to_string()
        })
        .collect();
    let path = dir.join(format!("{name}.jsonl"));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// The tokens of an info event's full line, as the bench counts it.
fn line_tokens(kind: &str, message: &str) -> u32 {
    let event = Event::new(kind, Severity::Info, message).unwrap();
    let ts = parse_timestamp("2024-05-01T10:00:00Z").unwrap();
    let record = recap::event::Record::from_event(event, 1, 1, ts);
    Encoding::Cl100kBase.count(&render::record_line(&record))
}

fn row<'a>(json: &'a Value, policy: &str, budget: u32) -> &'a Value {
    json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["policy"] == policy && r["budget"] == budget)
        .unwrap_or_else(|| panic!("no {policy} row at {budget}"))
}

#[test]
fn recap_keeps_the_task_and_the_newest_event_in_view_where_the_baselines_lose_them() {
    // The task comes first; then 60 tool outputs, each longer than a 512-token window's line cap
    // (64) but within a quarter of it (128); the last event is a short result.
    let task = "Fix the flaky login test in auth/session.py without touching the schema".to_owned();
    let mut events = vec![("task", task)];
    for i in 0..60 {
        let body: Vec<String> = (0..13).map(|k| format!("session{i}_{k}=ok")).collect();
        events.push((
            "tool",
            format!("pytest auth -k login run {i}: {}", body.join(" ")),
        ));
    }
    events.push(("tool", "pytest auth: 12 passed".to_owned()));
    for (kind, message) in &events[1..61] {
        let tokens = line_tokens(kind, message);
        assert!(tokens > 64 && tokens <= 128, "{tokens}: {message}");
    }
    assert!(line_tokens("tool", "pytest auth: 12 passed") <= 32);

    let dir = tempfile::tempdir().unwrap();
    let path = write_trace(dir.path(), "task-first", &events);
    let argv = [
        "bench-budgets",
        path.to_str().unwrap(),
        "--budgets",
        "512",
        "--every",
        "10",
        "--needles",
        "0",
        "--json",
        // 60 test runs that differ only in their numbers are one action repeated: the anomaly
        // raised about it takes room in the window too (the `anomalies` tests cover it).
        "--no-anomalies",
    ];
    let json = run_json(&Cli::try_parse_from(argv).unwrap().args);
    // Moments after 10, 20, ..., 60 events and at the end (61 events).
    let recap = row(&json, "recap", 512);
    assert_eq!(recap["moments"], 7, "{recap}");
    // The task is in every window recap builds, from the first moment to the last.
    assert_eq!(
        (&recap["task_visible"], &recap["task_observations"]),
        (&json!(1.0), &json!(7)),
        "{recap}"
    );
    // Every newest event fits in a quarter of the budget, and recap shows each one whole.
    assert_eq!(
        (&recap["newest_whole"], &recap["newest_observations"]),
        (&json!(1.0), &json!(7)),
        "{recap}"
    );
    assert!(
        recap["mean_shown_whole"].as_f64().unwrap() >= 2.0,
        "{recap}"
    );
    for baseline in ["recency", "head+tail"] {
        let row = row(&json, baseline, 512);
        // Eight clipped outputs fill 512 tokens: the task scrolls out before the first moment.
        assert_eq!(
            (&row["task_visible"], &row["task_observations"]),
            (&json!(0.0), &json!(7)),
            "{row}"
        );
        // Asked about the same newest events, a baseline clips every output to the line cap:
        // only the short last result is shown whole.
        assert_eq!(row["newest_observations"], 7, "{row}");
        assert_eq!(row["newest_whole"].as_f64(), Some(1.0 / 7.0), "{row}");
        assert_eq!(row["mean_shown_headlines"], 0.0, "{row}");
        assert_eq!(row["mean_shown_whole"], row["mean_shown_records"], "{row}");
    }
}

#[test]
fn a_trace_without_a_task_or_a_short_newest_event_has_no_such_observations() {
    // No task or user event, and every event (so the newest one at every moment) is longer than
    // a quarter of a 256-token budget.
    let events: Vec<(&str, String)> = (0..12)
        .map(|i| {
            (
                "observation",
                format!("page {i}: {}", "lorem ipsum dolor ".repeat(40)),
            )
        })
        .collect();
    assert!(line_tokens("observation", &events[0].1) > 64);
    let dir = tempfile::tempdir().unwrap();
    let path = write_trace(dir.path(), "no-task", &events);
    let argv = [
        "bench-budgets",
        path.to_str().unwrap(),
        "--budgets",
        "256",
        "--every",
        "5",
        "--json",
    ];
    let json = run_json(&Cli::try_parse_from(argv).unwrap().args);
    for policy in ["recap", "recency", "head+tail"] {
        let row = row(&json, policy, 256);
        assert_eq!(row["moments"], 3, "{row}");
        for (fraction, observations) in [
            ("task_visible", "task_observations"),
            ("newest_whole", "newest_observations"),
        ] {
            assert_eq!(row[fraction], Value::Null, "{row}");
            assert_eq!(row[observations], 0, "{row}");
        }
    }
    // The table says "-" rather than a made-up percentage.
    let mut out = Vec::new();
    let mut args = Cli::try_parse_from(&argv[..7]).unwrap().args;
    args.json = false;
    budgets::run(&args, &mut out, false).unwrap();
    let table = String::from_utf8(out).unwrap();
    // Severe recall is "-" as well: the trace has no error event.
    let recap_line = table.lines().find(|l| l.contains(" recap ")).unwrap();
    assert_eq!(recap_line.matches(" - ").count(), 3, "{table}");
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
    let header = table.lines().nth(1).unwrap();
    for column in [
        "budget",
        "policy",
        "severe recall",
        "task visible",
        "newest whole",
        "needle recall",
        "mean tok",
        "max tok",
        "shown (whole + headline)",
        "build p50 µs",
    ] {
        assert!(header.contains(column), "{column} missing from {header}");
    }
    // One encoding: no encoding column, but the legend names it.
    assert!(!header.contains("encoding"), "{header}");
    assert!(table.contains("counted with cl100k_base"), "{table}");
    // Records shown, split into whole + headline: a baseline's are all whole.
    let recency = table.lines().find(|l| l.contains(" 256  recency")).unwrap();
    let shown = recency
        .split("  ")
        .map(str::trim)
        .find(|cell| cell.ends_with(" + 0.0)"))
        .unwrap_or_else(|| panic!("no whole + headline cell in {recency}"));
    let total = shown.split(" (").next().unwrap();
    assert!(
        shown.starts_with(&format!("{total} ({total} + ")),
        "{shown}"
    );
}

/// The `points` attribute of an SVG polyline.
fn points(line: &str) -> &str {
    line.split("points=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
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
    let stroke = |line: &str| -> String {
        line.split("stroke=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_owned()
    };
    let mut colors: Vec<String> = series.iter().map(|l| stroke(l)).collect();
    colors.sort_unstable();
    colors.dedup();
    assert_eq!(colors.len(), 3, "one color per policy");
    // Two policies are solid lines, one per panel, of one point per budget; head+tail is dashed:
    // many short segments in its color.
    let mut solid = 0;
    let mut dashed = 0;
    for color in &colors {
        let lines: Vec<&&str> = series.iter().filter(|l| stroke(l) == *color).collect();
        if lines.len() == 4 {
            solid += 1;
            for line in lines {
                assert_eq!(points(line).split_whitespace().count(), 3, "{line}");
            }
        } else {
            dashed += 1;
            assert!(lines.len() > 4 * 3, "{} dashes in {color}", lines.len());
        }
    }
    assert_eq!(
        (solid, dashed),
        (2, 1),
        "four panels × (two solid + one dashed)"
    );
    for label in [
        "recap",
        "recency",
        "head+tail",
        "severity ≥ error recall",
        "task visible",
        "newest whole",
        "needle recall",
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

//! Golden files: the rendered context of real trace slices at budgets 256, 1024 and 4096.
//!
//! Each case replays a slice of a shared trace (copied into `fixtures/traces/`) through the same
//! `StreamState` the server uses and compares the context text with
//! `fixtures/golden/<trace>.<mode>.<budget>.txt`. After an intended change to ranking or
//! rendering, regenerate them with `RECAP_BLESS=1 cargo test --test it golden` and review the diff.

use std::fs;
use std::path::{Path, PathBuf};

use recap::collapse::{CollapseMode, CollapsePolicy};
use recap::context::{self, ContextRequest};
use recap::stream::{StreamState, TailCapacity};
use recap::tokens::Encoding;
use recap::trace::read_trace;

use crate::support::{assert_text_eq, fixtures};

const BUDGETS: [u32; 3] = [256, 1024, 4096];

const CASES: [(&str, CollapseMode); 5] = [
    ("swe-agent__gpt4-pydicom__pydicom-1458", CollapseMode::Exact),
    ("chatdev__WaterBreakv2-head400", CollapseMode::Exact),
    ("chatdev__WaterBreakv2-head400", CollapseMode::Template),
    ("reflexion__trial1-head300", CollapseMode::Exact),
    ("react__webshop-head300", CollapseMode::Exact),
];

fn golden_path(trace: &str, mode: CollapseMode, budget: u32) -> PathBuf {
    fixtures()
        .join("golden")
        .join(format!("{trace}.{mode}.{budget}.txt"))
}

fn render(trace_path: &Path, mode: CollapseMode, budget: u32) -> String {
    let trace = read_trace(trace_path).unwrap();
    let policy = CollapsePolicy {
        mode,
        ..CollapsePolicy::default()
    };
    let mut state = StreamState::new(policy, TailCapacity::default());
    let mut now = None;
    for event in trace.events {
        let ts = event.ts.expect("trace events carry ts");
        now = Some(ts);
        state.append(event, ts);
    }
    let request = ContextRequest::new(budget, Encoding::Cl100kBase);
    let window = context::build(&state.view(), &request, now.unwrap());
    assert!(window.tokens <= budget);
    assert_eq!(window.tokens, Encoding::Cl100kBase.count(&window.text));
    window.text
}

#[test]
fn golden_contexts_of_real_traces() {
    let bless = std::env::var_os("RECAP_BLESS").is_some();
    for (trace, mode) in CASES {
        let trace_path = fixtures().join("traces").join(format!("{trace}.jsonl"));
        for budget in BUDGETS {
            let actual = render(&trace_path, mode, budget);
            let path = golden_path(trace, mode, budget);
            if bless {
                fs::write(&path, &actual).unwrap();
                continue;
            }
            let expected = fs::read_to_string(&path).unwrap_or_else(|_| {
                panic!(
                    "{} is missing; run `RECAP_BLESS=1 cargo test --test it golden`",
                    path.display()
                )
            });
            assert_text_eq(&expected, &actual, &path);
        }
    }
}

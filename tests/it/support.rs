//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

/// The project's `fixtures/` folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The shared trace set, `../shared/traces` beside the project (CI puts it there).
pub fn shared_traces() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/traces");
    assert!(
        path.is_dir(),
        "{} is missing: the shared trace set must sit beside the project",
        path.display()
    );
    path
}

/// Asserts two texts are equal, printing a line diff (`-` expected, `+` actual) when they are
/// not, so a golden-file failure shows what changed rather than two walls of text.
pub fn assert_text_eq(expected: &str, actual: &str, golden: &Path) {
    if expected == actual {
        return;
    }
    let expected_lines: Vec<&str> = expected.lines().collect();
    let actual_lines: Vec<&str> = actual.lines().collect();
    let mut diff = String::new();
    let common = expected_lines
        .iter()
        .zip(&actual_lines)
        .take_while(|(a, b)| a == b)
        .count();
    let tail = expected_lines[common..]
        .iter()
        .rev()
        .zip(actual_lines[common..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    for line in &expected_lines[common..expected_lines.len() - tail] {
        diff.push_str(&format!("-{line}\n"));
    }
    for line in &actual_lines[common..actual_lines.len() - tail] {
        diff.push_str(&format!("+{line}\n"));
    }
    panic!(
        "{} differs from the rendered output (first difference at line {}):\n{diff}\nIf the change is intended, regenerate with `RECAP_BLESS=1 cargo test --test it golden` and review the diff.",
        golden.display(),
        common + 1
    );
}

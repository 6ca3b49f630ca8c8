//! Placeholder: the context benchmark is not written yet.

fn main() {}

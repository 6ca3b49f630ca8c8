//! Placeholder: the collapse benchmark is not written yet.

fn main() {}

//! The `recap` binary.

fn main() {
    eprintln!(
        "recap {}: the server and client commands are not built yet",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}

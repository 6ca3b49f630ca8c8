# `make check` runs exactly what CI runs (.ci/run calls it).
.PHONY: check fmt clippy test doc bench golden

check: fmt clippy test doc

fmt:
	cargo fmt --all -- --check

clippy:
	cargo clippy --all-targets --locked -- -D warnings

test:
	cargo test --locked

doc:
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked

# Benchmarks print tables; they are never part of the test suite.
bench:
	cargo bench --bench context
	cargo bench --bench collapse

# Regenerate the golden contexts after an intended change to ranking or rendering.
golden:
	RECAP_BLESS=1 cargo test --test it golden

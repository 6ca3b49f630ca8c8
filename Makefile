# `make check` runs exactly what CI runs (.ci/run calls it).
.PHONY: check fmt clippy test doc pytest schemathesis fuzz bench golden

check: fmt clippy test doc

fmt:
	cargo fmt --all -- --check

clippy:
	cargo clippy --all-targets --locked -- -D warnings

test:
	cargo test --locked

doc:
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked

# The unmodified openintent client, the official MCP Python SDK (HTTP and stdio), `recap hook` on
# recorded Claude Code and Codex events, the aegeantic bridge and the web view (in Debian's
# headless Chromium, driven by Playwright) against a real recap (tests/python), in a virtualenv with the
# pinned packages of tests/python/requirements.txt. CI runs it after `check`.
VENV ?= target/pytest-venv
pytest:
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
	cargo build --locked --bin recap
	RECAP_BIN=$(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/debug/recap $(VENV)/bin/python -m pytest tests/python -q -p no:cacheprovider

# schemathesis (pinned in tests/schemathesis/requirements.txt, in a virtualenv of its own)
# against a live recap on a loopback port, with a fresh data directory and an admin key, for
# SCHEMATHESIS_SECONDS (150 by default): the checks not_a_server_error, status_code_conformance,
# content_type_conformance, response_schema_conformance and negative_data_rejection over every
# operation of GET /openapi.json but the SSE feeds and /mcp. Any finding fails. CI runs it after
# pytest.
ST_VENV ?= target/schemathesis-venv
SCHEMATHESIS_SECONDS ?= 150
schemathesis:
	test -x $(ST_VENV)/bin/python || python3 -m venv $(ST_VENV)
	$(ST_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r tests/schemathesis/requirements.txt
	cargo build --locked --bin recap
	RECAP_BIN=$(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/debug/recap \
		SCHEMATHESIS=$(abspath $(ST_VENV))/bin/schemathesis \
		SCHEMATHESIS_SECONDS=$(SCHEMATHESIS_SECONDS) tests/schemathesis/run.sh

# Fuzz the decoders of stored rows, request bodies of events and records, and stream names and
# keys files (fuzz/: cargo-fuzz on the stable toolchain, without a sanitizer, unoptimized with
# overflow checks) for FUZZ_SECONDS each, starting from fuzz/seeds/. A finding fails the run and
# leaves its input in fuzz/artifacts/TARGET/ (replay: cd fuzz && cargo fuzz run --dev
# --sanitizer none TARGET artifacts/TARGET/crash-...). CI runs it after pytest.
FUZZ_SECONDS ?= 45
FUZZ_TARGETS = stored_rows event_body keys
fuzz:
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.2 --locked
	cd fuzz && cargo fuzz build --dev --sanitizer none
	for target in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$target && cp fuzz/seeds/* fuzz/corpus/$$target/ && \
		(cd fuzz && cargo fuzz run --dev --sanitizer none $$target corpus/$$target -- \
			-max_total_time=$(FUZZ_SECONDS) -print_final_stats=1) || exit 1; \
	done

# Benchmarks print tables; they are never part of the test suite.
bench:
	cargo bench --bench context
	cargo bench --bench collapse

# Regenerate the golden contexts after an intended change to ranking or rendering.
golden:
	RECAP_BLESS=1 cargo test --test it golden

# `make check` runs exactly what CI runs (.ci/run calls it).
.PHONY: check fmt clippy test doc pytest schemathesis bench golden

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
	RECAP_BIN=$(CURDIR)/target/debug/recap $(VENV)/bin/python -m pytest tests/python -q -p no:cacheprovider

# schemathesis (pinned in tests/schemathesis/requirements.txt, in a virtualenv of its own)
# against a live recap on a loopback port, with a fresh data directory and an admin key, for
# SCHEMATHESIS_SECONDS (150 by default): the checks not_a_server_error, status_code_conformance,
# content_type_conformance, response_schema_conformance and negative_data_rejection over every
# operation of GET /openapi.json but the SSE feeds and /mcp. Any finding fails. CI runs it
# after pytest.
ST_VENV ?= target/schemathesis-venv
SCHEMATHESIS_SECONDS ?= 150
schemathesis:
	test -x $(ST_VENV)/bin/python || python3 -m venv $(ST_VENV)
	$(ST_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r tests/schemathesis/requirements.txt
	cargo build --locked --bin recap
	RECAP_BIN=$(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/debug/recap \
		SCHEMATHESIS=$(abspath $(ST_VENV))/bin/schemathesis \
		SCHEMATHESIS_SECONDS=$(SCHEMATHESIS_SECONDS) tests/schemathesis/run.sh

# Benchmarks print tables; they are never part of the test suite.
bench:
	cargo bench --bench context
	cargo bench --bench collapse

# Regenerate the golden contexts after an intended change to ranking or rendering.
golden:
	RECAP_BLESS=1 cargo test --test it golden

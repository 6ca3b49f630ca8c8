#!/usr/bin/env bash
# Runs schemathesis against a live recap for a bounded time: a server started here on a free
# loopback port, with a fresh data directory and an admin key, stopped by its pid at the end.
# Fails on any finding of the checks below. `make schemathesis` calls it (and CI, through
# .ci/run); RECAP_BIN names the binary, SCHEMATHESIS the schemathesis command,
# SCHEMATHESIS_SECONDS the time budget (150 s by default).
set -euo pipefail
: "${RECAP_BIN:?set RECAP_BIN to the recap binary}"
: "${SCHEMATHESIS:?set SCHEMATHESIS to the schemathesis command}"
seconds=${SCHEMATHESIS_SECONDS:-150}
here=$(cd "$(dirname "$0")" && pwd)

work=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

key="schemathesis-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
cat > "$work/keys.toml" <<KEYS
[[keys]]
name = "schemathesis"
key = "$key"
scopes = ["admin"]
KEYS
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$RECAP_BIN" serve --addr "127.0.0.1:$port" --data "$work/data" --keys "$work/keys.toml" \
    2> "$work/server.log" &
pid=$!

# The SSE feeds never end, so they are left out (tests/it/sse_edges.rs covers them); so is
# /mcp, a JSON-RPC protocol whose answers the MCP SDK shapes (tests/python/test_mcp.py).
# schemathesis keeps a cache in its working directory: the temporary one, not the project. One
# worker: with two, hypothesis on CPython 3.11.7 (CI's) hit the interpreter's spurious "AST
# constructor recursion depth mismatch" SystemError (cpython gh-106905, fixed in later 3.11s).
# hooks.py leaves out the parameters that make a read wait for a revision (see there).
cd "$work"
status=0
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" SCHEMATHESIS_HOOKS=hooks "$SCHEMATHESIS" run "http://127.0.0.1:$port/openapi.json" \
    --wait-for-schema 30 \
    --header "Authorization: Bearer $key" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection \
    --exclude-path-regex 'subscribe' \
    --exclude-path /mcp \
    --max-time "$seconds" \
    --workers 1 \
    --request-timeout 10 \
    --seed 1 \
    --no-color \
    "$@" || status=$?
if [ "$status" -ne 0 ]; then
    echo "--- the server's log:" >&2
    tail -n 50 "$work/server.log" >&2
fi
exit "$status"

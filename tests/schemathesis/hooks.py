"""schemathesis hooks for tests/schemathesis/run.sh (loaded through SCHEMATHESIS_HOOKS)."""

import schemathesis

# A read that names a revision (`?min_revision=`, `X-Recap-Min-Revision`) waits for it; a random
# revision never comes, and the server answers 503 `behind` after a 2 s wait, as designed, which
# the not_a_server_error check would report (and each such wait costs 2 s of the time budget).
# tests/it/server.rs and tests/it/pg_serve.rs cover them; the fuzzer leaves them out.
WAITING_PARAMETERS = {"min_revision", "X-Recap-Min-Revision"}


@schemathesis.hook
def before_load_schema(ctx, raw_schema):
    for item in raw_schema.get("paths", {}).values():
        for operation in item.values():
            if isinstance(operation, dict) and "parameters" in operation:
                operation["parameters"] = [
                    parameter
                    for parameter in operation["parameters"]
                    if parameter.get("name") not in WAITING_PARAMETERS
                ]

"""Schemathesis hooks for tests/openapi/run.

- `GET /v1/sse` is called with a token that may subscribe to nothing: every
  generated request then ends with a problem answer (400, 401 or 403) and no
  stream opens that would never end. The stream itself is tested by the Rust
  black-box tests.
- `GET /v1/poll`: `wait` is capped at 1 second so long polls do not hold the
  run; every other generated value is sent as generated.
"""

import os

import schemathesis

SSE_TOKEN = os.environ["HERALD_SSE_TOKEN"]


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    operation = f"{case.method.upper()} {case.path}"
    if operation == "GET /v1/sse":
        if case.headers is None:
            case.headers = {}
        case.headers["Authorization"] = f"Bearer {SSE_TOKEN}"
    if operation == "GET /v1/poll" and isinstance(case.query, dict):
        wait = case.query.get("wait")
        if isinstance(wait, int) and not isinstance(wait, bool) and wait > 1:
            case.query["wait"] = 1

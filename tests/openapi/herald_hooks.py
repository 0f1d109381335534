"""Schemathesis hooks for tests/openapi/run.

- Every request carries a bearer token (HERALD_TOKEN: admin, every topic),
  except `GET /v1/sse`, which carries a token that may subscribe to nothing
  (HERALD_SSE_TOKEN): every generated request then ends with a problem
  answer (400, 401 or 403) instead of a stream that only a timeout ends.
  The stream itself is tested by the Rust black-box tests.
- `GET /v1/poll`: `wait` is capped at 1 second so long polls do not hold the
  run; every other generated value is sent as generated.
- Query strings longer than 60,000 bytes once encoded are not sent: the HTTP
  layer refuses a request target over 65,534 bytes with a bare `400` before
  Herald reads it (docs/openapi.json says so).
"""

import os
from urllib.parse import urlencode

import schemathesis

TOKEN = os.environ["HERALD_TOKEN"]
SSE_TOKEN = os.environ["HERALD_SSE_TOKEN"]
MAX_QUERY_BYTES = 60_000


@schemathesis.hook
def filter_query(ctx, query):
    if not query:
        return True
    try:
        return len(urlencode(query, doseq=True)) <= MAX_QUERY_BYTES
    except Exception:
        return True


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    operation = f"{case.method.upper()} {case.path}"
    if case.headers is None:
        case.headers = {}
    token = SSE_TOKEN if operation == "GET /v1/sse" else TOKEN
    case.headers["Authorization"] = f"Bearer {token}"
    if operation == "GET /v1/poll" and isinstance(case.query, dict):
        wait = case.query.get("wait")
        if isinstance(wait, int) and not isinstance(wait, bool) and wait > 1:
            case.query["wait"] = 1

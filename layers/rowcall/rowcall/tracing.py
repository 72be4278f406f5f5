"""What X-Ray traces in the functions (`Tracing: Active`), and why not everything Powertools could.

Powertools' `Tracer()` patches every library the X-Ray SDK supports, httpx included. The SDK keeps
one stack of open (sub)segments per thread, and concurrent `httpx.AsyncClient` requests under
`asyncio.gather` share the event loop's thread: each request's subsegment is begun and ended
around awaits, so requests end each other's subsegments and a sampled invocation raises
`AlreadyEndedException` (powertools-lambda-python #6818, aws-xray-sdk-python #164). The provider
calls are exactly such requests (the worker's run creations, the recorder's and safety net's
fetches). botocore calls are synchronous: a call's subsegment begins and ends with no other call
in between on its thread, so they stay traced; each invocation is traced as a whole by
`capture_lambda_handler`. tests/e2e/test_tracing.py runs sampled invocations against the local
X-Ray daemon stand-in.
"""

from __future__ import annotations

TRACED_MODULES: tuple[str, ...] = ("botocore",)
"""The only modules `Tracer(patch_modules=TRACED_MODULES)` patches."""

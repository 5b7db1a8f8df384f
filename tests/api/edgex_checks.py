"""Checks schemathesis adds to its own for Outpost's APIs (loaded with SCHEMATHESIS_HOOKS).

edgex_error_shape: every refusal (4xx/5xx) carries EdgeX's error body, whatever layer
answered it (the gateway, a service, the HTTP server, a body limit): a JSON object with
apiVersion "v3", the response's own status code, and a non-empty message.
"""

import json

import schemathesis


@schemathesis.check
def edgex_error_shape(ctx, response, case):
    if response.status_code < 400 or case.method.upper() == "HEAD":
        return None
    types = response.headers.get("content-type") or response.headers.get("Content-Type") or [""]
    if isinstance(types, str):
        types = [types]
    assert types[0].startswith("application/json"), (
        f"a {response.status_code} answer is {types[0] or 'untyped'}, not EdgeX's JSON error body"
    )
    try:
        body = json.loads(response.content)
    except ValueError as e:
        raise AssertionError(f"a {response.status_code} answer is not JSON: {e}") from None
    assert isinstance(body, dict), f"a {response.status_code} answer is not an EdgeX error object"
    assert body.get("apiVersion") == "v3", f"apiVersion is {body.get('apiVersion')!r}, not 'v3'"
    assert body.get("statusCode") == response.status_code, (
        f"statusCode {body.get('statusCode')!r} differs from the HTTP status {response.status_code}"
    )
    message = body.get("message")
    assert isinstance(message, str) and message, "an EdgeX error carries a message"
    return None

"""Checks of scripts/schemathesis.sh beyond schemathesis's own."""

import schemathesis

# For each operation that may refuse a schema-valid request, the fields whose rules JSON Schema
# cannot state (see scripts/schemathesis.toml). Every other rule is in the document, so a
# schema-valid request refused for any other field is a mismatch.
UNSTATED = {
    # `ordering_key` and `filter` hold JSONPaths and regexes, `ordering_key` and `https_only`
    # also rules across fields (not with `ordered`/batch mode; not over an http:// URL),
    # `headers` names reserved by the header prefix in force, `circuit_cooldown` a duration,
    # `transform` an object whose values are JSONPaths, expressions or `{ value }` constants.
    "create_webhook": {"url", "topics", "retry", "timeout", "batch_interval", "mode", "ordered",
                       "ordering_key", "filter", "headers", "circuit_cooldown", "https_only",
                       "transform"},
    "update_webhook": {"url", "topics", "retry", "timeout", "batch_interval", "mode", "ordered",
                       "ordering_key", "filter", "headers", "circuit_cooldown", "https_only",
                       "transform"},
    "recover_deliveries": {"until"},
    "list_events": {"topic"},
    "stream_events": {"topic"},
}


@schemathesis.check
def refused_only_for_rules_the_schema_cannot_state(ctx, response, case):
    """A schema-valid request answered 400 must name a field listed in UNSTATED."""
    unstated = UNSTATED.get(case.operation.definition.raw.get("operationId"))
    meta = case.meta
    if response.status_code != 400 or unstated is None or meta is None:
        return
    if not meta.generation.mode.is_positive:
        return
    try:
        error = response.json()
    except ValueError:
        error = {}
    field = error.get("field")
    if field not in unstated:
        raise AssertionError(
            f"A schema-valid request was refused for `{field}`, whose rule the document could "
            f"state: {error.get('message')}"
        )


# The parts of an exchange `POST /rules/try` checks against HTTP's grammar (422 invalid_exchange).
EXCHANGE_PARTS = {"request.method", "request.url", "request.headers", "response.headers",
                  "response.status"}


@schemathesis.check
def an_exchange_is_refused_only_for_what_http_refuses(ctx, response, case):
    """`try_rules` answers 422 only as `invalid_exchange`, naming a part HTTP's grammar rules."""
    if case.operation.definition.raw.get("operationId") != "try_rules":
        return
    if response.status_code != 422:
        return
    error = response.json()
    if error.get("code") != "invalid_exchange" or error.get("field") not in EXCHANGE_PARTS:
        raise AssertionError(f"422 without a part of the exchange named: {error}")

"""OpenAPI declarations shared by the routers."""

from __future__ import annotations

from typing import Any

from broker.api.problems import PROBLEM_JSON, ProblemOut


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Document ``statuses`` as problem+json responses."""
    text = {
        401: "Missing, malformed, expired or forged bearer token",
        403: "Role or policy does not permit this; `reasons` says why",
        404: "Not found, or not visible to the caller",
        409: "The object's state does not allow this",
        413: "Body or file over the limit",
        422: "Invalid input",
        503: "A dependency failed; nothing was released",
    }
    return {
        s: {"model": ProblemOut, "description": text[s], "content": {PROBLEM_JSON: {}}}
        for s in statuses
    }


AUTHENTICATED = problems(401, 403, 422, 503)

"""A property-based fuzz of the control API from its OpenAPI document (schemathesis),
reusable against any live server: this package's tests, or the real daemon.

    with unix_session(socket_path) as session:
        statuses = fuzz_operations("http://localhost", session, ["demo"])

Each generated request must get a documented status (never 500), a body matching its
schema and the documented content type, within 10 s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from volplugd.control import openapi_document

__all__ = ["FUZZ_EXAMPLES", "fuzz_operations"]

FUZZ_EXAMPLES = 15  # per operation: 16 operations x 15 keeps the run to seconds
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]


def fuzz_operations(base_url: str, session: Any, plugins: Sequence[str] = (), *,
                    max_examples: int = FUZZ_EXAMPLES) -> Counter[int]:
    """Run every documented operation with generated inputs; count the statuses seen.

    Reusable against the real daemon: give it the socket's base URL, a session, and
    plugin names worth hitting (a generated name is almost never a registered one).
    ``follow`` is forced off: an open stream never ends, by design.
    """
    schema = schemathesis.openapi.from_dict(openapi_document())
    statuses: Counter[int] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(), plugin=st.sampled_from([None, *plugins]))
        @settings(max_examples=max_examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), derandomize=True)
        def check(case: Any, plugin: str | None) -> None:
            if case.query:
                case.query.pop("follow", None)
            if plugin is not None and case.path_parameters and "name" in case.path_parameters:
                case.path_parameters["name"] = plugin
            response = case.call(base_url=base_url, session=session, timeout=10)
            statuses[response.status_code] += 1
            assert response.status_code != 500, response.text
            case.validate_response(response, checks=CHECKS)

        check()
    return statuses

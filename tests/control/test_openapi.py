"""The OpenAPI document: valid 3.1, in step with the route table, and a property-based
fuzz (schemathesis) against a live server: no undocumented status, no 500, no hang."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.control.conftest import Live
from tests.control.helpers import unix_session
from volplugd.control import ROUTES, openapi_document
from volplugd.control.app import ERRORS

FUZZ_EXAMPLES = 15  # per operation: 16 operations x 15 keeps the run to seconds
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]


def test_document_is_valid_openapi_3_1() -> None:
    """openapi_spec_validator accepts the document."""
    doc = openapi_document()
    assert doc["openapi"] == "3.1.0"
    validate(doc)


def test_document_and_route_table_agree() -> None:
    """Every (path, method) the app routes is documented, and nothing else is."""
    doc = openapi_document()
    documented = {(path, method.upper()) for path, item in doc["paths"].items()
                  for method in item if method != "parameters"}
    routed = {(path, method) for path, methods in ROUTES.items() for method in methods}
    assert documented == routed


def test_every_error_code_is_documented() -> None:
    """The Error schema lists every code of the app's error table (plus internal_error)."""
    doc = openapi_document()
    documented = doc["components"]["schemas"]["Error"]["properties"]["error"][
        "properties"]["code"]["enum"]
    assert {code for _, code in ERRORS.values()} | {"internal_error"} == set(documented)


def test_reusable_components_exist() -> None:
    """Plugin, Volume, Event, Error, Health and RescanResult are components."""
    schemas = openapi_document()["components"]["schemas"]
    assert {"Plugin", "Volume", "Event", "Error", "Health", "RescanResult"} <= set(schemas)


def test_plugin_schema_matches_the_model() -> None:
    """The Plugin schema's required keys are exactly PluginView.to_json()'s keys."""
    from tests.control.memory import view

    schema = openapi_document()["components"]["schemas"]["Plugin"]
    assert set(schema["required"]) == set(view("x").to_json())


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


def test_fuzz_live_server(live: Live) -> None:
    """Generated requests for every operation against a live server backed by fake
    plugins: statuses all documented, bodies match the schemas, no 500, no hang."""
    with unix_session(live.path) as session:
        statuses = fuzz_operations("http://localhost", session,
                                   ["demo", "broken", "sick", "fresh"])
    assert sum(statuses.values()) >= len(openapi_document()["paths"])
    # the fake-backed plugins make the fuzz reach past routing: successes, plugin
    # errors (broken) and fail-fast refusals (sick, fresh) all occur
    assert {200, 404, 409, 502} <= set(statuses), statuses


@pytest.mark.parametrize("path", ["/v1/plugins/demo", "/v1/health"])
def test_documented_example_answers_validate(live: Live, path: str) -> None:
    """A fixed request's answer validates too (guards the fuzz's own plumbing)."""
    from tests.control.helpers import fetch

    ans = fetch(live.path, "GET", path)
    assert ans.status == 200
    json.loads(ans.body)

"""The OpenAPI document: valid 3.1, in step with the route table, and a property-based
fuzz (schemathesis) against a live server: no undocumented status, no 500, no hang."""

from __future__ import annotations

import json

import pytest
from openapi_spec_validator import validate

from tests.control.conftest import Live
from tests.control.fuzz import fuzz_operations
from tests.control.helpers import unix_session
from volplugd.control import ROUTES, openapi_document
from volplugd.control.errors import ERRORS
from volplugd.control.server import PROTOCOL_ERRORS


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
    """The Error schema lists every code of the app's error table, internal_error, and
    the codes the server answers by itself (too_many_connections)."""
    doc = openapi_document()
    documented = doc["components"]["schemas"]["Error"]["properties"]["error"][
        "properties"]["code"]["enum"]
    assert {code for _, code in ERRORS.values()} | {"internal_error"} | PROTOCOL_ERRORS \
        == set(documented)


def test_reusable_components_exist() -> None:
    """Plugin, Volume, Event, Error, Health and RescanResult are components."""
    schemas = openapi_document()["components"]["schemas"]
    assert {"Plugin", "Volume", "Event", "Error", "Health", "RescanResult"} <= set(schemas)


def test_plugin_schema_matches_the_model() -> None:
    """The Plugin schema's required keys are exactly PluginView.to_json()'s keys."""
    from tests.control.memory import view

    schema = openapi_document()["components"]["schemas"]["Plugin"]
    assert set(schema["required"]) == set(view("x").to_json())


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


def test_event_and_state_enums_are_the_models() -> None:
    """The Event type enum is EventType's values, the PluginState schema PluginState's."""
    from volplugd.model import EventType, PluginState

    schemas = openapi_document()["components"]["schemas"]
    assert schemas["Event"]["properties"]["type"]["enum"] == [t.value for t in EventType]
    assert schemas["PluginState"]["enum"] == [s.value for s in PluginState]

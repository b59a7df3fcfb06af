"""503 plugin_busy: the exact answer, its Retry-After, and the Get after a Create."""

from __future__ import annotations

import pytest

from tests.control.conftest import build_app
from tests.control.helpers import call
from tests.control.memory import MemoryCommands
from volplugd.contracts import PluginBusy
from volplugd.control.app import openapi_document

OPERATIONS = [
    ("GET", "/v1/plugins/demo/capabilities", None),
    ("GET", "/v1/plugins/demo/volumes", None),
    ("POST", "/v1/plugins/demo/volumes", {"name": "v"}),
    ("GET", "/v1/plugins/demo/volumes/v", None),
    ("DELETE", "/v1/plugins/demo/volumes/v", None),
    ("GET", "/v1/plugins/demo/volumes/v/path", None),
    ("POST", "/v1/plugins/demo/volumes/v/mount", {"id": "c"}),
    ("POST", "/v1/plugins/demo/volumes/v/unmount", {"id": "c"}),
]


@pytest.mark.parametrize(("method", "target", "body"), OPERATIONS)
def test_a_busy_plugin_is_503_plugin_busy_with_retry_after(
        commands: MemoryCommands, method: str, target: str,
        body: dict[str, str] | None) -> None:
    """Every volume operation maps PluginBusy to exactly this answer."""
    commands.clients["demo"].fail = PluginBusy("demo", 4, 1)
    ans = call(build_app(commands), method, target, body=body)
    assert ans.status == 503
    assert ans.body == (b'{"error":{"code":"plugin_busy",'
                        b'"message":"plugin demo is busy (4 operations in flight)"}}')
    assert ans.headers["Retry-After"] == "1"
    assert ans.headers["Content-Type"] == "application/json"


def test_the_daemon_keeps_serving_after_a_busy_answer(commands: MemoryCommands) -> None:
    """The next call, once a slot is free, is served as usual; other routes never care."""
    app = build_app(commands)
    commands.clients["demo"].fail = PluginBusy("demo", 4, 1)
    assert call(app, "GET", "/v1/plugins/demo/volumes").status == 503
    assert call(app, "GET", "/v1/health").status == 200
    commands.clients["demo"].fail = None
    ans = call(app, "GET", "/v1/plugins/demo/volumes")
    assert (ans.status, ans.json()) == (200, {"volumes": []})
    assert "Retry-After" not in ans.headers


def test_a_busy_get_after_create_still_answers_201(commands: MemoryCommands) -> None:
    """The volume was created; the Get that describes it found no slot: name only."""
    commands.clients["demo"].fail_on["get"] = PluginBusy("demo", 4, 1)
    ans = call(build_app(commands), "POST", "/v1/plugins/demo/volumes", body={"name": "v"})
    assert (ans.status, ans.json()) == (201, {"name": "v"})
    assert "v" in commands.clients["demo"].volumes


def test_every_operation_route_documents_503_plugin_busy() -> None:
    """Each volume operation lists 503 with the PluginBusy response and its header."""
    doc = openapi_document()
    for method, target, _ in OPERATIONS:
        template = target.replace("/demo", "/{name}").replace("/v/", "/{volume}/")
        if template.endswith("/v"):
            template = template[:-2] + "/{volume}"
        responses = doc["paths"][template][method.lower()]["responses"]
        assert responses["503"] == {"$ref": "#/components/responses/PluginBusy"}
    busy = doc["components"]["responses"]["PluginBusy"]
    assert set(busy["headers"]) == {"Retry-After"}
    assert "plugin_busy" in busy["description"]

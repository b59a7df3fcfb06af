"""Request fields are outside text too: bytes that are not UTF-8 (raw or percent-encoded)
and lone surrogates from JSON escapes are refused with an exact 400 where they enter,
and what a 400 quotes of the request is safe, bounded text."""

from __future__ import annotations

import json

import pytest

from tests.control.conftest import build_app
from tests.control.helpers import call
from tests.control.memory import MemoryCommands


@pytest.fixture
def app(commands: MemoryCommands):  # type: ignore[no-untyped-def]
    return build_app(commands)


@pytest.mark.parametrize("raw_path", [
    "/v1/plugins/demo/volumes/%ff",
    "/v1/plugins/%c3/volumes",
])
def test_path_bytes_that_are_not_utf8_are_refused(app, raw_path: str) -> None:  # type: ignore[no-untyped-def]
    """The path's percent-encoded bytes must be UTF-8; nothing is guessed (raw bytes
    outside printable ASCII never reach the app: ``test_head`` refuses them)."""
    ans = call(app, "GET", raw_path)
    assert (ans.status, ans.error) == (
        400, ("invalid_request", "path: bytes (raw or percent-encoded) are not UTF-8"))


def test_utf8_in_the_path_is_read_as_utf8(app) -> None:  # type: ignore[no-untyped-def]
    """"é" percent-encoded (two bytes) is the name "é", not mojibake."""
    ans = call(app, "GET", "/v1/plugins/%C3%A9")
    assert (ans.status, ans.error) == (404, ("plugin_not_found", "no plugin named 'é'"))


@pytest.mark.parametrize(("options", "message"), [
    ({"size": "1\ud800"}, "options.size: must be valid Unicode (no lone surrogates)"),
    ({"k\udcff": "v"}, "options.k\\xff: must be valid Unicode (no lone surrogates)"),
])
def test_options_with_lone_surrogates_are_refused(app, commands: MemoryCommands,  # type: ignore[no-untyped-def]
                                                  options: dict[str, str], message: str) -> None:
    """A JSON "\\ud800" in an option is refused (it cannot be sent as UTF-8), and the 400
    itself is valid UTF-8 JSON that names the key escaped."""
    body = json.dumps({"name": "v", "options": options}).encode()  # ASCII: \\ud800 escapes
    ans = call(app, "POST", "/v1/plugins/demo/volumes", body=body)
    assert (ans.status, ans.error) == (400, ("invalid_request", message))
    ans.body.decode("utf-8")
    assert commands.clients["demo"].calls == []


def test_a_huge_option_key_is_quoted_bounded(app) -> None:  # type: ignore[no-untyped-def]
    """A 100 kB option key in a 400 is cut: the answer stays small."""
    body = json.dumps({"name": "v", "options": {"k" * 100_000: 1}}).encode()
    ans = call(app, "POST", "/v1/plugins/demo/volumes", body=body)
    assert ans.status == 400
    assert ans.error[1].endswith("bytes cut): must be a string")
    assert len(ans.body) < 1024

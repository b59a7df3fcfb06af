"""Checking what a control client sends: path segments, query values, JSON bodies.

Every failure is an ``InvalidRequest`` naming the field, so the API's 400 says exactly
what to fix. Text that is not valid UTF-8 (raw bytes in the path, percent-escapes of
them, lone surrogates from JSON ``\ud800`` escapes) is refused here, where it enters;
what an error quotes of the request passes ``safe_text``.
Pure functions over what the head and body say.
Runs on: connection threads.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping
from typing import Any

from volplugd.model import PluginState
from volplugd.plugin.text import is_utf8, safe_text
from volplugd.serving import BodyReader

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_NAME_BYTES",
    "BodyReader",
    "BodyTooLarge",
    "InvalidRequest",
    "check_length",
    "check_volume_name",
    "follow_flag",
    "mount_id",
    "path_segments",
    "query",
    "read_json_object",
    "since_seq",
    "state_filter",
    "volume_options",
]

MAX_BODY_BYTES = 1024 * 1024
MAX_NAME_BYTES = 255  # NAME_MAX: plugins commonly turn a volume name into a directory name
_MAX_SEQ = 2**63 - 1
_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no"})


class InvalidRequest(ValueError):
    """400 invalid_request: ``field`` is what the client must fix."""

    def __init__(self, field: str, problem: str):
        field = safe_text(field, 256)  # an options key is the client's text
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class BodyTooLarge(ValueError):
    """413 request_too_large."""

    def __init__(self, length: int):
        super().__init__(f"request body of {length} bytes exceeds the limit of "
                         f"{MAX_BODY_BYTES} bytes")
        self.length = length


def path_segments(path: str) -> list[str]:
    """The raw request path split on "/" BEFORE percent-decoding, then each part decoded.

    So ``a%2Fb`` stays one segment (and is refused as a name later) instead of
    becoming two. The decoded bytes must be UTF-8: anything else is refused, never
    guessed at.
    """
    try:
        return [urllib.parse.unquote_to_bytes(p).decode("utf-8") for p in path.split("/")[1:]]
    except UnicodeDecodeError:
        raise InvalidRequest("path", "bytes (raw or percent-encoded) are not UTF-8") from None


def query(query_string: str) -> dict[str, str]:
    """Query parameters; a repeated key keeps its last value."""
    return dict(urllib.parse.parse_qsl(query_string, keep_blank_values=True))


def state_filter(params: Mapping[str, str]) -> PluginState | None:
    value = params.get("state")
    if value is None:
        return None
    try:
        return PluginState(value)
    except ValueError:
        allowed = ", ".join(s.value for s in PluginState)
        raise InvalidRequest("state", f"must be one of {allowed}") from None


def since_seq(params: Mapping[str, str]) -> int:
    value = params.get("since", "0")
    if not value.isascii() or not value.isdigit() or int(value) > _MAX_SEQ:
        raise InvalidRequest("since", "must be a non-negative integer (an event seq)")
    return int(value)


def follow_flag(params: Mapping[str, str]) -> bool:
    value = params.get("follow", "0").lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidRequest("follow", "must be 1 or 0 (true/false)")


def check_length(length: int) -> int:
    """The declared body size; refuses a body over the limit before anything reads it."""
    if length > MAX_BODY_BYTES:
        raise BodyTooLarge(length)
    return length


def read_json_object(body: BodyReader | None, length: int) -> dict[str, Any]:
    """The body (``length`` bytes, at most MAX_BODY_BYTES) as a JSON object."""
    data = (body.read(check_length(length)) if length and body is not None else b"") or b""
    if not data.strip():
        raise InvalidRequest("body", "a JSON object is required")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as err:
        raise InvalidRequest("body", f"not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("body", "must be a JSON object")
    return doc


def check_volume_name(value: object, field: str = "name") -> str:
    """A name a plugin may safely turn into a path: 1 to 255 UTF-8 bytes, no "/", no
    control characters (NUL included), and not "." or "..".
    """
    if not isinstance(value, str):
        raise InvalidRequest(field, "must be a string")
    if not value:
        raise InvalidRequest(field, "must not be empty")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRequest(field, "must be valid Unicode (no lone surrogates)") from None
    if size > MAX_NAME_BYTES:
        raise InvalidRequest(field, f"must be at most {MAX_NAME_BYTES} bytes (UTF-8)")
    if "/" in value:
        raise InvalidRequest(field, 'must not contain "/"')
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidRequest(field, "must not contain control characters (NUL included)")
    if value in {".", ".."}:
        raise InvalidRequest(field, 'must not be "." or ".."')
    return value


def mount_id(doc: Mapping[str, Any]) -> str:
    """The caller's mount id (Docker sends the container id), same rules as a name."""
    if "id" not in doc:
        raise InvalidRequest("id", "required")
    return check_volume_name(doc["id"], "id")


def volume_options(doc: Mapping[str, Any]) -> dict[str, str]:
    """``options``: a string → string object, as Docker's Opts; absent or null → {}."""
    options = doc.get("options")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise InvalidRequest("options", "must be an object of strings")
    for key, value in options.items():
        if not isinstance(value, str):
            raise InvalidRequest(f"options.{key}", "must be a string")
        if not (is_utf8(key) and is_utf8(value)):
            raise InvalidRequest(f"options.{key}", "must be valid Unicode (no lone surrogates)")
    return dict(options)

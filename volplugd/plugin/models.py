"""What plugin calls return, and strict, defensive parsing of plugin answers (pure).

Answers are decoded the way Go's ``encoding/json`` (the seed's decoder) reads them into
structs, because that is what real plugins are tested against: keys match fields
case-insensitively and the last matching key wins, ``null`` means "absent", unknown keys
are ignored. Unlike Go, a value of the wrong type is an error, never silently zero.

Every string an answer gives (Err, Name, Mountpoint, Implements, Status's keys and
values...) leaves here through ``text.safe_text``: bytes that are not UTF-8 read as
visible ``\xff`` escapes (Go would read U+FFFD), a lone surrogate from a ``\ud800``
escape as ``\ud800``, and each string is cut to 4 KiB with a visible marker.

Runs on: whichever thread calls the client; no state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from volplugd.plugin.text import safe_text

__all__ = [
    "Capabilities",
    "JsonObject",
    "Manifest",
    "ResponseError",
    "UnknownScope",
    "Volume",
    "decode_object",
    "parse_capabilities",
    "parse_err",
    "parse_manifest",
    "parse_mountpoint",
    "parse_volume",
    "parse_volumes",
]

Scope = Literal["local", "global"]
MAX_IMPLEMENTS = 32
MAX_IMPLEMENTS_BYTES = 256


@dataclass(frozen=True, slots=True)
class Volume:
    """A volume as a plugin describes it; ``status`` is the plugin's free-form map."""

    name: str
    mountpoint: str | None = None
    created_at: str | None = None
    status: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The control API's ``Volume`` object."""
        status = None if self.status is None else dict(self.status)
        return {"name": self.name, "mountpoint": self.mountpoint,
                "created_at": self.created_at, "status": status}


@dataclass(frozen=True, slots=True)
class Capabilities:
    """``/VolumeDriver.Capabilities``: ``scope`` is "local" or "global"."""

    scope: Scope


@dataclass(frozen=True, slots=True)
class Manifest:
    """``/Plugin.Activate``: the subsystems the plugin implements, e.g. ("VolumeDriver",)."""

    implements: tuple[str, ...]


class ResponseError(ValueError):
    """An answer that cannot be used; the client words it per endpoint."""


class UnknownScope(ResponseError):
    """Capabilities named a scope that is neither "local" nor "global" (``scope``).

    The answer is odd, not broken: Docker uses such a driver as "local" (and warns).
    """

    def __init__(self, scope: str):
        super().__init__(f"unknown Scope {scope!r} (want \"local\" or \"global\")")
        self.scope = scope


class JsonObject(dict[str, Any]):
    """A decoded JSON object that also keeps its members in wire order (for Go's rules)."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.pairs = pairs


def decode_object(body: bytes) -> JsonObject:
    """The JSON object in ``body``; a top-level ``null`` reads as ``{}`` (as in Go)."""
    try:
        # surrogateescape: a byte that is not UTF-8 survives decoding as U+DC80..U+DCFF,
        # which safe_text turns into a visible \xNN when the string is taken out.
        value = _DECODER.decode(body.decode("utf-8", errors="surrogateescape"))
    except ValueError as err:  # JSONDecodeError is a ValueError
        raise ResponseError(f"not JSON: {err}") from err
    except RecursionError as err:  # a hostile "[[[[..." body
        raise ResponseError("not JSON: nested too deeply") from err
    if value is None:
        return JsonObject([])
    if not isinstance(value, JsonObject):
        raise ResponseError(f"not a JSON object but {_kind(value)}")
    return value


def field(obj: JsonObject, name: str) -> Any:
    """The member matching ``name`` like Go does: case-insensitive, the last one wins."""
    found = None
    folded = _fold(name)
    for key, value in obj.pairs:
        if _fold(key) == folded:
            found = value
    return found


def parse_err(obj: JsonObject) -> str:
    """The ``Err`` member; absent or ``null`` is ""."""
    return _typed(obj, "Err", str, "a string") or ""


def parse_manifest(obj: JsonObject) -> Manifest:
    """``{"Implements": ["VolumeDriver", ...]}``.

    Kept in the plugin's view, so bounded: each name once, at most MAX_IMPLEMENTS names
    of at most MAX_IMPLEMENTS_BYTES each (Docker knows six subsystems).
    """
    implements = _typed(obj, "Implements", list, "a list of strings") or []
    if not all(isinstance(item, str) for item in implements):
        raise ResponseError("Implements is not a list of strings")
    names = dict.fromkeys(safe_text(item, MAX_IMPLEMENTS_BYTES) for item in implements)
    return Manifest(tuple(names)[:MAX_IMPLEMENTS])


def parse_capabilities(obj: JsonObject) -> Capabilities:
    """``{"Capabilities": {"Scope": ...}}``; no or empty scope is "local" (Docker's rule).

    The scope is lowercased as Docker does; anything but local/global is an error.
    """
    caps = _typed(obj, "Capabilities", dict, "an object") or JsonObject([])
    scope = (_typed(caps, "Scope", str, "a string") or "local").lower()
    if scope == "local":
        return Capabilities("local")
    if scope == "global":
        return Capabilities("global")
    raise UnknownScope(scope)


def parse_volume(obj: JsonObject) -> Volume:
    """``{"Volume": {...}}``; a missing volume is an error (Docker: "no such volume")."""
    volume = _typed(obj, "Volume", dict, "an object")
    if volume is None:
        raise ResponseError("no Volume in the answer")
    return _volume(volume)


def parse_volumes(obj: JsonObject) -> list[Volume]:
    """``{"Volumes": [{...}, ...]}``; absent or ``null`` is an empty list."""
    volumes = _typed(obj, "Volumes", list, "a list") or []
    if not all(isinstance(item, dict) for item in volumes):
        raise ResponseError("Volumes is not a list of objects")
    return [_volume(item) for item in volumes]


def parse_mountpoint(obj: JsonObject, *, required: bool) -> str:
    """``{"Mountpoint": ...}``; with ``required`` an empty one is an error."""
    mountpoint = _typed(obj, "Mountpoint", str, "a string") or ""
    if required and not mountpoint:
        raise ResponseError("no Mountpoint in the answer")
    return mountpoint


def _volume(obj: JsonObject) -> Volume:
    name = _typed(obj, "Name", str, "a string")
    if not name:
        raise ResponseError("a volume without a Name")
    status = _typed(obj, "Status", dict, "an object")
    try:
        status = None if status is None else MappingProxyType(_plain(status))
    except RecursionError as err:
        raise ResponseError("Status is nested too deeply") from err
    return Volume(
        name=name,
        mountpoint=_typed(obj, "Mountpoint", str, "a string") or None,
        created_at=_typed(obj, "CreatedAt", str, "a string") or None,
        status=status,
    )


def _typed(obj: JsonObject, name: str, kind: type, wanted: str) -> Any:
    value = field(obj, name)
    if value is not None and not isinstance(value, kind):
        raise ResponseError(f"{name} is {_kind(value)}, not {wanted}")
    return safe_text(value) if isinstance(value, str) else value


def _plain(value: Any) -> Any:
    """JsonObject → dict all the way down, so callers see ordinary JSON values; every
    string (keys too) made safe."""
    if isinstance(value, dict):
        return {safe_text(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return safe_text(value) if isinstance(value, str) else value


def _fold(key: str) -> str:
    # Go's EqualFold uses simple case folding: U+212A (Kelvin sign) is "k", U+017F is "s".
    return key.lower().replace("\u017f", "s")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every answer: json.loads with options builds a new one per call.
_DECODER = json.JSONDecoder(object_pairs_hook=JsonObject, parse_constant=_reject_constant)

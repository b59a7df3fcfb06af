"""Text from outside made safe to keep and to show (leaf module, pure).

Outside text — file names, plugin answers, the contents of plugin files, request
fields — enters volplugd through ``safe_text`` (or ``from_bytes``), so what travels on
is always encodable UTF-8 of bounded size:

* an undecodable byte becomes the four visible characters ``\\xff``: bytes that
  ``os.fsdecode`` or a ``surrogateescape`` decoding turned into lone surrogates
  U+DC80..U+DCFF are mapped back to their byte first; any other lone surrogate (a JSON
  ``"\\ud800"``) becomes ``\\ud800``. No surrogate ever travels downstream;
* a text longer than ``MAX_TEXT_BYTES`` (UTF-8) is cut to at most that many bytes,
  marker included, ending in a visible ``…(N bytes cut)``.

Backslashes are left alone, so an escape is readable but not unambiguous: this is text
to show, never a key to look something up by (names that cannot be represented
faithfully are refused where they enter; ``is_utf8`` tells them).

``printable`` is for human-facing outputs (console logs, HTML, terminals): it also
escapes control characters (C0, DEL, C1), the line and paragraph separators and the
bidirectional overrides, so a value can neither drive a terminal nor reorder or forge a
line. JSON outputs keep control characters as data, escaped the JSON way: ``json.dumps``
writes C0 as ``\u001b``, and ``json_printable`` does the same for the rest, so a JSON
answer printed raw to a terminal cannot drive it either.

Runs on: any thread; no state.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MAX_TEXT_BYTES", "cut", "from_bytes", "is_utf8", "json_printable", "printable",
           "safe_text", "safe_value"]

MAX_TEXT_BYTES = 4096
_MIN_LIMIT = 64  # room for the marker and a little text
_SURROGATE = re.compile("[\ud800-\udfff]")
# C0, DEL, C1; ALM, LRM, RLM; LS, PS; LRE..RLO; LRI..PDI; and surrogates (never printable).
_UNPRINTABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# What json.dumps(ensure_ascii=False) leaves raw of the above (it escapes C0 itself).
_JSON_RAW = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def safe_text(text: str, limit: int | None = MAX_TEXT_BYTES) -> str:
    """``text`` with lone surrogates escaped and cut to ``limit`` UTF-8 bytes (None: no
    cut). The common case — short, valid text — is returned as it is."""
    if not text.isascii() and _SURROGATE.search(text) is not None:
        text = _SURROGATE.sub(_escape_surrogate, text)
    return text if limit is None else cut(text, limit)


def from_bytes(data: bytes, limit: int | None = MAX_TEXT_BYTES) -> str:
    """Bytes from outside as safe text: UTF-8, undecodable bytes escaped (``\\xff``)."""
    return safe_text(data.decode("utf-8", errors="backslashreplace"), limit)


def cut(text: str, limit: int = MAX_TEXT_BYTES) -> str:
    """``text`` (surrogate-free) at most ``limit`` UTF-8 bytes long, marker included."""
    if limit < _MIN_LIMIT:
        raise ValueError(f"limit must be at least {_MIN_LIMIT} bytes, not {limit}")
    if len(text) * 4 <= limit:  # no character takes more than 4 bytes
        return text
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    room = limit - len(_marker(len(data)).encode("utf-8"))  # the longest marker it needs
    kept = data[:room].decode("utf-8", errors="ignore")  # drops a character cut in half
    return kept + _marker(len(data) - len(kept.encode("utf-8")))


def safe_value(value: Any, limit: int | None = MAX_TEXT_BYTES) -> Any:
    """A decoded JSON value with ``safe_text`` applied to every string, keys included."""
    if isinstance(value, str):
        return safe_text(value, limit)
    if isinstance(value, dict):
        return {safe_value(k, limit): safe_value(v, limit) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [safe_value(item, limit) for item in value]
    return value


def is_utf8(name: str) -> bool:
    """True if ``name`` (e.g. from ``os.fsdecode``) is valid Unicode: no lone surrogates."""
    return name.isascii() or _SURROGATE.search(name) is None


def printable(text: str) -> str:
    """``text`` with every control, separator, bidi-override and surrogate character
    escaped visibly (``\\x1b``, ``\\n``, ``\\u202e``), for people and their terminals."""
    if _UNPRINTABLE.search(text) is None:
        return text
    return _UNPRINTABLE.sub(_escape_unprintable, text)


def json_printable(json_text: str) -> str:
    """JSON text (``ensure_ascii=False``) with DEL, C1, the separators and the bidi
    overrides written as ``\\uXXXX`` escapes: the same JSON value, safe on a terminal.
    (They can only occur inside strings: JSON's own syntax is ASCII.)"""
    if json_text.isascii() or _JSON_RAW.search(json_text) is None:
        return json_text
    return _JSON_RAW.sub(lambda match: f"\\u{ord(match[0]):04x}", json_text)


def _marker(count: int) -> str:
    return f"…({count} bytes cut)"


def _escape_surrogate(match: re.Match[str]) -> str:
    code = ord(match[0])
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for the byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def _escape_unprintable(match: re.Match[str]) -> str:
    char = match[0]
    code = ord(char)
    if char in _SHORT:
        return _SHORT[char]
    if 0xD800 <= code <= 0xDFFF:
        return _escape_surrogate(match)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

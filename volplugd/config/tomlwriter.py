"""The one TOML writer: strings, keys, values and tables as volplugd spells them.

``volplugd check-config`` prints the effective settings with ``toml_tables``; the Podman
drop-in (``volplugd.podman.dropin``) writes its keys and socket paths with ``toml_key``
and ``toml_string``; configuration errors quote the operator's input with ``toml_value``.
Pure: any thread may call it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

__all__ = ["toml_key", "toml_string", "toml_tables", "toml_value"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n",
            "\f": "\\f", "\r": "\\r"}


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string (raises UnicodeEncodeError if it is not UTF-8)."""
    text.encode()  # a lone surrogate (an undecodable file name) has no TOML spelling
    return _basic_string(text)


def toml_key(name: str) -> str:
    """A bare key when TOML allows one (easier to read), else a quoted key."""
    return name if _BARE_KEY.fullmatch(name) else toml_string(name)


def toml_value(value: object) -> str:
    """A bool, number, string, array or inline table as TOML. Lenient where
    ``toml_string`` is strict: a lone surrogate (an undecodable file name given as a
    flag) is left in the string, so that a console's surrogateescape writes its byte."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _basic_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{toml_key(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    return str(value)


def toml_tables(tables: Mapping[str, Mapping[str, object]]) -> str:
    """A document of one ``[name]`` table per entry, each followed by an empty line."""
    lines: list[str] = []
    for name, table in tables.items():
        lines.append(f"[{toml_key(name)}]")
        lines.extend(f"{toml_key(key)} = {toml_value(value)}" for key, value in table.items())
        lines.append("")
    return "\n".join(lines)


def _basic_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")  # lower case, as JSON and our logs write it
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'

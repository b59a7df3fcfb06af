"""How volplugctl shows answers to people: aligned tables, key: value lines, event lines.

Colour (the plugin state) only on a terminal and never with ``NO_COLOR``; tables fit the
terminal's width by cutting one flexible column. Every value shown comes from outside
(plugin names, addresses, a plugin's error text) and is passed through ``printable``
first: control characters and bidi overrides are escaped visibly (``\x1b``), so a plugin
named ``evil\x1b]0;...`` cannot drive the terminal. (The same rule as the daemon's
``volplugd.plugin.text.printable``, kept here because volplugctl must not import the
plugin client.) Pure functions of their arguments.
Runs on: the main thread of the volplugctl process.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

TYPE_CHECKING = False  # typing costs ~3 ms at start-up: the types are for mypy only
if TYPE_CHECKING:
    from typing import Any, TextIO

__all__ = ["ago", "event_line", "fields", "paint", "printable", "table", "terminal_width",
           "truncate", "use_color"]

STATE_COLORS: Mapping[str, str] = {  # SGR codes, as docker/podman-like tools colour them
    "ready": "32", "unhealthy": "31", "activating": "33", "restarting": "36",
    "rejected": "35",
}
COLUMN_GAP = "   "
MIN_FLEX_WIDTH = 12  # a truncated column keeps at least this many characters
# C0, DEL, C1; ALM, LRM, RLM; LS, PS; LRE..RLO; LRI..PDI; lone surrogates.
_UNPRINTABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` with control, separator, bidi-override and surrogate characters escaped
    visibly (``\\x1b``, ``\\n``, ``\\u202e``): what a terminal may be shown."""
    if _UNPRINTABLE.search(text) is None:
        return text
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match[0]
    code = ord(char)
    if char in _SHORT:
        return _SHORT[char]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def use_color(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (no-color.org) or TERM=dumb."""
    if environ.get("NO_COLOR") or environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or fake stream
        return False


def terminal_width(stream: TextIO, environ: Mapping[str, str]) -> int | None:
    """Columns to fit tables into: $COLUMNS, else the terminal's; None when piped."""
    columns = environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(stream.fileno()).columns if stream.isatty() else None
    except (AttributeError, ValueError, OSError):
        return None


def paint(text: str, state: str | None, color: bool) -> str:
    code = STATE_COLORS.get(state or "")
    return f"\x1b[{code}m{text}\x1b[0m" if color and code else text


def ago(stamp: str | None, now: float) -> str:
    """An RFC 3339 time as "3s ago" / "5m ago" / "2h ago" / "4d ago"; "-" when unknown."""
    if not stamp:
        return "-"
    import datetime as dt  # only the commands that show times pay for it

    try:
        then = dt.datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return stamp
    seconds = max(0, int(now - then))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, width: int | None = None,
          flex: int | None = None, color_column: int | None = None,
          color: bool = False) -> list[str]:
    """Aligned columns like docker/podman. Column ``flex`` is cut to fit ``width``;
    column ``color_column`` holds a state and is coloured (padding stays uncoloured)."""
    cells = [[printable(cell) for cell in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    if width is not None and flex is not None:
        others = sum(w for i, w in enumerate(widths) if i != flex)
        room = max(width - others - len(COLUMN_GAP) * (len(headers) - 1), MIN_FLEX_WIDTH)
        for row in cells:
            row[flex] = truncate(row[flex], room)
        widths[flex] = max([len(headers[flex])] + [len(r[flex]) for r in cells])
    lines = [_line(list(headers), widths, None, False)]
    lines += [_line(row, widths, color_column, color) for row in cells]
    return lines


def _line(cells: list[str], widths: list[int], color_column: int | None, color: bool) -> str:
    out = []
    for i, cell in enumerate(cells):
        pad = " " * (widths[i] - len(cell)) if i < len(cells) - 1 else ""
        out.append((paint(cell, cell, color) if i == color_column else cell) + pad)
    return COLUMN_GAP.join(out).rstrip()


def fields(doc: Mapping[str, Any], now: float, color: bool) -> list[str]:
    """``key: value`` lines, keys aligned; times also as "(3s ago)", lists comma-joined."""
    width = max((len(printable(k)) for k in doc), default=0) + 1
    return [f"{printable(key) + ':':<{width}} {_value(key, value, now, color)}".rstrip()
            for key, value in doc.items()]


def _value(key: str, value: Any, now: float, color: bool) -> str:
    if value is None or value in ([], {}):
        return "-"
    if key in ("state", "from", "to"):
        return paint(printable(str(value)), str(value), color)
    if key.endswith(("_at", "time")) and isinstance(value, str):
        return printable(f"{value} ({ago(value, now)})")
    if key == "process" and isinstance(value, dict):
        return printable(_process(value))
    if key == "restart" and isinstance(value, dict):
        return printable(_restart(value, now))
    return printable(_plain(value))


def _restart(restart: Mapping[str, Any], now: float) -> str:
    """A plugin's last ``restart`` on one line: what, how it ended, when, the budget."""
    began = restart.get("at")
    text = (f"{restart.get('target')}: {restart.get('outcome') or 'under way'}, began "
            f"{began} ({ago(began, now)}), {restart.get('recent')} within restart.interval")
    if restart.get("error"):
        text += f"; error: {restart['error']}"
    return text + ("; given up" if restart.get("given_up") else "")


def _process(process: Mapping[str, Any]) -> str:
    """A plugin's ``process`` on one line: pid, uid, what runs it, then its command."""
    container = process.get("container")
    parts = [f"pid {process.get('pid')}", f"uid {process.get('uid')}"]
    if process.get("unit"):
        parts.append(f"unit {process['unit']}")
    if isinstance(container, dict):
        parts.append(f"container {container.get('engine')}:{container.get('id')}")
    command = process.get("command")
    return ", ".join(parts) + (f": {command}" if command else "")


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return str(round(value, 6))  # probe latencies: microseconds are enough
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def event_line(event: Mapping[str, Any], color: bool) -> str:
    """One event: time, seq, type, plugin, transition, reason."""
    before, after = event.get("from"), event.get("to")
    change = ""
    if before or after:
        change = (f"{paint(printable(str(before or '')), before, color)} -> "
                  f"{paint(printable(str(after or '')), after, color)}")
    parts = [printable(str(event.get("time"))), printable(f"{event.get('seq', '?'):>4}"),
             printable(f"{event.get('type', '?'):<13}"), printable(str(event.get("plugin") or "-")),
             change.strip(), printable(str(event.get("reason") or ""))]
    return "  ".join(p for p in parts if p)

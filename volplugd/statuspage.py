"""The HTML status page of the TCP metrics listener: counts, one row per plugin, and a
link to /metrics, rendered from one registry snapshot.

Every value that comes from a plugin (name, address, error text, its process's command
and unit) is untrusted: its
control characters, bidi overrides and any lone surrogate are escaped visibly
(``printable``), then it is HTML-escaped; the metrics listener sends it with a CSP that
allows no script.

Runs on: metrics connection threads (one render per request; pure, no locks, no I/O).
"""

from __future__ import annotations

import html

from volplugd.model import PluginState, PluginView, ProcessView, Snapshot, rfc3339
from volplugd.plugin.text import printable

__all__ = ["status_page"]

_CSS = (
    "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:.25em .6em;"
    "text-align:left;vertical-align:top}th{background:#f4f4f4;white-space:nowrap}"
    ".ready{color:#1a7f37}.unhealthy{color:#c62828}.activating{color:#9a6700}"
    ".restarting{color:#0969da}"
    ".rejected{color:#666}td.err,td.proc{font-family:monospace;white-space:pre-wrap;"
    "max-width:40em}"
)


def status_page(snapshot: Snapshot, version: str) -> bytes:
    """The TCP listener's landing page: counts, one row per plugin, a link to /metrics.

    Every value from a plugin (name, address, error, process) is untrusted and
    HTML-escaped.
    """
    counts = " · ".join(f"{state.value}: {snapshot.counts[state.value]}" for state in PluginState)
    rows = "".join(_status_row(v) for v in sorted(snapshot.plugins.values(), key=lambda v: v.name))
    published = rfc3339(snapshot.published_at or None)
    updated = f" · updated {html.escape(published)}" if published else ""
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>volplugd</title><style>{_CSS}</style></head><body>"
        f"<h1>volplugd</h1><p>Version {_escape(version)} · "
        f'<a href="metrics">Metrics</a></p>'
        f"<p>{counts}{updated}</p>"
        "<table><thead><tr><th>Plugin</th><th>State</th><th>Address</th><th>Process</th>"
        "<th>Last probe</th><th>Last error</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></body></html>\n"
    )
    return page.encode()


def _status_row(view: PluginView) -> str:
    name, state, address, probed, error = (_escape(text) for text in (
        view.name, view.state.value, view.address, rfc3339(view.last_probe_at) or "never",
        view.last_error or ""))
    return (f'<tr><td>{name}</td><td class="{state}">{state}</td><td>{address}</td>'
            f'<td class="proc">{_process(view.process)}</td>'
            f'<td>{probed}</td><td class="err">{error}</td></tr>')


def _process(process: ProcessView | None) -> str:
    """pid, unit or container, then the command (each escaped); empty when unknown."""
    if process is None:
        return ""
    runs = process.unit if process.container is None else ":".join(process.container)
    where = f" · {_escape(runs)}" if runs else ""
    command = f": {_escape(process.command)}" if process.command else ""
    return f"pid {process.pid}{where}{command}"


def _escape(text: str) -> str:
    """Text from outside as HTML text that shows every character it holds."""
    return html.escape(printable(text))

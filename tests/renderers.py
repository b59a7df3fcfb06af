"""Push views, events and documents through every output volplugd has and check each
parses: control API JSON, Prometheus text, the HTML status page, both log formats and
volplugctl's tables, key/value lines and event lines. Used by the untrusted-text tests."""

from __future__ import annotations

import html.parser
import io
import json
import logging
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

import structlog
from prometheus_client.parser import text_string_to_metric_families

from volplugd import log
from volplugd.ctl import render
from volplugd.metrics import Metrics
from volplugd.model import (
    Event,
    EventType,
    JsonRecords,
    Kind,
    PluginState,
    PluginView,
    ProcessView,
    Snapshot,
    encode,
)
from volplugd.plugin.text import printable, safe_text
from volplugd.statuspage import status_page

# What no human-facing output may carry raw (printable's class, newline aside).
CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
HOSTILE_NAMES = ("evil\x1b]0;PWNED\x07", 'quote"back\\slash\nnewline', "bidi\u202eflip",
                 "c1\x9b31m", "nul\x00del\x7f", "surrogate\udcff\ud800", "é😀")
PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "p", "a", "table",
             "thead", "tr", "th", "tbody", "td"}


def view_of(name: str, **extra: Any) -> PluginView:
    fields: dict[str, Any] = {"address": f"unix:///run/{name}.sock", "source": f"/run/{name}",
                              "warnings": (f"shadows /x/{name}",),
                              "process": ProcessView(4242, 0, f"/usr/bin/plugin {name}",
                                                     f"{name}.service")}
    fields.update(extra)
    return PluginView(name=name, kind=Kind.SOCK, state=PluginState.UNHEALTHY,
                      registered_at=1_700_000_000.0, implements=("VolumeDriver", name),
                      **fields)


def event_of(name: str, reason: str) -> Event:
    return Event(seq=1, time=1_700_000_000.0, type=EventType.STATE_CHANGED, plugin=name,
                 from_state=PluginState.READY, to_state=PluginState.UNHEALTHY, reason=reason)


class Everywhere:
    """One pass of the given values through every renderer, asserting each parses."""

    def render(self, views: Sequence[PluginView], events: Sequence[Event], *,
               log_values: Sequence[tuple[str, str]] = (),
               documents: Sequence[Mapping[str, Any]] = ()) -> bytes:
        """Returns the /metrics text (for promtool)."""
        plugins = MappingProxyType({v.name: v for v in views})
        snapshot = Snapshot(plugins=plugins, encoded=JsonRecords(plugins, {}))
        listed = _json(snapshot.plugins_json())["plugins"]
        assert [p["name"] for p in listed] == [safe_text(n, None) for n in snapshot.names]
        event_docs = [_json(encode(e.to_json())) for e in events]
        for doc in documents:
            _json(encode(doc))
        scrape = self._metrics(snapshot)
        self._page(snapshot)
        self._logs(views, log_values)
        self._ctl(listed, event_docs)
        return scrape

    def _metrics(self, snapshot: Snapshot) -> bytes:
        metrics = Metrics(lambda: snapshot, version="1.0")
        for name in snapshot.plugins:
            metrics.request(name, "/VolumeDriver.Mount", "plugin_error", 0.01)
            metrics.probe(name, "timeout", 0.2)
        body, _ = metrics.exposition()
        samples = [s for family in text_string_to_metric_families(body.decode("utf-8"))
                   for s in family.samples if s.name == "volplugd_plugin_up"]
        assert sorted(s.labels["plugin"] for s in samples) == sorted(
            safe_text(n, None) for n in snapshot.plugins)
        info = [s for family in text_string_to_metric_families(body.decode("utf-8"))
                for s in family.samples if s.name == "volplugd_plugin_info"]
        assert sorted((s.labels["plugin"], s.labels["unit"]) for s in info) == sorted(
            (safe_text(v.name, None), safe_text(_unit(v), None))
            for v in snapshot.plugins.values())
        openmetrics, _ = metrics.exposition("application/openmetrics-text")
        openmetrics.decode("utf-8")
        return body

    def _page(self, snapshot: Snapshot) -> None:
        parser = PageCells()
        parser.feed(status_page(snapshot, "1.0").decode("utf-8"))
        parser.close()
        assert set(parser.tags) <= PAGE_TAGS, parser.tags
        rows = [parser.cells[i:i + 6] for i in range(0, len(parser.cells), 6)]
        views = sorted(snapshot.plugins.values(), key=lambda v: v.name)
        assert [r[0] for r in rows] == [printable(v.name) for v in views]
        assert [r[3] for r in rows] == [_process_cell(v.process) for v in views]
        assert [r[5] for r in rows] == [printable(v.last_error or "") for v in views]
        for cell in parser.cells:
            assert CONTROL.search(cell) is None

    def _logs(self, views: Sequence[PluginView], values: Sequence[tuple[str, str]]) -> None:
        # Logging is the process's: a thread another test left behind may log meanwhile,
        # so the lines of this pass are counted by their own logger names.
        ours, stdlib = f"volplugd.test.{uuid.uuid4().hex}", f"stdlib.{uuid.uuid4().hex}"
        for fmt in ("json", "console"):
            with logging_into(fmt) as out:
                logger = log.get_logger(ours)
                for view in views:
                    logger.warning("plugin_unhealthy", plugin=view.name, error=view.last_error)
                for path, reason in values:
                    logger.warning("plugin_file_ignored", path=path, reason=reason)
                    logger.warning(path)  # as the event itself
                logging.getLogger(stdlib).warning("%s", "".join(v for _, v in values))
            lines = out.getvalue().splitlines()
            assert len([line for line in lines if ours in line]) == len(views) + 2 * len(values)
            assert len([line for line in lines if stdlib in line]) == 1
            for line in lines:
                assert len(line.encode("utf-8")) < 4 * 4096 + 1024
                if fmt == "json":
                    assert line.isascii()
                    json.loads(line)
                else:
                    assert CONTROL.search(line) is None, repr(line)

    def _ctl(self, plugins: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
        rows = [[p["name"], p["state"], p["kind"], p["address"], "-", p["last_error"] or "-"]
                for p in plugins]
        lines = render.table(["NAME", "STATE", "KIND", "ADDRESS", "LAST PROBE", "LAST ERROR"],
                             rows, width=80, flex=5, color_column=1)
        lines += [line for p in plugins for line in render.fields(p, 0.0, False)]
        lines += [render.event_line(e, False) for e in events]
        for line in lines:
            assert CONTROL.search(line) is None, repr(line)


def _process_cell(process: ProcessView | None) -> str:
    """What the status page's Process cell shows of ``process`` (as text, unescaped)."""
    if process is None:
        return ""
    runs = process.unit if process.container is None else ":".join(process.container)
    where = f" · {printable(runs)}" if runs else ""
    command = f": {printable(process.command)}" if process.command else ""
    return f"pid {process.pid}{where}{command}"


def _unit(view: PluginView) -> str:
    return "" if view.process is None or view.process.unit is None else view.process.unit


def _json(data: bytes) -> Any:
    data.decode("utf-8")  # strict: valid UTF-8
    return json.loads(data)


@contextmanager
def logging_into(fmt: str) -> Iterator[io.StringIO]:
    """log.configure() into a buffer, and the process's logging put back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    log.configure(fmt, "info", out)
    try:
        yield out
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)


class PageCells(html.parser.HTMLParser):
    """The text of each table cell and every tag name seen (a status page's, in tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self.tags: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "td":
            self._in_cell = True
            self.cells.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_cell = self._in_cell and tag != "td"

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self.cells[-1] += data

"""Logging setup: JSON lines off a TTY, console text on one, level filtering that a
second configure() (SIGHUP) changes, and stdlib records routed into the same stream."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import structlog

from tests.waiting import terminal_lines
from volplugd import log

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure() is process-global: put structlog and the root logger back after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_timestamp_level_logger_event_and_values() -> None:
    """fmt "json": one JSON object per line, ISO UTC timestamp first, then the event's keys."""
    out = io.StringIO()
    log.configure("json", "info", out)
    log.get_logger("volplugd.test").info("plugin_ready", plugin="foo", activation_ms=1.5)
    (line,) = json_lines(out)
    assert list(line)[:4] == ["timestamp", "level", "logger", "event"]
    assert {k: v for k, v in line.items() if k != "timestamp"} == {
        "level": "info", "logger": "volplugd.test", "event": "plugin_ready",
        "plugin": "foo", "activation_ms": 1.5}
    stamp = datetime.fromisoformat(str(line["timestamp"]))
    assert stamp.utcoffset() == timedelta(0)


def test_auto_is_json_when_the_stream_is_not_a_tty() -> None:
    """fmt "auto" on a pipe or file renders JSON lines (what systemd's journal gets)."""
    out = io.StringIO()
    log.configure("auto", "info", out)
    log.get_logger("t").warning("disk_slow", ms=3)
    assert json_lines(out)[0]["event"] == "disk_slow"


def test_auto_is_coloured_console_text_on_a_tty() -> None:
    """fmt "auto" on a real terminal (a pty) renders console text with colours."""
    leader, follower = os.openpty()
    with os.fdopen(follower, "w", encoding="utf-8") as tty:
        log.configure("auto", "info", tty)
        log.get_logger("volplugd.test").info("plugin_ready", plugin="foo")
        tty.flush()
        written = "\n".join(terminal_lines(leader, 1))
    os.close(leader)
    assert ANSI.search(written)
    plain = ANSI.sub("", written)
    assert "plugin_ready" in plain
    assert "plugin=foo" in plain
    assert not plain.lstrip().startswith("{")


def test_console_has_no_colours_off_a_tty() -> None:
    """fmt "console" to a non-TTY stream is plain text, without escape codes."""
    out = io.StringIO()
    log.configure("console", "info", out)
    log.get_logger("volplugd.test").info("plugin_ready", plugin="foo")
    text = out.getvalue()
    assert "\x1b[" not in text
    assert re.search(r"\[info\s*\] plugin_ready\s+\[volplugd\.test\] plugin=foo", text)


def test_level_filters_and_a_second_configure_changes_it() -> None:
    """Below the level nothing is written; re-configuring (SIGHUP) lowers it for the same logger."""
    out = io.StringIO()
    logger = log.get_logger("volplugd.test")
    log.configure("json", "info", out)
    logger.debug("probe_sent")
    logger.info("plugin_ready")
    log.configure("json", "debug", out)
    logger.debug("probe_sent")
    assert [line["event"] for line in json_lines(out)] == ["plugin_ready", "probe_sent"]


def test_stdlib_warnings_are_rendered_in_the_same_stream() -> None:
    """A library's logging.warning (watchdog's) becomes a JSON line; its info does not."""
    out = io.StringIO()
    log.configure("json", "debug", out)
    logging.getLogger("watchdog.observers").info("chatty")
    logging.getLogger("watchdog.observers").warning("queue overflow %d", 3)
    (line,) = json_lines(out)
    assert {k: v for k, v in line.items() if k != "timestamp"} == {
        "level": "warning", "logger": "watchdog.observers", "event": "queue overflow 3"}


def test_configuring_twice_does_not_duplicate_stdlib_lines() -> None:
    """Each configure() replaces its root handler: one stdlib record is one line."""
    first, second = io.StringIO(), io.StringIO()
    log.configure("json", "info", first)
    log.configure("json", "error", second)
    logging.getLogger("lib").error("broken")
    logging.getLogger("lib").warning("below error")
    assert first.getvalue() == ""
    assert [line["event"] for line in json_lines(second)] == ["broken"]


def test_exceptions_become_a_traceback_field_in_json() -> None:
    """logger.exception() in JSON carries the traceback text in "exception"."""
    out = io.StringIO()
    log.configure("json", "info", out)
    try:
        raise ValueError("bad spec file")
    except ValueError:
        log.get_logger("t").exception("spec_unreadable", path="/x.spec")
    (line,) = json_lines(out)
    assert line["level"] == "error"
    assert str(line["exception"]).endswith("ValueError: bad spec file")


def test_an_unknown_format_is_refused() -> None:
    """configure() with a format that config validation would reject raises ValueError."""
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        log.configure("xml", "info", io.StringIO())

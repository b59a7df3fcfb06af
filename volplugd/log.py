"""Logging set up once, at the edge: structlog events as JSON lines or console text.

``configure()`` is called by the CLI at start and again on SIGHUP with a new level;
every other module only calls ``get_logger(__name__)`` and logs snake_case facts with
key/values (``log.info("plugin_ready", plugin=name, activation_ms=12.5)``). The stdlib
``logging`` records of libraries (watchdog) at WARNING and above are
rendered by the same renderer into the same stream.

Every string value (and a stdlib record's message) passes ``safe_text`` on its way:
a lone surrogate is escaped and a value is cut to 4 KiB, so a plugin's text can neither
fail a log line nor make it huge. The console format also escapes control characters
(``printable``): a plugin named ``evil\x1b]0;...`` cannot drive the reader's terminal.
JSON lines are ASCII (json escapes every control character itself).

Level changes reach the proxies that ``get_logger()`` returns, because loggers are not
cached; a logger made concrete with ``.bind()`` keeps the level it was bound with, so
bind per use, not once for the life of the process.
Runs on: the main thread (configure); any thread (logging).
"""

from __future__ import annotations

import io
import logging
import sys
from typing import TextIO, cast

import structlog
from structlog.typing import EventDict, ExcInfo, FilteringBoundLogger, Processor

from volplugd.plugin.text import printable, safe_text

# The handler this module put on the root logger, so a second configure() replaces
# it instead of printing every stdlib record twice.
_HANDLER_NAME = "volplugd"


def configure(fmt: str, level: str, stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to ``stream`` (default: stderr) as ``fmt``.

    ``fmt`` is "json", "console" or "auto" (console on a TTY, JSON lines otherwise);
    ``level`` is a standard level name ("debug" … "critical"). Safe to call again.
    """
    out = sys.stderr if stream is None else stream
    tty = _isatty(out)
    renderer = _renderer(fmt, tty)
    threshold = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*_shared_processors(), *_exception_processors(renderer),
                    *_rendering(renderer)],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        # Not cached: the proxies held by modules must see a new level after SIGHUP.
        cache_logger_on_first_use=False,
    )
    _route_stdlib(out, renderer, max(threshold, logging.WARNING))


def get_logger(name: str) -> FilteringBoundLogger:
    """A structlog logger that carries ``logger=<name>`` in every event."""
    # "logger" itself cannot be an initial value (it is wrap_logger's first parameter).
    logger: FilteringBoundLogger = structlog.get_logger(logger_name=name)
    return logger


def _renderer(fmt: str, tty: bool) -> Processor:
    if fmt == "json" or (fmt == "auto" and not tty):
        return _JSONLines()
    if fmt in ("console", "auto"):
        # Plain tracebacks: rich's would print every local variable into the log.
        return structlog.dev.ConsoleRenderer(
            colors=tty, exception_formatter=_printable_traceback)
    raise ValueError(f"unknown log format {fmt!r}")


class _JSONLines:
    """One JSON object per line, led by timestamp, level, logger and event for readers."""

    _LEAD = ("timestamp", "level", "logger", "event")

    def __init__(self) -> None:
        self._json = structlog.processors.JSONRenderer()

    def __call__(self, logger: object, name: str, event: EventDict) -> str:
        ordered = {key: event.pop(key) for key in self._LEAD if key in event}
        ordered.update(event)
        return cast(str, self._json(logger, name, ordered))  # json.dumps returns str


def _shared_processors() -> list[Processor]:
    """What every event gets, from structlog or from a stdlib record."""
    return [
        _name_logger,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _safe_values,
    ]


def _safe_values(_: object, __: str, event: EventDict) -> EventDict:
    """Every string value made safe: no lone surrogate, at most 4 KiB. Tracebacks are
    added later (``format_exc_info``), so they are kept whole."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = safe_text(value)
    return event


def _printable_values(_: object, __: str, event: EventDict) -> EventDict:
    """For people: control characters in string values (and the event) escaped."""
    for key, value in event.items():
        if isinstance(value, str) and key not in ("exception", "stack"):
            event[key] = printable(value)
    return event


def _printable_traceback(out: TextIO, exc_info: ExcInfo) -> None:
    """structlog's plain traceback, each line printable (a message may hold a plugin's
    text)."""
    text = io.StringIO()
    structlog.dev.plain_traceback(text, exc_info)
    out.write("\n".join(printable(line) for line in text.getvalue().split("\n")))


def _rendering(renderer: Processor) -> list[Processor]:
    """The last steps: the console's text is made printable first; JSON escapes itself."""
    if isinstance(renderer, structlog.dev.ConsoleRenderer):
        return [_printable_values, renderer]
    return [renderer]


def _name_logger(_: object, __: str, event: EventDict) -> EventDict:
    """Spell the logger's name "logger", as stdlib records do."""
    if "logger_name" in event:
        event["logger"] = event.pop("logger_name")
    return event


def _exception_processors(renderer: Processor) -> list[Processor]:
    # The console renderer prints tracebacks itself (and warns if they were already
    # turned into text); JSON needs them as a string field.
    if isinstance(renderer, structlog.dev.ConsoleRenderer):
        return [structlog.processors.StackInfoRenderer()]
    return [structlog.processors.StackInfoRenderer(), structlog.processors.format_exc_info]


def _route_stdlib(stream: TextIO, renderer: Processor, level: int) -> None:
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *_shared_processors(),
                           *_exception_processors(renderer)],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    *_rendering(renderer)],
    )
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream is not a TTY
        return False

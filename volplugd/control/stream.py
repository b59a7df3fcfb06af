"""``GET /v1/events?follow=1``: an NDJSON stream of events as they happen.

It ends when the server stops (``volplugd.stopping``) or the client hangs up
(``volplugd.disconnected``), noticing either within FOLLOW_POLL_SECONDS.
Runs on: the connection thread that serves the stream.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from volplugd.contracts import Commands
from volplugd.model import Event, encode

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["FOLLOW_POLL_SECONDS", "FollowStream", "follow_slot", "ndjson"]

FOLLOW_POLL_SECONDS = 0.25


def ndjson(events: Iterable[Event]) -> Iterator[bytes]:
    """One compact JSON line per event."""
    for event in events:
        yield encode(event.to_json()) + b"\n"


def follow_slot(environ: WSGIEnvironment) -> Callable[[], None] | None:
    """Take one of the server's follow-stream slots: its release, or None if all are
    taken. Without our server's hook (a unit test, another server) there is no limit.
    """
    acquire: Callable[[], Callable[[], None] | None] | None = environ.get("volplugd.follow_slot")
    if acquire is None:
        return lambda: None
    return acquire()


class FollowStream:
    """``GET /v1/events?follow=1``: NDJSON lines as events happen, until the server
    stops or the client goes away. A class, not a generator, so ``close()`` frees the
    follow slot even if the server never started iterating.
    """

    def __init__(self, commands: Commands, since: int, environ: WSGIEnvironment,
                 release: Callable[[], None]):
        self._commands = commands
        self._since = since
        self._stopping: threading.Event = environ.get("volplugd.stopping", threading.Event())
        self._gone: Callable[[], bool] = environ.get("volplugd.disconnected", lambda: False)
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> Iterator[bytes]:
        yield b""  # makes the server send the headers now, before the first event
        while not self._stopping.is_set() and not self._gone():
            events = self._commands.events(self._since, wait=FOLLOW_POLL_SECONDS)
            if events:
                self._since = events[-1].seq
                yield b"".join(ndjson(events))

    def close(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

"""``GET /v1/events?follow=1``: an NDJSON stream of events as they happen.

It ends when the server stops (``Request.stopping``), or the client is gone
(``Request.disconnected``): it hung up, or it left what was sent (the answer's head, an
event) unread for the write timeout (its slot is freed, and the drop logged once per
10 s per uid), noticing each within FOLLOW_POLL_SECONDS.
Runs on: the connection thread that serves the stream.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from volplugd.admission import Refusal
from volplugd.contracts import Commands
from volplugd.model import Event, encode
from volplugd.refusals import RefusalLog

if TYPE_CHECKING:
    from volplugd.control.routing import Request

__all__ = ["FOLLOW_POLL_SECONDS", "FollowStream", "follow_slot", "ndjson"]

FOLLOW_POLL_SECONDS = 0.25


def ndjson(events: Iterable[Event]) -> Iterator[bytes]:
    """One compact JSON line per event."""
    for event in events:
        yield encode(event.to_json()) + b"\n"


def follow_slot(req: Request) -> Callable[[], None] | Refusal:
    """Take one of the server's follow-stream slots for the request's peer: its release,
    or why there is none (its uid holds its share, or every slot it may take is taken).
    Without the server's hook (a unit test) there is no limit.
    """
    if req.follow_slot is None:
        return lambda: None
    return req.follow_slot(req.peer, req.groups)


class FollowStream:
    """``GET /v1/events?follow=1``: NDJSON lines as events happen, until the server
    stops or the client goes away. A class, not a generator, so ``close()`` frees the
    follow slot even if the server never started iterating.
    """

    def __init__(self, commands: Commands, since: int, req: Request,
                 release: Callable[[], None], refusals: RefusalLog):
        self._commands = commands
        self._since = since
        self._stopping = threading.Event() if req.stopping is None else req.stopping
        self._gone = req.disconnected
        self._peer = req.peer
        self._refusals = refusals
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> Iterator[bytes]:
        yield b""  # makes the server send the headers now, before the first event
        while not self._stopping.is_set():
            gone = self._gone()
            if gone == "not_reading":
                peer = self._peer
                self._refusals.refused("control_stream_dropped",
                                       None if peer is None else peer.uid, gone,
                                       pid=None if peer is None else peer.pid)
            if gone is not None:
                return
            events = self._commands.events(self._since, wait=FOLLOW_POLL_SECONDS)
            if events:
                self._since = events[-1].seq
                yield b"".join(ndjson(events))

    def close(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

"""Multiplexed calls and closed clients are freed by reference counting alone.

No reference cycle through an exchange's parser, a kept error's traceback (the frames
that raised it) or a closed client's cached interpreters: a storm of short-lived plugins
would otherwise pile them up until the collector's rare full pass, and the allocator
keeps that high-water mark for good (``bench/soak.py``, docs/performance.md). The
collector is off in these tests, so whatever a cycle holds is still in
``gc.get_objects()`` at the end.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import time
import types
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import volplugd
from tests.fakeplugin import FakePlugin
from tests.fakeplugin import behaviours as b
from tests.plugin.test_multiplex import collect, run
from volplugd.plugin import ACTIVATE, LIST, PluginAddress, PluginClient, PluginError
from volplugd.plugin.exchange import Exchange
from volplugd.plugin.multiplex import Multiplexer

PACKAGE = os.path.dirname(volplugd.__file__) + os.sep
CASES: dict[str, tuple[b.Behaviour, float | None]] = {
    "normal": (b.Normal(), None),
    "garbage": (b.Garbage(), None),
    "status-err": (b.StatusErr(500, "no space left"), None),
    "huge": (b.HugeBody(100_000), None),
    "close-mid": (b.CloseMidAnswer(), None),
    "disconnect": (b.Disconnect(), None),
    "hang": (b.Hang(), 0.2),
}


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture
def mux() -> Iterator[Multiplexer]:
    with contextlib.closing(Multiplexer()) as m:
        yield m


def alive(kind: type) -> list[object]:
    """The objects of ``kind`` the collector tracks: live, or unreachable in a cycle."""
    return [o for o in gc.get_objects() if isinstance(o, kind)]


def garbage() -> list[str]:
    """What the collector would free now (reference cycles) that volplugd made: its
    objects, and frames of its code (a traceback's). Other threads' garbage is no
    concern here."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
    finally:
        gc.set_debug(0)
    found = [repr(o)[:120] for o in gc.garbage
             if type(o).__module__.startswith("volplugd")
             or (isinstance(o, types.FrameType) and o.f_code.co_filename.startswith(PACKAGE))]
    gc.garbage.clear()
    return found


def tracebacks(error: BaseException) -> list[object]:
    """The tracebacks along ``error``'s cause and context chain."""
    out: list[object] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        out += [err.__traceback__] if err.__traceback__ is not None else []
        todo += [err.__cause__, err.__context__]
    return out


def check_freed(result: object) -> None:
    if isinstance(result, PluginError):
        assert tracebacks(result) == []  # kept as data: it holds no frames
    del result
    assert alive(Exchange) == []  # the answer goes with the call
    assert garbage() == []


@pytest.mark.parametrize("case", list(CASES))
def test_a_finished_call_leaves_nothing_for_the_collector(
        sock_path: str, mux: Multiplexer, make_client: Callable[..., PluginClient],
        no_gc: None, case: str) -> None:
    behaviour, timeout = CASES[case]
    with FakePlugin(sock_path) as fake:
        fake.set(LIST, behaviour)
        client = make_client(max_response_bytes=4096)
        check_freed(run(mux, client, LIST, timeout))


@pytest.mark.parametrize("case", list(CASES))
def test_a_blocking_call_leaves_nothing_for_the_collector(
        fake: FakePlugin, make_client: Callable[..., PluginClient], no_gc: None,
        case: str) -> None:
    """A volume operation's error is raised, not kept: no cycle through its exchange."""
    behaviour, timeout = CASES[case]
    fake.set(LIST, behaviour)
    client = make_client(max_response_bytes=4096)
    with contextlib.suppress(PluginError):
        client.list(timeout=timeout)
    assert alive(Exchange) == []
    assert garbage() == []


def test_a_call_failing_before_it_starts_leaves_nothing(
        short_tmp: Path, mux: Multiplexer, no_gc: None) -> None:
    """Socket file gone (raised in ``begin``), and a stale one nobody listens on."""
    gone = PluginClient("gone", PluginAddress("unix", str(short_tmp / "gone.sock")))
    check_freed(run(mux, gone, ACTIVATE))
    stale_path = str(short_tmp / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(stale_path)
        client = PluginClient("stale", PluginAddress("unix", stale_path))
        check_freed(run(mux, client, ACTIVATE))


def test_a_forgotten_call_leaves_nothing(fake: FakePlugin, mux: Multiplexer,
                                          client: PluginClient, no_gc: None) -> None:
    fake.set(LIST, b.Hang())
    mux.call("k", client, LIST, collect({}, "k"), 5.0)
    mux.poll(0.0)
    assert len(alive(Exchange)) == 1
    mux.forget("k")
    assert alive(Exchange) == []
    assert garbage() == []


def test_a_closed_client_is_freed_by_its_last_reference(fake: FakePlugin, sock_path: str,
                                                        no_gc: None) -> None:
    client = PluginClient("foo", PluginAddress("unix", sock_path))
    client.begin(LIST, time.monotonic()).abandon()  # builds the interpreters begin uses
    client.close()
    ref = weakref.ref(client)
    del client
    assert ref() is None

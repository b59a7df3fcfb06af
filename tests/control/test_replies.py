"""The heads the control server writes for the app's replies (kept for the second they
were made in: most answers repeat a few, and the Date line changes once a second)."""

from __future__ import annotations

import types
from email.utils import formatdate

import pytest

from volplugd.control import replies
from volplugd.control.routing import Reply


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """``replies``' view of the time, set by the test."""
    now = types.SimpleNamespace(value=1_764_633_600.25)
    monkeypatch.setattr(replies, "time", types.SimpleNamespace(time=lambda: now.value))
    return now


def _date(seconds: float) -> bytes:
    return formatdate(int(seconds), usegmt=True).encode()


def test_a_head_says_what_its_reply_and_the_clock_say(clock: types.SimpleNamespace) -> None:
    located = Reply(201, b"{}", "application/json", (("Location", "/v1/plugins/p/volumes/v"),))
    assert replies.reply_head(located, 2, keep=True) == (
        b"HTTP/1.1 201 Created\r\nServer: volplugd\r\nDate: " + _date(clock.value) +
        b"\r\nLocation: /v1/plugins/p/volumes/v\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n")
    assert replies.reply_head(Reply(204, b"", None), None, keep=False) == (
        b"HTTP/1.1 204 No Content\r\nServer: volplugd\r\nDate: " + _date(clock.value) +
        b"\r\nConnection: close\r\n\r\n")


def test_a_kept_head_is_used_only_for_the_same_answer_in_the_same_second(
        clock: types.SimpleNamespace) -> None:
    ok = Reply(200, b"{}")
    first = replies.reply_head(ok, 2, keep=True)
    assert replies.reply_head(ok, 2, keep=True) == first
    assert replies.reply_head(ok, 3, keep=True) == first.replace(b"Length: 2", b"Length: 3")
    assert replies.reply_head(ok, 2, keep=False) == first.replace(
        b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    assert replies.reply_head(Reply(404, b"{}"), 2, keep=True) == first.replace(
        b"200 OK", b"404 Not Found")
    clock.value += 1.0
    assert replies.reply_head(ok, 2, keep=True) == first.replace(
        _date(clock.value - 1), _date(clock.value))


def test_heads_past_what_is_kept_are_still_right(clock: types.SimpleNamespace) -> None:
    """Replies that differ in a header (a volume's Location) are each made right, however
    many come in a second."""
    for i in range(600):
        located = Reply(201, b"{}", "application/json", (("Location", f"/v/{i}"),))
        head = replies.reply_head(located, 2, keep=True)
        assert f"\r\nLocation: /v/{i}\r\n".encode() in head

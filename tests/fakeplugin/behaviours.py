"""How the fake plugin answers: one small class per way a real plugin behaves.

A test picks one per endpoint with ``FakePlugin.set(endpoint, behaviour)``; script mode
builds them from text with ``parse("slow:2")``. Behaviours that wait use
``Exchange.stopping``, so ``FakePlugin.stop()`` ends them at once.

Runs on: the fake plugin's connection threads (one behaviour object may serve several
requests at the same time, so behaviours keep no per-request state).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tests.fakeplugin.exchange import Exchange

__all__ = [
    "Behaviour", "CloseMidAnswer", "Disconnect", "Drip", "ErrOn200", "Garbage", "Hang",
    "HtmlError", "HugeBody", "Implements", "Json", "Normal", "Raw", "Slow", "Status", "StatusErr",
    "parse",
]


class Behaviour:
    """Base class: answer one request through ``ex``."""

    def respond(self, ex: Exchange) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Normal(Behaviour):
    """The in-memory volume driver's answer (404 for an unknown endpoint)."""

    def respond(self, ex: Exchange) -> None:
        status, body, content_type = ex.normal_answer()
        ex.send(status, body, content_type)


class Hang(Behaviour):
    """Never answer; when the plugin stops, drop the connection."""

    def respond(self, ex: Exchange) -> None:
        ex.stopping.wait()
        ex.close()


class Slow(Behaviour):
    """Answer normally after ``seconds`` (drop the connection if the plugin stops first)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def respond(self, ex: Exchange) -> None:
        if ex.stopping.wait(self.seconds):
            ex.close()
            return
        Normal().respond(ex)


class Drip(Behaviour):
    """200 and valid headers, then a ``total_bytes`` JSON body at ``bytes_per_second``."""

    def __init__(self, bytes_per_second: float, total_bytes: int) -> None:
        self.bytes_per_second = bytes_per_second
        self.total_bytes = total_bytes

    def respond(self, ex: Exchange) -> None:
        step = max(1, int(self.bytes_per_second / 20))  # ~20 writes a second
        ex.send_head(200, self.total_bytes)
        for chunk in padded_json(self.total_bytes, step):
            if ex.stopping.wait(len(chunk) / self.bytes_per_second):
                ex.close()
                return
            ex.write(chunk)


class HugeBody(Behaviour):
    """200 with a ``size_bytes`` JSON body, streamed (never held in memory)."""

    def __init__(self, size_bytes: int) -> None:
        self.size_bytes = size_bytes

    def respond(self, ex: Exchange) -> None:
        ex.send_head(200, self.size_bytes)
        for chunk in padded_json(self.size_bytes, 64 * 1024):
            if ex.stopping.is_set():
                ex.close()
                return
            ex.write(chunk)


class Garbage(Behaviour):
    """200 with a body that is not JSON."""

    def __init__(self, body: bytes = b"this is not json") -> None:
        self.body = body

    def respond(self, ex: Exchange) -> None:
        ex.send(200, self.body)


class Raw(Behaviour):
    """Answers with these bytes, whatever they are (not HTTP, chunked...), then closes."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def respond(self, ex: Exchange) -> None:
        ex.write(self.data)
        ex.close()


class HtmlError(Behaviour):
    """An HTML error page like bottle served by waitress (buttervolume on a bad request)."""

    def __init__(self, status: int = 500) -> None:
        self.status = status

    def respond(self, ex: Exchange) -> None:
        ex.send(self.status, html_page(self.status, ex.path), "text/html; charset=UTF-8")


class ErrOn200(Behaviour):
    """200 ``{"Err": err}``: how many plugins report failures."""

    def __init__(self, err: str) -> None:
        self.err = err

    def respond(self, ex: Exchange) -> None:
        ex.send_json({"Err": self.err})


class StatusErr(Behaviour):
    """``status`` (400, 500...) with ``{"Err": err}``, like Docker's go-plugins-helpers."""

    def __init__(self, status: int, err: str) -> None:
        self.status = status
        self.err = err

    def respond(self, ex: Exchange) -> None:
        ex.send_json({"Err": self.err}, self.status)


class Implements(Behaviour):
    """Activate's manifest with this list, e.g. ["NetworkDriver"] for a non-volume plugin."""

    def __init__(self, implements: Sequence[str]) -> None:
        self.implements = list(implements)

    def respond(self, ex: Exchange) -> None:
        ex.send_json({"Implements": self.implements})


class Status(Behaviour):
    """Any raw answer: this status, body and Content-Type."""

    def __init__(self, code: int, body: bytes = b"", content_type: str | None = None) -> None:
        self.code = code
        self.body = body
        self.content_type = content_type

    def respond(self, ex: Exchange) -> None:
        ex.send(self.code, self.body, self.content_type)


class Json(Behaviour):
    """This JSON object with this status."""

    def __init__(self, obj: Any, status: int = 200) -> None:
        self.obj = obj
        self.status = status

    def respond(self, ex: Exchange) -> None:
        ex.send_json(self.obj, self.status)


class CloseMidAnswer(Behaviour):
    """Headers with the normal answer's Content-Length, half its body, then close."""

    def respond(self, ex: Exchange) -> None:
        status, body, content_type = ex.normal_answer()
        ex.send_head(status, len(body), content_type)
        ex.write(body[: len(body) // 2])
        ex.close()


class Disconnect(Behaviour):
    """Close the connection without answering (the client sees EOF)."""

    def respond(self, ex: Exchange) -> None:
        ex.close()


def padded_json(size: int, chunk: int) -> Iterator[bytes]:
    """``size`` bytes of ``{"Err": "", "Pad": "xxx…"}`` in ``chunk``-byte pieces.

    Too small a size for the JSON frame gives plain x's.
    """
    head, tail = b'{"Err": "", "Pad": "', b'"}'
    if size < len(head) + len(tail):
        head, tail = b"", b""
    frame = ((head, 0), (tail, size - len(tail)))
    for start in range(0, size, chunk):
        end = min(start + chunk, size)
        piece = bytearray(b"x" * (end - start))
        for text, at in frame:  # overlay the parts of head and tail inside [start, end)
            low, high = max(start, at), min(end, at + len(text))
            if low < high:
                piece[low - start:high - start] = text[low - at:high - at]
        yield bytes(piece)


def html_page(status: int, path: str) -> bytes:
    """A bottle-style error page, as waitress serves it."""
    title = f"Error: {status} {_REASONS.get(status, 'Error')}"
    return (
        '\n    <!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\n    <html>\n'
        f"        <head>\n            <title>{title}</title>\n        </head>\n"
        f"        <body>\n            <h1>{title}</h1>\n"
        f"            <p>Sorry, the requested URL <tt>{path!r}</tt>\n"
        "               caused an error:</p>\n"
        "            <pre>Internal Server Error</pre>\n        </body>\n    </html>\n"
    ).encode()


_REASONS = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}


# Script mode: "NAME[:ARG[:ARG]]" -> a behaviour. Arguments are split on ":" at most once
# more than a maker needs, so an Err text may itself contain colons.
_MAKERS: dict[str, tuple[int, Callable[..., Behaviour]]] = {
    "normal": (0, Normal),
    "hang": (0, Hang),
    "slow": (1, lambda s: Slow(float(s))),
    "drip": (2, lambda rate, total: Drip(float(rate), int(total))),
    "huge": (1, lambda size: HugeBody(int(size))),
    "garbage": (1, lambda body="this is not json": Garbage(body.encode())),
    "html": (1, lambda status="500": HtmlError(int(status))),
    "err200": (1, ErrOn200),
    "status-err": (2, lambda status, err: StatusErr(int(status), err)),
    "implements": (1, lambda names="": Implements([n for n in names.split(",") if n])),
    "status": (2, lambda code, body="": Status(int(code), body.encode())),
    "json": (1, lambda text: Json(json.loads(text))),
    "close-mid": (0, CloseMidAnswer),
    "disconnect": (0, Disconnect),
}


def parse(spec: str) -> Behaviour:
    """``"slow:2"`` -> Slow(2.0); raises ValueError naming the known behaviours."""
    name, _, rest = spec.partition(":")
    if name not in _MAKERS:
        raise ValueError(f"unknown behaviour {name!r} (known: {', '.join(sorted(_MAKERS))})")
    arity, make = _MAKERS[name]
    args = rest.split(":", arity - 1) if rest and arity else []
    try:
        return make(*args)
    except (TypeError, ValueError) as err:
        raise ValueError(f"bad behaviour {spec!r}: {err}") from err

"""What went wrong on the wire: the socket error that matters, dug out of requests'
and urllib3's wrappers, as a kind and a Go-like detail (pure).

Runs on: the threads that call PluginClient methods.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from typing import Any

from urllib3.exceptions import HTTPError as Urllib3Error

__all__ = ["Failure", "classify", "strerror"]


class Failure:
    """Kinds returned by ``classify``."""

    TIMEOUT = "timeout"
    GONE = "gone"  # the socket file vanished between the check and the connect
    REFUSED = "refused"
    BROKEN = "broken"  # the connection ended before a complete answer
    PROTOCOL = "protocol"  # what came back is not HTTP
    OS = "os"  # any other socket error
    OTHER = "other"


# Most telling first: a timeout explains the errors it causes; RemoteDisconnected is
# also an HTTPException, but it means a broken connection, not a bad answer.
_KINDS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str], ...] = (
    (TimeoutError, Failure.TIMEOUT),  # socket.timeout too (an alias since 3.10)
    (FileNotFoundError, Failure.GONE),
    (ConnectionRefusedError, Failure.REFUSED),
    ((http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionResetError,
      BrokenPipeError), Failure.BROKEN),
    (http.client.HTTPException, Failure.PROTOCOL),
)


def classify(error: BaseException) -> tuple[str, str]:
    """(kind, detail) for an exception raised by ``post`` or ``read_body``.

    requests and urllib3 wrap the socket error that matters several layers deep (in
    ``__cause__``, ``__context__``, ``args`` or ``reason``): look through all of them.
    """
    causes = list(_causes(error))
    for types, kind in _KINDS:
        for cause in causes:
            if isinstance(cause, types):
                return kind, _detail(kind, cause)
    for cause in causes:
        if isinstance(cause, OSError) and cause.strerror:
            return Failure.OS, strerror(cause)
    return Failure.OTHER, str(error) or type(error).__name__


def _detail(kind: str, cause: BaseException) -> str:
    if kind == Failure.TIMEOUT:
        return "timed out"
    if kind == Failure.BROKEN:
        return "EOF: the plugin closed the connection before a complete answer"
    if kind == Failure.PROTOCOL:
        return f"not an HTTP answer ({type(cause).__name__}: {cause})"
    return strerror(cause) if isinstance(cause, OSError) else str(cause)


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked: list[Any] = [current.__cause__, current.__context__, *current.args]
        if isinstance(current, Urllib3Error):
            linked.append(getattr(current, "reason", None))
        todo.extend(item for item in linked if isinstance(item, BaseException))


def strerror(error: OSError) -> str:
    """The OS error's text the way Go words it: lower case ("connection refused")."""
    text = error.strerror or str(error)
    return text[:1].lower() + text[1:]

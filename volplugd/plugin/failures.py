"""What went wrong on the wire, as a kind: for a caller that looks at the socket error a
PluginError keeps as its ``__cause__`` (pure).

Runs on: any thread.
"""

from __future__ import annotations

from collections.abc import Iterator

from volplugd.plugin.exchange import strerror

__all__ = ["Failure", "classify", "strerror"]


class Failure:
    """Kinds returned by ``classify``."""

    TIMEOUT = "timeout"
    GONE = "gone"  # the socket file vanished between the check and the connect
    REFUSED = "refused"
    BROKEN = "broken"  # the connection ended before a complete answer
    OS = "os"  # any other socket error
    OTHER = "other"


# Most telling first: a timeout explains the errors it causes.
_KINDS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str], ...] = (
    (TimeoutError, Failure.TIMEOUT),  # socket.timeout too (an alias since 3.10)
    (FileNotFoundError, Failure.GONE),
    (ConnectionRefusedError, Failure.REFUSED),
    ((ConnectionResetError, BrokenPipeError), Failure.BROKEN),
)


def classify(error: BaseException) -> tuple[str, str]:
    """(kind, detail) for ``error`` or the first error it was caused by that says more."""
    causes = list(_causes(error))
    for types, kind in _KINDS:
        for cause in causes:
            if isinstance(cause, types):
                return kind, strerror(cause) if isinstance(cause, OSError) else str(cause)
    for cause in causes:
        if isinstance(cause, OSError) and cause.strerror:
            return Failure.OS, strerror(cause)
    return Failure.OTHER, str(error) or type(error).__name__


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__

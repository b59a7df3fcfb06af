"""A blocking D-Bus client with a deadline on everything, over jeepney's sans-I/O parts.

jeepney (pure Python) parses and builds D-Bus messages and runs the SASL exchange
without doing any I/O; its own blocking connection waits for the bus's answer to
``Hello`` with no time limit, so the socket is driven here instead: connect,
authenticate, ``Hello``, each call and each wait for a signal all end by a deadline.
Signals that arrive while a reply is awaited are kept (at most ``MAX_KEPT``, the oldest
dropped) for ``next_signal``. jeepney ships no type hints: this module is the one place
that touches it, and it gives typed answers.

Errors, all ``BusError``s:

* ``BusUnreachable``: no socket, refused, the bus closed the connection, would not
  authenticate, or sent a message that does not parse;
* ``BusTimeout``: no answer by the deadline;
* ``BusCallFailed``: an error reply; ``name`` is the D-Bus error name, e.g.
  ``org.freedesktop.systemd1.NoSuchUnit``.

Runs on: the thread that owns the ``Bus`` (a worker); not thread-safe.
"""

from __future__ import annotations

import collections
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from jeepney import (  # type: ignore[import-untyped]
    DBusAddress,
    HeaderFields,
    MessageType,
    Parser,
    new_method_call,
)
from jeepney.auth import BEGIN, AuthenticationError, Authenticator  # type: ignore[import-untyped]

from volplugd.plugin.text import safe_text

__all__ = ["BUS_DRIVER", "SYSTEM_BUS", "Bus", "BusCallFailed", "BusError", "BusTimeout",
           "BusUnreachable", "Signal", "Target"]

SYSTEM_BUS = "/run/dbus/system_bus_socket"
MAX_KEPT = 4096
_RECV = 65536


class BusError(Exception):
    """Talking to the bus failed."""


class BusUnreachable(BusError):
    """The bus cannot be reached or would not let us in."""


class BusTimeout(BusError):
    """No answer came by the deadline."""


class BusCallFailed(BusError):
    """The call's answer is an error: ``name`` (the D-Bus error name) and ``text``."""

    def __init__(self, member: str, name: str, text: str) -> None:
        super().__init__(f"{member}: {name}: {text}")
        self.member = member
        self.name = name
        self.text = text


@dataclass(frozen=True, slots=True)
class Target:
    """Where a method call goes: the bus name, the object path and the interface."""

    destination: str
    path: str
    interface: str


BUS_DRIVER = Target("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus")


@dataclass(frozen=True, slots=True)
class Signal:
    path: str
    interface: str
    member: str
    body: tuple[Any, ...]


class Bus:
    """One authenticated connection to the bus at ``path``, made within ``timeout`` s."""

    def __init__(self, path: str = SYSTEM_BUS, timeout: float = 5.0) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._parser = Parser()
        self._serial = 0
        self.signals: collections.deque[Signal] = collections.deque(maxlen=MAX_KEPT)
        deadline = time.monotonic() + timeout
        try:
            self._connect(deadline)
            self.unique_name = str(self.call(BUS_DRIVER, "Hello", deadline=deadline)[0])
        except (BusTimeout, BusUnreachable) as err:  # a bus that does not answer is none
            self._sock.close()
            raise BusUnreachable(f"{path}: {err}") from None
        except BaseException:
            self._sock.close()
            raise

    def _connect(self, deadline: float) -> None:
        try:
            self._sock.settimeout(_left(deadline, "connecting"))
            self._sock.connect(self.path)
        except TimeoutError:
            raise BusTimeout("connecting: no answer by the deadline") from None
        except OSError as err:
            raise BusUnreachable(err.strerror or str(err)) from None
        auth = Authenticator()
        try:
            for line in auth:
                self._send(line, deadline, "authenticating")
                auth.feed(self._recv(deadline, "authenticating"))
        except AuthenticationError as err:
            raise BusUnreachable(f"authenticating: the bus refused us: "
                                 f"{safe_text(str(err), 512)}") from None
        self._send(BEGIN, deadline, "authenticating")

    def call(self, target: Target, member: str, signature: str | None = None,
             body: tuple[Any, ...] = (), *, deadline: float) -> tuple[Any, ...]:
        """The body of the reply to ``member`` (``deadline``: ``time.monotonic()`` time)."""
        address = DBusAddress(target.path, target.destination, target.interface)
        message = new_method_call(address, member, signature, body)
        self._serial += 1
        serial = self._serial
        self._send(message.serialise(serial=serial), deadline, member)
        while True:
            reply = self._receive(deadline, member)
            if reply.header.fields.get(HeaderFields.reply_serial) != serial:
                self._keep(reply)
                continue
            if reply.header.message_type == MessageType.error:
                name = str(reply.header.fields.get(HeaderFields.error_name, "?"))
                text = str(reply.body[0]) if reply.body else ""
                raise BusCallFailed(member, name, safe_text(text, 1024))
            return tuple(reply.body)

    def next_signal(self, wanted: Callable[[Signal], bool], deadline: float,
                    what: str = "a signal") -> Signal:
        """The first signal (kept or new) for which ``wanted`` is true; BusTimeout past
        ``deadline``."""
        for kept in list(self.signals):
            if wanted(kept):
                self.signals.remove(kept)
                return kept
        while True:
            message = self._receive(deadline, what)
            signal = _as_signal(message)
            if signal is None:
                continue
            if wanted(signal):
                return signal
            self.signals.append(signal)

    def _keep(self, message: Any) -> None:
        signal = _as_signal(message)
        if signal is not None:
            self.signals.append(signal)

    def _receive(self, deadline: float, what: str) -> Any:
        while True:
            try:
                message = self._parser.get_next_message()
            except (ValueError, TypeError, KeyError, IndexError, struct.error) as err:
                raise BusUnreachable(f"{what}: the bus sent a malformed message "
                                     f"({type(err).__name__})") from None
            if message is not None:
                return message
            self._parser.add_data(self._recv(deadline, what))

    def _send(self, data: bytes, deadline: float, what: str) -> None:
        try:
            self._sock.settimeout(_left(deadline, what))
            self._sock.sendall(data)
        except TimeoutError:
            raise BusTimeout(f"{what}: the bus took nothing by the deadline") from None
        except OSError as err:
            raise BusUnreachable(f"{what}: {err.strerror or err}") from None

    def _recv(self, deadline: float, what: str) -> bytes:
        try:
            self._sock.settimeout(_left(deadline, what))
            data = self._sock.recv(_RECV)
        except TimeoutError:
            raise BusTimeout(f"{what}: no answer by the deadline") from None
        except OSError as err:
            raise BusUnreachable(f"{what}: {err.strerror or err}") from None
        if not data:
            raise BusUnreachable(f"{what}: the bus closed the connection")
        return data

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _left(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise BusTimeout(f"{what}: no answer by the deadline")
    return left


def _as_signal(message: Any) -> Signal | None:
    if message.header.message_type != MessageType.signal:
        return None
    fields = message.header.fields
    return Signal(str(fields.get(HeaderFields.path, "")),
                  str(fields.get(HeaderFields.interface, "")),
                  str(fields.get(HeaderFields.member, "")), tuple(message.body))

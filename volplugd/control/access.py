"""Who may do what on the control socket: peer credentials → allow, read-only, or refuse.

The rule is pure (``decide``) so it is unit-testable without a socket; the group
lookup (``groups_of``) is the one part that asks NSS and is cached briefly. It asks
without holding the GIL (``pwd.getpwuid``, and libc's ``getgrouplist`` through ctypes:
``os.getgrouplist`` holds the GIL, so a slow directory would freeze every thread), and
never on a listener's event loop for a request (``cached_groups``).
Runs on: the control loop thread and connection threads.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import threading
import time
from dataclasses import dataclass
from enum import Enum

from volplugd.admission import Peer, peer_of

__all__ = [
    "READ_METHODS", "AccessPolicy", "Grant", "Peer", "cached_groups", "decide", "groups_of",
    "peer_of",
]

READ_METHODS = frozenset({"GET", "HEAD"})


class Grant(Enum):
    ALL = "all"
    READ = "read"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Root and ``admin_gids`` members may do everything; ``read_gids`` members GET/HEAD."""

    admin_gids: frozenset[int] = frozenset()
    read_gids: frozenset[int] = frozenset()

    def grant(self, peer: Peer | None, groups: frozenset[int]) -> Grant:
        """What this peer may do. No credentials at all (not a unix socket) → nothing."""
        if peer is None:
            return Grant.NONE
        if peer.uid == 0 or groups & self.admin_gids:
            return Grant.ALL
        if groups & self.read_gids:
            return Grant.READ
        return Grant.NONE

    def keeps_reserved_slots(self, peer: Peer, groups: frozenset[int] | None) -> bool | None:
        """Root and admins keep the control socket's reserved connection slots. A
        non-root peer's ``groups`` (None: take them from the cache) matter only when admin
        groups are configured; None when they do and are not known (never asks the user
        database: see ``control.gate``)."""
        if peer.uid == 0 or not self.admin_gids:
            return peer.uid == 0
        if groups is None:
            groups = cached_groups(peer.uid, peer.gid)
        return None if groups is None else bool(groups & self.admin_gids)


def decide(policy: AccessPolicy, peer: Peer | None, groups: frozenset[int],
           method: str) -> bool:
    """True if ``peer`` (member of ``groups``) may send a request with ``method``."""
    grant = policy.grant(peer, groups)
    return grant is Grant.ALL or (grant is Grant.READ and method in READ_METHODS)


_CACHE_SECONDS = 10.0  # a group change reaches volplugd within this; NSS is not asked per request
_CACHE_MAX = 256
_cache: dict[tuple[int, int], tuple[float, frozenset[int]]] = {}
_cache_lock = threading.Lock()


def cached_groups(uid: int, gid: int) -> frozenset[int] | None:
    """``groups_of`` if it is cached (fresh), else None: never asks the user database."""
    with _cache_lock:
        hit = _cache.get((uid, gid))
    return hit[1] if hit is not None and time.monotonic() - hit[0] < _CACHE_SECONDS else None


def groups_of(uid: int, gid: int) -> frozenset[int]:
    """The uid's groups (primary ``gid`` included), as ``id`` would list them.

    A uid without a passwd entry (a container's, say) has only its primary gid.
    """
    cached = cached_groups(uid, gid)
    if cached is not None:
        return cached
    groups = _lookup(uid, gid)
    with _cache_lock:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[(uid, gid)] = (time.monotonic(), groups)
    return groups


def _lookup(uid: int, gid: int) -> frozenset[int]:
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return frozenset({gid})
    return frozenset(_grouplist(os.fsencode(name), gid)) | {gid}


_libc = ctypes.CDLL(None, use_errno=True)
_getgrouplist = _libc.getgrouplist
_getgrouplist.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.POINTER(ctypes.c_uint),
                          ctypes.POINTER(ctypes.c_int)]
_getgrouplist.restype = ctypes.c_int
_MAX_GROUPS = 65536  # NGROUPS_MAX on Linux


def _grouplist(user: bytes, gid: int) -> list[int]:
    """libc's getgrouplist(3) through ctypes, which lets go of the GIL while it asks."""
    size = 64
    while True:
        groups = (ctypes.c_uint * size)()
        count = ctypes.c_int(size)
        if _getgrouplist(user, gid, groups, ctypes.byref(count)) >= 0:
            return list(groups[:count.value])
        if size >= _MAX_GROUPS:
            return []  # the libc said "more" past every limit: the primary gid only
        size = min(_MAX_GROUPS, max(count.value, size * 2))

"""Who is on the other end of a unix socket: its credentials (``admission.peer_of``, one
syscall at accept) and its groups (``groups_of``, the user database, cached briefly).

``groups_of`` asks without holding the GIL (``pwd.getpwuid``, and libc's
``getgrouplist`` through ctypes: ``os.getgrouplist`` holds the GIL, so a slow directory
would freeze every thread); a server never asks on its accept thread (``cached_groups``
never asks), only on the thread of the connection that needs the answer.
Runs on: any thread.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import threading
import time

from volplugd.admission import Peer, peer_of

__all__ = ["Peer", "cached_groups", "groups_of", "peer_of"]


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
